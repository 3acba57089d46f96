//! The RESP front end: Redis's protocol (RESP2 and RESP3) over the same
//! engine commands as tarpc, for Django's `RedisCache`, redis-py,
//! redis-cli, redis-benchmark and any Redis client.
//!
//! A connection reads what the client sent, takes every complete command
//! (up to `--max-in-flight`), plans each (`command::plan`, the conversion
//! table), sends all of their engine commands as one batch, and writes all
//! of the replies in one write: a pipeline costs one engine round trip, and
//! a `MULTI`/`EXEC` block is applied back to back with nothing between.
//! Connection commands (`AUTH`, `HELLO`, `SELECT`, `CLIENT`, …) are
//! answered here.

mod command;
pub mod parse;
mod reply;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use cachet_storage::{Command, Reply, ReplyBudget, Stats, keyspace};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::listen::{Limits, Protocol, UNAUTHENTICATED_MAX_FRAME};
use crate::metrics;
use crate::shared::Shared;
use command::{Finish, Plan};
use parse::Bounds;
use reply::Value;

/// Connection ids, as `CLIENT ID` and `HELLO` report them.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The Redis version whose commands and replies this front end follows,
/// reported where clients look for one (`HELLO`, `INFO`).
const REDIS_VERSION: &str = "7.0.0";

/// One RESP connection's state.
struct Session {
    shared: Arc<Shared>,
    budget: Arc<ReplyBudget>,
    id: u64,
    proto: u8,
    authed: bool,
    /// The database `SELECT` chose (see `keyspace`).
    db: u8,
    name: Option<Bytes>,
    /// Commands queued by `MULTI`, and whether one was refused (EXEC then
    /// aborts).
    multi: Option<(Vec<Queued>, bool)>,
    quit: bool,
}

/// A command queued inside `MULTI`.
enum Queued {
    Plan(Plan),
    Now(Value),
}

/// Where one reply comes from.
enum Out {
    Now(Value),
    /// From the engine's replies `at..at + n` of the round's batch.
    Engine {
        at: usize,
        n: usize,
        finish: Finish,
    },
    Exec(Vec<Out>),
}

/// Serves one RESP connection until it closes, quits or breaks the protocol.
pub async fn serve<IO>(io: IO, shared: Arc<Shared>, limits: &Limits)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    shared.connections.fetch_add(1, Ordering::Relaxed);
    let budget = Arc::new(ReplyBudget::new(limits.reply_bytes_per_connection, limits.reply_bytes.clone()));
    let mut session = Session {
        authed: shared.token().is_none(),
        shared: shared.clone(),
        budget,
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        proto: 2,
        db: 0,
        name: None,
        multi: None,
        quit: false,
    };
    if let Err(e) = session.run(io, limits).await {
        tracing::debug!("RESP connection closed: {e}");
    }
    shared.connections.fetch_sub(1, Ordering::Relaxed);
}

impl Session {
    fn bounds(&self, limits: &Limits) -> Bounds {
        let max_bulk = self.shared.max_value_bytes.max(self.shared.max_key_bytes);
        if self.authed {
            Bounds { max_bulk, max_args: 1 << 20, max_command: limits.max_frame }
        } else {
            Bounds {
                max_bulk: max_bulk.min(UNAUTHENTICATED_MAX_FRAME),
                max_args: 64,
                max_command: UNAUTHENTICATED_MAX_FRAME,
            }
        }
    }

