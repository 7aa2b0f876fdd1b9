//! Intercept mode end to end on loopback: real rustls clients (the lab
//! client) and servers (the lab server), smtptap terminating TLS on both
//! legs with a CA made by `smtptap ca init`.

mod common;

use std::sync::Arc;

use common::{named, temp_dir, TestProxy};
use smtptap::cert::mint::{Ca, LeafSpec};
use smtptap::event::Event;
use smtptap::lab::{self, ClientOptions, LabServer, ServerProfile, StartTls};

/// The upstream's PKI: its own CA (PEM file for `[tls] ca_files`) and a leaf.
struct Upstream {
    server: LabServer,
    ca_file: std::path::PathBuf,
}

async fn upstream(
    dir: &std::path::Path,
    implicit: bool,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Upstream {
    let ca = Ca::new("Upstream Test CA").unwrap();
    let leaf = ca.issue(&LeafSpec::server(["mx.example.test"])).unwrap();
    let tls = Arc::new(
        rustls::ServerConfig::builder_with_protocol_versions(versions)
            .with_no_client_auth()
            .with_single_cert(leaf.rustls_chain(), leaf.rustls_key())
            .unwrap(),
    );
    let mut profile = ServerProfile::new("mx.example.test", Some(tls));
    profile.implicit_tls = implicit;
    let server = LabServer::start(profile).await.unwrap();
    let ca_file = dir.join("upstream-ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    Upstream { server, ca_file }
}

/// A proxy CA from `smtptap ca init` and the intercept configuration using it.
fn proxy_ca(dir: &std::path::Path) -> (Vec<u8>, String) {
    let (crt, key) = smtptap::cli::ca_init(&dir.join("ca"), "smtptap test CA").unwrap();
    let pem = std::fs::read_to_string(&crt).unwrap();
    let der = rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
        .to_vec();
    let cfg = format!(
        "mode = \"intercept\"\n[intercept]\nca_cert = \"{}\"\nca_key = \"{}\"\n",
        crt.display(),
        key.display()
    );
    (der, cfg)
}

use rustls::pki_types::pem::PemObject;

/// A proxy in intercept mode with a CA from `smtptap ca init`, in front of
/// `up` and trusting only `up`'s CA. `top`: top-level keys; `icept`: more
/// `[intercept]` keys. Returns the proxy CA's certificate (DER) and the proxy.
async fn intercept_proxy(
    dir: &std::path::Path,
    up: &Upstream,
    top: &str,
    icept: &str,
) -> (Vec<u8>, TestProxy) {
    let (anchor, icfg) = proxy_ca(dir);
    let proxy = TestProxy::start(
        &up.server.addr().to_string(),
        &format!(
            "{top}{icfg}{icept}[tls]\nmozilla_roots = false\nca_files = [\"{}\"]\n",
            up.ca_file.display()
        ),
    )
    .await;
    (anchor, proxy)
}

fn opts(tls: Arc<rustls::ClientConfig>, body: &[u8]) -> ClientOptions {
    ClientOptions {
        ehlo: "client.example.test".into(),
        starttls: StartTls::Required,
        tls: Some(tls),
        server_name: "mx.example.test".into(),
        from: "alice@client.example.test".into(),
        to: vec!["bob@mx.example.test".into()],
        body: body.to_vec(),
        helo: false,
    }
}

fn verifying(
    anchor: &[u8],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(anchor.to_vec()))
        .unwrap();
    Arc::new(
        rustls::ClientConfig::builder_with_protocol_versions(versions)
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

fn body() -> Vec<u8> {
    let mut b = b"Subject: intercepted\r\n\r\n".to_vec();
    for i in 0..2000 {
        b.extend_from_slice(format!("line {i} of the message body\r\n").as_bytes());
    }
    b
}

fn leg_events(evs: &[Event], name: &str, leg: &str) -> Vec<serde_json::Value> {
    named(evs, 1, name)
        .into_iter()
        .filter(|v| v["leg"] == leg)
        .collect()
}

async fn intercepted_session(versions: &[&'static rustls::SupportedProtocolVersion], want: &str) {
    let dir = temp_dir(&format!("intercept-{want}"));
    let up = upstream(&dir, false, versions).await;
    let (anchor, proxy) =
        intercept_proxy(&dir, &up, "", "upstream_name = \"mx.example.test\"\n").await;
    let b = body();
    // The client trusts only the proxy CA and checks the name.
    let report = lab::send(proxy.addr, &opts(verifying(&anchor, versions), &b)).await;
    assert!(report.error.is_none(), "{report:?}");
    assert!(report.tls, "{report:?}");
    assert!(
        report
            .data_reply
            .as_deref()
            .unwrap_or("")
            .starts_with("250"),
        "{report:?}"
    );
    let evs = proxy.wait_summaries(1).await;
    let got = up.server.received();
    assert_eq!(got.len(), 1);
    let mut sent = b.clone();
    if !sent.ends_with(b"\r\n") {
        sent.extend_from_slice(b"\r\n");
    }
    assert_eq!(got[0].data, sent, "the message arrived changed");
    assert!(got[0].tls);

    let decision = named(&evs, 1, "intercept.decision");
    assert_eq!(decision.len(), 1, "{decision:?}");
    assert_eq!(decision[0]["action"], "intercept");
    assert_eq!(decision[0]["sni"], "mx.example.test");
    for leg in ["client_proxy", "proxy_server"] {
        let hs = leg_events(&evs, "intercept.handshake", leg);
        assert_eq!(hs.len(), 1, "{leg}: {hs:?}");
        assert_eq!(hs[0]["ok"], true, "{leg}: {hs:?}");
        assert_eq!(hs[0]["version"], want, "{leg}: {hs:?}");
        let sh = leg_events(&evs, "tls.server_hello", leg);
        assert_eq!(sh.len(), 1, "{leg}: no ServerHello under its leg");
        assert_eq!(sh[0]["version"], want);
        assert_eq!(leg_events(&evs, "tls.client_hello", leg).len(), 1, "{leg}");
        assert!(
            leg_events(&evs, "tls.client_hello", leg)[0]["ja4"].is_string(),
            "{leg}: JA4"
        );
    }
    let up_hs = &leg_events(&evs, "intercept.handshake", "proxy_server")[0];
    assert_eq!(up_hs["verified"], true, "{up_hs}");
    let down = &leg_events(&evs, "intercept.handshake", "client_proxy")[0];
    assert!(
        down["presented"]
            .as_str()
            .unwrap()
            .contains("mx.example.test"),
        "{down}"
    );
    // The upstream's chain is analysed under its leg (seen on the wire in
    // TLS 1.2, handed over by the handshake in TLS 1.3).
    let chains = leg_events(&evs, "cert.chain", "proxy_server");
    assert_eq!(chains.len(), 1, "{chains:?}");
    assert_eq!(chains[0]["trusted"], true);
    // The conversation inside TLS: second EHLO, envelope, message.
    assert_eq!(named(&evs, 1, "smtp.ehlo").len(), 2);
    let msg = named(&evs, 1, "smtp.message");
    assert_eq!(msg.len(), 1, "{msg:?}");
    assert_eq!(msg[0]["accepted"], true);
    assert_eq!(msg[0]["mail_from"], "alice@client.example.test");
    let summary = &named(&evs, 1, "session.summary")[0];
    for f in summary["findings"].as_array().unwrap() {
        assert_ne!(f["severity"], "error", "{summary}");
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls13_session_is_intercepted_and_delivered_byte_identical() {
    intercepted_session(&[&rustls::version::TLS13], "TLSv1.3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_session_is_intercepted_and_delivered_byte_identical() {
    intercepted_session(&[&rustls::version::TLS12], "TLSv1.2").await;
}

fn finding_ids(evs: &[Event]) -> Vec<String> {
    named(evs, 1, "session.summary")[0]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforce_refuses_an_untrusted_upstream_and_fails_the_clients_handshake() {
    let dir = temp_dir("intercept-enforce");
    let up = upstream(&dir, false, rustls::DEFAULT_VERSIONS).await;
    let (anchor, icfg) = proxy_ca(&dir);
    // The upstream's CA is not among the proxy's trust anchors.
    let proxy = TestProxy::start(
        &up.server.addr().to_string(),
        &format!("{icfg}upstream_verify = \"enforce\"\nupstream_name = \"mx.example.test\"\n"),
    )
    .await;
    let report = lab::send(
        proxy.addr,
        &opts(verifying(&anchor, rustls::DEFAULT_VERSIONS), &body()),
    )
    .await;
    assert!(
        report.error.is_some(),
        "the client's handshake should fail: {report:?}"
    );
    assert!(!report.tls);
    let evs = proxy.wait_summaries(1).await;
    assert!(up.server.received().is_empty());
    let hs = leg_events(&evs, "intercept.handshake", "proxy_server");
    assert_eq!(hs.len(), 1, "{hs:?}");
    assert_eq!(hs[0]["ok"], false);
    assert_eq!(hs[0]["refused"], true);
    assert_eq!(hs[0]["verified"], false);
    let ids = finding_ids(&evs);
    assert!(
        ids.contains(&"intercept.upstream_refused".to_string()),
        "{ids:?}"
    );
    let summary = named(&evs, 1, "session.summary")[0].to_string();
    assert!(
        summary.contains("no path from the certificate to a trust anchor"),
        "the finding says why: {summary}"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_trust_the_proxy_ca_is_reported() {
    let dir = temp_dir("intercept-distrust");
    let up = upstream(&dir, false, rustls::DEFAULT_VERSIONS).await;
    let (_anchor, proxy) = intercept_proxy(&dir, &up, "", "").await;
    // This client trusts only the upstream's own CA: it refuses the minted leaf.
    let upstream_ca = std::fs::read_to_string(&up.ca_file).unwrap();
    let der = rustls::pki_types::CertificateDer::pem_slice_iter(upstream_ca.as_bytes())
        .next()
        .unwrap()
        .unwrap()
        .to_vec();
    let report = lab::send(
        proxy.addr,
        &opts(verifying(&der, rustls::DEFAULT_VERSIONS), &body()),
    )
    .await;
    assert!(report.error.is_some(), "{report:?}");
    let evs = proxy.wait_summaries(1).await;
    let ids = finding_ids(&evs);
    assert!(
        ids.contains(&"intercept.client_failed".to_string()),
        "{ids:?}"
    );
    // The client's alert in TLS's words, not rustls' Rust names.
    let down = &leg_events(&evs, "intercept.handshake", "client_proxy")[0];
    assert_eq!(
        down["error"], "the peer sent a fatal alert: unknown_ca",
        "{down}"
    );
    proxy.stop().await;
}

/// openssl s_server with TLS 1.0 only, implicit TLS (it has no STARTTLS):
/// the proxy, configured for implicit TLS, cannot serve a TLS 1.0 hello,
/// passes the session through, and the handshake still completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls10_client_falls_back_to_passthrough_and_completes() {
    tls10_fallback(false, true).await;
}

/// The same SMTPS session on a proxy not told about implicit TLS: detected
/// (the server stays silent), then passed through for the TLS 1.0 hello.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls10_smtps_client_detected_falls_back_to_passthrough_and_completes() {
    tls10_fallback(false, false).await;
}

/// The same after STARTTLS (the issue's `openssl s_client -tls1 -starttls
/// smtp`): the cleartext part is relayed, the hello is buffered at the
/// boundary and then passed through to the TLS 1.0 upstream untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls10_client_after_starttls_falls_back_to_passthrough_and_completes() {
    tls10_fallback(true, false).await;
}

/// A TLS 1.0-only `openssl s_server` upstream (implicit TLS, or behind an
/// SMTP STARTTLS front), an `openssl s_client -tls1` through intercept mode.
/// `configured`: implicit TLS said in the configuration (without STARTTLS).
async fn tls10_fallback(starttls: bool, configured: bool) {
    use std::process::{Command, Stdio};
    let dir = temp_dir(&format!("intercept-tls10-{starttls}-{configured}"));
    let ca = Ca::new("Legacy CA").unwrap();
    let leaf = ca
        .issue(&LeafSpec::server(["legacy.example.test"]))
        .unwrap();
    std::fs::write(dir.join("leaf.pem"), leaf.chain_pem()).unwrap();
    std::fs::write(dir.join("leaf.key"), leaf.key_pem()).unwrap();
    let port = common::closed_port();
    let mut server = Command::new("openssl")
        .args([
            "s_server",
            "-quiet",
            "-tls1",
            "-cipher",
            "DEFAULT@SECLEVEL=0",
        ])
        .arg("-accept")
        .arg(port.to_string())
        .arg("-cert")
        .arg(dir.join("leaf.pem"))
        .arg("-key")
        .arg(dir.join("leaf.key"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl is needed (apt-get install openssl)");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (_anchor, icfg) = proxy_ca(&dir);
    let proxy = if starttls {
        let front = common::starttls_front(port).await;
        TestProxy::start(&format!("127.0.0.1:{front}"), &icfg).await
    } else {
        let implicit = if configured {
            "implicit_tls = true\n"
        } else {
            ""
        };
        TestProxy::start(&format!("127.0.0.1:{port}"), &format!("{implicit}{icfg}")).await
    };
    let addr = proxy.addr.to_string();
    let out = tokio::task::spawn_blocking(move || {
        let mut args = vec!["s_client", "-tls1", "-cipher", "DEFAULT@SECLEVEL=0"];
        if starttls {
            args.extend(["-starttls", "smtp"]);
        }
        Command::new("openssl")
            .args(&args)
            .arg("-connect")
            .arg(&addr)
            .stdin(Stdio::null())
            .output()
            .expect("openssl s_client")
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Protocol  : TLSv1\n") || text.contains("TLSv1, Cipher"),
        "{text}"
    );
    let evs = proxy.wait_summaries(1).await;
    let d = named(&evs, 1, "intercept.decision");
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0]["action"], "passthrough");
    assert!(
        d[0]["reason"].as_str().unwrap().contains("TLS 1.0"),
        "{d:?}"
    );
    assert!(finding_ids(&evs).contains(&"intercept.fallback".to_string()));
    // The handshake was observed end to end, as in passthrough.
    let sh = named(&evs, 1, "tls.server_hello");
    assert_eq!(sh.len(), 1);
    assert_eq!(sh[0]["version"], "TLSv1.0");
    if starttls {
        // The cleartext part before it, as relayed.
        assert_eq!(named(&evs, 1, "smtp.ehlo").len(), 1);
        assert_eq!(named(&evs, 1, "tls.started").len(), 1);
    } else if !configured {
        let reason = d[0]["reason"].as_str().unwrap();
        assert!(reason.contains("implicit TLS, detected"), "{reason}");
        // Passthrough's own detection: the client spoke TLS, the server answered in TLS.
        let started = named(&evs, 1, "tls.started");
        assert_eq!(started.len(), 1, "{started:?}");
        assert_eq!(started[0]["after"], "implicit_detected");
    }
    let _ = server.kill();
    let _ = server.wait();
    proxy.stop().await;
}

/// tshark over the capture with the proxy's and the upstream's ports decoded as SMTP.
fn smtp_lines(file: &std::path::Path, ports: &[u16], filter: &str) -> String {
    let mut args: Vec<String> = vec!["-r".into(), file.display().to_string()];
    for p in ports {
        args.push("-d".into());
        args.push(format!("tcp.port=={p},smtp"));
    }
    args.extend(["-Y".into(), filter.into(), "-T".into(), "fields".into()]);
    args.extend([
        "-e".into(),
        "smtp.req.command".into(),
        "-e".into(),
        "smtp.response.code".into(),
    ]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    common::tshark(&refs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_capture_holds_both_legs_and_the_decrypted_smtp_and_embedded_keys_decrypt_the_legs() {
    let dir = temp_dir("intercept-capture");
    let up = upstream(&dir, false, rustls::DEFAULT_VERSIONS).await;
    let (anchor, icfg) = proxy_ca(&dir);
    let file = dir.join("cap.pcapng");
    let keylog = dir.join("keys.log");
    let proxy = TestProxy::start(
        &up.server.addr().to_string(),
        &format!(
            "{icfg}embed_secrets = true\nkeylog = \"{}\"\n[tls]\nmozilla_roots = false\nca_files = [\"{}\"]\n[capture]\nenabled = true\npath = \"{}\"\n",
            keylog.display(),
            up.ca_file.display(),
            file.display()
        ),
    )
    .await;
    let report = lab::send(
        proxy.addr,
        &opts(verifying(&anchor, rustls::DEFAULT_VERSIONS), &body()),
    )
    .await;
    assert!(report.error.is_none(), "{report:?}");
    proxy.wait_summaries(1).await;
    let proxy_port = proxy.addr.port();
    proxy.stop().await;
    let ports = [proxy_port, up.server.addr().port()];

    // The key log: NSS lines for both legs, mode 0600.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&keylog).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let keys = std::fs::read_to_string(&keylog).unwrap();
    assert!(
        keys.lines()
            .filter(|l| l.starts_with("CLIENT_TRAFFIC_SECRET_0 "))
            .count()
            >= 2,
        "{keys}"
    );

    // The decrypted flow: the conversation inside TLS, as SMTP.
    let decrypted = smtp_lines(
        &file,
        &ports,
        "frame.interface_name == \"decrypted\" && smtp",
    );
    assert!(decrypted.contains("EHLO"), "{decrypted}");
    assert!(decrypted.contains("MAIL"), "{decrypted}");
    assert!(decrypted.contains("RCPT"), "{decrypted}");
    assert!(
        !decrypted.contains("STARTTLS"),
        "only the part inside TLS: {decrypted}"
    );
    // With the embedded secrets tshark decrypts each wire leg from the file alone.
    for leg in ["client-leg", "upstream-leg"] {
        let f = format!("frame.interface_name == \"{leg}\" && smtp.req.command == \"MAIL\"");
        let got = smtp_lines(&file, &ports, &f);
        assert!(got.contains("MAIL"), "{leg} not decrypted: {got:?}");
    }
    // Without them it does not: the keys did the work.
    let stripped = dir.join("stripped.pcapng");
    let st = std::process::Command::new("editcap")
        .arg("--discard-all-secrets")
        .arg(&file)
        .arg(&stripped)
        .status()
        .expect("editcap is needed (apt-get install wireshark-common)");
    assert!(st.success());
    for leg in ["client-leg", "upstream-leg"] {
        let f = format!("frame.interface_name == \"{leg}\" && smtp.req.command == \"MAIL\"");
        let got = smtp_lines(&stripped, &ports, &f);
        assert!(
            !got.contains("MAIL"),
            "{leg} decrypted without keys: {got:?}"
        );
    }
    // The decrypted flow needs no keys.
    let decrypted = smtp_lines(
        &stripped,
        &ports,
        "frame.interface_name == \"decrypted\" && smtp",
    );
    assert!(decrypted.contains("MAIL"), "{decrypted}");
}

/// A server that speaks only TLS 1.2 behind a TLS 1.3 client: each leg
/// negotiates its own version, the mail is delivered, and the diagnosis
/// compares the legs (`intercept.legs_differ`, info: the client offers 1.2
/// too, so without smtptap it would get 1.2 from this server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legs_with_different_versions_are_compared() {
    legs_differ(&[&rustls::version::TLS13, &rustls::version::TLS12], "info").await;
}

/// The same with a client that offers only TLS 1.3: smtptap makes the
/// session work, and the finding warns that without it the two would not
/// agree on a version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legs_that_would_not_agree_without_smtptap_are_a_warning() {
    legs_differ(&[&rustls::version::TLS13], "warning").await;
}

async fn legs_differ(client: &[&'static rustls::SupportedProtocolVersion], severity: &str) {
    let dir = temp_dir(&format!("intercept-legs-differ-{severity}"));
    let up = upstream(&dir, false, &[&rustls::version::TLS12]).await;
    let (anchor, proxy) =
        intercept_proxy(&dir, &up, "", "upstream_name = \"mx.example.test\"\n").await;
    let b = body();
    let report = lab::send(proxy.addr, &opts(verifying(&anchor, client), &b)).await;
    assert!(report.error.is_none(), "{report:?}");
    let evs = proxy.wait_summaries(1).await;
    assert_eq!(up.server.received().len(), 1);
    let version = |leg: &str| leg_events(&evs, "intercept.handshake", leg)[0]["version"].clone();
    assert_eq!(version("client_proxy"), "TLSv1.3");
    assert_eq!(version("proxy_server"), "TLSv1.2");
    let summary = &named(&evs, 1, "session.summary")[0];
    let f = summary["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "intercept.legs_differ")
        .unwrap_or_else(|| panic!("no intercept.legs_differ: {summary}"));
    assert_eq!(f["severity"], severity, "{f}");
    let evidence = f["evidence"].to_string();
    assert!(evidence.contains("client <-> smtptap: TLSv1.3"), "{f}");
    assert!(evidence.contains("smtptap <-> server: TLSv1.2"), "{f}");
    proxy.stop().await;
}

/// Client certificates on both legs: the upstream requires one (verified
/// against its client CA); smtptap presents the configured
/// `[intercept] client_cert` upstream, asks the client for one
/// (`request_client_cert`) and records what it sent: the client's chain,
/// encrypted on the wire in TLS 1.3, is analysed under `client_proxy`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_on_both_legs_are_presented_and_recorded() {
    let dir = temp_dir("intercept-client-certs");
    let client_ca = Ca::new("Client Test CA").unwrap();
    let ours = client_ca
        .issue(&LeafSpec::client(["smtptap.client.example.test"]))
        .unwrap();
    let theirs = client_ca
        .issue(&LeafSpec::client(["sender.client.example.test"]))
        .unwrap();
    std::fs::write(dir.join("client.crt"), ours.chain_pem()).unwrap();
    std::fs::write(dir.join("client.key"), ours.key_pem()).unwrap();
    // The upstream: TLS 1.3, requires a client certificate from the client CA.
    let up_ca = Ca::new("Upstream Test CA").unwrap();
    let leaf = up_ca.issue(&LeafSpec::server(["mx.example.test"])).unwrap();
    let mut client_roots = rustls::RootCertStore::empty();
    client_roots
        .add(rustls::pki_types::CertificateDer::from(
            client_ca.der().to_vec(),
        ))
        .unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(client_roots))
        .build()
        .unwrap();
    let tls = Arc::new(
        rustls::ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
            .with_client_cert_verifier(verifier)
            .with_single_cert(leaf.rustls_chain(), leaf.rustls_key())
            .unwrap(),
    );
    let server = LabServer::start(ServerProfile::new("mx.example.test", Some(tls)))
        .await
        .unwrap();
    let up_ca_file = dir.join("upstream-ca.pem");
    std::fs::write(&up_ca_file, up_ca.pem()).unwrap();
    let (anchor, icfg) = proxy_ca(&dir);
    let proxy = TestProxy::start(
        &server.addr().to_string(),
        &format!(
            "{icfg}upstream_name = \"mx.example.test\"\nclient_cert = \"{}\"\nclient_key = \"{}\"\n\
             request_client_cert = true\n[tls]\nmozilla_roots = false\nca_files = [\"{}\"]\n",
            dir.join("client.crt").display(),
            dir.join("client.key").display(),
            up_ca_file.display()
        ),
    )
    .await;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(anchor))
        .unwrap();
    let client_tls = Arc::new(
        rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
            .with_root_certificates(roots)
            .with_client_auth_cert(theirs.rustls_chain(), theirs.rustls_key())
            .unwrap(),
    );
    let b = body();
    let report = lab::send(proxy.addr, &opts(client_tls, &b)).await;
    assert!(report.error.is_none(), "{report:?}");
    let evs = proxy.wait_summaries(1).await;
    assert_eq!(server.received().len(), 1, "not delivered");
    let up = &leg_events(&evs, "intercept.handshake", "proxy_server")[0];
    assert_eq!(up["ok"], true, "{up}");
    assert_eq!(up["client_cert_requested"], true, "{up}");
    assert_eq!(up["client_cert_sent"], true, "{up}");
    let down = &leg_events(&evs, "intercept.handshake", "client_proxy")[0];
    assert_eq!(down["client_cert_requested"], true, "{down}");
    assert_eq!(down["client_cert_sent"], true, "{down}");
    // The client's certificate, analysed under its leg as the client's.
    let infos: Vec<_> = leg_events(&evs, "cert.info", "client_proxy")
        .into_iter()
        .filter(|c| c.to_string().contains("sender.client.example.test"))
        .collect();
    assert!(
        !infos.is_empty(),
        "the client's certificate was not analysed"
    );
    assert_eq!(infos[0]["source"], "handshake", "{}", infos[0]);
    proxy.stop().await;
}

/// SMTPS (TLS from the first byte) through intercept mode, with
/// `implicit_tls = true` configured or, without it, detected from the
/// client's first bytes: both legs terminated, the message delivered
/// byte-identical, the conversation inside TLS observed.
async fn implicit_session(configured: bool) {
    let dir = temp_dir(&format!("intercept-implicit-{configured}"));
    let up = upstream(&dir, true, rustls::DEFAULT_VERSIONS).await;
    let implicit = if configured {
        "implicit_tls = true\n"
    } else {
        ""
    };
    let (anchor, proxy) =
        intercept_proxy(&dir, &up, implicit, "upstream_name = \"mx.example.test\"\n").await;
    let b = body();
    let mut o = opts(verifying(&anchor, rustls::DEFAULT_VERSIONS), &b);
    o.starttls = StartTls::Implicit;
    let report = lab::send(proxy.addr, &o).await;
    assert!(report.error.is_none(), "{report:?}");
    assert!(report.tls, "{report:?}");
    let evs = proxy.wait_summaries(1).await;
    let got = up.server.received();
    assert_eq!(got.len(), 1, "nothing delivered: {report:?}");
    let mut sent = b.clone();
    sent.extend_from_slice(b"\r\n");
    assert!(
        got[0].data == b || got[0].data == sent,
        "the message arrived changed"
    );

    let decision = named(&evs, 1, "intercept.decision");
    assert_eq!(decision.len(), 1, "{decision:?}");
    assert_eq!(decision[0]["action"], "intercept", "{}", decision[0]);
    let reason = decision[0]["reason"].as_str().unwrap();
    assert_eq!(
        reason.contains("implicit TLS, detected"),
        !configured,
        "{reason}"
    );
    for leg in ["client_proxy", "proxy_server"] {
        let hs = leg_events(&evs, "intercept.handshake", leg);
        assert_eq!(hs.len(), 1, "{leg}: {hs:?}");
        assert_eq!(hs[0]["ok"], true, "{leg}: {hs:?}");
    }
    // One EHLO, inside TLS; the envelope and the message seen there.
    assert_eq!(named(&evs, 1, "smtp.ehlo").len(), 1);
    let msg = named(&evs, 1, "smtp.message");
    assert_eq!(msg.len(), 1, "{msg:?}");
    assert_eq!(msg[0]["accepted"], true);
    assert_eq!(msg[0]["rcpt_to"][0], "bob@mx.example.test", "{}", msg[0]);
    let summary = &named(&evs, 1, "session.summary")[0];
    // Implicit TLS is said as such, configured or detected, and the banner
    // is read inside TLS.
    let started = named(&evs, 1, "tls.started");
    let e2e: Vec<_> = started
        .iter()
        .filter(|v| v["leg"] == "end_to_end")
        .collect();
    assert_eq!(e2e.len(), 1, "{started:?}");
    let after = if configured {
        "implicit"
    } else {
        "implicit_detected"
    };
    assert_eq!(e2e[0]["after"], after, "{started:?}");
    assert_eq!(summary["implicit_tls"], true, "{summary}");
    assert_eq!(
        summary["banner"], "220 mx.example.test ESMTP lab server ready",
        "{summary}"
    );
    for f in summary["findings"].as_array().unwrap() {
        assert_ne!(f["severity"], "error", "{summary}");
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_tls_configured_is_intercepted_from_the_first_byte() {
    implicit_session(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_tls_detected_is_intercepted_from_the_first_byte() {
    implicit_session(false).await;
}

/// `[intercept] cert`/`key` with `cert_names`: a client asking for a listed
/// name gets the static certificate (it verifies against the organisation's
/// own CA, not the proxy's); a client asking for another name gets a leaf
/// minted by the proxy CA for that name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_certificate_is_presented_for_its_names_and_others_get_a_minted_leaf() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir("intercept-static");
    let up = upstream(&dir, false, rustls::DEFAULT_VERSIONS).await;
    let org = Ca::new("Organisation Test CA").unwrap();
    let real = org.issue(&LeafSpec::server(["mx.example.test"])).unwrap();
    let (crt, key) = (dir.join("mx.crt"), dir.join("mx.key"));
    std::fs::write(&crt, real.chain_pem()).unwrap();
    std::fs::write(&key, real.key_pem()).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (proxy_anchor, proxy) = intercept_proxy(
        &dir,
        &up,
        "",
        &format!(
            "cert = \"{}\"\nkey = \"{}\"\ncert_names = [\"mx.example.test\"]\n",
            crt.display(),
            key.display()
        ),
    )
    .await;
    // The listed name: only the organisation's CA is trusted, and it verifies.
    let org_anchor = org.der();
    let b = body();
    let r1 = lab::send(
        proxy.addr,
        &opts(verifying(&org_anchor, rustls::DEFAULT_VERSIONS), &b),
    )
    .await;
    assert!(r1.error.is_none(), "static certificate refused: {r1:?}");
    // Another name: only the proxy CA is trusted, and the minted leaf names it.
    let mut o2 = opts(verifying(&proxy_anchor, rustls::DEFAULT_VERSIONS), &b);
    o2.server_name = "relay.example.test".into();
    let r2 = lab::send(proxy.addr, &o2).await;
    assert!(r2.error.is_none(), "minted leaf refused: {r2:?}");
    let evs = proxy.wait_summaries(2).await;
    assert_eq!(up.server.received().len(), 2);
    let presented: Vec<String> = evs
        .iter()
        .filter(|e| e.name() == "intercept.handshake")
        .map(|e| serde_json::to_value(e).unwrap())
        .filter(|v| v["leg"] == "client_proxy")
        .map(|v| v["presented"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(presented.len(), 2, "{presented:?}");
    assert!(
        presented.iter().any(|p| p.contains("static certificate")),
        "{presented:?}"
    );
    assert!(
        presented
            .iter()
            .any(|p| !p.contains("static certificate") && p.contains("relay.example.test")),
        "{presented:?}"
    );
    proxy.stop().await;
}

/// A TLS client on a STARTTLS server through intercept mode, with the
/// ClientHello arriving before the server's greeting or after it: not taken
/// as SMTPS (the server greets in cleartext), relayed as in passthrough, and
/// diagnosed as the mismatch it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_on_a_starttls_server_is_relayed_and_diagnosed_as_a_mismatch() {
    let dir = temp_dir("intercept-implicit-mismatch");
    let up = upstream(&dir, false, rustls::DEFAULT_VERSIONS).await;
    let (anchor, proxy) =
        intercept_proxy(&dir, &up, "", "upstream_name = \"mx.example.test\"\n").await;
    let mut o = opts(verifying(&anchor, rustls::DEFAULT_VERSIONS), &body());
    o.starttls = StartTls::Implicit;
    let report = lab::send(proxy.addr, &o).await;
    assert!(report.error.is_some(), "{report:?}");
    let evs = proxy.wait_summaries(1).await;
    assert!(up.server.received().is_empty());
    assert!(named(&evs, 1, "intercept.decision").is_empty());
    let summary = &named(&evs, 1, "session.summary")[0];
    assert_eq!(summary["implicit_tls"], false, "{summary}");
    assert!(
        summary["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["id"] == "smtp.implicit_tls_mismatch"),
        "{summary}"
    );
    proxy.stop().await;
}

/// Writes `bytes` one at a time, `every` apart, until the proxy closes the
/// connection; panics if it has not after `limit`. `greeting`: read a line
/// first (the banner).
async fn trickle_until_closed(
    addr: std::net::SocketAddr,
    greeting: bool,
    bytes: &[u8],
    every: std::time::Duration,
    limit: std::time::Duration,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut b = [0u8; 512];
    if greeting {
        let n = s.read(&mut b).await.unwrap();
        assert!(
            b[..n].starts_with(b"220"),
            "{:?}",
            String::from_utf8_lossy(&b[..n])
        );
    }
    let started = std::time::Instant::now();
    for byte in bytes.iter().cycle() {
        assert!(
            started.elapsed() < limit,
            "the trickling client was not closed within {limit:?}"
        );
        if s.write_all(&[*byte]).await.is_err() {
            return;
        }
        match tokio::time::timeout(every, s.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            _ => {}
        }
    }
}

/// An intercepting proxy with these `[limits]` in front of a STARTTLS (or,
/// `implicit`, an SMTPS) upstream; keep the upstream as long as the proxy.
async fn deadline_proxy(name: &str, implicit: bool, limits: &str) -> (TestProxy, Upstream) {
    let dir = temp_dir(name);
    let up = upstream(&dir, implicit, rustls::DEFAULT_VERSIONS).await;
    let top = if implicit {
        "implicit_tls = true\n"
    } else {
        ""
    };
    let icept = format!("upstream_name = \"mx.example.test\"\n[limits]\n{limits}");
    (intercept_proxy(&dir, &up, top, &icept).await.1, up)
}

/// Waits for the one session's end and checks the deadline that closed it.
async fn closed_by(proxy: TestProxy, reason: &str) {
    let evs = proxy.wait_summaries(1).await;
    let close = named(&evs, 1, "session.close");
    assert_eq!(close[0]["reason"], reason, "{}", close[0]);
    let summary = &named(&evs, 1, "session.summary")[0];
    assert_eq!(summary["close_reason"], reason, "{summary}");
    proxy.stop().await;
}

/// Before STARTTLS, intercept mode relays the cleartext phase itself: the
/// line deadline holds there as in the ordinary relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trickling_a_command_before_starttls_is_closed_by_the_line_deadline() {
    let (proxy, _up) = deadline_proxy(
        "intercept-trickle-line",
        false,
        "line_timeout_secs = 1\nidle_timeout_secs = 600\n",
    )
    .await;
    trickle_until_closed(
        proxy.addr,
        true,
        b"EHLO slow.example.test",
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(30),
    )
    .await;
    closed_by(proxy, "line_timeout").await;
}

/// A client that sends its ClientHello a byte at a time (SMTPS, configured)
/// keeps the idle deadline away and has no lines: the session deadline ends
/// it, counted from the session's start, before any handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_client_hello_is_closed_by_the_session_deadline() {
    let (proxy, _up) = deadline_proxy(
        "intercept-trickle-hello",
        true,
        "session_timeout_secs = 2\nline_timeout_secs = 1\nidle_timeout_secs = 600\n",
    )
    .await;
    // A handshake record header announcing a 16 KiB ClientHello, then
    // bytes of it, slowly.
    let mut hello = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0x3f, 0xfc];
    hello.extend(std::iter::repeat_n(0x41, 200));
    trickle_until_closed(
        proxy.addr,
        false,
        &hello,
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(30),
    )
    .await;
    closed_by(proxy, "session_timeout").await;
}

/// A client that goes silent before STARTTLS is closed by the idle
/// deadline, which `run`'s guard enforces before the relay takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_silent_before_starttls_is_closed_by_the_idle_deadline() {
    use tokio::io::AsyncReadExt;
    let (proxy, _up) = deadline_proxy("intercept-idle", false, "idle_timeout_secs = 1\n").await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let mut rest = Vec::new();
    let r =
        tokio::time::timeout(std::time::Duration::from_secs(30), s.read_to_end(&mut rest)).await;
    assert!(r.is_ok(), "the silent client was not closed within 30 s");
    assert!(
        rest.starts_with(b"220"),
        "{:?}",
        String::from_utf8_lossy(&rest)
    );
    closed_by(proxy, "idle_timeout").await;
}
