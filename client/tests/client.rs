//! The client crate's behaviour a user relies on beyond the doc examples:
//! lazy connection, errors that name what went wrong, the blocking client,
//! and `Debug` output that never shows the token.

use std::time::Duration;

use cachet::{Cache, Error, Timeout};

/// A port nothing listens on: bound, then closed.
fn dead_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

#[tokio::test]
async fn every_server_down_connects_lazily_and_fails_per_call_with_its_name() {
    let addr = dead_addr();
    let cache = Cache::builder().server(&addr).request_timeout(Duration::from_secs(2)).connect().await.unwrap();
    match cache.get::<i32>("k").await {
        Err(Error::Connection { server, .. }) => assert_eq!(server, addr),
        other => panic!("expected a connection error naming {addr}, got {other:?}"),
    }
    let shown = cache.set("k", &1).await.unwrap_err().to_string();
    assert!(shown.contains(&addr) && shown.contains("check that cachetd runs"), "{shown}");
}

#[tokio::test]
async fn a_decode_error_names_the_key_and_the_type() {
    let d = cachet::doctest::start();
    let cache = Cache::connect(&d.addr).await.unwrap();
    cache.set("word", "hello").await.unwrap();
    let e = cache.get::<u64>("word").await.unwrap_err();
    let Error::Decode(ref inner) = e else { panic!("{e:?}") };
    assert_eq!((inner.key.as_str(), inner.type_name), ("word", "u64"));
    let shown = e.to_string();
    assert!(shown.contains("\"word\"") && shown.contains("u64"), "{shown}");
    // get_many names the key too.
    let e = cache.get_many::<u64>(["word"]).await.unwrap_err();
    assert!(e.to_string().contains("\"word\""), "{e}");
}

#[tokio::test]
async fn debug_shows_settings_but_never_the_token() {
    let cache = Cache::builder().server(dead_addr()).auth_token("hunter2-secret").connect().await.unwrap();
    let shown = format!("{cache:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("<redacted>") && shown.contains("servers"), "{shown}");
}

#[test]
fn the_blocking_client_makes_the_same_calls() {
    let d = cachet::doctest::start();
    let cache = cachet::blocking::Cache::builder().server(&d.addr).key_prefix("b").connect().unwrap();
    cache.set("k", &5).timeout(Duration::from_secs(60)).send().unwrap();
    assert_eq!(cache.incr("k").delta(2).send().unwrap(), 7);
    assert_eq!(cache.get::<i64>("k").send().unwrap(), Some(7));
    assert_eq!(cache.get("missing").default(9i64).send().unwrap(), 9);
    let v: String = cache.get_or_set_with("computed", || "once".to_string()).send().unwrap();
    assert_eq!(v, "once");
    let v: String = cache.get_or_set_with("computed", || unreachable!()).send().unwrap();
    assert_eq!(v, "once");
    assert!(matches!(cache.ttl("k").send().unwrap(), Some(Timeout::After(d)) if d <= Duration::from_secs(60)));
    assert!(cache.add("k", &1).send().map(|stored| !stored).unwrap());
    assert_eq!(cache.incr_version("k").send().unwrap(), 2);
    assert_eq!(cache.get::<i64>("k").version(2).send().unwrap(), Some(7));
    assert_eq!(cache.stats().unwrap().entries, 2);
    cache.clear_prefix().unwrap();
    assert_eq!(cache.stats().unwrap().entries, 0);
    assert!(cache.ping().unwrap() < Duration::from_secs(5));
}
