//! A session's context on a Kubernetes target (`mirrordctl exec`): the environment of a
//! target pod's container process, names resolved as that pod resolves them, and TCP
//! connections made from its network namespace. The pod's agent does each operation
//! ([`mirrord_protocol::agent::ContextOp`]) and answers on its link; this module owns which
//! pod and container serve a session ([`of_target`], [`open`]), the agents' context streams
//! and the operations in flight ([`AgentOps`]).
//!
//! A pod whose process gives a session its context needs an agent even when no session
//! holds a port on it: [`ContextUse`] counts those sessions, and the fleet keeps an agent
//! there while any lives.

use crate::target::{KubeTarget, POLL};
use bytes::Bytes;
use futures::future::BoxFuture;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use mirrord_controlplane::backend::{BackendError, FileReply, Outgoing, TargetContext};
use mirrord_protocol::agent::{ContextOp, ContextOpKind, ContextOpReply};
use mirrord_protocol::{
    ConnectFailure, DnsFailure, EnvSelect, Family, FileFailure, FileRequest, FileStat, Resolution,
};
use nix::errno::Errno;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// How long an operation waits for its pod's agent to be linked (a lost agent is being
/// replaced) before it fails.
const LINK_WAIT: Duration = Duration::from_secs(5);
/// How long the agent gets to read an environment or resolve a name.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// A connect's own timeout in the agent, plus the way there and back.
const CONNECT_WAIT: Duration = Duration::from_secs(10);
/// The agent protocol that carries UDP flows.
const UDP_SINCE: u32 = 3;
/// The agent protocol that serves files.
const FILES_SINCE: u32 = 4;
/// How long a file operation may take in the agent (a large directory listing, a slow
/// volume), plus the way there and back.
const FILE_WAIT: Duration = Duration::from_secs(20);

/// What an agent answers to an operation.
pub(crate) enum Answer {
    Reply(ContextOpReply),
    /// The connection a connect made, tunnelled from the pod; `local` is its address there.
    Tunnel {
        io: TokioIo<Upgraded>,
        local: SocketAddr,
    },
    /// The bytes of a file opened in the pod.
    File {
        io: TokioIo<Upgraded>,
        stat: FileStat,
    },
}

/// One target's context streams (one per agent) and operations in flight.
#[derive(Default)]
pub struct AgentOps {
    /// Per target pod UID: its agent (pod name), and the lines of its context stream.
    links: Mutex<HashMap<String, (String, mpsc::Sender<Bytes>)>>,
    /// Per agent (pod name): the agent protocol it speaks.
    versions: Mutex<HashMap<String, u32>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Answer>>>,
    next: AtomicU64,
    /// Per target pod UID: the sessions whose context comes from it.
    users: Mutex<HashMap<String, usize>>,
}

impl AgentOps {
    /// Agent `agent` of pod `uid` opened its context stream, whose lines go to `tx`.
    pub(crate) fn attach(&self, uid: &str, agent: &str, version: u32, tx: mpsc::Sender<Bytes>) {
        self.links
            .lock()
            .expect("links")
            .insert(uid.to_owned(), (agent.to_owned(), tx));
        self.versions
            .lock()
            .expect("versions")
            .insert(agent.to_owned(), version);
    }

    /// The agent protocol of pod `uid`'s agent, once it is linked.
    fn version(&self, uid: &str) -> Option<u32> {
        let agent = self.links.lock().expect("links").get(uid)?.0.clone();
        self.versions.lock().expect("versions").get(&agent).copied()
    }

    /// Agent `agent`'s stream ended; its replacement's, if already there, stays.
    pub(crate) fn detach(&self, uid: &str, agent: &str) {
        let mut links = self.links.lock().expect("links");
        if links.get(uid).is_some_and(|(a, _)| a == agent) {
            links.remove(uid);
        }
        drop(links);
        self.versions.lock().expect("versions").remove(agent);
    }

    fn link(&self, uid: &str) -> Option<mpsc::Sender<Bytes>> {
        let links = self.links.lock().expect("links");
        links
            .get(uid)
            .filter(|(_, tx)| !tx.is_closed())
            .map(|(_, tx)| tx.clone())
    }

