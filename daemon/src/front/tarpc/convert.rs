//! Wire types <-> storage commands and replies, for the tarpc front end:
//! the one place the two vocabularies meet. A second protocol gets a
//! sibling of this module and nothing else in the daemon changes.

use cachet::protocol::{Bytes, Op, OpReply, WireError, WireStats};
use cachet_storage::{Command, Error as StoreError, Reply, Stats};

/// Wire bytes as the engine takes them (no copy when the buffer is not
/// shared, as a decoded request's is not).
fn vec(b: Bytes) -> Vec<u8> {
    Vec::from(b)
}

pub(super) fn command(op: Op) -> Command {
    match op {
        Op::Get(k) => Command::Get { key: vec(k) },
        Op::Set(k, v, ttl) => Command::Set { key: vec(k), value: vec(v), ttl },
        Op::Add(k, v, ttl) => Command::Add { key: vec(k), value: vec(v), ttl },
        Op::GetOrAdd(k, v, ttl) => Command::GetOrAdd { key: vec(k), value: vec(v), ttl },
        Op::Delete(k) => Command::Delete { key: vec(k) },
        Op::Touch(k, ttl) => Command::Touch { key: vec(k), ttl },
        Op::Incr(k, delta) => Command::Incr { key: vec(k), delta },
        Op::HasKey(k) => Command::HasKey { key: vec(k) },
        Op::Rename(f, t) => Command::Rename { from: vec(f), to: vec(t) },
        Op::GetWithTtl(k) => Command::GetWithTtl { key: vec(k) },
        Op::ClearPrefix(p) => Command::ClearPrefix { prefix: vec(p) },
        Op::Ttl(k) => Command::Ttl { key: vec(k) },
    }
}

/// An operation's place in `metrics::TARPC_OPS`, for its counters.
pub(super) fn op_id(op: &Op) -> crate::metrics::OpId {
    crate::metrics::OpId(match op {
        Op::Get(_) => 1,
        Op::Set(..) => 2,
        Op::Add(..) => 3,
        Op::GetOrAdd(..) => 4,
        Op::Delete(_) => 5,
        Op::Touch(..) => 6,
        Op::Incr(..) => 7,
        Op::HasKey(_) => 8,
        Op::Rename(..) => 9,
        Op::GetWithTtl(_) => 10,
        Op::ClearPrefix(_) => 11,
        Op::Ttl(_) => 12,
    })
}

pub(super) fn get_many(keys: Vec<Bytes>) -> Command {
    Command::GetMany { keys: keys.into_iter().map(vec).collect() }
}

pub(super) fn set_many(items: Vec<(Bytes, Bytes)>, ttl: cachet_storage::Ttl) -> Command {
    Command::SetMany { items: items.into_iter().map(|(k, v)| (vec(k), vec(v))).collect(), ttl }
}

pub(super) fn delete_many(keys: Vec<Bytes>) -> Command {
    Command::DeleteMany { keys: keys.into_iter().map(vec).collect() }
}

pub(super) fn op_reply(r: Reply) -> Result<OpReply, WireError> {
    match r {
        Reply::Value(v) => Ok(OpReply::Value(v.map(Bytes::from))),
        Reply::Done => Ok(OpReply::Done),
        Reply::Bool(b) => Ok(OpReply::Bool(b)),
        Reply::Int(n) => Ok(OpReply::Int(n)),
        Reply::ValueWithTtl(v) => Ok(OpReply::ValueWithTtl(v.map(|(v, t)| (Bytes::from(v), t)))),
        Reply::Ttl(t) => Ok(OpReply::Ttl(t)),
        r => Err(unexpected(r)),
    }
}

/// `get_many`'s reply: one slot per key.
pub(super) fn values(r: Reply) -> Result<Vec<Option<Bytes>>, WireError> {
    match r {
        Reply::Values(vs) => Ok(vs.into_iter().map(|v| v.map(Bytes::from)).collect()),
        r => Err(unexpected(r)),
    }
}

/// `set_many`'s reply: the positions of the refused items.
pub(super) fn failed(r: Reply) -> Result<Vec<u32>, WireError> {
    match r {
        Reply::Failed(f) => f
            .into_iter()
            .map(|i| u32::try_from(i).map_err(|_| WireError::Server("set_many position past u32".into())))
            .collect(),
        r => Err(unexpected(r)),
    }
}

/// The reply of a call that answers nothing but success.
pub(super) fn done(r: Reply) -> Result<(), WireError> {
    match r {
        Reply::Done => Ok(()),
        r => Err(unexpected(r)),
    }
}

pub(super) fn unexpected(r: Reply) -> WireError {
    WireError::Server(format!("internal error: unexpected engine reply {r:?}; please report it"))
}

/// The wire's form of an engine error, and the class and message under
/// which a refusal is logged (`None` for answers that are not refusals,
/// like `NotFound`).
pub(super) fn wire_error(e: StoreError) -> (WireError, Option<(&'static str, String)>) {
    let msg = e.to_string();
    let (wire, class) = classify(e, msg.clone());
    (wire, class.map(|c| (c, msg)))
}

fn classify(e: StoreError, msg: String) -> (WireError, Option<&'static str>) {
    match e {
        StoreError::NotFound => (WireError::NotFound, None),
        StoreError::NotAnInteger => (WireError::NotAnInteger, None),
        StoreError::Overflow => (WireError::Overflow, None),
        StoreError::KeyTooLong { .. } => (WireError::InvalidKey(msg), Some("invalid_key")),
        StoreError::ValueTooLarge { size, max } => {
            (WireError::ValueTooLarge { size: size as u64, max: max as u64 }, Some("value_too_large"))
        }
        StoreError::ReplyTooLarge { .. } => (WireError::Server(msg), Some("reply_too_large")),
        StoreError::CacheFull { .. } => (WireError::CacheFull(msg), Some("cache_full")),
        StoreError::WriteFailed(_) | StoreError::Unavailable(_) | StoreError::Closed => {
            (WireError::Unavailable(msg), Some("unavailable"))
        }
        _ => (WireError::Server(msg), Some("server")),
    }
}

/// The engine's counters with the daemon's own (uptime, connections), as
/// the wire carries them.
pub(super) fn stats(s: Stats, uptime_secs: u64, connections: u64) -> WireStats {
    WireStats {
        entries: s.entries,
        memory_bytes: s.memory_bytes,
        hits: s.hits,
        misses: s.misses,
        sets: s.sets,
        deletes: s.deletes,
        expired: s.expired,
        evicted: s.evicted,
        log_bytes: s.log_bytes,
        log_live_bytes: s.log_live_bytes,
        segments: s.segments,
        compactions: s.compactions,
        compaction_max_pause_us: s.compaction_max_pause_us,
        read_only: u64::from(s.read_only),
        uptime_secs,
        connections,
    }
}
