//! One connection per server, shared by all clones of a `Cache`: opened on
//! first use, dropped when it breaks, and reopened by the next call.
//!
//! Each connection has one task that owns its socket: it writes requests
//! and reads responses (tarpc's wire format, without tarpc's client
//! dispatch: one task, not three, between a caller and the socket).
//! Single-key operations are coalesced there: whatever is waiting when a
//! batch can leave (at most `BATCHES_IN_FLIGHT` are out at once) goes in
//! the next `batch` request, so a lone request is never delayed, and many
//! concurrent ones share the per-request cost. Other requests go through
//! the same task, through tarpc's generated client over [`Wire`].

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tarpc::client::RpcError;
use tarpc::context;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Mutex, mpsc, oneshot};
/// tokio's clock (the tests pause it), for the connection task's deadlines.
use tokio::time::Instant as Deadline;

use crate::error::Error;
use crate::protocol::{
    CLIENT_MAX_FRAME, CacheServiceClient, CacheServiceRequest, CacheServiceResponse, Op, OpReply, Outbox, ServerInfo,
    WireError, decode_frame, next_frame,
};

const BATCHES_IN_FLIGHT: usize = 2;
const MAX_BATCH: usize = 512;
/// Request bytes the connection's task holds unwritten before it stops
/// taking more.
const MAX_UNWRITTEN: usize = 16 << 20;

/// Why a batched call got no reply from the server.
enum Failed {
    /// The request surely never left (the connection was already closed).
    Unsent(String),
    Broken(String),
    Timeout,
}

type Slot = oneshot::Sender<Result<Result<OpReply, WireError>, Failed>>;

/// tarpc's generated client, over this connection's task.
pub(crate) type Client = CacheServiceClient<Wire>;

pub(crate) struct Conn {
    pub(crate) client: Client,
    pub(crate) info: ServerInfo,
    queue: mpsc::UnboundedSender<Job>,
}

/// What a connection's task is asked to send.
enum Job {
    /// A single-key operation, to go out in the next `batch`.
    Op(Op, Slot),
    /// A request of its own.
    Call(context::Context, CacheServiceRequest, Answer),
}

type Answer = oneshot::Sender<Result<CacheServiceResponse, RpcError>>;

/// A request sent and not answered yet.
enum Waiting {
    Batch(Vec<Slot>),
    Call(Answer),
}

/// The stub tarpc's generated client calls through: each call is a job for
/// the connection's task.
#[derive(Clone)]
pub(crate) struct Wire {
    queue: mpsc::UnboundedSender<Job>,
}

impl tarpc::client::stub::Stub for Wire {
    type Req = CacheServiceRequest;
    type Resp = CacheServiceResponse;

    async fn call(&self, ctx: context::Context, request: Self::Req) -> Result<Self::Resp, RpcError> {
        let (tx, rx) = oneshot::channel();
        self.queue.send(Job::Call(ctx, request, tx)).map_err(|_| RpcError::Shutdown)?;
        rx.await.unwrap_or_else(|_| Err(broken("the connection closed")))
    }
}

/// The error for a request that was sent and lost with its connection.
fn broken(why: &str) -> RpcError {
    let e: Arc<dyn std::error::Error + Send + Sync> = Arc::new(std::io::Error::other(why.to_string()));
    RpcError::Channel(tarpc::ChannelError::Read(e))
}

/// How to reach a server over TLS: the connector (CA, client
/// certificate) and the name its certificate must carry.
#[cfg(feature = "tls")]
pub(crate) struct TlsTo {
    pub(crate) connector: Arc<tokio_rustls::TlsConnector>,
    pub(crate) name: rustls::pki_types::ServerName<'static>,
}

/// Without the "tls" feature there is no way to ask for TLS.
#[cfg(not(feature = "tls"))]
pub(crate) enum TlsTo {}

pub(crate) struct Node {
    pub(crate) addr: String,
    tls: Option<TlsTo>,
    conn: Mutex<Option<Arc<Conn>>>,
    /// After a failed connect: no new attempt before this instant, and the
    /// next wait (exponential, with jitter), so a dead server costs callers
    /// nothing but a fast error.
    backoff: std::sync::Mutex<Option<Backoff>>,
}

