//! Times opening (replaying) a log of N records several times.
//! `cargo run --release -p cachet-benches --example replay_probe -- DIR [N]`
//! writes the log into DIR first if DIR has none.

use std::time::Instant;

use cachet_storage::{Config, Engine};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().expect("usage: replay_probe DIR [N]"));
    let n: u64 = args.next().map(|a| a.parse().expect("N")).unwrap_or(1_000_000);
    if !dir.exists() {
        std::fs::create_dir_all(&dir).unwrap();
        cachet_benches::write_log(&dir, n);
    }
    let rounds: usize = std::env::var("ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(5);
    for _ in 0..rounds {
        let t = Instant::now();
        let engine = Engine::open(Config::new(&dir)).unwrap();
        let took = t.elapsed();
        let r = engine.replay_report();
        println!(
            "opened {} records, {:.1} MB in {:.1} ms: {:.2} M records/s, {:.0} MB/s",
            r.records,
            r.bytes as f64 / 1e6,
            took.as_secs_f64() * 1e3,
            r.records as f64 / took.as_secs_f64() / 1e6,
            r.bytes as f64 / took.as_secs_f64() / 1e6
        );
    }
}
