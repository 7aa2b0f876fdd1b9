//! IP networks (`192.0.2.0/24`, `2001:db8::/32`, or a bare address), as used
//! by `[[destination]]` and the capture filters. One implementation, strict:
//! a network with host bits set is refused rather than silently widened.

use std::fmt;
use std::net::IpAddr;

/// An IP network (`192.0.2.0/24`) or a single address (`/32`, `/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network address (host bits cleared).
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// Parses `IP` or `IP/LEN`; host bits must be zero (a typo like
    /// `192.0.2.1/24` is refused rather than silently widened).
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (s, None),
        };
        let addr: IpAddr = ip.parse().map_err(|_| {
            format!("{s:?} is not an IP address or CIDR network (e.g. \"192.0.2.0/24\")")
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match len {
            None => max,
            Some(l) => match l.parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(format!("{s:?}: {l:?} is not a prefix length (0-{max})")),
            },
        };
        let c = Cidr { addr, prefix };
        if c.network_of(addr) != Some(addr) {
            return Err(format!(
                "{s:?} has host bits set (did you mean {}/{prefix}?)",
                c.network_of(addr)
                    .map(|a| a.to_string())
                    .unwrap_or_default()
            ));
        }
        Ok(c)
    }

    fn network_of(&self, ip: IpAddr) -> Option<IpAddr> {
        match ip {
            IpAddr::V4(v4) if self.addr.is_ipv4() => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                Some(IpAddr::V4((u32::from(v4) & mask).into()))
            }
            IpAddr::V6(v6) if self.addr.is_ipv6() => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                Some(IpAddr::V6((u128::from(v6) & mask).into()))
            }
            _ => None,
        }
    }

    /// Whether `ip` is inside this network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.network_of(ip) == Some(self.addr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_edges() {
        let c = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(c.contains("203.0.113.9".parse().unwrap()));
        assert!(!c.contains("2001:db8::1".parse().unwrap()));
        let h = Cidr::parse("2001:db8::1").unwrap();
        assert_eq!(h.prefix, 128);
        assert!(h.contains("2001:db8::1".parse().unwrap()));
        assert!(!h.contains("2001:db8::2".parse().unwrap()));
        assert!(Cidr::parse("mx.example.com").is_err());
        assert!(Cidr::parse("10.0.0.0/x").is_err());
    }

    #[test]
    fn host_bits_are_refused_and_mapped_v4_matches() {
        let e = Cidr::parse("192.0.2.1/24").unwrap_err();
        assert!(
            e.contains("host bits set") && e.contains("192.0.2.0/24"),
            "{e}"
        );
        let c = Cidr::parse("192.0.2.0/24").unwrap();
        assert!(c.contains("::ffff:192.0.2.7".parse().unwrap()));
        assert_eq!(c.to_string(), "192.0.2.0/24");
        assert!(Cidr::parse("10.0.0.0/33").is_err());
    }
}
