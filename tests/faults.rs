//! Fault tests (issue 12 §2): peers and conditions that try to break the
//! relay. Real sockets on loopback, an in-test SMTP sink that hashes every
//! message it accepts, and in every case: the other sessions complete, no
//! accepted message is lost or altered (hash at the source and the sink), and
//! no client is told a message was accepted that was not. Assertions are on
//! the reasons smtptap reports, not on timing; every wait is bounded.

mod common;

use std::collections::HashSet;
use std::io::Read;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{named, temp_dir, TestProxy};
use rand::{RngCore, SeedableRng};
use serde_json::Value;
use sha2::{Digest, Sha256};
use smtptap::event::Event;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(60);

fn hex(d: impl AsRef<[u8]>) -> String {
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------
// A buffered SMTP connection (both ends of the tests use it)

struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn new(s: TcpStream) -> Self {
        Conn { s, buf: Vec::new() }
    }

    async fn fill(&mut self) -> std::io::Result<usize> {
        let mut b = vec![0u8; 64 * 1024];
        let n = self.s.read(&mut b).await?;
        self.buf.extend_from_slice(&b[..n]);
        Ok(n)
    }

    /// One line with its CRLF; `None` at EOF or on an error.
    async fn line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(p) = self.buf.iter().position(|&b| b == b'\n') {
                return Some(self.buf.drain(..=p).collect());
            }
            match self.fill().await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// One SMTP reply (all its lines), as text; `None` at EOF or on an error.
    async fn reply(&mut self) -> Option<String> {
        let mut all = String::new();
        loop {
            let l = String::from_utf8_lossy(&self.line().await?).into_owned();
            all.push_str(&l);
            if l.len() < 4 || l.as_bytes()[3] != b'-' {
                return Some(all);
            }
        }
    }

    async fn send(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.s.write_all(b).await
    }

    async fn command(&mut self, cmd: &str) -> Result<String, String> {
        self.send(cmd.as_bytes())
            .await
            .map_err(|e| format!("{cmd:?}: {e}"))?;
        self.reply()
            .await
            .ok_or_else(|| format!("{cmd:?}: connection closed"))
    }
}

// ---------------------------------------------------------------------------
// The in-test SMTP sink

/// What the sink accepted: the SHA-256 of each message's DATA content (the
/// bytes after `DATA\r\n` up to and including the terminating `.\r\n`), and
/// the raw bytes received after each STARTTLS.
#[derive(Clone, Default)]
struct Sink {
    accepted: Arc<Mutex<Vec<String>>>,
    after_starttls: Arc<Mutex<Vec<String>>>,
}

/// `MAIL FROM` containing this makes the sink reset the connection in the
/// middle of the message's DATA.
const RESET_ME: &str = "reset-me";

