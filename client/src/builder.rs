//! [`Builder`]: the settings of a [`Cache`] (Django's `CACHES` entry) and
//! the first connection to its servers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::cache::{Cache, Inner};
use crate::connection::Node;
use crate::error::Error;

/// Configures a [`Cache`]; see [`Cache::builder`].
#[derive(Clone)]
pub struct Builder {
    servers: Vec<String>,
    prefix: String,
    version: i64,
    default_timeout: Duration,
    request_timeout: Duration,
    token: Option<String>,
    down_is_miss: bool,
    database: u8,
    #[cfg(feature = "tls")]
    tls: Option<crate::Tls>,
}

/// Shows every setting but the auth token, which only shows as set or not.
impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("servers", &self.servers)
            .field("prefix", &self.prefix)
            .field("version", &self.version)
            .field("default_timeout", &self.default_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("down_is_miss", &self.down_is_miss)
            .field("database", &self.database)
            .field("tls", &self.tls_shown())
            .finish()
    }
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            servers: Vec::new(),
            prefix: String::new(),
            version: 1,
            default_timeout: Duration::from_secs(300),
            request_timeout: Duration::from_secs(5),
            token: None,
            down_is_miss: false,
            database: 0,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

impl Builder {
    /// Adds a server, `HOST:PORT` or `unix:/path`. With several, keys are
    /// spread over them by rendezvous hashing.
    pub fn server(mut self, addr: impl Into<String>) -> Self {
        self.servers.push(addr.into());
        self
    }

    /// Django's `KEY_PREFIX`.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Django's `VERSION`.
    pub fn version(mut self, version: i64) -> Self {
        self.version = version;
        self
    }

    /// Django's `TIMEOUT`: used by `Timeout::Default`.
    pub fn default_timeout(mut self, timeout: Duration) -> Self {
        self.default_timeout = timeout;
        self
    }

    /// How long one request may take before `Error::Timeout`.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// With several servers: when one is down, reads of its keys are misses
    /// and writes to it are dropped (`set_many` reports them as failed), as
    /// Django's memcached backend behaves. By default such calls fail fast
    /// with `Error::Connection` naming the server.
    pub fn down_is_miss(mut self, yes: bool) -> Self {
        self.down_is_miss = yes;
        self
    }

    /// Which of the 16 keyspaces the keys live in, as RESP's `SELECT`
    /// numbers them (default 0). Keys are shared with RESP clients of the
    /// same database.
    pub fn database(mut self, db: u8) -> Self {
        self.database = db;
        self
    }

    /// Connects to every TCP server with TLS (a daemon's `tls://`
    /// listeners), checking its certificate against `tls`'s CA. Unix socket
    /// servers are unaffected.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: crate::Tls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The TLS server name for `addr`, when TLS is on and `addr` is TCP.
    #[cfg(feature = "tls")]
    fn tls_name(&self, addr: &str) -> Result<Option<rustls::pki_types::ServerName<'static>>, Error> {
        match &self.tls {
            Some(t) if !addr.starts_with("unix:") => {
                t.name_for(addr).map(Some).map_err(|reason| Error::Connection { server: addr.to_string(), reason })
            }
            _ => Ok(None),
        }
    }

    fn tls_shown(&self) -> Option<String> {
        #[cfg(feature = "tls")]
        return self.tls.as_ref().map(|t| format!("{t:?}"));
        #[cfg(not(feature = "tls"))]
        None
    }

    /// The token the daemon requires (its `--auth-token-file`); never shown
    /// by `Debug`.
    pub fn auth_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Builds the client and tries every server once, so a wrong token
    /// shows up now (`Error::Unauthorized`). A server that cannot be reached
    /// is not an error here, even when none can: the client connects lazily,
    /// a call for a key on a server that is down fails fast with
    /// `Error::Connection` naming that server (or is a miss under
    /// [`down_is_miss`](Builder::down_is_miss)), and calls reconnect by
    /// themselves once it is back.
    pub async fn connect(self) -> Result<Cache, Error> {
        if self.database >= cachet_types::keyspace::DATABASES {
            return Err(Error::InvalidKey(format!(
                "database {} does not exist; there are {} (0 to {})",
                self.database,
                cachet_types::keyspace::DATABASES,
                cachet_types::keyspace::DATABASES - 1
            )));
        }
        if self.servers.is_empty() {
            return Err(Error::Connection {
                server: String::new(),
                reason: "no server given; call .server(addr)".into(),
            });
        }
        let cache = Cache {
            inner: Arc::new(Inner {
                nodes: {
                    #[cfg(feature = "tls")]
                    let tls = match &self.tls {
                        Some(t) => Some(Arc::new(t.connector()?)),
                        None => None,
                    };
                    let mut nodes = Vec::with_capacity(self.servers.len());
                    for addr in &self.servers {
                        #[cfg(feature = "tls")]
                        let secure = match (&tls, self.tls_name(addr)?) {
                            (Some(c), Some(name)) => Some(crate::connection::TlsTo { connector: c.clone(), name }),
                            _ => None,
                        };
                        #[cfg(not(feature = "tls"))]
                        let secure = None;
                        nodes.push(Node::new(addr.clone(), secure));
                    }
                    nodes
                },
                addrs: self.servers,
                prefix: self.prefix,
                version: self.version,
                default_timeout: self.default_timeout,
                request_timeout: self.request_timeout,
                token: self.token,
                down_is_miss: self.down_is_miss,
                database: self.database,
                computing: Mutex::new(HashMap::new()),
            }),
        };
        let tries = cache.inner.nodes.iter().map(|n| n.conn(&cache.inner.token, cache.inner.request_timeout));
        for r in futures::future::join_all(tries).await {
            match r {
                Ok(_) => {}
                Err(Error::Connection { server, reason }) => {
                    tracing::warn!(server, reason, "cachet server not reachable; calls for its keys fail until it is");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(cache)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_token() {
        let b = Builder::default().server("h:1").auth_token("s3cret-token-value");
        let shown = format!("{b:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("<redacted>") && shown.contains("h:1"), "{shown}");
    }
}
