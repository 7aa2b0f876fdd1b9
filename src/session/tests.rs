//! Tests of the session core with no runtime: byte fixtures of a whole
//! STARTTLS session (cleartext SMTP, then a real rustls handshake made in
//! memory) fed at every split point, event-time memory, legs, and CRL
//! requests.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

use super::*;
use crate::cert::{CertEvent, TrustStore};
use crate::config::RawConfig;
use crate::event::{Event, EventKind, Leg, RunId, SessionEvent, Side, Timestamp};
use crate::smtp::SmtpEvent;
use crate::tls::TlsEvent;

type Transcript = Vec<(Side, Vec<u8>)>;

fn at(secs: u64) -> Timestamp {
    Timestamp(UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs))
}

struct Pki {
    ca: CertificateDer<'static>,
    leaf: CertificateDer<'static>,
    leaf_key: Vec<u8>,
}

fn pki(names: &[&str], crl_url: Option<&str>) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "smtptap core test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let mut lp =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    if let Some(u) = crl_url {
        lp.crl_distribution_points = vec![rcgen::CrlDistributionPoint {
            uris: vec![u.to_string()],
        }];
    }
    let leaf = lp.signed_by(&leaf_key, &ca, &ca_key).unwrap();
    Pki {
        ca: ca.der().clone(),
        leaf: leaf.der().clone(),
        leaf_key: leaf_key.serialize_der(),
    }
}

/// The cleartext part of a STARTTLS session, as a server and client send it.
fn cleartext() -> Transcript {
    let s = |t: &str| (Side::Server, t.as_bytes().to_vec());
    let c = |t: &str| (Side::Client, t.as_bytes().to_vec());
    vec![
        s("220 mx.example ESMTP\r\n"),
        c("EHLO client.example\r\n"),
        s("250-mx.example\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 8BITMIME\r\n"),
        c("STARTTLS\r\n"),
        s("220 2.0.0 Ready to start TLS\r\n"),
    ]
}

/// A rustls handshake in memory (`tls12`: TLS 1.2 only, else 1.3), then
/// EHLO and its reply inside TLS: every chunk written, in relay order.
fn tls(p: &Pki, tls12: bool) -> Transcript {
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12 {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(p.leaf_key.clone()));
    let scfg = ServerConfig::builder_with_provider(crate::crypto::shared())
        .with_protocol_versions(versions)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![p.leaf.clone(), p.ca.clone()], key)
        .unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(p.ca.clone()).unwrap();
    let ccfg = ClientConfig::builder_with_provider(crate::crypto::shared())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut c = ClientConnection::new(Arc::new(ccfg), "mx.example".try_into().unwrap()).unwrap();
    let mut s = ServerConnection::new(Arc::new(scfg)).unwrap();
    let mut t = Transcript::new();
    pump(&mut c, &mut s, &mut t);
    c.writer().write_all(b"EHLO client.example\r\n").unwrap();
    pump(&mut c, &mut s, &mut t);
    let mut buf = [0u8; 64];
    let n = s.reader().read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"EHLO client.example\r\n");
    s.writer().write_all(b"250 mx.example\r\n").unwrap();
    pump(&mut c, &mut s, &mut t);
    t
}

fn pump(c: &mut ClientConnection, s: &mut ServerConnection, t: &mut Transcript) {
    loop {
        let mut moved = false;
        while c.wants_write() {
            let mut buf = Vec::new();
            c.write_tls(&mut buf).unwrap();
            moved = true;
            let mut rd = &buf[..];
            while !rd.is_empty() && s.read_tls(&mut rd).is_ok() {}
            s.process_new_packets().unwrap();
            t.push((Side::Client, buf));
        }
        while s.wants_write() {
            let mut buf = Vec::new();
            s.write_tls(&mut buf).unwrap();
            moved = true;
            let mut rd = &buf[..];
            while !rd.is_empty() && c.read_tls(&mut rd).is_ok() {}
            c.process_new_packets().unwrap();
            t.push((Side::Server, buf));
        }
        if !moved {
            return;
        }
    }
}

fn config(extra: &str) -> crate::config::ProxyConfig {
    let text = format!("listen = [\"127.0.0.1:2525\"]\nupstream = \"mx.example:25\"\n{extra}");
    RawConfig::from_toml(&text, "test.toml")
        .unwrap()
        .resolve("test.toml")
        .unwrap()
}

