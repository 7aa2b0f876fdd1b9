//! ClientHello / ServerHello (and the other cleartext handshake bodies smtptap
//! reports) decoded from one complete, reassembled handshake message body.
//!
//! This module owns the byte layouts of those messages (RFC 5246, RFC 8446, and
//! the SSLv2-compatible ClientHello of RFC 6101 appendix E). It must not keep
//! state across messages nor decide what is encrypted: `record.rs` and `mod.rs`
//! do that. Every read is bounds-checked; a short or inconsistent body gives an
//! `Err(reason)` the caller turns into a desync.

/// A bounds-checked big-endian reader over a byte slice.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }
    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }
    /// The next `n` bytes.
    pub(crate) fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.bytes(1).and_then(|b| b.first().copied())
    }
    pub(crate) fn u16(&mut self) -> Option<u16> {
        let b = self.bytes(2)?;
        Some(u16::from_be_bytes([*b.first()?, *b.get(1)?]))
    }
    pub(crate) fn u24(&mut self) -> Option<usize> {
        let b = self.bytes(3)?;
        Some(((*b.first()? as usize) << 16) | ((*b.get(1)? as usize) << 8) | *b.get(2)? as usize)
    }
    /// A vector with a one-byte length prefix.
    pub(crate) fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()? as usize;
        self.bytes(n)
    }
    /// A vector with a two-byte length prefix.
    pub(crate) fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()? as usize;
        self.bytes(n)
    }
    /// A vector with a three-byte length prefix.
    pub(crate) fn vec24(&mut self) -> Option<&'a [u8]> {
        let n = self.u24()?;
        self.bytes(n)
    }
}

/// A list of big-endian u16 values (trailing odd byte ignored).
fn u16_list(b: &[u8]) -> Vec<u16> {
    b.chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect()
}

/// The fixed `random` of a HelloRetryRequest (RFC 8446 §4.1.3).
pub(crate) const HRR_RANDOM: [u8; 32] = [
    0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
    0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
];

/// Extension numbers smtptap looks inside.
pub(crate) mod ext {
    pub const SERVER_NAME: u16 = 0;
    pub const SUPPORTED_GROUPS: u16 = 10;
    pub const EC_POINT_FORMATS: u16 = 11;
    pub const SIGNATURE_ALGORITHMS: u16 = 13;
    pub const ALPN: u16 = 16;
    pub const SESSION_TICKET: u16 = 35;
    pub const PRE_SHARED_KEY: u16 = 41;
    pub const EARLY_DATA: u16 = 42;
    pub const SUPPORTED_VERSIONS: u16 = 43;
    pub const KEY_SHARE: u16 = 51;
}

/// A decoded ClientHello, raw code points (names are applied in `mod.rs`).
#[derive(Debug, Clone, Default)]
pub(crate) struct ClientHello {
    pub legacy_version: u16,
    pub session_id: Vec<u8>,
    /// TLS cipher suites (for SSLv2 format: the specs whose first byte is 0).
    pub ciphers: Vec<u16>,
    /// SSLv2 format only: every 3-byte cipher spec as sent.
    pub sslv2_specs: Vec<u32>,
    pub extensions: Vec<u16>,
    pub sni: Option<String>,
    pub alpn: Vec<Vec<u8>>,
    pub groups: Vec<u16>,
    pub sigalgs: Vec<u16>,
    pub key_share_groups: Vec<u16>,
    pub point_formats: Vec<u8>,
    pub supported_versions: Vec<u16>,
    pub session_ticket: bool,
    pub psk: bool,
    pub early_data: bool,
    pub sslv2: bool,
}

