//! A session's context: what its process gets of the target besides traffic (the
//! environment, outgoing connections, name resolution). Granted when the session opens,
//! from the process that serves it (its copy, else one of the target's); held by the
//! session's entry, which the session actor asks for each resolution and connection.

use crate::backend::{Target, TargetContext, TargetCopy};
use mirrord_protocol::{ContextReply, ContextRequest, SessionId};
use mirrord_telemetry::metrics::ContextCounters;
use mirrord_telemetry::metrics::IntCounter;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What a session was granted of its target's context.
pub struct SessionContext {
    pub target: Arc<dyn TargetContext>,
    pub outgoing: bool,
    pub dns: bool,
    pub files: mirrord_protocol::FilesAccess,
    /// Policies' outgoing allow-lists: a connection must pass every one.
    pub allowed: Vec<crate::destinations::OutgoingRule>,
    /// What the session's process did with it (`mirrord_outgoing_*`, `mirrord_dns_*`).
    pub counters: ContextCounters,
}

/// An outgoing connection whose bytes are counted as they pass (one atomic add per read
/// or write, not per byte).
pub struct Counted<IO> {
    io: IO,
    sent: IntCounter,
    received: IntCounter,
}

impl<IO> Counted<IO> {
    /// An outgoing connection's bytes.
    pub fn new(io: IO, counters: &ContextCounters) -> Self {
        Self::into(io, &counters.sent, &counters.received)
    }

    /// Bytes written to `io` count in `sent`, bytes read from it in `received`.
    pub fn into(io: IO, sent: &IntCounter, received: &IntCounter) -> Self {
        Self {
            io,
            sent: sent.clone(),
            received: received.clone(),
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Counted<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.received.inc_by(n as u64);
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Counted<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.sent.inc_by(*n as u64);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The context `req` asks for, from `copy` if the session has one, else from `target`;
/// from `container` (the target's `/container/NAME`) where the target has several.
/// What cannot be had is said in the reply (`unavailable`), not refused: the process then
/// runs with its own environment and network, and the developer is told why.
pub async fn grant(
    target: &Arc<dyn Target>,
    session: SessionId,
    copy: Option<&dyn TargetCopy>,
    container: Option<&str>,
    req: &ContextRequest,
) -> (ContextReply, Option<SessionContext>) {
    let container = container.map(str::to_owned);
    let found = match copy {
        Some(c) => c.context(session, container).await,
        None => Arc::clone(target).context(session, container).await,
    };
    let ctx = match found {
        Ok(c) => c,
        Err(e) => {
            let reply = ContextReply {
                unavailable: Some(e.to_string()),
                ..ContextReply::default()
            };
            return (reply, None);
        }
    };
    let mut reply = ContextReply {
        env: None,
        outgoing: req.outgoing,
        dns: req.dns,
        files: req.files,
        source: ctx.source(),
        unavailable: None,
    };
    if let Some(select) = &req.env {
        match ctx.env(select.clone()).await {
            Ok(vars) => reply.env = Some(vars),
            Err(e) => reply.unavailable = Some(format!("the environment of {}: {e}", reply.source)),
        }
    }
    let granted = (req.outgoing || req.dns || req.files.reads()).then(|| SessionContext {
        target: ctx,
        outgoing: req.outgoing,
        dns: req.dns,
        files: req.files,
        allowed: Vec::new(),
        counters: ContextCounters::detached(),
    });
    (reply, granted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn counted_counts_both_ways() {
        let (a, mut b) = tokio::io::duplex(64);
        let counters = ContextCounters::detached();
        let mut c = Counted::new(a, &counters);
        c.write_all(b"hello").await.unwrap();
        b.write_all(b"hi there").await.unwrap();
        let mut buf = [0u8; 8];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!((counters.sent.get(), counters.received.get()), (5, 8));
    }
}
