//! Fuzzes the session core as intercept mode drives it: the cleartext phase
//! on the end-to-end leg, implicit TLS detected, each TLS leg's wire bytes
//! (`client_proxy`, `proxy_server`), the decrypted conversation
//! (`plaintext`), smtptap's own facts (`intercept.decision`,
//! `intercept.handshake`), chains handed over from TLS 1.3 handshakes and
//! key-log lines, in any order the input says. Structure-aware: the first
//! byte picks a valid start (a STARTTLS exchange up to its 220, then a real
//! ClientHello on `client_proxy`; or implicit TLS detected); then each op is
//! `[op byte][len byte][len bytes]`. Checks: no panic, the summary is last,
//! nothing follows it, every event serialises, the kept events stay bounded.
//!
//! Run: `cargo fuzz run session_intercept --sanitizer none -- -max_total_time=60`
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use smtptap::config::{RawConfig, Upstream};
use smtptap::event::{Leg, SessionEvent, Side, Timestamp};
use smtptap::session::{Analysis, DirEnd, Ends, SessionAnalyzer, SessionInfo, MAX_KEPT_EVENTS};

fn shared() -> Arc<Analysis> {
    static SHARED: OnceLock<Arc<Analysis>> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            // The core does not read the mode: intercept mode's driver is
            // what feeds it the legs and facts below.
            let cfg = RawConfig::from_toml(
                "listen = [\"127.0.0.1:2525\"]\nupstream = \"mx.example:25\"\n[tls]\nexpect_names = [\"mx.example\"]\n",
                "fuzz.toml",
            )
            .and_then(|r| r.resolve("fuzz.toml"))
            .expect("the fuzz config is valid");
            let mut a = Analysis::bare("rfuzz".into(), cfg);
            a.trust = smtptap::cert::TrustStore::from_ders(&[]).ok();
            Arc::new(a)
        })
        .clone()
}

/// A minimal, well-formed TLS 1.2 ClientHello record.
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

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn opt(flag: bool, b: &[u8]) -> Option<String> {
    flag.then(|| text(b))
}

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
        implicit_tls: mode % 5 == 4,
    };
    let mut a = SessionAnalyzer::new(info, shared());
    a.upstream_connected(
        t(0),
        "192.0.2.25:25".parse().unwrap(),
        "192.0.2.10:5000".parse().unwrap(),
        0.001,
    );
    let mut clock = 1;
    match mode % 5 {
        1 | 2 => {
            for (side, b) in PREFIX {
                a.bytes(Leg::EndToEnd, *side, t(clock), b);
                clock += 1;
            }
            if mode % 5 == 2 {
                a.bytes(Leg::ClientProxy, Side::Client, t(clock), CLIENT_HELLO);
            }
        }
        3 => {
            a.implicit_tls_detected(t(clock));
            a.bytes(Leg::ClientProxy, Side::Client, t(clock), CLIENT_HELLO);
        }
        _ => {}
    }
    while let [op, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (b, tail) = tail.split_at(len);
        rest = tail;
        clock += u64::from(op >> 7);
        let side = if op & 1 == 0 { Side::Client } else { Side::Server };
        let leg = match (op >> 1) & 3 {
            0 => Leg::EndToEnd,
            1 => Leg::ClientProxy,
            _ => Leg::ProxyServer,
        };
        let flags = b.first().copied().unwrap_or(0);
        match (op >> 3) & 15 {
            0..=3 => a.bytes(leg, side, t(clock), b),
            4..=6 => a.plaintext(side, t(clock), b),
            7 => a.fin(leg, side, t(clock)),
            8 => a.plaintext_fin(side, t(clock)),
            9 => a.implicit_tls_detected(t(clock)),
            10 => a.intercept_fact(
                t(clock),
                (flags & 1 == 1).then_some(leg),
                SessionEvent::InterceptDecision {
                    action: if flags & 2 == 0 { "intercept" } else { "passthrough" }.into(),
                    reason: text(b),
                    sni: opt(flags & 4 != 0, b),
                    upstream_sni: opt(flags & 8 != 0, b),
                },
            ),
            11 => a.intercept_fact(
                t(clock),
                Some(leg),
                SessionEvent::InterceptHandshake {
                    ok: flags & 1 != 0,
                    version: opt(flags & 2 != 0, b"TLSv1.3"),
                    cipher_suite: opt(flags & 4 != 0, b"TLS13_AES_128_GCM_SHA256"),
                    error: opt(flags & 8 != 0, b),
                    verified: (flags & 16 != 0).then_some(flags & 32 != 0),
                    verify_error: opt(flags & 64 != 0, b),
                    refused: flags & 128 != 0,
                    client_cert_requested: Some(flags & 3 == 3),
                    client_cert_sent: Some(flags & 5 == 5),
                    presented: opt(flags & 6 == 6, b),
                },
            ),
            12 | 13 => {
                // A chain: [len u8][DER]… from the op's bytes.
                let mut ders = Vec::new();
                let mut c = b;
                while let [n, more @ ..] = c {
                    let n = usize::from(*n).min(more.len());
                    ders.push(more[..n].to_vec());
                    c = &more[n..];
                }
                a.peer_chain(t(clock), leg, side, ders);
            }
            14 => a.tls_secrets(b),
            _ => a.bytes(leg, side, t(clock), b),
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
    a.plaintext(Side::Client, t(clock + 2), b"late\r\n");
    a.bytes(Leg::ClientProxy, Side::Client, t(clock + 2), b"late");
    assert!(a.take_events().is_empty());
});
