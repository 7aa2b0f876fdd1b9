//! The TLS stamps receiving servers write into their `Received:` fields, and
//! the judgement of what a hop's transport was (TLS, none, local, unknown).
//!
//! Formats recognised (what a hop's transport can be, and the findings drawn
//! from it, are documented in `docs/findings.md`, "Findings of `smtptap headers`"):
//!
//! ```text
//! postfix    (using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)
//!             key-exchange X25519 server-signature RSA-PSS (2048 bits) server-digest SHA256)
//!            (No client certificate requested)
//! exchange   with Microsoft SMTP Server (version=TLS1_2, cipher=TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384)
//! gmail      with ESMTPS id ... (version=TLS1_3 cipher=TLS_AES_128_GCM_SHA256 bits=128/128)
//! sendmail   with ESMTPS id ... (version=TLSv1.3 cipher=TLS_AES_256_GCM_SHA384 bits=256 verify=NOT)
//! exim       with esmtps (TLS1.3) tls TLS_AES_256_GCM_SHA384
//! exim-old   with esmtps (TLS1.2:ECDHE_RSA_AES_256_GCM_SHA384:256)
//! rfc3848    with ESMTPS / ESMTPSA / LMTPS / UTF8SMTPS ... (no cipher comment)
//! ```
//!
//! This module must not guess: a comment that mentions TLS in a form not listed
//! above yields [`TransportTls::Unknown`] with the raw comment.

use serde::Serialize;

use super::received::Received;

/// What a hop's `Received:` field says about its transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TransportTls {
    /// The receiver stamped TLS (with details or an RFC 3848 `…S` protocol).
    Tls,
    /// The receiver stamped a cleartext protocol (`with ESMTP`/`SMTP`/`LMTP`…).
    None,
    /// A hop inside one host or system (loopback, LMTP/local delivery, HTTP/MAPI
    /// submission, no `from` clause): no network TLS expected.
    Local,
    /// Nothing says whether TLS was used, or a TLS comment in an unknown form.
    Unknown,
}

impl TransportTls {
    /// A short lower-case label (`tls`, `none`, `local`, `unknown`).
    pub fn label(self) -> &'static str {
        match self {
            TransportTls::Tls => "tls",
            TransportTls::None => "none",
            TransportTls::Local => "local",
            TransportTls::Unknown => "unknown",
        }
    }
}

/// The TLS facts of one hop, as stamped by its receiver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsFacts {
    /// The verdict for this hop.
    pub state: TransportTls,
    /// Which stamp format matched (`postfix`, `exchange`, `gmail`, `sendmail`,
    /// `exim`, `exim-legacy`, `key-value`, `google-transport-security`, `rfc3848`).
    pub format: Option<String>,
    /// The protocol version, normalised (`TLSv1.2`, `TLSv1.3`, `SSLv3`).
    pub version: Option<String>,
    /// The version as written in the stamp (`TLS1_2`, `TLSv1`).
    pub version_raw: Option<String>,
    /// The cipher suite as written (OpenSSL, IANA or GnuTLS name).
    pub cipher: Option<String>,
    /// Key bits as written (`256/256`, `256`).
    pub bits: Option<String>,
    /// Postfix 3.4+: the key-exchange group (`X25519`, `secp384r1`).
    pub key_exchange: Option<String>,
    /// Postfix 3.4+: the server's signature algorithm and size (`RSA-PSS (2048 bits)`).
    pub server_signature: Option<String>,
    /// What the receiver said about the sender's certificate
    /// (`No client certificate requested`, Sendmail `verify=NOT`).
    pub peer_certificate: Option<String>,
    /// Sendmail/Gmail-style `verify=` value (`OK`, `NOT`, `FAIL`, `NO`…).
    pub verify: Option<String>,
    /// Why the hop got its state, in words (for `local`, `none`, `unknown`).
    pub note: Option<String>,
    /// The raw comment(s) the facts were read from.
    pub raw: Option<String>,
}

impl TlsFacts {
    fn new(state: TransportTls) -> Self {
        TlsFacts {
            state,
            format: None,
            version: None,
            version_raw: None,
            cipher: None,
            bits: None,
            key_exchange: None,
            server_signature: None,
            peer_certificate: None,
            verify: None,
            note: None,
            raw: None,
        }
    }
}

