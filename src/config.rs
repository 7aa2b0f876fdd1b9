//! Configuration: `config.toml` parsed with serde (unknown keys rejected), then
//! validated into resolved types ([`ProxyConfig`]).
//!
//! Two steps, like rathole: [`RawConfig`] mirrors the file exactly (every field
//! optional or defaulted), [`RawConfig::resolve`] checks every value and turns it
//! into types the proxy can use without further checks. Every error names the
//! file, the key and what is wrong:
//!
//! ```text
//! config.toml: listen[1]: "1.2.3.4:99999" is not a socket address (expected IP:PORT, e.g. "0.0.0.0:25" or "[::]:25")
//! ```
//!
//! CLI flags are applied to the raw form before resolving, so they are checked
//! the same way. This module does no network I/O (host names are resolved at
//! connect time, not here).

use std::fmt;

pub use crate::net::Cidr;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// A configuration error: where (file and key) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the value came from (`"command line"` for flags).
    pub file: String,
    /// The dotted key (`listen[1]`, `limits.idle_timeout_secs`); empty if the file as a whole is bad.
    pub key: String,
    /// What is wrong, in words.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}: {}: {}", self.file, self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// The file as written (before validation). Every table and key is optional;
/// defaults are those documented in the top-level `config.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Addresses to listen on (`IP:PORT`), IPv4 and/or IPv6.
    #[serde(default)]
    pub listen: Vec<String>,
    /// The upstream SMTP server, `host:port` (the host is resolved at each connect).
    #[serde(default)]
    pub upstream: Option<String>,
    /// TLS from the first byte (SMTPS, port 465) instead of STARTTLS.
    #[serde(default)]
    pub implicit_tls: Option<bool>,
    /// What to do when the upstream cannot be reached: `"reply"` or `"close"`.
    #[serde(default)]
    pub on_upstream_failure: Option<String>,
    /// The reply sent to the client when the upstream is unreachable and `on_upstream_failure = "reply"`.
    #[serde(default)]
    pub failure_reply: Option<String>,
    /// `[limits]`.
    #[serde(default)]
    pub limits: RawLimits,
    /// `[log]`.
    #[serde(default)]
    pub log: RawLog,
    /// `[tls]`.
    #[serde(default)]
    pub tls: RawTls,
    /// `[capture]`.
    #[serde(default)]
    pub capture: crate::capture::CaptureSection,
    /// With `upstream = "original-destination"`: how connections reach smtptap,
    /// `"redirect"` (nat REDIRECT/DNAT) or `"tproxy"` (mangle TPROXY).
    #[serde(default)]
    pub transparent: Option<String>,
    /// With `transparent = "tproxy"`: connect upstream from the client's own address.
    #[serde(default)]
    pub spoof_source: Option<bool>,
    /// `[[destination]]`: settings keyed by the upstream's address or network.
    #[serde(default)]
    pub destination: Vec<RawDestination>,
    /// `"passthrough"` (default) or `"intercept"` (terminate TLS on both legs).
    #[serde(default)]
    pub mode: Option<String>,
    /// `[intercept]`: certificates and options of intercept mode.
    #[serde(default)]
    pub intercept: RawIntercept,
}

/// One `[[destination]]` table as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDestination {
    /// An IP address or CIDR network (`"192.0.2.0/24"`, `"2001:db8::/32"`).
    #[serde(rename = "match")]
    pub matches: Option<String>,
    /// Names the certificate of a server in this network must carry
    /// (instead of `tls.expect_names`).
    pub expect_names: Option<Vec<String>>,
}

/// `[limits]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Concurrent sessions; further connections wait in the listen backlog.
    pub max_sessions: Option<u64>,
    /// Seconds to wait for the upstream TCP connection.
    pub connect_timeout_secs: Option<u64>,
    /// Seconds without a byte in either direction before a session is closed.
    pub idle_timeout_secs: Option<u64>,
    /// Seconds open sessions may take to finish after SIGINT/SIGTERM.
    pub drain_timeout_secs: Option<u64>,
    /// Chunks queued from the relay to the observers of one session.
    pub observer_queue: Option<u64>,
    /// Seconds a client may take to finish a line it started (0 = off).
    pub line_timeout_secs: Option<u64>,
    /// Seconds a whole session may last (0 = off).
    pub session_timeout_secs: Option<u64>,
    /// Stop by itself after this long (`"90s"`, `"30m"`, `"4h"`), draining as on SIGTERM.
    pub duration: Option<String>,
    /// Stop by itself once this many sessions were accepted, draining as on SIGTERM.
    pub max_sessions_total: Option<u64>,
}

/// `[log]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// JSON lines file, `"-"` for stdout, `""` for none.
    pub json: Option<String>,
    /// Print the transcript on the console (stderr).
    pub console: Option<bool>,
    /// `"auto"`, `"always"` or `"never"`.
    pub color: Option<String>,
    /// Rotate the JSON file when it would grow past this many bytes (0 = never).
    pub max_bytes: Option<u64>,
    /// Rotated JSON files kept (`log.json.1` … `log.json.N`).
    pub keep: Option<u64>,
}

/// `[tls]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// Names the server certificate must carry (e.g. the partner's own MX name).
    pub expect_names: Option<Vec<String>>,
    /// Trust the Mozilla root program (webpki-roots).
    pub mozilla_roots: Option<bool>,
    /// Trust the operating system's store as well.
    pub system_roots: Option<bool>,
    /// Extra trust anchors (PEM files).
    pub ca_files: Option<Vec<String>>,
    /// Fetch the CRLs named in certificates (network, http://) — off by default.
    pub check_revocation: Option<bool>,
    /// CRL files (PEM or DER) checked for every chain.
    pub crl_files: Option<Vec<String>>,
    /// Warn when a certificate expires within this many days.
    pub expiry_warning_days: Option<u32>,
    /// Compare the certificate with the host name announced in the banner and EHLO reply.
    pub check_announced_names: Option<bool>,
    /// Side-probe the upstream when TLS 1.3 hides its certificate.
    pub side_probe: Option<bool>,
    /// Seconds a side-probe's result is reused for the same upstream and SNI.
    pub side_probe_cache_secs: Option<u64>,
    /// Most new side-probes per minute (the rest are reported as rate-limited).
    pub side_probe_per_minute: Option<u32>,
    /// Seconds a side-probe may take.
    pub side_probe_timeout_secs: Option<u64>,
}

/// What to do for a client whose upstream cannot be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// Send this reply line (CRLF added) then close, so the client queues and retries.
    Reply(String),
    /// Close the connection without a word.
    Close,
}

/// Colour on the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColorMode {
    /// Colour when stderr is a terminal.
    Auto,
    /// Always colour.
    Always,
    /// Never colour.
    Never,
}

/// Where JSON lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonTarget {
    /// Standard output.
    Stdout,
    /// A file (appended to).
    File(PathBuf),
}

