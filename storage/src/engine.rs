//! The single writer: one thread owns the [`State`], the active segment and
//! the counters. Requests arrive on a bounded channel, each with a reply slot
//! (a tokio oneshot, awaitable from async code and blockable from threads).
//!
//! Each wake-up drains what is queued into one batch (bounded), applies every
//! command, writes the batch's records with one `write()`, syncs if the
//! policy asks (so `always` is group commit), replies, then expires a bounded
//! number of due entries and rolls the segment if it is full.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use tokio::sync::oneshot;

use crate::budget::ReplyBudget;
use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::record::{self, Record, SegmentId, Seq};
use crate::replay::{Progress, ReplayReport, replay_into};
use crate::segment::{ActiveSegment, Faults, Manifest, SharedManifest, list_segments, segment_path, sync_dir};
use crate::state::{Command, Limits, Reply, Sink, State};

/// When acknowledged writes reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SyncPolicy {
    /// fdatasync before any reply of a batch (group commit).
    Always,
    /// fdatasync about once a second: a power loss can lose about a second of
    /// acknowledged writes; a process crash loses nothing.
    #[default]
    EverySec,
    /// Leave it to the OS.
    Never,
}

impl std::str::FromStr for SyncPolicy {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "always" => Ok(SyncPolicy::Always),
            "everysec" => Ok(SyncPolicy::EverySec),
            "never" => Ok(SyncPolicy::Never),
            other => Err(format!("unknown sync policy {other:?}; use always, everysec or never")),
        }
    }
}

impl std::fmt::Display for SyncPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SyncPolicy::Always => "always",
            SyncPolicy::EverySec => "everysec",
            SyncPolicy::Never => "never",
        })
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub dir: PathBuf,
    pub sync: SyncPolicy,
    /// A segment is closed and a new one started past this size.
    pub segment_bytes: u64,
    pub limits: Limits,
    /// Most commands applied in one batch.
    pub max_batch: usize,
    /// Capacity of the request channel, in messages.
    pub queue_capacity: usize,
    /// Most expired entries removed per loop.
    pub expire_budget: usize,
    /// Compaction starts when the log is over twice the live data and over
    /// this size.
    pub compact_min_bytes: u64,
    /// Called at named points inside the writer (tests use it to copy the
    /// data directory at every step of a compaction). Feature `testing`.
    #[cfg(feature = "testing")]
    pub hook: Option<Hook>,
    /// Injected I/O faults (tests). Feature `testing`.
    #[cfg(feature = "testing")]
    pub faults: Option<Arc<Faults>>,
}

/// A callback into the writer thread at a named point; see [`HookPoint`].
#[derive(Clone)]
pub struct Hook(pub Arc<dyn Fn(&HookPoint<'_>) + Send + Sync>);

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hook")
    }
}

/// Where the writer is, with its state, when a [`Hook`] is called.
#[cfg_attr(not(feature = "testing"), allow(dead_code))]
pub struct HookPoint<'a> {
    pub point: &'static str,
    pub dir: &'a Path,
    pub state: &'a State,
    pub now: u64,
}

impl Config {
    /// The test hooks, when the `testing` feature is on; production builds
    /// have none.
    fn test_hooks(&self) -> (Option<Hook>, Option<Arc<Faults>>) {
        #[cfg(feature = "testing")]
        return (self.hook.clone(), self.faults.clone());
        #[cfg(not(feature = "testing"))]
        return (None, None);
    }

    pub fn new(dir: impl Into<PathBuf>) -> Config {
        Config {
            dir: dir.into(),
            sync: SyncPolicy::EverySec,
            segment_bytes: 64 << 20,
            limits: Limits::default(),
            max_batch: 1024,
            queue_capacity: 4096,
            expire_budget: 1000,
            compact_min_bytes: 64 << 20,
            #[cfg(feature = "testing")]
            hook: None,
            #[cfg(feature = "testing")]
            faults: None,
        }
    }
}

