//! A tap around the probe's TCP stream: every byte written (the probe's, the
//! client side) and read (the server's), TLS records included, is recorded
//! with the time it crossed, in order, with the FIN of each direction, for
//! the driver to feed to the session core as the relay's tap would.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::event::{Side, Timestamp};

/// One recorded fact of the connection.
#[derive(Debug)]
pub enum Tapped {
    /// Bytes sent by `side` (client: the probe wrote them; server: it read them).
    Data(Side, Timestamp, Vec<u8>),
    /// `side` closed its sending direction.
    Fin(Side, Timestamp),
}

/// What was recorded and not yet taken, shared with the driver.
pub type TapLog = Arc<Mutex<Vec<Tapped>>>;

/// The TCP stream, recording both directions.
#[derive(Debug)]
pub struct TapStream {
    inner: TcpStream,
    log: TapLog,
    server_fin: bool,
}

impl TapStream {
    /// Wraps `inner`, recording into `log`.
    pub fn new(inner: TcpStream, log: TapLog) -> Self {
        TapStream {
            inner,
            log,
            server_fin: false,
        }
    }

    fn record(&self, t: Tapped) {
        if let Ok(mut l) = self.log.lock() {
            l.push(t);
        }
    }
}

impl AsyncRead for TapStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &r {
            let got = &buf.filled()[before..];
            if !got.is_empty() {
                let t = Tapped::Data(Side::Server, Timestamp::now(), got.to_vec());
                self.record(t);
            } else if buf.remaining() > 0 && !self.server_fin {
                self.server_fin = true;
                self.record(Tapped::Fin(Side::Server, Timestamp::now()));
            }
        }
        r
    }
}

impl AsyncWrite for TapStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = &r {
            if *n > 0 {
                let t = Tapped::Data(Side::Client, Timestamp::now(), data[..*n].to_vec());
                self.record(t);
            }
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        if let Poll::Ready(Ok(())) = &r {
            self.record(Tapped::Fin(Side::Client, Timestamp::now()));
        }
        r
    }
}
