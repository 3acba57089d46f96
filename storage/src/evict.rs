//! S3-FIFO eviction ("FIFO queues are all you need for cache eviction",
//! SOSP '23): a small FIFO that new entries enter, a main FIFO for entries
//! that proved themselves, and a ghost FIFO of recently evicted key hashes.
//!
//! - An access sets a 2-bit frequency (saturating at 3); nothing moves.
//! - A new key enters the small queue, or the main one if its hash is a ghost.
//! - To evict: while the small queue holds more than a tenth of the bytes,
//!   take its oldest entry: accessed since it came in, it moves to main;
//!   otherwise it is evicted and its hash becomes a ghost. Else take main's
//!   oldest: accessed, it goes back to the head with its frequency lowered;
//!   otherwise it is evicted.
//!
//! Queues hold `(slot, generation)` handles; a handle whose entry is gone,
//! reused or moved is skipped. The queue flag and the frequency live in the
//! entry's spare bits, so eviction costs 6 bytes a handle and nothing else.

use std::collections::VecDeque;

use hashbrown::HashSet;

use crate::index::{Handle, Index};

/// Bytes an entry costs beyond its arena item (key, value and their
/// lengths and deadline): the slab entry (8) and a table slot with its
/// control byte (4.6 to 8.6 by the table's load and slot width), 17 at
/// most (expiry timers are per group of 64 slots, 0.4 bytes an entry),
/// rounded up for the arena's page slack and the dead bytes reclaim has
/// not yet freed (with 16-byte entries: 34 held a flood of 100-byte values
/// at 1.06x the cap, 40 at 1.02x; this is that 40 less the 8 bytes entries
/// lost). The eviction queues' handles are counted apart, by the queues'
/// capacity (`S3Fifo::own_bytes`). The memory bench checks it.
pub const ENTRY_OVERHEAD: usize = 32;

#[derive(Default)]
pub(crate) struct S3Fifo {
    small: VecDeque<Handle>,
    main: VecDeque<Handle>,
    small_bytes: usize,
    main_bytes: usize,
    ghosts: VecDeque<u64>,
    ghost_set: HashSet<u64>,
}

fn cost(index: &Index, slot: u32) -> usize {
    index.entry(slot).blob_len() + ENTRY_OVERHEAD + HANDLE
}

/// A queue handle, `(slot, generation)`.
const HANDLE: usize = std::mem::size_of::<Handle>();

/// Room a queue or the ghost set may keep beyond four times its length.
const SLACK: usize = 64;

impl S3Fifo {
    /// Bytes the queues and ghosts hold, by capacity (what is allocated,
    /// stale handles and spare room included).
    pub(crate) fn own_bytes(&self) -> usize {
        (self.small.capacity() + self.main.capacity()) * HANDLE + self.ghost_bytes()
    }

    /// Bytes the ghosts hold (what forgetting them gives back).
    pub(crate) fn ghost_bytes(&self) -> usize {
        self.ghosts.capacity() * 8 + self.ghost_set.capacity() * 9
    }

    /// Drops handles of entries that are gone, when stale ones outnumber the
    /// live (a delete-heavy load that never reaches the bound would otherwise
    /// grow the queues without end).
    fn tidy(&mut self, index: &Index) {
        if self.small.len() + self.main.len() <= 2 * index.len() + 1024 {
            return;
        }
        let valid = |main: bool| move |&h: &Handle| index.get(h).is_some_and(|e| e.in_main() == main);
        self.small.retain(valid(false));
        self.main.retain(valid(true));
        Self::fit(&mut self.small);
        Self::fit(&mut self.main);
    }

    /// Gives back a queue's room once it is four times what the queue holds
    /// (amortised: the next shrink needs the length to fall by half again),
    /// so a cache that evicted down to a lower cap does not keep the room of
    /// the bigger one counted against it.
    fn fit<T>(q: &mut VecDeque<T>) {
        if q.capacity() > 4 * q.len() + SLACK {
            q.shrink_to(2 * q.len());
        }
    }

