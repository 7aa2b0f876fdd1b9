//! pcapng capture: what crossed the proxy, written as Ethernet/IP/TCP frames
//! that Wireshark and tshark dissect as SMTP and TLS on another machine.
//!
//! This module owns the `[capture]` config section, frame synthesis
//! ([`flow`]), the pcapng block layout ([`pcapng`]) and the writer thread
//! ([`writer`]). It must not block the relay, must not parse SMTP or TLS (the
//! caller tells it what to leave out), and must not touch sockets.
//!
//! # How it is fed
//!
//! ```text
//!  session analysis                              writer thread (std::thread)
//!  ─────────────────────                         ───────────────────────────
//!  Capture::session(FlowInfo) ─▶ SessionCapture
//!    .data(side, ts, bytes)  ── frames built here ──▶ unbounded channel, bounded
//!    .skip(side, ts, len)       (seq/ack state)        by a byte budget ──▶ files
//!    .end(side, ts, Fin|Rst)                                          ──▶ events
//!    .close(ts)                                        Capture::take_events()
//! ```
//!
//! The caller redacts AUTH secrets itself when [`CaptureConfig::redact_auth`]
//! is set (replacing secret bytes with `*`, same length) and calls
//! [`SessionCapture::skip`] instead of [`SessionCapture::data`] for DATA/BDAT
//! payload when [`CaptureConfig::bodies`] is false.
//!
//! # What is written
//!
//! * `legs = "client-view"` (default): one flow per session, client address ↔
//!   upstream address, on one interface named `smtp`.
//! * `legs = "both"`: two flows per session, client ↔ proxy listen address on
//!   interface `client-leg`, proxy local address ↔ upstream on `upstream-leg`.
//!   If the proxy's upstream-side local address is unknown, the unspecified
//!   address of the upstream's family is written, with port 0.
//!
//! Each flow starts with a handshake at [`FlowInfo::opened`], carries the
//! relayed bytes in segments of at most 1460 (IPv4) / 1440 (IPv6) bytes with
//! their real timestamps, and ends with FIN or RST as reported by the caller.
//!
//! # Policies
//!
//! * **Queue full** (the disk cannot keep up): frames are queued against a byte
//!   budget ([`CaptureConfig::queue_bytes`]). When a batch does not fit, that
//!   batch is dropped for that session (frames, not whole sessions), its
//!   sequence numbers still advance, and the count is reported: a
//!   `capture.dropped` event when the session closes (reason `queue full`) and a
//!   pcapng comment on the next frame written for that session. Memory stays
//!   bounded whatever the relay pushes.
//! * **Per-session cap** ([`CaptureConfig::max_bytes_per_session`], payload
//!   bytes both directions, 0 = unlimited, the default): data beyond the cap is
//!   not written; a pcapng comment on the last frame and one `capture.truncated`
//!   event say so. FIN/RST are still written so the end of the session shows.
//! * **Disk full or unwritable path**: one `capture.error` event and an error
//!   on stderr at once, then the writer stops writing (every later frame is
//!   discarded and counted); the relay and the API are unaffected.
//! * **Total size** ([`CaptureConfig::max_total_bytes`]): the files this run
//!   wrote and closed are deleted oldest first while the total exceeds the
//!   cap (`capture.deleted` events, a warning on stderr). Files of earlier
//!   runs and files renamed away at SIGHUP are never touched.
//! * **SIGHUP** ([`Capture::reopen`]): a file that was renamed or removed is
//!   closed and a fresh one opened at its path (logrotate's convention).
//! * **Always readable**: every file is flushed when a session closes and at
//!   least every [`CaptureConfig::flush_interval`] (1 s), so a killed process
//!   leaves a file valid up to its last complete block. [`Capture::shutdown`]
//!   flushes and closes everything.
//!
//! # Events and session ids
//!
//! Events about one session (`capture.truncated`, `capture.dropped`, and
//! `capture.file` for per-session files) carry that session's id. Events from
//! the writer that concern no session (`capture.file` for the per-run file,
//! `capture.error`) carry session id **0**.

pub mod flow;
pub mod pcapng;
pub mod writer;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::event::{Event, SessionId, Side, Timestamp};

pub use flow::CloseKind;
use flow::{Frame, TcpFlow};
use writer::{Msg, Shared, WFrame};

