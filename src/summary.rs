//! The session summary: totals and outcome of one session, derived from its
//! events (a pure function), written as the `session.summary` event.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use serde_json::Value;

use crate::diagnose::{reply_line, Finding, SessionView};
use crate::event::Event;
use crate::session::SessionInfo;

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

/// The `session.summary` event's fields.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionSummary {
    /// The client's address.
    pub client: SocketAddr,
    /// The configured upstream.
    pub upstream: String,
    /// The upstream address connected to, if any.
    pub upstream_addr: Option<SocketAddr>,
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
    let str_of = |e: Option<&Value>, k: &str| {
        e.and_then(|e| e.get(k))
            .and_then(Value::as_str)
            .map(String::from)
    };
    let observation = if v.has("observer.lagged") {
        "lagged"
    } else if v.has("smtp.desync") || v.has("tls.desync") {
        "desync"
    } else {
        "complete"
    };
    SessionSummary {
        commands: totals.counts.commands,
        messages_accepted: totals.counts.messages_accepted,
        messages_rejected: totals.counts.messages_rejected,
        banner: v.first("smtp.banner").map(reply_line),
        helo: v.hello().map(|h| {
            format!(
                "{} {}",
                h.get("verb").and_then(Value::as_str).unwrap_or(""),
                h.get("name").and_then(Value::as_str).unwrap_or("")
            )
        }),
        starttls_offered: v.starttls_offered(),
        starttls_attempted: v.starttls_attempted(),
        starttls_accepted: v.tls_started(),
        implicit_tls: v.implicit_tls(),
        tls_established: v.tls_established(),
        tls_version: negotiated.as_ref().map(|n| n.0.clone()),
        tls_cipher: negotiated.map(|n| n.1),
        sni: str_of(v.first("tls.client_hello"), "sni"),
        server_certificate: str_of(v.server_leaf(), "subject"),
        last_reply: totals.counts.last_reply.clone(),
        observation: observation.into(),
        client: info.client,
        upstream: info.upstream.to_string(),
        upstream_addr,
        duration_s: totals.duration_s,
        client_bytes: totals.client_bytes,
        server_bytes: totals.server_bytes,
        close_reason: totals.close_reason,
        findings,
        events_not_kept: totals.events_not_kept,
    }
}
