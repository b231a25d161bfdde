//! Policies as cluster resources (GitOps): `MirrordPolicy` (namespaced: it binds the targets
//! of its own namespace), `MirrordClusterPolicy` (cluster-wide) and `MirrordProfile`
//! (cluster-wide: rules a session takes on by choosing it, `--profile`), group
//! [`GROUP`]/[`VERSION`], CRDs shipped in the chart. Watched while the operator runs: every
//! change recompiles the whole set into the operator's [`LivePolicies`], so it applies to the
//! next session within the watch's delay; running sessions are not cut.
//!
//! A policy the operator cannot use (an unreadable spec, an unknown `block`, a bad
//! `requireHeaderFilter`) is not ignored: it refuses every session it applies to until
//! fixed (fail closed), and says why in its `status.conditions` (`Ready=False`) and in a log
//! line. A usable one is `Ready=True`.

use futures::StreamExt;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use mirrord_controlplane::policy::{
    Blocked, LabelSelector, Live, LivePolicies, Policies, PolicySpec,
};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use tokio::sync::mpsc;

pub const GROUP: &str = "policies.mirrord.dev";
pub const VERSION: &str = "v1";

/// The kinds: (kind, plural, namespaced).
const KINDS: [(&str, &str, bool); 3] = [
    ("MirrordPolicy", "mirrordpolicies", true),
    ("MirrordClusterPolicy", "mirrordclusterpolicies", false),
    (PROFILE, "mirrordprofiles", false),
];
const PROFILE: &str = "MirrordProfile";

fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, VERSION, kind), plural)
}

/// A policy resource's `spec`, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Spec {
    /// `kind/name` glob of the targets (`deployment/payments-*`); every target when absent.
    #[serde(default)]
    target_path: Option<String>,
    /// `MirrordClusterPolicy` only: a namespace glob.
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    selector: Option<LabelSelector>,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    block: Vec<String>,
    #[serde(default)]
    require_header_filter: Option<String>,
    /// Where outgoing connections may go (`10.0.0.0/8:5432`, `udp://*:53`, `db:5432`).
    #[serde(default)]
    outgoing_allow: Option<Vec<String>>,
    /// Policies only: the sessions it binds work under one of these profiles.
    #[serde(default)]
    require_profile: Vec<String>,
    /// What it is for, as `kubectl get` shows it: accepted, nothing to do here.
    #[serde(default)]
    #[allow(dead_code, reason = "read by kubectl's columns, not by the operator")]
    description: Option<String>,
}

/// What `block` may name (kebab- or snake-case; `steal-without-filter` as the vendor's).
fn blocked(name: &str) -> Option<Blocked> {
    Some(match name.replace('-', "_").to_ascii_lowercase().as_str() {
        "unfiltered_steal" | "steal_without_filter" => Blocked::UnfilteredSteal,
        "steal" => Blocked::Steal,
        "mirror" => Blocked::Mirror,
        "scale_down" => Blocked::ScaleDown,
        "env" => Blocked::Env,
        "outgoing" => Blocked::Outgoing,
        "dns" => Blocked::Dns,
        "file_read" => Blocked::FileRead,
        "file_write" => Blocked::FileWrite,
        _ => return None,
    })
}

const KNOWN: &str =
    "steal, unfiltered-steal, mirror, scale-down, env, outgoing, dns, file-read, file-write";

/// One resource as last seen.
struct Seen {
    kind: &'static str,
    namespace: Option<String>,
    name: String,
    generation: i64,
    spec: serde_json::Value,
    /// The condition last written: (ready, message, generation).
    reported: Option<(bool, String, i64)>,
}

impl Seen {
    /// How refusals name it.
    fn title(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }

