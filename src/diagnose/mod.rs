//! The diagnosis: a pure function of one session's events that returns
//! findings — what went wrong, the evidence, and what to change.
//!
//! Every finding has a stable `id` ([`ids`], documented in
//! `docs/findings.md`), a severity, a one-line title, the evidence copied from
//! the events (the exact reply line, the presented and expected names, the
//! alert and who sent it) and advice in the troubleshooter's language. A clean
//! session yields no warning or error.
//!
//! The rules read the typed events through a [`SessionView`], which also feeds
//! the session summary. About certificates and the negotiated TLS parameters
//! the view answers for the real peers only, never for what smtptap itself
//! presented on an intercepted leg.
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | [`Severity`], [`Finding`], [`Context`], [`diagnose`] |
//! | `view.rs` | [`SessionView`]: typed questions about the events |
//! | `ids.rs` | every finding id, as a constant |
//! | `relay.rs` | `upstream.*`, `observer.lagged` |
//! | `smtp.rs` | `smtp.*` of the conversation, `starttls.*`, `tls.cleartext_fallback` |
//! | `tls.rs` | `tls.*` of the handshake |
//! | `cert.rs` | `cert.*` |
//! | `message.rs` | rejected messages and recipients |
//! | `intercept.rs` | `intercept.*`: intercept mode's fallback and its own handshakes |
//!
//! This module must not do I/O, read the clock, or depend on anything but
//! the events and the [`Context`].

mod cert;
pub mod ids;
mod intercept;
mod message;
mod relay;
mod smtp;
mod tls;
mod view;

use serde::{Deserialize, Serialize};

use crate::event::Event;

pub use view::{presented_by_peer, Capabilities, Hello, Negotiated, Ordered, Reply, SessionView};

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
    /// Stable identifier (`starttls.not_offered`, one of [`ids::ALL`]),
    /// documented in docs/findings.md.
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

impl Finding {
    /// A finding with this id (one of [`ids`]).
    pub fn new(
        id: &'static str,
        severity: Severity,
        title: impl Into<String>,
        evidence: Vec<String>,
        advice: impl Into<String>,
    ) -> Self {
        Finding {
            id: id.to_string(),
            severity,
            title: title.into(),
            evidence,
            advice: advice.into(),
        }
    }
}

/// Settings the diagnosis needs.
#[derive(Debug, Clone)]
pub struct Context {
    /// Warn when a certificate expires within this many days.
    pub expiry_warning_days: u32,
    /// The names the server's certificate was configured to carry
    /// (`tls.expect_names`, `--expect-name`, or the destination's).
    pub expected_names: Vec<String>,
    /// The host name dialled, when it is a name (not an IP address): the
    /// certificate is checked against it too.
    pub dialled_name: Option<String>,
    /// Whether chains are checked (trust, expiry): a trust store is loaded.
    pub checks_chains: bool,
}

impl Default for Context {
    fn default() -> Self {
        Context {
            expiry_warning_days: 30,
            expected_names: Vec::new(),
            dialled_name: None,
            checks_chains: true,
        }
    }
}

/// Diagnoses one session from its events (in order): findings most severe
/// first, in rule order within a severity.
pub fn diagnose(events: &[Event], ctx: &Context) -> Vec<Finding> {
    let v = SessionView::new(events);
    let mut out = Vec::new();
    relay::rules(&v, &mut out);
    smtp::rules(&v, &mut out);
    // The handshake's advice depends on whether the certificate findings
    // have anything to say.
    let mut certs = Vec::new();
    cert::rules(&v, ctx, &mut certs);
    tls::rules(&v, &certs, &mut out);
    out.extend(certs);
    message::rules(&v, &mut out);
    intercept::rules(&v, &mut out);
    // smtptap's own failed handshake says it better than the generic one.
    if out
        .iter()
        .any(|f| f.id.starts_with("intercept.") && f.severity == Severity::Error)
    {
        out.retain(|f| f.id != ids::TLS_HANDSHAKE_FAILED);
    }
    out.sort_by_key(|f| std::cmp::Reverse(f.severity));
    out
}

#[cfg(test)]
mod tests;
