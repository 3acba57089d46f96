//! The single writer: one thread owns the [`State`], the active segment and
//! the counters. Requests arrive on a bounded channel, each with a reply slot
//! (a tokio oneshot, awaitable from async code and blockable from threads).
//!
//! Each wake-up drains what is queued into one batch (bounded), applies every
//! command, writes the batch's records with one `write()`, syncs if the
//! policy asks (so `always` is group commit), replies, then expires a bounded
//! number of due entries and rolls the segment if it is full.

//!
//! By concern: `config`, `handle` (the way in), `writer` (the loop),
//! `recover` (failed writes) and `compact` (log compaction).

mod compact;
mod config;
mod core;
mod handle;
mod recover;
mod snapshot;
mod writer;

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::oneshot;

pub use config::{Config, SyncPolicy};
#[cfg(feature = "testing")]
pub use config::{Hook, HookPoint};
#[cfg(not(feature = "testing"))]
use config::{Hook, HookPoint};
pub use handle::Handle;
pub use snapshot::{Snapshot, SnapshotFile, prepare_dest};

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::record::{self, SegmentId};
use crate::replay::{Progress, ReplayReport, replay_into};
use crate::segment::{ActiveSegment, Manifest, SharedManifest, list_segments, lock_dir, segment_path};
use crate::state::State;
use compact::Compactor;
use handle::Msg;
use writer::{Durability, Writer};

/// A running engine. Dropping it shuts the writer down cleanly.
pub struct Engine {
    handle: Handle,
    thread: Option<JoinHandle<()>>,
    report: ReplayReport,
}

impl Engine {
    /// Opens (or creates) the data directory with the system clock.
    pub fn open(config: Config) -> Result<Engine> {
        Engine::open_with(config, Arc::new(SystemClock::new()), |_| {})
    }

