//! Shared pieces of cachet's benchmarks: fixed-size keys and values, and a
//! helper that writes a log of N records for replay benchmarks.

use cachet_storage::{Command, Config, Engine, SyncPolicy, Ttl};

/// A 16-byte key for `i`.
pub fn key16(i: u64) -> Vec<u8> {
    format!("key:{i:012}").into_bytes()
}

/// A 100-byte value.
pub fn value100(i: u64) -> Vec<u8> {
    let mut v = format!("value:{i:012}").into_bytes();
    v.resize(100, b'.');
    v
}

/// Fills `dir` with `n` distinct sets (16-byte keys, 100-byte values, no expiry).
pub fn write_log(dir: &std::path::Path, n: u64) {
    let engine = Engine::open(Config { sync: SyncPolicy::Never, ..Config::new(dir) }).expect("open");
    let h = engine.handle();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let cmds = chunk.iter().map(|&i| Command::Set { key: key16(i), value: value100(i), ttl: Ttl::Never }).collect();
        for r in h.call_many_blocking(cmds).expect("engine running") {
            r.expect("set");
        }
    }
    drop(h);
    engine.shutdown().expect("shutdown");
}
