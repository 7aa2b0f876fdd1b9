//! Transcript tests for the SMTP observer: per-fixture facts, every split
//! point, byte-by-byte feeding, exact marks, privacy, memory bounds and a
//! seeded robustness run. Fixture format: `fixtures/README.md`.

use std::ops::Range;

use rand::{Rng, SeedableRng};

use super::*;
use crate::event::Side;

const FIXTURES: &[(&str, &str)] = &[
    ("plain", include_str!("fixtures/plain.txt")),
    ("empty_body", include_str!("fixtures/empty_body.txt")),
    ("pipelined", include_str!("fixtures/pipelined.txt")),
    (
        "ehlo_multiline",
        include_str!("fixtures/ehlo_multiline.txt"),
    ),
    ("bdat", include_str!("fixtures/bdat.txt")),
    ("auth", include_str!("fixtures/auth.txt")),
    ("starttls_ok", include_str!("fixtures/starttls_ok.txt")),
    (
        "starttls_refused",
        include_str!("fixtures/starttls_refused.txt"),
    ),
    ("masked", include_str!("fixtures/masked.txt")),
    ("http", include_str!("fixtures/http.txt")),
    ("tls_client", include_str!("fixtures/tls_client.txt")),
    ("tls_server", include_str!("fixtures/tls_server.txt")),
    ("tls_server_hs", include_str!("fixtures/tls_server_hs.txt")),
    ("garbage", include_str!("fixtures/garbage.txt")),
    ("no_code", include_str!("fixtures/no_code.txt")),
    ("bare_lf", include_str!("fixtures/bare_lf.txt")),
    (
        "recorded_swaks_pipelined",
        include_str!("fixtures/recorded_swaks_pipelined.txt"),
    ),
    (
        "recorded_swaks_auth",
        include_str!("fixtures/recorded_swaks_auth.txt"),
    ),
];

type Chunks = Vec<(Side, Vec<u8>)>;

fn unescape(text: &str) -> Vec<u8> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            match b[i + 1] {
                b'r' => out.push(b'\r'),
                b'n' => out.push(b'\n'),
                b't' => out.push(b'\t'),
                b'\\' => out.push(b'\\'),
                b'x' => {
                    let hex = std::str::from_utf8(&b[i + 2..i + 4]).unwrap();
                    out.push(u8::from_str_radix(hex, 16).unwrap());
                    i += 2;
                }
                other => panic!("bad escape \\{}", other as char),
            }
            i += 2;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fn parse_fixture(text: &str) -> Chunks {
    let mut chunks: Chunks = Vec::new();
    let mut open = false;
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if line == "--" {
            open = false;
            continue;
        }
        let (side, raw) = match line.get(..2) {
            Some("C:") => (Side::Client, false),
            Some("S:") => (Side::Server, false),
            Some("C=") => (Side::Client, true),
            Some("S=") => (Side::Server, true),
            _ => panic!("bad fixture line {line:?}"),
        };
        let body = line.get(3..).unwrap_or("");
        let mut bytes = unescape(body);
        if !raw {
            bytes.extend_from_slice(b"\r\n");
        }
        match chunks.last_mut() {
            Some((s, buf)) if open && *s == side => buf.extend_from_slice(&bytes),
            _ => chunks.push((side, bytes)),
        }
        open = true;
    }
    chunks
}

fn fixture(name: &str) -> Chunks {
    let text = FIXTURES
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no fixture {name}"))
        .1;
    parse_fixture(text)
}

/// What one run produced, in split-independent form.
#[derive(Debug, PartialEq)]
struct Outcome {
    events: Vec<String>,
    /// Absolute, merged: (side, range in that side's stream, kind).
    marks: Vec<(Side, Range<u64>, MarkKind)>,
    /// Bytes per side that belong to TLS (leftovers + everything fed after).
    tls: Option<(Vec<u8>, Vec<u8>)>,
    desynced: bool,
    max_buffered: usize,
}

impl Outcome {
    fn decoded(&self) -> Vec<SmtpEvent> {
        self.events
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect()
    }
    fn names(&self) -> Vec<String> {
        self.events
            .iter()
            .map(|e| {
                let v: serde_json::Value = serde_json::from_str(e).unwrap();
                v["event"].as_str().unwrap().to_string()
            })
            .collect()
    }
}

/// Feeds the chunks, each cut into pieces by `cut(chunk_index, len)`
/// (a list of piece lengths).
fn run_with(
    chunks: &Chunks,
    limits: SmtpLimits,
    cut: &dyn Fn(usize, usize) -> Vec<usize>,
) -> Outcome {
    let mut obs = SmtpObserver::new(limits);
    let mut events = Vec::new();
    let mut marks = Vec::new();
    let mut offsets = (0u64, 0u64);
    let mut tls: Option<(Vec<u8>, Vec<u8>)> = None;
    let mut max_buffered = 0;
    for (ci, (side, bytes)) in chunks.iter().enumerate() {
        let mut at = 0;
        let lens = cut(ci, bytes.len());
        assert_eq!(lens.iter().sum::<usize>(), bytes.len());
        for len in lens {
            let piece = &bytes[at..at + len];
            at += len;
            let base = match side {
                Side::Client => offsets.0,
                Side::Server => offsets.1,
            };
            if let Some((c, s)) = tls.as_mut() {
                match side {
                    Side::Client => c.extend_from_slice(piece),
                    Side::Server => s.extend_from_slice(piece),
                }
            }
            let mut m = Vec::new();
            let p = obs.feed(*side, piece, &mut events, &mut m);
            for mark in m {
                assert!(mark.range.end <= piece.len(), "mark outside data");
                assert!(!mark.range.is_empty(), "empty mark");
                marks.push((
                    *side,
                    base + mark.range.start as u64..base + mark.range.end as u64,
                    mark.kind,
                ));
            }
            if let Progress::StartTls {
                client_leftover,
                server_leftover,
            } = p
            {
                assert!(tls.is_none(), "StartTls returned twice");
                tls = Some((client_leftover, server_leftover));
            }
            max_buffered = max_buffered.max(obs.buffered_bytes());
            match side {
                Side::Client => offsets.0 += len as u64,
                Side::Server => offsets.1 += len as u64,
            }
        }
    }
    marks.sort_by_key(|(s, r, k)| (*s == Side::Server, r.start, *k == MarkKind::Secret));
    let mut merged: Vec<(Side, Range<u64>, MarkKind)> = Vec::new();
    for (s, r, k) in marks {
        match merged.last_mut() {
            Some((ls, lr, lk)) if *ls == s && *lk == k && lr.end == r.start => lr.end = r.end,
            _ => merged.push((s, r, k)),
        }
    }
    Outcome {
        events: events
            .iter()
            .map(|e| serde_json::to_string(e).unwrap())
            .collect(),
        marks: merged,
        tls,
        desynced: obs.is_desynced(),
        max_buffered,
    }
}

