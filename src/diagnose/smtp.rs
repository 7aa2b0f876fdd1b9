//! SMTP and STARTTLS findings: what the cleartext conversation shows about
//! TLS being offered, required, refused, skipped, or masked by a firewall;
//! an observer that lost track; a cleartext retry after a failed handshake.

use super::{ids, Finding, Ordered, SessionView, Severity};
use crate::event::{SessionEvent, Side};
use crate::smtp::SmtpEvent;

pub(super) fn rules(v: &SessionView, out: &mut Vec<Finding>) {
    let masked = masked_by_firewall(v);
    let was_masked = masked.is_some();
    out.extend(masked);
    out.extend(desync(v));
    out.extend(helo_not_ehlo(v));
    out.extend(starttls_not_offered(v, was_masked));
    let required = starttls_required(v);
    let was_required = required.is_some();
    out.extend(required);
    out.extend(starttls_refused(v));
    // Not repeated when the server refused the cleartext MAIL:
    // starttls.required already says it, as an error.
    if !was_required {
        out.extend(starttls_not_used(v));
    }
    out.extend(auth_cleartext(v));
    out.extend(cleartext_fallback(v));
}

/// Mechanisms whose exchange carries the secret itself (or a bearer token)
/// readably: anyone on the path can reuse it.
fn reveals_secret(mechanism: &str) -> bool {
    matches!(
        mechanism,
        "PLAIN" | "LOGIN" | "XOAUTH2" | "OAUTHBEARER" | "XOAUTH"
    )
}

/// The client authenticated (AUTH) before TLS started, or on a session that
/// never had TLS. Evidence: the mechanism and sizes, never the secret.
fn auth_cleartext(v: &SessionView) -> Option<Finding> {
    let mut mechanism = None;
    let mut initial = false;
    let mut responses = 0u64;
    let mut response_bytes = 0u64;
    for e in v.events_in_order() {
        match e {
            Ordered::TlsStarted => break,
            Ordered::Smtp(SmtpEvent::Auth {
                mechanism: m,
                initial_response,
            }) => {
                mechanism.get_or_insert(m.as_str());
                initial |= *initial_response;
            }
            Ordered::Smtp(SmtpEvent::AuthData {
                side: Side::Client,
                bytes,
                cancel: false,
            }) if mechanism.is_some() && *bytes > 0 => {
                responses += 1;
                response_bytes += bytes;
            }
            _ => {}
        }
    }
    let mechanism = mechanism?;
    let sent = initial || responses > 0;
    let mut ev = vec![format!(
        "client: AUTH {mechanism}{} before any TLS",
        if initial {
            " with an initial response"
        } else {
            ""
        }
    )];
    if responses > 0 {
        ev.push(format!(
            "then {responses} SASL response line(s), {response_bytes} bytes, in cleartext"
        ));
    }
    if !sent {
        ev.push("no credential followed the AUTH command".into());
    }
    ev.push(
        match v.starttls_offered() {
            Some(true) => "STARTTLS was offered in the EHLO reply",
            Some(false) => "the server did not offer STARTTLS",
            None => "no EHLO reply was seen",
        }
        .into(),
    );
    ev.push("the credentials themselves are redacted: not in the log or capture".into());
    let readable = sent && reveals_secret(mechanism);
    let (severity, title) = if readable {
        (
            Severity::Error,
            format!("The client sent its credentials in cleartext (AUTH {mechanism} before TLS)"),
        )
    } else if sent {
        (
            Severity::Warning,
            format!(
                "The client authenticated in cleartext (AUTH {mechanism} before TLS): the user name and a hash of the password crossed the network"
            ),
        )
    } else {
        (
            Severity::Warning,
            format!("The client started AUTH {mechanism} in cleartext, before TLS"),
        )
    };
    Some(Finding::new(
        ids::SMTP_AUTH_CLEARTEXT,
        severity,
        title,
        ev,
        "Authenticate only over TLS. On the client: STARTTLS before AUTH (Postfix \
         smtp_tls_security_level = encrypt with smtp_sasl_auth_enable; submission on 587 with \
         STARTTLS, or 465). On the server: refuse AUTH without TLS (Postfix smtpd_tls_auth_only \
         = yes; Exchange: the Receive connector's -AuthMechanism with BasicAuthRequireTLS). If \
         credentials were sent, anyone on the path could read them: change the password or \
         revoke the token.",
    ))
}

