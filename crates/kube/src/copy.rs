//! Copy targets and scale-down. A copy is a pod made from the workload's pod template
//! (`mirrord-copy-...`): probes removed (the developer's process answers, or nothing
//! does), none of the template's labels (so no Service of the workload sends it traffic),
//! marked as the operator's, in the workload's namespace and so owned by nothing in the
//! operator's ([`crate::owners`]). A copy that cannot start is reported with Kubernetes'
//! reason as soon as it is known ([`crate::startup`]). Scale down patches the workload's
//! `replicas` to 0 and keeps the count it had in an annotation, so the operator (or a
//! restarted one) restores it.

use crate::target::{KubeTarget, PodInfo};
use crate::workload::{Kind, Resolved};
use crate::{marks, Context};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::Api;
use mirrord_controlplane::backend::{BackendError, TargetContext, TargetCopy};
use mirrord_protocol::SessionId;
use std::collections::BTreeMap;
use std::sync::Arc;

pub async fn make(
    target: Arc<KubeTarget>,
    session: String,
    scale_down: bool,
) -> Result<Box<dyn TargetCopy>, BackendError> {
    let id: SessionId = session
        .parse()
        .map_err(|_| BackendError::Unavailable(format!("bad session id {session}")))?;
    let r = target.resolved.clone();
    if scale_down
        && matches!(
            r.kind,
            Kind::Pod | Kind::Job | Kind::CronJob | Kind::Targetless
        )
    {
        let what = match r.kind {
            Kind::Targetless => "a targetless session's pod".to_owned(),
            kind => format!("{}/{}", kind.name(), r.name),
        };
        return Err(BackendError::CopyUnavailable(format!(
            "{what} has no replica count to scale down; copy it without --scale-down{}",
            match r.kind {
                Kind::Pod => ", or target its deployment",
                _ => "",
            }
        )));
    }
    let ctx = Arc::clone(&target.ctx);
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), &r.namespace);
    let spec = copy_pod(&ctx, &r, &session);
    let name = spec.metadata.name.clone().expect("named");
    let created = pods
        .create(&PostParams::default(), &spec)
        .await
        .map_err(|e| BackendError::CopyUnavailable(format!("cannot create copy {name}: {e}")))?;
    // From here on, dropping `copy` undoes everything done so far.
    let mut copy = KubeCopy {
        target: Arc::clone(&target),
        name: name.clone(),
        uid: created.metadata.uid.unwrap_or_default(),
        scaled_down: false,
    };
    let what = format!("copy {name} of {}/{}", r.kind.name(), r.name);
    let running = crate::startup::running(
        &ctx.client,
        &r.namespace,
        &name,
        &copy.uid,
        &what,
        ctx.ready_timeout,
    )
    .await
    .map_err(|e| BackendError::CopyUnavailable(e.to_string()))?;
    let info = PodInfo {
        name: name.clone(),
        namespace: r.namespace.clone(),
        containers: crate::target::container_ids(&running),
        ip: running
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok()),
        node: running.spec.and_then(|s| s.node_name).unwrap_or_default(),
        ready: true,
        copy_for: None,
    };
    if scale_down {
        scale_to_zero(&ctx, &r, &session).await?;
        copy.scaled_down = true;
    }
    target.add_copy_pod(
        copy.uid.clone(),
        PodInfo {
            copy_for: Some(id.0),
            ..info
        },
    );
    tracing::info!(target: "mirrord_kube", copy = %name, scale_down, session = %session, "copy running");
    Ok(Box::new(copy))
}

