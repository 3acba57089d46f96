//! The RESP conversion table: each Redis command, its arguments checked as
//! Redis checks them, the engine `Command`s it becomes, and how their
//! replies become a RESP reply. The one place where RESP meets the engine
//! (the tarpc front end's sibling is `front/tarpc/convert.rs`).

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cachet_storage::{Command, Error as StoreError, ExpireWhen, Expiry, Reply, Stats, Ttl, When, keyspace};

use super::reply::Value;

/// What one command needs from the engine and how its reply is made.
pub struct Plan {
    pub cmds: Vec<Command>,
    pub finish: Finish,
}

/// How the engine's replies to a plan's commands become the RESP reply.
#[derive(Clone, Debug)]
pub enum Finish {
    /// `+OK` once every command succeeded.
    Ok,
    /// `SET`: `+OK` or a null when not stored; with `GET`, the old value.
    Set {
        get: bool,
    },
    /// One value: a bulk string or a null.
    Bulk,
    /// An array of values (`MGET`).
    Bulks,
    Int,
    /// `Bool` as `:1`/`:0`.
    BoolInt,
    /// Whether a conditional write stored, as `:1`/`:0` (`SETNX`).
    Stored,
    /// How many of the commands answered true (`DEL`, `EXISTS`, `TOUCH`).
    Count,
    /// The value's length (`STRLEN`).
    Len,
    /// `TTL`/`PTTL`: -2 absent, -1 no expiry, else the time left.
    Ttl {
        millis: bool,
    },
    /// `TYPE`: `string` or `none`.
    Type,
    /// The first reply's value; the others only had to succeed (`GETEX`).
    FirstBulk,
    /// `SCAN`: `[cursor, [keys]]`.
    Scan,
    /// `DBSIZE`: the selected database's count from `DbSizes`.
    DbSize(u8),
    /// `INFO`: the sections asked for, built by the session from `Stats`.
    Info(Vec<String>),
}

/// A command refused before it reaches the engine (the reply says why).
pub type Refused = Value;

fn arity(name: &str) -> Refused {
    Value::err(format!("ERR wrong number of arguments for '{}' command", name.to_ascii_lowercase()))
}

fn syntax() -> Refused {
    Value::err("ERR syntax error")
}

fn not_integer() -> Refused {
    Value::err("ERR value is not an integer or out of range")
}

fn vec(b: &Bytes) -> Vec<u8> {
    b.to_vec()
}

/// An integer argument, as Redis's `string2ll` reads it.
pub fn int_arg(b: &Bytes) -> Result<i64, Refused> {
    std::str::from_utf8(b).ok().and_then(|s| s.parse::<i64>().ok()).ok_or_else(not_integer)
}

/// The wall clock in unix ms (for `EXPIREAT`, `EXAT`, `PXAT`).
fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// A relative or absolute expiry from `EX`/`PX`/`EXAT`/`PXAT` and the like,
/// as a TTL. Redis refuses zero and negative relative times in `SET`, and
/// treats any time at or before now in `EXPIRE*` as "delete".
fn ttl_from(amount: i64, unit_ms: i64, absolute: bool, cmd: &str, strict: bool) -> Result<Ttl, Refused> {
    let invalid = || Value::err(format!("ERR invalid expire time in '{cmd}' command"));
    if strict && amount <= 0 {
        return Err(invalid());
    }
    let ms = amount.checked_mul(unit_ms).ok_or_else(invalid)?;
    let rel = if absolute { ms.saturating_sub(now_ms()) } else { ms };
    Ok(Ttl::Millis(u64::try_from(rel).unwrap_or(0)))
}

