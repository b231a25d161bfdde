//! Every message either side can send.

use crate::context::{
    ConnectFailure, ContextReply, ContextRequest, DnsFailure, Family, OutgoingConnected, Resolution,
};
use crate::files::{FileAnswer, FileFailure, FileRequest};
use crate::{HttpFilterSpec, SessionId};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::SocketAddr;

// ---------------------------------------------------------------- client -> operator

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ClientMessage {
    /// First message of every connection.
    Hello(ClientHello),
    /// Open a session; the connection then carries it until either side ends it.
    OpenSession(SessionRequest),
    /// Ask for the operator's status report.
    Status,
    /// End sessions by id (or all of them).
    Kill(KillRequest),
    /// A short-lived, single-use link that logs the caller's browser into the console.
    ConsoleLogin,
    /// Answer to [`ServerMessage::Ping`].
    Pong { nonce: u64 },
    /// Bytes from the developer's local process for a connection handed over.
    ConnData { conn: u64, data: Bytes },
    /// The developer's side of a handed-over connection closed.
    ConnClose { conn: u64 },
    /// The local process' answer to a stolen HTTP request. With `end: false` the body
    /// continues in [`ClientMessage::HttpBody`] frames.
    HttpResponse {
        req: u64,
        head: HttpResponseHead,
        body: Bytes,
        end: bool,
    },
    /// More of a response body; `end` marks its last frame.
    HttpBody { req: u64, data: Bytes, end: bool },
    /// The response body ends with these trailers (HTTP/2, gRPC's status).
    HttpTrailers {
        req: u64,
        trailers: Vec<(String, Bytes)>,
    },
    /// The stolen request could not be delivered locally; the operator answers 502.
    HttpFailed { req: u64, reason: String },
    /// The developer is leaving (Ctrl-C): end the session now.
    EndSession,
    /// More ports for the open session (its process listens now): answered with
    /// [`ServerMessage::PortsAdded`] or [`ServerMessage::PortsRefused`], in the order the
    /// additions were asked; the session goes on either way.
    AddPorts { ports: Vec<PortRequest> },
    /// Resolve `node` as the target does; answered with [`ServerMessage::Resolved`].
    Resolve {
        op: u64,
        node: String,
        family: Family,
    },
    /// Connect to `remote` from the target; answered with [`ServerMessage::Connected`].
    Connect { op: u64, remote: SocketAddr },
    /// A UDP flow to `remote` from the target; answered with [`ServerMessage::Connected`].
    /// Its datagrams travel as the connection's bytes, each a 2-byte big-endian length
    /// and its bytes (`mirrord_tunnel::datagrams`).
    ConnectUdp { op: u64, remote: SocketAddr },
    /// The session's process stopped listening on these ports: give them back to the
    /// target (answered with nothing; a port the session does not hold is ignored).
    RemovePorts { ports: Vec<u16> },
    /// An operation on the target's files; answered with [`ServerMessage::File`].
    File { op: u64, req: FileRequest },
}

