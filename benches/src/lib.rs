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

/// Samples ranks `0..n` with probability proportional to `1 / (rank+1)^s`
/// (Zipf), by binary search in a precomputed CDF: exact, and deterministic
/// for a given random stream.
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize, s: f64) -> Zipf {
        let mut cdf = Vec::with_capacity(n);
        let mut total = 0.0;
        for rank in 1..=n {
            total += 1.0 / (rank as f64).powf(s);
            cdf.push(total);
        }
        for c in &mut cdf {
            *c /= total;
        }
        Zipf { cdf }
    }

    /// `u` uniform in [0, 1).
    pub fn sample(&self, u: f64) -> usize {
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }
}

/// A small, fast, seedable generator (xorshift64*), so runs are repeatable.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_favours_low_ranks() {
        let z = Zipf::new(1000, 0.99);
        let mut rng = Rng::new(1);
        let mut counts = vec![0u32; 1000];
        for _ in 0..100_000 {
            counts[z.sample(rng.unit())] += 1;
        }
        assert!(counts[0] > counts[10] && counts[10] > counts[500]);
        assert!(counts[0] > 10_000, "{}", counts[0]);
    }
}
