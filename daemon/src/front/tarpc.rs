//! The tarpc front end: each connection gets a `Session` that checks the
//! auth token and the request's size, turns the request into storage
//! `Command`s (the conversions are `convert`, the one place where wire types
//! meet the engine's), sends them to the engine and maps the replies back.
//!
//! The connection loop is the RESP front end's: read what the client sent,
//! take every complete frame (up to `--max-in-flight` requests), run them
//! together, and write all of their responses in one write. It speaks
//! tarpc's wire format (`ClientMessage` in, `Response` out, MessagePack in
//! 4-byte length-prefixed frames) without tarpc's server channel, whose
//! per-request response queue, deadline wheel and wakers cost more CPU than
//! the rest of a request (see benches/RESULTS.md, "seventh session"). As
//! tarpc's server does, a request already past its deadline gets no
//! response (its client has given up), and a cancellation needs no action:
//! every request finishes within the round that read it.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Poll;
use std::time::Instant;

use bytes::BytesMut;
use cachet::protocol::{
    BACKUP_CHUNK, BackupPlan, Bytes, CacheService, CacheServiceRequest, Incoming, MAX_KEYS_PER_REQUEST, Op, OpReply,
    Outbox, ServerInfo, Ttl, WireError, WireStats, decode_frame, next_frame,
};
use cachet_storage::{Command, Error as StoreError, Reply, ReplyBudget};
use tarpc::context::Context;
use tarpc::server::Serve;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::listen::{Limits, Protocol};
use crate::metrics::{OpId, TARPC_OPS};
use crate::shared::{BACKUP_IDLE, Shared};

/// The id of a tarpc operation by its label.
fn op_named(name: &str) -> OpId {
    OpId(TARPC_OPS.iter().position(|n| *n == name).expect("a listed operation"))
}

mod convert;
mod guard;
use convert::{command, op_reply, unexpected};
use guard::Guard;

/// Unwritten response bytes, beyond the values the reply budget counts,
/// at which a connection stops reading requests until they are written.
const READ_PAUSE: usize = 256 << 10;

/// Adds a request's operations, as the metrics count them, to `ops`: one
/// per key operation of a batch (none for a batch over the limit, which is
/// refused), one for each other call but the backup's.
fn ops_of(request: &CacheServiceRequest, ops: &mut Vec<OpId>) {
    match request {
        CacheServiceRequest::Batch { ops: batch } if batch.len() <= MAX_KEYS_PER_REQUEST => {
            ops.extend(batch.iter().map(convert::op_id));
        }
        CacheServiceRequest::Batch { .. } => {}
        CacheServiceRequest::Hello { .. } => ops.push(op_named("hello")),
        CacheServiceRequest::GetMany { .. } => ops.push(op_named("get_many")),
        CacheServiceRequest::SetMany { .. } => ops.push(op_named("set_many")),
        CacheServiceRequest::DeleteMany { .. } => ops.push(op_named("delete_many")),
        CacheServiceRequest::Clear {} => ops.push(op_named("clear")),
        CacheServiceRequest::Stats {} => ops.push(op_named("stats")),
        CacheServiceRequest::BackupBegin {}
        | CacheServiceRequest::BackupRead { .. }
        | CacheServiceRequest::BackupEnd { .. } => {}
    }
}

/// Serves one tarpc connection until it closes or breaks the protocol.
pub async fn serve<IO>(io: IO, shared: Arc<Shared>, limits: &Limits)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let budget = Arc::new(ReplyBudget::new(limits.reply_bytes_per_connection, limits.reply_bytes.clone()));
    let session = Session::new(shared.clone(), budget.clone());
    let io = Guard::new(io, limits, session.authed(), budget);
    shared.connections.fetch_add(1, Ordering::Relaxed);
    if let Err(e) = run(io, &session, limits).await {
        tracing::debug!("tarpc connection closed: {e}");
    }
    shared.connections.fetch_sub(1, Ordering::Relaxed);
}

