//! X.509 field extraction: DER in, [`CertInfo`] out.
//!
//! This module owns turning one certificate into the facts an administrator
//! compares (subject, SANs, issuer, validity, key, fingerprints and the
//! SHA-1 thumbprint Exchange shows, extensions). It must not decide trust
//! (`trust`) or names (`names`), and must not panic on any input.

use serde::{Deserialize, Serialize};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use std::time::SystemTime;
use x509_parser::der_parser::oid::Oid;
use x509_parser::extensions::{DistributionPointName, GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate, X509Name};
use x509_parser::public_key::PublicKey;

use super::CertError;

/// The time-independent facts of one certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertInfo {
    /// Full subject DN as an RFC 4514 string (most specific RDN first, as
    /// `openssl x509 -nameopt RFC2253` prints it).
    pub subject: String,
    /// The (last) subject CN, if any.
    pub cn: Option<String>,
    /// DNS subject alternative names, as written in the certificate.
    pub san_dns: Vec<String>,
    /// IP subject alternative names, in the usual text form.
    pub san_ip: Vec<String>,
    /// Issuer DN, RFC 4514 string.
    pub issuer: String,
    /// Serial number, lower-case hex without separators or leading zero bytes.
    pub serial: String,
    /// Start of validity, RFC 3339 UTC (`2026-01-02T03:04:05Z`).
    pub not_before: String,
    /// End of validity, RFC 3339 UTC.
    pub not_after: String,
    /// Key algorithm: "RSA", "EC", "Ed25519", "Ed448", "DSA" or a dotted OID.
    pub key_type: String,
    /// Key size in bits (RSA modulus, EC field size); 0 when unknown.
    pub key_bits: u32,
    /// Named curve for EC keys ("P-256", "P-384", "P-521", or the OID).
    pub curve: Option<String>,
    /// Signature algorithm, OpenSSL-style short name ("sha256WithRSAEncryption",
    /// "ecdsa-with-SHA256") or dotted OID.
    pub signature_algorithm: String,
    /// SHA-256 fingerprint of the DER, lower-case hex.
    pub sha256: String,
    /// SHA-1 of the DER, lower-case hex without separators (the log's one
    /// spelling for hashes). Upper-cased, it is Exchange's
    /// `Get-ExchangeCertificate` Thumbprint, as the console shows it.
    pub sha1: String,
    /// basicConstraints cA.
    pub is_ca: bool,
    /// basicConstraints pathLenConstraint.
    pub path_len: Option<u32>,
    /// Extended key usages ("serverAuth", "clientAuth", … or dotted OIDs).
    pub eku: Vec<String>,
    /// CRL distribution point URLs.
    pub crl_urls: Vec<String>,
    /// OCSP responder URLs (AIA).
    pub ocsp_urls: Vec<String>,
    /// CA issuer URLs (AIA), where a missing intermediate can be fetched.
    pub ca_issuer_urls: Vec<String>,
    /// Subject and issuer DNs are identical (self-issued; for a leaf: self-signed).
    pub self_signed: bool,
    /// X.509 version (1, 2 or 3).
    pub version: u32,
}

/// Validity of a certificate at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// Whole days until not_after (floor; negative once expired).
    pub days_left: i64,
    /// now > not_after.
    pub expired: bool,
    /// now < not_before.
    pub not_yet_valid: bool,
}

impl CertInfo {
    /// Validity at `now`; `None` if the stored dates do not parse (only
    /// possible for a hand-built or deserialized value).
    pub fn validity_at(&self, now: SystemTime) -> Option<Validity> {
        let rfc = &time::format_description::well_known::Rfc3339;
        let nb = time::OffsetDateTime::parse(&self.not_before, rfc).ok()?;
        let na = time::OffsetDateTime::parse(&self.not_after, rfc).ok()?;
        let now = time::OffsetDateTime::from(now);
        let left = na - now;
        Some(Validity {
            days_left: left.whole_seconds().div_euclid(86_400),
            expired: now > na,
            not_yet_valid: now < nb,
        })
    }
}

/// Raw DN bytes kept for chain-order and issuer lookups.
#[derive(Debug, Clone)]
pub(crate) struct RawNames {
    /// Subject Name, DER including its SEQUENCE header.
    pub subject: Vec<u8>,
    /// Issuer Name, DER including its SEQUENCE header.
    pub issuer: Vec<u8>,
}

/// Parses one DER certificate into its facts.
pub fn parse_cert(der: &[u8]) -> Result<CertInfo, CertError> {
    parse_full(der).map(|(info, _)| info)
}

