//! Where agents connect: mutual TLS with the process's agent CA, HTTP/2
//! ([`mirrord_protocol::agent`] says what travels). Routes stream out to each agent; the
//! handoffs it sends back go into the session's channel, exactly where the single-machine
//! interceptor puts them, so sessions do not know where their traffic came from. Sessions'
//! context operations stream out the same way, and their answers (replies, connections
//! made from the pod) come back to [`crate::context`].

use crate::agents::Retired;
use crate::Targets;
use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use mirrord_dataplane::handoff::HANDOFF_BUFFER;
use mirrord_dataplane::{Body, BoxError, Handoff, StolenResponse, Subscriber};
use mirrord_protocol::agent::{self, decode_head, encode_head, RouteSnapshot};
use mirrord_protocol::HttpRequestHead;
use mirrord_serve::{serve_tls, Accepted, Listener, Shutdown, Slots};
use mirrord_telemetry::RequestSpan;
use std::convert::Infallible;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
enum GatewayError {
    #[error("no such endpoint")]
    NotFound,
    #[error("missing or malformed header {0}")]
    BadHeader(&'static str),
    #[error("no target pod has uid {0}")]
    UnknownPod(String),
    #[error("session {session:016x} holds nothing on port {port}")]
    NoSession { session: u64, port: u16 },
    #[error("the session ended")]
    SessionGone,
    #[error(
        "nobody waits for context operation {0} any more (it timed out, or its session ended)"
    )]
    NoOperation(u64),
    #[error("agent {agent} of pod {uid} is not the one the operator expects")]
    UnexpectedAgent { uid: String, agent: String },
    #[error("{0}")]
    Failed(String),
}

impl GatewayError {
    fn response(&self) -> Response<Body> {
        let status = match self {
            GatewayError::NotFound | GatewayError::UnknownPod(_) => StatusCode::NOT_FOUND,
            GatewayError::BadHeader(_) => StatusCode::BAD_REQUEST,
            GatewayError::NoSession { .. }
            | GatewayError::SessionGone
            | GatewayError::NoOperation(_)
            | GatewayError::UnexpectedAgent { .. } => StatusCode::GONE,
            GatewayError::Failed(_) => StatusCode::BAD_GATEWAY,
        };
        Response::builder()
            .status(status)
            .body(full(Bytes::from(self.to_string())))
            .expect("valid response")
    }
}

fn full(b: Bytes) -> Body {
    Full::new(b).map_err(|never| match never {}).boxed()
}

/// Agents' connections served at once (one per target pod); at the cap a handshake that
/// goes nowhere makes room.
const MAX_CONNECTIONS: usize = 4096;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves agents until the operator's shutdown.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    targets: Arc<Targets>,
    shutdown: Shutdown,
) {
    let acceptor = TlsAcceptor::from(tls);
    let cfg = Listener {
        name: "agent gateway",
        slots: Slots::new(MAX_CONNECTIONS, HANDSHAKE_TIMEOUT),
        handshake_timeout: HANDSHAKE_TIMEOUT,
        handshake_hint: "only this operator's agents, with the credential it published, are served",
    };
    serve_tls(
        listener,
        move || acceptor.clone(),
        cfg,
        shutdown,
        move |a| agent_connection(a, Arc::clone(&targets)),
    )
    .await
}

/// One agent's connection: HTTP/2 for as long as the agent lives (never evicted).
async fn agent_connection(a: Accepted, targets: Arc<Targets>) {
    let _agent = a.slot.pin();
    serve_agent(a.tls, a.peer.to_string(), targets).await
}

/// An agent's HTTP/2 connection, however it was made (the agent dialled the gateway, or
/// the operator dialled an ephemeral agent: [`crate::ephemeral`]).
pub(crate) async fn serve_agent<IO>(io: IO, peer: String, targets: Arc<Targets>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let targets = Arc::clone(&targets);
        async move {
            let r = handle(&targets, req).await;
            Ok::<_, Infallible>(r.unwrap_or_else(|e| {
                tracing::debug!(target: "mirrord_kube", error = %e, "agent request refused");
                e.response()
            }))
        }
    });
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        // A dead agent's connection is noticed even if no FIN ever comes.
        .keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(10))
        .initial_stream_window_size(HANDOFF_BUFFER as u32);
    if let Err(e) = http2.serve_connection(TokioIo::new(io), svc).await {
        tracing::debug!(target: "mirrord_kube", %peer, error = %e, "agent connection ended");
    }
}

