//! The sans-IO TLS observer: fed the bytes of both directions after STARTTLS
//! (or from the first byte for implicit TLS), it reports the handshake as
//! [`TlsEvent`]s: ClientHello (with JA3/JA4), ServerHello or
//! HelloRetryRequest, certificates (visible up to TLS 1.2), key exchange,
//! alerts, and when encrypted traffic is established. After that it reads
//! only record headers, until the client's first command (one record in a
//! healthy session), to tell a client that left right after the handshake
//! ([`TlsObserver::client_gave_up`], asked by the session core at close).
//!
//! It owns TLS record framing, handshake reassembly and the meaning of the
//! cleartext handshake. It must not touch sockets, block, alter bytes or
//! decrypt anything; on bytes it cannot follow it emits one `tls.desync` and
//! goes quiet. Memory is bounded: one record per direction and one handshake
//! message of at most 1 MiB per direction.
//!
//! ```text
//!  feed(side, bytes) ─▶ record::RecordReader (per side) ─▶ record
//!        ┌──────────────────────────────┬──────────────┬──────────┐
//!   handshake (22)                 CCS (20)        alert (21)  app data (23)
//!        ▼                              │              │          │
//!  HandshakeAssembler ─▶ hello.rs       ▼              ▼          ▼
//!  ClientHello ─▶ ja.rs          side encrypted    tls.alert   establishment
//!        └──────────────▶ TlsEvent ◀───────────────────────────────┘
//! ```

pub(crate) mod hello;
mod ja;
pub mod names;
mod record;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};
use tls_parser::{TlsCipherKx, TlsCipherSuite};

use crate::event::Side;
use hello::ClientHello;
use names::{group_name, suite_name, version_name};
use record::{HandshakeAssembler, RecordReader, Unit};

pub use record::{MAX_HANDSHAKE, MAX_RECORD};