/// Events of this module (JSON `event` names `capture.*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event")]
pub enum CaptureEvent {
    /// A capture file was opened, closed, or closed because it was rotated.
    #[serde(rename = "capture.file")]
    File {
        /// The file.
        path: String,
        /// `opened`, `rotated` (closed because it reached `rotate_bytes`),
        /// `reopened` (at SIGHUP the file had been renamed or removed: it is
        /// left as it is and a fresh file is opened at the path), or `closed`.
        reason: String,
    },
    /// Writing failed (disk full, unwritable path): nothing more is written
    /// this run. Reported once.
    #[serde(rename = "capture.error")]
    Error {
        /// The file being written.
        path: String,
        /// A stable code: `no_space`, `permission`, `not_found`, `other`.
        error: String,
        /// The operating system's error, in words.
        detail: String,
    },
    /// The session reached `max_bytes_per_session`: later data is not written.
    #[serde(rename = "capture.truncated")]
    Truncated {
        /// The cap, in payload bytes.
        limit: u64,
    },
    /// Frames were not written.
    #[serde(rename = "capture.dropped")]
    Dropped {
        /// How many frames.
        frames: u64,
        /// How many frame bytes.
        bytes: u64,
        /// `queue full`: the disk could not keep up. (After a write error
        /// frames are not counted here: the one `capture.error` says it all.)
        reason: String,
    },
    /// A closed capture file of this run was deleted to keep the total under
    /// `max_total_bytes` (oldest first).
    #[serde(rename = "capture.deleted")]
    Deleted {
        /// The file deleted.
        path: String,
        /// Its size.
        bytes: u64,
        /// `max_total_bytes`.
        reason: String,
    },
}

impl CaptureEvent {
    /// The dotted event name, as in the JSON `event` field.
    pub fn name(&self) -> &'static str {
        #[allow(unreachable_patterns)]
        match self {
            CaptureEvent::File { .. } => "capture.file",
            CaptureEvent::Error { .. } => "capture.error",
            CaptureEvent::Truncated { .. } => "capture.truncated",
            CaptureEvent::Dropped { .. } => "capture.dropped",
            CaptureEvent::Deleted { .. } => "capture.deleted",
        }
    }
}

/// Why [`Capture::start`] failed.
#[derive(Debug)]
pub enum CaptureError {
    /// The capture file or directory cannot be created or written.
    Unwritable {
        /// The path tried.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
}

impl std::fmt::Display for CaptureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CaptureError::Unwritable { path, source } => {
                write!(
                    f,
                    "capture path {} is not writable: {source}",
                    path.display()
                )
            }
        }
    }
}

impl std::error::Error for CaptureError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CaptureError::Unwritable { source, .. } => Some(source),
        }
    }
}

/// Which flows a session is written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Legs {
    /// One flow, client ↔ upstream, as the client saw the conversation.
    #[default]
    ClientView,
    /// Two flows: client ↔ proxy, and proxy ↔ upstream.
    Both,
    /// Intercept mode (set by `mode = "intercept"`, not written by users):
    /// the two wire flows of `Both`, each with its own TLS session, plus the
    /// SMTP smtptap decrypted, client ↔ upstream, on interface `decrypted`.
    #[serde(skip)]
    Intercept,
}

impl Legs {
    /// The pcapng interfaces a file holds, by id.
    pub fn interface_names(self) -> &'static [&'static str] {
        match self {
            Legs::ClientView => &["smtp"],
            Legs::Both => &["client-leg", "upstream-leg"],
            Legs::Intercept => &["client-leg", "upstream-leg", DECRYPTED_INTERFACE],
        }
    }
}

/// The interface of intercept mode's decrypted SMTP (`frame.interface_name == "decrypted"`).
pub const DECRYPTED_INTERFACE: &str = "decrypted";

/// The `[capture]` table of `config.toml`, as written by the user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureSection {
    /// Write pcapng captures at all.
    pub enabled: bool,
    /// A file (`cap.pcapng`; rotation appends `-1`, `-2`) or a directory (an
    /// existing one, or a path ending in `/`) where files are named
    /// `smtptap-<UTC time>[-s<session>].pcapng`.
    pub path: String,
    /// One file per session instead of one per run.
    pub per_session: bool,
    /// Start a new per-run file when the current one reaches this size
    /// (bytes; 0 = never).
    pub rotate_bytes: u64,
    /// `client-view` or `both`.
    pub legs: Legs,
    /// Write DATA/BDAT payload (false: sizes only, sequence numbers still advance).
    pub bodies: bool,
    /// Replace AUTH secrets with `*` of the same length before writing.
    pub redact_auth: bool,
    /// Stop writing a session's data after this many payload bytes (0 = unlimited).
    pub max_bytes_per_session: u64,
    /// Only sessions whose client address is in one of these CIDRs (empty = all).
    pub clients: Vec<String>,
    /// Only sessions whose upstream address is in one of these CIDRs (empty = all).
    pub upstreams: Vec<String>,
    /// Only sessions whose upstream port or proxy listen port is listed (empty = all).
    pub ports: Vec<u16>,
    /// Bytes of frames allowed to wait for the disk before frames are dropped.
    pub queue_bytes: u64,
    /// Total size of the capture files this run keeps (0 = unlimited): past
    /// it, the oldest closed files are deleted.
    pub max_total_bytes: u64,
}

