//! What every connection shares, whatever protocol it speaks: the engine
//! handle, the auth token, the limits the handlers check, the counters
//! shutdown and stats read, and the rate-limited log of refusals.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use cachet_storage::{Handle, Snapshot};

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
    /// Online backups in progress.
    pub backups: Backups,
    refusals: Mutex<HashMap<&'static str, Instant>>,
}

/// Backups in progress: each holds a snapshot of the log (hard links) until
/// its client ends it, or leaves it idle for `BACKUP_IDLE`.
#[derive(Default)]
pub struct Backups {
    next: AtomicU64,
    open: Mutex<HashMap<u64, (Arc<Snapshot>, Instant)>>,
}

/// How long a backup may go without a read before its snapshot is released.
pub const BACKUP_IDLE: Duration = Duration::from_secs(60);

impl Backups {
    pub fn begin(&self, snapshot: Snapshot) -> u64 {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        self.open.lock().expect("lock poisoned").insert(id, (Arc::new(snapshot), Instant::now()));
        id
    }

    /// The backup's snapshot, marking it used now.
    pub fn get(&self, id: u64) -> Option<Arc<Snapshot>> {
        let mut open = self.open.lock().expect("lock poisoned");
        let (snap, used) = open.get_mut(&id)?;
        *used = Instant::now();
        Some(snap.clone())
    }

    pub fn end(&self, id: u64) -> bool {
        self.open.lock().expect("lock poisoned").remove(&id).is_some()
    }

    /// Releases backups idle for longer than `idle`; returns their ids.
    pub fn expire(&self, idle: Duration) -> Vec<u64> {
        let mut open = self.open.lock().expect("lock poisoned");
        let stale: Vec<u64> = open.iter().filter(|(_, (_, used))| used.elapsed() > idle).map(|(id, _)| *id).collect();
        for id in &stale {
            open.remove(id);
        }
        stale
    }
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
            backups: Backups::default(),
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