fn copy_pod(ctx: &Context, r: &Resolved, session: &str) -> Pod {
    let short: String = r.name.chars().take(30).collect();
    let name = format!("mirrord-copy-{short}-{:08x}", rand::random::<u32>());
    let mut spec = r.template.spec.clone().unwrap_or_default();
    for c in &mut spec.containers {
        c.liveness_probe = None;
        c.readiness_probe = None;
        c.startup_probe = None;
    }
    let kind = r.kind.name();
    let mut annotations = r
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default();
    annotations.insert(marks::COPY_OF.into(), format!("{kind}/{}", r.name));
    Pod {
        metadata: kube::api::ObjectMeta {
            name: Some(name),
            namespace: Some(r.namespace.clone()),
            labels: Some(BTreeMap::from([
                (marks::MANAGED_BY.to_owned(), marks::MANAGER.to_owned()),
                (marks::ROLE.to_owned(), "copy".to_owned()),
                (marks::OPERATOR_NS.to_owned(), ctx.agent_namespace.clone()),
                (marks::SESSION.to_owned(), session.to_owned()),
            ])),
            annotations: Some(annotations),
            owner_references: Some(ctx.owners.for_namespace(&r.namespace)),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

fn workload_api(ctx: &Context, kind: Kind, namespace: &str) -> Option<Api<DynamicObject>> {
    let ar = match kind {
        Kind::Deployment => ApiResource::erase::<Deployment>(&()),
        Kind::StatefulSet => ApiResource::erase::<StatefulSet>(&()),
        Kind::ReplicaSet => ApiResource::erase::<ReplicaSet>(&()),
        Kind::Pod | Kind::Job | Kind::CronJob | Kind::Targetless => return None,
    };
    Some(Api::namespaced_with(ctx.client.clone(), namespace, &ar))
}

async fn scale_to_zero(ctx: &Context, r: &Resolved, session: &str) -> Result<(), BackendError> {
    let api = workload_api(ctx, r.kind, &r.namespace).expect("not a pod");
    let w = api
        .get(&r.name)
        .await
        .map_err(|e| BackendError::Unavailable(format!("cannot read {}: {e}", r.name)))?;
    let annotations = w.metadata.annotations.clone().unwrap_or_default();
    if let Some(by) = annotations.get(marks::SCALED_DOWN_BY) {
        return Err(BackendError::ScaleDownConflict(format!(
            "{} is already scaled down by session {by}; only one session at a time may scale a target down",
            r.name
        )));
    }
    let replicas = w.data["spec"]["replicas"].as_i64().unwrap_or(1);
    // The resourceVersion makes the patch fail if anyone changed the workload since the
    // read: two sessions cannot both record an "original" count.
    let patch = serde_json::json!({
        "metadata": {
            "resourceVersion": w.metadata.resource_version,
            "annotations": {
                marks::ORIGINAL_REPLICAS: replicas.to_string(),
                marks::SCALED_DOWN_BY: session,
            },
            "labels": { marks::OPERATOR_NS: ctx.agent_namespace },
        },
        "spec": { "replicas": 0 },
    });
    api.patch(&r.name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) if s.code == 409 => BackendError::ScaleDownConflict(format!(
                "{} changed while being scaled down (another session?); try again",
                r.name
            )),
            e => BackendError::Unavailable(format!("cannot scale {} down: {e}", r.name)),
        })?;
    tracing::info!(target: "mirrord_kube", workload = %r.name, namespace = %r.namespace, replicas, "scaled down to 0");
    Ok(())
}

/// Gives a scaled-down workload its replica count back (from its annotation) and removes
/// the marks.
pub async fn restore(api: &Api<DynamicObject>, name: &str) -> Result<(), kube::Error> {
    let w = api.get(name).await?;
    let Some(replicas) = w
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(marks::ORIGINAL_REPLICAS))
        .and_then(|n| n.parse::<i64>().ok())
    else {
        return Ok(());
    };
    let patch = serde_json::json!({
        "metadata": {
            "annotations": { marks::ORIGINAL_REPLICAS: null, marks::SCALED_DOWN_BY: null },
            "labels": { marks::OPERATOR_NS: null },
        },
        "spec": { "replicas": replicas },
    });
    api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    tracing::info!(target: "mirrord_kube", workload = %name, replicas, "replicas restored");
    Ok(())
}

pub async fn restore_workload(ctx: &Context, kind: Kind, namespace: &str, name: &str) {
    if let Some(api) = workload_api(ctx, kind, namespace) {
        if let Err(e) = restore(&api, name).await {
            tracing::error!(target: "mirrord_kube", workload = %name, namespace, error = %e, "cannot restore the replica count; the operator retries at its next start");
        }
    }
}

pub struct KubeCopy {
    target: Arc<KubeTarget>,
    name: String,
    uid: String,
    scaled_down: bool,
}

impl TargetCopy for KubeCopy {
    fn name(&self) -> &str {
        &self.name
    }

    /// The copy's own process: a session working on a copy gets the copy's environment
    /// and network.
    fn context(
        &self,
        session: SessionId,
        container: Option<String>,
    ) -> futures::future::BoxFuture<'static, Result<Arc<dyn TargetContext>, BackendError>> {
        let _ = session;
        let (target, uid, name) = (
            Arc::clone(&self.target),
            self.uid.clone(),
            self.name.clone(),
        );
        Box::pin(async move {
            let c = crate::context::open(target, uid, name, container).await?;
            Ok(c as Arc<dyn TargetContext>)
        })
    }
}

impl Drop for KubeCopy {
    fn drop(&mut self) {
        self.target.remove_pod(&self.uid);
        let (target, name, scaled_down) = (
            Arc::clone(&self.target),
            self.name.clone(),
            self.scaled_down,
        );
        // A task of the operator's lifecycle: stopping waits for the copy to go and the
        // workload to come back.
        let shutdown = target.ctx.shutdown.clone();
        shutdown.spawn(async move {
            let r = &target.resolved;
            if scaled_down {
                restore_workload(&target.ctx, r.kind, &r.namespace, &r.name).await;
            }
            let pods = Api::<Pod>::namespaced(target.ctx.client.clone(), &r.namespace);
            match pods.delete(&name, &DeleteParams::default()).await {
                Ok(_) => tracing::info!(target: "mirrord_kube", copy = %name, "copy removed"),
                Err(e) => tracing::warn!(target: "mirrord_kube", copy = %name, error = %e, "cannot delete the copy; the operator removes it at its next start"),
            }
        });
    }
}
