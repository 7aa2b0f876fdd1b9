//! The side-probe: when a passthrough session's TLS 1.3 hides the server's
//! certificate, the session core asks for one ([`Request::SideProbe`]) and
//! this module makes smtptap's own connection to the same upstream address:
//! banner, EHLO (the client's name), STARTTLS (unless implicit TLS), a rustls
//! handshake with the client's SNI (TLS 1.2 and 1.3 offered, as current MTAs
//! do), QUIT. The chain the server presented there goes back to the core.
//!
//! ```text
//!  analysis ─────Request::SideProbe──▶ SideProbes::get (spawned task)
//!                                          ├─ cache hit (same address + SNI, fresh) ─▶ answer
//!                                          ├─ same probe in flight ─▶ wait for it
//!                                          ├─ rate limit reached ─▶ `rate_limited`
//!                                          └─ probe(): TCP, SMTP, rustls ─▶ cache ─▶ answer
//! ```
//!
//! It owns: the side-probe's socket and dialogue, its deadline, the cache
//! of results per (address, SNI), the in-flight de-duplication and the rate
//! limit (all bounded). It must not: touch the client's session (it runs in
//! its own task; the relay never waits for it), send anything beyond EHLO,
//! STARTTLS and QUIT, or judge the chain (the core does).
//!
//! [`Request::SideProbe`]: crate::session::Request::SideProbe

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::config::TlsSettings;
use crate::session::{SideProbeError, SideProbeOutcome, SideProbeTls};

/// Most results kept in the cache (expired ones go first, then the oldest).
const MAX_CACHED: usize = 4096;
/// Failures are kept at most this long, so a fixed server is seen soon.
const FAILURE_TTL: Duration = Duration::from_secs(60);
/// Most bytes of SMTP replies read in one side-probe.
const MAX_REPLY_BYTES: usize = 64 * 1024;

type Key = (SocketAddr, Option<String>);
type Result_ = Result<SideProbeTls, SideProbeError>;

#[derive(Default)]
struct State {
    done: HashMap<Key, (Instant, Result_)>,
    waiting: HashMap<Key, Vec<oneshot::Sender<(Instant, Result_)>>>,
    started: VecDeque<Instant>,
}

/// The run's side-probes: cache, in-flight table and rate limit.
pub struct SideProbes {
    ttl: Duration,
    per_minute: u32,
    timeout: Duration,
    state: Mutex<State>,
}

/// What to probe (from the core's request).
#[derive(Debug, Clone)]
pub struct Target {
    /// The upstream address.
    pub addr: SocketAddr,
    /// The client's SNI.
    pub sni: Option<String>,
    /// The client's EHLO name.
    pub ehlo: Option<String>,
    /// TLS from the first byte.
    pub implicit_tls: bool,
}

fn fail(code: &'static str, detail: impl Into<String>) -> SideProbeError {
    SideProbeError {
        code,
        detail: detail.into(),
    }
}

impl SideProbes {
    /// From the `[tls]` settings.
    pub fn new(tls: &TlsSettings) -> Self {
        SideProbes {
            ttl: tls.side_probe_cache,
            per_minute: tls.side_probe_per_minute,
            timeout: tls.side_probe_timeout,
            state: Mutex::new(State::default()),
        }
    }

    /// How long a caller should wait for [`SideProbes::get`] at most.
    pub fn deadline(&self) -> Duration {
        self.timeout + Duration::from_secs(2)
    }

