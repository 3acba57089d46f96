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
//! Callers that arrive together share a turn: the first to find no turn
//! gathering becomes its leader, yields once to the scheduler (so the other
//! connections it has ready run up to their own call and queue their
//! commands), then applies everything queued as one batch with one
//! `write()`, as Redis appends everything one event-loop pass produced
//! with one write before its replies go out. A caller alone (eight turns
//! in a row found no company) runs its turn at once instead, as one
//! connection's requests did before gathering; one such turn in sixteen
//! still yields, to notice company when it comes.
//!
//! One thread at a time holds the writer, and records are appended in the
//! order commands are applied: the single-writer rule holds whoever the
//! writer is. A caller whose turn leaves timer work earlier than the engine
//! thread planned to wake (a first unsynced write, a sooner expiry, a
//! compaction to run) pokes it through the channel.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use tokio::sync::oneshot;

use super::handle::Msg;
use super::writer::{Writer, ops_in};
use crate::error::{Error, Result};

/// Gathered turns in a row that a leader must run alone before the next
/// leaders stop yielding for company.
const ALONE_RUNS_AT_ONCE: u32 = 8;
/// While leaders run at once, one turn in this many still gathers.
const PROBE_ALONE: u32 = 16;

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
    /// A receiver of the engine thread's queue, to empty it once that
    /// thread has stopped: a bounded channel keeps what is queued until
    /// every sender is gone, and a caller would wait for its reply forever.
    queue: Receiver<Msg>,
    /// The engine thread has stopped (or is stopping): nothing more is
    /// taken from the queue.
    closed: AtomicBool,
    /// Callers' messages waiting for the turn a leader gathers.
    gathering: Mutex<Gathering>,
    /// Gathered turns in a row that ran their leader's messages alone.
    alone: AtomicU32,
    /// Turns run on callers' threads, for tests.
    #[cfg(test)]
    inline_turns: AtomicU64,
}

#[derive(Default)]
struct Gathering {
    msgs: Vec<Msg>,
    /// A caller is gathering a turn (and will run what is queued).
    led: bool,
}

/// The leader of a gathered turn: runs what was queued when it ends, even
/// if the caller's future is dropped while it yields (the others' replies
/// come from this turn); and the work between batches with it if
/// `maintain`.
struct Lead<'a> {
    core: &'a Core,
    maintain: bool,
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        let core = self.core;
        let msgs = {
            let mut g = core.gathering.lock().unwrap_or_else(|e| e.into_inner());
            g.led = false;
            std::mem::take(&mut g.msgs)
        };
        let streak = if msgs.len() == 1 { core.alone.load(Ordering::Relaxed).saturating_add(1) } else { 0 };
        core.alone.store(streak, Ordering::Relaxed);
        // An error (the engine closed) drops the messages, and with them
        // their reply channels: every caller sees `Closed`. Without
        // `maintain`, the work between batches waits for the leader's next
        // step (see `turn_gathered`).
        let _ = core.turn_inline_many(msgs, self.maintain);
    }
}

impl Core {
    pub(super) fn new(writer: Writer, inline: bool, tx: Sender<Msg>, queue: Receiver<Msg>) -> Core {
        Core {
            writer: Mutex::new(Some(writer)),
            inline,
            wakes_at: AtomicU64::new(0),
            epoch: Instant::now(),
            tx,
            queue,
            closed: AtomicBool::new(false),
            gathering: Mutex::new(Gathering::default()),
            alone: AtomicU32::new(0),
            #[cfg(test)]
            inline_turns: AtomicU64::new(0),
        }
    }

    /// Whether the engine thread has stopped taking requests.
    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Drops every queued request, so its caller sees `Closed`: once the
    /// engine thread stops, and by a caller that queued one and then found
    /// it stopped (whichever of the two looks last sees the other's write).
    pub(super) fn discard_queued(&self) {
        self.queue.try_iter().for_each(drop);
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
        self.turn_inline_many(vec![msg], true)
    }

