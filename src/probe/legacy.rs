//! The probe's hand-built ClientHellos and the reading of a server's first
//! flight, as pure functions (no sockets, no clock, no randomness: the caller
//! passes the random bytes).
//!
//! rustls speaks only TLS 1.2 and 1.3 with AEAD suites. To learn what an old
//! server chooses, and to enumerate the versions a server accepts
//! (`--versions`), the probe sends a ClientHello built here, reads the
//! server's answer up to the end of its first flight ([`flight_end`]: the
//! ServerHelloDone in TLS ≤ 1.2, the ServerHello or HelloRetryRequest in
//! TLS 1.3, or an alert) and closes without completing the handshake. The
//! meaning of those bytes (version, suite, certificate, alerts) is the TLS
//! observer's (`src/tls/`), fed by the probe's driver like every other byte.
//!
//! The hellos look like the ones real clients send: a TLS 1.0 record, SNI,
//! supported_groups, ec_point_formats, signature_algorithms (when TLS 1.2 is
//! offered), the renegotiation SCSV (TLS ≤ 1.2), and suites from ECDHE/DHE
//! with AES-GCM and ChaCha20 down to CBC, static RSA, 3DES and RC4 so that an
//! old server finds the one it knows. The TLS 1.3 hello carries
//! supported_versions and an X25519 key_share.
//!
//! It owns: the bytes of those hellos and of the closing alerts, and where a
//! server's first flight ends. It must not: parse what the observer parses
//! for reporting, do I/O, or complete a handshake.

/// TLS 1.0 on the wire.
pub const TLS10: u16 = 0x0301;
/// TLS 1.1 on the wire.
pub const TLS11: u16 = 0x0302;
/// TLS 1.2 on the wire.
pub const TLS12: u16 = 0x0303;
/// TLS 1.3 on the wire (supported_versions).
pub const TLS13: u16 = 0x0304;

/// The four versions `--versions` tries, oldest first.
pub const VERSIONS: [u16; 4] = [TLS10, TLS11, TLS12, TLS13];

/// Most server bytes read for one first flight (a long chain fits easily).
pub const MAX_FLIGHT: usize = 256 * 1024;

/// What a hello offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// TLS 1.0 to 1.2 with every classic suite: the fallback after rustls failed.
    Legacy,
    /// Exactly this one version (one of [`VERSIONS`]).
    Only(u16),
}

impl Offer {
    /// The versions offered, oldest first.
    pub fn versions(self) -> Vec<u16> {
        match self {
            Offer::Legacy => vec![TLS10, TLS11, TLS12],
            Offer::Only(v) => vec![v],
        }
    }

    fn max(self) -> u16 {
        match self {
            Offer::Legacy => TLS12,
            Offer::Only(v) => v,
        }
    }

    fn min(self) -> u16 {
        match self {
            Offer::Legacy => TLS10,
            Offer::Only(v) => v,
        }
    }
}

/// The random parts of a hello (from the caller's random source).
#[derive(Debug, Clone, Copy)]
pub struct HelloRandom {
    /// ClientHello.random.
    pub random: [u8; 32],
    /// The legacy session id (sent only in the TLS 1.3 hello, as real clients
    /// do for middlebox compatibility).
    pub session_id: [u8; 32],
    /// The X25519 key share (TLS 1.3): any 32 bytes are a valid public key.
    pub x25519: [u8; 32],
}

