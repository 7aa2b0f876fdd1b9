//! Message findings: the server refused a message (at the end of DATA or
//! BDAT LAST) or recipients. Not TLS problems, but what the sender sees.

use super::{ids, Finding, Reply, SessionView, Severity};
use crate::smtp::SmtpEvent;

pub(super) fn rules(v: &SessionView, out: &mut Vec<Finding>) {
    message_rejected(v, out);
    out.extend(recipient_rejected(v));
}

/// One finding per refused message.
fn message_rejected(v: &SessionView, out: &mut Vec<Finding>) {
    let tls = v.tls_established();
    for m in v.smtp() {
        let SmtpEvent::Message {
            size,
            accepted: false,
            code,
            enhanced,
            text,
            ..
        } = m
        else {
            continue;
        };
        let line = Reply::new(*code, enhanced, text).line();
        let (id, title) = if tls {
            (
                ids::SMTP_REJECTED_AFTER_TLS,
                "The server rejected the message after TLS was established",
            )
        } else {
            (
                ids::SMTP_MESSAGE_REJECTED,
                "The server rejected the message",
            )
        };
        out.push(Finding::new(
            id,
            Severity::Error,
            title,
            vec![format!("server: {line}"), format!("size: {size} bytes")],
            "TLS worked; the rejection is about the message or the sender (read the reply: \
             policy, size, recipient, authentication). A 4xx is temporary and will be retried.",
        ));
    }
}

/// RCPT TO answered with 4xx/5xx (one finding for all).
fn recipient_rejected(v: &SessionView) -> Option<Finding> {
    let rejected: Vec<String> = v
        .replies()
        .filter_map(|(r, command)| {
            let cmd = command.unwrap_or("");
            (cmd.to_ascii_uppercase().starts_with("RCPT") && r.code >= 400)
                .then(|| format!("{cmd} -> {}", r.line()))
        })
        .collect();
    if rejected.is_empty() {
        return None;
    }
    Some(Finding::new(
        ids::SMTP_RECIPIENT_REJECTED,
        Severity::Warning,
        format!("The server rejected {} recipient(s)", rejected.len()),
        rejected,
        "Not a TLS problem: check the recipient addresses and the receiving server's recipient \
         policy (the reply text says why).",
    ))
}
