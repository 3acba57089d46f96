//! Configuration in one place: every option has a flag, a `CACHET_*`
//! environment variable and a key in the TOML config file. Flags and
//! environment win over the file; the file wins over the defaults below.

use std::path::PathBuf;

use cachet_storage::SyncPolicy;
use clap::{Parser, Subcommand};

use crate::error::Error;
use serde::Deserialize;

/// Where cachetd listens unless told otherwise: tarpc for the Rust client,
/// RESP for everything that speaks Redis.
pub const DEFAULT_LISTEN: [&str; 2] = ["127.0.0.1:7311", "resp://127.0.0.1:7379"];

#[derive(Parser, Debug)]
#[command(name = "cachetd", version, about = "cachet: a persistent cache daemon with Django's cache semantics")]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Option<Sub>,
    /// TOML config file; its keys are the long flag names with `_` for `-`.
    #[arg(long, env = "CACHET_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub opts: Options,
}

#[derive(Subcommand, Debug)]
pub enum Sub {
    /// Verify a data directory offline; exit 0 if it is sound.
    Check { dir: PathBuf },
    /// Cut a corrupt log back to its last good record (the damaged file is backed up).
    Repair { dir: PathBuf },
    /// Copy a running daemon's data directory into DEST, live: every write
    /// acknowledged before the backup starts is in it. DEST (new or empty)
    /// is then a data directory: `cachetd check DEST`, or serve it with
    /// `cachetd --data-dir DEST`.
    Backup {
        dest: PathBuf,
        /// The daemon's tarpc address: HOST:PORT or unix:/path.
        #[arg(long, env = "CACHET_SERVER", default_value = "127.0.0.1:7311")]
        server: String,
        /// The daemon's auth token file, if it requires one.
        #[arg(long, env = "CACHET_AUTH_TOKEN_FILE")]
        auth_token_file: Option<PathBuf>,
    },
}

