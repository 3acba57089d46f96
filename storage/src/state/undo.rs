//! The undo log: while a batch's records are being written, how to take back
//! each change the batch made, should the write fail.

use super::{State, Was};
use crate::evict::S3Fifo;
use crate::index::{Index, Loc, blob_len};
use crate::record::set_record_len;
use crate::timers::GroupTimers;

/// The inverse of one change, kept until the batch's write succeeds. Old
/// items are kept by their place in the arena (released, but left alone
/// until the next reclaim, which runs between batches), so keeping them
/// costs nothing.
pub(super) enum Undo {
    /// The key was absent (or held an expired entry): remove what is there.
    Remove(u32),
    /// The slot held this item (with its deadline), epoch and encoding.
    Restore { slot: u32, loc: Loc, was: Was },
    /// The key was removed: put it back.
    Reinsert { loc: Loc, was: Was },
    /// Everything before a `clear`.
    Clear(Box<Cleared>),
}

pub(super) struct Cleared {
    pub(super) index: Index,
    pub(super) timers: GroupTimers,
    pub(super) live_log_bytes: u64,
    pub(super) evict: Option<S3Fifo>,
}

impl State {
    /// Starts recording how to undo the changes of a batch.
    pub(crate) fn begin_batch(&mut self) {
        self.recording = true;
    }

    /// The batch is written: forget how to undo it, and stop recording
    /// (expiry between batches needs no undo).
    pub(crate) fn commit_batch(&mut self) {
        self.undo.clear();
        self.recording = false;
    }

    pub(super) fn log_undo(&mut self, u: Undo) {
        if self.recording {
            self.undo.push(u);
        }
    }

    /// The batch's write failed: take back its changes, newest first, and
    /// stop recording.
    pub(crate) fn rollback_batch(&mut self) {
        self.recording = false;
        let mut log = std::mem::take(&mut self.undo);
        while let Some(u) = log.pop() {
            match u {
                Undo::Remove(slot) => {
                    self.remove(slot);
                }
                Undo::Restore { slot, loc, was: Was { epoch, encoding } } => {
                    let e = self.index.entry(slot);
                    let (cur_len, cur_blob) = (set_record_len(e.key().len(), e.value().len()), e.blob_len());
                    let (key, value, expires) = self.index.item(loc);
                    let (old_len, old_blob) = (set_record_len(key.len(), value.len()), blob_len(key, value, expires));
                    if let Some(ev) = &mut self.evict {
                        ev.on_resize(&self.index, slot, cur_blob, old_blob);
                    }
                    self.unaccount(cur_len);
                    self.index.revive(loc);
                    self.index.swap_item(slot, loc);
                    self.index.set_epoch(slot, epoch);
                    self.index.entry_mut(slot).set_encoding(encoding);
                    self.live_log_bytes += old_len as u64;
                    self.timers.arm(slot, expires);
                }
                Undo::Reinsert { loc, was: Was { epoch, encoding } } => {
                    let (key, value, expires) = self.index.item(loc);
                    let len = set_record_len(key.len(), value.len());
                    let slot = self.index.insert_item(loc, epoch);
                    self.index.entry_mut(slot).set_encoding(encoding);
                    self.live_log_bytes += len as u64;
                    self.timers.arm(slot, expires);
                    if let Some(ev) = &mut self.evict {
                        let hash = self.index.hash(self.index.entry(slot).key());
                        ev.on_insert(&mut self.index, slot, hash);
                    }
                }
                Undo::Clear(c) => {
                    let c = *c;
                    self.index = c.index;
                    self.timers = c.timers;
                    self.live_log_bytes = c.live_log_bytes;
                    self.evict = c.evict;
                }
            }
        }
        self.undo = log;
    }
}
