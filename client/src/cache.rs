//! `Cache`: Django's low-level cache API over one or more cachetd servers.
//!
//! Every operation returns a request value refined with `.timeout(…)`,
//! `.version(…)` or `.delta(…)` and then awaited (`IntoFuture`), as reqwest
//! and sqlx do. Values are any serde type, encoded with rmp-serde; integers
//! are MessagePack integers, so `incr` works on `set(k, &5)`.

use std::collections::HashMap;
use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_bytes::ByteBuf;

use crate::connection::{Node, Retry};
use crate::error::Error;
use crate::key::{make_key, user_part};
use crate::protocol::{MAX_KEYS_PER_REQUEST, Op, OpReply, ServerInfo, WireStats, WireTtl};
use crate::shard;
use crate::timeout::Timeout;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Counters and sizes summed over all servers (read them as fields:
/// `stats.entries`), with each server's own in `per_server`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub total: WireStats,
    pub per_server: Vec<(String, WireStats)>,
}

impl std::ops::Deref for Stats {
    type Target = WireStats;
    fn deref(&self) -> &WireStats {
        &self.total
    }
}

/// Configures a [`Cache`]; see [`Cache::builder`].
#[derive(Clone, Debug)]
pub struct Builder {
    servers: Vec<String>,
    prefix: String,
    version: i64,
    default_timeout: Duration,
    request_timeout: Duration,
    token: Option<String>,
    down_is_miss: bool,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            servers: Vec::new(),
            prefix: String::new(),
            version: 1,
            default_timeout: Duration::from_secs(300),
            request_timeout: Duration::from_secs(5),
            token: None,
            down_is_miss: false,
        }
    }
}

impl Builder {
    /// Adds a server, `HOST:PORT` or `unix:/path`. With several, keys are
    /// spread over them by rendezvous hashing.
    pub fn server(mut self, addr: impl Into<String>) -> Self {
        self.servers.push(addr.into());
        self
    }

    /// Django's `KEY_PREFIX`.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Django's `VERSION`.
    pub fn version(mut self, version: i64) -> Self {
        self.version = version;
        self
    }

    /// Django's `TIMEOUT`: used by `Timeout::Default`.
    pub fn default_timeout(mut self, timeout: Duration) -> Self {
        self.default_timeout = timeout;
        self
    }

    /// How long one request may take before `Error::Timeout`.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// With several servers: when one is down, reads of its keys are misses
    /// and writes to it are dropped (`set_many` reports them as failed), as
    /// Django's memcached backend behaves. By default such calls fail fast
    /// with `Error::Connection` naming the server.
    pub fn down_is_miss(mut self, yes: bool) -> Self {
        self.down_is_miss = yes;
        self
    }

    pub fn auth_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Connects to every server, so a wrong address or token shows up now.
    /// With several servers it is enough that one answers (the others are
    /// retried by later calls); a wrong token is always an error.
    pub async fn connect(self) -> Result<Cache, Error> {
        if self.servers.is_empty() {
            return Err(Error::Connection {
                server: String::new(),
                reason: "no server given; call .server(addr)".into(),
            });
        }
        let cache = Cache {
            inner: Arc::new(Inner {
                nodes: self.servers.iter().cloned().map(Node::new).collect(),
                addrs: self.servers,
                prefix: self.prefix,
                version: self.version,
                default_timeout: self.default_timeout,
                request_timeout: self.request_timeout,
                token: self.token,
                down_is_miss: self.down_is_miss,
                computing: Mutex::new(HashMap::new()),
            }),
        };
        let tries = cache.inner.nodes.iter().map(|n| n.conn(&cache.inner.token, cache.inner.request_timeout));
        let mut first_error = None;
        let mut up = 0;
        for r in futures::future::join_all(tries).await {
            match r {
                Ok(_) => up += 1,
                Err(Error::Connection { server, reason }) => {
                    tracing::warn!(server, reason, "cachet server not reachable; calls for its keys fail until it is");
                    first_error.get_or_insert(Error::Connection { server, reason });
                }
                Err(e) => return Err(e),
            }
        }
        match first_error {
            Some(e) if up == 0 => Err(e),
            _ => Ok(cache),
        }
    }
}

