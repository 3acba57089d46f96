//! Prometheus metrics (`--metrics-listen HOST:PORT`, served at `/metrics`)
//! with the prometheus-client crate, and the slow-request log.
//!
//! Two kinds of figures:
//! - what the front ends count as requests pass (operations and their
//!   latency by protocol and operation, connections by protocol, refusals by
//!   class): prometheus-client counters and gauges, and [`Latency`]
//!   histograms, updated in place. The (protocol, operation) series are
//!   created on first use and kept in a table indexed by operation, so a
//!   run of one operation in a pipelined round costs an array index and
//!   three atomic updates, not a label lookup;
//! - what the engine counts (entries, bytes, hits, evictions, the log,
//!   compactions, fsyncs, the read-only state): read with one `Stats`
//!   command per scrape and encoded by [`EngineCollector`], so these are the
//!   very counters `cachet stats` and RESP `INFO` show.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use cachet_storage::{Latencies, Stats};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

use crate::listen::Protocol;

pub mod http;

/// The operations of the tarpc front end, as they are labelled.
pub const TARPC_OPS: [&str; 18] = [
    "hello",
    "get",
    "set",
    "add",
    "get_or_set",
    "delete",
    "touch",
    "incr",
    "has_key",
    "rename",
    "get_with_ttl",
    "clear_prefix",
    "ttl",
    "get_many",
    "set_many",
    "delete_many",
    "clear",
    "stats",
];

/// The RESP commands counted by name (sorted, for a binary search); any
/// other is counted as `other`.
pub const RESP_OPS: [&str; 48] = [
    "AUTH",
    "CLIENT",
    "COMMAND",
    "CONFIG",
    "DBSIZE",
    "DECR",
    "DECRBY",
    "DEL",
    "DISCARD",
    "ECHO",
    "EXEC",
    "EXISTS",
    "EXPIRE",
    "EXPIREAT",
    "FLUSHALL",
    "FLUSHDB",
    "GET",
    "GETDEL",
    "GETEX",
    "HELLO",
    "INCR",
    "INCRBY",
    "INFO",
    "MGET",
    "MSET",
    "MSETNX",
    "MULTI",
    "OTHER",
    "PERSIST",
    "PEXPIRE",
    "PEXPIREAT",
    "PING",
    "PSETEX",
    "PTTL",
    "QUIT",
    "RESET",
    "SCAN",
    "SELECT",
    "SET",
    "SETEX",
    "SETNX",
    "STRLEN",
    "TOUCH",
    "TTL",
    "TYPE",
    "UNLINK",
    "UNWATCH",
    "WATCH",
];

/// An operation's place in its protocol's list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpId(pub usize);

/// The id of a RESP command name (upper case), `OTHER` if not in the list.
pub fn resp_op(name: &str) -> OpId {
    OpId(RESP_OPS.binary_search(&name).unwrap_or(RESP_OTHER))
}

/// Where `OTHER` sits in `RESP_OPS`.
const RESP_OTHER: usize = 27;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    protocol: &'static str,
    op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabel {
    protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabel {
    class: &'static str,
}

/// An operation's label: tarpc's as listed, RESP's command in lower case.
fn op_label(protocol: Protocol, op: OpId) -> String {
    match protocol {
        Protocol::Tarpc => TARPC_OPS[op.0].to_string(),
        Protocol::Resp => RESP_OPS[op.0].to_ascii_lowercase(),
    }
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tarpc => "tarpc",
        Protocol::Resp => "resp",
    }
}

/// Request latency buckets' upper bounds, in seconds: 10 µs to 10 s (the
/// last bucket, past the final bound, is `+Inf`).
const LATENCY_BOUNDS: [f64; 16] =
    [10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 1.0, 10.0];

