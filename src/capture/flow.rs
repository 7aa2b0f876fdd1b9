//! Sans-IO TCP flow synthesis: relayed bytes in, Ethernet/IP/TCP frames out.
//!
//! A [`TcpFlow`] owns the sequence-number state of one TCP connection between
//! a client endpoint and a server endpoint and turns "side X sent these bytes at
//! time T" into frames that Wireshark reassembles: a three-way handshake,
//! consistent seq/ack numbers, segments no larger than the MSS (1460 bytes of
//! payload over IPv4, 1440 over IPv6), FIN or RST as it happened, and correct
//! IPv4 and TCP checksums (computed by `etherparse`).
//!
//! ```text
//!  client                                   server
//!    │── SYN            seq=c0 ─────────────▶│   handshake(ts)
//!    │◀─ SYN,ACK        seq=s0 ack=c0+1 ─────│
//!    │── ACK            seq=c0+1 ack=s0+1 ──▶│
//!    │◀─ PSH,ACK  data  (≤ MSS per segment) ─│   data(Server, ts, bytes)
//!    │── ACK  (only after ≥ 2 MSS unacked) ─▶│
//!    │── FIN,ACK ───────────────────────────▶│   fin(Client, ts)
//!    │◀─ ACK ────────────────────────────────│
//! ```
//!
//! This module must not do I/O and must not decide *what* is captured (filters,
//! caps, redaction belong to the caller). It never panics on any input: a frame
//! that cannot be built (impossible for the sizes used here) is simply skipped.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use etherparse::{IpHeaders, Ipv4Header, Ipv6Header, PacketBuilder, TcpOptionElement};

use crate::event::{Side, Timestamp};

/// Largest TCP payload per segment over IPv4 (Ethernet MTU 1500 − 20 − 20).
pub const MSS_V4: usize = 1460;
/// Largest TCP payload per segment over IPv6 (Ethernet MTU 1500 − 40 − 20).
pub const MSS_V6: usize = 1440;

/// Window advertised in every segment (scaled by [`WINDOW_SHIFT`] after the
/// handshake: about 8 MiB, so bulk transfers are never shown as "window full").
const WINDOW: u16 = 0xFFFF;
/// Window scale announced in SYN and SYN/ACK.
const WINDOW_SHIFT: u8 = 7;
/// TTL / hop limit of synthesized packets.
const TTL: u8 = 64;

/// Synthetic, locally administered MAC address of the client endpoint.
pub const CLIENT_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x00, 0x00, 0x01];
/// Synthetic, locally administered MAC address of the server endpoint.
pub const SERVER_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x00, 0x00, 0x02];

/// One synthesized Ethernet frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// When the bytes crossed the proxy.
    pub ts: Timestamp,
    /// The whole frame, Ethernet header first.
    pub data: Vec<u8>,
    /// TCP payload bytes carried (0 for SYN/ACK/FIN/RST-only segments).
    pub payload_len: usize,
}

/// How one side of a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CloseKind {
    /// The side half-closed cleanly (a FIN is written, ACKed by the peer).
    Fin,
    /// The side aborted (an RST is written; nothing follows on the flow).
    Rst,
    /// The side was still open when capture stopped (nothing is written).
    Open,
}

/// Addresses of a flow after family normalization (both IPv4 or both IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ips {
    V4([u8; 4], [u8; 4]),
    V6([u8; 16], [u8; 16]),
}

/// Sequence-number state and frame synthesis for one TCP connection.
///
/// If the two endpoints have different address families (a proxy listening on
/// IPv6 relaying to an IPv4 upstream), the IPv4 one is written as an
/// IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) so the flow stays one flow.
#[derive(Debug, Clone)]
pub struct TcpFlow {
    ips: Ips,
    client_port: u16,
    server_port: u16,
    /// Next sequence number each side will send: `[client, server]`.
    next_seq: [u32; 2],
    /// Bytes each side sent that the peer has not acknowledged in a frame yet.
    unacked: [usize; 2],
    /// IPv4 identification counter per side.
    ip_id: [u16; 2],
    /// A FIN was written for this side.
    fin: [bool; 2],
    /// An RST was written: the flow is dead, nothing more is written.
    reset: bool,
}

fn idx(side: Side) -> usize {
    match side {
        Side::Client => 0,
        Side::Server => 1,
    }
}

fn v6_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Un-maps `::ffff:a.b.c.d` so that a dual-stack listener's view of an IPv4
/// client is written as IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

