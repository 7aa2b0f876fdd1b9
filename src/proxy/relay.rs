//! The relay: bytes both ways, unchanged and in order, with proper half-close.
//!
//! ```text
//!   client ──read──▶ [BytesMut] ──tap.offer(clone)──▶ analysis (never awaited)
//!                          └──────write_all──────────▶ upstream
//!   (and the same from upstream to client)
//! ```
//!
//! Each direction is one `Pump`. A pump reads into a buffer of at most
//! [`READ_CHUNK`] bytes, offers a reference-counted copy to the tap with
//! `offer` (it never waits for analysis: when the analysis queue is full
//! the tap stops offering and records the loss), then writes the bytes to the
//! other side. The tap is offered the bytes *before* they are written, so a
//! reply that invites more client bytes (a `354`) always reaches the analysis
//! queue before those bytes can exist: the observers see a causal order.
//! The analysis is polled in the session's task right after the relay, so a
//! pump whose tap queue is half full ends its poll before the next read,
//! asking to be polled again at once (`Tap::crowded`): the analysis takes
//! its turn in between, and a fast peer cannot fill the queue within one
//! poll of the relay. It does so once, then reads again whatever the
//! analysis did: the bytes wait at most for one turn of that analysis,
//! never for a disk, the network or another task.
//!
//! Half-close: when one side sends FIN, the pump shuts down the other side's
//! write half (passing the FIN on) and the opposite direction goes on until it
//! ends too. The session ends when both directions are done, on an error in
//! either (the other socket is then reset), when a deadline passes, or on
//! abort; the pumps are plain state machines (`Pump`) that the relay
//! polls by hand in the session's task, stopped by no longer polling them
//! (the whole running relay is one struct, `Relaying`). Memory per session:
//! at most one read buffer per direction plus the bounded tap queue; a
//! direction waiting for its peer holds no read buffer at all (reads go
//! into a [`READ_CHUNK`] buffer on the stack of the poll, left
//! uninitialised, and are copied out at their length, see
//! `poll_read_stack`), and a burst of up to [`READ_CHUNK`] bytes is one
//! read and one write, as with haproxy's 16 KiB buffers. A read that fills
//! the stack buffer switches the direction to heap buffers of
//! [`READ_CHUNK`] read into directly (bulk data: no copy), until a read
//! comes back shorter or must wait.
//!
//! Deadlines ([`Deadlines`]): *idle* (no byte either way), *line* (the client
//! started a line and has not ended it), *session* (the whole session). The
//! line deadline is what closes a client trickling a byte at a time, which
//! the idle deadline never sees as idle. The relay does not parse SMTP for it:
//! the client pump only looks for the last LF in the bytes it just read
//! (`memrchr`), so it knows whether a line is left unfinished and since when.
//! A chunk that starts a line with byte `0x16` (a TLS handshake record: the
//! ClientHello after STARTTLS, or implicit TLS) switches line tracking off
//! for the rest of the session: TLS records are not lines and passthrough
//! cannot see the lines inside them; the idle and session deadlines still
//! apply. When a deadline passes, both sockets are closed (FIN): nothing is
//! injected into the stream, so a message cut short mid-DATA is never
//! completed at the upstream, and the client sees a dropped connection and
//! retries.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

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

/// A side closed its sending direction (FIN).
#[derive(Debug, Clone, Copy)]
pub struct Fin {
    /// The side that sent FIN.
    pub side: Side,
    /// When.
    pub ts: Timestamp,
}

/// Messages from the session controller and the relay to the analysis.
///
/// Every variant is boxed, so a message is 16 bytes in the queue
/// (`tap_queue`) however large its content. A chunk already costs
/// an allocation for its bytes; the box is a second, small one.
#[derive(Debug)]
pub enum TapMsg {
    /// Bytes relayed.
    Data(Box<Chunk>),
    /// A side closed its sending direction (FIN).
    Eof(Box<Fin>),
    /// Intercept mode: wire bytes of a leg, decrypted-stream markers, facts
    /// (boxed: it is large).
    Intercept(Box<super::intercept::Tapped>),
    /// The session controller's reports (connected, upstream failed, relay
    /// closed). Never sent by the relay: the controller pushes them on the
    /// same queue whatever its bound (never lost), so one queue serves a
    /// session and the relay's last chunk always comes before `Closed`.
    Control(Box<super::analysis::Control>),
}

