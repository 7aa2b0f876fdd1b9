//! TLS findings: a handshake that failed (and why, from the alerts), a peer
//! that did not speak TLS, weak or obsolete parameters, what passive
//! observation could not see, a missing client certificate.

use super::Severity;
use super::{ids, Finding, Negotiated, SessionView};
use crate::event::{SessionEvent, Side};
use crate::tls::TlsEvent;

/// `certs`: the certificate findings (their problems are the likely reason
/// a client gave up).
pub(super) fn rules(v: &SessionView, certs: &[Finding], out: &mut Vec<Finding>) {
    if !v.tls_started() {
        return;
    }
    let cert_problems = certs.iter().any(|f| f.severity > Severity::Info);
    let gave_up = client_gave_up(v, certs);
    let handshake_completed = gave_up.is_some();
    out.extend(gave_up);
    if !v.tls_established() && !handshake_completed {
        out.extend(not_tls(v));
        out.extend(handshake_failed(v, cert_problems));
    }
    if let Some(n) = v.negotiated() {
        out.extend(legacy_negotiated(n));
        out.extend(weak_cipher(n));
    }
    out.extend(legacy_offered(v));
    out.extend(no_sni(v));
    out.extend(certificate_hidden(v));
    out.extend(client_cert_missing(v));
}

/// After STARTTLS a side did not speak TLS (and TLS was never established).
fn not_tls(v: &SessionView) -> Option<Finding> {
    let (side, reason, offset) = v.tls().find_map(|t| match t {
        TlsEvent::Desync {
            side,
            reason,
            offset,
        } => Some((side, reason, offset)),
        _ => None,
    })?;
    Some(Finding::new(
        ids::TLS_NOT_TLS,
        Severity::Error,
        format!("After STARTTLS the {side} did not speak TLS"),
        vec![format!("{side} at byte {offset}: {reason}")],
        "After the server's 220 to STARTTLS both sides must start a TLS handshake. A peer that \
         goes on in cleartext, or a middlebox that answered STARTTLS itself, breaks the session. \
         Look for SMTP inspection on firewalls between the servers.",
    ))
}

/// The handshake completed, then the client left without a command
/// (`tls.client_gave_up`): most likely it did not accept the certificate.
fn client_gave_up(v: &SessionView, certs: &[Finding]) -> Option<Finding> {
    let (version, cipher_suite, sent, alert, note) = v.tls().find_map(|t| match t {
        TlsEvent::ClientGaveUp {
            version,
            cipher_suite,
            sent,
            alert,
            note,
            ..
        } => Some((version, cipher_suite, sent, *alert, note)),
        _ => None,
    })?;
    let what = if sent == "quit" {
        "sent no EHLO (one short record: at most a QUIT)"
    } else {
        "sent no command"
    };
    let mut ev = vec![
        format!("TLS handshake completed: {version}, {cipher_suite}"),
        note.clone(),
    ];
    if alert && sent == "quit" {
        ev.push(
            "the client also sent an encrypted alert (close_notify or a failure; its reason \
             is not visible)"
                .into(),
        );
    }
    if let Some((client_end, server_end)) = v.session().find_map(|e| match e {
        SessionEvent::Close {
            client_end,
            server_end,
            ..
        } => Some((client_end, server_end)),
        _ => None,
    }) {
        ev.push(format!(
            "connection ended: client {client_end}, server {server_end}"
        ));
    }
    let problems: Vec<&Finding> = certs
        .iter()
        .filter(|f| f.severity > Severity::Info)
        .collect();
    let via = match v.server_cert_source() {
        Some(crate::event::Source::SideProbe) => " (read by smtptap's side-probe)",
        _ => "",
    };
    if !problems.is_empty() {
        for f in problems {
            ev.push(format!(
                "likely reason, from smtptap's own check of the server's certificate{via}: {} ({})",
                f.title, f.id
            ));
            ev.extend(f.evidence.iter().map(|e| format!("    {e}")));
        }
    } else if v.server_leaf().is_some() {
        ev.push(format!(
            "smtptap checked the server's certificate{via} and found nothing wrong with it \
             (its trust store, the dates, the names it knows of): the client trusts other CAs \
             or expects another name"
        ));
    } else {
        ev.push(
            "the server's certificate was not seen (TLS 1.3 hides it, and no side-probe result \
             came): check it with `smtptap probe HOST --expect-name NAME`"
                .into(),
        );
    }
    Some(Finding::new(
        ids::TLS_CLIENT_CLOSED_AFTER_HANDSHAKE,
        Severity::Error,
        format!(
            "TLS was established, then the client {what} and closed: most likely it did not \
             accept the server's certificate"
        ),
        ev,
        "The client completed the TLS handshake and left before sending mail: a verifying \
         sender does this when the certificate fails its check (untrusted issuer, missing \
         intermediate, name mismatch, expired), or when its policy rejects the negotiated \
         version or cipher suite. No mail went through; the sender defers and retries. Read \
         the sender's reason. Postfix: its log says `Server certificate not verified` (with \
         `certificate verification failed for …: untrusted issuer …` or a name mismatch just \
         before); look at `smtp_tls_security_level` (verify/secure), the destination's entry \
         in `smtp_tls_policy_maps` (its `match=` names) and `smtp_tls_CAfile`/`smtp_tls_CApath`. \
         Exchange: the SMTP send protocol log (`Set-SendConnector -ProtocolLoggingLevel \
         Verbose`), and the Send connector's `TlsAuthLevel` and `TlsDomain`. Then either give \
         the server a certificate the sender can verify (a chain to a CA it trusts, carrying \
         the name it expects), or change the sender's TLS policy for this destination.",
    ))
}