struct Inner {
    nodes: Vec<Node>,
    addrs: Vec<String>,
    prefix: String,
    version: i64,
    default_timeout: Duration,
    request_timeout: Duration,
    token: Option<String>,
    down_is_miss: bool,
    /// Keys whose `get_or_set_with` closure is running, so concurrent callers
    /// share one computation.
    computing: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// A handle to the cache. Cheap to clone; usable from many tasks at once.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

fn encode<V: Serialize + ?Sized>(value: &V) -> Result<Vec<u8>, Error> {
    Ok(rmp_serde::to_vec_named(value)?)
}

/// Under `down_is_miss`, a server that cannot be reached yields `miss`.
fn miss_if_down<T: Send + 'static>(
    down_is_miss: bool,
    miss: T,
    fut: impl Future<Output = Result<T, Error>> + Send + 'static,
) -> BoxFuture<Result<T, Error>> {
    Box::pin(async move {
        match fut.await {
            Err(Error::Connection { .. }) if down_is_miss => Ok(miss),
            r => r,
        }
    })
}

fn unexpected(r: OpReply) -> Error {
    Error::Server(format!("unexpected reply {r:?} (client and server versions disagree?)"))
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    Ok(rmp_serde::from_slice(bytes)?)
}

impl Cache {
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// Connects to one server with the defaults.
    pub async fn connect(addr: impl Into<String>) -> Result<Cache, Error> {
        Cache::builder().server(addr).connect().await
    }

    fn key(&self, key: &str, version: Option<i64>) -> String {
        make_key(&self.inner.prefix, version.unwrap_or(self.inner.version), key)
    }

    fn node_for(&self, full_key: &str) -> &Node {
        &self.inner.nodes[shard::pick(&self.inner.addrs, full_key.as_bytes())]
    }

    fn ttl(&self, t: Timeout) -> WireTtl {
        t.to_wire(self.inner.default_timeout)
    }

    async fn info(&self, node: &Node) -> Result<ServerInfo, Error> {
        Ok(node.conn(&self.inner.token, self.inner.request_timeout).await?.info.clone())
    }

    /// Refuses, before sending, what the server would refuse.
    async fn check(&self, node: &Node, key: &str, value: Option<&[u8]>) -> Result<(), Error> {
        let info = self.info(node).await?;
        if key.len() as u64 > info.max_key_bytes {
            return Err(Error::InvalidKey(format!(
                "key is {} bytes (with prefix and version), over the server's limit of {}; use a shorter key or raise --max-key-bytes",
                key.len(),
                info.max_key_bytes
            )));
        }
        if let Some(v) = value
            && v.len() as u64 > info.max_value_bytes
        {
            return Err(Error::ValueTooLarge { size: v.len() as u64, max: info.max_value_bytes });
        }
        Ok(())
    }

