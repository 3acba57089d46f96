//! The in-memory index: a hash table of small slab handles over a slab of
//! entries, whose keys and values live in the arena's pages.
//!
//! The table ([`SlotTable`]) stores only a slot number per key (its
//! hash is recomputed from the key when the table grows). An entry is 16
//! bytes, 128 bits: where its item is ([`Loc`], 43 bits), its flags and a
//! 12-bit generation (16), its deadline (43 bits of unix ms, to the year
//! 2248) and the low 26 bits of the log segment of its set record (the
//! high bits come back from the newest segment: the log never spans more
//! than 2^26 segments). A 16-byte key with a 100-byte value so costs its
//! 118-byte item, the 16-byte entry and 4.6 to 6.9 bytes of table (a three-byte
//! slot and a control byte per bucket, at a load between 7/12 and 7/8; a
//! table sized by replay starts at 7/8). Expiry timers name groups of slots, not
//! entries (`timers`). Eviction queues refer to entries by `(slot,
//! generation)`; the generation changes whenever a slot gets a new entry,
//! which is how the queues cancel lazily.
//!
//! An overwritten or removed entry's item stays in its page, dead, until
//! [`Index::reclaim`] moves the live items out of the emptiest page (in
//! bounded slices, between batches) and drops it; so the undo log of a
//! batch keeps old items by their place, without copying them.

use std::ops::Deref;

use hashbrown::DefaultHashBuilder;
use std::hash::BuildHasher;

pub(crate) use crate::arena::Loc;
#[cfg(test)]
use crate::arena::PAGE_BYTES;
use crate::arena::{Arena, item_len};
use crate::record::{Encoding, SegmentId};
use crate::table::SlotTable;
use cachet_types::MAX_DEADLINE;

/// Keys are at most this long (the on-disk record keeps two bytes for it).
pub const MAX_KEY_LEN: usize = u16::MAX as usize;

/// One slot of the slab: 16 bytes, the fields packed in a `u128` (low bits
/// first): the item's place (43 bits: [`Loc::to_bits`]; `Loc::NONE` marks a
/// free slot), generation and flags (16, see [`Entry::generation`]), the
/// deadline (43 bits of unix ms; 0 means never; deadlines stop at
/// [`MAX_DEADLINE`], in the year 2248; for a free slot, the next free slot
/// or `NO_SLOT`), and the low 26 bits of the segment holding the entry's
/// set record (the index adds the high bits back, see [`segment_of`]).
#[derive(Clone, Copy)]
pub(crate) struct Entry(u128);

const LOC_SHIFT: u32 = 0;
const LOC_BITS: u32 = crate::arena::LOC_BITS;
const META_SHIFT: u32 = LOC_SHIFT + LOC_BITS;
const META_BITS: u32 = 16;
const EXPIRES_SHIFT: u32 = META_SHIFT + META_BITS;
const EXPIRES_BITS: u32 = 43;
const SEGMENT_SHIFT: u32 = EXPIRES_SHIFT + EXPIRES_BITS;
/// Bits of a segment number an entry keeps.
const SEGMENT_BITS: u32 = 26;
const _: () = assert!(SEGMENT_SHIFT + SEGMENT_BITS == 128, "the fields fill the entry");
const _: () = assert!(MAX_DEADLINE < 1 << EXPIRES_BITS, "every deadline fits");
/// Segments an entry's segment number can be behind the newest one and
/// still be told apart: 2^26, 64 Mi segments (256 GiB of the smallest,
/// 4 KiB, segments; the writer stops rolling before the log spans more).
pub(crate) const SEGMENT_SPAN: u32 = 1 << SEGMENT_BITS;

/// Packs `n` as two `u16`s, low first.
fn pack32(n: u32) -> [u16; 2] {
    [n as u16, (n >> 16) as u16]
}

fn unpack32([a, b]: [u16; 2]) -> u32 {
    u32::from(a) | (u32::from(b) << 16)
}

impl Entry {
    fn empty(segment: SegmentId) -> Entry {
        let mut e = Entry(0);
        e.set_segment(segment);
        e
    }

    fn field(&self, shift: u32, bits: u32) -> u64 {
        ((self.0 >> shift) & ((1 << bits) - 1)) as u64
    }

    fn set_field(&mut self, shift: u32, bits: u32, v: u64) {
        debug_assert!(u128::from(v) < 1 << bits);
        let mask = ((1u128 << bits) - 1) << shift;
        self.0 = (self.0 & !mask) | ((u128::from(v) << shift) & mask);
    }

