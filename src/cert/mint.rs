//! Certificate minting for the lab, the tests, `smtptap ca init` and intercept
//! mode (leaves in the image of the upstream's, `proxy::intercept`).
//!
//! This module owns making certificates: a [`Ca`] (root or intermediate) that
//! issues leaves described by a [`LeafSpec`], and [`self_signed`] leaves. Keys
//! are ECDSA P-256 by default (ring cannot generate RSA keys); P-384 and
//! Ed25519 are available through [`KeyKind`]. It must not do I/O and must not
//! analyse certificates (that is `info`/`trust`/`names`).
//!
//! ```text
//!  Ca::new("Lab Root") ──intermediate("Lab Issuing CA")──▶ Ca
//!        │                                                 │
//!        └──issue(&LeafSpec)──▶ Issued { chain_der: [leaf, (intermediates…)], key_der }
//! ```
//!
//! ```
//! use smtptap::cert::mint::{Ca, LeafSpec};
//! let root = Ca::new("Lab Root CA")?;
//! let issuing = root.intermediate("Lab Issuing CA")?;
//! let issued = issuing.issue(&LeafSpec::server(["mail.example.test"]))?;
//! assert_eq!(issued.chain_der.len(), 2); // leaf, then the intermediate
//! # Ok::<(), smtptap::cert::CertError>(())
//! ```

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CrlDistributionPoint, CustomExtension, DistinguishedName,
    DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SerialNumber,
};

use x509_parser::prelude::FromDer;

use super::CertError;

const DAY: u64 = 86_400;

/// Which key algorithm a minted certificate gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyKind {
    /// ECDSA on P-256 with SHA-256 (the default: fast and universally accepted).
    #[default]
    EcdsaP256,
    /// ECDSA on P-384 with SHA-384.
    EcdsaP384,
    /// Ed25519 (not accepted by many MTAs; useful to test "unsupported key" paths).
    Ed25519,
}

impl KeyKind {
    fn generate(self) -> Result<KeyPair, CertError> {
        let alg = match self {
            KeyKind::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyKind::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyKind::Ed25519 => &rcgen::PKCS_ED25519,
        };
        KeyPair::generate_for(alg).map_err(mint_err)
    }
}

/// What a minted leaf certificate should look like.
///
/// Build one with [`LeafSpec::server`] / [`LeafSpec::client`] and adjust the
/// public fields (or the `with_*` helpers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafSpec {
    /// Subject alternative names: DNS names, or IP addresses (written as IP SANs).
    pub names: Vec<String>,
    /// The subject CN; `None` leaves the subject without a CN (SAN-only, as modern CAs do).
    pub common_name: Option<String>,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// Include the serverAuth extended key usage.
    pub server_auth: bool,
    /// Include the clientAuth extended key usage (Exchange connectors often send both).
    pub client_auth: bool,
    /// CRL distribution point URLs (one distribution point each).
    pub crl_urls: Vec<String>,
    /// An OCSP responder URL (Authority Information Access).
    pub ocsp_url: Option<String>,
    /// A CA issuers URL (Authority Information Access), where the issuer can be fetched.
    pub ca_issuers_url: Option<String>,
    /// The key algorithm.
    pub key: KeyKind,
}

impl LeafSpec {
    /// A server leaf for `names` (the first name also becomes the CN), valid from
    /// one day ago for 90 days, serverAuth only.
    pub fn server<I, S>(names: I) -> LeafSpec
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let names: Vec<String> = names.into_iter().map(Into::into).collect();
        let now = SystemTime::now();
        LeafSpec {
            common_name: names.first().cloned(),
            names,
            not_before: days_from(now, -1),
            not_after: days_from(now, 90),
            server_auth: true,
            client_auth: false,
            crl_urls: Vec::new(),
            ocsp_url: None,
            ca_issuers_url: None,
            key: KeyKind::default(),
        }
    }

    /// Like [`LeafSpec::server`] but with clientAuth only.
    pub fn client<I, S>(names: I) -> LeafSpec
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        LeafSpec {
            server_auth: false,
            client_auth: true,
            ..LeafSpec::server(names)
        }
    }

    /// Sets validity as day offsets from now (negative = in the past):
    /// `with_days(-30, -1)` is a certificate that expired yesterday.
    pub fn with_days(mut self, not_before: i64, not_after: i64) -> LeafSpec {
        let now = SystemTime::now();
        self.not_before = days_from(now, not_before);
        self.not_after = days_from(now, not_after);
        self
    }

    /// A spec "in the image" of an existing certificate (intercept mode): same
    /// DNS and IP SANs, CN, validity dates and server/client EKUs. Revocation
    /// and AIA URLs are not copied (they would point at the real CA). Dates
    /// that cannot be read fall back to [`LeafSpec::server`]'s.
    pub fn image_of(info: &super::CertInfo) -> LeafSpec {
        let mut spec = LeafSpec::server(info.san_dns.iter().chain(info.san_ip.iter()).cloned());
        spec.common_name = info.cn.clone();
        let rfc = &time::format_description::well_known::Rfc3339;
        if let (Ok(nb), Ok(na)) = (
            time::OffsetDateTime::parse(&info.not_before, rfc),
            time::OffsetDateTime::parse(&info.not_after, rfc),
        ) {
            spec.not_before = nb.into();
            spec.not_after = na.into();
        }
        let has = |e: &str| info.eku.iter().any(|x| x == e);
        spec.server_auth = info.eku.is_empty() || has("serverAuth");
        spec.client_auth = has("clientAuth");
        spec
    }

    /// Sets the subject CN.
    pub fn with_cn(mut self, cn: Option<&str>) -> LeafSpec {
        self.common_name = cn.map(String::from);
        self
    }
}

