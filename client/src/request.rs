//! The request values `Cache`'s methods return: each is refined with
//! `.version(…)`, `.timeout(…)` or `.delta(…)` and awaited. Every request
//! carries its per-call options in one [`Opts`], and one macro
//! (`options!`) gives each the setters it takes.

use std::collections::HashMap;
use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cache::{Cache, check, decode, unexpected};
use crate::connection::Retry;
use crate::error::Error;
use crate::key::user_part;
use crate::protocol::{Bytes, Op, OpReply, Ttl};
use crate::timeout::Timeout;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Django's per-call arguments: `version=` and, for writes, `timeout=`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Opts {
    pub(crate) version: Option<i64>,
    pub(crate) timeout: Timeout,
}

/// Gives a request the option setters it takes; each writes to the
/// request's `Opts` (the field `opts`, or the path given in brackets).
macro_rules! options {
    ($t:ident $(<$($g:ident),+>)? [$($path:ident).+]: $($opt:ident),+) => {
        impl$(<$($g),+>)? $t$(<$($g),+>)? {
            fn opts_mut(&mut self) -> &mut Opts {
                &mut self.$($path).+
            }
            $(options!(@$opt);)+
        }
    };
    ($t:ident $(<$($g:ident),+>)?: $($opt:ident),+) => {
        options!($t $(<$($g),+>)? [opts]: $($opt),+);
    };
    (@version) => {
        /// Django's `version=` for this call (default: the client's `version`).
        pub fn version(mut self, v: i64) -> Self {
            self.opts_mut().version = Some(v);
            self
        }
    };
    (@delta) => {
        /// Django's `delta=` (default 1).
        pub fn delta(mut self, d: i64) -> Self {
            self.delta = d;
            self
        }
    };
    (@timeout) => {
        /// Django's `timeout=` for this call: a `Duration`, `Timeout::Never`,
        /// or `Duration::ZERO` to store nothing and remove the old value.
        pub fn timeout(mut self, t: impl Into<Timeout>) -> Self {
            self.opts_mut().timeout = t.into();
            self
        }
    };
}

/// The reply of an operation that answers yes or no.
fn boolean(r: OpReply) -> Result<bool, Error> {
    match r {
        OpReply::Bool(b) => Ok(b),
        r => Err(unexpected(r)),
    }
}

/// The reply of an operation that answers only success.
fn done(r: OpReply) -> Result<(), Error> {
    match r {
        OpReply::Done => Ok(()),
        r => Err(unexpected(r)),
    }
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

/// `cache.get::<T>(key)`: resolves to `Some(value)`, or `None` on a miss.
/// Refine with `.version(v)`, or turn into Django's `get(key, default=)`
/// with [`Get::default`].
#[must_use = "a request does nothing until it is awaited"]
pub struct Get<T> {
    pub(crate) cache: Cache,
    pub(crate) key: String,
    pub(crate) opts: Opts,
    pub(crate) _t: PhantomData<fn() -> T>,
}
options!(Get<T>: version);

impl<T: DeserializeOwned + Send + 'static> IntoFuture for Get<T> {
    type Output = Result<Option<T>, Error>;
    type IntoFuture = BoxFuture<Self::Output>;
    fn into_future(self) -> Self::IntoFuture {
        let down_is_miss = self.cache.inner.down_is_miss;
        miss_if_down(down_is_miss, None, async move {
            match self.cache.keyed(&self.key, self.opts.version, Retry::Safe, Op::Get).await? {
                OpReply::Value(v) => v.map(|b| decode(&self.key, &b)).transpose(),
                r => Err(unexpected(r)),
            }
        })
    }
}

impl<T> Get<T> {
    /// Django's `get(key, default=…)`: resolves to the cached value, or to
    /// `value` on a miss (nothing is stored).
    pub fn default(self, value: T) -> GetDefault<T> {
        GetDefault { get: self, value }
    }
}

/// `cache.get(key).default(value)`: the cached value, or `value` on a miss.
#[must_use = "a request does nothing until it is awaited"]
pub struct GetDefault<T> {
    get: Get<T>,
    value: T,
}

