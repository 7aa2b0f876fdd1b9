//! `smtptap probe HOST[:PORT]`: an active STARTTLS check that explains
//! itself. The probe is a client of its own: it connects, reads the banner,
//! says EHLO, starts TLS (STARTTLS, or implicit TLS), handshakes with rustls,
//! says EHLO again, optionally goes as far as RCPT (never DATA), and QUITs.
//!
//! It is a *driver* of the same [`SessionAnalyzer`] the proxy uses: every
//! byte of its own connection, TLS records included, is fed as
//! [`Leg::EndToEnd`] (client bytes = what the probe sent, server bytes = what
//! it read), so its events, transcript and findings are the proxy's. When
//! TLS 1.3 hides the server's certificate from the wire, the chain the
//! handshake itself saw is handed over with
//! [`SessionAnalyzer::peer_chain`], so trust, expiry and name checks apply.
//!
//! ```text
//!  probe (this module) ──TapStream (tap.rs: both directions, ciphertext)──▶ server
//!     │  rustls client: verify.rs (records the chain, never fails; client-cert request)
//!     ▼
//!  SessionAnalyzer ── events ──▶ console transcript or JSON lines (stdout)
//!     └── requests (CRLs) ──▶ proxy::crl::CrlCache
//! ```
//!
//! Legacy servers: when the rustls handshake fails on versions or suites
//! (see `wants_legacy`), a second session connects again and sends a
//! hand-built legacy ClientHello ([`legacy`]: TLS 1.0 to 1.2, CBC and RSA
//! suites), reads the server's first flight in the clear (ServerHello,
//! Certificate, ServerHelloDone), stops with a `user_canceled` alert and
//! closes; those bytes go to a fresh [`SessionAnalyzer`] like the main
//! probe's, so the version, suite, certificate and findings are the core's,
//! and a `probe.version` event says what the server chose. `--versions` does
//! the same once per version (TLS 1.0, 1.1, 1.2, 1.3 offered alone) and
//! writes only the `probe.version` facts (session 0), with its own verdict.
//!
//! It owns: the probe's sockets, its SMTP dialogue, its TLS client, the
//! I/O of the hand-built hellos, its clock and timeouts (per connection),
//! and the verdict (exit code, see [`exit`]). It must not: judge anything
//! itself (findings are the session core's; `probe.version` only reports
//! what the core's TLS observer saw), complete a hand-built handshake, send
//! DATA, or be used by the proxy.

pub mod legacy;
pub mod tap;
pub mod verify;

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::cli::ProxyArgs;
use crate::config::{ProxyConfig, Upstream, UpstreamTarget};
use crate::diagnose::Severity;

/// Most lines and bytes of one server reply the probe reads before giving up
/// (the relay's SMTP observer has the same line bound).
const MAX_REPLY_LINES: usize = 1000;
const MAX_REPLY_BYTES: usize = 64 * 1024;
/// Most bytes read while draining a closing server (each kept by the tap
/// until the next sync).
const MAX_DRAIN: usize = 1024 * 1024;
use crate::event::{Event, EventKind, Leg, RunId, SessionEvent, Side, Timestamp, SCHEMA_VERSION};
use crate::proxy::crl::CrlCache;
use crate::session::{Analysis, DirEnd, Ends, Request, SessionAnalyzer, SessionInfo};
use crate::sink::console::Console;
use crate::smtp::{SmtpLimits, SmtpObserver};
use legacy::{FlightEnd, Offer};
use tap::{TapLog, TapStream, Tapped};
use verify::{Seen, SeenLog};

/// The exit codes: the verdict of a probe. With `--versions` the same
/// numbers answer "only modern TLS?": 0 TLS 1.2 and/or 1.3 accepted and
/// TLS 1.0/1.1 refused; 1 TLS 1.0 or 1.1 accepted, nothing accepted, or no
/// clear answer; 2 usage; 3 a connection could not be made.
pub mod exit {
    /// No error-severity finding.
    pub const OK: u8 = 0;
    /// At least one error-severity finding, or the dialogue broke off before QUIT.
    pub const ERROR_FINDING: u8 = 1;
    /// Usage or configuration error.
    pub const USAGE: u8 = 2;
    /// Could not connect (refused, timeout, DNS failure).
    pub const NO_CONNECTION: u8 = 3;
}

/// `smtptap probe` flags.
#[derive(Debug, Args, Default)]
#[command(after_help = "Exit status (the verdict):\n  \
    0  no error finding\n  \
    1  at least one error finding (or the dialogue broke off before QUIT)\n  \
    2  usage or configuration error\n  \
    3  could not connect (refused, timeout, DNS failure)\n\n\
When the TLS handshake fails on versions or suites, the probe tries again with a\n\
legacy ClientHello (TLS 1.0 to 1.2, CBC and RSA suites) to show what the server\n\
chose and its certificate (session 2), then stops that handshake.\n\n\
With --versions (one connection per version, --timeout each):\n  \
    0  TLS 1.2 and/or 1.3 accepted, TLS 1.0 and 1.1 refused\n  \
    1  TLS 1.0 or 1.1 accepted, or no version accepted or no clear answer\n  \
    2  usage or configuration error\n  \
    3  a connection could not be made")]
