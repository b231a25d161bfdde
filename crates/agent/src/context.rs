//! The target's context for the operator's sessions (`mirrordctl exec`): the environment of
//! the target container's process, names resolved as the pod resolves them, and TCP
//! connections made from the pod's network namespace (where the agent already is). The
//! operations come over the link ([`Link::context_ops`]); each is done in a task of its
//! own and answered on the link, a connection as a tunnel.
//!
//! The same `mirrord-context` code serves the operator's one-machine targets, so both
//! backends behave alike (errno for errno). Values of the environment are never logged.

use crate::link::Link;
use crate::netns;
use hyper_util::rt::TokioIo;
use mirrord_context::files::{Root, Served};
use mirrord_context::{ConnectError, DnsError, Netns};
use mirrord_protocol::agent::{ContextOp, ContextOpKind, ContextOpReply};
use mirrord_protocol::{ConnectFailure, DnsFailure, Family, FileFailure, FileStat, Resolution};
use mirrord_tunnel::datagrams;
use std::path::PathBuf;
use std::sync::Arc;

/// What the agent needs to answer context operations.
pub struct Context {
    proc_dir: PathBuf,
    pod_uid: String,
    /// The agent's own namespace, which is the pod's.
    netns: Netns,
}

impl Context {
    /// Call inside the pod's network namespace (its thread is started in the caller's).
    pub fn new(proc_dir: PathBuf, pod_uid: String) -> Arc<Self> {
        Arc::new(Self {
            proc_dir,
            pod_uid,
            netns: Netns::current(),
        })
    }

    fn process(&self, container_id: &str) -> Result<u32, netns::NetnsError> {
        netns::container_process(&self.proc_dir, &self.pod_uid, container_id)
    }

    /// Does one operation; a successful connect comes back as the stream to tunnel.
    async fn perform(
        &self,
        op: &ContextOp,
    ) -> Result<(Opened, std::net::SocketAddr), ContextOpReply> {
        match &op.kind {
            ContextOpKind::Env(select) => {
                let pid = self
                    .process(&op.container_id)
                    .map_err(|e| ContextOpReply::Env(Err(e.to_string())))?;
                let select = mirrord_context::EnvSelect {
                    include: select.include.clone(),
                    exclude: select.exclude.clone(),
                };
                let proc_dir = self.proc_dir.clone();
                let read = tokio::task::spawn_blocking(move || {
                    mirrord_context::read_env(&proc_dir, pid, &select)
                })
                .await;
                let vars = match read {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                if let Ok(v) = &vars {
                    tracing::debug!(target: "mirrord_agent", op = op.op, pid, variables = v.len(), "environment read");
                }
                Err(ContextOpReply::Env(vars))
            }
            ContextOpKind::Resolve { node, family } => {
                let pid = match self.process(&op.container_id) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(target: "mirrord_agent", op = op.op, error = %e, "cannot resolve as the container");
                        return Err(ContextOpReply::Resolved(Err(DnsFailure::Fail)));
                    }
                };
                let root = self.proc_dir.join(pid.to_string()).join("root");
                let family = match family {
                    Family::Any => mirrord_context::Family::Any,
                    Family::V4 => mirrord_context::Family::V4,
                    Family::V6 => mirrord_context::Family::V6,
                };
                let result = self
                    .netns
                    .resolve(&root, node, family)
                    .await
                    .map(|r| Resolution {
                        addrs: r.addrs,
                        canonical: r.canonical,
                    })
                    .map_err(|e| dns_failure(&e));
                tracing::debug!(target: "mirrord_agent", op = op.op, ok = result.is_ok(), "name resolved");
                Err(ContextOpReply::Resolved(result))
            }
            ContextOpKind::Connect { remote } => {
                let stream = self
                    .netns
                    .connect(*remote, mirrord_context::CONNECT_TIMEOUT)
                    .await
                    .map_err(|e| ContextOpReply::ConnectFailed(connect_failure(e)))?;
                let local = stream.local_addr().map_err(|e| {
                    ContextOpReply::ConnectFailed(ConnectFailure {
                        errno: e.raw_os_error().unwrap_or(0),
                        message: e.to_string(),
                    })
                })?;
                Ok((Opened::Tcp(stream), local))
            }
            ContextOpKind::File(req) => {
                let pid = self.process(&op.container_id).map_err(|e| {
                    ContextOpReply::File(Err(FileFailure {
                        errno: nix::libc::ESRCH,
                        message: e.to_string(),
                    }))
                })?;
                let root = self.proc_dir.join(pid.to_string()).join("root");
                let req = req.clone();
                let served = tokio::task::spawn_blocking(move || {
                    Root::at(&root).and_then(|r| r.serve(&req))
                })
                .await
                .map_err(|e| {
                    ContextOpReply::File(Err(FileFailure {
                        errno: nix::libc::EIO,
                        message: e.to_string(),
                    }))
                })?;
                match served {
                    Ok(Served::File { stat, file }) => Ok((Opened::File(file, stat), UNSPECIFIED)),
                    Ok(Served::Answer(a)) => Err(ContextOpReply::File(Ok(a))),
                    Err(f) => Err(ContextOpReply::File(Err(f))),
                }
            }
            ContextOpKind::ConnectUdp { remote } => {
                let failed = |e: mirrord_context::ConnectError| {
                    ContextOpReply::ConnectFailed(connect_failure(e))
                };
                let sock = self.netns.connect_udp(*remote).await.map_err(failed)?;
                let local = sock.local_addr().map_err(|e| {
                    ContextOpReply::ConnectFailed(ConnectFailure {
                        errno: e.raw_os_error().unwrap_or(0),
                        message: e.to_string(),
                    })
                })?;
                let flow =
                    datagrams::carry(sock, datagrams::Peer::Connected, std::future::pending());
                Ok((Opened::Udp(flow), local))
            }
        }
    }
}

