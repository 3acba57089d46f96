//! The index's hash table: slot numbers (`u32`) found by their key's hash.
//!
//! SwissTable's shape, as hashbrown has it: buckets in groups of eight, a
//! control byte per bucket, and a lookup that compares a group's eight
//! control bytes with the key's tag at once. Two things differ, and are why
//! the index has its own table:
//!
//! - **Any number of groups**, not a power of two. A key's home group is
//!   `(hash * groups) >> 64` (Lemire's multiply-shift), and a probe goes on
//!   to the next group, wrapping. So the table is sized to what it holds:
//!   replay makes it exactly big enough for the log's keys at a load of 7/8,
//!   and it grows by half when full. hashbrown rounds to a power of two:
//!   1M keys took 2^21 buckets, 10.5 bytes a key, where this takes 1.14M
//!   buckets, 5.7 bytes a key (5.7 to 8.6 while growing).
//! - **[`SlotTable::prefetch`]** asks the CPU for a key's group and slots
//!   before they are needed; replay does it a few records ahead, so the
//!   misses of its random inserts overlap.
//!
//! A bucket is five bytes: its control byte and its slot. A control byte is
//! [`EMPTY`] (0xFF), [`DELETED`] (0x80, a tombstone) or, in a full bucket,
//! the hash's low seven bits (its tag; the home group comes from the high
//! bits, so the two are independent). Group matching is SWAR on a `u64`
//! (portable; a false match is possible only on a full bucket next to a
//! real one, and `eq` rejects it). A lookup stops at the first group with an
//! EMPTY byte.
//!
//! The table lives in an anonymous map of its own (see [`SlotTable`]).
//!
//! Removing leaves EMPTY when the bucket's group has an EMPTY byte, else
//! DELETED: a group with an EMPTY byte has never been full since the last
//! rebuild (a full group only ever gets tombstones back), so no probe has
//! gone past it. Inserting takes the first EMPTY or DELETED bucket on the
//! probe. Only EMPTY buckets taken count against the load (`growth_left`),
//! so at least one bucket in eight stays EMPTY and every probe ends; when
//! none may be taken, the table is rebuilt: at the same size if that
//! leaves a quarter of the load free, else half as large again. Rebuilding
//! needs every slot and its hash, which the caller gives (`all`: the index
//! walks its slab and hashes each key).

use memmap2::MmapMut;

/// Buckets in a group: one `u64` of control bytes.
const GROUP: usize = 8;
/// A bucket never used since the last rebuild.
const EMPTY: u8 = 0xFF;
/// A bucket whose slot was removed from a group that had been full.
const DELETED: u8 = 0x80;
/// Bytes of a slot.
const SLOT: usize = 4;
const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// The buckets of `buckets` that may be full: 7 of every 8.
fn usable(buckets: usize) -> usize {
    buckets - buckets / 8
}

/// The fewest groups whose usable buckets hold `items` (at least one).
fn groups_for(items: usize) -> usize {
    items.div_ceil(GROUP - 1).max(1)
}

fn tag(hash: u64) -> u8 {
    (hash & 0x7f) as u8
}

/// The positions (0-7) of the bytes whose top bit a mask sets.
struct Positions(u64);

impl Iterator for Positions {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        if self.0 == 0 {
            return None;
        }
        let at = self.0.trailing_zeros() as usize / 8;
        self.0 &= self.0 - 1;
        Some(at)
    }
}

/// A group's eight control bytes, little-endian.
#[derive(Clone, Copy)]
struct Group(u64);

impl Group {
    /// Buckets whose byte may be `tag` (every real one, and rarely a full
    /// bucket just above one).
    fn matching(self, tag: u8) -> Positions {
        let cmp = self.0 ^ (LO * u64::from(tag));
        Positions(cmp.wrapping_sub(LO) & !cmp & HI)
    }

    fn has_empty(self) -> bool {
        self.0 & (self.0 << 1) & HI != 0
    }

