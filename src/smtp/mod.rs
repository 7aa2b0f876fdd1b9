//! The sans-IO SMTP observer: it watches the cleartext part of an SMTP
//! conversation (banner, EHLO, capabilities, commands and replies, DATA/BDAT
//! bodies, AUTH, STARTTLS) and turns it into [`SmtpEvent`]s.
//!
//! It owns command/reply parsing, pipelining pairing, body scanning and the
//! byte-range [`Mark`]s that let the capture writer drop bodies and redact
//! credentials. It must not touch sockets, block, buffer unbounded input, or
//! ever let AUTH credentials or message bodies reach an event.
//!
//! ```text
//!   client bytes ─▶ feed(Client) ─┐             ┌─▶ SmtpEvent (smtp.command, smtp.data, …)
//!                                 ├─ observer ──┼─▶ Mark { Body | Secret } (relative to `data`)
//!   server bytes ─▶ feed(Server) ─┘  (FIFO of   └─▶ Progress::StartTls { leftovers } → tls::
//!                                    pending commands)
//! ```
//!
//! Client side modes: command lines → (354 to DATA) body until `CRLF.CRLF` →
//! command lines; `BDAT n` → exactly `n` payload bytes; `STARTTLS` → hold the
//! client's bytes until the reply (220: hand over to TLS; else re-parse them).
//! Every reply answers the oldest pending command (PIPELINING); the first
//! reply of the session is the banner.
//!
//! A confused observer emits one `smtp.desync` with a specific reason and
//! stops; it never panics whatever the peers send.
//!
//! Limits of the marks (callers that redact must know them):
//! - after a desync no marks are produced at all (the rest of the stream is
//!   unknown); secret bytes of the line being read when it happened are marked;
//! - client bytes held after a *refused* STARTTLS are re-parsed when the
//!   refusal arrives, in a server feed: marks for them cannot be expressed
//!   and are dropped (RFC 3207 forbids sending them, so this is rare).
//!
//! A body ends at `.\r\n` at the start of a line, where a line starts after
//! any LF (Postfix's leniency); `smtp.data` reports bare LFs seen in it.

mod command;
mod observer;
mod reply;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

use crate::event::Side;

pub use observer::SmtpObserver;

/// Accepted recipients listed per message in `smtp.message` (`rcpt_count`
/// counts them all): bounds memory whatever a client sends.
pub const MAX_RCPTS: usize = 100;

/// Bounds on what the observer buffers, whatever a peer sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmtpLimits {
    /// Longest command or reply line accepted (bytes, CRLF excluded) before
    /// the observer gives up on the stream. RFC 5321 says 512; real MTAs
    /// send longer lines, so the default (4096) is lenient. AUTH lines may
    /// reach 12288 bytes (RFC 4954) whatever this says.
    pub max_line: usize,
    /// Most client bytes held between a `STARTTLS` command and its reply
    /// (they are TLS if the server says 220, SMTP otherwise). Default 16 KiB.
    pub max_handoff: usize,
}

impl Default for SmtpLimits {
    fn default() -> Self {
        SmtpLimits {
            max_line: 4096,
            max_handoff: 16 * 1024,
        }
    }
}

/// A byte range of the `data` slice given to one [`SmtpObserver::feed`] call
/// that the capture writer must treat specially.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    /// The bytes concerned, relative to the `data` slice of that feed call.
    pub range: std::ops::Range<usize>,
    /// Why they are marked.
    pub kind: MarkKind,
}

/// What a [`Mark`] covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkKind {
    /// DATA or BDAT payload bytes, including dot-stuffing and the final
    /// `.\r\n` (message content: never stored unless asked).
    Body,
    /// AUTH credentials: the initial response of an AUTH command and every
    /// client SASL line after a 334 (CR/LF excluded).
    Secret,
    /// Client bytes sent after STARTTLS, before its reply (RFC 3207 forbids
    /// it): TLS if the server says 220, unmarked SMTP otherwise, so whoever
    /// stores them must wait for the reply.
    Held,
}

