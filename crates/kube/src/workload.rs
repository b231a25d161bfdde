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

    /// Whether a session on it must make a copy.
    pub fn copy_only(self) -> bool {
        matches!(self, Kind::Job | Kind::CronJob | Kind::Targetless)
    }
}

/// The kinds a target may name, for error messages.
pub const KINDS: &str =
    "deployment, statefulset, replicaset, pod, service, job and cronjob (copies only), or targetless";

pub use mirrord_protocol::TARGETLESS;

/// A targetless session's "target": a pod of its own in `r`'s namespace, made like a copy
/// from this template. Its one container is the agent's image doing nothing (`idle`), as
/// an unprivileged user: what the session's process gets is the pod's network namespace
/// (pod-only addresses, the namespace's Services by short name) and its resolver.
/// Only `targetless` itself, in a namespace that exists (each is a target kept while the
/// operator runs).
pub async fn targetless(
    client: &Client,
    r: &TargetRef,
    image: &str,
    pull_policy: &str,
) -> Result<Resolved, BackendError> {
    if r.name != TARGETLESS || r.container.is_some() {
        return Err(BackendError::NotATarget(format!(
            "targetless has no name or container: ask for `targetless` (not {r})"
        )));
    }
    let api = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone());
    match api.get(&r.namespace).await {
        Ok(_) => Ok(targetless_template(r, image, pull_policy)),
        Err(e) if not_found(&e) => Err(BackendError::NotATarget(format!(
            "there is no namespace {} to run a targetless session in",
            r.namespace
        ))),
        Err(e) => Err(api_error(format!("read namespace {}", r.namespace), e)),
    }
}

fn targetless_template(r: &TargetRef, image: &str, pull_policy: &str) -> Resolved {
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
                // What Pod Security `restricted` asks of a container.
                "securityContext": {
                    "runAsNonRoot": true,
                    "runAsUser": 65534,
                    "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]},
                    "seccompProfile": {"type": "RuntimeDefault"},
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
    /// A CronJob's and targetless: no pods of its own are targets, only copies of its
    /// template.
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
        _ if kind.copy_only() => PodSelector::None,
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

/// The target that owns the pods `r` names, under its kind's own spelling (`deploy/x` and
/// `Deployment/x` are `deployment/x`): a ReplicaSet a Deployment manages is that
/// Deployment, a Service the one workload (or bare pod) its selector picks; anything else
/// is itself. The container part is kept. For a Service, the Service too: its ports are
/// its pods' ports ([`crate::service_ports`]).
pub async fn canonical(
    client: &Client,
    r: &TargetRef,
) -> Result<(TargetRef, Option<Service>), BackendError> {
    let ns = &r.namespace;
    let is_service = matches!(
        r.kind.to_ascii_lowercase().as_str(),
        "service" | "svc" | "services"
    );
    let mut service = None;
    let (kind, name) = match Kind::parse(&r.kind) {
        Some(Kind::ReplicaSet) => match get::<ReplicaSet>(client, ns, &r.name).await {
            Ok(rs) => replicaset_owner(r, &rs)?,
            Err(e) if not_found(&e) => return Err(unknown(client, r).await),
            Err(e) => return Err(api_error(format!("read {r} in namespace {ns}"), e)),
        },
        Some(kind) => (kind, r.name.clone()),
        None if is_service => {
            let (kind, name, svc) = service_workload(client, r).await?;
            service = Some(svc);
            (kind, name)
        }
        None => return Err(unknown(client, r).await),
    };
    let canonical = TargetRef {
        kind: kind.name().to_owned(),
        name,
        namespace: ns.clone(),
        container: r.container.clone(),
    };
    Ok((canonical, service))
}

/// A ReplicaSet's target: its Deployment, itself when nothing manages it; one another
/// controller manages (an Argo Rollout) is refused, as scaling or copying it would fight
/// that controller.
fn replicaset_owner(r: &TargetRef, rs: &ReplicaSet) -> Result<(Kind, String), BackendError> {
    match controller(&rs.metadata) {
        None => Ok((Kind::ReplicaSet, r.name.clone())),
        Some((k, name)) if k == "Deployment" => Ok((Kind::Deployment, name)),
        Some((k, name)) => Err(BackendError::NotATarget(format!(
            "{r} in namespace {} is managed by {k} {name}, which is not a target kind ({KINDS})",
            r.namespace
        ))),
    }
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
/// a StatefulSet, a ReplicaSet nothing manages, or a bare pod), and the Service.
async fn service_workload(
    client: &Client,
    r: &TargetRef,
) -> Result<(Kind, String, Service), BackendError> {
    let ns = &r.namespace;
    let svc = match get::<Service>(client, ns, &r.name).await {
        Ok(s) => s,
        Err(e) if not_found(&e) => return Err(unknown(client, r).await),
        Err(e) => return Err(api_error(format!("read {r} in namespace {ns}"), e)),
    };
    let selector = svc
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default();
    if selector.is_empty() {
        return Err(BackendError::NotATarget(format!(
            "{r} in namespace {ns} has no selector, so no pods of its own; target the workload behind its endpoints"
        )));
    }
    let query: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&query.join(",")))
        .await
        .map_err(|e| api_error(format!("list the pods of {r} in namespace {ns}"), e))?;
    // Each pod's controller, then (once per ReplicaSet) the ReplicaSet's.
    let mut owners = std::collections::BTreeSet::new();
    for p in pods
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        owners.insert(
            controller(&p.metadata)
                .unwrap_or_else(|| ("Pod".into(), p.metadata.name.clone().unwrap_or_default())),
        );
    }
    let mut workloads = std::collections::BTreeSet::new();
    for (k, name) in owners {
        let owner = match k.as_str() {
            "ReplicaSet" => match get::<ReplicaSet>(client, ns, &name).await {
                Ok(rs) => controller(&rs.metadata).unwrap_or((k, name)),
                Err(e) => {
                    return Err(api_error(
                        format!("read replicaset/{name} in namespace {ns}"),
                        e,
                    ))
                }
            },
            _ => (k, name),
        };
        workloads.insert(owner);
    }
    let named: Vec<String> = workloads
        .iter()
        .map(|(k, n)| format!("{}/{n}", k.to_ascii_lowercase()))
        .collect();
    let mut it = workloads.into_iter();
    match (it.next(), it.next()) {
        (None, _) => Err(BackendError::NotATarget(format!(
            "{r} in namespace {ns} selects no running pod ({}); there is nothing to target yet",
            query.join(",")
        ))),
        (Some((k, name)), None) => match Kind::parse(&k).filter(|k| !k.copy_only()) {
            Some(kind) => Ok((kind, name, svc)),
            None => Err(BackendError::NotATarget(format!(
                "{r} in namespace {ns} selects the pods of {}, which is not a target kind ({KINDS})",
                named[0]
            ))),
        },
        (Some(_), Some(_)) => Err(BackendError::NotATarget(format!(
            "{r} in namespace {ns} selects the pods of {}; target one of them (a Service's pods must be one workload's)",
            named.join(", ")
        ))),
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
