//! `smtptap probe` against legacy servers and `--versions`: the real binary
//! against real `openssl s_server` processes limited to known TLS versions
//! (TLS 1.0 with `@SECLEVEL=0`), directly (implicit TLS) or behind a small
//! in-test SMTP front that answers banner/EHLO/STARTTLS and then splices the
//! raw bytes to s_server; and against an in-process rustls lab server.

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::temp_dir;
use serde_json::Value;
use smtptap::event::Event;

/// A self-signed certificate for s_server, and its SHA-256 as openssl says it.
struct Cert {
    cert: PathBuf,
    key: PathBuf,
    sha256: String,
}

fn openssl(args: &[&str]) -> std::process::Output {
    match Command::new("openssl").args(args).output() {
        Ok(o) => o,
        Err(e) => panic!(
            "cannot run openssl ({e}): run scripts/install-test-deps, or apt-get install -y openssl"
        ),
    }
}

fn cert(dir: &Path, cn: &str) -> Cert {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "30",
        "-subj",
        &format!("/CN={cn}"),
        "-addext",
        &format!("subjectAltName=DNS:{cn}"),
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fp = openssl(&[
        "x509",
        "-noout",
        "-fingerprint",
        "-sha256",
        "-in",
        cert.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&fp.stdout);
    let sha256 = text
        .trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "")
        .to_lowercase();
    assert_eq!(sha256.len(), 64, "{text}");
    Cert { cert, key, sha256 }
}

/// An `openssl s_server` with `version_args`, killed on drop.
struct SServer {
    child: Child,
    port: u16,
}

impl Drop for SServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn s_server(c: &Cert, version_args: &[&str]) -> SServer {
    let port = common::closed_port();
    let child = Command::new("openssl")
        .args(["s_server", "-quiet", "-accept", &port.to_string()])
        .args([
            "-cert",
            c.cert.to_str().unwrap(),
            "-key",
            c.key.to_str().unwrap(),
        ])
        .args(version_args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run openssl s_server ({e}): apt-get install -y openssl")
        });
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "s_server did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    SServer { child, port }
}

const LEGACY: &[&str] = &["-cipher", "DEFAULT:@SECLEVEL=0"];

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn probe(args: &[&str]) -> Run {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_smtptap"))
            .arg("probe")
            .args(["--ehlo", "probe.example.test"])
            .args(if args.iter().any(|a| a == "--timeout") {
                &[][..]
            } else {
                &["--timeout", "20"][..]
            })
            .args(&args)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .unwrap()
}

