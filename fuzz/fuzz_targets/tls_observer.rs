//! Fuzz target: arbitrary bytes, split into chunks for both directions, must
//! never make the TLS observer panic, and it reports at most one desync.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtptap::event::Side;
use smtptap::tls::{TlsEvent, TlsObserver};

fuzz_target!(|data: &[u8]| {
    let mut o = TlsObserver::new();
    let mut ev = Vec::new();
    // Each chunk: a control byte (bit 7: side, bits 0..6: length), then bytes.
    let mut rest = data;
    while let Some((&ctl, tail)) = rest.split_first() {
        let side = if ctl & 0x80 != 0 { Side::Server } else { Side::Client };
        let n = usize::from(ctl & 0x7f).min(tail.len());
        let (chunk, after) = tail.split_at(n);
        o.feed(side, chunk, &mut ev);
        rest = after;
    }
    let desyncs = ev
        .iter()
        .filter(|e| matches!(e, TlsEvent::Desync { .. }))
        .count();
    assert!(desyncs <= 1);
    assert_eq!(desyncs == 1, o.is_desynced());
});
