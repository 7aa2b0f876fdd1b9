//! The session core: one [`SessionAnalyzer`] per session, synchronous and
//! sans-IO. Drivers feed it a session's facts — opened, upstream connected
//! or failed, bytes `(leg, side, ts, &[u8])`, FIN, closed — and take back
//! [`Event`]s and [`Request`]s for work it must not do itself (fetch these
//! CRLs). It reads no clock (time comes with the inputs, so a capture's
//! timestamps work as live ones do), touches no socket, spawns nothing, and
//! runs without an async runtime. The live proxy (`proxy::analysis`) and
//! `smtptap probe` (`probe`) drive it today, the proxy's intercept mode
//! included (`proxy::intercept`); offline analysis will drive the same type.
//!
//! ```text
//!  driver ──opened / upstream_connected / upstream_failed / loop_refused──▶ ┐
//!         ──bytes(leg, side, ts, &[u8]) / fin(leg, side, ts)─────────────▶ │ SessionAnalyzer
//!         ──plaintext(side, ts, &[u8]) (the SMTP inside TLS, intercept) ─▶ │
//!         ──crls_fetched(id, outcomes)────────────────────────────────────▶ │  ├─ stage: Sniff → Smtp → Tls → Off   (stage.rs)
//!         ──close(ts, ends, loss)─────────────────────────────────────────▶ ┘  ├─ capture policy                     (capture_policy.rs)
//!                                                                              ├─ names for certificate checks       (names.rs)
//!  driver ◀── take_events(): Event{run, session, leg, ts, …} ─────────────────  ├─ CRL requests                       (revocation.rs)
//!  driver ◀── take_requests(): Request::FetchCrls{id, urls} ──────────────────  ├─ kept events and counts             (record.rs)
//!                                                                              └─ close: diagnosis + summary         (finish.rs)
//! ```
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | [`SessionAnalyzer`] and its inputs' entry points |
//! | `input.rs` | the driver-facing facts: [`DirEnd`], [`Ends`], [`UpstreamFailure`], [`Request`], [`CrlOutcome`] |
//! | `shared.rs` | [`Analysis`]: what the sessions of a run share (config, trust store, capture, prior-failure memory in event time) |
//! | `stage.rs` | the stage machine (sniff, SMTP, TLS, off) and the per-leg TLS observers |
//! | `capture_policy.rs` | what of the bytes reaches the pcapng flow (bodies, AUTH, held and unfollowable bytes) |
//! | `plaintext.rs` | the SMTP conversation inside TLS fed by a driver that decrypts it (intercept) |
//! | `names.rs` | host names learnt from the conversation, and the names a chain is checked against |
//! | `revocation.rs` | which CRLs a chain needs, chains waiting for them, `cert.crl` events |
//! | `record.rs` | event stamping (run, session, leg), the bounded kept set, exact counts |
//! | `finish.rs` | the end: capture close, `observer.lagged`, `session.close`, diagnosis, `session.summary` |
//! | `gave_up.rs` | at close: a client that completed the TLS handshake and left without a command (`tls.client_gave_up`) |
//!
//! It must not: do I/O, read the clock, wait, or depend on `proxy`.
//! Memory per session is bounded: the observers' own bounds, the sniff hold
//! ([`stage::SNIFF_MAX`]), the kept events ([`record::MAX_KEPT_EVENTS`],
//! [`record::MAX_KEPT_BYTES`]), and certificate chains waiting for CRLs
//! (one per TLS session and side).
//!
//! Legs: in passthrough every byte is fed as [`Leg::EndToEnd`] (the client's
//! TLS runs through smtptap to the server). Intercept mode feeds its two
//! TLS sessions as [`Leg::ClientProxy`] and [`Leg::ProxyServer`]: each gets
//! its own TLS observer and its facts carry that leg; the diagnosis judges
//! only certificates the server presented, never one smtptap minted. The
//! SMTP it decrypts comes in through [`SessionAnalyzer::plaintext`]
//! (`plaintext.rs`), its own facts through `intercept_fact`, and secrets to
//! embed in the capture through `tls_secrets`.

mod capture_policy;
mod finish;
mod gave_up;
pub mod input;
mod names;
mod plaintext;
mod record;
pub mod revocation;
mod shared;
mod side_probe;
pub mod stage;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;

use crate::capture::FlowInfo;
use crate::cert::{self, CheckContext};
use crate::config::Upstream;
use crate::event::{Event, EventKind, Leg, SessionEvent, SessionId, Side, Source, Timestamp};
use crate::smtp::{SmtpLimits, SmtpObserver};
use crate::tls::TlsObserver;