/// `base` moved by `days` days (either direction).
pub fn days_from(base: SystemTime, days: i64) -> SystemTime {
    let d = Duration::from_secs(days.unsigned_abs().saturating_mul(DAY));
    if days >= 0 {
        base.checked_add(d).unwrap_or(base)
    } else {
        base.checked_sub(d).unwrap_or(base)
    }
}

/// A minted certificate: the chain to send (leaf first, then the issuing
/// intermediates, never the root) and the leaf's private key.
#[derive(Clone)]
pub struct Issued {
    /// DER certificates, leaf first, as a server sends them.
    pub chain_der: Vec<Vec<u8>>,
    /// The leaf's private key, PKCS#8 DER.
    pub key_der: Vec<u8>,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("chain_len", &self.chain_der.len())
            .field("key_der", &"<redacted>")
            .finish()
    }
}

impl Issued {
    /// The chain as PEM, leaf first.
    pub fn chain_pem(&self) -> String {
        self.chain_der
            .iter()
            .map(|d| pem("CERTIFICATE", d))
            .collect()
    }

    /// The private key as PEM (`PRIVATE KEY`, PKCS#8).
    pub fn key_pem(&self) -> String {
        pem("PRIVATE KEY", &self.key_der)
    }

    /// The chain in the form rustls' `ServerConfig::with_single_cert` takes.
    pub fn rustls_chain(&self) -> Vec<rustls_pki_types::CertificateDer<'static>> {
        self.chain_der
            .iter()
            .map(|d| rustls_pki_types::CertificateDer::from(d.clone()))
            .collect()
    }

    /// The private key in the form rustls takes.
    pub fn rustls_key(&self) -> rustls_pki_types::PrivateKeyDer<'static> {
        rustls_pki_types::PrivateKeyDer::Pkcs8(self.key_der.clone().into())
    }
}

/// A certificate authority that can issue leaves and intermediates.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    /// DERs of the intermediates between this CA and the root (this CA's own
    /// DER first when it is an intermediate; empty for a root).
    chain_above: Vec<Vec<u8>>,
    /// The real certificate when loaded with [`Ca::from_pem`] (`cert` is then
    /// only a carrier of the DN for signing).
    loaded_der: Option<Vec<u8>>,
}

fn ca_subject_raw(der: &[u8]) -> Result<Vec<u8>, CertError> {
    super::info::parse_full(der).map(|(_, r)| r.subject)
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("der_len", &self.cert.der().len())
            .field("chain_above", &self.chain_above.len())
            .finish_non_exhaustive()
    }
}

fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "smtptap lab");
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now();
    params.not_before = days_from(now, -2).into();
    params.not_after = days_from(now, 3650).into();
    params.serial_number = Some(random_serial());
    params
}

impl Ca {
    /// A CRL signed by this CA revoking the given serials (lower-case hex, as
    /// `cert.info` shows them), valid from one day ago for seven days. DER.
    pub fn crl(&self, revoked_serials_hex: &[&str]) -> Result<Vec<u8>, CertError> {
        let now = time::OffsetDateTime::now_utc();
        let mut revoked = Vec::new();
        for hex in revoked_serials_hex {
            let bytes = hex_bytes(hex)
                .ok_or_else(|| CertError::Mint(format!("{hex:?} is not a hex serial")))?;
            revoked.push(rcgen::RevokedCertParams {
                serial_number: SerialNumber::from_slice(&bytes),
                revocation_time: now - time::Duration::hours(1),
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            });
        }
        let params = rcgen::CertificateRevocationListParams {
            this_update: now - time::Duration::days(1),
            next_update: now + time::Duration::days(7),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.cert, &self.key).map_err(mint_err)?;
        Ok(crl.der().to_vec())
    }

