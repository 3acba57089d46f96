//! `cachetd`: opens (replays) the data directory, serves the cache over
//! tarpc on TCP and unix sockets, and on SIGTERM/SIGINT stops accepting,
//! lets in-flight requests finish, syncs the log and exits 0.
//!
//! mimalloc is the allocator (per-request buffers are its work now that
//! items live in the arena). It is built with `no_thp`: advised into
//! transparent huge pages, its heap (slab, timers, queues) kept whole 2 MiB
//! pages resident around what it had freed or barely touched, 15 MB more
//! RSS at 1M keys with a TTL. The item arena and the hash table do not
//! advise huge pages either (see `arena::PAGE_BYTES` in cachet-storage).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod config;
mod error;
mod front;
mod listen;
mod logging;
mod metrics;
mod reload;
mod shared;
mod systemd;
mod tls;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cachet_storage::{Config as EngineConfig, Engine, Limits as EngineLimits};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

use config::{Cli, LogFormat, Settings, Sub};
use reload::Reload;

/// The log filter for the subcommands and for a configuration that does
/// not resolve: `CACHET_LOG` if it is a valid filter, else the default.
fn default_log() -> String {
    std::env::var("CACHET_LOG")
        .ok()
        .filter(|f| tracing_subscriber::EnvFilter::try_new(f).is_ok())
        .unwrap_or_else(|| config::DEFAULT_LOG.into())
}
use error::{Error, Result};
use listen::{Bound, Limits};
use shared::{ServerSettings, Shared};

/// Panics caught at a connection (a frame whose decoding panics) are
/// reported once per 10 s, so hostile input cannot flood the log.
fn quiet_panics() {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if now >= LAST.load(Ordering::Relaxed) + 10 {
            LAST.store(now, Ordering::Relaxed);
            default(info);
        }
    }));
}

fn main() -> ExitCode {
    ignore_reload_signals();
    quiet_panics();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Some(Sub::Check { dir }) => {
            logging::init(&default_log(), LogFormat::Auto);
            check(&dir)
        }
        Some(Sub::Repair { dir }) => {
            logging::init(&default_log(), LogFormat::Auto);
            repair(&dir)
        }
        Some(Sub::Backup { dest, server, auth_token_file }) => {
            logging::init(&default_log(), LogFormat::Auto);
            backup(&dest, &server, auth_token_file.as_deref())
        }
        None => {
            let reload = Reload { config: cli.config.clone(), opts: cli.opts.clone() };
            match Settings::resolve(cli.config.as_ref(), cli.opts) {
                Ok(s) => {
                    logging::init(&s.log, s.log_format);
                    run(s, reload)
                }
                Err(e) => {
                    logging::init(&default_log(), LogFormat::Auto);
                    Err(e)
                }
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            // Once: to the journal with its priority, else as a plain line
            // (which a log filter cannot hide).
            if std::env::var_os("JOURNAL_STREAM").is_some() {
                tracing::error!("{msg}");
            } else {
                eprintln!("cachetd: {msg}");
            }
            ExitCode::FAILURE
        }
    }
}

/// SIGHUP, SIGUSR1 and SIGUSR2 would end the process by default (an
/// operator's `systemctl reload` or `kill -HUP` would drop the cache without a
/// clean shutdown). They are ignored from the first instruction, through the
/// replay; once serving, SIGHUP reloads (see `reload`) and the others are
/// logged.
fn signal_error(e: std::io::Error) -> Error {
    Error::Runtime(format!("installing a signal handler: {e}"))
}

fn ignore_reload_signals() {
    for sig in [libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2] {
        // SAFETY: setting a signal's disposition to SIG_IGN installs no
        // handler code; it is done before any other thread starts.
        unsafe {
            libc::signal(sig, libc::SIG_IGN);
        }
    }
}

