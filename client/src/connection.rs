//! One connection per server, shared by all clones of a `Cache`: opened on
//! first use, dropped when it breaks, and reopened by the next call.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tarpc::client::RpcError;
use tarpc::context;
use tarpc::tokio_util::codec::LengthDelimitedCodec;
use tokio::sync::Mutex;
use tokio_serde::formats::MessagePack;

use crate::error::Error;
use crate::protocol::{CLIENT_MAX_FRAME, CacheServiceClient, ServerInfo, WireError};

pub(crate) struct Conn {
    pub(crate) client: CacheServiceClient,
    pub(crate) info: ServerInfo,
}

pub(crate) struct Node {
    pub(crate) addr: String,
    conn: Mutex<Option<Arc<Conn>>>,
}

/// Whether repeating a request after a broken connection is harmless.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    Safe,
    /// Not idempotent (incr, add, rename): retried only when the request
    /// surely never left.
    OnlyIfUnsent,
}

impl Node {
    pub(crate) fn new(addr: String) -> Node {
        Node { addr, conn: Mutex::new(None) }
    }

    pub(crate) async fn conn(&self, token: &Option<String>, timeout: Duration) -> Result<Arc<Conn>, Error> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = &*slot {
            return Ok(c.clone());
        }
        let conn = Arc::new(self.connect(token, timeout).await?);
        *slot = Some(conn.clone());
        Ok(conn)
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
                let transport = tarpc::serde_transport::new(codec().new_framed(io), MessagePack::default());
                CacheServiceClient::new(client_config(), transport).spawn()
            } else {
                let io = tokio::net::TcpStream::connect(&self.addr).await.map_err(|e| self.conn_error(e))?;
                let _ = io.set_nodelay(true);
                let transport = tarpc::serde_transport::new(codec().new_framed(io), MessagePack::default());
                CacheServiceClient::new(client_config(), transport).spawn()
            };
            let info = match client.hello(ctx(timeout), token.clone()).await {
                Ok(Ok(info)) => info,
                Ok(Err(WireError::Unauthorized)) => return Err(Error::Unauthorized),
                Ok(Err(e)) => return Err(e.into()),
                Err(e) => return Err(self.conn_error(format!("handshake failed: {e}"))),
            };
            Ok(Conn { client, info })
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