pub use input::{
    CrlError, CrlOutcome, DirEnd, Ends, Request, RequestId, SideProbeError, SideProbeOutcome,
    SideProbeTls, UpstreamFailure,
};
pub use record::{MAX_KEPT_BYTES, MAX_KEPT_EVENTS};
pub use shared::{Analysis, PriorFailure, FALLBACK_WINDOW};

use capture_policy::CapturePolicy;
use names::LearntNames;
use record::Record;
use revocation::PendingChain;
use stage::Stage;

/// Facts known when the session starts.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// Session id.
    pub id: SessionId,
    /// The client's address.
    pub client: SocketAddr,
    /// The proxy address the client connected to.
    pub listener: SocketAddr,
    /// The configured upstream (or, transparent, the original destination).
    pub upstream: Upstream,
    /// When the connection was accepted.
    pub opened: Timestamp,
    /// TLS from the first byte, by configuration.
    pub implicit_tls: bool,
}

/// The analysis of one session (see the module doc).
#[derive(Debug)]
pub struct SessionAnalyzer {
    info: SessionInfo,
    shared: Arc<Analysis>,
    rec: Record,
    /// Which observer reads the end-to-end stream.
    stage: Stage,
    /// Intercept legs' TLS observers: `[client_proxy, proxy_server]`.
    legs: [Option<Box<TlsObserver>>; 2],
    /// An intercept leg's observer finished or gave up: it is not restarted.
    legs_done: [bool; 2],
    /// The capture and its policy state.
    cap: CapturePolicy,
    /// Names learnt from the conversation, to check certificates against.
    names: LearntNames,
    /// The upstream address connected to (selects `[[destination]]` settings).
    upstream_addr: Option<SocketAddr>,
    /// End-to-end bytes fed so far per side (`[client, server]`), to place
    /// observer offsets in a chunk.
    fed: [u64; 2],
    /// Requests not yet taken by the driver.
    requests: Vec<Request>,
    /// Chains waiting for their CRLs.
    pending: Vec<PendingChain>,
    next_request: RequestId,
    /// `session.summary` was written: later inputs are ignored.
    finished: bool,
    /// The server answered the client's QUIT with 221: the conversation is
    /// over, and a reset after it is a normal end ([`Ends::reason`]).
    quit_answered: bool,
    /// The side-probe asked for when TLS 1.3 hides the certificate.
    side: side_probe::SideProbeState,
    /// The SMTP conversation inside TLS, when a driver decrypts it
    /// ([`SessionAnalyzer::plaintext`]).
    inner: plaintext::Inner,
}

impl SessionAnalyzer {
    /// A new session: records `session.open`.
    pub fn new(info: SessionInfo, shared: Arc<Analysis>) -> Self {
        let stage = if info.implicit_tls {
            Stage::Tls(Box::new(TlsObserver::new()))
        } else {
            Stage::Smtp(Box::new(SmtpObserver::new(SmtpLimits::default())))
        };
        let mut a = SessionAnalyzer {
            rec: Record::new(shared.run.clone(), info.id),
            info,
            shared,
            stage,
            legs: [None, None],
            legs_done: [false, false],
            cap: CapturePolicy::default(),
            names: LearntNames::default(),
            upstream_addr: None,
            fed: [0, 0],
            requests: Vec::new(),
            pending: Vec::new(),
            next_request: 1,
            finished: false,
            quit_answered: false,
            side: side_probe::SideProbeState::default(),
            inner: plaintext::Inner::default(),
        };
        let i = &a.info;
        let open = SessionEvent::Open {
            client: i.client,
            client_ip: i.client.ip(),
            client_port: i.client.port(),
            listener: i.listener,
            upstream: i.upstream.to_string(),
            implicit_tls: i.implicit_tls,
        };
        let ts = i.opened;
        a.emit(ts, None, open);
        a
    }

    /// The session's facts.
    pub fn info(&self) -> &SessionInfo {
        &self.info
    }

