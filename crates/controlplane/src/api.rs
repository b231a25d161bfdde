//! The API server: mutual TLS, the hello exchange, and dispatch of each connection's one
//! request (open a session, status, kill).
//!
//! What an unknown peer can cost is bounded: connections are capped, and at the cap the
//! connection idle the longest (a handshake that goes nowhere) makes room for a newcomer
//! ([`mirrord_serve::slots`]); the TLS handshake and the hello have deadlines, and frames
//! are small until the peer has said who it is.

use crate::caller::{Authority, Caller};
use crate::operator::Operator;
use crate::refusal::Refusal;
use crate::{open, session};
use arc_swap::ArcSwap;
use futures::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use mirrord_identity::{PeerIdentity, Role};
use mirrord_protocol::SessionId;
use mirrord_protocol::{
    encoded_len, ClientMessage, ErrorCode, ErrorReply, FrameCodec, FrameError, KillRequest,
    ServerMessage, StatusReport, Welcome, MAX_FRAME_LEN, PROTOCOL_VERSION,
};
use mirrord_serve::{serve_tls, Accepted, Listener, Slot};
use mirrord_telemetry::{ClientInfo, Event};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_util::codec::Framed;
use tokio_util::either::Either;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Initial read and write buffer of a connection's framing.
const IDLE_BUFFER: usize = 128;
/// Frames queued for one client before producers wait.
const OUTBOUND_QUEUE: usize = 1024;
/// The largest frame before a hello is accepted (a hello is a few hundred bytes).
const HELLO_FRAME_LEN: usize = 16 * 1024;
/// The largest request frame (a session request with its filters).
const REQUEST_FRAME_LEN: usize = 1024 * 1024;
/// The largest frame a client sends in a session: chunks of its answers (a few KiB to a
/// few hundred), an answer's head with up to 64 KiB of body.
const SESSION_FRAME_LEN: usize = 1024 * 1024;
/// How long a client's writer may take to flush the last frames after its request ends.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// A client's byte stream: its own mutual TLS connection, or a connection the Kubernetes
/// API server upgraded and proxied to the operator (the aggregated API).
pub type Io = Either<tokio_rustls::server::TlsStream<TcpStream>, TokioIo<Upgraded>>;
pub type Transport = Framed<Io, FrameCodec<ClientMessage, ServerMessage>>;

/// Who the layer under the protocol authenticated: a client certificate, or the API
/// server's front-proxy headers.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub client_id: String,
    pub client_user: String,
    pub role: Role,
    pub authority: Authority,
    /// A certificate's serial number (hex), to check against the registry.
    pub serial: Option<String>,
}

impl From<PeerIdentity> for Authenticated {
    fn from(id: PeerIdentity) -> Self {
        Self {
            client_id: id.client_id,
            client_user: id.client_user,
            role: id.role,
            authority: Authority::Certificate {
                expires: Some(id.not_after),
            },
            serial: Some(id.serial),
        }
    }
}

/// Serves the API until the operator's shutdown begins. `tls` is read at every accept, so
/// a new configuration (a new revocation list) applies to every handshake from then on.
pub async fn serve(
    op: Arc<Operator>,
    listener: TcpListener,
    tls: Arc<ArcSwap<rustls::ServerConfig>>,
) {
    let shutdown = op.shutdown.clone();
    let cfg = Listener {
        name: "API",
        slots: Arc::clone(&op.connections),
        handshake_timeout: HANDSHAKE_TIMEOUT,
        handshake_hint:
            "a client needs a valid, unrevoked certificate from `mirrord-operator certs issue`",
    };
    let acceptor = move || TlsAcceptor::from(tls.load_full());
    serve_tls(listener, acceptor, cfg, shutdown, move |a| {
        handle(Arc::clone(&op), a)
    })
    .await
}

async fn handle(op: Arc<Operator>, a: Accepted) {
    let Accepted { tls, peer, slot } = a;
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
    converse(op, Either::Left(tls), peer, identity.into(), slot).await;
}

/// Serves one connection the API server upgraded for an authenticated Kubernetes user
/// (the protocol is the same as over the operator's own TLS from here on).
pub async fn serve_upgraded(
    op: Arc<Operator>,
    io: TokioIo<Upgraded>,
    peer: SocketAddr,
    who: Authenticated,
) {
    let Ok(slot) = op.connections.acquire() else {
        tracing::warn!(%peer, max = op.limits.max_connections, "API connection limit reached and every connection is busy; closing an upgraded connection (limits.max_connections)");
        return;
    };
    let evicted = slot.evicted();
    tokio::select! {
        _ = evicted => tracing::debug!(%peer, "upgraded connection evicted to make room"),
        _ = converse(op, Either::Right(io), peer, who, slot) => {}
    }
}