fn shared(p: &Pki, extra: &str) -> Arc<Analysis> {
    let mut a = Analysis::bare(RunId::from("rtest"), config(extra));
    a.trust = Some(TrustStore::from_ders(&[p.ca.to_vec()]).unwrap());
    Arc::new(a)
}

fn info(id: u64, opened: Timestamp) -> SessionInfo {
    SessionInfo {
        id,
        client: "192.0.2.7:40000".parse().unwrap(),
        listener: "127.0.0.1:2525".parse().unwrap(),
        upstream: crate::config::Upstream {
            host: "mx.example".into(),
            port: 25,
        },
        opened,
        implicit_tls: false,
    }
}

/// Feeds a whole session (`chunks` with their times) and closes it; returns
/// every event as a JSON line.
fn run(shared: &Arc<Analysis>, id: u64, chunks: &[(Timestamp, Side, Vec<u8>)]) -> Vec<String> {
    let t0 = chunks.first().map(|c| c.0).unwrap_or(at(0));
    let mut a = SessionAnalyzer::new(info(id, t0), shared.clone());
    a.upstream_connected(
        t0,
        "192.0.2.25:25".parse().unwrap(),
        "192.0.2.10:51514".parse().unwrap(),
        0.001,
    );
    let mut out: Vec<Event> = a.take_events();
    let mut asked = Vec::new();
    for (ts, side, b) in chunks {
        a.bytes(Leg::EndToEnd, *side, *ts, b);
        for r in a.take_requests() {
            // Only a side-probe (TLS 1.3 hid the certificate) is asked for here.
            assert!(matches!(r, Request::SideProbe { .. }), "{r:?}");
            asked.push(format!("{r:?}"));
        }
        out.extend(a.take_events());
    }
    let end = chunks.last().map(|c| c.0).unwrap_or(t0);
    let ends = Ends {
        client_end: DirEnd::Fin,
        server_end: DirEnd::Fin,
        client_bytes: 0,
        server_bytes: 0,
    };
    a.close(end, ends, None);
    out.extend(a.take_events());
    out.iter()
        .map(|e| serde_json::to_string(e).unwrap())
        .chain(asked)
        .collect()
}

fn session(p: &Pki, tls12: bool) -> Vec<(Timestamp, Side, Vec<u8>)> {
    cleartext()
        .into_iter()
        .chain(tls(p, tls12))
        .enumerate()
        .map(|(i, (side, b))| (at(i as u64), side, b))
        .collect()
}