    /// Runs `msg` in a turn it shares with the callers that arrive while
    /// it yields once (see the module's docs): as its leader, or queued
    /// for the leader of the turn already gathering. Its reply is in the
    /// channel inside `msg` once the turn ran, which may be after this
    /// returns.
    pub(super) async fn turn_gathered(&self, msg: Msg) {
        {
            let mut g = self.gathering.lock().unwrap_or_else(|e| e.into_inner());
            g.msgs.push(msg);
            if g.led {
                return;
            }
            g.led = true;
        }
        // Leaders that have found no company for a while (one connection,
        // or a few that take turns) run at once, with the work between
        // batches in the same turn: yielding would only add two trips
        // through the scheduler to each request. One turn in
        // `PROBE_ALONE` still yields, to notice when company comes.
        let streak = self.alone.load(Ordering::Relaxed);
        let gather = streak < ALONE_RUNS_AT_ONCE || streak.is_multiple_of(PROBE_ALONE);
        let lead = Lead { core: self, maintain: !gather };
        if !gather {
            drop(lead);
            return;
        }
        tokio::task::yield_now().await;
        drop(lead);
        // The turn's replies are sent: let their callers write them out
        // before the work between batches (expiry, reclaim, a compaction
        // slice), which one turn for many connections makes larger. Inside
        // the turn, SET's p99 at 50 x 16 was 3.2-4.6 ms (2.6-3.1 ms with a
        // turn per connection); after the replies, 2.6-3.0 ms. If this
        // future is dropped here, the next turn does the work.
        tokio::task::yield_now().await;
        let _ = self.between_batches();
    }

    /// Runs `msgs` on this thread as one batch, and the work between
    /// batches after it if `maintain`.
    fn turn_inline_many(&self, mut msgs: Vec<Msg>, maintain: bool) -> Result<()> {
        if msgs.is_empty() {
            return Ok(());
        }
        let mut guard = self.lock()?;
        let w = guard.as_mut().ok_or(Error::Closed)?;
        #[cfg(test)]
        self.inline_turns.fetch_add(1, Ordering::Relaxed);
        let mut pending = Vec::with_capacity(msgs.len());
        let shutdown = w.batch_turn(&mut msgs, &mut pending);
        debug_assert!(shutdown.is_none(), "shutdown comes through the channel");
        if maintain {
            w.between_batches(true);
        }
        self.plan_wake(guard);
        Ok(())
    }

    /// The work between batches, on this thread.
    fn between_batches(&self) -> Result<()> {
        let mut guard = self.lock()?;
        guard.as_mut().ok_or(Error::Closed)?.between_batches(true);
        self.plan_wake(guard);
        Ok(())
    }

    /// After a caller's step: pokes the engine thread if the writer has
    /// work for it sooner than it planned to wake.
    fn plan_wake(&self, guard: MutexGuard<'_, Option<Writer>>) {
        let Some(w) = guard.as_ref() else { return };
        let wake = if w.needs_background() { Some(std::time::Duration::ZERO) } else { w.wait_time() };
        drop(guard);
        if let Some(wait) = wake {
            self.poke_before(Instant::now() + wait);
        }
    }