    pub(crate) fn linked(&self, uid: &str) -> bool {
        self.link(uid).is_some()
    }

    /// Whether a session's context comes from pod `uid`.
    pub fn in_use(&self, uid: &str) -> bool {
        self.users
            .lock()
            .expect("users")
            .get(uid)
            .is_some_and(|n| *n > 0)
    }

    /// Whether operation `op` still waits for its answer.
    pub(crate) fn waits(&self, op: u64) -> bool {
        self.pending.lock().expect("pending").contains_key(&op)
    }

    /// The agent's answer to `op`; false if nobody waits for it any more.
    pub(crate) fn complete(&self, op: u64, answer: Answer) -> bool {
        let waiter = self.pending.lock().expect("pending").remove(&op);
        waiter.is_some_and(|w| w.send(answer).is_ok())
    }
}

/// Counts a session's context on a pod while it lives.
struct ContextUse {
    target: Arc<KubeTarget>,
    uid: String,
}

impl ContextUse {
    fn new(target: &Arc<KubeTarget>, uid: &str) -> Self {
        *target
            .ops
            .users
            .lock()
            .expect("users")
            .entry(uid.to_owned())
            .or_default() += 1;
        target.changed.notify_one();
        Self {
            target: Arc::clone(target),
            uid: uid.to_owned(),
        }
    }
}

impl Drop for ContextUse {
    fn drop(&mut self) {
        let mut users = self.target.ops.users.lock().expect("users");
        if let Some(n) = users.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                users.remove(&self.uid);
            }
        }
        drop(users);
        self.target.changed.notify_one();
    }
}

/// Removes an operation nobody waits for any more (answered, timed out or cancelled).
struct Pending<'a> {
    ops: &'a AgentOps,
    op: u64,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.ops.pending.lock().expect("pending").remove(&self.op);
    }
}

/// The context of one of `target`'s pods (not a copy): one whose agent is linked if there
/// is such a pod, else the first by name.
pub async fn of_target(
    target: Arc<KubeTarget>,
    container: Option<String>,
) -> Result<Arc<KubeContext>, BackendError> {
    target
        .synced(target.ctx.ready_timeout)
        .await
        .map_err(BackendError::Unavailable)?;
    let mut pods: Vec<(String, String)> = target
        .pods()
        .into_iter()
        .filter(|(_, p)| p.ready && p.copy_for.is_none())
        .map(|(uid, p)| (uid, p.name))
        .collect();
    pods.sort_by_key(|(uid, name)| (!target.ops.linked(uid), name.clone()));
    let Some((uid, name)) = pods.into_iter().next() else {
        return Err(BackendError::Unavailable(format!(
            "{} has no running pod to take an environment or a network from",
            target.reference_string()
        )));
    };
    open(target, uid, name, container).await
}

/// The context of pod `name` (`uid`) of `target`, from `container` (checked against the
/// template when the target was resolved; the template's first when none is named, as
/// mirrord does): once its agent (started now if the pod has none) is linked.
pub async fn open(
    target: Arc<KubeTarget>,
    uid: String,
    name: String,
    container: Option<String>,
) -> Result<Arc<KubeContext>, BackendError> {
    let first = || {
        let spec = target.resolved.template.spec.as_ref();
        spec.and_then(|s| s.containers.first())
            .map(|c| c.name.clone())
            .ok_or_else(|| {
                BackendError::Unavailable(format!(
                    "pod {name} has no container to take a context from"
                ))
            })
    };
    let container = match container {
        Some(c) => c,
        None => first()?,
    };
    let using = ContextUse::new(&target, &uid);
    let deadline = Instant::now() + target.ctx.ready_timeout;
    while !target.ops.linked(&uid) {
        if !target.pods().get(&uid).is_some_and(|p| p.ready) {
            return Err(BackendError::Unavailable(format!(
                "pod {name} stopped before its agent could give its context"
            )));
        }
        if Instant::now() >= deadline {
            let why = match target.agents.of(&uid) {
                Some((agent, true)) => format!(
                    "agent {agent} is linked but serves no context: its image predates agent protocol {} (set the chart's agent image to this operator's version)",
                    mirrord_protocol::agent::PROTOCOL_VERSION
                ),
                Some((agent, false)) => crate::fleet::agent_state(&target.ctx, &agent).await,
                None => "no agent could be started".into(),
            };
            return Err(BackendError::Unavailable(format!(
                "the agent of pod {name} did not connect within {} ({why})",
                humantime::format_duration(target.ctx.ready_timeout)
            )));
        }
        tokio::time::sleep(POLL).await;
    }
    tracing::info!(target: "mirrord_kube", target_ref = %target.reference_string(), pod = %name, %container, "a session's context comes from this pod");
    Ok(Arc::new(KubeContext {
        inner: Arc::new(Inner {
            target,
            uid,
            pod: name,
            container,
            _using: using,
        }),
    }))
}