pub struct ProbeArgs {
    /// The server to check (see the help text).
    #[arg(
        value_name = "HOST[:PORT]",
        help = "The server to check, HOST[:PORT] (port 25, or 465 with --implicit-tls)"
    )]
    pub target: String,
    /// TLS from the first byte (SMTPS, port 465) instead of STARTTLS.
    #[arg(long)]
    pub implicit_tls: bool,
    /// The name to say in EHLO (default: this machine's host name).
    #[arg(long, value_name = "NAME")]
    pub ehlo: Option<String>,
    /// The SNI to send (default: HOST when it is a name; none for an IP address).
    #[arg(long, value_name = "NAME")]
    pub sni: Option<String>,
    /// Go as far as MAIL FROM over TLS with this address (never DATA; RSET after).
    #[arg(long, value_name = "ADDRESS")]
    pub mail_from: Option<String>,
    /// With --mail-from: RCPT TO this address (repeatable).
    #[arg(long, value_name = "ADDRESS", requires = "mail_from")]
    pub rcpt_to: Vec<String>,
    /// A client certificate chain to offer if the server asks (PEM).
    #[arg(long, value_name = "FILE", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// A name the server certificate must carry (repeatable).
    #[arg(long = "expect-name", value_name = "NAME")]
    pub expect_name: Vec<String>,
    /// Extra trust anchors, PEM (repeatable), e.g. a partner's private CA.
    #[arg(long = "ca-file", value_name = "FILE")]
    pub ca_file: Vec<String>,
    /// A CRL file (PEM or DER; repeatable).
    #[arg(long = "crl-file", value_name = "FILE")]
    pub crl_file: Vec<String>,
    /// Fetch the CRLs the certificates name (http://) and report revocation.
    #[arg(long)]
    pub check_revocation: bool,
    /// Configuration file (see the help text).
    #[arg(
        long,
        short = 'c',
        value_name = "FILE",
        help = "Configuration file whose [tls] and [[destination]] settings apply (as for the proxy)"
    )]
    pub config: Option<PathBuf>,
    /// Print the JSON events (one per line) instead of the transcript.
    #[arg(long)]
    pub json: bool,
    /// Colour on the console: auto (only on a terminal), always, never.
    #[arg(long, value_name = "WHEN", default_value = "auto")]
    pub color: String,
    /// Give up after this many seconds, for each connection the probe makes.
    #[arg(long, value_name = "SECS", default_value_t = 15)]
    pub timeout: u64,
    /// Only enumerate which of TLS 1.0, 1.1, 1.2 and 1.3 the server accepts
    /// (one connection per version; no full handshake).
    #[arg(long, conflicts_with_all = ["mail_from", "client_cert"])]
    pub versions: bool,
}

/// `HOST[:PORT]` with the default port added (`[v6]:port` for IPv6 literals).
pub fn with_port(target: &str, implicit_tls: bool) -> String {
    let port = if implicit_tls { 465 } else { 25 };
    let t = target.trim();
    if t.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("[{t}]:{port}")
    } else if t.starts_with('[') && t.ends_with(']') {
        format!("{t}:{port}")
    } else if t.contains(':') {
        t.to_string()
    } else {
        format!("{t}:{port}")
    }
}

impl ProbeArgs {
    /// The resolved configuration, built as `smtptap proxy --upstream` builds it.
    pub fn config(&self) -> Result<ProxyConfig, String> {
        let pa = ProxyArgs {
            config: self.config.clone(),
            // Never bound: the probe listens nowhere.
            listen: vec!["127.0.0.1:0".into()],
            upstream: Some(with_port(&self.target, self.implicit_tls)),
            implicit_tls: self.implicit_tls,
            expect_name: self.expect_name.clone(),
            ca_file: self.ca_file.clone(),
            crl_file: self.crl_file.clone(),
            check_revocation: self.check_revocation,
            ..Default::default()
        };
        let (mut raw, file) = pa.raw_config().map_err(|e| e.to_string())?;
        raw.capture.enabled = false;
        raw.resolve(&file).map_err(|e| e.to_string())
    }
}

/// This machine's host name, for EHLO.
fn host_name() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Runs a probe and returns its exit code (see [`exit`]).
pub fn main(args: &ProbeArgs) -> u8 {
    let cfg = match args.config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("smtptap: {e}");
            return exit::USAGE;
        }
    };
    let client_cert = match (&args.client_cert, &args.client_key) {
        (Some(c), Some(k)) => match verify::load_client_cert(c, k) {
            Ok(ck) => Some(ck),
            Err(e) => {
                eprintln!("smtptap: cannot load the client certificate: {e}");
                return exit::USAGE;
            }
        },
        _ => None,
    };
    let color = match args.color.as_str() {
        "auto" => std::io::stdout().is_terminal(),
        "always" => true,
        "never" => false,
        other => {
            eprintln!("smtptap: --color {other:?} is not one of auto, always, never");
            return exit::USAGE;
        }
    };
    let analysis = match Analysis::from_config(&cfg, crate::proxy::fresh_run_id()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("smtptap: {e}");
            return exit::USAGE;
        }
    };
    let out = if args.json {
        Output::Json(Box::new(std::io::BufWriter::new(std::io::stdout())))
    } else {
        Output::Console(Console::new(Box::new(std::io::stdout()), color))
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("smtptap: cannot start the runtime: {e}");
            return exit::USAGE;
        }
    };
    let plan = Plan {
        ehlo: args.ehlo.clone().unwrap_or_else(host_name),
        sni: args.sni.clone(),
        mail_from: args.mail_from.clone(),
        rcpt_to: args.rcpt_to.clone(),
        implicit_tls: args.implicit_tls,
        timeout: Duration::from_secs(args.timeout.max(1)),
        client_cert,
        versions: args.versions,
    };
    rt.block_on(run(cfg, analysis, plan, out))
}

/// What to do, beyond the configuration.
pub struct Plan {
    /// The EHLO name.
    pub ehlo: String,
    /// The SNI (None: the host when it is a name).
    pub sni: Option<String>,
    /// MAIL FROM over TLS.
    pub mail_from: Option<String>,
    /// RCPT TO over TLS.
    pub rcpt_to: Vec<String>,
    /// TLS from the first byte.
    pub implicit_tls: bool,
    /// For the whole probe.
    pub timeout: Duration,
    /// Offered when the server asks.
    pub client_cert: Option<Arc<rustls::sign::CertifiedKey>>,
    /// `--versions`: only enumerate the TLS versions the server accepts.
    pub versions: bool,
}

