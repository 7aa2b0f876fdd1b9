//! Unit tests of the rules on hand-built typed events (the end-to-end tests,
//! one per finding over real sockets, are in tests/findings.rs).

use super::*;
use crate::cert::{CertEvent, CertInfo, NameCheck, NameSource};
use crate::event::{Leg, SessionEvent, Side, Timestamp};
use crate::smtp::SmtpEvent;
use crate::tls::TlsEvent;

fn ev(kind: impl Into<crate::event::EventKind>) -> Event {
    Event::new(Timestamp::now(), 1, kind)
}

fn ids_of(f: &[Finding]) -> Vec<&str> {
    f.iter().map(|f| f.id.as_str()).collect()
}

fn find<'a>(f: &'a [Finding], id: &str) -> &'a Finding {
    f.iter()
        .find(|f| f.id == id)
        .unwrap_or_else(|| panic!("no {id} in {f:#?}"))
}

fn info(cn: &str) -> CertInfo {
    CertInfo {
        subject: format!("CN={cn}"),
        cn: Some(cn.into()),
        san_dns: vec![cn.into()],
        san_ip: vec![],
        issuer: "CN=Some Issuing CA".into(),
        serial: "01".into(),
        not_before: "2020-01-01T00:00:00Z".into(),
        not_after: "2021-01-01T00:00:00Z".into(),
        key_type: "EC".into(),
        key_bits: 256,
        curve: Some("P-256".into()),
        signature_algorithm: "ecdsa-with-SHA256".into(),
        sha256: "00".repeat(32),
        sha1: "400cf5da5117ad58968520c19ae837b1c898fcd1".into(),
        is_ca: false,
        path_len: None,
        eku: vec!["serverAuth".into()],
        crl_urls: vec![],
        ocsp_urls: vec![],
        ca_issuer_urls: vec![],
        self_signed: false,
        version: 3,
    }
}

/// A STARTTLS session whose TLS 1.0 server presented an expired leaf without
/// its intermediate, the expected name or revocation URLs, every TLS and certificate fact on `leg`.
fn bad_server_cert_on(leg: Option<Leg>) -> Vec<Event> {
    let mut out = vec![ev(SessionEvent::TlsStarted {
        after: "starttls".into(),
    })];
    let tls_and_cert: Vec<crate::event::EventKind> = vec![
        TlsEvent::ServerHello {
            version: "TLSv1.0".into(),
            legacy_version: "TLSv1.0".into(),
            cipher_suite: "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256".into(),
            group: None,
            alpn: None,
            extensions: vec![],
            resumed: false,
        }
        .into(),
        CertEvent::Info {
            side: Side::Server,
            index: 0,
            info: Box::new(info("mx.example.test")),
            days_left: -400,
            expiring: false,
            expired: true,
            not_yet_valid: false,
        }
        .into(),
        CertEvent::Chain {
            side: Side::Server,
            trusted: false,
            error: Some("unknown_issuer".into()),
            detail: None,
            order_ok: true,
            missing_intermediate: true,
            anchor: None,
            chain_len: 1,
        }
        .into(),
        CertEvent::Names {
            side: Side::Server,
            checks: vec![NameCheck {
                source: NameSource::Expected,
                name: "mail.partner.example".into(),
                matched: false,
                by: None,
            }],
        }
        .into(),
        CertEvent::Crl {
            side: Side::Server,
            url: "http://crl.example.test/ca.crl".into(),
            ok: false,
            error: Some("refused".into()),
            detail: Some("Connection refused (os error 111)".into()),
            bytes: 0,
        }
        .into(),
        TlsEvent::Established {
            version: "TLSv1.0".into(),
            cipher_suite: "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256".into(),
        }
        .into(),
    ];
    out.extend(tls_and_cert.into_iter().map(|k| ev(k).on_leg(leg)));
    out
}

const SERVER_FACTS: &[&str] = &[
    ids::CERT_EXPIRED,
    ids::CERT_MISSING_INTERMEDIATE,
    ids::CERT_NAME_MISMATCH,
    ids::CERT_CRL_UNAVAILABLE,
    ids::CERT_NO_REVOCATION_INFO,
    ids::TLS_LEGACY_VERSION,
];

#[test]
fn a_certificate_smtptap_presented_to_the_client_is_never_diagnosed() {
    let f = diagnose(
        &bad_server_cert_on(Some(Leg::ClientProxy)),
        &Context::default(),
    );
    let got = ids_of(&f);
    for id in SERVER_FACTS {
        assert!(
            !got.contains(id),
            "{id} from smtptap's own certificate: {f:#?}"
        );
    }
    assert!(!got.iter().any(|i| i.starts_with("cert.")), "{f:#?}");
    let v_events = bad_server_cert_on(Some(Leg::ClientProxy));
    let v = SessionView::new(&v_events);
    assert!(v.server_leaf().is_none() && v.negotiated().is_none());
}

