//! Parser benchmarks (divan): the sans-IO SMTP and TLS observers, each next
//! to a reference that touches the same bytes in the same run.
//!
//! ```sh
//! cargo bench --bench parsers
//! ```
//!
//! Every workload reports bytes/s. The inputs are built before timing starts
//! (session transcripts constructed here, the committed TLS fixtures, an
//! in-memory rustls handshake); `check()` runs first and asserts that each
//! observer really follows its workload to the end (no desync, the expected
//! events), so no row measures an observer that gave up early.
//!
//! References:
//! - SMTP: `line_scan`, a std-only scan for line ends over the same chunks
//!   (the least any line-oriented parser must do), and `memcpy`, a copy of the
//!   same chunks into a buffer (the floor for touching the bytes at all).
//! - TLS: `tls_parser`, the `tls-parser` crate framing each direction's stream
//!   with `parse_tls_raw_record` and decoding the cleartext handshake and alert
//!   records (`parse_tls_record_with_header`, hello extensions), and `memcpy`.
//!
//! Results and how to read them: docs/performance.md.

use std::sync::{Arc, LazyLock};

use divan::counter::BytesCount;
use divan::{black_box, Bencher};
use smtptap::event::Side;
use smtptap::smtp::{SmtpEvent, SmtpLimits, SmtpObserver};
use smtptap::tls::{TlsEvent, TlsObserver};

fn main() {
    check();
    divan::main();
}

/// One relayed read: who sent it and the bytes.
type Transcript = Vec<(Side, Vec<u8>)>;

/// Chunk sizes: one Ethernet-MSS segment, and the relay's read buffer.
const CHUNKS: [usize; 2] = [1460, 16 * 1024];

fn total(t: &Transcript) -> usize {
    t.iter().map(|(_, b)| b.len()).sum()
}

/// Cuts every segment into reads of at most `chunk` bytes (segments never
/// share a read, as when each side waits for the other).
fn chunked(segments: &[(Side, Vec<u8>)], chunk: usize) -> Transcript {
    segments
        .iter()
        .flat_map(|(side, bytes)| bytes.chunks(chunk).map(|c| (*side, c.to_vec())))
        .collect()
}

// ---------------------------------------------------------------- SMTP inputs

const BANNER: &[u8] =
    b"220 EX01.contoso.com Microsoft ESMTP MAIL Service ready at Mon, 23 Nov 2026 21:07:14 +0000\r\n";
const EHLO: &[u8] = b"EHLO mail.fabrikam.com\r\n";
const EHLO_REPLY: &[u8] = b"250-EX01.contoso.com Hello [203.0.113.25]\r\n\
250-SIZE 37748736\r\n\
250-PIPELINING\r\n\
250-DSN\r\n\
250-ENHANCEDSTATUSCODES\r\n\
250-STARTTLS\r\n\
250-X-ANONYMOUSTLS\r\n\
250-AUTH NTLM\r\n\
250-X-EXPS GSSAPI NTLM\r\n\
250-8BITMIME\r\n\
250-BINARYMIME\r\n\
250-CHUNKING\r\n\
250 XRDST\r\n";
const ENVELOPE: &[u8] = b"MAIL FROM:<news@fabrikam.com> SIZE=70000\r\n\
RCPT TO:<ann@contoso.com>\r\n\
RCPT TO:<bob@contoso.com>\r\n\
RCPT TO:<carol@contoso.com>\r\n\
DATA\r\n";
const ENVELOPE_REPLIES: &[u8] = b"250 2.1.0 Sender OK\r\n\
250 2.1.5 Recipient OK\r\n\
250 2.1.5 Recipient OK\r\n\
250 2.1.5 Recipient OK\r\n\
354 Start mail input; end with <CRLF>.<CRLF>\r\n";
const QUEUED: &[u8] =
    b"250 2.6.0 <1234@mail.fabrikam.com> [InternalId=1234, Hostname=EX01.contoso.com] Queued mail for delivery\r\n";
const QUIT: &[u8] = b"QUIT\r\n";
const BYE: &[u8] = b"221 2.0.0 Service closing transmission channel\r\n";