/// A latency histogram that counts many observations of one value at
/// once, without a lock: the operations of a pipelined round share the
/// round's time, and prometheus-client's `Histogram` takes a write lock
/// per observation (2.7% of cachetd's CPU under GET at 50 x 16, with
/// `resp_op`'s search another 4.5%).
#[derive(Clone, Debug)]
struct Latency(Arc<LatencyCounts>);

#[derive(Debug, Default)]
struct LatencyCounts {
    /// Observations per bucket of `LATENCY_BOUNDS` (not cumulative), and
    /// past its last bound.
    counts: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    /// The observations' sum, in nanoseconds.
    sum_nanos: AtomicU64,
}

impl Latency {
    fn new() -> Latency {
        Latency(Arc::default())
    }

    /// Counts `n` observations of `took`.
    fn observe_n(&self, took: Duration, n: u64) {
        let c = &self.0;
        let secs = took.as_secs_f64();
        let bucket = LATENCY_BOUNDS.iter().position(|&b| secs <= b).unwrap_or(LATENCY_BOUNDS.len());
        c.counts[bucket].fetch_add(n, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        c.sum_nanos.fetch_add(nanos.saturating_mul(n), Ordering::Relaxed);
    }
}

impl prometheus_client::metrics::TypedMetric for Latency {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Latency {
    fn encode(&self, mut encoder: prometheus_client::encoding::MetricEncoder) -> std::fmt::Result {
        let c = &self.0;
        let buckets: Vec<(f64, u64)> = LATENCY_BOUNDS
            .into_iter()
            .chain([f64::MAX])
            .zip(c.counts.iter().map(|n| n.load(Ordering::Relaxed)))
            .collect();
        // The count is the buckets' total, so the two always agree.
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = c.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        <Self as prometheus_client::metrics::TypedMetric>::TYPE
    }
}

/// One operation's series: its count and its latency.
struct OpSeries {
    count: Counter,
    latency: Latency,
}

/// Everything counted, and the registry that encodes it.
pub struct Metrics {
    registry: Registry,
    ops: Family<OpLabels, Counter>,
    latency: Family<OpLabels, Latency>,
    /// The series of each (protocol, operation), made on first use.
    series: [Vec<OnceLock<OpSeries>>; 2],
    connections: Family<ProtocolLabel, Gauge>,
    refusals: Family<ClassLabel, Counter>,
    engine: Arc<EngineCollector>,
    slow: SlowLog,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Metrics with a slow-request log for requests over `slow` (none if
    /// zero) and the replay's duration.
    pub fn new(slow: Duration, replay: Duration) -> Metrics {
        let mut registry = Registry::with_prefix("cachet");
        let ops = Family::<OpLabels, Counter>::default();
        let latency = Family::<OpLabels, Latency>::new_with_constructor(Latency::new as fn() -> Latency);
        let connections = Family::<ProtocolLabel, Gauge>::default();
        let refusals = Family::<ClassLabel, Counter>::default();
        registry.register("operations", "Operations served, by protocol and operation", ops.clone());
        registry.register(
            "request_duration_seconds",
            "Time from a request's arrival to its reply, by protocol and operation (a pipelined round or a batch \
             counts for each operation in it)",
            latency.clone(),
        );
        registry.register("connections", "Client connections open now, by protocol", connections.clone());
        registry.register(
            "refusals",
            "Requests refused, by class (limits, auth, full cache, read-only)",
            refusals.clone(),
        );
        let replay_seconds = ConstGauge::new(replay.as_secs_f64());
        registry.register("replay_duration_seconds", "How long the replay of the log took at start", replay_seconds);
        let engine = Arc::new(EngineCollector::default());
        registry.register_collector(Box::new(engine.clone()));
        let series = [
            (0..TARPC_OPS.len()).map(|_| OnceLock::new()).collect(),
            (0..RESP_OPS.len()).map(|_| OnceLock::new()).collect(),
        ];
        Metrics {
            registry,
            ops,
            latency,
            series,
            connections,
            refusals,
            engine,
            slow: SlowLog { threshold: slow, last: Mutex::new(None), missed: AtomicU64::new(0) },
        }
    }

    fn series(&self, protocol: Protocol, op: OpId) -> &OpSeries {
        let table = match protocol {
            Protocol::Tarpc => &self.series[0],
            Protocol::Resp => &self.series[1],
        };
        // The label is built once, when the series is made, not per request.
        table[op.0].get_or_init(|| {
            let labels = OpLabels { protocol: protocol_name(protocol), op: op_label(protocol, op) };
            OpSeries {
                count: self.ops.get_or_create(&labels).clone(),
                latency: self.latency.get_or_create(&labels).clone(),
            }
        })
    }

    /// Counts a request of these operations that took `took` from arrival to
    /// reply, and logs it (rate-limited) if it was slow.
    pub fn served(&self, protocol: Protocol, ops: impl IntoIterator<Item = OpId>, took: Duration) {
        let mut n = 0;
        let mut first = None;
        // Runs of one operation (a pipeline of GETs) are counted at once.
        let mut run: Option<(OpId, u64)> = None;
        for op in ops {
            match &mut run {
                Some((o, count)) if *o == op => *count += 1,
                _ => {
                    if let Some((o, count)) = run.replace((op, 1)) {
                        self.count(protocol, o, count, took);
                    }
                }
            }
            first.get_or_insert(op);
            n += 1;
        }
        if let Some((o, count)) = run {
            self.count(protocol, o, count, took);
        }
        if let Some(op) = first {
            let _logged = self.slow.check(protocol, op, n, took);
        }
    }

    /// Counts `n` operations `op` that took `took`.
    fn count(&self, protocol: Protocol, op: OpId, n: u64, took: Duration) {
        let s = self.series(protocol, op);
        s.count.inc_by(n);
        s.latency.observe_n(took, n);
    }

    /// A connection opened; the returned guard counts it closed when dropped.
    pub fn connection(&self, protocol: Protocol) -> ConnectionGuard {
        let g = self.connections.get_or_create(&ProtocolLabel { protocol: protocol_name(protocol) }).clone();
        g.inc();
        ConnectionGuard(g)
    }

    /// Open connections of one protocol.
    pub fn connections_of(&self, protocol: Protocol) -> i64 {
        self.connections.get_or_create(&ProtocolLabel { protocol: protocol_name(protocol) }).get()
    }

    /// Operations served so far over one protocol.
    pub fn operations_of(&self, protocol: Protocol) -> u64 {
        let table = match protocol {
            Protocol::Tarpc => &self.series[0],
            Protocol::Resp => &self.series[1],
        };
        table.iter().filter_map(OnceLock::get).map(|s| s.count.get()).sum()
    }

    /// Counts a refused request of `class`.
    pub fn refused(&self, class: &'static str) {
        self.refusals.get_or_create(&ClassLabel { class }).inc();
    }

    /// The text exposition, with the engine's figures as of `stats`.
    pub fn encode(&self, stats: Stats, uptime: Duration, max_memory: Option<u64>) -> String {
        *self.engine.snapshot.lock().expect("lock poisoned") = Some((stats, uptime, max_memory));
        let mut out = String::new();
        let encoded = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        *self.engine.snapshot.lock().expect("lock poisoned") = None;
        encoded.expect("writing to a String cannot fail");
        out
    }
}

/// Counts a connection as open while it lives.
pub struct ConnectionGuard(Gauge);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Logs requests slower than the threshold, at most one line every 10 s
/// with the number of slow ones left unlogged since the last line.
struct SlowLog {
    threshold: Duration,
    last: Mutex<Option<Instant>>,
    missed: AtomicU64,
}

impl SlowLog {
    /// Logs the request if it was slow and no line went out in the last
    /// 10 s; returns whether it logged.
    fn check(&self, protocol: Protocol, op: OpId, ops: usize, took: Duration) -> bool {
        if self.threshold.is_zero() || took < self.threshold {
            return false;
        }
        let mut last = self.last.lock().expect("lock poisoned");
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(10)) {
            self.missed.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        *last = Some(now);
        let missed = self.missed.swap(0, Ordering::Relaxed);
        let name = op_label(protocol, op);
        tracing::warn!(
            protocol = protocol_name(protocol),
            op = name,
            ops,
            ms = took.as_secs_f64() * 1e3,
            "slow request: {:.1} ms for {ops} operation(s) starting with {name} (over --slow-request-ms {}); \
             {missed} more slow since the last such line",
            took.as_secs_f64() * 1e3,
            self.threshold.as_millis()
        );
        true
    }
}

/// Encodes the engine's counters from the `Stats` taken for this scrape.
#[derive(Debug, Default)]
pub struct EngineCollector {
    snapshot: Mutex<Option<(Stats, Duration, Option<u64>)>>,
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

fn histogram(e: &mut DescriptorEncoder, name: &str, help: &str, l: &Latencies) -> Result<(), std::fmt::Error> {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Histogram)?;
    m.encode_histogram::<NoLabelSet>(l.sum_us as f64 / 1e6, l.count(), &l.buckets_seconds(), None)
}

impl Collector for EngineCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let guard = self.snapshot.lock().expect("lock poisoned");
        let Some((s, uptime, max_memory)) = guard.as_ref() else { return Ok(()) };
        let i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        gauge(&mut e, "entries", "Entries held", i(s.entries))?;
        gauge(
            &mut e,
            "memory_bytes",
            "Memory as --max-memory counts it: keys, values, per-entry overhead",
            i(s.memory_bytes),
        )?;
        if let Some(max) = max_memory {
            gauge(&mut e, "max_memory_bytes", "The --max-memory cap", i(*max))?;
        }
        counter(&mut e, "hits", "Reads that found their key", s.hits)?;
        counter(&mut e, "misses", "Reads that did not find their key", s.misses)?;
        counter(&mut e, "sets", "Values stored", s.sets)?;
        counter(&mut e, "deletes", "Keys deleted", s.deletes)?;
        counter(&mut e, "expirations", "Entries removed because their time ran out", s.expired)?;
        counter(&mut e, "evictions", "Entries evicted to stay under --max-memory or --max-entries", s.evicted)?;
        gauge(&mut e, "log_bytes", "Bytes of the log on disk", i(s.log_bytes))?;
        gauge(&mut e, "log_live_bytes", "Bytes of the log that hold live entries", i(s.log_live_bytes))?;
        gauge(&mut e, "log_segments", "Segment files in the log", i(s.segments))?;
        counter(&mut e, "compactions", "Compactions finished", s.compactions)?;
        histogram(
            &mut e,
            "compaction_pause_seconds",
            "How long each compaction slice held the engine",
            &s.compaction_pauses,
        )?;
        histogram(&mut e, "fsync_duration_seconds", "How long each fdatasync of the log took", &s.fsyncs)?;
        gauge(
            &mut e,
            "read_only",
            "1 while the log cannot be written (writes refused, reads served)",
            i64::from(s.read_only),
        )?;
        gauge(&mut e, "uptime_seconds", "Seconds since the daemon started", i(uptime.as_secs()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp_names_are_sorted_and_unknown_ones_are_other() {
        assert!(RESP_OPS.windows(2).all(|w| w[0] < w[1]), "RESP_OPS must stay sorted");
        assert_eq!(RESP_OPS[RESP_OTHER], "OTHER");
        assert_eq!(RESP_OPS[resp_op("GET").0], "GET");
        assert_eq!(RESP_OPS[resp_op("FROBNICATE").0], "OTHER");
    }

    #[test]
    fn slow_requests_are_logged_at_most_once_per_ten_seconds() {
        let log = SlowLog { threshold: Duration::from_millis(100), last: Mutex::new(None), missed: AtomicU64::new(0) };
        let (get, slow) = (resp_op("GET"), Duration::from_millis(250));
        assert!(!log.check(Protocol::Resp, get, 1, Duration::from_millis(99)), "under the threshold");
        assert!(log.check(Protocol::Resp, get, 1, slow));
        assert!(!log.check(Protocol::Resp, get, 1, slow), "within 10 s of the last line");
        assert_eq!(log.missed.load(Ordering::Relaxed), 1, "counted for the next line");
        *log.last.lock().unwrap() = Some(Instant::now() - Duration::from_secs(11));
        assert!(log.check(Protocol::Resp, get, 1, slow));
        assert_eq!(log.missed.load(Ordering::Relaxed), 0);
        let off = SlowLog { threshold: Duration::ZERO, last: Mutex::new(None), missed: AtomicU64::new(0) };
        assert!(!off.check(Protocol::Resp, get, 1, Duration::from_secs(60)), "0 turns it off");
    }

    #[test]
    fn the_exposition_carries_both_kinds_of_figures() {
        let m = Metrics::new(Duration::ZERO, Duration::from_millis(1500));
        m.served(Protocol::Resp, [resp_op("SET"), resp_op("GET")], Duration::from_micros(80));
        m.served(Protocol::Tarpc, [OpId(1)], Duration::from_micros(30));
        let _c = m.connection(Protocol::Resp);
        m.refused("too_large");
        let mut s = Stats { entries: 3, hits: 7, ..Stats::default() };
        s.fsyncs.record(Duration::from_micros(700));
        let text = m.encode(s, Duration::from_secs(5), Some(1 << 20));
        for want in [
            "cachet_operations_total{protocol=\"resp\",op=\"get\"} 1",
            "cachet_operations_total{protocol=\"tarpc\",op=\"get\"} 1",
            "cachet_connections{protocol=\"resp\"} 1",
            "cachet_refusals_total{class=\"too_large\"} 1",
            "cachet_entries 3",
            "cachet_hits_total 7",
            "cachet_fsync_duration_seconds_count 1",
            "cachet_replay_duration_seconds 1.5",
            "cachet_max_memory_bytes 1048576",
        ] {
            assert!(text.contains(want), "{want} missing from\n{text}");
        }
        assert_eq!(m.operations_of(Protocol::Resp), 2);
    }

    /// A round's operations each count once, with the round's time, however
    /// they come in runs; the histogram's buckets, count and sum agree.
    #[test]
    fn each_operation_of_a_round_counts_in_the_histogram() {
        let m = Metrics::new(Duration::ZERO, Duration::ZERO);
        let (get, set) = (resp_op("GET"), resp_op("SET"));
        m.served(Protocol::Resp, [get, get, set, get], Duration::from_micros(80));
        m.served(Protocol::Resp, [get], Duration::from_millis(3));
        let text = m.encode(Stats::default(), Duration::ZERO, None);
        for want in [
            "cachet_operations_total{protocol=\"resp\",op=\"get\"} 4",
            "cachet_operations_total{protocol=\"resp\",op=\"set\"} 1",
            "cachet_request_duration_seconds_count{protocol=\"resp\",op=\"get\"} 4",
            "cachet_request_duration_seconds_sum{protocol=\"resp\",op=\"get\"} 0.00324",
            "cachet_request_duration_seconds_bucket{le=\"0.0001\",protocol=\"resp\",op=\"get\"} 3",
            "cachet_request_duration_seconds_bucket{le=\"0.0025\",protocol=\"resp\",op=\"get\"} 3",
            "cachet_request_duration_seconds_bucket{le=\"0.005\",protocol=\"resp\",op=\"get\"} 4",
            "cachet_request_duration_seconds_bucket{le=\"+Inf\",protocol=\"resp\",op=\"get\"} 4",
            "cachet_request_duration_seconds_count{protocol=\"resp\",op=\"set\"} 1",
        ] {
            assert!(text.contains(want), "{want} missing from\n{text}");
        }
    }
}