/// The tap: a non-blocking, lossy-but-honest feed of relayed bytes to analysis.
#[derive(Debug, Clone)]
pub struct Tap {
    tx: super::tap_queue::Sender<TapMsg>,
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
    pub fn new(tx: super::tap_queue::Sender<TapMsg>) -> Self {
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
        if self.tx.offer(msg).is_err() {
            self.state
                .lost_side_client
                .store(side == Side::Client, Ordering::Relaxed);
            self.state
                .lost_bytes
                .fetch_add(len as u64, Ordering::Relaxed);
            self.state.lost.store(true, Ordering::Release);
        }
    }

    /// The analysis has half the queue's bound or more still to take, and
    /// has not fallen behind for good (once it has, nothing more is
    /// offered, so there is nothing to make room for). The pump then ends
    /// its poll before its next read (see [`Pump::poll`]).
    pub(crate) fn crowded(&self) -> bool {
        !self.state.lost.load(Ordering::Acquire) && self.tx.crowded()
    }

    pub(crate) fn data(&self, side: Side, ts: Timestamp, bytes: Bytes) {
        let len = bytes.len();
        self.offer(side, TapMsg::Data(Box::new(Chunk { side, ts, bytes })), len);
    }

    pub(crate) fn eof(&self, side: Side, ts: Timestamp) {
        self.offer(side, TapMsg::Eof(Box::new(Fin { side, ts })), 0);
    }

    /// Intercept mode: offers one of its messages (`len` bytes of data, for
    /// the loss count), under the same never-wait rule.
    pub(crate) fn intercept(&self, side: Side, msg: super::intercept::Tapped, len: usize) {
        self.offer(side, TapMsg::Intercept(Box::new(msg)), len);
    }
}

/// The deadlines a relay enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// No byte in either direction for this long.
    pub idle: Duration,
    /// A line the client started is not ended (LF) within this; `None` = off.
    pub line: Option<Duration>,
    /// The whole session; `None` = off.
    pub session: Option<Duration>,
    /// When the session's clock started, if before the relay (intercept
    /// mode's cleartext phase and handshakes come first); `None`: when the
    /// relay starts.
    pub since: Option<Instant>,
}

impl Deadlines {
    /// From the configured limits.
    pub fn from_limits(l: &crate::config::Limits) -> Self {
        Deadlines {
            idle: l.idle_timeout,
            line: l.line_timeout,
            session: l.session_timeout,
            since: None,
        }
    }

    /// Only the idle deadline.
    pub fn idle_only(idle: Duration) -> Self {
        Deadlines {
            idle,
            line: None,
            session: None,
            since: None,
        }
    }

    pub(crate) fn check_period(&self) -> Duration {
        let shortest = [Some(self.idle), self.line, self.session]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(self.idle);
        (shortest / 4).clamp(Duration::from_millis(10), Duration::from_secs(5))
    }
}

/// No line pending (`Activity::line_since_ms`).
const NO_LINE: u64 = u64::MAX;

/// Last activity of a session, for the idle timeout, and the start of the
/// client's unfinished line, for the line deadline (milliseconds since `start`).
#[derive(Debug)]
pub struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    /// When the client's unfinished line started, or [`NO_LINE`]. Written
    /// only by the client pump.
    line_since_ms: AtomicU64,
    /// Bytes of the unfinished line so far (for the report).
    line_bytes: AtomicU64,
    /// The client's bytes are TLS records: no lines to track.
    opaque: AtomicBool,
    /// Bytes relayed (written to the other side), sent by the client / server.
    relayed: [AtomicU64; 2],
}

