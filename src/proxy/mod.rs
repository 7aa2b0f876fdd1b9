//! The live proxy: listeners, the upstream connection, the relay, the
//! driver of the session core, CRL fetching, and graceful shutdown. Besides
//! `probe` (its own client connection) and `lab` (demo peers), the only
//! module that touches sockets.
//!
//! ```text
//!  listener(s) ──accept──▶ session (one task per connection: the controller
//!                              │  and the analysis, polled together by `together`)
//!                              │ 1. controller: connect upstream  (upstream::connect)
//!                              │    └─ failure: 421 reply or close, per config
//!                              │ 2. controller: relay both ways   (relay::relay)
//!                              │    or, intercept mode:           (intercept::run: TLS on both legs)
//!                              │ 3. controller: report the outcome on the tap queue
//!                              └ analysis (analysis::run → session::SessionAnalyzer) ends
//!                                after the controller's last report; a panic in it
//!                                ends the analysis only
//! ```
//!
//! Sessions are limited by a semaphore (`limits.max_sessions`): when all
//! permits are taken, the accept loop stops accepting and new connections wait
//! in the kernel's listen backlog. When accept itself fails (the process at
//! its open-file limit, EMFILE), the loop backs off (10 ms doubling to 1 s),
//! logs the real cause once per 10 s, and resumes when sessions end; a
//! session whose upstream socket cannot be opened for the same reason gets
//! [`LOCAL_RESOURCES_REPLY`], not the "upstream unreachable" reply. On shutdown the listeners close, open
//! sessions get `limits.drain_timeout` to finish, then they are aborted; every
//! session still gets its `session.close` and `session.summary`.
//! [`Proxy::run_until`] takes the reason for stopping (`run.stop`'s
//! `reason`); it also stops by itself once `limits.max_sessions_total`
//! sessions were accepted (the accept loops stop accepting, then it drains
//! as on SIGTERM).

pub mod analysis;
pub mod crl;
pub mod intercept;
pub mod relay;
pub mod side_probe;
mod tap_queue;
pub mod transparent;
pub mod upstream;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::config::{ProxyConfig, TransparentMode, Upstream, UpstreamFailure, UpstreamTarget};
use crate::event::{Event, RunId, SessionEvent, Timestamp, SCHEMA_VERSION};
use crate::session::{Analysis, SessionInfo};
use analysis::Control;
use crl::CrlCache;

/// A fresh run identifier: the start time and a per-process salt (process
/// id and a counter, so proxies started in one process differ too).
pub fn fresh_run_id() -> RunId {
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let salt = (u64::from(std::process::id()) << 16)
        ^ RUNS
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x2545_f491_4f6c_dd1d);
    crate::event::new_run_id(Timestamp::now(), salt)
}
use crate::sink::EventSink;

/// A bound proxy, ready to run.
pub struct Proxy {
    cfg: Arc<ProxyConfig>,
    listeners: Vec<TcpListener>,
    sink: EventSink,
    analysis: Arc<Analysis>,
    crls: Arc<CrlCache>,
    probes: Arc<side_probe::SideProbes>,
    intercept: Option<Arc<intercept::Shared>>,
}

/// Counters reported when the proxy stops.
#[derive(Debug, Clone, Default)]
pub struct RunStats {
    /// Sessions accepted.
    pub sessions: u64,
    /// Sessions aborted because the drain timeout passed at shutdown.
    pub aborted_at_shutdown: bool,
}

impl Proxy {
    /// Binds every listening address. Fails (naming the address) if one cannot be bound.
    pub async fn bind(cfg: ProxyConfig, sink: EventSink, analysis: Analysis) -> io::Result<Proxy> {
        let mut listeners = Vec::new();
        let tproxy = cfg.upstream.transparent() == Some(TransparentMode::Tproxy);
        for addr in &cfg.listen {
            let l = bind_listener(*addr, tproxy)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
            listeners.push(l);
        }
        let intercept = match &cfg.intercept {
            Some(ic) => Some(Arc::new(
                intercept::Shared::new(ic).map_err(io::Error::other)?,
            )),
            None => None,
        };
        Ok(Proxy {
            intercept,
            listeners,
            sink,
            analysis: Arc::new(analysis),
            crls: Arc::new(CrlCache::default()),
            probes: Arc::new(side_probe::SideProbes::new(&cfg.tls)),
            cfg: Arc::new(cfg),
        })
    }

