//! The writer loop: drain the queue into a batch, apply it, write and sync
//! its records, reply; between batches, expire, sync, roll and compact.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::compact::Compactor;
use super::handle::Msg;
use super::recover::Unavailable;
use super::{Hook, HookPoint, SyncPolicy};
use crate::budget::ReplyBudget;
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::record::{self, Record, SegmentId, Seq};
use crate::segment::{ActiveSegment, Faults, SharedManifest, list_segments, segment_path, sync_dir};
use crate::state::{Command, Reply, Sink, State};

/// Log bytes callers write between two compaction steps they run
/// themselves (a slice re-appends up to 512 KiB: 8x this), or an eighth
/// of a segment if that is less.
const INLINE_BACKGROUND_BYTES: u64 = 64 << 10;

/// The writer's state.
pub(super) struct Writer {
    pub(super) dir: PathBuf,
    pub(super) state: State,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) active: ActiveSegment,
    pub(super) next_seq: u64,
    /// The records of the batch (or compaction slice) being built.
    pub(super) buf: Vec<u8>,
    pub(super) segment_bytes: u64,
    pub(super) max_batch: usize,
    pub(super) expire_budget: usize,
    /// Bytes in the log's segments.
    pub(super) log_bytes: u64,
    pub(super) durability: Durability,
    /// Set when the log cannot be written: writes are refused until a retry
    /// succeeds.
    pub(super) unavailable: Option<Unavailable>,
    pub(super) compactor: Compactor,
    pub(super) hook: Option<Hook>,
    pub(super) faults: Option<Arc<Faults>>,
    /// What the log must contain; shared with the compaction finisher.
    pub(super) manifest: SharedManifest,
    /// Snapshots taken (names each snapshot's directory).
    pub(super) snapshots: u64,
    /// Log bytes written since the last compaction step or roll check.
    pub(super) appended_since_background: u64,
    pub(super) _lock: File,
}

/// When written bytes reach the disk.
pub(super) struct Durability {
    pub(super) policy: SyncPolicy,
    /// Whether bytes were written since the last fdatasync.
    pub(super) dirty: bool,
    pub(super) last_sync: Instant,
    /// How long each fdatasync of the active segment took.
    pub(super) fsyncs: crate::Latencies,
}

/// The writer's own counters, added to a `stats` reply.
#[derive(Clone, Copy)]
struct EngineStats {
    log_bytes: u64,
    compactions: u64,
    max_pause_us: u64,
    max_slice_cpu_us: u64,
    pauses: crate::Latencies,
    fsyncs: crate::Latencies,
}

/// Applies the commands of one batch.
struct Step<'a, 'b> {
    state: &'a mut State,
    sink: &'a mut BatchSink<'b>,
    now: u64,
    unavailable: &'a Option<String>,
    engine_stats: EngineStats,
    /// Read only for a `stats` reply (its lock stays off the hot path).
    manifest: &'a SharedManifest,
}

impl Step<'_, '_> {
    /// Applies `cmd`. Also returns whether its reply must be withdrawn should
    /// the batch's write fail: the command wrote, or it came after a write of
    /// this batch and so may have seen (or decided on) a change that is undone.
    fn run(&mut self, cmd: &Command, force_sync: &mut bool) -> (bool, Result<Reply>) {
        let write = cmd.is_write();
        if write && let Some(cause) = self.unavailable {
            return (true, Err(Error::Unavailable(cause.clone())));
        }
        if matches!(cmd, Command::Clear) {
            *force_sync = true;
        }
        let after_write = !self.sink.buf.is_empty();
        let mut reply = self.state.apply(cmd, self.now, self.sink);
        if let Ok(Reply::Stats(stats)) = &mut reply {
            let e = self.engine_stats;
            stats.log_bytes = e.log_bytes;
            let m = self.manifest.get();
            stats.segments = m.floor.count_to(m.newest);
            stats.compactions = e.compactions;
            stats.compaction_max_pause_us = e.max_pause_us;
            stats.compaction_max_slice_cpu_us = e.max_slice_cpu_us;
            stats.compaction_pauses = e.pauses;
            stats.fsyncs = e.fsyncs;
            stats.read_only = self.unavailable.is_some();
        }
        (write || after_write, reply)
    }
}

