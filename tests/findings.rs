//! One test per finding of `docs/findings.md` (the proxy's, not `headers.*`):
//! each provokes the situation for real over loopback (real sockets, rustls on
//! both sides, or `openssl s_server`/`s_client` for TLS 1.0 and CBC suites that
//! rustls cannot speak), runs it through the in-process proxy, and asserts the
//! finding's id, severity and evidence, and that no unrelated warning or error
//! fires.
//!
//! Where trust is not under test, the proxy trusts a CA minted for the test
//! (`[tls] ca_files`), and leaves carry CRL and OCSP URLs unless
//! `cert.no_revocation_info` is under test.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{closed_port, named, temp_dir, TestProxy};
use serde_json::Value;
use smtptap::cert::mint::{self, Ca, Issued, LeafSpec};
use smtptap::event::Event;
use smtptap::lab::{self, ClientOptions, ClientReport, LabServer, ServerProfile, StartTls};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const MX: &str = "mx.example.test";

// ---------------------------------------------------------------------------
// PKI and configuration

/// A private CA for one test, written to `ca.pem` in a temp dir.
struct Pki {
    root: Ca,
    dir: PathBuf,
    ca_file: PathBuf,
}

fn pki(test: &str) -> Pki {
    let root = Ca::new(&format!("smtptap findings test CA ({test})")).unwrap();
    let dir = temp_dir(&format!("findings-{test}"));
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, root.pem()).unwrap();
    Pki { root, dir, ca_file }
}

impl Pki {
    /// The `[tls]` section trusting this CA, plus `extra` lines in it.
    fn toml(&self, extra: &str) -> String {
        format!(
            "[tls]\nca_files = [\"{}\"]\n{extra}\n",
            self.ca_file.display()
        )
    }

    fn issue(&self, spec: &LeafSpec) -> Issued {
        self.root.issue(spec).unwrap()
    }
}

/// A server leaf with revocation URLs (so `cert.no_revocation_info` stays quiet).
fn leaf(names: &[&str]) -> LeafSpec {
    LeafSpec {
        crl_urls: vec!["http://crl.example.test/ca.crl".into()],
        ocsp_url: Some("http://ocsp.example.test/".into()),
        ..LeafSpec::server(names.iter().copied())
    }
}

fn server_tls(issued: &Issued) -> Arc<rustls::ServerConfig> {
    lab::server_config(issued.chain_der.clone(), issued.key_der.clone()).unwrap()
}

fn tls12() -> Arc<rustls::ClientConfig> {
    lab::client_config_opportunistic_with(&[&rustls::version::TLS12])
}

