//! HTTPS without a reverse proxy (`[http] tls_cert`, `tls_key`): a PEM certificate chain and
//! its key; HTTP/2 and HTTP/1.1 offered by ALPN. The pair is read again on every reload
//! (SIGHUP, as certbot's deploy hook sends), so a renewed certificate is served from the next
//! handshake without a restart; a pair that cannot be read, or whose key is not the
//! certificate's, is logged and the one in force stays.

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {why}")]
    File { path: String, why: String },
    #[error("the certificate and key do not go together: {0}")]
    Config(rustls::Error),
}

/// The certificate in force, replaced whole by a reload.
#[derive(Debug)]
pub struct Certificates {
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

impl Certificates {
    /// Reads `cert` and `key` again and serves them from the next handshake on; on an error
    /// the ones in force stay.
    pub fn reload(&self, cert: &Path, key: &Path) -> Result<(), TlsError> {
        let fresh = Arc::new(certified_key(&self.provider, cert, key)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }
}

/// The acceptor for `cert` (chain, leaf first) and `key`, and the handle that reloads them.
pub fn acceptor(cert: &Path, key: &Path) -> Result<(tokio_rustls::TlsAcceptor, Arc<Certificates>), TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let certificates = Arc::new(Certificates {
        current: RwLock::new(Arc::new(certified_key(&provider, cert, key)?)),
        provider: provider.clone(),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(certificates.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((tokio_rustls::TlsAcceptor::from(Arc::new(config)), certificates))
}

/// The chain in `cert` with the key in `key`, checked to belong together.
fn certified_key(provider: &CryptoProvider, cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let bad = |path: &Path| {
        let path = path.display().to_string();
        move |e: rustls::pki_types::pem::Error| TlsError::File {
            path: path.clone(),
            why: e.to_string(),
        }
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(bad(cert))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad(cert))?;
    if chain.is_empty() {
        return Err(TlsError::File {
            path: cert.display().to_string(),
            why: "no certificate in it".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(bad(key))?;
    CertifiedKey::from_der(chain, key, provider).map_err(TlsError::Config)
}
