//! The live event feed as Server-Sent Events. Each stream reads the telemetry's ring at
//! its own pace: a slow or stalled browser only delays its own stream (hyper stops
//! polling it), never the operator or other viewers. `Last-Event-ID` (sent by the
//! browser's EventSource when it reconnects) resumes after the last event seen; events the
//! ring no longer holds are reported as a `gap` event with their number.

use super::auth::BrowserSession;
use super::routes::{text, Body};
use super::Console;
use futures::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use mirrord_controlplane::Caller;
use mirrord_telemetry::{Feed, FeedItem};
use std::convert::Infallible;
use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, OwnedSemaphorePermit};

/// A comment this often keeps proxies and the browser from timing the stream out.
const KEEPALIVE: Duration = Duration::from_secs(15);

struct Cursor {
    feed: Arc<Feed>,
    latest: watch::Receiver<u64>,
    last: u64,
    caller: Caller,
    started: bool,
    _permit: OwnedSemaphorePermit,
}

pub fn stream(
    console: &Console,
    req: &Request<Incoming>,
    session: &BrowserSession,
) -> Response<Body> {
    let Ok(permit) = Arc::clone(&console.streams).try_acquire_owned() else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many event streams open; close another console tab\n",
        );
    };
    let latest = console.feed.subscribe();
    // An id from beyond the latest event was issued by an earlier run of the operator (ids
    // start again at 1): start from the ring's beginning, or it would see nothing.
    let last = Some(resume_point(req)).filter(|id| *id <= *latest.borrow());
    let cursor = Cursor {
        latest,
        feed: Arc::clone(&console.feed),
        last: last.unwrap_or(0),
        caller: session.caller.clone(),
        started: false,
        _permit: permit,
    };
    let frames = futures::stream::unfold(cursor, |mut c| async move {
        let chunk = c.next_chunk().await?;
        Some((Ok::<_, Infallible>(Frame::data(chunk)), c))
    });
    let mut r = Response::new(BodyExt::boxed_unsync(StreamBody::new(frames.boxed())));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    r
}

/// `Last-Event-ID` (a reconnecting EventSource), else `?after=`, else the ring's start.
fn resume_point(req: &Request<Incoming>) -> u64 {
    let header = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let query = || {
        req.uri()
            .query()?
            .split('&')
            .find_map(|kv| kv.strip_prefix("after="))?
            .parse()
            .ok()
    };
    header.or_else(query).unwrap_or(0)
}

impl Cursor {
    /// The next bytes to send; `None` ends the stream (the operator is stopping).
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if !self.started {
            self.started = true;
            let mut out = String::from("retry: 2000\n\n");
            self.catch_up(&mut out);
            return Some(out.into());
        }
        loop {
            match tokio::time::timeout(KEEPALIVE, self.latest.changed()).await {
                Err(_) => return Some(Bytes::from_static(b": keepalive\n\n")),
                Ok(Err(_)) => return None,
                Ok(Ok(())) => {}
            }
            let mut out = String::new();
            self.catch_up(&mut out);
            if !out.is_empty() {
                return Some(out.into());
            }
        }
    }

    /// Appends every visible event after `last` (and a gap, if the ring lost some).
    fn catch_up(&mut self, out: &mut String) {
        let found = self.feed.since(self.last);
        if found.missed > 0 {
            let _ = write!(out, "event: gap\ndata: {{\"missed\":{}}}\n\n", found.missed);
        }
        for item in &found.items {
            self.last = item.id;
            if self.visible(item) {
                let _ = write!(out, "id: {}\ndata: {}\n\n", item.id, item.json());
            }
        }
    }

    /// Admins see every event; a developer, those about their own user.
    fn visible(&self, item: &FeedItem) -> bool {
        self.caller.role.is_admin() || item.owner == self.caller.client.client_user
    }
}
