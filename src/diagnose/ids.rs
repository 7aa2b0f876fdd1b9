//! Every finding id, once. The ids are a public contract (alerting rules
//! match on them), documented in `docs/findings.md`; the rules use these
//! constants and no id is spelled anywhere else in `src/`.

// Relay (relay.rs)
/// smtptap could not resolve or connect to the upstream.
pub const UPSTREAM_UNREACHABLE: &str = "upstream.unreachable";
/// Part of the session was relayed but not analysed.
pub const OBSERVER_LAGGED: &str = "observer.lagged";
/// Transparent mode: the original destination is smtptap itself.
pub const UPSTREAM_LOOP: &str = "upstream.loop";
/// The proxy host ran out of a local resource (file descriptors) for this session.
pub const PROXY_LOCAL_RESOURCES: &str = "proxy.local_resources";
/// The client started a line and did not finish it within `limits.line_timeout_secs`.
pub const SESSION_LINE_TIMEOUT: &str = "session.line_timeout";
/// The session outlived `limits.session_timeout_secs`.
pub const SESSION_DURATION_LIMIT: &str = "session.duration_limit";

// SMTP and STARTTLS (smtp.rs)
/// A firewall's SMTP inspection masks the conversation.
pub const SMTP_MASKED_BY_FIREWALL: &str = "smtp.masked_by_firewall";
/// The client spoke TLS first on a STARTTLS port.
pub const SMTP_IMPLICIT_TLS_MISMATCH: &str = "smtp.implicit_tls_mismatch";
/// The upstream's first bytes were not an SMTP reply.
pub const SMTP_SERVER_NOT_SMTP: &str = "smtp.server_not_smtp";
/// The SMTP observer could not follow the conversation.
pub const SMTP_DESYNC: &str = "smtp.desync";
/// The client greeted with HELO and never used STARTTLS.
pub const SMTP_HELO_NOT_EHLO: &str = "smtp.helo_not_ehlo";
/// The cleartext EHLO reply has no STARTTLS.
pub const STARTTLS_NOT_OFFERED: &str = "starttls.not_offered";
/// The server answered a cleartext command with "TLS required".
pub const STARTTLS_REQUIRED: &str = "starttls.required";
/// The reply to STARTTLS was not 220.
pub const STARTTLS_REFUSED: &str = "starttls.refused";
/// STARTTLS offered, the client sent MAIL without it.
pub const STARTTLS_NOT_USED: &str = "starttls.not_used";
/// The client sent AUTH (credentials) before TLS, or on a session without TLS.
pub const SMTP_AUTH_CLEARTEXT: &str = "smtp.auth_cleartext";
/// A cleartext session right after a failed TLS handshake from the same client.
pub const TLS_CLEARTEXT_FALLBACK: &str = "tls.cleartext_fallback";

// TLS (tls.rs)
/// TLS started but was never established.
pub const TLS_HANDSHAKE_FAILED: &str = "tls.handshake_failed";
/// After STARTTLS a side did not speak TLS.
pub const TLS_NOT_TLS: &str = "tls.not_tls";
/// SSLv3/TLS 1.0/1.1 negotiated, or the client offers nothing newer.
pub const TLS_LEGACY_VERSION: &str = "tls.legacy_version";
/// The negotiated cipher suite is weak.
pub const TLS_WEAK_CIPHER: &str = "tls.weak_cipher";
/// The ClientHello has no server_name.
pub const TLS_NO_SNI: &str = "tls.no_sni";
/// TLS 1.3: the server's certificate was not visible.
pub const TLS_CERTIFICATE_HIDDEN: &str = "tls.certificate_hidden";
/// The server asked for a client certificate and got none.
pub const TLS_CLIENT_CERT_MISSING: &str = "tls.client_cert_missing";
/// The handshake completed, then the client closed without sending a command.
pub const TLS_CLIENT_CLOSED_AFTER_HANDSHAKE: &str = "tls.client_closed_after_handshake";

// Certificates (cert.rs)
/// A certificate of the chain is past its notAfter.
pub const CERT_EXPIRED: &str = "cert.expired";
/// A certificate of the chain is before its notBefore.
pub const CERT_NOT_YET_VALID: &str = "cert.not_yet_valid";
/// A certificate of the chain expires soon.
pub const CERT_EXPIRING: &str = "cert.expiring";
/// The leaf is self-signed.
pub const CERT_SELF_SIGNED: &str = "cert.self_signed";
/// The chain lacks its intermediate(s).
pub const CERT_MISSING_INTERMEDIATE: &str = "cert.missing_intermediate";
/// A CRL lists a certificate of the chain.
pub const CERT_REVOKED: &str = "cert.revoked";
/// Any other verification failure.
pub const CERT_UNTRUSTED: &str = "cert.untrusted";
/// None of the expected names is on the certificate.
pub const CERT_NAME_MISMATCH: &str = "cert.name_mismatch";
/// The host name dialled is not on the certificate.
pub const CERT_HOST_MISMATCH: &str = "cert.host_mismatch";
/// The name announced in the banner/EHLO is not on the certificate.
pub const CERT_ANNOUNCED_NAME_MISMATCH: &str = "cert.announced_name_mismatch";
/// A CRL named by the chain could not be fetched.
pub const CERT_CRL_UNAVAILABLE: &str = "cert.crl_unavailable";
/// The server's leaf names no CRL or OCSP location.
pub const CERT_NO_REVOCATION_INFO: &str = "cert.no_revocation_info";
/// TLS 1.3 hid the server's certificate: the configured checks were not made.
pub const CERT_NOT_CHECKED: &str = "cert.not_checked";

