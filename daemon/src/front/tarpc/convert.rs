//! Wire types <-> storage commands and replies, for the tarpc front end:
//! the one place the two vocabularies meet. A second protocol gets a
//! sibling of this module and nothing else in the daemon changes.

use cachet::protocol::{Op, OpReply, WireError, WireStats, WireTtl};
use cachet_storage::{Command, Error as StoreError, Reply, Stats, Ttl};
use serde_bytes::ByteBuf;

pub(super) fn ttl(t: WireTtl) -> Ttl {
    match t {
        WireTtl::Never => Ttl::Never,
        WireTtl::Millis(ms) => Ttl::Millis(ms),
    }
}

pub(super) fn command(op: Op) -> Command {
    match op {
        Op::Get(k) => Command::Get { key: k.into_vec() },
        Op::Set(k, v, t) => Command::Set { key: k.into_vec(), value: v.into_vec(), ttl: ttl(t) },
        Op::Add(k, v, t) => Command::Add { key: k.into_vec(), value: v.into_vec(), ttl: ttl(t) },
        Op::GetOrAdd(k, v, t) => Command::GetOrAdd { key: k.into_vec(), value: v.into_vec(), ttl: ttl(t) },
        Op::Delete(k) => Command::Delete { key: k.into_vec() },
        Op::Touch(k, t) => Command::Touch { key: k.into_vec(), ttl: ttl(t) },
        Op::Incr(k, d) => Command::Incr { key: k.into_vec(), delta: d },
        Op::HasKey(k) => Command::HasKey { key: k.into_vec() },
        Op::Rename(f, t) => Command::Rename { from: f.into_vec(), to: t.into_vec() },
        Op::GetWithTtl(k) => Command::GetWithTtl { key: k.into_vec() },
    }
}

pub(super) fn op_reply(r: Reply) -> Result<OpReply, WireError> {
    match r {
        Reply::Value(v) => Ok(OpReply::Value(v.map(ByteBuf::from))),
        Reply::Done => Ok(OpReply::Done),
        Reply::Bool(b) => Ok(OpReply::Bool(b)),
        Reply::Int(n) => Ok(OpReply::Int(n)),
        Reply::ValueWithTtl(v) => Ok(OpReply::ValueWithTtl(v.map(|(v, t)| {
            let t = match t {
                Ttl::Never => WireTtl::Never,
                Ttl::Millis(ms) => WireTtl::Millis(ms),
            };
            (ByteBuf::from(v), t)
        }))),
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
