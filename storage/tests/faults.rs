//! I/O faults: a failed write, a short write, ENOSPC and a failed fsync each
//! fail every write of their batch with an error naming the cause, undo its
//! changes, and lose nothing acknowledged before; a disk that stays broken
//! turns the engine read-only until it recovers by itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cachet_storage::testing::{get, int, set, set_when_writable};
use cachet_storage::{Command, Config, Engine, Error, Faults, SyncPolicy, Ttl};

/// Acknowledged state, a failing batch, and what must hold afterwards.
fn check_fault(sync: SyncPolicy, arm: impl Fn(&Faults), cause: &str) {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(Faults::default());
    let config = Config { sync, faults: Some(faults.clone()), ..Config::new(dir.path()) };
    let engine = Engine::open(config.clone()).unwrap();
    let h = engine.handle();
    h.call_blocking(set("kept", b"1")).unwrap();
    h.call_blocking(set("doomed", b"old")).unwrap();
    h.call_blocking(set("n", &int(5))).unwrap();
    h.call_blocking(set("gone", b"x")).unwrap();
    h.call_blocking(Command::Delete { key: b"gone".to_vec() }).unwrap();

    arm(&faults);
    let replies = h
        .call_many_blocking(vec![
            set("doomed", b"new"),
            Command::Delete { key: b"kept".to_vec() },
            Command::Incr { key: b"n".to_vec(), delta: 1 },
            set("fresh", b"f"),
            Command::Touch { key: b"n".to_vec(), ttl: Ttl::Millis(1) },
            Command::Get { key: b"kept".to_vec() },
        ])
        .unwrap();
    // Every reply fails, the get too: it came after writes of the batch and
    // saw "kept" deleted, a change that was then undone.
    for r in &replies {
        let e = r.as_ref().unwrap_err();
        assert!(matches!(e, Error::WriteFailed(_)), "{e}");
        assert!(e.to_string().contains(cause), "{e} lacks {cause:?}");
    }
    // The failed batch's changes are undone.
    assert_eq!(get(&h, "doomed").as_deref(), Some(&b"old"[..]));
    assert_eq!(get(&h, "kept").as_deref(), Some(&b"1"[..]));
    assert_eq!(get(&h, "n"), Some(int(5)));
    assert_eq!(get(&h, "fresh"), None);
    // And the engine took a fresh segment: writes work again at once.
    h.call_blocking(set("after", b"a")).unwrap();
    drop(h);
    engine.shutdown().unwrap();

    let engine = Engine::open(Config::new(dir.path())).unwrap();
    let h = engine.handle();
    for (k, v) in
        [("kept", Some(&b"1"[..])), ("doomed", Some(b"old")), ("gone", None), ("fresh", None), ("after", Some(b"a"))]
    {
        assert_eq!(get(&h, k).as_deref(), v, "{k} after restart");
    }
    assert_eq!(get(&h, "n"), Some(int(5)));
}

#[test]
fn failed_write() {
    check_fault(SyncPolicy::EverySec, |f| f.fail_writes(1, false, false), "Input/output error");
}

#[test]
fn short_write() {
    check_fault(SyncPolicy::EverySec, |f| f.fail_writes(1, true, false), "Input/output error");
}

#[test]
fn disk_full() {
    check_fault(SyncPolicy::Never, |f| f.fail_writes(1, false, true), "No space left on device");
}

#[test]
fn failed_fsync() {
    check_fault(SyncPolicy::Always, |f| f.fail_syncs(1), "Input/output error");
}

#[test]
fn a_disk_that_stays_broken_turns_read_only_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(Faults::default());
    let engine = Engine::open(Config { faults: Some(faults.clone()), ..Config::new(dir.path()) }).unwrap();
    let h = engine.handle();
    h.call_blocking(set("a", b"1")).unwrap();
    // The batch fails, and so do the first rewrites of live data.
    faults.fail_writes(3, false, true);
    assert!(h.call_blocking(set("b", b"2")).is_err());
    let e = h.call_blocking(set("c", b"3")).unwrap_err();
    assert!(matches!(e, Error::Unavailable(_)) && e.to_string().contains("No space left"), "{e}");
    assert_eq!(get(&h, "a").as_deref(), Some(&b"1"[..]), "reads are served while read-only");
    // The engine retries with backoff and comes back by itself.
    set_when_writable(&h, "c", b"3", Duration::from_secs(20));
    drop(h);
    engine.shutdown().unwrap();
    let engine = Engine::open(Config::new(dir.path())).unwrap();
    let h = engine.handle();
    assert_eq!((get(&h, "a"), get(&h, "b"), get(&h, "c")), (Some(b"1".to_vec()), None, Some(b"3".to_vec())));
}