/// TLS started but was never established (and the observer followed it:
/// a desync is `tls.not_tls`).
fn handshake_failed(v: &SessionView, cert_problems: bool) -> Option<Finding> {
    if v.tls().any(|t| matches!(t, TlsEvent::Desync { .. })) {
        return None;
    }
    let mut ev = Vec::new();
    match v.client_hello() {
        Some(ch) => ev.push(format!(
            "ClientHello: up to {}, {}, SNI {}",
            ch.max_version,
            // The same words as the console: what is not a suite is said apart.
            ch.suites_in_words(),
            ch.sni.as_deref().unwrap_or("(none)")
        )),
        None => ev.push("no ClientHello was seen after STARTTLS".into()),
    }
    if let Some(n) = v.negotiated() {
        ev.push(format!("ServerHello: {}, {}", n.version, n.cipher_suite));
    }
    let mut meaning = None;
    for t in v.tls() {
        let TlsEvent::Alert {
            side,
            level,
            description,
            code,
            ..
        } = t
        else {
            continue;
        };
        if description == "close_notify" {
            continue;
        }
        ev.push(format!(
            "TLS alert from the {side}: {level} {description} ({code})"
        ));
        meaning.get_or_insert_with(|| alert_meaning(description, *side));
    }
    if let Some((client_end, server_end, reason)) = v.session().find_map(|e| match e {
        SessionEvent::Close {
            client_end,
            server_end,
            reason,
            ..
        } => Some((client_end, server_end, reason)),
        _ => None,
    }) {
        ev.push(format!(
            "connection ended: client {client_end}, server {server_end} ({reason})"
        ));
    }
    if cancelled_on_purpose(v) {
        return Some(Finding::new(
            ids::TLS_HANDSHAKE_FAILED,
            Severity::Info,
            "The client cancelled the TLS handshake on purpose after the server's hello \
             (user_canceled)",
            ev,
            "`smtptap probe` does this when it reads a legacy server's hello and certificate \
             without completing the handshake: then nothing failed. A mail client that does it \
             decided not to go on with what the server chose (version, suite or certificate): \
             read its log for the reason.",
        ));
    }
    let meaning = meaning.unwrap_or_else(|| silent_failure_meaning(v).into());
    Some(Finding::new(
        ids::TLS_HANDSHAKE_FAILED,
        Severity::Error,
        format!("The TLS handshake failed: {meaning}"),
        ev,
        format!(
            "Compare what the client offered with what the server accepts (versions and suites \
             above). {} Mail for this session did not go encrypted; an opportunistic sender may \
             now retry in cleartext.",
            certificate_advice(v, cert_problems)
        ),
    ))
}

/// The server's hello came, and the client's first alert (close_notify
/// aside) was a warning `user_canceled`: the client stopped on purpose (RFC
/// 5246 §7.2.1), not on a protocol failure.
fn cancelled_on_purpose(v: &SessionView) -> bool {
    v.negotiated().is_some()
        && v.tls()
            .find_map(|t| match t {
                TlsEvent::Alert {
                    side,
                    level,
                    description,
                    ..
                } if description != "close_notify" => Some(
                    *side == Side::Client && level == "warning" && description == "user_canceled",
                ),
                _ => None,
            })
            .unwrap_or(false)
}

