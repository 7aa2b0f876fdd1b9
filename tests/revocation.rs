//! Revocation, for real: a CA publishes a CRL revoking a server's certificate,
//! given to smtptap as a file (`tls.crl_files`) or fetched from the
//! certificate's own CRL distribution point over HTTP on loopback
//! (`tls.check_revocation`).

mod common;

use std::net::SocketAddr;

use common::{named, temp_dir, TestProxy};
use smtptap::cert::mint::{Ca, Issued, LeafSpec};
use smtptap::lab::{self, ClientOptions, LabServer, ServerProfile, StartTls};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NAME: &str = "mx.revocation.example.test";

fn leaf(ca: &Ca, crl_url: &str) -> Issued {
    ca.issue(&LeafSpec {
        crl_urls: vec![crl_url.into()],
        ..LeafSpec::server([NAME.to_string()])
    })
    .unwrap()
}

fn serial_of(issued: &Issued) -> String {
    smtptap::cert::parse_cert(&issued.chain_der[0])
        .unwrap()
        .serial
}

/// Serves `body` over HTTP/1.0 to every request on `l`.
fn serve_http(l: tokio::net::TcpListener, body: Vec<u8>) {
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut req = vec![0u8; 4096];
                let _ = s.read(&mut req).await;
                let head = format!(
                    "HTTP/1.0 200 OK\r\nContent-Type: application/pkix-crl\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&body).await;
                let _ = s.shutdown().await;
            });
        }
    });
}

/// Serves `body` over HTTP/1.0 on a fresh loopback port.
async fn http_server(body: Vec<u8>) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    serve_http(l, body);
    addr
}

async fn session_through(issued: &Issued, extra: &str) -> Vec<smtptap::event::Event> {
    session_with(issued, extra, b"Subject: r\r\n\r\nhi\r\n")
        .await
        .0
}

/// One STARTTLS (TLS 1.2) session sending `body` through a fresh proxy in
/// front of a lab server presenting `issued`: the proxy's events and what
/// the server received.
async fn session_with(
    issued: &Issued,
    extra: &str,
    body: &[u8],
) -> (Vec<smtptap::event::Event>, Vec<lab::Received>) {
    let tls = lab::server_config(issued.chain_der.clone(), issued.key_der.clone()).unwrap();
    let server = LabServer::start(ServerProfile::new(NAME, Some(tls)))
        .await
        .unwrap();
    let proxy = TestProxy::start(&server.addr().to_string(), extra).await;
    let opts = ClientOptions {
        ehlo: "client.revocation.example.test".into(),
        starttls: StartTls::Required,
        tls: Some(lab::client_config_opportunistic_with(&[
            &rustls::version::TLS12,
        ])),
        server_name: NAME.into(),
        from: "a@example.test".into(),
        to: vec!["b@example.test".into()],
        body: body.to_vec(),
        helo: false,
    };
    let r = lab::send(proxy.addr, &opts).await;
    assert_eq!(r.error, None);
    proxy.wait_summaries(1).await;
    (proxy.stop().await, server.received())
}

/// Writes `ca` into `dir` and returns the `[tls]` config trusting it, with
/// `check_revocation` on.
fn fetching_config(dir: &std::path::Path, ca: &Ca) -> String {
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    format!(
        "[tls]\nca_files = [\"{}/ca.pem\"]\ncheck_revocation = true\n",
        dir.display()
    )
}

