//! Starts a real `cachetd` on a free port (it binds port 0 and reports the
//! address in its ready line) and a temp data directory, and always stops it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Daemon {
    child: Option<Child>,
    /// The first listener's address (tarpc unless told otherwise).
    pub addr: String,
    /// Every listener, as the ready line names them (`resp://…` for RESP).
    pub addrs: Vec<String>,
    pub dir: PathBuf,
    pub log: Arc<Mutex<Vec<String>>>,
    args: Vec<String>,
    _tmp: Option<tempfile::TempDir>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_cachetd")
}

impl Daemon {
    /// Starts with a fresh temp data directory.
    pub fn start(args: &[&str]) -> Daemon {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let mut d = Daemon::start_in(&dir, "127.0.0.1:0", args);
        d._tmp = Some(tmp);
        d
    }

    /// Starts with a fresh temp data directory, listening for RESP first
    /// (`addr`, `resp_addr()`) and for tarpc second (`addrs[1]`).
    pub fn start_resp(args: &[&str]) -> Daemon {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let mut d = Daemon::start_in(&dir, "resp://127.0.0.1:0", &[&["--listen", "127.0.0.1:0"], args].concat());
        d._tmp = Some(tmp);
        d
    }

    pub fn start_in(dir: &Path, listen: &str, args: &[&str]) -> Daemon {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let (child, addrs, log) = spawn(dir, Some(listen), &args, |_| {});
        Daemon { child: Some(child), addr: addrs[0].clone(), addrs, dir: dir.to_path_buf(), log, args, _tmp: None }
    }

    /// Starts with full control of the command (environment, inherited
    /// descriptors); without `listen`, no `--listen` flag is passed.
    pub fn start_custom(
        dir: &Path,
        listen: Option<&str>,
        args: &[&str],
        configure: impl FnOnce(&mut Command),
    ) -> Daemon {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let (child, addrs, log) = spawn(dir, listen, &args, configure);
        Daemon { child: Some(child), addr: addrs[0].clone(), addrs, dir: dir.to_path_buf(), log, args, _tmp: None }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// SIGTERM and wait; returns whether it exited 0.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else { return true };
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        wait_exit(&mut child, Duration::from_secs(20)).map(|s| s.success()).unwrap_or(false)
    }

    /// SIGKILL: no chance to sync or clean up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same address and data directory.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    pub fn start_again(&mut self) {
        let listen = self.addr.clone();
        let (child, addrs, log) = spawn(&self.dir, Some(&listen), &self.args, |_| {});
        self.child = Some(child);
        self.addr = addrs[0].clone();
        self.addrs = addrs;
        self.log = log;
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn spawn(
    dir: &Path,
    listen: Option<&str>,
    args: &[String],
    configure: impl FnOnce(&mut Command),
) -> (Child, Vec<String>, Arc<Mutex<Vec<String>>>) {
    let mut cmd = Command::new(bin());
    if let Some(listen) = listen {
        cmd.arg("--listen").arg(listen);
    }
    cmd.arg("--data-dir")
        .arg(dir)
        .args(args)
        .env("CACHET_LOG", "info")
        .env("NO_COLOR", "1")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    configure(&mut cmd);
    let child = cmd.spawn().expect("start cachetd");
    watch(child)
}

/// Takes over a started daemon: waits for its ready line (stderr piped).
pub fn adopt(child: Child, dir: &Path) -> Daemon {
    let (child, addrs, log) = watch(child);
    Daemon {
        child: Some(child),
        addr: addrs[0].clone(),
        addrs,
        dir: dir.to_path_buf(),
        log,
        args: Vec::new(),
        _tmp: None,
    }
}

fn watch(mut child: Child) -> (Child, Vec<String>, Arc<Mutex<Vec<String>>>) {
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            // "ADDR, ADDR (N ms after start)": every listener, in order.
            let ready = line.split("ready: listening on ").nth(1).map(|rest| {
                rest.split(" (").next().unwrap_or_default().split(", ").map(str::to_string).collect::<Vec<_>>()
            });
            // The line is in the log before the start returns, so a test
            // that reads the log at once finds the ready line in it.
            sink.lock().unwrap().push(line);
            if let Some(addrs) = ready {
                let _ = tx.send(addrs);
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(addrs) => (child, addrs, log),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cachetd did not become ready; its log:\n{}", log.lock().unwrap().join("\n"));
        }
    }
}

impl Daemon {
    /// The `HOST:PORT` of the daemon's RESP listener (`resp://…` in its
    /// ready line), for Redis clients.
    pub fn resp_addr(&self) -> String {
        self.addrs
            .iter()
            .find_map(|a| a.strip_prefix("resp://"))
            .expect("the daemon has a resp:// listener")
            .to_string()
    }
}

/// Polls `f` until it returns true, or panics after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes an auth token file in `dir` and returns its path.
pub fn token_file(dir: &Path, token: &str) -> PathBuf {
    let path = dir.join("token");
    std::fs::write(&path, format!("{token}\n")).unwrap();
    path
}

/// Whether the server closes `s` within `limit` (a read returns 0 or an
/// error).
pub fn closed_within(s: &mut std::net::TcpStream, limit: Duration) -> bool {
    use std::io::Read;
    s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
    }
    false
}

/// One tarpc request frame, as the client would send it.
pub fn frame(id: u64, req: cachet::protocol::CacheServiceRequest) -> Vec<u8> {
    message_frame(&tarpc::ClientMessage::Request(tarpc::Request {
        context: tarpc::context::current(),
        id,
        message: req,
    }))
}

/// Any tarpc client message as one frame.
pub fn message_frame(msg: &tarpc::ClientMessage<cachet::protocol::CacheServiceRequest>) -> Vec<u8> {
    let mut out = Vec::new();
    cachet::protocol::write_frame(&mut out, msg).unwrap();
    out
}

/// Reads one response frame (blocking).
pub fn read_reply(s: &mut std::net::TcpStream) -> tarpc::Response<cachet::protocol::CacheServiceResponse> {
    use std::io::Read;
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    rmp_serde::from_slice(&body).unwrap()
}
