//! A hierarchical timing wheel for expiry deadlines, shaped like tokio's.
//!
//! Six levels of 64 slots at 1 ms resolution. Level `n` slots are `64^n` ms
//! wide, so level 0 spans 64 ms and level 5 spans `64^6` ms (about 795 days);
//! deadlines beyond that go to the top level and are re-inserted when their
//! slot comes round. An item lives in the level given by the highest bit in
//! which its deadline differs from the wheel's current time (`elapsed`),
//! divided by 6, and in the slot given by the deadline's 6-bit digit at that
//! level. Each level keeps a bitmap of occupied slots, so finding the next
//! deadline is a rotate and a `trailing_zeros` per level.
//!
//! Cancelling is lazy: items carry no deadline. When a slot is due, the
//! caller's `deadline_of` looks each item up; `None` (the entry is gone or its
//! generation moved on) drops it, a deadline not yet due re-inserts it lower
//! down, and the rest are handed out as due.

const LEVELS: usize = 6;
const SLOTS: usize = 64;
const SLOT_BITS: u32 = 6;
/// One full turn of the top level, in ms.
const MAX_SPAN: u64 = 1 << (SLOT_BITS as u64 * LEVELS as u64);

struct Level<T> {
    occupied: u64,
    slots: Vec<Vec<T>>,
}

pub struct Wheel<T> {
    /// The wheel's notion of now: every slot before it has been processed.
    elapsed: u64,
    levels: Vec<Level<T>>,
    /// Items inserted with a deadline already reached.
    overdue: Vec<T>,
    len: usize,
}

impl<T> Wheel<T> {
    pub fn new(start_ms: u64) -> Wheel<T> {
        let levels =
            (0..LEVELS).map(|_| Level { occupied: 0, slots: (0..SLOTS).map(|_| Vec::new()).collect() }).collect();
        Wheel { elapsed: start_ms, levels, overdue: Vec::new(), len: 0 }
    }

    /// Items held, including stale ones not yet dropped.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn insert(&mut self, when_ms: u64, item: T) {
        self.len += 1;
        if when_ms <= self.elapsed {
            self.overdue.push(item);
            return;
        }
        let level = level_for(self.elapsed, when_ms);
        let slot = slot_for(when_ms, level);
        debug_assert!(level < LEVELS && slot < SLOTS);
        let lvl = &mut self.levels[level];
        lvl.slots[slot].push(item);
        lvl.occupied |= 1 << slot;
    }

    /// The earliest time a slot becomes due, if any item is held; the engine
    /// sleeps until then.
    pub fn next_deadline(&self) -> Option<u64> {
        if !self.overdue.is_empty() {
            return Some(self.elapsed);
        }
        (0..LEVELS).find_map(|level| self.next_expiration(level).map(|(_, d)| d))
    }

    /// Moves every item due at `now` into `out`. `deadline_of` gives an item's
    /// current deadline, or `None` if it was cancelled.
    pub fn poll(&mut self, now: u64, mut deadline_of: impl FnMut(&T) -> Option<u64>, out: &mut Vec<T>) {
        for item in std::mem::take(&mut self.overdue) {
            self.len -= 1;
            if deadline_of(&item).is_some() {
                out.push(item);
            }
        }
        loop {
            let next = (0..LEVELS).find_map(|level| self.next_expiration(level).map(|(slot, d)| (level, slot, d)));
            let Some((level, slot, deadline)) = next else { break };
            if deadline > now {
                break;
            }
            let lvl = &mut self.levels[level];
            lvl.occupied &= !(1 << slot);
            let items = std::mem::take(&mut lvl.slots[slot]);
            self.elapsed = deadline;
            for item in items {
                self.len -= 1;
                match deadline_of(&item) {
                    None => {}
                    Some(when) if when <= now => out.push(item),
                    Some(when) => self.insert(when, item),
                }
            }
        }
        self.elapsed = self.elapsed.max(now);
    }

    /// The next occupied slot of `level` at or after `elapsed`, and the time it is due.
    fn next_expiration(&self, level: usize) -> Option<(usize, u64)> {
        let lvl = &self.levels[level];
        if lvl.occupied == 0 {
            return None;
        }
        let now_slot = slot_for(self.elapsed, level) as u32;
        // The first occupied slot at or after `now_slot`, going round.
        let slot = ((lvl.occupied.rotate_right(now_slot).trailing_zeros() + now_slot) % SLOTS as u32) as usize;
        let level_start = self.elapsed & !(level_range(level) - 1);
        let mut deadline = level_start + slot as u64 * slot_range(level);
        if deadline <= self.elapsed {
            // Only the top level wraps: its slots hold deadlines more than one
            // turn away, which come round again a turn later.
            debug_assert_eq!(level, LEVELS - 1, "a lower level's occupied slot lies behind `elapsed`");
            deadline += level_range(level);
        }
        Some((slot, deadline))
    }
}

/// The level a deadline `when` goes to, seen from `elapsed`: the level of
/// the highest 6-bit digit in which the two differ. Deadlines in the same
/// 64 ms window as `elapsed` (only the lowest digit differs, or none) go to
/// level 0; beyond the top level's span they go to the top level (and come
/// round again when their slot does).
fn level_for(elapsed: u64, when: u64) -> usize {
    // Or-ing in the lowest digit makes "no difference" land on level 0.
    let masked = ((elapsed ^ when) | (SLOTS as u64 - 1)).min(MAX_SPAN - 1);
    let significant = 63 - masked.leading_zeros();
    (significant / SLOT_BITS) as usize
}