fn check(dir: &std::path::Path) -> Result<()> {
    let report = cachet_storage::check(dir)?;
    let r = &report.replay;
    println!(
        "{}: sound: {} segments, {} records, {} bytes ({} live, {} dead), last sequence {}, {} live entries, {} expired",
        dir.display(),
        r.segments,
        r.records,
        r.bytes,
        report.live_bytes,
        report.dead_bytes,
        r.last_seq,
        report.live_entries,
        report.expired_entries
    );
    if let Some(t) = &r.torn {
        println!(
            "torn write at the end of {} (offset {}, {} bytes): opening cuts it off (and saves it aside)",
            t.file.display(),
            t.offset,
            t.bytes_dropped
        );
    }
    for stray in &r.strays {
        println!("ignored (not a segment name in the canonical form): {}", stray.display());
    }
    Ok(())
}

fn backup(dest: &std::path::Path, server: &str, token_file: Option<&std::path::Path>) -> Result<()> {
    let token = match token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| Error::Config(format!("reading the auth token file {}: {e}", path.display())))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Runtime(format!("starting the async runtime: {e}")))?;
    let started = Instant::now();
    let bytes = rt
        .block_on(async {
            let mut b = cachet::Cache::builder().server(server).request_timeout(Duration::from_secs(60));
            if let Some(t) = token {
                b = b.auth_token(t);
            }
            b.connect().await?.backup(dest).await
        })
        .map_err(|e| Error::Runtime(format!("backup of {server} into {}: {e}", dest.display())))?;
    let report = cachet_storage::check(dest)?;
    println!(
        "{}: a backup of {server}: {bytes} bytes in {} segments, {} live entries, in {:.1} s; it checks sound \
         (serve it with `cachetd --data-dir {}`)",
        dest.display(),
        report.replay.segments,
        report.live_entries,
        started.elapsed().as_secs_f64(),
        dest.display()
    );
    Ok(())
}

fn repair(dir: &std::path::Path) -> Result<()> {
    let report = cachet_storage::repair(dir)?;
    if !report.changed() {
        println!("{}: the log is sound; nothing changed", dir.display());
    }
    if let Some(problem) = &report.manifest_rebuilt {
        println!("rebuilt the MANIFEST from the segments present (it was wrong: {problem})");
    }
    for moved in &report.moved_aside {
        println!("moved aside (not part of the log): {}", moved.display());
    }
    for stray in &report.strays {
        println!("left alone (not a segment name in the canonical form): {}", stray.display());
    }
    match report.cut {
        None => {}
        Some(c) => {
            if let Some(why) = &c.in_place {
                println!("{why}: no backup of the dropped bytes was kept");
            }
            println!(
                "cut {} back to offset {} (last good sequence {}), dropping {} bytes",
                c.file.display(),
                c.offset,
                c.last_good_seq,
                c.bytes_dropped
            );
            for b in c.backups {
                println!("backup: {}", b.display());
            }
        }
    }
    Ok(())
}

