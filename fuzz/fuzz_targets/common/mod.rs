//! What the session fuzz targets share: the analysis context, a session
//! connected upstream, the valid prefixes they start from, and the close
//! with its checks.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, UNIX_EPOCH};

use smtptap::config::{RawConfig, Upstream};
use smtptap::event::{Side, Timestamp};
use smtptap::session::{Analysis, DirEnd, Ends, SessionAnalyzer, SessionInfo, MAX_KEPT_EVENTS};

/// The analysis context, made once (the core does not read the mode:
/// intercept mode's driver is what feeds it legs and facts).
pub fn shared() -> Arc<Analysis> {
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

/// A fixed clock: `i` seconds into the session.
pub fn t(i: u64) -> Timestamp {
    Timestamp(UNIX_EPOCH + Duration::from_secs(1_800_000_000 + i))
}

/// A session connected upstream at t(0).
pub fn connected(implicit_tls: bool) -> SessionAnalyzer {
    let info = SessionInfo {
        id: 1,
        client: "192.0.2.7:40000".parse().unwrap(),
        listener: "127.0.0.1:2525".parse().unwrap(),
        upstream: Upstream {
            host: "mx.example".into(),
            port: 25,
        },
        opened: t(0),
        implicit_tls,
    };
    let mut a = SessionAnalyzer::new(info, shared());
    a.upstream_connected(
        t(0),
        "192.0.2.25:25".parse().unwrap(),
        "192.0.2.10:5000".parse().unwrap(),
        0.001,
    );
    a
}

/// A minimal, well-formed TLS 1.2 ClientHello record (two suites, no
/// extensions), so the fuzzer starts inside a handshake.
pub const CLIENT_HELLO: &[u8] = &[
    0x16, 0x03, 0x01, 0x00, 0x2f, 0x01, 0x00, 0x00, 0x2b, 0x03, 0x03, 0x00, 0x01, 0x02, 0x03,
    0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11, 0x12,
    0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x00, 0x00,
    0x04, 0xc0, 0x2f, 0x00, 0x9c, 0x01, 0x00,
];

/// A banner and EHLO exchange up to the server's 220 to STARTTLS.
pub const PREFIX: &[(Side, &[u8])] = &[
    (Side::Server, b"220 mx.example ESMTP\r\n"),
    (Side::Client, b"EHLO client.example\r\n"),
    (Side::Server, b"250-mx.example\r\n250-PIPELINING\r\n250 STARTTLS\r\n"),
    (Side::Client, b"STARTTLS\r\n"),
    (Side::Server, b"220 2.0.0 go ahead\r\n"),
];

/// Closes the session at `clock` and checks what every session must end
/// with: finished, the kept events bounded, the summary last, every event
/// serialisable.
pub fn close_and_check(a: &mut SessionAnalyzer, clock: u64) {
    a.close(
        t(clock),
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
}
