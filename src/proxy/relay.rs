//! The relay: bytes both ways, unchanged and in order, with proper half-close.
//!
//! ```text
//!   client ──read──▶ [BytesMut] ──tap.try_send(clone)──▶ analysis (never awaited)
//!                          └──────write_all──────────▶ upstream
//!   (and the same from upstream to client)
//! ```
//!
//! Each direction is one pump. A pump reads into a buffer of at most
//! [`READ_CHUNK`] bytes, offers a reference-counted copy to the tap with
//! `try_send` (it never waits for analysis: when the analysis queue is full
//! the tap stops offering and records the loss), then writes the bytes to the
//! other side. The tap is offered the bytes *before* they are written, so a
//! reply that invites more client bytes (a `354`) always reaches the analysis
//! queue before those bytes can exist: the observers see a causal order.
//!
//! Half-close: when one side sends FIN, the pump shuts down the other side's
//! write half (passing the FIN on) and the opposite direction goes on until it
//! ends too. The session ends when both directions are done, on an error in
//! either (the other socket is then reset), on the idle timeout, or on abort.
//! Memory per session: one read buffer per direction plus the bounded tap queue.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use crate::event::{Side, Timestamp};
use crate::session::{DirEnd, Ends};

/// Largest read per syscall, and so the largest chunk handed to the tap.
pub const READ_CHUNK: usize = 16 * 1024;

/// Bytes that crossed the relay, as handed to the analysis.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// Who sent them.
    pub side: Side,
    /// When they were read.
    pub ts: Timestamp,
    /// The bytes, shared with the write to the other side (no copy).
    pub bytes: Bytes,
}

/// Messages from the session controller and the relay to the analysis task.
#[derive(Debug)]
pub enum TapMsg {
    /// Bytes relayed.
    Data(Chunk),
    /// A side closed its sending direction (FIN).
    Eof {
        /// The side that sent FIN.
        side: Side,
        /// When.
        ts: Timestamp,
    },
    /// Intercept mode: wire bytes of a leg, decrypted-stream markers, facts.
    Intercept(super::intercept::Tapped),
}

/// The tap: a non-blocking, lossy-but-honest feed of relayed bytes to analysis.
#[derive(Debug, Clone)]
pub struct Tap {
    tx: mpsc::Sender<TapMsg>,
    state: Arc<TapState>,
}

/// Shared tap bookkeeping: whether the analysis fell behind, and how much it missed.
#[derive(Debug, Default)]
pub struct TapState {
    lost: AtomicBool,
    lost_side_client: AtomicBool,
    lost_bytes: AtomicU64,
}

impl TapState {
    /// `Some((side, bytes))` if the analysis queue overflowed: from then on no
    /// more bytes were offered; `bytes` were relayed but not analysed.
    pub fn loss(&self) -> Option<(Side, u64)> {
        if self.lost.load(Ordering::Acquire) {
            let side = if self.lost_side_client.load(Ordering::Relaxed) {
                Side::Client
            } else {
                Side::Server
            };
            Some((side, self.lost_bytes.load(Ordering::Relaxed)))
        } else {
            None
        }
    }
}

impl Tap {
    /// A tap feeding `tx`.
    pub fn new(tx: mpsc::Sender<TapMsg>) -> Self {
        Tap {
            tx,
            state: Arc::new(TapState::default()),
        }
    }

    /// The shared loss record.
    pub fn state(&self) -> Arc<TapState> {
        self.state.clone()
    }

    fn offer(&self, side: Side, msg: TapMsg, len: usize) {
        if self.state.lost.load(Ordering::Acquire) {
            self.state
                .lost_bytes
                .fetch_add(len as u64, Ordering::Relaxed);
            return;
        }
        if self.tx.try_send(msg).is_err() {
            self.state
                .lost_side_client
                .store(side == Side::Client, Ordering::Relaxed);
            self.state
                .lost_bytes
                .fetch_add(len as u64, Ordering::Relaxed);
            self.state.lost.store(true, Ordering::Release);
        }
    }

    pub(crate) fn data(&self, side: Side, ts: Timestamp, bytes: Bytes) {
        let len = bytes.len();
        self.offer(side, TapMsg::Data(Chunk { side, ts, bytes }), len);
    }

    pub(crate) fn eof(&self, side: Side, ts: Timestamp) {
        self.offer(side, TapMsg::Eof { side, ts }, 0);
    }

    /// Intercept mode: offers one of its messages (`len` bytes of data, for
    /// the loss count), under the same never-wait rule.
    pub(crate) fn intercept(&self, side: Side, msg: super::intercept::Tapped, len: usize) {
        self.offer(side, TapMsg::Intercept(msg), len);
    }
}

