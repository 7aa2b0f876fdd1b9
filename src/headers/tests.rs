//! Tests of `smtptap headers` on fixtures written in each server's documented
//! format (see `fixtures/README.md`), and on malformed input.
use super::received::{parse_received, unfold};
use super::stamps::{normalize_version, tls_facts, weak_cipher, TransportTls};
use super::*;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/src/headers/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn ids(r: &HeadersReport) -> Vec<&str> {
    r.findings.iter().map(|f| f.id.as_str()).collect()
}

fn states(r: &HeadersReport) -> Vec<TransportTls> {
    r.hops.iter().map(|h| h.tls.state).collect()
}

fn console(r: HeadersReport) -> String {
    let mut out = Vec::new();
    write_console(&[r], &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

/// Postfix 3.7 with `smtpd_tls_received_header = yes`, TLS 1.3: the exact layout
/// smtpd writes (the key-exchange line is a continuation inside the comment).
const POSTFIX_37: &str = "from client.example.net (client.example.net [192.0.2.7])\r\n\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)\r\n\t key-exchange X25519 server-signature RSA-PSS (2048 bits) server-digest SHA256)\r\n\t(No client certificate requested)\r\n\tby mx.example.org (Postfix) with ESMTPS id 4ZxYw1AbCdz9tK\r\n\tfor <u@example.org>; Mon, 23 Nov 2026 21:07:14 +0000 (UTC)";

#[test]
fn postfix_37_tls13_stamp_is_read_exactly() {
    let r = parse_received(POSTFIX_37);
    assert_eq!(r.from_host.as_deref(), Some("client.example.net"));
    assert_eq!(r.from_ip.as_deref(), Some("192.0.2.7"));
    assert_eq!(r.by_host.as_deref(), Some("mx.example.org"));
    assert_eq!(r.protocol().as_deref(), Some("ESMTPS"));
    assert_eq!(r.id.as_deref(), Some("4ZxYw1AbCdz9tK"));
    assert_eq!(r.for_addr.as_deref(), Some("<u@example.org>"));
    assert_eq!(
        r.date.as_deref(),
        Some("Mon, 23 Nov 2026 21:07:14 +0000 (UTC)")
    );
    let t = tls_facts(&r);
    assert_eq!(t.state, TransportTls::Tls);
    assert_eq!(t.format.as_deref(), Some("postfix"));
    assert_eq!(t.version.as_deref(), Some("TLSv1.3"));
    assert_eq!(t.version_raw.as_deref(), Some("TLSv1.3"));
    assert_eq!(t.cipher.as_deref(), Some("TLS_AES_256_GCM_SHA384"));
    assert_eq!(t.bits.as_deref(), Some("256/256"));
    assert_eq!(t.key_exchange.as_deref(), Some("X25519"));
    assert_eq!(t.server_signature.as_deref(), Some("RSA-PSS (2048 bits)"));
    assert_eq!(
        t.peer_certificate.as_deref(),
        Some("No client certificate requested")
    );
}

#[test]
fn postfix_legacy_tls12_stamp_and_client_certificate_forms() {
    let r = parse_received("from a.example (a.example [192.0.2.1]) (using TLSv1.2 with cipher ECDHE-RSA-AES256-GCM-SHA384 (256/256 bits)) (Client did not present a certificate) by b.example (Postfix) with ESMTPS id X; Mon, 23 Nov 2026 21:07:14 +0000");
    let t = tls_facts(&r);
    assert_eq!(t.version.as_deref(), Some("TLSv1.2"));
    assert_eq!(t.cipher.as_deref(), Some("ECDHE-RSA-AES256-GCM-SHA384"));
    assert_eq!(t.bits.as_deref(), Some("256/256"));
    assert_eq!(t.key_exchange, None);
    assert_eq!(
        t.peer_certificate.as_deref(),
        Some("Client did not present a certificate")
    );
    // TLSv1 (Postfix's spelling of 1.0) normalises.
    let r = parse_received("from a.example (a.example [192.0.2.1]) (using TLSv1 with cipher AES256-SHA (256/256 bits)) by b.example (Postfix) with ESMTPS id X; Mon, 23 Nov 2026 21:07:14 +0000");
    assert_eq!(tls_facts(&r).version.as_deref(), Some("TLSv1.0"));
}

#[test]
fn version_spellings_normalise() {
    for (raw, want) in [
        ("TLSv1", Some("TLSv1.0")),
        ("TLS1_0", Some("TLSv1.0")),
        ("TLS1_1", Some("TLSv1.1")),
        ("TLSv1.1", Some("TLSv1.1")),
        ("TLS1_2", Some("TLSv1.2")),
        ("TLS1.2", Some("TLSv1.2")),
        ("TLSv1.3", Some("TLSv1.3")),
        ("TLS1_3", Some("TLSv1.3")),
        ("SSLv3", Some("SSLv3")),
        ("Exim 4.96", None),
        ("TLS", None),
        ("", None),
    ] {
        assert_eq!(normalize_version(raw), want, "{raw}");
    }
}

#[test]
fn weak_cipher_classes() {
    let sev = |c: &str| weak_cipher(c).map(|(s, _)| s);
    assert_eq!(sev("TLS_AES_128_GCM_SHA256"), None);
    assert_eq!(sev("TLS_CHACHA20_POLY1305_SHA256"), None);
    assert_eq!(sev("ECDHE-RSA-AES128-GCM-SHA256"), None);
    assert_eq!(sev("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"), None);
    assert_eq!(sev("DHE-RSA-AES256-SHA"), None);
    assert_eq!(sev("ECDHE_RSA_AES_256_GCM_SHA384"), None);
    assert_eq!(sev("RC4-SHA"), Some("error"));
    assert_eq!(sev("TLS_RSA_WITH_RC4_128_SHA"), Some("error"));
    assert_eq!(sev("NULL-SHA256"), Some("error"));
    assert_eq!(sev("EXP-RC4-MD5"), Some("error"));
    assert_eq!(sev("DES-CBC-SHA"), Some("error"));
    assert_eq!(sev("DES-CBC3-SHA"), Some("warning"));
    assert_eq!(sev("TLS_RSA_WITH_3DES_EDE_CBC_SHA"), Some("warning"));
    assert_eq!(sev("AES256-SHA"), Some("warning"));
    assert_eq!(sev("AES128-GCM-SHA256"), Some("warning"));
    assert_eq!(sev("TLS_RSA_WITH_AES_256_GCM_SHA384"), Some("warning"));
    assert_eq!(sev("RSA_AES_256_CBC_SHA1"), Some("warning"));
    assert_eq!(sev("AECDH-AES256-SHA"), Some("warning"));
    assert!(weak_cipher("AES256-SHA")
        .unwrap()
        .1
        .contains("forward secrecy"));
}

#[test]
fn exchange_online_to_postfix_six_hops() {
    let r = analyze_message(&fixture("exo_to_postfix.eml"));
    assert_eq!(r.hops.len(), 6);
    use TransportTls::*;
    assert_eq!(states(&r), vec![Local, Tls, Tls, Tls, Tls, Local]);
    // Transit order: the MAPI submission is first, LMTP delivery last.
    assert_eq!(r.hops[0].protocol.as_deref(), Some("MAPI"));
    assert_eq!(r.hops[5].protocol.as_deref(), Some("LMTP"));
    for h in &r.hops[1..4] {
        assert_eq!(h.tls.format.as_deref(), Some("exchange"));
        assert_eq!(h.tls.version.as_deref(), Some("TLSv1.2"));
        assert_eq!(h.tls.version_raw.as_deref(), Some("TLS1_2"));
        assert_eq!(
            h.tls.cipher.as_deref(),
            Some("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384")
        );
        assert_eq!(h.protocol.as_deref(), Some("MICROSOFT SMTP SERVER"));
    }
    assert_eq!(
        r.hops[2].from_host.as_deref(),
        Some("EX01.corp.example.com")
    );
    assert_eq!(r.hops[2].from_ip.as_deref(), Some("203.0.113.10"));
    assert_eq!(
        r.hops[2].by_host.as_deref(),
        Some("BN9PR04MB8123.mail.protection.outlook.com")
    );
    assert_eq!(r.hops[3].from_ip.as_deref(), Some("2603:10b6:408:e1::9"));
    let pf = &r.hops[4];
    assert_eq!(pf.tls.format.as_deref(), Some("postfix"));
    assert_eq!(pf.tls.version.as_deref(), Some("TLSv1.3"));
    assert_eq!(pf.tls.key_exchange.as_deref(), Some("X25519"));
    assert_eq!(pf.from_ip.as_deref(), Some("198.51.100.101"));
    assert_eq!(pf.date.as_deref(), Some("2026-11-23T21:07:15Z"));
    assert_eq!(pf.delay_secs, Some(3));
    assert_eq!(r.hops[0].delay_secs, Option::None);
    // Folded Exchange date ("Mon, 23 Nov\r\n 2026 ...") still parses.
    assert_eq!(r.hops[3].date.as_deref(), Some("2026-11-23T21:07:12Z"));
    assert_eq!(ids(&r), vec!["headers.tls_every_hop"]);
    assert_eq!(r.worst(), Some(Severity::Info));
    // RFC 2047 encoded Subject decoded by mail-parser.
    assert_eq!(r.subject.as_deref(), Some("Quartalsbericht Übersicht"));
    assert_eq!(
        r.message_id.as_deref(),
        Some("0a1b2c3d4e5f@EX02.corp.example.com")
    );
    let authas = r
        .context
        .iter()
        .find(|c| {
            c.header
                .eq_ignore_ascii_case("X-MS-Exchange-Organization-AuthAs")
        })
        .unwrap();
    assert_eq!(authas.value, "Anonymous");
    // Authentication-Results here says nothing about TLS: not reported.
    assert!(!r
        .context
        .iter()
        .any(|c| c.header.eq_ignore_ascii_case("Authentication-Results")));
    // The body never appears.
    let text = console(r);
    assert!(!text.contains("never be reported"), "{text}");
    assert!(text.contains("=== hop 5: NAM12-DM6-obe.outbound.protection.outlook.com [198.51.100.101] -> mail.example.org with ESMTPS"), "{text}");
}

#[test]
fn gmail_submission_to_exim() {
    let r = analyze_message(&fixture("gmail_to_exim.eml"));
    use TransportTls::*;
    assert_eq!(states(&r), vec![Tls, Local, Tls]);
    let sub = &r.hops[0];
    assert_eq!(sub.protocol.as_deref(), Some("ESMTPSA"));
    assert_eq!(sub.from_host.as_deref(), Some("[192.168.1.20]"));
    // The address the receiver saw, not the NATed HELO literal.
    assert_eq!(sub.from_ip.as_deref(), Some("198.51.100.77"));
    assert_eq!(sub.tls.format.as_deref(), Some("gmail"));
    assert_eq!(sub.tls.cipher.as_deref(), Some("TLS_AES_256_GCM_SHA384"));
    assert_eq!(sub.tls.bits.as_deref(), Some("256/256"));
    let exim = &r.hops[2];
    assert_eq!(exim.tls.format.as_deref(), Some("exim"));
    assert_eq!(exim.tls.version.as_deref(), Some("TLSv1.3"));
    assert_eq!(exim.tls.cipher.as_deref(), Some("TLS_AES_128_GCM_SHA256"));
    assert_eq!(exim.from_ip.as_deref(), Some("209.85.221.41"));
    assert_eq!(exim.id.as_deref(), Some("1tEXaM-0001aB-2c"));
    assert_eq!(exim.for_addr.as_deref(), Some("bob@example.org"));
    // 13:07:13 -0800 is 21:07:13Z: one second before Exim's 21:07:14 +0000.
    assert_eq!(exim.delay_secs, Some(1));
    assert_eq!(ids(&r), vec!["headers.tls_every_hop"]);
}

#[test]
fn legacy_exim_to_gmail() {
    let r = analyze_message(&fixture("exim_to_gmail.eml"));
    use TransportTls::*;
    assert_eq!(states(&r), vec![Tls, Tls, Local]);
    let t = &r.hops[0].tls;
    assert_eq!(t.format.as_deref(), Some("exim-legacy"));
    assert_eq!(t.version.as_deref(), Some("TLSv1.2"));
    assert_eq!(t.cipher.as_deref(), Some("ECDHE_RSA_AES_256_GCM_SHA384"));
    assert_eq!(t.bits.as_deref(), Some("256"));
    let g = &r.hops[1].tls;
    assert_eq!(g.format.as_deref(), Some("gmail"));
    assert_eq!(g.version_raw.as_deref(), Some("TLS1_3"));
    assert_eq!(g.cipher.as_deref(), Some("TLS_AES_128_GCM_SHA256"));
    assert_eq!(g.bits.as_deref(), Some("128/128"));
    assert_eq!(ids(&r), vec!["headers.tls_every_hop"]);
}

#[test]
fn sendmail_verify_not_is_reported_as_info() {
    let r = analyze_message(&fixture("sendmail_verify_not.eml"));
    use TransportTls::*;
    assert_eq!(states(&r), vec![Local, Tls]);
    let t = &r.hops[1].tls;
    assert_eq!(t.format.as_deref(), Some("sendmail"));
    assert_eq!(t.verify.as_deref(), Some("NOT"));
    assert_eq!(t.bits.as_deref(), Some("256"));
    assert_eq!(
        ids(&r),
        vec!["headers.cert_not_verified", "headers.tls_every_hop"]
    );
    assert_eq!(r.findings[0].severity, Severity::Info);
    assert_eq!(r.findings[0].hop, Some(2));
    // The local Sendmail submission has no `from` clause and a +0100 date.
    assert_eq!(r.hops[0].date.as_deref(), Some("2026-11-23T21:07:13Z"));
}

#[test]
fn sendmail_verify_fail_is_a_warning() {
    let raw = b"Received: from a.example (a.example [192.0.2.1])\r\n\tby b.example (8.17.1/8.17.1) with ESMTPS id X\r\n\t(version=TLSv1.2 cipher=ECDHE-RSA-AES256-GCM-SHA384 bits=256 verify=FAIL);\r\n\tMon, 23 Nov 2026 21:07:14 GMT\r\nSubject: x\r\n\r\n";
    let r = analyze_message(raw);
    assert_eq!(
        ids(&r),
        vec!["headers.cert_not_verified", "headers.tls_every_hop"]
    );
    assert_eq!(r.findings[0].severity, Severity::Warning);
}

#[test]
fn cleartext_hop_is_named_with_both_hosts() {
    let r = analyze_message(&fixture("cleartext_hop.eml"));
    use TransportTls::*;
    assert_eq!(states(&r), vec![None, Tls]);
    assert_eq!(ids(&r), vec!["headers.hop_without_tls"]);
    let f = &r.findings[0];
    assert_eq!(f.severity, Severity::Warning);
    assert_eq!(f.hop, Some(1));
    assert!(
        f.title
            .contains("app01.example.com [192.0.2.17] -> gw.example.com"),
        "{}",
        f.title
    );
    assert!(
        f.evidence.starts_with("Received: from app01.example.com"),
        "{}",
        f.evidence
    );
    assert_eq!(r.hops[1].delay_secs, Some(136));
}

#[test]
fn tls10_and_3des_are_flagged() {
    let r = analyze_message(&fixture("tls10_hop.eml"));
    assert_eq!(
        ids(&r),
        vec![
            "headers.legacy_tls_version",
            "headers.legacy_tls_version",
            "headers.weak_cipher",
            "headers.tls_every_hop"
        ]
    );
    assert_eq!(r.hops[0].tls.version_raw.as_deref(), Some("TLS1_0"));
    assert_eq!(r.hops[1].tls.version_raw.as_deref(), Some("TLSv1"));
    assert_eq!(r.hops[1].tls.cipher.as_deref(), Some("DES-CBC3-SHA"));
    assert!(r.findings[2].title.contains("Sweet32"));
}

#[test]
fn unknown_stamp_is_not_guessed_and_client_cert_is_read() {
    let r = analyze_message(&fixture("unknown_stamp.eml"));
    use TransportTls::*;
    assert_eq!(states(&r), vec![Unknown, Tls]);
    assert_eq!(r.hops[0].tls.raw.as_deref(), Some("Using TLS"));
    assert_eq!(r.hops[0].tls.version, Option::None);
    assert_eq!(ids(&r), vec!["headers.tls_unknown"]);
    let t = &r.hops[1].tls;
    assert_eq!(t.server_signature.as_deref(), Some("ECDSA (secp384r1)"));
    assert_eq!(
        t.peer_certificate.as_deref(),
        Some("Client CN \"relay.partner.example\", Issuer \"Example Issuing CA 2\" (verified OK)")
    );
    assert!(console(r).contains("TLS unknown: (Using TLS)"));
}

#[test]
fn rfc3848_marks_without_cipher_comment() {
    for (proto, state) in [
        ("ESMTPS", TransportTls::Tls),
        ("ESMTPSA", TransportTls::Tls),
        ("LMTPS", TransportTls::Tls),
        ("UTF8SMTPS", TransportTls::Tls),
        ("ESMTP", TransportTls::None),
        ("ESMTPA", TransportTls::None),
        ("SMTP", TransportTls::None),
        ("HTTP", TransportTls::Local),
        ("LMTP", TransportTls::Local),
        ("QMQP", TransportTls::Unknown),
    ] {
        let r = parse_received(&format!(
            "from a.example (a.example [192.0.2.1]) by b.example (Postfix) with {proto} id X; Mon, 23 Nov 2026 21:07:14 +0000"
        ));
        let t = tls_facts(&r);
        assert_eq!(t.state, state, "{proto}");
        if state == TransportTls::Tls {
            assert_eq!(t.format.as_deref(), Some("rfc3848"));
            assert_eq!(t.version, Option::None);
        }
    }
}

#[test]
fn loopback_and_localhost_helo() {
    // HELO localhost from a real address is not local.
    let r = parse_received("from localhost (vpn-1.example.net [10.36.117.91]) by smtp.example.net (Postfix) with ESMTP id X; Mon, 23 Nov 2026 21:07:14 +0000");
    assert_eq!(tls_facts(&r).state, TransportTls::None);
    let r = parse_received("from mail.example.org (localhost [127.0.0.1]) by mail.example.org (Postfix) with ESMTP id X; Mon, 23 Nov 2026 21:07:14 +0000");
    assert_eq!(tls_facts(&r).state, TransportTls::Local);
    let r = parse_received("from EX1.example.com (::1) by EX1.example.com (::1) with Microsoft SMTP Server id 15.2.1544.11; Mon, 23 Nov 2026 21:07:14 +0000");
    assert_eq!(tls_facts(&r).state, TransportTls::Local);
    // An Exchange hop between two servers without a version comment is cleartext.
    let r = parse_received("from EX1.example.com (10.0.0.1) by EX2.example.com (10.0.0.2) with Microsoft SMTP Server id 15.2.1544.11; Mon, 23 Nov 2026 21:07:14 +0000");
    assert_eq!(tls_facts(&r).state, TransportTls::None);
}

#[test]
fn authentication_results_tls_properties_are_reported_verbatim() {
    let raw = b"Received: from a.example (a.example [192.0.2.1]) by b.example with ESMTPS id X; Mon, 23 Nov 2026 21:07:14 +0000\r\nAuthentication-Results: b.example; spf=pass smtp.mailfrom=a.example;\r\n x-tls=pass smtp.version=TLSv1.3 smtp.cipher=TLS_AES_256_GCM_SHA384\r\n\r\n";
    let r = analyze_message(raw);
    assert_eq!(r.context.len(), 1);
    assert_eq!(
        r.context[0].value,
        "x-tls=pass smtp.version=TLSv1.3 smtp.cipher=TLS_AES_256_GCM_SHA384"
    );
}

#[test]
fn crlf_and_lf_give_the_same_hops() {
    let lf = fixture("exo_to_postfix.eml");
    let text = String::from_utf8(lf.clone()).unwrap();
    let crlf = text.replace('\n', "\r\n");
    let a = analyze_message(&lf);
    let b = analyze_message(crlf.as_bytes());
    assert_eq!(a.hops, b.hops);
}

#[test]
fn unfold_collapses_folding_whitespace() {
    assert_eq!(unfold(" a\r\n\tb  c\n d "), "a b c d");
}

#[test]
fn no_received_at_all() {
    let r = analyze_message(b"From: a@example.org\r\nSubject: hi\r\n\r\nbody\r\n");
    assert!(r.hops.is_empty());
    assert_eq!(ids(&r), vec!["headers.no_received"]);
    assert_eq!(r.worst(), Some(Severity::Warning));
    assert!(console(r).contains("no Received: header"));
}

#[test]
fn garbage_dates_give_no_delay_and_an_info() {
    let raw = b"Received: from a.example (a.example [192.0.2.1]) by b.example with ESMTPS id X; not a date at all\r\nReceived: from c.example (c.example [192.0.2.3]) by a.example with ESMTPS id Y; Mon, 99 Foo 2026 99:99:99 +9999\r\nReceived: from d.example (d.example [192.0.2.4]) by c.example with ESMTPS id Z\r\n\r\n";
    let r = analyze_message(raw);
    assert_eq!(r.hops.len(), 3);
    assert!(r
        .hops
        .iter()
        .all(|h| h.date.is_none() && h.delay_secs.is_none()));
    assert_eq!(r.hops[0].date_raw, Option::None);
    assert_eq!(r.hops[2].date_raw.as_deref(), Some("not a date at all"));
    let bad: Vec<_> = r
        .findings
        .iter()
        .filter(|f| f.id == "headers.bad_date")
        .map(|f| f.hop)
        .collect();
    assert_eq!(bad, vec![Some(2), Some(3)]);
    console(r);
}

#[test]
fn one_megabyte_header_line() {
    let mut raw = b"Received: from a.example (a.example [192.0.2.1]) (".to_vec();
    raw.extend(std::iter::repeat_n(b'x', 1 << 20));
    raw.extend_from_slice(
        b") by b.example with ESMTP id X; Mon, 23 Nov 2026 21:07:14 +0000\r\nX-Long: ",
    );
    raw.extend(std::iter::repeat_n(b'y', 1 << 20));
    raw.extend_from_slice(b"\r\n\r\n");
    let r = analyze_message(&raw);
    assert_eq!(r.hops.len(), 1);
    assert_eq!(r.hops[0].tls.state, TransportTls::None);
    assert_eq!(r.hops[0].by_host.as_deref(), Some("b.example"));
    // Evidence is bounded.
    assert!(
        r.hops[0].raw.len() < MAX_EVIDENCE * 2,
        "{}",
        r.hops[0].raw.len()
    );
    assert!(r.findings[0].evidence.len() < MAX_EVIDENCE * 2);
    assert!(r.hops[0].raw.contains("more bytes not shown"));
}

#[test]
fn binary_junk_and_odd_syntax_do_not_panic() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(6);
    for len in [0usize, 1, 2, 10, 100, 1000, 10_000] {
        for _ in 0..20 {
            let junk: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            let r = analyze_message(&junk);
            let mut out = Vec::new();
            write_console(std::slice::from_ref(&r), &mut out).unwrap();
            write_json(&[r], &mut out).unwrap();
            // The same junk behind a Received: prefix reaches our parser.
            let mut raw = b"Received: ".to_vec();
            raw.extend_from_slice(&junk);
            let _ = analyze_message(&raw);
            let _ = parse_received(&String::from_utf8_lossy(&junk));
        }
    }
    for odd in [
        "(((((",
        ")))) from",
        "from",
        "from (",
        "by ; ;",
        "with Microsoft",
        "from [ by ] with [IPv6:",
        "\"unterminated",
        "from a (b [999.1.1.1]) by c with esmtps (TLS1.2:::) tls",
        "from a by b with esmtps (TLS1.3) tls",
    ] {
        let r = parse_received(odd);
        let _ = tls_facts(&r);
    }
    let r = analyze_message(&[0xff, 0xfe, 0x00, 0x01]);
    assert_eq!(ids(&r), vec!["headers.no_received"]);
}

#[test]
fn mbox_with_three_messages() {
    let reports = analyze_input(&fixture("three.mbox"), true);
    assert_eq!(reports.len(), 3);
    let hops: Vec<usize> = reports.iter().map(|r| r.hops.len()).collect();
    assert_eq!(hops, vec![6, 2, 2]);
    assert_eq!(ids(&reports[2]), vec!["headers.hop_without_tls"]);
    let mut out = Vec::new();
    write_json(&reports, &mut out).unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summaries: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["event"] == "headers.summary")
        .collect();
    assert_eq!(summaries.len(), 3);
    assert_eq!(summaries[2]["message"], 3);
    assert_eq!(summaries[2]["without_tls"], 1);
    assert_eq!(summaries[2]["worst"], "warning");
    let hop_lines = lines.iter().filter(|l| l["event"] == "headers.hop").count();
    assert_eq!(hop_lines, 10);
}