/// Options as given on the command line or in the environment (all optional).
#[derive(clap::Args, Debug, Default, Clone)]
pub struct Options {
    /// Address to serve (repeatable): HOST:PORT or unix:/path (tarpc),
    /// resp://HOST:PORT or resp+unix:/path (Redis protocol), tls://HOST:PORT
    /// or resp+tls://HOST:PORT (the same over TLS)
    /// [default: 127.0.0.1:7311, resp://127.0.0.1:7379].
    #[arg(long, env = "CACHET_LISTEN", value_delimiter = ',')]
    pub listen: Vec<String>,
    /// Data directory [default: $STATE_DIRECTORY under systemd, else ./cachet-data].
    #[arg(long, env = "CACHET_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// When writes reach the disk: always (fsync before replying, group commit),
    /// everysec (at most ~1 s at risk on power loss), never [default: everysec].
    #[arg(long, env = "CACHET_SYNC")]
    pub sync: Option<SyncPolicy>,
    /// Memory cap for keys, values and per-entry overhead, e.g. 512MiB [default: unlimited].
    #[arg(long, env = "CACHET_MAX_MEMORY", value_parser = parse_bytes)]
    pub max_memory: Option<u64>,
    /// Cap on the number of entries [default: unlimited].
    #[arg(long, env = "CACHET_MAX_ENTRIES")]
    pub max_entries: Option<u64>,
    /// At max-memory/max-entries: s3fifo evicts (expired entries first),
    /// noeviction refuses writes with "cache full" [default: s3fifo].
    #[arg(long, env = "CACHET_EVICTION")]
    pub eviction: Option<cachet_storage::Eviction>,
    /// Compaction starts when the log is over twice the live data and over this size [default: 64MiB].
    #[arg(long, env = "CACHET_COMPACT_MIN_BYTES", value_parser = parse_bytes)]
    pub compact_min_bytes: Option<u64>,
    /// Longest key accepted, in bytes [default: 1024].
    #[arg(long, env = "CACHET_MAX_KEY_BYTES", value_parser = parse_bytes)]
    pub max_key_bytes: Option<u64>,
    /// Largest value accepted, e.g. 16MiB [default: 16MiB].
    #[arg(long, env = "CACHET_MAX_VALUE_BYTES", value_parser = parse_bytes)]
    pub max_value_bytes: Option<u64>,
    /// Log segment size before a new one starts [default: 64MiB].
    #[arg(long, env = "CACHET_SEGMENT_BYTES", value_parser = parse_bytes)]
    pub segment_bytes: Option<u64>,
    /// Most client connections at once [default: 10000].
    #[arg(long, env = "CACHET_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Most requests in flight per connection; with the largest values it bounds
    /// the replies a connection can make the daemon hold [default: 64].
    #[arg(long, env = "CACHET_MAX_IN_FLIGHT")]
    pub max_in_flight: Option<usize>,
    /// Threads that serve connections (the storage engine has its own)
    /// [default: the CPUs this process may run on, per its affinity mask].
    #[arg(long, env = "CACHET_IO_THREADS")]
    pub io_threads: Option<usize>,
    /// Require the token in this file from clients (Cache::builder().auth_token).
    /// Kept in a file so it never shows in `ps` [default: no auth].
    #[arg(long, env = "CACHET_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// Mode of unix socket files, in octal [default: 660].
    #[arg(long, env = "CACHET_UNIX_MODE")]
    pub unix_mode: Option<String>,
    /// Group to own unix socket files, so its members may connect [default: the daemon's].
    #[arg(long, env = "CACHET_UNIX_GROUP")]
    pub unix_group: Option<String>,
    /// Seconds a request frame may take to arrive whole before the connection
    /// is closed (stops clients that send half a frame and stall), 0.001 to
    /// 86400 [default: 10].
    #[arg(long, env = "CACHET_READ_TIMEOUT")]
    pub read_timeout: Option<f64>,
    /// Bytes of request frames being received across all connections; a
    /// frame that would pass it closes its connection [default: 256MiB, at
    /// least 4 maximum frames].
    #[arg(long, env = "CACHET_MAX_BUFFERED_REQUEST_BYTES", value_parser = parse_bytes)]
    pub max_buffered_request_bytes: Option<u64>,
    /// Bytes of replies one connection may have asked for and not read; a
    /// read past it gets an error [default: 64MiB, at least twice the
    /// largest value].
    #[arg(long, env = "CACHET_MAX_UNSENT_REPLY_BYTES", value_parser = parse_bytes)]
    pub max_unsent_reply_bytes: Option<u64>,
    /// The same across all connections [default: 512MiB].
    #[arg(long, env = "CACHET_MAX_UNSENT_REPLY_BYTES_TOTAL", value_parser = parse_bytes)]
    pub max_unsent_reply_bytes_total: Option<u64>,
    /// TLS certificate chain (PEM) for tls:// and resp+tls:// listeners.
    #[arg(long, env = "CACHET_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for the certificate.
    #[arg(long, env = "CACHET_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM): mutual TLS.
    #[arg(long, env = "CACHET_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics [default: off].
    #[arg(long, env = "CACHET_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Log requests that take longer than this many milliseconds (at most a
    /// line every 10 s); 0 turns it off [default: 100].
    #[arg(long, env = "CACHET_SLOW_REQUEST_MS")]
    pub slow_request_ms: Option<u64>,
    /// What to log: a tracing filter such as info, debug, or
    /// "info,cachet_storage=debug" [default: info,tarpc=warn].
    #[arg(long, env = "CACHET_LOG")]
    pub log: Option<String>,
    /// How log lines look: text, json (one object per line), journald
    /// (structured fields straight to the journal), or auto: journal-style
    /// lines under systemd, text elsewhere [default: auto].
    #[arg(long, env = "CACHET_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Auto,
    Text,
    Json,
    Journald,
}

/// The config file: the same keys as the flags.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileOptions {
    listen: Option<Vec<String>>,
    data_dir: Option<PathBuf>,
    sync: Option<String>,
    max_memory: Option<Size>,
    max_entries: Option<u64>,
    eviction: Option<String>,
    compact_min_bytes: Option<Size>,
    max_key_bytes: Option<Size>,
    max_value_bytes: Option<Size>,
    segment_bytes: Option<Size>,
    max_connections: Option<usize>,
    max_in_flight: Option<usize>,
    io_threads: Option<usize>,
    auth_token_file: Option<PathBuf>,
    unix_mode: Option<String>,
    unix_group: Option<String>,
    read_timeout: Option<f64>,
    max_buffered_request_bytes: Option<Size>,
    max_unsent_reply_bytes: Option<Size>,
    max_unsent_reply_bytes_total: Option<Size>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    metrics_listen: Option<String>,
    slow_request_ms: Option<u64>,
    log: Option<String>,
    log_format: Option<LogFormat>,
}

/// A byte size in the file: a number or a string like "64MiB".
#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum Size {
    Num(u64),
    Text(String),
}

