//! Listeners (TCP and unix sockets) and the per-connection tarpc channel,
//! with a cap on connections and on requests in flight per connection.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use cachet::protocol::CacheService;
use futures::StreamExt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_util::codec::LengthDelimitedCodec;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Semaphore, watch};

use cachet_storage::ReplyBudget;

use crate::error::{Error, Result};
use crate::front::tarpc::Session;
use crate::shared::Shared;

/// The protocol a listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// cachet's own: tarpc over MessagePack frames (the Rust client).
    Tarpc,
    /// Redis's RESP2/RESP3 (Django's RedisCache, redis-py, redis-cli …).
    Resp,
}

impl Protocol {
    /// Splits a `--listen` address into its protocol, the address to bind
    /// and whether it is TLS: `resp://HOST:PORT` and `resp+unix:/path` speak
    /// RESP, `resp+tls://HOST:PORT` RESP over TLS; `HOST:PORT`,
    /// `tarpc://HOST:PORT` and `unix:/path` speak tarpc, `tls://HOST:PORT`
    /// tarpc over TLS.
    pub fn of(addr: &str) -> (Protocol, String, bool) {
        if let Some(rest) = addr.strip_prefix("resp://") {
            (Protocol::Resp, rest.to_string(), false)
        } else if let Some(rest) = addr.strip_prefix("resp+tls://") {
            (Protocol::Resp, rest.to_string(), true)
        } else if let Some(rest) = addr.strip_prefix("resp+unix:") {
            (Protocol::Resp, format!("unix:{rest}"), false)
        } else if let Some(rest) = addr.strip_prefix("tarpc://") {
            (Protocol::Tarpc, rest.to_string(), false)
        } else if let Some(rest) = addr.strip_prefix("tls://") {
            (Protocol::Tarpc, rest.to_string(), true)
        } else {
            (Protocol::Tarpc, addr.to_string(), false)
        }
    }

    /// How a listener of this protocol is named in logs (as `--listen` takes it).
    pub fn describe(self, bound: &str, tls: bool) -> String {
        match (self, bound.strip_prefix("unix:"), tls) {
            (Protocol::Tarpc, _, false) => bound.to_string(),
            (Protocol::Tarpc, _, true) => format!("tls://{bound}"),
            (Protocol::Resp, Some(path), _) => format!("resp+unix:{path}"),
            (Protocol::Resp, None, false) => format!("resp://{bound}"),
            (Protocol::Resp, None, true) => format!("resp+tls://{bound}"),
        }
    }
}

pub enum Listener {
    /// A TCP listener, with the TLS handshake its connections start with.
    Tcp(tokio::net::TcpListener, Option<tokio_rustls::TlsAcceptor>),
    /// A unix socket, its path, and whether we made it (and remove it on exit).
    Unix(tokio::net::UnixListener, PathBuf, bool),
}

/// How unix socket files are created.
#[derive(Clone, Debug)]
pub struct UnixPerms {
    pub mode: u32,
    /// Group to own the socket (so its members may connect), by name.
    pub group: Option<String>,
}

/// A listening socket bound before the runtime starts (by us, or passed by
/// systemd), so a bad address fails in a millisecond, before the replay.
pub enum Bound {
    /// A TCP listener, and whether it speaks TLS.
    Tcp(std::net::TcpListener, Protocol, bool),
    /// A unix socket, its path, and whether we made it (and remove it on exit).
    Unix(std::os::unix::net::UnixListener, PathBuf, bool, Protocol),
}

impl Bound {
    /// Binds a `--listen` address (`HOST:PORT`, `unix:/path`, `resp://…`).
    /// A unix socket file left by a process that is gone is replaced; one
    /// still served is an error.
    pub fn bind(listen: &str, perms: &UnixPerms) -> Result<Bound> {
        let (protocol, addr, tls) = Protocol::of(listen);
        bind_unchecked(&addr, protocol, tls, perms).map_err(Error::Listen)
    }

    /// Whether its connections start with a TLS handshake.
    pub fn is_tls(&self) -> bool {
        matches!(self, Bound::Tcp(_, _, true))
    }