/// `(suite, needs TLS 1.2)`: ECDHE/DHE with AEAD first, then CBC, static
/// RSA, 3DES and RC4, as an old client's list runs.
const SUITES_12: &[(u16, bool)] = &[
    (0xc02c, true),  // ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
    (0xc030, true),  // ECDHE_RSA_WITH_AES_256_GCM_SHA384
    (0xc02b, true),  // ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
    (0xc02f, true),  // ECDHE_RSA_WITH_AES_128_GCM_SHA256
    (0xcca9, true),  // ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
    (0xcca8, true),  // ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
    (0x009f, true),  // DHE_RSA_WITH_AES_256_GCM_SHA384
    (0x009e, true),  // DHE_RSA_WITH_AES_128_GCM_SHA256
    (0xc024, true),  // ECDHE_ECDSA_WITH_AES_256_CBC_SHA384
    (0xc028, true),  // ECDHE_RSA_WITH_AES_256_CBC_SHA384
    (0xc023, true),  // ECDHE_ECDSA_WITH_AES_128_CBC_SHA256
    (0xc027, true),  // ECDHE_RSA_WITH_AES_128_CBC_SHA256
    (0xc00a, false), // ECDHE_ECDSA_WITH_AES_256_CBC_SHA
    (0xc014, false), // ECDHE_RSA_WITH_AES_256_CBC_SHA
    (0xc009, false), // ECDHE_ECDSA_WITH_AES_128_CBC_SHA
    (0xc013, false), // ECDHE_RSA_WITH_AES_128_CBC_SHA
    (0x006b, true),  // DHE_RSA_WITH_AES_256_CBC_SHA256
    (0x0067, true),  // DHE_RSA_WITH_AES_128_CBC_SHA256
    (0x0039, false), // DHE_RSA_WITH_AES_256_CBC_SHA
    (0x0033, false), // DHE_RSA_WITH_AES_128_CBC_SHA
    (0x009d, true),  // RSA_WITH_AES_256_GCM_SHA384
    (0x009c, true),  // RSA_WITH_AES_128_GCM_SHA256
    (0x003d, true),  // RSA_WITH_AES_256_CBC_SHA256
    (0x003c, true),  // RSA_WITH_AES_128_CBC_SHA256
    (0x0035, false), // RSA_WITH_AES_256_CBC_SHA
    (0x002f, false), // RSA_WITH_AES_128_CBC_SHA
    (0xc012, false), // ECDHE_RSA_WITH_3DES_EDE_CBC_SHA
    (0x000a, false), // RSA_WITH_3DES_EDE_CBC_SHA
    (0xc011, false), // ECDHE_RSA_WITH_RC4_128_SHA
    (0x0005, false), // RSA_WITH_RC4_128_SHA
];

/// TLS 1.3 suites.
const SUITES_13: &[u16] = &[0x1301, 0x1302, 0x1303];

/// TLS_EMPTY_RENEGOTIATION_INFO_SCSV.
const RENEGOTIATION_SCSV: u16 = 0x00ff;

/// x25519, secp256r1, secp384r1, secp521r1.
const GROUPS: &[u16] = &[0x001d, 0x0017, 0x0018, 0x0019];

/// ECDSA, RSA-PSS and PKCS#1 with SHA-2, then SHA-1 (old servers' only choice).
const SIGALGS: &[u16] = &[
    0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601, 0x0201, 0x0203,
];