fn finding_ids(events: &[smtptap::event::Event]) -> Vec<String> {
    named(events, 1, "session.summary")[0]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_file_marks_a_revoked_server_certificate() {
    let dir = temp_dir("crl-file");
    let ca = Ca::new("revocation test CA").unwrap();
    let revoked = leaf(&ca, "http://crl.invalid/ca.crl");
    let good = leaf(&ca, "http://crl.invalid/ca.crl");
    let crl = ca.crl(&[&serial_of(&revoked)]).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("ca.crl"), &crl).unwrap();
    let extra = format!(
        "[tls]\nca_files = [\"{0}/ca.pem\"]\ncrl_files = [\"{0}/ca.crl\"]\n",
        dir.display()
    );

    let events = session_through(&revoked, &extra).await;
    let chain = named(&events, 1, "cert.chain");
    assert_eq!(chain[0]["trusted"], false);
    assert_eq!(chain[0]["error"], "revoked");
    let ids = finding_ids(&events);
    assert_eq!(ids, vec!["cert.revoked".to_string()], "{ids:?}");

    let events = session_through(&good, &extra).await;
    assert_eq!(named(&events, 1, "cert.chain")[0]["trusted"], true);
    assert!(finding_ids(&events).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_revocation_fetches_the_crl_the_certificate_names() {
    let dir = temp_dir("crl-fetch");
    let ca = Ca::new("revocation fetch CA").unwrap();
    // The leaf must name the CRL's URL, and the CRL must name the leaf's
    // serial: pick a free port first, mint, then serve the CRL on that port.
    let probe_server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = probe_server.local_addr().unwrap().port();
    drop(probe_server);
    let url = format!("http://127.0.0.1:{port}/issuing.crl");
    let revoked = leaf(&ca, &url);
    let crl = ca.crl(&[&serial_of(&revoked)]).unwrap();
    // Serve the CRL on that very port.
    let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    serve_http(l, crl);
    let extra = fetching_config(&dir, &ca);
    let events = session_through(&revoked, &extra).await;
    let crl_ev = named(&events, 1, "cert.crl");
    assert_eq!(crl_ev.len(), 1, "{crl_ev:?}");
    assert_eq!(crl_ev[0]["url"], url.as_str());
    assert_eq!(crl_ev[0]["ok"], true, "{}", crl_ev[0]);
    assert_eq!(named(&events, 1, "cert.chain")[0]["error"], "revoked");
    assert_eq!(finding_ids(&events), vec!["cert.revoked".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_crl_is_reported() {
    let dir = temp_dir("crl-unreachable");
    let ca = Ca::new("revocation unreachable CA").unwrap();
    let port = common::closed_port();
    let url = format!("http://127.0.0.1:{port}/gone.crl");
    let issued = leaf(&ca, &url);
    let extra = fetching_config(&dir, &ca);
    let events = session_through(&issued, &extra).await;
    let crl_ev = named(&events, 1, "cert.crl");
    assert_eq!(crl_ev[0]["ok"], false);
    assert_eq!(crl_ev[0]["error"], "refused", "{}", crl_ev[0]);
    assert!(
        crl_ev[0]["detail"].as_str().unwrap().contains("refused"),
        "{}",
        crl_ev[0]
    );
    // Still trusted (no CRL, unknown status allowed), but the warning says why it matters.
    assert_eq!(named(&events, 1, "cert.chain")[0]["trusted"], true);
    assert_eq!(
        finding_ids(&events),
        vec!["cert.crl_unavailable".to_string()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_crl_response_is_an_error_not_a_pass() {
    let dir = temp_dir("crl-garbage");
    let ca = Ca::new("revocation garbage CA").unwrap();
    let addr = http_server(b"<html>not a crl</html>".to_vec()).await;
    let url = format!("http://{addr}/ca.crl");
    let issued = leaf(&ca, &url);
    let extra = fetching_config(&dir, &ca);
    let events = session_through(&issued, &extra).await;
    let crl_ev = named(&events, 1, "cert.crl");
    assert_eq!(crl_ev[0]["ok"], false);
    assert_eq!(crl_ev[0]["error"], "not_a_crl", "{}", crl_ev[0]);
    assert!(
        crl_ev[0]["detail"].as_str().unwrap().contains("not a CRL"),
        "{}",
        crl_ev[0]
    );
}

#[test]
fn a_bad_crl_file_is_a_clear_config_error() {
    let dir = temp_dir("crl-bad");
    let f = dir.join("bad.crl");
    std::fs::write(&f, "garbage").unwrap();
    let cfg = smtptap::config::RawConfig::from_toml(
        &format!(
            "listen=[\"127.0.0.1:0\"]\nupstream=\"127.0.0.1:25\"\n[tls]\ncrl_files=[\"{}\"]\n",
            f.display()
        ),
        "t.toml",
    )
    .unwrap()
    .resolve("t.toml")
    .unwrap();
    let err = smtptap::session::Analysis::from_config(&cfg, "rtest".into()).unwrap_err();
    assert!(err.contains("bad.crl") && err.contains("no CRL"), "{err}");
}

/// A certificate naming three CRL servers that never answer: each fetch
/// gives up after 5 s and the chain's 10 s budget leaves the third one
/// unfetched, so the session's analysis (and its slot) is held for a bounded
/// time. The mail itself went through at once (the relay never waits).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_crl_servers_are_bounded_by_the_chain_budget() {
    let dir = temp_dir("crl-budget");
    let ca = Ca::new("revocation budget CA").unwrap();
    let mut urls = Vec::new();
    for i in 0..3 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        urls.push(format!("http://{}/silent-{i}.crl", l.local_addr().unwrap()));
        // Accepts, reads the request, never answers.
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut s, _)) = l.accept().await {
                let mut req = vec![0u8; 4096];
                let _ = s.read(&mut req).await;
                held.push(s);
            }
        });
    }
    let issued = ca
        .issue(&LeafSpec {
            crl_urls: urls.clone(),
            ..LeafSpec::server([NAME.to_string()])
        })
        .unwrap();
    let extra = fetching_config(&dir, &ca);
    let events = session_through(&issued, &extra).await;
    let crl_ev = named(&events, 1, "cert.crl");
    assert_eq!(crl_ev.len(), 3, "{crl_ev:#?}");
    for (ev, url) in crl_ev.iter().zip(&urls) {
        assert_eq!(ev["url"], url.as_str());
        assert_eq!(ev["ok"], false);
    }
    // The first fetch has its full 5 s; the second what is left of the 10 s.
    let codes: Vec<_> = crl_ev.iter().map(|e| e["error"].clone()).collect();
    assert_eq!(codes, ["timeout", "timeout", "budget"], "{crl_ev:#?}");
    let e = crl_ev[0]["detail"].as_str().unwrap();
    assert!(e.starts_with("timed out after 5.0s"), "{e}");
    let e = crl_ev[1]["detail"].as_str().unwrap();
    assert!(e.starts_with("timed out after "), "{e}");
    let e = crl_ev[2]["detail"].as_str().unwrap();
    assert_eq!(e, "not fetched: this chain's CRL fetches already took 10 s");
    assert!(finding_ids(&events).contains(&"cert.crl_unavailable".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_crl_server_does_not_hold_the_analysis_up() {
    // The CRL fetch runs beside the session's analysis: while the CRL
    // server keeps it waiting (5 s, then a timeout), the analysis goes on
    // taking what the relay reads, so a large message over TLS right after
    // the handshake does not overflow even a small analysis queue.
    let dir = temp_dir("crl-silent");
    let ca = Ca::new("revocation silent CA").unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/silent.crl", l.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    let issued = leaf(&ca, &url);
    let extra = format!(
        "{}[limits]\nobserver_queue = 8\n",
        fetching_config(&dir, &ca)
    );
    let mut body = b"Subject: big\r\n\r\n".to_vec();
    for i in 0..80_000 {
        body.extend_from_slice(
            format!("line {i:08} of a large message body........\r\n").as_bytes(),
        );
    }
    let (events, got) = session_with(&issued, &extra, &body).await;
    assert_eq!(got.len(), 1);
    assert!(
        got[0].tls && got[0].data == body,
        "the message arrived altered"
    );
    assert!(
        named(&events, 1, "observer.lagged").is_empty(),
        "the analysis waited for the CRL: {:?}",
        named(&events, 1, "observer.lagged")
    );
    let crl_ev = named(&events, 1, "cert.crl");
    assert_eq!(crl_ev.len(), 1, "{crl_ev:#?}");
    assert_eq!(crl_ev[0]["error"], "timeout");
    let chain = named(&events, 1, "cert.chain");
    assert_eq!(chain.len(), 1);
    assert_eq!(chain[0]["trusted"], true, "{chain:#?}");
    assert!(finding_ids(&events).contains(&"cert.crl_unavailable".to_string()));
    let summary = &named(&events, 1, "session.summary")[0];
    assert_eq!(summary["observation"], "complete", "{summary}");
}
