//! The command line: argument parsing (clap) and the glue that starts the
//! proxy with its sinks. `main.rs` only calls [`main`].

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{ColorMode, ConfigError, JsonTarget, ProxyConfig, RawConfig};
use crate::proxy::Proxy;
use crate::session::Analysis;
use crate::sink::{self, console::Console, Sinks};

/// smtptap: a transparent, TLS-inspecting SMTP proxy for mail troubleshooting.
///
/// It relays an SMTP conversation verbatim between a client and a server and
/// reports the banner, EHLO capabilities, every command and reply, STARTTLS, the
/// TLS handshake and certificates, and a plain-language diagnosis.
#[derive(Debug, Parser)]
#[command(name = "smtptap", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy: listen, relay every connection to the upstream verbatim, report what happened.
    #[command(after_help = SIGNALS_HELP)]
    Proxy(Box<ProxyArgs>),
    /// Read a delivered message's Received headers: which hops used TLS, and how.
    Headers(crate::headers::HeadersArgs),
    /// Check a server actively: connect, EHLO, STARTTLS, handshake, EHLO, QUIT; report and judge.
    /// The exit status is the verdict: 0 no error finding, 1 an error finding,
    /// 2 usage or configuration error, 3 could not connect.
    Probe(Box<crate::probe::ProbeArgs>),
    /// Manage the certificate authority of intercept mode.
    #[command(subcommand)]
    Ca(CaCommand),
}

/// `smtptap ca` subcommands.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a new CA for intercept mode: DIR/ca.crt (give it to the clients to trust)
    /// and DIR/ca.key (mode 0600, keep it secret). Existing files are never overwritten.
    Init {
        /// Directory to write ca.crt and ca.key into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// The CA's common name.
        #[arg(long, value_name = "NAME", default_value = "smtptap intercept CA")]
        name: String,
    },
}

/// What `smtptap proxy --help` says about signals and stopping.
pub const SIGNALS_HELP: &str = "\
Signals:
  SIGTERM, SIGINT  stop: no new connections; open sessions get --drain-timeout to finish,
                   then every session's summary and run.stop are written (exit 0).
  SIGHUP           reopen the JSON log and the capture files (logrotate: rename them, then HUP):
                   the next lines go to a fresh file at the configured path (mode 0600), a
                   run.reopen event first; sessions go on. Exit status 0 after SIGTERM/SIGINT,
                   --duration or --max-sessions-total; 1 on a start-up failure; 2 bad configuration.
Stopping by itself: --duration and --max-sessions-total drain exactly as SIGTERM does.";

