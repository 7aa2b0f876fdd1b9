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

    let mut sp = provider::default_provider();
    if setup.server_groups_384 {
        sp.kx_groups = vec![provider::kx_group::SECP384R1];
    }
    let sb = ServerConfig::builder_with_provider(Arc::new(sp))
        .with_protocol_versions(versions)
        .unwrap();
    let sb = if setup.client_auth {
        let v = WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots.clone()),
            Arc::new(provider::default_provider()),
        )
        .build()
        .unwrap();
        sb.with_client_cert_verifier(v)
    } else {
        sb.with_no_client_auth()
    };
    let scfg = sb
        .with_single_cert(
            vec![pki.leaf.clone(), pki.ca.clone()],
            key(&pki.leaf_key),
        )
        .unwrap();

    let client_roots = if setup.client_trusts {
        roots
    } else {
        RootCertStore::empty()
    };
    let cb = ClientConfig::builder_with_provider(Arc::new(provider::default_provider()))
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
        TlsEvent::ClientHello {
            sni,
            max_version,
            record_version,
            sslv2_format,
            ja4,
            cipher_suites,
            ..
        } => {
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
            from,
            count,
            ders,
            bytes,
        } => {
            assert_eq!(*from, Side::Server);
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
    assert_eq!(ev[4], TlsEvent::ChangeCipherSpec { from: Side::Client });
    assert_eq!(ev[5], TlsEvent::ChangeCipherSpec { from: Side::Server });
    match &ev[6] {
        TlsEvent::Established {
            version,
            cipher_suite,
        } => {
            assert_eq!(version, "TLSv1.2");
            assert!(cipher_suite.starts_with("TLS_ECDHE_ECDSA_WITH_"), "{cipher_suite}");
        }
        e => panic!("{e:?}"),
    }
    assert!(o.is_done() && !o.is_desynced());
    let st = o.stats();
    let sent_c: usize = t.iter().filter(|c| c.0 == Side::Client).map(|c| c.1.len()).sum();
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
        TlsEvent::ClientHello {
            supported_versions,
            max_version,
            key_share_groups,
            ja4,
            ..
        } => {
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
    assert!(matches!(&ev[2], TlsEvent::CertificateHidden { version, note }
        if version == "TLSv1.3" && note.contains("encrypted")));
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
    assert!(matches!(&ev[1], TlsEvent::HelloRetryRequest { version, group, .. }
        if version == "TLSv1.3" && group.as_deref() == Some("secp384r1")));
    assert!(matches!(&ev[2], TlsEvent::ClientHello { key_share_groups, .. }
        if key_share_groups == &["secp384r1"]));
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
            assert!(cert_types.contains(&"ecdsa_sign".to_string()), "{cert_types:?}");
            assert!(signature_algorithms.contains(&"ecdsa_secp256r1_sha256".to_string()));
            assert_eq!(*ca_names, 1);
        }
        _ => unreachable!(),
    }
    let certs: Vec<_> = ev
        .iter()
        .filter_map(|e| match e {
            TlsEvent::Certificate { from, ders, .. } => Some((*from, ders.clone())),
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
            from: Side::Client,
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
    assert!(matches!(&ev[3], TlsEvent::Alert { from: Side::Client, encrypted: true, note: Some(_), .. }));
}
