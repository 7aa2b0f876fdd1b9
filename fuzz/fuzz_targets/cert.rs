//! Fuzzes the certificate analysis: the input is a chain (`[len u16 BE][DER]`
//! repeated, at most a few certificates) seeded by real certificates from
//! `src/cert/fixtures/*.der`, analysed as a server's and as a client's chain
//! against a trust store holding the fixtures' CA, with expected names, at a
//! fixed instant; CRL bytes taken from the tail are offered as extra CRLs.
//! Checks: no panic, one `cert.chain` per analysis, every event serialises.
//!
//! Run: `cargo fuzz run cert --sanitizer none -- -max_total_time=60`
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use smtptap::cert::{analyze_chain_with_crls, CertEvent, CheckContext, NameSource, TrustStore};
use smtptap::event::{Event, Side, Timestamp};

fn store() -> &'static TrustStore {
    static STORE: OnceLock<TrustStore> = OnceLock::new();
    STORE.get_or_init(|| {
        let ca = include_bytes!("../../src/cert/fixtures/rsa2048-ca.der").to_vec();
        TrustStore::from_ders(&[ca]).expect("the fixture CA loads")
    })
}

fuzz_target!(|data: &[u8]| {
    let mut ders = Vec::new();
    let mut rest = data;
    while ders.len() < 20 {
        let Some((len, tail)) = rest.split_first_chunk::<2>() else {
            break;
        };
        let n = usize::from(u16::from_be_bytes(*len)).min(tail.len());
        let (der, tail) = tail.split_at(n);
        ders.push(der.to_vec());
        rest = tail;
    }
    let crls = if rest.is_empty() { vec![] } else { vec![rest.to_vec()] };
    let ctx = CheckContext {
        names: vec![
            (NameSource::Expected, "mail.contoso.test".into()),
            (NameSource::Sni, "192.0.2.1".into()),
        ],
        expiry_warning_days: 30,
        now: UNIX_EPOCH + Duration::from_secs(1_900_000_000),
    };
    for side in [Side::Server, Side::Client] {
        let events = analyze_chain_with_crls(&ders, side, &ctx, store(), &crls);
        let chains = events
            .iter()
            .filter(|e| matches!(e, CertEvent::Chain { .. }))
            .count();
        assert_eq!(chains, 1);
        for e in events {
            let ev = Event::new(Timestamp(UNIX_EPOCH), 1, e);
            assert!(serde_json::to_string(&ev).is_ok());
        }
    }
});
