//! Certificate lines: each certificate's fields, the trust verdict, CRLs and
//! the name checks.

use super::LineKind::{Fact, Problem};
use super::Lines;
use crate::cert::{CertEvent, CertInfo, NameCheck, NameSource};
use crate::event::Side;

pub(super) fn render(e: &CertEvent) -> Lines {
    match e {
        CertEvent::Info {
            side,
            index,
            info,
            days_left,
            expired,
            not_yet_valid,
            ..
        } => cert_info(*side, *index, info, *days_left, *expired || *not_yet_valid),
        CertEvent::ParseError {
            side,
            index,
            reason,
        } => vec![(
            Problem,
            format!("{side} certificate #{index} cannot be parsed: {reason}"),
        )],
        CertEvent::Chain {
            side,
            trusted: true,
            anchor,
            ..
        } => vec![(
            Fact,
            format!(
                "{side} chain trusted (anchor {})",
                anchor.as_deref().unwrap_or("")
            ),
        )],
        CertEvent::Chain {
            side,
            error,
            detail,
            ..
        } => vec![(
            Problem,
            format!(
                "{side} chain NOT trusted: {}{}",
                error.as_deref().unwrap_or(""),
                detail
                    .as_ref()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default()
            ),
        )],
        CertEvent::Crl {
            side,
            url,
            ok: true,
            bytes,
            ..
        } => vec![(
            Fact,
            format!("CRL for the {side} chain: {url} ({bytes} bytes)"),
        )],
        CertEvent::Crl {
            side,
            url,
            error,
            detail,
            ..
        } => vec![(
            Problem,
            format!(
                "CRL for the {side} chain could not be obtained: {url}: {}",
                detail.as_deref().or(error.as_deref()).unwrap_or("")
            ),
        )],
        CertEvent::Names { checks, .. } => checks.iter().map(name_check).collect(),
    }
}

fn cert_info(side: Side, index: usize, c: &CertInfo, days_left: i64, invalid_now: bool) -> Lines {
    let mut names = c.san_dns.clone();
    names.extend(c.san_ip.iter().cloned());
    let names = if names.is_empty() {
        "(no SAN)".to_string()
    } else {
        names.join(", ")
    };
    vec![
        (Fact, format!("{side} certificate #{index}: {}", c.subject)),
        (Fact, format!("    names: {names}")),
        (Fact, format!("    issuer: {}", c.issuer)),
        (
            if invalid_now { Problem } else { Fact },
            format!(
                "    valid {} to {} ({days_left} days left)",
                c.not_before, c.not_after
            ),
        ),
        // Upper-cased, the SHA-1 is the Thumbprint Exchange's
        // Get-ExchangeCertificate shows: the one to compare with.
        (
            Fact,
            format!(
                "    key {} {} bits, {}; SHA-1 thumbprint {}",
                c.key_type,
                c.key_bits,
                c.signature_algorithm,
                c.sha1.to_ascii_uppercase()
            ),
        ),
    ]
}

fn name_check(c: &NameCheck) -> (super::LineKind, String) {
    let source = match c.source {
        NameSource::Expected => "expected",
        NameSource::Upstream => "upstream",
        NameSource::Banner => "banner",
        NameSource::Ehlo => "ehlo",
        NameSource::Sni => "sni",
    };
    if c.matched {
        (
            Fact,
            format!(
                "name {} ({source}): matches {}",
                c.name,
                c.by.as_deref().unwrap_or("")
            ),
        )
    } else {
        (
            Problem,
            format!("name {} ({source}): NOT on the certificate", c.name),
        )
    }
}
