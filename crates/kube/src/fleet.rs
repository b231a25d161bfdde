//! The agents of one target: an agent pod for every ready target pod (original or copy)
//! that a session needs, replaced when it is lost or its pod is being deleted, deleted a
//! linger after the last session on its pod ends. The gateway reports what each agent does
//! ([`Agents::connect`], [`Agents::applied`]), the agent pods' watch ([`crate::agent_pods`])
//! which ones are going; this loop is the only one that creates or deletes agent pods.
//!
//! An agent this loop forgets (replaced, idle, its pod going) is told to leave over its
//! link at once ([`Retired`]): it then gives its ports back within milliseconds, whenever
//! the kubelet delivers its SIGTERM.

use crate::agents::{Agent, Retired};
use crate::target::{KubeTarget, PodInfo, POLL};
use crate::{marks, Context};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, PostParams};
use kube::Api;
use mirrord_protocol::agent::RouteSnapshot;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Where the agent's credentials are mounted (the Secret from [`crate::trust`]).
const CREDENTIALS_DIR: &str = "/etc/mirrord-agent";

pub async fn run(target: Weak<KubeTarget>) {
    let Some(changed) = target.upgrade().map(|t| Arc::clone(&t.changed)) else {
        return;
    };
    loop {
        tokio::select! {
            _ = changed.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let Some(t) = target.upgrade() else { return };
        reconcile(&t).await;
    }
}

/// Which pods need an agent under the routes `all`: those with routes, and those whose
/// process gives a session its context (a session may hold no port at all).
fn wanted(t: &KubeTarget, all: &RouteSnapshot) -> HashMap<String, PodInfo> {
    t.pods()
        .into_iter()
        .filter(|(uid, p)| {
            p.ready && (!t.snapshot_for(uid, all).ports.is_empty() || t.ops.in_use(uid))
        })
        .collect()
}

async fn reconcile(t: &Arc<KubeTarget>) {
    // One snapshot for the whole pass: which agents are wanted and the version they must
    // have applied are judged against the same routes.
    let all = t.publish();
    let wanted = wanted(t, &all);
    let pods = t.pods();
    let now = Instant::now();
    let version = all.version;
    let mut create = Vec::new();
    let mut delete = Vec::new();
    let mut lost_on = Vec::new();
    let mut back_on = Vec::new();
    let me = t.reference_string();
    {
        let mut agents = t.agents.0.lock().expect("agents");
        agents.retain(|uid, a| {
            let lost = (a.ever_connected && !a.connected) || a.pod_going;
            let never = !a.ever_connected && a.created.elapsed() > t.ctx.ready_timeout;
            let pod_gone = !pods.get(uid).is_some_and(|p| p.ready);
            if lost || never || pod_gone {
                if lost && !pod_gone {
                    let why = match a.pod_going {
                        true => "its pod is being deleted",
                        false => "its link to the operator ended",
                    };
                    tracing::warn!(target: "mirrord_kube", target_ref = %t.reference_string(), agent = %a.pod, why, "agent lost; the pod serves its own traffic until a new agent takes over");
                    lost_on.push(uid.clone());
                }
                if never {
                    tracing::error!(target: "mirrord_kube", target_ref = %t.reference_string(), agent = %a.pod, "agent did not connect in time; replacing it");
                }
                delete.push(a.pod.clone());
                t.ctx.claims.release(uid, &me);
                return false;
            }
            if wanted.contains_key(uid) {
                a.idle_since = None;
                if a.replaces_lost && a.applied >= version {
                    a.replaces_lost = false;
                    back_on.push(uid.clone());
                }
                return true;
            }
            let idle = *a.idle_since.get_or_insert(now);
            // The linger keeps an agent for the developer's next session; a stopping
            // operator has none, and its successor cannot start agents of the same name
            // until these are gone (a drained leader held its lease 5 s longer for it).
            if idle.elapsed() >= t.ctx.linger || t.ctx.shutdown.is_cancelled() {
                delete.push(a.pod.clone());
                t.ctx.claims.release(uid, &me);
                return false;
            }
            true
        });
        for (uid, pod) in &wanted {
            if !agents.contains_key(uid) {
                // Another target name reaches this pod and keeps its agent: a second one
                // would take its traffic. `settled` refuses the session that wanted it.
                if let Err(other) = t.ctx.claims.claim(uid, &me) {
                    tracing::debug!(target: "mirrord_kube", target_ref = %me, pod = %pod.name, keeps = %other, "pod's agent kept by another target");
                    continue;
                }
                let name = agent_name(uid);
                agents.insert(
                    uid.clone(),
                    Agent {
                        pod: name.clone(),
                        created: now,
                        connected: false,
                        ever_connected: false,
                        applied: 0,
                        idle_since: None,
                        replaces_lost: lost_on.contains(uid),
                        pod_going: false,
                        retired: Retired::default(),
                    },
                );
                create.push((uid.clone(), pod.clone(), name));
            }
        }
    }
    for uid in lost_on {
        tell(t, &uid, &pods, |pod, port| {
            format!(
            "the agent on pod {pod} was lost: that pod serves its own traffic on port {port} until a new agent takes over (the session goes on)"
        )
        });
    }
    for uid in back_on {
        tell(t, &uid, &pods, |pod, port| {
            format!("a new agent on pod {pod} took over: port {port} is yours again")
        });
    }
    let api = Api::<Pod>::namespaced(t.ctx.client.clone(), &t.ctx.agent_namespace);
    for name in delete {
        t.agent_counts.lock().expect("agent counts").remove(&name);
        if t.ctx.agent_ephemeral {
            // Nothing to delete: its retirement told it to leave over its link, and a
            // container that exits stays in its pod's spec, stopped.
            continue;
        }
        let api = api.clone();
        // Detached: an agent left behind is removed at the operator's next start anyway.
        tokio::spawn(async move {
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => tracing::info!(target: "mirrord_kube", agent = %name, "agent removed"),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    tracing::warn!(target: "mirrord_kube", agent = %name, error = %e, "cannot delete agent pod")
                }
            }
        });
    }
    for (uid, pod, name) in create {
        match start_agent(t, &api, &name, &uid, &pod).await {
            Ok(()) => {
                t.agent_refusals.lock().expect("refusals").remove(&uid);
                tracing::info!(target: "mirrord_kube", target_ref = %t.reference_string(), agent = %name, pod = %pod.name, node = %pod.node, "agent started")
            }
            Err(why) => {
                tracing::error!(target: "mirrord_kube", target_ref = %t.reference_string(), agent = %name, error = %why, "cannot create agent");
                t.agent_refusals
                    .lock()
                    .expect("refusals")
                    .insert(uid.clone(), why);
                t.agents.0.lock().expect("agents").remove(&uid);
                t.ctx.claims.release(&uid, &me);
            }
        }
    }
}

