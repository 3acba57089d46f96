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
use crate::error::{DecodeError, Error};
use crate::key::{key_scope, make_key};
use crate::protocol::{BACKUP_CHUNK, BackupPlan, Bytes, MAX_KEYS_PER_REQUEST, Op, OpReply, ServerInfo, Ttl, WireStats};
use crate::request::{
    Add, Delete, DeleteMany, Get, GetMany, GetOrSet, GetOrSetWith, GetRaw, HasKey, Incr, IncrVersion, KeyTtl, Opts,
    Set, SetMany, Touch, Write,
};
use crate::shard;
use crate::timeout::Timeout;
use cachet_types::keyspace;

/// Counters and sizes summed over all servers (read them as fields:
/// `stats.entries`, through `Deref` to [`WireStats`]), with each server's
/// own in `per_server`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// The sum over every server (the maximum for uptime, the longest
    /// compaction pause and the read-only flag).
    pub total: WireStats,
    /// Each server's address (as given to the builder) and its own figures.
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

/// A handle to the cache: Django's low-level cache API over one or more
/// cachetd servers. Cheap to clone (an `Arc`); usable from many tasks at
/// once; clones share connections.
///
/// Every call returns a request that is refined (`.timeout(…)`,
/// `.version(…)`, `.delta(…)`) and then awaited; see the crate's front page.
#[derive(Clone)]
pub struct Cache {
    pub(crate) inner: Arc<Inner>,
}

/// Shows the settings, never the auth token.
impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = &self.inner;
        f.debug_struct("Cache")
            .field("servers", &i.addrs)
            .field("prefix", &i.prefix)
            .field("version", &i.version)
            .field("default_timeout", &i.default_timeout)
            .field("request_timeout", &i.request_timeout)
            .field("token", &i.token.as_ref().map(|_| "<redacted>"))
            .field("down_is_miss", &i.down_is_miss)
            .field("database", &i.database)
            .finish()
    }
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

