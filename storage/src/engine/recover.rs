//! Recovery from a failed write or sync: rewrite the live data from memory
//! into a fresh segment, or refuse writes (serving reads) and retry with
//! backoff.

use std::time::{Duration, Instant};

use super::writer::Writer;
use crate::error::{Error, Result};
use crate::record::{self, Record, Seq};
use crate::segment::{ActiveSegment, list_segments, sync_dir};

/// The log cannot be written: writes are refused, reads served, and the
/// rewrite that brings it back is retried with exponential backoff.
pub(super) struct Unavailable {
    pub(super) cause: String,
    pub(super) next_try: Instant,
    backoff: Duration,
}

impl Writer {
    /// A write or sync failed. The file may hold part of the batch and the
    /// kernel may have dropped dirty pages, so neither the file nor fsync on
    /// it is trusted again: start a fresh segment, rewrite every live entry
    /// from memory into it, make it the floor and drop the rest. If that fails
    /// too, refuse writes until a retry succeeds.
    pub(super) fn recover(&mut self, cause: &str) {
        match self.rewrite_from_memory() {
            Ok(()) => {
                tracing::warn!(
                    "recovered from a failed write by rewriting live data to {}",
                    self.active.path.display()
                );
                self.unavailable = None;
            }
            Err(e) => {
                let backoff = self
                    .unavailable
                    .as_ref()
                    .map_or(Duration::from_millis(250), |u| (u.backoff * 2).min(Duration::from_secs(30)));
                tracing::error!(
                    "storage unavailable, writes refused (reads still served) until the disk recovers: {cause}; \
                     rewriting live data failed too: {e}; retrying in {backoff:?}"
                );
                let cause = match &self.unavailable {
                    Some(u) => u.cause.clone(),
                    None => format!("{cause}; then: {e}"),
                };
                self.unavailable = Some(Unavailable { cause, next_try: Instant::now() + backoff, backoff });
            }
        }
    }

    fn rewrite_from_memory(&mut self) -> Result<()> {
        self.join_finisher();
        self.compactor.running = None;
        let existing = list_segments(&self.dir)?;
        let id = existing.last().map_or(self.active.id, |l| (*l).max(self.active.id)).next()?;
        let first_seq = self.next_seq;
        let mut seg = self.new_segment(id)?;
        match self.write_live_entries(&mut seg) {
            Ok(written) => {
                self.state.move_all_to_segment(id);
                self.active = seg;
                self.log_bytes = written;
                self.durability.dirty = false;
                self.durability.last_sync = Instant::now();
                self.drop_below(id, first_seq)
            }
            Err(e) => {
                // Leave nothing half-written behind, and reuse the sequence
                // numbers: the next attempt starts from the same place.
                self.next_seq = first_seq;
                if let Err(rm) = std::fs::remove_file(&seg.path) {
                    tracing::warn!("could not remove the failed rewrite {}: {rm}", seg.path.display());
                } else {
                    let _ = sync_dir(&self.dir);
                    let _ = self.manifest.update(|m| m.newest = self.active.id);
                }
                Err(e)
            }
        }
    }

    /// Writes a set record for every live entry into `seg` and syncs it;
    /// returns the segment's length.
    fn write_live_entries(&mut self, seg: &mut ActiveSegment) -> Result<u64> {
        let now = self.clock.now().0;
        let mut buf = Vec::with_capacity(1 << 20);
        let mut written = seg.len;
        for (key, value, expires, encoding) in self.state.live_records(now) {
            record::encode(
                &mut buf,
                seg.id,
                Seq(self.next_seq),
                &Record::Set { key, value, expires: crate::UnixMillis(expires), encoding },
            );
            self.next_seq += 1;
            if buf.len() >= 1 << 20 {
                seg.append(&buf).map_err(Error::io("rewriting live data to", &seg.path))?;
                written += buf.len() as u64;
                buf.clear();
            }
        }
        seg.append(&buf).map_err(Error::io("rewriting live data to", &seg.path))?;
        written += buf.len() as u64;
        seg.sync().map_err(Error::io("syncing", &seg.path))?;
        Ok(written)
    }
}
