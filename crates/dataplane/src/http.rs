//! Per-request routing of HTTP/1.1 and HTTP/2 (h2c) connections.
//!
//! Each request is looked at on its own: the first matching filtered steal (or an
//! unfiltered steal that arrived after the connection did) gets it, matching mirrors get a
//! copy, and everything else goes to the replica over one upstream connection per
//! downstream connection, in the protocol the client spoke (h2 stays h2, trailers
//! included), so a keep-alive connection's requests stay in order. A 101 answer, from the
//! developer or from the replica, turns the connection into a raw relay.
//!
//! What a session answers is not trusted: its status and framing are checked here, its
//! body is cut to the `content-length` it declared (a shorter one closes the connection),
//! and it has `stolen_response_timeout` to start answering (504 after that).

use crate::budget::{held_bytes, Budget};
use crate::filter::body::read_json;
use crate::filter::{HttpFilter, Verdict};
use crate::gate::HeadGate;
use crate::handoff::{Handoff, StolenResponse, SubscriberTx};
use crate::port::{InterceptorLimits, PortServices};
use crate::relay;
use crate::rewind::Rewind;
use crate::routes::{PortRoutes, RouteTable, Subscriber};
use crate::tee::{NoCopy, TeeBody};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::{http1 as client1, http2 as client2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use mirrord_protocol::{HttpRequestHead, HttpResponseHead, HttpVersion, MAX_FRAME_LEN};
use mirrord_serve::{Activity, Touching};
use mirrord_telemetry::CopyDrops;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Mutex};

use crate::handoff::{Body, BoxError};

/// Largest body copied to a mirror: a copy travels in one frame, with room for the head.
/// (Stolen bodies stream and have no limit.)
pub const MAX_HANDOFF_BODY: usize = MAX_FRAME_LEN - 64 * 1024;

/// hyper's own header timeout, a little after [`HeadGate`]'s: it only matters on
/// connections the gate stopped following (after an upgrade request that was refused).
const BACKSTOP: Duration = Duration::from_secs(1);

pub struct HttpCtx {
    pub port: u16,
    pub routes: Arc<RouteTable>,
    pub upstream: SocketAddr,
    pub services: PortServices,
    pub settings: InterceptorLimits,
    /// The connection's place under the port's cap: a request in flight pins it.
    pub activity: Option<Activity>,
}

/// Serves one HTTP/1 connection, request by request. `up`: a connection to the replica
/// already open (used for the first request that goes there).
pub async fn serve_h1(
    io: HeadGate<Touching<TcpStream>>,
    ctx: Arc<HttpCtx>,
    up: Option<Rewind<TcpStream>>,
) {
    let timeout = ctx.settings.header_read_timeout;
    let svc = service(ctx, up);
    let res = hyper::server::conn::http1::Builder::new()
        // A client may send its request and shut its side: it still gets its answer.
        .half_close(true)
        .timer(TokioTimer::new())
        .header_read_timeout(timeout + BACKSTOP)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades()
        .await;
    if let Err(e) = res {
        tracing::debug!(error = %e, "HTTP/1 connection ended with an error");
    }
}

/// Serves one HTTP/2 (h2c) connection, stream by stream.
pub async fn serve_h2<IO>(io: IO, ctx: Arc<HttpCtx>, up: Option<Rewind<TcpStream>>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service(ctx, up);
    let res = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), svc)
        .await;
    if let Err(e) = res {
        tracing::debug!(error = %e, "HTTP/2 connection ended with an error");
    }
}