    pub fn get<T: DeserializeOwned + Send + 'static>(&self, key: impl AsRef<str>) -> Get<T> {
        Get { cache: self.clone(), key: key.as_ref().to_owned(), version: None, _t: PhantomData }
    }

    pub fn set<V: Serialize + ?Sized>(&self, key: impl AsRef<str>, value: &V) -> Set {
        Set { w: Write::new(self, key.as_ref(), encode(value)) }
    }

    /// Stores only if the key is absent (or expired); resolves to whether it stored.
    pub fn add<V: Serialize + ?Sized>(&self, key: impl AsRef<str>, value: &V) -> Add {
        Add { w: Write::new(self, key.as_ref(), encode(value)) }
    }

    /// Returns the cached value, storing `default` first on a miss. Atomic on
    /// the server: concurrent callers all get the winner's value.
    pub fn get_or_set<T: Serialize + DeserializeOwned + Send + 'static>(
        &self,
        key: impl AsRef<str>,
        default: &T,
    ) -> GetOrSet<T> {
        GetOrSet { w: Write::new(self, key.as_ref(), encode(default)), _t: PhantomData }
    }

    /// Returns the cached value; on a miss runs `f` (only then, and once for
    /// all concurrent callers on this `Cache`) and stores its result.
    pub fn get_or_set_with<T, F, Fut>(&self, key: impl AsRef<str>, f: F) -> GetOrSetWith<T, F>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T> + Send + 'static,
    {
        GetOrSetWith {
            cache: self.clone(),
            key: key.as_ref().to_owned(),
            f,
            timeout: Timeout::Default,
            version: None,
            _t: PhantomData,
        }
    }

    pub fn get_many<T: DeserializeOwned + Send + 'static>(
        &self,
        keys: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> GetMany<T> {
        GetMany {
            cache: self.clone(),
            keys: keys.into_iter().map(|k| k.as_ref().to_owned()).collect(),
            version: None,
            _t: PhantomData,
        }
    }

    /// Stores many values; resolves to the keys that could not be stored.
    pub fn set_many<K: AsRef<str>, V: Serialize>(&self, items: impl IntoIterator<Item = (K, V)>) -> SetMany {
        let items = items.into_iter().map(|(k, v)| (k.as_ref().to_owned(), encode(&v))).collect();
        SetMany { cache: self.clone(), items, timeout: Timeout::Default, version: None }
    }

    pub fn delete(&self, key: impl AsRef<str>) -> Delete {
        Delete { cache: self.clone(), key: key.as_ref().to_owned(), version: None }
    }

    pub fn delete_many(&self, keys: impl IntoIterator<Item = impl AsRef<str>>) -> DeleteMany {
        DeleteMany {
            cache: self.clone(),
            keys: keys.into_iter().map(|k| k.as_ref().to_owned()).collect(),
            version: None,
        }
    }

    /// Sets a new timeout on a live key; resolves to false if it is missing.
    pub fn touch(&self, key: impl AsRef<str>) -> Touch {
        Touch { cache: self.clone(), key: key.as_ref().to_owned(), timeout: Timeout::Default, version: None }
    }

    pub fn incr(&self, key: impl AsRef<str>) -> Incr {
        Incr { cache: self.clone(), key: key.as_ref().to_owned(), delta: 1, sign: 1, version: None }
    }

    pub fn decr(&self, key: impl AsRef<str>) -> Incr {
        Incr { cache: self.clone(), key: key.as_ref().to_owned(), delta: 1, sign: -1, version: None }
    }

    pub fn has_key(&self, key: impl AsRef<str>) -> HasKey {
        HasKey { cache: self.clone(), key: key.as_ref().to_owned(), version: None }
    }

    /// Moves the value to version + delta (keeping its expiry); resolves to the new version.
    pub fn incr_version(&self, key: impl AsRef<str>) -> IncrVersion {
        IncrVersion { cache: self.clone(), key: key.as_ref().to_owned(), delta: 1, sign: 1, version: None }
    }

    pub fn decr_version(&self, key: impl AsRef<str>) -> IncrVersion {
        IncrVersion { cache: self.clone(), key: key.as_ref().to_owned(), delta: 1, sign: -1, version: None }
    }

    /// Removes everything, on every server.
    pub async fn clear(&self) -> Result<(), Error> {
        let calls =
            self.inner.nodes.iter().map(|node| {
                node.call(&self.inner.token, self.inner.request_timeout, Retry::Safe, |c, ctx| async move {
                    c.clear(ctx).await
                })
            });
        futures::future::try_join_all(calls).await.map(|_| ())
    }

    pub async fn stats(&self) -> Result<Stats, Error> {
        let calls = self.inner.nodes.iter().map(|node| async move {
            let s =
                node.call(&self.inner.token, self.inner.request_timeout, Retry::Safe, |c, ctx| async move {
                    c.stats(ctx).await
                })
                .await?;
            Ok::<_, Error>((node.addr.clone(), s))
        });
        let per_server = futures::future::try_join_all(calls).await?;
        let mut total = WireStats::default();
        for (_, s) in &per_server {
            total.merge(s);
        }
        Ok(Stats { total, per_server })
    }

    /// Drops the connections; a later call reconnects.
    pub async fn close(&self) -> Result<(), Error> {
        for node in &self.inner.nodes {
            node.drop_conn(None).await;
        }
        Ok(())
    }

    /// The shared path of the single-key calls without a value: build the
    /// key, pick its server, check the limits, send through the coalescer.
    async fn keyed(
        &self,
        key: &str,
        version: Option<i64>,
        retry: Retry,
        op: impl FnOnce(ByteBuf) -> Op,
    ) -> Result<OpReply, Error> {
        let key = self.key(key, version);
        let node = self.node_for(&key);
        self.check(node, &key, None).await?;
        self.op(node, retry, op(ByteBuf::from(key.into_bytes()))).await
    }

    async fn op(&self, node: &Node, retry: Retry, op: Op) -> Result<OpReply, Error> {
        node.op(&self.inner.token, self.inner.request_timeout, retry, op).await
    }

    async fn call<R, F, Fut>(&self, node: &Node, retry: Retry, f: F) -> Result<R, Error>
    where
        F: Fn(crate::protocol::CacheServiceClient, tarpc::context::Context) -> Fut,
        Fut: Future<Output = Result<Result<R, crate::protocol::WireError>, tarpc::client::RpcError>>,
    {
        node.call(&self.inner.token, self.inner.request_timeout, retry, f).await
    }

    /// Groups full keys by the server they live on.
    /// Groups keys by the server that holds them, in requests of at most
    /// `MAX_KEYS_PER_REQUEST` keys (the server refuses larger ones, so one
    /// request never stalls the engine for long).
    fn by_node<I>(&self, items: impl IntoIterator<Item = (String, I)>) -> Vec<(usize, Vec<(String, I)>)> {
        let mut groups: HashMap<usize, Vec<(String, I)>> = HashMap::new();
        for (k, v) in items {
            groups.entry(shard::pick(&self.inner.addrs, k.as_bytes())).or_default().push((k, v));
        }
        let mut requests = Vec::with_capacity(groups.len());
        for (node, mut items) in groups {
            while items.len() > MAX_KEYS_PER_REQUEST {
                let rest = items.split_off(MAX_KEYS_PER_REQUEST);
                requests.push((node, std::mem::replace(&mut items, rest)));
            }
            requests.push((node, items));
        }
        requests
    }
}

