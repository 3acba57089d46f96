//! The wire protocol shared by the client and `cachetd`: a tarpc service over
//! length-delimited frames of MessagePack (rmp-serde). Keys and values travel
//! as MessagePack binary (`Bytes`, whose serde form is a byte string), never
//! as arrays of integers; a copy kept for a retry costs a reference count.

pub use bytes::Bytes;
pub use cachet_types::Ttl;
use serde::{Deserialize, Serialize};

/// Errors as they cross the wire; the client maps them to [`crate::Error`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireError {
    /// The key is missing or expired.
    NotFound,
    /// The value is not an integer.
    NotAnInteger,
    /// The result would not fit in an `i64`.
    Overflow,
    /// The key is refused, with why.
    InvalidKey(String),
    /// The value is over the server's limit.
    ValueTooLarge {
        /// The value's size in bytes.
        size: u64,
        /// The server's `--max-value-bytes`.
        max: u64,
    },
    /// The session has not presented the server's token.
    Unauthorized,
    /// At the memory or entry cap, with no room to make.
    CacheFull(String),
    /// The storage is read-only, with why.
    Unavailable(String),
    /// Any other refusal, with its message.
    Server(String),
}

/// What the server tells a client at `hello`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// cachetd's version.
    pub version: String,
    /// The longest key it takes (`--max-key-bytes`).
    pub max_key_bytes: u64,
    /// The largest value it takes (`--max-value-bytes`).
    pub max_value_bytes: u64,
}

/// Declares the stats counters once: the struct, their names in order, and
/// how two servers' figures combine (`sum`, or `max` for uptime, the longest
/// pause and the read-only flag).
macro_rules! wire_stats {
    ($($(#[doc = $doc:literal])* $name:ident: $merge:ident,)*) => {
        /// A server's counters and sizes, as `stats` returns them.
        #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
        pub struct WireStats {
            $($(#[doc = $doc])* pub $name: u64,)*
        }

        impl WireStats {
            /// Every counter with its name, in declaration order (for
            /// printing and exporting).
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name)),*]
            }

            /// Adds another server's figures to these.
            pub fn merge(&mut self, other: &WireStats) {
                $(wire_stats!(@$merge self.$name, other.$name);)*
            }
        }
    };
    (@sum $a:expr, $b:expr) => { $a += $b };
    (@max $a:expr, $b:expr) => { $a = $a.max($b) };
}

wire_stats! {
    /// Entries held.
    entries: sum,
    /// Memory as `--max-memory` counts it.
    memory_bytes: sum,
    /// Reads that found their key.
    hits: sum,
    /// Reads that did not.
    misses: sum,
    /// Values stored.
    sets: sum,
    /// Keys deleted.
    deletes: sum,
    /// Entries removed because their time ran out.
    expired: sum,
    /// Entries removed to stay under the memory or entry cap.
    evicted: sum,
    /// Bytes of the log on disk.
    log_bytes: sum,
    /// Bytes of the log that hold live entries.
    log_live_bytes: sum,
    /// Segment files in the log.
    segments: sum,
    /// Compactions finished since start.
    compactions: sum,
    /// The longest a compaction slice held the engine, in µs.
    compaction_max_pause_us: max,
    /// 1 while the log cannot be written (writes refused, reads served).
    read_only: max,
    /// Seconds since the daemon started.
    uptime_secs: max,
    /// Client connections open now, every protocol.
    connections: sum,
}

/// Most keys (or operations, for `batch`) one request may carry: the server
/// refuses more, so a single request cannot hold the engine for long. The
/// client splits larger `get_many`/`set_many`/`delete_many` calls.
pub const MAX_KEYS_PER_REQUEST: usize = 4096;

/// Frames above this are refused by the client's codec (the server derives
/// its own limit from its maximum value size).
pub const CLIENT_MAX_FRAME: usize = 1 << 30;