/// Resolved session limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Concurrent sessions.
    pub max_sessions: usize,
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// Idle timeout (no byte either way).
    pub idle_timeout: Duration,
    /// Drain timeout at shutdown.
    pub drain_timeout: Duration,
    /// Chunks queued per session between relay and observers.
    pub observer_queue: usize,
    /// A line the client started must end (LF) within this; `None` = off.
    /// Only while the client's bytes are lines (not once they are TLS).
    pub line_timeout: Option<Duration>,
    /// A whole session must end within this; `None` = off.
    pub session_timeout: Option<Duration>,
    /// Stop by itself after this long (None = run until a signal).
    pub duration: Option<Duration>,
    /// Stop by itself once this many sessions were accepted (None = no limit).
    pub max_sessions_total: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_sessions: 500,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(600),
            drain_timeout: Duration::from_secs(30),
            observer_queue: 64,
            line_timeout: Some(Duration::from_secs(300)),
            session_timeout: Some(Duration::from_secs(3600)),
            duration: None,
            max_sessions_total: None,
        }
    }
}

/// Resolved TLS analysis settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// Names the server certificate is expected to carry.
    pub expect_names: Vec<String>,
    /// Mozilla roots.
    pub mozilla_roots: bool,
    /// System roots.
    pub system_roots: bool,
    /// Extra PEM anchors.
    pub ca_files: Vec<PathBuf>,
    /// Fetch the CRLs named in certificates (network).
    pub check_revocation: bool,
    /// CRL files checked for every chain.
    pub crl_files: Vec<PathBuf>,
    /// Expiry warning horizon in days.
    pub expiry_warning_days: u32,
    /// Compare the certificate with the banner/EHLO host names.
    pub check_announced_names: bool,
    /// Side-probe the upstream when a passthrough session's TLS 1.3 hides
    /// the server's certificate.
    pub side_probe: bool,
    /// How long a side-probe's result is reused (same upstream address and SNI).
    pub side_probe_cache: Duration,
    /// Most new side-probes per minute, across the run.
    pub side_probe_per_minute: u32,
    /// Deadline of one side-probe (connect, EHLO, STARTTLS, handshake).
    pub side_probe_timeout: Duration,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            expect_names: Vec::new(),
            mozilla_roots: true,
            system_roots: false,
            ca_files: Vec::new(),
            check_revocation: false,
            crl_files: Vec::new(),
            expiry_warning_days: 30,
            check_announced_names: true,
            side_probe: true,
            side_probe_cache: Duration::from_secs(600),
            side_probe_per_minute: 30,
            side_probe_timeout: Duration::from_secs(15),
        }
    }
}

/// Resolved logging settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// JSON lines target, if any.
    pub json: Option<JsonTarget>,
    /// Console transcript on stderr.
    pub console: bool,
    /// Colour mode.
    pub color: ColorMode,
    /// Rotate the JSON file at this size (None = never).
    pub max_bytes: Option<u64>,
    /// Rotated JSON files kept.
    pub keep: usize,
}

/// Default `log.max_bytes`: 100 MiB.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 100 * 1024 * 1024;
/// Default `log.keep`.
pub const DEFAULT_LOG_KEEP: u64 = 5;
/// Smallest accepted `log.max_bytes` (other than 0).
pub const MIN_LOG_MAX_BYTES: u64 = 4096;

/// Parses a duration with an optional unit: `"90"` or `"90s"` seconds,
/// `"30m"` minutes, `"4h"` hours, `"2d"` days.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 's')) => (&t[..i], 1),
        Some((i, 'm')) => (&t[..i], 60),
        Some((i, 'h')) => (&t[..i], 3600),
        Some((i, 'd')) => (&t[..i], 86_400),
        _ => (t, 1),
    };
    let n: u64 = num.trim().parse().map_err(|_| {
        format!(
            "{text:?} is not a duration (a whole number with s, m, h or d, e.g. \"4h\" or \"90m\")"
        )
    })?;
    let secs = n
        .checked_mul(mult)
        .filter(|s| *s > 0 && *s <= 365 * 86_400)
        .ok_or_else(|| format!("{text:?}: must be more than 0 and at most a year"))?;
    Ok(Duration::from_secs(secs))
}

/// The upstream host and port, as configured (resolved at each connect).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Host name or IP literal (without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// How diverted connections reach smtptap (and so how their original
/// destination is found).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransparentMode {
    /// iptables/nft nat `REDIRECT` (or DNAT): the destination is rewritten;
    /// conntrack remembers the original (`SO_ORIGINAL_DST`).
    Redirect,
    /// iptables/nft mangle `TPROXY` + policy routing: the packet is not
    /// rewritten; the listener is `IP_TRANSPARENT` and the accepted socket's
    /// local address is the original destination.
    Tproxy,
}

impl fmt::Display for TransparentMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransparentMode::Redirect => "redirect",
            TransparentMode::Tproxy => "tproxy",
        })
    }
}

/// Where each session's upstream connection goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamTarget {
    /// One configured server for every session.
    Static(Upstream),
    /// The server each client dialled (transparent interception).
    OriginalDestination {
        /// How the connection was diverted.
        mode: TransparentMode,
        /// Connect from the client's own address (TPROXY only), so the server
        /// sees the real client.
        spoof_source: bool,
    },
}

impl UpstreamTarget {
    /// The interception mode, if transparent.
    pub fn transparent(&self) -> Option<TransparentMode> {
        match self {
            UpstreamTarget::Static(_) => None,
            UpstreamTarget::OriginalDestination { mode, .. } => Some(*mode),
        }
    }
}

impl fmt::Display for UpstreamTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamTarget::Static(u) => u.fmt(f),
            UpstreamTarget::OriginalDestination { mode, spoof_source } => write!(
                f,
                "original destination ({mode}{})",
                if *spoof_source {
                    ", source spoofed"
                } else {
                    ""
                }
            ),
        }
    }
}

/// Settings for upstreams whose address is in `net` (`[[destination]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The network the settings apply to.
    pub net: Cidr,
    /// Names the server certificate is expected to carry (replaces `tls.expect_names`).
    pub expect_names: Vec<String>,
}

/// The validated configuration of `smtptap proxy`.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Listening addresses (at least one).
    pub listen: Vec<SocketAddr>,
    /// The upstream server, or the original destination of each connection.
    pub upstream: UpstreamTarget,
    /// Per-destination settings, in file order (first match wins: [`ProxyConfig::destination_for`]).
    pub destinations: Vec<Destination>,
    /// TLS from the first byte.
    pub implicit_tls: bool,
    /// Behaviour when the upstream is unreachable.
    pub on_upstream_failure: UpstreamFailure,
    /// Limits.
    pub limits: Limits,
    /// Logging.
    pub log: LogSettings,
    /// TLS analysis.
    pub tls: TlsSettings,
    /// Capture, if enabled.
    pub capture: Option<crate::capture::CaptureConfig>,
    /// Passthrough (relay TLS untouched) or intercept.
    pub mode: Mode,
    /// Intercept mode's settings (`Some` exactly when `mode` is intercept).
    pub intercept: Option<InterceptConfig>,
}

