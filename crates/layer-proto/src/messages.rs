//! The requests the layer sends and the replies `mirrordctl` gives: one reply per request, in order, on the
//! connection the request came on.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Which addresses a name is resolved to.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Any,
    V4,
    V6,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// First message on every connection.
    Hello { version: u32, pid: u32 },
    /// Resolve `node` as the target does.
    Resolve { node: String, family: Family },
    /// Connect (TCP) to `remote` from the target. `host`: the name it was resolved from, when known.
    /// The layer sends IPv4 destinations as IPv4 even when the app gave them v4-mapped (`::ffff:a.b.c.d`).
    Connect {
        remote: SocketAddr,
        host: Option<String>,
    },
    /// A UDP flow to `remote` from the target, for a connected UDP socket; answered like [`Request::Connect`]
    /// (the relay is a loopback UDP socket that takes the flow's datagrams from the first address to send it one).
    ConnectUdp {
        remote: SocketAddr,
        host: Option<String>,
    },
    /// The process listens (TCP) at `addr`; answered with [`Reply::Done`] once the port's incoming traffic is
    /// the process's, or it is not to be.
    Listen { addr: SocketAddr },
    /// The process closed its listening socket on `port`; answered with [`Reply::Done`].
    Unlisten { port: u16 },
    /// The process closed a UDP socket whose datagrams went to these relays: their flows end. Answered with
    /// [`Reply::Done`].
    Release { relays: Vec<SocketAddr> },
    /// Open the target's `path` (absolute) with the process's open `flags` (`O_ACCMODE`, `O_CREAT`, `O_TRUNC`):
    /// answered with [`Reply::Opened`], a local copy the layer opens in its place, or [`Reply::FileFailed`].
    Open { path: String, flags: i32 },
    /// `stat` (`follow`) or `lstat` of the target's `path`: [`Reply::Stat`].
    Stat { path: String, follow: bool },
    /// `access(path, mode)` in the target: [`Reply::Done`].
    Access { path: String, mode: i32 },
    /// `readlink(path)` in the target: [`Reply::Link`].
    Readlink { path: String },
    /// The process closed or synced its copy (`local`) of the target's `path`, opened for writing: its bytes are
    /// written back. [`Reply::Done`] once they are.
    WriteBack { local: PathBuf, path: String },
}

/// Why a name did not resolve, as the target's resolver said.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsFailure {
    /// The name does not exist (NXDOMAIN): `EAI_NONAME`, `HOST_NOT_FOUND`.
    NoName,
    /// The name exists but has no address of the family asked: `EAI_NODATA`, `NO_DATA`.
    NoData,
    /// Temporary failure (timeout, SERVFAIL): `EAI_AGAIN`, `TRY_AGAIN`.
    Again,
    /// Anything else: `EAI_FAIL`, `NO_RECOVERY`.
    Fail,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Welcome,
    /// The version or the process is not served: the layer goes plain libc for good.
    Refused {
        message: String,
    },
    /// Addresses in the resolver's order; `canonical` if known.
    Resolved {
        addrs: Vec<IpAddr>,
        canonical: Option<String>,
    },
    DnsFailed(DnsFailure),
    /// Connect the socket to `relay` (loopback); `local` is the socket's address in the target.
    Connected {
        relay: SocketAddr,
        local: SocketAddr,
    },
    /// The target's connect failed with this Linux errno.
    ConnectFailed {
        errno: i32,
    },
    /// A [`Request::Listen`] or [`Request::Unlisten`] was taken into account; an `Access` or `WriteBack` succeeded.
    Done,
    /// The target's file (or directory, `dir`) as a local copy at `local`, in a directory only this user can
    /// enter: a regular file's bytes; a directory's entries as empty files, directories and symlinks of the
    /// same names. The layer opens it in place of the remote path and, for a file it will not write back,
    /// removes its name at once.
    Opened {
        local: PathBuf,
        stat: Stat,
        dir: bool,
    },
    Stat(Stat),
    Link(String),
    /// The file operation failed in the target with this Linux errno.
    FileFailed {
        errno: i32,
    },
}

/// A file's metadata in the target (`struct stat`'s fields).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stat {
    pub dev: u64,
    pub ino: u64,
    pub mode: u32,
    pub nlink: u64,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub size: u64,
    pub blksize: u64,
    pub blocks: u64,
    pub atime: (i64, u32),
    pub mtime: (i64, u32),
    pub ctime: (i64, u32),
}