/// Facts about a TLS handshake seen on the wire.
///
/// `tls.established` rule: TLS ≤ 1.2: both sides sent ChangeCipherSpec and
/// then an encrypted handshake record (their Finished), and then an
/// application-data record flowed from either side. TLS 1.3: after the
/// ServerHello, the server sent encrypted records (its flight), then the client
/// sent an encrypted record (its Finished), and then the server sent another
/// encrypted record (a session ticket or an application-data reply), which it
/// only does once it has accepted the client's Finished.
///
/// Other rules worth knowing when reading a log:
/// - In TLS 1.3 a ChangeCipherSpec is a compatibility no-op and is not
///   reported; encrypted alerts there travel in application-data records, so an
///   encrypted record of exactly 19 bytes (2 + 1 + 16-byte tag) during the
///   handshake is reported as a likely `tls.alert` with `encrypted: true` and a
///   `note`, and does not count towards `tls.established`.
/// - Bytes that are not TLS are described once enough context has arrived (up
///   to a line end, or 32 bytes), so the `tls.desync` reason is the same
///   however the stream was split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event")]
pub enum TlsEvent {
    /// The client's ClientHello (boxed: it is by far the largest event).
    #[serde(rename = "tls.client_hello")]
    ClientHello(Box<ClientHelloInfo>),
    /// The server's ServerHello.
    #[serde(rename = "tls.server_hello")]
    ServerHello {
        /// Negotiated version (supported_versions extension if present).
        version: String,
        /// The hello's legacy version field.
        legacy_version: String,
        /// The chosen cipher suite.
        cipher_suite: String,
        /// Key-share group (TLS 1.3).
        group: Option<String>,
        /// The chosen ALPN protocol.
        alpn: Option<String>,
        /// Extension numbers in the server's order.
        extensions: Vec<u16>,
        /// The session is resumed (TLS ≤ 1.2: a non-empty ClientHello session id
        /// echoed; TLS 1.3: pre_shared_key accepted).
        resumed: bool,
    },
    /// A TLS 1.3 HelloRetryRequest: the server wants another ClientHello.
    #[serde(rename = "tls.hello_retry_request")]
    HelloRetryRequest {
        /// Version selected.
        version: String,
        /// Cipher suite selected.
        cipher_suite: String,
        /// The group the server asks a key share for.
        group: Option<String>,
    },
    /// A Certificate message seen in cleartext (TLS ≤ 1.2).
    #[serde(rename = "tls.certificate")]
    Certificate {
        /// Who sent it (server chain, or a client certificate).
        side: Side,
        /// Number of certificates.
        count: usize,
        /// Total DER bytes.
        bytes: usize,
        /// The DER certificates as sent, leaf first (not serialized).
        #[serde(skip)]
        ders: Vec<Vec<u8>>,
    },
    /// TLS 1.3 was negotiated: the certificate cannot be seen passively.
    #[serde(rename = "tls.certificate_hidden")]
    CertificateHidden {
        /// The negotiated version.
        version: String,
        /// Plain-words explanation.
        note: String,
    },
    /// The server asked the client for a certificate (TLS ≤ 1.2).
    #[serde(rename = "tls.certificate_request")]
    CertificateRequest {
        /// The negotiated version.
        version: String,
        /// Accepted certificate types.
        cert_types: Vec<String>,
        /// Accepted signature algorithms (TLS 1.2).
        signature_algorithms: Vec<String>,
        /// Number of acceptable CA names listed.
        ca_names: usize,
    },
    /// The server's key exchange parameters (TLS ≤ 1.2).
    #[serde(rename = "tls.server_key_exchange")]
    ServerKeyExchange {
        /// Key exchange kind (`ECDHE`, `DHE`, …).
        kind: String,
        /// The ECDHE group.
        group: Option<String>,
        /// The DHE prime's size in bits.
        dh_bits: Option<u32>,
    },
    /// A ChangeCipherSpec (TLS ≤ 1.2): that side encrypts from now on.
    #[serde(rename = "tls.change_cipher_spec")]
    ChangeCipherSpec {
        /// Who sent it.
        side: Side,
    },
    /// A TLS alert.
    #[serde(rename = "tls.alert")]
    Alert {
        /// Who sent it.
        side: Side,
        /// `warning`, `fatal` or `unknown`.
        level: String,
        /// RFC name (`handshake_failure`, `unknown_ca`, …) or `encrypted`.
        description: String,
        /// The description code (0 when encrypted).
        code: u8,
        /// Sent after encryption started: level and description are not visible.
        encrypted: bool,
        /// Extra explanation when the alert is inferred.
        #[serde(default)]
        note: Option<String>,
    },
    /// Both sides switched to encrypted traffic and it flowed (rule in the enum doc).
    #[serde(rename = "tls.established")]
    Established {
        /// Negotiated version.
        version: String,
        /// Negotiated cipher suite.
        cipher_suite: String,
    },
    /// The handshake completed, then the client closed without sending an
    /// SMTP command over TLS (nothing, or one record too short for more than
    /// `QUIT`): most likely it did not accept the server's certificate. Rule
    /// in [`TlsObserver::client_gave_up`]; emitted by the session core at
    /// close.
    #[serde(rename = "tls.client_gave_up")]
    ClientGaveUp {
        /// Negotiated version.
        version: String,
        /// Negotiated cipher suite.
        cipher_suite: String,
        /// What the client sent after the handshake: `nothing`, or `quit`
        /// (one application-data record with room for no more than the 6
        /// bytes of `QUIT<CRLF>`; its content is encrypted, so another bare
        /// 4-letter command such as `NOOP` cannot be told apart).
        sent: String,
        /// The size of that record's body, when `sent` is `quit`.
        record_bytes: Option<usize>,
        /// The client also sent an alert after the handshake (encrypted:
        /// close_notify or a failure, its reason not visible).
        alert: bool,
        /// Plain-words explanation.
        note: String,
    },
    /// The observer could not follow the stream and stopped.
    #[serde(rename = "tls.desync")]
    Desync {
        /// The direction that confused it.
        side: Side,
        /// What was wrong, in plain words.
        reason: String,
        /// Byte offset in that direction's TLS stream.
        offset: u64,
    },
}

impl TlsEvent {
    /// The dotted event name, as in the JSON `event` field.
    pub fn name(&self) -> &'static str {
        #[allow(unreachable_patterns)]
        match self {
            TlsEvent::ClientHello { .. } => "tls.client_hello",
            TlsEvent::ServerHello { .. } => "tls.server_hello",
            TlsEvent::HelloRetryRequest { .. } => "tls.hello_retry_request",
            TlsEvent::Certificate { .. } => "tls.certificate",
            TlsEvent::CertificateHidden { .. } => "tls.certificate_hidden",
            TlsEvent::CertificateRequest { .. } => "tls.certificate_request",
            TlsEvent::ServerKeyExchange { .. } => "tls.server_key_exchange",
            TlsEvent::ChangeCipherSpec { .. } => "tls.change_cipher_spec",
            TlsEvent::Alert { .. } => "tls.alert",
            TlsEvent::Established { .. } => "tls.established",
            TlsEvent::ClientGaveUp { .. } => "tls.client_gave_up",
            TlsEvent::Desync { .. } => "tls.desync",
        }
    }
}

