//! The engine's pure core: the index, the timer wheel and the counters, with
//! one method that applies a command at a given time and reports, through a
//! [`Sink`], the log records it implies. No threads, files or clocks here, so
//! the core is tested and fuzzed directly; `engine` wraps it with the writer
//! thread and `replay` feeds it records from the log.

use std::collections::{BTreeMap, VecDeque};

use crate::error::{Error, Result};
use crate::evict::{ENTRY_OVERHEAD, S3Fifo};
use crate::index::{Index, MAX_KEY_LEN, blob_len, payload_len};
use crate::record::{Record, set_record_len};
use crate::wheel::Wheel;

/// How long a write keeps its value (Django's `timeout`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ttl {
    /// Never expires (Django `timeout=None`).
    Never,
    /// Expires this many ms from now; 0 stores nothing and removes any old value.
    Millis(u64),
}

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
}

impl Command {
    /// Whether the command may write to the log.
    pub fn is_write(&self) -> bool {
        !matches!(
            self,
            Command::Get { .. }
                | Command::GetMany { .. }
                | Command::HasKey { .. }
                | Command::GetWithTtl { .. }
                | Command::Stats
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
    Stats(Stats),
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
    /// The log cannot be written: writes are refused, reads served.
    pub read_only: bool,
}

/// Where the core reports the records its changes need; returns the segment
/// the record goes to.
pub(crate) trait Sink {
    fn append(&mut self, rec: &Record<'_>) -> u32;
}

/// A sink that drops the records, for uses of the core without a log
/// (tests, fuzzing).
#[derive(Default)]
pub struct NullSink;

impl Sink for NullSink {
    fn append(&mut self, _: &Record<'_>) -> u32 {
        0
    }
}

/// What to do when a write would pass `max_memory` or `max_entries`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Eviction {
    /// Evict by S3-FIFO (expired entries go first).
    #[default]
    S3Fifo,
    /// Refuse the write with "cache full".
    NoEviction,
}

impl std::str::FromStr for Eviction {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "s3fifo" | "s3-fifo" => Ok(Eviction::S3Fifo),
            "noeviction" | "none" => Ok(Eviction::NoEviction),
            other => Err(format!("unknown eviction policy {other:?}; use s3fifo or noeviction")),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    /// Cap on `memory_bytes` (keys, values and `ENTRY_OVERHEAD` per entry).
    pub max_memory: Option<u64>,
    /// Cap on the number of entries.
    pub max_entries: Option<u64>,
    /// What happens at a cap. Replay applies the same caps.
    pub eviction: Eviction,
    /// Most bytes of values one request (a command, or a batch of them) may
    /// return: checked before a reply is built.
    pub max_reply_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: 1024,
            max_value_bytes: 16 << 20,
            max_memory: None,
            max_entries: None,
            eviction: Eviction::S3Fifo,
            max_reply_bytes: 64 << 20,
        }
    }
}

type Timer = (u32, u32);

pub struct State {
    index: Index,
    wheel: Wheel<Timer>,
    /// Timers found due but not yet processed (expiry work is bounded per loop).
    due: VecDeque<Timer>,
    /// Bytes of live set records per segment, for `log_live_bytes` and compaction.
    live_by_segment: BTreeMap<u32, u64>,
    limits: Limits,
    stats: Stats,
    /// S3-FIFO queues, when a cap is set and the policy evicts.
    evict: Option<S3Fifo>,
    /// While a batch is open: how to take back each change it made, should
    /// its write fail.
    undo: Option<Vec<Undo>>,
    /// Evicted entries per segment that holds their (now stale) set record.
    /// While any such segment is in the log, a delete of a key that is not in
    /// memory is still logged: the key may be one of them, and without the
    /// record a restart would bring its old value back.
    evicted_in: BTreeMap<u32, u64>,
    /// Bytes of values the current request may still return, and what it
    /// could at the start (for the error message).
    reply_room: usize,
    reply_limit: usize,
}

/// The inverse of one change, kept until the batch's write succeeds. Old
/// blobs are moved here, not copied, so keeping them costs nothing.
enum Undo {
    /// The key was absent (or held an expired entry): remove what is there.
    Remove(u32),
    /// The slot held this blob, expiry and segment.
    Restore { slot: u32, blob: Box<[u8]>, expires: u64, segment: u32 },
    /// The key was removed: put it back.
    Reinsert { blob: Box<[u8]>, expires: u64, segment: u32 },
    /// The entry's expiry was this.
    Expiry { slot: u32, expires: u64 },
    /// Everything before a `clear`.
    Clear(Box<Cleared>),
}

struct Cleared {
    index: Index,
    wheel: Wheel<Timer>,
    due: VecDeque<Timer>,
    live_by_segment: BTreeMap<u32, u64>,
    evict: Option<S3Fifo>,
}

impl State {
    pub fn new(limits: Limits, now: u64) -> State {
        State {
            index: Index::new(),
            wheel: Wheel::new(now),
            due: VecDeque::new(),
            live_by_segment: BTreeMap::new(),
            evict: ((limits.max_memory.is_some() || limits.max_entries.is_some())
                && limits.eviction == Eviction::S3Fifo)
                .then(S3Fifo::default),
            limits,
            stats: Stats::default(),
            undo: None,
            evicted_in: BTreeMap::new(),
            reply_room: limits.max_reply_bytes,
            reply_limit: limits.max_reply_bytes,
        }
    }

