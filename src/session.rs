//! One analysis task per session: it receives what the relay tapped, drives the
//! sans-IO observers, turns their output into [`Event`]s, sends them to the
//! sinks, and at the end writes `session.close` and `session.summary` (with the
//! diagnosis).
//!
//! ```text
//!  control (connected / upstream failed / closed) ─┐
//!  tap (chunks, EOFs, in relay order) ─────────────┴─▶ Stage::Smtp ──STARTTLS 220──▶ Stage::Tls ──▶ Stage::Off
//!                                                         │ desync                       │ desync / done
//!                                                         └──────────▶ Stage::Off ◀──────┘
//! ```
//!
//! Implicit TLS is recognised without configuration: when the client's very
//! first bytes are a TLS handshake record and the server has not spoken yet,
//! the session waits (`Stage::Sniff`, bounded) for the server's first bytes. A
//! TLS answer makes it an implicit-TLS session (`tls.started` with
//! `after = "implicit_detected"`); an SMTP greeting means a TLS client on a
//! STARTTLS port, reported exactly as when the greeting came first.
//!
//! This task may fall behind; the relay never waits for it (see
//! `proxy::relay`). If it falls so far behind that the tap queue overflows, the
//! relay stops offering bytes and this task reports `observer.lagged` at the
//! end: an observer that missed bytes cannot be trusted, so it says so rather
//! than guess. It must not touch sockets.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::capture::{Capture, CloseKind, FlowInfo, SessionCapture};
use crate::cert::{self, CheckContext, NameSource, TrustOptions, TrustStore};
use crate::config::{TlsSettings, Upstream};
use crate::diagnose::{self, Finding};
use crate::event::{Event, EventKind, SessionEvent, SessionId, Side, Timestamp};
use crate::proxy::relay::{DirEnd, RelayOutcome, TapMsg};
use crate::proxy::upstream::ConnectFailure;
use crate::sink::EventSink;
use crate::smtp::{Mark, MarkKind, Progress, SmtpEvent, SmtpLimits, SmtpObserver};
use crate::summary::{self, SessionSummary};
use crate::tls::{TlsEvent, TlsObserver};

/// Most bytes of CRLs kept in the run's cache (beyond it, CRLs are fetched
/// again when needed rather than kept).
const CRL_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// At most this many bytes of a client that spoke TLS first are held while
/// the server has not answered; beyond it the session is taken as implicit
/// TLS (a real ClientHello is a few hundred bytes to a few KB).
const SNIFF_MAX: usize = 64 * 1024;

/// Whether `bytes` open a TLS handshake record (type 22, version 3.x).
fn opens_tls_handshake(bytes: &[u8]) -> bool {
    matches!(bytes, [0x16, 0x03, ..])
}

/// Whether `bytes` open any TLS record (the server's ServerHello or alert).
fn opens_tls_record(bytes: &[u8]) -> bool {
    matches!(bytes, [0x14..=0x18, 0x03, ..] | [0x14..=0x18])
}

/// Events kept per session for the diagnosis; later ones are still logged, and
/// the summary says how many were not kept.
pub const MAX_KEPT_EVENTS: usize = 5_000;

/// ... and at most about this many bytes of them: a peer sending thousands of
/// 64 KiB multi-line replies must not make a session hold hundreds of MB.
pub const MAX_KEPT_BYTES: usize = 4 * 1024 * 1024;

/// A rough, cheap estimate of an event's memory: exact enough for the events
/// a peer can make large (reply lines, capabilities, hellos), a flat cost for
/// the rest.
fn approx_size(kind: &EventKind) -> usize {
    let strs = |v: &[String]| v.iter().map(|l| l.len() + 24).sum::<usize>();
    256 + match kind {
        EventKind::Smtp(SmtpEvent::Reply { text, lines, .. })
        | EventKind::Smtp(SmtpEvent::Banner { text, lines, .. }) => text.len() + strs(lines),
        EventKind::Smtp(SmtpEvent::Capabilities { capabilities, .. }) => strs(capabilities),
        EventKind::Tls(TlsEvent::ClientHello(ch)) => {
            ch.ja3_string.len() * 4
                + strs(&ch.cipher_suites)
                + strs(&ch.supported_groups)
                + strs(&ch.signature_algorithms)
                + ch.extensions.len() * 2
        }
        _ => 0,
    }
}

/// Facts known when the session starts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionInfo {
    /// Session id.
    pub id: SessionId,
    /// The client's address.
    pub client: SocketAddr,
    /// The proxy address the client connected to.
    pub listener: SocketAddr,
    /// The configured upstream.
    #[serde(skip, default = "default_upstream")]
    pub upstream: Upstream,
    /// When the connection was accepted.
    pub opened: Timestamp,
    /// TLS from the first byte.
    pub implicit_tls: bool,
}

fn default_upstream() -> Upstream {
    Upstream {
        host: String::new(),
        port: 0,
    }
}