/// Where events go.
pub enum Output {
    /// The console transcript.
    Console(Console),
    /// JSON lines.
    Json(Box<dyn Write + Send>),
    /// In memory (tests, embedding).
    Memory(Vec<Event>),
}

impl Output {
    fn write(&mut self, ev: Event) {
        match self {
            Output::Console(c) => c.write(&ev),
            Output::Json(w) => {
                let _ = crate::sink::json::write(w.as_mut(), &ev);
            }
            Output::Memory(v) => v.push(ev),
        }
    }

    fn flush(&mut self) {
        match self {
            Output::Console(c) => c.flush(),
            Output::Json(w) => {
                let _ = w.flush();
            }
            Output::Memory(_) => {}
        }
    }
}

/// The driver's state: the analyzer and what feeds it.
struct Driver {
    a: SessionAnalyzer,
    run: RunId,
    log: TapLog,
    seen: SeenLog,
    crls: Arc<CrlCache>,
    out: Output,
    bytes: [u64; 2],
    fins: [bool; 2],
    error_finding: bool,
    /// The SMTP dialogue inside TLS, which the probe alone sees in the clear
    /// (the session core, like the relay, sees only records).
    inner: Option<SmtpObserver>,
    /// The cleartext banner, to start the inner observer past it.
    banner: Vec<u8>,
    /// The rustls handshake failed on versions or suites: a legacy hello
    /// may show what the server chooses.
    legacy_hint: bool,
}

impl Driver {
    /// A session of the probe (`id`), its analyzer opened at `opened` from `local`.
    fn new(
        id: crate::event::SessionId,
        shared: &Arc<Analysis>,
        upstream: &Upstream,
        plan: &Plan,
        (opened, local): (Timestamp, SocketAddr),
        out: Output,
    ) -> Self {
        let info = SessionInfo {
            id,
            // The probe is the client; it listens nowhere.
            client: local,
            listener: local,
            upstream: upstream.clone(),
            opened,
            implicit_tls: plan.implicit_tls,
        };
        Driver {
            a: SessionAnalyzer::new(info, shared.clone()),
            run: shared.run.clone(),
            log: Arc::new(Mutex::new(Vec::new())),
            seen: Arc::new(Mutex::new(Seen::default())),
            crls: Arc::new(CrlCache::default()),
            out,
            bytes: [0, 0],
            fins: [false, false],
            error_finding: false,
            inner: None,
            banner: Vec::new(),
            legacy_hint: false,
        }
    }

    /// The connection is over (`broke`: how the probe's side ended, if not
    /// cleanly): the session core closes the session and writes its summary.
    async fn finish(&mut self, broke: Option<DirEnd>) {
        self.sync().await;
        let fin = |seen: bool| {
            if seen {
                DirEnd::Fin
            } else {
                DirEnd::PeerFailed
            }
        };
        let (client_end, server_end) = match broke {
            None => (fin(self.fins[0]), fin(self.fins[1])),
            Some(e) => (e, fin(self.fins[1])),
        };
        let ends = Ends {
            client_end,
            server_end,
            client_bytes: self.bytes[0],
            server_bytes: self.bytes[1],
        };
        self.a.close(Timestamp::now(), ends, None);
        self.flush_events();
    }

    /// The `probe.version` fact of this session.
    fn report(&mut self, outcome: &HelloOutcome, offer: Offer) {
        self.flush_events();
        let ev =
            Event::new(Timestamp::now(), self.a.info().id, outcome.event(offer)).in_run(&self.run);
        self.out.write(ev);
        self.out.flush();
    }

    /// Feeds what the tap recorded, serves the analyzer's requests, writes its events.
    async fn sync(&mut self) {
        let tapped = self
            .log
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default();
        for t in tapped {
            match t {
                Tapped::Data(side, ts, b) => {
                    self.bytes[side_index(side)] += b.len() as u64;
                    self.a.bytes(Leg::EndToEnd, side, ts, &b);
                }
                Tapped::Fin(side, ts) => {
                    self.fins[side_index(side)] = true;
                    self.a.fin(Leg::EndToEnd, side, ts);
                }
            }
            self.serve_requests().await;
        }
        self.serve_requests().await;
        self.flush_events();
    }

    async fn serve_requests(&mut self) {
        loop {
            let requests = self.a.take_requests();
            if requests.is_empty() {
                return;
            }
            for r in requests {
                match r {
                    Request::FetchCrls { id, urls } => {
                        let cache = self.crls.clone();
                        let outcomes =
                            tokio::task::spawn_blocking(move || cache.fetch_chain(&urls)).await;
                        self.a.crls_fetched(id, outcomes.unwrap_or_default());
                    }
                    // The probe's own handshake is the evidence: it hands the
                    // chain over with `peer_chain`, no side-probe needed.
                    Request::SideProbe { .. } => {}
                }
            }
        }
    }

    /// Starts following the SMTP dialogue inside TLS.
    fn start_inner(&mut self, after_banner: bool) {
        let mut obs = SmtpObserver::new(SmtpLimits::default());
        if after_banner {
            // The banner was reported in cleartext; the observer only needs
            // to know it was seen, so its events are dropped.
            let (mut evs, mut marks) = (Vec::new(), Vec::new());
            obs.feed(Side::Server, &self.banner, &mut evs, &mut marks);
        }
        self.inner = Some(obs);
    }

