//! Every row of API.md's client table against a real cachetd, with Django's
//! semantics.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cachet::{Cache, Error, Timeout};
use serde::{Deserialize, Serialize};
use support::{Daemon, eventually};

async fn client(d: &Daemon) -> Cache {
    Cache::connect(&d.addr).await.unwrap()
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Profile {
    name: String,
    tags: Vec<String>,
    age: u32,
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_rows() {
    let d = Daemon::start(&[]);
    let c = client(&d).await;
    assert_eq!(c.get::<String>("missing").await.unwrap(), None);
    c.set("s", "text").await.unwrap();
    assert_eq!(c.get::<String>("s").await.unwrap().as_deref(), Some("text"));
    let p = Profile { name: "ada".into(), tags: vec!["x".into()], age: 36 };
    c.set("p", &p).await.unwrap();
    let back: Option<Profile> = c.get("p").await.unwrap();
    assert_eq!(back, Some(p));
    assert!(matches!(c.get::<u32>("s").await, Err(Error::Decode(_))));

    assert!(c.add("a", &1).await.unwrap());
    assert!(!c.add("a", &2).await.unwrap());
    assert_eq!(c.get::<i64>("a").await.unwrap(), Some(1));

    assert_eq!(c.get_or_set("g", &10i64).await.unwrap(), 10);
    assert_eq!(c.get_or_set("g", &20i64).await.unwrap(), 10);
    let calls = Arc::new(AtomicUsize::new(0));
    let n = calls.clone();
    let v: i64 = c
        .get_or_set_with("gw", move || async move {
            n.fetch_add(1, Ordering::SeqCst);
            7
        })
        .await
        .unwrap();
    assert_eq!(v, 7);
    let n = calls.clone();
    let v: i64 = c
        .get_or_set_with("gw", move || async move {
            n.fetch_add(1, Ordering::SeqCst);
            8
        })
        .await
        .unwrap();
    assert_eq!((v, calls.load(Ordering::SeqCst)), (7, 1), "closure runs only on a miss");

    let failed = c.set_many([("m1", 1), ("m2", 2), ("m3", 3)]).await.unwrap();
    assert!(failed.is_empty());
    let got: HashMap<String, i64> = c.get_many(["m1", "m2", "nope", "m3"]).await.unwrap();
    assert_eq!(got, HashMap::from([("m1".into(), 1), ("m2".into(), 2), ("m3".into(), 3)]));
    c.delete_many(["m1", "m2"]).await.unwrap();
    assert_eq!(c.get_many::<i64>(["m1", "m2", "m3"]).await.unwrap().len(), 1);
    assert!(c.get_many::<i64>(Vec::<String>::new()).await.unwrap().is_empty());
    assert!(c.set_many(Vec::<(String, i64)>::new()).await.unwrap().is_empty());
    c.delete_many(Vec::<String>::new()).await.unwrap();

    assert!(c.delete("a").await.unwrap());
    assert!(!c.delete("a").await.unwrap());
    assert!(c.has_key("s").await.unwrap());
    assert!(!c.has_key("a").await.unwrap());
    assert!(c.touch("s").timeout(Timeout::Never).await.unwrap());
    assert!(!c.touch("nope").await.unwrap());

    let stats = c.stats().await.unwrap();
    assert!(stats.entries >= 4 && stats.hits > 0 && stats.sets > 0 && stats.connections >= 1, "{stats:?}");
    assert!(stats.log_bytes > 0 && stats.memory_bytes > 0);
    // Every counter the engine keeps reaches the client.
    assert!(stats.segments >= 1 && stats.read_only == 0, "{stats:?}");
    let names: Vec<&str> = stats.fields().into_iter().map(|(n, _)| n).collect();
    for name in ["segments", "compactions", "compaction_max_pause_us", "read_only", "evicted", "expired"] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }

    c.clear().await.unwrap();
    assert_eq!(c.get::<String>("s").await.unwrap(), None);
    assert_eq!(c.stats().await.unwrap().entries, 0);
    c.close().await.unwrap();
    assert_eq!(c.get::<String>("s").await.unwrap(), None, "a call after close reconnects");
}

#[tokio::test(flavor = "multi_thread")]
async fn versions_and_prefixes() {
    let d = Daemon::start(&[]);
    let c = client(&d).await;
    c.set("k", "v2").version(2).await.unwrap();
    assert_eq!(c.get::<String>("k").await.unwrap(), None);
    assert_eq!(c.get::<String>("k").version(2).await.unwrap().as_deref(), Some("v2"));
    let app = Cache::builder().server(&d.addr).key_prefix("app").version(2).connect().await.unwrap();
    assert_eq!(app.get::<String>("k").await.unwrap(), None, "a prefix separates key spaces");
    app.set("k", "app").await.unwrap();
    assert_eq!(c.get::<String>("k").version(2).await.unwrap().as_deref(), Some("v2"));
    assert_eq!(app.get::<String>("k").await.unwrap().as_deref(), Some("app"));
    let got: HashMap<String, String> = app.get_many(["k"]).await.unwrap();
    assert_eq!(got.get("k").map(String::as_str), Some("app"), "get_many keys are the caller's keys");

    // incr_version moves the value and keeps its expiry.
    c.set("iv", "val").timeout(Duration::from_secs(3600)).await.unwrap();
    assert_eq!(c.incr_version("iv").await.unwrap(), 2);
    assert_eq!(c.get::<String>("iv").await.unwrap(), None);
    assert_eq!(c.get::<String>("iv").version(2).await.unwrap().as_deref(), Some("val"));
    assert_eq!(c.decr_version("iv").version(2).await.unwrap(), 1);
    assert_eq!(c.get::<String>("iv").await.unwrap().as_deref(), Some("val"));
    assert_eq!(c.incr_version("iv").delta(5).await.unwrap(), 6);
    assert!(matches!(c.incr_version("nothing").await, Err(Error::NotFound)));
}

#[tokio::test(flavor = "multi_thread")]
async fn timeouts_zero_never_fractional() {
    let d = Daemon::start(&[]);
    let c = client(&d).await;
    c.set("z", "old").await.unwrap();
    c.set("z", "new").timeout(Duration::ZERO).await.unwrap();
    assert_eq!(c.get::<String>("z").await.unwrap(), None, "zero timeout removes the old value");
    assert!(c.add("z0", &1).timeout(Duration::ZERO).await.unwrap(), "add with zero timeout reports true");
    assert!(!c.has_key("z0").await.unwrap(), "… and stores nothing");
    assert_eq!(c.get_or_set("z1", &5).timeout(Duration::ZERO).await.unwrap(), 5);
    assert!(!c.has_key("z1").await.unwrap());

    c.set("forever", &1).timeout(Timeout::Never).await.unwrap();
    let short = Cache::builder().server(&d.addr).default_timeout(Duration::from_millis(1200)).connect().await.unwrap();
    let t0 = Instant::now();
    short.set("frac", &1).timeout(Duration::from_secs_f64(1.25)).await.unwrap();
    short.set("dflt", &1).await.unwrap();
    short.set_many([("sm1", 1), ("sm2", 2)]).timeout(Duration::from_millis(1250)).await.unwrap();
    eventually(Duration::from_secs(15), "fractional timeout expires", || async {
        !short.has_key("frac").await.unwrap()
    })
    .await;
    assert!(t0.elapsed() >= Duration::from_millis(1250), "expired early: {:?}", t0.elapsed());
    eventually(Duration::from_secs(15), "default timeout expires", || async { !short.has_key("dflt").await.unwrap() })
        .await;
    eventually(Duration::from_secs(15), "get_many drops expired keys", || async {
        short.get_many::<i64>(["sm1", "sm2"]).await.unwrap().is_empty()
    })
    .await;
    assert!(t0.elapsed() >= Duration::from_millis(1200));
    assert!(c.has_key("forever").await.unwrap());
    eventually(Duration::from_secs(15), "expiry removes expired entries without a read", || async {
        c.stats().await.unwrap().entries == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn incr_decr_and_their_errors() {
    let d = Daemon::start(&[]);
    let c = client(&d).await;
    assert!(matches!(c.incr("n").await, Err(Error::NotFound)));
    c.set("n", &5).await.unwrap();
    assert_eq!(c.incr("n").await.unwrap(), 6);
    assert_eq!(c.incr("n").delta(10).await.unwrap(), 16);
    assert_eq!(c.decr("n").await.unwrap(), 15);
    assert_eq!(c.decr("n").delta(20).await.unwrap(), -5);
    assert_eq!(c.get::<i64>("n").await.unwrap(), Some(-5));
    c.set("s", "abc").await.unwrap();
    assert!(matches!(c.incr("s").await, Err(Error::NotAnInteger)));
    c.set("big", &i64::MAX).await.unwrap();
    let e = c.incr("big").await.unwrap_err();
    assert!(matches!(e, Error::Overflow), "{e}");
    assert_eq!(c.get::<i64>("big").await.unwrap(), Some(i64::MAX), "value unchanged on overflow");
    c.set("small", &i64::MIN).await.unwrap();
    assert!(matches!(c.decr("small").await, Err(Error::Overflow)));
    // incr keeps the expiry.
    c.set("t", &1).timeout(Duration::from_millis(800)).await.unwrap();
    c.incr("t").await.unwrap();
    eventually(Duration::from_secs(15), "incr'd key still expires", || async { !c.has_key("t").await.unwrap() }).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_incr_and_add() {
    let d = Daemon::start(&[]);
    let c = client(&d).await;
    c.set("ctr", &0).await.unwrap();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move {
                for _ in 0..200 {
                    c.incr("ctr").await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(c.get::<i64>("ctr").await.unwrap(), Some(10_000));

    let adds: Vec<_> = (0..64)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move { c.add("once", &i).await.unwrap() })
        })
        .collect();
    let mut winners = 0;
    for a in adds {
        winners += a.await.unwrap() as usize;
    }
    assert_eq!(winners, 1);

    // get_or_set_with: concurrent callers on one Cache share one computation.
    let calls = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (c, calls) = (c.clone(), calls.clone());
            tokio::spawn(async move {
                c.get_or_set_with("shared", move || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    42i64
                })
                .await
                .unwrap()
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 42);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_give_clear_errors_and_keep_the_connection() {
    let d = Daemon::start(&["--max-key-bytes", "100", "--max-value-bytes", "9MiB"]);
    let c = client(&d).await;
    let e = c.set("k".repeat(200), &1).await.unwrap_err();
    assert!(matches!(e, Error::InvalidKey(_)) && e.to_string().contains("--max-key-bytes"), "{e}");
    let e = c.set("big", &serde_bytes::ByteBuf::from(vec![0u8; 10 << 20])).await.unwrap_err();
    assert!(matches!(e, Error::ValueTooLarge { max, .. } if max == 9 << 20), "{e}");
    assert!(e.to_string().contains("--max-value-bytes"));
    let failed = c.set_many([("ok", vec![1u8]), ("k".repeat(200).as_str(), vec![2u8])]).await.unwrap();
    assert_eq!(failed, vec!["k".repeat(200)]);
    // Still usable, and an 8 MiB value round-trips.
    let v = serde_bytes::ByteBuf::from((0..8 << 20).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    c.set("eight", &v).await.unwrap();
    assert_eq!(c.get::<serde_bytes::ByteBuf>("eight").await.unwrap(), Some(v));
}

#[tokio::test(flavor = "multi_thread")]
async fn unix_socket_and_several_listeners() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("c.sock");
    // A stale socket file is replaced.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let listen = format!("unix:{}", sock.display());
    let mut d = Daemon::start_in(&tmp.path().join("data"), &listen, &["--listen", "127.0.0.1:0"]);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777, 0o660);
    let c = Cache::connect(&listen).await.unwrap();
    c.set("u", "via unix").await.unwrap();
    assert_eq!(c.get::<String>("u").await.unwrap().as_deref(), Some("via unix"));
    assert!(d.log_text().contains("127.0.0.1:"), "both listeners reported");
    assert!(d.stop());
    assert!(!sock.exists(), "socket removed on exit");
}

#[tokio::test(flavor = "multi_thread")]
async fn reconnects_after_a_restart() {
    let mut d = Daemon::start(&[]);
    let c = client(&d).await;
    c.set("k", "v").timeout(Timeout::Never).await.unwrap();
    d.restart();
    assert_eq!(c.get::<String>("k").await.unwrap().as_deref(), Some("v"));
    c.set("k2", "v2").await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_token_is_enforced() {
    let tmp = tempfile::tempdir().unwrap();
    let token = "s3cret-s3cret-s3cret";
    let file = support::token_file(tmp.path(), token);
    let d = Daemon::start(&["--auth-token-file", file.to_str().unwrap()]);
    let e = Cache::connect(&d.addr).await.err().unwrap();
    assert!(matches!(e, Error::Unauthorized), "{e}");
    let e = Cache::builder().server(&d.addr).auth_token("wrong").connect().await.err().unwrap();
    assert!(matches!(e, Error::Unauthorized));
    let c = Cache::builder().server(&d.addr).auth_token(token).connect().await.unwrap();
    c.set("k", &1).await.unwrap();
    assert_eq!(c.get::<i64>("k").await.unwrap(), Some(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn max_memory_evicts_by_default() {
    let d = Daemon::start(&["--max-memory", "256KiB"]);
    let c = client(&d).await;
    c.set("hot", "h").await.unwrap();
    for i in 0..2000 {
        c.set(format!("k{i}"), &serde_bytes::ByteBuf::from(vec![0u8; 1000])).await.unwrap();
        assert!(c.get::<String>("hot").await.unwrap().is_some(), "a key in use survives eviction");
    }
    let s = c.stats().await.unwrap();
    assert!(s.evicted > 1000 && s.memory_bytes <= 256 << 10, "{s:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn max_memory_refuses_writes_with_cache_full() {
    let d = Daemon::start(&["--max-memory", "64KiB", "--eviction", "noeviction"]);
    let c = client(&d).await;
    let mut full = None;
    for i in 0..1000 {
        if let Err(e) = c.set(format!("k{i}"), &serde_bytes::ByteBuf::from(vec![0u8; 1000])).await {
            full = Some(e);
            break;
        }
    }
    let e = full.expect("the cap was reached");
    assert!(matches!(e, Error::CacheFull(_)) && e.to_string().contains("--max-memory"), "{e}");
    c.delete("k0").await.unwrap();
    assert!(c.get::<serde_bytes::ByteBuf>("k1").await.unwrap().is_some(), "reads keep working");
}

#[tokio::test(flavor = "multi_thread")]
async fn clear_prefix_removes_only_this_clients_keys_and_survives_restart() {
    let mut d = Daemon::start(&[]);
    let addr = d.addr.clone();
    let app = |p: &str| Cache::builder().server(addr.clone()).key_prefix(p).connect();
    let (a, b) = (app("a").await.unwrap(), app("b").await.unwrap());
    for i in 0..50 {
        a.set(format!("k{i}"), &i).await.unwrap();
        a.set(format!("k{i}"), &i).version(2).await.unwrap();
        b.set(format!("k{i}"), &i).await.unwrap();
    }
    a.clear_prefix().await.unwrap();
    assert_eq!(a.get::<i32>("k1").await.unwrap(), None);
    assert_eq!(a.get::<i32>("k1").version(2).await.unwrap(), None, "every version goes");
    assert_eq!(b.get::<i32>("k1").await.unwrap(), Some(1), "another prefix stays");
    drop((a, b));
    d.restart();
    let (a, b) = (app("a").await.unwrap(), app("b").await.unwrap());
    assert_eq!(a.get::<i32>("k7").await.unwrap(), None, "the clear is on record");
    assert_eq!(b.stats().await.unwrap().entries, 50);
}

/// With one network thread (`--io-threads 1`, the default under
/// `taskset -c 0` and on one-CPU machines) cachetd runs tokio's
/// single-threaded scheduler: many connections, both protocols, `always`
/// (whose writes hop to the engine thread and back) and a clean stop.
#[tokio::test(flavor = "multi_thread")]
async fn one_network_thread_serves_many_connections_and_stops_cleanly() {
    let mut d = Daemon::start_resp(&["--io-threads", "1", "--sync", "always"]);
    let tarpc_addr = d.addrs[1].clone();
    let c = Cache::connect(&tarpc_addr).await.unwrap();
    c.set("ctr", &0).await.unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let addr = tarpc_addr.clone();
            tokio::spawn(async move {
                let c = Cache::connect(&addr).await.unwrap();
                for n in 0..100 {
                    c.set(format!("k{i}"), &n).await.unwrap();
                    c.incr("ctr").await.unwrap();
                }
                c.get::<i64>(format!("k{i}")).await.unwrap()
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), Some(99));
    }
    assert_eq!(c.get::<i64>("ctr").await.unwrap(), Some(800));
    let mut s = std::net::TcpStream::connect(d.resp_addr()).unwrap();
    std::io::Write::write_all(&mut s, b"*2\r\n$3\r\nGET\r\n$5\r\n:1:k3\r\n").unwrap();
    let mut reply = [0u8; 16];
    let n = std::io::Read::read(&mut s, &mut reply).unwrap();
    assert_eq!(&reply[..n], b"$1\r\n\x63\r\n", "rmp-serde encodes 99 as one byte, 0x63");
    drop(s);
    drop(c);
    assert!(d.stop(), "cachetd did not exit 0 on SIGTERM");
}
