//! Compaction under an overwrite load: the log's size against its live data
//! over time, and how long requests wait while compaction runs.
//! Run: `cargo bench -p cachet-benches --bench compaction`.

use std::collections::VecDeque;
use std::time::Instant;

use cachet_benches::{key16, value100};
use cachet_storage::{Command, Config, Engine, Reply, SyncPolicy, Ttl};
use hdrhistogram::Histogram;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const KEYS: u64 = 200_000;
const OPS: u64 = 6_000_000;
const WINDOW: usize = 64;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        sync: SyncPolicy::EverySec,
        segment_bytes: 8 << 20,
        compact_min_bytes: 32 << 20,
        ..Config::new(dir.path())
    };
    let engine = Engine::open(config).unwrap();
    let h = engine.handle();
    let mut lat = Histogram::<u64>::new_with_bounds(1, 10_000_000, 3).unwrap();
    let mut pending = VecDeque::with_capacity(WINDOW);
    let mut ratios = Vec::new();
    let started = Instant::now();
    for i in 0..OPS {
        let k = (i * 7919) % KEYS;
        let t = Instant::now();
        let rx = h.submit(Command::Set { key: key16(k), value: value100(i), ttl: Ttl::Never }).unwrap();
        pending.push_back((t, rx));
        if pending.len() == WINDOW {
            let (t, rx) = pending.pop_front().unwrap();
            rx.blocking_recv().unwrap().unwrap();
            lat.saturating_record(t.elapsed().as_micros() as u64);
        }
        if i % 250_000 == 0
            && i > 0
            && let Ok(Reply::Stats(s)) = h.call_blocking(Command::Stats)
        {
            ratios.push(s.log_bytes as f64 / s.log_live_bytes.max(1) as f64);
        }
    }
    for (t, rx) in pending {
        rx.blocking_recv().unwrap().unwrap();
        lat.saturating_record(t.elapsed().as_micros() as u64);
    }
    let secs = started.elapsed().as_secs_f64();
    let Ok(Reply::Stats(s)) = h.call_blocking(Command::Stats) else { panic!() };
    let steady: Vec<f64> = ratios.iter().skip(ratios.len() / 2).copied().collect();
    println!("{OPS} overwrites of {KEYS} keys (16 B keys, 100 B values), 8 MiB segments, compaction floor 32 MiB:");
    println!("  {:.0} sets/s; {} compactions", OPS as f64 / secs, s.compactions);
    println!(
        "  log/live ratio sampled every 250k ops: max {:.2}, steady-state (second half) mean {:.2}, final {:.2} ({} MB log, {} MB live)",
        ratios.iter().cloned().fold(0.0, f64::max),
        steady.iter().sum::<f64>() / steady.len().max(1) as f64,
        s.log_bytes as f64 / s.log_live_bytes as f64,
        s.log_bytes / 1_000_000,
        s.log_live_bytes / 1_000_000
    );
    println!(
        "  longest compaction slice (writer pause): {} us including its write(), {} us re-encoding alone",
        s.compaction_max_pause_us, s.compaction_max_slice_cpu_us
    );
    println!(
        "  request latency with {WINDOW} in flight (us): p50 {} p99 {} p99.9 {} max {}",
        lat.value_at_quantile(0.5),
        lat.value_at_quantile(0.99),
        lat.value_at_quantile(0.999),
        lat.max()
    );
}
