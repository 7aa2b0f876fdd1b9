//! IANA code points → the names smtptap prints (versions, cipher suites, groups,
//! signature algorithms, alerts), and GREASE detection.
//!
//! Pure lookup tables: this module owns no state and must not parse records.
//! Unknown values are shown as `0x1234`, GREASE values (RFC 8701) as `GREASE`.

use tls_parser::TlsCipherSuite;

/// True for a GREASE value (RFC 8701): `0x?a?a` with both bytes equal.
pub fn is_grease(v: u16) -> bool {
    (v & 0x0f0f) == 0x0a0a && (v >> 8) == (v & 0xff)
}

/// Hex form used for unknown code points: `0x1234`.
pub fn hex16(v: u16) -> String {
    format!("0x{v:04x}")
}

/// A protocol version: `SSLv3`, `TLSv1.0` … `TLSv1.3`, `SSLv2`, `GREASE` or `0x….`.
pub fn version_name(v: u16) -> String {
    match v {
        0x0002 | 0x0200 => "SSLv2".into(),
        0x0300 => "SSLv3".into(),
        0x0301 => "TLSv1.0".into(),
        0x0302 => "TLSv1.1".into(),
        0x0303 => "TLSv1.2".into(),
        0x0304 => "TLSv1.3".into(),
        v if is_grease(v) => "GREASE".into(),
        v if (v & 0xff00) == 0x7f00 => format!("TLSv1.3-draft{}", v & 0xff),
        v => hex16(v),
    }
}

/// A cipher suite by IANA name (`TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384`).
pub fn suite_name(id: u16) -> String {
    if is_grease(id) {
        return "GREASE".into();
    }
    match TlsCipherSuite::from_id(id) {
        Some(s) => s.name.to_string(),
        None => hex16(id),
    }
}

/// An SSLv2-format cipher spec (3 bytes). Specs whose first byte is 0 are TLS
/// suites; the others are SSLv2 kinds, shown as `SSL2_0x010080` or by name.
pub fn sslv2_spec_name(spec: u32) -> String {
    if spec >> 16 == 0 {
        return suite_name((spec & 0xffff) as u16);
    }
    let name = match spec {
        0x010080 => "SSL_CK_RC4_128_WITH_MD5",
        0x020080 => "SSL_CK_RC4_128_EXPORT40_WITH_MD5",
        0x030080 => "SSL_CK_RC2_128_CBC_WITH_MD5",
        0x040080 => "SSL_CK_RC2_128_CBC_EXPORT40_WITH_MD5",
        0x050080 => "SSL_CK_IDEA_128_CBC_WITH_MD5",
        0x060040 => "SSL_CK_DES_64_CBC_WITH_MD5",
        0x0700c0 => "SSL_CK_DES_192_EDE3_CBC_WITH_MD5",
        _ => return format!("SSL2_0x{spec:06x}"),
    };
    name.into()
}

/// A named group (supported_groups, key_share, ServerKeyExchange curve).
pub fn group_name(g: u16) -> String {
    let n = match g {
        21 => "secp224r1",
        22 => "secp256k1",
        23 => "secp256r1",
        24 => "secp384r1",
        25 => "secp521r1",
        26 => "brainpoolP256r1",
        27 => "brainpoolP384r1",
        28 => "brainpoolP512r1",
        29 => "x25519",
        30 => "x448",
        256 => "ffdhe2048",
        257 => "ffdhe3072",
        258 => "ffdhe4096",
        259 => "ffdhe6144",
        260 => "ffdhe8192",
        0x11eb => "SecP256r1MLKEM768",
        0x11ec => "X25519MLKEM768",
        0x11ed => "SecP384r1MLKEM1024",
        0x6399 => "X25519Kyber768Draft00",
        g if is_grease(g) => "GREASE",
        g => return hex16(g),
    };
    n.into()
}

