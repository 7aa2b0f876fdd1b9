//! Chain trust: which anchors we trust, and whether a presented chain leads
//! to one of them.
//!
//! This module owns the [`TrustStore`] (Mozilla roots, the system store, PEM
//! CA files) and the webpki verification of a chain at a given instant, with
//! webpki's errors mapped to stable snake_case kinds. It must not check host
//! names (that is `names`) and must not touch the network (no AIA fetching,
//! no OCSP/CRL download).

use std::path::PathBuf;
use std::time::SystemTime;

use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use webpki::{EndEntityCert, KeyUsage};

use super::info::{rfc4514_from_value, with_seq_header, RawNames};
use super::CertError;
use crate::event::Side;

/// Which trust anchors to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustOptions {
    /// Mozilla's root program (webpki-roots), compiled in.
    pub mozilla: bool,
    /// The operating system's store (rustls-native-certs; honours SSL_CERT_FILE/SSL_CERT_DIR).
    pub system: bool,
    /// Extra PEM (or single-DER) CA files, e.g. an enterprise root.
    pub ca_files: Vec<PathBuf>,
}

impl Default for TrustOptions {
    fn default() -> Self {
        TrustOptions {
            mozilla: true,
            system: false,
            ca_files: Vec::new(),
        }
    }
}

/// A set of trust anchors.
#[derive(Debug, Clone, Default)]
pub struct TrustStore {
    anchors: Vec<TrustAnchor<'static>>,
    /// CRLs given as files (`tls.crl_files`), checked for every chain.
    crls: Vec<std::sync::Arc<webpki::CertRevocationList<'static>>>,
}

impl TrustStore {
    /// Loads the anchors `opts` asks for. Errors name the file and why.
    pub fn new(opts: &TrustOptions) -> Result<Self, CertError> {
        let mut anchors = Vec::new();
        if opts.mozilla {
            anchors.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        if opts.system {
            let result = rustls_native_certs::load_native_certs();
            let before = anchors.len();
            for der in &result.certs {
                // A system store may hold a few certificates webpki cannot use
                // as anchors; skip those rather than fail the whole store.
                if let Ok(a) = webpki::anchor_from_trusted_cert(der) {
                    anchors.push(a.to_owned());
                }
            }
            if anchors.len() == before {
                let why = result
                    .errors
                    .first()
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "no certificates found".into());
                return Err(CertError::System(why));
            }
        }
        for path in &opts.ca_files {
            anchors.extend(load_ca_file(path)?);
        }
        Ok(TrustStore {
            anchors,
            crls: Vec::new(),
        })
    }

    /// A store of exactly these DER certificates (tests, lab).
    pub fn from_ders(anchors: &[Vec<u8>]) -> Result<Self, CertError> {
        let mut out = Vec::with_capacity(anchors.len());
        for (index, der) in anchors.iter().enumerate() {
            let cert = CertificateDer::from(der.as_slice());
            let a =
                webpki::anchor_from_trusted_cert(&cert).map_err(|e| CertError::BadCertificate {
                    path: None,
                    index,
                    reason: load_words(&e),
                })?;
            out.push(a.to_owned());
        }
        Ok(TrustStore {
            anchors: out,
            crls: Vec::new(),
        })
    }

    /// Adds CRLs from files (PEM `X509 CRL` blocks, or one DER CRL), checked
    /// for every chain from then on. Errors name the file and why.
    pub fn add_crl_files(&mut self, paths: &[PathBuf]) -> Result<(), CertError> {
        for p in paths {
            let path = p.display().to_string();
            let bytes = std::fs::read(p).map_err(|e| CertError::Io {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            let ders = crl_ders(&bytes);
            if ders.is_empty() {
                return Err(CertError::Io {
                    path,
                    reason: "no CRL in the file (expected PEM \"X509 CRL\" blocks or one DER CRL)"
                        .into(),
                });
            }
            for der in ders {
                let crl = parse_crl(&der).map_err(|reason| CertError::Io {
                    path: path.clone(),
                    reason,
                })?;
                self.crls.push(std::sync::Arc::new(crl));
            }
        }
        Ok(())
    }

    /// Number of CRLs loaded from files.
    pub fn crl_count(&self) -> usize {
        self.crls.len()
    }

    /// Number of anchors.
    pub fn len(&self) -> usize {
        self.anchors.len()
    }

    /// True when there are no anchors (nothing will be trusted).
    pub fn is_empty(&self) -> bool {
        self.anchors.is_empty()
    }

    /// Whether some anchor's subject is this Name (DER with its SEQUENCE header).
    pub(crate) fn has_subject(&self, name_der: &[u8]) -> bool {
        self.anchors
            .iter()
            .any(|a| with_seq_header(a.subject.as_ref()) == name_der)
    }
}

fn load_ca_file(path: &PathBuf) -> Result<Vec<TrustAnchor<'static>>, CertError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| CertError::Io {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    let mut ders: Vec<CertificateDer<'static>> = Vec::new();
    let mut reader = bytes.as_slice();
    for item in rustls_pemfile::certs(&mut reader) {
        let der = item.map_err(|e| CertError::BadCertificate {
            path: Some(shown.clone()),
            index: ders.len(),
            reason: format!("bad PEM: {e}"),
        })?;
        ders.push(der);
    }
    if ders.is_empty() {
        if bytes.first() == Some(&0x30) {
            ders.push(CertificateDer::from(bytes.clone()));
        } else {
            return Err(CertError::NoCertificates { path: shown });
        }
    }
    ders.iter()
        .enumerate()
        .map(|(index, der)| {
            webpki::anchor_from_trusted_cert(der)
                .map(|a| a.to_owned())
                .map_err(|e| CertError::BadCertificate {
                    path: Some(shown.clone()),
                    index,
                    reason: format!("not a usable CA certificate: {}", load_words(&e)),
                })
        })
        .collect()
}

/// The verdict of webpki on a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub trusted: bool,
    pub error: Option<String>,
    pub detail: Option<String>,
    pub anchor: Option<String>,
}