fn names_of(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.starts_with('{'))
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["event"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// Every chunk split at every point (each split is one run of the whole
/// session) gives the same events as the whole chunks.
fn assert_split_invariant(shared: &Arc<Analysis>, chunks: &[(Timestamp, Side, Vec<u8>)]) {
    let whole = run(shared, 1, chunks);
    for i in 0..chunks.len() {
        for k in 1..chunks[i].2.len() {
            let mut split = chunks.to_vec();
            let (ts, side, b) = split.remove(i);
            split.insert(i, (ts, side, b[k..].to_vec()));
            split.insert(i, (ts, side, b[..k].to_vec()));
            assert_eq!(run(shared, 1, &split), whole, "chunk {i} split at {k}");
        }
    }
    // And one byte at a time throughout.
    let bytes: Vec<_> = chunks
        .iter()
        .flat_map(|(ts, side, b)| b.iter().map(move |x| (*ts, *side, vec![*x])))
        .collect();
    assert_eq!(run(shared, 1, &bytes), whole, "one byte at a time");
}

#[test]
fn starttls_tls12_session_is_the_same_at_every_split_point() {
    let p = pki(&["mx.example"], None);
    let sh = shared(&p, "");
    let chunks = session(&p, true);
    let lines = run(&sh, 1, &chunks);
    let names = names_of(&lines);
    for n in [
        "session.open",
        "upstream.connected",
        "smtp.banner",
        "smtp.capabilities",
        "smtp.starttls",
        "tls.started",
        "tls.client_hello",
        "tls.server_hello",
        "tls.certificate",
        "cert.info",
        "cert.chain",
        "cert.names",
        "tls.established",
        "session.close",
        "session.summary",
    ] {
        assert!(names.contains(&n.to_string()), "{n} missing from {names:?}");
    }
    let chain = lines.iter().find(|l| l.contains("\"cert.chain\"")).unwrap();
    assert!(chain.contains("\"trusted\":true"), "{chain}");
    assert!(chain.contains("\"leg\":\"end_to_end\""), "{chain}");
    assert!(chain.contains("\"run\":\"rtest\""), "{chain}");
    let summary = lines.last().unwrap();
    assert!(summary.contains("\"tls_version\":\"TLSv1.2\""), "{summary}");
    // A clean session: nothing worse than information.
    let v: serde_json::Value = serde_json::from_str(summary).unwrap();
    for f in v["findings"].as_array().unwrap() {
        assert_eq!(f["severity"], "info", "{summary}");
    }
    assert_split_invariant(&sh, &chunks);
}

#[test]
fn starttls_tls13_session_is_the_same_at_every_split_point() {
    let p = pki(&["mx.example"], None);
    let sh = shared(&p, "");
    let chunks = session(&p, false);
    let lines = run(&sh, 1, &chunks);
    let names = names_of(&lines);
    assert!(
        names.contains(&"tls.certificate_hidden".to_string()),
        "{names:?}"
    );
    assert!(!names.contains(&"cert.chain".to_string()), "{names:?}");
    assert!(names.contains(&"tls.established".to_string()), "{names:?}");
    assert_split_invariant(&sh, &chunks);
}

#[test]
fn the_core_stamps_run_session_and_leg_and_keeps_smtp_events_off_legs() {
    let p = pki(&["mx.example"], None);
    let sh = shared(&p, "");
    let lines = run(&sh, 42, &session(&p, true));
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["run"], "rtest", "{l}");
        assert_eq!(v["session"], 42, "{l}");
        let ev = v["event"].as_str().unwrap();
        let on_leg = ev.starts_with("tls.") || ev.starts_with("cert.");
        assert_eq!(v.get("leg").is_some(), on_leg, "{l}");
    }
}

/// Prior-failure memory follows event time: a cleartext retry a minute after
/// a failed handshake is linked to it; one a day later is not.
#[test]
fn prior_failure_memory_follows_event_time() {
    let p = pki(&["mx.example"], None);
    let sh = shared(&p, "");
    // A client that sends a ClientHello the server answers with a fatal alert.
    let mut failing = cleartext();
    let hello = tls(&p, true).into_iter().next().unwrap();
    failing.push(hello);
    failing.push((Side::Server, vec![0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28]));
    let timed = |t0: u64, tr: Transcript| -> Vec<(Timestamp, Side, Vec<u8>)> {
        tr.into_iter()
            .enumerate()
            .map(|(i, (s, b))| (at(t0 + i as u64), s, b))
            .collect()
    };
    let first = run(&sh, 1, &timed(0, failing.clone()));
    assert!(
        first.last().unwrap().contains("tls.handshake_failed"),
        "{first:?}"
    );
    let plain = vec![
        (Side::Server, b"220 mx.example ESMTP\r\n".to_vec()),
        (Side::Client, b"EHLO client.example\r\n".to_vec()),
    ];
    let soon = run(&sh, 2, &timed(60, plain.clone()));
    let prior = soon
        .iter()
        .find(|l| l.contains("session.prior_tls_failure"))
        .expect("a retry a minute later is linked to the failure");
    assert!(prior.contains("\"prior_session\":1"), "{prior}");
    assert!(prior.contains("\"ago_s\":54.0"), "{prior}");
    // Fail again, then come back a day later (by the events' clock).
    run(&sh, 3, &timed(100, failing));
    let later = run(&sh, 4, &timed(100 + 86_400, plain));
    assert!(
        !later
            .iter()
            .any(|l| l.contains("session.prior_tls_failure")),
        "{later:?}"
    );
}