enum Msg {
    One(Command, Option<Arc<ReplyBudget>>, oneshot::Sender<Result<Reply>>),
    Many(Vec<Command>, Option<Arc<ReplyBudget>>, oneshot::Sender<Vec<Result<Reply>>>),
    Shutdown(oneshot::Sender<Result<()>>),
}

/// A running engine. Dropping it shuts the writer down cleanly.
pub struct Engine {
    handle: Handle,
    thread: Option<JoinHandle<()>>,
    report: ReplayReport,
}

/// A cheap, cloneable way to send commands to the engine.
#[derive(Clone)]
pub struct Handle {
    tx: Sender<Msg>,
}

/// Locks the data directory itself (`flock` on the directory), so two
/// processes never write one log. A lock on a file inside it could be
/// defeated by unlinking the file while the daemon runs (a second daemon
/// would create a new one and lock that); the directory cannot be unlinked
/// while it holds segments, and a new directory at the same path holds
/// none of these files. The lock goes with the process, however it ends.
pub(crate) fn lock_dir(dir: &Path) -> Result<File> {
    let file = File::open(dir).map_err(Error::io("opening data directory", dir))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Locked { dir: dir.to_path_buf() }),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io("locking", dir)(e)),
    }
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
        let (hook, faults) = config.test_hooks();
        let now = clock.now().0;
        let mut state = State::new(config.limits, now);
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
            sync: config.sync,
            segment_bytes: config.segment_bytes,
            max_batch: config.max_batch,
            expire_budget: config.expire_budget,
            dirty: false,
            last_sync: Instant::now(),
            log_bytes,
            unavailable: None,
            compaction: None,
            finishing: None,
            pending_free: 0,
            compact_min_bytes: config.compact_min_bytes,
            compactions: 0,
            max_pause_us: 0,
            max_slice_cpu_us: 0,
            hook,
            faults,
            manifest,
            _lock: lock,
        };
        let thread = std::thread::Builder::new()
            .name("cachet-engine".into())
            .spawn(move || writer.run(rx))
            .map_err(Error::io("starting engine thread", &dir))?;
        Ok(Engine { handle: Handle { tx }, thread: Some(thread), report })
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
        let result = match self.handle.tx.send(Msg::Shutdown(tx)) {
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

impl Handle {
    fn send(&self, msg: Msg) -> Result<()> {
        // The channel is bounded for backpressure. A full queue is rare (the
        // daemon bounds requests in flight), and blocking here is the
        // backpressure; the writer never waits on the caller, so it cannot
        // deadlock.
        match self.tx.try_send(msg) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(msg)) => self.tx.send(msg).map_err(|_| Error::Closed),
            Err(TrySendError::Disconnected(_)) => Err(Error::Closed),
        }
    }

    /// Queues a command and returns its reply slot without waiting, so a
    /// caller can keep many commands in flight (they share batches).
    pub fn submit(&self, cmd: Command) -> Result<oneshot::Receiver<Result<Reply>>> {
        let (tx, rx) = oneshot::channel();
        self.send(Msg::One(cmd, None, tx))?;
        Ok(rx)
    }

    pub async fn call(&self, cmd: Command) -> Result<Reply> {
        self.call_with(cmd, None).await
    }

    /// A command whose reply counts against `budget` (a connection's unread
    /// replies): it may return no more than the budget has left.
    pub async fn call_with(&self, cmd: Command, budget: Option<Arc<ReplyBudget>>) -> Result<Reply> {
        let (tx, rx) = oneshot::channel();
        self.send(Msg::One(cmd, budget, tx))?;
        rx.await.unwrap_or(Err(Error::Closed))
    }

    pub fn call_blocking(&self, cmd: Command) -> Result<Reply> {
        let (tx, rx) = oneshot::channel();
        self.send(Msg::One(cmd, None, tx))?;
        rx.blocking_recv().unwrap_or(Err(Error::Closed))
    }

    /// Several commands as one message: applied back to back in one batch.
    pub async fn call_many(&self, cmds: Vec<Command>) -> Result<Vec<Result<Reply>>> {
        self.call_many_with(cmds, None).await
    }

    /// `call_many` whose replies together count against `budget`.
    pub async fn call_many_with(
        &self,
        cmds: Vec<Command>,
        budget: Option<Arc<ReplyBudget>>,
    ) -> Result<Vec<Result<Reply>>> {
        let (tx, rx) = oneshot::channel();
        self.send(Msg::Many(cmds, budget, tx))?;
        rx.await.map_err(|_| Error::Closed)
    }

    pub fn call_many_blocking(&self, cmds: Vec<Command>) -> Result<Vec<Result<Reply>>> {
        let (tx, rx) = oneshot::channel();
        self.send(Msg::Many(cmds, None, tx))?;
        rx.blocking_recv().map_err(|_| Error::Closed)
    }
}

