//! Fuzzes the sans-IO session core (`session::SessionAnalyzer`) end to end:
//! observers, stage machine (sniff, SMTP, STARTTLS hand-over, TLS),
//! certificate analysis, diagnosis and summary. Structure-aware: the first
//! input byte picks a valid prefix (nothing; a banner and EHLO exchange up to
//! a STARTTLS 220; the same then a real TLS 1.2 ClientHello), then the rest
//! is a script of feeds `[side/len byte][len bytes]` on the end-to-end leg,
//! with an occasional FIN, and the session is closed. Checks: no panic, the
//! last event is `session.summary`, nothing comes after it, every event
//! serialises, and the kept events stay within their bounds.
//!
//! Run: `cargo fuzz run session --sanitizer none -- -max_total_time=60`
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use smtptap::config::{RawConfig, Upstream};
use smtptap::event::{Leg, Side, Timestamp};
use smtptap::session::{Analysis, DirEnd, Ends, SessionAnalyzer, SessionInfo, MAX_KEPT_EVENTS};

fn shared() -> Arc<Analysis> {
    static SHARED: OnceLock<Arc<Analysis>> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            let cfg = RawConfig::from_toml(
                "listen = [\"127.0.0.1:2525\"]\nupstream = \"mx.example:25\"\n[tls]\nexpect_names = [\"mx.example\"]\n",
                "fuzz.toml",
            )
            .and_then(|r| r.resolve("fuzz.toml"))
            .expect("the fuzz config is valid");
            let mut a = Analysis::bare("rfuzz".into(), cfg);
            // An empty store: chains are still parsed, checked and judged.
            a.trust = smtptap::cert::TrustStore::from_ders(&[]).ok();
            Arc::new(a)
        })
        .clone()
}

/// A minimal, well-formed TLS 1.2 ClientHello record (two suites, no
/// extensions), so the fuzzer starts inside a handshake.
const CLIENT_HELLO: &[u8] = &[
    0x16, 0x03, 0x01, 0x00, 0x2f, 0x01, 0x00, 0x00, 0x2b, 0x03, 0x03, 0x00, 0x01, 0x02, 0x03,
    0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11, 0x12,
    0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x00, 0x00,
    0x04, 0xc0, 0x2f, 0x00, 0x9c, 0x01, 0x00,
];

const PREFIX: &[(Side, &[u8])] = &[
    (Side::Server, b"220 mx.example ESMTP\r\n"),
    (Side::Client, b"EHLO client.example\r\n"),
    (Side::Server, b"250-mx.example\r\n250-PIPELINING\r\n250 STARTTLS\r\n"),
    (Side::Client, b"STARTTLS\r\n"),
    (Side::Server, b"220 2.0.0 go ahead\r\n"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let t = |i: u64| Timestamp(UNIX_EPOCH + Duration::from_secs(1_800_000_000 + i));
    let info = SessionInfo {
        id: 1,
        client: "192.0.2.7:40000".parse().unwrap(),
        listener: "127.0.0.1:2525".parse().unwrap(),
        upstream: Upstream {
            host: "mx.example".into(),
            port: 25,
        },
        opened: t(0),
        implicit_tls: mode % 7 == 6,
    };
    let mut a = SessionAnalyzer::new(info, shared());
    a.upstream_connected(
        t(0),
        "192.0.2.25:25".parse().unwrap(),
        "192.0.2.10:5000".parse().unwrap(),
        0.001,
    );
    let mut clock = 1;
    if mode % 3 >= 1 {
        for (side, b) in PREFIX {
            a.bytes(Leg::EndToEnd, *side, t(clock), b);
            clock += 1;
        }
    }
    if mode % 3 == 2 {
        a.bytes(Leg::EndToEnd, Side::Client, t(clock), CLIENT_HELLO);
    }
    while let Some((&head, tail)) = rest.split_first() {
        let side = if head & 1 == 0 { Side::Client } else { Side::Server };
        let len = usize::from(head >> 1).min(tail.len());
        let (chunk, tail) = tail.split_at(len);
        rest = tail;
        clock += u64::from(head >> 6);
        if len == 0 && head & 0x80 != 0 {
            a.fin(Leg::EndToEnd, side, t(clock));
        } else {
            a.bytes(Leg::EndToEnd, side, t(clock), chunk);
        }
        // Requests are never answered here: the close must cope.
        let _ = a.take_requests();
    }
    a.close(
        t(clock + 1),
        Ends {
            client_end: DirEnd::Fin,
            server_end: DirEnd::Fin,
            client_bytes: 0,
            server_bytes: 0,
        },
        None,
    );
    assert!(a.is_finished());
    assert!(a.kept().len() <= MAX_KEPT_EVENTS);
    let evs = a.take_events();
    assert_eq!(evs.last().map(|e| e.name()), Some("session.summary"));
    for e in &evs {
        assert!(serde_json::to_string(e).is_ok());
    }
    a.bytes(Leg::EndToEnd, Side::Client, t(clock + 2), b"late\r\n");
    assert!(a.take_events().is_empty());
});