/// The slot of time `t` at `level`: its 6-bit digit at that level.
fn slot_for(t: u64, level: usize) -> usize {
    ((t >> (level as u32 * SLOT_BITS)) & (SLOTS as u64 - 1)) as usize
}

/// How many ms one slot of `level` covers: `64^level`.
fn slot_range(level: usize) -> u64 {
    1 << (level as u32 * SLOT_BITS)
}

/// How many ms all 64 slots of `level` cover: `64^(level + 1)`.
fn level_range(level: usize) -> u64 {
    slot_range(level) << SLOT_BITS
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[test]
    fn levels_at_their_boundaries() {
        // From 0: within the first 64 ms is level 0; 64 ms starts level 1;
        // 64^2 starts level 2; and so on; past the top level's span it stays
        // at the top level.
        assert_eq!(level_for(0, 0), 0);
        assert_eq!(level_for(0, 63), 0);
        assert_eq!(level_for(0, 64), 1);
        assert_eq!(level_for(0, 64 * 64 - 1), 1);
        assert_eq!(level_for(0, 64 * 64), 2);
        assert_eq!(level_for(0, MAX_SPAN - 1), LEVELS - 1);
        assert_eq!(level_for(0, MAX_SPAN * 7), LEVELS - 1);
        // It is the highest differing digit that counts, not the distance:
        // 63 -> 64 is 1 ms but crosses a level-0 window.
        assert_eq!(level_for(63, 64), 1);
        assert_eq!(level_for(64, 127), 0);
    }

    #[test]
    fn slots_and_ranges() {
        assert_eq!((slot_range(0), level_range(0)), (1, 64));
        assert_eq!((slot_range(1), level_range(1)), (64, 64 * 64));
        assert_eq!(level_range(LEVELS - 1), MAX_SPAN);
        assert_eq!(slot_for(63, 0), 63);
        assert_eq!(slot_for(64, 0), 0);
        assert_eq!(slot_for(64, 1), 1);
        assert_eq!(slot_for(64 * 64 * 5 + 64 * 3 + 2, 1), 3);
        assert_eq!(slot_for(64 * 64 * 5 + 64 * 3 + 2, 2), 5);
    }

    #[test]
    fn fires_at_the_deadline_not_before() {
        let mut w = Wheel::new(1000);
        w.insert(1100, 1u32);
        w.insert(1000 + 64 * 64 * 3 + 5, 2);
        let dl = |i: &u32| Some(if *i == 1 { 1100 } else { 1000 + 64 * 64 * 3 + 5 });
        let mut out = vec![];
        w.poll(1099, dl, &mut out);
        assert!(out.is_empty());
        assert_eq!(w.next_deadline().map(|d| d <= 1100), Some(true));
        w.poll(1100, dl, &mut out);
        assert_eq!(out, vec![1]);
        out.clear();
        w.poll(1000 + 64 * 64 * 3 + 4, dl, &mut out);
        assert!(out.is_empty());
        w.poll(1000 + 64 * 64 * 3 + 5, dl, &mut out);
        assert_eq!(out, vec![2]);
        assert!(w.is_empty());
    }

    #[test]
    fn deadlines_beyond_the_top_level_come_round() {
        let mut w = Wheel::new(0);
        let far = MAX_SPAN * 3 + 12345;
        w.insert(far, 9u8);
        let mut out = vec![];
        w.poll(far - 1, |_| Some(far), &mut out);
        assert!(out.is_empty());
        w.poll(far, |_| Some(far), &mut out);
        assert_eq!(out, vec![9]);
    }

    #[test]
    fn cancelled_items_are_dropped() {
        let mut w = Wheel::new(0);
        w.insert(10, 1u8);
        w.insert(5, 2u8);
        let mut out = vec![];
        w.poll(100, |i| (*i == 2).then_some(5), &mut out);
        assert_eq!(out, vec![2]);
        assert!(w.is_empty());
    }

    proptest! {
        #[test]
        fn matches_a_sorted_model(
            start in 0u64..1 << 40,
            deadlines in prop::collection::vec(0u64..1 << 32, 1..200),
            steps in prop::collection::vec(0u64..1 << 30, 1..50),
        ) {
            let mut w = Wheel::new(start);
            let mut when: HashMap<usize, u64> = HashMap::new();
            for (i, d) in deadlines.iter().enumerate() {
                w.insert(start + d, i);
                when.insert(i, start + d);
            }
            let mut now = start;
            let mut fired = std::collections::HashSet::new();
            for s in steps.iter().chain(std::iter::once(&(1u64 << 33))) {
                now += s;
                let mut out = vec![];
                w.poll(now, |i| when.get(i).copied(), &mut out);
                for i in out {
                    prop_assert!(when[&i] <= now, "fired early");
                    prop_assert!(fired.insert(i), "fired twice");
                }
                for (i, d) in &when {
                    if *d <= now {
                        prop_assert!(fired.contains(i), "item {} due at {} not fired at {}", i, d, now);
                    }
                }
                if let Some(next) = w.next_deadline() {
                    prop_assert!(when.iter().filter(|(i, _)| !fired.contains(i)).all(|(_, d)| *d >= next));
                }
            }
        }
    }
}
