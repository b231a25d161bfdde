//! The API server: mutual TLS, the hello exchange, and dispatch of each connection's one
//! request (open a session, status, kill).

use crate::backend::TargetBackend;
use crate::config::SessionConfig;
use crate::sessions::Sessions;
use crate::{open, tunnel};
use futures::StreamExt;
use mirrord_identity::PeerIdentity;
use mirrord_protocol::{
    ClientMessage, ErrorCode, ErrorReply, FrameCodec, FrameError, KillRequest, ServerMessage,
    StatusReport, Welcome, PROTOCOL_VERSION,
};
use mirrord_telemetry::{ClientInfo, Telemetry};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_util::codec::Framed;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Initial read and write buffer of a connection's framing.
const IDLE_BUFFER: usize = 512;
/// Frames queued for one client before producers wait.
const OUTBOUND_QUEUE: usize = 1024;

pub struct Operator {
    pub backend: Arc<dyn TargetBackend>,
    pub sessions: Sessions,
    pub telemetry: Telemetry,
    pub cfg: SessionConfig,
    pub licensing: Arc<mirrord_license::Licensing>,
    pub policies: crate::policy::Policies,
    /// Opening sessions one at a time keeps lock arbitration simple and fair (first come).
    pub(crate) open_lock: tokio::sync::Mutex<()>,
}

impl Operator {
    pub fn new(
        backend: Arc<dyn TargetBackend>,
        telemetry: Telemetry,
        cfg: SessionConfig,
        licensing: Arc<mirrord_license::Licensing>,
        policies: crate::policy::Policies,
    ) -> Self {
        Self {
            backend,
            sessions: Sessions::new(telemetry.clone()),
            telemetry,
            cfg,
            licensing,
            policies,
            open_lock: tokio::sync::Mutex::new(()),
        }
    }

    pub fn status(&self) -> StatusReport {
        let (sessions, copies) = self.sessions.info();
        StatusReport {
            operator_version: env!("CARGO_PKG_VERSION").to_owned(),
            license: self.license_summary(),
            copies,
            sessions,
        }
    }

    fn license_summary(&self) -> Option<mirrord_protocol::LicenseSummary> {
        let v = self.licensing.view(chrono::Utc::now());
        if !v.enforced {
            return None;
        }
        let l = v.license.as_ref();
        Some(mirrord_protocol::LicenseSummary {
            enforced: true,
            name: l.map(|l| l.name.clone()).unwrap_or_default(),
            organization: l.map(|l| l.organization.clone()).unwrap_or_default(),
            expires: l.map(|l| l.expires.to_string()).unwrap_or_default(),
            fingerprint: l.map(|l| l.fingerprint.clone()).unwrap_or_default(),
            seats: l.map(|l| l.seats).unwrap_or_default(),
            seats_used: v.seats_used as u32,
            seats_month: v.month,
            problem: v.problem,
        })
    }

    /// Ends every session (operator shutting down).
    pub fn end_all(&self, reason: &str) {
        for s in self.sessions.list() {
            self.sessions.end(s.id, reason);
        }
    }
}

pub type Transport =
    Framed<tokio_rustls::server::TlsStream<TcpStream>, FrameCodec<ClientMessage, ServerMessage>>;
pub type Inbound = futures::stream::SplitStream<Transport>;

pub async fn serve(op: Arc<Operator>, listener: TcpListener, tls: Arc<rustls::ServerConfig>) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "API accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let op = Arc::clone(&op);
        let acceptor = acceptor.clone();
        tokio::spawn(async move { handle(op, acceptor, tcp, peer).await });
    }
}