/// A DATA body of at least `size` bytes as sent on the wire: headers, then
/// 74-byte text lines, every 40th one dot-stuffed, then `.\r\n`.
fn body(size: usize) -> Vec<u8> {
    let mut b = Vec::with_capacity(size + 128);
    b.extend_from_slice(
        b"From: news@fabrikam.com\r\n\
To: ann@contoso.com, bob@contoso.com, carol@contoso.com\r\n\
Subject: monthly report\r\n\
Date: Mon, 23 Nov 2026 21:07:15 +0000\r\n\
Message-ID: <1234@mail.fabrikam.com>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=utf-8\r\n\r\n",
    );
    let text = b"The quick brown fox jumps over the lazy dog, then files its monthly report";
    let mut n = 0usize;
    while b.len() < size {
        if n % 40 == 39 {
            b.extend_from_slice(b".."); // a line that started with '.', stuffed
        }
        let rot = n % text.len();
        b.extend_from_slice(text.get(rot..).unwrap_or_default());
        b.extend_from_slice(text.get(..rot).unwrap_or_default());
        b.extend_from_slice(b"\r\n");
        n += 1;
    }
    b.extend_from_slice(b".\r\n");
    b
}

/// Banner, EHLO and its multi-line reply, a pipelined MAIL/RCPT×3/DATA and
/// their replies: everything before the body.
fn smtp_preamble() -> Vec<(Side, Vec<u8>)> {
    vec![
        (Side::Server, BANNER.to_vec()),
        (Side::Client, EHLO.to_vec()),
        (Side::Server, EHLO_REPLY.to_vec()),
        (Side::Client, ENVELOPE.to_vec()),
        (Side::Server, ENVELOPE_REPLIES.to_vec()),
    ]
}

/// A full session with a 64 KiB body, as segments (one per turn).
static SESSION: LazyLock<Vec<(Side, Vec<u8>)>> = LazyLock::new(|| {
    let mut s = smtp_preamble();
    s.push((Side::Client, body(64 * 1024)));
    s.push((Side::Server, QUEUED.to_vec()));
    s.push((Side::Client, QUIT.to_vec()));
    s.push((Side::Server, BYE.to_vec()));
    s
});

/// A 1 MiB DATA body (terminator included), for an observer already past the 354.
static BODY_1MIB: LazyLock<Vec<u8>> = LazyLock::new(|| body(1 << 20));

/// Transactions in the command-heavy session.
const TRANSACTIONS: usize = 200;

/// Banner, EHLO, then 200 small transactions without pipelining (RSET, MAIL,
/// two RCPTs, DATA, a 3-line body, NOOP), each command and each reply its
/// own read; QUIT.
static COMMANDS: LazyLock<Transcript> = LazyLock::new(|| {
    let mut t: Transcript = vec![
        (Side::Server, BANNER.to_vec()),
        (Side::Client, EHLO.to_vec()),
        (Side::Server, EHLO_REPLY.to_vec()),
    ];
    for i in 0..TRANSACTIONS {
        let mail = format!("MAIL FROM:<alert{i}@monitor.fabrikam.com>\r\n");
        let steps: [(&[u8], &[u8]); 7] = [
            (b"RSET\r\n", b"250 2.0.0 Resetting\r\n"),
            (mail.as_bytes(), b"250 2.1.0 Sender OK\r\n"),
            (
                b"RCPT TO:<ops@contoso.com>\r\n",
                b"250 2.1.5 Recipient OK\r\n",
            ),
            (
                b"RCPT TO:<oncall@contoso.com>\r\n",
                b"250 2.1.5 Recipient OK\r\n",
            ),
            (
                b"DATA\r\n",
                b"354 Start mail input; end with <CRLF>.<CRLF>\r\n",
            ),
            (
                b"Subject: disk 93% on db02\r\n\r\ncheck /var\r\n.\r\n",
                b"250 2.6.0 Queued mail for delivery\r\n",
            ),
            (b"NOOP\r\n", b"250 2.0.0 OK\r\n"),
        ];
        for (c, s) in steps {
            t.push((Side::Client, c.to_vec()));
            t.push((Side::Server, s.to_vec()));
        }
    }
    t.push((Side::Client, QUIT.to_vec()));
    t.push((Side::Server, BYE.to_vec()));
    t
});

fn smtp_observe(t: &Transcript) -> (SmtpObserver, Vec<SmtpEvent>) {
    let mut o = SmtpObserver::new(SmtpLimits::default());
    let mut out = Vec::new();
    let mut marks = Vec::new();
    for (side, bytes) in t {
        o.feed(*side, bytes, &mut out, &mut marks);
        marks.clear();
    }
    (o, out)
}