fn unix_time(t: SystemTime) -> UnixTime {
    UnixTime::since_unix_epoch(t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default())
}

/// The DER CRLs in `bytes`: PEM `X509 CRL` blocks, or the whole input as DER.
pub fn crl_ders(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut reader = bytes;
    let pems: Vec<Vec<u8>> = rustls_pemfile::crls(&mut reader)
        .filter_map(Result::ok)
        .map(|c| c.as_ref().to_vec())
        .collect();
    if !pems.is_empty() {
        pems
    } else if bytes.first() == Some(&0x30) {
        vec![bytes.to_vec()]
    } else {
        Vec::new()
    }
}

/// Parses one DER CRL for webpki.
pub(crate) fn parse_crl(der: &[u8]) -> Result<webpki::CertRevocationList<'static>, String> {
    webpki::OwnedCertRevocationList::from_der(der)
        .map(webpki::CertRevocationList::from)
        .map_err(|e| format!("not a valid CRL: {}", load_words(&e)))
}

/// The words for webpki's refusal to load a trust anchor or parse a CRL (no
/// Rust Debug text reaches a user).
#[allow(deprecated)]
fn load_words(e: &webpki::Error) -> String {
    use webpki::Error as E;
    match e {
        E::BadDer | E::TrailingData(_) => "the DER encoding is malformed".into(),
        E::BadDerTime => "a date in it is malformed".into(),
        E::InvalidCertValidity => "its validity period is malformed".into(),
        E::UnsupportedCertVersion => "not an X.509 version 3 certificate".into(),
        E::UnsupportedCrlVersion => "not a version 2 CRL".into(),
        E::UnsupportedCriticalExtension => {
            "it has a critical extension webpki does not support".into()
        }
        E::MalformedExtensions | E::ExtensionValueInvalid => "an extension is malformed".into(),
        E::InvalidSerialNumber => "its serial number is malformed".into(),
        E::InvalidCrlNumber => "its CRL number is malformed".into(),
        E::UnsupportedDeltaCrl => "delta CRLs are not supported".into(),
        E::UnsupportedIndirectCrl => "indirect CRLs are not supported".into(),
        E::UnsupportedCrlIssuingDistributionPoint => {
            "its issuing distribution point is not supported".into()
        }
        E::UnsupportedRevocationReason => {
            "it lists a revocation reason webpki does not know".into()
        }
        E::UnsupportedSignatureAlgorithm
        | E::UnsupportedSignatureAlgorithmContext(_)
        | E::UnsupportedCrlSignatureAlgorithm
        | E::UnsupportedCrlSignatureAlgorithmContext(_) => {
            "its signature algorithm is not supported".into()
        }
        _ => "webpki rejected it".into(),
    }
}

/// Verifies `ders` (leaf first) for `role` at `now`, without any name check.
/// `leaf_self_signed` (self-signed and its subject is not an anchor) picks
/// "self_signed" over "unknown_issuer" / "ca_used_as_leaf".
pub(crate) fn verify(
    ders: &[Vec<u8>],
    role: Side,
    now: SystemTime,
    store: &TrustStore,
    leaf_self_signed: bool,
    extra_crls: &[webpki::CertRevocationList<'static>],
) -> Verdict {
    let Some((leaf_der, rest)) = ders.split_first() else {
        return Verdict {
            trusted: false,
            error: Some("other".into()),
            detail: Some("empty certificate chain".into()),
            anchor: None,
        };
    };
    let leaf_der = CertificateDer::from(leaf_der.as_slice());
    let intermediates: Vec<CertificateDer<'_>> = rest
        .iter()
        .map(|d| CertificateDer::from(d.as_slice()))
        .collect();
    let ee = match EndEntityCert::try_from(&leaf_der) {
        Ok(ee) => ee,
        Err(e) => {
            return Verdict {
                trusted: false,
                error: Some(error_kind(&e, leaf_self_signed).into()),
                detail: Some(format!(
                    "the leaf certificate could not be read as an end-entity certificate: {}",
                    describe(&e, leaf_self_signed)
                )),
                anchor: None,
            }
        }
    };
    let usage = match role {
        Side::Server => KeyUsage::server_auth(),
        Side::Client => KeyUsage::client_auth(),
    };
    // Revocation: every CRL we have (files and fetched); a certificate whose
    // issuer published no CRL here is not judged (unknown status allowed).
    let crl_refs: Vec<&webpki::CertRevocationList<'_>> = store
        .crls
        .iter()
        .map(|c| c.as_ref())
        .chain(extra_crls.iter())
        .collect();
    let revocation = webpki::RevocationOptionsBuilder::new(&crl_refs)
        .ok()
        .map(|b| {
            b.with_depth(webpki::RevocationCheckDepth::Chain)
                .with_status_policy(webpki::UnknownStatusPolicy::Allow)
                .with_expiration_policy(webpki::ExpirationPolicy::Ignore)
                .build()
        });
    match ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &store.anchors,
        &intermediates,
        unix_time(now),
        usage,
        revocation,
        None,
    ) {
        Ok(path) => Verdict {
            trusted: true,
            error: None,
            detail: None,
            anchor: rfc4514_from_value(path.anchor().subject.as_ref()),
        },
        Err(e) => Verdict {
            trusted: false,
            error: Some(error_kind(&e, leaf_self_signed).into()),
            detail: Some(detail(&e, leaf_self_signed)),
            anchor: None,
        },
    }
}

