//! The `cachet` command line (feature "cli"). Values typed here are stored
//! as integers when they parse as one (so `cachet incr` works after
//! `cachet set n 5`), else as strings; `--raw` stores and prints bytes
//! unchanged. The binary is a thin `main` over [`run`], which tests call
//! in-process.

use std::io::{Read, Write};
use std::time::Duration;

use crate::{Cache, Stats, Timeout};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cachet",
    about = "Talk to a cachetd server",
    disable_version_flag = true,
    allow_negative_numbers = true,
    after_help = "Keys are addressed as a Django application with the same KEY_PREFIX and VERSION stores them \
                  (PREFIX:VERSION:KEY, default \":1:KEY\").\n\
                  Environment: CACHET_SERVER, CACHET_AUTH_TOKEN, CACHET_PREFIX, and CACHET_LOG (a log filter such \
                  as \"debug\"; without it nothing is logged)."
)]
struct Cli {
    /// Server address: HOST:PORT or unix:/path/to.sock (several: repeat).
    #[arg(long, env = "CACHET_SERVER", default_value = "127.0.0.1:7311", value_delimiter = ',', global = true)]
    server: Vec<String>,
    /// Auth token, when the server requires one.
    #[arg(long, env = "CACHET_AUTH_TOKEN", global = true, hide_env_values = true)]
    auth_token: Option<String>,
    /// The key prefix an application uses (Django's KEY_PREFIX).
    #[arg(long, env = "CACHET_PREFIX", default_value = "", global = true)]
    prefix: String,
    /// With N: the key version an application uses (Django's VERSION,
    /// default 1). Alone: print cachet's version and exit.
    #[arg(long, short = 'V', value_name = "N", num_args = 0..=1, global = true)]
    version: Option<Option<i64>>,
    /// The database (keyspace) to use, 0 to 15, as RESP's SELECT numbers them.
    #[arg(long, default_value_t = 0, global = true)]
    db: u8,
    /// Values as bytes, unchanged: `set` stores the bytes given (not
    /// MessagePack), `get` prints the stored bytes with no newline added.
    #[arg(long, global = true)]
    raw: bool,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Args)]
struct Expiry {
    /// Seconds (fractions allowed), a duration such as 5m, 1h30m or 250ms,
    /// or "never"; default 300 s.
    #[arg(long)]
    timeout: Option<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print a key's value (exit 1 if missing).
    Get { key: String },
    /// Store a value ("-" reads it from stdin).
    Set {
        key: String,
        value: String,
        #[command(flatten)]
        expiry: Expiry,
    },
    /// Store only if absent ("-" reads stdin); prints true or false.
    Add {
        key: String,
        value: String,
        #[command(flatten)]
        expiry: Expiry,
    },
    /// Delete a key; prints true if it existed.
    Delete { key: String },
    /// Add to an integer; prints the new value.
    #[command(allow_negative_numbers = true)]
    Incr { key: String, delta: Option<i64> },
    /// Subtract from an integer; prints the new value.
    #[command(allow_negative_numbers = true)]
    Decr { key: String, delta: Option<i64> },
    /// Set a new timeout on a key; prints true if it existed.
    Touch {
        key: String,
        #[command(flatten)]
        expiry: Expiry,
    },
    /// Prints true if the key exists.
    Has { key: String },
    /// Print the seconds a key has left, or "never" (exit 1 if missing).
    Ttl { key: String },
    /// Remove everything.
    Clear,
    /// Print the server's counters.
    Stats {
        /// As one JSON object: {"total": {...}, "per_server": {"ADDR": {...}}}.
        #[arg(long, conflicts_with = "watch")]
        json: bool,
        /// A line of figures every interval, as `redis-cli --stat` does.
        #[arg(long)]
        watch: bool,
        /// Seconds between lines of --watch (fractions allowed, or 5s, 1m).
        #[arg(long, default_value = "1", requires = "watch")]
        interval: String,
        /// Stop --watch after this many lines (default: until interrupted).
        #[arg(long, requires = "watch")]
        count: Option<u64>,
    },
    /// Check that every server answers; prints PONG and the round trip.
    Ping,
    /// Print each server's version and limits, then its counters.
    Info,
}

/// The longest `--timeout` taken: far past any cache's horizon, and far
/// below where milliseconds since 1970 overflow.
const MAX_TIMEOUT: Duration = Duration::from_secs(10_000 * 365 * 86_400);

/// Seconds (`1.5`), a humantime duration (`5m`, `1h30m`, `250ms`), within
/// `MAX_TIMEOUT`.
fn parse_duration(s: &str, what: &str) -> Result<Duration, String> {
    let d = match s.parse::<f64>() {
        Ok(v) => Some(v).filter(|v| v.is_finite() && *v >= 0.0).and_then(|v| Duration::try_from_secs_f64(v).ok()),
        Err(_) => humantime::parse_duration(s).ok(),
    };
    d.filter(|d| *d <= MAX_TIMEOUT).ok_or_else(|| {
        format!(
            "{what} {s:?} is not a duration from 0 to {} seconds (about 10,000 years): give seconds (1.5) or \
             a duration such as 5m, 1h30m or 250ms",
            MAX_TIMEOUT.as_secs()
        )
    })
}