/// Bytes charged to the queue budget per frame on top of its data.
pub const FRAME_OVERHEAD: usize = 64;
/// Most comments waiting for a session's next frame.
pub const MAX_PENDING_COMMENTS: usize = 32;
/// Default `rotate_bytes`: 100 MiB.
pub const DEFAULT_ROTATE_BYTES: u64 = 100 * 1024 * 1024;
/// Default `queue_bytes`: 32 MiB.
pub const DEFAULT_QUEUE_BYTES: u64 = 32 * 1024 * 1024;
/// Default `max_total_bytes`: 1 GiB.
pub const DEFAULT_MAX_TOTAL_BYTES: u64 = 1024 * 1024 * 1024;
/// Smallest accepted `max_total_bytes` (other than 0).
pub const MIN_MAX_TOTAL_BYTES: u64 = 64 * 1024;
/// Smallest accepted `queue_bytes` (one large relay chunk must fit).
pub const MIN_QUEUE_BYTES: u64 = 256 * 1024;

impl Default for CaptureSection {
    fn default() -> Self {
        CaptureSection {
            enabled: false,
            path: "captures/".to_string(),
            per_session: false,
            rotate_bytes: DEFAULT_ROTATE_BYTES,
            legs: Legs::ClientView,
            // Off by default: the tool is about TLS, and many organisations
            // forbid capturing mail content.
            bodies: false,
            redact_auth: true,
            max_bytes_per_session: 0,
            clients: Vec::new(),
            upstreams: Vec::new(),
            ports: Vec::new(),
            queue_bytes: DEFAULT_QUEUE_BYTES,
            max_total_bytes: DEFAULT_MAX_TOTAL_BYTES,
        }
    }
}

pub use crate::net::Cidr;

/// Where files go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A directory: files are named `smtptap-<time>[-s<id>][-<n>].pcapng`.
    Dir(PathBuf),
    /// A file: per-run rotation appends `-1`, `-2` before the extension;
    /// per-session files insert `-<time>-s<id>` (`cap-20261123T210714Z-s7.pcapng`).
    File(PathBuf),
}

/// The resolved, validated `[capture]` configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptureConfig {
    /// Where files go.
    pub target: Target,
    /// One file per session.
    pub per_session: bool,
    /// Rotate per-run files at this size (None = never).
    pub rotate_bytes: Option<u64>,
    /// Which flows are written.
    pub legs: Legs,
    /// Whether the caller writes DATA/BDAT payload (else it calls `skip`).
    pub bodies: bool,
    /// Whether the caller redacts AUTH secrets before calling `data`.
    pub redact_auth: bool,
    /// Per-session payload cap (None = unlimited).
    pub max_bytes_per_session: Option<u64>,
    /// Client filter (empty = all).
    pub clients: Vec<Cidr>,
    /// Upstream filter (empty = all).
    pub upstreams: Vec<Cidr>,
    /// Port filter (empty = all).
    pub ports: Vec<u16>,
    /// Byte budget of the writer queue.
    pub queue_bytes: u64,
    /// Total size of this run's capture files (None = unlimited).
    pub max_total_bytes: Option<u64>,
    /// How often the writer flushes files even without a session closing.
    pub flush_interval: Duration,
}

