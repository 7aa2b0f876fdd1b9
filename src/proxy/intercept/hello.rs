//! The client's first TLS bytes, read whole before anything is decided
//! (rustls refuses a TLS 1.0 hello inside its acceptor before it can be
//! seen), and the decision: can rustls serve this ClientHello, or does the
//! session fall back to passthrough? The parsing is the `tls` module's.

use crate::tls::hello::{parse_client_hello, ClientHello};

/// At most this many bytes are buffered while the ClientHello is incomplete.
pub(super) const MAX_HELLO: usize = 64 * 1024;

/// What the buffered bytes are so far.
pub(super) enum Buffered {
    /// More bytes are needed.
    Incomplete,
    /// A complete ClientHello.
    Hello(Box<ClientHello>),
    /// Not something rustls can read (SSLv2 format, not a handshake, garbled): why.
    Foreign(String),
}

/// Looks at the bytes buffered so far.
pub(super) fn examine(buf: &[u8]) -> Buffered {
    let Some(&first) = buf.first() else {
        return Buffered::Incomplete;
    };
    if first & 0x80 != 0 {
        return Buffered::Foreign("the client sent an SSLv2-format ClientHello".into());
    }
    if first != 0x16 {
        return Buffered::Foreign(format!(
            "the client's first bytes after STARTTLS are not a TLS handshake record (type {first})"
        ));
    }
    // Reassemble the handshake message from consecutive handshake records.
    let mut msg = Vec::new();
    let mut pos = 0;
    while let Some(h) = buf.get(pos..pos + 5) {
        if h[0] != 0x16 {
            return Buffered::Foreign("a non-handshake record inside the ClientHello".into());
        }
        let len = usize::from(u16::from_be_bytes([h[3], h[4]]));
        let Some(body) = buf.get(pos + 5..pos + 5 + len) else {
            return Buffered::Incomplete;
        };
        msg.extend_from_slice(body);
        pos += 5 + len;
        if msg.len() >= 4 {
            if msg[0] != 1 {
                return Buffered::Foreign(format!(
                    "the client's first handshake message is type {}, not a ClientHello",
                    msg[0]
                ));
            }
            let need = 4
                + ((usize::from(msg[1]) << 16) | (usize::from(msg[2]) << 8) | usize::from(msg[3]));
            if msg.len() >= need {
                return match parse_client_hello(msg.get(4..need).unwrap_or(&[])) {
                    Ok(ch) => Buffered::Hello(Box::new(ch)),
                    Err(e) => Buffered::Foreign(e),
                };
            }
        }
    }
    Buffered::Incomplete
}

const TLS13_SUITES: [u16; 3] = [0x1301, 0x1302, 0x1303];
const TLS12_ECDSA_SUITES: [u16; 3] = [0xc02b, 0xc02c, 0xcca9];
const TLS12_RSA_SUITES: [u16; 3] = [0xc02f, 0xc030, 0xcca8];
const GROUPS: [u16; 3] = [0x001d, 0x0017, 0x0018];
const ECDSA_P256_SHA256: u16 = 0x0403;

