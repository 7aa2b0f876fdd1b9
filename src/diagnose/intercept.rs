//! Intercept mode's findings: a session passed through because rustls could
//! not serve the client's hello, and smtptap's own handshakes that failed
//! (with the server, or with the client).

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
}