/// The facts of one ClientHello (the `tls.client_hello` event).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientHelloInfo {
    /// Version in the record header carrying the hello (`SSLv2` for the old format).
    pub record_version: String,
    /// The hello's own (legacy) version field.
    pub legacy_version: String,
    /// The supported_versions extension, in order (GREASE shown as `GREASE`).
    pub supported_versions: Vec<String>,
    /// The highest version offered, considering supported_versions.
    pub max_version: String,
    /// Cipher suites by IANA name, in the client's order.
    pub cipher_suites: Vec<String>,
    /// Server Name Indication: the host name the client asked for.
    pub sni: Option<String>,
    /// ALPN protocols offered.
    pub alpn: Vec<String>,
    /// supported_groups, by name.
    pub supported_groups: Vec<String>,
    /// signature_algorithms, by name.
    pub signature_algorithms: Vec<String>,
    /// Groups with a key share in the hello (TLS 1.3).
    pub key_share_groups: Vec<String>,
    /// ec_point_formats (numbers).
    pub ec_point_formats: Vec<u8>,
    /// The session_ticket extension is present.
    pub session_ticket: bool,
    /// The pre_shared_key extension is present (TLS 1.3 resumption attempt).
    pub psk: bool,
    /// The early_data extension is present (0-RTT).
    pub early_data: bool,
    /// Extension numbers in the client's order (GREASE included).
    pub extensions: Vec<u16>,
    /// The hello used the old SSLv2-compatible record format.
    pub sslv2_format: bool,
    /// JA3 fingerprint (md5 hex of `ja3_string`).
    pub ja3: String,
    /// The JA3 input string.
    pub ja3_string: String,
    /// JA4 fingerprint.
    pub ja4: String,
}

impl ClientHelloInfo {
    /// The offered cipher suites in words, one spelling for every place that
    /// shows the count (console, diagnosis): the real suites counted, and
    /// what the list holds besides them said after the count, never silently
    /// dropped: `30 cipher suites (+ TLS_EMPTY_RENEGOTIATION_INFO_SCSV
    /// signalling value, + 1 GREASE value)`. Signalling values (RFC 5746's
    /// renegotiation SCSV, RFC 7507's fallback SCSV) and GREASE (RFC 8701)
    /// are not suites a server can choose.
    pub fn suites_in_words(&self) -> String {
        let mut suites = 0usize;
        let mut signalling: Vec<&str> = Vec::new();
        let mut grease = 0usize;
        for s in &self.cipher_suites {
            if s == "GREASE" {
                grease += 1;
            } else if s.ends_with("_SCSV") {
                if !signalling.contains(&s.as_str()) {
                    signalling.push(s);
                }
            } else {
                suites += 1;
            }
        }
        let mut extra: Vec<String> = Vec::new();
        match signalling.len() {
            0 => {}
            1 => extra.push(format!("+ {} signalling value", signalling[0])),
            _ => extra.push(format!("+ {} signalling values", signalling.join(" and "))),
        }
        match grease {
            0 => {}
            1 => extra.push("+ 1 GREASE value".into()),
            n => extra.push(format!("+ {n} GREASE values")),
        }
        let noun = if suites == 1 {
            "cipher suite"
        } else {
            "cipher suites"
        };
        if extra.is_empty() {
            format!("{suites} {noun}")
        } else {
            format!("{suites} {noun} ({})", extra.join(", "))
        }
    }
}

/// Record and byte counts of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SideStats {
    /// Bytes fed.
    pub bytes: u64,
    /// Complete records framed.
    pub records: u64,
    /// Of those, records that were encrypted (not parsed).
    pub encrypted_records: u64,
}

/// Per-direction counters, for a session summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TlsStats {
    /// Client → server.
    pub client: SideStats,
    /// Server → client.
    pub server: SideStats,
}

