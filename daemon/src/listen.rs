//! Listeners (TCP and unix sockets) and the per-connection tarpc channel,
//! with a cap on connections and on requests in flight per connection.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use cachet::protocol::CacheService;
use futures::StreamExt;
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_util::codec::LengthDelimitedCodec;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Semaphore, watch};
use tokio_serde::formats::MessagePack;

use crate::service::{Session, Shared};

pub enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener, PathBuf),
}

impl Listener {
    /// Binds `addr` (`HOST:PORT` or `unix:/path`). A unix socket file left by
    /// a process that is gone is replaced; one still served is an error.
    pub async fn bind(addr: &str) -> Result<Listener, String> {
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
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))
                .map_err(|e| format!("setting mode of {}: {e}", path.display()))?;
            Ok(Listener::Unix(l, path))
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
            Listener::Unix(_, p) => format!("unix:{}", p.display()),
        }
    }

    pub fn socket_path(&self) -> Option<PathBuf> {
        match self {
            Listener::Unix(_, p) => Some(p.clone()),
            Listener::Tcp(_) => None,
        }
    }
}

#[derive(Clone)]
pub struct Limits {
    pub connections: Arc<Semaphore>,
    pub max_in_flight: usize,
    pub max_frame: usize,
}

/// Accepts connections until `stop` turns true.
pub async fn accept_loop(listener: Listener, shared: Arc<Shared>, limits: Limits, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            accepted = accept(&listener) => match accepted {
                Ok(conn) => {
                    let Ok(permit) = limits.connections.clone().try_acquire_owned() else {
                        tracing::warn!("connection refused: at the limit of {} connections (--max-connections)", limits.connections.available_permits());
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
        Listener::Unix(l, _) => Ok(Conn::Unix(l.accept().await?.0)),
    }
}

async fn serve<IO>(io: IO, shared: Arc<Shared>, limits: &Limits)
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let framed = LengthDelimitedCodec::builder().max_frame_length(limits.max_frame).new_framed(io);
    let transport = tarpc::serde_transport::new(framed, MessagePack::default());
    shared.connections.fetch_add(1, Ordering::Relaxed);
    let session = Session::new(shared.clone());
    BaseChannel::with_defaults(transport)
        .max_concurrent_requests(limits.max_in_flight)
        .execute(session.serve())
        .for_each(|request| async {
            tokio::spawn(request);
        })
        .await;
    shared.connections.fetch_sub(1, Ordering::Relaxed);
}