/// What to do about the certificate side of a failed handshake: point at the
/// certificate findings only when there are some.
fn certificate_advice(v: &SessionView, cert_problems: bool) -> &'static str {
    let hidden = v
        .tls()
        .any(|t| matches!(t, TlsEvent::CertificateHidden { .. }));
    if cert_problems {
        "For certificate alerts, see the certificate findings: the trust, expiry and name of \
         the server's certificate."
    } else if v.server_leaf().is_some() {
        "smtptap found nothing wrong with the server's certificate (its trust store, dates and \
         the names it knows of): if the client rejected it, the client's own rules differ. Read \
         the client's log for its reason (Postfix: \"Server certificate not verified\" or \
         \"certificate verification failed\"; Exchange: the SMTP send protocol log), then \
         compare the CAs the client trusts and the name it expects with the certificate's."
    } else if hidden {
        "TLS 1.3 hid the server's certificate, so smtptap could not check it: check it with \
         `smtptap probe HOST --expect-name NAME` (or `openssl s_client -starttls smtp -tls1_2 \
         -connect HOST:25`), and read the client's log for why it gave up (Postfix: \"Server \
         certificate not verified\"; Exchange: the SMTP send protocol log)."
    } else {
        "The handshake ended before the server's certificate was seen: look at protocol \
         versions, cipher suites and SNI rather than at the certificate, and read both sides' \
         logs for their reason."
    }
}

/// What a handshake that ended without an alert most likely means.
fn silent_failure_meaning(v: &SessionView) -> &'static str {
    let has = |f: fn(&TlsEvent) -> bool| v.tls().any(f);
    if has(|t| {
        matches!(
            t,
            TlsEvent::Certificate { .. } | TlsEvent::CertificateHidden { .. }
        )
    }) {
        "the connection was closed without an alert after the server sent its certificate: typically the client rejected the certificate silently (Windows Schannel does this)"
    } else if has(|t| matches!(t, TlsEvent::ClientHello(_)))
        && !has(|t| matches!(t, TlsEvent::ServerHello { .. }))
    {
        "the server closed the connection after the ClientHello without choosing a version or suite: no common protocol version or cipher suite"
    } else {
        "the handshake did not complete"
    }
}

/// What an alert sent by `from` says, in words.
fn alert_meaning(desc: &str, from: Side) -> String {
    let other = from.peer();
    match desc {
        "handshake_failure" | "insufficient_security" => format!(
            "no TLS version or cipher suite acceptable to both sides (the {from} found nothing in common with what the {other} offered)"
        ),
        "protocol_version" => format!("the {from} refuses the TLS version the {other} proposed (one side is limited to old TLS 1.0/1.1, or requires a newer version)"),
        "unknown_ca" => format!("the {from} does not trust the CA that issued the {other}'s certificate (missing root or intermediate, or a private CA)"),
        "bad_certificate" | "certificate_unknown" | "unsupported_certificate" => {
            format!("the {from} rejected the {other}'s certificate (bad, wrong name or usage, or untrusted)")
        }
        "certificate_expired" => format!("the {from} says the {other}'s certificate has expired"),
        "certificate_revoked" => format!("the {from} says the {other}'s certificate is revoked"),
        "decrypt_error" | "bad_record_mac" => "a cryptographic check failed (a middlebox altering bytes, or a broken implementation)".into(),
        "illegal_parameter" | "decode_error" | "unexpected_message" => format!("the {from} found the {other}'s handshake malformed"),
        "certificate_required" => format!("the {from} requires a client certificate and none was sent"),
        "unrecognized_name" => format!("the {from} has no certificate for the name (SNI) the client asked for"),
        "no_application_protocol" => "no common ALPN protocol".into(),
        // TLS 1.3 encrypts alerts; the observer reports a record the size of
        // an alert. From the client, after the server's encrypted flight
        // (certificate included), it is almost always a rejected certificate.
        "encrypted" if from == Side::Client => "the client sent an encrypted alert after the server's certificate (TLS 1.3 hides its reason): most likely it rejected the certificate (untrusted issuer, wrong name or expired)".into(),
        "encrypted" => format!("the {from} sent an encrypted alert (TLS 1.3 hides its reason)"),
        _ => format!("the {from} aborted the handshake"),
    }
}

fn is_legacy(version: &str) -> bool {
    matches!(version, "SSLv3" | "TLSv1.0" | "TLSv1.1")
}

fn legacy_negotiated(n: Negotiated) -> Option<Finding> {
    let (ver, suite) = (n.version, n.cipher_suite);
    is_legacy(ver).then(|| {
        Finding::new(
            ids::TLS_LEGACY_VERSION,
            Severity::Warning,
            format!("The session negotiated {ver}, an obsolete protocol version"),
            vec![format!("ServerHello: {ver}, {suite}")],
            "TLS 1.0 and 1.1 are deprecated (RFC 8996) and refused by current cloud gateways. \
             Enable TLS 1.2 on both servers (Windows: the SCHANNEL protocol registry keys and \
             .NET strong crypto; old appliances need an update).",
        )
    })
}