macro_rules! version_and_timeout {
    ($t:ident<$g:ident>) => {
        impl<$g> $t<$g> {
            /// Django's `version=` for this call.
            pub fn version(mut self, v: i64) -> Self {
                self.version = Some(v);
                self
            }
        }
    };
    ($t:ty) => {
        impl $t {
            /// Django's `version=` for this call.
            pub fn version(mut self, v: i64) -> Self {
                self.version = Some(v);
                self
            }
        }
    };
    ($t:ty, timeout) => {
        version_and_timeout!($t);
        impl $t {
            /// Django's `timeout=` for this call.
            pub fn timeout(mut self, t: impl Into<Timeout>) -> Self {
                self.timeout = t.into();
                self
            }
        }
    };
}

pub struct Get<T> {
    cache: Cache,
    key: String,
    version: Option<i64>,
    _t: PhantomData<fn() -> T>,
}
version_and_timeout!(Get<T>);

impl<T: DeserializeOwned + Send + 'static> IntoFuture for Get<T> {
    type Output = Result<Option<T>, Error>;
    type IntoFuture = BoxFuture<Self::Output>;
    fn into_future(self) -> Self::IntoFuture {
        let down_is_miss = self.cache.inner.down_is_miss;
        miss_if_down(down_is_miss, None, async move {
            let c = &self.cache;
            match c.keyed(&self.key, self.version, Retry::Safe, Op::Get).await? {
                OpReply::Value(v) => v.map(|b| decode(&b)).transpose(),
                r => Err(unexpected(r)),
            }
        })
    }
}

