//! systemd integration: socket activation, readiness and status, the
//! watchdog, and log lines the journal understands.

use std::os::fd::{BorrowedFd, FromRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use cachet_storage::{Command, Handle, Reply};
use sd_notify::NotifyState;

use crate::error::Error;
use crate::listen::{Bound, Protocol};

/// Listeners passed by systemd (`LISTEN_FDS`), if any: TCP and unix
/// sockets. A socket named `resp` (`FileDescriptorName=resp`) speaks RESP;
/// any other, tarpc. The variables are cleared, as they are for us alone, not for
/// anything we might start.
///
/// # Safety
/// Edits the environment: call before any other thread starts.
pub unsafe fn activated_listeners() -> Result<Vec<Bound>, Error> {
    // SAFETY: the caller runs this before any other thread exists.
    let fds = unsafe { sd_notify::listen_fds_with_names_and_unset_env() }
        .map_err(|e| Error::Systemd(format!("LISTEN_FDS: {e}")))?;
    fds.map(|(fd, name)| from_fd(fd, &name).map_err(Error::Systemd)).collect()
}

fn from_fd(fd: RawFd, name: &str) -> Result<Bound, String> {
    // SAFETY: systemd passed this descriptor to us; it stays open while we
    // look at it.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let sock = socket2::SockRef::from(&borrowed);
    let not_a_listener =
        |what: String| format!("socket activation: fd {fd} ({name}) {what}; pass a ListenStream socket");
    let addr = sock.local_addr().map_err(|e| not_a_listener(format!("is not a socket ({e})")))?;
    match sock.r#type() {
        Ok(t) if t == socket2::Type::STREAM => {}
        _ => return Err(not_a_listener("is not a stream socket".into())),
    }
    let protocol = if name == "resp" { Protocol::Resp } else { Protocol::Tarpc };
    if addr.is_unix() {
        // SAFETY: systemd hands us ownership of the listening socket.
        let l = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
        l.set_nonblocking(true).map_err(|e| e.to_string())?;
        let path = l.local_addr().ok().and_then(|a| a.as_pathname().map(|p| p.to_path_buf())).unwrap_or_default();
        // systemd created the socket file and removes it: not ours to delete.
        Ok(Bound::Unix(l, path, false, protocol))
    } else if addr.is_ipv4() || addr.is_ipv6() {
        // SAFETY: as above.
        let l = unsafe { std::net::TcpListener::from_raw_fd(fd) };
        l.set_nonblocking(true).map_err(|e| e.to_string())?;
        Ok(Bound::Tcp(l, protocol, false))
    } else {
        Err(not_a_listener(format!("has address family {}", addr.family())))
    }
}

/// How much longer than now systemd should wait for READY=1 after each
/// replay progress report (reports come every 64 MiB or million records).
pub const REPLAY_EXTEND_USEC: u32 = 120_000_000;

/// The replay's progress for `STATUS=` and the log: percent, bytes, rate.
pub fn replay_status(done: u64, total: u64, records: u64, elapsed: Duration) -> String {
    let pct = (done * 100).checked_div(total).unwrap_or(100);
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let rate = mib(done) / elapsed.as_secs_f64().max(1e-3);
    format!("replay {pct}%: {:.0} of {:.0} MiB, {records} records, {rate:.0} MiB/s", mib(done), mib(total))
}

pub fn notify(states: &[NotifyState]) {
    let _ = sd_notify::notify(states);
}

/// While the daemon runs: `STATUS=` with the cache's size every few seconds
/// and, when systemd asks for a watchdog, `WATCHDOG=1` at half its period.
/// Both go through the engine, so a stuck engine stops the pings and
/// systemd restarts the service. Returns if the engine has stopped for good
/// (an internal error; every request now fails): the daemon then exits with
/// an error, whether or not a watchdog is watching, so a service manager
/// restarts it and replay brings back every acknowledged write.
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
        } else if let Ok(Err(cachet_storage::Error::Closed)) = reply {
            tracing::error!(
                "the storage engine has stopped after an internal error (see the log above); \
                 exiting so that cachetd is restarted, and its log replayed"
            );
            return;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Once the engine has stopped for good, the heartbeat returns (and the
    /// daemon exits) instead of withholding pings forever.
    #[test]
    fn the_heartbeat_ends_when_the_engine_has_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let engine = cachet_storage::Engine::open(cachet_storage::Config::new(dir.path())).unwrap();
        let handle = engine.handle();
        engine.shutdown().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let connections = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let ended =
            rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), heartbeat(handle, connections)).await });
        assert!(ended.is_ok(), "the heartbeat went on after the engine stopped");
    }
}