impl Activity {
    /// Starts the clock now.
    pub fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            line_since_ms: AtomicU64::new(NO_LINE),
            line_bytes: AtomicU64::new(0),
            opaque: AtomicBool::new(false),
            relayed: [AtomicU64::new(0), AtomicU64::new(0)],
        }
    }

    /// A clock that started at `start` (the session's), with activity now.
    pub fn since(start: Instant) -> Self {
        let a = Activity {
            start,
            ..Activity::new()
        };
        a.touch();
        a
    }

    /// Bytes sent by `side` that were relayed so far.
    pub fn relayed(&self, side: Side) -> u64 {
        self.relayed[side as usize].load(Ordering::Relaxed)
    }

    fn relayed_add(&self, side: Side, n: u64) {
        self.relayed[side as usize].fetch_add(n, Ordering::Relaxed);
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    pub(crate) fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Time since the last byte moved.
    pub fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }

    /// Time since the session started.
    pub fn age(&self) -> Duration {
        self.start.elapsed()
    }

    /// The client sent `b`: track whether it leaves a line unfinished. Costs
    /// one `memrchr` over bytes already in hand.
    pub(crate) fn client_bytes(&self, b: &[u8]) {
        if b.is_empty() || self.opaque.load(Ordering::Relaxed) {
            return;
        }
        let pending = self.line_since_ms.load(Ordering::Relaxed) != NO_LINE;
        if !pending && b[0] == 0x16 {
            // A TLS handshake record where a line would start: from here
            // on the client's bytes are TLS, not lines.
            self.opaque.store(true, Ordering::Relaxed);
            return;
        }
        match memchr::memrchr(b'\n', b) {
            Some(p) if p + 1 == b.len() => {
                self.line_since_ms.store(NO_LINE, Ordering::Relaxed);
                self.line_bytes.store(0, Ordering::Relaxed);
            }
            Some(p) if b[p + 1] == 0x16 => {
                // Lines, then TLS right after the last one (a client that
                // did not wait for STARTTLS's 220).
                self.line_since_ms.store(NO_LINE, Ordering::Relaxed);
                self.opaque.store(true, Ordering::Relaxed);
            }
            Some(p) => {
                self.line_since_ms.store(self.now_ms(), Ordering::Relaxed);
                self.line_bytes
                    .store((b.len() - p - 1) as u64, Ordering::Relaxed);
            }
            None => {
                if !pending {
                    self.line_since_ms.store(self.now_ms(), Ordering::Relaxed);
                }
                self.line_bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
            }
        }
    }

    /// How long the client's current line has been unfinished, and its
    /// bytes so far; `None` if no line is pending or the bytes are TLS.
    pub fn line_pending(&self) -> Option<(Duration, u64)> {
        if self.opaque.load(Ordering::Relaxed) {
            return None;
        }
        let since = self.line_since_ms.load(Ordering::Relaxed);
        if since == NO_LINE {
            return None;
        }
        let age = self
            .start
            .elapsed()
            .saturating_sub(Duration::from_millis(since));
        Some((age, self.line_bytes.load(Ordering::Relaxed)))
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
/// error occurs, one of the `deadlines` passes, or `abort` turns true.
///
/// Both pumps are polled by one function over `Relaying`'s fields: to
/// stop them (an error in one direction, a deadline, abort) it simply stops
/// polling them, and their byte counts come from [`Activity`]. A plain `fn`
/// returning an `async move` block that captures one value: an `async fn`
/// (or a block capturing the arguments and moving them on) would keep them
/// twice in the future every idle session holds.
#[allow(clippy::manual_async_fn)] // on purpose: see above
pub fn relay(
    client: TcpStream,
    server: TcpStream,
    tap: Tap,
    deadlines: Deadlines,
    mut abort: watch::Receiver<bool>,
) -> impl std::future::Future<Output = RelayOutcome> + Send {
    let mut r = Relaying::new(client, server, tap, deadlines);
    async move {
        loop {
            tokio::select! {
                biased;
                () = std::future::poll_fn(|cx| r.poll(cx)) => break,
                changed = abort.changed() => {
                    if changed.is_err() || *abort.borrow() {
                        break;
                    }
                }
            }
        }
        r.outcome()
    }
}

/// A direction of the relay: moving, or over.
enum Direction {
    Running(Pump),
    Done(PumpResult),
}

impl Direction {
    /// Polls a running direction; when it ends it is `Done`, and an error
    /// stops the relay (`stop`: the other side is then reset).
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut R,
        to: &mut W,
        tap: &Tap,
        activity: &Activity,
        stop: &mut Option<Box<DirEnd>>,
    ) where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        if let Direction::Running(p) = self {
            if let Poll::Ready(r) = p.poll(cx, from, to, tap, activity) {
                if matches!(r.end, DirEnd::Error { .. }) {
                    *stop = Some(Box::new(DirEnd::PeerFailed));
                }
                *self = Direction::Done(r);
            }
        }
    }

    fn is_done(&self) -> bool {
        matches!(self, Direction::Done(_))
    }

    /// How it ended; a direction still running when the relay stopped
    /// ended `Aborted` (settled by [`Relaying::outcome`] to the reason),
    /// with the bytes it had relayed.
    fn result(self, side: Side, activity: &Activity) -> PumpResult {
        match self {
            Direction::Done(r) => r,
            Direction::Running(_) => PumpResult {
                end: DirEnd::Aborted,
                bytes: activity.relayed(side),
            },
        }
    }
}