    fn meta(&self) -> u16 {
        self.field(META_SHIFT, META_BITS) as u16
    }

    fn set_meta(&mut self, meta: u16) {
        self.set_field(META_SHIFT, META_BITS, u64::from(meta));
    }

    fn loc(&self) -> Loc {
        Loc::from_bits(self.field(LOC_SHIFT, LOC_BITS))
    }

    fn set_loc(&mut self, loc: Loc) {
        self.set_field(LOC_SHIFT, LOC_BITS, loc.to_bits());
    }

    /// Absolute expiry in unix ms; 0 means never.
    pub(crate) fn expires(&self) -> u64 {
        self.field(EXPIRES_SHIFT, EXPIRES_BITS)
    }

    /// Sets the expiry; a deadline past [`MAX_DEADLINE`] becomes it (only
    /// a log written before deadlines were capped can hold one).
    pub(crate) fn set_expires(&mut self, ms: u64) {
        self.set_field(EXPIRES_SHIFT, EXPIRES_BITS, ms.min(MAX_DEADLINE));
    }

    /// The low bits of the segment holding this entry's set record.
    fn segment_bits(&self) -> u32 {
        self.field(SEGMENT_SHIFT, SEGMENT_BITS) as u32
    }

    /// Keeps the low bits of `id`; only the index sets it, noting the
    /// newest segment it has seen so it can add the high bits back.
    fn set_segment(&mut self, id: SegmentId) {
        self.set_field(SEGMENT_SHIFT, SEGMENT_BITS, u64::from(id.0 & (SEGMENT_SPAN - 1)));
    }

    /// The slot's generation (12 bits, wrapping). A handle that outlived
    /// 4096 reuses of its slot may match again; a queue handle then only
    /// looks at an entry early, which it checks anyway.
    pub(crate) fn generation(&self) -> u32 {
        u32::from(self.meta() & GEN_MASK)
    }

    pub(crate) fn freq(&self) -> u32 {
        u32::from((self.meta() >> 12) & 3)
    }

    pub(crate) fn set_freq(&mut self, f: u32) {
        self.set_meta((self.meta() & !(3 << 12)) | ((f.min(3) as u16) << 12));
    }

    pub(crate) fn in_main(&self) -> bool {
        self.meta() & (1 << 14) != 0
    }

    pub(crate) fn set_in_main(&mut self, main: bool) {
        self.set_meta((self.meta() & !(1 << 14)) | (u16::from(main) << 14));
    }

    pub(crate) fn encoding(&self) -> Encoding {
        if self.meta() & TEXT_BIT != 0 { Encoding::Text } else { Encoding::MessagePack }
    }

    pub(crate) fn set_encoding(&mut self, encoding: Encoding) {
        self.set_meta((self.meta() & !TEXT_BIT) | if encoding == Encoding::Text { TEXT_BIT } else { 0 });
    }

    /// A new entry in this slot: old queue handles stop matching
    /// (and its flags start clear).
    pub(crate) fn new_generation(&mut self) {
        self.set_meta(((self.meta() & GEN_MASK) + 1) & GEN_MASK);
    }

    pub(crate) fn is_live_at(&self, now: u64) -> bool {
        let expires = self.expires();
        expires == 0 || expires > now
    }

    fn is_free(&self) -> bool {
        self.loc() == Loc::NONE
    }
}

/// A reference to an entry that outlives it: `(slot, generation)` in six
/// bytes (a `u32` and the 12-bit generation in a `u16`, aligned to 2), which
/// is what S3-FIFO keeps per queued entry. A handle
/// matches only while its slot holds the same entry (see [`Index::get`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Handle([u16; 3]);

impl Handle {
    fn new(slot: u32, generation: u32) -> Handle {
        debug_assert!(generation <= u32::from(GEN_MASK));
        let [lo, hi] = pack32(slot);
        Handle([lo, hi, generation as u16])
    }

    pub(crate) fn slot(self) -> u32 {
        unpack32([self.0[0], self.0[1]])
    }

    fn generation(self) -> u32 {
        u32::from(self.0[2])
    }
}

/// An occupied entry with its key and value.
#[derive(Clone, Copy)]
pub(crate) struct EntryRef<'a> {
    entry: &'a Entry,
    key: &'a [u8],
    value: &'a [u8],
    /// The index's newest segment, to complete the entry's segment number.
    newest_segment: u32,
}