impl<T> GetDefault<T> {
    /// Django's `version=` for this call (default: the client's `version`).
    pub fn version(mut self, v: i64) -> Self {
        self.get.opts.version = Some(v);
        self
    }
}

impl<T: DeserializeOwned + Send + 'static> IntoFuture for GetDefault<T> {
    type Output = Result<T, Error>;
    type IntoFuture = BoxFuture<Self::Output>;
    fn into_future(self) -> Self::IntoFuture {
        let GetDefault { get, value } = self;
        Box::pin(async move { Ok(get.await?.unwrap_or(value)) })
    }
}

/// `cache.get_raw(key)`: the stored bytes as they are, not decoded (what a
/// RESP client wrote, say).
#[must_use = "a request does nothing until it is awaited"]
pub struct GetRaw {
    pub(crate) cache: Cache,
    pub(crate) key: String,
    pub(crate) opts: Opts,
}
options!(GetRaw: version);

impl IntoFuture for GetRaw {
    type Output = Result<Option<Bytes>, Error>;
    type IntoFuture = BoxFuture<Self::Output>;
    fn into_future(self) -> Self::IntoFuture {
        let down_is_miss = self.cache.inner.down_is_miss;
        miss_if_down(down_is_miss, None, async move {
            match self.cache.keyed(&self.key, self.opts.version, Retry::Safe, Op::Get).await? {
                OpReply::Value(v) => Ok(v),
                r => Err(unexpected(r)),
            }
        })
    }
}

/// `cache.ttl(key)`: how long a key has left. Resolves to `None` if the key
/// is missing, `Some(Timeout::Never)` if it never expires, and
/// `Some(Timeout::After(left))` otherwise.
#[must_use = "a request does nothing until it is awaited"]
pub struct KeyTtl {
    pub(crate) cache: Cache,
    pub(crate) key: String,
    pub(crate) opts: Opts,
}
options!(KeyTtl: version);

impl IntoFuture for KeyTtl {
    type Output = Result<Option<Timeout>, Error>;
    type IntoFuture = BoxFuture<Self::Output>;
    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            match self.cache.keyed(&self.key, self.opts.version, Retry::Safe, Op::Ttl).await? {
                OpReply::Ttl(None) => Ok(None),
                OpReply::Ttl(Some(Ttl::Never)) => Ok(Some(Timeout::Never)),
                OpReply::Ttl(Some(Ttl::Millis(ms))) => Ok(Some(Timeout::After(std::time::Duration::from_millis(ms)))),
                r => Err(unexpected(r)),
            }
        })
    }
}

/// The shared part of the single-key writes: the value, encoded once.
pub(crate) struct Write {
    cache: Cache,
    key: String,
    value: Result<Bytes, Error>,
    opts: Opts,
}

impl Write {
    pub(crate) fn new(cache: &Cache, key: &str, value: Result<Bytes, Error>) -> Write {
        Write { cache: cache.clone(), key: key.to_owned(), value, opts: Opts::default() }
    }

    /// Resolves the target (key, server, connection; limits checked) and
    /// sends `make(key, value, ttl)` to it.
    async fn send(&mut self, retry: Retry, make: fn(Bytes, Bytes, Ttl) -> Op) -> Result<OpReply, Error> {
        let value = std::mem::replace(&mut self.value, Ok(Bytes::new()))?;
        let c = &self.cache;
        let t = c.target(&self.key, self.opts.version, Some(&value)).await?;
        let op = make(c.wire_key(&t.key), value, c.resolve_ttl(self.opts.timeout));
        c.op(&t, retry, op).await
    }
}

/// `cache.set(key, &value)`: stores the value. Refine with `.timeout(t)`
/// and `.version(v)`.
#[must_use = "a request does nothing until it is awaited"]
pub struct Set {
    pub(crate) w: Write,
}
options!(Set[w.opts]: version, timeout);

