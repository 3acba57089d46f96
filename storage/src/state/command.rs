//! What the engine is asked and what it answers: commands, replies, the
//! stats counters, and the sink through which the core reports the log
//! records a command implies.

use crate::Ttl;
use crate::record::{Record, SegmentId};

/// One operation on the cache. Keys and values are plain bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Get {
        key: Vec<u8>,
    },
    GetMany {
        keys: Vec<Vec<u8>>,
    },
    Set {
        key: Vec<u8>,
        value: Vec<u8>,
        ttl: Ttl,
    },
    SetMany {
        items: Vec<(Vec<u8>, Vec<u8>)>,
        ttl: Ttl,
    },
    /// Stores only if the key is absent or expired.
    Add {
        key: Vec<u8>,
        value: Vec<u8>,
        ttl: Ttl,
    },
    /// Like `Add`, but replies with the value held afterwards.
    GetOrAdd {
        key: Vec<u8>,
        value: Vec<u8>,
        ttl: Ttl,
    },
    Delete {
        key: Vec<u8>,
    },
    DeleteMany {
        keys: Vec<Vec<u8>>,
    },
    Clear,
    Touch {
        key: Vec<u8>,
        ttl: Ttl,
    },
    /// Adds `delta` to a MessagePack integer value, keeping its expiry.
    Incr {
        key: Vec<u8>,
        delta: i64,
    },
    HasKey {
        key: Vec<u8>,
    },
    /// The value and what is left of its time to live (to copy a value with
    /// its expiry, as `incr_version` across servers does).
    GetWithTtl {
        key: Vec<u8>,
    },
    /// Moves a value to another key, keeping its expiry (for `incr_version`).
    Rename {
        from: Vec<u8>,
        to: Vec<u8>,
    },
    Stats,
    /// Redis's `SET` with its options: stores when `when` holds, with
    /// `expiry` (a TTL, or the key's current one); with `get`, replies with
    /// the value held before. Replies `Swapped`.
    SetWith {
        key: Vec<u8>,
        value: Vec<u8>,
        expiry: Expiry,
        when: When,
        get: bool,
    },
    /// Returns the value and removes the key (`GETDEL`).
    GetDel {
        key: Vec<u8>,
    },
    /// What is left of a key's time to live: `Reply::Ttl(None)` if absent.
    Ttl {
        key: Vec<u8>,
    },
    /// Redis's `EXPIRE` family: a new TTL, set only when `when` holds;
    /// `Millis(0)` (a time already past) removes the key. Replies `Bool`.
    Expire {
        key: Vec<u8>,
        ttl: Ttl,
        when: ExpireWhen,
    },
    /// Removes a key's expiry; `Bool(true)` if it had one (`PERSIST`).
    Persist {
        key: Vec<u8>,
    },
    /// Adds `delta` to a counter kept as decimal text (Redis's `INCRBY`):
    /// a missing key counts from 0; the key keeps its expiry.
    IncrText {
        key: Vec<u8>,
        delta: i64,
    },
    /// Stores every item only if none of the keys is present (`MSETNX`).
    SetManyIfAbsent {
        items: Vec<(Vec<u8>, Vec<u8>)>,
        ttl: Ttl,
    },
    /// One step of a walk over the keys (`SCAN`): visits up to `count`
    /// slots from `cursor` and returns the live keys matching `pattern` (a
    /// Redis glob). A key present for the whole walk is returned at least
    /// once: an entry keeps its slot for as long as it lives.
    Scan {
        cursor: u64,
        count: usize,
        pattern: Option<Vec<u8>>,
        /// Only this RESP database's keys, returned as their client named
        /// them (see `keyspace`); `None` for every stored key as it is.
        db: Option<u8>,
    },
    /// Removes every key that starts with `prefix`, as one log record
    /// (`Cache::clear_prefix`).
    ClearPrefix {
        prefix: Vec<u8>,
    },
    /// Removes every key of RESP database `db`, as one log record (`FLUSHDB`).
    ClearDb {
        db: u8,
    },
    /// How many live keys each RESP database holds (`DBSIZE`, `INFO`), in
    /// one pass: `Reply::Counts`, one per database.
    DbSizes,
    /// New memory and entry caps (a daemon's reload), applied at once:
    /// entries over the new caps are evicted now (expired ones first).
    /// Nothing is logged; a restart applies the caps it is configured with.
    SetCaps {
        max_memory: Option<u64>,
        max_entries: Option<u64>,
    },
}