/// `smtptap proxy` flags. Flags override the values of `--config`.
#[derive(Debug, Args, Default)]
pub struct ProxyArgs {
    /// Configuration file (see the commented config.toml shipped with smtptap).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Validate the configuration, print it resolved, and exit: 0 if valid, 2 if not.
    #[arg(long)]
    pub check: bool,
    /// Address to listen on, IP:PORT (repeatable; IPv4 and IPv6), e.g. `0.0.0.0:25` or `[::]:25`.
    #[arg(long, value_name = "IP:PORT")]
    pub listen: Vec<String>,
    /// The upstream SMTP server, HOST:PORT (the host name is resolved at each connection),
    /// or "original-destination" (transparent interception: see --transparent).
    #[arg(long, value_name = "HOST:PORT|original-destination")]
    pub upstream: Option<String>,
    /// With --upstream original-destination: how connections are diverted to smtptap,
    /// "redirect" (iptables/nft nat REDIRECT) or "tproxy" (mangle TPROXY + policy routing).
    #[arg(long, value_name = "redirect|tproxy")]
    pub transparent: Option<String>,
    /// With --transparent tproxy: connect upstream from the client's own address,
    /// so the server sees the real client (needs CAP_NET_ADMIN).
    #[arg(long)]
    pub spoof_source: bool,
    /// TLS from the first byte (SMTPS, port 465) instead of STARTTLS.
    #[arg(long)]
    pub implicit_tls: bool,
    /// Write every event as a JSON line to FILE (appended), or to stdout with "-".
    #[arg(long, value_name = "FILE|-")]
    pub log: Option<String>,
    /// No console transcript.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Colour on the console: auto (only on a terminal), always, never.
    #[arg(long, value_name = "WHEN")]
    pub color: Option<String>,
    /// When the upstream is unreachable: "reply" (send failure_reply, a 421, then close) or "close".
    #[arg(long, value_name = "reply|close")]
    pub on_upstream_failure: Option<String>,
    /// Maximum concurrent sessions (default 500).
    #[arg(long, value_name = "N")]
    pub max_sessions: Option<u64>,
    /// Upstream connect timeout in seconds (default 10).
    #[arg(long, value_name = "SECS")]
    pub connect_timeout: Option<u64>,
    /// Close a session after this many seconds without a byte either way (default 600).
    #[arg(long, value_name = "SECS")]
    pub idle_timeout: Option<u64>,
    /// At SIGINT/SIGTERM, give open sessions this many seconds to finish (default 30).
    #[arg(long, value_name = "SECS")]
    pub drain_timeout: Option<u64>,
    /// A name the server certificate must carry (repeatable), e.g. the partner's own MX name.
    #[arg(long = "expect-name", value_name = "NAME")]
    pub expect_name: Vec<String>,
    /// Extra trust anchors, PEM (repeatable), e.g. a partner's private CA.
    #[arg(long = "ca-file", value_name = "FILE")]
    pub ca_file: Vec<String>,
    /// A CRL file (PEM or DER; repeatable): certificates it revokes are reported revoked.
    #[arg(long = "crl-file", value_name = "FILE")]
    pub crl_file: Vec<String>,
    /// Fetch the CRLs that certificates name (http://, cached per run) and report revoked
    /// certificates and unreachable CRLs. Off by default: it makes network requests.
    #[arg(long)]
    pub check_revocation: bool,
    /// Stop by itself after this long, draining as on SIGTERM: seconds, or with a unit,
    /// e.g. 90s, 30m, 4h, 2d (limits.duration).
    #[arg(long, value_name = "TIME")]
    pub duration: Option<String>,
    /// Stop by itself once N sessions were accepted, draining as on SIGTERM
    /// (limits.max_sessions_total).
    #[arg(long, value_name = "N")]
    pub max_sessions_total: Option<u64>,
    /// Write what crossed the proxy as pcapng: a file (rotated: -1, -2…) or a directory
    /// (one file per run, or per session with capture.per_session). Opens in Wireshark/tshark.
    #[arg(long, value_name = "FILE|DIR")]
    pub pcap: Option<String>,
    /// The TLS mode (see the help text).
    #[arg(
        long,
        value_name = "passthrough|intercept",
        help = "\"passthrough\" (default: relay TLS untouched) or \"intercept\" (terminate TLS on both \
                legs and observe the SMTP inside; needs [intercept] ca_cert/ca_key or cert/key)"
    )]
    pub mode: Option<String>,
    /// Intercept mode: the CA certificate that signs minted leaves (PEM).
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Option<String>,
    /// Intercept mode: the CA's private key (PEM, mode 0600).
    #[arg(long, value_name = "FILE")]
    pub ca_key: Option<String>,
    /// Intercept mode: append NSS key log lines for both TLS legs to FILE (mode 0600).
    /// Anyone with this file can decrypt the captured sessions.
    #[arg(long, value_name = "FILE")]
    pub keylog: Option<String>,
}

