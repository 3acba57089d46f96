//! The limits a command is checked against (key and value sizes, reply
//! room) and the caps that eviction keeps (`max_memory`, `max_entries`).

use super::{Command, State};
use crate::error::{Error, Result};
use crate::evict::ENTRY_OVERHEAD;
use crate::index::{MAX_KEY_LEN, blob_len};

/// What to do when a write would pass `max_memory` or `max_entries`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Eviction {
    /// Evict by S3-FIFO (expired entries go first).
    #[default]
    S3Fifo,
    /// Refuse the write with "cache full".
    NoEviction,
}

impl std::str::FromStr for Eviction {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "s3fifo" | "s3-fifo" => Ok(Eviction::S3Fifo),
            "noeviction" | "none" => Ok(Eviction::NoEviction),
            other => Err(format!("unknown eviction policy {other:?}; use s3fifo or noeviction")),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    /// Cap on `memory_bytes` (keys, values and `ENTRY_OVERHEAD` per entry).
    pub max_memory: Option<u64>,
    /// Cap on the number of entries.
    pub max_entries: Option<u64>,
    /// What happens at a cap. Replay applies the same caps.
    pub eviction: Eviction,
    /// Most bytes of values one request (a command, or a batch of them) may
    /// return: checked before a reply is built.
    pub max_reply_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: 1024,
            max_value_bytes: 16 << 20,
            max_memory: None,
            max_entries: None,
            eviction: Eviction::S3Fifo,
            max_reply_bytes: 64 << 20,
        }
    }
}

impl State {
    /// Starts a request (one message: a command, or a batch of them) that
    /// may return at most `room` bytes of values.
    pub(crate) fn set_reply_room(&mut self, room: usize) {
        self.reply_room = room.min(self.limits.max_reply_bytes);
        self.reply_limit = self.reply_room;
    }

    /// Bytes of values returned since `set_reply_room`.
    pub(crate) fn reply_used(&self) -> usize {
        self.reply_limit - self.reply_room
    }

    pub(super) fn take_reply_room(&mut self, size: usize) -> Result<()> {
        if size > self.reply_room {
            return Err(Error::ReplyTooLarge { size, max: self.reply_room });
        }
        self.reply_room -= size;
        Ok(())
    }

    /// Sizes the index for `n` entries before replay, no more than the caps
    /// let it hold.
    pub(crate) fn reserve(&mut self, n: usize) {
        let mut n = n;
        if let Some(max) = self.limits.max_entries {
            n = n.min(usize::try_from(max).unwrap_or(usize::MAX));
        }
        if let Some(max) = self.limits.max_memory {
            n = n.min(usize::try_from(max / (ENTRY_OVERHEAD + blob_len(b"", b"", 0)) as u64).unwrap_or(usize::MAX));
        }
        self.index.reserve(n);
    }

    /// Before replay of `sets` set records with `bytes` of keys and values:
    /// maps and faults in the arena pages they will fill (no more than the
    /// memory cap allows) on a thread beside replay's, which stops once
    /// replay calls [`State::end_page_feed`]. Not worth a thread below two
    /// pages.
    pub(crate) fn feed_pages_for(&mut self, sets: usize, bytes: u64) {
        let page = self.index.page_bytes() as u64;
        // An item's lengths and deadline: 2 + 5 bytes for most.
        let bytes = bytes + 7 * sets as u64;
        let bytes = self.limits.max_memory.map_or(bytes, |max| bytes.min(max));
        let pages = usize::try_from(bytes.div_ceil(page)).unwrap_or(usize::MAX);
        if pages < 2 {
            return;
        }
        // The pager faults in a page in about half the time replay fills
        // one, so two pages waiting keep it ahead.
        let (tx, rx) = std::sync::mpsc::sync_channel(2);
        let page = page as usize;
        let spawned = std::thread::Builder::new()
            .name("cachet-pager".into())
            .spawn(move || crate::arena::fault_in_pages(page, pages, tx));
        if spawned.is_ok() {
            self.index.feed_pages(Some(rx));
        }
    }

    /// Replay is over: drops the page feed, which ends its thread.
    pub(crate) fn end_page_feed(&mut self) {
        self.index.feed_pages(None);
    }

    /// Whether the index, grown by `add_entries` entries and `add_bytes`
    /// bytes, would hold more than the caps allow. Asked before a write
    /// (with what it adds: its blob and entry overhead, and one entry if the
    /// key is new) and after replay's inserts (with nothing added); either
    /// way, reaching a cap exactly is allowed and passing it is not.
    fn would_exceed(&self, add_bytes: usize, add_entries: usize) -> bool {
        self.limits.max_memory.is_some_and(|max| (self.memory_bytes() + add_bytes) as u64 > max)
            || self.limits.max_entries.is_some_and(|max| (self.index.len() + add_entries) as u64 > max)
    }

