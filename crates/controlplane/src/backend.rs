//! What the control plane needs from wherever targets live. The single-machine backend
//! ([`crate::local`]) implements it with processes and interceptors; a Kubernetes backend
//! implements it with the API server (a copy is a new pod, scale down patches replicas,
//! the routes are pushed to the agents in front of the target's pods).
//!
//! Resolving a target and making a copy may be slow network calls: both are futures.

use futures::future::BoxFuture;
use mirrord_dataplane::RouteTable;
use mirrord_protocol::TargetRef;
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
    #[error("{0}")]
    CopyUnavailable(String),
    #[error("{0}")]
    ScaleDownConflict(String),
    #[error("{0}")]
    Unavailable(String),
}

pub trait TargetBackend: Send + Sync {
    fn target(&self, r: &TargetRef) -> BoxFuture<'_, Result<Arc<dyn Target>, BackendError>>;
}

pub trait Target: Send + Sync {
    fn reference(&self) -> &TargetRef;
    /// The port numbers the target is known by.
    fn ports(&self) -> Vec<u16>;
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
}

pub trait TargetCopy: Send + Sync {
    fn name(&self) -> &str;
}
