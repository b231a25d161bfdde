//! The agent's link to the operator: one mutual-TLS HTTP/2 connection, dialled from the
//! target pod's network namespace ([`mirrord_protocol::agent`] says what travels). It
//! brings the routes in, and carries every session's handoffs out: a stolen request
//! becomes a request to the operator, a stolen connection a `CONNECT` tunnel.
//!
//! Without the operator the agent routes nothing (the target serves its own traffic) and,
//! if the operator stays away, leaves.

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mirrord_dataplane::handoff::HANDOFF_BUFFER;
use mirrord_dataplane::{Body, Handoff, StolenResponse, SubscriberTx};
use mirrord_protocol::agent::{self, RouteSnapshot};
use mirrord_protocol::{HttpRequestHead, HttpResponseHead};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot reach the operator at {addr}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the operator's HTTP/2 handshake failed")]
    Handshake(#[source] hyper::Error),
    #[error("the operator refused the request: {0}")]
    Refused(String),
    #[error("the link to the operator broke")]
    Broken(#[source] hyper::Error),
}

/// How the link's connection is made.
pub enum Dial {
    /// The agent dials the operator's gateway (an agent pod, with its mutual-TLS
    /// credential).
    Connect(String),
    /// The operator dials the agent on this listener (an ephemeral container in the target
    /// pod, which holds no credential of its own); the agent still speaks TLS as the client
    /// and verifies the operator.
    Accept(tokio::net::TcpListener),
}

/// How long an accepting agent waits for the operator before it checks whether the
/// operator has been away too long.
const ACCEPT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

pub struct Link {
    addr: String,
    dial: Dial,
    tls: TlsConnector,
    pod_uid: String,
    /// This agent's own pod (the operator tells a leaving agent from its replacement by it).
    agent: String,
    sender: Mutex<Option<SendRequest<Body>>>,
}

/// Queued handoffs per session before the data plane sees the session as slow.
const BRIDGE_QUEUE: usize = 1024;

impl Link {
    pub fn new(
        dial: Dial,
        tls: Arc<rustls::ClientConfig>,
        pod_uid: String,
        agent: String,
    ) -> Arc<Self> {
        let mut tls = (*tls).clone();
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let addr = match &dial {
            Dial::Connect(addr) => addr.clone(),
            Dial::Accept(l) => l
                .local_addr()
                .map(|a| format!("the operator dialling {a}"))
                .unwrap_or_default(),
        };
        Arc::new(Self {
            addr,
            dial,
            tls: TlsConnector::from(Arc::new(tls)),
            pod_uid,
            agent,
            sender: Mutex::default(),
        })
    }

    /// Connects and returns the route stream; handoffs use the same connection.
    pub async fn connect(&self) -> Result<RouteStream, LinkError> {
        let connect_err = |source| LinkError::Connect {
            addr: self.addr.clone(),
            source,
        };
        let tcp = match &self.dial {
            Dial::Connect(addr) => tokio::net::TcpStream::connect(addr)
                .await
                .map_err(connect_err)?,
            Dial::Accept(listener) => {
                tokio::time::timeout(ACCEPT_WAIT, listener.accept())
                    .await
                    .map_err(|_| connect_err(std::io::ErrorKind::TimedOut.into()))?
                    .map_err(connect_err)?
                    .0
            }
        };
        let _ = tcp.set_nodelay(true);
        let name = rustls::pki_types::ServerName::try_from(mirrord_identity::OPERATOR_SERVER_NAME)
            .expect("a valid name");
        let tls = self.tls.connect(name, tcp).await.map_err(connect_err)?;
        let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(HANDOFF_BUFFER as u32)
            .handshake(TokioIo::new(tls))
            .await
            .map_err(LinkError::Handshake)?;
        // Detached: the HTTP/2 connection's driver ends with the connection.
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::warn!(target: "mirrord_agent", error = %e, "link to the operator closed");
            }
        });
        let stream = open_stream(&mut sender, agent::ROUTES_PATH, self).await?;
        *self.sender.lock().expect("sender") = Some(sender);
        Ok(stream)
    }

    /// Opens the stream of context operations on the connection [`Link::connect`] made.
    pub async fn context_ops(&self) -> Result<ContextStream, LinkError> {
        let mut sender = self
            .sender()
            .ok_or_else(|| LinkError::Refused("not connected".into()))?;
        sender.ready().await.map_err(LinkError::Broken)?;
        open_stream(&mut sender, agent::CONTEXT_PATH, self).await
    }

    /// Answers context operation `op`.
    pub async fn context_reply(&self, op: u64, reply: &agent::ContextOpReply) {
        let Some(sender) = self.sender() else { return };
        let body = serde_json::to_vec(reply).expect("replies serialise");
        let req = Request::post(agent::CONTEXT_REPLY_PATH)
            .header(agent::POD_UID, &self.pod_uid)
            .header(agent::OP, op)
            .body(
                Full::new(bytes::Bytes::from(body))
                    .map_err(|never| match never {})
                    .boxed(),
            )
            .expect("valid request");
        if let Err(e) = send(sender, req).await {
            tracing::warn!(target: "mirrord_agent", op, error = %e, "cannot answer a context operation");
        }
    }

    /// Opens the tunnel that carries the connection operation `op` made (its address in
    /// the pod is `local`).
    pub async fn outgoing(
        &self,
        op: u64,
        local: std::net::SocketAddr,
    ) -> Result<hyper::upgrade::Upgraded, LinkError> {
        self.tunnel(op, agent::KIND_OUTGOING, (agent::LOCAL, local.to_string()))
            .await
    }

    /// Opens the tunnel that carries the bytes of the file operation `op` opened.
    pub async fn file(
        &self,
        op: u64,
        stat: &mirrord_protocol::FileStat,
    ) -> Result<hyper::upgrade::Upgraded, LinkError> {
        let stat = serde_json::to_string(stat).expect("a stat serialises");
        self.tunnel(op, agent::KIND_FILE, (agent::STAT, stat)).await
    }

    async fn tunnel(
        &self,
        op: u64,
        kind: &'static str,
        (name, value): (&'static str, String),
    ) -> Result<hyper::upgrade::Upgraded, LinkError> {
        let sender = self
            .sender()
            .ok_or_else(|| LinkError::Refused("not connected".into()))?;
        let req = Request::builder()
            .method(Method::CONNECT)
            .uri("mirrord-operator:0")
            .header(agent::POD_UID, &self.pod_uid)
            .header(agent::KIND, kind)
            .header(agent::OP, op)
            .header(name, value)
            .body(empty())
            .expect("valid request");
        let resp = send(sender, req).await?;
        if resp.status() != StatusCode::OK {
            return Err(LinkError::Refused(resp.status().to_string()));
        }
        hyper::upgrade::on(resp).await.map_err(LinkError::Broken)
    }

    /// Tells the operator that the routes of `version` are in force.
    pub async fn applied(&self, version: u64) {
        let Some(sender) = self.sender() else { return };
        let req = Request::post(agent::APPLIED_PATH)
            .header(agent::POD_UID, &self.pod_uid)
            .header(agent::AGENT, &self.agent)
            .header(agent::VERSION, version)
            .body(empty())
            .expect("valid request");
        if let Err(e) = send(sender, req).await {
            tracing::warn!(target: "mirrord_agent", error = %e, "cannot report applied routes");
        }
    }

    /// Tells the operator what the filters decided so far.
    pub async fn counters(&self, counts: &[agent::PortCounts]) -> bool {
        let Some(sender) = self.sender() else {
            return false;
        };
        let body = serde_json::to_vec(counts).expect("counts serialize");
        let req = Request::post(agent::COUNTERS_PATH)
            .header(agent::POD_UID, &self.pod_uid)
            .header(agent::AGENT, &self.agent)
            .body(full(Bytes::from(body)))
            .expect("valid request");
        match send(sender, req).await {
            Ok(resp) => resp.status() == StatusCode::OK,
            Err(e) => {
                tracing::debug!(target: "mirrord_agent", error = %e, "cannot report filter counters");
                false
            }
        }
    }

    pub fn disconnected(&self) {
        *self.sender.lock().expect("sender") = None;
    }

    fn sender(&self) -> Option<SendRequest<Body>> {
        self.sender.lock().expect("sender").clone()
    }

    /// A session's bridge: handoffs sent to the returned channel reach the operator. Each
    /// counts in `in_flight` until it is done (answered, or its tunnel closed), so a
    /// leaving agent can let them finish.
    pub fn bridge(self: &Arc<Self>, session: u64, in_flight: &Arc<AtomicUsize>) -> SubscriberTx {
        let (tx, mut rx) = mirrord_dataplane::handoff::channel(BRIDGE_QUEUE);
        let link = Arc::clone(self);
        let in_flight = Arc::clone(in_flight);
        // Detached: the bridge ends when the session's queue closes; what it carries is
        // counted in `in_flight`, which the agent waits for before it leaves.
        tokio::spawn(async move {
            while let Some(h) = rx.recv().await {
                let link = Arc::clone(&link);
                let counted = InFlight::start(&in_flight);
                // Counted in `in_flight` (see above).
                tokio::spawn(async move {
                    link.forward(session, h).await;
                    drop(counted);
                });
            }
        });
        tx
    }

    async fn forward(&self, session: u64, handoff: Handoff) {
        let Some(sender) = self.sender() else {
            tracing::warn!(target: "mirrord_agent", session, "operator unreachable; handoff dropped");
            if let Handoff::StolenRequest { respond, .. } = handoff {
                let _ = respond.send(StolenResponse::Failed("the operator is unreachable".into()));
            }
            return;
        };
        match handoff {
            Handoff::StolenRequest {
                port,
                head,
                body,
                respond,
            } => {
                let answer = match replayable(body).await {
                    Ok((body, replay)) => {
                        let req =
                            request_to_operator(agent::REQUEST_PATH, session, port, &head, body);
                        stolen_response(sender, req, replay).await
                    }
                    Err(e) => StolenResponse::Failed(format!("the request's body broke: {e}")),
                };
                let _ = respond.send(answer);
            }
            // Only the operator's backends say these.
            Handoff::Notice { .. } => {}
            Handoff::MirroredRequest { port, head, body } => {
                let body = Full::new(body).map_err(|never| match never {}).boxed();
                let req = request_to_operator(agent::MIRROR_PATH, session, port, &head, body);
                if let Err(e) = send(sender, req).await {
                    tracing::debug!(target: "mirrord_agent", session, error = %e, "mirrored request not delivered");
                }
            }
            Handoff::StolenConnection {
                port, peer, mut io, ..
            } => match tunnel(sender, session, port, &peer, "steal").await {
                Ok(up) => {
                    let mut up = TokioIo::new(up);
                    let _ = tokio::io::copy_bidirectional(&mut io, &mut up).await;
                }
                Err(e) => {
                    tracing::warn!(target: "mirrord_agent", session, port, error = %e, "stolen connection not delivered")
                }
            },
            Handoff::MirroredConnection { port, peer, mut rx } => {
                match tunnel(sender, session, port, &peer, "mirror").await {
                    Ok(up) => {
                        let mut up = TokioIo::new(up);
                        let mut sent = 0;
                        while let Some(b) = rx.recv().await {
                            sent += b.len();
                            if up.write_all(&b).await.is_err() {
                                break;
                            }
                        }
                        let _ = up.shutdown().await;
                        // Dropping the tunnel before the operator has closed its side resets
                        // the stream, and a reset discards what the operator has not read yet.
                        let mut sink = [0u8; 64];
                        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
                            while matches!(up.read(&mut sink).await, Ok(n) if n > 0) {}
                        })
                        .await;
                        tracing::debug!(target: "mirrord_agent", session, port, %peer, sent, "mirrored connection sent");
                    }
                    Err(e) => {
                        tracing::debug!(target: "mirrord_agent", session, port, error = %e, "mirrored connection not delivered")
                    }
                }
            }
        }
    }
}

