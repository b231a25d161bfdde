//! From a target reference to what the backend needs of it: how to find its pods, the
//! ports it declares, and the pod template a copy is made from.
//!
//! Another name for pods a workload already serves is that workload ([`canonical`]): a
//! Deployment's ReplicaSet is the Deployment, a Service is the one workload its selector
//! picks. So one target owns each pod's agent, routes and port locks, whatever name a
//! session uses. `job/` and `cronjob/` are copy targets only (their pods run to completion).

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Pod, PodSpec, PodTemplateSpec, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::ListParams;
use kube::core::Selector;
use kube::{Api, Client};
use mirrord_controlplane::backend::BackendError;
use mirrord_protocol::TargetRef;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Deployment,
    StatefulSet,
    /// One no Deployment manages (a managed one is its Deployment).
    ReplicaSet,
    Pod,
    /// Copy targets only.
    Job,
    CronJob,
    /// No target: a pod of the session's own in the namespace ([`targetless`]).
    Targetless,
}

impl Kind {
    fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "deployment" | "deploy" | "deployments" => Some(Kind::Deployment),
            "statefulset" | "sts" | "statefulsets" => Some(Kind::StatefulSet),
            "replicaset" | "rs" | "replicasets" => Some(Kind::ReplicaSet),
            "pod" | "pods" | "po" => Some(Kind::Pod),
            "job" | "jobs" => Some(Kind::Job),
            "cronjob" | "cj" | "cronjobs" => Some(Kind::CronJob),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Deployment => "deployment",
            Kind::StatefulSet => "statefulset",
            Kind::ReplicaSet => "replicaset",
            Kind::Pod => "pod",
            Kind::Job => "job",
            Kind::CronJob => "cronjob",
            Kind::Targetless => TARGETLESS,
        }
    }

    /// Why a session on it must make a copy, if it must.
    pub fn copy_only(self) -> bool {
        matches!(self, Kind::Job | Kind::CronJob | Kind::Targetless)
    }
}

/// The kinds a target may name, for error messages.
pub const KINDS: &str =
    "deployment, statefulset, replicaset, pod, service, job and cronjob (copies only), or targetless";

/// mirrord's name for no target.
pub const TARGETLESS: &str = "targetless";

/// A targetless session's "target": a pod of its own in `r`'s namespace, made like a copy
/// from this template. Its one container is the agent's image doing nothing (`idle`), as
/// an unprivileged user: what the session's process gets is the pod's network namespace
/// (pod-only addresses, the namespace's Services by short name) and its resolver.
pub fn targetless(r: &TargetRef, image: &str, pull_policy: &str) -> Resolved {
    let template: PodTemplateSpec = serde_json::from_value(serde_json::json!({
        "spec": {
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 1,
            "enableServiceLinks": false,
            "containers": [{
                "name": TARGETLESS,
                "image": image,
                "imagePullPolicy": pull_policy,
                "args": ["idle"],
                "securityContext": {
                    "runAsNonRoot": true,
                    "runAsUser": 65534,
                    "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]},
                },
                "resources": {"requests": {"cpu": "1m", "memory": "4Mi"}, "limits": {"memory": "32Mi"}},
            }],
        }
    }))
    .expect("a valid pod template");
    Resolved {
        kind: Kind::Targetless,
        name: TARGETLESS.into(),
        namespace: r.namespace.clone(),
        uid: String::new(),
        pods: PodSelector::None,
        ports: Vec::new(),
        template,
        labels: Default::default(),
    }
}

/// A target as found in the cluster.
#[derive(Clone)]
pub struct Resolved {
    pub kind: Kind,
    pub name: String,
    pub namespace: String,
    /// The workload's (or pod's) UID: a target recreated under the same name is new.
    pub uid: String,
    /// Which pods serve it: a label selector, or for a pod its name.
    pub pods: PodSelector,
    /// Container ports the pod template declares.
    pub ports: Vec<u16>,
    /// What a copy is made from.
    pub template: PodTemplateSpec,
    /// The workload's (or pod's) own labels: what policies select targets by.
    pub labels: std::collections::BTreeMap<String, String>,
}