    /// Plaintext SMTP inside TLS: reported as `smtp.*` events of the session
    /// (transcript and JSON). They are not part of the diagnosis.
    fn inner_bytes(&mut self, side: Side, data: &[u8]) {
        let Some(obs) = self.inner.as_mut() else {
            return;
        };
        let (mut evs, mut marks) = (Vec::new(), Vec::new());
        obs.feed(side, data, &mut evs, &mut marks);
        let ts = Timestamp::now();
        let id = self.a.info().id;
        for e in evs {
            // Inside TLS no STARTTLS is offered, rightly: the capabilities
            // fact would read as a problem; the reply lines carry them.
            if matches!(e, crate::smtp::SmtpEvent::Capabilities { .. }) {
                continue;
            }
            let ev = Event::new(ts, id, e).in_run(&self.run);
            self.out.write(ev);
        }
        self.out.flush();
    }

    fn flush_events(&mut self) {
        for ev in self.a.take_events() {
            if let EventKind::Session(SessionEvent::Summary(s)) = &ev.kind {
                if s.findings.iter().any(|f| f.severity == Severity::Error) {
                    self.error_finding = true;
                }
            }
            self.out.write(ev);
        }
        self.out.flush();
    }

    /// After a handshake (done or failed): what the wire did not show.
    async fn after_handshake(&mut self, version: Option<&str>) {
        self.sync().await;
        let seen: Seen = self.seen.lock().map(|s| s.clone()).unwrap_or_default();
        let kept = self.a.kept();
        let wire_chain = kept.iter().any(|e| {
            matches!(
                &e.kind,
                EventKind::Tls(crate::tls::TlsEvent::Certificate {
                    side: Side::Server,
                    ..
                })
            )
        });
        let wire_request = kept.iter().any(|e| {
            matches!(
                &e.kind,
                EventKind::Tls(crate::tls::TlsEvent::CertificateRequest { .. })
            )
        });
        if let (Some((schemes, ca_names)), false) = (&seen.cert_request, wire_request) {
            // TLS 1.3 encrypts the CertificateRequest: the handshake saw it.
            let ev = Event::new(
                Timestamp::now(),
                self.a.info().id,
                crate::tls::TlsEvent::CertificateRequest {
                    version: version.unwrap_or("TLSv1.3").to_string(),
                    cert_types: Vec::new(),
                    signature_algorithms: schemes.clone(),
                    ca_names: *ca_names,
                },
            )
            .on_leg(Some(Leg::EndToEnd))
            .in_run(&self.run);
            self.out.write(ev);
        }
        if !seen.chain.is_empty() && !wire_chain {
            self.a
                .peer_chain(Timestamp::now(), Leg::EndToEnd, Side::Server, seen.chain);
            self.serve_requests().await;
            self.flush_events();
        }
    }
}

fn side_index(s: Side) -> usize {
    match s {
        Side::Client => 0,
        Side::Server => 1,
    }
}

/// Runs one probe to the end and returns its exit code.
pub async fn run(cfg: ProxyConfig, analysis: Analysis, plan: Plan, mut out: Output) -> u8 {
    run_to(cfg, analysis, plan, &mut out).await
}

/// As [`run`], leaving the events in `out` (for [`Output::Memory`]).
pub async fn run_to(cfg: ProxyConfig, analysis: Analysis, plan: Plan, out: &mut Output) -> u8 {
    let upstream: Upstream = match &cfg.upstream {
        UpstreamTarget::Static(u) => u.clone(),
        UpstreamTarget::OriginalDestination { .. } => {
            eprintln!("smtptap: the probe needs a HOST[:PORT]");
            return exit::USAGE;
        }
    };
    let run = analysis.run.clone();
    let mut config = cfg.resolved_json();
    if let Some(o) = config.as_object_mut() {
        o.remove("listen");
    }
    let start = SessionEvent::RunStart {
        version: env!("CARGO_PKG_VERSION").into(),
        schema: SCHEMA_VERSION,
        mode: "probe".into(),
        config,
    };
    out.write(Event::new(Timestamp::now(), 0, start).in_run(&run));
    out.flush();
    let shared = Arc::new(analysis);
    if plan.versions {
        return versions(&shared, &upstream, &plan, out).await;
    }

    let deadline = tokio::time::Instant::now() + plan.timeout;
    let opened = Timestamp::now();
    let connected = crate::proxy::upstream::connect(&upstream, plan.timeout).await;
    let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
    let local = connected.as_ref().map(|c| c.local).unwrap_or(unspecified);
    let seen: SeenLog = Arc::new(Mutex::new(Seen::default()));
    let placeholder = Output::Memory(Vec::new());
    let mut d = Driver::new(
        1,
        &shared,
        &upstream,
        &plan,
        (opened, local),
        std::mem::replace(out, placeholder),
    );
    d.seen = seen.clone();
    let mut code = match connected {
        Err(failure) => {
            d.a.upstream_failed(Timestamp::now(), failure, None);
            d.flush_events();
            exit::NO_CONNECTION
        }
        Ok(c) => {
            d.a.upstream_connected(Timestamp::now(), c.peer, c.local, c.elapsed.as_secs_f64());
            d.flush_events();
            let tls = match verify::client_config(seen, plan.client_cert.clone()) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("smtptap: {e}");
                    return exit::USAGE;
                }
            };
            let tcp = TapStream::new(c.stream, d.log.clone());
            let sni = server_name(&plan, &upstream);
            let result =
                tokio::time::timeout_at(deadline, converse(&mut d, tcp, &plan, tls, sni)).await;
            let broke = match result {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(_) => Some(timed_out(&plan)),
            };
            let complete = broke.is_none();
            d.finish(broke).await;
            if d.error_finding || !complete {
                exit::ERROR_FINDING
            } else {
                exit::OK
            }
        }
    };
    if d.legacy_hint {
        // What rustls could not negotiate, a legacy hello may show: the
        // version and suite the server chooses, and its certificate.
        let o = std::mem::replace(&mut d.out, Output::Memory(Vec::new()));
        let h = hello_session(&shared, &upstream, &plan, 2, Offer::Legacy, o, true).await;
        d.out = h.out;
        if h.error_finding {
            code = exit::ERROR_FINDING;
        }
    }
    *out = std::mem::replace(&mut d.out, Output::Memory(Vec::new()));
    out.flush();
    code
}