/// Counts a handoff as in flight until dropped (a cancelled task included).
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn start(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(count))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A stolen or mirrored request as the operator's agent endpoint at `path` takes it: the
/// session, port and head in headers, the client's body as the body.
fn request_to_operator(
    path: &str,
    session: u64,
    port: u16,
    head: &HttpRequestHead,
    body: Body,
) -> Request<Body> {
    Request::post(path)
        .header(agent::SESSION, session)
        .header(agent::PORT, port)
        .header(agent::HEAD, agent::encode_head(head))
        .body(body)
        .expect("valid request")
}

fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

async fn send(
    mut sender: SendRequest<Body>,
    req: Request<Body>,
) -> Result<http::Response<hyper::body::Incoming>, LinkError> {
    sender.ready().await.map_err(LinkError::Broken)?;
    sender.send_request(req).await.map_err(LinkError::Broken)
}

/// Bodies up to this size, of a known length, are kept while the operator decides: a
/// request the session gives back then goes to the pod whole.
const REPLAYABLE: u64 = 64 * 1024;

/// The body to send, and a copy of it when it is small and complete (a GET's empty body,
/// most API calls'); a streamed or larger body is sent as it comes, with no copy.
async fn replayable(body: Body) -> Result<(Body, Option<Bytes>), mirrord_dataplane::BoxError> {
    use hyper::body::Body as _;
    if body.size_hint().exact().is_none_or(|n| n > REPLAYABLE) {
        return Ok((body, None));
    }
    let bytes = body.collect().await?.to_bytes();
    Ok((full(bytes.clone()), Some(bytes)))
}

