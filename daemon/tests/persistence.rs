//! Restarts: a clean SIGTERM keeps exactly the unexpired state; a SIGKILL
//! under `--sync always` loses no acknowledged write.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cachet::{Cache, Timeout};
use support::Daemon;

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_then_restart_keeps_exactly_the_unexpired_state() {
    let mut d = Daemon::start(&[]);
    let c = Cache::connect(&d.addr).await.unwrap();
    c.set("old", "o").timeout(Timeout::Never).await.unwrap();
    c.clear().await.unwrap();
    c.set("never", "n").timeout(Timeout::Never).await.unwrap();
    c.set("hour", "h").timeout(Duration::from_secs(3600)).await.unwrap();
    c.set("second", "s").timeout(Duration::from_secs(1)).await.unwrap();
    c.set("touched", "t").timeout(Duration::from_secs(1)).await.unwrap();
    assert!(c.touch("touched").timeout(Timeout::Never).await.unwrap());
    c.set("shortened", "x").timeout(Timeout::Never).await.unwrap();
    assert!(c.touch("shortened").timeout(Duration::from_secs(1)).await.unwrap());
    c.set("ctr", &10).timeout(Duration::from_secs(3600)).await.unwrap();
    c.incr("ctr").delta(5).await.unwrap();
    c.set("gone", "g").await.unwrap();
    assert!(c.delete("gone").await.unwrap());
    c.set("after_clear", "a").timeout(Timeout::Never).await.unwrap();
    c.set("versioned", "v").timeout(Timeout::Never).await.unwrap();
    assert_eq!(c.incr_version("versioned").await.unwrap(), 2);
    c.set("zero", "z").timeout(Duration::ZERO).await.unwrap();
    let set_at = Instant::now();

    assert!(d.stop(), "clean exit on SIGTERM:\n{}", d.log_text());
    assert!(d.log_text().contains("stopped cleanly"));
    // Wait past the one-second timeouts while the daemon is down.
    let wait = Duration::from_millis(1300).saturating_sub(set_at.elapsed());
    std::thread::sleep(wait);
    d.start_again();
    let c = Cache::connect(&d.addr).await.unwrap();
    let keys =
        ["never", "hour", "second", "touched", "shortened", "ctr", "gone", "old", "after_clear", "versioned", "zero"];
    let strings: HashMap<String, String> = c.get_many(keys.iter().filter(|k| **k != "ctr")).await.unwrap();
    let want: HashMap<String, String> = [("never", "n"), ("hour", "h"), ("touched", "t"), ("after_clear", "a")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(strings, want);
    assert_eq!(c.get::<i64>("ctr").await.unwrap(), Some(15));
    assert_eq!(c.get::<String>("versioned").version(2).await.unwrap().as_deref(), Some("v"));
    assert_eq!(c.stats().await.unwrap().entries, 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_under_sync_always_loses_no_acknowledged_write() {
    let mut d = Daemon::start(&["--sync", "always"]);
    let acked: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let c = Cache::builder().server(&d.addr).request_timeout(Duration::from_secs(2)).connect().await.unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (c, acked, stop) = (c.clone(), acked.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let key = format!("w{w}:{}", i % 50);
                    if c.set(&key, &i).timeout(Timeout::Never).await.is_ok() {
                        acked.lock().unwrap().insert(key, i);
                    } else {
                        break;
                    }
                    i += 1;
                }
            })
        })
        .collect();
    // Let some writes through, then kill the daemon mid-stream.
    support::eventually(Duration::from_secs(30), "writes acknowledged", || async {
        acked.lock().unwrap().len() >= 200
    })
    .await;
    d.kill9();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        let _ = w.await;
    }
    d.start_again();
    let c = Cache::connect(&d.addr).await.unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 200);
    for (key, v) in acked {
        // A write in flight at the kill may have landed after the last
        // acknowledged one: the value is that or a later one, never older.
        let got = c.get::<u64>(&key).await.unwrap().unwrap_or_else(|| panic!("{key} lost"));
        assert!(got >= v, "{key}: acknowledged {v}, found {got}");
    }
}