fn run(s: Settings, reload: Reload) -> Result<()> {
    let started = Instant::now();
    let engine_config = EngineConfig {
        sync: s.sync,
        segment_bytes: s.segment_bytes,
        compact_min_bytes: s.compact_min_bytes,
        limits: EngineLimits {
            max_key_bytes: s.max_key_bytes,
            max_value_bytes: s.max_value_bytes,
            max_memory: s.max_memory,
            max_entries: s.max_entries,
            eviction: s.eviction,
            // A reply must fit in a frame (`server_max_frame`), with room
            // left for the framing of each value.
            max_reply_bytes: s.max_value_bytes.saturating_mul(2),
        },
        ..EngineConfig::new(&s.data_dir)
    };
    tracing::info!(data_dir = %s.data_dir.display(), sync = %s.sync, "opening");
    // SAFETY: no other thread has started yet (the engine and the runtime
    // come below).
    let activated = unsafe { systemd::activated_listeners()? };
    // The TLS files are read before the replay too, so a bad one fails now.
    let tls = match &s.tls {
        Some((cert, key, ca)) => Some(tls::acceptor(cert, key, ca.as_deref())?),
        None => None,
    };
    // Bound before the replay, so a bad or busy address fails now.
    let bound = if activated.is_empty() {
        let perms = listen::UnixPerms { mode: s.unix_mode, group: s.unix_group.clone() };
        s.listen.iter().map(|addr| Bound::bind(addr, &perms)).collect::<Result<Vec<_>>>()?
    } else {
        tracing::info!("socket activation: serving {} listener(s) passed by systemd", activated.len());
        if !s.listen_options_given.is_empty() {
            tracing::warn!(
                "socket activation: ignoring {} (systemd's socket units decide where and how cachetd listens: \
                 edit ListenStream=, SocketMode= and SocketGroup= there)",
                s.listen_options_given.join(", ")
            );
        }
        activated
    };
    if tls.is_none() && bound.iter().any(Bound::is_tls) {
        return Err(Error::Config("a tls:// or resp+tls:// listener needs --tls-cert and --tls-key".into()));
    }
    systemd::notify(&[
        sd_notify::NotifyState::Status("replaying the log"),
        sd_notify::NotifyState::ExtendTimeoutUsec(systemd::REPLAY_EXTEND_USEC),
    ]);
    let replay_started = Instant::now();
    let engine = Engine::open_with(engine_config, Arc::new(cachet_storage::SystemClock::new()), |p| {
        let status = systemd::replay_status(p.bytes_done, p.bytes_total, p.records, replay_started.elapsed());
        tracing::info!(records = p.records, bytes = p.bytes_done, "{status}");
        // Each report buys the start-up more time, so a long replay that
        // is moving is never killed by TimeoutStartSec; a stuck one is.
        systemd::notify(&[
            sd_notify::NotifyState::Status(&status),
            sd_notify::NotifyState::ExtendTimeoutUsec(systemd::REPLAY_EXTEND_USEC),
        ]);
    })?;
    let r = engine.replay_report();
    tracing::info!(segments = r.segments, records = r.records, bytes = r.bytes, ms = r.elapsed_ms, "replay done");

    // One network thread: the scheduler without work stealing, whose
    // wake-ups and task switches cost less.
    let mut builder = if s.io_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(s.io_threads);
        b
    };
    let rt = builder.enable_all().build().map_err(|e| Error::Runtime(format!("starting the async runtime: {e}")))?;
    let replay = Duration::from_millis(r.elapsed_ms);
    let outcome = rt.block_on(serve(s.clone(), reload, &engine, started, bound, tls, replay));
    drop(rt);
    let synced = engine.shutdown();
    outcome?;
    synced?;
    tracing::info!("stopped cleanly");
    Ok(())
}