fn masked_by_firewall(v: &SessionView) -> Option<Finding> {
    let masked: Vec<String> = v
        .smtp()
        .filter_map(|e| match e {
            SmtpEvent::Masked { side, what, sample } => {
                Some(format!("{what} from the {side}: {sample:?}"))
            }
            _ => None,
        })
        .collect();
    if masked.is_empty() {
        return None;
    }
    Some(Finding::new(
        ids::SMTP_MASKED_BY_FIREWALL,
        Severity::Error,
        "A firewall between the servers is inspecting SMTP and masking parts of it",
        masked,
        "SMTP inspection features (Cisco ASA/PIX \"inspect esmtp\" / \"fixup smtp\", and similar \
         on other firewalls) rewrite the banner and EHLO reply and hide verbs they do not know, \
         STARTTLS included. Disable SMTP/ESMTP inspection for this traffic (ASA: \"no inspect \
         esmtp\" in the global policy) and test again.",
    ))
}

/// Observer desync: what it means depends on where.
fn desync(v: &SessionView) -> Option<Finding> {
    let (side, reason, offset) = v.smtp().find_map(|e| match e {
        SmtpEvent::Desync {
            side,
            reason,
            offset,
        } => Some((*side, reason, *offset)),
        _ => None,
    })?;
    let (id, severity, title, advice) = if reason.contains("ClientHello") {
        (
            ids::SMTP_IMPLICIT_TLS_MISMATCH,
            Severity::Error,
            "The client started TLS immediately, but this port speaks STARTTLS",
            "The client expects implicit TLS (SMTPS, port 465) while the server expects a \
             cleartext SMTP greeting followed by STARTTLS (ports 25/587). Point the client at \
             the right port (465 for SMTPS, if the server has one) or set its TLS mode to \
             STARTTLS.",
        )
    } else if side == Side::Server && offset == 0 {
        (
            ids::SMTP_SERVER_NOT_SMTP,
            Severity::Error,
            "The upstream did not answer with an SMTP greeting",
            "Check that the upstream address and port are an SMTP server (a TLS-only port needs \
             --implicit-tls; an HTTP or other service will not work).",
        )
    } else {
        (
            ids::SMTP_DESYNC,
            Severity::Warning,
            "The SMTP conversation could not be followed to the end",
            "The bytes were relayed unchanged, but smtptap stopped interpreting them at this point. \
             If the session also failed, the bytes at this point are the first thing to look at \
             (capture the session with --pcap).",
        )
    };
    Some(Finding::new(
        id,
        severity,
        title,
        vec![format!("{side} at byte {offset}: {reason}")],
        advice,
    ))
}

fn helo_not_ehlo(v: &SessionView) -> Option<Finding> {
    let hello = v.hello().filter(|h| h.verb == "HELO")?;
    if v.starttls_attempted() || v.tls_started() {
        return None;
    }
    Some(Finding::new(
        ids::SMTP_HELO_NOT_EHLO,
        Severity::Warning,
        "The client greeted with HELO, so no extensions (STARTTLS included) could be offered",
        vec![format!("client: HELO {}", hello.name)],
        "HELO is the old greeting: the server answers without a list of extensions, so STARTTLS \
         is never offered. Make the sending server use EHLO (Exchange: the Send connector must \
         not be forced to HELO; Postfix: smtp_never_send_ehlo = no).",
    ))
}

fn starttls_not_offered(v: &SessionView, masked: bool) -> Option<Finding> {
    let caps = v.cleartext_capabilities()?;
    if caps.starttls || v.tls_started() {
        return None;
    }
    let mut ev = vec![format!(
        "EHLO reply from {}: {}",
        caps.host.unwrap_or(""),
        caps.capabilities.join(", ")
    )];
    if let Some(banner) = v.banner() {
        ev.push(format!("banner: {}", banner.line()));
    }
    let causes = if masked {
        format!(
            "the evidence points at a firewall masking the conversation (see {})",
            ids::SMTP_MASKED_BY_FIREWALL
        )
    } else {
        "no masking was seen, so a firewall rewriting the EHLO reply is unlikely; the most likely \
         causes are that TLS is not enabled on the receiving server (no certificate bound to its \
         SMTP service or receive connector), or that it withholds STARTTLS from this sender: \
         Exchange Online Protection, for one, does not offer TLS to a sending IP on its block \
         lists (send a test in cleartext: the rejection names the list)"
            .to_string()
    };
    Some(Finding::new(
        ids::STARTTLS_NOT_OFFERED,
        Severity::Error,
        "The server did not offer STARTTLS: mail to it can only go in cleartext",
        ev,
        format!(
            "{causes}. On the receiving server enable TLS (Exchange: Enable-ExchangeCertificate \
             -Services SMTP with a certificate matching the connector's FQDN; Postfix: \
             smtpd_tls_security_level = may with smtpd_tls_chain_files). A sender that requires \
             TLS will queue the mail until this is fixed."
        ),
    ))
}

