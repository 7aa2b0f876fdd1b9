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
//! It may fall behind while it waits for room at the sinks (a full event
//! log); the relay never waits for it (see [`super::relay`]): the relay's
//! reads and writes go on in the controller, polled first. If it falls so
//! far behind that the tap queue overflows, the relay stops offering bytes
//! and the analyzer reports `observer.lagged` at the end. The analyzer's
//! requests do not hold it up: a side-probe runs in its own task and a
//! chain's CRL fetches on the blocking pool, their answers fed back when
//! they come (`next_answer`), so the bytes that follow (and the capture)
//! are still analysed while a CRL server is slow. A chain's `cert.crl` and
//! `cert.chain` events therefore come when its CRLs are in, possibly after
//! later events of the session; they carry the time the chain was seen.
//! After the relay, what is still awaited gets its deadline
//! (`finish_waits`).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use super::crl::CrlCache;
use super::relay::{RelayOutcome, TapMsg};
use super::side_probe::{SideProbes, Target};
use crate::event::{Leg, Side, Timestamp};
use crate::session::{
    CrlOutcome, Ends, Request, RequestId, SessionAnalyzer, SideProbeError, SideProbeOutcome,
    UpstreamFailure,
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

/// A chain's CRL fetches, running on the blocking pool.
type CrlTask = (RequestId, tokio::task::JoinHandle<Vec<CrlOutcome>>);

/// What a session's analysis waits for besides its input: side-probes and
/// CRL fetches, each answered by its request id. Boxed, and only while one runs (most sessions never have
/// any): every session's analysis future holds just the pointer.
#[derive(Default)]
struct Waits {
    sides: Vec<SideTask>,
    crls: Vec<CrlTask>,
}

/// An answer to one of the analyzer's requests.
enum Answer {
    Side(RequestId, SideProbeOutcome),
    Crls(RequestId, Vec<CrlOutcome>),
}

/// The next answer when it comes (never, while nothing is awaited). Boxed:
/// a select's output is as large as its largest branch's in every
/// session's analysis future.
fn next_answer(waits: &mut Option<Box<Waits>>) -> impl Future<Output = Box<Answer>> + '_ {
    std::future::poll_fn(move |cx| {
        let Some(w) = waits.as_mut() else {
            return Poll::Pending;
        };
        let mut answer = None;
        for i in 0..w.sides.len() {
            if let Poll::Ready(r) = Pin::new(&mut w.sides[i].1).poll(cx) {
                let r = r.unwrap_or_else(|e| died(&e.to_string()));
                answer = Some(Answer::Side(w.sides.remove(i).0, r));
                break;
            }
        }
        if answer.is_none() {
            for i in 0..w.crls.len() {
                if let Poll::Ready(r) = Pin::new(&mut w.crls[i].1).poll(cx) {
                    // A fetch task that died is judged as no CRLs at all.
                    answer = Some(Answer::Crls(w.crls.remove(i).0, r.unwrap_or_default()));
                    break;
                }
            }
        }
        if w.sides.is_empty() && w.crls.is_empty() {
            *waits = None;
        }
        match answer {
            Some(a) => Poll::Ready(Box::new(a)),
            None => Poll::Pending,
        }
    })
}