/// What a successful connect opened: the tunnel carries its bytes, or its datagrams framed,
/// or an opened file's bytes.
enum Opened {
    Tcp(tokio::net::TcpStream),
    Udp(tokio::io::DuplexStream),
    File(std::fs::File, FileStat),
}

/// The `local` of what has no address (a file).
const UNSPECIFIED: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

/// Serves the operator's context operations on `link` until its stream ends. An operator
/// that does not serve them (older than the agent) is not an error: nothing is asked.
pub async fn serve(link: Arc<Link>, ctx: Arc<Context>) {
    let mut ops = match link.context_ops().await {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(target: "mirrord_agent", error = %e, "the operator does not ask for the target's context");
            return;
        }
    };
    loop {
        match ops.next().await {
            Ok(Some(op)) => {
                let (link, ctx) = (Arc::clone(&link), Arc::clone(&ctx));
                // Detached: one operation, answered on the link (or lost with it).
                tokio::spawn(async move { answer(&link, &ctx, op).await });
            }
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(target: "mirrord_agent", error = %e, "context stream broke");
                return;
            }
        }
    }
}

async fn answer(link: &Link, ctx: &Context, op: ContextOp) {
    match ctx.perform(&op).await {
        Err(reply) => link.context_reply(op.op, &reply).await,
        Ok((Opened::File(file, stat), _)) => match link.file(op.op, &stat).await {
            Ok(up) => {
                let mut up = TokioIo::new(up);
                let mut file = tokio::fs::File::from_std(file);
                match tokio::io::copy(&mut file, &mut up).await {
                    Ok(n) => {
                        tracing::debug!(target: "mirrord_agent", op = op.op, bytes = n, "a file was read")
                    }
                    Err(e) => {
                        tracing::warn!(target: "mirrord_agent", op = op.op, error = %e, "a file stopped streaming")
                    }
                }
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut up).await;
                // Dropped now, the tunnel's last bytes could still be in the connection's send
                // buffer and be reset with it: held until the operator, having them all, closes.
                let mut end = [0u8; 1];
                let _ = tokio::time::timeout(
                    std::time::Duration::from_secs(60),
                    tokio::io::AsyncReadExt::read(&mut up, &mut end),
                )
                .await;
            }
            Err(e) => {
                tracing::warn!(target: "mirrord_agent", op = op.op, error = %e, "a file's bytes were not delivered")
            }
        },
        Ok((opened, local)) => match link.outgoing(op.op, local).await {
            Ok(up) => {
                tracing::debug!(target: "mirrord_agent", op = op.op, remote = ?op.kind, "outgoing connection made");
                let mut up = TokioIo::new(up);
                let _ = match opened {
                    Opened::Tcp(mut s) => tokio::io::copy_bidirectional(&mut s, &mut up).await,
                    Opened::Udp(mut s) => tokio::io::copy_bidirectional(&mut s, &mut up).await,
                    Opened::File(..) => unreachable!("files are answered above"),
                };
            }
            Err(e) => {
                tracing::warn!(target: "mirrord_agent", op = op.op, error = %e, "outgoing connection not delivered")
            }
        },
    }
}

