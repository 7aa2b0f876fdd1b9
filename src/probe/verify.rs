//! The probe's rustls client configuration: a certificate verifier that never
//! fails the handshake but records the chain the server presented (the
//! session core judges trust, expiry and names, as for a chain seen on the
//! wire), and a client-certificate resolver that records whether the server
//! asked for one and offers the configured one, if any.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, SignatureScheme};

/// What the handshake showed, beyond the wire bytes.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// The server's chain as presented (leaf first, DER).
    pub chain: Vec<Vec<u8>>,
    /// The server sent a CertificateRequest: the signature schemes it accepts
    /// and how many acceptable CA names it listed.
    pub cert_request: Option<(Vec<String>, usize)>,
}

/// Shared between the rustls callbacks and the driver.
pub type SeenLog = Arc<Mutex<Seen>>;

#[derive(Debug)]
struct RecordingVerifier {
    seen: SeenLog,
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut s) = self.seen.lock() {
            s.chain = std::iter::once(end_entity)
                .chain(intermediates)
                .map(|c| c.as_ref().to_vec())
                .collect();
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &crate::crypto::provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &crate::crypto::provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        crate::crypto::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[derive(Debug)]
struct RecordingResolver {
    seen: SeenLog,
    key: Option<Arc<CertifiedKey>>,
}

impl ResolvesClientCert for RecordingResolver {
    fn resolve(
        &self,
        root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        if let Ok(mut s) = self.seen.lock() {
            // The wire observer's names (`ecdsa_secp256r1_sha256`), not rustls' Debug.
            let schemes = sigschemes
                .iter()
                .map(|s| crate::tls::names::sigalg_name(u16::from(*s)))
                .collect();
            s.cert_request = Some((schemes, root_hint_subjects.len()));
        }
        self.key.clone()
    }

    fn has_certs(&self) -> bool {
        self.key.is_some()
    }
}

/// Loads a client certificate chain and its key (PEM files).
pub fn load_client_cert(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate found", cert.display()));
    }
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let signing = crate::crypto::provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| format!("{}: {e}", key.display()))?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

/// The probe's rustls client configuration (TLS 1.2 and 1.3, the default
/// suites), recording into `seen`.
pub fn client_config(
    seen: SeenLog,
    client_cert: Option<Arc<CertifiedKey>>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let cfg = rustls::ClientConfig::builder_with_provider(crate::crypto::shared())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(RecordingVerifier { seen: seen.clone() }))
        .with_client_cert_resolver(Arc::new(RecordingResolver {
            seen,
            key: client_cert,
        }));
    Ok(Arc::new(cfg))
}