fn service(
    ctx: Arc<HttpCtx>,
    up: Option<Rewind<TcpStream>>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = std::convert::Infallible,
    Future = impl std::future::Future<Output = Result<Response<Body>, std::convert::Infallible>> + Send,
> + Clone {
    let upstream = Arc::new(Upstream {
        addr: ctx.upstream,
        spare: std::sync::Mutex::new(up),
        h1: Mutex::new(None),
        h2: Mutex::new(None),
    });
    hyper::service::service_fn(move |req| {
        let ctx = Arc::clone(&ctx);
        let upstream = Arc::clone(&upstream);
        async move {
            // A request in flight (a stolen one may wait a minute for its answer) is work:
            // its connection is not evicted meanwhile.
            let _working = ctx.activity.as_ref().map(Activity::pin);
            Ok::<_, std::convert::Infallible>(route(req, &ctx, &upstream).await)
        }
    })
}

/// Hands a copy to each mirror whose own budget has room for it; a mirror that is behind
/// or out of budget loses this copy (counted).
fn deliver_copies(
    port: u16,
    head: &HttpRequestHead,
    copy: &Bytes,
    mirrors: Vec<(SubscriberTx, Arc<Budget>)>,
    drops: &CopyDrops,
) {
    for (tx, budget) in mirrors {
        let Some(hold) = budget.try_hold(copy.len()) else {
            drops.budget.inc();
            continue;
        };
        let sent = tx.try_send(Handoff::MirroredRequest {
            port,
            head: Box::new(head.clone()),
            body: held_bytes(copy.clone(), hold),
        });
        if sent.is_err() {
            drops.behind.inc();
        }
    }
}

async fn route(mut req: Request<Incoming>, ctx: &HttpCtx, upstream: &Upstream) -> Response<Body> {
    let routes: Arc<PortRoutes> = ctx.routes.load();
    let (parts, body) = {
        let upgrade = wants_upgrade(req.headers()).then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        if let Some(u) = upgrade {
            parts.extensions.insert(u);
        }
        (parts, body)
    };
    let mut body: Body = body.map_err(Into::into).boxed();
    // A body filter decides on the request's JSON body: read it (bounded) first.
    let json = match routes.unfiltered_steal.is_none() && routes.needs_body() {
        true => {
            let (json, replay) = read_json(body).await;
            body = replay;
            json
        }
        false => None,
    };
    let mut limited = false;
    let mut decide = |f: &HttpFilter| match f.evaluate(&parts, json.as_ref()) {
        Verdict::Match => true,
        Verdict::NoMatch => false,
        Verdict::Limit => {
            limited = true;
            false
        }
    };
    let stealer: Option<&Subscriber> = routes.unfiltered_steal.as_ref().or_else(|| {
        routes
            .filtered_steals
            .iter()
            .find(|(_, f)| decide(f))
            .map(|(s, _)| s)
    });
    let mirrors: Vec<&Subscriber> = routes
        .mirrors
        .iter()
        .filter(|(_, f)| f.as_deref().is_none_or(&mut decide))
        .map(|(s, _)| s)
        .collect();
    if limited {
        ctx.services.bypass.limited.inc();
    }
    if stealer.is_none() && !routes.filtered_steals.is_empty() {
        ctx.services.bypass.bypassed.inc();
    }
    if mirrors.is_empty() {
        return match stealer {
            None => upstream.forward(Request::from_parts(parts, body)).await,
            Some(s) => steal(ctx, s, parts, body, upstream).await,
        };
    }

    // Mirrors get a copy of the body once it has passed through to its real destination;
    // the real path streams on and never waits for the copy.
    let head = Box::new(request_head(&parts));
    let port = ctx.port;
    let mirrors: Vec<_> = mirrors
        .iter()
        .map(|m| (m.tx.clone(), Arc::clone(&m.copy_budget)))
        .collect();
    let drops = ctx.services.copy_drops.clone();
    let body = TeeBody::new(
        body,
        MAX_HANDOFF_BODY,
        &ctx.services.copy_budget,
        move |copy| match copy {
            Ok(copy) => deliver_copies(port, &head, &copy, mirrors, &drops),
            Err(NoCopy::TooLarge) => drops.too_large.inc_by(mirrors.len() as u64),
            Err(NoCopy::Budget) => drops.budget.inc_by(mirrors.len() as u64),
            Err(NoCopy::Failed) => {}
        },
    )
    .boxed();
    match stealer {
        None => upstream.forward(Request::from_parts(parts, body)).await,
        Some(s) => steal(ctx, s, parts, body, upstream).await,
    }
}

/// Hands the request to the stealer and answers with what the developer's process says,
/// in a span of its own when traces are exported (its `traceparent` goes to the developer).
async fn steal(
    ctx: &HttpCtx,
    stealer: &Subscriber,
    parts: http::request::Parts,
    body: Body,
    upstream: &Upstream,
) -> Response<Body> {
    let span = stealer.trace.stolen_request(
        ctx.port,
        parts.method.as_str(),
        parts.uri.path(),
        &parts.headers,
    );
    let mut head = request_head(&parts);
    for (name, value) in span.propagation_headers() {
        head.headers.retain(|(n, _)| *n != name);
        head.headers.push((name, Bytes::from(value)));
    }
    let resp = hand_off(ctx, stealer, parts, head, body, upstream).await;
    let problem = resp.extensions().get::<OperatorAnswer>().map(|a| a.0);
    span.finish(resp.status().as_u16(), problem);
    resp
}

/// Marks a response the operator wrote itself (the developer's side failed): why.
#[derive(Clone, Copy)]
struct OperatorAnswer(&'static str);

async fn hand_off(
    ctx: &HttpCtx,
    stealer: &Subscriber,
    parts: http::request::Parts,
    head: HttpRequestHead,
    body: Body,
    upstream: &Upstream,
) -> Response<Body> {
    let (tx, rx) = oneshot::channel();
    let handoff = Handoff::StolenRequest {
        port: ctx.port,
        head: Box::new(head),
        body,
        respond: tx,
    };
    if let Err(returned) = stealer.tx.send(handoff).await {
        // The session ended after the lookup and before the handoff: nobody saw the
        // request, so the target gets it as if no steal had been there.
        let Handoff::StolenRequest { body, .. } = returned else {
            unreachable!("we sent a StolenRequest")
        };
        return upstream.forward(Request::from_parts(parts, body)).await;
    }
    let wait = ctx.settings.response_timeout;
    let said = match tokio::time::timeout(wait, rx).await {
        // Not stolen after all, nor counted as such.
        Ok(Ok(StolenResponse::GivenBack(body))) => {
            return upstream.forward(Request::from_parts(parts, body)).await
        }
        other => other,
    };
    stealer.counters.requests.inc();
    match said {
        Ok(Ok(StolenResponse::Response {
            head,
            body,
            upgraded,
        })) => match answer(&parts, head, body) {
            Ok(resp) => {
                if let (Some(dev), Some(on_up)) = (
                    upgraded.filter(|_| resp.status() == StatusCode::SWITCHING_PROTOCOLS),
                    parts.extensions.get::<hyper::upgrade::OnUpgrade>().cloned(),
                ) {
                    // Detached: an upgraded connection's relay ends with it.
                    tokio::spawn(async move {
                        if let Ok(client) = on_up.await {
                            let mut client = TokioIo::new(client);
                            let mut dev = dev;
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut dev).await;
                        }
                    });
                }
                resp
            }
            Err(problem) => {
                tracing::warn!(port = ctx.port, session_id = stealer.session_id, %problem, "a session answered a stolen request with a response that cannot be sent; answering 502");
                operator_answer(
                    StatusCode::BAD_GATEWAY,
                    format!("mirrord: the developer's answer was refused: {problem}\n"),
                    "the developer's answer was refused",
                )
            }
        },
        Ok(Ok(StolenResponse::Failed(reason))) => operator_answer(
            StatusCode::BAD_GATEWAY,
            format!("mirrord: the developer's local process did not answer: {reason}\n"),
            "the developer's local process did not answer",
        ),
        Ok(Ok(StolenResponse::GivenBack(_))) | Ok(Err(_)) => operator_answer(
            StatusCode::BAD_GATEWAY,
            "mirrord: the session ended before answering this request\n".into(),
            "the session ended before answering",
        ),
        Err(_) => operator_answer(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "mirrord: the developer's process did not answer within {wait:?} (stolen_response_timeout)\n"
            ),
            "no answer within stolen_response_timeout",
        ),
    }
}