impl Size {
    fn bytes(&self, key: &str) -> Result<u64, String> {
        match self {
            Size::Num(n) => Ok(*n),
            Size::Text(t) => parse_bytes(t).map_err(|e| format!("{key}: {e}")),
        }
    }
}

/// The resolved settings the daemon runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: Vec<String>,
    /// The listen options set by flag, environment or file (ignored, with
    /// a warning, under socket activation).
    pub listen_options_given: Vec<&'static str>,
    pub data_dir: PathBuf,
    pub sync: SyncPolicy,
    pub max_memory: Option<u64>,
    pub max_entries: Option<u64>,
    pub eviction: cachet_storage::Eviction,
    pub compact_min_bytes: u64,
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    pub segment_bytes: u64,
    pub max_connections: usize,
    pub max_in_flight: usize,
    pub io_threads: usize,
    pub auth_token: Option<String>,
    pub unix_mode: u32,
    pub unix_group: Option<String>,
    pub read_timeout: std::time::Duration,
    pub max_buffered_request_bytes: usize,
    pub max_unsent_reply_bytes: usize,
    pub max_unsent_reply_bytes_total: usize,
    /// Certificate, key and optional client CA, for TLS listeners.
    pub tls: Option<(PathBuf, PathBuf, Option<PathBuf>)>,
    pub metrics_listen: Option<String>,
    pub slow_request: std::time::Duration,
    /// The log filter.
    pub log: String,
    pub log_format: LogFormat,
}

/// The log filter unless `--log`/`CACHET_LOG` or the file sets one:
/// cachetd's own messages at `info`, tarpc's at `warn`, so tarpc does not
/// build a tracing span for every request (a profile at 50 connections
/// found it a measurable share of the daemon's CPU).
pub const DEFAULT_LOG: &str = "info,tarpc=warn";

/// Checks that `value` of option `name` lies in `lo..=hi`, with an error
/// that says the range.
fn in_range<T: PartialOrd + std::fmt::Display>(name: &str, value: T, lo: T, hi: T) -> Result<T, String> {
    if value < lo || value > hi {
        return Err(format!("{name} is {value}; it must be between {lo} and {hi}"));
    }
    Ok(value)
}

impl Settings {
    /// The settings from the config file, the environment and the flags,
    /// every value checked.
    pub fn resolve(config: Option<&PathBuf>, o: Options) -> Result<Settings, Error> {
        Settings::resolve_checked(config, o).map_err(Error::Config)
    }