fn weak_cipher(n: Negotiated) -> Option<Finding> {
    let (ver, suite) = (n.version, n.cipher_suite);
    let why = weak_suite(suite)?;
    Some(Finding::new(
        ids::TLS_WEAK_CIPHER,
        Severity::Warning,
        format!("The negotiated cipher suite is weak: {why}"),
        vec![format!("ServerHello: {ver}, {suite}")],
        "Prefer ECDHE key exchange with AES-GCM or ChaCha20-Poly1305 on the server (and \
         remove RC4, 3DES, NULL, EXPORT and static-RSA suites from both sides).",
    ))
}

/// Why a suite is weak, if it is.
fn weak_suite(suite: &str) -> Option<&'static str> {
    let s = suite.to_ascii_uppercase();
    if s.contains("_NULL_") || s.ends_with("_NULL") {
        Some("no encryption (NULL)")
    } else if s.contains("EXPORT") {
        Some("EXPORT-grade")
    } else if s.contains("RC4") {
        Some("RC4 is broken")
    } else if s.contains("3DES") || s.contains("_DES_") {
        Some("3DES/DES (64-bit blocks, Sweet32)")
    } else if s.starts_with("TLS_RSA_WITH_") {
        Some("static RSA key exchange: no forward secrecy")
    } else if s.contains("_CBC_SHA") && !s.contains("SHA256") && !s.contains("SHA384") {
        Some("CBC with SHA-1 MAC")
    } else {
        None
    }
}

/// The client offers nothing newer than an obsolete version (and no
/// ServerHello says what was negotiated).
fn legacy_offered(v: &SessionView) -> Option<Finding> {
    let max = v.client_hello()?.max_version.as_str();
    if !is_legacy(max) || v.negotiated().is_some() {
        return None;
    }
    Some(Finding::new(
        ids::TLS_LEGACY_VERSION,
        Severity::Warning,
        format!("The client offers at most {max}, an obsolete protocol version"),
        vec![format!("ClientHello: up to {max}")],
        "Enable TLS 1.2 on the sending server; many receivers refuse anything older.",
    ))
}

fn no_sni(v: &SessionView) -> Option<Finding> {
    if v.client_hello()?.sni.is_some() {
        return None;
    }
    Some(Finding::new(
        ids::TLS_NO_SNI,
        Severity::Info,
        "The client sent no server name (SNI)",
        vec!["ClientHello without a server_name extension".into()],
        "Common among MTAs and harmless for most receivers; a receiver hosting several \
         certificates presents its default one.",
    ))
}

fn certificate_hidden(v: &SessionView) -> Option<Finding> {
    let version = v.tls().find_map(|t| match t {
        TlsEvent::CertificateHidden { version, .. } => Some(version),
        _ => None,
    })?;
    if v.server_leaf().is_some() {
        return None;
    }
    Some(Finding::new(
        ids::TLS_CERTIFICATE_HIDDEN,
        Severity::Info,
        "TLS 1.3: the server's certificate is encrypted and was not seen",
        vec![format!("negotiated {version}")],
        "Passive observation cannot see a TLS 1.3 certificate. Read it from the client's \
         log, or connect to the server with TLS 1.2 (openssl s_client -starttls smtp \
         -tls1_2 -connect HOST:25) to see the chain it presents.",
    ))
}

fn client_cert_missing(v: &SessionView) -> Option<Finding> {
    if !v
        .tls()
        .any(|t| matches!(t, TlsEvent::CertificateRequest { .. }))
    {
        return None;
    }
    let client_sent = v.tls().any(
        |t| matches!(t, TlsEvent::Certificate { side: Side::Client, count, .. } if *count > 0),
    );
    let hidden = v.negotiated().is_some_and(|n| n.version == "TLSv1.3");
    if client_sent || hidden {
        return None;
    }
    Some(Finding::new(
        ids::TLS_CLIENT_CERT_MISSING,
        Severity::Warning,
        "The server asked for a client certificate and the client sent none",
        vec![
            "CertificateRequest from the server; the client's Certificate message was empty".into(),
        ],
        "Harmless if the server only asks; if it requires one (mutual TLS, e.g. a partner \
         connector restricted to your certificate), configure the sending server to present \
         its certificate (Exchange: the Send connector's TlsCertificateName).",
    ))
}
