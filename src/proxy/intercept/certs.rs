//! Certificates and rustls configurations of intercept mode: the leaf
//! smtptap presents to the client (minted in the image of the upstream's,
//! cached per name set, or the static one), the upstream verifier that
//! records the chain and the real verdict (failing only when enforcing),
//! the client certificate presented upstream, and the key log.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ResolvesServerCert;
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::Tapped;
use crate::cert::mint::{Ca, LeafSpec};
use crate::cert::{self, CertEvent, CheckContext, NameSource, TrustStore};
use crate::config::{CertFiles, InterceptConfig, UpstreamVerify};
use crate::event::Side;
use crate::proxy::relay::Tap;

/// Most minted leaves kept (the cache is emptied when full).
const MAX_CACHED_LEAVES: usize = 1024;

fn certified(files: &CertFiles) -> Result<Arc<CertifiedKey>, String> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(files.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{}: {e}", files.cert_path.display()))?;
    let key = PrivateKeyDer::from_pem_slice(files.key_pem.0.as_bytes())
        .map_err(|e| format!("{}: {e}", files.key_path.display()))?;
    let signing = crate::crypto::provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("{}: {e}", files.key_path.display()))?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

/// What every intercepted session of a run shares.
pub(crate) struct Shared {
    pub(super) cfg: InterceptConfig,
    ca: Option<Ca>,
    static_key: Option<Arc<CertifiedKey>>,
    static_rsa: bool,
    client_key: Option<Arc<CertifiedKey>>,
    leaves: Mutex<HashMap<Vec<String>, Arc<CertifiedKey>>>,
    keylog: Option<Mutex<std::fs::File>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("intercept::Shared")
    }
}

impl Shared {
    /// Loads the CA, the static and client certificates and opens the key log.
    pub(crate) fn new(cfg: &InterceptConfig) -> Result<Shared, String> {
        let ca = match &cfg.ca {
            Some(c) => Some(
                Ca::from_pem(&c.cert_pem, &c.key_pem.0)
                    .map_err(|e| format!("intercept.ca_cert: {e}"))?,
            ),
            None => None,
        };
        let static_key = match &cfg.static_cert {
            Some(c) => Some(certified(c).map_err(|e| format!("intercept.cert: {e}"))?),
            None => None,
        };
        let static_rsa = cfg
            .static_cert
            .as_ref()
            .is_some_and(|c| c.key_pem.0.contains("RSA") || !c.key_pem.0.contains("EC"));
        let client_key = match &cfg.client_cert {
            Some(c) => Some(certified(c).map_err(|e| format!("intercept.client_cert: {e}"))?),
            None => None,
        };
        let keylog = match &cfg.keylog {
            Some(p) => {
                use std::os::unix::fs::OpenOptionsExt;
                let f = std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(0o600)
                    .open(p)
                    .map_err(|e| format!("intercept.keylog: cannot open {}: {e}", p.display()))?;
                Some(Mutex::new(f))
            }
            None => None,
        };
        Ok(Shared {
            cfg: cfg.clone(),
            ca,
            static_key,
            static_rsa,
            client_key,
            leaves: Mutex::new(HashMap::new()),
            keylog,
        })
    }

    /// Whether a static RSA certificate may be presented (TLS 1.2 RSA suites).
    pub(super) fn rsa_ok(&self) -> bool {
        self.static_key.is_some() && self.static_rsa
    }

    /// The static certificate, if it serves `sni`.
    fn static_for(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let key = self.static_key.clone()?;
        if self.cfg.static_names.is_empty() || self.ca.is_none() {
            return Some(key);
        }
        let sni = sni?.to_ascii_lowercase();
        self.cfg.static_names.contains(&sni).then_some(key)
    }

