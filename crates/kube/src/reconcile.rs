//! At start, undo what a previous process of this operator left: its copies and agents
//! are deleted, workloads it scaled down get their replica count back. Everything is
//! found by the marks put on it ([`crate::marks`]), cluster-wide.

use crate::copy::restore_workload;
use crate::workload::Kind;
use crate::{marks, Context};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams};
use kube::{Api, Resource};

pub async fn on_start(ctx: &Context) {
    let mine = format!("{}={}", marks::OPERATOR_NS, ctx.agent_namespace);
    let pods =
        ListParams::default().labels(&format!("{}={},{mine}", marks::MANAGED_BY, marks::MANAGER));
    match Api::<Pod>::all(ctx.client.clone()).list(&pods).await {
        Ok(list) => {
            for p in list.items {
                let (Some(name), Some(ns)) =
                    (p.metadata.name.clone(), p.metadata.namespace.clone())
                else {
                    continue;
                };
                let api = Api::<Pod>::namespaced(ctx.client.clone(), &ns);
                match api.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => {
                        tracing::warn!(target: "mirrord_kube", pod = %name, namespace = %ns, "removed a pod a previous operator left")
                    }
                    Err(e) => {
                        tracing::error!(target: "mirrord_kube", pod = %name, namespace = %ns, error = %e, "cannot remove a pod a previous operator left")
                    }
                }
            }
        }
        Err(e) => {
            tracing::error!(target: "mirrord_kube", error = %e, "cannot list pods a previous operator left")
        }
    }
    let lp = ListParams::default().labels(&mine);
    restore_all::<Deployment>(ctx, Kind::Deployment, &lp).await;
    restore_all::<StatefulSet>(ctx, Kind::StatefulSet, &lp).await;
    restore_all::<ReplicaSet>(ctx, Kind::ReplicaSet, &lp).await;
}

async fn restore_all<K>(ctx: &Context, kind: Kind, lp: &ListParams)
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    <K as Resource>::DynamicType: Default,
{
    match Api::<K>::all(ctx.client.clone()).list(lp).await {
        Ok(list) => {
            for w in list.items {
                let meta = w.meta();
                if let (Some(name), Some(ns)) = (&meta.name, &meta.namespace) {
                    tracing::warn!(target: "mirrord_kube", workload = %name, namespace = %ns, "restoring a workload a previous operator scaled down");
                    restore_workload(ctx, kind, ns, name).await;
                }
            }
        }
        Err(e) => {
            tracing::error!(target: "mirrord_kube", error = %e, "cannot list scaled-down workloads")
        }
    }
}