#[allow(deprecated)]
fn error_kind(e: &webpki::Error, leaf_self_signed: bool) -> &'static str {
    use webpki::Error as E;
    match e {
        E::UnknownIssuer | E::CaUsedAsEndEntity if leaf_self_signed => "self_signed",
        E::CaUsedAsEndEntity => "ca_used_as_leaf",
        E::UnknownIssuer => "unknown_issuer",
        E::CertExpired { .. } => "expired",
        E::CertNotValidYet { .. } => "not_yet_valid",
        E::InvalidSignatureForPublicKey | E::SignatureAlgorithmMismatch => "bad_signature",
        E::CertRevoked => "revoked",
        E::UnsupportedSignatureAlgorithm
        | E::UnsupportedSignatureAlgorithmContext(_)
        | E::UnsupportedSignatureAlgorithmForPublicKey
        | E::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => "unsupported_key",
        E::RequiredEkuNotFound | E::RequiredEkuNotFoundContext(_) => "wrong_usage",
        _ => "other",
    }
}

/// The words for a verification failure, with the dates when validity is
/// the reason (no Rust Debug text reaches a user).
fn detail(e: &webpki::Error, leaf_self_signed: bool) -> String {
    let when = |t: &rustls_pki_types::UnixTime| {
        let secs = i64::try_from(t.as_secs()).unwrap_or(i64::MAX);
        time::OffsetDateTime::from_unix_timestamp(secs)
            .ok()
            .and_then(|d| {
                d.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| format!("{secs} s after 1970"))
    };
    let base = describe(e, leaf_self_signed);
    match e {
        webpki::Error::CertExpired { time, not_after } => {
            format!(
                "{base} (not after {}, checked at {})",
                when(not_after),
                when(time)
            )
        }
        webpki::Error::CertNotValidYet { time, not_before } => {
            format!(
                "{base} (not before {}, checked at {})",
                when(not_before),
                when(time)
            )
        }
        _ => base.to_string(),
    }
}

fn describe(e: &webpki::Error, leaf_self_signed: bool) -> &'static str {
    match error_kind(e, leaf_self_signed) {
        "self_signed" => "the certificate is self-signed and not among the trust anchors",
        "unknown_issuer" => "no path from the certificate to a trust anchor",
        "expired" => "a certificate in the chain has expired",
        "not_yet_valid" => "a certificate in the chain is not valid yet",
        "bad_signature" => "a signature in the chain does not verify",
        "revoked" => "a certificate in the chain is revoked",
        "unsupported_key" => "a key or signature algorithm in the chain is not supported",
        "wrong_usage" => "the certificate's extended key usage does not allow this role",
        "ca_used_as_leaf" => "the certificate presented is a CA certificate (basicConstraints CA:TRUE), not an end-entity certificate",
        _ => "the chain was rejected",
    }
}

/// Whether each certificate is issued (by name) by the next one.
pub(crate) fn order_ok(raw: &[Option<RawNames>]) -> bool {
    raw.windows(2).all(|w| match w {
        [Some(a), Some(b)] => a.issuer == b.subject,
        _ => false,
    })
}

/// Follows issuer names from the leaf through the certificates present; true
/// when the top of that path is not self-issued and its issuer is not an anchor.
pub(crate) fn missing_intermediate(raw: &[Option<RawNames>], store: &TrustStore) -> bool {
    let mut current: &RawNames = match raw.first() {
        Some(Some(r)) => r,
        _ => return false,
    };
    for _ in 0..raw.len() {
        if current.subject == current.issuer {
            return false;
        }
        match raw
            .iter()
            .flatten()
            .find(|c| c.subject == current.issuer && c.subject != current.subject)
        {
            Some(next) => current = next,
            None => break,
        }
    }
    current.subject != current.issuer && !store.has_subject(&current.issuer)
}
