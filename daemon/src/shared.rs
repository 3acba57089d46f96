//! What every connection shares, whatever protocol it speaks: the engine
//! handle, the auth token, the limits the handlers check, the counters
//! shutdown and stats read, and the rate-limited log of refusals.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use cachet_storage::Handle;

use crate::metrics::Metrics;

/// Settings clients may ask about (`CONFIG GET`, `INFO`).
pub struct ServerSettings {
    /// The sync policy, as `--sync` takes it.
    pub sync: String,
    /// The memory cap (0: none); a reload may change it.
    pub max_memory: AtomicU64,
    /// The eviction policy, as `--eviction` takes it.
    pub eviction: String,
}

/// State shared by every connection.
pub struct Shared {
    pub engine: Handle,
    /// The auth token clients must present; a reload may change it.
    token: RwLock<Option<Arc<str>>>,
    pub started: Instant,
    pub connections: Arc<AtomicU64>,
    /// Requests being handled right now (shutdown waits for zero).
    pub in_flight: AtomicU64,
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    pub settings: ServerSettings,
    pub metrics: Arc<Metrics>,
    refusals: Mutex<HashMap<&'static str, Instant>>,
}

impl Shared {
    pub fn new(
        engine: Handle,
        token: Option<String>,
        max_key_bytes: usize,
        max_value_bytes: usize,
        settings: ServerSettings,
        metrics: Arc<Metrics>,
    ) -> Shared {
        Shared {
            engine,
            token: RwLock::new(token.map(Arc::from)),
            started: Instant::now(),
            connections: Arc::new(AtomicU64::new(0)),
            in_flight: AtomicU64::new(0),
            max_key_bytes,
            max_value_bytes,
            settings,
            metrics,
            refusals: Mutex::new(HashMap::new()),
        }
    }

    /// The auth token, if one is required.
    pub fn token(&self) -> Option<Arc<str>> {
        self.token.read().expect("lock poisoned").clone()
    }

    pub fn set_token(&self, token: Option<String>) {
        *self.token.write().expect("lock poisoned") = token.map(Arc::from);
    }

    /// The memory cap, as `CONFIG GET maxmemory` and `INFO` show it.
    pub fn max_memory(&self) -> Option<u64> {
        Some(self.settings.max_memory.load(std::sync::atomic::Ordering::Relaxed)).filter(|m| *m > 0)
    }

    pub fn set_max_memory(&self, max: Option<u64>) {
        self.settings.max_memory.store(max.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
    }

    pub fn connections_counter(&self) -> Arc<AtomicU64> {
        self.connections.clone()
    }

    /// Counts a refused or failed request, and logs it at most once per
    /// class every 10 s.
    pub fn note(&self, class: &'static str, msg: &str) {
        self.metrics.refused(class);
        let mut last = self.refusals.lock().expect("lock poisoned");
        let now = Instant::now();
        if last.get(class).is_none_or(|t| now.duration_since(*t) >= Duration::from_secs(10)) {
            last.insert(class, now);
            tracing::warn!(class, "request refused: {msg} (further ones of this kind are not logged for 10 s)");
        }
    }
}
