//! The cleartext phase of an intercepted STARTTLS session: bytes relayed
//! verbatim both ways (and tapped as the relay taps them), read by an SMTP
//! observer of this controller's own so that the relay stops exactly at
//! the boundary: after the server's 220 to STARTTLS, with the client's
//! bytes sent after its STARTTLS line (if any) held, not forwarded. A
//! refused STARTTLS forwards the held bytes and goes on; a cleartext MAIL,
//! a confused observer or a FIN hands the rest to the ordinary relay. A
//! client whose first bytes are a TLS handshake record, while the server
//! says nothing for [`GREETING_WAIT`], is implicit TLS (SMTPS) and is
//! intercepted from its first byte, as when `implicit_tls` is configured.
//! The session's deadlines and abort are enforced around this phase by
//! `intercept::run`'s guard, which this phase feeds (bytes moved, the
//! client's unfinished line) through an `Activity`.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::event::{Side, Timestamp};
use crate::proxy::relay::{Activity, Tap, READ_CHUNK};
use crate::session::DirEnd;
use crate::smtp::{MarkKind, Progress, SmtpEvent, SmtpLimits, SmtpObserver};

/// Where the cleartext phase ended.
pub(super) enum Boundary {
    /// The server said 220 to STARTTLS; nothing after it was forwarded.
    /// `held`: client bytes sent after the STARTTLS line (the start of its ClientHello).
    StartTls { held: Vec<u8> },
    /// The client spoke TLS first: its first bytes are a TLS handshake
    /// record and the server has sent nothing yet (SMTPS without
    /// `implicit_tls` configured). Nothing was forwarded; `held` is the
    /// start of its ClientHello.
    ImplicitTls { held: Vec<u8> },
    /// Nothing to intercept: the ordinary relay takes over (nothing pending).
    Relay,
    /// The session ended here.
    Ended { client: DirEnd, server: DirEnd },
}

/// Bytes forwarded in the cleartext phase, per direction.
#[derive(Default)]
pub(super) struct Moved {
    pub client: u64,
    pub server: u64,
}