/// A real full disk: a 2 MiB tmpfs as the data directory (needs root).
/// A small tmpfs mounted for one test and unmounted when dropped.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    /// Mounts one of `size` (as mount's `size=` takes it). Panics with the
    /// reason when it cannot: the tests that use it are ignored by default
    /// and run as root in CI (`.ci/run`), where a failure to mount is a
    /// failure, not a skip.
    fn mount(size: &str) -> Tmpfs {
        let mnt = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(mnt.path())
            .status()
            .expect("running mount");
        assert!(status.success(), "mounting a tmpfs failed ({status}): this test needs root");
        Tmpfs(mnt)
    }

    fn path(&self) -> &std::path::Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
#[ignore = "mounts a tmpfs, which needs root; CI runs it with --ignored"]
fn real_disk_full_on_tmpfs() {
    let mnt = Tmpfs::mount("2m");
    let data = mnt.path().join("data");
    let filler = mnt.path().join("filler");
    std::fs::write(&filler, vec![0u8; 1200 << 10]).unwrap();
    let engine = Engine::open(Config { sync: SyncPolicy::Always, ..Config::new(&data) }).unwrap();
    let h = engine.handle();
    let mut acked = Vec::new();
    let mut refused = None;
    for i in 0..10_000 {
        match h.call_blocking(set(&format!("k{i}"), &[7u8; 1000])) {
            Ok(_) => acked.push(i),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let e = refused.expect("the disk filled up");
    assert!(e.to_string().contains("No space left"), "{e}");
    assert!(get(&h, "k0").is_some(), "reads still work");
    // Failed rewrites leave no half-written segment behind.
    std::thread::sleep(Duration::from_millis(600));
    let segments = || {
        std::fs::read_dir(&data)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_str().unwrap().starts_with("seg-"))
            .count()
    };
    assert!(segments() <= 2, "{} segment files after failed rewrites", segments());
    std::fs::remove_file(&filler).unwrap();
    set_when_writable(&h, "after", b"ok", Duration::from_secs(40));
    drop(h);
    engine.shutdown().unwrap();
    let engine = Engine::open(Config::new(&data)).unwrap();
    let h = engine.handle();
    for i in acked {
        assert_eq!(get(&h, &format!("k{i}")), Some(vec![7u8; 1000]), "acknowledged k{i} lost");
    }
    assert_eq!(get(&h, "after").as_deref(), Some(&b"ok"[..]));
    drop(h);
    engine.shutdown().unwrap();
}

/// `repair` on a full disk cannot copy the damaged segment aside: it cuts
/// in place and says so, instead of failing with "No space left".
#[test]
#[ignore = "mounts a tmpfs, which needs root; CI runs it with --ignored"]
fn repair_works_in_place_on_a_full_disk() {
    let mnt = Tmpfs::mount("4m");
    let data = mnt.path().join("data");
    let engine = Engine::open(Config { segment_bytes: 64 << 20, ..Config::new(&data) }).unwrap();
    let h = engine.handle();
    for i in 0..1000 {
        h.call_blocking(set(&format!("k{i}"), &[7u8; 1000])).unwrap();
    }
    drop(h);
    engine.shutdown().unwrap();
    let seg = data.join("seg-0000000000000001.log");
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();
    // Fill the disk to the last byte.
    let mut filler = std::fs::File::create(mnt.path().join("filler")).unwrap();
    while std::io::Write::write_all(&mut filler, &[0u8; 4096]).is_ok() {}
    drop(filler);
    let report = cachet_storage::repair(&data).unwrap();
    let cut = report.cut.expect("the flipped byte is cut off");
    assert!(cut.in_place.as_deref().is_some_and(|w| w.contains("No space left")), "{cut:?}");
    let engine = Engine::open(Config::new(&data)).unwrap();
    assert_eq!(get(&engine.handle(), "k0"), Some(vec![7u8; 1000]));
}

/// A rewrite after a failed write that fails itself removes what it wrote
/// and reuses its sequence numbers: two such failures in a row used to leave
/// two half-written segments and a log that refused to open.
#[test]
fn failed_rewrites_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(Faults::default());
    let config = Config { faults: Some(faults.clone()), ..Config::new(dir.path()) };
    let engine = Engine::open(config.clone()).unwrap();
    let h = engine.handle();
    for i in 0..100 {
        h.call_blocking(set(&format!("k{i}"), b"v")).unwrap();
    }
    // The batch write fails; the rewrite's header goes through and its data
    // write fails; the retry's header goes through and its data fails too.
    faults.script_writes(&[true, false, true, false, true]);
    assert!(h.call_blocking(set("doomed", b"x")).is_err());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !faults.spent() {
        assert!(Instant::now() < deadline, "the rewrite was never retried");
        std::thread::sleep(Duration::from_millis(20));
    }
    set_when_writable(&h, "after", b"a", Duration::from_secs(20));
    drop(h);
    engine.shutdown().unwrap();
    let engine = Engine::open(Config::new(dir.path())).unwrap();
    let h = engine.handle();
    for i in 0..100 {
        assert_eq!(get(&h, &format!("k{i}")).as_deref(), Some(&b"v"[..]));
    }
    assert_eq!(get(&h, "after").as_deref(), Some(&b"a"[..]));
    assert_eq!(get(&h, "doomed"), None);
}