impl ProxyArgs {
    /// Loads `--config` (if any) and applies the flags; returns the raw form and its source name.
    pub fn raw_config(&self) -> Result<(RawConfig, String), ConfigError> {
        let (mut raw, file) = match &self.config {
            Some(p) => (RawConfig::from_file(p)?, p.display().to_string()),
            None => (RawConfig::default(), "command line".to_string()),
        };
        if !self.listen.is_empty() {
            raw.listen = self.listen.clone();
        }
        if let Some(u) = &self.upstream {
            raw.upstream = Some(u.clone());
        }
        if let Some(t) = &self.transparent {
            raw.transparent = Some(t.clone());
        }
        if self.spoof_source {
            raw.spoof_source = Some(true);
        }
        if self.implicit_tls {
            raw.implicit_tls = Some(true);
        }
        if let Some(l) = &self.log {
            raw.log.json = Some(l.clone());
        }
        if self.quiet {
            raw.log.console = Some(false);
        }
        if let Some(c) = &self.color {
            raw.log.color = Some(c.clone());
        }
        if let Some(x) = &self.on_upstream_failure {
            raw.on_upstream_failure = Some(x.clone());
        }
        if let Some(x) = self.max_sessions {
            raw.limits.max_sessions = Some(x);
        }
        if let Some(x) = self.connect_timeout {
            raw.limits.connect_timeout_secs = Some(x);
        }
        if let Some(x) = self.idle_timeout {
            raw.limits.idle_timeout_secs = Some(x);
        }
        if let Some(x) = self.drain_timeout {
            raw.limits.drain_timeout_secs = Some(x);
        }
        if !self.expect_name.is_empty() {
            raw.tls
                .expect_names
                .get_or_insert_with(Vec::new)
                .extend(self.expect_name.iter().cloned());
        }
        if !self.ca_file.is_empty() {
            raw.tls
                .ca_files
                .get_or_insert_with(Vec::new)
                .extend(self.ca_file.iter().cloned());
        }
        if !self.crl_file.is_empty() {
            raw.tls
                .crl_files
                .get_or_insert_with(Vec::new)
                .extend(self.crl_file.iter().cloned());
        }
        if self.check_revocation {
            raw.tls.check_revocation = Some(true);
        }
        if let Some(x) = &self.duration {
            raw.limits.duration = Some(x.clone());
        }
        if let Some(x) = self.max_sessions_total {
            raw.limits.max_sessions_total = Some(x);
        }
        if let Some(p) = &self.pcap {
            raw.capture.enabled = true;
            raw.capture.path = p.clone();
        }
        if let Some(m) = &self.mode {
            raw.mode = Some(m.clone());
        }
        if let Some(p) = &self.ca_cert {
            raw.intercept.ca_cert = Some(p.clone());
        }
        if let Some(p) = &self.ca_key {
            raw.intercept.ca_key = Some(p.clone());
        }
        if let Some(p) = &self.keylog {
            raw.intercept.keylog = Some(p.clone());
        }
        Ok((raw, file))
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match cli.command {
        Command::Proxy(args) => proxy_main(&args),
        Command::Headers(args) => {
            let code = crate::headers::run(&args, &mut std::io::stdout().lock());
            ExitCode::from(u8::try_from(code).unwrap_or(2))
        }
        Command::Probe(args) => ExitCode::from(crate::probe::main(&args)),
        Command::Ca(CaCommand::Init { out, name }) => match ca_init(&out, &name) {
            Ok((crt, key)) => {
                println!("wrote {} (give it to the clients to trust)", crt.display());
                println!("wrote {} (mode 0600: keep it secret)", key.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("smtptap: ca init: {e}");
                ExitCode::from(1)
            }
        },
    }
}

/// `smtptap ca init`: a new CA in `dir` (`ca.crt`, `ca.key` mode 0600);
/// refuses to overwrite either file.
pub fn ca_init(dir: &std::path::Path, name: &str) -> Result<(PathBuf, PathBuf), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let crt = dir.join("ca.crt");
    let key = dir.join("ca.key");
    for p in [&crt, &key] {
        if p.exists() {
            return Err(format!(
                "{} already exists: not overwriting it (move it away or choose another --out)",
                p.display()
            ));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let ca = crate::cert::mint::Ca::new(name).map_err(|e| format!("cannot make the CA: {e}"))?;
    let write = |p: &PathBuf, mode: u32, text: &str| -> Result<(), String> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(p)
            .map_err(|e| format!("cannot create {}: {e}", p.display()))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| format!("cannot write {}: {e}", p.display()))
    };
    write(&key, 0o600, &ca.key_pem())?;
    write(&crt, 0o644, &ca.pem())?;
    Ok((crt, key))
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn proxy_main(args: &ProxyArgs) -> ExitCode {
    let resolved = args
        .raw_config()
        .and_then(|(raw, file)| raw.resolve(&file).map(|c| (c, file)));
    let (cfg, file) = match resolved {
        Ok(x) => x,
        Err(e) => {
            eprintln!("smtptap: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check {
        if let Err(problems) = check_paths(&cfg) {
            for p in problems {
                eprintln!("smtptap: {file}: {p}");
            }
            return ExitCode::from(2);
        }
        let resolved = check_upstream(&cfg);
        println!("{file}: configuration is valid");
        match resolved {
            Ok(Some(line)) => println!("# {line}"),
            Ok(None) => {}
            Err(w) => eprintln!("smtptap: warning: {w}"),
        }
        println!("# the resolved configuration (defaults filled in):");
        match toml::to_string_pretty(&toml_of(cfg.resolved_json())) {
            Ok(text) => print!("{text}"),
            Err(e) => eprintln!("smtptap: cannot show the resolved configuration: {e}"),
        }
        return ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("smtptap: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run_proxy(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("smtptap: {e}");
            ExitCode::from(1)
        }
    }
}

/// Builds the sinks a configuration asks for.
pub fn sinks_for(cfg: &ProxyConfig) -> std::io::Result<Sinks> {
    let mut sinks = Sinks::default();
    let json_on_stdout = cfg.log.json == Some(JsonTarget::Stdout);
    sinks.json = match &cfg.log.json {
        None => None,
        Some(JsonTarget::Stdout) => Some(Box::new(std::io::BufWriter::new(std::io::stdout()))),
        Some(JsonTarget::File(_)) => None,
    };
    if let Some(JsonTarget::File(p)) = &cfg.log.json {
        sinks.json_file = Some(sink::json::JsonFile::open(
            p,
            cfg.log.max_bytes,
            cfg.log.keep,
        )?);
    }
    if cfg.log.console {
        let (out, tty): (Box<dyn std::io::Write + Send>, bool) = if json_on_stdout {
            (Box::new(std::io::stderr()), std::io::stderr().is_terminal())
        } else {
            (Box::new(std::io::stdout()), std::io::stdout().is_terminal())
        };
        let color = match cfg.log.color {
            ColorMode::Always => true,
            ColorMode::Never => false,
            ColorMode::Auto => tty,
        };
        sinks.console = Some(Console::new(out, color));
    }
    Ok(sinks)
}

/// Runs the proxy until SIGINT/SIGTERM (or `limits.duration` /
/// `limits.max_sessions_total`), then drains and flushes every sink. SIGHUP
/// reopens the JSON log and the capture files.
pub async fn run_proxy(cfg: ProxyConfig) -> Result<(), String> {
    let sinks = sinks_for(&cfg).map_err(|e| format!("cannot open the log: {e}"))?;
    let analysis = Analysis::from_config(&cfg, crate::proxy::fresh_run_id())?;
    let run = analysis.run.clone();
    let capture = analysis.capture.clone();
    let log_path = match &cfg.log.json {
        Some(JsonTarget::File(p)) => Some(p.display().to_string()),
        _ => None,
    };
    let duration = cfg.limits.duration;
    let (sink, handle) = sink::start(sinks);
    // Signals are taken before the proxy listens: a HUP that arrives once it
    // can be reached must never kill it.
    let signals = Signals::new().map_err(|e| format!("cannot handle signals: {e}"))?;
    let proxy = Proxy::bind(cfg, sink.clone(), analysis)
        .await
        .map_err(|e| e.to_string())?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<String>();
    let background = tokio::spawn(background(
        signals, duration, sink, run, capture, log_path, stop_tx,
    ));
    let stats = proxy
        .run_until(async move { stop_rx.await.unwrap_or_else(|_| "stopped".to_string()) })
        .await;
    background.abort();
    let _ = background.await;
    tracing::info!(sessions = stats.sessions, "stopped");
    // Every EventSink clone is gone with the proxy: the writer thread drains and
    // exits. A writer blocked for good (a pipe nobody reads) must not keep the
    // process from exiting.
    let finished = tokio::time::timeout(
        crate::sink::FINISH_WAIT,
        tokio::task::spawn_blocking(move || handle.finish()),
    )
    .await;
    if finished.is_err() {
        tracing::error!(
            "the log writer did not finish within {}s; exiting without its last events",
            crate::sink::FINISH_WAIT.as_secs()
        );
    }
    Ok(())
}

/// The signals the proxy handles (registered before it listens).
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// How often the capture writer's events (errors, deletions, reopened
/// files) are moved to the log when no session ends to carry them.
const CAPTURE_EVENTS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs beside the proxy: turns signals and `--duration` into a stop reason
/// (sent once on `stop`), reopens files at SIGHUP, and moves the capture
/// writer's events to the log as they happen.
async fn background(
    mut sig: Signals,
    duration: Option<std::time::Duration>,
    sink: crate::sink::EventSink,
    run: crate::event::RunId,
    capture: Option<crate::capture::Capture>,
    log_path: Option<String>,
    stop: tokio::sync::oneshot::Sender<String>,
) {
    use crate::event::{Event, SessionEvent, Timestamp};
    let deadline = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    // Not at once: run.start comes first.
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + CAPTURE_EVENTS_EVERY,
        CAPTURE_EVENTS_EVERY,
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let reason = loop {
        tokio::select! {
            _ = sig.term.recv() => break "sigterm",
            _ = sig.int.recv() => break "sigint",
            _ = &mut deadline => break "duration",
            _ = sig.hup.recv() => {
                tracing::warn!("SIGHUP: reopening the JSON log and the capture files");
                if let Some(c) = &capture {
                    c.reopen();
                }
                let ev = Event::new(
                    Timestamp::now(),
                    0,
                    SessionEvent::RunReopen {
                        signal: "SIGHUP".into(),
                        log: log_path.clone(),
                        capture: capture.is_some(),
                    },
                )
                .in_run(&run);
                sink.send_batch(vec![ev]).await;
            }
            _ = tick.tick() => {
                if let Some(c) = &capture {
                    let evs: Vec<Event> = c.take_events().into_iter().map(|e| e.in_run(&run)).collect();
                    sink.send_batch(evs).await;
                }
            }
        }
    };
    let _ = stop.send(reason.to_string());
    // Signals stay handled while the proxy drains (a second SIGTERM or a
    // HUP during the drain must not kill it): this task is aborted at the end.
    loop {
        tokio::select! {
            _ = sig.term.recv() => tracing::warn!("SIGTERM again: already draining (see --drain-timeout)"),
            _ = sig.int.recv() => tracing::warn!("SIGINT again: already draining (see --drain-timeout)"),
            _ = sig.hup.recv() => {
                if let Some(c) = &capture {
                    c.reopen();
                }
                let ev = Event::new(
                    Timestamp::now(),
                    0,
                    SessionEvent::RunReopen {
                        signal: "SIGHUP".into(),
                        log: log_path.clone(),
                        capture: capture.is_some(),
                    },
                )
                .in_run(&run);
                sink.send_batch(vec![ev]).await;
            }
        }
    }
}

/// `--check`: the log and capture paths can be created (the directory exists
/// and is writable); nothing is left behind. Each problem names the key.
fn check_paths(cfg: &ProxyConfig) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    if let Some(JsonTarget::File(p)) = &cfg.log.json {
        if let Err(e) = can_write_file(p) {
            problems.push(format!("log.json: {}: {e}", p.display()));
        }
    }
    if let Some(c) = &cfg.capture {
        let r = match &c.target {
            crate::capture::Target::Dir(d) => can_create_in(&nearest_existing(d)),
            crate::capture::Target::File(f) => can_write_file(f),
        };
        if let Err(e) = r {
            let p = match &c.target {
                crate::capture::Target::Dir(d) | crate::capture::Target::File(d) => d,
            };
            problems.push(format!("capture.path: {}: {e}", p.display()));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// An existing file must open for appending (unchanged); a new one must be
/// creatable in its directory.
fn can_write_file(p: &std::path::Path) -> Result<(), String> {
    if p.is_dir() {
        return Err("is a directory".into());
    }
    if p.exists() {
        return std::fs::OpenOptions::new()
            .append(true)
            .open(p)
            .map(|_| ())
            .map_err(|e| format!("cannot be written: {e}"));
    }
    let dir = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(format!("directory {} does not exist", dir.display()));
    }
    can_create_in(&dir)
}

/// The directory (or its nearest existing ancestor: the capture directory is
/// created at start) accepts a new file: one is created and removed.
fn nearest_existing(d: &std::path::Path) -> PathBuf {
    let mut cur = d.to_path_buf();
    loop {
        if cur.exists() || cur.as_os_str().is_empty() {
            return if cur.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                cur
            };
        }
        match cur.parent() {
            Some(p) => cur = p.to_path_buf(),
            None => return PathBuf::from("."),
        }
    }
}

fn can_create_in(dir: &std::path::Path) -> Result<(), String> {
    if !dir.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    let probe = dir.join(format!(".smtptap-check-{}", std::process::id()));
    let r = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe);
    match r {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(format!("cannot create a file in {}: {e}", dir.display())),
    }
}

/// `--check`: resolves the upstream name with the system resolver, as the
/// proxy does at each connection; a failure is a warning (DNS may differ
/// where the proxy runs, or be down for a moment).
fn check_upstream(cfg: &ProxyConfig) -> Result<Option<String>, String> {
    use std::net::ToSocketAddrs;
    let crate::config::UpstreamTarget::Static(u) = &cfg.upstream else {
        return Ok(None);
    };
    match (u.host.as_str(), u.port).to_socket_addrs() {
        Ok(addrs) => {
            let list: Vec<String> = addrs.map(|a| a.ip().to_string()).collect();
            if list.is_empty() {
                Err(format!("upstream: {u}: the name resolves to no address"))
            } else {
                Ok(Some(format!("upstream {u} resolves to {}", list.join(", "))))
            }
        }
        Err(e) => Err(format!(
            "upstream: {u}: the name does not resolve now ({e}); the proxy resolves it again at each connection"
        )),
    }
}

/// A JSON value as TOML: nulls (unset options) are left out, since TOML has
/// no null.
fn toml_of(v: serde_json::Value) -> toml::Value {
    use serde_json::Value as J;
    match v {
        J::Null => toml::Value::String(String::new()),
        J::Bool(b) => toml::Value::Boolean(b),
        J::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None => toml::Value::Float(n.as_f64().unwrap_or(0.0)),
        },
        J::String(s) => toml::Value::String(s),
        J::Array(a) => toml::Value::Array(a.into_iter().map(toml_of).collect()),
        J::Object(o) => toml::Value::Table(
            o.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, toml_of(v)))
                .collect(),
        ),
    }
}
