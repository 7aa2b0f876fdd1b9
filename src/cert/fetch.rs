//! Fetching a CRL over plain HTTP (`check_revocation = true`): a tiny
//! HTTP/1.0 GET with timeouts and a size cap, blocking (call it from a
//! blocking thread). CRL distribution points are `http://` by convention
//! (RFC 5280 §4.2.1.13), so no TLS client is needed. Nothing else here.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Largest CRL accepted (bytes).
pub const MAX_CRL: usize = 20 * 1024 * 1024;

/// GETs `url` (`http://host[:port]/path`) and returns the CRL(s) as DER.
/// Errors are one line, fit for an event.
pub fn fetch_crl(url: &str, timeout: Duration) -> Result<Vec<Vec<u8>>, String> {
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
            last = format!("timed out after {}s", timeout.as_secs());
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
    let mut resp = Vec::new();
    s.take(MAX_CRL as u64 + 64 * 1024)
        .read_to_end(&mut resp)
        .map_err(|e| format!("reading the response: {e}"))?;
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
    let ders = super::crl_ders(body);
    if ders.is_empty() {
        return Err(format!("the response ({} bytes) is not a CRL", body.len()));
    }
    Ok(ders)
}
