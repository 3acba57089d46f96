//! `cachet-load`: end-to-end throughput and latency of cachet, or of Redis
//! with the identical workload, from one load generator.
//!
//! ```text
//! cachet-load --target cachet://127.0.0.1:7311 --connections 16 --depth 16 \
//!             --mix get:90,set:10 --dist zipf:0.99 --keys 1000000 --duration 10
//! cachet-load --target redis://127.0.0.1:6379 …same flags…
//! ```
//!
//! It reports; it never asserts. Output: a live progress line, then a table
//! and (with `--json FILE`) one JSON record per run appended to FILE with
//! ops/s, p50/p90/p99/p99.9/max per operation, errors by kind and the exact
//! configuration.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cachet::{Cache, Timeout};
use cachet_benches::{Rng, Zipf};
use clap::Parser;
use hdrhistogram::Histogram;
use serde_bytes::ByteBuf;

#[derive(Parser, Debug, Clone, serde::Serialize)]
#[command(name = "cachet-load", about = "Load generator for cachet (and Redis, for comparison)")]
struct Args {
    /// cachet://HOST:PORT, cachet://unix:/path, or redis://HOST:PORT.
    #[arg(long, default_value = "cachet://127.0.0.1:7311")]
    target: String,
    /// Client connections.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Requests in flight per connection (pipelining depth).
    #[arg(long, default_value_t = 1)]
    depth: usize,
    /// Seconds to measure (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Stop after this many measured requests instead.
    #[arg(long)]
    requests: Option<u64>,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Distinct keys.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Key distribution: uniform or zipf:S.
    #[arg(long, default_value = "uniform")]
    dist: String,
    /// Key length in bytes (as the application sees it).
    #[arg(long, default_value_t = 16)]
    key_size: usize,
    /// Value length in bytes.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Operation mix: get, set, incr, get_many:N, set_many:N with weights, e.g. get:90,set:10.
    #[arg(long, default_value = "get:90,set:10")]
    mix: String,
    /// TTL of writes (the preload's too, picked per batch of 100): never,
    /// SECONDS, or a weighted mix like never:50,60:50.
    #[arg(long, default_value = "never")]
    ttl: String,
    /// Fill this many keys (0..N) before the run.
    #[arg(long, default_value_t = 0)]
    preload: u64,
    /// Only fill the keys (`--preload N`), then exit without a run.
    #[arg(long)]
    only_preload: bool,
    /// Also write each operation's latency distribution as an HdrHistogram
    /// percentile file, `PREFIX-OP.hgrm` (microseconds; plot it with the
    /// HdrHistogram plotter).
    #[arg(long, value_name = "PREFIX")]
    hgrm: Option<std::path::PathBuf>,
    /// Append a JSON record of the run to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// A label for the JSON record.
    #[arg(long)]
    label: Option<String>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Runtime worker threads (default: available cores).
    #[arg(long)]
    threads: Option<usize>,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Op {
    Get,
    Set,
    Incr,
    GetMany(usize),
    SetMany(usize),
}

impl Op {
    fn name(self) -> String {
        match self {
            Op::Get => "get".into(),
            Op::Set => "set".into(),
            Op::Incr => "incr".into(),
            Op::GetMany(n) => format!("get_many:{n}"),
            Op::SetMany(n) => format!("set_many:{n}"),
        }
    }
}

fn parse_mix(s: &str) -> Result<Vec<(Op, u32)>, String> {
    s.split(',')
        .map(|part| {
            let bits: Vec<&str> = part.trim().split(':').collect();
            let (op, weight) = match bits.as_slice() {
                ["get", w] => (Op::Get, w),
                ["set", w] => (Op::Set, w),
                ["incr", w] => (Op::Incr, w),
                ["get_many", n, w] => (Op::GetMany(n.parse().map_err(|_| format!("bad N in {part}"))?), w),
                ["set_many", n, w] => (Op::SetMany(n.parse().map_err(|_| format!("bad N in {part}"))?), w),
                _ => return Err(format!("bad mix entry {part:?}; use e.g. get:90,set:10,get_many:10:5")),
            };
            Ok((op, weight.parse().map_err(|_| format!("bad weight in {part}"))?))
        })
        .collect()
}

fn parse_ttl(s: &str) -> Result<Vec<(Option<u64>, u32)>, String> {
    let one = |t: &str| -> Result<Option<u64>, String> {
        if t == "never" { Ok(None) } else { t.parse().map(Some).map_err(|_| format!("bad ttl {t:?}")) }
    };
    if !s.contains(':') {
        return Ok(vec![(one(s)?, 1)]);
    }
    s.split(',')
        .map(|p| {
            let (t, w) = p.split_once(':').ok_or(format!("bad ttl entry {p:?}"))?;
            Ok((one(t)?, w.parse().map_err(|_| format!("bad weight in {p:?}"))?))
        })
        .collect()
}

fn pick<T: Copy>(choices: &[(T, u32)], rng: &mut Rng) -> T {
    let total: u32 = choices.iter().map(|c| c.1).sum();
    let mut x = rng.below(total as u64) as u32;
    for &(c, w) in choices {
        if x < w {
            return c;
        }
        x -= w;
    }
    choices[choices.len() - 1].0
}

enum Keys {
    Uniform(u64),
    Zipf(Arc<Zipf>),
}

impl Keys {
    fn next(&self, rng: &mut Rng) -> u64 {
        match self {
            Keys::Uniform(n) => rng.below(*n),
            Keys::Zipf(z) => z.sample(rng.unit()) as u64,
        }
    }
}

fn key_name(i: u64, size: usize) -> String {
    let mut k = format!("k{i:0>width$}", width = size.saturating_sub(1));
    k.truncate(size.max(1));
    k
}

#[derive(Clone)]
enum Client {
    Cachet(Cache),
    Redis(redis::aio::MultiplexedConnection),
}

fn kind_of_cachet(e: &cachet::Error) -> String {
    format!("{e:?}").split(['(', ' ', '{']).next().unwrap_or("error").to_string()
}

impl Client {
    async fn connect(target: &str) -> Result<Client, String> {
        if let Some(addr) = target.strip_prefix("cachet://") {
            let c = Cache::builder().server(addr).request_timeout(Duration::from_secs(30)).connect().await;
            c.map(Client::Cachet).map_err(|e| e.to_string())
        } else if target.starts_with("redis://") {
            let client = redis::Client::open(target).map_err(|e| e.to_string())?;
            client.get_multiplexed_async_connection().await.map(Client::Redis).map_err(|e| e.to_string())
        } else {
            Err(format!("unknown target {target:?}; use cachet://HOST:PORT or redis://HOST:PORT"))
        }
    }

