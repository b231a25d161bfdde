//! Following a pod the operator made (a copy) until it runs, or until Kubernetes says it
//! will not: the pod and its events are watched, so a pod the kubelet refuses (an image it
//! cannot get, a container that cannot be created or keeps crashing) or one that is
//! deleted (by the garbage collector, an eviction, a person) is reported with Kubernetes'
//! own reason as soon as it is known, not when a timeout runs out.
//!
//! What may still resolve on its own (no node fits yet, a volume not mounted yet) is
//! waited for, and named if the wait runs out.

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ContainerStatus, Event, Pod};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use std::time::Duration;

/// Why a pod did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{what} was deleted before it started ({})", why.as_deref().map_or_else(|| "no event says why: deleted by a person or a controller".to_owned(), |w| format!("its last warning: {w}")))]
    Deleted { what: String, why: Option<String> },
    #[error("{what} cannot start: {reason}")]
    Refused { what: String, reason: String },
    #[error("{what} did not start within {within}: {state}{}", last.as_deref().map(|e| format!("; last warning: {e}")).unwrap_or_default())]
    Timeout {
        what: String,
        within: String,
        state: String,
        last: Option<String>,
    },
}

/// Waiting reasons of a container that will not start without someone changing something.
const REFUSED: &[&str] = &[
    "ErrImageNeverPull",
    "InvalidImageName",
    "ErrImagePull",
    "ImagePullBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
    "CrashLoopBackOff",
    "PreStartHookError",
    "PostStartHookError",
];

/// Reasons of warning events that are a verdict by themselves: the kubelet writes them at
/// once, while the pod's status says so only at its next sync (seconds later, after a
/// back-off), and nothing but a change to the pod makes them go away.
const REFUSED_EVENTS: &[&str] = &["ErrImageNeverPull", "InspectFailed"];

/// How long a deletion waits for the event that says why (events are written a moment
/// after what they report).
const DELETION_REASON_WAIT: Duration = Duration::from_secs(1);

/// Waits until pod `name` (UID `uid`) in `ns` runs with an address, at most `within`.
/// `what` names it in errors (`copy mirrord-copy-web-1a2b of deployment/web`).
pub async fn running(
    client: &Client,
    ns: &str,
    name: &str,
    uid: &str,
    what: &str,
    within: Duration,
) -> Result<Pod, StartError> {
    let pods = watcher(
        Api::<Pod>::namespaced(client.clone(), ns),
        watcher::Config::default().fields(&format!("metadata.name={name}")),
    )
    .default_backoff();
    let events = watcher(
        Api::<Event>::namespaced(client.clone(), ns),
        watcher::Config::default().fields(&format!("involvedObject.uid={uid}")),
    )
    .default_backoff();
    let (mut pods, mut events) = (pods.boxed(), events.boxed());
    let deadline = tokio::time::sleep(within);
    tokio::pin!(deadline);
    let mut warning = None;
    let mut state = String::from("not scheduled yet");
    // Whether the pod was in the current (re)list: one that is not was deleted already.
    let mut listed = false;
    loop {
        tokio::select! {
            ev = pods.next() => {
                let deleted = match ev {
                    Some(Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p))) => {
                        if p.metadata.uid.as_deref() != Some(uid) {
                            continue;
                        }
                        listed = true;
                        match verdict(&p) {
                            Verdict::Running => return Ok(p),
                            Verdict::Waiting(s) => { state = s; false }
                            Verdict::Refused(reason) => {
                                return Err(StartError::Refused { what: what.to_owned(), reason })
                            }
                            Verdict::Deleting => true,
                        }
                    }
                    Some(Ok(watcher::Event::Delete(p))) => p.metadata.uid.as_deref() == Some(uid),
                    Some(Ok(watcher::Event::Init)) => { listed = false; false }
                    Some(Ok(watcher::Event::InitDone)) => !listed,
                    Some(Err(e)) => {
                        tracing::debug!(target: "mirrord_kube", pod = %name, error = %e, "watching a starting pod failed; retrying");
                        false
                    }
                    None => false,
                };
                if deleted {
                    if warning.is_none() {
                        warning = last_warning(&mut events, DELETION_REASON_WAIT).await;
                    }
                    return Err(StartError::Deleted { what: what.to_owned(), why: warning });
                }
            }
            ev = events.next() => match ev {
                Some(Ok(watcher::Event::Apply(e) | watcher::Event::InitApply(e))) => {
                    if let Some(reason) = refusal(&e) {
                        return Err(StartError::Refused { what: what.to_owned(), reason });
                    }
                    warning = describe_warning(&e).or(warning);
                }
                Some(Err(e)) => {
                    tracing::debug!(target: "mirrord_kube", pod = %name, error = %e, "watching a starting pod's events failed; retrying");
                }
                _ => {}
            },
            _ = &mut deadline => {
                return Err(StartError::Timeout {
                    what: what.to_owned(),
                    within: humantime::format_duration(within).to_string(),
                    state,
                    last: warning,
                });
            }
        }
    }
}

