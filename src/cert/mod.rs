//! Certificates: X.509 facts, chain trust (webpki) and RFC 6125 name checks.
//!
//! This module owns everything smtptap says about a certificate chain once
//! the TLS observer (or a probe, or intercept mode) has extracted its DER
//! certificates, plus minting certificates for the lab and tests ([`mint`]).
//! It must not touch sockets, fetch anything (AIA, OCSP, CRL), or panic on
//! any bytes a peer sends.
//!
//! ```text
//!  ders (leaf first) ──▶ analyze_chain ──┬─▶ cert.info  ×N   (info::parse_cert; cert.parse_error if bad)
//!                                        ├─▶ cert.chain       (trust::verify via webpki, order, missing intermediate)
//!                                        └─▶ cert.names       (names::check_names, RFC 6125)
//! ```
//!
//! | file | owns |
//! |---|---|
//! | `info.rs` | [`parse_cert`], [`CertInfo`] |
//! | `trust.rs` | [`TrustStore`], [`TrustOptions`], webpki verification and error kinds |
//! | `names.rs` | [`name_matches`], [`NameCheck`], [`NameSource`] |
//! | `mint.rs` | [`mint::Ca`], [`mint::LeafSpec`], [`mint::self_signed`] |

use std::fmt;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::event::Side;

mod info;
pub mod mint;
mod names;
mod trust;

#[cfg(test)]
mod tests;

pub use info::{parse_cert, CertInfo, Validity};
pub use names::{check_names, name_matches, NameCheck, NameSource};
pub(crate) use trust::parse_crl;
pub use trust::{crl_ders, TrustOptions, TrustStore};

/// Errors of this module (loading anchors, parsing, minting).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertError {
    /// A CA file could not be read.
    Io {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A CA file holds no certificate.
    NoCertificates {
        /// The file.
        path: String,
    },
    /// A certificate could not be used as a trust anchor.
    BadCertificate {
        /// The file, if it came from one.
        path: Option<String>,
        /// Its position (0-based) in the file or list.
        index: usize,
        /// Why.
        reason: String,
    },
    /// The system trust store could not be loaded.
    System(String),
    /// A certificate's DER could not be parsed.
    Parse(String),
    /// Minting failed.
    Mint(String),
}

impl fmt::Display for CertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertError::Io { path, reason } => write!(f, "cannot read CA file {path}: {reason}"),
            CertError::NoCertificates { path } => write!(
                f,
                "CA file {path}: no certificate found (expected PEM \"BEGIN CERTIFICATE\" blocks or one DER certificate)"
            ),
            CertError::BadCertificate {
                path: Some(path),
                index,
                reason,
            } => write!(f, "CA file {path}: certificate #{index}: {reason}"),
            CertError::BadCertificate {
                path: None,
                index,
                reason,
            } => write!(f, "trust anchor #{index}: {reason}"),
            CertError::System(why) => write!(f, "cannot load the system trust store: {why}"),
            CertError::Parse(why) => write!(f, "cannot parse certificate: {why}"),
            CertError::Mint(why) => write!(f, "cannot mint certificate: {why}"),
        }
    }
}

impl std::error::Error for CertError {}

/// What [`analyze_chain`] needs besides the chain.
#[derive(Debug, Clone)]
pub struct CheckContext {
    /// Names the certificate should cover, with where each came from.
    pub names: Vec<(NameSource, String)>,
    /// A certificate with fewer days left than this is `expiring`.
    pub expiry_warning_days: u32,
    /// The instant validity and trust are judged at.
    pub now: SystemTime,
}

/// Certificate, trust and name-check facts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event")]
pub enum CertEvent {
    /// One certificate of a chain.
    #[serde(rename = "cert.info")]
    Info {
        /// Whose chain (the server's, or the client's certificate).
        side: Side,
        /// Position in the chain as sent (0 = leaf).
        index: usize,
        /// The certificate's fields.
        #[serde(flatten)]
        info: Box<CertInfo>,
        /// Whole days until not_after at the check instant (negative once expired).
        days_left: i64,
        /// Valid, but fewer than `expiry_warning_days` days left.
        expiring: bool,
        /// Past not_after.
        expired: bool,
        /// Before not_before.
        not_yet_valid: bool,
    },
    /// A certificate of the chain could not be parsed.
    #[serde(rename = "cert.parse_error")]
    ParseError {
        /// Whose chain.
        side: Side,
        /// Position in the chain (0 = leaf).
        index: usize,
        /// Why.
        reason: String,
    },
    /// The trust verdict on the chain (names not considered).
    #[serde(rename = "cert.chain")]
    Chain {
        /// Whose chain.
        side: Side,
        /// webpki found a path to a trust anchor, valid now, for this side.
        trusted: bool,
        /// Stable kind when not trusted: "unknown_issuer", "self_signed",
        /// "expired", "not_yet_valid", "bad_signature", "revoked",
        /// "unsupported_key", "wrong_usage" (EKU lacks serverAuth/clientAuth),
        /// "ca_used_as_leaf" (a CA:TRUE certificate presented as the leaf), "other".
        error: Option<String>,
        /// Human explanation in words (with dates for validity failures).
        detail: Option<String>,
        /// Each certificate is issued (by name) by the next one.
        order_ok: bool,
        /// The issuer of the top of the chain is neither sent nor a trust
        /// anchor, and that top is not self-signed: the server should send
        /// its intermediate(s).
        missing_intermediate: bool,
        /// Subject (RFC 4514) of the trust anchor the path ended at.
        anchor: Option<String>,
        /// Number of certificates sent.
        chain_len: usize,
    },
    /// A CRL named by a certificate was fetched (`check_revocation = true`), or not.
    #[serde(rename = "cert.crl")]
    Crl {
        /// Whose chain named it.
        side: Side,
        /// The CRL distribution point.
        url: String,
        /// Whether a CRL was obtained (from the network, or this run's cache).
        ok: bool,
        /// Why not, as a stable code: `refused`, `timeout`, `http_status`,
        /// `not_a_crl`, `bad_url`, `budget`, `other`.
        error: Option<String>,
        /// Why not, in words.
        detail: Option<String>,
        /// Size of the CRL(s) obtained.
        bytes: usize,
    },
    /// Expected names checked against the leaf.
    #[serde(rename = "cert.names")]
    Names {
        /// Whose certificate.
        side: Side,
        /// One check per expected name.
        checks: Vec<NameCheck>,
    },
}