impl CaptureSection {
    /// Validates the section; errors name the key, e.g.
    /// `capture.clients[1]: "10.0.0.0/33": "33" is not a prefix length (0-32)`.
    /// `key_prefix` is the table name as the user wrote it (`capture`).
    pub fn resolve(&self, key_prefix: &str) -> Result<CaptureConfig, String> {
        let path = self.path.trim();
        if path.is_empty() {
            return Err(format!("{key_prefix}.path: must not be empty"));
        }
        let pb = PathBuf::from(path);
        let target =
            if path.ends_with('/') || path.ends_with(std::path::MAIN_SEPARATOR) || pb.is_dir() {
                Target::Dir(pb)
            } else {
                Target::File(pb)
            };
        let cidrs = |key: &str, list: &[String]| -> Result<Vec<Cidr>, String> {
            list.iter()
                .enumerate()
                .map(|(i, s)| {
                    Cidr::parse(s).map_err(|why| format!("{key_prefix}.{key}[{i}]: {why}"))
                })
                .collect()
        };
        let clients = cidrs("clients", &self.clients)?;
        let upstreams = cidrs("upstreams", &self.upstreams)?;
        for (i, p) in self.ports.iter().enumerate() {
            if *p == 0 {
                return Err(format!("{key_prefix}.ports[{i}]: 0 is not a port"));
            }
        }
        if self.queue_bytes < MIN_QUEUE_BYTES {
            return Err(format!(
                "{key_prefix}.queue_bytes: {} is too small (at least {MIN_QUEUE_BYTES})",
                self.queue_bytes
            ));
        }
        if self.rotate_bytes != 0 && self.rotate_bytes < 64 * 1024 {
            return Err(format!(
                "{key_prefix}.rotate_bytes: {} is too small (0 for never, or at least 65536)",
                self.rotate_bytes
            ));
        }
        if self.max_total_bytes != 0 {
            if self.max_total_bytes < MIN_MAX_TOTAL_BYTES {
                return Err(format!(
                    "{key_prefix}.max_total_bytes: {} is too small (0 for unlimited, or at least {MIN_MAX_TOTAL_BYTES})",
                    self.max_total_bytes
                ));
            }
            if !self.per_session {
                // Only closed files are deleted: the open one must leave room.
                if self.rotate_bytes == 0 {
                    return Err(format!(
                        "{key_prefix}.max_total_bytes: needs rotate_bytes (a single never-rotated file cannot be capped; set rotate_bytes, or max_total_bytes = 0)"
                    ));
                }
                if self.rotate_bytes.saturating_mul(2) > self.max_total_bytes {
                    return Err(format!(
                        "{key_prefix}.max_total_bytes: {} is less than twice rotate_bytes ({}): the open file alone could fill it",
                        self.max_total_bytes, self.rotate_bytes
                    ));
                }
            }
        }
        Ok(CaptureConfig {
            target,
            per_session: self.per_session,
            rotate_bytes: (self.rotate_bytes != 0).then_some(self.rotate_bytes),
            legs: self.legs,
            bodies: self.bodies,
            redact_auth: self.redact_auth,
            max_bytes_per_session: (self.max_bytes_per_session != 0)
                .then_some(self.max_bytes_per_session),
            clients,
            upstreams,
            ports: self.ports.clone(),
            queue_bytes: self.queue_bytes,
            max_total_bytes: (self.max_total_bytes != 0).then_some(self.max_total_bytes),
            flush_interval: Duration::from_secs(1),
        })
    }
}

impl CaptureConfig {
    /// A default configuration writing to `path` (tests, `--pcap PATH`).
    pub fn for_path(path: impl Into<String>) -> Result<CaptureConfig, String> {
        CaptureSection {
            enabled: true,
            path: path.into(),
            ..Default::default()
        }
        .resolve("capture")
    }

    /// True if the filters select this session.
    pub fn selects(&self, flow: &FlowInfo) -> bool {
        let c =
            self.clients.is_empty() || self.clients.iter().any(|n| n.contains(flow.client.ip()));
        let u = self.upstreams.is_empty()
            || self
                .upstreams
                .iter()
                .any(|n| n.contains(flow.upstream.ip()));
        let p = self.ports.is_empty()
            || self.ports.contains(&flow.upstream.port())
            || self.ports.contains(&flow.proxy_listen.port());
        c && u && p
    }
}

/// The addresses of one proxied session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowInfo {
    /// The session.
    pub session: SessionId,
    /// The SMTP client's address.
    pub client: SocketAddr,
    /// The address the client connected to (the proxy's listener).
    pub proxy_listen: SocketAddr,
    /// The proxy's local address on the upstream connection, if known.
    pub proxy_upstream_local: Option<SocketAddr>,
    /// The SMTP server's address.
    pub upstream: SocketAddr,
    /// When the client connected (the handshake is written at this time).
    pub opened: Timestamp,
}

