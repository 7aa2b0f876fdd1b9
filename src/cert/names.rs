//! RFC 6125 name checks: does a certificate cover the names we expected?
//!
//! This module owns matching expected host names (configured, dialled,
//! announced in the banner or EHLO, sent as SNI) against a certificate's DNS
//! SANs, IP SANs and — only when there is no DNS SAN at all — its CN. It must
//! not decide trust, and is deliberately stricter than some MTAs: partial
//! wildcards (`f*o.example.com`) are not honoured.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::info::CertInfo;

/// Where an expected name comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NameSource {
    /// Configured `expect_names`.
    Expected,
    /// The host name dialled upstream.
    Upstream,
    /// Announced in the server's 220 banner.
    Banner,
    /// In an EHLO exchange: for a server chain, the host name in the server's
    /// EHLO reply; for a client chain, the name the client gave in its EHLO.
    Ehlo,
    /// Sent by the client as SNI.
    Sni,
}

/// The outcome of checking one expected name against a certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameCheck {
    /// Where the name came from.
    pub source: NameSource,
    /// The name checked, as given.
    pub name: String,
    /// Whether the certificate covers it.
    pub matched: bool,
    /// What matched: `"DNS:*.example.com"`, `"IP:192.0.2.1"` or `"CN:mail.example.com"`.
    pub by: Option<String>,
}

/// RFC 6125 §6.4 DNS name matching of a presented identifier `pattern`
/// against a reference identifier `name`.
///
/// Case-insensitive; one trailing dot on either side ignored; a wildcard is
/// honoured only as the whole left-most label (`*.example.com`), matches
/// exactly one non-empty label, and never directly under a single label
/// (`*.com` matches nothing). Partial wildcards (`f*o.example.com`,
/// `*oo.example.com`) match nothing. IDN names are compared as A-labels, as is.
pub fn name_matches(pattern: &str, name: &str) -> bool {
    let pattern = normalize(pattern);
    let name = normalize(name);
    if pattern.is_empty() || name.is_empty() || name.contains('*') {
        return false;
    }
    if name.split('.').any(str::is_empty) || pattern.split('.').any(str::is_empty) {
        return false;
    }
    match pattern.strip_prefix("*.") {
        None => !pattern.contains('*') && pattern == name,
        Some(parent) => {
            if parent.contains('*') || !parent.contains('.') {
                return false;
            }
            match name.split_once('.') {
                Some((label, rest)) => !label.is_empty() && rest == parent,
                None => false,
            }
        }
    }
}

fn normalize(s: &str) -> String {
    let s = s.strip_suffix('.').unwrap_or(s);
    s.to_ascii_lowercase()
}

fn parse_ip(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    let s = s
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(s);
    s.parse().ok()
}

/// Checks each expected name against `info`.
pub fn check_names(info: &CertInfo, names: &[(NameSource, String)]) -> Vec<NameCheck> {
    names
        .iter()
        .map(|(source, name)| {
            let by = match parse_ip(name) {
                Some(ip) => info
                    .san_ip
                    .iter()
                    .find(|s| parse_ip(s) == Some(ip))
                    .map(|s| format!("IP:{s}")),
                None if !info.san_dns.is_empty() => info
                    .san_dns
                    .iter()
                    .find(|p| name_matches(p, name))
                    .map(|p| format!("DNS:{p}")),
                None => info
                    .cn
                    .as_ref()
                    .filter(|cn| name_matches(cn, name))
                    .map(|cn| format!("CN:{cn}")),
            };
            NameCheck {
                source: *source,
                name: name.clone(),
                matched: by.is_some(),
                by,
            }
        })
        .collect()
}