/// The server's frame limit for a given maximum value size: room for one
/// value twice over plus keys and framing, so a value just over the limit
/// still reaches the handler and gets a clear `ValueTooLarge`.
pub fn server_max_frame(max_value_bytes: usize) -> usize {
    max_value_bytes.saturating_mul(2).saturating_add(1 << 20)
}

pub use service::*;

/// The service's definition; tarpc generates the client
/// ([`CacheServiceClient`]), the server side (`ServeCacheService`) and the
/// request and response enums from it, without doc comments of their own.
#[allow(missing_docs)]
mod service {
    use super::*;

    /// The calls a cachetd serves over tarpc.
    #[tarpc::service]
    pub trait CacheService {
        /// Starts a session: checks the token (when the server requires one) and
        /// reports the server's limits.
        async fn hello(token: Option<String>) -> Result<ServerInfo, WireError>;
        /// One slot per key, in order.
        async fn get_many(keys: Vec<Bytes>) -> Result<Vec<Option<Bytes>>, WireError>;
        /// Returns the positions of the items that were refused.
        async fn set_many(items: Vec<(Bytes, Bytes)>, ttl: Ttl) -> Result<Vec<u32>, WireError>;
        /// Removes every key given.
        async fn delete_many(keys: Vec<Bytes>) -> Result<(), WireError>;
        /// Removes everything.
        async fn clear() -> Result<(), WireError>;
        /// The server's counters.
        async fn stats() -> Result<WireStats, WireError>;
        /// Several single-key operations in one request, applied back to back;
        /// one reply per operation, in order. Every single-key call goes this
        /// way: the client coalesces concurrent calls into batches, so
        /// per-request overhead is paid once per batch.
        async fn batch(ops: Vec<Op>) -> Result<Vec<Result<OpReply, WireError>>, WireError>;
        /// Starts an online backup: the server takes a snapshot of its log
        /// (every write acknowledged before this call is in it) and lists
        /// its files; read them with `backup_read`, then release it with
        /// `backup_end` (a snapshot left idle for a minute is released).
        async fn backup_begin() -> Result<BackupPlan, WireError>;
        /// Up to `len` bytes of one file of a backup, from `offset`.
        async fn backup_read(id: u64, file: String, offset: u64, len: u32) -> Result<Bytes, WireError>;
        /// Releases a backup's snapshot.
        async fn backup_end(id: u64) -> Result<(), WireError>;
    }
}

/// What `backup_begin` returns: the backup's id and its files, each with the
/// bytes that belong to the backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupPlan {
    /// Names the backup in `backup_read` and `backup_end`.
    pub id: u64,
    /// File names (segments, oldest first, then the MANIFEST) and lengths.
    pub files: Vec<(String, u64)>,
}

/// The most bytes one `backup_read` returns.
pub const BACKUP_CHUNK: u32 = 1 << 20;

/// One operation inside a `batch` request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// The value of a key.
    Get(Bytes),
    /// Stores a value for a time.
    Set(Bytes, Bytes, Ttl),
    /// Stores a value only if the key is absent.
    Add(Bytes, Bytes, Ttl),
    /// The value held, storing this one first if the key is absent.
    GetOrAdd(Bytes, Bytes, Ttl),
    /// Removes a key.
    Delete(Bytes),
    /// A new time to live for a live key.
    Touch(Bytes, Ttl),
    /// Adds to an integer value.
    Incr(Bytes, i64),
    /// Whether a key is present.
    HasKey(Bytes),
    /// Moves a value to another key keeping its expiry (for `incr_version`).
    Rename(Bytes, Bytes),
    /// The value and what is left of its time to live.
    GetWithTtl(Bytes),
    /// Removes every key that starts with these bytes, as one log record.
    ClearPrefix(Bytes),
    /// What is left of a key's time to live.
    Ttl(Bytes),
}