/// Everything a running relay holds, as plain fields (see [`relay`]).
struct Relaying {
    client: TcpStream,
    server: TcpStream,
    c2s: Direction,
    s2c: Direction,
    /// Why the relay stopped before both directions ended by themselves
    /// (boxed: it comes at most once, and inline it is 48 bytes of every
    /// session).
    stop_reason: Option<Box<DirEnd>>,
    idle_check: tokio::time::Interval,
    activity: Activity,
    tap: Tap,
    deadlines: Deadlines,
}

impl Relaying {
    fn new(client: TcpStream, server: TcpStream, tap: Tap, deadlines: Deadlines) -> Self {
        let activity = deadlines.since.map_or_else(Activity::new, Activity::since);
        let mut idle_check = tokio::time::interval(deadlines.check_period());
        idle_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Relaying {
            client,
            server,
            c2s: Direction::Running(Pump::new(Side::Client)),
            s2c: Direction::Running(Pump::new(Side::Server)),
            stop_reason: None,
            idle_check,
            activity,
            tap,
            deadlines,
        }
    }

    /// Moves bytes both ways; ready when both directions are over or the
    /// relay must stop (an error in one direction, a deadline).
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let (tap, activity) = (&self.tap, &self.activity);
        let stop = &mut self.stop_reason;
        let (client, server) = (&mut self.client, &mut self.server);
        self.c2s.poll(cx, client, server, tap, activity, stop);
        if stop.is_none() {
            self.s2c.poll(cx, server, client, tap, activity, stop);
        }
        while self.stop_reason.is_none() && self.idle_check.poll_tick(cx).is_ready() {
            self.stop_reason = deadline_passed(&self.deadlines, &self.activity).map(Box::new);
        }
        if self.stop_reason.is_some() || (self.c2s.is_done() && self.s2c.is_done()) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// How the relay ended (stopped now if it was still running: aborted).
    fn outcome(self) -> RelayOutcome {
        let Relaying {
            client,
            server,
            c2s,
            s2c,
            stop_reason,
            activity,
            ..
        } = self;
        let stop_reason = match stop_reason {
            None if !(c2s.is_done() && s2c.is_done()) => Some(DirEnd::Aborted),
            r => r.map(|b| *b),
        };
        let client_res = c2s.result(Side::Client, &activity);
        let server_res = s2c.result(Side::Server, &activity);
        // When one direction failed, reset the other connection rather than
        // closing it gracefully, so that peer sees the failure as it happened.
        let reset = |stream: &TcpStream| {
            let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
        };
        if matches!(client_res.end, DirEnd::Error { .. }) {
            reset(&server);
        }
        if matches!(server_res.end, DirEnd::Error { .. }) {
            reset(&client);
        }
        let settle = |end: DirEnd| match (end, &stop_reason) {
            (DirEnd::Aborted, Some(reason)) => reason.clone(),
            (end, _) => end,
        };
        RelayOutcome {
            client_end: settle(client_res.end),
            server_end: settle(server_res.end),
            client_bytes: client_res.bytes,
            server_bytes: server_res.bytes,
        }
    }
}

