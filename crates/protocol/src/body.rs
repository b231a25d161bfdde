//! HTTP bodies over frames: how a stolen request's or response's body becomes a head frame
//! plus body frames, and how those frames become a body again on the other side.
//!
//! Small bodies of known length travel inside the head's frame; everything else streams,
//! so server-sent events, long polls and uploads larger than a frame work.

use crate::pump::{conn_channel, ConnInbox, ConnOutlet};
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Body as _, Frame};
use tokio::sync::mpsc;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// An HTTP body in either direction: whole or streamed.
pub type Body = BoxBody<Bytes, BoxError>;

/// Bodies of at most this many bytes, with a known length, travel in the head's frame.
pub const INLINE_BODY: u64 = 64 * 1024;

/// The receiving side of [`send`]: the body a head frame starts. With `end: false` the
/// returned inbox takes the body frames that follow (drop it at the last one).
pub fn receive(first: Bytes, end: bool) -> (Body, Option<ConnInbox>) {
    if end {
        return (
            Full::new(first).map_err(|never| match never {}).boxed(),
            None,
        );
    }
    let (inbox, outlet) = conn_channel();
    if !first.is_empty() {
        inbox.push(first);
    }
    (from_outlet(outlet), Some(inbox))
}

/// A body fed by frames arriving for it.
fn from_outlet(outlet: ConnOutlet) -> Body {
    let chunks = futures::stream::unfold(outlet, |mut o| async move {
        o.recv()
            .await
            .map(|b| (Ok::<_, BoxError>(Frame::data(b)), o))
    });
    StreamBody::new(chunks).boxed()
}

/// Sends `body` on `out`: `head(bytes, end)` first, then `chunk(bytes, end)` until the end.
/// Returns `false` if `out` closed.
pub async fn send<M>(
    mut body: Body,
    out: &mpsc::Sender<M>,
    head: impl FnOnce(Bytes, bool) -> M,
    chunk: impl Fn(Bytes, bool) -> M,
) -> bool {
    if body.is_end_stream() {
        return out.send(head(Bytes::new(), true)).await.is_ok();
    }
    if body.size_hint().exact().is_some_and(|n| n <= INLINE_BODY) {
        let whole = match body.collect().await {
            Ok(c) => c.to_bytes(),
            Err(_) => Bytes::new(),
        };
        return out.send(head(whole, true)).await.is_ok();
    }
    if out.send(head(Bytes::new(), false)).await.is_err() {
        return false;
    }
    while let Some(frame) = body.frame().await {
        // Trailers are not carried; an error ends the body where it broke.
        let Ok(frame) = frame else { break };
        if let Ok(data) = frame.into_data() {
            if !data.is_empty() && out.send(chunk(data, false)).await.is_err() {
                return false;
            }
        }
    }
    out.send(chunk(Bytes::new(), true)).await.is_ok()
}