/// A failed batch that evicted entries it had itself written (a cap of two
/// entries, four new keys) is taken back exactly: the undo log records the
/// evictions too, so each entry goes back to the slot it had and the
/// entries from before the batch are what remains.
#[test]
fn a_failed_batch_that_evicted_its_own_writes_is_undone() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(Faults::default());
    let mut config = Config { faults: Some(faults.clone()), ..Config::new(dir.path()) };
    config.limits.max_entries = Some(2);
    let engine = Engine::open(config.clone()).unwrap();
    let h = engine.handle();
    h.call_blocking(set("old1", b"1")).unwrap();
    h.call_blocking(set("old2", b"2")).unwrap();
    faults.fail_writes(1, false, false);
    let replies =
        h.call_many_blocking(vec![set("new1", b"a"), set("new2", b"b"), set("new3", b"c"), set("new4", b"d")]).unwrap();
    assert!(replies.iter().all(|r| matches!(r, Err(Error::WriteFailed(_)))), "{replies:?}");
    let now = |h: &cachet_storage::Handle| {
        ["old1", "old2", "new1", "new2", "new3", "new4"].map(|k| get(h, k).map(|v| (k, v)))
    };
    let expect = [Some(("old1", b"1".to_vec())), Some(("old2", b"2".to_vec())), None, None, None, None];
    assert_eq!(now(&h), expect, "the batch is taken back");
    h.call_blocking(set("after", b"x")).unwrap();
    drop(h);
    engine.shutdown().unwrap();
    let engine = Engine::open(config).unwrap();
    let h = engine.handle();
    assert_eq!(get(&h, "after").as_deref(), Some(&b"x"[..]));
    for k in ["new1", "new2", "new3", "new4"] {
        assert_eq!(get(&h, k), None, "{k} after restart");
    }
}

/// A key, and its value and remaining time if it is present.
type Entry = (String, Option<(Vec<u8>, cachet_storage::Reply)>);

/// Every key the property below uses, with its value and remaining time.
fn entries(h: &cachet_storage::Handle) -> Vec<Entry> {
    (0..6)
        .map(|i| {
            let key = format!("k{i}");
            let value = get(h, &key);
            let ttl = h.call_blocking(Command::Ttl { key: key.clone().into_bytes() }).unwrap();
            (key, value.map(|v| (v, ttl)))
        })
        .collect()
}

/// `entries` as they will read `ms` later.
fn later(entries: Vec<Entry>, ms: u64) -> Vec<Entry> {
    use cachet_storage::Reply;
    entries
        .into_iter()
        .map(|(key, e)| match e {
            Some((_, Reply::Ttl(Some(Ttl::Millis(left))))) if left <= ms => (key, None),
            Some((v, Reply::Ttl(Some(Ttl::Millis(left))))) => {
                (key, Some((v, Reply::Ttl(Some(Ttl::Millis(left - ms))))))
            }
            e => (key, e),
        })
        .collect()
}

