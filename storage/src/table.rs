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
//!   buckets, 4.6 bytes a key (4.6 to 6.9 while growing).
//! - **[`SlotTable::prefetch`]** asks the CPU for a key's group and slots
//!   before they are needed; replay does it a few records ahead, so the
//!   misses of its random inserts overlap.
//!
//! A bucket is four bytes, its control byte and a three-byte slot, while
//! slot numbers fit 24 bits (below 16M entries); buckets made for more get
//! four-byte slots (see [`SlotTable::narrow_below`]): 1.1 to 1.7 bytes an
//! entry less than four-byte slots everywhere. A control byte is
//! [`EMPTY`] (0x00, so a fresh map needs no writing), [`DELETED`] (0x01, a
//! tombstone) or, in a full bucket, 0x80 and the hash's low seven bits (its
//! tag; the home group comes from the high bits, so the two are
//! independent). Group matching is SWAR on a `u64` (portable; a false match
//! is possible only on a full bucket next to a real one, and `eq` rejects
//! it). A lookup stops at the first group with an EMPTY byte.
//!
//! Removing leaves EMPTY when the bucket's group has an EMPTY byte, else
//! DELETED: a group with an EMPTY byte has never been full since its
//! buckets were made (a full group only ever gets tombstones back), so no
//! probe has gone past it. Inserting takes the first EMPTY or DELETED bucket on the
//! probe. Only EMPTY buckets taken count against the load (`growth_left`),
//! so at least one bucket in eight stays EMPTY and every probe ends; when
//! none may be taken, new buckets are made: the same number if that leaves
//! a quarter of the load free, else half as many again.
//!
//! **Growing is incremental**, as Redis's dict rehashes: the old buckets
//! stay, and each insert moves eight of their groups into the new ones (the
//! caller recomputes each moved slot's hash from its key, `hash_of`),
//! leaving tombstones so probes through the old buckets still go on. A
//! lookup tries the new buckets, then the old; a removal takes the slot
//! from whichever holds it. Moving a 2.2M-entry table at once stalled the
//! insert that grew it for 63–298 ms; now no set in 3M takes over a
//! millisecond (`cargo bench -p cachet-benches --bench growth`).

use memmap2::MmapMut;

/// Buckets in a group: one `u64` of control bytes.
const GROUP: usize = 8;
/// A bucket never used since its table was made: zero, so a fresh map is
/// all EMPTY without being written (and faulted in) up front.
const EMPTY: u8 = 0x00;
/// A bucket whose slot was removed from a group that had been full, or
/// moved on by a migration.
const DELETED: u8 = 0x01;
/// The control byte of a full bucket: this bit and the hash's tag.
const FULL: u8 = 0x80;
/// Bytes of a slot while slot numbers fit 24 bits, and beyond.
const NARROW_SLOT: usize = 3;
const WIDE_SLOT: usize = 4;
/// Groups an insert moves from the table being emptied, if any: a
/// migration ends after `groups / MIGRATE` inserts, well before the new
/// table can fill (it has room for a quarter of the old one's load more).
/// Each moved slot's key is read to hash it, about 0.1 us, so an insert
/// during a migration costs up to about 5 us more; the old table's memory
/// stays until the last group has moved, so a short migration keeps the
/// time both are held short (17K inserts when 1M entries outgrow theirs).
const MIGRATE: usize = 8;
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

fn ctrl_of(hash: u64) -> u8 {
    FULL | (hash & 0x7f) as u8
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
    /// Buckets whose byte may be `ctrl` (every real one, and rarely a full
    /// bucket just above one: only a byte of `ctrl ^ 1`, also full).
    fn matching(self, ctrl: u8) -> Positions {
        let cmp = self.0 ^ (LO * u64::from(ctrl));
        Positions(cmp.wrapping_sub(LO) & !cmp & HI)
    }

    /// Whether a byte is EMPTY (zero). The zero-byte test can flag a byte
    /// above a real zero, never without one, so the answer is exact.
    fn has_empty(self) -> bool {
        self.0.wrapping_sub(LO) & !self.0 & HI != 0
    }

    /// The first EMPTY or DELETED bucket (top bit clear).
    fn first_free(self) -> Option<usize> {
        Positions(!self.0 & HI).next()
    }

    fn full(self) -> Positions {
        Positions(self.0 & HI)
    }
}

