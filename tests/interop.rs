//! smtptap between real mail software: Postfix upstream profiles
//! (`scripts/testbed`: a = STARTTLS with a test-CA certificate, b = no STARTTLS,
//! c = TLS required, s = SMTPS, TLS from the first byte) and real clients (swaks, `openssl s_client`,
//! posttls-finger, Python's smtplib, Postfix as the sending MTA, at `may`,
//! at `verify`, and at `verify` trusting a CA that did not issue the
//! upstream's certificate, so that it gives up right after the handshake),
//! all on loopback. Each scenario runs once (memoised) and two kinds of test read it:
//!
//! - `peers_*`: what the peers saw (message in the Maildir, rejection text,
//!   client output) and that smtptap relayed one session to the right upstream.
//! - `events_*`: the SMTP/TLS events and findings smtptap reported. These need
//!   the SMTP and TLS observers and the diagnosis (merged by the lead); on a
//!   branch without them they fail, by design.
//!
//! Needs root and the tools of `scripts/install-test-deps`; a missing tool
//! fails the test with that advice.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

const CA_NAME: &str = "mx.smtptap.test";
const RCPT: &str = "bob@smtptap.test";

// ---------------------------------------------------------------- testbed

struct Bed {
    dir: PathBuf,
    base: u16,
}

static BED: OnceLock<Bed> = OnceLock::new();
static USERS: Mutex<usize> = Mutex::new(0);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn need(tool: &str, path: &str) {
    assert!(
        Path::new(path).exists(),
        "{tool} ({path}) is missing: run scripts/install-test-deps"
    );
}

fn bed() -> &'static Bed {
    BED.get_or_init(|| {
        need("postfix", "/usr/sbin/postfix");
        need("swaks", "/usr/bin/swaks");
        need("openssl", "/usr/bin/openssl");
        need("posttls-finger", "/usr/sbin/posttls-finger");
        need("python3", "/usr/bin/python3");
        need(
            "swaks TLS (IO::Socket::SSL)",
            "/usr/share/perl5/IO/Socket/SSL.pm",
        );
        let pid = std::process::id();
        Bed {
            dir: std::env::temp_dir().join(format!("smtptap-interop-{pid}")),
            base: 20000 + (pid % 400) as u16 * 20,
        }
    })
}

fn testbed(args: &[&str]) -> Output {
    let b = bed();
    Command::new("bash")
        .arg(repo().join("scripts/testbed"))
        .args(args)
        .env("TESTBED_DIR", &b.dir)
        .env("TESTBED_PORT", b.base.to_string())
        .output()
        .expect("run scripts/testbed")
}

/// Holds the Postfix profiles up; the last holder brings them down.
struct BedGuard;

