//! What travels between the operator and its agents (Kubernetes targets).
//!
//! One mutual-TLS HTTP/2 connection per agent, opened by the agent (it runs in the target
//! pod's network namespace and dials out, so the target's pod exposes nothing new):
//! - `GET /v1/routes` (headers [`POD_UID`], [`AGENT`]): the operator streams a
//!   [`RouteSnapshot`] per line (JSON) whenever the routes of the agent's target change, and
//!   one with [`RouteSnapshot::leave`] when it no longer wants this agent;
//! - `POST /v1/request`: one stolen HTTP request, the original head in [`HEAD`] (hex of
//!   postcard: HTTP/2 forbids the connection headers an HTTP/1 head carries), the body
//!   streamed; the developer's answer comes back the same way;
//! - `POST /v1/mirror`: a copy of one request, answered at once;
//! - `POST /v1/applied`: the agent applied a snapshot (its version in [`VERSION`], the agent
//!   in [`AGENT`]);
//! - `CONNECT` with [`KIND`] `steal` or `mirror`: a whole connection, its bytes tunnelled.
//!
//! Every handoff names the session ([`SESSION`]) and the target port ([`PORT`]).
//!
//! The target's context (a session's `env`, `outgoing` and `dns`, issue 27) goes the other
//! way, so it rides on a stream the agent opens too:
//! - `GET /v1/context` (headers [`POD_UID`], [`AGENT`], [`PROTOCOL`]): the operator streams
//!   one [`ContextOp`] per line (JSON), each numbered;
//! - `POST /v1/context/reply` (header [`OP`]): the agent's [`ContextOpReply`] (JSON body);
//! - `CONNECT` with [`KIND`] `outgoing`, [`OP`] and [`LOCAL`]: the connection a
//!   [`ContextOpKind::Connect`] made from the pod, its bytes tunnelled. A connect that
//!   fails is a [`ContextOpReply::ConnectFailed`] instead.
//! - `CONNECT` with [`KIND`] `file`, [`OP`] and [`STAT`]: the bytes of a regular file a
//!   [`ContextOpKind::File`] opened, then its end. Anything else a file operation gives (a
//!   directory, a stat, a failure) is a [`ContextOpReply::File`].

use crate::context::{ConnectFailure, DnsFailure, EnvSelect, Family, Resolution};
use crate::files::{FileAnswer, FileFailure, FileRequest};
use crate::filter::HttpFilterSpec;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

pub const ROUTES_PATH: &str = "/v1/routes";
pub const REQUEST_PATH: &str = "/v1/request";
pub const MIRROR_PATH: &str = "/v1/mirror";
/// `POST` with [`POD_UID`] and [`VERSION`]: the agent applied that snapshot.
pub const APPLIED_PATH: &str = "/v1/applied";
/// `POST`: the agent's filter counters so far ([`PortCounts`], JSON), sent when they change
/// (at most once a second): the operator exports them as the one-machine interceptor's.
pub const COUNTERS_PATH: &str = "/v1/counters";
pub const VERSION: &str = "mirrord-version";

pub const POD_UID: &str = "mirrord-pod-uid";
/// The agent's own pod name: two agents of one target pod (one leaving, its replacement)
/// are told apart by it.
pub const AGENT: &str = "mirrord-agent";
pub const SESSION: &str = "mirrord-session";
pub const PORT: &str = "mirrord-port";
pub const PEER: &str = "mirrord-peer";
pub const HEAD: &str = "mirrord-head";
/// `steal`, `mirror` or `outgoing`, on a `CONNECT`.
pub const KIND: &str = "mirrord-kind";
/// On the operator's answer to a stolen request: the session was leaving and never took it
/// (its routes were gone); the agent gives it to the pod, as if no steal had been there.
pub const GIVEN_BACK: &str = "mirrord-given-back";
/// On the operator's answer to a stolen request the developer upgraded (101): the id under
/// which the developer's end waits; the agent joins the client's end to it with a tunnel of
/// kind [`KIND_UPGRADE`] carrying this header.
pub const UPGRADE: &str = "mirrord-upgrade";
/// The `KIND` of the tunnel that carries an upgraded stolen request's bytes.
pub const KIND_UPGRADE: &str = "upgrade";

