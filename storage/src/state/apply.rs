//! The semantics of each command: `apply` and the operations it is built
//! from (get, set, delete, touch, incr, rename, clear).

use super::command::{ExpireWhen, Expiry, When};
use super::undo::{Cleared, Undo};
use super::{Command, Placed, PutMode, Reply, Sink, State, Was, decode_int};
use crate::Ttl;
use crate::error::{Error, Result};
use crate::evict::S3Fifo;
use crate::index::blob_len;
use crate::keyspace;
use crate::record::Encoding;
use crate::record::Record;
use crate::timers::GroupTimers;

impl State {
    /// Applies one command at time `now` (unix ms).
    pub(crate) fn apply(&mut self, cmd: &Command, now: u64, sink: &mut impl Sink) -> Result<Reply> {
        if let Command::Set { key, value, .. } = cmd
            && self.check_key(key).is_ok()
            && let Err(e) = self.check_value(value)
        {
            // Django's memcached rule: a value refused for its size removes
            // the old one, so a stale value is never served after a failed
            // write.
            self.delete(key, now, sink);
            return Err(e);
        }
        self.validate(cmd)?;
        Ok(match cmd {
            Command::Get { key } => Reply::Value(self.get(key, now)?),
            Command::GetWithTtl { key } => {
                let value = self.get(key, now)?;
                Reply::ValueWithTtl(value.map(|v| {
                    let expires = self.index.find(key).map_or(0, |slot| self.index.entry(slot).expires());
                    (v, Ttl::remaining(expires, now))
                }))
            }
            Command::GetMany { keys } => {
                // The reply's size is known before any of it is built (a key
                // named 4,000 times counts 4,000 times).
                let mut size = 0usize;
                for key in keys {
                    if let Some(slot) = self.live(key, now) {
                        size = size.saturating_add(self.index.entry(slot).value().len());
                    }
                }
                if size > self.reply_room {
                    return Err(Error::ReplyTooLarge { size, max: self.reply_room });
                }
                Reply::Values(keys.iter().map(|k| self.get(k, now)).collect::<Result<_>>()?)
            }
            Command::Set { key, value, ttl } => {
                self.set(key, value, *ttl, Encoding::MessagePack, now, sink)?;
                Reply::Done
            }
            Command::SetMany { items, ttl } => {
                let mut failed = Vec::new();
                for (i, (key, value)) in items.iter().enumerate() {
                    let stored = self.check_key(key).and_then(|()| match self.check_value(value) {
                        Ok(()) => self.set(key, value, *ttl, Encoding::MessagePack, now, sink),
                        Err(e) => {
                            // As for `Set`: the old value goes too.
                            self.delete(key, now, sink);
                            Err(e)
                        }
                    });
                    if stored.is_err() {
                        failed.push(i);
                    }
                }
                Reply::Failed(failed)
            }
            Command::Add { key, value, ttl } => {
                if self.live(key, now).is_some() {
                    Reply::Bool(false)
                } else {
                    self.set(key, value, *ttl, Encoding::MessagePack, now, sink)?;
                    Reply::Bool(true)
                }
            }
            Command::GetOrAdd { key, value, ttl } => match self.live(key, now) {
                Some(slot) => {
                    self.take_reply_room(self.index.entry(slot).value().len())?;
                    self.stats.hits += 1;
                    if self.evict.is_some() {
                        S3Fifo::on_access(&mut self.index, slot);
                    }
                    Reply::Value(Some(self.index.entry(slot).value().to_vec()))
                }
                None => {
                    self.take_reply_room(value.len())?;
                    self.stats.misses += 1;
                    self.set(key, value, *ttl, Encoding::MessagePack, now, sink)?;
                    Reply::Value(Some(value.clone()))
                }
            },
            Command::Delete { key } => Reply::Bool(self.delete(key, now, sink)),
            Command::DeleteMany { keys } => {
                for key in keys {
                    self.delete(key, now, sink);
                }
                Reply::Done
            }
            Command::Clear => {
                sink.append(&Record::Clear);
                self.clear(now);
                Reply::Done
            }
            Command::Touch { key, ttl } => Reply::Bool(self.touch(key, *ttl, now, sink)),
            Command::Incr { key, delta } => Reply::Int(self.incr(key, *delta, now, sink)?),
            Command::HasKey { key } => Reply::Bool(self.live(key, now).is_some()),
            Command::Rename { from, to } => {
                self.rename(from, to, now, sink)?;
                Reply::Done
            }
            Command::Stats => Reply::Stats(Box::new(self.stats())),
            Command::SetWith { key, value, expiry, when, get } => {
                let slot = self.live(key, now);
                let old = match (get, slot) {
                    (true, Some(slot)) => {
                        self.take_reply_room(self.index.entry(slot).value().len())?;
                        Some(self.index.entry(slot).value().to_vec())
                    }
                    _ => None,
                };
                let stored = match when {
                    When::Always => true,
                    When::Absent => slot.is_none(),
                    When::Present => slot.is_some(),
                };
                if stored {
                    let ttl = match expiry {
                        Expiry::Ttl(ttl) => *ttl,
                        Expiry::Keep => slot.map_or(Ttl::Never, |s| Ttl::remaining(self.index.entry(s).expires(), now)),
                    };
                    self.set(key, value, ttl, Encoding::Text, now, sink)?;
                }
                Reply::Swapped { stored, old }
            }
            Command::GetDel { key } => {
                let value = self.get(key, now)?;
                // Always through `delete`: an absent key may have been
                // evicted with its record still in the log, and the delete
                // must be on record or a restart brings it back.
                self.delete(key, now, sink);
                Reply::Value(value)
            }
            Command::Ttl { key } => {
                Reply::Ttl(self.live(key, now).map(|slot| Ttl::remaining(self.index.entry(slot).expires(), now)))
            }
            Command::Expire { key, ttl, when } => Reply::Bool(self.expire_if(key, *ttl, *when, now, sink)),
            Command::Persist { key } => match self.live(key, now) {
                Some(slot) if self.index.entry(slot).expires() != 0 => {
                    sink.append(&Record::Touch { key, expires: crate::UnixMillis(0) });
                    self.set_expiry(slot, 0);
                    Reply::Bool(true)
                }
                _ => Reply::Bool(false),
            },
            Command::IncrText { key, delta } => Reply::Int(self.incr_text(key, *delta, now, sink)?),
            Command::SetManyIfAbsent { items, ttl } => {
                if items.iter().any(|(key, _)| self.live(key, now).is_some()) {
                    Reply::Bool(false)
                } else {
                    for (key, value) in items {
                        self.set(key, value, *ttl, Encoding::Text, now, sink)?;
                    }
                    Reply::Bool(true)
                }
            }
            Command::Scan { cursor, count, pattern, db } => {
                let (next, keys) = self.scan(*cursor, *count, pattern.as_deref(), *db, now);
                self.take_reply_room(keys.iter().map(Vec::len).sum())?;
                Reply::Scan { next, keys }
            }
            Command::ClearPrefix { prefix } => {
                sink.append(&Record::ClearPrefix { prefix });
                self.remove_matching(|key| key.starts_with(prefix), true);
                Reply::Done
            }
            Command::ClearDb { db } => {
                sink.append(&Record::ClearDb { db: *db });
                self.remove_matching(|key| keyspace::db_of(key).0 == *db, true);
                Reply::Done
            }
            Command::SetCaps { max_memory, max_entries } => {
                self.set_caps(*max_memory, *max_entries, now);
                Reply::Done
            }
            Command::DbSizes => {
                let mut counts = vec![(0u64, 0u64); usize::from(keyspace::DATABASES)];
                for (_, e) in self.index.iter().filter(|(_, e)| e.is_live_at(now)) {
                    if let Some((keys, expiring)) = counts.get_mut(usize::from(keyspace::db_of(e.key()).0)) {
                        *keys += 1;
                        *expiring += u64::from(e.expires() != 0);
                    }
                }
                Reply::Counts(counts)
            }
        })
    }

