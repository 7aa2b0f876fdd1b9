//! `smtptap probe` end to end: the real binary against in-process lab
//! servers on loopback (real sockets, rustls on both sides), checking the
//! exit code (the verdict), the transcript and the JSON events.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::{closed_port, temp_dir};
use serde_json::Value;
use smtptap::cert::mint::{Ca, Issued, LeafSpec};
use smtptap::event::Event;
use smtptap::lab::{self, LabServer, ServerProfile};

const MX: &str = "mx.example.test";

struct Pki {
    root: Ca,
    ca_file: PathBuf,
}

fn pki(test: &str) -> Pki {
    let root = Ca::new(&format!("smtptap probe test CA ({test})")).unwrap();
    let dir = temp_dir(&format!("probe-{test}"));
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, root.pem()).unwrap();
    Pki { root, ca_file }
}

fn leaf(names: &[&str]) -> LeafSpec {
    LeafSpec {
        crl_urls: vec!["http://crl.example.test/ca.crl".into()],
        ocsp_url: Some("http://ocsp.example.test/".into()),
        ..LeafSpec::server(names.iter().copied())
    }
}

/// A STARTTLS lab server presenting `issued` (TLS 1.2 and 1.3: rustls picks 1.3).
async fn server(issued: &Issued) -> LabServer {
    let tls = lab::server_config(issued.chain_der.clone(), issued.key_der.clone()).unwrap();
    LabServer::start(ServerProfile::new(MX, Some(tls)))
        .await
        .unwrap()
}

