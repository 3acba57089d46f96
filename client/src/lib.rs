//! The `cachet` client: Django's low-level cache API (`get`, `set`, `add`,
//! `get_or_set`, `incr`, versions, timeouts …) over `cachetd`, the persistent
//! cache daemon, through tarpc.
//!
//! ```no_run
//! # async fn demo() -> Result<(), cachet::Error> {
//! use cachet::{Cache, Timeout};
//! use std::time::Duration;
//!
//! let cache = Cache::connect("127.0.0.1:7311").await?;
//! cache.set("greeting", "hello").timeout(Duration::from_secs(60)).await?;
//! let g: Option<String> = cache.get("greeting").await?;
//! cache.set("hits", &0).timeout(Timeout::Never).await?;
//! let n = cache.incr("hits").delta(5).await?;
//! # Ok(()) }
//! ```

mod builder;
mod cache;
#[cfg(feature = "cli")]
pub mod cli;
mod connection;
mod error;
mod key;
pub mod protocol;
mod request;
mod shard;
mod timeout;

pub use builder::Builder;
pub use cache::{Cache, Stats};
pub use error::Error;
pub use request::{
    Add, Delete, DeleteMany, Get, GetMany, GetOrSet, GetOrSetWith, HasKey, Incr, IncrVersion, Set, SetMany, Touch,
};
pub use timeout::Timeout;
