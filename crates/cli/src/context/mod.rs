//! `exec`'s process in the target's context: what it gets of the target besides its
//! incoming traffic. The operator sends the target's environment when the session opens;
//! the preload layer (`libmirrord_layer.so`) in the process asks this CLI, over a UNIX
//! socket, to resolve names and open TCP connections and UDP flows as the target does, and the CLI
//! forwards those as operations of the session.
//!
//! - [`ops`]: the operations in flight, and whom each answer goes to;
//! - [`listens`]: the ports the process listens on, added and given back (no port list);
//! - [`server`]: the layer's socket;
//! - [`files`]: the target's files, as local copies the layer opens;
//! - [`env`]: the process's environment;
//! - [`program`]: what cannot be covered (static and Go programs), said before starting;
//! - [`layer_file`]: where the layer library is.

pub mod env;
pub mod files;
pub mod layer_file;
pub mod listens;
pub mod ops;
pub mod program;
pub mod server;

use mirrord_protocol::{
    ConnectFailure, DnsFailure, Family, FileAnswer, FileFailure, FileRequest, FileStat, Resolution,
};
use mirrord_tunnel::pump::ConnOutlet;
use std::net::SocketAddr;
use tokio::sync::oneshot;

/// What the layer's socket asks of the session loop.
pub enum Op {
    /// Something to ask the operator.
    Ask(Ask),
    /// The process listens at `addr`; answered once its port is added (or will not be).
    Listen {
        addr: SocketAddr,
        reply: oneshot::Sender<()>,
    },
    /// The process stopped listening on `port`.
    Unlisten { port: u16 },
}

/// An operation of the session the layer asks for, answered by the operator.
pub enum Ask {
    Resolve {
        node: String,
        family: Family,
        reply: oneshot::Sender<Result<Resolution, DnsFailure>>,
    },
    /// A TCP connection, or (`udp`) a UDP flow.
    Connect {
        remote: SocketAddr,
        udp: bool,
        reply: oneshot::Sender<Result<Outgoing, ConnectFailure>>,
    },
    File {
        req: FileRequest,
        reply: oneshot::Sender<Result<FileGot, FileFailure>>,
    },
}

/// What a file operation gave.
pub enum FileGot {
    Answer(FileAnswer),
    /// An opened regular file: its bytes arrive on `outlet` (connection `conn`) until it closes.
    Bytes {
        stat: FileStat,
        conn: u64,
        outlet: ConnOutlet,
    },
}

/// An outgoing connection the operator opened from the target: the session's connection
/// id, the target-side local address, and where the target's bytes for it arrive.
pub struct Outgoing {
    pub conn: u64,
    pub local: SocketAddr,
    pub outlet: ConnOutlet,
}
