//! A request body that streams on to its real destination while keeping a copy for
//! mirrors, handed over when the body ends. The real path never waits for the copy: a body
//! that outgrows one frame, or that the process's copy budget has no room for, yields no
//! copy (and the caller learns why, to count it).

use crate::budget::{held_bytes, Budget, Hold};
use crate::handoff::{Body, BoxError};
use bytes::{Bytes, BytesMut};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// Why a body yielded no copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoCopy {
    /// Longer than one frame can carry.
    TooLarge,
    /// The process's copy budget had no room for it.
    Budget,
    /// The body failed on its way.
    Failed,
}

type Done = Box<dyn FnOnce(Result<Bytes, NoCopy>) + Send + Sync>;

pub struct TeeBody {
    inner: Body,
    /// The copy so far, and its hold on the budget.
    copy: Result<(BytesMut, Hold), NoCopy>,
    limit: usize,
    done: Option<Done>,
}

impl TeeBody {
    /// `done` receives the whole body (holding `budget` for as long as it lives) if it
    /// ended within `limit` bytes and the budget had room, else why not.
    pub fn new(
        inner: Body,
        limit: usize,
        budget: &Arc<Budget>,
        done: impl FnOnce(Result<Bytes, NoCopy>) + Send + Sync + 'static,
    ) -> Self {
        let mut me = Self {
            inner,
            copy: budget
                .try_hold(0)
                .map(|h| (BytesMut::new(), h))
                .ok_or(NoCopy::Budget),
            limit,
            done: Some(Box::new(done)),
        };
        // An empty body may never be polled at all: its copy is complete already.
        if me.inner.is_end_stream() {
            me.finish();
        }
        me
    }

    fn keep(&mut self, data: &Bytes) {
        let limit = self.limit;
        let Ok((copy, hold)) = &mut self.copy else {
            return;
        };
        if copy.len() + data.len() > limit {
            self.copy = Err(NoCopy::TooLarge);
        } else if !hold.grow(data.len()) {
            self.copy = Err(NoCopy::Budget);
        } else {
            copy.extend_from_slice(data);
        }
    }

    fn finish(&mut self) {
        if let Some(done) = self.done.take() {
            let copy = std::mem::replace(&mut self.copy, Err(NoCopy::Failed));
            done(copy.map(|(bytes, hold)| held_bytes(bytes.freeze(), hold)));
        }
    }
}

impl Drop for TeeBody {
    /// A body dropped before its end (the client went away) yields no copy, and says so.
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            done(Err(NoCopy::Failed));
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
                    let data = data.clone();
                    self.keep(&data);
                }
                if self.inner.is_end_stream() {
                    self.finish();
                }
            }
            Poll::Ready(None) => self.finish(),
            Poll::Ready(Some(Err(_))) => self.copy = Err(NoCopy::Failed),
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
    use std::sync::Mutex;

    fn chunks(parts: &[&'static str]) -> Body {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        StreamBody::new(futures::stream::iter(frames)).boxed()
    }

    type Got = Arc<Mutex<Option<Result<Bytes, NoCopy>>>>;

    fn tee(body: Body, limit: usize, budget: &Arc<Budget>) -> (TeeBody, Got) {
        let got: Got = Arc::default();
        let g = got.clone();
        let tee = TeeBody::new(body, limit, budget, move |b| *g.lock().unwrap() = Some(b));
        (tee, got)
    }

    fn copied(got: &Got) -> Option<Result<Vec<u8>, NoCopy>> {
        got.lock().unwrap().clone().map(|r| r.map(|b| b.to_vec()))
    }

    #[tokio::test]
    async fn copies_what_passes_through_within_the_limit() {
        let budget = Budget::new(1 << 20);
        let (t, got) = tee(chunks(&["ab", "cd", "e"]), 10, &budget);
        assert_eq!(t.collect().await.unwrap().to_bytes(), "abcde");
        assert_eq!(copied(&got), Some(Ok(b"abcde".to_vec())));

        let (t, got) = tee(chunks(&["abcd", "efgh"]), 6, &budget);
        assert_eq!(t.collect().await.unwrap().to_bytes(), "abcdefgh");
        assert_eq!(copied(&got), Some(Err(NoCopy::TooLarge)));

        let full = Full::new(Bytes::from_static(b"xyz"))
            .map_err(|n| match n {})
            .boxed();
        let (t, got) = tee(full, 10, &budget);
        assert_eq!(t.collect().await.unwrap().to_bytes(), "xyz");
        assert_eq!(copied(&got), Some(Ok(b"xyz".to_vec())));

        // Empty: the copy is handed over without the body ever being polled.
        let empty = Full::new(Bytes::new()).map_err(|n| match n {}).boxed();
        let (_t, got) = tee(empty, 10, &budget);
        assert_eq!(copied(&got), Some(Ok(Vec::new())));
    }

    #[tokio::test]
    async fn the_budget_bounds_what_copies_hold_and_the_real_body_never_notices() {
        let budget = Budget::new(6);
        let (t1, got1) = tee(chunks(&["abcd"]), 100, &budget);
        assert_eq!(t1.collect().await.unwrap().to_bytes(), "abcd");
        assert_eq!(budget.held(), 4, "the first copy holds its bytes");
        // The second does not fit beside it: passed through whole, no copy.
        let (t2, got2) = tee(chunks(&["ef", "gh"]), 100, &budget);
        assert_eq!(t2.collect().await.unwrap().to_bytes(), "efgh");
        assert_eq!(copied(&got2), Some(Err(NoCopy::Budget)));
        assert_eq!(budget.held(), 4);
        // Once the first copy is gone, its bytes are free again.
        got1.lock().unwrap().take();
        assert_eq!(budget.held(), 0);
        let (t3, got3) = tee(chunks(&["ijklmn"]), 100, &budget);
        assert_eq!(t3.collect().await.unwrap().to_bytes(), "ijklmn");
        assert_eq!(copied(&got3), Some(Ok(b"ijklmn".to_vec())));
    }
}