    fn resolve_checked(config: Option<&PathBuf>, o: Options) -> Result<Settings, String> {
        let file: FileOptions = match config {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|e| format!("reading config {}: {e}", path.display()))?;
                toml::from_str(&text).map_err(|e| format!("config {}: {e}", path.display()))?
            }
            None => FileOptions::default(),
        };
        let size = |flag: Option<u64>, file: &Option<Size>, key: &str| -> Result<Option<u64>, String> {
            match (flag, file) {
                (Some(v), _) => Ok(Some(v)),
                (None, Some(s)) => s.bytes(key).map(Some),
                (None, None) => Ok(None),
            }
        };
        let sync = match (o.sync, file.sync) {
            (Some(s), _) => s,
            (None, Some(s)) => s.parse().map_err(|e| format!("sync: {e}"))?,
            (None, None) => SyncPolicy::EverySec,
        };
        let listen_options_given = [
            ("--listen", !o.listen.is_empty() || file.listen.as_ref().is_some_and(|l| !l.is_empty())),
            ("--unix-mode", o.unix_mode.is_some() || file.unix_mode.is_some()),
            ("--unix-group", o.unix_group.is_some() || file.unix_group.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, given)| given.then_some(name))
        .collect();
        let listen = if !o.listen.is_empty() {
            o.listen
        } else {
            file.listen.filter(|l| !l.is_empty()).unwrap_or_else(|| DEFAULT_LISTEN.map(String::from).to_vec())
        };
        let data_dir = o.data_dir.or(file.data_dir).unwrap_or_else(|| match std::env::var_os("STATE_DIRECTORY") {
            // systemd may pass several, colon-separated; the first is ours.
            Some(s) => PathBuf::from(s.to_string_lossy().split(':').next().unwrap_or_default()),
            None => PathBuf::from("cachet-data"),
        });
        let max_key_bytes = size(o.max_key_bytes, &file.max_key_bytes, "max_key_bytes")?.unwrap_or(1024);
        if max_key_bytes == 0 || max_key_bytes > cachet_storage::MAX_KEY_LEN as u64 {
            return Err(format!("max_key_bytes must be between 1 and {}", cachet_storage::MAX_KEY_LEN));
        }
        let max_value_bytes = size(o.max_value_bytes, &file.max_value_bytes, "max_value_bytes")?.unwrap_or(16 << 20);
        let max_value_bytes = in_range("max_value_bytes", max_value_bytes, 1, 1 << 30)?;
        let max_frame = cachet::protocol::server_max_frame(max_value_bytes as usize) as u64;
        let max_buffered_request_bytes =
            size(o.max_buffered_request_bytes, &file.max_buffered_request_bytes, "max_buffered_request_bytes")?
                .unwrap_or((256 << 20).max(4 * max_frame));
        let max_buffered_request_bytes =
            in_range("max_buffered_request_bytes", max_buffered_request_bytes, max_frame, 1 << 40)?;
        // One reply of the largest size must always fit.
        let max_reply = 2 * max_value_bytes;
        let max_unsent_reply_bytes =
            size(o.max_unsent_reply_bytes, &file.max_unsent_reply_bytes, "max_unsent_reply_bytes")?
                .unwrap_or((64 << 20).max(max_reply));
        let max_unsent_reply_bytes = in_range("max_unsent_reply_bytes", max_unsent_reply_bytes, max_reply, 1 << 40)?;
        let max_unsent_reply_bytes_total =
            size(o.max_unsent_reply_bytes_total, &file.max_unsent_reply_bytes_total, "max_unsent_reply_bytes_total")?
                .unwrap_or((512 << 20).max(max_unsent_reply_bytes));
        let max_unsent_reply_bytes_total =
            in_range("max_unsent_reply_bytes_total", max_unsent_reply_bytes_total, max_unsent_reply_bytes, 1 << 42)?;
        Ok(Settings {
            listen,
            listen_options_given,
            data_dir,
            sync,
            max_memory: size(o.max_memory, &file.max_memory, "max_memory")?
                .map(|m| in_range("max_memory", m, 4096, 1 << 50))
                .transpose()?,
            max_entries: o
                .max_entries
                .or(file.max_entries)
                .map(|n| in_range("max_entries", n, 1, 1 << 40))
                .transpose()?,
            eviction: match (o.eviction, file.eviction) {
                (Some(e), _) => e,
                (None, Some(e)) => e.parse().map_err(|e| format!("eviction: {e}"))?,
                (None, None) => cachet_storage::Eviction::S3Fifo,
            },
            compact_min_bytes: size(o.compact_min_bytes, &file.compact_min_bytes, "compact_min_bytes")?
                .unwrap_or(64 << 20),
            max_key_bytes: max_key_bytes as usize,
            max_value_bytes: max_value_bytes as usize,
            segment_bytes: in_range(
                "segment_bytes",
                size(o.segment_bytes, &file.segment_bytes, "segment_bytes")?.unwrap_or(64 << 20),
                4096,
                1 << 40,
            )?,
            max_connections: in_range(
                "max_connections",
                o.max_connections.or(file.max_connections).unwrap_or(10_000),
                1,
                1 << 20,
            )?,
            max_in_flight: in_range("max_in_flight", o.max_in_flight.or(file.max_in_flight).unwrap_or(64), 1, 65_536)?,
            io_threads: in_range(
                "io_threads",
                o.io_threads
                    .or(file.io_threads)
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from)),
                1,
                1024,
            )?,
            auth_token: match o.auth_token_file.or(file.auth_token_file) {
                Some(path) => {
                    let token = std::fs::read_to_string(&path)
                        .map_err(|e| format!("reading the auth token file {}: {e}", path.display()))?;
                    let token = token.trim().to_string();
                    if token.len() < 16 {
                        return Err(format!(
                            "the auth token in {} is {} characters; use at least 16 (e.g. `openssl rand -hex 32`)",
                            path.display(),
                            token.len()
                        ));
                    }
                    Some(token)
                }
                None => None,
            },
            unix_mode: {
                let m = o.unix_mode.or(file.unix_mode).unwrap_or_else(|| "660".into());
                u32::from_str_radix(m.trim_start_matches("0o"), 8)
                    .ok()
                    .filter(|m| *m <= 0o777)
                    .ok_or_else(|| format!("unix_mode {m:?} is not an octal mode like 660"))?
            },
            unix_group: o.unix_group.or(file.unix_group),
            read_timeout: {
                let secs = o.read_timeout.or(file.read_timeout).unwrap_or(10.0);
                // NaN fails both comparisons in `in_range`, so it is refused too.
                if secs.is_nan() {
                    return Err("read_timeout is not a number; it must be between 0.001 and 86400 seconds".into());
                }
                std::time::Duration::from_secs_f64(in_range("read_timeout", secs, 0.001, 86_400.0)?)
            },
            max_buffered_request_bytes: max_buffered_request_bytes as usize,
            max_unsent_reply_bytes: max_unsent_reply_bytes as usize,
            max_unsent_reply_bytes_total: max_unsent_reply_bytes_total as usize,
            tls: match (
                o.tls_cert.or(file.tls_cert),
                o.tls_key.or(file.tls_key),
                o.tls_client_ca.or(file.tls_client_ca),
            ) {
                (Some(cert), Some(key), ca) => Some((cert, key, ca)),
                (None, None, None) => None,
                _ => return Err("TLS needs both --tls-cert and --tls-key (--tls-client-ca is optional)".into()),
            },
            metrics_listen: o.metrics_listen.or(file.metrics_listen),
            slow_request: std::time::Duration::from_millis(in_range(
                "slow_request_ms",
                o.slow_request_ms.or(file.slow_request_ms).unwrap_or(100),
                0,
                86_400_000,
            )?),
            log: {
                let log = o.log.or(file.log).unwrap_or_else(|| DEFAULT_LOG.into());
                tracing_subscriber::EnvFilter::try_new(&log)
                    .map_err(|e| format!("log filter {log:?}: {e}; use e.g. info, debug or info,tarpc=warn"))?;
                log
            },
            log_format: o.log_format.or(file.log_format).unwrap_or_default(),
        })
    }
}

