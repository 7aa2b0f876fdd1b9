//! The facts a driver feeds the session core besides bytes: how each
//! direction of the connection ended, why the upstream could not be reached,
//! and what a requested CRL fetch returned. These are the core's vocabulary;
//! drivers (the live relay, later the probe and the capture reader) build
//! them. Nothing here does I/O.

/// How one direction of a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirEnd {
    /// The sender closed cleanly (FIN), and it was passed on.
    Fin,
    /// Reading from the sender or writing to the receiver failed.
    Error {
        /// A stable code (`reset`, `broken_pipe`, `timeout`, `other`).
        code: &'static str,
        /// The words.
        detail: String,
    },
    /// The session went idle too long.
    Idle,
    /// The proxy was shutting down and the drain timeout passed.
    Aborted,
    /// Ended because the other direction failed.
    PeerFailed,
    /// The proxy closed the session because a deadline passed: the client
    /// did not finish a line within `limits.line_timeout_secs`
    /// (`which` = `line_timeout`), or the session outlived
    /// `limits.session_timeout_secs` (`session_timeout`).
    Deadline {
        /// `line_timeout` or `session_timeout`.
        which: &'static str,
        /// What happened, in words.
        detail: String,
    },
}

impl DirEnd {
    /// A short word for logs: `fin`, `error`, `idle`, `aborted`,
    /// `peer_failed`, `line_timeout`, `session_timeout`.
    pub fn word(&self) -> &'static str {
        match self {
            DirEnd::Fin => "fin",
            DirEnd::Error { .. } => "error",
            DirEnd::Idle => "idle",
            DirEnd::Aborted => "aborted",
            DirEnd::PeerFailed => "peer_failed",
            DirEnd::Deadline { which, .. } => which,
        }
    }

    /// An error end from an I/O error, with `what` saying where it happened.
    pub fn io(what: &str, e: &std::io::Error) -> DirEnd {
        DirEnd::Error {
            code: crate::event::io_error_code(e),
            detail: format!("{what}: {e}"),
        }
    }
}

/// How a session's connection ended: each direction, and the bytes moved.
#[derive(Debug, Clone)]
pub struct Ends {
    /// Client → server direction.
    pub client_end: DirEnd,
    /// Server → client direction.
    pub server_end: DirEnd,
    /// Bytes the client sent (and the server received).
    pub client_bytes: u64,
    /// Bytes the server sent (and the client received).
    pub server_bytes: u64,
}

impl Ends {
    /// Both directions aborted, nothing moved (a driver that lost track).
    pub fn aborted() -> Self {
        Ends {
            client_end: DirEnd::Aborted,
            server_end: DirEnd::Aborted,
            client_bytes: 0,
            server_bytes: 0,
        }
    }

    /// `session.close`'s `reason`. `quit_answered`: the server answered the
    /// client's QUIT with 221, so the conversation was over; a reset or a
    /// broken pipe after that is how many MTAs end a connection, and the
    /// session `completed` (the socket error stays in `error`/`detail`).
    pub fn reason(&self, quit_answered: bool) -> &'static str {
        let ends = [&self.client_end, &self.server_end];
        if let Some(which) = ends.iter().find_map(|e| match e {
            DirEnd::Deadline { which, .. } => Some(*which),
            _ => None,
        }) {
            which
        } else if ends.iter().any(|e| **e == DirEnd::Idle) {
            "idle_timeout"
        } else if ends.iter().any(|e| **e == DirEnd::Aborted) {
            "shutdown"
        } else if ends.iter().any(|e| matches!(e, DirEnd::Error { .. }))
            && !(quit_answered && self.only_resets())
        {
            "error"
        } else {
            "completed"
        }
    }

    /// Every socket error is a reset or a broken pipe (the peer went away),
    /// not a timeout or anything else.
    fn only_resets(&self) -> bool {
        [&self.client_end, &self.server_end]
            .iter()
            .all(|e| match e {
                DirEnd::Error { code, .. } => matches!(*code, "reset" | "broken_pipe"),
                _ => true,
            })
    }

    /// The first socket error, as (code, words); else the deadline that
    /// closed the session (`line_timeout`/`session_timeout`, words).
    pub fn error(&self) -> Option<(&'static str, String)> {
        let ends = [&self.client_end, &self.server_end];
        ends.iter()
            .find_map(|e| match e {
                DirEnd::Error { code, detail } => Some((*code, detail.clone())),
                _ => None,
            })
            .or_else(|| {
                ends.iter().find_map(|e| match e {
                    DirEnd::Deadline { which, detail } => Some((*which, detail.clone())),
                    _ => None,
                })
            })
    }
}