    /// A new self-signed root CA (P-256, valid from two days ago for ten years).
    pub fn new(common_name: &str) -> Result<Ca, CertError> {
        Ca::with_key(common_name, KeyKind::default())
    }

    /// A new self-signed root CA with the given key algorithm.
    pub fn with_key(common_name: &str, key: KeyKind) -> Result<Ca, CertError> {
        let key = key.generate()?;
        let cert = ca_params(common_name).self_signed(&key).map_err(mint_err)?;
        Ok(Ca {
            cert,
            key,
            chain_above: Vec::new(),
            loaded_der: None,
        })
    }

    /// An existing CA (e.g. the proxy's configured intercept CA) from its
    /// certificate and PKCS#8/SEC1/PKCS#1 private key, both PEM.
    ///
    /// The issued leaves must carry the CA's subject byte for byte as their
    /// issuer; subjects rcgen cannot reproduce (repeated attribute types,
    /// multi-valued RDNs, BMP/Teletex strings) are refused with a clear error
    /// rather than producing leaves that do not chain. When the loaded CA is an
    /// intermediate, issued chains are leaf + this CA; intermediates above it
    /// are not known here and must be appended by the caller.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, CertError> {
        let mut reader = cert_pem.as_bytes();
        let der = rustls_pemfile::certs(&mut reader)
            .next()
            .ok_or_else(|| {
                CertError::Mint("no CERTIFICATE block in the CA certificate PEM".into())
            })?
            .map_err(|e| CertError::Mint(format!("bad CA certificate PEM: {e}")))?;
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| CertError::Mint(format!("bad CA private key: {e}")))?;
        let subject_raw = ca_subject_raw(der.as_ref())?;
        let (_, parsed) = x509_parser::prelude::X509Certificate::from_der(der.as_ref())
            .map_err(|e| CertError::Parse(e.to_string()))?;
        let mut dn = DistinguishedName::new();
        let mut count = 0usize;
        for rdn in parsed.subject().iter_rdn() {
            for atv in rdn.iter() {
                count += 1;
                let oid: Vec<u64> = atv
                    .attr_type()
                    .iter()
                    .map(|it| it.collect())
                    .unwrap_or_default();
                let any = atv.attr_value();
                let text = std::str::from_utf8(any.data)
                    .map_err(|_| CertError::Mint("CA subject has a non-text attribute".into()))?;
                let value = match any.tag().0 {
                    0x13 => DnValue::PrintableString(
                        text.try_into().map_err(|e: rcgen::Error| mint_err(e))?,
                    ),
                    0x16 => {
                        DnValue::Ia5String(text.try_into().map_err(|e: rcgen::Error| mint_err(e))?)
                    }
                    0x0c => DnValue::Utf8String(text.to_string()),
                    t => {
                        return Err(CertError::Mint(format!(
                            "CA subject uses ASN.1 string tag {t}, which cannot be reproduced"
                        )))
                    }
                };
                dn.push(DnType::from_oid(&oid), value);
            }
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        // Only the DN, key and key usages of this value are used when signing.
        let cert = params.self_signed(&key).map_err(mint_err)?;
        let is_root = parsed.subject().as_raw() == parsed.issuer().as_raw();
        let ca = Ca {
            cert,
            key,
            chain_above: if is_root {
                Vec::new()
            } else {
                vec![der.to_vec()]
            },
            loaded_der: Some(der.to_vec()),
        };
        // Prove that leaves will chain: their issuer must equal the CA subject.
        let probe = ca.issue(&LeafSpec::server(["probe.invalid"]))?;
        let issuer_raw = probe
            .chain_der
            .first()
            .map(|d| super::info::parse_full(d).map(|(_, r)| r.issuer))
            .transpose()?
            .unwrap_or_default();
        if issuer_raw != subject_raw || count == 0 {
            return Err(CertError::Mint(
                "the CA subject cannot be reproduced exactly (repeated attribute types or multi-valued RDNs)".into(),
            ));
        }
        Ok(ca)
    }

    /// A new intermediate CA issued by this one.
    pub fn intermediate(&self, common_name: &str) -> Result<Ca, CertError> {
        let key = KeyKind::default().generate()?;
        let mut params = ca_params(common_name);
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(mint_err)?;
        let mut chain_above = vec![cert.der().to_vec()];
        chain_above.extend(self.chain_above.iter().cloned());
        Ok(Ca {
            cert,
            key,
            chain_above,
            loaded_der: None,
        })
    }

    /// This CA's certificate, DER.
    pub fn der(&self) -> Vec<u8> {
        match &self.loaded_der {
            Some(d) => d.clone(),
            None => self.cert.der().to_vec(),
        }
    }

    /// This CA's certificate, PEM.
    pub fn pem(&self) -> String {
        pem("CERTIFICATE", &self.der())
    }

    /// This CA's private key, PKCS#8 DER (for intercept mode configuration).
    pub fn key_der(&self) -> Vec<u8> {
        self.key.serialize_der()
    }

    /// This CA's private key, PEM (`PRIVATE KEY`, PKCS#8).
    pub fn key_pem(&self) -> String {
        pem("PRIVATE KEY", &self.key.serialize_der())
    }

    /// Issues a leaf. The returned chain is the leaf followed by this CA when it
    /// is an intermediate (and the intermediates above it), never the root.
    pub fn issue(&self, spec: &LeafSpec) -> Result<Issued, CertError> {
        let key = spec.key.generate()?;
        let mut params = leaf_params(spec)?;
        // A loaded CA's SKI may have been computed differently: omit the AKI
        // rather than write one that does not match (OpenSSL would then refuse).
        params.use_authority_key_identifier_extension = self.loaded_der.is_none();
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(mint_err)?;
        let mut chain_der = vec![cert.der().to_vec()];
        chain_der.extend(self.chain_above.iter().cloned());
        Ok(Issued {
            chain_der,
            key_der: key.serialize_der(),
        })
    }
}