    /// Removes every entry whose key matches (a clear of a prefix or a
    /// database); `logged` when a record says so and the batch may be undone.
    pub(super) fn remove_matching(&mut self, matches: impl Fn(&[u8]) -> bool, logged: bool) {
        let slots: Vec<u32> = self.index.iter().filter(|(_, e)| matches(e.key())).map(|(slot, _)| slot).collect();
        for slot in slots {
            if logged {
                self.remove_logged(slot);
            } else {
                self.remove(slot);
            }
        }
    }

    pub(super) fn get(&mut self, key: &[u8], now: u64) -> Result<Option<Vec<u8>>> {
        match self.live(key, now) {
            Some(slot) => {
                self.take_reply_room(self.index.entry(slot).value().len())?;
                self.stats.hits += 1;
                if self.evict.is_some() {
                    S3Fifo::on_access(&mut self.index, slot);
                }
                Ok(Some(self.index.entry(slot).value().to_vec()))
            }
            None => {
                self.stats.misses += 1;
                Ok(None)
            }
        }
    }

    pub(super) fn set(
        &mut self,
        key: &[u8],
        value: &[u8],
        ttl: Ttl,
        encoding: Encoding,
        now: u64,
        sink: &mut impl Sink,
    ) -> Result<()> {
        match ttl.deadline(now) {
            None => {
                // Django: a zero timeout stores nothing and drops the old value.
                if let Some(slot) = self.live(key, now) {
                    sink.append(&Record::Delete { key });
                    self.remove_logged(slot);
                } else if self.may_hold_evicted() {
                    sink.append(&Record::Delete { key });
                }
            }
            Some(expires) => {
                self.make_room(key, blob_len(key, value, expires), now)?;
                let segment = sink.append(&Record::Set { key, value, expires: crate::UnixMillis(expires), encoding });
                self.put(key, value, Placed { expires, segment, encoding }, PutMode::Live { now });
                self.stats.sets += 1;
            }
        }
        Ok(())
    }

