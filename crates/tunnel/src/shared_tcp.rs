//! A TCP socket relayed by its own task that a session's frame reader may also write to
//! directly, so bytes arriving for an idle connection go straight into its socket instead
//! of waking the connection's task (one channel hop, one task wake and often a worker
//! unpark less per chunk; what a minimal relay does).
//!
//! [`SharedTcp`] is the relay task's stream (it owns the socket: when it is dropped the
//! socket closes); [`DirectWriter`] is the frame reader's weak handle. Who may write when
//! is decided by the connection's inbox ([`crate::pump::ConnInbox`]): directly only while
//! nothing is queued for the relay task, so bytes never overtake each other.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The relay task's end: reads and writes the socket like a `TcpStream` does.
pub struct SharedTcp(Arc<TcpStream>, QuickAck);

/// Whether reads ask the kernel to acknowledge at once (`TCP_QUICKACK`): for a socket to
/// a peer that writes its answers in pieces with Nagle's algorithm on, which would
/// otherwise wait out this side's delayed ACK (40 ms) at every answer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum QuickAck {
    Off,
    On,
}

/// The frame reader's end: writes what the socket takes now, never waits.
#[derive(Clone)]
pub struct DirectWriter(Weak<TcpStream>);

/// What a direct write did.
#[derive(Debug, PartialEq, Eq)]
pub enum Direct {
    /// This many bytes are in the socket (maybe fewer than offered).
    Wrote(usize),
    /// Nothing written: the socket is full, failed, or closed; queue the bytes instead
    /// (the relay task meets the same condition and handles it).
    Nothing,
}

impl SharedTcp {
    pub fn new(stream: TcpStream) -> Self {
        Self(Arc::new(stream), QuickAck::Off)
    }

    /// Reads acknowledge what arrived at once (see [`QuickAck`]).
    pub fn acknowledging_at_once(mut self) -> Self {
        self.1 = QuickAck::On;
        self
    }

    pub fn direct_writer(&self) -> DirectWriter {
        DirectWriter(Arc::downgrade(&self.0))
    }
}

impl DirectWriter {
    pub fn try_write(&self, data: &[u8]) -> Direct {
        let Some(stream) = self.0.upgrade() else {
            return Direct::Nothing;
        };
        match stream.try_write(data) {
            Ok(n) => Direct::Wrote(n),
            Err(_) => Direct::Nothing,
        }
    }
}

impl AsyncRead for SharedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.1 == QuickAck::On {
            let _ = socket2::SockRef::from(&*self.0).set_tcp_quickack(true);
        }
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            // Into the buffer's uninitialized part, as `TcpStream::poll_read` does (no
            // zeroing of a 16 KiB buffer per read).
            match self.0.try_read_buf(buf) {
                Ok(_) => return Poll::Ready(Ok(())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SharedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(data) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Shuts the write side (a FIN), as `TcpStream`'s own `poll_shutdown` does.
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(&*self.0).shutdown(std::net::Shutdown::Write))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (SharedTcp, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (SharedTcp::new(s), c)
    }

    #[tokio::test]
    async fn reads_writes_and_half_closes_like_a_tcp_stream() {
        let (mut shared, mut peer) = pair().await;
        peer.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        shared.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        shared.write_all(b"pong").await.unwrap();
        shared.shutdown().await.unwrap();
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"pong", "the peer saw the bytes, then the FIN");
    }

    #[tokio::test]
    async fn direct_writes_reach_the_peer_and_stop_when_the_relay_drops_the_socket() {
        let (shared, mut peer) = pair().await;
        let direct = shared.direct_writer();
        // Writable readiness arrives through the driver; until then nothing is written.
        shared.0.writable().await.unwrap();
        assert_eq!(direct.try_write(b"hello"), Direct::Wrote(5));
        let mut buf = [0u8; 5];
        peer.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        drop(shared);
        assert_eq!(direct.try_write(b"late"), Direct::Nothing);
        let mut rest = Vec::new();
        peer.read_to_end(&mut rest).await.unwrap();
        assert!(
            rest.is_empty(),
            "the socket closed with its owner: {rest:?}"
        );
    }
}