/// Encodes the records of one batch into the writer's buffer.
pub(super) struct BatchSink<'a> {
    pub(super) buf: &'a mut Vec<u8>,
    pub(super) segment: SegmentId,
    pub(super) next_seq: &'a mut u64,
}

impl Sink for BatchSink<'_> {
    fn append(&mut self, rec: &Record<'_>) -> SegmentId {
        record::encode(self.buf, self.segment, Seq(*self.next_seq), rec);
        *self.next_seq += 1;
        self.segment
    }
}

pub(super) enum Pending {
    One(oneshot::Sender<Result<Reply>>, bool, Result<Reply>),
    Many(oneshot::Sender<Vec<Result<Reply>>>, Vec<(bool, Result<Reply>)>),
}

impl Writer {
    /// One turn of the engine on whatever thread holds the writer: applies
    /// `msgs` as one batch (written, and synced as the policy says), sends
    /// the replies, takes the snapshots asked for, then does the bounded
    /// work between batches (expiry, the once-a-second sync, a compaction
    /// slice, a segment roll). Returns a shutdown request if one came.
    /// `inline`: the turn of a caller, which leaves the segment roll,
    /// compaction and the disk's retries to the engine thread (a caller
    /// pays for its own commands and a bounded expiry, not for those).
    pub(super) fn turn(
        &mut self,
        msgs: &mut Vec<Msg>,
        pending: &mut Vec<Pending>,
        inline: bool,
    ) -> Option<oneshot::Sender<Result<()>>> {
        let shutdown = self.batch_turn(msgs, pending);
        self.between_batches(inline);
        shutdown
    }

    /// The first half of a turn: applies `msgs` as one batch (written, and
    /// synced as the policy says), sends the replies and takes the
    /// snapshots asked for. `between_batches` is the second half; a caller
    /// may run it a little later, once the replies are on their way.
    pub(super) fn batch_turn(
        &mut self,
        msgs: &mut Vec<Msg>,
        pending: &mut Vec<Pending>,
    ) -> Option<oneshot::Sender<Result<()>>> {
        let snapshots: Vec<_> = msgs
            .extract_if(.., |m| matches!(m, Msg::Snapshot(_)))
            .filter_map(|m| match m {
                Msg::Snapshot(tx) => Some(tx),
                _ => None,
            })
            .collect();
        let shutdown = self.apply_batch(msgs, pending);
        for p in pending.drain(..) {
            match p {
                Pending::One(tx, _, r) => drop(tx.send(r)),
                Pending::Many(tx, rs) => drop(tx.send(rs.into_iter().map(|(_, r)| r).collect())),
            }
        }
        // After the batch is written: a snapshot holds every write
        // acknowledged before it was asked for.
        for tx in snapshots {
            let _ = tx.send(self.snapshot());
        }
        shutdown
    }

    /// The bounded work between batches: expiry, reclaim, and (on the
    /// engine thread, or on a caller's in proportion to what it wrote) the
    /// once-a-second sync, a compaction slice and a segment roll. Each is
    /// paced by what is due, so a turn that skips it leaves it to the next.
    pub(super) fn between_batches(&mut self, inline: bool) {
        let now = self.clock.now().0;
        self.state.expire(now, self.expire_budget);
        self.state.reclaim();
        if !inline {
            self.background_io();
        } else if self.appended_since_background >= INLINE_BACKGROUND_BYTES.min(self.segment_bytes / 8)
            && self.needs_background()
        {
            // Writers pay for compaction in proportion to what they write,
            // so it keeps up with any write rate: a slice re-appends up to
            // 8x these bytes.
            self.compact_and_roll();
        }
    }

