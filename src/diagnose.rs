//! The diagnosis: a pure function of one session's events that returns
//! findings — what went wrong, the evidence, and what to change.
//!
//! Every finding has a stable `id` (documented in `docs/findings.md`), a
//! severity, a one-line title, the evidence copied from the events (the exact
//! reply line, the presented and expected names, the alert and who sent it)
//! and advice in the troubleshooter's language. A clean session yields no
//! warning or error.
//!
//! The rules read the events in their documented JSON form (the public
//! contract of `docs/log-schema.md`), through a [`SessionView`]. The same view
//! feeds the session summary. This module must not do I/O.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::Event;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing; nothing to fix.
    Info,
    /// Works today, but is weak or will break.
    Warning,
    /// Mail did not flow, or did not flow encrypted when it should have.
    Error,
}

/// One diagnosis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// Stable identifier (`starttls.not_offered`), documented in docs/findings.md.
    pub id: String,
    /// How bad.
    pub severity: Severity,
    /// One line.
    pub title: String,
    /// The facts that support it, quoted from the session.
    pub evidence: Vec<String>,
    /// What to change.
    pub advice: String,
}

/// Settings the diagnosis needs.
#[derive(Debug, Clone)]
pub struct Context {
    /// Warn when a certificate expires within this many days.
    pub expiry_warning_days: u32,
}

impl Default for Context {
    fn default() -> Self {
        Context {
            expiry_warning_days: 30,
        }
    }
}

/// A session's events, sorted by kind, in JSON form.
#[derive(Debug, Default, Clone)]
pub struct SessionView {
    /// All events as JSON, in order.
    pub all: Vec<Value>,
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}
fn b(v: &Value, k: &str) -> bool {
    v.get(k).and_then(Value::as_bool).unwrap_or(false)
}
fn u(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}
fn strs(v: &Value, k: &str) -> Vec<String> {
    v.get(k)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

impl SessionView {
    /// Builds the view.
    pub fn new(events: &[Event]) -> Self {
        SessionView {
            all: events
                .iter()
                .filter_map(|e| serde_json::to_value(e).ok())
                .collect(),
        }
    }

    /// Events with this name, in order.
    pub fn named<'a, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a Value> + use<'a, 'n> {
        self.all.iter().filter(move |v| s(v, "event") == name)
    }

    /// The first event with this name.
    pub fn first(&self, name: &str) -> Option<&Value> {
        self.named(name).next()
    }

    /// Whether any event has this name.
    pub fn has(&self, name: &str) -> bool {
        self.first(name).is_some()
    }

    /// The EHLO reply seen in cleartext (before STARTTLS), if any.
    pub fn cleartext_capabilities(&self) -> Option<&Value> {
        for v in &self.all {
            match s(v, "event") {
                "tls.started" => return None,
                "smtp.capabilities" => return Some(v),
                _ => {}
            }
        }
        None
    }

    /// Whether STARTTLS was offered in cleartext (None: no EHLO reply seen).
    pub fn starttls_offered(&self) -> Option<bool> {
        self.cleartext_capabilities().map(|c| b(c, "starttls"))
    }

    /// Whether the client sent STARTTLS.
    pub fn starttls_attempted(&self) -> bool {
        self.named("smtp.command")
            .any(|c| s(c, "verb") == "STARTTLS")
    }

    /// Whether the server accepted STARTTLS (or the session was implicit TLS).
    pub fn tls_started(&self) -> bool {
        self.has("tls.started")
    }

    /// Whether TLS started from the first byte (configured or detected), not
    /// after STARTTLS.
    pub fn implicit_tls(&self) -> bool {
        self.first("tls.started")
            .is_some_and(|t| s(t, "after").starts_with("implicit"))
    }

    /// Whether the TLS handshake completed and data flowed.
    pub fn tls_established(&self) -> bool {
        self.has("tls.established")
    }

    /// The client's HELO/EHLO (first).
    pub fn hello(&self) -> Option<&Value> {
        self.first("smtp.ehlo")
    }

    /// The leaf certificate info of the server (index 0), if seen.
    pub fn server_leaf(&self) -> Option<&Value> {
        self.named("cert.info")
            .find(|c| s(c, "role") == "server" && u(c, "index") == 0)
    }

    /// The negotiated TLS version and suite, if a ServerHello was seen.
    pub fn negotiated(&self) -> Option<(String, String)> {
        self.first("tls.server_hello").map(|h| {
            (
                s(h, "version").to_string(),
                s(h, "cipher_suite").to_string(),
            )
        })
    }

    /// Messages accepted and rejected (by the reply to the end of data / BDAT LAST).
    pub fn messages(&self) -> (u64, u64) {
        let mut ok = 0;
        let mut bad = 0;
        for m in self.named("smtp.message") {
            if b(m, "accepted") {
                ok += 1;
            } else {
                bad += 1;
            }
        }
        (ok, bad)
    }

    /// The last reply line of the server, as `code [enhanced] text`.
    pub fn last_reply(&self) -> Option<String> {
        self.all
            .iter()
            .rev()
            .find(|v| matches!(s(v, "event"), "smtp.reply" | "smtp.banner"))
            .map(reply_line)
    }
}