async fn handle(targets: &Targets, req: Request<Incoming>) -> Result<Response<Body>, GatewayError> {
    if req.method() == Method::CONNECT {
        if req
            .headers()
            .get(agent::KIND)
            .is_some_and(|k| k == agent::KIND_OUTGOING || k == agent::KIND_FILE)
        {
            return outgoing(targets, req);
        }
        if req
            .headers()
            .get(agent::KIND)
            .is_some_and(|k| k == agent::KIND_UPGRADE)
        {
            return join_upgrade(targets, req);
        }
        return connect(targets, req);
    }
    match (req.method().clone(), req.uri().path()) {
        (Method::GET, agent::ROUTES_PATH) => routes(targets, &req),
        (Method::POST, agent::APPLIED_PATH) => {
            let uid: String = header(&req, agent::POD_UID)?;
            let pod: String = header(&req, agent::AGENT)?;
            let version: u64 = header(&req, agent::VERSION)?;
            let t = targets
                .by_pod(&uid)
                .ok_or(GatewayError::UnknownPod(uid.clone()))?;
            t.agents.applied(&uid, &pod, version);
            t.changed.notify_one();
            Ok(Response::new(full(Bytes::new())))
        }
        (Method::GET, agent::CONTEXT_PATH) => context_ops(targets, &req),
        (Method::POST, agent::CONTEXT_REPLY_PATH) => context_reply(targets, req).await,
        (Method::POST, agent::REQUEST_PATH) => stolen_request(targets, req).await,
        (Method::POST, agent::MIRROR_PATH) => mirrored_request(targets, req).await,
        (Method::POST, agent::COUNTERS_PATH) => counters(targets, req).await,
        _ => Err(GatewayError::NotFound),
    }
}

fn header<T: FromStr>(req: &Request<Incoming>, name: &'static str) -> Result<T, GatewayError> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or(GatewayError::BadHeader(name))
}

fn subscriber(targets: &Targets, session: u64, port: u16) -> Result<Subscriber, GatewayError> {
    targets
        .all()
        .iter()
        .find_map(|t| t.subscriber(session, port))
        .map(|(s, _)| s)
        .ok_or(GatewayError::NoSession { session, port })
}

/// Marks the agent connected while its route stream lives.
struct Connected {
    target: Arc<crate::target::KubeTarget>,
    uid: String,
    pod: String,
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.target.agents.disconnected(&self.uid, &self.pod);
        self.target.changed.notify_one();
    }
}

fn routes(targets: &Targets, req: &Request<Incoming>) -> Result<Response<Body>, GatewayError> {
    let uid: String = header(req, agent::POD_UID)?;
    let pod: String = header(req, agent::AGENT)?;
    let (tx, lines) = mpsc::channel(4);
    let body = Response::new(BodyExt::boxed(Lines(lines)));
    let expected = targets
        .by_pod(&uid)
        .and_then(|t| Some((t.agents.connect(&uid, &pod)?, t)));
    let Some((retired, target)) = expected else {
        // An agent this operator does not want (replaced, its pod going, or one a previous
        // operator process started): told to leave rather than refused, so it gives its
        // ports back now instead of retrying until its operator timeout.
        tracing::info!(target: "mirrord_kube", pod_uid = %uid, agent = %pod, "an agent nobody expects connected; told to leave");
        // Detached: one message on a stream that ends with the agent's connection.
        tokio::spawn(async move { leave(&tx).await });
        return Ok(body);
    };
    tracing::info!(target: "mirrord_kube", target_ref = %target.reference_string(), pod_uid = %uid, agent = %pod, "agent connected");
    // Detached: the route stream ends with the agent's connection.
    tokio::spawn(stream_routes(Connected { target, uid, pod }, retired, tx));
    Ok(body)
}

