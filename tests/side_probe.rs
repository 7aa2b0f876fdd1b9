//! The side-probe end to end: a passthrough proxy in front of an in-process
//! STARTTLS server (real sockets, rustls on both sides). With TLS 1.3 the
//! session itself shows no certificate; the proxy's own connection to the
//! same server reads it, and the certificate checks and findings apply,
//! marked as side-probe evidence.

mod common;

use std::sync::Arc;

use common::{named, temp_dir, TestProxy};
use smtptap::cert::mint::{Ca, Issued, LeafSpec};
use smtptap::event::Event;
use smtptap::lab::{self, ClientOptions, LabServer, ServerProfile, StartTls};

const MX: &str = "mx.example.test";

struct Pki {
    issued: Issued,
    ca_file: String,
}

fn pki(test: &str) -> Pki {
    let root = Ca::new(&format!("smtptap side-probe test CA ({test})")).unwrap();
    let dir = temp_dir(&format!("side-probe-{test}"));
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, root.pem()).unwrap();
    let issued = root.issue(&LeafSpec::server([MX])).unwrap();
    Pki {
        issued,
        ca_file: ca_file.display().to_string(),
    }
}

async fn server(p: &Pki, tls12_only: bool) -> LabServer {
    let tls = if tls12_only {
        let cfg = rustls::ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS12])
            .with_no_client_auth()
            .with_single_cert(p.issued.rustls_chain(), p.issued.rustls_key())
            .unwrap();
        Arc::new(cfg)
    } else {
        lab::server_config(p.issued.chain_der.clone(), p.issued.key_der.clone()).unwrap()
    };
    LabServer::start(ServerProfile::new(MX, Some(tls)))
        .await
        .unwrap()
}

fn client(sni: &str) -> ClientOptions {
    ClientOptions {
        ehlo: "client.example.test".into(),
        starttls: StartTls::Required,
        tls: Some(lab::client_config_opportunistic()),
        server_name: sni.into(),
        from: "a@example.test".into(),
        to: vec!["b@example.test".into()],
        body: b"Subject: side-probe\r\n\r\nhello\r\n".to_vec(),
        helo: false,
    }
}

fn config(p: &Pki, extra: &str) -> String {
    format!(
        "[tls]\nmozilla_roots = false\nca_files = [\"{}\"]\n{extra}\n",
        p.ca_file
    )
}

fn findings(evs: &[Event], session: u64) -> Vec<serde_json::Value> {
    let s = named(evs, session, "session.summary");
    assert_eq!(s.len(), 1, "one summary for session {session}");
    s[0]["findings"].as_array().unwrap().clone()
}