    /// The policy it makes, and what is wrong with it (then it fails closed).
    fn policy(&self) -> (PolicySpec, Option<String>) {
        let parsed: Result<Spec, String> =
            serde_json::from_value(self.spec.clone()).map_err(|e| format!("spec: {e}"));
        let mut problem = parsed.as_ref().err().cloned();
        let spec = parsed.unwrap_or_default();
        let mut block = Vec::new();
        for b in &spec.block {
            match blocked(b) {
                Some(x) => block.push(x),
                None => {
                    problem.get_or_insert(format!("unknown block `{b}`; known: {KNOWN}"));
                }
            }
        }
        let namespace = match (&self.namespace, &spec.namespace) {
            // A namespaced policy binds its own namespace only.
            (Some(own), _) => own.replace('*', ""),
            (None, Some(glob)) => glob.clone(),
            (None, None) => "*".into(),
        };
        if self.namespace.is_some() && spec.namespace.is_some() {
            problem.get_or_insert("`namespace` is for a MirrordClusterPolicy; a MirrordPolicy binds its own namespace".into());
        }
        let selects = spec.target_path.is_some()
            || spec.namespace.is_some()
            || spec.selector.is_some()
            || !spec.users.is_empty()
            || !spec.groups.is_empty()
            || !spec.require_profile.is_empty();
        if self.kind == PROFILE && selects {
            problem.get_or_insert("a profile binds the sessions that choose it: targetPath, namespace, selector, users, groups and requireProfile are a policy's".into());
        }
        let policy = PolicySpec {
            name: self.title(),
            target: spec.target_path.clone().unwrap_or_else(|| "*".into()),
            namespace,
            users: spec.users.clone(),
            roles: Vec::new(),
            groups: spec.groups.clone(),
            selector: spec.selector.clone(),
            block,
            require_header_filter: spec.require_header_filter.clone(),
            outgoing_allow: spec.outgoing_allow.clone(),
            require_profile: spec.require_profile.clone(),
        };
        (policy, problem)
    }
}

