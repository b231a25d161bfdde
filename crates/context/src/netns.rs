//! A target's network namespace, entered by one dedicated thread.
//!
//! `setns(CLONE_NEWNET)` moves only the calling thread, and a socket belongs for its whole
//! life to the namespace it was created in. So a [`Netns`] owns a thread that entered the
//! namespace before anything else ran on it, with its own current-thread tokio runtime:
//! connects and DNS queries are made there, and connected streams are handed back to the
//! caller's runtime, where they keep talking through the target's namespace. The thread
//! ends when the last [`Netns`] clone is dropped (its request channel closes).

use crate::error::{ConnectError, ContextError, DnsError};
use crate::resolve::{self, DnsCache, Family, Resolved};
use nix::errno::Errno;
use nix::sched::{setns, CloneFlags};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// mirrord's agent's connect timeout (`CONNECT_TIMEOUT` in its outgoing router): a sensible
/// `timeout` for [`Netns::connect`] when the caller has none of its own.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A network namespace to connect and resolve from. Cheap to clone (all clones share the
/// thread).
#[derive(Clone)]
pub struct Netns {
    inner: Arc<Inner>,
}

struct Inner {
    requests: mpsc::UnboundedSender<Request>,
    /// `/proc/PID/ns/net`, or `None` for the operator's own namespace: for messages.
    path: Option<PathBuf>,
}

impl std::fmt::Debug for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner.path {
            Some(p) => write!(f, "Netns({})", p.display()),
            None => f.write_str("Netns(current)"),
        }
    }
}

enum Request {
    Connect {
        addr: SocketAddr,
        timeout: Duration,
        reply: oneshot::Sender<Result<std::net::TcpStream, ConnectError>>,
    },
    Resolve {
        root: PathBuf,
        name: String,
        family: Family,
        reply: oneshot::Sender<Result<Resolved, DnsError>>,
    },
    ConnectUdp {
        addr: SocketAddr,
        reply: oneshot::Sender<Result<std::net::UdpSocket, ConnectError>>,
    },
}

impl Netns {
    /// The network namespace of process `pid` (`/proc/PID/ns/net`). Blocks while the thread
    /// starts and enters it (well under a millisecond), so that every failure is reported
    /// here: no such process, no right to open it (same user or CAP_SYS_PTRACE), no right to
    /// enter it (CAP_SYS_ADMIN).
    pub fn of_pid(pid: u32) -> Result<Self, ContextError> {
        let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
        let file = std::fs::File::open(&path)
            .map_err(|e| ContextError::from_proc_io(pid, path.clone(), e))?;
        Self::start(Some((path, file)))
    }

