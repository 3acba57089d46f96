//! The breaks a hostile test found (issue 10), one test each: metadata that
//! could delete the log, deleted keys that came back, requests that could
//! exhaust memory, damage that went unnoticed or was repaired wrongly, and
//! an operator hazard. Each failed before its fix.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cachet_storage::testing::{get, set};
use cachet_storage::{Command, Config, Engine, Error, Eviction, Handle, Limits, ManualClock, Reply, SyncPolicy, Ttl};

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_str().unwrap();
            n.starts_with("seg-") && n.ends_with(".log")
        })
        .collect();
    v.sort();
    v
}

/// A log of `n` keys over several small segments, closed cleanly.
fn written(n: usize, segment_bytes: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(Config { segment_bytes, ..Config::new(dir.path()) }).unwrap();
    let h = engine.handle();
    for i in 0..n {
        h.call_blocking(set(&format!("k{i}"), format!("v{i}").as_bytes())).unwrap();
    }
    drop(h);
    engine.shutdown().unwrap();
    dir
}

fn all_present(dir: &Path, n: usize) {
    let engine = Engine::open(Config::new(dir)).unwrap();
    let h = engine.handle();
    for i in 0..n {
        assert_eq!(get(&h, &format!("k{i}")), Some(format!("v{i}").into_bytes()), "k{i}");
    }
}

fn manifest_bytes(floor: u64, first_seq: u64, newest: u64) -> Vec<u8> {
    let mut b = vec![0u8; 48];
    b[0..8].copy_from_slice(b"CACHETMF");
    b[8..12].copy_from_slice(&1u32.to_le_bytes());
    b[16..24].copy_from_slice(&floor.to_le_bytes());
    b[24..32].copy_from_slice(&first_seq.to_le_bytes());
    b[32..40].copy_from_slice(&newest.to_le_bytes());
    let crc = crc32fast::hash(&b[..44]);
    b[44..48].copy_from_slice(&crc.to_le_bytes());
    b
}

fn expect_manifest_error(dir: &Path) -> String {
    match Engine::open(Config::new(dir)) {
        Err(e @ Error::Manifest { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("cachetd repair"), "{msg}");
            msg
        }
        Err(e) => panic!("expected a MANIFEST error, got {e}"),
        Ok(_) => panic!("opened a log that disagrees with its MANIFEST"),
    }
}

/// Case 1: a MANIFEST whose floor is above every segment (restored from
/// another copy) used to make opening unlink the whole log.
#[test]
fn a_wrong_manifest_deletes_nothing_and_repair_rebuilds_it() {
    let dir = written(500, 4096);
    let before = segments(dir.path());
    assert!(before.len() > 3);
    std::fs::write(dir.path().join("MANIFEST"), manifest_bytes(900, 77_000, 905)).unwrap();
    let msg = expect_manifest_error(dir.path());
    assert!(msg.contains("segment 900, which is missing"), "{msg}");
    assert!(cachet_storage::check(dir.path()).is_err(), "check must not call it sound");
    assert_eq!(segments(dir.path()), before, "nothing was deleted");
    let report = cachet_storage::repair(dir.path()).unwrap();
    assert!(report.manifest_rebuilt.is_some(), "{report:?}");
    assert!(report.moved_aside.is_empty(), "{report:?}");
    all_present(dir.path(), 500);
}

/// Case 1: an empty or garbled MANIFEST gets a message naming the remedy,
/// and the remedy works on it.
#[test]
fn a_malformed_or_empty_manifest_is_repaired() {
    for garbage in [&b""[..], b"floor 1x\n", b"CACHETMF and then nonsense that is 48 bytes long!!"] {
        let dir = written(200, 4096);
        std::fs::write(dir.path().join("MANIFEST"), garbage).unwrap();
        let msg = expect_manifest_error(dir.path());
        assert!(msg.contains("unreadable"), "{msg}");
        cachet_storage::repair(dir.path()).unwrap();
        all_present(dir.path(), 200);
    }
    // One wrong digit: the checksum catches it.
    let dir = written(200, 4096);
    let path = dir.path().join("MANIFEST");
    let mut m = std::fs::read(&path).unwrap();
    m[16] ^= 0x04;
    std::fs::write(&path, m).unwrap();
    expect_manifest_error(dir.path());
    cachet_storage::repair(dir.path()).unwrap();
    all_present(dir.path(), 200);
}

