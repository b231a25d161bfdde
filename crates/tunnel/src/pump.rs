//! The pumps both ends of a session share: the single writer of a connection, which
//! batches queued frames into one flush, and the relay between a handed-over stream and
//! its frames.

use crate::shared_tcp::{Direct, DirectWriter};
use bytes::{Buf, Bytes, BytesMut};
use futures::{Sink, SinkExt};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
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

/// Bytes the peer may have queued for one connection before that connection is closed
/// rather than waited for: a consumer that stops reading costs its own connection, never
/// the session's other connections or its pings.
pub const CONN_BACKLOG_LIMIT: usize = 8 * 1024 * 1024;

/// Where a session's frame loop puts bytes for one connection. Never blocks.
pub struct ConnInbox {
    tx: mpsc::UnboundedSender<Bytes>,
    shared: Arc<Backlog>,
}

/// The connection's end of its inbox, read by [`relay`].
pub struct ConnOutlet {
    rx: mpsc::UnboundedReceiver<Bytes>,
    shared: Arc<Backlog>,
}

/// What both ends of a connection's inbox share.
#[derive(Default)]
struct Backlog {
    /// Bytes pushed that [`relay`] has not finished writing (taken and written).
    queued: AtomicUsize,
    /// Set once the connection's socket is known to be a [`crate::shared_tcp::SharedTcp`].
    direct: OnceLock<DirectWriter>,
}

pub fn conn_channel() -> (ConnInbox, ConnOutlet) {
    let (tx, rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Backlog::default());
    (
        ConnInbox {
            tx,
            shared: Arc::clone(&shared),
        },
        ConnOutlet { rx, shared },
    )
}

impl ConnOutlet {
    /// The next bytes queued, once they are taken off the backlog.
    pub async fn recv(&mut self) -> Option<Bytes> {
        let b = self.rx.recv().await?;
        self.shared.queued.fetch_sub(b.len(), Ordering::AcqRel);
        Some(b)
    }

    /// From now on the inbox may write into `socket` itself while nothing is queued. Only
    /// for an outlet that [`relay`] drains into that same socket (a
    /// [`crate::shared_tcp::SharedTcp`]): `relay` counts bytes as
    /// queued until they are written, which is what keeps the two writers in order.
    pub fn write_directly(&self, socket: DirectWriter) {
        let _ = self.shared.direct.set(socket);
    }
}

impl ConnInbox {
    /// Bytes pushed that the connection's relay has not written yet.
    pub fn queued(&self) -> usize {
        self.shared.queued.load(Ordering::Acquire)
    }

    /// Queues bytes for the connection. `false`: the connection is gone, or is more than
    /// [`CONN_BACKLOG_LIMIT`] behind; the caller drops this inbox, which ends it.
    ///
    /// With a direct writer and nothing queued, the bytes go straight into the socket as
    /// far as it takes them; only the rest is queued.
    pub fn push(&self, mut data: Bytes) -> bool {
        if let Some(direct) = self.shared.direct.get() {
            // The frame loop is the only pusher, and `relay` lowers `queued` only after
            // writing: zero means no byte is waiting or being written.
            if self.shared.queued.load(Ordering::Acquire) == 0 {
                if let Direct::Wrote(n) = direct.try_write(&data) {
                    if n == data.len() {
                        return true;
                    }
                    data.advance(n);
                }
            }
        }
        let n = data.len();
        if self.shared.queued.fetch_add(n, Ordering::AcqRel) + n > CONN_BACKLOG_LIMIT {
            return false;
        }
        self.tx.send(data).is_ok()
    }
}

/// How long a mirror copy's local connection stays open after the original ended.
pub const MIRROR_LINGER: std::time::Duration = std::time::Duration::from_secs(5);

/// How one side spells "bytes for connection N" and "connection N closed".
pub struct ConnFrames<M> {
    pub data: fn(u64, Bytes) -> M,
    pub close: fn(u64) -> M,
}