/// Messages from the session controller, in order: one of
/// `Connected`/`UpstreamFailed`, then (after the relay) `Closed`.
#[derive(Debug)]
pub enum Control {
    /// The upstream connection is up; the relay starts.
    Connected {
        /// When.
        ts: Timestamp,
        /// The upstream address.
        peer: SocketAddr,
        /// Our local address toward the upstream.
        local: SocketAddr,
        /// Resolution + connect time.
        elapsed: Duration,
    },
    /// The upstream could not be reached; the session is over.
    UpstreamFailed {
        /// When.
        ts: Timestamp,
        /// Why.
        failure: ConnectFailure,
        /// The reply sent to the client, and whether it was delivered.
        reply: Option<(String, bool)>,
    },
    /// In transparent mode: the original destination is the proxy itself
    /// (sent before `UpstreamFailed`).
    LoopRefused {
        /// When.
        ts: Timestamp,
        /// The original destination.
        original_dst: SocketAddr,
        /// Why, and what to check.
        reason: String,
    },
    /// The relay ended.
    Closed {
        /// When.
        ts: Timestamp,
        /// How each direction ended and the byte counts.
        outcome: RelayOutcome,
        /// Bytes relayed but not analysed (tap overflow), if any.
        loss: Option<(Side, u64)>,
    },
}

/// How long a failed TLS handshake from a client is remembered, to recognise a
/// cleartext retry from the same client (opportunistic fallback).
pub const FALLBACK_WINDOW: Duration = Duration::from_secs(600);

/// What the analysis of every session shares: settings, trust store, capture,
/// and the little cross-session memory the fallback diagnosis needs.
#[derive(Debug, Default)]
pub struct Analysis {
    /// TLS analysis settings.
    pub tls: TlsSettings,
    /// Recent failed TLS handshakes by client IP: when, which session, why.
    pub recent_tls_failures: Mutex<HashMap<IpAddr, (Instant, SessionId, String)>>,
    /// The pcapng writer, when capture is on.
    pub capture: Option<Capture>,
    /// Trust anchors for certificate verification; always set by
    /// [`Analysis::from_config`]. None (a bare `Analysis::new`): certificates
    /// are not analysed at all.
    pub trust: Option<TrustStore>,
    /// Per-destination settings (`[[destination]]`), first match wins.
    pub destinations: Vec<crate::config::Destination>,
    /// CRLs fetched this run (`check_revocation`), by URL: when, and the result.
    pub crl_cache: Mutex<HashMap<String, CachedCrl>>,
}

/// A fetched CRL (or the error), with when it was fetched.
pub type CachedCrl = (Instant, Result<Vec<Vec<u8>>, String>);

/// How long a fetched CRL is reused; failures are retried sooner.
const CRL_TTL: Duration = Duration::from_secs(3600);
const CRL_RETRY: Duration = Duration::from_secs(300);
/// CRL distribution points fetched per chain, at most.
const MAX_CRL_URLS: usize = 8;

/// Most time all CRL fetches for one certificate chain may take together.
const CRL_BUDGET: Duration = Duration::from_secs(10);

impl Analysis {
    /// Settings only (trust store and capture are added by the caller).
    pub fn new(tls: TlsSettings) -> Self {
        Analysis {
            tls,
            ..Default::default()
        }
    }

    /// Builds the shared analysis state from a configuration (loads the trust store).
    pub fn from_config(cfg: &crate::config::ProxyConfig) -> Result<Self, String> {
        let mut a = Analysis::new(cfg.tls.clone());
        a.destinations = cfg.destinations.clone();
        let opts = TrustOptions {
            mozilla: cfg.tls.mozilla_roots,
            system: cfg.tls.system_roots,
            ca_files: cfg.tls.ca_files.clone(),
        };
        let mut store =
            TrustStore::new(&opts).map_err(|e| format!("cannot load the trust store: {e}"))?;
        store
            .add_crl_files(&cfg.tls.crl_files)
            .map_err(|e| format!("cannot load the CRL files: {e}"))?;
        a.trust = Some(store);
        if let Some(c) = &cfg.capture {
            a.capture = Some(
                Capture::start(c.clone()).map_err(|e| format!("cannot start the capture: {e}"))?,
            );
        }
        Ok(a)
    }

    fn prior_failure(&self, ip: IpAddr) -> Option<(Duration, SessionId, String)> {
        let mut map = self.recent_tls_failures.lock().ok()?;
        map.retain(|_, (t, _, _)| t.elapsed() < FALLBACK_WINDOW);
        map.get(&ip)
            .map(|(t, id, why)| (t.elapsed(), *id, why.clone()))
    }

    fn record_tls_outcome(&self, ip: IpAddr, session: SessionId, failure: Option<String>) {
        if let Ok(mut map) = self.recent_tls_failures.lock() {
            match failure {
                Some(why) => {
                    if map.len() < 10_000 {
                        map.insert(ip, (Instant::now(), session, why));
                    }
                }
                None => {
                    map.remove(&ip);
                }
            }
        }
    }
}

enum Stage {
    Smtp(Box<SmtpObserver>),
    /// The client spoke TLS first: its chunks wait (at most [`SNIFF_MAX`]
    /// bytes) for the server's first bytes to say which protocol this is.
    Sniff(Vec<(Timestamp, Vec<u8>)>),
    Tls(Box<TlsObserver>),
    Off,
}