/// Runs the cleartext phase on `client` and `server` until the boundary.
pub(super) async fn run(
    client: &mut TcpStream,
    server: &mut TcpStream,
    tap: &Tap,
    activity: &Activity,
    moved: &mut Moved,
) -> Boundary {
    let mut obs = SmtpObserver::new(SmtpLimits::default());
    let mut cbuf = BytesMut::with_capacity(READ_CHUNK);
    let mut sbuf = BytesMut::with_capacity(READ_CHUNK);
    let mut held: Option<Vec<u8>> = None;
    let mut out = Vec::new();
    let mut marks = Vec::new();
    loop {
        if cbuf.capacity() < READ_CHUNK {
            cbuf.reserve(READ_CHUNK);
        }
        if sbuf.capacity() < READ_CHUNK {
            sbuf.reserve(READ_CHUNK);
        }
        tokio::select! {
            r = client.read_buf(&mut cbuf), if held.is_none() => {
                let n = match r {
                    Ok(0) => return Boundary::Relay,
                    Ok(n) => n,
                    Err(e) => return Boundary::Ended {
                        client: DirEnd::io("reading from client", &e),
                        server: DirEnd::PeerFailed,
                    },
                };
                let chunk = cbuf.split_to(n).freeze();
                activity.touch();
                activity.client_bytes(&chunk);
                // No SMTP line starts with 0x16 (a TLS handshake record): a
                // client speaking TLS first is SMTPS, unless the server
                // greets in cleartext after all (a TLS client on a STARTTLS
                // port, which the ordinary path reports as such).
                if moved.client == 0
                    && moved.server == 0
                    && chunk.first() == Some(&0x16)
                    && server_silent(server).await
                {
                    return Boundary::ImplicitTls { held: chunk.to_vec() };
                }
                out.clear();
                marks.clear();
                obs.feed(Side::Client, &chunk, &mut out, &mut marks);
                let cut = marks
                    .iter()
                    .find(|m| m.kind == MarkKind::Held)
                    .map(|m| m.range.start.min(chunk.len()))
                    .unwrap_or(chunk.len());
                let head = chunk.slice(..cut);
                if cut < chunk.len() {
                    held = Some(chunk.slice(cut..).to_vec());
                }
                if !head.is_empty() {
                    tap.data(Side::Client, Timestamp::now(), head.clone());
                    if let Err(e) = server.write_all(&head).await {
                        return Boundary::Ended {
                            client: DirEnd::io("writing to server", &e),
                            server: DirEnd::PeerFailed,
                        };
                    }
                    moved.client += head.len() as u64;
                    activity.touch();
                }
                let mail = out.iter().any(|e| matches!(e, SmtpEvent::Command { verb, .. } if verb.eq_ignore_ascii_case("MAIL")));
                if obs.is_desynced() || mail {
                    if let Some(h) = held.take() {
                        return forward_held(server, tap, h, moved).await;
                    }
                    return Boundary::Relay;
                }
                if held.is_none() && pending_starttls(&out) {
                    // STARTTLS sent: wait for its reply before reading the client again.
                    held = Some(Vec::new());
                }
            }
            r = server.read_buf(&mut sbuf) => {
                let n = match r {
                    Ok(0) => {
                        if let Some(h) = held.take() {
                            return forward_held(server, tap, h, moved).await;
                        }
                        return Boundary::Relay;
                    }
                    Ok(n) => n,
                    Err(e) => return Boundary::Ended {
                        client: DirEnd::PeerFailed,
                        server: DirEnd::io("reading from server", &e),
                    },
                };
                let chunk = sbuf.split_to(n).freeze();
                activity.touch();
                out.clear();
                marks.clear();
                let progress = obs.feed(Side::Server, &chunk, &mut out, &mut marks);
                let (head, rest) = match &progress {
                    Progress::StartTls { server_leftover, .. } => {
                        let cut = chunk.len().saturating_sub(server_leftover.len());
                        (chunk.slice(..cut), chunk.slice(cut..))
                    }
                    Progress::Continue => (chunk.clone(), chunk.slice(chunk.len()..)),
                };
                tap.data(Side::Server, Timestamp::now(), head.clone());
                if let Err(e) = client.write_all(&head).await {
                    return Boundary::Ended {
                        client: DirEnd::PeerFailed,
                        server: DirEnd::io("writing to client", &e),
                    };
                }
                moved.server += head.len() as u64;
                activity.touch();
                match progress {
                    Progress::StartTls { .. } if rest.is_empty() => {
                        return Boundary::StartTls { held: held.take().unwrap_or_default() };
                    }
                    Progress::StartTls { .. } => {
                        // The server spoke first after its 220: not a TLS
                        // server's behaviour. Pass everything on untouched.
                        tap.data(Side::Server, Timestamp::now(), rest.clone());
                        if client.write_all(&rest).await.is_err() {
                            return Boundary::Relay;
                        }
                        moved.server += rest.len() as u64;
                        let h = held.take().unwrap_or_default();
                        return forward_held(server, tap, h, moved).await;
                    }
                    Progress::Continue => {}
                }
                let refused = out.iter().any(|e| matches!(e, SmtpEvent::StartTls { accepted: false, .. }));
                if refused || obs.is_desynced() {
                    if let Some(h) = held.take() {
                        if obs.is_desynced() {
                            return forward_held(server, tap, h, moved).await;
                        }
                        if let Boundary::Ended { client, server } =
                            forward_held(server, tap, h, moved).await
                        {
                            return Boundary::Ended { client, server };
                        }
                    }
                    if obs.is_desynced() {
                        return Boundary::Relay;
                    }
                }
            }
        }
    }
}

/// How long a server may take to greet before a client that spoke TLS first
/// is taken as SMTPS. An SMTPS server never speaks first; a STARTTLS server
/// greets at once (one delaying its greeting beyond this is taken as SMTPS,
/// and the upstream handshake then fails on its greeting).
pub(super) const GREETING_WAIT: Duration = Duration::from_millis(500);

/// Whether the server says nothing for [`GREETING_WAIT`] (its bytes, if
/// any, stay in the socket for the ordinary path to read).
async fn server_silent(server: &TcpStream) -> bool {
    let mut one = [0u8; 1];
    tokio::time::timeout(GREETING_WAIT, server.peek(&mut one))
        .await
        .is_err()
}

/// Whether the client's latest commands include a STARTTLS awaiting its reply.
fn pending_starttls(out: &[SmtpEvent]) -> bool {
    out.iter().any(
        |e| matches!(e, SmtpEvent::Command { verb, .. } if verb.eq_ignore_ascii_case("STARTTLS")),
    )
}

/// Forwards bytes the client sent after STARTTLS once they turned out not
/// to start TLS here; the ordinary relay goes on.
async fn forward_held(
    server: &mut TcpStream,
    tap: &Tap,
    held: Vec<u8>,
    moved: &mut Moved,
) -> Boundary {
    if held.is_empty() {
        return Boundary::Relay;
    }
    tap.data(
        Side::Client,
        Timestamp::now(),
        bytes::Bytes::from(held.clone()),
    );
    if let Err(e) = server.write_all(&held).await {
        return Boundary::Ended {
            client: DirEnd::io("writing to server", &e),
            server: DirEnd::PeerFailed,
        };
    }
    moved.client += held.len() as u64;
    Boundary::Relay
}
