//! Compaction: the data directory copied at every step of compactions (a
//! crash at that point) replays to exactly the in-memory state of that
//! moment, and an overwrite-heavy run keeps the log near its live size.

use std::path::Path;
use std::sync::{Arc, Mutex};

use cachet_storage::testing::int;
use cachet_storage::{
    Command, Config, Engine, Hook, Limits, ManualClock, Reply, State, Stats, SyncPolicy, Ttl, UnixMillis, testing,
};

type Entries = Vec<(Vec<u8>, Vec<u8>, u64)>;

struct Snapshot {
    point: &'static str,
    dir: tempfile::TempDir,
    now: u64,
    expected: Entries,
}

fn copy_dir(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if name != "LOCK" {
            std::fs::copy(e.path(), to.path().join(name)).unwrap();
        }
    }
    to
}

fn entries_of(state: &State, now: u64) -> Entries {
    let mut v: Entries = state.entries(now).map(|(k, v, e)| (k.to_vec(), v.to_vec(), e)).collect();
    v.sort();
    v
}

fn stats(engine: &Engine) -> Stats {
    match engine.handle().call_blocking(Command::Stats).unwrap() {
        Reply::Stats(s) => *s,
        r => panic!("{r:?}"),
    }
}

#[test]
fn a_crash_at_any_step_of_compaction_replays_to_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let snapshots: Arc<Mutex<Vec<Snapshot>>> = Arc::default();
    let sink = snapshots.clone();
    let hook = Hook(Arc::new(move |p: &cachet_storage::HookPoint<'_>| {
        sink.lock().unwrap().push(Snapshot {
            point: p.point,
            dir: copy_dir(p.dir),
            now: p.now,
            expected: entries_of(p.state, p.now),
        });
    }));
    let clock = ManualClock::new(UnixMillis(1_700_000_000_000));
    let config = Config {
        sync: SyncPolicy::Never,
        segment_bytes: 1024,
        compact_min_bytes: 2048,
        hook: Some(hook),
        ..Config::new(dir.path())
    };
    let engine = Engine::open_with(config, Arc::new(clock.clone()), |_| {}).unwrap();
    let h = engine.handle();
    let mut x = 7u64;
    for i in 0..3000u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let key = format!("k{}", x % 40).into_bytes();
        let cmd = match x % 15 {
            12 => Command::IncrText { key, delta: 1 },
            13 if i % 50 == 0 => Command::ClearPrefix { prefix: format!("k{}", x % 4).into_bytes() },
            14 if i % 90 == 0 => Command::ClearDb { db: 0 },
            0 => Command::Delete { key },
            1 => Command::Touch { key, ttl: Ttl::Millis(200) },
            2 => Command::Touch { key, ttl: Ttl::Never },
            3 => Command::Set { key, value: int(i as i64), ttl: Ttl::Millis(50 + x % 500) },
            4 => Command::Incr { key, delta: 1 },
            _ => Command::Set { key, value: vec![b'a' + (i % 26) as u8; (x % 60) as usize], ttl: Ttl::Never },
        };
        let _ = h.call_blocking(cmd);
        clock.advance(x % 7);
    }
    // Let the last compaction run to its end.
    for _ in 0..200 {
        h.call_blocking(Command::Stats).unwrap();
    }
    let s = stats(&engine);
    drop(h);
    engine.shutdown().unwrap();
    let snapshots = snapshots.lock().unwrap();
    assert!(s.compactions >= 3, "{s:?}");
    for point in ["compact-slice", "compact-synced", "compact-floor", "compact-unlinked"] {
        assert!(snapshots.iter().any(|s| s.point == point), "no crash point {point}");
    }
    for (i, snap) in snapshots.iter().enumerate() {
        let mut state = State::new(Limits::default(), snap.now);
        testing::replay(snap.dir.path(), &mut state, snap.now)
            .unwrap_or_else(|e| panic!("snapshot {i} ({}): {e}", snap.point));
        assert_eq!(entries_of(&state, snap.now), snap.expected, "snapshot {i} at {}", snap.point);
    }
}

#[test]
fn overwrites_keep_the_log_near_its_live_size() {
    let dir = tempfile::tempdir().unwrap();
    let segment = 8 << 10;
    let min = 32 << 10;
    let config =
        Config { sync: SyncPolicy::Never, segment_bytes: segment, compact_min_bytes: min, ..Config::new(dir.path()) };
    let engine = Engine::open(config.clone()).unwrap();
    let h = engine.handle();
    let mut worst = 0.0f64;
    for i in 0..40_000u64 {
        let key = format!("key{}", (i * 7919) % 300).into_bytes();
        h.call_blocking(Command::Set { key, value: vec![(i % 251) as u8; 100], ttl: Ttl::Never }).unwrap();
        if i % 500 == 0 {
            let s = stats(&engine);
            // While a finish unlinks the old prefix, the log briefly holds it too.
            let bound = 4 * s.log_live_bytes + 2 * segment + 2 * min;
            assert!(s.log_bytes <= bound, "at {i}: log {} live {}", s.log_bytes, s.log_live_bytes);
            worst = worst.max(s.log_bytes as f64 / s.log_live_bytes as f64);
        }
    }
    // Once writes stop and the last compaction has finished, the log is
    // within twice its live data plus a segment (and the floor size).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let s = loop {
        let s = stats(&engine);
        if s.log_bytes <= 2 * s.log_live_bytes + segment + min {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "log never settled: {s:?}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert!(s.compactions > 10, "{s:?}");
    println!("worst log/live ratio seen: {worst:.2}; longest compaction slice: {} us", s.compaction_max_pause_us);
    drop(h);
    engine.shutdown().unwrap();
    // And what is left replays to the same 300 keys.
    let engine = Engine::open(config).unwrap();
    assert_eq!(stats(&engine).entries, 300);
}