/// A STARTTLS lab server speaking only TLS 1.2 (the certificate crosses in the clear).
async fn server_tls12(issued: &Issued) -> LabServer {
    let cfg = rustls::ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS12])
        .with_no_client_auth()
        .with_single_cert(issued.rustls_chain(), issued.rustls_key())
        .unwrap();
    LabServer::start(ServerProfile::new(MX, Some(Arc::new(cfg))))
        .await
        .unwrap()
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `smtptap probe ARGS` (off the runtime the lab servers run on).
async fn probe(args: Vec<String>) -> Run {
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_smtptap"))
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

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn target(s: &LabServer) -> String {
    format!("127.0.0.1:{}", s.addr().port())
}

fn ca(p: &Pki) -> String {
    p.ca_file.display().to_string()
}

/// `--json` output: every line is an Event.
fn events(r: &Run) -> Vec<Event> {
    r.stdout
        .lines()
        .map(|l| serde_json::from_str::<Event>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn named(evs: &[Event], name: &str) -> Vec<Value> {
    evs.iter()
        .filter(|e| e.name() == name)
        .map(|e| serde_json::to_value(e).unwrap())
        .collect()
}

fn findings(evs: &[Event]) -> Vec<Value> {
    let s = named(evs, "session.summary");
    assert_eq!(s.len(), 1, "one summary");
    s[0]["findings"].as_array().unwrap().clone()
}

fn finding<'a>(f: &'a [Value], id: &str) -> &'a Value {
    f.iter()
        .find(|x| x["id"] == id)
        .unwrap_or_else(|| panic!("no {id} in {f:#?}"))
}

fn errors(f: &[Value]) -> Vec<String> {
    f.iter()
        .filter(|x| x["severity"] == "error")
        .map(|x| x["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_server_exits_0_and_shows_the_tls_version() {
    let p = pki("good");
    let s = server(&p.root.issue(&leaf(&[MX])).unwrap()).await;
    let r = probe(args(&[&target(&s), "--ca-file", &ca(&p), "--sni", MX])).await;
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("TLSv1.3"), "{}", r.stdout);
    assert!(r.stdout.contains("EHLO probe.example.test"), "{}", r.stdout);
    assert!(r.stdout.contains("QUIT"), "{}", r.stdout);
    // The findings come last.
    let last = r.stdout.lines().last().unwrap_or_default();
    assert!(
        !last.contains("summary:") || !r.stdout.contains("[error]"),
        "{}",
        r.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_starttls_exits_1() {
    let s = LabServer::start(ServerProfile::new(MX, None))
        .await
        .unwrap();
    let r = probe(args(&[&target(&s), "--json"])).await;
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let f = findings(&events(&r));
    assert_eq!(finding(&f, "starttls.not_offered")["severity"], "error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mismatched_certificate_with_expect_name_exits_1_naming_both_sides() {
    let p = pki("mismatch");
    let s = server(&p.root.issue(&leaf(&[MX])).unwrap()).await;
    let r = probe(args(&[
        &target(&s),
        "--ca-file",
        &ca(&p),
        "--expect-name",
        "mail.partner.example",
        "--json",
    ]))
    .await;
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let f = findings(&events(&r));
    let m = finding(&f, "cert.name_mismatch");
    assert_eq!(m["severity"], "error");
    let ev = m["evidence"].to_string();
    assert!(ev.contains("expected: mail.partner.example"), "{ev}");
    assert!(ev.contains(&format!("presented: {MX}")), "{ev}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_certificate_exits_1() {
    let p = pki("expired");
    let issued = p.root.issue(&leaf(&[MX]).with_days(-400, -3)).unwrap();
    // TLS 1.2: the certificate is read from the wire, as the proxy reads it.
    let s = server_tls12(&issued).await;
    let r = probe(args(&[&target(&s), "--ca-file", &ca(&p), "--json"])).await;
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let evs = events(&r);
    assert_eq!(named(&evs, "tls.certificate").len(), 1);
    assert_eq!(errors(&findings(&evs)), vec!["cert.expired".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_certificate_exits_1() {
    let private = Ca::new("Some Private Root CA").unwrap();
    let mut issued = private.issue(&leaf(&[MX])).unwrap();
    issued.chain_der.push(private.der());
    let s = server(&issued).await;
    // No --ca-file: the Mozilla roots do not know this CA.
    let r = probe(args(&[&target(&s)])).await;
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("(cert.untrusted)"), "{}", r.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_exits_3() {
    let r = probe(args(&[&format!("127.0.0.1:{}", closed_port())])).await;
    assert_eq!(r.code, 3, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("(upstream.unreachable)"), "{}", r.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_error_exits_2() {
    let r = probe(args(&["127.0.0.1:25", "--ca-file", "/nonexistent/ca.pem"])).await;
    assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
    let r = probe(args(&["127.0.0.1:25", "--no-such-flag"])).await;
    assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls13_hidden_certificate_is_still_reported_and_name_checked() {
    let p = pki("tls13");
    let s = server(&p.root.issue(&leaf(&[MX])).unwrap()).await;
    let r = probe(args(&[
        &target(&s),
        "--ca-file",
        &ca(&p),
        "--expect-name",
        "mail.partner.example",
        "--json",
    ]))
    .await;
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let evs = events(&r);
    // The JSON is the proxy's: run.start first (mode probe), one session.
    let first = serde_json::to_value(&evs[0]).unwrap();
    assert_eq!(first["event"], "run.start");
    assert_eq!(first["mode"], "probe");
    assert!(evs.iter().all(|e| e.run == evs[0].run));
    assert_eq!(evs.last().unwrap().name(), "session.summary");
    // The wire hid the chain; the handshake saw it.
    let hello = named(&evs, "tls.server_hello");
    assert_eq!(hello[0]["version"], "TLSv1.3", "{hello:?}");
    assert!(named(&evs, "tls.certificate").is_empty());
    let info = named(&evs, "cert.info");
    assert_eq!(info.len(), 1, "{info:?}");
    let f = findings(&evs);
    assert_eq!(errors(&f), vec!["cert.name_mismatch".to_string()]);
    // The probe says EHLO over TLS and QUITs: it did not give up.
    assert!(named(&evs, "tls.client_gave_up").is_empty());
    let ev = finding(&f, "cert.name_mismatch")["evidence"].to_string();
    assert!(ev.contains("expected: mail.partner.example"), "{ev}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_and_rcpt_over_tls_never_data() {
    let p = pki("rcpt");
    let issued = p.root.issue(&leaf(&[MX])).unwrap();
    let tls = lab::server_config(issued.chain_der.clone(), issued.key_der.clone()).unwrap();
    let mut profile = ServerProfile::new(MX, Some(tls));
    profile.reject_rcpt = vec!["nobody@example.test".into()];
    let s = LabServer::start(profile).await.unwrap();
    let r = probe(args(&[
        &target(&s),
        "--ca-file",
        &ca(&p),
        "--mail-from",
        "probe@example.test",
        "--rcpt-to",
        "nobody@example.test",
    ]))
    .await;
    assert!(
        r.stdout.contains("MAIL FROM:<probe@example.test>"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("550"), "{}", r.stdout);
    assert!(r.stdout.contains("RSET"), "{}", r.stdout);
    assert!(!r.stdout.contains("-> DATA"), "{}", r.stdout);
    assert!(s.received().is_empty());
    assert!(r.code == 0 || r.code == 1, "{}", r.code);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls13_client_certificate_request_is_reported() {
    let p = pki("client-cert");
    let issued = p.root.issue(&leaf(&[MX])).unwrap();
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
    let s = LabServer::start(ServerProfile::new(MX, Some(Arc::new(cfg))))
        .await
        .unwrap();
    let r = probe(args(&[&target(&s), "--ca-file", &ca(&p), "--json"])).await;
    let evs = events(&r);
    assert_eq!(
        named(&evs, "tls.certificate_request").len(),
        1,
        "{}",
        r.stdout
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_tls_server() {
    let p = pki("implicit");
    let issued = p.root.issue(&leaf(&[MX])).unwrap();
    let tls = lab::server_config(issued.chain_der.clone(), issued.key_der.clone()).unwrap();
    let mut profile = ServerProfile::new(MX, Some(tls));
    profile.implicit_tls = true;
    profile.offer_starttls = false;
    let s = LabServer::start(profile).await.unwrap();
    let r = probe(args(&[
        &target(&s),
        "--implicit-tls",
        "--ca-file",
        &ca(&p),
        "--sni",
        MX,
        "--json",
    ]))
    .await;
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let evs = events(&r);
    assert_eq!(
        named(&evs, "tls.client_hello")[0]["sni"],
        MX,
        "{}",
        r.stdout
    );
    assert_eq!(named(&evs, "cert.info").len(), 1);
    // The banner and EHLO came inside TLS.
    assert_eq!(named(&evs, "smtp.banner").len(), 1, "{}", r.stdout);
    assert!(
        named(&evs, "smtp.command")
            .iter()
            .any(|c| c["verb"] == "QUIT"),
        "{}",
        r.stdout
    );
}

/// A TLS 1.2 server that requires a client certificate from `p`'s CA.
async fn server_requiring_client_cert(p: &Pki) -> LabServer {
    let issued = p.root.issue(&leaf(&[MX])).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(p.root.der()))
        .unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .unwrap();
    let cfg = rustls::ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS12])
        .with_client_cert_verifier(verifier)
        .with_single_cert(issued.rustls_chain(), issued.rustls_key())
        .unwrap();
    LabServer::start(ServerProfile::new(MX, Some(Arc::new(cfg))))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_client_certificate_fails_without_and_passes_with_one() {
    let p = pki("client-cert-required");
    let s = server_requiring_client_cert(&p).await;
    let r = probe(args(&[&target(&s), "--ca-file", &ca(&p), "--json"])).await;
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let evs = events(&r);
    assert_eq!(named(&evs, "tls.certificate_request").len(), 1);
    // The server's alert is read after the failed handshake: the finding says
    // who gave up and why.
    let f = findings(&evs);
    assert_eq!(errors(&f), vec!["tls.handshake_failed".to_string()]);
    let ev = finding(&f, "tls.handshake_failed")["evidence"].to_string();
    assert!(ev.contains("fatal certificate_required"), "{ev}");

    let dir = temp_dir("probe-client-cert-files");
    let client = p
        .root
        .issue(&LeafSpec::client(["probe.example.test"]))
        .unwrap();
    let (cert, key) = (dir.join("client.pem"), dir.join("client.key"));
    std::fs::write(&cert, client.chain_pem()).unwrap();
    std::fs::write(&key, client.key_pem()).unwrap();
    let r = probe(args(&[
        &target(&s),
        "--ca-file",
        &ca(&p),
        "--client-cert",
        &cert.display().to_string(),
        "--client-key",
        &key.display().to_string(),
        "--json",
    ]))
    .await;
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let evs = events(&r);
    assert_eq!(
        named(&evs, "session.summary")[0]["tls_established"],
        true,
        "{}",
        r.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_times_out_with_exit_1() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((c, _)) = l.accept().await {
            held.push(c);
        }
    });
    let started = std::time::Instant::now();
    let r = probe(args(&[&addr.to_string(), "--timeout", "1"])).await;
    hold.abort();
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert!(r.stdout.contains("gave up after 1s"), "{}", r.stdout);
}

/// A server whose banner never ends (`220-` lines forever): the probe stops
/// at its reply bound and says so, instead of reading until it runs out of
/// memory or time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_multi_line_reply_is_cut_at_the_bound() {
    use tokio::io::AsyncWriteExt;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let flood = tokio::spawn(async move {
        if let Ok((mut c, _)) = l.accept().await {
            let line = b"220-mx.example.test still greeting you\r\n".repeat(64);
            while c.write_all(&line).await.is_ok() {}
        }
    });
    let r = probe(args(&[&addr.to_string(), "--timeout", "20"])).await;
    flood.abort();
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("an SMTP reply of more than 1000 lines"),
        "{}",
        r.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_refused_exits_1() {
    let p = pki("refused");
    let issued = p.root.issue(&leaf(&[MX])).unwrap();
    let tls = lab::server_config(issued.chain_der.clone(), issued.key_der.clone()).unwrap();
    let mut profile = ServerProfile::new(MX, Some(tls));
    profile.refuse_starttls = true;
    let s = LabServer::start(profile).await.unwrap();
    let r = probe(args(&[&target(&s), "--ca-file", &ca(&p)])).await;
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("454 4.7.0"), "{}", r.stdout);
    assert!(r.stdout.contains("-> QUIT"), "{}", r.stdout);
    assert!(r.stdout.contains("[error]"), "{}", r.stdout);
}
