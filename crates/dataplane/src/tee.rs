//! A request body that streams on to its real destination while keeping a copy for
//! mirrors, handed over when the body ends. The real path never waits for the copy: a body
//! that outgrows one frame simply yields no copy.

use crate::handoff::{Body, BoxError};
use bytes::{Bytes, BytesMut};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};

type Done = Box<dyn FnOnce(Bytes) + Send + Sync>;

pub struct TeeBody {
    inner: Body,
    copy: Option<BytesMut>,
    limit: usize,
    done: Option<Done>,
}

impl TeeBody {
    /// `done` receives the whole body, if it ended within `limit` bytes.
    pub fn new(
        inner: Body,
        limit: usize,
        done: impl FnOnce(Bytes) + Send + Sync + 'static,
    ) -> Self {
        let mut me = Self {
            inner,
            copy: Some(BytesMut::new()),
            limit,
            done: Some(Box::new(done)),
        };
        // An empty body may never be polled at all: its copy is complete already.
        if me.inner.is_end_stream() {
            me.finish();
        }
        me
    }

    fn finish(&mut self) {
        if let (Some(copy), Some(done)) = (self.copy.take(), self.done.take()) {
            done(copy.freeze());
        }
    }
}

impl HttpBody for TeeBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let limit = self.limit;
                    let too_big = self
                        .copy
                        .as_ref()
                        .is_some_and(|c| c.len() + data.len() > limit);
                    if too_big {
                        self.copy = None;
                    } else if let Some(c) = self.copy.as_mut() {
                        c.extend_from_slice(data);
                    }
                }
                if self.inner.is_end_stream() {
                    self.finish();
                }
            }
            Poll::Ready(None) => self.finish(),
            Poll::Ready(Some(Err(_))) => self.copy = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};
    use std::sync::{Arc, Mutex};

    fn chunks(parts: &[&'static str]) -> Body {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        StreamBody::new(futures::stream::iter(frames)).boxed()
    }

    #[tokio::test]
    async fn copies_what_passes_through_within_the_limit() {
        let got: Arc<Mutex<Option<Bytes>>> = Arc::default();
        let g = got.clone();
        let tee = TeeBody::new(chunks(&["ab", "cd", "e"]), 10, move |b| {
            *g.lock().unwrap() = Some(b)
        });
        let through = tee.collect().await.unwrap().to_bytes();
        assert_eq!(through, "abcde");
        assert_eq!(got.lock().unwrap().as_deref(), Some(&b"abcde"[..]));

        let got: Arc<Mutex<Option<Bytes>>> = Arc::default();
        let g = got.clone();
        let tee = TeeBody::new(chunks(&["abcd", "efgh"]), 6, move |b| {
            *g.lock().unwrap() = Some(b)
        });
        assert_eq!(tee.collect().await.unwrap().to_bytes(), "abcdefgh");
        assert!(
            got.lock().unwrap().is_none(),
            "an oversized body must yield no copy"
        );

        let got: Arc<Mutex<Option<Bytes>>> = Arc::default();
        let g = got.clone();
        let full = Full::new(Bytes::from_static(b"xyz"))
            .map_err(|n| match n {})
            .boxed();
        let tee = TeeBody::new(full, 10, move |b| *g.lock().unwrap() = Some(b));
        assert_eq!(tee.collect().await.unwrap().to_bytes(), "xyz");
        assert_eq!(got.lock().unwrap().as_deref(), Some(&b"xyz"[..]));

        // Empty: the copy is handed over without the body ever being polled.
        let got: Arc<Mutex<Option<Bytes>>> = Arc::default();
        let g = got.clone();
        let empty = Full::new(Bytes::new()).map_err(|n| match n {}).boxed();
        let _tee = TeeBody::new(empty, 10, move |b| *g.lock().unwrap() = Some(b));
        assert_eq!(got.lock().unwrap().as_deref(), Some(&b""[..]));
    }
}