    /// How long to sleep waiting for requests before there is timer or sync work.
    pub(super) fn wait_time(&self) -> Option<Duration> {
        let mut wait: Option<Duration> = None;
        if let Some(deadline) = self.state.next_deadline() {
            let now = self.clock.now().0;
            wait = Some(Duration::from_millis(deadline.saturating_sub(now)));
        }
        if self.durability.dirty && self.durability.policy == SyncPolicy::EverySec {
            let left = Duration::from_secs(1).saturating_sub(self.durability.last_sync.elapsed());
            wait = Some(wait.map_or(left, |w| w.min(left)));
        }
        if let Some(u) = &self.unavailable {
            let left = u.next_try.saturating_duration_since(Instant::now());
            wait = Some(wait.map_or(left, |w| w.min(left)));
        }
        if self.compactor.running.is_some() {
            wait = Some(Duration::ZERO);
        } else if self.compactor.finishing.is_some() {
            wait = Some(wait.map_or(Duration::from_millis(10), |w| w.min(Duration::from_millis(10))));
        }
        wait
    }

    /// Applies every queued command, writes and syncs the batch, and fills
    /// `pending` with the replies. Returns a shutdown request if one came.
    pub(super) fn apply_batch(
        &mut self,
        msgs: &mut Vec<Msg>,
        pending: &mut Vec<Pending>,
    ) -> Option<oneshot::Sender<Result<()>>> {
        let now = self.clock.now().0;
        let mut shutdown = None;
        let mut force_sync = false;
        self.buf.clear();
        self.state.begin_batch();
        let start_seq = self.next_seq;
        let mut sink = BatchSink { buf: &mut self.buf, segment: self.active.id, next_seq: &mut self.next_seq };
        let unavailable = self.unavailable.as_ref().map(|u| u.cause.clone());
        let engine_stats = EngineStats {
            log_bytes: self.log_bytes,
            compactions: self.compactor.count,
            max_pause_us: self.compactor.max_pause_us,
            max_slice_cpu_us: self.compactor.max_slice_cpu_us,
            pauses: self.compactor.pauses,
            fsyncs: self.durability.fsyncs,
        };
        let max_reply = self.state.limits().max_reply_bytes;
        let room = |budget: &Option<Arc<ReplyBudget>>| budget.as_deref().map_or(max_reply, ReplyBudget::available);
        let manifest = &self.manifest;
        let mut step =
            Step { state: &mut self.state, sink: &mut sink, now, unavailable: &unavailable, engine_stats, manifest };
        for msg in msgs.drain(..) {
            match msg {
                Msg::One(cmd, budget, tx) => {
                    step.state.set_reply_room(room(&budget));
                    let (w, r) = step.run(&cmd, &mut force_sync);
                    if let Some(b) = budget {
                        b.debit(step.state.reply_used());
                    }
                    pending.push(Pending::One(tx, w, r));
                }
                Msg::Many(cmds, budget, tx) => {
                    // The whole batch's replies share one room.
                    step.state.set_reply_room(room(&budget));
                    step.state.warm(&cmds);
                    let rs = cmds.iter().map(|c| step.run(c, &mut force_sync)).collect();
                    if let Some(b) = budget {
                        b.debit(step.state.reply_used());
                    }
                    pending.push(Pending::Many(tx, rs));
                }
                Msg::Shutdown(tx) => shutdown = Some(tx),
                // Taken out before the batch (snapshots) or by the engine
                // thread (pokes); nothing to apply.
                Msg::Snapshot(_) | Msg::Wake => {}
            }
        }
        if self.buf.is_empty() {
            // Reads that found an expired entry removed it: nothing to undo.
            self.state.commit_batch();
            return shutdown;
        }
        let cleared = force_sync;
        let before = self.active.len;
        if let Err(cause) = self.write_batch(force_sync || self.durability.policy == SyncPolicy::Always) {
            let msg = format!("{cause} (writing {})", self.active.path.display());
            tracing::error!("log write failed, the batch is refused and undone: {msg}");
            fail_writes(pending, &msg);
            self.state.rollback_batch();
            self.next_seq = start_seq;
            // Cut the partial batch off, so the log matches memory even if
            // the rewrite below fails too.
            self.log_bytes = self.log_bytes.saturating_sub(self.active.len - before);
            if let Err(e) = self.active.truncate(before) {
                tracing::warn!("could not cut the failed batch off {}: {e}", self.active.path.display());
            }
            self.recover(&msg);
        } else {
            self.state.commit_batch();
            if cleared {
                self.drop_segments_before_clear();
            }
            self.hook("batch-written");
        }
        shutdown
    }