/// A target pod's container as a session's process sees it, through the pod's agent.
pub struct KubeContext {
    inner: Arc<Inner>,
}

struct Inner {
    target: Arc<KubeTarget>,
    uid: String,
    pod: String,
    container: String,
    _using: ContextUse,
}

impl Inner {
    /// Sends `kind` to the pod's agent and waits up to `timeout` for the answer.
    async fn call(&self, kind: ContextOpKind, timeout: Duration) -> Result<Answer, String> {
        let ops = &self.target.ops;
        let container_id = self
            .target
            .pods()
            .get(&self.uid)
            .and_then(|p| {
                p.containers
                    .iter()
                    .find(|(n, _)| *n == self.container)
                    .map(|(_, id)| id.clone())
            })
            .ok_or_else(|| {
                format!(
                    "pod {} is gone, or its container {} is not running",
                    self.pod, self.container
                )
            })?;
        let deadline = Instant::now() + LINK_WAIT;
        let link = loop {
            if let Some(tx) = ops.link(&self.uid) {
                break tx;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the agent of pod {} is not linked to the operator",
                    self.pod
                ));
            }
            tokio::time::sleep(POLL).await;
        };
        let op = ops.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        ops.pending.lock().expect("pending").insert(op, tx);
        let _pending = Pending { ops, op };
        let mut line = serde_json::to_vec(&ContextOp {
            op,
            container_id,
            kind,
        })
        .expect("operations serialise");
        line.push(b'\n');
        let lost = || format!("the link to the agent of pod {} broke", self.pod);
        link.send(Bytes::from(line)).await.map_err(|_| lost())?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(lost()),
            Err(_) => Err(format!(
                "the agent of pod {} did not answer within {}",
                self.pod,
                humantime::format_duration(timeout)
            )),
        }
    }
}

impl TargetContext for KubeContext {
    fn source(&self) -> String {
        format!(
            "pod {} (container {})",
            self.inner.pod, self.inner.container
        )
    }

