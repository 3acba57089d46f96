//! Compaction's side of the core: moving live entries' set records out of
//! old segments in bounded slices, and forgetting segments that left the log.

use super::{Sink, State};
use crate::record::{Record, SegmentId, set_record_len};

impl State {
    /// One slice of compaction: re-appends a set (same key, value and absolute
    /// expiry) for each live entry whose record sits in a segment below
    /// `cutoff`, visiting at most `budget` slots from `cursor` and stopping
    /// after `max_bytes` of records. Returns the next cursor, or `None` when
    /// every slot has been visited. Entries written meanwhile already live at
    /// or above `cutoff`; expired ones are left to vanish with their segment.
    pub(crate) fn compact_slice(
        &mut self,
        cursor: u32,
        cutoff: SegmentId,
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
                && e.segment() < cutoff
                && e.is_live_at(now)
            {
                let (key, value, expires) = (e.key(), e.value(), e.expires());
                let len = set_record_len(key.len(), value.len());
                let old = e.segment();
                let encoding = e.encoding();
                let segment = sink.append(&Record::Set { key, value, expires: crate::UnixMillis(expires), encoding });
                written += len;
                self.unaccount(old, len);
                *self.live_by_segment.entry(segment).or_default() += len as u64;
                self.index.set_segment(slot, segment);
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
            self.index.set_segment(slot, segment);
        }
        self.live_by_segment.clear();
        if live > 0 {
            self.live_by_segment.insert(segment, live);
        }
    }

    /// Segments below `floor` have left the log, with the records of the
    /// entries evicted from them.
    pub(crate) fn forget_segments_below(&mut self, floor: SegmentId) {
        self.evicted_in = self.evicted_in.split_off(&floor);
    }
}