#[derive(Debug, Default)]
struct SideState {
    reader: RecordReader,
    hs: HandshakeAssembler,
    /// Records of this side are encrypted (after its CCS, or after a TLS 1.3 ServerHello).
    encrypted: bool,
    /// TLS ≤ 1.2: sent ChangeCipherSpec.
    ccs: bool,
    /// TLS ≤ 1.2: sent an encrypted handshake record (Finished) after its CCS.
    finished: bool,
    stats: SideStats,
}

/// The sans-IO TLS observer of one connection (both directions).
#[derive(Debug, Default)]
pub struct TlsObserver {
    client: SideState,
    server: SideState,
    desynced: bool,
    established: bool,
    /// TLS 1.3 is in play (HelloRetryRequest or 1.3 ServerHello): CCS is a no-op.
    tls13: bool,
    /// The ClientHello's session id (resumption detection in TLS ≤ 1.2).
    client_session_id: Vec<u8>,
    /// Negotiated version and suite from the ServerHello.
    version: Option<u16>,
    cipher: Option<u16>,
    /// TLS 1.3: the server sent its encrypted flight.
    t13_server_flight: bool,
    /// TLS 1.3: the client sent an encrypted record after the server's flight.
    t13_client_finished: bool,
    /// What the client sent after its side of the handshake.
    after: ClientAfterHandshake,
    /// Handshake messages seen so far: ClientHello, ServerHello (not HRR),
    /// HelloRetryRequest, Certificate from the client, from the server. A
    /// handshake has at most one of each (two ClientHellos around an HRR);
    /// more is not a handshake this observer can follow, and each would
    /// otherwise be one more large event kept for the session.
    seen: [u8; 5],
}

/// A key exchange kind as the suite names spell it (not the Debug text).
fn kx_name(kx: TlsCipherKx) -> &'static str {
    match kx {
        TlsCipherKx::Null => "NULL",
        TlsCipherKx::Psk => "PSK",
        TlsCipherKx::Krb5 => "KRB5",
        TlsCipherKx::Srp => "SRP",
        TlsCipherKx::Rsa => "RSA",
        TlsCipherKx::Dh => "DH",
        TlsCipherKx::Dhe => "DHE",
        TlsCipherKx::Ecdh => "ECDH",
        TlsCipherKx::Ecdhe => "ECDHE",
        TlsCipherKx::Aecdh => "ECDH_anon",
        TlsCipherKx::Eccpwd => "ECCPWD",
        TlsCipherKx::Tls13 => "TLS 1.3",
    }
}

/// Size of a TLS 1.3 encrypted alert record body: 2 bytes + content type + 16-byte tag.
const TLS13_ALERT_RECORD: usize = 2 + 1 + 16;

/// The text of `QUIT<CRLF>`: the longest client record after the handshake
/// that still counts as "no command" ([`TlsObserver::client_gave_up`]). An
/// `EHLO` with a name is longer (`EHLO a<CRLF>` is 8 bytes).
pub const QUIT_TEXT: usize = 6;

/// What the client sent after its side of the handshake was complete (TLS
/// ≤ 1.2: both sides' Finished; TLS 1.3: the client's Finished after the
/// server's flight), counted from the record headers only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientAfterHandshake {
    /// Application-data records from the client after the handshake (TLS
    /// 1.3: not counting records exactly the size of an alert).
    pub records: u32,
    /// The body size of the first of them.
    pub first_len: usize,
    /// The most text the first of them can hold: its body less the suite's
    /// fixed overhead (nonce, tag, TLS 1.3 content type), when that overhead
    /// is fixed (AEAD suites; not CBC, whose padding varies).
    pub first_text_max: Option<usize>,
    /// The client sent an alert after the handshake (TLS ≤ 1.2: an encrypted
    /// alert record; TLS 1.3: a record exactly the size of one).
    pub alert: bool,
    /// The server sent an alert after the handshake before the client sent
    /// anything: the server ended it, not the client.
    pub server_alert_first: bool,
}

impl ClientAfterHandshake {
    /// The client sent nothing, or one record no longer than `QUIT<CRLF>`.
    fn no_command(&self) -> bool {
        self.records == 0
            || (self.records == 1 && self.first_text_max.is_some_and(|m| m <= QUIT_TEXT))
    }
}

