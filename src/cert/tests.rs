//! Tests of the cert module: fields against openssl's output on the same DER
//! (fixtures/, made by fixtures/gen.sh), trust verdicts on minted chains, and
//! RFC 6125 name-matching tables.

use std::time::{Duration, SystemTime};

use super::mint::{self, Ca, LeafSpec};
use super::*;
use crate::event::{Event, EventKind, Side, Timestamp};

const RSA_CA: &[u8] = include_bytes!("fixtures/rsa2048-ca.der");
const EC_URLS: &[u8] = include_bytes!("fixtures/ec-p256-urls.der");
const WILDCARD: &[u8] = include_bytes!("fixtures/wildcard-rsa.der");

/// 2030-01-01T00:00:00Z: inside every fixture's validity.
fn y2030() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_893_456_000)
}

fn ctx_at(now: SystemTime, names: &[(NameSource, &str)]) -> CheckContext {
    CheckContext {
        names: names.iter().map(|(s, n)| (*s, n.to_string())).collect(),
        expiry_warning_days: 30,
        now,
    }
}

fn chain_event(events: &[CertEvent]) -> (bool, Option<String>, bool, bool, Option<String>, usize) {
    for e in events {
        if let CertEvent::Chain {
            trusted,
            error,
            order_ok,
            missing_intermediate,
            anchor,
            chain_len,
            ..
        } = e
        {
            return (
                *trusted,
                error.clone(),
                *order_ok,
                *missing_intermediate,
                anchor.clone(),
                *chain_len,
            );
        }
    }
    panic!("no cert.chain event in {events:?}");
}

fn names_event(events: &[CertEvent]) -> Vec<NameCheck> {
    for e in events {
        if let CertEvent::Names { checks, .. } = e {
            return checks.clone();
        }
    }
    panic!("no cert.names event in {events:?}");
}

// ---------------------------------------------------------------- fields

#[test]
fn rsa_ca_fields_match_openssl() {
    // Expected values copied from fixtures/rsa2048-ca.txt (openssl x509 -text -nameopt RFC2253).
    let i = parse_cert(RSA_CA).unwrap();
    assert_eq!(
        i.subject,
        "CN=Contoso Test Root RSA,O=Contoso Test\\, Ltd,C=GB"
    );
    assert_eq!(i.issuer, i.subject);
    assert_eq!(i.cn.as_deref(), Some("Contoso Test Root RSA"));
    assert_eq!(i.serial, "35872afc89480392f44647bf815d690890f5ff70");
    assert_eq!(i.not_before, "2026-11-23T21:36:07Z");
    assert_eq!(i.not_after, "2046-11-18T21:36:07Z");
    assert_eq!(i.key_type, "RSA");
    assert_eq!(i.key_bits, 2048);
    assert_eq!(i.curve, None);
    assert_eq!(i.signature_algorithm, "sha256WithRSAEncryption");
    assert_eq!(
        i.sha256,
        "9f9d70de64b6912d9610f257cb154f0d5e8d35a74a9f451f0d5a35c6dae8717d"
    );
    assert_eq!(i.sha1, "a000cc8efc096c8cdf4e6f9606669f6d250b3640");
    assert!(i.is_ca);
    assert_eq!(i.path_len, Some(1));
    assert!(i.self_signed);
    assert_eq!(i.version, 3);
    assert!(i.san_dns.is_empty() && i.san_ip.is_empty() && i.eku.is_empty());
}

#[test]
fn ec_leaf_with_urls_fields_match_openssl() {
    // Expected values copied from fixtures/ec-p256-urls.txt.
    let i = parse_cert(EC_URLS).unwrap();
    assert_eq!(i.subject, "CN=mail.contoso.test,O=Contoso");
    assert_eq!(
        i.issuer,
        "CN=Contoso Test Root RSA,O=Contoso Test\\, Ltd,C=GB"
    );
    assert_eq!(i.cn.as_deref(), Some("mail.contoso.test"));
    // openssl: Serial Number 2870136116 (0xab12cd34); DER carries a leading 00.
    assert_eq!(i.serial, "ab12cd34");
    assert_eq!(i.not_before, "2026-11-23T21:36:07Z");
    assert_eq!(i.not_after, "2036-11-20T21:36:07Z");
    assert_eq!(i.key_type, "EC");
    assert_eq!(i.key_bits, 256);
    assert_eq!(i.curve.as_deref(), Some("P-256"));
    assert_eq!(i.signature_algorithm, "sha256WithRSAEncryption");
    assert_eq!(i.san_dns, vec!["mail.contoso.test", "smtp.contoso.test"]);
    assert_eq!(i.san_ip, vec!["192.0.2.25", "2001:db8::25"]);
    assert_eq!(i.eku, vec!["serverAuth", "clientAuth"]);
    assert_eq!(i.crl_urls, vec!["http://crl.contoso.test/root.crl"]);
    assert_eq!(i.ocsp_urls, vec!["http://ocsp.contoso.test"]);
    assert_eq!(i.ca_issuer_urls, vec!["http://pki.contoso.test/root.crt"]);
    assert_eq!(
        i.sha256,
        "1da140f4b8ad66165b9903cb37a6c11bbef0e440562a8d2b3e2615f47c128c4a"
    );
    assert_eq!(i.sha1, "4e03f9c93d184d679f8ba4f7df7eed68f2353158");
    assert!(!i.is_ca);
    assert_eq!(i.path_len, None);
    assert!(!i.self_signed);
    assert_eq!(i.version, 3);
}