    /// Wakes the engine thread if it means to sleep past `at`.
    fn poke_before(&self, at: Instant) {
        if self.is_closed() {
            return;
        }
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
        // However the thread stops (shutdown, a poisoned lock, a panic),
        // what is still queued is answered `Closed`.
        struct Stopping<'a>(&'a Core);
        impl Drop for Stopping<'_> {
            fn drop(&mut self) {
                self.0.closed.store(true, Ordering::SeqCst);
                self.0.discard_queued();
            }
        }
        let _stopping = Stopping(self);
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

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    use super::*;
    use crate::engine::{Config, Engine};
    use crate::state::Reply;
    use crate::{Command, Ttl};

    fn set(key: &str) -> Vec<Command> {
        vec![Command::Set { key: key.into(), value: b"v".to_vec(), ttl: Ttl::Never }]
    }

    /// Callers whose batches arrive together run in one turn: twenty tasks
    /// on one thread, each sending a batch, take one or two turns, not
    /// twenty, and every write is there.
    #[test]
    fn callers_that_arrive_together_share_a_turn() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(Config::new(dir.path())).unwrap();
        let h = engine.handle();
        let before = h.core.inline_turns.load(Ordering::Relaxed);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let tasks: Vec<_> = (0..20)
                .map(|i| {
                    let h = h.clone();
                    tokio::task::spawn(async move { h.call_many(set(&format!("k{i}"))).await })
                })
                .collect();
            for t in tasks {
                let replies = t.await.unwrap().unwrap();
                assert!(matches!(replies[..], [Ok(Reply::Done)]), "{replies:?}");
            }
        });
        let turns = h.core.inline_turns.load(Ordering::Relaxed) - before;
        assert!((1..=2).contains(&turns), "{turns} turns for 20 batches");
        for i in 0..20 {
            let got = h.call_blocking(Command::Get { key: format!("k{i}").into() }).unwrap();
            assert_eq!(got, Reply::Value(Some(b"v".to_vec())));
        }
        drop(h);
        engine.shutdown().unwrap();
    }

    /// A caller that has led turns alone for a while runs its next one at
    /// once, without yielding; one turn in `PROBE_ALONE` still yields, and
    /// when company comes then, leaders gather again.
    #[test]
    fn a_caller_alone_runs_at_once_until_company_comes() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(Config::new(dir.path())).unwrap();
        let h = engine.handle();
        let first_poll_ready = |key: &str| {
            let mut call = Box::pin(h.call_many(set(key)));
            let ready = call.as_mut().poll(&mut Context::from_waker(Waker::noop())).is_ready();
            (ready, call)
        };
        for i in 0..ALONE_RUNS_AT_ONCE {
            let (ready, call) = first_poll_ready(&format!("alone{i}"));
            assert!(!ready, "turn {i} yields for company");
            block_on(call).unwrap();
        }
        let (ready, _) = first_poll_ready("at-once");
        assert!(ready, "after {ALONE_RUNS_AT_ONCE} turns alone, the next runs at once");
        let mut probe = None;
        for i in 0..PROBE_ALONE {
            let (ready, call) = first_poll_ready(&format!("at-once{i}"));
            if !ready {
                probe = Some(call);
                break;
            }
        }
        let mut probe = probe.expect("one turn in PROBE_ALONE yields");
        let mut follower = Box::pin(h.call_many(set("company")));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(follower.as_mut().poll(&mut cx).is_pending(), "it joins the probing turn");
        block_on(probe.as_mut()).unwrap();
        block_on(follower).unwrap();
        drop(probe);
        let (ready, call) = first_poll_ready("gathering-again");
        assert!(!ready, "after a turn with company, leaders yield again");
        block_on(call).unwrap();
        drop(h);
        engine.shutdown().unwrap();
    }

    /// Requests queued for the engine thread when it stops for good (here:
    /// the writer's lock poisoned by a panic while the thread waited for
    /// it) are answered `Closed`, not left waiting forever in the queue.
    #[test]
    fn requests_queued_when_the_engine_thread_stops_are_answered_closed() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(Config::new(dir.path())).unwrap();
        let h = engine.handle();
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let core = h.core.clone();
        let poisoner = std::thread::spawn(move || {
            let _guard = core.writer.lock().unwrap();
            locked_tx.send(()).unwrap();
            go_rx.recv().unwrap();
            panic!("a bug while holding the writer (this test's own)");
        });
        locked_rx.recv().unwrap();
        // The engine thread waits for the lock, before or after taking the
        // first request; it takes no more without the lock.
        let queued: Vec<_> = (0..4).map(|_| h.submit(Command::Get { key: b"k".to_vec() }).unwrap()).collect();
        go_tx.send(()).unwrap();
        assert!(poisoner.join().is_err(), "the helper panicked, poisoning the lock");
        for mut rx in queued {
            wait_for(
                || !matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty)),
                "every request is answered",
            );
        }
        // A request sent now fails at once.
        assert!(matches!(h.submit(Command::Get { key: b"k".to_vec() }), Err(Error::Closed)));
        drop(h);
        assert!(engine.shutdown().is_err(), "shutdown returns, with an error");
    }

    /// Waits until `done()` holds, or panics after ten seconds.
    fn wait_for(mut done: impl FnMut() -> bool, what: &str) {
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting: {what}");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Polls `f` to completion with a no-op waker (the engine's calls
    /// need no runtime: a yield is ready when polled again).
    fn block_on<F: Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            if let Poll::Ready(out) = f.as_mut().poll(&mut cx) {
                return out;
            }
        }
    }

    /// The leader's future dropped while it yields (its caller gave up)
    /// still runs the turn it gathered: the others' replies come from it.
    #[test]
    fn a_dropped_leader_still_runs_the_turn() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(Config::new(dir.path())).unwrap();
        let h = engine.handle();
        let mut cx = Context::from_waker(Waker::noop());
        let mut leader = Box::pin(h.call_many(set("led")));
        let mut follower = Box::pin(h.call_many(set("followed")));
        assert!(leader.as_mut().poll(&mut cx).is_pending(), "the leader yields");
        assert!(follower.as_mut().poll(&mut cx).is_pending(), "the follower waits for the leader's turn");
        drop(leader);
        match follower.as_mut().poll(&mut cx) {
            Poll::Ready(Ok(replies)) => assert!(matches!(replies[..], [Ok(Reply::Done)])),
            other => panic!("the follower's turn ran: {other:?}"),
        }
        for key in ["led", "followed"] {
            let got = h.call_blocking(Command::Get { key: key.into() }).unwrap();
            assert_eq!(got, Reply::Value(Some(b"v".to_vec())), "{key}");
        }
        drop(follower);
        drop(h);
        engine.shutdown().unwrap();
    }
}
