//! Agents as ephemeral containers of their target pods (`agent_ephemeral`). Added through
//! the pod's `ephemeralcontainers` subresource, an agent shares the pod's network
//! namespace (no pod of its own on the node, no hostPID) and, through
//! `targetContainerName`, the process namespace of the pod's first container (its
//! environment and files for sessions' context).
//!
//! Such an agent holds nothing secret: it cannot mount the agents' Secret, and a key in
//! its spec would be readable by whoever may read the pod. So the operator dials it
//! ([`dial`]), at the pod's address it knows from the API server, and the agent verifies
//! the operator with the agents' CA certificate (public). An ephemeral container cannot be
//! removed: an agent that left stays in the pod's spec, stopped.

use crate::target::{KubeTarget, PodInfo};
use crate::{gateway, Context, Targets};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio_rustls::TlsAcceptor;

/// What the operator needs to reach its ephemeral agents.
pub struct Dialer {
    /// The gateway's TLS without client certificates: the agent is known by the address
    /// it was reached at.
    pub(crate) acceptor: TlsAcceptor,
    /// The agents' CA certificate (PEM), which the agent verifies the operator with.
    pub(crate) ca_pem: String,
    pub(crate) targets: Weak<Targets>,
}

/// What an ephemeral agent adds to the runtime's defaults: NET_ADMIN (its nftables
/// redirect, conntrack) and SYS_PTRACE (the target container's `/proc/PID/environ` and
/// `root`). It enters no namespace, so it needs no SYS_ADMIN.
pub const CAPABILITIES: [&str; 2] = ["NET_ADMIN", "SYS_PTRACE"];

/// The port an ephemeral agent is dialled on: one the pod's own containers are unlikely
/// to use (a collision fails the agent's start, and the fleet then tries another).
pub(crate) fn port() -> u16 {
    40_000 + rand::random::<u16>() % 10_000
}

/// The first Kubernetes minor version (1.x) whose ephemeral containers may have a
/// `securityContext` (kubernetes/kubernetes#99023): before, they get the runtime's default
/// capabilities, without the NET_ADMIN the redirect needs.
pub const FIRST_MINOR: u32 = 21;

/// Why ephemeral agents cannot run on a cluster of version `major.minor`, if they cannot.
pub fn unsupported(major: &str, minor: &str) -> Option<String> {
    let m: u32 = minor.trim_end_matches('+').parse().unwrap_or(u32::MAX);
    (major == "1" && m < FIRST_MINOR).then(|| {
        format!(
            "agent.ephemeral needs Kubernetes 1.{FIRST_MINOR} or later: before, an ephemeral container cannot be given capabilities, and the agent needs NET_ADMIN for its redirect (this cluster is {major}.{minor}); turn agent.ephemeral off to run agents as pods"
        )
    })
}

/// Adds agent `name` to pod `pod` (UID `uid`), listening on `port`. What the user is told
/// when that cannot be: the API server's own words, or why this cluster cannot.
pub(crate) async fn add(
    ctx: &Context,
    name: &str,
    uid: &str,
    pod: &PodInfo,
    port: u16,
) -> Result<(), String> {
    let ca = ctx.dialer.get().map(|d| d.ca_pem.as_str()).unwrap_or("");
    let container = container(ctx, name, uid, pod, port, ca);
    let v = ctx
        .client
        .apiserver_version()
        .await
        .map_err(|e| format!("cannot read the cluster's version: {e}"))?;
    if let Some(why) = unsupported(&v.major, &v.minor) {
        return Err(why);
    }
    // Before 1.22 the subresource is an `EphemeralContainers` object of its own; since,
    // it is the Pod.
    let minor: u32 = v.minor.trim_end_matches('+').parse().unwrap_or(u32::MAX);
    let body = if v.major == "1" && minor < 22 {
        serde_json::json!({"ephemeralContainers": [container]})
    } else {
        serde_json::json!({"spec": {"ephemeralContainers": [container]}})
    };
    let req = http::Request::patch(format!(
        "/api/v1/namespaces/{}/pods/{}/ephemeralcontainers",
        pod.namespace, pod.name
    ))
    .header(
        http::header::CONTENT_TYPE,
        "application/strategic-merge-patch+json",
    )
    .body(serde_json::to_vec(&body).expect("JSON"))
    .expect("a valid request");
    match ctx.client.request_text(req).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) => Err(s.message),
        Err(e) => Err(e.to_string()),
    }
}