/// The protocol on an authenticated stream: hello, then one request.
async fn converse(op: Arc<Operator>, io: Io, peer: SocketAddr, who: Authenticated, slot: Slot) {
    let mut framed = Framed::new(io, FrameCodec::with_max(HELLO_FRAME_LEN));
    // Idle sessions are the common case: start with small buffers (they grow on demand)
    // rather than tokio-util's 8 KiB each way, which is most of an idle session's memory.
    *framed.read_buffer_mut() = bytes::BytesMut::with_capacity(IDLE_BUFFER);
    *framed.write_buffer_mut() = bytes::BytesMut::with_capacity(IDLE_BUFFER);

    let caller = match Box::pin(hello(&op, &mut framed, &peer, who)).await {
        Ok(c) => c,
        Err(reply) => {
            if let Some(reply) = reply {
                let _ = framed.send(ServerMessage::Error(reply)).await;
            }
            return;
        }
    };
    framed.codec_mut().set_max(REQUEST_FRAME_LEN);
    // From here on the client is known: what its connections buffer is one budget.
    let charge = op.buffers.charge(&caller.client.client_id);
    framed.codec_mut().set_charge(charge);
    slot.touch();
    let request = match next(&mut framed, HANDSHAKE_TIMEOUT).await {
        Ok(m) => m,
        Err(e) => {
            if let Some(reply) = reject_frame(&peer, &e) {
                let _ = framed.send(ServerMessage::Error(reply)).await;
            }
            return;
        }
    };
    // A request in hand: real work, never evicted for a newcomer.
    let _working = slot.pin();
    let reply = match request {
        ClientMessage::OpenSession(req) => {
            return run_session(op, framed, req, caller, slot).await;
        }
        ClientMessage::Status => {
            // The reply may be larger than any request: up to a whole frame.
            framed.codec_mut().set_max(MAX_FRAME_LEN);
            ServerMessage::Status(Box::new(fit_status(op.status(&caller), MAX_FRAME_LEN)))
        }
        ClientMessage::Kill(k) => kill(&op, k, &caller),
        ClientMessage::ConsoleLogin => console_login(&op, &caller),
        other => error(
            ErrorCode::BadRequest,
            format!(
                "expected OpenSession, Status, Kill or ConsoleLogin, got {}",
                other.kind()
            ),
        ),
    };
    let _ = tokio::time::timeout(FLUSH_TIMEOUT, framed.send(reply)).await;
}

/// The hello exchange: checks the protocol version and what the client says about itself,
/// answers with who the operator authenticated. `Err(None)`: nothing to tell the peer.
async fn hello(
    op: &Operator,
    framed: &mut Transport,
    peer: &SocketAddr,
    identity: Authenticated,
) -> Result<Caller, Option<ErrorReply>> {
    let hello = match next(framed, HANDSHAKE_TIMEOUT).await {
        Ok(ClientMessage::Hello(h)) => h,
        Ok(other) => {
            return Err(Some(ErrorReply {
                code: ErrorCode::BadRequest,
                message: format!("expected Hello first, got {}", other.kind()),
            }))
        }
        Err(e) => return Err(reject_frame(peer, &e)),
    };
    if hello.protocol_version != PROTOCOL_VERSION {
        let msg = format!(
            "protocol version {} is not supported by this operator (it speaks {PROTOCOL_VERSION}); use a matching mirrordctl",
            hello.protocol_version
        );
        tracing::warn!(%peer, client_user = %identity.client_user, "{msg}");
        return Err(Some(ErrorReply {
            code: ErrorCode::ProtocolVersion,
            message: msg,
        }));
    }
    if let Err(refusal) = crate::bounds::check_hello(&hello, op.limits.max_client_label_len) {
        tracing::warn!(%peer, client_user = %identity.client_user, reason = refusal.reason(), "{refusal}");
        return Err(Some(refusal.reply()));
    }
    if let Some(refusal) = unregistered(op, &identity) {
        tracing::warn!(%peer, client_user = %identity.client_user, client_id = %identity.client_id, "{refusal}");
        return Err(Some(refusal.reply()));
    }
    tracing::debug!(
        %peer,
        client_user = %identity.client_user,
        client_id = %identity.client_id,
        cli_version = %hello.cli_version,
        "client connected"
    );
    let welcome = ServerMessage::Welcome(Box::new(Welcome {
        operator_version: env!("CARGO_PKG_VERSION").to_owned(),
        client_id: identity.client_id.clone(),
        client_user: identity.client_user.clone(),
        role: identity.role.to_string(),
    }));
    if framed.send(welcome).await.is_err() {
        return Err(None);
    }
    Ok(Caller {
        client: ClientInfo {
            client_id: identity.client_id,
            client_user: identity.client_user,
            client_name: hello.client_name,
            client_hostname: hello.client_hostname,
            cli_version: hello.cli_version,
        },
        role: identity.role,
        authority: identity.authority,
    })
}

