//! The observer's state machine: line accumulation per side, the client's
//! modes (command, DATA body, BDAT payload, STARTTLS hold), the FIFO that
//! pairs replies with pipelined commands, and marks.
//!
//! It must not buffer more than one line per side (bounded by the limits),
//! the STARTTLS hold (bounded by `max_handoff`) and a bounded FIFO; bodies
//! are scanned byte by byte and never kept.

use std::collections::VecDeque;

use super::command::{auth_secret_start, Command};
use super::reply::{self, Reply};
use super::{Mark, MarkKind, Progress, SmtpEvent, SmtpLimits};
use crate::event::Side;

/// Most commands awaiting a reply before we decide this is not SMTP.
const MAX_PENDING: usize = 1000;
/// Most lines in one multi-line reply.
const MAX_REPLY_LINES: usize = 1000;
/// AUTH lines may be this long whatever `max_line` says (RFC 4954).
const AUTH_LINE: usize = 12288;

/// Watches one SMTP session's cleartext bytes, both directions, and reports
/// [`SmtpEvent`]s. Sans-IO: feed it bytes split anywhere.
#[derive(Debug)]
pub struct SmtpObserver {
    limits: SmtpLimits,
    state: State,
    client: ClientState,
    server: ServerState,
    /// Commands sent, not yet answered (oldest first).
    pending: VecDeque<Pending>,
    /// The banner has been seen: later replies answer commands.
    banner_seen: bool,
    /// A 334 was received: client lines are SASL responses until a non-334.
    sasl_active: bool,
    /// Sum of BDAT chunk sizes in the current transaction.
    bdat_total: u64,
    /// `smtp.bare_lf` already reported, per side (client, server).
    bare_lf_noted: (bool, bool),
    /// The current transaction's envelope, as the server accepted it.
    envelope: Envelope,
}

/// The accepted envelope of the current mail transaction (bounded).
#[derive(Debug, Default)]
struct Envelope {
    mail_from: Option<String>,
    rcpt_to: Vec<String>,
    rcpt_count: u64,
}