/// The client's response from what a session answered, checked: a status the request can
/// have, and a body framed by this side (cut to its declared length).
fn answer(
    req: &http::request::Parts,
    head: HttpResponseHead,
    body: Body,
) -> Result<Response<Body>, String> {
    let status = StatusCode::from_u16(head.status)
        .map_err(|_| format!("status {} is not an HTTP status", head.status))?;
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    if status.is_informational() && !switching {
        return Err(format!("{status} is not a final status"));
    }
    let asked_upgrade = req.extensions.get::<hyper::upgrade::OnUpgrade>().is_some();
    if switching && (!asked_upgrade || req.version == Version::HTTP_2) {
        return Err("101 answers only a request that asked for an upgrade".into());
    }
    let length = declared_length(&head.headers)?;
    let bodiless = req.method == http::Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || switching;
    let body = match length {
        Some(n) if !bodiless => Limited {
            inner: body,
            left: n,
        }
        .boxed(),
        _ => body,
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    copy_headers(resp.headers_mut(), &head.headers, switching);
    Ok(resp)
}

/// The `content-length` a response declares: one value (repeated values must agree).
fn declared_length(headers: &[(String, Bytes)]) -> Result<Option<u64>, String> {
    let mut length = None;
    for (name, value) in headers {
        if !name.eq_ignore_ascii_case("content-length") {
            continue;
        }
        for v in String::from_utf8_lossy(value).split(',') {
            let v = v.trim();
            let n: u64 = v
                .parse()
                .ok()
                .filter(|_| v.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| format!("content-length `{v}` is not a length"))?;
            if length.is_some_and(|l| l != n) {
                return Err("content-length given twice with different values".into());
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// A session's response body held to its declared length: extra bytes are dropped (they
/// would otherwise be read as the next response), and a body that ends short is an error,
/// which closes the client's connection instead of leaving it waiting.
struct Limited {
    inner: Body,
    left: u64,
}

impl hyper::body::Body for Limited {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let frame = match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Poll::Ready(Some(Err(e))),
            None => {
                let short = format!(
                    "the session's answer ended {} bytes short of its content-length",
                    self.left
                );
                tracing::warn!("{short}; closing the client's connection");
                return Poll::Ready(Some(Err(short.into())));
            }
        };
        let Ok(data) = frame.into_data() else {
            // Trailers have no place in a body of declared length.
            return Poll::Ready(Some(Ok(Frame::data(Bytes::new()))));
        };
        let n = (data.len() as u64).min(self.left);
        if n < data.len() as u64 {
            tracing::warn!(
                extra = data.len() as u64 - n,
                "a session's answer was longer than its content-length; the rest is dropped"
            );
        }
        self.left -= n;
        Poll::Ready(Some(Ok(Frame::data(data.slice(..n as usize)))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

/// The upstream side of one downstream connection.
struct Upstream {
    addr: SocketAddr,
    /// A connection opened before routing began (with what the replica already said on
    /// it), used first.
    spare: std::sync::Mutex<Option<Rewind<TcpStream>>>,
    h1: Mutex<Option<client1::SendRequest<Body>>>,
    h2: Mutex<Option<client2::SendRequest<Body>>>,
}

impl Upstream {
    async fn forward(&self, mut req: Request<Body>) -> Response<Body> {
        let down_upgrade = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>();
        let res = if req.version() == Version::HTTP_2 {
            self.send_h2(req).await
        } else {
            self.send_h1(req).await
        };
        match res {
            Ok(mut resp) => {
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                    if let Some(down) = down_upgrade {
                        let up = hyper::upgrade::on(&mut resp);
                        // Detached: an upgraded connection's relay ends with it.
                        tokio::spawn(async move {
                            if let (Ok(d), Ok(u)) = tokio::join!(down, up) {
                                let _ = tokio::io::copy_bidirectional(
                                    &mut TokioIo::new(d),
                                    &mut TokioIo::new(u),
                                )
                                .await;
                            }
                        });
                    }
                }
                resp.map(|b| b.map_err(Into::into).boxed())
            }
            Err(e) => text(
                StatusCode::BAD_GATEWAY,
                format!(
                    "mirrord: target replica at {} unavailable: {e}\n",
                    self.addr
                ),
            ),
        }
    }

    async fn send_h1(&self, req: Request<Body>) -> Result<Response<Incoming>, BoxError> {
        let mut guard = self.h1.lock().await;
        if guard.as_ref().is_none_or(|s| s.is_closed()) {
            let io = TokioIo::new(self.socket().await?);
            let (sender, conn) = client1::handshake(io).await?;
            // Detached: the replica connection's driver ends with the connection.
            tokio::spawn(async move {
                let _ = conn.with_upgrades().await;
            });
            *guard = Some(sender);
        }
        let sender = guard.as_mut().expect("set above");
        sender.ready().await?;
        Ok(sender.send_request(req).await?)
    }

    async fn send_h2(&self, req: Request<Body>) -> Result<Response<Incoming>, BoxError> {
        let mut sender = {
            let mut guard = self.h2.lock().await;
            if guard.as_ref().is_none_or(|s| s.is_closed()) {
                let io = TokioIo::new(self.socket().await?);
                let (sender, conn) = client2::handshake(TokioExecutor::new(), io).await?;
                // Detached: the replica connection's driver ends with the connection.
                tokio::spawn(conn);
                *guard = Some(sender);
            }
            guard.as_ref().expect("set above").clone()
        };
        sender.ready().await?;
        Ok(sender.send_request(req).await?)
    }
}

impl Upstream {
    async fn socket(&self) -> std::io::Result<Rewind<TcpStream>> {
        let spare = self.spare.lock().expect("spare connection").take();
        match spare {
            Some(s) => Ok(s),
            None => Ok(Rewind::new(Bytes::new(), relay::connect(self.addr).await?)),
        }
    }
}

fn wants_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
}

fn full(b: Bytes) -> Body {
    Full::new(b).map_err(|never| match never {}).boxed()
}

/// A response the operator writes in the developer's place, marked with why (the span
/// of the stolen request reports it as its error).
fn operator_answer(status: StatusCode, msg: String, why: &'static str) -> Response<Body> {
    let mut resp = text(status, msg);
    resp.extensions_mut().insert(OperatorAnswer(why));
    resp
}

fn text(status: StatusCode, msg: String) -> Response<Body> {
    let mut r = Response::new(full(Bytes::from(msg)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
];

/// Copies the developer's response headers. Transfer framing is hyper's to redo (the body is
/// re-chunked or sized as it streams); `content-length` is kept, since the body relayed is
/// exactly the developer's. For a 101, `connection` and `upgrade` are what the client needs.
fn copy_headers(dst: &mut HeaderMap, src: &[(String, Bytes)], switching: bool) {
    for (name, value) in src {
        let is = |h: &str| name.eq_ignore_ascii_case(h);
        let hop = HOP_BY_HOP.iter().any(|h| is(h));
        if hop && !(switching && (is("connection") || is("upgrade"))) {
            continue;
        }
        // `from_bytes` lowercases the name itself (a well-known name allocates nothing).
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            dst.append(n, v);
        }
    }
}

fn request_head(parts: &http::request::Parts) -> HttpRequestHead {
    let mut headers: Vec<(String, Bytes)> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), Bytes::copy_from_slice(v.as_bytes())))
        .collect();
    if !parts.headers.contains_key(header::HOST) {
        if let Some(a) = parts.uri.authority() {
            headers.push(("host".into(), Bytes::copy_from_slice(a.as_str().as_bytes())));
        }
    }
    HttpRequestHead {
        method: parts.method.as_str().to_owned(),
        uri: parts
            .uri
            .path_and_query()
            .map(|pq| pq.as_str().to_owned())
            .unwrap_or_else(|| "/".into()),
        version: match parts.version {
            Version::HTTP_10 => HttpVersion::Http10,
            Version::HTTP_2 => HttpVersion::Http2,
            _ => HttpVersion::Http11,
        },
        headers,
    }
}

/// Builds the head of a response from the developer's side, for callers outside.
pub fn response_head(resp: &http::response::Parts) -> HttpResponseHead {
    HttpResponseHead {
        status: resp.status.as_u16(),
        headers: resp
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), Bytes::copy_from_slice(v.as_bytes())))
            .collect(),
    }
}
