//! `smtptap headers`: which hops of a delivered message used TLS, read from its
//! `Received:` headers (issue 6).
//!
//! This module owns the subcommand's arguments ([`HeadersArgs`]), its entry
//! point ([`run`]), and the pure analysis of one message ([`analyze_message`]):
//! hops in transit order, the TLS facts each receiver stamped, and findings in
//! the same shape as the proxy's. It reads files (or stdin) only inside [`run`];
//! it must not touch the network, and must not drift into spam analysis: other
//! headers are read only where they say something about transport TLS.
//!
//! ```text
//!  bytes ──▶ mail-parser (header block, unfolding, RFC 2047)
//!              └─▶ Received: fields (top-down) ──▶ received::parse_received
//!                     └─▶ reversed: transit order ──▶ stamps::tls_facts ──▶ Hop
//!  hops + Authentication-Results/X-MS-Exchange-* ──▶ findings ──▶ report (console | JSON lines)
//! ```

pub mod received;
mod report;
pub mod stamps;
#[cfg(test)]
mod tests;

use std::io::Read;
use std::path::PathBuf;

use mail_parser::{DateTime, MessageParser};
use serde::Serialize;

use received::{parse_received, unfold, Received};
use stamps::{tls_facts, weak_cipher, TlsFacts, TransportTls};

pub use report::{write_console, write_json};

/// Arguments of `smtptap headers`.
#[derive(clap::Args, Debug, Clone)]
pub struct HeadersArgs {
    /// The message to read: a .eml file (RFC 5322, headers and optionally body),
    /// or `-` for standard input.
    pub input: PathBuf,
    /// Read INPUT as an mbox file (messages separated by `From ` lines) and
    /// report on each message in turn.
    #[arg(long)]
    pub mbox: bool,
    /// Write JSON lines (`headers.hop`, `headers.finding`, `headers.summary`,
    /// each with the message index) instead of the console report.
    #[arg(long)]
    pub json: bool,
}

/// Upper bound on input size read by [`run`] (a mailbox can be large, but not
/// unbounded): 256 MiB.
pub const MAX_INPUT: u64 = 256 * 1024 * 1024;

/// Upper bound on the characters of raw header text repeated in evidence.
pub const MAX_EVIDENCE: usize = 2000;

/// The severity of a finding, as in the proxy's diagnosis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Context worth knowing; nothing to fix.
    Info,
    /// Something a mail administrator should look at.
    Warning,
    /// Something broken or insecure.
    Error,
}

impl Severity {
    /// The lower-case label.
    pub fn label(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// One finding about a message: what is wrong (or right), the evidence, and
/// what to change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Stable identifier (`headers.hop_without_tls`); documented in
    /// `docs/findings.md`, "Findings of `smtptap headers`".
    pub id: String,
    /// How serious it is.
    pub severity: Severity,
    /// The hop it is about (1 = first hop in transit), if any.
    pub hop: Option<usize>,
    /// One line, in the troubleshooter's language.
    pub title: String,
    /// The raw header text, unfolded (truncated to [`MAX_EVIDENCE`] characters).
    pub evidence: String,
    /// What to change or check.
    pub advice: String,
}

/// One `Received:` hop, in transit order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hop {
    /// 1 for the oldest (bottom-most) `Received:` field.
    pub index: usize,
    /// The sending host, as written in the `from` clause.
    pub from_host: Option<String>,
    /// The sending host's IP, when written.
    pub from_ip: Option<String>,
    /// The receiving host (`by` clause): the server that wrote the field.
    pub by_host: Option<String>,
    /// The protocol (`ESMTPS`, `LMTP`, `MICROSOFT SMTP SERVER`).
    pub protocol: Option<String>,
    /// The queue id (`id` clause).
    pub id: Option<String>,
    /// The recipient (`for` clause).
    pub for_addr: Option<String>,
    /// The date as written after `;`.
    pub date_raw: Option<String>,
    /// The date in RFC 3339 UTC, when it parses.
    pub date: Option<String>,
    /// Seconds since the previous hop's date (negative means clock skew), when
    /// both dates parse.
    pub delay_secs: Option<i64>,
    /// What the receiver stamped about TLS.
    pub tls: TlsFacts,
    /// The whole field, unfolded (truncated to [`MAX_EVIDENCE`] characters).
    pub raw: String,
    /// Epoch seconds, for delay computation.
    #[serde(skip)]
    pub epoch: Option<i64>,
}