#[derive(Clone, Debug)]
pub enum PodSelector {
    Labels(String),
    Name(String),
    /// A CronJob's: its own pods are never targets, only copies of its template.
    None,
}

fn api_error(action: String, e: kube::Error) -> BackendError {
    BackendError::Unavailable(format!("the Kubernetes API refused to {action}: {e}"))
}

fn not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

pub async fn resolve(client: &Client, r: &TargetRef) -> Result<Resolved, BackendError> {
    let Some(kind) = Kind::parse(&r.kind) else {
        return Err(unknown(client, r).await);
    };
    let ns = &r.namespace;
    let found = match kind {
        Kind::Deployment => get::<Deployment>(client, ns, &r.name).await.map(|d| {
            let spec = d.spec.unwrap_or_default();
            let labels = d.metadata.labels.unwrap_or_default();
            (d.metadata.uid, Some(spec.selector), spec.template, labels)
        }),
        Kind::StatefulSet => get::<StatefulSet>(client, ns, &r.name).await.map(|s| {
            let spec = s.spec.unwrap_or_default();
            let labels = s.metadata.labels.unwrap_or_default();
            (s.metadata.uid, Some(spec.selector), spec.template, labels)
        }),
        Kind::ReplicaSet => get::<ReplicaSet>(client, ns, &r.name).await.map(|s| {
            let spec = s.spec.unwrap_or_default();
            let labels = s.metadata.labels.unwrap_or_default();
            let template = spec.template.unwrap_or_default();
            (s.metadata.uid, Some(spec.selector), template, labels)
        }),
        Kind::Pod => get::<Pod>(client, ns, &r.name).await.map(|p| {
            let labels = p.metadata.labels.clone().unwrap_or_default();
            (p.metadata.uid.clone(), None, pod_template(p), labels)
        }),
        Kind::Job => get::<Job>(client, ns, &r.name).await.map(|j| {
            let spec = j.spec.unwrap_or_default();
            let labels = j.metadata.labels.unwrap_or_default();
            (j.metadata.uid, spec.selector, spec.template, labels)
        }),
        Kind::Targetless => return Err(unknown(client, r).await),
        Kind::CronJob => get::<CronJob>(client, ns, &r.name).await.map(|c| {
            let template = c
                .spec
                .and_then(|s| s.job_template.spec)
                .map(|s| s.template)
                .unwrap_or_default();
            let labels = c.metadata.labels.unwrap_or_default();
            (c.metadata.uid, None, template, labels)
        }),
    };
    // Only a target that is not there costs the listing of what is.
    let (uid, selector, template, labels) = match found {
        Ok(f) => f,
        Err(e) if not_found(&e) => return Err(unknown(client, r).await),
        Err(e) => return Err(api_error(format!("read {r} in namespace {ns}"), e)),
    };
    if let Some(c) = &r.container {
        let names: Vec<&str> = template
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .map(|c| c.name.as_str())
            .collect();
        if !names.contains(&c.as_str()) {
            return Err(BackendError::UnknownContainer(format!(
                "{r} in namespace {ns} has no container `{c}`; its pods' containers are {}",
                names.join(", ")
            )));
        }
    }
    let pods = match selector {
        _ if matches!(kind, Kind::CronJob | Kind::Targetless) => PodSelector::None,
        Some(s) => PodSelector::Labels(label_selector(&s).map_err(|e| {
            BackendError::Unavailable(format!("{r} has a selector this operator cannot use: {e}"))
        })?),
        None => PodSelector::Name(r.name.clone()),
    };
    Ok(Resolved {
        kind,
        name: r.name.clone(),
        namespace: ns.clone(),
        uid: uid.unwrap_or_default(),
        pods,
        ports: declared_ports(template.spec.as_ref()),
        template,
        labels,
    })
}

