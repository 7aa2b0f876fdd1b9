//! Unit tests of the capture module: flow synthesis parsed back with
//! etherparse (checksums verified), config resolution, and the writer read
//! back with pcap-file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use etherparse::{NetHeaders, PacketHeaders, TransportHeader};
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketOption;
use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
use pcap_file::pcapng::{Block, PcapNgReader};

use super::flow::{Frame, TcpFlow, MSS_V4, MSS_V6};
use super::*;
use crate::event::{EventKind, Side, Timestamp};

fn ts(us: u64) -> Timestamp {
    Timestamp(UNIX_EPOCH + Duration::from_micros(1_795_900_000_000_000 + us))
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A parsed-back segment.
#[derive(Debug)]
struct Seg {
    src_port: u16,
    syn: bool,
    ack_flag: bool,
    fin: bool,
    rst: bool,
    psh: bool,
    seq: u32,
    ack: u32,
    payload: Vec<u8>,
    v6: bool,
}

/// Parses a frame and verifies the IPv4 header checksum and the TCP checksum.
fn parse(f: &Frame) -> Seg {
    let h = PacketHeaders::from_ethernet_slice(&f.data).unwrap();
    let Some(TransportHeader::Tcp(tcp)) = h.transport else {
        panic!("not tcp")
    };
    let payload = h.payload.slice().to_vec();
    assert_eq!(payload.len(), f.payload_len);
    let v6 = match h.net {
        Some(NetHeaders::Ipv4(ip, _)) => {
            assert_eq!(
                ip.header_checksum,
                ip.calc_header_checksum(),
                "ipv4 checksum"
            );
            assert_eq!(
                tcp.checksum,
                tcp.calc_checksum_ipv4(&ip, &payload).unwrap(),
                "tcp checksum"
            );
            assert!(ip.dont_fragment);
            assert_eq!(
                usize::from(ip.total_len),
                20 + tcp.header_len() + payload.len()
            );
            false
        }
        Some(NetHeaders::Ipv6(ip, _)) => {
            assert_eq!(
                tcp.checksum,
                tcp.calc_checksum_ipv6(&ip, &payload).unwrap(),
                "tcp checksum"
            );
            true
        }
        _ => panic!("no ip"),
    };
    Seg {
        src_port: tcp.source_port,
        syn: tcp.syn,
        ack_flag: tcp.ack,
        fin: tcp.fin,
        rst: tcp.rst,
        psh: tcp.psh,
        seq: tcp.sequence_number,
        ack: tcp.acknowledgment_number,
        payload,
        v6,
    }
}

#[test]
fn handshake_seq_ack() {
    let mut flow = TcpFlow::new(sa("10.0.0.1:40000"), sa("192.0.2.7:25"), 7);
    let mut out = Vec::new();
    flow.handshake(ts(0), &mut out);
    assert_eq!(out.len(), 3);
    let s: Vec<Seg> = out.iter().map(parse).collect();
    assert!(s[0].syn && !s[0].ack_flag && s[0].src_port == 40000);
    assert!(s[1].syn && s[1].ack_flag && s[1].src_port == 25);
    assert_eq!(s[1].ack, s[0].seq.wrapping_add(1));
    assert!(!s[2].syn && s[2].ack_flag);
    assert_eq!(s[2].seq, s[0].seq.wrapping_add(1));
    assert_eq!(s[2].ack, s[1].seq.wrapping_add(1));
    assert_eq!(flow.next_seq(Side::Client), s[2].seq);
    assert_eq!(flow.next_seq(Side::Server), s[2].ack);
    assert!(!s[0].v6);
    // SYN carries the MSS option.
    let h = PacketHeaders::from_ethernet_slice(&out[0].data).unwrap();
    let Some(TransportHeader::Tcp(tcp)) = h.transport else {
        panic!()
    };
    let mss = tcp
        .options_iterator()
        .filter_map(|o| o.ok())
        .find_map(|o| match o {
            etherparse::TcpOptionElement::MaximumSegmentSize(m) => Some(m),
            _ => None,
        });
    assert_eq!(mss, Some(1460));
}

#[test]
fn segmentation_and_ack_arithmetic() {
    let mut flow = TcpFlow::new(sa("10.0.0.1:40000"), sa("192.0.2.7:25"), 1);
    let mut out = Vec::new();
    flow.handshake(ts(0), &mut out);
    let c0 = flow.next_seq(Side::Client);
    let s0 = flow.next_seq(Side::Server);
    out.clear();
    let banner = b"220 mx.example ESMTP\r\n";
    flow.data(Side::Server, ts(10), banner, &mut out);
    assert_eq!(out.len(), 1, "small write: one segment, no pure ACK");
    let b = parse(&out[0]);
    assert_eq!((b.seq, b.ack, b.psh), (s0, c0, true));
    assert_eq!(b.payload, banner);
    out.clear();

    let body: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    flow.data(Side::Client, ts(20), &body, &mut out);
    // 1460 + 1460 + 1460 + 620, then the server's pure ACK.
    assert_eq!(out.len(), 5);
    let s: Vec<Seg> = out.iter().map(parse).collect();
    let sizes: Vec<usize> = s.iter().map(|x| x.payload.len()).collect();
    assert_eq!(sizes, vec![MSS_V4, MSS_V4, MSS_V4, 620, 0]);
    let mut expect = c0;
    for seg in &s[..4] {
        assert_eq!(seg.seq, expect);
        assert_eq!(seg.ack, s0.wrapping_add(banner.len() as u32));
        expect = expect.wrapping_add(seg.payload.len() as u32);
    }
    assert_eq!(
        s.iter().take(4).map(|x| x.psh).collect::<Vec<_>>(),
        vec![false, false, false, true]
    );
    let joined: Vec<u8> = s[..4].iter().flat_map(|x| x.payload.clone()).collect();
    assert_eq!(joined, body);
    assert_eq!(s[4].src_port, 25);
    assert_eq!(s[4].ack, c0.wrapping_add(5000));
    assert_eq!(s[4].seq, s0.wrapping_add(banner.len() as u32));
    assert!(out.iter().all(|f| f.ts == ts(20)));
}

#[test]
fn skip_advances_sequence_without_frames() {
    let mut flow = TcpFlow::new(sa("10.0.0.1:40000"), sa("192.0.2.7:25"), 2);
    let mut out = Vec::new();
    flow.handshake(ts(0), &mut out);
    let c0 = flow.next_seq(Side::Client);
    flow.skip(Side::Client, 123_456);
    out.clear();
    flow.data(Side::Client, ts(1), b".\r\n", &mut out);
    assert_eq!(parse(&out[0]).seq, c0.wrapping_add(123_456));
}

#[test]
fn sequence_numbers_wrap() {
    let mut flow = TcpFlow::new(sa("10.0.0.1:40000"), sa("192.0.2.7:25"), 3);
    let mut out = Vec::new();
    flow.handshake(ts(0), &mut out);
    let c0 = flow.next_seq(Side::Client);
    let to_wrap = u32::MAX - c0;
    flow.skip(Side::Client, to_wrap as usize);
    out.clear();
    flow.data(Side::Client, ts(1), &[b'x'; 3000], &mut out);
    let s: Vec<Seg> = out.iter().map(parse).collect();
    assert_eq!(s[0].seq, u32::MAX);
    assert_eq!(s[1].seq, 1459);
}

#[test]
fn fin_and_rst() {
    let mut flow = TcpFlow::new(sa("10.0.0.1:40000"), sa("192.0.2.7:25"), 4);
    let mut out = Vec::new();
    flow.handshake(ts(0), &mut out);
    out.clear();
    flow.data(Side::Client, ts(1), b"QUIT\r\n", &mut out);
    flow.fin(Side::Client, ts(2), &mut out);
    let s: Vec<Seg> = out.iter().map(parse).collect();
    assert_eq!(s.len(), 3);
    assert!(s[1].fin && s[1].ack_flag && s[1].src_port == 40000);
    assert_eq!(s[1].seq, s[0].seq.wrapping_add(6));
    assert_eq!(s[2].src_port, 25);
    assert_eq!(
        s[2].ack,
        s[1].seq.wrapping_add(1),
        "FIN consumes one sequence number"
    );
    // A second FIN for the same side is ignored.
    out.clear();
    flow.fin(Side::Client, ts(3), &mut out);
    assert!(out.is_empty());
    flow.rst(Side::Server, ts(4), &mut out);
    let r = parse(&out[0]);
    assert!(r.rst && r.src_port == 25);
    assert!(flow.is_reset());
    out.clear();
    flow.data(Side::Server, ts(5), b"late", &mut out);
    flow.fin(Side::Server, ts(5), &mut out);
    assert!(out.is_empty(), "nothing after RST");
}

#[test]
fn ipv6_flow_uses_1440_mss_and_valid_checksums() {
    let mut flow = TcpFlow::new(sa("[2001:db8::1]:40000"), sa("[2001:db8::25]:587"), 5);
    assert!(flow.is_ipv6());
    assert_eq!(flow.mss(), MSS_V6);
    let mut out = Vec::new();
    flow.handshake(ts(0), &mut out);
    flow.data(Side::Client, ts(1), &[7u8; 3000], &mut out);
    let s: Vec<Seg> = out.iter().map(parse).collect();
    assert!(s.iter().all(|x| x.v6));
    let sizes: Vec<usize> = s[3..].iter().map(|x| x.payload.len()).collect();
    assert_eq!(sizes, vec![1440, 1440, 120, 0]);
}

#[test]
fn mixed_families_become_mapped_ipv6_and_mapped_clients_become_ipv4() {
    let flow = TcpFlow::new(sa("[2001:db8::1]:40000"), sa("192.0.2.7:25"), 6);
    assert!(flow.is_ipv6());
    let mut f = flow.clone();
    let mut out = Vec::new();
    f.handshake(ts(0), &mut out);
    let h = PacketHeaders::from_ethernet_slice(&out[0].data).unwrap();
    let Some(NetHeaders::Ipv6(ip, _)) = h.net else {
        panic!()
    };
    assert_eq!(
        std::net::Ipv6Addr::from(ip.destination),
        "::ffff:192.0.2.7".parse::<std::net::Ipv6Addr>().unwrap()
    );
    let flow = TcpFlow::new(sa("[::ffff:10.1.2.3]:40000"), sa("192.0.2.7:25"), 6);
    assert!(!flow.is_ipv6());
}

#[test]
fn cidr_parse_and_contains() {
    // Host bits set: refused (a typo must not silently widen a filter).
    assert!(Cidr::parse("10.1.2.3/8").is_err());
    let c = Cidr::parse("10.0.0.0/8").unwrap();
    assert_eq!(c.addr, "10.0.0.0".parse::<std::net::IpAddr>().unwrap());
    assert!(c.contains("10.200.0.1".parse().unwrap()));
    assert!(c.contains("::ffff:10.9.9.9".parse().unwrap()));
    assert!(!c.contains("11.0.0.1".parse().unwrap()));
    assert!(!c.contains("2001:db8::1".parse().unwrap()));
    let c6 = Cidr::parse("2001:db8::/32").unwrap();
    assert!(c6.contains("2001:db8:ffff::1".parse().unwrap()));
    assert!(!c6.contains("2001:db9::1".parse().unwrap()));
    assert_eq!(Cidr::parse("192.0.2.1").unwrap().prefix, 32);
    assert!(Cidr::parse("0.0.0.0/0")
        .unwrap()
        .contains("8.8.8.8".parse().unwrap()));
    assert!(Cidr::parse("10.0.0.0/33").is_err());
    assert!(Cidr::parse("2001:db8::/129").is_err());
    assert!(Cidr::parse("mx.example/8").is_err());
}

#[test]
fn resolve_errors_name_the_key() {
    let s = CaptureSection {
        clients: vec!["10.0.0.0/8".into(), "10.0.0.0/33".into()],
        ..Default::default()
    };
    assert_eq!(
        s.resolve("capture").unwrap_err(),
        "capture.clients[1]: \"10.0.0.0/33\": \"33\" is not a prefix length (0-32)"
    );
    let s = CaptureSection {
        upstreams: vec!["nope".into()],
        ..Default::default()
    };
    assert_eq!(
        s.resolve("capture").unwrap_err(),
        "capture.upstreams[0]: \"nope\" is not an IP address or CIDR network (e.g. \"192.0.2.0/24\")"
    );
    let s = CaptureSection {
        ports: vec![25, 0],
        ..Default::default()
    };
    assert!(s
        .resolve("capture")
        .unwrap_err()
        .starts_with("capture.ports[1]:"));
    let s = CaptureSection {
        path: " ".into(),
        ..Default::default()
    };
    assert!(s
        .resolve("capture")
        .unwrap_err()
        .starts_with("capture.path:"));
    let s = CaptureSection {
        queue_bytes: 10,
        ..Default::default()
    };
    assert!(s
        .resolve("capture")
        .unwrap_err()
        .starts_with("capture.queue_bytes:"));
}

#[test]
fn section_parses_from_toml_with_defaults_and_rejects_unknown_keys() {
    let s: CaptureSection =
        toml::from_str("enabled = true\npath = \"cap.pcapng\"\nlegs = \"both\"\n").unwrap();
    // Bodies are left out unless asked (privacy by default).
    assert!(s.enabled && !s.bodies && s.redact_auth && !s.per_session);
    assert_eq!(s.legs, Legs::Both);
    assert_eq!(s.rotate_bytes, DEFAULT_ROTATE_BYTES);
    let c = s.resolve("capture").unwrap();
    assert_eq!(c.target, Target::File(PathBuf::from("cap.pcapng")));
    assert_eq!(c.max_bytes_per_session, None);
    assert!(toml::from_str::<CaptureSection>("enable = true").is_err());
    assert!(toml::from_str::<CaptureSection>("legs = \"server-view\"").is_err());
    let d: CaptureSection = toml::from_str("path = \"caps/\"").unwrap();
    assert_eq!(
        d.resolve("capture").unwrap().target,
        Target::Dir(PathBuf::from("caps/"))
    );
}

#[test]
fn shipped_config_part_parses() {
    // The [capture] table of the shipped config.toml (its last table).
    let full = include_str!("../../config.toml");
    let text = &full[full.find("[capture]").unwrap()..];
    #[derive(serde::Deserialize)]
    struct Top {
        capture: CaptureSection,
    }
    // Example lines (`# key = value`) replace the defaults once uncommented.
    let uncommented: String = text
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(r)
                if r.split_once(" = ").is_some_and(|(k, _)| {
                    k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                }) =>
            {
                r
            }
            _ => l,
        })
        .filter(|l| {
            !l.starts_with("clients = []")
                && !l.starts_with("upstreams = []")
                && !l.starts_with("ports = []")
        })
        .collect::<Vec<_>>()
        .join("\n");
    let top: Top = toml::from_str(text).unwrap();
    assert_eq!(top.capture, CaptureSection::default());
    // The commented examples are valid too once uncommented.
    let top: Top = toml::from_str(&uncommented).unwrap();
    let c = top.capture.resolve("capture").unwrap();
    assert_eq!(c.clients.len(), 2);
    assert_eq!(c.ports, vec![25, 587]);
}

