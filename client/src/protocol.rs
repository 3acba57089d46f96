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

/// The MessagePack codec both sides use on the wire (rmp-serde, as
/// tokio-serde's), except that decoding can never take the process down: a
/// frame whose decoding panics (tarpc 0.38 panics on a request deadline so
/// far away that `Instant + Duration` overflows; found by the frame_decode
/// fuzzer) is an `InvalidData` error, which closes that one connection.
pub struct Codec<Item, SinkItem>(std::marker::PhantomData<fn() -> (Item, SinkItem)>);

impl<Item, SinkItem> Default for Codec<Item, SinkItem> {
    fn default() -> Self {
        Codec(std::marker::PhantomData)
    }
}

/// Decodes one frame as the daemon and the client do.
pub fn decode_frame<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> std::io::Result<T> {
    let invalid = |msg: String| std::io::Error::new(std::io::ErrorKind::InvalidData, msg);
    match std::panic::catch_unwind(|| rmp_serde::from_slice::<T>(bytes)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(invalid(format!("malformed frame: {e}"))),
        Err(_) => Err(invalid("malformed frame: decoding it panicked".into())),
    }
}

impl<Item, SinkItem> tokio_serde::Deserializer<Item> for Codec<Item, SinkItem>
where
    for<'a> Item: Deserialize<'a>,
{
    type Error = std::io::Error;

    fn deserialize(self: std::pin::Pin<&mut Self>, src: &bytes::BytesMut) -> std::io::Result<Item> {
        decode_frame(src)
    }
}

impl<Item, SinkItem: Serialize> tokio_serde::Serializer<SinkItem> for Codec<Item, SinkItem> {
    type Error = std::io::Error;

    fn serialize(self: std::pin::Pin<&mut Self>, item: &SinkItem) -> std::io::Result<bytes::Bytes> {
        rmp_serde::to_vec(item).map(Into::into).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_that_makes_tarpc_panic_is_an_error() {
        // Found by the frame_decode fuzzer: a request deadline of ~2^64 ns.
        let frame = include_bytes!("../../daemon/tests/data/frame-deadline-overflow.bin");
        let plain = std::panic::catch_unwind(|| {
            rmp_serde::from_slice::<tarpc::ClientMessage<CacheServiceRequest>>(&frame[4..])
        });
        assert!(plain.is_err(), "plain decoding no longer panics on this frame");
        let r = decode_frame::<tarpc::ClientMessage<CacheServiceRequest>>(&frame[4..]);
        assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::InvalidData);
    }
}
