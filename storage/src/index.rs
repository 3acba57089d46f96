//! The in-memory index: a hash table of small slab handles over a slab of
//! entries, whose keys, values and deadlines live in the arena's pages.
//!
//! The table ([`SlotTable`]) stores only a slot number per key (its
//! hash is recomputed from the key when the table grows). An entry is 8
//! bytes, 64 bits: where its item is ([`Loc`], 43 bits), a 12-bit
//! generation, its eviction bits, whether its item holds a deadline, and
//! the compaction epoch of its set record (see [`Entry`]). The deadline
//! itself is in the item, beside the key a lookup compares anyway
//! (`arena`). A 16-byte key with a 100-byte value so costs its 118-byte
//! item (123 with a deadline), the 8-byte entry and 4.6 to 6.9 bytes of
//! table (a three-byte slot and a control byte per bucket, at a load
//! between 7/12 and 7/8; a table sized by replay starts at 7/8). Expiry
//! timers name groups of slots, not entries (`timers`). Eviction queues
//! refer to entries by `(slot, generation)`; the generation changes
//! whenever a slot gets a new entry, which is how the queues cancel lazily.
//!
//! An overwritten or removed entry's item stays in its page, dead, until
//! [`Index::reclaim`] moves the live items out of the emptiest page (in
//! bounded slices, between batches) and drops it; so the undo log of a
//! batch keeps old items by their place, without copying them. A new
//! deadline is a new item too (`set_expires`), for the same reason.

use std::ops::Deref;

use hashbrown::DefaultHashBuilder;
use std::hash::BuildHasher;

pub(crate) use crate::arena::Loc;
#[cfg(test)]
use crate::arena::PAGE_BYTES;
use crate::arena::{Arena, item_len};
use crate::record::Encoding;
use crate::table::SlotTable;

/// Keys are at most this long (the on-disk record keeps two bytes for it).
pub const MAX_KEY_LEN: usize = u16::MAX as usize;

/// One slot of the slab: 8 bytes, the fields packed in a `u64` (low bits
/// first):
///
/// | bits  | field |
/// |-------|-------|
/// | 0-42  | the item's place ([`Loc::to_bits`]) |
/// | 43-54 | generation (12 bits, see [`Entry::generation`]) |
/// | 55-56 | S3-FIFO frequency |
/// | 57    | in S3-FIFO's main queue |
/// | 58    | the value is text (else MessagePack) |
/// | 59    | the item holds a deadline |
/// | 60-61 | compaction epoch of the set record (see [`Entry::epoch`]) |
/// | 63    | free: bits 0-31 then link the free list |
///
/// A free slot keeps its generation, so handles on its last entry keep
/// failing to match.
#[derive(Clone, Copy)]
pub(crate) struct Entry(u64);

const LOC_BITS: u32 = crate::arena::LOC_BITS;
const LOC_MASK: u64 = (1 << LOC_BITS) - 1;
const GEN_SHIFT: u32 = LOC_BITS;
const GEN_BITS: u32 = 12;
const GEN_MASK: u64 = ((1 << GEN_BITS) - 1) << GEN_SHIFT;
const FREQ_SHIFT: u32 = GEN_SHIFT + GEN_BITS;
const MAIN_BIT: u64 = 1 << (FREQ_SHIFT + 2);
const TEXT_BIT: u64 = MAIN_BIT << 1;
const DEADLINE_BIT: u64 = TEXT_BIT << 1;
const EPOCH_SHIFT: u32 = FREQ_SHIFT + 5;
const EPOCH_BITS: u32 = 2;
const EPOCH_MASK: u64 = ((1 << EPOCH_BITS) - 1) << EPOCH_SHIFT;
const FREE_BIT: u64 = 1 << 63;
const _: () = assert!(EPOCH_SHIFT + EPOCH_BITS < 63, "the fields fit below the free bit");
/// The flags a new entry in a slot starts without.
const FLAGS: u64 = (3 << FREQ_SHIFT) | MAIN_BIT | TEXT_BIT;