/// Counters returned by [`Capture::shutdown`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CaptureStats {
    /// Sessions selected by the filters.
    pub sessions: u64,
    /// Files opened.
    pub files: u64,
    /// Frames written.
    pub frames_written: u64,
    /// Bytes written to files (all blocks).
    pub bytes_written: u64,
    /// Frames dropped because the queue was full.
    pub frames_dropped: u64,
    /// Bytes dropped because the queue was full (frame bytes plus
    /// [`FRAME_OVERHEAD`] per frame, the unit of the queue budget).
    pub bytes_dropped: u64,
    /// Frames discarded after a write error.
    pub frames_discarded: u64,
    /// Write errors (at most 1: writing stops at the first).
    pub errors: u64,
}

/// A cheap-to-clone handle on the capture writer.
#[derive(Clone)]
pub struct Capture {
    cfg: Arc<CaptureConfig>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture").field("cfg", &self.cfg).finish()
    }
}

impl Capture {
    /// Starts the writer thread. Fails if the path cannot be written: a
    /// per-run file is created now; for per-session files the directory is
    /// created if needed and probed with a temporary file. A disk that fills
    /// up later is reported as a `capture.error` event instead.
    pub fn start(cfg: CaptureConfig) -> Result<Capture, CaptureError> {
        let cfg = Arc::new(cfg);
        let shared = writer::spawn(cfg.clone())?;
        Ok(Capture { cfg, shared })
    }

    /// The configuration in force.
    pub fn config(&self) -> &CaptureConfig {
        &self.cfg
    }

    /// A new session, written from [`FlowInfo::opened`] on; `None` if the
    /// filters exclude it. Never blocks.
    pub fn session(&self, flow: FlowInfo) -> Option<SessionCapture> {
        if !self.cfg.selects(&flow) {
            return None;
        }
        self.shared.stats.sessions.fetch_add(1, Ordering::Relaxed);
        let mut legs = Vec::new();
        match self.cfg.legs {
            Legs::ClientView => legs.push(TcpFlow::new(flow.client, flow.upstream, flow.session)),
            Legs::Both | Legs::Intercept => {
                let local = flow.proxy_upstream_local.unwrap_or_else(|| {
                    SocketAddr::new(flow::unspecified_like(flow.upstream.ip()), 0)
                });
                legs.push(TcpFlow::new(flow.client, flow.proxy_listen, flow.session));
                legs.push(TcpFlow::new(local, flow.upstream, flow.session ^ 0x5555));
            }
        }
        self.shared.send_control(Msg::Open {
            session: flow.session,
            opened: flow.opened,
        });
        let mut s = SessionCapture {
            id: flow.session,
            cfg: self.cfg.clone(),
            shared: self.shared.clone(),
            legs,
            payload: 0,
            truncated: false,
            pending_comments: Vec::new(),
            dropped_frames: 0,
            dropped_bytes: 0,
            unreported_frames: 0,
            unreported_bytes: 0,
            skipped: [0, 0],
            events: Vec::new(),
            closed: false,
            decrypted: (self.cfg.legs == Legs::Intercept)
                .then(|| TcpFlow::new(flow.client, flow.upstream, flow.session ^ 0xaaaa)),
            decrypted_open: false,
        };
        let mut frames = Vec::new();
        for (i, leg) in s.legs.iter_mut().enumerate() {
            let mut f = Vec::new();
            leg.handshake(flow.opened, &mut f);
            frames.extend(tag(i, f));
        }
        s.send(frames);
        Some(s)
    }

    /// Drains the writer's events (file opened/rotated/closed, errors), each
    /// with its session id (0 for events that concern no session). Bounded:
    /// at most 1024 are kept between calls.
    pub fn take_events(&self) -> Vec<Event> {
        self.shared.take_events()
    }

    /// Reopens the files (SIGHUP, logrotate's convention): every open file
    /// that was renamed or removed is closed and a fresh one is opened at
    /// its path; files still in place go on. Never blocks.
    pub fn reopen(&self) {
        self.shared.send_control(Msg::Reopen);
    }

    /// Counters so far.
    pub fn stats(&self) -> CaptureStats {
        self.shared.stats.snapshot()
    }

    /// Flushes everything, closes the files and stops the writer thread
    /// (SIGTERM path). Blocking: waits for the queue to drain (bounded by
    /// `queue_bytes`); from async code call it in `spawn_blocking`. Other
    /// clones of the handle become inert (their calls write nothing).
    /// Dropping every handle and session without calling this also makes the
    /// thread write what is queued, close its files and exit, in the background.
    pub fn shutdown(self) -> CaptureStats {
        self.shared.shutdown();
        self.shared.stats.snapshot()
    }
}

fn tag(leg: usize, frames: Vec<Frame>) -> impl Iterator<Item = WFrame> {
    let iface = u32::try_from(leg).unwrap_or(0);
    frames.into_iter().map(move |f| WFrame {
        iface,
        ts: f.ts,
        data: f.data,
        comments: Vec::new(),
    })
}

