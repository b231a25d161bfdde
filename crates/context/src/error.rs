//! The errors of this crate: what went wrong reaching a target process (`ContextError`), a
//! connect made from its network namespace (`ConnectError`, carrying the OS errno the layer
//! hands to the application) and a name lookup made as it would (`DnsError`).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Reading a target process's environment or entering its network namespace failed.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("no process {pid} (nothing at {path}): did it exit?")]
    NoSuchProcess { pid: u32, path: PathBuf },
    #[error(
        "permission denied reading {path}: the operator must run as the same user as process \
         {pid}, or as root / with CAP_SYS_PTRACE"
    )]
    PermissionDenied { pid: u32, path: PathBuf },
    #[error(
        "env: `include` and `exclude` were both given; mirrord refuses that too: keep only one \
         of them"
    )]
    IncludeAndExclude,
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot enter the network namespace {path} (the operator needs CAP_SYS_ADMIN, i.e. \
         root, for that): {source}"
    )]
    EnterNetns {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("cannot start the thread for network namespace {path}: {source}")]
    Thread {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ContextError {
    /// The error for `path` of process `pid` (`/proc/PID/...`) that could not be opened or read.
    pub(crate) fn from_proc_io(pid: u32, path: PathBuf, source: std::io::Error) -> Self {
        use std::io::ErrorKind;
        match source.kind() {
            // ESRCH: the process exited between open and read.
            ErrorKind::NotFound => ContextError::NoSuchProcess { pid, path },
            _ if source.raw_os_error() == Some(nix::errno::Errno::ESRCH as i32) => {
                ContextError::NoSuchProcess { pid, path }
            }
            ErrorKind::PermissionDenied => ContextError::PermissionDenied { pid, path },
            _ => ContextError::Read { path, source },
        }
    }
}

/// A TCP connect from a target's network namespace failed. `errno` is the Linux errno the
/// connect failed with (`ECONNREFUSED`, `ENETUNREACH`, `EHOSTUNREACH`, `ETIMEDOUT` when the
/// timeout passed, ...): the layer returns it to the application as is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ConnectError {
    pub errno: i32,
    pub message: String,
}

/// A name lookup made as the target would failed; the four outcomes glibc's resolver tells
/// apart (`EAI_NONAME`, `EAI_NODATA`/`NO_DATA`, `EAI_AGAIN`, `EAI_FAIL`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum DnsError {
    /// The name does not exist (NXDOMAIN, and not in the hosts file).
    #[error("no such name")]
    NoName,
    /// The name exists, but has no address of the family asked for.
    #[error("the name has no address of the family asked for")]
    NoData,
    /// Temporary: a timeout, SERVFAIL/REFUSED, or no nameserver reachable.
    #[error("temporary failure in name resolution")]
    Again,
    /// Anything else (an unreadable resolv.conf, a malformed answer, ...).
    #[error("name resolution failed: {0}")]
    Fail(String),
}