/// Sends the agent its snapshot now and after every change, until its stream goes or the
/// operator forgets the agent (then: leave).
async fn stream_routes(agent: Connected, retired: Retired, tx: mpsc::Sender<Bytes>) {
    let mut rx = agent.target.subscribe();
    loop {
        let all = Arc::clone(&rx.borrow_and_update());
        let snapshot = agent.target.snapshot_for(&agent.uid, &all);
        if send(&tx, &snapshot).await.is_err() {
            return;
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = retired.wait() => {
                tracing::info!(target: "mirrord_kube", target_ref = %agent.target.reference_string(), agent = %agent.pod, "agent told to leave");
                drop(agent);
                return leave(&tx).await;
            }
            _ = tx.closed() => return,
        }
    }
}

/// Tells an agent to leave, and keeps its stream open until it goes (its connections in
/// flight still use the link).
async fn leave(tx: &mpsc::Sender<Bytes>) {
    if send(tx, &RouteSnapshot::leave()).await.is_ok() {
        tx.closed().await;
    }
}

async fn send(
    tx: &mpsc::Sender<Bytes>,
    snapshot: &RouteSnapshot,
) -> Result<(), mpsc::error::SendError<Bytes>> {
    let mut line = serde_json::to_vec(snapshot).expect("snapshots serialise");
    line.push(b'\n');
    tx.send(Bytes::from(line)).await
}

/// The route stream's body: one line per snapshot.
struct Lines(mpsc::Receiver<Bytes>);

impl hyper::body::Body for Lines {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx).map(|l| l.map(|b| Ok(Frame::data(b))))
    }
}

/// Whose request it is (the session's subscription on its port) and its original head.
fn handed_request(
    targets: &Targets,
    req: &Request<Incoming>,
) -> Result<(Subscriber, u16, HttpRequestHead), GatewayError> {
    let session: u64 = header(req, agent::SESSION)?;
    let port: u16 = header(req, agent::PORT)?;
    let head = req
        .headers()
        .get(agent::HEAD)
        .and_then(|v| decode_head(v.as_bytes()).ok())
        .ok_or(GatewayError::BadHeader(agent::HEAD))?;
    Ok((subscriber(targets, session, port)?, port, head))
}

async fn stolen_request(
    targets: &Targets,
    req: Request<Incoming>,
) -> Result<Response<Body>, GatewayError> {
    let (sub, port, mut head) = handed_request(targets, &req)?;
    let span = request_span(&sub, port, &mut head);
    let (respond, answer) = oneshot::channel();
    let body: Body = req.into_body().map_err(|e| Box::new(e) as BoxError).boxed();
    sub.tx
        .send(Handoff::StolenRequest {
            port,
            head: Box::new(head),
            body,
            respond,
        })
        .await
        .map_err(|_| GatewayError::SessionGone)?;
    let answer = answer.await;
    if let Ok(StolenResponse::GivenBack(_)) = answer {
        // Not stolen after all, nor counted as such: the agent has the body to replay.
        return Ok(Response::builder()
            .status(StatusCode::CONFLICT)
            .header(agent::GIVEN_BACK, "1")
            .body(full(Bytes::new()))
            .expect("valid response"));
    }
    sub.counters.requests.inc();
    match &answer {
        Ok(StolenResponse::Response { head, .. }) => span.finish(head.status, None),
        // The agent answers the caller 502, as the one-machine interceptor does.
        Ok(StolenResponse::Failed(_)) => span.finish(
            StatusCode::BAD_GATEWAY.as_u16(),
            Some("the developer's local process did not answer"),
        ),
        _ => span.finish(StatusCode::BAD_GATEWAY.as_u16(), Some("the session ended")),
    }
    match answer {
        Ok(StolenResponse::Response {
            head,
            body,
            upgraded: Some(io),
        }) => {
            // The developer's end waits for the agent's tunnel of the client's end.
            let id = targets.1.park(io);
            Ok(Response::builder()
                .header(agent::HEAD, encode_head(&head))
                .header(agent::UPGRADE, id)
                .body(body)
                .expect("valid response"))
        }
        Ok(StolenResponse::Response { head, body, .. }) => Ok(Response::builder()
            .header(agent::HEAD, encode_head(&head))
            .body(body)
            .expect("valid response")),
        Ok(StolenResponse::Failed(why)) => Err(GatewayError::Failed(why)),
        Ok(StolenResponse::GivenBack(_)) | Err(_) => Err(GatewayError::SessionGone),
    }
}