struct State {
    info: SessionInfo,
    analysis: Arc<Analysis>,
    sink: EventSink,
    kept: Vec<Event>,
    /// Rough memory of `kept` ([`approx_size`]), bounded by [`MAX_KEPT_BYTES`].
    kept_bytes: usize,
    /// The summary's counts, over every event (kept or not).
    counts: summary::Counts,
    not_kept: u64,
    stage: Stage,
    /// This session's pcapng flow(s), when capture is on and the filters select it.
    capture: Option<SessionCapture>,
    /// Names learnt from the conversation, to check certificates against.
    names: LearntNames,
    /// The upstream address connected to (selects `[[destination]]` settings).
    upstream_addr: Option<SocketAddr>,
    /// Events not yet handed to the sinks (flushed after each message from the relay).
    pending: Vec<Event>,
    /// The SMTP observer desynced in cleartext: secrets can no longer be marked.
    smtp_blind: bool,
    /// Bytes fed so far per side (`[client, server]`), to place observer offsets in a chunk.
    fed: [u64; 2],
    /// The capture already says why the rest of the session is left out.
    blind_noted: bool,
    /// Client bytes sent after STARTTLS before its reply, not yet written to
    /// the capture (only when its policy redacts): TLS if the reply is 220,
    /// unmarkable SMTP otherwise. Bounded by the observer's `max_handoff`.
    held_capture: Vec<u8>,
}

/// Host names the conversation announced, for the certificate name checks.
#[derive(Debug, Default)]
struct LearntNames {
    banner: Option<String>,
    ehlo_reply: Option<String>,
    client_ehlo: Option<String>,
    sni: Option<String>,
}

impl State {
    async fn emit(&mut self, ts: Timestamp, kind: impl Into<EventKind>) {
        let kind = kind.into();
        self.learn(&kind);
        self.count(&kind);
        let size = approx_size(&kind);
        let ev = Event::new(ts, self.info.id, kind);
        if self.kept.len() < MAX_KEPT_EVENTS && self.kept_bytes + size <= MAX_KEPT_BYTES {
            self.kept_bytes += size;
            self.kept.push(ev.clone());
        } else {
            self.not_kept += 1;
        }
        self.pending.push(ev);
        if self.pending.len() >= 64 {
            self.flush().await;
        }
    }

    /// Hands the events produced so far to the sinks, as one batch.
    async fn flush(&mut self) {
        let batch = std::mem::take(&mut self.pending);
        self.sink.send_batch(batch).await;
    }

    fn count(&mut self, kind: &EventKind) {
        let c = &mut self.counts;
        match kind {
            EventKind::Smtp(SmtpEvent::Command { .. }) => c.commands += 1,
            EventKind::Smtp(SmtpEvent::Message { accepted: true, .. }) => c.messages_accepted += 1,
            EventKind::Smtp(SmtpEvent::Message { .. }) => c.messages_rejected += 1,
            EventKind::Smtp(SmtpEvent::Reply {
                code,
                enhanced,
                text,
                ..
            })
            | EventKind::Smtp(SmtpEvent::Banner {
                code,
                enhanced,
                text,
                ..
            }) => {
                c.last_reply = Some(
                    match enhanced.as_deref() {
                        Some(e) if !e.is_empty() => format!("{code} {e} {text}"),
                        _ => format!("{code} {text}"),
                    }
                    .trim_end()
                    .to_string(),
                );
            }
            _ => {}
        }
    }

    fn learn(&mut self, kind: &EventKind) {
        match kind {
            EventKind::Smtp(SmtpEvent::Banner { host, .. }) => self.names.banner = host.clone(),
            EventKind::Smtp(SmtpEvent::Capabilities { host, .. })
                if self.names.ehlo_reply.is_none() =>
            {
                self.names.ehlo_reply = host.clone();
            }
            EventKind::Smtp(SmtpEvent::Ehlo { name, .. }) if self.names.client_ehlo.is_none() => {
                self.names.client_ehlo = Some(name.clone());
            }
            EventKind::Tls(TlsEvent::ClientHello(ch)) => self.names.sni = ch.sni.clone(),
            _ => {}
        }
    }

    /// The names a chain sent by `role` is checked against, with their source.
    fn names_for(&self, role: Side) -> Vec<(NameSource, String)> {
        let mut names = Vec::new();
        let tls = &self.analysis.tls;
        let host_like =
            |n: &str| n.contains('.') && n.parse::<IpAddr>().is_err() && !n.starts_with('[');
        match role {
            Side::Server => {
                let expected = match self.upstream_addr.and_then(|a| {
                    self.analysis
                        .destinations
                        .iter()
                        .find(|d| d.net.contains(a.ip()))
                }) {
                    Some(d) => &d.expect_names,
                    None => &tls.expect_names,
                };
                for n in expected {
                    names.push((NameSource::Expected, n.clone()));
                }
                // The name the operator configured and dialled is checked even
                // when it has a single label (`localhost`, an internal
                // `mailhub`): the sender dials it and verifies against it.
                // Announced names need a dot: a bare banner word is not a claim.
                let dialled = &self.info.upstream.host;
                if !dialled.is_empty()
                    && dialled.parse::<IpAddr>().is_err()
                    && !dialled.starts_with('[')
                {
                    names.push((NameSource::Upstream, self.info.upstream.host.clone()));
                }
                if tls.check_announced_names {
                    if let Some(b) = self.names.banner.as_deref().filter(|n| host_like(n)) {
                        names.push((NameSource::Banner, b.to_string()));
                    }
                    if let Some(e) = self.names.ehlo_reply.as_deref().filter(|n| host_like(n)) {
                        if Some(e) != self.names.banner.as_deref() {
                            names.push((NameSource::Ehlo, e.to_string()));
                        }
                    }
                }
                if let Some(sni) = &self.names.sni {
                    names.push((NameSource::Sni, sni.clone()));
                }
            }
            Side::Client => {
                if let Some(e) = self.names.client_ehlo.as_deref().filter(|n| host_like(n)) {
                    if tls.check_announced_names {
                        names.push((NameSource::Ehlo, e.to_string()));
                    }
                }
            }
        }
        names
    }

