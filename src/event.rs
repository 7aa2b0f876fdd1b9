//! The event vocabulary: every fact smtptap learns is a typed, serde-serializable
//! [`Event`] carrying a timestamp and a session id.
//!
//! This module owns the envelope ([`Event`], [`Timestamp`], [`Side`]) and the
//! session-level events. Each analysis module owns its own vocabulary
//! (`smtp::SmtpEvent`, `tls::TlsEvent`, `cert::CertEvent`, …); [`EventKind`]
//! wraps them so that the JSON form is always flat:
//!
//! ```text
//! {"ts":"2026-11-23T21:07:14.123456Z","run":"r20261123T210700Z-4c1f","session":7,"event":"smtp.reply","code":250,...}
//! ```
//!
//! Log schema v1 conventions, kept by every event family: the sending
//! direction is always `side`; durations are seconds as a float with `_s` in
//! the field name; hashes, fingerprints and serials are lower-case hex without
//! separators; a field named `error` is a stable machine code and the human
//! text goes in `detail`; addresses also come as separate `*_ip` / `*_port`.
//!
//! The JSON form is a public contract, documented in `docs/log-schema.md`.
//! This module must not do I/O.

use std::fmt;
use std::net::SocketAddr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Identifies one proxied connection; unique within one run of smtptap.
pub type SessionId = u64;

/// The version of the JSON log schema (`docs/log-schema.md`), recorded in `run.start`.
pub const SCHEMA_VERSION: u32 = 1;

/// Identifies one run of smtptap (one process, or one offline analysis):
/// `(run, session)` is unique even when several runs append to one log.
pub type RunId = std::sync::Arc<str>;

fn stopped() -> String {
    "stopped".to_string()
}

/// A run identifier from the start time and a per-process salt:
/// `r20261123T210700Z-4c1f` (sortable by start time).
pub fn new_run_id(start: Timestamp, salt: u64) -> RunId {
    let dt = time::OffsetDateTime::from(start.0);
    let fmt = time::macros::format_description!("r[year][month][day]T[hour][minute][second]Z");
    let head = dt.format(&fmt).unwrap_or_else(|_| "r0".into());
    // Mix the sub-second time in, so two runs started in the same second differ.
    let mix = salt ^ u64::from(dt.nanosecond()).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    format!("{head}-{:04x}", (mix ^ (mix >> 16) ^ (mix >> 32)) & 0xffff).into()
}

/// Which TLS session a byte or a TLS/certificate fact belongs to. In
/// passthrough the client's TLS session runs end to end to the server; with
/// interception there are two, each with its own hello, version, cipher,
/// chain and alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Leg {
    /// Passthrough: the client's TLS session with the server, relayed by smtptap.
    EndToEnd,
    /// Interception: between the client and smtptap (smtptap is the server).
    ClientProxy,
    /// Interception: between smtptap and the server (smtptap is the client).
    ProxyServer,
}

impl Leg {
    /// The word used in the log.
    pub fn word(self) -> &'static str {
        match self {
            Leg::EndToEnd => "end_to_end",
            Leg::ClientProxy => "client_proxy",
            Leg::ProxyServer => "proxy_server",
        }
    }
}

impl fmt::Display for Leg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

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
        let mut buf = [0u8; RFC3339_MAX];
        self.rfc3339_into(&mut buf).to_string()
    }

    /// [`Self::rfc3339`] written into `buf` (no allocation: every logged
    /// line has one).
    fn rfc3339_into<'b>(&self, buf: &'b mut [u8; RFC3339_MAX]) -> &'b str {
        const FALLBACK: &str = "1970-01-01T00:00:00.000000Z";
        let dt = time::OffsetDateTime::from(self.0);
        let fmt = time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
        );
        let mut out = &mut buf[..];
        let n = match dt.format_into(&mut out, &fmt) {
            Ok(n) => n,
            Err(_) => return FALLBACK,
        };
        buf.get(..n)
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or(FALLBACK)
    }
}