fn full(b: Bytes) -> Body {
    Full::new(b).map_err(|never| match never {}).boxed()
}

async fn stolen_response(
    sender: SendRequest<Body>,
    req: Request<Body>,
    replay: Option<Bytes>,
) -> StolenResponse {
    let joiner = sender.clone();
    let resp = match send(sender, req).await {
        Ok(r) => r,
        Err(e) => return StolenResponse::Failed(e.to_string()),
    };
    if resp.headers().contains_key(agent::GIVEN_BACK) {
        return match replay {
            Some(body) => StolenResponse::GivenBack(full(body)),
            None => StolenResponse::Failed(
                "the session ended before taking this request (its body was streamed and cannot be replayed)".into(),
            ),
        };
    }
    let head = resp
        .headers()
        .get(agent::HEAD)
        .map(|v| agent::decode_head::<HttpResponseHead>(v.as_bytes()));
    match head {
        Some(Ok(head)) => {
            let upgrade = resp
                .headers()
                .get(agent::UPGRADE)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            StolenResponse::Response {
                head,
                body: resp
                    .into_body()
                    .map_err(|e| Box::new(e) as mirrord_dataplane::BoxError)
                    .boxed(),
                upgraded: upgrade.map(|id| join_upgrade(joiner, id)),
            }
        }
        _ => {
            let status = resp.status();
            let why = resp.into_body().collect().await.map(|b| b.to_bytes());
            StolenResponse::Failed(format!(
                "operator answered {status}: {}",
                String::from_utf8_lossy(&why.unwrap_or_default())
            ))
        }
    }
}

