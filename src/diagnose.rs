//! The diagnosis: a pure function of one session's events that returns
//! findings — what went wrong, the evidence, and what to change.
//!
//! Every finding has a stable `id` (documented in `docs/findings.md`), a
//! severity, a one-line title, the evidence copied from the events (the exact
//! reply line, the presented and expected names, the alert and who sent it)
//! and advice in the troubleshooter's language. A clean session yields no
//! warning or error. This module must not do I/O.

use serde::{Deserialize, Serialize};

use crate::event::{Event, EventKind, SessionEvent};

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

fn finding(
    id: &str,
    severity: Severity,
    title: String,
    evidence: Vec<String>,
    advice: &str,
) -> Finding {
    Finding {
        id: id.to_string(),
        severity,
        title,
        evidence,
        advice: advice.to_string(),
    }
}

/// Diagnoses one session from its events (in order).
pub fn diagnose(events: &[Event], _ctx: &Context) -> Vec<Finding> {
    let mut out = Vec::new();
    for e in events {
        match &e.kind {
            EventKind::Session(SessionEvent::UpstreamFailed {
                upstream,
                error,
                tried,
                action,
                reply,
                ..
            }) => {
                let mut ev = vec![format!("upstream {upstream}: {error}")];
                ev.extend(tried.iter().map(|t| format!("tried {t}")));
                if let Some(r) = reply {
                    ev.push(format!("told the client: {r}"));
                } else {
                    ev.push(format!(
                        "action: {action} (connection closed without a reply)"
                    ));
                }
                out.push(finding(
                    "upstream.unreachable",
                    Severity::Error,
                    format!("smtptap could not reach the upstream server {upstream}"),
                    ev,
                    "Check the upstream address and port in the configuration, DNS for its host name, and that a firewall lets this machine reach it on that port (try: nc -vz HOST PORT from this machine).",
                ));
            }
            EventKind::Session(SessionEvent::ObserverLagged {
                side,
                bytes_not_analysed,
                ..
            }) => {
                out.push(finding(
                    "observer.lagged",
                    Severity::Warning,
                    "Part of this session was relayed but not analysed".into(),
                    vec![format!("{bytes_not_analysed} bytes not analysed, starting with bytes from the {side}")],
                    "The analysis could not keep up (machine overloaded, or a very slow log disk). Mail was not affected. Raise limits.observer_queue, log to a faster disk, or lower limits.max_sessions.",
                ));
            }
            _ => {}
        }
    }
    out
}