/// A certificate the CA signed but the registry does not list cannot be listed or
/// revoked: it is refused, saying where credentials come from.
fn unregistered(op: &Operator, who: &Authenticated) -> Option<Refusal> {
    let (registered, serial) = (op.registered.as_ref()?, who.serial.as_ref()?);
    if registered.contains(serial) {
        return None;
    }
    Some(Refusal::Forbidden(format!(
        "the credential of {} (serial {serial}, client id {}) is not in this operator's registry of issued credentials, so it could be neither listed nor revoked; ask an admin for one from `mirrord-operator certs issue` run against this operator's state directory",
        who.client_user, who.client_id
    )))
}

/// Opens the session and, once it is open, runs it in a task of its own: this task (and
/// the handshake's state it was sized for) ends here, and the session's task is sized for
/// what a session carries for hours. `slot` (the connection's place under
/// `limits.max_connections`, pinned: a session is never evicted) goes with it.
async fn run_session(
    op: Arc<Operator>,
    mut framed: Transport,
    req: mirrord_protocol::SessionRequest,
    caller: Caller,
    slot: Slot,
) {
    let opened = match Box::pin(open::open(&op, req, caller)).await {
        Ok(o) => o,
        Err(reply) => {
            let _ =
                tokio::time::timeout(FLUSH_TIMEOUT, framed.send(ServerMessage::Error(reply))).await;
            return;
        }
    };
    // A client's frames in a session are small (its answers' chunks); the operator's may
    // carry a whole mirrored request.
    framed.codec_mut().set_max(MAX_FRAME_LEN);
    framed.codec_mut().set_max_in(SESSION_FRAME_LEN);
    // Split here: the transport moves to the heap (shared by the two halves) before the
    // session's task is made, so that task is not sized to hold it too.
    let (sink, inbound) = framed.split::<Box<ServerMessage>>();
    let (out, out_rx) = mpsc::channel(OUTBOUND_QUEUE);
    // Joined (or aborted) by the session's task below, which shutdown waits for.
    let writer = tokio::spawn(mirrord_tunnel::pump::write_frames(sink, out_rx));
    let reply = Box::new(ServerMessage::SessionOpened(Box::new(opened.reply.clone())));
    // Queued first: nothing else is sent on `out` before the actor starts.
    let _ = out.try_send(reply);
    for message in &opened.notices {
        let message = message.clone();
        let _ = out.try_send(Box::new(ServerMessage::Notice { message }));
    }
    let lifecycle = op.shutdown.clone();
    lifecycle.spawn(async move {
        let _pinned = slot.pin();
        let _slot = slot;
        session::run(op, opened, inbound, out).await;
        // A frozen client cannot take the writer's last frames: give up on it after a while.
        let abort = writer.abort_handle();
        if tokio::time::timeout(FLUSH_TIMEOUT, writer).await.is_err() {
            abort.abort();
        }
    });
}

/// The report cut to fit one frame of `max` bytes: the sessions that do not fit are left
/// out and counted (the admin still gets a status, never a closed connection).
fn fit_status(mut report: StatusReport, max: usize) -> StatusReport {
    // The enum's tag, the count's varint and room to spare.
    const SLACK: usize = 64;
    let sessions = std::mem::take(&mut report.sessions);
    let mut room = max.saturating_sub(encoded_len(&report) + SLACK);
    let mut kept = 0;
    for s in &sessions {
        let len = encoded_len(s);
        if len > room {
            break;
        }
        room -= len;
        kept += 1;
    }
    report.omitted_sessions = (sessions.len() - kept) as u64;
    if report.omitted_sessions > 0 {
        tracing::warn!(
            kept,
            omitted = report.omitted_sessions,
            "the status report does not fit one frame; sending the first {kept} sessions"
        );
    }
    report.sessions = sessions;
    report.sessions.truncate(kept);
    report
}

/// A console login link for the caller (it carries their user and role).
fn console_login(op: &Operator, caller: &Caller) -> ServerMessage {
    match op.console_logins.mint(caller) {
        Ok(url) => {
            tracing::info!(client_user = %caller.user(), role = caller.role.as_str(), "console login link issued");
            ServerMessage::ConsoleLogin {
                url,
                expires_in_secs: crate::console::LOGIN_TTL.as_secs(),
            }
        }
        Err(e) => error(ErrorCode::BadRequest, e.to_string()),
    }
}