/// Case 9: a missing oldest or newest segment is noticed on open and by
/// `check`, instead of the keys in it silently vanishing.
#[test]
fn a_missing_oldest_or_newest_segment_is_detected() {
    let dir = written(500, 4096);
    let segs = segments(dir.path());
    std::fs::remove_file(&segs[0]).unwrap();
    expect_manifest_error(dir.path());
    assert!(cachet_storage::check(dir.path()).is_err());

    let dir = written(500, 4096);
    let segs = segments(dir.path());
    std::fs::remove_file(segs.last().unwrap()).unwrap();
    let msg = expect_manifest_error(dir.path());
    assert!(msg.contains("newest"), "{msg}");
    assert!(cachet_storage::check(dir.path()).is_err());

    // A log that never had a MANIFEST must start at sequence 1.
    let dir = written(500, 4096);
    std::fs::remove_file(dir.path().join("MANIFEST")).unwrap();
    std::fs::remove_file(&segments(dir.path())[0]).unwrap();
    let msg = expect_manifest_error(dir.path());
    assert!(msg.contains("oldest"), "{msg}");
}

/// Case 10: a stray copy with a non-canonical name is ignored, not read as
/// a second copy of its segment.
#[test]
fn a_stray_copy_of_a_segment_is_ignored() {
    let dir = written(60, 1 << 20);
    let seg = &segments(dir.path())[0];
    std::fs::copy(seg, dir.path().join("seg-1.log")).unwrap();
    std::fs::copy(seg, dir.path().join("seg-00000000000000001.log")).unwrap();
    all_present(dir.path(), 60);
    let report = cachet_storage::check(dir.path()).unwrap();
    assert_eq!(report.replay.strays.len(), 2, "{:?}", report.replay.strays);
    all_present(dir.path(), 60);
}

/// Case 11: a stray empty segment with the largest number used to make the
/// next segment number wrap to 0.
#[test]
fn segment_numbers_never_wrap() {
    let dir = written(500, 1 << 20);
    std::fs::write(dir.path().join(format!("seg-{}.log", u64::MAX)), b"").unwrap();
    all_present(dir.path(), 500);
    all_present(dir.path(), 500);
    // Within range but far beyond the newest segment: refused, and repair
    // moves it aside without dropping a key.
    std::fs::write(dir.path().join(format!("seg-{:016}.log", 4_000_000_000u64)), b"").unwrap();
    expect_manifest_error(dir.path());
    let report = cachet_storage::repair(dir.path()).unwrap();
    assert_eq!(report.moved_aside.len(), 1, "{report:?}");
    all_present(dir.path(), 500);
}

/// Case 15: a bit flip inside the last record of the newest segment is not
/// a torn write: the record was complete (and, under `sync=always`,
/// acknowledged). Opening refuses; a record cut short still opens.
#[test]
fn a_damaged_last_record_is_corruption_not_a_torn_write() {
    let dir = written(50, 1 << 20);
    let seg = segments(dir.path()).pop().unwrap();
    let bytes = std::fs::read(&seg).unwrap();
    let mut flipped = bytes.clone();
    let last = flipped.len() - 3;
    flipped[last] ^= 0x10;
    std::fs::write(&seg, &flipped).unwrap();
    match Engine::open(Config::new(dir.path())) {
        Err(e @ Error::Corrupt { .. }) => assert!(e.to_string().contains("cachetd repair"), "{e}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a damaged record was cut off as if torn"),
    }
    // Cut short instead: a torn write, cut off, and the rest opens.
    std::fs::write(&seg, &bytes[..bytes.len() - 3]).unwrap();
    let engine = Engine::open(Config::new(dir.path())).unwrap();
    assert!(engine.replay_report().torn.is_some());
    assert_eq!(get(&engine.handle(), "k0").as_deref(), Some(&b"v0"[..]));
}

