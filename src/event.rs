//! The event vocabulary: every fact smtptap learns is a typed, serde-serializable
//! [`Event`] carrying a timestamp and a session id.
//!
//! This module owns the envelope ([`Event`], [`Timestamp`], [`Side`]) and the
//! session-level events. Each analysis module owns its own vocabulary
//! (`smtp::SmtpEvent`, `tls::TlsEvent`, `cert::CertEvent`, …); [`EventKind`]
//! wraps them so that the JSON form is always flat:
//!
//! ```text
//! {"ts":"2026-11-23T21:07:14.123456Z","session":7,"event":"smtp.reply","code":250,...}
//! ```
//!
//! The JSON form is a public contract, documented in `docs/log-schema.md`.
//! This module must not do I/O.

use std::fmt;
use std::net::SocketAddr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Identifies one proxied connection; unique within one run of smtptap.
pub type SessionId = u64;

/// Which peer sent the bytes an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The SMTP client (the sending MTA) — bytes flowing client → server.
    Client,
    /// The SMTP server (the receiving MTA) — bytes flowing server → client.
    Server,
}

impl Side {
    /// The other peer.
    pub fn peer(self) -> Side {
        match self {
            Side::Client => Side::Server,
            Side::Server => Side::Client,
        }
    }

    /// The transcript arrow for bytes sent by this side (`->` client to server).
    pub fn arrow(self) -> &'static str {
        match self {
            Side::Client => "->",
            Side::Server => "<-",
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Client => "client",
            Side::Server => "server",
        })
    }
}

/// A wall-clock instant, serialized as RFC 3339 UTC with microseconds
/// (`2026-11-23T21:07:14.123456Z`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub SystemTime);

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        Timestamp(SystemTime::now())
    }

    /// Seconds (fractional) from `earlier` to `self`; 0 if `earlier` is later.
    pub fn since(&self, earlier: Timestamp) -> f64 {
        self.0
            .duration_since(earlier.0)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
    }

    /// RFC 3339 UTC with exactly six fractional digits.
    pub fn rfc3339(&self) -> String {
        let dt = time::OffsetDateTime::from(self.0);
        let fmt = time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
        );
        dt.format(&fmt)
            .unwrap_or_else(|_| String::from("1970-01-01T00:00:00.000000Z"))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rfc3339())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let dt = time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339)
            .map_err(serde::de::Error::custom)?;
        Ok(Timestamp(dt.into()))
    }
}

/// One fact about one session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    /// When the fact was observed (for wire facts: when the bytes were read).
    pub ts: Timestamp,
    /// The session the fact belongs to.
    pub session: SessionId,
    /// What happened; serialized flat, with the dotted name in `event`.
    #[serde(flatten)]
    pub kind: EventKind,
}

impl Event {
    /// Builds an event.
    pub fn new(ts: Timestamp, session: SessionId, kind: impl Into<EventKind>) -> Self {
        Event {
            ts,
            session,
            kind: kind.into(),
        }
    }

    /// The dotted event name (`smtp.reply`), as in the JSON `event` field.
    pub fn name(&self) -> String {
        serde_json::to_value(&self.kind)
            .ok()
            .and_then(|v| v.get("event").and_then(|e| e.as_str().map(String::from)))
            .unwrap_or_default()
    }
}

/// Every kind of event. Each module's vocabulary is wrapped untagged, so its
/// own `event` tag ends up at the top level of the JSON object.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EventKind {
    /// Session lifecycle and relay facts (this module).
    Session(SessionEvent),
    /// Cleartext SMTP facts (`smtp::`).
    Smtp(crate::smtp::SmtpEvent),
    /// TLS record/handshake facts (`tls::`).
    Tls(crate::tls::TlsEvent),
    /// Certificate, trust and name-check facts (`cert::`).
    Cert(crate::cert::CertEvent),
    /// Capture (pcapng) facts (`capture::`).
    Capture(crate::capture::CaptureEvent),
}