async fn serve(
    s: Settings,
    reload: Reload,
    engine: &Engine,
    started: Instant,
    bound: Vec<Bound>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    replay: Duration,
) -> Result<()> {
    let settings = ServerSettings {
        sync: s.sync.to_string(),
        max_memory: std::sync::atomic::AtomicU64::new(s.max_memory.unwrap_or(0)),
        eviction: match s.eviction {
            cachet_storage::Eviction::S3Fifo => "s3fifo".into(),
            cachet_storage::Eviction::NoEviction => "noeviction".into(),
        },
    };
    let metrics = Arc::new(metrics::Metrics::new(s.slow_request, replay));
    let shared = Arc::new(Shared::new(
        engine.handle(),
        s.auth_token.clone(),
        s.max_key_bytes,
        s.max_value_bytes,
        settings,
        metrics,
    ));
    let metrics_addr = match &s.metrics_listen {
        Some(addr) => Some(metrics::http::serve(addr, shared.clone()).await?),
        None => None,
    };
    let listeners = bound.into_iter().map(|b| b.into_listener(tls.as_ref())).collect::<Result<Vec<_>>>()?;
    if s.auth_token.is_none() && listeners.iter().any(|(l, _)| l.is_exposed()) {
        tracing::warn!(
            "listening beyond loopback without authentication: anyone who can reach the port can read and change \
             the cache; set --auth-token-file, or listen on 127.0.0.1 or a unix socket"
        );
    }
    let addrs: Vec<String> = listeners
        .iter()
        .map(|(l, p)| p.describe(&l.describe(), matches!(l, listen::Listener::Tcp(_, Some(_)))))
        .collect();
    let sockets: Vec<_> = listeners.iter().filter_map(|(l, _)| l.socket_path()).collect();
    let limits = Limits {
        connections: Arc::new(tokio::sync::Semaphore::new(s.max_connections)),
        max_connections: s.max_connections,
        max_in_flight: s.max_in_flight,
        max_frame: cachet::protocol::server_max_frame(s.max_value_bytes),
        read_timeout: s.read_timeout,
        request_bytes: Arc::new(std::sync::atomic::AtomicI64::new(s.max_buffered_request_bytes as i64)),
        reply_bytes_per_connection: s.max_unsent_reply_bytes,
        reply_bytes: cachet_storage::ReplyBudget::shared(s.max_unsent_reply_bytes_total),
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let tasks: Vec<_> = listeners
        .into_iter()
        .map(|(l, p)| tokio::spawn(listen::accept_loop(l, p, shared.clone(), limits.clone(), stop_rx.clone())))
        .collect();
    // Handlers are in place before the ready line, so a signal sent once
    // the daemon says it is ready is never missed.
    let mut term = signal(SignalKind::terminate()).map_err(signal_error)?;
    let mut int = signal(SignalKind::interrupt()).map_err(signal_error)?;
    let mut hup = signal(SignalKind::hangup()).map_err(signal_error)?;
    let mut usr1 = signal(SignalKind::user_defined1()).map_err(signal_error)?;
    let mut usr2 = signal(SignalKind::user_defined2()).map_err(signal_error)?;
    // SIGHUP reloads what can change at run time; SIGUSR1/2 are logged.
    let shared_for_reload = shared.clone();
    let running = s.clone();
    let ignored = tokio::spawn(async move {
        let mut running = running;
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    reload.apply(&mut running, &shared_for_reload).await;
                }
                _ = usr1.recv() => tracing::warn!("SIGUSR1 received and ignored (SIGHUP reloads, SIGTERM stops)"),
                _ = usr2.recv() => tracing::warn!("SIGUSR2 received and ignored (SIGHUP reloads, SIGTERM stops)"),
            }
        }
    });
    let mut addrs = addrs;
    if let Some(a) = metrics_addr {
        addrs.push(format!("http://{a}/metrics"));
    }
    tracing::info!("ready: listening on {} ({} ms after start)", addrs.join(", "), started.elapsed().as_millis());
    systemd::notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status("ready")]);
    let mut heartbeat = tokio::spawn(systemd::heartbeat(engine.handle(), shared.connections_counter()));
    let backups = shared.clone();
    let backup_reaper = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            for id in backups.backups.expire(shared::BACKUP_IDLE) {
                tracing::warn!(
                    id,
                    "backup {id} went unread for {} s; its snapshot is released",
                    shared::BACKUP_IDLE.as_secs()
                );
            }
        }
    });

    let engine_stopped = tokio::select! {
        _ = term.recv() => false,
        _ = int.recv() => false,
        _ = &mut heartbeat => true,
    };
    tracing::info!("shutting down: no new connections; finishing requests in flight");
    heartbeat.abort();
    backup_reaper.abort();
    ignored.abort();
    systemd::notify(&[sd_notify::NotifyState::Stopping]);
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        eprintln!("cachetd: second signal, exiting at once");
        std::process::exit(1);
    });
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while shared.in_flight.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for p in sockets {
        let _ = std::fs::remove_file(p);
    }
    if engine_stopped {
        return Err(Error::Runtime("the storage engine stopped after an internal error".into()));
    }
    Ok(())
}