/// Case 16: the lock is on the directory, so unlinking a file in it does
/// not let a second writer in.
#[test]
fn a_second_engine_is_refused_even_if_files_are_unlinked() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(Config::new(dir.path())).unwrap();
    let _ = std::fs::remove_file(dir.path().join("LOCK"));
    match Engine::open(Config::new(dir.path())) {
        Err(Error::Locked { .. }) => {}
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("two engines on one directory"),
    }
    drop(engine);
    Engine::open(Config::new(dir.path())).unwrap();
}

/// Case 2: a key evicted under the memory cap and then deleted (or set with
/// timeout 0) stays deleted across a restart, with the same cap or none.
#[test]
fn evicted_then_deleted_keys_do_not_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let capped = Limits { max_memory: Some(64 << 10), ..Limits::default() };
    let config = Config { limits: capped, sync: SyncPolicy::Never, ..Config::new(dir.path()) };
    let engine = Engine::open(config.clone()).unwrap();
    let h = engine.handle();
    for i in 0..4000 {
        h.call_blocking(set(&format!("k{i}"), &[b'x'; 100])).unwrap();
    }
    for i in 0..4000 {
        let key = format!("k{i}").into_bytes();
        let cmd = if i % 2 == 0 {
            Command::Delete { key }
        } else {
            Command::Set { key, value: b"gone".to_vec(), ttl: Ttl::Millis(0) }
        };
        h.call_blocking(cmd).unwrap();
    }
    drop(h);
    engine.shutdown().unwrap();
    for limits in [capped, Limits::default()] {
        let engine = Engine::open(Config { limits, ..Config::new(dir.path()) }).unwrap();
        let h = engine.handle();
        let back: Vec<usize> = (0..4000).filter(|i| get(&h, &format!("k{i}")).is_some()).collect();
        assert!(back.is_empty(), "{} deleted keys came back, e.g. k{}", back.len(), back[0]);
    }
}

/// Case 3: a small request naming one large value many times is refused
/// before its reply is built, through `get_many` and through a batch.
#[test]
fn a_reply_is_bounded_before_it_is_built() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(Config::new(dir.path())).unwrap();
    let h = engine.handle();
    h.call_blocking(set("big", &vec![1u8; 1 << 20])).unwrap();
    let keys = vec![b"big".to_vec(); 4000];
    match h.call_blocking(Command::GetMany { keys }) {
        Err(e @ Error::ReplyTooLarge { .. }) => assert!(e.to_string().contains("fewer"), "{e}"),
        r => panic!("{r:?}"),
    }
    let gets = (0..4000).map(|_| Command::Get { key: b"big".to_vec() }).collect();
    let replies = h.call_many_blocking(gets).unwrap();
    let served = replies.iter().filter(|r| r.is_ok()).count();
    assert!(served <= 64, "{served} MiB of replies built for one batch");
    assert!(replies.iter().any(|r| matches!(r, Err(Error::ReplyTooLarge { .. }))));
    // The engine is fine afterwards.
    assert_eq!(get(&h, "big").map(|v| v.len()), Some(1 << 20));
}

