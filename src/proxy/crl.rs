//! The driver side of `check_revocation = true`: answers the session core's
//! [`Request::FetchCrls`](crate::session::Request) by fetching CRLs over
//! plain HTTP (a tiny HTTP/1.0 GET with a deadline and a size cap, blocking:
//! call it from a blocking thread), within one budget per chain, through a
//! run-wide cache bounded in entries and bytes. CRL distribution points are
//! `http://` by convention (RFC 5280 §4.2.1.13), so no TLS client is needed.
//! It touches sockets and the clock; the session core does neither.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::session::{CrlError, CrlOutcome};

/// How long a fetched CRL is reused; failures are retried sooner.
const CRL_TTL: Duration = Duration::from_secs(3600);
const CRL_RETRY: Duration = Duration::from_secs(300);
/// Most time one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Most time all CRL fetches for one certificate chain may take together.
pub const CRL_BUDGET: Duration = Duration::from_secs(10);
/// Most bytes of CRLs kept in the run's cache (beyond it, CRLs are fetched
/// again when needed rather than kept).
const CRL_CACHE_BYTES: usize = 64 * 1024 * 1024;
/// Most URLs cached.
const CRL_CACHE_ENTRIES: usize = 1000;

type Fetched = Result<Vec<Vec<u8>>, CrlError>;

/// The run's CRL cache: by URL, when fetched, and the result.
#[derive(Debug, Default)]
pub struct CrlCache {
    entries: Mutex<HashMap<String, (Instant, Fetched)>>,
}

fn fresh(when: Instant, r: &Fetched) -> bool {
    when.elapsed() < if r.is_ok() { CRL_TTL } else { CRL_RETRY }
}

fn size(r: &Fetched) -> usize {
    match r {
        Ok(d) => d.iter().map(Vec::len).sum(),
        Err(e) => e.detail.len(),
    }
}

impl CrlCache {
    /// Fetches (or takes from the cache) every URL of one chain, in order.
    /// Each fetch gets at most 5 s and all of them together at most
    /// [`CRL_BUDGET`], so a certificate naming many slow CRL servers holds
    /// its session for a bounded time. Blocking.
    pub fn fetch_chain(&self, urls: &[String]) -> Vec<CrlOutcome> {
        let budget_end = Instant::now() + CRL_BUDGET;
        urls.iter()
            .map(|url| {
                let cached = self.entries.lock().ok().and_then(|c| {
                    c.get(url)
                        .and_then(|(when, r)| fresh(*when, r).then(|| r.clone()))
                });
                let result = match cached {
                    Some(r) => r,
                    None if Instant::now() >= budget_end => Err(CrlError {
                        code: "budget",
                        detail: format!(
                            "not fetched: this chain's CRL fetches already took {} s",
                            CRL_BUDGET.as_secs()
                        ),
                    }),
                    None => {
                        let timeout = budget_end
                            .saturating_duration_since(Instant::now())
                            .min(FETCH_TIMEOUT);
                        let r = fetch_crl(url, timeout).map_err(|detail| CrlError {
                            code: error_code(&detail),
                            detail,
                        });
                        self.store(url, &r);
                        r
                    }
                };
                CrlOutcome {
                    url: url.clone(),
                    result,
                }
            })
            .collect()
    }

    /// Caches a result, bounded in entries and bytes (CRLs can be large and
    /// their URLs come from peers' certificates).
    fn store(&self, url: &str, r: &Fetched) {
        if let Ok(mut c) = self.entries.lock() {
            c.retain(|_, (when, r)| fresh(*when, r));
            let held: usize = c.values().map(|(_, r)| size(r)).sum();
            if c.len() < CRL_CACHE_ENTRIES && held + size(r) <= CRL_CACHE_BYTES {
                c.insert(url.to_string(), (Instant::now(), r.clone()));
            }
        }
    }
}

/// The stable code of one of [`fetch_crl`]'s messages (all written below).
fn error_code(detail: &str) -> &'static str {
    if detail.contains("control characters")
        || detail.starts_with("only http://")
        || detail.starts_with("bad port")
        || detail.starts_with("no host")
    {
        "bad_url"
    } else if detail.contains("timed out") {
        "timeout"
    } else if detail.starts_with("HTTP status") || detail.starts_with("no HTTP response") {
        "http_status"
    } else if detail.contains("not a CRL")
        || detail.contains("the response (")
        || detail.starts_with("CRL larger")
    {
        "not_a_crl"
    } else if detail.contains("refused") {
        "refused"
    } else {
        "other"
    }
}

/// Largest CRL accepted (bytes).
pub const MAX_CRL: usize = 20 * 1024 * 1024;