/// A client that verifies the server against `anchors`, limited to `versions`.
fn verifying(
    anchors: &[Vec<u8>],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for a in anchors {
        roots
            .add(rustls::pki_types::CertificateDer::from(a.clone()))
            .unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_protocol_versions(versions)
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

fn client(starttls: StartTls, tls: Option<Arc<rustls::ClientConfig>>) -> ClientOptions {
    ClientOptions {
        ehlo: "client.example.test".into(),
        starttls,
        tls,
        server_name: MX.into(),
        from: "alice@client.example.test".into(),
        to: vec!["bob@example.test".into()],
        body: b"Subject: findings test\r\n\r\nhello\r\n".to_vec(),
        helo: false,
    }
}

// ---------------------------------------------------------------------------
// Running sessions and reading findings

/// Events of session 1 after one lab client session through a fresh proxy in
/// front of `server`, with `extra` config.
async fn through_proxy(
    server: &LabServer,
    opts: &ClientOptions,
    extra: &str,
) -> (Vec<Event>, ClientReport) {
    let proxy = TestProxy::start(&server.addr().to_string(), extra).await;
    let report = lab::send(proxy.addr, opts).await;
    let events = proxy.wait_summaries(1).await;
    proxy.stop().await;
    (events, report)
}

/// The findings of a session, from its `session.summary`.
fn findings_of(events: &[Event], session: u64) -> Vec<Value> {
    let s = named(events, session, "session.summary");
    assert_eq!(s.len(), 1, "session {session} has no summary");
    s[0]["findings"].as_array().cloned().unwrap_or_default()
}

/// Asserts that every `(id, severity)` of `expected` is present, and that the
/// warnings and errors of the session are exactly the expected ones.
fn check(findings: &[Value], expected: &[(&str, &str)]) {
    let got: BTreeMap<String, String> = findings
        .iter()
        .map(|f| {
            (
                f["id"].as_str().unwrap().to_string(),
                f["severity"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (id, sev) in expected {
        assert_eq!(
            got.get(*id).map(String::as_str),
            Some(*sev),
            "finding {id} ({sev}) missing or of another severity; findings: {}",
            pretty(findings)
        );
    }
    let serious = |m: &BTreeMap<String, String>| -> Vec<String> {
        m.iter()
            .filter(|(_, s)| s.as_str() != "info")
            .map(|(i, _)| i.clone())
            .collect()
    };
    let want: BTreeMap<String, String> = expected
        .iter()
        .map(|(i, s)| (i.to_string(), s.to_string()))
        .collect();
    assert_eq!(
        serious(&got),
        serious(&want),
        "unexpected warnings/errors; findings: {}",
        pretty(findings)
    );
}

fn pretty(findings: &[Value]) -> String {
    serde_json::to_string_pretty(findings).unwrap()
}

/// The finding with this id.
fn finding<'a>(findings: &'a [Value], id: &str) -> &'a Value {
    findings
        .iter()
        .find(|f| f["id"] == id)
        .unwrap_or_else(|| panic!("no finding {id}: {}", pretty(findings)))
}

/// Asserts that the finding's evidence has a line containing `needle`.
fn evidence_has(findings: &[Value], id: &str, needle: &str) {
    let f = finding(findings, id);
    let ev: Vec<&str> = f["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(
        ev.iter().any(|l| l.contains(needle)),
        "evidence of {id} lacks {needle:?}: {ev:#?}"
    );
}

// ---------------------------------------------------------------------------
// Tiny scripted peers

/// A line-based scripted SMTP server: sends `banner`, then answers each line
/// with `answer(line)` (None: close). After a 354 it swallows the message and
/// answers `250 2.0.0 Ok: queued`. Serves one connection.
async fn scripted_server(banner: &'static str, answer: fn(&str) -> Option<String>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let mut s = BufReader::new(s);
        s.get_mut().write_all(banner.as_bytes()).await.unwrap();
        let mut line = String::new();
        loop {
            line.clear();
            if s.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let Some(reply) = answer(line.trim_end()) else {
                return;
            };
            let _ = s.get_mut().write_all(reply.as_bytes()).await;
            if reply.starts_with("354") {
                loop {
                    line.clear();
                    if s.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    if line == ".\r\n" {
                        break;
                    }
                }
                let _ = s.get_mut().write_all(b"250 2.0.0 Ok: queued\r\n").await;
            }
        }
    });
    addr
}

/// Reads from `c` until `needle` arrived (or EOF); returns all read.
async fn read_until(c: &mut TcpStream, needle: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(needle.len()).any(|w| w == needle) {
        let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
            .await
            .expect("peer silent")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    got
}

// ---------------------------------------------------------------------------
// openssl (TLS 1.0 and CBC-SHA1 suites)

fn openssl() -> Command {
    match Command::new("openssl").arg("version").output() {
        Ok(o) if o.status.success() => Command::new("openssl"),
        _ => panic!(
            "this test needs the openssl command line tool: \
             DEBIAN_FRONTEND=noninteractive apt-get install -y openssl"
        ),
    }
}

/// A child killed when dropped (only the process this test started).
struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `openssl s_server` on a free port with this leaf, limited by `args`;
/// returns once it accepts connections.
fn s_server(pki: &Pki, issued: &Issued, args: &[&str]) -> (Kill, u16) {
    let cert = pki.dir.join("leaf.pem");
    let key = pki.dir.join("leaf.key");
    std::fs::write(&cert, issued.chain_pem()).unwrap();
    std::fs::write(&key, issued.key_pem()).unwrap();
    let port = closed_port();
    let mut child = Kill(
        openssl()
            .args(["s_server", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let out = child.0.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(out).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("ACCEPT") => break,
            Some(Ok(_)) => {}
            _ => panic!("openssl s_server did not start (args {args:?})"),
        }
    }
    // Keep draining its output so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines.by_ref() {});
    (child, port)
}

/// An SMTP server that does the cleartext part itself and, after answering
/// STARTTLS with 220, splices the connection to the TLS server at `tls_port`
/// (openssl s_server has no server-side STARTTLS). One connection.
async fn starttls_bridge(tls_port: u16) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let mut s = BufReader::new(s);
        s.get_mut()
            .write_all(format!("220 {MX} ESMTP bridge\r\n").as_bytes())
            .await
            .unwrap();
        let mut line = String::new();
        loop {
            line.clear();
            if s.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let upper = line.to_ascii_uppercase();
            if upper.starts_with("EHLO") {
                let r = format!("250-{MX}\r\n250-PIPELINING\r\n250 STARTTLS\r\n");
                s.get_mut().write_all(r.as_bytes()).await.unwrap();
            } else if upper.starts_with("STARTTLS") {
                s.get_mut()
                    .write_all(b"220 2.0.0 Ready to start TLS\r\n")
                    .await
                    .unwrap();
                break;
            } else {
                s.get_mut().write_all(b"502 5.5.2 no\r\n").await.unwrap();
            }
        }
        let mut down = s.into_inner();
        let mut up = TcpStream::connect(("127.0.0.1", tls_port)).await.unwrap();
        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
    });
    addr
}

/// `openssl s_client -starttls smtp` to `addr` with `args`; sends one line of
/// application data after the handshake, then closes. Returns its output.
async fn s_client(addr: SocketAddr, args: &[&str]) -> String {
    // An EHLO, as a real client's first command after STARTTLS (a lone
    // short command such as NOOP or QUIT would look like a client that gave
    // up: `tls.client_closed_after_handshake`).
    s_client_sending(addr, args, b"EHLO client.example.test\r\n").await
}

/// The same, sending `input` (nothing: it closes right after the handshake).
async fn s_client_sending(addr: SocketAddr, args: &[&str], input: &'static [u8]) -> String {
    let mut cmd = openssl();
    cmd.args(["s_client", "-starttls", "smtp", "-connect"])
        .arg(addr.to_string())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn().unwrap();
        // The line is read once the handshake is done; EOF then ends s_client.
        child.stdin.take().unwrap().write_all(input).unwrap();
        let start = Instant::now();
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("openssl s_client did not finish");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
    .await
    .unwrap()
}

// ---------------------------------------------------------------------------
// The clean session

#[tokio::test]
async fn clean_session_has_no_warning_or_error() {
    let p = pki("clean");
    let issued = p.issue(&leaf(&[MX]));
    let server = LabServer::start(ServerProfile::new(MX, Some(server_tls(&issued))))
        .await
        .unwrap();
    let opts = client(StartTls::Required, Some(tls12()));
    let (events, report) = through_proxy(
        &server,
        &opts,
        &p.toml(&format!("expect_names = [\"{MX}\"]")),
    )
    .await;
    assert!(report.tls && report.error.is_none(), "{report:?}");
    let f = findings_of(&events, 1);
    check(&f, &[]);
    assert!(
        f.is_empty(),
        "a clean session has no finding at all: {}",
        pretty(&f)
    );
    assert_eq!(named(&events, 1, "cert.chain")[0]["trusted"], true);
    assert_eq!(named(&events, 1, "tls.established").len(), 1);
}

// ---------------------------------------------------------------------------
// Relay

#[tokio::test]
async fn upstream_unreachable() {
    let port = closed_port();
    let proxy = TestProxy::start(&format!("127.0.0.1:{port}"), "").await;
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    let got = String::from_utf8(read_until(&mut c, b"\r\n").await).unwrap();
    assert!(got.starts_with("421 4.4.1"), "{got}");
    let events = proxy.wait_summaries(1).await;
    proxy.stop().await;
    let f = findings_of(&events, 1);
    check(&f, &[("upstream.unreachable", "error")]);
    evidence_has(
        &f,
        "upstream.unreachable",
        &format!("tried 127.0.0.1:{port}"),
    );
    evidence_has(&f, "upstream.unreachable", "told the client: 421 4.4.1");
}

/// Reads one SMTP reply (all its lines) from `c`.
async fn reply_of(c: &mut BufReader<TcpStream>) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        assert!(
            c.read_line(&mut line).await.unwrap() > 0,
            "closed after {all:?}"
        );
        all.push_str(&line);
        if line.as_bytes().get(3) != Some(&b'-') {
            return all;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observer_lagged() {
    // The analysis is held up for real: the JSON log goes to a pipe whose
    // reader has stopped reading (`--log -` into a stuck consumer). The
    // log writer blocks, the queue to it fills (a thousand NOOPs), and the
    // session's analysis waits for room there while the client sends a
    // large message. The relay never waits for the analysis: the message
    // goes through whole, the session's analysis queue (8 chunks here)
    // overflows, and what did not fit is counted and reported once the
    // reader comes back.
    let server = LabServer::start(ServerProfile::new(MX, None))
        .await
        .unwrap();
    let (mut reader, writer) = std::io::pipe().unwrap();
    let text = format!(
        "listen = [\"127.0.0.1:0\"]\nupstream = \"{}\"\n[limits]\nobserver_queue = 8\n",
        server.addr()
    );
    let cfg = smtptap::config::RawConfig::from_toml(&text, "test")
        .unwrap()
        .resolve("test")
        .unwrap();
    let events: smtptap::sink::Collector = Default::default();
    let sinks = smtptap::sink::Sinks {
        json: Some(Box::new(writer)),
        memory: Some(events.clone()),
        ..Default::default()
    };
    let running = smtptap::proxy::spawn(cfg, sinks).await.unwrap();
    let mut c = BufReader::new(TcpStream::connect(running.addrs()[0]).await.unwrap());
    assert!(reply_of(&mut c).await.starts_with("220"));
    c.get_mut()
        .write_all(b"EHLO client.example.test\r\n")
        .await
        .unwrap();
    reply_of(&mut c).await;
    // One or two batches of events per exchange: enough to fill the pipe
    // and the writer's queue (sink::QUEUE batches) behind it.
    for _ in 0..2 * smtptap::sink::QUEUE {
        c.get_mut().write_all(b"NOOP\r\n").await.unwrap();
        assert!(reply_of(&mut c).await.starts_with("250"));
    }
    let mut body = b"Subject: big\r\n\r\n".to_vec();
    for i in 0..80_000 {
        body.extend_from_slice(
            format!("line {i:08} of a large message body........\r\n").as_bytes(),
        );
    }
    c.get_mut()
        .write_all(b"MAIL FROM:<a@client.example.test>\r\n")
        .await
        .unwrap();
    assert!(reply_of(&mut c).await.starts_with("250"));
    c.get_mut()
        .write_all(b"RCPT TO:<b@example.test>\r\n")
        .await
        .unwrap();
    assert!(reply_of(&mut c).await.starts_with("250"));
    c.get_mut().write_all(b"DATA\r\n").await.unwrap();
    assert!(reply_of(&mut c).await.starts_with("354"));
    c.get_mut().write_all(&body).await.unwrap();
    c.get_mut().write_all(b".\r\n").await.unwrap();
    assert!(reply_of(&mut c).await.starts_with("250"));
    // The reader comes back: the writer drains, the session ends.
    let drained = std::thread::spawn(move || {
        let mut all = Vec::new();
        std::io::Read::read_to_end(&mut reader, &mut all).map(|_| all.len())
    });
    c.get_mut().write_all(b"QUIT\r\n").await.unwrap();
    assert!(reply_of(&mut c).await.starts_with("221"));
    drop(c);
    for _ in 0..2000 {
        let done = events
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.name() == "session.summary");
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::timeout(Duration::from_secs(60), running.stop())
        .await
        .expect("the proxy stops");
    assert!(
        drained.join().unwrap().unwrap() > 0,
        "nothing reached the log"
    );
    let events = events.lock().unwrap().clone();
    let got = server.received();
    assert_eq!(got.len(), 1, "the message was relayed");
    assert!(got[0].data == body, "the message arrived altered");
    let f = findings_of(&events, 1);
    let lag = named(&events, 1, "observer.lagged");
    assert_eq!(lag.len(), 1, "no observer.lagged event: {}", pretty(&f));
    // From the NOOPs or from within the message on (the queue to the
    // writer may fill before the NOOPs are over): at most the first 8
    // chunks of the message were analysed.
    assert!(lag[0]["bytes_not_analysed"].as_u64().unwrap() > body.len() as u64 / 2);
    // The cleartext session also gives starttls.not_offered; what the
    // observer missed (the end of DATA, the reply) gives nothing else.
    check(
        &f,
        &[
            ("observer.lagged", "warning"),
            ("starttls.not_offered", "error"),
        ],
    );
    evidence_has(
        &f,
        "observer.lagged",
        "bytes not analysed, starting with bytes from the ",
    );
}

// ---------------------------------------------------------------------------
// SMTP and STARTTLS

#[tokio::test]
async fn starttls_not_offered() {
    let server = LabServer::start(ServerProfile::new(MX, None))
        .await
        .unwrap();
    let (events, report) =
        through_proxy(&server, &client(StartTls::IfOffered, Some(tls12())), "").await;
    assert!(!report.tls && report.error.is_none(), "{report:?}");
    let f = findings_of(&events, 1);
    check(&f, &[("starttls.not_offered", "error")]);
    evidence_has(
        &f,
        "starttls.not_offered",
        &format!("EHLO reply from {MX}: PIPELINING, SIZE 52428800, ENHANCEDSTATUSCODES, 8BITMIME, SMTPUTF8"),
    );
    evidence_has(
        &f,
        "starttls.not_offered",
        &format!("banner: 220 {MX} ESMTP lab server ready"),
    );
    let advice = finding(&f, "starttls.not_offered")["advice"]
        .as_str()
        .unwrap();
    assert!(advice.contains("no masking was seen"), "{advice}");
}

#[tokio::test]
async fn smtp_masked_by_firewall() {
    // What a Cisco ASA with "inspect esmtp" turns a Postfix greeting and EHLO
    // reply into: a banner of stars and unknown extensions as XXXXXXXA.
    let up = scripted_server(
        "220 ******************************************\r\n",
        |l| {
            let verb = l.split(' ').next().unwrap_or("").to_ascii_uppercase();
            Some(match verb.as_str() {
                "EHLO" => "250-mx.example.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-XXXXXXXA\r\n250-8BITMIME\r\n250 DSN\r\n".into(),
                "MAIL" | "RCPT" => "250 2.1.0 Ok\r\n".into(),
                "DATA" => "354 End data with <CR><LF>.<CR><LF>\r\n".into(),
                "QUIT" => "221 2.0.0 Bye\r\n".into(),
                _ => "502 5.5.2 Error\r\n".into(),
            })
        },
    )
    .await;
    let proxy = TestProxy::start(&up.to_string(), "").await;
    let report = lab::send(proxy.addr, &client(StartTls::IfOffered, Some(tls12()))).await;
    assert!(report.error.is_none(), "{report:?}");
    let events = proxy.wait_summaries(1).await;
    proxy.stop().await;
    let f = findings_of(&events, 1);
    // Masking hides STARTTLS: both findings belong to this one cause.
    check(
        &f,
        &[
            ("smtp.masked_by_firewall", "error"),
            ("starttls.not_offered", "error"),
        ],
    );
    evidence_has(
        &f,
        "smtp.masked_by_firewall",
        "banner from the server: \"220 ******************************************\"",
    );
    evidence_has(
        &f,
        "smtp.masked_by_firewall",
        "capabilities from the server: \"250-XXXXXXXA\"",
    );
    let advice = finding(&f, "starttls.not_offered")["advice"]
        .as_str()
        .unwrap();
    assert!(advice.contains("firewall masking"), "{advice}");
}

#[tokio::test]
async fn smtp_helo_not_ehlo() {
    let p = pki("helo");
    let issued = p.issue(&leaf(&[MX]));
    let server = LabServer::start(ServerProfile::new(MX, Some(server_tls(&issued))))
        .await
        .unwrap();
    let mut opts = client(StartTls::IfOffered, Some(tls12()));
    opts.helo = true;
    let (events, report) = through_proxy(&server, &opts, &p.toml("")).await;
    assert!(!report.tls && report.error.is_none(), "{report:?}");
    let f = findings_of(&events, 1);
    check(&f, &[("smtp.helo_not_ehlo", "warning")]);
    evidence_has(&f, "smtp.helo_not_ehlo", "client: HELO client.example.test");
}

#[tokio::test]
async fn starttls_required() {
    let p = pki("required");
    let issued = p.issue(&leaf(&[MX]));
    let mut profile = ServerProfile::new(MX, Some(server_tls(&issued)));
    profile.require_tls = true;
    let server = LabServer::start(profile).await.unwrap();
    let (events, report) =
        through_proxy(&server, &client(StartTls::Never, None), &p.toml("")).await;
    assert!(report.error.unwrap().contains("530"));
    let f = findings_of(&events, 1);
    // starttls.not_used would say the same thing again, weaker: not repeated.
    check(&f, &[("starttls.required", "error")]);
    evidence_has(
        &f,
        "starttls.required",
        "server: 530 5.7.0 Must issue a STARTTLS command first",
    );
    evidence_has(
        &f,
        "starttls.required",
        "client: MAIL FROM:<alice@client.example.test>",
    );
    evidence_has(
        &f,
        "starttls.required",
        "STARTTLS was offered in the EHLO reply",
    );
}

#[tokio::test]
async fn starttls_refused() {
    let p = pki("refused");
    let issued = p.issue(&leaf(&[MX]));
    let mut profile = ServerProfile::new(MX, Some(server_tls(&issued)));
    profile.refuse_starttls = true;
    let server = LabServer::start(profile).await.unwrap();
    // An opportunistic client goes on in cleartext after the 454.
    let (events, report) = through_proxy(
        &server,
        &client(StartTls::IfOffered, Some(tls12())),
        &p.toml(""),
    )
    .await;
    assert!(!report.tls && report.error.is_none(), "{report:?}");
    let f = findings_of(&events, 1);
    check(&f, &[("starttls.refused", "error")]);
    evidence_has(
        &f,
        "starttls.refused",
        "server: 454 4.7.0 TLS not available due to local problem",
    );
}

#[tokio::test]
async fn starttls_not_used() {
    let p = pki("notused");
    let issued = p.issue(&leaf(&[MX]));
    let server = LabServer::start(ServerProfile::new(MX, Some(server_tls(&issued))))
        .await
        .unwrap();
    let (events, report) =
        through_proxy(&server, &client(StartTls::Never, None), &p.toml("")).await;
    assert!(report.error.is_none(), "{report:?}");
    let f = findings_of(&events, 1);
    check(&f, &[("starttls.not_used", "warning")]);
    evidence_has(&f, "starttls.not_used", "client sent MAIL without STARTTLS");
}

/// A client that authenticates with AUTH PLAIN before STARTTLS: an error
/// naming the mechanism; the secret is nowhere in the events.
#[tokio::test]
async fn smtp_auth_cleartext() {
    let server = scripted_server("220 mx.example.test ESMTP\r\n", |l| {
        let l = l.to_ascii_uppercase();
        Some(
            if l.starts_with("EHLO") {
                "250-mx.example.test\r\n250-AUTH PLAIN LOGIN\r\n250 STARTTLS\r\n"
            } else if l.starts_with("AUTH") {
                "235 2.7.0 Authentication successful\r\n"
            } else if l.starts_with("QUIT") {
                "221 2.0.0 Bye\r\n"
            } else {
                "250 2.0.0 Ok\r\n"
            }
            .to_string(),
        )
    })
    .await;
    let proxy = TestProxy::start(&server.to_string(), "").await;
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    read_until(&mut c, b"ESMTP\r\n").await;
    c.write_all(b"EHLO client.example.test\r\n").await.unwrap();
    read_until(&mut c, b"250 STARTTLS\r\n").await;
    // "\0alice\0s3cret-Pa55" in base64.
    let secret = "AGFsaWNlAHMzY3JldC1QYTU1";
    c.write_all(format!("AUTH PLAIN {secret}\r\n").as_bytes())
        .await
        .unwrap();
    read_until(&mut c, b"235").await;
    c.write_all(b"QUIT\r\n").await.unwrap();
    read_until(&mut c, b"221").await;
    drop(c);
    let events = proxy.wait_summaries(1).await;
    proxy.stop().await;
    let f = findings_of(&events, 1);
    check(&f, &[("smtp.auth_cleartext", "error")]);
    evidence_has(
        &f,
        "smtp.auth_cleartext",
        "client: AUTH PLAIN with an initial response before any TLS",
    );
    evidence_has(
        &f,
        "smtp.auth_cleartext",
        "STARTTLS was offered in the EHLO reply",
    );
    let all = serde_json::to_string(&events).unwrap();
    assert!(!all.contains(secret), "the secret reached the events");
}

#[tokio::test]
async fn tls_cleartext_fallback() {
    let p = pki("fallback");
    let issued = p.issue(&leaf(&[MX]));
    let server = LabServer::start(ServerProfile::new(MX, Some(server_tls(&issued))))
        .await
        .unwrap();
    let proxy = TestProxy::start(&server.addr().to_string(), &p.toml("")).await;
    // Session 1: the client verifies against another CA and aborts the handshake.
    let other = Ca::new("some other CA").unwrap();
    let verifying = lab::client_config_verifying(&[other.der()]).unwrap();
    let r1 = lab::send(proxy.addr, &client(StartTls::Required, Some(verifying))).await;
    assert!(r1.error.is_some(), "{r1:?}");
    proxy.wait_summaries(1).await;
    // Session 2: the same client retries in cleartext.
    let r2 = lab::send(proxy.addr, &client(StartTls::Never, None)).await;
    assert!(r2.error.is_none(), "{r2:?}");
    let events = proxy.wait_summaries(2).await;
    proxy.stop().await;
    let f1 = findings_of(&events, 1);
    check(&f1, &[("tls.handshake_failed", "error")]);
    let f = findings_of(&events, 2);
    check(
        &f,
        &[
            ("tls.cleartext_fallback", "error"),
            ("starttls.not_used", "warning"),
        ],
    );
    evidence_has(
        &f,
        "tls.cleartext_fallback",
        "session 1 from the same client failed its TLS handshake",
    );
    evidence_has(
        &f,
        "tls.cleartext_fallback",
        "most likely it rejected the certificate",
    );
}

#[tokio::test]
async fn smtp_implicit_tls_mismatch() {
    let server = LabServer::start(ServerProfile::new(MX, None))
        .await
        .unwrap();
    let proxy = TestProxy::start(&server.addr().to_string(), "").await;
    // An SMTPS client (port 465 habit) on a STARTTLS port; the greeting comes
    // first here (the client reads it, then starts TLS anyway).
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let banner = read_until(&mut tcp, b"\r\n").await;
    assert!(banner.starts_with(b"220 "));
    tls_client_gets_the_mismatch(proxy, tcp).await;
}

/// A TLS client on `tcp` (through `proxy`) whose handshake must fail against
/// an SMTP server; the session is the implicit-TLS mismatch. Returns its events.
async fn tls_client_gets_the_mismatch(proxy: TestProxy, tcp: TcpStream) -> Vec<Event> {
    let name = rustls::pki_types::ServerName::try_from(MX).unwrap();
    let r = tokio_rustls::TlsConnector::from(tls12())
        .connect(name, tcp)
        .await;
    assert!(r.is_err(), "TLS cannot succeed against an SMTP server");
    drop(r);
    let events = proxy.wait_summaries(1).await;
    proxy.stop().await;
    let f = findings_of(&events, 1);
    check(&f, &[("smtp.implicit_tls_mismatch", "error")]);
    evidence_has(
        &f,
        "smtp.implicit_tls_mismatch",
        "client at byte 0: client sent a TLS ClientHello",
    );
    events
}

#[tokio::test]
async fn smtp_implicit_tls_mismatch_when_the_client_hello_comes_before_the_greeting() {
    // The upstream greets 300 ms late, so the client's ClientHello is the
    // first thing the proxy sees: smtptap holds it until the server speaks,
    // and the SMTP greeting makes it the same finding as above.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = s.write_all(b"220 mx.example.test ESMTP slow\r\n").await;
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink).await;
    });
    let proxy = TestProxy::start(&up.to_string(), "").await;
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let events = tls_client_gets_the_mismatch(proxy, tcp).await;
    let banner = named(&events, 1, "smtp.banner");
    assert_eq!(
        banner[0]["text"], "mx.example.test ESMTP slow",
        "{banner:?}"
    );
    assert!(named(&events, 1, "tls.started").is_empty());
    let sum = &named(&events, 1, "session.summary")[0];
    assert_eq!(sum["implicit_tls"], false);
    assert_eq!(sum["observation"], "desync");
}