    pub(super) fn write_batch(&mut self, sync: bool) -> std::io::Result<()> {
        self.active.append(&self.buf)?;
        self.log_bytes += self.buf.len() as u64;
        self.appended_since_background += self.buf.len() as u64;
        self.durability.dirty = true;
        if sync {
            self.sync_active()?;
            self.durability.dirty = false;
            self.durability.last_sync = Instant::now();
        }
        Ok(())
    }

    /// After `clear` is durable, older segments hold nothing live: start a
    /// fresh segment, record it as the floor and unlink the rest.
    fn drop_segments_before_clear(&mut self) {
        self.join_finisher();
        self.compactor.running = None;
        if let Err(e) = self.roll().and_then(|first_seq| self.drop_below(self.active.id, first_seq)) {
            tracing::warn!("could not drop segments after clear (compaction will retry): {e}");
        }
    }

    /// Makes `floor` (whose first record carries `first_seq`) the start of
    /// the log, durably, then unlinks every segment before it.
    pub(super) fn drop_below(&mut self, floor: SegmentId, first_seq: u64) -> Result<()> {
        self.manifest.update(|m| {
            m.floor = floor;
            m.first_seq = first_seq;
        })?;
        self.state.forget_segments_below(floor);
        for id in list_segments(&self.dir)?.into_iter().filter(|id| *id < floor) {
            let path = segment_path(&self.dir, id);
            let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            std::fs::remove_file(&path).map_err(Error::io("removing segment", &path))?;
            self.log_bytes = self.log_bytes.saturating_sub(len);
        }
        sync_dir(&self.dir)
    }

    /// Closes the active segment (synced) and starts the next one, recorded
    /// in the MANIFEST as the newest before anything is written to it.
    /// Returns the sequence number its first record will carry.
    pub(super) fn roll(&mut self) -> Result<u64> {
        self.sync_active().map_err(Error::io("syncing", &self.active.path))?;
        self.hook("synced");
        let next = self.new_segment(self.active.id.next()?)?;
        self.log_bytes += next.len;
        self.active = next;
        self.durability.dirty = false;
        self.durability.last_sync = Instant::now();
        Ok(self.next_seq)
    }

    /// Creates segment `id` and records it as the newest in the MANIFEST;
    /// if that fails, the new file is removed again.
    pub(super) fn new_segment(&mut self, id: SegmentId) -> Result<ActiveSegment> {
        let seg = ActiveSegment::create(&self.dir, id, &self.faults)?;
        if let Err(e) = self.manifest.update(|m| m.newest = m.newest.max(id)) {
            let _ = std::fs::remove_file(&seg.path);
            return Err(e);
        }
        Ok(seg)
    }

    /// Periodic work between batches: the once-a-second sync (unless the
    /// engine thread ran it off the lock, see `sync_job`), segment roll,
    /// compaction, and retrying a failed disk.
    fn background_io(&mut self) {
        if let Some(u) = &self.unavailable {
            if Instant::now() >= u.next_try {
                let cause = u.cause.clone();
                self.recover(&cause);
            }
            return;
        }
        if self.sync_due() {
            if let Err(e) = self.sync_active() {
                let msg = format!("fdatasync of {} failed: {e}", self.active.path.display());
                tracing::error!("{msg}");
                self.recover(&msg);
                return;
            }
            self.durability.dirty = false;
            self.durability.last_sync = Instant::now();
            self.hook("synced");
        }
        self.compact_and_roll();
    }