/// An observer that has seen everything up to the 354 (setup, not timed).
fn smtp_in_body() -> SmtpObserver {
    smtp_observe(&smtp_preamble()).0
}

/// Reference: counts line ends with a std scan (`iter().position`).
fn line_scan(chunks: &[&[u8]]) -> usize {
    let mut lines = 0;
    for chunk in chunks {
        let mut rest = black_box(*chunk);
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            lines += 1;
            rest = rest.get(i + 1..).unwrap_or_default();
        }
    }
    lines
}

/// Reference: copies every chunk into one buffer (the memcpy floor).
fn copy_all(chunks: &[&[u8]], dst: &mut [u8]) {
    for chunk in chunks {
        let chunk = black_box(*chunk);
        if let Some(d) = dst.get_mut(..chunk.len()) {
            d.copy_from_slice(chunk);
        }
        black_box(&mut *dst);
    }
}

fn slices(t: &Transcript) -> Vec<&[u8]> {
    t.iter().map(|(_, b)| b.as_slice()).collect()
}

fn max_chunk(chunks: &[&[u8]]) -> usize {
    chunks.iter().map(|c| c.len()).max().unwrap_or(0)
}

/// Full session: banner, EHLO + 13-line reply, pipelined MAIL/RCPT×3/DATA,
/// 64 KiB dot-stuffed body, QUIT; `chunk` = read size.
mod smtp_session_64k {
    use super::*;

    #[divan::bench(args = CHUNKS)]
    fn observer(bencher: Bencher, chunk: usize) {
        let t = chunked(&SESSION, chunk);
        bencher
            .counter(BytesCount::new(total(&t)))
            .bench(|| smtp_observe(black_box(&t)));
    }

    #[divan::bench(args = CHUNKS)]
    fn ref_line_scan(bencher: Bencher, chunk: usize) {
        let t = chunked(&SESSION, chunk);
        let c = slices(&t);
        bencher
            .counter(BytesCount::new(total(&t)))
            .bench(|| line_scan(&c));
    }

    #[divan::bench(args = CHUNKS)]
    fn ref_memcpy(bencher: Bencher, chunk: usize) {
        let t = chunked(&SESSION, chunk);
        let c = slices(&t);
        let mut dst = vec![0u8; max_chunk(&c)];
        bencher
            .counter(BytesCount::new(total(&t)))
            .bench_local(|| copy_all(&c, &mut dst));
    }
}

/// A 1 MiB DATA body (observer already past the 354); `chunk` = read size.
mod smtp_data_body_1m {
    use super::*;

    #[divan::bench(args = CHUNKS)]
    fn observer(bencher: Bencher, chunk: usize) {
        let c: Vec<&[u8]> = BODY_1MIB.chunks(chunk).collect();
        bencher
            .with_inputs(smtp_in_body)
            .input_counter(|_| BytesCount::of_slice(&*BODY_1MIB))
            .bench_local_values(|mut o| {
                let mut out = Vec::new();
                let mut marks = Vec::new();
                for part in &c {
                    o.feed(Side::Client, black_box(part), &mut out, &mut marks);
                    marks.clear();
                }
                (o, out)
            });
    }

    #[divan::bench(args = CHUNKS)]
    fn ref_line_scan(bencher: Bencher, chunk: usize) {
        let c: Vec<&[u8]> = BODY_1MIB.chunks(chunk).collect();
        bencher
            .counter(BytesCount::of_slice(&*BODY_1MIB))
            .bench(|| line_scan(&c));
    }

    #[divan::bench(args = CHUNKS)]
    fn ref_memcpy(bencher: Bencher, chunk: usize) {
        let c: Vec<&[u8]> = BODY_1MIB.chunks(chunk).collect();
        let mut dst = vec![0u8; chunk];
        bencher
            .counter(BytesCount::of_slice(&*BODY_1MIB))
            .bench_local(|| copy_all(&c, &mut dst));
    }
}

/// 200 unpipelined transactions (6 commands, a 4-line body, 7 replies
/// each): each read is one short line, body or reply.
mod smtp_commands_200tx {
    use super::*;

    #[divan::bench]
    fn observer(bencher: Bencher) {
        bencher
            .counter(BytesCount::new(total(&COMMANDS)))
            .bench(|| smtp_observe(black_box(&COMMANDS)));
    }

    #[divan::bench]
    fn ref_line_scan(bencher: Bencher) {
        let c = slices(&COMMANDS);
        bencher
            .counter(BytesCount::new(total(&COMMANDS)))
            .bench(|| line_scan(&c));
    }

