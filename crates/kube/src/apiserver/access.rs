//! RBAC questions to the API server (SubjectAccessReview): the operator's
//! [`Rbac`](mirrord_controlplane::rbac::Rbac) in a cluster. Answers are kept for
//! [`CACHE_TTL`] (a console polls every few seconds; a changed RoleBinding takes effect
//! within it), as Kubernetes' own delegated authorization does.

use futures::future::BoxFuture;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::PostParams;
use kube::Api;
use mirrord_controlplane::rbac::{Check, Rbac, GROUP, VERSION};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an answer is reused.
pub const CACHE_TTL: Duration = Duration::from_secs(10);
/// Answers kept at most (the cache is emptied past this).
const CACHE_MAX: usize = 4096;

pub struct AccessReviews {
    api: Api<SubjectAccessReview>,
    cache: Mutex<HashMap<String, (bool, Instant)>>,
}

impl AccessReviews {
    pub fn new(client: kube::Client) -> Self {
        Self {
            api: Api::all(client),
            cache: Mutex::default(),
        }
    }

    fn cached(&self, key: &str) -> Option<bool> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(key)
            .filter(|(_, at)| at.elapsed() < CACHE_TTL)
            .map(|(allowed, _)| *allowed)
    }

    fn remember(&self, key: String, allowed: bool) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(key, (allowed, Instant::now()));
    }

    async fn review(&self, user: &str, groups: &[String], check: &Check) -> Result<bool, String> {
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
        Ok(answer.status.is_some_and(|s| s.allowed))
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
            let key = format!("{user}\0{groups:?}\0{check:?}");
            if let Some(allowed) = self.cached(&key) {
                return Ok(allowed);
            }
            let allowed = self.review(user, groups, check).await?;
            self.remember(key, allowed);
            tracing::debug!(target: "mirrord_kube", user, verb = check.verb, resource = check.resource, namespace = %check.namespace, name = %check.name, allowed, "access review");
            Ok(allowed)
        })
    }
}