/// Compaction epochs, as entries keep them: they count modulo this.
pub(crate) const EPOCHS: u8 = 1 << EPOCH_BITS;

impl Entry {
    fn new(loc: Loc, has_deadline: bool, epoch: u8) -> Entry {
        let mut e = Entry(0);
        e.set_loc(loc, has_deadline);
        e.set_epoch(epoch);
        e
    }

    fn loc(&self) -> Loc {
        Loc::from_bits(self.0 & LOC_MASK)
    }

    fn set_loc(&mut self, loc: Loc, has_deadline: bool) {
        let flag = if has_deadline { DEADLINE_BIT } else { 0 };
        self.0 = (self.0 & !(LOC_MASK | DEADLINE_BIT)) | loc.to_bits() | flag;
    }

    /// Whether the entry's item holds a deadline (expiry reads only those).
    pub(crate) fn has_deadline(&self) -> bool {
        self.0 & DEADLINE_BIT != 0
    }

    /// The compaction epoch of the entry's set record, modulo [`EPOCHS`]:
    /// the state's epoch when the record was written. A compaction starts
    /// a new epoch as it rolls to a new segment, so a record is in the
    /// segments it empties exactly when its entry's epoch is not the
    /// current one (each compaction rewrites or removes every entry of the
    /// one before, so no older epoch is left to wrap around).
    pub(crate) fn epoch(&self) -> u8 {
        ((self.0 & EPOCH_MASK) >> EPOCH_SHIFT) as u8
    }

    fn set_epoch(&mut self, epoch: u8) {
        self.0 = (self.0 & !EPOCH_MASK) | (u64::from(epoch % EPOCHS) << EPOCH_SHIFT);
    }

    /// The slot's generation (12 bits, wrapping). A handle that outlived
    /// 4096 reuses of its slot may match again; a queue handle then only
    /// looks at an entry early, which it checks anyway.
    pub(crate) fn generation(&self) -> u32 {
        ((self.0 & GEN_MASK) >> GEN_SHIFT) as u32
    }

    pub(crate) fn freq(&self) -> u32 {
        ((self.0 >> FREQ_SHIFT) & 3) as u32
    }

    pub(crate) fn set_freq(&mut self, f: u32) {
        self.0 = (self.0 & !(3 << FREQ_SHIFT)) | (u64::from(f.min(3)) << FREQ_SHIFT);
    }

    pub(crate) fn in_main(&self) -> bool {
        self.0 & MAIN_BIT != 0
    }

    pub(crate) fn set_in_main(&mut self, main: bool) {
        self.0 = (self.0 & !MAIN_BIT) | if main { MAIN_BIT } else { 0 };
    }

    pub(crate) fn encoding(&self) -> Encoding {
        if self.0 & TEXT_BIT != 0 { Encoding::Text } else { Encoding::MessagePack }
    }

    pub(crate) fn set_encoding(&mut self, encoding: Encoding) {
        self.0 = (self.0 & !TEXT_BIT) | if encoding == Encoding::Text { TEXT_BIT } else { 0 };
    }

    /// A new entry in this slot: old queue handles stop matching
    /// (and its flags start clear).
    pub(crate) fn new_generation(&mut self) {
        let generation = (self.0 + (1 << GEN_SHIFT)) & GEN_MASK;
        self.0 = (self.0 & !(GEN_MASK | FLAGS)) | generation;
    }

    fn is_free(&self) -> bool {
        self.0 & FREE_BIT != 0
    }

    /// Frees the slot, linking it to `next`; the generation stays.
    fn free(&mut self, next: u32) {
        self.0 = FREE_BIT | (self.0 & GEN_MASK) | u64::from(next);
    }

    /// A free slot's link to the next free one.
    fn next_free(&self) -> u32 {
        debug_assert!(self.is_free());
        self.0 as u32
    }
}

