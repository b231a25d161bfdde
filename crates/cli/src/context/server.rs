//! The layer's socket: a UNIX socket in a directory only this user can enter, one
//! connection per thread of the process (and of its children, which inherit the layer).
//! Each request gets exactly one reply, in order. An outgoing connection the operator
//! opened is handed to the process through a loopback listener made for it alone: the
//! layer connects the process's own socket there, and this relays it to the target. File
//! operations are answered by [`super::files`].

use super::files::{self, Copies};
use super::{Ask, Op, Outgoing};
use crate::local;
use mirrord_layer_proto::{self as proto, Reply, Request, MAX_FRAME};
use mirrord_protocol::{ClientMessage, DnsFailure, Family};
use mirrord_tunnel::datagrams;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket, UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, Semaphore};

/// How long an operation may take, end to end, before the layer is told it failed (the
/// operator gives a connect 5 s and a resolution 10 s; this covers the way there and back).
const OP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a handed-over connection waits for the process to connect to its relay (the
/// layer does it right after the reply).
const RELAY_ACCEPT: Duration = Duration::from_secs(10);
/// Layer connections served at once; more wait (one per thread of the process tree).
const MAX_CONNECTIONS: usize = 1024;

/// The socket, removed with its directory when dropped (the session is over).
pub struct LayerServer {
    pub path: PathBuf,
    /// The target's files the process opened (written back at its end).
    pub copies: Arc<Copies>,
    _dir: tempfile::TempDir,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for LayerServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Listens for the layer; `ops` goes to the session loop, `out` to the operator.
pub fn start(ops: mpsc::Sender<Op>, out: mpsc::Sender<ClientMessage>) -> io::Result<LayerServer> {
    // tempfile makes the directory 0700: nobody else can reach the socket.
    let dir = tempfile::Builder::new().prefix("mirrordctl-").tempdir()?;
    let path = dir.path().join("layer.sock");
    let listener = UnixListener::bind(&path)?;
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let flows = Flows::default();
    let copies = Arc::new(Copies::new(dir.path().join("files"))?);
    let kept = Arc::clone(&copies);
    let accept = tokio::spawn(async move {
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (ops, out, flows) = (ops.clone(), out.clone(), Arc::clone(&flows));
            let copies = Arc::clone(&copies);
            tokio::spawn(async move {
                if let Err(e) = serve(stream, ops, out, flows, &copies).await {
                    tracing::debug!(target: "mirrordctl::layer", error = %e, "layer connection ended");
                }
                drop(permit);
            });
        }
    });
    Ok(LayerServer {
        path,
        copies: kept,
        _dir: dir,
        accept,
    })
}

/// The UDP relays of the process's flows, each with what stops it: the layer says when the
/// process closed the socket (UDP has no end of its own).
type Flows = Arc<std::sync::Mutex<std::collections::HashMap<SocketAddr, oneshot::Sender<()>>>>;

async fn serve(
    mut s: UnixStream,
    ops: mpsc::Sender<Op>,
    out: mpsc::Sender<ClientMessage>,
    flows: Flows,
    copies: &Copies,
) -> io::Result<()> {
    match read(&mut s).await? {
        Request::Hello { version, .. } if version == proto::VERSION => {
            write(&mut s, &Reply::Welcome).await?
        }
        Request::Hello { version, .. } => {
            let message = format!(
                "this mirrordctl speaks layer protocol {}, the layer {version}: use the layer that came with it",
                proto::VERSION
            );
            return write(&mut s, &Reply::Refused { message }).await;
        }
        other => {
            let message = format!("expected Hello first, got {other:?}");
            return write(&mut s, &Reply::Refused { message }).await;
        }
    }
    loop {
        let reply = match read(&mut s).await? {
            Request::Hello { .. } => Reply::Refused {
                message: "Hello twice".into(),
            },
            Request::Resolve { node, family } => resolve(&ops, node, family).await,
            Request::Connect { remote, .. } => connect(&ops, &out, remote, None).await,
            Request::ConnectUdp { remote, .. } => connect(&ops, &out, remote, Some(&flows)).await,
            Request::Listen { addr } => {
                let (reply, done) = oneshot::channel();
                if ops.send(Op::Listen { addr, reply }).await.is_ok() {
                    let _ = tokio::time::timeout(OP_TIMEOUT, done).await;
                }
                Reply::Done
            }
            Request::Unlisten { port } => {
                let _ = ops.send(Op::Unlisten { port }).await;
                Reply::Done
            }
            Request::Release { relays } => {
                let mut flows = flows.lock().expect("flows lock");
                for relay in relays {
                    // Dropping its stop ends the flow.
                    flows.remove(&relay);
                }
                Reply::Done
            }
            req @ (Request::Open { .. }
            | Request::Stat { .. }
            | Request::Access { .. }
            | Request::Readlink { .. }
            | Request::WriteBack { .. }) => files::serve(req, &ops, &out, copies).await,
        };
        write(&mut s, &reply).await?;
    }
}

async fn resolve(ops: &mpsc::Sender<Op>, node: String, family: proto::Family) -> Reply {
    let family = match family {
        proto::Family::Any => Family::Any,
        proto::Family::V4 => Family::V4,
        proto::Family::V6 => Family::V6,
    };
    let (reply, answer) = oneshot::channel();
    let asked = ops.send(Op::Ask(Ask::Resolve {
        node,
        family,
        reply,
    }));
    let failure = |f: DnsFailure| {
        Reply::DnsFailed(match f {
            DnsFailure::NoName => proto::DnsFailure::NoName,
            DnsFailure::NoData => proto::DnsFailure::NoData,
            DnsFailure::Again => proto::DnsFailure::Again,
            DnsFailure::Fail => proto::DnsFailure::Fail,
        })
    };
    if asked.await.is_err() {
        return failure(DnsFailure::Again);
    }
    match tokio::time::timeout(OP_TIMEOUT, answer).await {
        Ok(Ok(Ok(r))) => Reply::Resolved {
            addrs: r.addrs,
            canonical: r.canonical,
        },
        Ok(Ok(Err(f))) => failure(f),
        // The session is over, or the operator did not answer in time.
        Ok(Err(_)) | Err(_) => failure(DnsFailure::Again),
    }
}

/// A connection the operator refused (not granted, or outside a policy's allow-list):
/// said on stderr once per reason, since the process only sees `EACCES`.
fn refused_once(message: &str) {
    static SAID: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut said = SAID
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // Bounded: past this, the process is told by errno alone.
    if said.len() < 32 && !said.iter().any(|m| m == message) {
        said.push(message.to_owned());
        eprintln!("mirrordctl: an outgoing connection was refused: {message}");
    }
}

async fn connect(
    ops: &mpsc::Sender<Op>,
    out: &mpsc::Sender<ClientMessage>,
    remote: SocketAddr,
    // For a UDP flow: where its relay is registered.
    udp: Option<&Flows>,
) -> Reply {
    let (reply, answer) = oneshot::channel();
    if ops
        .send(Op::Ask(Ask::Connect {
            remote,
            udp: udp.is_some(),
            reply,
        }))
        .await
        .is_err()
    {
        return Reply::ConnectFailed {
            errno: nix::libc::ENETUNREACH,
        };
    }
    let opened = match tokio::time::timeout(OP_TIMEOUT, answer).await {
        Ok(Ok(Ok(o))) => o,
        Ok(Ok(Err(f))) => {
            if f.errno == nix::libc::EACCES {
                refused_once(&f.message);
            }
            return Reply::ConnectFailed { errno: f.errno };
        }
        Ok(Err(_)) => {
            return Reply::ConnectFailed {
                errno: nix::libc::ENETUNREACH,
            }
        }
        Err(_) => {
            return Reply::ConnectFailed {
                errno: nix::libc::ETIMEDOUT,
            }
        }
    };
    let relayed = match udp {
        Some(flows) => relay_datagrams(opened, out.clone(), flows).await,
        None => hand_over(opened, out.clone()).await,
    };
    match relayed {
        Ok(reply) => reply,
        Err(e) => {
            tracing::warn!(target: "mirrordctl::layer", error = %e, "cannot make a relay for an outgoing connection");
            Reply::ConnectFailed {
                errno: e.raw_os_error().unwrap_or(nix::libc::EIO),
            }
        }
    }
}

/// Makes the relay the process connects to and starts relaying once it does.
async fn hand_over(o: Outgoing, out: mpsc::Sender<ClientMessage>) -> io::Result<Reply> {
    let close = ClientMessage::ConnClose { conn: o.conn };
    let listener = match TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await {
        Ok(l) => l,
        Err(e) => {
            let _ = out.send(close).await;
            return Err(e);
        }
    };
    let relay = listener.local_addr()?;
    tokio::spawn(async move {
        match tokio::time::timeout(RELAY_ACCEPT, listener.accept()).await {
            Ok(Ok((stream, _))) => {
                let _ = stream.set_nodelay(true);
                // As for handed-over connections: the frame loop writes into the socket
                // itself while nothing is queued (a bulk download never waits on a wake
                // of this task per chunk, so it keeps up with the operator).
                let stream = mirrord_tunnel::shared_tcp::SharedTcp::new(stream);
                o.outlet.write_directly(stream.direct_writer());
                local::relay(o.conn, stream, o.outlet, out, true).await;
            }
            _ => {
                let _ = out.send(close).await;
            }
        }
    });
    Ok(Reply::Connected {
        relay,
        local: o.local,
    })
}

/// Makes the loopback UDP socket the process's socket is connected to, and carries the
/// datagrams it gets (from the process) and the flow's (from the target) both ways.
async fn relay_datagrams(
    o: Outgoing,
    out: mpsc::Sender<ClientMessage>,
    flows: &Flows,
) -> io::Result<Reply> {
    let sock = match UdpSocket::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await {
        Ok(s) => s,
        Err(e) => {
            let _ = out.send(ClientMessage::ConnClose { conn: o.conn }).await;
            return Err(e);
        }
    };
    let relay = sock.local_addr()?;
    let (stop, stopped) = oneshot::channel();
    flows.lock().expect("flows lock").insert(relay, stop);
    let flow = datagrams::carry(sock, datagrams::Peer::Learned, async {
        let _ = stopped.await;
    });
    tokio::spawn(local::relay(o.conn, flow, o.outlet, out, true));
    Ok(Reply::Connected {
        relay,
        local: o.local,
    })
}

async fn read(s: &mut UnixStream) -> io::Result<Request> {
    let len = s.read_u32().await? as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("layer frame of {len} bytes is over the limit of {MAX_FRAME}"),
        ));
    }
    let mut body = vec![0; len];
    s.read_exact(&mut body).await?;
    postcard::from_bytes(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

async fn write(s: &mut UnixStream, reply: &Reply) -> io::Result<()> {
    let body =
        postcard::to_allocvec(reply).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    s.write_all(&frame).await
}
