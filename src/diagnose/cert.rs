//! Certificate findings: validity dates, trust of the chain, the names on the
//! leaf, revocation information. They read only certificates the real peers
//! presented ([`SessionView::certs`]), never one smtptap minted.

use super::{ids, Context, Finding, SessionView, Severity};
use crate::cert::{CertEvent, CertInfo, NameCheck, NameSource};
use crate::event::{SessionEvent, Side, Source};
use crate::tls::TlsEvent;

pub(super) fn rules(v: &SessionView, ctx: &Context, all: &mut Vec<Finding>) {
    let mut found = Vec::new();
    from_chains(v, ctx, &mut found);
    if v.server_cert_source() == Some(Source::SideProbe) {
        let line = side_probe_evidence(v);
        for f in &mut found {
            f.evidence.push(line.clone());
        }
    }
    all.extend(found);
    all.extend(not_checked(v, ctx));
}

/// The evidence line that says a certificate finding rests on the
/// side-probe, not on this session's own handshake.
fn side_probe_evidence(v: &SessionView) -> String {
    let (at, to) = match v.side_probe() {
        Some((
            ev,
            SessionEvent::SideProbe {
                server_ip,
                server_port,
                sni,
                ..
            },
        )) => (
            ev.ts.to_string(),
            format!(
                "{server_ip}:{server_port}{}",
                sni.as_deref()
                    .map(|n| format!(" (SNI {n})"))
                    .unwrap_or_default()
            ),
        ),
        _ => (String::from("?"), String::from("the upstream")),
    };
    format!(
        "evidence from smtptap's side-probe of {to} at {at}: this session's TLS 1.3 hid its own          certificate, so the chain was read on smtptap's own connection to the same server"
    )
}

fn from_chains(v: &SessionView, ctx: &Context, out: &mut Vec<Finding>) {
    for c in v.certs() {
        if let CertEvent::Info {
            side,
            index,
            info,
            days_left,
            expired,
            not_yet_valid,
            ..
        } = c
        {
            let state = Validity {
                days_left: *days_left,
                expired: *expired,
                not_yet_valid: *not_yet_valid,
            };
            out.extend(expiry(*side, *index, info, state, ctx));
        }
    }
    for c in v.certs() {
        if let CertEvent::Chain {
            side,
            trusted: false,
            error,
            detail,
            missing_intermediate,
            chain_len,
            ..
        } = c
        {
            let verdict = Untrusted {
                side: *side,
                error: error.as_deref().unwrap_or(""),
                detail: detail.as_deref(),
                missing_intermediate: *missing_intermediate,
                chain_len: *chain_len,
            };
            out.extend(untrusted(v, verdict));
        }
    }
    for c in v.certs() {
        if let CertEvent::Names { side, checks } = c {
            names(v, *side, checks, out);
        }
    }
    out.extend(crl_unavailable(v));
    out.extend(no_revocation_info(v));
}