/// The stream of [`ContextOp`]s to an agent.
pub const CONTEXT_PATH: &str = "/v1/context";
/// Where an agent answers a [`ContextOp`] ([`OP`]).
pub const CONTEXT_REPLY_PATH: &str = "/v1/context/reply";
/// The [`ContextOp::op`] a reply or an `outgoing` tunnel answers.
pub const OP: &str = "mirrord-op";
/// On an `outgoing` tunnel: the connection's address in the pod (what `getsockname` says).
pub const LOCAL: &str = "mirrord-local";
/// On a `file` tunnel: the file's [`crate::FileStat`] (JSON).
pub const STAT: &str = "mirrord-file-stat";
/// The `KIND` of the tunnel that carries a file's bytes.
pub const KIND_FILE: &str = "file";
/// The agent's [`PROTOCOL_VERSION`], on its route and context streams.
pub const PROTOCOL: &str = "mirrord-agent-protocol";
/// What an agent speaks. 1: routes and handoffs; 2: and the target's context
/// ([`CONTEXT_PATH`]); 3: UDP flows ([`ContextOpKind::ConnectUdp`]); 4: the target's files
/// ([`ContextOpKind::File`]). An operator gives a session the context only through an agent
/// of version 2 or later (an older agent image never opens the context stream), UDP through
/// one of version 3, files through one of version 4.
pub const PROTOCOL_VERSION: u32 = 4;
/// The `KIND` of a connection made from the pod for a session.
pub const KIND_OUTGOING: &str = "outgoing";

/// One operation in the target pod for a session's context, numbered by the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextOp {
    pub op: u64,
    /// The container whose process is the context (its runtime ID, without the
    /// `containerd://` scheme): its environment, its root's `/etc/resolv.conf` and
    /// `/etc/hosts`. The network namespace is the pod's, whichever container.
    pub container_id: String,
    pub kind: ContextOpKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContextOpKind {
    /// The container process's environment, selected in the agent (what is excluded never
    /// leaves the pod).
    Env(EnvSelect),
    Resolve {
        node: String,
        family: Family,
    },
    /// A TCP connect from the pod's network namespace.
    Connect {
        remote: SocketAddr,
    },
    /// A UDP flow from the pod's network namespace, answered like a connect: its tunnel
    /// carries length-prefixed datagrams.
    ConnectUdp {
        remote: SocketAddr,
    },
    /// An operation on the container's files (its root, its mounts).
    File(FileRequest),
}

/// The agent's answer to a [`ContextOp`] (a connect that succeeds answers with a tunnel).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContextOpReply {
    /// The environment, or why it cannot be read (never a value).
    Env(Result<Vec<(String, String)>, String>),
    Resolved(Result<Resolution, DnsFailure>),
    ConnectFailed(ConnectFailure),
    /// A file operation's answer (an opened regular file answers with a tunnel instead).
    File(Result<FileAnswer, FileFailure>),
}

/// What an agent's filters decided on one port since it started: requests a filtered steal
/// let through to the pod, and requests no filter could decide within its limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortCounts {
    pub port: u16,
    pub bypassed: u64,
    pub limited: u64,
}

/// Everything one agent applies: per port, who steals and who mirrors. Sent whole on every
/// change, so an agent that reconnects is current after one line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteSnapshot {
    /// Increases with every change; the agent reports the last one it applied
    /// ([`APPLIED_PATH`]), so a session opens once its routes are in force.
    #[serde(default)]
    pub version: u64,
    pub ports: Vec<PortRouteSpec>,
    /// The operator no longer wants this agent (its pod is being deleted, or another agent
    /// replaced it): remove the redirect now and leave, as on SIGTERM. The kubelet's signal
    /// is not enough: Kubernetes 1.20 sometimes delivers it only at its next sync, seconds
    /// later, and then kills the agent before its grace period is over.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leave: bool,
}