/// After a failed connect: no new attempt before `until`; the next wait;
/// and why the last attempt failed (repeated to callers in the meantime).
struct Backoff {
    until: Instant,
    wait: Duration,
    reason: String,
}

const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Whether repeating a request after a broken connection is harmless.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    Safe,
    /// Not idempotent (incr, add, rename): retried only when the request
    /// surely never left.
    OnlyIfUnsent,
}

/// What woke a connection's task.
enum Event {
    Read(std::io::Result<usize>),
    /// Everything pending was written, or writing failed.
    Sent(std::io::Result<()>),
    Job(Option<Job>),
    Timer,
}

/// A connection's task: writes the jobs from `rx` to `io` and delivers the
/// responses, until every sender is gone and every request is answered, or
/// the connection breaks (then everything waiting fails, and jobs not yet
/// sent fail as unsent, so a retry is safe).
async fn drive<IO>(mut io: IO, mut rx: mpsc::UnboundedReceiver<Job>, timeout: Duration, template: context::Context)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut task = Task { waiting: BTreeMap::new(), next_id: 0, batches: 0, out: Outbox::default(), timeout, template };
    let mut input = BytesMut::with_capacity(16 << 10);
    let mut open = true;
    // Fires at the earliest deadline of what is waiting (re-armed as it
    // fires, not as requests come and go).
    let mut timer = Box::pin(tokio::time::sleep(timeout));
    let mut armed = false;
    let why = loop {
        if !open && task.waiting.is_empty() && task.out.pending() == 0 {
            return;
        }
        if input.capacity() - input.len() < 4096 {
            input.reserve(16 << 10);
        }
        // Jobs wait in the queue while two batches are out, or while a
        // server that is not reading leaves much unwritten.
        let can_take = open && task.batches < BATCHES_IN_FLIGHT && task.out.pending() < MAX_UNWRITTEN;
        let event = std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = tokio_util::io::poll_read_buf(Pin::new(&mut io), cx, &mut input) {
                return Poll::Ready(Event::Read(r));
            }
            if task.out.pending() > 0
                && let Poll::Ready(r) = task.out.poll_send(&mut io, cx)
            {
                return Poll::Ready(Event::Sent(r));
            }
            if can_take && let Poll::Ready(job) = rx.poll_recv(cx) {
                return Poll::Ready(Event::Job(job));
            }
            if armed && timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Timer);
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::Read(Ok(0)) => break "the server closed the connection".to_string(),
            Event::Read(Err(e)) => break format!("reading from the server: {e}"),
            Event::Read(Ok(_)) => {
                if let Err(e) = task.take_responses(&mut input) {
                    break e.to_string();
                }
            }
            Event::Sent(Err(e)) => break format!("writing to the server: {e}"),
            Event::Sent(Ok(())) => {}
            Event::Job(None) => open = false,
            Event::Job(Some(first)) => {
                task.send(first, &mut rx);
                if !armed && !task.waiting.is_empty() {
                    timer.as_mut().reset(Deadline::now() + timeout);
                    armed = true;
                }
            }
            Event::Timer => {
                armed = false;
                if let Some(next) = task.expire(Deadline::now()) {
                    timer.as_mut().reset(next);
                    armed = true;
                }
            }
        }
    };
    for (_, (_, waiting)) in std::mem::take(&mut task.waiting) {
        match waiting {
            Waiting::Batch(slots) => {
                for slot in slots {
                    let _ = slot.send(Err(Failed::Broken(why.clone())));
                }
            }
            Waiting::Call(answer) => {
                let _ = answer.send(Err(broken(&why)));
            }
        }
    }
    rx.close();
    while let Ok(job) = rx.try_recv() {
        match job {
            Job::Op(_, slot) => {
                let _ = slot.send(Err(Failed::Unsent(why.clone())));
            }
            Job::Call(_, _, answer) => {
                let _ = answer.send(Err(RpcError::Shutdown));
            }
        }
    }
}

/// A connection task's bookkeeping.
struct Task {
    /// By request id: its deadline, and who waits for it.
    waiting: BTreeMap<u64, (Deadline, Waiting)>,
    next_id: u64,
    /// `batch` requests waiting.
    batches: usize,
    /// Requests not written yet.
    out: Outbox,
    timeout: Duration,
    /// The context every request carries, but for its deadline.
    template: context::Context,
}

