//! A UDP flow carried as a byte stream: each datagram is a 2-byte big-endian length and its
//! bytes. Both ends of an outgoing UDP flow use it (the target's socket, connected to the
//! destination; `mirrordctl`'s loopback relay, which learns the process's address from
//! its first datagram), so everything between them (frames, the agent's tunnel) carries
//! it unchanged, and datagram boundaries survive every hop.
//!
//! A flow has no end of its own (UDP has no close): it ends when the stream ends (the
//! session or the other side gave it up) or after [`IDLE`] without a datagram either way.

use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::UdpSocket;

/// A flow quiet this long in both directions is ended (mirrord's agent forgets idle UDP
/// flows too); the process's next datagram then meets a closed relay, as after a NAT's
/// timeout.
pub const IDLE: Duration = Duration::from_secs(300);
/// The largest datagram: a 16-bit length's worth.
const MAX: usize = u16::MAX as usize;

/// Where a flow's datagrams go on this side.
#[derive(Debug, Clone, Copy)]
pub enum Peer {
    /// The socket is connected: `send` and `recv`.
    Connected,
    /// A relay: datagrams come from the process, whose address is learned from them
    /// (the latest sender wins); those arriving before it spoke are dropped.
    Learned,
}

/// Carries `sock`'s datagrams as the returned stream's frames, in a task of its own that
/// ends with the stream, the socket's failure, or [`IDLE`].
pub fn carry(sock: UdpSocket, peer: Peer) -> DuplexStream {
    let (ours, theirs) = tokio::io::duplex(4 * (MAX + 2));
    tokio::spawn(async move {
        let _ = pump(&sock, peer, ours, IDLE).await;
    });
    theirs
}

/// Moves datagrams between `sock` and `stream` until either ends or nothing moved for `idle`.
pub async fn pump(
    sock: &UdpSocket,
    peer: Peer,
    stream: impl AsyncRead + AsyncWrite,
    idle: Duration,
) -> io::Result<()> {
    let (mut rd, mut wr) = tokio::io::split(stream);
    // The process's address (a relay's), and when anything last moved.
    let to: Mutex<Option<SocketAddr>> = Mutex::new(None);
    let last = Mutex::new(Instant::now());
    let moved = || *last.lock().expect("flow clock") = Instant::now();
    // Each direction is one loop, so nothing is cut mid-frame when another ends the flow.
    let up = async {
        let mut buf = vec![0u8; MAX + 2];
        loop {
            let (n, from) = receive(sock, peer, &mut buf[2..]).await?;
            if from.is_some() {
                *to.lock().expect("flow peer") = from;
            }
            moved();
            buf[..2].copy_from_slice(&(n as u16).to_be_bytes());
            wr.write_all(&buf[..n + 2]).await?;
        }
    };
    let down = async {
        let mut buf = vec![0u8; MAX];
        loop {
            let len = match rd.read_u16().await {
                Ok(l) => usize::from(l),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            };
            rd.read_exact(&mut buf[..len]).await?;
            moved();
            let dest = *to.lock().expect("flow peer");
            // A datagram the network refuses is lost, as UDP loses it; the flow goes on.
            let _ = match (peer, dest) {
                (Peer::Connected, _) => sock.send(&buf[..len]).await,
                (Peer::Learned, Some(dest)) => sock.send_to(&buf[..len], dest).await,
                (Peer::Learned, None) => continue,
            };
        }
    };
    let quiet = async {
        loop {
            let since = *last.lock().expect("flow clock");
            if since.elapsed() >= idle {
                return;
            }
            tokio::time::sleep_until((since + idle).into()).await;
        }
    };
    tokio::select! {
        r = up => r,
        r = down => r,
        () = quiet => Ok(()),
    }
}

async fn receive(
    sock: &UdpSocket,
    peer: Peer,
    buf: &mut [u8],
) -> io::Result<(usize, Option<SocketAddr>)> {
    loop {
        let got = match peer {
            Peer::Connected => sock.recv(buf).await.map(|n| (n, None)),
            Peer::Learned => sock.recv_from(buf).await.map(|(n, a)| (n, Some(a))),
        };
        match got {
            // An ICMP error for an earlier datagram (the destination's port is closed)
            // fails the next receive on a connected socket: not the flow's end.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn frame(s: &mut DuplexStream, data: &[u8]) {
        s.write_u16(data.len() as u16).await.unwrap();
        s.write_all(data).await.unwrap();
    }

    async fn unframe(s: &mut DuplexStream) -> Vec<u8> {
        let n = s.read_u16().await.unwrap();
        let mut b = vec![0; usize::from(n)];
        s.read_exact(&mut b).await.unwrap();
        b
    }

    /// An echo server, a flow from a connected socket to it, a relay in front of the flow:
    /// what the process sends to the relay comes back datagram for datagram, empty and
    /// largest included.
    #[tokio::test]
    async fn datagrams_cross_both_ends_with_their_boundaries() {
        let echo = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let mut b = vec![0; MAX];
            while let Ok((n, from)) = echo.recv_from(&mut b).await {
                let _ = echo.send_to(&b[..n], from).await;
            }
        });
        let target = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        target.connect(echo_addr).await.unwrap();
        let mut far = carry(target, Peer::Connected);
        let relay = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let relay_addr = relay.local_addr().unwrap();
        let mut near = carry(relay, Peer::Learned);
        tokio::spawn(async move {
            let _ = tokio::io::copy_bidirectional(&mut far, &mut near).await;
        });

        let app = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        app.connect(relay_addr).await.unwrap();
        let big = vec![7u8; 60_000];
        for d in [&b"one"[..], b"", &big, b"two"] {
            app.send(d).await.unwrap();
            let mut b = vec![0; MAX];
            let n = tokio::time::timeout(Duration::from_secs(5), app.recv(&mut b))
                .await
                .expect("echoed")
                .unwrap();
            assert_eq!(&b[..n], d);
        }
    }

    #[tokio::test]
    async fn a_relay_drops_what_comes_before_the_process_spoke_and_ends_when_idle() {
        let relay = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let relay_addr = relay.local_addr().unwrap();
        let (mut ours, theirs) = tokio::io::duplex(1 << 20);
        let flow = tokio::spawn(async move {
            pump(&relay, Peer::Learned, theirs, Duration::from_millis(300)).await
        });
        frame(&mut ours, b"nobody to send to").await;
        let app = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        app.send_to(b"hello", relay_addr).await.unwrap();
        assert_eq!(unframe(&mut ours).await, b"hello");
        frame(&mut ours, b"back").await;
        let mut b = [0; 64];
        let (n, from) = app.recv_from(&mut b).await.unwrap();
        assert_eq!((&b[..n], from), (&b"back"[..], relay_addr));
        let ended = tokio::time::timeout(Duration::from_secs(5), flow).await;
        assert!(matches!(ended, Ok(Ok(Ok(())))), "an idle flow did not end");
    }
}
