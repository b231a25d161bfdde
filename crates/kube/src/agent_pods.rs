//! The agent pods, watched: an agent whose pod is being deleted (by anyone: `kubectl
//! delete`, a drain, an eviction) or has ended is replaced at once and told to leave over its
//! link ([`crate::fleet`]), so it gives its ports back within milliseconds.
//!
//! The kubelet's SIGTERM alone is not a bound: Kubernetes 1.20 sometimes delivers it only
//! at the pod's next sync, seconds after the deletion, and an agent that is then killed
//! before it removed its redirect leaves the port black-holed until its lease ends.

use crate::{marks, Context, Targets};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use std::sync::{Arc, Weak};

/// Follows this operator's agent pods until the backend is gone.
pub async fn watch(ctx: Arc<Context>, targets: Weak<Targets>) {
    let api = Api::<Pod>::namespaced(ctx.client.clone(), &ctx.agent_namespace);
    let labels = format!(
        "{}={},{}=agent,{}={}",
        marks::MANAGED_BY,
        marks::MANAGER,
        marks::ROLE,
        marks::OPERATOR_NS,
        ctx.agent_namespace
    );
    drop(ctx);
    let mut events = watcher(api, watcher::Config::default().labels(&labels))
        .default_backoff()
        .boxed();
    while let Some(ev) = events.next().await {
        let Some(targets) = targets.upgrade() else {
            return;
        };
        let pod = match ev {
            Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) if going(&p) => p,
            Ok(watcher::Event::Delete(p)) => p,
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(target: "mirrord_kube", error = %e, "watching the agent pods failed; retrying");
                continue;
            }
        };
        let (Some(name), Some(uid)) = (
            pod.metadata.name.as_deref(),
            pod.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(marks::POD_UID)),
        ) else {
            continue;
        };
        if let Some(t) = targets.by_pod(uid) {
            if t.agents.pod_going(name) {
                tracing::info!(target: "mirrord_kube", target_ref = %t.reference_string(), agent = %name, "agent pod going");
                t.changed.notify_one();
            }
        }
    }
}

/// Being deleted, or finished (an agent pod never restarts).
fn going(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_some()
        || matches!(
            p.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Failed" | "Succeeded")
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    #[test]
    fn deleted_or_finished_agent_pods_are_going() {
        let mut p = Pod {
            status: Some(PodStatus {
                phase: Some("Running".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(!going(&p));
        p.metadata.deletion_timestamp = Some(Time(Default::default()));
        assert!(going(&p));
        p.metadata.deletion_timestamp = None;
        p.status.as_mut().unwrap().phase = Some("Failed".into());
        assert!(going(&p));
    }
}