/// The shared part of the single-key writes.
struct Write {
    cache: Cache,
    key: String,
    value: Result<Vec<u8>, Error>,
    timeout: Timeout,
    version: Option<i64>,
}

impl Write {
    fn new(cache: &Cache, key: &str, value: Result<Vec<u8>, Error>) -> Write {
        Write { cache: cache.clone(), key: key.to_owned(), value, timeout: Timeout::Default, version: None }
    }

    /// Resolves key, node, value and TTL, checking limits before sending.
    async fn prepare(self) -> Result<(Cache, String, ByteBuf, WireTtl), Error> {
        let value = self.value?;
        let key = self.cache.key(&self.key, self.version);
        self.cache.check(self.cache.node_for(&key), &key, Some(&value)).await?;
        let ttl = self.cache.ttl(self.timeout);
        Ok((self.cache, key, ByteBuf::from(value), ttl))
    }
}

macro_rules! write_builder {
    ($t:ident $(<$g:ident>)?) => {
        impl$(<$g>)? $t$(<$g>)? {
            pub fn version(mut self, v: i64) -> Self {
                self.w.version = Some(v);
                self
            }
            pub fn timeout(mut self, t: impl Into<Timeout>) -> Self {
                self.w.timeout = t.into();
                self
            }
        }
    };
}

pub struct Set {
    w: Write,
}
write_builder!(Set);

impl IntoFuture for Set {
    type Output = Result<(), Error>;
    type IntoFuture = BoxFuture<Self::Output>;
    fn into_future(self) -> Self::IntoFuture {
        let down_is_miss = self.w.cache.inner.down_is_miss;
        miss_if_down(down_is_miss, (), async move {
            let (cache, user_key, version) = (self.w.cache.clone(), self.w.key.clone(), self.w.version);
            let (c, key, value, ttl) = match self.w.prepare().await {
                Ok(prepared) => prepared,
                // Django's memcached rule: a value refused for its size
                // removes the old one, so a stale value is never served
                // after a failed write.
                Err(e @ Error::ValueTooLarge { .. }) => {
                    Delete { cache, key: user_key, version }.await?;
                    return Err(e);
                }
                Err(e) => return Err(e),
            };
            let node = c.node_for(&key);
            match c.op(node, Retry::Safe, Op::Set(ByteBuf::from(key.into_bytes()), value, ttl)).await? {
                OpReply::Done => Ok(()),
                r => Err(unexpected(r)),
            }
        })
    }
}

pub struct Add {
    w: Write,
}
write_builder!(Add);

impl IntoFuture for Add {
    type Output = Result<bool, Error>;
    type IntoFuture = BoxFuture<Self::Output>;
    fn into_future(self) -> Self::IntoFuture {
        let down_is_miss = self.w.cache.inner.down_is_miss;
        miss_if_down(down_is_miss, false, async move {
            let (c, key, value, ttl) = self.w.prepare().await?;
            let node = c.node_for(&key);
            match c.op(node, Retry::OnlyIfUnsent, Op::Add(ByteBuf::from(key.into_bytes()), value, ttl)).await? {
                OpReply::Bool(b) => Ok(b),
                r => Err(unexpected(r)),
            }
        })
    }
}

pub struct GetOrSet<T> {
    w: Write,
    _t: PhantomData<fn() -> T>,
}
write_builder!(GetOrSet<T>);

impl<T: DeserializeOwned + Send + 'static> IntoFuture for GetOrSet<T> {
    type Output = Result<T, Error>;
    type IntoFuture = BoxFuture<Self::Output>;
    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let (c, key, value, ttl) = self.w.prepare().await?;
            let node = c.node_for(&key);
            match c.op(node, Retry::Safe, Op::GetOrAdd(ByteBuf::from(key.into_bytes()), value, ttl)).await? {
                OpReply::Value(Some(held)) => decode(&held),
                r => Err(unexpected(r)),
            }
        })
    }
}

pub struct GetOrSetWith<T, F> {
    cache: Cache,
    key: String,
    f: F,
    timeout: Timeout,
    version: Option<i64>,
    _t: PhantomData<fn() -> T>,
}