    /// The network namespace bound at `path`: `/proc/PID/ns/net`, `/run/netns/NAME`, ...
    pub fn open(path: &Path) -> Result<Self, ContextError> {
        let file = std::fs::File::open(path).map_err(|source| ContextError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::start(Some((path.to_owned(), file)))
    }

    /// The operator's own network namespace (no `setns`): what a target that shares it sees.
    ///
    /// # Panics
    ///
    /// When no thread or runtime can be started (the process is out of threads or file
    /// descriptors).
    pub fn current() -> Self {
        match Self::start(None) {
            Ok(netns) => netns,
            // Only thread creation or the runtime's epoll/eventfd can fail here, when the
            // process is out of threads or descriptors; nothing sensible is left to do then.
            Err(e) => panic!("{e}"),
        }
    }

    fn start(target: Option<(PathBuf, std::fs::File)>) -> Result<Self, ContextError> {
        let path = target.as_ref().map(|(p, _)| p.clone());
        let shown = path.clone().unwrap_or_else(|| PathBuf::from("(current)"));
        let (requests, rx) = mpsc::unbounded_channel();
        let (started_tx, started_rx) = std::sync::mpsc::sync_channel(1);
        let thread_shown = shown.clone();
        std::thread::Builder::new()
            .name("mirrord-netns".into())
            .spawn(move || {
                if let Some((path, file)) = target {
                    if let Err(source) = setns(&file, CloneFlags::CLONE_NEWNET) {
                        let _ = started_tx.send(Err(ContextError::EnterNetns { path, source }));
                        return;
                    }
                }
                // Built after setns: nothing the runtime creates may predate the move.
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(source) => {
                        let path = thread_shown;
                        let _ = started_tx.send(Err(ContextError::Thread { path, source }));
                        return;
                    }
                };
                let _ = started_tx.send(Ok(()));
                runtime.block_on(serve(rx));
            })
            .map_err(|source| ContextError::Thread {
                path: shown.clone(),
                source,
            })?;
        match started_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(ContextError::Thread {
                    path: shown,
                    source: std::io::Error::other("the thread ended before starting"),
                })
            }
        }
        tracing::debug!(target: "mirrord_context", netns = %shown.display(), "namespace thread started");
        Ok(Netns {
            inner: Arc::new(Inner { requests, path }),
        })
    }

    /// Connects (TCP) to `addr` from this namespace, giving up after `timeout` with
    /// `ETIMEDOUT`. The stream has `TCP_NODELAY` set (it relays a local application's
    /// writes) and is registered with the caller's runtime; its traffic stays in this
    /// namespace. Must be called within a tokio runtime.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<tokio::net::TcpStream, ConnectError> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::Connect {
            addr,
            timeout,
            reply,
        })
        .map_err(|()| self.gone_connect(addr))?;
        let std = answer.await.map_err(|_| self.gone_connect(addr))??;
        // into_std left it non-blocking; said again because tokio requires it.
        std.set_nonblocking(true)
            .and_then(|()| tokio::net::TcpStream::from_std(std))
            .map_err(|e| connect_error(addr, &e))
    }

    /// A UDP socket of this namespace connected to `addr` (nothing is sent: a UDP connect
    /// only picks the route and the local address, so it fails at once or not at all, with
    /// `ENETUNREACH` as a direct one would). Registered with the caller's runtime.
    pub async fn connect_udp(
        &self,
        addr: SocketAddr,
    ) -> Result<tokio::net::UdpSocket, ConnectError> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::ConnectUdp { addr, reply })
            .map_err(|()| self.gone_connect(addr))?;
        let std = answer.await.map_err(|_| self.gone_connect(addr))??;
        tokio::net::UdpSocket::from_std(std).map_err(|e| connect_error(addr, &e))
    }

    /// Resolves `name` as a process whose root directory is `root` (`/proc/PID/root`)
    /// would: `root/etc/hosts` first, then the nameservers of `root/etc/resolv.conf` (its
    /// `search` and `ndots` honoured), queried from this namespace.
    pub async fn resolve(
        &self,
        root: &Path,
        name: &str,
        family: Family,
    ) -> Result<Resolved, DnsError> {
        let (reply, answer) = oneshot::channel();
        let gone = || DnsError::Fail("the network namespace's thread is gone".into());
        self.send(Request::Resolve {
            root: root.to_owned(),
            name: name.to_owned(),
            family,
            reply,
        })
        .map_err(|()| gone())?;
        answer.await.map_err(|_| gone())?
    }

    fn send(&self, request: Request) -> Result<(), ()> {
        self.inner.requests.send(request).map_err(|_| ())
    }

    fn gone_connect(&self, addr: SocketAddr) -> ConnectError {
        ConnectError {
            errno: Errno::EIO as i32,
            message: format!("connect to {addr}: the network namespace's thread is gone"),
        }
    }
}

/// The namespace thread's loop: each request runs as its own task, so a slow connect or
/// query delays no other.
async fn serve(mut rx: mpsc::UnboundedReceiver<Request>) {
    let dns = Arc::new(Mutex::new(DnsCache::default()));
    while let Some(request) = rx.recv().await {
        match request {
            Request::Connect {
                addr,
                timeout,
                reply,
            } => {
                tokio::spawn(async move {
                    let _ = reply.send(connect_here(addr, timeout).await);
                });
            }
            Request::ConnectUdp { addr, reply } => {
                let _ = reply.send(connect_udp_here(addr));
            }
            Request::Resolve {
                root,
                name,
                family,
                reply,
            } => {
                let dns = dns.clone();
                tokio::spawn(async move {
                    let result = resolve::resolve(&dns, &root, &name, family).await;
                    tracing::debug!(
                        target: "mirrord_context",
                        %name,
                        ?family,
                        root = %root.display(),
                        outcome = ?result.as_ref().map(|r| r.addrs.len()),
                        "resolved"
                    );
                    let _ = reply.send(result);
                });
            }
        }
    }
}