// Messages (message.rs)
/// The end of data (or BDAT LAST) was refused, in cleartext.
pub const SMTP_MESSAGE_REJECTED: &str = "smtp.message_rejected";
/// The end of data (or BDAT LAST) was refused, after TLS.
pub const SMTP_REJECTED_AFTER_TLS: &str = "smtp.rejected_after_tls";
/// RCPT TO answered with 4xx/5xx.
pub const SMTP_RECIPIENT_REJECTED: &str = "smtp.recipient_rejected";

// Intercept mode (intercept.rs)
/// smtptap could not serve the client's ClientHello: the session was passed through.
pub const INTERCEPT_FALLBACK: &str = "intercept.fallback";
/// `upstream_verify = "enforce"`: the upstream's certificate did not verify; refused.
pub const INTERCEPT_UPSTREAM_REFUSED: &str = "intercept.upstream_refused";
/// smtptap's TLS handshake with the server failed (the client's was failed with an alert).
pub const INTERCEPT_UPSTREAM_FAILED: &str = "intercept.upstream_failed";
/// The client's TLS handshake with smtptap failed (often: it does not trust smtptap's CA).
pub const INTERCEPT_CLIENT_FAILED: &str = "intercept.client_failed";
/// The two legs of an intercepted session negotiated different TLS.
pub const INTERCEPT_LEGS_DIFFER: &str = "intercept.legs_differ";

/// Every finding id the diagnosis can produce.
pub const ALL: &[&str] = &[
    UPSTREAM_UNREACHABLE,
    OBSERVER_LAGGED,
    UPSTREAM_LOOP,
    PROXY_LOCAL_RESOURCES,
    SESSION_LINE_TIMEOUT,
    SESSION_DURATION_LIMIT,
    SMTP_MASKED_BY_FIREWALL,
    SMTP_IMPLICIT_TLS_MISMATCH,
    SMTP_SERVER_NOT_SMTP,
    SMTP_DESYNC,
    SMTP_HELO_NOT_EHLO,
    STARTTLS_NOT_OFFERED,
    STARTTLS_REQUIRED,
    STARTTLS_REFUSED,
    STARTTLS_NOT_USED,
    SMTP_AUTH_CLEARTEXT,
    TLS_CLEARTEXT_FALLBACK,
    TLS_HANDSHAKE_FAILED,
    TLS_NOT_TLS,
    TLS_LEGACY_VERSION,
    TLS_WEAK_CIPHER,
    TLS_NO_SNI,
    TLS_CERTIFICATE_HIDDEN,
    TLS_CLIENT_CERT_MISSING,
    TLS_CLIENT_CLOSED_AFTER_HANDSHAKE,
    CERT_EXPIRED,
    CERT_NOT_YET_VALID,
    CERT_EXPIRING,
    CERT_SELF_SIGNED,
    CERT_MISSING_INTERMEDIATE,
    CERT_REVOKED,
    CERT_UNTRUSTED,
    CERT_NAME_MISMATCH,
    CERT_HOST_MISMATCH,
    CERT_ANNOUNCED_NAME_MISMATCH,
    CERT_CRL_UNAVAILABLE,
    CERT_NO_REVOCATION_INFO,
    CERT_NOT_CHECKED,
    SMTP_MESSAGE_REJECTED,
    SMTP_REJECTED_AFTER_TLS,
    SMTP_RECIPIENT_REJECTED,
    INTERCEPT_FALLBACK,
    INTERCEPT_UPSTREAM_REFUSED,
    INTERCEPT_UPSTREAM_FAILED,
    INTERCEPT_CLIENT_FAILED,
    INTERCEPT_LEGS_DIFFER,
];

#[cfg(test)]
mod tests {
    use super::ALL;

    const DOC: &str = include_str!("../../docs/findings.md");

    /// The backticked ids in the `### ` headings of docs/findings.md, outside
    /// the `smtptap headers` part.
    fn documented() -> Vec<&'static str> {
        DOC.lines()
            .filter_map(|l| l.strip_prefix("### "))
            .flat_map(|h| h.split('`').skip(1).step_by(2))
            .filter(|id| {
                id.contains('.')
                    && !id.starts_with("headers.")
                    && id
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c == '.' || c == '_')
            })
            .collect()
    }

    #[test]
    fn ids_are_unique_and_well_formed() {
        let mut ids = ALL.to_vec();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), ALL.len(), "duplicate id in ALL");
        for id in ALL {
            assert!(
                id.contains('.')
                    && id
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c == '.' || c == '_'),
                "{id}"
            );
        }
    }

    #[test]
    fn every_id_is_documented_and_every_documented_id_exists() {
        let doc = documented();
        let undocumented: Vec<_> = ALL.iter().filter(|i| !doc.contains(i)).collect();
        assert!(
            undocumented.is_empty(),
            "ids missing from docs/findings.md: {undocumented:?}"
        );
        let unknown: Vec<_> = doc.iter().filter(|i| !ALL.contains(i)).collect();
        assert!(
            unknown.is_empty(),
            "docs/findings.md documents ids the code lacks: {unknown:?}"
        );
    }
}
