//! Applying records read back from the log at start-up, and the step that
//! ends replay.

use super::{Placed, PutMode, State};
use crate::record::{Record, SegmentId};
use crate::timers::GroupTimers;

impl State {
    /// Applies one record read back from the log. Every record applies,
    /// whatever its deadline: a set whose deadline has passed still replaces
    /// the older value (so that cannot come back), and a later touch may have
    /// extended it while it was live. What is expired at the end of replay is
    /// dropped by `finish_replay`.
    ///
    /// `hash` is a set's key's hash if the caller has it (see
    /// [`State::hasher`]).
    pub(crate) fn replay(&mut self, rec: &Record<'_>, segment: SegmentId, now: u64, hash: Option<u64>) {
        match *rec {
            Record::Set { key, value, expires, encoding } => {
                let hash = hash.unwrap_or_else(|| self.index.hash(key));
                self.put(key, value, Placed { expires: expires.0, segment, encoding }, PutMode::Replay { hash });
                // The caps hold as replay goes, so a log larger than
                // max_memory never has to fit in memory whole; and the
                // items overwritten are reclaimed as it goes, for the same
                // reason.
                self.enforce_caps();
                self.index.reclaim_step();
            }
            Record::Delete { key } => {
                if let Some(slot) = self.index.find(key) {
                    self.remove(slot);
                }
            }
            Record::Touch { key, expires } => {
                if let Some(slot) = self.index.find(key) {
                    self.retime(slot, expires.0);
                }
            }
            Record::Clear => self.clear(now),
            Record::ClearPrefix { prefix } => self.remove_matching(|key| key.starts_with(prefix), false),
            Record::ClearDb { db } => self.remove_matching(|key| crate::keyspace::db_of(key).0 == db, false),
        }
    }

    /// Replay's look-ahead: a set of a key with this hash comes a few
    /// records later.
    pub(crate) fn prefetch(&self, hash: u64) {
        self.index.prefetch(hash);
    }

    /// How the index hashes keys, for a thread that hashes replay's keys
    /// beside the one applying them.
    pub(crate) fn hasher(&self) -> &hashbrown::DefaultHashBuilder {
        self.index.hasher()
    }

    /// After replay: drop what expired during it and arm the expiry timers
    /// (one per group of slots, at its earliest deadline).
    pub(crate) fn finish_replay(&mut self, now: u64) {
        self.timers = GroupTimers::new(now);
        let mut expired = Vec::new();
        for (slot, at) in self.index.deadlines() {
            if at != 0 {
                if at <= now {
                    expired.push(slot);
                } else {
                    self.timers.arm(slot, at);
                }
            }
        }
        self.stats.expired += expired.len() as u64;
        for slot in expired {
            self.remove(slot);
        }
        // The caps hold after a restart too (with a smaller max_memory, say).
        if !self.enforce_caps() {
            tracing::warn!(
                entries = self.index.len(),
                memory = self.memory_bytes(),
                "the log holds more than max_memory/max_entries allow and the eviction policy is noeviction: \
                 writes will get 'cache full' until keys are deleted or expire"
            );
        }
    }
}