/// The writer's own counters, added to a `stats` reply.
#[derive(Clone, Copy)]
struct EngineStats {
    log_bytes: u64,
    compactions: u64,
    max_pause_us: u64,
    max_slice_cpu_us: u64,
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
            stats.segments = m.newest.0.saturating_sub(m.floor.0) + 1;
            stats.compactions = e.compactions;
            stats.compaction_max_pause_us = e.max_pause_us;
            stats.compaction_max_slice_cpu_us = e.max_slice_cpu_us;
            stats.read_only = self.unavailable.is_some();
        }
        (write || after_write, reply)
    }
}

/// Encodes the records of one batch into the writer's buffer.
struct BatchSink<'a> {
    buf: &'a mut Vec<u8>,
    segment: SegmentId,
    next_seq: &'a mut u64,
}

impl Sink for BatchSink<'_> {
    fn append(&mut self, rec: &Record<'_>) -> u32 {
        record::encode(self.buf, self.segment, Seq(*self.next_seq), rec);
        *self.next_seq += 1;
        self.segment.0 as u32
    }
}

enum Pending {
    One(oneshot::Sender<Result<Reply>>, bool, Result<Reply>),
    Many(oneshot::Sender<Vec<Result<Reply>>>, Vec<(bool, Result<Reply>)>),
}

struct Writer {
    dir: PathBuf,
    state: State,
    clock: Arc<dyn Clock>,
    active: ActiveSegment,
    next_seq: u64,
    buf: Vec<u8>,
    sync: SyncPolicy,
    segment_bytes: u64,
    max_batch: usize,
    expire_budget: usize,
    /// Whether bytes were written since the last fdatasync.
    dirty: bool,
    last_sync: Instant,
    log_bytes: u64,
    /// Set when the log cannot be written: writes are refused until a retry
    /// succeeds.
    unavailable: Option<Unavailable>,
    compaction: Option<Compaction>,
    /// The helper thread finishing a compaction; yields the bytes it freed.
    finishing: Option<JoinHandle<Result<(u64, SegmentId)>>>,
    /// Bytes of the segments the running finish will unlink.
    pending_free: u64,
    compact_min_bytes: u64,
    compactions: u64,
    /// The longest a compaction slice held the writer, in µs, with its write,
    /// and without (the part the engine controls; the rest is the kernel).
    max_pause_us: u64,
    max_slice_cpu_us: u64,
    hook: Option<Hook>,
    faults: Option<Arc<Faults>>,
    /// What the log must contain; shared with the compaction finisher.
    manifest: SharedManifest,
    _lock: File,
}

/// The log cannot be written: writes are refused, reads served, and the
/// rewrite that brings it back is retried with exponential backoff.
struct Unavailable {
    cause: String,
    next_try: Instant,
    backoff: Duration,
}

