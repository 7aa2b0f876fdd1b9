//! The session summary: totals and outcome of one session, derived from its
//! events (a pure function), written as the `session.summary` event.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::diagnose::Finding;
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
    /// Findings of the diagnosis, most severe first.
    pub findings: Vec<Finding>,
    /// Events logged but not kept for the diagnosis (very long sessions).
    pub events_not_kept: u64,
}

/// Builds the summary from the session's events and the relay's totals.
pub fn summarize(
    info: &SessionInfo,
    upstream_addr: Option<SocketAddr>,
    _events: &[Event],
    totals: Totals,
    mut findings: Vec<Finding>,
) -> SessionSummary {
    findings.sort_by(|a, b| b.severity.cmp(&a.severity));
    SessionSummary {
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