    /// `check_revocation`: fetches (or takes from the run's cache) the CRLs the
    /// chain names, reporting each as `cert.crl`. Blocks only this analysis task.
    async fn fetch_crls(&mut self, ts: Timestamp, role: Side, ders: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut urls: Vec<String> = Vec::new();
        for der in ders.iter().take(cert::MAX_CHAIN) {
            if let Ok(info) = cert::parse_cert(der) {
                for u in info.crl_urls {
                    if !urls.contains(&u) && urls.len() < MAX_CRL_URLS {
                        urls.push(u);
                    }
                }
            }
        }
        let mut crls = Vec::new();
        // One budget for the whole chain: each fetch gets at most 5 s and all
        // of them together at most CRL_BUDGET, so a certificate naming many
        // slow CRL servers holds its session (and its slot) for a bounded time.
        let budget_end = Instant::now() + CRL_BUDGET;
        for url in urls {
            let cached = self.analysis.crl_cache.lock().ok().and_then(|c| {
                c.get(&url).and_then(|(when, r)| {
                    let ttl = if r.is_ok() { CRL_TTL } else { CRL_RETRY };
                    (when.elapsed() < ttl).then(|| r.clone())
                })
            });
            let result = match cached {
                Some(r) => r,
                None if Instant::now() >= budget_end => Err(format!(
                    "not fetched: this chain's CRL fetches already took {} s",
                    CRL_BUDGET.as_secs()
                )),
                None => {
                    let u = url.clone();
                    let timeout = budget_end
                        .saturating_duration_since(Instant::now())
                        .min(Duration::from_secs(5));
                    let r =
                        tokio::task::spawn_blocking(move || cert::fetch::fetch_crl(&u, timeout))
                            .await
                            .unwrap_or_else(|e| Err(format!("fetch task failed: {e}")));
                    if let Ok(mut c) = self.analysis.crl_cache.lock() {
                        // Bounded in entries and bytes (CRLs can be large and
                        // their URLs come from peers' certificates).
                        let size = |r: &Result<Vec<Vec<u8>>, String>| match r {
                            Ok(d) => d.iter().map(Vec::len).sum::<usize>(),
                            Err(e) => e.len(),
                        };
                        c.retain(|_, (when, r)| {
                            when.elapsed() < if r.is_ok() { CRL_TTL } else { CRL_RETRY }
                        });
                        let held: usize = c.values().map(|(_, r)| size(r)).sum();
                        if c.len() < 1000 && held + size(&r) <= CRL_CACHE_BYTES {
                            c.insert(url.clone(), (Instant::now(), r.clone()));
                        }
                    }
                    r
                }
            };
            let (ok, error, bytes) = match &result {
                Ok(d) => (true, None, d.iter().map(Vec::len).sum()),
                Err(e) => (false, Some(e.clone()), 0),
            };
            self.emit(
                ts,
                cert::CertEvent::Crl {
                    side: role,
                    url,
                    ok,
                    error: error.as_ref().map(|_| "other".to_string()),
                    detail: error,
                    bytes,
                },
            )
            .await;
            if let Ok(d) = result {
                crls.extend(d);
            }
        }
        crls
    }

    async fn on_certificates(&mut self, ts: Timestamp, role: Side, ders: &[Vec<u8>]) {
        let ctx = CheckContext {
            names: self.names_for(role),
            expiry_warning_days: self.analysis.tls.expiry_warning_days,
            now: ts.0,
        };
        let crls = if self.analysis.tls.check_revocation {
            self.fetch_crls(ts, role, ders).await
        } else {
            Vec::new()
        };
        let events = match &self.analysis.trust {
            Some(store) => cert::analyze_chain_with_crls(ders, role, &ctx, store, &crls),
            None => return,
        };
        for e in events {
            self.emit(ts, e).await;
        }
    }

    async fn on_data(&mut self, side: Side, ts: Timestamp, bytes: &[u8]) {
        self.on_data_inner(side, ts, bytes).await;
        self.fed[side_index(side)] += bytes.len() as u64;
    }