/// Plans a command that goes to the engine. `name` is upper case; `args`
/// are the arguments after it. Connection commands (AUTH, SELECT, MULTI …)
/// are the session's and never reach here.
pub fn plan(name: &str, args: &[Bytes], db: u8) -> Result<Plan, Refused> {
    let n = args.len();
    let one = |finish: Finish, cmd: Command| Ok(Plan { cmds: vec![cmd], finish });
    // A key as stored: in the selected database (see `keyspace`).
    let key = |k: &Bytes| keyspace::db_key(db, k);
    // A write through RESP: the value is text (see `Encoding`).
    let text = |k: &Bytes, v: &Bytes, ttl: Ttl, when: When| Command::SetWith {
        key: key(k),
        value: v.to_vec(),
        expiry: Expiry::Ttl(ttl),
        when,
        get: false,
    };
    match name {
        "GET" if n == 1 => one(Finish::Bulk, Command::Get { key: key(&args[0]) }),
        "SET" if n >= 2 => set(args, key(&args[0])),
        "SETNX" if n == 2 => one(Finish::Stored, text(&args[0], &args[1], Ttl::Never, When::Absent)),
        "SETEX" | "PSETEX" if n == 3 => {
            let unit = if name == "SETEX" { 1000 } else { 1 };
            let ttl = ttl_from(int_arg(&args[1])?, unit, false, &name.to_ascii_lowercase(), true)?;
            one(Finish::Ok, text(&args[0], &args[2], ttl, When::Always))
        }
        "GETDEL" if n == 1 => one(Finish::Bulk, Command::GetDel { key: key(&args[0]) }),
        "GETEX" if n >= 1 => getex(args, key(&args[0])),
        "MGET" if n >= 1 => one(Finish::Bulks, Command::GetMany { keys: args.iter().map(key).collect() }),
        "MSET" if n >= 2 && n.is_multiple_of(2) => {
            // One engine batch: applied with nothing in between.
            let cmds = args.chunks(2).map(|kv| text(&kv[0], &kv[1], Ttl::Never, When::Always)).collect();
            Ok(Plan { cmds, finish: Finish::Ok })
        }
        "MSETNX" if n >= 2 && n.is_multiple_of(2) => {
            let items = args.chunks(2).map(|kv| (key(&kv[0]), vec(&kv[1]))).collect();
            one(Finish::BoolInt, Command::SetManyIfAbsent { items, ttl: Ttl::Never })
        }
        "STRLEN" if n == 1 => one(Finish::Len, Command::Get { key: key(&args[0]) }),
        "DEL" | "UNLINK" if n >= 1 => {
            Ok(Plan { cmds: args.iter().map(|k| Command::Delete { key: key(k) }).collect(), finish: Finish::Count })
        }
        // Redis's TOUCH only updates the access time: here, a presence check.
        "EXISTS" | "TOUCH" if n >= 1 => {
            Ok(Plan { cmds: args.iter().map(|k| Command::HasKey { key: key(k) }).collect(), finish: Finish::Count })
        }
        "TYPE" if n == 1 => one(Finish::Type, Command::HasKey { key: key(&args[0]) }),
        "INCR" | "DECR" if n == 1 => {
            let delta = if name == "INCR" { 1 } else { -1 };
            one(Finish::Int, Command::IncrText { key: key(&args[0]), delta })
        }
        "INCRBY" | "DECRBY" if n == 2 => {
            let by = int_arg(&args[1])?;
            let delta = if name == "INCRBY" {
                by
            } else {
                by.checked_neg().ok_or_else(|| Value::err("ERR decrement would overflow"))?
            };
            one(Finish::Int, Command::IncrText { key: key(&args[0]), delta })
        }
        "EXPIRE" | "PEXPIRE" | "EXPIREAT" | "PEXPIREAT" if n >= 2 => expire(name, args, key(&args[0])),
        "PERSIST" if n == 1 => one(Finish::BoolInt, Command::Persist { key: key(&args[0]) }),
        "TTL" | "PTTL" if n == 1 => one(Finish::Ttl { millis: name == "PTTL" }, Command::Ttl { key: key(&args[0]) }),
        "DBSIZE" if n == 0 => one(Finish::DbSize(db), Command::DbSizes),
        "FLUSHDB" | "FLUSHALL" if n <= 1 => {
            if let Some(mode) = args.first()
                && !mode.eq_ignore_ascii_case(b"ASYNC")
                && !mode.eq_ignore_ascii_case(b"SYNC")
            {
                return Err(syntax());
            }
            // FLUSHDB clears the selected database, FLUSHALL all of them;
            // each is one log record.
            one(Finish::Ok, if name == "FLUSHDB" { Command::ClearDb { db } } else { Command::Clear })
        }
        "SCAN" if n >= 1 => scan(args, db),
        "INFO" => Ok(Plan {
            cmds: vec![Command::Stats, Command::DbSizes],
            finish: Finish::Info(args.iter().map(|a| String::from_utf8_lossy(a).to_ascii_lowercase()).collect()),
        }),
        _ if KNOWN.contains(&name) => Err(arity(name)),
        _ => Err(unknown(name, args)),
    }
}

