//! The console transcript, swaks-like: one line per fact, prefixed with the
//! session id and the seconds since the session opened.
//!
//! ```text
//! [#1 +0.004]  -> EHLO client.example.test
//! [#1 +0.005] <-  250-gw.example.test
//! [#1 +0.031] === TLS ServerHello: TLSv1.3, TLS_AES_256_GCM_SHA384
//! [#1 +0.090] *** TLS alert from the client: fatal unknown_ca
//! ```
//!
//! `->` client to server, `<-` server to client, `===` facts, `***` problems.
//! Colour only when writing to a terminal (or when forced). Rendering works
//! on the JSON form of the event, so it follows docs/log-schema.md exactly.

use std::collections::HashMap;
use std::io::Write;

use serde_json::Value;

use crate::event::{Event, Timestamp};

/// The kind of a transcript line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    /// Sent by the client (`->`).
    Client,
    /// Sent by the server (`<-`).
    Server,
    /// A fact (`===`).
    Fact,
    /// A problem (`***`).
    Problem,
}

impl LineKind {
    fn marker(self) -> &'static str {
        match self {
            LineKind::Client => " ->",
            LineKind::Server => "<- ",
            LineKind::Fact => "===",
            LineKind::Problem => "***",
        }
    }
    fn color(self) -> &'static str {
        match self {
            LineKind::Client => "\x1b[36m",
            LineKind::Server => "\x1b[32m",
            LineKind::Fact => "\x1b[2m",
            LineKind::Problem => "\x1b[1;31m",
        }
    }
}

/// The console writer.
pub struct Console {
    out: Box<dyn Write + Send>,
    color: bool,
    opened: HashMap<u64, Timestamp>,
}

impl Console {
    /// A console writing to `out`, with ANSI colours if `color`.
    pub fn new(out: Box<dyn Write + Send>, color: bool) -> Self {
        Console {
            out,
            color,
            opened: HashMap::new(),
        }
    }

    /// Writes the transcript lines of one event.
    pub fn write(&mut self, ev: &Event) {
        // Session 0 carries facts about no session (the capture writer's files).
        let prefix = if ev.session == 0 {
            "[smtptap]".to_string()
        } else {
            let start = *self.opened.entry(ev.session).or_insert(ev.ts);
            format!("[#{} +{:.3}]", ev.session, ev.ts.since(start))
        };
        for (kind, text) in render(ev) {
            let line = format!("{prefix} {} {}", kind.marker(), text);
            let _ = if self.color {
                writeln!(self.out, "{}{}\x1b[0m", kind.color(), line)
            } else {
                writeln!(self.out, "{line}")
            };
        }
        if ev.name() == "session.summary" {
            self.opened.remove(&ev.session);
        }
    }

    /// Flushes the output.
    pub fn flush(&mut self) {
        let _ = self.out.flush();
    }
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}
fn u(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}
fn b(v: &Value, k: &str) -> bool {
    v.get(k).and_then(Value::as_bool).unwrap_or(false)
}
fn list(v: &Value, k: &str) -> Vec<String> {
    v.get(k)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|x| match x {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}
fn opt(v: &Value, k: &str) -> Option<String> {
    match v.get(k) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Null) | None => None,
        Some(other) => Some(other.to_string()),
    }
}

fn side_name(v: &Value, k: &str) -> String {
    match s(v, k) {
        "" => "?".into(),
        x => x.into(),
    }
}