    /// Runs one operation; returns how many keys it looked up and how many
    /// of those were found (0, 0 for writes).
    async fn run(&mut self, op: Op, keys: &[String], value: &ByteBuf, ttl: Option<u64>) -> Result<Lookups, String> {
        let write = |r: Result<(), String>| r.map(|()| Lookups::default());
        match self {
            Client::Cachet(c) => {
                let t = ttl.map_or(Timeout::Never, |s| Timeout::After(Duration::from_secs(s)));
                let r = match op {
                    Op::Get => c.get::<ByteBuf>(&keys[0]).await.map(|v| Lookups::of(1, usize::from(v.is_some()))),
                    Op::Set => c.set(&keys[0], value).timeout(t).await.map(|()| Lookups::default()),
                    Op::Incr => match c.incr(&keys[0]).await {
                        Err(cachet::Error::NotFound) => {
                            c.add(&keys[0], &1i64).timeout(Timeout::Never).await.map(|_| Lookups::default())
                        }
                        r => r.map(|_| Lookups::default()),
                    },
                    Op::GetMany(_) => c.get_many::<ByteBuf>(keys).await.map(|m| Lookups::of(keys.len(), m.len())),
                    Op::SetMany(_) => {
                        c.set_many(keys.iter().map(|k| (k, value))).timeout(t).await.map(|_| Lookups::default())
                    }
                };
                r.map_err(|e| kind_of_cachet(&e))
            }
            Client::Redis(con) => {
                let kind = |e: redis::RedisError| format!("redis:{:?}", e.kind());
                match op {
                    Op::Get => redis::cmd("GET")
                        .arg(&keys[0])
                        .query_async::<Option<Vec<u8>>>(con)
                        .await
                        .map(|v| Lookups::of(1, usize::from(v.is_some())))
                        .map_err(kind),
                    Op::Set => {
                        let mut cmd = redis::cmd("SET");
                        cmd.arg(&keys[0]).arg(value.as_slice());
                        if let Some(s) = ttl {
                            cmd.arg("EX").arg(s);
                        }
                        write(cmd.query_async::<()>(con).await.map_err(kind))
                    }
                    Op::Incr => redis::cmd("INCR")
                        .arg(&keys[0])
                        .query_async::<i64>(con)
                        .await
                        .map(|_| Lookups::default())
                        .map_err(kind),
                    Op::GetMany(_) => redis::cmd("MGET")
                        .arg(keys)
                        .query_async::<Vec<Option<Vec<u8>>>>(con)
                        .await
                        .map(|vs| Lookups::of(vs.len(), vs.iter().filter(|v| v.is_some()).count()))
                        .map_err(kind),
                    Op::SetMany(_) => {
                        // MSET has no TTL; with a TTL, a pipeline of SET EX in one round trip.
                        let mut pipe = redis::pipe();
                        for k in keys {
                            let c = pipe.cmd("SET").arg(k).arg(value.as_slice());
                            if let Some(s) = ttl {
                                c.arg("EX").arg(s);
                            }
                        }
                        write(pipe.query_async::<()>(con).await.map_err(kind))
                    }
                }
            }
        }
    }
}

/// Keys looked up by reads, and how many were found (for the hit ratio).
#[derive(Clone, Copy, Debug, Default)]
struct Lookups {
    keys: u64,
    found: u64,
}

impl Lookups {
    fn of(keys: usize, found: usize) -> Lookups {
        Lookups { keys: keys as u64, found: found as u64 }
    }
}

struct Recorder {
    hist: HashMap<Op, Histogram<u64>>,
    errors: BTreeMap<String, u64>,
    lookups: Lookups,
}

impl Recorder {
    fn new() -> Recorder {
        Recorder { hist: HashMap::new(), errors: BTreeMap::new(), lookups: Lookups::default() }
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args = Args::parse();
    if let Some(t) = args.threads {
        // The flag is applied by re-running with the env var tokio reads.
        if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
            let status = std::process::Command::new(std::env::current_exe().unwrap())
                .args(std::env::args().skip(1))
                .env("TOKIO_WORKER_THREADS", t.to_string())
                .status()
                .unwrap();
            std::process::exit(status.code().unwrap_or(1));
        }
    }
    if let Err(e) = run(args).await {
        eprintln!("cachet-load: {e}");
        std::process::exit(2);
    }
}

async fn run(args: Args) -> Result<(), String> {
    if args.only_preload && args.preload == 0 {
        return Err("--only-preload needs --preload N".into());
    }
    if !args.only_preload
        && args.requests.is_none()
        && args.duration.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
    {
        return Err(format!(
            "--duration {} measures nothing; give a positive number of seconds (or --requests N), \
             or --preload N --only-preload to only fill the keys",
            args.duration
        ));
    }
    let mix = parse_mix(&args.mix)?;
    let ttls = parse_ttl(&args.ttl)?;
    let keys = Arc::new(match args.dist.as_str() {
        "uniform" => Keys::Uniform(args.keys),
        d => match d.strip_prefix("zipf:").and_then(|s| s.parse::<f64>().ok()) {
            Some(s) => Keys::Zipf(Arc::new(Zipf::new(args.keys as usize, s))),
            None => return Err(format!("bad --dist {d:?}; use uniform or zipf:0.99")),
        },
    });
    let value = Arc::new(ByteBuf::from(vec![b'v'; args.value_size]));
    let mut clients = Vec::new();
    for _ in 0..args.connections.max(1) {
        clients.push(Client::connect(&args.target).await?);
    }

    if args.preload > 0 {
        let t = Instant::now();
        let per = args.preload.div_ceil(clients.len() as u64);
        let tasks: Vec<_> = clients
            .iter()
            .enumerate()
            .map(|(ci, c)| {
                let (mut c, value, ks, ttls) = (c.clone(), value.clone(), args.key_size, ttls.clone());
                let range = (ci as u64 * per)..((ci as u64 + 1) * per).min(args.preload);
                let mut rng = Rng::new(!args.seed ^ ((ci as u64) << 32));
                tokio::spawn(async move {
                    let ids: Vec<u64> = range.collect();
                    for chunk in ids.chunks(100) {
                        let names: Vec<String> = chunk.iter().map(|&i| key_name(i, ks)).collect();
                        c.run(Op::SetMany(names.len()), &names, &value, pick(&ttls, &mut rng)).await?;
                    }
                    Ok::<_, String>(())
                })
            })
            .collect();
        for t in tasks {
            t.await.map_err(|e| e.to_string())??;
        }
        eprintln!("preloaded {} keys in {:.1} s", args.preload, t.elapsed().as_secs_f64());
    }
    if args.only_preload {
        return Ok(());
    }

    let recording = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for (ci, client) in clients.iter().enumerate() {
        for d in 0..args.depth.max(1) {
            let mut client = client.clone();
            let (recording, stop, done, keys, value, mix, ttls) =
                (recording.clone(), stop.clone(), done.clone(), keys.clone(), value.clone(), mix.clone(), ttls.clone());
            let (key_size, limit) = (args.key_size, args.requests);
            let mut rng = Rng::new(args.seed ^ ((ci as u64) << 32 | d as u64));
            workers.push(tokio::spawn(async move {
                let mut rec = Recorder::new();
                let mut names = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let op = pick(&mix, &mut rng);
                    let ttl = pick(&ttls, &mut rng);
                    names.clear();
                    let n = match op {
                        Op::GetMany(n) | Op::SetMany(n) => n,
                        _ => 1,
                    };
                    for _ in 0..n {
                        let k = keys.next(&mut rng);
                        names.push(if op == Op::Incr { format!("ctr{}", k % 1024) } else { key_name(k, key_size) });
                    }
                    let t = Instant::now();
                    let r = client.run(op, &names, &value, ttl).await;
                    let took = t.elapsed().as_nanos() as u64;
                    if recording.load(Ordering::Relaxed) {
                        match r {
                            Ok(found) => {
                                rec.lookups.keys += found.keys;
                                rec.lookups.found += found.found;
                                rec.hist
                                    .entry(op)
                                    .or_insert_with(|| Histogram::new_with_bounds(1, 60_000_000_000, 3).unwrap())
                                    .saturating_record(took.max(1));
                            }
                            Err(kind) => *rec.errors.entry(kind).or_default() += 1,
                        }
                        let total = done.fetch_add(1, Ordering::Relaxed) + 1;
                        if limit.is_some_and(|l| total >= l) {
                            stop.store(true, Ordering::Relaxed);
                        }
                    }
                }
                rec
            }));
        }
    }

    tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
    recording.store(true, Ordering::Relaxed);
    let cpu_before = process_cpu();
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(args.duration);
    let mut last = (Instant::now(), 0u64);
    while !stop.load(Ordering::Relaxed) && (args.requests.is_some() || Instant::now() < until) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if !args.quiet && last.0.elapsed() >= Duration::from_secs(1) {
            let n = done.load(Ordering::Relaxed);
            eprint!(
                "\r[{:5.1}s] {:>10.0} ops/s   total {:>10}",
                started.elapsed().as_secs_f64(),
                (n - last.1) as f64 / last.0.elapsed().as_secs_f64(),
                n
            );
            last = (Instant::now(), n);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let client_cpu = process_cpu() - cpu_before;
    if !args.quiet {
        eprintln!();
    }
    let mut hist: BTreeMap<Op, Histogram<u64>> = BTreeMap::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut lookups = Lookups::default();
    for w in workers {
        let rec = w.await.map_err(|e| e.to_string())?;
        lookups.keys += rec.lookups.keys;
        lookups.found += rec.lookups.found;
        for (op, h) in rec.hist {
            hist.entry(op).or_insert_with(|| Histogram::new_with_bounds(1, 60_000_000_000, 3).unwrap()).add(h).unwrap();
        }
        for (k, n) in rec.errors {
            *errors.entry(k).or_default() += n;
        }
    }
    report(&args, elapsed, client_cpu, &hist, &errors, lookups)
}

/// CPU time (user and system) this process has used, in seconds: the
/// client's own cost, which every application using the client pays too.
fn process_cpu() -> f64 {
    // SAFETY: getrusage writes one rusage into the zeroed struct.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(u.ru_utime) + secs(u.ru_stime)
}

fn report(
    args: &Args,
    elapsed: f64,
    client_cpu: f64,
    hist: &BTreeMap<Op, Histogram<u64>>,
    errors: &BTreeMap<String, u64>,
    lookups: Lookups,
) -> Result<(), String> {
    let us = |ns: u64| ns as f64 / 1000.0;
    let total: u64 = hist.values().map(|h| h.len()).sum();
    println!(
        "{} | {} conn x {} deep | {} | {} keys {} | value {} B | {:.1} s",
        args.target, args.connections, args.depth, args.mix, args.keys, args.dist, args.value_size, elapsed
    );
    println!(
        "{:<14} {:>12} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "op", "ops/s", "p50 us", "p90 us", "p99 us", "p99.9 us", "max us"
    );
    let mut ops_json = serde_json::Map::new();
    for (op, h) in hist {
        let rate = h.len() as f64 / elapsed;
        let q = |p: f64| us(h.value_at_quantile(p));
        println!(
            "{:<14} {:>12.0} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>10.1}",
            op.name(),
            rate,
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
            us(h.max())
        );
        ops_json.insert(
            op.name(),
            serde_json::json!({"ops_per_sec": rate, "count": h.len(), "p50_us": q(0.5), "p90_us": q(0.9),
                "p99_us": q(0.99), "p999_us": q(0.999), "max_us": us(h.max())}),
        );
    }
    println!("{:<14} {:>12.0}", "total", total as f64 / elapsed);
    let client_cpu_us = if total > 0 { client_cpu * 1e6 / total as f64 } else { 0.0 };
    println!("client CPU per operation: {client_cpu_us:.2} us (this process, user + system)");
    let hit_ratio = (lookups.keys > 0).then(|| lookups.found as f64 / lookups.keys as f64);
    if let Some(r) = hit_ratio {
        println!("hit ratio      {r:>12.4}  ({} of {} keys read)", lookups.found, lookups.keys);
    }
    if let Some(prefix) = &args.hgrm {
        for (op, h) in hist {
            let path = std::path::PathBuf::from(format!("{}-{}.hgrm", prefix.display(), op.name().replace(':', "_")));
            std::fs::write(&path, hgrm(h)).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    for (k, n) in errors {
        println!("errors {k}: {n}");
    }
    if let Some(path) = &args.json {
        let rec = serde_json::json!({
            "label": args.label, "config": args, "elapsed_s": elapsed,
            "total_ops_per_sec": total as f64 / elapsed, "ops": ops_json, "errors": errors,
            "hit_ratio": hit_ratio, "client_cpu_us_per_op": client_cpu_us,
        });
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        writeln!(f, "{rec}").map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// A latency distribution in HdrHistogram's percentile text format (the
/// `.hgrm` files its plotter reads), in microseconds.
fn hgrm(h: &Histogram<u64>) -> String {
    let mut out = format!("{:>12} {:>14} {:>10} {:>14}\n\n", "Value", "Percentile", "TotalCount", "1/(1-Percentile)");
    let mut total = 0u64;
    for v in h.iter_quantiles(1) {
        total += v.count_since_last_iteration();
        let q = v.quantile_iterated_to();
        let inverse = if q < 1.0 { format!("{:>14.2}", 1.0 / (1.0 - q)) } else { String::new() };
        out.push_str(&format!(
            "{:>12.3} {:>14.12} {:>10} {}\n",
            v.value_iterated_to() as f64 / 1000.0,
            q,
            total,
            inverse
        ));
    }
    out.push_str(&format!(
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]\n#[Max     = {:>12.3}, Total count    = {:>12}]\n",
        h.mean() / 1000.0,
        h.stdev() / 1000.0,
        h.max() as f64 / 1000.0,
        h.len()
    ));
    out
}