/// A header that says something about transport TLS outside `Received:`
/// (an `Authentication-Results` property naming TLS, Exchange's `AuthAs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsContext {
    /// The header name as written.
    pub header: String,
    /// The relevant part of its value, verbatim.
    pub value: String,
    /// What it means, without guessing beyond what the header says.
    pub note: String,
}

/// The analysis of one message.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeadersReport {
    /// `Subject:` decoded (RFC 2047), for orientation.
    pub subject: Option<String>,
    /// `Message-ID:`, for orientation.
    pub message_id: Option<String>,
    /// The hops in transit order (oldest first).
    pub hops: Vec<Hop>,
    /// Other headers' statements about transport TLS.
    pub context: Vec<TlsContext>,
    /// Findings, most severe first.
    pub findings: Vec<Finding>,
}

impl HeadersReport {
    /// The most severe finding's severity, if any.
    pub fn worst(&self) -> Option<Severity> {
        self.findings.iter().map(|f| f.severity).max()
    }

    /// Counts of hops per TLS state: (tls, none, local, unknown).
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let c = |s| self.hops.iter().filter(|h| h.tls.state == s).count();
        (
            c(TransportTls::Tls),
            c(TransportTls::None),
            c(TransportTls::Local),
            c(TransportTls::Unknown),
        )
    }
}

/// Truncates `s` to [`MAX_EVIDENCE`] characters, saying how much was cut.
pub(crate) fn clip(s: &str) -> String {
    match s.char_indices().nth(MAX_EVIDENCE) {
        None => s.to_string(),
        Some((i, _)) => format!(
            "{}… [{} more bytes not shown]",
            s.get(..i).unwrap_or(""),
            s.len().saturating_sub(i)
        ),
    }
}

fn epoch_of(date: &str) -> Option<i64> {
    let dt = DateTime::parse_rfc822(date)?;
    if !dt.is_valid() {
        return None;
    }
    Some(dt.to_timestamp())
}

