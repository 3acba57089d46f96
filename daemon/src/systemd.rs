//! systemd integration: socket activation, readiness and status, the
//! watchdog, and log lines the journal understands.

use std::os::fd::{FromRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use cachet_storage::{Command, Handle, Reply};
use sd_notify::NotifyState;

use crate::error::Error;
use crate::listen::{Listener, Protocol};

/// A listening socket passed by systemd, before the runtime adopts it.
pub enum Activated {
    Tcp(std::net::TcpListener, Protocol),
    Unix(std::os::unix::net::UnixListener, std::path::PathBuf, Protocol),
}

impl Activated {
    /// Registers the socket with the runtime (call inside it).
    /// A socket named `resp` (`FileDescriptorName=resp`) speaks RESP; any
    /// other, tarpc.
    pub fn into_listener(self) -> Result<(Listener, Protocol), Error> {
        let registering = |e: std::io::Error| Error::Systemd(format!("registering an activated socket: {e}"));
        Ok(match self {
            Activated::Tcp(l, p) => (Listener::Tcp(tokio::net::TcpListener::from_std(l).map_err(registering)?), p),
            // systemd created the socket file and removes it: not ours to delete.
            Activated::Unix(l, path, p) => {
                (Listener::Unix(tokio::net::UnixListener::from_std(l).map_err(registering)?, path, false), p)
            }
        })
    }
}

/// Listeners passed by systemd (`LISTEN_FDS`), if any: TCP and unix sockets.
pub fn activated_listeners() -> Result<Vec<Activated>, Error> {
    let fds: Vec<(RawFd, String)> = match sd_notify::listen_fds_with_names() {
        Ok(fds) => fds.collect(),
        Err(_) => sd_notify::listen_fds()
            .map_err(|e| Error::Systemd(format!("LISTEN_FDS: {e}")))?
            .map(|fd| (fd, String::new()))
            .collect(),
    };
    // The variables are for us alone, not for anything we might start.
    for var in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"] {
        // SAFETY: called before the runtime and any other thread start.
        unsafe { std::env::remove_var(var) };
    }
    fds.into_iter().map(|(fd, name)| from_fd(fd, &name).map_err(Error::Systemd)).collect()
}

fn from_fd(fd: RawFd, name: &str) -> Result<Activated, String> {
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: getsockname writes at most `len` bytes into `addr`.
    let rc = unsafe { libc::getsockname(fd, (&mut addr as *mut libc::sockaddr_storage).cast(), &mut len) };
    if rc != 0 {
        return Err(format!(
            "socket activation: fd {fd} ({name}) is not a socket: {}",
            std::io::Error::last_os_error()
        ));
    }
    let protocol = if name == "resp" { Protocol::Resp } else { Protocol::Tarpc };
    match addr.ss_family as i32 {
        libc::AF_UNIX => {
            // SAFETY: systemd hands us ownership of the listening socket.
            let l = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
            l.set_nonblocking(true).map_err(|e| e.to_string())?;
            let path = l.local_addr().ok().and_then(|a| a.as_pathname().map(|p| p.to_path_buf())).unwrap_or_default();
            Ok(Activated::Unix(l, path, protocol))
        }
        libc::AF_INET | libc::AF_INET6 => {
            // SAFETY: as above.
            let l = unsafe { std::net::TcpListener::from_raw_fd(fd) };
            l.set_nonblocking(true).map_err(|e| e.to_string())?;
            Ok(Activated::Tcp(l, protocol))
        }
        other => {
            Err(format!("socket activation: fd {fd} ({name}) has address family {other}; use TCP or unix sockets"))
        }
    }
}

pub fn notify(states: &[NotifyState]) {
    let _ = sd_notify::notify(states);
}

/// While the daemon runs: `STATUS=` with the cache's size every few seconds
/// and, when systemd asks for a watchdog, `WATCHDOG=1` at half its period.
/// Both go through the engine, so a stuck engine stops the pings and
/// systemd restarts the service.
pub async fn heartbeat(engine: Handle, connections: Arc<std::sync::atomic::AtomicU64>) {
    let watchdog = sd_notify::watchdog_enabled();
    let period = watchdog.map_or(Duration::from_secs(10), |d| (d / 2).min(Duration::from_secs(10)));
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        let reply = tokio::time::timeout(period, engine.call(Command::Stats)).await;
        if let Ok(Ok(Reply::Stats(s))) = reply {
            let status = format!(
                "{} entries, {} bytes of memory, {} connections",
                s.entries,
                s.memory_bytes,
                connections.load(std::sync::atomic::Ordering::Relaxed)
            );
            if watchdog.is_some() {
                notify(&[NotifyState::Watchdog, NotifyState::Status(&status)]);
            } else {
                notify(&[NotifyState::Status(&status)]);
            }
        } else {
            tracing::error!("the engine did not answer within {period:?}; withholding the watchdog ping");
        }
    }
}

/// Formats log lines for the journal: a `<N>` syslog priority prefix and no
/// timestamp of our own (the journal adds one).
pub struct JournalFormat;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for JournalFormat
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let priority = match *event.metadata().level() {
            tracing::Level::ERROR => 3,
            tracing::Level::WARN => 4,
            tracing::Level::INFO => 6,
            tracing::Level::DEBUG | tracing::Level::TRACE => 7,
        };
        write!(writer, "<{priority}>")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}