#[test]
fn the_certificate_the_server_presented_is_diagnosed_on_either_other_leg() {
    for leg in [Some(Leg::ProxyServer), Some(Leg::EndToEnd), None] {
        let f = diagnose(&bad_server_cert_on(leg), &Context::default());
        let got = ids_of(&f);
        for id in SERVER_FACTS {
            assert!(got.contains(id), "{id} missing on leg {leg:?}: {f:#?}");
        }
    }
}

#[test]
fn the_thumbprint_is_quoted_upper_case_for_exchange() {
    let f = diagnose(&bad_server_cert_on(None), &Context::default());
    let e = find(&f, ids::CERT_EXPIRED);
    assert_eq!(
        e.title,
        "The server certificate #0 (mx.example.test) expired 400 day(s) ago"
    );
    assert_eq!(
        e.evidence,
        [
            "server certificate #0 (mx.example.test): valid 2020-01-01T00:00:00Z to 2021-01-01T00:00:00Z",
            "SHA-1 thumbprint 400CF5DA5117AD58968520C19AE837B1C898FCD1 (the Thumbprint Exchange's Get-ExchangeCertificate shows)",
        ]
    );
    let crl = find(&f, ids::CERT_CRL_UNAVAILABLE);
    assert_eq!(
        crl.evidence,
        ["http://crl.example.test/ca.crl: Connection refused (os error 111)"]
    );
    let names = find(&f, ids::CERT_NAME_MISMATCH);
    assert_eq!(
        names.evidence,
        [
            "expected: mail.partner.example",
            "presented: mx.example.test"
        ]
    );
}

#[test]
fn findings_come_most_severe_first() {
    let f = diagnose(&bad_server_cert_on(None), &Context::default());
    assert!(
        f.windows(2).all(|w| w[0].severity >= w[1].severity),
        "{f:#?}"
    );
    assert_eq!(f.last().unwrap().id, ids::CERT_NO_REVOCATION_INFO);
}

fn capabilities(starttls: bool) -> SmtpEvent {
    SmtpEvent::Capabilities {
        code: 250,
        host: Some("mx.example.test".into()),
        capabilities: vec!["PIPELINING".into(), "SIZE 52428800".into()],
        starttls,
        size: Some(52_428_800),
        auth: vec![],
        pipelining: true,
        chunking: false,
        eightbitmime: false,
        smtputf8: false,
        requiretls: false,
        enhancedstatuscodes: false,
    }
}

fn command(verb: &str, arg: &str) -> SmtpEvent {
    SmtpEvent::Command {
        verb: verb.into(),
        arg: arg.into(),
        len: 0,
        address: None,
        params: vec![],
    }
}

fn reply(code: u16, enhanced: Option<&str>, text: &str, command: &str) -> SmtpEvent {
    SmtpEvent::Reply {
        code,
        enhanced: enhanced.map(String::from),
        text: text.into(),
        lines: vec![],
        command: Some(command.into()),
    }
}

#[test]
fn starttls_not_offered_quotes_the_ehlo_reply_and_the_banner() {
    let events = vec![
        ev(SmtpEvent::Banner {
            code: 220,
            enhanced: None,
            text: "mx.example.test ESMTP".into(),
            lines: vec![],
            host: Some("mx.example.test".into()),
        }),
        ev(SmtpEvent::Ehlo {
            verb: "EHLO".into(),
            name: "client.example.test".into(),
        }),
        ev(capabilities(false)),
        ev(command("MAIL", "FROM:<a@b>")),
    ];
    let f = diagnose(&events, &Context::default());
    assert_eq!(ids_of(&f), [ids::STARTTLS_NOT_OFFERED]);
    assert_eq!(
        f[0].evidence,
        [
            "EHLO reply from mx.example.test: PIPELINING, SIZE 52428800",
            "banner: 220 mx.example.test ESMTP",
        ]
    );
    assert!(f[0].advice.starts_with("no masking was seen, so a firewall rewriting the EHLO reply is unlikely; the most likely causes are that TLS is not enabled"), "{}", f[0].advice);
}

#[test]
fn starttls_required_is_not_repeated_as_not_used() {
    let events = vec![
        ev(capabilities(true)),
        ev(command("MAIL", "FROM:<a@b>")),
        ev(reply(
            530,
            Some("5.7.0"),
            "Must issue a STARTTLS command first",
            "MAIL FROM:<a@b>",
        )),
        ev(command("RCPT", "TO:<c@d>")),
        ev(reply(550, Some("5.1.1"), "No such user", "RCPT TO:<c@d>")),
    ];
    let f = diagnose(&events, &Context::default());
    assert_eq!(
        ids_of(&f),
        [ids::STARTTLS_REQUIRED, ids::SMTP_RECIPIENT_REJECTED]
    );
    assert_eq!(
        f[0].evidence,
        [
            "client: MAIL FROM:<a@b>",
            "server: 530 5.7.0 Must issue a STARTTLS command first",
            "STARTTLS was offered in the EHLO reply, but the client did not use it",
        ]
    );
    assert_eq!(f[1].evidence, ["RCPT TO:<c@d> -> 550 5.1.1 No such user"]);
}