impl ClientMessage {
    /// The message's name, for errors about it.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientMessage::Hello(_) => "Hello",
            ClientMessage::OpenSession(_) => "OpenSession",
            ClientMessage::Status => "Status",
            ClientMessage::Kill(_) => "Kill",
            ClientMessage::ConsoleLogin => "ConsoleLogin",
            ClientMessage::Pong { .. } => "Pong",
            ClientMessage::ConnData { .. } => "ConnData",
            ClientMessage::ConnClose { .. } => "ConnClose",
            ClientMessage::HttpResponse { .. } => "HttpResponse",
            ClientMessage::HttpBody { .. } => "HttpBody",
            ClientMessage::HttpTrailers { .. } => "HttpTrailers",
            ClientMessage::HttpFailed { .. } => "HttpFailed",
            ClientMessage::EndSession => "EndSession",
            ClientMessage::AddPorts { .. } => "AddPorts",
            ClientMessage::Resolve { .. } => "Resolve",
            ClientMessage::Connect { .. } => "Connect",
            ClientMessage::ConnectUdp { .. } => "ConnectUdp",
            ClientMessage::RemovePorts { .. } => "RemovePorts",
            ClientMessage::File { .. } => "File",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientHello {
    pub protocol_version: u32,
    pub cli_version: String,
    /// `whoami` realname: reported by the client, a label, not proof.
    pub client_name: String,
    /// `whoami` hostname: reported by the client, a label, not proof.
    pub client_hostname: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TargetRef {
    pub kind: String,
    pub name: String,
    pub namespace: String,
    /// One container of the target's pods (mirrord's `deployment/web/container/app`):
    /// validated against the pods' containers; ports are the pod's, so locks and routes do
    /// not depend on it. Not part of [`TargetRef`]'s display.
    #[serde(default)]
    pub container: Option<String>,
}

/// mirrord's "no target": the kind and the name of a targetless session's target.
pub const TARGETLESS: &str = "targetless";

impl fmt::Display for TargetRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // mirrord's "no target" has no name of its own.
        if self.kind == TARGETLESS && self.name == TARGETLESS {
            return f.write_str(TARGETLESS);
        }
        write!(f, "{}/{}", self.kind, self.name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PortMode {
    Steal,
    Mirror,
}

impl fmt::Display for PortMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PortMode::Steal => "steal",
            PortMode::Mirror => "mirror",
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PortRequest {
    pub port: u16,
    pub mode: PortMode,
    pub filter: Option<HttpFilterSpec>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConcurrentSteal {
    /// Refuse the session, naming the holder.
    #[default]
    Abort,
    /// Open the session but do not steal the contested port.
    Continue,
    /// Take the port: the holder's lock ends.
    Override,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRequest {
    pub target: TargetRef,
    pub ports: Vec<PortRequest>,
    pub on_concurrent_steal: ConcurrentSteal,
    pub copy_target: bool,
    pub scale_down: bool,
    /// What the session's process gets of the target besides traffic; a session that asks
    /// for some context may ask for no ports (they come later, with `AddPorts`).
    pub context: ContextRequest,
    /// The session's process adds the ports it listens on as it does (`exec` without a port
    /// list): it may open with none.
    pub listen: bool,
    /// The profile the session works under (`--profile`, the config file's `profile`): its
    /// rules bind the session as a policy's would.
    #[serde(default)]
    pub profile: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum KillRequest {
    Sessions(Vec<SessionId>),
    All,
}

// ---------------------------------------------------------------- operator -> client

#[derive(Debug, Clone, Serialize, Deserialize)]
// Rarely sent, large variants are boxed: every session preallocates a block of these in
// its outbound queue, so the enum's size is paid per idle session.
pub enum ServerMessage {
    /// Answer to [`ClientHello`]: who the operator authenticated.
    Welcome(Box<Welcome>),
    SessionOpened(Box<SessionOpened>),
    /// The request failed; for a session, it is over.
    Error(ErrorReply),
    Status(Box<StatusReport>),
    Killed {
        sessions: Vec<SessionId>,
    },
    /// Answer to [`ClientMessage::ConsoleLogin`]: open `url` within `expires_in_secs`,
    /// once.
    ConsoleLogin {
        url: String,
        expires_in_secs: u64,
    },
    Ping {
        nonce: u64,
    },
    /// A whole TCP connection handed to the developer (unfiltered steal or mirror). `port`
    /// here and in [`ServerMessage::HttpRequest`] and [`ServerMessage::PortLost`] is the
    /// port as the session asked for it (a Service's port, not the pods' it stands for).
    NewConnection {
        conn: u64,
        port: u16,
        mode: PortMode,
        peer: String,
    },
    ConnData {
        conn: u64,
        data: Bytes,
    },
    ConnClose {
        conn: u64,
    },
    /// One HTTP request handed to the developer (filtered steal, or a mirrored copy).
    /// A mirrored request's response is discarded; a stolen one's is sent back.
    HttpRequest {
        req: u64,
        port: u16,
        mode: PortMode,
        head: Box<HttpRequestHead>,
        body: Bytes,
        /// `false`: the body continues in [`ServerMessage::HttpBody`] frames.
        end: bool,
    },
    /// More of a stolen request's body; `end` marks its last frame.
    HttpBody {
        req: u64,
        data: Bytes,
        end: bool,
    },
    /// The stolen request's body ends with these trailers.
    HttpTrailers {
        req: u64,
        trailers: Vec<(String, Bytes)>,
    },
    /// After a 101 answer to a stolen request, `conn == req` carries raw bytes both ways.
    Upgraded {
        req: u64,
    },
    /// Another session took this port with `--on-concurrent-steal override`.
    PortLost {
        port: u16,
        reason: String,
    },
    /// Something the developer should know that does not end the session (in a cluster:
    /// an agent of the target was lost, or its replacement took over).
    Notice {
        message: String,
    },
    /// The operator ended the session (killed, timed out, shut down).
    SessionEnded {
        reason: String,
    },
    /// Answer to [`ClientMessage::AddPorts`].
    PortsAdded {
        ports: Vec<PortOutcome>,
    },
    /// [`ClientMessage::AddPorts`] refused; the session goes on without them.
    PortsRefused(ErrorReply),
    /// Answer to [`ClientMessage::Resolve`].
    Resolved {
        op: u64,
        result: Result<Resolution, DnsFailure>,
    },
    /// Answer to [`ClientMessage::Connect`].
    Connected {
        op: u64,
        result: Result<OutgoingConnected, ConnectFailure>,
    },
    /// Answer to [`ClientMessage::File`].
    File {
        op: u64,
        result: Result<FileAnswer, FileFailure>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Welcome {
    pub operator_version: String,
    pub client_id: String,
    pub client_user: String,
    /// The role the caller's certificate carries (`developer`, `admin`).
    pub role: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionOpened {
    pub session_id: SessionId,
    pub ports: Vec<PortOutcome>,
    /// The copy's name when the session works on a copy of the target.
    pub copy: Option<String>,
    /// What was granted of the context asked for (`None`: none asked for).
    pub context: Option<ContextReply>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PortOutcome {
    pub port: u16,
    pub mode: PortMode,
    /// The filter as text (`header=x-user: alice and path=^/api`); empty when unfiltered.
    pub filter: String,
    /// The same filter, part by part (for `status --json`).
    pub http_filter: Option<HttpFilterSpec>,
    /// `None`: active. `Some(why)`: the port is not stolen (concurrent steal `continue`).
    pub skipped: Option<String>,
    /// Other sessions' filtered steals on the same port that match some of the requests
    /// this one's filter matches (first subscriber wins).
    #[serde(default)]
    pub overlaps: Vec<FilterOverlap>,
    /// For a session on a Service: the Service's port the session asked for, which `port`
    /// (the pods' port its `targetPort` names, what is held and handed over) stands for.
    /// `None` for another target, or a port the Service does not expose.
    #[serde(default)]
    pub service_port: Option<u16>,
}

/// Another session's filter on the same port that takes (or loses) requests this one's also
/// matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterOverlap {
    pub session_id: SessionId,
    pub client_user: String,
    /// That session's filter, as text.
    pub filter: String,
    /// `true`: that session subscribed first, so requests both match go to it; `false`: it
    /// came later, and gets only what this session's filter does not match.
    pub first: bool,
    /// That session's filter matches every request (see the README's rule).
    pub catch_all: bool,
    /// A request both filters match, e.g. `GET / (x-user: alice)`.
    pub example: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    BadRequest,
    MalformedFrame,
    ProtocolVersion,
    UnknownTarget,
    UnknownPort,
    InvalidFilter,
    PortConflict,
    ScaleDownConflict,
    CopyUnavailable,
    SessionNotFound,
    Killed,
    License,
    Seats,
    Policy,
    Internal,
    /// An operator limit (filter size, ports, sessions per client, connections).
    Limit,
    /// The caller's role does not allow the action.
    Forbidden,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorReply {
    pub code: ErrorCode,
    pub message: String,
}

impl fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HttpRequestHead {
    pub method: String,
    /// Path and query, as received.
    pub uri: String,
    pub version: HttpVersion,
    pub headers: Vec<(String, Bytes)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HttpResponseHead {
    pub status: u16,
    pub headers: Vec<(String, Bytes)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HttpVersion {
    Http10,
    Http11,
    Http2,
}

// ---------------------------------------------------------------- status

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    pub operator_version: String,
    /// Who asked, as the operator authenticated them: a developer's report holds only
    /// their own sessions and copies.
    pub caller: Caller,
    pub license: Option<LicenseSummary>,
    pub copies: Vec<CopyInfo>,
    pub sessions: Vec<SessionInfo>,
    /// Sessions left out because the whole report would not fit one frame
    /// ([`crate::MAX_FRAME_LEN`]); `sessions` holds the first ones, oldest first.
    pub omitted_sessions: u64,
    /// The policies that bind the caller (whichever target), in the order they are checked.
    #[serde(default)]
    pub policies: Vec<PolicyInfo>,
}

/// A policy as `mirrordctl status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyInfo {
    /// `prod-filtered-only`, `MirrordPolicy shop/payments-filtered`, ...
    pub name: String,
    /// The targets it binds (`deployment/* in prod, labels app=payments`).
    pub targets: String,
    /// What it refuses and requires (`blocks unfiltered_steal; requires header ^x-user: `).
    pub rules: String,
    /// Why it cannot be used as written (it then refuses every session it binds).
    pub problem: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    pub client_user: String,
    pub client_id: String,
    pub role: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LicenseSummary {
    /// `false`: the operator trusts no license key and admits every session.
    pub enforced: bool,
    pub name: String,
    pub organization: String,
    pub expires: String,
    pub fingerprint: String,
    pub seats: u32,
    pub seats_used: u32,
    /// The calendar month seats are counted in (`2026-11`).
    pub seats_month: String,
    /// Why new sessions are refused, if they are.
    pub problem: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CopyInfo {
    pub original_target: String,
    pub namespace: String,
    pub copy_name: String,
    pub scale_down: bool,
    pub session_id: SessionId,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionInfo {
    pub session_id: SessionId,
    pub target: String,
    pub namespace: String,
    pub client_id: String,
    pub client_user: String,
    pub client_name: String,
    pub client_hostname: String,
    pub ports: Vec<PortOutcome>,
    pub duration_secs: u64,
    /// Last measured ping round trip, in milliseconds.
    pub ping_ms: Option<f64>,
    /// Seconds until the operator ends the session for its maximum session time.
    pub ends_in_secs: Option<u64>,
}