/// TLS 1.3 hid the server's certificate and no chain reached the analysis
/// otherwise: the configured checks (expected names, the name dialled,
/// trust, expiry) could not be made. Info: nothing is known to be wrong with
/// the mail system, but no verdict was reached, and the names are said.
fn not_checked(v: &SessionView, ctx: &Context) -> Option<Finding> {
    let version = v.tls().find_map(|t| match t {
        TlsEvent::CertificateHidden { version, .. } => Some(version),
        _ => None,
    })?;
    let server_cert_seen = v.certs().any(|c| {
        matches!(
            c,
            CertEvent::Info {
                side: Side::Server,
                ..
            } | CertEvent::Chain {
                side: Side::Server,
                ..
            } | CertEvent::Names {
                side: Side::Server,
                ..
            } | CertEvent::ParseError {
                side: Side::Server,
                ..
            }
        )
    });
    if server_cert_seen {
        return None;
    }
    let mut ev = Vec::new();
    let mut unchecked = Vec::new();
    if !ctx.expected_names.is_empty() {
        let names = ctx.expected_names.join(", ");
        ev.push(format!("expected name not checked: {names}"));
        unchecked.push(format!(
            "the expected name {}",
            ctx.expected_names.join(" or ")
        ));
    }
    if let Some(d) = &ctx.dialled_name {
        ev.push(format!("host name dialled not checked: {d}"));
        unchecked.push(format!("the host name dialled ({d})"));
    }
    if ctx.checks_chains {
        ev.push("trust of the chain and expiry dates not checked".into());
        unchecked.push("trust and expiry".into());
    }
    if unchecked.is_empty() {
        return None;
    }
    ev.push(format!(
        "negotiated {version}: the server's certificate was encrypted and not visible"
    ));
    let probe_failed = match v.side_probe() {
        Some((
            _,
            SessionEvent::SideProbe {
                ok: false,
                error,
                detail,
                ..
            },
        )) => {
            ev.push(format!(
                "the side-probe got no certificate: {}",
                detail
                    .as_deref()
                    .or(error.as_deref())
                    .unwrap_or("no reason given")
            ));
            true
        }
        _ => false,
    };
    let host = ctx.dialled_name.as_deref().unwrap_or("HOST");
    let expect: String = if ctx.expected_names.is_empty() {
        String::new()
    } else {
        ctx.expected_names
            .iter()
            .map(|n| format!(" --expect-name {n}"))
            .collect()
    };
    Some(Finding::new(
        ids::CERT_NOT_CHECKED,
        Severity::Info,
        format!(
            "The server's certificate could not be checked ({}): TLS 1.3 hid it",
            unchecked.join(", ")
        ),
        ev,
        format!(
            "Passive observation cannot read a TLS 1.3 certificate, so this session says nothing \
             about it either way{}. Check it directly: `smtptap probe {host}{expect}` connects to \
             the server itself and checks names, trust and expiry; `openssl s_client \
             -starttls smtp -tls1_2 -connect {host}:25` shows the chain over TLS 1.2.",
            if probe_failed {
                " (and smtptap's side-probe, which reads it on a connection of its own, failed)"
            } else {
                " (turn on tls.side_probe to have smtptap read it on a connection of its own)"
            }
        ),
    ))
}

/// The validity of one certificate, as `cert.info` states it.
#[derive(Clone, Copy)]
struct Validity {
    days_left: i64,
    expired: bool,
    not_yet_valid: bool,
}

/// Expiry, per certificate in a chain.
fn expiry(
    side: Side,
    index: usize,
    info: &CertInfo,
    state: Validity,
    ctx: &Context,
) -> Option<Finding> {
    let who = format!(
        "{side} certificate #{index} ({})",
        info.cn.as_deref().unwrap_or(&info.subject)
    );
    let days = state.days_left;
    let ev = vec![
        format!("{who}: valid {} to {}", info.not_before, info.not_after),
        format!(
            "SHA-1 thumbprint {} (the Thumbprint Exchange's Get-ExchangeCertificate shows)",
            info.sha1.to_ascii_uppercase()
        ),
    ];
    if state.expired {
        Some(Finding::new(
            ids::CERT_EXPIRED,
            Severity::Error,
            format!("The {who} expired {} day(s) ago", -days),
            ev,
            "Renew the certificate and bind the new one to the SMTP service (Exchange: \
             Enable-ExchangeCertificate -Thumbprint NEW -Services SMTP, then restart transport; \
             Postfix: replace smtpd_tls_chain_files and postfix reload).",
        ))
    } else if state.not_yet_valid {
        Some(Finding::new(
            ids::CERT_NOT_YET_VALID,
            Severity::Error,
            format!("The {who} is not valid yet"),
            ev,
            "Check the clock of the machine that issued it and of both servers; or wait until \
             its start date before binding it.",
        ))
    } else if days <= i64::from(ctx.expiry_warning_days) {
        Some(Finding::new(
            ids::CERT_EXPIRING,
            Severity::Warning,
            format!("The {who} expires in {days} day(s)"),
            ev,
            "Renew it now and bind the new certificate before the old one expires.",
        ))
    } else {
        None
    }
}

/// The verdict of a `cert.chain` that is not trusted.
#[derive(Clone, Copy)]
struct Untrusted<'a> {
    side: Side,
    error: &'a str,
    detail: Option<&'a str>,
    missing_intermediate: bool,
    chain_len: usize,
}

