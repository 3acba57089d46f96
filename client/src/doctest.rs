//! Runs this crate's documentation examples for real: each starts a
//! `cachetd` on a free port and a temporary data directory, runs the
//! example against it, and stops it (also when the example panics).
//!
//! Not part of the API (hidden from the docs, may change at any time). The
//! daemon is `$CACHETD` if set, else the newest `cachetd` in this
//! workspace's target directory (`cargo test --workspace` builds it), else
//! one built into `target/doctest-daemon` on first use.

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{Cache, Error};

/// A running `cachetd`, killed and its directory removed on drop.
pub struct Daemon {
    child: Child,
    dir: PathBuf,
    /// Its tarpc address.
    pub addr: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("CACHETD") {
        return PathBuf::from(p);
    }
    let target = target_dir();
    let newest = ["debug", "release"]
        .iter()
        .map(|profile| target.join(profile).join("cachetd"))
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .max();
    if let Some((_, p)) = newest {
        return p;
    }
    // A separate target directory: the `cargo test` that runs us may hold
    // the lock on the main one.
    let own = target.join("doctest-daemon");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let built = Command::new(cargo)
        .args(["build", "-q", "-p", "cachetd", "--target-dir"])
        .arg(&own)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo to build cachetd for the doc tests");
    assert!(built.success(), "building cachetd for the doc tests failed; set CACHETD=/path/to/cachetd");
    own.join("debug/cachetd")
}

/// Starts a daemon on `127.0.0.1:0` and waits (at most a minute) for its
/// ready line.
pub fn start() -> Daemon {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("cachet-doctest-{}-{n}", std::process::id()));
    let mut child = Command::new(binary())
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .env("CACHET_LOG", "info")
        .env("NO_COLOR", "1")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start cachetd for a doc test");
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("ready: listening on ").nth(1) {
                let first = rest.split([',', ' ']).next().unwrap_or_default().to_owned();
                let _ = tx.send(first);
            }
        }
    });
    let mut daemon = Daemon { child, dir, addr: String::new() };
    daemon.addr = rx.recv_timeout(Duration::from_secs(60)).expect("cachetd became ready within a minute");
    daemon
}

/// Runs `example` with a `Cache` connected to a fresh daemon, on a tokio
/// runtime, and fails if it returns an error.
pub fn run<F, Fut>(example: F)
where
    F: FnOnce(Cache) -> Fut,
    Fut: Future<Output = Result<(), Error>>,
{
    let daemon = start();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    rt.block_on(async {
        let cache = Cache::connect(daemon.addr.clone()).await.expect("connect to the doc test's daemon");
        example(cache).await.expect("the example succeeds");
    });
}

/// Runs `example` with the address of a fresh daemon and nothing else (for
/// the builder's and the blocking client's examples).
pub fn with_daemon<R>(example: impl FnOnce(&str) -> R) -> R {
    let daemon = start();
    example(&daemon.addr)
}
