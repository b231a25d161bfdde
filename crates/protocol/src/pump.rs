//! The pumps both ends of a session share: the single writer of a connection, which
//! batches queued frames into one flush, and the relay between a handed-over stream and
//! its frames.

use bytes::{Bytes, BytesMut};
use futures::{Sink, SinkExt};
use std::future::Future;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Writes everything queued on `rx` to `sink`, flushing once per burst, until every sender
/// is gone (then closes the sink) or the sink fails.
pub async fn write_frames<S, M>(mut sink: S, mut rx: mpsc::Receiver<M>)
where
    S: Sink<M> + Unpin,
{
    while let Some(msg) = rx.recv().await {
        if sink.feed(msg).await.is_err() {
            return;
        }
        while let Ok(more) = rx.try_recv() {
            if sink.feed(more).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
    let _ = sink.close().await;
}

/// How one side spells "bytes for connection N" and "connection N closed".
pub struct ConnFrames<M> {
    pub data: fn(u64, Bytes) -> M,
    pub close: fn(u64) -> M,
}

/// Relays connection `conn`: bytes arriving on `rx` are written to `io`; bytes read from
/// `io` go out as `data` frames when `answer` is set (a mirror's answers are dropped).
/// Ends when `io` closes (sending `close`), when the peer closes and nothing more is
/// expected, or when `stop` completes (no `close`: the whole session is going away).
pub async fn relay<IO, M>(
    conn: u64,
    mut io: IO,
    mut rx: mpsc::Receiver<Bytes>,
    out: mpsc::Sender<M>,
    frames: ConnFrames<M>,
    answer: bool,
    stop: impl Future<Output = ()>,
) where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    tokio::pin!(stop);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut peer_open = true;
    loop {
        buf.reserve(16 * 1024);
        tokio::select! {
            r = io.read_buf(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let data = buf.split().freeze();
                    if answer && out.send((frames.data)(conn, data)).await.is_err() {
                        return;
                    }
                }
            },
            d = rx.recv(), if peer_open => match d {
                Some(d) => if io.write_all(&d).await.is_err() { break },
                None => {
                    // The peer's side is done: pass the half-close on, keep reading answers.
                    peer_open = false;
                    let _ = io.shutdown().await;
                    if !answer { break }
                }
            },
            _ = &mut stop => return,
        }
    }
    if answer {
        let _ = out.send((frames.close)(conn)).await;
    }
}