    #[divan::bench]
    fn ref_memcpy(bencher: Bencher) {
        let c = slices(&COMMANDS);
        let mut dst = vec![0u8; max_chunk(&c)];
        bencher
            .counter(BytesCount::new(total(&COMMANDS)))
            .bench_local(|| copy_all(&c, &mut dst));
    }
}

// ----------------------------------------------------------------- TLS inputs

/// Reads a fixture written by `src/tls/fixtures/record_relay.py`.
fn hex_fixture(text: &str) -> Transcript {
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(side, hex)| {
            let side = if side == "c" {
                Side::Client
            } else {
                Side::Server
            };
            let bytes = hex
                .as_bytes()
                .chunks(2)
                .filter_map(|p| std::str::from_utf8(p).ok())
                .filter_map(|p| u8::from_str_radix(p, 16).ok())
                .collect();
            (side, bytes)
        })
        .collect()
}

/// OpenSSL TLS 1.2, DHE-RSA-AES128-GCM-SHA256, certificate in cleartext.
static TLS12: LazyLock<Transcript> =
    LazyLock::new(|| hex_fixture(include_str!("../src/tls/fixtures/openssl-tls12-dhe.hex")));

/// Zeek's TLS 1.3 capture with a HelloRetryRequest (two ClientHellos).
static TLS13_HRR: LazyLock<Transcript> =
    LazyLock::new(|| hex_fixture(include_str!("../src/tls/fixtures/zeek-hrr.hex")));

/// A rustls TLS 1.3 handshake in memory (CA + leaf chain, as the TLS unit
/// tests make), then one EHLO and its reply so the observer sees it established.
static TLS13: LazyLock<Transcript> = LazyLock::new(rustls_tls13);

fn rustls_tls13() -> Transcript {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
    use std::io::{Read, Write};

    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "smtptap bench CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["mx.example".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));

    let mut roots = RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let v13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
    let scfg = ServerConfig::builder_with_provider(smtptap::crypto::shared())
        .with_protocol_versions(v13)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone(), ca.der().clone()], key)
        .unwrap();
    let ccfg = ClientConfig::builder_with_provider(smtptap::crypto::shared())
        .with_protocol_versions(v13)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut c = ClientConnection::new(Arc::new(ccfg), "mx.example".try_into().unwrap()).unwrap();
    let mut s = ServerConnection::new(Arc::new(scfg)).unwrap();

    fn pump(c: &mut ClientConnection, s: &mut ServerConnection, t: &mut Transcript) {
        loop {
            let mut moved = false;
            while c.wants_write() {
                let mut buf = Vec::new();
                c.write_tls(&mut buf).unwrap();
                let mut rd = &buf[..];
                while !rd.is_empty() {
                    s.read_tls(&mut rd).unwrap();
                }
                s.process_new_packets().unwrap();
                t.push((Side::Client, buf));
                moved = true;
            }
            while s.wants_write() {
                let mut buf = Vec::new();
                s.write_tls(&mut buf).unwrap();
                let mut rd = &buf[..];
                while !rd.is_empty() {
                    c.read_tls(&mut rd).unwrap();
                }
                c.process_new_packets().unwrap();
                t.push((Side::Server, buf));
                moved = true;
            }
            if !moved {
                return;
            }
        }
    }

    let mut t = Transcript::new();
    pump(&mut c, &mut s, &mut t);
    c.writer().write_all(b"EHLO client.example\r\n").unwrap();
    pump(&mut c, &mut s, &mut t);
    let mut buf = [0u8; 64];
    let n = s.reader().read(&mut buf).unwrap();
    assert_eq!(buf.get(..n), Some(&b"EHLO client.example\r\n"[..]));
    s.writer().write_all(b"250 mx.example\r\n").unwrap();
    pump(&mut c, &mut s, &mut t);
    t
}

/// 1 MiB of application data as 64 TLS 1.3 records of 16 KiB plaintext
/// (16,401 bytes of ciphertext each: content type and 16-byte tag added),
/// pseudo-random bytes, client to server.
static BULK: LazyLock<Vec<u8>> = LazyLock::new(|| {
    const BODY: usize = 16384 + 1 + 16;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut v = Vec::with_capacity(64 * (5 + BODY));
    for _ in 0..64 {
        v.extend_from_slice(&[23, 3, 3]);
        v.extend_from_slice(&(BODY as u16).to_be_bytes());
        for _ in 0..BODY {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.push(x as u8);
        }
    }
    v
});