    /// The first EMPTY or DELETED bucket.
    fn first_free(self) -> Option<usize> {
        Positions(self.0 & HI).next()
    }
}

/// The table: `buckets` control bytes, then `buckets` slots (`u32`, native
/// byte order), in one anonymous map of its own (advised to use huge pages
/// once it spans one), so a rebuild gives the old table's memory straight
/// back to the system: freed to the allocator, two large blocks stayed
/// resident (5 B/entry more RSS at 1M entries than the allocator counted).
pub(crate) struct SlotTable {
    mem: MmapMut,
    groups: usize,
    len: usize,
    /// EMPTY buckets that may still be taken before a rebuild.
    growth_left: usize,
}

impl Default for SlotTable {
    fn default() -> SlotTable {
        SlotTable::with_groups(1)
    }
}

impl SlotTable {
    fn with_groups(groups: usize) -> SlotTable {
        let buckets = groups * GROUP;
        let bytes = buckets * (1 + SLOT);
        let mut mem = MmapMut::map_anon(bytes).unwrap_or_else(|e| panic!("mapping a {bytes}-byte hash table: {e}"));
        if bytes >= 2 << 20 {
            // Advice only: without huge pages the table still works.
            let _ = mem.advise(memmap2::Advice::HugePage);
        }
        mem[..buckets].fill(EMPTY);
        SlotTable { mem, groups, len: 0, growth_left: usable(buckets) }
    }

    fn ctrl(&self, at: usize) -> u8 {
        self.mem[at]
    }

    fn slot(&self, at: usize) -> u32 {
        let from = self.buckets() + at * SLOT;
        u32::from_ne_bytes(self.mem[from..from + SLOT].try_into().expect("a slot is four bytes"))
    }

