//! The control plane: the mutual-TLS API, sessions, port locks, targets and copies.
//!
//! - [`config`]: the operator's TOML configuration.
//! - [`api`]: TLS accept, hello, dispatch of each connection's request.
//! - [`open`]: opening a session (validation, port locks, copies, subscriptions).
//! - [`tunnel`]: a session's traffic and pings on its connection.
//! - [`sessions`]: the registry, and the one way a session ends.
//! - [`backend`] / [`local`]: where targets live (single machine now, Kubernetes later).
#![forbid(unsafe_code)]

pub mod api;
pub mod backend;
pub mod config;
pub mod local;
pub mod open;
pub mod policy;
pub mod sessions;
pub mod tunnel;

pub use api::Operator;