impl TlsObserver {
    /// A fresh observer, expecting a ClientHello from the client.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed bytes sent by `side` (in relay order, causally interleaved);
    /// events are appended to `out`.
    pub fn feed(&mut self, side: Side, data: &[u8], out: &mut Vec<TlsEvent>) {
        self.state_mut(side).stats.bytes += data.len() as u64;
        let mut rest = data;
        while !self.desynced && !rest.is_empty() {
            let allow_sslv2 = side == Side::Client;
            let unit = self.state_mut(side).reader.next(&mut rest, allow_sslv2);
            match unit {
                None => break,
                Some(Err((reason, offset))) => self.desync(side, reason, offset, out),
                Some(Ok(u)) => {
                    self.on_unit(side, &u, out);
                    self.state_mut(side).reader.recycle(u.into_raw());
                }
            }
        }
    }

    /// True once the observer stopped on bytes it could not follow.
    pub fn is_desynced(&self) -> bool {
        self.desynced
    }

    /// True once nothing more of interest can be seen (established and
    /// reported, and the client sent more than a `QUIT` after the handshake;
    /// or desynced): the caller may stop feeding. Between the establishment
    /// and the client's first command the observer only frames records (a
    /// record or two in a healthy session).
    pub fn is_done(&self) -> bool {
        self.desynced || (self.established && !self.after.no_command())
    }

    /// What the client sent after its side of the handshake, when that side
    /// is complete (TLS ≤ 1.2: both sides' Finished; TLS 1.3: the client's
    /// Finished after the server's flight).
    pub fn client_after_handshake(&self) -> Option<ClientAfterHandshake> {
        self.handshake_complete().then_some(self.after)
    }

    fn handshake_complete(&self) -> bool {
        if self.tls13 {
            self.t13_client_finished
        } else {
            self.client.finished && self.server.finished
        }
    }

    /// The `tls.client_gave_up` rule, asked when the connection has ended
    /// (`client_closed_first`: the client's FIN came before the server's, or
    /// the client reset the connection). The handshake completed, the
    /// observer followed it to the end, and after it the client sent either
    /// nothing — then it must have ended the session itself (its alert, or
    /// its FIN first), and the server must not have sent an alert first —
    /// or exactly one application-data record with room for no more than
    /// `QUIT<CRLF>` (6 bytes once the suite's fixed overhead is taken off;
    /// with a CBC suite that size is unknown and this case is not judged).
    ///
    /// Why this shape: a client that does not accept the certificate learns
    /// it when its handshake completes, and then either closes at once
    /// (`openssl s_client`: close_notify and FIN) or says `QUIT` over TLS
    /// (Postfix at `verify`: one 6-byte record, then close_notify). A client
    /// that goes on sends `EHLO name` first, which is longer. In TLS 1.3 the
    /// client's Finished is itself an encrypted record and is not counted;
    /// a client certificate flight would be, so such sessions are not
    /// judged (never a false finding, only a missed one).
    pub fn client_gave_up(&self, client_closed_first: bool) -> Option<TlsEvent> {
        let a = self.client_after_handshake()?;
        if self.desynced || !a.no_command() {
            return None;
        }
        let quit = a.records == 1;
        if !quit && (a.server_alert_first || !(a.alert || client_closed_first)) {
            return None;
        }
        let note = if quit {
            format!(
                "after the handshake the client sent one encrypted record of {} bytes (room for \
                 at most {} bytes of text: a QUIT, or another bare 4-letter command; an EHLO \
                 with a name is longer) and closed: it left without an EHLO",
                a.first_len,
                a.first_text_max.unwrap_or_default()
            )
        } else {
            format!(
                "after the handshake the client sent no command and closed{}",
                if a.alert {
                    ", with an encrypted alert (close_notify or a failure; the reason is not visible)"
                } else {
                    ""
                }
            )
        };
        Some(TlsEvent::ClientGaveUp {
            version: self.version_str(),
            cipher_suite: self.cipher.map(suite_name).unwrap_or_default(),
            sent: if quit { "quit" } else { "nothing" }.into(),
            record_bytes: quit.then_some(a.first_len),
            alert: a.alert,
            note,
        })
    }