    /// The actual listening addresses (useful with port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Accepts and relays until `shutdown` completes, then drains.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> RunStats {
        self.run_until(async {
            shutdown.await;
            "stopped".to_string()
        })
        .await
    }

    /// Like [`Self::run`]; `shutdown` yields why the run stops (`run.stop`'s
    /// `reason`). Also stops by itself, reason `max_sessions_total`, once
    /// `limits.max_sessions_total` sessions were accepted.
    pub async fn run_until(self, shutdown: impl std::future::Future<Output = String>) -> RunStats {
        let total_reached = Arc::new(tokio::sync::Notify::new());
        let max = self.cfg.limits.max_sessions;
        let permits = Arc::new(Semaphore::new(max));
        let (abort_tx, abort_rx) = watch::channel(false);
        let (stop_tx, stop_rx) = watch::channel(false);
        let next_id = Arc::new(AtomicU64::new(1));
        let run = self.analysis.run.clone();
        let start = SessionEvent::RunStart {
            version: env!("CARGO_PKG_VERSION").into(),
            schema: SCHEMA_VERSION,
            mode: "proxy".into(),
            config: self.cfg.resolved_json(),
        };
        self.sink
            .send_batch(vec![Event::new(Timestamp::now(), 0, start).in_run(&run)])
            .await;
        let accepted = Arc::new(AtomicU64::new(0));

        let mut accept_tasks = Vec::new();
        let listen: Arc<Vec<SocketAddr>> = Arc::new(
            self.listeners
                .iter()
                .filter_map(|l| l.local_addr().ok())
                .collect(),
        );
        for listener in self.listeners {
            let ctx = Arc::new(SessionCtx {
                listen: listen.clone(),
                cfg: self.cfg.clone(),
                sink: self.sink.clone(),
                analysis: self.analysis.clone(),
                crls: self.crls.clone(),
                probes: self.probes.clone(),
                abort: abort_rx.clone(),
                total_reached: total_reached.clone(),
                intercept: self.intercept.clone(),
            });
            accept_tasks.push(tokio::spawn(accept_loop(
                listener,
                ctx,
                permits.clone(),
                stop_rx.clone(),
                next_id.clone(),
                accepted.clone(),
            )));
        }

        let reason = tokio::select! {
            r = shutdown => r,
            _ = total_reached.notified() => "max_sessions_total".to_string(),
        };
        tracing::info!(reason = %reason, "shutting down: no new connections; draining open sessions");
        let _ = stop_tx.send(true);
        for t in accept_tasks {
            let _ = t.await;
        }

        let all = u32::try_from(max).unwrap_or(u32::MAX);
        let drained =
            tokio::time::timeout(self.cfg.limits.drain_timeout, permits.acquire_many(all)).await;
        let aborted = drained.is_err();
        if aborted {
            tracing::warn!(
                "drain timeout ({}s) passed: aborting open sessions",
                self.cfg.limits.drain_timeout.as_secs()
            );
            let _ = abort_tx.send(true);
            // Aborted sessions still write their close and summary events.
            let _ = tokio::time::timeout(Duration::from_secs(10), permits.acquire_many(all)).await;
        }
        if let Some(c) = self.analysis.capture.clone() {
            let late = c.clone();
            let _ = tokio::task::spawn_blocking(move || c.shutdown()).await;
            // Writer events (errors, drops) that no session reported yet.
            let evs = late
                .take_events()
                .into_iter()
                .map(|e| e.in_run(&run))
                .collect();
            self.sink.send_batch(evs).await;
        }
        let stats = RunStats {
            sessions: accepted.load(Ordering::Relaxed),
            aborted_at_shutdown: aborted,
        };
        let stop = SessionEvent::RunStop {
            sessions: stats.sessions,
            aborted_at_shutdown: stats.aborted_at_shutdown,
            reason,
        };
        self.sink
            .send_batch(vec![Event::new(Timestamp::now(), 0, stop).in_run(&run)])
            .await;
        stats
    }
}