fn timed_out(plan: &Plan) -> DirEnd {
    DirEnd::Error {
        code: "timeout",
        detail: format!(
            "the probe gave up after {}s (--timeout)",
            plan.timeout.as_secs()
        ),
    }
}

/// Whether a failed rustls handshake failed on versions or suites, so that
/// a legacy hello may tell more: no ServerHello and the server refused
/// (protocol_version, handshake_failure, insufficient_security), closed, or
/// rustls found it incompatible; or the server chose a version older than
/// TLS 1.2.
fn wants_legacy(kept: &[Event], e: &std::io::Error) -> bool {
    let mut server_hello = false;
    let mut old_version = false;
    let mut refusal = false;
    let mut other_alert = false;
    for ev in kept {
        match &ev.kind {
            EventKind::Tls(crate::tls::TlsEvent::ServerHello { version, .. }) => {
                server_hello = true;
                old_version |= matches!(version.as_str(), "SSLv3" | "TLSv1.0" | "TLSv1.1");
            }
            EventKind::Tls(crate::tls::TlsEvent::Alert {
                side: Side::Server,
                description,
                ..
            }) => {
                if matches!(
                    description.as_str(),
                    "protocol_version" | "handshake_failure" | "insufficient_security"
                ) {
                    refusal = true;
                } else if description != "close_notify" {
                    other_alert = true;
                }
            }
            _ => {}
        }
    }
    let rustls_error = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    let incompatible = matches!(rustls_error, Some(rustls::Error::PeerIncompatible(_)));
    let closed = e.kind() == std::io::ErrorKind::UnexpectedEof && !other_alert;
    old_version || (!server_hello && (refusal || incompatible || closed))
}

/// What one hand-built hello learnt.
#[derive(Debug, Clone)]
struct HelloOutcome {
    accepted: bool,
    version: Option<String>,
    cipher_suite: Option<String>,
    refused: Option<&'static str>,
    detail: String,
}

impl HelloOutcome {
    fn refused(code: &'static str, detail: impl Into<String>) -> Self {
        HelloOutcome {
            accepted: false,
            version: None,
            cipher_suite: None,
            refused: Some(code),
            detail: detail.into(),
        }
    }

    fn event(&self, offer: Offer) -> SessionEvent {
        SessionEvent::ProbeVersion {
            offered: offer_name(offer),
            accepted: self.accepted,
            version: self.version.clone(),
            cipher_suite: self.cipher_suite.clone(),
            refused: self.refused.map(String::from),
            detail: self.detail.clone(),
        }
    }
}

fn offer_name(offer: Offer) -> String {
    match offer {
        Offer::Legacy => "legacy".into(),
        Offer::Only(v) => legacy::version_name(v),
    }
}

/// How the SMTP dialogue or the hello exchange ended.
enum Exchange {
    /// The server's first flight ended so.
    Flight(FlightEnd),
    /// The server closed before its first flight ended.
    Closed,
    /// TLS never started: the reason in words.
    NoTls(String),
}

/// What a hello session returns.
struct HelloSession {
    out: Output,
    outcome: HelloOutcome,
    error_finding: bool,
}

/// One connection with a hand-built ClientHello (`offer`): the SMTP dialogue
/// up to STARTTLS's 220 (or TLS from the first byte), the hello, the server's
/// first flight, then the probe stops. Every byte goes to the session core
/// as in the main probe; its events go to `out`, and with `report` the
/// `probe.version` fact too (just before the summary).
async fn hello_session(
    shared: &Arc<Analysis>,
    upstream: &Upstream,
    plan: &Plan,
    id: crate::event::SessionId,
    offer: Offer,
    out: Output,
    report: bool,
) -> HelloSession {
    let opened = Timestamp::now();
    let connected = crate::proxy::upstream::connect(upstream, plan.timeout).await;
    let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
    let local = connected.as_ref().map(|c| c.local).unwrap_or(unspecified);
    let mut d = Driver::new(id, shared, upstream, plan, (opened, local), out);
    let outcome = match connected {
        Err(failure) => {
            let outcome = HelloOutcome::refused("no_connection", failure.detail.clone());
            d.a.upstream_failed(Timestamp::now(), failure, None);
            if report {
                d.report(&outcome, offer);
            }
            d.flush_events();
            outcome
        }
        Ok(c) => {
            d.a.upstream_connected(Timestamp::now(), c.peer, c.local, c.elapsed.as_secs_f64());
            d.flush_events();
            let tcp = TapStream::new(c.stream, d.log.clone());
            let sni = plan.sni.clone().unwrap_or_else(|| upstream.host.clone());
            let r =
                tokio::time::timeout(plan.timeout, hello_exchange(&mut d, tcp, plan, offer, &sni))
                    .await;
            let (exchange, broke) = match r {
                Ok(Ok(x)) => (Some(x), None),
                Ok(Err(e)) => (None, Some(e)),
                Err(_) => (None, Some(timed_out(plan))),
            };
            d.sync().await;
            let outcome = outcome(d.a.kept(), offer, exchange.as_ref(), broke.as_ref());
            if report {
                d.report(&outcome, offer);
            }
            d.finish(broke).await;
            outcome
        }
    };
    HelloSession {
        out: d.out,
        outcome,
        error_finding: d.error_finding,
    }
}