    async fn on_data_inner(&mut self, side: Side, ts: Timestamp, bytes: &[u8]) {
        if matches!(self.stage, Stage::Smtp(_))
            && side == Side::Client
            && self.fed == [0, 0]
            && opens_tls_handshake(bytes)
        {
            self.stage = Stage::Sniff(Vec::new());
        }
        if let Stage::Sniff(held) = &mut self.stage {
            if let Some(c) = self.capture.as_mut() {
                // TLS bytes from the client, or an SMTP greeting: nothing to redact.
                c.data(side, ts, bytes);
            }
            match side {
                Side::Client => {
                    held.push((ts, bytes.to_vec()));
                    if held.iter().map(|(_, b)| b.len()).sum::<usize>() > SNIFF_MAX {
                        self.sniffed_tls(None).await;
                    }
                }
                Side::Server if opens_tls_record(bytes) => {
                    self.sniffed_tls(Some((ts, bytes))).await;
                }
                Side::Server => self.sniffed_smtp(ts, bytes).await,
            }
            return;
        }
        match &mut self.stage {
            Stage::Sniff(_) => {}
            Stage::Off => self.capture_unfollowed(side, ts, bytes),
            Stage::Smtp(obs) => {
                let mut out = Vec::new();
                let mut marks = Vec::new();
                let progress = obs.feed(side, bytes, &mut out, &mut marks);
                let desynced = obs.is_desynced();
                let start = self.fed[side_index(side)];
                let refused = out.iter().any(|e| {
                    matches!(
                        e,
                        SmtpEvent::StartTls {
                            accepted: false,
                            ..
                        }
                    )
                });
                // Bytes held after STARTTLS wait for its reply before they
                // reach a capture that must redact (they are the chunk's tail).
                let mut bytes = bytes;
                if let Some(c) = self.capture.as_ref() {
                    let held_at = marks
                        .iter()
                        .find(|m| m.kind == MarkKind::Held)
                        .map(|m| m.range.start);
                    if let (Some(h), Some(_)) = (held_at, blind_reason(c)) {
                        let (head, tail) = bytes.split_at(h.min(bytes.len()));
                        self.held_capture.extend_from_slice(tail);
                        bytes = head;
                        marks.retain(|m| m.range.end <= h);
                    }
                }
                if let Some(c) = self.capture.as_mut() {
                    // When the observer gives up inside this chunk, what follows
                    // the point of desync cannot be checked for AUTH secrets.
                    let cut = out.iter().find_map(|e| match e {
                        SmtpEvent::Desync {
                            side: s, offset, ..
                        } if *s == side => Some(
                            usize::try_from(offset.saturating_sub(start)).unwrap_or(usize::MAX),
                        ),
                        _ => None,
                    });
                    match cut {
                        Some(cut) if blind_reason(c).is_some() && cut < bytes.len() => {
                            let head = bytes.get(..cut).unwrap_or(bytes);
                            let head_marks: Vec<Mark> = marks
                                .iter()
                                .filter(|m| m.range.end <= cut)
                                .cloned()
                                .collect();
                            capture_marked(c, side, ts, head, &head_marks);
                            if let Some(why) = blind_reason(c) {
                                c.comment(&blind_comment(why));
                            }
                            self.blind_noted = true;
                            c.skip(side, ts, bytes.len() - cut);
                        }
                        _ => capture_marked(c, side, ts, bytes, &marks),
                    }
                }
                for e in out {
                    self.emit(ts, e).await;
                }
                if refused || desynced {
                    // Re-read as SMTP (or not at all): their secrets cannot be
                    // marked any more.
                    self.release_held(ts, false);
                }
                match progress {
                    Progress::StartTls {
                        client_leftover,
                        server_leftover,
                    } => {
                        self.release_held(ts, true);
                        self.emit(
                            ts,
                            SessionEvent::TlsStarted {
                                after: "starttls".into(),
                            },
                        )
                        .await;
                        self.stage = Stage::Tls(Box::new(TlsObserver::new()));
                        if !client_leftover.is_empty() {
                            self.feed_tls(Side::Client, ts, &client_leftover).await;
                        }
                        if !server_leftover.is_empty() {
                            self.feed_tls(Side::Server, ts, &server_leftover).await;
                        }
                    }
                    Progress::Continue => {
                        if desynced {
                            self.stage = Stage::Off;
                            self.smtp_blind = true;
                        }
                    }
                }
            }
            Stage::Tls(_) => {
                // Analysis first: a chunk in which the TLS observer meets
                // cleartext is itself left out under the capture policy.
                self.feed_tls(side, ts, bytes).await;
                self.capture_unfollowed(side, ts, bytes);
            }
        }
    }

    /// The client spoke TLS first and the server answered in TLS (or never
    /// answered): an implicit-TLS session. Replays the held client bytes,
    /// then `server`'s, into a TLS observer.
    async fn sniffed_tls(&mut self, server: Option<(Timestamp, &[u8])>) {
        let held = match std::mem::replace(&mut self.stage, Stage::Tls(Box::default())) {
            Stage::Sniff(held) => held,
            other => {
                self.stage = other;
                return;
            }
        };
        let first = held.first().map(|(t, _)| *t).unwrap_or_else(Timestamp::now);
        self.emit(
            first,
            SessionEvent::TlsStarted {
                after: "implicit_detected".into(),
            },
        )
        .await;
        for (t, b) in held {
            self.feed_tls(Side::Client, t, &b).await;
        }
        if let Some((t, b)) = server {
            self.feed_tls(Side::Server, t, b).await;
        }
    }