/// A reply as one line: `530 5.7.0 Must issue a STARTTLS command first`
/// (the enhanced status code is kept: the events carry it apart from the text).
pub fn reply_line(v: &Value) -> String {
    let text = s(v, "text");
    match v.get("enhanced").and_then(Value::as_str) {
        Some(e) if !e.is_empty() => format!("{} {e} {text}", u(v, "code")),
        _ => format!("{} {text}", u(v, "code")),
    }
    .trim_end()
    .to_string()
}

fn f(
    id: &str,
    severity: Severity,
    title: String,
    evidence: Vec<String>,
    advice: String,
) -> Finding {
    Finding {
        id: id.to_string(),
        severity,
        title,
        evidence,
        advice,
    }
}

/// Diagnoses one session from its events (in order).
pub fn diagnose(events: &[Event], ctx: &Context) -> Vec<Finding> {
    let v = SessionView::new(events);
    let mut out = Vec::new();
    relay_rules(&v, &mut out);
    smtp_rules(&v, &mut out);
    tls_rules(&v, &mut out);
    cert_rules(&v, ctx, &mut out);
    message_rules(&v, &mut out);
    out.sort_by_key(|f| std::cmp::Reverse(f.severity));
    out
}

fn relay_rules(v: &SessionView, out: &mut Vec<Finding>) {
    if let Some(e) = v.first("upstream.failed") {
        let mut ev = vec![format!("upstream {}: {}", s(e, "upstream"), s(e, "error"))];
        ev.extend(strs(e, "tried").into_iter().map(|t| format!("tried {t}")));
        match e.get("reply").and_then(Value::as_str) {
            Some(r) => ev.push(format!("told the client: {r}")),
            None => ev.push("closed the client connection without a reply".into()),
        }
        out.push(f(
            "upstream.unreachable",
            Severity::Error,
            format!("smtptap could not reach the upstream server {}", s(e, "upstream")),
            ev,
            "Check the upstream host and port in the configuration, DNS for the host name, and that \
             a firewall lets this machine reach it (from this machine: nc -vz HOST PORT). The client \
             was given a temporary failure, so it keeps the message queued and retries."
                .into(),
        ));
    }
    if let Some(e) = v.first("observer.lagged") {
        out.push(f(
            "observer.lagged",
            Severity::Warning,
            "Part of this session was relayed but not analysed".into(),
            vec![format!(
                "{} bytes not analysed, starting with bytes from the {}",
                u(e, "bytes_not_analysed"),
                s(e, "side")
            )],
            "Mail was not affected. The analysis could not keep up (an overloaded machine or a slow \
             log disk): raise limits.observer_queue, log to a faster disk, or lower limits.max_sessions. \
             Facts after that point are missing from this session's report."
                .into(),
        ));
    }
    if let Some(e) = v.first("upstream.loop_refused") {
        out.push(f(
            "upstream.loop",
            Severity::Error,
            "The connection's original destination is smtptap itself".into(),
            vec![format!(
                "original destination {}: {}",
                s(e, "original_dst"),
                s(e, "reason")
            )],
            "The redirect rule also catches traffic addressed to the proxy (or the proxy's own \
             upstream connections). Exclude the proxy's address and its own outbound traffic from \
             the REDIRECT/TPROXY rule (see the README's recipes)."
                .into(),
        ));
    }
}