impl ProxyConfig {
    /// The resolved configuration as JSON, in the shape of `config.toml`'s
    /// keys (for `run.start` and `--check`). Nothing in it is secret today;
    /// a key that ever holds a secret must be masked here.
    pub fn resolved_json(&self) -> serde_json::Value {
        use serde_json::json;
        let secs = |d: Duration| d.as_secs_f64();
        let capture = self.capture.as_ref().map(|c| {
            let (kind, path) = match &c.target {
                crate::capture::Target::Dir(p) => ("dir", p),
                crate::capture::Target::File(p) => ("file", p),
            };
            json!({
                kind: path.display().to_string(),
                "per_session": c.per_session,
                "rotate_bytes": c.rotate_bytes,
                "legs": match c.legs {
                    crate::capture::Legs::ClientView => "client_view",
                    crate::capture::Legs::Both => "both",
                    crate::capture::Legs::Intercept => "intercept",
                },
                "bodies": c.bodies,
                "redact_auth": c.redact_auth,
                "max_bytes_per_session": c.max_bytes_per_session,
                "clients": c.clients.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "upstreams": c.upstreams.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "ports": c.ports,
                "queue_bytes": c.queue_bytes,
                "max_total_bytes": c.max_total_bytes,
                "flush_interval_s": secs(c.flush_interval),
            })
        });
        let (upstream, transparent, spoof) = match &self.upstream {
            UpstreamTarget::Static(u) => (u.to_string(), None, false),
            UpstreamTarget::OriginalDestination { mode, spoof_source } => (
                "original-destination".to_string(),
                Some(mode.to_string()),
                *spoof_source,
            ),
        };
        json!({
            "listen": self.listen.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "upstream": upstream,
            "transparent": transparent,
            "spoof_source": spoof,
            "implicit_tls": self.implicit_tls,
            "on_upstream_failure": match &self.on_upstream_failure {
                UpstreamFailure::Reply(line) => line.clone(),
                UpstreamFailure::Close => "close".to_string(),
            },
            "limits": {
                "max_sessions": self.limits.max_sessions,
                "connect_timeout_s": secs(self.limits.connect_timeout),
                "idle_timeout_s": secs(self.limits.idle_timeout),
                "drain_timeout_s": secs(self.limits.drain_timeout),
                "observer_queue": self.limits.observer_queue,
                "line_timeout_s": self.limits.line_timeout.map(secs).unwrap_or(0.0),
                "session_timeout_s": self.limits.session_timeout.map(secs).unwrap_or(0.0),
                "duration_s": self.limits.duration.map(secs),
                "max_sessions_total": self.limits.max_sessions_total,
            },
            "log": {
                "json": match &self.log.json {
                    None => None,
                    Some(JsonTarget::Stdout) => Some("-".to_string()),
                    Some(JsonTarget::File(p)) => Some(p.display().to_string()),
                },
                "max_bytes": self.log.max_bytes,
                "keep": self.log.keep,
            },
            "tls": {
                "expect_names": self.tls.expect_names,
                "mozilla_roots": self.tls.mozilla_roots,
                "system_roots": self.tls.system_roots,
                "ca_files": self.tls.ca_files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
                "check_revocation": self.tls.check_revocation,
                "crl_files": self.tls.crl_files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
                "expiry_warning_days": self.tls.expiry_warning_days,
                "check_announced_names": self.tls.check_announced_names,
                "side_probe": self.tls.side_probe,
                "side_probe_cache_s": secs(self.tls.side_probe_cache),
                "side_probe_per_minute": self.tls.side_probe_per_minute,
                "side_probe_timeout_s": secs(self.tls.side_probe_timeout),
            },
            "destinations": self.destinations.iter().map(|d| json!({
                "match": d.net.to_string(),
                "expect_names": d.expect_names,
            })).collect::<Vec<_>>(),
            "capture": capture,
            "mode": self.mode.to_string(),
            "intercept": self.intercept.as_ref().map(InterceptConfig::resolved_json),
        })
    }
}

/// The default reply when the upstream is unreachable: a transient failure so
/// that the client queues the message and retries later.
pub const DEFAULT_FAILURE_REPLY: &str =
    "421 4.4.1 smtptap: upstream server unreachable, try again later";