/// The transcript lines for one event (pure; also used by the lab demo and tests).
pub fn render(ev: &Event) -> Vec<(LineKind, String)> {
    use LineKind::*;
    let v = match serde_json::to_value(ev) {
        Ok(v) => v,
        Err(_) => return Vec::new(),
    };
    let name = s(&v, "event").to_string();
    let mut out: Vec<(LineKind, String)> = Vec::new();
    match name.as_str() {
        "session.open" => out.push((
            Fact,
            format!(
                "session {}: client {} connected to {}; upstream {}{}",
                ev.session,
                s(&v, "client"),
                s(&v, "listener"),
                s(&v, "upstream"),
                if b(&v, "implicit_tls") {
                    " (implicit TLS)"
                } else {
                    ""
                }
            ),
        )),
        "upstream.connected" => out.push((
            Fact,
            format!(
                "connected to upstream {} from {} in {:.1} ms",
                s(&v, "addr"),
                s(&v, "local"),
                v.get("connect_ms").and_then(Value::as_f64).unwrap_or(0.0)
            ),
        )),
        "upstream.failed" => {
            out.push((
                Problem,
                format!(
                    "upstream {} unreachable: {}",
                    s(&v, "upstream"),
                    s(&v, "error")
                ),
            ));
            match opt(&v, "reply") {
                Some(r) => out.push((Server, format!("{r}   (sent by smtptap)"))),
                None => out.push((Fact, "closed the client connection without a reply".into())),
            }
        }
        "session.half_close" => out.push((
            Fact,
            format!("{} closed its side (FIN)", side_name(&v, "side")),
        )),
        "tls.started" => out.push((
            Fact,
            match s(&v, "after") {
                "implicit" => "TLS from the first byte (implicit TLS)".to_string(),
                "implicit_detected" => {
                    "the client spoke TLS first and the server answered in TLS: implicit TLS (SMTPS), detected"
                        .to_string()
                }
                _ => "STARTTLS accepted: the connection is TLS from here on".to_string(),
            },
        )),
        "observer.lagged" => out.push((
            Problem,
            format!(
                "analysis fell behind: {} bytes relayed but not analysed (mail not affected)",
                u(&v, "bytes_not_analysed")
            ),
        )),
        "session.close" => {
            let mut t = format!(
                "session closed ({}): client {}, server {}; {} bytes from client, {} from server",
                s(&v, "reason"),
                s(&v, "client_end"),
                s(&v, "server_end"),
                u(&v, "client_bytes"),
                u(&v, "server_bytes")
            );
            if let Some(e) = opt(&v, "error") {
                t.push_str(&format!("; {e}"));
            }
            out.push((Fact, t));
        }
        "session.summary" => render_summary(&v, &mut out),
        // SMTP
        "smtp.banner" | "smtp.reply" | "smtp.capabilities" | "smtp.starttls" => {
            let lines = list(&v, "lines");
            if name == "smtp.capabilities" || name == "smtp.starttls" {
                // the same lines also appear as smtp.reply; only facts here
                render_smtp_fact(&name, &v, &mut out);
            } else {
                for l in lines {
                    out.push((Server, l));
                }
                if name == "smtp.banner" && list(&v, "lines").is_empty() {
                    out.push((Server, format!("{} {}", u(&v, "code"), s(&v, "text"))));
                }
            }
        }
        "smtp.command" => {
            let arg = s(&v, "arg");
            out.push((
                Client,
                if arg.is_empty() {
                    s(&v, "verb").to_string()
                } else {
                    format!("{} {}", s(&v, "verb"), arg)
                },
            ));
        }
        "smtp.desync" | "tls.desync" => {
            out.push((
                Problem,
                format!(
                "{} observer stopped on {} bytes at offset {}: {} (the relay goes on unchanged)",
                if name.starts_with("smtp") { "SMTP" } else { "TLS" },
                side_name(&v, "side"),
                u(&v, "offset"),
                s(&v, "reason")
            ),
            ))
        }
        // Already on the screen: the EHLO and BDAT lines as `smtp.command`,
        // the server's 334 as `smtp.reply`.
        "smtp.ehlo" | "smtp.bdat" => {}
        "smtp.auth_data" => {
            if s(&v, "side") == "client" {
                out.push((
                    Client,
                    if b(&v, "cancel") {
                        "*   (the client cancelled AUTH)".to_string()
                    } else {
                        format!("[SASL response, {} bytes, redacted]", u(&v, "bytes"))
                    },
                ));
            }
        }
        "smtp.auth" => out.push((
            Fact,
            format!("AUTH {} (credentials are never logged)", s(&v, "mechanism")),
        )),
        "smtp.data" => out.push((
            Fact,
            format!(
                "message body: {} bytes, {} lines (content not logged){}",
                u(&v, "bytes"),
                u(&v, "lines"),
                if b(&v, "bare_lf") {
                    "; contains bare LF line ends"
                } else {
                    ""
                }
            ),
        )),
        "smtp.message" => {
            let line = format!("{} {}", u(&v, "code"), s(&v, "text"));
            if b(&v, "accepted") {
                out.push((
                    Fact,
                    format!(
                        "message accepted ({} bytes via {}): {line}",
                        u(&v, "size"),
                        s(&v, "via")
                    ),
                ));
            } else {
                out.push((
                    Problem,
                    format!(
                        "message rejected ({} bytes via {}): {line}",
                        u(&v, "size"),
                        s(&v, "via")
                    ),
                ));
            }
        }
        "smtp.bare_lf" => out.push((
            Problem,
            format!(
                "the {} uses bare LF line ends (not CRLF)",
                side_name(&v, "side")
            ),
        )),
        "tls.client_hello" => {
            out.push((
                Fact,
                format!(
                    "TLS ClientHello: up to {}, SNI {}, {} cipher suites, ALPN [{}]",
                    s(&v, "max_version"),
                    opt(&v, "sni").unwrap_or_else(|| "(none)".into()),
                    list(&v, "cipher_suites").len(),
                    list(&v, "alpn").join(", ")
                ),
            ));
            out.push((
                Fact,
                format!("    JA4 {}  JA3 {}", s(&v, "ja4"), s(&v, "ja3")),
            ));
        }
        "tls.server_hello" => out.push((
            Fact,
            format!(
                "TLS ServerHello: {}, {}{}{}",
                s(&v, "version"),
                s(&v, "cipher_suite"),
                opt(&v, "group")
                    .map(|g| format!(", group {g}"))
                    .unwrap_or_default(),
                if b(&v, "resumed") {
                    " (resumed session)"
                } else {
                    ""
                }
            ),
        )),
        "tls.hello_retry_request" => out.push((
            Fact,
            format!(
                "TLS HelloRetryRequest: the server asks for key share {}",
                s(&v, "group")
            ),
        )),
        "tls.certificate" => out.push((
            Fact,
            format!(
                "TLS Certificate from the {}: {} certificate(s), {} bytes",
                side_name(&v, "from"),
                u(&v, "count"),
                u(&v, "bytes")
            ),
        )),
        "tls.certificate_hidden" => out.push((
            Fact,
            format!(
                "{}: the certificate is encrypted and cannot be seen passively",
                s(&v, "version")
            ),
        )),
        "tls.certificate_request" => {
            out.push((Fact, "the server asks for a client certificate".into()))
        }
        "tls.change_cipher_spec" => {}
        "tls.server_key_exchange" => out.push((
            Fact,
            format!(
                "TLS key exchange: {}{}{}",
                s(&v, "kind"),
                opt(&v, "group")
                    .map(|g| format!(", group {g}"))
                    .unwrap_or_default(),
                v.get("dh_bits")
                    .and_then(Value::as_u64)
                    .map(|b| format!(", {b}-bit DH"))
                    .unwrap_or_default()
            ),
        )),
        "tls.alert" => {
            let kind = if s(&v, "description") == "close_notify" {
                Fact
            } else {
                Problem
            };
            out.push((
                kind,
                format!(
                    "TLS alert from the {}: {} {}{}",
                    side_name(&v, "from"),
                    s(&v, "level"),
                    s(&v, "description"),
                    if b(&v, "encrypted") {
                        " (encrypted)"
                    } else {
                        ""
                    }
                ),
            ));
        }
        "tls.established" => out.push((
            Fact,
            format!(
                "TLS established: {}, {}",
                s(&v, "version"),
                s(&v, "cipher_suite")
            ),
        )),
        "cert.info" => {
            out.push((
                Fact,
                format!(
                    "{} certificate #{}: {}",
                    side_name(&v, "role"),
                    u(&v, "index"),
                    s(&v, "subject")
                ),
            ));
            let mut names = list(&v, "san_dns");
            names.extend(list(&v, "san_ip"));
            out.push((
                Fact,
                format!(
                    "    names: {}",
                    if names.is_empty() {
                        "(no SAN)".to_string()
                    } else {
                        names.join(", ")
                    }
                ),
            ));
            out.push((Fact, format!("    issuer: {}", s(&v, "issuer"))));
            let days = v.get("days_left").and_then(Value::as_i64).unwrap_or(0);
            let validity = format!(
                "    valid {} to {} ({} days left)",
                s(&v, "not_before"),
                s(&v, "not_after"),
                days
            );
            out.push((
                if b(&v, "expired") || b(&v, "not_yet_valid") {
                    Problem
                } else {
                    Fact
                },
                validity,
            ));
            out.push((
                Fact,
                format!(
                    "    key {} {} bits, {}; SHA-1 thumbprint {}",
                    s(&v, "key_type"),
                    u(&v, "key_bits"),
                    s(&v, "signature_algorithm"),
                    s(&v, "sha1_thumbprint")
                ),
            ));
        }
        "cert.parse_error" => out.push((
            Problem,
            format!(
                "{} certificate #{} cannot be parsed: {}",
                side_name(&v, "role"),
                u(&v, "index"),
                s(&v, "reason")
            ),
        )),
        "cert.chain" => {
            if b(&v, "trusted") {
                out.push((
                    Fact,
                    format!(
                        "{} chain trusted (anchor {})",
                        side_name(&v, "role"),
                        s(&v, "anchor")
                    ),
                ));
            } else {
                out.push((
                    Problem,
                    format!(
                        "{} chain NOT trusted: {}{}",
                        side_name(&v, "role"),
                        s(&v, "error"),
                        opt(&v, "detail")
                            .map(|d| format!(" ({d})"))
                            .unwrap_or_default()
                    ),
                ));
            }
        }
        "cert.names" => {
            for c in v
                .get("checks")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
            {
                let matched = b(&c, "matched");
                out.push((
                    if matched { Fact } else { Problem },
                    format!(
                        "name {} ({}): {}",
                        s(&c, "name"),
                        s(&c, "source"),
                        if matched {
                            format!("matches {}", s(&c, "by"))
                        } else {
                            "NOT on the certificate".to_string()
                        }
                    ),
                ));
            }
        }
        "capture.error" => out.push((
            Problem,
            format!(
                "capture stopped: writing {} failed: {} (mail is not affected)",
                s(&v, "path"),
                s(&v, "error")
            ),
        )),
        "capture.truncated" => out.push((
            Fact,
            format!(
                "capture: this session reached max_bytes_per_session ({} bytes); later data is not in the file",
                u(&v, "limit")
            ),
        )),
        "capture.dropped" => out.push((
            Problem,
            format!(
                "capture: {} frames ({} bytes) of this session not written: {} (the disk could not keep up; mail is not affected)",
                u(&v, "frames"),
                u(&v, "bytes"),
                s(&v, "reason")
            ),
        )),
        "cert.crl" => out.push(if b(&v, "ok") {
            (
                Fact,
                format!(
                    "CRL for the {} chain: {} ({} bytes)",
                    s(&v, "role"),
                    s(&v, "url"),
                    u(&v, "bytes")
                ),
            )
        } else {
            (
                Problem,
                format!(
                    "CRL for the {} chain could not be obtained: {}: {}",
                    s(&v, "role"),
                    s(&v, "url"),
                    s(&v, "error")
                ),
            )
        }),
        "upstream.loop_refused" => out.push((
            Problem,
            format!(
                "refused: the original destination {} is smtptap itself ({})",
                s(&v, "original_dst"),
                s(&v, "reason")
            ),
        )),
        "session.prior_tls_failure" => out.push((
            Problem,
            format!(
                "this client's TLS handshake failed {:.1} s ago (session #{}: {})",
                v.get("seconds_ago").and_then(Value::as_f64).unwrap_or(0.0),
                u(&v, "prior_session"),
                s(&v, "reason")
            ),
        )),
        "capture.file" => out.push((
            Fact,
            format!("capture file {}: {}", s(&v, "reason"), s(&v, "path")),
        )),
        "smtp.masked" => out.push((
            Problem,
            format!(
                "{} masked by a middlebox (firewall SMTP inspection?): {:?}",
                s(&v, "what"),
                s(&v, "sample")
            ),
        )),
        _ => render_generic(&name, &v, &mut out),
    }
    out
}