/// Normalises the many spellings of a protocol version (`TLSv1`, `TLS1_2`,
/// `TLS1.3`, `TLSv1.2`, `SSLv3`) to `TLSv1.0`…`TLSv1.3`, `SSLv2`, `SSLv3`.
/// Returns `None` for anything else.
pub fn normalize_version(v: &str) -> Option<&'static str> {
    let up: String = v
        .to_ascii_uppercase()
        .chars()
        .filter(|c| !matches!(c, ' ' | 'V' | '_' | '.'))
        .collect();
    // After removing separators and the `v`: TLS1, TLS10, TLS11, TLS12, TLS13, SSL3, SSL2.
    match up.as_str() {
        "TLS1" | "TLS10" => Some("TLSv1.0"),
        "TLS11" => Some("TLSv1.1"),
        "TLS12" => Some("TLSv1.2"),
        "TLS13" => Some("TLSv1.3"),
        "SSL3" | "SSL30" => Some("SSLv3"),
        "SSL2" | "SSL20" => Some("SSLv2"),
        _ => None,
    }
}

/// Postfix: `using TLSv1.3 with cipher X (256/256 bits) key-exchange X25519 …`.
fn postfix(comment: &str) -> Option<TlsFacts> {
    let rest = comment.strip_prefix("using ")?;
    let (version_raw, rest) = rest.split_once(" with cipher ")?;
    let version = normalize_version(version_raw)?;
    let mut words = rest.split_whitespace();
    let cipher = words.next()?;
    let mut f = TlsFacts::new(TransportTls::Tls);
    f.format = Some("postfix".into());
    f.version = Some(version.into());
    f.version_raw = Some(version_raw.into());
    f.cipher = Some(cipher.into());
    // "(256/256 bits)" is a nested comment, kept verbatim by the tokenizer.
    if let Some(open) = rest.find('(') {
        if let Some(close) = rest.get(open..).and_then(|r| r.find(" bits)")) {
            f.bits = rest.get(open + 1..open + close).map(String::from);
        }
    }
    if let Some(kx) = after_word(rest, "key-exchange") {
        f.key_exchange = Some(kx);
    }
    if let Some(i) = rest.find("server-signature ") {
        let tail = rest.get(i + "server-signature ".len()..).unwrap_or("");
        let end = tail.find(" server-digest").unwrap_or(tail.len());
        let end = tail.find(" client-signature").map_or(end, |c| c.min(end));
        f.server_signature = tail.get(..end).map(|s| s.trim().to_string());
    }
    Some(f)
}

/// The word after `key` in `text`, with a following `(…)` qualifier attached.
fn after_word(text: &str, key: &str) -> Option<String> {
    let i = text.find(key)?;
    let tail = text.get(i + key.len()..)?.trim_start();
    let mut words = tail.split_whitespace();
    let first = words.next()?.to_string();
    Some(first)
}

/// Postfix's certificate comment that follows the `using` comment.
fn postfix_peer_cert(comment: &str) -> bool {
    comment == "No client certificate requested"
        || comment == "Client did not present a certificate"
        || comment.starts_with("Client CN ")
        || comment.starts_with("Client certificate ")
}

/// `key=value` stamps: Exchange (`version=TLS1_2, cipher=…`), Gmail
/// (`version=TLS1_3 cipher=… bits=128/128`), Sendmail (`… verify=NOT`),
/// Mimecast-like (`version=TLSv1.2, cipher=…`).
fn key_value(comment: &str, microsoft: bool) -> Option<TlsFacts> {
    let mut version_raw = None;
    let mut cipher = None;
    let mut bits = None;
    let mut verify = None;
    for part in comment.split(|c: char| c == ',' || c.is_whitespace()) {
        let Some((k, v)) = part.split_once('=') else {
            continue;
        };
        match k.to_ascii_lowercase().as_str() {
            "version" => version_raw = Some(v.to_string()),
            "cipher" => cipher = Some(v.to_string()),
            "bits" => bits = Some(v.to_string()),
            "verify" => verify = Some(v.to_string()),
            _ => {}
        }
    }
    let version_raw = version_raw?;
    let version = normalize_version(&version_raw)?;
    let mut f = TlsFacts::new(TransportTls::Tls);
    f.format = Some(
        if microsoft {
            "exchange"
        } else if verify.is_some() {
            "sendmail"
        } else if bits.as_deref().is_some_and(|b| b.contains('/')) {
            "gmail"
        } else {
            "key-value"
        }
        .into(),
    );
    f.version = Some(version.into());
    f.version_raw = Some(version_raw);
    f.cipher = cipher;
    f.bits = bits;
    if let Some(v) = &verify {
        f.peer_certificate = Some(format!("verify={v}"));
    }
    f.verify = verify;
    Some(f)
}