/// A chain that does not verify.
fn untrusted(v: &SessionView, ch: Untrusted) -> Option<Finding> {
    let role = ch.side;
    // A chain that fails only because a certificate it carries is expired
    // or not yet valid is already reported by cert.expired/not_yet_valid
    // (with dates and thumbprint); a second error would say it again.
    if matches!(ch.error, "expired" | "not_yet_valid") && has_invalid_dates(v, role) {
        return None;
    }
    let mut ev = Vec::new();
    if let Some(l) = v.leaf(role) {
        ev.push(format!(
            "{role} certificate: subject {}, issuer {}",
            l.subject, l.issuer
        ));
    }
    ev.push(format!(
        "verification: {}{}",
        ch.error,
        ch.detail.map(|d| format!(" ({d})")).unwrap_or_default()
    ));
    ev.push(format!("chain as sent: {} certificate(s)", ch.chain_len));
    let (id, title, advice) = untrusted_kind(ch);
    if ch.missing_intermediate && id != ids::CERT_MISSING_INTERMEDIATE {
        ev.push("the issuer is neither in the chain nor among the trust anchors: an intermediate may be missing".into());
    }
    Some(Finding::new(id, Severity::Error, title, ev, advice))
}

/// Whether a certificate `side` presented is expired or not yet valid.
fn has_invalid_dates(v: &SessionView, side: Side) -> bool {
    v.certs().any(|c| {
        matches!(c, CertEvent::Info { side: s, expired, not_yet_valid, .. }
            if *s == side && (*expired || *not_yet_valid))
    })
}

/// The finding id, title and advice for a verification failure.
fn untrusted_kind(ch: Untrusted) -> (&'static str, String, &'static str) {
    let role = ch.side;
    let kind = if ch.error == "unknown_issuer" && ch.missing_intermediate {
        "missing_intermediate"
    } else {
        ch.error
    };
    match kind {
        "self_signed" => (
            ids::CERT_SELF_SIGNED,
            format!("The {role}'s certificate is self-signed"),
            "A self-signed certificate is refused by senders that verify (Exchange Online, \
             forced-TLS connectors). Install a certificate from a public CA, or have the partner \
             explicitly trust this one (a private CA on both sides).",
        ),
        "missing_intermediate" => (
            ids::CERT_MISSING_INTERMEDIATE,
            format!("The {role} does not send the intermediate certificate(s) of its chain"),
            "Configure the server to send the full chain (leaf then intermediates): Postfix \
             smtpd_tls_chain_files with the intermediates; on Windows import the intermediate \
             into the Intermediate Certification Authorities store of the server.",
        ),
        "revoked" => (
            ids::CERT_REVOKED,
            format!("A certificate of the {role}'s chain is revoked by its CA"),
            "The CA revoked this certificate (the CRL lists its serial): verifying peers refuse it. \
             Install a new certificate and bind it to the SMTP service (Exchange: \
             Enable-ExchangeCertificate -Services SMTP; Postfix: smtpd_tls_chain_files).",
        ),
        "wrong_usage" => (
            ids::CERT_UNTRUSTED,
            format!("The {role}'s certificate is not valid for this use (extended key usage)"),
            "The certificate's Extended Key Usage lacks serverAuth (for a server) or clientAuth \
             (for a client certificate). Issue a certificate with the right usage.",
        ),
        "ca_used_as_leaf" => (
            ids::CERT_UNTRUSTED,
            format!("The {role} presents a CA certificate as its own certificate"),
            "A CA certificate (basicConstraints CA:TRUE) cannot identify a server. Bind the \
             server's own certificate, issued by that CA.",
        ),
        "expired" | "not_yet_valid" => (
            ids::CERT_UNTRUSTED,
            format!("The {role}'s certificate chain is not valid now"),
            "See the expiry findings: renew the expired certificate in the chain.",
        ),
        _ => (
            ids::CERT_UNTRUSTED,
            format!("The {role}'s certificate is not trusted by the configured trust store"),
            "If the issuer is a private CA, verifying peers need it as a trust anchor (smtptap: \
             --ca-file); otherwise install a certificate from a public CA. Senders that verify \
             certificates will refuse this server.",
        ),
    }
}

/// The names a certificate carries, for evidence.
fn names_of(c: &CertInfo) -> String {
    let mut n: Vec<String> = c.san_dns.iter().chain(&c.san_ip).cloned().collect();
    if n.is_empty() {
        if let Some(cn) = &c.cn {
            n.push(format!("CN={cn}"));
        }
    }
    if n.is_empty() {
        "(no names)".into()
    } else {
        n.join(", ")
    }
}