pub(crate) fn parse_full(der: &[u8]) -> Result<(CertInfo, RawNames), CertError> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| CertError::Parse(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CertError::Parse(format!(
            "{} trailing bytes after the certificate",
            rest.len()
        )));
    }
    let tbs = &cert.tbs_certificate;

    let subject = rfc4514(tbs.subject());
    let issuer = rfc4514(tbs.issuer());
    let cn = tbs
        .subject()
        .iter_common_name()
        .filter_map(|a| a.as_str().ok().map(String::from))
        .last();

    let mut san_dns = Vec::new();
    let mut san_ip = Vec::new();
    let mut crl_urls = Vec::new();
    let mut ocsp_urls = Vec::new();
    let mut ca_issuer_urls = Vec::new();
    let mut is_ca = false;
    let mut path_len = None;
    let mut eku = Vec::new();
    for ext in tbs.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                for gn in &san.general_names {
                    match gn {
                        GeneralName::DNSName(d) => san_dns.push((*d).to_string()),
                        GeneralName::IPAddress(ip) => san_ip.push(ip_text(ip)),
                        _ => {}
                    }
                }
            }
            ParsedExtension::BasicConstraints(bc) => {
                is_ca = bc.ca;
                path_len = bc.path_len_constraint;
            }
            ParsedExtension::ExtendedKeyUsage(e) => {
                let named = [
                    (e.server_auth, "serverAuth"),
                    (e.client_auth, "clientAuth"),
                    (e.code_signing, "codeSigning"),
                    (e.email_protection, "emailProtection"),
                    (e.time_stamping, "timeStamping"),
                    (e.ocsp_signing, "OCSPSigning"),
                    (e.any, "anyExtendedKeyUsage"),
                ];
                eku.extend(
                    named
                        .iter()
                        .filter(|(on, _)| *on)
                        .map(|(_, n)| n.to_string()),
                );
                eku.extend(e.other.iter().map(|o| o.to_id_string()));
            }
            ParsedExtension::CRLDistributionPoints(points) => {
                for p in points.iter() {
                    if let Some(DistributionPointName::FullName(names)) = &p.distribution_point {
                        crl_urls.extend(uris(names));
                    }
                }
            }
            ParsedExtension::AuthorityInfoAccess(aia) => {
                for ad in &aia.accessdescs {
                    let url = match &ad.access_location {
                        GeneralName::URI(u) => (*u).to_string(),
                        _ => continue,
                    };
                    let id = ad.access_method.to_id_string();
                    if id == "1.3.6.1.5.5.7.48.1" {
                        ocsp_urls.push(url);
                    } else if id == "1.3.6.1.5.5.7.48.2" {
                        ca_issuer_urls.push(url);
                    }
                }
            }
            _ => {}
        }
    }

    let spki = tbs.public_key();
    let alg_oid = spki.algorithm.algorithm.to_id_string();
    let (key_type, curve) = match alg_oid.as_str() {
        "1.2.840.113549.1.1.1" | "1.2.840.113549.1.1.10" => ("RSA".to_string(), None),
        "1.2.840.10045.2.1" => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| curve_name(&o));
            ("EC".to_string(), curve)
        }
        "1.3.101.112" => ("Ed25519".to_string(), None),
        "1.3.101.113" => ("Ed448".to_string(), None),
        "1.2.840.10040.4.1" => ("DSA".to_string(), None),
        other => (other.to_string(), None),
    };
    let key_bits = match key_type.as_str() {
        "Ed25519" => 256,
        "Ed448" => 456,
        _ => match spki.parsed() {
            Ok(PublicKey::Unknown(_)) | Err(_) => 0,
            Ok(pk) => u32::try_from(pk.key_size()).unwrap_or(0),
        },
    };

    let sig_oid = &cert.signature_algorithm.algorithm;
    let signature_algorithm = sig_name(sig_oid);

    let serial = {
        let raw = cert.raw_serial();
        let skip = raw
            .iter()
            .take_while(|b| **b == 0)
            .count()
            .min(raw.len().saturating_sub(1));
        hex_lower(raw.get(skip..).unwrap_or(&[]))
    };

    let fmt = |t: &x509_parser::time::ASN1Time| {
        t.to_datetime()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };

    let raw = RawNames {
        subject: tbs.subject().as_raw().to_vec(),
        issuer: tbs.issuer().as_raw().to_vec(),
    };
    let info = CertInfo {
        subject,
        cn,
        san_dns,
        san_ip,
        issuer,
        serial,
        not_before: fmt(&tbs.validity().not_before),
        not_after: fmt(&tbs.validity().not_after),
        key_type,
        key_bits,
        curve,
        signature_algorithm,
        sha256: hex_lower(&Sha256::digest(der)),
        sha1: hex_lower(&Sha1::digest(der)),
        is_ca,
        path_len,
        eku,
        crl_urls,
        ocsp_urls,
        ca_issuer_urls,
        self_signed: raw.subject == raw.issuer,
        version: tbs.version().0.saturating_add(1),
    };
    Ok((info, raw))
}

