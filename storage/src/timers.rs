//! Expiry timers for groups of slab slots, not for single entries.
//!
//! The slab's slots are taken in groups of [`GROUP_SLOTS`] (64). A group
//! has at most one live timer, armed at the earliest deadline among its
//! entries (or earlier: removals and longer deadlines do not move it).
//! When it fires, the state scans the group's slab entries (1 KiB, read
//! in order), removes those due and arms the group again at the earliest
//! deadline left. So an entry with a TTL costs no timer of its own: a
//! per-entry timer was a 6-byte handle in a wheel slot's `Vec`, 6.3 bytes
//! an entry at 1M entries; a group's timer and deadline take 24 bytes per
//! 64 slots, 0.4 bytes an entry. Removal is as exact as before (an entry
//! goes when its group is scanned at its deadline), and a read never needs
//! the timer: it checks the deadline itself.
//!
//! The price is the scan: a group fires once per distinct earliest
//! deadline, and each firing reads its 64 entries. With deadlines spread
//! over 300 s (Django's default on every key), about one entry is due per
//! firing: expiring 1M entries took 0.36 s against the per-entry wheel's
//! 0.34 s (`cargo bench -p cachet-benches --bench engine -- expiry`; a
//! group's 64 entries are 1 KiB, aligned to cache lines). With 18-byte
//! entries it took 0.64 s, and groups of 256 slots 0.93 s (for 0.3 bytes
//! an entry less).
//!
//! The timers sit in the hierarchical [`Wheel`]. A timer carries the
//! deadline it was armed for; `armed` keeps each group's current one, and a
//! timer that no longer matches it is stale and dropped when polled.

use std::collections::VecDeque;

use crate::wheel::Wheel;

/// Bits of a slot number that pick its place in a group.
const GROUP_BITS: u32 = 6;
/// Slots in a group.
pub(crate) const GROUP_SLOTS: u32 = 1 << GROUP_BITS;

/// A group's timer: the group and the deadline it was armed for.
#[derive(Clone, Copy, Debug)]
struct GroupTimer {
    group: u32,
    at: u64,
}

pub(crate) struct GroupTimers {
    wheel: Wheel<GroupTimer>,
    /// Per group, the deadline its live timer fires at; 0 if it has none.
    armed: Vec<u64>,
    /// Groups whose timer fired, not yet scanned to the end.
    due: VecDeque<u32>,
}

impl GroupTimers {
    pub(crate) fn new(now: u64) -> GroupTimers {
        GroupTimers { wheel: Wheel::new(now), armed: Vec::new(), due: VecDeque::new() }
    }

    /// Timers in the wheel, stale ones included.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.wheel.len()
    }

    /// Makes sure the group of `slot` is scanned at or before `deadline`
    /// (unix ms; 0 means never and arms nothing). A group timer armed
    /// earlier is kept, so an overwrite-heavy load with the default TTL
    /// adds no timers at all.
    pub(crate) fn arm(&mut self, slot: u32, deadline: u64) {
        if deadline != 0 {
            self.arm_group(slot >> GROUP_BITS, deadline);
        }
    }

    fn arm_group(&mut self, group: u32, at: u64) {
        let g = group as usize;
        if g >= self.armed.len() {
            self.armed.resize(g + 1, 0);
        }
        if self.armed[g] == 0 || at < self.armed[g] {
            self.armed[g] = at;
            self.wheel.insert(at, GroupTimer { group, at });
        }
    }

    /// When a group is next due (0: one already is), if ever.
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        if self.due.is_empty() { self.wheel.next_deadline() } else { Some(0) }
    }

    /// The next group to scan at `now`, after moving the groups whose timer
    /// is due to the queue; it stays first until [`GroupTimers::scanned`].
    pub(crate) fn next_due(&mut self, now: u64) -> Option<u32> {
        if self.due.is_empty() {
            let armed = &self.armed;
            let mut fired = Vec::new();
            self.wheel.poll(now, |t: &GroupTimer| (armed[t.group as usize] == t.at).then_some(t.at), &mut fired);
            for t in fired {
                self.armed[t.group as usize] = 0;
                self.due.push_back(t.group);
            }
        }
        self.due.front().copied()
    }

    /// The first due group has been scanned; `next` is the earliest deadline
    /// left among its entries (0 for none).
    pub(crate) fn scanned(&mut self, next: u64) {
        let group = self.due.pop_front().expect("a group was due");
        if next != 0 {
            self.arm_group(group, next);
        }
    }
}

/// The slots of `group`, clipped to the `slots` that exist.
pub(crate) fn group_slots(group: u32, slots: u32) -> std::ops::Range<u32> {
    let start = group << GROUP_BITS;
    start.min(slots)..start.saturating_add(GROUP_SLOTS).min(slots)
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: u32 = GROUP_SLOTS;

    #[test]
    fn a_group_has_one_timer_at_its_earliest_deadline() {
        let mut t = GroupTimers::new(0);
        t.arm(3, 500);
        t.arm(G - 20, 900); // same group, later: nothing new
        t.arm(G - 1, 400); // same group, earlier: re-armed
        t.arm(G, 600); // the next group
        assert_eq!(t.len(), 3);
        // The wheel wakes at the start of the slot holding 400, or at 400.
        assert!(t.next_deadline().is_some_and(|at| at <= 400));
        assert_eq!(t.next_due(399), None);
        assert_eq!(t.next_due(400), Some(0));
        assert_eq!(t.next_deadline(), Some(0), "a due group is work now");
        t.scanned(900);
        // The stale timer at 500 is dropped; group 0 fires again at 900.
        assert_eq!(t.next_due(599), None);
        assert_eq!(t.next_due(600), Some(1));
        t.scanned(0);
        assert_eq!(t.next_due(899), None);
        assert_eq!(t.next_due(900), Some(0));
        t.scanned(0);
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn a_group_stays_due_until_scanned() {
        let mut t = GroupTimers::new(0);
        t.arm(0, 10);
        assert_eq!(t.next_due(10), Some(0));
        assert_eq!(t.next_due(11), Some(0), "a scan cut short resumes");
        // Armed again while waiting for its scan: the scan's own answer
        // still counts, and the earlier deadline wins.
        t.arm(1, 50);
        t.scanned(30);
        assert!(t.next_deadline().is_some_and(|at| at <= 30));
        assert_eq!(t.next_due(29), None);
        assert_eq!(t.next_due(30), Some(0));
    }

    #[test]
    fn group_slots_stop_at_the_slab_end() {
        assert_eq!(group_slots(0, 1000), 0..G);
        assert_eq!(group_slots(1, G + 5), G..G + 5);
        assert_eq!(group_slots(2, G + 5), G + 5..G + 5);
    }
}