    /// The leaf to present: static for its names, else minted in the image of
    /// `upstream_leaf` (plus `sni`), cached per name set. Returns it and how
    /// to describe it.
    pub(super) fn leaf(
        &self,
        sni: Option<&str>,
        upstream_leaf: Option<&[u8]>,
        fallback_name: &str,
    ) -> Result<(Arc<CertifiedKey>, String), String> {
        if let Some(k) = self.static_for(sni) {
            return Ok((k, "static certificate".into()));
        }
        let ca = self
            .ca
            .as_ref()
            .ok_or("no CA to mint a certificate for this name (intercept.ca_cert)")?;
        let mut spec = match upstream_leaf.and_then(|d| cert::parse_cert(d).ok()) {
            Some(info) => LeafSpec::image_of(&info),
            None => LeafSpec::server(Vec::<String>::new()),
        };
        if let Some(s) = sni {
            if !spec.names.iter().any(|n| n.eq_ignore_ascii_case(s)) {
                spec.names.push(s.to_string());
            }
        }
        if spec.names.is_empty() {
            spec.names.push(fallback_name.to_string());
        }
        if spec.common_name.is_none() {
            spec.common_name = spec.names.first().cloned();
        }
        let mut key: Vec<String> = spec.names.clone();
        key.sort();
        key.push(spec.common_name.clone().unwrap_or_default());
        let desc = format!("a minted certificate for {}", spec.names.join(", "));
        if let Some(k) = self.leaves.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok((k, desc));
        }
        let issued = ca.issue(&spec).map_err(|e| format!("cannot mint: {e}"))?;
        let signing = crate::crypto::provider()
            .key_provider
            .load_private_key(issued.rustls_key())
            .map_err(|e| format!("cannot load the minted key: {e}"))?;
        let ck = Arc::new(CertifiedKey::new(issued.rustls_chain(), signing));
        if let Ok(mut m) = self.leaves.lock() {
            if m.len() >= MAX_CACHED_LEAVES {
                m.clear();
            }
            m.insert(key, ck.clone());
        }
        Ok((ck, desc))
    }

    /// The upstream's rustls configuration for one session, recording into `seen`.
    pub(super) fn client_config(
        &self,
        seen: Arc<Mutex<Seen>>,
        analysis: Arc<crate::session::Analysis>,
        keylog: Arc<SessionKeyLog>,
    ) -> Result<Arc<rustls::ClientConfig>, String> {
        let mut c = rustls::ClientConfig::builder_with_provider(crate::crypto::shared())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(UpstreamVerifier {
                seen: seen.clone(),
                analysis,
                enforce: self.cfg.upstream_verify == UpstreamVerify::Enforce,
            }))
            .with_client_cert_resolver(Arc::new(ClientCertResolver {
                seen,
                key: self.client_key.clone(),
            }));
        c.key_log = keylog;
        Ok(Arc::new(c))
    }

    /// The client's rustls configuration for one session: presents `leaf`.
    pub(super) fn server_config(
        &self,
        leaf: Arc<CertifiedKey>,
        keylog: Arc<SessionKeyLog>,
    ) -> Result<Arc<rustls::ServerConfig>, String> {
        let b = rustls::ServerConfig::builder_with_provider(crate::crypto::shared())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let b = if self.cfg.request_client_cert {
            b.with_client_cert_verifier(Arc::new(AnyClientCert))
        } else {
            b.with_no_client_auth()
        };
        let mut c = b.with_cert_resolver(Arc::new(Fixed(leaf)));
        c.key_log = keylog;
        Ok(Arc::new(c))
    }

    /// A key log for one session: lines go to the key log file (if any)
    /// and, when secrets are embedded, to the capture through the tap.
    pub(super) fn session_keylog(self: &Arc<Self>, tap: Tap) -> Arc<SessionKeyLog> {
        Arc::new(SessionKeyLog {
            shared: self.clone(),
            tap: self.cfg.embed_secrets.then_some(tap),
        })
    }
}