#[test]
fn filters_select_sessions() {
    let s = CaptureSection {
        clients: vec!["10.0.0.0/8".into()],
        upstreams: vec!["192.0.2.0/24".into()],
        ports: vec![25],
        ..Default::default()
    };
    let c = s.resolve("capture").unwrap();
    let mut f = FlowInfo {
        session: 1,
        client: sa("10.1.1.1:40000"),
        proxy_listen: sa("0.0.0.0:2525"),
        proxy_upstream_local: None,
        upstream: sa("192.0.2.7:25"),
        opened: ts(0),
    };
    assert!(c.selects(&f));
    f.client = sa("172.16.0.1:40000");
    assert!(!c.selects(&f));
    f.client = sa("10.1.1.1:40000");
    f.upstream = sa("192.0.2.7:587");
    assert!(!c.selects(&f));
    f.proxy_listen = sa("0.0.0.0:25");
    assert!(c.selects(&f), "listen port matches");
    f.upstream = sa("198.51.100.1:25");
    assert!(!c.selects(&f));
}

pub(crate) fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("smtptap-capture-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

struct Read {
    ifnames: Vec<String>,
    tsresol: Vec<u8>,
    packets: Vec<(u32, Duration, Vec<u8>, Vec<String>)>,
    dsb: Vec<Vec<u8>>,
}

fn read(path: &Path) -> Read {
    let data = std::fs::read(path).unwrap();
    let mut r = PcapNgReader::new(&data[..]).unwrap();
    let mut out = Read {
        ifnames: vec![],
        tsresol: vec![],
        packets: vec![],
        dsb: vec![],
    };
    while let Some(b) = r.next_block() {
        match b.unwrap() {
            Block::InterfaceDescription(idb) => {
                for o in idb.options {
                    match o {
                        InterfaceDescriptionOption::IfName(n) => out.ifnames.push(n.to_string()),
                        InterfaceDescriptionOption::IfTsResol(t) => out.tsresol.push(t),
                        _ => {}
                    }
                }
            }
            Block::EnhancedPacket(p) => {
                let comments = p
                    .options
                    .iter()
                    .filter_map(|o| match o {
                        EnhancedPacketOption::Comment(c) => Some(c.to_string()),
                        _ => None,
                    })
                    .collect();
                out.packets
                    .push((p.interface_id, p.timestamp, p.data.to_vec(), comments));
            }
            Block::Unknown(u) if u.type_ == pcapng::DSB_TYPE => out.dsb.push(u.value.to_vec()),
            _ => {}
        }
    }
    out
}

/// Packets in a file that may be in the middle of a write: counts the
/// complete blocks, stops at the first partial one (an empty or half-written
/// file is 0 packets, not an error).
fn complete_packets(path: &Path) -> usize {
    let Ok(data) = std::fs::read(path) else {
        return 0;
    };
    let Ok(mut r) = PcapNgReader::new(&data[..]) else {
        return 0;
    };
    let mut n = 0;
    while let Some(Ok(b)) = r.next_block() {
        if matches!(b, Block::EnhancedPacket(_)) {
            n += 1;
        }
    }
    n
}

fn payload_len(frame: &[u8]) -> usize {
    PacketHeaders::from_ethernet_slice(frame)
        .unwrap()
        .payload
        .slice()
        .len()
}

fn flow_info(session: u64) -> FlowInfo {
    FlowInfo {
        session,
        client: sa("10.0.0.1:40000"),
        proxy_listen: sa("10.0.0.254:25"),
        proxy_upstream_local: Some(sa("198.51.100.9:51000")),
        upstream: sa("192.0.2.7:25"),
        opened: ts(0),
    }
}

fn file_events(events: &[Event]) -> Vec<(u64, String, String)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Capture(CaptureEvent::File { path, reason }) => {
                Some((e.session, path.clone(), reason.clone()))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn writes_one_file_per_run_with_timestamps_and_tsresol() {
    let dir = temp_dir("run");
    let path = dir.join("run.pcapng");
    let cap = Capture::start(CaptureConfig::for_path(path.to_str().unwrap()).unwrap()).unwrap();
    let mut s = cap.session(flow_info(7)).unwrap();
    s.data(Side::Server, ts(1000), b"220 hi\r\n");
    s.data(Side::Client, ts(2000), b"EHLO a\r\n");
    s.end(Side::Client, ts(3000), CloseKind::Fin);
    s.end(Side::Server, ts(3001), CloseKind::Fin);
    assert!(s.close(ts(4000)).is_empty());
    let stats = cap.clone().shutdown();
    assert_eq!(stats.sessions, 1);
    assert_eq!(stats.files, 1);
    // 3 handshake + 2 data + (FIN, ACK) × 2
    assert_eq!(stats.frames_written, 9);
    let r = read(&path);
    assert_eq!(r.ifnames, vec!["smtp"]);
    assert_eq!(r.tsresol, vec![9]);
    assert_eq!(r.packets.len(), 9);
    assert_eq!(
        r.packets[3].1,
        ts(1000).0.duration_since(UNIX_EPOCH).unwrap()
    );
    assert!(r.packets[3].2.ends_with(b"220 hi\r\n"));
    let ev = file_events(&cap.take_events());
    assert_eq!(
        ev,
        vec![
            (0, path.display().to_string(), "opened".into()),
            (0, path.display().to_string(), "closed".into())
        ]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn both_legs_write_two_interfaces() {
    let dir = temp_dir("legs");
    let sec = CaptureSection {
        path: dir.join("legs.pcapng").display().to_string(),
        legs: Legs::Both,
        ..Default::default()
    };
    let cap = Capture::start(sec.resolve("capture").unwrap()).unwrap();
    let mut s = cap.session(flow_info(3)).unwrap();
    s.data(Side::Server, ts(10), b"220 hi\r\n");
    s.data(Side::Client, ts(20), b"QUIT\r\n");
    drop(s); // Drop closes too.
    cap.shutdown();
    let r = read(&dir.join("legs.pcapng"));
    assert_eq!(r.ifnames, vec!["client-leg", "upstream-leg"]);
    let ifaces: Vec<u32> = r.packets.iter().map(|p| p.0).collect();
    // handshakes, server data upstream-leg first, client data client-leg first.
    assert_eq!(ifaces, vec![0, 0, 0, 1, 1, 1, 1, 0, 0, 1]);
    let h = PacketHeaders::from_ethernet_slice(&r.packets[3].2).unwrap();
    let Some(NetHeaders::Ipv4(ip, _)) = h.net else {
        panic!()
    };
    assert_eq!(ip.source, [198, 51, 100, 9]);
    assert_eq!(ip.destination, [192, 0, 2, 7]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn per_session_files_in_a_directory() {
    let dir = temp_dir("persession");
    let sec = CaptureSection {
        path: format!("{}/", dir.join("sub").display()),
        per_session: true,
        ..Default::default()
    };
    let cap = Capture::start(sec.resolve("capture").unwrap()).unwrap();
    for id in [1u64, 2] {
        let mut s = cap.session(flow_info(id)).unwrap();
        s.data(Side::Server, ts(10), b"220 hi\r\n");
        s.close(ts(20));
    }
    cap.clone().shutdown();
    let mut names: Vec<String> = std::fs::read_dir(dir.join("sub"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let tag = writer::time_tag(ts(0));
    assert_eq!(
        names,
        vec![
            format!("smtptap-{tag}-s1.pcapng"),
            format!("smtptap-{tag}-s2.pcapng")
        ]
    );
    let r = read(&dir.join("sub").join(&names[1]));
    assert_eq!(r.packets.len(), 4);
    let ev = file_events(&cap.take_events());
    let reasons: Vec<(u64, &str)> = ev.iter().map(|(s, _, r)| (*s, r.as_str())).collect();
    assert_eq!(
        reasons,
        vec![(1, "opened"), (1, "closed"), (2, "opened"), (2, "closed")]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn rotation_appends_numbers() {
    let dir = temp_dir("rotate");
    let sec = CaptureSection {
        path: dir.join("cap.pcapng").display().to_string(),
        rotate_bytes: 64 * 1024,
        ..Default::default()
    };
    let cap = Capture::start(sec.resolve("capture").unwrap()).unwrap();
    let mut s = cap.session(flow_info(1)).unwrap();
    for i in 0..10u64 {
        s.data(Side::Client, ts(i), &[b'a'; 20_000]);
    }
    s.close(ts(100));
    cap.clone().shutdown();
    assert!(dir.join("cap.pcapng").exists());
    assert!(dir.join("cap-1.pcapng").exists());
    assert!(dir.join("cap-2.pcapng").exists());
    assert!(!dir.join("cap-4.pcapng").exists());
    // Every file is complete pcapng with the interface.
    let total: usize = ["cap.pcapng", "cap-1.pcapng", "cap-2.pcapng", "cap-3.pcapng"]
        .iter()
        .filter(|n| dir.join(n).exists())
        .map(|n| {
            let r = read(&dir.join(n));
            assert_eq!(r.ifnames, vec!["smtp"]);
            r.packets.iter().map(|p| payload_len(&p.2)).sum::<usize>()
        })
        .sum();
    assert_eq!(total, 200_000);
    let ev = file_events(&cap.take_events());
    assert!(ev
        .iter()
        .any(|(_, p, r)| r == "rotated" && p.ends_with("cap.pcapng")));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn truncation_is_commented_and_reported_once() {
    let dir = temp_dir("trunc");
    let sec = CaptureSection {
        path: dir.join("t.pcapng").display().to_string(),
        max_bytes_per_session: 1000,
        ..Default::default()
    };
    let cap = Capture::start(sec.resolve("capture").unwrap()).unwrap();
    let mut s = cap.session(flow_info(9)).unwrap();
    s.data(Side::Server, ts(1), &[b'x'; 600]);
    s.data(Side::Client, ts(2), &[b'y'; 600]);
    s.data(Side::Client, ts(3), &[b'z'; 600]);
    assert_eq!(
        s.take_events(),
        vec![CaptureEvent::Truncated { limit: 1000 }]
    );
    s.end(Side::Client, ts(4), CloseKind::Rst);
    assert!(s.close(ts(5)).is_empty());
    cap.clone().shutdown();
    let r = read(&dir.join("t.pcapng"));
    let payloads: Vec<usize> = r.packets.iter().map(|p| payload_len(&p.2)).collect();
    assert_eq!(payloads, vec![0, 0, 0, 600, 400, 0]);
    assert!(r.packets[4].3[0].contains("truncated at 1000 payload bytes"));
    let rst = PacketHeaders::from_ethernet_slice(&r.packets[5].2).unwrap();
    let Some(TransportHeader::Tcp(tcp)) = rst.transport else {
        panic!()
    };
    assert!(tcp.rst);
    let data = PacketHeaders::from_ethernet_slice(&r.packets[4].2).unwrap();
    let Some(TransportHeader::Tcp(d)) = data.transport else {
        panic!()
    };
    assert_eq!(
        tcp.sequence_number,
        d.sequence_number.wrapping_add(400 + 200 + 600),
        "sequence numbers advance over the bytes not written"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn skipped_bodies_and_comments_are_written() {
    let dir = temp_dir("skip");
    let cap = Capture::start(
        CaptureConfig::for_path(dir.join("s.pcapng").display().to_string()).unwrap(),
    )
    .unwrap();
    let mut s = cap.session(flow_info(4)).unwrap();
    s.skip(Side::Client, ts(1), 5000);
    s.skip(Side::Client, ts(1), 1000);
    s.comment("observer stopped: garbage");
    s.data(Side::Client, ts(2), b".\r\n");
    s.comment("at close");
    s.close(ts(3));
    cap.clone().shutdown();
    let r = read(&dir.join("s.pcapng"));
    assert_eq!(r.packets.len(), 5);
    assert_eq!(
        r.packets[3].3,
        vec![
            "smtptap: 6000 bytes sent by the client before this frame are not in this capture (message body left out: capture.bodies = false)".to_string(),
            "observer stopped: garbage".to_string()
        ]
    );
    assert_eq!(r.packets[4].3, vec!["at close".to_string()]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn queue_full_drops_frames_counts_and_comments() {
    let dir = temp_dir("drop");
    let sec = CaptureSection {
        path: dir.join("d.pcapng").display().to_string(),
        queue_bytes: MIN_QUEUE_BYTES,
        ..Default::default()
    };
    let cap = Capture::start(sec.resolve("capture").unwrap()).unwrap();
    let mut s = cap.session(flow_info(5)).unwrap();
    // One batch larger than the whole budget can never be queued.
    let big = vec![b'q'; 400_000];
    s.data(Side::Client, ts(1), &big);
    s.data(Side::Server, ts(2), b"250 ok\r\n");
    let ev = s.close(ts(3));
    assert_eq!(ev.len(), 1);
    let CaptureEvent::Dropped {
        frames,
        bytes,
        reason,
    } = &ev[0]
    else {
        panic!("{ev:?}")
    };
    // 274 segments + 1 pure ACK.
    assert_eq!(*frames, 275);
    assert_eq!(*bytes, 400_000 + 275 * (54 + FRAME_OVERHEAD as u64));
    assert_eq!(reason, "queue full");
    let stats = cap.clone().shutdown();
    assert_eq!(stats.frames_dropped, 275);
    let r = read(&dir.join("d.pcapng"));
    assert_eq!(r.packets.len(), 4);
    assert!(
        r.packets[3].3[0].contains("275 frames"),
        "{:?}",
        r.packets[3].3
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn filtered_session_is_none() {
    let dir = temp_dir("filter");
    let sec = CaptureSection {
        path: dir.join("f.pcapng").display().to_string(),
        ports: vec![587],
        ..Default::default()
    };
    let cap = Capture::start(sec.resolve("capture").unwrap()).unwrap();
    assert!(cap.session(flow_info(1)).is_none());
    assert_eq!(cap.clone().shutdown().sessions, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn decryption_secrets_block_is_written_before_frames() {
    let dir = temp_dir("dsb");
    let cap = Capture::start(
        CaptureConfig::for_path(dir.join("k.pcapng").display().to_string()).unwrap(),
    )
    .unwrap();
    let mut s = cap.session(flow_info(1)).unwrap();
    let line = b"CLIENT_RANDOM 00 11\n";
    s.tls_secrets(line);
    s.data(Side::Client, ts(1), b"x");
    s.close(ts(2));
    cap.clone().shutdown();
    let r = read(&dir.join("k.pcapng"));
    assert_eq!(r.dsb.len(), 1);
    assert_eq!(&r.dsb[0][..4], &pcapng::SECRETS_TLS_KEY_LOG.to_le_bytes());
    assert_eq!(&r.dsb[0][4..8], &(line.len() as u32).to_le_bytes());
    assert_eq!(&r.dsb[0][8..8 + line.len()], line);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unwritable_paths_fail_at_start() {
    let err = Capture::start(CaptureConfig::for_path("/nonexistent-smtptap/dir/x.pcapng").unwrap())
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("/nonexistent-smtptap/dir/x.pcapng"),
        "{err}"
    );
}

#[test]
fn disk_full_reports_one_error_and_stops() {
    if !Path::new("/dev/full").exists() {
        panic!("this test needs /dev/full (a Linux system)");
    }
    let mut cfg = CaptureConfig::for_path("/dev/full").unwrap();
    cfg.flush_interval = Duration::from_millis(10);
    let cap = Capture::start(cfg).unwrap();
    let mut s = cap.session(flow_info(1)).unwrap();
    for i in 0..50 {
        s.data(Side::Client, ts(i), &[b'm'; 20_000]);
    }
    s.close(ts(100));
    let mut s2 = cap.session(flow_info(2)).unwrap();
    s2.data(Side::Client, ts(200), b"after");
    s2.close(ts(201));
    let stats = cap.clone().shutdown();
    assert_eq!(stats.errors, 1);
    let errors: Vec<Event> = cap
        .take_events()
        .into_iter()
        .filter(|e| matches!(e.kind, EventKind::Capture(CaptureEvent::Error { .. })))
        .collect();
    assert_eq!(errors.len(), 1);
    let EventKind::Capture(CaptureEvent::Error {
        path,
        error,
        detail,
    }) = &errors[0].kind
    else {
        panic!()
    };
    assert_eq!(path, "/dev/full");
    assert_eq!(error, "no_space");
    assert!(detail.contains("No space left"), "{detail}");
    assert_eq!(errors[0].session, 0);
    assert!(errors[0]
        .kind
        .clone()
        .serialize_name()
        .contains("capture.error"));
}

trait Name {
    fn serialize_name(self) -> String;
}
impl Name for EventKind {
    fn serialize_name(self) -> String {
        serde_json::to_string(&self).unwrap()
    }
}

#[test]
fn events_serialize_flat_with_dotted_names() {
    let cases = [
        (
            CaptureEvent::File {
                path: "a.pcapng".into(),
                reason: "opened".into(),
            },
            r#"{"ts":"1970-01-01T00:00:00.000000Z","run":"","session":0,"event":"capture.file","path":"a.pcapng","reason":"opened"}"#,
        ),
        (
            CaptureEvent::Error {
                path: "/dev/full".into(),
                error: "no_space".into(),
                detail: "No space left on device (os error 28)".into(),
            },
            r#"{"ts":"1970-01-01T00:00:00.000000Z","run":"","session":0,"event":"capture.error","path":"/dev/full","error":"no_space","detail":"No space left on device (os error 28)"}"#,
        ),
        (
            CaptureEvent::Truncated { limit: 5 },
            r#"{"ts":"1970-01-01T00:00:00.000000Z","run":"","session":0,"event":"capture.truncated","limit":5}"#,
        ),
        (
            CaptureEvent::Dropped {
                frames: 1,
                bytes: 2,
                reason: "queue full".into(),
            },
            r#"{"ts":"1970-01-01T00:00:00.000000Z","run":"","session":0,"event":"capture.dropped","frames":1,"bytes":2,"reason":"queue full"}"#,
        ),
    ];
    for (kind, json) in cases {
        let e = Event::new(Timestamp(UNIX_EPOCH), 0, kind.clone());
        assert_eq!(serde_json::to_string(&e).unwrap(), json);
        let back: Event = serde_json::from_str(json).unwrap();
        let EventKind::Capture(k) = back.kind else {
            panic!("{json} did not round-trip as a capture event")
        };
        assert_eq!(k, kind);
    }
}

/// Reassembles each direction of interface `iface` from frames by sequence
/// number, checking checksums and that segments are contiguous.
fn reassemble(
    packets: &[(u32, Duration, Vec<u8>, Vec<String>)],
    iface: u32,
    client_port: u16,
) -> (Vec<u8>, Vec<u8>) {
    let mut dirs: [(Option<u32>, Vec<u8>); 2] = [(None, vec![]), (None, vec![])];
    for (i, _, data, _) in packets {
        if *i != iface {
            continue;
        }
        let seg = parse(&Frame {
            ts: ts(0),
            data: data.clone(),
            payload_len: payload_len(data),
        });
        let d = usize::from(seg.src_port != client_port);
        let (next, buf) = &mut dirs[d];
        if seg.syn {
            *next = Some(seg.seq.wrapping_add(1));
            continue;
        }
        if seg.payload.is_empty() {
            continue;
        }
        assert_eq!(Some(seg.seq), *next, "contiguous sequence numbers");
        *next = Some(seg.seq.wrapping_add(seg.payload.len() as u32));
        buf.extend_from_slice(&seg.payload);
    }
    let [(_, c), (_, s)] = dirs;
    (c, s)
}

#[test]
fn random_conversations_reassemble_exactly() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let dir = temp_dir("random");
    for round in 0..6u64 {
        let legs = if round % 2 == 0 {
            Legs::ClientView
        } else {
            Legs::Both
        };
        let v6 = round >= 3;
        let path = dir.join(format!("r{round}.pcapng"));
        let sec = CaptureSection {
            path: path.display().to_string(),
            legs,
            ..Default::default()
        };
        let cap = Capture::start(sec.resolve("capture").unwrap()).unwrap();
        let mut info = flow_info(round);
        if v6 {
            info.client = sa("[2001:db8::5]:40000");
            info.proxy_listen = sa("[2001:db8::1]:25");
            info.proxy_upstream_local = Some(sa("[2001:db8:1::1]:41000"));
            info.upstream = sa("[2001:db8:2::25]:25");
        }
        let mut s = cap.session(info).unwrap();
        let mut want = [Vec::new(), Vec::new()];
        for k in 0..200u64 {
            let side = if rng.gen_bool(0.5) {
                Side::Client
            } else {
                Side::Server
            };
            let len = match rng.gen_range(0..10) {
                0 => rng.gen_range(3000..70_000),
                _ => rng.gen_range(0..300),
            };
            let bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            s.data(side, ts(k), &bytes);
            want[usize::from(side == Side::Server)].extend_from_slice(&bytes);
        }
        s.end(Side::Server, ts(1000), CloseKind::Fin);
        s.end(Side::Client, ts(1001), CloseKind::Rst);
        s.close(ts(1002));
        let stats = cap.clone().shutdown();
        assert_eq!(stats.frames_dropped, 0);
        let r = read(&path);
        let n_legs = if legs == Legs::Both { 2 } else { 1 };
        for iface in 0..n_legs {
            let client_port = if iface == 0 {
                40000
            } else if v6 {
                41000
            } else {
                51000
            };
            let (c, sv) = reassemble(&r.packets, iface, client_port);
            assert!(
                c == want[0],
                "round {round} leg {iface}: client bytes differ"
            );
            assert!(
                sv == want[1],
                "round {round} leg {iface}: server bytes differ"
            );
        }
        // Frame sizes never exceed Ethernet's 1514 bytes (plus TCP options in SYNs).
        assert!(r.packets.iter().all(|p| p.2.len() <= 1514 + 12));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn timer_flush_leaves_a_readable_file_while_running() {
    let dir = temp_dir("timer");
    let path = dir.join("live.pcapng");
    let mut cfg = CaptureConfig::for_path(path.display().to_string()).unwrap();
    cfg.flush_interval = Duration::from_millis(50);
    let cap = Capture::start(cfg).unwrap();
    let mut s = cap.session(flow_info(1)).unwrap();
    s.data(Side::Server, ts(1), b"220 hi\r\n");
    s.data(Side::Client, ts(2), &[b'x'; 10_000]);
    // No close, no shutdown: as if the process were about to be killed.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut n = 0;
    while std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(60));
        n = complete_packets(&path);
        if n == 3 + 1 + 7 + 1 {
            break;
        }
    }
    // handshake 3, banner 1, 7 segments of 10 000 bytes, the server's ACK.
    assert_eq!(n, 12, "frames readable before any close");
    drop(s);
    cap.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn dropping_every_handle_flushes_and_stops_the_writer() {
    let dir = temp_dir("dropall");
    let path = dir.join("d.pcapng");
    let mut cfg = CaptureConfig::for_path(path.display().to_string()).unwrap();
    cfg.flush_interval = Duration::from_secs(3600);
    let cap = Capture::start(cfg).unwrap();
    let mut s = cap.session(flow_info(1)).unwrap();
    s.data(Side::Server, ts(1), b"220 hi\r\n");
    drop(cap);
    drop(s);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut n = 0;
    while std::time::Instant::now() < deadline && n != 4 {
        std::thread::sleep(Duration::from_millis(20));
        n = complete_packets(&path);
    }
    assert_eq!(n, 4, "handshake and banner written without shutdown()");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn file_names() {
    let t = ts(0);
    let tag = writer::time_tag(t);
    assert_eq!(tag.len(), 16);
    let f = Target::File(PathBuf::from("/x/cap.pcapng"));
    assert_eq!(
        writer::run_file_name(&f, t, 0),
        PathBuf::from("/x/cap.pcapng")
    );
    assert_eq!(
        writer::run_file_name(&f, t, 2),
        PathBuf::from("/x/cap-2.pcapng")
    );
    assert_eq!(
        writer::session_file_name(&f, t, 7),
        PathBuf::from(format!("/x/cap-{tag}-s7.pcapng"))
    );
    let d = Target::Dir(PathBuf::from("/caps"));
    assert_eq!(
        writer::run_file_name(&d, t, 0),
        PathBuf::from(format!("/caps/smtptap-{tag}.pcapng"))
    );
    assert_eq!(
        writer::run_file_name(&d, t, 1),
        PathBuf::from(format!("/caps/smtptap-{tag}-1.pcapng"))
    );
    assert_eq!(
        writer::session_file_name(&d, t, 7),
        PathBuf::from(format!("/caps/smtptap-{tag}-s7.pcapng"))
    );
    assert_eq!(
        writer::time_tag(Timestamp(UNIX_EPOCH + Duration::from_secs(1_795_900_034))),
        "20261128T210714Z"
    );
}
