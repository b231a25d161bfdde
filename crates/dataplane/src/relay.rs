//! Raw byte paths: pass through, hand a whole connection to a stealer, tee copies to mirrors.

use crate::handoff::{Handoff, Io};
use crate::routes::Subscriber;
use bytes::BytesMut;
use std::io;
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Copies of a mirrored connection a slow mirror may fall behind by before it is cut off;
/// the real path never waits for a mirror.
const MIRROR_BACKLOG: usize = 256;

pub async fn connect(upstream: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect(upstream).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

pub async fn pass_through<IO>(mut down: IO, upstream: SocketAddr) -> io::Result<()>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut up = connect(upstream).await?;
    tokio::io::copy_bidirectional(&mut down, &mut up).await?;
    Ok(())
}

/// Hands the connection itself to the stealer: the session relays it, and closes it when
/// the session ends (no zombie connections). Gives the connection back if the session is
/// gone (it ended between the route lookup and now), so the caller can pass it through.
pub async fn steal(
    down: Box<dyn Io>,
    peer: SocketAddr,
    port: u16,
    sub: &Subscriber,
) -> Result<(), Box<dyn Io>> {
    let handoff = Handoff::StolenConnection {
        port,
        peer: peer.to_string(),
        io: down,
    };
    match sub.tx.send(handoff).await {
        Ok(()) => {
            sub.counters.connections.inc();
            Ok(())
        }
        Err(back) => match back.0 {
            Handoff::StolenConnection { io, .. } => Err(io),
            _ => unreachable!("we sent a StolenConnection"),
        },
    }
}

/// Passes the connection through and copies what the client sends to each mirror.
pub async fn tee<IO>(
    down: IO,
    peer: SocketAddr,
    port: u16,
    upstream: SocketAddr,
    mirrors: &[Subscriber],
) -> io::Result<()>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let up = connect(upstream).await?;
    let mut copies: Vec<mpsc::Sender<bytes::Bytes>> = Vec::with_capacity(mirrors.len());
    for m in mirrors {
        let (tx, rx) = mpsc::channel(MIRROR_BACKLOG);
        let handoff = Handoff::MirroredConnection {
            port,
            peer: peer.to_string(),
            rx,
        };
        if m.tx.try_send(handoff).is_ok() {
            copies.push(tx);
        }
    }
    let (mut down_r, mut down_w) = tokio::io::split(down);
    let (mut up_r, mut up_w) = up.into_split();
    let inbound = async {
        let mut buf = BytesMut::with_capacity(16 * 1024);
        loop {
            buf.reserve(16 * 1024);
            if down_r.read_buf(&mut buf).await? == 0 {
                break;
            }
            let chunk = buf.split().freeze();
            up_w.write_all(&chunk).await?;
            // A mirror that cannot keep up loses its copy, never slows the real path.
            copies.retain(|c| c.try_send(chunk.clone()).is_ok());
        }
        up_w.shutdown().await
    };
    let outbound = async {
        tokio::io::copy(&mut up_r, &mut down_w).await?;
        down_w.shutdown().await
    };
    let (a, b) = tokio::join!(inbound, outbound);
    a.and(b)
}