/// One table: `buckets` control bytes, then `buckets` slots of
/// `slot_bytes` (3 or 4, little-endian; a slot is read as a `u32` and
/// masked, so the map has a byte to spare after a last three-byte slot),
/// in one anonymous map of its own, so dropping it gives its
/// memory straight back to the system: freed to the allocator, two large
/// blocks stayed resident (5 B/entry more RSS at 1M entries than the
/// allocator counted). It is not advised to use huge pages, for the
/// reasons the arena's pages are not (see `arena::PAGE_BYTES`).
struct Buckets {
    mem: MmapMut,
    groups: usize,
    len: usize,
    /// EMPTY buckets that may still be taken.
    growth_left: usize,
    slot_bytes: usize,
}

impl Buckets {
    fn with_groups(groups: usize, slot_bytes: usize) -> Buckets {
        let buckets = groups * GROUP;
        let bytes = buckets * (1 + slot_bytes) + (WIDE_SLOT - slot_bytes);
        let mem = MmapMut::map_anon(bytes).unwrap_or_else(|e| panic!("mapping a {bytes}-byte hash table: {e}"));
        Buckets { mem, groups, len: 0, growth_left: usable(buckets), slot_bytes }
    }

    /// Whether slot number `slot` fits these buckets' slots.
    fn fits(&self, slot: u32) -> bool {
        self.slot_bytes == WIDE_SLOT || slot < 1 << (8 * NARROW_SLOT)
    }

    fn buckets(&self) -> usize {
        self.groups * GROUP
    }

    fn ctrl(&self, at: usize) -> u8 {
        self.mem[at]
    }

    fn slot(&self, at: usize) -> u32 {
        let from = self.buckets() + at * self.slot_bytes;
        let word = u32::from_le_bytes(self.mem[from..from + WIDE_SLOT].try_into().expect("four bytes"));
        if self.slot_bytes == WIDE_SLOT { word } else { word & ((1 << (8 * NARROW_SLOT)) - 1) }
    }