    /// The client spoke TLS first but the server greeted in cleartext: a TLS
    /// client on a STARTTLS port. The SMTP observer reads the greeting, then
    /// the held client bytes, and reports the mismatch as it does when the
    /// greeting comes first.
    async fn sniffed_smtp(&mut self, ts: Timestamp, server: &[u8]) {
        let held = match std::mem::replace(&mut self.stage, Stage::Off) {
            Stage::Sniff(held) => held,
            other => {
                self.stage = other;
                return;
            }
        };
        let mut obs = Box::new(SmtpObserver::new(SmtpLimits::default()));
        let mut out = Vec::new();
        let mut marks = Vec::new();
        obs.feed(Side::Server, server, &mut out, &mut marks);
        for ev in std::mem::take(&mut out) {
            self.emit(ts, ev).await;
        }
        for (t, b) in held {
            obs.feed(Side::Client, &b, &mut out, &mut marks);
            for ev in std::mem::take(&mut out) {
                self.emit(t, ev).await;
            }
        }
        if obs.is_desynced() {
            // The client's TLS bytes held no AUTH secret; what follows is
            // the same unreadable conversation.
            self.smtp_blind = true;
        } else {
            self.stage = Stage::Smtp(obs);
        }
    }

    async fn feed_tls(&mut self, side: Side, ts: Timestamp, bytes: &[u8]) {
        let Stage::Tls(obs) = &mut self.stage else {
            return;
        };
        let mut out = Vec::new();
        obs.feed(side, bytes, &mut out);
        let desynced = obs.is_desynced();
        let stop = desynced || obs.is_done();
        for mut e in out {
            // The DER bytes (up to 1 MiB) go to the certificate analysis,
            // not into the kept events and the sink queue (they are never
            // serialised anyway).
            let chain = match &mut e {
                TlsEvent::Certificate { side, ders, .. } if !ders.is_empty() => {
                    Some((*side, std::mem::take(ders)))
                }
                _ => None,
            };
            self.emit(ts, e).await;
            if let Some((role, ders)) = chain {
                self.on_certificates(ts, role, &ders).await;
            }
        }
        if stop {
            if desynced {
                // Not TLS after all (cleartext after STARTTLS, or a wrong
                // implicit_tls): what follows may hold AUTH lines or bodies
                // that no observer will mark.
                self.smtp_blind = true;
            }
            self.stage = Stage::Off;
        }
    }

    /// Writes (`as_tls`: they turned out to be TLS) or leaves out, with a
    /// comment, the client bytes held back after STARTTLS.
    fn release_held(&mut self, ts: Timestamp, as_tls: bool) {
        if self.held_capture.is_empty() {
            return;
        }
        let held = std::mem::take(&mut self.held_capture);
        let Some(c) = self.capture.as_mut() else {
            return;
        };
        if as_tls {
            c.data(Side::Client, ts, &held);
        } else {
            c.comment(&format!(
                "smtptap: {} bytes the client sent after STARTTLS, before the server's reply, are left out: they were not TLS and could not be checked for AUTH credentials or bodies",
                held.len()
            ));
            c.skip(Side::Client, ts, held.len());
        }
    }

    /// Capture for bytes no SMTP observer marks (TLS, or after an observer
    /// stopped): written as they are, unless the conversation was lost in
    /// cleartext and the capture policy asks for redaction, then left out
    /// (sequence numbers stay consistent) with one comment saying why.
    fn capture_unfollowed(&mut self, side: Side, ts: Timestamp, bytes: &[u8]) {
        let Some(c) = self.capture.as_mut() else {
            return;
        };
        match blind_reason(c) {
            Some(why) if self.smtp_blind => {
                if !self.blind_noted {
                    c.comment(&blind_comment(why));
                    self.blind_noted = true;
                }
                c.skip(side, ts, bytes.len());
            }
            _ => c.data(side, ts, bytes),
        }
    }
}

/// Why bytes nobody follows must stay out of `c`'s file, per its policy
/// (None: they may be written).
fn blind_reason(c: &SessionCapture) -> Option<&'static str> {
    match c.policy() {
        (true, false) => None,
        (true, true) => Some("AUTH credentials could not be redacted (capture.redact_auth)"),
        (false, false) => Some("message bodies could not be left out (capture.bodies = false)"),
        (false, true) => Some(
            "AUTH credentials could not be redacted (capture.redact_auth) nor message bodies left out (capture.bodies = false)",
        ),
    }
}

fn blind_comment(why: &str) -> String {
    format!(
        "smtptap: the conversation could no longer be followed here; the rest of this session is left out of the capture because {why}"
    )
}

fn side_index(side: Side) -> usize {
    match side {
        Side::Client => 0,
        Side::Server => 1,
    }
}

