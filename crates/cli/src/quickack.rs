//! Connections to the developer's local process that acknowledge at once.
//!
//! Many servers write an answer's head and body in two writes (Python's `http.server`,
//! most frameworks). With Nagle's algorithm on *their* socket the second write waits for
//! the first one's ACK, and this side, a keep-alive client in request/answer rhythm, is
//! in Linux's delayed-ACK mode: 40 ms for every stolen request (44 ms against 1.3 ms when
//! the server wrote once). The fix has to be on the side that reads: `TCP_QUICKACK`
//! before each read (the kernel drops it again as it sees fit, so it is set every time),
//! as curl-like one-shot clients get for free from a fresh connection. Our own writes go
//! without Nagle (`TCP_NODELAY`).

use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::net::TcpStream;

/// Asks the kernel to acknowledge what arrives at once (see the module's docs).
pub fn ack_now(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).set_tcp_quickack(true);
}

/// `HttpConnector` with `TCP_NODELAY`, whose connections acknowledge at once.
#[derive(Clone)]
pub struct LocalConnector(HttpConnector);

impl LocalConnector {
    pub fn new() -> Self {
        let mut c = HttpConnector::new();
        c.set_nodelay(true);
        Self(c)
    }
}

pub struct QuickAck(TokioIo<TcpStream>);

impl tower_service::Service<http::Uri> for LocalConnector {
    type Response = QuickAck;
    type Error = <HttpConnector as tower_service::Service<http::Uri>>::Error;
    type Future = Pin<Box<dyn Future<Output = Result<QuickAck, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move { connecting.await.map(QuickAck) })
    }
}

impl hyper::rt::Read for QuickAck {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        ack_now(self.0.inner());
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for QuickAck {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl Connection for QuickAck {
    fn connected(&self) -> Connected {
        self.0.connected()
    }
}