/// The deadline that has passed, if any (the session's first, then a
/// line's, then idleness).
pub(crate) fn deadline_passed(d: &Deadlines, a: &Activity) -> Option<DirEnd> {
    if let Some(limit) = d.session {
        if a.age() >= limit {
            return Some(DirEnd::Deadline {
                which: "session_timeout",
                detail: format!(
                    "the session lasted longer than {}s (limits.session_timeout_secs)",
                    limit.as_secs()
                ),
            });
        }
    }
    if let Some(limit) = d.line {
        if let Some((age, bytes)) = a.line_pending() {
            if age >= limit {
                return Some(DirEnd::Deadline {
                    which: "line_timeout",
                    detail: format!(
                        "the client started a line and did not end it within {}s \
                         (limits.line_timeout_secs); {bytes} bytes of it were relayed",
                        limit.as_secs()
                    ),
                });
            }
        }
    }
    (a.idle_for() >= d.idle).then_some(DirEnd::Idle)
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

/// One direction: read from `from` (sent by `side`), tap, write to `to`,
/// until EOF, an error, or `stop` changes.
pub(crate) async fn pump<R, W>(
    side: Side,
    from: &mut R,
    to: &mut W,
    tap: &Tap,
    activity: &Activity,
    stop: watch::Receiver<bool>,
) -> PumpResult
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut stop = stop;
    // The stop signal is watched around the whole pump, not at each read
    // and write: the pump's own future stays small (every idle session
    // holds two), and dropping it mid-way is what stopping means anyway.
    tokio::select! {
        biased;
        _ = stop.changed() => PumpResult {
            end: DirEnd::Aborted,
            bytes: activity.relayed(side),
        },
        r = pump_until(side, from, to, tap, activity) => r,
    }
}

/// One read of at most [`READ_CHUNK`] bytes into a buffer on the stack of
/// this poll, copied out at its length. The buffer is not part of the
/// pump's future, so a pump waiting for its peer holds no read buffer at
/// all; it is left uninitialised (`ReadBuf::uninit`), so a 16-byte command
/// costs no 16 KiB of zeroing.
fn poll_read_stack<R: AsyncRead + Unpin>(
    from: &mut R,
    cx: &mut Context<'_>,
) -> Poll<io::Result<Bytes>> {
    let mut stack = [std::mem::MaybeUninit::<u8>::uninit(); READ_CHUNK];
    let mut rb = ReadBuf::uninit(&mut stack);
    match Pin::new(from).poll_read(cx, &mut rb) {
        Poll::Ready(Ok(())) => Poll::Ready(Ok(Bytes::copy_from_slice(rb.filled()))),
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Pending,
    }
}

/// A read into `buf` (bulk data: no copy) that never waits: `None` if
/// nothing is ready (the read is then registered for wake-up like any
/// other). The `read_buf` future is made and dropped within this poll.
fn read_now<R: AsyncRead + Unpin>(
    from: &mut R,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Option<io::Result<usize>> {
    match std::pin::pin!(from.read_buf(buf)).poll(cx) {
        Poll::Ready(r) => Some(r),
        Poll::Pending => None,
    }
}

/// [`pump`] without a stop signal: [`relay`] stops its pumps by no longer
/// polling them, [`pump`] by dropping this. Its future is a [`Pump`] and
/// the references it is given, nothing else.
fn pump_until<'a, R, W>(
    side: Side,
    from: &'a mut R,
    to: &'a mut W,
    tap: &'a Tap,
    activity: &'a Activity,
) -> impl Future<Output = PumpResult> + 'a
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut p = Pump::new(side);
    std::future::poll_fn(move |cx| p.poll(cx, from, to, tap, activity))
}

/// Where a [`Pump`] is.
#[derive(Debug)]
enum PumpState {
    /// Waiting for bytes from its side.
    Reading,
    /// Writing `chunk` to the other side, `off` bytes of it done.
    Writing { chunk: Bytes, off: usize },
    /// Passing the FIN on (shutting down the other side's write half).
    ShuttingDown,
}