    /// Opens with an injected clock, reporting replay progress.
    pub fn open_with(config: Config, clock: Arc<dyn Clock>, progress: impl FnMut(Progress)) -> Result<Engine> {
        if config.limits.max_key_bytes > crate::index::MAX_KEY_LEN {
            return Err(Error::Config(format!("max_key_bytes may be at most {}", crate::index::MAX_KEY_LEN)));
        }
        if config.limits.max_value_bytes as u64 > u64::from(record::MAX_RECORD_LEN) - (1 << 17) {
            return Err(Error::Config("max_value_bytes may be at most 1 GiB".into()));
        }
        let dir = config.dir.clone();
        std::fs::create_dir_all(&dir).map_err(Error::io("creating data directory", &dir))?;
        let lock = lock_dir(&dir)?;
        snapshot::remove_stale(&dir);
        let (hook, faults) = config.test_hooks();
        let now = clock.now().0;
        let mut state = State::new(config.limits, now);
        #[cfg(feature = "testing")]
        if let Some(bytes) = config.arena_page_bytes {
            state = State::with_page_bytes(config.limits, now, bytes);
        }
        let report = replay_into(&dir, &mut state, now, progress)?;
        if let Some(torn) = &report.torn {
            let saved = save_torn_tail(torn);
            tracing::warn!(file = %torn.file.display(), offset = torn.offset, bytes_dropped = torn.bytes_dropped,
                saved = %saved,
                "cut off an incomplete write at the end of the log (a crash or power loss interrupted it; \
                 under sync=always it was never acknowledged, under everysec it was at most the last second's)");
        }
        for stray in &report.strays {
            tracing::warn!(file = %stray.display(),
                "ignoring a file named like a segment but not in the canonical form (seg-NNNNNNNNNNNNNNNN.log); it is not part of the log");
        }
        // Segments below the floor are dead (leftovers of an interrupted
        // compaction or clear). The MANIFEST's checksum held and the segments
        // present agree with it (replay checked both), so they can go.
        for id in &report.plan.dead {
            let path = segment_path(&dir, *id);
            std::fs::remove_file(&path).map_err(Error::io("removing dead segment", &path))?;
        }
        let last_id = report.plan.ids.last().copied();
        let active = match (report.newest, &report.torn) {
            (Some((id, valid)), _) if Some(id) == last_id => ActiveSegment::reopen(&dir, id, valid, &faults)?,
            _ => {
                let next = match last_id {
                    // A crash while creating the newest segment left its
                    // header short: it never held a record, so it is made
                    // again under the same number.
                    Some(id) if report.torn.as_ref().is_some_and(|t| t.offset == 0) => {
                        let path = segment_path(&dir, id);
                        std::fs::remove_file(&path).map_err(Error::io("removing torn segment", &path))?;
                        id
                    }
                    Some(id) => id.next()?,
                    None => report.plan.floor.max(SegmentId(1)),
                };
                ActiveSegment::create(&dir, next, &faults)?
            }
        };
        let floor = report.plan.ids.first().copied().filter(|f| *f <= active.id).unwrap_or(active.id);
        let first_seq = report.first_seq.or(report.plan.first_seq).unwrap_or(report.last_seq + 1);
        let manifest = Manifest { floor, first_seq, newest: active.id };
        if report.plan.store_manifest || report.plan.newest != Some(active.id) || report.plan.floor != floor {
            manifest.store(&dir)?;
        }
        let manifest = SharedManifest::new(&dir, manifest);
        let log_bytes = list_segments(&dir)?
            .iter()
            .map(|id| std::fs::metadata(segment_path(&dir, *id)).map(|m| m.len()).unwrap_or(0))
            .sum();
        let (tx, rx) = crossbeam_channel::bounded(config.queue_capacity);
        let writer = Writer {
            dir: dir.clone(),
            state,
            clock,
            active,
            next_seq: report.last_seq + 1,
            buf: Vec::with_capacity(1 << 16),
            segment_bytes: config.segment_bytes,
            max_batch: config.max_batch,
            expire_budget: config.expire_budget,
            log_bytes,
            durability: Durability {
                policy: config.sync,
                dirty: false,
                last_sync: Instant::now(),
                fsyncs: crate::Latencies::default(),
            },
            unavailable: None,
            compactor: Compactor { min_bytes: config.compact_min_bytes, ..Compactor::default() },
            hook,
            faults,
            manifest,
            snapshots: 0,
            appended_since_background: 0,
            _lock: lock,
        };
        // Under `always` requests go through the engine thread, so that
        // concurrent writers share one fsync; otherwise callers apply their
        // own (see `core`).
        let inline = config.sync != SyncPolicy::Always && config.apply_on_callers;
        let core = Arc::new(core::Core::new(writer, inline, tx.clone(), rx.clone()));
        let engine_core = core.clone();
        let thread = std::thread::Builder::new()
            .name("cachet-engine".into())
            .spawn(move || engine_core.run(rx))
            .map_err(Error::io("starting engine thread", &dir))?;
        Ok(Engine { handle: Handle { tx, core }, thread: Some(thread), report })
    }

    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    pub fn replay_report(&self) -> &ReplayReport {
        &self.report
    }

    /// Finishes queued requests, syncs the log and stops the writer.
    pub fn shutdown(mut self) -> Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> Result<()> {
        let Some(thread) = self.thread.take() else { return Ok(()) };
        let (tx, rx) = oneshot::channel();
        let result = match self.handle.send(Msg::Shutdown(tx)) {
            Ok(()) => rx.blocking_recv().unwrap_or(Err(Error::Closed)),
            Err(_) => Err(Error::Closed),
        };
        let _ = thread.join();
        result
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::error!("engine shutdown: {e}");
        }
    }
}

/// Copies the bytes a torn-write cut drops to `<segment>.torn-<unix time>`
/// before they go, so nothing is destroyed on the log's own judgement; says
/// where (or why not).
fn save_torn_tail(torn: &crate::replay::TornTail) -> String {
    if torn.offset == 0 || torn.bytes_dropped == 0 {
        return "nothing to save".into();
    }
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let to = PathBuf::from(format!("{}.torn-{stamp}", torn.file.display()));
    let copied = std::fs::read(&torn.file).and_then(|bytes| {
        let from = (torn.offset as usize).min(bytes.len());
        std::fs::write(&to, &bytes[from..])
    });
    match copied {
        Ok(()) => to.display().to_string(),
        Err(e) => format!("not saved ({e})"),
    }
}