/// Exim 4.9x: `(TLS1.3) tls TLS_AES_256_GCM_SHA384` — the version in a comment
/// and the cipher as the word after `tls` outside comments.
fn exim_modern(comment: &str, r: &Received) -> Option<TlsFacts> {
    let version = normalize_version(comment)?;
    let mut f = TlsFacts::new(TransportTls::Tls);
    f.format = Some("exim".into());
    f.version = Some(version.into());
    f.version_raw = Some(comment.into());
    let mut extra = r.extra.iter();
    while let Some(w) = extra.next() {
        if w.eq_ignore_ascii_case("tls") {
            f.cipher = extra.next().cloned();
            break;
        }
    }
    Some(f)
}

/// Older Exim: `(TLS1.2:ECDHE_RSA_AES_256_GCM_SHA384:256)` (GnuTLS) or
/// `(TLSv1.2:ECDHE-RSA-AES256-GCM-SHA384:256)` (OpenSSL).
fn exim_legacy(comment: &str) -> Option<TlsFacts> {
    let mut parts = comment.split(':');
    let version_raw = parts.next()?;
    let cipher = parts.next()?;
    let bits = parts.next()?;
    if parts.next().is_some() || cipher.is_empty() || !bits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let version = normalize_version(version_raw)?;
    let mut f = TlsFacts::new(TransportTls::Tls);
    f.format = Some("exim-legacy".into());
    f.version = Some(version.into());
    f.version_raw = Some(version_raw.into());
    f.cipher = Some(cipher.into());
    f.bits = Some(bits.into());
    Some(f)
}

/// RFC 3848 (and RFC 6531) protocol types that say TLS was used.
fn rfc3848_tls(protocol: &str) -> bool {
    matches!(
        protocol,
        "ESMTPS"
            | "ESMTPSA"
            | "LMTPS"
            | "LMTPSA"
            | "UTF8SMTPS"
            | "UTF8SMTPSA"
            | "UTF8LMTPS"
            | "UTF8LMTPSA"
            | "SMTPS"
    )
}

/// Protocol types of a cleartext SMTP/LMTP hop.
fn cleartext_smtp(protocol: &str) -> bool {
    matches!(
        protocol,
        "SMTP"
            | "ESMTP"
            | "ESMTPA"
            | "UTF8SMTP"
            | "UTF8SMTPA"
            | "LMTP"
            | "LMTPA"
            | "UTF8LMTP"
            | "UTF8LMTPA"
            | "MICROSOFT SMTP SERVER"
    )
}

fn is_loopback_host(h: &str) -> bool {
    let h = h
        .trim_matches(|c| c == '[' || c == ']')
        .to_ascii_lowercase();
    h == "localhost"
        || h.starts_with("localhost.")
        || h == "::1"
        || h.starts_with("127.")
        || h == "ipv6:::1"
}

/// A TLS-looking comment that matched no known format.
fn mentions_tls(comment: &str) -> bool {
    let up = comment.to_ascii_uppercase();
    up.contains("CIPHER")
        || up
            .split(|c: char| !c.is_ascii_alphanumeric() && c != '.' && c != '_')
            .any(|w| {
                w == "TLS"
                    || w == "SSL"
                    || w == "STARTTLS"
                    || w.starts_with("TLSV")
                    || w.starts_with("TLS1")
                    || w.starts_with("SSLV")
            })
}