fn tls_observe(t: &Transcript) -> (TlsObserver, Vec<TlsEvent>) {
    let mut o = TlsObserver::new();
    let mut out = Vec::new();
    for (side, bytes) in t {
        o.feed(*side, bytes, &mut out);
    }
    (o, out)
}

/// Each direction's bytes concatenated (client, server): what the reference
/// parses, so it never has to reassemble a record split across reads.
fn directions(t: &Transcript) -> (Vec<u8>, Vec<u8>) {
    let (mut c, mut s) = (Vec::new(), Vec::new());
    for (side, bytes) in t {
        match side {
            Side::Client => c.extend_from_slice(bytes),
            Side::Server => s.extend_from_slice(bytes),
        }
    }
    (c, s)
}

/// Reference: `tls-parser` frames the stream, decodes handshake and alert
/// records and the hello extensions; returns messages + extensions seen.
/// Encrypted handshake records (TLS 1.2 Finished) fail to decode, cheaply.
fn tls_parser_walk(stream: &[u8]) -> usize {
    use tls_parser::{
        parse_tls_client_hello_extensions, parse_tls_raw_record, parse_tls_record_with_header,
        parse_tls_server_hello_extensions, TlsMessage, TlsMessageHandshake, TlsRecordType,
    };
    let mut seen = 0;
    let mut rest = stream;
    while let Ok((tail, rec)) = parse_tls_raw_record(rest) {
        rest = tail;
        seen += 1;
        if rec.hdr.record_type != TlsRecordType::Handshake
            && rec.hdr.record_type != TlsRecordType::Alert
        {
            continue;
        }
        let Ok((_, msgs)) = parse_tls_record_with_header(rec.data, &rec.hdr) else {
            continue;
        };
        for m in &msgs {
            seen += 1;
            let ext = match m {
                TlsMessage::Handshake(TlsMessageHandshake::ClientHello(ch)) => {
                    parse_tls_client_hello_extensions(ch.ext.unwrap_or_default())
                }
                TlsMessage::Handshake(TlsMessageHandshake::ServerHello(sh)) => {
                    parse_tls_server_hello_extensions(sh.ext.unwrap_or_default())
                }
                _ => continue,
            };
            if let Ok((_, e)) = ext {
                seen += e.len();
            }
        }
        black_box(&msgs);
    }
    seen
}

fn tls_workload(name: &str) -> &'static Transcript {
    match name {
        "tls12" => &TLS12,
        "tls13" => &TLS13,
        _ => &TLS13_HRR,
    }
}

const TLS_HANDSHAKES: [&str; 3] = ["tls12", "tls13", "tls13_hrr"];

/// Whole recorded connections: handshake, then the first SMTP exchange
/// inside TLS (the observer is done once established).
mod tls_handshake {
    use super::*;

    #[divan::bench(args = TLS_HANDSHAKES)]
    fn observer(bencher: Bencher, which: &str) {
        let t = tls_workload(which);
        bencher
            .counter(BytesCount::new(total(t)))
            .bench(|| tls_observe(black_box(t)));
    }

    #[divan::bench(args = TLS_HANDSHAKES)]
    fn ref_tls_parser(bencher: Bencher, which: &str) {
        let t = tls_workload(which);
        let (c, s) = directions(t);
        bencher
            .counter(BytesCount::new(total(t)))
            .bench(|| tls_parser_walk(black_box(&c)) + tls_parser_walk(black_box(&s)));
    }

    #[divan::bench(args = TLS_HANDSHAKES)]
    fn ref_memcpy(bencher: Bencher, which: &str) {
        let t = tls_workload(which);
        let c = slices(t);
        let mut dst = vec![0u8; max_chunk(&c)];
        bencher
            .counter(BytesCount::new(total(t)))
            .bench_local(|| copy_all(&c, &mut dst));
    }
}

/// 1 MiB of 16 KiB application-data records after an established TLS 1.3
/// handshake, read 16 KiB at a time (reads do not line up with records).
mod tls_bulk_1m {
    use super::*;

    const READ: usize = 16 * 1024;