/// One session's capture: frames are built here (in the caller's task) and
/// queued to the writer. No method blocks.
pub struct SessionCapture {
    id: SessionId,
    cfg: Arc<CaptureConfig>,
    shared: Arc<Shared>,
    /// Client view: one flow. Both legs: `[client-leg, upstream-leg]`.
    legs: Vec<TcpFlow>,
    /// Payload bytes written so far (for the cap).
    payload: u64,
    /// The cap was reached.
    truncated: bool,
    /// Comments waiting for the next frame of this session.
    pending_comments: Vec<String>,
    /// Totals dropped for queue full (reported at close).
    dropped_frames: u64,
    dropped_bytes: u64,
    /// Dropped since the last comment in the file.
    unreported_frames: u64,
    unreported_bytes: u64,
    /// Bytes skipped per side (`[client, server]`) not yet noted in a comment.
    skipped: [u64; 2],
    /// Session-side events waiting for `take_events`.
    events: Vec<CaptureEvent>,
    closed: bool,
    /// Intercept mode: the decrypted SMTP, client ↔ upstream (interface 2).
    decrypted: Option<TcpFlow>,
    /// Its handshake was written (at its first bytes).
    decrypted_open: bool,
}

impl std::fmt::Debug for SessionCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionCapture")
            .field("id", &self.id)
            .finish()
    }
}

impl SessionCapture {
    /// What the caller must do before handing bytes in:
    /// `(bodies, redact_auth)` of the configuration.
    pub fn policy(&self) -> (bool, bool) {
        (self.cfg.bodies, self.cfg.redact_auth)
    }

    /// The session id.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// `side` sent `bytes` at `ts` (already redacted by the caller if
    /// `redact_auth`). Data beyond `max_bytes_per_session` is not written.
    pub fn data(&mut self, side: Side, ts: Timestamp, bytes: &[u8]) {
        if bytes.is_empty() || self.closed || self.shared.is_failed() {
            return;
        }
        let mut write_len = bytes.len();
        if let Some(limit) = self.cfg.max_bytes_per_session {
            let room = limit.saturating_sub(self.payload);
            if room < bytes.len() as u64 {
                // room < bytes.len() fits usize.
                write_len = usize::try_from(room).unwrap_or(0);
            }
        }
        let (head, tail) = bytes.split_at(write_len.min(bytes.len()));
        if !head.is_empty() {
            self.payload = self.payload.saturating_add(head.len() as u64);
            let frames = self.build(|leg, out| leg.data(side, ts, head, out), side);
            if tail.is_empty() {
                self.send(frames);
            } else {
                self.truncate_with(frames);
            }
        } else if !tail.is_empty() && !self.truncated {
            self.truncate_with(Vec::new());
        }
        if !tail.is_empty() {
            for leg in &mut self.legs {
                leg.skip(side, tail.len());
            }
        }
    }

    /// `len` bytes crossed from `side` but are not written (DATA/BDAT payload
    /// with `bodies = false`): sequence numbers still advance, and a comment
    /// on the next frame says how many bytes were left out.
    pub fn skip(&mut self, side: Side, ts: Timestamp, len: usize) {
        let _ = ts;
        if len == 0 || self.closed {
            return;
        }
        for leg in &mut self.legs {
            leg.skip(side, len);
        }
        let i = usize::from(side == Side::Server);
        if let Some(n) = self.skipped.get_mut(i) {
            *n = n.saturating_add(len as u64);
        }
    }

    /// `side` closed its direction at `ts`: [`CloseKind::Fin`] writes a FIN
    /// (and the peer's ACK), [`CloseKind::Rst`] an RST, [`CloseKind::Open`]
    /// nothing. Call as it happens; a second call for the same side is ignored.
    pub fn end(&mut self, side: Side, ts: Timestamp, how: CloseKind) {
        if self.closed {
            return;
        }
        let frames = match how {
            CloseKind::Fin => self.build(|leg, out| leg.fin(side, ts, out), side),
            CloseKind::Rst => self.build(|leg, out| leg.rst(side, ts, out), side),
            CloseKind::Open => return,
        };
        self.send(frames);
    }

    /// Adds a comment to the capture (e.g. `observer stopped: …`), attached to
    /// the next frame of this session (or to a pure ACK written at close).
    /// At most [`MAX_PENDING_COMMENTS`] wait at a time; later ones are dropped.
    pub fn comment(&mut self, text: &str) {
        if !self.closed && self.pending_comments.len() < MAX_PENDING_COMMENTS {
            self.pending_comments.push(pcapng::clamp_comment(text));
        }
    }

