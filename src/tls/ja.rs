//! Client fingerprints computed from a decoded ClientHello: JA3 (Salesforce)
//! and JA4 (FoxIO, BSD-3; only the JA4 client fingerprint: JA4S/JA4X are under
//! a non-open licence and must not be added here).
//!
//! Pure functions; GREASE values are left out as both specifications require.
//!
//! ```text
//! JA3 string = SSLVersion,Ciphers,Extensions,EllipticCurves,EllipticCurvePointFormats
//!              (decimal, '-' separated)            JA3 = md5(JA3 string), hex
//! JA4        = t{ver}{d|i}{#ciphers:02}{#exts:02}{alpn first+last}
//!              _ sha256(sorted ciphers, 4-hex, ',')[..12]
//!              _ sha256(sorted exts w/o SNI,ALPN ',' '_' sigalgs in order)[..12]
//! ```

use md5::{Digest as _, Md5};
use sha2::Sha256;

use super::hello::{ext, ClientHello};
use super::names::is_grease;

fn join_dec<T: ToString>(v: impl Iterator<Item = T>) -> String {
    v.map(|x| x.to_string()).collect::<Vec<_>>().join("-")
}

/// The JA3 string and its md5 (lowercase hex).
pub(crate) fn ja3(ch: &ClientHello) -> (String, String) {
    let s = format!(
        "{},{},{},{},{}",
        ch.legacy_version,
        join_dec(ch.ciphers.iter().filter(|c| !is_grease(**c))),
        join_dec(ch.extensions.iter().filter(|c| !is_grease(**c))),
        join_dec(ch.groups.iter().filter(|c| !is_grease(**c))),
        join_dec(ch.point_formats.iter()),
    );
    let hash = Md5::digest(s.as_bytes());
    (s, hex(&hash))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn sha12(s: &str) -> String {
    let mut h = hex(&Sha256::digest(s.as_bytes()));
    h.truncate(12);
    h
}

fn ja4_version(v: u16) -> &'static str {
    match v {
        0x0304 => "13",
        0x0303 => "12",
        0x0302 => "11",
        0x0301 => "10",
        0x0300 => "s3",
        0x0200 | 0x0002 => "s2",
        _ => "00",
    }
}

/// The highest version the client offers, considering supported_versions.
pub(crate) fn max_version(ch: &ClientHello) -> u16 {
    ch.supported_versions
        .iter()
        .copied()
        .filter(|v| !is_grease(*v))
        .max()
        .unwrap_or(ch.legacy_version)
}

/// The two ALPN characters of JA4: first and last character of the first
/// protocol; if either is not ASCII alphanumeric, the first hex digit of the
/// first byte and the last hex digit of the last byte; `00` if none.
fn ja4_alpn(ch: &ClientHello) -> String {
    let Some(p) = ch.alpn.first() else {
        return "00".into();
    };
    match (p.first(), p.last()) {
        (Some(&a), Some(&b)) if a.is_ascii_alphanumeric() && b.is_ascii_alphanumeric() => {
            format!("{}{}", a as char, b as char)
        }
        (Some(&a), Some(&b)) => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            let hi = HEX[usize::from(a >> 4)] as char;
            let lo = HEX[usize::from(b & 0x0f)] as char;
            format!("{hi}{lo}")
        }
        _ => "00".into(),
    }
}

