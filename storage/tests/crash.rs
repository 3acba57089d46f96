//! Crash and corruption: a log cut at every byte offset, and single bytes
//! flipped across the whole log. Replay must equal the model after some
//! prefix of the operations, or (for damage that is not a torn tail) fail
//! with a corruption error naming the file and offset. It never yields a
//! value that was not written.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cachet_storage::testing::{Model, int};
use cachet_storage::{
    Command, Config, Engine, Error, Limits, ManualClock, State, SyncPolicy, Ttl, UnixMillis, testing,
};

const START: u64 = 1_700_000_000_000;

/// A deterministic mix of operations over a few keys.
fn workload() -> Vec<(Command, u64)> {
    let mut ops = Vec::new();
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for i in 0..300u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let key = format!("k{}", x % 11).into_bytes();
        let ttl = match x % 5 {
            0 => Ttl::Never,
            1 => Ttl::Millis(0),
            _ => Ttl::Millis(50 + x % 400),
        };
        let cmd = match (x >> 8) % 14 {
            0..=3 => Command::Set { key, value: format!("v{i}").into_bytes(), ttl },
            4 => Command::Set { key, value: int(i as i64), ttl: Ttl::Never },
            5 => Command::Incr { key, delta: 2 },
            6 => Command::Delete { key },
            7 => Command::Touch { key, ttl },
            8 => Command::Add { key, value: b"added".to_vec(), ttl },
            // Version 2's records: text values, and clears of a prefix or a
            // database (database 1 holds none of these keys: a no-op clear).
            9 => Command::IncrText { key, delta: 3 },
            10 => Command::SetWith {
                key,
                value: format!("{i}").into_bytes(),
                expiry: cachet_storage::Expiry::Ttl(ttl),
                when: cachet_storage::When::Always,
                get: false,
            },
            11 => Command::ClearPrefix { prefix: b"k1".to_vec() },
            12 => Command::ClearDb { db: (x % 2) as u8 },
            _ => Command::Set { key, value: vec![b'x'; (x % 40) as usize], ttl },
        };
        ops.push((cmd, x % 30));
    }
    ops
}

struct Written {
    dir: tempfile::TempDir,
    segment: PathBuf,
    /// (log length after the op, model state then, clock then)
    snapshots: Vec<(u64, Model, u64)>,
    end: u64,
}

fn only_segment(dir: &Path) -> PathBuf {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("seg-"))
        .collect();
    segs.sort();
    assert_eq!(segs.len(), 1, "{segs:?}");
    segs.pop().unwrap()
}

fn write_log() -> Written {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(UnixMillis(START));
    let config = Config { sync: SyncPolicy::Never, ..Config::new(dir.path()) };
    let engine = Engine::open_with(config, Arc::new(clock.clone()), |_| {}).unwrap();
    let h = engine.handle();
    // `clear` starts a new segment, so the workload has none; clear is
    // covered by its own test here and across cuts by `power.rs`.
    let mut model = Model::default();
    let mut now = START;
    let segment = only_segment(dir.path());
    let mut snapshots = vec![(std::fs::metadata(&segment).unwrap().len(), model.clone(), now)];
    for (cmd, advance) in workload() {
        let _ = model.apply(&cmd, now);
        let _ = h.call_blocking(cmd);
        snapshots.push((std::fs::metadata(&segment).unwrap().len(), model.clone(), now));
        now += advance;
        clock.advance(advance);
    }
    drop(h);
    engine.shutdown().unwrap();
    let end = std::fs::metadata(&segment).unwrap().len();
    Written { dir, segment, snapshots, end }
}

/// Live entries as (key, value, expires), sorted.
type Entries = Vec<(Vec<u8>, Vec<u8>, u64)>;

fn replayed(dir: &Path, now: u64) -> Result<Entries, Error> {
    let mut state = State::new(Limits::default(), now);
    testing::replay(dir, &mut state, now)?;
    let mut v: Vec<_> = state.entries(now).map(|(k, v, e)| (k.to_vec(), v.to_vec(), e)).collect();
    v.sort();
    Ok(v)
}

/// The state replay must produce from a log whose valid prefix ends at `len`,
/// read at time `now`.
fn expected_at(w: &Written, len: u64, now: u64) -> Entries {
    // Before the first record (a cut inside the header) the log is empty.
    w.snapshots.iter().rev().find(|(l, _, _)| *l <= len).map_or_else(Vec::new, |(_, model, _)| model.live_entries(now))
}

#[test]
fn cut_at_every_offset_replays_a_prefix() {
    let w = write_log();
    let bytes = std::fs::read(&w.segment).unwrap();
    assert!(w.snapshots.len() > 250);
    let scratch = tempfile::tempdir().unwrap();
    let seg = scratch.path().join(w.segment.file_name().unwrap());
    // Read at the time the log was written: prefixes then differ visibly.
    let now = w.snapshots.last().unwrap().2;
    for cut in 0..=bytes.len() {
        std::fs::write(&seg, &bytes[..cut]).unwrap();
        let got = replayed(scratch.path(), now).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert_eq!(got, expected_at(&w, cut as u64, now), "cut at {cut}");
    }
    assert_eq!(w.end, bytes.len() as u64);
}