    /// Registers the socket with the runtime (call inside it); a TLS
    /// listener takes `tls` (checked at start to be there).
    pub fn into_listener(self, tls: Option<&tokio_rustls::TlsAcceptor>) -> Result<(Listener, Protocol)> {
        let registering = |e: std::io::Error| Error::Listen(format!("registering a listening socket: {e}"));
        Ok(match self {
            Bound::Tcp(l, p, secure) => {
                let acceptor = match (secure, tls) {
                    (false, _) => None,
                    (true, Some(a)) => Some(a.clone()),
                    (true, None) => {
                        return Err(Error::Config("a tls:// listener needs --tls-cert and --tls-key".into()));
                    }
                };
                (Listener::Tcp(tokio::net::TcpListener::from_std(l).map_err(registering)?, acceptor), p)
            }
            Bound::Unix(l, path, ours, p) => {
                (Listener::Unix(tokio::net::UnixListener::from_std(l).map_err(registering)?, path, ours), p)
            }
        })
    }
}

fn bind_unchecked(addr: &str, protocol: Protocol, tls: bool, perms: &UnixPerms) -> std::result::Result<Bound, String> {
    if let Some(path) = addr.strip_prefix("unix:") {
        let path = PathBuf::from(path);
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            use std::os::unix::fs::FileTypeExt;
            // Only a socket left by a process that is gone is replaced:
            // never a regular file, a directory or a link someone put there.
            if !meta.file_type().is_socket() {
                return Err(format!(
                    "{} exists and is not a socket; remove it or pick another path for --listen unix:",
                    path.display()
                ));
            }
            if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                return Err(format!("{} is in use by a running server; stop it or pick another path", path.display()));
            }
            std::fs::remove_file(&path).map_err(|e| format!("removing stale socket {}: {e}", path.display()))?;
        }
        let l =
            std::os::unix::net::UnixListener::bind(&path).map_err(|e| format!("binding {}: {e}", path.display()))?;
        l.set_nonblocking(true).map_err(|e| format!("binding {}: {e}", path.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(perms.mode))
            .map_err(|e| format!("setting mode of {}: {e}", path.display()))?;
        if let Some(group) = &perms.group {
            let gid = group_id(group)?;
            std::os::unix::fs::chown(&path, None, Some(gid))
                .map_err(|e| format!("giving {} to group {group}: {e}", path.display()))?;
        }
        Ok(Bound::Unix(l, path, true, protocol))
    } else {
        let failed = |e: std::io::Error| {
            format!("binding {addr}: {e}; is another server on that port? (--listen picks another)")
        };
        let mut last = None;
        let addrs = std::net::ToSocketAddrs::to_socket_addrs(addr).map_err(|e| {
            format!("--listen {addr}: {e}; give HOST:PORT, unix:/path, resp://HOST:PORT or resp+unix:/path")
        })?;
        for a in addrs {
            // As tokio's bind: SO_REUSEADDR, so a restart can bind at once
            // while old connections linger in TIME_WAIT.
            let bound = (|| {
                let sock = socket2::Socket::new(socket2::Domain::for_address(a), socket2::Type::STREAM, None)?;
                sock.set_reuse_address(true)?;
                sock.set_nonblocking(true)?;
                sock.bind(&a.into())?;
                sock.listen(1024)?;
                Ok::<_, std::io::Error>(std::net::TcpListener::from(sock))
            })();
            match bound {
                Ok(l) => return Ok(Bound::Tcp(l, protocol, tls)),
                Err(e) => last = Some(e),
            }
        }
        Err(last.map(failed).unwrap_or_else(|| format!("--listen {addr}: the name resolves to no address")))
    }
}

impl Listener {
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l, _) => l.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| "tcp".into()),
            Listener::Unix(_, p, _) => format!("unix:{}", p.display()),
        }
    }

    /// The socket file to remove on exit, if we made one.
    pub fn socket_path(&self) -> Option<PathBuf> {
        match self {
            Listener::Unix(_, p, true) => Some(p.clone()),
            _ => None,
        }
    }

    /// Whether anyone beyond this machine can reach it.
    pub fn is_exposed(&self) -> bool {
        match self {
            Listener::Tcp(l, _) => l.local_addr().map(|a| !a.ip().is_loopback()).unwrap_or(true),
            Listener::Unix(..) => false,
        }
    }
}

fn group_id(name: &str) -> Result<u32, String> {
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(format!("no such group {name:?} (--unix-group); create it or name another")),
        Err(e) => Err(format!("looking up group {name:?} (--unix-group): {e}")),
    }
}

#[derive(Clone)]
pub struct Limits {
    pub connections: Arc<Semaphore>,
    pub max_connections: usize,
    pub max_in_flight: usize,
    pub max_frame: usize,
    /// A frame must arrive whole within this long of its first byte.
    pub read_timeout: std::time::Duration,
    /// Bytes of request frames being received, across all connections, that
    /// may still be taken (`--max-buffered-request-bytes`).
    pub request_bytes: Arc<AtomicI64>,
    /// Unread reply bytes one connection may hold (`--max-unsent-reply-bytes`).
    pub reply_bytes_per_connection: usize,
    /// The pool of unread reply bytes all connections share.
    pub reply_bytes: Arc<AtomicI64>,
}

