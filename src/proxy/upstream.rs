//! Connecting to the upstream server: resolve the host name at connect time,
//! try each address in turn within one overall connect timeout, set
//! TCP_NODELAY. Owns nothing else.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::config::Upstream;

/// A successful upstream connection.
#[derive(Debug)]
pub struct Connected {
    /// The socket, with TCP_NODELAY set.
    pub stream: TcpStream,
    /// The address connected to.
    pub peer: SocketAddr,
    /// Our local address on that connection.
    pub local: SocketAddr,
    /// How long the connect took (resolution included).
    pub elapsed: Duration,
}

/// Why the upstream could not be reached (the session core's vocabulary).
pub use crate::session::UpstreamFailure as ConnectFailure;

/// Resolves and connects within `timeout` overall.
pub async fn connect(up: &Upstream, timeout: Duration) -> Result<Connected, ConnectFailure> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + timeout;
    let target = (up.host.as_str(), up.port);
    // An IP literal needs no resolver (tokio's lookup_host would still hop to
    // the blocking pool for it).
    let resolved = match up.host.parse::<std::net::IpAddr>() {
        Ok(ip) => Ok(Ok(vec![SocketAddr::new(ip, up.port)])),
        Err(_) => tokio::time::timeout_at(deadline, tokio::net::lookup_host(target))
            .await
            .map(|r| r.map(|it| it.collect::<Vec<_>>())),
    };
    let addrs: Vec<SocketAddr> = match resolved {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => {
            return Err(ConnectFailure {
                code: "resolve",
                detail: format!("cannot resolve {}: {e}", up.host),
                tried: Vec::new(),
            })
        }
        Err(_) => {
            return Err(ConnectFailure {
                code: "timeout",
                detail: format!(
                    "resolving {} timed out after {}s",
                    up.host,
                    timeout.as_secs()
                ),
                tried: Vec::new(),
            })
        }
    };
    if addrs.is_empty() {
        return Err(ConnectFailure {
            code: "resolve",
            detail: format!("no address for {}", up.host),
            tried: Vec::new(),
        });
    }
    let mut tried = Vec::new();
    let mut last = String::new();
    let mut code = "other";
    for addr in addrs {
        match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                let local = stream
                    .local_addr()
                    .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
                return Ok(Connected {
                    stream,
                    peer: addr,
                    local,
                    elapsed: started.elapsed(),
                });
            }
            Ok(Err(e)) => {
                last = e.to_string();
                code = crate::event::io_error_code(&e);
                tried.push(format!("{addr}: {e}"));
            }
            Err(_) => {
                code = "timeout";
                last = format!("timed out after {}s", timeout.as_secs());
                tried.push(format!("{addr}: {last}"));
                break;
            }
        }
    }
    Err(ConnectFailure {
        code,
        detail: last,
        tried,
    })
}
