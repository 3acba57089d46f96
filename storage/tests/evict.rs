//! Memory bounds: S3-FIFO eviction keeps the caps, expired entries go
//! first, `noeviction` refuses writes, and replay applies the same caps.

use std::sync::Arc;

use cachet_storage::{
    Command, Config, Engine, Error, Eviction, Limits, ManualClock, NullSink, Reply, State, Ttl, UnixMillis, testing,
};
use proptest::prelude::*;

const NOW: u64 = 1_700_000_000_000;

fn set(state: &mut State, key: &str, value: &[u8], ttl: Ttl, now: u64) -> Result<Reply, Error> {
    testing::apply(state, &Command::Set { key: key.into(), value: value.to_vec(), ttl }, now, &mut NullSink)
}

fn get(state: &mut State, key: &str, now: u64) -> Option<Vec<u8>> {
    match testing::apply(state, &Command::Get { key: key.into() }, now, &mut NullSink).unwrap() {
        Reply::Value(v) => v,
        r => panic!("{r:?}"),
    }
}

fn stats(state: &mut State) -> cachet_storage::Stats {
    match testing::apply(state, &Command::Stats, NOW, &mut NullSink).unwrap() {
        Reply::Stats(s) => *s,
        r => panic!("{r:?}"),
    }
}

#[test]
fn max_entries_evicts_and_keeps_what_is_used() {
    let mut s = State::new(Limits { max_entries: Some(100), ..Limits::default() }, NOW);
    set(&mut s, "hot", b"h", Ttl::Never, NOW).unwrap();
    for i in 0..2000 {
        set(&mut s, &format!("k{i}"), b"v", Ttl::Never, NOW).unwrap();
        assert_eq!(get(&mut s, "hot", NOW).as_deref(), Some(&b"h"[..]), "the hot key was evicted at {i}");
    }
    assert_eq!(s.len(), 100);
    assert_eq!(stats(&mut s).evicted, 1901);
}

#[test]
fn max_memory_is_a_hard_bound() {
    let max = 200_000u64;
    let mut s = State::new(Limits { max_memory: Some(max), ..Limits::default() }, NOW);
    for i in 0..5000u64 {
        let v = vec![0u8; (i % 700) as usize];
        set(&mut s, &format!("key{i}"), &v, Ttl::Never, NOW).unwrap();
        assert!(s.memory_bytes() as u64 <= max, "{} > {max} at {i}", s.memory_bytes());
    }
    assert!(stats(&mut s).evicted > 0);
    assert!(s.memory_bytes() as u64 > max / 2, "the cache is used, not emptied");
}

#[test]
fn caps_set_at_run_time_take_effect_at_once() {
    let cmd = |s: &mut State, max_memory, max_entries| {
        testing::apply(s, &Command::SetCaps { max_memory, max_entries }, NOW + 10, &mut NullSink).unwrap()
    };
    // No cap at start: S3-FIFO is not tracking anything yet.
    let mut s = State::new(Limits::default(), NOW);
    for i in 0..1000 {
        set(&mut s, &format!("k{i}"), &[7u8; 100], Ttl::Never, NOW).unwrap();
    }
    set(&mut s, "short", &[7u8; 100], Ttl::Millis(5), NOW).unwrap();
    assert_eq!(cmd(&mut s, None, Some(100)), Reply::Done);
    assert_eq!(s.len(), 100);
    let st = stats(&mut s);
    assert_eq!((st.expired, st.evicted), (1, 900), "the expired entry went first");
    // Later writes keep the new cap; lowering memory evicts down to it.
    for i in 0..500 {
        set(&mut s, &format!("n{i}"), &[7u8; 100], Ttl::Never, NOW).unwrap();
        assert!(s.len() <= 100);
    }
    let max = s.memory_bytes() as u64 / 2;
    cmd(&mut s, Some(max), None);
    assert!(s.memory_bytes() as u64 <= max && s.len() > 10, "{} bytes, {} entries", s.memory_bytes(), s.len());
    // Lifting the caps keeps what is there and evicts no more.
    cmd(&mut s, None, None);
    let held = s.len();
    for i in 0..500 {
        set(&mut s, &format!("m{i}"), &[7u8; 100], Ttl::Never, NOW).unwrap();
    }
    assert_eq!(s.len(), held + 500);
}