/// The stolen request's span, as on one machine: the caller's `traceparent` (the agent
/// passes it on untouched) is its parent, and the developer's process gets this span's.
fn request_span(sub: &Subscriber, port: u16, head: &mut HttpRequestHead) -> RequestSpan {
    let mut trace = http::HeaderMap::new();
    for (name, value) in &head.headers {
        if name.eq_ignore_ascii_case("traceparent") || name.eq_ignore_ascii_case("tracestate") {
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                http::HeaderValue::from_bytes(value),
            ) {
                trace.append(n, v);
            }
        }
    }
    let path = head.uri.split('?').next().unwrap_or("/");
    let span = sub.trace.stolen_request(port, &head.method, path, &trace);
    for (name, value) in span.propagation_headers() {
        head.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(&name));
        head.headers.push((name, Bytes::from(value)));
    }
    span
}

async fn mirrored_request(
    targets: &Targets,
    req: Request<Incoming>,
) -> Result<Response<Body>, GatewayError> {
    let (sub, port, head) = handed_request(targets, &req)?;
    let body = req
        .into_body()
        .collect()
        .await
        .map_err(|e| GatewayError::Failed(e.to_string()))?
        .to_bytes();
    // A mirror never slows the target: a session that is behind loses copies.
    let _ = sub.tx.try_send(Handoff::MirroredRequest {
        port,
        head: Box::new(head),
        body,
    });
    Ok(Response::new(full(Bytes::new())))
}

/// How long a developer's end of an upgraded request waits for the agent to join it.
const UPGRADE_JOIN: Duration = Duration::from_secs(30);

/// Developers' ends of upgraded stolen requests (a 101 answer), each until the agent's
/// tunnel for the client's end joins it (or [`UPGRADE_JOIN`] passes).
#[derive(Default)]
pub(crate) struct Upgrades {
    next: std::sync::atomic::AtomicU64,
    parked: std::sync::Mutex<
        std::collections::HashMap<u64, (std::time::Instant, tokio::io::DuplexStream)>,
    >,
}

impl Upgrades {
    fn park(&self, io: tokio::io::DuplexStream) -> u64 {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut parked = self.parked.lock().expect("upgrades");
        // Those an agent never came for (it died meanwhile) go now.
        parked.retain(|_, (at, _)| at.elapsed() < UPGRADE_JOIN);
        parked.insert(id, (std::time::Instant::now(), io));
        id
    }

    fn take(&self, id: u64) -> Option<tokio::io::DuplexStream> {
        self.parked
            .lock()
            .expect("upgrades")
            .remove(&id)
            .map(|(_, io)| io)
    }
}

/// The agent's tunnel of an upgraded request's client end: joined to the developer's.
fn join_upgrade(
    targets: &Targets,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, GatewayError> {
    let id: u64 = header(&req, agent::UPGRADE)?;
    let mut dev = targets.1.take(id).ok_or(GatewayError::SessionGone)?;
    let upgrade = hyper::upgrade::on(&mut req);
    // Detached: the relay ends with either side.
    tokio::spawn(async move {
        if let Ok(up) = upgrade.await {
            let mut client = TokioIo::new(up);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut dev).await;
        }
    });
    Ok(Response::new(full(Bytes::new())))
}