/// The JA4 fingerprint (TCP, so the prefix is `t`).
pub(crate) fn ja4(ch: &ClientHello) -> String {
    let ciphers: Vec<u16> = ch
        .ciphers
        .iter()
        .copied()
        .filter(|c| !is_grease(*c))
        .collect();
    let exts: Vec<u16> = ch
        .extensions
        .iter()
        .copied()
        .filter(|c| !is_grease(*c))
        .collect();
    let sni = if ch.extensions.contains(&ext::SERVER_NAME) {
        'd'
    } else {
        'i'
    };
    let a = format!(
        "t{}{}{:02}{:02}{}",
        ja4_version(max_version(ch)),
        sni,
        ciphers.len().min(99),
        exts.len().min(99),
        ja4_alpn(ch)
    );
    let mut sc = ciphers.clone();
    sc.sort_unstable();
    let b = if sc.is_empty() {
        "000000000000".to_string()
    } else {
        sha12(&join_hex(&sc))
    };
    let mut se: Vec<u16> = exts
        .into_iter()
        .filter(|e| *e != ext::SERVER_NAME && *e != ext::ALPN)
        .collect();
    se.sort_unstable();
    let sigs: Vec<u16> = ch
        .sigalgs
        .iter()
        .copied()
        .filter(|s| !is_grease(*s))
        .collect();
    let c = if se.is_empty() {
        "000000000000".to_string()
    } else if sigs.is_empty() {
        sha12(&join_hex(&se))
    } else {
        sha12(&format!("{}_{}", join_hex(&se), join_hex(&sigs)))
    };
    format!("{a}_{b}_{c}")
}

fn join_hex(v: &[u16]) -> String {
    v.iter()
        .map(|x| format!("{x:04x}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JA4 README example (Chrome): 15 ciphers, 16 extensions, ALPN h2.
    /// The two hashes were checked independently in a shell:
    /// `printf %s '002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,cca9' | sha256sum`
    /// → 8daaf6152771…, and
    /// `printf %s '0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01_0403,0804,0401,0503,0805,0501,0806,0601' | sha256sum`
    /// → e5627efa2ab1….
    fn chrome_like() -> ClientHello {
        ClientHello {
            legacy_version: 0x0303,
            // unsorted, with GREASE, as a browser sends them
            ciphers: vec![
                0x2a2a, 0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8,
                0xc013, 0xc014, 0x009c, 0x009d, 0x002f, 0x0035,
            ],
            extensions: vec![
                0x0a0a, 0x001b, 0x0000, 0x0033, 0x0010, 0x4469, 0x0017, 0x002d, 0x000d, 0x0005,
                0x0023, 0x0012, 0x002b, 0xff01, 0x000b, 0x000a, 0x0015, 0x1a1a,
            ],
            sigalgs: vec![
                0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601,
            ],
            supported_versions: vec![0x3a3a, 0x0304, 0x0303],
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            groups: vec![0x4a4a, 29, 23, 24],
            point_formats: vec![0],
            ..ClientHello::default()
        }
    }

    #[test]
    fn ja4_matches_the_spec_example() {
        assert_eq!(ja4(&chrome_like()), "t13d1516h2_8daaf6152771_e5627efa2ab1");
    }

    #[test]
    fn ja4_without_sni_alpn_sigalgs() {
        let mut ch = chrome_like();
        ch.extensions.retain(|e| *e != 0 && *e != 0x10);
        ch.alpn.clear();
        ch.sigalgs.clear();
        ch.supported_versions.clear();
        let j = ja4(&ch);
        // printf %s '0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01' | sha256sum
        assert_eq!(j, "t12i151400_8daaf6152771_6d807ffa2a79");
    }

    #[test]
    fn ja4_alpn_non_alnum_uses_hex() {
        let mut ch = chrome_like();
        ch.alpn = vec![vec![0xab, b'x', 0x0c]];
        assert!(ja4(&ch).starts_with("t13d1516ac_"));
    }

    #[test]
    fn ja3_string_drops_grease() {
        let (s, h) = ja3(&chrome_like());
        assert_eq!(
            s,
            "771,4865-4866-4867-49195-49199-49196-49200-52393-52392-49171-49172-156-157-47-53,\
             27-0-51-16-17513-23-45-13-5-35-18-43-65281-11-10-21,29-23-24,0"
        );
        // printf %s "$s" | md5sum
        assert_eq!(h, "c000e2caf3a25423f9de6c8a4b12a975");
    }
}
