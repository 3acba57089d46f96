//! Listeners (TCP and unix sockets), with a cap on connections; each
//! accepted connection is served by its listener's front end.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Semaphore, watch};

use crate::error::{Error, Result};
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
        Protocol::Tarpc => crate::front::tarpc::serve(io, shared, limits).await,
        Protocol::Resp => crate::front::resp::serve(io, shared, limits).await,
    }
}