/// `Ok(())` if rustls can serve `ch` with an ECDSA P-256 leaf (minted) or,
/// `rsa_ok`, a static RSA one; else why not, in words.
pub(super) fn servable(ch: &ClientHello, rsa_ok: bool) -> Result<(), String> {
    let offers = |v: u16| {
        if ch.supported_versions.is_empty() {
            ch.legacy_version >= v && v <= 0x0303
        } else {
            ch.supported_versions.contains(&v)
        }
    };
    let any = |list: &[u16], of: &[u16]| list.iter().any(|x| of.contains(x));
    let group = ch.groups.is_empty() || any(&ch.groups, &GROUPS);
    let ecdsa_sig = ch.sigalgs.is_empty() || ch.sigalgs.contains(&ECDSA_P256_SHA256);
    if offers(0x0304)
        && any(&ch.ciphers, &TLS13_SUITES)
        && any(&ch.groups, &GROUPS)
        && (ecdsa_sig || rsa_ok)
    {
        return Ok(());
    }
    if offers(0x0303) && group && !ch.groups.is_empty() {
        if any(&ch.ciphers, &TLS12_ECDSA_SUITES) && ecdsa_sig {
            return Ok(());
        }
        if rsa_ok && any(&ch.ciphers, &TLS12_RSA_SUITES) {
            return Ok(());
        }
    }
    let max = if offers(0x0304) {
        "TLS 1.3"
    } else if offers(0x0303) {
        "TLS 1.2"
    } else if ch.legacy_version == 0x0302 {
        "TLS 1.1"
    } else if ch.legacy_version == 0x0301 {
        "TLS 1.0"
    } else {
        "SSL 3.0 or older"
    };
    if !offers(0x0303) {
        return Err(format!(
            "the client offers at most {max}; smtptap's TLS library (rustls) speaks only TLS 1.2 and 1.3"
        ));
    }
    if !ch.groups.is_empty() && !any(&ch.groups, &GROUPS) {
        return Err("the client offers no key exchange group rustls supports (x25519, secp256r1, secp384r1)".into());
    }
    Err(format!(
        "none of the client's {} cipher suites is one rustls can serve with this certificate (it supports only ECDHE with AES-GCM or ChaCha20-Poly1305; CBC and static-RSA suites are not available)",
        ch.ciphers.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello record with these versions, suites, groups and sigalgs.
    fn hello(
        legacy: u16,
        versions: &[u16],
        suites: &[u16],
        groups: &[u16],
        sigalgs: &[u16],
    ) -> Vec<u8> {
        let list16 = |v: &[u16]| -> Vec<u8> { v.iter().flat_map(|x| x.to_be_bytes()).collect() };
        let mut exts = Vec::new();
        let mut ext = |ty: u16, body: Vec<u8>| {
            exts.extend_from_slice(&ty.to_be_bytes());
            exts.extend_from_slice(&(body.len() as u16).to_be_bytes());
            exts.extend_from_slice(&body);
        };
        if !versions.is_empty() {
            let v = list16(versions);
            let mut b = vec![v.len() as u8];
            b.extend(v);
            ext(43, b);
        }
        let g = list16(groups);
        let mut b = (g.len() as u16).to_be_bytes().to_vec();
        b.extend(g);
        ext(10, b);
        let s = list16(sigalgs);
        let mut b = (s.len() as u16).to_be_bytes().to_vec();
        b.extend(s);
        ext(13, b);
        let mut body = legacy.to_be_bytes().to_vec();
        body.extend([0u8; 32]);
        body.push(0);
        let c = list16(suites);
        body.extend((c.len() as u16).to_be_bytes());
        body.extend(c);
        body.extend([1, 0]);
        body.extend((exts.len() as u16).to_be_bytes());
        body.extend(exts);
        let mut hs = vec![1, 0, (body.len() >> 8) as u8, body.len() as u8];
        hs.extend(body);
        let mut rec = vec![0x16, 3, 1, (hs.len() >> 8) as u8, hs.len() as u8];
        rec.extend(hs);
        rec
    }

    fn decide(bytes: &[u8]) -> Result<(), String> {
        match examine(bytes) {
            Buffered::Hello(ch) => servable(&ch, false),
            Buffered::Foreign(why) => Err(why),
            Buffered::Incomplete => Err("incomplete".into()),
        }
    }

    #[test]
    fn modern_hellos_are_served_and_legacy_ones_say_why_not() {
        let tls13 = hello(
            0x0303,
            &[0x0304, 0x0303],
            &[0x1301, 0xc02b],
            &[0x001d],
            &[0x0403],
        );
        assert_eq!(decide(&tls13), Ok(()));
        let tls12 = hello(0x0303, &[], &[0xc02b], &[0x0017], &[0x0403]);
        assert_eq!(decide(&tls12), Ok(()));
        let tls10 = hello(0x0301, &[], &[0xc013, 0x002f], &[0x0017], &[]);
        let why = decide(&tls10).unwrap_err();
        assert!(why.contains("at most TLS 1.0"), "{why}");
        let cbc = hello(0x0303, &[], &[0xc013, 0xc027, 0x002f], &[0x0017], &[0x0403]);
        let why = decide(&cbc).unwrap_err();
        assert!(why.contains("CBC"), "{why}");
        let rsa_only = hello(0x0303, &[], &[0xc02f], &[0x0017], &[0x0401]);
        assert!(decide(&rsa_only).is_err());
    }

    #[test]
    fn partial_foreign_and_sslv2_bytes_are_told_apart_at_every_split() {
        let tls13 = hello(0x0303, &[0x0304], &[0x1301], &[0x001d], &[0x0403]);
        for k in 0..tls13.len() {
            assert!(
                matches!(examine(&tls13[..k]), Buffered::Incomplete),
                "at {k}"
            );
        }
        assert!(matches!(
            examine(&[0x80, 0x2e, 0x01, 0x00, 0x02]),
            Buffered::Foreign(_)
        ));
        assert!(matches!(examine(b"EHLO x\r\n"), Buffered::Foreign(_)));
        // A hello split over two handshake records is reassembled.
        let body = &tls13[5..];
        let (a, b) = body.split_at(20);
        let mut two = vec![0x16, 3, 1, 0, a.len() as u8];
        two.extend_from_slice(a);
        two.extend([0x16, 3, 1, (b.len() >> 8) as u8, b.len() as u8]);
        two.extend_from_slice(b);
        assert!(matches!(examine(&two), Buffered::Hello(_)));
    }
}