    /// Replaces the memory and entry caps and evicts (expired entries first)
    /// until they hold. Setting a cap where there was none starts S3-FIFO
    /// tracking, with every entry in its small queue.
    pub(super) fn set_caps(&mut self, max_memory: Option<u64>, max_entries: Option<u64>, now: u64) {
        self.limits.max_memory = max_memory;
        self.limits.max_entries = max_entries;
        let capped = max_memory.is_some() || max_entries.is_some();
        if capped && self.limits.eviction == Eviction::S3Fifo && self.evict.is_none() {
            let mut ev = crate::evict::S3Fifo::default();
            let slots: Vec<(u32, u64)> = self.index.iter().map(|(slot, e)| (slot, self.index.hash(e.key()))).collect();
            for (slot, hash) in slots {
                ev.on_insert(&mut self.index, slot, hash);
            }
            self.evict = Some(ev);
        }
        if self.would_exceed(0, 0) {
            self.expire(now, usize::MAX);
            self.enforce_caps();
        }
    }

    /// Evicts until the caps hold; false if the policy has nothing to evict.
    pub(super) fn enforce_caps(&mut self) -> bool {
        while self.would_exceed(0, 0) {
            match self.evict.as_mut().map(|ev| (ev.victim(&mut self.index), ev.ghost_bytes())) {
                Some((Some(slot), _)) => self.evict(slot),
                Some((None, ghosts)) if ghosts > 0 => {
                    if let Some(ev) = &mut self.evict {
                        ev.forget_ghosts();
                    }
                }
                _ => return false,
            }
        }
        true
    }

    /// Makes room for a write of `bytes` (its key and value blob) under the caps: first
    /// expired entries go, then S3-FIFO evicts, or under `noeviction` the
    /// write is refused.
    pub(super) fn make_room(&mut self, key: &[u8], bytes: usize, now: u64) -> Result<()> {
        // Whether the key is new matters to the entry cap alone (a lookup).
        let add_entries =
            if self.limits.max_entries.is_some() { usize::from(self.index.find(key).is_none()) } else { 0 };
        let add_bytes = bytes + ENTRY_OVERHEAD;
        if let Some(ev) = &mut self.evict {
            ev.reserve_one();
        }
        if !self.would_exceed(add_bytes, add_entries) {
            return Ok(());
        }
        self.expire(now, usize::MAX);
        while self.would_exceed(add_bytes, add_entries) {
            let victim = self.evict.as_mut().and_then(|ev| ev.victim(&mut self.index));
            let Some(slot) = victim else {
                // Nothing left to evict: the ghosts' own memory goes before
                // a write is refused.
                if let Some(ev) = self.evict.as_mut().filter(|ev| ev.ghost_bytes() > 0) {
                    ev.forget_ghosts();
                    continue;
                }
                return Err(Error::CacheFull {
                    used: self.memory_bytes() as u64,
                    max: self.limits.max_memory.unwrap_or(u64::MAX),
                });
            };
            self.evict(slot);
        }
        Ok(())
    }

    pub(super) fn check_key(&self, key: &[u8]) -> Result<()> {
        let max = self.limits.max_key_bytes.min(MAX_KEY_LEN);
        if key.len() > max {
            return Err(Error::KeyTooLong { len: key.len(), max });
        }
        Ok(())
    }

    pub(super) fn check_value(&self, value: &[u8]) -> Result<()> {
        if value.len() > self.limits.max_value_bytes {
            return Err(Error::ValueTooLarge { size: value.len(), max: self.limits.max_value_bytes });
        }
        Ok(())
    }

    /// Validates a command against the limits without applying it.
    pub fn validate(&self, cmd: &Command) -> Result<()> {
        match cmd {
            Command::Get { key }
            | Command::Delete { key }
            | Command::HasKey { key }
            | Command::GetWithTtl { key }
            | Command::GetDel { key }
            | Command::Ttl { key }
            | Command::Persist { key } => self.check_key(key),
            Command::Touch { key, .. }
            | Command::Incr { key, .. }
            | Command::IncrText { key, .. }
            | Command::Expire { key, .. } => self.check_key(key),
            Command::GetMany { keys } | Command::DeleteMany { keys } => keys.iter().try_for_each(|k| self.check_key(k)),
            Command::Set { key, value, .. }
            | Command::Add { key, value, .. }
            | Command::GetOrAdd { key, value, .. }
            | Command::SetWith { key, value, .. } => {
                self.check_key(key)?;
                self.check_value(value)
            }
            Command::SetManyIfAbsent { items, .. } => items.iter().try_for_each(|(k, v)| {
                self.check_key(k)?;
                self.check_value(v)
            }),
            Command::Rename { from, to } => {
                self.check_key(from)?;
                self.check_key(to)
            }
            // set_many refuses items one by one and reports them.
            Command::SetMany { .. }
            | Command::Clear
            | Command::Stats
            | Command::Scan { .. }
            | Command::ClearPrefix { .. }
            | Command::ClearDb { .. }
            | Command::DbSizes
            | Command::SetCaps { .. } => Ok(()),
        }
    }
}