/// One direction of the relay: read from one side, tap, write to the
/// other, until EOF (passed on as a FIN) or an error. A state machine
/// polled by hand (the streams are lent at each poll), not an `async fn`:
/// every idle session holds two, and as a struct a pump is the fields it
/// needs (about 100 bytes) where the compiler's state machine for the same
/// loop took 328.
///
/// Reads (commands, replies, a message of up to [`READ_CHUNK`]) are copied
/// out of a buffer on the stack of the poll (`poll_read_stack`); a read
/// that fills it switches to a heap buffer of [`READ_CHUNK`] read into
/// directly (bulk data), and the first short read after that, or the first
/// that must wait, frees the heap buffer again. So a session waiting for
/// its peer holds no read buffer.
#[derive(Debug)]
pub(crate) struct Pump {
    side: Side,
    bulk: bool,
    /// The last poll ended early to let the analysis catch up
    /// ([`Tap::crowded`]): this one reads whatever the analysis did.
    yielded: bool,
    /// The heap read buffer (empty, unallocated, unless bulk).
    buf: BytesMut,
    /// Bytes written to the other side.
    total: u64,
    state: PumpState,
}

impl Pump {
    pub(crate) fn new(side: Side) -> Self {
        Pump {
            side,
            bulk: false,
            yielded: false,
            buf: BytesMut::new(),
            total: 0,
            state: PumpState::Reading,
        }
    }

    fn ended(&self, end: DirEnd) -> Poll<PumpResult> {
        Poll::Ready(PumpResult {
            end,
            bytes: self.total,
        })
    }

