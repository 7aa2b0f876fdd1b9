//! Transparent interception on Linux: the socket options that let smtptap take
//! connections the network diverted to it, and find (and reach) the server the
//! client really dialled. Owns only socket options and the loop check; it does
//! not accept, relay or parse anything.
//!
//! ```text
//!  REDIRECT (nat PREROUTING):  client ─▶ 10.0.2.2:25  ──DNAT──▶ proxy 0.0.0.0:2525
//!      original destination = SO_ORIGINAL_DST (IP6T_SO_ORIGINAL_DST for IPv6)
//!  TPROXY (mangle PREROUTING + fwmark policy route to lo):
//!      the packet is not rewritten; the proxy's IP_TRANSPARENT listener accepts it
//!      original destination = the accepted socket's local address
//!      spoof_source: the upstream socket is IP_TRANSPARENT and bound to the
//!      client's IP (port 0) before connect, so the server sees the client.
//! ```
//!
//! Everything goes through socket2's safe wrappers (`#![forbid(unsafe_code)]`
//! holds). socket2 0.5 has no `IPV6_TRANSPARENT`; on Linux `IP_TRANSPARENT`
//! (level `SOL_IP`) set on an IPv6 TCP socket sets the same per-socket
//! transparent flag (the kernel hands `SOL_IP` options of IPv6 sockets to the
//! IPv4 handler), so [`set_ip_transparent_v6`] uses it. Setting it needs
//! `CAP_NET_ADMIN`.
//!
//! Loop protection ([`check_loop`]) is a pure function: an original
//! destination that is the proxy itself would make smtptap connect to itself
//! forever, so such a connection is refused with `upstream.loop_refused`.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::net::{TcpSocket, TcpStream};

use crate::config::TransparentMode;
use crate::proxy::upstream::{ConnectFailure, Connected};

/// The original destination of a connection diverted by iptables/nft
/// `REDIRECT` (or DNAT), IPv4: `SO_ORIGINAL_DST` from conntrack.
#[cfg(target_os = "linux")]
pub fn original_dst_v4(stream: &TcpStream) -> io::Result<SocketAddr> {
    let a = socket2::SockRef::from(stream).original_dst()?;
    a.as_socket().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "SO_ORIGINAL_DST returned a non-IP address",
        )
    })
}

/// The original destination of a diverted IPv6 connection: `IP6T_SO_ORIGINAL_DST`.
#[cfg(target_os = "linux")]
pub fn original_dst_v6(stream: &TcpStream) -> io::Result<SocketAddr> {
    let a = socket2::SockRef::from(stream).original_dst_ipv6()?;
    a.as_socket().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "IP6T_SO_ORIGINAL_DST returned a non-IP address",
        )
    })
}

/// Sets `IP_TRANSPARENT` on an IPv4 socket (TPROXY listener or spoofed-source connect).
#[cfg(target_os = "linux")]
pub fn set_ip_transparent_v4(socket: &TcpSocket) -> io::Result<()> {
    socket2::SockRef::from(socket).set_ip_transparent(true)
}

/// Sets the transparent flag on an IPv6 socket. socket2 0.5 has no
/// `IPV6_TRANSPARENT`; Linux applies `IP_TRANSPARENT` (level `SOL_IP`) to IPv6
/// TCP sockets too, setting the same flag, so that is what this does.
#[cfg(target_os = "linux")]
pub fn set_ip_transparent_v6(socket: &TcpSocket) -> io::Result<()> {
    socket2::SockRef::from(socket).set_ip_transparent(true)
}

/// Not available off Linux.
#[cfg(not(target_os = "linux"))]
pub fn original_dst_v4(_stream: &TcpStream) -> io::Result<SocketAddr> {
    Err(unsupported())
}
/// Not available off Linux.
#[cfg(not(target_os = "linux"))]
pub fn original_dst_v6(_stream: &TcpStream) -> io::Result<SocketAddr> {
    Err(unsupported())
}
/// Not available off Linux.
#[cfg(not(target_os = "linux"))]
pub fn set_ip_transparent_v4(_socket: &TcpSocket) -> io::Result<()> {
    Err(unsupported())
}
/// Not available off Linux.
#[cfg(not(target_os = "linux"))]
pub fn set_ip_transparent_v6(_socket: &TcpSocket) -> io::Result<()> {
    Err(unsupported())
}
#[cfg(not(target_os = "linux"))]
fn unsupported() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "transparent interception (REDIRECT/TPROXY) is only available on Linux",
    )
}

