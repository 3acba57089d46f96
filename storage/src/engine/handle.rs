//! The handle through which callers send commands to the writer.

use std::sync::Arc;

use crossbeam_channel::{Sender, TrySendError};
use tokio::sync::oneshot;

use super::core::{Core, take};
use crate::budget::ReplyBudget;
use crate::error::{Error, Result};
use crate::state::{Command, Reply};

pub(super) enum Msg {
    One(Command, Option<Arc<ReplyBudget>>, oneshot::Sender<Result<Reply>>),
    Many(Vec<Command>, Option<Arc<ReplyBudget>>, oneshot::Sender<Vec<Result<Reply>>>),
    Shutdown(oneshot::Sender<Result<()>>),
    /// Take a snapshot once the batch it arrives in is written.
    Snapshot(oneshot::Sender<Result<super::Snapshot>>),
    /// Nothing to do but re-plan: a caller left timer work for the engine
    /// thread sooner than it meant to wake.
    Wake,
}

/// A cheap, cloneable way to send commands to the engine: run on the
/// caller's thread under `everysec` and `never`, through the engine
/// thread under `always` (see `core`).
#[derive(Clone)]
pub struct Handle {
    pub(super) tx: Sender<Msg>,
    pub(super) core: Arc<Core>,
}

impl Handle {
    pub(super) fn send(&self, msg: Msg) -> Result<()> {
        if self.core.is_closed() {
            return Err(Error::Closed);
        }
        // The channel is bounded for backpressure. A full queue is rare (the
        // daemon bounds requests in flight), and blocking here is the
        // backpressure; the writer never waits on the caller, so it cannot
        // deadlock.
        match self.tx.try_send(msg) {
            Ok(()) => {}
            Err(TrySendError::Full(msg)) => self.tx.send(msg).map_err(|_| Error::Closed)?,
            Err(TrySendError::Disconnected(_)) => return Err(Error::Closed),
        }
        if self.core.is_closed() {
            // The engine thread stopped meanwhile and may have emptied the
            // queue before this request arrived: drop it (and any other),
            // so its caller sees `Closed` rather than wait forever.
            self.core.discard_queued();
        }
        Ok(())
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
        if self.core.runs_here(std::slice::from_ref(&cmd)) {
            self.core.turn_inline(Msg::One(cmd, budget, tx))?;
            return take(rx)?;
        }
        self.send(Msg::One(cmd, budget, tx))?;
        rx.await.unwrap_or(Err(Error::Closed))
    }

    pub fn call_blocking(&self, cmd: Command) -> Result<Reply> {
        let (tx, rx) = oneshot::channel();
        if self.core.runs_here(std::slice::from_ref(&cmd)) {
            self.core.turn_inline(Msg::One(cmd, None, tx))?;
            return take(rx)?;
        }
        self.send(Msg::One(cmd, None, tx))?;
        rx.blocking_recv().unwrap_or(Err(Error::Closed))
    }

    /// Several commands as one message: applied back to back in one batch.
    pub async fn call_many(&self, cmds: Vec<Command>) -> Result<Vec<Result<Reply>>> {
        self.call_many_with(cmds, None).await
    }

    /// `call_many` whose replies together count against `budget`. The
    /// commands share a turn with those of other callers that arrive while
    /// this one yields once (see `core`): for a connection that sends its
    /// next batch only once this one is answered (RESP's rounds), it is how
    /// many connections' writes go out in one `write()`. A single `call`
    /// runs at once instead: tarpc keeps a connection's requests in flight
    /// together and writes their replies together; gathering its single
    /// calls as well split those writes (7x the `writev`s under cachet-load
    /// set 50 x 16) and did not lower its CPU per operation.
    pub async fn call_many_with(
        &self,
        cmds: Vec<Command>,
        budget: Option<Arc<ReplyBudget>>,
    ) -> Result<Vec<Result<Reply>>> {
        let (tx, rx) = oneshot::channel();
        if self.core.runs_here(&cmds) {
            self.core.turn_gathered(Msg::Many(cmds, budget, tx)).await;
        } else {
            self.send(Msg::Many(cmds, budget, tx))?;
        }
        rx.await.map_err(|_| Error::Closed)
    }

    /// The log as of now, for a backup (see `Snapshot`): everything
    /// acknowledged before this call is in it.
    pub async fn snapshot(&self) -> Result<super::Snapshot> {
        let (tx, rx) = oneshot::channel();
        self.send(Msg::Snapshot(tx))?;
        rx.await.unwrap_or(Err(Error::Closed))
    }

    /// `snapshot`, waiting on this thread.
    pub fn snapshot_blocking(&self) -> Result<super::Snapshot> {
        let (tx, rx) = oneshot::channel();
        self.send(Msg::Snapshot(tx))?;
        rx.blocking_recv().unwrap_or(Err(Error::Closed))
    }

    pub fn call_many_blocking(&self, cmds: Vec<Command>) -> Result<Vec<Result<Reply>>> {
        let (tx, rx) = oneshot::channel();
        if self.core.runs_here(&cmds) {
            self.core.turn_inline(Msg::Many(cmds, None, tx))?;
            return take(rx);
        }
        self.send(Msg::Many(cmds, None, tx))?;
        rx.blocking_recv().map_err(|_| Error::Closed)
    }
}