fn uris(names: &[GeneralName<'_>]) -> Vec<String> {
    names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some((*u).to_string()),
            _ => None,
        })
        .collect()
}

fn curve_name(oid: &Oid<'_>) -> String {
    match oid.to_id_string().as_str() {
        "1.2.840.10045.3.1.7" => "P-256".into(),
        "1.3.132.0.34" => "P-384".into(),
        "1.3.132.0.35" => "P-521".into(),
        "1.3.132.0.10" => "secp256k1".into(),
        other => other.into(),
    }
}

fn sig_name(oid: &Oid<'_>) -> String {
    let id = oid.to_id_string();
    let known = match id.as_str() {
        "1.2.840.113549.1.1.4" => "md5WithRSAEncryption",
        "1.2.840.113549.1.1.5" => "sha1WithRSAEncryption",
        "1.2.840.113549.1.1.10" => "rsassaPss",
        "1.2.840.113549.1.1.11" => "sha256WithRSAEncryption",
        "1.2.840.113549.1.1.12" => "sha384WithRSAEncryption",
        "1.2.840.113549.1.1.13" => "sha512WithRSAEncryption",
        "1.2.840.113549.1.1.14" => "sha224WithRSAEncryption",
        "1.2.840.10045.4.1" => "ecdsa-with-SHA1",
        "1.2.840.10045.4.3.2" => "ecdsa-with-SHA256",
        "1.2.840.10045.4.3.3" => "ecdsa-with-SHA384",
        "1.2.840.10045.4.3.4" => "ecdsa-with-SHA512",
        "1.3.101.112" => "ED25519",
        "1.3.101.113" => "ED448",
        _ => return id,
    };
    known.to_string()
}

/// Short names for DN attributes, as RFC 4514 and OpenSSL's RFC2253 output use.
fn attr_short_name(id: &str) -> Option<&'static str> {
    Some(match id {
        "2.5.4.3" => "CN",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "street",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.5" => "serialNumber",
        "2.5.4.4" => "SN",
        "2.5.4.42" => "GN",
        "2.5.4.12" => "title",
        "2.5.4.17" => "postalCode",
        "2.5.4.97" => "organizationIdentifier",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        "1.2.840.113549.1.9.1" => "emailAddress",
        "1.3.6.1.4.1.311.60.2.1.3" => "jurisdictionC",
        "1.3.6.1.4.1.311.60.2.1.2" => "jurisdictionST",
        "2.5.4.15" => "businessCategory",
        _ => return None,
    })
}

/// RFC 4514 string: RDNs in reverse order joined by ",", multi-valued RDNs by "+".
pub(crate) fn rfc4514(name: &X509Name<'_>) -> String {
    let rdns: Vec<String> = name
        .iter_rdn()
        .map(|rdn| {
            rdn.iter()
                .map(|atv| {
                    let id = atv.attr_type().to_id_string();
                    let value = match atv.as_str() {
                        Ok(s) => escape_4514(s),
                        // RFC 4514 §2.4: "#" then the hex of the value's BER encoding.
                        Err(_) => {
                            use x509_parser::der_parser::asn1_rs::ToDer;
                            let der = atv.attr_value().to_der_vec().unwrap_or_default();
                            format!("#{}", hex_lower(&der))
                        }
                    };
                    match attr_short_name(&id) {
                        Some(n) => format!("{n}={value}"),
                        None => format!("{id}={value}"),
                    }
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

fn escape_4514(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let last = s.chars().count().saturating_sub(1);
    for (i, c) in s.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            '\0' => out.push_str("\\00"),
            c => out.push(c),
        }
    }
    out
}

/// Parses a DER Name *value* (no SEQUENCE header, as webpki stores anchor
/// subjects) into an RFC 4514 string.
pub(crate) fn rfc4514_from_value(value: &[u8]) -> Option<String> {
    let der = with_seq_header(value);
    let (_, name) = X509Name::from_der(&der).ok()?;
    Some(rfc4514(&name))
}

/// Wraps a Name value in its SEQUENCE header.
pub(crate) fn with_seq_header(value: &[u8]) -> Vec<u8> {
    let mut out = vec![0x30];
    let len = value.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        let significant = bytes.get(skip..).unwrap_or(&[]);
        out.push(0x80 | significant.len() as u8);
        out.extend_from_slice(significant);
    }
    out.extend_from_slice(value);
    out
}

fn ip_text(bytes: &[u8]) -> String {
    if let Ok(a) = <[u8; 4]>::try_from(bytes) {
        std::net::Ipv4Addr::from(a).to_string()
    } else if let Ok(a) = <[u8; 16]>::try_from(bytes) {
        std::net::Ipv6Addr::from(a).to_string()
    } else {
        format!("#{}", hex_lower(bytes))
    }
}

pub(crate) fn hex_lower(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}