    fn set(&mut self, at: usize, ctrl: u8, slot: u32) {
        assert!(self.fits(slot), "slot {slot} is too large for these buckets");
        self.mem[at] = ctrl;
        let from = self.buckets() + at * self.slot_bytes;
        self.mem[from..from + self.slot_bytes].copy_from_slice(&slot.to_le_bytes()[..self.slot_bytes]);
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
    fn position(&self, hash: u64, eq: &mut impl FnMut(u32) -> bool) -> Option<usize> {
        let ctrl = ctrl_of(hash);
        let mut g = self.home(hash);
        // Which slot is read depends on the control bytes, but its line
        // does not: fetching it now overlaps the two misses of a lookup
        // in a table larger than the cache, which would otherwise follow
        // each other.
        prefetch(self.mem[self.buckets() + g * GROUP * self.slot_bytes..].as_ptr());
        loop {
            let group = self.group(g);
            for i in group.matching(ctrl) {
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

    fn prefetch(&self, hash: u64) {
        let at = self.home(hash) * GROUP;
        prefetch(self.mem[at..].as_ptr());
        prefetch(self.mem[self.buckets() + at * self.slot_bytes..].as_ptr());
    }

    /// Takes the slot out of bucket `at`.
    fn clear(&mut self, at: usize) {
        if self.group(at / GROUP).has_empty() {
            self.mem[at] = EMPTY;
            self.growth_left += 1;
        } else {
            self.mem[at] = DELETED;
        }
        self.len -= 1;
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

    /// Whether a slot with `hash` can go in without taking an EMPTY bucket
    /// past the load.
    fn has_room_for(&self, hash: u64) -> bool {
        self.growth_left > 0 || self.ctrl(self.free_bucket(hash)) != EMPTY
    }

    fn put(&mut self, hash: u64, slot: u32) {
        let at = self.free_bucket(hash);
        if self.ctrl(at) == EMPTY {
            // Past the load, a probe could find no EMPTY byte and never end.
            assert!(self.growth_left > 0, "a hash table bucket taken past its load");
            self.growth_left -= 1;
        }
        self.set(at, ctrl_of(hash), slot);
        self.len += 1;
    }

    /// Moves the slots of group `g` into `to` (each re-hashed by
    /// `hash_of`), leaving tombstones, so probes that pass through it here
    /// still go on.
    fn move_group(&mut self, g: usize, to: &mut Buckets, hash_of: &impl Fn(u32) -> u64) {
        for i in self.group(g).full() {
            let at = g * GROUP + i;
            to.put(hash_of(self.slot(at)), self.slot(at));
            self.mem[at] = DELETED;
            self.len -= 1;
        }
    }
}

/// The table the index uses: the buckets new slots go into and, while it
/// grows, the old buckets being emptied into them (see the module docs).
pub(crate) struct SlotTable {
    cur: Buckets,
    /// The old buckets and the next of their groups to move.
    old: Option<(Buckets, usize)>,
    /// One more than the largest slot ever inserted.
    slots_seen: u32,
    /// New buckets get three-byte slots while both the slots seen and the
    /// buckets' load are below this (2^24; smaller in tests).
    narrow_below: u32,
}

impl Default for SlotTable {
    fn default() -> SlotTable {
        SlotTable {
            cur: Buckets::with_groups(1, NARROW_SLOT),
            old: None,
            slots_seen: 0,
            narrow_below: 1 << (8 * NARROW_SLOT),
        }
    }
}

impl SlotTable {
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.cur.len + self.old.as_ref().map_or(0, |(o, _)| o.len)
    }

    /// Bytes of the table's maps.
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn mapped_bytes(&self) -> usize {
        self.cur.mem.len() + self.old.as_ref().map_or(0, |(o, _)| o.mem.len())
    }

    /// Buckets of the table new slots go into.
    #[cfg(test)]
    pub(crate) fn buckets(&self) -> usize {
        self.cur.buckets()
    }

    /// The slot with `hash` that `eq` accepts.
    pub(crate) fn find(&self, hash: u64, mut eq: impl FnMut(u32) -> bool) -> Option<u32> {
        if let Some(at) = self.cur.position(hash, &mut eq) {
            return Some(self.cur.slot(at));
        }
        let (old, _) = self.old.as_ref()?;
        old.position(hash, &mut eq).map(|at| old.slot(at))
    }

    /// Hints the CPU to fetch what a lookup of `hash` reads first: its home
    /// group's control bytes and slots (in both tables while it grows).
    pub(crate) fn prefetch(&self, hash: u64) {
        self.cur.prefetch(hash);
        if let Some((old, _)) = &self.old {
            old.prefetch(hash);
        }
    }

    /// Calls `f` with each slot in `hash`'s home group (in both tables
    /// while it grows) whose tag matches: the slots a lookup of `hash`
    /// will most likely compare, for a caller that prefetches what they
    /// point at. Reads the groups' control bytes and slots.
    pub(crate) fn candidates(&self, hash: u64, mut f: impl FnMut(u32)) {
        for b in [Some(&self.cur), self.old.as_ref().map(|(o, _)| o)].into_iter().flatten() {
            let g = b.home(hash);
            for i in b.group(g).matching(ctrl_of(hash)) {
                f(b.slot(g * GROUP + i));
            }
        }
    }

    /// Room for `additional` more slots without growing, made now, all at
    /// once (replay calls it first, on an empty table). `hash_of` gives the
    /// hash of a slot in the table.
    pub(crate) fn reserve(&mut self, additional: usize, hash_of: impl Fn(u32) -> u64) {
        self.finish(&hash_of);
        if additional > self.cur.growth_left {
            self.start(additional, &hash_of);
            self.finish(&hash_of);
        }
    }

    /// Adds `slot`, whose key is not in the table. `hash_of` gives the hash
    /// of a slot already in the table, for moving it.
    pub(crate) fn insert_unique(&mut self, hash: u64, slot: u32, hash_of: impl Fn(u32) -> u64) {
        self.slots_seen = self.slots_seen.max(slot.saturating_add(1));
        self.step(&hash_of);
        if !self.cur.has_room_for(hash) || !self.cur.fits(slot) {
            // (The index's slot numbers stay below its table's load, so
            // buckets made narrow are always outgrown before their slots
            // are; a slot that does not fit moves everything to wide ones.)
            self.start(1, &hash_of);
        }
        self.cur.put(hash, slot);
    }

    /// Removes `slot` (found by its key's `hash`); false if it is not there.
    pub(crate) fn remove(&mut self, hash: u64, slot: u32) -> bool {
        let mut is = |s| s == slot;
        if let Some(at) = self.cur.position(hash, &mut is) {
            self.cur.clear(at);
            return true;
        }
        match &mut self.old {
            Some((old, _)) => match old.position(hash, &mut is) {
                Some(at) => {
                    old.clear(at);
                    true
                }
                None => false,
            },
            None => false,
        }
    }

    /// Starts moving every slot into new buckets with room for `additional`
    /// more: the same size when that leaves a quarter of the load free
    /// (tombstones filled this one; the next one is then at least a quarter
    /// of its load away, so moving costs O(1) a write), else half as large
    /// again, or larger if `additional` asks for it. The old buckets are
    /// emptied `MIGRATE` groups per insert, so no insert waits for the
    /// whole table (a growing table of 2.2M entries took 63 ms in one
    /// insert when it moved at once).
    ///
    /// A migration ends before the new buckets can fill: they have room for
    /// a quarter of the old load more than the old buckets held, and the
    /// old ones hold a seventh of their load in groups, `MIGRATE` moved per
    /// insert.
    /// Should one still be running, its rest moves into the new buckets now.
    fn start(&mut self, additional: usize, hash_of: &impl Fn(u32) -> u64) {
        let leftover = self.old.as_ref().map_or(0, |(o, _)| o.len);
        let need = self.cur.len + leftover + additional;
        let room = usable(self.cur.buckets());
        let target = if need <= room - room / 4 { room } else { need.max(room + room / 2) };
        let groups = groups_for(target);
        // Slot numbers stay below the most entries the index ever held, and
        // these buckets hold at most `usable` of them.
        let most = (self.slots_seen as usize).max(usable(groups * GROUP));
        let slot_bytes = if most < self.narrow_below as usize { NARROW_SLOT } else { WIDE_SLOT };
        let mut new = Buckets::with_groups(groups, slot_bytes);
        if let Some((mut old, next)) = self.old.take() {
            for g in next..old.groups {
                old.move_group(g, &mut new, hash_of);
            }
        }
        let old = std::mem::replace(&mut self.cur, new);
        self.old = Some((old, 0));
        self.step(hash_of);
    }

    /// Moves the next `MIGRATE` groups of the old buckets, if any; drops
    /// them once empty.
    fn step(&mut self, hash_of: &impl Fn(u32) -> u64) {
        let Some((old, next)) = &mut self.old else { return };
        let end = (*next + MIGRATE).min(old.groups);
        for g in *next..end {
            old.move_group(g, &mut self.cur, hash_of);
        }
        *next = end;
        if end == old.groups {
            debug_assert_eq!(old.len, 0, "every slot moved");
            self.old = None;
        }
    }

    /// Moves whatever is left of the old buckets.
    fn finish(&mut self, hash_of: &impl Fn(u32) -> u64) {
        while self.old.is_some() {
            self.step(hash_of);
        }
    }
}

/// A hint to bring the cache line at `p` in; it never faults.
#[inline]
pub(crate) fn prefetch(p: *const u8) {
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
                    t.insert_unique(hash, key, h);
                }
                model.insert(key, ());
            } else {
                assert_eq!(t.remove(hash, key), model.remove(&key).is_some(), "remove {key}");
            }
            assert_eq!(t.len(), model.len());
            for b in [Some(&t.cur), t.old.as_ref().map(|(o, _)| o)].into_iter().flatten() {
                assert!(b.growth_left + b.len <= usable(b.buckets()), "the load stays under 7/8");
            }
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
        t.reserve(1000, mix);
        let first = t.buckets();
        let mut sizes = Vec::new();
        for round in 0..50u32 {
            for k in 0..1000 {
                let first = round * 1000;
                t.insert_unique(mix(first + k), first + k, mix);
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
        t.reserve(1_000_000, mix);
        assert_eq!(t.buckets(), 1_142_864);
        for k in 0..1_000_000 {
            t.insert_unique(mix(k), k, mix);
        }
        assert_eq!(t.buckets(), 1_142_864, "no rebuild after a reserve");
        assert!((0..1_000_000).step_by(997).all(|k| t.find(mix(k), |s| s == k) == Some(k)));
    }

    #[test]
    fn a_growing_table_moves_a_few_groups_per_insert() {
        let mut t = SlotTable::default();
        let mut k = 0;
        let mut migrations = 0;
        while k < 200_000 {
            t.insert_unique(mix(k), k, mix);
            k += 1;
            if let Some((old, _)) = &t.old {
                migrations += 1;
                let groups = old.groups;
                let mut inserts = 0;
                while t.old.is_some() {
                    t.insert_unique(mix(k), k, mix);
                    k += 1;
                    inserts += 1;
                    // Meanwhile every key is in one table or the other.
                    assert_eq!(t.find(mix(k / 2), |s| s == k / 2), Some(k / 2));
                }
                assert_eq!(inserts, (groups - MIGRATE).div_ceil(MIGRATE), "{MIGRATE} groups an insert");
            }
        }
        assert!(migrations >= 8, "{migrations}");
        assert!((0..k).all(|k| t.find(mix(k), |s| s == k) == Some(k)));
    }

    #[test]
    fn grows_by_half() {
        let mut t = SlotTable::default();
        let mut sizes = vec![t.buckets()];
        for k in 0..10_000 {
            t.insert_unique(mix(k), k, mix);
            if t.buckets() != *sizes.last().unwrap() {
                sizes.push(t.buckets());
            }
        }
        for w in sizes.windows(2).filter(|w| w[0] >= 100) {
            let ratio = w[1] as f64 / w[0] as f64;
            assert!((1.4..=1.6).contains(&ratio), "{sizes:?}");
        }
    }

    /// Slots past what three bytes hold (a small limit here, 2^24 in use):
    /// buckets made once the slots seen or the load pass it get four-byte
    /// slots, and every slot stays findable through the change, with
    /// removals in between.
    #[test]
    fn slots_outgrow_narrow_buckets() {
        let mut t = SlotTable { narrow_below: 300, ..SlotTable::default() };
        assert_eq!(t.cur.slot_bytes, NARROW_SLOT);
        let mut live = std::collections::BTreeSet::new();
        for k in 0..2000u32 {
            t.insert_unique(mix(k), k, mix);
            live.insert(k);
            if k % 3 == 0 {
                let gone = k / 2;
                if live.remove(&gone) {
                    assert!(t.remove(mix(gone), gone));
                }
            }
            if k % 97 == 0 {
                assert!(live.iter().all(|&s| t.find(mix(s), |x| x == s) == Some(s)), "at {k}");
            }
        }
        assert_eq!(t.cur.slot_bytes, WIDE_SLOT);
        assert!(live.iter().all(|&s| t.find(mix(s), |x| x == s) == Some(s)));
        assert_eq!(t.len(), live.len());
    }

    /// A slot that does not fit the current buckets (which the index never
    /// inserts) still goes in: the table moves to wide buckets first.
    #[test]
    fn a_slot_too_large_for_narrow_buckets_moves_the_table() {
        let mut t = SlotTable::default();
        for k in 0..100 {
            t.insert_unique(mix(k), k, mix);
        }
        let big = (1 << 24) + 5;
        t.insert_unique(mix(big), big, mix);
        assert_eq!(t.cur.slot_bytes, WIDE_SLOT);
        assert_eq!(t.find(mix(big), |s| s == big), Some(big));
        assert!((0..100).all(|k| t.find(mix(k), |s| s == k) == Some(k)));
    }

    #[test]
    fn narrow_slots_read_back_at_the_end_of_the_map() {
        let mut b = Buckets::with_groups(2, NARROW_SLOT);
        let last = b.buckets() - 1;
        b.set(last, FULL, (1 << 24) - 1);
        b.set(last - 1, FULL, 0x00ab_cdef);
        assert_eq!(b.slot(last), (1 << 24) - 1);
        assert_eq!(b.slot(last - 1), 0x00ab_cdef);
        assert_eq!(b.mem.len(), 2 * GROUP * 4 + 1);
    }
}