    pub(super) fn delete(&mut self, key: &[u8], now: u64, sink: &mut impl Sink) -> bool {
        match self.live(key, now) {
            Some(slot) => {
                sink.append(&Record::Delete { key });
                self.remove_logged(slot);
                self.stats.deletes += 1;
                true
            }
            None => {
                // The key may have been evicted with its set record still in
                // the log: the delete must be on record, or a restart would
                // bring the old value back.
                if self.may_hold_evicted() {
                    sink.append(&Record::Delete { key });
                }
                false
            }
        }
    }

    pub(super) fn clear(&mut self, now: u64) {
        // Every record before a clear is void, evicted ones included.
        self.evicted_in.clear();
        let fresh_evict = self.evict.as_ref().map(|_| S3Fifo::default());
        let fresh_index = self.index.new_like();
        let before = Cleared {
            index: std::mem::replace(&mut self.index, fresh_index),
            timers: std::mem::replace(&mut self.timers, GroupTimers::new(now)),
            live_log_bytes: std::mem::take(&mut self.live_log_bytes),
            evict: std::mem::replace(&mut self.evict, fresh_evict),
        };
        if self.recording {
            self.log_undo(Undo::Clear(Box::new(before)));
        }
    }

    pub(super) fn touch(&mut self, key: &[u8], ttl: Ttl, now: u64, sink: &mut impl Sink) -> bool {
        let Some(slot) = self.live(key, now) else { return false };
        match ttl.deadline(now) {
            None => {
                sink.append(&Record::Delete { key });
                self.remove_logged(slot);
            }
            Some(expires) => {
                sink.append(&Record::Touch { key, expires: crate::UnixMillis(expires) });
                self.set_expiry(slot, expires);
            }
        }
        true
    }

    /// Gives the entry at `slot` a new deadline (0 for none): a new item,
    /// so the undo log keeps the old one by its place.
    pub(super) fn set_expiry(&mut self, slot: u32, expires: u64) {
        let e = self.index.entry(slot);
        let was = Was { epoch: e.epoch(), encoding: e.encoding() };
        let loc = self.retime(slot, expires);
        self.log_undo(Undo::Restore { slot, loc, was });
        self.timers.arm(slot, expires);
    }

    pub(super) fn incr(&mut self, key: &[u8], delta: i64, now: u64, sink: &mut impl Sink) -> Result<i64> {
        let slot = self.live(key, now).ok_or(Error::NotFound)?;
        let e = self.index.entry(slot);
        if e.encoding() != Encoding::MessagePack {
            // Text written through RESP: its bytes are no MessagePack integer.
            return Err(Error::NotAnInteger);
        }
        let current = decode_int(e.value())?;
        let next = current.checked_add(delta).ok_or(Error::Overflow)?;
        let mut value = Vec::with_capacity(9);
        rmp::encode::write_sint(&mut value, next).expect("writing to a Vec cannot fail");
        let (expires, encoding) = (e.expires(), Encoding::MessagePack);
        let segment = sink.append(&Record::Set { key, value: &value, expires: crate::UnixMillis(expires), encoding });
        self.put(key, &value, Placed { expires, segment, encoding }, PutMode::Live { now });
        Ok(next)
    }

