//! Listeners (TCP and unix sockets) and the per-connection tarpc channel,
//! with a cap on connections and on requests in flight per connection.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use cachet::protocol::CacheService;
use futures::StreamExt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_util::codec::LengthDelimitedCodec;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Semaphore, watch};

use crate::service::{Session, Shared};

pub enum Listener {
    Tcp(tokio::net::TcpListener),
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

impl Listener {
    /// Binds `addr` (`HOST:PORT` or `unix:/path`). A unix socket file left by
    /// a process that is gone is replaced; one still served is an error.
    pub async fn bind(addr: &str, perms: &UnixPerms) -> Result<Listener, String> {
        if let Some(path) = addr.strip_prefix("unix:") {
            let path = PathBuf::from(path);
            if path.exists() {
                if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                    return Err(format!(
                        "{} is in use by a running server; stop it or pick another path",
                        path.display()
                    ));
                }
                std::fs::remove_file(&path).map_err(|e| format!("removing stale socket {}: {e}", path.display()))?;
            }
            let l = tokio::net::UnixListener::bind(&path).map_err(|e| format!("binding {}: {e}", path.display()))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(perms.mode))
                .map_err(|e| format!("setting mode of {}: {e}", path.display()))?;
            if let Some(group) = &perms.group {
                let gid = group_id(group)?;
                std::os::unix::fs::chown(&path, None, Some(gid))
                    .map_err(|e| format!("giving {} to group {group}: {e}", path.display()))?;
            }
            Ok(Listener::Unix(l, path, true))
        } else {
            let l = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                format!("binding {addr}: {e}; is another server on that port? (--listen picks another)")
            })?;
            Ok(Listener::Tcp(l))
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| "tcp".into()),
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
            Listener::Tcp(l) => l.local_addr().map(|a| !a.ip().is_loopback()).unwrap_or(true),
            Listener::Unix(..) => false,
        }
    }
}

fn group_id(name: &str) -> Result<u32, String> {
    let c = std::ffi::CString::new(name).map_err(|_| format!("bad group name {name:?}"))?;
    // SAFETY: getgrnam reads a NUL-terminated name and returns a pointer to
    // static storage (or null), read at once before any other call.
    let g = unsafe { libc::getgrnam(c.as_ptr()) };
    if g.is_null() {
        return Err(format!("no such group {name:?} (--unix-group)"));
    }
    Ok(unsafe { (*g).gr_gid })
}

#[derive(Clone)]
pub struct Limits {
    pub connections: Arc<Semaphore>,
    pub max_connections: usize,
    pub max_in_flight: usize,
    pub max_frame: usize,
    /// A frame must arrive whole within this long of its first byte.
    pub read_timeout: std::time::Duration,
}

/// Accepts connections until `stop` turns true.
pub async fn accept_loop(listener: Listener, shared: Arc<Shared>, limits: Limits, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            accepted = accept(&listener) => match accepted {
                Ok(conn) => {
                    let Ok(permit) = limits.connections.clone().try_acquire_owned() else {
                        tracing::warn!("connection refused: at the limit of {} connections (--max-connections)", limits.max_connections);
                        continue;
                    };
                    let (shared, limits) = (shared.clone(), limits.clone());
                    tokio::spawn(async move {
                        match conn {
                            Conn::Tcp(io) => serve(io, shared, &limits).await,
                            Conn::Unix(io) => serve(io, shared, &limits).await,
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
        Listener::Tcp(l) => {
            let (io, _) = l.accept().await?;
            let _ = io.set_nodelay(true);
            Ok(Conn::Tcp(io))
        }
        Listener::Unix(l, _, _) => Ok(Conn::Unix(l.accept().await?.0)),
    }
}

async fn serve<IO>(io: IO, shared: Arc<Shared>, limits: &Limits)
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let io = FrameTimeout::new(io, limits.read_timeout);
    let framed = LengthDelimitedCodec::builder().max_frame_length(limits.max_frame).new_framed(io);
    let transport = tarpc::serde_transport::new(framed, cachet::protocol::Codec::default());
    shared.connections.fetch_add(1, Ordering::Relaxed);
    let session = Session::new(shared.clone());
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

/// Closes a connection whose frame does not arrive whole within `limit` of
/// its first byte (a client that sends half a frame and stalls). It follows
/// the 4-byte big-endian length prefixes of the stream to know where frames
/// end. Idle connections between frames are left alone.
struct FrameTimeout<IO> {
    io: IO,
    header: [u8; 4],
    header_got: usize,
    body_left: u64,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    limit: std::time::Duration,
}

impl<IO> FrameTimeout<IO> {
    fn new(io: IO, limit: std::time::Duration) -> Self {
        FrameTimeout { io, header: [0; 4], header_got: 0, body_left: 0, deadline: None, limit }
    }

    fn track(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let n = (self.body_left as usize).min(bytes.len());
                self.body_left -= n as u64;
                bytes = &bytes[n..];
            } else {
                self.header[self.header_got] = bytes[0];
                self.header_got += 1;
                bytes = &bytes[1..];
                if self.header_got == 4 {
                    self.header_got = 0;
                    self.body_left = u32::from_be_bytes(self.header) as u64;
                }
            }
        }
    }

    fn mid_frame(&self) -> bool {
        self.header_got > 0 || self.body_left > 0
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for FrameTimeout<IO> {
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
            let new = buf.filled()[before..].to_vec();
            self.track(&new);
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

impl<IO: AsyncWrite + Unpin> AsyncWrite for FrameTimeout<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
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
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