fn smtp_rules(v: &SessionView, out: &mut Vec<Finding>) {
    // A middlebox masking the conversation.
    let masked: Vec<&Value> = v.named("smtp.masked").collect();
    if !masked.is_empty() {
        out.push(f(
            "smtp.masked_by_firewall",
            Severity::Error,
            "A firewall between the servers is inspecting SMTP and masking parts of it".into(),
            masked
                .iter()
                .map(|m| format!("{} from the {}: {:?}", s(m, "what"), s(m, "side"), s(m, "sample")))
                .collect(),
            "SMTP inspection features (Cisco ASA/PIX \"inspect esmtp\" / \"fixup smtp\", and similar \
             on other firewalls) rewrite the banner and EHLO reply and hide verbs they do not know, \
             STARTTLS included. Disable SMTP/ESMTP inspection for this traffic (ASA: \"no inspect \
             esmtp\" in the global policy) and test again."
                .into(),
        ));
    }

    // Observer desync: what it means depends on where.
    if let Some(d) = v.first("smtp.desync") {
        let reason = s(d, "reason");
        let (id, sev, title, advice) = if reason.contains("ClientHello") {
            (
                "smtp.implicit_tls_mismatch",
                Severity::Error,
                "The client started TLS immediately, but this port speaks STARTTLS",
                "The client expects implicit TLS (SMTPS, port 465) while the server expects a \
                 cleartext SMTP greeting followed by STARTTLS (ports 25/587). Point the client at \
                 the right port (465 for SMTPS, if the server has one) or set its TLS mode to \
                 STARTTLS.",
            )
        } else if s(d, "side") == "server" && u(d, "offset") == 0 {
            (
                "smtp.server_not_smtp",
                Severity::Error,
                "The upstream did not answer with an SMTP greeting",
                "Check that the upstream address and port are an SMTP server (a TLS-only port needs \
                 --implicit-tls; an HTTP or other service will not work).",
            )
        } else {
            (
                "smtp.desync",
                Severity::Warning,
                "The SMTP conversation could not be followed to the end",
                "The bytes were relayed unchanged, but smtptap stopped interpreting them at this point. \
                 If the session also failed, the bytes at this point are the first thing to look at \
                 (capture the session with --pcap).",
            )
        };
        out.push(f(
            id,
            sev,
            title.into(),
            vec![format!(
                "{} at byte {}: {reason}",
                s(d, "side"),
                u(d, "offset")
            )],
            advice.into(),
        ));
    }

    let hello = v.hello();
    let used_helo = hello.map(|h| s(h, "verb") == "HELO").unwrap_or(false);
    let attempted = v.starttls_attempted();
    if used_helo && !attempted && !v.tls_started() {
        let h = hello
            .map(|h| format!("client: HELO {}", s(h, "name")))
            .unwrap_or_default();
        out.push(f(
            "smtp.helo_not_ehlo",
            Severity::Warning,
            "The client greeted with HELO, so no extensions (STARTTLS included) could be offered".into(),
            vec![h],
            "HELO is the old greeting: the server answers without a list of extensions, so STARTTLS \
             is never offered. Make the sending server use EHLO (Exchange: the Send connector must \
             not be forced to HELO; Postfix: smtp_never_send_ehlo = no)."
                .into(),
        ));
    }

    // STARTTLS not offered.
    if let Some(caps) = v.cleartext_capabilities() {
        if !b(caps, "starttls") && !v.tls_started() {
            let mut ev = vec![format!(
                "EHLO reply from {}: {}",
                s(caps, "host"),
                strs(caps, "capabilities").join(", ")
            )];
            if let Some(bn) = v.first("smtp.banner") {
                ev.push(format!("banner: {}", reply_line(bn)));
            }
            let mut causes = Vec::new();
            if !masked.is_empty() {
                causes.push("the evidence points at a firewall masking the conversation (see smtp.masked_by_firewall)");
            } else {
                causes.push(
                    "no masking was seen, so a firewall rewriting the EHLO reply is unlikely",
                );
                causes.push("the most likely causes are that TLS is not enabled on the receiving server (no certificate bound to its SMTP service or receive connector), or that it withholds STARTTLS from this sender: Exchange Online Protection, for one, does not offer TLS to a sending IP on its block lists (send a test in cleartext: the rejection names the list)");
            }
            out.push(f(
                "starttls.not_offered",
                Severity::Error,
                "The server did not offer STARTTLS: mail to it can only go in cleartext".into(),
                ev,
                format!(
                    "{}. On the receiving server enable TLS (Exchange: Enable-ExchangeCertificate -Services SMTP with a certificate matching the connector's FQDN; Postfix: smtpd_tls_security_level = may with smtpd_tls_chain_files). A sender that requires TLS will queue the mail until this is fixed.",
                    causes.join("; ")
                ),
            ));
        }
    }

    // Server demands TLS first.
    for r in v.named("smtp.reply") {
        let code = u(r, "code");
        let enh = s(r, "enhanced");
        let text = s(r, "text").to_ascii_lowercase();
        let tls_required = (code == 530 && (enh == "5.7.0" || text.contains("starttls")))
            || (enh == "5.7.3" && text.contains("starttls"))
            || ((code == 451 || code == 530) && text.contains("must issue a starttls"));
        if tls_required && !v.tls_started() {
            let mut ev = vec![format!("server: {}", reply_line(r))];
            if let Some(c) = r.get("command").and_then(Value::as_str) {
                ev.insert(0, format!("client: {c}"));
            }
            let offered = v.starttls_offered();
            ev.push(match offered {
                Some(true) => {
                    "STARTTLS was offered in the EHLO reply, but the client did not use it".into()
                }
                Some(false) => "STARTTLS was not offered in the EHLO reply".into(),
                None => "no EHLO reply was seen".into(),
            });
            out.push(f(
                "starttls.required",
                Severity::Error,
                "The server requires TLS, and the client tried to send in cleartext".into(),
                ev,
                "Configure the sending server to use STARTTLS toward this destination (Exchange: a \
                 Send connector with TLS enabled and a valid certificate, Enable-ExchangeCertificate \
                 -Services SMTP; Postfix: smtp_tls_security_level = may or encrypt). If STARTTLS was \
                 not offered although the server requires it, look for a firewall masking the EHLO reply."
                    .into(),
            ));
            break;
        }
    }

    // STARTTLS refused.
    if let Some(st) = v.first("smtp.starttls") {
        if !b(st, "accepted") {
            out.push(f(
                "starttls.refused",
                Severity::Error,
                "The server refused STARTTLS".into(),
                vec![
                    "client: STARTTLS".into(),
                    format!("server: {}", reply_line(st)),
                ],
                "The receiving server advertised TLS but could not start it: usually its certificate \
                 or private key is missing, unreadable or expired, or its TLS library failed. Check \
                 the receiving server's log at this time (Postfix: warnings from smtpd about TLS; \
                 Exchange: the certificate enabled for SMTP). A 454 is temporary: senders retry, \
                 opportunistic senders may fall back to cleartext."
                    .into(),
            ));
        }
    }

    // Offered but not used (unless the server refused the cleartext MAIL:
    // starttls.required already says it, as an error).
    let required = out.iter().any(|f| f.id == "starttls.required");
    if v.starttls_offered() == Some(true)
        && !attempted
        && !required
        && v.named("smtp.command").any(|c| s(c, "verb") == "MAIL")
    {
        out.push(f(
            "starttls.not_used",
            Severity::Warning,
            "The server offered STARTTLS, but the client went on in cleartext".into(),
            vec![
                "EHLO reply lists STARTTLS".into(),
                "client sent MAIL without STARTTLS".into(),
            ],
            "The sending server has TLS disabled for this destination, or it failed with TLS here \
             recently and now falls back to cleartext. Enable opportunistic TLS on it (Postfix: \
             smtp_tls_security_level = may; Exchange: the Send connector's TLS settings) and check its \
             log for earlier TLS failures to this server."
                .into(),
        ));
    }

    if let Some(p) = v.first("session.prior_tls_failure") {
        if !v.tls_started() {
            out.push(f(
                "tls.cleartext_fallback",
                Severity::Error,
                "The client fell back to cleartext right after a failed TLS handshake".into(),
                vec![format!(
                    "session {} from the same client failed its TLS handshake {:.0} s earlier: {}",
                    u(p, "prior_session"),
                    p.get("seconds_ago").and_then(Value::as_f64).unwrap_or(0.0),
                    s(p, "reason")
                )],
                "Opportunistic TLS that falls back to cleartext on failure gives no protection \
                 against anyone who can break the handshake: as good as no TLS. Fix the handshake \
                 failure of the earlier session; if TLS is mandatory for this partner, configure the \
                 sender to require it (Postfix: smtp_tls_policy_maps with encrypt/verify; Exchange: \
                 RequireTLS on the Send connector)."
                    .into(),
            ));
        }
    }
}