/// Feeds an answer back to the analyzer.
fn answered(a: &mut SessionAnalyzer, answer: Answer) {
    match answer {
        Answer::Side(id, r) => a.side_probe_done(id, Timestamp::now(), r),
        Answer::Crls(id, outcomes) => a.crls_fetched(id, outcomes),
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

/// Starts what the analyzer asked for: a side-probe in its own task, a
/// chain's CRL fetches on the blocking pool. Their answers come later
/// ([`next_answer`]), so the analysis goes on taking the relay's bytes
/// (and writing the capture) while a slow CRL server keeps it waiting.
fn serve_requests(
    a: &mut SessionAnalyzer,
    crls: &Arc<CrlCache>,
    probes: &Arc<SideProbes>,
    waits: &mut Option<Box<Waits>>,
) {
    for r in a.take_requests() {
        let w = waits.get_or_insert_with(Box::default);
        match r {
            Request::FetchCrls { id, urls } => {
                let cache = crls.clone();
                let h = tokio::task::spawn_blocking(move || cache.fetch_chain(&urls));
                w.crls.push((id, h));
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
                w.sides.push((id, tokio::spawn(probes.clone().get(t))));
            }
        }
    }
}

/// After the relay: waits for the answers still to come, at most the
/// side-probe's deadline, or a chain's CRL budget and a margin when CRLs
/// are awaited, from now.
/// A side-probe that does not answer in time is reported as such; a chain
/// whose CRLs did not come is judged without them when the session closes.
async fn finish_waits(
    a: &mut SessionAnalyzer,
    crls: &Arc<CrlCache>,
    probes: &Arc<SideProbes>,
    waits: &mut Option<Box<Waits>>,
    sink: &EventSink,
) {
    let crls_awaited = waits.as_ref().is_some_and(|w| !w.crls.is_empty());
    let limit = if crls_awaited {
        probes
            .deadline()
            .max(super::crl::CRL_BUDGET + Duration::from_secs(2))
    } else {
        probes.deadline()
    };
    let until = tokio::time::Instant::now() + limit;
    while waits.is_some() {
        match tokio::time::timeout_at(until, next_answer(waits)).await {
            Ok(answer) => {
                answered(a, *answer);
                serve_requests(a, crls, probes, waits);
                flush(a, sink).await;
            }
            Err(_) => break,
        }
    }
    for (id, _) in waits.take().map(|w| w.sides).unwrap_or_default() {
        a.side_probe_done(id, Timestamp::now(), died("no answer within its deadline"));
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
        let mut waits: Option<Box<Waits>> = None;
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
                // Answers first: they are rare, and a busy relay would
                // otherwise keep them waiting until its next lull.
                biased;
                answer = next_answer(&mut waits) => {
                    answered(&mut a, *answer);
                    serve_requests(&mut a, &crls, &probes, &mut waits);
                }
                msg = queue.recv() => match msg {
                    Some(m) => {
                        tapped(&mut a, m, &mut plain, &mut closed);
                        serve_requests(&mut a, &crls, &probes, &mut waits);
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
                            serve_requests(&mut a, &crls, &probes, &mut waits);
                        }
                    }
                    None => break,
                },
            }
            flush(&mut a, &sink).await;
        }
        // The relay is over: a side-probe or CRL fetch still running is
        // waited for (within its deadline), so its certificate is judged in
        // this session's summary.
        if waits.is_some() {
            Box::pin(finish_waits(&mut a, &crls, &probes, &mut waits, &sink)).await;
        }
        // No `Closed` (the controller ended without one): judged as aborted.
        let (ts, ends, loss) =
            closed.map_or_else(|| (Timestamp::now(), Ends::aborted(), None), |c| *c);
        a.close(ts, ends, loss);
        flush(&mut a, &sink).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(code: &'static str) -> SideProbeOutcome {
        SideProbeOutcome {
            result: Err(SideProbeError {
                code,
                detail: String::new(),
            }),
            cached: false,
            age_s: 0.0,
        }
    }

    /// Every awaited answer comes back under its own request id, however
    /// many side-probes and CRL fetches run at once, and the waits are
    /// dropped (the analysis holds no box) once the last one is in.
    /// (Bounded in time: a lost answer fails the test instead of hanging it.)
    #[tokio::test]
    async fn every_request_is_answered_under_its_own_id() {
        let wait = std::time::Duration::from_secs(10);
        tokio::time::timeout(wait, answers_by_id())
            .await
            .expect("an answer never came");
    }

    async fn answers_by_id() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let slow = tokio::spawn(async move {
            let _ = rx.await;
            outcome("slow")
        });
        let quick = tokio::spawn(async { outcome("quick") });
        let crl = tokio::task::spawn_blocking(Vec::<CrlOutcome>::new);
        let mut waits = Some(Box::new(Waits {
            sides: vec![(1, slow), (2, quick)],
            crls: vec![(3, crl)],
        }));
        let mut got = Vec::new();
        for _ in 0..2 {
            got.push(match *next_answer(&mut waits).await {
                Answer::Side(id, o) => (id, o.result.err().map(|e| e.code)),
                Answer::Crls(id, _) => (id, None),
            });
        }
        got.sort_by_key(|g| g.0);
        assert_eq!(got, vec![(2, Some("quick")), (3, None)]);
        assert!(waits.is_some(), "the slow side-probe is still awaited");
        let _ = tx.send(());
        match *next_answer(&mut waits).await {
            Answer::Side(id, o) => {
                assert_eq!((id, o.result.err().map(|e| e.code)), (1, Some("slow")))
            }
            Answer::Crls(..) => panic!("no CRL fetch was left"),
        }
        assert!(waits.is_none(), "nothing awaited, nothing held");
    }
}