/// Sets the transparent flag on `socket`, whichever its family.
pub fn set_transparent(socket: &TcpSocket, v6: bool) -> io::Result<()> {
    if v6 {
        set_ip_transparent_v6(socket)
    } else {
        set_ip_transparent_v4(socket)
    }
}

/// The server the client really dialled, for an accepted connection.
///
/// - `Redirect`: `SO_ORIGINAL_DST` (conntrack's original tuple). Fails with
///   `ENOENT` when the connection was not NATed (e.g. no REDIRECT rule and no
///   conntrack entry).
/// - `Tproxy`: the accepted socket's local address (TPROXY does not rewrite
///   the packet).
pub fn original_destination(stream: &TcpStream, mode: TransparentMode) -> io::Result<SocketAddr> {
    match mode {
        TransparentMode::Redirect => {
            let local = stream.local_addr()?;
            let dst = match local {
                SocketAddr::V4(_) => original_dst_v4(stream)?,
                SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
                    // An IPv4 client on a dual-stack socket: conntrack is IPv4.
                    Some(_) => original_dst_v4(stream)?,
                    None => original_dst_v6(stream)?,
                },
            };
            Ok(unmap(dst))
        }
        TransparentMode::Tproxy => Ok(unmap(stream.local_addr()?)),
    }
}

fn unmap(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        SocketAddr::V4(_) => a,
    }
}

/// Whether `ip` is one of this host's addresses: binding a socket to it
/// succeeds only then (without `IP_TRANSPARENT`/`IP_FREEBIND`).
pub fn is_local_ip(ip: IpAddr) -> bool {
    if ip.is_loopback() {
        return true;
    }
    if ip.is_unspecified() {
        return true;
    }
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// Why an original destination was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopRefused {
    /// The original destination.
    pub original_dst: SocketAddr,
    /// In words, with what to check.
    pub reason: String,
}

/// Refuses an original destination that is the proxy itself.
///
/// - equal to one of the listening addresses (both modes);
/// - with `Redirect`: the port of any listener on any local address (a client
///   dialling the proxy host directly, or a REDIRECT rule that also catches the
///   proxy's own port);
/// - with `Tproxy`: the port of a wildcard listener (`0.0.0.0`/`[::]`) on a
///   local address.
///
/// `is_local` tells whether an IP belongs to this host ([`is_local_ip`] in
/// production; injected so the rule can be tested without the network).
pub fn check_loop(
    original_dst: SocketAddr,
    mode: TransparentMode,
    listen: &[SocketAddr],
    is_local: impl Fn(IpAddr) -> bool,
) -> Result<(), LoopRefused> {
    let refuse = |reason: String| {
        Err(LoopRefused {
            original_dst,
            reason,
        })
    };
    if listen.contains(&original_dst) {
        return refuse(format!(
            "{original_dst} is one of smtptap's own listening addresses: connecting there would loop; \
             the client dialled the proxy directly, or the interception rule does not match the traffic"
        ));
    }
    let same_port = listen.iter().filter(|l| l.port() == original_dst.port());
    let mut hit = false;
    for l in same_port {
        hit |= match mode {
            TransparentMode::Redirect => true,
            TransparentMode::Tproxy => l.ip().is_unspecified() || l.ip() == original_dst.ip(),
        };
    }
    if hit && is_local(original_dst.ip()) {
        return refuse(format!(
            "{original_dst} is smtptap's own listening port on a local address: connecting there would loop; \
             exclude the proxy host's own addresses from the interception rule"
        ));
    }
    Ok(())
}

