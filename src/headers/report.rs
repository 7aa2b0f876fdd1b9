//! Output of `smtptap headers`: the console report (`===` facts, `***`
//! problems, in the project's style) and JSON lines (`headers.hop`,
//! `headers.context`, `headers.finding`, `headers.summary`, each carrying the
//! 1-based `message` index).
//!
//! This module owns formatting only; it must not analyse (that is `mod.rs`).

use std::io::{self, Write};

use serde::Serialize;

use super::stamps::TransportTls;
use super::{hop_path, Finding, HeadersReport, Hop, Severity, TlsContext};

/// One JSON line of `smtptap headers --json`.
#[derive(Debug, Serialize)]
#[serde(tag = "event")]
pub enum HeadersEvent<'a> {
    /// One hop, in transit order.
    #[serde(rename = "headers.hop")]
    Hop {
        /// 1-based index of the message in the input.
        message: usize,
        /// The hop.
        #[serde(flatten)]
        hop: &'a Hop,
    },
    /// A non-`Received:` header's statement about transport TLS.
    #[serde(rename = "headers.context")]
    Context {
        /// 1-based index of the message in the input.
        message: usize,
        /// The statement.
        #[serde(flatten)]
        context: &'a TlsContext,
    },
    /// One finding.
    #[serde(rename = "headers.finding")]
    Finding {
        /// 1-based index of the message in the input.
        message: usize,
        /// The finding.
        #[serde(flatten)]
        finding: &'a Finding,
    },
    /// The per-message summary.
    #[serde(rename = "headers.summary")]
    Summary {
        /// 1-based index of the message in the input.
        message: usize,
        /// `Subject:`, decoded.
        subject: Option<&'a str>,
        /// `Message-ID:`.
        message_id: Option<&'a str>,
        /// Number of hops.
        hops: usize,
        /// Hops with TLS.
        tls: usize,
        /// Hops without TLS.
        without_tls: usize,
        /// Hops inside one host or system.
        local: usize,
        /// Hops whose TLS is unknown.
        unknown: usize,
        /// The most severe finding (`info` when only clean facts).
        worst: Option<Severity>,
    },
}

/// Writes every report as JSON lines.
pub fn write_json(reports: &[HeadersReport], out: &mut dyn Write) -> io::Result<()> {
    for (i, r) in reports.iter().enumerate() {
        let message = i + 1;
        let mut line = |e: &HeadersEvent| -> io::Result<()> {
            let s = serde_json::to_string(e).map_err(io::Error::other)?;
            writeln!(out, "{s}")
        };
        for hop in &r.hops {
            line(&HeadersEvent::Hop { message, hop })?;
        }
        for context in &r.context {
            line(&HeadersEvent::Context { message, context })?;
        }
        for finding in &r.findings {
            line(&HeadersEvent::Finding { message, finding })?;
        }
        let (tls, none, local, unknown) = r.counts();
        line(&HeadersEvent::Summary {
            message,
            subject: r.subject.as_deref(),
            message_id: r.message_id.as_deref(),
            hops: r.hops.len(),
            tls,
            without_tls: none,
            local,
            unknown,
            worst: r.worst(),
        })?;
    }
    Ok(())
}

fn delay(secs: i64) -> String {
    let sign = if secs < 0 { "-" } else { "+" };
    let s = secs.unsigned_abs();
    if s < 60 {
        format!("{sign}{s}s")
    } else if s < 3600 {
        format!("{sign}{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{sign}{}h{:02}m{:02}s", s / 3600, (s % 3600) / 60, s % 60)
    }
}

/// Strips control characters so that header bytes cannot drive the terminal.
fn safe(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn tls_line(h: &Hop) -> String {
    let t = &h.tls;
    match t.state {
        TransportTls::Tls => {
            let mut parts = Vec::new();
            if let Some(v) = &t.version {
                parts.push(v.clone());
            }
            if let Some(c) = &t.cipher {
                parts.push(c.clone());
            }
            if let Some(b) = &t.bits {
                parts.push(format!("({b} bits)"));
            }
            if let Some(k) = &t.key_exchange {
                parts.push(format!("key-exchange {k}"));
            }
            if let Some(s) = &t.server_signature {
                parts.push(format!("server-signature {s}"));
            }
            if let Some(p) = &t.peer_certificate {
                parts.push(format!("[{p}]"));
            }
            if let Some(n) = &t.note {
                if t.version.is_none() {
                    parts.push(n.clone());
                }
            }
            let fmt = t.format.as_deref().unwrap_or("?");
            format!("TLS: {} ({fmt} stamp)", parts.join(" "))
        }
        TransportTls::None => format!("no TLS: {}", t.note.as_deref().unwrap_or("")),
        TransportTls::Local => format!(
            "local hop, no TLS needed: {}",
            t.note.as_deref().unwrap_or("")
        ),
        TransportTls::Unknown => match &t.raw {
            Some(raw) => format!("TLS unknown: ({raw})"),
            None => format!("TLS unknown: {}", t.note.as_deref().unwrap_or("")),
        },
    }
}

/// Writes every report in the console style.
pub fn write_console(reports: &[HeadersReport], out: &mut dyn Write) -> io::Result<()> {
    let many = reports.len() > 1;
    for (i, r) in reports.iter().enumerate() {
        if many {
            writeln!(out, "=== message {} of {}", i + 1, reports.len())?;
        }
        if let Some(s) = &r.subject {
            writeln!(out, "=== Subject: {}", safe(s))?;
        }
        if let Some(m) = &r.message_id {
            writeln!(out, "=== Message-ID: <{}>", safe(m))?;
        }
        writeln!(
            out,
            "=== {} Received hop(s), in transit order (oldest first)",
            r.hops.len()
        )?;
        for h in &r.hops {
            let proto = h.protocol.as_deref().unwrap_or("?");
            let when = match (&h.date, h.delay_secs) {
                (Some(d), Some(s)) => format!("{d} ({})", delay(s)),
                (Some(d), None) => d.clone(),
                (None, _) => match &h.date_raw {
                    Some(raw) => format!("unparsable date {:?}", safe(raw)),
                    None => "no date".into(),
                },
            };
            writeln!(
                out,
                "=== hop {}: {} with {}  {}",
                h.index,
                safe(&hop_path(h)),
                safe(proto),
                when
            )?;
            writeln!(out, "      {}", safe(&tls_line(h)))?;
        }
        for c in &r.context {
            writeln!(
                out,
                "=== {}: {} — {}",
                safe(&c.header),
                safe(&c.value),
                c.note
            )?;
        }
        for f in &r.findings {
            let mark = if f.severity == Severity::Info {
                "==="
            } else {
                "***"
            };
            writeln!(
                out,
                "{mark} {} {}: {}",
                f.severity.label(),
                f.id,
                safe(&f.title)
            )?;
            writeln!(out, "      evidence: {}", safe(&f.evidence))?;
            writeln!(out, "      advice: {}", safe(&f.advice))?;
        }
        let (tls, none, local, unknown) = r.counts();
        writeln!(
            out,
            "=== summary: {} hop(s): {tls} with TLS, {none} without TLS, {local} local, {unknown} unknown",
            r.hops.len()
        )?;
        if many {
            writeln!(out)?;
        }
    }
    Ok(())
}