    /// Intercept mode: bytes `side` sent on one wire leg only (`leg` 0: the
    /// client leg, 1: the upstream leg), each leg carrying its own TLS session.
    pub fn leg_data(&mut self, leg: usize, side: Side, ts: Timestamp, bytes: &[u8]) {
        if bytes.is_empty() || self.closed || self.shared.is_failed() {
            return;
        }
        let Some(flow) = self.legs.get_mut(leg) else {
            return;
        };
        if let Some(limit) = self.cfg.max_bytes_per_session {
            if self.payload.saturating_add(bytes.len() as u64) > limit {
                flow.skip(side, bytes.len());
                if !self.truncated {
                    self.truncate_with(Vec::new());
                }
                return;
            }
        }
        self.payload = self.payload.saturating_add(bytes.len() as u64);
        let mut f = Vec::new();
        flow.data(side, ts, bytes, &mut f);
        let frames = tag(leg, f).collect();
        self.send(frames);
    }

    /// Intercept mode: `side` closed one wire leg (`leg` as in [`Self::leg_data`]).
    pub fn leg_end(&mut self, leg: usize, side: Side, ts: Timestamp, how: CloseKind) {
        if self.closed {
            return;
        }
        let Some(flow) = self.legs.get_mut(leg) else {
            return;
        };
        let mut f = Vec::new();
        match how {
            CloseKind::Fin => flow.fin(side, ts, &mut f),
            CloseKind::Rst => flow.rst(side, ts, &mut f),
            CloseKind::Open => return,
        }
        let frames = tag(leg, f).collect();
        self.send(frames);
    }

    /// Whether this capture writes intercept mode's decrypted flow.
    pub fn has_decrypted(&self) -> bool {
        self.decrypted.is_some()
    }

    /// Intercept mode: decrypted SMTP sent by `side` (already redacted by
    /// the caller, like [`Self::data`]); `skip`: that many bytes are left out
    /// instead (a body). The flow's handshake is written at its first bytes.
    pub fn decrypted_data(&mut self, side: Side, ts: Timestamp, bytes: &[u8], skip: usize) {
        if self.closed || self.shared.is_failed() {
            return;
        }
        let idx = self.legs.len();
        let Some(flow) = self.decrypted.as_mut() else {
            return;
        };
        let mut f = Vec::new();
        if !self.decrypted_open {
            self.decrypted_open = true;
            flow.handshake(ts, &mut f);
        }
        if skip > 0 {
            flow.skip(side, skip);
            let i = usize::from(side == Side::Server);
            if let Some(n) = self.skipped.get_mut(i) {
                *n = n.saturating_add(skip as u64);
            }
        }
        if !bytes.is_empty() {
            let over = self
                .cfg
                .max_bytes_per_session
                .is_some_and(|l| self.payload.saturating_add(bytes.len() as u64) > l);
            if over {
                flow.skip(side, bytes.len());
            } else {
                self.payload = self.payload.saturating_add(bytes.len() as u64);
                flow.data(side, ts, bytes, &mut f);
            }
        }
        let frames = tag(idx, f).collect();
        self.send(frames);
    }

    /// Intercept mode: `side` ended the decrypted conversation (its TLS close).
    pub fn decrypted_end(&mut self, side: Side, ts: Timestamp, how: CloseKind) {
        if self.closed || !self.decrypted_open {
            return;
        }
        let idx = self.legs.len();
        let Some(flow) = self.decrypted.as_mut() else {
            return;
        };
        let mut f = Vec::new();
        match how {
            CloseKind::Fin => flow.fin(side, ts, &mut f),
            CloseKind::Rst => flow.rst(side, ts, &mut f),
            CloseKind::Open => return,
        }
        let frames = tag(idx, f).collect();
        self.send(frames);
    }

    /// Queues an NSS key log (`CLIENT_RANDOM …` lines) to be written as a
    /// pcapng Decryption Secrets Block before this session's next frames, so
    /// Wireshark decrypts the session with no extra step.
    pub fn tls_secrets(&mut self, keylog: &[u8]) {
        if keylog.is_empty() || self.closed {
            return;
        }
        let cost = keylog.len();
        if self.shared.reserve(cost) {
            self.shared.send_data(Msg::Secrets {
                session: self.id,
                keylog: keylog.to_vec(),
                cost,
            });
        }
    }