    /// Events produced since the last call, in order, for the sinks.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.rec.out)
    }

    /// Whether events are waiting to be taken.
    pub fn has_events(&self) -> bool {
        !self.rec.out.is_empty()
    }

    /// Requests produced since the last call: do them, then feed the results.
    pub fn take_requests(&mut self) -> Vec<Request> {
        std::mem::take(&mut self.requests)
    }

    /// The events kept for the diagnosis (bounded), in order.
    pub fn kept(&self) -> &[Event] {
        &self.rec.kept
    }

    /// Whether `session.summary` was written.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Transparent mode: the original destination is smtptap itself.
    pub fn loop_refused(&mut self, ts: Timestamp, original_dst: SocketAddr, reason: String) {
        self.emit(
            ts,
            None,
            SessionEvent::UpstreamLoopRefused {
                original_dst,
                reason,
            },
        );
    }

    /// The upstream connection is up (`server`, from `local`) after
    /// `connect_s` seconds; the relay starts.
    pub fn upstream_connected(
        &mut self,
        ts: Timestamp,
        server: SocketAddr,
        local: SocketAddr,
        connect_s: f64,
    ) {
        self.upstream_addr = Some(server);
        if let Some(cap) = &self.shared.capture {
            self.cap.capture = cap
                .session(FlowInfo {
                    session: self.info.id,
                    client: self.info.client,
                    proxy_listen: self.info.listener,
                    proxy_upstream_local: Some(local),
                    upstream: server,
                    opened: self.info.opened,
                })
                .map(Box::new);
        }
        self.emit(
            ts,
            None,
            SessionEvent::UpstreamConnected {
                server,
                server_ip: server.ip(),
                server_port: server.port(),
                local,
                connect_s,
            },
        );
        if let Some(p) = self.shared.prior_failure(self.info.client.ip(), ts) {
            self.emit(
                ts,
                None,
                SessionEvent::PriorTlsFailure {
                    prior_session: p.session,
                    ago_s: p.ago_s,
                    reason: p.reason,
                },
            );
        }
        if self.info.implicit_tls {
            self.emit(
                ts,
                Some(Leg::EndToEnd),
                SessionEvent::TlsStarted {
                    after: "implicit".into(),
                },
            );
        }
    }

    /// Bytes relayed on `leg`, sent by `side`, read at `ts`. Any split.
    pub fn bytes(&mut self, leg: Leg, side: Side, ts: Timestamp, data: &[u8]) {
        if self.finished || data.is_empty() {
            return;
        }
        match leg {
            Leg::EndToEnd => self.end_to_end(side, ts, data),
            Leg::ClientProxy | Leg::ProxyServer => self.leg_bytes(leg, side, ts, data),
        }
    }

    /// `side` closed its sending direction on `leg` (FIN).
    pub fn fin(&mut self, leg: Leg, side: Side, ts: Timestamp) {
        if self.finished {
            return;
        }
        if leg == Leg::EndToEnd {
            if matches!(self.stage, Stage::Sniff(_)) {
                // A side closed before the server spoke: report the ClientHello.
                self.sniffed_tls(ts, None);
            }
            self.cap.fin(side, ts);
        } else {
            self.cap
                .leg_fin(usize::from(leg == Leg::ProxyServer), side, ts);
        }
        self.emit(ts, None, SessionEvent::HalfClose { side });
    }

    /// Records an event.
    fn emit(&mut self, ts: Timestamp, leg: Option<Leg>, kind: impl Into<EventKind>) {
        self.emit_from(ts, leg, None, kind);
    }

    /// Records an event whose evidence came from `source` (not the wire).
    fn emit_from(
        &mut self,
        ts: Timestamp,
        leg: Option<Leg>,
        source: Option<Source>,
        kind: impl Into<EventKind>,
    ) {
        let kind = kind.into();
        self.names.learn(&kind);
        if self.side.learn(&kind, leg) {
            self.ask_side_probe();
        }
        if let EventKind::Smtp(crate::smtp::SmtpEvent::Reply {
            code: 221,
            command: Some(c),
            ..
        }) = &kind
        {
            if c.trim().eq_ignore_ascii_case("QUIT") {
                self.quit_answered = true;
            }
        }
        let leg = match &kind {
            EventKind::Tls(_) | EventKind::Cert(_) => leg.or(Some(Leg::EndToEnd)),
            _ => leg,
        };
        self.rec.push(ts, leg, source, kind);
    }

    /// TLS 1.3 hid the server's certificate: ask the driver for a
    /// side-probe, if configured and if chains are checked at all.
    fn ask_side_probe(&mut self) {
        let (Some(addr), true, true) = (
            self.upstream_addr,
            self.shared.cfg.tls.side_probe,
            self.shared.trust.is_some(),
        ) else {
            return;
        };
        let id = self.next_request;
        self.next_request += 1;
        let r = self.side.request(id, addr, self.info.implicit_tls);
        self.requests.push(r);
    }

    /// The answer to a [`Request::SideProbe`]: a `tls.side_probe` event,
    /// then (on success) the chain's analysis, its events marked
    /// `source: "side_probe"`. An answer after the session closed, or to
    /// another request, is ignored.
    pub fn side_probe_done(&mut self, id: RequestId, ts: Timestamp, outcome: SideProbeOutcome) {
        if self.finished || self.side.asked != Some(id) {
            return;
        }
        self.side.asked = None;
        let Some(addr) = self.upstream_addr else {
            return;
        };
        let (ok, version, cipher, chain_len, error, detail) = match &outcome.result {
            Ok(t) => (
                true,
                Some(t.version.clone()),
                Some(t.cipher.clone()),
                t.chain.len(),
                None,
                None,
            ),
            Err(e) => (
                false,
                None,
                None,
                0,
                Some(e.code.to_string()),
                Some(e.detail.clone()),
            ),
        };
        let ev = SessionEvent::SideProbe {
            server_ip: addr.ip(),
            server_port: addr.port(),
            sni: self.side.sni().map(str::to_string),
            ok: ok && chain_len > 0,
            version,
            cipher,
            chain_len,
            cached: outcome.cached,
            age_s: (outcome.age_s.max(0.0) * 1000.0).round() / 1000.0,
            error,
            detail,
        };
        self.emit(ts, Some(Leg::EndToEnd), ev);
        if let Ok(t) = outcome.result {
            if !t.chain.is_empty() {
                self.on_chain(
                    ts,
                    Leg::EndToEnd,
                    Side::Server,
                    t.chain,
                    Some(Source::SideProbe),
                );
            }
        }
    }

    /// A certificate chain sent by `sender` on `leg`: analysed now, or once
    /// its CRLs are fetched (`check_revocation`).
    fn on_chain(
        &mut self,
        ts: Timestamp,
        leg: Leg,
        sender: Side,
        ders: Vec<Vec<u8>>,
        source: Option<Source>,
    ) {
        if self.shared.trust.is_none() {
            return;
        }
        if self.shared.cfg.tls.check_revocation {
            let urls = revocation::crl_urls(&ders);
            if !urls.is_empty() {
                let id = self.next_request;
                self.next_request += 1;
                self.requests.push(Request::FetchCrls { id, urls });
                self.pending.push(PendingChain {
                    id,
                    ts,
                    side: sender,
                    leg,
                    ders,
                    source,
                });
                return;
            }
        }
        self.analyze_chain(ts, leg, sender, &ders, &[], source);
    }

    /// A certificate chain the driver learnt other than from the wire bytes
    /// fed here (a TLS 1.3 handshake the driver itself made, as the probe
    /// does): analysed exactly like a chain seen on the wire, on `leg`.
    pub fn peer_chain(&mut self, ts: Timestamp, leg: Leg, sender: Side, ders: Vec<Vec<u8>>) {
        if self.finished || ders.is_empty() {
            return;
        }
        self.on_chain(ts, leg, sender, ders, Some(Source::Handshake));
    }

    /// The results of a [`Request::FetchCrls`]: `cert.crl` events, then the
    /// chain's analysis with those CRLs.
    pub fn crls_fetched(&mut self, id: RequestId, outcomes: Vec<CrlOutcome>) {
        let Some(pos) = self.pending.iter().position(|p| p.id == id) else {
            return;
        };
        let chain = self.pending.remove(pos);
        let (events, crls) = revocation::crl_events(chain.side, outcomes);
        for e in events {
            self.emit_from(chain.ts, Some(chain.leg), chain.source, e);
        }
        self.analyze_chain(
            chain.ts,
            chain.leg,
            chain.side,
            &chain.ders,
            &crls,
            chain.source,
        );
    }

    fn analyze_chain(
        &mut self,
        ts: Timestamp,
        leg: Leg,
        sender: Side,
        ders: &[Vec<u8>],
        crls: &[Vec<u8>],
        source: Option<Source>,
    ) {
        let ctx = CheckContext {
            names: self.names.names_for(
                sender,
                &self.shared.cfg,
                &self.info.upstream.host,
                self.upstream_addr,
            ),
            expiry_warning_days: self.shared.cfg.tls.expiry_warning_days,
            now: ts.0,
        };
        let events = match &self.shared.trust {
            Some(store) => cert::analyze_chain_with_crls(ders, sender, &ctx, store, crls),
            None => return,
        };
        for e in events {
            self.emit_from(ts, Some(leg), source, e);
        }
    }
}