fn container(
    ctx: &Context,
    name: &str,
    uid: &str,
    pod: &PodInfo,
    port: u16,
    ca: &str,
) -> serde_json::Value {
    let security = crate::fleet::security_context(ctx, &CAPABILITIES);
    let lease = format!("{}ms", ctx.lease.as_millis());
    let mut c = serde_json::json!({
        "name": name,
        "image": ctx.agent_image,
        "imagePullPolicy": ctx.agent_pull_policy,
        "args": ["intercept", "--pod-uid", uid, "--agent-name", name, "--in-pod",
                 "--accept", port.to_string(), "--lease", lease],
        "env": [
            {"name": "RUST_LOG", "value": ctx.agent_log},
            {"name": "MIRRORD_AGENT_CA", "value": ca},
        ],
        "securityContext": security,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    });
    if let Some((first, _)) = pod.containers.first() {
        c["targetContainerName"] = first.as_str().into();
    }
    c
}

/// Dials agent `name` of pod `uid` at `addr` and serves its link, again whenever it
/// ends, for as long as the target keeps that agent.
pub(crate) fn dial(t: &Arc<KubeTarget>, uid: String, name: String, addr: SocketAddr) {
    let Some(dialer) = t.ctx.dialer.get() else {
        return;
    };
    let acceptor = dialer.acceptor.clone();
    let targets = dialer.targets.clone();
    let target = Arc::downgrade(t);
    // Detached: it ends when the target forgets the agent.
    tokio::spawn(async move {
        loop {
            let kept = target
                .upgrade()
                .is_some_and(|t| t.agents.of(&uid).is_some_and(|(a, _)| a == name));
            if !kept {
                return;
            }
            let tcp =
                tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr))
                    .await;
            if let Ok(Ok(tcp)) = tcp {
                let _ = tcp.set_nodelay(true);
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let Some(targets) = targets.upgrade() else {
                            return;
                        };
                        gateway::serve_agent(tls, format!("{name} at {addr}"), targets).await;
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(target: "mirrord_kube", agent = %name, %addr, error = %e, "TLS with the ephemeral agent failed")
                    }
                    Err(_) => {
                        tracing::debug!(target: "mirrord_kube", agent = %name, %addr, "the ephemeral agent did not finish TLS in time")
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
}

/// What ephemeral agent `name` of `pod` is doing, for an error message.
pub(crate) async fn state(ctx: &Context, pod: &PodInfo, name: &str) -> String {
    let read = Api::<Pod>::namespaced(ctx.client.clone(), &pod.namespace)
        .get(&pod.name)
        .await;
    let p = match read {
        Ok(p) => p,
        Err(e) => return format!("pod {} unreadable: {e}", pod.name),
    };
    let status = p
        .status
        .and_then(|s| s.ephemeral_container_statuses)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.name == name);
    let Some(state) = status.and_then(|c| c.state) else {
        return format!("ephemeral agent {name} not started yet");
    };
    if let Some(w) = state.waiting {
        return format!(
            "ephemeral agent {name} waiting: {} {}",
            w.reason.unwrap_or_default(),
            w.message.unwrap_or_default()
        )
        .trim()
        .to_owned();
    }
    if let Some(t) = state.terminated {
        return format!(
            "ephemeral agent {name} exited {}: {}",
            t.exit_code,
            t.message.unwrap_or_default().trim()
        );
    }
    format!("ephemeral agent {name} running")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clusters_before_1_21_cannot_give_an_ephemeral_agent_its_capabilities() {
        let why = unsupported("1", "20").expect("1.20 refused");
        assert!(why.contains("1.21") && why.contains("NET_ADMIN") && why.contains("1.20"));
        assert!(unsupported("1", "20+").is_some(), "a vendor's 1.20+");
        assert_eq!(unsupported("1", "21"), None);
        assert_eq!(unsupported("1", "33+"), None);
        assert_eq!(unsupported("2", "0"), None);
    }
}