/// The names from `source` the certificate does not carry.
fn failed(checks: &[NameCheck], source: NameSource) -> Vec<String> {
    checks
        .iter()
        .filter(|c| c.source == source && !c.matched)
        .map(|c| c.name.clone())
        .collect()
}

/// The name checks of one leaf (`cert.names`).
fn names(v: &SessionView, side: Side, checks: &[NameCheck], out: &mut Vec<Finding>) {
    let presented = v
        .leaf(side)
        .map(names_of)
        .unwrap_or_else(|| "(unknown)".into());
    out.extend(name_mismatch(checks, &presented));
    out.extend(host_mismatch(checks, &presented));
    out.extend(announced_name_mismatch(side, checks, &presented));
}

/// None of the expected names is on the certificate.
fn name_mismatch(checks: &[NameCheck], presented: &str) -> Option<Finding> {
    let any_expected_matched = checks
        .iter()
        .any(|c| c.source == NameSource::Expected && c.matched);
    let exp = failed(checks, NameSource::Expected);
    if exp.is_empty() || any_expected_matched {
        return None;
    }
    Some(Finding::new(
        ids::CERT_NAME_MISMATCH,
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
    ))
}

/// The host name dialled is not on the certificate.
fn host_mismatch(checks: &[NameCheck], presented: &str) -> Option<Finding> {
    let up = failed(checks, NameSource::Upstream);
    if up.is_empty() {
        return None;
    }
    Some(Finding::new(
        ids::CERT_HOST_MISMATCH,
        Severity::Warning,
        format!(
            "The certificate does not match the host name dialled ({})",
            up.join(", ")
        ),
        vec![
            format!("dialled: {}", up.join(", ")),
            format!("presented: {presented}"),
        ],
        "Senders that verify the name (DANE, MTA-STS, verify policies) will refuse this \
         server. Install a certificate whose SANs include the MX host name, or point the MX \
         at a name the certificate carries.",
    ))
}

/// The name announced in the banner or EHLO is not on the certificate.
fn announced_name_mismatch(side: Side, checks: &[NameCheck], presented: &str) -> Option<Finding> {
    let mut announced = failed(checks, NameSource::Banner);
    announced.extend(failed(checks, NameSource::Ehlo));
    announced.sort();
    announced.dedup();
    if announced.is_empty() {
        return None;
    }
    let who = match side {
        Side::Client => "sending server",
        Side::Server => "server",
    };
    Some(Finding::new(
        ids::CERT_ANNOUNCED_NAME_MISMATCH,
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
         with that name.",
    ))
}

/// CRLs named by the certificates that could not be fetched.
fn crl_unavailable(v: &SessionView) -> Option<Finding> {
    let failed: Vec<String> = v
        .certs()
        .filter_map(|c| match c {
            CertEvent::Crl {
                url,
                ok: false,
                error,
                detail,
                ..
            } => Some(format!(
                "{url}: {}",
                detail.as_deref().or(error.as_deref()).unwrap_or("")
            )),
            _ => None,
        })
        .collect();
    if failed.is_empty() {
        return None;
    }
    Some(Finding::new(
        ids::CERT_CRL_UNAVAILABLE,
        Severity::Warning,
        format!(
            "{} CRL location(s) named by the certificates could not be fetched",
            failed.len()
        ),
        failed,
        "Exchange and Exchange Online do not trust a certificate whose CRL they cannot read. \
         Check that the CRL URL is reachable from the receiving servers (firewall, proxy, DNS) \
         and that the CA still publishes it. (smtptap fetched it from this machine.)",
    ))
}

/// The server's leaf names no CRL or OCSP location.
fn no_revocation_info(v: &SessionView) -> Option<Finding> {
    let l = v.server_leaf()?;
    if !l.crl_urls.is_empty() || !l.ocsp_urls.is_empty() || l.self_signed {
        return None;
    }
    Some(Finding::new(
        ids::CERT_NO_REVOCATION_INFO,
        Severity::Info,
        "The server's certificate names no CRL or OCSP location",
        vec![format!(
            "certificate {}: no CRL distribution point, no OCSP URL",
            l.subject
        )],
        "Exchange and Exchange Online refuse a certificate whose revocation status they \
         cannot check. Certificates from public CAs carry these URLs; a private CA should \
         publish a CRL reachable by the receiving servers.",
    ))
}
