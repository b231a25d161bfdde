//! What a target's process sees, for running a local process as if it were that process:
//! its environment ([`read_env`]), its network namespace ([`Netns`]): TCP connects, UDP
//! sockets and name lookups (its `/etc/hosts` and `/etc/resolv.conf`) made from there, and
//! its filesystem ([`files::Root`]): paths resolved inside its root.
//!
//! The operator's one-machine backend uses it for a process it runs, and the Kubernetes
//! agent for a pod's container process, so that both behave the same.

mod env;
mod error;
pub mod files;
mod netns;
mod resolve;

pub use env::{read_env, EnvSelect, ALWAYS_EXCLUDED};
pub use error::{ConnectError, ContextError, DnsError};
pub use netns::{Netns, CONNECT_TIMEOUT};
pub use resolve::{Family, Resolved};