impl CertEvent {
    /// The dotted event name, as in the JSON `event` field.
    pub fn name(&self) -> &'static str {
        #[allow(unreachable_patterns)]
        match self {
            CertEvent::Info { .. } => "cert.info",
            CertEvent::ParseError { .. } => "cert.parse_error",
            CertEvent::Chain { .. } => "cert.chain",
            CertEvent::Crl { .. } => "cert.crl",
            CertEvent::Names { .. } => "cert.names",
        }
    }
}

/// Certificates beyond this position are not analysed (bounded work and
/// memory whatever a peer sends); real chains have 2–4.
pub const MAX_CHAIN: usize = 16;

/// Analyses a chain as sent (leaf first) by `side`: one `cert.info` (or
/// `cert.parse_error`) per certificate, then `cert.chain`, then `cert.names`
/// when `ctx.names` is not empty and the leaf parsed. Only the first
/// [`MAX_CHAIN`] certificates are analysed; a longer chain gets a
/// `cert.parse_error` at index `MAX_CHAIN` saying so (`chain_len` counts all).
pub fn analyze_chain(
    all_ders: &[Vec<u8>],
    side: Side,
    ctx: &CheckContext,
    store: &TrustStore,
) -> Vec<CertEvent> {
    analyze_chain_with_crls(all_ders, side, ctx, store, &[])
}

/// [`analyze_chain`] with extra CRLs (DER, e.g. fetched from the chain's CRL
/// distribution points) besides the store's own; unparsable ones are skipped.
pub fn analyze_chain_with_crls(
    all_ders: &[Vec<u8>],
    side: Side,
    ctx: &CheckContext,
    store: &TrustStore,
    crl_ders: &[Vec<u8>],
) -> Vec<CertEvent> {
    let extra_crls: Vec<webpki::CertRevocationList<'static>> = crl_ders
        .iter()
        .filter_map(|d| trust::parse_crl(d).ok())
        .collect();
    let extra_crls = extra_crls.as_slice();
    let ders = all_ders.get(..MAX_CHAIN).unwrap_or(all_ders);
    let mut events = Vec::with_capacity(ders.len() + 3);
    let mut raws = Vec::with_capacity(ders.len());
    let mut leaf: Option<CertInfo> = None;
    for (index, der) in ders.iter().enumerate() {
        match info::parse_full(der) {
            Ok((info, raw)) => {
                let v = info.validity_at(ctx.now).unwrap_or(Validity {
                    days_left: 0,
                    expired: false,
                    not_yet_valid: false,
                });
                let expiring = !v.expired
                    && !v.not_yet_valid
                    && v.days_left < i64::from(ctx.expiry_warning_days);
                if index == 0 {
                    leaf = Some(info.clone());
                }
                raws.push(Some(raw));
                events.push(CertEvent::Info {
                    side,
                    index,
                    info: Box::new(info),
                    days_left: v.days_left,
                    expiring,
                    expired: v.expired,
                    not_yet_valid: v.not_yet_valid,
                });
            }
            Err(e) => {
                raws.push(None);
                events.push(CertEvent::ParseError {
                    side,
                    index,
                    reason: e.to_string(),
                });
            }
        }
    }
    if all_ders.len() > ders.len() {
        events.push(CertEvent::ParseError {
            side,
            index: MAX_CHAIN,
            reason: format!(
                "chain of {} certificates: only the first {MAX_CHAIN} are analysed",
                all_ders.len()
            ),
        });
    }
    let leaf_self_signed = leaf.as_ref().is_some_and(|l| l.self_signed)
        && !raws
            .first()
            .and_then(Option::as_ref)
            .is_some_and(|r| store.has_subject(&r.subject));
    let verdict = trust::verify(ders, side, ctx.now, store, leaf_self_signed, extra_crls);
    let missing = !verdict.trusted && trust::missing_intermediate(&raws, store);
    events.push(CertEvent::Chain {
        side,
        trusted: verdict.trusted,
        error: verdict.error,
        detail: verdict.detail,
        order_ok: trust::order_ok(&raws),
        missing_intermediate: missing,
        anchor: verdict.anchor,
        chain_len: all_ders.len(),
    });
    if let Some(leaf) = leaf {
        if !ctx.names.is_empty() {
            events.push(CertEvent::Names {
                side,
                checks: check_names(&leaf, &ctx.names),
            });
        }
    }
    events
}