/// What the upstream handshake showed.
#[derive(Debug, Default)]
pub(super) struct Seen {
    /// The chain, leaf first.
    pub chain: Vec<Vec<u8>>,
    /// `Some(Ok)`: verified; `Some(Err(why))`: not.
    pub verdict: Option<Result<(), String>>,
    /// The upstream asked for a client certificate.
    pub cert_requested: bool,
}

#[derive(Debug)]
struct UpstreamVerifier {
    seen: Arc<Mutex<Seen>>,
    analysis: Arc<crate::session::Analysis>,
    enforce: bool,
}

fn verdict(ders: &[Vec<u8>], name: &ServerName<'_>, trust: &TrustStore) -> Result<(), String> {
    let names = match name {
        ServerName::DnsName(d) => vec![(NameSource::Sni, d.as_ref().to_string())],
        ServerName::IpAddress(ip) => {
            vec![(
                NameSource::Upstream,
                std::net::IpAddr::from(*ip).to_string(),
            )]
        }
        _ => Vec::new(),
    };
    let ctx = CheckContext {
        names,
        expiry_warning_days: 0,
        now: std::time::SystemTime::now(),
    };
    let mut why = Vec::new();
    for e in cert::analyze_chain(ders, Side::Server, &ctx, trust) {
        match e {
            CertEvent::Chain {
                trusted: false,
                error,
                detail,
                ..
            } => why.push(
                detail
                    .or(error)
                    .unwrap_or_else(|| "the chain is not trusted".into()),
            ),
            CertEvent::Names { checks, .. } => {
                for c in checks.iter().filter(|c| !c.matched) {
                    why.push(format!("the certificate does not cover {}", c.name));
                }
            }
            _ => {}
        }
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(why.join("; "))
    }
}

impl ServerCertVerifier for UpstreamVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ders: Vec<Vec<u8>> = std::iter::once(end_entity)
            .chain(intermediates)
            .map(|c| c.as_ref().to_vec())
            .collect();
        let v = match &self.analysis.trust {
            Some(t) => verdict(&ders, server_name, t),
            None => Err("no trust anchors loaded".into()),
        };
        let refuse = self.enforce && v.is_err();
        if let Ok(mut s) = self.seen.lock() {
            s.chain = ders;
            s.verdict = Some(v);
        }
        if refuse {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ));
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
struct ClientCertResolver {
    seen: Arc<Mutex<Seen>>,
    key: Option<Arc<CertifiedKey>>,
}

impl ResolvesClientCert for ClientCertResolver {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        if let Ok(mut s) = self.seen.lock() {
            s.cert_requested = true;
        }
        self.key.clone()
    }

    fn has_certs(&self) -> bool {
        self.key.is_some()
    }
}

#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Asks the client for a certificate and accepts any (it is recorded, not judged here).
#[derive(Debug)]
struct AnyClientCert;

impl ClientCertVerifier for AnyClientCert {
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
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

/// One session's key log: NSS lines to the run's key log file and, when
/// `embed_secrets`, to the capture (through the tap, so they reach the file
/// before the encrypted records they unlock).
pub(super) struct SessionKeyLog {
    shared: Arc<Shared>,
    tap: Option<Tap>,
}

impl std::fmt::Debug for SessionKeyLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKeyLog")
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl rustls::KeyLog for SessionKeyLog {
    fn will_log(&self, _label: &str) -> bool {
        self.shared.keylog.is_some() || self.tap.is_some()
    }

    fn log(&self, label: &str, client_random: &[u8], secret: &[u8]) {
        let line = format!("{label} {} {}\n", hex(client_random), hex(secret));
        if let Some(f) = &self.shared.keylog {
            if let Ok(mut f) = f.lock() {
                if let Err(e) = f.write_all(line.as_bytes()) {
                    tracing::warn!(error = %e, "cannot write the key log");
                }
            }
        }
        if let Some(t) = &self.tap {
            t.intercept(
                Side::Client,
                Tapped::Secrets {
                    keylog: line.into_bytes(),
                },
                0,
            );
        }
    }
}