fn batch_command() -> impl proptest::strategy::Strategy<Value = Command> {
    use proptest::prelude::*;
    let key = (0..6u8).prop_map(|i| format!("k{i}").into_bytes());
    let ttl = prop_oneof![Just(Ttl::Never), (1..30u64).prop_map(Ttl::Millis)];
    prop_oneof![
        (key.clone(), 1..40usize, ttl.clone()).prop_map(|(key, n, ttl)| Command::Set {
            key,
            value: vec![b'v'; n],
            ttl
        }),
        (key.clone(), 1..40usize, ttl.clone()).prop_map(|(key, n, ttl)| Command::Add {
            key,
            value: int(n as i64),
            ttl
        }),
        key.clone().prop_map(|key| Command::Delete { key }),
        key.clone().prop_map(|key| Command::Incr { key, delta: 2 }),
        (key.clone(), ttl.clone()).prop_map(|(key, ttl)| Command::Touch { key, ttl }),
        key.clone().prop_map(|key| Command::GetDel { key }),
        key.clone().prop_map(|key| Command::Get { key }),
        (key.clone(), key.clone(), ttl.clone())
            .prop_map(|(a, b, ttl)| Command::SetMany { items: vec![(a, b"m".to_vec()), (b, int(7))], ttl }),
        (key.clone(), key.clone(), ttl.clone())
            .prop_map(|(a, b, ttl)| Command::SetManyIfAbsent { items: vec![(a, b"i".to_vec()), (b, int(3))], ttl }),
        (key.clone(), ttl.clone()).prop_map(|(key, ttl)| Command::GetOrAdd { key, value: b"g".to_vec(), ttl }),
        (key.clone(), key.clone()).prop_map(|(a, b)| Command::DeleteMany { keys: vec![a, b] }),
        (key.clone(), key.clone()).prop_map(|(from, to)| Command::Rename { from, to }),
        (key.clone(), ttl).prop_map(|(key, ttl)| Command::Expire {
            key,
            ttl,
            when: cachet_storage::ExpireWhen::Always
        }),
        key.clone().prop_map(|key| Command::Persist { key }),
        key.prop_map(|key| Command::IncrText { key, delta: -1 }),
        Just(Command::ClearPrefix { prefix: b"k1".to_vec() }),
        Just(Command::Clear),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]

    /// Under a cap that evicts (by entries or by bytes), any batch whose
    /// write (or, under `always`, fsync) fails leaves the cache exactly as
    /// it was (values and deadlines), whatever it wrote, renamed, cleared,
    /// deleted, evicted or found expired on the way; and the engine goes
    /// on serving.
    #[test]
    fn a_failed_batch_under_a_cap_changes_nothing(
        batches in proptest::collection::vec(
            (proptest::collection::vec(batch_command(), 0..12), proptest::bool::ANY, 0..20u64), 1..12),
        by_bytes in proptest::bool::ANY,
        fsync in proptest::bool::ANY,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let faults = Arc::new(Faults::default());
        // The fault: a failed write, or under `always` a failed fsync.
        let sync = if fsync { SyncPolicy::Always } else { SyncPolicy::Never };
        let mut config = Config { sync, faults: Some(faults.clone()), ..Config::new(dir.path()) };
        if by_bytes {
            config.limits.max_memory = Some(1_500);
        } else {
            config.limits.max_entries = Some(3);
        }
        // A clock that stands still: deadlines compare exactly.
        let clock = cachet_storage::ManualClock::new(cachet_storage::UnixMillis(1_700_000_000_000));
        let engine = Engine::open_with(config, Arc::new(clock.clone()), |_| {}).unwrap();
        let h = engine.handle();
        for (cmds, fail, advance) in batches {
            // A set first, so the batch writes a record (and meets the fault).
            let mut batch = vec![set("k0", b"first")];
            batch.extend(cmds);
            // Time passes after the look: the batch finds entries expired
            // that are still in memory.
            let before = later(entries(&h), advance);
            clock.advance(advance);
            if fail && fsync {
                faults.fail_syncs(1);
            } else if fail {
                faults.fail_writes(1, false, false);
            }
            let replies = h.call_many_blocking(batch).unwrap();
            if fail {
                proptest::prop_assert!(replies[0].is_err(), "{:?}", replies);
                proptest::prop_assert_eq!(entries(&h), before);
            } else {
                proptest::prop_assert!(replies[0].is_ok(), "{:?}", replies);
            }
        }
        drop(h);
        engine.shutdown().unwrap();
    }
}