/// One SMTPS session (TLS from the first byte) through a proxy configured
/// with `proxy_extra` before its `[tls]` section: checks it went through and
/// was clean, and returns its events.
async fn smtps_session(test: &str, proxy_extra: &str) -> Vec<Event> {
    let p = pki(test);
    let issued = p.issue(&leaf(&[MX]));
    let mut profile = ServerProfile::new(MX, Some(server_tls(&issued)));
    profile.implicit_tls = true;
    profile.offer_starttls = false;
    let server = LabServer::start(profile).await.unwrap();
    let opts = client(StartTls::Implicit, Some(tls12()));
    let cfg = format!(
        "{proxy_extra}\n{}",
        p.toml(&format!("expect_names = [\"{MX}\"]"))
    );
    let (events, report) = through_proxy(&server, &opts, &cfg).await;
    assert!(report.tls && report.error.is_none(), "{report:?}");
    assert_eq!(
        report.data_reply.as_deref(),
        Some("250 2.0.0 Ok: queued as LAB1"),
        "{report:?}"
    );
    let f = findings_of(&events, 1);
    check(&f, &[]);
    assert!(f.is_empty(), "{}", pretty(&f));
    assert_eq!(named(&events, 1, "tls.started").len(), 1);
    assert_eq!(named(&events, 1, "tls.client_hello")[0]["sni"], MX);
    assert_eq!(named(&events, 1, "cert.chain")[0]["trusted"], true);
    assert_eq!(named(&events, 1, "tls.established").len(), 1);
    assert!(named(&events, 1, "smtp.banner").is_empty());
    let sum = &named(&events, 1, "session.summary")[0];
    assert_eq!(sum["implicit_tls"], true);
    assert_eq!(sum["tls_established"], true);
    assert_eq!(sum["observation"], "complete");
    events
}