impl Task {
    /// Writes `first` and whatever else is queued to `out`: single-key
    /// operations as one `batch` of at most `MAX_BATCH`.
    fn send(&mut self, first: Job, rx: &mut mpsc::UnboundedReceiver<Job>) {
        // Sized for what is queued, so a batch does not grow step by step.
        let room = (rx.len() + 1).min(MAX_BATCH);
        let (mut ops, mut slots) = (Vec::with_capacity(room), Vec::with_capacity(room));
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Op(op, slot) => {
                    ops.push(op);
                    slots.push(slot);
                }
                Job::Call(ctx, request, answer) => {
                    self.frame(Deadline::from_std(ctx.deadline), request, Waiting::Call(answer))
                }
            }
            if ops.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !ops.is_empty() {
            let deadline = Deadline::now() + self.timeout;
            self.frame(deadline, CacheServiceRequest::Batch { ops }, Waiting::Batch(slots));
        }
    }

    /// Writes one request to `out`, or fails it as unsent when it cannot
    /// be encoded or is over the frame limit.
    fn frame(&mut self, deadline: Deadline, message: CacheServiceRequest, waiting: Waiting) {
        let id = self.next_id;
        self.next_id += 1;
        let mut context = self.template;
        context.deadline = deadline.into_std();
        let request = tarpc::ClientMessage::Request(tarpc::Request { context, id, message });
        let refused = self.out.frame(&request, CLIENT_MAX_FRAME).err().map(|e| e.to_string());
        match (refused, waiting) {
            (None, waiting) => {
                if let Waiting::Batch(_) = waiting {
                    self.batches += 1;
                }
                self.waiting.insert(id, (deadline, waiting));
            }
            (Some(why), Waiting::Batch(slots)) => {
                for slot in slots {
                    let _ = slot.send(Err(Failed::Unsent(why.clone())));
                }
            }
            (Some(why), Waiting::Call(answer)) => {
                let _ = answer.send(Err(RpcError::Send(why.into())));
            }
        }
    }

    /// Delivers every whole response in `input`.
    fn take_responses(&mut self, input: &mut BytesMut) -> std::io::Result<()> {
        while let Some(frame) = next_frame(input, CLIENT_MAX_FRAME)? {
            let response: tarpc::Response<CacheServiceResponse> = decode_frame(&frame)?;
            // A response to a request that timed out is dropped.
            if let Some((_, waiting)) = self.waiting.remove(&response.request_id) {
                self.deliver(waiting, response.message);
            }
        }
        Ok(())
    }

    fn deliver(&mut self, waiting: Waiting, message: Result<CacheServiceResponse, tarpc::ServerError>) {
        match waiting {
            Waiting::Call(answer) => {
                let _ = answer.send(message.map_err(RpcError::Server));
            }
            Waiting::Batch(slots) => {
                self.batches -= 1;
                match message {
                    Ok(CacheServiceResponse::Batch(Ok(replies))) if replies.len() == slots.len() => {
                        for (slot, reply) in slots.into_iter().zip(replies) {
                            let _ = slot.send(Ok(reply));
                        }
                    }
                    Ok(CacheServiceResponse::Batch(Err(e))) => {
                        for slot in slots {
                            let _ = slot.send(Ok(Err(e.clone())));
                        }
                    }
                    Ok(_) => {
                        for slot in slots {
                            let _ = slot.send(Ok(Err(WireError::Server("batch reply has the wrong shape".into()))));
                        }
                    }
                    Err(e) => {
                        for slot in slots {
                            let _ = slot.send(Err(Failed::Broken(RpcError::Server(e.clone()).to_string())));
                        }
                    }
                }
            }
        }
    }

    /// Fails what is past its deadline; returns the next deadline.
    fn expire(&mut self, now: Deadline) -> Option<Deadline> {
        let due: Vec<u64> = self.waiting.iter().filter(|(_, (at, _))| *at <= now).map(|(id, _)| *id).collect();
        for id in due {
            match self.waiting.remove(&id).map(|(_, w)| w) {
                Some(Waiting::Batch(slots)) => {
                    self.batches -= 1;
                    for slot in slots {
                        let _ = slot.send(Err(Failed::Timeout));
                    }
                }
                Some(Waiting::Call(answer)) => {
                    let _ = answer.send(Err(RpcError::DeadlineExceeded));
                }
                None => {}
            }
        }
        self.waiting.values().map(|(at, _)| *at).min()
    }
}