fn rfc3339(epoch: i64) -> Option<String> {
    let dt = time::OffsetDateTime::from_unix_timestamp(epoch).ok()?;
    dt.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

fn hop_from(index: usize, r: &Received, prev_epoch: Option<i64>) -> Hop {
    let epoch = r.date.as_deref().and_then(epoch_of);
    Hop {
        index,
        from_host: r.from_host.clone(),
        from_ip: r.from_ip.clone(),
        by_host: r.by_host.clone(),
        protocol: r.protocol(),
        id: r.id.clone(),
        for_addr: r.for_addr.clone(),
        date_raw: r.date.clone(),
        date: epoch.and_then(rfc3339),
        delay_secs: match (epoch, prev_epoch) {
            (Some(a), Some(b)) => Some(a - b),
            _ => None,
        },
        tls: tls_facts(r),
        raw: clip(&r.raw),
        epoch,
    }
}

/// Names a hop for a finding title: `sender [ip] -> receiver`.
pub(crate) fn hop_path(h: &Hop) -> String {
    let from = h.from_host.as_deref().unwrap_or("(unknown sender)");
    let ip = h
        .from_ip
        .as_deref()
        .filter(|ip| !from.contains(ip))
        .map(|ip| format!(" [{ip}]"))
        .unwrap_or_default();
    let by = h.by_host.as_deref().unwrap_or("(unknown receiver)");
    format!("{from}{ip} -> {by}")
}

fn evidence(h: &Hop) -> String {
    format!("Received: {}", h.raw)
}

/// Reads `Authentication-Results`-like and Exchange headers for statements
/// about transport TLS. Only properties that name TLS are kept.
fn tls_context(name: &str, value: &str) -> Option<TlsContext> {
    let lname = name.to_ascii_lowercase();
    let value = unfold(value);
    match lname.as_str() {
        "authentication-results" | "arc-authentication-results" => {
            let parts: Vec<&str> = value
                .split(|c: char| c == ';' || c.is_whitespace())
                .filter(|p| {
                    let lp = p.to_ascii_lowercase();
                    lp.contains("tls") || lp.contains("cipher")
                })
                .collect();
            if parts.is_empty() {
                return None;
            }
            Some(TlsContext {
                header: name.to_string(),
                value: clip(&parts.join(" ")),
                note: "TLS-related properties recorded by the verifying server (reported verbatim)"
                    .into(),
            })
        }
        "x-ms-exchange-organization-authas" => {
            let note = match value.to_ascii_lowercase().as_str() {
                "anonymous" => "Exchange accepted the message from an unauthenticated sender (anonymous connector); this says nothing about TLS",
                "internal" => "Exchange treated the sender as inside the organisation (authenticated connector or internal server)",
                "partner" => "Exchange treated the sender as a partner: a connector that authenticates the sending domain (for example by its TLS certificate)",
                _ => "Exchange's authentication classification of the sender (reported verbatim)",
            };
            Some(TlsContext {
                header: name.to_string(),
                value: clip(&value),
                note: note.into(),
            })
        }
        "x-ms-exchange-transport-crosstenantheadersstamped" => Some(TlsContext {
            header: name.to_string(),
            value: clip(&value),
            note: "the Exchange Online server that stamped the cross-tenant headers; the TLS of the hop into it is in its Received: field".into(),
        }),
        _ => None,
    }
}

/// Analyses one message's header block. Never fails: unreadable input gives a
/// report with no hops and a `headers.no_received` finding.
pub fn analyze_message(raw: &[u8]) -> HeadersReport {
    let parser = MessageParser::default();
    let parsed = parser.parse_headers(raw);
    let mut received_top_down: Vec<Received> = Vec::new();
    let mut context = Vec::new();
    let mut subject = None;
    let mut message_id = None;
    if let Some(msg) = &parsed {
        subject = msg.subject().map(String::from);
        message_id = msg.message_id().map(String::from);
        let bytes: &[u8] = msg.raw_message.as_ref();
        if let Some(part) = msg.parts.first() {
            for h in &part.headers {
                let name = h.name.as_str();
                let value = bytes
                    .get(h.offset_start as usize..h.offset_end as usize)
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default();
                if name.eq_ignore_ascii_case("received") {
                    received_top_down.push(parse_received(&value));
                } else if let Some(c) = tls_context(name, &value) {
                    context.push(c);
                }
            }
        }
    }

    let mut hops = Vec::with_capacity(received_top_down.len());
    let mut prev_epoch = None;
    for (i, r) in received_top_down.iter().rev().enumerate() {
        let hop = hop_from(i + 1, r, prev_epoch);
        if hop.epoch.is_some() {
            prev_epoch = hop.epoch;
        }
        hops.push(hop);
    }
    let findings = findings_for(&hops, parsed.is_some());
    HeadersReport {
        subject,
        message_id,
        hops,
        context,
        findings,
    }
}

fn findings_for(hops: &[Hop], parsed: bool) -> Vec<Finding> {
    let mut out = Vec::new();
    if hops.is_empty() {
        out.push(Finding {
            id: "headers.no_received".into(),
            severity: Severity::Warning,
            hop: None,
            title: if parsed {
                "no Received: header: nothing says how this message travelled".into()
            } else {
                "no header block found: the input is not a mail message".into()
            },
            evidence: "(no Received: field in the header block)".into(),
            advice: "Export the message with its full headers (Outlook: File > Properties > Internet headers; Gmail: Show original; Exchange: the .eml from the mailbox or message trace), not a forwarded copy or the body only.".into(),
        });
        return out;
    }
    for h in hops {
        let path = hop_path(h);
        match h.tls.state {
            TransportTls::None => out.push(Finding {
                id: "headers.hop_without_tls".into(),
                severity: Severity::Warning,
                hop: Some(h.index),
                title: format!("hop {} ({path}) used no TLS", h.index),
                evidence: evidence(h),
                advice: format!(
                    "The receiver {} stamped a cleartext protocol: the message crossed this hop unencrypted. Check that {} offers STARTTLS (EHLO lists it) and that the sender's outbound connector or smtp_tls_security_level uses it (opportunistic at least; mandatory for partners). Confirm with a capture through `smtptap proxy --pcap`.",
                    h.by_host.as_deref().unwrap_or("(unknown)"),
                    h.by_host.as_deref().unwrap_or("the receiver"),
                ),
            }),
            TransportTls::Unknown => out.push(Finding {
                id: "headers.tls_unknown".into(),
                severity: Severity::Info,
                hop: Some(h.index),
                title: format!(
                    "hop {} ({path}): TLS unknown — {}",
                    h.index,
                    h.tls.note.as_deref().unwrap_or("no TLS stamp")
                ),
                evidence: match &h.tls.raw {
                    Some(c) => format!("({c}) in Received: {}", h.raw),
                    None => evidence(h),
                },
                advice: "The receiver's stamp does not say (in a form smtptap reads) whether TLS was used. Check that server's own logs, or observe the hop with `smtptap proxy`/`probe`.".into(),
            }),
            TransportTls::Tls | TransportTls::Local => {}
        }
        if h.tls.state == TransportTls::Tls {
            if let Some(v) = h.tls.version.as_deref() {
                let sev = match v {
                    "SSLv2" | "SSLv3" => Some(Severity::Error),
                    "TLSv1.0" | "TLSv1.1" => Some(Severity::Warning),
                    _ => None,
                };
                if let Some(sev) = sev {
                    out.push(Finding {
                        id: "headers.legacy_tls_version".into(),
                        severity: sev,
                        hop: Some(h.index),
                        title: format!("hop {} ({path}) used {v}, a deprecated protocol version", h.index),
                        evidence: evidence(h),
                        advice: "TLS 1.0 and 1.1 are deprecated (RFC 8996) and SSLv3 is broken; Exchange Online and most gateways no longer accept them. Enable TLS 1.2 (and 1.3) on both ends: on Windows/Exchange the SCHANNEL protocol keys and .NET SystemDefaultTlsVersions/SchUseStrongCrypto; on Postfix smtp(d)_tls_protocols = >=TLSv1.2.".into(),
                    });
                }
            }
            if let Some(c) = h.tls.cipher.as_deref() {
                if let Some((sev, why)) = weak_cipher(c) {
                    out.push(Finding {
                        id: "headers.weak_cipher".into(),
                        severity: if sev == "error" { Severity::Error } else { Severity::Warning },
                        hop: Some(h.index),
                        title: format!("hop {} ({path}) used {c}: {why}", h.index),
                        evidence: evidence(h),
                        advice: "Restrict the cipher list on both ends to forward-secret AEAD suites (ECDHE with AES-GCM or ChaCha20-Poly1305) and TLS 1.3. On Windows, order and disable suites with Group Policy or Disable-TlsCipherSuite; on Postfix raise smtpd_tls_mandatory_ciphers and exclude the weak classes.".into(),
                    });
                }
            }
            if let Some(v) = h.tls.verify.as_deref() {
                let up = v.to_ascii_uppercase();
                let sev = match up.as_str() {
                    "FAIL" | "TEMP" | "PROTOCOL" | "SOFTWARE" => Some(Severity::Warning),
                    "NOT" | "NO" | "NONE" => Some(Severity::Info),
                    _ => None,
                };
                if let Some(sev) = sev {
                    out.push(Finding {
                        id: "headers.cert_not_verified".into(),
                        severity: sev,
                        hop: Some(h.index),
                        title: format!(
                            "hop {} ({path}): the receiver did not verify the sender's certificate (verify={v})",
                            h.index
                        ),
                        evidence: evidence(h),
                        advice: if sev == Severity::Warning {
                            "The receiver tried to verify the sending side's certificate and failed: check the sender's certificate chain (intermediates sent, not expired, issued by a CA the receiver trusts) and its names.".into()
                        } else {
                            "The receiver did not ask for (or did not check) a client certificate: normal for opportunistic SMTP TLS, where only encryption is in use. If this hop is meant to be mutually authenticated (a partner or domain-secure connector), configure the receiver to request and verify the certificate.".into()
                        },
                    });
                }
            }
        }
    }
    let (tls, none, local, unknown) = {
        let c = |s| hops.iter().filter(|h| h.tls.state == s).count();
        (
            c(TransportTls::Tls),
            c(TransportTls::None),
            c(TransportTls::Local),
            c(TransportTls::Unknown),
        )
    };
    if none == 0 && unknown == 0 && tls > 0 {
        out.push(Finding {
            id: "headers.tls_every_hop".into(),
            severity: Severity::Info,
            hop: None,
            title: format!(
                "TLS on every hop between hosts ({tls} with TLS, {local} local)"
            ),
            evidence: hops
                .iter()
                .map(|h| format!("hop {}: {}", h.index, h.tls.state.label()))
                .collect::<Vec<_>>()
                .join(", "),
            advice: "Nothing to change for transport encryption. Stamps say what each receiver negotiated, not whether certificates were verified; to check a server's certificate, run `smtptap probe HOST --expect-name NAME`, or put smtptap in front of it with TLS 1.2 (a TLS 1.3 certificate is not visible on the wire).".into(),
        });
    }
    for h in hops {
        if h.date_raw.is_some() && h.date.is_none() {
            out.push(Finding {
                id: "headers.bad_date".into(),
                severity: Severity::Info,
                hop: Some(h.index),
                title: format!("hop {}: the date does not parse; no delay computed", h.index),
                evidence: evidence(h),
                advice: "Only timing is affected. The receiver wrote a date that is not RFC 5322; nothing to change for TLS.".into(),
            });
        }
    }
    out.sort_by_key(|f| std::cmp::Reverse(f.severity));
    out
}

/// Why [`run`] could not read its input.
#[derive(Debug)]
pub enum InputError {
    /// The file could not be opened or read.
    Io(PathBuf, std::io::Error),
    /// The input is empty.
    Empty(PathBuf),
    /// The input exceeds [`MAX_INPUT`].
    TooLarge(PathBuf),
    /// `--mbox` was given but no `From ` separator line was found.
    NoMboxMessages(PathBuf),
}

impl std::fmt::Display for InputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InputError::Io(p, e) => write!(f, "cannot read {}: {e}", p.display()),
            InputError::Empty(p) => write!(f, "{} is empty: no message to analyse", p.display()),
            InputError::TooLarge(p) => {
                write!(f, "{} is larger than {} bytes", p.display(), MAX_INPUT)
            }
            InputError::NoMboxMessages(p) => write!(
                f,
                "{} has no mbox `From ` separator line; drop --mbox to read it as one message",
                p.display()
            ),
        }
    }
}