impl RawConfig {
    /// Reads and parses a TOML file. Errors name the file and the key.
    pub fn from_file(path: &Path) -> Result<RawConfig, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            key: String::new(),
            message: format!("cannot read: {e}"),
        })?;
        Self::from_toml(&text, &file)
    }

    /// Parses TOML text; `file` is used in error messages.
    pub fn from_toml(text: &str, file: &str) -> Result<RawConfig, ConfigError> {
        let de = toml::Deserializer::new(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let mut message = inner.message().to_string();
            if let Some(span) = inner.span() {
                let (line, col) = line_col(text, span.start);
                message = format!("{message} (line {line}, column {col})");
            }
            ConfigError {
                file: file.to_string(),
                key: if key == "." { String::new() } else { key },
                message,
            }
        })
    }

    /// Validates every value and produces the resolved configuration.
    /// `file` names the source in error messages.
    pub fn resolve(&self, file: &str) -> Result<ProxyConfig, ConfigError> {
        let err = |key: &str, message: String| ConfigError {
            file: file.to_string(),
            key: key.to_string(),
            message,
        };

        if self.listen.is_empty() {
            return Err(err(
                "listen",
                "no listening address (set listen = [\"0.0.0.0:25\"] or pass --listen)".into(),
            ));
        }
        let mut listen = Vec::with_capacity(self.listen.len());
        for (i, a) in self.listen.iter().enumerate() {
            let addr: SocketAddr = a.trim().parse().map_err(|_| {
                err(
                    &format!("listen[{i}]"),
                    format!("{a:?} is not a socket address (expected IP:PORT, e.g. \"0.0.0.0:25\" or \"[::]:25\")"),
                )
            })?;
            if listen.contains(&addr) {
                return Err(err(
                    &format!("listen[{i}]"),
                    format!("{a:?} is listed twice"),
                ));
            }
            listen.push(addr);
        }

        let up = self.upstream.as_deref().ok_or_else(|| {
            err(
                "upstream",
                "no upstream server (set upstream = \"mx.example.com:25\" or pass --upstream)"
                    .into(),
            )
        })?;
        let upstream = self.resolve_upstream(up, file)?;
        let destinations = self.resolve_destinations(file)?;

        let on_upstream_failure = match self.on_upstream_failure.as_deref().unwrap_or("reply") {
            "reply" => {
                let line = self
                    .failure_reply
                    .clone()
                    .unwrap_or_else(|| DEFAULT_FAILURE_REPLY.to_string());
                validate_reply_line(&line).map_err(|m| err("failure_reply", m))?;
                UpstreamFailure::Reply(line)
            }
            "close" => UpstreamFailure::Close,
            other => {
                return Err(err(
                    "on_upstream_failure",
                    format!("{other:?} is not one of \"reply\", \"close\""),
                ))
            }
        };

        let d = Limits::default();
        let l = &self.limits;
        let positive =
            |key: &str, v: Option<u64>, dflt: u64, max: u64| -> Result<u64, ConfigError> {
                match v {
                    None => Ok(dflt),
                    Some(0) => Err(err(key, "must be at least 1".into())),
                    Some(x) if x > max => {
                        Err(err(key, format!("{x} is more than the maximum {max}")))
                    }
                    Some(x) => Ok(x),
                }
            };
        // A deadline that 0 switches off.
        let optional = |key: &str,
                        v: Option<u64>,
                        dflt: Option<Duration>,
                        max: u64|
         -> Result<Option<Duration>, ConfigError> {
            match v {
                None => Ok(dflt),
                Some(0) => Ok(None),
                Some(x) if x > max => Err(err(key, format!("{x} is more than the maximum {max}"))),
                Some(x) => Ok(Some(Duration::from_secs(x))),
            }
        };
        let limits = Limits {
            max_sessions: positive(
                "limits.max_sessions",
                l.max_sessions,
                d.max_sessions as u64,
                1_000_000,
            )? as usize,
            connect_timeout: Duration::from_secs(positive(
                "limits.connect_timeout_secs",
                l.connect_timeout_secs,
                d.connect_timeout.as_secs(),
                3600,
            )?),
            idle_timeout: Duration::from_secs(positive(
                "limits.idle_timeout_secs",
                l.idle_timeout_secs,
                d.idle_timeout.as_secs(),
                86_400,
            )?),
            drain_timeout: Duration::from_secs(positive(
                "limits.drain_timeout_secs",
                l.drain_timeout_secs,
                d.drain_timeout.as_secs(),
                86_400,
            )?),
            observer_queue: positive(
                "limits.observer_queue",
                l.observer_queue,
                d.observer_queue as u64,
                65_536,
            )? as usize,
            line_timeout: optional(
                "limits.line_timeout_secs",
                l.line_timeout_secs,
                d.line_timeout,
                86_400,
            )?,
            session_timeout: optional(
                "limits.session_timeout_secs",
                l.session_timeout_secs,
                d.session_timeout,
                30 * 86_400,
            )?,
            duration: match l.duration.as_deref() {
                None | Some("") => None,
                Some(t) => Some(parse_duration(t).map_err(|m| err("limits.duration", m))?),
            },
            max_sessions_total: match l.max_sessions_total {
                None => None,
                Some(n) => Some(positive("limits.max_sessions_total", Some(n), 0, u64::MAX)?),
            },
        };

        let json = match self.log.json.as_deref() {
            None | Some("") => None,
            Some("-") => Some(JsonTarget::Stdout),
            Some(p) => Some(JsonTarget::File(PathBuf::from(p))),
        };
        let color = match self.log.color.as_deref().unwrap_or("auto") {
            "auto" => ColorMode::Auto,
            "always" => ColorMode::Always,
            "never" => ColorMode::Never,
            other => {
                return Err(err(
                    "log.color",
                    format!("{other:?} is not one of \"auto\", \"always\", \"never\""),
                ))
            }
        };
        let max_bytes = self.log.max_bytes.unwrap_or(DEFAULT_LOG_MAX_BYTES);
        if max_bytes != 0 && max_bytes < MIN_LOG_MAX_BYTES {
            return Err(err(
                "log.max_bytes",
                format!("{max_bytes} is too small (0 for never, or at least {MIN_LOG_MAX_BYTES})"),
            ));
        }
        let keep = positive("log.keep", self.log.keep, DEFAULT_LOG_KEEP, 1000)? as usize;
        let log = LogSettings {
            json,
            console: self.log.console.unwrap_or(true),
            color,
            max_bytes: (max_bytes != 0).then_some(max_bytes),
            keep,
        };

        let td = TlsSettings::default();
        let t = &self.tls;
        let mut expect_names = Vec::new();
        for (i, n) in t.expect_names.iter().flatten().enumerate() {
            let n = n.trim().trim_end_matches('.').to_ascii_lowercase();
            if n.is_empty() || n.contains(char::is_whitespace) {
                return Err(err(
                    &format!("tls.expect_names[{i}]"),
                    format!("{n:?} is not a host name"),
                ));
            }
            expect_names.push(n);
        }
        let mut ca_files = Vec::new();
        for (i, f) in t.ca_files.iter().flatten().enumerate() {
            let p = PathBuf::from(f);
            if !p.is_file() {
                return Err(err(
                    &format!("tls.ca_files[{i}]"),
                    format!("{f:?} is not a readable file"),
                ));
            }
            ca_files.push(p);
        }
        let mut crl_files = Vec::new();
        for (i, f) in t.crl_files.iter().flatten().enumerate() {
            let p = PathBuf::from(f);
            if !p.is_file() {
                return Err(err(
                    &format!("tls.crl_files[{i}]"),
                    format!("{f:?} is not a readable file"),
                ));
            }
            crl_files.push(p);
        }
        let tls = TlsSettings {
            crl_files,
            expect_names,
            mozilla_roots: t.mozilla_roots.unwrap_or(td.mozilla_roots),
            system_roots: t.system_roots.unwrap_or(td.system_roots),
            ca_files,
            check_revocation: t.check_revocation.unwrap_or(td.check_revocation),
            expiry_warning_days: t.expiry_warning_days.unwrap_or(td.expiry_warning_days),
            check_announced_names: t.check_announced_names.unwrap_or(td.check_announced_names),
            side_probe: t.side_probe.unwrap_or(td.side_probe),
            side_probe_cache: Duration::from_secs(
                t.side_probe_cache_secs
                    .unwrap_or(td.side_probe_cache.as_secs()),
            ),
            side_probe_per_minute: t.side_probe_per_minute.unwrap_or(td.side_probe_per_minute),
            side_probe_timeout: Duration::from_secs(
                t.side_probe_timeout_secs
                    .unwrap_or(td.side_probe_timeout.as_secs()),
            ),
        };
        if tls.side_probe && tls.side_probe_timeout.is_zero() {
            return Err(err(
                "tls.side_probe_timeout_secs",
                "must be at least 1 (or set side_probe = false)".into(),
            ));
        }
        if !tls.mozilla_roots && !tls.system_roots && tls.ca_files.is_empty() {
            return Err(err(
                "tls",
                "no trust anchors: enable mozilla_roots or system_roots, or give ca_files".into(),
            ));
        }

        let capture = if self.capture.enabled {
            let c = self.capture.resolve("capture").map_err(|m| {
                // The capture section's messages start with the key: split it out.
                let (key, message) = m
                    .split_once(": ")
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .unwrap_or((String::from("capture"), m.clone()));
                ConfigError {
                    file: file.to_string(),
                    key,
                    message,
                }
            })?;
            Some(c)
        } else {
            None
        };

        let mode = match self.mode.as_deref().unwrap_or("passthrough") {
            "passthrough" => Mode::Passthrough,
            "intercept" => Mode::Intercept,
            other => {
                return Err(err(
                    "mode",
                    format!("{other:?} is not one of \"passthrough\", \"intercept\""),
                ))
            }
        };
        let intercept = match mode {
            Mode::Intercept => Some(self.intercept.resolve(file)?),
            Mode::Passthrough => None,
        };
        // Intercept mode writes both wire legs and the decrypted SMTP.
        let capture = capture.map(|mut c| {
            if mode == Mode::Intercept {
                c.legs = crate::capture::Legs::Intercept;
            }
            c
        });

        Ok(ProxyConfig {
            listen,
            upstream,
            destinations,
            implicit_tls: self.implicit_tls.unwrap_or(false),
            on_upstream_failure,
            limits,
            log,
            tls,
            capture,
            mode,
            intercept,
        })
    }
}

/// The value of `upstream` that selects transparent interception.
pub const ORIGINAL_DESTINATION: &str = "original-destination";