impl Node {
    pub(crate) fn new(addr: String, tls: Option<TlsTo>) -> Node {
        Node { addr, tls, conn: Mutex::new(None), backoff: std::sync::Mutex::new(None) }
    }

    pub(crate) async fn conn(&self, token: &Option<String>, timeout: Duration) -> Result<Arc<Conn>, Error> {
        // The common case, a connection already open, takes neither a wait
        // on the lock nor the connect future: boxed, that stays out of every
        // call's future (3 KB of state, copied at each move, that was 9% of
        // the client's CPU per `get`).
        if let Ok(slot) = self.conn.try_lock()
            && let Some(c) = &*slot
        {
            return Ok(c.clone());
        }
        Box::pin(self.open(token, timeout)).await
    }

    /// `conn`'s slow path: waits for the lock, then connects unless another
    /// call did meanwhile, or fails fast during a backoff.
    async fn open(&self, token: &Option<String>, timeout: Duration) -> Result<Arc<Conn>, Error> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = &*slot {
            return Ok(c.clone());
        }
        if let Some(b) = &*self.backoff.lock().expect("lock poisoned")
            && Instant::now() < b.until
        {
            return Err(self.conn_error(format!("{} (a recent attempt; retrying with backoff)", b.reason)));
        }
        match self.connect(token, timeout).await {
            Ok(conn) => {
                *self.backoff.lock().expect("lock poisoned") = None;
                let conn = Arc::new(conn);
                *slot = Some(conn.clone());
                Ok(conn)
            }
            Err(e) => {
                if let Error::Connection { reason, .. } = &e {
                    let mut b = self.backoff.lock().expect("lock poisoned");
                    let wait = b.as_ref().map_or(FIRST_BACKOFF, |b| (b.wait * 2).min(MAX_BACKOFF));
                    *b = Some(Backoff { until: Instant::now() + jitter(wait), wait, reason: reason.clone() });
                }
                Err(e)
            }
        }
    }

    pub(crate) async fn drop_conn(&self, broken: Option<&Arc<Conn>>) {
        let mut slot = self.conn.lock().await;
        match (broken, &*slot) {
            (Some(b), Some(cur)) if !Arc::ptr_eq(b, cur) => {}
            _ => *slot = None,
        }
    }

    fn conn_error(&self, reason: impl ToString) -> Error {
        Error::Connection { server: self.addr.clone(), reason: reason.to_string() }
    }

    async fn connect(&self, token: &Option<String>, timeout: Duration) -> Result<Conn, Error> {
        let open = async {
            let (queue, rx) = mpsc::unbounded_channel();
            let template = context::current();
            if let Some(path) = self.addr.strip_prefix("unix:") {
                let io = tokio::net::UnixStream::connect(path).await.map_err(|e| self.conn_error(e))?;
                tokio::spawn(drive(io, rx, timeout, template));
            } else {
                let io = tokio::net::TcpStream::connect(&self.addr).await.map_err(|e| self.conn_error(e))?;
                let _ = io.set_nodelay(true);
                match &self.tls {
                    #[cfg(feature = "tls")]
                    Some(tls) => {
                        let io = tls.connector.connect(tls.name.clone(), io).await.map_err(|e| {
                            self.conn_error(format!(
                                "TLS handshake failed: {e}; check that the server listens with tls:// and that its \
                                 certificate is signed by the CA given to Tls::with_ca_file and names this host"
                            ))
                        })?;
                        tokio::spawn(drive(io, rx, timeout, template));
                    }
                    #[cfg(not(feature = "tls"))]
                    Some(never) => match *never {},
                    None => {
                        tokio::spawn(drive(io, rx, timeout, template));
                    }
                }
            };
            let client = Client::from(Wire { queue: queue.clone() });
            let info = match client.hello(ctx(timeout), token.clone()).await {
                Ok(Ok(info)) => info,
                Ok(Err(WireError::Unauthorized)) => return Err(Error::Unauthorized),
                Ok(Err(e)) => return Err(e.into()),
                Err(e) => return Err(self.conn_error(format!("handshake failed: {e}"))),
            };
            Ok(Conn { client, info, queue })
        };
        tokio::time::timeout(timeout, open).await.map_err(|_| self.conn_error("timed out connecting"))?
    }

    /// Runs one request with the connection, reconnecting once when that is
    /// safe.
    pub(crate) async fn call<R, F, Fut>(
        &self,
        token: &Option<String>,
        timeout: Duration,
        retry: Retry,
        f: F,
    ) -> Result<R, Error>
    where
        F: Fn(Client, context::Context) -> Fut,
        Fut: Future<Output = Result<Result<R, WireError>, RpcError>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let conn = self.conn(token, timeout).await?;
            let outcome = tokio::time::timeout(timeout, f(conn.client.clone(), ctx(timeout))).await;
            let err = match outcome {
                Err(_) | Ok(Err(RpcError::DeadlineExceeded)) => return Err(Error::Timeout),
                Ok(Ok(Ok(r))) => return Ok(r),
                Ok(Ok(Err(e))) => return Err(e.into()),
                Ok(Err(e)) => e,
            };
            self.drop_conn(Some(&conn)).await;
            let unsent = matches!(err, RpcError::Shutdown | RpcError::Send(_));
            if attempt >= 2 || !(unsent || retry == Retry::Safe) {
                return Err(self.conn_error(err));
            }
        }
    }
}