/// Intercept legs: each leg's TLS session has its own observer and its
/// facts carry the leg.
#[test]
fn intercept_legs_have_their_own_tls_facts() {
    let p = pki(&["mx.example"], None);
    let sh = shared(&p, "");
    let mut a = SessionAnalyzer::new(info(9, at(0)), sh);
    for (i, (side, b)) in tls(&p, true).into_iter().enumerate() {
        a.bytes(Leg::ProxyServer, side, at(i as u64), &b);
    }
    for (i, (side, b)) in tls(&p, false).into_iter().enumerate() {
        a.bytes(Leg::ClientProxy, side, at(i as u64), &b);
    }
    let evs = a.take_events();
    let on = |leg: Leg, f: &dyn Fn(&EventKind) -> bool| {
        evs.iter()
            .filter(|e| e.leg == Some(leg) && f(&e.kind))
            .count()
    };
    let hello = |k: &EventKind| matches!(k, EventKind::Tls(TlsEvent::ServerHello { .. }));
    assert_eq!(on(Leg::ProxyServer, &hello), 1);
    assert_eq!(on(Leg::ClientProxy, &hello), 1);
    let chain = |k: &EventKind| matches!(k, EventKind::Cert(CertEvent::Chain { .. }));
    assert_eq!(
        on(Leg::ProxyServer, &chain),
        1,
        "TLS 1.2 leg: chain visible"
    );
    assert_eq!(on(Leg::ClientProxy, &chain), 0, "TLS 1.3 leg: hidden");
    let version = |leg: Leg| {
        evs.iter().find_map(|e| match &e.kind {
            EventKind::Tls(TlsEvent::ServerHello { version, .. }) if e.leg == Some(leg) => {
                Some(version.clone())
            }
            _ => None,
        })
    };
    assert_eq!(version(Leg::ProxyServer).as_deref(), Some("TLSv1.2"));
    assert_eq!(version(Leg::ClientProxy).as_deref(), Some("TLSv1.3"));
    let started = evs
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Session(SessionEvent::TlsStarted { .. })))
        .count();
    assert_eq!(started, 2);
}

/// With `check_revocation`, a chain naming a CRL waits for it: the core
/// asks, the driver answers, and `cert.crl` then `cert.chain` follow.
#[test]
fn revocation_is_a_request_and_its_result_is_fed_back() {
    let p = pki(&["mx.example"], Some("http://crl.example/ca.crl"));
    let sh = shared(&p, "[tls]\ncheck_revocation = true\n");
    let mut a = SessionAnalyzer::new(info(1, at(0)), sh);
    let mut requests = Vec::new();
    for (i, (side, b)) in cleartext().into_iter().chain(tls(&p, true)).enumerate() {
        a.bytes(Leg::EndToEnd, side, at(i as u64), &b);
        requests.extend(a.take_requests());
    }
    assert_eq!(
        requests,
        vec![Request::FetchCrls {
            id: 1,
            urls: vec!["http://crl.example/ca.crl".into()]
        }]
    );
    assert!(!a
        .kept()
        .iter()
        .any(|e| matches!(e.kind, EventKind::Cert(CertEvent::Chain { .. }))));
    a.crls_fetched(
        1,
        vec![CrlOutcome {
            url: "http://crl.example/ca.crl".into(),
            result: Err(CrlError {
                code: "refused",
                detail: "Connection refused (os error 111)".into(),
            }),
        }],
    );
    let names: Vec<&str> = a.take_events().iter().map(|e| e.name()).collect();
    let crl = names.iter().position(|n| *n == "cert.crl").unwrap();
    let chain = names.iter().position(|n| *n == "cert.chain").unwrap();
    assert!(crl < chain, "{names:?}");
    let crl_ev = a
        .kept()
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::Cert(CertEvent::Crl { error, detail, .. }) => {
                Some((error.clone(), detail.clone()))
            }
            _ => None,
        })
        .unwrap();
    assert_eq!(crl_ev.0.as_deref(), Some("refused"));
}

/// A driver that never answers: the chain is judged without its CRLs at
/// the close, nothing is lost.
#[test]
fn unanswered_revocation_requests_are_judged_at_close() {
    let p = pki(&["mx.example"], Some("http://crl.example/ca.crl"));
    let sh = shared(&p, "[tls]\ncheck_revocation = true\n");
    let mut a = SessionAnalyzer::new(info(1, at(0)), sh);
    for (i, (side, b)) in cleartext().into_iter().chain(tls(&p, true)).enumerate() {
        a.bytes(Leg::EndToEnd, side, at(i as u64), &b);
    }
    assert_eq!(a.take_requests().len(), 1);
    a.close(at(100), Ends::aborted(), None);
    assert!(a.kept().iter().any(|e| matches!(
        e.kind,
        EventKind::Cert(CertEvent::Chain { trusted: true, .. })
    )));
    assert!(a.is_finished());
}

