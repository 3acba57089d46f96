//! Online backups: a snapshot taken while writes and compactions go on
//! copies to a data directory that passes `check` and holds every write
//! acknowledged before the snapshot was asked for.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use cachet_storage::{Command, Config, Engine, Reply, SyncPolicy, Ttl};

fn get(engine: &Engine, key: &str) -> Option<Vec<u8>> {
    match engine.handle().call_blocking(Command::Get { key: key.into() }).unwrap() {
        Reply::Value(v) => v,
        r => panic!("{r:?}"),
    }
}

#[test]
fn a_backup_under_writes_and_compaction_holds_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    // Small segments and an early compaction, so segments are rolled and
    // unlinked while the snapshot is copied.
    let config = Config {
        sync: SyncPolicy::EverySec,
        segment_bytes: 16 << 10,
        compact_min_bytes: 32 << 10,
        ..Config::new(dir.path().join("data"))
    };
    let engine = Engine::open(config).unwrap();
    let h = engine.handle();
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (h, acked, stop) = (h.clone(), acked.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // A unique key per write, and overwrites of a hot set that
                // make the log outgrow its live data (so compaction runs).
                let unique = Command::Set {
                    key: format!("u{i}").into_bytes(),
                    value: i.to_le_bytes().to_vec(),
                    ttl: Ttl::Never,
                };
                let hot = Command::Set {
                    key: format!("hot{}", i % 10).into_bytes(),
                    value: vec![b'x'; 200],
                    ttl: Ttl::Never,
                };
                for r in h.call_many_blocking(vec![unique, hot]).unwrap() {
                    r.unwrap();
                }
                acked.store(i + 1, Ordering::Release);
                i += 1;
            }
        })
    };
    while acked.load(Ordering::Acquire) < 2000 {
        std::thread::yield_now();
    }
    let before = acked.load(Ordering::Acquire);
    let snapshot = h.snapshot_blocking().unwrap();
    // Writes and compactions go on while the snapshot is copied.
    let compactions_before = stats_compactions(&engine);
    while acked.load(Ordering::Acquire) < before + 4000 {
        std::thread::yield_now();
    }
    let dest = dir.path().join("backup");
    let copied = snapshot.copy_to(&dest).unwrap();
    assert_eq!(copied, snapshot.bytes());
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert!(stats_compactions(&engine) > compactions_before, "compaction ran during the backup");
    drop(snapshot);
    assert!(
        std::fs::read_dir(dir.path().join("data"))
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().starts_with("snapshot-")),
        "the snapshot's links are gone once it is dropped"
    );
    assert!(get(&engine, &format!("u{}", before + 10)).is_some());
    drop(engine);

    let report = cachet_storage::check(&dest).unwrap();
    assert!(report.replay.torn.is_none(), "the copy ends at a batch boundary");
    let restored = Engine::open(Config::new(&dest)).unwrap();
    for i in 0..before {
        assert_eq!(
            get(&restored, &format!("u{i}")),
            Some(i.to_le_bytes().to_vec()),
            "u{i} was acknowledged before the backup"
        );
    }
    assert!(copied > 0 && report.live_entries >= before);
}

#[test]
fn a_backup_goes_only_into_a_new_or_empty_directory() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(Config::new(dir.path().join("data"))).unwrap();
    engine.handle().call_blocking(Command::Set { key: b"k".to_vec(), value: b"v".to_vec(), ttl: Ttl::Never }).unwrap();
    let dest = dir.path().join("full");
    std::fs::create_dir(&dest).unwrap();
    std::fs::write(dest.join("something"), b"x").unwrap();
    let e = engine.handle().snapshot_blocking().unwrap().copy_to(&dest).unwrap_err();
    assert!(e.to_string().contains("not empty"), "{e}");
}

fn stats_compactions(engine: &Engine) -> u64 {
    match engine.handle().call_blocking(Command::Stats).unwrap() {
        Reply::Stats(s) => s.compactions,
        r => panic!("{r:?}"),
    }
}
