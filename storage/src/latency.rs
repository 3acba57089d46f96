//! `Latencies`: a fixed-bucket histogram of durations, for what the engine
//! times itself (fsyncs, compaction slices) and a metrics endpoint exports.
//! Fixed buckets, so two snapshots subtract and two servers add up, and
//! recording is an array increment on the writer thread.

use std::time::Duration;

/// The buckets' upper bounds, in microseconds (the last bucket, past the
/// final bound, is `+Inf`): 50 µs to 10 s, about 2.5x apart.
pub const BOUNDS_US: [u64; 14] =
    [50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000, 10_000_000];

/// Counts of durations by bucket, with their sum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Latencies {
    /// `counts[i]`: durations in `(BOUNDS_US[i-1], BOUNDS_US[i]]`; the last
    /// one, those over the final bound.
    pub counts: [u64; BOUNDS_US.len() + 1],
    /// The sum of every duration recorded, in microseconds.
    pub sum_us: u64,
}

impl Latencies {
    /// Records one duration.
    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_US.iter().position(|b| us <= *b).unwrap_or(BOUNDS_US.len());
        self.counts[bucket] += 1;
        self.sum_us = self.sum_us.saturating_add(us);
    }

    /// How many durations were recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// `(upper bound in seconds, durations in that bucket)`, the last one
    /// with `f64::MAX` for `+Inf`: the form Prometheus encoders take.
    pub fn buckets_seconds(&self) -> Vec<(f64, u64)> {
        BOUNDS_US.iter().map(|b| *b as f64 / 1e6).chain([f64::MAX]).zip(self.counts).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_inclusive_upper_bounds() {
        let mut l = Latencies::default();
        for us in [10, 50, 51, 999, 1_000, 20_000_000] {
            l.record(Duration::from_micros(us));
        }
        assert_eq!(l.count(), 6);
        assert_eq!(l.sum_us, 10 + 50 + 51 + 999 + 1_000 + 20_000_000);
        let b = l.buckets_seconds();
        assert_eq!(b.len(), BOUNDS_US.len() + 1);
        assert_eq!(b[0], (50e-6, 2), "10 and 50 µs are at or below 50 µs");
        assert_eq!(b[1], (100e-6, 1));
        assert_eq!(b[4], (1e-3, 2), "999 and 1000 µs");
        assert_eq!(*b.last().unwrap(), (f64::MAX, 1), "20 s is over the last bound: in +Inf");
    }
}