/// Case 7: after a restart with a small cap, the eviction bookkeeping stays
/// under the cap, and writes keep working.
#[test]
fn a_restart_with_a_small_cap_leaves_room_to_write() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(Config { sync: SyncPolicy::Never, ..Config::new(dir.path()) }).unwrap();
    let h = engine.handle();
    for i in 0..50_000 {
        h.call_blocking(set(&format!("key{i}"), &[b'v'; 200])).unwrap();
    }
    drop(h);
    engine.shutdown().unwrap();
    let cap = 1 << 20;
    let limits = Limits { max_memory: Some(cap), eviction: Eviction::S3Fifo, ..Limits::default() };
    let engine = Engine::open(Config { limits, ..Config::new(dir.path()) }).unwrap();
    let h = engine.handle();
    let stats = |h: &Handle| match h.call_blocking(Command::Stats).unwrap() {
        Reply::Stats(s) => s,
        r => panic!("{r:?}"),
    };
    assert!(stats(&h).memory_bytes <= cap, "{:?}", stats(&h));
    for i in 0..1000 {
        h.call_blocking(set(&format!("new{i}"), &[b'n'; 200])).unwrap();
    }
    let s = stats(&h);
    assert!(s.memory_bytes <= cap && s.entries > 0, "{s:?}");
}

/// Case 6: the cap holds while replay runs, not only at its end.
#[test]
fn replay_applies_the_cap_as_it_goes() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(Config { sync: SyncPolicy::Never, ..Config::new(dir.path()) }).unwrap();
    let h = engine.handle();
    for i in 0..200 {
        h.call_blocking(set(&format!("k{i}"), &vec![b'v'; 64 << 10])).unwrap();
    }
    drop(h);
    engine.shutdown().unwrap();
    let cap: u64 = 1 << 20;
    let mut state = cachet_storage::State::new(Limits { max_memory: Some(cap), ..Limits::default() }, 0);
    let mut peak = 0;
    cachet_storage::testing::replay_observed(dir.path(), &mut state, 0, |s| peak = peak.max(s.memory_bytes())).unwrap();
    assert!(peak as u64 <= cap, "memory reached {peak} during replay with a cap of {cap}");
    assert!(!state.is_empty());
}

/// Case 13 lives in `faults.rs` (`check_fault`: a get after a write of a
/// failed batch gets the write's error); case 12 too
/// (`failed_rewrites_leave_nothing_behind`, `repair_works_in_place_on_a_full_disk`).
/// Case 14 is a unit test in `replay.rs`. This one checks the clock is not
/// needed to see a torn value that looks like record lengths opening fine.
#[test]
fn a_torn_value_full_of_fake_lengths_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(cachet_storage::UnixMillis(1_700_000_000_000));
    let engine = Engine::open_with(Config::new(dir.path()), Arc::new(clock.clone()), |_| {}).unwrap();
    let h = engine.handle();
    h.call_blocking(set("before", b"ok")).unwrap();
    let fake: Vec<u8> = (0..(256 << 10)).flat_map(|_| 40u32.to_le_bytes()).collect();
    h.call_blocking(set("torn", &fake)).unwrap();
    drop(h);
    engine.shutdown().unwrap();
    let seg = segments(dir.path()).pop().unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&seg).unwrap().set_len(len - 100).unwrap();
    let engine = Engine::open_with(Config::new(dir.path()), Arc::new(clock), |_| {}).unwrap();
    assert!(engine.replay_report().torn.is_some());
    assert_eq!(get(&engine.handle(), "before").as_deref(), Some(&b"ok"[..]));
    assert_eq!(get(&engine.handle(), "torn"), None);
}