/// GETs `url` (`http://host[:port]/path`) and returns the CRL(s) as DER.
/// Errors are one line, fit for an event.
pub fn fetch_crl(url: &str, timeout: Duration) -> Result<Vec<Vec<u8>>, String> {
    // The URL comes from a certificate a peer sent: nothing in it may end up
    // as an extra line of the request.
    if url.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err("the URL contains spaces or control characters: not fetched".into());
    }
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| "only http:// CRL locations are fetched".to_string())?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(']') || h.ends_with(']') => (
            h.trim_start_matches('[').trim_end_matches(']'),
            p.parse::<u16>().map_err(|_| format!("bad port in {url}"))?,
        ),
        _ => (authority, 80),
    };
    if host.is_empty() {
        return Err(format!("no host in {url}"));
    }
    let deadline = Instant::now() + timeout;
    let addrs: Vec<_> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    let mut last = format!("no address for {host}");
    let mut stream = None;
    for a in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            last = format!("timed out after {:.1}s", timeout.as_secs_f64());
            break;
        }
        match TcpStream::connect_timeout(&a, left) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = format!("{a}: {e}"),
        }
    }
    let mut s = stream.ok_or(last)?;
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    s.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(left)).map_err(|e| e.to_string())?;
    let req = format!(
        "GET {path} HTTP/1.0\r\nHost: {authority}\r\nUser-Agent: smtptap\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .map_err(|e| format!("sending the request: {e}"))?;
    // The timeout bounds the whole fetch, not each read: a server trickling
    // a byte at a time is cut off at the deadline.
    let cap = MAX_CRL + 64 * 1024;
    let mut resp = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "timed out after {:.1}s ({} bytes received)",
                timeout.as_secs_f64(),
                resp.len()
            ));
        }
        s.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                resp.extend_from_slice(buf.get(..n).unwrap_or_default());
                if resp.len() > cap {
                    return Err(format!("CRL larger than {MAX_CRL} bytes"));
                }
            }
            // The read timeout (the time left) ran out: the loop's deadline
            // check reports it. Linux says WouldBlock here, others TimedOut.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::Interrupted
                        | std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(format!("reading the response: {e}")),
        }
    }
    let head_end = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| "no HTTP response header".to_string())?;
    let head = String::from_utf8_lossy(&resp[..head_end]);
    let status = head.lines().next().unwrap_or("");
    let code = status.split_whitespace().nth(1).unwrap_or("");
    if code != "200" {
        return Err(format!("HTTP status: {status}"));
    }
    let body = &resp[head_end + 4..];
    if body.len() > MAX_CRL {
        return Err(format!("CRL larger than {MAX_CRL} bytes"));
    }
    let ders = crate::cert::crl_ders(body);
    if ders.is_empty() {
        return Err(format!("the response ({} bytes) is not a CRL", body.len()));
    }
    // Only what parses as a CRL counts (and is cached) as one.
    if let Some(e) = ders.iter().find_map(|d| crate::cert::parse_crl(d).err()) {
        return Err(format!("the response ({} bytes) is {e}", body.len()));
    }
    Ok(ders)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn urls_with_spaces_or_line_breaks_are_not_fetched() {
        for url in [
            "http://127.0.0.1:9/a.crl\r\nX-Injected: 1",
            "http://127.0.0.1:9/a b.crl",
            "http://127.0.0.1:9/a\t.crl",
        ] {
            let e = fetch_crl(url, Duration::from_secs(1)).unwrap_err();
            assert!(e.contains("control characters"), "{url:?}: {e}");
        }
    }

    /// A one-connection HTTP server on loopback: reads the request, then
    /// sends `response` in `piece`-byte writes `pause` apart. Returns the URL
    /// of `path` on it and the server thread.
    fn serve(
        path: &str,
        response: Vec<u8>,
        piece: usize,
        pause: Duration,
    ) -> (String, std::thread::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}{path}", l.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut req = [0u8; 1024];
            let _ = s.read(&mut req);
            for p in response.chunks(piece) {
                if s.write_all(p).is_err() {
                    return;
                }
                std::thread::sleep(pause);
            }
        });
        (url, server)
    }

    /// A server that sends one byte every 50 ms never trips a per-read
    /// timeout; the whole fetch still ends at its deadline.
    #[test]
    fn a_trickling_server_is_cut_off_at_the_deadline() {
        let mut response = b"HTTP/1.0 200 OK\r\n\r\n".to_vec();
        response.extend([0x30u8; 200]);
        let (url, server) = serve("/slow.crl", response, 1, Duration::from_millis(50));
        let e = fetch_crl(&url, Duration::from_secs(1)).unwrap_err();
        assert!(e.starts_with("timed out after 1.0s"), "{e}");
        server.join().unwrap();
    }

    #[test]
    fn every_message_has_a_code() {
        for (detail, code) in [
            (
                "the URL contains spaces or control characters: not fetched",
                "bad_url",
            ),
            ("only http:// CRL locations are fetched", "bad_url"),
            ("timed out after 1.0s (3 bytes received)", "timeout"),
            ("HTTP status: HTTP/1.1 404 Not Found", "http_status"),
            ("the response (12 bytes) is not a CRL", "not_a_crl"),
            ("127.0.0.1:9: Connection refused (os error 111)", "refused"),
            ("reading the response: oops", "other"),
        ] {
            assert_eq!(error_code(detail), code, "{detail}");
        }
    }

    /// DER-looking bytes that are not a CRL are an error, not a CRL.
    #[test]
    fn der_garbage_is_not_a_crl() {
        let response = b"HTTP/1.0 200 OK\r\n\r\n\x30\x03\x02\x01\x00".to_vec();
        let (url, server) = serve("/garbage.crl", response, 1024, Duration::ZERO);
        let e = fetch_crl(&url, Duration::from_secs(5)).unwrap_err();
        assert!(e.contains("is not a valid CRL"), "{e}");
        server.join().unwrap();
    }
}