fn connect(targets: &Targets, mut req: Request<Incoming>) -> Result<Response<Body>, GatewayError> {
    let session: u64 = header(&req, agent::SESSION)?;
    let port: u16 = header(&req, agent::PORT)?;
    let peer: String = header(&req, agent::PEER)?;
    let kind: String = header(&req, agent::KIND)?;
    let sub = subscriber(targets, session, port)?;
    let upgrade = hyper::upgrade::on(&mut req);
    tracing::trace!(target: "mirrord_kube", session, port, %peer, %kind, "connection from an agent");
    // Detached: a carried connection's relay ends with it or with its session.
    tokio::spawn(async move {
        let up = match upgrade.await {
            Ok(up) => up,
            Err(e) => {
                tracing::debug!(target: "mirrord_kube", session, port, error = %e, "agent tunnel failed");
                return;
            }
        };
        let io = TokioIo::new(up);
        if kind == "steal" {
            sub.counters.connections.inc();
            let _ = sub
                .tx
                .send(Handoff::StolenConnection {
                    port,
                    peer,
                    io: Box::new(io),
                    direct: None,
                })
                .await;
        } else {
            let (tx, rx) = mpsc::channel(64);
            match sub
                .tx
                .try_send(Handoff::MirroredConnection { port, peer, rx })
            {
                Ok(()) => copy_into(io, tx).await,
                Err(_) => {
                    tracing::debug!(target: "mirrord_kube", session, port, "session behind; mirrored connection dropped")
                }
            }
        }
    });
    Ok(Response::new(full(Bytes::new())))
}

/// An agent's stream of context operations: what sessions ask of its pod.
fn context_ops(targets: &Targets, req: &Request<Incoming>) -> Result<Response<Body>, GatewayError> {
    let uid: String = header(req, agent::POD_UID)?;
    let pod: String = header(req, agent::AGENT)?;
    let target = targets
        .by_pod(&uid)
        .ok_or(GatewayError::UnknownPod(uid.clone()))?;
    let retired =
        target
            .agents
            .retired(&uid, &pod)
            .ok_or_else(|| GatewayError::UnexpectedAgent {
                uid: uid.clone(),
                agent: pod.clone(),
            })?;
    let (tx, lines) = mpsc::channel(64);
    // Absent: an agent from before the header was sent on this stream (version 2).
    let version = header::<u32>(req, agent::PROTOCOL).unwrap_or(2);
    target.ops.attach(&uid, &pod, version, tx.clone());
    tracing::debug!(target: "mirrord_kube", target_ref = %target.reference_string(), agent = %pod, "agent serves the context of its pod");
    // Detached: forgets the stream when the agent's connection ends or it is retired.
    tokio::spawn(async move {
        tokio::select! {
            _ = tx.closed() => {}
            _ = retired.wait() => {}
        }
        target.ops.detach(&uid, &pod);
    });
    Ok(Response::new(BodyExt::boxed(Lines(lines))))
}

/// The largest answer to a context operation (an environment): far above any real one.
const MAX_CONTEXT_REPLY: usize = 4 << 20;

/// An agent's filter counters so far: what is new since its last report goes to the
/// operator's `mirrord_bypassed_requests_total` and `mirrord_filter_limited_requests_total`
/// of the target's port, the same series the one-machine interceptor counts in.
async fn counters(
    targets: &Targets,
    req: Request<Incoming>,
) -> Result<Response<Body>, GatewayError> {
    let pod: String = header(&req, agent::AGENT)?;
    let (target, body) = from_pod(targets, req, "counters").await?;
    let now: Vec<agent::PortCounts> =
        serde_json::from_slice(&body).map_err(|_| GatewayError::BadHeader("counters body"))?;
    let reference = target.reference();
    let mut told = target.agent_counts.lock().expect("agent counts");
    let before = told.entry(pod).or_default();
    for c in &now {
        let was = before
            .iter()
            .find(|b| b.port == c.port)
            .copied()
            .unwrap_or_default();
        let series =
            target
                .ctx
                .metrics
                .bypass_counter(&reference.namespace, &reference.to_string(), c.port);
        series
            .bypassed
            .inc_by(c.bypassed.saturating_sub(was.bypassed));
        series.limited.inc_by(c.limited.saturating_sub(was.limited));
    }
    *before = now;
    Ok(Response::new(full(Bytes::new())))
}

