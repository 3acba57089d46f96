//! The tarpc service: each connection gets a `Session` that checks the auth
//! token, turns a request into a storage `Command`, sends it to the engine
//! and maps the reply (or error) back to the wire types.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cachet::protocol::{CacheService, MAX_KEYS_PER_REQUEST, Op, OpReply, ServerInfo, WireError, WireStats, WireTtl};
use cachet_storage::{Command, Error as StoreError, Handle, Reply, ReplyBudget, Ttl};
use serde_bytes::ByteBuf;
use tarpc::context::Context;

/// State shared by every connection.
pub struct Shared {
    pub engine: Handle,
    pub token: Option<String>,
    pub started: Instant,
    pub connections: Arc<AtomicU64>,
    /// Requests being handled right now (shutdown waits for zero).
    pub in_flight: AtomicU64,
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    refusals: Mutex<HashMap<&'static str, Instant>>,
}

impl Shared {
    pub fn new(engine: Handle, token: Option<String>, max_key_bytes: usize, max_value_bytes: usize) -> Shared {
        Shared {
            engine,
            token,
            started: Instant::now(),
            connections: Arc::new(AtomicU64::new(0)),
            in_flight: AtomicU64::new(0),
            max_key_bytes,
            max_value_bytes,
            refusals: Mutex::new(HashMap::new()),
        }
    }

    pub fn connections_counter(&self) -> Arc<AtomicU64> {
        self.connections.clone()
    }

    /// Logs a refused or failed request, at most once per class every 10 s.
    fn note(&self, class: &'static str, msg: &str) {
        let mut last = self.refusals.lock().expect("lock poisoned");
        let now = Instant::now();
        if last.get(class).is_none_or(|t| now.duration_since(*t) >= Duration::from_secs(10)) {
            last.insert(class, now);
            tracing::warn!(class, "request refused: {msg} (further ones of this kind are not logged for 10 s)");
        }
    }
}

#[derive(Clone)]
pub struct Session {
    shared: Arc<Shared>,
    authed: Arc<AtomicBool>,
    /// The connection's unread replies (credited as they are written).
    budget: Arc<ReplyBudget>,
}

impl Session {
    pub fn new(shared: Arc<Shared>, budget: Arc<ReplyBudget>) -> Session {
        let open = shared.token.is_none();
        Session { shared, authed: Arc::new(AtomicBool::new(open)), budget }
    }

    /// Whether the connection has authenticated (true when no token is set).
    pub fn authed(&self) -> Arc<AtomicBool> {
        self.authed.clone()
    }

    /// Refuses a request naming more keys (or operations) than one request
    /// may, before anything is queued.
    fn check_count(&self, what: &str, n: usize) -> Result<(), WireError> {
        if n > MAX_KEYS_PER_REQUEST {
            let msg = format!(
                "a {what} of {n} is over the limit of {MAX_KEYS_PER_REQUEST} per request; split it into smaller requests"
            );
            self.shared.note("too_many_keys", &msg);
            return Err(WireError::Server(msg));
        }
        Ok(())
    }

