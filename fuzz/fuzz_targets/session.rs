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

mod common;

use common::{close_and_check, connected, t, CLIENT_HELLO, PREFIX};
use libfuzzer_sys::fuzz_target;
use smtptap::event::{Leg, Side};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let mut a = connected(mode % 7 == 6);
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
    close_and_check(&mut a, clock + 1);
    a.bytes(Leg::EndToEnd, Side::Client, t(clock + 2), b"late\r\n");
    assert!(a.take_events().is_empty());
});
