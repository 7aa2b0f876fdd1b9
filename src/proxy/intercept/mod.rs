//! Intercept mode (`mode = "intercept"`): smtptap terminates TLS on both
//! legs — the client's server, presenting a minted (or static) certificate,
//! and the server's client — so the SMTP inside TLS can be observed.
//!
//! ```text
//!  client ──cleartext (verbatim, tapped end_to_end)──▶ server      cleartext.rs: stop exactly after
//!                                                                 the 220 to STARTTLS
//!  client ──ClientHello (buffered raw)                            hello.rs: can rustls serve it?
//!     ├─ no  → forward the buffered bytes untouched, ordinary relay (passthrough), intercept.decision says why
//!     └─ yes → rustls client to the server (records chain and verdict; enforce refuses)   certs.rs
//!              mint a leaf in the image of the server's (cache), rustls server to the client
//!              (the buffered hello replayed first)                                          io.rs
//!              decrypted SMTP relayed verbatim both ways (relay::pump), tapped as plaintext
//! ```
//!
//! Each leg's raw TLS bytes are tapped on `client_proxy` / `proxy_server`
//! (their own TLS observers in the session core); the decrypted bytes go to
//! the core's plaintext input; smtptap's own handshake outcomes are
//! `intercept.handshake` facts. Implicit TLS is intercepted from the first
//! byte. The session's deadlines (idle, line, session) and abort hold from
//! the first byte too: a guard in `run` watches the phases before the
//! decrypted relay, which then keeps the session's clock. This module owns
//! the sockets of an intercepted session; it must not
//! parse protocols itself (the `smtp` observer finds the boundary, the `tls`
//! parser reads the hello) nor wait on the analysis.

mod certs;
mod cleartext;
mod hello;
mod io;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::config::ProxyConfig;
use crate::event::{Leg, SessionEvent, Side, Timestamp};
use crate::proxy::relay::{self, RelayOutcome, Tap};
use crate::session::{Analysis, DirEnd, SessionAnalyzer};
use crate::tls::names::{suite_name, version_name};

pub(crate) use certs::Shared;

/// What an intercepted session tells its analysis besides relayed
/// bytes (through the same ordered, never-waiting tap).
#[derive(Debug)]
pub enum Tapped {
    /// Raw TLS bytes of one leg.
    Wire {
        /// Which leg.
        leg: Leg,
        /// Who sent them.
        side: Side,
        /// When.
        ts: Timestamp,
        /// The bytes.
        bytes: Bytes,
    },
    /// A side closed one leg.
    WireFin {
        /// Which leg.
        leg: Leg,
        /// Who closed.
        side: Side,
        /// When.
        ts: Timestamp,
    },
    /// From here on, relayed chunks (`TapMsg::Data`/`Eof`) are the decrypted conversation.
    Decrypting,
    /// The client spoke TLS from its first byte on a listener not configured
    /// for implicit TLS, and the session is intercepted as SMTPS.
    ImplicitTls {
        /// When it was seen.
        ts: Timestamp,
    },
    /// One of smtptap's facts (`intercept.decision`, `intercept.handshake`).
    Fact {
        /// When.
        ts: Timestamp,
        /// The leg it concerns, if any.
        leg: Option<Leg>,
        /// The fact.
        fact: SessionEvent,
    },
    /// A peer's chain from a TLS 1.3 handshake of smtptap's (encrypted on
    /// the wire): the server's on `proxy_server`, or the client
    /// certificate the client sent on `client_proxy`.
    Chain {
        /// When.
        ts: Timestamp,
        /// The leg.
        leg: Leg,
        /// DER, leaf first.
        ders: Vec<Vec<u8>>,
    },
    /// NSS key log lines to embed in the capture.
    Secrets {
        /// The lines.
        keylog: Vec<u8>,
    },
}

