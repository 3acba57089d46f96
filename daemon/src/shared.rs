//! What every connection shares, whatever protocol it speaks: the engine
//! handle, the auth token, the limits the handlers check, the counters
//! shutdown and stats read, and the rate-limited log of refusals.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cachet_storage::Handle;

/// Settings clients may ask about (`CONFIG GET`, `INFO`).
pub struct ServerSettings {
    /// The sync policy, as `--sync` takes it.
    pub sync: String,
    pub max_memory: Option<u64>,
    /// The eviction policy, as `--eviction` takes it.
    pub eviction: String,
}

/// State shared by every connection.
pub struct Shared {
    pub engine: Handle,
    pub token: Option<String>,
    pub started: Instant,
    pub connections: Arc<AtomicU64>,
    /// Requests being handled right now (shutdown waits for zero).
    pub in_flight: AtomicU64,
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    pub settings: ServerSettings,
    refusals: Mutex<HashMap<&'static str, Instant>>,
}

impl Shared {
    pub fn new(
        engine: Handle,
        token: Option<String>,
        max_key_bytes: usize,
        max_value_bytes: usize,
        settings: ServerSettings,
    ) -> Shared {
        Shared {
            engine,
            token,
            started: Instant::now(),
            connections: Arc::new(AtomicU64::new(0)),
            in_flight: AtomicU64::new(0),
            max_key_bytes,
            max_value_bytes,
            settings,
            refusals: Mutex::new(HashMap::new()),
        }
    }

    pub fn connections_counter(&self) -> Arc<AtomicU64> {
        self.connections.clone()
    }

    /// Logs a refused or failed request, at most once per class every 10 s.
    pub fn note(&self, class: &'static str, msg: &str) {
        let mut last = self.refusals.lock().expect("lock poisoned");
        let now = Instant::now();
        if last.get(class).is_none_or(|t| now.duration_since(*t) >= Duration::from_secs(10)) {
            last.insert(class, now);
            tracing::warn!(class, "request refused: {msg} (further ones of this kind are not logged for 10 s)");
        }
    }
}
