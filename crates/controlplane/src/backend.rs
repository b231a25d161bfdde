//! What the control plane needs from wherever targets live. The single-machine backend
//! ([`crate::local`]) implements it with processes and interceptors; a Kubernetes backend
//! implements it with the API server (a copy is a new pod, scale down patches replicas,
//! the routes are pushed to the agents in front of the target's pods).
//!
//! Resolving a target and making a copy may be slow network calls: both are futures.

use futures::future::BoxFuture;
use mirrord_dataplane::handoff::Io;
use mirrord_dataplane::RouteTable;
use mirrord_protocol::{
    ConnectFailure, DnsFailure, EnvSelect, Family, FileAnswer, FileFailure, FileRequest, FileStat,
    Resolution, SessionId, TargetRef,
};
use std::net::SocketAddr;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("target {target} not found in namespace {namespace}; known targets: {known}")]
    UnknownTarget {
        target: String,
        namespace: String,
        known: String,
    },
    /// A `/container/NAME` the target's pods do not have (or a target that has none).
    #[error("{0}")]
    UnknownContainer(String),
    /// A name that exists but cannot be a target (a Service over several workloads, a
    /// ReplicaSet another controller manages), with why.
    #[error("{0}")]
    NotATarget(String),
    #[error("{0}")]
    CopyUnavailable(String),
    #[error("{0}")]
    ScaleDownConflict(String),
    #[error("{0}")]
    Unavailable(String),
}

pub trait TargetBackend: Send + Sync {
    fn target(&self, r: &TargetRef) -> BoxFuture<'_, Result<Arc<dyn Target>, BackendError>>;
    /// The target `r` names, and what the ports a session on `r` asks for are on it (a
    /// Service's port is the pods' port its `targetPort` names). By default a name's
    /// ports are the target's own.
    fn named(&self, r: &TargetRef) -> BoxFuture<'_, Result<Named, BackendError>> {
        let found = self.target(r);
        Box::pin(async move {
            Ok(Named {
                target: found.await?,
                ports: PortNames::default(),
            })
        })
    }
}

/// A target as a session named it.
pub struct Named {
    pub target: Arc<dyn Target>,
    pub ports: PortNames,
}

/// The ports of a name that has its own (a Service's `spec.ports`), as the target's (its
/// pods') ports: translated once, when a session names a port, so that port locks, routes,
/// events and metrics are all on the port where the traffic is taken.
#[derive(Clone, Debug, Default)]
pub struct PortNames {
    /// Who names them (`service/web`), for messages.
    pub by: String,
    /// Per port of the name: the target's port, or why it has none (a `targetPort` name
    /// that no container declares).
    pub ports: std::collections::BTreeMap<u16, Result<u16, String>>,
}

impl PortNames {
    /// What `asked` is on the target: `Some(the name's port)` beside the target's port when
    /// `asked` is one of the name's ports, `None` for any other (a port of the target's own).
    pub fn target_port(&self, asked: u16) -> Result<(u16, Option<u16>), String> {
        match self.ports.get(&asked) {
            Some(Ok(port)) => Ok((*port, Some(asked))),
            Some(Err(why)) => Err(why.clone()),
            None => Ok((asked, None)),
        }
    }

    /// Why naming `port` (none of the name's ports) may not be what the session means:
    /// traffic sent to the name never reaches it. `None` when the name has no ports of its
    /// own, or one of them is sent to `port`.
    pub fn not_exposed(&self, port: u16) -> Option<String> {
        if self.ports.is_empty() || self.ports.contains_key(&port) {
            return None;
        }
        if self.ports.values().any(|p| p.as_ref() == Ok(&port)) {
            return None;
        }
        let list: Vec<String> = self.ports.keys().map(u16::to_string).collect();
        Some(format!(
            "port {port} is not a port of {} (its ports: {}): the pods' port {port} is taken, which traffic sent to {} does not reach",
            self.by,
            list.join(", "),
            self.by
        ))
    }
}