/// Decodes a whole value of `key`: bytes left over after the MessagePack
/// value (a value written by something other than this client, through
/// RESP say) are an error, not silently ignored.
pub(crate) fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, Error> {
    let fail =
        |source| Error::Decode(DecodeError { key: key.to_owned(), type_name: std::any::type_name::<T>(), source });
    let mut rest = bytes;
    let value = T::deserialize(&mut rmp_serde::Deserializer::new(&mut rest)).map_err(fail)?;
    let left = rest.len();
    if left > 0 {
        return Err(fail(rmp_serde::decode::Error::Syntax(format!(
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
    /// Starts configuring a client: servers, key prefix, version, timeouts,
    /// auth token, database.
    ///
    /// ```
    /// # cachet::doctest::with_daemon(|addr| {
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use cachet::Cache;
    /// use std::time::Duration;
    ///
    /// let cache = Cache::builder()
    ///     .server(addr)
    ///     .key_prefix("myapp")
    ///     .default_timeout(Duration::from_secs(60))
    ///     .connect()
    ///     .await?;
    /// cache.set("k", "v").await?;
    /// # Ok::<(), cachet::Error>(()) }).unwrap() });
    /// ```
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// Connects to one server (`HOST:PORT` or `unix:/path`) with the
    /// defaults: no key prefix, version 1, a 300 s default timeout.
    ///
    /// ```
    /// # cachet::doctest::with_daemon(|addr| {
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let cache = cachet::Cache::connect(addr).await?;
    /// # Ok::<(), cachet::Error>(()) }).unwrap() });
    /// ```
    pub async fn connect(addr: impl Into<String>) -> Result<Cache, Error> {
        Cache::builder().server(addr).connect().await
    }

    /// Django's `get(key)`: the value, or `None` on a miss. The type to read
    /// is the type parameter or the annotation on the result; reading a
    /// value as another type than it was stored as is `Error::Decode`,
    /// naming the key and the type.
    ///
    /// ```
    /// # cachet::doctest::run(|cache| async move {
    /// cache.set("answer", &42).await?;
    /// assert_eq!(cache.get::<i64>("answer").await?, Some(42));
    /// let missing: Option<String> = cache.get("nothing here").await?;
    /// assert_eq!(missing, None);
    /// // Django's get(key, default=…):
    /// assert_eq!(cache.get("nothing here").default(7).await?, 7);
    /// # Ok(()) });
    /// ```
    pub fn get<T: DeserializeOwned + Send + 'static>(&self, key: impl AsRef<str>) -> Get<T> {
        Get { cache: self.clone(), key: key.as_ref().to_owned(), opts: Opts::default(), _t: PhantomData }
    }

    /// The bytes stored under `key` as they are, not decoded: what a Redis
    /// client wrote through the RESP listener, or MessagePack from another
    /// client. `None` on a miss.
    ///
    /// ```
    /// # cachet::doctest::run(|cache| async move {
    /// cache.set_raw("page", b"<html>".to_vec()).await?;
    /// assert_eq!(cache.get_raw("page").await?.as_deref(), Some(&b"<html>"[..]));
    /// # Ok(()) });
    /// ```
    pub fn get_raw(&self, key: impl AsRef<str>) -> GetRaw {
        GetRaw { cache: self.clone(), key: key.as_ref().to_owned(), opts: Opts::default() }
    }

    /// Django's `set(key, value, timeout=, version=)`: stores the value,
    /// encoded as MessagePack, for `.timeout(…)` (default: the client's
    /// `default_timeout`). A value over the server's limit is
    /// `Error::ValueTooLarge` and removes the key's old value.
    ///
    /// ```
    /// # cachet::doctest::run(|cache| async move {
    /// use cachet::Timeout;
    /// use std::time::Duration;
    ///
    /// cache.set("greeting", "hello").await?; // for the default timeout
    /// cache.set("session", &vec![1, 2, 3]).timeout(Duration::from_secs(30)).await?;
    /// cache.set("config", &true).timeout(Timeout::Never).await?;
    /// cache.set("gone", &1).timeout(Duration::ZERO).await?; // stores nothing
    /// assert_eq!(cache.get::<i32>("gone").await?, None);
    /// # Ok(()) });
    /// ```
    pub fn set<V: Serialize + ?Sized>(&self, key: impl AsRef<str>, value: &V) -> Set {
        Set { w: Write::new(self, key.as_ref(), encode(value)) }
    }

    /// Like [`set`](Cache::set), storing the bytes as they are (no
    /// MessagePack), so a Redis client's `GET` returns them unchanged.
    ///
    /// ```
    /// # cachet::doctest::run(|cache| async move {
    /// cache.set_raw("blob", vec![0u8, 159, 255]).await?;
    /// assert_eq!(cache.get_raw("blob").await?.unwrap().as_ref(), &[0u8, 159, 255]);
    /// # Ok(()) });
    /// ```
    pub fn set_raw(&self, key: impl AsRef<str>, value: impl Into<Bytes>) -> Set {
        Set { w: Write::new(self, key.as_ref(), Ok(value.into())) }
    }

    /// Django's `add`: stores only if the key is absent (or expired);
    /// resolves to whether it stored. Atomic on the server.
    ///
    /// ```
    /// # cachet::doctest::run(|cache| async move {
    /// assert!(cache.add("lock", "me").await?);
    /// assert!(!cache.add("lock", "you").await?);
    /// assert_eq!(cache.get::<String>("lock").await?.as_deref(), Some("me"));
    /// # Ok(()) });
    /// ```
    pub fn add<V: Serialize + ?Sized>(&self, key: impl AsRef<str>, value: &V) -> Add {
        Add { w: Write::new(self, key.as_ref(), encode(value)) }
    }

    /// Django's `get_or_set` with a value: the cached value, storing
    /// `default` first on a miss. Atomic on the server: concurrent callers
    /// all get the winner's value.
    ///
    /// ```
    /// # cachet::doctest::run(|cache| async move {
    /// assert_eq!(cache.get_or_set("n", &1).await?, 1);
    /// assert_eq!(cache.get_or_set("n", &2).await?, 1);
    /// # Ok(()) });
    /// ```
    pub fn get_or_set<T: Serialize + DeserializeOwned + Send + 'static>(
        &self,
        key: impl AsRef<str>,
        default: &T,
    ) -> GetOrSet<T> {
        GetOrSet { w: Write::new(self, key.as_ref(), encode(default)), _t: PhantomData }
    }

    /// Django's `get_or_set` with a callable: the cached value; on a miss
    /// runs `f` (only then, and once for all concurrent callers on this
    /// `Cache`) and stores its result.
    ///
    /// ```
    /// # cachet::doctest::run(|cache| async move {
    /// let page: String = cache
    ///     .get_or_set_with("page:/", || async { "rendered".to_string() })
    ///     .await?;
    /// assert_eq!(page, "rendered");
    /// let again: String = cache.get_or_set_with("page:/", || async { unreachable!() }).await?;
    /// assert_eq!(again, "rendered");
    /// # Ok(()) });
    /// ```
    pub fn get_or_set_with<T, F, Fut>(&self, key: impl AsRef<str>, f: F) -> GetOrSetWith<T, F>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T> + Send + 'static,
    {
        GetOrSetWith { cache: self.clone(), key: key.as_ref().to_owned(), f, opts: Opts::default(), _t: PhantomData }
    }

    /// Django's `get_many`: the keys present, with their values, in one
    /// request per server.
    ///
    /// ```
    /// # cachet::doctest::run(|cache| async move {
    /// cache.set("a", &1).await?;
    /// cache.set("b", &2).await?;
    /// let got: std::collections::HashMap<String, i32> = cache.get_many(["a", "b", "c"]).await?;
    /// assert_eq!(got.len(), 2);
    /// assert_eq!(got["b"], 2);
    /// # Ok(()) });
    /// ```
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

    /// Django's `set_many`: stores many values (one timeout for all);
    /// resolves to the keys that could not be stored.
    ///
    /// ```
    /// # cachet::doctest::run(|cache| async move {
    /// let failed = cache.set_many([("a", 1), ("b", 2)]).await?;
    /// assert!(failed.is_empty());
    /// assert_eq!(cache.get::<i32>("b").await?, Some(2));
    /// # Ok(()) });
    /// ```
    pub fn set_many<K: AsRef<str>, V: Serialize>(&self, items: impl IntoIterator<Item = (K, V)>) -> SetMany {
        let items = items.into_iter().map(|(k, v)| (k.as_ref().to_owned(), encode(&v))).collect();
        SetMany { cache: self.clone(), items, opts: Opts::default() }
    }

    /// Django's `delete`: resolves to whether a value was removed.
    ///
    /// ```
    /// # cachet::doctest::run(|cache| async move {
    /// cache.set("k", &1).await?;
    /// assert!(cache.delete("k").await?);
    /// assert!(!cache.delete("k").await?);
    /// # Ok(()) });
    /// ```
    pub fn delete(&self, key: impl AsRef<str>) -> Delete {
        Delete { cache: self.clone(), key: key.as_ref().to_owned(), opts: Opts::default() }
    }

    /// Django's `delete_many`: removes every key given.
    ///
    /// ```
    /// # cachet::doctest::run(|cache| async move {
    /// cache.set_many([("a", 1), ("b", 2)]).await?;
    /// cache.delete_many(["a", "b"]).await?;
    /// assert!(!cache.has_key("a").await?);
    /// # Ok(()) });
    /// ```
    pub fn delete_many(&self, keys: impl IntoIterator<Item = impl AsRef<str>>) -> DeleteMany {
        DeleteMany {
            cache: self.clone(),
            keys: keys.into_iter().map(|k| k.as_ref().to_owned()).collect(),
            opts: Opts::default(),
        }
    }

    /// Django's `touch`: gives a live key a new timeout (default: the
    /// client's `default_timeout`; `Timeout::Never` makes it permanent);
    /// resolves to false if the key is missing.
    ///
    /// ```
    /// # cachet::doctest::run(|cache| async move {
    /// use cachet::Timeout;
    ///
    /// cache.set("k", &1).await?;
    /// assert!(cache.touch("k").timeout(Timeout::Never).await?);
    /// assert_eq!(cache.ttl("k").await?, Some(Timeout::Never));
    /// assert!(!cache.touch("missing").await?);
    /// # Ok(()) });
    /// ```
    pub fn touch(&self, key: impl AsRef<str>) -> Touch {
        Touch { cache: self.clone(), key: key.as_ref().to_owned(), opts: Opts::default() }
    }

    /// Django's `incr`: adds `.delta(d)` (default 1) to an integer and
    /// resolves to the new value, keeping the entry's expiry. A missing key
    /// is `Error::NotFound`, a value that is not an integer
    /// `Error::NotAnInteger`, a result past `i64` `Error::Overflow`.
    ///
    /// ```
    /// # cachet::doctest::run(|cache| async move {
    /// cache.set("hits", &10).await?;
    /// assert_eq!(cache.incr("hits").await?, 11);
    /// assert_eq!(cache.incr("hits").delta(5).await?, 16);
    /// assert!(matches!(cache.incr("nobody").await, Err(cachet::Error::NotFound)));
    /// # Ok(()) });
    /// ```
    pub fn incr(&self, key: impl AsRef<str>) -> Incr {
        Incr { cache: self.clone(), key: key.as_ref().to_owned(), delta: 1, sign: 1, opts: Opts::default() }
    }

    /// Django's `decr`: [`incr`](Cache::incr) by minus `.delta(d)`.
    ///
    /// ```
    /// # cachet::doctest::run(|cache| async move {
    /// cache.set("stock", &3).await?;
    /// assert_eq!(cache.decr("stock").await?, 2);
    /// assert_eq!(cache.decr("stock").delta(5).await?, -3);
    /// # Ok(()) });
    /// ```
    pub fn decr(&self, key: impl AsRef<str>) -> Incr {
        Incr { cache: self.clone(), key: key.as_ref().to_owned(), delta: 1, sign: -1, opts: Opts::default() }
    }

    /// Django's `has_key`: whether the key is present (and not expired).
    ///
    /// ```
    /// # cachet::doctest::run(|cache| async move {
    /// assert!(!cache.has_key("k").await?);
    /// cache.set("k", &()).await?;
    /// assert!(cache.has_key("k").await?);
    /// # Ok(()) });
    /// ```
    pub fn has_key(&self, key: impl AsRef<str>) -> HasKey {
        HasKey { cache: self.clone(), key: key.as_ref().to_owned(), opts: Opts::default() }
    }

    /// How long a key has left: `None` if missing, `Some(Timeout::Never)`
    /// if it never expires, else `Some(Timeout::After(left))` (Redis's
    /// `PTTL`).
    ///
    /// ```
    /// # cachet::doctest::run(|cache| async move {
    /// use cachet::Timeout;
    /// use std::time::Duration;
    ///
    /// cache.set("k", &1).timeout(Duration::from_secs(60)).await?;
    /// let Some(Timeout::After(left)) = cache.ttl("k").await? else { panic!("k expires") };
    /// assert!(left <= Duration::from_secs(60) && left > Duration::from_secs(50));
    /// assert_eq!(cache.ttl("missing").await?, None);
    /// # Ok(()) });
    /// ```
    pub fn ttl(&self, key: impl AsRef<str>) -> KeyTtl {
        KeyTtl { cache: self.clone(), key: key.as_ref().to_owned(), opts: Opts::default() }
    }

    /// Django's `incr_version`: moves the value from `.version(v)` (default:
    /// the client's) to version + delta, keeping its expiry; resolves to
    /// the new version. A missing key is `Error::NotFound`.
    ///
    /// ```
    /// # cachet::doctest::run(|cache| async move {
    /// cache.set("k", "old").await?;
    /// assert_eq!(cache.incr_version("k").await?, 2);
    /// assert_eq!(cache.get::<String>("k").await?, None);
    /// assert_eq!(cache.get::<String>("k").version(2).await?.as_deref(), Some("old"));
    /// # Ok(()) });
    /// ```
    pub fn incr_version(&self, key: impl AsRef<str>) -> IncrVersion {
        IncrVersion { cache: self.clone(), key: key.as_ref().to_owned(), delta: 1, sign: 1, opts: Opts::default() }
    }

    /// Django's `decr_version`: [`incr_version`](Cache::incr_version)
    /// downwards.
    ///
    /// ```
    /// # cachet::doctest::run(|cache| async move {
    /// cache.set("k", "v").version(3).await?;
    /// assert_eq!(cache.decr_version("k").version(3).await?, 2);
    /// # Ok(()) });
    /// ```
    pub fn decr_version(&self, key: impl AsRef<str>) -> IncrVersion {
        IncrVersion { cache: self.clone(), key: key.as_ref().to_owned(), delta: 1, sign: -1, opts: Opts::default() }
    }

    /// Django's `clear`: removes everything, on every server, other
    /// applications' keys included (see [`clear_prefix`](Cache::clear_prefix)).
    ///
    /// ```
    /// # cachet::doctest::run(|cache| async move {
    /// cache.set("k", &1).await?;
    /// cache.clear().await?;
    /// assert_eq!(cache.stats().await?.entries, 0);
    /// # Ok(()) });
    /// ```
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
    ///
    /// ```
    /// # cachet::doctest::with_daemon(|addr| {
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use cachet::Cache;
    ///
    /// let shop = Cache::builder().server(addr).key_prefix("shop").connect().await?;
    /// let blog = Cache::builder().server(addr).key_prefix("blog").connect().await?;
    /// shop.set("k", &1).await?;
    /// blog.set("k", &2).await?;
    /// shop.clear_prefix().await?;
    /// assert_eq!(shop.get::<i32>("k").await?, None);
    /// assert_eq!(blog.get::<i32>("k").await?, Some(2));
    /// # Ok::<(), cachet::Error>(()) }).unwrap() });
    /// ```
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

    /// The servers' counters and sizes: the sum in the fields
    /// (`stats.entries`, `stats.hits` …), each server's own in `per_server`.
    ///
    /// ```
    /// # cachet::doctest::run(|cache| async move {
    /// cache.set("k", &1).await?;
    /// let _ = cache.get::<i32>("k").await?;
    /// let stats = cache.stats().await?;
    /// assert_eq!((stats.entries, stats.hits), (1, 1));
    /// # Ok(()) });
    /// ```
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

    /// One round trip to every server (reconnecting if needed); resolves to
    /// the slowest one's time.
    ///
    /// ```
    /// # cachet::doctest::run(|cache| async move {
    /// let rtt = cache.ping().await?;
    /// assert!(rtt < std::time::Duration::from_secs(5));
    /// # Ok(()) });
    /// ```
    pub async fn ping(&self) -> Result<Duration, Error> {
        let started = std::time::Instant::now();
        self.server_info().await?;
        Ok(started.elapsed())
    }

    /// Each server's address with what it reports about itself: its
    /// version and its key and value limits.
    ///
    /// ```
    /// # cachet::doctest::run(|cache| async move {
    /// for (addr, info) in cache.server_info().await? {
    ///     println!("{addr}: cachetd {}, values up to {} bytes", info.version, info.max_value_bytes);
    /// }
    /// # Ok(()) });
    /// ```
    pub async fn server_info(&self) -> Result<Vec<(String, ServerInfo)>, Error> {
        let calls = self.inner.nodes.iter().map(|node| async move {
            let token = self.inner.token.clone();
            let info = self
                .call(node, Retry::Safe, |c, ctx| {
                    let token = token.clone();
                    async move { c.hello(ctx, token).await }
                })
                .await?;
            Ok::<_, Error>((node.addr.clone(), info))
        });
        futures::future::try_join_all(calls).await
    }

    /// Copies the server's data directory, live, into `dest` (created; it
    /// must be new or empty), with every write acknowledged before the call
    /// in it, while the server goes on serving. The copy is a data
    /// directory: start a cachetd on it (`--data-dir`) to restore, and
    /// check it with `cachetd check`. Works with one server only (back up
    /// each of several with its own `Cache`). Resolves to the bytes copied.
    ///
    /// ```
    /// # cachet::doctest::run(|cache| async move {
    /// cache.set("k", "kept").await?;
    /// let dest = std::env::temp_dir().join(format!("cachet-backup-doc-{}", std::process::id()));
    /// let bytes = cache.backup(&dest).await?;
    /// assert!(bytes > 0 && dest.join("MANIFEST").exists());
    /// # std::fs::remove_dir_all(&dest).unwrap();
    /// # Ok(()) });
    /// ```
    pub async fn backup(&self, dest: impl AsRef<std::path::Path>) -> Result<u64, Error> {
        let dest = dest.as_ref();
        let [node] = &self.inner.nodes[..] else {
            return Err(Error::Server(format!(
                "a backup is of one server and this client has {}; back up each with a Cache of its own",
                self.inner.nodes.len()
            )));
        };
        let local = |what: &str, e: std::io::Error| Error::Server(format!("{what} {}: {e}", dest.display()));
        if std::fs::read_dir(dest).is_ok_and(|mut d| d.next().is_some()) {
            return Err(Error::Server(format!(
                "{} is not empty; back up into a new or empty directory",
                dest.display()
            )));
        }
        std::fs::create_dir_all(dest).map_err(|e| local("creating", e))?;
        let plan = self.call(node, Retry::Safe, |c, ctx| async move { c.backup_begin(ctx).await }).await?;
        let copied = self.copy_backup(node, &plan, dest).await;
        let id = plan.id;
        let ended = self.call(node, Retry::Safe, |c, ctx| async move { c.backup_end(ctx, id).await }).await;
        let bytes = copied?;
        ended?;
        Ok(bytes)
    }

    async fn copy_backup(&self, node: &Node, plan: &BackupPlan, dest: &std::path::Path) -> Result<u64, Error> {
        use std::io::Write;
        let local = |what: &str, path: &std::path::Path, e: std::io::Error| {
            Error::Server(format!("{what} {}: {e}", path.display()))
        };
        let mut total = 0;
        for (name, len) in &plan.files {
            if name.contains('/') || name.starts_with('.') {
                return Err(Error::Server(format!("the server named a backup file {name:?}; refusing to write it")));
            }
            let path = dest.join(name);
            let mut out = std::fs::File::create(&path).map_err(|e| local("creating", &path, e))?;
            let mut offset = 0;
            while offset < *len {
                let (id, file) = (plan.id, name.clone());
                let want = BACKUP_CHUNK.min(u32::try_from(len - offset).unwrap_or(BACKUP_CHUNK));
                let chunk = self
                    .call(node, Retry::Safe, |c, ctx| {
                        let file = file.clone();
                        async move { c.backup_read(ctx, id, file, offset, want).await }
                    })
                    .await?;
                if chunk.is_empty() {
                    return Err(Error::Server(format!("the server's {name} ended at {offset} of {len} bytes")));
                }
                out.write_all(&chunk).map_err(|e| local("writing", &path, e))?;
                offset += chunk.len() as u64;
            }
            out.sync_all().map_err(|e| local("syncing", &path, e))?;
            total += len;
        }
        std::fs::File::open(dest).and_then(|d| d.sync_all()).map_err(|e| local("syncing", dest, e))?;
        Ok(total)
    }

    /// Django's `close`: drops the connections; a later call reconnects.
    ///
    /// ```
    /// # cachet::doctest::run(|cache| async move {
    /// cache.set("k", &1).await?;
    /// cache.close().await?;
    /// assert_eq!(cache.get::<i32>("k").await?, Some(1));
    /// # Ok(()) });
    /// ```
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

    pub(crate) fn resolve_ttl(&self, t: Timeout) -> Ttl {
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
        F: Fn(crate::connection::Client, tarpc::context::Context) -> Fut,
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
