//! The daemon's part of issue 10: memory bounds that held only on paper
//! (request bytes before authentication and across connections, replies a
//! client does not read, one huge batch) and operator hazards (a unix socket
//! path that is a regular file, reload signals, numbers out of range).

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use cachet::Cache;
use cachet::protocol::{CacheServiceRequest, CacheServiceResponse, MAX_KEYS_PER_REQUEST, Op, OpReply};
use serde_bytes::ByteBuf;
use support::{Daemon, closed_within, frame, read_reply};

/// Reads one reply frame.
/// Case 4: before authenticating, a connection may not announce a large
/// frame (it used to be able to make the daemon hold 33 MiB each).
#[test]
fn unauthenticated_connections_get_a_small_frame_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let token = support::token_file(tmp.path(), "0123456789abcdef0123");
    let d = Daemon::start(&["--auth-token-file", token.to_str().unwrap(), "--read-timeout", "30"]);
    let mut s = TcpStream::connect(&d.addr).unwrap();
    s.write_all(&(1u32 << 20).to_be_bytes()).unwrap();
    s.write_all(&[0u8; 1000]).unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(10)), "a 1 MiB frame before hello was buffered");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.log_text().contains("before authenticating") {
        assert!(Instant::now() < deadline, "no log line says why: {}", d.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Case 4: request bytes being received across all connections have a cap.
#[test]
fn buffered_request_bytes_have_a_global_cap() {
    let d =
        Daemon::start(&["--max-value-bytes", "8MiB", "--max-buffered-request-bytes", "64MiB", "--read-timeout", "60"]);
    // Each announces a 16 MiB frame and sends a little of it: four fit.
    let mut conns: Vec<TcpStream> = (0..10)
        .map(|_| {
            let mut s = TcpStream::connect(&d.addr).unwrap();
            s.write_all(&(16u32 << 20).to_be_bytes()).unwrap();
            s.write_all(&[0u8; 4096]).unwrap();
            s
        })
        .collect();
    let closed = conns.iter_mut().filter_map(|s| closed_within(s, Duration::from_secs(2)).then_some(())).count();
    assert_eq!(closed, 6, "four 16 MiB frames fit in 64 MiB; the other six connections are closed");
    // Small requests are still served while the large ones hold the budget.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let good = Cache::connect(&d.addr).await.unwrap();
        good.set("during", &1).await.unwrap();
        drop(conns);
        good.set("after", &1).await.unwrap();
    });
}

/// Case 5: replies a client asks for and does not read are bounded per
/// connection: past the budget, reads get an error that says what to do.
#[test]
fn unread_replies_are_bounded_per_connection() {
    let d =
        Daemon::start(&["--max-value-bytes", "4MiB", "--max-unsent-reply-bytes", "16MiB", "--max-in-flight", "1024"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let good = rt.block_on(Cache::connect(&d.addr)).unwrap();
    rt.block_on(async { good.set("big", &ByteBuf::from(vec![7u8; 1 << 20])).await }).unwrap();
    let mut greedy = TcpStream::connect(&d.addr).unwrap();
    let n = 400u64;
    for id in 0..n {
        let ops = vec![Op::Get(cachet::protocol::Bytes::from_static(b":1:big"))];
        greedy.write_all(&frame(id, CacheServiceRequest::Batch { ops })).unwrap();
    }
    // Give the engine time to answer everything before reading anything.
    rt.block_on(support::eventually(Duration::from_secs(30), "all requests answered", || async {
        good.stats().await.unwrap().hits + good.stats().await.unwrap().misses >= n
            || d.log_text().contains("reply_too_large")
    }));
    std::thread::sleep(Duration::from_millis(500));
    greedy.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let (mut served, mut refused) = (0, 0);
    for _ in 0..n {
        let reply = match read_reply(&mut greedy).message {
            Ok(CacheServiceResponse::Batch(Ok(mut replies))) if replies.len() == 1 => replies.remove(0),
            other => panic!("{other:?}"),
        };
        match reply {
            Ok(OpReply::Value(Some(_))) => served += 1,
            Err(e) => {
                assert!(format!("{e:?}").contains("read replies"), "{e:?}");
                refused += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(refused > 0, "all {served} MiB of replies were held for a client that did not read");
    // 16 MiB of budget plus what the kernel's socket buffers took.
    assert!(served < 100, "{served} MiB of replies held");
    rt.block_on(async { good.set("after", &1).await }).unwrap();
}

/// Case 8: one request may not carry more than `MAX_KEYS_PER_REQUEST`
/// operations (a million used to stall every client for 750 ms); the client
/// splits its multi-key calls so users never see the limit.
#[tokio::test(flavor = "multi_thread")]
async fn a_huge_batch_is_refused_and_the_client_splits_multi_key_calls() {
    let d = Daemon::start(&[]);
    let mut s = TcpStream::connect(&d.addr).unwrap();
    let ops = vec![Op::Get(cachet::protocol::Bytes::from_static(b"k")); MAX_KEYS_PER_REQUEST + 1];
    s.write_all(&frame(1, CacheServiceRequest::Batch { ops })).unwrap();
    match read_reply(&mut s).message {
        Ok(CacheServiceResponse::Batch(Err(e))) => assert!(format!("{e:?}").contains("split"), "{e:?}"),
        other => panic!("{other:?}"),
    }
    let c = Cache::connect(&d.addr).await.unwrap();
    let keys: Vec<String> = (0..10_000).map(|i| format!("k{i}")).collect();
    let failed = c.set_many(keys.iter().map(|k| (k.clone(), 1u8))).await.unwrap();
    assert!(failed.is_empty());
    let got: std::collections::HashMap<String, u8> = c.get_many(&keys).await.unwrap();
    assert_eq!(got.len(), 10_000);
    c.delete_many(&keys).await.unwrap();
    assert_eq!(c.stats().await.unwrap().entries, 0);
}

/// Case 17: `--listen unix:PATH` never deletes a file that is not a socket.
#[test]
fn a_unix_listen_path_that_is_a_regular_file_is_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let victim = tmp.path().join("important.txt");
    std::fs::write(&victim, b"keep me").unwrap();
    let out = std::process::Command::new(support::bin())
        .args(["--listen", &format!("unix:{}", victim.display())])
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a socket"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
}

/// Case 18: SIGHUP and SIGUSR1 do not kill the daemon, and numbers out of
/// range are refused with the range instead of a panic.
#[test]
fn reload_signals_are_ignored_and_bad_numbers_refused() {
    let d = Daemon::start(&[]);
    for sig in [libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2] {
        unsafe { libc::kill(d.pid(), sig) };
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(support::eventually(Duration::from_secs(10), "the signals were logged", || async {
        d.log_text().contains("SIGUSR2 received and ignored")
    }));
    let c = rt.block_on(Cache::connect(&d.addr)).unwrap();
    rt.block_on(async { c.set("alive", &1).await }).unwrap();

    let tmp = tempfile::tempdir().unwrap();
    for args in [["--read-timeout", "1e30"], ["--max-connections", "0"], ["--max-in-flight", "0"]] {
        let out = std::process::Command::new(support::bin())
            .args(args)
            .arg("--data-dir")
            .arg(tmp.path())
            .arg("--listen")
            .arg("127.0.0.1:0")
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("between") && !err.contains("panicked"), "{args:?}: {err}");
    }
}