fn render_smtp_fact(name: &str, v: &Value, out: &mut Vec<(LineKind, String)>) {
    use LineKind::*;
    match name {
        "smtp.capabilities" => {
            if b(v, "starttls") {
                out.push((Fact, "STARTTLS offered".into()));
            } else {
                out.push((Problem, "STARTTLS not offered in the EHLO reply".into()));
            }
        }
        "smtp.starttls" if !b(v, "accepted") => {
            out.push((
                Problem,
                format!("STARTTLS refused: {} {}", u(v, "code"), s(v, "text")),
            ));
        }
        _ => {}
    }
}

fn render_summary(v: &Value, out: &mut Vec<(LineKind, String)>) {
    use LineKind::*;
    let mut parts = vec![format!(
        "{:.3} s",
        v.get("duration_s").and_then(Value::as_f64).unwrap_or(0.0)
    )];
    if let Some(x) = v.get("messages_accepted").and_then(Value::as_u64) {
        if b(v, "tls_established") && x == 0 && u(v, "messages_rejected") == 0 {
            parts.push(if b(v, "implicit_tls") {
                "messages not visible (SMTP is encrypted from the first byte)".to_string()
            } else {
                "messages not visible (SMTP is encrypted after STARTTLS)".to_string()
            });
        } else {
            parts.push(format!(
                "{} message(s) accepted, {} rejected",
                x,
                u(v, "messages_rejected")
            ));
        }
    }
    let starttls: &[(&str, &str)] = if b(v, "implicit_tls") {
        parts.push("implicit TLS (SMTPS)".to_string());
        &[("tls_established", "TLS established")]
    } else {
        &[
            ("starttls_offered", "STARTTLS offered"),
            ("starttls_attempted", "attempted"),
            ("starttls_accepted", "accepted"),
            ("tls_established", "TLS established"),
        ]
    };
    for &(k, label) in starttls {
        if let Some(x) = v.get(k).and_then(Value::as_bool) {
            parts.push(format!("{label}: {}", if x { "yes" } else { "no" }));
        }
    }
    if let Some(t) = opt(v, "tls_version") {
        parts.push(format!("{t} {}", s(v, "tls_cipher")));
    }
    parts.push(format!(
        "{} bytes from client, {} from server",
        u(v, "client_bytes"),
        u(v, "server_bytes")
    ));
    out.push((Fact, format!("summary: {}", parts.join("; "))));
    if let Some(r) = opt(v, "last_reply") {
        let note = if b(v, "starttls_accepted") {
            " (the last one in cleartext)"
        } else {
            ""
        };
        out.push((Fact, format!("last reply{note}: {r}")));
    }
    let findings = v
        .get("findings")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if findings.is_empty() {
        out.push((Fact, "diagnosis: no problem found".into()));
    }
    for f in findings {
        let sev = s(&f, "severity");
        let kind = if sev == "info" { Fact } else { Problem };
        out.push((
            kind,
            format!("[{sev}] {} ({})", s(&f, "title"), s(&f, "id")),
        ));
        for e in list(&f, "evidence") {
            out.push((kind, format!("    evidence: {e}")));
        }
        out.push((kind, format!("    what to change: {}", s(&f, "advice"))));
    }
}

/// Any other event: its name and its scalar fields, compactly.
fn render_generic(name: &str, v: &Value, out: &mut Vec<(LineKind, String)>) {
    let mut parts = Vec::new();
    if let Value::Object(m) = v {
        for (k, x) in m {
            if matches!(k.as_str(), "ts" | "session" | "event") {
                continue;
            }
            let shown = match x {
                Value::Null => continue,
                Value::String(s) => s.clone(),
                Value::Array(a) if a.is_empty() => continue,
                Value::Array(a) if a.len() > 8 => format!("[{} items]", a.len()),
                other => other.to_string(),
            };
            parts.push(format!("{k}={shown}"));
        }
    }
    let kind = if name.contains("alert") || name.contains("error") || name.contains("failed") {
        LineKind::Problem
    } else {
        LineKind::Fact
    };
    out.push((kind, format!("{name} {}", parts.join(" "))));
}