impl Envelope {
    /// The `smtp.message` that ends this transaction.
    fn message(
        self,
        via: &str,
        size: u64,
        accepted: bool,
        code: u16,
        enhanced: Option<String>,
        text: String,
    ) -> SmtpEvent {
        SmtpEvent::Message {
            via: via.into(),
            size,
            accepted,
            code,
            enhanced,
            text,
            mail_from: self.mail_from,
            rcpt_to: self.rcpt_to,
            rcpt_count: self.rcpt_count,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    Desynced,
    /// STARTTLS accepted: input is TLS and ignored.
    Tls,
}

#[derive(Debug, Default)]
struct ClientState {
    /// Bytes of the client stream parsed so far (held bytes excluded).
    off: u64,
    mode: ClientMode,
    line: Vec<u8>,
    line_start: u64,
    /// The current line is a SASL response (decided at its first byte).
    line_sasl: bool,
    /// Bytes after STARTTLS, until the reply.
    hold: Vec<u8>,
}

#[derive(Debug, Default)]
enum ClientMode {
    #[default]
    Command,
    Body(Body),
    Bdat {
        remaining: u64,
    },
    Hold,
}

#[derive(Debug, Default)]
struct Body {
    state: BodyState,
    /// Wire bytes consumed so far (terminator included once seen).
    total: u64,
    lines: u64,
    bare_lf: bool,
}

#[derive(Debug, Default, Clone, Copy)]
enum BodyState {
    #[default]
    LineStart,
    Mid,
    MidCr,
    Dot,
    DotCr,
}

#[derive(Debug, Default)]
struct ServerState {
    off: u64,
    line: Vec<u8>,
    line_start: u64,
    reply: Option<Reply>,
    reply_bytes: usize,
}

#[derive(Debug)]
struct Pending {
    kind: PendingKind,
    label: String,
}

impl Pending {
    /// A line after this one, sent before its reply, can only be SASL data:
    /// an AUTH without initial response (its 334 is due) or a SASL response
    /// other than the `*` that cancels.
    fn expects_sasl_next(&self) -> bool {
        match self.kind {
            PendingKind::Auth => !self.label.ends_with("[redacted]"),
            PendingKind::Sasl => self.label != "*",
            _ => false,
        }
    }
}

#[derive(Debug)]
enum PendingKind {
    /// MAIL FROM, with its reverse-path.
    Mail(Option<String>),
    /// RCPT TO, with its forward-path.
    Rcpt(Option<String>),
    /// RSET: a 250 ends the transaction.
    Reset,
    Ehlo,
    StartTls,
    Data,
    EndOfData {
        size: u64,
    },
    Bdat {
        last: bool,
        total: u64,
    },
    Auth,
    Sasl,
    Other,
}

/// Outcome of a complete server reply.
enum ReplyOutcome {
    Continue,
    StartTls,
}

fn is_bad_byte(b: u8) -> bool {
    (b < 0x20 && b != b'\t' && b != b'\r') || b == 0x7f
}

fn push_mark(marks: &mut Vec<Mark>, range: std::ops::Range<usize>, kind: MarkKind) {
    if range.is_empty() {
        return;
    }
    match marks.last_mut() {
        Some(last) if last.kind == kind && last.range.end == range.start => {
            last.range.end = range.end;
        }
        _ => marks.push(Mark { range, kind }),
    }
}

impl SmtpObserver {
    /// An observer for the conversation inside TLS after a STARTTLS (intercept
    /// mode decrypts it): no banner comes, the first reply answers the
    /// client's first command (its new EHLO).
    pub fn after_starttls(limits: SmtpLimits) -> Self {
        let mut o = SmtpObserver::new(limits);
        o.banner_seen = true;
        o
    }

    /// A fresh observer for one session, at the start of the connection.
    pub fn new(limits: SmtpLimits) -> Self {
        SmtpObserver {
            limits,
            state: State::Running,
            client: ClientState::default(),
            server: ServerState::default(),
            pending: VecDeque::new(),
            banner_seen: false,
            sasl_active: false,
            bdat_total: 0,
            bare_lf_noted: (false, false),
            envelope: Envelope::default(),
        }
    }

    /// Feed bytes sent by `side`, in the order the relay saw them (the two
    /// directions are interleaved causally: a server's 354 is always fed
    /// before the body it invites). Appends events to `out` and byte-range
    /// marks (relative to `data`) to `marks`.
    pub fn feed(
        &mut self,
        side: Side,
        data: &[u8],
        out: &mut Vec<SmtpEvent>,
        marks: &mut Vec<Mark>,
    ) -> Progress {
        if self.state != State::Running {
            return Progress::Continue;
        }
        match side {
            Side::Client => {
                self.client_bytes(data, out, marks);
                Progress::Continue
            }
            Side::Server => self.server_bytes(data, out),
        }
    }

    /// The observer lost sync (an `smtp.desync` was emitted) and ignores input.
    pub fn is_desynced(&self) -> bool {
        self.state == State::Desynced
    }

    /// Bytes currently held in buffers (line buffers, STARTTLS hold, pending
    /// commands, the reply being assembled): bounded by the limits.
    pub fn buffered_bytes(&self) -> usize {
        self.client.line.capacity()
            + self.server.line.capacity()
            + self.client.hold.capacity()
            + self
                .pending
                .iter()
                .map(|p| p.label.capacity() + std::mem::size_of::<Pending>())
                .sum::<usize>()
            + self.server.reply.as_ref().map_or(0, |r| {
                r.lines.iter().chain(&r.texts).map(String::capacity).sum()
            })
    }

    fn running(&self) -> bool {
        self.state == State::Running
    }

    fn desync(&mut self, side: Side, reason: String, offset: u64, out: &mut Vec<SmtpEvent>) {
        if self.state == State::Running {
            out.push(SmtpEvent::Desync {
                side,
                reason,
                offset,
            });
            self.state = State::Desynced;
            // Nothing buffered is useful any more.
            self.client.line = Vec::new();
            self.client.hold = Vec::new();
            self.server.line = Vec::new();
            self.server.reply = None;
            self.pending.clear();
        }
    }

    fn note_bare_lf(&mut self, side: Side, offset: u64, out: &mut Vec<SmtpEvent>) {
        let noted = match side {
            Side::Client => &mut self.bare_lf_noted.0,
            Side::Server => &mut self.bare_lf_noted.1,
        };
        if !*noted {
            *noted = true;
            out.push(SmtpEvent::BareLf { side, offset });
        }
    }

    // ----- client side -------------------------------------------------

    fn client_bytes(&mut self, data: &[u8], out: &mut Vec<SmtpEvent>, marks: &mut Vec<Mark>) {
        let mut i = 0;
        while i < data.len() && self.running() {
            let rest = data.get(i..).unwrap_or_default();
            let n = match &mut self.client.mode {
                ClientMode::Command => self.client_line(rest, i, out, marks),
                ClientMode::Body(_) => self.client_body(rest, i, out, marks),
                ClientMode::Bdat { remaining } => {
                    let n = usize::try_from(*remaining).map_or(rest.len(), |r| r.min(rest.len()));
                    *remaining -= n as u64;
                    if *remaining == 0 {
                        self.client.mode = ClientMode::Command;
                    }
                    push_mark(marks, i..i + n, MarkKind::Body);
                    self.client.off += n as u64;
                    n
                }
                ClientMode::Hold => {
                    let room = self
                        .limits
                        .max_handoff
                        .saturating_sub(self.client.hold.len());
                    if rest.len() > room {
                        let offset = self.client.off + self.limits.max_handoff as u64;
                        let reason = format!(
                            "client sent more than {} bytes after STARTTLS before the server replied",
                            self.limits.max_handoff
                        );
                        self.desync(Side::Client, reason, offset, out);
                    } else {
                        self.client.hold.extend_from_slice(rest);
                        push_mark(marks, i..i + rest.len(), MarkKind::Held);
                    }
                    rest.len()
                }
            };
            i += n;
        }
    }

    /// Consumes bytes of a command line (up to and including its LF).
    fn client_line(
        &mut self,
        rest: &[u8],
        base: usize,
        out: &mut Vec<SmtpEvent>,
        marks: &mut Vec<Mark>,
    ) -> usize {
        let (chunk, complete) = match memchr::memchr(b'\n', rest) {
            Some(p) => (rest.get(..p).unwrap_or_default(), true),
            None => (rest, false),
        };
        if self.client.line.is_empty() {
            self.client.line_start = self.client.off;
            self.client.line_sasl = self.sasl_active || self.sasl_pipelined();
        }
        let before = self.client.line.len();
        let start = self.client.line_start;
        let mut fail = None;
        // What the line may hold: up to the first byte that is not text, and
        // no further than the line-length limit (longer for AUTH lines, whose
        // initial response can be long). At one position the limit wins.
        let bad = chunk.iter().position(|&b| is_bad_byte(b));
        let text_end = bad.unwrap_or(chunk.len());
        // One past the last line position examined (the bad byte included).
        let reach = before + bad.map_or(chunk.len(), |k| k + 1);
        let max_line = self.limits.max_line;
        let limit = if reach > max_line && self.auth_line(chunk, max_line) {
            max_line.max(AUTH_LINE)
        } else {
            max_line
        };
        let mut keep = text_end;
        if reach > limit {
            keep = limit.saturating_sub(before);
            let reason = format!("client line longer than {limit} bytes without CRLF");
            fail = Some((reason, start + limit as u64));
        } else if let (0, Some(&b)) = (before, chunk.first()) {
            if (0x14..=0x17).contains(&b) {
                let reason = if b == 0x16 {
                    "client sent a TLS ClientHello on a cleartext SMTP connection (implicit TLS / port 465 client?)".to_string()
                } else {
                    format!("client sent a TLS record (content type {b}) on a cleartext SMTP connection")
                };
                keep = 0;
                fail = Some((reason, start));
            }
        }
        if fail.is_none() {
            if let Some(k) = bad {
                let b = chunk.get(k).copied().unwrap_or_default();
                let reason =
                    format!("client sent binary data (byte 0x{b:02x}) in command mode: not SMTP");
                fail = Some((reason, start + (before + k) as u64));
            }
        }
        self.client
            .line
            .extend_from_slice(chunk.get(..keep).unwrap_or_default());
        // Secret bytes: the whole SASL line, or the AUTH initial response,
        // up to the first CR.
        let after = self.client.line.len();
        let secret_start = if self.client.line_sasl {
            Some(0)
        } else {
            auth_secret_start(&self.client.line)
        };
        if let Some(s) = secret_start {
            let tail = self.client.line.get(s..).unwrap_or_default();
            let e = s + tail.iter().position(|&b| b == b'\r').unwrap_or(tail.len());
            let (lo, hi) = (s.max(before), e.min(after));
            if lo < hi {
                push_mark(
                    marks,
                    base + (lo - before)..base + (hi - before),
                    MarkKind::Secret,
                );
            }
        }
        // Secret bytes before a failure are still marked.
        if let Some((reason, offset)) = fail {
            self.desync(Side::Client, reason, offset, out);
            return rest.len();
        }
        let consumed = chunk.len() + usize::from(complete);
        self.client.off += consumed as u64;
        if complete {
            let line = std::mem::take(&mut self.client.line);
            self.client_line_done(&line, out);
            if self.running() {
                self.client.line = line;
                self.client.line.clear();
            }
        }
        consumed
    }

    fn client_line_done(&mut self, raw: &[u8], out: &mut Vec<SmtpEvent>) {
        let start = self.client.line_start;
        let content = match raw.strip_suffix(b"\r") {
            Some(c) => c,
            None => {
                self.note_bare_lf(Side::Client, start + raw.len() as u64, out);
                raw
            }
        };
        let len = raw.len() as u64 + 1;
        if self.client.line_sasl {
            let cancel = content == b"*";
            out.push(SmtpEvent::AuthData {
                side: Side::Client,
                bytes: content.len() as u64,
                cancel,
            });
            let label = if cancel { "*" } else { "[redacted]" };
            self.push_pending(PendingKind::Sasl, label.into(), out);
            return;
        }
        let cmd = Command::parse(content);
        if let Some(reason) = cmd.http_request() {
            self.desync(Side::Client, reason, start, out);
            return;
        }
        let path = cmd.path();
        out.push(SmtpEvent::Command {
            verb: cmd.verb.clone(),
            arg: cmd.arg.clone(),
            len,
            address: path.as_ref().map(|(a, _)| a.clone()),
            params: path.as_ref().map(|(_, p)| p.clone()).unwrap_or_default(),
        });
        if cmd.is_masked() {
            out.push(SmtpEvent::Masked {
                side: Side::Client,
                what: "command".into(),
                sample: cmd.label(),
            });
        }
        let kind = match cmd.verb.as_str() {
            "EHLO" | "HELO" | "LHLO" => {
                out.push(SmtpEvent::Ehlo {
                    verb: cmd.verb.clone(),
                    name: cmd.arg.trim().to_string(),
                });
                if cmd.verb == "HELO" {
                    PendingKind::Other
                } else {
                    PendingKind::Ehlo
                }
            }
            "AUTH" => {
                if let Some((mechanism, initial_response)) = cmd.auth() {
                    out.push(SmtpEvent::Auth {
                        mechanism,
                        initial_response,
                    });
                }
                PendingKind::Auth
            }
            "STARTTLS" => {
                self.client.mode = ClientMode::Hold;
                PendingKind::StartTls
            }
            "DATA" => PendingKind::Data,
            "BDAT" => match cmd.bdat() {
                Some(Ok((size, last))) => {
                    out.push(SmtpEvent::Bdat { size, last });
                    self.bdat_total = self.bdat_total.saturating_add(size);
                    let total = self.bdat_total;
                    if last {
                        self.bdat_total = 0;
                    }
                    if size > 0 {
                        self.client.mode = ClientMode::Bdat { remaining: size };
                    }
                    PendingKind::Bdat { last, total }
                }
                None => PendingKind::Other,
                Some(Err(reason)) => {
                    self.desync(Side::Client, reason, start, out);
                    return;
                }
            },
            "MAIL" => {
                self.bdat_total = 0;
                PendingKind::Mail(path.map(|(a, _)| a))
            }
            "RCPT" => PendingKind::Rcpt(path.map(|(a, _)| a)),
            "RSET" => {
                self.bdat_total = 0;
                PendingKind::Reset
            }
            _ => PendingKind::Other,
        };
        self.push_pending(kind, cmd.label(), out);
    }

    /// Whether the client line being read (`self.client.line` then `chunk`)
    /// is SASL data or an `AUTH` command, judged on its first bytes within
    /// the first `max_line` (as when read byte by byte).
    fn auth_line(&self, chunk: &[u8], max_line: usize) -> bool {
        if self.client.line_sasl {
            return true;
        }
        let mut head = [0u8; 5];
        let n = self
            .client
            .line
            .iter()
            .chain(chunk)
            .take(5.min(max_line))
            .zip(head.iter_mut())
            .map(|(b, h)| *h = *b)
            .count();
        n == 5 && head[..4].eq_ignore_ascii_case(b"AUTH") && matches!(head[4], b' ' | b'\t')
    }

    /// The client sent a line before the reply that would let it (AUTH is
    /// not pipelinable, RFC 4954): if the newest unanswered line opened or
    /// continued a SASL exchange, the next one is treated as a secret. Wrong
    /// only for a client that breaks the rule, and then it errs towards
    /// redacting.
    fn sasl_pipelined(&self) -> bool {
        self.pending.back().is_some_and(Pending::expects_sasl_next)
    }

    fn push_pending(&mut self, kind: PendingKind, label: String, out: &mut Vec<SmtpEvent>) {
        if self.pending.len() >= MAX_PENDING {
            let reason = format!(
                "client sent more than {MAX_PENDING} commands without a reply: not SMTP pipelining"
            );
            let offset = self.client.off;
            self.desync(Side::Client, reason, offset, out);
            return;
        }
        self.pending.push_back(Pending { kind, label });
    }

    /// Scans DATA body bytes; never keeps them.
    fn client_body(
        &mut self,
        rest: &[u8],
        base: usize,
        out: &mut Vec<SmtpEvent>,
        marks: &mut Vec<Mark>,
    ) -> usize {
        let ClientMode::Body(body) = &mut self.client.mode else {
            return 0;
        };
        let mut end = None;
        let mut j = 0;
        while let Some(&b) = rest.get(j) {
            if matches!(body.state, BodyState::Mid) && b != b'\r' && b != b'\n' {
                // Inside a line only CR and LF matter: jump to the next one.
                match memchr::memchr2(b'\r', b'\n', rest.get(j..).unwrap_or_default()) {
                    Some(k) => j += k,
                    None => break, // the chunk ends mid-line
                }
                continue;
            }
            j += 1;
            body.state = match (body.state, b) {
                (BodyState::DotCr, b'\n') => {
                    end = Some(j);
                    break;
                }
                (BodyState::LineStart, b'.') => BodyState::Dot,
                (BodyState::Dot, b'\r') => BodyState::DotCr,
                (_, b'\r') => BodyState::MidCr,
                (BodyState::MidCr, b'\n') => {
                    body.lines += 1;
                    BodyState::LineStart
                }
                (_, b'\n') => {
                    body.lines += 1;
                    body.bare_lf = true;
                    BodyState::LineStart
                }
                _ => BodyState::Mid,
            };
        }
        let consumed = end.unwrap_or(rest.len());
        body.total += consumed as u64;
        push_mark(marks, base..base + consumed, MarkKind::Body);
        self.client.off += consumed as u64;
        if end.is_some() {
            let bytes = body.total.saturating_sub(3);
            let (lines, bare_lf) = (body.lines, body.bare_lf);
            self.client.mode = ClientMode::Command;
            out.push(SmtpEvent::Data {
                bytes,
                lines,
                bare_lf,
            });
            self.push_pending(
                PendingKind::EndOfData { size: bytes },
                "<end of data>".into(),
                out,
            );
        }
        consumed
    }

    // ----- server side -------------------------------------------------

    fn server_bytes(&mut self, data: &[u8], out: &mut Vec<SmtpEvent>) -> Progress {
        let mut i = 0;
        while i < data.len() && self.running() {
            let rest = data.get(i..).unwrap_or_default();
            let (chunk, complete) = match memchr::memchr(b'\n', rest) {
                Some(p) => (rest.get(..p).unwrap_or_default(), true),
                None => (rest, false),
            };
            if self.server.line.is_empty() {
                self.server.line_start = self.server.off;
            }
            let before = self.server.line.len();
            let start = self.server.line_start;
            for (j, &b) in chunk.iter().enumerate() {
                let pos = before + j;
                let reason = if pos >= self.limits.max_line {
                    Some((
                        format!(
                            "server line longer than {} bytes without CRLF",
                            self.limits.max_line
                        ),
                        start + self.limits.max_line as u64,
                    ))
                } else if pos == 0 && (0x14..=0x17).contains(&b) {
                    let what = if b == 0x15 { "alert" } else { "record" };
                    Some((format!("server sent a TLS {what} (content type {b}) on a cleartext SMTP connection (it expects implicit TLS, e.g. port 465?)"), start))
                } else if is_bad_byte(b) {
                    Some((
                        format!("server sent binary data (byte 0x{b:02x}) where a reply line was expected"),
                        start + pos as u64,
                    ))
                } else {
                    None
                };
                if let Some((reason, offset)) = reason {
                    self.desync(Side::Server, reason, offset, out);
                    return Progress::Continue;
                }
            }
            self.server.line.extend_from_slice(chunk);
            let consumed = chunk.len() + usize::from(complete);
            self.server.off += consumed as u64;
            i += consumed;
            if complete {
                let line = std::mem::take(&mut self.server.line);
                let outcome = self.server_line_done(&line, out);
                if self.running() {
                    self.server.line = line;
                    self.server.line.clear();
                }
                if let ReplyOutcome::StartTls = outcome {
                    self.state = State::Tls;
                    let client_leftover = std::mem::take(&mut self.client.hold);
                    let server_leftover = data.get(i..).unwrap_or_default().to_vec();
                    self.client.line = Vec::new();
                    self.server.line = Vec::new();
                    self.pending.clear();
                    return Progress::StartTls {
                        client_leftover,
                        server_leftover,
                    };
                }
            }
        }
        Progress::Continue
    }

    fn server_line_done(&mut self, raw: &[u8], out: &mut Vec<SmtpEvent>) -> ReplyOutcome {
        let start = self.server.line_start;
        let content = match raw.strip_suffix(b"\r") {
            Some(c) => c,
            None => {
                self.note_bare_lf(Side::Server, start + raw.len() as u64, out);
                raw
            }
        };
        let line = match reply::parse_reply_line(content) {
            Ok(l) => l,
            Err(reason) => {
                self.desync(Side::Server, reason, start, out);
                return ReplyOutcome::Continue;
            }
        };
        let acc = self.server.reply.get_or_insert_with(|| Reply {
            code: line.code,
            ..Reply::default()
        });
        acc.lines
            .push(String::from_utf8_lossy(content).into_owned());
        acc.texts.push(line.text);
        self.server.reply_bytes += content.len();
        let too_many = acc.lines.len() > MAX_REPLY_LINES;
        let max_bytes = self.limits.max_line.saturating_mul(16);
        if too_many || self.server.reply_bytes > max_bytes {
            let reason = format!(
                "multi-line reply longer than {MAX_REPLY_LINES} lines or {max_bytes} bytes"
            );
            self.desync(Side::Server, reason, start, out);
            return ReplyOutcome::Continue;
        }
        if line.more {
            return ReplyOutcome::Continue;
        }
        self.server.reply_bytes = 0;
        match self.server.reply.take() {
            Some(reply) => self.reply_done(reply, out),
            None => ReplyOutcome::Continue,
        }
    }

    fn reply_done(&mut self, mut reply: Reply, out: &mut Vec<SmtpEvent>) -> ReplyOutcome {
        let (enhanced, text) = reply.enhanced_and_text();
        let code = reply.code;
        if !self.banner_seen {
            self.banner_seen = true;
            let first_text = reply.texts.first().map(String::as_str).unwrap_or_default();
            let (_, after_code) = reply::split_enhanced(first_text);
            let host = reply::host_of(after_code);
            let masked = reply::is_star_masked(first_text);
            let sample = reply.lines.first().cloned().unwrap_or_default();
            out.push(SmtpEvent::Banner {
                code,
                enhanced,
                text,
                lines: reply.lines,
                host,
            });
            if masked {
                out.push(SmtpEvent::Masked {
                    side: Side::Server,
                    what: "banner".into(),
                    sample,
                });
            }
            return ReplyOutcome::Continue;
        }
        let pending = self.pending.pop_front();
        let (kind, label) = match pending {
            Some(p) => (p.kind, Some(p.label)),
            None => (PendingKind::Other, None),
        };
        let in_auth = matches!(kind, PendingKind::Auth | PendingKind::Sasl);
        if in_auth && code == 334 {
            let bytes: usize = reply.texts.iter().map(|t| t.trim().len()).sum();
            out.push(SmtpEvent::Reply {
                code,
                enhanced: None,
                text: "[redacted]".into(),
                lines: vec!["334 [redacted]".into()],
                command: label,
            });
            out.push(SmtpEvent::AuthData {
                side: Side::Server,
                bytes: bytes as u64,
                cancel: false,
            });
            self.sasl_active = true;
            return ReplyOutcome::Continue;
        }
        // The reply's parts move into its event. The events below that
        // repeat its code and text take copies from it (`reply_words`); the
        // EHLO arm alone reads the raw lines again, so they stay for it.
        let lines = if matches!(kind, PendingKind::Ehlo) && code == 250 {
            reply.lines.clone()
        } else {
            std::mem::take(&mut reply.lines)
        };
        out.push(SmtpEvent::Reply {
            code,
            enhanced,
            text,
            lines,
            command: label,
        });
        let ok = (200..300).contains(&code);
        match kind {
            PendingKind::Auth | PendingKind::Sasl => self.sasl_active = false,
            PendingKind::Ehlo if code == 250 => {
                self.envelope = Envelope::default();
                out.push(reply::capabilities(&reply));
                let first = reply.texts.first().map(String::as_str).unwrap_or_default();
                if reply::is_star_masked(first) {
                    out.push(SmtpEvent::Masked {
                        side: Side::Server,
                        what: "ehlo".into(),
                        sample: reply.lines.first().cloned().unwrap_or_default(),
                    });
                }
                let masked_cap = reply.texts.iter().zip(&reply.lines).skip(1).find(|(t, _)| {
                    reply::is_x_masked(t.split_whitespace().next().unwrap_or_default())
                });
                if let Some((_, line)) = masked_cap {
                    out.push(SmtpEvent::Masked {
                        side: Side::Server,
                        what: "capabilities".into(),
                        sample: line.clone(),
                    });
                }
            }
            PendingKind::StartTls => {
                let accepted = code == 220;
                let (enhanced, text) = reply_words(out);
                out.push(SmtpEvent::StartTls {
                    code,
                    accepted,
                    enhanced,
                    text,
                });
                if accepted {
                    return ReplyOutcome::StartTls;
                }
                // Refused: whatever the client sent meanwhile is SMTP.
                // Marks for these bytes cannot be expressed (they were fed
                // earlier), so they are dropped; RFC 3207 forbids sending
                // anything before the reply anyway.
                self.client.mode = ClientMode::Command;
                let held = std::mem::take(&mut self.client.hold);
                let mut ignored = Vec::new();
                self.client_bytes(&held, out, &mut ignored);
            }
            PendingKind::Data if code == 354 => {
                self.client.mode = ClientMode::Body(Body::default());
            }
            PendingKind::Mail(path) if ok => {
                self.envelope = Envelope {
                    mail_from: path,
                    ..Envelope::default()
                };
            }
            PendingKind::Rcpt(Some(path)) if ok => {
                self.envelope.rcpt_count += 1;
                if self.envelope.rcpt_to.len() < super::MAX_RCPTS {
                    self.envelope.rcpt_to.push(path);
                }
            }
            PendingKind::Reset if ok => self.envelope = Envelope::default(),
            PendingKind::EndOfData { size } => {
                let env = std::mem::take(&mut self.envelope);
                let (enhanced, text) = reply_words(out);
                out.push(env.message("DATA", size, ok, code, enhanced, text));
            }
            PendingKind::Bdat { last: true, total } => {
                let env = std::mem::take(&mut self.envelope);
                let (enhanced, text) = reply_words(out);
                out.push(env.message("BDAT", total, ok, code, enhanced, text));
            }
            _ => {}
        }
        ReplyOutcome::Continue
    }
}

/// The enhanced code and text of the `smtp.reply` just pushed, for the
/// events that repeat them (`smtp.starttls`, `smtp.message`).
fn reply_words(out: &[SmtpEvent]) -> (Option<String>, String) {
    match out.last() {
        Some(SmtpEvent::Reply { enhanced, text, .. }) => (enhanced.clone(), text.clone()),
        _ => (None, String::new()),
    }
}