type Key = (&'static str, Option<String>, String);

enum Change {
    Apply(&'static str, DynamicObject),
    Delete(&'static str, DynamicObject),
    /// A watch restarted: what it lists next is the whole set of that kind.
    Restart(&'static str),
    Listed(&'static str),
}

/// Follows the three kinds until the operator stops, keeping `live` current.
pub async fn watch(client: Client, live: Arc<LivePolicies>) {
    let (tx, mut rx) = mpsc::channel::<Change>(64);
    for (kind, plural, _) in KINDS {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource(kind, plural));
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut events = watcher(api, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(ev) = events.next().await {
                let change = match ev {
                    Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                        Change::Apply(kind, o)
                    }
                    Ok(watcher::Event::Delete(o)) => Change::Delete(kind, o),
                    Ok(watcher::Event::Init) => Change::Restart(kind),
                    Ok(watcher::Event::InitDone) => Change::Listed(kind),
                    Err(e) => {
                        tracing::warn!(target: "mirrord_kube", kind, error = %e, "watching policies failed (is the chart's CRD installed?); retrying");
                        continue;
                    }
                };
                if tx.send(change).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    let mut seen: BTreeMap<Key, Seen> = BTreeMap::new();
    // Per kind, while its watch relists: what the listing named so far.
    let mut listing: BTreeMap<&'static str, BTreeSet<Key>> = BTreeMap::new();
    let mut listed_once: BTreeSet<&'static str> = BTreeSet::new();
    while let Some(change) = rx.recv().await {
        match change {
            Change::Apply(kind, o) => {
                let key = key(kind, &o);
                if let Some(names) = listing.get_mut(kind) {
                    names.insert(key.clone());
                }
                let reported = seen.remove(&key).and_then(|s| s.reported);
                seen.insert(
                    key.clone(),
                    Seen {
                        kind,
                        namespace: key.1.clone(),
                        name: key.2.clone(),
                        generation: o.metadata.generation.unwrap_or(0),
                        spec: o.data.get("spec").cloned().unwrap_or_default(),
                        reported,
                    },
                );
            }
            Change::Delete(kind, o) => {
                seen.remove(&key(kind, &o));
            }
            Change::Restart(kind) => {
                listing.insert(kind, BTreeSet::new());
                continue;
            }
            Change::Listed(kind) => {
                // What the new listing did not name is gone.
                let listed = listing.remove(&kind).unwrap_or_default();
                seen.retain(|k, _| k.0 != kind || listed.contains(k));
                listed_once.insert(kind);
            }
        }
        apply(&client, &live, &mut seen).await;
        if listed_once.len() == KINDS.len() {
            live.loaded();
        }
    }
}

fn key(kind: &'static str, o: &DynamicObject) -> Key {
    (
        kind,
        o.metadata.namespace.clone(),
        o.metadata.name.clone().unwrap_or_default(),
    )
}

/// Compiles every policy seen into `live`, and reports each one's readiness where it changed.
async fn apply(client: &Client, live: &LivePolicies, seen: &mut BTreeMap<Key, Seen>) {
    let made: Vec<(PolicySpec, Option<String>)> = seen
        .values()
        .filter(|s| s.kind != PROFILE)
        .map(Seen::policy)
        .collect();
    let (policies, mut reasons) = Policies::compile_each(&made);
    let mut profiles = BTreeMap::new();
    let mut profile_reasons = Vec::new();
    for s in seen.values().filter(|s| s.kind == PROFILE) {
        let (compiled, why) = Policies::compile_each(&[s.policy()]);
        profiles.insert(s.name.clone(), compiled);
        profile_reasons.extend(why);
    }
    live.set(Live { policies, profiles });
    // In `seen`'s order: the policies' reasons, then the profiles', put back in place.
    let (mut p, mut q) = (reasons.drain(..), profile_reasons.into_iter());
    let reasons: Vec<Option<String>> = seen
        .values()
        .map(|s| {
            if s.kind == PROFILE {
                q.next().flatten()
            } else {
                p.next().flatten()
            }
        })
        .collect();
    for (s, why) in seen.values_mut().zip(reasons) {
        let ready = why.is_none();
        let message = why.unwrap_or_else(|| "in force".into());
        let now = (ready, message.clone(), s.generation);
        if s.reported.as_ref() == Some(&now) {
            continue;
        }
        if ready {
            tracing::info!(target: "mirrord_kube", policy = %s.title(), "policy in force");
        } else {
            tracing::warn!(target: "mirrord_kube", policy = %s.title(), reason = %message, "policy cannot be used as written: it refuses every session it applies to until fixed");
        }
        if report(client, s, ready, &message).await {
            s.reported = Some(now);
        }
    }
}

/// Writes the `Ready` condition of `s`; false if the API server refused it (retried at the
/// next change).
async fn report(client: &Client, s: &Seen, ready: bool, message: &str) -> bool {
    let (_, plural, _) = KINDS
        .iter()
        .find(|(k, _, _)| *k == s.kind)
        .expect("one of the kinds");
    let ar = resource(s.kind, plural);
    let api: Api<DynamicObject> = match &s.namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    let status = serde_json::json!({
        "status": {
            "observedGeneration": s.generation,
            "conditions": [{
                "type": "Ready",
                "status": if ready { "True" } else { "False" },
                "reason": if ready { "InForce" } else { "Invalid" },
                "message": message,
                "observedGeneration": s.generation,
                "lastTransitionTime": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            }]
        }
    });
    match api
        .patch_status(&s.name, &PatchParams::default(), &Patch::Merge(&status))
        .await
    {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(target: "mirrord_kube", policy = %s.title(), error = %e, "cannot write the policy's status");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(namespace: Option<&str>, spec: serde_json::Value) -> Seen {
        Seen {
            kind: if namespace.is_some() {
                "MirrordPolicy"
            } else {
                "MirrordClusterPolicy"
            },
            namespace: namespace.map(str::to_owned),
            name: "p".into(),
            generation: 1,
            spec,
            reported: None,
        }
    }

    #[test]
    fn specs_become_policies_and_what_cannot_be_used_says_why() {
        let (p, why) = seen(
            Some("shop"),
            serde_json::json!({"targetPath": "deployment/pay*", "selector": {"matchLabels": {"app": "payments"}}, "groups": ["interns"], "block": ["steal-without-filter", "file_write"]}),
        )
        .policy();
        assert_eq!(why, None);
        assert_eq!(
            (p.name.as_str(), p.namespace.as_str(), p.target.as_str()),
            ("MirrordPolicy shop/p", "shop", "deployment/pay*")
        );
        assert_eq!(p.block, [Blocked::UnfilteredSteal, Blocked::FileWrite]);
        assert_eq!(p.selector.unwrap().match_labels["app"], "payments");
        let (_, why) = seen(
            Some("shop"),
            serde_json::json!({"block": ["steal", "teleport"]}),
        )
        .policy();
        assert!(why.unwrap().contains("unknown block `teleport`"));
        let (_, why) = seen(None, serde_json::json!({"blok": ["steal"]})).policy();
        assert!(why.unwrap().starts_with("spec: unknown field `blok`"));
        let (c, why) = seen(
            None,
            serde_json::json!({"namespace": "prod-*", "block": ["mirror"]}),
        )
        .policy();
        assert_eq!((c.namespace.as_str(), why), ("prod-*", None));
    }
}