    /// Starts a request (one message: a command, or a batch of them) that
    /// may return at most `room` bytes of values.
    pub(crate) fn set_reply_room(&mut self, room: usize) {
        self.reply_room = room.min(self.limits.max_reply_bytes);
        self.reply_limit = self.reply_room;
    }

    /// Bytes of values returned since `set_reply_room`.
    pub(crate) fn reply_used(&self) -> usize {
        self.reply_limit - self.reply_room
    }

    fn take_reply_room(&mut self, size: usize) -> Result<()> {
        if size > self.reply_room {
            return Err(Error::ReplyTooLarge { size, max: self.reply_room });
        }
        self.reply_room -= size;
        Ok(())
    }

    /// Removes an entry to make room, remembering that its set record stays
    /// in the log (see `evicted_in`).
    fn evict(&mut self, slot: u32) {
        *self.evicted_in.entry(self.index.entry(slot).segment).or_default() += 1;
        self.remove(slot);
        self.stats.evicted += 1;
    }

    /// Segments below `floor` have left the log, with the records of the
    /// entries evicted from them.
    pub(crate) fn forget_segments_below(&mut self, floor: u32) {
        self.evicted_in = self.evicted_in.split_off(&floor);
    }

    /// Whether the log may still hold a set record for a key not in memory.
    fn may_hold_evicted(&self) -> bool {
        !self.evicted_in.is_empty()
    }

    /// Starts recording how to undo the changes of a batch.
    pub(crate) fn begin_batch(&mut self) {
        self.undo.get_or_insert_with(Vec::new).clear();
    }

    /// The batch is durable: forget how to undo it.
    pub(crate) fn commit_batch(&mut self) {
        if let Some(u) = &mut self.undo {
            u.clear();
        }
    }

    fn log_undo(&mut self, u: Undo) {
        if let Some(log) = &mut self.undo {
            log.push(u);
        }
    }

    /// The batch's write failed: take back its changes, newest first.
    pub(crate) fn rollback_batch(&mut self) {
        let Some(mut log) = self.undo.take() else { return };
        while let Some(u) = log.pop() {
            match u {
                Undo::Remove(slot) => {
                    self.remove(slot);
                }
                Undo::Restore { slot, blob, expires, segment } => {
                    let e = self.index.entry(slot);
                    let (cur_len, cur_segment, cur_blob) =
                        (set_record_len(e.key().len(), e.value().len()), e.segment, e.blob_len());
                    let old_len = set_record_len(0, payload_len(&blob));
                    if let Some(ev) = &mut self.evict {
                        ev.on_resize(&self.index, slot, cur_blob, blob.len());
                    }
                    self.unaccount(cur_segment, cur_len);
                    self.index.swap_blob(slot, blob);
                    let e = self.index.entry_mut(slot);
                    e.expires = expires;
                    e.segment = segment;
                    *self.live_by_segment.entry(segment).or_default() += old_len as u64;
                    self.arm(slot, 0, expires);
                }
                Undo::Reinsert { blob, expires, segment } => {
                    let len = set_record_len(0, payload_len(&blob));
                    let slot = self.index.insert_blob(blob, expires, segment);
                    *self.live_by_segment.entry(segment).or_default() += len as u64;
                    self.arm(slot, 0, expires);
                    if let Some(ev) = &mut self.evict {
                        let hash = self.index.hash(self.index.entry(slot).key());
                        ev.on_insert(&mut self.index, slot, hash);
                    }
                }
                Undo::Expiry { slot, expires } => {
                    self.index.entry_mut(slot).expires = expires;
                    self.arm(slot, 0, expires);
                }
                Undo::Clear(c) => {
                    let c = *c;
                    self.index = c.index;
                    self.wheel = c.wheel;
                    self.due = c.due;
                    self.live_by_segment = c.live_by_segment;
                    self.evict = c.evict;
                }
            }
        }
        log.clear();
        self.undo = Some(log);
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.len() == 0
    }

    /// Sizes the index for `n` entries before replay, no more than the caps
    /// let it hold.
    pub(crate) fn reserve(&mut self, n: usize) {
        let mut n = n;
        if let Some(max) = self.limits.max_entries {
            n = n.min(usize::try_from(max).unwrap_or(usize::MAX));
        }
        if let Some(max) = self.limits.max_memory {
            n = n.min(usize::try_from(max / (ENTRY_OVERHEAD as u64 + 2)).unwrap_or(usize::MAX));
        }
        self.index.reserve(n);
    }

    /// Whether the index holds more than the caps allow.
    fn over_caps(&self) -> bool {
        self.limits.max_memory.is_some_and(|max| self.memory_bytes() as u64 > max)
            || self.limits.max_entries.is_some_and(|max| self.index.len() as u64 > max)
    }

    /// Evicts until the caps hold; false if the policy has nothing to evict.
    fn enforce_caps(&mut self) -> bool {
        while self.over_caps() {
            match self.evict.as_mut().map(|ev| (ev.victim(&mut self.index), ev.own_bytes())) {
                Some((Some(slot), _)) => self.evict(slot),
                Some((None, ghosts)) if ghosts > 0 => {
                    if let Some(ev) = &mut self.evict {
                        ev.forget_ghosts();
                    }
                }
                _ => return false,
            }
        }
        true
    }

