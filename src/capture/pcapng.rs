//! pcapng blocks: section header, interfaces, packets with comments, and the
//! Decryption Secrets Block.
//!
//! Built on `pcap-file` 2. Files are always little-endian. pcap-file 2 writes
//! packet timestamps in nanoseconds, so every interface declares
//! `if_tsresol = 9`; without it readers would assume microseconds and dates
//! would land a thousand times too far in the future.
//!
//! This module owns the block layout only; it must not open files or decide
//! what is written (that is `writer`).

use std::borrow::Cow;
use std::io::Write;
use std::time::{Duration, UNIX_EPOCH};

use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::blocks::section_header::{SectionHeaderBlock, SectionHeaderOption};
use pcap_file::pcapng::{PcapNgWriter, RawBlock};
use pcap_file::{DataLink, Endianness, PcapError};

use crate::event::Timestamp;

/// Longest comment written (pcapng options are limited to 65535 bytes; long
/// comments are cut at a character boundary and end with `…`).
pub const MAX_COMMENT: usize = 2000;

/// Block type of the Decryption Secrets Block.
pub const DSB_TYPE: u32 = 0x0000_000A;
/// Secrets type "TLSK": an NSS key log (`CLIENT_RANDOM …` lines).
pub const SECRETS_TLS_KEY_LOG: u32 = 0x544c_534b;

/// A pcapng writer over any byte sink, little-endian.
pub type NgWriter<W> = PcapNgWriter<W>;

/// Starts a pcapng section on `w`: the Section Header Block, then one
/// Interface Description Block per name in `interfaces` (ids 0, 1, …).
pub fn start<W: Write>(w: W, interfaces: &[&str]) -> Result<NgWriter<W>, PcapError> {
    let shb = SectionHeaderBlock {
        endianness: Endianness::Little,
        options: vec![SectionHeaderOption::UserApplication(Cow::Owned(format!(
            "smtptap {}",
            env!("CARGO_PKG_VERSION")
        )))],
        ..Default::default()
    };
    let mut ng = PcapNgWriter::with_section_header(w, shb)?;
    for name in interfaces {
        let idb = InterfaceDescriptionBlock {
            linktype: DataLink::ETHERNET,
            snaplen: 0,
            options: vec![
                InterfaceDescriptionOption::IfName(Cow::Owned((*name).to_string())),
                InterfaceDescriptionOption::IfDescription(Cow::Owned(format!(
                    "smtptap synthesized frames ({name})"
                ))),
                InterfaceDescriptionOption::IfTsResol(9),
            ],
        };
        ng.write_pcapng_block(idb)?;
    }
    Ok(ng)
}

/// Cuts `text` to [`MAX_COMMENT`] bytes at a character boundary.
pub fn clamp_comment(text: &str) -> String {
    if text.len() <= MAX_COMMENT {
        return text.to_string();
    }
    let mut end = MAX_COMMENT.saturating_sub(3);
    while end > 0 && !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut s = text.get(..end).unwrap_or("").to_string();
    s.push('…');
    s
}

/// Time since the Unix epoch (0 for instants before it).
pub fn epoch(ts: Timestamp) -> Duration {
    ts.0.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO)
}

/// Writes one Enhanced Packet Block; returns bytes written.
pub fn write_packet<W: Write>(
    ng: &mut NgWriter<W>,
    interface_id: u32,
    ts: Timestamp,
    frame: &[u8],
    comments: &[String],
) -> Result<usize, PcapError> {
    let original_len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
    let epb = EnhancedPacketBlock {
        interface_id,
        timestamp: epoch(ts),
        original_len,
        data: Cow::Borrowed(frame),
        options: comments
            .iter()
            .map(|c| EnhancedPacketOption::Comment(Cow::Owned(clamp_comment(c))))
            .collect(),
    };
    ng.write_pcapng_block(epb)
}

/// The body of a Decryption Secrets Block carrying an NSS key log
/// (little-endian, padded to 4 bytes, no options).
pub fn dsb_body(keylog: &[u8]) -> Vec<u8> {
    let len = u32::try_from(keylog.len()).unwrap_or(u32::MAX);
    let mut body = Vec::with_capacity(keylog.len() + 12);
    body.extend_from_slice(&SECRETS_TLS_KEY_LOG.to_le_bytes());
    body.extend_from_slice(&len.to_le_bytes());
    body.extend_from_slice(keylog);
    while body.len() % 4 != 0 {
        body.push(0);
    }
    body
}

/// Writes a Decryption Secrets Block with an NSS key log, so that Wireshark
/// decrypts the TLS sessions that follow it with no extra configuration.
/// Must be written before the packets it decrypts.
pub fn write_secrets<W: Write>(ng: &mut NgWriter<W>, keylog: &[u8]) -> Result<usize, PcapError> {
    let body = dsb_body(keylog);
    let total = u32::try_from(body.len() + 12).unwrap_or(u32::MAX);
    let raw = RawBlock {
        type_: DSB_TYPE,
        initial_len: total,
        body: Cow::Owned(body),
        trailer_len: total,
    };
    ng.write_raw_block(&raw)
}