async fn handle(op: Arc<Operator>, acceptor: TlsAcceptor, tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::warn!(%peer, error = %e, "TLS handshake failed (a client needs a certificate from `mirrord-operator certs issue`)");
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let identity = match tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| PeerIdentity::from_der(c))
    {
        Some(Ok(id)) => id,
        other => {
            tracing::warn!(%peer, problem = ?other.map(|r| r.err()), "client certificate unusable");
            return;
        }
    };
    let mut framed = Framed::new(tls, FrameCodec::default());
    // Idle sessions are the common case: start with small buffers (they grow on demand)
    // rather than tokio-util's 8 KiB each way, which is most of an idle session's memory.
    *framed.read_buffer_mut() = bytes::BytesMut::with_capacity(IDLE_BUFFER);
    *framed.write_buffer_mut() = bytes::BytesMut::with_capacity(IDLE_BUFFER);
    let (sink, mut inbound) = framed.split();
    let (out, out_rx) = mpsc::channel(OUTBOUND_QUEUE);
    let writer = tokio::spawn(mirrord_protocol::pump::write_frames(sink, out_rx));

    let hello = match next(&mut inbound, HANDSHAKE_TIMEOUT).await {
        Ok(ClientMessage::Hello(h)) => h,
        Ok(other) => {
            let _ = out
                .send(error(
                    ErrorCode::BadRequest,
                    format!("expected Hello first, got {}", kind(&other)),
                ))
                .await;
            return finish(out, writer).await;
        }
        Err(e) => {
            reject_frame(&out, &peer, &e).await;
            return finish(out, writer).await;
        }
    };
    if hello.protocol_version != PROTOCOL_VERSION {
        let msg = format!(
            "protocol version {} is not supported by this operator (it speaks {PROTOCOL_VERSION}); use a matching mirrordctl",
            hello.protocol_version
        );
        tracing::warn!(%peer, client_user = %identity.client_user, "{msg}");
        let _ = out.send(error(ErrorCode::ProtocolVersion, msg)).await;
        return finish(out, writer).await;
    }
    tracing::debug!(
        %peer,
        client_user = %identity.client_user,
        client_id = %identity.client_id,
        cli_version = %hello.cli_version,
        "client connected"
    );
    let client = ClientInfo {
        client_id: identity.client_id.clone(),
        client_user: identity.client_user.clone(),
        client_name: hello.client_name,
        client_hostname: hello.client_hostname,
        cli_version: hello.cli_version,
    };
    let _ = out
        .send(ServerMessage::Welcome(Box::new(Welcome {
            operator_version: env!("CARGO_PKG_VERSION").to_owned(),
            client_id: identity.client_id,
            client_user: identity.client_user,
        })))
        .await;

    match next(&mut inbound, HANDSHAKE_TIMEOUT).await {
        Ok(ClientMessage::OpenSession(req)) => {
            match open::open(&op, req, client, out.clone()).await {
                Ok(opened) => {
                    tunnel::run(&op, opened, inbound, out.clone()).await;
                }
                Err(reply) => {
                    let _ = out.send(ServerMessage::Error(reply)).await;
                }
            }
        }
        Ok(ClientMessage::Status) => {
            let _ = out.send(ServerMessage::Status(Box::new(op.status()))).await;
        }
        Ok(ClientMessage::Kill(k)) => {
            let ids = match k {
                KillRequest::All => op.sessions.list().iter().map(|s| s.id).collect(),
                KillRequest::Sessions(ids) => ids,
            };
            let mut killed = Vec::new();
            let mut missing = Vec::new();
            for id in ids {
                let reason = format!("killed by {}", client.client_user);
                if op.sessions.end(id, &reason) {
                    killed.push(id);
                } else {
                    missing.push(id.to_string());
                }
            }
            tracing::info!(client_user = %client.client_user, killed = killed.len(), "sessions killed on request");
            let reply = if missing.is_empty() {
                ServerMessage::Killed { sessions: killed }
            } else {
                error(
                    ErrorCode::SessionNotFound,
                    format!(
                        "no session {} (killed {} others); see `mirrordctl status`",
                        missing.join(", "),
                        killed.len()
                    ),
                )
            };
            let _ = out.send(reply).await;
        }
        Ok(other) => {
            let _ = out
                .send(error(
                    ErrorCode::BadRequest,
                    format!("expected OpenSession, Status or Kill, got {}", kind(&other)),
                ))
                .await;
        }
        Err(e) => reject_frame(&out, &peer, &e).await,
    }
    finish(out, writer).await
}

async fn finish(out: mpsc::Sender<ServerMessage>, writer: tokio::task::JoinHandle<()>) {
    drop(out);
    let _ = writer.await;
}

pub(crate) enum NextError {
    Frame(FrameError),
    Closed,
    Timeout,
}

impl std::fmt::Display for NextError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NextError::Frame(e) => write!(f, "{e}"),
            NextError::Closed => f.write_str("connection closed"),
            NextError::Timeout => f.write_str("no request within the handshake timeout"),
        }
    }
}

async fn next(inbound: &mut Inbound, wait: Duration) -> Result<ClientMessage, NextError> {
    match tokio::time::timeout(wait, inbound.next()).await {
        Err(_) => Err(NextError::Timeout),
        Ok(None) => Err(NextError::Closed),
        Ok(Some(Err(e))) => Err(NextError::Frame(e)),
        Ok(Some(Ok(m))) => Ok(m),
    }
}

pub(crate) async fn reject_frame(
    out: &mpsc::Sender<ServerMessage>,
    peer: &(dyn std::fmt::Display + Sync),
    e: &NextError,
) {
    match e {
        NextError::Frame(FrameError::Io(_)) | NextError::Closed => {}
        _ => {
            tracing::warn!(peer = %peer, error = %e, "bad frame from client; closing its connection");
            let _ = out
                .send(error(ErrorCode::MalformedFrame, e.to_string()))
                .await;
        }
    }
}

pub(crate) fn error(code: ErrorCode, message: String) -> ServerMessage {
    ServerMessage::Error(ErrorReply { code, message })
}

pub(crate) fn kind(m: &ClientMessage) -> &'static str {
    match m {
        ClientMessage::Hello(_) => "Hello",
        ClientMessage::OpenSession(_) => "OpenSession",
        ClientMessage::Status => "Status",
        ClientMessage::Kill(_) => "Kill",
        ClientMessage::Pong { .. } => "Pong",
        ClientMessage::ConnData { .. } => "ConnData",
        ClientMessage::ConnClose { .. } => "ConnClose",
        ClientMessage::HttpResponse { .. } => "HttpResponse",
        ClientMessage::HttpBody { .. } => "HttpBody",
        ClientMessage::HttpFailed { .. } => "HttpFailed",
        ClientMessage::EndSession => "EndSession",
    }
}
