//! The session summary: totals and outcome of one session, derived from its
//! events (a pure function), written as the `session.summary` event.
//!
//! It reads the events through the diagnosis's typed
//! [`SessionView`], so the summary and the
//! findings agree on every fact (which certificate is the server's, what was
//! negotiated). This module must not do I/O.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::diagnose::{Finding, SessionView};
use crate::event::{Event, SessionEvent};
use crate::session::SessionInfo;
use crate::smtp::SmtpEvent;
use crate::tls::TlsEvent;

/// At most this many entries in the summary's `mail_from` and `rcpt_to`.
pub const MAX_ENVELOPE: usize = 100;

/// Totals known only to the relay.
#[derive(Debug, Clone)]
pub struct Totals {
    /// Seconds from accept to close.
    pub duration_s: f64,
    /// Bytes sent by the client.
    pub client_bytes: u64,
    /// Bytes sent by the server.
    pub server_bytes: u64,
    /// Why the session ended (as in `session.close`).
    pub close_reason: String,
    /// Events logged but not kept for the diagnosis.
    pub events_not_kept: u64,
    /// Counted over every event, kept or not.
    pub counts: Counts,
}

/// What the summary counts over all of a session's events (not only those
/// kept for the diagnosis, so a long session's figures stay exact).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// `smtp.command` events.
    pub commands: u64,
    /// `smtp.message` events with `accepted`.
    pub messages_accepted: u64,
    /// `smtp.message` events without.
    pub messages_rejected: u64,
    /// The last `smtp.reply` or `smtp.banner`, as `code [enhanced] text`.
    pub last_reply: Option<String>,
}

/// The `session.summary` event's fields (log schema v1: addresses also come
/// as separate `*_ip` / `*_port`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionSummary {
    /// The client's address.
    pub client: SocketAddr,
    /// The client's IP (as in `client`, for filtering).
    pub client_ip: IpAddr,
    /// The configured upstream.
    pub upstream: String,
    /// The upstream address connected to, if any.
    pub upstream_addr: Option<SocketAddr>,
    /// The upstream's IP (as in `upstream_addr`), if connected.
    pub server_ip: Option<IpAddr>,
    /// The upstream's port (as in `upstream_addr`), if connected.
    pub server_port: Option<u16>,
    /// Seconds from accept to close.
    pub duration_s: f64,
    /// Bytes sent by the client.
    pub client_bytes: u64,
    /// Bytes sent by the server.
    pub server_bytes: u64,
    /// Why the session ended.
    pub close_reason: String,
    /// SMTP commands the client sent.
    pub commands: u64,
    /// Messages the server accepted (250 to the end of DATA / BDAT LAST).
    pub messages_accepted: u64,
    /// Messages the server refused.
    pub messages_rejected: u64,
    /// The banner line.
    pub banner: Option<String>,
    /// The client's HELO/EHLO name.
    pub helo: Option<String>,
    /// The distinct reverse-paths (MAIL FROM, `""` for the null path `<>`)
    /// of the session's messages (`smtp.message`), in order of first
    /// appearance, at most [`MAX_ENVELOPE`]. Drawn from the events kept for
    /// the diagnosis (all of them unless `events_not_kept` > 0).
    #[serde(default)]
    pub mail_from: Vec<String>,
    /// The distinct recipients the server accepted for the session's
    /// messages (`smtp.message` `rcpt_to`), in order of first appearance, at
    /// most [`MAX_ENVELOPE`]; kept events only, as `mail_from`.
    #[serde(default)]
    pub rcpt_to: Vec<String>,
    /// Whether the server offered STARTTLS in cleartext (null: no EHLO reply seen).
    pub starttls_offered: Option<bool>,
    /// Whether the client sent STARTTLS.
    pub starttls_attempted: bool,
    /// Whether the server accepted it (220) — or the session was implicit TLS.
    pub starttls_accepted: bool,
    /// Whether the session was TLS from the first byte (SMTPS): configured
    /// (`implicit_tls`) or detected (the client's first bytes were TLS and the
    /// server answered in TLS).
    pub implicit_tls: bool,
    /// Whether the TLS handshake completed and data flowed.
    pub tls_established: bool,
    /// The negotiated TLS version.
    pub tls_version: Option<String>,
    /// The negotiated cipher suite.
    pub tls_cipher: Option<String>,
    /// The SNI the client sent.
    pub sni: Option<String>,
    /// The server certificate's subject (leaf), when seen.
    pub server_certificate: Option<String>,
    /// The last reply of the server (`code text`).
    pub last_reply: Option<String>,
    /// `complete`, `desync` (an observer stopped) or `lagged` (the analysis fell behind).
    pub observation: String,
    /// Findings of the diagnosis, most severe first.
    pub findings: Vec<Finding>,
    /// Events logged but not kept for the diagnosis (very long sessions).
    pub events_not_kept: u64,
}

