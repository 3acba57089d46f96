//! The in-memory index: a hash table of small slab handles over a slab of
//! entries.
//!
//! The table stores only a `u32` slot number per key (its hash is recomputed
//! from the entry when the table grows), and each entry keeps its key and
//! value together in one allocation, so a 16-byte key with a 100-byte value
//! costs the two byte strings, a 2-byte length, one 32-byte entry and about
//! five bytes of table. Timers and eviction queues refer to entries by
//! `(slot, generation)`; the generation changes whenever a slot gets a new
//! entry, which is how the wheel and the queues cancel lazily.

use hashbrown::{DefaultHashBuilder, HashTable};
use std::hash::BuildHasher;

use crate::record::{Encoding, SegmentId};

/// Keys are at most this long: their length is stored in two bytes.
pub const MAX_KEY_LEN: usize = u16::MAX as usize;

pub(crate) struct Entry {
    /// `key_len: u16 LE | key | value`; `None` marks a free slot.
    blob: Option<Box<[u8]>>,
    /// Absolute expiry in unix ms; 0 means never. For a free slot: the
    /// next free slot, or `NO_SLOT`.
    pub(crate) expires: u64,
    /// Low 28 bits: the slot's generation. Bits 28-29: S3-FIFO access
    /// frequency (0-3). Bit 30: in S3-FIFO's main queue (else the small one).
    /// Bit 31: the value is text (written through RESP), else MessagePack.
    meta: u32,
    /// The segment holding this entry's set record.
    pub(crate) segment: SegmentId,
}

impl Entry {
    pub(crate) fn key(&self) -> &[u8] {
        let b = self.blob.as_deref().expect("live entry has a blob");
        let klen = u16::from_le_bytes([b[0], b[1]]) as usize;
        &b[KEY_LEN_BYTES..KEY_LEN_BYTES + klen]
    }

    pub(crate) fn value(&self) -> &[u8] {
        let b = self.blob.as_deref().expect("live entry has a blob");
        let klen = u16::from_le_bytes([b[0], b[1]]) as usize;
        &b[KEY_LEN_BYTES + klen..]
    }

    pub(crate) fn generation(&self) -> u32 {
        self.meta & GEN_MASK
    }

    pub(crate) fn freq(&self) -> u32 {
        (self.meta >> 28) & 3
    }

    pub(crate) fn set_freq(&mut self, f: u32) {
        self.meta = (self.meta & !(3 << 28)) | (f.min(3) << 28);
    }

    pub(crate) fn in_main(&self) -> bool {
        self.meta & (1 << 30) != 0
    }

    pub(crate) fn set_in_main(&mut self, main: bool) {
        self.meta = (self.meta & !(1 << 30)) | ((main as u32) << 30);
    }

    pub(crate) fn encoding(&self) -> Encoding {
        if self.meta & TEXT_BIT != 0 { Encoding::Text } else { Encoding::MessagePack }
    }

    pub(crate) fn set_encoding(&mut self, encoding: Encoding) {
        self.meta = (self.meta & !TEXT_BIT) | if encoding == Encoding::Text { TEXT_BIT } else { 0 };
    }

    /// A new entry in this slot: old timers and queue handles stop matching
    /// (and its flags start clear).
    pub(crate) fn new_generation(&mut self) {
        self.meta = (self.meta + 1) & GEN_MASK;
    }

    pub(crate) fn blob_len(&self) -> usize {
        self.blob.as_deref().map_or(0, <[u8]>::len)
    }

    pub(crate) fn is_live_at(&self, now: u64) -> bool {
        self.expires == 0 || self.expires > now
    }
}

/// Bytes before the key in a blob: its length, in two bytes.
const KEY_LEN_BYTES: usize = 2;

/// The size of the one allocation that holds an entry's key and value:
/// `key_len: u16 LE | key | value`.
pub(crate) fn blob_len(key: &[u8], value: &[u8]) -> usize {
    KEY_LEN_BYTES + key.len() + value.len()
}

/// Key and value bytes in a blob (what their set record carries).
pub(crate) fn payload_len(blob: &[u8]) -> usize {
    blob.len() - KEY_LEN_BYTES
}