    /// The chain of `t`'s server: cached, shared with a probe in flight, or
    /// probed now (within the rate limit).
    pub async fn get(self: Arc<Self>, t: Target) -> SideProbeOutcome {
        let key: Key = (t.addr, t.sni.clone());
        let now = Instant::now();
        let rx = {
            let Ok(mut st) = self.state.lock() else {
                return outcome(Err(fail("other", "internal state poisoned")), false, now);
            };
            if let Some((at, r)) = st.done.get(&key) {
                let ttl = if r.is_ok() {
                    self.ttl
                } else {
                    self.ttl.min(FAILURE_TTL)
                };
                if now.duration_since(*at) < ttl {
                    return outcome(r.clone(), true, *at);
                }
            }
            if let Some(w) = st.waiting.get_mut(&key) {
                let (tx, rx) = oneshot::channel();
                w.push(tx);
                Some(rx)
            } else {
                while st
                    .started
                    .front()
                    .is_some_and(|s| now.duration_since(*s) >= Duration::from_secs(60))
                {
                    st.started.pop_front();
                }
                if st.started.len() >= self.per_minute as usize {
                    return outcome(
                        Err(fail(
                            "rate_limited",
                            format!(
                                "more than {} side-probes in the last minute \
                                 (tls.side_probe_per_minute)",
                                self.per_minute
                            ),
                        )),
                        false,
                        now,
                    );
                }
                st.started.push_back(now);
                st.waiting.insert(key.clone(), Vec::new());
                None
            }
        };
        if let Some(rx) = rx {
            return match rx.await {
                Ok((at, r)) => outcome(r, true, at),
                Err(_) => outcome(Err(fail("other", "the side-probe task ended")), false, now),
            };
        }
        let r = match tokio::time::timeout(self.timeout, probe(&t)).await {
            Ok(r) => r,
            Err(_) => Err(fail(
                "timeout",
                format!(
                    "no certificate within {} s (tls.side_probe_timeout_secs)",
                    self.timeout.as_secs()
                ),
            )),
        };
        let at = Instant::now();
        if let Ok(mut st) = self.state.lock() {
            for tx in st.waiting.remove(&key).unwrap_or_default() {
                let _ = tx.send((at, r.clone()));
            }
            if st.done.len() >= MAX_CACHED {
                let ttl = self.ttl;
                st.done
                    .retain(|_, (when, _)| at.duration_since(*when) < ttl);
                if st.done.len() >= MAX_CACHED {
                    if let Some(old) = st
                        .done
                        .iter()
                        .min_by_key(|(_, (when, _))| *when)
                        .map(|(k, _)| k.clone())
                    {
                        st.done.remove(&old);
                    }
                }
            }
            st.done.insert(key, (at, r.clone()));
        }
        outcome(r, false, at)
    }
}

fn outcome(result: Result_, cached: bool, at: Instant) -> SideProbeOutcome {
    SideProbeOutcome {
        result,
        cached,
        age_s: Instant::now().saturating_duration_since(at).as_secs_f64(),
    }
}

/// One SMTP reply: its code and whether its lines name STARTTLS.
struct Reply {
    code: u16,
    starttls: bool,
}