fn bind_listener(addr: SocketAddr, tproxy: bool) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    if tproxy {
        // TPROXY hands us packets addressed to other hosts: the listener must be transparent.
        transparent::set_transparent(&socket, addr.is_ipv6()).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("IP_TRANSPARENT for TPROXY (needs CAP_NET_ADMIN): {e}"),
            )
        })?;
    }
    if addr.is_ipv6() {
        // Listen on IPv6 only, so "[::]:25" and "0.0.0.0:25" can be given together.
        socket2::SockRef::from(&socket).set_only_v6(true)?;
    }
    socket.bind(addr)?;
    socket.listen(1024)
}

#[derive(Clone)]
/// What every session of a listener shares (one `Arc` per session: cloned
/// field by field it was nine reference counts per connection and 88 bytes
/// of every session's future).
struct SessionCtx {
    /// The addresses actually bound (port 0 resolved), for the loop check.
    listen: Arc<Vec<SocketAddr>>,
    cfg: Arc<ProxyConfig>,
    sink: EventSink,
    analysis: Arc<Analysis>,
    crls: Arc<CrlCache>,
    probes: Arc<side_probe::SideProbes>,
    abort: watch::Receiver<bool>,
    /// Notified when `limits.max_sessions_total` sessions were accepted.
    total_reached: Arc<tokio::sync::Notify>,
    /// Intercept mode's shared state (`mode = "intercept"`).
    intercept: Option<Arc<intercept::Shared>>,
}

async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<SessionCtx>,
    permits: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
    next_id: Arc<AtomicU64>,
    accepted: Arc<AtomicU64>,
) {
    let local = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    tracing::info!(listen = %local, upstream = %ctx.cfg.upstream, open_files_limit = open_files_limit(), "listening");
    let mut backoff = AcceptBackoff::default();
    loop {
        if *stop.borrow()
            || ctx
                .cfg
                .limits
                .max_sessions_total
                .is_some_and(|m| accepted.load(Ordering::Relaxed) >= m)
        {
            return;
        }
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.changed() => return,
        };
        if permits.available_permits() == 0 {
            tracing::warn!(
                max_sessions = ctx.cfg.limits.max_sessions,
                "session limit reached: new connections wait in the backlog"
            );
        }
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => {
                    backoff.recovered(local);
                    x
                }
                Err(e) => {
                    // A connection that died in the backlog: just go on.
                    // EMFILE and friends: back off (growing, capped) and
                    // retry; the waiting connections stay in the backlog.
                    if let Some(pause) = backoff.failed(local, &e) {
                        tokio::select! {
                            _ = tokio::time::sleep(pause) => {}
                            _ = stop.changed() => return,
                        }
                    }
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let total = accepted.fetch_add(1, Ordering::Relaxed) + 1;
        // limits.max_sessions_total: this was the last session; stop accepting.
        let last = ctx
            .cfg
            .limits
            .max_sessions_total
            .is_some_and(|m| total >= m);
        let ctx_total = ctx.total_reached.clone();
        let ctx = ctx.clone();
        let listen_addr = stream.local_addr().unwrap_or(local);
        // The session's future itself is the task (no wrapping block that
        // would hold its arguments a second time while it runs).
        let span = tracing::info_span!("session", id, client = %peer);
        tokio::spawn(tracing::Instrument::instrument(
            run_session(id, stream, peer, listen_addr, ctx, permit),
            span,
        ));
        if last {
            ctx_total.notify_one();
            return;
        }
    }
}

/// The accept loop's response to failing accepts: a pause that doubles from
/// [`AcceptBackoff::FIRST`] to [`AcceptBackoff::CAP`] while accept keeps
/// failing, and one log line per [`AcceptBackoff::LOG_EVERY`] (with the
/// number of failures since the last line) instead of one per failure.
#[derive(Debug, Default)]
struct AcceptBackoff {
    /// The next pause (zero: not failing).
    pause: Duration,
    /// Failures since the last log line.
    unlogged: u64,
    /// Failures since the last successful accept.
    run: u64,
    last_log: Option<std::time::Instant>,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(10);
    const CAP: Duration = Duration::from_secs(1);
    const LOG_EVERY: Duration = Duration::from_secs(10);