/// The largest frame a connection may send before it authenticates (when a
/// token is set): enough for `hello` with any sane token, far too little to
/// make the daemon hold a large buffer for a stranger.
pub const UNAUTHENTICATED_MAX_FRAME: usize = 64 << 10;

/// Accepts connections until `stop` turns true.
pub async fn accept_loop(
    listener: Listener,
    protocol: Protocol,
    shared: Arc<Shared>,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            accepted = accept(&listener) => match accepted {
                Ok(conn) => {
                    let Ok(permit) = limits.connections.clone().try_acquire_owned() else {
                        shared.metrics.refused("max_connections");
                        tracing::warn!("connection refused: at the limit of {} connections (--max-connections)", limits.max_connections);
                        continue;
                    };
                    let (shared, limits) = (shared.clone(), limits.clone());
                    let tls = match &listener {
                        Listener::Tcp(_, tls) => tls.clone(),
                        Listener::Unix(..) => None,
                    };
                    tokio::spawn(async move {
                        let _open = shared.metrics.connection(protocol);
                        match (conn, tls) {
                            (Conn::Tcp(io), Some(acceptor)) => {
                                // The handshake gets the time a frame gets, so a
                                // client that connects and stalls is dropped.
                                match tokio::time::timeout(limits.read_timeout, acceptor.accept(io)).await {
                                    Ok(Ok(io)) => serve_protocol(io, protocol, shared, &limits).await,
                                    Ok(Err(e)) => shared.note("tls_handshake", &format!(
                                        "a TLS handshake failed ({e}); a plain-text client on a TLS port, or a certificate the client or server does not trust"
                                    )),
                                    Err(_) => shared.note("tls_handshake", "a client did not finish its TLS handshake within --read-timeout"),
                                }
                            }
                            (Conn::Tcp(io), None) => serve_protocol(io, protocol, shared, &limits).await,
                            (Conn::Unix(io), _) => serve_protocol(io, protocol, shared, &limits).await,
                        }
                        drop(permit);
                    });
                }
                Err(e) => {
                    // Running out of file descriptors must not spin the loop.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }
}

enum Conn {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(l: &Listener) -> std::io::Result<Conn> {
    match l {
        Listener::Tcp(l, _) => {
            let (io, _) = l.accept().await?;
            let _ = io.set_nodelay(true);
            Ok(Conn::Tcp(io))
        }
        Listener::Unix(l, _, _) => Ok(Conn::Unix(l.accept().await?.0)),
    }
}

/// Serves one connection in its listener's protocol.
async fn serve_protocol<IO>(io: IO, protocol: Protocol, shared: Arc<Shared>, limits: &Limits)
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    match protocol {
        Protocol::Tarpc => serve(io, shared, limits).await,
        Protocol::Resp => crate::front::resp::serve(io, shared, limits).await,
    }
}

async fn serve<IO>(io: IO, shared: Arc<Shared>, limits: &Limits)
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let budget = Arc::new(ReplyBudget::new(limits.reply_bytes_per_connection, limits.reply_bytes.clone()));
    let session = Session::new(shared.clone(), budget.clone());
    let io = Guard::new(io, limits, session.authed(), budget);
    let framed = LengthDelimitedCodec::builder().max_frame_length(limits.max_frame).new_framed(io);
    let transport = tarpc::serde_transport::new(framed, cachet::protocol::Codec::default());
    shared.connections.fetch_add(1, Ordering::Relaxed);
    // Requests run inside the connection's task rather than one task each:
    // no spawn and no cross-thread wake per request, which is most of what a
    // small request costs here.
    BaseChannel::with_defaults(transport)
        .max_concurrent_requests(limits.max_in_flight)
        .execute(session.serve())
        .for_each_concurrent(limits.max_in_flight, |request| request)
        .await;
    shared.connections.fetch_sub(1, Ordering::Relaxed);
}

/// Guards a connection's socket, following the 4-byte big-endian length
/// prefixes of the stream to know where frames start and end:
///
/// - a frame must arrive whole within `read_timeout` of its first byte (a
///   client that sends half a frame and stalls is closed; idle connections
///   between frames are left alone);
/// - before the connection authenticates, a frame may be at most
///   `UNAUTHENTICATED_MAX_FRAME` bytes;
/// - a frame's length (beyond the first `UNAUTHENTICATED_MAX_FRAME` bytes)
///   is taken from the budget of request bytes all connections share before
///   its body is buffered, and given back when it has arrived; a frame that
///   does not fit closes its connection;
/// - bytes written to the socket are credited to the connection's reply
///   budget, which the engine debits as it builds replies.
struct Guard<IO> {
    io: IO,
    header: [u8; 4],
    header_got: usize,
    body_left: u64,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    limit: std::time::Duration,
    authed: Arc<AtomicBool>,
    max_frame: usize,
    request_bytes: Arc<AtomicI64>,
    /// Taken from `request_bytes` for the frame being received.
    reserved: i64,
    budget: Arc<ReplyBudget>,
}

impl<IO> Guard<IO> {
    fn new(io: IO, limits: &Limits, authed: Arc<AtomicBool>, budget: Arc<ReplyBudget>) -> Self {
        Guard {
            io,
            header: [0; 4],
            header_got: 0,
            body_left: 0,
            deadline: None,
            limit: limits.read_timeout,
            authed,
            max_frame: limits.max_frame,
            request_bytes: limits.request_bytes.clone(),
            reserved: 0,
            budget,
        }
    }

    fn track(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let n = (self.body_left as usize).min(bytes.len());
                self.body_left -= n as u64;
                bytes = &bytes[n..];
                if self.body_left == 0 {
                    self.release();
                }
            } else {
                self.header[self.header_got] = bytes[0];
                self.header_got += 1;
                bytes = &bytes[1..];
                if self.header_got == 4 {
                    self.header_got = 0;
                    let len = u32::from_be_bytes(self.header) as usize;
                    self.admit(len)?;
                    self.body_left = len as u64;
                }
            }
        }
        Ok(())
    }

    /// Checks a frame's length against the limits and reserves its bytes.
    fn admit(&mut self, len: usize) -> std::io::Result<()> {
        let refuse = |msg: String| {
            tracing::warn!("closing a connection: {msg}");
            Err(std::io::Error::new(std::io::ErrorKind::InvalidData, msg))
        };
        if !self.authed.load(Ordering::Acquire) && len > UNAUTHENTICATED_MAX_FRAME {
            return refuse(format!(
                "a frame of {len} bytes before authenticating (at most {UNAUTHENTICATED_MAX_FRAME}); \
                 clients must send hello with the auth token first"
            ));
        }
        if len > self.max_frame {
            return refuse(format!(
                "a frame of {len} bytes is over the limit of {} (--max-value-bytes)",
                self.max_frame
            ));
        }
        // Small frames (most requests) are not counted, so clients keep
        // being served while large uploads hold the budget: the worst case
        // is the budget plus one small frame per connection.
        // A refused frame takes nothing, not even for a moment (taking and
        // giving back made a frame that fits look refused to a connection
        // checking in between).
        let n = len.saturating_sub(UNAUTHENTICATED_MAX_FRAME) as i64;
        let take = |left: i64| (left >= n).then_some(left - n);
        if n > 0 && self.request_bytes.fetch_update(Ordering::AcqRel, Ordering::Acquire, take).is_err() {
            return refuse(format!(
                "a frame of {len} bytes would take request buffers across connections over \
                 --max-buffered-request-bytes; the client may retry"
            ));
        }
        self.reserved = n;
        Ok(())
    }

    fn release(&mut self) {
        let n = std::mem::take(&mut self.reserved);
        self.request_bytes.fetch_add(n, Ordering::AcqRel);
    }

    fn mid_frame(&self) -> bool {
        self.header_got > 0 || self.body_left > 0
    }
}

impl<IO> Drop for Guard<IO> {
    fn drop(&mut self) {
        self.release();
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guard<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if let Some(d) = &mut self.deadline
            && d.as_mut().poll(cx).is_ready()
        {
            let msg = format!("a request frame did not arrive whole within {:?}; closing the connection", self.limit);
            tracing::debug!("{msg}");
            return Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, msg)));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &polled {
            self.track(&buf.filled()[before..])?;
            if !self.mid_frame() {
                self.deadline = None;
            } else if self.deadline.is_none() {
                let mut d = Box::pin(tokio::time::sleep(self.limit));
                let _ = d.as_mut().poll(cx);
                self.deadline = Some(d);
            }
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guard<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            self.budget.credit(*n);
        }
        polled
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &polled {
            self.budget.credit(*n);
        }
        polled
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
