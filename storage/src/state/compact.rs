//! Compaction's side of the core: moving live entries' set records out of
//! old segments in bounded slices, and forgetting segments that left the log.

use super::{Sink, State};
use crate::index::EPOCHS;
use crate::record::{Record, SegmentId, set_record_len};

impl State {
    /// A compaction starts: the writer has just rolled to a new segment,
    /// the cutoff, and every set record from now on is written in a new
    /// epoch. Entries of the old epoch have their records below the cutoff.
    pub(crate) fn begin_compaction(&mut self) {
        self.epoch = (self.epoch + 1) % EPOCHS;
    }

    /// One slice of compaction: re-appends a set (same key, value and absolute
    /// expiry) for each live entry whose record was written before the
    /// compaction began (in an older epoch, so in a segment below the
    /// cutoff), visiting at most `budget` slots from `cursor` and stopping
    /// after `max_bytes` of records. Returns the next cursor, or `None` when
    /// every slot has been visited. Entries written meanwhile are in the new
    /// epoch already. An expired entry of an older epoch is removed here
    /// (its record vanishes with its segment), so when the compaction ends
    /// every entry is of its epoch.
    pub(crate) fn compact_slice(
        &mut self,
        cursor: u32,
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
                && e.epoch() != self.epoch
            {
                if e.is_live_at(now) {
                    let (key, value, expires) = (e.key(), e.value(), e.expires());
                    let encoding = e.encoding();
                    let segment =
                        sink.append(&Record::Set { key, value, expires: crate::UnixMillis(expires), encoding });
                    // The same record, elsewhere: the live bytes do not change.
                    written += set_record_len(key.len(), value.len());
                    self.note_segment(segment);
                    self.index.set_epoch(slot, self.epoch);
                } else {
                    self.remove(slot);
                    self.stats.expired += 1;
                }
            }
            slot += 1;
        }
        (slot < self.index.slot_count()).then_some(slot)
    }

    /// Every live entry's set record now lives in `segment` (after a rewrite).
    pub(crate) fn move_all_to_segment(&mut self, segment: SegmentId) {
        let slots: Vec<u32> = self.index.iter().map(|(slot, _)| slot).collect();
        let mut live = 0u64;
        for slot in slots {
            let e = self.index.entry(slot);
            live += set_record_len(e.key().len(), e.value().len()) as u64;
            self.index.set_epoch(slot, self.epoch);
        }
        self.live_log_bytes = live;
        self.note_segment(segment);
    }

    /// Segments below `floor` have left the log, with the records of the
    /// entries evicted from them.
    pub(crate) fn forget_segments_below(&mut self, floor: SegmentId) {
        self.evicted_in = self.evicted_in.split_off(&floor);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Command, Limits, Sink};
    use crate::{NullSink, Ttl};

    /// The keys of the set records a compaction re-appends.
    #[derive(Default)]
    struct Rewritten(Vec<Vec<u8>>);

    impl Sink for Rewritten {
        fn append(&mut self, rec: &Record<'_>) -> SegmentId {
            if let Record::Set { key, .. } = rec {
                self.0.push(key.to_vec());
            }
            SegmentId(7)
        }
    }

    fn set(state: &mut State, key: &str, ttl: Ttl, now: u64) {
        let cmd = Command::Set { key: key.into(), value: b"v".to_vec(), ttl };
        state.apply(&cmd, now, &mut NullSink).unwrap();
    }

    /// Over more compactions than there are epochs, each rewrites exactly
    /// the entries written before it began that are still live: not those
    /// written while it runs, not expired ones (which it removes, though
    /// nothing expired them before), and not one twice. Without the
    /// removal, an entry expired in epoch 0 would look current again four
    /// compactions later; without the new epoch, nothing would be rewritten.
    #[test]
    fn each_compaction_rewrites_the_live_entries_written_before_it_once() {
        let mut now = 1_700_000_000_000;
        let mut state = State::new(Limits::default(), now);
        for i in 0..300u64 {
            let ttl = if i % 3 == 0 { Ttl::Millis(1000 * (i % 7 + 1)) } else { Ttl::Never };
            set(&mut state, &format!("k{i:03}"), ttl, now);
        }
        for round in 0..2 * EPOCHS + 1 {
            set(&mut state, &format!("before{round}"), Ttl::Never, now);
            let mut expected: Vec<Vec<u8>> = state.entries(now).map(|(k, _, _)| k.to_vec()).collect();
            expected.sort();
            state.begin_compaction();
            let mut sink = Rewritten::default();
            let mut cursor = Some(0);
            let mut slices = 0;
            while let Some(c) = cursor {
                cursor = state.compact_slice(c, 40, usize::MAX, now, &mut sink);
                if slices == 2 {
                    set(&mut state, &format!("during{round}"), Ttl::Never, now);
                }
                slices += 1;
            }
            sink.0.sort();
            assert_eq!(sink.0, expected, "round {round}");
            assert!(state.index.iter().all(|(_, e)| e.epoch() == state.epoch), "every entry is of the new epoch");
            now += 1500;
        }
        assert_eq!(state.len(), 200 + 2 * (2 * EPOCHS as usize + 1), "only the entries with deadlines expired");
    }
}