/// Feeds one message to the analyzer (the analysis calls this).
/// `plain` is set by [`Tapped::Decrypting`].
pub(crate) fn feed(a: &mut SessionAnalyzer, msg: Tapped, plain: &mut bool) {
    match msg {
        Tapped::Wire {
            leg,
            side,
            ts,
            bytes,
        } => a.bytes(leg, side, ts, &bytes),
        Tapped::WireFin { leg, side, ts } => a.fin(leg, side, ts),
        Tapped::Decrypting => *plain = true,
        Tapped::ImplicitTls { ts } => a.implicit_tls_detected(ts),
        Tapped::Fact { ts, leg, fact } => a.intercept_fact(ts, leg, fact),
        Tapped::Chain { ts, leg, ders } => {
            let sender = match leg {
                Leg::ClientProxy => Side::Client,
                _ => Side::Server,
            };
            a.peer_chain(ts, leg, sender, ders)
        }
        Tapped::Secrets { keylog } => a.tls_secrets(&keylog),
    }
}

fn fact(tap: &Tap, leg: Option<Leg>, fact: SessionEvent) {
    tap.intercept(
        Side::Client,
        Tapped::Fact {
            ts: Timestamp::now(),
            leg,
            fact,
        },
        0,
    );
}

fn handshake_fact(ok: bool, error: Option<String>) -> SessionEvent {
    SessionEvent::InterceptHandshake {
        ok,
        version: None,
        cipher_suite: None,
        error,
        verified: None,
        verify_error: None,
        refused: false,
        client_cert_requested: None,
        client_cert_sent: None,
        presented: None,
    }
}

fn negotiated(c: &rustls::CommonState) -> (Option<String>, Option<String>) {
    (
        c.protocol_version().map(|v| version_name(u16::from(v))),
        c.negotiated_cipher_suite()
            .map(|s| suite_name(u16::from(s.suite()))),
    )
}

/// A fatal handshake_failure alert, sent to a client whose handshake
/// smtptap cannot complete.
const ALERT_HANDSHAKE_FAILURE: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28];

fn ends(client: DirEnd, server: DirEnd, moved: &cleartext::Moved) -> RelayOutcome {
    RelayOutcome {
        client_end: client,
        server_end: server,
        client_bytes: moved.client,
        server_bytes: moved.server,
    }
}

fn add(mut o: RelayOutcome, moved: &cleartext::Moved) -> RelayOutcome {
    o.client_bytes += moved.client;
    o.server_bytes += moved.server;
    o
}

/// Runs one intercepted session (instead of [`relay::relay`]).
///
/// Everything before a relay takes over (the cleartext phase, reading the
/// ClientHello, both handshakes) runs under the session's deadlines and
/// abort, as the relay does: a client trickling a byte at a time, a peer
/// that stops reading, or a drain's end cannot hold the session past them.
/// The relay that takes over keeps the session's clock (`Deadlines::since`).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run(
    shared: &Arc<Shared>,
    analysis: &Arc<Analysis>,
    cfg: &ProxyConfig,
    upstream_host: &str,
    client: TcpStream,
    server: TcpStream,
    tap: Tap,
    deadlines: relay::Deadlines,
    abort: watch::Receiver<bool>,
) -> RelayOutcome {
    let since = deadlines.since.unwrap_or_else(std::time::Instant::now);
    let deadlines = relay::Deadlines {
        since: Some(since),
        ..deadlines
    };
    let setup = Setup {
        activity: relay::Activity::since(since),
        handed_over: AtomicBool::new(false),
    };
    let mut watch_abort = abort.clone();
    let mut moved = cleartext::Moved::default();
    let end = {
        let run = phases(
            shared,
            analysis,
            cfg,
            upstream_host,
            client,
            server,
            tap,
            deadlines,
            abort,
            &setup,
            &mut moved,
        );
        tokio::pin!(run);
        tokio::select! {
            biased;
            o = &mut run => return o,
            end = guard(&deadlines, &setup, &mut watch_abort) => end,
        }
    };
    ends(end.clone(), end, &moved)
}

/// What the guard of [`run`] watches before a relay takes over.
struct Setup {
    /// Bytes moved and the client's unfinished line, before the relay.
    activity: relay::Activity,
    /// A relay took over (it enforces the deadlines from then on).
    handed_over: AtomicBool,
}

impl Setup {
    fn hand_over(&self) {
        self.handed_over.store(true, Ordering::Relaxed);
    }