/// Parses `64MiB`, `1GiB`, `512k`, `100MB` or a plain number of bytes.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size; use e.g. 1048576, 64MiB or 1GiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        other => return Err(format!("unknown size unit {other:?} in {s:?}; use KiB, MiB, GiB (or KB, MB, GB)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("2 kb"), Ok(2000));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("5XB").unwrap_err().contains("unit"));
    }

    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "sync = \"always\"\nmax_value_bytes = \"1MiB\"\nlisten = [\"127.0.0.1:1\"]\n").unwrap();
        let s = Settings::resolve(Some(&path), Options::default()).unwrap();
        assert_eq!(
            (s.sync, s.max_value_bytes, s.listen.clone()),
            (SyncPolicy::Always, 1 << 20, vec!["127.0.0.1:1".to_string()])
        );
        let s =
            Settings::resolve(Some(&path), Options { sync: Some(SyncPolicy::Never), ..Options::default() }).unwrap();
        assert_eq!(s.sync, SyncPolicy::Never);
        std::fs::write(&path, "bogus = 1\n").unwrap();
        assert!(Settings::resolve(Some(&path), Options::default()).unwrap_err().to_string().contains("bogus"));
    }

    /// Every number from the command line is range-checked, with an error
    /// that says the range (`--read-timeout 1e30` used to panic, and
    /// `--max-connections 0` was accepted).
    #[test]
    fn numbers_out_of_range_are_refused_with_the_range() {
        let bad = [
            Options { read_timeout: Some(1e30), ..Options::default() },
            Options { read_timeout: Some(0.0), ..Options::default() },
            Options { read_timeout: Some(f64::NAN), ..Options::default() },
            Options { max_connections: Some(0), ..Options::default() },
            Options { max_in_flight: Some(0), ..Options::default() },
            Options { segment_bytes: Some(10), ..Options::default() },
            Options { max_entries: Some(0), ..Options::default() },
            Options { max_memory: Some(1), ..Options::default() },
            Options { max_value_bytes: Some(0), ..Options::default() },
            Options { max_unsent_reply_bytes: Some(1), ..Options::default() },
        ];
        for o in bad {
            let shown = format!("{o:?}");
            let e = Settings::resolve(None, o).unwrap_err();
            assert!(e.to_string().contains("between"), "{shown}: {e}");
        }
        let ok = Settings::resolve(None, Options { read_timeout: Some(86_400.0), ..Options::default() }).unwrap();
        assert_eq!(ok.read_timeout, std::time::Duration::from_secs(86_400));
    }
}