/// The target that owns the pods `r` names: a ReplicaSet a Deployment manages is that
/// Deployment, a Service the one workload (or bare pod) its selector picks; anything else
/// is itself. The container part is kept.
pub async fn canonical(client: &Client, r: &TargetRef) -> Result<TargetRef, BackendError> {
    let kind = r.kind.to_ascii_lowercase();
    let ns = &r.namespace;
    let owner = match kind.as_str() {
        "replicaset" | "rs" | "replicasets" => match get::<ReplicaSet>(client, ns, &r.name).await {
            Ok(rs) => controller(&rs.metadata).filter(|(k, _)| k == "Deployment"),
            Err(e) if not_found(&e) => return Err(unknown(client, r).await),
            Err(e) => return Err(api_error(format!("read {r} in namespace {ns}"), e)),
        },
        "service" | "svc" | "services" => Some(service_workload(client, r).await?),
        _ => None,
    };
    Ok(match owner {
        Some((kind, name)) => TargetRef {
            kind: kind.to_ascii_lowercase(),
            name,
            namespace: ns.clone(),
            container: r.container.clone(),
        },
        None => r.clone(),
    })
}

/// `(Kind, name)` of the object that controls the one `meta` describes, if any.
fn controller(meta: &kube::api::ObjectMeta) -> Option<(String, String)> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| (o.kind.clone(), o.name.clone()))
}

/// The one workload whose pods Service `r` selects (a Deployment through its ReplicaSets,
/// a StatefulSet, or a bare pod).
async fn service_workload(
    client: &Client,
    r: &TargetRef,
) -> Result<(String, String), BackendError> {
    let ns = &r.namespace;
    let svc = match get::<Service>(client, ns, &r.name).await {
        Ok(s) => s,
        Err(e) if not_found(&e) => return Err(unknown(client, r).await),
        Err(e) => return Err(api_error(format!("read {r} in namespace {ns}"), e)),
    };
    let selector = svc.spec.and_then(|s| s.selector).unwrap_or_default();
    if selector.is_empty() {
        return Err(BackendError::UnknownTarget {
            target: r.to_string(),
            namespace: ns.clone(),
            known: "none: it has no selector, so no pods of its own (target the workload behind its endpoints)".into(),
        });
    }
    let query: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&query.join(",")))
        .await
        .map_err(|e| api_error(format!("list the pods of {r} in namespace {ns}"), e))?;
    let mut workloads = std::collections::BTreeSet::new();
    for p in pods
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        let owner = match controller(&p.metadata) {
            Some((k, name)) if k == "ReplicaSet" => {
                match get::<ReplicaSet>(client, ns, &name).await {
                    Ok(rs) => controller(&rs.metadata)
                        .filter(|(k, _)| k == "Deployment")
                        .unwrap_or((k, name)),
                    Err(_) => (k, name),
                }
            }
            Some(o) => o,
            None => ("Pod".into(), p.metadata.name.clone().unwrap_or_default()),
        };
        workloads.insert(owner);
    }
    let mut it = workloads.into_iter();
    match (it.next(), it.next()) {
        (Some(one), None) if Kind::parse(&one.0).is_some_and(|k| !k.copy_only()) => Ok(one),
        (None, _) => Err(BackendError::Unavailable(format!(
            "{r} in namespace {ns} selects no running pod ({}); there is nothing to target yet",
            query.join(",")
        ))),
        (Some(first), second) => {
            let all: Vec<String> = std::iter::once(first)
                .chain(second)
                .chain(it)
                .map(|(k, n)| format!("{}/{n}", k.to_ascii_lowercase()))
                .collect();
            Err(BackendError::Unavailable(format!(
                "{r} in namespace {ns} selects the pods of {}; target one of them (a Service's pods must be one workload's)",
                all.join(", ")
            )))
        }
    }
}

/// A kind of namespaced object the typed `Api` can read.
trait Namespaced:
    kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
{
}
impl<K> Namespaced for K where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
{
}

