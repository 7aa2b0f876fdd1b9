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

mod common;

use common::{close_and_check, connected, t, CLIENT_HELLO, PREFIX};
use libfuzzer_sys::fuzz_target;
use smtptap::event::{Leg, SessionEvent, Side};

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
    let mut a = connected(mode % 5 == 4);
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
    close_and_check(&mut a, clock + 1);
    a.plaintext(Side::Client, t(clock + 2), b"late\r\n");
    a.bytes(Leg::ClientProxy, Side::Client, t(clock + 2), b"late");
    assert!(a.take_events().is_empty());
});