fn run(chunks: &Chunks) -> Outcome {
    run_with(chunks, SmtpLimits::default(), &|_, len| vec![len])
}

fn stream(chunks: &Chunks, side: Side) -> Vec<u8> {
    chunks
        .iter()
        .filter(|(s, _)| *s == side)
        .flat_map(|(_, b)| b.clone())
        .collect()
}

fn marked(chunks: &Chunks, out: &Outcome, kind: MarkKind) -> Vec<Vec<u8>> {
    let client = stream(chunks, Side::Client);
    out.marks
        .iter()
        .filter(|(s, _, k)| *s == Side::Client && *k == kind)
        .map(|(_, r, _)| client[r.start as usize..r.end as usize].to_vec())
        .collect()
}

fn find_pos(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{:?} not found", String::from_utf8_lossy(needle)))
}

// ----- per-fixture facts ------------------------------------------------

#[test]
fn plain_session() {
    let chunks = fixture("plain");
    let out = run(&chunks);
    assert!(!out.desynced);
    assert_eq!(
        out.names(),
        [
            "smtp.banner",
            "smtp.command",
            "smtp.ehlo",
            "smtp.reply",
            "smtp.capabilities",
            "smtp.command",
            "smtp.reply",
            "smtp.command",
            "smtp.reply",
            "smtp.command",
            "smtp.reply",
            "smtp.data",
            "smtp.reply",
            "smtp.message",
            "smtp.command",
            "smtp.reply",
            "smtp.command",
            "smtp.reply",
        ]
    );
    let ev = out.decoded();
    assert_eq!(
        ev[0],
        SmtpEvent::Banner {
            code: 220,
            enhanced: None,
            text: "mx1.example.net ESMTP Postfix (Debian/GNU)".into(),
            lines: vec!["220 mx1.example.net ESMTP Postfix (Debian/GNU)".into()],
            host: Some("mx1.example.net".into()),
        }
    );
    assert_eq!(
        ev[2],
        SmtpEvent::Ehlo {
            verb: "EHLO".into(),
            name: "client.example.org".into()
        }
    );
    match &ev[4] {
        SmtpEvent::Capabilities {
            host,
            capabilities,
            starttls,
            size,
            pipelining,
            chunking,
            enhancedstatuscodes,
            eightbitmime,
            smtputf8,
            ..
        } => {
            assert_eq!(host.as_deref(), Some("mx1.example.net"));
            assert_eq!(capabilities.len(), 8);
            assert_eq!(capabilities[1], "SIZE 10240000");
            assert!(!starttls);
            assert_eq!(*size, Some(10_240_000));
            assert!(
                *pipelining && *chunking && *enhancedstatuscodes && *eightbitmime && !*smtputf8
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        ev[5],
        SmtpEvent::Command {
            verb: "MAIL".into(),
            arg: "FROM:<alice@example.org> SIZE=120".into(),
            len: 40,
            address: Some("alice@example.org".into()),
            params: vec!["SIZE=120".into()],
        }
    );
    let body = "Subject: hello\r\n\r\nHi Bob,\r\n..a line starting with a dot\r\n";
    assert_eq!(
        ev[11],
        SmtpEvent::Data {
            bytes: body.len() as u64,
            lines: 4,
            bare_lf: false
        }
    );
    match &ev[12] {
        SmtpEvent::Reply {
            code,
            enhanced,
            command,
            text,
            ..
        } => {
            assert_eq!(*code, 250);
            assert_eq!(enhanced.as_deref(), Some("2.0.0"));
            assert_eq!(text, "Ok: queued as 4XkR2B3c0Pz9tK");
            assert_eq!(command.as_deref(), Some("<end of data>"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        ev[13],
        SmtpEvent::Message {
            via: "DATA".into(),
            size: body.len() as u64,
            accepted: true,
            code: 250,
            enhanced: Some("2.0.0".into()),
            text: "Ok: queued as 4XkR2B3c0Pz9tK".into(),
            mail_from: Some("alice@example.org".into()),
            rcpt_to: vec!["bob@example.net".into()],
            rcpt_count: 1,
        }
    );
    // The body mark is exactly the body plus ".\r\n".
    let client = stream(&chunks, Side::Client);
    let start = find_pos(&client, b"DATA\r\n") + 6;
    let end = find_pos(&client, b"\r\n.\r\n") + 5;
    assert_eq!(
        out.marks,
        vec![(Side::Client, start as u64..end as u64, MarkKind::Body)]
    );
    assert_eq!(&client[end - 3..end], b".\r\n");
}

#[test]
fn empty_body_right_after_354() {
    let out = run(&fixture("empty_body"));
    let ev = out.decoded();
    assert!(ev.contains(&SmtpEvent::Data {
        bytes: 0,
        lines: 0,
        bare_lf: false
    }));
    assert!(ev.iter().any(|e| matches!(
        e,
        SmtpEvent::Message {
            size: 0,
            accepted: true,
            ..
        }
    )));
    assert_eq!(out.marks.len(), 1);
    assert_eq!(out.marks[0].1.end - out.marks[0].1.start, 3);
    // HELO gives no capabilities.
    assert!(!out.names().contains(&"smtp.capabilities".to_string()));
}

#[test]
fn pipelined_with_rejected_rcpt() {
    let out = run(&fixture("pipelined"));
    assert!(!out.desynced);
    let replies: Vec<(u16, Option<String>, Option<String>)> = out
        .decoded()
        .into_iter()
        .filter_map(|e| match e {
            SmtpEvent::Reply {
                code,
                enhanced,
                command,
                ..
            } => Some((code, enhanced, command)),
            _ => None,
        })
        .collect();
    let s = |x: &str| Some(x.to_string());
    assert_eq!(
        replies,
        vec![
            (250, None, s("EHLO mail.fabrikam.com")),
            (
                250,
                s("2.1.0"),
                s("MAIL FROM:<news@fabrikam.com> SIZE=2048")
            ),
            (250, s("2.1.5"), s("RCPT TO:<ann@contoso.com>")),
            (550, s("5.1.10"), s("RCPT TO:<nobody@contoso.com>")),
            (354, None, s("DATA")),
            (250, s("2.6.0"), s("<end of data>")),
            (221, s("2.0.0"), s("QUIT")),
        ]
    );
    let ev = out.decoded();
    let caps = ev
        .iter()
        .find_map(|e| match e {
            SmtpEvent::Capabilities {
                starttls,
                auth,
                host,
                ..
            } => Some((*starttls, auth.clone(), host.clone())),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        caps,
        (true, vec!["NTLM".to_string()], s("EX01.contoso.com"))
    );
    assert!(ev.iter().any(|e| matches!(
        e,
        SmtpEvent::Banner { host: Some(h), .. } if h == "EX01.contoso.com"
    )));
}

#[test]
fn multiline_enhanced_reply() {
    let out = run(&fixture("ehlo_multiline"));
    let ev = out.decoded();
    match ev
        .iter()
        .find(|e| matches!(e, SmtpEvent::Capabilities { .. }))
    {
        Some(SmtpEvent::Capabilities {
            host,
            capabilities,
            starttls,
            size,
            smtputf8,
            chunking,
            requiretls,
            ..
        }) => {
            assert_eq!(
                host.as_deref(),
                Some("BN8NAM12FT047.mail.protection.outlook.com")
            );
            assert_eq!(capabilities.len(), 9);
            assert!(*starttls && *smtputf8 && *chunking && !*requiretls);
            assert_eq!(*size, Some(157_286_400));
        }
        other => panic!("{other:?}"),
    }
    let reject = ev
        .iter()
        .find(|e| matches!(e, SmtpEvent::Reply { code: 550, .. }))
        .unwrap();
    assert_eq!(
        reject,
        &SmtpEvent::Reply {
            code: 550,
            enhanced: Some("5.7.606".into()),
            text: "Access denied, banned sending IP [198.51.100.7]. To request removal from this list please visit https://sender.office.com/ and follow the directions.".into(),
            lines: vec![
                "550-5.7.606 Access denied, banned sending IP [198.51.100.7]. To request removal from".into(),
                "550-5.7.606 this list please visit https://sender.office.com/ and follow the".into(),
                "550 5.7.606 directions.".into(),
            ],
            command: Some("MAIL FROM:<user@contoso.com>".into()),
        }
    );
}

#[test]
fn bdat_chunks_with_binary_payload() {
    let chunks = fixture("bdat");
    let out = run(&chunks);
    assert!(!out.desynced, "{:?}", out.events);
    let ev = out.decoded();
    let bdats: Vec<_> = ev
        .iter()
        .filter(|e| matches!(e, SmtpEvent::Bdat { .. }))
        .cloned()
        .collect();
    assert_eq!(
        bdats,
        vec![
            SmtpEvent::Bdat {
                size: 10,
                last: false
            },
            SmtpEvent::Bdat {
                size: 6,
                last: true
            }
        ]
    );
    let msg: Vec<_> = ev
        .iter()
        .filter(|e| matches!(e, SmtpEvent::Message { .. }))
        .collect();
    assert_eq!(
        msg,
        vec![&SmtpEvent::Message {
            via: "BDAT".into(),
            size: 16,
            accepted: true,
            code: 250,
            enhanced: Some("2.6.0".into()),
            text: "Queued mail for delivery".into(),
            mail_from: Some("a@fabrikam.com".into()),
            rcpt_to: vec!["b@contoso.com".into()],
            rcpt_count: 1,
        }]
    );
    // "QUIT" inside the payload is not a command; the real QUIT is.
    let quits = ev
        .iter()
        .filter(|e| matches!(e, SmtpEvent::Command { verb, .. } if verb == "QUIT"))
        .count();
    assert_eq!(quits, 1);
    let labels: Vec<_> = ev
        .iter()
        .filter_map(|e| match e {
            SmtpEvent::Reply { command, .. } => command.clone(),
            _ => None,
        })
        .collect();
    assert!(labels.contains(&"BDAT 6 LAST".to_string()));
    assert_eq!(
        marked(&chunks, &out, MarkKind::Body),
        vec![
            b"\x00\x01\r\n.\r\n\xff\xfeZ".to_vec(),
            b"\x00QUIT\n".to_vec()
        ]
    );
}

#[test]
fn auth_never_leaks_credentials() {
    let chunks = fixture("auth");
    let out = run(&chunks);
    assert!(!out.desynced);
    let all = out.events.join("\n");
    for secret in [
        "AGFsaWNlAHMzY3JldFBhc3M=",
        "YWxpY2U=",
        "czNjcmV0UGFzcw==",
        "s3cretPass",
        "alice",
        "VXNlcm5hbWU6",
        "UGFzc3dvcmQ6",
    ] {
        assert!(!all.contains(secret), "{secret} leaked into {all}");
    }
    let ev = out.decoded();
    assert!(ev.contains(&SmtpEvent::Command {
        verb: "AUTH".into(),
        arg: "PLAIN [redacted]".into(),
        len: 37,
        address: None,
        params: vec![],
    }));
    assert!(ev.contains(&SmtpEvent::Auth {
        mechanism: "PLAIN".into(),
        initial_response: true
    }));
    assert!(ev.contains(&SmtpEvent::Auth {
        mechanism: "LOGIN".into(),
        initial_response: false
    }));
    let auth_data: Vec<_> = ev
        .iter()
        .filter(|e| matches!(e, SmtpEvent::AuthData { .. }))
        .cloned()
        .collect();
    let ad = |side, bytes, cancel| SmtpEvent::AuthData {
        side,
        bytes,
        cancel,
    };
    assert_eq!(
        auth_data,
        vec![
            ad(Side::Server, 12, false),
            ad(Side::Client, 8, false),
            ad(Side::Server, 12, false),
            ad(Side::Client, 16, false),
            ad(Side::Server, 12, false),
            ad(Side::Client, 1, true),
        ]
    );
    assert!(ev.iter().any(|e| matches!(
        e,
        SmtpEvent::Reply { code: 235, command: Some(c), .. } if c == "[redacted]"
    )));
    assert!(ev.iter().any(|e| matches!(
        e,
        SmtpEvent::Reply { code: 334, text, .. } if text == "[redacted]"
    )));
    // After the 501 the client is back in command mode.
    assert!(ev.iter().any(|e| matches!(
        e,
        SmtpEvent::Command { verb, .. } if verb == "QUIT"
    )));
    // Exactly the credentials are marked secret.
    assert_eq!(
        marked(&chunks, &out, MarkKind::Secret),
        vec![
            b"AGFsaWNlAHMzY3JldFBhc3M=".to_vec(),
            b"YWxpY2U=".to_vec(),
            b"czNjcmV0UGFzcw==".to_vec(),
            b"*".to_vec()
        ]
    );
    let caps = ev
        .iter()
        .find_map(|e| match e {
            SmtpEvent::Capabilities { auth, .. } => Some(auth.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(caps, vec!["PLAIN".to_string(), "LOGIN".to_string()]);
}

#[test]
fn starttls_accepted_hands_over_leftovers() {
    let out = run(&fixture("starttls_ok"));
    assert!(!out.desynced);
    let ev = out.decoded();
    assert_eq!(
        ev.last(),
        Some(&SmtpEvent::StartTls {
            code: 220,
            accepted: true,
            enhanced: Some("2.0.0".into()),
            text: "Ready to start TLS".into()
        })
    );
    let (c, s) = out.tls.unwrap();
    assert_eq!(
        c,
        b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00\x16\x03\x03\x00\x01\x14".to_vec()
    );
    assert_eq!(
        s,
        b"\x16\x03\x03\x00\x02\x02\x00\x14\x03\x03\x00\x01\x01".to_vec()
    );
}

#[test]
fn starttls_accepted_exact_leftovers_unsplit() {
    let chunks = fixture("starttls_ok");
    let mut obs = SmtpObserver::new(SmtpLimits::default());
    let (mut ev, mut m) = (Vec::new(), Vec::new());
    let mut last = Progress::Continue;
    for (side, bytes) in &chunks[..chunks.len() - 2] {
        last = obs.feed(*side, bytes, &mut ev, &mut m);
    }
    assert_eq!(
        last,
        Progress::StartTls {
            client_leftover: b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00".to_vec(),
            server_leftover: b"\x16\x03\x03\x00\x02\x02\x00".to_vec(),
        }
    );
    let n = ev.len();
    // Further input is ignored.
    assert_eq!(
        obs.feed(Side::Client, b"EHLO again\r\n", &mut ev, &mut m),
        Progress::Continue
    );
    assert_eq!(ev.len(), n);
    assert!(!obs.is_desynced());
}

#[test]
fn starttls_refused_continues_in_cleartext() {
    let out = run(&fixture("starttls_refused"));
    assert!(!out.desynced);
    assert!(out.tls.is_none());
    let ev = out.decoded();
    assert!(ev.contains(&SmtpEvent::StartTls {
        code: 454,
        accepted: false,
        enhanced: Some("4.7.0".into()),
        text: "TLS not available due to local problem".into()
    }));
    let replies: Vec<_> = ev
        .iter()
        .filter_map(|e| match e {
            SmtpEvent::Reply { code, command, .. } => Some((*code, command.clone().unwrap())),
            _ => None,
        })
        .collect();
    assert_eq!(
        replies,
        vec![
            (250, "EHLO client.example.org".to_string()),
            (454, "STARTTLS".to_string()),
            (250, "MAIL FROM:<a@example.org>".to_string()),
            (250, "RCPT TO:<b@example.net>".to_string()),
            (221, "QUIT".to_string()),
        ]
    );
}

#[test]
fn firewall_masking_is_reported() {
    let out = run(&fixture("masked"));
    assert!(!out.desynced);
    let masked: Vec<_> = out
        .decoded()
        .into_iter()
        .filter(|e| matches!(e, SmtpEvent::Masked { .. }))
        .collect();
    let m = |side, what: &str, sample: &str| SmtpEvent::Masked {
        side,
        what: what.into(),
        sample: sample.into(),
    };
    assert_eq!(
        masked,
        vec![
            m(
                Side::Server,
                "banner",
                "220 ****************************2*0**0*2***"
            ),
            m(Side::Server, "capabilities", "250-XXXXXXXA"),
            m(Side::Client, "command", "XXXXXXXX"),
        ]
    );
    let ev = out.decoded();
    assert!(ev
        .iter()
        .any(|e| matches!(e, SmtpEvent::Banner { host: None, .. })));
    assert!(ev.iter().any(|e| matches!(
        e,
        SmtpEvent::Capabilities {
            starttls: false,
            ..
        }
    )));
}

fn desync_of(name: &str) -> (Side, String, u64) {
    let out = run(&fixture(name));
    assert!(out.desynced, "{name} did not desync");
    match out.decoded().last() {
        Some(SmtpEvent::Desync {
            side,
            reason,
            offset,
        }) => (*side, reason.clone(), *offset),
        other => panic!("{name}: last event {other:?}"),
    }
}

#[test]
fn desync_reasons_are_specific() {
    let (side, reason, offset) = desync_of("http");
    assert_eq!((side, offset), (Side::Client, 0));
    assert!(reason.contains("HTTP request (GET)"), "{reason}");

    let (side, reason, offset) = desync_of("tls_client");
    assert_eq!((side, offset), (Side::Client, 0));
    assert!(
        reason.contains("TLS ClientHello on a cleartext"),
        "{reason}"
    );

    let (side, reason, offset) = desync_of("tls_server");
    assert_eq!((side, offset), (Side::Server, 0));
    assert!(reason.contains("server sent a TLS alert"), "{reason}");

    let (side, reason, _) = desync_of("tls_server_hs");
    assert_eq!(side, Side::Server);
    assert!(reason.contains("server sent a TLS record"), "{reason}");

    let (side, reason, offset) = desync_of("garbage");
    assert_eq!((side, offset), (Side::Client, 9));
    assert!(reason.contains("binary data (byte 0x00)"), "{reason}");

    let (side, reason, offset) = desync_of("no_code");
    assert_eq!(side, Side::Server);
    assert_eq!(offset, "220 mx1.example.net ESMTP Postfix\r\n".len() as u64);
    assert_eq!(reason, "reply without a 3-digit code");
}

#[test]
fn bare_lf_is_tolerated_and_noted() {
    let out = run(&fixture("bare_lf"));
    assert!(!out.desynced);
    let ev = out.decoded();
    assert!(ev.contains(&SmtpEvent::BareLf {
        side: Side::Client,
        offset: "HELO sloppy.example.org".len() as u64
    }));
    assert!(ev.contains(&SmtpEvent::Data {
        bytes: "line one\nline two\r\n".len() as u64,
        lines: 2,
        bare_lf: true
    }));
    assert!(ev
        .iter()
        .any(|e| matches!(e, SmtpEvent::Message { accepted: true, .. })));
}

// ----- memory bounds ------------------------------------------------------

#[test]
fn ten_megabyte_line_desyncs_with_bounded_memory() {
    for side in [Side::Client, Side::Server] {
        let limits = SmtpLimits::default();
        let mut obs = SmtpObserver::new(limits);
        let (mut ev, mut m) = (Vec::new(), Vec::new());
        let block = vec![b'a'; 64 * 1024];
        let mut max = 0;
        for _ in 0..160 {
            obs.feed(side, &block, &mut ev, &mut m);
            max = max.max(obs.buffered_bytes());
        }
        assert!(obs.is_desynced());
        assert!(max <= 2 * limits.max_line, "buffered {max}");
        assert_eq!(ev.len(), 1);
        match &ev[0] {
            SmtpEvent::Desync {
                side: s,
                reason,
                offset,
            } => {
                assert_eq!(*s, side);
                assert_eq!(*offset, 4096);
                assert!(
                    reason.contains("longer than 4096 bytes without CRLF"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn starttls_hold_is_bounded() {
    let limits = SmtpLimits {
        max_line: 4096,
        max_handoff: 100,
    };
    let mut obs = SmtpObserver::new(limits);
    let (mut ev, mut m) = (Vec::new(), Vec::new());
    obs.feed(Side::Server, b"220 mx ESMTP\r\n", &mut ev, &mut m);
    obs.feed(Side::Client, b"STARTTLS\r\n", &mut ev, &mut m);
    obs.feed(Side::Client, &[0x16; 60], &mut ev, &mut m);
    assert!(!obs.is_desynced());
    obs.feed(Side::Client, &[0x16; 60], &mut ev, &mut m);
    assert!(obs.is_desynced());
    assert!(matches!(
        ev.last(),
        Some(SmtpEvent::Desync { side: Side::Client, offset: 110, reason }) if reason.contains("more than 100 bytes after STARTTLS")
    ));
}

#[test]
fn pipelining_queue_is_bounded() {
    let mut obs = SmtpObserver::new(SmtpLimits::default());
    let (mut ev, mut m) = (Vec::new(), Vec::new());
    obs.feed(Side::Server, b"220 mx ESMTP\r\n", &mut ev, &mut m);
    let line = b"NOOP\r\n".repeat(1001);
    obs.feed(Side::Client, &line, &mut ev, &mut m);
    assert!(obs.is_desynced());
    assert!(obs.buffered_bytes() < 1024);
}

#[test]
fn auth_lines_may_exceed_max_line() {
    let mut obs = SmtpObserver::new(SmtpLimits::default());
    let (mut ev, mut m) = (Vec::new(), Vec::new());
    obs.feed(Side::Server, b"220 mx ESMTP\r\n", &mut ev, &mut m);
    let mut line = b"AUTH GSSAPI ".to_vec();
    line.extend(std::iter::repeat_n(b'Q', 8000));
    line.extend_from_slice(b"\r\n");
    obs.feed(Side::Client, &line, &mut ev, &mut m);
    assert!(!obs.is_desynced());
    assert_eq!(
        m,
        vec![Mark {
            range: 12..8012,
            kind: MarkKind::Secret
        }]
    );
}

// ----- split independence ------------------------------------------------

#[test]
fn every_split_point_gives_the_same_result() {
    for (name, text) in FIXTURES {
        let chunks = parse_fixture(text);
        let base = run(&chunks);
        for ci in 0..chunks.len() {
            for k in 0..=chunks[ci].1.len() {
                let got = run_with(&chunks, SmtpLimits::default(), &|i, len| {
                    if i == ci {
                        vec![k, len - k]
                    } else {
                        vec![len]
                    }
                });
                assert_eq!(
                    (&got.events, &got.marks, &got.tls, got.desynced),
                    (&base.events, &base.marks, &base.tls, base.desynced),
                    "{name}: chunk {ci} split at {k}"
                );
            }
        }
    }
}

#[test]
fn byte_by_byte_gives_the_same_result() {
    for (name, text) in FIXTURES {
        let chunks = parse_fixture(text);
        let base = run(&chunks);
        let got = run_with(&chunks, SmtpLimits::default(), &|_, len| vec![1; len]);
        assert_eq!(
            (&got.events, &got.marks, &got.tls, got.desynced),
            (&base.events, &base.marks, &base.tls, base.desynced),
            "{name} byte by byte"
        );
    }
}

#[test]
fn fixtures_parse_as_intended() {
    let chunks = fixture("pipelined");
    // MAIL/RCPT/RCPT/DATA are one chunk; the four replies are one chunk.
    assert!(chunks
        .iter()
        .any(|(s, b)| *s == Side::Client && b.starts_with(b"MAIL") && b.ends_with(b"DATA\r\n")));
    let bdat = stream(&fixture("bdat"), Side::Client);
    assert!(bdat.windows(12).any(|w| w == b"BDAT 10\r\n\x00\x01\r"));
}

// ----- robustness --------------------------------------------------------

fn random_cut(rng: &mut rand::rngs::StdRng, len: usize) -> Vec<usize> {
    let mut lens = Vec::new();
    let mut left = len;
    while left > 0 {
        let n = rng.gen_range(1..=left.min(64));
        lens.push(n);
        left -= n;
    }
    lens
}

#[test]
fn random_input_never_panics_and_stays_bounded() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x05EE_D5A7);
    let limits = SmtpLimits {
        max_line: 256,
        max_handoff: 512,
    };
    // Generous bound: two line buffers (AUTH lines may reach 12288), the
    // hold, the pending FIFO and one multi-line reply.
    let bound = 2 * 2 * 12288 + 2 * 512 + 1000 * 400 + 16 * 256 * 3;
    let all: Vec<Chunks> = FIXTURES.iter().map(|(_, t)| parse_fixture(t)).collect();
    let mut desyncs = 0;
    for round in 0..3000 {
        let mut chunks = all[round % all.len()].clone();
        match rng.gen_range(0..4) {
            0 => {
                // Pure noise, both sides.
                chunks = (0..rng.gen_range(1..8))
                    .map(|_| {
                        let side = if rng.gen() {
                            Side::Client
                        } else {
                            Side::Server
                        };
                        let len = rng.gen_range(0..600);
                        (side, (0..len).map(|_| rng.gen()).collect())
                    })
                    .collect();
            }
            _ => {
                // Mutations: flip, insert, delete bytes (CR/LF/dot/digits favoured).
                for _ in 0..rng.gen_range(1..6) {
                    let ci = rng.gen_range(0..chunks.len());
                    let buf = &mut chunks[ci].1;
                    let pick = [b'\r', b'\n', b'.', b'3', b'-', b' ', 0x16, rng.gen()];
                    let b = pick[rng.gen_range(0..pick.len())];
                    let at = rng.gen_range(0..=buf.len());
                    match rng.gen_range(0..3) {
                        0 if at < buf.len() => buf[at] = b,
                        1 => buf.insert(at, b),
                        _ if at < buf.len() => {
                            buf.remove(at);
                        }
                        _ => buf.insert(at, b),
                    }
                }
            }
        }
        let seed: u64 = rng.gen();
        let cut = move |i: usize, len: usize| {
            let mut r = rand::rngs::StdRng::seed_from_u64(seed ^ i as u64);
            random_cut(&mut r, len)
        };
        let out = run_with(&chunks, limits, &cut);
        assert!(
            out.max_buffered <= bound,
            "round {round}: {}",
            out.max_buffered
        );
        // Random splits must not change the outcome either.
        let whole = run_with(&chunks, limits, &|_, len| vec![len]);
        assert_eq!(
            (&out.events, &out.marks, &out.tls, out.desynced),
            (&whole.events, &whole.marks, &whole.tls, whole.desynced),
            "round {round}"
        );
        desyncs += usize::from(out.desynced);
    }
    // The run exercised both healthy and confused paths.
    assert!(desyncs > 100 && desyncs < 3000, "desyncs {desyncs}");
}

#[test]
fn events_are_flat_in_the_envelope_and_round_trip() {
    use crate::event::{Event, EventKind, Timestamp};
    let out = run(&fixture("auth"));
    for ev in out.decoded() {
        let env = Event::new(Timestamp::now(), 7, ev.clone());
        let json = serde_json::to_value(&env).unwrap();
        assert_eq!(json["session"], 7);
        assert!(json["event"].as_str().unwrap().starts_with("smtp."));
        let back: Event = serde_json::from_value(json).unwrap();
        match back.kind {
            EventKind::Smtp(e) => assert_eq!(e, ev),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn recorded_swaks_pipelined_session() {
    let chunks = fixture("recorded_swaks_pipelined");
    let out = run(&chunks);
    assert!(!out.desynced);
    let ev = out.decoded();
    let labels: Vec<_> = ev
        .iter()
        .filter_map(|e| match e {
            SmtpEvent::Reply { code, command, .. } => {
                Some(format!("{code} {}", command.clone().unwrap()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        labels,
        [
            "250 EHLO client.example.org",
            "250 MAIL FROM:<alice@example.org>",
            "250 RCPT TO:<bob@example.net>",
            "250 RCPT TO:<carol@example.net>",
            "354 DATA",
            "250 <end of data>",
            "221 QUIT",
        ]
    );
    match ev
        .iter()
        .find(|e| matches!(e, SmtpEvent::Capabilities { .. }))
    {
        Some(SmtpEvent::Capabilities {
            capabilities,
            auth,
            starttls,
            ..
        }) => {
            // smtp-sink closes its EHLO reply with a bare "250 ": no capability.
            assert_eq!(capabilities.len(), 7);
            assert!(capabilities.iter().all(|c| !c.is_empty()));
            assert_eq!(auth, &["PLAIN", "LOGIN"]);
            assert!(!starttls);
        }
        other => panic!("{other:?}"),
    }
    let client = stream(&chunks, Side::Client);
    let start = find_pos(&client, b"DATA\r\n") + 6;
    let end = find_pos(&client, b"\r\n.\r\n") + 5;
    assert!(ev.contains(&SmtpEvent::Data {
        bytes: (end - start - 3) as u64,
        lines: 12,
        bare_lf: false
    }));
    assert_eq!(
        out.marks,
        vec![(Side::Client, start as u64..end as u64, MarkKind::Body)]
    );
}

#[test]
fn recorded_swaks_auth_session() {
    let chunks = fixture("recorded_swaks_auth");
    let out = run(&chunks);
    assert!(!out.desynced);
    assert!(!out.events.join("").contains("AGFsaWNlAHMzY3JldFBhc3M="));
    assert_eq!(
        marked(&chunks, &out, MarkKind::Secret),
        vec![b"AGFsaWNlAHMzY3JldFBhc3M=".to_vec()]
    );
    // A 250 (not 334) ends SASL at once: QUIT is a command again.
    let ev = out.decoded();
    assert!(ev.iter().any(|e| matches!(
        e,
        SmtpEvent::Reply { code: 250, command: Some(c), .. } if c == "AUTH PLAIN [redacted]"
    )));
    assert!(ev
        .iter()
        .any(|e| matches!(e, SmtpEvent::Command { verb, .. } if verb == "QUIT")));
    assert!(!ev.iter().any(|e| matches!(e, SmtpEvent::AuthData { .. })));
}

/// Tabs between AUTH's words (Postfix accepts them) and a second AUTH with
/// leading blanks: every credential is found, redacted and marked.
#[test]
fn auth_with_tabs_never_leaks_credentials() {
    let text = "S: 220 smtp.example.net ESMTP\n\
                C: EHLO laptop.example.org\n\
                S: 250-smtp.example.net\n\
                S: 250 AUTH PLAIN\n\
                C: AUTH\tPLAIN\tAGFsaWNlAHMzY3JldFBhc3M=\n\
                S: 535 5.7.8 Error: authentication failed\n\
                C:  auth plain AGJvYgBzM2NyZXQ=\n\
                S: 235 2.7.0 Authentication successful\n\
                C: QUIT\n\
                S: 221 2.0.0 Bye\n";
    assert_secrets_hidden(
        text,
        &["AGFsaWNlAHMzY3JldFBhc3M=", "AGJvYgBzM2NyZXQ="],
        &["AGFsaWNlAHMzY3JldFBhc3M=", "AGJvYgBzM2NyZXQ="],
    );
}

/// Runs the transcript `text` at every split point: none of `hidden` may
/// appear in any event, and exactly `secrets` are marked secret (in order).
/// Returns the outcome for further checks.
fn assert_secrets_hidden(text: &str, hidden: &[&str], secrets: &[&str]) -> Outcome {
    let chunks = parse_fixture(text);
    let out = run(&chunks);
    assert!(!out.desynced);
    let all = out.events.join("\n");
    for secret in hidden {
        assert!(!all.contains(secret), "{secret} leaked into {all}");
    }
    let want: Vec<Vec<u8>> = secrets.iter().map(|s| s.as_bytes().to_vec()).collect();
    assert_eq!(marked(&chunks, &out, MarkKind::Secret), want);
    out
}

/// A client that does not wait for the 334 (AUTH is not pipelinable, but a
/// script can do it): the lines it sent early are still SASL data, never
/// commands.
#[test]
fn pipelined_sasl_lines_are_redacted() {
    let text = "S: 220 smtp.example.net ESMTP\n\
                C: EHLO laptop.example.org\n\
                S: 250-smtp.example.net\n\
                S: 250 AUTH LOGIN\n\
                C: AUTH LOGIN\n\
                C: YWxpY2U=\n\
                C: czNjcmV0UGFzcw==\n\
                S: 334 VXNlcm5hbWU6\n\
                S: 334 UGFzc3dvcmQ6\n\
                S: 235 2.7.0 Authentication successful\n\
                C: QUIT\n\
                S: 221 2.0.0 Bye\n";
    let out = assert_secrets_hidden(
        text,
        &["YWxpY2U=", "czNjcmV0UGFzcw==", "VXNlcm5hbWU6"],
        &["YWxpY2U=", "czNjcmV0UGFzcw=="],
    );
    let ev = out.decoded();
    assert!(ev.iter().any(|e| matches!(
        e,
        SmtpEvent::Reply { code: 235, command: Some(c), .. } if c == "[redacted]"
    )));
    assert!(ev.iter().any(|e| matches!(
        e,
        SmtpEvent::Command { verb, .. } if verb == "QUIT"
    )));
}

/// The line-length limit, a non-text byte and a TLS record at line start,
/// at and around the limit: the same verdict and offset whatever the split
/// (the observer scans chunks in bulk; byte by byte is the reference).
#[test]
fn line_limit_and_bad_bytes_are_judged_the_same_in_bulk_and_byte_by_byte() {
    let limits = SmtpLimits {
        max_line: 8,
        ..SmtpLimits::default()
    };
    let banner = b"220 mx\r\n";
    let cases: [&[u8]; 8] = [
        b"NOOPAAAA\x01\r\n", // bad byte exactly at the limit: the limit wins
        b"NOOPAAA\x01\r\n",  // bad byte just inside
        b"NOOPAAAAA\r\n",    // one past the limit
        b"NOOPAAA\r\n",      // exactly the limit (the CR counts): fine
        b"\x16\x03\x01\x00", // a ClientHello at line start
        b"\x01NOOP\r\n",     // a bad byte at line start
        b"AUTH PLAIN AAAAAAAAAAAA\r\nQUIT\r\n", // AUTH may be longer
        b"AUTH\tPLAIN AAAAAAAAAAAA\r\nQUIT\r\n",
    ];
    for case in cases {
        let verdict = |pieces: &[&[u8]]| {
            let mut o = SmtpObserver::new(limits);
            let mut ev = Vec::new();
            let mut marks = Vec::new();
            o.feed(Side::Server, banner, &mut ev, &mut marks);
            for p in pieces {
                o.feed(Side::Client, p, &mut ev, &mut marks);
            }
            (
                o.is_desynced(),
                ev.iter()
                    .map(|e| serde_json::to_string(e).unwrap())
                    .collect::<Vec<_>>(),
            )
        };
        let whole = verdict(&[case]);
        let bytes: Vec<&[u8]> = case.chunks(1).collect();
        assert_eq!(verdict(&bytes), whole, "{case:?}");
        for cut in 0..=case.len() {
            let (a, b) = case.split_at(cut);
            assert_eq!(verdict(&[a, b]), whole, "{case:?} cut {cut}");
        }
        let expect_desync = !case.starts_with(b"NOOPAAA\r") && !case.starts_with(b"AUTH");
        assert_eq!(whole.0, expect_desync, "{case:?}: {:?}", whole.1);
    }
}

#[test]
fn mail_and_rcpt_paths_are_parsed_and_the_envelope_follows_the_replies() {
    use super::command::Command;
    let p = |l: &str| Command::parse(l.as_bytes()).path();
    assert_eq!(p("MAIL FROM:<>"), Some((String::new(), vec![])));
    assert_eq!(
        p("mail from: <a@b.example> SIZE=10 BODY=8BITMIME"),
        Some((
            "a@b.example".into(),
            vec!["SIZE=10".into(), "BODY=8BITMIME".into()]
        ))
    );
    assert_eq!(
        p("RCPT TO:c@d.example"),
        Some(("c@d.example".into(), vec![]))
    );
    assert_eq!(p("RCPT TOO:<x>"), None);
    assert_eq!(p("EHLO x"), None);
    // Refused recipients and a RSET are not part of the accepted envelope.
    let script = "S: 220 mx ESMTP\r\nC: EHLO c\r\nS: 250 mx\r\nC: MAIL FROM:<old@x>\r\nS: 250 ok\r\nC: RSET\r\nS: 250 ok\r\nC: MAIL FROM:<s@x>\r\nS: 250 ok\r\nC: RCPT TO:<r1@y>\r\nS: 250 ok\r\nC: RCPT TO:<bad@y>\r\nS: 550 5.1.1 no\r\nC: RCPT TO:<r2@y>\r\nS: 250 ok\r\nC: DATA\r\nS: 354 go\r\nC: hi\r\nC: .\r\nS: 250 2.0.0 queued\r\n";
    let mut obs = SmtpObserver::new(SmtpLimits::default());
    let mut out = Vec::new();
    let mut marks = Vec::new();
    for line in script.split("\r\n").filter(|l| !l.is_empty()) {
        let (side, text) = match line.split_at(3) {
            ("S: ", t) => (Side::Server, t),
            (_, t) => (Side::Client, t),
        };
        obs.feed(side, format!("{text}\r\n").as_bytes(), &mut out, &mut marks);
    }
    let msg = out
        .iter()
        .find_map(|e| match e {
            SmtpEvent::Message {
                mail_from,
                rcpt_to,
                rcpt_count,
                ..
            } => Some((mail_from.clone(), rcpt_to.clone(), *rcpt_count)),
            _ => None,
        })
        .expect("a message");
    assert_eq!(
        msg,
        (Some("s@x".into()), vec!["r1@y".into(), "r2@y".into()], 2)
    );
}