/// Connects to `dst` from `client_ip` (port chosen by the kernel) with
/// `IP_TRANSPARENT`, so the server sees the client's address. The reply
/// packets must be routed back to this host (the TPROXY policy route does it).
pub async fn connect_spoofed(
    dst: SocketAddr,
    client_ip: IpAddr,
    timeout: Duration,
) -> Result<Connected, ConnectFailure> {
    let started = Instant::now();
    let fail_with = |code: &'static str, e: String| ConnectFailure {
        code,
        detail: e.clone(),
        tried: vec![format!("{dst} from {client_ip}: {e}")],
    };
    let fail = |e: String| fail_with("other", e);
    let client_ip = match (client_ip, dst) {
        (IpAddr::V6(v6), SocketAddr::V4(_)) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => client_ip,
        },
        _ => client_ip,
    };
    if client_ip.is_ipv4() != dst.is_ipv4() {
        return Err(fail(format!(
            "cannot spoof {client_ip} toward {dst}: the address families differ"
        )));
    }
    let sock = if dst.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| fail_with(crate::event::io_error_code(&e), format!("socket: {e}")))?;
    set_transparent(&sock, dst.is_ipv6())
        .map_err(|e| fail(format!("IP_TRANSPARENT (needs CAP_NET_ADMIN): {e}")))?;
    sock.bind(SocketAddr::new(client_ip, 0))
        .map_err(|e| fail(format!("bind to the client's address: {e}")))?;
    let stream = match tokio::time::timeout(timeout, sock.connect(dst)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(fail_with(crate::event::io_error_code(&e), e.to_string())),
        Err(_) => {
            return Err(fail_with(
                "timeout",
                format!("timed out after {}s", timeout.as_secs()),
            ))
        }
    };
    let _ = stream.set_nodelay(true);
    let local = stream
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::new(client_ip, 0));
    Ok(Connected {
        stream,
        peer: dst,
        local,
        elapsed: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn local(ip: IpAddr) -> bool {
        ip.is_loopback() || ip == "10.77.1.1".parse::<IpAddr>().unwrap()
    }

    #[test]
    fn a_listening_address_is_refused_in_both_modes() {
        for mode in [TransparentMode::Redirect, TransparentMode::Tproxy] {
            let e =
                check_loop(sa("10.77.1.1:2525"), mode, &[sa("10.77.1.1:2525")], local).unwrap_err();
            assert_eq!(e.original_dst, sa("10.77.1.1:2525"));
            assert!(e.reason.contains("own listening addresses"), "{}", e.reason);
        }
    }

    #[test]
    fn redirect_refuses_the_listening_port_on_any_local_address() {
        let listen = [sa("10.77.1.1:2525")];
        let e = check_loop(
            sa("127.0.0.1:2525"),
            TransparentMode::Redirect,
            &listen,
            local,
        )
        .unwrap_err();
        assert!(e.reason.contains("own listening port"), "{}", e.reason);
        // A remote server on the same port is the normal case.
        assert!(check_loop(
            sa("10.77.2.2:2525"),
            TransparentMode::Redirect,
            &listen,
            local
        )
        .is_ok());
        // Another port on a local address (e.g. a local MTA) is fine.
        assert!(check_loop(
            sa("127.0.0.1:25"),
            TransparentMode::Redirect,
            &listen,
            local
        )
        .is_ok());
    }

    #[test]
    fn tproxy_refuses_a_wildcard_listener_port_on_a_local_address_only() {
        let wild = [sa("0.0.0.0:25")];
        assert!(check_loop(sa("10.77.1.1:25"), TransparentMode::Tproxy, &wild, local).is_err());
        assert!(check_loop(sa("10.77.2.2:25"), TransparentMode::Tproxy, &wild, local).is_ok());
        let specific = [sa("10.77.1.1:25")];
        assert!(check_loop(
            sa("127.0.0.1:25"),
            TransparentMode::Tproxy,
            &specific,
            local
        )
        .is_ok());
    }

    #[test]
    fn local_ip_detection() {
        assert!(is_local_ip("127.0.0.1".parse().unwrap()));
        assert!(is_local_ip("::1".parse().unwrap()));
        // TEST-NET-3 is never assigned to this host.
        assert!(!is_local_ip("203.0.113.77".parse().unwrap()));
    }

    #[test]
    fn mapped_addresses_are_unmapped() {
        assert_eq!(unmap(sa("[::ffff:10.77.2.2]:25")), sa("10.77.2.2:25"));
        assert_eq!(unmap(sa("[2001:db8::1]:25")), sa("[2001:db8::1]:25"));
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn redirect_without_nat_is_an_error_not_a_panic() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let c = TcpStream::connect(addr).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        // Without conntrack state for this flow the kernel answers ENOENT; with
        // conntrack loaded it answers the unchanged destination. Either way: no panic.
        match original_destination(&s, TransparentMode::Redirect) {
            Ok(d) => assert_eq!(d, addr),
            Err(e) => assert!(e.raw_os_error().is_some(), "{e}"),
        }
        assert_eq!(
            original_destination(&s, TransparentMode::Tproxy).unwrap(),
            addr
        );
        drop(c);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn transparent_flag_is_set_as_root() {
        // CAP_NET_ADMIN is needed; the test suite runs as root (CI does).
        let v4 = TcpSocket::new_v4().unwrap();
        match set_ip_transparent_v4(&v4) {
            Ok(()) => assert!(socket2::SockRef::from(&v4).ip_transparent().unwrap()),
            Err(e) => panic!("IP_TRANSPARENT failed ({e}): run the tests as root (CAP_NET_ADMIN)"),
        }
        let v6 = TcpSocket::new_v6().unwrap();
        set_ip_transparent_v6(&v6).unwrap();
        assert!(socket2::SockRef::from(&v6).ip_transparent().unwrap());
    }
}
