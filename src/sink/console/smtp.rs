//! SMTP lines: the conversation itself (`->` commands, `<-` replies) and the
//! facts the observer adds (STARTTLS offered or refused, bodies, messages).

use super::LineKind::{Client, Fact, Problem, Server};
use super::Lines;
use crate::event::Side;
use crate::smtp::SmtpEvent;

/// Recipients listed on a message line; the rest are counted.
const RCPTS_SHOWN: usize = 10;

pub(super) fn render(e: &SmtpEvent) -> Lines {
    match e {
        SmtpEvent::Banner {
            code, text, lines, ..
        } => {
            if lines.is_empty() {
                vec![(Server, format!("{code} {text}"))]
            } else {
                server_lines(lines)
            }
        }
        SmtpEvent::Reply { lines, .. } => server_lines(lines),
        // The reply lines also come as `smtp.reply`; only the fact here.
        SmtpEvent::Capabilities { starttls, .. } => vec![if *starttls {
            (Fact, "STARTTLS offered".into())
        } else {
            (Problem, "STARTTLS not offered in the EHLO reply".into())
        }],
        SmtpEvent::StartTls {
            accepted: false,
            code,
            text,
            ..
        } => vec![(Problem, format!("STARTTLS refused: {code} {text}"))],
        // Already on the screen: the 220 as `smtp.reply`, the EHLO and BDAT
        // lines as `smtp.command`.
        SmtpEvent::StartTls { .. } | SmtpEvent::Ehlo { .. } | SmtpEvent::Bdat { .. } => Vec::new(),
        SmtpEvent::Command { verb, arg, .. } => vec![(
            Client,
            if arg.is_empty() {
                verb.clone()
            } else {
                format!("{verb} {arg}")
            },
        )],
        SmtpEvent::AuthData {
            side: Side::Client,
            bytes,
            cancel,
        } => vec![(
            Client,
            if *cancel {
                "*   (the client cancelled AUTH)".to_string()
            } else {
                format!("[SASL response, {bytes} bytes, redacted]")
            },
        )],
        // The server's 334 is on the screen as `smtp.reply`.
        SmtpEvent::AuthData { .. } => Vec::new(),
        SmtpEvent::Auth { mechanism, .. } => vec![(
            Fact,
            format!("AUTH {mechanism} (credentials are never logged)"),
        )],
        SmtpEvent::Data {
            bytes,
            lines,
            bare_lf,
        } => vec![(
            Fact,
            format!(
                "message body: {bytes} bytes, {lines} lines (content not logged){}",
                if *bare_lf {
                    "; contains bare LF line ends"
                } else {
                    ""
                }
            ),
        )],
        SmtpEvent::Message { .. } => message(e),
        SmtpEvent::BareLf { side, .. } => vec![(
            Problem,
            format!("the {side} uses bare LF line ends (not CRLF)"),
        )],
        SmtpEvent::Masked { what, sample, .. } => vec![(
            Problem,
            format!("{what} masked by a middlebox (firewall SMTP inspection?): {sample:?}"),
        )],
        SmtpEvent::Desync {
            side,
            reason,
            offset,
        } => vec![super::desync("SMTP", *side, *offset, reason)],
    }
}

fn server_lines(lines: &[String]) -> Lines {
    lines.iter().map(|l| (Server, l.clone())).collect()
}

/// `message accepted from <a@x> to <b@y> (16 bytes via DATA): 250 2.0.0 Ok`.
fn message(e: &SmtpEvent) -> Lines {
    let SmtpEvent::Message {
        via,
        size,
        accepted,
        code,
        text,
        mail_from,
        rcpt_to,
        rcpt_count,
        ..
    } = e
    else {
        return Vec::new();
    };
    let (kind, verdict) = if *accepted {
        (Fact, "accepted")
    } else {
        (Problem, "rejected")
    };
    let envelope = envelope(mail_from.as_deref(), rcpt_to, *rcpt_count);
    vec![(
        kind,
        format!("message {verdict}{envelope} ({size} bytes via {via}): {code} {text}"),
    )]
}

/// ` from <a@x> to 2 recipients: <b@y>, <c@y>` (`<>` is the null
/// reverse-path); empty when the observer did not see the transaction.
fn envelope(mail_from: Option<&str>, rcpt_to: &[String], rcpt_count: u64) -> String {
    let mut t = String::new();
    if let Some(from) = mail_from {
        t.push_str(&format!(" from <{from}>"));
    }
    let listed: Vec<String> = rcpt_to
        .iter()
        .take(RCPTS_SHOWN)
        .map(|r| format!("<{r}>"))
        .collect();
    let more = rcpt_count.saturating_sub(listed.len() as u64);
    match (rcpt_count, listed.as_slice()) {
        (0, _) => {}
        (1, [one]) => t.push_str(&format!(" to {one}")),
        (n, []) => t.push_str(&format!(" to {n} recipient(s)")),
        (n, _) => {
            t.push_str(&format!(" to {n} recipients: {}", listed.join(", ")));
            if more > 0 {
                t.push_str(&format!(" and {more} more"));
            }
        }
    }
    t
}