    /// Memory as `max_memory` counts it: keys, values, `ENTRY_OVERHEAD` per
    /// entry, and the eviction ghosts.
    pub fn memory_bytes(&self) -> usize {
        self.index.blob_bytes() + self.index.len() * ENTRY_OVERHEAD + self.evict.as_ref().map_or(0, S3Fifo::own_bytes)
    }

    pub(crate) fn live_log_bytes(&self) -> u64 {
        self.live_by_segment.values().sum()
    }

    /// Every live entry as `(key, value, expires)`, for checks and tests.
    pub fn entries(&self, now: u64) -> impl Iterator<Item = (&[u8], &[u8], u64)> {
        self.index.iter().filter(move |(_, e)| e.is_live_at(now)).map(|(_, e)| (e.key(), e.value(), e.expires))
    }

    /// When the wheel next needs attention (ms), if ever.
    pub fn next_deadline(&self) -> Option<u64> {
        if !self.due.is_empty() {
            return Some(0);
        }
        self.wheel.next_deadline()
    }

    fn check_key(&self, key: &[u8]) -> Result<()> {
        let max = self.limits.max_key_bytes.min(MAX_KEY_LEN);
        if key.len() > max {
            return Err(Error::KeyTooLong { len: key.len(), max });
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<()> {
        if value.len() > self.limits.max_value_bytes {
            return Err(Error::ValueTooLarge { size: value.len(), max: self.limits.max_value_bytes });
        }
        Ok(())
    }

    /// Validates a command against the limits without applying it.
    pub fn validate(&self, cmd: &Command) -> Result<()> {
        match cmd {
            Command::Get { key } | Command::Delete { key } | Command::HasKey { key } | Command::GetWithTtl { key } => {
                self.check_key(key)
            }
            Command::Touch { key, .. } | Command::Incr { key, .. } => self.check_key(key),
            Command::GetMany { keys } | Command::DeleteMany { keys } => keys.iter().try_for_each(|k| self.check_key(k)),
            Command::Set { key, value, .. }
            | Command::Add { key, value, .. }
            | Command::GetOrAdd { key, value, .. } => {
                self.check_key(key)?;
                self.check_value(value)
            }
            Command::Rename { from, to } => {
                self.check_key(from)?;
                self.check_key(to)
            }
            // set_many refuses items one by one and reports them.
            Command::SetMany { .. } | Command::Clear | Command::Stats => Ok(()),
        }
    }

    /// Applies one command at time `now` (unix ms).
    pub(crate) fn apply(&mut self, cmd: &Command, now: u64, sink: &mut impl Sink) -> Result<Reply> {
        if let Command::Set { key, value, .. } = cmd
            && self.check_key(key).is_ok()
            && let Err(e) = self.check_value(value)
        {
            // Django's memcached rule: a value refused for its size removes
            // the old one, so a stale value is never served after a failed
            // write.
            self.delete(key, now, sink);
            return Err(e);
        }
        self.validate(cmd)?;
        Ok(match cmd {
            Command::Get { key } => Reply::Value(self.get(key, now)?),
            Command::GetWithTtl { key } => {
                let value = self.get(key, now)?;
                Reply::ValueWithTtl(value.map(|v| {
                    let expires = self.index.find(key).map_or(0, |slot| self.index.entry(slot).expires);
                    (v, if expires == 0 { Ttl::Never } else { Ttl::Millis(expires.saturating_sub(now).max(1)) })
                }))
            }
            Command::GetMany { keys } => {
                // The reply's size is known before any of it is built (a key
                // named 4,000 times counts 4,000 times).
                let mut size = 0usize;
                for key in keys {
                    if let Some(slot) = self.live(key, now) {
                        size = size.saturating_add(self.index.entry(slot).value().len());
                    }
                }
                if size > self.reply_room {
                    return Err(Error::ReplyTooLarge { size, max: self.reply_room });
                }
                Reply::Values(keys.iter().map(|k| self.get(k, now)).collect::<Result<_>>()?)
            }
            Command::Set { key, value, ttl } => {
                self.set(key, value, *ttl, now, sink)?;
                Reply::Done
            }
            Command::SetMany { items, ttl } => {
                let mut failed = Vec::new();
                for (i, (key, value)) in items.iter().enumerate() {
                    let stored = self.check_key(key).and_then(|()| match self.check_value(value) {
                        Ok(()) => self.set(key, value, *ttl, now, sink),
                        Err(e) => {
                            // As for `Set`: the old value goes too.
                            self.delete(key, now, sink);
                            Err(e)
                        }
                    });
                    if stored.is_err() {
                        failed.push(i);
                    }
                }
                Reply::Failed(failed)
            }
            Command::Add { key, value, ttl } => {
                if self.live(key, now).is_some() {
                    Reply::Bool(false)
                } else {
                    self.set(key, value, *ttl, now, sink)?;
                    Reply::Bool(true)
                }
            }
            Command::GetOrAdd { key, value, ttl } => match self.live(key, now) {
                Some(slot) => {
                    self.take_reply_room(self.index.entry(slot).value().len())?;
                    self.stats.hits += 1;
                    if self.evict.is_some() {
                        S3Fifo::on_access(&mut self.index, slot);
                    }
                    Reply::Value(Some(self.index.entry(slot).value().to_vec()))
                }
                None => {
                    self.take_reply_room(value.len())?;
                    self.stats.misses += 1;
                    self.set(key, value, *ttl, now, sink)?;
                    Reply::Value(Some(value.clone()))
                }
            },
            Command::Delete { key } => Reply::Bool(self.delete(key, now, sink)),
            Command::DeleteMany { keys } => {
                for key in keys {
                    self.delete(key, now, sink);
                }
                Reply::Done
            }
            Command::Clear => {
                sink.append(&Record::Clear);
                self.clear(now);
                Reply::Done
            }
            Command::Touch { key, ttl } => Reply::Bool(self.touch(key, *ttl, now, sink)),
            Command::Incr { key, delta } => Reply::Int(self.incr(key, *delta, now, sink)?),
            Command::HasKey { key } => Reply::Bool(self.live(key, now).is_some()),
            Command::Rename { from, to } => {
                self.rename(from, to, now, sink)?;
                Reply::Done
            }
            Command::Stats => Reply::Stats(self.stats()),
        })
    }

    pub(crate) fn stats(&self) -> Stats {
        Stats {
            entries: self.index.len() as u64,
            memory_bytes: self.memory_bytes() as u64,
            log_live_bytes: self.live_log_bytes(),
            ..self.stats.clone()
        }
    }

    /// The slot of `key` if it is present and unexpired. An expired entry
    /// found on the way is removed (without a log record: its own record
    /// already carries the deadline).
    fn live(&mut self, key: &[u8], now: u64) -> Option<u32> {
        let slot = self.index.find(key)?;
        if self.index.entry(slot).is_live_at(now) {
            Some(slot)
        } else {
            self.remove(slot);
            self.stats.expired += 1;
            None
        }
    }

    fn get(&mut self, key: &[u8], now: u64) -> Result<Option<Vec<u8>>> {
        match self.live(key, now) {
            Some(slot) => {
                self.take_reply_room(self.index.entry(slot).value().len())?;
                self.stats.hits += 1;
                if self.evict.is_some() {
                    S3Fifo::on_access(&mut self.index, slot);
                }
                Ok(Some(self.index.entry(slot).value().to_vec()))
            }
            None => {
                self.stats.misses += 1;
                Ok(None)
            }
        }
    }

    fn set(&mut self, key: &[u8], value: &[u8], ttl: Ttl, now: u64, sink: &mut impl Sink) -> Result<()> {
        match deadline(ttl, now) {
            None => {
                // Django: a zero timeout stores nothing and drops the old value.
                if let Some(slot) = self.live(key, now) {
                    sink.append(&Record::Delete { key });
                    self.remove_logged(slot);
                } else if self.may_hold_evicted() {
                    sink.append(&Record::Delete { key });
                }
            }
            Some(expires) => {
                self.make_room(key, blob_len(key, value), now)?;
                let segment = sink.append(&Record::Set { key, value, expires: crate::UnixMillis(expires) });
                self.put(key, value, expires, segment, now);
                self.stats.sets += 1;
            }
        }
        Ok(())
    }

    /// Makes room for a write of `bytes` (its key and value blob) under the caps: first
    /// expired entries go, then S3-FIFO evicts, or under `noeviction` the
    /// write is refused.
    fn make_room(&mut self, key: &[u8], bytes: usize, now: u64) -> Result<()> {
        let adds_entry = self.index.find(key).is_none();
        let over = |s: &State| {
            s.limits.max_memory.is_some_and(|max| (s.memory_bytes() + bytes + ENTRY_OVERHEAD) as u64 > max)
                || s.limits.max_entries.is_some_and(|max| adds_entry && s.index.len() as u64 >= max)
        };
        if !over(self) {
            return Ok(());
        }
        self.expire(now, usize::MAX);
        while over(self) {
            let victim = self.evict.as_mut().and_then(|ev| ev.victim(&mut self.index));
            let Some(slot) = victim else {
                // Nothing left to evict: the ghosts' own memory goes before
                // a write is refused.
                if let Some(ev) = self.evict.as_mut().filter(|ev| ev.own_bytes() > 0) {
                    ev.forget_ghosts();
                    continue;
                }
                return Err(Error::CacheFull {
                    used: self.memory_bytes() as u64,
                    max: self.limits.max_memory.unwrap_or(u64::MAX),
                });
            };
            self.evict(slot);
        }
        Ok(())
    }

    /// Stores a value (no logging): the shared step of `set`, `incr` and
    /// `rename`. An expired entry found under the key is replaced as if new.
    fn put(&mut self, key: &[u8], value: &[u8], expires: u64, segment: u32, now: u64) {
        let (slot, inserted) = self.index.find_or_insert(key, value, expires, segment);
        if inserted {
            self.log_undo(Undo::Remove(slot));
            self.arm(slot, 0, expires);
            if let Some(ev) = &mut self.evict {
                let hash = self.index.hash(key);
                ev.on_insert(&mut self.index, slot, hash);
            }
        } else {
            let e = self.index.entry(slot);
            let (old_expires, old_segment, old_len) =
                (e.expires, e.segment, set_record_len(key.len(), e.value().len()));
            let was_live = e.is_live_at(now);
            let old_blob = e.blob_len();
            if let Some(ev) = &mut self.evict {
                if was_live {
                    ev.on_resize(&self.index, slot, old_blob, blob_len(key, value));
                    S3Fifo::on_access(&mut self.index, slot);
                } else {
                    ev.on_remove(&self.index, slot);
                }
            }
            let old = self.index.replace_value(slot, value);
            self.log_undo(if was_live {
                Undo::Restore { slot, blob: old, expires: old_expires, segment: old_segment }
            } else {
                Undo::Remove(slot)
            });
            self.unaccount(old_segment, old_len);
            let e = self.index.entry_mut(slot);
            e.segment = segment;
            e.expires = expires;
            if was_live {
                self.arm(slot, old_expires, expires);
            } else {
                // A new entry in an old slot: timers of the expired one must not match.
                self.stats.expired += 1;
                self.index.entry_mut(slot).new_generation();
                self.arm(slot, 0, expires);
                if let Some(ev) = &mut self.evict {
                    let hash = self.index.hash(key);
                    ev.on_insert(&mut self.index, slot, hash);
                }
            }
        }
        *self.live_by_segment.entry(segment).or_default() += set_record_len(key.len(), value.len()) as u64;
    }

    fn unaccount(&mut self, segment: u32, len: usize) {
        if let Some(live) = self.live_by_segment.get_mut(&segment) {
            *live -= len as u64;
            if *live == 0 {
                self.live_by_segment.remove(&segment);
            }
        }
    }

    /// Makes sure a timer will fire at or before `new` (ms). A pending timer
    /// for an earlier deadline is kept: when it fires, the wheel re-inserts
    /// it at the entry's current deadline. So an overwrite-heavy load with
    /// the default TTL adds no timers at all. A shortened deadline adds a
    /// timer; the older one, firing later, finds the entry gone or re-arms.
    fn arm(&mut self, slot: u32, old: u64, new: u64) {
        if new == 0 || (old != 0 && old <= new) {
            return;
        }
        let generation = self.index.entry(slot).generation();
        self.wheel.insert(new, (slot, generation));
    }

    /// Removes an entry without logging it (expiry, eviction, undo).
    fn remove(&mut self, slot: u32) -> Box<[u8]> {
        if let Some(ev) = &mut self.evict {
            ev.on_remove(&self.index, slot);
        }
        let e = self.index.entry(slot);
        let (segment, len) = (e.segment, set_record_len(e.key().len(), e.value().len()));
        self.unaccount(segment, len);
        self.index.remove_slot(slot)
    }

    /// Removes an entry because of a logged delete: undone if the write fails.
    fn remove_logged(&mut self, slot: u32) {
        let e = self.index.entry(slot);
        let (expires, segment) = (e.expires, e.segment);
        let blob = self.remove(slot);
        self.log_undo(Undo::Reinsert { blob, expires, segment });
    }

    fn delete(&mut self, key: &[u8], now: u64, sink: &mut impl Sink) -> bool {
        match self.live(key, now) {
            Some(slot) => {
                sink.append(&Record::Delete { key });
                self.remove_logged(slot);
                self.stats.deletes += 1;
                true
            }
            None => {
                // The key may have been evicted with its set record still in
                // the log: the delete must be on record, or a restart would
                // bring the old value back.
                if self.may_hold_evicted() {
                    sink.append(&Record::Delete { key });
                }
                false
            }
        }
    }

    fn clear(&mut self, now: u64) {
        // Every record before a clear is void, evicted ones included.
        self.evicted_in.clear();
        let fresh_evict = self.evict.as_ref().map(|_| S3Fifo::default());
        let before = Cleared {
            index: std::mem::replace(&mut self.index, Index::new()),
            wheel: std::mem::replace(&mut self.wheel, Wheel::new(now)),
            due: std::mem::take(&mut self.due),
            live_by_segment: std::mem::take(&mut self.live_by_segment),
            evict: std::mem::replace(&mut self.evict, fresh_evict),
        };
        if self.undo.is_some() {
            self.log_undo(Undo::Clear(Box::new(before)));
        }
    }

    fn touch(&mut self, key: &[u8], ttl: Ttl, now: u64, sink: &mut impl Sink) -> bool {
        let Some(slot) = self.live(key, now) else { return false };
        match deadline(ttl, now) {
            None => {
                sink.append(&Record::Delete { key });
                self.remove_logged(slot);
            }
            Some(expires) => {
                sink.append(&Record::Touch { key, expires: crate::UnixMillis(expires) });
                self.set_expiry(slot, expires);
            }
        }
        true
    }

    fn set_expiry(&mut self, slot: u32, expires: u64) {
        let e = self.index.entry_mut(slot);
        let old = std::mem::replace(&mut e.expires, expires);
        self.log_undo(Undo::Expiry { slot, expires: old });
        self.arm(slot, old, expires);
    }

    fn incr(&mut self, key: &[u8], delta: i64, now: u64, sink: &mut impl Sink) -> Result<i64> {
        let slot = self.live(key, now).ok_or(Error::NotFound)?;
        let e = self.index.entry(slot);
        let current = decode_int(e.value())?;
        let next = current.checked_add(delta).ok_or(Error::Overflow)?;
        let mut value = Vec::with_capacity(9);
        rmp::encode::write_sint(&mut value, next).expect("writing to a Vec cannot fail");
        let expires = e.expires;
        let segment = sink.append(&Record::Set { key, value: &value, expires: crate::UnixMillis(expires) });
        self.put(key, &value, expires, segment, now);
        Ok(next)
    }

    fn rename(&mut self, from: &[u8], to: &[u8], now: u64, sink: &mut impl Sink) -> Result<()> {
        let slot = self.live(from, now).ok_or(Error::NotFound)?;
        if from == to {
            return Ok(());
        }
        let e = self.index.entry(slot);
        let (value, expires) = (e.value().to_vec(), e.expires);
        self.make_room(to, blob_len(to, &value), now)?;
        if self.index.find(from).is_none() {
            // Making room evicted the value being moved.
            return Err(Error::NotFound);
        }
        // The new key is written before the old one is deleted: a torn batch
        // then leaves a duplicate, never a loss.
        let segment = sink.append(&Record::Set { key: to, value: &value, expires: crate::UnixMillis(expires) });
        self.put(to, &value, expires, segment, now);
        sink.append(&Record::Delete { key: from });
        let slot = self.index.find(from).expect("renamed key still present");
        self.remove_logged(slot);
        Ok(())
    }

    /// Removes up to `budget` entries whose deadline has passed; returns how
    /// many it removed. Removal writes nothing to the log.
    pub(crate) fn expire(&mut self, now: u64, budget: usize) -> usize {
        if self.due.len() < budget {
            let index = &self.index;
            let mut out = Vec::new();
            self.wheel.poll(
                now,
                |&(slot, generation)| {
                    index.get_gen(slot, generation).and_then(|e| (e.expires != 0).then_some(e.expires))
                },
                &mut out,
            );
            self.due.extend(out);
        }
        let mut removed = 0;
        while removed < budget {
            let Some((slot, generation)) = self.due.pop_front() else { break };
            let Some(e) = self.index.get_gen(slot, generation) else { continue };
            if e.expires != 0 && e.expires <= now {
                self.remove(slot);
                self.stats.expired += 1;
                removed += 1;
            } else if e.expires != 0 {
                self.wheel.insert(e.expires, (slot, generation));
            }
        }
        removed
    }

    /// Applies one record read back from the log. Every record applies,
    /// whatever its deadline: a set whose deadline has passed still replaces
    /// the older value (so that cannot come back), and a later touch may have
    /// extended it while it was live. What is expired at the end of replay is
    /// dropped by `finish_replay`.
    pub(crate) fn replay(&mut self, rec: &Record<'_>, segment: u32, now: u64) {
        match *rec {
            Record::Set { key, value, expires } => {
                self.put_unarmed(key, value, expires.0, segment);
                // The caps hold as replay goes, so a log larger than
                // max_memory never has to fit in memory whole.
                self.enforce_caps();
            }
            Record::Delete { key } => {
                if let Some(slot) = self.index.find(key) {
                    self.remove(slot);
                }
            }
            Record::Touch { key, expires } => {
                if let Some(slot) = self.index.find(key) {
                    self.index.entry_mut(slot).expires = expires.0;
                }
            }
            Record::Clear => self.clear(now),
        }
    }

    /// `put` for replay: timers are armed once at the end, not per record.
    fn put_unarmed(&mut self, key: &[u8], value: &[u8], expires: u64, segment: u32) {
        let (slot, inserted) = self.index.find_or_insert(key, value, expires, segment);
        if inserted {
            if let Some(ev) = &mut self.evict {
                let hash = self.index.hash(key);
                ev.on_insert(&mut self.index, slot, hash);
            }
        } else {
            let e = self.index.entry(slot);
            let (old_segment, old_len) = (e.segment, set_record_len(key.len(), e.value().len()));
            if let Some(ev) = &mut self.evict {
                ev.on_resize(&self.index, slot, e.blob_len(), blob_len(key, value));
            }
            self.index.replace_value(slot, value);
            self.unaccount(old_segment, old_len);
            let e = self.index.entry_mut(slot);
            e.segment = segment;
            e.expires = expires;
        }
        *self.live_by_segment.entry(segment).or_default() += set_record_len(key.len(), value.len()) as u64;
    }

    /// One slice of compaction: re-appends a set (same key, value and absolute
    /// expiry) for each live entry whose record sits in a segment below
    /// `cutoff`, visiting at most `budget` slots from `cursor` and stopping
    /// after `max_bytes` of records. Returns the next cursor, or `None` when
    /// every slot has been visited. Entries written meanwhile already live at
    /// or above `cutoff`; expired ones are left to vanish with their segment.
    pub(crate) fn compact_slice(
        &mut self,
        cursor: u32,
        cutoff: u32,
        budget: u32,
        max_bytes: usize,
        now: u64,
        sink: &mut impl Sink,
    ) -> Option<u32> {
        let end = cursor.saturating_add(budget).min(self.index.slot_count());
        let mut written = 0;
        let mut slot = cursor;
        while slot < end && written < max_bytes {
            if let Some(e) = self.index.occupied(slot)
                && e.segment < cutoff
                && e.is_live_at(now)
            {
                let (key, value, expires) = (e.key(), e.value(), e.expires);
                let len = set_record_len(key.len(), value.len());
                let old = e.segment;
                let segment = sink.append(&Record::Set { key, value, expires: crate::UnixMillis(expires) });
                written += len;
                self.unaccount(old, len);
                *self.live_by_segment.entry(segment).or_default() += len as u64;
                self.index.entry_mut(slot).segment = segment;
            }
            slot += 1;
        }
        (slot < self.index.slot_count()).then_some(slot)
    }

    /// Every live entry's set record now lives in `segment` (after a rewrite).
    pub(crate) fn move_all_to_segment(&mut self, segment: u32) {
        let slots: Vec<u32> = self.index.iter().map(|(slot, _)| slot).collect();
        let mut live = 0u64;
        for slot in slots {
            let e = self.index.entry_mut(slot);
            e.segment = segment;
            live += set_record_len(e.key().len(), e.value().len()) as u64;
        }
        self.live_by_segment.clear();
        if live > 0 {
            self.live_by_segment.insert(segment, live);
        }
    }

    /// After replay: drop what expired during it and arm one timer per entry.
    pub(crate) fn finish_replay(&mut self, now: u64) {
        self.wheel = Wheel::new(now);
        let mut expired = Vec::new();
        let mut timers = Vec::new();
        for (slot, e) in self.index.iter() {
            if e.expires != 0 {
                if e.expires <= now {
                    expired.push(slot);
                } else {
                    timers.push((e.expires, (slot, e.generation())));
                }
            }
        }
        self.stats.expired += expired.len() as u64;
        for slot in expired {
            self.remove(slot);
        }
        for (when, timer) in timers {
            self.wheel.insert(when, timer);
        }
        // The caps hold after a restart too (with a smaller max_memory, say).
        if !self.enforce_caps() {
            tracing::warn!(
                entries = self.index.len(),
                memory = self.memory_bytes(),
                "the log holds more than max_memory/max_entries allow and the eviction policy is noeviction: \
                 writes will get 'cache full' until keys are deleted or expire"
            );
        }
    }
}

/// The deadline for a TTL: `None` for "expire now", `Some(0)` for never.
fn deadline(ttl: Ttl, now: u64) -> Option<u64> {
    match ttl {
        Ttl::Never => Some(0),
        Ttl::Millis(0) => None,
        Ttl::Millis(ms) => Some(now.saturating_add(ms).max(1)),
    }
}

/// Reads a value that must be exactly one MessagePack integer.
pub(crate) fn decode_int(value: &[u8]) -> Result<i64> {
    let mut rd = value;
    match rmp::decode::read_int::<i64, _>(&mut rd) {
        Ok(n) if rd.is_empty() => Ok(n),
        Ok(_) => Err(Error::NotAnInteger),
        Err(rmp::decode::NumValueReadError::OutOfRange) => Err(Error::Overflow),
        Err(_) => Err(Error::NotAnInteger),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(n: i64) -> Vec<u8> {
        let mut v = Vec::new();
        rmp::encode::write_sint(&mut v, n).unwrap();
        v
    }

    struct Core {
        s: State,
        now: u64,
        sink: NullSink,
    }

    impl Core {
        fn new() -> Core {
            Core { s: State::new(Limits::default(), 1_000_000), now: 1_000_000, sink: NullSink }
        }
        fn run(&mut self, cmd: Command) -> Result<Reply> {
            let r = self.s.apply(&cmd, self.now, &mut self.sink);
            self.s.expire(self.now, usize::MAX);
            r
        }
        fn get(&mut self, k: &str) -> Option<Vec<u8>> {
            match self.run(Command::Get { key: k.into() }).unwrap() {
                Reply::Value(v) => v,
                r => panic!("{r:?}"),
            }
        }
        fn set(&mut self, k: &str, v: &[u8], ttl: Ttl) {
            self.run(Command::Set { key: k.into(), value: v.to_vec(), ttl }).unwrap();
        }
        fn advance(&mut self, ms: u64) {
            self.now += ms;
            self.s.expire(self.now, usize::MAX);
        }
    }

    #[test]
    fn zero_ttl_stores_nothing_and_removes_old_value() {
        let mut c = Core::new();
        c.set("k", b"v", Ttl::Never);
        c.set("k", b"w", Ttl::Millis(0));
        assert_eq!(c.get("k"), None);
        assert_eq!(
            c.run(Command::Add { key: "n".into(), value: b"x".to_vec(), ttl: Ttl::Millis(0) }).unwrap(),
            Reply::Bool(true)
        );
        assert_eq!(c.get("n"), None);
    }

    #[test]
    fn expiry_is_exact_and_active() {
        let mut c = Core::new();
        c.set("k", b"v", Ttl::Millis(1000));
        c.advance(999);
        assert_eq!(c.get("k"), Some(b"v".to_vec()));
        c.advance(1);
        assert_eq!(c.s.len(), 0, "removed by the wheel without a read");
        assert_eq!(c.get("k"), None);
        assert_eq!(c.s.stats().expired, 1);
    }

    #[test]
    fn add_over_an_expired_key_succeeds() {
        let mut c = Core::new();
        c.set("k", b"old", Ttl::Millis(10));
        assert_eq!(
            c.run(Command::Add { key: "k".into(), value: b"x".to_vec(), ttl: Ttl::Never }).unwrap(),
            Reply::Bool(false)
        );
        c.now += 10; // not yet swept by the wheel: add must still see it expired
        assert_eq!(
            c.s.apply(
                &Command::Add { key: b"k".to_vec(), value: b"new".to_vec(), ttl: Ttl::Never },
                c.now,
                &mut c.sink
            )
            .unwrap(),
            Reply::Bool(true)
        );
        assert_eq!(c.get("k"), Some(b"new".to_vec()));
    }

    #[test]
    fn incr_keeps_expiry_and_checks_errors() {
        let mut c = Core::new();
        c.set("n", &int(5), Ttl::Millis(100));
        assert_eq!(c.run(Command::Incr { key: "n".into(), delta: 3 }).unwrap(), Reply::Int(8));
        assert_eq!(c.run(Command::Incr { key: "n".into(), delta: -10 }).unwrap(), Reply::Int(-2));
        c.advance(100);
        assert!(matches!(c.run(Command::Incr { key: "n".into(), delta: 1 }), Err(Error::NotFound)));
        c.set("s", b"\xa3abc", Ttl::Never);
        assert!(matches!(c.run(Command::Incr { key: "s".into(), delta: 1 }), Err(Error::NotAnInteger)));
        c.set("big", &int(i64::MAX), Ttl::Never);
        assert!(matches!(c.run(Command::Incr { key: "big".into(), delta: 1 }), Err(Error::Overflow)));
        assert_eq!(c.get("big"), Some(int(i64::MAX)));
        c.set("u", &[0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], Ttl::Never);
        assert!(matches!(c.run(Command::Incr { key: "u".into(), delta: 1 }), Err(Error::Overflow)));
    }

    #[test]
    fn touch_never_revives_and_can_make_permanent() {
        let mut c = Core::new();
        c.set("k", b"v", Ttl::Millis(10));
        assert_eq!(c.run(Command::Touch { key: "k".into(), ttl: Ttl::Never }).unwrap(), Reply::Bool(true));
        c.advance(1_000_000);
        assert_eq!(c.get("k"), Some(b"v".to_vec()));
        c.set("e", b"v", Ttl::Millis(10));
        c.now += 10;
        assert_eq!(c.run(Command::Touch { key: "e".into(), ttl: Ttl::Millis(1000) }).unwrap(), Reply::Bool(false));
        assert_eq!(c.get("e"), None);
        assert_eq!(c.run(Command::Touch { key: "missing".into(), ttl: Ttl::Never }).unwrap(), Reply::Bool(false));
    }

    #[test]
    fn touch_shortens_and_lengthens() {
        let mut c = Core::new();
        c.set("k", b"v", Ttl::Millis(1000));
        c.run(Command::Touch { key: "k".into(), ttl: Ttl::Millis(5000) }).unwrap();
        c.advance(1000);
        assert_eq!(c.get("k"), Some(b"v".to_vec()));
        c.run(Command::Touch { key: "k".into(), ttl: Ttl::Millis(10) }).unwrap();
        c.advance(10);
        assert_eq!(c.s.len(), 0);
    }

    #[test]
    fn rename_keeps_expiry() {
        let mut c = Core::new();
        c.set("a", b"v", Ttl::Millis(50));
        c.run(Command::Rename { from: "a".into(), to: "b".into() }).unwrap();
        assert_eq!(c.get("a"), None);
        assert_eq!(c.get("b"), Some(b"v".to_vec()));
        c.advance(50);
        assert_eq!(c.get("b"), None);
        assert!(matches!(c.run(Command::Rename { from: "a".into(), to: "b".into() }), Err(Error::NotFound)));
    }

    #[test]
    fn get_or_add_returns_the_winner() {
        let mut c = Core::new();
        let first = c.run(Command::GetOrAdd { key: "k".into(), value: b"1".to_vec(), ttl: Ttl::Never }).unwrap();
        let second = c.run(Command::GetOrAdd { key: "k".into(), value: b"2".to_vec(), ttl: Ttl::Never }).unwrap();
        assert_eq!(first, Reply::Value(Some(b"1".to_vec())));
        assert_eq!(second, Reply::Value(Some(b"1".to_vec())));
    }

    #[test]
    fn limits_are_enforced_with_clear_errors() {
        let mut c = Core::new();
        let long = "k".repeat(2000);
        let e = c.run(Command::Get { key: long.clone().into() }).unwrap_err();
        assert!(e.to_string().contains("max_key_bytes"), "{e}");
        c.set("k", b"old", Ttl::Never);
        let e = c.run(Command::Set { key: "k".into(), value: vec![0; (16 << 20) + 1], ttl: Ttl::Never }).unwrap_err();
        assert!(e.to_string().contains("--max-value-bytes"), "{e}");
        assert_eq!(c.get("k"), None, "a set refused for its size removes the old value");
        c.set("m", b"old", Ttl::Never);
        let r =
            c.run(Command::SetMany { items: vec![(b"m".to_vec(), vec![0; (16 << 20) + 1])], ttl: Ttl::Never }).unwrap();
        assert_eq!(r, Reply::Failed(vec![0]));
        assert_eq!(c.get("m"), None, "so does a set_many item");
        let r = c
            .run(Command::SetMany { items: vec![(long.into(), vec![]), (b"ok".to_vec(), vec![])], ttl: Ttl::Never })
            .unwrap();
        assert_eq!(r, Reply::Failed(vec![0]));
        assert_eq!(c.get("ok"), Some(vec![]));
    }

    #[test]
    fn overwrites_with_a_ttl_do_not_pile_up_timers() {
        let mut c = Core::new();
        for _ in 0..1000 {
            c.set("k", b"v", Ttl::Millis(300_000));
            c.now += 1;
        }
        assert_eq!(c.s.wheel.len(), 1);
    }
}
