//! Hooks for tests, fuzz targets and benches: the core without the thread,
//! and a plain model of the cache (a `HashMap` and a time) to check it
//! against. Not part of the stable API.

use std::collections::HashMap;

use crate::Error;
use crate::Ttl;
use crate::state::{Command, ExpireWhen, Expiry, NullSink, Reply, State, When};

pub fn apply(state: &mut State, cmd: &Command, now: u64, sink: &mut NullSink) -> crate::Result<Reply> {
    state.apply(cmd, now, sink)
}

/// Removes up to `budget` entries due at `now` (as the writer does after
/// each batch); returns how many it removed.
pub fn expire(state: &mut State, now: u64, budget: usize) -> usize {
    state.expire(now, budget)
}

/// Replays a data directory into a fresh state at `now`.
pub fn replay(dir: &std::path::Path, state: &mut State, now: u64) -> crate::Result<crate::ReplayReport> {
    crate::replay::replay_into(dir, state, now, |_| {})
}

/// Replays files held in memory, named as in a data directory (`seg-…log`,
/// `MANIFEST`), with the rules of a real replay but no files or threads.
pub fn replay_files(files: &[(&str, &[u8])], state: &mut State, now: u64) -> crate::Result<crate::ReplayReport> {
    crate::replay::replay_in_memory(files, state, now)
}

/// Replays a data directory, showing the state to `observe` after each record.
pub fn replay_observed(
    dir: &std::path::Path,
    state: &mut State,
    now: u64,
    observe: impl FnMut(&State),
) -> crate::Result<crate::ReplayReport> {
    crate::replay::replay_observed(dir, state, now, |_| {}, observe)
}

/// The cache as a plain map from key to (value, expiry ms; 0 = never).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Model {
    pub map: HashMap<Vec<u8>, (Vec<u8>, u64)>,
    /// Keys whose value was last written as text (through RESP); every
    /// write that makes an entry sets or clears the mark.
    pub text: std::collections::HashSet<Vec<u8>>,
}

pub fn int(n: i64) -> Vec<u8> {
    let mut v = Vec::new();
    rmp::encode::write_sint(&mut v, n).unwrap();
    v
}

fn deadline(ttl: Ttl, now: u64) -> Option<u64> {
    match ttl {
        Ttl::Never => Some(0),
        Ttl::Millis(0) => None,
        Ttl::Millis(ms) => Some(now + ms),
    }
}