impl RawConfig {
    /// `upstream` (+ `transparent`, `spoof_source`) into an [`UpstreamTarget`].
    fn resolve_upstream(&self, up: &str, file: &str) -> Result<UpstreamTarget, ConfigError> {
        let err = |key: &str, message: String| ConfigError {
            file: file.to_string(),
            key: key.to_string(),
            message,
        };
        if up.trim() != ORIGINAL_DESTINATION {
            if let Some(t) = &self.transparent {
                return Err(err(
                    "transparent",
                    format!("{t:?} only applies with upstream = \"{ORIGINAL_DESTINATION}\""),
                ));
            }
            if self.spoof_source == Some(true) {
                return Err(err(
                    "spoof_source",
                    format!("only applies with upstream = \"{ORIGINAL_DESTINATION}\" and transparent = \"tproxy\""),
                ));
            }
            return parse_upstream(up)
                .map(UpstreamTarget::Static)
                .map_err(|m| err("upstream", format!("{m}, or \"{ORIGINAL_DESTINATION}\"")));
        }
        let mode = match self.transparent.as_deref() {
            Some("redirect") => TransparentMode::Redirect,
            Some("tproxy") => TransparentMode::Tproxy,
            Some(other) => {
                return Err(err(
                    "transparent",
                    format!("{other:?} is not one of \"redirect\", \"tproxy\""),
                ))
            }
            None => {
                return Err(err(
                    "transparent",
                    format!("upstream = \"{ORIGINAL_DESTINATION}\" needs transparent = \"redirect\" (iptables/nft nat REDIRECT) or \"tproxy\" (mangle TPROXY)"),
                ))
            }
        };
        let spoof_source = self.spoof_source.unwrap_or(false);
        if spoof_source && mode != TransparentMode::Tproxy {
            return Err(err(
                "spoof_source",
                "needs transparent = \"tproxy\": the server's replies to the client's address must be routed back to smtptap, which the TPROXY policy route does".into(),
            ));
        }
        if cfg!(not(target_os = "linux")) {
            return Err(err(
                "upstream",
                "transparent interception (REDIRECT/TPROXY) is only available on Linux".into(),
            ));
        }
        Ok(UpstreamTarget::OriginalDestination { mode, spoof_source })
    }

    /// `[[destination]]` tables into [`Destination`]s, in file order.
    fn resolve_destinations(&self, file: &str) -> Result<Vec<Destination>, ConfigError> {
        let mut out = Vec::with_capacity(self.destination.len());
        for (i, d) in self.destination.iter().enumerate() {
            let err = |key: &str, message: String| ConfigError {
                file: file.to_string(),
                key: format!("destination[{i}]{key}"),
                message,
            };
            let m = d.matches.as_deref().ok_or_else(|| {
                err(
                    "",
                    "missing `match` (an IP address or CIDR network, e.g. \"192.0.2.0/24\")".into(),
                )
            })?;
            let net = Cidr::parse(m).map_err(|e| err(".match", e))?;
            let mut expect_names = Vec::new();
            for (j, n) in d.expect_names.iter().flatten().enumerate() {
                let n = n.trim().trim_end_matches('.').to_ascii_lowercase();
                if n.is_empty() || n.contains(char::is_whitespace) {
                    return Err(err(
                        &format!(".expect_names[{j}]"),
                        format!("{n:?} is not a host name"),
                    ));
                }
                expect_names.push(n);
            }
            out.push(Destination { net, expect_names });
        }
        Ok(out)
    }
}

impl ProxyConfig {
    /// The first `[[destination]]` whose network contains `ip`, if any.
    pub fn destination_for(&self, ip: IpAddr) -> Option<&Destination> {
        self.destinations.iter().find(|d| d.net.contains(ip))
    }

    /// The names the certificate of the server at `ip` must carry: the
    /// matching `[[destination]]`'s, else `tls.expect_names`.
    pub fn expect_names_for(&self, ip: IpAddr) -> &[String] {
        match self.destination_for(ip) {
            Some(d) => &d.expect_names,
            None => &self.tls.expect_names,
        }
    }
}

/// Parses `host:port`, `[v6]:port` or `v4:port`.
pub fn parse_upstream(s: &str) -> Result<Upstream, String> {
    let s = s.trim();
    let bad =
        || format!("{s:?} is not host:port (e.g. \"mx.example.com:25\" or \"[2001:db8::1]:25\")");
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once("]:").ok_or_else(bad)?;
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad());
        }
        (h, p)
    } else {
        let (h, p) = s.rsplit_once(':').ok_or_else(bad)?;
        if h.contains(':') {
            return Err(bad());
        }
        (h, p)
    };
    if host.is_empty()
        || host
            .chars()
            .any(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':')))
    {
        return Err(bad());
    }
    let port: u16 =
        p_parse(port).ok_or_else(|| format!("{s:?}: {port:?} is not a port (1-65535)"))?;
    Ok(Upstream {
        host: host.to_string(),
        port,
    })
}

fn p_parse(p: &str) -> Option<u16> {
    match p.parse::<u16>() {
        Ok(0) | Err(_) => None,
        Ok(v) => Some(v),
    }
}

/// A reply line must be a 4xx/5xx SMTP reply without line breaks.
fn validate_reply_line(line: &str) -> Result<(), String> {
    let b = line.as_bytes();
    let ok = b.len() >= 3
        && matches!(b.first(), Some(b'4') | Some(b'5'))
        && b.iter().take(3).all(u8::is_ascii_digit)
        && (b.len() == 3 || b.get(3) == Some(&b' '))
        && !line.contains(['\r', '\n'])
        && line.len() <= 510;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{line:?} is not a single 4xx/5xx SMTP reply line (e.g. \"{DEFAULT_FAILURE_REPLY}\")"
        ))
    }
}

/// How smtptap treats a session's TLS (`mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Relay every byte untouched; observe the TLS handshake from outside.
    #[default]
    Passthrough,
    /// Terminate TLS on both legs (smtptap is the client's server and the
    /// server's client) and observe the SMTP inside.
    Intercept,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Passthrough => "passthrough",
            Mode::Intercept => "intercept",
        })
    }
}

/// `[intercept]` as written (used only with `mode = "intercept"`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIntercept {
    /// The CA that signs minted leaves (PEM certificate), e.g. from `smtptap ca init`.
    pub ca_cert: Option<String>,
    /// The CA's private key (PEM); must not be readable by group or others.
    pub ca_key: Option<String>,
    /// Accept a CA key readable by group or others.
    pub allow_insecure_ca_key: Option<bool>,
    /// A static certificate chain to present instead of a minted leaf (PEM).
    pub cert: Option<String>,
    /// The static certificate's private key (PEM).
    pub key: Option<String>,
    /// The client SNI names the static certificate is presented for (empty: all).
    pub cert_names: Option<Vec<String>>,
    /// `"record"` (default) or `"enforce"`.
    pub upstream_verify: Option<String>,
    /// The name sent as SNI upstream when the client sent none.
    pub upstream_name: Option<String>,
    /// A client certificate chain to present to the upstream (PEM).
    pub client_cert: Option<String>,
    /// Its private key (PEM).
    pub client_key: Option<String>,
    /// Ask the client for a certificate (any is accepted and recorded).
    pub request_client_cert: Option<bool>,
    /// Append NSS key log lines of both legs to this file (mode 0600).
    pub keylog: Option<String>,
    /// Embed the TLS secrets in the pcapng capture (Decryption Secrets Block).
    pub embed_secrets: Option<bool>,
}