impl IntoFuture for Set {
    type Output = Result<(), Error>;
    type IntoFuture = BoxFuture<Self::Output>;
    fn into_future(self) -> Self::IntoFuture {
        let down_is_miss = self.w.cache.inner.down_is_miss;
        miss_if_down(down_is_miss, (), async move {
            let mut w = self.w;
            match w.send(Retry::Safe, Op::Set).await {
                Ok(OpReply::Done) => Ok(()),
                Ok(r) => Err(unexpected(r)),
                // Django's memcached rule: a value refused for its size
                // removes the old one, so a stale value is never served
                // after a failed write.
                Err(e @ Error::ValueTooLarge { .. }) => {
                    Delete { cache: w.cache.clone(), key: w.key.clone(), opts: w.opts }.await?;
                    Err(e)
                }
                Err(e) => Err(e),
            }
        })
    }
}

/// `cache.add(key, &value)`: stores only if the key is absent (or
/// expired); resolves to whether it stored.
#[must_use = "a request does nothing until it is awaited"]
pub struct Add {
    pub(crate) w: Write,
}
options!(Add[w.opts]: version, timeout);

impl IntoFuture for Add {
    type Output = Result<bool, Error>;
    type IntoFuture = BoxFuture<Self::Output>;
    fn into_future(self) -> Self::IntoFuture {
        let down_is_miss = self.w.cache.inner.down_is_miss;
        miss_if_down(down_is_miss, false, async move {
            let mut w = self.w;
            boolean(w.send(Retry::OnlyIfUnsent, Op::Add).await?)
        })
    }
}

/// `cache.get_or_set(key, &default)`: the cached value, storing `default`
/// first on a miss.
#[must_use = "a request does nothing until it is awaited"]
pub struct GetOrSet<T> {
    pub(crate) w: Write,
    pub(crate) _t: PhantomData<fn() -> T>,
}
options!(GetOrSet<T>[w.opts]: version, timeout);

impl<T: DeserializeOwned + Send + 'static> IntoFuture for GetOrSet<T> {
    type Output = Result<T, Error>;
    type IntoFuture = BoxFuture<Self::Output>;
    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let mut w = self.w;
            match w.send(Retry::Safe, Op::GetOrAdd).await? {
                OpReply::Value(Some(held)) => decode(&w.key, &held),
                r => Err(unexpected(r)),
            }
        })
    }
}

/// `cache.get_or_set_with(key, f)`: the cached value, computing it with
/// `f` only on a miss.
#[must_use = "a request does nothing until it is awaited"]
pub struct GetOrSetWith<T, F> {
    pub(crate) cache: Cache,
    pub(crate) key: String,
    pub(crate) f: F,
    pub(crate) opts: Opts,
    pub(crate) _t: PhantomData<fn() -> T>,
}
options!(GetOrSetWith<T, F>: version, timeout);

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
            let version = c.version(&self.opts);
            let get = |c: &Cache| c.get::<T>(&self.key).version(version);
            if let Some(v) = get(&c).await? {
                return Ok(v);
            }
            let full = c.key(&self.key, Some(version));
            let gate = c.inner.computing.lock().expect("lock poisoned").entry(full.clone()).or_default().clone();
            let result = async {
                let _turn = gate.lock().await;
                // Whoever held the gate before us may have filled the key.
                if let Some(v) = get(&c).await? {
                    return Ok(v);
                }
                let value = (self.f)().await;
                c.get_or_set(&self.key, &value).version(version).timeout(self.opts.timeout).await
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

/// `cache.get_many(keys)`: the keys present, with their values.
#[must_use = "a request does nothing until it is awaited"]
pub struct GetMany<T> {
    pub(crate) cache: Cache,
    pub(crate) keys: Vec<String>,
    pub(crate) opts: Opts,
    pub(crate) _t: PhantomData<fn() -> T>,
}
options!(GetMany<T>: version);

impl<T: DeserializeOwned + Send + 'static> IntoFuture for GetMany<T> {
    type Output = Result<HashMap<String, T>, Error>;
    type IntoFuture = BoxFuture<Self::Output>;
    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let c = &self.cache;
            let version = c.version(&self.opts);
            let full = self.keys.iter().map(|k| (c.key(k, Some(version)), ()));
            let calls = c.by_node(full).into_iter().map(|(n, keys)| async move {
                let node = &c.inner.nodes[n];
                let fetched = async {
                    let conn = c.conn(node).await?;
                    for (k, _) in &keys {
                        check(&conn.info, k, None)?;
                    }
                    let kbs: Vec<Bytes> = keys.iter().map(|(k, _)| c.wire_key(k)).collect();
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
                        let user = user_part(&k, &c.inner.prefix, version);
                        out.insert(user.to_owned(), decode(user, &v)?);
                    }
                }
            }
            Ok(out)
        })
    }
}

