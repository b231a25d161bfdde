//! The pumps both ends of a session share: the single writer of a connection, which
//! batches queued frames into one flush, and the relay between a handed-over stream and
//! its frames.

use bytes::{Bytes, BytesMut};
use futures::{Sink, SinkExt};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
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
    queued: Arc<AtomicUsize>,
}

/// The connection's end of its inbox, read by [`relay`].
pub struct ConnOutlet {
    rx: mpsc::UnboundedReceiver<Bytes>,
    queued: Arc<AtomicUsize>,
}

pub fn conn_channel() -> (ConnInbox, ConnOutlet) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    (
        ConnInbox {
            tx,
            queued: Arc::clone(&queued),
        },
        ConnOutlet { rx, queued },
    )
}

impl ConnOutlet {
    /// The next bytes queued, once they are taken off the backlog.
    pub async fn recv(&mut self) -> Option<Bytes> {
        let b = self.rx.recv().await?;
        self.queued.fetch_sub(b.len(), Ordering::AcqRel);
        Some(b)
    }
}

impl ConnInbox {
    /// Queues bytes for the connection. `false`: the connection is gone, or is more than
    /// [`CONN_BACKLOG_LIMIT`] behind; the caller drops this inbox, which ends it.
    pub fn push(&self, data: Bytes) -> bool {
        let n = data.len();
        if self.queued.fetch_add(n, Ordering::AcqRel) + n > CONN_BACKLOG_LIMIT {
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
                    inbox.queued.fetch_sub(d.len(), Ordering::AcqRel);
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
