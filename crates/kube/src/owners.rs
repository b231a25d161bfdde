//! Who owns what the operator creates, so that Kubernetes' garbage collector removes it
//! with its owner even when the operator cannot (killed, uninstalled).
//!
//! An owner reference never crosses namespaces: an object owned by a pod in another
//! namespace is deleted by the garbage collector within seconds (`OwnerRefInvalidNamespace`).
//! So the operator's pod owns only what the operator makes in its own namespace (agents,
//! their Secret); what it makes next to a workload elsewhere (copies) is owned by a
//! cluster-scoped object that lives as long as the installation (the chart's ClusterRole),
//! or by nothing. Either way it carries the operator's labels ([`crate::marks`]), by which a
//! restarted operator finds and removes it ([`crate::reconcile`]).

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Api, Client, Resource};

#[derive(Clone, Debug, Default)]
pub struct Owners {
    /// The operator's own pod, and its namespace.
    pod: Option<(String, OwnerReference)>,
    /// The installation's cluster-scoped object.
    installation: Option<OwnerReference>,
}

impl Owners {
    /// Reads the operator's pod (`pod`: namespace and name) and the ClusterRole named
    /// `cluster_role`; either may be absent (not in a pod, not configured): what cannot be
    /// read owns nothing, with a warning.
    pub async fn discover(
        client: &Client,
        pod: Option<(String, String)>,
        cluster_role: Option<&str>,
    ) -> Self {
        let mut owners = Self::default();
        if let Some((ns, name)) = pod {
            match Api::<Pod>::namespaced(client.clone(), &ns).get(&name).await {
                Ok(p) => owners.pod = owner_of(&p).map(|o| (ns, o)),
                Err(e) => {
                    tracing::warn!(target: "mirrord_kube", pod = %name, namespace = %ns, error = %e, "cannot read the operator's own pod; its agents get no owner reference (a restarted operator still removes them)")
                }
            }
        }
        if let Some(name) = cluster_role {
            match Api::<ClusterRole>::all(client.clone()).get(name).await {
                Ok(r) => owners.installation = owner_of(&r),
                Err(e) => {
                    tracing::warn!(target: "mirrord_kube", cluster_role = %name, error = %e, "cannot read the installation's ClusterRole; copies get no owner reference (a restarted operator still removes them)")
                }
            }
        }
        owners
    }

    /// The owner references for an object in `namespace`: the operator's pod there, else
    /// the installation's cluster-scoped object, else none.
    pub fn for_namespace(&self, namespace: &str) -> Vec<OwnerReference> {
        match &self.pod {
            Some((ns, pod)) if ns == namespace => vec![pod.clone()],
            _ => self.installation.iter().cloned().collect(),
        }
    }
}

fn owner_of<K: Resource<DynamicType = ()>>(o: &K) -> Option<OwnerReference> {
    let meta = o.meta();
    Some(OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: meta.name.clone()?,
        uid: meta.uid.clone()?,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(kind: &str, name: &str) -> OwnerReference {
        OwnerReference {
            api_version: "v1".into(),
            kind: kind.into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            ..Default::default()
        }
    }

    #[test]
    fn no_owner_is_ever_in_another_namespace() {
        let both = Owners {
            pod: Some(("mirrord".into(), reference("Pod", "operator"))),
            installation: Some(reference("ClusterRole", "mirrord-operator")),
        };
        let kinds = |o: &Owners, ns: &str| -> Vec<String> {
            o.for_namespace(ns).into_iter().map(|r| r.kind).collect()
        };
        assert_eq!(kinds(&both, "mirrord"), ["Pod"]);
        assert_eq!(kinds(&both, "shop"), ["ClusterRole"]);
        let pod_only = Owners {
            installation: None,
            ..both.clone()
        };
        assert_eq!(kinds(&pod_only, "mirrord"), ["Pod"]);
        assert!(kinds(&pod_only, "shop").is_empty());
        assert!(Owners::default().for_namespace("shop").is_empty());
    }

    #[test]
    fn a_reference_names_the_kind_and_version() {
        let role = ClusterRole {
            metadata: kube::api::ObjectMeta {
                name: Some("mirrord-operator".into()),
                uid: Some("1234".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let r = owner_of(&role).unwrap();
        assert_eq!(
            (r.api_version.as_str(), r.kind.as_str(), r.uid.as_str()),
            ("rbac.authorization.k8s.io/v1", "ClusterRole", "1234")
        );
        assert!(
            owner_of(&ClusterRole::default()).is_none(),
            "no uid, no owner"
        );
    }
}