impl Sink {
    async fn start() -> (SocketAddr, Sink) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let sink = Sink::default();
        let s2 = sink.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let sink = s2.clone();
                tokio::spawn(async move { sink.serve(Conn::new(s)).await });
            }
        });
        (addr, sink)
    }

    fn accepted(&self) -> Vec<String> {
        self.accepted.lock().unwrap().clone()
    }

    async fn serve(&self, mut c: Conn) {
        if c.send(b"220 sink.example.test ESMTP\r\n").await.is_err() {
            return;
        }
        let mut reset_in_data = false;
        while let Some(line) = c.line().await {
            let cmd = String::from_utf8_lossy(&line).to_ascii_uppercase();
            let reply: &[u8] = if cmd.starts_with("EHLO") {
                b"250-sink.example.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 STARTTLS\r\n"
            } else if cmd.starts_with("MAIL") {
                reset_in_data = cmd.contains(&RESET_ME.to_ascii_uppercase());
                b"250 2.1.0 Ok\r\n"
            } else if cmd.starts_with("RCPT") {
                b"250 2.1.5 Ok\r\n"
            } else if cmd.starts_with("DATA") {
                if c.send(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await
                    .is_err()
                {
                    return;
                }
                match self.data(&mut c, reset_in_data).await {
                    Some(h) => {
                        let r = format!("250 2.0.0 Ok: queued as {}\r\n", &h[..12]);
                        self.accepted.lock().unwrap().push(h);
                        if c.send(r.as_bytes()).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    None => return,
                }
            } else if cmd.starts_with("STARTTLS") {
                if c.send(b"220 2.0.0 Ready to start TLS\r\n").await.is_err() {
                    return;
                }
                // No TLS here: record whatever comes, until EOF.
                let mut h = Sha256::new();
                h.update(std::mem::take(&mut c.buf));
                let mut b = vec![0u8; 65536];
                while let Ok(n) = c.s.read(&mut b).await {
                    if n == 0 {
                        break;
                    }
                    h.update(&b[..n]);
                }
                self.after_starttls.lock().unwrap().push(hex(h.finalize()));
                return;
            } else if cmd.starts_with("QUIT") {
                let _ = c.send(b"221 2.0.0 Bye\r\n").await;
                return;
            } else if cmd.starts_with("NOOP") || cmd.starts_with("RSET") {
                b"250 2.0.0 Ok\r\n"
            } else {
                b"502 5.5.2 Error: command not recognized\r\n"
            };
            if c.send(reply).await.is_err() {
                return;
            }
        }
    }

    /// Reads DATA content up to its terminator, streaming (a 100 MB line
    /// is never held), and returns its hash; `None` if the connection ended
    /// first or the fault was asked for.
    async fn data(&self, c: &mut Conn, reset: bool) -> Option<String> {
        let mut h = Sha256::new();
        let mut tail: Vec<u8> = b"\r\n".to_vec(); // DATA content starts a line
        let mut seen = 0usize;
        loop {
            if c.buf.is_empty() {
                match c.fill().await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
            let chunk = std::mem::take(&mut c.buf);
            seen += chunk.len();
            if reset && seen > 1000 {
                let _ = socket2::SockRef::from(&c.s).set_linger(Some(Duration::ZERO));
                return None;
            }
            // Look for CRLF.CRLF across the previous tail and this chunk.
            let mut joined = tail.clone();
            joined.extend_from_slice(&chunk);
            if let Some(p) = memchr::memmem::find(&joined, b"\r\n.\r\n") {
                let end = p + 5 - tail.len(); // in `chunk`
                h.update(&chunk[..end]);
                c.buf = chunk[end..].to_vec();
                return Some(hex(h.finalize()));
            }
            h.update(&chunk);
            let keep = joined.len().min(4);
            tail = joined[joined.len() - keep..].to_vec();
        }
    }
}

// ---------------------------------------------------------------------------
// Clients

/// A message body (CRLF lines, no line starting with a dot) of about `len` bytes.
fn body(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = format!("Subject: fault test {seed}\r\n\r\n").into_bytes();
    let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789 ";
    while out.len() < len {
        let mut line = [0u8; 76];
        rng.fill_bytes(&mut line);
        out.extend(line.iter().map(|b| alphabet[*b as usize % alphabet.len()]));
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The hash the sink computes for `body`.
fn content_hash(body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(body);
    h.update(b".\r\n");
    hex(h.finalize())
}

/// Sends one message; `Ok(reply)` only when the end of data was answered 250.
async fn send_message(addr: SocketAddr, from: &str, body: &[u8]) -> Result<String, String> {
    let s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut c = Conn::new(s);
    let banner = c.reply().await.ok_or("no banner")?;
    if !banner.starts_with("220") {
        return Err(banner);
    }
    transaction(&mut c, from, body).await
}

async fn transaction(c: &mut Conn, from: &str, body: &[u8]) -> Result<String, String> {
    c.command("EHLO client.example.test\r\n").await?;
    c.command(&format!("MAIL FROM:<{from}>\r\n")).await?;
    c.command("RCPT TO:<rcpt@example.test>\r\n").await?;
    let r = c.command("DATA\r\n").await?;
    if !r.starts_with("354") {
        return Err(r);
    }
    c.send(body).await.map_err(|e| e.to_string())?;
    let r = c.command(".\r\n").await?;
    if !r.starts_with("250") {
        return Err(r);
    }
    let _ = c.command("QUIT\r\n").await;
    Ok(r)
}

/// Runs `n` good sessions concurrently with whatever else runs; asserts each
/// was accepted and arrived intact.
async fn good_sessions(addr: SocketAddr, sink: &Sink, n: u64, seed: u64) {
    let mut tasks = Vec::new();
    for i in 0..n {
        tasks.push(tokio::spawn(async move {
            let b = body(seed + i, 20_000);
            let r = tokio::time::timeout(WAIT, send_message(addr, "good@example.test", &b)).await;
            (content_hash(&b), r)
        }));
    }
    for t in tasks {
        let (h, r) = t.await.unwrap();
        let r = r.expect("a good session hung");
        assert!(r.is_ok(), "a good session failed: {r:?}");
        assert!(
            sink.accepted().contains(&h),
            "a message the client saw accepted is not at the sink (lost or altered)"
        );
    }
}

/// Every hash the sink accepted is one a client sent (nothing altered).
fn sink_holds_only(sink: &Sink, sent: &HashSet<String>) {
    for h in sink.accepted() {
        assert!(
            sent.contains(&h),
            "the sink accepted a message nobody sent: {h}"
        );
    }
}

fn summary(events: &[Event], session: u64) -> Value {
    named(events, session, "session.summary")
        .pop()
        .unwrap_or_else(|| panic!("no summary for session {session}"))
}

fn finding_ids(summary: &Value) -> Vec<String> {
    summary["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap().to_string())
        .collect()
}

/// The session (by id) whose client port is `port`.
fn session_of(events: &[Event], port: u16) -> u64 {
    events
        .iter()
        .filter(|e| e.name() == "session.open")
        .find_map(|e| {
            let v = serde_json::to_value(e).unwrap();
            (v["client_port"] == port).then_some(e.session)
        })
        .unwrap_or_else(|| panic!("no session from port {port}"))
}

// ---------------------------------------------------------------------------
// Resets mid-DATA

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_reset_mid_data_is_never_reported_as_accepted() {
    let (up, sink) = Sink::start().await;
    let proxy = TestProxy::start(&up.to_string(), "").await;
    let addr = proxy.addr;
    let doomed = body(1, 200_000);
    let doomed_hash = content_hash(&doomed);
    let bad = tokio::spawn(async move {
        tokio::time::timeout(WAIT, send_message(addr, "reset-me@example.test", &doomed)).await
    });
    let good = tokio::spawn({
        let sink = sink.clone();
        async move { good_sessions(addr, &sink, 5, 900).await }
    });
    let r = bad.await.unwrap().expect("the reset session hung");
    good.await.unwrap();
    assert!(
        r.is_err(),
        "the client was told the message was accepted: {r:?}"
    );
    assert!(
        !sink.accepted().contains(&doomed_hash),
        "the sink should not have accepted the reset message"
    );
    assert_eq!(sink.accepted().len(), 5);
    let events = proxy.wait_summaries(6).await;
    let closes: Vec<Value> = (1..=6)
        .flat_map(|id| named(&events, id, "session.close"))
        .filter(|c| c["reason"] != "completed")
        .collect();
    assert_eq!(
        closes.len(),
        1,
        "one session saw the upstream reset: {closes:?}"
    );
    assert_eq!(closes[0]["reason"], "error", "{}", closes[0]);
    // Seen reading from the server (reset), or writing the rest of the
    // message to it (reset or broken pipe), depending on the race.
    assert!(
        closes[0]["error"] == "reset" || closes[0]["error"] == "broken_pipe",
        "{}",
        closes[0]
    );
    // And the proxy still serves.
    good_sessions(addr, &sink, 3, 500).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reset_mid_data_loses_nothing_and_disturbs_no_one() {
    let (up, sink) = Sink::start().await;
    let proxy = TestProxy::start(&up.to_string(), "").await;
    let addr = proxy.addr;
    let bad = tokio::spawn(async move {
        let s = TcpStream::connect(addr).await.unwrap();
        let port = s.local_addr().unwrap().port();
        let mut c = Conn::new(s);
        c.reply().await.unwrap();
        c.command("EHLO reset.example.test\r\n").await.unwrap();
        c.command("MAIL FROM:<a@example.test>\r\n").await.unwrap();
        c.command("RCPT TO:<b@example.test>\r\n").await.unwrap();
        assert!(c.command("DATA\r\n").await.unwrap().starts_with("354"));
        c.send(&body(2, 100_000)[..50_000]).await.unwrap();
        c.s.flush().await.unwrap();
        socket2::SockRef::from(&c.s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(c); // RST in the middle of DATA
        port
    });
    let good = tokio::spawn({
        let sink = sink.clone();
        async move { good_sessions(addr, &sink, 5, 100).await }
    });
    let port = bad.await.unwrap();
    good.await.unwrap();
    let events = proxy.wait_summaries(6).await;
    let id = session_of(&events, port);
    let close = named(&events, id, "session.close");
    assert_eq!(close[0]["reason"], "error", "{}", close[0]);
    assert_eq!(close[0]["error"], "reset", "{}", close[0]);
    assert_eq!(
        sink.accepted().len(),
        5,
        "only the 5 good messages are accepted"
    );
    let sent: HashSet<String> = (0..5)
        .map(|i| content_hash(&body(100 + i, 20_000)))
        .collect();
    sink_holds_only(&sink, &sent);
    proxy.stop().await;
}

// ---------------------------------------------------------------------------
// Slow clients: the line, idle and session deadlines

/// Connects, reads the banner, then sends `bytes` one at a time every
/// `every` until the proxy closes (or `max` passes); returns the client port.
async fn trickle(
    addr: SocketAddr,
    prefix: &[u8],
    bytes: &[u8],
    every: Duration,
    max: Duration,
) -> u16 {
    let s = TcpStream::connect(addr).await.unwrap();
    let port = s.local_addr().unwrap().port();
    let mut c = Conn::new(s);
    assert!(c.reply().await.unwrap().starts_with("220"));
    c.send(prefix).await.unwrap();
    let started = Instant::now();
    let mut i = 0;
    loop {
        assert!(
            started.elapsed() < max,
            "the proxy never closed the slow client"
        );
        if c.send(&bytes[i % bytes.len()..][..1]).await.is_err() {
            return port;
        }
        i += 1;
        let mut b = [0u8; 512];
        match tokio::time::timeout(every, c.s.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return port,
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trickling_a_line_is_closed_by_the_line_deadline() {
    let (up, sink) = Sink::start().await;
    let proxy = TestProxy::start(
        &up.to_string(),
        "[limits]\nline_timeout_secs = 1\nidle_timeout_secs = 600",
    )
    .await;
    let addr = proxy.addr;
    let slow = tokio::spawn(async move {
        trickle(
            addr,
            b"EHLO slow.example.test\r\n",
            b"MAIL FROM:<slow@example.test>",
            Duration::from_millis(100),
            Duration::from_secs(30),
        )
        .await
    });
    good_sessions(addr, &sink, 5, 200).await;
    let port = slow.await.unwrap();
    let events = proxy.wait_summaries(6).await;
    let id = session_of(&events, port);
    let close = named(&events, id, "session.close");
    assert_eq!(close[0]["reason"], "line_timeout", "{}", close[0]);
    assert_eq!(close[0]["error"], "line_timeout", "{}", close[0]);
    let s = summary(&events, id);
    assert_eq!(s["close_reason"], "line_timeout");
    assert!(
        finding_ids(&s).contains(&"session.line_timeout".to_string()),
        "{s}"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_mid_line_is_closed_by_the_idle_deadline() {
    let (up, _sink) = Sink::start().await;
    let proxy = TestProxy::start(
        &up.to_string(),
        "[limits]\nline_timeout_secs = 600\nidle_timeout_secs = 1",
    )
    .await;
    let s = TcpStream::connect(proxy.addr).await.unwrap();
    let mut c = Conn::new(s);
    assert!(c.reply().await.unwrap().starts_with("220"));
    c.send(b"EHL").await.unwrap();
    let mut rest = Vec::new();
    let r = tokio::time::timeout(WAIT, c.s.read_to_end(&mut rest)).await;
    assert!(r.is_ok(), "the idle client was never closed");
    let events = proxy.wait_summaries(1).await;
    let close = named(&events, 1, "session.close");
    assert_eq!(close[0]["reason"], "idle_timeout", "{}", close[0]);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_session_is_closed_by_the_session_deadline() {
    let (up, _sink) = Sink::start().await;
    let proxy = TestProxy::start(
        &up.to_string(),
        "[limits]\nsession_timeout_secs = 1\nline_timeout_secs = 600\nidle_timeout_secs = 600",
    )
    .await;
    let s = TcpStream::connect(proxy.addr).await.unwrap();
    let mut c = Conn::new(s);
    assert!(c.reply().await.unwrap().starts_with("220"));
    let started = Instant::now();
    // Complete commands, never idle: only the session deadline can end it.
    while c.command("NOOP\r\n").await.is_ok() {
        assert!(started.elapsed() < WAIT, "the session deadline never fired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events = proxy.wait_summaries(1).await;
    let close = named(&events, 1, "session.close");
    assert_eq!(close[0]["reason"], "session_timeout", "{}", close[0]);
    let s = summary(&events, 1);
    assert!(
        finding_ids(&s).contains(&"session.duration_limit".to_string()),
        "{s}"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_line_deadline_does_not_apply_once_the_client_speaks_tls() {
    // After STARTTLS the bytes are TLS records, not lines: a slow handshake
    // is left to the idle deadline (which a trickle keeps away) and the
    // session deadline; here the session deadline ends it.
    let (up, _sink) = Sink::start().await;
    let proxy = TestProxy::start(
        &up.to_string(),
        "[limits]\nline_timeout_secs = 1\nidle_timeout_secs = 600\nsession_timeout_secs = 4",
    )
    .await;
    let addr = proxy.addr;
    let port = trickle(
        addr,
        b"EHLO tls.example.test\r\nSTARTTLS\r\n",
        &[
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ],
        Duration::from_millis(100),
        Duration::from_secs(30),
    )
    .await;
    let events = proxy.wait_summaries(1).await;
    let id = session_of(&events, port);
    let close = named(&events, id, "session.close");
    assert_eq!(close[0]["reason"], "session_timeout", "{}", close[0]);
    proxy.stop().await;
}

// ---------------------------------------------------------------------------
// Big and hostile input

fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_megabytes_without_a_newline_is_relayed_intact_in_bounded_memory() {
    let (up, sink) = Sink::start().await;
    let proxy = TestProxy::start(&up.to_string(), "").await;
    let s = TcpStream::connect(proxy.addr).await.unwrap();
    let mut c = Conn::new(s);
    assert!(c.reply().await.unwrap().starts_with("220"));
    c.command("EHLO big.example.test\r\n").await.unwrap();
    c.command("MAIL FROM:<big@example.test>\r\n").await.unwrap();
    c.command("RCPT TO:<b@example.test>\r\n").await.unwrap();
    assert!(c.command("DATA\r\n").await.unwrap().starts_with("354"));

    let before = vm_rss_kib();
    let peak = Arc::new(Mutex::new(before));
    let watching = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = {
        let (peak, watching) = (peak.clone(), watching.clone());
        tokio::spawn(async move {
            while watching.load(std::sync::atomic::Ordering::Relaxed) {
                let r = vm_rss_kib();
                {
                    let mut p = peak.lock().unwrap();
                    *p = (*p).max(r);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let mut h = Sha256::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(100);
    let mut chunk = vec![0u8; 64 * 1024];
    let total: usize = 100 * 1024 * 1024;
    let mut sent = 0;
    while sent < total {
        rng.fill_bytes(&mut chunk);
        for b in chunk.iter_mut() {
            // No CR or LF: one 100 MB line.
            *b = b'!' + (*b % 90);
        }
        c.send(&chunk).await.unwrap();
        h.update(&chunk);
        sent += chunk.len();
    }
    c.send(b"\r\n").await.unwrap();
    h.update(b"\r\n.\r\n");
    let r = tokio::time::timeout(Duration::from_secs(300), c.command(".\r\n"))
        .await
        .expect("no reply to the end of data")
        .unwrap();
    watching.store(false, std::sync::atomic::Ordering::Relaxed);
    watcher.await.unwrap();
    assert!(r.starts_with("250"), "{r}");
    assert!(
        sink.accepted().contains(&hex(h.finalize())),
        "the 100 MB line arrived altered"
    );
    let grew = *peak.lock().unwrap() - before;
    // The client, the proxy and the sink share this process: each may hold
    // a few 64 KiB buffers and the analysis queue (64 × 16 KiB); holding the
    // line would be 100 MB.
    assert!(
        grew < 32 * 1024,
        "resident memory grew by {grew} KiB while relaying one 100 MB line"
    );
    let _ = c.command("QUIT\r\n").await;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, c.s.read_to_end(&mut rest)).await;
    drop(c);
    // The analysis may still be reading the line (it is allowed to lag).
    let events = proxy.stop().await;
    assert_eq!(named(&events, 1, "session.close")[0]["reason"], "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_after_starttls_are_relayed_intact_and_reported() {
    let (up, sink) = Sink::start().await;
    let proxy = TestProxy::start(&up.to_string(), "").await;
    let addr = proxy.addr;
    let bad = tokio::spawn(async move {
        let s = TcpStream::connect(addr).await.unwrap();
        let port = s.local_addr().unwrap().port();
        let mut c = Conn::new(s);
        c.reply().await.unwrap();
        c.command("EHLO noise.example.test\r\n").await.unwrap();
        assert!(c.command("STARTTLS\r\n").await.unwrap().starts_with("220"));
        let mut noise = vec![0u8; 256 * 1024];
        rand::rngs::StdRng::seed_from_u64(7).fill_bytes(&mut noise);
        noise[0] = b'G'; // not a TLS record
        c.send(&noise).await.unwrap();
        c.s.shutdown().await.unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(WAIT, c.s.read_to_end(&mut rest)).await;
        (port, hex(Sha256::digest(&noise)))
    });
    good_sessions(addr, &sink, 5, 300).await;
    let (port, noise_hash) = bad.await.unwrap();
    let events = proxy.wait_summaries(6).await;
    for _ in 0..100 {
        if !sink.after_starttls.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        *sink.after_starttls.lock().unwrap(),
        vec![noise_hash],
        "the bytes after STARTTLS were altered"
    );
    let s = summary(&events, session_of(&events, port));
    assert!(finding_ids(&s).contains(&"tls.not_tls".to_string()), "{s}");
    proxy.stop().await;
}

// ---------------------------------------------------------------------------
// A burst far over max_sessions

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_two_thousand_connections_over_max_sessions_all_complete() {
    // max_sessions = 20: the excess waits in the listen backlog (1024, or
    // net.core.somaxconn if lower); beyond the backlog the kernel drops the
    // SYNs and the clients' TCP retries. None is refused, none is lost.
    let (up, sink) = Sink::start().await;
    let proxy = TestProxy::start(&up.to_string(), "[limits]\nmax_sessions = 20").await;
    let addr = proxy.addr;
    let n = 2000u64;
    let mut tasks = Vec::new();
    for i in 0..n {
        tasks.push(tokio::spawn(async move {
            let b = body(10_000 + i, 2_000);
            let r = tokio::time::timeout(
                Duration::from_secs(240),
                send_message(addr, "burst@example.test", &b),
            )
            .await;
            (content_hash(&b), r)
        }));
    }
    let mut sent = HashSet::new();
    for t in tasks {
        let (h, r) = t.await.unwrap();
        let r = r.expect("a client of the burst hung");
        assert!(r.is_ok(), "a client of the burst failed: {r:?}");
        sent.insert(h);
    }
    let got: HashSet<String> = sink.accepted().into_iter().collect();
    assert_eq!(got, sent, "lost or altered messages in the burst");
    assert_eq!(sink.accepted().len() as u64, n);
    let events = proxy.wait_summaries(n as usize).await;
    let completed = events
        .iter()
        .filter(|e| e.name() == "session.close")
        .filter(|e| serde_json::to_value(e).unwrap()["reason"] == "completed")
        .count();
    assert_eq!(completed as u64, n);
    proxy.stop().await;
}

// ---------------------------------------------------------------------------
// The binary: SIGTERM while busy, and the open-file limit

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_smtptap"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Child2 {
    child: Child,
    port: u16,
}

impl Child2 {
    /// Starts `smtptap proxy` (through `wrapper`, e.g. prlimit, if given).
    fn start(wrapper: &[&str], upstream: SocketAddr, args: &[&str]) -> Child2 {
        let port = free_port();
        let mut cmd = match wrapper.split_first() {
            Some((w, rest)) => {
                let mut c = Command::new(w);
                c.args(rest).arg(env!("CARGO_BIN_EXE_smtptap"));
                c
            }
            None => bin(),
        };
        let child = cmd
            .args(["proxy", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--upstream", &upstream.to_string(), "-q"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start smtptap ({wrapper:?}): {e}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "smtptap did not start listening");
            std::thread::sleep(Duration::from_millis(20));
        }
        Child2 { child, port }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn sigterm(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Waits for exit; returns (exit code, stderr).
    fn wait(mut self, within: Duration) -> (i32, String) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                let _ = self.child.stderr.take().unwrap().read_to_string(&mut err);
                return (st.code().unwrap_or(-1), err);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("smtptap did not exit within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn log_lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_busy_sessions_drains_them_and_leaves_whole_captures() {
    let (up, sink) = Sink::start().await;
    let dir = temp_dir("faults-sigterm");
    let log = dir.join("log.jsonl");
    let pcap = dir.join("pcap");
    std::fs::create_dir_all(&pcap).unwrap();
    let p = Child2::start(
        &[],
        up,
        &[
            "--log",
            &log.display().to_string(),
            "--pcap",
            &pcap.display().to_string(),
            "--drain-timeout",
            "30",
        ],
    );
    let addr = p.addr();
    let started = Arc::new(tokio::sync::Barrier::new(9));
    let mut tasks = Vec::new();
    for i in 0..8u64 {
        let started = started.clone();
        tasks.push(tokio::spawn(async move {
            let b = body(400 + i, 400_000);
            let s = TcpStream::connect(addr).await.unwrap();
            let mut c = Conn::new(s);
            c.reply().await.unwrap();
            c.command("EHLO busy.example.test\r\n").await.unwrap();
            c.command("MAIL FROM:<busy@example.test>\r\n")
                .await
                .unwrap();
            c.command("RCPT TO:<b@example.test>\r\n").await.unwrap();
            assert!(c.command("DATA\r\n").await.unwrap().starts_with("354"));
            c.send(&b[..1000]).await.unwrap();
            started.wait().await;
            // Busy: the rest in pieces, after SIGTERM.
            for piece in b[1000..].chunks(40_000) {
                tokio::time::sleep(Duration::from_millis(50)).await;
                c.send(piece).await.unwrap();
            }
            let r = c.command(".\r\n").await;
            let _ = c.command("QUIT\r\n").await;
            (content_hash(&b), r)
        }));
    }
    started.wait().await;
    p.sigterm();
    let mut sent = HashSet::new();
    for t in tasks {
        let (h, r) = tokio::time::timeout(WAIT, t).await.expect("hung").unwrap();
        let r = r.expect("a busy session was cut at SIGTERM");
        assert!(r.starts_with("250"), "{r}");
        sent.insert(h);
    }
    let (code, err) = tokio::task::spawn_blocking(move || p.wait(WAIT))
        .await
        .unwrap();
    assert_eq!(code, 0, "{err}");
    let got: HashSet<String> = sink.accepted().into_iter().collect();
    assert_eq!(got, sent);
    // Every session got its summary, and the run its stop.
    let lines = log_lines(&log);
    let summaries = lines
        .iter()
        .filter(|l| l["event"] == "session.summary")
        .count();
    assert!(summaries >= 8, "{summaries} summaries");
    assert!(lines.iter().any(|l| l["event"] == "run.stop"));
    // Every capture file reads to its end: no truncated block.
    let files: Vec<_> = std::fs::read_dir(&pcap)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(!files.is_empty(), "no capture written");
    for f in files {
        let out = common::tshark(&[
            "-r",
            &f.display().to_string(),
            "-T",
            "fields",
            "-e",
            "frame.number",
        ]);
        assert!(!out.trim().is_empty(), "{} holds no frame", f.display());
        let mut raw = Vec::new();
        std::fs::File::open(&f)
            .unwrap()
            .read_to_end(&mut raw)
            .unwrap();
        let reader = pcap_file::pcapng::PcapNgReader::new(&raw[..]).unwrap();
        let mut reader = reader;
        let mut blocks = 0;
        while let Some(b) = reader.next_block() {
            b.unwrap_or_else(|e| panic!("{}: block {blocks}: {e}", f.display()));
            blocks += 1;
        }
        assert!(blocks > 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_open_file_limit_the_proxy_backs_off_blames_itself_and_recovers() {
    // A proxy with 48 file descriptors (prlimit) and a burst of 60 clients
    // holding their sessions open: the process runs out of descriptors.
    // Each client either is served, or waits in the backlog, or (when the
    // last descriptor went to its accepted socket and none is left for the
    // upstream) is told 421 4.3.2 local resource limit; nobody is told the
    // upstream is unreachable. Then the clients finish, and the proxy serves
    // everyone waiting and a fresh session.
    let (up, sink) = Sink::start().await;
    let dir = temp_dir("faults-emfile");
    let log = dir.join("log.jsonl");
    let p = Child2::start(
        &["prlimit", "--nofile=48:48", "--"],
        up,
        &["--log", &log.display().to_string(), "--max-sessions", "500"],
    );
    let addr = p.addr();
    let release = Arc::new(tokio::sync::Notify::new());
    let released = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..60u64 {
        let (release, released) = (release.clone(), released.clone());
        tasks.push(tokio::spawn(async move {
            let b = body(600 + i, 5_000);
            let s = TcpStream::connect(addr).await.unwrap();
            let mut c = Conn::new(s);
            let first = c.reply().await.unwrap_or_default();
            if !first.starts_with("220") {
                return (content_hash(&b), Err(first));
            }
            if !released.load(std::sync::atomic::Ordering::Acquire) {
                let n = release.notified();
                if !released.load(std::sync::atomic::Ordering::Acquire) {
                    n.await;
                }
            }
            (
                content_hash(&b),
                transaction(&mut c, "held@example.test", &b).await,
            )
        }));
    }
    // Let the burst hit the limit (the accept loop backing off meanwhile).
    tokio::time::sleep(Duration::from_secs(3)).await;
    released.store(true, std::sync::atomic::Ordering::Release);
    release.notify_waiters();
    let (mut served, mut local) = (0, 0);
    for t in tasks {
        let (h, r) = tokio::time::timeout(WAIT, t).await.expect("hung").unwrap();
        match r {
            Ok(_) => {
                assert!(sink.accepted().contains(&h), "accepted but not at the sink");
                served += 1;
            }
            Err(e) => {
                assert!(
                    e.starts_with("421 4.3.2 smtptap: local resource limit"),
                    "a client was told: {e:?}"
                );
                local += 1;
            }
        }
    }
    assert!(served > 0);
    assert_eq!(served + local, 60);
    // After the burst: a normal session.
    let b = body(700, 10_000);
    let r = tokio::time::timeout(WAIT, send_message(addr, "after@example.test", &b))
        .await
        .expect("hung");
    assert!(r.is_ok(), "no recovery after the burst: {r:?}");
    p.sigterm();
    let (code, err) = tokio::task::spawn_blocking(move || p.wait(WAIT))
        .await
        .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("open-file limit"),
        "stderr does not name the real cause:\n{err}"
    );
    let accept_lines = err.matches("cannot accept connections").count()
        + err.matches("cannot open a socket to the upstream").count();
    assert!(
        accept_lines <= 4,
        "the accept failure was logged {accept_lines} times, not once per interval:\n{err}"
    );
    assert!(!err.contains("upstream unreachable"), "{err}");
    let lines = log_lines(&log);
    let findings: Vec<String> = lines
        .iter()
        .filter(|l| l["event"] == "session.summary")
        .flat_map(|l| {
            l["findings"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["id"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        !findings.contains(&"upstream.unreachable".to_string()),
        "{findings:?}"
    );
    if local > 0 {
        assert!(
            findings.contains(&"proxy.local_resources".to_string()),
            "{findings:?}"
        );
    }
}