/// Inputs after the end are ignored; an upstream failure ends the session
/// with its code and words.
#[test]
fn upstream_failure_ends_the_session_with_a_code() {
    let p = pki(&["mx.example"], None);
    let mut a = SessionAnalyzer::new(info(1, at(0)), shared(&p, ""));
    a.upstream_failed(
        at(1),
        UpstreamFailure {
            code: "refused",
            detail: "Connection refused (os error 111)".into(),
            tried: vec!["192.0.2.25:25: Connection refused (os error 111)".into()],
        },
        Some(("421 4.4.1 try later".into(), true)),
    );
    a.bytes(Leg::EndToEnd, Side::Server, at(2), b"220 late\r\n");
    let evs = a.take_events();
    assert!(evs
        .iter()
        .all(|e| !matches!(e.kind, EventKind::Smtp(SmtpEvent::Banner { .. }))));
    let failed = evs
        .iter()
        .find(|e| e.name() == "upstream.failed")
        .map(|e| serde_json::to_string(e).unwrap())
        .unwrap();
    assert!(failed.contains("\"error\":\"refused\""), "{failed}");
    assert!(
        failed.contains("\"detail\":\"Connection refused (os error 111)\""),
        "{failed}"
    );
    assert_eq!(evs.last().unwrap().name(), "session.summary");
}

/// A chain handed over by the driver (TLS 1.3: not on the wire) is judged
/// like one seen on the wire, with the names learnt from the conversation.
#[test]
fn a_chain_from_the_driver_is_analysed_like_one_from_the_wire() {
    let p = pki(&["mx.example"], None);
    let other = pki(&["other.example"], None);
    let mut a = SessionAnalyzer::new(info(1, at(0)), shared(&other, ""));
    for (i, (side, b)) in cleartext().into_iter().chain(tls(&p, false)).enumerate() {
        a.bytes(Leg::EndToEnd, side, at(i as u64), &b);
    }
    let chain = vec![other.leaf.to_vec(), other.ca.to_vec()];
    a.peer_chain(at(50), Leg::EndToEnd, Side::Server, chain);
    a.close(at(60), Ends::aborted(), None);
    let names = a
        .kept()
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::Cert(CertEvent::Names { checks, .. }) => Some(checks.clone()),
            _ => None,
        })
        .expect("names checked");
    assert!(names.iter().any(|c| c.name == "mx.example" && !c.matched));
    let summary = serde_json::to_string(a.kept().last().unwrap()).unwrap();
    assert!(summary.contains("cert.host_mismatch"), "{summary}");
}