    /// Moves bytes until the pump must wait (`Pending`, with `cx` woken
    /// when it can go on) or its direction is over.
    pub(crate) fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut R,
        to: &mut W,
        tap: &Tap,
        activity: &Activity,
    ) -> Poll<PumpResult>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let side = self.side;
        loop {
            match &mut self.state {
                PumpState::Writing { chunk, off } => {
                    while *off < chunk.len() {
                        match Pin::new(&mut *to).poll_write(cx, &chunk[*off..]) {
                            Poll::Pending => return Poll::Pending,
                            Poll::Ready(Ok(0)) => {
                                let e = io::Error::from(io::ErrorKind::WriteZero);
                                let end = DirEnd::io(&format!("writing to {}", side.peer()), &e);
                                return self.ended(end);
                            }
                            Poll::Ready(Ok(n)) => *off += n,
                            Poll::Ready(Err(e)) => {
                                let end = DirEnd::io(&format!("writing to {}", side.peer()), &e);
                                return self.ended(end);
                            }
                        }
                    }
                    let n = chunk.len() as u64;
                    self.total += n;
                    activity.relayed_add(side, n);
                    activity.touch();
                    self.state = PumpState::Reading;
                }
                PumpState::ShuttingDown => {
                    let end = match std::task::ready!(Pin::new(&mut *to).poll_shutdown(cx)) {
                        Ok(()) => DirEnd::Fin,
                        Err(e) if e.kind() == io::ErrorKind::NotConnected => DirEnd::Fin,
                        Err(e) => DirEnd::io("passing on FIN", &e),
                    };
                    return self.ended(end);
                }
                PumpState::Reading => {
                    let read = if !self.yielded && tap.crowded() {
                        // The session's analysis is polled in this task
                        // after the relay: end this poll, asking to be
                        // polled again at once, so it takes what is
                        // queued before a fast peer's next chunks fill
                        // the bound (which would end the observation).
                        // Once only: the next poll reads whatever the
                        // analysis did, so an analysis stuck on its
                        // sink never holds the bytes back.
                        self.yielded = true;
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    } else if self.bulk {
                        self.yielded = false;
                        if self.buf.capacity() < READ_CHUNK {
                            self.buf.reserve(READ_CHUNK);
                        }
                        match read_now(from, &mut self.buf, cx) {
                            None => {
                                // The burst is over: wait without a buffer
                                // (the next read goes to the stack again).
                                self.bulk = false;
                                self.buf = BytesMut::new();
                                return Poll::Pending;
                            }
                            Some(r) => r.map(|n| self.buf.split_to(n).freeze()),
                        }
                    } else {
                        self.yielded = false;
                        std::task::ready!(poll_read_stack(from, cx))
                    };
                    let chunk = match read {
                        Ok(chunk) => chunk,
                        Err(e) => {
                            return self.ended(DirEnd::io(&format!("reading from {side}"), &e))
                        }
                    };
                    if chunk.is_empty() {
                        tap.eof(side, Timestamp::now());
                        activity.touch();
                        self.state = PumpState::ShuttingDown;
                        continue;
                    }
                    let ts = Timestamp::now();
                    activity.touch();
                    if chunk.len() >= READ_CHUNK {
                        // A full read: bulk data. Read the next ones into a
                        // heap buffer directly, without the copy.
                        self.bulk = true;
                    } else if self.bulk {
                        self.bulk = false;
                        self.buf = BytesMut::new();
                    }
                    if side == Side::Client {
                        activity.client_bytes(&chunk);
                    }
                    tap.data(side, ts, chunk.clone());
                    self.state = PumpState::Writing { chunk, off: 0 };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts its wake-ups.
    struct Wakes(AtomicU64);
    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A pump with 200 KiB ready to read and a tap queue bound of 8 chunks,
    /// polled by hand as the session's task does.
    async fn crowded_pump() -> (
        Pump,
        tokio::io::DuplexStream,
        Tap,
        super::super::tap_queue::Receiver<TapMsg>,
        Vec<u8>,
    ) {
        use tokio::io::AsyncWriteExt;
        let data: Vec<u8> = (0..200 * 1024).map(|i| (i % 251) as u8).collect();
        let (mut peer, ours) = tokio::io::duplex(1 << 20);
        peer.write_all(&data).await.unwrap();
        drop(peer);
        let (tx, rx) = super::super::tap_queue::queue(8);
        (Pump::new(Side::Client), ours, Tap::new(tx), rx, data)
    }

    /// A peer whose socket holds `ready` bytes: each read takes as many
    /// as the buffer allows; when none are left the read waits (`Pending`,
    /// not the end of the stream). Counts the reads that returned bytes.
    struct Burst {
        ready: Vec<u8>,
        reads: usize,
    }
    impl AsyncRead for Burst {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if self.ready.is_empty() {
                return Poll::Pending;
            }
            let n = buf.remaining().min(self.ready.len());
            buf.put_slice(&self.ready[..n]);
            self.ready.drain(..n);
            self.reads += 1;
            Poll::Ready(Ok(()))
        }
    }

    /// A burst of up to READ_CHUNK bytes is one read, one tapped chunk and
    /// one write (haproxy's count: a 10 KiB message body used to take two
    /// reads); a larger one is read in READ_CHUNK pieces into heap
    /// buffers, and once the burst is over the pump holds no buffer again,
    /// even when the burst ended exactly on a full read.
    #[tokio::test]
    async fn a_burst_is_read_at_once_and_no_buffer_is_kept_after_it() {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        for (len, reads) in [(10_000, 1), (READ_CHUNK, 1), (40_000, 3), (70_000, 5)] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut from = Burst {
                ready: data.clone(),
                reads: 0,
            };
            let (tx, mut rx) = super::super::tap_queue::queue(64);
            let (tap, activity, mut to) = (Tap::new(tx), Activity::new(), Vec::new());
            let mut pump = Pump::new(Side::Server);
            let mut chunks = Vec::new();
            for _ in 0..4 {
                assert!(pump
                    .poll(&mut cx, &mut from, &mut to, &tap, &activity)
                    .is_pending());
                while let Some(m) = rx.try_recv() {
                    if let TapMsg::Data(c) = m {
                        chunks.push(c.bytes.len());
                    }
                }
            }
            assert!(to == data, "{len}: relayed bytes differ");
            assert_eq!(from.reads, reads, "{len}: reads");
            assert_eq!(chunks.len(), reads, "{len}: tapped chunks {chunks:?}");
            assert!(chunks.iter().all(|&c| c <= READ_CHUNK), "{len}: {chunks:?}");
            assert!(
                !pump.bulk && pump.buf.capacity() == 0,
                "{len}: a buffer is kept"
            );
        }
    }

    #[tokio::test]
    async fn a_pump_lets_its_analysis_catch_up_before_the_queue_fills() {
        let (mut pump, mut from, tap, mut rx, data) = crowded_pump().await;
        let wakes = Arc::new(Wakes(AtomicU64::new(0)));
        let waker = std::task::Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let (mut to, activity) = (Vec::new(), Activity::new());
        let mut tapped = Vec::new();
        let mut polls = 0;
        let end = loop {
            polls += 1;
            let r = pump.poll(&mut cx, &mut from, &mut to, &tap, &activity);
            // Half the bound at most was queued in that poll.
            let mut queued = 0;
            while let Some(m) = rx.try_recv() {
                queued += 1;
                if let TapMsg::Data(c) = m {
                    tapped.extend_from_slice(&c.bytes);
                }
            }
            assert!(queued <= 5, "poll {polls} queued {queued} messages");
            if let Poll::Ready(r) = r {
                break r;
            }
        };
        assert!(matches!(end.end, DirEnd::Fin), "{:?}", end.end);
        assert_eq!(tap.state().loss(), None, "the analysis fell behind");
        assert!(to == data, "relayed bytes differ");
        assert!(tapped == data, "tapped bytes differ");
        assert!(polls > 2 && wakes.0.load(Ordering::Relaxed) > 0);
    }

    #[tokio::test]
    async fn an_analysis_that_takes_nothing_never_holds_the_bytes_back() {
        let (mut pump, mut from, tap, rx, data) = crowded_pump().await;
        let waker = std::task::Waker::from(Arc::new(Wakes(AtomicU64::new(0))));
        let mut cx = Context::from_waker(&waker);
        let (mut to, activity) = (Vec::new(), Activity::new());
        // Nobody receives: the pump yields at most once per chunk, the
        // bound is reached, the loss is recorded and every byte still goes.
        let mut polls = 0;
        let end = loop {
            polls += 1;
            assert!(polls < 100, "the pump is stuck behind its analysis");
            if let Poll::Ready(r) = pump.poll(&mut cx, &mut from, &mut to, &tap, &activity) {
                break r;
            }
        };
        assert!(matches!(end.end, DirEnd::Fin), "{:?}", end.end);
        assert!(to == data, "relayed bytes differ");
        let (side, lost) = tap.state().loss().expect("the loss is recorded");
        assert_eq!(side, Side::Client);
        assert!(lost > 0);
        drop(rx);
    }

    #[test]
    fn a_line_is_pending_only_between_its_first_byte_and_its_lf() {
        let a = Activity::new();
        assert!(a.line_pending().is_none());
        a.client_bytes(b"EHLO x\r\n");
        assert!(a.line_pending().is_none());
        a.client_bytes(b"MA");
        assert_eq!(a.line_pending().map(|p| p.1), Some(2));
        a.client_bytes(b"IL FROM:<a@b>\r\nRCPT");
        assert_eq!(a.line_pending().map(|p| p.1), Some(4));
        a.client_bytes(b" TO:<c@d>\r\n");
        assert!(a.line_pending().is_none());
    }

    #[test]
    fn tls_records_where_a_line_would_start_switch_line_tracking_off() {
        let a = Activity::new();
        a.client_bytes(b"STARTTLS\r\n");
        a.client_bytes(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2]);
        assert!(a.line_pending().is_none());
        a.client_bytes(b"no line end in here");
        assert!(a.line_pending().is_none(), "TLS bytes are not lines");
        // Mid-line, 0x16 is just a byte of the line.
        let b = Activity::new();
        b.client_bytes(b"NOOP");
        b.client_bytes(&[0x16]);
        assert_eq!(b.line_pending().map(|p| p.1), Some(5));
    }

    #[test]
    fn the_first_deadline_to_pass_is_the_one_reported() {
        let a = Activity::new();
        a.client_bytes(b"HE");
        let zero = Deadlines {
            idle: Duration::from_secs(600),
            line: Some(Duration::ZERO),
            session: None,
            since: None,
        };
        assert!(matches!(
            deadline_passed(&zero, &a),
            Some(DirEnd::Deadline {
                which: "line_timeout",
                ..
            })
        ));
        let session = Deadlines {
            session: Some(Duration::ZERO),
            ..zero
        };
        assert!(matches!(
            deadline_passed(&session, &a),
            Some(DirEnd::Deadline {
                which: "session_timeout",
                ..
            })
        ));
        let off = Deadlines::idle_only(Duration::from_secs(600));
        assert!(deadline_passed(&off, &a).is_none());
    }
}
