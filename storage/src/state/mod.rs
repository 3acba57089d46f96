//! The engine's pure core: the index, the expiry timers and the counters, with
//! one method that applies a command at a given time and reports, through a
//! [`Sink`], the log records it implies. No threads, files or clocks here, so
//! the core is tested and fuzzed directly; `engine` wraps it with the writer
//! thread and `replay` feeds it records from the log.
//!
//! By concern: `command` (what is asked and answered), `limits` (sizes,
//! reply room and the caps eviction keeps), `apply` (each command's
//! semantics), `undo` (taking back a batch whose write failed),
//! `replay` (records from the log at start-up) and `compact`
//! (compaction slices). This file holds the state and the primitives they
//! share: finding a live entry, storing, removing, arming timers, expiring.

mod apply;
mod command;
mod compact;
mod limits;
mod replay;
mod scan;
mod undo;

use std::collections::BTreeMap;

pub(crate) use command::Sink;
pub use command::{Command, ExpireWhen, Expiry, NullSink, Reply, Stats, When};
pub use limits::{Eviction, Limits};
pub use scan::glob_match;

use crate::error::{Error, Result};
use crate::evict::{ENTRY_OVERHEAD, S3Fifo};
use crate::index::{Index, Loc, blob_len};
use crate::record::{Encoding, SegmentId, set_record_len};
use crate::timers::{GroupTimers, group_slots};
use undo::Undo;

/// Where a stored value's record is and what it says besides key and
/// value: its deadline, its segment and its encoding.
#[derive(Clone, Copy, Debug)]
struct Placed {
    expires: u64,
    segment: SegmentId,
    encoding: Encoding,
}

/// What an entry held besides its item, for the undo log: the compaction
/// epoch of its set record and its encoding.
#[derive(Clone, Copy, Debug)]
struct Was {
    epoch: u8,
    encoding: Encoding,
}

/// Whether `put` is a live write at time `now` (it arms the entry's group
/// timer) or replay's (timers are armed once, at its end).
#[derive(Clone, Copy)]
enum PutMode {
    Live {
        now: u64,
    },
    /// With the key's hash, which replay has already.
    Replay {
        hash: u64,
    },
}

pub struct State {
    index: Index,
    /// When to look for expired entries, per group of slab slots.
    timers: GroupTimers,
    /// Bytes of the live entries' set records, for `log_live_bytes` and
    /// compaction.
    live_log_bytes: u64,
    /// The compaction epoch (modulo `EPOCHS`): every compaction starts the
    /// next, and an entry notes the one its set record was written in.
    epoch: u8,
    /// The newest segment a record has gone to: a bound on the segment of
    /// any entry's record (see `evicted_in`).
    newest_segment: SegmentId,
    limits: Limits,
    stats: Stats,
    /// S3-FIFO queues, when a cap is set and the policy evicts.
    evict: Option<S3Fifo>,
    /// While a batch is open: how to take back each change it made, should
    /// its write fail. Removals by expiry and eviction inside the batch are
    /// recorded too: undoing a change puts its entry back in the slot it
    /// had, which holds only if every slot freed since comes back as well.
    undo: Vec<Undo>,
    /// Whether a batch is open (changes are recorded in `undo`).
    recording: bool,
    /// Evicted entries by a segment at or after the one that holds their
    /// (now stale) set record: the newest segment when they were evicted.
    /// While any such segment is in the log, a delete of a key that is not
    /// in memory is still logged: the key may be one of them, and without
    /// the record a restart would bring its old value back.
    evicted_in: BTreeMap<SegmentId, u64>,
    /// Bytes of values the current request may still return, and what it
    /// could at the start (for the error message).
    reply_room: usize,
    reply_limit: usize,
}

impl State {
    pub fn new(limits: Limits, now: u64) -> State {
        State {
            index: Index::new(crate::arena::page_bytes_for(limits.max_memory)),
            timers: GroupTimers::new(now),
            live_log_bytes: 0,
            epoch: 0,
            newest_segment: SegmentId(0),
            evict: ((limits.max_memory.is_some() || limits.max_entries.is_some())
                && limits.eviction == Eviction::S3Fifo)
                .then(S3Fifo::default),
            limits,
            stats: Stats::default(),
            undo: Vec::new(),
            recording: false,
            evicted_in: BTreeMap::new(),
            reply_room: limits.max_reply_bytes,
            reply_limit: limits.max_reply_bytes,
        }
    }

    /// A state whose arena has pages of `page_bytes` (at least 64), for
    /// tests that want reclaim to run often. Feature `testing`.
    #[cfg(feature = "testing")]
    pub fn with_page_bytes(limits: Limits, now: u64, page_bytes: usize) -> State {
        State { index: Index::new(page_bytes.max(64)), ..State::new(limits, now) }
    }