#[test]
fn torn_tail_is_cut_off_and_the_engine_opens_and_appends() {
    let w = write_log();
    let bytes = std::fs::read(&w.segment).unwrap();
    let cut = bytes.len() - 7;
    std::fs::write(&w.segment, &bytes[..cut]).unwrap();
    let now = w.snapshots.last().unwrap().2;
    let clock = ManualClock::new(UnixMillis(now));
    let config = Config::new(w.dir.path());
    let engine = Engine::open_with(config.clone(), Arc::new(clock.clone()), |_| {}).unwrap();
    let torn = engine.replay_report().torn.clone().expect("torn tail reported");
    assert_eq!(torn.file, w.segment);
    assert!(torn.bytes_dropped > 0);
    engine
        .handle()
        .call_blocking(Command::Set { key: b"after".to_vec(), value: b"1".to_vec(), ttl: Ttl::Never })
        .unwrap();
    engine.shutdown().unwrap();
    let mut want = expected_at(&w, cut as u64, now);
    want.push((b"after".to_vec(), b"1".to_vec(), 0));
    want.sort();
    assert_eq!(replayed(w.dir.path(), now).unwrap(), want);
}

#[test]
fn flipped_bytes_give_a_prefix_or_a_named_corruption() {
    let w = write_log();
    let bytes = std::fs::read(&w.segment).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let seg = scratch.path().join(w.segment.file_name().unwrap());
    let now = w.snapshots.last().unwrap().2;
    let full = expected_at(&w, bytes.len() as u64, now);
    let (mut prefixes, mut corrupt) = (0, 0);
    for i in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0x5a;
        std::fs::write(&seg, &bad).unwrap();
        match replayed(scratch.path(), now) {
            Ok(got) => {
                // Only a damaged last record may pass, as a torn tail.
                let ok = w.snapshots.iter().any(|(_, m, _)| m.live_entries(now) == got);
                assert!(ok, "flip at {i} yielded a state no prefix had");
                assert_ne!(got, full, "flip at {i} went unnoticed");
                prefixes += 1;
            }
            Err(Error::Corrupt { file, offset, .. }) => {
                assert_eq!(file, seg);
                assert!(offset as usize <= i, "flip at {i} reported at {offset}");
                corrupt += 1;
            }
            Err(e) => panic!("flip at {i}: unexpected error {e}"),
        }
    }
    assert!(corrupt > prefixes, "{corrupt} corrupt, {prefixes} torn");
}

#[test]
fn an_expired_set_after_a_long_lived_one_is_not_resurrected() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(UnixMillis(START));
    let config = Config::new(dir.path());
    let engine = Engine::open_with(config.clone(), Arc::new(clock.clone()), |_| {}).unwrap();
    let h = engine.handle();
    h.call_blocking(Command::Set { key: b"k".to_vec(), value: b"old".to_vec(), ttl: Ttl::Never }).unwrap();
    h.call_blocking(Command::Set { key: b"k".to_vec(), value: b"new".to_vec(), ttl: Ttl::Millis(10) }).unwrap();
    h.call_blocking(Command::Set { key: b"t".to_vec(), value: b"old".to_vec(), ttl: Ttl::Never }).unwrap();
    h.call_blocking(Command::Touch { key: b"t".to_vec(), ttl: Ttl::Millis(10) }).unwrap();
    clock.advance(20);
    // Let their timers remove both (which writes nothing to the log).
    h.call_blocking(Command::Stats).unwrap();
    drop(h);
    engine.shutdown().unwrap();
    let engine = Engine::open_with(config, Arc::new(clock.clone()), |_| {}).unwrap();
    let r = engine.handle().call_blocking(Command::GetMany { keys: vec![b"k".to_vec(), b"t".to_vec()] }).unwrap();
    assert_eq!(r, cachet_storage::Reply::Values(vec![None, None]));
}

#[test]
fn corruption_in_the_middle_refuses_to_open_and_repair_cuts_back() {
    let w = write_log();
    let mut bytes = std::fs::read(&w.segment).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0xff;
    std::fs::write(&w.segment, &bytes).unwrap();
    let err = Engine::open(Config::new(w.dir.path())).err().expect("corruption refused");
    let msg = err.to_string();
    assert!(msg.contains("cachetd repair") && msg.contains(&w.segment.display().to_string()), "{msg}");
    let Error::Corrupt { offset, last_good_seq, .. } = err else { panic!("{err}") };
    assert!(last_good_seq > 0);
    assert!(cachet_storage::check(w.dir.path()).is_err());

    let report = cachet_storage::repair(w.dir.path()).unwrap();
    let cut = report.cut.expect("a cut");
    assert_eq!(cut.offset, offset);
    assert!(cut.backups.iter().all(|b| b.exists()));
    let now = w.snapshots.last().unwrap().2;
    assert_eq!(replayed(w.dir.path(), now).unwrap(), expected_at(&w, offset, now));
    assert!(cachet_storage::check(w.dir.path()).is_ok());
    assert!(cachet_storage::repair(w.dir.path()).unwrap().cut.is_none(), "a sound log is left alone");
}