impl<'a> EntryRef<'a> {
    /// The segment holding this entry's set record.
    pub(crate) fn segment(&self) -> SegmentId {
        segment_of(self.entry.segment_bits(), self.newest_segment)
    }

    pub(crate) fn key(&self) -> &'a [u8] {
        self.key
    }

    pub(crate) fn value(&self) -> &'a [u8] {
        self.value
    }

    /// The bytes its item takes in the arena.
    pub(crate) fn blob_len(&self) -> usize {
        item_len(self.key.len(), self.value.len())
    }
}

impl Deref for EntryRef<'_> {
    type Target = Entry;

    fn deref(&self) -> &Entry {
        self.entry
    }
}

/// The segment whose low bits are `bits`, at most `SEGMENT_SPAN - 1`
/// segments before `newest` (the newest segment the index has stored).
fn segment_of(bits: u32, newest: u32) -> SegmentId {
    SegmentId(newest - (newest.wrapping_sub(bits) & (SEGMENT_SPAN - 1)))
}

/// The bytes an entry holding `key` and `value` takes in the arena.
pub(crate) fn blob_len(key: &[u8], value: &[u8]) -> usize {
    item_len(key.len(), value.len())
}

/// Entries per slab chunk after the first: 2^14 (288 KiB of entries).
const CHUNK_BITS: u32 = 14;
const _: () = assert!(crate::timers::GROUP_SLOTS as usize <= 1 << CHUNK_BITS, "a slot group lies within a chunk");
const CHUNK: usize = 1 << CHUNK_BITS;

/// The slab: entries in chunks of `CHUNK`, so it grows without copying
/// (a `Vec` that doubles copies every entry and leaves the old buffer to
/// the allocator, 10 MB of resident garbage at 1M entries) and holds at
/// most one partly filled chunk. The first chunk grows as a `Vec` does, so
/// a small cache stays small.
#[derive(Default)]
struct Slab {
    chunks: Vec<Vec<Entry>>,
    len: usize,
}

impl Slab {
    fn len(&self) -> usize {
        self.len
    }

    fn get(&self, slot: usize) -> Option<&Entry> {
        self.chunks.get(slot >> CHUNK_BITS)?.get(slot & (CHUNK - 1))
    }

    fn push(&mut self, e: Entry) {
        match self.chunks.last_mut() {
            Some(c) if c.len() < CHUNK => c.push(e),
            _ => {
                let mut c = Vec::with_capacity(if self.chunks.is_empty() { 16 } else { CHUNK });
                c.push(e);
                self.chunks.push(c);
            }
        }
        self.len += 1;
    }

    /// Room for `additional` more entries without growing a chunk.
    fn reserve(&mut self, additional: usize) {
        if let [only] = self.chunks.as_mut_slice() {
            only.reserve(additional.min(CHUNK - only.len()));
        } else if self.chunks.is_empty() {
            self.chunks.push(Vec::with_capacity(additional.clamp(16, CHUNK)));
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.chunks.iter().flatten()
    }
}

impl std::ops::Index<usize> for Slab {
    type Output = Entry;

    fn index(&self, slot: usize) -> &Entry {
        &self.chunks[slot >> CHUNK_BITS][slot & (CHUNK - 1)]
    }
}

impl std::ops::IndexMut<usize> for Slab {
    fn index_mut(&mut self, slot: usize) -> &mut Entry {
        &mut self.chunks[slot >> CHUNK_BITS][slot & (CHUNK - 1)]
    }
}

const NO_SLOT: u32 = u32::MAX;
/// Items reclaim looks ahead at (see [`Index::reclaim`]).
const RECLAIM_AHEAD: usize = 8;
const GEN_MASK: u16 = (1 << 12) - 1;
const TEXT_BIT: u16 = 1 << 15;

pub(crate) struct Index {
    table: SlotTable,
    entries: Slab,
    arena: Arena,
    free_head: u32,
    len: usize,
    hasher: DefaultHashBuilder,
    /// The page being reclaimed and how far its walk has come.
    reclaiming: Option<(u32, usize)>,
    /// `arena.written()` at the last reclaim step.
    reclaimed_mark: usize,
    /// The highest segment number stored in an entry: entries keep the low
    /// `SEGMENT_BITS` of theirs, and are never more than `SEGMENT_SPAN`
    /// segments behind it.
    newest_segment: u32,
}

impl Index {
    /// An empty index whose arena has pages of `page_bytes`.
    pub(crate) fn new(page_bytes: usize) -> Index {
        Index {
            table: SlotTable::default(),
            entries: Slab::default(),
            arena: Arena::new(page_bytes),
            free_head: NO_SLOT,
            len: 0,
            hasher: DefaultHashBuilder::default(),
            reclaiming: None,
            reclaimed_mark: 0,
            newest_segment: 0,
        }
    }