#[test]
fn relay_facts_quote_the_words_not_the_codes() {
    let events = vec![
        ev(SessionEvent::UpstreamFailed {
            upstream: "mx.example.test:25".into(),
            error: "refused".into(),
            detail: "Connection refused (os error 111)".into(),
            tried: vec!["192.0.2.25:25: Connection refused (os error 111)".into()],
            action: "reply".into(),
            reply: Some("421 4.4.1 upstream unreachable".into()),
            reply_delivered: true,
        }),
        ev(SessionEvent::PriorTlsFailure {
            prior_session: 3,
            ago_s: 41.6,
            reason: "The TLS handshake failed: x".into(),
        }),
    ];
    let f = diagnose(&events, &Context::default());
    let up = find(&f, ids::UPSTREAM_UNREACHABLE);
    assert_eq!(
        up.evidence,
        [
            "upstream mx.example.test:25: Connection refused (os error 111)",
            "tried 192.0.2.25:25: Connection refused (os error 111)",
            "told the client: 421 4.4.1 upstream unreachable",
        ]
    );
    let fb = find(&f, ids::TLS_CLEARTEXT_FALLBACK);
    assert_eq!(
        fb.evidence,
        ["session 3 from the same client failed its TLS handshake 42 s earlier: The TLS handshake failed: x"]
    );
}

#[test]
fn a_handshake_failure_names_the_alert_and_its_sender() {
    let events = vec![
        ev(SessionEvent::TlsStarted {
            after: "starttls".into(),
        }),
        ev(TlsEvent::Alert {
            side: Side::Client,
            level: "fatal".into(),
            description: "unknown_ca".into(),
            code: 48,
            encrypted: false,
            note: None,
        })
        .on_leg(Some(Leg::EndToEnd)),
    ];
    let f = diagnose(&events, &Context::default());
    assert_eq!(ids_of(&f), [ids::TLS_HANDSHAKE_FAILED]);
    assert_eq!(
        f[0].title,
        "The TLS handshake failed: the client does not trust the CA that issued the server's certificate (missing root or intermediate, or a private CA)"
    );
    assert_eq!(
        f[0].evidence,
        [
            "no ClientHello was seen after STARTTLS",
            "TLS alert from the client: fatal unknown_ca (48)",
        ]
    );
}

#[test]
fn a_rejected_message_quotes_the_reply() {
    let events = vec![ev(SmtpEvent::Message {
        via: "DATA".into(),
        size: 1234,
        accepted: false,
        code: 554,
        enhanced: Some("5.7.1".into()),
        text: "Rejected by policy".into(),
        mail_from: Some("a@b".into()),
        rcpt_to: vec!["c@d".into()],
        rcpt_count: 1,
    })];
    let f = diagnose(&events, &Context::default());
    assert_eq!(ids_of(&f), [ids::SMTP_MESSAGE_REJECTED]);
    assert_eq!(f[0].title, "The server rejected the message");
    assert_eq!(
        f[0].evidence,
        ["server: 554 5.7.1 Rejected by policy", "size: 1234 bytes"]
    );
}

#[test]
fn a_clean_session_has_no_finding() {
    let events = vec![
        ev(capabilities(true)),
        ev(command("STARTTLS", "")),
        ev(SmtpEvent::StartTls {
            code: 220,
            accepted: true,
            enhanced: None,
            text: "go ahead".into(),
        }),
        ev(SessionEvent::TlsStarted {
            after: "starttls".into(),
        }),
        ev(TlsEvent::Established {
            version: "TLSv1.3".into(),
            cipher_suite: "TLS_AES_128_GCM_SHA256".into(),
        }),
    ];
    assert!(diagnose(&events, &Context::default()).is_empty());
}

fn auth(mechanism: &str, initial: bool) -> Event {
    ev(SmtpEvent::Auth {
        mechanism: mechanism.into(),
        initial_response: initial,
    })
}