/// Longest [`Timestamp::rfc3339`] (a six-digit year with its sign, which
/// `time` allows, and room to spare).
const RFC3339_MAX: usize = 40;

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; RFC3339_MAX];
        f.write_str(self.rfc3339_into(&mut buf))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; RFC3339_MAX];
        s.serialize_str(self.rfc3339_into(&mut buf))
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

/// Where a certificate that was not on this session's wire came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// smtptap's own connection to the same upstream, made because this
    /// session's TLS 1.3 hid the certificate (`tls.side_probe`).
    SideProbe,
    /// The TLS handshake the driver made itself (`smtptap probe`'s own
    /// TLS 1.3 connection): the chain rustls received.
    Handshake,
}

impl Source {
    /// The word used in the log.
    pub fn word(self) -> &'static str {
        match self {
            Source::SideProbe => "side_probe",
            Source::Handshake => "handshake",
        }
    }
}

/// One fact about one session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    /// When the fact was observed (for wire facts: when the bytes were read).
    pub ts: Timestamp,
    /// The run the session belongs to (empty until the analyzer or the sink
    /// stamps it; every logged line carries it).
    #[serde(default = "empty_run")]
    pub run: RunId,
    /// The session the fact belongs to (0: a fact of the run, not of a session).
    pub session: SessionId,
    /// The TLS session a `tls.*` or `cert.*` fact belongs to (absent on others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leg: Option<Leg>,
    /// Where a `cert.*` fact's certificate came from when it was not this
    /// session's own wire bytes (absent: seen on the wire).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
    /// What happened; serialized flat, with the dotted name in `event`.
    #[serde(flatten)]
    pub kind: EventKind,
}

impl Event {
    /// Builds an event (no run id yet, no leg).
    pub fn new(ts: Timestamp, session: SessionId, kind: impl Into<EventKind>) -> Self {
        Event {
            ts,
            run: empty_run(),
            session,
            leg: None,
            source: None,
            kind: kind.into(),
        }
    }

    /// The same event, with its evidence's `source`.
    pub fn from_source(mut self, source: Option<Source>) -> Self {
        self.source = source;
        self
    }

    /// The same event, on `leg`.
    pub fn on_leg(mut self, leg: Option<Leg>) -> Self {
        self.leg = leg;
        self
    }

    /// The same event, of run `run`.
    pub fn in_run(mut self, run: &RunId) -> Self {
        self.run = run.clone();
        self
    }

    /// The dotted event name (`smtp.reply`), as in the JSON `event` field.
    pub fn name(&self) -> &'static str {
        self.kind.name()
    }
}

/// The stable `error` code of an I/O error (schema v1: `error` is a code,
/// the words go in `detail`).
pub fn io_error_code(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind as K;
    match e.raw_os_error() {
        Some(28) => return "no_space",
        Some(23) | Some(24) => return "local_resources",
        Some(101) | Some(113) => return "unreachable",
        _ => {}
    }
    match e.kind() {
        K::ConnectionRefused => "refused",
        K::ConnectionReset | K::ConnectionAborted => "reset",
        K::BrokenPipe => "broken_pipe",
        K::TimedOut | K::WouldBlock => "timeout",
        K::PermissionDenied => "permission",
        K::NotFound => "not_found",
        K::AddrNotAvailable | K::NotConnected => "unreachable",
        _ => "other",
    }
}