/// Decodes a ClientHello body (after the 4-byte handshake header).
pub(crate) fn parse_client_hello(body: &[u8]) -> Result<ClientHello, String> {
    let short = |what: &str| format!("ClientHello truncated in {what}");
    let mut r = Reader::new(body);
    let mut ch = ClientHello {
        legacy_version: r.u16().ok_or_else(|| short("version"))?,
        ..ClientHello::default()
    };
    r.bytes(32).ok_or_else(|| short("random"))?;
    ch.session_id = r.vec8().ok_or_else(|| short("session id"))?.to_vec();
    ch.ciphers = u16_list(r.vec16().ok_or_else(|| short("cipher suites"))?);
    r.vec8().ok_or_else(|| short("compression methods"))?;
    if r.remaining() == 0 {
        return Ok(ch); // no extensions at all (SSLv3-era hello)
    }
    let exts = r.vec16().ok_or_else(|| short("extensions"))?;
    let mut er = Reader::new(exts);
    while er.remaining() > 0 {
        let ty = er.u16().ok_or_else(|| short("extension type"))?;
        let data = er.vec16().ok_or_else(|| short("extension body"))?;
        ch.extensions.push(ty);
        // Extension bodies are decoded leniently: a malformed body leaves the field empty.
        let mut d = Reader::new(data);
        match ty {
            ext::SERVER_NAME => {
                if let Some(list) = d.vec16() {
                    let mut l = Reader::new(list);
                    while let (Some(kind), Some(name)) = (l.u8(), l.vec16()) {
                        if kind == 0 && ch.sni.is_none() {
                            ch.sni = Some(String::from_utf8_lossy(name).into_owned());
                        }
                    }
                }
            }
            ext::SUPPORTED_GROUPS => ch.groups = d.vec16().map(u16_list).unwrap_or_default(),
            ext::EC_POINT_FORMATS => ch.point_formats = d.vec8().unwrap_or_default().to_vec(),
            ext::SIGNATURE_ALGORITHMS => ch.sigalgs = d.vec16().map(u16_list).unwrap_or_default(),
            ext::ALPN => {
                if let Some(list) = d.vec16() {
                    let mut l = Reader::new(list);
                    while let Some(p) = l.vec8() {
                        ch.alpn.push(p.to_vec());
                    }
                }
            }
            ext::SESSION_TICKET => ch.session_ticket = true,
            ext::PRE_SHARED_KEY => ch.psk = true,
            ext::EARLY_DATA => ch.early_data = true,
            ext::SUPPORTED_VERSIONS => {
                ch.supported_versions = d.vec8().map(u16_list).unwrap_or_default()
            }
            ext::KEY_SHARE => {
                if let Some(list) = d.vec16() {
                    let mut l = Reader::new(list);
                    while let (Some(g), Some(_key)) = (l.u16(), l.vec16()) {
                        ch.key_share_groups.push(g);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(ch)
}

/// Decodes an SSLv2-format ClientHello record body (after the 2-byte length
/// header): msg_type 1, version, then cipher specs, session id, challenge.
pub(crate) fn parse_sslv2_client_hello(body: &[u8]) -> Result<ClientHello, String> {
    let short = |what: &str| format!("SSLv2-format ClientHello truncated in {what}");
    let mut r = Reader::new(body);
    let ty = r.u8().ok_or_else(|| short("message type"))?;
    if ty != 1 {
        return Err(format!(
            "SSLv2-format record with message type {ty}, expected 1 (ClientHello)"
        ));
    }
    let version = r.u16().ok_or_else(|| short("version"))?;
    let spec_len = r.u16().ok_or_else(|| short("cipher spec length"))? as usize;
    let sid_len = r.u16().ok_or_else(|| short("session id length"))? as usize;
    let chal_len = r.u16().ok_or_else(|| short("challenge length"))? as usize;
    if spec_len % 3 != 0 {
        return Err(format!(
            "SSLv2-format ClientHello cipher spec length {spec_len} is not a multiple of 3"
        ));
    }
    let specs = r.bytes(spec_len).ok_or_else(|| short("cipher specs"))?;
    let sid = r.bytes(sid_len).ok_or_else(|| short("session id"))?;
    r.bytes(chal_len).ok_or_else(|| short("challenge"))?;
    let mut ch = ClientHello {
        legacy_version: version,
        session_id: sid.to_vec(),
        sslv2: true,
        ..ClientHello::default()
    };
    for s in specs.chunks_exact(3) {
        let spec = ((s[0] as u32) << 16) | ((s[1] as u32) << 8) | s[2] as u32;
        ch.sslv2_specs.push(spec);
        if s[0] == 0 {
            ch.ciphers.push(spec as u16);
        }
    }
    Ok(ch)
}

/// A decoded ServerHello (or HelloRetryRequest).
#[derive(Debug, Clone, Default)]
pub(crate) struct ServerHello {
    pub legacy_version: u16,
    pub is_hrr: bool,
    pub session_id: Vec<u8>,
    pub cipher: u16,
    pub extensions: Vec<u16>,
    pub selected_version: Option<u16>,
    pub key_share_group: Option<u16>,
    pub alpn: Option<Vec<u8>>,
    pub psk: bool,
}

impl ServerHello {
    /// The negotiated version: supported_versions if present, else legacy.
    pub fn version(&self) -> u16 {
        self.selected_version.unwrap_or(self.legacy_version)
    }
}

/// Decodes a ServerHello body.
pub(crate) fn parse_server_hello(body: &[u8]) -> Result<ServerHello, String> {
    let short = |what: &str| format!("ServerHello truncated in {what}");
    let mut r = Reader::new(body);
    let mut sh = ServerHello {
        legacy_version: r.u16().ok_or_else(|| short("version"))?,
        ..ServerHello::default()
    };
    let random = r.bytes(32).ok_or_else(|| short("random"))?;
    sh.is_hrr = random == HRR_RANDOM;
    sh.session_id = r.vec8().ok_or_else(|| short("session id"))?.to_vec();
    sh.cipher = r.u16().ok_or_else(|| short("cipher suite"))?;
    r.u8().ok_or_else(|| short("compression method"))?;
    if r.remaining() == 0 {
        return Ok(sh);
    }
    let exts = r.vec16().ok_or_else(|| short("extensions"))?;
    let mut er = Reader::new(exts);
    while er.remaining() > 0 {
        let ty = er.u16().ok_or_else(|| short("extension type"))?;
        let data = er.vec16().ok_or_else(|| short("extension body"))?;
        sh.extensions.push(ty);
        let mut d = Reader::new(data);
        match ty {
            ext::SUPPORTED_VERSIONS => sh.selected_version = d.u16(),
            // ServerHello: group + key; HelloRetryRequest: group only.
            ext::KEY_SHARE => sh.key_share_group = d.u16(),
            ext::ALPN => {
                if let Some(list) = d.vec16() {
                    sh.alpn = Reader::new(list).vec8().map(<[u8]>::to_vec);
                }
            }
            ext::PRE_SHARED_KEY => sh.psk = true,
            _ => {}
        }
    }
    Ok(sh)
}

/// Decodes a TLS ≤ 1.2 Certificate body into the DER certificates, leaf first.
pub(crate) fn parse_certificate_list(body: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut r = Reader::new(body);
    let list = r
        .vec24()
        .ok_or("Certificate message truncated in the list length")?;
    let mut l = Reader::new(list);
    let mut ders = Vec::new();
    while l.remaining() > 0 {
        let der = l
            .vec24()
            .ok_or("Certificate message: a certificate runs past the list")?;
        ders.push(der.to_vec());
    }
    Ok(ders)
}

/// A decoded TLS ≤ 1.2 CertificateRequest.
#[derive(Debug, Clone, Default)]
pub(crate) struct CertRequest {
    pub cert_types: Vec<u8>,
    pub sigalgs: Vec<u16>,
    pub ca_names: usize,
}

/// Decodes a TLS ≤ 1.2 CertificateRequest; `with_sigalgs` for TLS 1.2.
pub(crate) fn parse_cert_request(body: &[u8], with_sigalgs: bool) -> Result<CertRequest, String> {
    let short = |what: &str| format!("CertificateRequest truncated in {what}");
    let mut r = Reader::new(body);
    let mut cr = CertRequest {
        cert_types: r.vec8().ok_or_else(|| short("certificate types"))?.to_vec(),
        ..CertRequest::default()
    };
    if with_sigalgs {
        cr.sigalgs = u16_list(r.vec16().ok_or_else(|| short("signature algorithms"))?);
    }
    let names = r.vec16().ok_or_else(|| short("CA names"))?;
    let mut n = Reader::new(names);
    while n.remaining() > 0 {
        n.vec16().ok_or_else(|| short("a CA name"))?;
        cr.ca_names += 1;
    }
    Ok(cr)
}

/// What a ServerKeyExchange says about the key exchange group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct KeyExchange {
    pub group: Option<u16>,
    pub dh_bits: Option<u32>,
}

/// ECDHE ServerKeyExchange: curve_type 3 (named_curve) then the group.
pub(crate) fn parse_ske_ecdhe(body: &[u8]) -> KeyExchange {
    let mut r = Reader::new(body);
    match r.u8() {
        Some(3) => KeyExchange {
            group: r.u16(),
            dh_bits: None,
        },
        _ => KeyExchange::default(),
    }
}

/// DHE ServerKeyExchange: the prime p first; its bit length is reported.
pub(crate) fn parse_ske_dhe(body: &[u8]) -> KeyExchange {
    let mut r = Reader::new(body);
    let bits = r.vec16().map(|p| {
        let skip = p.iter().take_while(|b| **b == 0).count();
        let rest = p.get(skip..).unwrap_or_default();
        match rest.first() {
            Some(first) => ((rest.len() as u32 - 1) * 8) + (8 - first.leading_zeros()),
            None => 0,
        }
    });
    KeyExchange {
        group: None,
        dh_bits: bits,
    }
}
