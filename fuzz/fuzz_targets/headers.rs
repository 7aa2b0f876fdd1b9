//! Fuzzes `smtptap headers`: arbitrary bytes as a message (and as an mbox)
//! through the Received-header analysis and both report writers. Checks: no
//! panic, one report per message, the JSON and console writers never fail.
//!
//! Run: `cargo install cargo-fuzz && cargo +nightly fuzz run headers` from
//! the crate root (seed corpus: `tests/fixtures/*.eml` work as raw input).
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtptap::headers::{analyze_input, write_console, write_json};

fuzz_target!(|data: &[u8]| {
    for mbox in [false, true] {
        let reports = analyze_input(data, mbox);
        if !mbox {
            assert_eq!(reports.len(), 1, "one message, one report");
        }
        let mut out = Vec::new();
        write_json(&reports, &mut out).expect("writing to a Vec");
        let mut out = Vec::new();
        write_console(&reports, &mut out).expect("writing to a Vec");
    }
});