impl<T, F> GetOrSetWith<T, F> {
    pub fn version(mut self, v: i64) -> Self {
        self.version = Some(v);
        self
    }
    pub fn timeout(mut self, t: impl Into<Timeout>) -> Self {
        self.timeout = t.into();
        self
    }
}

impl<T, F, Fut> IntoFuture for GetOrSetWith<T, F>
where
    T: Serialize + DeserializeOwned + Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + Send + 'static,
{
    type Output = Result<T, Error>;
    type IntoFuture = BoxFuture<Self::Output>;
    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let c = self.cache;
            let get = |c: &Cache| c.get::<T>(&self.key).version(self.version.unwrap_or(c.inner.version));
            if let Some(v) = get(&c).await? {
                return Ok(v);
            }
            let full = c.key(&self.key, self.version);
            let gate = c.inner.computing.lock().expect("lock poisoned").entry(full.clone()).or_default().clone();
            let result = async {
                let _turn = gate.lock().await;
                // Whoever held the gate before us may have filled the key.
                if let Some(v) = get(&c).await? {
                    return Ok(v);
                }
                let value = (self.f)().await;
                c.get_or_set(&self.key, &value)
                    .version(self.version.unwrap_or(c.inner.version))
                    .timeout(self.timeout)
                    .await
            }
            .await;
            let mut computing = c.inner.computing.lock().expect("lock poisoned");
            if Arc::strong_count(&gate) == 2 {
                computing.remove(&full);
            }
            result
        })
    }
}

pub struct GetMany<T> {
    cache: Cache,
    keys: Vec<String>,
    version: Option<i64>,
    _t: PhantomData<fn() -> T>,
}
version_and_timeout!(GetMany<T>);

impl<T: DeserializeOwned + Send + 'static> IntoFuture for GetMany<T> {
    type Output = Result<HashMap<String, T>, Error>;
    type IntoFuture = BoxFuture<Self::Output>;
    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let c = &self.cache;
            let version = self.version.unwrap_or(c.inner.version);
            let full = self.keys.iter().map(|k| (c.key(k, Some(version)), ()));
            let groups = c.by_node(full);
            let calls = groups.into_iter().map(|(n, keys)| async move {
                let node = &c.inner.nodes[n];
                let fetched = async {
                    for (k, _) in &keys {
                        c.check(node, k, None).await?;
                    }
                    let kbs: Vec<ByteBuf> = keys.iter().map(|(k, _)| ByteBuf::from(k.as_bytes().to_vec())).collect();
                    c.call(node, Retry::Safe, |cl, ctx| {
                        let kbs = kbs.clone();
                        async move { cl.get_many(ctx, kbs).await }
                    })
                    .await
                };
                let vals = match fetched.await {
                    Err(Error::Connection { .. }) if c.inner.down_is_miss => vec![None; keys.len()],
                    r => r?,
                };
                Ok::<_, Error>(keys.into_iter().zip(vals).collect::<Vec<_>>())
            });
            let mut out = HashMap::new();
            for group in futures::future::try_join_all(calls).await? {
                for ((k, _), v) in group {
                    if let Some(v) = v {
                        out.insert(user_part(&k, &c.inner.prefix, version).to_owned(), decode(&v)?);
                    }
                }
            }
            Ok(out)
        })
    }
}

pub struct SetMany {
    cache: Cache,
    items: Vec<(String, Result<Vec<u8>, Error>)>,
    timeout: Timeout,
    version: Option<i64>,
}
version_and_timeout!(SetMany, timeout);