/// Creates agent `name` for pod `uid`: a pod on its node, or an ephemeral container in it
/// (then dialled by the operator). The error is what the user is told: the API server's
/// own words (the admission's).
async fn start_agent(
    t: &Arc<KubeTarget>,
    api: &Api<Pod>,
    name: &str,
    uid: &str,
    pod: &PodInfo,
) -> Result<(), String> {
    if !t.ctx.agent_ephemeral {
        let spec = agent_pod(&t.ctx, name, uid, pod);
        return match api.create(&PostParams::default(), &spec).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) => Err(s.message),
            Err(e) => Err(e.to_string()),
        };
    }
    let port = crate::ephemeral::port();
    crate::ephemeral::add(&t.ctx, name, uid, pod, port).await?;
    if let Some(ip) = pod.ip {
        crate::ephemeral::dial(t, uid.to_owned(), name.to_owned(), (ip, port).into());
    }
    Ok(())
}

/// Tells every session with routes on pod `uid`, once per port.
fn tell(
    t: &KubeTarget,
    uid: &str,
    pods: &std::collections::BTreeMap<String, PodInfo>,
    message: impl Fn(&str, u16) -> String,
) {
    let Some(pod) = pods.get(uid) else { return };
    let snapshot = t.snapshot_for(uid, &t.publish());
    for spec in &snapshot.ports {
        for session in spec.sessions() {
            if let Some((sub, _)) = t.subscriber(session, spec.port) {
                // A session that is behind misses the notice, never blocks this loop.
                let _ = sub.tx.try_send(mirrord_dataplane::Handoff::Notice {
                    message: message(&pod.name, spec.port),
                });
            }
        }
    }
}

