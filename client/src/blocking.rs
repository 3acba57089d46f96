//! A blocking client for programs without an async runtime, as reqwest's
//! `blocking` module offers: the same calls as [`crate::Cache`], each
//! refined the same way and then run with `.send()`.
//!
//! ```
//! # cachet::doctest::with_daemon(|addr| {
//! use cachet::blocking::Cache;
//! use std::time::Duration;
//!
//! let cache = Cache::connect(addr)?;
//! cache.set("greeting", "hello").timeout(Duration::from_secs(60)).send()?;
//! let g: Option<String> = cache.get("greeting").send()?;
//! assert_eq!(g.as_deref(), Some("hello"));
//! assert_eq!(cache.incr("n").send().is_err(), true);
//! # Ok::<(), cachet::Error>(()) }).unwrap();
//! ```
//!
//! The client runs a small tokio runtime on one thread of its own; clones
//! share it. Do not call `.send()` from inside an async runtime (it
//! panics, as blocking inside async code would stall it): use the async
//! [`crate::Cache`] there.

use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::protocol::{Bytes, ServerInfo};
use crate::request::{
    Add, Delete, DeleteMany, Get, GetDefault, GetMany, GetOrSet, GetOrSetWith, GetRaw, HasKey, Incr, IncrVersion,
    KeyTtl, Set, SetMany, Touch,
};
use crate::{Error, Stats, Timeout};

/// The blocking twin of [`crate::Cache`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Cache {
    cache: crate::Cache,
    rt: Arc<tokio::runtime::Runtime>,
}

/// The blocking twin of [`crate::Builder`]: the same settings, and a
/// `connect` that blocks.
#[derive(Debug, Default)]
#[must_use = "a builder does nothing until connect() is called"]
pub struct Builder {
    inner: crate::Builder,
}