async fn run<IO>(mut io: Guard<IO>, session: &Session, limits: &Limits) -> std::io::Result<()>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut input = BytesMut::with_capacity(16 << 10);
    let mut out = Outbox::default();
    // The context handlers get: this, with each request's deadline and trace.
    let base = tarpc::context::current();
    // Reused from round to round.
    let (mut requests, mut responses, mut ops) = (Vec::new(), Vec::new(), Vec::new());
    let serve = |r: tarpc::Request<CacheServiceRequest>| async move {
        let message = session.clone().serve().serve(r.context, r.message).await;
        tarpc::Response { request_id: r.id, message }
    };
    loop {
        // One clock reading per round: deadlines count from it, and the
        // round's operations are timed from it (as over RESP).
        let now = Instant::now();
        while requests.len() < limits.max_in_flight.max(1) {
            let Some(frame) = next_frame(&mut input, limits.max_frame)? else { break };
            match decode_frame::<Incoming<CacheServiceRequest>>(&frame)?.into_request(now, base)? {
                Some(r) if r.context.deadline > now => requests.push(r),
                // Past its deadline, or a cancellation: nothing to do.
                _ => {}
            }
        }
        if !requests.is_empty() {
            ops.clear();
            for r in &requests {
                ops_of(&r.message, &mut ops);
            }
            // A lone request (a client that waits for each answer) is served
            // as it is: `join_all` would allocate its futures and results.
            if requests.len() == 1 {
                let r = requests.pop().expect("one request");
                responses.push(serve(r).await);
            } else {
                responses.extend(futures::future::join_all(requests.drain(..).map(serve)).await);
            }
            session.shared.metrics.served(Protocol::Tarpc, ops.iter().copied(), now.elapsed());
            for response in responses.drain(..) {
                out.frame(&response, usize::MAX)?;
            }
            // What the socket takes now goes now; the rest goes while the
            // next requests are read.
            if let Some(r) = futures::FutureExt::now_or_never(std::future::poll_fn(|cx| out.poll_send(&mut io, cx))) {
                r?;
            }
            continue;
        }
        // Nothing whole to run: read on while writing what is pending. The
        // values the engine returned are bounded by the reply budget (the
        // engine refuses what is over it); beyond those, reading pauses
        // while more than `READ_PAUSE` is unwritten, so a client that
        // pipelines requests with small replies (`Done`) and never reads
        // is held there. A client that reads keeps its replies in the
        // kernel's socket buffers, far below this.
        let read = out.pending() < READ_PAUSE + session.budget.outstanding();
        if input.capacity() - input.len() < 4096 {
            input.reserve(16 << 10);
        }
        let got = std::future::poll_fn(|cx| {
            if out.pending() > 0
                && let Poll::Ready(r) = out.poll_send(&mut io, cx)
            {
                r?;
            }
            if read {
                return tokio_util::io::poll_read_buf(Pin::new(&mut io), cx, &mut input).map_ok(Some);
            }
            // Written out: read again.
            if out.pending() == 0 { Poll::Ready(Ok(None)) } else { Poll::Pending }
        })
        .await?;
        if got == Some(0) {
            // The client is done sending: answer what it sent, then close.
            std::future::poll_fn(|cx| out.poll_send(&mut io, cx)).await?;
            return Ok(());
        }
    }
}

#[derive(Clone)]
pub struct Session {
    shared: Arc<Shared>,
    authed: Arc<AtomicBool>,
    /// The connection's unread replies (credited as they are written).
    budget: Arc<ReplyBudget>,
}

impl Session {
    pub fn new(shared: Arc<Shared>, budget: Arc<ReplyBudget>) -> Session {
        let open = shared.token().is_none();
        Session { shared, authed: Arc::new(AtomicBool::new(open)), budget }
    }

    /// Whether the connection has authenticated (true when no token is set).
    pub fn authed(&self) -> Arc<AtomicBool> {
        self.authed.clone()
    }

    /// Refuses a request naming more keys (or operations) than one request
    /// may, before anything is queued.
    fn check_count(&self, what: &str, n: usize) -> Result<(), WireError> {
        if n > MAX_KEYS_PER_REQUEST {
            let msg = format!(
                "a {what} of {n} is over the limit of {MAX_KEYS_PER_REQUEST} per request; split it into smaller requests"
            );
            self.shared.note("too_many_keys", &msg);
            return Err(WireError::Server(msg));
        }
        Ok(())
    }

    /// Lets an authenticated request through to the engine, counted as in
    /// flight until it finishes or is cancelled (shutdown waits for zero).
    async fn admit<T>(&self, work: impl std::future::Future<Output = T>) -> Result<T, WireError> {
        if !self.authed.load(Ordering::Acquire) {
            self.shared.note("unauthorized", "a client sent a request without a valid auth token");
            return Err(WireError::Unauthorized);
        }
        struct InFlight<'a>(&'a AtomicU64);
        impl Drop for InFlight<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        self.shared.in_flight.fetch_add(1, Ordering::AcqRel);
        let _counted = InFlight(&self.shared.in_flight);
        Ok(work.await)
    }

    async fn run(&self, cmd: Command) -> Result<Reply, WireError> {
        let budget = Some(self.budget.clone());
        self.admit(self.shared.engine.call_with(cmd, budget)).await?.map_err(|e| self.wire_error(e))
    }

    async fn run_many(&self, cmds: Vec<Command>) -> Result<Vec<Result<Reply, WireError>>, WireError> {
        let budget = Some(self.budget.clone());
        let replies =
            self.admit(self.shared.engine.call_many_with(cmds, budget)).await?.map_err(|e| self.wire_error(e))?;
        Ok(replies.into_iter().map(|r| r.map_err(|e| self.wire_error(e))).collect())
    }

    /// The wire's form of an engine error; refusals are logged (rate-limited).
    fn wire_error(&self, e: StoreError) -> WireError {
        let (wire, refusal) = convert::wire_error(e);
        if let Some((class, msg)) = refusal {
            self.shared.note(class, &msg);
        }
        wire
    }
}