/// The in-memory replay the fuzzers use applies the same rules as the real
/// one: same entries from the same files, same refusal of a wrong MANIFEST.
#[test]
fn in_memory_replay_matches_replay_from_files() {
    let dir = written(500, 4096);
    let now = 1;
    let files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| (e.file_name().into_string().unwrap(), std::fs::read(e.path()).unwrap()))
        .collect();
    let named: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
    let mut from_memory = cachet_storage::State::new(Limits::default(), now);
    cachet_storage::testing::replay_files(&named, &mut from_memory, now).unwrap();
    let mut from_disk = cachet_storage::State::new(Limits::default(), now);
    cachet_storage::testing::replay(dir.path(), &mut from_disk, now).unwrap();
    let sorted = |s: &cachet_storage::State| {
        let mut v: Vec<_> = s.entries(now).map(|(k, v, e)| (k.to_vec(), v.to_vec(), e)).collect();
        v.sort();
        v
    };
    assert_eq!(sorted(&from_memory).len(), 500);
    assert_eq!(sorted(&from_memory), sorted(&from_disk));
    let mut wrong = named.clone();
    let bad = manifest_bytes(900, 1, 905);
    wrong.retain(|(n, _)| *n != "MANIFEST");
    wrong.push(("MANIFEST", &bad));
    let mut state = cachet_storage::State::new(Limits::default(), now);
    assert!(matches!(cachet_storage::testing::replay_files(&wrong, &mut state, now), Err(Error::Manifest { .. })));
}

/// FORMAT.md rule 1: segments below a floor the segments agree with are
/// dead, ignored by replay and removed on open (what an interrupted
/// compaction leaves).
#[test]
fn segments_below_the_floor_are_ignored_and_removed_on_open() {
    let dir = written(500, 4096);
    let segs = segments(dir.path());
    assert!(segs.len() > 3);
    let floor_seg = &segs[2];
    let bytes = std::fs::read(floor_seg).unwrap();
    // The first record's sequence number: after the 32-byte segment header,
    // the 8-byte record header and the type byte.
    let first_seq = u64::from_le_bytes(bytes[41..49].try_into().unwrap());
    let last: u64 = segs.last().unwrap().file_name().unwrap().to_str().unwrap()[4..20].parse().unwrap();
    std::fs::write(dir.path().join("MANIFEST"), manifest_bytes(3, first_seq, last)).unwrap();
    let engine = Engine::open(Config::new(dir.path())).unwrap();
    assert_eq!(engine.replay_report().segments as usize, segs.len() - 2);
    assert!(!segs[0].exists() && !segs[1].exists(), "dead segments left behind");
    assert!(floor_seg.exists());
}

fn put(h: &Handle, key: &[u8], value: &[u8], ttl: Ttl) {
    h.call_blocking(Command::Set { key: key.to_vec(), value: value.to_vec(), ttl }).unwrap();
}

fn read(h: &Handle, key: &[u8]) -> Option<Vec<u8>> {
    match h.call_blocking(Command::Get { key: key.to_vec() }).unwrap() {
        Reply::Value(v) => v,
        r => panic!("{r:?}"),
    }
}

/// A counter's encoding (MessagePack from the Rust client, text from RESP)
/// is kept by compaction and by a restart: each kind of increment still
/// refuses the other kind's counter, so no number is read in the wrong
/// encoding ("5" is byte 0x35, which MessagePack reads as 53).
#[test]
fn counter_encodings_survive_compaction_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config { segment_bytes: 4096, compact_min_bytes: 8192, ..Config::new(dir.path()) };
    let engine = Engine::open(config.clone()).unwrap();
    let h = engine.handle();
    let text = |h: &Handle, key: &str| h.call_blocking(Command::IncrText { key: key.into(), delta: 1 });
    let packed = |h: &Handle, key: &str| h.call_blocking(Command::Incr { key: key.into(), delta: 1 });
    // "5" as RESP writes it, and 53 as the Rust client writes it: one byte each, 0x35.
    h.call_blocking(Command::SetWith {
        key: b"resp".to_vec(),
        value: b"5".to_vec(),
        expiry: cachet_storage::Expiry::Ttl(Ttl::Never),
        when: cachet_storage::When::Always,
        get: false,
    })
    .unwrap();
    put(&h, b"rust", &[0x35], Ttl::Never);
    assert!(matches!(packed(&h, "resp"), Err(Error::NotAnInteger)));
    assert!(matches!(text(&h, "rust"), Err(Error::NotAnInteger)));
    // Enough overwrites for several compactions.
    for i in 0..3000 {
        put(&h, format!("filler{}", i % 20).as_bytes(), &[0; 64], Ttl::Never);
    }
    let compactions = match h.call_blocking(Command::Stats).unwrap() {
        Reply::Stats(s) => s.compactions,
        r => panic!("{r:?}"),
    };
    assert!(compactions >= 1, "no compaction ran");
    drop(h);
    engine.shutdown().unwrap();
    let engine = Engine::open(config).unwrap();
    let h = engine.handle();
    assert!(matches!(text(&h, "resp"), Ok(Reply::Int(6))));
    assert!(matches!(packed(&h, "rust"), Ok(Reply::Int(54))));
    assert!(matches!(packed(&h, "resp"), Err(Error::NotAnInteger)));
    assert!(matches!(text(&h, "rust"), Err(Error::NotAnInteger)));
    assert_eq!(read(&h, b"resp"), Some(b"6".to_vec()));
}

