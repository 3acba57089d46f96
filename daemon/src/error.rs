//! The daemon's one error type. Each variant's message says what went wrong
//! and what to do; `main` prints it once and exits non-zero.

/// Why `cachetd` could not start, serve or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag, environment variable or config-file value is invalid.
    #[error("{0}")]
    Config(String),
    /// The storage engine refused (a corrupt log, a locked directory, a
    /// failed write at shutdown…); its message names the remedy.
    #[error(transparent)]
    Storage(#[from] cachet_storage::Error),
    /// A listener could not be set up.
    #[error("{0}")]
    Listen(String),
    /// Socket activation passed something unusable.
    #[error("{0}")]
    Systemd(String),
    /// The async runtime or a signal handler could not be started.
    #[error("{0}")]
    Runtime(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