impl TcpFlow {
    /// A flow between `client` and `server`; `isn_seed` makes the initial
    /// sequence numbers differ between flows (any value will do, e.g. the
    /// session id).
    pub fn new(client: SocketAddr, server: SocketAddr, isn_seed: u64) -> Self {
        let cip = canonical_ip(client.ip());
        let sip = canonical_ip(server.ip());
        let ips = match (cip, sip) {
            (IpAddr::V4(c), IpAddr::V4(s)) => Ips::V4(c.octets(), s.octets()),
            (c, s) => Ips::V6(v6_bytes(c), v6_bytes(s)),
        };
        let mix = isn_seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17);
        // Truncations intended: any 32-bit value is a valid ISN.
        let c0 = (mix as u32) ^ 0x1000_0000;
        let s0 = ((mix >> 32) as u32) ^ 0x2000_0000;
        TcpFlow {
            ips,
            client_port: client.port(),
            server_port: server.port(),
            next_seq: [c0, s0],
            unacked: [0, 0],
            ip_id: [(mix >> 8) as u16, (mix >> 24) as u16],
            fin: [false, false],
            reset: false,
        }
    }

    /// Largest payload per segment for this flow's address family.
    pub fn mss(&self) -> usize {
        match self.ips {
            Ips::V4(..) => MSS_V4,
            Ips::V6(..) => MSS_V6,
        }
    }

    /// True when the flow is written as IPv6.
    pub fn is_ipv6(&self) -> bool {
        matches!(self.ips, Ips::V6(..))
    }

    /// The sequence number `side` will use for its next byte.
    pub fn next_seq(&self, side: Side) -> u32 {
        self.next_seq[idx(side)]
    }

    /// True once an RST was written (further calls write nothing).
    pub fn is_reset(&self) -> bool {
        self.reset
    }

    /// SYN, SYN/ACK, ACK, all at `ts`. Call once, before any data.
    pub fn handshake(&mut self, ts: Timestamp, out: &mut Vec<Frame>) {
        let mss = u16::try_from(self.mss()).unwrap_or(1400);
        let opts = [
            TcpOptionElement::MaximumSegmentSize(mss),
            TcpOptionElement::Noop,
            TcpOptionElement::WindowScale(WINDOW_SHIFT),
            TcpOptionElement::SelectiveAcknowledgementPermitted,
            TcpOptionElement::Noop,
            TcpOptionElement::Noop,
        ];
        let c = self.next_seq[0];
        let s = self.next_seq[1];
        self.push(out, ts, Side::Client, Flags::Syn, c, None, &opts, &[]);
        self.push(
            out,
            ts,
            Side::Server,
            Flags::Syn,
            s,
            Some(c.wrapping_add(1)),
            &opts,
            &[],
        );
        self.next_seq = [c.wrapping_add(1), s.wrapping_add(1)];
        self.push(
            out,
            ts,
            Side::Client,
            Flags::Plain,
            self.next_seq[0],
            Some(self.next_seq[1]),
            &[],
            &[],
        );
    }

    /// `side` sent `bytes` at `ts`: PSH/ACK segments of at most [`Self::mss`]
    /// bytes, then a pure ACK from the peer once 2 MSS or more are unacked.
    pub fn data(&mut self, side: Side, ts: Timestamp, bytes: &[u8], out: &mut Vec<Frame>) {
        if self.reset || bytes.is_empty() {
            return;
        }
        let i = idx(side);
        let peer = idx(side.peer());
        let mss = self.mss();
        let mut chunks = bytes.chunks(mss).peekable();
        while let Some(seg) = chunks.next() {
            let flags = if chunks.peek().is_none() {
                Flags::Psh
            } else {
                Flags::Plain
            };
            let seq = self.next_seq[i];
            let ack = self.next_seq[peer];
            self.push(out, ts, side, flags, seq, Some(ack), &[], seg);
            // A segment is at most 1460 bytes: the cast cannot truncate.
            self.next_seq[i] = seq.wrapping_add(seg.len() as u32);
        }
        // Anything this side sends acknowledges everything the peer sent.
        self.unacked[peer] = 0;
        self.unacked[i] = self.unacked[i].saturating_add(bytes.len());
        if self.unacked[i] >= 2 * mss {
            self.ack_from(side.peer(), ts, out);
        }
    }

    /// `side` sent `len` bytes that are not written (e.g. a message body left
    /// out of the capture): its sequence number advances, so Wireshark shows a
    /// gap ("previous segment not captured") rather than a corrupt stream.
    pub fn skip(&mut self, side: Side, len: usize) {
        let i = idx(side);
        // Sequence space is modulo 2^32: truncation is the intended arithmetic.
        self.next_seq[i] = self.next_seq[i].wrapping_add(len as u32);
    }

    /// `side` half-closed at `ts`: FIN/ACK, then the peer's ACK.
    pub fn fin(&mut self, side: Side, ts: Timestamp, out: &mut Vec<Frame>) {
        let i = idx(side);
        if self.reset || self.fin[i] {
            return;
        }
        let seq = self.next_seq[i];
        let ack = self.next_seq[idx(side.peer())];
        self.push(out, ts, side, Flags::Fin, seq, Some(ack), &[], &[]);
        self.next_seq[i] = seq.wrapping_add(1);
        self.fin[i] = true;
        self.unacked[i] = 0;
        self.ack_from(side.peer(), ts, out);
    }

    /// `side` aborted at `ts`: RST/ACK. The flow writes nothing afterwards.
    pub fn rst(&mut self, side: Side, ts: Timestamp, out: &mut Vec<Frame>) {
        if self.reset {
            return;
        }
        let seq = self.next_seq[idx(side)];
        let ack = self.next_seq[idx(side.peer())];
        self.push(out, ts, side, Flags::Rst, seq, Some(ack), &[], &[]);
        self.reset = true;
    }

    /// A pure ACK from `side` acknowledging everything its peer sent.
    pub fn ack_from(&mut self, side: Side, ts: Timestamp, out: &mut Vec<Frame>) {
        if self.reset {
            return;
        }
        let seq = self.next_seq[idx(side)];
        let ack = self.next_seq[idx(side.peer())];
        self.push(out, ts, side, Flags::Plain, seq, Some(ack), &[], &[]);
        self.unacked[idx(side.peer())] = 0;
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        out: &mut Vec<Frame>,
        ts: Timestamp,
        from: Side,
        flags: Flags,
        seq: u32,
        ack: Option<u32>,
        opts: &[TcpOptionElement],
        payload: &[u8],
    ) {
        let i = idx(from);
        let (src_mac, dst_mac, sport, dport) = match from {
            Side::Client => (CLIENT_MAC, SERVER_MAC, self.client_port, self.server_port),
            Side::Server => (SERVER_MAC, CLIENT_MAC, self.server_port, self.client_port),
        };
        let ip = match self.ips {
            Ips::V4(c, s) => {
                let (src, dst) = if i == 0 { (c, s) } else { (s, c) };
                let h = Ipv4Header {
                    source: src,
                    destination: dst,
                    time_to_live: TTL,
                    identification: self.ip_id[i],
                    dont_fragment: true,
                    ..Default::default()
                };
                self.ip_id[i] = self.ip_id[i].wrapping_add(1);
                IpHeaders::Ipv4(h, Default::default())
            }
            Ips::V6(c, s) => {
                let (src, dst) = if i == 0 { (c, s) } else { (s, c) };
                IpHeaders::Ipv6(
                    Ipv6Header {
                        hop_limit: TTL,
                        source: src,
                        destination: dst,
                        ..Default::default()
                    },
                    Default::default(),
                )
            }
        };
        let mut b = PacketBuilder::ethernet2(src_mac, dst_mac)
            .ip(ip)
            .tcp(sport, dport, seq, WINDOW);
        if let Some(a) = ack {
            b = b.ack(a);
        }
        b = match flags {
            Flags::Syn => b.syn(),
            Flags::Fin => b.fin(),
            Flags::Rst => b.rst(),
            Flags::Psh => b.psh(),
            Flags::Plain => b,
        };
        if !opts.is_empty() {
            b = match b.options(opts) {
                Ok(b) => b,
                Err(_) => return,
            };
        }
        let mut data = Vec::with_capacity(b.size(payload.len()));
        if b.write(&mut data, payload).is_ok() {
            out.push(Frame {
                ts,
                data,
                payload_len: payload.len(),
            });
        }
    }
}

/// The one control flag (besides ACK) a synthesized segment carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flags {
    Plain,
    Syn,
    Fin,
    Rst,
    Psh,
}

/// The unspecified address of `ip`'s family: stands in for the proxy's
/// upstream-side local address when it is unknown.
pub fn unspecified_like(ip: IpAddr) -> IpAddr {
    match canonical_ip(ip) {
        IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}