    /// Makes room for one more handle in either queue now, so the room a
    /// write's handle needs is counted before the write is let in.
    pub(crate) fn reserve_one(&mut self) {
        self.small.reserve(1);
        self.main.reserve(1);
    }

    pub(crate) fn on_insert(&mut self, index: &mut Index, slot: u32, key_hash: u64) {
        self.tidy(index);
        let to_main = self.ghost_set.remove(&key_hash);
        let size = cost(index, slot);
        let e = index.entry_mut(slot);
        e.set_freq(0);
        e.set_in_main(to_main);
        let handle = index.handle(slot);
        if to_main {
            self.main.push_back(handle);
            self.main_bytes += size;
        } else {
            self.small.push_back(handle);
            self.small_bytes += size;
        }
    }

    pub(crate) fn on_access(index: &mut Index, slot: u32) {
        let e = index.entry_mut(slot);
        let f = e.freq();
        if f < 3 {
            e.set_freq(f + 1);
        }
    }

    /// The entry at `slot` changes size from `old` to `new` bytes (key+value).
    pub(crate) fn on_resize(&mut self, index: &Index, slot: u32, old: usize, new: usize) {
        let bytes = if index.entry(slot).in_main() { &mut self.main_bytes } else { &mut self.small_bytes };
        *bytes = (*bytes + new).saturating_sub(old);
    }

    /// Called before the entry at `slot` leaves the index.
    pub(crate) fn on_remove(&mut self, index: &Index, slot: u32) {
        let size = cost(index, slot);
        if index.entry(slot).in_main() {
            self.main_bytes = self.main_bytes.saturating_sub(size);
        } else {
            self.small_bytes = self.small_bytes.saturating_sub(size);
        }
    }

    /// Chooses the next entry to evict (the caller removes it, after calling
    /// `on_remove`), or `None` when the queues are empty.
    pub(crate) fn victim(&mut self, index: &mut Index) -> Option<u32> {
        loop {
            let total = self.small_bytes + self.main_bytes;
            let from_small = !self.small.is_empty() && (self.small_bytes * 10 >= total || self.main.is_empty());
            if from_small {
                let handle = self.small.pop_front()?;
                Self::fit(&mut self.small);
                let Some(e) = index.get(handle) else { continue };
                let slot = handle.slot();
                if e.in_main() {
                    continue;
                }
                if e.freq() > 0 {
                    let size = cost(index, slot);
                    self.small_bytes = self.small_bytes.saturating_sub(size);
                    self.main_bytes += size;
                    let e = index.entry_mut(slot);
                    e.set_in_main(true);
                    e.set_freq(0);
                    self.main.push_back(handle);
                    continue;
                }
                let hash = index.hash(e.key());
                self.remember(hash, index.len());
                return Some(slot);
            }
            let handle = self.main.pop_front()?;
            Self::fit(&mut self.main);
            let Some(e) = index.get(handle) else { continue };
            let slot = handle.slot();
            if !e.in_main() {
                continue;
            }
            let f = e.freq();
            if f > 0 {
                index.entry_mut(slot).set_freq(f - 1);
                self.main.push_back(handle);
                continue;
            }
            return Some(slot);
        }
    }

    /// Keeps the hash of an evicted key, as many as the cache holds entries.
    /// The set's capacity follows its length down, so ghosts of a cache that
    /// shrank (a restart with a smaller cap) do not hold memory for good.
    fn remember(&mut self, hash: u64, entries: usize) {
        if self.ghost_set.insert(hash) {
            self.ghosts.push_back(hash);
        }
        while self.ghosts.len() > entries.max(1) {
            if let Some(old) = self.ghosts.pop_front() {
                self.ghost_set.remove(&old);
            }
        }
        if self.ghost_set.capacity() > 4 * self.ghost_set.len() + SLACK {
            self.ghost_set.shrink_to(2 * self.ghost_set.len());
        }
        Self::fit(&mut self.ghosts);
    }

    /// Drops every ghost (when their memory is all that keeps a write out).
    pub(crate) fn forget_ghosts(&mut self) {
        self.ghosts = VecDeque::new();
        self.ghost_set = HashSet::new();
    }
}