impl Model {
    /// Why a write of `key` and `value` is refused under the default limits;
    /// a value refused for its size removes the old one (Django's rule).
    fn refusal(&mut self, key: &[u8], value: &[u8]) -> Result<(), &'static str> {
        let limits = crate::Limits::default();
        if key.len() > limits.max_key_bytes {
            return Err("KeyTooLong");
        }
        if value.len() > limits.max_value_bytes {
            self.map.remove(key);
            return Err("ValueTooLarge");
        }
        Ok(())
    }

    fn live(&self, key: &[u8], now: u64) -> Option<&(Vec<u8>, u64)> {
        self.map.get(key).filter(|(_, e)| *e == 0 || *e > now)
    }

    pub fn live_entries(&self, now: u64) -> Vec<(Vec<u8>, Vec<u8>, u64)> {
        let mut v: Vec<_> = self
            .map
            .iter()
            .filter(|(_, (_, e))| *e == 0 || *e > now)
            .map(|(k, (v, e))| (k.clone(), v.clone(), *e))
            .collect();
        v.sort();
        v
    }

    fn set_text(&mut self, key: &[u8], value: &[u8], ttl: Ttl, now: u64) {
        self.set(key, value, ttl, now);
        self.text.insert(key.to_vec());
    }

    fn set(&mut self, key: &[u8], value: &[u8], ttl: Ttl, now: u64) {
        self.text.remove(key);
        match deadline(ttl, now) {
            None => {
                self.map.remove(key);
            }
            Some(e) => {
                self.map.insert(key.to_vec(), (value.to_vec(), e));
            }
        }
    }

    /// What the engine must reply to `cmd`; `Err` holds the expected error's name.
    pub fn apply(&mut self, cmd: &Command, now: u64) -> Result<Reply, &'static str> {
        Ok(match cmd {
            Command::Get { key } => Reply::Value(self.live(key, now).map(|(v, _)| v.clone())),
            Command::GetMany { keys } => {
                Reply::Values(keys.iter().map(|k| self.live(k, now).map(|(v, _)| v.clone())).collect())
            }
            Command::Set { key, value, ttl } => {
                self.refusal(key, value)?;
                self.set(key, value, *ttl, now);
                Reply::Done
            }
            Command::SetMany { items, ttl } => {
                let mut failed = Vec::new();
                for (i, (k, v)) in items.iter().enumerate() {
                    match self.refusal(k, v) {
                        Ok(()) => self.set(k, v, *ttl, now),
                        Err(_) => failed.push(i),
                    }
                }
                Reply::Failed(failed)
            }
            Command::Add { key, value, ttl } => {
                if self.live(key, now).is_some() {
                    Reply::Bool(false)
                } else {
                    self.set(key, value, *ttl, now);
                    Reply::Bool(true)
                }
            }
            Command::GetOrAdd { key, value, ttl } => match self.live(key, now) {
                Some((v, _)) => Reply::Value(Some(v.clone())),
                None => {
                    self.set(key, value, *ttl, now);
                    Reply::Value(Some(value.clone()))
                }
            },
            Command::Delete { key } => {
                let was = self.live(key, now).is_some();
                self.map.remove(key);
                Reply::Bool(was)
            }
            Command::DeleteMany { keys } => {
                for k in keys {
                    self.map.remove(k);
                }
                Reply::Done
            }
            Command::Clear => {
                self.map.clear();
                Reply::Done
            }
            Command::Touch { key, ttl } => {
                if self.live(key, now).is_none() {
                    self.map.remove(key);
                    Reply::Bool(false)
                } else {
                    match deadline(*ttl, now) {
                        None => {
                            self.map.remove(key);
                        }
                        Some(e) => self.map.get_mut(key).unwrap().1 = e,
                    }
                    Reply::Bool(true)
                }
            }
            Command::Incr { key, delta } => {
                let Some((v, e)) = self.live(key, now).cloned() else { return Err("NotFound") };
                if self.text.contains(key) {
                    return Err("NotAnInteger");
                }
                let mut rd = &v[..];
                let n = match rmp::decode::read_int::<i64, _>(&mut rd) {
                    Ok(n) if rd.is_empty() => n,
                    Err(rmp::decode::NumValueReadError::OutOfRange) => return Err("Overflow"),
                    _ => return Err("NotAnInteger"),
                };
                let next = n.checked_add(*delta).ok_or("Overflow")?;
                self.map.insert(key.clone(), (int(next), e));
                Reply::Int(next)
            }
            Command::HasKey { key } => Reply::Bool(self.live(key, now).is_some()),
            Command::GetWithTtl { key } => Reply::ValueWithTtl(
                self.live(key, now).map(|(v, e)| (v.clone(), if *e == 0 { Ttl::Never } else { Ttl::Millis(e - now) })),
            ),
            Command::Rename { from, to } => {
                let Some(entry) = self.live(from, now).cloned() else { return Err("NotFound") };
                if from != to {
                    let text = self.text.remove(from);
                    self.map.remove(from);
                    self.map.insert(to.clone(), entry);
                    if text {
                        self.text.insert(to.clone());
                    } else {
                        self.text.remove(to);
                    }
                }
                Reply::Done
            }
            Command::SetWith { key, value, expiry, when, get } => {
                Self::limits(key, value)?;
                let current = self.live(key, now).cloned();
                let old = if *get { current.as_ref().map(|(v, _)| v.clone()) } else { None };
                let stored = match when {
                    When::Always => true,
                    When::Absent => current.is_none(),
                    When::Present => current.is_some(),
                };
                if stored {
                    let ttl = match expiry {
                        Expiry::Ttl(ttl) => *ttl,
                        Expiry::Keep => match current {
                            Some((_, e)) if e != 0 => Ttl::Millis(e - now),
                            _ => Ttl::Never,
                        },
                    };
                    self.set_text(key, value, ttl, now);
                }
                Reply::Swapped { stored, old }
            }
            Command::GetDel { key } => {
                let value = self.live(key, now).map(|(v, _)| v.clone());
                self.map.remove(key);
                Reply::Value(value)
            }
            Command::Ttl { key } => {
                Reply::Ttl(self.live(key, now).map(|(_, e)| if *e == 0 { Ttl::Never } else { Ttl::Millis(e - now) }))
            }
            Command::Expire { key, ttl, when } => {
                let Some(&(_, current)) = self.live(key, now) else { return Ok(Reply::Bool(false)) };
                let current = if current == 0 { u64::MAX } else { current };
                let new = match deadline(*ttl, now) {
                    None => 0,
                    Some(0) => u64::MAX,
                    Some(t) => t,
                };
                let applies = match when {
                    ExpireWhen::Always => true,
                    ExpireWhen::NoExpiry => current == u64::MAX,
                    ExpireWhen::HasExpiry => current != u64::MAX,
                    ExpireWhen::Later => new > current,
                    ExpireWhen::Sooner => new < current,
                };
                if applies {
                    match deadline(*ttl, now) {
                        None => {
                            self.map.remove(key);
                        }
                        Some(e) => self.map.get_mut(key).unwrap().1 = e,
                    }
                }
                Reply::Bool(applies)
            }
            Command::Persist { key } => match self.live(key, now) {
                Some((_, e)) if *e != 0 => {
                    self.map.get_mut(key).unwrap().1 = 0;
                    Reply::Bool(true)
                }
                _ => Reply::Bool(false),
            },
            Command::IncrText { key, delta } => {
                let (current, expires) = match self.live(key, now) {
                    None => (0, 0),
                    Some(_) if !self.text.contains(key) => return Err("NotAnInteger"),
                    Some((v, e)) => {
                        let text = std::str::from_utf8(v).map_err(|_| "NotAnInteger")?;
                        let n: i64 = text.parse().map_err(|_| "NotAnInteger")?;
                        if n.to_string() != text {
                            return Err("NotAnInteger");
                        }
                        (n, *e)
                    }
                };
                let next = current.checked_add(*delta).ok_or("Overflow")?;
                self.map.insert(key.clone(), (next.to_string().into_bytes(), expires));
                self.text.insert(key.clone());
                Reply::Int(next)
            }
            Command::SetManyIfAbsent { items, ttl } => {
                for (k, v) in items {
                    Self::limits(k, v)?;
                }
                if items.iter().any(|(k, _)| self.live(k, now).is_some()) {
                    Reply::Bool(false)
                } else {
                    for (k, v) in items {
                        self.set_text(k, v, *ttl, now);
                    }
                    Reply::Bool(true)
                }
            }
            Command::ClearPrefix { prefix } => {
                self.map.retain(|k, _| !k.starts_with(prefix));
                Reply::Done
            }
            Command::ClearDb { db } => {
                self.map.retain(|k, _| crate::keyspace::db_of(k).0 != *db);
                Reply::Done
            }
            // The model has no caps (model tests run without them).
            Command::SetCaps { .. } => Reply::Done,
            Command::DbSizes => {
                let mut counts = vec![(0u64, 0u64); usize::from(crate::keyspace::DATABASES)];
                for (k, (_, e)) in &self.map {
                    if (*e == 0 || *e > now)
                        && let Some((keys, expiring)) = counts.get_mut(usize::from(crate::keyspace::db_of(k).0))
                    {
                        *keys += 1;
                        *expiring += u64::from(*e != 0);
                    }
                }
                Reply::Counts(counts)
            }
            Command::Stats | Command::Scan { .. } => unreachable!("stats and scans are not modelled"),
        })
    }

    /// The size limits a command is refused for, without side effects.
    fn limits(key: &[u8], value: &[u8]) -> Result<(), &'static str> {
        let limits = crate::Limits::default();
        if key.len() > limits.max_key_bytes {
            return Err("KeyTooLong");
        }
        if value.len() > limits.max_value_bytes {
            return Err("ValueTooLarge");
        }
        Ok(())
    }
}