/// The SMTP dialogue up to TLS, the hand-built hello, the server's first
/// flight, and the probe's stop (a `user_canceled` alert after a TLS ≤ 1.2
/// flight; just a close otherwise).
async fn hello_exchange(
    d: &mut Driver,
    mut tcp: TapStream,
    plan: &Plan,
    offer: Offer,
    sni: &str,
) -> Result<Exchange, DirEnd> {
    if !plan.implicit_tls {
        let mut c = Conn::new(tcp, false);
        let banner = c.reply(d).await?;
        if banner.code / 100 != 2 {
            c.quit(d).await?;
            let words = format!("the banner refuses service: {}", banner.lines.join(" | "));
            return Ok(Exchange::NoTls(words));
        }
        let Some(caps) = c.hello(d, &plan.ehlo).await? else {
            c.quit(d).await?;
            return Ok(Exchange::NoTls("EHLO and HELO were refused".into()));
        };
        if !offers_starttls(&caps) {
            c.quit(d).await?;
            return Ok(Exchange::NoTls("the server does not offer STARTTLS".into()));
        }
        let r = c.command(d, "STARTTLS").await?;
        if r.code != 220 {
            c.quit(d).await?;
            let words = format!("STARTTLS was answered {}", r.lines.join(" | "));
            return Ok(Exchange::NoTls(words));
        }
        tcp = c.s;
    }
    let hello = legacy::client_hello(offer, Some(sni), &hello_random());
    let sent = async {
        tcp.write_all(&hello).await?;
        tcp.flush().await
    }
    .await;
    d.sync().await;
    sent.map_err(|e| io_end("sending the ClientHello", &e))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        let n = tcp.read(&mut chunk).await;
        d.sync().await;
        match n {
            Ok(0) => break None,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if let Some(end) = legacy::flight_end(&buf) {
                    break Some(end);
                }
            }
            Err(e) => return Err(io_end("reading the server's hello", &e)),
        }
    };
    if let Some(FlightEnd::Done { version }) = &end {
        // Nothing is encrypted yet: say why the handshake stops here.
        let _ = tcp.write_all(&legacy::cancel_alerts(*version)).await;
    }
    let _ = tcp.shutdown().await;
    drain_raw(&mut tcp).await;
    d.sync().await;
    Ok(match end {
        Some(e) => Exchange::Flight(e),
        None => Exchange::Closed,
    })
}

/// Fresh random bytes for a hello (rustls' provider; the clock if it fails:
/// a hello the probe never completes needs uniqueness, not secrecy).
fn hello_random() -> legacy::HelloRandom {
    let mut b = [0u8; 96];
    let rng = crate::crypto::provider().secure_random;
    if rng.fill(&mut b).is_err() {
        use sha2::Digest;
        let seed = format!("{:?} {}", std::time::SystemTime::now(), std::process::id());
        for (i, part) in b.chunks_mut(32).enumerate() {
            let h = sha2::Sha256::digest(format!("{seed} {i}").as_bytes());
            part.copy_from_slice(&h);
        }
    }
    let mut r = legacy::HelloRandom {
        random: [0; 32],
        session_id: [0; 32],
        x25519: [0; 32],
    };
    r.random.copy_from_slice(&b[..32]);
    r.session_id.copy_from_slice(&b[32..64]);
    r.x25519.copy_from_slice(&b[64..]);
    r
}

/// What the session core saw of the server's answer, in the probe's terms.
fn outcome(
    kept: &[Event],
    offer: Offer,
    exchange: Option<&Exchange>,
    broke: Option<&DirEnd>,
) -> HelloOutcome {
    use crate::tls::TlsEvent;
    for ev in kept {
        let (version, suite, retry) = match &ev.kind {
            EventKind::Tls(TlsEvent::ServerHello {
                version,
                cipher_suite,
                ..
            }) => (version, cipher_suite, None),
            EventKind::Tls(TlsEvent::HelloRetryRequest {
                version,
                cipher_suite,
                group,
            }) => (version, cipher_suite, Some(group)),
            _ => continue,
        };
        let exact = match offer {
            Offer::Legacy => true,
            Offer::Only(v) => *version == legacy::version_name(v),
        };
        if !exact {
            return HelloOutcome {
                accepted: false,
                version: Some(version.clone()),
                cipher_suite: Some(suite.clone()),
                refused: Some("older_version"),
                detail: format!("not accepted: the server chose the older {version} ({suite})"),
            };
        }
        let mut detail = format!("accepted: the server chose {version} with {suite}");
        if let Some(group) = retry {
            let g = group.as_deref().unwrap_or("another");
            detail.push_str(&format!(" (a HelloRetryRequest for a {g} key share)"));
        }
        if offer == Offer::Legacy {
            detail.push_str("; smtptap stops this handshake here (rustls cannot complete it)");
        }
        return HelloOutcome {
            accepted: true,
            version: Some(version.clone()),
            cipher_suite: Some(suite.clone()),
            refused: None,
            detail,
        };
    }
    let alert = kept.iter().find_map(|ev| match &ev.kind {
        EventKind::Tls(TlsEvent::Alert {
            side: Side::Server,
            level,
            description,
            ..
        }) => Some(format!(
            "refused: the server sent a {level} {description} alert"
        )),
        _ => None,
    });
    if let Some(words) = alert {
        return HelloOutcome::refused("alert", words);
    }
    let desync = kept.iter().find_map(|ev| match &ev.kind {
        EventKind::Tls(TlsEvent::Desync { reason, .. }) => Some(reason.clone()),
        _ => None,
    });
    match (exchange, broke) {
        (Some(Exchange::NoTls(words)), _) => HelloOutcome::refused("no_starttls", words.clone()),
        (Some(Exchange::Closed), _) => HelloOutcome::refused(
            "closed",
            "refused: the server closed the connection without choosing a version",
        ),
        (Some(Exchange::Flight(FlightEnd::TooLong)), _) => HelloOutcome::refused(
            "other",
            format!(
                "the server's first flight went on past {} KiB",
                legacy::MAX_FLIGHT / 1024
            ),
        ),
        (Some(Exchange::Flight(_)), _) => HelloOutcome::refused(
            "not_tls",
            format!(
                "the server's answer is not a TLS handshake: {}",
                desync.unwrap_or_else(|| "no ServerHello".into())
            ),
        ),
        (None, Some(DirEnd::Error { code, detail })) => {
            let code = match *code {
                "timeout" => "timeout",
                "reset" | "broken_pipe" | "closed" => "closed",
                _ => "other",
            };
            HelloOutcome::refused(code, detail.clone())
        }
        (None, _) => HelloOutcome::refused("other", "the exchange ended without an answer"),
    }
}