    /// The most text an application-data record of `len` body bytes can
    /// hold under the negotiated suite, when its overhead is fixed.
    fn text_max(&self, len: usize) -> Option<usize> {
        let id = self.cipher?;
        let overhead = if self.tls13 {
            // AEAD tag + the inner content type; TLS_AES_128_CCM_8_SHA256 has an 8-byte tag.
            if id == 0x1305 {
                8 + 1
            } else {
                16 + 1
            }
        } else {
            let suite = TlsCipherSuite::from_id(id)?;
            match (suite.enc, suite.enc_mode) {
                (tls_parser::TlsCipherEnc::Chacha20_Poly1305, _) => 16,
                // 8-byte explicit nonce + tag (CCM_8: 8-byte tag).
                (_, tls_parser::TlsCipherEncMode::Gcm) => 8 + 16,
                (_, tls_parser::TlsCipherEncMode::Ccm) if suite.name.ends_with("_8") => 8 + 8,
                (_, tls_parser::TlsCipherEncMode::Ccm) => 8 + 16,
                _ => return None,
            }
        };
        Some(len.saturating_sub(overhead))
    }

    /// A client application-data record after the handshake.
    fn client_record_after_handshake(&mut self, len: usize) {
        let text_max = self.text_max(len);
        let a = &mut self.after;
        if a.records == 0 {
            a.first_len = len;
            a.first_text_max = text_max;
        }
        a.records = a.records.saturating_add(1);
    }

    /// An alert (or an alert-sized TLS 1.3 record) from `side`, after the handshake.
    fn alert_after_handshake(&mut self, side: Side) {
        if !self.handshake_complete() {
            return;
        }
        let a = &mut self.after;
        match side {
            Side::Client => a.alert = true,
            Side::Server if a.records == 0 && !a.alert => a.server_alert_first = true,
            Side::Server => {}
        }
    }

    /// Per-direction record and byte counts so far.
    pub fn stats(&self) -> TlsStats {
        TlsStats {
            client: self.client.stats,
            server: self.server.stats,
        }
    }

    fn state_mut(&mut self, side: Side) -> &mut SideState {
        match side {
            Side::Client => &mut self.client,
            Side::Server => &mut self.server,
        }
    }

    fn desync(&mut self, side: Side, reason: String, offset: u64, out: &mut Vec<TlsEvent>) {
        if !self.desynced {
            self.desynced = true;
            self.client.hs.clear();
            self.server.hs.clear();
            out.push(TlsEvent::Desync {
                side,
                reason,
                offset,
            });
        }
    }

    fn version_str(&self) -> String {
        self.version
            .map(version_name)
            .unwrap_or_else(|| "unknown".into())
    }

    fn on_unit(&mut self, side: Side, unit: &Unit, out: &mut Vec<TlsEvent>) {
        self.state_mut(side).stats.records += 1;
        match unit {
            Unit::Sslv2Hello { offset, .. } => match hello::parse_sslv2_client_hello(unit.body()) {
                Ok(ch) => self.on_client_hello(ch, "SSLv2".into(), out),
                Err(e) => self.desync(side, e, *offset, out),
            },
            Unit::Record {
                ctype,
                version,
                offset,
                ..
            } => self.on_record(side, *ctype, *version, unit.body(), *offset, out),
        }
    }

    fn on_record(
        &mut self,
        side: Side,
        ctype: u8,
        version: u16,
        body: &[u8],
        offset: u64,
        out: &mut Vec<TlsEvent>,
    ) {
        let encrypted = self.state_mut(side).encrypted;
        match ctype {
            20 => {
                if self.tls13 {
                    return; // middlebox-compatibility CCS: meaningless in TLS 1.3
                }
                let st = self.state_mut(side);
                st.ccs = true;
                st.encrypted = true;
                st.hs.clear();
                out.push(TlsEvent::ChangeCipherSpec { side });
            }
            21 => {
                // TLS 1.3 wraps encrypted alerts in application-data records, so an
                // alert record there is always cleartext.
                if encrypted && !self.tls13 {
                    self.state_mut(side).stats.encrypted_records += 1;
                    self.alert_after_handshake(side);
                    out.push(TlsEvent::Alert {
                        side,
                        level: "unknown".into(),
                        description: "encrypted".into(),
                        code: 0,
                        encrypted: true,
                        note: None,
                    });
                    return;
                }
                if body.len() < 2 || body.len() % 2 != 0 {
                    let reason = format!("alert record of {} bytes (expected 2)", body.len());
                    return self.desync(side, reason, offset, out);
                }
                for a in body.chunks_exact(2) {
                    out.push(TlsEvent::Alert {
                        side,
                        level: names::alert_level_name(a[0]).into(),
                        description: names::alert_name(a[1]),
                        code: a[1],
                        encrypted: false,
                        note: None,
                    });
                }
            }
            22 => {
                if encrypted {
                    let st = self.state_mut(side);
                    st.stats.encrypted_records += 1;
                    if st.ccs {
                        st.finished = true;
                    }
                    return;
                }
                let msgs = match self.state_mut(side).hs.push(body) {
                    Ok(m) => m,
                    Err(e) => return self.desync(side, e, offset, out),
                };
                for (ty, msg) in msgs {
                    if let Err(e) = self.on_handshake(side, ty, &msg, version, out) {
                        return self.desync(side, e, offset, out);
                    }
                    if self.state_mut(side).encrypted {
                        break; // TLS 1.3 ServerHello: what follows is encrypted
                    }
                }
            }
            23 => self.on_app_data(side, body.len(), out),
            _ => {} // heartbeat (24): counted only
        }
    }