    /// Marks a bulk load (replay) as started or over (see the arena's pages).
    pub(crate) fn set_bulk(&mut self, bulk: bool) {
        self.arena.set_bulk(bulk);
    }

    pub(crate) fn reserve(&mut self, additional: usize) {
        let (hasher, entries, arena) = (&self.hasher, &self.entries, &self.arena);
        self.table.reserve(additional, |s| hasher.hash_one(arena.key(entries[s as usize].loc())));
        self.entries.reserve(additional);
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Bytes of the live entries' items.
    pub(crate) fn blob_bytes(&self) -> usize {
        self.arena.live_bytes()
    }

    /// Bytes of items written into the arena's pages, live or dead.
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn arena_used_bytes(&self) -> usize {
        self.arena.used_bytes()
    }

    /// Bytes of the arena's pages.
    #[cfg(test)]
    pub(crate) fn arena_held_bytes(&self) -> usize {
        self.arena.held_bytes()
    }

    /// Bytes the index maps outside the heap: the arena's pages and the
    /// hash table.
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn mapped_bytes(&self) -> usize {
        self.arena.held_bytes() + self.table.mapped_bytes()
    }

    /// The hash the table uses for `key` (also the ghost queue's key identity).
    pub(crate) fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Asks the CPU for the table's group where `key` would be, so that a
    /// lookup of it a little later finds it in the cache (replay calls this
    /// a few records ahead: its inserts land at random places in a table
    /// larger than the cache). Reads no memory itself.
    pub(crate) fn prefetch(&self, key: &[u8]) {
        let hash = self.hasher.hash_one(key);
        self.table.prefetch(hash);
    }

    pub(crate) fn find(&self, key: &[u8]) -> Option<u32> {
        let hash = self.hasher.hash_one(key);
        self.table.find(hash, |s| self.arena.key(self.entries[s as usize].loc()) == key)
    }

    fn view<'a>(&'a self, e: &'a Entry) -> EntryRef<'a> {
        let (key, value) = self.arena.item(e.loc());
        EntryRef { entry: e, key, value, newest_segment: self.newest_segment }
    }

    /// Records that the entry at `slot` has its set record in `segment`.
    pub(crate) fn set_segment(&mut self, slot: u32, segment: SegmentId) {
        self.note_segment(segment);
        self.entries[slot as usize].set_segment(segment);
    }

    fn note_segment(&mut self, segment: SegmentId) {
        self.newest_segment = self.newest_segment.max(segment.0);
    }

    /// The occupied entry at `slot`.
    pub(crate) fn entry(&self, slot: u32) -> EntryRef<'_> {
        let e = &self.entries[slot as usize];
        debug_assert!(!e.is_free(), "slot {slot} is occupied");
        self.view(e)
    }

    pub(crate) fn entry_mut(&mut self, slot: u32) -> &mut Entry {
        &mut self.entries[slot as usize]
    }

    /// A handle on the occupied entry at `slot`, for an eviction queue.
    pub(crate) fn handle(&self, slot: u32) -> Handle {
        Handle::new(slot, self.entries[slot as usize].generation())
    }

    /// The entry `handle` names, if its slot still holds it.
    pub(crate) fn get(&self, handle: Handle) -> Option<EntryRef<'_>> {
        let e = self.entries.get(handle.slot() as usize)?;
        (!e.is_free() && e.generation() == handle.generation()).then(|| self.view(e))
    }

    /// Gives an existing entry (whose key is `key`) a new value; returns the
    /// old item's place, released but readable until the next reclaim (the
    /// batch's undo log keeps it).
    pub(crate) fn replace_value(&mut self, slot: u32, key: &[u8], value: &[u8]) -> Loc {
        debug_assert_eq!(self.entry(slot).key(), key);
        let loc = self.arena.alloc(key, value);
        self.swap_item(slot, loc)
    }

    /// Points an occupied slot at the item at `loc` (same key, released
    /// before); returns the old one, released.
    pub(crate) fn swap_item(&mut self, slot: u32, loc: Loc) -> Loc {
        let e = &mut self.entries[slot as usize];
        let old = e.loc();
        e.set_loc(loc);
        self.arena.release(old);
        old
    }

    /// Makes a released item live again (an undo puts it back).
    pub(crate) fn revive(&mut self, loc: Loc) {
        self.arena.revive(loc);
    }