pub fn error_name(e: &Error) -> &'static str {
    match e {
        Error::NotFound => "NotFound",
        Error::NotAnInteger => "NotAnInteger",
        Error::Overflow => "Overflow",
        Error::KeyTooLong { .. } => "KeyTooLong",
        Error::ValueTooLarge { .. } => "ValueTooLarge",
        _ => "other",
    }
}

/// The core plus an in-memory log: applies commands like the writer thread
/// does (records encoded into segment 1), without threads or files, so
/// fuzzers can run many sequences a second.
pub struct Recorder {
    pub state: State,
    log: Vec<u8>,
    seq: u64,
}

struct VecSink<'a> {
    log: &'a mut Vec<u8>,
    seq: &'a mut u64,
}

impl crate::state::Sink for VecSink<'_> {
    fn append(&mut self, rec: &crate::record::Record<'_>) -> crate::record::SegmentId {
        *self.seq += 1;
        crate::record::encode(self.log, crate::record::SegmentId(1), crate::record::Seq(*self.seq), rec);
        crate::record::SegmentId(1)
    }
}

impl Recorder {
    pub fn new(now: u64) -> Recorder {
        let log = crate::record::segment_header(crate::record::SegmentId(1)).to_vec();
        Recorder { state: State::new(crate::Limits::default(), now), log, seq: 0 }
    }

