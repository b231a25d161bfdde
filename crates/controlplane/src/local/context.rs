//! The context of a replica the operator runs: its environment, and its network namespace
//! (a replica started with `ip netns exec NAME ...` has its own, and its own `/etc/hosts`
//! and `/etc/resolv.conf` under `/etc/netns/NAME`), seen through `/proc/PID` as the
//! Kubernetes agent sees a pod's process.

use crate::backend::{BackendError, FileReply, Outgoing, TargetContext};
use futures::future::BoxFuture;
use mirrord_context::files::{Root, Served};
use mirrord_context::{ConnectError, DnsError, Netns};
use mirrord_protocol::{
    ConnectFailure, DnsFailure, EnvSelect, Family, FileFailure, FileRequest, Resolution,
};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How long an outgoing connect may take (mirrord's agent gives it 5 s too; the process's
/// own connect timeout, if shorter, ends it first).
const CONNECT_TIMEOUT: Duration = mirrord_context::CONNECT_TIMEOUT;

pub struct ReplicaContext {
    name: String,
    pid: u32,
    netns: Netns,
    /// Its root (`/proc/PID/root`), or why it cannot be had.
    root: Result<Arc<Root>, FileFailure>,
}

impl ReplicaContext {
    /// The context of replica `name`, running as `pid`.
    pub fn of(name: &str, pid: u32) -> Result<Arc<Self>, BackendError> {
        let netns = Netns::of_pid(pid)
            .map_err(|e| BackendError::Unavailable(format!("replica {name} (pid {pid}): {e}")))?;
        Ok(Arc::new(Self {
            name: name.to_owned(),
            pid,
            netns,
            root: Root::of_pid(pid).map(Arc::new),
        }))
    }

    fn root(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.pid))
    }
}

impl TargetContext for ReplicaContext {
    fn source(&self) -> String {
        format!("replica {} (pid {})", self.name, self.pid)
    }

    fn env(&self, select: EnvSelect) -> BoxFuture<'static, Result<Vec<(String, String)>, String>> {
        let pid = self.pid;
        Box::pin(async move {
            let select = mirrord_context::EnvSelect {
                include: select.include,
                exclude: select.exclude,
            };
            tokio::task::spawn_blocking(move || {
                mirrord_context::read_env(std::path::Path::new("/proc"), pid, &select)
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
        })
    }

    fn resolve(
        &self,
        node: String,
        family: Family,
    ) -> BoxFuture<'static, Result<Resolution, DnsFailure>> {
        let (netns, root) = (self.netns.clone(), self.root());
        Box::pin(async move {
            let family = match family {
                Family::Any => mirrord_context::Family::Any,
                Family::V4 => mirrord_context::Family::V4,
                Family::V6 => mirrord_context::Family::V6,
            };
            match netns.resolve(&root, &node, family).await {
                Ok(r) => Ok(Resolution {
                    addrs: r.addrs,
                    canonical: r.canonical,
                }),
                Err(e) => Err(dns_failure(&e)),
            }
        })
    }

    fn connect(&self, remote: SocketAddr) -> BoxFuture<'static, Result<Outgoing, ConnectFailure>> {
        let netns = self.netns.clone();
        Box::pin(async move {
            let stream = netns
                .connect(remote, CONNECT_TIMEOUT)
                .await
                .map_err(connect_failure)?;
            let local = stream.local_addr().map_err(|e| ConnectFailure {
                errno: e.raw_os_error().unwrap_or(0),
                message: e.to_string(),
            })?;
            Ok(Outgoing {
                io: Box::new(stream),
                local,
            })
        })
    }

    fn connect_udp(
        &self,
        remote: SocketAddr,
    ) -> BoxFuture<'static, Result<Outgoing, ConnectFailure>> {
        let netns = self.netns.clone();
        Box::pin(async move {
            let sock = netns.connect_udp(remote).await.map_err(connect_failure)?;
            let local = sock.local_addr().map_err(|e| ConnectFailure {
                errno: e.raw_os_error().unwrap_or(0),
                message: e.to_string(),
            })?;
            // It ends with its tunnel: the process closed its socket, or the session ended.
            let flow = mirrord_tunnel::datagrams::carry(
                sock,
                mirrord_tunnel::datagrams::Peer::Connected,
                std::future::pending(),
            );
            Ok(Outgoing {
                io: Box::new(flow),
                local,
            })
        })
    }

    fn file(&self, req: FileRequest) -> BoxFuture<'static, Result<FileReply, FileFailure>> {
        self.serve_file(req)
    }
}

impl ReplicaContext {
    /// Runs the file operations of [`TargetContext::file`].
    fn serve_file(&self, req: FileRequest) -> BoxFuture<'static, Result<FileReply, FileFailure>> {
        let root = self.root.clone();
        Box::pin(async move {
            let root = root?;
            let served = tokio::task::spawn_blocking(move || root.serve(&req))
                .await
                .map_err(|e| FileFailure {
                    errno: nix::libc::EIO,
                    message: e.to_string(),
                })??;
            Ok(match served {
                Served::Answer(a) => FileReply::Answer(a),
                Served::File { stat, file } => FileReply::File {
                    stat,
                    io: Box::new(stream_file(file)),
                },
            })
        })
    }
}

/// A file's bytes as a connection's: read by a task into one end of a pipe while the
/// other end is sent (writes to it are discarded with the pipe).
pub fn stream_file(file: std::fs::File) -> tokio::io::DuplexStream {
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    tokio::spawn(async move {
        let mut file = tokio::fs::File::from_std(file);
        let (_, mut w) = tokio::io::split(ours);
        if let Err(e) = tokio::io::copy(&mut file, &mut w).await {
            tracing::debug!(target: "mirrord_controlplane", error = %e, "a file stopped streaming");
        }
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut w).await;
    });
    theirs
}

pub fn dns_failure(e: &DnsError) -> DnsFailure {
    match e {
        DnsError::NoName => DnsFailure::NoName,
        DnsError::NoData => DnsFailure::NoData,
        DnsError::Again => DnsFailure::Again,
        DnsError::Fail(_) => DnsFailure::Fail,
    }
}

pub fn connect_failure(e: ConnectError) -> ConnectFailure {
    ConnectFailure {
        errno: e.errno,
        message: e.message,
    }
}