fn parse_timeout(expiry: &Expiry) -> Result<Timeout, String> {
    match expiry.timeout.as_deref() {
        None => Ok(Timeout::Default),
        Some("never") | Some("none") => Ok(Timeout::Never),
        Some(s) => parse_duration(s, "--timeout").map(Timeout::After),
    }
}

#[derive(serde::Serialize)]
#[serde(untagged)]
enum Typed {
    Int(i64),
    Str(String),
    Bytes(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// A value as typed: an integer if it parses as one, else a string (bytes
/// that are not UTF-8 stay bytes).
fn typed(v: Vec<u8>) -> Typed {
    match String::from_utf8(v) {
        Ok(s) => s.parse::<i64>().map(Typed::Int).unwrap_or(Typed::Str(s)),
        Err(e) => Typed::Bytes(e.into_bytes()),
    }
}

/// The VALUE argument's bytes: "-" reads stdin (to its end). Without
/// `--raw` one trailing newline is dropped, as `$(…)` in a shell does, so
/// `echo 5 | cachet set n -` stores the integer 5.
fn value_bytes(value: String, raw: bool, stdin: &mut dyn Read) -> Result<Vec<u8>, String> {
    if value != "-" {
        return Ok(value.into_bytes());
    }
    let mut buf = Vec::new();
    stdin.read_to_end(&mut buf).map_err(|e| format!("reading the value from stdin: {e}"))?;
    if !raw {
        if buf.ends_with(b"\r\n") {
            buf.truncate(buf.len() - 2);
        } else if buf.ends_with(b"\n") {
            buf.pop();
        }
    }
    Ok(buf)
}

fn show(v: &rmpv::Value) -> String {
    match v {
        rmpv::Value::String(s) => s.as_str().map(str::to_owned).unwrap_or_else(|| format!("{v}")),
        other => format!("{other}"),
    }
}

/// Runs the command line `args` (program name first), reading a "-" value
/// from `stdin` and writing results to `out`; returns the exit code: 0
/// success, 1 key not found, 2 error (the message is returned for the
/// caller to print).
pub async fn run(
    args: impl IntoIterator<Item = String>,
    stdin: &mut (dyn Read + Send),
    out: &mut (dyn Write + Send),
) -> Result<u8, String> {
    let mut cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        // Asked for: printed to `out`, and a success.
        Err(e) if matches!(e.kind(), clap::error::ErrorKind::DisplayHelp) => {
            write!(out, "{e}").map_err(|e| format!("writing output: {e}"))?;
            return Ok(0);
        }
        // One prefix for every error: the binary prints "cachet: ".
        Err(e) => return Err(e.to_string().trim_start_matches("error: ").trim_end().to_owned()),
    };
    let cmd = match (cli.version, cli.cmd.take()) {
        (Some(None), None) => {
            say(out, format!("cachet {}", env!("CARGO_PKG_VERSION")))?;
            return Ok(0);
        }
        (Some(None), Some(_)) => {
            return Err("--version takes the key version N when a command follows (--version 2 get KEY); \
                        alone it prints cachet's version"
                .into());
        }
        (_, None) => {
            return Err("a command is needed: get, set, add, delete, incr, decr, touch, has, ttl, clear, \
                                 stats, ping or info (see --help)"
                .into());
        }
        (_, Some(cmd)) => cmd,
    };
    execute(&cli, cmd, stdin, out).await
}

async fn execute(
    cli: &Cli,
    cmd: Cmd,
    stdin: &mut (dyn Read + Send),
    out: &mut (dyn Write + Send),
) -> Result<u8, String> {
    let mut b = Cache::builder().key_prefix(&cli.prefix).database(cli.db);
    for s in &cli.server {
        b = b.server(s);
    }
    if let Some(Some(v)) = cli.version {
        b = b.version(v);
    }
    if let Some(t) = &cli.auth_token {
        b = b.auth_token(t);
    }
    let cache = b.connect().await.map_err(|e| e.to_string())?;
    let e = |e: crate::Error| e.to_string();
    let raw = cli.raw;
    if raw && !matches!(cmd, Cmd::Get { .. } | Cmd::Set { .. }) {
        return Err("--raw applies to get and set".into());
    }
    match cmd {
        Cmd::Get { key } if raw => match cache.get_raw(&key).await.map_err(e)? {
            Some(v) => out.write_all(&v).and_then(|_| out.flush()).map_err(|e| format!("writing output: {e}"))?,
            None => return Ok(1),
        },
        Cmd::Get { key } => match cache.get::<rmpv::Value>(&key).await.map_err(e)? {
            Some(v) => say(out, show(&v))?,
            None => return Ok(1),
        },
        Cmd::Set { key, value, expiry } => {
            let timeout = parse_timeout(&expiry)?;
            let bytes = value_bytes(value, raw, stdin)?;
            let set = if raw { cache.set_raw(&key, bytes) } else { cache.set(&key, &typed(bytes)) };
            set.timeout(timeout).await.map_err(e)?;
        }
        Cmd::Add { key, value, expiry } => {
            let timeout = parse_timeout(&expiry)?;
            let value = typed(value_bytes(value, raw, stdin)?);
            say(out, cache.add(&key, &value).timeout(timeout).await.map_err(e)?)?
        }
        Cmd::Delete { key } => say(out, cache.delete(&key).await.map_err(e)?)?,
        Cmd::Incr { key, delta } => say(out, cache.incr(&key).delta(delta.unwrap_or(1)).await.map_err(e)?)?,
        Cmd::Decr { key, delta } => say(out, cache.decr(&key).delta(delta.unwrap_or(1)).await.map_err(e)?)?,
        Cmd::Touch { key, expiry } => say(out, cache.touch(&key).timeout(parse_timeout(&expiry)?).await.map_err(e)?)?,
        Cmd::Has { key } => say(out, cache.has_key(&key).await.map_err(e)?)?,
        Cmd::Ttl { key } => match cache.ttl(&key).await.map_err(e)? {
            None => return Ok(1),
            Some(Timeout::After(left)) => say(out, format!("{:.3}", left.as_secs_f64()))?,
            Some(_) => say(out, "never")?,
        },
        Cmd::Clear => cache.clear().await.map_err(e)?,
        Cmd::Stats { json: true, .. } => say(out, stats_json(&cache.stats().await.map_err(e)?))?,
        Cmd::Stats { watch: true, interval, count, .. } => {
            let interval = parse_duration(&interval, "--interval")?.max(Duration::from_millis(10));
            watch(&cache, interval, count, out).await?
        }
        Cmd::Stats { .. } => {
            for (name, v) in cache.stats().await.map_err(e)?.fields() {
                say(out, format!("{name} {v}"))?;
            }
        }
        Cmd::Ping => {
            let rtt = cache.ping().await.map_err(e)?;
            say(out, format!("PONG {:.3} ms", rtt.as_secs_f64() * 1e3))?
        }
        Cmd::Info => {
            for (addr, info) in cache.server_info().await.map_err(e)? {
                say(out, format!("# server {addr}"))?;
                say(out, format!("version {}", info.version))?;
                say(out, format!("max_key_bytes {}", info.max_key_bytes))?;
                say(out, format!("max_value_bytes {}", info.max_value_bytes))?;
            }
            let stats = cache.stats().await.map_err(e)?;
            for (addr, s) in &stats.per_server {
                say(out, format!("# stats {addr}"))?;
                for (name, v) in s.fields() {
                    say(out, format!("{name} {v}"))?;
                }
            }
        }
    }
    Ok(0)
}

fn stats_json(stats: &Stats) -> String {
    let object = |s: &crate::protocol::WireStats| {
        serde_json::Value::Object(s.fields().into_iter().map(|(k, v)| (k.to_owned(), v.into())).collect())
    };
    let per_server: serde_json::Map<String, serde_json::Value> =
        stats.per_server.iter().map(|(addr, s)| (addr.clone(), object(s))).collect();
    serde_json::json!({ "total": object(&stats.total), "per_server": per_server }).to_string()
}

/// `stats --watch`: a header, then one line per interval with the figures
/// and the operations per second since the line before.
async fn watch(
    cache: &Cache,
    interval: Duration,
    count: Option<u64>,
    out: &mut (dyn Write + Send),
) -> Result<(), String> {
    say(
        out,
        format!("{:>12} {:>12} {:>12} {:>12} {:>10} {:>6}", "entries", "memory", "hits", "misses", "ops/s", "conns"),
    )?;
    let ops = |s: &Stats| s.hits + s.misses + s.sets + s.deletes;
    let mut before: Option<(Stats, std::time::Instant)> = None;
    let mut lines = 0;
    while count.is_none_or(|n| lines < n) {
        if before.is_some() {
            tokio::time::sleep(interval).await;
        }
        let s = cache.stats().await.map_err(|e| e.to_string())?;
        let now = std::time::Instant::now();
        let rate = match &before {
            Some((b, at)) => format!("{:.0}", ops(&s).saturating_sub(ops(b)) as f64 / (now - *at).as_secs_f64()),
            None => "-".into(),
        };
        say(
            out,
            format!(
                "{:>12} {:>12} {:>12} {:>12} {:>10} {:>6}",
                s.entries, s.memory_bytes, s.hits, s.misses, rate, s.connections
            ),
        )?;
        out.flush().map_err(|e| format!("writing output: {e}"))?;
        before = Some((s, now));
        lines += 1;
    }
    Ok(())
}

fn say(out: &mut (dyn Write + Send), line: impl std::fmt::Display) -> Result<(), String> {
    writeln!(out, "{line}").map_err(|e| format!("writing output: {e}"))
}
