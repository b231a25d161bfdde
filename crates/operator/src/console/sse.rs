//! The live event feed as Server-Sent Events. Each stream reads the telemetry's ring at
//! its own pace: a slow or stalled browser only delays its own stream (hyper stops
//! polling it), never the operator or other viewers. `Last-Event-ID` (sent by the
//! browser's EventSource when it reconnects) resumes after the last event seen; events the
//! ring no longer holds are reported as a `gap` event with their number.

use super::auth::BrowserSession;
use super::reply::{text, Body};
use super::Console;
use futures::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use mirrord_controlplane::Caller;
use mirrord_serve::{Activity, PinGuard};
use mirrord_telemetry::{Feed, FeedItem};
use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// A comment this often keeps proxies and the browser from timing the stream out.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// How often an idle stream checks that its viewer may still see it (revoked, logged out,
/// cookie expired): the stream ends within this of any of those.
const RECHECK: Duration = Duration::from_secs(1);
/// Event streams one user may hold open at once (tabs, reconnects).
pub const STREAMS_PER_USER: usize = 4;
/// Event streams of non-admins together; admins have [`ADMIN_STREAMS`] of their own, so a
/// crowd of developers never keeps an admin from watching.
pub const DEVELOPER_STREAMS: usize = 48;
pub const ADMIN_STREAMS: usize = 16;

/// Who holds how many event streams.
#[derive(Default)]
pub struct StreamCaps {
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    by_user: HashMap<String, usize>,
    developers: usize,
    admins: usize,
}

/// One open stream's place; given back when dropped.
pub struct StreamPlace {
    caps: Arc<StreamCaps>,
    user: String,
    admin: bool,
}

impl StreamCaps {
    /// A place for `caller`'s new stream, or why there is none.
    fn take(self: &Arc<Self>, caller: &Caller) -> Result<StreamPlace, &'static str> {
        let admin = caller.role.is_admin();
        let user = caller.user().to_owned();
        let mut h = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if h.by_user.get(&user).copied().unwrap_or(0) >= STREAMS_PER_USER {
            return Err("you have too many event streams open; close another console tab\n");
        }
        let (pool, cap) = match admin {
            true => (&mut h.admins, ADMIN_STREAMS),
            false => (&mut h.developers, DEVELOPER_STREAMS),
        };
        if *pool >= cap {
            return Err("too many event streams open on this console; try again later\n");
        }
        *pool += 1;
        *h.by_user.entry(user.clone()).or_default() += 1;
        Ok(StreamPlace {
            caps: Arc::clone(self),
            user,
            admin,
        })
    }
}

impl Drop for StreamPlace {
    fn drop(&mut self) {
        let mut h = self.caps.held.lock().unwrap_or_else(|p| p.into_inner());
        match self.admin {
            true => h.admins -= 1,
            false => h.developers -= 1,
        }
        if let Some(n) = h.by_user.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                h.by_user.remove(&self.user);
            }
        }
    }
}

struct Cursor {
    feed: Arc<Feed>,
    latest: watch::Receiver<u64>,
    last: u64,
    caller: Caller,
    started: bool,
    /// Whether the viewer may still see the stream.
    allowed: Box<dyn Fn() -> bool + Send>,
    idle_since: tokio::time::Instant,
    _place: StreamPlace,
    /// An open stream is work: its connection is never evicted for a newcomer.
    _pinned: Option<PinGuard>,
}

pub fn stream(
    console: &Console,
    req: &Request<Incoming>,
    session: &BrowserSession,
    activity: Option<&Activity>,
) -> Response<Body> {
    let place = match console.streams.take(&session.caller) {
        Ok(p) => p,
        Err(why) => return text(StatusCode::SERVICE_UNAVAILABLE, why),
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
        allowed: still_allowed(console, session),
        idle_since: tokio::time::Instant::now(),
        _place: place,
        _pinned: activity.map(Activity::pin),
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

/// What must still hold for the stream to go on: the credential not revoked, and for a
/// browser logged in with a link, its session not logged out or expired (a stream never
/// outlives the cookie that opened it).
fn still_allowed(console: &Console, session: &BrowserSession) -> Box<dyn Fn() -> bool + Send> {
    let op = Arc::clone(&console.op);
    let sessions = Arc::clone(&console.sessions);
    let client_id = session.caller.client.client_id.clone();
    let cookie = session.id.clone();
    Box::new(move || {
        !op.revoked.contains(&client_id) && cookie.as_deref().is_none_or(|id| sessions.is_live(id))
    })
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
            if !(self.allowed)() {
                return None;
            }
            let mut out = String::from("retry: 2000\n\n");
            self.catch_up(&mut out);
            return Some(out.into());
        }
        loop {
            match tokio::time::timeout(RECHECK, self.latest.changed()).await {
                Err(_) => {
                    if !(self.allowed)() {
                        return None;
                    }
                    if self.idle_since.elapsed() >= KEEPALIVE {
                        self.idle_since = tokio::time::Instant::now();
                        return Some(Bytes::from_static(b": keepalive\n\n"));
                    }
                    continue;
                }
                Ok(Err(_)) => return None,
                Ok(Ok(())) => {}
            }
            // Checked before every delivery: nothing reaches a viewer who lost the right.
            if !(self.allowed)() {
                return None;
            }
            let mut out = String::new();
            self.catch_up(&mut out);
            if !out.is_empty() {
                self.idle_since = tokio::time::Instant::now();
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
        self.caller.may_see(&item.owner)
    }
}