    /// A compaction slice (or its start or end) and a segment roll, when due.
    fn compact_and_roll(&mut self) {
        self.appended_since_background = 0;
        self.compact_step();
        if self.unavailable.is_none()
            && self.active.len >= self.segment_bytes
            && let Err(e) = self.roll()
        {
            tracing::error!("could not start a new segment: {e}");
            self.recover(&e.to_string());
        }
    }

    /// Whether the once-a-second sync is due.
    fn sync_due(&self) -> bool {
        self.durability.dirty
            && self.durability.policy == SyncPolicy::EverySec
            && self.durability.last_sync.elapsed() >= Duration::from_secs(1)
    }

    /// The once-a-second sync, to run without the writer (so requests go on
    /// while it waits for the disk), if it is due. Under a test hook it
    /// stays in `background_io`, where the hook sees it.
    pub(super) fn sync_job(&self) -> Option<(crate::segment::SyncJob, Instant)> {
        if self.unavailable.is_some() || self.hook.is_some() || !self.sync_due() {
            return None;
        }
        self.active.sync_job().ok().map(|job| (job, Instant::now()))
    }

    /// Takes the result of a `sync_job`.
    pub(super) fn synced(&mut self, job: &crate::segment::SyncJob, started: Instant, result: std::io::Result<()>) {
        self.durability.fsyncs.record(started.elapsed());
        match result {
            Ok(()) if job.id == self.active.id => {
                // Writes made while it ran are synced at the next one.
                self.durability.dirty = self.active.len != job.len;
                self.durability.last_sync = started;
            }
            // The segment was closed meanwhile, and synced as it closed.
            Ok(()) => {}
            Err(e) => {
                let msg = format!("fdatasync of {} failed: {e}", job.path.display());
                tracing::error!("{msg}");
                self.recover(&msg);
            }
        }
    }

    /// Whether work waits that only the engine thread does between turns
    /// (a segment to roll, a compaction to start or continue).
    pub(super) fn needs_background(&self) -> bool {
        self.unavailable.is_none()
            && (self.active.len >= self.segment_bytes
                || self.compactor.running.is_some()
                || self.compactor.finishing.as_ref().is_some_and(|f| f.is_finished())
                || self.compaction_due())
    }

    pub(super) fn hook(&self, point: &'static str) {
        if let Some(Hook(f)) = &self.hook {
            f(&HookPoint { point, dir: &self.dir, state: &self.state, now: self.clock.now().0 });
        }
    }

    pub(super) fn finish(&mut self) -> Result<()> {
        self.join_finisher();
        if self.unavailable.is_some() {
            return Err(Error::WriteFailed("the log was unavailable at shutdown; see earlier errors".into()));
        }
        self.sync_active().map_err(Error::io("syncing", &self.active.path))
    }

    /// fdatasync of the active segment, timed for the `fsyncs` histogram.
    fn sync_active(&mut self) -> std::io::Result<()> {
        let started = Instant::now();
        let synced = self.active.sync();
        self.durability.fsyncs.record(started.elapsed());
        synced
    }
}

pub(super) fn ops_in(m: &Msg) -> usize {
    match m {
        Msg::Many(cmds, _, _) => cmds.len().max(1),
        _ => 1,
    }
}

/// The batch's write failed: every reply that depends on it (see
/// `Step::run`) becomes the write's error, reads after a write included, so
/// no reply reveals a change that was undone.
fn fail_writes(pending: &mut [Pending], cause: &str) {
    let fail = |w: bool, r: &mut Result<Reply>| {
        if w && r.is_ok() {
            *r = Err(Error::WriteFailed(cause.to_string()));
        }
    };
    for p in pending {
        match p {
            Pending::One(_, w, r) => fail(*w, r),
            Pending::Many(_, rs) => rs.iter_mut().for_each(|(w, r)| fail(*w, r)),
        }
    }
}
