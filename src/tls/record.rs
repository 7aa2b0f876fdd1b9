//! The record layer of one direction: cuts a byte stream (split anywhere) into
//! TLS records (or the one SSLv2-format ClientHello), and reassembles handshake
//! messages across records.
//!
//! This module owns framing and the memory bounds: at most one record
//! ([`MAX_RECORD`] bytes of body) is buffered, and one handshake message at most
//! [`MAX_HANDSHAKE`] bytes. It must not interpret record contents beyond the
//! framing: `mod.rs` decides what a record means.

/// The largest record body accepted (RFC 5246 §6.2.3: 2^14 + 2048).
pub const MAX_RECORD: usize = 16384 + 2048;
/// The largest handshake message reassembled (a very long certificate chain
/// fits; beyond it the observer stops with a desync).
pub const MAX_HANDSHAKE: usize = 1 << 20;

/// One framed unit of a direction. `raw` holds the whole record, header
/// included, so that its buffer can be handed back ([`RecordReader::recycle`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unit {
    /// A TLS record (5-byte header).
    Record {
        /// Content type (20..=24).
        ctype: u8,
        /// The record header's version.
        version: u16,
        /// Header and body.
        raw: Vec<u8>,
        /// Stream offset of the record header.
        offset: u64,
    },
    /// An SSLv2-format ClientHello record (2-byte header).
    Sslv2Hello {
        /// Header and body; the body starts with the message type.
        raw: Vec<u8>,
        /// Stream offset of the record header.
        offset: u64,
    },
}

impl Unit {
    /// The record body (after the header).
    pub(crate) fn body(&self) -> &[u8] {
        match self {
            Unit::Record { raw, .. } => raw.get(5..).unwrap_or_default(),
            Unit::Sslv2Hello { raw, .. } => raw.get(2..).unwrap_or_default(),
        }
    }

    /// Gives the buffer back for reuse.
    pub(crate) fn into_raw(self) -> Vec<u8> {
        match self {
            Unit::Record { raw, .. } | Unit::Sslv2Hello { raw, .. } => raw,
        }
    }
}

/// Bytes of non-TLS input gathered (or up to a line end) before reporting a desync.
pub(crate) const NON_TLS_CONTEXT: usize = 32;

/// A framing failure: the reason in plain words and the stream offset.
pub(crate) type FrameError = (String, u64);

/// Frames one direction's byte stream into records.
#[derive(Debug, Default)]
pub(crate) struct RecordReader {
    /// The current, incomplete record (header included); never above 5 + MAX_RECORD.
    buf: Vec<u8>,
    /// Stream offset of `buf[0]`.
    offset: u64,
    /// Records framed so far (the SSLv2 format is only accepted as the first).
    framed: u64,
}

impl RecordReader {
    /// Takes from `data` what the next record needs. Returns `None` when `data`
    /// is used up before a record is complete ("need more bytes").
    pub(crate) fn next(
        &mut self,
        data: &mut &[u8],
        allow_sslv2: bool,
    ) -> Option<Result<Unit, FrameError>> {
        loop {
            let need = match self.needed(allow_sslv2) {
                Ok(n) => n,
                Err(e) => return Some(Err(e)),
            };
            if self.buf.len() >= need {
                return Some(Ok(self.take_unit(allow_sslv2)));
            }
            if data.is_empty() {
                return None;
            }
            let take = (need - self.buf.len()).min(data.len());
            let (head, tail) = data.split_at(take);
            self.buf.extend_from_slice(head);
            *data = tail;
        }
    }

    fn sslv2(&self, allow_sslv2: bool) -> bool {
        allow_sslv2 && self.framed == 0 && self.buf.first().is_some_and(|b| b & 0x80 != 0)
    }

    /// How many bytes the current unit needs in total, or a framing error.
    fn needed(&self, allow_sslv2: bool) -> Result<usize, FrameError> {
        let Some(&b0) = self.buf.first() else {
            return Ok(1);
        };
        if self.sslv2(allow_sslv2) {
            return Ok(match self.buf.get(1) {
                None => 2,
                Some(&b1) => 2 + ((((b0 & 0x7f) as usize) << 8) | b1 as usize),
            });
        }
        if !(20..=24).contains(&b0) {
            // Not TLS. Gather a little context first, one byte at a time so that
            // the reason does not depend on how the stream was split: up to the
            // first line end, or NON_TLS_CONTEXT bytes.
            if self.buf.len() >= NON_TLS_CONTEXT || self.buf.contains(&b'\n') {
                return Err((describe_non_tls(&self.buf, allow_sslv2), self.offset));
            }
            return Ok(self.buf.len() + 1);
        }
        let (Some(&major), Some(&minor), Some(&l0), Some(&l1)) = (
            self.buf.get(1),
            self.buf.get(2),
            self.buf.get(3),
            self.buf.get(4),
        ) else {
            return Ok(5);
        };
        if major != 3 {
            return Err((
                format!(
                    "record header with version 0x{major:02x}{minor:02x}, not SSLv3/TLS (content type {b0})"
                ),
                self.offset,
            ));
        }
        let len = ((l0 as usize) << 8) | l1 as usize;
        if len > MAX_RECORD {
            return Err((
                format!("record length {len} exceeds the TLS maximum of {MAX_RECORD} bytes"),
                self.offset,
            ));
        }
        Ok(5 + len)
    }