/// Hands SMTP bytes to the capture: DATA/BDAT payload skipped when
/// `capture.bodies = false`, AUTH secrets replaced by `*` when
/// `capture.redact_auth = true` (both per the marks of the SMTP observer).
fn capture_marked(c: &mut SessionCapture, side: Side, ts: Timestamp, bytes: &[u8], marks: &[Mark]) {
    let (bodies, redact) = c.policy();
    let relevant = marks.iter().any(|m| match m.kind {
        MarkKind::Body => !bodies,
        MarkKind::Secret => redact,
        MarkKind::Held => false,
    });
    if !relevant {
        c.data(side, ts, bytes);
        return;
    }
    let data: std::borrow::Cow<'_, [u8]> =
        if redact && marks.iter().any(|m| m.kind == MarkKind::Secret) {
            let mut redacted = bytes.to_vec();
            for m in marks.iter().filter(|m| m.kind == MarkKind::Secret) {
                if let Some(r) = redacted.get_mut(m.range.clone()) {
                    for b in r.iter_mut() {
                        if !matches!(*b, b'\r' | b'\n') {
                            *b = b'*';
                        }
                    }
                }
            }
            std::borrow::Cow::Owned(redacted)
        } else {
            std::borrow::Cow::Borrowed(bytes)
        };
    let data = &data[..];
    if bodies {
        c.data(side, ts, data);
        return;
    }
    let mut pos = 0;
    for m in marks.iter().filter(|m| m.kind == MarkKind::Body) {
        let start = m.range.start.min(data.len());
        let end = m.range.end.min(data.len());
        if start > pos {
            c.data(side, ts, &data[pos..start]);
        }
        if end > start {
            c.skip(side, ts, end - start);
        }
        pos = pos.max(end);
    }
    if pos < data.len() {
        c.data(side, ts, &data[pos..]);
    }
}

/// Runs the analysis of one session until the controller reports its end.
pub async fn analyze(
    info: SessionInfo,
    mut data: mpsc::Receiver<TapMsg>,
    mut ctl: mpsc::Receiver<Control>,
    analysis: Arc<Analysis>,
    sink: EventSink,
) {
    let stage = if info.implicit_tls {
        Stage::Tls(Box::new(TlsObserver::new()))
    } else {
        Stage::Smtp(Box::new(SmtpObserver::new(SmtpLimits::default())))
    };
    let mut st = State {
        info: info.clone(),
        analysis,
        sink,
        kept: Vec::new(),
        kept_bytes: 0,
        counts: summary::Counts::default(),
        not_kept: 0,
        stage,
        capture: None,
        names: LearntNames::default(),
        upstream_addr: None,
        pending: Vec::new(),
        smtp_blind: false,
        blind_noted: false,
        held_capture: Vec::new(),
        fed: [0, 0],
    };
    st.emit(
        info.opened,
        SessionEvent::Open {
            client: info.client,
            client_ip: info.client.ip(),
            client_port: info.client.port(),
            listener: info.listener,
            upstream: info.upstream.to_string(),
            implicit_tls: info.implicit_tls,
        },
    )
    .await;

    let mut upstream_addr = None;
    let first = loop {
        match ctl.recv().await {
            Some(Control::LoopRefused {
                ts,
                original_dst,
                reason,
            }) => {
                st.emit(
                    ts,
                    SessionEvent::UpstreamLoopRefused {
                        original_dst,
                        reason,
                    },
                )
                .await;
            }
            other => break other,
        }
    };
    match first {
        Some(Control::Connected {
            ts,
            peer,
            local,
            elapsed,
        }) => {
            upstream_addr = Some(peer);
            st.upstream_addr = Some(peer);
            if let Some(cap) = &st.analysis.capture {
                st.capture = cap.session(FlowInfo {
                    session: info.id,
                    client: info.client,
                    proxy_listen: info.listener,
                    proxy_upstream_local: Some(local),
                    upstream: peer,
                    opened: info.opened,
                });
            }
            st.emit(
                ts,
                SessionEvent::UpstreamConnected {
                    server: peer,
                    server_ip: peer.ip(),
                    server_port: peer.port(),
                    local,
                    connect_s: elapsed.as_secs_f64(),
                },
            )
            .await;
            if let Some((ago, prior, why)) = st.analysis.prior_failure(info.client.ip()) {
                st.emit(
                    ts,
                    SessionEvent::PriorTlsFailure {
                        prior_session: prior,
                        ago_s: ago.as_secs_f64(),
                        reason: why,
                    },
                )
                .await;
            }
            if info.implicit_tls {
                st.emit(
                    ts,
                    SessionEvent::TlsStarted {
                        after: "implicit".into(),
                    },
                )
                .await;
            }
        }
        Some(Control::UpstreamFailed { ts, failure, reply }) => {
            let (reply_line, delivered) = match reply {
                Some((l, d)) => (Some(l), d),
                None => (None, false),
            };
            st.emit(
                ts,
                SessionEvent::UpstreamFailed {
                    upstream: info.upstream.to_string(),
                    error: "other".into(),
                    detail: failure.error,
                    tried: failure.tried,
                    action: if reply_line.is_some() {
                        "reply"
                    } else {
                        "close"
                    }
                    .into(),
                    reply: reply_line,
                    reply_delivered: delivered,
                },
            )
            .await;
            st.emit(
                ts,
                SessionEvent::Close {
                    reason: "upstream_failed".into(),
                    client_end: "closed_by_proxy".into(),
                    server_end: "never_connected".into(),
                    error: None,
                    detail: None,
                    duration_s: ts.since(info.opened),
                    client_bytes: 0,
                    server_bytes: 0,
                },
            )
            .await;
            finish(&mut st, ts, None, 0, 0, "upstream_failed").await;
            return;
        }
        Some(Control::Closed { .. }) | Some(Control::LoopRefused { .. }) | None => {}
    }

    st.flush().await;
    while let Some(msg) = data.recv().await {
        if matches!(msg, TapMsg::Eof { .. }) && matches!(st.stage, Stage::Sniff(_)) {
            // A side closed before the server spoke: report the ClientHello.
            st.sniffed_tls(None).await;
        }
        match msg {
            TapMsg::Data(chunk) => st.on_data(chunk.side, chunk.ts, &chunk.bytes).await,
            TapMsg::Eof { side, ts } => {
                if let Some(c) = st.capture.as_mut() {
                    c.end(side, ts, CloseKind::Fin);
                }
                st.emit(ts, SessionEvent::HalfClose { side }).await;
            }
        }
        st.flush().await;
    }

    if matches!(st.stage, Stage::Sniff(_)) {
        st.sniffed_tls(None).await;
        st.flush().await;
    }
    let (ts, outcome, loss) = match ctl.recv().await {
        Some(Control::Closed { ts, outcome, loss }) => (ts, outcome, loss),
        _ => (
            Timestamp::now(),
            RelayOutcome {
                client_end: DirEnd::Aborted,
                server_end: DirEnd::Aborted,
                client_bytes: 0,
                server_bytes: 0,
            },
            None,
        ),
    };
    // Held bytes whose STARTTLS reply never came.
    st.release_held(ts, false);
    if let Some(mut c) = st.capture.take() {
        if let Some((side, bytes)) = loss {
            c.comment(&format!(
                "smtptap: the analysis fell behind; {bytes} relayed bytes from the {side} onwards are missing from this capture"
            ));
        }
        for (side, end) in [
            (Side::Client, &outcome.client_end),
            (Side::Server, &outcome.server_end),
        ] {
            match end {
                DirEnd::Fin => {}
                DirEnd::Error(_) | DirEnd::PeerFailed => c.end(side, ts, CloseKind::Rst),
                DirEnd::Idle | DirEnd::Aborted => c.end(side, ts, CloseKind::Fin),
            }
        }
        let mut evs = c.take_events();
        evs.extend(c.close(ts));
        for e in evs {
            st.emit(ts, e).await;
        }
    }
    st.flush().await;
    if let Some(cap) = &st.analysis.capture {
        st.sink.send_batch(cap.take_events()).await;
    }
    if let Some((side, bytes)) = loss {
        st.emit(
            ts,
            SessionEvent::ObserverLagged {
                side,
                bytes_not_analysed: bytes,
                note: "the analysis fell behind and its queue overflowed: bytes from this point were relayed unchanged but not analysed; facts after it are missing".into(),
            },
        )
        .await;
    }
    let reason = close_reason(&outcome);
    let error = [&outcome.client_end, &outcome.server_end]
        .iter()
        .find_map(|e| match e {
            DirEnd::Error(m) => Some(m.clone()),
            _ => None,
        });
    st.emit(
        ts,
        SessionEvent::Close {
            reason: reason.into(),
            client_end: outcome.client_end.word().into(),
            server_end: outcome.server_end.word().into(),
            error: error.as_ref().map(|_| "other".to_string()),
            detail: error,
            duration_s: ts.since(info.opened),
            client_bytes: outcome.client_bytes,
            server_bytes: outcome.server_bytes,
        },
    )
    .await;
    finish(
        &mut st,
        ts,
        upstream_addr,
        outcome.client_bytes,
        outcome.server_bytes,
        reason,
    )
    .await;
}