    fn handed_over(&self) -> bool {
        self.handed_over.load(Ordering::Relaxed)
    }
}

/// Ends when a deadline passes or abort is signalled before the relay takes
/// over; never after.
async fn guard(
    deadlines: &relay::Deadlines,
    setup: &Setup,
    abort: &mut watch::Receiver<bool>,
) -> DirEnd {
    let mut tick = tokio::time::interval(deadlines.check_period());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if setup.handed_over() {
            return std::future::pending().await;
        }
        tokio::select! {
            biased;
            r = abort.changed() => {
                if (r.is_err() || *abort.borrow()) && !setup.handed_over() {
                    return DirEnd::Aborted;
                }
            }
            _ = tick.tick() => {
                if let Some(end) = relay::deadline_passed(deadlines, &setup.activity) {
                    if !setup.handed_over() {
                        return end;
                    }
                }
            }
        }
    }
}

/// The phases of [`run`] up to the relay that takes over.
#[allow(clippy::too_many_arguments)]
async fn phases(
    shared: &Arc<Shared>,
    analysis: &Arc<Analysis>,
    cfg: &ProxyConfig,
    upstream_host: &str,
    mut client: TcpStream,
    mut server: TcpStream,
    tap: Tap,
    deadlines: relay::Deadlines,
    abort: watch::Receiver<bool>,
    setup: &Setup,
    moved: &mut cleartext::Moved,
) -> RelayOutcome {
    let idle = deadlines.idle;
    let mut buf = BytesMut::new();
    // Implicit TLS seen on the wire rather than configured: said in the decision.
    let mut detected = "";
    if !cfg.implicit_tls {
        match cleartext::run(&mut client, &mut server, &tap, &setup.activity, moved).await {
            cleartext::Boundary::StartTls { held } => buf.extend_from_slice(&held),
            cleartext::Boundary::ImplicitTls { held } => {
                buf.extend_from_slice(&held);
                detected = " (the client spoke TLS first: implicit TLS, detected)";
            }
            cleartext::Boundary::Relay => {
                setup.hand_over();
                let o = relay::relay(client, server, tap, deadlines, abort).await;
                return add(o, moved);
            }
            cleartext::Boundary::Ended {
                client: c,
                server: s,
            } => return ends(c, s, moved),
        }
    }
    // Read the whole ClientHello before deciding.
    let hello = loop {
        match hello::examine(&buf) {
            hello::Buffered::Hello(ch) => break Ok(ch),
            hello::Buffered::Foreign(why) => break Err(why),
            hello::Buffered::Incomplete if buf.len() >= hello::MAX_HELLO => {
                break Err("the ClientHello is larger than 64 KiB".into())
            }
            hello::Buffered::Incomplete => {}
        }
        buf.reserve(4096);
        // Idleness, the session deadline and abort: `run`'s guard.
        match client.read_buf(&mut buf).await {
            Ok(0) => break Err("the client closed before its ClientHello was complete".into()),
            Ok(_) => setup.activity.touch(),
            Err(e) => {
                return ends(
                    DirEnd::io("reading from client", &e),
                    DirEnd::PeerFailed,
                    moved,
                )
            }
        }
    };
    let hello = hello.and_then(|ch| hello::servable(&ch, shared.rsa_ok()).map(|()| ch));
    let ch = match hello {
        Ok(ch) => ch,
        Err(why) => {
            // Passthrough for this session: the server has seen no TLS byte yet.
            fact(
                &tap,
                None,
                SessionEvent::InterceptDecision {
                    action: "passthrough".into(),
                    reason: format!("{why}{detected}"),
                    sni: None,
                    upstream_sni: None,
                },
            );
            let held = buf.freeze();
            if !held.is_empty() {
                tap.data(Side::Client, Timestamp::now(), held.clone());
                if let Err(e) = server.write_all(&held).await {
                    return ends(
                        DirEnd::io("writing to server", &e),
                        DirEnd::PeerFailed,
                        moved,
                    );
                }
                moved.client += held.len() as u64;
            }
            setup.hand_over();
            let o = relay::relay(client, server, tap, deadlines, abort).await;
            return add(o, moved);
        }
    };
    let sni = ch.sni.clone();
    let upstream_sni = sni
        .clone()
        .or_else(|| shared.cfg.upstream_name.clone())
        .or_else(|| {
            upstream_host
                .parse::<std::net::IpAddr>()
                .is_err()
                .then(|| upstream_host.to_string())
        });
    if !detected.is_empty() {
        tap.intercept(
            Side::Client,
            Tapped::ImplicitTls {
                ts: Timestamp::now(),
            },
            0,
        );
    }
    fact(
        &tap,
        None,
        SessionEvent::InterceptDecision {
            action: "intercept".into(),
            reason: format!("rustls can serve the client's ClientHello{detected}"),
            sni: sni.clone(),
            upstream_sni: upstream_sni.clone(),
        },
    );
    let hello_bytes = buf.freeze();
    tap.intercept(
        Side::Client,
        Tapped::Wire {
            leg: Leg::ClientProxy,
            side: Side::Client,
            ts: Timestamp::now(),
            bytes: hello_bytes.clone(),
        },
        hello_bytes.len(),
    );
    moved.client += hello_bytes.len() as u64;

    // The upstream leg first: its certificate is the image of the client's.
    let keylog = shared.session_keylog(tap.clone());
    let seen = Arc::new(Mutex::new(certs::Seen::default()));
    let server_name = match &upstream_sni {
        Some(n) => rustls::pki_types::ServerName::try_from(n.clone()).ok(),
        None => None,
    }
    .or_else(|| server.peer_addr().ok().map(|a| a.ip().into()));
    let Some(server_name) = server_name else {
        return ends(DirEnd::PeerFailed, DirEnd::PeerFailed, moved);
    };
    let connector = match shared.client_config(seen.clone(), analysis.clone(), keylog.clone()) {
        Ok(c) => tokio_rustls::TlsConnector::from(c),
        Err(e) => {
            fact(&tap, Some(Leg::ProxyServer), handshake_fact(false, Some(e)));
            return ends(DirEnd::PeerFailed, DirEnd::PeerFailed, moved);
        }
    };
    let embed = shared.cfg.embed_secrets;
    let up_io = io::LegStream::new(server, Leg::ProxyServer, tap.clone()).bounded(embed);
    // The handshake's own limit (it names the handshake in the report)
    // starts before the guard's idle clock is reset, so it fires first.
    let up = tokio::time::timeout(idle, connector.connect(server_name, up_io));
    setup.activity.touch();
    let up = up.await;
    let (verified, verify_error, chain, requested) = {
        let s = seen
            .lock()
            .map(|s| (s.verdict.clone(), s.chain.clone(), s.cert_requested));
        match s {
            Ok((v, c, r)) => (v.as_ref().map(Result::is_ok), v.and_then(Result::err), c, r),
            Err(_) => (None, None, Vec::new(), false),
        }
    };
    let enforce = shared.cfg.upstream_verify == crate::config::UpstreamVerify::Enforce;
    let mut up = match up {
        Ok(Ok(mut s)) => {
            s.get_mut().0.unbound();
            setup.activity.touch();
            s
        }
        failed => {
            let error = match failed {
                Ok(Err(e)) => handshake_error_words(&e),
                _ => format!("no answer within {}s", idle.as_secs()),
            };
            let refused = enforce && verified == Some(false);
            fact(
                &tap,
                Some(Leg::ProxyServer),
                SessionEvent::InterceptHandshake {
                    ok: false,
                    version: None,
                    cipher_suite: None,
                    error: Some(error.clone()),
                    verified,
                    verify_error,
                    refused,
                    client_cert_requested: Some(requested),
                    client_cert_sent: None,
                    presented: None,
                },
            );
            // Fail the client's handshake with an alert, as the server would have.
            let _ = client.write_all(&ALERT_HANDSHAKE_FAILURE).await;
            tap.intercept(
                Side::Server,
                Tapped::Wire {
                    leg: Leg::ClientProxy,
                    side: Side::Server,
                    ts: Timestamp::now(),
                    bytes: Bytes::from_static(&ALERT_HANDSHAKE_FAILURE),
                },
                ALERT_HANDSHAKE_FAILURE.len(),
            );
            let _ = client.shutdown().await;
            fact(
                &tap,
                Some(Leg::ClientProxy),
                handshake_fact(
                    false,
                    Some(format!(
                        "smtptap failed the client's handshake (alert handshake_failure) because its own with the server failed: {error}"
                    )),
                ),
            );
            return ends(
                DirEnd::PeerFailed,
                DirEnd::Error {
                    code: "tls",
                    detail: format!("TLS with the server failed: {error}"),
                },
                moved,
            );
        }
    };
    {
        let (_, conn) = up.get_ref();
        let (version, cipher_suite) = negotiated(conn);
        let tls13 = conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3);
        fact(
            &tap,
            Some(Leg::ProxyServer),
            SessionEvent::InterceptHandshake {
                ok: true,
                version,
                cipher_suite,
                error: None,
                verified,
                verify_error,
                refused: false,
                client_cert_requested: Some(requested),
                client_cert_sent: Some(requested && shared.cfg.client_cert.is_some()),
                presented: None,
            },
        );
        if tls13 && !chain.is_empty() {
            tap.intercept(
                Side::Server,
                Tapped::Chain {
                    ts: Timestamp::now(),
                    leg: Leg::ProxyServer,
                    ders: chain.clone(),
                },
                0,
            );
        }
    }

    // The client leg: mint (or pick) the leaf, then complete its handshake.
    let fallback_name = upstream_sni
        .clone()
        .unwrap_or_else(|| upstream_host.to_string());
    let leaf = shared.leaf(
        sni.as_deref(),
        chain.first().map(Vec::as_slice),
        &fallback_name,
    );
    let acceptor = leaf.and_then(|(k, desc)| {
        shared
            .server_config(k, keylog.clone())
            .map(|c| (tokio_rustls::TlsAcceptor::from(c), desc))
    });
    let (acceptor, presented) = match acceptor {
        Ok(a) => a,
        Err(e) => {
            fact(&tap, Some(Leg::ClientProxy), handshake_fact(false, Some(e)));
            let _ = client.write_all(&ALERT_HANDSHAKE_FAILURE).await;
            let _ = up.shutdown().await;
            return ends(DirEnd::PeerFailed, DirEnd::PeerFailed, moved);
        }
    };
    let client_io = io::Replay::new(
        hello_bytes,
        io::LegStream::new(client, Leg::ClientProxy, tap.clone()).bounded(embed),
    );
    let down = tokio::time::timeout(idle, acceptor.accept(client_io));
    setup.activity.touch();
    let down = down.await;
    let down = match down {
        Ok(Ok(mut s)) => {
            s.get_mut().0.inner.unbound();
            s
        }
        failed => {
            let error = match failed {
                Ok(Err(e)) => handshake_error_words(&e),
                _ => format!("no answer within {}s", idle.as_secs()),
            };
            let mut f = handshake_fact(false, Some(error.clone()));
            if let SessionEvent::InterceptHandshake { presented: p, .. } = &mut f {
                *p = Some(presented);
            }
            fact(&tap, Some(Leg::ClientProxy), f);
            let _ = up.shutdown().await;
            return ends(
                DirEnd::Error {
                    code: "tls",
                    detail: format!("TLS with the client failed: {error}"),
                },
                DirEnd::PeerFailed,
                moved,
            );
        }
    };
    {
        let (_, conn) = down.get_ref();
        let (version, cipher_suite) = negotiated(conn);
        // The client certificate the client sent: on the wire in TLS 1.2
        // (the observer reads it there), encrypted in TLS 1.3, so handed over.
        if conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3) {
            if let Some(certs) = conn.peer_certificates().filter(|c| !c.is_empty()) {
                tap.intercept(
                    Side::Client,
                    Tapped::Chain {
                        ts: Timestamp::now(),
                        leg: Leg::ClientProxy,
                        ders: certs.iter().map(|c| c.as_ref().to_vec()).collect(),
                    },
                    0,
                );
            }
        }
        fact(
            &tap,
            Some(Leg::ClientProxy),
            SessionEvent::InterceptHandshake {
                ok: true,
                version,
                cipher_suite,
                error: None,
                verified: None,
                verify_error: None,
                refused: false,
                client_cert_requested: Some(shared.cfg.request_client_cert),
                client_cert_sent: Some(conn.peer_certificates().is_some_and(|c| !c.is_empty())),
                presented: Some(presented),
            },
        );
    }
    tap.intercept(Side::Client, Tapped::Decrypting, 0);
    setup.hand_over();
    let o = decrypted_relay(down, up, &tap, deadlines, abort).await;
    add(o, moved)
}

