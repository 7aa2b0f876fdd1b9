//! Intercept mode's findings: a session passed through because rustls could
//! not serve the client's hello, and smtptap's own handshakes that failed
//! (with the server, or with the client), and the two legs' TLS compared.

use super::{ids, Finding, SessionView, Severity};
use crate::event::{Leg, SessionEvent};

pub(super) fn rules(v: &SessionView, out: &mut Vec<Finding>) {
    for (e, leg) in v.session_legs() {
        match e {
            SessionEvent::InterceptDecision { action, reason, .. } if action == "passthrough" => {
                out.push(Finding::new(
                    ids::INTERCEPT_FALLBACK,
                    Severity::Warning,
                    "smtptap could not intercept this session and passed its TLS through",
                    vec![format!("reason: {reason}")],
                    "Mail flowed as in passthrough mode, so only the handshake (not the SMTP inside TLS) \
                     was observed. The client offers only what smtptap's TLS library cannot serve (TLS 1.0/1.1, \
                     CBC or static-RSA suites, an SSLv2 hello): update or reconfigure the client to offer \
                     TLS 1.2 with ECDHE and AES-GCM, which is also what current receivers require.",
                ));
            }
            SessionEvent::InterceptHandshake {
                ok: false,
                error,
                verify_error,
                refused,
                ..
            } => {
                let error = error.clone().unwrap_or_default();
                if leg == Some(Leg::ProxyServer) && *refused {
                    out.push(Finding::new(
                        ids::INTERCEPT_UPSTREAM_REFUSED,
                        Severity::Error,
                        "smtptap refused the server: its certificate did not verify (upstream_verify = \"enforce\")",
                        vec![
                            format!("verification: {}", verify_error.clone().unwrap_or_default()),
                            format!("handshake: {error}"),
                            "the client's handshake was failed with an alert (handshake_failure)".into(),
                        ],
                        "Fix the server's certificate (see the cert.* findings), add its CA to [tls] ca_files \
                         if it is a private one, or set intercept.upstream_verify = \"record\" to observe \
                         the session anyway.",
                    ));
                } else if leg == Some(Leg::ProxyServer) {
                    let mut ev = vec![format!("handshake with the server: {error}")];
                    if let Some(v) = verify_error {
                        ev.push(format!("verification: {v}"));
                    }
                    ev.push(
                        "the client's handshake was failed with an alert (handshake_failure)"
                            .into(),
                    );
                    out.push(Finding::new(
                        ids::INTERCEPT_UPSTREAM_FAILED,
                        Severity::Error,
                        "smtptap's TLS handshake with the server failed, so the client's failed too",
                        ev,
                        "The server refused smtptap's TLS client (rustls: TLS 1.2/1.3, modern suites only) \
                         or asked for a client certificate smtptap does not have (intercept.client_cert). \
                         Run `smtptap probe` against the server to see its TLS, or use passthrough mode.",
                    ));
                } else if leg == Some(Leg::ClientProxy)
                    && !error.starts_with("smtptap failed the client's handshake")
                {
                    out.push(Finding::new(
                        ids::INTERCEPT_CLIENT_FAILED,
                        Severity::Error,
                        "The client's TLS handshake with smtptap failed",
                        vec![format!("client leg: {error}")],
                        "Most often the client verifies the certificate and does not trust smtptap's CA: \
                         install ca.crt (from `smtptap ca init`) in the client's trust store, present the \
                         organisation's real certificate (intercept.cert/key), or use passthrough mode for \
                         a sender that pins or strictly verifies (most cloud gateways do).",
                    ));
                }
            }
            _ => {}
        }
    }
    legs_differ(v, out);
}

/// What a completed handshake of smtptap's negotiated on a leg.
fn negotiated_on(v: &SessionView, want: Leg) -> Option<(String, String)> {
    v.session_legs().find_map(|(e, leg)| match e {
        SessionEvent::InterceptHandshake {
            ok: true,
            version: Some(version),
            cipher_suite: Some(suite),
            ..
        } if leg == Some(want) => Some((version.clone(), suite.clone())),
        _ => None,
    })
}

/// Both legs completed with different TLS versions: each leg is its own
/// TLS session, so say what each got, which side made the difference, and
/// whether the client and the server would agree without smtptap. (Suites
/// are not compared: each leg picks from its own offer, and smtptap's offer
/// is not the client's, so a different suite says nothing about either.)
fn legs_differ(v: &SessionView, out: &mut Vec<Finding>) {
    let (Some((cv, cs)), Some((sv, ss))) = (
        negotiated_on(v, Leg::ClientProxy),
        negotiated_on(v, Leg::ProxyServer),
    ) else {
        return;
    };
    if cv == sv {
        return;
    }
    let mut evidence = vec![
        format!("client <-> smtptap: {cv}, {cs}"),
        format!("smtptap <-> server: {sv}, {ss}"),
    ];
    let client = v.client_hello_on(Leg::ClientProxy);
    if let Some(ch) = client {
        evidence.push(format!(
            "the client offered {}",
            if ch.supported_versions.is_empty() {
                format!("up to {}", ch.max_version)
            } else {
                ch.supported_versions.join(", ")
            }
        ));
    }
    // Version names order as the versions do (`TLSv1.0` < … < `TLSv1.3`).
    let server_older = sv.as_str() < cv.as_str();
    // Does the client offer the version the server chose?
    let offers_server_version = client.map(|ch| {
        if ch.supported_versions.is_empty() {
            ch.max_version.as_str() >= sv.as_str()
        } else {
            ch.supported_versions.contains(&sv)
        }
    });
    let (severity, title, advice) = if server_older && offers_server_version == Some(false) {
        (
            Severity::Warning,
            "The two legs negotiated different TLS versions, and without smtptap the client and the server would not agree",
            format!(
                "smtptap made this session work: the server supports at most {sv}, which the client \
                 does not offer (it offered {cv} and smtptap accepted). In passthrough, or once \
                 smtptap is removed, the handshake between them fails. Enable {sv} on the client, or \
                 {cv} on the server."
            ),
        )
    } else if server_older {
        (
            Severity::Info,
            "The server negotiated an older TLS version with smtptap than the client did",
            format!(
                "smtptap offered the server TLS 1.3 and 1.2; the server chose {sv}, so it does not \
                 support {cv} (or has it disabled). Each leg is its own TLS session: without smtptap \
                 the client would get {sv} from this server too. Nothing to change unless policy \
                 requires {cv}; then upgrade the server's TLS."
            ),
        )
    } else {
        (
            Severity::Info,
            "The client negotiated an older TLS version with smtptap than the server supports",
            format!(
                "The client offered at most {cv}; the server chose {sv} when smtptap offered it. \
                 Without smtptap the session would use {cv} (if the server still accepts it). To get \
                 {sv}, enable it on the client (its TLS library or its configured protocols)."
            ),
        )
    };
    out.push(Finding::new(
        ids::INTERCEPT_LEGS_DIFFER,
        severity,
        title,
        evidence,
        advice,
    ));
}