/// A self-signed leaf (not a CA) for `spec`.
pub fn self_signed(spec: &LeafSpec) -> Result<Issued, CertError> {
    let key = spec.key.generate()?;
    let cert = leaf_params(spec)?.self_signed(&key).map_err(mint_err)?;
    Ok(Issued {
        chain_der: vec![cert.der().to_vec()],
        key_der: key.serialize_der(),
    })
}

fn leaf_params(spec: &LeafSpec) -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::new(spec.names.clone()).map_err(mint_err)?;
    let mut dn = DistinguishedName::new();
    if let Some(cn) = &spec.common_name {
        dn.push(DnType::CommonName, cn.as_str());
    }
    params.distinguished_name = dn;
    params.not_before = spec.not_before.into();
    params.not_after = spec.not_after.into();
    params.serial_number = Some(random_serial());
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    if spec.server_auth {
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
    }
    if spec.client_auth {
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ClientAuth);
    }
    params.crl_distribution_points = spec
        .crl_urls
        .iter()
        .map(|url| CrlDistributionPoint {
            uris: vec![url.clone()],
        })
        .collect();
    if spec.ocsp_url.is_some() || spec.ca_issuers_url.is_some() {
        params.custom_extensions.push(aia_extension(
            spec.ocsp_url.as_deref(),
            spec.ca_issuers_url.as_deref(),
        ));
    }
    Ok(params)
}

/// Authority Information Access (RFC 5280 §4.2.2.1), which rcgen lacks.
fn aia_extension(ocsp: Option<&str>, ca_issuers: Option<&str>) -> CustomExtension {
    // id-ad-ocsp 1.3.6.1.5.5.7.48.1 and id-ad-caIssuers 1.3.6.1.5.5.7.48.2
    const OCSP: &[u8] = &[0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01];
    const CA_ISSUERS: &[u8] = &[0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x02];
    let mut descs = Vec::new();
    for (oid, url) in [(OCSP, ocsp), (CA_ISSUERS, ca_issuers)] {
        if let Some(url) = url {
            let mut body = oid.to_vec();
            // GeneralName uniformResourceIdentifier: [6] IMPLICIT IA5String
            body.extend(der_tlv(0x86, url.as_bytes()));
            descs.extend(der_tlv(0x30, &body));
        }
    }
    CustomExtension::from_oid_content(&[1, 3, 6, 1, 5, 5, 7, 1, 1], der_tlv(0x30, &descs))
}

fn der_tlv(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
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

fn random_serial() -> SerialNumber {
    // 16 random-looking bytes from a fresh key's public half hashed: avoids a
    // dependency on `rand` in the library. The top bit is cleared so the
    // INTEGER stays positive without padding.
    use sha2::{Digest, Sha256};
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut h = Sha256::new();
    h.update(nanos.to_be_bytes());
    h.update(n.to_be_bytes());
    h.update(std::process::id().to_be_bytes());
    let digest = h.finalize();
    let mut bytes: Vec<u8> = digest.iter().take(16).copied().collect();
    if let Some(first) = bytes.first_mut() {
        *first &= 0x7f;
        *first |= 0x01; // never a leading zero byte
    }
    SerialNumber::from_slice(&bytes)
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64_encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].iter().enumerate() {
            if i <= chunk.len() {
                let idx = ((n >> shift) & 63) as usize;
                out.push(char::from(ALPHABET[idx]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn mint_err(e: rcgen::Error) -> CertError {
    CertError::Mint(e.to_string())
}

fn hex_bytes(hex: &str) -> Option<Vec<u8>> {
    let hex = hex.trim();
    if hex.is_empty() || hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len() / 2)
        .map(|i| {
            hex.get(2 * i..2 * i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect()
}
