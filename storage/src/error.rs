//! The storage crate's one error type. Each variant carries what a person
//! needs to act on it: the file and offset, the limit and the option that
//! raises it, the command that repairs a log.

use std::path::PathBuf;

use crate::record::{HeaderError, RecordError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("key not found (or expired): incr/decr/rename need an existing key; set it first")]
    NotFound,
    #[error("value is not an integer: incr/decr work only on integer values")]
    NotAnInteger,
    #[error("integer overflow: the result would not fit in a signed 64-bit integer; the value is unchanged")]
    Overflow,
    #[error("key is {len} bytes, over the limit of {max}; use a shorter key or raise max_key_bytes (--max-key-bytes)")]
    KeyTooLong { len: usize, max: usize },
    #[error("value is {size} bytes, over the limit of {max}; store less or raise max_value_bytes (--max-value-bytes)")]
    ValueTooLarge { size: usize, max: usize },
    #[error(
        "cache full: {used} bytes in use, max_memory is {max}; delete keys, use shorter timeouts, or raise --max-memory"
    )]
    CacheFull { used: u64, max: u64 },
    #[error("storage write failed, nothing in this batch was stored: {0}; check the disk (space, permissions, health)")]
    WriteFailed(String),
    #[error(
        "storage unavailable: {0}. The log cannot be written, so writes are refused while reads are served; free disk space or fix the disk, and writes resume by themselves"
    )]
    Unavailable(String),
    #[error("the storage engine has shut down; reconnect to a running daemon")]
    Closed,
    #[error("{op} {}: {source}", path.display())]
    Io { op: &'static str, path: PathBuf, source: std::io::Error },
    #[error("data directory {} is in use by another process (it holds a lock on the directory); stop it first", dir.display())]
    Locked { dir: PathBuf },
    #[error(
        "log corrupt in {} at offset {offset}: {reason}; the last good record has sequence number {last_good_seq}. \
         Nothing was changed. Run `cachetd repair {}` to back up the damaged file and cut the log back to that record",
        file.display(), dir.display()
    )]
    Corrupt { dir: PathBuf, file: PathBuf, offset: u64, last_good_seq: u64, reason: CorruptReason },
    #[error(
        "the log in {} does not match its MANIFEST: {problem}. Nothing was changed or deleted. \
         If the segment files are what you expect, run `cachetd repair {}` to rebuild the MANIFEST from them \
         (files it does not use are moved aside, not deleted)",
        dir.display(), dir.display()
    )]
    Manifest { dir: PathBuf, problem: String },
    #[error(
        "the reply would be {size} bytes, over the {max} bytes this request may return \
         (replies a client has not read yet count against the limit); ask for fewer or smaller values per request, \
         and read replies before sending more requests"
    )]
    ReplyTooLarge { size: usize, max: usize },
    #[error(
        "segment numbers are exhausted (segment {} is the last one allowed): the log cannot grow; \
         stop the daemon, move the data directory aside and start with an empty one",
        crate::record::SegmentId::MAX.0
    )]
    SegmentsExhausted,
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// Why a spot in the log was judged corrupt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CorruptReason {
    #[error("{0}")]
    Record(#[from] RecordError),
    #[error("segment header: {0}")]
    Header(#[from] HeaderError),
    #[error("sequence number {found} where {expected} was expected (a record or segment is missing)")]
    Sequence { found: u64, expected: u64 },
    #[error(
        "the log's first record has sequence number {found} where the MANIFEST says it starts at {expected}: \
         the oldest segment or its first records are missing"
    )]
    Start { found: u64, expected: u64 },
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