    async fn run<IO>(&mut self, mut io: IO, limits: &Limits) -> std::io::Result<()>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let mut buf = BytesMut::with_capacity(16 << 10);
        let mut out = Vec::with_capacity(16 << 10);
        // When the first byte of a command still incomplete arrived.
        let mut partial_since: Option<Instant> = None;
        loop {
            let mut cmds = Vec::new();
            let bounds = self.bounds(limits);
            while cmds.len() < limits.max_in_flight.max(1) {
                match parse::next_command(&mut buf, &bounds) {
                    Ok(Some(cmd)) => cmds.push(cmd),
                    Ok(None) => break,
                    Err(e) => {
                        // As Redis: the error, then the connection closes.
                        self.shared.note("protocol", &e);
                        if !cmds.is_empty() {
                            self.round(std::mem::take(&mut cmds), &mut out).await;
                        }
                        Value::err(format!("ERR {e}")).write(&mut out, self.proto);
                        io.write_all(&out).await?;
                        return io.shutdown().await;
                    }
                }
            }
            if cmds.is_empty() {
                if buf.is_empty() {
                    partial_since = None;
                    if io.read_buf(&mut buf).await? == 0 {
                        return Ok(());
                    }
                } else {
                    let since = *partial_since.get_or_insert_with(Instant::now);
                    let left = limits.read_timeout.saturating_sub(since.elapsed());
                    match tokio::time::timeout(left, io.read_buf(&mut buf)).await {
                        Ok(Ok(0)) => return Ok(()),
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Err(e),
                        Err(_) => {
                            self.shared
                                .note("read_timeout", "a RESP command did not arrive whole within --read-timeout");
                            return Ok(());
                        }
                    }
                }
                continue;
            }
            partial_since = None;
            self.round(cmds, &mut out).await;
            io.write_all(&out).await?;
            self.budget.credit(out.len());
            out.clear();
            if self.quit {
                return io.shutdown().await;
            }
        }
    }

    /// Plans the commands, runs their engine commands as one batch, and
    /// writes their replies, in order, to `out`.
    async fn round(&mut self, cmds: Vec<Vec<Bytes>>, out: &mut Vec<u8>) {
        let started = Instant::now();
        let mut batch = Vec::new();
        let mut outs = Vec::with_capacity(cmds.len());
        let mut ops = Vec::with_capacity(cmds.len());
        let mut upper = [0u8; 32];
        // The last command's name as sent and its metrics id: a pipeline
        // mostly repeats one command, so most skip the search.
        let mut last: Option<(&[u8], metrics::OpId)> = None;
        for args in &cmds {
            let name = command_name(&args[0], &mut upper);
            let op = match last {
                Some((sent, op)) if sent == &args[0][..] => op,
                _ => metrics::resp_op(&name),
            };
            last = Some((&args[0][..], op));
            ops.push(op);
            outs.push(self.dispatch(&name, &args[1..], &mut batch));
            if self.quit {
                break;
            }
        }
        let mut replies = Vec::new();
        // When the whole batch failed (the engine is shutting down), every
        // engine-bound command gets the same error.
        let mut failed = None;
        if !batch.is_empty() {
            self.shared.in_flight.fetch_add(1, Ordering::Relaxed);
            match self.shared.engine.call_many_with(batch, Some(self.budget.clone())).await {
                Ok(rs) => replies = rs.into_iter().map(Some).collect(),
                Err(e) => failed = Some(command::error(&e)),
            }
            self.shared.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        for o in outs {
            self.render(o, &mut replies, &failed).write(out, self.proto);
        }
        self.shared.metrics.served(Protocol::Resp, ops, started.elapsed());
    }

    fn render(
        &self,
        o: Out,
        replies: &mut [Option<Result<Reply, cachet_storage::Error>>],
        failed: &Option<Value>,
    ) -> Value {
        match o {
            Out::Now(v) => v,
            Out::Engine { .. } if failed.is_some() => failed.clone().expect("checked"),
            Out::Engine { at, n, finish } => {
                let rs = &mut replies[at..at + n];
                for e in rs.iter().filter_map(|r| r.as_ref().expect("each reply read once").as_ref().err()) {
                    if let Some(class) = command::refusal_class(e) {
                        self.shared.note(class, &e.to_string());
                    }
                }
                command::finish(&finish, rs, &|s, counts, sections| self.info(s, counts, sections))
            }
            Out::Exec(outs) => Value::Array(outs.into_iter().map(|o| self.render(o, replies, failed)).collect()),
        }
    }

    fn engine(plan: Plan, batch: &mut Vec<Command>) -> Out {
        let at = batch.len();
        let n = plan.cmds.len();
        batch.extend(plan.cmds);
        Out::Engine { at, n, finish: plan.finish }
    }

    /// One command: answered now, or planned into the round's batch.
    fn dispatch(&mut self, name: &str, args: &[Bytes], batch: &mut Vec<Command>) -> Out {
        if !self.authed && !matches!(name, "AUTH" | "HELLO" | "QUIT") {
            return Out::Now(Value::err("NOAUTH Authentication required."));
        }
        if self.multi.is_some() && !matches!(name, "EXEC" | "DISCARD" | "MULTI" | "WATCH" | "QUIT" | "RESET") {
            let queued = match self.connection_command(name, args) {
                Some(v) if v.is_error() => Err(v),
                Some(v) => Ok(Queued::Now(v)),
                None => command::plan(name, args, self.db).map(Queued::Plan),
            };
            let (queue, dirty) = self.multi.as_mut().expect("in MULTI");
            return Out::Now(match queued {
                Ok(q) => {
                    queue.push(q);
                    Value::Simple("QUEUED")
                }
                Err(v) => {
                    *dirty = true;
                    v
                }
            });
        }
        match name {
            "MULTI" => Out::Now(if self.multi.is_some() {
                Value::err("ERR MULTI calls can not be nested")
            } else {
                self.multi = Some((Vec::new(), false));
                Value::Simple("OK")
            }),
            "EXEC" => match self.multi.take() {
                None => Out::Now(Value::err("ERR EXEC without MULTI")),
                Some((_, true)) => Out::Now(Value::err("EXECABORT Transaction discarded because of previous errors.")),
                Some((queue, false)) => Out::Exec(
                    queue
                        .into_iter()
                        .map(|q| match q {
                            Queued::Plan(p) => Self::engine(p, batch),
                            Queued::Now(v) => Out::Now(v),
                        })
                        .collect(),
                ),
            },
            "DISCARD" => Out::Now(match self.multi.take() {
                Some(_) => Value::Simple("OK"),
                None => Value::err("ERR DISCARD without MULTI"),
            }),
            "WATCH" if self.multi.is_some() => Out::Now(Value::err("ERR WATCH inside MULTI is not allowed")),
            _ => match self.connection_command(name, args) {
                Some(v) => Out::Now(v),
                None => match command::plan(name, args, self.db) {
                    Ok(plan) => Self::engine(plan, batch),
                    Err(v) => Out::Now(v),
                },
            },
        }
    }

    /// The commands about the connection and the server, answered without
    /// the engine; `None` for the others.
    fn connection_command(&mut self, name: &str, args: &[Bytes]) -> Option<Value> {
        let n = args.len();
        let arity = || Value::err(format!("ERR wrong number of arguments for '{}' command", name.to_ascii_lowercase()));
        Some(match name {
            "PING" => match n {
                0 => Value::Simple("PONG"),
                1 => Value::Bulk(args[0].clone()),
                _ => arity(),
            },
            "ECHO" if n == 1 => Value::Bulk(args[0].clone()),
            "QUIT" => {
                self.quit = true;
                Value::Simple("OK")
            }
            "RESET" => {
                self.multi = None;
                self.db = 0;
                self.proto = 2;
                self.name = None;
                self.authed = self.shared.token().is_none();
                Value::Simple("RESET")
            }
            "AUTH" if n == 1 || n == 2 => {
                self.auth(args.last().expect("one argument"), args.first().filter(|_| n == 2))
            }
            "HELLO" => self.hello(args),
            "SELECT" if n == 1 => match command::int_arg(&args[0]).map(u8::try_from) {
                Ok(Ok(db)) if db < keyspace::DATABASES => {
                    self.db = db;
                    Value::Simple("OK")
                }
                Ok(_) => Value::err("ERR DB index is out of range"),
                Err(v) => v,
            },
            "WATCH" => Value::err("ERR WATCH is not supported by cachetd; use MULTI/EXEC, which applies atomically"),
            "UNWATCH" => Value::Simple("OK"),
            "CLIENT" if n >= 1 => self.client(args),
            "COMMAND" => command_info(args),
            "CONFIG" if n >= 1 => self.config(args),
            "ECHO" | "AUTH" | "SELECT" | "CLIENT" | "CONFIG" => arity(),
            _ => return None,
        })
    }

    fn auth(&mut self, password: &Bytes, user: Option<&Bytes>) -> Value {
        let Some(token) = self.shared.token() else {
            return Value::err(
                "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
            );
        };
        let user_ok = user.is_none_or(|u| u.as_ref() == b"default");
        if user_ok && constant_time_eq(password, token.as_bytes()) {
            self.authed = true;
            Value::Simple("OK")
        } else {
            self.shared.note("auth", "a RESP client gave a wrong token");
            Value::err("WRONGPASS invalid username-password pair or user is disabled.")
        }
    }

    /// `HELLO [protover [AUTH user pass] [SETNAME name]]`.
    fn hello(&mut self, args: &[Bytes]) -> Value {
        let mut proto = self.proto;
        if let Some(v) = args.first() {
            match command::int_arg(v) {
                Ok(p @ 2..=3) => proto = p as u8,
                Ok(_) | Err(_) => return Value::err("NOPROTO unsupported protocol version"),
            }
        }
        let mut i = 1;
        let mut name = None;
        while i < args.len() {
            if args[i].eq_ignore_ascii_case(b"AUTH") && i + 2 < args.len() {
                let reply = self.auth(&args[i + 2], Some(&args[i + 1]));
                if reply.is_error() {
                    return reply;
                }
                i += 3;
            } else if args[i].eq_ignore_ascii_case(b"SETNAME") && i + 1 < args.len() {
                name = Some(args[i + 1].clone());
                i += 2;
            } else {
                return Value::err(format!("ERR Syntax error in HELLO option '{}'", String::from_utf8_lossy(&args[i])));
            }
        }
        if !self.authed {
            return Value::err(
                "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
            );
        }
        if name.is_some() {
            self.name = name;
        }
        self.proto = proto;
        Value::Map(vec![
            (Value::text("server"), Value::text("cachet")),
            (Value::text("version"), Value::text(REDIS_VERSION)),
            (Value::text("cachet_version"), Value::text(env!("CARGO_PKG_VERSION"))),
            (Value::text("proto"), Value::Int(i64::from(proto))),
            (Value::text("id"), Value::Int(self.id as i64)),
            (Value::text("mode"), Value::text("standalone")),
            (Value::text("role"), Value::text("master")),
            (Value::text("modules"), Value::Array(Vec::new())),
        ])
    }

    fn client(&mut self, args: &[Bytes]) -> Value {
        let sub = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
        match (sub.as_str(), args.len()) {
            ("SETNAME", 2) => {
                if args[1].iter().any(|b| *b <= b' ' || *b > b'~') {
                    return Value::err("ERR Client names cannot contain spaces, newlines or special characters.");
                }
                self.name = Some(args[1].clone()).filter(|n| !n.is_empty());
                Value::Simple("OK")
            }
            ("GETNAME", 1) => self.name.clone().map_or(Value::Null, Value::Bulk),
            ("SETINFO", 3) => Value::Simple("OK"),
            ("ID", 1) => Value::Int(self.id as i64),
            ("INFO", 1) | ("LIST", _) => Value::Verbatim(format!(
                "id={} name={} db={} resp={}\n",
                self.id,
                self.name.as_deref().map(String::from_utf8_lossy).unwrap_or_default(),
                self.db,
                self.proto
            )),
            ("NO-EVICT" | "NO-TOUCH" | "REPLY", 2) => Value::Simple("OK"),
            _ => {
                Value::err(format!("ERR unknown subcommand or wrong number of arguments for '{sub}'. Try CLIENT HELP."))
            }
        }
    }

    /// `CONFIG GET pattern…`: the settings clients and `redis-benchmark`
    /// read at start. `CONFIG SET` is refused: cachetd is configured by
    /// flags, environment and its TOML file.
    fn config(&self, args: &[Bytes]) -> Value {
        let sub = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
        if sub != "GET" || args.len() < 2 {
            return Value::err(format!(
                "ERR CONFIG {sub} is not supported by cachetd (it is configured by its flags, CACHET_* variables and TOML file); CONFIG GET works"
            ));
        }
        let settings = &self.shared.settings;
        let known: [(&str, String); 7] = [
            ("save", String::new()),
            ("appendonly", "yes".into()),
            ("appendfsync", settings.sync.clone()),
            ("maxmemory", self.shared.max_memory().unwrap_or(0).to_string()),
            ("maxmemory-policy", settings.eviction.clone()),
            ("databases", keyspace::DATABASES.to_string()),
            ("proto-max-bulk-len", self.shared.max_value_bytes.to_string()),
        ];
        let mut pairs = Vec::new();
        for (k, v) in &known {
            if args[1..].iter().any(|p| cachet_storage::glob_match(&p.to_ascii_lowercase(), k.as_bytes())) {
                pairs.push((Value::text(k), Value::text(v)));
            }
        }
        Value::Map(pairs)
    }

    /// `INFO [section…]` from the engine's counters, with Redis's field names
    /// where they mean the same thing.
    fn info(&self, s: &Stats, counts: &[(u64, u64)], sections: &[String]) -> String {
        let want = |name: &str| {
            sections.is_empty()
                || sections.iter().any(|x| x == name || x == "all" || x == "everything" || x == "default")
        };
        let shared = &self.shared;
        let uptime = shared.started.elapsed().as_secs();
        let mut t = String::new();
        let mut section = |title: &str, fields: Vec<(&str, String)>| {
            if want(&title.to_ascii_lowercase()) {
                t.push_str(&format!("# {title}\r\n"));
                for (k, v) in fields {
                    t.push_str(&format!("{k}:{v}\r\n"));
                }
                t.push_str("\r\n");
            }
        };
        section(
            "Server",
            vec![
                ("redis_version", REDIS_VERSION.into()),
                ("cachet_version", env!("CARGO_PKG_VERSION").into()),
                ("redis_mode", "standalone".into()),
                ("os", std::env::consts::OS.into()),
                ("arch_bits", (usize::BITS).to_string()),
                ("process_id", std::process::id().to_string()),
                ("uptime_in_seconds", uptime.to_string()),
                ("uptime_in_days", (uptime / 86_400).to_string()),
            ],
        );
        let m = &shared.metrics;
        section(
            "Clients",
            vec![
                ("connected_clients", shared.connections.load(Ordering::Relaxed).to_string()),
                ("cachet_resp_clients", m.connections_of(Protocol::Resp).to_string()),
                ("cachet_tarpc_clients", m.connections_of(Protocol::Tarpc).to_string()),
            ],
        );
        section(
            "Memory",
            vec![
                ("used_memory", s.memory_bytes.to_string()),
                ("maxmemory", shared.max_memory().unwrap_or(0).to_string()),
                ("maxmemory_policy", shared.settings.eviction.clone()),
            ],
        );
        section(
            "Persistence",
            vec![
                ("loading", "0".into()),
                ("aof_enabled", "1".into()),
                ("aof_rewrite_in_progress", "0".into()),
                ("rdb_bgsave_in_progress", "0".into()),
                ("cachet_sync", shared.settings.sync.clone()),
                ("cachet_log_bytes", s.log_bytes.to_string()),
                ("cachet_log_live_bytes", s.log_live_bytes.to_string()),
                ("cachet_segments", s.segments.to_string()),
                ("cachet_compactions", s.compactions.to_string()),
                ("cachet_compaction_max_pause_us", s.compaction_max_pause_us.to_string()),
                ("cachet_read_only", u8::from(s.read_only).to_string()),
            ],
        );
        section(
            "Stats",
            vec![
                (
                    "total_commands_processed",
                    (m.operations_of(Protocol::Resp) + m.operations_of(Protocol::Tarpc)).to_string(),
                ),
                ("cachet_resp_commands", m.operations_of(Protocol::Resp).to_string()),
                ("cachet_tarpc_operations", m.operations_of(Protocol::Tarpc).to_string()),
                ("keyspace_hits", s.hits.to_string()),
                ("keyspace_misses", s.misses.to_string()),
                ("expired_keys", s.expired.to_string()),
                ("evicted_keys", s.evicted.to_string()),
                ("cachet_sets", s.sets.to_string()),
                ("cachet_deletes", s.deletes.to_string()),
            ],
        );
        let dbs: Vec<String> = (0..counts.len()).map(|db| format!("db{db}")).collect();
        let keyspace = counts
            .iter()
            .zip(&dbs)
            .filter(|((keys, _), _)| *keys > 0)
            .map(|((keys, expiring), db)| (db.as_str(), format!("keys={keys},expires={expiring},avg_ttl=0")))
            .collect();
        section("Keyspace", keyspace);
        t
    }
}