/// A cleartext session ended by the client's reset: `error` before QUIT's
/// 221, `completed` (the reset kept as a detail) after it.
#[test]
fn a_reset_after_quit_and_221_is_a_normal_end() {
    let p = pki(&["mx.example"], None);
    let shared = shared(&p, "");
    let close_of = |chunks: &[&str]| -> serde_json::Value {
        let mut a = SessionAnalyzer::new(info(1, at(0)), shared.clone());
        a.upstream_connected(
            at(0),
            "192.0.2.25:25".parse().unwrap(),
            "192.0.2.10:51514".parse().unwrap(),
            0.001,
        );
        for (i, c) in chunks.iter().enumerate() {
            let side = if i % 2 == 0 {
                Side::Server
            } else {
                Side::Client
            };
            a.bytes(Leg::EndToEnd, side, at(i as u64), c.as_bytes());
        }
        let ends = Ends {
            client_end: DirEnd::Error {
                code: "reset",
                detail: "reading from client: Connection reset by peer (os error 104)".into(),
            },
            server_end: DirEnd::Fin,
            client_bytes: 10,
            server_bytes: 10,
        };
        a.close(at(9), ends, None);
        let events = a.take_events();
        let close = events
            .iter()
            .find(|e| matches!(e.kind, EventKind::Session(SessionEvent::Close { .. })))
            .unwrap();
        let sum = events
            .iter()
            .find(|e| matches!(e.kind, EventKind::Session(SessionEvent::Summary(_))))
            .unwrap();
        let mut v = serde_json::to_value(close).unwrap();
        v["summary_close_reason"] = serde_json::to_value(sum).unwrap()["close_reason"].clone();
        v
    };
    let greeting = [
        "220 mx.example ESMTP\r\n",
        "EHLO client.example\r\n",
        "250 mx.example\r\n",
    ];
    let mut quit = greeting.to_vec();
    quit.extend(["QUIT\r\n", "221 2.0.0 Bye\r\n"]);
    let c = close_of(&quit[..]);
    assert_eq!(c["reason"], "completed", "{c}");
    assert_eq!(c["summary_close_reason"], "completed", "{c}");
    assert_eq!(c["error"], "reset", "{c}");
    let detail = c["detail"].as_str().unwrap();
    assert!(
        detail.contains("Connection reset by peer") && detail.contains("after QUIT and its 221"),
        "{detail}"
    );
    // Without QUIT's 221 the reset is an error.
    let mut no_221 = greeting.to_vec();
    no_221.push("QUIT\r\n");
    let c = close_of(&no_221[..]);
    assert_eq!(c["reason"], "error", "{c}");
    assert_eq!(c["summary_close_reason"], "error", "{c}");
}

/// TLS 1.3 hides the certificate: the core asks for a side-probe once, with
/// the client's SNI and EHLO name; the answer's chain is analysed like a
/// wire chain, its events marked `source: side_probe`; a stray answer is
/// ignored, and so is one after the summary.
#[test]
fn a_hidden_certificate_asks_for_a_side_probe_and_its_chain_is_judged() {
    let p = pki(&["mx.example"], None);
    let mut a = SessionAnalyzer::new(info(1, at(0)), shared(&p, ""));
    a.upstream_connected(
        at(0),
        "192.0.2.25:25".parse().unwrap(),
        "192.0.2.10:51514".parse().unwrap(),
        0.001,
    );
    let mut asked = Vec::new();
    for (i, (side, b)) in cleartext().into_iter().chain(tls(&p, false)).enumerate() {
        a.bytes(Leg::EndToEnd, side, at(i as u64), &b);
        asked.extend(a.take_requests());
    }
    assert_eq!(asked.len(), 1, "{asked:?}");
    let Request::SideProbe {
        id,
        addr,
        sni,
        ehlo,
        implicit_tls,
    } = asked[0].clone()
    else {
        panic!("{asked:?}")
    };
    assert_eq!(addr, "192.0.2.25:25".parse().unwrap());
    assert_eq!(sni.as_deref(), Some("mx.example"));
    assert!(ehlo.is_some());
    assert!(!implicit_tls);
    // An answer to another request changes nothing.
    let other = pki(&["other.example"], None);
    let answer = |chain: Vec<Vec<u8>>| SideProbeOutcome {
        result: Ok(SideProbeTls {
            version: "TLSv1.3".into(),
            cipher: "TLS_AES_256_GCM_SHA384".into(),
            chain,
        }),
        cached: false,
        age_s: 0.0,
    };
    a.take_events();
    a.side_probe_done(id + 100, at(40), answer(vec![other.leaf.to_vec()]));
    assert!(a.take_events().is_empty());
    a.side_probe_done(id, at(41), answer(vec![p.leaf.to_vec(), p.ca.to_vec()]));
    let evs = a.take_events();
    assert_eq!(evs[0].name(), "tls.side_probe");
    let certs: Vec<_> = evs
        .iter()
        .filter(|e| e.name().starts_with("cert."))
        .collect();
    assert!(!certs.is_empty());
    assert!(certs
        .iter()
        .all(|e| e.source == Some(crate::event::Source::SideProbe)));
    assert!(certs.iter().any(|e| matches!(
        &e.kind,
        EventKind::Cert(CertEvent::Chain { trusted: true, .. })
    )));
    // Answered once: a repeat is ignored.
    a.side_probe_done(id, at(42), answer(vec![other.leaf.to_vec()]));
    assert!(a.take_events().is_empty());
    a.close(at(60), Ends::aborted(), None);
    a.take_events();
    let summary = serde_json::to_string(a.kept().last().unwrap()).unwrap();
    assert!(!summary.contains("cert.not_checked"), "{summary}");
    // After the summary, answers are ignored.
    a.side_probe_done(id, at(70), answer(vec![other.leaf.to_vec()]));
    assert!(a.take_events().is_empty());
}