#[test]
fn json_hop_and_finding_shape() {
    let r = analyze_message(&fixture("cleartext_hop.eml"));
    let mut out = Vec::new();
    write_json(&[r], &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert_eq!(lines[0]["event"], "headers.hop");
    assert_eq!(lines[0]["message"], 1);
    assert_eq!(lines[0]["index"], 1);
    assert_eq!(lines[0]["from_ip"], "192.0.2.17");
    assert_eq!(lines[0]["tls"]["state"], "none");
    assert_eq!(lines[1]["tls"]["state"], "tls");
    assert_eq!(lines[1]["tls"]["cipher"], "ECDHE-RSA-AES256-GCM-SHA384");
    assert_eq!(lines[1]["delay_secs"], 136);
    assert_eq!(lines[2]["event"], "headers.finding");
    assert_eq!(lines[2]["id"], "headers.hop_without_tls");
    assert_eq!(lines[2]["severity"], "warning");
    assert!(lines[2]["advice"].as_str().unwrap().contains("STARTTLS"));
    assert_eq!(lines[3]["event"], "headers.summary");
    assert_eq!(lines[3]["hops"], 2);
}

#[test]
fn google_transport_security_and_envelope_from_comments() {
    let r = parse_received("from mail-sor-f41.google.com (mail-sor-f41.google.com. [209.85.220.41]) by mx.google.com with SMTPS id x for <a@gmail.example> (Google Transport Security); Mon, 23 Nov 2026 13:07:14 -0800 (PST)");
    assert_eq!(r.from_ip.as_deref(), Some("209.85.220.41"));
    let t = tls_facts(&r);
    assert_eq!(t.state, TransportTls::Tls);
    assert_eq!(t.format.as_deref(), Some("google-transport-security"));
    // An address that contains "tls" in an envelope-from comment is not a TLS stamp.
    let r = parse_received("from a.example ([192.0.2.1] helo=a.example) by b.example with esmtp (Exim 4.96) (envelope-from <tls@a.example>) id 1t-2; Mon, 23 Nov 2026 21:07:14 +0000");
    assert_eq!(tls_facts(&r).state, TransportTls::None);
}

/// Header blocks written by a real Postfix 3.7.11 (see fixtures/README.md).
#[test]
fn real_postfix_37_headers() {
    let r = analyze_message(&fixture("postfix37_real_tls13.eml"));
    assert_eq!(r.hops.len(), 1);
    let h = &r.hops[0];
    assert_eq!(h.from_host.as_deref(), Some("client.test"));
    assert_eq!(h.from_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(h.by_host.as_deref(), Some("mx.pf-headers.test"));
    assert_eq!(h.id.as_deref(), Some("7B70398C240"));
    assert_eq!(h.date.as_deref(), Some("2026-11-23T21:42:01Z"));
    // The stamp wins over the loopback address: TLS was used.
    assert_eq!(h.tls.state, TransportTls::Tls);
    assert_eq!(h.tls.format.as_deref(), Some("postfix"));
    assert_eq!(h.tls.version.as_deref(), Some("TLSv1.3"));
    assert_eq!(h.tls.cipher.as_deref(), Some("TLS_AES_256_GCM_SHA384"));
    assert_eq!(h.tls.bits.as_deref(), Some("256/256"));
    assert_eq!(h.tls.key_exchange.as_deref(), Some("X25519"));
    assert_eq!(
        h.tls.server_signature.as_deref(),
        Some("RSA-PSS (2048 bits)")
    );
    assert_eq!(
        h.tls.peer_certificate.as_deref(),
        Some("No client certificate requested")
    );
    assert_eq!(ids(&r), vec!["headers.tls_every_hop"]);

    let r = analyze_message(&fixture("postfix37_real_tls12.eml"));
    let t = &r.hops[0].tls;
    assert_eq!(t.version.as_deref(), Some("TLSv1.2"));
    assert_eq!(t.cipher.as_deref(), Some("ECDHE-RSA-AES256-GCM-SHA384"));
    assert_eq!(t.key_exchange, Option::None);
    assert_eq!(ids(&r), vec!["headers.tls_every_hop"]);

    let r = analyze_message(&fixture("postfix37_real_plain.eml"));
    assert_eq!(r.hops[0].protocol.as_deref(), Some("ESMTP"));
    assert_eq!(r.hops[0].tls.state, TransportTls::Local);
    assert_eq!(ids(&r), Vec::<&str>::new());
}

/// An input the `headers` fuzz target found: a `gb2312` encoded word in an
/// address header that overflowed mail-parser 0.9's decode buffer (a panic
/// in debug builds). It must give a report, as a message and as an mbox.
#[test]
fn fuzz_found_gb18030_encoded_word_is_analysed() {
    let raw = fixture("fuzz_gb18030_overflow.bin");
    for mbox in [false, true] {
        let reports = analyze_input(&raw, mbox);
        let mut out = Vec::new();
        write_json(&reports, &mut out).unwrap();
        let mut text = Vec::new();
        write_console(&reports, &mut text).unwrap();
        if !mbox {
            assert_eq!(reports.len(), 1);
            assert!(!out.is_empty() && !text.is_empty());
        }
    }
}
