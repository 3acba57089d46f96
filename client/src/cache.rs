//! `Cache`: Django's low-level cache API over one or more cachetd servers.
//!
//! Every operation returns a request value (see `request`) refined with
//! `.timeout(…)`, `.version(…)` or `.delta(…)` and then awaited
//! (`IntoFuture`), as reqwest and sqlx do. Values are any serde type,
//! encoded with rmp-serde; integers are MessagePack integers, so `incr`
//! works on `set(k, &5)`.
//!
//! Each call resolves its key, its server and that server's connection once
//! ([`Cache::target`]) and checks the server's limits against the
//! connection's `ServerInfo` by reference.

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::builder::Builder;
use crate::connection::{Conn, Node, Retry};
use crate::error::Error;
use crate::key::{key_scope, make_key};
use crate::protocol::{Bytes, MAX_KEYS_PER_REQUEST, Op, OpReply, ServerInfo, Ttl, WireStats};
use crate::request::{
    Add, Delete, DeleteMany, Get, GetMany, GetOrSet, GetOrSetWith, HasKey, Incr, IncrVersion, Opts, Set, SetMany,
    Touch, Write,
};
use crate::shard;
use crate::timeout::Timeout;
use cachet_types::keyspace;

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

pub(crate) struct Inner {
    pub(crate) nodes: Vec<Node>,
    pub(crate) addrs: Vec<String>,
    pub(crate) prefix: String,
    pub(crate) version: i64,
    pub(crate) default_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) token: Option<String>,
    pub(crate) down_is_miss: bool,
    /// The RESP database the keys live in (0 to 15).
    pub(crate) database: u8,
    /// Keys whose `get_or_set_with` closure is running, so concurrent callers
    /// share one computation.
    pub(crate) computing: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// A handle to the cache. Cheap to clone; usable from many tasks at once.
#[derive(Clone)]
pub struct Cache {
    pub(crate) inner: Arc<Inner>,
}

/// Where one single-key call goes: its full key, its server, and that
/// server's connection, resolved once per call.
pub(crate) struct Target<'a> {
    pub(crate) key: String,
    pub(crate) node: &'a Node,
    pub(crate) conn: Arc<Conn>,
}

pub(crate) fn encode<V: Serialize + ?Sized>(value: &V) -> Result<Bytes, Error> {
    Ok(Bytes::from(rmp_serde::to_vec_named(value)?))
}

/// Decodes a whole value: bytes left over after the MessagePack value (a
/// value written by something other than this client, through RESP say)
/// are an error, not silently ignored.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    let mut rest = bytes;
    let value = T::deserialize(&mut rmp_serde::Deserializer::new(&mut rest))?;
    let left = rest.len();
    if left > 0 {
        return Err(Error::Decode(rmp_serde::decode::Error::Syntax(format!(
            "{left} bytes left after a MessagePack value of {} bytes: the value was not written by this client \
             (through RESP, say) or not as this type",
            bytes.len() - left
        ))));
    }
    Ok(value)
}

pub(crate) fn unexpected(r: OpReply) -> Error {
    Error::Server(format!("unexpected reply {r:?} (client and server versions disagree?)"))
}