/// With `side_probe = false`, or with no trust store, nothing is asked.
#[test]
fn no_side_probe_when_it_is_off() {
    let p = pki(&["mx.example"], None);
    let mut a = SessionAnalyzer::new(info(1, at(0)), shared(&p, "[tls]\nside_probe = false\n"));
    a.upstream_connected(
        at(0),
        "192.0.2.25:25".parse().unwrap(),
        "192.0.2.10:51514".parse().unwrap(),
        0.001,
    );
    for (i, (side, b)) in cleartext().into_iter().chain(tls(&p, false)).enumerate() {
        a.bytes(Leg::EndToEnd, side, at(i as u64), &b);
        assert!(a.take_requests().is_empty());
    }
}

/// The SMTP inside TLS of an intercepted session, as smtptap decrypts it.
fn inner() -> Transcript {
    let s = |t: &str| (Side::Server, t.as_bytes().to_vec());
    let c = |t: &str| (Side::Client, t.as_bytes().to_vec());
    vec![
        c("EHLO client.example\r\n"),
        s("250-mx.example\r\n250-AUTH PLAIN\r\n250 8BITMIME\r\n"),
        c("AUTH PLAIN AGFsaWNlAHMzY3JldA==\r\n"),
        s("235 2.7.0 Authentication successful\r\n"),
        c("MAIL FROM:<a@client.example>\r\nRCPT TO:<b@mx.example>\r\nDATA\r\n"),
        s("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"),
        c("Subject: hi\r\n\r\nbodytext-7f3a\r\n.\r\n"),
        s("550 5.7.1 Message rejected by policy\r\n"),
        c("QUIT\r\n"),
        s("221 2.0.0 Bye\r\n"),
    ]
}

/// An intercepted session: the cleartext end to end, both legs' TLS, then
/// the decrypted conversation through `plaintext`; every event as JSON.
fn run_intercepted(
    shared: &Arc<Analysis>,
    legs: &(Transcript, Transcript),
    plain: &[(Side, Vec<u8>)],
) -> Vec<String> {
    let mut a = SessionAnalyzer::new(info(5, at(0)), shared.clone());
    a.upstream_connected(
        at(0),
        "192.0.2.25:25".parse().unwrap(),
        "192.0.2.10:51514".parse().unwrap(),
        0.001,
    );
    for (i, (side, b)) in cleartext().into_iter().enumerate() {
        a.bytes(Leg::EndToEnd, side, at(i as u64), &b);
    }
    for (side, b) in &legs.0 {
        a.bytes(Leg::ClientProxy, *side, at(10), b);
    }
    for (side, b) in &legs.1 {
        a.bytes(Leg::ProxyServer, *side, at(11), b);
    }
    for (side, b) in plain {
        a.plaintext(*side, at(20), b);
    }
    a.plaintext_fin(Side::Client, at(30));
    closed_lines(&mut a, at(30))
}

/// Closes `a` at `ts` (both sides FIN) and returns every event as JSON.
fn closed_lines(a: &mut SessionAnalyzer, ts: Timestamp) -> Vec<String> {
    let ends = Ends {
        client_end: DirEnd::Fin,
        server_end: DirEnd::Fin,
        client_bytes: 0,
        server_bytes: 0,
    };
    a.close(ts, ends, None);
    a.take_events()
        .iter()
        .map(|e| serde_json::to_string(e).unwrap())
        .collect()
}

