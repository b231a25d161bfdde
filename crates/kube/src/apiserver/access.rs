//! RBAC questions to the API server (SubjectAccessReview): the operator's
//! [`Rbac`](mirrord_controlplane::rbac::Rbac) in a cluster.

use futures::future::BoxFuture;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::PostParams;
use kube::Api;
use mirrord_controlplane::rbac::{Check, Rbac, GROUP, VERSION};

pub struct AccessReviews {
    api: Api<SubjectAccessReview>,
}

impl AccessReviews {
    pub fn new(client: kube::Client) -> Self {
        Self {
            api: Api::all(client),
        }
    }
}

fn some(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

impl Rbac for AccessReviews {
    fn allows<'a>(
        &'a self,
        user: &'a str,
        groups: &'a [String],
        check: &'a Check,
    ) -> BoxFuture<'a, Result<bool, String>> {
        Box::pin(async move {
            let review = SubjectAccessReview {
                spec: SubjectAccessReviewSpec {
                    user: Some(user.to_owned()),
                    groups: Some(groups.to_vec()),
                    resource_attributes: Some(ResourceAttributes {
                        group: Some(GROUP.into()),
                        version: Some(VERSION.into()),
                        resource: Some(check.resource.into()),
                        subresource: some(check.subresource),
                        namespace: some(&check.namespace),
                        name: some(&check.name),
                        verb: Some(check.verb.into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ..Default::default()
            };
            let answer = self
                .api
                .create(&PostParams::default(), &review)
                .await
                .map_err(|e| e.to_string())?;
            let allowed = answer.status.is_some_and(|s| s.allowed);
            tracing::debug!(target: "mirrord_kube", user, verb = check.verb, resource = check.resource, namespace = %check.namespace, name = %check.name, allowed, "access review");
            Ok(allowed)
        })
    }
}