/// Why the upstream could not be reached, with every address tried.
#[derive(Debug, Clone)]
pub struct UpstreamFailure {
    /// A stable code: `refused`, `timeout`, `resolve`, `unreachable`,
    /// `local_resources`, `loop`, `no_original_dst`, `other`.
    pub code: &'static str,
    /// A one-line reason (`Connection refused (os error 111)`, `timed out after 10s`).
    pub detail: String,
    /// Each address tried and what happened (`192.0.2.1:25: connection refused`).
    pub tried: Vec<String>,
}

/// Identifies one request of one session, to match its result.
pub type RequestId = u64;

/// Work the core must not do itself (it does no I/O): the driver does it and
/// feeds the result back ([`super::SessionAnalyzer::crls_fetched`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Fetch these CRL distribution points (`tls.check_revocation`), all
    /// within one budget, and answer with one [`CrlOutcome`] per URL.
    FetchCrls {
        /// Echo it back with the results.
        id: RequestId,
        /// At most [`super::revocation::MAX_CRL_URLS`] `http://` URLs, in chain order.
        urls: Vec<String>,
    },
    /// TLS 1.3 hid the server's certificate (`tls.side_probe = true`): make
    /// a connection of our own to `addr` (EHLO `ehlo`, STARTTLS unless
    /// `implicit_tls`, a TLS handshake with `sni`), record the chain the
    /// server presents, QUIT, and answer with
    /// [`super::SessionAnalyzer::side_probe_done`]. Never on the client's
    /// path; a cached recent result for the same address and SNI will do.
    SideProbe {
        /// Echo it back with the result.
        id: RequestId,
        /// The upstream address this session is connected to.
        addr: std::net::SocketAddr,
        /// The client's SNI, if it sent one.
        sni: Option<String>,
        /// The name the client said in EHLO, if any (the probe says the same).
        ehlo: Option<String>,
        /// TLS from the first byte (no STARTTLS).
        implicit_tls: bool,
    },
}

/// What a side-probe learnt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SideProbeTls {
    /// The negotiated version (`TLSv1.3`).
    pub version: String,
    /// The negotiated cipher suite (IANA name).
    pub cipher: String,
    /// The server's chain as presented, leaf first (DER).
    pub chain: Vec<Vec<u8>>,
}

/// Why a side-probe got no certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SideProbeError {
    /// A stable code: `refused`, `timeout`, `no_starttls`, `starttls_refused`,
    /// `handshake`, `rate_limited`, `not_smtp`, `other`.
    pub code: &'static str,
    /// The words.
    pub detail: String,
}

/// The answer to a [`Request::SideProbe`].
#[derive(Debug, Clone, PartialEq)]
pub struct SideProbeOutcome {
    /// The chain, or why not.
    pub result: Result<SideProbeTls, SideProbeError>,
    /// The result came from the cache (a probe made for another session).
    pub cached: bool,
    /// Seconds between the probe and now.
    pub age_s: f64,
}

/// Why a CRL could not be obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlError {
    /// A stable code: `refused`, `timeout`, `http_status`, `not_a_crl`,
    /// `bad_url`, `budget`, `other`.
    pub code: &'static str,
    /// The words.
    pub detail: String,
}

/// One fetched CRL distribution point.
#[derive(Debug, Clone)]
pub struct CrlOutcome {
    /// The URL, as requested.
    pub url: String,
    /// The CRL(s) as DER, or why not.
    pub result: Result<Vec<Vec<u8>>, CrlError>,
}