/// Builds the summary from the session's events and the relay's totals.
pub fn summarize(
    info: &SessionInfo,
    upstream_addr: Option<SocketAddr>,
    events: &[Event],
    totals: Totals,
    mut findings: Vec<Finding>,
) -> SessionSummary {
    findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    let v = SessionView::new(events);
    let negotiated = v.negotiated();
    let (mail_from, rcpt_to) = envelope(&v);
    SessionSummary {
        commands: totals.counts.commands,
        messages_accepted: totals.counts.messages_accepted,
        messages_rejected: totals.counts.messages_rejected,
        banner: v.banner().map(|b| b.line()),
        helo: v.hello().map(|h| format!("{} {}", h.verb, h.name)),
        mail_from,
        rcpt_to,
        starttls_offered: v.starttls_offered(),
        starttls_attempted: v.starttls_attempted(),
        starttls_accepted: v.tls_started(),
        implicit_tls: v.implicit_tls(),
        tls_established: v.tls_established(),
        tls_version: negotiated.map(|n| n.version.to_string()),
        tls_cipher: negotiated.map(|n| n.cipher_suite.to_string()),
        sni: v.client_hello().and_then(|ch| ch.sni.clone()),
        server_certificate: v.server_leaf().map(|l| l.subject.clone()),
        last_reply: totals.counts.last_reply.clone(),
        observation: observation(&v).into(),
        client: info.client,
        client_ip: info.client.ip(),
        upstream: info.upstream.to_string(),
        upstream_addr,
        server_ip: upstream_addr.map(|a| a.ip()),
        server_port: upstream_addr.map(|a| a.port()),
        duration_s: totals.duration_s,
        client_bytes: totals.client_bytes,
        server_bytes: totals.server_bytes,
        close_reason: totals.close_reason,
        findings,
        events_not_kept: totals.events_not_kept,
    }
}

/// `lagged` (the analysis fell behind), `desync` (an observer stopped) or `complete`.
fn observation(v: &SessionView) -> &'static str {
    if v.session()
        .any(|e| matches!(e, SessionEvent::ObserverLagged { .. }))
    {
        "lagged"
    } else if v.smtp().any(|e| matches!(e, SmtpEvent::Desync { .. }))
        || v.tls().any(|t| matches!(t, TlsEvent::Desync { .. }))
    {
        "desync"
    } else {
        "complete"
    }
}