impl IntoFuture for SetMany {
    type Output = Result<Vec<String>, Error>;
    type IntoFuture = BoxFuture<Self::Output>;
    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let c = &self.cache;
            let ttl = c.ttl(self.timeout);
            let mut items = Vec::with_capacity(self.items.len());
            for (k, v) in self.items {
                items.push((c.key(&k, self.version), (k, v?)));
            }
            let calls = c.by_node(items).into_iter().map(|(n, items)| async move {
                let node = &c.inner.nodes[n];
                let info = match c.info(node).await {
                    Err(Error::Connection { .. }) if c.inner.down_is_miss => {
                        return Ok(items.into_iter().map(|(_, (user, _))| user).collect());
                    }
                    r => r?,
                };
                let mut failed = Vec::new();
                let mut send = Vec::new();
                let mut sent_keys = Vec::new();
                let mut too_large = Vec::new();
                for (full, (user, value)) in items {
                    if full.len() as u64 > info.max_key_bytes {
                        failed.push(user);
                    } else if value.len() as u64 > info.max_value_bytes {
                        // Refused for its size: the old value goes too.
                        too_large.push(ByteBuf::from(full.into_bytes()));
                        failed.push(user);
                    } else {
                        send.push((ByteBuf::from(full.into_bytes()), ByteBuf::from(value)));
                        sent_keys.push(user);
                    }
                }
                if !too_large.is_empty() {
                    c.call(node, Retry::Safe, |cl, ctx| {
                        let keys = too_large.clone();
                        async move { cl.delete_many(ctx, keys).await }
                    })
                    .await?;
                }
                if !send.is_empty() {
                    let refused = c
                        .call(node, Retry::Safe, |cl, ctx| {
                            let send = send.clone();
                            async move { cl.set_many(ctx, send, ttl).await }
                        })
                        .await;
                    match refused {
                        Ok(refused) => {
                            failed.extend(refused.into_iter().filter_map(|i| sent_keys.get(i as usize).cloned()))
                        }
                        Err(Error::Connection { .. }) if c.inner.down_is_miss => failed.extend(sent_keys),
                        Err(e) => return Err(e),
                    }
                }
                Ok::<_, Error>(failed)
            });
            Ok(futures::future::try_join_all(calls).await?.into_iter().flatten().collect())
        })
    }
}

pub struct Delete {
    cache: Cache,
    key: String,
    version: Option<i64>,
}
version_and_timeout!(Delete);

impl IntoFuture for Delete {
    type Output = Result<bool, Error>;
    type IntoFuture = BoxFuture<Self::Output>;
    fn into_future(self) -> Self::IntoFuture {
        let down_is_miss = self.cache.inner.down_is_miss;
        miss_if_down(down_is_miss, false, async move {
            let c = &self.cache;
            match c.keyed(&self.key, self.version, Retry::Safe, Op::Delete).await? {
                OpReply::Bool(b) => Ok(b),
                r => Err(unexpected(r)),
            }
        })
    }
}

pub struct DeleteMany {
    cache: Cache,
    keys: Vec<String>,
    version: Option<i64>,
}
version_and_timeout!(DeleteMany);

impl IntoFuture for DeleteMany {
    type Output = Result<(), Error>;
    type IntoFuture = BoxFuture<Self::Output>;
    fn into_future(self) -> Self::IntoFuture {
        let down_is_miss = self.cache.inner.down_is_miss;
        miss_if_down(down_is_miss, (), async move {
            let c = &self.cache;
            let full = self.keys.iter().map(|k| (c.key(k, self.version), ()));
            let calls = c.by_node(full).into_iter().map(|(n, keys)| async move {
                let node = &c.inner.nodes[n];
                let kbs: Vec<ByteBuf> = keys.into_iter().map(|(k, _)| ByteBuf::from(k.into_bytes())).collect();
                c.call(node, Retry::Safe, |cl, ctx| {
                    let kbs = kbs.clone();
                    async move { cl.delete_many(ctx, kbs).await }
                })
                .await
            });
            futures::future::try_join_all(calls).await.map(|_| ())
        })
    }
}

pub struct Touch {
    cache: Cache,
    key: String,
    timeout: Timeout,
    version: Option<i64>,
}
version_and_timeout!(Touch, timeout);