/// Every command this front end answers (for arity errors and `COMMAND`).
pub const KNOWN: &[&str] = &[
    "GET",
    "SET",
    "SETNX",
    "SETEX",
    "PSETEX",
    "GETDEL",
    "GETEX",
    "MGET",
    "MSET",
    "MSETNX",
    "STRLEN",
    "DEL",
    "UNLINK",
    "EXISTS",
    "TOUCH",
    "TYPE",
    "INCR",
    "DECR",
    "INCRBY",
    "DECRBY",
    "EXPIRE",
    "PEXPIRE",
    "EXPIREAT",
    "PEXPIREAT",
    "PERSIST",
    "TTL",
    "PTTL",
    "DBSIZE",
    "FLUSHDB",
    "FLUSHALL",
    "SCAN",
    "INFO",
    "PING",
    "ECHO",
    "QUIT",
    "RESET",
    "HELLO",
    "AUTH",
    "CLIENT",
    "COMMAND",
    "CONFIG",
    "SELECT",
    "MULTI",
    "EXEC",
    "DISCARD",
    "WATCH",
    "UNWATCH",
];

/// Redis's text for a command it does not know.
pub fn unknown(name: &str, args: &[Bytes]) -> Refused {
    let shown: Vec<String> =
        args.iter().take(3).map(|a| format!("'{}'", String::from_utf8_lossy(&a[..a.len().min(128)]))).collect();
    Value::err(format!(
        "ERR unknown command '{}', with args beginning with: {}",
        name.to_ascii_lowercase(),
        shown.join(" ")
    ))
}

/// `SET key value [NX|XX] [GET] [EX s|PX ms|EXAT t|PXAT t|KEEPTTL]`, the
/// options in any order.
fn set(args: &[Bytes], key: Vec<u8>) -> Result<Plan, Refused> {
    let (mut when, mut get, mut expiry) = (When::Always, false, None::<Expiry>);
    let mut i = 2;
    while i < args.len() {
        let opt = String::from_utf8_lossy(&args[i]).to_ascii_uppercase();
        match opt.as_str() {
            "NX" | "XX" if when == When::Always => when = if opt == "NX" { When::Absent } else { When::Present },
            "GET" if !get => get = true,
            "KEEPTTL" if expiry.is_none() => expiry = Some(Expiry::Keep),
            "EX" | "PX" | "EXAT" | "PXAT" if expiry.is_none() && i + 1 < args.len() => {
                let amount = int_arg(&args[i + 1])?;
                let unit = if opt.starts_with('E') { 1000 } else { 1 };
                expiry = Some(Expiry::Ttl(ttl_from(amount, unit, opt.ends_with("AT"), "set", true)?));
                i += 1;
            }
            _ => return Err(syntax()),
        }
        i += 1;
    }
    let expiry = expiry.unwrap_or(Expiry::Ttl(Ttl::Never));
    Ok(Plan {
        cmds: vec![Command::SetWith { key, value: vec(&args[1]), expiry, when, get }],
        finish: Finish::Set { get },
    })
}

/// `GETEX key [EX s|PX ms|EXAT t|PXAT t|PERSIST]`: the value, and its
/// expiry changed, in one batch (nothing runs between the two).
fn getex(args: &[Bytes], key: Vec<u8>) -> Result<Plan, Refused> {
    let mut cmds = vec![Command::Get { key: key.clone() }];
    match args.len() {
        1 => {}
        2 if args[1].eq_ignore_ascii_case(b"PERSIST") => cmds.push(Command::Persist { key }),
        3 => {
            let opt = String::from_utf8_lossy(&args[1]).to_ascii_uppercase();
            let unit = match opt.as_str() {
                "EX" | "EXAT" => 1000,
                "PX" | "PXAT" => 1,
                _ => return Err(syntax()),
            };
            let ttl = ttl_from(int_arg(&args[2])?, unit, opt.ends_with("AT"), "getex", true)?;
            cmds.push(Command::Touch { key, ttl });
        }
        _ => return Err(syntax()),
    }
    Ok(Plan { cmds, finish: Finish::FirstBulk })
}

