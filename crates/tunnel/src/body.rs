//! HTTP bodies over frames: how a stolen request's or response's body becomes a head frame
//! plus body frames (and a trailers frame), and how those frames become a body again on
//! the other side.
//!
//! Small bodies of known length travel inside the head's frame; everything else streams,
//! so server-sent events, long polls and uploads larger than a frame work. Trailers (gRPC
//! carries its status in them) end a body in both directions.

use crate::pump::{conn_channel, ConnInbox, ConnOutlet};
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Body as _, Frame};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::sync::{mpsc, oneshot};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// An HTTP body in either direction: whole or streamed.
pub type Body = BoxBody<Bytes, BoxError>;
/// Header fields as they travel in frames.
pub type Fields = Vec<(String, Bytes)>;

/// Bodies of at most this many bytes, with a known length, travel in the head's frame.
pub const INLINE_BODY: u64 = 64 * 1024;

/// Where a session's frame loop puts the frames of one body as they arrive. Never blocks.
pub struct BodyInbox {
    data: ConnInbox,
    trailers: oneshot::Sender<HeaderMap>,
}

impl BodyInbox {
    /// Queues body bytes; `false` when the body's reader is gone or too far behind (drop
    /// the inbox: that ends the body).
    pub fn push(&self, data: Bytes) -> bool {
        self.data.push(data)
    }

    /// Ends the body with `trailers`.
    pub fn finish(self, trailers: &[(String, Bytes)]) {
        let _ = self.trailers.send(header_map(trailers));
    }
}

/// The receiving side of [`send`]: the body a head frame starts. With `end: false` the
/// returned inbox takes the body frames that follow (drop it at the last one, or
/// [`BodyInbox::finish`] it with the trailers).
pub fn receive(first: Bytes, end: bool) -> (Body, Option<BodyInbox>) {
    if end {
        return (
            Full::new(first).map_err(|never| match never {}).boxed(),
            None,
        );
    }
    let (data, outlet) = conn_channel();
    if !first.is_empty() {
        data.push(first);
    }
    let (trailers, rx) = oneshot::channel();
    (from_outlet(outlet, rx), Some(BodyInbox { data, trailers }))
}

/// A body fed by frames arriving for it, then by its trailers if it has any.
fn from_outlet(outlet: ConnOutlet, trailers: oneshot::Receiver<HeaderMap>) -> Body {
    let frames = futures::stream::unfold(
        (outlet, Some(trailers)),
        |(mut outlet, trailers)| async move {
            if let Some(b) = outlet.recv().await {
                return Some((Ok::<_, BoxError>(Frame::data(b)), (outlet, trailers)));
            }
            // The data ended: the trailers were sent before it did, if there were any.
            let map = trailers?.await.ok().filter(|m| !m.is_empty())?;
            Some((Ok(Frame::trailers(map)), (outlet, None)))
        },
    );
    StreamBody::new(frames).boxed()
}

/// Sends `body` on `out`: `head(bytes, end)` first, then `chunk(bytes, end)` until the end,
/// or `trailers(fields)` as the last frame when the body has trailers. Returns `false` if
/// `out` closed.
pub async fn send<M>(
    mut body: Body,
    out: &mpsc::Sender<M>,
    head: impl FnOnce(Bytes, bool) -> M,
    chunk: impl Fn(Bytes, bool) -> M,
    trailers: impl FnOnce(Fields) -> M,
) -> bool {
    if body.is_end_stream() {
        return out.send(head(Bytes::new(), true)).await.is_ok();
    }
    if body.size_hint().exact().is_some_and(|n| n <= INLINE_BODY) {
        let (whole, t) = match body.collect().await {
            Ok(c) => {
                let t = c.trailers().map(fields);
                (c.to_bytes(), t)
            }
            Err(_) => (Bytes::new(), None),
        };
        return match t {
            None => out.send(head(whole, true)).await.is_ok(),
            Some(t) => {
                out.send(head(whole, false)).await.is_ok() && out.send(trailers(t)).await.is_ok()
            }
        };
    }
    if out.send(head(Bytes::new(), false)).await.is_err() {
        return false;
    }
    while let Some(frame) = body.frame().await {
        // An error ends the body where it broke.
        let Ok(frame) = frame else { break };
        match frame.into_data() {
            Ok(data) => {
                if !data.is_empty() && out.send(chunk(data, false)).await.is_err() {
                    return false;
                }
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    return out.send(trailers(fields(&t))).await.is_ok();
                }
            }
        }
    }
    out.send(chunk(Bytes::new(), true)).await.is_ok()
}

/// Header fields as they travel.
pub fn fields(map: &HeaderMap) -> Fields {
    map.iter()
        .map(|(k, v)| (k.as_str().to_owned(), Bytes::copy_from_slice(v.as_bytes())))
        .collect()
}

/// Header fields as a map; fields that are not valid HTTP are left out.
pub fn header_map(fields: &[(String, Bytes)]) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(fields.len());
    for (k, v) in fields {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_bytes(v),
        ) {
            map.append(k, v);
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn roundtrip(body: Body) -> (Bytes, Option<HeaderMap>) {
        #[derive(Debug)]
        enum M {
            Head(Bytes, bool),
            Chunk(Bytes, bool),
            Trailers(Fields),
        }
        let (tx, mut rx) = mpsc::channel(64);
        assert!(send(body, &tx, M::Head, M::Chunk, M::Trailers).await);
        drop(tx);
        let Some(M::Head(first, end)) = rx.recv().await else {
            panic!("no head")
        };
        let (body, mut inbox) = receive(first, end);
        while let Some(m) = rx.recv().await {
            let inbox_ref = inbox.as_ref().expect("frames after the end");
            match m {
                M::Chunk(data, end) => {
                    assert!(inbox_ref.push(data));
                    if end {
                        inbox = None;
                    }
                }
                M::Trailers(t) => inbox.take().unwrap().finish(&t),
                M::Head(..) => panic!("two heads"),
            }
        }
        let c = body.collect().await.unwrap();
        let trailers = c.trailers().cloned();
        (c.to_bytes(), trailers)
    }

    fn frames(parts: Vec<Frame<Bytes>>) -> Body {
        StreamBody::new(futures::stream::iter(
            parts.into_iter().map(Ok::<_, BoxError>),
        ))
        .boxed()
    }

    #[tokio::test]
    async fn trailers_end_a_body_whole_or_streamed() {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        // Streamed (no known length).
        let (data, got) = roundtrip(frames(vec![
            Frame::data(Bytes::from("ab")),
            Frame::trailers(t.clone()),
        ]))
        .await;
        assert_eq!((data.as_ref(), got.as_ref()), (&b"ab"[..], Some(&t)));
        // Without trailers.
        let (data, got) = roundtrip(frames(vec![Frame::data(Bytes::from("xyz"))])).await;
        assert_eq!((data.as_ref(), got), (&b"xyz"[..], None));
        // Whole: inline in the head, trailers after.
        let whole = Full::new(Bytes::from("hi"))
            .map_err(|n| match n {})
            .with_trailers(async move { Some(Ok(t)) })
            .boxed();
        let (data, got) = roundtrip(whole).await;
        assert_eq!(data.as_ref(), b"hi");
        assert_eq!(got.unwrap()["grpc-status"], "0");
    }
}