/// Last activity of a session, for the idle timeout (milliseconds since `start`).
#[derive(Debug)]
pub struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    /// Starts the clock now.
    pub fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Time since the last byte moved.
    pub fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

/// The outcome of a relay: how each direction ended and how many bytes moved.
pub type RelayOutcome = Ends;

/// Relays between `client` and `server` until both directions are done, an
/// error occurs, the session is idle for `idle_timeout`, or `abort` turns true.
pub async fn relay(
    client: TcpStream,
    server: TcpStream,
    tap: Tap,
    idle_timeout: Duration,
    mut abort: watch::Receiver<bool>,
) -> RelayOutcome {
    let activity = Activity::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();

    let mut client_res: Option<PumpResult> = None;
    let mut server_res: Option<PumpResult> = None;
    let mut stop_reason: Option<DirEnd> = None;
    {
        let c2s = pump(
            Side::Client,
            &mut cr,
            &mut sw,
            &tap,
            &activity,
            stop_rx.clone(),
        );
        let s2c = pump(
            Side::Server,
            &mut sr,
            &mut cw,
            &tap,
            &activity,
            stop_rx.clone(),
        );
        tokio::pin!(c2s);
        tokio::pin!(s2c);

        let mut idle_check = tokio::time::interval(idle_check_period(idle_timeout));
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
                    if activity.idle_for() >= idle_timeout {
                        stop_reason = Some(DirEnd::Idle);
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
    let client_res = client_res.unwrap_or(PumpResult::aborted());
    let server_res = server_res.unwrap_or(PumpResult::aborted());
    // When one direction failed, reset the other connection rather than
    // closing it gracefully, so that peer sees the failure as it happened.
    let reset = |stream: &TcpStream| {
        let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
    };
    if matches!(client_res.end, DirEnd::Error { .. }) {
        reset(sw.as_ref());
    }
    if matches!(server_res.end, DirEnd::Error { .. }) {
        reset(cw.as_ref());
    }
    let settle = |end: DirEnd| match (end, &stop_reason) {
        (DirEnd::Aborted, Some(reason)) => reason.clone(),
        (end, _) => end,
    };
    let (client_end, client_bytes) = (settle(client_res.end), client_res.bytes);
    let (server_end, server_bytes) = (settle(server_res.end), server_res.bytes);
    RelayOutcome {
        client_end,
        server_end,
        client_bytes,
        server_bytes,
    }
}

pub(crate) fn idle_check_period(idle: Duration) -> Duration {
    (idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(5))
}

pub(crate) struct PumpResult {
    pub(crate) end: DirEnd,
    pub(crate) bytes: u64,
}

impl PumpResult {
    pub(crate) fn aborted() -> Self {
        PumpResult {
            end: DirEnd::Aborted,
            bytes: 0,
        }
    }
}

/// One direction: read from `from` (sent by `side`), tap, write to `to`.
pub(crate) async fn pump<R, W>(
    side: Side,
    from: &mut R,
    to: &mut W,
    tap: &Tap,
    activity: &Activity,
    mut stop: watch::Receiver<bool>,
) -> PumpResult
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut total: u64 = 0;
    loop {
        if buf.capacity() < READ_CHUNK {
            buf.reserve(READ_CHUNK);
        }
        let read = tokio::select! {
            r = from.read_buf(&mut buf) => r,
            _ = stop.changed() => return PumpResult { end: DirEnd::Aborted, bytes: total },
        };
        match read {
            Ok(0) => {
                tap.eof(side, Timestamp::now());
                activity.touch();
                // Pass the FIN on: shut down the other side's write half.
                let end = match tokio::select! {
                    r = to.shutdown() => r,
                    _ = stop.changed() => return PumpResult { end: DirEnd::Aborted, bytes: total },
                } {
                    Ok(()) => DirEnd::Fin,
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => DirEnd::Fin,
                    Err(e) => DirEnd::io("passing on FIN", &e),
                };
                return PumpResult { end, bytes: total };
            }
            Ok(n) => {
                let ts = Timestamp::now();
                activity.touch();
                let chunk = buf.split_to(n).freeze();
                tap.data(side, ts, chunk.clone());
                let w = tokio::select! {
                    r = to.write_all(&chunk) => r,
                    _ = stop.changed() => return PumpResult { end: DirEnd::Aborted, bytes: total },
                };
                if let Err(e) = w {
                    return PumpResult {
                        end: DirEnd::io(&format!("writing to {}", side.peer()), &e),
                        bytes: total,
                    };
                }
                total += n as u64;
                activity.touch();
            }
            Err(e) => {
                return PumpResult {
                    end: DirEnd::io(&format!("reading from {side}"), &e),
                    bytes: total,
                }
            }
        }
    }
}
