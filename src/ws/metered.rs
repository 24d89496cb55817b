//! The byte stream under every server-side WebSocket, counted: a socket is an open
//! connection of its API from upgrade to drop, and every write adds the bytes it took (one
//! atomic add per write call, which carries a whole coalesced batch). The connection core
//! reports messages, closes and slow consumers through [`conn::Meter`].

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::conn;
use crate::metrics::WsMeter;

pub struct Metered<S> {
    io: S,
    meter: WsMeter,
}

impl<S> Metered<S> {
    pub fn new(io: S, meter: WsMeter) -> Self {
        meter.connected();
        Self { io, meter }
    }

    fn wrote(&self, r: &Poll<std::io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = r {
            self.meter.wrote(*n as u64);
        }
    }
}

impl<S> Drop for Metered<S> {
    fn drop(&mut self) {
        self.meter.disconnected();
    }
}

impl<S> conn::Meter for Metered<S> {
    fn api(&self) -> &'static str {
        self.meter.api().as_str()
    }

    fn sent(&self, messages: usize) {
        self.meter.sent(messages as u64);
    }

    fn closing(&self, code: u16) {
        self.meter.closing(code);
    }

    fn slow_consumer(&self) {
        self.meter.slow_consumer();
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.wrote(&r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