fn dns_failure(e: &DnsError) -> DnsFailure {
    match e {
        DnsError::NoName => DnsFailure::NoName,
        DnsError::NoData => DnsFailure::NoData,
        DnsError::Again => DnsFailure::Again,
        DnsError::Fail(_) => DnsFailure::Fail,
    }
}

fn connect_failure(e: ConnectError) -> ConnectFailure {
    ConnectFailure {
        errno: e.errno,
        message: e.message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "3f1c2a9e-6d2b-4c55-9a0e-1b2c3d4e5f60";

    /// A `/proc` with the pod's sandbox (pid 10) and container `c1`'s process (pid 20),
    /// whose environment and root (`etc/hosts`, `etc/resolv.conf`) are the container's.
    fn proc_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let process = |pid: &str, cgroup: &str, environ: &[u8]| {
            let d = dir.path().join(pid);
            std::fs::create_dir_all(d.join("root/etc")).unwrap();
            std::fs::write(d.join("cgroup"), cgroup).unwrap();
            std::fs::write(d.join("environ"), environ).unwrap();
            d
        };
        process(
            "10",
            &format!("0::/kubepods/pod{UID}/pause\n"),
            b"SANDBOX=1\0",
        );
        let c1 = process(
            "20",
            &format!("0::/kubepods/pod{UID}/c1\n"),
            b"DB_URL=postgres://db\0TOKEN=from-a-secret\0",
        );
        std::fs::write(c1.join("root/etc/hosts"), "10.1.2.3 only.in-pod\n").unwrap();
        // Nothing answers there: a name the hosts file lacks fails rather than leaking out.
        std::fs::write(
            c1.join("root/etc/resolv.conf"),
            "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
        )
        .unwrap();
        dir
    }

    fn op(kind: ContextOpKind) -> ContextOp {
        ContextOp {
            op: 1,
            container_id: "c1".into(),
            kind,
        }
    }

    #[tokio::test]
    async fn the_containers_process_gives_its_environment_and_names() {
        let dir = proc_dir();
        let ctx = Context::new(dir.path().to_owned(), UID.into());
        let env = ctx
            .perform(&op(ContextOpKind::Env(mirrord_protocol::EnvSelect {
                include: vec![],
                exclude: vec!["TOKEN".into()],
            })))
            .await
            .err()
            .unwrap();
        assert_eq!(
            env,
            ContextOpReply::Env(Ok(vec![("DB_URL".into(), "postgres://db".into())])),
            "the container's variables (not the sandbox's), selected in the agent"
        );
        let resolved = ctx
            .perform(&op(ContextOpKind::Resolve {
                node: "only.in-pod".into(),
                family: Family::Any,
            }))
            .await
            .err()
            .unwrap();
        let ContextOpReply::Resolved(Ok(r)) = resolved else {
            panic!("{resolved:?}")
        };
        assert_eq!(
            r.addrs,
            vec!["10.1.2.3".parse::<std::net::IpAddr>().unwrap()]
        );

        let mut gone = op(ContextOpKind::Env(Default::default()));
        gone.container_id = "c2".into();
        let ContextOpReply::Env(Err(why)) = ctx.perform(&gone).await.err().unwrap() else {
            panic!("a container without a process has no environment")
        };
        assert!(why.contains("container c2"), "{why}");
    }

    #[tokio::test]
    async fn connects_are_made_here_and_fail_with_the_errno() {
        let dir = proc_dir();
        let ctx = Context::new(dir.path().to_owned(), UID.into());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap();
        let (_, local) = ctx
            .perform(&op(ContextOpKind::Connect { remote: open }))
            .await
            .unwrap();
        let (_, peer) = listener.accept().await.unwrap();
        assert_eq!(peer, local, "the connection's own address is reported");
        drop(listener);
        let refused = ctx
            .perform(&op(ContextOpKind::Connect { remote: open }))
            .await
            .err()
            .unwrap();
        let ContextOpReply::ConnectFailed(f) = refused else {
            panic!("{refused:?}")
        };
        assert_eq!(
            f.errno,
            nix::errno::Errno::ECONNREFUSED as i32,
            "{}",
            f.message
        );
    }
}