/// `EXPIRE key seconds [NX|XX|GT|LT]` and its millisecond and absolute kin.
fn expire(name: &str, args: &[Bytes], key: Vec<u8>) -> Result<Plan, Refused> {
    let amount = int_arg(&args[1])?;
    let unit = if name.starts_with('P') { 1 } else { 1000 };
    let ttl = ttl_from(amount, unit, name.ends_with("AT"), &name.to_ascii_lowercase(), false)?;
    let mut when = ExpireWhen::Always;
    for opt in &args[2..] {
        let next = match String::from_utf8_lossy(opt).to_ascii_uppercase().as_str() {
            "NX" => ExpireWhen::NoExpiry,
            "XX" => ExpireWhen::HasExpiry,
            "GT" => ExpireWhen::Later,
            "LT" => ExpireWhen::Sooner,
            other => return Err(Value::err(format!("ERR Unsupported option {other}"))),
        };
        let compatible = match (when, next) {
            (ExpireWhen::Always, _) => true,
            (a, b) if a == b => true,
            (ExpireWhen::HasExpiry, ExpireWhen::Later | ExpireWhen::Sooner)
            | (ExpireWhen::Later | ExpireWhen::Sooner, ExpireWhen::HasExpiry) => true,
            _ => false,
        };
        if !compatible {
            return Err(Value::err(if matches!(when, ExpireWhen::NoExpiry) || matches!(next, ExpireWhen::NoExpiry) {
                "ERR NX and XX, GT or LT options at the same time are not compatible"
            } else {
                "ERR GT and LT options at the same time are not compatible"
            }));
        }
        // XX with GT/LT: GT/LT already imply an expiry is set.
        if !matches!(next, ExpireWhen::HasExpiry) || matches!(when, ExpireWhen::Always) {
            when = next;
        }
    }
    Ok(Plan { cmds: vec![Command::Expire { key, ttl, when }], finish: Finish::BoolInt })
}

/// `SCAN cursor [MATCH pattern] [COUNT n] [TYPE t]`.
fn scan(args: &[Bytes], db: u8) -> Result<Plan, Refused> {
    let cursor = std::str::from_utf8(&args[0])
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| Value::err("ERR invalid cursor"))?;
    let (mut count, mut pattern, mut only_strings) = (10usize, None, true);
    let mut i = 1;
    while i < args.len() {
        let opt = String::from_utf8_lossy(&args[i]).to_ascii_uppercase();
        let Some(value) = args.get(i + 1) else { return Err(syntax()) };
        match opt.as_str() {
            "COUNT" => {
                let c = int_arg(value)?;
                if c < 1 {
                    return Err(syntax());
                }
                count = usize::try_from(c).unwrap_or(usize::MAX).min(1 << 20);
            }
            "MATCH" => pattern = Some(value.to_vec()).filter(|p| p != b"*"),
            "TYPE" => only_strings = value.eq_ignore_ascii_case(b"string"),
            _ => return Err(syntax()),
        }
        i += 2;
    }
    if !only_strings {
        // Every key is a string: a scan for another type finds nothing.
        pattern = Some(b"[]".to_vec());
    }
    Ok(Plan { cmds: vec![Command::Scan { cursor, count, pattern, db: Some(db) }], finish: Finish::Scan })
}

/// Renders `INFO` from the engine's stats, the (keys, keys with an expiry)
/// of each database, and the sections asked for.
pub type InfoText<'a> = dyn Fn(&Stats, &[(u64, u64)], &[String]) -> String + 'a;