    /// Key and value of an item, live or released.
    pub(crate) fn item(&self, loc: Loc) -> (&[u8], &[u8]) {
        self.arena.item(loc)
    }

    /// Inserts an absent key from a released item kept by the undo log.
    pub(crate) fn insert_item(&mut self, loc: Loc, expires: u64, segment: SegmentId) -> u32 {
        self.arena.revive(loc);
        let hash = self.hasher.hash_one(self.arena.key(loc));
        debug_assert!(self.find(self.arena.key(loc)).is_none(), "undo reinserts only removed keys");
        let slot = self.next_slot();
        let (hasher, entries, arena) = (&self.hasher, &self.entries, &self.arena);
        self.table.insert_unique(hash, slot, |s| hasher.hash_one(arena.key(entries[s as usize].loc())));
        self.fill_slot(slot, loc, expires, segment);
        slot
    }

    fn next_slot(&self) -> u32 {
        if self.free_head != NO_SLOT {
            self.free_head
        } else {
            u32::try_from(self.entries.len()).expect("fewer than 2^32 entries")
        }
    }

    /// The slot of `key`, inserting it with `value` if absent (one hash, one
    /// probe). Returns the slot and whether it was inserted; an existing
    /// entry is left unchanged.
    pub(crate) fn find_or_insert(&mut self, key: &[u8], value: &[u8], expires: u64, segment: SegmentId) -> (u32, bool) {
        let hash = self.hasher.hash_one(key);
        let (entries, arena) = (&self.entries, &self.arena);
        if let Some(slot) = self.table.find(hash, |s| arena.key(entries[s as usize].loc()) == key) {
            return (slot, false);
        }
        let slot = self.next_slot();
        let (hasher, entries, arena) = (&self.hasher, &self.entries, &self.arena);
        self.table.insert_unique(hash, slot, |s| hasher.hash_one(arena.key(entries[s as usize].loc())));
        let loc = self.arena.alloc(key, value);
        self.fill_slot(slot, loc, expires, segment);
        (slot, true)
    }

    /// Puts an entry into `slot` (the free list's head or one past the end).
    fn fill_slot(&mut self, slot: u32, loc: Loc, expires: u64, segment: SegmentId) {
        self.len += 1;
        self.note_segment(segment);
        if slot == self.free_head {
            let e = &mut self.entries[slot as usize];
            self.free_head = u32::try_from(e.expires()).expect("a free slot's link is a slot number");
            e.set_loc(loc);
            e.set_expires(expires);
            e.new_generation();
            e.set_segment(segment);
        } else {
            let mut e = Entry::empty(segment);
            e.set_loc(loc);
            e.set_expires(expires);
            self.entries.push(e);
        }
    }

    /// Inserts a key known to be absent; returns its slot.
    #[cfg(test)]
    pub(crate) fn insert_new(&mut self, key: &[u8], value: &[u8], expires: u64, segment: SegmentId) -> u32 {
        let (slot, inserted) = self.find_or_insert(key, value, expires, segment);
        assert!(inserted);
        slot
    }

    /// Removes the entry at `slot`; returns its item's place (released, and
    /// readable until the next reclaim).
    pub(crate) fn remove_slot(&mut self, slot: u32) -> Loc {
        let loc = self.entries[slot as usize].loc();
        let hash = self.hasher.hash_one(self.arena.key(loc));
        let removed = self.table.remove(hash, slot);
        assert!(removed, "every live slot is in the table");
        self.arena.release(loc);
        let e = &mut self.entries[slot as usize];
        e.set_loc(Loc::NONE);
        e.set_expires(u64::from(self.free_head));
        e.new_generation();
        self.free_head = slot;
        self.len -= 1;
        loc
    }

    /// One past the highest slot ever used.
    pub(crate) fn slot_count(&self) -> u32 {
        self.entries.len() as u32
    }

