//! Whom an FTPS source's server certificate must satisfy: a CA bundle, the exact certificate
//! the operator was given (the self-signed ones that `openssl req -x509` and `proftpd-gencert`
//! make carry `CA:TRUE`, which WebPKI refuses as a server's own), or a pinned key.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

use super::client::FtpPollError;
use crate::tenant::FtpSource;

/// TLS settings of one source, loaded once; each control connection gets its own
/// `ClientConfig` (and so its own session cache), so the data connections resume that control
/// connection's TLS session, as vsftpd's `require_ssl_reuse` insists.
#[derive(Clone)]
pub struct Tls {
    provider: Arc<CryptoProvider>,
    verifier: Arc<dyn ServerCertVerifier>,
}

impl Tls {
    /// The TLS settings for `source`, or `None` for plain `ftp://`.
    pub fn for_source(source: &FtpSource) -> Result<Option<Tls>, FtpPollError> {
        if !source.url.tls {
            return Ok(None);
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier: Arc<dyn ServerCertVerifier> = if source.tls_insecure_skip_verify {
            Arc::new(Pinned {
                provider: provider.clone(),
                webpki: None,
                certificates: Vec::new(),
                keys: Vec::new(),
                anything: true,
            })
        } else {
            let mut roots = RootCertStore::empty();
            let mut certificates = Vec::new();
            match &source.ca_file {
                Some(path) => {
                    let bad_file = |source| FtpPollError::CaFile {
                        path: path.clone(),
                        source,
                    };
                    for cert in CertificateDer::pem_file_iter(path).map_err(bad_file)? {
                        let cert = cert.map_err(bad_file)?.into_owned();
                        // A certificate that cannot be a root may still be the server's own.
                        let _ = roots.add(cert.clone());
                        certificates.push(cert);
                    }
                }
                None => {
                    let found = rustls_native_certs::load_native_certs();
                    roots.add_parsable_certificates(found.certs);
                }
            }
            let webpki = (!roots.is_empty())
                .then(|| WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build())
                .transpose()
                .map_err(|e| FtpPollError::Tls(rustls::Error::General(e.to_string())))?;
            Arc::new(Pinned {
                provider: provider.clone(),
                webpki,
                certificates,
                keys: source.tls_pin_sha256.clone(),
                anything: false,
            })
        };
        Ok(Some(Tls { provider, verifier }))
    }

    pub(super) fn client_config(&self) -> Result<Arc<ClientConfig>, FtpPollError> {
        let config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(FtpPollError::Tls)?
            .dangerous()
            .with_custom_certificate_verifier(self.verifier.clone())
            .with_no_client_auth();
        Ok(Arc::new(config))
    }
}

/// Accepts the server's certificate if it is one of `certificates` byte for byte, if its key
/// is one of `keys` (SHA-256 of the SubjectPublicKeyInfo), or if WebPKI accepts it against the
/// roots; with `anything`, whatever it is (`tls_insecure_skip_verify`, test servers only). The
/// handshake signatures are checked in every case.
#[derive(Debug)]
struct Pinned {
    provider: Arc<CryptoProvider>,
    webpki: Option<Arc<WebPkiServerVerifier>>,
    certificates: Vec<CertificateDer<'static>>,
    keys: Vec<[u8; 32]>,
    anything: bool,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.anything || self.certificates.iter().any(|c| c.as_ref() == end_entity.as_ref()) {
            return Ok(ServerCertVerified::assertion());
        }
        if !self.keys.is_empty()
            && let Some(spki) = subject_public_key_info(end_entity)
        {
            let key: [u8; 32] = Sha256::digest(spki).into();
            if self.keys.contains(&key) {
                return Ok(ServerCertVerified::assertion());
            }
        }
        let refused = match &self.webpki {
            Some(webpki) => match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            {
                Ok(ok) => return Ok(ok),
                Err(e) => e.to_string(),
            },
            None => "no trusted certificate".to_string(),
        };
        let key = subject_public_key_info(end_entity).map(|spki| hex::encode(Sha256::digest(spki)));
        Err(rustls::Error::General(format!(
            "the server's certificate is not trusted ({refused}); to trust it, put the server's \
             certificate in ca_file (it is then accepted by its exact bytes, even if self-signed), \
             or its key in tls_pin_sha256 = [\"{}\"]",
            key.unwrap_or_else(|| "…".into())
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The DER of a certificate's SubjectPublicKeyInfo (what `openssl x509 -pubkey | openssl pkey
/// -pubin -outform der` gives): Certificate → tbsCertificate → its 7th element, or 6th without
/// the optional `[0]` version.
fn subject_public_key_info(cert: &[u8]) -> Option<&[u8]> {
    let (certificate, _) = der_body(cert)?;
    let (tbs, _) = der_element(certificate)?;
    let mut rest = der_body(tbs)?.0;
    let mut index = 0;
    loop {
        let (element, after) = der_element(rest)?;
        let is_version = index == 0 && element.first() == Some(&0xa0);
        if !is_version {
            index += 1;
        }
        if index == 6 && !is_version {
            return Some(element);
        }
        rest = after;
    }
}

/// Splits the first DER element (tag, length and contents) off `data`: (element, rest).
fn der_element(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let first = *data.get(1)?;
    let (len, header) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let bytes = data.get(2..2 + n)?;
        (bytes.iter().fold(0usize, |acc, b| (acc << 8) | *b as usize), 2 + n)
    };
    let end = header.checked_add(len)?;
    (data.len() >= end).then(|| data.split_at(end))
}

/// The contents of a DER element (without its tag and length), and what follows the element.
fn der_body(element: &[u8]) -> Option<(&[u8], &[u8])> {
    let (whole, rest) = der_element(element)?;
    let header = if whole[1] < 0x80 {
        2
    } else {
        2 + (whole[1] & 0x7f) as usize
    };
    Some((&whole[header..], rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_walker_refuses_garbage() {
        assert!(subject_public_key_info(b"").is_none());
        assert!(subject_public_key_info(&[0x30, 0x82, 0xff]).is_none());
        assert!(subject_public_key_info(&[0x30, 0x03, 0x30, 0x01, 0x00]).is_none());
    }
}