fn make_blob(key: &[u8], value: &[u8]) -> Box<[u8]> {
    debug_assert!(key.len() <= MAX_KEY_LEN);
    let mut v = Vec::with_capacity(blob_len(key, value));
    v.extend_from_slice(&(key.len() as u16).to_le_bytes());
    v.extend_from_slice(key);
    v.extend_from_slice(value);
    v.into_boxed_slice()
}

const NO_SLOT: u32 = u32::MAX;
const GEN_MASK: u32 = (1 << 28) - 1;
const TEXT_BIT: u32 = 1 << 31;

pub(crate) struct Index {
    table: HashTable<u32>,
    entries: Vec<Entry>,
    free_head: u32,
    len: usize,
    blob_bytes: usize,
    hasher: DefaultHashBuilder,
}

impl Index {
    pub(crate) fn new() -> Index {
        Index {
            table: HashTable::new(),
            entries: Vec::new(),
            free_head: NO_SLOT,
            len: 0,
            blob_bytes: 0,
            hasher: DefaultHashBuilder::default(),
        }
    }

    pub(crate) fn reserve(&mut self, additional: usize) {
        let hasher = &self.hasher;
        let entries = &self.entries;
        self.table.reserve(additional, |&s| hasher.hash_one(entries[s as usize].key()));
        self.entries.reserve(additional.saturating_sub(self.entries.capacity() - self.entries.len()));
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn blob_bytes(&self) -> usize {
        self.blob_bytes
    }

    /// The hash the table uses for `key` (also the ghost queue's key identity).
    pub(crate) fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    pub(crate) fn find(&self, key: &[u8]) -> Option<u32> {
        let hash = self.hasher.hash_one(key);
        self.table.find(hash, |&s| self.entries[s as usize].key() == key).copied()
    }

    pub(crate) fn entry(&self, slot: u32) -> &Entry {
        &self.entries[slot as usize]
    }

    pub(crate) fn entry_mut(&mut self, slot: u32) -> &mut Entry {
        &mut self.entries[slot as usize]
    }

    /// The entry at `slot` if it is occupied and still has `generation`.
    pub(crate) fn get_gen(&self, slot: u32, generation: u32) -> Option<&Entry> {
        let e = self.entries.get(slot as usize)?;
        (e.blob.is_some() && e.generation() == generation).then_some(e)
    }

    /// Replaces the value of an existing entry in place; returns the old
    /// key+value blob (kept by the batch's undo log, else dropped).
    pub(crate) fn replace_value(&mut self, slot: u32, value: &[u8]) -> Box<[u8]> {
        let e = &mut self.entries[slot as usize];
        let blob = make_blob(e.key(), value);
        self.swap_blob(slot, blob)
    }

    /// Puts `blob` (same key) into an occupied slot; returns the old one.
    pub(crate) fn swap_blob(&mut self, slot: u32, blob: Box<[u8]>) -> Box<[u8]> {
        let e = &mut self.entries[slot as usize];
        self.blob_bytes = self.blob_bytes - e.blob_len() + blob.len();
        e.blob.replace(blob).expect("occupied slot")
    }

    /// Inserts an absent key from a blob kept by the undo log.
    pub(crate) fn insert_blob(&mut self, blob: Box<[u8]>, expires: u64, segment: SegmentId) -> u32 {
        let klen = u16::from_le_bytes([blob[0], blob[1]]) as usize;
        let (slot, inserted) = self.find_or_insert(&blob[KEY_LEN_BYTES..KEY_LEN_BYTES + klen], &[], expires, segment);
        debug_assert!(inserted, "undo reinserts only removed keys");
        self.swap_blob(slot, blob);
        slot
    }

    /// The slot of `key`, inserting it with `value` if absent (one hash, one
    /// probe). Returns the slot and whether it was inserted; an existing
    /// entry is left unchanged.
    pub(crate) fn find_or_insert(&mut self, key: &[u8], value: &[u8], expires: u64, segment: SegmentId) -> (u32, bool) {
        let hash = self.hasher.hash_one(key);
        let entries = &self.entries;
        let hasher = &self.hasher;
        match self.table.entry(
            hash,
            |&s| entries[s as usize].key() == key,
            |&s| hasher.hash_one(entries[s as usize].key()),
        ) {
            hashbrown::hash_table::Entry::Occupied(o) => (*o.get(), false),
            hashbrown::hash_table::Entry::Vacant(v) => {
                let slot = if self.free_head != NO_SLOT {
                    self.free_head
                } else {
                    u32::try_from(self.entries.len()).expect("fewer than 2^32 entries")
                };
                v.insert(slot);
                self.fill_slot(slot, key, value, expires, segment);
                (slot, true)
            }
        }
    }

    /// Puts an entry into `slot` (the free list's head or one past the end).
    fn fill_slot(&mut self, slot: u32, key: &[u8], value: &[u8], expires: u64, segment: SegmentId) {
        let blob = make_blob(key, value);
        self.blob_bytes += blob.len();
        self.len += 1;
        if slot == self.free_head {
            let e = &mut self.entries[slot as usize];
            self.free_head = u32::try_from(e.expires).expect("a free slot's link is a slot number");
            e.blob = Some(blob);
            e.expires = expires;
            e.new_generation();
            e.segment = segment;
        } else {
            self.entries.push(Entry { blob: Some(blob), expires, meta: 0, segment });
        }
    }

    /// Inserts a key known to be absent; returns its slot.
    #[cfg(test)]
    pub(crate) fn insert_new(&mut self, key: &[u8], value: &[u8], expires: u64, segment: SegmentId) -> u32 {
        let (slot, inserted) = self.find_or_insert(key, value, expires, segment);
        assert!(inserted);
        slot
    }

    /// Removes the entry at `slot`; returns its key+value blob.
    pub(crate) fn remove_slot(&mut self, slot: u32) -> Box<[u8]> {
        let hash = self.hasher.hash_one(self.entries[slot as usize].key());
        match self.table.find_entry(hash, |&s| s == slot) {
            Ok(occupied) => {
                occupied.remove();
            }
            Err(_) => unreachable!("every live slot is in the table"),
        }
        let e = &mut self.entries[slot as usize];
        self.blob_bytes -= e.blob_len();
        let blob = e.blob.take().expect("occupied slot");
        e.expires = u64::from(self.free_head);
        e.new_generation();
        self.free_head = slot;
        self.len -= 1;
        blob
    }

    /// One past the highest slot ever used.
    pub(crate) fn slot_count(&self) -> u32 {
        self.entries.len() as u32
    }

    /// The entry at `slot` if it is occupied.
    pub(crate) fn occupied(&self, slot: u32) -> Option<&Entry> {
        self.entries.get(slot as usize).filter(|e| e.blob.is_some())
    }

    /// Occupied slots, for compaction and checks.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &Entry)> {
        self.entries.iter().enumerate().filter(|(_, e)| e.blob.is_some()).map(|(i, e)| (i as u32, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_find_replace_remove_reuse() {
        let mut ix = Index::new();
        let a = ix.insert_new(b"a", b"1", 0, SegmentId(1));
        let b = ix.insert_new(b"bb", b"22", 5, SegmentId(1));
        assert_eq!(ix.find(b"a"), Some(a));
        assert_eq!(ix.entry(b).value(), b"22");
        ix.replace_value(a, b"one");
        assert_eq!(ix.entry(a).value(), b"one");
        assert_eq!(ix.entry(a).key(), b"a");
        let g = ix.entry(a).generation();
        ix.remove_slot(a);
        assert_eq!(ix.find(b"a"), None);
        assert!(ix.get_gen(a, g).is_none());
        let c = ix.insert_new(b"c", b"", 0, SegmentId(2));
        assert_eq!(c, a, "free slot reused");
        assert_ne!(ix.entry(c).generation(), g);
        assert_eq!(ix.len(), 2);
        assert_eq!(ix.iter().count(), 2);
    }

    #[test]
    fn entry_is_small() {
        assert_eq!(std::mem::size_of::<Entry>(), 32);
    }
}
