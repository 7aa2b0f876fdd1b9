use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use super::{render, Console, LineKind};
use crate::capture::CaptureEvent;
use crate::cert::CertEvent;
use crate::event::{Event, EventKind, Leg, RunId, SessionEvent, Side, Timestamp, SCHEMA_VERSION};
use crate::smtp::SmtpEvent;
use crate::tls::TlsEvent;

fn ts(ms: u64) -> Timestamp {
    Timestamp(UNIX_EPOCH + Duration::from_millis(1_795_000_000_000 + ms))
}

fn ev(session: u64, kind: impl Into<EventKind>) -> Event {
    Event::new(ts(0), session, kind)
}

/// The texts of an event's lines.
fn texts(e: &Event) -> Vec<String> {
    render(e).into_iter().map(|(_, t)| t).collect()
}

/// The one line of an event, with its kind.
fn one(e: &Event) -> (LineKind, String) {
    let out = render(e);
    assert_eq!(out.len(), 1, "{out:?}");
    out.into_iter().next().unwrap()
}

/// An event from its v1 JSON form (for the big structs: the certificate's
/// fields, the ClientHello, the summary).
fn from_json(line: &str) -> Event {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

const CERT_INFO: &str = r#"{"ts":"2026-11-23T21:59:06.587300Z","session":1,"event":"cert.info","side":"server","index":0,"subject":"CN=mail.gateway.example.test","cn":"mail.gateway.example.test","san_dns":["mail.gateway.example.test"],"san_ip":["192.0.2.25"],"issuer":"CN=smtptap lab issuing CA,O=smtptap lab","serial":"1dccab04f9959fe76928a67696ce0d21","not_before":"2026-11-22T21:59:06Z","not_after":"2027-02-21T21:59:06Z","key_type":"EC","key_bits":256,"curve":"P-256","signature_algorithm":"ecdsa-with-SHA256","sha256":"0052111b9964479fdcacd80fad17c8cf1fab652ba9ad82fdd40cb7ad3a4e2006","sha1":"400cf5da5117ad58968520c19ae837b1c898fcd1","is_ca":false,"path_len":null,"eku":["serverAuth"],"crl_urls":[],"ocsp_urls":[],"ca_issuer_urls":[],"self_signed":false,"version":3,"days_left":89,"expiring":false,"expired":false,"not_yet_valid":false}"#;

const CLIENT_HELLO: &str = r#"{"ts":"2026-11-23T21:59:06.586887Z","session":1,"event":"tls.client_hello","record_version":"TLSv1.0","legacy_version":"TLSv1.2","supported_versions":["TLSv1.3","TLSv1.2"],"max_version":"TLSv1.3","cipher_suites":["TLS_AES_256_GCM_SHA384","TLS_AES_128_GCM_SHA256"],"sni":null,"alpn":["smtp"],"supported_groups":["x25519"],"signature_algorithms":["ed25519"],"key_share_groups":["x25519"],"ec_point_formats":[0],"session_ticket":false,"psk":false,"early_data":false,"extensions":[0,43],"sslv2_format":false,"ja3":"46a0fc6a95b0e6403ee8674342f22cbe","ja3_string":"771,4866-4865,0-43,29,0","ja4":"t13d020200_61a7ad8aa9b6_2541d505c05f"}"#;

const SUMMARY: &str = r#"{"ts":"2026-11-23T21:07:14.051300Z","session":1,"event":"session.summary","client":"127.0.0.1:40312","client_ip":"127.0.0.1","upstream":"gw.example.test:25","upstream_addr":"192.0.2.25:25","server_ip":"192.0.2.25","server_port":25,"duration_s":0.0512,"client_bytes":1843,"server_bytes":2710,"close_reason":"completed","commands":7,"messages_accepted":1,"messages_rejected":0,"banner":"220 gw.example.test ESMTP","helo":"EHLO client.example.test","mail_from":[],"rcpt_to":[],"starttls_offered":true,"starttls_attempted":true,"starttls_accepted":true,"implicit_tls":false,"tls_established":true,"tls_version":"TLSv1.2","tls_cipher":"TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384","sni":"gw.example.test","server_certificate":"CN=gw.example.test","last_reply":"221 2.0.0 Bye","observation":"complete","findings":[{"id":"tls.weak_cipher","severity":"warning","title":"weak","evidence":["TLS_RSA_WITH_AES_128_CBC_SHA"],"advice":"prefer ECDHE"}],"events_not_kept":0}"#;

fn run_start() -> SessionEvent {
    SessionEvent::RunStart {
        version: "0.1.0".into(),
        schema: SCHEMA_VERSION,
        mode: "proxy".into(),
        config: Default::default(),
    }
}

#[test]
fn run_start_names_the_version_the_run_the_mode_and_the_schema() {
    let run = RunId::from("r20261123T210700Z-4c1f");
    assert_eq!(
        one(&ev(0, run_start()).in_run(&run)),
        (
            LineKind::Fact,
            "smtptap 0.1.0 run r20261123T210700Z-4c1f: proxy, log schema v1".to_string()
        )
    );
    // Not stamped with a run yet: no run id.
    assert_eq!(
        one(&ev(0, run_start())).1,
        "smtptap 0.1.0: proxy, log schema v1"
    );
}

#[test]
fn run_stop_counts_sessions_and_says_when_some_were_aborted() {
    let stop = |aborted| SessionEvent::RunStop {
        sessions: 3,
        aborted_at_shutdown: aborted,
        reason: "stopped".into(),
    };
    assert_eq!(
        one(&ev(0, stop(false))),
        (LineKind::Fact, "run stopped after 3 session(s)".to_string())
    );
    let by_duration = SessionEvent::RunStop {
        sessions: 3,
        aborted_at_shutdown: false,
        reason: "duration".into(),
    };
    assert_eq!(
        one(&ev(0, by_duration)).1,
        "run stopped after 3 session(s) (--duration reached)"
    );
    let (kind, text) = one(&ev(0, stop(true)));
    assert_eq!(kind, LineKind::Problem);
    assert!(text.contains("were aborted"), "{text}");
}

fn message(accepted: bool, mail_from: Option<&str>, rcpt_to: &[&str], rcpt_count: u64) -> Event {
    ev(
        1,
        SmtpEvent::Message {
            via: "DATA".into(),
            size: 1234,
            accepted,
            code: if accepted { 250 } else { 554 },
            enhanced: None,
            text: if accepted { "2.0.0 Ok" } else { "5.7.1 no" }.into(),
            mail_from: mail_from.map(String::from),
            rcpt_to: rcpt_to.iter().map(|s| s.to_string()).collect(),
            rcpt_count,
        },
    )
}

#[test]
fn the_message_line_shows_the_envelope() {
    assert_eq!(
        one(&message(true, Some("a@x"), &["b@y", "c@y"], 2)),
        (
            LineKind::Fact,
            "message accepted from <a@x> to 2 recipients: <b@y>, <c@y> (1234 bytes via DATA): 250 2.0.0 Ok"
                .to_string()
        )
    );
    assert_eq!(
        one(&message(false, Some(""), &["b@y"], 1)),
        (
            LineKind::Problem,
            "message rejected from <> to <b@y> (1234 bytes via DATA): 554 5.7.1 no".to_string()
        )
    );
    // Not seen (the observer joined late): as before the envelope existed.
    assert_eq!(
        one(&message(true, None, &[], 0)).1,
        "message accepted (1234 bytes via DATA): 250 2.0.0 Ok"
    );
}

#[test]
fn a_long_recipient_list_is_cut_and_counted() {
    let rcpts: Vec<String> = (0..100).map(|i| format!("r{i}@y")).collect();
    let rcpts: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    let text = one(&message(true, Some("a@x"), &rcpts, 150)).1;
    assert!(
        text.contains("to 150 recipients: <r0@y>, <r1@y>,")
            && text.contains(", <r9@y> and 140 more (1234 bytes"),
        "{text}"
    );
    assert!(!text.contains("<r10@y>"), "{text}");
    // Counted but none listed.
    let text = one(&message(true, Some("a@x"), &[], 3)).1;
    assert!(text.contains("from <a@x> to 3 recipient(s) ("), "{text}");
}

#[test]
fn tls_and_cert_lines_name_the_leg_when_there_are_two() {
    let hello = || {
        ev(
            1,
            TlsEvent::Established {
                version: "TLSv1.3".into(),
                cipher_suite: "TLS_AES_256_GCM_SHA384".into(),
            },
        )
    };
    let plain = "TLS established: TLSv1.3, TLS_AES_256_GCM_SHA384";
    assert_eq!(one(&hello()).1, plain);
    assert_eq!(one(&hello().on_leg(Some(Leg::EndToEnd))).1, plain);
    assert_eq!(
        one(&hello().on_leg(Some(Leg::ClientProxy))).1,
        format!("[client↔smtptap] {plain}")
    );
    assert_eq!(
        one(&hello().on_leg(Some(Leg::ProxyServer))).1,
        format!("[smtptap↔server] {plain}")
    );
    // Every line of a multi-line fact.
    let lines = texts(&from_json(CERT_INFO).on_leg(Some(Leg::ProxyServer)));
    assert_eq!(lines.len(), 5);
    assert!(
        lines.iter().all(|l| l.starts_with("[smtptap↔server] ")),
        "{lines:?}"
    );
    assert_eq!(
        lines[1],
        "[smtptap↔server]     names: mail.gateway.example.test, 192.0.2.25"
    );
}

#[test]
fn cert_info_shows_the_sha1_upper_case_as_exchange_does() {
    let e = from_json(CERT_INFO);
    let EventKind::Cert(CertEvent::Info { info, .. }) = &e.kind else {
        panic!("{e:?}")
    };
    assert_eq!(info.sha1, "400cf5da5117ad58968520c19ae837b1c898fcd1");
    assert_eq!(
        texts(&e),
        [
            "server certificate #0: CN=mail.gateway.example.test",
            "    names: mail.gateway.example.test, 192.0.2.25",
            "    issuer: CN=smtptap lab issuing CA,O=smtptap lab",
            "    valid 2026-11-22T21:59:06Z to 2027-02-21T21:59:06Z (89 days left)",
            "    key EC 256 bits, ecdsa-with-SHA256; SHA-1 thumbprint 400CF5DA5117AD58968520C19AE837B1C898FCD1",
        ]
    );
}

#[test]
fn upstream_connected_shows_milliseconds_from_seconds() {
    let up = |connect_s| {
        let server = "192.0.2.25:25".parse::<std::net::SocketAddr>().unwrap();
        ev(
            1,
            SessionEvent::UpstreamConnected {
                server,
                server_ip: server.ip(),
                server_port: server.port(),
                local: "192.0.2.10:51514".parse().unwrap(),
                connect_s,
            },
        )
    };
    assert_eq!(
        one(&up(0.0125)).1,
        "connected to upstream 192.0.2.25:25 from 192.0.2.10:51514 in 12.5 ms"
    );
    assert!(one(&up(0.00031)).1.ends_with(" in 0.3 ms"));
}

#[test]
fn errors_show_their_words_and_the_code_only_without_them() {
    let failed = |detail: &str| {
        ev(
            3,
            SessionEvent::UpstreamFailed {
                upstream: "127.0.0.1:2600".into(),
                error: "refused".into(),
                detail: detail.into(),
                tried: vec![],
                action: "close".into(),
                reply: None,
                reply_delivered: false,
            },
        )
    };
    assert_eq!(
        texts(&failed("Connection refused (os error 111)")),
        [
            "upstream 127.0.0.1:2600 unreachable: Connection refused (os error 111)",
            "closed the client connection without a reply",
        ]
    );
    assert_eq!(
        texts(&failed(""))[0],
        "upstream 127.0.0.1:2600 unreachable: refused"
    );
    let crl = ev(
        1,
        CertEvent::Crl {
            side: Side::Server,
            url: "http://crl.example.test/a.crl".into(),
            ok: false,
            error: Some("timeout".into()),
            detail: Some("timed out after 5s".into()),
            bytes: 0,
        },
    );
    assert_eq!(
        one(&crl),
        (
            LineKind::Problem,
            "CRL for the server chain could not be obtained: http://crl.example.test/a.crl: timed out after 5s"
                .to_string()
        )
    );
    let capture = ev(
        0,
        CaptureEvent::Error {
            path: "/x.pcapng".into(),
            error: "no_space".into(),
            detail: "No space left on device (os error 28)".into(),
        },
    );
    assert!(one(&capture)
        .1
        .contains("writing /x.pcapng failed: No space left on device (os error 28)"));
    let close = |error: Option<&str>, detail: Option<&str>| {
        ev(
            1,
            SessionEvent::Close {
                reason: "error".into(),
                client_end: "error".into(),
                server_end: "fin".into(),
                error: error.map(String::from),
                detail: detail.map(String::from),
                duration_s: 1.0,
                client_bytes: 10,
                server_bytes: 20,
            },
        )
    };
    assert_eq!(
        one(&close(Some("reset"), Some("Connection reset by peer (os error 104)"))).1,
        "session closed (error): client error, server fin; 10 bytes from client, 20 from server; Connection reset by peer (os error 104)"
    );
    assert!(one(&close(Some("reset"), None)).1.ends_with("; reset"));
    assert!(one(&close(None, None)).1.ends_with("20 from server"));
}

#[test]
fn prior_tls_failure_shows_seconds_ago() {
    let e = ev(
        4,
        SessionEvent::PriorTlsFailure {
            prior_session: 3,
            ago_s: 4.2,
            reason: "unknown CA".into(),
        },
    );
    assert_eq!(
        one(&e).1,
        "this client's TLS handshake failed 4.2 s ago (session #3: unknown CA)"
    );
}

fn addr(s: &str) -> std::net::SocketAddr {
    s.parse().unwrap()
}

/// One event of every kind, but for the ones shown by other lines.
fn every_kind() -> Vec<Event> {
    [
        session_kinds(),
        smtp_kinds(),
        tls_kinds(),
        cert_and_capture_kinds(),
        more_kinds(),
    ]
    .concat()
}

/// `run.*`, `session.*`, `upstream.*`, `observer.*`, `tls.started`.
fn session_kinds() -> Vec<Event> {
    vec![
        ev(0, run_start()),
        ev(
            0,
            SessionEvent::RunStop {
                sessions: 1,
                aborted_at_shutdown: false,
                reason: "sigterm".into(),
            },
        ),
        ev(
            0,
            SessionEvent::RunReopen {
                signal: "SIGHUP".into(),
                log: Some("/var/log/smtptap.jsonl".into()),
                capture: true,
            },
        ),
        ev(
            0,
            SessionEvent::RunLogRecovered {
                lost_events: 12,
                since: Timestamp::now(),
                error: "no_space".into(),
                detail: "No space left on device (os error 28)".into(),
            },
        ),
        ev(
            0,
            SessionEvent::RunLogRotated {
                previous: "/var/log/smtptap.jsonl.1".into(),
                keep: 5,
            },
        ),
        ev(
            1,
            SessionEvent::Open {
                client: addr("127.0.0.1:40312"),
                client_ip: addr("127.0.0.1:40312").ip(),
                client_port: 40312,
                listener: addr("127.0.0.1:2525"),
                upstream: "gw.example.test:25".into(),
                implicit_tls: false,
            },
        ),
        ev(
            1,
            SessionEvent::UpstreamLoopRefused {
                original_dst: addr("10.77.1.1:2525"),
                reason: "loop".into(),
            },
        ),
        ev(
            1,
            SessionEvent::TlsStarted {
                after: "starttls".into(),
            },
        ),
        ev(1, SessionEvent::HalfClose { side: Side::Client }),
        ev(
            1,
            SessionEvent::ObserverLagged {
                side: Side::Server,
                bytes_not_analysed: 10,
                note: String::new(),
            },
        ),
        from_json(SUMMARY),
    ]
}

/// `smtp.*`.
fn smtp_kinds() -> Vec<Event> {
    vec![
        ev(
            1,
            SmtpEvent::Banner {
                code: 220,
                enhanced: None,
                text: "gw ESMTP".into(),
                lines: vec!["220 gw ESMTP".into()],
                host: Some("gw".into()),
            },
        ),
        ev(
            1,
            SmtpEvent::Command {
                verb: "RCPT".into(),
                arg: "TO:<b@y>".into(),
                len: 14,
                address: Some("b@y".into()),
                params: vec![],
            },
        ),
        ev(
            1,
            SmtpEvent::Reply {
                code: 250,
                enhanced: None,
                text: "Ok".into(),
                lines: vec!["250 Ok".into()],
                command: Some("RCPT TO:<b@y>".into()),
            },
        ),
        ev(
            1,
            SmtpEvent::Data {
                bytes: 10,
                lines: 1,
                bare_lf: false,
            },
        ),
        message(true, Some("a@x"), &["b@y"], 1),
        ev(
            1,
            SmtpEvent::Auth {
                mechanism: "PLAIN".into(),
                initial_response: false,
            },
        ),
        ev(
            1,
            SmtpEvent::AuthData {
                side: Side::Client,
                bytes: 16,
                cancel: false,
            },
        ),
        ev(
            1,
            SmtpEvent::Masked {
                side: Side::Server,
                what: "banner".into(),
                sample: "220 ****".into(),
            },
        ),
        ev(
            1,
            SmtpEvent::BareLf {
                side: Side::Client,
                offset: 3,
            },
        ),
        ev(
            1,
            SmtpEvent::Desync {
                side: Side::Client,
                reason: "x".into(),
                offset: 0,
            },
        ),
    ]
}

/// `tls.*`.
fn tls_kinds() -> Vec<Event> {
    vec![
        from_json(CLIENT_HELLO),
        ev(
            1,
            TlsEvent::ServerHello {
                version: "TLSv1.3".into(),
                legacy_version: "TLSv1.2".into(),
                cipher_suite: "TLS_AES_128_GCM_SHA256".into(),
                group: Some("x25519".into()),
                alpn: None,
                extensions: vec![],
                resumed: false,
            },
        ),
        ev(
            1,
            TlsEvent::HelloRetryRequest {
                version: "TLSv1.3".into(),
                cipher_suite: "TLS_AES_128_GCM_SHA256".into(),
                group: Some("secp384r1".into()),
            },
        ),
        ev(
            1,
            TlsEvent::Certificate {
                side: Side::Server,
                count: 2,
                bytes: 1000,
                ders: vec![],
            },
        ),
        ev(
            1,
            TlsEvent::CertificateHidden {
                version: "TLSv1.3".into(),
                note: String::new(),
            },
        ),
        ev(
            1,
            TlsEvent::CertificateRequest {
                version: "TLSv1.2".into(),
                cert_types: vec![],
                signature_algorithms: vec![],
                ca_names: 0,
            },
        ),
        ev(
            1,
            TlsEvent::ServerKeyExchange {
                kind: "ECDHE".into(),
                group: Some("x25519".into()),
                dh_bits: None,
            },
        ),
        ev(
            1,
            TlsEvent::Alert {
                side: Side::Client,
                level: "fatal".into(),
                description: "unknown_ca".into(),
                code: 48,
                encrypted: false,
                note: None,
            },
        ),
        ev(
            1,
            TlsEvent::Desync {
                side: Side::Server,
                reason: "x".into(),
                offset: 5,
            },
        ),
    ]
}

/// `cert.*`, `capture.*`.
fn cert_and_capture_kinds() -> Vec<Event> {
    vec![
        from_json(CERT_INFO),
        ev(
            1,
            CertEvent::ParseError {
                side: Side::Server,
                index: 1,
                reason: "x".into(),
            },
        ),
        ev(
            1,
            CertEvent::Chain {
                side: Side::Server,
                trusted: true,
                error: None,
                detail: None,
                order_ok: true,
                missing_intermediate: false,
                anchor: Some("CN=root".into()),
                chain_len: 2,
            },
        ),
        ev(
            1,
            CertEvent::Names {
                side: Side::Server,
                checks: vec![crate::cert::NameCheck {
                    source: crate::cert::NameSource::Sni,
                    name: "mx.example.test".into(),
                    matched: false,
                    by: None,
                }],
            },
        ),
        ev(
            0,
            CaptureEvent::File {
                path: "x.pcapng".into(),
                reason: "opened".into(),
            },
        ),
        ev(1, CaptureEvent::Truncated { limit: 10 }),
        ev(
            1,
            CaptureEvent::Dropped {
                frames: 1,
                bytes: 2,
                reason: "queue full".into(),
            },
        ),
        ev(
            0,
            CaptureEvent::Deleted {
                path: "x-1.pcapng".into(),
                bytes: 104857600,
                reason: "max_total_bytes".into(),
            },
        ),
    ]
}

/// Kinds also used by the other tests, in another form.
fn more_kinds() -> Vec<Event> {
    vec![
        ev(
            1,
            SessionEvent::UpstreamConnected {
                server: addr("192.0.2.25:25"),
                server_ip: addr("192.0.2.25:25").ip(),
                server_port: 25,
                local: addr("192.0.2.10:51514"),
                connect_s: 0.001,
            },
        ),
        ev(
            1,
            TlsEvent::Established {
                version: "TLSv1.3".into(),
                cipher_suite: "TLS_AES_128_GCM_SHA256".into(),
            },
        ),
        ev(
            1,
            SmtpEvent::Capabilities {
                code: 250,
                host: None,
                capabilities: vec![],
                starttls: true,
                size: None,
                auth: vec![],
                pipelining: false,
                chunking: false,
                eightbitmime: false,
                smtputf8: false,
                requiretls: false,
                enhancedstatuscodes: false,
            },
        ),
    ]
}

#[test]
fn every_kind_renders_lines_of_its_own() {
    for e in every_kind() {
        let out = render(&e);
        assert!(!out.is_empty(), "renders nothing: {}", e.name());
        assert!(
            out.iter()
                .all(|(_, t)| !t.is_empty() && !t.starts_with(&format!("{} ", e.name()))),
            "{}: {out:?}",
            e.name()
        );
    }
}

#[test]
fn lines_shown_elsewhere_are_not_repeated() {
    let silent = [
        ev(
            1,
            SmtpEvent::Ehlo {
                verb: "EHLO".into(),
                name: "c".into(),
            },
        ),
        ev(
            1,
            SmtpEvent::Bdat {
                size: 6,
                last: true,
            },
        ),
        ev(
            1,
            SmtpEvent::StartTls {
                code: 220,
                accepted: true,
                enhanced: None,
                text: "go".into(),
            },
        ),
        ev(
            1,
            SmtpEvent::AuthData {
                side: Side::Server,
                bytes: 0,
                cancel: false,
            },
        ),
        ev(1, TlsEvent::ChangeCipherSpec { side: Side::Client }),
    ];
    for e in silent {
        assert_eq!(render(&e), [], "{}", e.name());
    }
}

#[test]
fn the_summary_lists_totals_and_findings() {
    assert_eq!(
        texts(&from_json(SUMMARY)),
        [
            "summary: 0.051 s; 1 message(s) accepted, 0 rejected; STARTTLS offered: yes; attempted: yes; accepted: yes; TLS established: yes; TLSv1.2 TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384; 1843 bytes from client, 2710 from server",
            "last reply (the last one in cleartext): 221 2.0.0 Bye",
            "[warning] weak (tls.weak_cipher)",
            "    evidence: TLS_RSA_WITH_AES_128_CBC_SHA",
            "    what to change: prefer ECDHE",
        ]
    );
}

/// A `Write` the test can read back.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn the_console_prefixes_session_and_clock_and_restarts_the_clock_after_the_summary() {
    let buf = Shared::default();
    let mut c = Console::new(Box::new(buf.clone()), false);
    c.write(&ev(0, run_start()));
    let at = |ms, kind: EventKind| Event {
        ts: ts(ms),
        ..ev(7, kind)
    };
    c.write(&at(
        1000,
        SmtpEvent::Command {
            verb: "QUIT".into(),
            arg: String::new(),
            len: 6,
            address: None,
            params: vec![],
        }
        .into(),
    ));
    c.write(&at(1250, from_json(SUMMARY).kind));
    c.write(&at(
        9000,
        SessionEvent::HalfClose { side: Side::Server }.into(),
    ));
    c.flush();
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "[smtptap] === smtptap 0.1.0: proxy, log schema v1"
    );
    assert_eq!(lines[1], "[#7 +0.000]  -> QUIT");
    assert!(lines[2].starts_with("[#7 +0.250] === summary: "), "{text}");
    assert_eq!(
        lines.last().unwrap(),
        &"[#7 +0.000] === server closed its side (FIN)"
    );
}
