//! Where commands run. The writer (the index, the timers, the log) sits
//! behind one lock, and two kinds of threads take it:
//!
//! - the caller's own thread, for a request under `everysec` or `never`:
//!   it applies its commands, writes their records with one `write()`,
//!   and does the bounded work between batches (expiry, a compaction slice
//!   of about a millisecond, the once-a-second sync when due, a segment
//!   roll), then returns the replies. No hand-off to another thread and
//!   back: that hop, two context switches per request, was most of what a
//!   small request cost (Redis, Garnet and Pelikan run a command on the
//!   thread that read it for the same reason);
//! - the engine thread, which takes requests that write from the channel
//!   under `always` (many callers' writes share one fsync: group commit;
//!   reads still run on the caller's thread), and
//!   otherwise only wakes for timers: expiries, the once-a-second sync of
//!   writes made since, compaction slices while no request comes.
//!
//! One thread at a time holds the writer, and records are appended in the
//! order commands are applied: the single-writer rule holds whoever the
//! writer is. A caller whose turn leaves timer work earlier than the engine
//! thread planned to wake (a first unsynced write, a sooner expiry, a
//! compaction to run) pokes it through the channel.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use tokio::sync::oneshot;

use super::handle::Msg;
use super::writer::{Writer, ops_in};
use crate::error::{Error, Result};

/// The writer and what the threads that take it share.
pub(super) struct Core {
    /// `None` once the engine has shut down.
    writer: Mutex<Option<Writer>>,
    /// Whether callers apply their own commands (everything but `always`).
    pub(super) inline: bool,
    /// When the engine thread means to wake next, in µs since `epoch`
    /// (`u64::MAX`: only for a request).
    wakes_at: AtomicU64,
    epoch: Instant,
    tx: Sender<Msg>,
}

impl Core {
    pub(super) fn new(writer: Writer, inline: bool, tx: Sender<Msg>) -> Core {
        Core { writer: Mutex::new(Some(writer)), inline, wakes_at: AtomicU64::new(0), epoch: Instant::now(), tx }
    }

    /// The writer, or `Closed` once it shut down or a panic (a bug) left
    /// it half-way through a batch.
    fn lock(&self) -> Result<MutexGuard<'_, Option<Writer>>> {
        self.writer.lock().map_err(|_| Error::Closed)
    }

    /// Whether these commands run on the caller's thread: always under
    /// `everysec` and `never`; under `always` when none writes (a read
    /// waits for the writer, whose turn holds it through its fsync, so it
    /// never sees a write that is not yet durable).
    pub(super) fn runs_here(&self, cmds: &[crate::state::Command]) -> bool {
        self.inline || cmds.iter().all(|c| !c.is_write())
    }

    fn micros(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_micros()).unwrap_or(u64::MAX)
    }

    /// Runs `msg` on this thread; its reply is in the channel inside `msg`
    /// when this returns.
    pub(super) fn turn_inline(&self, msg: Msg) -> Result<()> {
        let mut guard = self.lock()?;
        let w = guard.as_mut().ok_or(Error::Closed)?;
        let mut msgs = vec![msg];
        let mut pending = Vec::with_capacity(1);
        let shutdown = w.turn(&mut msgs, &mut pending, true);
        debug_assert!(shutdown.is_none(), "shutdown comes through the channel");
        let wake = if w.needs_background() { Some(std::time::Duration::ZERO) } else { w.wait_time() };
        drop(guard);
        if let Some(wait) = wake {
            self.poke_before(Instant::now() + wait);
        }
        Ok(())
    }

    /// Wakes the engine thread if it means to sleep past `at`.
    fn poke_before(&self, at: Instant) {
        let at = self.micros(at);
        let planned = self.wakes_at.load(Ordering::Acquire);
        if at < planned && self.wakes_at.compare_exchange(planned, at, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            match self.tx.try_send(Msg::Wake) {
                // A full queue wakes it anyway.
                Ok(()) | Err(TrySendError::Full(_)) => {}
                Err(TrySendError::Disconnected(_)) => {}
            }
        }
    }

    /// The engine thread: requests from the channel (all of them under
    /// `always`; snapshots, shutdown and pokes otherwise) and timer work.
    pub(super) fn run(&self, rx: Receiver<Msg>) {
        let mut msgs = Vec::new();
        let mut pending = Vec::new();
        loop {
            // The planned wake-up is published under the lock, so a caller
            // that turns after it sees it (and pokes if it needs sooner).
            let wait = {
                let Ok(guard) = self.lock() else { return };
                let Some(w) = guard.as_ref() else { return };
                let wait = w.wait_time();
                let planned = wait.map_or(u64::MAX, |t| self.micros(Instant::now() + t));
                self.wakes_at.store(planned, Ordering::Release);
                wait
            };
            let first = match wait {
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(t) => rx.recv_timeout(t),
            };
            // Awake: it re-reads the state before it sleeps again.
            self.wakes_at.store(0, Ordering::Release);
            let disconnected = match first {
                Ok(m) => {
                    msgs.push(m);
                    false
                }
                Err(RecvTimeoutError::Timeout) => false,
                Err(RecvTimeoutError::Disconnected) => true,
            };
            // The once-a-second sync runs off the lock: callers go on
            // applying (past the bytes it covers) while the disk works.
            let job = match self.lock() {
                Ok(g) => g.as_ref().and_then(Writer::sync_job),
                Err(_) => return,
            };
            if let Some((job, started)) = job {
                let result = job.run();
                let Ok(mut guard) = self.lock() else { return };
                let Some(w) = guard.as_mut() else { return };
                w.synced(&job, started, result);
            }
            let Ok(mut guard) = self.lock() else { return };
            let Some(w) = guard.as_mut() else { return };
            if disconnected {
                let _ = w.finish();
                *guard = None;
                return;
            }
            let mut ops = msgs.iter().map(ops_in).sum::<usize>();
            while ops < w.max_batch {
                match rx.try_recv() {
                    Ok(m) => {
                        ops += ops_in(&m);
                        msgs.push(m);
                    }
                    Err(_) => break,
                }
            }
            msgs.retain(|m| !matches!(m, Msg::Wake));
            if let Some(reply) = w.turn(&mut msgs, &mut pending, false) {
                let _ = reply.send(w.finish());
                *guard = None;
                return;
            }
        }
    }
}

/// A reply slot for a request run inline: filled before `turn_inline`
/// returns, so reading it never waits.
pub(super) fn take<T>(mut rx: oneshot::Receiver<T>) -> Result<T> {
    rx.try_recv().map_err(|_| Error::Closed)
}
