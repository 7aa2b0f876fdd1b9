//! The live driver of the session core: a future polled in each session's
//! task right after the session controller (see `together` in
//! [`super`]), it receives what the relay tapped and what the controller
//! reports, feeds them to a
//! [`SessionAnalyzer`], does the I/O the analyzer requests (CRL fetches, on
//! the blocking pool; side-probes, in a task of their own, see
//! [`super::side_probe`]), and hands the resulting events to the sinks.
//!
//! ```text
//!  controller ──TapMsg::Control (connected / upstream failed / loop / closed; push_always)──┐
//!  relay ──tap: TapMsg (chunks, FINs, in relay order; offer)──── one queue (tap_queue) ──────┴─▶ this future ─▶ SessionAnalyzer
//!                                                                               │  ▲ requests / results
//!                                                  sinks ◀── events ────────────┘  └─▶ CrlCache (blocking pool)
//! ```
//!
//! Each time it is polled, it analyses everything the relay queued
//! meanwhile (up to [`DRAIN`] messages) before handing the events to the
//! sinks as one batch: one hand-off per burst of traffic, not per chunk.
//! Polled after the controller in the same task, it sees in the same poll
//! what the relay read in it.
//!
//! It may fall behind (while it waits for a CRL fetch or for room at the
//! sinks); the relay never waits for it (see [`super::relay`]): the relay's
//! reads and writes go on in the controller, polled first. If it falls so
//! far behind that the tap queue
//! overflows, the relay stops offering bytes and the analyzer reports
//! `observer.lagged` at the end. Requests are served before the next input
//! is fed, so a chain's `cert.crl` and `cert.chain` events come right after
//! its `tls.certificate`, as they would without revocation checks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::crl::CrlCache;
use super::relay::{RelayOutcome, TapMsg};
use super::side_probe::{SideProbes, Target};
use crate::event::{Leg, Side, Timestamp};
use crate::session::{
    Ends, Request, RequestId, SessionAnalyzer, SideProbeError, SideProbeOutcome, UpstreamFailure,
};
use crate::sink::EventSink;

/// Messages from the session controller, in order: any `LoopRefused`, one of
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
        failure: UpstreamFailure,
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

/// Hands the analyzer's events to the sinks, as one batch.
fn flush<'a>(
    a: &mut SessionAnalyzer,
    sink: &'a EventSink,
) -> impl std::future::Future<Output = ()> + 'a {
    // Taken now, handed over before the first poll (see `send_batch`).
    sink.send_batch(if a.has_events() {
        a.take_events()
    } else {
        Vec::new()
    })
}

/// A side-probe running in its own task for this session.
type SideTask = (RequestId, tokio::task::JoinHandle<SideProbeOutcome>);

/// The side-probe's result when it comes (never, if there is none).
/// Boxed: the outcome is large and comes once, and a select's output is
/// as large as its largest branch's in every session's analysis future.
async fn side_result(side: &mut Option<SideTask>) -> Box<SideProbeOutcome> {
    match side {
        Some((_, h)) => Box::new(h.await.unwrap_or_else(|e| died(&e.to_string()))),
        None => std::future::pending().await,
    }
}

fn died(why: &str) -> SideProbeOutcome {
    SideProbeOutcome {
        result: Err(SideProbeError {
            code: "other",
            detail: format!("the side-probe task ended: {why}"),
        }),
        cached: false,
        age_s: 0.0,
    }
}

/// Does what the analyzer asked for and feeds the results back. A
/// side-probe is started in its own task (its answer comes later, see
/// [`run`]); CRLs are fetched before the next input.
async fn serve_requests(
    a: &mut SessionAnalyzer,
    crls: &Arc<CrlCache>,
    probes: &Arc<SideProbes>,
    side: &mut Option<SideTask>,
) {
    let requests = a.take_requests();
    if !requests.is_empty() {
        // Rare (a certificate seen, a TLS 1.3 session): its state lives on
        // the heap while it runs, not in every session's idle future.
        Box::pin(serve(a, requests, crls, probes, side)).await;
    }
}

/// [`serve_requests`] once there are requests.
async fn serve(
    a: &mut SessionAnalyzer,
    mut requests: Vec<Request>,
    crls: &Arc<CrlCache>,
    probes: &Arc<SideProbes>,
    side: &mut Option<SideTask>,
) {
    while !requests.is_empty() {
        for r in std::mem::take(&mut requests) {
            match r {
                Request::FetchCrls { id, urls } => {
                    let cache = crls.clone();
                    let outcomes =
                        tokio::task::spawn_blocking(move || cache.fetch_chain(&urls)).await;
                    // A fetch task that died is judged as no CRLs at all.
                    a.crls_fetched(id, outcomes.unwrap_or_default());
                }
                Request::SideProbe {
                    id,
                    addr,
                    sni,
                    ehlo,
                    implicit_tls,
                } => {
                    let t = Target {
                        addr,
                        sni,
                        ehlo,
                        implicit_tls,
                    };
                    *side = Some((id, tokio::spawn(probes.clone().get(t))));
                }
            }
        }
        requests = a.take_requests();
    }
}

/// Tap messages analysed in a row before the events go to the sinks.
pub const DRAIN: usize = 64;