fn empty_run() -> RunId {
    // One shared empty id: every event starts with it until stamped, and an
    // `Arc<str>` made from "" would be an allocation per event.
    static EMPTY: std::sync::LazyLock<RunId> = std::sync::LazyLock::new(|| RunId::from(""));
    EMPTY.clone()
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

impl EventKind {
    /// The dotted event name (`smtp.reply`), as in the JSON `event` field.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Session(e) => e.name(),
            EventKind::Smtp(e) => e.name(),
            EventKind::Tls(e) => e.name(),
            EventKind::Cert(e) => e.name(),
            EventKind::Capture(e) => e.name(),
        }
    }
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
    /// The first event of a run (session 0): what ran, with which settings.
    #[serde(rename = "run.start")]
    RunStart {
        /// smtptap's version.
        version: String,
        /// The log schema version ([`SCHEMA_VERSION`]).
        schema: u32,
        /// What ran: `proxy` (later `probe`, `analyze`).
        mode: String,
        /// The resolved configuration, secrets masked.
        config: serde_json::Value,
    },
    /// The run ended (the proxy stopped); written last.
    #[serde(rename = "run.stop")]
    RunStop {
        /// Sessions accepted during the run.
        sessions: u64,
        /// Whether open sessions had to be aborted at the drain timeout.
        aborted_at_shutdown: bool,
        /// Why the run stopped: `sigterm`, `sigint`, `duration`,
        /// `max_sessions_total`, or `stopped` (asked by the embedding program).
        #[serde(default = "stopped")]
        reason: String,
    },
    /// SIGHUP: the JSON log and the capture files were reopened
    /// (logrotate's convention). Written as the first line of the reopened log.
    #[serde(rename = "run.reopen")]
    RunReopen {
        /// The signal: `SIGHUP`.
        signal: String,
        /// The JSON log file reopened (absent: no log file, or stdout).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        log: Option<String>,
        /// Whether capture files were asked to reopen (see `capture.file` `reopened`).
        capture: bool,
    },
    /// The JSON log could not be written for a while (disk full, removed
    /// directory) and is written again; written as the first line after the gap.
    #[serde(rename = "run.log_recovered")]
    RunLogRecovered {
        /// Events that were not written (lost for good).
        lost_events: u64,
        /// When writing failed.
        since: Timestamp,
        /// A stable code: `no_space`, `permission`, `not_found`, `other`.
        error: String,
        /// The operating system's error, in words.
        detail: String,
    },
    /// The JSON log reached `log.max_bytes`: the previous file was renamed
    /// to `previous`; written as the first line of the new file.
    #[serde(rename = "run.log_rotated")]
    RunLogRotated {
        /// Where the previous file now is (`<log>.1`).
        previous: String,
        /// Rotated files kept (`log.keep`).
        keep: u64,
    },
    /// A client connected to the proxy.
    #[serde(rename = "session.open")]
    Open {
        /// The client's address.
        client: SocketAddr,
        /// The client's IP (as in `client`, for filtering).
        client_ip: std::net::IpAddr,
        /// The client's port.
        client_port: u16,
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
        server: SocketAddr,
        /// Its IP.
        server_ip: std::net::IpAddr,
        /// Its port.
        server_port: u16,
        /// The proxy's local address on that connection.
        local: SocketAddr,
        /// Name resolution plus TCP connect, in seconds.
        connect_s: f64,
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
        /// Why, as a stable code: `refused`, `timeout`, `resolve`,
        /// `unreachable`, `local_resources`, `loop`, `no_original_dst`, `other`.
        error: String,
        /// Why, in words (`Connection refused (os error 111)`, `timed out after 10s`…).
        detail: String,
        /// Every address tried with its own error.
        tried: Vec<String>,
        /// `reply` (a 4xx reply was sent to the client) or `close`.
        action: String,
        /// The reply line sent, if any.
        reply: Option<String>,
        /// Whether the reply reached the client's socket.
        reply_delivered: bool,
    },
    /// The side-probe: smtptap's own connection to this session's upstream
    /// (EHLO, STARTTLS, a TLS handshake with the client's SNI), made because
    /// this session's TLS 1.3 hid the server's certificate. Its chain
    /// follows as `cert.*` events with `source: "side_probe"`.
    #[serde(rename = "tls.side_probe")]
    SideProbe {
        /// The upstream address probed (the one this session connected to).
        server_ip: std::net::IpAddr,
        /// Its port.
        server_port: u16,
        /// The SNI sent (the client's), if any.
        sni: Option<String>,
        /// Whether the probe got the server's certificate.
        ok: bool,
        /// The TLS version the probe negotiated.
        version: Option<String>,
        /// The cipher suite the probe negotiated.
        cipher: Option<String>,
        /// Certificates in the chain the server sent the probe.
        chain_len: usize,
        /// The result came from the cache (another session's probe).
        cached: bool,
        /// Seconds between the probe and this session's use of it.
        age_s: f64,
        /// Why it failed, as a stable code: `refused`, `timeout`,
        /// `no_starttls`, `starttls_refused`, `handshake`, `rate_limited`,
        /// `not_smtp`, `other`.
        error: Option<String>,
        /// Why, in words.
        detail: Option<String>,
    },
    /// From here on the stream is TLS (after a STARTTLS 220, or implicit TLS).
    #[serde(rename = "tls.started")]
    TlsStarted {
        /// `starttls`, `implicit` or `implicit_detected`.
        after: String,
    },
    /// The same client IP failed a TLS handshake through smtptap shortly before
    /// this session (used to recognise a cleartext fallback).
    #[serde(rename = "session.prior_tls_failure")]
    PriorTlsFailure {
        /// The earlier session.
        prior_session: SessionId,
        /// How long ago it failed, in seconds (event time).
        ago_s: f64,
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
        /// `completed`, `idle_timeout`, `line_timeout`, `session_timeout`, `error`, `shutdown`, `upstream_failed`.
        reason: String,
        /// How the client→server direction ended (`fin`, `error`, `idle`, `aborted`, `peer_failed`).
        client_end: String,
        /// How the server→client direction ended.
        server_end: String,
        /// The socket error as a stable code (`reset`, `broken_pipe`,
        /// `timeout`, `other`), if any.
        error: Option<String>,
        /// The socket error in words.
        detail: Option<String>,
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
    /// `smtptap probe`: what the server answered to a hand-built ClientHello
    /// (the legacy fallback, in that session; `--versions`, one per version,
    /// session 0). The probe never completes such a handshake.
    #[serde(rename = "probe.version")]
    ProbeVersion {
        /// What the hello offered: `legacy` (TLS 1.0 to 1.2, classic suites)
        /// or one version (`TLSv1.0`, `TLSv1.1`, `TLSv1.2`, `TLSv1.3`).
        offered: String,
        /// The server chose a version and suite (ServerHello, or a TLS 1.3
        /// HelloRetryRequest).
        accepted: bool,
        /// The version it chose.
        version: Option<String>,
        /// The cipher suite it chose.
        cipher_suite: Option<String>,
        /// Why nothing was accepted, as a stable code: `alert`, `closed`,
        /// `older_version` (the server chose an older version than the one
        /// offered), `not_tls`, `no_starttls`, `timeout`, `no_connection`,
        /// `other`; null when accepted.
        refused: Option<String>,
        /// In words (the alert, the SMTP reply, the socket error).
        detail: String,
    },
    /// Intercept mode: at the client's ClientHello, whether smtptap
    /// terminates this session's TLS or passes it through, and why.
    #[serde(rename = "intercept.decision")]
    InterceptDecision {
        /// `intercept` or `passthrough` (the client's hello is one rustls cannot serve).
        action: String,
        /// Why, in words.
        reason: String,
        /// The client's SNI.
        sni: Option<String>,
        /// The SNI smtptap sends upstream (`intercept` only).
        upstream_sni: Option<String>,
    },
    /// Intercept mode: the outcome of one of smtptap's own TLS handshakes;
    /// the envelope's `leg` says which (`client_proxy`: smtptap as the
    /// client's server; `proxy_server`: smtptap as the server's client).
    #[serde(rename = "intercept.handshake")]
    InterceptHandshake {
        /// The handshake completed.
        ok: bool,
        /// The negotiated version (`TLSv1.3`).
        version: Option<String>,
        /// The negotiated cipher suite (IANA name).
        cipher_suite: Option<String>,
        /// Why it failed, in words.
        error: Option<String>,
        /// `proxy_server`: whether the upstream's chain verified (trust
        /// anchors of `[tls]`, the name sent as SNI).
        verified: Option<bool>,
        /// `proxy_server`: why it did not verify.
        verify_error: Option<String>,
        /// `proxy_server`: smtptap refused the upstream (`upstream_verify = "enforce"`).
        refused: bool,
        /// `proxy_server`: whether the upstream asked for a client certificate;
        /// `client_proxy`: whether smtptap asked the client for one.
        client_cert_requested: Option<bool>,
        /// Whether a client certificate was sent on this leg.
        client_cert_sent: Option<bool>,
        /// `client_proxy`: the certificate smtptap presented: `minted` or `static`, and its names.
        presented: Option<String>,
    },
}