/// An SMTPS session through a proxy that was not told: detected from the
/// first bytes of both sides, analysed like any TLS session, and clean.
#[tokio::test]
async fn implicit_tls_is_detected_without_configuration() {
    let events = smtps_session("implicit-detected", "").await;
    assert_eq!(
        named(&events, 1, "tls.started")[0]["after"],
        "implicit_detected"
    );
}

/// The same with `implicit_tls = true` configured: `after` says so.
#[tokio::test]
async fn implicit_tls_configured() {
    let events = smtps_session("implicit-configured", "implicit_tls = true").await;
    assert_eq!(named(&events, 1, "tls.started")[0]["after"], "implicit");
}

#[tokio::test]
async fn smtp_server_not_smtp() {
    // The upstream port is an SSH server.
    let up = scripted_server("SSH-2.0-OpenSSH_9.6p1 Debian-4\r\n", |_| None).await;
    let proxy = TestProxy::start(&up.to_string(), "").await;
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    let got = read_until(&mut c, b"\r\n").await;
    assert!(got.starts_with(b"SSH-2.0"));
    c.write_all(b"EHLO client.example.test\r\n").await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut rest)).await;
    drop(c);
    let events = proxy.wait_summaries(1).await;
    proxy.stop().await;
    let f = findings_of(&events, 1);
    check(&f, &[("smtp.server_not_smtp", "error")]);
    evidence_has(&f, "smtp.server_not_smtp", "server at byte 0");
}

#[tokio::test]
async fn smtp_desync() {
    let p = pki("desync");
    let issued = p.issue(&leaf(&[MX]));
    let server = LabServer::start(ServerProfile::new(MX, Some(server_tls(&issued))))
        .await
        .unwrap();
    let proxy = TestProxy::start(&server.addr().to_string(), &p.toml("")).await;
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    read_until(&mut c, b"ready\r\n").await;
    c.write_all(b"EHLO client.example.test\r\n").await.unwrap();
    read_until(&mut c, b"250 SMTPUTF8\r\n").await;
    // A 6000-byte command line: beyond what the observer follows (4096).
    let mut long = b"NOOP ".to_vec();
    long.extend(std::iter::repeat_n(b'A', 6000));
    long.extend_from_slice(b"\r\n");
    c.write_all(&long).await.unwrap();
    c.write_all(b"QUIT\r\n").await.unwrap();
    let got = read_until(&mut c, b"221 2.0.0 Bye\r\n").await;
    assert!(got.ends_with(b"221 2.0.0 Bye\r\n"), "the relay went on");
    drop(c);
    let events = proxy.wait_summaries(1).await;
    proxy.stop().await;
    let f = findings_of(&events, 1);
    check(&f, &[("smtp.desync", "warning")]);
    evidence_has(&f, "smtp.desync", "client at byte");
}

// ---------------------------------------------------------------------------
// TLS