/// Refuses, before sending, what the server would refuse.
pub(crate) fn check(info: &ServerInfo, key: &str, value: Option<&[u8]>) -> Result<(), Error> {
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

impl Cache {
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// Connects to one server with the defaults.
    pub async fn connect(addr: impl Into<String>) -> Result<Cache, Error> {
        Cache::builder().server(addr).connect().await
    }

    pub fn get<T: DeserializeOwned + Send + 'static>(&self, key: impl AsRef<str>) -> Get<T> {
        Get { cache: self.clone(), key: key.as_ref().to_owned(), opts: Opts::default(), _t: PhantomData }
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
        GetOrSetWith { cache: self.clone(), key: key.as_ref().to_owned(), f, opts: Opts::default(), _t: PhantomData }
    }

    pub fn get_many<T: DeserializeOwned + Send + 'static>(
        &self,
        keys: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> GetMany<T> {
        GetMany {
            cache: self.clone(),
            keys: keys.into_iter().map(|k| k.as_ref().to_owned()).collect(),
            opts: Opts::default(),
            _t: PhantomData,
        }
    }

    /// Stores many values; resolves to the keys that could not be stored.
    pub fn set_many<K: AsRef<str>, V: Serialize>(&self, items: impl IntoIterator<Item = (K, V)>) -> SetMany {
        let items = items.into_iter().map(|(k, v)| (k.as_ref().to_owned(), encode(&v))).collect();
        SetMany { cache: self.clone(), items, opts: Opts::default() }
    }

    pub fn delete(&self, key: impl AsRef<str>) -> Delete {
        Delete { cache: self.clone(), key: key.as_ref().to_owned(), opts: Opts::default() }
    }

    pub fn delete_many(&self, keys: impl IntoIterator<Item = impl AsRef<str>>) -> DeleteMany {
        DeleteMany {
            cache: self.clone(),
            keys: keys.into_iter().map(|k| k.as_ref().to_owned()).collect(),
            opts: Opts::default(),
        }
    }

    /// Sets a new timeout on a live key; resolves to false if it is missing.
    pub fn touch(&self, key: impl AsRef<str>) -> Touch {
        Touch { cache: self.clone(), key: key.as_ref().to_owned(), opts: Opts::default() }
    }

    pub fn incr(&self, key: impl AsRef<str>) -> Incr {
        Incr { cache: self.clone(), key: key.as_ref().to_owned(), delta: 1, sign: 1, opts: Opts::default() }
    }

    pub fn decr(&self, key: impl AsRef<str>) -> Incr {
        Incr { cache: self.clone(), key: key.as_ref().to_owned(), delta: 1, sign: -1, opts: Opts::default() }
    }

    pub fn has_key(&self, key: impl AsRef<str>) -> HasKey {
        HasKey { cache: self.clone(), key: key.as_ref().to_owned(), opts: Opts::default() }
    }

    /// Moves the value to version + delta (keeping its expiry); resolves to the new version.
    pub fn incr_version(&self, key: impl AsRef<str>) -> IncrVersion {
        IncrVersion { cache: self.clone(), key: key.as_ref().to_owned(), delta: 1, sign: 1, opts: Opts::default() }
    }

    pub fn decr_version(&self, key: impl AsRef<str>) -> IncrVersion {
        IncrVersion { cache: self.clone(), key: key.as_ref().to_owned(), delta: 1, sign: -1, opts: Opts::default() }
    }

    /// Removes everything, on every server.
    pub async fn clear(&self) -> Result<(), Error> {
        let calls = self
            .inner
            .nodes
            .iter()
            .map(|node| self.call(node, Retry::Safe, |c, ctx| async move { c.clear(ctx).await }));
        futures::future::try_join_all(calls).await.map(|_| ())
    }

    /// Removes only this client's keys: every key under its `key_prefix`
    /// (all versions), on every server, each server's share as one log
    /// record, so other applications' keys on the same daemons stay. (With
    /// no prefix set, that is every key a client without a prefix wrote.)
    pub async fn clear_prefix(&self) -> Result<(), Error> {
        let prefix = self.wire_key(&key_scope(&self.inner.prefix));
        let calls = self.inner.nodes.iter().map(|node| {
            let prefix = prefix.clone();
            async move {
                let conn = self.conn(node).await?;
                let t = Target { key: String::new(), node, conn };
                match self.op(&t, Retry::Safe, Op::ClearPrefix(prefix)).await? {
                    OpReply::Done => Ok(()),
                    r => Err(unexpected(r)),
                }
            }
        });
        futures::future::try_join_all(calls).await.map(|_| ())
    }

    pub async fn stats(&self) -> Result<Stats, Error> {
        let calls = self.inner.nodes.iter().map(|node| async move {
            let s = self.call(node, Retry::Safe, |c, ctx| async move { c.stats(ctx).await }).await?;
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

    pub(crate) fn key(&self, key: &str, version: Option<i64>) -> String {
        make_key(&self.inner.prefix, version.unwrap_or(self.inner.version), key)
    }

    /// A full key as the server stores it: in the client's database (see
    /// `cachet_types::keyspace`; database 0's keys are the text itself).
    pub(crate) fn wire_key(&self, full: &str) -> Bytes {
        Bytes::from(keyspace::db_key(self.inner.database, full.as_bytes()))
    }

    pub(crate) fn ttl(&self, t: Timeout) -> Ttl {
        t.resolve(self.inner.default_timeout)
    }

    pub(crate) fn version(&self, opts: &Opts) -> i64 {
        opts.version.unwrap_or(self.inner.version)
    }

    pub(crate) fn node_for(&self, full_key: &str) -> &Node {
        &self.inner.nodes[shard::pick(&self.inner.addrs, full_key.as_bytes())]
    }

    pub(crate) async fn conn(&self, node: &Node) -> Result<Arc<Conn>, Error> {
        node.conn(&self.inner.token, self.inner.request_timeout).await
    }

    /// Resolves a single-key call once: its full key, its server, the
    /// server's connection; and checks the key (and value) against the
    /// server's limits.
    pub(crate) async fn target(
        &self,
        key: &str,
        version: Option<i64>,
        value: Option<&[u8]>,
    ) -> Result<Target<'_>, Error> {
        let key = self.key(key, version);
        let node = self.node_for(&key);
        let conn = self.conn(node).await?;
        check(&conn.info, &key, value)?;
        Ok(Target { key, node, conn })
    }

    /// Sends one operation to a resolved target, through its connection's
    /// coalescer.
    pub(crate) async fn op(&self, t: &Target<'_>, retry: Retry, op: Op) -> Result<OpReply, Error> {
        t.node.op(t.conn.clone(), &self.inner.token, self.inner.request_timeout, retry, op).await
    }

    /// The shared path of the single-key calls without a value.
    pub(crate) async fn keyed(
        &self,
        key: &str,
        version: Option<i64>,
        retry: Retry,
        op: impl FnOnce(Bytes) -> Op,
    ) -> Result<OpReply, Error> {
        let t = self.target(key, version, None).await?;
        let k = self.wire_key(&t.key);
        self.op(&t, retry, op(k)).await
    }

    /// One multi-key (or server-wide) request, reconnecting once when safe.
    pub(crate) async fn call<R, F, Fut>(&self, node: &Node, retry: Retry, f: F) -> Result<R, Error>
    where
        F: Fn(crate::protocol::CacheServiceClient, tarpc::context::Context) -> Fut,
        Fut: Future<Output = Result<Result<R, crate::protocol::WireError>, tarpc::client::RpcError>>,
    {
        node.call(&self.inner.token, self.inner.request_timeout, retry, f).await
    }

    /// Groups keys by the server that holds them, in requests of at most
    /// `MAX_KEYS_PER_REQUEST` keys (the server refuses larger ones, so one
    /// request never stalls the engine for long).
    pub(crate) fn by_node<I>(&self, items: impl IntoIterator<Item = (String, I)>) -> Vec<(usize, Vec<(String, I)>)> {
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