/// PEM text holding a private key: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretPem(pub String);

impl fmt::Debug for SecretPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretPem([redacted])")
    }
}

/// What intercept mode does with the upstream's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamVerify {
    /// Record the chain and the verification result; go on whatever it is.
    Record,
    /// Refuse an upstream whose chain does not verify (the client's handshake fails).
    Enforce,
}

/// A certificate chain and its key, read from files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// The chain's file.
    pub cert_path: PathBuf,
    /// The key's file.
    pub key_path: PathBuf,
    /// The chain, PEM.
    pub cert_pem: String,
    /// The key, PEM.
    pub key_pem: SecretPem,
}

/// The validated `[intercept]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterceptConfig {
    /// The minting CA, if configured.
    pub ca: Option<CertFiles>,
    /// The static certificate, if configured.
    pub static_cert: Option<CertFiles>,
    /// The names the static certificate is presented for (lower case; empty: all).
    pub static_names: Vec<String>,
    /// Record or enforce the upstream's verification.
    pub upstream_verify: UpstreamVerify,
    /// SNI sent upstream when the client sent none.
    pub upstream_name: Option<String>,
    /// The client certificate presented upstream.
    pub client_cert: Option<CertFiles>,
    /// Ask the client for a certificate.
    pub request_client_cert: bool,
    /// NSS key log file.
    pub keylog: Option<PathBuf>,
    /// Embed TLS secrets in captures.
    pub embed_secrets: bool,
}

impl InterceptConfig {
    /// The resolved section as JSON for `run.start`: paths, never key material.
    pub fn resolved_json(&self) -> serde_json::Value {
        let path = |c: &Option<CertFiles>, key: bool| {
            c.as_ref().map(|c| {
                if key { &c.key_path } else { &c.cert_path }
                    .display()
                    .to_string()
            })
        };
        serde_json::json!({
            "ca_cert": path(&self.ca, false),
            "ca_key": path(&self.ca, true),
            "cert": path(&self.static_cert, false),
            "key": path(&self.static_cert, true),
            "cert_names": self.static_names,
            "upstream_verify": match self.upstream_verify {
                UpstreamVerify::Record => "record",
                UpstreamVerify::Enforce => "enforce",
            },
            "upstream_name": self.upstream_name,
            "client_cert": path(&self.client_cert, false),
            "client_key": path(&self.client_cert, true),
            "request_client_cert": self.request_client_cert,
            "keylog": self.keylog.as_ref().map(|p| p.display().to_string()),
            "embed_secrets": self.embed_secrets,
        })
    }
}

