//! Stream adaptors of intercept mode: a socket that offers every byte it
//! carries to the tap as one leg's wire bytes ([`LegStream`]), the buffered
//! ClientHello replayed before the socket ([`Replay`]), and a TLS read half
//! on which a peer's close without `close_notify` is an ordinary end
//! ([`EofTolerant`]: many SMTP clients close the socket after QUIT).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::Tapped;
use crate::event::{Leg, Side, Timestamp};
use crate::proxy::relay::Tap;

/// A socket of one leg whose reads (sent by the peer) and writes (sent by
/// smtptap) are offered to the tap as that leg's wire bytes.
pub(super) struct LegStream<S> {
    pub(super) inner: S,
    leg: Leg,
    tap: Tap,
    /// Who smtptap is on this leg: the server (client leg) or the client.
    us: Side,
    read_fin: bool,
    write_fin: bool,
    /// Read one TLS record at a time (during the handshake, when secrets
    /// are embedded): rustls then derives a key, and logs it, before the
    /// first record it protects is read and tapped, so the capture's
    /// Decryption Secrets Block precedes that record.
    bounded: bool,
    /// Header bytes of the current record read so far, and its length.
    hdr: [u8; 5],
    hdr_len: usize,
    body_left: usize,
    /// Bounded mode: the last record read, offered to the tap only at the
    /// next read (after rustls processed it and logged the keys it yields:
    /// Wireshark needs a secret before the record that starts its use).
    pending: Vec<u8>,
}

impl<S> LegStream<S> {
    pub(super) fn new(inner: S, leg: Leg, tap: Tap) -> Self {
        let us = match leg {
            Leg::ClientProxy => Side::Server,
            _ => Side::Client,
        };
        LegStream {
            inner,
            leg,
            tap,
            us,
            read_fin: false,
            write_fin: false,
            bounded: false,
            hdr: [0; 5],
            hdr_len: 0,
            body_left: 0,
            pending: Vec::new(),
        }
    }

    fn flush_pending(&mut self) {
        if !self.pending.is_empty() {
            let p = std::mem::take(&mut self.pending);
            self.offer(self.us.peer(), &p);
        }
    }

    /// Reads stop at TLS record boundaries until [`Self::unbound`].
    pub(super) fn bounded(mut self, on: bool) -> Self {
        self.bounded = on;
        self
    }

    /// Back to reads of any size (after the handshake).
    pub(super) fn unbound(&mut self) {
        self.bounded = false;
        self.flush_pending();
    }

    /// Most bytes the next read may take, when bounded.
    fn limit(&self) -> usize {
        if self.body_left > 0 {
            self.body_left
        } else {
            5 - self.hdr_len
        }
    }

    fn account(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.body_left > 0 {
                self.body_left -= 1;
            } else {
                self.hdr[self.hdr_len] = b;
                self.hdr_len += 1;
                if self.hdr_len == 5 {
                    self.body_left = usize::from(u16::from_be_bytes([self.hdr[3], self.hdr[4]]));
                    self.hdr_len = 0;
                }
            }
        }
    }

    fn offer(&self, side: Side, bytes: &[u8]) {
        let len = bytes.len();
        self.tap.intercept(
            side,
            Tapped::Wire {
                leg: self.leg,
                side,
                ts: Timestamp::now(),
                bytes: Bytes::copy_from_slice(bytes),
            },
            len,
        );
    }

    fn fin(&self, side: Side) {
        self.tap.intercept(
            side,
            Tapped::WireFin {
                leg: self.leg,
                side,
                ts: Timestamp::now(),
            },
            0,
        );
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for LegStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.bounded && buf.remaining() > 0 {
            let limit = self.limit().min(buf.remaining());
            let mut tmp = ReadBuf::new(buf.initialize_unfilled_to(limit));
            let r = Pin::new(&mut self.inner).poll_read(cx, &mut tmp);
            let n = tmp.filled().len();
            if let Poll::Ready(Ok(())) = &r {
                let got = tmp.filled().to_vec();
                self.account(&got);
                let peer = self.us.peer();
                // The previous record was processed: its keys are logged.
                self.flush_pending();
                if got.is_empty() {
                    if !self.read_fin {
                        self.read_fin = true;
                        self.fin(peer);
                    }
                } else {
                    self.pending = got;
                }
                buf.advance(n);
            }
            return r;
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &r {
            let peer = self.us.peer();
            let new = buf.filled().get(before..).unwrap_or(&[]);
            if new.is_empty() {
                if !self.read_fin {
                    self.read_fin = true;
                    self.fin(peer);
                }
            } else {
                self.offer(peer, new);
            }
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for LegStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            let us = self.us;
            self.offer(us, buf.get(..*n).unwrap_or(&[]));
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        if r.is_ready() && !self.write_fin {
            self.write_fin = true;
            let us = self.us;
            self.fin(us);
        }
        r
    }
}

/// Bytes already read from a socket (the buffered ClientHello), handed out
/// again before the socket's own: the TLS acceptor sees the stream whole.
pub(super) struct Replay<S> {
    prefix: Bytes,
    pub(super) inner: S,
}

impl<S> Replay<S> {
    pub(super) fn new(prefix: Bytes, inner: S) -> Self {
        Replay { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let head = self.prefix.split_to(n);
            buf.put_slice(&head);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A decrypted read half on which the peer closing the socket without a
/// TLS `close_notify` reads as an ordinary end of stream.
pub(super) struct EofTolerant<R>(pub(super) R);

impl<R: AsyncRead + Unpin> AsyncRead for EofTolerant<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.0).poll_read(cx, buf) {
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Poll::Ready(Ok(())),
            other => other,
        }
    }
}

impl<S> Drop for LegStream<S> {
    fn drop(&mut self) {
        // A handshake that failed still reports the last record (an alert).
        self.flush_pending();
    }
}

/// A TLS write half whose writes complete only once flushed to the socket.
/// The relay's pump writes a chunk and goes back to reading; a TLS stream
/// may keep part of an accepted chunk in its buffer until the next write,
/// which for the last chunk of a message (`.` CRLF) never comes: the
/// session would stall. Here a write returns only when its records are out.
pub(super) struct Flushed<W> {
    inner: W,
    /// Bytes the inner stream accepted whose flush is still pending.
    accepted: Option<usize>,
}

impl<W> Flushed<W> {
    pub(super) fn new(inner: W) -> Self {
        Flushed {
            inner,
            accepted: None,
        }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Flushed<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = match self.accepted {
            Some(n) => n,
            None => match Pin::new(&mut self.inner).poll_write(cx, buf) {
                Poll::Ready(Ok(n)) => n,
                other => return other,
            },
        };
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Ready(Ok(())) => {
                self.accepted = None;
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => {
                self.accepted = None;
                Poll::Ready(Err(e))
            }
            Poll::Pending => {
                self.accepted = Some(n);
                Poll::Pending
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