/// Waits until every pod that needs an agent has one that applied the routes as they are
/// now.
pub async fn settled(t: &Arc<KubeTarget>) -> Result<(), String> {
    t.synced(t.ctx.ready_timeout).await?;
    // Refusals of earlier attempts are history (a quota lifted, a policy changed): this
    // settle goes by the attempts the fleet makes now.
    t.agent_refusals.lock().expect("refusals").clear();
    let version = t.publish().version;
    t.changed.notify_one();
    let deadline = Instant::now() + t.ctx.ready_timeout;
    let me = t.reference_string();
    loop {
        let pending: Vec<(String, PodInfo)> = wanted(t, &t.publish())
            .into_iter()
            .filter(|(uid, _)| t.agents.applied_version(uid).is_none_or(|v| v < version))
            .collect();
        if pending.is_empty() {
            tracing::debug!(target: "mirrord_kube", target_ref = %t.reference_string(), version, pods = t.pods().len(), "routes in force on every pod");
            return Ok(());
        }
        if let Some((pod, other)) = pending
            .iter()
            .find_map(|(uid, p)| Some((&p.name, t.ctx.claims.other(uid, &me)?)))
        {
            return Err(format!(
                "pod {pod} is also reached as {other}, whose agent serves it for other sessions (until a few seconds after they end): a pod is reached through one target name at a time, so open this session on {other}"
            ));
        }
        // The cluster refused an agent (admission, quota, policy): said now, not at the
        // deadline, in the API server's words.
        if let Some((pod, refusal)) = pending.iter().find_map(|(uid, p)| {
            let refusals = t.agent_refusals.lock().expect("refusals");
            Some((&p.name, refusals.get(uid)?.clone()))
        }) {
            let needs = match (t.ctx.agent_ephemeral, t.ctx.agent_privileged) {
                (true, _) => format!(
                    "to be added as an ephemeral container to the pod, with the capabilities {}",
                    crate::ephemeral::CAPABILITIES.join(", ")
                ),
                (false, true) => format!(
                    "a privileged pod with hostPID, in namespace {}",
                    t.ctx.agent_namespace
                ),
                (false, false) => format!(
                    "hostPID and the capabilities {}, in namespace {}",
                    AGENT_CAPABILITIES.join(", "),
                    t.ctx.agent_namespace
                ),
            };
            return Err(format!(
                "the cluster refused the agent for pod {pod}: {refusal} (an agent needs {needs})"
            ));
        }
        if Instant::now() >= deadline {
            let mut why = Vec::new();
            for (uid, pod) in pending {
                let agent = t
                    .agents
                    .0
                    .lock()
                    .expect("agents")
                    .get(&uid)
                    .map(|a| a.pod.clone());
                let state = match agent {
                    Some(a) if t.ctx.agent_ephemeral => {
                        crate::ephemeral::state(&t.ctx, &pod, &a).await
                    }
                    Some(a) => agent_state(&t.ctx, &a).await,
                    None => "no agent yet".into(),
                };
                why.push(format!("pod {}: {state}", pod.name));
            }
            return Err(format!(
                "the agents of {} did not take over within {} ({})",
                t.reference_string(),
                humantime::format_duration(t.ctx.ready_timeout),
                why.join("; ")
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// What an agent pod is doing, for an error message: its container's waiting or
/// terminated reason, else its phase.
pub(crate) async fn agent_state(ctx: &Context, name: &str) -> String {
    let pod = match Api::<Pod>::namespaced(ctx.client.clone(), &ctx.agent_namespace)
        .get(name)
        .await
    {
        Ok(p) => p,
        Err(e) => return format!("agent {name} unreadable: {e}"),
    };
    let status = pod.status.unwrap_or_default();
    let container = status
        .container_statuses
        .unwrap_or_default()
        .into_iter()
        .next()
        .and_then(|c| c.state);
    let detail = container.and_then(|s| {
        s.waiting
            .map(|w| {
                format!(
                    "{} {}",
                    w.reason.unwrap_or_default(),
                    w.message.unwrap_or_default()
                )
            })
            .or(s
                .terminated
                .map(|t| format!("exited {} {}", t.exit_code, t.message.unwrap_or_default())))
    });
    format!(
        "agent {name} {}{}",
        status.phase.unwrap_or_default(),
        detail
            .map(|d| format!(": {}", d.trim()))
            .unwrap_or_default()
    )
}

fn agent_name(pod_uid: &str) -> String {
    let short: String = pod_uid.chars().filter(|c| *c != '-').take(10).collect();
    format!("mirrord-agent-{short}-{:04x}", rand::random::<u16>())
}

/// What the agent does in the target pod takes these, besides the runtime's defaults:
/// NET_ADMIN (its nftables redirect, conntrack), SYS_ADMIN (`setns` into the pod's network
/// namespace), SYS_PTRACE (the pod's process's `/proc/PID/ns`, `environ` and `root`).
pub const AGENT_CAPABILITIES: [&str; 3] = ["NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"];

/// An agent container's `securityContext`: privileged when so configured, else `caps`
/// added to the runtime's defaults and nothing more.
pub(crate) fn security_context(ctx: &Context, caps: &[&str]) -> serde_json::Value {
    if ctx.agent_privileged {
        serde_json::json!({"privileged": true})
    } else {
        serde_json::json!({
            "privileged": false,
            "allowPrivilegeEscalation": false,
            "capabilities": {"add": caps},
        })
    }
}

/// The agent's pod: on the target pod's node, with the host's PID namespace (to find the
/// pod's processes and enter its network namespace) and the capabilities it needs (or
/// privileged, when so configured), owned by the operator's pod.
fn agent_pod(ctx: &Context, name: &str, pod_uid: &str, pod: &PodInfo) -> Pod {
    let security = security_context(ctx, &AGENT_CAPABILITIES);
    let owners = ctx.owners.for_namespace(&ctx.agent_namespace);
    let lease = format!("{}ms", ctx.lease.as_millis());
    let json = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": ctx.agent_namespace,
            "labels": {
                marks::MANAGED_BY: marks::MANAGER,
                marks::ROLE: "agent",
                marks::OPERATOR_NS: ctx.agent_namespace,
                marks::POD_UID: pod_uid,
            },
            "annotations": {
                "mirrord.dev/target-pod": format!("{}/{}", pod.namespace, pod.name),
            },
            "ownerReferences": owners,
        },
        "spec": {
            "nodeName": pod.node,
            "hostPID": true,
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 5,
            "tolerations": [{"operator": "Exists"}],
            "containers": [{
                "name": "agent",
                "image": ctx.agent_image,
                "imagePullPolicy": ctx.agent_pull_policy,
                "args": ["intercept", "--pod-uid", pod_uid, "--agent-name", name,
                         "--credentials", CREDENTIALS_DIR, "--lease", lease],
                "env": [{"name": "RUST_LOG", "value": ctx.agent_log}],
                "securityContext": security,
                "volumeMounts": [{"name": "credentials", "mountPath": CREDENTIALS_DIR, "readOnly": true}],
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "128Mi"}},
            }],
            "volumes": [{"name": "credentials", "secret": {"secretName": crate::trust::SECRET, "defaultMode": 0o400}}],
        }
    });
    serde_json::from_value(json).expect("a valid pod")
}