/// Packs `n` as two `u16`s, low first.
fn pack32(n: u32) -> [u16; 2] {
    [n as u16, (n >> 16) as u16]
}

fn unpack32([a, b]: [u16; 2]) -> u32 {
    u32::from(a) | (u32::from(b) << 16)
}

/// A reference to an entry that outlives it: `(slot, generation)` in six
/// bytes (a `u32` and the 12-bit generation in a `u16`, aligned to 2), which
/// is what S3-FIFO keeps per queued entry. A handle
/// matches only while its slot holds the same entry (see [`Index::get`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Handle([u16; 3]);

impl Handle {
    fn new(slot: u32, generation: u32) -> Handle {
        debug_assert!(generation < 1 << GEN_BITS);
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
    expires: u64,
}

impl<'a> EntryRef<'a> {
    pub(crate) fn key(&self) -> &'a [u8] {
        self.key
    }

    pub(crate) fn value(&self) -> &'a [u8] {
        self.value
    }

    /// Absolute expiry in unix ms; 0 means never.
    pub(crate) fn expires(&self) -> u64 {
        self.expires
    }

    pub(crate) fn is_live_at(&self, now: u64) -> bool {
        self.expires == 0 || self.expires > now
    }

    /// The bytes its item takes in the arena.
    pub(crate) fn blob_len(&self) -> usize {
        item_len(self.key.len(), self.value.len(), self.expires)
    }
}

impl Deref for EntryRef<'_> {
    type Target = Entry;

    fn deref(&self) -> &Entry {
        self.entry
    }
}