impl From<SessionEvent> for EventKind {
    fn from(e: SessionEvent) -> Self {
        EventKind::Session(e)
    }
}
impl From<crate::smtp::SmtpEvent> for EventKind {
    fn from(e: crate::smtp::SmtpEvent) -> Self {
        EventKind::Smtp(e)
    }
}
impl From<crate::tls::TlsEvent> for EventKind {
    fn from(e: crate::tls::TlsEvent) -> Self {
        EventKind::Tls(e)
    }
}
impl From<crate::cert::CertEvent> for EventKind {
    fn from(e: crate::cert::CertEvent) -> Self {
        EventKind::Cert(e)
    }
}
impl From<crate::capture::CaptureEvent> for EventKind {
    fn from(e: crate::capture::CaptureEvent) -> Self {
        EventKind::Capture(e)
    }
}

/// Session lifecycle and relay facts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event")]
pub enum SessionEvent {
    /// A client connected to the proxy.
    #[serde(rename = "session.open")]
    Open {
        /// The client's address.
        client: SocketAddr,
        /// The proxy address it connected to.
        listener: SocketAddr,
        /// The configured upstream (`host:port`).
        upstream: String,
        /// TLS from the first byte (no STARTTLS).
        implicit_tls: bool,
    },
    /// The upstream TCP connection is established; relaying starts.
    #[serde(rename = "upstream.connected")]
    UpstreamConnected {
        /// The upstream address actually connected to.
        addr: SocketAddr,
        /// The proxy's local address on that connection.
        local: SocketAddr,
        /// Name resolution plus TCP connect, in milliseconds.
        connect_ms: f64,
    },
    /// Transparent mode: the connection's original destination is smtptap
    /// itself, so connecting there would loop; the session is refused (the
    /// client gets the `failure_reply`, see `upstream.failed`).
    #[serde(rename = "upstream.loop_refused")]
    UpstreamLoopRefused {
        /// The original destination (`SO_ORIGINAL_DST`, or the TPROXY socket's local address).
        original_dst: SocketAddr,
        /// Why it is the proxy itself, and what to check.
        reason: String,
    },
    /// The upstream could not be reached.
    #[serde(rename = "upstream.failed")]
    UpstreamFailed {
        /// The configured upstream.
        upstream: String,
        /// Why (`Connection refused (os error 111)`, `timed out after 10s`…).
        error: String,
        /// Every address tried with its own error.
        tried: Vec<String>,
        /// `reply` (a 4xx reply was sent to the client) or `close`.
        action: String,
        /// The reply line sent, if any.
        reply: Option<String>,
        /// Whether the reply reached the client's socket.
        reply_delivered: bool,
    },
    /// From here on the stream is TLS (after a STARTTLS 220, or implicit TLS).
    #[serde(rename = "tls.started")]
    TlsStarted {
        /// `starttls` or `implicit`.
        after: String,
    },
    /// The same client IP failed a TLS handshake through smtptap shortly before
    /// this session (used to recognise a cleartext fallback).
    #[serde(rename = "session.prior_tls_failure")]
    PriorTlsFailure {
        /// The earlier session.
        prior_session: SessionId,
        /// How long ago it failed, in seconds.
        seconds_ago: f64,
        /// Its failure, as diagnosed.
        reason: String,
    },
    /// One side closed its sending direction (FIN); the proxy passed it on.
    #[serde(rename = "session.half_close")]
    HalfClose {
        /// The side that sent FIN.
        side: Side,
    },
    /// The analysis fell behind; bytes were relayed but not analysed.
    #[serde(rename = "observer.lagged")]
    ObserverLagged {
        /// The side whose bytes were first missed.
        side: Side,
        /// How many relayed bytes were not analysed.
        bytes_not_analysed: u64,
        /// What it means.
        note: String,
    },
    /// The session ended.
    #[serde(rename = "session.close")]
    Close {
        /// `completed`, `idle_timeout`, `error`, `shutdown`, `upstream_failed`.
        reason: String,
        /// How the client→server direction ended (`fin`, `error`, `idle`, `aborted`, `peer_failed`).
        client_end: String,
        /// How the server→client direction ended.
        server_end: String,
        /// The socket error, if any.
        error: Option<String>,
        /// Seconds since the client connected.
        duration_s: f64,
        /// Bytes sent by the client (and relayed).
        client_bytes: u64,
        /// Bytes sent by the server (and relayed).
        server_bytes: u64,
    },
    /// The last event of a session: totals, outcome and findings.
    #[serde(rename = "session.summary")]
    Summary(Box<crate::summary::SessionSummary>),
}