    fn set(&mut self, at: usize, ctrl: u8, slot: u32) {
        self.mem[at] = ctrl;
        let from = self.buckets() + at * SLOT;
        self.mem[from..from + SLOT].copy_from_slice(&slot.to_ne_bytes());
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Bytes of the table's map.
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn mapped_bytes(&self) -> usize {
        self.mem.len()
    }

    pub(crate) fn buckets(&self) -> usize {
        self.groups * GROUP
    }

    fn home(&self, hash: u64) -> usize {
        ((u128::from(hash) * self.groups as u128) >> 64) as usize
    }

    fn next(&self, group: usize) -> usize {
        if group + 1 == self.groups { 0 } else { group + 1 }
    }

    fn group(&self, group: usize) -> Group {
        let at = group * GROUP;
        Group(u64::from_le_bytes(self.mem[at..at + GROUP].try_into().expect("a group is eight bytes")))
    }

    /// The bucket holding a slot with `hash` that `eq` accepts.
    fn position(&self, hash: u64, mut eq: impl FnMut(u32) -> bool) -> Option<usize> {
        let tag = tag(hash);
        let mut g = self.home(hash);
        loop {
            let group = self.group(g);
            for i in group.matching(tag) {
                let at = g * GROUP + i;
                if eq(self.slot(at)) {
                    return Some(at);
                }
            }
            if group.has_empty() {
                return None;
            }
            g = self.next(g);
        }
    }

    /// The slot with `hash` that `eq` accepts.
    pub(crate) fn find(&self, hash: u64, eq: impl FnMut(u32) -> bool) -> Option<u32> {
        self.position(hash, eq).map(|at| self.slot(at))
    }

    /// Hints the CPU to fetch what a lookup of `hash` reads first: its home
    /// group's control bytes and slots.
    pub(crate) fn prefetch(&self, hash: u64) {
        let at = self.home(hash) * GROUP;
        prefetch(self.mem[at..].as_ptr());
        prefetch(self.mem[self.buckets() + at * SLOT..].as_ptr());
    }

    /// Room for `additional` more slots without a rebuild. `all` gives
    /// every slot in the table with its hash, should it need rebuilding.
    pub(crate) fn reserve<I: IntoIterator<Item = (u32, u64)>>(&mut self, additional: usize, all: impl FnOnce() -> I) {
        if additional > self.growth_left {
            self.rebuild(additional, all);
        }
    }

    /// Adds `slot`, whose key is not in the table. `all` gives every slot
    /// already in the table with its hash, should it need rebuilding.
    pub(crate) fn insert_unique<I: IntoIterator<Item = (u32, u64)>>(
        &mut self,
        hash: u64,
        slot: u32,
        all: impl FnOnce() -> I,
    ) {
        let mut at = self.free_bucket(hash);
        if self.ctrl(at) == EMPTY && self.growth_left == 0 {
            self.rebuild(1, all);
            at = self.free_bucket(hash);
        }
        self.put(at, hash, slot);
    }

    /// Removes `slot` (found by its key's `hash`); false if it is not there.
    pub(crate) fn remove(&mut self, hash: u64, slot: u32) -> bool {
        let Some(at) = self.position(hash, |s| s == slot) else { return false };
        if self.group(at / GROUP).has_empty() {
            self.mem[at] = EMPTY;
            self.growth_left += 1;
        } else {
            self.mem[at] = DELETED;
        }
        self.len -= 1;
        true
    }

    /// The first EMPTY or DELETED bucket on `hash`'s probe.
    fn free_bucket(&self, hash: u64) -> usize {
        let mut g = self.home(hash);
        loop {
            if let Some(i) = self.group(g).first_free() {
                return g * GROUP + i;
            }
            g = self.next(g);
        }
    }

    fn put(&mut self, at: usize, hash: u64, slot: u32) {
        if self.ctrl(at) == EMPTY {
            self.growth_left -= 1;
        }
        self.set(at, tag(hash), slot);
        self.len += 1;
    }

    /// Moves every slot into a new table with room for `additional` more:
    /// the same size when that leaves a quarter of it free (tombstones
    /// filled this one; the next rebuild is then at least a quarter of its
    /// load away, so rebuilding costs O(1) a write), else half as large
    /// again, or larger if `additional` asks for it.
    ///
    /// The slots come from `all`, not from this table's buckets: the index
    /// walks its slab in order, whose items lie in the arena in about the
    /// order they were written, so reading each key to hash it is a
    /// sequential read, where the buckets' order made it a cache miss per
    /// key (a rebuild at 2.2M entries stalled the writer 298 ms that way).
    /// Inserts go in batches whose groups are prefetched first.
    fn rebuild<I: IntoIterator<Item = (u32, u64)>>(&mut self, additional: usize, all: impl FnOnce() -> I) {
        const BATCH: usize = 16;
        let need = self.len + additional;
        let room = usable(self.buckets());
        let target = if need <= room - room / 4 { room } else { need.max(room + room / 2) };
        let mut new = SlotTable::with_groups(groups_for(target));
        let mut batch = [(0, 0); BATCH];
        let mut n = 0;
        let put = |new: &mut SlotTable, batch: &[(u32, u64)]| {
            for &(slot, hash) in batch {
                let to = new.free_bucket(hash);
                new.put(to, hash, slot);
            }
        };
        for (slot, hash) in all() {
            new.prefetch(hash);
            batch[n] = (slot, hash);
            n += 1;
            if n == BATCH {
                put(&mut new, &batch);
                n = 0;
            }
        }
        put(&mut new, &batch[..n]);
        assert_eq!(new.len, self.len, "a rebuild is given exactly the slots in the table");
        *self = new;
    }
}

/// A hint to bring the cache line at `p` in; it never faults.
#[inline]
fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing the program sees and cannot fault,
    // whatever the address; SSE is part of every x86_64.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Hashes chosen to collide: every key's hash comes from `h`, so tests
    /// can pile keys into one group.
    fn check_against_map(ops: impl Iterator<Item = (bool, u32)>, h: impl Fn(u32) -> u64 + Copy) {
        let mut t = SlotTable::default();
        let mut model: HashMap<u32, ()> = HashMap::new();
        for (insert, key) in ops {
            let hash = h(key);
            if insert {
                if t.find(hash, |s| s == key).is_none() {
                    t.insert_unique(hash, key, || model.keys().map(|&k| (k, h(k))));
                }
                model.insert(key, ());
            } else {
                assert_eq!(t.remove(hash, key), model.remove(&key).is_some(), "remove {key}");
            }
            assert_eq!(t.len(), model.len());
            assert!(t.growth_left + t.len <= usable(t.buckets()), "the load stays under 7/8");
        }
        for key in 0..512 {
            assert_eq!(t.find(h(key), |s| s == key).is_some(), model.contains_key(&key), "key {key}");
        }
    }