/// The distinct reverse-paths and accepted recipients of the session's
/// messages, in order of first appearance, each bounded by [`MAX_ENVELOPE`].
fn envelope(v: &SessionView) -> (Vec<String>, Vec<String>) {
    fn add(list: &mut Vec<String>, item: &str) {
        if list.len() < MAX_ENVELOPE && !list.iter().any(|x| x == item) {
            list.push(item.to_string());
        }
    }
    let mut from = Vec::new();
    let mut to = Vec::new();
    for e in v.smtp() {
        if let SmtpEvent::Message {
            mail_from, rcpt_to, ..
        } = e
        {
            if let Some(m) = mail_from {
                add(&mut from, m);
            }
            for r in rcpt_to {
                add(&mut to, r);
            }
        }
    }
    (from, to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::{CertEvent, CertInfo};
    use crate::config::Upstream;
    use crate::event::{EventKind, Leg, Side, Timestamp};

    fn info() -> SessionInfo {
        SessionInfo {
            id: 1,
            client: "[2001:db8::7]:40312".parse().unwrap(),
            listener: "127.0.0.1:2525".parse().unwrap(),
            upstream: Upstream {
                host: "mx.example.test".into(),
                port: 25,
            },
            opened: Timestamp::now(),
            implicit_tls: false,
        }
    }

    fn totals() -> Totals {
        Totals {
            duration_s: 0.5,
            client_bytes: 10,
            server_bytes: 20,
            close_reason: "completed".into(),
            events_not_kept: 0,
            counts: Counts::default(),
        }
    }

    fn ev(kind: impl Into<EventKind>) -> Event {
        Event::new(Timestamp::now(), 1, kind)
    }

    fn message(from: Option<&str>, to: &[&str]) -> Event {
        ev(SmtpEvent::Message {
            via: "DATA".into(),
            size: 1,
            accepted: true,
            code: 250,
            enhanced: None,
            text: "ok".into(),
            mail_from: from.map(String::from),
            rcpt_to: to.iter().map(|s| s.to_string()).collect(),
            rcpt_count: to.len() as u64,
        })
    }

    #[test]
    fn addresses_come_apart_into_ip_and_port() {
        let up: SocketAddr = "192.0.2.25:25".parse().unwrap();
        let s = summarize(&info(), Some(up), &[], totals(), vec![]);
        assert_eq!(s.client_ip, "2001:db8::7".parse::<IpAddr>().unwrap());
        assert_eq!(s.server_ip, Some("192.0.2.25".parse().unwrap()));
        assert_eq!(s.server_port, Some(25));
        let s = summarize(&info(), None, &[], totals(), vec![]);
        assert_eq!((s.server_ip, s.server_port), (None, None));
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["client_ip"], "2001:db8::7");
        assert!(json["server_ip"].is_null() && json["server_port"].is_null());
    }

    #[test]
    fn the_envelope_is_distinct_in_order_and_bounded() {
        let mut events = vec![
            message(
                Some("a@example.test"),
                &["x@example.test", "y@example.test"],
            ),
            message(Some(""), &["y@example.test"]),
            message(Some("a@example.test"), &["z@example.test"]),
            message(None, &[]),
        ];
        let s = summarize(&info(), None, &events, totals(), vec![]);
        assert_eq!(s.mail_from, ["a@example.test", ""]);
        assert_eq!(
            s.rcpt_to,
            ["x@example.test", "y@example.test", "z@example.test"]
        );
        let many: Vec<String> = (0..150).map(|i| format!("r{i}@example.test")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        events.push(message(Some("b@example.test"), &many));
        let s = summarize(&info(), None, &events, totals(), vec![]);
        assert_eq!(s.rcpt_to.len(), MAX_ENVELOPE);
        assert_eq!(s.rcpt_to[3], "r0@example.test");
    }

    fn leaf(cn: &str) -> Box<CertInfo> {
        Box::new(CertInfo {
            subject: format!("CN={cn}"),
            cn: Some(cn.into()),
            san_dns: vec![cn.into()],
            san_ip: vec![],
            issuer: "CN=CA".into(),
            serial: "01".into(),
            not_before: "2020-01-01T00:00:00Z".into(),
            not_after: "2040-01-01T00:00:00Z".into(),
            key_type: "EC".into(),
            key_bits: 256,
            curve: None,
            signature_algorithm: "ecdsa-with-SHA256".into(),
            sha256: String::new(),
            sha1: String::new(),
            is_ca: false,
            path_len: None,
            eku: vec![],
            crl_urls: vec![],
            ocsp_urls: vec![],
            ca_issuer_urls: vec![],
            self_signed: false,
            version: 3,
        })
    }

    #[test]
    fn the_server_certificate_is_the_one_the_server_presented() {
        let cert = |cn: &str, leg| {
            ev(CertEvent::Info {
                side: Side::Server,
                index: 0,
                info: leaf(cn),
                days_left: 1000,
                expiring: false,
                expired: false,
                not_yet_valid: false,
            })
            .on_leg(Some(leg))
        };
        let events = vec![
            cert("minted.by.smtptap", Leg::ClientProxy),
            cert("mx.example.test", Leg::ProxyServer),
        ];
        let s = summarize(&info(), None, &events, totals(), vec![]);
        assert_eq!(s.server_certificate.as_deref(), Some("CN=mx.example.test"));
    }
}