    /// Accept failed with `e`: the pause before the next try (`None`: the
    /// error was about one connection only; go on at once).
    fn failed(&mut self, listen: SocketAddr, e: &io::Error) -> Option<Duration> {
        if matches!(
            e.kind(),
            io::ErrorKind::ConnectionAborted
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::Interrupted
        ) {
            return None;
        }
        self.pause = (self.pause * 2).clamp(Self::FIRST, Self::CAP);
        self.unlogged += 1;
        self.run += 1;
        let due = self.last_log.is_none_or(|t| t.elapsed() >= Self::LOG_EVERY);
        if due {
            self.last_log = Some(std::time::Instant::now());
            let failures = std::mem::take(&mut self.unlogged);
            if crate::event::io_error_code(e) == "local_resources" {
                tracing::error!(
                    listen = %listen,
                    error = %e,
                    failures,
                    open_files_limit = %open_files_limit(),
                    "cannot accept connections: this process is at its open-file limit; \
                     new connections wait in the listen backlog until sessions end. \
                     Raise the limit (ulimit -n, LimitNOFILE= in the systemd unit) or lower \
                     limits.max_sessions"
                );
            } else {
                tracing::warn!(listen = %listen, error = %e, failures, "accept failed; backing off");
            }
        }
        Some(self.pause)
    }

    /// Accept worked again: the pause starts over (the log interval does
    /// not: at the limit, accept alternates between working and failing).
    fn recovered(&mut self, listen: SocketAddr) {
        if self.run > 0 {
            tracing::info!(listen = %listen, failures = self.run, "accepting connections again");
            self.pause = Duration::ZERO;
            self.run = 0;
        }
    }
}

/// The soft and hard open-file limits of this process, from
/// `/proc/self/limits` (`"1024 (hard 4096)"`), or `"unknown"`. Read once
/// (when the listener starts): at the limit, the file could not be opened.
fn open_files_limit() -> &'static str {
    static LIMIT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    LIMIT.get_or_init(read_open_files_limit)
}

fn read_open_files_limit() -> String {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .map(|l| {
                    let v: Vec<&str> = l.split_whitespace().skip(3).collect();
                    match v.as_slice() {
                        [soft, hard, ..] => format!("{soft} (hard {hard})"),
                        _ => l.to_string(),
                    }
                })
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Sessions refused for want of a file descriptor since the last log line,
/// logged once per [`AcceptBackoff::LOG_EVERY`] at most.
static LOCAL_FAILURES: RateLimited = RateLimited::new();

/// A counter that says when to log it: at the first event, then at most
/// once per [`AcceptBackoff::LOG_EVERY`].
struct RateLimited {
    state: std::sync::Mutex<(u64, Option<std::time::Instant>)>,
}

impl RateLimited {
    const fn new() -> Self {
        RateLimited {
            state: std::sync::Mutex::new((0, None)),
        }
    }

    /// Counts one event; `Some(events since the last line)` when a line is due.
    fn due(&self) -> Option<u64> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.0 += 1;
        if st.1.is_none_or(|t| t.elapsed() >= AcceptBackoff::LOG_EVERY) {
            st.1 = Some(std::time::Instant::now());
            Some(std::mem::take(&mut st.0))
        } else {
            None
        }
    }
}

/// The reply when the upstream could not be reached because this host ran
/// out of file descriptors (EMFILE/ENFILE): the fault is local.
pub const LOCAL_RESOURCES_REPLY: &str =
    "421 4.3.2 smtptap: local resource limit on the proxy, try again later";

/// The session controller's side of the analysis queue: its reports travel
/// on the relay's queue, boxed, and are awaited (never dropped).
struct Controller(tap_queue::Sender<relay::TapMsg>);

impl Controller {
    /// Reports to the analysis; never dropped for want of room (a session
    /// makes at most a few), never waits.
    fn send(&self, c: Box<Control>) -> Result<(), tap_queue::Refused> {
        self.0.push_always(relay::TapMsg::Control(c))
    }
}