/// The reply to one `Op` of a batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpReply {
    /// A value, or `None` on a miss.
    Value(Option<Bytes>),
    /// Success, nothing to report.
    Done,
    /// Yes or no (`add`, `delete`, `touch`, `has_key`).
    Bool(bool),
    /// A number (`incr`).
    Int(i64),
    /// `GetWithTtl`: the value and the time it has left (`Millis` is at least 1).
    ValueWithTtl(Option<(Bytes, Ttl)>),
    /// `Ttl`: what the key has left (`None` if it is missing).
    Ttl(Option<Ttl>),
}

/// Frames encoded and not yet all written to the socket. Both ends of a
/// connection write through one: the written front is dropped once it is
/// as long as what is left (each byte moves at most once on average), so a
/// peer that reads steadily but never everything holds the writer to about
/// twice what is unwritten, not everything ever sent.
#[derive(Default)]
pub struct Outbox {
    bytes: Vec<u8>,
    written: usize,
}

impl Outbox {
    /// Bytes not written yet.
    pub fn pending(&self) -> usize {
        self.bytes.len() - self.written
    }

    /// Appends `msg` as one frame; a frame over `max_frame` (without its
    /// prefix) is taken back and refused.
    pub fn frame(&mut self, msg: &impl Serialize, max_frame: usize) -> std::io::Result<()> {
        if self.written > 0 && self.written >= self.pending() {
            self.bytes.drain(..self.written);
            self.written = 0;
        }
        let at = self.bytes.len();
        write_frame(&mut self.bytes, msg)?;
        let len = self.bytes.len() - at - 4;
        if len > max_frame {
            self.bytes.truncate(at);
            let msg = format!("a frame of {len} bytes is over the limit of {max_frame}; split the request");
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, msg));
        }
        Ok(())
    }

    /// Writes until everything is out (ready) or the socket is full
    /// (pending, with `cx` woken when it can take more).
    pub fn poll_send<IO: tokio::io::AsyncWrite + Unpin>(
        &mut self,
        io: &mut IO,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        while self.written < self.bytes.len() {
            match std::pin::Pin::new(&mut *io).poll_write(cx, &self.bytes[self.written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.bytes.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

/// A tarpc `ClientMessage` as the daemon reads it: tarpc's wire form, field
/// for field, except that the deadline stays what it is on the wire, the
/// time the client left for the request. tarpc's own type adds that to the
/// clock while decoding, which reads the clock once per request and panics
/// when the sum overflows; [`Incoming::into_request`] adds it to one reading
/// taken per round of requests, and refuses a sum out of range.
#[derive(Debug, Deserialize)]
pub enum Incoming<T> {
    /// A call.
    Request(IncomingRequest<T>),
    /// The client gave up on a call.
    Cancel {
        /// The cancelled call's trace.
        #[serde(default)]
        trace_context: tarpc::trace::Context,
        /// The cancelled call.
        request_id: u64,
    },
}

/// tarpc's `Request`, with the context as [`IncomingContext`].
#[derive(Debug, Deserialize)]
pub struct IncomingRequest<T> {
    /// The deadline and trace.
    pub context: IncomingContext,
    /// Numbers the call on its connection; its response carries it back.
    pub id: u64,
    /// The call.
    pub message: T,
}

/// tarpc's `Context` as it travels: the time left, and the trace.
#[derive(Debug, Deserialize)]
pub struct IncomingContext {
    /// Time left until the client gives up (tarpc's default when absent).
    #[serde(default = "ten_seconds")]
    pub deadline: std::time::Duration,
    /// The call's trace.
    pub trace_context: tarpc::trace::Context,
}

fn ten_seconds() -> std::time::Duration {
    std::time::Duration::from_secs(10)
}

impl<T> Incoming<T> {
    /// The call in tarpc's form, its deadline counted from `now` and the
    /// rest of its context from `base`; `None` for a cancellation. A
    /// deadline beyond what `Instant` can hold is a malformed frame.
    pub fn into_request(
        self,
        now: std::time::Instant,
        base: tarpc::context::Context,
    ) -> std::io::Result<Option<tarpc::Request<T>>> {
        let Incoming::Request(r) = self else { return Ok(None) };
        let left = r.context.deadline;
        let Some(deadline) = now.checked_add(left) else {
            let msg = format!("malformed frame: request deadline {left:?} from now is out of range");
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, msg));
        };
        let mut context = base;
        context.deadline = deadline;
        context.trace_context = r.context.trace_context;
        Ok(Some(tarpc::Request { context, id: r.id, message: r.message }))
    }
}

/// Decodes one frame as the daemon and the client do: the daemon's requests
/// as [`Incoming`], the client's responses as tarpc's `Response`. A panic
/// while decoding is caught and refused like any malformed frame.
pub fn decode_frame<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> std::io::Result<T> {
    let invalid = |msg: String| std::io::Error::new(std::io::ErrorKind::InvalidData, msg);
    match std::panic::catch_unwind(|| rmp_serde::from_slice::<T>(bytes)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(invalid(format!("malformed frame: {e}"))),
        Err(_) => Err(invalid("malformed frame: decoding it panicked".into())),
    }
}

/// Takes the next whole frame (a 4-byte big-endian length, then that many
/// bytes of MessagePack) off the front of `buf`, if one is there; a frame
/// over `max_frame` is an `InvalidData` error.
pub fn next_frame(buf: &mut bytes::BytesMut, max_frame: usize) -> std::io::Result<Option<bytes::BytesMut>> {
    use bytes::Buf;
    let Some(prefix) = buf.first_chunk::<4>() else { return Ok(None) };
    let len = u32::from_be_bytes(*prefix) as usize;
    if len > max_frame {
        let msg = format!("a frame of {len} bytes is over the limit of {max_frame}");
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, msg));
    }
    if buf.len() < 4 + len {
        buf.reserve(4 + len - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    Ok(Some(buf.split_to(len)))
}

/// Appends `msg` to `out` as one frame (what [`next_frame`] takes apart).
pub fn write_frame(out: &mut Vec<u8>, msg: &impl Serialize) -> std::io::Result<()> {
    let invalid = |msg: String| std::io::Error::new(std::io::ErrorKind::InvalidData, msg);
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    if let Err(e) = rmp_serde::encode::write(out, msg) {
        out.truncate(at);
        return Err(invalid(format!("encoding a frame: {e}")));
    }
    let Ok(len) = u32::try_from(out.len() - at - 4) else {
        out.truncate(at);
        return Err(invalid("a frame over 4 GiB".into()));
    };
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer that reads steadily but never everything: the outbox stays
    /// about the size of what is unwritten rather than of everything sent.
    #[tokio::test]
    async fn an_outbox_does_not_grow_with_what_was_written() {
        use tokio::io::AsyncReadExt;
        let (mut ours, mut peer) = tokio::io::duplex(64);
        let mut out = Outbox::default();
        let mut got = [0u8; 48];
        // Unconstrained: tokio's cooperative budget must not refuse a write
        // (the reader below waits for it, in the same task).
        tokio::task::unconstrained(async {
            for _ in 0..10_000 {
                out.frame(&Bytes::from_static(&[7; 60]), 1 << 20).unwrap();
                let waker = futures::task::noop_waker();
                let _ = out.poll_send(&mut ours, &mut std::task::Context::from_waker(&waker));
                let read = tokio::time::timeout(std::time::Duration::from_secs(10), peer.read_exact(&mut got));
                read.await.expect("the outbox stopped writing").unwrap();
            }
        })
        .await;
        assert!(out.pending() > 0, "the peer caught up; the case is not exercised");
        assert!(
            out.bytes.len() <= 2 * out.pending() + 64,
            "{} bytes held for {} unwritten",
            out.bytes.len(),
            out.pending()
        );
    }

    #[test]
    fn a_frame_over_the_limit_is_taken_back() {
        let mut out = Outbox::default();
        out.frame(&1u8, 16).unwrap();
        let before = out.pending();
        let e = out.frame(&Bytes::from(vec![0u8; 100]), 16).unwrap_err();
        assert!(e.to_string().contains("over the limit"), "{e}");
        assert_eq!(out.pending(), before);
    }

    /// What tarpc's own client encodes, as arrays (rmp-serde's default) or
    /// as maps with field names, decodes as `Incoming` with every field.
    #[test]
    fn incoming_reads_what_tarpc_writes() {
        let now = std::time::Instant::now();
        let mut context = tarpc::context::current();
        context.deadline = now + std::time::Duration::from_secs(3);
        let request = tarpc::ClientMessage::Request(tarpc::Request {
            context,
            id: 7,
            message: CacheServiceRequest::Batch { ops: vec![Op::Get(Bytes::from(b"k".to_vec()))] },
        });
        let cancel =
            tarpc::ClientMessage::<CacheServiceRequest>::Cancel { trace_context: context.trace_context, request_id: 9 };
        for (request, cancel) in [
            (rmp_serde::to_vec(&request).unwrap(), rmp_serde::to_vec(&cancel).unwrap()),
            (rmp_serde::to_vec_named(&request).unwrap(), rmp_serde::to_vec_named(&cancel).unwrap()),
        ] {
            let base = tarpc::context::current();
            let r = decode_frame::<Incoming<CacheServiceRequest>>(&request).unwrap();
            let r = r.into_request(now, base).unwrap().expect("a request");
            assert_eq!(r.id, 7);
            assert_eq!(r.context.trace_context, context.trace_context);
            let left = r.context.deadline - now;
            assert!(left <= std::time::Duration::from_secs(3) && left > std::time::Duration::from_secs(2), "{left:?}");
            match r.message {
                CacheServiceRequest::Batch { ops } => assert_eq!(ops, [Op::Get(Bytes::from(b"k".to_vec()))]),
                other => panic!("decoded as {other:?}"),
            }
            match decode_frame::<Incoming<CacheServiceRequest>>(&cancel).unwrap() {
                Incoming::Cancel { request_id: 9, trace_context } => assert_eq!(trace_context, context.trace_context),
                other => panic!("decoded as {other:?}"),
            }
        }
    }

    #[test]
    fn a_frame_that_makes_tarpc_panic_is_an_error() {
        // Found by the frame_decode fuzzer: a request deadline of ~2^64 s,
        // then bytes tarpc never reaches (it panics adding the deadline).
        let found = [
            &include_bytes!("../../daemon/tests/data/frame-deadline-overflow.bin")[4..],
            &include_bytes!("../../daemon/tests/data/frame-deadline-overflow-2.bin")[4..],
        ];
        for frame in found {
            let plain =
                std::panic::catch_unwind(|| rmp_serde::from_slice::<tarpc::ClientMessage<CacheServiceRequest>>(frame));
            assert!(plain.is_err(), "plain decoding no longer panics on this frame");
        }
        // Neither is well-formed past its deadline: both are refused.
        for frame in found {
            let e = decode_frame::<Incoming<CacheServiceRequest>>(frame).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        }
        // A well-formed request whose deadline `Instant` cannot hold.
        #[derive(Serialize)]
        enum Message {
            Request(Request),
        }
        #[derive(Serialize)]
        struct Request {
            context: Context,
            id: u64,
            message: CacheServiceRequest,
        }
        #[derive(Serialize)]
        struct Context {
            deadline: std::time::Duration,
            trace_context: tarpc::trace::Context,
        }
        let far = Message::Request(Request {
            context: Context { deadline: std::time::Duration::MAX, trace_context: Default::default() },
            id: 1,
            message: CacheServiceRequest::Clear {},
        });
        let frame = rmp_serde::to_vec(&far).unwrap();
        let decoded = decode_frame::<Incoming<CacheServiceRequest>>(&frame).unwrap();
        let e = decoded.into_request(std::time::Instant::now(), tarpc::context::current()).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("deadline"), "{e}");
    }
}
