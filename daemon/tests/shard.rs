//! One `Cache` over three real daemons: keys spread evenly by rendezvous
//! hashing, removing a server moves only its keys, multi-key calls split and
//! merge, and a daemon that dies and comes back is handled both ways
//! (fail fast, or `down_is_miss`).

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use cachet::{Cache, Error};
use support::Daemon;

async fn cache_over(daemons: &[&Daemon], down_is_miss: bool) -> Cache {
    let mut b = Cache::builder().request_timeout(Duration::from_secs(5)).down_is_miss(down_is_miss);
    for d in daemons {
        b = b.server(&d.addr);
    }
    b.connect().await.unwrap()
}

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("user:{i}")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn spread_split_merge_and_rebalance() {
    let (a, b, c) = (Daemon::start(&[]), Daemon::start(&[]), Daemon::start(&[]));
    let all = cache_over(&[&a, &b, &c], false).await;
    let ks = keys(10_000);
    let failed = all.set_many(ks.iter().map(|k| (k.as_str(), k.len() as u64))).await.unwrap();
    assert!(failed.is_empty());
    let stats = all.stats().await.unwrap();
    assert_eq!(stats.entries, 10_000);
    assert_eq!(stats.per_server.len(), 3);
    for (server, s) in &stats.per_server {
        assert!((3000..=3667).contains(&s.entries), "{server} holds {} of 10000", s.entries);
    }
    let got: HashMap<String, u64> = all.get_many(&ks).await.unwrap();
    assert_eq!(got.len(), 10_000);
    assert!(got.iter().all(|(k, v)| *v == k.len() as u64));

    // Without server c, exactly the keys c held are missing; none moved elsewhere.
    let on_c = stats.per_server.iter().find(|(s, _)| *s == c.addr).unwrap().1.entries as usize;
    let two = cache_over(&[&a, &b], false).await;
    let seen: HashMap<String, u64> = two.get_many(&ks).await.unwrap();
    assert_eq!(seen.len(), 10_000 - on_c, "keys of a and b stay where they were");
    assert!(on_c > 3000 && on_c < 3667);

    all.delete_many(&ks[..100]).await.unwrap();
    assert_eq!(all.stats().await.unwrap().entries, 9_900);
    all.clear().await.unwrap();
    assert_eq!(all.stats().await.unwrap().entries, 0, "clear reaches every server");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_server_fails_fast_or_misses_and_comes_back() {
    let (a, b) = (Daemon::start(&[]), Daemon::start(&[]));
    let mut c = Daemon::start(&[]);
    let strict = cache_over(&[&a, &b, &c], false).await;
    let lenient = cache_over(&[&a, &b, &c], true).await;
    let ks = keys(300);
    strict.set_many(ks.iter().map(|k| (k.as_str(), 1u8))).timeout(cachet::Timeout::Never).await.unwrap();
    let on_c: HashSet<String> = {
        let two = cache_over(&[&a, &b], false).await;
        let kept: HashMap<String, u8> = two.get_many(&ks).await.unwrap();
        ks.iter().filter(|k| !kept.contains_key(*k)).cloned().collect()
    };
    assert!(!on_c.is_empty());

    c.kill9();
    let victim = on_c.iter().next().unwrap().clone();
    let survivor = ks.iter().find(|k| !on_c.contains(*k)).unwrap().clone();
    // Strict: the dead server's keys fail with its address; others work.
    let started = std::time::Instant::now();
    let e = strict.get::<u8>(&victim).await.unwrap_err();
    assert!(matches!(&e, Error::Connection { server, .. } if *server == c.addr), "{e}");
    assert!(started.elapsed() < Duration::from_secs(3), "fails fast");
    assert_eq!(strict.get::<u8>(&survivor).await.unwrap(), Some(1));
    assert!(strict.get_many::<u8>(&ks).await.is_err());
    // Lenient: misses and failed keys instead.
    assert_eq!(lenient.get::<u8>(&victim).await.unwrap(), None);
    let got: HashMap<String, u8> = lenient.get_many(&ks).await.unwrap();
    assert_eq!(got.len(), ks.len() - on_c.len());
    let failed: HashSet<String> =
        lenient.set_many(ks.iter().map(|k| (k.as_str(), 2u8))).await.unwrap().into_iter().collect();
    assert_eq!(failed, on_c);
    lenient.set(&victim, &3u8).await.unwrap();

    // The daemon comes back (with its log): both clients resume by themselves.
    c.start_again();
    support::eventually(Duration::from_secs(30), "strict client reconnects", || async {
        strict.get::<u8>(&victim).await.ok().flatten() == Some(1)
    })
    .await;
    support::eventually(Duration::from_secs(30), "lenient client reconnects", || async {
        lenient.get::<u8>(&victim).await.ok().flatten() == Some(1)
    })
    .await;
}

/// `incr_version` between two servers copies the value with the time it has
/// left (it used to re-set it with the default timeout of 300 s).
#[tokio::test(flavor = "multi_thread")]
async fn incr_version_across_servers_keeps_the_expiry() {
    let (a, b) = (Daemon::start(&[]), Daemon::start(&[]));
    let two = cache_over(&[&a, &b], false).await;
    let one_a = cache_over(&[&a], false).await;
    // Keys whose versions 1 and 2 live on different servers.
    let mut moved = 0;
    for k in keys(40) {
        two.set(&k, &7u32).timeout(Duration::from_millis(1500)).await.unwrap();
        let on_a_before = one_a.get::<u32>(&k).await.unwrap().is_some();
        assert_eq!(two.incr_version(&k).await.unwrap(), 2);
        let on_a_after = one_a.get::<u32>(&k).version(2).await.unwrap().is_some();
        if on_a_before != on_a_after {
            moved += 1;
        }
        assert_eq!(two.get::<u32>(&k).version(2).await.unwrap(), Some(7));
    }
    assert!(moved > 5, "only {moved} keys changed server");
    support::eventually(Duration::from_secs(30), "every copied value expired", || async {
        for k in keys(40) {
            if two.get::<u32>(&k).version(2).await.unwrap().is_some() {
                return false;
            }
        }
        true
    })
    .await;
}