/// Builds the RESP reply for a plan from the engine's replies (one per
/// command, in order), taking them (values move into the reply, uncopied).
/// `info` renders `INFO` from the engine's stats.
pub fn finish(finish: &Finish, replies: &mut [Option<Result<Reply, StoreError>>], info: &InfoText<'_>) -> Value {
    if let Some(e) = replies.iter().find_map(|r| r.as_ref()?.as_ref().err()) {
        return error(e);
    }
    let mut values = replies.iter_mut().filter_map(|r| r.take()?.ok());
    let unexpected =
        |r: &Reply| Value::err(format!("ERR internal error: unexpected engine reply {r:?}; please report it"));
    match finish {
        Finish::Ok => return Value::Simple("OK"),
        Finish::Count => return Value::Int(values.filter(|r| matches!(r, Reply::Bool(true))).count() as i64),
        _ => {}
    }
    let Some(first) = values.next() else {
        return Value::err("ERR internal error: no engine reply; please report it");
    };
    match (finish, first) {
        (Finish::Set { get: false }, Reply::Swapped { stored, .. }) => {
            if stored {
                Value::Simple("OK")
            } else {
                Value::Null
            }
        }
        (Finish::Set { get: true }, Reply::Swapped { old, .. }) => old.map_or(Value::Null, Value::bulk),
        (Finish::Bulk | Finish::FirstBulk, Reply::Value(v)) => v.map_or(Value::Null, Value::bulk),
        (Finish::Bulks, Reply::Values(vs)) => {
            Value::Array(vs.into_iter().map(|v| v.map_or(Value::Null, Value::bulk)).collect())
        }
        (Finish::Int, Reply::Int(n)) => Value::Int(n),
        (Finish::BoolInt, Reply::Bool(b)) => Value::Int(i64::from(b)),
        (Finish::Stored, Reply::Swapped { stored, .. }) => Value::Int(i64::from(stored)),
        (Finish::Len, Reply::Value(v)) => Value::Int(v.as_ref().map_or(0, |v| v.len() as i64)),
        (Finish::Ttl { millis }, Reply::Ttl(t)) => Value::Int(match t {
            None => -2,
            Some(Ttl::Never) => -1,
            Some(Ttl::Millis(ms)) if *millis => i64::try_from(ms).unwrap_or(i64::MAX),
            // TTL in seconds rounds to nearest, as Redis does.
            Some(Ttl::Millis(ms)) => i64::try_from(ms.saturating_add(500) / 1000).unwrap_or(i64::MAX),
        }),
        (Finish::Type, Reply::Bool(b)) => Value::Simple(if b { "string" } else { "none" }),
        (Finish::Scan, Reply::Scan { next, keys }) => Value::Array(vec![
            Value::text(&next.to_string()),
            Value::Array(keys.into_iter().map(Value::bulk).collect()),
        ]),
        (Finish::DbSize(db), Reply::Counts(c)) => {
            Value::Int(c.get(usize::from(*db)).map_or(0, |(n, _)| i64::try_from(*n).unwrap_or(i64::MAX)))
        }
        (Finish::Info(sections), Reply::Stats(s)) => match values.next() {
            Some(Reply::Counts(c)) => Value::Verbatim(info(&s, &c, sections)),
            r => Value::err(format!("ERR internal error: unexpected engine reply {r:?}; please report it")),
        },
        (_, r) => unexpected(&r),
    }
}

/// An engine error as Redis words its kin (clients map the prefixes:
/// `OOM` and `MISCONF` mean what they mean in Redis), and the class under
/// which the refusal is logged, if it is one.
pub fn error(e: &StoreError) -> Value {
    let msg = e.to_string();
    Value::err(match e {
        StoreError::NotAnInteger | StoreError::NotFound => "ERR value is not an integer or out of range".to_string(),
        StoreError::Overflow => "ERR increment or decrement would overflow".to_string(),
        StoreError::CacheFull { .. } => format!("OOM command not allowed when used memory > 'maxmemory' ({msg})"),
        StoreError::WriteFailed(_) | StoreError::Unavailable(_) => format!("MISCONF {msg}"),
        _ => format!("ERR {msg}"),
    })
}

/// The class under which an engine error is logged as a refusal.
pub fn refusal_class(e: &StoreError) -> Option<&'static str> {
    match e {
        StoreError::NotFound | StoreError::NotAnInteger | StoreError::Overflow => None,
        StoreError::KeyTooLong { .. } => Some("invalid_key"),
        StoreError::ValueTooLarge { .. } => Some("value_too_large"),
        StoreError::ReplyTooLarge { .. } => Some("reply_too_large"),
        StoreError::CacheFull { .. } => Some("cache_full"),
        StoreError::WriteFailed(_) | StoreError::Unavailable(_) | StoreError::Closed => Some("unavailable"),
        _ => Some("server"),
    }
}