/// Which TTL `SetWith` gives the value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    Ttl(Ttl),
    /// The key's current expiry (`KEEPTTL`); none if it was absent.
    Keep,
}

/// When `SetWith` stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    Always,
    /// Only if the key is absent (`NX`).
    Absent,
    /// Only if the key is present (`XX`).
    Present,
}

/// When `Expire` applies, as Redis's `NX|XX|GT|LT` (a key without an
/// expiry counts as expiring never: `GT` never holds for it, `LT` always).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpireWhen {
    Always,
    NoExpiry,
    HasExpiry,
    Later,
    Sooner,
}

impl Command {
    /// Whether the command may write to the log.
    /// The one key a single-key command reads or writes; `None` for the
    /// commands on many keys or none.
    pub fn key(&self) -> Option<&[u8]> {
        match self {
            Command::Get { key }
            | Command::Set { key, .. }
            | Command::Add { key, .. }
            | Command::GetOrAdd { key, .. }
            | Command::Delete { key }
            | Command::Touch { key, .. }
            | Command::Incr { key, .. }
            | Command::HasKey { key }
            | Command::GetWithTtl { key }
            | Command::SetWith { key, .. }
            | Command::GetDel { key }
            | Command::Ttl { key }
            | Command::Expire { key, .. }
            | Command::Persist { key }
            | Command::IncrText { key, .. } => Some(key),
            _ => None,
        }
    }

    pub fn is_write(&self) -> bool {
        !matches!(
            self,
            Command::Get { .. }
                | Command::GetMany { .. }
                | Command::HasKey { .. }
                | Command::GetWithTtl { .. }
                | Command::Ttl { .. }
                | Command::Scan { .. }
                | Command::DbSizes
                | Command::Stats
                | Command::SetCaps { .. }
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Value(Option<Vec<u8>>),
    /// `GetWithTtl`: the value and its time left (`Millis` at least 1).
    ValueWithTtl(Option<(Vec<u8>, Ttl)>),
    /// `GetMany`: one slot per requested key, in order.
    Values(Vec<Option<Vec<u8>>>),
    Done,
    Bool(bool),
    Int(i64),
    /// `SetMany`: positions of the items that were refused.
    Failed(Vec<usize>),
    Stats(Box<Stats>),
    /// `SetWith`: whether it stored, and the old value when asked for.
    Swapped {
        stored: bool,
        old: Option<Vec<u8>>,
    },
    /// `Ttl`: the time left (`Millis` at least 1), `None` if absent.
    Ttl(Option<Ttl>),
    /// `Scan`: the cursor to continue from (0 when the walk is done) and
    /// the keys found.
    Scan {
        next: u64,
        keys: Vec<Vec<u8>>,
    },
    /// `DbSizes`: per database, database 0 first, its keys and how many of
    /// them have an expiry.
    Counts(Vec<(u64, u64)>),
}

/// Counters and sizes, as reported by `stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub entries: u64,
    pub memory_bytes: u64,
    pub hits: u64,
    pub misses: u64,
    pub sets: u64,
    pub deletes: u64,
    pub expired: u64,
    pub evicted: u64,
    pub log_bytes: u64,
    pub log_live_bytes: u64,
    pub segments: u64,
    pub compactions: u64,
    pub compaction_max_pause_us: u64,
    pub compaction_max_slice_cpu_us: u64,
    /// How long each compaction slice held the writer.
    pub compaction_pauses: crate::Latencies,
    /// How long each fsync of the log took.
    pub fsyncs: crate::Latencies,
    /// The log cannot be written: writes are refused, reads served.
    pub read_only: bool,
}

/// Where the core reports the records its changes need; returns the segment
/// the record goes to.
pub(crate) trait Sink {
    fn append(&mut self, rec: &Record<'_>) -> SegmentId;
}

/// A sink that drops the records, for uses of the core without a log
/// (tests, fuzzing).
#[derive(Default)]
pub struct NullSink;

impl Sink for NullSink {
    fn append(&mut self, _: &Record<'_>) -> SegmentId {
        SegmentId(0)
    }
}