fn acquire() -> BedGuard {
    let mut n = USERS.lock().unwrap_or_else(|e| e.into_inner());
    if *n == 0 {
        let out = testbed(&["up"]);
        assert!(
            out.status.success(),
            "scripts/testbed up failed (run scripts/install-test-deps; root needed):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    *n += 1;
    BedGuard
}

impl Drop for BedGuard {
    fn drop(&mut self) {
        let mut n = USERS.lock().unwrap_or_else(|e| e.into_inner());
        *n -= 1;
        if *n == 0 {
            let _ = testbed(&["down"]);
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Profile {
    /// STARTTLS offered, test-CA certificate.
    A,
    /// No STARTTLS.
    B,
    /// TLS required.
    C,
    /// SMTPS: TLS from the first byte (`smtpd_tls_wrappermode`).
    S,
}

impl Profile {
    fn port(self) -> u16 {
        bed().base
            + match self {
                Profile::A => 0,
                Profile::B => 1,
                Profile::C => 2,
                Profile::S => 3,
            }
    }
    fn name(self) -> &'static str {
        match self {
            Profile::A => "a",
            Profile::B => "b",
            Profile::C => "c",
            Profile::S => "s",
        }
    }
    fn maildir(self) -> PathBuf {
        bed().dir.join(self.name()).join("mail/maildir/new")
    }
}

fn ca_file() -> PathBuf {
    bed().dir.join("ca/ca.pem")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn listening(port: u16) -> bool {
    let out = Command::new("ss").args(["-Hltn"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.contains(&format!("127.0.0.1:{port} ")))
}

// ---------------------------------------------------------------- smtptap

struct Smtptap {
    port: u16,
    log: PathBuf,
    pcap: PathBuf,
    child: Child,
}

impl Smtptap {
    fn start(name: &str, upstream: Profile) -> Smtptap {
        Smtptap::start_with(name, upstream, &[])
    }

    /// As [`Smtptap::start`], with extra arguments (intercept mode).
    fn start_with(name: &str, upstream: Profile, extra: &[String]) -> Smtptap {
        let port = free_port();
        let log = bed().dir.join(format!("smtptap-{name}.jsonl"));
        let _ = std::fs::remove_file(&log);
        let pcap = bed().dir.join(format!("smtptap-{name}.pcapng"));
        let _ = std::fs::remove_file(&pcap);
        let child = Command::new(env!("CARGO_BIN_EXE_smtptap"))
            .args(["proxy", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--upstream", &format!("127.0.0.1:{}", upstream.port())])
            .arg("--log")
            .arg(&log)
            .arg("--pcap")
            .arg(&pcap)
            .arg("--ca-file")
            .arg(ca_file())
            .args(["--expect-name", CA_NAME, "--quiet", "--drain-timeout", "5"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start smtptap");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !listening(port) {
            assert!(
                Instant::now() < deadline,
                "smtptap did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Smtptap {
            port,
            log,
            pcap,
            child,
        }
    }

    /// SIGTERM, wait, and read the JSON log.
    fn stop(mut self) -> Vec<Value> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(self.child.try_wait(), Ok(Some(_))) {
            assert!(Instant::now() < deadline, "smtptap did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Smtptap {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- scenarios

/// What one scenario left behind.
#[derive(Debug)]
struct Outcome {
    /// The upstream profile port.
    upstream_port: u16,
    /// Client exit status and combined output.
    client_ok: bool,
    client_out: String,
    /// The delivered message (by its unique subject), if any.
    delivered: Option<String>,
    /// smtptap's JSON log.
    events: Vec<Value>,
    /// smtptap's pcapng capture of the scenario.
    pcap: PathBuf,
}

fn find_message(profile: Profile, subject: &str, wait: Duration) -> Option<String> {
    let deadline = Instant::now() + wait;
    loop {
        if let Ok(rd) = std::fs::read_dir(profile.maildir()) {
            for e in rd.flatten() {
                if let Ok(t) = std::fs::read_to_string(e.path()) {
                    if t.contains(subject) {
                        return Some(t);
                    }
                }
            }
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn output_text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `client(proxy_port, subject)` through a fresh smtptap in front of `profile`.
fn scenario(
    name: &str,
    profile: Profile,
    expect_delivery: bool,
    client: impl FnOnce(u16, &str) -> Output,
) -> Outcome {
    let _bed = acquire();
    let subject = format!("smtptap-interop-{name}-{}", std::process::id());
    let tap = Smtptap::start(name, profile);
    let out = client(tap.port, &subject);
    let wait = if expect_delivery {
        Duration::from_secs(30)
    } else {
        Duration::from_secs(2)
    };
    let delivered = find_message(profile, &subject, wait);
    let pcap = tap.pcap.clone();
    let events = tap.stop();
    Outcome {
        upstream_port: profile.port(),
        client_ok: out.status.success(),
        client_out: output_text(&out),
        delivered,
        events,
        pcap,
    }
}

fn swaks(port: u16, subject: &str, extra: &[&str]) -> Output {
    Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{port}")])
        .args(["--to", RCPT, "--from", "alice@client.test"])
        .args(["--ehlo", "client.test"])
        .args(["--header", &format!("Subject: {subject}")])
        .args(["--timeout", "20"])
        .args(extra)
        .output()
        .expect("run swaks")
}

fn swaks_tls() -> &'static Outcome {
    static O: OnceLock<Outcome> = OnceLock::new();
    O.get_or_init(|| {
        let ca = ca_file();
        scenario("swaks-tls", Profile::A, true, |p, s| {
            swaks(
                p,
                s,
                &[
                    "--tls",
                    "--tls-verify",
                    "--tls-ca-path",
                    ca.to_str().unwrap(),
                ],
            )
        })
    })
}

fn swaks_plain_to_b() -> &'static Outcome {
    static O: OnceLock<Outcome> = OnceLock::new();
    O.get_or_init(|| scenario("swaks-plain-b", Profile::B, true, |p, s| swaks(p, s, &[])))
}

fn swaks_plain_to_c() -> &'static Outcome {
    static O: OnceLock<Outcome> = OnceLock::new();
    O.get_or_init(|| scenario("swaks-plain-c", Profile::C, false, |p, s| swaks(p, s, &[])))
}

fn swaks_plain_to_a() -> &'static Outcome {
    static O: OnceLock<Outcome> = OnceLock::new();
    O.get_or_init(|| scenario("swaks-plain-a", Profile::A, true, |p, s| swaks(p, s, &[])))
}

fn openssl_starttls() -> &'static Outcome {
    static O: OnceLock<Outcome> = OnceLock::new();
    O.get_or_init(|| {
        let ca = ca_file();
        scenario("openssl", Profile::A, true, |p, s| {
            let mut child = Command::new("openssl")
                .args(["s_client", "-starttls", "smtp", "-quiet"])
                .args(["-connect", &format!("127.0.0.1:{p}")])
                .args(["-servername", CA_NAME, "-verify_return_error"])
                .arg("-CAfile")
                .arg(&ca)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run openssl");
            let mut stdin = child.stdin.take().unwrap();
            // -quiet: lines starting with Q or R are not commands. Pace the
            // dialogue so each command follows its reply.
            let script = [
                "EHLO client.test".to_string(),
                "MAIL FROM:<alice@client.test>".into(),
                format!("RCPT TO:<{RCPT}>"),
                "DATA".into(),
                format!("Subject: {s}\r\n\r\nhello through openssl\r\n."),
                "QUIT".into(),
            ];
            std::thread::sleep(Duration::from_millis(800));
            for l in script {
                let _ = stdin.write_all(format!("{l}\r\n").as_bytes());
                let _ = stdin.flush();
                std::thread::sleep(Duration::from_millis(300));
            }
            std::thread::sleep(Duration::from_millis(500));
            drop(stdin);
            child.wait_with_output().expect("openssl output")
        })
    })
}

fn python_smtplib() -> &'static Outcome {
    static O: OnceLock<Outcome> = OnceLock::new();
    O.get_or_init(|| {
        let ca = ca_file();
        scenario("python", Profile::A, true, |p, s| {
            let code = format!(
                r#"
import smtplib, ssl
ctx = ssl.create_default_context(cafile={ca:?})
with smtplib.SMTP("127.0.0.1", {p}, local_hostname="client.test", timeout=20) as c:
    c.ehlo()
    c._host = "{CA_NAME}"
    c.starttls(context=ctx)
    c.ehlo()
    c.sendmail("alice@client.test", ["{RCPT}"], "Subject: {s}\r\n\r\nhello from smtplib\r\n")
print("sent")
"#,
                ca = ca.to_str().unwrap()
            );
            python3(&code)
        })
    })
}

fn python3(code: &str) -> Output {
    Command::new("python3")
        .args(["-c", code])
        .output()
        .expect("run python3")
}

/// Python's `smtplib.SMTP_SSL` (TLS from the first byte, verifying the test
/// CA and the name) to the SMTPS profile, through an smtptap that was not
/// told about implicit TLS.
fn python_smtps() -> &'static Outcome {
    static O: OnceLock<Outcome> = OnceLock::new();
    O.get_or_init(|| {
        let ca = ca_file();
        scenario("python-smtps", Profile::S, true, |p, s| {
            smtps_sender(p, s, &ca, "hello over smtps")
        })
    })
}

/// Python's `smtplib.SMTP_SSL` to 127.0.0.1:`port`, verifying (and sending
/// SNI for) the certificate's name against `ca` only; the message body is
/// `text`.
fn smtps_sender(port: u16, subject: &str, ca: &Path, text: &str) -> Output {
    let code = format!(
        r#"
import smtplib, ssl
ctx = ssl.create_default_context(cafile={ca:?})
class Named(smtplib.SMTP_SSL):
    # connect to 127.0.0.1 but verify (and send SNI) for the certificate's name
    def _get_socket(self, host, port, timeout):
        sock = __import__("socket").create_connection((host, port), timeout)
        return self.context.wrap_socket(sock, server_hostname="{CA_NAME}")
with Named("127.0.0.1", {port}, local_hostname="client.test", timeout=20, context=ctx) as c:
    c.ehlo()
    c.sendmail("alice@client.test", ["{RCPT}"], "Subject: {subject}\r\n\r\n{text}\r\n")
print("sent")
"#,
        ca = ca.to_str().unwrap()
    );
    python3(&code)
}

/// swaks with TLS on connect (`--tlsc`, the SMTPS habit) to the STARTTLS
/// profile: the server greets in cleartext, the TLS client gives up.
fn swaks_tlsc_to_a() -> &'static Outcome {
    static O: OnceLock<Outcome> = OnceLock::new();
    O.get_or_init(|| {
        scenario("swaks-tlsc-a", Profile::A, false, |p, s| {
            swaks(p, s, &["--tlsc"])
        })
    })
}

fn posttls_finger() -> &'static Outcome {
    static O: OnceLock<Outcome> = OnceLock::new();
    O.get_or_init(|| {
        let ca = ca_file();
        let etc = bed().dir.join("a/etc");
        scenario("posttls-finger", Profile::A, false, |p, _s| {
            Command::new("posttls-finger")
                .env("MAIL_CONFIG", &etc)
                .args(["-c", "-l", "verify", "-F"])
                .arg(&ca)
                .arg(format!("[127.0.0.1]:{p}"))
                .arg(CA_NAME)
                .output()
                .expect("posttls-finger")
        })
    })
}

/// Postfix as the sending MTA: accepts on its own port, relays to smtptap
/// with `smtp_tls_security_level = level`.
fn postfix_sender(level: &'static str) -> Outcome {
    scenario(&format!("postfix-{level}"), Profile::A, true, |p, s| {
        let name = format!("sender-{level}");
        let listen = free_port();
        let out = testbed(&["sender", &name, &listen.to_string(), &p.to_string(), level]);
        assert!(
            out.status.success(),
            "testbed sender: {}",
            output_text(&out)
        );
        let sent = swaks(listen, s, &[]);
        // Wait for the sender's queue to hand the message to smtptap.
        let _ = find_message(Profile::A, s, Duration::from_secs(30));
        let _ = Command::new("postfix")
            .args(["-c"])
            .arg(bed().dir.join(&name).join("etc"))
            .arg("stop")
            .output();
        sent
    })
}

fn postfix_may() -> &'static Outcome {
    static O: OnceLock<Outcome> = OnceLock::new();
    O.get_or_init(|| postfix_sender("may"))
}

fn postfix_verify() -> &'static Outcome {
    static O: OnceLock<Outcome> = OnceLock::new();
    O.get_or_init(|| postfix_sender("verify"))
}

// ---------------------------------------------------------------- helpers for assertions

fn named<'a>(o: &'a Outcome, name: &str) -> Vec<&'a Value> {
    o.events.iter().filter(|e| e["event"] == name).collect()
}

/// smtptap relayed the client's sessions to the right upstream.
fn assert_relayed(o: &Outcome) {
    let conn = named(o, "upstream.connected");
    assert!(!conn.is_empty(), "no upstream.connected: {:#?}", o.events);
    for c in conn {
        assert_eq!(c["server"], format!("127.0.0.1:{}", o.upstream_port), "{c}");
    }
    assert!(!named(o, "session.open").is_empty());
    assert_eq!(
        named(o, "session.open").len(),
        named(o, "session.summary").len()
    );
}

fn findings(o: &Outcome) -> Vec<(String, String)> {
    named(o, "session.summary")
        .iter()
        .flat_map(|s| s["findings"].as_array().cloned().unwrap_or_default())
        .map(|f| {
            (
                f["id"].as_str().unwrap_or_default().to_string(),
                f["severity"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn has_finding(o: &Outcome, id: &str) -> bool {
    findings(o).iter().any(|(i, _)| i == id)
}

fn assert_clean_tls(o: &Outcome) {
    for n in [
        "session.open",
        "upstream.connected",
        "smtp.banner",
        "smtp.ehlo",
        "smtp.capabilities",
        "tls.started",
        "tls.client_hello",
        "tls.server_hello",
    ] {
        assert!(!named(o, n).is_empty(), "no {n} event: {:#?}", o.events);
    }
    assert!(named(o, "smtp.capabilities")
        .iter()
        .any(|c| c["starttls"] == true));
    let st = named(o, "smtp.starttls");
    assert!(
        st.iter().any(|s| s["accepted"] == true),
        "STARTTLS not accepted: {st:?}"
    );
    let sh = named(o, "tls.server_hello");
    assert!(
        sh[0]["version"]
            .as_str()
            .unwrap_or_default()
            .contains("1.3")
            || sh[0]["version"]
                .as_str()
                .unwrap_or_default()
                .contains("1.2"),
        "{}",
        sh[0]
    );
    assert!(sh[0]["cipher_suite"].is_string(), "{}", sh[0]);
    let bad: Vec<_> = findings(o)
        .into_iter()
        .filter(|(_, s)| s == "warning" || s == "error")
        .collect();
    assert!(bad.is_empty(), "a clean TLS session has findings: {bad:?}");
}

// ---------------------------------------------------------------- peers_* (pass without the observers)

#[test]
fn peers_swaks_tls_to_starttls_profile_delivers_encrypted() {
    let o = swaks_tls();
    assert!(o.client_ok, "swaks failed:\n{}", o.client_out);
    assert!(o.client_out.contains("TLS started"), "{}", o.client_out);
    let m = o
        .delivered
        .as_ref()
        .expect("message not in profile a's Maildir");
    assert!(
        m.contains("(using TLSv1."),
        "Received header shows no TLS:\n{m}"
    );
    assert_relayed(o);
}

#[test]
fn peers_swaks_plain_to_no_starttls_profile_delivers() {
    let o = swaks_plain_to_b();
    assert!(o.client_ok, "swaks failed:\n{}", o.client_out);
    assert!(!o.client_out.contains("STARTTLS"), "{}", o.client_out);
    let m = o
        .delivered
        .as_ref()
        .expect("message not in profile b's Maildir");
    assert!(!m.contains("using TLS"), "{m}");
    assert_relayed(o);
}

#[test]
fn peers_swaks_plain_to_tls_required_profile_is_rejected_530() {
    let o = swaks_plain_to_c();
    assert!(!o.client_ok, "swaks should fail:\n{}", o.client_out);
    assert!(
        o.client_out.contains("530 5.7.0"),
        "no 530 5.7.0 in swaks output:\n{}",
        o.client_out
    );
    assert!(o.delivered.is_none(), "the message must not be delivered");
    assert_relayed(o);
}

#[test]
fn peers_swaks_plain_to_starttls_profile_delivers_in_cleartext() {
    let o = swaks_plain_to_a();
    assert!(o.client_ok, "swaks failed:\n{}", o.client_out);
    let m = o.delivered.as_ref().expect("message not delivered");
    assert!(!m.contains("using TLS"), "{m}");
    assert_relayed(o);
}

#[test]
fn peers_openssl_s_client_starttls_delivers() {
    let o = openssl_starttls();
    assert!(
        o.client_out.contains("250"),
        "openssl saw no 250:\n{}",
        o.client_out
    );
    let m = o
        .delivered
        .as_ref()
        .unwrap_or_else(|| panic!("not delivered; openssl said:\n{}", o.client_out));
    assert!(m.contains("(using TLSv1."), "{m}");
    assert_relayed(o);
}

#[test]
fn peers_python_smtplib_starttls_verified_delivers() {
    let o = python_smtplib();
    assert!(o.client_ok, "smtplib failed:\n{}", o.client_out);
    let m = o.delivered.as_ref().expect("message not delivered");
    assert!(m.contains("(using TLSv1."), "{m}");
    assert_relayed(o);
}

#[test]
fn peers_posttls_finger_verifies_the_test_ca_chain_through_smtptap() {
    let o = posttls_finger();
    // posttls-finger exits 0 even when untrusted: read its output.
    assert!(
        o.client_out.contains("Verified TLS connection established"),
        "posttls-finger did not verify:\n{}",
        o.client_out
    );
    assert_relayed(o);
}

#[test]
fn peers_postfix_sender_tls_may_delivers_encrypted() {
    let o = postfix_may();
    assert!(o.client_ok, "injection failed:\n{}", o.client_out);
    let m = o
        .delivered
        .as_ref()
        .expect("not relayed by the sending Postfix");
    assert!(m.contains("(using TLSv1."), "{m}");
    assert_relayed(o);
}

#[test]
fn peers_postfix_sender_tls_verify_delivers_encrypted() {
    let o = postfix_verify();
    assert!(o.client_ok, "injection failed:\n{}", o.client_out);
    let m = o
        .delivered
        .as_ref()
        .expect("not relayed by the sending Postfix (verify)");
    assert!(m.contains("(using TLSv1."), "{m}");
    assert_relayed(o);
}

// ---------------------------------------------------------------- events_* (need the lead's merge)

#[test]
fn events_swaks_tls_clean_session_has_no_warning() {
    let o = swaks_tls();
    assert_clean_tls(o);
    let msg = named(o, "smtp.message");
    assert!(msg.is_empty(), "DATA is encrypted in passthrough: {msg:?}");
}

#[test]
fn events_no_starttls_profile_reports_not_offered() {
    let o = swaks_plain_to_b();
    assert!(named(o, "smtp.capabilities")
        .iter()
        .all(|c| c["starttls"] == false));
    assert!(
        named(o, "smtp.message")
            .iter()
            .any(|m| m["accepted"] == true),
        "{:#?}",
        o.events
    );
    assert!(
        has_finding(o, "starttls.not_offered"),
        "findings: {:?}",
        findings(o)
    );
}

#[test]
fn events_tls_required_profile_with_cleartext_client_reports_530() {
    let o = swaks_plain_to_c();
    let r = named(o, "smtp.reply");
    assert!(
        r.iter()
            .any(|r| r["code"] == 530 && r["enhanced"] == "5.7.0"),
        "no 530 5.7.0 reply event: {r:#?}"
    );
    assert!(named(o, "smtp.command").iter().any(|c| c["verb"] == "MAIL"));
    assert!(
        has_finding(o, "starttls.required"),
        "findings: {:?}",
        findings(o)
    );
}

#[test]
fn events_cleartext_client_on_starttls_profile_reports_not_used() {
    let o = swaks_plain_to_a();
    assert!(named(o, "smtp.capabilities")
        .iter()
        .any(|c| c["starttls"] == true));
    assert!(named(o, "tls.started").is_empty());
    assert!(
        has_finding(o, "starttls.not_used"),
        "findings: {:?}",
        findings(o)
    );
}

#[test]
fn events_openssl_client_hello_carries_the_sni() {
    let o = openssl_starttls();
    assert_clean_tls(o);
    let ch = named(o, "tls.client_hello");
    assert_eq!(ch[0]["sni"], CA_NAME, "{}", ch[0]);
    assert!(ch[0]["ja4"].as_str().is_some_and(|j| j.starts_with('t')));
}

#[test]
fn peers_python_smtps_delivers_through_smtptap_without_configuration() {
    let o = python_smtps();
    assert!(o.client_ok, "python SMTP_SSL failed:\n{}", o.client_out);
    let m = o
        .delivered
        .as_ref()
        .expect("message not in profile s's Maildir");
    assert!(m.contains("hello over smtps"), "{m}");
    assert!(
        m.contains("(using TLSv1."),
        "Postfix did not stamp TLS:\n{m}"
    );
    assert_relayed(o);
}

#[test]
fn peers_swaks_tls_on_connect_to_a_starttls_server_fails() {
    let o = swaks_tlsc_to_a();
    assert!(
        !o.client_ok,
        "swaks --tlsc cannot work here:\n{}",
        o.client_out
    );
    assert!(o.delivered.is_none());
    assert_relayed(o);
}

#[test]
fn events_smtps_is_detected_and_clean() {
    let o = python_smtps();
    let started = named(o, "tls.started");
    assert_eq!(started.len(), 1, "{:#?}", o.events);
    assert_eq!(started[0]["after"], "implicit_detected");
    assert!(
        named(o, "smtp.banner").is_empty(),
        "the greeting is encrypted"
    );
    let ch = named(o, "tls.client_hello");
    assert_eq!(ch[0]["sni"], CA_NAME, "{}", ch[0]);
    assert_eq!(named(o, "tls.established").len(), 1, "{:#?}", o.events);
    // TLS 1.3 hides the certificate; with TLS 1.2 it is checked: either way
    // nothing is wrong.
    for c in named(o, "cert.chain") {
        assert_eq!(c["trusted"], true, "{c}");
    }
    let sum = named(o, "session.summary");
    assert_eq!(sum[0]["implicit_tls"], true, "{}", sum[0]);
    let bad: Vec<_> = findings(o)
        .into_iter()
        .filter(|(_, s)| s == "warning" || s == "error")
        .collect();
    assert!(bad.is_empty(), "an SMTPS session has findings: {bad:?}");
}

#[test]
fn events_tls_client_on_starttls_server_is_a_mismatch() {
    let o = swaks_tlsc_to_a();
    assert!(
        has_finding(o, "smtp.implicit_tls_mismatch"),
        "findings: {:?}\n{:#?}",
        findings(o),
        o.events
    );
    assert!(named(o, "tls.started").is_empty());
    assert!(!named(o, "smtp.banner").is_empty());
}

#[test]
fn events_python_and_postfix_senders_are_clean_tls() {
    assert_clean_tls(python_smtplib());
    assert_clean_tls(postfix_may());
    assert_clean_tls(postfix_verify());
}

// ---------------------------------------------------------------- captures and headers

/// tshark on a scenario's capture, with the upstream port decoded as SMTP.
fn tshark_fields(o: &Outcome, filter: &str, field: &str) -> Vec<String> {
    need("tshark", "/usr/bin/tshark");
    let out = Command::new("tshark")
        .arg("-r")
        .arg(&o.pcap)
        .args(["-d", &format!("tcp.port=={},smtp", o.upstream_port)])
        .args(["-Y", filter, "-T", "fields", "-e", field])
        .output()
        .expect("run tshark");
    assert!(
        out.status.success(),
        "tshark failed on {}: {}",
        o.pcap.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .flat_map(|l| l.split(','))
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn captures_tshark_dissects_the_swaks_starttls_session() {
    let o = swaks_tls();
    let cmds = tshark_fields(o, "smtp.req", "smtp.req.command");
    assert!(cmds.iter().any(|c| c == "EHLO"), "{cmds:?}");
    assert!(cmds.iter().any(|c| c.starts_with("STAR")), "{cmds:?}");
    let codes = tshark_fields(o, "smtp.response", "smtp.response.code");
    assert!(codes.iter().any(|c| c == "220"), "{codes:?}");
    let hs = tshark_fields(o, "tls.handshake", "tls.handshake.type");
    assert!(
        hs.iter().any(|t| t == "1"),
        "no ClientHello dissected: {hs:?}"
    );
    assert!(
        hs.iter().any(|t| t == "2"),
        "no ServerHello dissected: {hs:?}"
    );
}

/// The Wireshark hint the README prints, run word for word (FILE and
/// UPSTREAM_PORT filled in): it must dissect the SMTP of a capture whose
/// upstream is on a non-standard port.
#[test]
fn the_readme_tshark_decode_hint_works_as_printed() {
    need("tshark", "/usr/bin/tshark");
    let o = swaks_plain_to_c();
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let line = readme
        .lines()
        .find(|l| l.starts_with("tshark -r FILE -d tcp.port==UPSTREAM_PORT,smtp"))
        .expect("the README's decode hint");
    let pcap = o.pcap.display().to_string();
    let port = o.upstream_port.to_string();
    let words: Vec<String> = line
        .split_whitespace()
        .skip(1)
        .map(|w| w.replace("FILE", &pcap).replace("UPSTREAM_PORT", &port))
        .collect();
    let out = Command::new("tshark")
        .args(&words)
        .output()
        .expect("run tshark");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("SMTP") && text.contains("530"),
        "{line}\n{text}"
    );
}

#[test]
fn captures_tshark_sees_the_530_of_the_tls_required_profile() {
    let o = swaks_plain_to_c();
    let codes = tshark_fields(o, "smtp.response", "smtp.response.code");
    assert!(codes.iter().any(|c| c == "530"), "{codes:?}");
}

#[test]
fn headers_reads_the_real_postfix_received_header_of_a_message_relayed_through_smtptap() {
    let o = postfix_may();
    let m = o
        .delivered
        .as_ref()
        .expect("message not delivered through smtptap");
    let report = serde_json::to_value(smtptap::headers::analyze_message(m.as_bytes())).unwrap();
    let hops = report["hops"].as_array().expect("hops");
    // The receiving Postfix (profile a) stamped the hop that crossed smtptap.
    let tls_hops: Vec<&Value> = hops
        .iter()
        .filter(|h| h["tls"]["state"] == "tls" && h["tls"]["format"] == "postfix")
        .collect();
    assert!(
        !tls_hops.is_empty(),
        "no Postfix TLS stamp recognised in:\n{m}\nreport: {report:#}"
    );
    let v = tls_hops[0]["tls"]["version"].as_str().unwrap_or("");
    assert!(v.starts_with("TLSv1."), "{report:#}");
    assert!(tls_hops[0]["tls"]["cipher"]
        .as_str()
        .is_some_and(|c| !c.is_empty()));
    let ids: Vec<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["id"].as_str())
        .collect();
    assert!(!ids.contains(&"headers.hop_without_tls"), "{ids:?}");
}

// ---------------------------------------------------------------- intercept mode

/// A proxy CA made by the binary itself (`smtptap ca init`), and the
/// arguments that run the proxy in intercept mode with it.
fn intercept_ca(name: &str) -> (PathBuf, Vec<String>) {
    let dir = bed().dir.join(format!("intercept-ca-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new(env!("CARGO_BIN_EXE_smtptap"))
        .args(["ca", "init", "--out"])
        .arg(&dir)
        .output()
        .expect("smtptap ca init");
    assert!(out.status.success(), "{}", output_text(&out));
    let args = vec![
        "--mode".to_string(),
        "intercept".to_string(),
        "--ca-cert".to_string(),
        dir.join("ca.crt").display().to_string(),
        "--ca-key".to_string(),
        dir.join("ca.key").display().to_string(),
    ];
    (dir.join("ca.crt"), args)
}

fn intercept_scenario(name: &str, client: impl FnOnce(u16, &str, &Path) -> Output) -> Outcome {
    intercept_scenario_on(name, Profile::A, client)
}

fn intercept_scenario_on(
    name: &str,
    profile: Profile,
    client: impl FnOnce(u16, &str, &Path) -> Output,
) -> Outcome {
    let _bed = acquire();
    let (ca, args) = intercept_ca(name);
    let subject = format!("smtptap-interop-{name}-{}", std::process::id());
    let tap = Smtptap::start_with(name, profile, &args);
    let out = client(tap.port, &subject, &ca);
    let delivered = find_message(profile, &subject, Duration::from_secs(30));
    let pcap = tap.pcap.clone();
    let events = tap.stop();
    Outcome {
        upstream_port: profile.port(),
        client_ok: out.status.success(),
        client_out: output_text(&out),
        delivered,
        events,
        pcap,
    }
}

fn intercepted_events_ok(o: &Outcome, version: &str) {
    assert!(o.client_ok, "{}", o.client_out);
    assert!(o.delivered.is_some(), "not delivered: {}", o.client_out);
    let named = |n: &str| -> Vec<&Value> { o.events.iter().filter(|e| e["event"] == n).collect() };
    let d = named("intercept.decision");
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0]["action"], "intercept");
    let hs = named("intercept.handshake");
    assert_eq!(hs.len(), 2, "{hs:?}");
    for h in &hs {
        assert_eq!(h["ok"], true, "{h}");
    }
    let client_leg: Vec<_> = hs.iter().filter(|h| h["leg"] == "client_proxy").collect();
    assert_eq!(client_leg[0]["version"], version, "{client_leg:?}");
    // Postfix's certificate, read on the smtptap <-> server leg, is trusted.
    let chain: Vec<_> = named("cert.chain")
        .into_iter()
        .filter(|c| c["leg"] == "proxy_server")
        .collect();
    assert_eq!(chain.len(), 1, "{chain:?}");
    assert_eq!(chain[0]["trusted"], true);
    // The conversation inside TLS: two EHLOs, the accepted message.
    assert_eq!(named("smtp.ehlo").len(), 2);
    let m = named("smtp.message");
    assert_eq!(m.len(), 1, "{m:?}");
    assert_eq!(m[0]["accepted"], true);
}

#[test]
fn intercept_swaks_tls12_trusting_only_the_proxy_ca_delivers_to_postfix() {
    let o = intercept_scenario("icept-swaks", |p, s, ca| {
        swaks(
            p,
            s,
            &[
                "--tls",
                "--tls-verify",
                "--tls-ca-path",
                ca.to_str().unwrap(),
                "--tls-protocol",
                "tlsv1_2",
                "--tls-sni",
                CA_NAME,
            ],
        )
    });
    intercepted_events_ok(&o, "TLSv1.2");
    // Postfix gives smtptap TLS 1.3: the client is the limit, and the
    // diagnosis says so (info, not a problem).
    let summary = o
        .events
        .iter()
        .find(|e| e["event"] == "session.summary")
        .expect("a summary");
    let f = summary["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "intercept.legs_differ")
        .unwrap_or_else(|| panic!("no intercept.legs_differ: {summary}"));
    assert_eq!(f["severity"], "info", "{f}");
    assert!(
        f["title"]
            .as_str()
            .unwrap()
            .contains("client negotiated an older"),
        "{f}"
    );
}

#[test]
fn intercept_python_tls13_trusting_only_the_proxy_ca_delivers_to_postfix() {
    let o = intercept_scenario("icept-python", |p, s, ca| {
        let code = format!(
            r#"
import smtplib, ssl
ctx = ssl.create_default_context(cafile={ca:?})
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
with smtplib.SMTP("127.0.0.1", {p}, local_hostname="client.test", timeout=20) as c:
    c.ehlo()
    c._host = "{CA_NAME}"
    c.starttls(context=ctx)
    c.ehlo()
    c.sendmail("alice@client.test", ["{RCPT}"], "Subject: {s}\r\n\r\nhello through intercept\r\n")
print("sent")
"#,
            ca = ca.to_str().unwrap()
        );
        python3(&code)
    });
    intercepted_events_ok(&o, "TLSv1.3");
}

/// Python's `smtplib.SMTP_SSL` (TLS from the first byte) trusting only the
/// proxy CA, through an intercepting smtptap not told about implicit TLS, to
/// Postfix's SMTPS profile: detected, intercepted from the first byte,
/// delivered, and the conversation inside TLS starts with the banner.
#[test]
fn intercept_python_smtps_detected_trusting_only_the_proxy_ca_delivers_to_postfix() {
    let o = intercept_scenario_on("icept-smtps", Profile::S, |p, s, ca| {
        smtps_sender(p, s, ca, "hello over intercepted smtps")
    });
    assert!(o.client_ok, "{}", o.client_out);
    let m = o
        .delivered
        .as_deref()
        .unwrap_or_else(|| panic!("not delivered: {}", o.client_out));
    assert!(m.contains("hello over intercepted smtps"), "{m}");
    let named = |n: &str| -> Vec<&Value> { o.events.iter().filter(|e| e["event"] == n).collect() };
    let d = named("intercept.decision");
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0]["action"], "intercept", "{}", d[0]);
    assert!(
        d[0]["reason"]
            .as_str()
            .unwrap()
            .contains("implicit TLS, detected"),
        "{}",
        d[0]
    );
    for h in named("intercept.handshake") {
        assert_eq!(h["ok"], true, "{h}");
    }
    let e2e: Vec<_> = named("tls.started")
        .into_iter()
        .filter(|e| e["leg"] == "end_to_end")
        .collect();
    assert_eq!(e2e.len(), 1, "{e2e:?}");
    assert_eq!(e2e[0]["after"], "implicit_detected");
    assert_eq!(named("smtp.ehlo").len(), 1);
    let msg = named("smtp.message");
    assert_eq!(msg.len(), 1, "{msg:?}");
    assert_eq!(msg[0]["accepted"], true);
    let sum = named("session.summary");
    assert_eq!(sum[0]["implicit_tls"], true, "{}", sum[0]);
    assert!(
        sum[0]["banner"].as_str().unwrap_or("").starts_with("220 "),
        "{}",
        sum[0]
    );
}

// ---------------------------------------------------------------- a sender that gives up after the handshake

/// Postfix at `smtp_tls_security_level = verify` trusting only a CA that did
/// not issue profile a's certificate (`testbed sender … other-ca.pem`): it
/// completes the TLS handshake through smtptap, cannot verify the
/// certificate, says QUIT over TLS and defers the message. `protocols`:
/// `smtp_tls_(mandatory_)protocols` ("" for the default, TLS 1.3). The
/// client output is the sender's log lines for the attempt.
fn postfix_verify_untrusted(tag: &'static str, protocols: &'static str) -> Outcome {
    scenario(
        &format!("postfix-gives-up-{tag}"),
        Profile::A,
        false,
        |p, s| {
            let name = format!("sender-gives-up-{tag}");
            let listen = free_port();
            let other_ca = bed().dir.join("ca/other-ca.pem");
            let mut args = vec![
                "sender".to_string(),
                name.clone(),
                listen.to_string(),
                p.to_string(),
                "verify".into(),
                other_ca.to_str().unwrap().to_string(),
            ];
            if !protocols.is_empty() {
                args.push(protocols.into());
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = testbed(&args);
            assert!(
                out.status.success(),
                "testbed sender: {}",
                output_text(&out)
            );
            let sent = swaks(listen, s, &[]);
            assert!(
                sent.status.success(),
                "injection into the sender failed: {}",
                output_text(&sent)
            );
            // Wait for the sender's attempt through smtptap to be deferred.
            let maillog = bed().dir.join(&name).join("maillog");
            let deadline = Instant::now() + Duration::from_secs(30);
            let log = loop {
                let log = std::fs::read_to_string(&maillog).unwrap_or_default();
                if log.contains("Server certificate not verified") || Instant::now() > deadline {
                    break log;
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            let _ = Command::new("postfix")
                .args(["-c"])
                .arg(bed().dir.join(&name).join("etc"))
                .arg("stop")
                .output();
            let lines: String = log
                .lines()
                .filter(|l| l.contains("postfix/smtp[") && !l.contains("overriding"))
                .map(|l| format!("{l}\n"))
                .collect();
            Output {
                status: sent.status,
                stdout: lines.into_bytes(),
                stderr: Vec::new(),
            }
        },
    )
}

fn postfix_verify_untrusted_tls13() -> &'static Outcome {
    static O: OnceLock<Outcome> = OnceLock::new();
    O.get_or_init(|| postfix_verify_untrusted("tls13", ""))
}

fn postfix_verify_untrusted_tls12() -> &'static Outcome {
    static O: OnceLock<Outcome> = OnceLock::new();
    O.get_or_init(|| postfix_verify_untrusted("tls12", "<=TLSv1.2"))
}

/// `openssl s_client -starttls smtp` with nothing to say (stdin at EOF): it
/// completes the handshake and closes at once.
fn openssl_quits_after_handshake() -> &'static Outcome {
    static O: OnceLock<Outcome> = OnceLock::new();
    O.get_or_init(|| {
        scenario("openssl-quits", Profile::A, false, |p, _s| {
            Command::new("openssl")
                .args(["s_client", "-starttls", "smtp"])
                .args(["-connect", &format!("127.0.0.1:{p}")])
                .args(["-servername", CA_NAME])
                .stdin(Stdio::null())
                .output()
                .expect("run openssl")
        })
    })
}

/// The session's `tls.client_gave_up` events.
fn gave_up(o: &Outcome) -> Vec<&Value> {
    named(o, "tls.client_gave_up")
}

fn assert_gave_up(o: &Outcome, version: &str, sent: &str) {
    let g = gave_up(o);
    assert_eq!(g.len(), 1, "{:#?}", o.events);
    assert_eq!(g[0]["version"], version, "{}", g[0]);
    assert_eq!(g[0]["sent"], sent, "{}", g[0]);
    assert!(
        findings(o).contains(&(
            "tls.client_closed_after_handshake".to_string(),
            "error".to_string()
        )),
        "findings: {:?}",
        findings(o)
    );
    assert!(
        !has_finding(o, "tls.handshake_failed"),
        "the handshake completed: {:?}",
        findings(o)
    );
    // smtptap itself trusts the test CA (--ca-file): the evidence says the
    // client's trust differs.
    let f: Vec<Value> = named(o, "session.summary")
        .iter()
        .flat_map(|s| s["findings"].as_array().cloned().unwrap_or_default())
        .filter(|f| f["id"] == "tls.client_closed_after_handshake")
        .collect();
    let text = f[0].to_string();
    assert!(text.contains("found nothing wrong with it"), "{text}");
    assert!(text.contains("Server certificate not verified"), "{text}");
}

#[test]
fn peers_postfix_sender_tls_verify_untrusted_defers() {
    for o in [
        postfix_verify_untrusted_tls13(),
        postfix_verify_untrusted_tls12(),
    ] {
        assert!(
            o.client_out.contains("Server certificate not verified"),
            "the sending Postfix did not give up on the certificate:\n{}",
            o.client_out
        );
        assert!(o.delivered.is_none(), "the message must not be delivered");
        assert_relayed(o);
    }
    assert!(
        postfix_verify_untrusted_tls12()
            .client_out
            .contains("TLSv1.2"),
        "{}",
        postfix_verify_untrusted_tls12().client_out
    );
}

#[test]
fn events_postfix_verify_untrusted_tls13_is_a_client_that_gave_up() {
    // Postfix says QUIT over TLS: one 23-byte record in TLS 1.3.
    let o = postfix_verify_untrusted_tls13();
    assert_gave_up(o, "TLSv1.3", "quit");
    assert_eq!(gave_up(o)[0]["record_bytes"], 23, "{}", gave_up(o)[0]);
}

#[test]
fn events_postfix_verify_untrusted_tls12_is_a_client_that_gave_up() {
    let o = postfix_verify_untrusted_tls12();
    assert_gave_up(o, "TLSv1.2", "quit");
    // The chain is visible in TLS 1.2 and smtptap checked it.
    assert!(
        named(o, "cert.chain").iter().any(|c| c["trusted"] == true),
        "{:#?}",
        o.events
    );
}

#[test]
fn events_openssl_s_client_closing_after_the_handshake_gave_up() {
    let o = openssl_quits_after_handshake();
    assert!(o.client_out.contains("CONNECTED"), "{}", o.client_out);
    let g = gave_up(o);
    assert_eq!(g.len(), 1, "{:#?}", o.events);
    assert_eq!(g[0]["sent"], "nothing", "{}", g[0]);
    assert_eq!(g[0]["alert"], true, "{}", g[0]);
    assert!(has_finding(o, "tls.client_closed_after_handshake"));
}

#[test]
fn events_healthy_tls13_swaks_and_postfix_sessions_did_not_give_up() {
    let o = swaks_tls();
    let sh = named(o, "tls.server_hello");
    assert_eq!(sh[0]["version"], "TLSv1.3", "{}", sh[0]);
    assert!(gave_up(o).is_empty(), "{:#?}", o.events);
    assert!(!has_finding(o, "tls.client_closed_after_handshake"));
    for o in [postfix_may(), postfix_verify(), openssl_starttls()] {
        assert!(gave_up(o).is_empty(), "{:#?}", o.events);
        assert!(!has_finding(o, "tls.client_closed_after_handshake"));
    }
}