    fn on_app_data(&mut self, side: Side, len: usize, out: &mut Vec<TlsEvent>) {
        self.state_mut(side).stats.encrypted_records += 1;
        if self.version.is_none() {
            return; // 0-RTT data before the ServerHello
        }
        self.count_after_handshake(side, len);
        if self.established {
            return;
        }
        if self.tls13 {
            if len == TLS13_ALERT_RECORD {
                out.push(TlsEvent::Alert {
                    side,
                    level: "unknown".into(),
                    description: "encrypted".into(),
                    code: 0,
                    encrypted: true,
                    note: Some(
                        "an encrypted TLS 1.3 record exactly the size of an alert (19 bytes): \
                         most likely an alert; its level and reason are not visible"
                            .into(),
                    ),
                });
                return;
            }
            match side {
                Side::Server if self.t13_client_finished => self.establish(out),
                Side::Server => self.t13_server_flight = true,
                Side::Client if self.t13_server_flight => self.t13_client_finished = true,
                Side::Client => {}
            }
        } else if self.client.finished && self.server.finished {
            self.establish(out);
        }
    }

    /// Counts an application-data record for [`ClientAfterHandshake`]
    /// (before the establishment rule reads it: in TLS 1.3 the record that
    /// completes the client's side is its Finished, not counted).
    fn count_after_handshake(&mut self, side: Side, len: usize) {
        if !self.handshake_complete() {
            return;
        }
        if self.tls13 && len == TLS13_ALERT_RECORD {
            self.alert_after_handshake(side);
        } else if side == Side::Client {
            self.client_record_after_handshake(len);
        }
    }

    fn establish(&mut self, out: &mut Vec<TlsEvent>) {
        self.established = true;
        out.push(TlsEvent::Established {
            version: self.version_str(),
            cipher_suite: self.cipher.map(suite_name).unwrap_or_default(),
        });
    }

    fn on_client_hello(
        &mut self,
        ch: ClientHello,
        record_version: String,
        out: &mut Vec<TlsEvent>,
    ) {
        let (ja3_string, ja3) = ja::ja3(&ch);
        let ja4 = ja::ja4(&ch);
        let cipher_suites = if ch.sslv2 {
            ch.sslv2_specs
                .iter()
                .map(|s| names::sslv2_spec_name(*s))
                .collect()
        } else {
            ch.ciphers.iter().map(|c| suite_name(*c)).collect()
        };
        self.client_session_id = ch.session_id.clone();
        out.push(TlsEvent::ClientHello(Box::new(ClientHelloInfo {
            record_version,
            legacy_version: version_name(ch.legacy_version),
            supported_versions: ch
                .supported_versions
                .iter()
                .map(|v| version_name(*v))
                .collect(),
            max_version: version_name(ja::max_version(&ch)),
            cipher_suites,
            sni: ch.sni.clone(),
            alpn: ch
                .alpn
                .iter()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect(),
            supported_groups: ch.groups.iter().map(|g| group_name(*g)).collect(),
            signature_algorithms: ch.sigalgs.iter().map(|s| names::sigalg_name(*s)).collect(),
            key_share_groups: ch.key_share_groups.iter().map(|g| group_name(*g)).collect(),
            ec_point_formats: ch.point_formats.clone(),
            session_ticket: ch.session_ticket,
            psk: ch.psk,
            early_data: ch.early_data,
            extensions: ch.extensions.clone(),
            sslv2_format: ch.sslv2,
            ja3,
            ja3_string,
            ja4,
        })));
    }

