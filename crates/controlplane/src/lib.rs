//! The control plane: the mutual-TLS API, sessions, port locks, targets and copies.
//!
//! A session request travels: [`api`] (TLS, hello, dispatch) -> [`open`] (the pipeline:
//! [`admission`], then [`locks`], then the copy, then commit; [`overlaps`] tells users whose filters
//! share requests) -> [`session`] (the actor
//! that carries the session's traffic until it ends) -> [`sessions`] (the registry, and
//! the one way a session ends). [`refusal`] is every way a request is turned down.
//! [`operator`] holds the shared state; [`backend`] / [`local`] is where targets live
//! (single machine here, Kubernetes beside it). [`caller`] is who asks and what their role
//! lets them do; [`rbac`] what a Kubernetes user may do, asked of the cluster; [`revocation`] follows the CA's revocation list (and the registry) while the operator
//! runs; [`trust`] is what they decide: which credentials are accepted now.
//! [`console`] holds the console's pending login links. [`bounds`] is what a client may
//! send at all: every string's size and grammar, checked first; [`buffers`] what its
//! unfinished frames may hold. [`fence`] is whether this replica may still decide (it leads).
#![forbid(unsafe_code)]

pub mod admission;
pub mod api;
pub mod backend;
pub mod bounds;
pub mod buffers;
pub mod caller;
pub mod config;
pub mod console;
pub mod context;
pub mod destinations;
pub mod fair;
pub mod fence;
pub mod local;
pub mod locks;
pub mod open;
pub mod operator;
pub mod overlaps;
pub mod policy;
pub mod rbac;
pub mod refusal;
pub mod revocation;
pub mod session;
pub mod sessions;
#[cfg(test)]
mod testing;
pub mod trust;

pub use caller::Caller;
pub use operator::Operator;