impl Node {
    /// Runs one single-key operation through the coalescer of `conn` (this
    /// node's connection, already resolved by the caller), reconnecting once
    /// when that is safe. A retry resends the same `Op`: its keys and values
    /// are `Bytes`, so keeping it costs reference counts, not copies.
    pub(crate) async fn op(
        &self,
        conn: Arc<Conn>,
        token: &Option<String>,
        timeout: Duration,
        retry: Retry,
        op: Op,
    ) -> Result<OpReply, Error> {
        let mut attempt = 0;
        let mut conn = Some(conn);
        loop {
            attempt += 1;
            let conn = match conn.take() {
                Some(c) => c,
                None => self.conn(token, timeout).await?,
            };
            let (tx, rx) = oneshot::channel();
            // Whether the request surely never left, and why it failed.
            let (unsent, reason) = if conn.queue.send(Job::Op(op.clone(), tx)).is_err() {
                (true, "the connection's queue is closed".to_string())
            } else {
                match rx.await {
                    Ok(Ok(Ok(reply))) => return Ok(reply),
                    Ok(Ok(Err(e))) => return Err(e.into()),
                    Ok(Err(Failed::Timeout)) => return Err(Error::Timeout),
                    Ok(Err(Failed::Unsent(r))) => (true, r),
                    Ok(Err(Failed::Broken(r))) => (false, r),
                    Err(_) => (false, "the connection closed".to_string()),
                }
            };
            self.drop_conn(Some(&conn)).await;
            if attempt >= 2 || !(unsent || retry == Retry::Safe) {
                return Err(self.conn_error(reason));
            }
        }
    }
}

/// `d` scaled by a factor in [0.5, 1.5), so clients that lost a server at the
/// same moment do not all come back at the same moment.
/// A wait between half and one and a half times `d`, so clients that lost
/// a server together do not come back in lockstep.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::random_range(0.5..1.5))
}