    fn on_handshake(
        &mut self,
        side: Side,
        ty: u8,
        body: &[u8],
        record_version: u16,
        out: &mut Vec<TlsEvent>,
    ) -> Result<(), String> {
        let slot = match (side, ty) {
            (Side::Client, 1) => Some((0, 1 + self.seen[2], "ClientHello")),
            (_, 11) => Some((if side == Side::Client { 3 } else { 4 }, 1, "Certificate")),
            _ => None,
        };
        if let Some((i, max, what)) = slot {
            if self.seen[i] >= max {
                return Err(format!(
                    "a second {what} from the {side} in one handshake (renegotiation in the clear or garbage): not followed"
                ));
            }
            self.seen[i] += 1;
        }
        match (side, ty) {
            (Side::Client, 1) => {
                let ch = hello::parse_client_hello(body)?;
                self.on_client_hello(ch, version_name(record_version), out);
            }
            (Side::Server, 2) => {
                let sh = hello::parse_server_hello(body)?;
                let v = sh.version();
                let i = if sh.is_hrr { 2 } else { 1 };
                if self.seen[i] >= 1 {
                    return Err(format!(
                        "a second {} from the server in one handshake: not followed",
                        if sh.is_hrr {
                            "HelloRetryRequest"
                        } else {
                            "ServerHello"
                        }
                    ));
                }
                self.seen[i] += 1;
                if sh.is_hrr {
                    self.tls13 = true;
                    out.push(TlsEvent::HelloRetryRequest {
                        version: version_name(v),
                        cipher_suite: suite_name(sh.cipher),
                        group: sh.key_share_group.map(group_name),
                    });
                    return Ok(());
                }
                let is13 = v == 0x0304 || (v & 0xff00) == 0x7f00;
                self.version = Some(v);
                self.cipher = Some(sh.cipher);
                let resumed = if is13 {
                    sh.psk
                } else {
                    !sh.session_id.is_empty() && sh.session_id == self.client_session_id
                };
                out.push(TlsEvent::ServerHello {
                    version: version_name(v),
                    legacy_version: version_name(sh.legacy_version),
                    cipher_suite: suite_name(sh.cipher),
                    group: sh.key_share_group.map(group_name),
                    alpn: sh.alpn.map(|p| String::from_utf8_lossy(&p).into_owned()),
                    extensions: sh.extensions,
                    resumed,
                });
                if is13 {
                    self.tls13 = true;
                    for st in [&mut self.client, &mut self.server] {
                        st.encrypted = true;
                        st.hs.clear();
                    }
                    out.push(TlsEvent::CertificateHidden {
                        version: version_name(v),
                        note: "TLS 1.3 was negotiated: everything after the ServerHello, \
                               including the server's certificate, is encrypted and cannot be \
                               seen by a passive observer"
                            .into(),
                    });
                }
            }
            (_, 11) => {
                let ders = hello::parse_certificate_list(body)?;
                out.push(TlsEvent::Certificate {
                    side,
                    count: ders.len(),
                    bytes: ders.iter().map(Vec::len).sum(),
                    ders,
                });
            }
            (Side::Server, 12) => {
                let kx = self.cipher.and_then(TlsCipherSuite::from_id).map(|s| s.kx);
                let (kind, ke) = match kx {
                    Some(TlsCipherKx::Ecdhe) => ("ECDHE".to_string(), hello::parse_ske_ecdhe(body)),
                    Some(TlsCipherKx::Dhe) => ("DHE".to_string(), hello::parse_ske_dhe(body)),
                    Some(other) => (kx_name(other).to_string(), Default::default()),
                    None => ("unknown".to_string(), Default::default()),
                };
                out.push(TlsEvent::ServerKeyExchange {
                    kind,
                    group: ke.group.map(group_name),
                    dh_bits: ke.dh_bits,
                });
            }
            (Side::Server, 13) => {
                let v = self.version.unwrap_or(record_version);
                let cr = hello::parse_cert_request(body, v >= 0x0303)?;
                out.push(TlsEvent::CertificateRequest {
                    version: version_name(v),
                    cert_types: cr
                        .cert_types
                        .iter()
                        .map(|t| names::cert_type_name(*t))
                        .collect(),
                    signature_algorithms: cr
                        .sigalgs
                        .iter()
                        .map(|s| names::sigalg_name(*s))
                        .collect(),
                    ca_names: cr.ca_names,
                });
            }
            _ => {} // other messages carry nothing smtptap reports
        }
        Ok(())
    }
}