    fn take_unit(&mut self, allow_sslv2: bool) -> Unit {
        let offset = self.offset;
        let sslv2 = self.sslv2(allow_sslv2);
        let buf = std::mem::take(&mut self.buf);
        self.offset += buf.len() as u64;
        self.framed += 1;
        if sslv2 {
            return Unit::Sslv2Hello { raw: buf, offset };
        }
        let ctype = buf.first().copied().unwrap_or_default();
        let version = u16::from_be_bytes([
            buf.get(1).copied().unwrap_or_default(),
            buf.get(2).copied().unwrap_or_default(),
        ]);
        Unit::Record {
            ctype,
            version,
            raw: buf,
            offset,
        }
    }

    /// Takes back a unit's buffer to avoid one allocation per record.
    pub(crate) fn recycle(&mut self, mut raw: Vec<u8>) {
        if self.buf.is_empty() {
            raw.clear();
            self.buf = raw;
        }
    }
}

/// Says in plain words what non-TLS bytes sent by the client (`from_client`)
/// or the server look like.
pub(crate) fn describe_non_tls(bytes: &[u8], from_client: bool) -> String {
    let head: Vec<u8> = bytes.iter().take(40).copied().collect();
    let printable = !head.is_empty()
        && head
            .iter()
            .all(|b| b.is_ascii_graphic() || matches!(b, b' ' | b'\r' | b'\n' | b'\t'));
    if printable {
        // From the client only the first word is shown: the rest of a
        // cleartext line may be an AUTH credential.
        let shown_bytes: &[u8] = if from_client {
            let word = head
                .iter()
                .position(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
                .unwrap_or(head.len())
                .min(16);
            head.get(..word).unwrap_or_default()
        } else {
            &head
        };
        let mut shown = String::new();
        for &b in shown_bytes {
            match b {
                b'\r' => shown.push_str("\\r"),
                b'\n' => shown.push_str("\\n"),
                b'\t' => shown.push_str("\\t"),
                b => shown.push(b as char),
            }
        }
        if shown_bytes.len() < head.len() {
            shown.push('…');
        }
        let reply = head.len() >= 3 && head.iter().take(3).all(u8::is_ascii_digit);
        let command = head.iter().take(4).all(u8::is_ascii_alphabetic);
        let looks = match (from_client, reply, command) {
            (false, true, _) => {
                "looks like an SMTP reply in cleartext: the server answered without TLS"
            }
            (true, _, true) => {
                "looks like an SMTP command in cleartext: the client carried on without starting TLS"
            }
            (true, _, _) => "cleartext from the client, not TLS",
            (false, _, _) => "cleartext from the server, not TLS",
        };
        format!("expected a TLS record, got '{shown}' ({looks})")
    } else {
        let hex: Vec<String> = head.iter().take(16).map(|b| format!("{b:02x}")).collect();
        format!(
            "expected a TLS record, got bytes {} (0x{:02x} is not a TLS content type)",
            hex.join(" "),
            head.first().copied().unwrap_or_default()
        )
    }
}

/// Reassembles handshake messages (4-byte header + body) across records.
#[derive(Debug, Default)]
pub(crate) struct HandshakeAssembler {
    /// Bytes of the current incomplete message(s); bounded by MAX_HANDSHAKE + one record.
    buf: Vec<u8>,
}

impl HandshakeAssembler {
    /// Adds a record's body; returns the complete messages `(type, body)`, or
    /// an error when a message announces more than [`MAX_HANDSHAKE`] bytes.
    pub(crate) fn push(&mut self, fragment: &[u8]) -> Result<Vec<(u8, Vec<u8>)>, String> {
        self.buf.extend_from_slice(fragment);
        let mut msgs = Vec::new();
        let mut start = 0usize;
        loop {
            let rest = self.buf.get(start..).unwrap_or_default();
            let (Some(&ty), Some(&a), Some(&b), Some(&c)) =
                (rest.first(), rest.get(1), rest.get(2), rest.get(3))
            else {
                break;
            };
            let len = ((a as usize) << 16) | ((b as usize) << 8) | c as usize;
            if len > MAX_HANDSHAKE {
                self.buf.clear();
                return Err(format!(
                    "handshake message type {ty} announces {len} bytes, over the {MAX_HANDSHAKE}-byte bound"
                ));
            }
            match rest.get(4..4 + len) {
                Some(body) => {
                    msgs.push((ty, body.to_vec()));
                    start += 4 + len;
                }
                None => break,
            }
        }
        self.buf.drain(..start.min(self.buf.len()));
        Ok(msgs)
    }

    /// Forgets any partial message (when the direction turns encrypted).
    pub(crate) fn clear(&mut self) {
        self.buf = Vec::new();
    }
}
