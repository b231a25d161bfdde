//! A UDP flow carried as a byte stream: each datagram is a 2-byte big-endian length and its
//! bytes. Both ends of an outgoing UDP flow use it (the target's socket, connected to the
//! destination; `mirrordctl`'s loopback relay, connected to the process's socket once it
//! sent its first datagram), so everything between them (frames, the agent's tunnel)
//! carries it unchanged, and datagram boundaries survive every hop.
//!
//! A flow has no end of its own (UDP has no close): it ends when the stream ends (the
//! session, or the other side, gave it up) or when `stop` fires (the process closed its
//! socket: the layer says so).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::UdpSocket;

/// The largest datagram: a 16-bit length's worth.
const MAX: usize = u16::MAX as usize;

/// Where a flow's datagrams go on this side.
#[derive(Debug, Clone, Copy)]
pub enum Peer {
    /// The socket is connected: `send` and `recv`.
    Connected,
    /// A relay: the first socket to send it a datagram is the process's, and the relay is
    /// connected to it from then on (nobody else on the machine can use the flow); what
    /// comes from the target before that is dropped.
    Learned,
}

/// Carries `sock`'s datagrams as the returned stream's frames, in a task of its own that
/// ends with the stream, the socket's failure, or `stop`.
pub fn carry(
    sock: UdpSocket,
    peer: Peer,
    stop: impl Future<Output = ()> + Send + 'static,
) -> DuplexStream {
    let (ours, theirs) = tokio::io::duplex(4 * (MAX + 2));
    tokio::spawn(async move {
        tokio::select! {
            _ = pump(&sock, peer, ours) => {}
            () = stop => {}
        }
    });
    theirs
}

/// Moves datagrams between `sock` and `stream` until either ends.
pub async fn pump(
    sock: &UdpSocket,
    peer: Peer,
    stream: impl AsyncRead + AsyncWrite,
) -> io::Result<()> {
    let (mut rd, mut wr) = tokio::io::split(stream);
    // A relay's process, once known (the socket is then connected to it).
    let learned: Mutex<Option<SocketAddr>> = Mutex::new(None);
    // Each direction is one loop, so nothing is cut mid-frame when the other ends the flow.
    let up = async {
        let mut buf = vec![0u8; MAX + 2];
        if let Peer::Learned = peer {
            let (n, from) = sock.recv_from(&mut buf[2..]).await?;
            sock.connect(from).await?;
            *learned.lock().expect("flow peer") = Some(from);
            frame(&mut wr, &mut buf, n).await?;
        }
        loop {
            let n = receive(sock, &mut buf[2..]).await?;
            frame(&mut wr, &mut buf, n).await?;
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
            if let Peer::Learned = peer {
                if learned.lock().expect("flow peer").is_none() {
                    continue;
                }
            }
            // A datagram the network refuses is lost, as UDP loses it; the flow goes on.
            // An ICMP error for an earlier one may fail this send: it is tried once more.
            if sock.send(&buf[..len]).await.is_err() {
                let _ = sock.send(&buf[..len]).await;
            }
        }
    };
    tokio::select! {
        r = up => r,
        r = down => r,
    }
}

async fn frame(wr: &mut (impl AsyncWrite + Unpin), buf: &mut [u8], n: usize) -> io::Result<()> {
    buf[..2].copy_from_slice(&(n as u16).to_be_bytes());
    wr.write_all(&buf[..n + 2]).await
}

/// The next datagram of a connected socket.
async fn receive(sock: &UdpSocket, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match sock.recv(buf).await {
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
    use std::time::Duration;

    async fn frame_to(s: &mut DuplexStream, data: &[u8]) {
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
        let mut far = carry(target, Peer::Connected, std::future::pending());
        let relay = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let relay_addr = relay.local_addr().unwrap();
        let mut near = carry(relay, Peer::Learned, std::future::pending());
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
    async fn a_relay_serves_the_first_sender_only_and_ends_when_stopped() {
        let relay = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let relay_addr = relay.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let mut ours = carry(relay, Peer::Learned, async {
            let _ = stopped.await;
        });
        frame_to(&mut ours, b"nobody to send to").await;
        let app = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        app.send_to(b"hello", relay_addr).await.unwrap();
        assert_eq!(unframe(&mut ours).await, b"hello");
        // Another socket on the machine cannot use the flow.
        let other = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        other.send_to(b"intruder", relay_addr).await.unwrap();
        app.send_to(b"again", relay_addr).await.unwrap();
        assert_eq!(unframe(&mut ours).await, b"again");
        frame_to(&mut ours, b"back").await;
        let mut b = [0; 64];
        let (n, from) = app.recv_from(&mut b).await.unwrap();
        assert_eq!((&b[..n], from), (&b"back"[..], relay_addr));
        drop(stop);
        let mut rest = Vec::new();
        let ended = tokio::time::timeout(Duration::from_secs(5), ours.read_to_end(&mut rest)).await;
        assert!(matches!(ended, Ok(Ok(0))), "a stopped flow did not end");
    }
}