fn alert_meaning(desc: &str, from: &str) -> String {
    let other = if from == "client" { "server" } else { "client" };
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
        "encrypted" if from == "client" => "the client sent an encrypted alert after the server's certificate (TLS 1.3 hides its reason): most likely it rejected the certificate (untrusted issuer, wrong name or expired)".into(),
        "encrypted" => format!("the {from} sent an encrypted alert (TLS 1.3 hides its reason)"),
        _ => format!("the {from} aborted the handshake"),
    }
}

fn tls_rules(v: &SessionView, out: &mut Vec<Finding>) {
    if !v.tls_started() {
        return;
    }
    let established = v.tls_established();
    let alerts: Vec<&Value> = v
        .named("tls.alert")
        .filter(|a| s(a, "description") != "close_notify")
        .collect();
    if let Some(d) = v.first("tls.desync") {
        if !established {
            let reason = s(d, "reason");
            out.push(f(
                "tls.not_tls",
                Severity::Error,
                format!("After STARTTLS the {} did not speak TLS", s(d, "side")),
                vec![format!("{} at byte {}: {reason}", s(d, "side"), u(d, "offset"))],
                "After the server's 220 to STARTTLS both sides must start a TLS handshake. A peer that \
                 goes on in cleartext, or a middlebox that answered STARTTLS itself, breaks the session. \
                 Look for SMTP inspection on firewalls between the servers."
                    .into(),
            ));
        }
    }
    if !established {
        let mut ev = Vec::new();
        if let Some(ch) = v.first("tls.client_hello") {
            ev.push(format!(
                "ClientHello: up to {}, {} cipher suites, SNI {}",
                s(ch, "max_version"),
                // Signalling values (renegotiation/fallback SCSV) and GREASE are not suites.
                strs(ch, "cipher_suites")
                    .iter()
                    .filter(|n| !n.contains("SCSV") && n.as_str() != "GREASE")
                    .count(),
                ch.get("sni").and_then(Value::as_str).unwrap_or("(none)")
            ));
        } else {
            ev.push("no ClientHello was seen after STARTTLS".into());
        }
        if let Some((ver, suite)) = v.negotiated() {
            ev.push(format!("ServerHello: {ver}, {suite}"));
        }
        let mut meaning = String::new();
        for a in &alerts {
            ev.push(format!(
                "TLS alert from the {}: {} {} ({})",
                s(a, "from"),
                s(a, "level"),
                s(a, "description"),
                u(a, "code")
            ));
            if meaning.is_empty() {
                meaning = alert_meaning(s(a, "description"), s(a, "from"));
            }
        }
        if let Some(c) = v.first("session.close") {
            ev.push(format!(
                "connection ended: client {}, server {} ({})",
                s(c, "client_end"),
                s(c, "server_end"),
                s(c, "reason")
            ));
        }
        if meaning.is_empty() {
            meaning = if v.has("tls.certificate") || v.has("tls.certificate_hidden") {
                "the connection was closed without an alert after the server sent its certificate: typically the client rejected the certificate silently (Windows Schannel does this)".into()
            } else if v.has("tls.client_hello") && !v.has("tls.server_hello") {
                "the server closed the connection after the ClientHello without choosing a version or suite: no common protocol version or cipher suite".into()
            } else {
                "the handshake did not complete".into()
            };
        }
        if !v.has("tls.desync") {
            out.push(f(
                "tls.handshake_failed",
                Severity::Error,
                format!("The TLS handshake failed: {meaning}"),
                ev,
                "Compare what the client offered with what the server accepts (versions and suites \
                 above). For certificate alerts, see the certificate findings: the trust, expiry and \
                 name of the server's certificate. Mail for this session did not go encrypted; an \
                 opportunistic sender may now retry in cleartext."
                    .into(),
            ));
        }
    }

    if let Some((ver, suite)) = v.negotiated() {
        if matches!(ver.as_str(), "SSLv3" | "TLSv1.0" | "TLSv1.1") {
            out.push(f(
                "tls.legacy_version",
                Severity::Warning,
                format!("The session negotiated {ver}, an obsolete protocol version"),
                vec![format!("ServerHello: {ver}, {suite}")],
                "TLS 1.0 and 1.1 are deprecated (RFC 8996) and refused by current cloud gateways. \
                 Enable TLS 1.2 on both servers (Windows: the SCHANNEL protocol registry keys and \
                 .NET strong crypto; old appliances need an update)."
                    .into(),
            ));
        }
        let weak = weak_suite(&suite);
        if let Some(why) = weak {
            out.push(f(
                "tls.weak_cipher",
                Severity::Warning,
                format!("The negotiated cipher suite is weak: {why}"),
                vec![format!("ServerHello: {ver}, {suite}")],
                "Prefer ECDHE key exchange with AES-GCM or ChaCha20-Poly1305 on the server (and \
                 remove RC4, 3DES, NULL, EXPORT and static-RSA suites from both sides)."
                    .into(),
            ));
        }
    }
    if let Some(ch) = v.first("tls.client_hello") {
        let max = s(ch, "max_version");
        if matches!(max, "SSLv3" | "TLSv1.0" | "TLSv1.1") && v.negotiated().is_none() {
            out.push(f(
                "tls.legacy_version",
                Severity::Warning,
                format!("The client offers at most {max}, an obsolete protocol version"),
                vec![format!("ClientHello: up to {max}")],
                "Enable TLS 1.2 on the sending server; many receivers refuse anything older."
                    .into(),
            ));
        }
        if ch.get("sni").map(Value::is_null).unwrap_or(true) {
            out.push(f(
                "tls.no_sni",
                Severity::Info,
                "The client sent no server name (SNI)".into(),
                vec!["ClientHello without a server_name extension".into()],
                "Common among MTAs and harmless for most receivers; a receiver hosting several \
                 certificates presents its default one."
                    .into(),
            ));
        }
    }
    if let Some(h) = v.first("tls.certificate_hidden") {
        if v.server_leaf().is_none() {
            out.push(f(
                "tls.certificate_hidden",
                Severity::Info,
                "TLS 1.3: the server's certificate is encrypted and was not seen".into(),
                vec![format!("negotiated {}", s(h, "version"))],
                "Passive observation cannot see a TLS 1.3 certificate. Read it from the client's \
                 log, or connect to the server with TLS 1.2 (openssl s_client -starttls smtp \
                 -tls1_2 -connect HOST:25) to see the chain it presents."
                    .into(),
            ));
        }
    }
    if v.has("tls.certificate_request") {
        let client_sent = v
            .named("tls.certificate")
            .any(|c| s(c, "from") == "client" && u(c, "count") > 0);
        let hidden = v.negotiated().map(|(n, _)| n == "TLSv1.3").unwrap_or(false);
        if !client_sent && !hidden {
            out.push(f(
                "tls.client_cert_missing",
                Severity::Warning,
                "The server asked for a client certificate and the client sent none".into(),
                vec!["CertificateRequest from the server; the client's Certificate message was empty".into()],
                "Harmless if the server only asks; if it requires one (mutual TLS, e.g. a partner \
                 connector restricted to your certificate), configure the sending server to present \
                 its certificate (Exchange: the Send connector's TlsCertificateName)."
                    .into(),
            ));
        }
    }
}

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