#[test]
fn auth_before_tls_is_reported_by_how_much_it_reveals() {
    let started = || {
        ev(SessionEvent::TlsStarted {
            after: "starttls".into(),
        })
    };
    let plain = diagnose(&[auth("PLAIN", true)], &Context::default());
    assert_eq!(
        find(&plain, ids::SMTP_AUTH_CLEARTEXT).severity,
        Severity::Error
    );
    let login = [
        auth("LOGIN", false),
        ev(SmtpEvent::AuthData {
            side: Side::Client,
            bytes: 8,
            cancel: false,
        }),
    ];
    let f = diagnose(&login, &Context::default());
    let a = find(&f, ids::SMTP_AUTH_CLEARTEXT);
    assert_eq!(a.severity, Severity::Error);
    assert!(
        a.evidence
            .iter()
            .any(|e| e.contains("1 SASL response line(s), 8 bytes")),
        "{a:#?}"
    );
    let cram = diagnose(
        &[
            auth("CRAM-MD5", false),
            ev(SmtpEvent::AuthData {
                side: Side::Client,
                bytes: 40,
                cancel: false,
            }),
        ],
        &Context::default(),
    );
    assert_eq!(
        find(&cram, ids::SMTP_AUTH_CLEARTEXT).severity,
        Severity::Warning
    );
    let refused = diagnose(&[auth("LOGIN", false)], &Context::default());
    assert_eq!(
        find(&refused, ids::SMTP_AUTH_CLEARTEXT).severity,
        Severity::Warning
    );
    // After STARTTLS: not this finding.
    let after = diagnose(&[started(), auth("PLAIN", true)], &Context::default());
    assert!(!ids_of(&after).contains(&ids::SMTP_AUTH_CLEARTEXT));
}

#[test]
fn an_open_file_limit_is_blamed_on_the_proxy_host_not_the_upstream() {
    let events = vec![ev(SessionEvent::UpstreamFailed {
        upstream: "mx.example.test:25".into(),
        error: "local_resources".into(),
        detail: "Too many open files (os error 24)".into(),
        tried: vec!["192.0.2.25:25: Too many open files (os error 24)".into()],
        action: "reply".into(),
        reply: Some("421 4.3.2 smtptap: local resource limit on the proxy, try again later".into()),
        reply_delivered: true,
    })];
    let f = diagnose(&events, &Context::default());
    assert!(f.iter().all(|x| x.id != ids::UPSTREAM_UNREACHABLE), "{f:?}");
    let local = find(&f, ids::PROXY_LOCAL_RESOURCES);
    assert_eq!(local.severity, Severity::Error);
    assert!(local.advice.contains("ulimit -n"), "{}", local.advice);
    assert!(local.evidence[0].contains("Too many open files"));
}

#[test]
fn deadlines_that_closed_a_session_are_findings_with_their_words() {
    for (reason, id) in [
        ("line_timeout", ids::SESSION_LINE_TIMEOUT),
        ("session_timeout", ids::SESSION_DURATION_LIMIT),
    ] {
        let events = vec![ev(SessionEvent::Close {
            reason: reason.into(),
            client_end: reason.into(),
            server_end: reason.into(),
            error: Some(reason.into()),
            detail: Some(format!("{reason} words")),
            duration_s: 3.0,
            client_bytes: 10,
            server_bytes: 20,
        })];
        let f = diagnose(&events, &Context::default());
        let d = find(&f, id);
        assert_eq!(d.severity, Severity::Warning);
        assert_eq!(d.evidence, [format!("{reason} words")]);
        assert_eq!(f.len(), 1, "{f:?}");
    }
}

/// The ClientHello line of a failed handshake counts suites as the console
/// does, and says what it left out (GREASE, signalling values).
#[test]
fn a_handshake_failure_counts_suites_and_says_what_is_left_out() {
    let hello: crate::tls::ClientHelloInfo = serde_json::from_value(serde_json::json!({
        "record_version": "TLSv1.0", "legacy_version": "TLSv1.2",
        "supported_versions": [], "max_version": "TLSv1.2",
        "cipher_suites": ["GREASE", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", "TLS_EMPTY_RENEGOTIATION_INFO_SCSV"],
        "sni": "mx.example", "alpn": [], "supported_groups": [], "signature_algorithms": [],
        "key_share_groups": [], "ec_point_formats": [], "session_ticket": false, "psk": false,
        "early_data": false, "extensions": [], "sslv2_format": false,
        "ja3": "", "ja3_string": "", "ja4": ""
    }))
    .unwrap();
    let events = vec![
        ev(SessionEvent::TlsStarted {
            after: "starttls".into(),
        }),
        ev(TlsEvent::ClientHello(Box::new(hello))).on_leg(Some(Leg::EndToEnd)),
    ];
    let f = diagnose(&events, &Context::default());
    let hs = find(&f, ids::TLS_HANDSHAKE_FAILED);
    assert_eq!(
        hs.evidence[0],
        "ClientHello: up to TLSv1.2, 2 cipher suites (+ TLS_EMPTY_RENEGOTIATION_INFO_SCSV \
         signalling value, + 1 GREASE value), SNI mx.example"
    );
}
