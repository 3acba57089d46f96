//! [`Error`]: everything a cache call can fail with.

use crate::protocol::WireError;

/// Everything a cache call can fail with. Each message says what went wrong
/// and what to do about it.
///
/// Marked `#[non_exhaustive]`: match the variants you handle and keep a
/// `_` arm, so a new variant in a later version is not a breaking change.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `incr`, `decr`, `incr_version` or `decr_version` on a key that is
    /// missing or expired (Django raises `ValueError`).
    #[error("key not found (or expired): incr/decr/incr_version need an existing key; set it first")]
    NotFound,
    /// `incr`/`decr` on a value that is not stored as an integer.
    #[error("value is not an integer: incr/decr work only on values stored as integers")]
    NotAnInteger,
    /// `incr`/`decr` (or a version change) past the range of `i64`; the
    /// value is unchanged.
    #[error("integer overflow: the result would not fit in an i64; the value is unchanged")]
    Overflow,
    /// The key (with prefix and version) is over the server's
    /// `--max-key-bytes`, or a setting names something that does not exist
    /// (a database past 15).
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// The encoded value is over the server's `--max-value-bytes`; an older
    /// value under that key has been removed (Django's memcached rule).
    #[error(
        "value is {size} bytes, over the server's limit of {max}; store less or raise --max-value-bytes on cachetd"
    )]
    ValueTooLarge {
        /// The encoded value's size in bytes.
        size: u64,
        /// The server's limit in bytes.
        max: u64,
    },
    /// The value could not be encoded as MessagePack (a map with non-string
    /// keys, a serializer that failed …).
    #[error("could not encode the value: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    /// The stored value could not be read as the type asked for.
    #[error("{0}")]
    Decode(DecodeError),
    /// The server could not be reached or the connection broke. Later calls
    /// reconnect by themselves.
    #[error("connection to {server} failed: {reason}; check that cachetd runs there (calls reconnect by themselves)")]
    Connection {
        /// The server's address, as given to the builder.
        server: String,
        /// What went wrong.
        reason: String,
    },
    /// No reply within the builder's `request_timeout`.
    #[error("the request timed out; the server may be overloaded, or raise request_timeout")]
    Timeout,
    /// The server requires an auth token and this client's is missing or
    /// wrong.
    #[error("unauthorized: the server requires an auth token; pass the right one with Cache::builder().auth_token(…)")]
    Unauthorized,
    /// The server is at its memory or entry cap and cannot make room.
    #[error("cache full: {0}")]
    CacheFull(String),
    /// The server's storage turned read-only (a full or failing disk):
    /// writes are refused, reads are served.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Any other refusal by the server, with its message.
    #[error("server error: {0}")]
    Server(String),
}

/// Why a stored value could not be read as the requested type: which key,
/// which type, and the decoder's reason.
#[derive(Debug)]
pub struct DecodeError {
    /// The key as the call named it (without prefix and version).
    pub key: String,
    /// The Rust type the call asked for.
    pub type_name: &'static str,
    /// The MessagePack decoder's reason.
    pub source: rmp_serde::decode::Error,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "could not decode the value of key {:?} as {}: {}; read it as the type it was stored as",
            self.key, self.type_name, self.source
        )
    }
}

impl std::error::Error for DecodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl From<WireError> for Error {
    fn from(e: WireError) -> Error {
        match e {
            WireError::NotFound => Error::NotFound,
            WireError::NotAnInteger => Error::NotAnInteger,
            WireError::Overflow => Error::Overflow,
            WireError::InvalidKey(m) => Error::InvalidKey(m),
            WireError::ValueTooLarge { size, max } => Error::ValueTooLarge { size, max },
            WireError::Unauthorized => Error::Unauthorized,
            WireError::CacheFull(m) => Error::CacheFull(m),
            WireError::Unavailable(m) => Error::Unavailable(m),
            WireError::Server(m) => Error::Server(m),
        }
    }
}