fn names_of(c: &Value) -> String {
    let mut n = strs(c, "san_dns");
    n.extend(strs(c, "san_ip"));
    if n.is_empty() {
        if let Some(cn) = c.get("cn").and_then(Value::as_str) {
            n.push(format!("CN={cn}"));
        }
    }
    if n.is_empty() {
        "(no names)".into()
    } else {
        n.join(", ")
    }
}

fn cert_rules(v: &SessionView, ctx: &Context, out: &mut Vec<Finding>) {
    // Expiry, per certificate in the server's chain.
    for c in v.named("cert.info") {
        let who = format!(
            "{} certificate #{} ({})",
            s(c, "role"),
            u(c, "index"),
            c.get("cn")
                .and_then(Value::as_str)
                .unwrap_or(s(c, "subject"))
        );
        let days = c.get("days_left").and_then(Value::as_i64).unwrap_or(0);
        let ev = vec![
            format!(
                "{who}: valid {} to {}",
                s(c, "not_before"),
                s(c, "not_after")
            ),
            format!("SHA-1 thumbprint {}", s(c, "sha1_thumbprint")),
        ];
        if b(c, "expired") {
            out.push(f(
                "cert.expired",
                Severity::Error,
                format!("The {who} expired {} day(s) ago", -days),
                ev,
                "Renew the certificate and bind the new one to the SMTP service (Exchange: \
                 Enable-ExchangeCertificate -Thumbprint NEW -Services SMTP, then restart transport; \
                 Postfix: replace smtpd_tls_chain_files and postfix reload)."
                    .into(),
            ));
        } else if b(c, "not_yet_valid") {
            out.push(f(
                "cert.not_yet_valid",
                Severity::Error,
                format!("The {who} is not valid yet"),
                ev,
                "Check the clock of the machine that issued it and of both servers; or wait until \
                 its start date before binding it."
                    .into(),
            ));
        } else if days <= i64::from(ctx.expiry_warning_days) {
            out.push(f(
                "cert.expiring",
                Severity::Warning,
                format!("The {who} expires in {days} day(s)"),
                ev,
                "Renew it now and bind the new certificate before the old one expires.".into(),
            ));
        }
    }

    for ch in v.named("cert.chain") {
        if b(ch, "trusted") {
            continue;
        }
        let role = s(ch, "role");
        // A chain that fails only because a certificate it carries is expired
        // or not yet valid is already reported by cert.expired/not_yet_valid
        // (with dates and thumbprint); a second error would say it again.
        let error = s(ch, "error");
        if matches!(error, "expired" | "not_yet_valid")
            && v.named("cert.info")
                .any(|c| s(c, "role") == role && (b(c, "expired") || b(c, "not_yet_valid")))
        {
            continue;
        }
        let leaf = v
            .named("cert.info")
            .find(|c| s(c, "role") == role && u(c, "index") == 0);
        let mut ev = Vec::new();
        if let Some(l) = leaf {
            ev.push(format!(
                "{role} certificate: subject {}, issuer {}",
                s(l, "subject"),
                s(l, "issuer")
            ));
        }
        ev.push(format!(
            "verification: {}{}",
            s(ch, "error"),
            ch.get("detail")
                .and_then(Value::as_str)
                .map(|d| format!(" ({d})"))
                .unwrap_or_default()
        ));
        ev.push(format!(
            "chain as sent: {} certificate(s)",
            u(ch, "chain_len")
        ));
        let kind = if s(ch, "error") == "unknown_issuer" && b(ch, "missing_intermediate") {
            "missing_intermediate"
        } else {
            s(ch, "error")
        };
        let (id, title, advice) = match kind {
            "self_signed" => (
                "cert.self_signed",
                format!("The {role}'s certificate is self-signed"),
                "A self-signed certificate is refused by senders that verify (Exchange Online, \
                 forced-TLS connectors). Install a certificate from a public CA, or have the partner \
                 explicitly trust this one (a private CA on both sides).",
            ),
            "missing_intermediate" => (
                "cert.missing_intermediate",
                format!("The {role} does not send the intermediate certificate(s) of its chain"),
                "Configure the server to send the full chain (leaf then intermediates): Postfix \
                 smtpd_tls_chain_files with the intermediates; on Windows import the intermediate \
                 into the Intermediate Certification Authorities store of the server.",
            ),
            "revoked" => (
                "cert.revoked",
                format!("A certificate of the {role}'s chain is revoked by its CA"),
                "The CA revoked this certificate (the CRL lists its serial): verifying peers refuse it. \
                 Install a new certificate and bind it to the SMTP service (Exchange: \
                 Enable-ExchangeCertificate -Services SMTP; Postfix: smtpd_tls_chain_files).",
            ),
            "wrong_usage" => (
                "cert.untrusted",
                format!("The {role}'s certificate is not valid for this use (extended key usage)"),
                "The certificate's Extended Key Usage lacks serverAuth (for a server) or clientAuth \
                 (for a client certificate). Issue a certificate with the right usage.",
            ),
            "ca_used_as_leaf" => (
                "cert.untrusted",
                format!("The {role} presents a CA certificate as its own certificate"),
                "A CA certificate (basicConstraints CA:TRUE) cannot identify a server. Bind the \
                 server's own certificate, issued by that CA.",
            ),
            "expired" | "not_yet_valid" => (
                "cert.untrusted",
                format!("The {role}'s certificate chain is not valid now"),
                "See the expiry findings: renew the expired certificate in the chain.",
            ),
            _ => (
                "cert.untrusted",
                format!("The {role}'s certificate is not trusted by the configured trust store"),
                "If the issuer is a private CA, verifying peers need it as a trust anchor (smtptap: \
                 --ca-file); otherwise install a certificate from a public CA. Senders that verify \
                 certificates will refuse this server.",
            ),
        };
        if b(ch, "missing_intermediate") && id != "cert.missing_intermediate" {
            ev.push("the issuer is neither in the chain nor among the trust anchors: an intermediate may be missing".into());
        }
        out.push(f(id, Severity::Error, title, ev, advice.into()));
    }

    for nm in v.named("cert.names") {
        let role = s(nm, "role");
        let checks = nm
            .get("checks")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let leaf = v
            .named("cert.info")
            .find(|c| s(c, "role") == role && u(c, "index") == 0);
        let presented = leaf.map(names_of).unwrap_or_else(|| "(unknown)".into());
        let failed = |src: &str| -> Vec<String> {
            checks
                .iter()
                .filter(|c| s(c, "source") == src && !b(c, "matched"))
                .map(|c| s(c, "name").to_string())
                .collect()
        };
        let any_expected_matched = checks
            .iter()
            .any(|c| s(c, "source") == "expected" && b(c, "matched"));
        let exp = failed("expected");
        if !exp.is_empty() && !any_expected_matched {
            out.push(f(
                "cert.name_mismatch",
                Severity::Error,
                format!(
                    "The certificate does not carry the expected name {}",
                    exp.join(" or ")
                ),
                vec![
                    format!("expected: {}", exp.join(", ")),
                    format!("presented: {presented}"),
                ],
                format!(
                    "The MX points at a gateway that presents its own certificate ({presented}); the sender requires {}. \
                     Either the sender accepts the gateway's name (update its TLS policy / connector's \
                     TlsDomain or certificate name to the gateway's), or mail must reach a server \
                     that presents a certificate for {}.",
                    exp.join(", "),
                    exp.join(", ")
                ),
            ));
        }
        let up = failed("upstream");
        if !up.is_empty() {
            out.push(f(
                "cert.host_mismatch",
                Severity::Warning,
                format!("The certificate does not match the host name dialled ({})", up.join(", ")),
                vec![format!("dialled: {}", up.join(", ")), format!("presented: {presented}")],
                "Senders that verify the name (DANE, MTA-STS, verify policies) will refuse this \
                 server. Install a certificate whose SANs include the MX host name, or point the MX \
                 at a name the certificate carries."
                    .into(),
            ));
        }
        let mut announced = failed("banner");
        announced.extend(failed("ehlo"));
        announced.sort();
        announced.dedup();
        if !announced.is_empty() {
            let who = if role == "client" {
                "sending server"
            } else {
                "server"
            };
            out.push(f(
                "cert.announced_name_mismatch",
                Severity::Warning,
                format!(
                    "The {who} announces itself as {} but its certificate does not carry that name",
                    announced.join(", ")
                ),
                vec![
                    format!("announced (banner/EHLO): {}", announced.join(", ")),
                    format!("presented: {presented}"),
                ],
                "Exchange Online and Exchange 2013+ expect the FQDN a server gives in its banner and \
                 EHLO to be a subject or SAN of its TLS certificate (wildcards allowed). Set the \
                 connector's FQDN (Exchange: Set-ReceiveConnector/Set-SendConnector -Fqdn; Postfix: \
                 myhostname or smtp_helo_name) to a name on the certificate, or get a certificate \
                 with that name."
                    .into(),
            ));
        }
    }

    let failed_crls: Vec<&Value> = v.named("cert.crl").filter(|c| !b(c, "ok")).collect();
    if !failed_crls.is_empty() {
        out.push(f(
            "cert.crl_unavailable",
            Severity::Warning,
            format!(
                "{} CRL location(s) named by the certificates could not be fetched",
                failed_crls.len()
            ),
            failed_crls
                .iter()
                .map(|c| format!("{}: {}", s(c, "url"), s(c, "error")))
                .collect(),
            "Exchange and Exchange Online do not trust a certificate whose CRL they cannot read. \
             Check that the CRL URL is reachable from the receiving servers (firewall, proxy, DNS) \
             and that the CA still publishes it. (smtptap fetched it from this machine.)"
                .into(),
        ));
    }

    if let Some(l) = v.server_leaf() {
        if strs(l, "crl_urls").is_empty() && strs(l, "ocsp_urls").is_empty() && !b(l, "self_signed")
        {
            out.push(f(
                "cert.no_revocation_info",
                Severity::Info,
                "The server's certificate names no CRL or OCSP location".into(),
                vec![format!(
                    "certificate {}: no CRL distribution point, no OCSP URL",
                    s(l, "subject")
                )],
                "Exchange and Exchange Online refuse a certificate whose revocation status they \
                 cannot check. Certificates from public CAs carry these URLs; a private CA should \
                 publish a CRL reachable by the receiving servers."
                    .into(),
            ));
        }
    }
}

