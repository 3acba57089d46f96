//! TLS for `tls://` and `resp+tls://` listeners (rustls, ring provider):
//! the server's certificate and key (`--tls-cert`, `--tls-key`, PEM) and,
//! for mutual TLS, the CA that client certificates must chain to
//! (`--tls-client-ca`): then a client without a valid certificate is
//! refused in the handshake.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::error::Error;

fn bad(what: String) -> Error {
    Error::Config(format!("TLS: {what}"))
}

/// The acceptor for every TLS listener, from the PEM files.
pub fn acceptor(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<TlsAcceptor, Error> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad(format!("--tls-cert {}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(bad(format!("--tls-cert {}: no certificate in it (expected PEM)", cert.display())));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(format!("--tls-key {}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in
                CertificateDer::pem_file_iter(ca).map_err(|e| bad(format!("--tls-client-ca {}: {e}", ca.display())))?
            {
                let c = c.map_err(|e| bad(format!("--tls-client-ca {}: {e}", ca.display())))?;
                roots.add(c).map_err(|e| bad(format!("--tls-client-ca {}: {e}", ca.display())))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| bad(format!("--tls-client-ca {}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| bad(format!("--tls-cert and --tls-key do not make a usable pair: {e}")))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