/// The first warning event that arrives within `wait`.
async fn last_warning<S>(events: &mut S, wait: Duration) -> Option<String>
where
    S: futures::Stream<Item = Result<watcher::Event<Event>, watcher::Error>> + Unpin,
{
    tokio::time::timeout(wait, async {
        while let Some(ev) = events.next().await {
            if let Ok(watcher::Event::Apply(e) | watcher::Event::InitApply(e)) = ev {
                if let Some(w) = describe_warning(&e) {
                    return Some(w);
                }
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
}

/// `Reason: message` of a warning event.
fn describe_warning(e: &Event) -> Option<String> {
    if e.type_.as_deref() != Some("Warning") {
        return None;
    }
    let reason = e.reason.as_deref().unwrap_or("Warning");
    Some(match e.message.as_deref().map(str::trim) {
        Some(m) if !m.is_empty() => format!("{reason}: {m}"),
        _ => reason.to_owned(),
    })
}

/// What a warning event whose reason is final says, with the container it names.
fn refusal(e: &Event) -> Option<String> {
    e.reason.as_deref().filter(|r| REFUSED_EVENTS.contains(r))?;
    let warning = describe_warning(e)?;
    // `spec.containers{app}`: the same "container NAME: " prefix the status verdict gives.
    let container = e
        .involved_object
        .field_path
        .as_deref()
        .and_then(|f| {
            f.strip_prefix("spec.containers{")
                .or(f.strip_prefix("spec.initContainers{"))
        })
        .and_then(|f| f.strip_suffix('}'));
    Some(match container {
        Some(c) => format!("container {c}: {warning}"),
        None => warning,
    })
}

#[derive(Debug, PartialEq)]
enum Verdict {
    Running,
    /// Still on its way: the phase and what its containers wait for.
    Waiting(String),
    Refused(String),
    Deleting,
}

fn verdict(p: &Pod) -> Verdict {
    if p.metadata.deletion_timestamp.is_some() {
        return Verdict::Deleting;
    }
    let Some(status) = p.status.as_ref() else {
        return Verdict::Waiting("Pending".into());
    };
    let phase = status.phase.as_deref().unwrap_or("Pending");
    if phase == "Running" && status.pod_ip.is_some() {
        return Verdict::Running;
    }
    if matches!(phase, "Failed" | "Succeeded") {
        let why = [status.reason.as_deref(), status.message.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(": ");
        return Verdict::Refused(match why.is_empty() {
            true => format!("it ended ({phase})"),
            false => format!("it ended ({phase}): {why}"),
        });
    }
    let init = status.init_container_statuses.iter().flatten();
    let main = status.container_statuses.iter().flatten();
    for (c, is_init) in init.map(|c| (c, true)).chain(main.map(|c| (c, false))) {
        if let Some(why) = refused(c, is_init) {
            return Verdict::Refused(why);
        }
    }
    let waiting = status
        .container_statuses
        .iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
        .next();
    Verdict::Waiting(match waiting {
        Some(w) => format!("{phase} ({w})"),
        None => phase.to_owned(),
    })
}

/// Why container `c` will not run, if it will not: a refusal the kubelet keeps repeating,
/// or an exit (an init container's only if it failed).
fn refused(c: &ContainerStatus, is_init: bool) -> Option<String> {
    let state = c.state.as_ref()?;
    if let Some(w) = &state.waiting {
        let reason = w.reason.as_deref().filter(|r| REFUSED.contains(r))?;
        return Some(match w.message.as_deref().map(str::trim) {
            Some(m) if !m.is_empty() => format!("container {}: {reason}: {m}", c.name),
            _ => format!("container {}: {reason} (image {})", c.name, c.image),
        });
    }
    let t = state.terminated.as_ref()?;
    if is_init && t.exit_code == 0 {
        return None;
    }
    Some(format!(
        "container {} exited with code {}{}{}",
        c.name,
        t.exit_code,
        t.reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default(),
        t.message
            .as_deref()
            .map(|m| format!(": {}", m.trim()))
            .unwrap_or_default()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "mirrord-copy-web-1", "uid": "u1"},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn a_running_pod_with_an_address_has_started() {
        assert_eq!(
            verdict(&pod(
                serde_json::json!({"phase": "Running", "podIP": "10.244.0.9"})
            )),
            Verdict::Running
        );
        assert_eq!(
            verdict(&pod(serde_json::json!({"phase": "Pending"}))),
            Verdict::Waiting("Pending".into())
        );
    }

    #[test]
    fn an_image_that_will_never_be_pulled_is_a_verdict_from_its_event() {
        let event = |reason: &str, kind: &str| -> Event {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "e1"},
                "involvedObject": {"kind": "Pod", "name": "mirrord-copy-web-1", "fieldPath": "spec.containers{app}"},
                "type": kind,
                "reason": reason,
                "message": "Container image \"x:1\" is not present with pull policy of Never",
            }))
            .unwrap()
        };
        assert_eq!(
            refusal(&event("ErrImageNeverPull", "Warning")).as_deref(),
            Some("container app: ErrImageNeverPull: Container image \"x:1\" is not present with pull policy of Never")
        );
        // A pull that failed may succeed on retry; only the status says when it gave up.
        assert_eq!(refusal(&event("Failed", "Warning")), None);
        assert_eq!(refusal(&event("ErrImageNeverPull", "Normal")), None);
    }

    #[test]
    fn what_the_kubelet_refuses_is_named_with_its_message() {
        let p = pod(serde_json::json!({
            "phase": "Pending",
            "containerStatuses": [{
                "name": "app", "image": "mirrord.dev/never-loaded:1", "imageID": "", "ready": false,
                "restartCount": 0,
                "state": {"waiting": {"reason": "ErrImageNeverPull",
                    "message": "Container image \"mirrord.dev/never-loaded:1\" is not present with pull policy of Never"}},
            }],
        }));
        assert_eq!(
            verdict(&p),
            Verdict::Refused("container app: ErrImageNeverPull: Container image \"mirrord.dev/never-loaded:1\" is not present with pull policy of Never".into())
        );
        // Still creating: waited for.
        let p = pod(serde_json::json!({
            "phase": "Pending",
            "containerStatuses": [{
                "name": "app", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ContainerCreating"}},
            }],
        }));
        assert_eq!(
            verdict(&p),
            Verdict::Waiting("Pending (ContainerCreating)".into())
        );
    }

    #[test]
    fn exits_failures_and_deletions_end_the_wait() {
        let p = pod(serde_json::json!({
            "phase": "Running",
            "containerStatuses": [{
                "name": "app", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 1, "reason": "Error"}},
            }],
        }));
        assert_eq!(
            verdict(&p),
            Verdict::Refused("container app exited with code 1 (Error)".into())
        );
        let done_init = pod(serde_json::json!({
            "phase": "Pending",
            "initContainerStatuses": [{
                "name": "init", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed"}},
            }],
        }));
        assert_eq!(verdict(&done_init), Verdict::Waiting("Pending".into()));
        let evicted = pod(
            serde_json::json!({"phase": "Failed", "reason": "Evicted", "message": "low on memory"}),
        );
        assert_eq!(
            verdict(&evicted),
            Verdict::Refused("it ended (Failed): Evicted: low on memory".into())
        );
        let mut deleting = pod(serde_json::json!({"phase": "Running", "podIP": "10.244.0.9"}));
        deleting.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Default::default()),
        );
        assert_eq!(verdict(&deleting), Verdict::Deleting);
    }

    #[test]
    fn only_warnings_are_reasons() {
        let event = |type_: &str, reason: &str, message: &str| -> Event {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "e"}, "involvedObject": {"uid": "u1"},
                "type": type_, "reason": reason, "message": message,
            }))
            .unwrap()
        };
        assert_eq!(
            describe_warning(&event(
                "Warning",
                "OwnerRefInvalidNamespace",
                "ownerRef [v1/Pod, namespace: shop, name: op] does not exist in namespace \"shop\""
            ))
            .unwrap(),
            "OwnerRefInvalidNamespace: ownerRef [v1/Pod, namespace: shop, name: op] does not exist in namespace \"shop\""
        );
        assert!(describe_warning(&event("Normal", "Scheduled", "assigned")).is_none());
        let e = StartError::Deleted {
            what: "copy c".into(),
            why: None,
        };
        assert!(e.to_string().contains("no event says why"), "{e}");
    }
}