impl RawIntercept {
    /// Validates the section: files readable and parseable, the CA key private.
    pub fn resolve(&self, file: &str) -> Result<InterceptConfig, ConfigError> {
        let err = |key: &str, message: String| ConfigError {
            file: file.to_string(),
            key: format!("intercept.{key}"),
            message,
        };
        let read = |key: &str, p: &str| -> Result<(PathBuf, String), ConfigError> {
            let path = PathBuf::from(p);
            std::fs::read_to_string(&path)
                .map(|t| (path, t))
                .map_err(|e| err(key, format!("cannot read {p:?}: {e}")))
        };
        let pair = |ck: &str,
                    kk: &str,
                    c: &Option<String>,
                    k: &Option<String>|
         -> Result<Option<CertFiles>, ConfigError> {
            match (c, k) {
                (None, None) => Ok(None),
                (Some(_), None) => Err(err(
                    kk,
                    format!("missing: {ck} is set, so {kk} must be too"),
                )),
                (None, Some(_)) => Err(err(
                    ck,
                    format!("missing: {kk} is set, so {ck} must be too"),
                )),
                (Some(c), Some(k)) => {
                    let (cert_path, cert_pem) = read(ck, c)?;
                    let (key_path, key_pem) = read(kk, k)?;
                    let mut r = cert_pem.as_bytes();
                    let certs: Vec<_> = rustls_pemfile::certs(&mut r)
                        .collect::<Result<_, _>>()
                        .map_err(|e| err(ck, format!("{c:?}: bad PEM: {e}")))?;
                    if certs.is_empty() {
                        return Err(err(ck, format!("{c:?}: no CERTIFICATE block")));
                    }
                    let mut r = key_pem.as_bytes();
                    match rustls_pemfile::private_key(&mut r) {
                        Ok(Some(_)) => {}
                        Ok(None) => return Err(err(kk, format!("{k:?}: no private key block"))),
                        Err(e) => return Err(err(kk, format!("{k:?}: bad PEM: {e}"))),
                    }
                    Ok(Some(CertFiles {
                        cert_path,
                        key_path,
                        cert_pem,
                        key_pem: SecretPem(key_pem),
                    }))
                }
            }
        };
        let ca = pair("ca_cert", "ca_key", &self.ca_cert, &self.ca_key)?;
        if let Some(ca) = &ca {
            crate::cert::mint::Ca::from_pem(&ca.cert_pem, &ca.key_pem.0)
                .map_err(|e| err("ca_cert", format!("cannot sign with this CA: {e}")))?;
            let allow = self.allow_insecure_ca_key.unwrap_or(false);
            if !allow {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(&ca.key_path)
                    .map(|m| m.permissions().mode())
                    .unwrap_or(0);
                if mode & 0o077 != 0 {
                    return Err(err(
                        "ca_key",
                        format!(
                            "{} is readable by group or others (mode {:o}): anyone who reads it can impersonate every server to clients that trust this CA; chmod 600 it (or set intercept.allow_insecure_ca_key = true)",
                            ca.key_path.display(),
                            mode & 0o777
                        ),
                    ));
                }
            }
        }
        let static_cert = pair("cert", "key", &self.cert, &self.key)?;
        if ca.is_none() && static_cert.is_none() {
            return Err(err(
                "ca_cert",
                "mode = \"intercept\" needs a CA to mint certificates (ca_cert + ca_key, e.g. from `smtptap ca init`) or a static certificate (cert + key)".into(),
            ));
        }
        let mut static_names = Vec::new();
        for (i, n) in self.cert_names.iter().flatten().enumerate() {
            let n = n.trim().trim_end_matches('.').to_ascii_lowercase();
            if n.is_empty() || n.contains(char::is_whitespace) {
                return Err(err(
                    &format!("cert_names[{i}]"),
                    format!("{n:?} is not a host name"),
                ));
            }
            static_names.push(n);
        }
        if !static_names.is_empty() && static_cert.is_none() {
            return Err(err(
                "cert_names",
                "set, but there is no static certificate (cert + key)".into(),
            ));
        }
        let upstream_verify = match self.upstream_verify.as_deref().unwrap_or("record") {
            "record" => UpstreamVerify::Record,
            "enforce" => UpstreamVerify::Enforce,
            other => {
                return Err(err(
                    "upstream_verify",
                    format!("{other:?} is not one of \"record\", \"enforce\""),
                ))
            }
        };
        let upstream_name = match self.upstream_name.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(n) if rustls_pki_types::ServerName::try_from(n).is_err() => {
                return Err(err("upstream_name", format!("{n:?} is not a host name")))
            }
            Some(n) => Some(n.to_string()),
        };
        let client_cert = pair(
            "client_cert",
            "client_key",
            &self.client_cert,
            &self.client_key,
        )?;
        let keylog = match self.keylog.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(p) => Some(PathBuf::from(p)),
        };
        Ok(InterceptConfig {
            ca,
            static_cert,
            static_names,
            upstream_verify,
            upstream_name,
            client_cert,
            request_client_cert: self.request_client_cert.unwrap_or(false),
            keylog,
            embed_secrets: self.embed_secrets.unwrap_or(false),
        })
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(text: &str) -> Result<ProxyConfig, ConfigError> {
        RawConfig::from_toml(text, "test.toml")?.resolve("test.toml")
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = resolve(
            "listen = [\"127.0.0.1:2525\", \"[::1]:2525\"]\nupstream = \"mx.example.com:25\"\n",
        )
        .unwrap();
        assert_eq!(c.listen.len(), 2);
        assert_eq!(
            c.upstream,
            UpstreamTarget::Static(Upstream {
                host: "mx.example.com".into(),
                port: 25
            })
        );
        assert_eq!(c.limits, Limits::default());
        assert_eq!(
            c.on_upstream_failure,
            UpstreamFailure::Reply(DEFAULT_FAILURE_REPLY.into())
        );
        assert!(c.log.console);
        assert_eq!(c.log.json, None);
        assert!(c.tls.mozilla_roots);
        assert_eq!(c.tls.expiry_warning_days, 30);
    }

    #[test]
    fn line_and_session_deadlines_default_on_and_zero_switches_them_off() {
        let base = "listen = [\"127.0.0.1:2525\"]\nupstream = \"mx.example.com:25\"\n";
        let d = resolve(base).unwrap().limits;
        assert_eq!(d.line_timeout, Some(Duration::from_secs(300)));
        assert_eq!(d.session_timeout, Some(Duration::from_secs(3600)));
        let c = resolve(&format!(
            "{base}[limits]\nline_timeout_secs = 0\nsession_timeout_secs = 7\n"
        ))
        .unwrap();
        assert_eq!(c.limits.line_timeout, None);
        assert_eq!(c.limits.session_timeout, Some(Duration::from_secs(7)));
        let e = resolve(&format!("{base}[limits]\nline_timeout_secs = 100000\n")).unwrap_err();
        assert_eq!(e.key, "limits.line_timeout_secs");
        assert!(e.to_string().contains("more than the maximum"), "{e}");
    }

    #[test]
    fn bad_listen_address_names_file_key_and_value() {
        let e = resolve("listen = [\"127.0.0.1:25\", \"1.2.3.4:99999\"]\nupstream = \"a:25\"")
            .unwrap_err();
        assert_eq!(e.key, "listen[1]");
        let s = e.to_string();
        assert!(
            s.starts_with("test.toml: listen[1]: \"1.2.3.4:99999\" is not a socket address"),
            "{s}"
        );
    }

    #[test]
    fn unknown_key_is_rejected_with_its_path() {
        let e = RawConfig::from_toml("[limits]\nmax_sesions = 3\n", "c.toml").unwrap_err();
        let s = e.to_string();
        assert!(s.contains("unknown field `max_sesions`"), "{s}");
        assert!(s.contains("line 2"), "{s}");
        assert!(s.starts_with("c.toml: limits"), "{s}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let e =
            RawConfig::from_toml("[limits]\nidle_timeout_secs = \"ten\"\n", "c.toml").unwrap_err();
        assert_eq!(e.key, "limits.idle_timeout_secs");
    }

    #[test]
    fn zero_limits_and_bad_enums_are_rejected() {
        let base = "listen=[\"127.0.0.1:1\"]\nupstream=\"h:25\"\n";
        let e = resolve(&format!("{base}[limits]\nmax_sessions = 0\n")).unwrap_err();
        assert_eq!(e.key, "limits.max_sessions");
        let e = resolve(&format!("{base}on_upstream_failure = \"bounce\"\n")).unwrap_err();
        assert_eq!(e.key, "on_upstream_failure");
        let e = resolve(&format!("{base}failure_reply = \"250 ok\"\n")).unwrap_err();
        assert_eq!(e.key, "failure_reply");
        let e = resolve(&format!("{base}[log]\ncolor = \"sometimes\"\n")).unwrap_err();
        assert_eq!(e.key, "log.color");
        let e = resolve(&format!(
            "{base}[tls]\nca_files = [\"/nonexistent/ca.pem\"]\n"
        ))
        .unwrap_err();
        assert_eq!(e.key, "tls.ca_files[0]");
    }

    #[test]
    fn upstream_forms() {
        assert_eq!(
            parse_upstream("[2001:db8::1]:25").unwrap().host,
            "2001:db8::1"
        );
        assert_eq!(parse_upstream("192.0.2.1:587").unwrap().port, 587);
        assert!(parse_upstream("mx.example.com").is_err());
        assert!(parse_upstream("mx.example.com:0").is_err());
        assert!(parse_upstream("2001:db8::1:25").is_err());
        assert!(parse_upstream("mx example:25").is_err());
        let e = resolve("listen=[\"127.0.0.1:1\"]").unwrap_err();
        assert_eq!(e.key, "upstream");
    }

    #[test]
    fn shipped_config_toml_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
        let raw = RawConfig::from_file(&path).unwrap();
        let c = raw.resolve("config.toml").unwrap();
        assert!(!c.listen.is_empty());
    }

    #[test]
    fn original_destination_resolves_mode_and_spoofing() {
        let base = "listen=[\"0.0.0.0:2525\"]\nupstream=\"original-destination\"\n";
        let c = resolve(&format!("{base}transparent = \"redirect\"\n")).unwrap();
        assert_eq!(
            c.upstream,
            UpstreamTarget::OriginalDestination {
                mode: TransparentMode::Redirect,
                spoof_source: false
            }
        );
        let c = resolve(&format!(
            "{base}transparent = \"tproxy\"\nspoof_source = true\n"
        ))
        .unwrap();
        assert_eq!(c.upstream.transparent(), Some(TransparentMode::Tproxy));
        assert_eq!(
            c.upstream.to_string(),
            "original destination (tproxy, source spoofed)"
        );
    }

    #[test]
    fn transparent_keys_are_checked_together() {
        let base = "listen=[\"0.0.0.0:2525\"]\n";
        let od = "upstream=\"original-destination\"\n";
        let e = resolve(&format!("{base}{od}")).unwrap_err();
        assert_eq!(e.key, "transparent");
        assert!(e.message.contains("\"redirect\""), "{e}");
        let e = resolve(&format!("{base}{od}transparent=\"nat\"\n")).unwrap_err();
        assert_eq!(e.key, "transparent");
        let e = resolve(&format!(
            "{base}{od}transparent=\"redirect\"\nspoof_source=true\n"
        ))
        .unwrap_err();
        assert_eq!(e.key, "spoof_source");
        assert!(e.message.contains("tproxy"), "{e}");
        let e = resolve(&format!(
            "{base}upstream=\"mx.example.com:25\"\ntransparent=\"tproxy\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.key, "transparent");
        let e = resolve(&format!("{base}upstream=\"original-dest\"\n")).unwrap_err();
        assert_eq!(e.key, "upstream");
        assert!(e.message.contains("original-destination"), "{e}");
    }

    #[test]
    fn destinations_first_match_wins_and_fall_back_to_tls_expect_names() {
        let c = resolve(
            "listen=[\"0.0.0.0:2525\"]\nupstream=\"original-destination\"\ntransparent=\"redirect\"\n\
             [tls]\nexpect_names=[\"default.example\"]\n\
             [[destination]]\nmatch=\"192.0.2.7\"\nexpect_names=[\"One.Example.\"]\n\
             [[destination]]\nmatch=\"192.0.2.0/24\"\nexpect_names=[\"net.example\"]\n\
             [[destination]]\nmatch=\"2001:db8::/32\"\nexpect_names=[\"v6.example\"]\n",
        )
        .unwrap();
        assert_eq!(c.destinations.len(), 3);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(c.expect_names_for(ip("192.0.2.7")), ["one.example"]);
        assert_eq!(c.expect_names_for(ip("192.0.2.8")), ["net.example"]);
        assert_eq!(c.expect_names_for(ip("::ffff:192.0.2.9")), ["net.example"]);
        assert_eq!(c.expect_names_for(ip("2001:db8:1::5")), ["v6.example"]);
        assert_eq!(c.expect_names_for(ip("198.51.100.1")), ["default.example"]);
        assert!(c.destination_for(ip("198.51.100.1")).is_none());
    }

    #[test]
    fn bad_destinations_name_their_key() {
        let base = "listen=[\"0.0.0.0:2525\"]\nupstream=\"h:25\"\n";
        let e = resolve(&format!("{base}[[destination]]\nmatch=\"192.0.2.1/24\"\n")).unwrap_err();
        assert_eq!(e.key, "destination[0].match");
        assert!(e.message.contains("192.0.2.0/24"), "{e}");
        let e = resolve(&format!(
            "{base}[[destination]]\nmatch=\"10.0.0.0/8\"\n[[destination]]\nmatch=\"10.0.0.0/33\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.key, "destination[1].match");
        let e = resolve(&format!("{base}[[destination]]\nexpect_names=[\"a\"]\n")).unwrap_err();
        assert_eq!(e.key, "destination[0]");
        let e = resolve(&format!(
            "{base}[[destination]]\nmatch=\"::/0\"\nexpect_names=[\"a b\"]\n"
        ))
        .unwrap_err();
        assert_eq!(e.key, "destination[0].expect_names[0]");
        let e = RawConfig::from_toml("[[destination]]\nmatch=\"::/0\"\nmode=\"x\"\n", "c.toml")
            .unwrap_err();
        assert!(e.to_string().contains("unknown field `mode`"), "{e}");
    }

    #[test]
    fn durations_take_a_unit_and_unattended_keys_name_themselves_in_errors() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("4h").unwrap(), Duration::from_secs(4 * 3600));
        assert_eq!(
            parse_duration("2d").unwrap(),
            Duration::from_secs(2 * 86_400)
        );
        assert!(parse_duration("0h").is_err());
        assert!(parse_duration("4 hours").is_err());
        assert!(parse_duration("h").is_err());
        let base = "listen=[\"127.0.0.1:1\"]\nupstream=\"h:25\"\n";
        let c = resolve(&format!(
            "{base}[limits]\nduration = \"4h\"\nmax_sessions_total = 7\n"
        ))
        .unwrap();
        assert_eq!(c.limits.duration, Some(Duration::from_secs(14_400)));
        assert_eq!(c.limits.max_sessions_total, Some(7));
        let e = resolve(&format!("{base}[limits]\nduration = \"4x\"\n")).unwrap_err();
        assert_eq!(e.key, "limits.duration");
        assert!(e.message.contains("not a duration"), "{e}");
        let e = resolve(&format!("{base}[limits]\nmax_sessions_total = 0\n")).unwrap_err();
        assert_eq!(e.key, "limits.max_sessions_total");
        // The log rotates at 100 MiB, keeping 5, unless told otherwise.
        let c = resolve(base).unwrap();
        assert_eq!(c.log.max_bytes, Some(DEFAULT_LOG_MAX_BYTES));
        assert_eq!(c.log.keep, 5);
        let c = resolve(&format!("{base}[log]\nmax_bytes = 0\n")).unwrap();
        assert_eq!(c.log.max_bytes, None);
        let e = resolve(&format!("{base}[log]\nmax_bytes = 100\n")).unwrap_err();
        assert_eq!(e.key, "log.max_bytes");
        let e = resolve(&format!("{base}[log]\nkeep = 0\n")).unwrap_err();
        assert_eq!(e.key, "log.keep");
        // A capture cap needs room for the open file.
        let e = resolve(&format!(
            "{base}[capture]\nenabled = true\nrotate_bytes = 0\nmax_total_bytes = 1000000\n"
        ))
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("capture.max_total_bytes: needs rotate_bytes"),
            "{e}"
        );
        let e = resolve(&format!(
            "{base}[capture]\nenabled = true\nrotate_bytes = 1000000\nmax_total_bytes = 1500000\n"
        ))
        .unwrap_err();
        assert!(
            e.to_string().contains("less than twice rotate_bytes"),
            "{e}"
        );
    }

    #[test]
    fn intercept_section_is_checked_and_names_its_keys() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("smtptap-cfg-ic-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (crt, key) = crate::cli::ca_init(&dir, "Test CA").unwrap();
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // Refuses to overwrite.
        assert!(crate::cli::ca_init(&dir, "Test CA")
            .unwrap_err()
            .contains("already exists"));
        let base = "listen=[\"127.0.0.1:1\"]\nupstream=\"h:25\"\n";
        let e = resolve(&format!("{base}mode = \"mitm\"\n")).unwrap_err();
        assert_eq!(e.key, "mode");
        let e = resolve(&format!("{base}mode = \"intercept\"\n")).unwrap_err();
        assert_eq!(e.key, "intercept.ca_cert");
        assert!(e.message.contains("smtptap ca init"), "{e}");
        let ok = format!(
            "{base}mode = \"intercept\"\n[intercept]\nca_cert = {:?}\nca_key = {:?}\nupstream_verify = \"enforce\"\n",
            crt.display().to_string(),
            key.display().to_string()
        );
        let c = resolve(&ok).unwrap();
        assert_eq!(c.mode, Mode::Intercept);
        let ic = c.intercept.as_ref().unwrap();
        assert_eq!(ic.upstream_verify, UpstreamVerify::Enforce);
        // The key never reaches the resolved JSON or Debug output.
        let json = c.resolved_json().to_string();
        assert!(!json.contains("PRIVATE KEY"), "{json}");
        assert!(!format!("{c:?}").contains("PRIVATE KEY"));
        // A CA key readable by others is refused unless allowed.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = resolve(&ok).unwrap_err();
        assert_eq!(e.key, "intercept.ca_key");
        assert!(e.message.contains("chmod 600"), "{e}");
        resolve(&format!("{ok}allow_insecure_ca_key = true\n")).unwrap();
        let e = resolve(&format!("{ok}upstream_verify2 = 1\n")).unwrap_err();
        assert!(e.to_string().contains("upstream_verify2"), "{e}");
        let e = resolve(&format!(
            "{base}mode = \"intercept\"\n[intercept]\ncert = {:?}\n",
            crt.display().to_string()
        ))
        .unwrap_err();
        assert_eq!(e.key, "intercept.key");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