#[tokio::test]
async fn tls_handshake_failed_client_rejects_untrusted_certificate() {
    let p = pki("hs-unknown-ca");
    let issued = p.issue(&leaf(&[MX]));
    let server = LabServer::start(ServerProfile::new(MX, Some(server_tls(&issued))))
        .await
        .unwrap();
    // The proxy trusts the server's CA; the client does not.
    let other = Ca::new("the client's only CA").unwrap();
    let opts = client(
        StartTls::Required,
        Some(verifying(&[other.der()], &[&rustls::version::TLS12])),
    );
    let (events, report) = through_proxy(&server, &opts, &p.toml("")).await;
    assert!(!report.tls && report.error.is_some(), "{report:?}");
    let f = findings_of(&events, 1);
    check(&f, &[("tls.handshake_failed", "error")]);
    evidence_has(
        &f,
        "tls.handshake_failed",
        "TLS alert from the client: fatal unknown_ca (48)",
    );
    evidence_has(
        &f,
        "tls.handshake_failed",
        "ServerHello: TLSv1.2, TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    );
    let title = finding(&f, "tls.handshake_failed")["title"]
        .as_str()
        .unwrap();
    assert!(
        title.contains("the client does not trust the CA"),
        "{title}"
    );
    // smtptap trusts the chain: no certificate finding to point at; the
    // advice says where the client's reason is instead.
    let advice = finding(&f, "tls.handshake_failed")["advice"]
        .as_str()
        .unwrap();
    assert!(!advice.contains("see the certificate findings"), "{advice}");
    assert!(advice.contains("Read the client's log"), "{advice}");
}

#[tokio::test]
async fn tls_handshake_failed_tls13_client_rejects_certificate_with_encrypted_alert() {
    let p = pki("hs-tls13");
    let issued = p.issue(&leaf(&[MX]));
    let server = LabServer::start(ServerProfile::new(MX, Some(server_tls(&issued))))
        .await
        .unwrap();
    let other = Ca::new("the client's only CA").unwrap();
    let opts = client(
        StartTls::Required,
        Some(lab::client_config_verifying(&[other.der()]).unwrap()),
    );
    let (events, report) = through_proxy(&server, &opts, &p.toml("side_probe = false")).await;
    assert!(!report.tls && report.error.is_some(), "{report:?}");
    let f = findings_of(&events, 1);
    // TLS 1.3 hides the certificate: the info finding comes along.
    check(
        &f,
        &[
            ("tls.handshake_failed", "error"),
            ("tls.certificate_hidden", "info"),
        ],
    );
    evidence_has(&f, "tls.handshake_failed", "ServerHello: TLSv1.3");
    evidence_has(
        &f,
        "tls.handshake_failed",
        "TLS alert from the client: unknown encrypted (0)",
    );
    let title = finding(&f, "tls.handshake_failed")["title"]
        .as_str()
        .unwrap();
    assert!(
        title.contains("most likely it rejected the certificate"),
        "{title}"
    );
    // No certificate finding exists (TLS 1.3 hid it): the advice says how to
    // check the certificate instead.
    let advice = finding(&f, "tls.handshake_failed")["advice"]
        .as_str()
        .unwrap();
    assert!(!advice.contains("see the certificate findings"), "{advice}");
    assert!(advice.contains("smtptap probe HOST"), "{advice}");
}

/// The same rejection with the side-probe on (the default): the certificate
/// the client refused is read on smtptap's own connection, shown and judged
/// (here: trusted by smtptap's store, so the client's trust store is the
/// place to look), and the hidden-certificate finding gives way to it.
#[tokio::test]
async fn tls_handshake_failed_tls13_with_the_side_probe_shows_the_certificate() {
    let p = pki("hs-tls13-side");
    let issued = p.issue(&leaf(&[MX]));
    let server = LabServer::start(ServerProfile::new(MX, Some(server_tls(&issued))))
        .await
        .unwrap();
    let other = Ca::new("the client's only CA").unwrap();
    let opts = client(
        StartTls::Required,
        Some(lab::client_config_verifying(&[other.der()]).unwrap()),
    );
    let (events, report) = through_proxy(&server, &opts, &p.toml("")).await;
    assert!(!report.tls && report.error.is_some(), "{report:?}");
    let f = findings_of(&events, 1);
    check(&f, &[("tls.handshake_failed", "error")]);
    let ids: Vec<&str> = f.iter().map(|f| f["id"].as_str().unwrap()).collect();
    assert!(!ids.contains(&"tls.certificate_hidden"), "{ids:?}");
    assert!(!ids.contains(&"cert.not_checked"), "{ids:?}");
    let sp = named(&events, 1, "tls.side_probe");
    assert_eq!(sp.len(), 1, "{sp:?}");
    assert_eq!(sp[0]["ok"], true);
    let chain = named(&events, 1, "cert.chain");
    assert_eq!(chain[0]["source"], "side_probe");
    assert_eq!(chain[0]["trusted"], true);
}

/// `openssl s_client -starttls smtp -tls1_2` with nothing to send: it
/// completes the handshake, sends close_notify and closes, as a verifying
/// sender does when it rejects the certificate after the handshake. The
/// server's certificate is from a CA smtptap does not know either (the
/// server sends no intermediate): that finding is given as the likely reason.
#[tokio::test]
async fn tls_client_closed_after_handshake_with_the_certificate_as_reason() {
    let p = pki("gave-up-12");
    let other = Ca::new("a CA nobody trusts").unwrap();
    let issued = other.issue(&leaf(&[MX])).unwrap();
    let server = LabServer::start(ServerProfile::new(MX, Some(server_tls(&issued))))
        .await
        .unwrap();
    let proxy = TestProxy::start(&server.addr().to_string(), &p.toml("")).await;
    let out = s_client_sending(proxy.addr, &["-tls1_2", "-servername", MX], b"").await;
    assert!(out.contains("CONNECTED"), "{out}");
    let events = proxy.wait_summaries(1).await;
    proxy.stop().await;
    let f = findings_of(&events, 1);
    check(
        &f,
        &[
            ("tls.client_closed_after_handshake", "error"),
            ("cert.missing_intermediate", "error"),
        ],
    );
    let id = "tls.client_closed_after_handshake";
    evidence_has(&f, id, "TLS handshake completed: TLSv1.2");
    evidence_has(&f, id, "the client sent no command and closed");
    evidence_has(&f, id, "likely reason, from smtptap's own check");
    evidence_has(&f, id, "(cert.missing_intermediate)");
    let gave_up = named(&events, 1, "tls.client_gave_up");
    assert_eq!(gave_up.len(), 1, "{gave_up:?}");
    assert_eq!(gave_up[0]["sent"], "nothing");
    assert_eq!(gave_up[0]["alert"], true);
    let title = finding(&f, id)["title"].as_str().unwrap();
    assert!(
        title.contains("most likely it did not accept the server's certificate"),
        "{title}"
    );
}

/// The same in TLS 1.3 (the close_notify is an encrypted 19-byte record):
/// the side-probe reads the certificate, smtptap trusts it, so the evidence
/// says the client's own rules differ.
#[tokio::test]
async fn tls_client_closed_after_handshake_tls13() {
    let p = pki("gave-up-13");
    let issued = p.issue(&leaf(&[MX]));
    let server = LabServer::start(ServerProfile::new(MX, Some(server_tls(&issued))))
        .await
        .unwrap();
    let proxy = TestProxy::start(&server.addr().to_string(), &p.toml("")).await;
    let out = s_client_sending(proxy.addr, &["-tls1_3", "-servername", MX], b"").await;
    assert!(out.contains("CONNECTED"), "{out}");
    let events = proxy.wait_summaries(1).await;
    proxy.stop().await;
    let f = findings_of(&events, 1);
    check(&f, &[("tls.client_closed_after_handshake", "error")]);
    let id = "tls.client_closed_after_handshake";
    evidence_has(&f, id, "TLS handshake completed: TLSv1.3");
    evidence_has(&f, id, "found nothing wrong with it");
    let ids: Vec<&str> = f.iter().map(|f| f["id"].as_str().unwrap()).collect();
    assert!(!ids.contains(&"tls.handshake_failed"), "{ids:?}");
}

fn provider_with(suites: &[rustls::SupportedCipherSuite]) -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::CryptoProvider {
        cipher_suites: suites.to_vec(),
        ..smtptap::crypto::provider()
    })
}

#[tokio::test]
async fn tls_handshake_failed_no_common_cipher_suite() {
    use rustls::crypto::ring::cipher_suite as cs;
    let p = pki("hs-no-suite");
    let issued = p.issue(&leaf(&[MX]));
    // The server only does AES-GCM, the client only ChaCha20.
    let server_cfg = rustls::ServerConfig::builder_with_provider(provider_with(&[
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ]))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(issued.rustls_chain(), issued.rustls_key())
    .unwrap();
    let server = LabServer::start(ServerProfile::new(MX, Some(Arc::new(server_cfg))))
        .await
        .unwrap();
    let client_cfg = rustls::ClientConfig::builder_with_provider(provider_with(&[
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ]))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates({
        let mut r = rustls::RootCertStore::empty();
        r.add(rustls::pki_types::CertificateDer::from(p.root.der()))
            .unwrap();
        r
    })
    .with_no_client_auth();
    let opts = client(StartTls::Required, Some(Arc::new(client_cfg)));
    let (events, report) = through_proxy(&server, &opts, &p.toml("")).await;
    assert!(!report.tls && report.error.is_some(), "{report:?}");
    let f = findings_of(&events, 1);
    check(&f, &[("tls.handshake_failed", "error")]);
    evidence_has(
        &f,
        "tls.handshake_failed",
        // rustls adds the renegotiation SCSV: said, not counted.
        "ClientHello: up to TLSv1.2, 1 cipher suite (+ TLS_EMPTY_RENEGOTIATION_INFO_SCSV \
         signalling value), SNI mx.example.test",
    );
    evidence_has(
        &f,
        "tls.handshake_failed",
        "TLS alert from the server: fatal handshake_failure (40)",
    );
    let title = finding(&f, "tls.handshake_failed")["title"]
        .as_str()
        .unwrap();
    assert!(
        title.contains("no TLS version or cipher suite acceptable"),
        "{title}"
    );
}

