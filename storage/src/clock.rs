//! Time as the engine sees it: absolute unix milliseconds.
//!
//! Expiry deadlines are written into the log as absolute times so that a
//! replay after any downtime drops what expired meanwhile. Production reads
//! the wall clock once at start and advances it with the monotonic clock, so
//! a wall-clock step while running neither expires nor revives the whole
//! cache. Tests use [`ManualClock`] and move time by hand.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// A point in time, in milliseconds since the unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct UnixMillis(pub u64);

/// The source of "now" for the engine.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> UnixMillis;
}

/// Wall clock read once, then advanced by [`Instant`].
#[derive(Debug)]
pub struct SystemClock {
    wall_at_start: u64,
    started: Instant,
}

impl SystemClock {
    pub fn new() -> SystemClock {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        SystemClock { wall_at_start: wall, started: Instant::now() }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> UnixMillis {
        UnixMillis(self.wall_at_start + self.started.elapsed().as_millis() as u64)
    }
}

/// A clock that moves only when told to; clones share the same time.
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    pub fn new(start: UnixMillis) -> ManualClock {
        ManualClock(Arc::new(AtomicU64::new(start.0)))
    }

    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }

    pub fn set(&self, t: UnixMillis) {
        self.0.store(t.0, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> UnixMillis {
        UnixMillis(self.0.load(Ordering::SeqCst))
    }
}