/// One session, from the accepted socket to the analysis' end: the
/// controller (connect, relay, report) and the analysis of what it taps,
/// polled together in this one task by [`together`]. A plain `fn`
/// returning an `async move` block, not an `async fn`: an `async fn` keeps
/// its arguments twice in its future (as captured and as moved into
/// locals), and this future is what every session holds while it sits idle.
#[allow(clippy::manual_async_fn)] // on purpose: see above
fn run_session(
    id: u64,
    client: TcpStream,
    client_addr: SocketAddr,
    listen_addr: SocketAddr,
    ctx: Arc<SessionCtx>,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        let _ = client.set_nodelay(true);
        let (upstream, plan) = plan_upstream(&client, client_addr, &ctx).await;
        // Two copies made out of line: a local that is borrowed here would
        // keep its room in this future for the whole session.
        let (upstream, for_info) = twice(upstream);
        let info = SessionInfo {
            id,
            client: client_addr,
            listener: listen_addr,
            upstream: for_info,
            opened: Timestamp::now(),
            implicit_tls: ctx.cfg.implicit_tls,
        };
        // Intercept mode taps each leg's wire bytes besides the relayed ones.
        let queue = ctx.cfg.limits.observer_queue * if ctx.intercept.is_some() { 4 } else { 1 };
        // One queue carries the relay's chunks and the controller's reports,
        // in the order they happened (`tap_queue`: nothing allocated while
        // it is empty).
        // `together` polls the analysis right after the controller: the
        // controller's own pushes need not wake the task once more.
        let (data_tx, data_rx) = tap_queue::queue::<relay::TapMsg>(queue);
        // Both built in place where they are polled (`pin!` of the call
        // itself): moved there from a local, each would take its room twice
        // in this future.
        let analysis = std::pin::pin!(Some(analysis::run(
            Box::new(crate::session::SessionAnalyzer::new(
                info,
                ctx.analysis.clone(),
            )),
            data_rx.polled_after_senders(),
            ctx.crls.clone(),
            ctx.probes.clone(),
            ctx.sink.clone(),
        )));
        let controller = std::pin::pin!(control(client, upstream, plan, data_tx, &ctx));
        together(controller, analysis).await;
        // The session's slot is free only now, with its analysis done.
        drop(permit);
    }
}

/// `u` and a copy of it.
fn twice<T: Clone>(u: T) -> (T, T) {
    (u.clone(), u)
}

/// Polls a session's controller and its analysis in one task until both
/// are done: one task cell and one wake-up per burst instead of two. The
/// controller is polled first, so whatever the relay tapped in a poll is
/// analysed in the same poll. The analysis never blocks the controller: it
/// only ever waits in its own awaits (the tap queue, the sinks, a CRL fetch
/// or a side-probe), each of which wakes this task when it is ready. It
/// does share the task's time: the relay's next poll comes after the
/// analysis has parsed what the controller queued meanwhile (at most the
/// tap queue's bound, `limits.observer_queue` chunks of at most 16 KiB: no
/// more can be queued while the analysis runs), which is CPU it would take
/// from the relay on shared cores anyway; the bytes it parses were written
/// to their peer before it runs. The converse holds too: a relay poll that
/// has queued half the bound ends (`Tap::crowded`), asking at once for the
/// next, so a fast peer cannot fill the bound within one poll of the relay
/// and end the observation while the analysis was never given a turn. And it
/// stays an observer: a panic in it ends the analysis (its queue closes, the
/// relay stops offering and counts nothing more) while the controller and
/// the relay go on, as when the analysis was a task of its own.
fn together<'a, C, A>(
    mut controller: Pin<&'a mut C>,
    mut analysis: Pin<&'a mut Option<A>>,
) -> impl std::future::Future<Output = ()> + 'a
where
    C: std::future::Future<Output = ()>,
    A: std::future::Future<Output = ()>,
{
    use std::task::Poll;
    let mut controller_done = false;
    std::future::poll_fn(move |cx| {
        if !controller_done {
            controller_done = controller.as_mut().poll(cx).is_ready();
        }
        if let Some(a) = analysis.as_mut().as_pin_mut() {
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| a.poll(cx))) {
                Ok(Poll::Pending) => {}
                Ok(Poll::Ready(())) => analysis.set(None),
                Err(_) => {
                    tracing::error!(
                        "the analysis of this session failed (a panic, reported above); \
                         it is no longer observed, the relay was not affected"
                    );
                    analysis.set(None);
                }
            }
        }
        if controller_done && analysis.is_none() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
}

