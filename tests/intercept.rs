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

fn verifying(anchor: &[u8], versions: &[&'static rustls::SupportedProtocolVersion]) -> Arc<rustls::ClientConfig> {
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

fn leg_events<'a>(evs: &'a [Event], name: &str, leg: &str) -> Vec<serde_json::Value> {
    named(evs, 1, name)
        .into_iter()
        .filter(|v| v["leg"] == leg)
        .collect()
}

async fn intercepted_session(versions: &[&'static rustls::SupportedProtocolVersion], want: &str) {
    let dir = temp_dir(&format!("intercept-{want}"));
    let up = upstream(&dir, false, versions).await;
    let (anchor, icfg) = proxy_ca(&dir);
    let proxy = TestProxy::start(
        &up.server.addr().to_string(),
        &format!(
            "{icfg}upstream_name = \"mx.example.test\"\n[tls]\nmozilla_roots = false\nca_files = [\"{}\"]\n",
            up.ca_file.display()
        ),
    )
    .await;
    let b = body();
    // The client trusts only the proxy CA and checks the name.
    let report = lab::send(proxy.addr, &opts(verifying(&anchor, versions), &b)).await;
    assert!(report.error.is_none(), "{report:?}");
    assert!(report.tls, "{report:?}");
    assert!(
        report.data_reply.as_deref().unwrap_or("").starts_with("250"),
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
