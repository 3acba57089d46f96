//! The undo log: while a batch's records are being written, how to take back
//! each change the batch made, should the write fail.

use std::collections::BTreeMap;

use super::{Placed, State};
use crate::evict::S3Fifo;
use crate::index::{Index, Loc, blob_len};
use crate::record::{SegmentId, set_record_len};
use crate::timers::GroupTimers;

/// The inverse of one change, kept until the batch's write succeeds. Old
/// items are kept by their place in the arena (released, but left alone
/// until the next reclaim, which runs between batches), so keeping them
/// costs nothing.
pub(super) enum Undo {
    /// The key was absent (or held an expired entry): remove what is there.
    Remove(u32),
    /// The slot held this item, expiry and segment.
    Restore { slot: u32, loc: Loc, at: Placed },
    /// The key was removed: put it back.
    Reinsert { loc: Loc, at: Placed },
    /// The entry's expiry was this.
    Expiry { slot: u32, expires: u64 },
    /// Everything before a `clear`.
    Clear(Box<Cleared>),
}

pub(super) struct Cleared {
    pub(super) index: Index,
    pub(super) timers: GroupTimers,
    pub(super) live_by_segment: BTreeMap<SegmentId, u64>,
    pub(super) evict: Option<S3Fifo>,
}

impl State {
    /// Starts recording how to undo the changes of a batch.
    pub(crate) fn begin_batch(&mut self) {
        self.undo.get_or_insert_with(Vec::new).clear();
    }

    /// The batch is durable: forget how to undo it.
    pub(crate) fn commit_batch(&mut self) {
        if let Some(u) = &mut self.undo {
            u.clear();
        }
    }

    pub(super) fn log_undo(&mut self, u: Undo) {
        if let Some(log) = &mut self.undo {
            log.push(u);
        }
    }

    /// The batch's write failed: take back its changes, newest first.
    pub(crate) fn rollback_batch(&mut self) {
        let Some(mut log) = self.undo.take() else { return };
        while let Some(u) = log.pop() {
            match u {
                Undo::Remove(slot) => {
                    self.remove(slot);
                }
                Undo::Restore { slot, loc, at: Placed { expires, segment, encoding } } => {
                    let e = self.index.entry(slot);
                    let (cur_len, cur_segment, cur_blob) =
                        (set_record_len(e.key().len(), e.value().len()), e.segment(), e.blob_len());
                    let (key, value) = self.index.item(loc);
                    let (old_len, old_blob) = (set_record_len(key.len(), value.len()), blob_len(key, value));
                    if let Some(ev) = &mut self.evict {
                        ev.on_resize(&self.index, slot, cur_blob, old_blob);
                    }
                    self.unaccount(cur_segment, cur_len);
                    self.index.revive(loc);
                    self.index.swap_item(slot, loc);
                    self.index.set_segment(slot, segment);
                    let e = self.index.entry_mut(slot);
                    e.set_expires(expires);
                    e.set_encoding(encoding);
                    *self.live_by_segment.entry(segment).or_default() += old_len as u64;
                    self.timers.arm(slot, expires);
                }
                Undo::Reinsert { loc, at: Placed { expires, segment, encoding } } => {
                    let (key, value) = self.index.item(loc);
                    let len = set_record_len(key.len(), value.len());
                    let slot = self.index.insert_item(loc, expires, segment);
                    self.index.entry_mut(slot).set_encoding(encoding);
                    *self.live_by_segment.entry(segment).or_default() += len as u64;
                    self.timers.arm(slot, expires);
                    if let Some(ev) = &mut self.evict {
                        let hash = self.index.hash(self.index.entry(slot).key());
                        ev.on_insert(&mut self.index, slot, hash);
                    }
                }
                Undo::Expiry { slot, expires } => {
                    self.index.entry_mut(slot).set_expires(expires);
                    self.timers.arm(slot, expires);
                }
                Undo::Clear(c) => {
                    let c = *c;
                    self.index = c.index;
                    self.timers = c.timers;
                    self.live_by_segment = c.live_by_segment;
                    self.evict = c.evict;
                }
            }
        }
        log.clear();
        self.undo = Some(log);
    }
}