#[test]
fn wildcard_fields_match_openssl() {
    // Expected values copied from fixtures/wildcard-rsa.txt.
    let i = parse_cert(WILDCARD).unwrap();
    assert_eq!(i.subject, "CN=*.outbound.contoso.test");
    assert_eq!(
        i.san_dns,
        vec!["*.outbound.contoso.test", "outbound.contoso.test"]
    );
    assert_eq!(i.serial, "0417e7ed6976c0b63f7650892305fe4af9100468");
    assert_eq!(i.key_type, "RSA");
    assert_eq!(i.key_bits, 2048);
    assert_eq!(
        i.sha256,
        "109b21e2030f19defd1fb9cdb8d9280861833972e083660e70299580a6290894"
    );
    assert_eq!(i.sha1, "5b1fa00c8ed8308316ed40512875cde9231333cd");
    assert_eq!(i.eku, vec!["serverAuth"]);
    assert!(i.self_signed);
}

#[test]
fn garbage_and_truncations_are_errors_not_panics() {
    assert!(parse_cert(b"").is_err());
    assert!(parse_cert(b"\x30\x82\xff\xff hello").is_err());
    for cut in 0..EC_URLS.len() {
        assert!(parse_cert(&EC_URLS[..cut]).is_err(), "prefix {cut} parsed");
    }
    let mut trailing = EC_URLS.to_vec();
    trailing.push(0);
    assert!(parse_cert(&trailing).is_err());
    // Flip bits all over: never a panic, whatever the outcome.
    for pos in (0..EC_URLS.len()).step_by(7) {
        let mut b = EC_URLS.to_vec();
        b[pos] ^= 0x5a;
        let _ = parse_cert(&b);
        let store = TrustStore::from_ders(&[RSA_CA.to_vec()]).unwrap();
        let _ = analyze_chain(&[b], Side::Server, &ctx_at(y2030(), &[]), &store);
    }
}

#[test]
fn parse_error_event_for_bad_cert_in_chain() {
    let store = TrustStore::from_ders(&[RSA_CA.to_vec()]).unwrap();
    let ev = analyze_chain(
        &[EC_URLS.to_vec(), b"junk".to_vec()],
        Side::Server,
        &ctx_at(y2030(), &[]),
        &store,
    );
    assert!(matches!(ev[0], CertEvent::Info { index: 0, .. }));
    assert!(matches!(ev[1], CertEvent::ParseError { index: 1, .. }));
    let (_, _, order_ok, _, _, len) = chain_event(&ev);
    assert!(!order_ok);
    assert_eq!(len, 2);
}

#[test]
fn info_event_json_is_flat_and_round_trips() {
    let store = TrustStore::from_ders(&[RSA_CA.to_vec()]).unwrap();
    let ev = analyze_chain(
        &[EC_URLS.to_vec()],
        Side::Server,
        &ctx_at(y2030(), &[(NameSource::Upstream, "mail.contoso.test")]),
        &store,
    );
    let e = Event::new(Timestamp(y2030()), 7, ev[0].clone());
    let json = serde_json::to_value(&e).unwrap();
    assert_eq!(json["event"], "cert.info");
    assert_eq!(json["session"], 7);
    assert_eq!(json["side"], "server");
    assert_eq!(json["index"], 0);
    assert_eq!(json["sha1"], "4e03f9c93d184d679f8ba4f7df7eed68f2353158");
    assert_eq!(json["days_left"], 2515); // 2030-01-01 .. 2036-11-20T21:36:07Z
    assert_eq!(json["expired"], false);
    let back: Event = serde_json::from_value(json).unwrap();
    match back.kind {
        EventKind::Cert(CertEvent::Info { info, .. }) => assert_eq!(info.serial, "ab12cd34"),
        other => panic!("round trip gave {other:?}"),
    }
    for e in &ev {
        let line = serde_json::to_string(&Event::new(Timestamp(y2030()), 1, e.clone())).unwrap();
        let back: Event = serde_json::from_str(&line).unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), line);
    }
}

#[test]
fn validity_flags_at_now() {
    let store = TrustStore::default();
    let ctx = |now| ctx_at(now, &[]);
    let before = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000); // 2023
    let after = SystemTime::UNIX_EPOCH + Duration::from_secs(2_200_000_000); // 2039
                                                                             // not_after of ec-p256-urls.der is 2036-11-20T21:36:07Z = 2_110_829_767.
    let nearly = SystemTime::UNIX_EPOCH + Duration::from_secs(2_110_829_767 - 10 * 86_400 - 3_600);
    let flags = |now| match &analyze_chain(&[EC_URLS.to_vec()], Side::Server, &ctx(now), &store)[0]
    {
        CertEvent::Info {
            days_left,
            expiring,
            expired,
            not_yet_valid,
            ..
        } => (*days_left, *expiring, *expired, *not_yet_valid),
        other => panic!("{other:?}"),
    };
    let (_, expiring, expired, nyv) = flags(before);
    assert!(!expiring && !expired && nyv);
    let (days, expiring, expired, nyv) = flags(after);
    assert!(days < 0 && !expiring && expired && !nyv);
    let (days, expiring, expired, nyv) = flags(nearly);
    assert_eq!(days, 10);
    assert!(expiring && !expired && !nyv);
}

