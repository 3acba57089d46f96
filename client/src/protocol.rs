//! The wire protocol shared by the client and `cachetd`: a tarpc service over
//! length-delimited frames of MessagePack (rmp-serde). Keys and values travel
//! as MessagePack binary (`serde_bytes`), never as arrays of integers.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// A TTL as the server applies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireTtl {
    Never,
    /// Milliseconds from now; 0 stores nothing and removes any old value.
    Millis(u64),
}

/// Errors as they cross the wire; the client maps them to [`crate::Error`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireError {
    NotFound,
    NotAnInteger,
    Overflow,
    InvalidKey(String),
    ValueTooLarge { size: u64, max: u64 },
    Unauthorized,
    CacheFull(String),
    Unavailable(String),
    Server(String),
}

/// What the server tells a client at `hello`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    pub version: String,
    pub max_key_bytes: u64,
    pub max_value_bytes: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireStats {
    pub entries: u64,
    pub memory_bytes: u64,
    pub hits: u64,
    pub misses: u64,
    pub sets: u64,
    pub deletes: u64,
    pub expired: u64,
    pub evicted: u64,
    pub log_bytes: u64,
    pub log_live_bytes: u64,
    pub uptime_secs: u64,
    pub connections: u64,
}

/// Frames above this are refused by the client's codec (the server derives
/// its own limit from its maximum value size).
pub const CLIENT_MAX_FRAME: usize = 1 << 30;

/// The server's frame limit for a given maximum value size: room for one
/// value twice over plus keys and framing, so a value just over the limit
/// still reaches the handler and gets a clear `ValueTooLarge`.
pub fn server_max_frame(max_value_bytes: usize) -> usize {
    max_value_bytes.saturating_mul(2).saturating_add(1 << 20)
}

#[tarpc::service]
pub trait CacheService {
    /// Starts a session: checks the token (when the server requires one) and
    /// reports the server's limits.
    async fn hello(token: Option<String>) -> Result<ServerInfo, WireError>;
    async fn get(key: ByteBuf) -> Result<Option<ByteBuf>, WireError>;
    /// One slot per key, in order.
    async fn get_many(keys: Vec<ByteBuf>) -> Result<Vec<Option<ByteBuf>>, WireError>;
    async fn set(key: ByteBuf, value: ByteBuf, ttl: WireTtl) -> Result<(), WireError>;
    /// Returns the positions of the items that were refused.
    async fn set_many(items: Vec<(ByteBuf, ByteBuf)>, ttl: WireTtl) -> Result<Vec<u32>, WireError>;
    async fn add(key: ByteBuf, value: ByteBuf, ttl: WireTtl) -> Result<bool, WireError>;
    /// Stores `value` unless the key holds one; returns what is held afterwards.
    async fn get_or_add(key: ByteBuf, value: ByteBuf, ttl: WireTtl) -> Result<ByteBuf, WireError>;
    async fn delete(key: ByteBuf) -> Result<bool, WireError>;
    async fn delete_many(keys: Vec<ByteBuf>) -> Result<(), WireError>;
    async fn clear() -> Result<(), WireError>;
    async fn touch(key: ByteBuf, ttl: WireTtl) -> Result<bool, WireError>;
    async fn incr(key: ByteBuf, delta: i64) -> Result<i64, WireError>;
    async fn has_key(key: ByteBuf) -> Result<bool, WireError>;
    /// Moves a value to another key keeping its expiry (for `incr_version`).
    async fn rename(from: ByteBuf, to: ByteBuf) -> Result<(), WireError>;
    async fn stats() -> Result<WireStats, WireError>;
    /// Several single-key operations in one request, applied back to back;
    /// one reply per operation, in order. The client coalesces concurrent
    /// calls into batches, so per-request overhead is paid once per batch.
    async fn batch(ops: Vec<Op>) -> Result<Vec<Result<OpReply, WireError>>, WireError>;
}

/// One operation inside a `batch` request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Get(ByteBuf),
    Set(ByteBuf, ByteBuf, WireTtl),
    Add(ByteBuf, ByteBuf, WireTtl),
    GetOrAdd(ByteBuf, ByteBuf, WireTtl),
    Delete(ByteBuf),
    Touch(ByteBuf, WireTtl),
    Incr(ByteBuf, i64),
    HasKey(ByteBuf),
    Rename(ByteBuf, ByteBuf),
}

/// The reply to one `Op` of a batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpReply {
    Value(Option<ByteBuf>),
    Done,
    Bool(bool),
    Int(i64),
}
