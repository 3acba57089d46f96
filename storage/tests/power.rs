//! Power loss, simulated with the storage's file layer: the engine runs a
//! workload (sets, deletes, incr, renames as `incr_version` does them,
//! `clear`, segment rolls and compactions) while a hook, at points inside
//! the writer, copies the data directory together with how much of each
//! segment a sync has made durable. Each copy is then "powered off" several
//! ways: every segment keeps its durable prefix plus a random part of what
//! was written after it, with random sectors of that part lost (zeros, as
//! reordered writeback leaves them). Each must open, and hold the state
//! after some prefix of the operations that includes every acknowledged
//! one under `sync=always`, and every one acknowledged before the last sync
//! under `everysec`.
//!
//! Not simulated: an unlink or rename undone by the power loss (the engine
//! syncs the directory after each before going on), and a lost MANIFEST
//! write (it is replaced by rename after an fsync of the new one).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cachet_storage::testing::{Model, int};
use cachet_storage::{
    Command, Config, Engine, Faults, Hook, HookPoint, Limits, ManualClock, State, SyncPolicy, Ttl, UnixMillis, testing,
};

const START: u64 = 1_700_000_000_000;
const SECTOR: usize = 512;

struct Image {
    /// Every file of the directory: name, bytes, durable length (segments).
    files: Vec<(String, Vec<u8>, Option<u64>)>,
    /// Operations that must survive.
    required: u64,
    /// The hook point it was taken at.
    point: &'static str,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

/// What a power loss could leave of `bytes`, whose first `durable` bytes
/// were synced.
fn power_off(bytes: &[u8], durable: usize, rng: &mut Rng, exact: bool) -> Vec<u8> {
    let durable = durable.min(bytes.len());
    if exact {
        return bytes[..durable].to_vec();
    }
    let keep = durable + rng.below((bytes.len() - durable) as u64 + 1) as usize;
    let mut out = bytes[..keep].to_vec();
    // The sector holding the old end of the file: its new part may be lost.
    let mut at = durable;
    while at < keep {
        let end = (at / SECTOR + 1) * SECTOR;
        if rng.below(4) == 0 {
            out[at..end.min(keep)].fill(0);
        }
        at = end;
    }
    out
}

fn key(i: u64) -> Vec<u8> {
    format!("k{}", i % 20).into_bytes()
}

fn workload(n: usize, seed: u64) -> Vec<Command> {
    let mut rng = Rng(seed);
    (0..n as u64)
        .map(|i| match rng.below(100) {
            0..=49 => {
                let len = if rng.below(5) == 0 { 300 + rng.below(900) } else { rng.below(40) } as usize;
                let mut value = format!("v{i}-").into_bytes();
                value.resize(len.max(value.len()), b'a' + (i % 26) as u8);
                Command::Set { key: key(rng.next()), value, ttl: Ttl::Never }
            }
            50..=59 => Command::Set { key: key(rng.next()), value: int(i as i64), ttl: Ttl::Never },
            60..=69 => Command::Incr { key: key(rng.next()), delta: 3 },
            70..=79 => Command::Delete { key: key(rng.next()) },
            80..=89 => Command::Rename { from: key(rng.next()), to: key(rng.next()) },
            90 => Command::Clear,
            _ => Command::Get { key: key(rng.next()) },
        })
        .collect()
}

type Entries = Vec<(Vec<u8>, Vec<u8>, u64)>;

fn run(sync: SyncPolicy, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(Faults::default());
    let acked = Arc::new(AtomicU64::new(0));
    let acked_at_sync = Arc::new(AtomicU64::new(0));
    let images = Arc::new(Mutex::new(Vec::<Image>::new()));
    let calls = Arc::new(AtomicUsize::new(0));
    let hook = {
        let (faults, acked, acked_at_sync, images, calls) =
            (faults.clone(), acked.clone(), acked_at_sync.clone(), images.clone(), calls.clone());
        Hook(Arc::new(move |p: &HookPoint<'_>| {
            if p.point == "synced" {
                acked_at_sync.store(acked.load(Ordering::SeqCst), Ordering::SeqCst);
            }
            if !calls.fetch_add(1, Ordering::SeqCst).is_multiple_of(3) {
                return;
            }
            let required = match sync {
                SyncPolicy::Always => acked.load(Ordering::SeqCst),
                _ => acked_at_sync.load(Ordering::SeqCst),
            };
            let durable: HashMap<PathBuf, u64> = faults.durable_lengths();
            let files = std::fs::read_dir(p.dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|path| path.is_file())
                .map(|path| {
                    let name = path.file_name().unwrap().to_str().unwrap().to_string();
                    (name, std::fs::read(&path).unwrap(), durable.get(&path).copied())
                })
                .collect();
            images.lock().unwrap().push(Image { files, required, point: p.point });
        }))
    };
    let config = Config {
        sync,
        segment_bytes: 4096,
        compact_min_bytes: 8192,
        faults: Some(faults.clone()),
        hook: Some(hook),
        ..Config::new(dir.path())
    };
    let clock = ManualClock::new(UnixMillis(START));
    let engine = Engine::open_with(config, Arc::new(clock), |_| {}).unwrap();
    let h = engine.handle();
    let ops = workload(1500, seed);
    let mut model = Model::default();
    // The state after each prefix of the operations, and the states a
    // rename cut between its two records leaves (op index -> state).
    let mut prefixes: Vec<Entries> = vec![model.live_entries(START)];
    let mut partial: Vec<(u64, Entries)> = Vec::new();
    for (i, cmd) in ops.iter().enumerate() {
        let before = model.clone();
        let want = model.apply(cmd, START);
        let got = h.call_blocking(cmd.clone());
        acked.fetch_add(1, Ordering::SeqCst);
        assert_eq!(want.is_ok(), got.is_ok(), "{cmd:?}: {want:?} vs {got:?}");
        if let (Command::Rename { from, to }, Ok(_)) = (cmd, &want)
            && from != to
        {
            let mut mid = before;
            let entry = mid.map[from].clone();
            mid.map.insert(to.clone(), entry);
            partial.push((i as u64, mid.live_entries(START)));
        }
        prefixes.push(model.live_entries(START));
    }
    drop(h);
    engine.shutdown().unwrap();

