use crate::protocol::WireError;

/// Everything a cache call can fail with. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("key not found (or expired): incr/decr/incr_version need an existing key; set it first")]
    NotFound,
    #[error("value is not an integer: incr/decr work only on values stored as integers")]
    NotAnInteger,
    #[error("integer overflow: the result would not fit in an i64; the value is unchanged")]
    Overflow,
    #[error("invalid key: {0}")]
    InvalidKey(String),
    #[error(
        "value is {size} bytes, over the server's limit of {max}; store less or raise --max-value-bytes on cachetd"
    )]
    ValueTooLarge { size: u64, max: u64 },
    #[error("could not encode the value: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("could not decode the cached value as the requested type: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("connection to {server} failed: {reason}; check that cachetd runs there (calls reconnect by themselves)")]
    Connection { server: String, reason: String },
    #[error("the request timed out; the server may be overloaded, or raise request_timeout")]
    Timeout,
    #[error("unauthorized: the server requires an auth token; pass the right one with Cache::builder().auth_token(…)")]
    Unauthorized,
    #[error("cache full: {0}")]
    CacheFull(String),
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error("server error: {0}")]
    Server(String),
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