/// The bytes an entry holding `key`, `value` and deadline `expires` takes
/// in the arena.
pub(crate) fn blob_len(key: &[u8], value: &[u8], expires: u64) -> usize {
    item_len(key.len(), value.len(), expires)
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
        }
    }

    /// See [`Arena::feed`].
    pub(crate) fn feed_pages(&mut self, pages: Option<std::sync::mpsc::Receiver<memmap2::MmapMut>>) {
        self.arena.feed(pages);
    }

    pub(crate) fn page_bytes(&self) -> usize {
        self.arena.page_bytes()
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
    pub(crate) fn prefetch(&self, hash: u64) {
        self.table.prefetch(hash);
    }

    /// How the table hashes keys ([`Index::hash`]).
    pub(crate) fn hasher(&self) -> &DefaultHashBuilder {
        &self.hasher
    }

    pub(crate) fn find(&self, key: &[u8]) -> Option<u32> {
        let hash = self.hasher.hash_one(key);
        self.table.find(hash, |s| self.arena.key(self.entries[s as usize].loc()) == key)
    }

    fn view<'a>(&'a self, e: &'a Entry) -> EntryRef<'a> {
        let (key, value, expires) = self.arena.item(e.loc());
        EntryRef { entry: e, key, value, expires }
    }

    /// Records that the entry at `slot` has its set record in compaction
    /// epoch `epoch`.
    pub(crate) fn set_epoch(&mut self, slot: u32, epoch: u8) {
        self.entries[slot as usize].set_epoch(epoch);
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

    /// Gives an existing entry (whose key is `key`) a new value and
    /// deadline; returns the old item's place, released but readable until
    /// the next reclaim (the batch's undo log keeps it).
    pub(crate) fn replace_value(&mut self, slot: u32, key: &[u8], value: &[u8], expires: u64) -> Loc {
        debug_assert_eq!(self.entry(slot).key(), key);
        let loc = self.arena.alloc(key, value, expires);
        self.swap_item(slot, loc)
    }

    /// Gives an existing entry a new deadline (0 for none): a copy of its
    /// item with the new one. Returns the old item's place, as
    /// `replace_value` does.
    pub(crate) fn set_expires(&mut self, slot: u32, expires: u64) -> Loc {
        let old = self.entries[slot as usize].loc();
        let (key, value, _) = self.arena.item(old);
        // The arena copies from its own page into the active one: the two
        // never overlap, but the borrow checker cannot see that.
        let (key, value) = (key.to_vec(), value.to_vec());
        let loc = self.arena.alloc(&key, &value, expires);
        self.swap_item(slot, loc)
    }

    /// Points an occupied slot at the item at `loc` (same key, released
    /// before); returns the old one, released.
    pub(crate) fn swap_item(&mut self, slot: u32, loc: Loc) -> Loc {
        let has_deadline = self.arena.expires(loc) != 0;
        let e = &mut self.entries[slot as usize];
        let old = e.loc();
        e.set_loc(loc, has_deadline);
        self.arena.release(old);
        old
    }

    /// Makes a released item live again (an undo puts it back).
    pub(crate) fn revive(&mut self, loc: Loc) {
        self.arena.revive(loc);
    }

    /// Key, value and deadline of an item, live or released.
    pub(crate) fn item(&self, loc: Loc) -> (&[u8], &[u8], u64) {
        self.arena.item(loc)
    }

    /// Inserts an absent key from a released item kept by the undo log.
    pub(crate) fn insert_item(&mut self, loc: Loc, epoch: u8) -> u32 {
        self.arena.revive(loc);
        let hash = self.hasher.hash_one(self.arena.key(loc));
        debug_assert!(self.find(self.arena.key(loc)).is_none(), "undo reinserts only removed keys");
        let slot = self.next_slot();
        let (hasher, entries, arena) = (&self.hasher, &self.entries, &self.arena);
        self.table.insert_unique(hash, slot, |s| hasher.hash_one(arena.key(entries[s as usize].loc())));
        self.fill_slot(slot, loc, epoch);
        slot
    }

    fn next_slot(&self) -> u32 {
        if self.free_head != NO_SLOT {
            self.free_head
        } else {
            u32::try_from(self.entries.len()).expect("fewer than 2^32 entries")
        }
    }

    /// The slot of `key`, whose hash is `hash` ([`Index::hash`]), inserting
    /// it with `value` if absent. Returns the slot and whether it was
    /// inserted; an existing entry is left unchanged.
    pub(crate) fn find_or_insert(
        &mut self,
        hash: u64,
        key: &[u8],
        value: &[u8],
        expires: u64,
        epoch: u8,
    ) -> (u32, bool) {
        debug_assert_eq!(hash, self.hasher.hash_one(key));
        let (entries, arena) = (&self.entries, &self.arena);
        if let Some(slot) = self.table.find(hash, |s| arena.key(entries[s as usize].loc()) == key) {
            return (slot, false);
        }
        let slot = self.next_slot();
        let (hasher, entries, arena) = (&self.hasher, &self.entries, &self.arena);
        self.table.insert_unique(hash, slot, |s| hasher.hash_one(arena.key(entries[s as usize].loc())));
        let loc = self.arena.alloc(key, value, expires);
        self.fill_slot(slot, loc, epoch);
        (slot, true)
    }

    /// Puts an entry for the item at `loc` into `slot` (the free list's
    /// head or one past the end).
    fn fill_slot(&mut self, slot: u32, loc: Loc, epoch: u8) {
        self.len += 1;
        let has_deadline = self.arena.expires(loc) != 0;
        if slot == self.free_head {
            let e = &mut self.entries[slot as usize];
            self.free_head = e.next_free();
            let generation = e.generation();
            *e = Entry::new(loc, has_deadline, epoch);
            e.0 |= u64::from(generation) << GEN_SHIFT;
            e.new_generation();
        } else {
            self.entries.push(Entry::new(loc, has_deadline, epoch));
        }
    }

    /// Inserts a key known to be absent; returns its slot.
    #[cfg(test)]
    pub(crate) fn insert_new(&mut self, key: &[u8], value: &[u8], expires: u64, epoch: u8) -> u32 {
        let (slot, inserted) = self.find_or_insert(self.hash(key), key, value, expires, epoch);
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
        e.new_generation();
        e.free(self.free_head);
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

    /// The occupied slots that have deadlines, and their deadlines (the
    /// items of the others are not read).
    pub(crate) fn deadlines(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| !e.is_free() && e.has_deadline())
            .map(|(i, e)| (i as u32, self.arena.expires(e.loc())))
    }

    /// Looks at the slots in `slots` (within one slab chunk) as expiry does:
    /// pushes onto `due` those whose entry's deadline is at or before `now`,
    /// and returns the earliest deadline after `now` among the others (0
    /// for none). Reads the slab in order, and the items of the entries
    /// that have deadlines.
    pub(crate) fn scan_deadlines(&self, slots: std::ops::Range<u32>, now: u64, due: &mut Vec<u32>) -> u64 {
        let Some(chunk) = self.entries.chunks.get((slots.start >> CHUNK_BITS) as usize) else { return 0 };
        let first = slots.start as usize & (CHUNK - 1);
        let within = chunk.get(first..first + slots.len()).expect("a slot group lies within one slab chunk");
        let mut next = u64::MAX;
        // The deadlines are in the items, scattered: ask for them all first,
        // so their cache misses overlap.
        for e in within.iter().filter(|e| !e.is_free() && e.has_deadline()) {
            self.arena.prefetch(e.loc());
        }
        for (slot, e) in slots.zip(within) {
            if e.is_free() || !e.has_deadline() {
                continue;
            }
            let at = self.arena.expires(e.loc());
            if at > now {
                next = next.min(at);
            } else {
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
                    let e = &mut self.entries[slot as usize];
                    let has_deadline = e.has_deadline();
                    e.set_loc(new, has_deadline);
                }
            }
            examined += at - offset;
            self.reclaiming = Some((page, at));
        }
        true
    }

    /// An empty index with pages of the same size.
    pub(crate) fn new_like(&self) -> Index {
        Index::new(self.arena.page_bytes())
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
        let a = ix.insert_new(b"a", b"1", 0, 1);
        let b = ix.insert_new(b"bb", b"22", 5, 1);
        assert_eq!(ix.find(b"a"), Some(a));
        assert_eq!(ix.entry(b).value(), b"22");
        ix.replace_value(a, b"a", b"one", 1_800_000_000_000);
        assert_eq!(ix.entry(a).value(), b"one");
        assert_eq!(ix.entry(a).expires(), 1_800_000_000_000);
        assert!(ix.entry(a).has_deadline());
        let old = ix.set_expires(a, 0);
        assert_eq!(ix.item(old), (&b"a"[..], &b"one"[..], 1_800_000_000_000), "the old item stays readable");
        assert_eq!((ix.entry(a).value(), ix.entry(a).expires(), ix.entry(a).has_deadline()), (&b"one"[..], 0, false));
        assert_eq!(ix.entry(a).key(), b"a");
        let (g, h) = (ix.entry(a).generation(), ix.handle(a));
        ix.remove_slot(a);
        assert_eq!(ix.find(b"a"), None);
        assert!(ix.get(h).is_none());
        let c = ix.insert_new(b"c", b"", 0, 2);
        assert_eq!(c, a, "free slot reused");
        assert_ne!(ix.entry(c).generation(), g);
        assert_eq!(ix.len(), 2);
        assert_eq!(ix.iter().count(), 2);
    }

    #[test]
    fn an_entry_keeps_every_field_apart() {
        let far = Loc::from_bits(Loc::NONE.to_bits() - 1);
        let mut e = Entry::new(far, true, 3);
        assert_eq!((e.loc(), e.has_deadline(), e.epoch(), e.generation()), (far, true, 3, 0));
        for loc in [Loc::from_bits(0), far, Loc::NONE] {
            for deadline in [false, true] {
                e.set_loc(loc, deadline);
                assert_eq!((e.loc(), e.has_deadline()), (loc, deadline));
            }
        }
        for epoch in 0..2 * EPOCHS {
            e.set_epoch(epoch);
            assert_eq!(e.epoch(), epoch % EPOCHS, "epochs count modulo EPOCHS");
        }
        e.set_loc(far, true);
        e.set_epoch(2);
        e.set_freq(3);
        e.set_in_main(true);
        e.set_encoding(Encoding::Text);
        let g = e.generation();
        assert_eq!((e.freq(), e.in_main(), e.encoding()), (3, true, Encoding::Text));
        e.new_generation();
        assert_eq!(e.generation(), (g + 1) % (1 << GEN_BITS));
        assert_eq!(
            (e.freq(), e.in_main(), e.encoding()),
            (0, false, Encoding::MessagePack),
            "a new entry starts clear"
        );
        for _ in 0..4096 {
            e.new_generation();
        }
        assert_eq!(e.generation(), (g + 1) % (1 << GEN_BITS), "the generation wraps at 12 bits");
        assert_eq!((e.loc(), e.has_deadline(), e.epoch()), (far, true, 2), "flags never spill into other fields");
        assert!(!e.is_free());
        for next in [0, 1, u32::MAX - 1, u32::MAX] {
            let mut f = e;
            f.free(next);
            assert!(f.is_free());
            assert_eq!((f.next_free(), f.generation()), (next, e.generation()), "a free slot keeps its generation");
        }
    }

    #[test]
    fn the_slab_grows_by_chunks() {
        let mut ix = Index::new(PAGE_BYTES);
        let n = 2 * CHUNK as u32 + 10;
        for i in 0..n {
            ix.insert_new(&i.to_le_bytes(), b"v", 0, 1);
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
        for (slot, generation) in [(0, 0), (u32::MAX, (1 << GEN_BITS) - 1), (0x1234_5678, 0xabc), (1 << 16, 1)] {
            let h = Handle::new(slot, generation);
            assert_eq!((h.slot(), h.generation()), (slot, generation));
        }
        assert_eq!(std::mem::size_of::<Handle>(), 6);
    }

    #[test]
    fn entry_is_small() {
        assert_eq!(std::mem::size_of::<Entry>(), 8);
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
                let (slot, inserted) = ix.find_or_insert(ix.hash(&key), &key, b"v", 0, 1);
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
        // Odd keys have deadlines, which must survive the moves.
        let deadline = |k: u32| if k.is_multiple_of(2) { 0 } else { 1_800_000_000_000 + u64::from(k) };
        // Overwrite 1,000 keys over and over: most items written are dead.
        for round in 0..40u32 {
            for k in 0..1000u32 {
                let key = k.to_le_bytes();
                let v = [&value[..], &round.to_le_bytes()].concat();
                match ix.find(&key) {
                    Some(slot) => {
                        ix.replace_value(slot, &key, &v, deadline(k));
                    }
                    None => {
                        ix.insert_new(&key, &v, deadline(k), 1);
                    }
                }
            }
            while ix.reclaim(PAGE_BYTES / 8) {}
        }
        for k in 0..1000u32 {
            let slot = ix.find(&k.to_le_bytes()).expect("every key is still there");
            assert_eq!(ix.entry(slot).value(), [&value[..], &39u32.to_le_bytes()].concat());
            assert_eq!(ix.entry(slot).expires(), deadline(k));
            assert_eq!(ix.entry(slot).has_deadline(), deadline(k) != 0);
        }
        let live = ix.blob_bytes();
        assert_eq!(live, (0..1000).map(|k| item_len(4, 204, deadline(k))).sum::<usize>());
        // Dead bytes: under the reclaim threshold, plus the active page's.
        assert!(ix.arena_used_bytes() - live <= (ix.arena_used_bytes() / 16).max(PAGE_BYTES / 2) + PAGE_BYTES);
        assert!(ix.arena_held_bytes() <= live + 2 * PAGE_BYTES, "{} held", ix.arena_held_bytes());
    }
}