// ---------------------------------------------------------------- trust

#[test]
fn openssl_made_chain_is_trusted_with_its_root() {
    let store = TrustStore::from_ders(&[RSA_CA.to_vec()]).unwrap();
    for role in [Side::Server, Side::Client] {
        let ev = analyze_chain(&[EC_URLS.to_vec()], role, &ctx_at(y2030(), &[]), &store);
        let (trusted, error, order_ok, missing, anchor, len) = chain_event(&ev);
        assert!(trusted, "{ev:?}");
        assert_eq!(error, None);
        assert!(order_ok && !missing);
        assert_eq!(
            anchor.as_deref(),
            Some("CN=Contoso Test Root RSA,O=Contoso Test\\, Ltd,C=GB")
        );
        assert_eq!(len, 1);
    }
}

#[test]
fn minted_chain_trusted_with_root_anchor() {
    let root = Ca::new("Lab Root").unwrap();
    let issuing = root.intermediate("Lab Issuing CA").unwrap();
    let issued = issuing
        .issue(&LeafSpec::server(["mail.example.test"]))
        .unwrap();
    assert_eq!(issued.chain_der.len(), 2);
    let store = TrustStore::from_ders(&[root.der()]).unwrap();
    assert_eq!(store.len(), 1);
    let ev = analyze_chain(
        &issued.chain_der,
        Side::Server,
        &ctx_at(SystemTime::now(), &[]),
        &store,
    );
    let (trusted, error, order_ok, missing, anchor, len) = chain_event(&ev);
    assert!(trusted, "{ev:?}");
    assert_eq!(error, None);
    assert!(order_ok);
    assert!(!missing);
    assert_eq!(anchor.as_deref(), Some("CN=Lab Root,O=smtptap lab"));
    assert_eq!(len, 2);
    match &ev[1] {
        CertEvent::Info { info, index: 1, .. } => {
            assert!(info.is_ca);
            assert_eq!(info.subject, "CN=Lab Issuing CA,O=smtptap lab");
            assert_eq!(info.issuer, "CN=Lab Root,O=smtptap lab");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn leaf_only_is_unknown_issuer_with_missing_intermediate() {
    let root = Ca::new("Lab Root").unwrap();
    let issuing = root.intermediate("Lab Issuing CA").unwrap();
    let issued = issuing
        .issue(&LeafSpec::server(["mail.example.test"]))
        .unwrap();
    let store = TrustStore::from_ders(&[root.der()]).unwrap();
    let ev = analyze_chain(
        &issued.chain_der[..1],
        Side::Server,
        &ctx_at(SystemTime::now(), &[]),
        &store,
    );
    let (trusted, error, order_ok, missing, anchor, _) = chain_event(&ev);
    assert!(!trusted);
    assert_eq!(error.as_deref(), Some("unknown_issuer"));
    assert!(missing);
    assert!(order_ok);
    assert_eq!(anchor, None);
}

#[test]
fn leaf_of_unknown_root_is_unknown_issuer_but_not_missing_intermediate_when_root_sent() {
    // Chain ends in a root (self-signed) that is not an anchor: nothing is missing.
    let root = Ca::new("Private Root").unwrap();
    let issued = root.issue(&LeafSpec::server(["mx.example.test"])).unwrap();
    let mut chain = issued.chain_der.clone();
    chain.push(root.der());
    let store = TrustStore::from_ders(&[Ca::new("Other Root").unwrap().der()]).unwrap();
    let ev = analyze_chain(
        &chain,
        Side::Server,
        &ctx_at(SystemTime::now(), &[]),
        &store,
    );
    let (trusted, error, order_ok, missing, _, _) = chain_event(&ev);
    assert!(!trusted);
    assert_eq!(error.as_deref(), Some("unknown_issuer"));
    assert!(order_ok);
    assert!(!missing);
}

#[test]
fn self_signed_leaf() {
    let issued = mint::self_signed(&LeafSpec::server(["exch01.contoso.local"])).unwrap();
    let store = TrustStore::new(&TrustOptions::default()).unwrap();
    let ev = analyze_chain(
        &issued.chain_der,
        Side::Server,
        &ctx_at(SystemTime::now(), &[]),
        &store,
    );
    let (trusted, error, _, missing, _, _) = chain_event(&ev);
    assert!(!trusted);
    assert_eq!(error.as_deref(), Some("self_signed"));
    assert!(!missing);
    match &ev[0] {
        CertEvent::Info { info, .. } => assert!(info.self_signed),
        other => panic!("{other:?}"),
    }
}

#[test]
fn expired_and_not_yet_valid_leaves() {
    let root = Ca::new("Lab Root").unwrap();
    let store = TrustStore::from_ders(&[root.der()]).unwrap();
    let now = SystemTime::now();
    for (days, kind) in [((-60, -1), "expired"), ((2, 30), "not_yet_valid")] {
        let spec = LeafSpec::server(["mail.example.test"]).with_days(days.0, days.1);
        let issued = root.issue(&spec).unwrap();
        let ev = analyze_chain(&issued.chain_der, Side::Server, &ctx_at(now, &[]), &store);
        let (trusted, error, _, missing, _, _) = chain_event(&ev);
        assert!(!trusted, "{kind}");
        assert_eq!(error.as_deref(), Some(kind));
        assert!(!missing);
        // Words and dates, no Rust Debug text (`CertExpired { time: UnixTime(…) }`).
        let detail = ev
            .iter()
            .find_map(|e| match e {
                CertEvent::Chain { detail, .. } => detail.clone(),
                _ => None,
            })
            .unwrap();
        let edge = if kind == "expired" {
            "not after 20"
        } else {
            "not before 20"
        };
        assert!(
            detail.contains(edge) && detail.contains("checked at 20"),
            "{detail}"
        );
        assert!(
            !detail.contains('{') && !detail.contains("UnixTime"),
            "{detail}"
        );
        match &ev[0] {
            CertEvent::Info {
                expired,
                not_yet_valid,
                ..
            } => {
                assert_eq!(*expired, kind == "expired");
                assert_eq!(*not_yet_valid, kind == "not_yet_valid");
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn wrong_order_is_still_trusted_but_flagged() {
    let root = Ca::new("Lab Root").unwrap();
    let i1 = root.intermediate("Lab Policy CA").unwrap();
    let i2 = i1.intermediate("Lab Issuing CA").unwrap();
    let issued = i2.issue(&LeafSpec::server(["mail.example.test"])).unwrap();
    assert_eq!(issued.chain_der.len(), 3);
    let store = TrustStore::from_ders(&[root.der()]).unwrap();
    let ctx = ctx_at(SystemTime::now(), &[]);
    let (trusted, _, order_ok, _, _, _) = chain_event(&analyze_chain(
        &issued.chain_der,
        Side::Server,
        &ctx,
        &store,
    ));
    assert!(trusted && order_ok);
    let swapped = vec![
        issued.chain_der[0].clone(),
        issued.chain_der[2].clone(),
        issued.chain_der[1].clone(),
    ];
    let (trusted, error, order_ok, missing, _, _) =
        chain_event(&analyze_chain(&swapped, Side::Server, &ctx, &store));
    assert!(trusted);
    assert_eq!(error, None);
    assert!(!order_ok);
    assert!(!missing);
}

#[test]
fn bad_signature_same_issuer_name_different_key() {
    let root = Ca::new("Lab Root").unwrap();
    let impostor = Ca::new("Lab Root").unwrap();
    assert_eq!(
        parse_cert(&root.der()).unwrap().subject,
        parse_cert(&impostor.der()).unwrap().subject
    );
    let issued = impostor
        .issue(&LeafSpec::server(["mail.example.test"]))
        .unwrap();
    let store = TrustStore::from_ders(&[root.der()]).unwrap();
    let ev = analyze_chain(
        &issued.chain_der,
        Side::Server,
        &ctx_at(SystemTime::now(), &[]),
        &store,
    );
    let (trusted, error, _, missing, _, _) = chain_event(&ev);
    assert!(!trusted);
    assert_eq!(error.as_deref(), Some("bad_signature"), "{ev:?}");
    assert!(!missing);
}

#[test]
fn client_only_certificate_presented_by_a_server_is_wrong_usage() {
    let root = Ca::new("Lab Root").unwrap();
    let issued = root
        .issue(&LeafSpec::client(["relay.example.test"]))
        .unwrap();
    let store = TrustStore::from_ders(&[root.der()]).unwrap();
    let ctx = ctx_at(SystemTime::now(), &[]);
    let (trusted, error, ..) = chain_event(&analyze_chain(
        &issued.chain_der,
        Side::Server,
        &ctx,
        &store,
    ));
    assert!(!trusted);
    assert_eq!(error.as_deref(), Some("wrong_usage"));
    let (trusted, ..) = chain_event(&analyze_chain(
        &issued.chain_der,
        Side::Client,
        &ctx,
        &store,
    ));
    assert!(trusted);
}

#[test]
fn empty_chain_is_reported_not_panicked() {
    let ev = analyze_chain(
        &[],
        Side::Server,
        &ctx_at(y2030(), &[]),
        &TrustStore::default(),
    );
    assert_eq!(ev.len(), 1);
    let (trusted, error, order_ok, missing, _, len) = chain_event(&ev);
    assert!(!trusted && order_ok && !missing);
    assert_eq!(error.as_deref(), Some("other"));
    assert_eq!(len, 0);
}

#[test]
fn mozilla_roots_load() {
    let store = TrustStore::new(&TrustOptions::default()).unwrap();
    assert!(store.len() > 100, "only {} roots", store.len());
    let none = TrustStore::new(&TrustOptions {
        mozilla: false,
        system: false,
        ca_files: vec![],
    })
    .unwrap();
    assert!(none.is_empty());
}

fn temp_file(name: &str, contents: &[u8]) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("smtptap-cert-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

#[test]
fn ca_files_load_and_errors_name_the_file() {
    let root = Ca::new("File Root").unwrap();
    let other = Ca::new("Second Root").unwrap();
    let good = temp_file(
        "good.pem",
        format!("{}{}", root.pem(), other.pem()).as_bytes(),
    );
    let der = temp_file("one.der", &root.der());
    let store = TrustStore::new(&TrustOptions {
        mozilla: false,
        system: false,
        ca_files: vec![good, der],
    })
    .unwrap();
    assert_eq!(store.len(), 3);

    let garbage = temp_file("garbage.pem", b"this is not a certificate\n");
    let err = TrustStore::new(&TrustOptions {
        mozilla: false,
        system: false,
        ca_files: vec![garbage.clone()],
    })
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&garbage.display().to_string()), "{msg}");
    assert!(msg.contains("no certificate found"), "{msg}");

    let broken = temp_file(
        "broken.pem",
        b"-----BEGIN CERTIFICATE-----\nMIIBzzCCAXWgAwIBAgI=\n-----END CERTIFICATE-----\n",
    );
    let msg = TrustStore::new(&TrustOptions {
        mozilla: false,
        system: false,
        ca_files: vec![broken.clone()],
    })
    .unwrap_err()
    .to_string();
    assert!(msg.contains(&broken.display().to_string()), "{msg}");
    assert!(msg.contains("certificate #0"), "{msg}");

    let missing = std::path::PathBuf::from("/nonexistent/smtptap/ca.pem");
    let msg = TrustStore::new(&TrustOptions {
        mozilla: false,
        system: false,
        ca_files: vec![missing],
    })
    .unwrap_err()
    .to_string();
    assert!(msg.contains("/nonexistent/smtptap/ca.pem"), "{msg}");
    assert!(msg.contains("cannot read"), "{msg}");
}

// ---------------------------------------------------------------- mint

#[test]
fn mint_leaf_spec_fields_are_honoured() {
    let root = Ca::new("Lab Root").unwrap();
    let mut spec = LeafSpec::server(["mail.example.test", "192.0.2.7"]);
    spec.client_auth = true;
    spec.crl_urls = vec!["http://crl.example.test/lab.crl".into()];
    spec.ocsp_url = Some("http://ocsp.example.test".into());
    spec.ca_issuers_url = Some("http://pki.example.test/lab.crt".into());
    let issued = root.issue(&spec).unwrap();
    let i = parse_cert(&issued.chain_der[0]).unwrap();
    assert_eq!(i.cn.as_deref(), Some("mail.example.test"));
    assert_eq!(i.san_dns, vec!["mail.example.test"]);
    assert_eq!(i.san_ip, vec!["192.0.2.7"]);
    assert_eq!(i.eku, vec!["serverAuth", "clientAuth"]);
    assert_eq!(i.crl_urls, vec!["http://crl.example.test/lab.crl"]);
    assert_eq!(i.ocsp_urls, vec!["http://ocsp.example.test"]);
    assert_eq!(i.ca_issuer_urls, vec!["http://pki.example.test/lab.crt"]);
    assert_eq!(i.key_type, "EC");
    assert_eq!(i.curve.as_deref(), Some("P-256"));
    assert_eq!(i.signature_algorithm, "ecdsa-with-SHA256");
    assert!(!i.is_ca);
    assert!(issued
        .key_pem()
        .starts_with("-----BEGIN PRIVATE KEY-----\n"));
    assert!(issued
        .chain_pem()
        .starts_with("-----BEGIN CERTIFICATE-----\n"));
    let no_cn = mint::self_signed(&LeafSpec::server(["a.example.test"]).with_cn(None)).unwrap();
    assert_eq!(parse_cert(&no_cn.chain_der[0]).unwrap().cn, None);
}

#[test]
fn minted_pem_is_readable_by_openssl() {
    let root = Ca::new("Lab Root").unwrap();
    let issued = root
        .issue(&LeafSpec::server(["mail.example.test"]))
        .unwrap();
    let path = temp_file("minted.pem", issued.chain_pem().as_bytes());
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha1", "-in"])
        .arg(&path)
        .output()
        .expect("openssl not found: apt-get install -y openssl");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let thumb = parse_cert(&issued.chain_der[0]).unwrap().sha1;
    assert_eq!(
        text.trim(),
        format!(
            "sha1 Fingerprint={}",
            colon_hex(&thumb.to_ascii_uppercase())
        )
    );
}

fn colon_hex(s: &str) -> String {
    s.as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(":")
}

// ---------------------------------------------------------------- names

#[test]
fn rfc6125_name_table() {
    let cases: &[(&str, &str, bool)] = &[
        ("mail.example.com", "mail.example.com", true),
        ("MAIL.Example.COM", "mail.example.com", true),
        ("mail.example.com", "Mail.Example.Com", true),
        ("mail.example.com.", "mail.example.com", true),
        ("mail.example.com", "mail.example.com.", true),
        ("mail.example.com", "mail2.example.com", false),
        ("mail.example.com", "example.com", false),
        ("*.example.com", "mail.example.com", true),
        ("*.example.com", "MAIL.EXAMPLE.COM.", true),
        ("*.example.com", "example.com", false),
        ("*.example.com", "a.b.example.com", false),
        ("*.example.com", ".example.com", false),
        ("*.example.com", "*.example.com", false),
        ("*.com", "example.com", false),
        ("*", "example", false),
        ("*.", "example", false),
        ("f*o.example.com", "foo.example.com", false),
        ("*oo.example.com", "foo.example.com", false),
        ("fo*.example.com", "foo.example.com", false),
        ("mail.*.example.com", "mail.a.example.com", false),
        ("*.*.example.com", "a.b.example.com", false),
        ("*.xn--mnchen-3ya.de", "mail.xn--mnchen-3ya.de", true),
        ("xn--bcher-kva.example", "xn--bcher-kva.example", true),
        ("xn--bcher-kva.example", "bücher.example", false),
        ("*.co.uk", "example.co.uk", true), // no public-suffix list: only single labels refused
        ("", "", false),
        ("example.com", "", false),
        ("mail..example.com", "mail..example.com", false),
    ];
    for (pattern, name, want) in cases {
        assert_eq!(
            name_matches(pattern, name),
            *want,
            "name_matches({pattern:?}, {name:?})"
        );
    }
}

fn info_with(dns: &[&str], ips: &[&str], cn: Option<&str>) -> CertInfo {
    let mut i = parse_cert(EC_URLS).unwrap();
    i.san_dns = dns.iter().map(|s| s.to_string()).collect();
    i.san_ip = ips.iter().map(|s| s.to_string()).collect();
    i.cn = cn.map(String::from);
    i
}

#[test]
fn names_prefer_sans_and_fall_back_to_cn_only_without_dns_sans() {
    let src = NameSource::Expected;
    let check = |info: &CertInfo, name: &str| {
        check_names(info, &[(src, name.to_string())])
            .pop()
            .unwrap()
            .by
    };
    // DNS SANs present: the CN is ignored.
    let i = info_with(&["*.contoso.test"], &[], Some("legacy.example.org"));
    assert_eq!(
        check(&i, "mail.contoso.test").as_deref(),
        Some("DNS:*.contoso.test")
    );
    assert_eq!(check(&i, "legacy.example.org"), None);
    // No DNS SAN at all (an IP SAN does not count): CN is used.
    let i = info_with(&[], &["192.0.2.1"], Some("mail.contoso.test"));
    assert_eq!(
        check(&i, "mail.contoso.test").as_deref(),
        Some("CN:mail.contoso.test")
    );
    // IP names compare against IP SANs only, never DNS SANs or CN.
    assert_eq!(check(&i, "192.0.2.1").as_deref(), Some("IP:192.0.2.1"));
    let i = info_with(&["192.0.2.9"], &["2001:db8::25"], Some("192.0.2.9"));
    assert_eq!(check(&i, "192.0.2.9"), None);
    assert_eq!(
        check(&i, "2001:DB8:0:0:0:0:0:25").as_deref(),
        Some("IP:2001:db8::25")
    );
    assert_eq!(
        check(&i, "[2001:db8::25]").as_deref(),
        Some("IP:2001:db8::25")
    );
}

#[test]
fn analyze_chain_reports_each_name_with_its_source() {
    let store = TrustStore::from_ders(&[RSA_CA.to_vec()]).unwrap();
    let ctx = ctx_at(
        y2030(),
        &[
            (NameSource::Upstream, "smtp.contoso.test"),
            (NameSource::Banner, "exch01.contoso.local"),
            (NameSource::Sni, "192.0.2.25"),
        ],
    );
    let checks = names_event(&analyze_chain(
        &[EC_URLS.to_vec()],
        Side::Server,
        &ctx,
        &store,
    ));
    assert_eq!(
        checks,
        vec![
            NameCheck {
                source: NameSource::Upstream,
                name: "smtp.contoso.test".into(),
                matched: true,
                by: Some("DNS:smtp.contoso.test".into()),
            },
            NameCheck {
                source: NameSource::Banner,
                name: "exch01.contoso.local".into(),
                matched: false,
                by: None,
            },
            NameCheck {
                source: NameSource::Sni,
                name: "192.0.2.25".into(),
                matched: true,
                by: Some("IP:192.0.2.25".into()),
            },
        ]
    );
    let json = serde_json::to_value(&checks[0]).unwrap();
    assert_eq!(json["source"], "upstream");
    // Wildcard fixture: the CN is a wildcard too, but SANs decide.
    let ctx = ctx_at(
        y2030(),
        &[(NameSource::Expected, "mx1.outbound.contoso.test")],
    );
    let checks = names_event(&analyze_chain(
        &[WILDCARD.to_vec()],
        Side::Server,
        &ctx,
        &store,
    ));
    assert_eq!(checks[0].by.as_deref(), Some("DNS:*.outbound.contoso.test"));
}

// ---------------------------------------------------------------- mint: loaded CA, image, caps

const INTERCEPT_CA_PEM: &str = include_str!("fixtures/intercept-ca.pem");
const INTERCEPT_CA_KEY: &str = include_str!("fixtures/intercept-ca.key.pem");

#[test]
fn openssl_made_ca_loaded_from_pem_issues_chaining_leaves() {
    let ca = Ca::from_pem(INTERCEPT_CA_PEM, INTERCEPT_CA_KEY).unwrap();
    let root_info = parse_cert(&ca.der()).unwrap();
    assert_eq!(
        root_info.subject,
        "CN=Contoso Intercept CA (TEST ONLY),O=Contoso Lab,C=GB"
    );
    let issued = ca.issue(&LeafSpec::server(["mail.contoso.test"])).unwrap();
    // A root CA: the chain to send is the leaf alone.
    assert_eq!(issued.chain_der.len(), 1);
    let store = TrustStore::from_ders(&[ca.der()]).unwrap();
    let (trusted, error, ..) = chain_event(&analyze_chain(
        &issued.chain_der,
        Side::Server,
        &ctx_at(SystemTime::now(), &[]),
        &store,
    ));
    assert!(trusted, "{error:?}");
    // OpenSSL agrees (it also checks AKI/SKI consistency).
    let ca_path = temp_file("intercept-ca.pem", INTERCEPT_CA_PEM.as_bytes());
    let leaf_path = temp_file("intercept-leaf.pem", issued.chain_pem().as_bytes());
    let out = std::process::Command::new("openssl")
        .args(["verify", "-purpose", "sslserver", "-CAfile"])
        .arg(&ca_path)
        .arg(&leaf_path)
        .output()
        .expect("openssl not found: apt-get install -y openssl");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains(": OK"), "{text}");

    assert!(Ca::from_pem("garbage", INTERCEPT_CA_KEY).is_err());
    assert!(Ca::from_pem(INTERCEPT_CA_PEM, "garbage").is_err());
}

#[test]
fn minted_ca_round_trips_through_pem() {
    let root = Ca::new("Round Trip Root").unwrap();
    let loaded = Ca::from_pem(&root.pem(), &root.key_pem()).unwrap();
    assert_eq!(loaded.der(), root.der());
    let issued = loaded.issue(&LeafSpec::server(["x.example.test"])).unwrap();
    let store = TrustStore::from_ders(&[root.der()]).unwrap();
    let ctx = ctx_at(SystemTime::now(), &[]);
    let (trusted, ..) = chain_event(&analyze_chain(
        &issued.chain_der,
        Side::Server,
        &ctx,
        &store,
    ));
    assert!(trusted);
}

#[test]
fn leaf_in_the_image_of_an_upstream_certificate() {
    let upstream = parse_cert(EC_URLS).unwrap();
    let spec = LeafSpec::image_of(&upstream);
    assert_eq!(
        spec.names,
        vec![
            "mail.contoso.test",
            "smtp.contoso.test",
            "192.0.2.25",
            "2001:db8::25"
        ]
    );
    assert!(spec.server_auth && spec.client_auth);
    assert!(spec.crl_urls.is_empty());
    let ca = Ca::new("Intercept CA").unwrap();
    let issued = ca.issue(&spec).unwrap();
    let copy = parse_cert(&issued.chain_der[0]).unwrap();
    assert_eq!(copy.san_dns, upstream.san_dns);
    assert_eq!(copy.san_ip, upstream.san_ip);
    assert_eq!(copy.cn, upstream.cn);
    assert_eq!(copy.not_before, upstream.not_before);
    assert_eq!(copy.not_after, upstream.not_after);
    assert_eq!(copy.eku, upstream.eku);
    assert_ne!(copy.sha256, upstream.sha256);
}

#[test]
fn overlong_chain_is_capped() {
    let root = Ca::new("Lab Root").unwrap();
    let issued = root
        .issue(&LeafSpec::server(["mail.example.test"]))
        .unwrap();
    let mut chain = issued.chain_der.clone();
    for _ in 0..40 {
        chain.push(root.der());
    }
    let store = TrustStore::from_ders(&[root.der()]).unwrap();
    let ev = analyze_chain(
        &chain,
        Side::Server,
        &ctx_at(SystemTime::now(), &[]),
        &store,
    );
    let infos = ev
        .iter()
        .filter(|e| matches!(e, CertEvent::Info { .. }))
        .count();
    assert_eq!(infos, MAX_CHAIN);
    assert!(ev.iter().any(|e| matches!(
        e,
        CertEvent::ParseError { index, reason, .. } if *index == MAX_CHAIN && reason.contains("41 certificates")
    )));
    let (trusted, _, _, _, _, len) = chain_event(&ev);
    assert!(trusted);
    assert_eq!(len, 41);
}

#[test]
fn self_signed_ca_certificate_as_leaf() {
    // The wildcard fixture is self-signed with CA:TRUE (openssl req -x509 default).
    let ctx = ctx_at(y2030(), &[]);
    let kind = |store: &TrustStore| {
        chain_event(&analyze_chain(
            &[WILDCARD.to_vec()],
            Side::Server,
            &ctx,
            store,
        ))
        .1
    };
    assert_eq!(kind(&TrustStore::default()).as_deref(), Some("self_signed"));
    let pinned = TrustStore::from_ders(&[WILDCARD.to_vec()]).unwrap();
    assert_eq!(kind(&pinned).as_deref(), Some("ca_used_as_leaf"));
}

#[test]
fn self_signed_leaf_pinned_as_anchor_is_trusted() {
    let issued = mint::self_signed(&LeafSpec::server(["exch01.contoso.local"])).unwrap();
    let store = TrustStore::from_ders(&issued.chain_der).unwrap();
    let ctx = ctx_at(SystemTime::now(), &[]);
    let (trusted, error, _, _, anchor, _) = chain_event(&analyze_chain(
        &issued.chain_der,
        Side::Server,
        &ctx,
        &store,
    ));
    assert!(trusted, "{error:?}");
    assert_eq!(anchor.as_deref(), Some("CN=exch01.contoso.local"));
}

#[test]
fn system_store_loads() {
    assert!(
        std::path::Path::new("/etc/ssl/certs/ca-certificates.crt").exists(),
        "no system CA bundle: apt-get install -y ca-certificates"
    );
    let store = TrustStore::new(&TrustOptions {
        mozilla: false,
        system: true,
        ca_files: vec![],
    })
    .unwrap();
    assert!(store.len() > 50, "only {} system roots", store.len());
}

#[test]
fn other_key_kinds_are_described() {
    for (kind, key_type, bits, curve, sig) in [
        (
            mint::KeyKind::EcdsaP384,
            "EC",
            384,
            Some("P-384"),
            "ecdsa-with-SHA384",
        ),
        (mint::KeyKind::Ed25519, "Ed25519", 256, None, "ED25519"),
    ] {
        let mut spec = LeafSpec::server(["k.example.test"]);
        spec.key = kind;
        let i = parse_cert(&mint::self_signed(&spec).unwrap().chain_der[0]).unwrap();
        assert_eq!(i.key_type, key_type);
        assert_eq!(i.key_bits, bits);
        assert_eq!(i.curve.as_deref(), curve);
        assert_eq!(i.signature_algorithm, sig);
    }
}

#[test]
fn random_bytes_never_panic() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(6125);
    let store = TrustStore::from_ders(&[RSA_CA.to_vec()]).unwrap();
    let ctx = ctx_at(y2030(), &[(NameSource::Sni, "mail.contoso.test")]);
    for _ in 0..300 {
        let mut chain = vec![EC_URLS.to_vec(), RSA_CA.to_vec()];
        for cert in chain.iter_mut() {
            for _ in 0..rng.gen_range(0..4) {
                let pos = rng.gen_range(0..cert.len());
                cert[pos] = rng.gen();
            }
            let cut = rng.gen_range(cert.len() - 8..=cert.len());
            cert.truncate(cut);
        }
        let len: usize = rng.gen_range(0..64);
        chain.push((0..len).map(|_| rng.gen()).collect());
        let ev = analyze_chain(&chain, Side::Server, &ctx, &store);
        assert!(ev
            .iter()
            .any(|e| matches!(e, CertEvent::Chain { chain_len: 3, .. })));
    }
}

#[test]
fn rfc4514_escaping_matches_openssl_rfc2253() {
    let ca = Ca::new("#Lab + Co, \"x\" <y>; z\\ ").unwrap();
    let ours = parse_cert(&ca.der()).unwrap().subject;
    let path = temp_file("escape.pem", ca.pem().as_bytes());
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in"])
        .arg(&path)
        .output()
        .expect("openssl not found: apt-get install -y openssl");
    assert!(out.status.success());
    let theirs = String::from_utf8(out.stdout).unwrap();
    assert_eq!(format!("subject={ours}"), theirs.trim_end_matches('\n'));
    assert_eq!(
        ours,
        "CN=\\#Lab \\+ Co\\, \\\"x\\\" \\<y\\>\\; z\\\\\\ ,O=smtptap lab"
    );
}

/// A CA file or a CRL that webpki refuses is explained in words, never as
/// webpki's Debug text (`BadDer`, `TrailingData(…)`).
#[test]
fn unusable_anchors_and_crls_are_explained_in_words() {
    let err = crate::cert::TrustStore::from_ders(&[vec![0x30, 0x03, 0x02, 0x01, 0x00]])
        .expect_err("not a certificate")
        .to_string();
    assert!(err.contains("malformed"), "{err}");
    assert!(
        !err.contains("BadDer") && !err.contains("TrailingData"),
        "{err}"
    );
    let crl = crate::cert::trust::parse_crl(&[0x30, 0x00]).expect_err("not a CRL");
    assert!(crl.starts_with("not a valid CRL: "), "{crl}");
    assert!(
        !crl.contains("BadDer") && !crl.contains('(') && !crl.contains('{'),
        "{crl}"
    );
}