/// The session's controller: connects to the upstream (or refuses, or
/// fails, and says so to the client as configured), runs the relay
/// (passthrough or intercept) and reports each step to the analysis
/// through the tap queue. A plain `fn` for the reason given at
/// [`run_session`].
#[allow(clippy::manual_async_fn)] // on purpose: see run_session
fn control<'a>(
    client: TcpStream,
    upstream: Upstream,
    plan: Plan,
    data_tx: tap_queue::Sender<relay::TapMsg>,
    ctx: &'a SessionCtx,
) -> impl std::future::Future<Output = ()> + Send + 'a {
    async move {
        let cfg = &ctx.cfg;
        let ctl_tx = Controller(data_tx.clone());
        // Each step below moves what it used (the plan, the connection's
        // outcome) rather than matching on it in place, so none of them
        // holds room in this future while the relay runs. The connect step
        // (name resolution, the connect and its timeout: 680 bytes of
        // state) is boxed: it lives on the heap while it runs, instead of
        // sizing every session's future for as long as the session lasts.
        let stream = match Box::pin(connect_planned(plan, &upstream, cfg, &ctl_tx)).await {
            Ok(stream) => stream,
            Err(failure) => {
                drop(data_tx);
                let local = failure.code == "local_resources";
                if local {
                    if let Some(sessions) = LOCAL_FAILURES.due() {
                        tracing::error!(upstream = %upstream, error = %failure.detail,
                            open_files_limit = %open_files_limit(), sessions,
                            "cannot open a socket to the upstream: this process is at its open-file \
                             limit; those sessions were told 421 4.3.2 (raise ulimit -n / \
                             LimitNOFILE=, or lower limits.max_sessions)");
                    }
                } else {
                    tracing::warn!(upstream = %upstream, error = %failure.detail, "upstream unreachable");
                }
                let mut client = client;
                let reply = match &cfg.on_upstream_failure {
                    UpstreamFailure::Reply(line) => {
                        // Not the upstream's fault: say so rather than "unreachable".
                        let line = if local {
                            LOCAL_RESOURCES_REPLY
                        } else {
                            line.as_str()
                        };
                        let mut bytes = line.as_bytes().to_vec();
                        bytes.extend_from_slice(b"\r\n");
                        let sent = tokio::time::timeout(Duration::from_secs(5), async {
                            client.write_all(&bytes).await?;
                            client.shutdown().await
                        })
                        .await;
                        Some((line.to_string(), matches!(sent, Ok(Ok(())))))
                    }
                    UpstreamFailure::Close => None,
                };
                let _ = ctl_tx.send(Box::new(Control::UpstreamFailed {
                    ts: Timestamp::now(),
                    failure,
                    reply,
                }));
                drop(client);
                drop(ctl_tx);
                return;
            }
        };
        let tap = relay::Tap::new(data_tx);
        let tap_state = tap.state();
        let deadlines = relay::Deadlines::from_limits(&cfg.limits);
        let outcome = match &ctx.intercept {
            // Boxed: intercept's future is several KiB, and inline it
            // would make every passthrough session's task that large.
            Some(ic) => {
                Box::pin(intercept::run(
                    ic,
                    &ctx.analysis,
                    cfg,
                    &upstream.host,
                    client,
                    stream,
                    tap,
                    deadlines,
                    ctx.abort.clone(),
                ))
                .await
            }
            None => relay::relay(client, stream, tap, deadlines, ctx.abort.clone()).await,
        };
        let _ = ctl_tx.send(Box::new(Control::Closed {
            ts: Timestamp::now(),
            outcome,
            loss: tap_state.loss(),
        }));
        drop(ctl_tx);
    }
}

/// Connects as planned: to the upstream, from the client's own address
/// (tproxy with `spoof_source`), or not at all (refused, with the reason
/// sent to the analysis first); reports the connection to the analysis.
async fn connect_planned(
    plan: Plan,
    upstream: &crate::config::Upstream,
    cfg: &ProxyConfig,
    ctl_tx: &Controller,
) -> Result<TcpStream, upstream::ConnectFailure> {
    let up = match plan {
        Plan::Connect => upstream::connect(upstream, cfg.limits.connect_timeout).await,
        Plan::Spoofed { dst, source } => {
            transparent::connect_spoofed(dst, source, cfg.limits.connect_timeout).await
        }
        Plan::Refuse(refusal) => {
            let (failure, looped) = *refusal;
            if let Some(l) = looped {
                let _ = ctl_tx.send(Box::new(Control::LoopRefused {
                    ts: Timestamp::now(),
                    original_dst: l.original_dst,
                    reason: l.reason,
                }));
            }
            Err(failure)
        }
    }?;
    let _ = ctl_tx.send(Box::new(Control::Connected {
        ts: Timestamp::now(),
        peer: up.peer,
        local: up.local,
        elapsed: up.elapsed,
    }));
    Ok(up.stream)
}