impl CacheService for Session {
    async fn hello(self, _: Context, token: Option<String>) -> Result<ServerInfo, WireError> {
        if let Some(want) = self.shared.token() {
            // Constant time: the comparison must not tell how much matched.
            let offered = token.as_deref().unwrap_or("").as_bytes();
            if !bool::from(subtle::ConstantTimeEq::ct_eq(offered, want.as_bytes())) {
                self.shared.note("unauthorized", "a client offered a wrong or no auth token");
                return Err(WireError::Unauthorized);
            }
            self.authed.store(true, Ordering::Release);
        }
        Ok(ServerInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            max_key_bytes: self.shared.max_key_bytes as u64,
            max_value_bytes: self.shared.max_value_bytes as u64,
        })
    }

    async fn get_many(self, _: Context, keys: Vec<Bytes>) -> Result<Vec<Option<Bytes>>, WireError> {
        self.check_count("get_many", keys.len())?;
        convert::values(self.run(convert::get_many(keys)).await?)
    }

    async fn set_many(self, _: Context, items: Vec<(Bytes, Bytes)>, ttl: Ttl) -> Result<Vec<u32>, WireError> {
        self.check_count("set_many", items.len())?;
        convert::failed(self.run(convert::set_many(items, ttl)).await?)
    }

    async fn delete_many(self, _: Context, keys: Vec<Bytes>) -> Result<(), WireError> {
        self.check_count("delete_many", keys.len())?;
        convert::done(self.run(convert::delete_many(keys)).await?)
    }

    async fn clear(self, _: Context) -> Result<(), WireError> {
        convert::done(self.run(Command::Clear).await?)
    }

    async fn batch(self, _: Context, ops: Vec<Op>) -> Result<Vec<Result<OpReply, WireError>>, WireError> {
        self.check_count("batch", ops.len())?;
        let replies = self.run_many(ops.into_iter().map(command).collect()).await?;
        Ok(replies.into_iter().map(|r| r.and_then(op_reply)).collect())
    }

    async fn backup_begin(self, _: Context) -> Result<BackupPlan, WireError> {
        let snapshot = self.admit(self.shared.engine.snapshot()).await?.map_err(|e| self.wire_error(e))?;
        let files: Vec<(String, u64)> = snapshot.files.iter().map(|f| (f.name.clone(), f.len)).collect();
        let bytes = snapshot.bytes();
        let id = self.shared.backups.begin(snapshot);
        tracing::info!(id, files = files.len(), bytes, "backup {id} started: a snapshot of {bytes} bytes of log");
        Ok(BackupPlan { id, files })
    }

    async fn backup_read(self, _: Context, id: u64, file: String, offset: u64, len: u32) -> Result<Bytes, WireError> {
        let snapshot = self.admit(async { self.shared.backups.get(id) }).await?.ok_or_else(|| {
            WireError::Server(format!(
                "no backup {id}: it ended, or went unread for over {} s; start it again",
                BACKUP_IDLE.as_secs()
            ))
        })?;
        let len = len.min(BACKUP_CHUNK) as usize;
        let read = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len];
            snapshot.read_at(&file, offset, &mut buf).map(|n| {
                buf.truncate(n);
                Bytes::from(buf)
            })
        });
        match read.await {
            Ok(r) => r.map_err(|e| self.wire_error(e)),
            Err(e) => Err(WireError::Server(format!("reading the backup failed: {e}"))),
        }
    }

    async fn backup_end(self, _: Context, id: u64) -> Result<(), WireError> {
        if self.admit(async { self.shared.backups.end(id) }).await? {
            tracing::info!(id, "backup {id} finished; its snapshot is released");
        }
        Ok(())
    }

    async fn stats(self, _: Context) -> Result<WireStats, WireError> {
        match self.run(Command::Stats).await? {
            Reply::Stats(s) => Ok(convert::stats(
                *s,
                self.shared.started.elapsed().as_secs(),
                self.shared.connections.load(Ordering::Relaxed),
            )),
            r => Err(unexpected(r)),
        }
    }
}