#[test]
fn decrypted_smtp_is_observed_the_same_at_every_split_point() {
    let p = pki(&["mx.example"], None);
    let sh = shared(&p, "");
    let plain = inner();
    let legs = (tls(&p, false), tls(&p, true));
    let whole = run_intercepted(&sh, &legs, &plain);
    let names = names_of(&whole);
    // The second EHLO and its capabilities, AUTH, the envelope, the message.
    let count = |n: &str| names.iter().filter(|x| *x == n).count();
    assert_eq!(count("smtp.capabilities"), 2, "{names:?}");
    assert_eq!(count("smtp.auth"), 1, "{names:?}");
    assert_eq!(count("smtp.message"), 1, "{names:?}");
    let all = whole.join("\n");
    assert!(
        !all.contains("AGFsaWNlAHMzY3JldA"),
        "the AUTH secret leaked"
    );
    assert!(!all.contains("bodytext-7f3a"), "the body leaked");
    let summary = whole.last().unwrap();
    assert!(summary.contains("smtp.rejected_after_tls"), "{summary}");
    // Both legs' facts, each under its leg.
    for leg in ["client_proxy", "proxy_server"] {
        assert!(
            whole
                .iter()
                .any(|l| l.contains("\"tls.server_hello\"") && l.contains(leg)),
            "no ServerHello on {leg}"
        );
    }
    // Any split of the decrypted stream gives the same events.
    for i in 0..plain.len() {
        for k in 1..plain[i].1.len() {
            let mut split = plain.clone();
            let (side, b) = split.remove(i);
            split.insert(i, (side, b[k..].to_vec()));
            split.insert(i, (side, b[..k].to_vec()));
            let got = run_intercepted(&sh, &legs, &split);
            assert!(got == whole, "chunk {i} split at {k}");
        }
    }
}
/// Intercept mode found the client speaking TLS first on a listener not
/// configured for implicit TLS: the conversation inside TLS starts with the
/// banner, and the session is implicit TLS as if configured.
#[test]
fn implicit_tls_detected_by_the_driver_reads_the_banner_inside_tls() {
    let p = pki(&["mx.example"], None);
    let sh = shared(&p, "");
    let mut a = SessionAnalyzer::new(info(6, at(0)), sh);
    a.upstream_connected(
        at(0),
        "192.0.2.25:465".parse().unwrap(),
        "192.0.2.10:51514".parse().unwrap(),
        0.001,
    );
    a.implicit_tls_detected(at(1));
    // A second call changes nothing.
    a.implicit_tls_detected(at(1));
    let legs = (tls(&p, false), tls(&p, false));
    for (side, b) in &legs.0 {
        a.bytes(Leg::ClientProxy, *side, at(2), b);
    }
    for (side, b) in &legs.1 {
        a.bytes(Leg::ProxyServer, *side, at(2), b);
    }
    let mut plain = vec![(Side::Server, b"220 mx.example ESMTP\r\n".to_vec())];
    plain.extend(inner());
    for (side, b) in &plain {
        a.plaintext(*side, at(3), b);
    }
    let lines = closed_lines(&mut a, at(4));
    let started: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("\"tls.started\"") && l.contains("end_to_end"))
        .collect();
    assert_eq!(started.len(), 1, "{started:?}");
    assert!(
        started[0].contains("\"after\":\"implicit_detected\""),
        "{}",
        started[0]
    );
    let summary = lines.last().unwrap();
    assert!(summary.contains("\"implicit_tls\":true"), "{summary}");
    assert!(
        summary.contains("\"banner\":\"220 mx.example ESMTP\""),
        "{summary}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("smtp.desync")),
        "{lines:?}"
    );
}

mod gave_up;

#[test]
fn an_idle_session_keeps_only_what_the_diagnosis_reads() {
    let p = pki(&["mx.example"], None);
    let shared = shared(&p, "");
    let mut a = SessionAnalyzer::new(info(9, at(0)), shared);
    a.upstream_connected(
        at(0),
        "192.0.2.25:25".parse().unwrap(),
        "192.0.2.10:51514".parse().unwrap(),
        0.001,
    );
    a.bytes(
        Leg::EndToEnd,
        Side::Server,
        at(1),
        b"220 mx.example ESMTP\r\n",
    );
    let logged: Vec<&str> = a.take_events().iter().map(|e| e.kind.name()).collect();
    assert_eq!(
        logged,
        ["session.open", "upstream.connected", "smtp.banner"],
        "every event is logged"
    );
    let kept: Vec<&str> = a.kept().iter().map(|e| e.kind.name()).collect();
    assert_eq!(kept, ["smtp.banner"], "open and connected are not kept");
    assert_eq!(a.rec.kept.capacity(), 1, "one slot per kept event so far");
}