/// Relays the decrypted conversation both ways, verbatim and bounded (the
/// relay's pump), until both directions end, one fails, idle, or abort.
async fn decrypted_relay<C, S>(
    client: C,
    server: S,
    tap: &Tap,
    deadlines: relay::Deadlines,
    mut abort: watch::Receiver<bool>,
) -> RelayOutcome
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let activity = deadlines
        .since
        .map_or_else(relay::Activity::new, relay::Activity::since);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (cr, cw) = tokio::io::split(client);
    let (sr, sw) = tokio::io::split(server);
    let mut cw = io::Flushed::new(cw);
    let mut sw = io::Flushed::new(sw);
    let mut cr = io::EofTolerant(cr);
    let mut sr = io::EofTolerant(sr);
    let mut client_res = None;
    let mut server_res = None;
    let mut stop_reason: Option<DirEnd> = None;
    {
        let c2s = relay::pump(
            Side::Client,
            &mut cr,
            &mut sw,
            tap,
            &activity,
            stop_rx.clone(),
        );
        let s2c = relay::pump(
            Side::Server,
            &mut sr,
            &mut cw,
            tap,
            &activity,
            stop_rx.clone(),
        );
        tokio::pin!(c2s);
        tokio::pin!(s2c);
        let mut idle_check = tokio::time::interval(deadlines.check_period());
        idle_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while client_res.is_none() || server_res.is_none() {
            tokio::select! {
                r = &mut c2s, if client_res.is_none() => {
                    if matches!(r.end, DirEnd::Error { .. }) && stop_reason.is_none() {
                        stop_reason = Some(DirEnd::PeerFailed);
                        let _ = stop_tx.send(true);
                    }
                    client_res = Some(r);
                }
                r = &mut s2c, if server_res.is_none() => {
                    if matches!(r.end, DirEnd::Error { .. }) && stop_reason.is_none() {
                        stop_reason = Some(DirEnd::PeerFailed);
                        let _ = stop_tx.send(true);
                    }
                    server_res = Some(r);
                }
                _ = idle_check.tick(), if stop_reason.is_none() => {
                    if let Some(end) = relay::deadline_passed(&deadlines, &activity) {
                        stop_reason = Some(end);
                        let _ = stop_tx.send(true);
                    }
                }
                r = abort.changed(), if stop_reason.is_none() => {
                    if r.is_err() || *abort.borrow() {
                        stop_reason = Some(DirEnd::Aborted);
                        let _ = stop_tx.send(true);
                    }
                }
            }
        }
    }
    let c = client_res.unwrap_or_else(relay::PumpResult::aborted);
    let s = server_res.unwrap_or_else(relay::PumpResult::aborted);
    let settle = |end: DirEnd| match (end, &stop_reason) {
        (DirEnd::Aborted, Some(reason)) => reason.clone(),
        (end, _) => end,
    };
    RelayOutcome {
        client_end: settle(c.end),
        server_end: settle(s.end),
        client_bytes: c.bytes,
        server_bytes: s.bytes,
    }
}

/// A failed handshake's error in words: rustls prints an alert as its Rust
/// name (`received fatal alert: UnknownCA`); the log and the console use
/// the TLS name (`unknown_ca`), as for alerts seen on the wire.
fn handshake_error_words(e: &std::io::Error) -> String {
    let inner = e.get_ref().and_then(|x| x.downcast_ref::<rustls::Error>());
    match inner {
        Some(rustls::Error::AlertReceived(a)) => format!(
            "the peer sent a fatal alert: {}",
            crate::tls::names::alert_name(u8::from(*a))
        ),
        Some(re) => re.to_string(),
        None => e.to_string(),
    }
}