async fn get<K: Namespaced>(client: &Client, ns: &str, name: &str) -> Result<K, kube::Error> {
    Api::<K>::namespaced(client.clone(), ns).get(name).await
}

/// A bare pod as the template a copy is made from.
fn pod_template(p: Pod) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(kube::api::ObjectMeta {
            labels: p.metadata.labels,
            annotations: p.metadata.annotations,
            ..Default::default()
        }),
        spec: p.spec,
    }
}

fn label_selector(s: &LabelSelector) -> Result<String, String> {
    let sel = Selector::try_from(s.clone()).map_err(|e| e.to_string())?;
    if sel.selects_all() {
        return Err("it selects every pod".into());
    }
    Ok(sel.to_string())
}

fn declared_ports(spec: Option<&PodSpec>) -> Vec<u16> {
    let mut ports: Vec<u16> = spec
        .into_iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| u16::try_from(p.container_port).ok())
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// The error for a target that does not exist: it lists what does, in that namespace.
async fn unknown(client: &Client, r: &TargetRef) -> BackendError {
    let ns = &r.namespace;
    let mut known = names::<Deployment>(client, ns, "deployment", |_| true).await;
    known.extend(names::<StatefulSet>(client, ns, "statefulset", |_| true).await);
    // A Deployment's ReplicaSets are that Deployment: only the ones nothing manages.
    known.extend(
        names::<ReplicaSet>(client, ns, "replicaset", |s| {
            controller(&s.metadata).is_none()
        })
        .await,
    );
    known.extend(names::<Service>(client, ns, "service", |_| true).await);
    known.extend(names::<Job>(client, ns, "job", |_| true).await);
    known.extend(names::<CronJob>(client, ns, "cronjob", |_| true).await);
    // Pods of this operator are not targets.
    let not_ours = |p: &Pod| {
        !p.metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(crate::marks::ROLE))
    };
    known.extend(names::<Pod>(client, ns, "pod", not_ours).await);
    let known = if known.is_empty() {
        format!("none (target kinds: {KINDS})")
    } else {
        known.join(", ")
    };
    BackendError::UnknownTarget {
        target: r.to_string(),
        namespace: ns.clone(),
        known,
    }
}

/// `kind/name` of each object of kind `K` in `ns` that `keep` accepts; none if the list
/// fails (the listing only helps an error message).
async fn names<K: Namespaced>(
    client: &Client,
    ns: &str,
    kind: &str,
    keep: impl Fn(&K) -> bool,
) -> Vec<String> {
    let Ok(list) = Api::<K>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
    else {
        return Vec::new();
    };
    list.items
        .iter()
        .filter(|o| keep(o))
        .map(|o| format!("{kind}/{}", o.meta().name.as_deref().unwrap_or_default()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    use std::collections::BTreeMap;

    #[test]
    fn selectors_become_label_queries_and_select_all_is_refused() {
        let s = LabelSelector {
            match_labels: Some(BTreeMap::from([("app".to_owned(), "web".to_owned())])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "In".into(),
                values: Some(vec!["a".into(), "b".into()]),
            }]),
        };
        let q = label_selector(&s).unwrap();
        assert!(q.contains("app=web"), "{q}");
        assert!(q.contains("tier in (a,b)"), "{q}");
        assert!(label_selector(&LabelSelector::default()).is_err());
    }

    #[test]
    fn kinds_accept_kubectl_spellings() {
        assert_eq!(Kind::parse("Deployment"), Some(Kind::Deployment));
        assert_eq!(Kind::parse("sts"), Some(Kind::StatefulSet));
        assert_eq!(Kind::parse("po"), Some(Kind::Pod));
        assert_eq!(Kind::parse("ReplicaSet"), Some(Kind::ReplicaSet));
        assert_eq!(Kind::parse("cj"), Some(Kind::CronJob));
        assert!(Kind::parse("job").is_some_and(Kind::copy_only));
        assert!(!Kind::Deployment.copy_only());
        assert_eq!(Kind::parse("rollout"), None);
    }
}