/// A proxy running in the background of the current tokio runtime (tests, the
/// lab demo, embedding).
pub struct Running {
    addrs: Vec<SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<RunStats>,
}

impl Running {
    /// The listening addresses.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Stops accepting, drains the open sessions, and waits until every sink is flushed.
    pub async fn stop(mut self) -> RunStats {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.await.unwrap_or_default()
    }
}

/// Binds and starts a proxy with these sinks; the analysis (trust store…) is
/// built from the configuration.
pub async fn spawn(cfg: ProxyConfig, sinks: crate::sink::Sinks) -> Result<Running, String> {
    let analysis = Analysis::from_config(&cfg, fresh_run_id())?;
    let (sink, handle) = crate::sink::start(sinks);
    let proxy = Proxy::bind(cfg, sink, analysis)
        .await
        .map_err(|e| e.to_string())?;
    let addrs = proxy.local_addrs();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let stats = proxy
            .run(async {
                let _ = rx.await;
            })
            .await;
        let _ = tokio::time::timeout(
            crate::sink::FINISH_WAIT,
            tokio::task::spawn_blocking(move || handle.finish()),
        )
        .await;
        stats
    });
    Ok(Running {
        addrs,
        stop: Some(tx),
        task,
    })
}

/// How a session reaches its upstream.
enum Plan {
    /// Resolve and connect (static upstream, or the original destination as an IP literal).
    Connect,
    /// TPROXY with spoof_source: connect to `dst` from the client's address.
    Spoofed {
        /// The original destination.
        dst: SocketAddr,
        /// The client's IP, bound before connect.
        source: std::net::IpAddr,
    },
    /// Do not connect (no original destination, or a loop); handled like an
    /// unreachable upstream. Boxed: rare, and inline it would make every
    /// session's controller hold 120 bytes for its plan instead of 40.
    Refuse(Box<(upstream::ConnectFailure, Option<transparent::LoopRefused>)>),
}