    /// A small deterministic generator (xorshift), so failures repeat.
    fn ops(seed: u64, n: usize, insert_percent: u64) -> impl Iterator<Item = (bool, u32)> {
        let mut x = seed;
        (0..n).map(move |_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 100 < insert_percent, ((x >> 20) % 512) as u32)
        })
    }

    fn mix(k: u32) -> u64 {
        u64::from(k).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29).wrapping_mul(0xBF58_476D_1CE4_E5B9)
    }

    #[test]
    fn agrees_with_a_map_under_inserts_and_removes() {
        for seed in 1..20 {
            check_against_map(ops(seed, 20_000, 60), mix);
            check_against_map(ops(seed, 20_000, 40), mix);
        }
    }

    #[test]
    fn agrees_with_a_map_when_keys_share_groups_and_tags() {
        // Eight home groups' worth of hashes at most, four tags: long
        // probes, tombstones in full groups and false tag matches.
        check_against_map(ops(7, 50_000, 55), |k| (u64::from(k % 8) << 61) | u64::from(k % 4));
        check_against_map(ops(9, 50_000, 55), |_| 0);
    }

    #[test]
    fn churn_does_not_grow_the_table_without_end() {
        // A thousand keys come and go: tombstones fill the table, which is
        // rebuilt, growing once at most (the live count at the rebuild may
        // be near the whole load), then in place.
        let mut t = SlotTable::default();
        t.reserve(1000, std::iter::empty);
        let first = t.buckets();
        let mut sizes = Vec::new();
        for round in 0..50u32 {
            for k in 0..1000 {
                let first = round * 1000;
                t.insert_unique(mix(first + k), first + k, || (first..first + k).map(|x| (x, mix(x))));
            }
            for k in 0..1000 {
                assert!(t.remove(mix(round * 1000 + k), round * 1000 + k));
            }
            sizes.push(t.buckets());
        }
        assert!(sizes[5..].iter().all(|&b| b == sizes[5]), "{sizes:?}");
        assert!(sizes[5] <= first * 2, "{first} then {sizes:?}");
    }

    #[test]
    fn reserve_sizes_the_table_to_seven_eighths() {
        let mut t = SlotTable::default();
        t.reserve(1_000_000, std::iter::empty);
        assert_eq!(t.buckets(), 1_142_864);
        for k in 0..1_000_000 {
            t.insert_unique(mix(k), k, || (0..k).map(|x| (x, mix(x))));
        }
        assert_eq!(t.buckets(), 1_142_864, "no rebuild after a reserve");
        assert!((0..1_000_000).step_by(997).all(|k| t.find(mix(k), |s| s == k) == Some(k)));
    }

    #[test]
    fn grows_by_half() {
        let mut t = SlotTable::default();
        let mut sizes = vec![t.buckets()];
        for k in 0..10_000 {
            t.insert_unique(mix(k), k, || (0..k).map(|x| (x, mix(x))));
            if t.buckets() != *sizes.last().unwrap() {
                sizes.push(t.buckets());
            }
        }
        for w in sizes.windows(2).filter(|w| w[0] >= 100) {
            let ratio = w[1] as f64 / w[0] as f64;
            assert!((1.4..=1.6).contains(&ratio), "{sizes:?}");
        }
    }
}
