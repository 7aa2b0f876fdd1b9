//! Fuzzes the sans-IO SMTP observer: the input is a script of feeds, each
//! `[side/len byte][len bytes]` (low bit of the header = side, the rest =
//! length). Checks: no panic, marks inside their data slice, memory bounded,
//! no event after a desync or a STARTTLS hand-over.
//!
//! Run: `cargo install cargo-fuzz && cargo +nightly fuzz run smtp_observer`
//! from the crate root (seed corpus: `src/smtp/fixtures/*.txt` work as raw input).
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtptap::event::Side;
use smtptap::smtp::{Progress, SmtpLimits, SmtpObserver};

fuzz_target!(|data: &[u8]| {
    let limits = SmtpLimits {
        max_line: 512,
        max_handoff: 1024,
    };
    let mut obs = SmtpObserver::new(limits);
    let mut events = Vec::new();
    let mut rest = data;
    let mut done = false;
    while let Some((&head, tail)) = rest.split_first() {
        let side = if head & 1 == 0 { Side::Client } else { Side::Server };
        let len = usize::from(head >> 1).min(tail.len());
        let (chunk, tail) = tail.split_at(len);
        rest = tail;
        let before = events.len();
        let was_desynced = obs.is_desynced();
        let mut marks = Vec::new();
        let progress = obs.feed(side, chunk, &mut events, &mut marks);
        for m in &marks {
            assert!(m.range.start < m.range.end && m.range.end <= chunk.len());
        }
        if done || was_desynced {
            // Nothing after the hand-over or after a desync.
            assert_eq!(events.len(), before);
            assert!(marks.is_empty());
        }
        if let Progress::StartTls { client_leftover, .. } = progress {
            assert!(client_leftover.len() <= limits.max_handoff);
            done = true;
        }
        assert!(obs.buffered_bytes() <= 4 * 12288 + 2 * 1024 + 1000 * 400 + 16 * 512 * 3);
    }
});