fn ctx(timeout: Duration) -> context::Context {
    let mut c = context::current();
    c.deadline = Instant::now() + timeout;
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Bytes;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// The server's end of a connection, played by the test.
    struct Peer {
        io: DuplexStream,
        input: BytesMut,
    }

    impl Peer {
        async fn request(&mut self) -> tarpc::Request<CacheServiceRequest> {
            loop {
                if let Some(frame) = next_frame(&mut self.input, CLIENT_MAX_FRAME).unwrap() {
                    match decode_frame(&frame).unwrap() {
                        tarpc::ClientMessage::Request(r) => return r,
                        other => panic!("{other:?}"),
                    }
                }
                assert!(self.io.read_buf(&mut self.input).await.unwrap() > 0, "the client closed");
            }
        }

        async fn answer(&mut self, id: u64, value: &'static [u8]) {
            let replies = Ok(vec![Ok(OpReply::Value(Some(Bytes::from_static(value))))]);
            let response = tarpc::Response { request_id: id, message: Ok(CacheServiceResponse::Batch(replies)) };
            let mut out = Vec::new();
            crate::protocol::write_frame(&mut out, &response).unwrap();
            self.io.write_all(&out).await.unwrap();
        }
    }

    fn start(timeout: Duration) -> (mpsc::UnboundedSender<Job>, Peer) {
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(drive(ours, rx, timeout, context::current()));
        (tx, Peer { io: theirs, input: BytesMut::new() })
    }

    type Reply = oneshot::Receiver<Result<Result<OpReply, WireError>, Failed>>;

    fn get(tx: &mpsc::UnboundedSender<Job>, key: &'static [u8]) -> Reply {
        let (slot, reply) = oneshot::channel();
        tx.send(Job::Op(Op::Get(Bytes::from_static(key)), slot)).unwrap_or_else(|_| panic!("queue closed"));
        reply
    }

    fn value(reply: Result<Result<OpReply, WireError>, Failed>) -> Bytes {
        match reply {
            Ok(Ok(OpReply::Value(Some(v)))) => v,
            Ok(other) => panic!("{other:?}"),
            Err(_) => panic!("failed"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_without_an_answer_times_out_and_the_connection_goes_on() {
        let (tx, mut peer) = start(Duration::from_secs(5));
        let lost = get(&tx, b"a");
        let first = peer.request().await;
        // The paused clock runs to the deadline once nothing else can move.
        assert!(matches!(lost.await.unwrap(), Err(Failed::Timeout)));
        let next = get(&tx, b"b");
        let second = peer.request().await;
        // The late answer to the first is dropped; the second is delivered.
        peer.answer(first.id, b"late").await;
        peer.answer(second.id, b"vb").await;
        assert_eq!(value(next.await.unwrap()), Bytes::from_static(b"vb"));
    }

    #[tokio::test]
    async fn answers_out_of_order_reach_their_callers() {
        let (tx, mut peer) = start(Duration::from_secs(60));
        let a = get(&tx, b"a");
        let ra = peer.request().await;
        let b = get(&tx, b"b");
        let rb = peer.request().await;
        assert_ne!(ra.id, rb.id);
        peer.answer(rb.id, b"vb").await;
        peer.answer(ra.id, b"va").await;
        assert_eq!(value(a.await.unwrap()), Bytes::from_static(b"va"));
        assert_eq!(value(b.await.unwrap()), Bytes::from_static(b"vb"));
    }

    /// Ops queued while two batches are out go together in the next one.
    #[tokio::test]
    async fn ops_queued_behind_two_batches_leave_as_one() {
        let (tx, mut peer) = start(Duration::from_secs(60));
        let (_a, _b) = (get(&tx, b"a"), get(&tx, b"a"));
        let r1 = peer.request().await;
        let _c = get(&tx, b"b");
        let r2 = peer.request().await;
        let queued: Vec<Reply> = (0..10).map(|_| get(&tx, b"c")).collect();
        peer.answer(r2.id, b"x").await;
        let r3 = peer.request().await;
        match r3.message {
            CacheServiceRequest::Batch { ops } => assert_eq!(ops.len(), queued.len()),
            other => panic!("{other:?}"),
        }
        drop(r1);
    }

    #[tokio::test]
    async fn a_broken_connection_fails_what_was_sent_and_what_was_not() {
        let (tx, mut peer) = start(Duration::from_secs(60));
        let sent = get(&tx, b"a");
        peer.request().await;
        drop(peer);
        assert!(matches!(sent.await.unwrap(), Err(Failed::Broken(_))));
        // After the break a job is refused at the queue, or failed as
        // unsent by the task on its way out: a retry is safe either way.
        let (slot, reply) = oneshot::channel();
        if tx.send(Job::Op(Op::Get(Bytes::from_static(b"b")), slot)).is_ok() {
            assert!(matches!(reply.await.unwrap(), Err(Failed::Unsent(_))));
        }
    }
}