/// `--versions`: one connection per version, each with a hello offering
/// only that version; a `probe.version` fact per version (session 0: the
/// connections' own transcripts are not shown). See [`exit`] and the
/// `--help` text for the verdict.
async fn versions(
    shared: &Arc<Analysis>,
    upstream: &Upstream,
    plan: &Plan,
    out: &mut Output,
) -> u8 {
    let mut code = exit::OK;
    let mut modern = false;
    for (i, v) in legacy::VERSIONS.iter().enumerate() {
        let offer = Offer::Only(*v);
        let quiet = Output::Memory(Vec::new());
        let h = hello_session(shared, upstream, plan, i as u64 + 1, offer, quiet, false).await;
        let o = &h.outcome;
        let ev = Event::new(Timestamp::now(), 0, o.event(offer)).in_run(&shared.run);
        out.write(ev);
        out.flush();
        match (o.accepted, o.refused) {
            (true, _) if *v >= legacy::TLS12 => modern = true,
            (true, _) => code = code.max(exit::ERROR_FINDING),
            (false, Some("no_connection")) => code = exit::NO_CONNECTION,
            (false, Some("alert" | "closed" | "older_version")) => {}
            // No clear answer (not TLS, no STARTTLS, a timeout …).
            (false, _) => code = code.max(exit::ERROR_FINDING),
        }
    }
    if !modern {
        code = code.max(exit::ERROR_FINDING);
    }
    code
}

/// The SNI: `--sni`, else the host when it is a name; an IP address sends none.
fn server_name(
    plan: &Plan,
    upstream: &Upstream,
) -> Result<rustls::pki_types::ServerName<'static>, String> {
    let name = plan.sni.clone().unwrap_or_else(|| upstream.host.clone());
    rustls::pki_types::ServerName::try_from(name.clone())
        .map_err(|e| format!("{name:?} cannot be sent as SNI: {e}"))
}

/// One SMTP reply.
struct Reply {
    code: u16,
    lines: Vec<String>,
}

/// An SMTP dialogue over any stream (cleartext or TLS).
struct Conn<S> {
    s: S,
    buf: Vec<u8>,
    /// Inside TLS: the plaintext is reported through the inner observer.
    tls: bool,
}

