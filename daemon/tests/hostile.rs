//! Hostile input: garbage, a frame claiming 4 GiB, a half frame that stalls,
//! 2000 idle connections, a client that never reads its replies. Throughout,
//! a well-behaved client keeps getting correct answers and the daemon's
//! memory stays bounded (its peak RSS is printed).

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use cachet::Cache;
use cachet::protocol::CacheServiceRequest;
use support::{Daemon, closed_within, frame};

fn rss_kib(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

async fn still_serves(c: &Cache, round: u32) {
    c.set("probe", &round).await.unwrap();
    assert_eq!(c.get::<u32>("probe").await.unwrap(), Some(round));
}

fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_clients_do_not_hurt_good_ones() {
    raise_fd_limit();
    let d = Daemon::start(&["--read-timeout", "0.5"]);
    let good = Cache::connect(&d.addr).await.unwrap();
    still_serves(&good, 0).await;

    // Garbage bytes: the connection is dropped.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..20 {
        let mut s = TcpStream::connect(&d.addr).unwrap();
        let junk: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let _ = s.write_all(&junk);
        assert!(closed_within(&mut s, Duration::from_secs(10)), "garbage connection left open");
    }
    still_serves(&good, 1).await;

    // A frame header claiming 4 GiB: refused before anything is allocated.
    let mut s = TcpStream::connect(&d.addr).unwrap();
    s.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(10)), "4 GiB frame accepted");
    still_serves(&good, 2).await;

    // Half a frame, then silence: closed by the read timeout.
    let mut s = TcpStream::connect(&d.addr).unwrap();
    s.write_all(&[0, 0, 0, 100, 1, 2, 3, 4, 5]).unwrap();
    let t = Instant::now();
    assert!(closed_within(&mut s, Duration::from_secs(10)), "stalled half frame left open");
    assert!(t.elapsed() >= Duration::from_millis(400), "closed before the timeout");
    // Idle between frames is fine: a connection that sent nothing stays.
    let mut idle = TcpStream::connect(&d.addr).unwrap();
    assert!(!closed_within(&mut idle, Duration::from_millis(1500)), "an idle connection was closed");
    still_serves(&good, 3).await;

    // 2000 idle connections.
    let conns: Vec<TcpStream> = (0..2000).map(|_| TcpStream::connect(&d.addr).unwrap()).collect();
    still_serves(&good, 4).await;
    support::eventually(Duration::from_secs(20), "all idle connections counted", || async {
        good.stats().await.unwrap().connections >= 2001
    })
    .await;
    let with_idle = rss_kib(d.pid(), "VmRSS:");
    drop(conns);

    // A client that sends requests with big replies and never reads them.
    good.set("big", &serde_bytes::ByteBuf::from(vec![7u8; 1 << 20])).await.unwrap();
    let mut greedy = TcpStream::connect(&d.addr).unwrap();
    greedy.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut sent = 0;
    for id in 0..5000u64 {
        let ops = vec![cachet::protocol::Op::Get(cachet::protocol::Bytes::from_static(b":1:big"))];
        let req = CacheServiceRequest::Batch { ops };
        if greedy.write_all(&frame(id, req)).is_err() {
            break; // the server stopped reading: backpressure reached us
        }
        sent += 1;
    }
    still_serves(&good, 5).await;
    let peak = rss_kib(d.pid(), "VmHWM:");
    println!(
        "peak RSS {} MiB; with 2000 idle connections {} MiB; greedy client got {sent} requests in",
        peak / 1024,
        with_idle / 1024
    );
    // 5000 unread 1 MiB replies would be 5 GB; backpressure keeps it to a few hundred MiB at most.
    assert!(peak < 512 * 1024, "peak RSS {} MiB", peak / 1024);
    drop(greedy);
    still_serves(&good, 6).await;
}

/// Found by the frame_decode fuzzer: a request whose deadline overflows
/// `Instant` made tarpc panic while decoding. The connection is closed; the
/// daemon goes on.
#[tokio::test(flavor = "multi_thread")]
async fn a_frame_that_panics_the_decoder_only_closes_its_connection() {
    let d = Daemon::start(&[]);
    let good = Cache::connect(&d.addr).await.unwrap();
    for frame in [
        &include_bytes!("data/frame-deadline-overflow.bin")[..],
        &include_bytes!("data/frame-deadline-overflow-2.bin")[..],
    ] {
        let mut s = TcpStream::connect(&d.addr).unwrap();
        s.write_all(frame).unwrap();
        assert!(closed_within(&mut s, Duration::from_secs(10)));
        still_serves(&good, 7).await;
    }
}
