//! Tests of the TLS observer: in-memory rustls handshakes, openssl fixtures
//! (see `fixtures/README.md`), split-point equivalence, fragmentation, desync
//! and random input.

use std::io::{Read, Write};
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::crypto::ring as provider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

use super::*;

/// One relayed chunk: who sent it and the bytes.
type Transcript = Vec<(Side, Vec<u8>)>;

struct Pki {
    ca: CertificateDer<'static>,
    leaf: CertificateDer<'static>,
    leaf_key: Vec<u8>,
    client: CertificateDer<'static>,
    client_key: Vec<u8>,
}

fn pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "smtptap test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["mx.example".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client = CertificateParams::new(vec!["client.example".to_string()])
        .unwrap()
        .signed_by(&client_key, &ca, &ca_key)
        .unwrap();
    Pki {
        ca: ca.der().clone(),
        leaf: leaf.der().clone(),
        leaf_key: leaf_key.serialize_der(),
        client: client.der().clone(),
        client_key: client_key.serialize_der(),
    }
}

fn key(der: &[u8]) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der.to_vec()))
}

struct Setup {
    v12_only: bool,
    server_groups_384: bool,
    client_auth: bool,
    client_trusts: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            v12_only: false,
            server_groups_384: false,
            client_auth: false,
            client_trusts: true,
        }
    }
}

/// Runs a rustls handshake in memory, then one SMTP exchange if it succeeded,
/// and returns every chunk written, in relay order.
fn rustls_transcript(pki: &Pki, setup: &Setup) -> Transcript {
    let versions: &[&rustls::SupportedProtocolVersion] = if setup.v12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca.clone()).unwrap();

    let mut sp = crate::crypto::provider();
    if setup.server_groups_384 {
        sp.kx_groups = vec![provider::kx_group::SECP384R1];
    }
    let sb = ServerConfig::builder_with_provider(Arc::new(sp))
        .with_protocol_versions(versions)
        .unwrap();
    let sb = if setup.client_auth {
        let v = WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots.clone()),
            crate::crypto::shared(),
        )
        .build()
        .unwrap();
        sb.with_client_cert_verifier(v)
    } else {
        sb.with_no_client_auth()
    };
    let scfg = sb
        .with_single_cert(vec![pki.leaf.clone(), pki.ca.clone()], key(&pki.leaf_key))
        .unwrap();

    let client_roots = if setup.client_trusts {
        roots
    } else {
        RootCertStore::empty()
    };
    let cb = ClientConfig::builder_with_provider(crate::crypto::shared())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(client_roots);
    let ccfg = if setup.client_auth {
        cb.with_client_auth_cert(vec![pki.client.clone()], key(&pki.client_key))
            .unwrap()
    } else {
        cb.with_no_client_auth()
    };

    let mut c = ClientConnection::new(Arc::new(ccfg), "mx.example".try_into().unwrap()).unwrap();
    let mut s = ServerConnection::new(Arc::new(scfg)).unwrap();
    let mut t = Transcript::new();
    let mut failed = pump(&mut c, &mut s, &mut t);
    if !failed {
        c.writer().write_all(b"EHLO client.example\r\n").unwrap();
        failed = pump(&mut c, &mut s, &mut t);
        let mut buf = [0u8; 64];
        let n = s.reader().read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"EHLO client.example\r\n");
        s.writer().write_all(b"250 mx.example\r\n").unwrap();
        failed |= pump(&mut c, &mut s, &mut t);
    }
    assert_eq!(failed, !setup.client_trusts, "handshake outcome");
    t
}

/// Moves bytes both ways until neither side has anything to write; true if
/// either side failed.
fn pump(c: &mut ClientConnection, s: &mut ServerConnection, t: &mut Transcript) -> bool {
    let mut failed = false;
    loop {
        let mut moved = false;
        while c.wants_write() {
            let mut buf = Vec::new();
            c.write_tls(&mut buf).unwrap();
            moved = true;
            let mut rd = &buf[..];
            while !rd.is_empty() && s.read_tls(&mut rd).is_ok() {}
            failed |= s.process_new_packets().is_err();
            t.push((Side::Client, buf));
        }
        while s.wants_write() {
            let mut buf = Vec::new();
            s.write_tls(&mut buf).unwrap();
            moved = true;
            let mut rd = &buf[..];
            while !rd.is_empty() && c.read_tls(&mut rd).is_ok() {}
            failed |= c.process_new_packets().is_err();
            t.push((Side::Server, buf));
        }
        if !moved || failed && !c.wants_write() && !s.wants_write() {
            return failed;
        }
    }
}

fn observe(t: &Transcript) -> (Vec<TlsEvent>, TlsObserver) {
    let mut o = TlsObserver::new();
    let mut ev = Vec::new();
    for (side, bytes) in t {
        o.feed(*side, bytes, &mut ev);
    }
    (ev, o)
}