/// `COMMAND`, `COMMAND COUNT`, `COMMAND DOCS`, `COMMAND INFO`: enough for
/// clients and redis-cli's hints.
fn command_info(args: &[Bytes]) -> Value {
    let entry = |name: &str| {
        Value::Array(vec![
            Value::text(&name.to_ascii_lowercase()),
            Value::Int(-1),
            Value::Array(Vec::new()),
            Value::Int(0),
            Value::Int(0),
            Value::Int(0),
        ])
    };
    match args.first().map(|a| String::from_utf8_lossy(a).to_ascii_uppercase()).as_deref() {
        None => Value::Array(command::KNOWN.iter().map(|n| entry(n)).collect()),
        Some("COUNT") => Value::Int(command::KNOWN.len() as i64),
        Some("DOCS") => Value::Map(Vec::new()),
        Some("INFO") => Value::Array(
            args[1..]
                .iter()
                .map(|a| {
                    let n = String::from_utf8_lossy(a).to_ascii_uppercase();
                    if command::KNOWN.contains(&n.as_str()) { entry(&n) } else { Value::Null }
                })
                .collect(),
        ),
        Some(other) => Value::err(format!("ERR unknown subcommand '{other}'. Try COMMAND HELP.")),
    }
}

/// Compares a secret without an early exit on the first difference.
/// A command's name in upper case: in `buf` when it is short ASCII (every
/// command there is), without allocating; else a new string.
fn command_name<'a>(name: &[u8], buf: &'a mut [u8; 32]) -> std::borrow::Cow<'a, str> {
    if name.len() <= buf.len() && name.is_ascii() {
        let upper = &mut buf[..name.len()];
        upper.copy_from_slice(name);
        upper.make_ascii_uppercase();
        std::borrow::Cow::Borrowed(std::str::from_utf8(upper).expect("ASCII is UTF-8"))
    } else {
        std::borrow::Cow::Owned(String::from_utf8_lossy(name).to_ascii_uppercase())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
