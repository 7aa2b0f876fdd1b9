//! Integration test of `smtptap::capture`: a synthetic SMTP session with
//! STARTTLS, a real TLS 1.2 handshake made in memory by rustls and a 1 MiB
//! payload is written through the public API, then dissected by tshark.
//!
//! Needs tshark: `DEBIAN_FRONTEND=noninteractive apt-get install -y tshark`.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

mod common;

use common::{frame_comments, temp_dir, tshark};
use smtptap::capture::{
    Capture, CaptureConfig, CaptureEvent, CaptureSection, CloseKind, FlowInfo, Legs,
};
use smtptap::event::{EventKind, Side, Timestamp};

fn ts(ms: u64) -> Timestamp {
    Timestamp(UNIX_EPOCH + Duration::from_millis(1_795_900_000_000 + ms))
}

/// The conversation, in relay order: (who sent it, bytes).
fn conversation() -> Vec<(Side, Vec<u8>)> {
    let mut conv: Vec<(Side, Vec<u8>)> = vec![
        (
            Side::Server,
            b"220 mx.example.test ESMTP ready\r\n".to_vec(),
        ),
        (Side::Client, b"EHLO client.example\r\n".to_vec()),
        (
            Side::Server,
            b"250-mx.example.test\r\n250-PIPELINING\r\n250-SIZE 52428800\r\n250 STARTTLS\r\n"
                .to_vec(),
        ),
        (Side::Client, b"STARTTLS\r\n".to_vec()),
        (Side::Server, b"220 2.0.0 Ready to start TLS\r\n".to_vec()),
    ];

    // A real TLS 1.2 handshake, in memory.
    let ck = rcgen::generate_simple_self_signed(vec!["mx.example.test".to_string()]).unwrap();
    let cert = ck.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into());
    let provider = smtptap::crypto::shared();
    let server_cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let client_cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut client =
        rustls::ClientConnection::new(Arc::new(client_cfg), "mx.example.test".try_into().unwrap())
            .unwrap();
    let mut server = rustls::ServerConnection::new(Arc::new(server_cfg)).unwrap();

    // 1 MiB of application data from the client once the handshake is done.
    let payload: Vec<u8> = (0..1024 * 1024u32).map(|i| (i * 7 % 253) as u8).collect();
    let mut sent = 0;
    let mut received = Vec::new();
    for _ in 0..10_000 {
        let mut progressed = false;
        if !client.is_handshaking() && sent < payload.len() {
            // rustls buffers at most 64 KiB of plaintext at a time.
            sent += client.writer().write(&payload[sent..]).unwrap();
            progressed = true;
        }
        let mut buf = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            progressed = true;
            let mut rd = &buf[..];
            while !rd.is_empty() {
                server.read_tls(&mut rd).unwrap();
                server.process_new_packets().unwrap();
                let mut chunk = [0u8; 65536];
                while let Ok(n) = server.reader().read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    received.extend_from_slice(&chunk[..n]);
                }
            }
            conv.push((Side::Client, buf));
        }
        let mut buf = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            progressed = true;
            let mut rd = &buf[..];
            while !rd.is_empty() {
                client.read_tls(&mut rd).unwrap();
                client.process_new_packets().unwrap();
            }
            conv.push((Side::Server, buf));
        }
        if !progressed && sent == payload.len() {
            break;
        }
    }
    assert_eq!(
        received, payload,
        "the in-memory TLS session carried the payload"
    );
    conv
}