/// A compaction in progress: every segment below `cutoff` is being emptied
/// of live records, slot by slot, between batches.
struct Compaction {
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
    fn run(mut self, rx: Receiver<Msg>) {
        let mut msgs = Vec::new();
        let mut pending = Vec::new();
        loop {
            let first = match self.wait_time() {
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(t) => rx.recv_timeout(t),
            };
            match first {
                Ok(m) => msgs.push(m),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = self.finish();
                    return;
                }
            }
            let mut ops = msgs.iter().map(ops_in).sum::<usize>();
            while ops < self.max_batch {
                match rx.try_recv() {
                    Ok(m) => {
                        ops += ops_in(&m);
                        msgs.push(m);
                    }
                    Err(_) => break,
                }
            }
            let shutdown = self.apply_batch(&mut msgs, &mut pending);
            for p in pending.drain(..) {
                match p {
                    Pending::One(tx, _, r) => drop(tx.send(r)),
                    Pending::Many(tx, rs) => drop(tx.send(rs.into_iter().map(|(_, r)| r).collect())),
                }
            }
            let now = self.clock.now().0;
            self.state.expire(now, self.expire_budget);
            self.background_io();
            if let Some(reply) = shutdown {
                let _ = reply.send(self.finish());
                return;
            }
        }
    }

    /// How long to sleep waiting for requests before there is timer or sync work.
    fn wait_time(&self) -> Option<Duration> {
        let mut wait: Option<Duration> = None;
        if let Some(deadline) = self.state.next_deadline() {
            let now = self.clock.now().0;
            wait = Some(Duration::from_millis(deadline.saturating_sub(now)));
        }
        if self.dirty && self.sync == SyncPolicy::EverySec {
            let left = Duration::from_secs(1).saturating_sub(self.last_sync.elapsed());
            wait = Some(wait.map_or(left, |w| w.min(left)));
        }
        if let Some(u) = &self.unavailable {
            let left = u.next_try.saturating_duration_since(Instant::now());
            wait = Some(wait.map_or(left, |w| w.min(left)));
        }
        if self.compaction.is_some() {
            wait = Some(Duration::ZERO);
        } else if self.finishing.is_some() {
            wait = Some(wait.map_or(Duration::from_millis(10), |w| w.min(Duration::from_millis(10))));
        }
        wait
    }

    /// Applies every queued command, writes and syncs the batch, and fills
    /// `pending` with the replies. Returns a shutdown request if one came.
    fn apply_batch(&mut self, msgs: &mut Vec<Msg>, pending: &mut Vec<Pending>) -> Option<oneshot::Sender<Result<()>>> {
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
            compactions: self.compactions,
            max_pause_us: self.max_pause_us,
            max_slice_cpu_us: self.max_slice_cpu_us,
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
                    let rs = cmds.iter().map(|c| step.run(c, &mut force_sync)).collect();
                    if let Some(b) = budget {
                        b.debit(step.state.reply_used());
                    }
                    pending.push(Pending::Many(tx, rs));
                }
                Msg::Shutdown(tx) => shutdown = Some(tx),
            }
        }
        if self.buf.is_empty() {
            return shutdown;
        }
        let cleared = force_sync;
        let before = self.active.len;
        if let Err(cause) = self.write_batch(force_sync || self.sync == SyncPolicy::Always) {
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

    fn write_batch(&mut self, sync: bool) -> std::io::Result<()> {
        self.active.append(&self.buf)?;
        self.log_bytes += self.buf.len() as u64;
        self.dirty = true;
        if sync {
            self.active.sync()?;
            self.dirty = false;
            self.last_sync = Instant::now();
        }
        Ok(())
    }

    /// After `clear` is durable, older segments hold nothing live: start a
    /// fresh segment, record it as the floor and unlink the rest.
    fn drop_segments_before_clear(&mut self) {
        self.join_finisher();
        self.compaction = None;
        if let Err(e) = self.roll().and_then(|first_seq| self.drop_below(self.active.id, first_seq)) {
            tracing::warn!("could not drop segments after clear (compaction will retry): {e}");
        }
    }

    /// Makes `floor` (whose first record carries `first_seq`) the start of
    /// the log, durably, then unlinks every segment before it.
    fn drop_below(&mut self, floor: SegmentId, first_seq: u64) -> Result<()> {
        self.manifest.update(|m| {
            m.floor = floor;
            m.first_seq = first_seq;
        })?;
        self.state.forget_segments_below(floor.0 as u32);
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
    fn roll(&mut self) -> Result<u64> {
        self.active.sync().map_err(Error::io("syncing", &self.active.path))?;
        self.hook("synced");
        let next = self.new_segment(self.active.id.next()?)?;
        self.log_bytes += next.len;
        self.active = next;
        self.dirty = false;
        self.last_sync = Instant::now();
        Ok(self.next_seq)
    }

    /// Creates segment `id` and records it as the newest in the MANIFEST;
    /// if that fails, the new file is removed again.
    fn new_segment(&mut self, id: SegmentId) -> Result<ActiveSegment> {
        let seg = ActiveSegment::create(&self.dir, id, &self.faults)?;
        if let Err(e) = self.manifest.update(|m| m.newest = m.newest.max(id)) {
            let _ = std::fs::remove_file(&seg.path);
            return Err(e);
        }
        Ok(seg)
    }

    /// A write or sync failed. The file may hold part of the batch and the
    /// kernel may have dropped dirty pages, so neither the file nor fsync on
    /// it is trusted again: start a fresh segment, rewrite every live entry
    /// from memory into it, make it the floor and drop the rest. If that fails
    /// too, refuse writes until a retry succeeds.
    fn recover(&mut self, cause: &str) {
        match self.rewrite_from_memory() {
            Ok(()) => {
                tracing::warn!(
                    "recovered from a failed write by rewriting live data to {}",
                    self.active.path.display()
                );
                self.unavailable = None;
            }
            Err(e) => {
                let backoff = self
                    .unavailable
                    .as_ref()
                    .map_or(Duration::from_millis(250), |u| (u.backoff * 2).min(Duration::from_secs(30)));
                tracing::error!(
                    "storage unavailable, writes refused (reads still served) until the disk recovers: {cause}; \
                     rewriting live data failed too: {e}; retrying in {backoff:?}"
                );
                let cause = match &self.unavailable {
                    Some(u) => u.cause.clone(),
                    None => format!("{cause}; then: {e}"),
                };
                self.unavailable = Some(Unavailable { cause, next_try: Instant::now() + backoff, backoff });
            }
        }
    }

    fn rewrite_from_memory(&mut self) -> Result<()> {
        self.join_finisher();
        self.compaction = None;
        let existing = list_segments(&self.dir)?;
        let id = existing.last().map_or(self.active.id, |l| (*l).max(self.active.id)).next()?;
        let first_seq = self.next_seq;
        let mut seg = self.new_segment(id)?;
        match self.write_live_entries(&mut seg) {
            Ok(written) => {
                self.state.move_all_to_segment(id.0 as u32);
                self.active = seg;
                self.log_bytes = written;
                self.dirty = false;
                self.last_sync = Instant::now();
                self.drop_below(id, first_seq)
            }
            Err(e) => {
                // Leave nothing half-written behind, and reuse the sequence
                // numbers: the next attempt starts from the same place.
                self.next_seq = first_seq;
                if let Err(rm) = std::fs::remove_file(&seg.path) {
                    tracing::warn!("could not remove the failed rewrite {}: {rm}", seg.path.display());
                } else {
                    let _ = sync_dir(&self.dir);
                    let _ = self.manifest.update(|m| m.newest = self.active.id);
                }
                Err(e)
            }
        }
    }

    /// Writes a set record for every live entry into `seg` and syncs it;
    /// returns the segment's length.
    fn write_live_entries(&mut self, seg: &mut ActiveSegment) -> Result<u64> {
        let now = self.clock.now().0;
        let mut buf = Vec::with_capacity(1 << 20);
        let mut written = seg.len;
        for (key, value, expires) in self.state.entries(now) {
            record::encode(
                &mut buf,
                seg.id,
                Seq(self.next_seq),
                &Record::Set { key, value, expires: crate::UnixMillis(expires) },
            );
            self.next_seq += 1;
            if buf.len() >= 1 << 20 {
                seg.append(&buf).map_err(Error::io("rewriting live data to", &seg.path))?;
                written += buf.len() as u64;
                buf.clear();
            }
        }
        seg.append(&buf).map_err(Error::io("rewriting live data to", &seg.path))?;
        written += buf.len() as u64;
        seg.sync().map_err(Error::io("syncing", &seg.path))?;
        Ok(written)
    }

    /// Periodic work between batches: the once-a-second sync, segment roll,
    /// and retrying a failed disk.
    fn background_io(&mut self) {
        if let Some(u) = &self.unavailable {
            if Instant::now() >= u.next_try {
                let cause = u.cause.clone();
                self.recover(&cause);
            }
            return;
        }
        if self.dirty && self.sync == SyncPolicy::EverySec && self.last_sync.elapsed() >= Duration::from_secs(1) {
            if let Err(e) = self.active.sync() {
                let msg = format!("fdatasync of {} failed: {e}", self.active.path.display());
                tracing::error!("{msg}");
                self.recover(&msg);
                return;
            }
            self.dirty = false;
            self.last_sync = Instant::now();
            self.hook("synced");
        }
        self.compact_step();
        if self.active.len >= self.segment_bytes
            && let Err(e) = self.roll()
        {
            tracing::error!("could not start a new segment: {e}");
            self.recover(&e.to_string());
        }
    }

    fn hook(&self, point: &'static str) {
        if let Some(Hook(f)) = &self.hook {
            f(&HookPoint { point, dir: &self.dir, state: &self.state, now: self.clock.now().0 });
        }
    }

    /// Starts a compaction when the log is over twice the live data (and
    /// over the floor size), or runs one slice of the one in progress.
    fn compact_step(&mut self) {
        if let Some(f) = &self.finishing
            && f.is_finished()
        {
            self.join_finisher();
        }
        let Some(c) = &self.compaction else {
            let live = self.state.live_log_bytes();
            // Segments a running finish is about to unlink do not count.
            let log = self.log_bytes.saturating_sub(self.pending_free);
            if log > self.compact_min_bytes && log > 2 * live {
                if self.finishing.is_some() {
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
                tracing::info!(log_bytes = self.log_bytes, live_bytes = live, "compaction started");
                self.compaction = Some(Compaction { cutoff: self.active.id, first_seq, cursor: 0 });
            }
            return;
        };
        let (cutoff, first_seq, cursor) = (c.cutoff, c.first_seq, c.cursor);
        let started = Instant::now();
        let now = self.clock.now().0;
        self.buf.clear();
        let mut sink = BatchSink { buf: &mut self.buf, segment: self.active.id, next_seq: &mut self.next_seq };
        let next = self.state.compact_slice(cursor, cutoff.0 as u32, COMPACT_SLOTS, COMPACT_BYTES, now, &mut sink);
        self.max_slice_cpu_us = self.max_slice_cpu_us.max(started.elapsed().as_micros() as u64);
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
                if let Some(c) = &mut self.compaction {
                    c.cursor = cursor;
                }
            }
            None => {
                self.compaction = None;
                self.start_finish(cutoff, first_seq);
            }
        }
        self.max_pause_us = self.max_pause_us.max(started.elapsed().as_micros() as u64);
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
        self.pending_free = list_segments(&dir)
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
                Ok(handle) => self.finishing = Some(handle),
                Err(e) => tracing::error!("compaction could not finish (it will run again): starting its thread: {e}"),
            }
        }
    }

    /// Waits for a running compaction finish, if any (before anything else
    /// moves the floor or unlinks segments).
    fn join_finisher(&mut self) {
        if let Some(handle) = self.finishing.take() {
            match handle.join() {
                Ok(result) => self.finished(result),
                Err(_) => {
                    self.pending_free = 0;
                    tracing::error!("the compaction thread panicked; compaction will run again");
                }
            }
        }
    }

    fn finished(&mut self, result: Result<(u64, SegmentId)>) {
        self.pending_free = 0;
        match result {
            Ok((freed, cutoff)) => {
                self.state.forget_segments_below(cutoff.0 as u32);
                self.log_bytes = self.log_bytes.saturating_sub(freed);
                self.compactions += 1;
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

    fn finish(&mut self) -> Result<()> {
        self.join_finisher();
        if self.unavailable.is_some() {
            return Err(Error::WriteFailed("the log was unavailable at shutdown; see earlier errors".into()));
        }
        self.active.sync().map_err(Error::io("syncing", &self.active.path))
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

fn ops_in(m: &Msg) -> usize {
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