    /// The entry at `slot` if it is occupied.
    pub(crate) fn occupied(&self, slot: u32) -> Option<EntryRef<'_>> {
        self.entries.get(slot as usize).filter(|e| !e.is_free()).map(|e| self.view(e))
    }

    /// The occupied slots and their deadlines (0 for none), without reading
    /// their items.
    pub(crate) fn deadlines(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.entries.iter().enumerate().filter(|(_, e)| !e.is_free()).map(|(i, e)| (i as u32, e.expires()))
    }

    /// Looks at the slots in `slots` (within one slab chunk) as expiry does:
    /// pushes onto `due` those whose entry's deadline is at or before `now`,
    /// and returns the earliest deadline after `now` among the others (0
    /// for none). Reads only the slab, in order.
    pub(crate) fn scan_deadlines(&self, slots: std::ops::Range<u32>, now: u64, due: &mut Vec<u32>) -> u64 {
        let Some(chunk) = self.entries.chunks.get((slots.start >> CHUNK_BITS) as usize) else { return 0 };
        let first = slots.start as usize & (CHUNK - 1);
        let within = chunk.get(first..first + slots.len()).expect("a slot group lies within one slab chunk");
        let mut next = u64::MAX;
        for (slot, e) in slots.zip(within) {
            let at = e.expires();
            if at > now {
                next = next.min(at);
            } else if at != 0 && !e.is_free() {
                // (A free slot's deadline field holds the free list's link.)
                due.push(slot);
            }
        }
        if next == u64::MAX { 0 } else { next }
    }

    /// Occupied slots, for compaction and checks.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, EntryRef<'_>)> {
        self.entries.iter().enumerate().filter(|(_, e)| !e.is_free()).map(|(i, e)| (i as u32, self.view(e)))
    }

    /// Reclaims dead bytes: walks items of the arena page with the fewest
    /// live bytes (once dead bytes are over a sixteenth of those written),
    /// moving each live one to the active page and pointing its slot there,
    /// and drops the page at the end of the walk. Examines up to `budget`
    /// bytes of items; returns whether a walk is still under way. Only
    /// between batches: a batch's undo log refers to released items by place.
    ///
    /// Items are taken `RECLAIM_AHEAD` at a time, in three passes, so the
    /// cache misses of their lookups overlap: each item's key is hashed
    /// and its table group prefetched; then the slab entries its group
    /// points at are prefetched; then each is looked up (by its place) and
    /// moved. One at a time, each move waited for a table miss and then a
    /// slab miss: with 1M keys overwritten at random, those were over a
    /// third of the server's time under `redis-benchmark -t set`.
    pub(crate) fn reclaim(&mut self, budget: usize) -> bool {
        let mut examined = 0;
        let mut batch = [(Loc::NONE, 0); RECLAIM_AHEAD];
        while examined < budget {
            let (page, offset) = match self.reclaiming {
                Some(at) => at,
                None => match self.arena.victim() {
                    Some(page) => (page, 0),
                    None => return false,
                },
            };
            let mut n = 0;
            let mut at = offset;
            while n < RECLAIM_AHEAD
                && let Some(loc) = self.arena.item_at(page, at)
            {
                let hash = self.hasher.hash_one(self.arena.key(loc));
                self.table.prefetch(hash);
                batch[n] = (loc, hash);
                n += 1;
                at += self.arena.len(loc);
            }
            if n == 0 {
                self.arena.free_page(page);
                self.reclaiming = None;
                continue;
            }
            for &(_, hash) in &batch[..n] {
                let entries = &self.entries;
                self.table.candidates(hash, |s| {
                    if let Some(e) = entries.get(s as usize) {
                        crate::table::prefetch((e as *const Entry).cast());
                    }
                });
            }
            for &(loc, hash) in &batch[..n] {
                let entries = &self.entries;
                if let Some(slot) = self.table.find(hash, |s| entries[s as usize].loc() == loc) {
                    let new = self.arena.relocate(loc);
                    self.entries[slot as usize].set_loc(new);
                }
            }
            examined += at - offset;
            self.reclaiming = Some((page, at));
        }
        true
    }

    /// An empty index with pages of the same size (and in the same bulk
    /// load, if one is under way).
    pub(crate) fn new_like(&self) -> Index {
        let mut index = Index::new(self.arena.page_bytes());
        index.arena.set_bulk(self.arena.bulk());
        index.newest_segment = self.newest_segment;
        index
    }

    /// One reclaim slice in step with the writes: it examines four times
    /// the bytes written since the last one (at least `RECLAIM_SLICE`), so
    /// reclaim keeps up with any write rate once the emptiest page is at
    /// most three quarters live, and its cost stays in proportion to the
    /// writes that made the garbage.
    pub(crate) fn reclaim_step(&mut self) -> bool {
        let written = self.arena.written().wrapping_sub(self.reclaimed_mark);
        self.reclaimed_mark = self.arena.written();
        self.reclaim((self.arena.page_bytes() / 8).max(written.saturating_mul(4)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_find_replace_remove_reuse() {
        let mut ix = Index::new(PAGE_BYTES);
        let a = ix.insert_new(b"a", b"1", 0, SegmentId(1));
        let b = ix.insert_new(b"bb", b"22", 5, SegmentId(1));
        assert_eq!(ix.find(b"a"), Some(a));
        assert_eq!(ix.entry(b).value(), b"22");
        ix.replace_value(a, b"a", b"one");
        assert_eq!(ix.entry(a).value(), b"one");
        assert_eq!(ix.entry(a).key(), b"a");
        let (g, h) = (ix.entry(a).generation(), ix.handle(a));
        ix.remove_slot(a);
        assert_eq!(ix.find(b"a"), None);
        assert!(ix.get(h).is_none());
        let c = ix.insert_new(b"c", b"", 0, SegmentId(2));
        assert_eq!(c, a, "free slot reused");
        assert_ne!(ix.entry(c).generation(), g);
        assert_eq!(ix.len(), 2);
        assert_eq!(ix.iter().count(), 2);
    }

    #[test]
    fn an_entry_keeps_every_field_apart() {
        let mut e = Entry::empty(SegmentId(7));
        let far = Loc::from_bits(Loc::NONE.to_bits() - 1);
        for loc in [Loc::from_bits(0), far, Loc::NONE] {
            e.set_loc(loc);
            assert_eq!(e.loc(), loc);
        }
        for ms in [0, 1, u64::from(u32::MAX) + 1, 1_700_000_000_123, MAX_DEADLINE] {
            e.set_expires(ms);
            assert_eq!(e.expires(), ms);
        }
        e.set_expires(u64::MAX);
        assert_eq!(e.expires(), MAX_DEADLINE, "a later deadline is capped, not wrapped");
        for id in [0, 1, 0xffff, 0x1_0000, SEGMENT_SPAN - 1, SEGMENT_SPAN, u32::MAX] {
            e.set_segment(SegmentId(id));
            assert_eq!(e.segment_bits(), id & (SEGMENT_SPAN - 1));
        }
        e.set_segment(SegmentId(7));
        e.set_freq(3);
        e.set_in_main(true);
        e.set_encoding(Encoding::Text);
        let (g, loc, ms) = (e.generation(), e.loc(), e.expires());
        assert_eq!((e.freq(), e.in_main(), e.encoding()), (3, true, Encoding::Text));
        e.new_generation();
        assert_eq!(e.generation(), (g + 1) & u32::from(GEN_MASK));
        assert_eq!(
            (e.freq(), e.in_main(), e.encoding()),
            (0, false, Encoding::MessagePack),
            "a new entry starts clear"
        );
        for _ in 0..4096 {
            e.new_generation();
        }
        assert_eq!(e.generation(), (g + 1) & u32::from(GEN_MASK), "the generation wraps at 12 bits");
        assert_eq!((e.loc(), e.expires(), e.segment_bits()), (loc, ms, 7), "flags never spill into other fields");
    }

    #[test]
    fn the_slab_grows_by_chunks() {
        let mut ix = Index::new(PAGE_BYTES);
        let n = 2 * CHUNK as u32 + 10;
        for i in 0..n {
            ix.insert_new(&i.to_le_bytes(), b"v", 0, SegmentId(1));
        }
        assert_eq!(ix.entries.chunks.len(), 3);
        assert!(ix.entries.chunks.iter().skip(1).all(|c| c.capacity() == CHUNK), "later chunks never grow");
        for i in [0, CHUNK as u32 - 1, CHUNK as u32, n - 1] {
            let slot = ix.find(&i.to_le_bytes()).unwrap();
            assert_eq!(slot, i);
            assert_eq!(ix.entry(slot).key(), i.to_le_bytes());
        }
        assert_eq!(ix.iter().count(), n as usize);
        assert!(ix.occupied(n).is_none());
    }

    #[test]
    fn a_handle_keeps_its_slot_and_generation() {
        for (slot, generation) in [(0, 0), (u32::MAX, u32::from(GEN_MASK)), (0x1234_5678, 0xabc), (1 << 16, 1)] {
            let h = Handle::new(slot, generation);
            assert_eq!((h.slot(), h.generation()), (slot, generation));
        }
        assert_eq!(std::mem::size_of::<Handle>(), 6);
    }

    #[test]
    fn entry_is_small() {
        assert_eq!(std::mem::size_of::<Entry>(), 16);
    }

    #[test]
    fn a_segment_number_comes_back_from_its_low_bits() {
        for newest in [0, 5, SEGMENT_SPAN - 1, SEGMENT_SPAN, SEGMENT_SPAN + 3, 3 * SEGMENT_SPAN + 7, u32::MAX] {
            for back in [0, 1, 2, SEGMENT_SPAN / 2, SEGMENT_SPAN - 1].into_iter().filter(|&b| b <= newest) {
                let id = newest - back;
                assert_eq!(segment_of(id & (SEGMENT_SPAN - 1), newest), SegmentId(id), "{id} seen from {newest}");
            }
        }
    }

    /// Entries keep their segments while newer ones pass 2^26 (the bits an
    /// entry keeps): the index adds the high bits back from the newest.
    #[test]
    fn entries_keep_their_segments_past_the_bits_they_hold() {
        let mut ix = Index::new(PAGE_BYTES);
        let old = SegmentId(SEGMENT_SPAN - 1000);
        let a = ix.insert_new(b"a", b"1", 0, old);
        let b = ix.insert_new(b"b", b"2", 0, SegmentId(SEGMENT_SPAN + 5));
        assert_eq!(ix.entry(a).segment(), old);
        assert_eq!(ix.entry(b).segment(), SegmentId(SEGMENT_SPAN + 5));
        ix.set_segment(a, SegmentId(2 * SEGMENT_SPAN - 2000));
        assert_eq!(ix.entry(a).segment(), SegmentId(2 * SEGMENT_SPAN - 2000));
        assert_eq!(ix.entry(b).segment(), SegmentId(SEGMENT_SPAN + 5), "still within the span of the newest");
    }

    #[test]
    fn keys_come_and_go_while_the_table_grows_and_shrinks() {
        // Thousands of keys inserted and removed at random, so the table
        // moves its buckets (growing, and in place after tombstones) many
        // times, with removals and reused slots in the middle of a move;
        // every key is checked against a set throughout.
        let mut ix = Index::new(PAGE_BYTES);
        let mut live = std::collections::HashMap::new();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for round in 0..200_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // The key space widens and narrows, so the live count rises
            // and falls through several table sizes.
            let span = 1 + (u64::from(round) * 7 % 6000);
            let key = (x % span).to_le_bytes();
            if x >> 62 == 0 {
                if let Some(slot) = live.remove(&key) {
                    assert_eq!(ix.find(&key), Some(slot));
                    ix.remove_slot(slot);
                }
            } else {
                let (slot, inserted) = ix.find_or_insert(&key, b"v", 0, SegmentId(1));
                assert_eq!(inserted, !live.contains_key(&key));
                assert_eq!(*live.entry(key).or_insert(slot), slot);
            }
            if round % 4999 == 0 {
                for (key, &slot) in &live {
                    assert_eq!(ix.find(key), Some(slot));
                }
                assert_eq!(ix.len(), live.len());
            }
        }
        for (key, &slot) in &live {
            assert_eq!(ix.find(key), Some(slot));
        }
        for k in 0..6000u64 {
            if !live.contains_key(&k.to_le_bytes()) {
                assert_eq!(ix.find(&k.to_le_bytes()), None, "removed keys stay gone");
            }
        }
    }

    #[test]
    fn reclaim_keeps_every_live_entry_and_frees_dead_pages() {
        let mut ix = Index::new(PAGE_BYTES);
        let value = [9u8; 200];
        // Overwrite 1,000 keys over and over: most items written are dead.
        for round in 0..40u32 {
            for k in 0..1000u32 {
                let key = k.to_le_bytes();
                let v = [&value[..], &round.to_le_bytes()].concat();
                match ix.find(&key) {
                    Some(slot) => {
                        ix.replace_value(slot, &key, &v);
                    }
                    None => {
                        ix.insert_new(&key, &v, 0, SegmentId(1));
                    }
                }
            }
            while ix.reclaim(PAGE_BYTES / 8) {}
        }
        for k in 0..1000u32 {
            let slot = ix.find(&k.to_le_bytes()).expect("every key is still there");
            assert_eq!(ix.entry(slot).value(), [&value[..], &39u32.to_le_bytes()].concat());
        }
        let live = ix.blob_bytes();
        assert_eq!(live, 1000 * item_len(4, 204));
        // Dead bytes: under the reclaim threshold, plus the active page's.
        assert!(ix.arena_used_bytes() - live <= (ix.arena_used_bytes() / 16).max(PAGE_BYTES / 2) + PAGE_BYTES);
        assert!(ix.arena_held_bytes() <= live + 2 * PAGE_BYTES, "{} held", ix.arena_held_bytes());
    }
}