/// A signature scheme (RFC 8446 names; TLS 1.2 hash/sig pairs map onto them).
pub fn sigalg_name(s: u16) -> String {
    let n = match s {
        0x0201 => "rsa_pkcs1_sha1",
        0x0202 => "dsa_sha1",
        0x0203 => "ecdsa_sha1",
        0x0301 => "rsa_pkcs1_sha224",
        0x0303 => "ecdsa_sha224",
        0x0401 => "rsa_pkcs1_sha256",
        0x0402 => "dsa_sha256",
        0x0403 => "ecdsa_secp256r1_sha256",
        0x0501 => "rsa_pkcs1_sha384",
        0x0503 => "ecdsa_secp384r1_sha384",
        0x0601 => "rsa_pkcs1_sha512",
        0x0603 => "ecdsa_secp521r1_sha512",
        0x0804 => "rsa_pss_rsae_sha256",
        0x0805 => "rsa_pss_rsae_sha384",
        0x0806 => "rsa_pss_rsae_sha512",
        0x0807 => "ed25519",
        0x0808 => "ed448",
        0x0809 => "rsa_pss_pss_sha256",
        0x080a => "rsa_pss_pss_sha384",
        0x080b => "rsa_pss_pss_sha512",
        0x081a => "ecdsa_brainpoolP256r1tls13_sha256",
        0x081b => "ecdsa_brainpoolP384r1tls13_sha384",
        0x081c => "ecdsa_brainpoolP512r1tls13_sha512",
        s if is_grease(s) => "GREASE",
        s => return hex16(s),
    };
    n.into()
}

/// A TLS 1.2 ClientCertificateType (CertificateRequest).
pub fn cert_type_name(t: u8) -> String {
    let n = match t {
        1 => "rsa_sign",
        2 => "dss_sign",
        3 => "rsa_fixed_dh",
        4 => "dss_fixed_dh",
        64 => "ecdsa_sign",
        65 => "rsa_fixed_ecdh",
        66 => "ecdsa_fixed_ecdh",
        t => return format!("0x{t:02x}"),
    };
    n.into()
}

/// An alert level: `warning`, `fatal` or `unknown`.
pub fn alert_level_name(l: u8) -> &'static str {
    match l {
        1 => "warning",
        2 => "fatal",
        _ => "unknown",
    }
}

/// An alert description in RFC spelling (`handshake_failure`, `unknown_ca`…).
pub fn alert_name(d: u8) -> String {
    let n = match d {
        0 => "close_notify",
        10 => "unexpected_message",
        20 => "bad_record_mac",
        21 => "decryption_failed",
        22 => "record_overflow",
        30 => "decompression_failure",
        40 => "handshake_failure",
        41 => "no_certificate",
        42 => "bad_certificate",
        43 => "unsupported_certificate",
        44 => "certificate_revoked",
        45 => "certificate_expired",
        46 => "certificate_unknown",
        47 => "illegal_parameter",
        48 => "unknown_ca",
        49 => "access_denied",
        50 => "decode_error",
        51 => "decrypt_error",
        60 => "export_restriction",
        70 => "protocol_version",
        71 => "insufficient_security",
        80 => "internal_error",
        86 => "inappropriate_fallback",
        90 => "user_canceled",
        100 => "no_renegotiation",
        109 => "missing_extension",
        110 => "unsupported_extension",
        111 => "certificate_unobtainable",
        112 => "unrecognized_name",
        113 => "bad_certificate_status_response",
        114 => "bad_certificate_hash_value",
        115 => "unknown_psk_identity",
        116 => "certificate_required",
        120 => "no_application_protocol",
        d => return format!("unknown_{d}"),
    };
    n.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grease_values() {
        assert!(is_grease(0x0a0a));
        assert!(is_grease(0xfafa));
        assert!(!is_grease(0x0a1a));
        assert!(!is_grease(0x1301));
        assert_eq!(suite_name(0x2a2a), "GREASE");
    }

    #[test]
    fn well_known_names() {
        assert_eq!(suite_name(0xc030), "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384");
        assert_eq!(suite_name(0x1301), "TLS_AES_128_GCM_SHA256");
        assert_eq!(suite_name(0xfeed), "0xfeed");
        assert_eq!(version_name(0x0301), "TLSv1.0");
        assert_eq!(version_name(0x0300), "SSLv3");
        assert_eq!(group_name(29), "x25519");
        assert_eq!(sigalg_name(0x0804), "rsa_pss_rsae_sha256");
        assert_eq!(alert_name(48), "unknown_ca");
        assert_eq!(alert_level_name(2), "fatal");
        assert_eq!(sslv2_spec_name(0x00002f), "TLS_RSA_WITH_AES_128_CBC_SHA");
        assert_eq!(sslv2_spec_name(0x010080), "SSL_CK_RC4_128_WITH_MD5");
    }
}
