//! The `session.summary` lines: one line of totals and outcome, the last
//! reply, then each finding with its evidence and advice.

use super::LineKind::{self, Fact, Problem};
use super::Lines;
use crate::diagnose::{ids, Finding, Severity};
use crate::summary::SessionSummary;

pub(super) fn render(s: &SessionSummary) -> Lines {
    let mut out = vec![(Fact, format!("summary: {}", headline(s).join("; ")))];
    if let Some(r) = &s.last_reply {
        let note = if s.starttls_accepted {
            " (the last one in cleartext)"
        } else {
            ""
        };
        out.push((Fact, format!("last reply{note}: {r}")));
    }
    if s.findings.is_empty() {
        out.push((Fact, "diagnosis: no problem found".into()));
    }
    for f in &s.findings {
        finding(f, &mut out);
    }
    out
}

/// Duration; messages; STARTTLS and TLS; bytes.
fn headline(s: &SessionSummary) -> Vec<String> {
    let mut parts = vec![format!("{:.3} s", s.duration_s)];
    // The handshake completed but the client left without a command: neither
    // a plain "established" nor "messages not visible" is true.
    let gave_up = s
        .findings
        .iter()
        .any(|f| f.id == ids::TLS_CLIENT_CLOSED_AFTER_HANDSHAKE);
    parts.push(if gave_up {
        "no message (the client closed right after the TLS handshake)".to_string()
    } else if s.tls_established && s.messages_accepted == 0 && s.messages_rejected == 0 {
        if s.implicit_tls {
            "messages not visible (SMTP is encrypted from the first byte)".to_string()
        } else {
            "messages not visible (SMTP is encrypted after STARTTLS)".to_string()
        }
    } else {
        format!(
            "{} message(s) accepted, {} rejected",
            s.messages_accepted, s.messages_rejected
        )
    });
    let flags: Vec<(&str, Option<bool>)> = if s.implicit_tls {
        parts.push("implicit TLS (SMTPS)".to_string());
        vec![("TLS established", Some(s.tls_established))]
    } else {
        vec![
            ("STARTTLS offered", s.starttls_offered),
            ("attempted", Some(s.starttls_attempted)),
            ("accepted", Some(s.starttls_accepted)),
            ("TLS established", Some(s.tls_established)),
        ]
    };
    for (label, x) in flags {
        if label == "TLS established" && gave_up {
            parts.push(format!(
                "{label}: handshake completed, then the client closed without a command"
            ));
        } else if let Some(x) = x {
            parts.push(format!("{label}: {}", if x { "yes" } else { "no" }));
        }
    }
    if let Some(t) = &s.tls_version {
        parts.push(format!("{t} {}", s.tls_cipher.as_deref().unwrap_or("")));
    }
    parts.push(format!(
        "{} bytes from client, {} from server",
        s.client_bytes, s.server_bytes
    ));
    parts
}

fn finding(f: &Finding, out: &mut Lines) {
    let (kind, sev): (LineKind, &str) = match f.severity {
        Severity::Info => (Fact, "info"),
        Severity::Warning => (Problem, "warning"),
        Severity::Error => (Problem, "error"),
    };
    out.push((kind, format!("[{sev}] {} ({})", f.title, f.id)));
    for e in &f.evidence {
        out.push((kind, format!("    evidence: {e}")));
    }
    out.push((kind, format!("    what to change: {}", f.advice)));
}