    let images = std::mem::take(&mut *images.lock().unwrap());
    assert!(images.len() > 50, "only {} crash points", images.len());
    let mut rng = Rng(seed ^ 0x5555);
    for (n, image) in images.iter().enumerate() {
        for variant in 0..4 {
            let files: Vec<(String, Vec<u8>)> = image
                .files
                .iter()
                .map(|(name, bytes, durable)| match durable {
                    Some(d) => (name.clone(), power_off(bytes, *d as usize, &mut rng, variant == 0)),
                    None => (name.clone(), bytes.clone()),
                })
                .collect();
            let named: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
            let mut state = State::new(Limits::default(), START);
            if let Err(e) = testing::replay_files(&named, &mut state, START) {
                let sizes: Vec<String> =
                    image.files.iter().map(|(n, b, d)| format!("{n}: {} bytes, durable {d:?}", b.len())).collect();
                panic!(
                    "{sync:?}: crash point {n} ({}), variant {variant}: the log does not open: {e}\nfiles: {sizes:#?}",
                    image.point
                );
            }
            let mut got: Entries = state.entries(START).map(|(k, v, e)| (k.to_vec(), v.to_vec(), e)).collect();
            got.sort();
            let req = image.required as usize;
            let ok = prefixes[req..].contains(&got) || partial.iter().any(|(i, s)| *i >= image.required && *s == got);
            assert!(
                ok,
                "{sync:?}: crash point {n}, variant {variant}: the state is no prefix that keeps the {req} operations \
                 that had to survive"
            );
        }
    }
}

#[test]
fn power_loss_under_sync_always_loses_nothing_acknowledged() {
    for seed in [1, 2, 3] {
        run(SyncPolicy::Always, 0x9e37_79b9_7f4a_7c15 ^ seed);
    }
}

#[test]
fn power_loss_under_everysec_loses_at_most_what_came_after_the_last_sync() {
    for seed in [1, 2, 3] {
        run(SyncPolicy::EverySec, 0x2545_f491_4f6c_dd1d ^ seed);
    }
}