    /// A recorder whose arena has pages of `page_bytes`, so reclaim (which
    /// runs after every command, as between the writer's batches) moves
    /// items all the time.
    pub fn with_page_bytes(now: u64, page_bytes: usize) -> Recorder {
        let log = crate::record::segment_header(crate::record::SegmentId(1)).to_vec();
        Recorder { state: State::with_page_bytes(crate::Limits::default(), now, page_bytes), log, seq: 0 }
    }

    /// Applies `cmd` at `now`, appending its records to the log.
    pub fn apply(&mut self, cmd: &Command, now: u64) -> crate::Result<Reply> {
        let mut sink = VecSink { log: &mut self.log, seq: &mut self.seq };
        let r = self.state.apply(cmd, now, &mut sink);
        self.state.expire(now, usize::MAX);
        self.state.reclaim();
        r
    }

    /// Segment 1 as it would be on disk.
    pub fn segment(&self) -> &[u8] {
        &self.log
    }
}

/// A set of `key` to `value` that never expires.
pub fn set(key: &str, value: &[u8]) -> Command {
    Command::Set { key: key.into(), value: value.to_vec(), ttl: Ttl::Never }
}

/// The value of `key` through a running engine.
pub fn get(h: &crate::Handle, key: &str) -> Option<Vec<u8>> {
    match h.call_blocking(Command::Get { key: key.into() }).expect("get") {
        Reply::Value(v) => v,
        r => panic!("get replied {r:?}"),
    }
}

/// Retries `set(key, value)` until the engine takes it (after a disk
/// failure it recovers by itself); panics after `limit`.
pub fn set_when_writable(h: &crate::Handle, key: &str, value: &[u8], limit: std::time::Duration) {
    let deadline = std::time::Instant::now() + limit;
    while h.call_blocking(set(key, value)).is_err() {
        assert!(std::time::Instant::now() < deadline, "writes never worked again");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