macro_rules! forward_setters {
    ($($(#[$doc:meta])* $name:ident($arg:ty);)*) => {
        $(
            $(#[$doc])*
            pub fn $name(self, value: $arg) -> Self {
                Builder { inner: self.inner.$name(value) }
            }
        )*
    };
}

impl Builder {
    forward_setters! {
        /// See [`crate::Builder::server`].
        server(impl Into<String>);
        /// See [`crate::Builder::key_prefix`].
        key_prefix(impl Into<String>);
        /// See [`crate::Builder::version`].
        version(i64);
        /// See [`crate::Builder::default_timeout`].
        default_timeout(Duration);
        /// See [`crate::Builder::request_timeout`].
        request_timeout(Duration);
        /// See [`crate::Builder::down_is_miss`].
        down_is_miss(bool);
        /// See [`crate::Builder::database`].
        database(u8);
        /// See [`crate::Builder::auth_token`].
        auth_token(impl Into<String>);
    }

    /// Starts the client's runtime and connects, as
    /// [`crate::Builder::connect`] does.
    pub fn connect(self) -> Result<Cache, Error> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("cachet-blocking")
            .enable_all()
            .build()
            .map_err(|e| Error::Server(format!("could not start the blocking client's runtime: {e}")))?;
        let cache = rt.block_on(self.inner.connect())?;
        Ok(Cache { cache, rt: Arc::new(rt) })
    }
}

/// One call of the blocking client: refine it as the async request
/// (`.timeout(…)`, `.version(…)`, `.delta(…)`, `.default(…)`), then run it
/// with [`send`](Call::send).
#[must_use = "a call does nothing until send() is called"]
pub struct Call<R> {
    rt: Arc<tokio::runtime::Runtime>,
    request: R,
}

impl<R: IntoFuture> Call<R> {
    /// Runs the call and waits for its result.
    pub fn send(self) -> R::Output {
        self.rt.block_on(self.request.into_future())
    }
}

/// Gives `Call<R>` the refiners `R` has, forwarding each.
macro_rules! refiners {
    ($t:ident $(<$($g:ident),+>)?: $($opt:ident),+) => {
        impl$(<$($g),+>)? Call<$t$(<$($g),+>)?> {
            $(refiners!(@$opt);)+
        }
    };
    (@version) => {
        /// Django's `version=` for this call.
        pub fn version(self, v: i64) -> Self {
            Call { rt: self.rt, request: self.request.version(v) }
        }
    };
    (@timeout) => {
        /// Django's `timeout=` for this call.
        pub fn timeout(self, t: impl Into<Timeout>) -> Self {
            Call { rt: self.rt, request: self.request.timeout(t) }
        }
    };
    (@delta) => {
        /// Django's `delta=` (default 1).
        pub fn delta(self, d: i64) -> Self {
            Call { rt: self.rt, request: self.request.delta(d) }
        }
    };
}

refiners!(Get<T>: version);
refiners!(GetDefault<T>: version);
refiners!(GetRaw: version);
refiners!(Set: version, timeout);
refiners!(Add: version, timeout);
refiners!(GetOrSet<T>: version, timeout);
refiners!(GetOrSetWith<T, F>: version, timeout);
refiners!(GetMany<T>: version);
refiners!(SetMany: version, timeout);
refiners!(Delete: version);
refiners!(DeleteMany: version);
refiners!(Touch: version, timeout);
refiners!(Incr: version, delta);
refiners!(HasKey: version);
refiners!(KeyTtl: version);
refiners!(IncrVersion: version, delta);

impl<T> Call<Get<T>> {
    /// Django's `get(key, default=…)`: the value, or `value` on a miss.
    pub fn default(self, value: T) -> Call<GetDefault<T>> {
        Call { rt: self.rt, request: self.request.default(value) }
    }
}

impl Cache {
    /// Configures a blocking client; see [`crate::Cache::builder`].
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// Connects to one server with the defaults; see [`crate::Cache::connect`].
    pub fn connect(addr: impl Into<String>) -> Result<Cache, Error> {
        Cache::builder().server(addr).connect()
    }

    /// The async client this one drives, sharing its connections.
    pub fn as_async(&self) -> &crate::Cache {
        &self.cache
    }

    fn call<R>(&self, request: R) -> Call<R> {
        Call { rt: self.rt.clone(), request }
    }

    fn wait<T>(&self, f: impl Future<Output = T>) -> T {
        self.rt.block_on(f)
    }

    /// See [`crate::Cache::get`].
    pub fn get<T: DeserializeOwned + Send + 'static>(&self, key: impl AsRef<str>) -> Call<Get<T>> {
        self.call(self.cache.get(key))
    }

    /// See [`crate::Cache::get_raw`].
    pub fn get_raw(&self, key: impl AsRef<str>) -> Call<GetRaw> {
        self.call(self.cache.get_raw(key))
    }

    /// See [`crate::Cache::set`].
    pub fn set<V: Serialize + ?Sized>(&self, key: impl AsRef<str>, value: &V) -> Call<Set> {
        self.call(self.cache.set(key, value))
    }

    /// See [`crate::Cache::set_raw`].
    pub fn set_raw(&self, key: impl AsRef<str>, value: impl Into<Bytes>) -> Call<Set> {
        self.call(self.cache.set_raw(key, value))
    }

    /// See [`crate::Cache::add`].
    pub fn add<V: Serialize + ?Sized>(&self, key: impl AsRef<str>, value: &V) -> Call<Add> {
        self.call(self.cache.add(key, value))
    }

    /// See [`crate::Cache::get_or_set`].
    pub fn get_or_set<T: Serialize + DeserializeOwned + Send + 'static>(
        &self,
        key: impl AsRef<str>,
        default: &T,
    ) -> Call<GetOrSet<T>> {
        self.call(self.cache.get_or_set(key, default))
    }

    /// See [`crate::Cache::get_or_set_with`]; here `f` is a plain closure,
    /// run on the client's runtime thread only on a miss.
    #[allow(clippy::type_complexity)]
    pub fn get_or_set_with<T, F>(
        &self,
        key: impl AsRef<str>,
        f: F,
    ) -> Call<GetOrSetWith<T, impl FnOnce() -> std::future::Ready<T> + Send + 'static>>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        self.call(self.cache.get_or_set_with(key, move || std::future::ready(f())))
    }

    /// See [`crate::Cache::get_many`].
    pub fn get_many<T: DeserializeOwned + Send + 'static>(
        &self,
        keys: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> Call<GetMany<T>> {
        self.call(self.cache.get_many(keys))
    }

    /// See [`crate::Cache::set_many`].
    pub fn set_many<K: AsRef<str>, V: Serialize>(&self, items: impl IntoIterator<Item = (K, V)>) -> Call<SetMany> {
        self.call(self.cache.set_many(items))
    }

    /// See [`crate::Cache::delete`].
    pub fn delete(&self, key: impl AsRef<str>) -> Call<Delete> {
        self.call(self.cache.delete(key))
    }

    /// See [`crate::Cache::delete_many`].
    pub fn delete_many(&self, keys: impl IntoIterator<Item = impl AsRef<str>>) -> Call<DeleteMany> {
        self.call(self.cache.delete_many(keys))
    }

    /// See [`crate::Cache::touch`].
    pub fn touch(&self, key: impl AsRef<str>) -> Call<Touch> {
        self.call(self.cache.touch(key))
    }

    /// See [`crate::Cache::incr`].
    pub fn incr(&self, key: impl AsRef<str>) -> Call<Incr> {
        self.call(self.cache.incr(key))
    }

    /// See [`crate::Cache::decr`].
    pub fn decr(&self, key: impl AsRef<str>) -> Call<Incr> {
        self.call(self.cache.decr(key))
    }

    /// See [`crate::Cache::has_key`].
    pub fn has_key(&self, key: impl AsRef<str>) -> Call<HasKey> {
        self.call(self.cache.has_key(key))
    }

    /// See [`crate::Cache::ttl`].
    pub fn ttl(&self, key: impl AsRef<str>) -> Call<KeyTtl> {
        self.call(self.cache.ttl(key))
    }

    /// See [`crate::Cache::incr_version`].
    pub fn incr_version(&self, key: impl AsRef<str>) -> Call<IncrVersion> {
        self.call(self.cache.incr_version(key))
    }

    /// See [`crate::Cache::decr_version`].
    pub fn decr_version(&self, key: impl AsRef<str>) -> Call<IncrVersion> {
        self.call(self.cache.decr_version(key))
    }

    /// See [`crate::Cache::clear`].
    pub fn clear(&self) -> Result<(), Error> {
        self.wait(self.cache.clear())
    }

    /// See [`crate::Cache::clear_prefix`].
    pub fn clear_prefix(&self) -> Result<(), Error> {
        self.wait(self.cache.clear_prefix())
    }

    /// See [`crate::Cache::stats`].
    pub fn stats(&self) -> Result<Stats, Error> {
        self.wait(self.cache.stats())
    }

    /// See [`crate::Cache::ping`].
    pub fn ping(&self) -> Result<Duration, Error> {
        self.wait(self.cache.ping())
    }

    /// See [`crate::Cache::server_info`].
    pub fn server_info(&self) -> Result<Vec<(String, ServerInfo)>, Error> {
        self.wait(self.cache.server_info())
    }

    /// See [`crate::Cache::close`].
    pub fn close(&self) -> Result<(), Error> {
        self.wait(self.cache.close())
    }
}