/// The cipher suites a hello for `offer` carries, in order.
pub fn suites(offer: Offer) -> Vec<u16> {
    if offer == Offer::Only(TLS13) {
        return SUITES_13.to_vec();
    }
    let tls12 = offer.max() >= TLS12;
    let mut v: Vec<u16> = SUITES_12
        .iter()
        .filter(|(_, needs12)| tls12 || !needs12)
        .map(|(s, _)| *s)
        .collect();
    v.push(RENEGOTIATION_SCSV);
    v
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// `body` with a big-endian length prefix of `width` bytes (1, 2 or 3).
fn prefixed(width: usize, body: &[u8]) -> Vec<u8> {
    let len = body.len().to_be_bytes();
    let mut out = len[len.len() - width..].to_vec();
    out.extend_from_slice(body);
    out
}

fn extension(out: &mut Vec<u8>, ty: u16, body: &[u8]) {
    put_u16(out, ty);
    out.extend_from_slice(&prefixed(2, body));
}

fn u16_list(items: &[u16]) -> Vec<u8> {
    let mut b = Vec::new();
    for i in items {
        put_u16(&mut b, *i);
    }
    b
}

/// Whether `name` can go in server_name: a DNS name, not an IP address.
fn sni_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.parse::<std::net::IpAddr>().is_err()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

/// The ClientHello record for `offer` (one TLS record: a TLS 1.0 record
/// header, as real clients send their first record). `sni` is sent when it
/// is a host name (never an IP address).
pub fn client_hello(offer: Offer, sni: Option<&str>, r: &HelloRandom) -> Vec<u8> {
    let tls13 = offer == Offer::Only(TLS13);
    let mut exts = Vec::new();
    if let Some(name) = sni.filter(|n| sni_ok(n)) {
        // server_name: list of (type 0 host_name, name).
        let mut entry = vec![0u8];
        entry.extend_from_slice(&prefixed(2, name.as_bytes()));
        extension(&mut exts, 0x0000, &prefixed(2, &entry));
    }
    extension(&mut exts, 0x000a, &prefixed(2, &u16_list(GROUPS)));
    if !tls13 {
        extension(&mut exts, 0x000b, &prefixed(1, &[0])); // uncompressed points
    }
    if offer.max() >= TLS12 {
        extension(&mut exts, 0x000d, &prefixed(2, &u16_list(SIGALGS)));
    }
    if tls13 {
        extension(&mut exts, 0x002b, &prefixed(1, &u16_list(&[TLS13])));
        extension(&mut exts, 0x002d, &prefixed(1, &[1])); // psk_dhe_ke
        let mut share = Vec::new();
        put_u16(&mut share, 0x001d);
        share.extend_from_slice(&prefixed(2, &r.x25519));
        extension(&mut exts, 0x0033, &prefixed(2, &share));
    }

    let mut body = Vec::new();
    // legacy_version: the highest ≤ 1.2 version offered (1.3 says 1.2).
    put_u16(&mut body, offer.max().min(TLS12));
    body.extend_from_slice(&r.random);
    let sid: &[u8] = if tls13 { &r.session_id } else { &[] };
    body.extend_from_slice(&prefixed(1, sid));
    body.extend_from_slice(&prefixed(2, &u16_list(&suites(offer))));
    body.extend_from_slice(&[1, 0]); // compression: null only
    body.extend_from_slice(&prefixed(2, &exts));

    let mut hs = vec![1u8]; // client_hello
    hs.extend_from_slice(&prefixed(3, &body));
    record(22, TLS10.min(offer.min()), &hs)
}

/// One TLS record.
fn record(ctype: u8, version: u16, body: &[u8]) -> Vec<u8> {
    let mut out = vec![ctype];
    put_u16(&mut out, version);
    out.extend_from_slice(&prefixed(2, body));
    out
}

/// What the probe sends to stop, in cleartext (nothing is encrypted yet): a
/// warning `user_canceled` alert then `close_notify`, as RFC 5246 §7.2.2
/// asks of a client that gives up during the handshake. `version` is the
/// record version to use (the server's choice, or TLS 1.0).
pub fn cancel_alerts(version: u16) -> Vec<u8> {
    let mut out = record(21, version, &[1, 90]);
    out.extend_from_slice(&record(21, version, &[1, 0]));
    out
}

/// Why the server's first flight is over (or cannot be read on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlightEnd {
    /// TLS ≤ 1.2: ServerHelloDone arrived; `version` is the ServerHello's.
    Done {
        /// The version the server chose.
        version: u16,
    },
    /// TLS 1.3: a ServerHello (all after it is encrypted) or a
    /// HelloRetryRequest (the server wants another key share).
    Tls13 {
        /// It was a HelloRetryRequest.
        retry: bool,
    },
    /// The server sent an alert: `(level, description)` of its first one.
    Alert(u8, u8),
    /// The bytes are not TLS records (or a handshake the probe cannot follow);
    /// the observer says what they are.
    NotTls,
    /// More than [`MAX_FLIGHT`] bytes without the flight ending.
    TooLong,
}