impl SessionEvent {
    /// The dotted event name, as in the JSON `event` field.
    pub fn name(&self) -> &'static str {
        #[allow(unreachable_patterns)]
        match self {
            SessionEvent::RunStart { .. } => "run.start",
            SessionEvent::RunStop { .. } => "run.stop",
            SessionEvent::RunReopen { .. } => "run.reopen",
            SessionEvent::RunLogRecovered { .. } => "run.log_recovered",
            SessionEvent::RunLogRotated { .. } => "run.log_rotated",
            SessionEvent::Open { .. } => "session.open",
            SessionEvent::UpstreamConnected { .. } => "upstream.connected",
            SessionEvent::UpstreamLoopRefused { .. } => "upstream.loop_refused",
            SessionEvent::UpstreamFailed { .. } => "upstream.failed",
            SessionEvent::TlsStarted { .. } => "tls.started",
            SessionEvent::SideProbe { .. } => "tls.side_probe",
            SessionEvent::PriorTlsFailure { .. } => "session.prior_tls_failure",
            SessionEvent::HalfClose { .. } => "session.half_close",
            SessionEvent::ObserverLagged { .. } => "observer.lagged",
            SessionEvent::Close { .. } => "session.close",
            SessionEvent::Summary { .. } => "session.summary",
            SessionEvent::ProbeVersion { .. } => "probe.version",
            SessionEvent::InterceptDecision { .. } => "intercept.decision",
            SessionEvent::InterceptHandshake { .. } => "intercept.handshake",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn timestamps_are_rfc3339_utc_with_six_fractional_digits_and_round_trip() {
        let cases = [
            (Duration::ZERO, "1970-01-01T00:00:00.000000Z"),
            (
                Duration::new(1_795_467_612, 409_117_999),
                "2026-11-23T21:00:12.409117Z",
            ),
            (
                Duration::new(253_402_300_799, 999_999_000),
                "9999-12-31T23:59:59.999999Z",
            ),
        ];
        for (since, want) in cases {
            let t = Timestamp(UNIX_EPOCH + since);
            assert_eq!(t.rfc3339(), want);
            assert_eq!(t.to_string(), want);
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{want}\""));
            let back: Timestamp = serde_json::from_str(&json).unwrap();
            assert_eq!(back.rfc3339(), want);
        }
    }

    #[test]
    fn events_share_one_empty_run_id_until_stamped() {
        let reopen = || SessionEvent::RunReopen {
            signal: "SIGHUP".into(),
            log: None,
            capture: false,
        };
        let a = Event::new(Timestamp::now(), 1, reopen());
        let b = Event::new(Timestamp::now(), 2, reopen());
        assert!(a.run.is_empty() && RunId::ptr_eq(&a.run, &b.run));
        let run = RunId::from("r1");
        assert_eq!(&*a.in_run(&run).run, "r1");
    }
}