impl std::error::Error for InputError {}

fn read_input(path: &PathBuf) -> Result<Vec<u8>, InputError> {
    let mut buf = Vec::new();
    let res = if path.as_os_str() == "-" {
        std::io::stdin().take(MAX_INPUT + 1).read_to_end(&mut buf)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(MAX_INPUT + 1).read_to_end(&mut buf))
    };
    res.map_err(|e| InputError::Io(path.clone(), e))?;
    if buf.len() as u64 > MAX_INPUT {
        return Err(InputError::TooLarge(path.clone()));
    }
    if buf.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(InputError::Empty(path.clone()));
    }
    Ok(buf)
}

/// Splits an mbox into its messages (contents without the `From ` line).
pub fn split_mbox(bytes: &[u8]) -> Vec<Vec<u8>> {
    mail_parser::mailbox::mbox::MessageIterator::new(bytes)
        .filter_map(Result::ok)
        .map(|m| m.unwrap_contents())
        .collect()
}

/// Analyses the messages of `bytes` (one, or several with `mbox`).
pub fn analyze_input(bytes: &[u8], mbox: bool) -> Vec<HeadersReport> {
    if mbox {
        split_mbox(bytes)
            .iter()
            .map(|m| analyze_message(m))
            .collect()
    } else {
        vec![analyze_message(bytes)]
    }
}

