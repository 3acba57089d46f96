//! The `cachet` command line (feature "cli"). Values typed here are stored
//! as integers when they parse as one (so `cachet incr` works after
//! `cachet set n 5`), else as strings. The binary is a thin `main` over
//! [`run`], which tests call in-process.

use std::io::Write;
use std::time::Duration;

use crate::{Cache, Timeout};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cachet", version, about = "Talk to a cachetd server", allow_negative_numbers = true)]
struct Cli {
    /// Server address: HOST:PORT or unix:/path/to.sock.
    #[arg(long, env = "CACHET_SERVER", default_value = "127.0.0.1:7311")]
    server: String,
    /// Auth token, when the server requires one.
    #[arg(long, env = "CACHET_AUTH_TOKEN")]
    auth_token: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print a key's value (exit 1 if missing).
    Get { key: String },
    /// Store a value.
    Set {
        key: String,
        value: String,
        /// Seconds (fractions allowed), or "never"; default 300.
        #[arg(long)]
        timeout: Option<String>,
    },
    /// Store only if absent; prints true or false.
    Add {
        key: String,
        value: String,
        #[arg(long)]
        timeout: Option<String>,
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
        #[arg(long)]
        timeout: Option<String>,
    },
    /// Prints true if the key exists.
    Has { key: String },
    /// Remove everything.
    Clear,
    /// Print the server's counters.
    Stats,
}

/// The longest `--timeout` taken: far past any cache's horizon, and far
/// below where milliseconds since 1970 overflow.
const MAX_TIMEOUT: Duration = Duration::from_secs(10_000 * 365 * 86_400);

fn parse_timeout(t: Option<String>) -> Result<Timeout, String> {
    match t.as_deref() {
        None => Ok(Timeout::Default),
        Some("never") | Some("none") => Ok(Timeout::Never),
        Some(s) => s
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
            .and_then(|v| Duration::try_from_secs_f64(v).ok())
            .filter(|d| *d <= MAX_TIMEOUT)
            .map(Timeout::After)
            .ok_or_else(|| {
                format!(
                    "--timeout {s:?} is not a number of seconds from 0 to {} (about 10,000 years) or \"never\"",
                    MAX_TIMEOUT.as_secs()
                )
            }),
    }
}

#[derive(serde::Serialize)]
#[serde(untagged)]
enum Typed {
    Int(i64),
    Str(String),
}

fn typed(v: String) -> Typed {
    v.parse::<i64>().map(Typed::Int).unwrap_or(Typed::Str(v))
}

fn show(v: &rmpv::Value) -> String {
    match v {
        rmpv::Value::String(s) => s.as_str().map(str::to_owned).unwrap_or_else(|| format!("{v}")),
        other => format!("{other}"),
    }
}

/// Runs the command line `args` (program name first), writing results to
/// `out`; returns the exit code: 0 success, 1 key not found, 2 error (the
/// message is returned for the caller to print).
pub async fn run(args: impl IntoIterator<Item = String>, out: &mut (dyn Write + Send)) -> Result<u8, String> {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        // Asked for: printed to `out`, and a success.
        Err(e) if matches!(e.kind(), clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion) => {
            write!(out, "{e}").map_err(|e| format!("writing output: {e}"))?;
            return Ok(0);
        }
        Err(e) => return Err(e.to_string()),
    };
    execute(cli, out).await
}

async fn execute(cli: Cli, out: &mut (dyn Write + Send)) -> Result<u8, String> {
    let mut b = Cache::builder().server(&cli.server);
    if let Some(t) = cli.auth_token {
        b = b.auth_token(t);
    }
    let cache = b.connect().await.map_err(|e| e.to_string())?;
    let e = |e: crate::Error| e.to_string();
    match cli.cmd {
        Cmd::Get { key } => match cache.get::<rmpv::Value>(&key).await.map_err(e)? {
            Some(v) => say(out, show(&v))?,
            None => return Ok(1),
        },
        Cmd::Set { key, value, timeout } => {
            cache.set(&key, &typed(value)).timeout(parse_timeout(timeout)?).await.map_err(e)?;
        }
        Cmd::Add { key, value, timeout } => {
            say(out, cache.add(&key, &typed(value)).timeout(parse_timeout(timeout)?).await.map_err(e)?)?
        }
        Cmd::Delete { key } => say(out, cache.delete(&key).await.map_err(e)?)?,
        Cmd::Incr { key, delta } => say(out, cache.incr(&key).delta(delta.unwrap_or(1)).await.map_err(e)?)?,
        Cmd::Decr { key, delta } => say(out, cache.decr(&key).delta(delta.unwrap_or(1)).await.map_err(e)?)?,
        Cmd::Touch { key, timeout } => say(out, cache.touch(&key).timeout(parse_timeout(timeout)?).await.map_err(e)?)?,
        Cmd::Has { key } => say(out, cache.has_key(&key).await.map_err(e)?)?,
        Cmd::Clear => cache.clear().await.map_err(e)?,
        Cmd::Stats => {
            let s = cache.stats().await.map_err(e)?;
            for (name, v) in s.fields() {
                say(out, format!("{name} {v}"))?;
            }
        }
    }
    Ok(0)
}

fn say(out: &mut (dyn Write + Send), line: impl std::fmt::Display) -> Result<(), String> {
    writeln!(out, "{line}").map_err(|e| format!("writing output: {e}"))
}