/// A clear of a prefix or of a database is one record: after a restart
/// nothing it cleared comes back and nothing else goes.
#[test]
fn clears_of_a_prefix_or_a_database_survive_restart() {
    use cachet_storage::keyspace::db_key;
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(Config::new(dir.path())).unwrap();
    let h = engine.handle();
    for k in ["app:1:a", "app:1:b", "other:1:a"] {
        put(&h, k.as_bytes(), b"v", Ttl::Never);
    }
    for db in 0..3u8 {
        put(&h, &db_key(db, b"k"), &[db], Ttl::Never);
    }
    h.call_blocking(Command::ClearPrefix { prefix: b"app:".to_vec() }).unwrap();
    h.call_blocking(Command::ClearDb { db: 1 }).unwrap();
    match h.call_blocking(Command::DbSizes).unwrap() {
        Reply::Counts(c) => assert_eq!(c[..3], [(2, 0), (0, 0), (1, 0)]),
        r => panic!("{r:?}"),
    }
    drop(h);
    engine.shutdown().unwrap();
    let engine = Engine::open(Config::new(dir.path())).unwrap();
    let h = engine.handle();
    assert_eq!(read(&h, b"app:1:a"), None);
    assert_eq!(read(&h, b"app:1:b"), None);
    assert_eq!(read(&h, b"other:1:a"), Some(b"v".to_vec()));
    assert_eq!(read(&h, &db_key(0, b"k")), Some(vec![0]));
    assert_eq!(read(&h, &db_key(1, b"k")), None);
    assert_eq!(read(&h, &db_key(2, b"k")), Some(vec![2]));
}

/// A log written by version 1 (before text values and clear records)
/// opens, and new records go to a new version-2 segment: the old segment
/// never holds a record its version lacks.
#[test]
fn a_version_1_log_opens_and_is_appended_in_a_new_segment() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(Config::new(dir.path())).unwrap();
    put(&engine.handle(), b"old", b"v", Ttl::Never);
    engine.shutdown().unwrap();
    // Make the segment's header say version 1, as version 1 wrote it.
    let seg = segments(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
    let crc = crc32fast::hash(&bytes[..28]);
    bytes[28..32].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&seg, &bytes).unwrap();
    let engine = Engine::open(Config::new(dir.path())).unwrap();
    let h = engine.handle();
    assert_eq!(read(&h, b"old"), Some(b"v".to_vec()));
    h.call_blocking(Command::IncrText { key: b"n".to_vec(), delta: 1 }).unwrap();
    drop(h);
    engine.shutdown().unwrap();
    let segs = segments(dir.path());
    assert_eq!(segs.len(), 2, "{segs:?}");
    assert_eq!(std::fs::read(&segs[0]).unwrap(), bytes, "the version-1 segment was not written to");
    let engine = Engine::open(Config::new(dir.path())).unwrap();
    assert_eq!(read(&engine.handle(), b"n"), Some(b"1".to_vec()));
}