fn names(ev: &[TlsEvent]) -> Vec<String> {
    ev.iter()
        .map(|e| {
            serde_json::to_value(e).unwrap()["event"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// Every split point of every chunk gives the same events as the whole chunk.
fn assert_split_invariant(t: &Transcript) {
    let (whole, _) = observe(t);
    for (i, (_, bytes)) in t.iter().enumerate() {
        for cut in 1..bytes.len() {
            let mut o = TlsObserver::new();
            let mut ev = Vec::new();
            for (j, (side, b)) in t.iter().enumerate() {
                if i == j {
                    o.feed(*side, &b[..cut], &mut ev);
                    o.feed(*side, &b[cut..], &mut ev);
                } else {
                    o.feed(*side, b, &mut ev);
                }
            }
            assert_eq!(ev, whole, "chunk {i} cut at {cut}");
        }
    }
    // and one byte at a time
    let mut o = TlsObserver::new();
    let mut ev = Vec::new();
    for (side, b) in t {
        for x in b.chunks(1) {
            o.feed(*side, x, &mut ev);
        }
    }
    assert_eq!(ev, whole, "byte-by-byte");
}

#[test]
fn rustls_tls12_certificate_visible() {
    let pki = pki();
    let t = rustls_transcript(
        &pki,
        &Setup {
            v12_only: true,
            ..Setup::default()
        },
    );
    let (ev, o) = observe(&t);
    assert_eq!(
        names(&ev),
        [
            "tls.client_hello",
            "tls.server_hello",
            "tls.certificate",
            "tls.server_key_exchange",
            "tls.change_cipher_spec",
            "tls.change_cipher_spec",
            "tls.established"
        ]
    );
    match &ev[0] {
        TlsEvent::ClientHello(ch) => {
            let ClientHelloInfo {
                sni,
                max_version,
                record_version,
                sslv2_format,
                ja4,
                cipher_suites,
                ..
            } = &**ch;
            assert_eq!(sni.as_deref(), Some("mx.example"));
            assert_eq!(max_version, "TLSv1.2");
            assert_eq!(record_version, "TLSv1.0");
            assert!(!sslv2_format);
            assert!(ja4.starts_with("t12d"), "{ja4}");
            assert!(cipher_suites.contains(&"TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384".to_string()));
        }
        e => panic!("{e:?}"),
    }
    match &ev[1] {
        TlsEvent::ServerHello {
            version, resumed, ..
        } => {
            assert_eq!(version, "TLSv1.2");
            assert!(!resumed);
        }
        e => panic!("{e:?}"),
    }
    match &ev[2] {
        TlsEvent::Certificate {
            side,
            count,
            ders,
            bytes,
        } => {
            assert_eq!(*side, Side::Server);
            assert_eq!(*count, 2);
            assert_eq!(ders[0], pki.leaf.as_ref());
            assert_eq!(ders[1], pki.ca.as_ref());
            assert_eq!(*bytes, pki.leaf.len() + pki.ca.len());
        }
        e => panic!("{e:?}"),
    }
    assert_eq!(
        ev[3],
        TlsEvent::ServerKeyExchange {
            kind: "ECDHE".into(),
            group: Some("x25519".into()),
            dh_bits: None
        }
    );
    assert_eq!(ev[4], TlsEvent::ChangeCipherSpec { side: Side::Client });
    assert_eq!(ev[5], TlsEvent::ChangeCipherSpec { side: Side::Server });
    match &ev[6] {
        TlsEvent::Established {
            version,
            cipher_suite,
        } => {
            assert_eq!(version, "TLSv1.2");
            assert!(
                cipher_suite.starts_with("TLS_ECDHE_ECDSA_WITH_"),
                "{cipher_suite}"
            );
        }
        e => panic!("{e:?}"),
    }
    assert!(o.is_done() && !o.is_desynced());
    let st = o.stats();
    let sent_c: usize = t
        .iter()
        .filter(|c| c.0 == Side::Client)
        .map(|c| c.1.len())
        .sum();
    assert_eq!(st.client.bytes, sent_c as u64);
    assert!(st.client.records >= 4 && st.server.records >= 4, "{st:?}");
    assert_split_invariant(&t);
}

#[test]
fn rustls_tls13_certificate_hidden() {
    let pki = pki();
    let t = rustls_transcript(&pki, &Setup::default());
    let (ev, o) = observe(&t);
    assert_eq!(
        names(&ev),
        [
            "tls.client_hello",
            "tls.server_hello",
            "tls.certificate_hidden",
            "tls.established"
        ]
    );
    match &ev[0] {
        TlsEvent::ClientHello(ch) => {
            let ClientHelloInfo {
                supported_versions,
                max_version,
                key_share_groups,
                ja4,
                ..
            } = &**ch;
            assert_eq!(supported_versions, &["TLSv1.3"]);
            assert_eq!(max_version, "TLSv1.3");
            assert_eq!(key_share_groups, &["x25519"]);
            assert!(ja4.starts_with("t13d"), "{ja4}");
        }
        e => panic!("{e:?}"),
    }
    match &ev[1] {
        TlsEvent::ServerHello {
            version,
            legacy_version,
            group,
            ..
        } => {
            assert_eq!(version, "TLSv1.3");
            assert_eq!(legacy_version, "TLSv1.2");
            assert_eq!(group.as_deref(), Some("x25519"));
        }
        e => panic!("{e:?}"),
    }
    assert!(
        matches!(&ev[2], TlsEvent::CertificateHidden { version, note }
        if version == "TLSv1.3" && note.contains("encrypted"))
    );
    assert!(matches!(&ev[3], TlsEvent::Established { version, .. } if version == "TLSv1.3"));
    assert!(o.is_done());
    assert_split_invariant(&t);
}

#[test]
fn rustls_hello_retry_request() {
    let pki = pki();
    let t = rustls_transcript(
        &pki,
        &Setup {
            server_groups_384: true,
            ..Setup::default()
        },
    );
    let (ev, _) = observe(&t);
    assert_eq!(
        names(&ev),
        [
            "tls.client_hello",
            "tls.hello_retry_request",
            "tls.client_hello",
            "tls.server_hello",
            "tls.certificate_hidden",
            "tls.established"
        ]
    );
    assert!(
        matches!(&ev[1], TlsEvent::HelloRetryRequest { version, group, .. }
        if version == "TLSv1.3" && group.as_deref() == Some("secp384r1"))
    );
    assert!(matches!(&ev[2], TlsEvent::ClientHello(ch)
        if ch.key_share_groups == ["secp384r1"]));
    assert!(matches!(&ev[3], TlsEvent::ServerHello { group, .. }
        if group.as_deref() == Some("secp384r1")));
    assert_split_invariant(&t);
}

#[test]
fn rustls_tls12_client_certificate_request() {
    let pki = pki();
    let t = rustls_transcript(
        &pki,
        &Setup {
            v12_only: true,
            client_auth: true,
            ..Setup::default()
        },
    );
    let (ev, o) = observe(&t);
    let req = ev
        .iter()
        .find(|e| matches!(e, TlsEvent::CertificateRequest { .. }))
        .expect("certificate_request");
    match req {
        TlsEvent::CertificateRequest {
            version,
            cert_types,
            signature_algorithms,
            ca_names,
        } => {
            assert_eq!(version, "TLSv1.2");
            assert!(
                cert_types.contains(&"ecdsa_sign".to_string()),
                "{cert_types:?}"
            );
            assert!(signature_algorithms.contains(&"ecdsa_secp256r1_sha256".to_string()));
            assert_eq!(*ca_names, 1);
        }
        _ => unreachable!(),
    }
    let certs: Vec<_> = ev
        .iter()
        .filter_map(|e| match e {
            TlsEvent::Certificate { side, ders, .. } => Some((*side, ders.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(certs.len(), 2);
    assert_eq!(certs[1].0, Side::Client);
    assert_eq!(certs[1].1, vec![pki.client.to_vec()]);
    assert!(o.is_done());
    assert_split_invariant(&t);
}

#[test]
fn rustls_tls12_client_rejects_server() {
    let pki = pki();
    let t = rustls_transcript(
        &pki,
        &Setup {
            v12_only: true,
            client_trusts: false,
            ..Setup::default()
        },
    );
    let (ev, o) = observe(&t);
    let alert = ev.last().unwrap();
    assert_eq!(
        alert,
        &TlsEvent::Alert {
            side: Side::Client,
            level: "fatal".into(),
            description: "unknown_ca".into(),
            code: 48,
            encrypted: false,
            note: None
        }
    );
    assert!(!o.is_done());
    assert!(!names(&ev).contains(&"tls.established".to_string()));
    assert_split_invariant(&t);
}

#[test]
fn rustls_tls13_client_rejects_server_encrypted_alert() {
    let pki = pki();
    let t = rustls_transcript(
        &pki,
        &Setup {
            client_trusts: false,
            ..Setup::default()
        },
    );
    let (ev, _) = observe(&t);
    assert_eq!(
        names(&ev),
        [
            "tls.client_hello",
            "tls.server_hello",
            "tls.certificate_hidden",
            "tls.alert"
        ]
    );
    assert!(matches!(
        &ev[3],
        TlsEvent::Alert {
            side: Side::Client,
            encrypted: true,
            note: Some(_),
            ..
        }
    ));
}

/// Reads a fixture written by `fixtures/record_relay.py`.
fn fixture(text: &str) -> Transcript {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (side, hex) = l.split_once(' ').unwrap();
            let side = match side {
                "c" => Side::Client,
                "s" => Side::Server,
                x => panic!("bad side {x}"),
            };
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            (side, bytes)
        })
        .collect()
}

const OPENSSL_TLS10_CBC: &str = include_str!("fixtures/openssl-tls10-cbc.hex");
const OPENSSL_NO_COMMON_SUITE: &str = include_str!("fixtures/openssl-no-common-suite.hex");
const OPENSSL_TLS12_DHE: &str = include_str!("fixtures/openssl-tls12-dhe.hex");

#[test]
fn openssl_tls10_cbc() {
    let t = fixture(OPENSSL_TLS10_CBC);
    let (ev, o) = observe(&t);
    let n = names(&ev);
    assert_eq!(
        n[..5],
        [
            "tls.client_hello",
            "tls.server_hello",
            "tls.certificate",
            "tls.change_cipher_spec",
            "tls.change_cipher_spec",
        ]
    );
    assert!(n.contains(&"tls.established".to_string()), "{n:?}");
    match &ev[0] {
        TlsEvent::ClientHello(ch) => {
            let ClientHelloInfo {
                max_version,
                cipher_suites,
                sni,
                ..
            } = &**ch;
            assert_eq!(max_version, "TLSv1.0");
            assert!(cipher_suites.contains(&"TLS_RSA_WITH_AES_128_CBC_SHA".to_string()));
            assert_eq!(sni.as_deref(), Some("mx.example"));
        }
        e => panic!("{e:?}"),
    }
    assert!(
        matches!(&ev[1], TlsEvent::ServerHello { version, cipher_suite, .. }
        if version == "TLSv1.0" && cipher_suite == "TLS_RSA_WITH_AES_128_CBC_SHA")
    );
    assert!(matches!(
        &ev[2],
        TlsEvent::Certificate {
            side: Side::Server,
            count: 1,
            ..
        }
    ));
    assert!(
        matches!(ev.iter().find(|e| matches!(e, TlsEvent::Established { .. })),
        Some(TlsEvent::Established { version, .. }) if version == "TLSv1.0")
    );
    assert!(!o.is_desynced());
    assert_split_invariant(&t);
}

#[test]
fn openssl_handshake_failure_alert() {
    let t = fixture(OPENSSL_NO_COMMON_SUITE);
    let (ev, o) = observe(&t);
    assert_eq!(names(&ev), ["tls.client_hello", "tls.alert"]);
    assert_eq!(
        ev[1],
        TlsEvent::Alert {
            side: Side::Server,
            level: "fatal".into(),
            description: "handshake_failure".into(),
            code: 40,
            encrypted: false,
            note: None
        }
    );
    assert!(!o.is_done());
    assert_split_invariant(&t);
}

#[test]
fn openssl_tls12_dhe_key_exchange() {
    let t = fixture(OPENSSL_TLS12_DHE);
    let (ev, o) = observe(&t);
    let ske = ev
        .iter()
        .find(|e| matches!(e, TlsEvent::ServerKeyExchange { .. }))
        .expect("server_key_exchange");
    assert_eq!(
        ske,
        &TlsEvent::ServerKeyExchange {
            kind: "DHE".into(),
            group: None,
            dh_bits: Some(2048)
        }
    );
    assert!(!o.is_desynced());
    assert_split_invariant(&t);
}

// ---- synthetic inputs ----

fn record(ctype: u8, body: &[u8]) -> Vec<u8> {
    let mut r = vec![ctype, 3, 3, (body.len() >> 8) as u8, body.len() as u8];
    r.extend_from_slice(body);
    r
}

fn handshake(ty: u8, body: &[u8]) -> Vec<u8> {
    let n = body.len();
    let mut m = vec![ty, (n >> 16) as u8, (n >> 8) as u8, n as u8];
    m.extend_from_slice(body);
    m
}

fn u24(n: usize) -> [u8; 3] {
    [(n >> 16) as u8, (n >> 8) as u8, n as u8]
}

/// A minimal TLS 1.2 ServerHello choosing TLS_RSA_WITH_AES_128_GCM_SHA256.
fn server_hello_12() -> Vec<u8> {
    let mut b = vec![3, 3];
    b.extend([7u8; 32]);
    b.extend([0, 0x00, 0x9c, 0]);
    handshake(2, &b)
}

#[test]
fn large_chain_in_small_records_is_reassembled() {
    // Three certificates of ~70 KB each (opaque bytes: the observer does not parse X.509).
    let ders: Vec<Vec<u8>> = (0..3u8)
        .map(|i| (0..70_000u32).map(|j| (j as u8) ^ i).collect())
        .collect();
    let mut list = Vec::new();
    for d in &ders {
        list.extend(u24(d.len()));
        list.extend(d);
    }
    let mut body = u24(list.len()).to_vec();
    body.extend(&list);
    let msg = handshake(11, &body);
    assert!(msg.len() > 200_000);
    let mut server = record(22, &server_hello_12());
    for frag in msg.chunks(100) {
        server.extend(record(22, frag));
    }
    for feed in [1usize, 7, 4096, server.len()] {
        let mut o = TlsObserver::new();
        let mut ev = Vec::new();
        for c in server.chunks(feed) {
            o.feed(Side::Server, c, &mut ev);
        }
        assert_eq!(
            names(&ev),
            ["tls.server_hello", "tls.certificate"],
            "feed {feed}"
        );
        match &ev[1] {
            TlsEvent::Certificate {
                count,
                ders: got,
                bytes,
                ..
            } => {
                assert_eq!(*count, 3);
                assert_eq!(got, &ders);
                assert_eq!(*bytes, 210_000);
            }
            e => panic!("{e:?}"),
        }
        assert!(!o.is_desynced());
    }
}

#[test]
fn oversized_handshake_message_desyncs() {
    let mut hdr = vec![11];
    hdr.extend(u24(MAX_HANDSHAKE + 1));
    let mut o = TlsObserver::new();
    let mut ev = Vec::new();
    o.feed(Side::Server, &record(22, &hdr), &mut ev);
    assert!(o.is_desynced());
    match &ev[..] {
        [TlsEvent::Desync {
            side,
            reason,
            offset,
        }] => {
            assert_eq!(*side, Side::Server);
            assert_eq!(*offset, 0);
            assert!(reason.contains("over the 1048576-byte bound"), "{reason}");
        }
        e => panic!("{e:?}"),
    }
    // quiet afterwards
    o.feed(Side::Server, &record(22, &server_hello_12()), &mut ev);
    assert_eq!(ev.len(), 1);
}

#[test]
fn cleartext_smtp_after_starttls_desyncs() {
    // split anywhere, with more commands after it: the same single desync
    let text = b"EHLO x\r\nMAIL FROM:<a@example>\r\n";
    let mut o = TlsObserver::new();
    let mut ev = Vec::new();
    o.feed(Side::Client, text, &mut ev);
    for cut in 0..text.len() {
        let mut o2 = TlsObserver::new();
        let mut ev2 = Vec::new();
        o2.feed(Side::Client, &text[..cut], &mut ev2);
        o2.feed(Side::Client, &text[cut..], &mut ev2);
        assert_eq!(ev2, ev, "cut {cut}");
    }
    assert!(o.is_desynced() && o.is_done());
    match &ev[..] {
        [TlsEvent::Desync {
            side,
            reason,
            offset,
        }] => {
            assert_eq!(*side, Side::Client);
            assert_eq!(*offset, 0);
            assert_eq!(
                reason,
                "expected a TLS record, got 'EHLO…' (looks like an SMTP command in cleartext: \
                 the client carried on without starting TLS)"
            );
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn cleartext_reply_and_garbage_desync() {
    let mut o = TlsObserver::new();
    let mut ev = Vec::new();
    o.feed(Side::Server, b"454 4.7.0 TLS not available\r\n", &mut ev);
    assert!(
        matches!(&ev[..], [TlsEvent::Desync { side: Side::Server, reason, .. }]
        if reason.contains("an SMTP reply in cleartext"))
    );

    let mut o = TlsObserver::new();
    let mut ev = Vec::new();
    o.feed(Side::Server, &record(22, &server_hello_12()), &mut ev);
    o.feed(Side::Server, &[0x00, 0x01, 0xfe], &mut ev);
    // binary garbage: the observer gathers 32 bytes of context before saying so
    assert_eq!(ev.len(), 1);
    assert!(!o.is_desynced());
    o.feed(Side::Server, &[0xee; 40], &mut ev);
    assert!(o.is_desynced());
    assert!(
        matches!(&ev[..], [TlsEvent::ServerHello { .. }, TlsEvent::Desync { offset, reason, .. }]
        if *offset == 5 + 42 && reason.contains("00 01 fe ee") && reason.contains("not a TLS content type"))
    );

    let mut o = TlsObserver::new();
    let mut ev = Vec::new();
    o.feed(Side::Client, &[22, 3, 1, 0xff, 0xff], &mut ev);
    assert!(matches!(&ev[..], [TlsEvent::Desync { reason, .. }]
        if reason.contains("record length 65535 exceeds")));

    let mut o = TlsObserver::new();
    let mut ev = Vec::new();
    o.feed(Side::Client, &[22, 9, 9, 0, 1, 0], &mut ev);
    assert!(matches!(&ev[..], [TlsEvent::Desync { reason, .. }]
        if reason.contains("version 0x0909")));
}

#[test]
fn malformed_client_hello_desyncs() {
    let mut o = TlsObserver::new();
    let mut ev = Vec::new();
    o.feed(
        Side::Client,
        &record(22, &handshake(1, &[3, 3, 1, 2])),
        &mut ev,
    );
    assert!(matches!(&ev[..], [TlsEvent::Desync { reason, .. }]
        if reason == "ClientHello truncated in random"));
}

/// An SSLv2-format ClientHello as old clients sent it (RFC 6101 appendix E):
/// version TLS 1.0, three cipher specs (one SSLv2 kind, two TLS suites).
#[test]
fn sslv2_format_client_hello() {
    let mut body = vec![1, 3, 1, 0, 9, 0, 0, 0, 16];
    body.extend([0x01, 0x00, 0x80, 0x00, 0x00, 0x2f, 0x00, 0x00, 0xff]);
    body.extend([0xaa; 16]);
    let mut rec = vec![0x80 | (body.len() >> 8) as u8, body.len() as u8];
    rec.extend(&body);
    for cut in 0..rec.len() {
        let mut o = TlsObserver::new();
        let mut ev = Vec::new();
        o.feed(Side::Client, &rec[..cut], &mut ev);
        o.feed(Side::Client, &rec[cut..], &mut ev);
        match &ev[..] {
            [TlsEvent::ClientHello(ch)] => {
                let ClientHelloInfo {
                    sslv2_format,
                    record_version,
                    legacy_version,
                    cipher_suites,
                    ja3_string,
                    ..
                } = &**ch;
                assert!(sslv2_format);
                assert_eq!(record_version, "SSLv2");
                assert_eq!(legacy_version, "TLSv1.0");
                assert_eq!(
                    cipher_suites,
                    &[
                        "SSL_CK_RC4_128_WITH_MD5",
                        "TLS_RSA_WITH_AES_128_CBC_SHA",
                        "TLS_EMPTY_RENEGOTIATION_INFO_SCSV"
                    ]
                );
                assert_eq!(ja3_string, "769,47-255,,,");
            }
            e => panic!("cut {cut}: {e:?}"),
        }
    }
}

#[test]
fn tls12_resumption_is_detected() {
    let mut ch = vec![3, 3];
    ch.extend([1u8; 32]);
    ch.push(4);
    ch.extend([9, 9, 9, 9]);
    ch.extend([0, 2, 0x00, 0x9c, 1, 0]);
    let mut sh = vec![3, 3];
    sh.extend([2u8; 32]);
    sh.push(4);
    sh.extend([9, 9, 9, 9]);
    sh.extend([0x00, 0x9c, 0]);
    let mut o = TlsObserver::new();
    let mut ev = Vec::new();
    o.feed(Side::Client, &record(22, &handshake(1, &ch)), &mut ev);
    o.feed(Side::Server, &record(22, &handshake(2, &sh)), &mut ev);
    assert!(
        matches!(&ev[1], TlsEvent::ServerHello { resumed: true, .. }),
        "{ev:?}"
    );
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let valid = fixture(OPENSSL_TLS10_CBC);
    for round in 0..2000 {
        let mut o = TlsObserver::new();
        let mut ev = Vec::new();
        // Half the rounds start from a real handshake prefix, then random bytes.
        if round % 2 == 0 {
            for (side, b) in valid.iter().take(round % valid.len()) {
                o.feed(*side, b, &mut ev);
            }
        }
        for _ in 0..rng.gen_range(1..20) {
            let side = if rng.gen() {
                Side::Client
            } else {
                Side::Server
            };
            let mut buf = vec![0u8; rng.gen_range(0..600)];
            rng.fill(&mut buf[..]);
            // keep some records plausible so deeper code is reached
            if rng.gen_bool(0.5) && buf.len() > 5 {
                buf[0] = rng.gen_range(20..=24);
                buf[1] = 3;
                buf[2] = rng.gen_range(0..5);
                let n = buf.len() - 5;
                buf[3] = (n >> 8) as u8;
                buf[4] = n as u8;
                if rng.gen_bool(0.5) {
                    buf[5] = rng.gen_range(1..=16);
                }
            }
            o.feed(side, &buf, &mut ev);
        }
        let desyncs = ev
            .iter()
            .filter(|e| matches!(e, TlsEvent::Desync { .. }))
            .count();
        assert!(desyncs <= 1);
        assert_eq!(desyncs == 1, o.is_desynced());
    }
}

#[test]
fn events_round_trip_through_json() {
    let pki = pki();
    let t = rustls_transcript(
        &pki,
        &Setup {
            v12_only: true,
            ..Setup::default()
        },
    );
    let (ev, _) = observe(&t);
    for e in &ev {
        let json = serde_json::to_string(e).unwrap();
        assert!(!json.contains("ders"), "{json}");
        let back: TlsEvent = serde_json::from_str(&json).unwrap();
        match (e, &back) {
            (
                TlsEvent::Certificate { count, .. },
                TlsEvent::Certificate {
                    count: c2, ders, ..
                },
            ) => {
                assert_eq!(count, c2);
                assert!(ders.is_empty());
            }
            _ => assert_eq!(e, &back),
        }
    }
    let json = serde_json::to_value(&ev[1]).unwrap();
    assert_eq!(json["event"], "tls.server_hello");
    assert_eq!(json["version"], "TLSv1.2");
}

const ZEEK_HRR: &str = include_str!("fixtures/zeek-hrr.hex");
const ZEEK_SSLV2_HELLO: &str = include_str!("fixtures/zeek-sslv2-hello.hex");

#[test]
fn zeek_capture_hello_retry_request() {
    let t = fixture(ZEEK_HRR);
    let (ev, o) = observe(&t);
    assert_eq!(
        names(&ev),
        [
            "tls.client_hello",
            "tls.hello_retry_request",
            "tls.client_hello",
            "tls.server_hello",
            "tls.certificate_hidden",
            "tls.established"
        ]
    );
    assert!(matches!(&ev[0], TlsEvent::ClientHello(ch) if ch.key_share_groups == ["secp224r1"]));
    assert_eq!(
        ev[1],
        TlsEvent::HelloRetryRequest {
            version: "TLSv1.3".into(),
            cipher_suite: "TLS_AES_256_GCM_SHA384".into(),
            group: Some("secp256r1".into())
        }
    );
    assert!(matches!(&ev[2], TlsEvent::ClientHello(ch) if ch.key_share_groups == ["secp256r1"]));
    assert_eq!(
        ev[5],
        TlsEvent::Established {
            version: "TLSv1.3".into(),
            cipher_suite: "TLS_AES_256_GCM_SHA384".into()
        }
    );
    assert!(!o.is_desynced());
    // The capture's client sends only a close_notify after its Finished:
    // the observer is still watching for a first command.
    let a = o.client_after_handshake().expect("handshake complete");
    assert!(a.records == 0 && a.alert, "{a:?}");
    assert!(!o.is_done());
    assert_split_invariant(&t);
}

#[test]
fn zeek_capture_sslv2_format_hello() {
    let t = fixture(ZEEK_SSLV2_HELLO);
    let (ev, o) = observe(&t);
    assert_eq!(
        names(&ev),
        [
            "tls.client_hello",
            "tls.server_hello",
            "tls.certificate",
            "tls.change_cipher_spec",
            "tls.change_cipher_spec",
            "tls.established"
        ]
    );
    match &ev[0] {
        TlsEvent::ClientHello(ch) => {
            assert!(ch.sslv2_format);
            assert_eq!(ch.record_version, "SSLv2");
            assert_eq!(ch.legacy_version, "TLSv1.0");
            assert!(ch
                .cipher_suites
                .contains(&"TLS_RSA_WITH_RC4_128_MD5".to_string()));
            // 60 bytes of 3-byte specs, all of them TLS suites (first byte 0)
            assert_eq!(ch.cipher_suites.len(), 20);
            assert_eq!(ch.cipher_suites[0], "TLS_DHE_RSA_WITH_AES_256_CBC_SHA");
        }
        e => panic!("{e:?}"),
    }
    assert!(
        matches!(&ev[1], TlsEvent::ServerHello { version, cipher_suite, .. }
        if version == "TLSv1.0" && cipher_suite == "TLS_RSA_WITH_RC4_128_MD5")
    );
    assert!(matches!(&ev[2], TlsEvent::Certificate { count: 2, .. }));
    assert!(o.is_done());
    assert_split_invariant(&t);
}

#[test]
fn tls13_cleartext_alert_after_server_hello_is_read() {
    let mut sh = vec![3, 3];
    sh.extend([5u8; 32]);
    sh.extend([0, 0x13, 0x01, 0]);
    sh.extend([0, 6, 0, 43, 0, 2, 3, 4]);
    let mut o = TlsObserver::new();
    let mut ev = Vec::new();
    o.feed(Side::Server, &record(22, &handshake(2, &sh)), &mut ev);
    o.feed(Side::Client, &record(21, &[2, 47]), &mut ev);
    assert_eq!(
        names(&ev),
        ["tls.server_hello", "tls.certificate_hidden", "tls.alert"]
    );
    assert_eq!(
        ev[2],
        TlsEvent::Alert {
            side: Side::Client,
            level: "fatal".into(),
            description: "illegal_parameter".into(),
            code: 47,
            encrypted: false,
            note: None
        }
    );
    // an encrypted TLS 1.3 record of alert size is reported as a likely alert
    o.feed(Side::Server, &record(23, &[0u8; 19]), &mut ev);
    assert!(matches!(
        &ev[3],
        TlsEvent::Alert {
            side: Side::Server,
            encrypted: true,
            note: Some(_),
            ..
        }
    ));
}

#[test]
fn rustls_tls13_with_client_certificate_is_established() {
    let pki = pki();
    let t = rustls_transcript(
        &pki,
        &Setup {
            client_auth: true,
            ..Setup::default()
        },
    );
    let (ev, o) = observe(&t);
    assert_eq!(
        names(&ev),
        [
            "tls.client_hello",
            "tls.server_hello",
            "tls.certificate_hidden",
            "tls.established"
        ]
    );
    assert!(o.is_done());
}

#[test]
fn ja4_is_stable_while_rustls_shuffles_extensions() {
    let pki = pki();
    let hello = |t: &Transcript| match observe(t).0.into_iter().next() {
        Some(TlsEvent::ClientHello(ch)) => *ch,
        e => panic!("{e:?}"),
    };
    let first = hello(&rustls_transcript(&pki, &Setup::default()));
    let mut orders = std::collections::HashSet::new();
    for _ in 0..8 {
        let h = hello(&rustls_transcript(&pki, &Setup::default()));
        assert_eq!(h.ja4, first.ja4);
        orders.insert(h.extensions.clone());
    }
    // rustls randomises extension order: JA3 (order-sensitive) varies, JA4 does not
    assert!(orders.len() > 1, "extension order never changed");
}

/// A peer repeating handshake messages in the clear (each one a large event
/// kept for the session) is stopped at the second one.
#[test]
fn repeated_handshake_messages_desync() {
    let cert_list = {
        let der = vec![0x30u8; 1000];
        let mut list = u24(der.len()).to_vec();
        list.extend(&der);
        let mut body = u24(list.len()).to_vec();
        body.extend(&list);
        body
    };
    let mut server = record(22, &server_hello_12());
    for _ in 0..3 {
        server.extend(record(22, &handshake(11, &cert_list)));
    }
    let mut o = TlsObserver::new();
    let mut ev = Vec::new();
    o.feed(Side::Server, &server, &mut ev);
    assert_eq!(
        names(&ev),
        ["tls.server_hello", "tls.certificate", "tls.desync"]
    );
    match &ev[2] {
        TlsEvent::Desync { side, reason, .. } => {
            assert_eq!(*side, Side::Server);
            assert!(reason.contains("a second Certificate"), "{reason}");
        }
        e => panic!("{e:?}"),
    }

    let mut o = TlsObserver::new();
    let mut ev = Vec::new();
    let mut s = record(22, &server_hello_12());
    s.extend(record(22, &server_hello_12()));
    o.feed(Side::Server, &s, &mut ev);
    assert_eq!(names(&ev), ["tls.server_hello", "tls.desync"]);
}

const POSTFIX_VERIFY_TLS13: &str = include_str!("fixtures/postfix-verify-untrusted-tls13.hex");
const POSTFIX_VERIFY_TLS12: &str = include_str!("fixtures/postfix-verify-untrusted-tls12.hex");
const OPENSSL_CLOSE_TLS13: &str = include_str!("fixtures/openssl-close-after-handshake-tls13.hex");
const OPENSSL_CLOSE_TLS12: &str = include_str!("fixtures/openssl-close-after-handshake-tls12.hex");

/// The `tls.client_gave_up` verdict (and what the client sent after the
/// handshake) is the same at every split point.
fn assert_gave_up_split_invariant(t: &Transcript, closed_first: bool) {
    let (_, whole) = observe(t);
    let want = (
        whole.client_after_handshake(),
        whole.client_gave_up(closed_first),
    );
    for (i, (_, bytes)) in t.iter().enumerate() {
        for cut in 1..bytes.len() {
            let mut o = TlsObserver::new();
            let mut ev = Vec::new();
            for (j, (side, b)) in t.iter().enumerate() {
                if i == j {
                    o.feed(*side, &b[..cut], &mut ev);
                    o.feed(*side, &b[cut..], &mut ev);
                } else {
                    o.feed(*side, b, &mut ev);
                }
            }
            let got = (o.client_after_handshake(), o.client_gave_up(closed_first));
            assert_eq!(got, want, "chunk {i} cut at {cut}");
        }
    }
}

/// Postfix 3 at `smtp_tls_security_level = verify`, trusting a CA that did
/// not issue the server's certificate: it completes the handshake, logs
/// "Server certificate not verified", says QUIT over TLS (one record: 6
/// bytes of text) and sends close_notify.
#[test]
fn postfix_verify_failure_is_a_client_that_gave_up() {
    for (hex, version, quit_record) in [
        (POSTFIX_VERIFY_TLS13, "TLSv1.3", 6 + 1 + 16),
        (POSTFIX_VERIFY_TLS12, "TLSv1.2", 8 + 6 + 16),
    ] {
        let t = fixture(hex);
        let (_, o) = observe(&t);
        let a = o.client_after_handshake().expect("handshake complete");
        assert_eq!(a.records, 1, "{version}: {a:?}");
        assert_eq!(a.first_len, quit_record, "{version}: {a:?}");
        assert_eq!(a.first_text_max, Some(QUIT_TEXT), "{version}: {a:?}");
        assert!(!o.is_done(), "{version}: still watching for a command");
        // Whoever closed first: the client said QUIT and nothing else.
        for closed_first in [false, true] {
            match o.client_gave_up(closed_first) {
                Some(TlsEvent::ClientGaveUp {
                    version: v,
                    sent,
                    record_bytes,
                    ..
                }) => {
                    assert_eq!(v, version);
                    assert_eq!(sent, "quit");
                    assert_eq!(record_bytes, Some(quit_record));
                }
                other => panic!("{version}: {other:?}"),
            }
        }
        assert_split_invariant(&t);
        assert_gave_up_split_invariant(&t, false);
    }
}

/// `openssl s_client -starttls smtp </dev/null`: close_notify right after
/// the handshake (in TLS 1.3 an encrypted 19-byte record, in TLS 1.2 an
/// encrypted alert record), no application data.
#[test]
fn openssl_close_after_handshake_is_a_client_that_gave_up() {
    for hex in [OPENSSL_CLOSE_TLS13, OPENSSL_CLOSE_TLS12] {
        let t = fixture(hex);
        let (_, o) = observe(&t);
        let a = o.client_after_handshake().expect("handshake complete");
        assert_eq!(a.records, 0, "{a:?}");
        assert!(a.alert, "{a:?}");
        // Its alert says the client ended it, whoever's FIN came first.
        match o.client_gave_up(false) {
            Some(TlsEvent::ClientGaveUp { sent, alert, .. }) => {
                assert_eq!(sent, "nothing");
                assert!(alert);
            }
            other => panic!("{other:?}"),
        }
        assert_split_invariant(&t);
        assert_gave_up_split_invariant(&t, false);
    }
}

/// Healthy sessions: the client's EHLO is longer than a QUIT; the observer
/// stops there and there is no verdict.
#[test]
fn a_client_that_sends_ehlo_did_not_give_up() {
    let pki = pki();
    for v12_only in [false, true] {
        let t = rustls_transcript(
            &pki,
            &Setup {
                v12_only,
                ..Setup::default()
            },
        );
        let (_, o) = observe(&t);
        let a = o.client_after_handshake().expect("handshake complete");
        assert_eq!(a.records, 1, "{a:?}");
        // "EHLO client.example\r\n" is 21 bytes.
        assert_eq!(a.first_text_max, Some(21), "{a:?}");
        assert!(o.is_done());
        assert_eq!(o.client_gave_up(true), None);
    }
    // TLS 1.0 with a CBC suite: the record's text size is not known, so one
    // record is never taken for a QUIT.
    let (_, o) = observe(&fixture(OPENSSL_TLS10_CBC));
    let a = o.client_after_handshake().expect("handshake complete");
    assert!(a.records >= 1 && a.first_text_max.is_none(), "{a:?}");
    assert!(o.is_done());
    assert_eq!(o.client_gave_up(true), None);
}

/// A handshake that did not complete (the client rejected the certificate
/// inside it) is `tls.handshake_failed`'s business, not this rule's.
#[test]
fn a_failed_handshake_is_not_a_client_that_gave_up() {
    let pki = pki();
    for v12_only in [false, true] {
        let t = rustls_transcript(
            &pki,
            &Setup {
                v12_only,
                client_trusts: false,
                ..Setup::default()
            },
        );
        let (_, o) = observe(&t);
        assert_eq!(o.client_after_handshake(), None);
        assert_eq!(o.client_gave_up(true), None);
    }
}

/// Synthetic TLS 1.3 records after a complete handshake: an alert-sized
/// record from the server first means the server ended it; a record from
/// the client with room for more than QUIT is a command.
#[test]
fn tls13_record_sizes_after_the_handshake() {
    let sh = {
        // ServerHello for TLS 1.3 (TLS_AES_128_GCM_SHA256, supported_versions 0x0304).
        let mut b = vec![0x03, 0x03];
        b.extend([0u8; 32]);
        b.push(0); // empty session id
        b.extend([0x13, 0x01, 0x00]);
        let ext = [0x00, 0x2b, 0x00, 0x02, 0x03, 0x04];
        b.extend((ext.len() as u16).to_be_bytes());
        b.extend(ext);
        record(22, &handshake(2, &b))
    };
    let ch = {
        let pki = pki();
        let t = rustls_transcript(&pki, &Setup::default());
        t[0].1.clone() // the client's first chunk: its ClientHello
    };
    let app = |n: usize| record(23, &vec![0u8; n]);
    let base = vec![
        (Side::Client, ch),
        (Side::Server, sh),
        (Side::Server, app(800)), // encrypted flight
        (Side::Client, app(53)),  // client Finished
    ];
    let verdict = |extra: &[(Side, Vec<u8>)]| {
        let mut t = base.clone();
        t.extend(extra.iter().cloned());
        let (_, o) = observe(&t);
        (o.client_after_handshake(), o.client_gave_up(true))
    };
    // Nothing after the Finished, the client closed first.
    let (a, v) = verdict(&[]);
    assert_eq!(a.map(|a| a.records), Some(0));
    assert!(matches!(v, Some(TlsEvent::ClientGaveUp { .. })), "{v:?}");
    // The server alerted first: not the client's doing.
    let (a, v) = verdict(&[(Side::Server, app(19))]);
    assert!(a.is_some_and(|a| a.server_alert_first), "{a:?}");
    assert_eq!(v, None);
    // One record of 24 bytes: room for 7 bytes of text, more than QUIT.
    let (_, v) = verdict(&[(Side::Client, app(24))]);
    assert_eq!(v, None);
    // Two short records: two commands.
    let (_, v) = verdict(&[(Side::Client, app(23)), (Side::Client, app(23))]);
    assert_eq!(v, None);
    // One QUIT-sized record then the client's alert.
    let (a, v) = verdict(&[(Side::Client, app(23)), (Side::Client, app(19))]);
    assert!(a.is_some_and(|a| a.alert), "{a:?}");
    assert!(
        matches!(&v, Some(TlsEvent::ClientGaveUp { sent, alert: true, .. }) if sent == "quit"),
        "{v:?}"
    );
}

/// The suite count of the console and the diagnosis: GREASE and signalling
/// values are not counted as suites, and are said after the count.
#[test]
fn suites_in_words_counts_suites_and_names_what_is_left_out() {
    let ch = |list: &[u16]| {
        let mut o = TlsObserver::new();
        let mut ev = Vec::new();
        let mut body = vec![0x03, 0x03];
        body.extend([7u8; 32]);
        body.push(0);
        body.extend(((list.len() * 2) as u16).to_be_bytes());
        for s in list {
            body.extend(s.to_be_bytes());
        }
        body.extend([1, 0]); // null compression
        body.extend([0, 0]); // no extensions
        o.feed(Side::Client, &record(22, &handshake(1, &body)), &mut ev);
        match ev.into_iter().next() {
            Some(TlsEvent::ClientHello(h)) => h,
            other => panic!("{other:?}"),
        }
    };
    let h = ch(&[0x1301, 0xc02f, 0x00ff]);
    assert_eq!(h.cipher_suites.len(), 3);
    assert_eq!(
        h.suites_in_words(),
        "2 cipher suites (+ TLS_EMPTY_RENEGOTIATION_INFO_SCSV signalling value)"
    );
    // GREASE (0x?a?a), both SCSVs, a duplicate SCSV said once.
    let h = ch(&[
        0x2a2a, 0x1301, 0x1302, 0xc02f, 0x00ff, 0x5600, 0xdada, 0x00ff,
    ]);
    assert_eq!(
        h.suites_in_words(),
        "3 cipher suites (+ TLS_EMPTY_RENEGOTIATION_INFO_SCSV and TLS_FALLBACK_SCSV \
         signalling values, + 2 GREASE values)"
    );
    let h = ch(&[0x1301]);
    assert_eq!(h.suites_in_words(), "1 cipher suite");
    let h = ch(&[0x0a0a, 0x1301, 0x1303]);
    assert_eq!(h.suites_in_words(), "2 cipher suites (+ 1 GREASE value)");
    // The console line and the diagnosis's evidence say the same.
    let ev = crate::event::Event::new(
        crate::event::Timestamp(std::time::UNIX_EPOCH),
        1,
        TlsEvent::ClientHello(h.clone()),
    );
    let console: Vec<String> = crate::sink::console::render(&ev)
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    assert!(
        console[0].contains("2 cipher suites (+ 1 GREASE value)"),
        "{console:?}"
    );
}