pub trait Target: Send + Sync {
    fn reference(&self) -> &TargetRef;
    /// The port numbers the target is known by.
    fn ports(&self) -> Vec<u16>;
    /// The target's labels, for policies that select targets by label (none by default).
    fn labels(&self) -> std::collections::BTreeMap<String, String> {
        std::collections::BTreeMap::new()
    }
    /// Why a session on it must make a copy (`--copy-target`), if it must.
    fn copy_only(&self) -> Option<String> {
        None
    }
    /// Whether a session may name `port` (default: one of [`Target::ports`]).
    fn accepts_port(&self, port: u16) -> bool {
        self.ports().contains(&port)
    }
    /// What sessions do with the traffic of `port`, whichever replica (original or copy)
    /// would serve it. Only the port locks write it.
    fn routes(&self, port: u16) -> Option<Arc<RouteTable>>;
    /// Starts a copy for `session`; with `scale_down` the originals stop while it lives.
    /// Dropping the copy removes it (and restores the originals).
    fn copy(
        self: Arc<Self>,
        session: String,
        scale_down: bool,
    ) -> BoxFuture<'static, Result<Box<dyn TargetCopy>, BackendError>>;
    /// Resolves once the routes as they are now are in force where the traffic is (at
    /// once on one machine; in a cluster, once every target pod's agent applied them).
    /// The error says what is missing.
    fn settle(self: Arc<Self>) -> BoxFuture<'static, Result<(), String>> {
        Box::pin(std::future::ready(Ok(())))
    }
    /// What `session`'s process gets of the target (its environment, its network, its
    /// resolver), from one of the target's processes: `container`'s where the target
    /// names one. The error says why there is none.
    fn context(
        self: Arc<Self>,
        session: SessionId,
        container: Option<String>,
    ) -> BoxFuture<'static, Result<Arc<dyn TargetContext>, BackendError>> {
        let _ = (session, container);
        Box::pin(std::future::ready(Err(no_process(self.reference()))))
    }
}

pub trait TargetCopy: Send + Sync {
    fn name(&self) -> &str;
    /// The same as [`Target::context`], from the copy: a session working on a copy gets the
    /// copy's environment and network.
    fn context(
        &self,
        session: SessionId,
        container: Option<String>,
    ) -> BoxFuture<'static, Result<Arc<dyn TargetContext>, BackendError>> {
        let _ = (session, container);
        let why = format!("copy {} has no process the operator can reach", self.name());
        Box::pin(std::future::ready(Err(BackendError::Unavailable(why))))
    }
}

fn no_process(target: &TargetRef) -> BackendError {
    BackendError::Unavailable(format!(
        "{target} runs no process the operator can take an environment or a network from"
    ))
}

/// One process of a target, as a session's process sees it. Every answer is the target's
/// own: its environment, its resolver, connections leaving from its network namespace.
pub trait TargetContext: Send + Sync {
    /// Where the context comes from (`replica pid 4242`, `pod web-7d9c`).
    fn source(&self) -> String;
    /// The process's environment, selected (what is excluded never leaves the target).
    fn env(&self, select: EnvSelect) -> BoxFuture<'static, Result<Vec<(String, String)>, String>>;
    fn resolve(
        &self,
        node: String,
        family: Family,
    ) -> BoxFuture<'static, Result<Resolution, DnsFailure>>;
    fn connect(&self, remote: SocketAddr) -> BoxFuture<'static, Result<Outgoing, ConnectFailure>>;
    /// A UDP flow to `remote`: its `io` carries length-prefixed datagrams
    /// (`mirrord_tunnel::datagrams`).
    fn connect_udp(
        &self,
        remote: SocketAddr,
    ) -> BoxFuture<'static, Result<Outgoing, ConnectFailure>>;
    /// An operation on the process's files, as its container sees them.
    fn file(&self, req: FileRequest) -> BoxFuture<'static, Result<FileReply, FileFailure>> {
        let _ = req;
        let message = format!("{} serves no files", self.source());
        Box::pin(std::future::ready(Err(FileFailure {
            errno: nix::libc::ENOSYS,
            message,
        })))
    }
}

/// What a file operation gave.
pub enum FileReply {
    Answer(FileAnswer),
    /// An opened regular file: `io` gives its bytes, then ends.
    File {
        stat: FileStat,
        io: Box<dyn Io>,
    },
}

/// A connection made from the target for a session.
pub struct Outgoing {
    pub io: Box<dyn Io>,
    /// Its address in the target.
    pub local: SocketAddr,
}
