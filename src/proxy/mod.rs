//! The live proxy: listeners, the upstream connection, the relay, the
//! driver of the session core, CRL fetching, and graceful shutdown. Besides
//! `probe` (its own client connection) and `lab` (demo peers), the only
//! module that touches sockets.
//!
//! ```text
//!  listener(s) ──accept──▶ session controller (one task per connection)
//!                              │ 1. start the analysis task   (analysis::run → session::SessionAnalyzer)
//!                              │ 2. connect upstream          (upstream::connect)
//!                              │    └─ failure: 421 reply or close, per config
//!                              │ 3. relay both ways           (relay::relay)
//!                              │    or, intercept mode:       (intercept::run: TLS on both legs)
//!                              └ 4. report the outcome, wait for the analysis to finish
//! ```
//!
//! Sessions are limited by a semaphore (`limits.max_sessions`): when all
//! permits are taken, the accept loop stops accepting and new connections wait
//! in the kernel's listen backlog. On shutdown the listeners close, open
//! sessions get `limits.drain_timeout` to finish, then they are aborted; every
//! session still gets its `session.close` and `session.summary`.

pub mod analysis;
pub mod crl;
pub mod intercept;
pub mod relay;
pub mod transparent;
pub mod upstream;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};

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
            cfg: Arc::new(cfg),
            listeners,
            sink,
            analysis: Arc::new(analysis),
            crls: Arc::new(CrlCache::default()),
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
            let ctx = SessionCtx {
                listen: listen.clone(),
                cfg: self.cfg.clone(),
                sink: self.sink.clone(),
                analysis: self.analysis.clone(),
                crls: self.crls.clone(),
                abort: abort_rx.clone(),
                intercept: self.intercept.clone(),
            };
            accept_tasks.push(tokio::spawn(accept_loop(
                listener,
                ctx,
                permits.clone(),
                stop_rx.clone(),
                next_id.clone(),
                accepted.clone(),
            )));
        }

        shutdown.await;
        tracing::info!("shutting down: no new connections; draining open sessions");
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
struct SessionCtx {
    /// The addresses actually bound (port 0 resolved), for the loop check.
    listen: Arc<Vec<SocketAddr>>,
    cfg: Arc<ProxyConfig>,
    sink: EventSink,
    analysis: Arc<Analysis>,
    crls: Arc<CrlCache>,
    abort: watch::Receiver<bool>,
    /// Intercept mode's shared state (`mode = "intercept"`).
    intercept: Option<Arc<intercept::Shared>>,
}

async fn accept_loop(
    listener: TcpListener,
    ctx: SessionCtx,
    permits: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
    next_id: Arc<AtomicU64>,
    accepted: Arc<AtomicU64>,
) {
    let local = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    tracing::info!(listen = %local, upstream = %ctx.cfg.upstream, "listening");
    loop {
        if *stop.borrow() {
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
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: log, back off briefly, keep serving.
                    tracing::warn!(listen = %local, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        accepted.fetch_add(1, Ordering::Relaxed);
        let ctx = ctx.clone();
        let listen_addr = stream.local_addr().unwrap_or(local);
        tokio::spawn(async move {
            let span = tracing::info_span!("session", id, client = %peer);
            let _ = tracing::Instrument::instrument(
                run_session(id, stream, peer, listen_addr, ctx),
                span,
            )
            .await;
            drop(permit);
        });
    }
}

async fn run_session(
    id: u64,
    client: TcpStream,
    client_addr: SocketAddr,
    listen_addr: SocketAddr,
    ctx: SessionCtx,
) {
    let _ = client.set_nodelay(true);
    let cfg = &ctx.cfg;
    let (upstream, plan) = plan_upstream(&client, client_addr, &ctx).await;
    let info = SessionInfo {
        id,
        client: client_addr,
        listener: listen_addr,
        upstream: upstream.clone(),
        opened: Timestamp::now(),
        implicit_tls: cfg.implicit_tls,
    };
    // Intercept mode taps each leg's wire bytes besides the relayed ones.
    let queue = cfg.limits.observer_queue * if ctx.intercept.is_some() { 4 } else { 1 };
    let (data_tx, data_rx) = mpsc::channel(queue);
    let (ctl_tx, ctl_rx) = mpsc::channel(4);
    let analysis = tokio::spawn(analysis::run(
        info,
        data_rx,
        ctl_rx,
        ctx.analysis.clone(),
        ctx.crls.clone(),
        ctx.sink.clone(),
    ));

    let connected = match plan {
        Plan::Connect => upstream::connect(&upstream, cfg.limits.connect_timeout).await,
        Plan::Spoofed { dst, source } => {
            transparent::connect_spoofed(dst, source, cfg.limits.connect_timeout).await
        }
        Plan::Refuse(failure, looped) => {
            if let Some(l) = looped {
                let _ = ctl_tx
                    .send(Control::LoopRefused {
                        ts: Timestamp::now(),
                        original_dst: l.original_dst,
                        reason: l.reason,
                    })
                    .await;
            }
            Err(failure)
        }
    };
    match connected {
        Ok(up) => {
            let _ = ctl_tx
                .send(Control::Connected {
                    ts: Timestamp::now(),
                    peer: up.peer,
                    local: up.local,
                    elapsed: up.elapsed,
                })
                .await;
            let tap = relay::Tap::new(data_tx);
            let tap_state = tap.state();
            let outcome = match &ctx.intercept {
                Some(ic) => {
                    intercept::run(
                        ic,
                        &ctx.analysis,
                        cfg,
                        &upstream.host,
                        client,
                        up.stream,
                        tap,
                        ctx.abort.clone(),
                    )
                    .await
                }
                None => {
                    relay::relay(
                        client,
                        up.stream,
                        tap,
                        cfg.limits.idle_timeout,
                        ctx.abort.clone(),
                    )
                    .await
                }
            };
            let _ = ctl_tx
                .send(Control::Closed {
                    ts: Timestamp::now(),
                    outcome,
                    loss: tap_state.loss(),
                })
                .await;
        }
        Err(failure) => {
            drop(data_tx);
            tracing::warn!(upstream = %upstream, error = %failure.detail, "upstream unreachable");
            let mut client = client;
            let reply = match &cfg.on_upstream_failure {
                UpstreamFailure::Reply(line) => {
                    let mut bytes = line.clone().into_bytes();
                    bytes.extend_from_slice(b"\r\n");
                    let sent = tokio::time::timeout(Duration::from_secs(5), async {
                        client.write_all(&bytes).await?;
                        client.shutdown().await
                    })
                    .await;
                    Some((line.clone(), matches!(sent, Ok(Ok(())))))
                }
                UpstreamFailure::Close => None,
            };
            let _ = ctl_tx
                .send(Control::UpstreamFailed {
                    ts: Timestamp::now(),
                    failure,
                    reply,
                })
                .await;
            drop(client);
        }
    }
    drop(ctl_tx);
    if let Err(e) = analysis.await {
        tracing::error!(error = %e, "analysis task failed; the relay was not affected");
    }
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
    /// Do not connect (no original destination, or a loop); handled like an unreachable upstream.
    Refuse(upstream::ConnectFailure, Option<transparent::LoopRefused>),
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
            return (label, Plan::Refuse(failure, None));
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
        return (label, Plan::Refuse(failure, Some(refused)));
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
