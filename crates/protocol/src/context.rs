//! A session's context: what the developer's process gets of the target besides its
//! incoming traffic (mirrord's `feature.env`, `feature.network.outgoing`,
//! `feature.network.dns`). Asked for when the session opens; the environment comes back in
//! the answer, name resolutions and outgoing connections are operations inside the session.

use crate::files::FilesAccess;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// What a session asks of the target's context.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextRequest {
    /// The target's environment, selected by these globs.
    pub env: Option<EnvSelect>,
    /// Outgoing TCP connections made from the target.
    pub outgoing: bool,
    /// Names resolved as the target resolves them.
    pub dns: bool,
    /// The target's files (`feature.fs`).
    #[serde(default)]
    pub files: FilesAccess,
}

impl ContextRequest {
    pub fn is_empty(&self) -> bool {
        self.env.is_none() && !self.outgoing && !self.dns && !self.files.reads()
    }
}

/// mirrord's `feature.env.include` / `exclude`: globs (`*`, `?`) over variable names.
/// Filtered where the environment is read: what is excluded never leaves the target.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvSelect {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

/// What the operator grants of a [`ContextRequest`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextReply {
    /// The target's environment (when asked for and available), in the target's order.
    pub env: Option<Vec<(String, String)>>,
    pub outgoing: bool,
    pub dns: bool,
    #[serde(default)]
    pub files: FilesAccess,
    /// Where the context comes from (`pod web-7d9c/app`, `replica pid 4242`).
    pub source: String,
    /// Why what was asked is not there (a target without a process the operator knows).
    pub unavailable: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Family {
    Any,
    V4,
    V6,
}

/// Why a name did not resolve, as the C resolver distinguishes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DnsFailure {
    /// No such name (NXDOMAIN).
    NoName,
    /// The name exists, without addresses of the family asked for.
    NoData,
    /// Try again (a timeout, a server failure).
    Again,
    /// Anything else.
    Fail,
}

impl fmt::Display for DnsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DnsFailure::NoName => "no such name",
            DnsFailure::NoData => "no address of that family",
            DnsFailure::Again => "temporary failure",
            DnsFailure::Fail => "resolution failed",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    pub addrs: Vec<IpAddr>,
    pub canonical: Option<String>,
}

/// An outgoing connection the target made for the session: its bytes then flow as
/// `ConnData`/`ConnClose` with `conn`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutgoingConnected {
    pub conn: u64,
    /// The connection's address in the target (what `getsockname` answers).
    pub local: SocketAddr,
}

/// A connect the target could not make: the Linux errno the caller's own `connect` would
/// have failed with (ECONNREFUSED, ETIMEDOUT, ENETUNREACH...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectFailure {
    pub errno: i32,
    pub message: String,
}