/// The developer upgraded a stolen request (101): the client's end, once the data plane
/// has it, is joined to the developer's, which waits at the operator under `id`.
fn join_upgrade(sender: SendRequest<Body>, id: u64) -> tokio::io::DuplexStream {
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    // Detached: the relay ends with either side.
    tokio::spawn(async move {
        let req = Request::builder()
            .method(Method::CONNECT)
            .uri("mirrord-operator:0")
            .header(agent::KIND, agent::KIND_UPGRADE)
            .header(agent::UPGRADE, id)
            .body(empty())
            .expect("valid request");
        let joined = match send(sender, req).await {
            Ok(resp) if resp.status() == StatusCode::OK => hyper::upgrade::on(resp).await.ok(),
            _ => None,
        };
        match joined {
            Some(up) => {
                let (mut up, mut ours) = (TokioIo::new(up), ours);
                let _ = tokio::io::copy_bidirectional(&mut up, &mut ours).await;
            }
            None => {
                tracing::warn!(target: "mirrord_agent", id, "an upgraded stolen request could not be joined to the developer's end")
            }
        }
    });
    theirs
}

async fn tunnel(
    sender: SendRequest<Body>,
    session: u64,
    port: u16,
    peer: &str,
    kind: &str,
) -> Result<hyper::upgrade::Upgraded, LinkError> {
    let req = Request::builder()
        .method(Method::CONNECT)
        .uri("mirrord-operator:0")
        .header(agent::SESSION, session)
        .header(agent::PORT, port)
        .header(agent::PEER, peer)
        .header(agent::KIND, kind)
        .body(empty())
        .expect("valid request");
    let resp = send(sender, req).await?;
    if resp.status() != StatusCode::OK {
        return Err(LinkError::Refused(resp.status().to_string()));
    }
    hyper::upgrade::on(resp).await.map_err(LinkError::Broken)
}