/// A connect made by this (namespace) thread, handed over as a std stream so that the
/// caller's runtime can take it.
async fn connect_here(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<std::net::TcpStream, ConnectError> {
    let result = match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Err(_) => Err(ConnectError {
            errno: Errno::ETIMEDOUT as i32,
            message: format!("connect to {addr}: no answer within {}", humanize(timeout)),
        }),
        Ok(Err(e)) => Err(connect_error(addr, &e)),
        Ok(Ok(stream)) => stream
            .set_nodelay(true)
            .and_then(|()| stream.into_std())
            .map_err(|e| connect_error(addr, &e)),
    };
    match &result {
        Ok(_) => tracing::debug!(target: "mirrord_context", %addr, "connected"),
        Err(e) => {
            tracing::debug!(target: "mirrord_context", %addr, errno = e.errno, "connect failed")
        }
    }
    result
}

/// A UDP socket made and connected by this (namespace) thread, non-blocking for tokio.
fn connect_udp_here(addr: SocketAddr) -> Result<std::net::UdpSocket, ConnectError> {
    let any: SocketAddr = if addr.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let result = std::net::UdpSocket::bind(any)
        .and_then(|s| s.connect(addr).map(|()| s))
        .and_then(|s| s.set_nonblocking(true).map(|()| s))
        .map_err(|e| connect_error(addr, &e));
    tracing::debug!(target: "mirrord_context", %addr, ok = result.is_ok(), "UDP socket connected");
    result
}

fn connect_error(addr: SocketAddr, e: &std::io::Error) -> ConnectError {
    ConnectError {
        // An error without an errno (none is expected from connect) is reported as EIO.
        errno: e.raw_os_error().unwrap_or(Errno::EIO as i32),
        message: format!("connect to {addr}: {e}"),
    }
}

fn humanize(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connects_in_the_current_namespace_and_maps_refusals() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let netns = Netns::current();
        let stream = netns.connect(addr, Duration::from_secs(5)).await.unwrap();
        assert!(stream.nodelay().unwrap());
        let (_, peer) = listener.accept().await.unwrap();
        assert_eq!(stream.local_addr().unwrap(), peer);
        drop(listener);
        let err = netns
            .connect(addr, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(err.errno, Errno::ECONNREFUSED as i32, "{err}");
        assert!(err.message.contains(&addr.to_string()), "{err}");
    }

    #[tokio::test]
    async fn the_stream_works_on_the_callers_runtime() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
        });
        let mut stream = Netns::current()
            .connect(addr, Duration::from_secs(5))
            .await
            .unwrap();
        stream.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn udp_sockets_are_connected_here_and_work_on_the_callers_runtime() {
        let echo = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = echo.local_addr().unwrap();
        let sock = Netns::current().connect_udp(addr).await.unwrap();
        assert_eq!(sock.peer_addr().unwrap(), addr);
        sock.send(b"ping").await.unwrap();
        let mut buf = [0u8; 8];
        let (n, from) = echo.recv_from(&mut buf).await.unwrap();
        assert_eq!(
            (&buf[..n], from),
            (&b"ping"[..], sock.local_addr().unwrap())
        );
        // No route to a link-local v6 address without a scope: refused at once, not sent.
        let err = Netns::current()
            .connect_udp("[fe80::1]:9".parse().unwrap())
            .await
            .unwrap_err();
        assert!(err.errno != 0, "{err}");
    }

    #[test]
    fn a_missing_process_is_named() {
        // Pid numbers stop well below this (pid_max is at most 2^22).
        let err = Netns::of_pid(u32::MAX - 1).unwrap_err();
        assert!(matches!(err, ContextError::NoSuchProcess { .. }), "{err}");
        assert!(err.to_string().contains("did it exit"), "{err}");
    }
}
