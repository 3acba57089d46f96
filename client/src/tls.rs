//! [`Tls`]: connections to cachetd's `tls://` listeners (rustls, with the
//! ring provider). The server's certificate is checked against the CA the
//! client is given (there are no built-in roots: a cache is reached inside
//! a network, with an operator's CA); for mutual TLS the client presents
//! its own certificate.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::error::Error;

/// TLS settings for a [`crate::Builder`]: the CA that signed the servers'
/// certificates, and optionally a client certificate for servers that
/// require one (`--tls-client-ca`).
///
/// ```
/// # fn demo() -> Result<(), cachet::Error> {
/// # let dir = std::env::temp_dir();
/// # let (ca, cert, key) = (dir.join("ca.pem"), dir.join("client.pem"), dir.join("client.key"));
/// # if !ca.exists() { return Ok(()) }
/// let tls = cachet::Tls::with_ca_file(&ca)?.client_cert_files(&cert, &key)?;
/// let builder = cachet::Cache::builder().server("cache.internal:7312").tls(tls);
/// # Ok(()) }
/// # demo().unwrap();
/// ```
#[derive(Clone)]
pub struct Tls {
    roots: Arc<rustls::RootCertStore>,
    identity: Option<Arc<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>>,
    server_name: Option<String>,
}

/// Shows the settings, never the client's private key.
impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("trusted_cas", &self.roots.len())
            .field("client_cert", &self.identity.as_ref().map(|_| "<set>"))
            .field("server_name", &self.server_name)
            .finish()
    }
}

fn bad(what: impl std::fmt::Display) -> Error {
    Error::Connection { server: String::new(), reason: format!("TLS settings: {what}") }
}

impl Tls {
    /// Trusts the CA certificates in this PEM file.
    pub fn with_ca_file(path: impl AsRef<Path>) -> Result<Tls, Error> {
        let path = path.as_ref();
        let pem = std::fs::read(path).map_err(|e| bad(format!("reading the CA file {}: {e}", path.display())))?;
        Tls::with_ca_pem(&pem).map_err(|e| bad(format!("{}: {e}", path.display())))
    }

    /// Trusts the CA certificates in this PEM text.
    pub fn with_ca_pem(pem: &[u8]) -> Result<Tls, Error> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| bad(format!("a CA certificate does not parse: {e}")))?;
            roots.add(cert).map_err(|e| bad(format!("a CA certificate is not usable: {e}")))?;
        }
        if roots.is_empty() {
            return Err(bad("no CA certificate found (expected PEM, -----BEGIN CERTIFICATE-----)"));
        }
        Ok(Tls { roots: Arc::new(roots), identity: None, server_name: None })
    }

    /// Presents this certificate chain and key (PEM files) to servers that
    /// require client certificates.
    pub fn client_cert_files(self, cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<Tls, Error> {
        let (cert, key) = (cert.as_ref(), key.as_ref());
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| bad(format!("client certificate {}: {e}", cert.display())))?;
        if chain.is_empty() {
            return Err(bad(format!("no certificate in {}", cert.display())));
        }
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(format!("client key {}: {e}", key.display())))?;
        Ok(Tls { identity: Some(Arc::new((chain, key))), ..self })
    }

    /// The name to check the server's certificate against, when it is not
    /// the host part of the server's address.
    pub fn server_name(self, name: impl Into<String>) -> Tls {
        Tls { server_name: Some(name.into()), ..self }
    }

    pub(crate) fn connector(&self) -> Result<tokio_rustls::TlsConnector, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(bad)?
            .with_root_certificates(self.roots.clone());
        let config = match &self.identity {
            Some(id) => builder.with_client_auth_cert(id.0.clone(), id.1.clone_key()).map_err(bad)?,
            None => builder.with_no_client_auth(),
        };
        Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
    }

    /// The name the server's certificate must carry for `addr` (HOST:PORT).
    pub(crate) fn name_for(&self, addr: &str) -> Result<ServerName<'static>, String> {
        let host = match &self.server_name {
            Some(n) => n.as_str(),
            None => addr.rsplit_once(':').map_or(addr, |(h, _)| h).trim_start_matches('[').trim_end_matches(']'),
        };
        ServerName::try_from(host.to_string()).map_err(|e| format!("{host:?} is not a TLS server name: {e}"))
    }
}
