//! The header read timeout, kept in front of hyper's HTTP/1 server.
//!
//! [`HeadGate`] follows the client's requests ([`Framer`]) and hands hyper a request head
//! only once it is complete. While hyper waits for a head (the first one, or the next one
//! on a kept-alive connection) a timer runs: a head still incomplete when it fires is
//! answered `408 Request Timeout` and the connection closed (a client that trickles its
//! head, slowloris-style, holds nothing for long); a connection that sent nothing at all is
//! closed without a word, as servers do with idle connections. hyper's own timeout closes
//! without any status, which is why this lives here. Bodies pass straight through.

use crate::h1::{Event, Framer};
use bytes::{Buf, Bytes, BytesMut};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

const READ_CHUNK: usize = 8 * 1024;

fn request_timeout_response(timeout: Duration) -> Bytes {
    let body = format!(
        "mirrord: the request head did not arrive within {timeout:?} (header_read_timeout)\n"
    );
    Bytes::from(format!(
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    ))
}

enum State {
    Open,
    /// Writing the 408; this much of it is out.
    Refusing(usize),
    /// Reads return end of stream: hyper closes the connection.
    Closed,
}

pub struct HeadGate<T> {
    io: T,
    framer: Framer,
    /// Bytes read and not yet given to hyper.
    pending: BytesMut,
    /// `pending[..released]` may go to hyper; `pending[released..scanned]` is a head
    /// still arriving.
    released: usize,
    scanned: usize,
    timeout: Duration,
    /// Runs while hyper waits for a head.
    timer: Option<Pin<Box<Sleep>>>,
    state: State,
    eof: bool,
    /// hyper wrote bytes it has not flushed yet: no 408 may cut in.
    unflushed: bool,
}

impl<T> HeadGate<T> {
    /// `prefix`: bytes already read from `io`; `first`: when the first head must be in.
    pub fn new(prefix: Bytes, io: T, timeout: Duration, first: Instant) -> Self {
        let mut me = Self {
            io,
            framer: Framer::requests(),
            pending: BytesMut::from(&prefix[..]),
            released: 0,
            scanned: 0,
            timeout,
            timer: Some(Box::pin(tokio::time::sleep_until(first))),
            state: State::Open,
            eof: false,
            unflushed: false,
        };
        me.scan();
        me
    }

    /// Runs the framer over what was read; releases whatever is not part of an incomplete
    /// head.
    fn scan(&mut self) {
        while self.scanned < self.pending.len() {
            let (n, ev) = self.framer.step(&self.pending[self.scanned..], None);
            self.scanned += n;
            match ev {
                Some(Event::HeadStart) => self.released = self.scanned,
                Some(Event::Request(_)) => self.timer = None,
                _ => {}
            }
            if !self.framer.in_head() {
                self.released = self.scanned;
            }
        }
    }

    /// hyper is about to wait for bytes it cannot have yet.
    fn waiting_for_head(&self) -> bool {
        self.framer.is_idle() || self.framer.in_head()
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> HeadGate<T> {
    fn poll_refuse(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let msg = request_timeout_response(self.timeout);
        while let State::Refusing(done) = self.state {
            if done == msg.len() {
                ready!(Pin::new(&mut self.io).poll_flush(cx))?;
                self.state = State::Closed;
                break;
            }
            match ready!(Pin::new(&mut self.io).poll_write(cx, &msg[done..])) {
                Ok(0) | Err(_) => self.state = State::Closed,
                Ok(n) => self.state = State::Refusing(done + n),
            }
        }
        Poll::Ready(Ok(()))
    }

    fn on_timeout(&mut self) {
        let partial = self.scanned > self.released;
        if partial && !self.unflushed {
            tracing::debug!(timeout = ?self.timeout, "request head too slow; answering 408");
            self.state = State::Refusing(0);
        } else {
            tracing::debug!(timeout = ?self.timeout, "no request head in time; closing");
            self.state = State::Closed;
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for HeadGate<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = &mut *self;
        loop {
            match me.state {
                State::Open => {}
                State::Refusing(_) => {
                    ready!(me.poll_refuse(cx))?;
                    continue;
                }
                State::Closed => return Poll::Ready(Ok(())),
            }
            if me.released > 0 {
                let n = me.released.min(buf.remaining());
                buf.put_slice(&me.pending[..n]);
                me.pending.advance(n);
                me.released -= n;
                me.scanned -= n;
                return Poll::Ready(Ok(()));
            }
            if me.eof {
                return Poll::Ready(Ok(()));
            }
            if me.waiting_for_head() {
                let timeout = me.timeout;
                let timer = me
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if timer.as_mut().poll(cx).is_ready() {
                    me.on_timeout();
                    continue;
                }
            } else {
                me.timer = None;
            }
            me.pending.reserve(READ_CHUNK);
            let n = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut me.io),
                cx,
                &mut me.pending
            ))?;
            if n == 0 {
                me.eof = true;
            }
            me.scan();
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for HeadGate<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.io).poll_write(cx, buf))?;
        self.unflushed |= n > 0;
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, bufs))?;
        self.unflushed |= n > 0;
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(Pin::new(&mut self.io).poll_flush(cx))?;
        self.unflushed = false;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn complete_heads_pass_slow_ones_get_408() {
        let (client, server) = tokio::io::duplex(4096);
        let mut gate = HeadGate::new(
            Bytes::from_static(b"GET /a HTTP/1.1\r\n\r\nGET /b HT"),
            server,
            Duration::from_secs(2),
            Instant::now() + Duration::from_secs(2),
        );
        let mut client = client;
        // The complete head is handed over at once; the partial one is held back.
        let mut buf = [0u8; 64];
        let n = gate.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"GET /a HTTP/1.1\r\n\r\n");
        client.write_all(b"TP/1.1\r\nhost: x").await.unwrap();
        // The head never ends: after the timeout, a 408 goes out and reads end.
        let n = gate.read(&mut buf).await.unwrap();
        assert_eq!(n, 0);
        let mut got = vec![0u8; 512];
        let n = client.read(&mut got).await.unwrap();
        let text = String::from_utf8_lossy(&got[..n]);
        assert!(
            text.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{text}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn bodies_pass_and_an_idle_connection_closes_silently() {
        let (mut client, server) = tokio::io::duplex(4096);
        let mut gate = HeadGate::new(
            Bytes::new(),
            server,
            Duration::from_secs(2),
            Instant::now() + Duration::from_secs(2),
        );
        client
            .write_all(b"POST / HTTP/1.1\r\ncontent-length: 4\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 256];
        let n = gate.read(&mut buf).await.unwrap();
        assert!(buf[..n].ends_with(b"\r\n\r\n"));
        // A body slower than the timeout is not a head: no 408.
        tokio::time::sleep(Duration::from_secs(5)).await;
        client.write_all(b"body").await.unwrap();
        let n = gate.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"body");
        // Then nothing: closed quietly when the timer fires.
        assert_eq!(gate.read(&mut buf).await.unwrap(), 0);
        drop(gate);
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    }
}