/// Whether a reply says "issue STARTTLS first".
fn requires_tls(code: u16, enhanced: Option<&str>, text: &str) -> bool {
    let enh = enhanced.unwrap_or("");
    let text = text.to_ascii_lowercase();
    (code == 530 && (enh == "5.7.0" || text.contains("starttls")))
        || (enh == "5.7.3" && text.contains("starttls"))
        || ((code == 451 || code == 530) && text.contains("must issue a starttls"))
}

/// The server demands TLS first (the first such reply).
fn starttls_required(v: &SessionView) -> Option<Finding> {
    if v.tls_started() {
        return None;
    }
    let (reply, command) = v
        .replies()
        .find(|(r, _)| requires_tls(r.code, r.enhanced, r.text))?;
    let mut ev = Vec::new();
    if let Some(c) = command {
        ev.push(format!("client: {c}"));
    }
    ev.push(format!("server: {}", reply.line()));
    ev.push(match v.starttls_offered() {
        Some(true) => {
            "STARTTLS was offered in the EHLO reply, but the client did not use it".into()
        }
        Some(false) => "STARTTLS was not offered in the EHLO reply".into(),
        None => "no EHLO reply was seen".into(),
    });
    Some(Finding::new(
        ids::STARTTLS_REQUIRED,
        Severity::Error,
        "The server requires TLS, and the client tried to send in cleartext",
        ev,
        "Configure the sending server to use STARTTLS toward this destination (Exchange: a \
         Send connector with TLS enabled and a valid certificate, Enable-ExchangeCertificate \
         -Services SMTP; Postfix: smtp_tls_security_level = may or encrypt). If STARTTLS was \
         not offered although the server requires it, look for a firewall masking the EHLO reply.",
    ))
}

fn starttls_refused(v: &SessionView) -> Option<Finding> {
    let reply = v.smtp().find_map(|e| match e {
        SmtpEvent::StartTls {
            code,
            accepted,
            enhanced,
            text,
        } => Some((!*accepted).then(|| super::Reply::new(*code, enhanced, text))),
        _ => None,
    })??;
    Some(Finding::new(
        ids::STARTTLS_REFUSED,
        Severity::Error,
        "The server refused STARTTLS",
        vec![
            "client: STARTTLS".into(),
            format!("server: {}", reply.line()),
        ],
        "The receiving server advertised TLS but could not start it: usually its certificate \
         or private key is missing, unreadable or expired, or its TLS library failed. Check \
         the receiving server's log at this time (Postfix: warnings from smtpd about TLS; \
         Exchange: the certificate enabled for SMTP). A 454 is temporary: senders retry, \
         opportunistic senders may fall back to cleartext.",
    ))
}

/// Offered but not used.
fn starttls_not_used(v: &SessionView) -> Option<Finding> {
    if v.starttls_offered() != Some(true) || v.starttls_attempted() || !v.sent("MAIL") {
        return None;
    }
    Some(Finding::new(
        ids::STARTTLS_NOT_USED,
        Severity::Warning,
        "The server offered STARTTLS, but the client went on in cleartext",
        vec![
            "EHLO reply lists STARTTLS".into(),
            "client sent MAIL without STARTTLS".into(),
        ],
        "The sending server has TLS disabled for this destination, or it failed with TLS here \
         recently and now falls back to cleartext. Enable opportunistic TLS on it (Postfix: \
         smtp_tls_security_level = may; Exchange: the Send connector's TLS settings) and check its \
         log for earlier TLS failures to this server.",
    ))
}

fn cleartext_fallback(v: &SessionView) -> Option<Finding> {
    if v.tls_started() {
        return None;
    }
    let (prior, ago, reason) = v.session().find_map(|e| match e {
        SessionEvent::PriorTlsFailure {
            prior_session,
            ago_s,
            reason,
        } => Some((prior_session, ago_s, reason)),
        _ => None,
    })?;
    Some(Finding::new(
        ids::TLS_CLEARTEXT_FALLBACK,
        Severity::Error,
        "The client fell back to cleartext right after a failed TLS handshake",
        vec![format!(
            "session {prior} from the same client failed its TLS handshake {ago:.0} s earlier: {reason}"
        )],
        "Opportunistic TLS that falls back to cleartext on failure gives no protection \
         against anyone who can break the handshake: as good as no TLS. Fix the handshake \
         failure of the earlier session; if TLS is mandatory for this partner, configure the \
         sender to require it (Postfix: smtp_tls_policy_maps with encrypt/verify; Exchange: \
         RequireTLS on the Send connector).",
    ))
}