impl RouteSnapshot {
    /// What an agent the operator no longer wants is told.
    pub fn leave() -> Self {
        Self {
            leave: true,
            ..Self::default()
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRouteSpec {
    pub port: u16,
    /// The session stealing every connection of the port.
    pub steal: Option<u64>,
    /// Filtered steals in subscription order (the first match wins), with the filter as the
    /// operator accepted it (policy clauses in `required_header`).
    pub filtered: Vec<(u64, HttpFilterSpec)>,
    pub mirrors: Vec<(u64, Option<HttpFilterSpec>)>,
}

impl PortRouteSpec {
    pub fn is_empty(&self) -> bool {
        self.steal.is_none() && self.filtered.is_empty() && self.mirrors.is_empty()
    }

    /// Every session named on the port.
    pub fn sessions(&self) -> impl Iterator<Item = u64> + '_ {
        self.steal
            .into_iter()
            .chain(self.filtered.iter().map(|(s, _)| *s))
            .chain(self.mirrors.iter().map(|(s, _)| *s))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("malformed {HEAD} header")]
pub struct HeadError;

/// A head as one header value: hex of its postcard encoding.
pub fn encode_head<T: Serialize>(head: &T) -> String {
    let bytes = postcard::to_allocvec(head).expect("heads serialise");
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

pub fn decode_head<T: DeserializeOwned>(value: &[u8]) -> Result<T, HeadError> {
    if !value.len().is_multiple_of(2) {
        return Err(HeadError);
    }
    let nibble = |c: u8| (c as char).to_digit(16).ok_or(HeadError);
    let bytes = value
        .chunks(2)
        .map(|p| Ok((nibble(p[0])? << 4 | nibble(p[1])?) as u8))
        .collect::<Result<Vec<u8>, HeadError>>()?;
    postcard::from_bytes(&bytes).map_err(|_| HeadError)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{HttpRequestHead, HttpVersion};

    #[test]
    fn heads_survive_the_header_encoding() {
        let head = HttpRequestHead {
            method: "GET".into(),
            uri: "/a?b=c".into(),
            version: HttpVersion::Http11,
            headers: vec![
                ("connection".into(), "keep-alive".into()),
                ("x-bin".into(), bytes::Bytes::from_static(&[0, 255, 10])),
            ],
        };
        let back: HttpRequestHead = decode_head(encode_head(&head).as_bytes()).unwrap();
        assert_eq!(back.headers, head.headers);
        assert_eq!(back.uri, head.uri);
        assert!(decode_head::<HttpRequestHead>(b"zz").is_err());
        assert!(decode_head::<HttpRequestHead>(b"abc").is_err());
    }

    #[test]
    fn context_ops_and_replies_are_one_json_line() {
        let ops = [
            ContextOpKind::Env(EnvSelect {
                include: vec!["A*".into()],
                exclude: vec![],
            }),
            ContextOpKind::Resolve {
                node: "db\nx".into(),
                family: Family::V4,
            },
            ContextOpKind::Connect {
                remote: "[::1]:80".parse().unwrap(),
            },
        ];
        for (i, kind) in ops.into_iter().enumerate() {
            let op = ContextOp {
                op: i as u64,
                container_id: "abc".into(),
                kind,
            };
            let line = serde_json::to_string(&op).unwrap();
            assert!(!line.contains('\n'), "{line}");
            assert_eq!(serde_json::from_str::<ContextOp>(&line).unwrap(), op);
        }
        let replies = [
            ContextOpReply::Env(Ok(vec![("K".into(), "v=1\n".into())])),
            ContextOpReply::Env(Err("no process".into())),
            ContextOpReply::Resolved(Err(DnsFailure::NoName)),
            ContextOpReply::ConnectFailed(ConnectFailure {
                errno: 111,
                message: "refused".into(),
            }),
        ];
        for r in replies {
            let body = serde_json::to_vec(&r).unwrap();
            assert_eq!(serde_json::from_slice::<ContextOpReply>(&body).unwrap(), r);
        }
    }

    #[test]
    fn snapshots_are_one_json_line() {
        let s = RouteSnapshot {
            version: 3,
            ports: vec![PortRouteSpec {
                port: 80,
                steal: None,
                filtered: vec![(
                    7,
                    HttpFilterSpec {
                        header: vec!["x-user: a\nb".into()],
                        ..Default::default()
                    },
                )],
                mirrors: vec![(9, None)],
            }],
            leave: false,
        };
        let line = serde_json::to_string(&s).unwrap();
        assert!(!line.contains('\n'));
        assert!(!line.contains("leave"), "only said when true: {line}");
        let leave: RouteSnapshot =
            serde_json::from_str(&serde_json::to_string(&RouteSnapshot::leave()).unwrap()).unwrap();
        assert!(leave.leave && leave.ports.is_empty());
        assert_eq!(serde_json::from_str::<RouteSnapshot>(&line).unwrap(), s);
        assert_eq!(s.ports[0].sessions().collect::<Vec<_>>(), vec![7, 9]);
    }
}