/// Reads the TLS facts of one hop from its parsed `Received:` field.
pub fn tls_facts(r: &Received) -> TlsFacts {
    let protocol = r.protocol().unwrap_or_default();
    let microsoft = protocol.starts_with("MICROSOFT");

    // Known stamp formats, in the comments.
    let mut comments = r.comments.iter().peekable();
    while let Some(c) = comments.next() {
        if let Some(mut f) = postfix(c) {
            f.raw = Some(c.clone());
            if let Some(next) = comments.peek() {
                if postfix_peer_cert(next) {
                    f.peer_certificate = Some((*next).clone());
                    f.raw = Some(format!("({c}) ({next})"));
                }
            }
            return f;
        }
        if let Some(mut f) = key_value(c, microsoft) {
            f.raw = Some(c.clone());
            return f;
        }
        if let Some(mut f) = exim_legacy(c) {
            f.raw = Some(c.clone());
            return f;
        }
        if let Some(mut f) = exim_modern(c, r) {
            f.raw = match &f.cipher {
                Some(cipher) => Some(format!("({c}) tls {cipher}")),
                None => Some(c.clone()),
            };
            return f;
        }
        if c == "Google Transport Security" {
            let mut f = TlsFacts::new(TransportTls::Tls);
            f.format = Some("google-transport-security".into());
            f.note = Some(
                "Google's internal transport (ALTS), encrypted; no TLS version is stamped".into(),
            );
            f.raw = Some(c.clone());
            return f;
        }
    }

    // Hops inside one host or system.
    // The IP, when written, wins over the announced name (a remote host may
    // say `HELO localhost`).
    let from_local = match r.from_ip.as_deref() {
        Some(ip) => is_loopback_host(ip),
        None => r.from_host.as_deref().is_some_and(is_loopback_host),
    };
    let local_reason = if r.from_host.is_none() {
        Some(
            "no `from` clause: the message was created or handed over inside this system"
                .to_string(),
        )
    } else if from_local {
        Some("from the loopback interface: a hop inside one host".to_string())
    } else if matches!(
        protocol.as_str(),
        "LMTP" | "LMTPA" | "LOCAL" | "HTTP" | "HTTPS" | "HTTPREST" | "MAPI" | "UTF8LMTP"
    ) {
        Some(format!(
            "`with {}`: local delivery or client submission, not an SMTP relay hop",
            r.with.as_deref().unwrap_or_default()
        ))
    } else if r.from_host.is_some()
        && r.from_host.as_deref().map(str::to_ascii_lowercase)
            == r.by_host.as_deref().map(str::to_ascii_lowercase)
    {
        Some("`from` and `by` are the same host".to_string())
    } else {
        None
    };

    // A TLS-looking comment we cannot read: never guess.
    if let Some(c) = r.comments.iter().find(|c| {
        Some(c.as_str()) != r.from_comment.as_deref()
            && !c.starts_with("envelope-from")
            && !c.starts_with("helo=")
            && mentions_tls(c)
    }) {
        let mut f = TlsFacts::new(TransportTls::Unknown);
        f.note = Some("a TLS comment in a format smtptap does not know".into());
        f.raw = Some(c.clone());
        return f;
    }
    if let Some(reason) = local_reason {
        let mut f = TlsFacts::new(TransportTls::Local);
        f.note = Some(reason);
        return f;
    }
    if rfc3848_tls(&protocol) {
        let mut f = TlsFacts::new(TransportTls::Tls);
        f.format = Some("rfc3848".into());
        f.note = Some(format!(
            "`with {protocol}` (RFC 3848) says TLS was used; the receiver stamped no version or cipher"
        ));
        return f;
    }
    if cleartext_smtp(&protocol) {
        let mut f = TlsFacts::new(TransportTls::None);
        f.note = Some(format!(
            "`with {}` and no TLS stamp",
            r.with.as_deref().unwrap_or_default()
        ));
        return f;
    }
    let mut f = TlsFacts::new(TransportTls::Unknown);
    f.note = Some(match &r.with {
        Some(w) => format!("protocol `with {w}` says nothing about TLS"),
        None => "no `with` clause and no TLS stamp".to_string(),
    });
    f
}

/// Why a cipher suite is weak, with a severity (`error` or `warning`), or
/// `None` when nothing is known against it. Works on OpenSSL, IANA and GnuTLS names.
pub fn weak_cipher(cipher: &str) -> Option<(&'static str, &'static str)> {
    let up = cipher.to_ascii_uppercase().replace('-', "_");
    let has = |s: &str| up.split('_').any(|p| p == s) || up.contains(s);
    if up.starts_with("TLS_AES_") || up.starts_with("TLS_CHACHA20_") || up.starts_with("TLS_SM4_") {
        return None; // TLS 1.3 suites.
    }
    if has("NULL") {
        return Some(("error", "NULL cipher: no encryption at all"));
    }
    if has("EXPORT") || up.starts_with("EXP_") || up.starts_with("EXP1024") {
        return Some(("error", "EXPORT-grade cipher: breakable keys"));
    }
    if has("RC4") {
        return Some(("error", "RC4 stream cipher: broken (RFC 7465 forbids it)"));
    }
    if up.contains("3DES") || up.contains("DES_CBC3") || up.contains("DES_EDE") {
        return Some((
            "warning",
            "3DES: 64-bit block cipher, vulnerable to Sweet32",
        ));
    }
    if up.split('_').any(|p| p == "DES") || up.contains("DES_CBC_") {
        return Some(("error", "single DES: 56-bit keys"));
    }
    if up.contains("ANON") || up.starts_with("ADH") || up.starts_with("AECDH") {
        return Some((
            "warning",
            "anonymous key exchange: the server is not authenticated (no certificate)",
        ));
    }
    let forward_secret = up.contains("ECDHE") || up.contains("DHE") || up.starts_with("EDH");
    let psk_srp = up.contains("PSK") || up.contains("SRP");
    if !forward_secret && !psk_srp {
        return Some((
            "warning",
            "static RSA key exchange: no forward secrecy (recorded traffic can be decrypted later with the server's key)",
        ));
    }
    None
}