/// Picks the upstream of one session: the configured one, or the connection's
/// original destination (checked against loops; a refusal is logged as
/// `upstream.loop_refused` and then handled like an unreachable upstream).
async fn plan_upstream(
    client: &TcpStream,
    client_addr: SocketAddr,
    ctx: &SessionCtx,
) -> (Upstream, Plan) {
    let (mode, spoof_source) = match &ctx.cfg.upstream {
        UpstreamTarget::Static(u) => return (u.clone(), Plan::Connect),
        UpstreamTarget::OriginalDestination { mode, spoof_source } => (*mode, *spoof_source),
    };
    let dst = match transparent::original_destination(client, mode) {
        Ok(d) => d,
        Err(e) => {
            let hint = match mode {
                TransparentMode::Redirect => "is the nat REDIRECT rule in place, and did the client reach smtptap through it?",
                TransparentMode::Tproxy => "is the listener reached through the TPROXY rule?",
            };
            let failure = upstream::ConnectFailure {
                code: "no_original_dst",
                detail: format!("cannot read the original destination ({mode}): {e}; {hint}"),
                tried: Vec::new(),
            };
            let label = Upstream {
                host: "original-destination".into(),
                port: 0,
            };
            return (label, Plan::Refuse(Box::new((failure, None))));
        }
    };
    let label = Upstream {
        host: dst.ip().to_string(),
        port: dst.port(),
    };
    if let Err(refused) = transparent::check_loop(dst, mode, &ctx.listen, transparent::is_local_ip)
    {
        tracing::warn!(original_dst = %dst, reason = %refused.reason, "loop refused");
        let failure = upstream::ConnectFailure {
            code: "loop",
            detail: format!("loop refused: {}", refused.reason),
            tried: Vec::new(),
        };
        return (label, Plan::Refuse(Box::new((failure, Some(refused)))));
    }
    if spoof_source {
        (
            label,
            Plan::Spoofed {
                dst,
                source: client_addr.ip(),
            },
        )
    } else {
        (label, Plan::Connect)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an idle session holds, by parts: the two tasks' futures (the
    /// controller with the relay inside, the analysis driver), the channels'
    /// slots and the analyzer. Printed for docs/performance.md ("Idle
    /// sessions"); `cargo test --release --lib proxy::tests -- --nocapture`
    /// shows the release figures.
    #[tokio::test]
    async fn what_an_idle_session_holds() {
        let cfg = crate::config::RawConfig::from_toml(
            "listen = [\"127.0.0.1:0\"]\nupstream = \"127.0.0.1:25\"\n[log]\nconsole = false\n",
            "t",
        )
        .unwrap()
        .resolve("t")
        .unwrap();
        let analysis = Arc::new(Analysis::from_config(&cfg, fresh_run_id()).unwrap());
        let (sink, _handle) = crate::sink::start(crate::sink::Sinks::default());
        let (_abort_tx, abort) = watch::channel(false);
        let ctx = Arc::new(SessionCtx {
            listen: Arc::new(Vec::new()),
            crls: Arc::new(CrlCache::default()),
            probes: Arc::new(side_probe::SideProbes::new(&cfg.tls)),
            cfg: Arc::new(cfg),
            sink: sink.clone(),
            analysis: analysis.clone(),
            abort: abort.clone(),
            total_reached: Arc::new(tokio::sync::Notify::new()),
            intercept: None,
        });
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let c1 = TcpStream::connect(addr).await.unwrap();
        let (s1, _) = l.accept().await.unwrap();
        let c2 = TcpStream::connect(addr).await.unwrap();
        let (s2, peer) = l.accept().await.unwrap();
        let (data_tx, data_rx) = tap_queue::queue::<relay::TapMsg>(8);
        let info = SessionInfo {
            id: 1,
            client: peer,
            listener: addr,
            upstream: crate::config::Upstream {
                host: "127.0.0.1".into(),
                port: 25,
            },
            opened: Timestamp::now(),
            implicit_tls: false,
        };
        let analyzer = crate::session::SessionAnalyzer::new(info.clone(), analysis.clone());
        let driver = analysis::run(
            Box::new(crate::session::SessionAnalyzer::new(info, analysis)),
            data_rx,
            ctx.crls.clone(),
            ctx.probes.clone(),
            sink,
        );
        let tap = relay::Tap::new(data_tx);
        let relay = relay::relay(
            c1,
            s1,
            tap,
            relay::Deadlines::idle_only(Duration::from_secs(1)),
            abort,
        );
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        let session = run_session(1, c2, peer, addr, ctx, permit);
        let sizes = [
            (
                "session task future (run_session: controller and analysis)",
                std::mem::size_of_val(&session),
            ),
            ("  of which the relay future", std::mem::size_of_val(&relay)),
            (
                "  of which the analysis future (analysis::run)",
                std::mem::size_of_val(&driver),
            ),
            ("SessionAnalyzer (boxed)", std::mem::size_of_val(&analyzer)),
            (
                "analysis queue slot (TapMsg: chunks and control)",
                std::mem::size_of::<relay::TapMsg>(),
            ),
        ];
        for (what, n) in sizes {
            eprintln!("{what}: {n} bytes");
        }
        drop((s2, driver, relay, session, analyzer));
        // A queued message is one slot of the queue's deque: keep it small.
        assert!(std::mem::size_of::<relay::TapMsg>() <= 16);
    }

    #[tokio::test]
    async fn a_panic_in_the_analysis_ends_the_analysis_not_the_session() {
        // The controller needs several polls (it yields twice) and must run
        // to its end although the analysis panics on its first poll.
        let steps = Arc::new(AtomicU64::new(0));
        let s = steps.clone();
        let controller = std::pin::pin!(async move {
            for _ in 0..3 {
                s.fetch_add(1, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        });
        let analysis = std::pin::pin!(Some(async {
            if std::hint::black_box(true) {
                panic!("a planted analyzer bug");
            }
        }));
        together(controller, analysis).await;
        assert_eq!(steps.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn together_waits_for_the_analysis_after_the_controller_ends() {
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let got = Arc::new(AtomicU64::new(0));
        let g = got.clone();
        let controller = std::pin::pin!(async move {
            tokio::task::yield_now().await;
            let _ = tx.send(7);
        });
        let analysis = std::pin::pin!(Some(async move {
            if let Ok(v) = rx.await {
                g.store(u64::from(v), Ordering::Relaxed);
            }
        }));
        together(controller, analysis).await;
        assert_eq!(got.load(Ordering::Relaxed), 7);
    }
}