/// `GET path` on the link: a stream of JSON lines.
async fn open_stream<T>(
    sender: &mut SendRequest<Body>,
    path: &str,
    link: &Link,
) -> Result<Lines<T>, LinkError> {
    let req = Request::get(path)
        .header(agent::POD_UID, &link.pod_uid)
        .header(agent::AGENT, &link.agent)
        .header(agent::PROTOCOL, agent::PROTOCOL_VERSION)
        .body(empty())
        .expect("valid request");
    let resp = sender.send_request(req).await.map_err(LinkError::Broken)?;
    if resp.status() != StatusCode::OK {
        let status = resp.status();
        let body = resp.into_body().collect().await.map(|b| b.to_bytes());
        return Err(LinkError::Refused(format!(
            "{status}: {}",
            String::from_utf8_lossy(&body.unwrap_or_default())
        )));
    }
    Ok(Lines {
        body: resp.into_body(),
        buf: Vec::new(),
        _of: std::marker::PhantomData,
    })
}

/// The operator's route snapshots, one JSON line each.
pub type RouteStream = Lines<RouteSnapshot>;
/// The operator's context operations, one JSON line each.
pub type ContextStream = Lines<agent::ContextOp>;

/// A stream of JSON lines from the operator.
pub struct Lines<T> {
    body: hyper::body::Incoming,
    buf: Vec<u8>,
    _of: std::marker::PhantomData<fn() -> T>,
}

impl<T: serde::de::DeserializeOwned> Lines<T> {
    /// The next item; `None` when the operator ended the stream.
    pub async fn next(&mut self) -> Result<Option<T>, LinkError> {
        loop {
            if let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                match serde_json::from_slice(&line) {
                    Ok(s) => return Ok(Some(s)),
                    Err(e) => {
                        tracing::error!(target: "mirrord_agent", error = %e, "unreadable line from the operator; ignored");
                        continue;
                    }
                }
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(LinkError::Broken(e)),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An HTTP/2 link to an "operator" that answers every stolen request with `answer`.
    async fn link_answering(answer: fn() -> http::Response<Body>) -> SendRequest<Body> {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| async move {
                    // Read the body as the gateway would before answering.
                    let _ = req.into_body().collect().await;
                    Ok::<_, std::convert::Infallible>(answer())
                });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(theirs), svc)
                .await;
        });
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(ours))
                .await
                .unwrap();
        tokio::spawn(conn);
        sender
    }

    fn given_back() -> http::Response<Body> {
        http::Response::builder()
            .status(StatusCode::CONFLICT)
            .header(agent::GIVEN_BACK, "1")
            .body(empty())
            .unwrap()
    }

    fn head() -> HttpRequestHead {
        HttpRequestHead {
            method: "POST".into(),
            uri: "/orders".into(),
            version: mirrord_protocol::HttpVersion::Http11,
            headers: Vec::new(),
        }
    }

    /// A request the leaving session gave back goes to the pod with its body; one whose
    /// body was streamed (unknown length) cannot be replayed and fails, saying why.
    #[tokio::test]
    async fn a_given_back_request_is_replayed_whole_when_its_body_was_kept() {
        let (body, replay) = replayable(full(Bytes::from_static(b"{\"id\": 7}")))
            .await
            .unwrap();
        assert_eq!(replay.as_deref(), Some(&b"{\"id\": 7}"[..]));
        let req = request_to_operator(agent::REQUEST_PATH, 1, 80, &head(), body);
        let answer = stolen_response(link_answering(given_back).await, req, replay).await;
        let StolenResponse::GivenBack(body) = answer else {
            panic!("not given back")
        };
        assert_eq!(body.collect().await.unwrap().to_bytes(), "{\"id\": 7}");

        // A body still arriving (no length known): sent as it comes, not kept.
        let (streamed, inbox) = mirrord_tunnel::body::receive(Bytes::from_static(b"chunk"), false);
        drop(inbox);
        let (body, replay) = replayable(streamed).await.unwrap();
        assert!(replay.is_none(), "a body of unknown length is not kept");
        let req = request_to_operator(agent::REQUEST_PATH, 1, 80, &head(), body);
        let answer = stolen_response(link_answering(given_back).await, req, None).await;
        assert!(
            matches!(&answer, StolenResponse::Failed(why) if why.contains("cannot be replayed")),
            "a streamed body's request was not failed"
        );
    }
}
