//! One connection per server, shared by all clones of a `Cache`: opened on
//! first use, dropped when it breaks, and reopened by the next call.
//!
//! Single-key operations go through a coalescer: a small queue drained by
//! one task. Whatever is waiting when a batch can leave (at most
//! `BATCHES_IN_FLIGHT` are out at once) goes in the next `batch` request, so
//! a lone request is never delayed, and many concurrent ones share tarpc's
//! per-request cost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tarpc::client::RpcError;
use tarpc::context;
use tarpc::tokio_util::codec::LengthDelimitedCodec;
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::error::Error;
use crate::protocol::{CLIENT_MAX_FRAME, CacheServiceClient, Op, OpReply, ServerInfo, WireError};

const BATCHES_IN_FLIGHT: usize = 2;
const MAX_BATCH: usize = 512;

/// Why a batched call got no reply from the server.
enum Failed {
    /// The request surely never left (the connection was already closed).
    Unsent(String),
    Broken(String),
    Timeout,
}

type Slot = oneshot::Sender<Result<Result<OpReply, WireError>, Failed>>;

pub(crate) struct Conn {
    pub(crate) client: CacheServiceClient,
    pub(crate) info: ServerInfo,
    queue: mpsc::UnboundedSender<(Op, Slot)>,
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

/// Drains the queue into `batch` requests until every sender is gone. The
/// batches in flight are driven here too (no task per batch: one hop less
/// for a lone request).
async fn coalesce(client: CacheServiceClient, mut rx: mpsc::UnboundedReceiver<(Op, Slot)>, timeout: Duration) {
    let mut in_flight = FuturesUnordered::new();
    let mut open = true;
    loop {
        let can_send = open && in_flight.len() < BATCHES_IN_FLIGHT;
        tokio::select! {
            first = rx.recv(), if can_send => {
                let Some(first) = first else {
                    open = false;
                    continue;
                };
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(item) => batch.push(item),
                        Err(_) => break,
                    }
                }
                let (ops, slots): (Vec<Op>, Vec<Slot>) = batch.into_iter().unzip();
                let call = client.batch(ctx(timeout), ops);
                in_flight.push(async move { (tokio::time::timeout(timeout, call).await, slots) });
            }
            Some((outcome, slots)) = in_flight.next(), if !in_flight.is_empty() => deliver(outcome, slots),
            else => return,
        }
    }
}

type BatchOutcome =
    Result<Result<Result<Vec<Result<OpReply, WireError>>, WireError>, RpcError>, tokio::time::error::Elapsed>;

fn deliver(outcome: BatchOutcome, slots: Vec<Slot>) {
    match outcome {
        Ok(Ok(Ok(replies))) if replies.len() == slots.len() => {
            for (slot, reply) in slots.into_iter().zip(replies) {
                let _ = slot.send(Ok(reply));
            }
        }
        Ok(Ok(Ok(_))) => {
            for slot in slots {
                let _ = slot.send(Ok(Err(WireError::Server("batch reply has the wrong length".into()))));
            }
        }
        Ok(Ok(Err(e))) => {
            for slot in slots {
                let _ = slot.send(Ok(Err(e.clone())));
            }
        }
        Ok(Err(e)) => {
            let unsent = matches!(e, RpcError::Shutdown | RpcError::Send(_));
            for slot in slots {
                let _ =
                    slot.send(Err(if unsent { Failed::Unsent(e.to_string()) } else { Failed::Broken(e.to_string()) }));
            }
        }
        Err(_) => {
            for slot in slots {
                let _ = slot.send(Err(Failed::Timeout));
            }
        }
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
        let codec = || {
            let mut b = LengthDelimitedCodec::builder();
            b.max_frame_length(CLIENT_MAX_FRAME);
            b
        };
        let open = async {
            let client = if let Some(path) = self.addr.strip_prefix("unix:") {
                let io = tokio::net::UnixStream::connect(path).await.map_err(|e| self.conn_error(e))?;
                let transport = tarpc::serde_transport::new(codec().new_framed(io), crate::protocol::Codec::default());
                CacheServiceClient::new(client_config(), transport).spawn()
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
                        let framed = codec().new_framed(io);
                        CacheServiceClient::new(
                            client_config(),
                            tarpc::serde_transport::new(framed, crate::protocol::Codec::default()),
                        )
                        .spawn()
                    }
                    #[cfg(not(feature = "tls"))]
                    Some(never) => match *never {},
                    None => {
                        let framed = codec().new_framed(io);
                        CacheServiceClient::new(
                            client_config(),
                            tarpc::serde_transport::new(framed, crate::protocol::Codec::default()),
                        )
                        .spawn()
                    }
                }
            };
            let info = match client.hello(ctx(timeout), token.clone()).await {
                Ok(Ok(info)) => info,
                Ok(Err(WireError::Unauthorized)) => return Err(Error::Unauthorized),
                Ok(Err(e)) => return Err(e.into()),
                Err(e) => return Err(self.conn_error(format!("handshake failed: {e}"))),
            };
            let (queue, rx) = mpsc::unbounded_channel();
            tokio::spawn(coalesce(client.clone(), rx, timeout));
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
        F: Fn(CacheServiceClient, context::Context) -> Fut,
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
            let (unsent, reason) = if conn.queue.send((op.clone(), tx)).is_err() {
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

fn client_config() -> tarpc::client::Config {
    let mut c = tarpc::client::Config::default();
    c.max_in_flight_requests = 1 << 16;
    c.pending_request_buffer = 1024;
    c
}

fn ctx(timeout: Duration) -> context::Context {
    let mut c = context::current();
    c.deadline = Instant::now() + timeout;
    c
}
