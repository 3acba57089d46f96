//! Log compaction, run by the writer between batches: when the log is over
//! twice the live data, every live entry's set record below a cutoff is
//! re-appended in bounded slices; then a helper thread syncs, moves the
//! floor in the MANIFEST and unlinks the emptied segments.

use std::fs::File;
use std::path::Path;
use std::thread::JoinHandle;
use std::time::Instant;

use super::writer::{BatchSink, Writer};
use crate::error::{Error, Result};
use crate::record::SegmentId;
use crate::segment::{SharedManifest, list_segments, segment_path, sync_dir};

/// The writer's compaction state and counters.
#[derive(Default)]
pub(super) struct Compactor {
    /// The compaction whose slices are running, if any.
    pub(super) running: Option<Compaction>,
    /// The helper thread finishing a compaction; yields the bytes it freed.
    pub(super) finishing: Option<JoinHandle<Result<(u64, SegmentId)>>>,
    /// Bytes of the segments the running finish will unlink.
    pub(super) pending_free: u64,
    /// No compaction below this log size.
    pub(super) min_bytes: u64,
    /// Compactions finished.
    pub(super) count: u64,
    /// The longest a compaction slice held the writer, in µs, with its write,
    /// and without (the part the engine controls; the rest is the kernel).
    pub(super) max_pause_us: u64,
    pub(super) max_slice_cpu_us: u64,
    /// How long each slice held the writer.
    pub(super) pauses: crate::Latencies,
}

/// A compaction in progress: every segment below `cutoff` is being emptied
/// of live records, slot by slot, between batches.
pub(super) struct Compaction {
    cutoff: SegmentId,
    /// The sequence number of the first record in `cutoff`.
    first_seq: u64,
    cursor: u32,
}

/// Slots visited and bytes re-appended per compaction slice: small enough
/// that a slice holds requests up for well under 5 ms.
const COMPACT_SLOTS: u32 = 4096;
const COMPACT_BYTES: usize = 512 << 10;

impl Writer {
    /// Starts a compaction when the log is over twice the live data (and
    /// over the floor size), or runs one slice of the one in progress.
    pub(super) fn compact_step(&mut self) {
        if let Some(f) = &self.compactor.finishing
            && f.is_finished()
        {
            self.join_finisher();
        }
        let Some(c) = &self.compactor.running else {
            if self.compaction_due() {
                if self.compactor.finishing.is_some() {
                    // The log outran the finish: wait for it, so the log
                    // stays bounded however slow the disk is.
                    self.join_finisher();
                    return;
                }
                // Roll first, so the whole log up to now is the victim prefix.
                let first_seq = match self.roll() {
                    Ok(first_seq) => first_seq,
                    Err(e) => {
                        tracing::error!("could not start a new segment for compaction: {e}");
                        return;
                    }
                };
                self.state.begin_compaction();
                tracing::info!(
                    log_bytes = self.log_bytes,
                    live_bytes = self.state.live_log_bytes(),
                    "compaction started"
                );
                self.compactor.running = Some(Compaction { cutoff: self.active.id, first_seq, cursor: 0 });
            }
            return;
        };
        let (cutoff, first_seq, cursor) = (c.cutoff, c.first_seq, c.cursor);
        let started = Instant::now();
        let now = self.clock.now().0;
        self.buf.clear();
        let mut sink = BatchSink { buf: &mut self.buf, segment: self.active.id, next_seq: &mut self.next_seq };
        let next = self.state.compact_slice(cursor, COMPACT_SLOTS, COMPACT_BYTES, now, &mut sink);
        self.compactor.max_slice_cpu_us = self.compactor.max_slice_cpu_us.max(started.elapsed().as_micros() as u64);
        if !self.buf.is_empty()
            && let Err(e) = self.write_batch(false)
        {
            let msg = format!("compaction write to {} failed: {e}", self.active.path.display());
            tracing::error!("{msg}");
            self.recover(&msg);
            return;
        }
        self.hook("compact-slice");
        match next {
            Some(cursor) => {
                if let Some(c) = &mut self.compactor.running {
                    c.cursor = cursor;
                }
            }
            None => {
                self.compactor.running = None;
                self.start_finish(cutoff, first_seq);
            }
        }
        let pause = started.elapsed();
        self.compactor.max_pause_us = self.compactor.max_pause_us.max(pause.as_micros() as u64);
        self.compactor.pauses.record(pause);
    }