fn io_end(what: &str, e: &std::io::Error) -> DirEnd {
    DirEnd::io(what, e)
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    fn new(s: S, tls: bool) -> Self {
        Conn {
            s,
            buf: Vec::new(),
            tls,
        }
    }

    async fn send(&mut self, d: &mut Driver, line: &str) -> Result<(), DirEnd> {
        let mut b = line.as_bytes().to_vec();
        b.extend_from_slice(b"\r\n");
        let r = async {
            self.s.write_all(&b).await?;
            self.s.flush().await
        }
        .await;
        d.sync().await;
        if self.tls && r.is_ok() {
            d.inner_bytes(Side::Client, &b);
        }
        r.map_err(|e| io_end("sending", &e))
    }

    /// Reads one complete reply (all its lines).
    async fn reply(&mut self, d: &mut Driver) -> Result<Reply, DirEnd> {
        let mut lines = Vec::new();
        let mut total = 0usize;
        loop {
            while let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..pos + 2).collect();
                let text = String::from_utf8_lossy(&line[..pos]).to_string();
                // Bounded whatever the server sends: an endless multi-line
                // reply ends the probe instead of growing its memory.
                total += line.len();
                if lines.len() >= MAX_REPLY_LINES || total > MAX_REPLY_BYTES {
                    return Err(DirEnd::Error {
                        code: "other",
                        detail: format!(
                            "an SMTP reply of more than {MAX_REPLY_LINES} lines or {} KiB",
                            MAX_REPLY_BYTES / 1024
                        ),
                    });
                }
                let last = text.as_bytes().get(3) != Some(&b'-');
                let code = text.get(..3).and_then(|c| c.parse::<u16>().ok());
                lines.push(text);
                if last {
                    d.sync().await;
                    return match code {
                        Some(code) => Ok(Reply { code, lines }),
                        None => Err(DirEnd::Error {
                            code: "other",
                            detail: format!("not an SMTP reply: {:?}", lines.join(" | ")),
                        }),
                    };
                }
            }
            if self.buf.len() > MAX_REPLY_BYTES {
                return Err(DirEnd::Error {
                    code: "other",
                    detail: "an SMTP reply longer than 64 KiB".into(),
                });
            }
            let mut chunk = [0u8; 4096];
            let n = self.s.read(&mut chunk).await;
            d.sync().await;
            match n {
                Ok(0) => {
                    return Err(DirEnd::Error {
                        code: "closed",
                        detail: "the server closed the connection while a reply was expected"
                            .into(),
                    })
                }
                Ok(n) => {
                    if self.tls {
                        d.inner_bytes(Side::Server, &chunk[..n]);
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                Err(e) => return Err(io_end("reading", &e)),
            }
        }
    }

    async fn command(&mut self, d: &mut Driver, line: &str) -> Result<Reply, DirEnd> {
        self.send(d, line).await?;
        self.reply(d).await
    }

    /// EHLO (HELO if EHLO is refused); the reply's capability lines.
    async fn hello(&mut self, d: &mut Driver, name: &str) -> Result<Option<Reply>, DirEnd> {
        let r = self.command(d, &format!("EHLO {name}")).await?;
        if r.code / 100 == 2 {
            return Ok(Some(r));
        }
        let h = self.command(d, &format!("HELO {name}")).await?;
        Ok((h.code / 100 == 2).then_some(Reply {
            code: h.code,
            lines: Vec::new(),
        }))
    }

    /// QUIT, close our direction, and read until the server closes (briefly).
    async fn quit(mut self, d: &mut Driver) -> Result<S, DirEnd> {
        let _ = self.command(d, "QUIT").await?;
        let _ = self.s.shutdown().await;
        let mut rest = [0u8; 4096];
        let drain = async {
            let mut total = 0;
            while total < MAX_DRAIN {
                match self.s.read(&mut rest).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n,
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
        d.sync().await;
        Ok(self.s)
    }

    /// Over TLS: EHLO, the optional envelope (MAIL, RCPT, RSET), QUIT.
    async fn after_tls(mut self, d: &mut Driver, plan: &Plan) -> Result<S, DirEnd> {
        let hello = self.hello(d, &plan.ehlo).await?;
        if let (Some(_), Some(from)) = (hello, &plan.mail_from) {
            let r = self.command(d, &format!("MAIL FROM:<{from}>")).await?;
            if r.code / 100 == 2 {
                for to in &plan.rcpt_to {
                    self.command(d, &format!("RCPT TO:<{to}>")).await?;
                }
            }
            self.command(d, "RSET").await?;
        }
        self.quit(d).await
    }
}

fn offers_starttls(r: &Reply) -> bool {
    r.lines.iter().skip(1).any(|l| {
        l.get(4..)
            .map(|cap| cap.trim().eq_ignore_ascii_case("STARTTLS"))
            .unwrap_or(false)
    })
}

/// The TLS handshake over the tapped stream; the analyzer learns what the
/// wire did not show.
async fn handshake(
    d: &mut Driver,
    tcp: TapStream,
    cfg: Arc<rustls::ClientConfig>,
    sni: Result<rustls::pki_types::ServerName<'static>, String>,
) -> Result<tokio_rustls::client::TlsStream<TapStream>, DirEnd> {
    let sni = sni.map_err(|detail| DirEnd::Error {
        code: "other",
        detail,
    })?;
    let r = tokio_rustls::TlsConnector::from(cfg)
        .connect(sni, tcp)
        .into_fallible()
        .await;
    match r {
        Ok(tls) => {
            let version = tls
                .get_ref()
                .1
                .protocol_version()
                .and_then(|v| v.as_str())
                .map(|v| v.replace("TLSv1_", "TLSv1."));
            d.after_handshake(version.as_deref()).await;
            Ok(tls)
        }
        Err((e, mut tcp)) => {
            // The server's alert (and FIN) may still be unread: the analysis
            // needs them to say who gave up and why.
            drain_raw(&mut tcp).await;
            d.after_handshake(None).await;
            d.legacy_hint = wants_legacy(d.a.kept(), &e);
            Err(io_end("TLS handshake", &e))
        }
    }
}

/// After TLS ended (close_notify), the TCP FIN beneath it (briefly).
async fn drain_tcp(d: &mut Driver, tls: tokio_rustls::client::TlsStream<TapStream>) {
    let (mut tcp, _) = tls.into_inner();
    drain_raw(&mut tcp).await;
    d.sync().await;
}

/// Reads what the server still sends until it closes (at most 2 s and
/// [`MAX_DRAIN`] bytes: the tap keeps what it reads until the next sync).
async fn drain_raw(tcp: &mut TapStream) {
    let mut rest = [0u8; 4096];
    let drain = async {
        let mut total = 0;
        while total < MAX_DRAIN {
            match tcp.read(&mut rest).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
}

/// The whole dialogue.
async fn converse(
    d: &mut Driver,
    tcp: TapStream,
    plan: &Plan,
    tls: Arc<rustls::ClientConfig>,
    sni: Result<rustls::pki_types::ServerName<'static>, String>,
) -> Result<(), DirEnd> {
    if plan.implicit_tls {
        let s = handshake(d, tcp, tls, sni).await?;
        d.start_inner(false);
        let mut c = Conn::new(s, true);
        let banner = c.reply(d).await?;
        let s = if banner.code / 100 != 2 {
            c.quit(d).await?
        } else {
            c.after_tls(d, plan).await?
        };
        drain_tcp(d, s).await;
        return Ok(());
    }
    let mut c = Conn::new(tcp, false);
    let banner = c.reply(d).await?;
    d.banner = banner
        .lines
        .iter()
        .flat_map(|l| format!("{l}\r\n").into_bytes())
        .collect();
    if banner.code / 100 != 2 {
        return c.quit(d).await.map(drop);
    }
    let Some(caps) = c.hello(d, &plan.ehlo).await? else {
        return c.quit(d).await.map(drop);
    };
    if !offers_starttls(&caps) {
        return c.quit(d).await.map(drop);
    }
    let r = c.command(d, "STARTTLS").await?;
    if r.code != 220 {
        return c.quit(d).await.map(drop);
    }
    let s = handshake(d, c.s, tls, sni).await?;
    d.start_inner(true);
    let s = Conn::new(s, true).after_tls(d, plan).await?;
    drain_tcp(d, s).await;
    Ok(())
}