/// Runs the subcommand, writing the report to `out`; returns the process exit
/// code: 0 clean (no finding of severity warning or error), 1 findings of
/// severity warning/error, 2 input error (also reported on `out`).
pub fn run(args: &HeadersArgs, out: &mut dyn std::io::Write) -> i32 {
    let bytes = match read_input(&args.input) {
        Ok(b) => b,
        Err(e) => return input_error(args, out, &e),
    };
    let reports = analyze_input(&bytes, args.mbox);
    if reports.is_empty() {
        return input_error(args, out, &InputError::NoMboxMessages(args.input.clone()));
    }
    let res = if args.json {
        write_json(&reports, out)
    } else {
        write_console(&reports, out)
    };
    if res.is_err() {
        return 2;
    }
    let worst = reports.iter().filter_map(HeadersReport::worst).max();
    match worst {
        Some(Severity::Warning) | Some(Severity::Error) => 1,
        _ => 0,
    }
}

fn input_error(args: &HeadersArgs, out: &mut dyn std::io::Write, e: &InputError) -> i32 {
    let _ = if args.json {
        writeln!(
            out,
            "{}",
            serde_json::json!({"event": "headers.input_error", "error": e.to_string()})
        )
    } else {
        writeln!(out, "*** error: {e}")
    };
    2
}