    /// Whether the log has outgrown its live data enough to compact: over
    /// `--compact-min-bytes` and over twice the live bytes (segments a
    /// running finish is about to unlink do not count).
    pub(super) fn compaction_due(&self) -> bool {
        let log = self.log_bytes.saturating_sub(self.compactor.pending_free);
        log > self.compactor.min_bytes && log > 2 * self.state.live_log_bytes()
    }

    /// Ends a compaction whose records are all re-appended. Its I/O (fsync,
    /// manifest, unlinks, directory fsync) runs on a helper thread while the
    /// writer goes on serving; with a test hook set it runs inline, so the
    /// hook sees the files with the writer standing still.
    fn start_finish(&mut self, cutoff: SegmentId, first_seq: u64) {
        let file = match self.active.file.try_clone() {
            Ok(f) => f,
            Err(e) => {
                tracing::error!("compaction could not finish (it will run again): {e}");
                return;
            }
        };
        let dir = self.dir.clone();
        self.compactor.pending_free = list_segments(&dir)
            .unwrap_or_default()
            .into_iter()
            .filter(|id| *id < cutoff)
            .map(|id| std::fs::metadata(segment_path(&dir, id)).map_or(0, |m| m.len()))
            .sum();
        let manifest = self.manifest.clone();
        if self.hook.is_some() {
            let (faults, path, len) = (self.faults.clone(), self.active.path.clone(), self.active.len);
            let result = finish_compaction(&dir, &file, &manifest, cutoff, first_seq, &mut |point| {
                if let (Some(f), "compact-synced") = (&faults, point) {
                    f.note_durable(&path, len);
                }
                self.hook(point)
            });
            self.finished(result);
        } else {
            let spawned = std::thread::Builder::new()
                .name("cachet-compact".into())
                .spawn(move || finish_compaction(&dir, &file, &manifest, cutoff, first_seq, &mut |_| {}));
            match spawned {
                Ok(handle) => self.compactor.finishing = Some(handle),
                Err(e) => tracing::error!("compaction could not finish (it will run again): starting its thread: {e}"),
            }
        }
    }

    /// Waits for a running compaction finish, if any (before anything else
    /// moves the floor or unlinks segments).
    pub(super) fn join_finisher(&mut self) {
        if let Some(handle) = self.compactor.finishing.take() {
            match handle.join() {
                Ok(result) => self.finished(result),
                Err(_) => {
                    self.compactor.pending_free = 0;
                    tracing::error!("the compaction thread panicked; compaction will run again");
                }
            }
        }
    }

    fn finished(&mut self, result: Result<(u64, SegmentId)>) {
        self.compactor.pending_free = 0;
        match result {
            Ok((freed, cutoff)) => {
                self.state.forget_segments_below(cutoff);
                self.log_bytes = self.log_bytes.saturating_sub(freed);
                self.compactor.count += 1;
                tracing::info!(
                    log_bytes = self.log_bytes,
                    live = self.state.live_log_bytes(),
                    freed,
                    "compaction done"
                );
            }
            Err(e) => tracing::error!("compaction could not finish (it will run again): {e}"),
        }
    }
}

/// The re-appended records are synced, then the floor moves past the
/// victims durably, then they are unlinked: a crash at any point leaves a log
/// that replays to the same state. Returns the bytes freed.
fn finish_compaction(
    dir: &Path,
    active: &File,
    manifest: &SharedManifest,
    cutoff: SegmentId,
    first_seq: u64,
    hook: &mut dyn FnMut(&'static str),
) -> Result<(u64, SegmentId)> {
    active.sync_data().map_err(Error::io("syncing the active segment in", dir))?;
    hook("compact-synced");
    manifest.update(|m| {
        m.floor = cutoff;
        m.first_seq = first_seq;
    })?;
    hook("compact-floor");
    let mut freed = 0;
    for id in list_segments(dir)?.into_iter().filter(|id| *id < cutoff) {
        let path = segment_path(dir, id);
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        match std::fs::remove_file(&path) {
            Ok(()) => freed += len,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("removing compacted segment", &path)(e)),
        }
        hook("compact-unlinked");
    }
    sync_dir(dir)?;
    Ok((freed, cutoff))
}
