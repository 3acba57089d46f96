//! The daemon's log: where lines go and how they look (`--log-format`),
//! what is logged (`--log`, changeable at run time by a reload).

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

use crate::config::LogFormat;
use crate::systemd;

static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

type Base = tracing_subscriber::layer::Layered<reload::Layer<EnvFilter, Registry>, Registry>;

/// Installs the log with `filter` (already checked) and `format`.
pub fn init(filter: &str, format: LogFormat) {
    let (filter_layer, handle) = reload::Layer::new(EnvFilter::new(filter));
    let _ = FILTER.set(handle);
    // Colour only on a terminal, and never with NO_COLOR set: a log file or
    // a pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let text = || tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi).boxed();
    // The journal stamps lines itself and reads `<N>` as the priority.
    let journal_lines = || {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .event_format(systemd::JournalFormat)
            .boxed()
    };
    let mut fallback = None;
    let output: Box<dyn Layer<Base> + Send + Sync> = match format {
        LogFormat::Text => text(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Journald => match tracing_journald::layer() {
            Ok(l) => l.with_syslog_identifier("cachetd".into()).boxed(),
            Err(e) => {
                fallback = Some(e);
                journal_lines()
            }
        },
        LogFormat::Auto if std::env::var_os("JOURNAL_STREAM").is_some() => journal_lines(),
        LogFormat::Auto => text(),
    };
    tracing_subscriber::registry().with(filter_layer).with(output).init();
    if let Some(e) = fallback {
        tracing::warn!("--log-format journald: the journal's socket cannot be used ({e}); logging lines to stderr");
    }
}

/// Replaces the log filter (a reload); the caller has checked it.
pub fn set_filter(filter: &str) -> Result<(), String> {
    let handle = FILTER.get().ok_or("the log is not set up")?;
    let parsed = EnvFilter::try_new(filter).map_err(|e| format!("log filter {filter:?}: {e}"))?;
    handle.reload(parsed).map_err(|e| format!("changing the log filter: {e}"))
}