fn message_rules(v: &SessionView, out: &mut Vec<Finding>) {
    let tls = v.tls_established();
    for m in v.named("smtp.message") {
        if b(m, "accepted") {
            continue;
        }
        let line = reply_line(m);
        out.push(f(
            if tls {
                "smtp.rejected_after_tls"
            } else {
                "smtp.message_rejected"
            },
            Severity::Error,
            format!(
                "The server rejected the message{}",
                if tls {
                    " after TLS was established"
                } else {
                    ""
                }
            ),
            vec![
                format!("server: {line}"),
                format!("size: {} bytes", u(m, "size")),
            ],
            "TLS worked; the rejection is about the message or the sender (read the reply: \
             policy, size, recipient, authentication). A 4xx is temporary and will be retried."
                .into(),
        ));
    }
    let mut rejected_rcpts = Vec::new();
    for r in v.named("smtp.reply") {
        let cmd = s(r, "command");
        if cmd.to_ascii_uppercase().starts_with("RCPT") && u(r, "code") >= 400 {
            rejected_rcpts.push(format!("{cmd} -> {}", reply_line(r)));
        }
    }
    if !rejected_rcpts.is_empty() {
        out.push(f(
            "smtp.recipient_rejected",
            Severity::Warning,
            format!("The server rejected {} recipient(s)", rejected_rcpts.len()),
            rejected_rcpts,
            "Not a TLS problem: check the recipient addresses and the receiving server's recipient \
             policy (the reply text says why)."
                .into(),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_line_keeps_the_enhanced_status_code() {
        let with = serde_json::json!({"code": 454, "enhanced": "4.7.0", "text": "TLS not available due to local problem"});
        assert_eq!(
            reply_line(&with),
            "454 4.7.0 TLS not available due to local problem"
        );
        let without = serde_json::json!({"code": 250, "enhanced": null, "text": "mx.example.test"});
        assert_eq!(reply_line(&without), "250 mx.example.test");
        let bare = serde_json::json!({"code": 221, "text": ""});
        assert_eq!(reply_line(&bare), "221");
    }
}
