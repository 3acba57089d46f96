//! systemd integration without systemd: a datagram socket as NOTIFY_SOCKET
//! receives READY=1 (after replay), WATCHDOG=1 and STOPPING=1; a listener
//! passed through LISTEN_FDS is served; the journal gets `<N>` priorities.

mod support;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use cachet::Cache;
use support::Daemon;

fn messages_until(sock: &UnixDatagram, want: &str, limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            let done = msg.lines().any(|l| l == want);
            seen.push(msg);
            if done {
                return seen;
            }
        }
    }
    panic!("no {want} within {limit:?}; got {seen:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn notify_ready_after_replay_watchdog_and_stopping() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // A log to replay first.
    {
        let mut d = Daemon::start_in(&data, "127.0.0.1:0", &[]);
        let c = Cache::connect(&d.addr).await.unwrap();
        c.set("k", "v").timeout(cachet::Timeout::Never).await.unwrap();
        assert!(d.stop());
    }
    let sock_path = tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let mut d = Daemon::start_custom(&data, Some("127.0.0.1:0"), &[], |cmd| {
        cmd.env("NOTIFY_SOCKET", &sock_path).env("WATCHDOG_USEC", "400000");
    });
    let before_ready = messages_until(&sock, "READY=1", Duration::from_secs(30));
    assert!(
        before_ready.iter().any(|m| m.contains("STATUS=replay 100%") && m.contains("MiB")),
        "replay progress, in bytes, is reported before READY=1: {before_ready:?}"
    );
    // Each report extends the start-up timeout, so a long replay is never
    // killed by TimeoutStartSec while it moves.
    assert!(before_ready.iter().any(|m| m.contains("EXTEND_TIMEOUT_USEC=")), "{before_ready:?}");
    // Ready means replay is done: the value is there.
    let c = Cache::connect(&d.addr).await.unwrap();
    assert_eq!(c.get::<String>("k").await.unwrap().as_deref(), Some("v"));
    let beats = messages_until(&sock, "WATCHDOG=1", Duration::from_secs(10));
    assert!(beats.iter().any(|m| m.contains("STATUS=") && m.contains("entries")), "{beats:?}");
    assert!(d.stop(), "clean exit on SIGTERM");
    messages_until(&sock, "STOPPING=1", Duration::from_secs(10));
}

/// Starts cachetd as systemd would with `listeners` passed as fds 3, 4, …
/// under the given names (`LISTEN_FDS`, `LISTEN_FDNAMES`).
fn start_activated(listeners: &[(&std::net::TcpListener, &str)], data: &std::path::Path, args: &[&str]) -> Daemon {
    let fds: Vec<i32> = listeners.iter().map(|(l, _)| l.as_raw_fd()).collect();
    let names: Vec<&str> = listeners.iter().map(|(_, n)| *n).collect();
    // LISTEN_PID must be the daemon's own pid: a shell sets it to $$ and execs.
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ exec \"$0\" \"$@\"")
        .arg(support::bin())
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env("LISTEN_FDS", fds.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"))
        .env("NO_COLOR", "1")
        .env_remove("NOTIFY_SOCKET")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    // SAFETY: only fcntl and dup2, async-signal-safe, between fork and exec.
    // Every listener is first copied above the target range, so placing one
    // at 3, 4, … never overwrites another, and the copies placed there lose
    // close-on-exec. (A listener that already was fd 3 once kept the flag:
    // dup2 onto itself does nothing; it failed about one run in 50.)
    unsafe {
        cmd.pre_exec(move || {
            let high: Vec<i32> = fds.iter().map(|fd| libc::fcntl(*fd, libc::F_DUPFD, 16)).collect();
            for (i, fd) in high.into_iter().enumerate() {
                let target = 3 + i as i32;
                if fd < 0 || libc::dup2(fd, target) < 0 || libc::fcntl(target, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    support::adopt(cmd.spawn().unwrap(), data)
}

#[tokio::test(flavor = "multi_thread")]
async fn serves_a_listener_passed_by_socket_activation() {
    let tmp = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let d = start_activated(&[(&listener, "cachet")], &tmp.path().join("data"), &["--listen", "127.0.0.1:1"]);
    assert_eq!(d.addr, addr, "it serves the passed socket, not --listen");
    let c = Cache::connect(&addr).await.unwrap();
    c.set("a", &1).await.unwrap();
    assert_eq!(c.get::<i32>("a").await.unwrap(), Some(1));
    let log = d.log_text();
    assert!(log.contains("socket activation"), "{log}");
    assert!(
        log.contains("ignoring --listen") && log.contains("ListenStream="),
        "a warning names what is ignored: {log}"
    );
    drop(listener);
}

#[test]
fn a_socket_named_resp_speaks_resp() {
    let tmp = tempfile::tempdir().unwrap();
    let tarpc = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let resp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let resp_addr = resp.local_addr().unwrap().to_string();
    let d = start_activated(&[(&tarpc, "cachet"), (&resp, "resp")], &tmp.path().join("data"), &[]);
    assert_eq!(d.resp_addr(), resp_addr, "{:?}", d.addrs);
    let mut s = std::net::TcpStream::connect(&resp_addr).unwrap();
    s.write_all(b"SET k v\r\nGET k\r\n").unwrap();
    let mut got = Vec::new();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    while got.len() < 12 {
        let mut buf = [0u8; 64];
        let n = std::io::Read::read(&mut s, &mut buf).unwrap();
        assert!(n > 0, "closed after {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, b"+OK\r\n$1\r\nv\r\n");
    drop((tarpc, resp));
}

#[test]
fn journal_lines_carry_priorities_and_no_timestamps() {
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(support::bin())
        .arg("--data-dir")
        .arg(tmp.path())
        .arg("--listen")
        .arg("256.0.0.1:1")
        .env("JOURNAL_STREAM", "8:1234")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let first = err.lines().next().unwrap_or_default();
    assert!(first.starts_with("<6>"), "{err}");
    assert!(err.lines().any(|l| l.starts_with("<3>") && l.contains("256.0.0.1")), "{err}");
}