/// Relays connection `conn`: bytes arriving on `rx` are written to `io`; bytes read from
/// `io` go out as `data` frames when `answer` is set (a mirror's answers are dropped).
///
/// `close` means "this side is done sending", like a TCP FIN: when `io` reaches its end,
/// `close` is sent and what the peer still sends keeps being written to `io` (a client
/// that sends its request and shuts its side still gets the answer); when the peer's
/// close arrives (its inbox ends), `io`'s write side is shut. The relay ends once both
/// sides are done, when `io` fails, or when `stop` completes (no `close`: the whole
/// session is going away).
pub async fn relay<IO, M>(
    conn: u64,
    mut io: IO,
    mut inbox: ConnOutlet,
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
    let mut io_open = true;
    // Once the peer is done with a connection whose answers nobody wants (a mirror copy),
    // the local process still gets to read and answer what it was sent, up to this long.
    let linger = tokio::time::sleep(MIRROR_LINGER);
    tokio::pin!(linger);
    loop {
        buf.reserve(16 * 1024);
        tokio::select! {
            r = io.read_buf(&mut buf), if io_open => match r {
                Ok(0) if answer => {
                    io_open = false;
                    if out.send((frames.close)(conn)).await.is_err() {
                        return;
                    }
                    if !peer_open {
                        return;
                    }
                }
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let data = buf.split().freeze();
                    if answer && out.send((frames.data)(conn, data)).await.is_err() {
                        return;
                    }
                }
            },
            d = inbox.rx.recv(), if peer_open => match d {
                Some(d) => {
                    if io.write_all(&d).await.is_err() { break }
                    inbox.shared.queued.fetch_sub(d.len(), Ordering::AcqRel);
                }
                None => {
                    peer_open = false;
                    if answer {
                        // The peer half-closed: pass it on, keep relaying the answers.
                        let _ = io.shutdown().await;
                        if !io_open {
                            return;
                        }
                    } else {
                        // A copy: stay open like the original client did while it waited
                        // for its answer (many servers drop a request that arrives with
                        // EOF), until the local side closes or the linger runs out.
                        linger.as_mut().reset(tokio::time::Instant::now() + MIRROR_LINGER);
                    }
                }
            },
            _ = &mut linger, if !peer_open && !answer => break,
            _ = &mut stop => return,
        }
    }
    if answer {
        let _ = out.send((frames.close)(conn)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared_tcp::SharedTcp;
    use tokio::net::{TcpListener, TcpStream};

    /// Byte `k` of the stream, so any reordering or loss shows.
    fn pattern(from: usize, len: usize) -> Bytes {
        (from..from + len).map(|k| (k % 251) as u8).collect()
    }

    /// The frame loop writes directly while nothing is queued and queues while the socket
    /// is full or the relay is behind: whatever mix of the two, the peer gets every byte
    /// once, in order, then the close.
    #[tokio::test]
    async fn direct_and_queued_bytes_reach_the_peer_in_order() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut peer = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let socket = SharedTcp::new(l.accept().await.unwrap().0);
        let (inbox, outlet) = conn_channel();
        outlet.write_directly(socket.direct_writer());
        let (out, _frames) = mpsc::channel::<u64>(16);
        let frames = ConnFrames {
            data: |c, _| c,
            close: |c| c,
        };
        let stop = std::future::pending();
        let relay = tokio::spawn(relay(1, socket, outlet, out, frames, true, stop));

        let (mut sent, mut direct) = (0, 0);
        // On this one-thread runtime the relay task cannot run during a push: bytes it was
        // given and nothing left queued means the push wrote them itself.
        let mut push = |len: usize| {
            assert!(inbox.push(pattern(sent, len)), "backlog limit not reached");
            sent += len;
            if inbox.shared.queued.load(Ordering::Acquire) == 0 {
                direct += 1;
            }
        };
        // Nobody reads yet: the socket's buffers fill, then bytes queue up.
        for _ in 0..400 {
            push(16 * 1024);
        }
        assert!(
            inbox.shared.queued.load(Ordering::Acquire) > 0,
            "the socket filled"
        );
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            peer.read_to_end(&mut got).await.map(|_| got)
        });
        // The reader drains the socket and the relay its queue; direct writes resume.
        for _ in 0..400 {
            tokio::task::yield_now().await;
            push(4 * 1024);
        }
        assert!(direct > 0, "some pushes went straight into the socket");
        drop(inbox);
        let got = reader.await.unwrap().unwrap();
        assert_eq!(got.len(), sent);
        assert!(got == pattern(0, sent), "bytes out of order");
        relay.abort();
    }
}