#[test]
fn clear_survives_replay_and_drops_old_segments() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config { segment_bytes: 300, ..Config::new(dir.path()) };
    let engine = Engine::open(config.clone()).unwrap();
    let h = engine.handle();
    for i in 0..50 {
        h.call_blocking(Command::Set { key: format!("k{i}").into_bytes(), value: vec![1; 20], ttl: Ttl::Never })
            .unwrap();
    }
    h.call_blocking(Command::Clear).unwrap();
    h.call_blocking(Command::Set { key: b"after".to_vec(), value: b"x".to_vec(), ttl: Ttl::Never }).unwrap();
    drop(h);
    engine.shutdown().unwrap();
    let segs = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_str().unwrap().starts_with("seg-"))
        .count();
    assert!(segs <= 2, "{segs} segments left after clear");
    let engine = Engine::open(config).unwrap();
    match engine.handle().call_blocking(Command::Stats).unwrap() {
        cachet_storage::Reply::Stats(s) => assert_eq!(s.entries, 1),
        r => panic!("{r:?}"),
    }
}

#[test]
fn bad_input_gets_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(Config::new(dir.path())).unwrap();
    // A second opener is refused while the first holds the lock.
    let err = Engine::open(Config::new(dir.path())).err().unwrap();
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    assert!(err.to_string().contains("in use by another process"));
    engine.handle().call_blocking(Command::Set { key: b"k".to_vec(), value: b"v".to_vec(), ttl: Ttl::Never }).unwrap();
    engine.shutdown().unwrap();

    let seg = only_segment(dir.path());
    let good = std::fs::read(&seg).unwrap();
    // Wrong format version.
    let mut v = good.clone();
    v[8] = 99;
    std::fs::write(&seg, &v).unwrap();
    let err = Engine::open(Config::new(dir.path())).err().unwrap();
    assert!(err.to_string().contains("format version 99"), "{err}");
    // A truncated header on a segment that is not the newest.
    std::fs::write(&seg, &good[..10]).unwrap();
    std::fs::write(
        dir.path().join("seg-0000000000000002.log"),
        cachet_storage::record::segment_header(cachet_storage::record::SegmentId(2)),
    )
    .unwrap();
    let err = Engine::open(Config::new(dir.path())).err().unwrap();
    assert!(err.to_string().contains("shorter than 32"), "{err}");
    // Not a data directory at all.
    let file = dir.path().join("plainfile");
    std::fs::write(&file, b"x").unwrap();
    assert!(Engine::open(Config::new(&file)).is_err());
    // Limits that the format cannot hold.
    let err = Engine::open(Config {
        limits: Limits { max_key_bytes: 1 << 20, ..Limits::default() },
        ..Config::new(dir.path())
    })
    .err()
    .unwrap();
    assert!(matches!(err, Error::Config(_)), "{err}");
}

/// Found by the engine_ops fuzzer (its harness had assumed a rename is one
/// record): a crash between a rename's two records leaves both keys, a
/// duplicate and never a loss.
#[test]
fn a_cut_inside_a_rename_leaves_a_duplicate_not_a_loss() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(Config { sync: SyncPolicy::Never, ..Config::new(dir.path()) }).unwrap();
    let h = engine.handle();
    h.call_blocking(Command::Set { key: b"k0".to_vec(), value: vec![], ttl: Ttl::Never }).unwrap();
    let seg = only_segment(dir.path());
    let before = std::fs::metadata(&seg).unwrap().len() as usize;
    h.call_blocking(Command::Rename { from: b"k0".to_vec(), to: b"k3".to_vec() }).unwrap();
    drop(h);
    engine.shutdown().unwrap();
    let bytes = std::fs::read(&seg).unwrap();
    let mid = before + cachet_storage::record::set_record_len(2, 0);
    for cut in before..=bytes.len() {
        std::fs::write(&seg, &bytes[..cut]).unwrap();
        let keys: Vec<Vec<u8>> = replayed(dir.path(), START).unwrap().into_iter().map(|(k, _, _)| k).collect();
        let want: &[&[u8]] = if cut < mid {
            &[b"k0"]
        } else if cut < bytes.len() {
            &[b"k0", b"k3"]
        } else {
            &[b"k3"]
        };
        assert_eq!(keys, want, "cut at {cut}");
    }
}