impl IntoFuture for Touch {
    type Output = Result<bool, Error>;
    type IntoFuture = BoxFuture<Self::Output>;
    fn into_future(self) -> Self::IntoFuture {
        let down_is_miss = self.cache.inner.down_is_miss;
        miss_if_down(down_is_miss, false, async move {
            let c = &self.cache;
            let ttl = c.ttl(self.timeout);
            match c.keyed(&self.key, self.version, Retry::Safe, |k| Op::Touch(k, ttl)).await? {
                OpReply::Bool(b) => Ok(b),
                r => Err(unexpected(r)),
            }
        })
    }
}

pub struct Incr {
    cache: Cache,
    key: String,
    delta: i64,
    sign: i64,
    version: Option<i64>,
}
version_and_timeout!(Incr);

impl Incr {
    /// Django's `delta=` (default 1).
    pub fn delta(mut self, d: i64) -> Self {
        self.delta = d;
        self
    }
}

impl IntoFuture for Incr {
    type Output = Result<i64, Error>;
    type IntoFuture = BoxFuture<Self::Output>;
    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let c = &self.cache;
            let delta = self.delta.checked_mul(self.sign).ok_or(Error::Overflow)?;
            match c.keyed(&self.key, self.version, Retry::OnlyIfUnsent, |k| Op::Incr(k, delta)).await? {
                OpReply::Int(n) => Ok(n),
                r => Err(unexpected(r)),
            }
        })
    }
}

pub struct HasKey {
    cache: Cache,
    key: String,
    version: Option<i64>,
}
version_and_timeout!(HasKey);

impl IntoFuture for HasKey {
    type Output = Result<bool, Error>;
    type IntoFuture = BoxFuture<Self::Output>;
    fn into_future(self) -> Self::IntoFuture {
        let down_is_miss = self.cache.inner.down_is_miss;
        miss_if_down(down_is_miss, false, async move {
            let c = &self.cache;
            match c.keyed(&self.key, self.version, Retry::Safe, Op::HasKey).await? {
                OpReply::Bool(b) => Ok(b),
                r => Err(unexpected(r)),
            }
        })
    }
}

pub struct IncrVersion {
    cache: Cache,
    key: String,
    delta: i64,
    sign: i64,
    version: Option<i64>,
}
version_and_timeout!(IncrVersion);

impl IncrVersion {
    pub fn delta(mut self, d: i64) -> Self {
        self.delta = d;
        self
    }
}

impl IntoFuture for IncrVersion {
    type Output = Result<i64, Error>;
    type IntoFuture = BoxFuture<Self::Output>;
    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let c = self.cache;
            let version = self.version.unwrap_or(c.inner.version);
            let delta = self.delta.checked_mul(self.sign).ok_or(Error::Overflow)?;
            let new_version = version.checked_add(delta).ok_or(Error::Overflow)?;
            let from = c.key(&self.key, Some(version));
            let to = c.key(&self.key, Some(new_version));
            let (a, b) = (c.node_for(&from), c.node_for(&to));
            if std::ptr::eq(a, b) {
                let (fb, tb) = (ByteBuf::from(from.into_bytes()), ByteBuf::from(to.into_bytes()));
                match c.op(a, Retry::OnlyIfUnsent, Op::Rename(fb, tb)).await? {
                    OpReply::Done => {}
                    r => return Err(unexpected(r)),
                }
            } else {
                // The two versions live on different servers: copy the raw
                // bytes with the time they have left, then delete, as Django
                // does; the value keeps its expiry.
                let fb = ByteBuf::from(from.into_bytes());
                let (value, ttl) = match c.op(a, Retry::Safe, Op::GetWithTtl(fb.clone())).await? {
                    OpReply::ValueWithTtl(Some(found)) => found,
                    OpReply::ValueWithTtl(None) => return Err(Error::NotFound),
                    r => return Err(unexpected(r)),
                };
                let tb = ByteBuf::from(to.into_bytes());
                match c.op(b, Retry::Safe, Op::Set(tb, value, ttl)).await? {
                    OpReply::Done => {}
                    r => return Err(unexpected(r)),
                }
                match c.op(a, Retry::Safe, Op::Delete(fb)).await? {
                    OpReply::Bool(_) => {}
                    r => return Err(unexpected(r)),
                }
            }
            Ok(new_version)
        })
    }
}