/// Reads one (possibly multi-line) reply, bounded.
async fn reply<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    read: &mut usize,
) -> Result<Reply, SideProbeError> {
    let mut starttls = false;
    loop {
        while let Some(pos) = buf.windows(2).position(|w| w == b"\r\n") {
            let line: Vec<u8> = buf.drain(..pos + 2).collect();
            let text = String::from_utf8_lossy(&line[..pos]);
            let code = text.get(..3).and_then(|c| c.parse::<u16>().ok());
            let Some(code) = code else {
                return Err(fail(
                    "not_smtp",
                    format!(
                        "not an SMTP reply: {:?}",
                        text.chars().take(80).collect::<String>()
                    ),
                ));
            };
            if text
                .get(4..)
                .is_some_and(|c| c.trim().eq_ignore_ascii_case("STARTTLS"))
            {
                starttls = true;
            }
            if text.as_bytes().get(3) != Some(&b'-') {
                return Ok(Reply { code, starttls });
            }
        }
        if *read > MAX_REPLY_BYTES {
            return Err(fail("not_smtp", "SMTP replies longer than 64 KiB"));
        }
        let mut chunk = [0u8; 4096];
        let n = s
            .read(&mut chunk)
            .await
            .map_err(|e| fail(crate::event::io_error_code(&e), e.to_string()))?;
        if n == 0 {
            return Err(fail(
                "closed",
                "the server closed the connection while a reply was expected",
            ));
        }
        *read += n;
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn send<S: AsyncWrite + Unpin>(s: &mut S, line: &str) -> Result<(), SideProbeError> {
    let mut b = line.as_bytes().to_vec();
    b.extend_from_slice(b"\r\n");
    s.write_all(&b)
        .await
        .map_err(|e| fail(crate::event::io_error_code(&e), e.to_string()))
}

/// The EHLO argument: the client's name, else our address literal.
fn ehlo_name(t: &Target, local: Option<SocketAddr>) -> String {
    if let Some(n) = &t.ehlo {
        return n.clone();
    }
    match local.map(|l| l.ip()) {
        Some(std::net::IpAddr::V6(ip)) => format!("[IPv6:{ip}]"),
        Some(ip) => format!("[{ip}]"),
        None => "[127.0.0.1]".into(),
    }
}

/// One side-probe, without the deadline (the caller applies it).
pub async fn probe(t: &Target) -> Result<SideProbeTls, SideProbeError> {
    let mut tcp = TcpStream::connect(t.addr)
        .await
        .map_err(|e| fail(crate::event::io_error_code(&e), e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let mut buf = Vec::new();
    let mut read = 0usize;
    if !t.implicit_tls {
        let banner = reply(&mut tcp, &mut buf, &mut read).await?;
        if banner.code != 220 {
            return Err(fail(
                "not_smtp",
                format!("the banner was {} (not 220)", banner.code),
            ));
        }
        let name = ehlo_name(t, tcp.local_addr().ok());
        send(&mut tcp, &format!("EHLO {name}")).await?;
        let ehlo = reply(&mut tcp, &mut buf, &mut read).await?;
        if ehlo.code != 250 || !ehlo.starttls {
            let _ = send(&mut tcp, "QUIT").await;
            return Err(fail(
                "no_starttls",
                format!(
                    "the server did not offer STARTTLS to smtptap (EHLO reply {})",
                    ehlo.code
                ),
            ));
        }
        send(&mut tcp, "STARTTLS").await?;
        let go = reply(&mut tcp, &mut buf, &mut read).await?;
        if go.code != 220 {
            let _ = send(&mut tcp, "QUIT").await;
            return Err(fail(
                "starttls_refused",
                format!("STARTTLS was answered {}", go.code),
            ));
        }
    }
    let seen = Arc::new(Mutex::new(crate::probe::verify::Seen::default()));
    let cfg = crate::probe::verify::client_config(seen, None).map_err(|e| fail("other", e))?;
    let name = match t
        .sni
        .as_deref()
        .map(rustls::pki_types::ServerName::try_from)
    {
        Some(Ok(n)) => n.to_owned(),
        // No SNI (or one rustls cannot send): an IP address name sends none.
        _ => rustls::pki_types::ServerName::IpAddress(t.addr.ip().into()),
    };
    let mut tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .map_err(|e| fail("handshake", format!("TLS handshake: {e}")))?;
    let (version, cipher, chain) = {
        let c = tls.get_ref().1;
        let version = c
            .protocol_version()
            .map(|v| crate::tls::names::version_name(u16::from(v)))
            .unwrap_or_default();
        let cipher = c
            .negotiated_cipher_suite()
            .map(|s| crate::tls::names::suite_name(u16::from(s.suite())))
            .unwrap_or_default();
        let chain: Vec<Vec<u8>> = c
            .peer_certificates()
            .map(|cs| cs.iter().map(|d| d.as_ref().to_vec()).collect())
            .unwrap_or_default();
        (version, cipher, chain)
    };
    // A polite end; what the server says to it does not matter.
    if send(&mut tls, "QUIT").await.is_ok() {
        let mut sink = [0u8; 512];
        let _ = tokio::time::timeout(Duration::from_millis(500), tls.read(&mut sink)).await;
    }
    let _ = tokio::time::timeout(Duration::from_millis(500), tls.shutdown()).await;
    Ok(SideProbeTls {
        version,
        cipher,
        chain,
    })
}