fn events(r: &Run) -> Vec<Event> {
    r.stdout
        .lines()
        .map(|l| serde_json::from_str::<Event>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn findings(evs: &[Event], session: u64) -> Vec<String> {
    let s = common::named(evs, session, "session.summary");
    assert_eq!(s.len(), 1, "one summary for session {session}");
    s[0]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap().to_string())
        .collect()
}

/// The legacy fallback's facts: session 2 shows TLS 1.0, the suite, the
/// certificate (SHA-256 and subject as openssl computes them) and the
/// legacy finding; session 1 is rustls' failed handshake.
fn assert_legacy_fallback(r: &Run, c: &Cert) {
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let evs = events(r);
    assert!(findings(&evs, 1).contains(&"tls.handshake_failed".to_string()));
    let f2 = findings(&evs, 2);
    assert!(f2.contains(&"tls.legacy_version".to_string()), "{f2:?}");
    // The probe's own stop (user_canceled) is not an error of the server.
    let s2 = &common::named(&evs, 2, "session.summary")[0];
    let hf = s2["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "tls.handshake_failed")
        .expect("session 2 says the handshake was not completed");
    assert_eq!(hf["severity"], "info", "{hf}");
    assert!(hf["title"].as_str().unwrap().contains("on purpose"), "{hf}");
    let sh = common::named(&evs, 2, "tls.server_hello");
    assert_eq!(sh.len(), 1);
    assert_eq!(sh[0]["version"], "TLSv1.0");
    let pv = common::named(&evs, 2, "probe.version");
    assert_eq!(pv.len(), 1, "{}", r.stdout);
    assert_eq!(pv[0]["offered"], "legacy");
    assert_eq!(pv[0]["accepted"], true);
    assert_eq!(pv[0]["version"], "TLSv1.0");
    assert_eq!(pv[0]["cipher_suite"], sh[0]["cipher_suite"]);
    let info = common::named(&evs, 2, "cert.info");
    assert!(!info.is_empty(), "no cert.info in session 2:\n{}", r.stdout);
    assert_eq!(
        info[0]["sha256"],
        Value::String(c.sha256.clone()),
        "{:#}",
        info[0]
    );
    assert!(
        info[0]["subject"]
            .as_str()
            .unwrap()
            .contains("legacy.example.test"),
        "{:#}",
        info[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls10_only_implicit_tls_server_shows_version_suite_certificate_and_legacy_finding() {
    let dir = temp_dir("legacy-implicit");
    let c = cert(&dir, "legacy.example.test");
    let mut v = vec!["-tls1"];
    v.extend_from_slice(LEGACY);
    let s = s_server(&c, &v);
    let target = format!("127.0.0.1:{}", s.port);
    let r = probe(&[
        &target,
        "--implicit-tls",
        "--sni",
        "legacy.example.test",
        "--json",
    ])
    .await;
    assert_legacy_fallback(&r, &c);
    // The console says the same in words.
    let r = probe(&[&target, "--implicit-tls", "--color", "never"]).await;
    assert_eq!(r.code, 1);
    assert!(
        r.stdout.contains("the server chose TLSv1.0 with"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("(tls.legacy_version)"), "{}", r.stdout);
    assert!(r.stdout.contains("CN=legacy.example.test"), "{}", r.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls10_only_server_behind_starttls_shows_the_legacy_finding() {
    let dir = temp_dir("legacy-starttls");
    let c = cert(&dir, "legacy.example.test");
    let mut v = vec!["-tls1"];
    v.extend_from_slice(LEGACY);
    let s = s_server(&c, &v);
    let front = common::starttls_front(s.port).await;
    let target = format!("127.0.0.1:{front}");
    let r = probe(&[&target, "--sni", "legacy.example.test", "--json"]).await;
    assert_legacy_fallback(&r, &c);
    let evs = events(&r);
    // Session 2 went through the SMTP dialogue up to STARTTLS's 220.
    let started = common::named(&evs, 2, "tls.started");
    assert_eq!(started.len(), 1);
    assert_eq!(started[0]["after"], "starttls");
    // The legacy session stops on purpose inside the handshake: not a
    // client that gave up after a completed one.
    for session in [1, 2] {
        assert!(
            common::named(&evs, session, "tls.client_gave_up").is_empty(),
            "{}",
            r.stdout
        );
    }
}

/// `--versions --json`: per version offered, accepted or not.
fn versions(r: &Run) -> Vec<(String, bool)> {
    let evs = events(r);
    let pv = common::named(&evs, 0, "probe.version");
    assert_eq!(pv.len(), 4, "{}", r.stdout);
    pv.iter()
        .map(|v| {
            (
                v["offered"].as_str().unwrap().to_string(),
                v["accepted"] == true,
            )
        })
        .collect()
}

fn expect(list: [bool; 4]) -> Vec<(String, bool)> {
    ["TLSv1.0", "TLSv1.1", "TLSv1.2", "TLSv1.3"]
        .iter()
        .zip(list)
        .map(|(n, a)| (n.to_string(), a))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_of_openssl_servers_with_known_version_sets() {
    let dir = temp_dir("versions-openssl");
    let c = cert(&dir, "legacy.example.test");
    let cases: Vec<(Vec<&str>, [bool; 4], i32)> = vec![
        (vec!["-tls1_2"], [false, false, true, false], 0),
        (vec!["-tls1_3"], [false, false, false, true], 0),
        (
            vec!["-no_tls1_1", "-no_tls1_3", "-cipher", "DEFAULT:@SECLEVEL=0"],
            [true, false, true, false],
            1,
        ),
        (
            vec!["-tls1", "-cipher", "DEFAULT:@SECLEVEL=0"],
            [true, false, false, false],
            1,
        ),
    ];
    for (args, want, code) in cases {
        let s = s_server(&c, &args);
        let target = format!("127.0.0.1:{}", s.port);
        let r = probe(&[&target, "--implicit-tls", "--versions", "--json"]).await;
        assert_eq!(versions(&r), expect(want), "{args:?}\n{}", r.stdout);
        assert_eq!(r.code, code, "{args:?}\n{}\n{}", r.stdout, r.stderr);
        drop(s);
    }
    // Behind STARTTLS, on the console.
    let s = s_server(&c, &["-tls1_2"]);
    let front = common::starttls_front(s.port).await;
    let r = probe(&[
        &format!("127.0.0.1:{front}"),
        "--versions",
        "--color",
        "never",
    ])
    .await;
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains("TLSv1.2 offered: accepted: the server chose TLSv1.2 with"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("TLSv1.0 offered: refused"),
        "{}",
        r.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_of_a_rustls_server_are_1_2_and_1_3() {
    use smtptap::cert::mint::{Ca, LeafSpec};
    use smtptap::lab::{self, LabServer, ServerProfile};
    let root = Ca::new("smtptap versions test CA").unwrap();
    let issued = root.issue(&LeafSpec::server(["mx.example.test"])).unwrap();
    let tls = lab::server_config(issued.chain_der.clone(), issued.key_der.clone()).unwrap();
    let s = LabServer::start(ServerProfile::new("mx.example.test", Some(tls)))
        .await
        .unwrap();
    let target = format!("127.0.0.1:{}", s.addr().port());
    let r = probe(&[&target, "--versions", "--sni", "mx.example.test", "--json"]).await;
    assert_eq!(
        versions(&r),
        expect([false, false, true, true]),
        "{}",
        r.stdout
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_against_a_closed_port_exits_3() {
    let target = format!("127.0.0.1:{}", common::closed_port());
    let r = probe(&[&target, "--versions", "--json"]).await;
    assert_eq!(r.code, 3, "{}\n{}", r.stdout, r.stderr);
    let evs = events(&r);
    let pv = common::named(&evs, 0, "probe.version");
    assert!(pv.iter().all(|v| v["refused"] == "no_connection"), "{pv:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls12_server_with_only_cbc_rsa_suites_gets_the_legacy_hello_and_the_weak_cipher_finding()
{
    let dir = temp_dir("legacy-cbc12");
    let c = cert(&dir, "legacy.example.test");
    // TLS 1.2 but no AEAD suite rustls offers: rustls' handshake fails.
    let s = s_server(&c, &["-tls1_2", "-cipher", "AES128-SHA:@SECLEVEL=0"]);
    let target = format!("127.0.0.1:{}", s.port);
    let r = probe(&[&target, "--implicit-tls", "--json"]).await;
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let evs = events(&r);
    let pv = common::named(&evs, 2, "probe.version");
    assert_eq!(pv.len(), 1, "{}", r.stdout);
    assert_eq!(pv[0]["version"], "TLSv1.2");
    assert_eq!(pv[0]["cipher_suite"], "TLS_RSA_WITH_AES_128_CBC_SHA");
    let f2 = findings(&evs, 2);
    assert!(f2.contains(&"tls.weak_cipher".to_string()), "{f2:?}");
    assert!(!f2.contains(&"tls.legacy_version".to_string()), "{f2:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_modern_server_gets_no_legacy_session() {
    let dir = temp_dir("legacy-none");
    let c = cert(&dir, "legacy.example.test");
    // s_server is no SMTP server: the probe waits for a banner over TLS
    // until its (short) timeout, after a successful handshake.
    let s = s_server(&c, &["-tls1_2"]);
    let target = format!("127.0.0.1:{}", s.port);
    let r = probe(&[&target, "--implicit-tls", "--json", "--timeout", "2"]).await;
    let evs = events(&r);
    let sh = common::named(&evs, 1, "tls.server_hello");
    assert_eq!(sh.len(), 1, "{}", r.stdout);
    assert_eq!(sh[0]["version"], "TLSv1.2");
    assert!(
        common::named(&evs, 2, "session.open").is_empty(),
        "{}",
        r.stdout
    );
    assert!(common::named(&evs, 0, "probe.version").is_empty());
}