/// `cache.set_many(items)`: stores many values; resolves to the keys that
/// could not be stored.
#[must_use = "a request does nothing until it is awaited"]
pub struct SetMany {
    pub(crate) cache: Cache,
    pub(crate) items: Vec<(String, Result<Bytes, Error>)>,
    pub(crate) opts: Opts,
}
options!(SetMany: version, timeout);

impl IntoFuture for SetMany {
    type Output = Result<Vec<String>, Error>;
    type IntoFuture = BoxFuture<Self::Output>;
    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let c = &self.cache;
            let ttl = c.resolve_ttl(self.opts.timeout);
            let mut items = Vec::with_capacity(self.items.len());
            for (k, v) in self.items {
                items.push((c.key(&k, self.opts.version), (k, v?)));
            }
            let calls = c.by_node(items).into_iter().map(|(n, items)| async move {
                let node = &c.inner.nodes[n];
                let conn = match c.conn(node).await {
                    Err(Error::Connection { .. }) if c.inner.down_is_miss => {
                        return Ok(items.into_iter().map(|(_, (user, _))| user).collect());
                    }
                    r => r?,
                };
                let info = &conn.info;
                let mut failed = Vec::new();
                let mut send = Vec::new();
                let mut sent_keys = Vec::new();
                let mut too_large = Vec::new();
                for (full, (user, value)) in items {
                    if full.len() as u64 > info.max_key_bytes {
                        failed.push(user);
                    } else if value.len() as u64 > info.max_value_bytes {
                        // Refused for its size: the old value goes too.
                        too_large.push(c.wire_key(&full));
                        failed.push(user);
                    } else {
                        send.push((c.wire_key(&full), value));
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

/// `cache.delete(key)`: resolves to whether a value was removed.
#[must_use = "a request does nothing until it is awaited"]
pub struct Delete {
    pub(crate) cache: Cache,
    pub(crate) key: String,
    pub(crate) opts: Opts,
}
options!(Delete: version);

impl IntoFuture for Delete {
    type Output = Result<bool, Error>;
    type IntoFuture = BoxFuture<Self::Output>;
    fn into_future(self) -> Self::IntoFuture {
        let down_is_miss = self.cache.inner.down_is_miss;
        miss_if_down(down_is_miss, false, async move {
            boolean(self.cache.keyed(&self.key, self.opts.version, Retry::Safe, Op::Delete).await?)
        })
    }
}

/// `cache.delete_many(keys)`: removes every key given.
#[must_use = "a request does nothing until it is awaited"]
pub struct DeleteMany {
    pub(crate) cache: Cache,
    pub(crate) keys: Vec<String>,
    pub(crate) opts: Opts,
}
options!(DeleteMany: version);

impl IntoFuture for DeleteMany {
    type Output = Result<(), Error>;
    type IntoFuture = BoxFuture<Self::Output>;
    fn into_future(self) -> Self::IntoFuture {
        let down_is_miss = self.cache.inner.down_is_miss;
        miss_if_down(down_is_miss, (), async move {
            let c = &self.cache;
            let full = self.keys.iter().map(|k| (c.key(k, self.opts.version), ()));
            let calls = c.by_node(full).into_iter().map(|(n, keys)| async move {
                let node = &c.inner.nodes[n];
                let kbs: Vec<Bytes> = keys.iter().map(|(k, _)| c.wire_key(k)).collect();
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

/// `cache.touch(key)`: gives a live key a new timeout; resolves to false
/// if it is missing.
#[must_use = "a request does nothing until it is awaited"]
pub struct Touch {
    pub(crate) cache: Cache,
    pub(crate) key: String,
    pub(crate) opts: Opts,
}
options!(Touch: version, timeout);

impl IntoFuture for Touch {
    type Output = Result<bool, Error>;
    type IntoFuture = BoxFuture<Self::Output>;
    fn into_future(self) -> Self::IntoFuture {
        let down_is_miss = self.cache.inner.down_is_miss;
        miss_if_down(down_is_miss, false, async move {
            let c = &self.cache;
            let ttl = c.resolve_ttl(self.opts.timeout);
            boolean(c.keyed(&self.key, self.opts.version, Retry::Safe, |k| Op::Touch(k, ttl)).await?)
        })
    }
}

/// `cache.incr(key)` / `cache.decr(key)`: adds (or subtracts) `delta`
/// (default 1) and resolves to the new value.
#[must_use = "a request does nothing until it is awaited"]
pub struct Incr {
    pub(crate) cache: Cache,
    pub(crate) key: String,
    pub(crate) delta: i64,
    pub(crate) sign: i64,
    pub(crate) opts: Opts,
}
options!(Incr: version, delta);

impl IntoFuture for Incr {
    type Output = Result<i64, Error>;
    type IntoFuture = BoxFuture<Self::Output>;
    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let c = &self.cache;
            let delta = self.delta.checked_mul(self.sign).ok_or(Error::Overflow)?;
            match c.keyed(&self.key, self.opts.version, Retry::OnlyIfUnsent, |k| Op::Incr(k, delta)).await? {
                OpReply::Int(n) => Ok(n),
                r => Err(unexpected(r)),
            }
        })
    }
}

/// `cache.has_key(key)`: resolves to whether the key is present.
#[must_use = "a request does nothing until it is awaited"]
pub struct HasKey {
    pub(crate) cache: Cache,
    pub(crate) key: String,
    pub(crate) opts: Opts,
}
options!(HasKey: version);

impl IntoFuture for HasKey {
    type Output = Result<bool, Error>;
    type IntoFuture = BoxFuture<Self::Output>;
    fn into_future(self) -> Self::IntoFuture {
        let down_is_miss = self.cache.inner.down_is_miss;
        miss_if_down(down_is_miss, false, async move {
            boolean(self.cache.keyed(&self.key, self.opts.version, Retry::Safe, Op::HasKey).await?)
        })
    }
}

/// `cache.incr_version(key)` / `cache.decr_version(key)`: moves the value
/// to another version and resolves to the new version.
#[must_use = "a request does nothing until it is awaited"]
pub struct IncrVersion {
    pub(crate) cache: Cache,
    pub(crate) key: String,
    pub(crate) delta: i64,
    pub(crate) sign: i64,
    pub(crate) opts: Opts,
}
options!(IncrVersion: version, delta);

impl IntoFuture for IncrVersion {
    type Output = Result<i64, Error>;
    type IntoFuture = BoxFuture<Self::Output>;
    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let c = &self.cache;
            let version = c.version(&self.opts);
            let delta = self.delta.checked_mul(self.sign).ok_or(Error::Overflow)?;
            let new_version = version.checked_add(delta).ok_or(Error::Overflow)?;
            let from = c.target(&self.key, Some(version), None).await?;
            let to_key = c.key(&self.key, Some(new_version));
            let (fb, tb) = (c.wire_key(&from.key), c.wire_key(&to_key));
            if std::ptr::eq(from.node, c.node_for(&to_key)) {
                done(c.op(&from, Retry::OnlyIfUnsent, Op::Rename(fb, tb)).await?)?;
            } else {
                // The two versions live on different servers: copy the raw
                // bytes with the time they have left, then delete, as Django
                // does; the value keeps its expiry.
                let (value, ttl) = match c.op(&from, Retry::Safe, Op::GetWithTtl(fb.clone())).await? {
                    OpReply::ValueWithTtl(Some(found)) => found,
                    OpReply::ValueWithTtl(None) => return Err(Error::NotFound),
                    r => return Err(unexpected(r)),
                };
                let to = c.target(&self.key, Some(new_version), Some(&value)).await?;
                done(c.op(&to, Retry::Safe, Op::Set(tb, value, ttl)).await?)?;
                boolean(c.op(&from, Retry::Safe, Op::Delete(fb)).await?)?;
            }
            Ok(new_version)
        })
    }
}