#[test]
fn expired_entries_go_before_live_ones() {
    let mut s = State::new(Limits { max_entries: Some(10), eviction: Eviction::NoEviction, ..Limits::default() }, NOW);
    for i in 0..5 {
        set(&mut s, &format!("live{i}"), b"v", Ttl::Never, NOW).unwrap();
        set(&mut s, &format!("short{i}"), b"v", Ttl::Millis(10), NOW).unwrap();
    }
    let e = set(&mut s, "more", b"v", Ttl::Never, NOW).unwrap_err();
    assert!(matches!(e, Error::CacheFull { .. }) && e.to_string().contains("--max-memory"), "{e}");
    // Once the short ones expire, their room is reclaimed even under noeviction.
    set(&mut s, "more", b"v", Ttl::Never, NOW + 10).unwrap();
    for i in 0..5 {
        assert!(get(&mut s, &format!("live{i}"), NOW + 10).is_some());
    }
}

#[test]
fn replay_applies_the_caps() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(UnixMillis(NOW));
    let engine = Engine::open_with(Config::new(dir.path()), Arc::new(clock.clone()), |_| {}).unwrap();
    for i in 0..1000 {
        engine
            .handle()
            .call_blocking(Command::Set { key: format!("k{i}").into(), value: vec![1; 50], ttl: Ttl::Never })
            .unwrap();
    }
    engine.shutdown().unwrap();
    let limits = Limits { max_entries: Some(100), ..Limits::default() };
    let engine = Engine::open_with(Config { limits, ..Config::new(dir.path()) }, Arc::new(clock), |_| {}).unwrap();
    match engine.handle().call_blocking(Command::Stats).unwrap() {
        Reply::Stats(s) => assert_eq!((s.entries, s.evicted), (100, 900)),
        r => panic!("{r:?}"),
    }
}

/// Replay fills the arena with pages another thread faulted in ahead of
/// it: with a cap's small pages, a log of many pages reads back whole, and
/// the caps still hold.
#[test]
fn replay_into_many_pages_reads_back_every_value() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(UnixMillis(NOW));
    // 8 MiB: 128 KiB pages; 3,000 200-byte values fill about five.
    let limits = Limits { max_memory: Some(8 << 20), ..Limits::default() };
    let config = || Config { limits, ..Config::new(dir.path()) };
    let value = |i: u32| i.to_le_bytes().repeat(50);
    let engine = Engine::open_with(config(), Arc::new(clock.clone()), |_| {}).unwrap();
    for i in 0..3000u32 {
        let cmd = Command::Set { key: format!("k{i}").into(), value: value(i), ttl: Ttl::Never };
        engine.handle().call_blocking(cmd).unwrap();
    }
    engine.shutdown().unwrap();
    let engine = Engine::open_with(config(), Arc::new(clock), |_| {}).unwrap();
    let h = engine.handle();
    for i in 0..3000u32 {
        match h.call_blocking(Command::Get { key: format!("k{i}").into() }).unwrap() {
            Reply::Value(Some(v)) => assert_eq!(v, value(i), "k{i}"),
            r => panic!("k{i}: {r:?}"),
        }
    }
    match h.call_blocking(Command::Stats).unwrap() {
        Reply::Stats(s) => assert_eq!((s.entries, s.evicted), (3000, 0)),
        r => panic!("{r:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whatever eviction does, what the cache returns is what was last
    /// written, and the caps hold after every step.
    #[test]
    fn eviction_never_returns_wrong_values(ops in prop::collection::vec((0u8..60, 0usize..300, any::<bool>()), 1..400)) {
        let mut s = State::new(Limits { max_memory: Some(8_000), max_entries: Some(30), ..Limits::default() }, NOW);
        let mut model = std::collections::HashMap::new();
        for (k, len, read) in ops {
            let key = format!("k{k}");
            if read {
                if let Some(v) = get(&mut s, &key, NOW) {
                    prop_assert_eq!(Some(&v), model.get(&key));
                }
            } else {
                let v = vec![k; len];
                set(&mut s, &key, &v, Ttl::Never, NOW).unwrap();
                model.insert(key, v);
            }
            prop_assert!(s.memory_bytes() <= 8_000 && s.len() <= 30);
        }
    }
}