fn close_reason(o: &RelayOutcome) -> &'static str {
    let ends = [&o.client_end, &o.server_end];
    if ends.iter().any(|e| **e == DirEnd::Idle) {
        "idle_timeout"
    } else if ends.iter().any(|e| **e == DirEnd::Aborted) {
        "shutdown"
    } else if ends.iter().any(|e| matches!(e, DirEnd::Error(_))) {
        "error"
    } else {
        "completed"
    }
}

async fn finish(
    st: &mut State,
    ts: Timestamp,
    upstream_addr: Option<SocketAddr>,
    client_bytes: u64,
    server_bytes: u64,
    reason: &str,
) {
    let ctx = diagnose::Context {
        expiry_warning_days: st.analysis.tls.expiry_warning_days,
    };
    let findings: Vec<Finding> = diagnose::diagnose(&st.kept, &ctx);
    let started = st
        .kept
        .iter()
        .any(|e| matches!(e.kind, EventKind::Session(SessionEvent::TlsStarted { .. })));
    if started {
        let failed = findings
            .iter()
            .find(|f| f.id == "tls.handshake_failed" || f.id == "tls.not_tls")
            .map(|f| f.title.clone());
        st.analysis
            .record_tls_outcome(st.info.client.ip(), st.info.id, failed);
    }
    let summary: SessionSummary = summary::summarize(
        &st.info,
        upstream_addr,
        &st.kept,
        summary::Totals {
            duration_s: ts.since(st.info.opened),
            client_bytes,
            server_bytes,
            close_reason: reason.to_string(),
            events_not_kept: st.not_kept,
            counts: std::mem::take(&mut st.counts),
        },
        findings,
    );
    st.emit(ts, SessionEvent::Summary(Box::new(summary))).await;
    st.flush().await;
}