    fn env(&self, select: EnvSelect) -> BoxFuture<'static, Result<Vec<(String, String)>, String>> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            match inner
                .call(ContextOpKind::Env(select), REPLY_TIMEOUT)
                .await?
            {
                Answer::Reply(ContextOpReply::Env(vars)) => vars,
                _ => Err("the agent answered something else".into()),
            }
        })
    }

    fn resolve(
        &self,
        node: String,
        family: Family,
    ) -> BoxFuture<'static, Result<Resolution, DnsFailure>> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            match inner
                .call(ContextOpKind::Resolve { node, family }, REPLY_TIMEOUT)
                .await
            {
                Ok(Answer::Reply(ContextOpReply::Resolved(r))) => r,
                Ok(_) => Err(DnsFailure::Fail),
                Err(e) => {
                    tracing::warn!(target: "mirrord_kube", pod = %inner.pod, error = %e, "a name could not be resolved in the pod");
                    Err(DnsFailure::Again)
                }
            }
        })
    }

    fn connect(&self, remote: SocketAddr) -> BoxFuture<'static, Result<Outgoing, ConnectFailure>> {
        self.open(ContextOpKind::Connect { remote })
    }

    fn connect_udp(
        &self,
        remote: SocketAddr,
    ) -> BoxFuture<'static, Result<Outgoing, ConnectFailure>> {
        let inner = &self.inner;
        match inner.target.ops.version(&inner.uid) {
            // An agent that does not know the operation would never answer it.
            Some(v) if v < UDP_SINCE => {
                let message = format!(
                    "the agent of pod {} speaks agent protocol {v}; UDP needs {UDP_SINCE} (set the chart's agent image to this operator's version)",
                    inner.pod
                );
                Box::pin(async move {
                    Err(ConnectFailure {
                        errno: Errno::EPROTONOSUPPORT as i32,
                        message,
                    })
                })
            }
            _ => self.open(ContextOpKind::ConnectUdp { remote }),
        }
    }

    fn file(&self, req: FileRequest) -> BoxFuture<'static, Result<FileReply, FileFailure>> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let failed = |errno: Errno, message: String| FileFailure {
                errno: errno as i32,
                message,
            };
            if let Some(v) = inner.target.ops.version(&inner.uid) {
                if v < FILES_SINCE {
                    return Err(failed(Errno::ENOSYS, format!(
                        "the agent of pod {} speaks agent protocol {v}; files need {FILES_SINCE} (set the chart's agent image to this operator's version)",
                        inner.pod
                    )));
                }
            }
            match inner.call(ContextOpKind::File(req), FILE_WAIT).await {
                Ok(Answer::File { io, stat }) => Ok(FileReply::File {
                    stat,
                    io: Box::new(io),
                }),
                Ok(Answer::Reply(ContextOpReply::File(r))) => r.map(FileReply::Answer),
                Ok(_) => Err(failed(
                    Errno::EIO,
                    "the agent answered something else".into(),
                )),
                Err(message) => Err(failed(Errno::EIO, message)),
            }
        })
    }
}

impl KubeContext {
    /// A connection or flow the agent opens in the pod, answered with its tunnel.
    fn open(&self, kind: ContextOpKind) -> BoxFuture<'static, Result<Outgoing, ConnectFailure>> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            match inner.call(kind, CONNECT_WAIT).await {
                Ok(Answer::Tunnel { io, local }) => Ok(Outgoing {
                    io: Box::new(io),
                    local,
                }),
                Ok(Answer::Reply(ContextOpReply::ConnectFailed(f))) => Err(f),
                Ok(Answer::Reply(_) | Answer::File { .. }) => Err(ConnectFailure {
                    errno: Errno::EIO as i32,
                    message: "the agent answered something else".into(),
                }),
                // As a connect that never completes does: the process is told it timed out.
                Err(message) => Err(ConnectFailure {
                    errno: Errno::ETIMEDOUT as i32,
                    message,
                }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_replacements_stream_survives_the_old_agents_end() {
        let ops = AgentOps::default();
        let (old, _old_rx) = mpsc::channel(1);
        let (new, mut new_rx) = mpsc::channel(1);
        ops.attach("uid", "agent-a", 3, old);
        ops.attach("uid", "agent-b", 3, new);
        ops.detach("uid", "agent-a");
        let link = ops.link("uid").expect("agent-b's stream stays");
        link.send(Bytes::from_static(b"x\n")).await.unwrap();
        assert_eq!(new_rx.recv().await.unwrap(), Bytes::from_static(b"x\n"));
        drop(new_rx);
        assert!(!ops.linked("uid"), "a closed stream is no link");
        ops.detach("uid", "agent-b");
        assert!(ops.links.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn answers_reach_their_waiter_once() {
        let ops = AgentOps::default();
        let (tx, rx) = oneshot::channel();
        ops.pending.lock().unwrap().insert(7, tx);
        assert!(ops.waits(7));
        let reply = ContextOpReply::Env(Ok(vec![]));
        assert!(ops.complete(7, Answer::Reply(reply.clone())));
        assert!(matches!(rx.await, Ok(Answer::Reply(r)) if r == reply));
        assert!(!ops.waits(7));
        assert!(
            !ops.complete(7, Answer::Reply(reply)),
            "an operation is answered once; a late answer is refused"
        );
        {
            let (tx, _rx) = oneshot::channel();
            ops.pending.lock().unwrap().insert(8, tx);
            let _gone = Pending { ops: &ops, op: 8 };
        }
        assert!(!ops.waits(8), "a cancelled operation is forgotten");
    }
}