    #[divan::bench]
    fn observer(bencher: Bencher) {
        let c: Vec<&[u8]> = BULK.chunks(READ).collect();
        bencher
            .with_inputs(|| tls_observe(&TLS13).0)
            .input_counter(|_| BytesCount::of_slice(&*BULK))
            .bench_local_values(|mut o| {
                let mut out = Vec::new();
                for part in &c {
                    o.feed(Side::Client, black_box(part), &mut out);
                }
                (o, out)
            });
    }

    #[divan::bench]
    fn ref_tls_parser(bencher: Bencher) {
        bencher
            .counter(BytesCount::of_slice(&*BULK))
            .bench(|| tls_parser_walk(black_box(&BULK)));
    }

    #[divan::bench]
    fn ref_memcpy(bencher: Bencher) {
        let c: Vec<&[u8]> = BULK.chunks(READ).collect();
        let mut dst = vec![0u8; READ];
        bencher
            .counter(BytesCount::of_slice(&*BULK))
            .bench_local(|| copy_all(&c, &mut dst));
    }
}

// ---------------------------------------------------------------- the check

/// Asserts that every observer workload is followed to its end, so the
/// timings measure real parsing (a desynced observer ignores its input).
fn check() {
    // The session core follows the one-message session to its summary, with
    // the message accepted and the events any log line is made of.
    let evs = analyze_session(&SMALL_SESSION);
    let names: Vec<&str> = evs.iter().map(|e| e.name()).collect();
    assert_eq!(names.last(), Some(&"session.summary"), "{names:?}");
    let json: Vec<String> = evs
        .iter()
        .filter_map(|e| serde_json::to_string(e).ok())
        .collect();
    assert!(
        json.iter()
            .any(|l| l.contains("\"smtp.message\"") && l.contains("\"accepted\":true")),
        "no accepted message: {names:?}"
    );
    assert!(evs.len() >= 15, "only {} events: {names:?}", evs.len());
    // The frame writer turns 1 MiB into at least one 1460-byte segment per
    // MSS, each with its headers and block framing.
    let written = pcapng_writer_1m::write_all(&BULK);
    assert!(
        written > BULK.len() + BULK.len() / 1460 * (54 + 32),
        "pcapng writer wrote only {written} bytes"
    );
    let data = |ev: &[SmtpEvent]| {
        ev.iter()
            .filter_map(|e| match e {
                SmtpEvent::Data { bytes, .. } => Some(*bytes),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let no_desync = |ev: &[SmtpEvent]| !ev.iter().any(|e| matches!(e, SmtpEvent::Desync { .. }));

    let session_body = SESSION
        .iter()
        .find(|(_, b)| b.len() > 60_000)
        .map_or(0, |(_, b)| b.len() as u64 - 3);
    for chunk in CHUNKS {
        let (o, ev) = smtp_observe(&chunked(&SESSION, chunk));
        assert!(
            no_desync(&ev) && !o.is_desynced(),
            "session desynced: {ev:?}"
        );
        assert_eq!(data(&ev), vec![session_body], "session body");
        assert!(matches!(
            ev.last(),
            Some(SmtpEvent::Reply { code: 221, .. })
        ));

        let mut o = smtp_in_body();
        let (mut out, mut marks) = (Vec::new(), Vec::new());
        for part in BODY_1MIB.chunks(chunk) {
            o.feed(Side::Client, part, &mut out, &mut marks);
        }
        assert_eq!(data(&out), vec![BODY_1MIB.len() as u64 - 3], "1 MiB body");
    }
    let (o, ev) = smtp_observe(&COMMANDS);
    assert!(no_desync(&ev) && !o.is_desynced(), "commands desynced");
    assert_eq!(
        data(&ev).len(),
        TRANSACTIONS,
        "commands: one body per transaction"
    );

    let records = |stream: &[u8]| {
        let mut rest = stream;
        let mut n = 0;
        while let Ok((tail, _)) = tls_parser::parse_tls_raw_record(rest) {
            rest = tail;
            n += 1;
        }
        assert!(rest.is_empty(), "trailing bytes");
        n
    };
    for which in TLS_HANDSHAKES {
        let (o, ev) = tls_observe(tls_workload(which));
        assert!(!o.is_desynced(), "{which} desynced: {ev:?}");
        let (c, s) = directions(tls_workload(which));
        let st = o.stats();
        assert_eq!(st.client.records, records(&c), "{which}: client records");
        assert_eq!(st.server.records, records(&s), "{which}: server records");
        let established = ev.iter().any(|e| matches!(e, TlsEvent::Established { .. }));
        // the OpenSSL 1.2 fixture closes (encrypted alerts) before any
        // application data, so it never counts as established
        assert_eq!(established, which != "tls12", "{which}: {ev:?}");
        assert!(
            tls_parser_walk(&c) > 1 && tls_parser_walk(&s) > 1,
            "{which}"
        );
    }
    let mut o = tls_observe(&TLS13).0;
    let before = o.stats().client.records;
    let mut out = Vec::new();
    for part in BULK.chunks(16 * 1024) {
        o.feed(Side::Client, part, &mut out);
    }
    assert!(!o.is_desynced() && out.is_empty(), "bulk: {out:?}");
    assert_eq!(o.stats().client.records - before, 64, "bulk records");
    assert_eq!(tls_parser_walk(&BULK), 64, "bulk records (tls-parser)");
}

/// The capture's frame writer: 1 MiB of one side's bytes, read 16 KiB at a
/// time, synthesized into TCP/IP/Ethernet frames (`capture::flow::TcpFlow`)
/// and written as pcapng Enhanced Packet Blocks (`capture::pcapng`) into
/// memory (the disk is the writer thread's business, not measured here).
/// Reference: copying the same bytes into a buffer of the output's size.
mod pcapng_writer_1m {
    use super::*;
    use smtptap::capture::{flow::TcpFlow, pcapng};
    use smtptap::event::Timestamp;

    const READ: usize = 16 * 1024;

    pub(super) fn write_all(data: &[u8]) -> usize {
        let ts = Timestamp(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_764_000_000));
        let mut flow = TcpFlow::new(
            "192.0.2.10:51514".parse().unwrap(),
            "192.0.2.25:25".parse().unwrap(),
            7,
        );
        let mut ng = pcapng::start(Vec::with_capacity(data.len() * 11 / 10), &["proxy"]).unwrap();
        let mut frames = Vec::new();
        flow.handshake(ts, &mut frames);
        for part in data.chunks(READ) {
            flow.data(Side::Client, ts, part, &mut frames);
            for f in frames.drain(..) {
                pcapng::write_packet(&mut ng, 0, f.ts, &f.data, &[]).unwrap();
            }
        }
        ng.into_inner().len()
    }

    #[divan::bench]
    fn writer(bencher: Bencher) {
        bencher
            .counter(BytesCount::of_slice(&*BULK))
            .bench_local(|| write_all(black_box(&BULK)));
    }

    #[divan::bench]
    fn ref_memcpy(bencher: Bencher) {
        let out_len = write_all(&BULK);
        let c: Vec<&[u8]> = BULK.chunks(READ).collect();
        let mut dst = vec![0u8; out_len];
        bencher
            .counter(BytesCount::of_slice(&*BULK))
            .bench_local(|| {
                let mut at = 0;
                for part in &c {
                    dst[at..at + part.len()].copy_from_slice(black_box(part));
                    at += part.len();
                }
                at
            });
    }
}

// ----------------------------------------------------------------- the session core

/// One session as smtp-source sends it in workload (a) of `scripts/bench`
/// (banner, EHLO, MAIL, RCPT, DATA, a 10 KiB body, QUIT), one read per turn.
static SMALL_SESSION: LazyLock<Transcript> = LazyLock::new(|| {
    vec![
        (Side::Server, b"220 sink.example ESMTP\r\n".to_vec()),
        (Side::Client, b"EHLO source.example\r\n".to_vec()),
        (
            Side::Server,
            b"250-sink.example\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE\r\n".to_vec(),
        ),
        (Side::Client, b"MAIL FROM:<a@source.example>\r\n".to_vec()),
        (Side::Server, b"250 2.1.0 Ok\r\n".to_vec()),
        (Side::Client, b"RCPT TO:<b@sink.example>\r\n".to_vec()),
        (Side::Server, b"250 2.1.5 Ok\r\n".to_vec()),
        (Side::Client, b"DATA\r\n".to_vec()),
        (
            Side::Server,
            b"354 End data with <CR><LF>.<CR><LF>\r\n".to_vec(),
        ),
        (Side::Client, body(10 * 1024)),
        (Side::Server, b"250 2.0.0 Ok: queued as 1234\r\n".to_vec()),
        (Side::Client, QUIT.to_vec()),
        (Side::Server, BYE.to_vec()),
    ]
});

static SESSION_SHARED: LazyLock<Arc<smtptap::session::Analysis>> = LazyLock::new(|| {
    let text = "listen = [\"127.0.0.1:2525\"]\nupstream = \"sink.example:25\"\n";
    let cfg = smtptap::config::RawConfig::from_toml(text, "bench.toml")
        .and_then(|r| r.resolve("bench.toml"))
        .unwrap_or_else(|e| panic!("bench config: {e}"));
    Arc::new(smtptap::session::Analysis::bare(
        smtptap::event::RunId::from("rbench"),
        cfg,
    ))
});

/// The whole session through the session core, as the proxy's analysis
/// drives it (the events taken after every read); returns the events.
fn analyze_session(t: &Transcript) -> Vec<smtptap::event::Event> {
    use smtptap::event::{Leg, Timestamp};
    use smtptap::session::{DirEnd, Ends, SessionAnalyzer, SessionInfo};
    use std::time::{Duration, UNIX_EPOCH};
    let at = |ms: u64| Timestamp(UNIX_EPOCH + Duration::from_millis(1_800_000_000_000 + ms));
    let info = SessionInfo {
        id: 7,
        client: std::net::SocketAddr::from(([192, 0, 2, 7], 40000)),
        listener: std::net::SocketAddr::from(([127, 0, 0, 1], 2525)),
        upstream: smtptap::config::Upstream {
            host: "sink.example".into(),
            port: 25,
        },
        opened: at(0),
        implicit_tls: false,
    };
    let mut a = SessionAnalyzer::new(info, SESSION_SHARED.clone());
    let mut events = Vec::new();
    a.upstream_connected(
        at(0),
        std::net::SocketAddr::from(([192, 0, 2, 25], 25)),
        std::net::SocketAddr::from(([192, 0, 2, 10], 51514)),
        0.001,
    );
    for (i, (side, b)) in t.iter().enumerate() {
        a.bytes(Leg::EndToEnd, *side, at(i as u64), b);
        events.append(&mut a.take_events());
    }
    let ends = Ends {
        client_end: DirEnd::Fin,
        server_end: DirEnd::Fin,
        client_bytes: 0,
        server_bytes: 0,
    };
    a.close(at(t.len() as u64), ends, None);
    events.append(&mut a.take_events());
    events
}

/// A one-message session (workload (a)'s): what smtptap does per session in
/// user space besides relaying. Time per iteration = time per session.
mod session_core_one_message {
    use super::*;

    /// Session core: the observers, the kept events, the diagnosis, the summary.
    #[divan::bench]
    fn analyzer(bencher: Bencher) {
        bencher
            .counter(BytesCount::new(total(&SMALL_SESSION)))
            .bench(|| analyze_session(black_box(&SMALL_SESSION)));
    }

    /// The same, then every event as a JSON line (what the `--log` sink does).
    #[divan::bench]
    fn analyzer_and_json(bencher: Bencher) {
        let mut line = Vec::with_capacity(4096);
        bencher
            .counter(BytesCount::new(total(&SMALL_SESSION)))
            .bench_local(|| {
                let events = analyze_session(black_box(&SMALL_SESSION));
                for ev in &events {
                    line.clear();
                    let _ = serde_json::to_writer(&mut line, ev);
                    line.push(b'\n');
                    black_box(&line);
                }
                events.len()
            });
    }

    /// JSON lines only, of the events of one session made beforehand.
    #[divan::bench]
    fn json_only(bencher: Bencher) {
        let events = analyze_session(&SMALL_SESSION);
        let mut line = Vec::with_capacity(4096);
        bencher
            .counter(BytesCount::new(total(&SMALL_SESSION)))
            .bench_local(|| {
                for ev in &events {
                    line.clear();
                    let _ = serde_json::to_writer(&mut line, black_box(ev));
                    line.push(b'\n');
                }
                line.len()
            });
    }

    /// Reference: the SMTP observer alone over the same reads.
    #[divan::bench]
    fn ref_smtp_observer(bencher: Bencher) {
        bencher
            .counter(BytesCount::new(total(&SMALL_SESSION)))
            .bench(|| smtp_observe(black_box(&SMALL_SESSION)));
    }

    /// Reference: a copy of the same reads (the floor for touching the bytes).
    #[divan::bench]
    fn ref_memcpy(bencher: Bencher) {
        let c = slices(&SMALL_SESSION);
        let mut dst = vec![0u8; max_chunk(&c)];
        bencher
            .counter(BytesCount::new(total(&SMALL_SESSION)))
            .bench_local(|| copy_all(&c, &mut dst));
    }
}