/// Ends sessions on request (from the API and from the console: both are audited here). A developer may end only their own user's sessions (`--all`
/// means all of those); asking for someone else's refuses the whole request, with no
/// effect. Every kill and every refusal is an audit line.
pub fn kill(op: &Operator, k: KillRequest, caller: &Caller) -> ServerMessage {
    let visible = |id: &SessionId| op.sessions.get(*id).filter(|e| caller.may_manage(&e.meta));
    let ids: Vec<SessionId> = match k {
        KillRequest::All => op
            .sessions
            .list()
            .iter()
            .filter(|e| caller.may_manage(&e.meta))
            .map(|e| e.id)
            .collect(),
        KillRequest::Sessions(ids) if ids.len() > crate::bounds::MAX_KILL_IDS => {
            return error(
                ErrorCode::Limit,
                format!(
                    "{} session ids in one kill request; at most {} (use --all)",
                    ids.len(),
                    crate::bounds::MAX_KILL_IDS
                ),
            )
        }
        KillRequest::Sessions(ids) => ids,
    };
    if let Some(id) = ids
        .iter()
        .find(|id| visible(id).is_none() && op.sessions.get(**id).is_some())
    {
        let refusal = Refusal::Forbidden(format!(
            "kill session {id}: not yours and you are not an admin"
        ));
        op.telemetry.record(Event::RequestForbidden {
            client: caller.client.clone(),
            role: caller.role.as_str(),
            action: format!("kill session {id}"),
            message: refusal.to_string(),
        });
        return ServerMessage::Error(refusal.reply());
    }
    let mut killed = Vec::new();
    let mut missing = Vec::new();
    let reason = format!("killed by {}", caller.user());
    for id in ids {
        let entry = visible(&id);
        match entry {
            Some(e) if op.sessions.end(id, &reason) => {
                op.telemetry.record(Event::SessionKilled {
                    session: Arc::clone(&e.meta),
                    by: caller.client.clone(),
                    by_role: caller.role.as_str(),
                });
                killed.push(id);
            }
            _ => missing.push(id.to_string()),
        }
    }
    if missing.is_empty() {
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
    }
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

async fn next(framed: &mut Transport, wait: Duration) -> Result<ClientMessage, NextError> {
    match tokio::time::timeout(wait, framed.next()).await {
        Err(_) => Err(NextError::Timeout),
        Ok(None) => Err(NextError::Closed),
        Ok(Some(Err(e))) => Err(NextError::Frame(e)),
        Ok(Some(Ok(m))) => Ok(m),
    }
}

/// What to tell a peer whose frame could not be read (nothing if it is gone).
fn reject_frame(peer: &SocketAddr, e: &NextError) -> Option<ErrorReply> {
    match e {
        NextError::Frame(FrameError::Io(_)) | NextError::Closed => None,
        _ => {
            tracing::warn!(%peer, error = %e, "bad frame from client; closing its connection");
            Some(ErrorReply {
                code: ErrorCode::MalformedFrame,
                message: e.to_string(),
            })
        }
    }
}

pub(crate) fn error(code: ErrorCode, message: String) -> ServerMessage {
    ServerMessage::Error(ErrorReply { code, message })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirrord_protocol::{Caller, SessionInfo};

    fn report(sessions: usize, name_len: usize) -> StatusReport {
        StatusReport {
            operator_version: "0.1.0".into(),
            caller: Caller::default(),
            license: None,
            copies: Vec::new(),
            sessions: (0..sessions)
                .map(|i| SessionInfo {
                    session_id: SessionId(i as u64),
                    target: "deployment/api".into(),
                    namespace: "default".into(),
                    client_id: "c".into(),
                    client_user: "u".repeat(name_len),
                    client_name: String::new(),
                    client_hostname: String::new(),
                    ports: Vec::new(),
                    duration_secs: 1,
                    ping_ms: None,
                    ends_in_secs: None,
                })
                .collect(),
            omitted_sessions: 0,
            policies: Vec::new(),
        }
    }

    #[test]
    fn a_status_too_large_for_a_frame_leaves_sessions_out_and_says_so() {
        let small = fit_status(report(10, 10), MAX_FRAME_LEN);
        assert_eq!((small.sessions.len(), small.omitted_sessions), (10, 0));

        let fitted = fit_status(report(100, 10_000), 256 * 1024);
        assert!(fitted.omitted_sessions > 0);
        assert_eq!(fitted.sessions.len() as u64 + fitted.omitted_sessions, 100);
        // The oldest stay, in order.
        assert_eq!(fitted.sessions[0].session_id, SessionId(0));
        let msg = ServerMessage::Status(Box::new(fitted));
        let mut codec: FrameCodec<ClientMessage, ServerMessage> = FrameCodec::with_max(256 * 1024);
        let mut buf = bytes::BytesMut::new();
        tokio_util::codec::Encoder::encode(&mut codec, msg, &mut buf).expect("fits one frame");
    }
}