/// The fixed random of a HelloRetryRequest (RFC 8446 §4.1.3).
const HRR_RANDOM: [u8; 32] = [
    0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
    0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
];

/// Where the server's first flight ends in `buf` (all the server's bytes
/// so far, from its first TLS byte), or `None` when more are needed.
pub fn flight_end(buf: &[u8]) -> Option<FlightEnd> {
    let mut rest = buf;
    let mut hs: Vec<u8> = Vec::new();
    let mut version: Option<u16> = None;
    loop {
        if rest.len() < 5 {
            return too_long(buf);
        }
        let (ctype, major) = (rest[0], rest[1]);
        if !(20..=23).contains(&ctype) || major != 3 {
            return Some(FlightEnd::NotTls);
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if len > 16384 + 2048 {
            return Some(FlightEnd::NotTls);
        }
        if rest.len() < 5 + len {
            return too_long(buf);
        }
        let body = &rest[5..5 + len];
        rest = &rest[5 + len..];
        match ctype {
            21 if body.len() >= 2 => return Some(FlightEnd::Alert(body[0], body[1])),
            22 => hs.extend_from_slice(body),
            // A ChangeCipherSpec or encrypted data before ServerHelloDone:
            // not a flight this reader follows.
            _ => return Some(FlightEnd::NotTls),
        }
        // Whole handshake messages so far.
        let mut msgs = hs.as_slice();
        while msgs.len() >= 4 {
            let mlen =
                usize::from(msgs[1]) << 16 | usize::from(msgs[2]) << 8 | usize::from(msgs[3]);
            if msgs.len() < 4 + mlen {
                break;
            }
            let (ty, m) = (msgs[0], &msgs[4..4 + mlen]);
            msgs = &msgs[4 + mlen..];
            match ty {
                2 => match server_hello_version(m) {
                    Some((_, true)) => return Some(FlightEnd::Tls13 { retry: true }),
                    Some((TLS13, false)) => return Some(FlightEnd::Tls13 { retry: false }),
                    Some((v, false)) => version = Some(v),
                    None => return Some(FlightEnd::NotTls),
                },
                14 => {
                    return Some(match version {
                        Some(version) => FlightEnd::Done { version },
                        None => FlightEnd::NotTls,
                    })
                }
                _ => {}
            }
        }
    }
}

fn too_long(buf: &[u8]) -> Option<FlightEnd> {
    (buf.len() > MAX_FLIGHT).then_some(FlightEnd::TooLong)
}

/// A ServerHello's negotiated version (supported_versions when present) and
/// whether it is a HelloRetryRequest.
fn server_hello_version(m: &[u8]) -> Option<(u16, bool)> {
    let legacy = u16::from_be_bytes([*m.first()?, *m.get(1)?]);
    let random = m.get(2..34)?;
    let retry = random == HRR_RANDOM;
    let sid_len = usize::from(*m.get(34)?);
    let mut p = 35 + sid_len + 3; // suite (2) + compression (1)
    if m.len() < p {
        return None;
    }
    if m.len() < p + 2 {
        return Some((legacy, retry)); // no extensions
    }
    let ext_len = usize::from(u16::from_be_bytes([m[p], m[p + 1]]));
    p += 2;
    let exts = m.get(p..p + ext_len)?;
    let mut e = exts;
    while e.len() >= 4 {
        let ty = u16::from_be_bytes([e[0], e[1]]);
        let len = usize::from(u16::from_be_bytes([e[2], e[3]]));
        let body = e.get(4..4 + len)?;
        if ty == 0x002b && body.len() == 2 {
            return Some((u16::from_be_bytes([body[0], body[1]]), retry));
        }
        e = &e[4 + len..];
    }
    Some((legacy, retry))
}

/// A version's name as the observer writes it (`TLSv1.0` …).
pub fn version_name(v: u16) -> String {
    crate::tls::names::version_name(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Side;
    use crate::tls::{TlsEvent, TlsObserver};

    fn rnd() -> HelloRandom {
        HelloRandom {
            random: [7; 32],
            session_id: [9; 32],
            x25519: [5; 32],
        }
    }

    /// The observer's ClientHello event for what the builder built.
    fn observed(offer: Offer, sni: Option<&str>) -> crate::tls::ClientHelloInfo {
        let bytes = client_hello(offer, sni, &rnd());
        let mut obs = TlsObserver::new();
        let mut out = Vec::new();
        obs.feed(Side::Client, &bytes, &mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        match out.remove(0) {
            TlsEvent::ClientHello(ch) => *ch,
            other => panic!("not a ClientHello: {other:?}"),
        }
    }

    #[test]
    fn the_observer_parses_the_legacy_hello() {
        let ch = observed(Offer::Legacy, Some("mx.example.test"));
        assert_eq!(ch.record_version, "TLSv1.0");
        assert_eq!(ch.legacy_version, "TLSv1.2");
        assert_eq!(ch.max_version, "TLSv1.2");
        assert!(ch.supported_versions.is_empty());
        assert_eq!(ch.sni.as_deref(), Some("mx.example.test"));
        assert_eq!(ch.cipher_suites.len(), SUITES_12.len() + 1);
        for s in [
            "TLS_RSA_WITH_AES_128_CBC_SHA",
            "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
            "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            "TLS_EMPTY_RENEGOTIATION_INFO_SCSV",
        ] {
            assert!(
                ch.cipher_suites.iter().any(|c| c == s),
                "{s} missing: {:?}",
                ch.cipher_suites
            );
        }
        assert_eq!(ch.supported_groups[0], "x25519");
        assert_eq!(ch.ec_point_formats, vec![0]);
        assert!(!ch.signature_algorithms.is_empty());
        assert!(ch.key_share_groups.is_empty());
        assert_eq!(ch.extensions, vec![0, 10, 11, 13]);
        assert!(!ch.ja3.is_empty() && !ch.ja4.is_empty());
    }

    #[test]
    fn a_tls10_hello_offers_no_tls12_suites_nor_signature_algorithms() {
        let ch = observed(Offer::Only(TLS10), Some("mx.example.test"));
        assert_eq!(ch.legacy_version, "TLSv1.0");
        assert_eq!(ch.max_version, "TLSv1.0");
        assert!(ch.signature_algorithms.is_empty());
        assert!(!ch
            .cipher_suites
            .iter()
            .any(|c| c.contains("GCM") || c.ends_with("SHA256")));
        assert!(ch
            .cipher_suites
            .iter()
            .any(|c| c == "TLS_RSA_WITH_AES_128_CBC_SHA"));
        let ch = observed(Offer::Only(TLS11), None);
        assert_eq!(ch.max_version, "TLSv1.1");
        assert_eq!(ch.record_version, "TLSv1.0");
        assert_eq!(ch.sni, None);
    }

    #[test]
    fn the_tls13_hello_has_supported_versions_and_an_x25519_share() {
        let ch = observed(Offer::Only(TLS13), Some("mx.example.test"));
        assert_eq!(ch.legacy_version, "TLSv1.2");
        assert_eq!(ch.supported_versions, vec!["TLSv1.3".to_string()]);
        assert_eq!(ch.max_version, "TLSv1.3");
        assert_eq!(ch.key_share_groups, vec!["x25519".to_string()]);
        assert_eq!(
            ch.cipher_suites,
            vec![
                "TLS_AES_128_GCM_SHA256",
                "TLS_AES_256_GCM_SHA384",
                "TLS_CHACHA20_POLY1305_SHA256"
            ]
        );
    }

    #[test]
    fn an_ip_address_is_never_sent_as_sni() {
        assert_eq!(observed(Offer::Legacy, Some("192.0.2.1")).sni, None);
        assert_eq!(observed(Offer::Legacy, Some("::1")).sni, None);
        assert_eq!(observed(Offer::Legacy, Some("")).sni, None);
    }

    fn hs(ty: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![ty];
        m.extend_from_slice(&prefixed(3, body));
        m
    }

    fn server_hello(legacy: u16, random: [u8; 32], supported: Option<u16>) -> Vec<u8> {
        let mut b = Vec::new();
        put_u16(&mut b, legacy);
        b.extend_from_slice(&random);
        b.push(0);
        put_u16(&mut b, 0xc013);
        b.push(0);
        let mut exts = Vec::new();
        if let Some(v) = supported {
            extension(&mut exts, 0x002b, &v.to_be_bytes());
        }
        extension(&mut exts, 0xff01, &[0]);
        b.extend_from_slice(&prefixed(2, &exts));
        hs(2, &b)
    }

    #[test]
    fn a_tls10_flight_ends_at_server_hello_done_in_any_split() {
        let mut flight = server_hello(TLS10, [1; 32], None);
        flight.extend_from_slice(&hs(11, &prefixed(3, &prefixed(3, b"not really DER"))));
        flight.extend_from_slice(&hs(14, &[]));
        // Across two records, the second splitting the Certificate.
        let (a, b) = flight.split_at(50);
        let mut wire = record(22, TLS10, a);
        wire.extend_from_slice(&record(22, TLS10, b));
        for cut in 0..wire.len() {
            assert_eq!(flight_end(&wire[..cut]), None, "cut at {cut}");
        }
        assert_eq!(flight_end(&wire), Some(FlightEnd::Done { version: TLS10 }));
        // The observer sees the same ServerHello.
        let mut obs = TlsObserver::new();
        let mut out = Vec::new();
        obs.feed(
            Side::Client,
            &client_hello(Offer::Legacy, None, &rnd()),
            &mut out,
        );
        obs.feed(Side::Server, &wire, &mut out);
        assert!(out.iter().any(
            |e| matches!(e, TlsEvent::ServerHello { version, cipher_suite, .. }
            if version == "TLSv1.0" && cipher_suite == "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA")
        ));
    }

    #[test]
    fn tls13_server_hello_retry_request_alert_and_garbage_end_the_flight() {
        let sh = record(22, TLS12, &server_hello(TLS12, [1; 32], Some(TLS13)));
        assert_eq!(flight_end(&sh), Some(FlightEnd::Tls13 { retry: false }));
        let hrr = record(22, TLS12, &server_hello(TLS12, HRR_RANDOM, Some(TLS13)));
        assert_eq!(flight_end(&hrr), Some(FlightEnd::Tls13 { retry: true }));
        assert_eq!(
            flight_end(&record(21, TLS10, &[2, 70])),
            Some(FlightEnd::Alert(2, 70))
        );
        assert_eq!(flight_end(b"220 mx ESMTP\r\n"), Some(FlightEnd::NotTls));
        // ServerHelloDone without ServerHello.
        assert_eq!(
            flight_end(&record(22, TLS10, &hs(14, &[]))),
            Some(FlightEnd::NotTls)
        );
        // A flight that never ends is bounded.
        let mut long = Vec::new();
        while long.len() <= MAX_FLIGHT {
            long.extend_from_slice(&record(22, TLS12, &hs(11, &[0; 16000])[..16000]));
        }
        assert_eq!(
            flight_end(&long[..long.len() - 1]),
            Some(FlightEnd::TooLong)
        );
    }

    #[test]
    fn the_cancel_alerts_are_read_by_the_observer() {
        let mut obs = TlsObserver::new();
        let mut out = Vec::new();
        obs.feed(
            Side::Client,
            &client_hello(Offer::Legacy, None, &rnd()),
            &mut out,
        );
        obs.feed(Side::Client, &cancel_alerts(TLS10), &mut out);
        let alerts: Vec<_> = out
            .iter()
            .filter_map(|e| match e {
                TlsEvent::Alert {
                    description, level, ..
                } => Some((level.as_str(), description.as_str())),
                _ => None,
            })
            .collect();
        assert_eq!(
            alerts,
            vec![("warning", "user_canceled"), ("warning", "close_notify")]
        );
    }
}