    /// Bytes mapped outside the heap (the arena's pages and the index's
    /// hash table), and bytes written into the arena's pages (live and
    /// dead); the memory bench adds the first to what the heap holds.
    /// Feature `testing`.
    #[cfg(feature = "testing")]
    pub fn mapped_bytes(&self) -> (usize, usize) {
        (self.index.mapped_bytes(), self.index.arena_used_bytes())
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

    /// Memory as `max_memory` counts it: the live entries' items (keys,
    /// values, headers), `ENTRY_OVERHEAD` per entry, and the eviction
    /// queues and ghosts as allocated.
    pub fn memory_bytes(&self) -> usize {
        self.index.blob_bytes() + self.index.len() * ENTRY_OVERHEAD + self.evict.as_ref().map_or(0, S3Fifo::own_bytes)
    }

    pub(crate) fn live_log_bytes(&self) -> u64 {
        self.live_log_bytes
    }

    /// Every live entry as `(key, value, expires, encoding)`: what a set
    /// record of it carries.
    pub(crate) fn live_records(&self, now: u64) -> impl Iterator<Item = (&[u8], &[u8], u64, Encoding)> {
        self.index
            .iter()
            .filter(move |(_, e)| e.is_live_at(now))
            .map(|(_, e)| (e.key(), e.value(), e.expires(), e.encoding()))
    }

    /// Every live entry as `(key, value, expires)`, for checks and tests.
    pub fn entries(&self, now: u64) -> impl Iterator<Item = (&[u8], &[u8], u64)> {
        self.index.iter().filter(move |(_, e)| e.is_live_at(now)).map(|(_, e)| (e.key(), e.value(), e.expires()))
    }

    /// When the expiry timers next need attention (ms), if ever.
    pub fn next_deadline(&self) -> Option<u64> {
        self.timers.next_deadline()
    }

    pub(crate) fn stats(&self) -> Stats {
        Stats {
            entries: self.index.len() as u64,
            memory_bytes: self.memory_bytes() as u64,
            log_live_bytes: self.live_log_bytes(),
            ..self.stats.clone()
        }
    }

    /// Removes an entry to make room, remembering that its set record stays
    /// in the log (see `evicted_in`).
    fn evict(&mut self, slot: u32) {
        *self.evicted_in.entry(self.newest_segment).or_default() += 1;
        self.remove_logged(slot);
        self.stats.evicted += 1;
    }

    /// Whether the log may still hold a set record for a key not in memory.
    fn may_hold_evicted(&self) -> bool {
        !self.evicted_in.is_empty()
    }

    /// The slot of `key` if it is present and unexpired. An expired entry
    /// found on the way is removed (without a log record: its own record
    /// already carries the deadline).
    fn live(&mut self, key: &[u8], now: u64) -> Option<u32> {
        let slot = self.index.find(key)?;
        if self.index.entry(slot).is_live_at(now) {
            Some(slot)
        } else {
            self.remove_logged(slot);
            self.stats.expired += 1;
            None
        }
    }

    /// Stores a value (no logging): the shared step of `set`, `incr`,
    /// `rename` and replay. Live writes ([`PutMode::Live`]) treat an expired
    /// entry under the key as absent and arm its group's timer; replay
    /// ([`PutMode::Replay`]) applies every record as it comes (liveness is
    /// decided once, at the end, by `finish_replay`, which arms the timers).
    fn put(&mut self, key: &[u8], value: &[u8], at: Placed, mode: PutMode) {
        let Placed { expires, segment, encoding } = at;
        self.note_segment(segment);
        let hash = match mode {
            PutMode::Replay { hash } => hash,
            PutMode::Live { .. } => self.index.hash(key),
        };
        let (slot, inserted) = self.index.find_or_insert(hash, key, value, expires, self.epoch);
        let arm = matches!(mode, PutMode::Live { .. });
        if inserted {
            self.index.entry_mut(slot).set_encoding(encoding);
            self.log_undo(Undo::Remove(slot));
            if arm {
                self.timers.arm(slot, expires);
            }
            if let Some(ev) = &mut self.evict {
                ev.on_insert(&mut self.index, slot, hash);
            }
        } else {
            let e = self.index.entry(slot);
            let (was, old_len) =
                (Was { epoch: e.epoch(), encoding: e.encoding() }, set_record_len(key.len(), e.value().len()));
            let was_live = match mode {
                PutMode::Live { now } => e.is_live_at(now),
                PutMode::Replay { .. } => true,
            };
            let old_blob = e.blob_len();
            if let Some(ev) = &mut self.evict {
                if was_live {
                    ev.on_resize(&self.index, slot, old_blob, blob_len(key, value, expires));
                    if arm {
                        S3Fifo::on_access(&mut self.index, slot);
                    }
                } else {
                    ev.on_remove(&self.index, slot);
                }
            }
            let old = self.index.replace_value(slot, key, value, expires);
            // An expired entry replaced in place comes back in place too:
            // removing it instead would free a slot the batch's earlier
            // undo steps may need to find as it was.
            self.log_undo(Undo::Restore { slot, loc: old, was });
            self.unaccount(old_len);
            self.index.set_epoch(slot, self.epoch);
            if arm && was_live {
                self.index.entry_mut(slot).set_encoding(encoding);
                self.timers.arm(slot, expires);
            } else if arm {
                // A new entry in an old slot: queue handles of the expired one must not match.
                self.stats.expired += 1;
                self.index.entry_mut(slot).new_generation();
                self.index.entry_mut(slot).set_encoding(encoding);
                self.timers.arm(slot, expires);
                if let Some(ev) = &mut self.evict {
                    let hash = self.index.hash(key);
                    ev.on_insert(&mut self.index, slot, hash);
                }
            }
        }
        if !arm {
            self.index.entry_mut(slot).set_encoding(encoding);
        }
        self.live_log_bytes += set_record_len(key.len(), value.len()) as u64;
    }

    /// A record went to `segment`.
    fn note_segment(&mut self, segment: SegmentId) {
        self.newest_segment = self.newest_segment.max(segment);
    }

    /// An entry's set record of `len` bytes is no longer live.
    fn unaccount(&mut self, len: usize) {
        debug_assert!(self.live_log_bytes >= len as u64, "every live record was counted");
        self.live_log_bytes = self.live_log_bytes.saturating_sub(len as u64);
    }

    /// Removes an entry without recording its undo (replay, compaction, undo
    /// itself); returns
    /// its item's place (released, readable until the next reclaim).
    fn remove(&mut self, slot: u32) -> Loc {
        if let Some(ev) = &mut self.evict {
            ev.on_remove(&self.index, slot);
        }
        let e = self.index.entry(slot);
        self.unaccount(set_record_len(e.key().len(), e.value().len()));
        self.index.remove_slot(slot)
    }

    /// Gives the entry at `slot` a new deadline (0 for none) in a new item;
    /// returns the old item's place (released, readable until the next
    /// reclaim).
    fn retime(&mut self, slot: u32, expires: u64) -> Loc {
        let old_blob = self.index.entry(slot).blob_len();
        let old = self.index.set_expires(slot, expires);
        if let Some(ev) = &mut self.evict {
            ev.on_resize(&self.index, slot, old_blob, self.index.entry(slot).blob_len());
        }
        old
    }

    /// Removes an entry (a delete, or expiry or eviction), recording how to
    /// put it back if a batch is open: undone if the batch's write fails.
    fn remove_logged(&mut self, slot: u32) {
        let e = self.index.entry(slot);
        let was = Was { epoch: e.epoch(), encoding: e.encoding() };
        let loc = self.remove(slot);
        self.log_undo(Undo::Reinsert { loc, was });
    }

    /// Looks up the keys of a batch's single-key commands before it runs:
    /// each lookup is a few cache misses (table, slab entry, item), and
    /// lookups that do not depend on each other overlap them, where running
    /// the commands one after another waits for each in turn.
    pub(crate) fn warm(&self, cmds: &[Command]) {
        if cmds.len() > 1 {
            for key in cmds.iter().filter_map(Command::key) {
                std::hint::black_box(self.index.find(key));
            }
        }
    }

    /// Reclaims dead bytes of the arena, in a slice in step with what was
    /// written since the last one. Between batches only: inside one, the
    /// undo log refers to old items by their place, so nothing may move.
    pub fn reclaim(&mut self) {
        if self.recording {
            debug_assert!(false, "reclaim while a batch may be undone");
            return;
        }
        self.index.reclaim_step();
    }

    /// Removes up to `budget` entries whose deadline has passed, scanning the
    /// slab groups whose timer is due (at most 64 slots per unit of budget,
    /// so stale timers cannot make one call long); returns how many it
    /// removed. Removal writes nothing to the log.
    pub(crate) fn expire(&mut self, now: u64, budget: usize) -> usize {
        let (mut removed, mut examined) = (0, 0);
        let max_examined = budget.saturating_mul(64);
        let mut due = Vec::new();
        while removed < budget && examined < max_examined {
            let Some(group) = self.timers.next_due(now) else { break };
            let slots = group_slots(group, self.index.slot_count());
            examined += slots.len();
            due.clear();
            let next = self.index.scan_deadlines(slots, now, &mut due);
            let take = due.len().min(budget - removed);
            for &slot in &due[..take] {
                self.remove_logged(slot);
            }
            self.stats.expired += take as u64;
            removed += take;
            if take < due.len() {
                // The group stays due, for a later call to scan again.
                break;
            }
            self.timers.scanned(next);
        }
        removed
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
    use crate::Ttl;

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
        assert_eq!(c.s.len(), 0, "removed by its group's timer without a read");
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
        c.now += 10; // not yet removed by its timer: add must still see it expired
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

    /// A new deadline is a new item: a batch that fails takes it back to the
    /// old item, deadline and all, and the memory counted with it.
    #[test]
    fn an_undone_touch_or_persist_restores_the_deadline_it_replaced() {
        let mut c = Core::new();
        c.now = 1_700_000_000_000;
        c.set("ttl", b"v", Ttl::Millis(1000));
        c.set("never", b"v", Ttl::Never);
        let ttl = |c: &mut Core, k: &str| match c.run(Command::Ttl { key: k.into() }).unwrap() {
            Reply::Ttl(t) => t,
            r => panic!("{r:?}"),
        };
        let memory = c.s.memory_bytes();
        c.s.begin_batch();
        c.run(Command::Touch { key: "ttl".into(), ttl: Ttl::Millis(9000) }).unwrap();
        c.run(Command::Persist { key: "ttl".into() }).unwrap();
        c.run(Command::Touch { key: "never".into(), ttl: Ttl::Millis(5) }).unwrap();
        assert_eq!(ttl(&mut c, "ttl"), Some(Ttl::Never));
        assert_eq!(ttl(&mut c, "never"), Some(Ttl::Millis(5)));
        c.s.rollback_batch();
        assert_eq!(ttl(&mut c, "ttl"), Some(Ttl::Millis(1000)));
        assert_eq!(ttl(&mut c, "never"), Some(Ttl::Never));
        assert_eq!(c.s.memory_bytes(), memory);
        c.advance(1000);
        assert_eq!((c.get("ttl"), c.get("never")), (None, Some(b"v".to_vec())), "the restored deadline expires");
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

    /// Thousands of keys over many slot groups, with deadlines spread out,
    /// some shortened, some made permanent, some deleted: after each step of
    /// the clock, expiry in small budgets removes exactly the entries due,
    /// never more than a budget at a time, and never one not yet due.
    #[test]
    fn expiry_by_slot_group_removes_exactly_what_is_due() {
        let mut c = Core::new();
        let start = c.now;
        let mut model = std::collections::HashMap::new();
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut rand = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for i in 0..3000 {
            let key = format!("k{i}");
            let ttl = 1 + rand(5000);
            c.s.apply(
                &Command::Set { key: key.clone().into_bytes(), value: vec![1], ttl: Ttl::Millis(ttl) },
                c.now,
                &mut c.sink,
            )
            .unwrap();
            model.insert(key, start + ttl);
        }
        for i in (0..3000).step_by(7) {
            let key = format!("k{i}");
            let expiry = match i % 3 {
                0 => Ttl::Never,
                1 => Ttl::Millis(1 + rand(100)),
                _ => Ttl::Millis(10_000),
            };
            c.s.apply(&Command::Touch { key: key.clone().into_bytes(), ttl: expiry }, c.now, &mut c.sink).unwrap();
            model.insert(key, expiry.deadline(c.now).unwrap());
        }
        for i in (0..3000).step_by(11) {
            c.s.apply(&Command::Delete { key: format!("k{i}").into_bytes() }, c.now, &mut c.sink).unwrap();
            model.remove(&format!("k{i}"));
        }
        while c.now < start + 12_000 {
            c.now += 1 + rand(300);
            loop {
                let removed = c.s.expire(c.now, 7);
                assert!(removed <= 7);
                if removed == 0 && c.s.next_deadline().is_none_or(|at| at > c.now) {
                    break;
                }
            }
            let live = model.values().filter(|&&at| at == 0 || at > c.now).count();
            assert_eq!(c.s.len(), live, "at {}", c.now - start);
        }
        assert_eq!(c.s.len(), model.values().filter(|&&at| at == 0).count());
    }

    #[test]
    fn overwrites_with_a_ttl_do_not_pile_up_timers() {
        let mut c = Core::new();
        for _ in 0..1000 {
            c.set("k", b"v", Ttl::Millis(300_000));
            c.now += 1;
        }
        assert_eq!(c.s.timers.len(), 1);
    }
}