/// Writes the conversation through the public API into `path`.
fn write_capture(path: &Path, conv: &[(Side, Vec<u8>)], legs: Legs) {
    let sec = CaptureSection {
        enabled: true,
        path: path.display().to_string(),
        legs,
        ..Default::default()
    };
    let cap = Capture::start(sec.resolve("capture").unwrap()).unwrap();
    let flow = FlowInfo {
        session: 1,
        client: "10.0.0.5:49152".parse::<SocketAddr>().unwrap(),
        proxy_listen: "10.0.0.1:25".parse().unwrap(),
        proxy_upstream_local: Some("198.51.100.1:50000".parse().unwrap()),
        upstream: "192.0.2.25:25".parse().unwrap(),
        opened: ts(0),
    };
    let mut s = cap.session(flow).unwrap();
    // Relay chunks are at most 64 KiB: split big ones the way a relay would.
    let mut t = 1;
    for (side, bytes) in conv {
        for chunk in bytes.chunks(65536) {
            s.data(*side, ts(t), chunk);
            t += 1;
        }
    }
    s.end(Side::Client, ts(t), CloseKind::Fin);
    s.end(Side::Server, ts(t + 1), CloseKind::Fin);
    assert!(s.close(ts(t + 2)).is_empty());
    let stats = cap.clone().shutdown();
    assert_eq!(stats.frames_dropped, 0);
    assert_eq!(stats.errors, 0);
}

/// Parses `tshark -q -z follow,tcp,raw,N` into (client bytes, server bytes).
fn follow(path: &Path, stream: u32) -> (Vec<u8>, Vec<u8>) {
    let out = tshark(&[
        "-r",
        path.to_str().unwrap(),
        "-o",
        "tcp.reassemble_out_of_order:TRUE",
        "-q",
        "-z",
        &format!("follow,tcp,raw,{stream}"),
    ]);
    let mut client = Vec::new();
    let mut server = Vec::new();
    let mut in_data = false;
    for line in out.lines() {
        if line.starts_with("Node 1:") {
            in_data = true;
            continue;
        }
        if !in_data {
            continue;
        }
        if line.starts_with("====") {
            break;
        }
        let (dst, hex) = match line.strip_prefix('\t') {
            Some(h) => (&mut server, h),
            None => (&mut client, line),
        };
        let hex = hex.trim();
        assert!(hex.len() % 2 == 0, "odd hex line {hex:?}");
        for i in (0..hex.len()).step_by(2) {
            dst.push(u8::from_str_radix(&hex[i..i + 2], 16).unwrap());
        }
    }
    (client, server)
}

fn joined(conv: &[(Side, Vec<u8>)], side: Side) -> Vec<u8> {
    conv.iter()
        .filter(|(s, _)| *s == side)
        .flat_map(|(_, b)| b.iter().copied())
        .collect()
}