#[tokio::test]
async fn tls_not_tls() {
    let p = pki("not-tls");
    let issued = p.issue(&leaf(&[MX]));
    let server = LabServer::start(ServerProfile::new(MX, Some(server_tls(&issued))))
        .await
        .unwrap();
    let proxy = TestProxy::start(&server.addr().to_string(), &p.toml("")).await;
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    read_until(&mut c, b"ready\r\n").await;
    c.write_all(b"EHLO client.example.test\r\n").await.unwrap();
    read_until(&mut c, b"250 SMTPUTF8\r\n").await;
    c.write_all(b"STARTTLS\r\n").await.unwrap();
    read_until(&mut c, b"220 2.0.0 Ready to start TLS\r\n").await;
    // A broken client goes on in cleartext.
    c.write_all(b"MAIL FROM:<alice@client.example.test>\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut rest)).await;
    drop(c);
    let events = proxy.wait_summaries(1).await;
    proxy.stop().await;
    let f = findings_of(&events, 1);
    check(&f, &[("tls.not_tls", "error")]);
    evidence_has(&f, "tls.not_tls", "client at byte 0");
    let title = finding(&f, "tls.not_tls")["title"].as_str().unwrap();
    assert_eq!(title, "After STARTTLS the client did not speak TLS");
}

#[tokio::test]
async fn tls_legacy_version_and_weak_cipher_with_openssl_tls10() {
    let p = pki("tls10");
    let issued = p.issue(&leaf(&[MX]));
    let suite = ["-cipher", "ECDHE-ECDSA-AES128-SHA:@SECLEVEL=0"];
    let (_srv, port) = s_server(&p, &issued, &[&["-tls1"][..], &suite[..]].concat());
    let up = starttls_bridge(port).await;
    let proxy = TestProxy::start(
        &up.to_string(),
        &p.toml(&format!("expect_names = [\"{MX}\"]")),
    )
    .await;
    let out = s_client(proxy.addr, &[&["-tls1"][..], &suite[..]].concat()).await;
    assert!(out.contains("ECDHE-ECDSA-AES128-SHA"), "s_client: {out}");
    let events = proxy.wait_summaries(1).await;
    proxy.stop().await;
    let f = findings_of(&events, 1);
    check(
        &f,
        &[
            ("tls.legacy_version", "warning"),
            ("tls.weak_cipher", "warning"),
            ("tls.no_sni", "info"),
        ],
    );
    evidence_has(
        &f,
        "tls.legacy_version",
        "ServerHello: TLSv1.0, TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    );
    let title = finding(&f, "tls.weak_cipher")["title"].as_str().unwrap();
    assert!(title.contains("CBC with SHA-1 MAC"), "{title}");
    assert_eq!(named(&events, 1, "cert.chain")[0]["trusted"], true);
}

#[tokio::test]
async fn tls_weak_cipher_on_tls12_with_openssl() {
    let p = pki("cbc12");
    let issued = p.issue(&leaf(&[MX]));
    let args = ["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA"];
    let (_srv, port) = s_server(&p, &issued, &args);
    let up = starttls_bridge(port).await;
    let proxy = TestProxy::start(&up.to_string(), &p.toml("")).await;
    let out = s_client(proxy.addr, &[&args[..], &["-servername", MX][..]].concat()).await;
    assert!(out.contains("ECDHE-ECDSA-AES128-SHA"), "s_client: {out}");
    let events = proxy.wait_summaries(1).await;
    proxy.stop().await;
    let f = findings_of(&events, 1);
    check(&f, &[("tls.weak_cipher", "warning")]);
    evidence_has(
        &f,
        "tls.weak_cipher",
        "ServerHello: TLSv1.2, TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    );
}

#[tokio::test]
async fn tls_no_sni() {
    let p = pki("no-sni");
    let issued = p.issue(&leaf(&[MX]));
    let server = LabServer::start(ServerProfile::new(MX, Some(server_tls(&issued))))
        .await
        .unwrap();
    // An IP address as the server name: rustls sends no SNI.
    let mut opts = client(StartTls::Required, Some(tls12()));
    opts.server_name = "127.0.0.1".into();
    let (events, report) = through_proxy(&server, &opts, &p.toml("")).await;
    assert!(report.tls && report.error.is_none(), "{report:?}");
    let f = findings_of(&events, 1);
    check(&f, &[("tls.no_sni", "info")]);
    evidence_has(
        &f,
        "tls.no_sni",
        "ClientHello without a server_name extension",
    );
}

#[tokio::test]
async fn tls_certificate_hidden_in_tls13() {
    let p = pki("tls13");
    let issued = p.issue(&leaf(&[MX]));
    let server = LabServer::start(ServerProfile::new(MX, Some(server_tls(&issued))))
        .await
        .unwrap();
    let opts = client(StartTls::Required, Some(lab::client_config_opportunistic()));
    let (events, report) = through_proxy(&server, &opts, &p.toml("side_probe = false")).await;
    assert!(report.tls && report.error.is_none(), "{report:?}");
    let f = findings_of(&events, 1);
    check(&f, &[("tls.certificate_hidden", "info")]);
    evidence_has(&f, "tls.certificate_hidden", "negotiated TLSv1.3");
    assert!(named(&events, 1, "cert.info").is_empty());
}

/// TLS 1.3 hides the certificate: the expected name, trust and expiry
/// configured for the session could not be checked, and that is said, naming
/// the name and pointing at `smtptap probe`.
#[tokio::test]
async fn cert_not_checked_when_tls13_hides_the_certificate() {
    let p = pki("not-checked");
    let issued = p.issue(&leaf(&[MX]));
    let server = LabServer::start(ServerProfile::new(MX, Some(server_tls(&issued))))
        .await
        .unwrap();
    let opts = client(StartTls::Required, Some(lab::client_config_opportunistic()));
    let (events, report) = through_proxy(
        &server,
        &opts,
        &p.toml("expect_names = [\"mx.partner.example\"]\nside_probe = false"),
    )
    .await;
    assert!(report.tls && report.error.is_none(), "{report:?}");
    let f = findings_of(&events, 1);
    check(
        &f,
        &[
            ("tls.certificate_hidden", "info"),
            ("cert.not_checked", "info"),
        ],
    );
    evidence_has(
        &f,
        "cert.not_checked",
        "expected name not checked: mx.partner.example",
    );
    evidence_has(
        &f,
        "cert.not_checked",
        "trust of the chain and expiry dates not checked",
    );
    let nc = finding(&f, "cert.not_checked");
    assert!(
        nc["title"].as_str().unwrap().contains("mx.partner.example"),
        "{nc}"
    );
    assert!(
        nc["advice"]
            .as_str()
            .unwrap()
            .contains("smtptap probe HOST --expect-name mx.partner.example"),
        "{nc}"
    );
    assert!(named(&events, 1, "cert.info").is_empty());

    // With TLS 1.2 the certificate is seen and checked: no such finding.
    let (events, _) = through_proxy(
        &server,
        &client(StartTls::Required, Some(tls12())),
        &p.toml(&format!("expect_names = [\"{MX}\"]")),
    )
    .await;
    let f = findings_of(&events, 1);
    assert!(
        f.iter().all(|x| x["id"] != "cert.not_checked"),
        "{}",
        pretty(&f)
    );
}

#[tokio::test]
async fn tls_client_cert_missing() {
    let p = pki("client-cert");
    let issued = p.issue(&leaf(&[MX]));
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(p.root.der()))
        .unwrap();
    // The server asks for a client certificate but does not require one.
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
        .allow_unauthenticated()
        .build()
        .unwrap();
    let cfg = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(issued.rustls_chain(), issued.rustls_key())
        .unwrap();
    let server = LabServer::start(ServerProfile::new(MX, Some(Arc::new(cfg))))
        .await
        .unwrap();
    let (events, report) = through_proxy(
        &server,
        &client(StartTls::Required, Some(tls12())),
        &p.toml(""),
    )
    .await;
    assert!(report.tls && report.error.is_none(), "{report:?}");
    let f = findings_of(&events, 1);
    check(&f, &[("tls.client_cert_missing", "warning")]);
    evidence_has(
        &f,
        "tls.client_cert_missing",
        "CertificateRequest from the server",
    );
    assert_eq!(named(&events, 1, "tls.certificate_request").len(), 1);
}

// ---------------------------------------------------------------------------
// Certificates

/// A TLS 1.2 session (certificate visible) to a lab server presenting `chain`.
async fn cert_session(p: &Pki, hostname: &str, issued: &Issued, extra: &str) -> Vec<Value> {
    let server = LabServer::start(ServerProfile::new(hostname, Some(server_tls(issued))))
        .await
        .unwrap();
    let (events, report) = through_proxy(
        &server,
        &client(StartTls::Required, Some(tls12())),
        &p.toml(extra),
    )
    .await;
    assert!(report.tls && report.error.is_none(), "{report:?}");
    assert_eq!(named(&events, 1, "cert.info").len(), issued.chain_der.len());
    findings_of(&events, 1)
}

#[tokio::test]
async fn cert_name_mismatch_gateway_case() {
    let p = pki("name-mismatch");
    let gw = "mail.protection.gateway.example";
    let issued = p.issue(&leaf(&[gw, "*.mail.protection.gateway.example"]));
    let f = cert_session(&p, gw, &issued, "expect_names = [\"mail.partner.example\"]").await;
    check(&f, &[("cert.name_mismatch", "error")]);
    evidence_has(&f, "cert.name_mismatch", "expected: mail.partner.example");
    evidence_has(
        &f,
        "cert.name_mismatch",
        "presented: mail.protection.gateway.example, *.mail.protection.gateway.example",
    );
    let advice = finding(&f, "cert.name_mismatch")["advice"]
        .as_str()
        .unwrap();
    assert!(
        advice.starts_with("The MX points at a gateway that presents its own certificate (mail.protection.gateway.example"),
        "{advice}"
    );
}

#[tokio::test]
async fn cert_host_mismatch() {
    let p = pki("host-mismatch");
    let issued = p.issue(&leaf(&[MX]));
    let server = LabServer::start(ServerProfile::new(MX, Some(server_tls(&issued))))
        .await
        .unwrap();
    let proxy = TestProxy::start(&format!("localhost:{}", server.addr().port()), &p.toml("")).await;
    let report = lab::send(proxy.addr, &client(StartTls::Required, Some(tls12()))).await;
    assert!(report.tls && report.error.is_none(), "{report:?}");
    let events = proxy.wait_summaries(1).await;
    proxy.stop().await;
    let f = findings_of(&events, 1);
    check(&f, &[("cert.host_mismatch", "warning")]);
    evidence_has(&f, "cert.host_mismatch", "dialled: localhost");
    evidence_has(&f, "cert.host_mismatch", &format!("presented: {MX}"));
}

#[tokio::test]
async fn cert_announced_name_mismatch() {
    let p = pki("announced");
    let issued = p.issue(&leaf(&["smtp.other.example"]));
    let f = cert_session(&p, MX, &issued, "").await;
    check(&f, &[("cert.announced_name_mismatch", "warning")]);
    evidence_has(
        &f,
        "cert.announced_name_mismatch",
        &format!("announced (banner/EHLO): {MX}"),
    );
    evidence_has(
        &f,
        "cert.announced_name_mismatch",
        "presented: smtp.other.example",
    );
}

#[tokio::test]
async fn cert_expired() {
    let p = pki("expired");
    let issued = p.issue(&leaf(&[MX]).with_days(-400, -3));
    let f = cert_session(&p, MX, &issued, "").await;
    // The chain does not verify either, for the same reason: not repeated.
    check(&f, &[("cert.expired", "error")]);
    evidence_has(&f, "cert.expired", "SHA-1 thumbprint ");
    let title = finding(&f, "cert.expired")["title"].as_str().unwrap();
    assert!(
        title.contains(&format!("server certificate #0 ({MX}) expired")),
        "{title}"
    );
}

#[tokio::test]
async fn cert_expiring() {
    let p = pki("expiring");
    let issued = p.issue(&leaf(&[MX]).with_days(-300, 10));
    let f = cert_session(&p, MX, &issued, "").await;
    check(&f, &[("cert.expiring", "warning")]);
    let title = finding(&f, "cert.expiring")["title"].as_str().unwrap();
    assert!(
        title.contains("expires in 9 day(s)") || title.contains("expires in 10 day(s)"),
        "{title}"
    );
}

#[tokio::test]
async fn cert_not_yet_valid() {
    let p = pki("not-yet-valid");
    let issued = p.issue(&leaf(&[MX]).with_days(5, 90));
    let f = cert_session(&p, MX, &issued, "").await;
    check(&f, &[("cert.not_yet_valid", "error")]);
    evidence_has(&f, "cert.not_yet_valid", "valid ");
}

#[tokio::test]
async fn cert_self_signed() {
    let p = pki("self-signed");
    let issued = mint::self_signed(&leaf(&[MX])).unwrap();
    let f = cert_session(&p, MX, &issued, "").await;
    check(&f, &[("cert.self_signed", "error")]);
    evidence_has(&f, "cert.self_signed", "verification: self_signed");
}

#[tokio::test]
async fn cert_missing_intermediate() {
    let p = pki("missing-intermediate");
    let inter = p
        .root
        .intermediate("findings test intermediate CA")
        .unwrap();
    let full = inter.issue(&leaf(&[MX])).unwrap();
    assert_eq!(full.chain_der.len(), 2);
    let leaf_only = Issued {
        chain_der: vec![full.chain_der[0].clone()],
        key_der: full.key_der.clone(),
    };
    let f = cert_session(&p, MX, &leaf_only, "").await;
    check(&f, &[("cert.missing_intermediate", "error")]);
    evidence_has(
        &f,
        "cert.missing_intermediate",
        "issuer CN=findings test intermediate CA",
    );
    evidence_has(
        &f,
        "cert.missing_intermediate",
        "chain as sent: 1 certificate(s)",
    );
}

#[tokio::test]
async fn cert_untrusted_unknown_ca() {
    let p = pki("untrusted");
    // A private CA the proxy does not know; the server sends its root too.
    let private = Ca::new("Some Private Root CA").unwrap();
    let mut issued = private.issue(&leaf(&[MX])).unwrap();
    issued.chain_der.push(private.der());
    let f = cert_session(&p, MX, &issued, "").await;
    check(&f, &[("cert.untrusted", "error")]);
    evidence_has(&f, "cert.untrusted", "verification: unknown_issuer");
    evidence_has(&f, "cert.untrusted", "issuer CN=Some Private Root CA");
}

#[tokio::test]
async fn cert_no_revocation_info() {
    let p = pki("no-revocation");
    let issued = p.issue(&LeafSpec::server([MX]));
    let f = cert_session(&p, MX, &issued, "").await;
    check(&f, &[("cert.no_revocation_info", "info")]);
    evidence_has(
        &f,
        "cert.no_revocation_info",
        "no CRL distribution point, no OCSP URL",
    );
}

// ---------------------------------------------------------------------------
// Messages

#[tokio::test]
async fn smtp_message_rejected() {
    let mut profile = ServerProfile::new(MX, None);
    profile.data_reply = Some("554 5.7.1 Message rejected: spam content".into());
    let server = LabServer::start(profile).await.unwrap();
    let (events, report) = through_proxy(&server, &client(StartTls::IfOffered, None), "").await;
    assert_eq!(
        report.data_reply.as_deref(),
        Some("554 5.7.1 Message rejected: spam content")
    );
    let f = findings_of(&events, 1);
    // Cleartext (to see the reply): starttls.not_offered comes with it.
    check(
        &f,
        &[
            ("smtp.message_rejected", "error"),
            ("starttls.not_offered", "error"),
        ],
    );
    evidence_has(
        &f,
        "smtp.message_rejected",
        "server: 554 5.7.1 Message rejected: spam content",
    );
    evidence_has(&f, "smtp.message_rejected", "size: ");
}

#[tokio::test]
async fn smtp_rejected_after_tls_is_not_claimed_when_smtp_is_encrypted() {
    // In passthrough the SMTP after STARTTLS is encrypted: the rejection is
    // invisible, and no message finding may be guessed.
    let p = pki("after-tls");
    let issued = p.issue(&leaf(&[MX]));
    let mut profile = ServerProfile::new(MX, Some(server_tls(&issued)));
    profile.data_reply = Some("554 5.7.1 Message rejected after TLS".into());
    let server = LabServer::start(profile).await.unwrap();
    let (events, report) = through_proxy(
        &server,
        &client(StartTls::Required, Some(tls12())),
        &p.toml(""),
    )
    .await;
    assert!(report.tls, "{report:?}");
    assert_eq!(
        report.data_reply.as_deref(),
        Some("554 5.7.1 Message rejected after TLS")
    );
    let f = findings_of(&events, 1);
    check(&f, &[]);
    assert!(named(&events, 1, "smtp.message").is_empty());
}

#[tokio::test]
async fn smtp_recipient_rejected() {
    let mut profile = ServerProfile::new(MX, None);
    profile.reject_rcpt = vec!["nobody@example.test".into()];
    let server = LabServer::start(profile).await.unwrap();
    let mut opts = client(StartTls::IfOffered, None);
    opts.to = vec!["bob@example.test".into(), "nobody@example.test".into()];
    let (events, report) = through_proxy(&server, &opts, "").await;
    assert!(report.error.is_none(), "{report:?}");
    let f = findings_of(&events, 1);
    check(
        &f,
        &[
            ("smtp.recipient_rejected", "warning"),
            ("starttls.not_offered", "error"),
        ],
    );
    evidence_has(
        &f,
        "smtp.recipient_rejected",
        "RCPT TO:<nobody@example.test> -> 550 5.1.1 <nobody@example.test>: Recipient address rejected: User unknown",
    );
    let title = finding(&f, "smtp.recipient_rejected")["title"]
        .as_str()
        .unwrap();
    assert_eq!(title, "The server rejected 1 recipient(s)");
}

// ---------------------------------------------------------------------------
// More variants of the same findings

#[tokio::test]
async fn starttls_required_451_5_7_3_variant() {
    // Exchange's wording; the server does not even offer STARTTLS here (masking
    // aside, a misconfigured receive connector can do this).
    let up = scripted_server(
        "220 mx.example.test Microsoft ESMTP MAIL Service ready\r\n",
        |l| {
            let verb = l.split(' ').next().unwrap_or("").to_ascii_uppercase();
            Some(match verb.as_str() {
                "EHLO" => {
                    "250-mx.example.test Hello\r\n250-SIZE 37748736\r\n250 8BITMIME\r\n".into()
                }
                "MAIL" => "451 5.7.3 STARTTLS is required to send mail\r\n".into(),
                "QUIT" => "221 2.0.0 Service closing transmission channel\r\n".into(),
                _ => "500 5.3.3 Unrecognized command\r\n".into(),
            })
        },
    )
    .await;
    let proxy = TestProxy::start(&up.to_string(), "").await;
    let report = lab::send(proxy.addr, &client(StartTls::IfOffered, Some(tls12()))).await;
    assert!(report.error.unwrap().contains("451"));
    let events = proxy.wait_summaries(1).await;
    proxy.stop().await;
    let f = findings_of(&events, 1);
    check(
        &f,
        &[
            ("starttls.required", "error"),
            ("starttls.not_offered", "error"),
        ],
    );
    evidence_has(
        &f,
        "starttls.required",
        "server: 451 5.7.3 STARTTLS is required to send mail",
    );
    evidence_has(
        &f,
        "starttls.required",
        "STARTTLS was not offered in the EHLO reply",
    );
}

/// An RSA leaf for `names` (with CRL and OCSP URLs), signed by the test CA
/// with openssl (the minting code makes ECDSA keys; static-RSA suites need RSA).
fn rsa_leaf_with_openssl(p: &Pki, name: &str) -> Issued {
    let d = &p.dir;
    std::fs::write(d.join("ca.key"), p.root.key_pem()).unwrap();
    std::fs::write(
        d.join("ext.cnf"),
        format!(
            "subjectAltName=DNS:{name}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n\
             crlDistributionPoints=URI:http://crl.example.test/ca.crl\n\
             authorityInfoAccess=OCSP;URI:http://ocsp.example.test/\n"
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = openssl().current_dir(d).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "rsa.key", "-out", "rsa.csr",
        "-subj",
    ]
    .iter()
    .copied()
    .chain([format!("/CN={name}").as_str()])
    .collect::<Vec<_>>());
    run(&[
        "x509",
        "-req",
        "-in",
        "rsa.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "90",
        "-sha256",
        "-extfile",
        "ext.cnf",
        "-out",
        "rsa.pem",
    ]);
    run(&[
        "pkcs8", "-topk8", "-nocrypt", "-in", "rsa.key", "-outform", "DER", "-out", "rsa.p8",
    ]);
    run(&[
        "x509", "-in", "rsa.pem", "-outform", "DER", "-out", "rsa.der",
    ]);
    Issued {
        chain_der: vec![std::fs::read(d.join("rsa.der")).unwrap()],
        key_der: std::fs::read(d.join("rsa.p8")).unwrap(),
    }
}

#[tokio::test]
async fn tls_weak_cipher_static_rsa_key_exchange_with_openssl() {
    let p = pki("static-rsa");
    let issued = rsa_leaf_with_openssl(&p, MX);
    let args = ["-tls1_2", "-cipher", "AES128-GCM-SHA256"];
    let (_srv, port) = s_server(&p, &issued, &args);
    let up = starttls_bridge(port).await;
    let proxy = TestProxy::start(&up.to_string(), &p.toml("")).await;
    let out = s_client(proxy.addr, &[&args[..], &["-servername", MX][..]].concat()).await;
    assert!(out.contains("AES128-GCM-SHA256"), "s_client: {out}");
    let events = proxy.wait_summaries(1).await;
    proxy.stop().await;
    let f = findings_of(&events, 1);
    check(&f, &[("tls.weak_cipher", "warning")]);
    evidence_has(
        &f,
        "tls.weak_cipher",
        "ServerHello: TLSv1.2, TLS_RSA_WITH_AES_128_GCM_SHA256",
    );
    let title = finding(&f, "tls.weak_cipher")["title"].as_str().unwrap();
    assert!(title.contains("static RSA key exchange"), "{title}");
    assert_eq!(named(&events, 1, "cert.chain")[0]["trusted"], true);
}

#[tokio::test]
async fn tls_legacy_client_refused_by_a_tls12_server() {
    // An old sender (TLS 1.0 only) against a current server (rustls: 1.2+).
    let p = pki("legacy-client");
    let issued = p.issue(&leaf(&[MX]));
    let server = LabServer::start(ServerProfile::new(MX, Some(server_tls(&issued))))
        .await
        .unwrap();
    let proxy = TestProxy::start(&server.addr().to_string(), &p.toml("")).await;
    let out = s_client(
        proxy.addr,
        &[
            "-tls1",
            "-cipher",
            "ECDHE-ECDSA-AES128-SHA:@SECLEVEL=0",
            "-servername",
            MX,
        ],
    )
    .await;
    assert!(!out.contains("Cipher is ECDHE"), "s_client: {out}");
    let events = proxy.wait_summaries(1).await;
    proxy.stop().await;
    let f = findings_of(&events, 1);
    check(
        &f,
        &[
            ("tls.handshake_failed", "error"),
            ("tls.legacy_version", "warning"),
        ],
    );
    evidence_has(&f, "tls.legacy_version", "ClientHello: up to TLSv1.0");
    evidence_has(&f, "tls.handshake_failed", "ClientHello: up to TLSv1.0");
    evidence_has(
        &f,
        "tls.handshake_failed",
        "TLS alert from the server: fatal handshake_failure (40)",
    );
    let title = finding(&f, "tls.handshake_failed")["title"]
        .as_str()
        .unwrap();
    assert!(
        title.contains("no TLS version or cipher suite acceptable"),
        "{title}"
    );
}

#[tokio::test]
async fn cert_announced_name_mismatch_of_the_sending_server() {
    // The sender says EHLO client.example.test but presents a client
    // certificate for another name (Exchange Online checks this).
    let p = pki("client-announced");
    let issued = p.issue(&leaf(&[MX]));
    let client_cert = p.issue(&LeafSpec {
        crl_urls: vec!["http://crl.example.test/ca.crl".into()],
        ocsp_url: Some("http://ocsp.example.test/".into()),
        ..LeafSpec::client(["relay.other.example"])
    });
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(p.root.der()))
        .unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
        .allow_unauthenticated()
        .build()
        .unwrap();
    let cfg = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(issued.rustls_chain(), issued.rustls_key())
        .unwrap();
    let server = LabServer::start(ServerProfile::new(MX, Some(Arc::new(cfg))))
        .await
        .unwrap();
    let client_cfg =
        rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS12])
            .with_root_certificates({
                let mut r = rustls::RootCertStore::empty();
                r.add(rustls::pki_types::CertificateDer::from(p.root.der()))
                    .unwrap();
                r
            })
            .with_client_auth_cert(client_cert.rustls_chain(), client_cert.rustls_key())
            .unwrap();
    let opts = client(StartTls::Required, Some(Arc::new(client_cfg)));
    let (events, report) = through_proxy(&server, &opts, &p.toml("")).await;
    assert!(report.tls && report.error.is_none(), "{report:?}");
    let f = findings_of(&events, 1);
    check(&f, &[("cert.announced_name_mismatch", "warning")]);
    let m = finding(&f, "cert.announced_name_mismatch");
    assert_eq!(
        m["title"],
        "The sending server announces itself as client.example.test but its certificate does not carry that name"
    );
    evidence_has(
        &f,
        "cert.announced_name_mismatch",
        "presented: relay.other.example",
    );
    let chains = named(&events, 1, "cert.chain");
    assert!(chains
        .iter()
        .any(|c| c["side"] == "client" && c["trusted"] == true));
}
