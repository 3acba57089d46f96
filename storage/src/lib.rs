//! cachet's storage engine: keys and values as bytes, kept in memory and in a
//! CRC-checked write-ahead log, with Django's cache semantics (see
//! [`Command`]). One writer thread owns all state ([`Engine`]); the pure core
//! ([`State`]) applies commands and is what tests and fuzzers drive.
//!
//! The on-disk format is described byte by byte in `storage/FORMAT.md`.

mod arena;
mod budget;
mod clock;
mod engine;
mod error;
mod evict;
mod index;
mod latency;
pub mod record;
mod replay;
mod segment;
mod state;
mod table;
mod timers;
mod wheel;

pub use budget::ReplyBudget;
pub use cachet_types::{Ttl, keyspace};
pub use clock::{Clock, ManualClock, SystemClock, UnixMillis};
pub use engine::{Config, Engine, Handle, Snapshot, SnapshotFile, SyncPolicy, prepare_dest};
#[cfg(feature = "testing")]
pub use engine::{Hook, HookPoint};
pub use error::{CorruptReason, Error, Result};
pub use evict::ENTRY_OVERHEAD;
pub use index::MAX_KEY_LEN;
pub use latency::{BOUNDS_US, Latencies};
pub use record::Encoding;
pub use replay::{CheckReport, Cut, Progress, RepairReport, ReplayReport, TornTail, check, repair};
#[cfg(feature = "testing")]
pub use segment::Faults;
pub use state::{Command, Eviction, ExpireWhen, Expiry, Limits, NullSink, Reply, State, Stats, When, glob_match};
pub use wheel::Wheel;

/// The model, in-memory replay and helpers for tests, fuzzers and benches
/// (feature `testing`).
#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod testing;