    /// Redis's `INCRBY`: the value is decimal text; a missing key counts
    /// from 0 and is stored without an expiry.
    fn incr_text(&mut self, key: &[u8], delta: i64, now: u64, sink: &mut impl Sink) -> Result<i64> {
        let Some(slot) = self.live(key, now) else {
            self.set(key, delta.to_string().as_bytes(), Ttl::Never, Encoding::Text, now, sink)?;
            return Ok(delta);
        };
        let e = self.index.entry(slot);
        if e.encoding() != Encoding::Text {
            // Written by the Rust client: MessagePack, whatever its bytes look like.
            return Err(Error::NotAnInteger);
        }
        let current = decode_decimal(e.value())?;
        let next = current.checked_add(delta).ok_or(Error::Overflow)?;
        let value = next.to_string().into_bytes();
        let (expires, encoding) = (e.expires(), Encoding::Text);
        let segment = sink.append(&Record::Set { key, value: &value, expires: crate::UnixMillis(expires), encoding });
        self.put(key, &value, Placed { expires, segment, encoding }, PutMode::Live { now });
        Ok(next)
    }

    /// Redis's `EXPIRE` with `NX|XX|GT|LT`; whether the TTL was applied.
    fn expire_if(&mut self, key: &[u8], ttl: Ttl, when: ExpireWhen, now: u64, sink: &mut impl Sink) -> bool {
        let Some(slot) = self.live(key, now) else { return false };
        // Deadlines compared as Redis does: no expiry is "never" (the
        // latest), a time already past is the earliest.
        let never = u64::MAX;
        let current = match self.index.entry(slot).expires() {
            0 => never,
            t => t,
        };
        let new = match ttl.deadline(now) {
            None => 0,
            Some(0) => never,
            Some(t) => t,
        };
        let applies = match when {
            ExpireWhen::Always => true,
            ExpireWhen::NoExpiry => current == never,
            ExpireWhen::HasExpiry => current != never,
            ExpireWhen::Later => new > current,
            ExpireWhen::Sooner => new < current,
        };
        applies && self.touch(key, ttl, now, sink)
    }

    pub(super) fn rename(&mut self, from: &[u8], to: &[u8], now: u64, sink: &mut impl Sink) -> Result<()> {
        let slot = self.live(from, now).ok_or(Error::NotFound)?;
        if from == to {
            return Ok(());
        }
        let e = self.index.entry(slot);
        let (value, expires, encoding) = (e.value().to_vec(), e.expires(), e.encoding());
        self.make_room(to, blob_len(to, &value, expires), now)?;
        if self.index.find(from).is_none() {
            // Making room evicted the value being moved.
            return Err(Error::NotFound);
        }
        // The new key is written before the old one is deleted: a torn batch
        // then leaves a duplicate, never a loss.
        let segment =
            sink.append(&Record::Set { key: to, value: &value, expires: crate::UnixMillis(expires), encoding });
        self.put(to, &value, Placed { expires, segment, encoding }, PutMode::Live { now });
        sink.append(&Record::Delete { key: from });
        let slot = self.index.find(from).expect("renamed key still present");
        self.remove_logged(slot);
        Ok(())
    }
}

/// Reads a counter kept as decimal text, as Redis's `string2ll` does: an
/// optional `-`, digits without leading zeros, within 64 bits; nothing else
/// (no `+`, no spaces, no `-0`).
fn decode_decimal(value: &[u8]) -> Result<i64> {
    let digits = value.strip_prefix(b"-").unwrap_or(value);
    let canonical = !digits.is_empty()
        && digits.len() <= 19
        && digits.iter().all(u8::is_ascii_digit)
        && (digits[0] != b'0' || value == b"0");
    if !canonical {
        return Err(Error::NotAnInteger);
    }
    std::str::from_utf8(value).ok().and_then(|t| t.parse().ok()).ok_or(Error::NotAnInteger)
}

#[cfg(test)]
mod tests {
    use super::decode_decimal;

    #[test]
    fn decimal_counters_read_as_redis_reads_them() {
        assert_eq!(decode_decimal(b"0").unwrap(), 0);
        assert_eq!(decode_decimal(b"-12").unwrap(), -12);
        assert_eq!(decode_decimal(b"9223372036854775807").unwrap(), i64::MAX);
        assert_eq!(decode_decimal(b"-9223372036854775808").unwrap(), i64::MIN);
        for bad in [&b""[..], b"-", b"+1", b" 1", b"1 ", b"01", b"-0", b"1.5", b"9223372036854775808", b"\x05"] {
            assert!(decode_decimal(bad).is_err(), "{bad:?} read as a number");
        }
    }
}