    /// Session-side events since the last call (`capture.truncated`).
    pub fn take_events(&mut self) -> Vec<CaptureEvent> {
        std::mem::take(&mut self.events)
    }

    /// Ends the session's capture at `ts`: pending comments are written (on a
    /// pure ACK if needed), the file is flushed (and closed if per-session).
    /// Sides not ended with [`Self::end`] stay open. Returns the session's
    /// remaining events, including `capture.dropped` if frames were dropped.
    pub fn close(mut self, ts: Timestamp) -> Vec<CaptureEvent> {
        self.finish(ts);
        std::mem::take(&mut self.events)
    }

    fn finish(&mut self, ts: Timestamp) {
        if self.closed {
            return;
        }
        if !self.pending_comments.is_empty() || self.unreported_frames > 0 || self.skipped != [0, 0]
        {
            let frames = self.build(|leg, out| leg.ack_from(Side::Client, ts, out), Side::Client);
            self.send(frames);
        }
        if self.dropped_frames > 0 {
            self.events.push(CaptureEvent::Dropped {
                frames: self.dropped_frames,
                bytes: self.dropped_bytes,
                reason: "queue full".to_string(),
            });
        }
        self.closed = true;
        self.shared.send_control(Msg::Close { session: self.id });
    }

    /// Runs `f` on each leg in the order bytes from `side` travel (client
    /// data: client leg then upstream leg; server data: the reverse).
    fn build(
        &mut self,
        mut f: impl FnMut(&mut TcpFlow, &mut Vec<Frame>),
        side: Side,
    ) -> Vec<WFrame> {
        let n = self.legs.len();
        let mut out = Vec::new();
        for k in 0..n {
            let i = if side == Side::Server { n - 1 - k } else { k };
            if let Some(leg) = self.legs.get_mut(i) {
                let mut frames = Vec::new();
                f(leg, &mut frames);
                out.extend(tag(i, frames));
            }
        }
        out
    }

    fn truncate_with(&mut self, mut frames: Vec<WFrame>) {
        if self.truncated {
            self.send(frames);
            return;
        }
        self.truncated = true;
        let limit = self.cfg.max_bytes_per_session.unwrap_or(0);
        let text = format!(
            "smtptap: capture of this session truncated at {limit} payload bytes (capture.max_bytes_per_session); later data is not in this file"
        );
        if let Some(last) = frames.last_mut() {
            last.comments.push(text);
        } else {
            self.pending_comments.push(text);
        }
        self.events.push(CaptureEvent::Truncated { limit });
        self.send(frames);
    }

    fn send(&mut self, mut frames: Vec<WFrame>) {
        if frames.is_empty() || self.shared.is_failed() {
            return;
        }
        // Frame bytes plus bookkeeping, so that a flood of tiny frames is
        // bounded by the budget as well as a few large ones.
        let cost: usize = frames
            .iter()
            .map(|f| {
                f.data.len() + FRAME_OVERHEAD + f.comments.iter().map(String::len).sum::<usize>()
            })
            .sum();
        if !self.shared.reserve(cost) {
            let n = frames.len() as u64;
            self.dropped_frames += n;
            self.dropped_bytes += cost as u64;
            self.unreported_frames += n;
            self.unreported_bytes += cost as u64;
            self.shared
                .stats
                .frames_dropped
                .fetch_add(n, Ordering::Relaxed);
            self.shared
                .stats
                .bytes_dropped
                .fetch_add(cost as u64, Ordering::Relaxed);
            return;
        }
        if let Some(first) = frames.first_mut() {
            if self.unreported_frames > 0 {
                first.comments.push(format!(
                    "smtptap: {} frames ({} bytes) of this session were dropped before this one: the disk could not keep up (capture queue full)",
                    self.unreported_frames, self.unreported_bytes
                ));
                self.unreported_frames = 0;
                self.unreported_bytes = 0;
            }
            for (side, n) in [
                (Side::Client, self.skipped[0]),
                (Side::Server, self.skipped[1]),
            ] {
                if n > 0 {
                    first.comments.push(format!(
                        "smtptap: {n} bytes sent by the {side} before this frame are not in this capture (message body left out: capture.bodies = false)"
                    ));
                }
            }
            self.skipped = [0, 0];
            first.comments.append(&mut self.pending_comments);
        }
        self.shared.send_data(Msg::Frames {
            session: self.id,
            frames,
            cost,
        });
    }
}

impl Drop for SessionCapture {
    fn drop(&mut self) {
        self.finish(Timestamp::now());
    }
}