fn ids(f: &[serde_json::Value]) -> Vec<String> {
    f.iter()
        .map(|f| f["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls13_certificate_is_checked_by_a_side_probe_and_cached() {
    let p = pki("checked");
    let up = server(&p, false).await;
    let proxy = TestProxy::start(
        &up.addr().to_string(),
        &config(&p, "expect_names = [\"mx.partner.example\"]"),
    )
    .await;
    let r1 = lab::send(proxy.addr, &client(MX)).await;
    assert!(r1.error.is_none(), "{:?}", r1.error);
    assert!(r1.tls);
    proxy.wait_summaries(1).await;
    let r2 = lab::send(proxy.addr, &client(MX)).await;
    assert!(r2.error.is_none(), "{:?}", r2.error);
    let evs = proxy.stop().await;
    assert_eq!(up.received().len(), 2, "both messages delivered");

    // Session 1: the session's own TLS 1.3 hid the certificate ...
    assert_eq!(named(&evs, 1, "tls.certificate_hidden").len(), 1);
    // ... the side-probe read it on its own connection, with the client's SNI.
    let sp = named(&evs, 1, "tls.side_probe");
    assert_eq!(sp.len(), 1, "{sp:?}");
    assert_eq!(sp[0]["ok"], true, "{sp:?}");
    assert_eq!(sp[0]["cached"], false);
    assert_eq!(sp[0]["sni"], MX);
    assert_eq!(sp[0]["version"], "TLSv1.3");
    assert_eq!(sp[0]["chain_len"], 1);
    assert_eq!(sp[0]["server_port"], up.addr().port());
    // The chain's events are the usual ones, marked as side-probe evidence.
    let info = named(&evs, 1, "cert.info");
    assert_eq!(info.len(), 1);
    assert_eq!(info[0]["source"], "side_probe");
    assert_eq!(info[0]["cn"], MX);
    let chain = named(&evs, 1, "cert.chain");
    assert_eq!(chain[0]["trusted"], true, "{chain:?}");
    assert_eq!(chain[0]["source"], "side_probe");
    // The expected-name check ran: the certificate carries the wrong name,
    // and the finding says where the evidence came from.
    let f = findings(&evs, 1);
    let ids1 = ids(&f);
    assert!(ids1.contains(&"cert.name_mismatch".into()), "{ids1:?}");
    assert!(!ids1.contains(&"cert.not_checked".into()), "{ids1:?}");
    assert!(!ids1.contains(&"tls.certificate_hidden".into()), "{ids1:?}");
    let mismatch = f.iter().find(|f| f["id"] == "cert.name_mismatch").unwrap();
    let evidence = mismatch["evidence"].to_string();
    assert!(evidence.contains("side-probe"), "{evidence}");
    assert!(evidence.contains("mx.partner.example"), "{evidence}");

    // Session 2: the same server and SNI within the cache time: no new probe.
    let sp2 = named(&evs, 2, "tls.side_probe");
    assert_eq!(sp2.len(), 1);
    assert_eq!(sp2[0]["ok"], true);
    assert_eq!(sp2[0]["cached"], true, "{sp2:?}");
    assert!(ids(&findings(&evs, 2)).contains(&"cert.name_mismatch".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_side_probe_the_unchecked_certificate_is_said() {
    let p = pki("off");
    let up = server(&p, false).await;
    let proxy = TestProxy::start(
        &up.addr().to_string(),
        &config(
            &p,
            "expect_names = [\"mx.partner.example\"]\nside_probe = false",
        ),
    )
    .await;
    let r = lab::send(proxy.addr, &client(MX)).await;
    assert!(r.error.is_none(), "{:?}", r.error);
    let evs = proxy.stop().await;
    assert!(named(&evs, 1, "tls.side_probe").is_empty());
    assert!(named(&evs, 1, "cert.info").is_empty());
    let f = findings(&evs, 1);
    let nc = f
        .iter()
        .find(|f| f["id"] == "cert.not_checked")
        .expect("cert.not_checked");
    assert!(nc["evidence"].to_string().contains("mx.partner.example"));
    assert!(nc["advice"].as_str().unwrap().contains("side_probe"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_side_probe_is_reported_and_mail_flows() {
    let p = pki("rate");
    let up = server(&p, false).await;
    let proxy = TestProxy::start(
        &up.addr().to_string(),
        &config(&p, "side_probe_per_minute = 1"),
    )
    .await;
    // Two SNIs: two cache keys, and only one probe a minute.
    let r1 = lab::send(proxy.addr, &client(MX)).await;
    assert!(r1.error.is_none(), "{:?}", r1.error);
    proxy.wait_summaries(1).await;
    let r2 = lab::send(proxy.addr, &client("other.example.test")).await;
    assert!(r2.error.is_none(), "{:?}", r2.error);
    let evs = proxy.stop().await;
    assert_eq!(up.received().len(), 2);
    assert_eq!(named(&evs, 1, "tls.side_probe")[0]["ok"], true);
    let sp2 = named(&evs, 2, "tls.side_probe");
    assert_eq!(sp2.len(), 1);
    assert_eq!(sp2[0]["ok"], false, "{sp2:?}");
    assert_eq!(sp2[0]["error"], "rate_limited");
    assert_eq!(sp2[0]["sni"], "other.example.test");
    let f = findings(&evs, 2);
    let nc = f
        .iter()
        .find(|f| f["id"] == "cert.not_checked")
        .expect("cert.not_checked when the side-probe failed");
    assert!(
        nc["evidence"]
            .to_string()
            .contains("side-probe got no certificate"),
        "{nc}"
    );
    // A failed side-probe is a fact, not an error of the session.
    let summary = &named(&evs, 2, "session.summary")[0];
    assert_eq!(summary["close_reason"], "completed", "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_sessions_need_no_side_probe() {
    let p = pki("tls12");
    let up = server(&p, true).await;
    let proxy = TestProxy::start(&up.addr().to_string(), &config(&p, "")).await;
    let r = lab::send(proxy.addr, &client(MX)).await;
    assert!(r.error.is_none(), "{:?}", r.error);
    let evs = proxy.stop().await;
    assert!(named(&evs, 1, "tls.side_probe").is_empty());
    let info = named(&evs, 1, "cert.info");
    assert_eq!(info.len(), 1);
    assert!(
        info[0].get("source").is_none(),
        "wire evidence has no source"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_says_why_it_got_no_certificate() {
    use smtptap::proxy::side_probe::{probe, Target};
    let p = pki("refuse");
    let tls = lab::server_config(p.issued.chain_der.clone(), p.issued.key_der.clone()).unwrap();
    let target = |addr| Target {
        addr,
        sni: Some(MX.into()),
        ehlo: None,
        implicit_tls: false,
    };
    // STARTTLS offered, then answered 454.
    let mut refusing = ServerProfile::new(MX, Some(tls.clone()));
    refusing.refuse_starttls = true;
    let refusing = LabServer::start(refusing).await.unwrap();
    let err = probe(&target(refusing.addr())).await.unwrap_err();
    assert_eq!(err.code, "starttls_refused", "{err:?}");
    assert!(err.detail.contains("454"), "{err:?}");
    // STARTTLS not offered at all.
    let mut plain = ServerProfile::new(MX, Some(tls));
    plain.offer_starttls = false;
    let plain = LabServer::start(plain).await.unwrap();
    let err = probe(&target(plain.addr())).await.unwrap_err();
    assert_eq!(err.code, "no_starttls", "{err:?}");
    // Nobody listening.
    let closed = format!("127.0.0.1:{}", common::closed_port())
        .parse()
        .unwrap();
    let err = probe(&target(closed)).await.unwrap_err();
    assert_eq!(err.code, "refused", "{err:?}");
    // A healthy server: the chain, version and suite.
    let ok = server(&p, false).await;
    let got = probe(&target(ok.addr())).await.unwrap();
    assert_eq!(got.version, "TLSv1.3");
    assert!(got.cipher.starts_with("TLS_"), "{}", got.cipher);
    assert_eq!(got.chain, p.issued.chain_der);
}
