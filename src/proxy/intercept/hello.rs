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