    /// Lets an authenticated request through to the engine, counted as in
    /// flight until it finishes or is cancelled (shutdown waits for zero).
    async fn admit<T>(&self, work: impl std::future::Future<Output = T>) -> Result<T, WireError> {
        if !self.authed.load(Ordering::Acquire) {
            self.shared.note("unauthorized", "a client sent a request without a valid auth token");
            return Err(WireError::Unauthorized);
        }
        struct InFlight<'a>(&'a AtomicU64);
        impl Drop for InFlight<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        self.shared.in_flight.fetch_add(1, Ordering::AcqRel);
        let _counted = InFlight(&self.shared.in_flight);
        Ok(work.await)
    }

    async fn run(&self, cmd: Command) -> Result<Reply, WireError> {
        let budget = Some(self.budget.clone());
        self.admit(self.shared.engine.call_with(cmd, budget)).await?.map_err(|e| self.wire_error(e))
    }

    async fn run_many(&self, cmds: Vec<Command>) -> Result<Vec<Result<Reply, WireError>>, WireError> {
        let budget = Some(self.budget.clone());
        let replies =
            self.admit(self.shared.engine.call_many_with(cmds, budget)).await?.map_err(|e| self.wire_error(e))?;
        Ok(replies.into_iter().map(|r| r.map_err(|e| self.wire_error(e))).collect())
    }

    fn wire_error(&self, e: StoreError) -> WireError {
        let msg = e.to_string();
        match e {
            StoreError::NotFound => WireError::NotFound,
            StoreError::NotAnInteger => WireError::NotAnInteger,
            StoreError::Overflow => WireError::Overflow,
            StoreError::KeyTooLong { .. } => {
                self.shared.note("invalid_key", &msg);
                WireError::InvalidKey(msg)
            }
            StoreError::ValueTooLarge { size, max } => {
                self.shared.note("value_too_large", &msg);
                WireError::ValueTooLarge { size: size as u64, max: max as u64 }
            }
            StoreError::ReplyTooLarge { .. } => {
                self.shared.note("reply_too_large", &msg);
                WireError::Server(msg)
            }
            StoreError::CacheFull { .. } => {
                self.shared.note("cache_full", &msg);
                WireError::CacheFull(msg)
            }
            StoreError::WriteFailed(_) | StoreError::Unavailable(_) | StoreError::Closed => {
                self.shared.note("unavailable", &msg);
                WireError::Unavailable(msg)
            }
            _ => {
                self.shared.note("server", &msg);
                WireError::Server(msg)
            }
        }
    }
}

fn ttl(t: WireTtl) -> Ttl {
    match t {
        WireTtl::Never => Ttl::Never,
        WireTtl::Millis(ms) => Ttl::Millis(ms),
    }
}