/// What the caller must do after a [`SmtpObserver::feed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Keep feeding cleartext SMTP.
    Continue,
    /// The server accepted STARTTLS (220 to a STARTTLS command): from now on
    /// the stream is TLS. Carries bytes already fed that belong to TLS, per
    /// side (server bytes after the 220 line; client bytes sent after the
    /// STARTTLS line before the reply, which the observer held, bounded by
    /// `max_handoff`). After this the observer ignores further input.
    StartTls {
        /// Client bytes fed after the STARTTLS line (the start of the ClientHello).
        client_leftover: Vec<u8>,
        /// Server bytes fed after the 220 line in the same feed call.
        server_leftover: Vec<u8>,
    },
}

/// Facts about the cleartext SMTP conversation. The JSON form is flat, with
/// the dotted name in `event`; names and fields are a public contract.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event")]
pub enum SmtpEvent {
    /// The server's greeting (the first reply of the session).
    #[serde(rename = "smtp.banner")]
    Banner {
        /// Reply code (220 normally; 421/554 when the server refuses us).
        code: u16,
        /// Enhanced status code (`4.7.0`) when the text starts with one.
        enhanced: Option<String>,
        /// Texts of all lines joined with a single space.
        text: String,
        /// Raw lines without CRLF.
        lines: Vec<String>,
        /// First word of the first line if it looks like a host name: what
        /// the server calls itself (compare with the certificate names).
        host: Option<String>,
    },
    /// The client's EHLO/HELO/LHLO (also reported as `smtp.command`).
    #[serde(rename = "smtp.ehlo")]
    Ehlo {
        /// `EHLO`, `HELO` or `LHLO` (upper-cased).
        verb: String,
        /// The name the client gave for itself.
        name: String,
    },
    /// A parsed 250 reply to EHLO/LHLO: what the server offers.
    #[serde(rename = "smtp.capabilities")]
    Capabilities {
        /// Reply code (250).
        code: u16,
        /// First word of the first line (the server's own name).
        host: Option<String>,
        /// Every keyword line as sent, after the first line.
        capabilities: Vec<String>,
        /// STARTTLS offered: if false, the client cannot encrypt.
        starttls: bool,
        /// The SIZE limit, if announced with a value.
        size: Option<u64>,
        /// AUTH mechanisms offered (upper-cased; `AUTH=` lines included).
        auth: Vec<String>,
        /// PIPELINING offered.
        pipelining: bool,
        /// CHUNKING (BDAT) offered.
        chunking: bool,
        /// 8BITMIME offered.
        eightbitmime: bool,
        /// SMTPUTF8 offered.
        smtputf8: bool,
        /// REQUIRETLS (RFC 8689) offered.
        requiretls: bool,
        /// ENHANCEDSTATUSCODES offered.
        enhancedstatuscodes: bool,
    },
    /// A client command line (credentials redacted).
    #[serde(rename = "smtp.command")]
    Command {
        /// The verb, upper-cased.
        verb: String,
        /// The argument text; for AUTH the initial response is `[redacted]`.
        arg: String,
        /// Bytes on the wire, line ending included.
        len: u64,
        /// MAIL FROM / RCPT TO: the path without angle brackets (`""` for the
        /// null reverse-path `<>`); null for other commands.
        #[serde(default)]
        address: Option<String>,
        /// MAIL FROM / RCPT TO: the ESMTP parameters (`SIZE=1024`, `BODY=8BITMIME`).
        #[serde(default)]
        params: Vec<String>,
    },
    /// A complete (possibly multi-line) server reply, after the banner.
    #[serde(rename = "smtp.reply")]
    Reply {
        /// Reply code.
        code: u16,
        /// Enhanced status code (`5.7.3`) when the text starts with one.
        enhanced: Option<String>,
        /// Texts of all lines joined with a single space (enhanced codes stripped).
        text: String,
        /// Raw lines without CRLF.
        lines: Vec<String>,
        /// The command line this answers (redacted), `<end of data>` after a
        /// DATA body, or none if nothing was pending.
        command: Option<String>,
    },
    /// A DATA body went by (its content is never reported).
    #[serde(rename = "smtp.data")]
    Data {
        /// Body bytes between the 354 and the terminating `.\r\n` (exclusive).
        bytes: u64,
        /// Lines in the body.
        lines: u64,
        /// Some body line ended with a bare LF (RFC 5321 forbids it; see
        /// "SMTP smuggling").
        bare_lf: bool,
    },
    /// A BDAT chunk header (the payload is never reported).
    #[serde(rename = "smtp.bdat")]
    Bdat {
        /// Payload size announced.
        size: u64,
        /// `LAST` was given.
        last: bool,
    },
    /// The reply that decided a message's fate (after `CRLF.CRLF`, or to BDAT LAST).
    #[serde(rename = "smtp.message")]
    Message {
        /// `DATA` or `BDAT`.
        via: String,
        /// Message size on the wire (DATA body bytes, or sum of BDAT chunks).
        size: u64,
        /// The server took responsibility for it (2xx).
        accepted: bool,
        /// Reply code.
        code: u16,
        /// Enhanced status code, if any.
        enhanced: Option<String>,
        /// Reply text.
        text: String,
        /// The transaction's reverse-path (accepted MAIL FROM), `""` for `<>`.
        #[serde(default)]
        mail_from: Option<String>,
        /// The recipients the server accepted (RCPT TO with a 2xx reply), at
        /// most [`MAX_RCPTS`]; `rcpt_count` counts them all.
        #[serde(default)]
        rcpt_to: Vec<String>,
        /// How many recipients the server accepted.
        #[serde(default)]
        rcpt_count: u64,
    },
    /// The client started SASL authentication.
    #[serde(rename = "smtp.auth")]
    Auth {
        /// Mechanism, upper-cased (`PLAIN`, `LOGIN`, `XOAUTH2`…).
        mechanism: String,
        /// The AUTH line carried an initial response (redacted everywhere).
        initial_response: bool,
    },
    /// One SASL line (a server 334 challenge or a client response); sizes only.
    #[serde(rename = "smtp.auth_data")]
    AuthData {
        /// Who sent it.
        side: Side,
        /// Bytes of payload (line ending excluded).
        bytes: u64,
        /// The client cancelled the exchange with `*`.
        #[serde(default)]
        cancel: bool,
    },
    /// The reply to STARTTLS.
    #[serde(rename = "smtp.starttls")]
    StartTls {
        /// Reply code (220 = go ahead).
        code: u16,
        /// The server agreed to start TLS.
        accepted: bool,
        /// Enhanced status code, if any (`4.7.0` for "TLS not available").
        enhanced: Option<String>,
        /// Reply text.
        text: String,
    },
    /// Something looks masked by a firewall's SMTP inspection (Cisco PIX/ASA
    /// "fixup smtp"/ESMTP inspection): a common reason STARTTLS disappears.
    #[serde(rename = "smtp.masked")]
    Masked {
        /// Who sent the masked bytes (as seen by the proxy).
        side: Side,
        /// `banner`, `ehlo`, `command` or `capabilities`.
        what: String,
        /// The masked line as seen.
        sample: String,
    },
    /// A line ended with a bare LF instead of CRLF (reported once per side).
    #[serde(rename = "smtp.bare_lf")]
    BareLf {
        /// Who sent it.
        side: Side,
        /// Byte offset of the LF in that side's stream.
        offset: u64,
    },
    /// The observer lost track of the conversation and stopped observing.
    #[serde(rename = "smtp.desync")]
    Desync {
        /// Whose bytes confused it.
        side: Side,
        /// What was wrong, specifically.
        reason: String,
        /// Byte offset in that side's stream.
        offset: u64,
    },
}

impl SmtpEvent {
    /// The dotted event name, as in the JSON `event` field.
    pub fn name(&self) -> &'static str {
        #[allow(unreachable_patterns)]
        match self {
            SmtpEvent::Banner { .. } => "smtp.banner",
            SmtpEvent::Ehlo { .. } => "smtp.ehlo",
            SmtpEvent::Capabilities { .. } => "smtp.capabilities",
            SmtpEvent::Command { .. } => "smtp.command",
            SmtpEvent::Reply { .. } => "smtp.reply",
            SmtpEvent::Data { .. } => "smtp.data",
            SmtpEvent::Bdat { .. } => "smtp.bdat",
            SmtpEvent::Message { .. } => "smtp.message",
            SmtpEvent::Auth { .. } => "smtp.auth",
            SmtpEvent::AuthData { .. } => "smtp.auth_data",
            SmtpEvent::StartTls { .. } => "smtp.starttls",
            SmtpEvent::Masked { .. } => "smtp.masked",
            SmtpEvent::BareLf { .. } => "smtp.bare_lf",
            SmtpEvent::Desync { .. } => "smtp.desync",
        }
    }
}