/// How the relay ended, as the controller's `Closed` reports it (boxed
/// where it is kept: it comes once, and inline it would take 144 bytes of
/// every session's analysis future).
type Closed = Box<(Timestamp, Ends, Option<(Side, u64)>)>;

/// Feeds one tap message to the analyzer; the controller's `Closed` is kept
/// in `closed` (it ends the session's input).
fn tapped(a: &mut SessionAnalyzer, m: TapMsg, plain: &mut bool, closed: &mut Option<Closed>) {
    match m {
        TapMsg::Data(c) if *plain => a.plaintext(c.side, c.ts, &c.bytes),
        TapMsg::Eof(f) if *plain => a.plaintext_fin(f.side, f.ts),
        TapMsg::Data(c) => a.bytes(Leg::EndToEnd, c.side, c.ts, &c.bytes),
        TapMsg::Eof(f) => a.fin(Leg::EndToEnd, f.side, f.ts),
        TapMsg::Intercept(t) => super::intercept::feed(a, *t, plain),
        TapMsg::Control(c) => {
            // Only `Closed` comes once the relay runs.
            if let Control::Closed { ts, outcome, loss } = *c {
                *closed = Some(Box::new((ts, outcome, loss)));
            }
        }
    }
}

/// Runs the analysis of one session until the controller reports its end.
///
/// `queue` carries the relay's chunks and the controller's reports, in the
/// order they happened: any `LoopRefused`, then `Connected` (then the
/// relay's messages, then `Closed`) or `UpstreamFailed`.
///
/// The analyzer comes boxed: this future is what every session's analysis
/// task holds while it sits idle, and the analyzer inline would make it
/// larger than the analyzer itself (the async state machine's layout pads
/// around it). A plain `fn` returning an `async move` block: an `async fn`
/// keeps its arguments twice in its future.
#[allow(clippy::manual_async_fn)] // a plain `fn`: see above
pub fn run(
    a: Box<SessionAnalyzer>,
    queue: super::tap_queue::Receiver<TapMsg>,
    crls: Arc<CrlCache>,
    probes: Arc<SideProbes>,
    sink: EventSink,
) -> impl std::future::Future<Output = ()> + Send {
    let (mut a, mut queue) = (a, queue);
    async move {
        let mut side: Option<SideTask> = None;
        loop {
            let c = match queue.recv().await {
                Some(TapMsg::Control(c)) => c,
                // Nothing is relayed before `Connected`.
                Some(_) => continue,
                None => break,
            };
            match *c {
                Control::LoopRefused {
                    ts,
                    original_dst,
                    reason,
                } => a.loop_refused(ts, original_dst, reason),
                Control::Connected {
                    ts,
                    peer,
                    local,
                    elapsed,
                } => {
                    a.upstream_connected(ts, peer, local, elapsed.as_secs_f64());
                    break;
                }
                Control::UpstreamFailed { ts, failure, reply } => {
                    a.upstream_failed(ts, failure, reply);
                    flush(&mut a, &sink).await;
                    return;
                }
                Control::Closed { ts, outcome, loss } => {
                    a.close(ts, outcome, loss);
                    flush(&mut a, &sink).await;
                    return;
                }
            }
        }
        flush(&mut a, &sink).await;
        // Intercept mode: after `Tapped::Decrypting`, relayed chunks are the
        // conversation inside TLS.
        let mut plain = false;
        let mut closed: Option<Closed> = None;
        while closed.is_none() {
            tokio::select! {
                biased;
                msg = queue.recv() => match msg {
                    Some(m) => {
                        tapped(&mut a, m, &mut plain, &mut closed);
                        serve_requests(&mut a, &crls, &probes, &mut side).await;
                        // Whatever else the relay queued meanwhile is analysed
                        // now, before the events go out: one hand-off to the
                        // sinks (and one wake-up of this task) per batch, not per
                        // chunk.
                        for _ in 1..DRAIN {
                            if closed.is_some() {
                                break;
                            }
                            let Some(m) = queue.try_recv() else { break };
                            tapped(&mut a, m, &mut plain, &mut closed);
                            serve_requests(&mut a, &crls, &probes, &mut side).await;
                        }
                    }
                    None => break,
                },
                r = side_result(&mut side) => {
                    if let Some((id, _)) = side.take() {
                        a.side_probe_done(id, Timestamp::now(), *r);
                    }
                    serve_requests(&mut a, &crls, &probes, &mut side).await;
                }
            }
            flush(&mut a, &sink).await;
        }
        // The relay is over: a side-probe still running is waited for (within
        // its deadline), so its certificate is judged in this session's summary.
        if let Some((id, h)) = side.take() {
            let r = match Box::pin(tokio::time::timeout(probes.deadline(), h)).await {
                Ok(r) => r.unwrap_or_else(|e| died(&e.to_string())),
                Err(_) => died("no answer within its deadline"),
            };
            a.side_probe_done(id, Timestamp::now(), r);
            serve_requests(&mut a, &crls, &probes, &mut side).await;
            flush(&mut a, &sink).await;
        }
        // No `Closed` (the controller ended without one): judged as aborted.
        let (ts, ends, loss) =
            closed.map_or_else(|| (Timestamp::now(), Ends::aborted(), None), |c| *c);
        a.close(ts, ends, loss);
        flush(&mut a, &sink).await;
    }
}