fn command(op: Op) -> Command {
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

fn op_reply(r: Reply) -> Result<OpReply, WireError> {
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

fn unexpected(r: Reply) -> WireError {
    WireError::Server(format!("internal error: unexpected engine reply {r:?}; please report it"))
}

impl CacheService for Session {
    async fn hello(self, _: Context, token: Option<String>) -> Result<ServerInfo, WireError> {
        if let Some(want) = &self.shared.token {
            // Constant time: the comparison must not tell how much matched.
            let offered = token.as_deref().unwrap_or("").as_bytes();
            if !bool::from(subtle::ConstantTimeEq::ct_eq(offered, want.as_bytes())) {
                self.shared.note("unauthorized", "a client offered a wrong or no auth token");
                return Err(WireError::Unauthorized);
            }
            self.authed.store(true, Ordering::Release);
        }
        Ok(ServerInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            max_key_bytes: self.shared.max_key_bytes as u64,
            max_value_bytes: self.shared.max_value_bytes as u64,
        })
    }

    async fn get(self, _: Context, key: ByteBuf) -> Result<Option<ByteBuf>, WireError> {
        match self.run(Command::Get { key: key.into_vec() }).await? {
            Reply::Value(v) => Ok(v.map(ByteBuf::from)),
            r => Err(unexpected(r)),
        }
    }

    async fn get_many(self, _: Context, keys: Vec<ByteBuf>) -> Result<Vec<Option<ByteBuf>>, WireError> {
        self.check_count("get_many", keys.len())?;
        let keys = keys.into_iter().map(ByteBuf::into_vec).collect();
        match self.run(Command::GetMany { keys }).await? {
            Reply::Values(vs) => Ok(vs.into_iter().map(|v| v.map(ByteBuf::from)).collect()),
            r => Err(unexpected(r)),
        }
    }

    async fn set(self, _: Context, key: ByteBuf, value: ByteBuf, t: WireTtl) -> Result<(), WireError> {
        match self.run(Command::Set { key: key.into_vec(), value: value.into_vec(), ttl: ttl(t) }).await? {
            Reply::Done => Ok(()),
            r => Err(unexpected(r)),
        }
    }

    async fn set_many(self, _: Context, items: Vec<(ByteBuf, ByteBuf)>, t: WireTtl) -> Result<Vec<u32>, WireError> {
        self.check_count("set_many", items.len())?;
        let items = items.into_iter().map(|(k, v)| (k.into_vec(), v.into_vec())).collect();
        match self.run(Command::SetMany { items, ttl: ttl(t) }).await? {
            Reply::Failed(f) => Ok(f.into_iter().map(|i| i as u32).collect()),
            r => Err(unexpected(r)),
        }
    }

    async fn add(self, _: Context, key: ByteBuf, value: ByteBuf, t: WireTtl) -> Result<bool, WireError> {
        match self.run(Command::Add { key: key.into_vec(), value: value.into_vec(), ttl: ttl(t) }).await? {
            Reply::Bool(b) => Ok(b),
            r => Err(unexpected(r)),
        }
    }

    async fn get_or_add(self, _: Context, key: ByteBuf, value: ByteBuf, t: WireTtl) -> Result<ByteBuf, WireError> {
        match self.run(Command::GetOrAdd { key: key.into_vec(), value: value.into_vec(), ttl: ttl(t) }).await? {
            Reply::Value(Some(v)) => Ok(ByteBuf::from(v)),
            r => Err(unexpected(r)),
        }
    }

    async fn delete(self, _: Context, key: ByteBuf) -> Result<bool, WireError> {
        match self.run(Command::Delete { key: key.into_vec() }).await? {
            Reply::Bool(b) => Ok(b),
            r => Err(unexpected(r)),
        }
    }

    async fn delete_many(self, _: Context, keys: Vec<ByteBuf>) -> Result<(), WireError> {
        self.check_count("delete_many", keys.len())?;
        let keys = keys.into_iter().map(ByteBuf::into_vec).collect();
        match self.run(Command::DeleteMany { keys }).await? {
            Reply::Done => Ok(()),
            r => Err(unexpected(r)),
        }
    }

    async fn clear(self, _: Context) -> Result<(), WireError> {
        match self.run(Command::Clear).await? {
            Reply::Done => Ok(()),
            r => Err(unexpected(r)),
        }
    }

    async fn touch(self, _: Context, key: ByteBuf, t: WireTtl) -> Result<bool, WireError> {
        match self.run(Command::Touch { key: key.into_vec(), ttl: ttl(t) }).await? {
            Reply::Bool(b) => Ok(b),
            r => Err(unexpected(r)),
        }
    }

    async fn incr(self, _: Context, key: ByteBuf, delta: i64) -> Result<i64, WireError> {
        match self.run(Command::Incr { key: key.into_vec(), delta }).await? {
            Reply::Int(n) => Ok(n),
            r => Err(unexpected(r)),
        }
    }

    async fn has_key(self, _: Context, key: ByteBuf) -> Result<bool, WireError> {
        match self.run(Command::HasKey { key: key.into_vec() }).await? {
            Reply::Bool(b) => Ok(b),
            r => Err(unexpected(r)),
        }
    }

    async fn rename(self, _: Context, from: ByteBuf, to: ByteBuf) -> Result<(), WireError> {
        match self.run(Command::Rename { from: from.into_vec(), to: to.into_vec() }).await? {
            Reply::Done => Ok(()),
            r => Err(unexpected(r)),
        }
    }

    async fn batch(self, _: Context, ops: Vec<Op>) -> Result<Vec<Result<OpReply, WireError>>, WireError> {
        self.check_count("batch", ops.len())?;
        let replies = self.run_many(ops.into_iter().map(command).collect()).await?;
        Ok(replies.into_iter().map(|r| r.and_then(op_reply)).collect())
    }

    async fn stats(self, _: Context) -> Result<WireStats, WireError> {
        match self.run(Command::Stats).await? {
            Reply::Stats(s) => Ok(WireStats {
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
                uptime_secs: self.shared.started.elapsed().as_secs(),
                connections: self.shared.connections.load(Ordering::Relaxed),
            }),
            r => Err(unexpected(r)),
        }
    }
}