/// The target of the pod an agent's request names, and the request's body (bounded);
/// `what` names it in errors.
async fn from_pod(
    targets: &Targets,
    req: Request<Incoming>,
    what: &str,
) -> Result<(Arc<crate::target::KubeTarget>, Bytes), GatewayError> {
    let uid: String = header(&req, agent::POD_UID)?;
    let target = targets
        .by_pod(&uid)
        .ok_or(GatewayError::UnknownPod(uid.clone()))?;
    let body = http_body_util::Limited::new(req.into_body(), MAX_CONTEXT_REPLY)
        .collect()
        .await
        .map_err(|e| GatewayError::Failed(format!("reading {what}: {e}")))?
        .to_bytes();
    Ok((target, body))
}

async fn context_reply(
    targets: &Targets,
    req: Request<Incoming>,
) -> Result<Response<Body>, GatewayError> {
    let op: u64 = header(&req, agent::OP)?;
    let (target, body) = from_pod(targets, req, "a context reply").await?;
    // Never logged: an environment's values are secrets.
    let reply: agent::ContextOpReply = serde_json::from_slice(&body)
        .map_err(|_| GatewayError::Failed("unreadable context reply".into()))?;
    match target
        .ops
        .complete(op, crate::context::Answer::Reply(reply))
    {
        true => Ok(Response::new(full(Bytes::new()))),
        false => Err(GatewayError::NoOperation(op)),
    }
}

/// A connection an agent made from its pod for a context operation, or (kind `file`) the
/// bytes of a file it opened.
fn outgoing(targets: &Targets, mut req: Request<Incoming>) -> Result<Response<Body>, GatewayError> {
    let uid: String = header(&req, agent::POD_UID)?;
    let op: u64 = header(&req, agent::OP)?;
    let file = req
        .headers()
        .get(agent::KIND)
        .is_some_and(|k| k == agent::KIND_FILE);
    let opened = if file {
        let stat: String = header(&req, agent::STAT)?;
        let stat = serde_json::from_str(&stat)
            .map_err(|_| GatewayError::Failed("unreadable file stat".into()))?;
        Opened::File(stat)
    } else {
        Opened::Connection(header(&req, agent::LOCAL)?)
    };
    let target = targets
        .by_pod(&uid)
        .ok_or(GatewayError::UnknownPod(uid.clone()))?;
    if !target.ops.waits(op) {
        return Err(GatewayError::NoOperation(op));
    }
    let upgrade = hyper::upgrade::on(&mut req);
    // Detached: hands the tunnel over once upgraded; dropped (closing the connection in
    // the pod) if its operation gave up meanwhile.
    tokio::spawn(async move {
        match upgrade.await {
            Ok(up) => {
                let io = TokioIo::new(up);
                let answer = match opened {
                    Opened::Connection(local) => crate::context::Answer::Tunnel { io, local },
                    Opened::File(stat) => crate::context::Answer::File { io, stat },
                };
                if !target.ops.complete(op, answer) {
                    tracing::debug!(target: "mirrord_kube", op, "outgoing connection came after its operation gave up; closed");
                }
            }
            Err(e) => {
                tracing::debug!(target: "mirrord_kube", op, error = %e, "outgoing tunnel failed")
            }
        }
    });
    Ok(Response::new(full(Bytes::new())))
}

/// What an agent's tunnel for a context operation carries.
enum Opened {
    /// A connection, whose address in the pod is this.
    Connection(std::net::SocketAddr),
    File(mirrord_protocol::FileStat),
}

/// A mirrored connection's bytes, as they come, into the session's channel.
async fn copy_into(mut io: TokioIo<hyper::upgrade::Upgraded>, tx: mpsc::Sender<Bytes>) {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        buf.reserve(16 * 1024);
        match io.read_buf(&mut buf).await {
            Ok(0) => {
                // The agent waits for this before it drops the tunnel (see its link).
                let _ = io.shutdown().await;
                return;
            }
            Err(_) => return,
            Ok(_) => {
                if tx.send(buf.split().freeze()).await.is_err() {
                    return;
                }
            }
        }
    }
}
