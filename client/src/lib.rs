//! The `cachet` client: Django's low-level cache API (`get`, `set`, `add`,
//! `get_or_set`, `incr`, versions, timeouts …) over `cachetd`, the persistent
//! cache daemon, through tarpc.
//!
//! Add it with `cargo add cachet` (or `cachet = { path = "client" }` inside
//! this workspace). Every call returns a request that is refined with
//! `.timeout(…)`, `.version(…)` or `.delta(…)` where Django's method takes
//! that argument, and then awaited; values are any serde type.
//!
//! ```
//! # cachet::doctest::with_daemon(|addr| {
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use cachet::{Cache, Timeout};
//! use std::time::Duration;
//!
//! let cache = Cache::connect(addr).await?; // "127.0.0.1:7311" by default
//! cache.set("greeting", "hello").timeout(Duration::from_secs(60)).await?;
//! let g: Option<String> = cache.get("greeting").await?;
//! assert_eq!(g.as_deref(), Some("hello"));
//! cache.set("hits", &0).timeout(Timeout::Never).await?;
//! assert_eq!(cache.incr("hits").delta(5).await?, 5);
//! # Ok::<(), cachet::Error>(()) }).unwrap() });
//! ```
//!
//! A request does nothing until it is awaited, and the compiler says so
//! (`#[must_use]`):
//!
//! ```compile_fail
//! # #![deny(unused_must_use)]
//! # async fn forgot(cache: cachet::Cache) {
//! cache.set("k", &1); // error: unused `Set` that must be used
//! # }
//! ```
//!
//! - [`Cache`]: the calls, each with a runnable example; [`Builder`]: the
//!   settings (several servers, key prefix, version, timeouts, token).
//! - [`blocking::Cache`]: the same calls for programs without an async
//!   runtime.
//! - [`Error`]: what can go wrong, each variant saying what to do.
//! - `client/examples/`: a web handler, a rate limiter, a sharded client.
#![deny(missing_docs)]

pub mod blocking;
mod builder;
mod cache;
#[cfg(feature = "cli")]
pub mod cli;
mod connection;
#[doc(hidden)]
pub mod doctest;
mod error;
mod key;
pub mod protocol;
mod request;
mod shard;
mod timeout;
#[cfg(feature = "tls")]
mod tls;

pub use builder::Builder;
pub use cache::{Cache, Stats};
pub use error::{DecodeError, Error};
pub use request::{
    Add, Delete, DeleteMany, Get, GetDefault, GetMany, GetOrSet, GetOrSetWith, GetRaw, HasKey, Incr, IncrVersion,
    KeyTtl, Set, SetMany, Touch,
};
pub use timeout::Timeout;
#[cfg(feature = "tls")]
pub use tls::Tls;