#[test]
fn tshark_dissects_smtp_starttls_tls12_and_reassembles_exact_bytes() {
    let dir = temp_dir("tshark");
    let path = dir.join("session.pcapng");
    let conv = conversation();
    write_capture(&path, &conv, Legs::ClientView);
    let p = path.to_str().unwrap();

    // SMTP commands and replies are dissected.
    let smtp = tshark(&[
        "-r",
        p,
        "-Y",
        "smtp",
        "-T",
        "fields",
        "-e",
        "smtp.command_line",
        "-e",
        "smtp.response.code",
    ]);
    // (Wireshark 4.0 cuts smtp.req.command to four letters, "STAR": use the
    // command line.) One line per SMTP PDU: command line, then reply code.
    let rows: Vec<(&str, &str)> = smtp
        .lines()
        .map(|l| l.split_once('\t').unwrap_or((l, "")))
        .collect();
    assert_eq!(
        rows,
        vec![
            ("", "220"),
            ("EHLO client.example\\r\\n", ""),
            ("", "250"),
            ("STARTTLS\\r\\n", ""),
            ("", "220"),
        ],
        "SMTP as dissected:\n{smtp}"
    );

    // The TLS handshake is dissected: ClientHello (1), ServerHello (2), Certificate (11).
    let tls = tshark(&[
        "-r",
        p,
        "-Y",
        "tls.handshake",
        "-T",
        "fields",
        "-e",
        "tls.handshake.type",
        "-e",
        "tls.handshake.certificate_length",
    ]);
    let types: Vec<String> = tls
        .lines()
        .flat_map(|l| {
            l.split('\t')
                .next()
                .unwrap_or("")
                .split(',')
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    for t in ["1", "2", "11"] {
        assert!(
            types.iter().any(|x| x == t),
            "handshake type {t} missing: {tls}"
        );
    }
    let versions = tshark(&[
        "-r",
        p,
        "-Y",
        "tls.handshake.type == 2",
        "-T",
        "fields",
        "-e",
        "tls.handshake.version",
    ]);
    assert_eq!(versions.trim(), "0x0303", "ServerHello chose TLS 1.2");

    // Real timestamps, at the right resolution (if_tsresol = 9).
    let times = tshark(&["-r", p, "-c", "4", "-T", "fields", "-e", "frame.time_epoch"]);
    let times: Vec<&str> = times.lines().collect();
    assert_eq!(
        times,
        vec![
            "1795900000.000000000",
            "1795900000.000000000",
            "1795900000.000000000",
            "1795900000.001000000"
        ]
    );

    // Every TCP and IPv4 checksum verifies.
    let all = tshark(&["-r", p, "-T", "fields", "-e", "frame.number"])
        .lines()
        .count();
    assert!(all > 700, "{all} frames");
    let good = tshark(&[
        "-r",
        p,
        "-o",
        "tcp.check_checksum:TRUE",
        "-o",
        "ip.check_checksum:TRUE",
        "-Y",
        "tcp.checksum.status == 1 && ip.checksum.status == 1",
        "-T",
        "fields",
        "-e",
        "frame.number",
    ]);
    assert_eq!(good.lines().count(), all, "frames with good checksums");

    // No malformed packets, no checksum or sequence complaints.
    let expert = tshark(&["-r", p, "-o", "tcp.check_checksum:TRUE", "-Y", "_ws.malformed || tcp.checksum.status == 0 || tcp.analysis.lost_segment || tcp.analysis.out_of_order || tcp.analysis.retransmission || tcp.analysis.ack_lost_segment || tcp.analysis.window_full"]);
    assert!(expert.trim().is_empty(), "tshark flags problems:\n{expert}");

    // Reassembled per direction: byte-identical to what each peer sent.
    let (c, s) = follow(&path, 0);
    let want_c = joined(&conv, Side::Client);
    let want_s = joined(&conv, Side::Server);
    assert!(want_c.len() > 1024 * 1024);
    assert_eq!(c.len(), want_c.len());
    assert!(c == want_c, "client bytes differ");
    assert_eq!(s.len(), want_s.len());
    assert!(s == want_s, "server bytes differ");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tshark_reads_both_legs_as_two_streams() {
    let dir = temp_dir("tshark-legs");
    let path = dir.join("legs.pcapng");
    let conv = conversation();
    write_capture(&path, &conv, Legs::Both);
    let ifaces = tshark(&[
        "-r",
        path.to_str().unwrap(),
        "-T",
        "fields",
        "-e",
        "frame.interface_name",
    ]);
    assert!(ifaces.lines().any(|l| l == "client-leg"));
    assert!(ifaces.lines().any(|l| l == "upstream-leg"));
    for stream in [0, 1] {
        let (c, s) = follow(&path, stream);
        assert!(
            c == joined(&conv, Side::Client),
            "stream {stream} client bytes differ"
        );
        assert!(
            s == joined(&conv, Side::Server),
            "stream {stream} server bytes differ"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unwritable_path_is_an_error_at_start() {
    let err = Capture::start(CaptureConfig::for_path("/proc/smtptap-cannot-write.pcapng").unwrap())
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("/proc/smtptap-cannot-write.pcapng"), "{msg}");
    let err = Capture::start(CaptureConfig::for_path("/proc/smtptap-cannot-create/").unwrap());
    assert!(err.is_err(), "a directory under /proc cannot be created");
    let mut per_session = CaptureConfig::for_path("/proc/").unwrap();
    per_session.per_session = true;
    assert!(
        Capture::start(per_session).is_err(),
        "per-session probe file in /proc"
    );
}

#[test]
fn disk_full_is_one_error_event_and_calls_return_immediately() {
    assert!(
        Path::new("/dev/full").exists(),
        "this test needs /dev/full (Linux)"
    );
    let cap = Capture::start(CaptureConfig::for_path("/dev/full").unwrap()).unwrap();
    let conv = conversation();
    let started = Instant::now();
    for id in 1..=3u64 {
        let flow = FlowInfo {
            session: id,
            client: "10.0.0.5:49152".parse().unwrap(),
            proxy_listen: "10.0.0.1:25".parse().unwrap(),
            proxy_upstream_local: None,
            upstream: "192.0.2.25:25".parse().unwrap(),
            opened: ts(0),
        };
        let mut s = cap.session(flow).unwrap();
        for (side, bytes) in &conv {
            for chunk in bytes.chunks(65536) {
                s.data(*side, ts(1), chunk);
            }
        }
        s.end(Side::Client, ts(2), CloseKind::Rst);
        s.close(ts(3));
        // Give the writer time to hit the error between sessions.
        std::thread::sleep(Duration::from_millis(50));
    }
    // ~3.3 MiB of data through the API: synthesis only, never waiting on the disk.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "API calls blocked"
    );
    let stats = cap.clone().shutdown();
    assert_eq!(stats.errors, 1);
    assert!(stats.frames_discarded > 0 || stats.frames_written > 0);
    let events = cap.take_events();
    let errors: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Capture(CaptureEvent::Error {
                path,
                error,
                detail,
            }) => Some((e.session, path, error, detail)),
            _ => None,
        })
        .collect();
    assert_eq!(errors.len(), 1, "{events:?}");
    assert_eq!(errors[0].0, 0);
    assert_eq!(errors[0].1, "/dev/full");
    assert_eq!(errors[0].2, "no_space");
    assert!(
        errors[0].3.contains("No space left on device"),
        "{}",
        errors[0].3
    );
    let json = serde_json::to_string(
        &events
            .iter()
            .find(|e| matches!(e.kind, EventKind::Capture(CaptureEvent::Error { .. })))
            .unwrap(),
    )
    .unwrap();
    assert!(json.contains("\"event\":\"capture.error\""), "{json}");
}

#[test]
fn tshark_shows_comments_for_left_out_bodies_and_truncation() {
    let dir = temp_dir("tshark-comments");
    let path = dir.join("c.pcapng");
    let sec = CaptureSection {
        enabled: true,
        path: path.display().to_string(),
        bodies: false,
        max_bytes_per_session: 200,
        ..Default::default()
    };
    let cfg = sec.resolve("capture").unwrap();
    assert!(!cfg.bodies && cfg.redact_auth);
    let cap = Capture::start(cfg).unwrap();
    let flow = FlowInfo {
        session: 7,
        client: "10.0.0.5:49152".parse().unwrap(),
        proxy_listen: "10.0.0.1:25".parse().unwrap(),
        proxy_upstream_local: None,
        upstream: "192.0.2.25:25".parse().unwrap(),
        opened: ts(0),
    };
    let mut s = cap.session(flow).unwrap();
    s.data(Side::Server, ts(1), b"220 mx ESMTP\r\n");
    s.data(Side::Client, ts(2), b"DATA\r\n");
    s.data(Side::Server, ts(3), b"354 go ahead\r\n");
    s.skip(Side::Client, ts(4), 4096);
    s.data(Side::Client, ts(5), b".\r\n");
    s.data(Side::Server, ts(6), &[b'x'; 500]);
    let ev = s.take_events();
    assert_eq!(ev, vec![CaptureEvent::Truncated { limit: 200 }]);
    s.close(ts(7));
    cap.clone().shutdown();
    let out = frame_comments(&path);
    assert!(
        out.contains("4096 bytes sent by the client before this frame are not in this capture"),
        "{out}"
    );
    assert!(out.contains("truncated at 200 payload bytes"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
