//! Leadership among the operator's replicas: one `coordination.k8s.io/v1` Lease in the
//! operator's namespace, taken and renewed with `resourceVersion` preconditions (the API
//! server's optimistic concurrency), the way client-go's leader election does it.
//!
//! Only the holder decides (port locks, agents, copies, scale-downs). A standby waits,
//! not ready, so the Service sends nobody to it. A leader that cannot renew within the
//! renew deadline stops deciding: [`Leader::holds`] turns false at once, and the process
//! leaves to come back as a standby. The deadline is shorter than the lease, so that
//! happens before any other replica may take the lease. Expiry is judged by when this
//! replica *saw* the record change, never by comparing clocks across machines.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::Api;
use mirrord_controlplane::fence::Fence;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The label that makes a replica's pod the operator Service's endpoint: only the
/// leader's pod carries it.
pub const LEADER_LABEL: &str = "mirrord.dev/leader";
/// On the Lease: the replica that last gave it up on a clean stop.
const RELEASED_BY: &str = "mirrord.dev/released-by";

/// Who competes for which Lease, and its timing.
#[derive(Clone, Debug)]
pub struct Election {
    pub namespace: String,
    pub lease: String,
    /// This replica (its pod's name).
    pub identity: String,
    /// How long a lease not renewed stays another's.
    pub duration: Duration,
    /// A leader that has not renewed for this long stops deciding (less than `duration`).
    pub renew_deadline: Duration,
    /// How often a leader renews, and a standby looks.
    pub retry: Duration,
}

impl Election {
    /// client-go's proportions (15 s / 10 s / 2 s) scaled to `duration`.
    pub fn new(namespace: String, lease: String, identity: String, duration: Duration) -> Self {
        Self {
            namespace,
            lease,
            identity,
            duration,
            renew_deadline: duration * 2 / 3,
            retry: duration / 7,
        }
    }
}

/// The lease as last seen, and when this replica saw it change.
struct Seen {
    record: Option<(String, String)>,
    at: Instant,
    /// The Lease's `leaseTransitions`, after this replica's own take if it took it.
    transitions: i32,
}

/// This replica's leadership once held.
pub struct Leader {
    /// The Lease's transitions once this replica took it.
    pub transitions: i32,
    election: Election,
    api: Api<Lease>,
    pods: Api<Pod>,
    renewed: Mutex<Instant>,
}

impl Leader {
    /// Whether this replica may decide now: its last renewal is within the deadline.
    pub fn holds(&self) -> bool {
        self.renewed.lock().expect("renewed").elapsed() < self.election.renew_deadline
    }

    /// Renews until a renewal cannot be made within the deadline; returns why it ended.
    pub async fn keep(&self) -> String {
        loop {
            tokio::time::sleep(self.election.retry).await;
            if !self.holds() {
                return format!(
                    "not renewed for {} (renew deadline {})",
                    humantime::format_duration(round(self.since_renewal())),
                    humantime::format_duration(self.election.renew_deadline)
                );
            }
            let mut seen = Seen {
                record: None,
                at: Instant::now(),
                transitions: self.transitions,
            };
            // When the request left: the API server may have recorded the renewal any time
            // after, and a standby counts from when it saw that, never before.
            let sent = Instant::now();
            match try_take(&self.api, &self.election, &mut seen).await {
                Ok(true) => *self.renewed.lock().expect("renewed") = sent,
                Ok(false) => return "another replica holds the lease".into(),
                Err(e) => {
                    tracing::warn!(target: "mirrord_kube", lease = %self.election.lease, error = %e, "cannot renew the leadership lease; retrying");
                }
            }
        }
    }

    /// Gives the lease up (on a clean stop), so a standby takes over at once.
    pub async fn release(&self) {
        let Ok(mut lease) = self.api.get(&self.election.lease).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(&self.election.identity) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        // Who gave it up, for the next leader's `previous`.
        lease
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(RELEASED_BY.into(), self.election.identity.clone());
        let _ = self
            .api
            .replace(&self.election.lease, &PostParams::default(), &lease)
            .await;
    }

    /// Makes this replica's pod the Service's only endpoint: the label is taken off any
    /// other pod first (a frozen former leader cannot take it off itself), then put on
    /// this one.
    pub async fn mark(&self) -> Result<(), kube::Error> {
        let labelled = self
            .pods
            .list(&ListParams::default().labels(&format!("{LEADER_LABEL}=true")))
            .await?;
        for p in labelled.items {
            let Some(name) = p.metadata.name.filter(|n| *n != self.election.identity) else {
                continue;
            };
            let off = serde_json::json!({"metadata": {"labels": {LEADER_LABEL: null}}});
            self.pods
                .patch(&name, &PatchParams::default(), &Patch::Merge(&off))
                .await?;
            tracing::info!(target: "mirrord_kube", pod = %name, "leader label taken off a former leader");
        }
        let on = serde_json::json!({"metadata": {"labels": {LEADER_LABEL: "true"}}});
        self.pods
            .patch(
                &self.election.identity,
                &PatchParams::default(),
                &Patch::Merge(&on),
            )
            .await?;
        Ok(())
    }

    fn since_renewal(&self) -> Duration {
        self.renewed.lock().expect("renewed").elapsed()
    }
}

/// A client whose writes (every method but GET: creates, updates, patches, deletes) fail
/// once `fence` says this replica no longer leads, so that a former leader that runs on for
/// a moment (thawed, or before its watchdog ends it) changes nothing another replica now
/// owns: agents, copies, scale-downs, the registry's Secret. Reads and watches go on.
pub async fn fenced_client(fence: Fence) -> Result<kube::Client, kube::Error> {
    let config = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)?;
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&fence_layer(fence))
        .build())
}

type Request = http::Request<kube::client::Body>;

fn fence_layer(
    fence: Fence,
) -> tower::filter::FilterLayer<impl Fn(Request) -> Result<Request, tower::BoxError> + Clone> {
    tower::filter::FilterLayer::new(move |req: Request| {
        match req.method() == http::Method::GET || fence.holds() {
            true => Ok(req),
            false => Err(tower::BoxError::from(NotLeading {
                method: req.method().clone(),
                path: req.uri().path().to_owned(),
            })),
        }
    })
}

/// A write refused by [`fenced_client`].
#[derive(Debug, thiserror::Error)]
#[error("{method} {path} not sent: this replica no longer leads (its leadership lease lapsed)")]
pub struct NotLeading {
    method: http::Method,
    path: String,
}

fn round(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

/// Waits until this replica holds the lease; `observe` is told the Lease's transitions
/// each time they are read.
pub async fn acquire(client: kube::Client, election: Election, observe: impl Fn(i32)) -> Leader {
    let pods = Api::<Pod>::namespaced(client.clone(), &election.namespace);
    let api = Api::<Lease>::namespaced(client, &election.namespace);
    let mut seen = Seen {
        record: None,
        at: Instant::now(),
        transitions: 0,
    };
    let mut said = false;
    loop {
        let sent = Instant::now();
        let taken = try_take(&api, &election, &mut seen).await;
        observe(seen.transitions);
        match taken {
            Ok(true) => {
                return Leader {
                    transitions: seen.transitions,
                    election,
                    api,
                    pods,
                    renewed: Mutex::new(sent),
                }
            }
            Ok(false) if !said => {
                said = true;
                let holder = seen.record.as_ref().map(|(h, _)| h.as_str()).unwrap_or("");
                tracing::info!(target: "mirrord_kube", lease = %election.lease, %holder, replica = %election.identity, "standing by: another replica leads");
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(target: "mirrord_kube", lease = %election.lease, error = %e, "cannot read the leadership lease; retrying");
            }
        }
        tokio::time::sleep(election.retry).await;
    }
}

/// One attempt: takes (or renews) the lease if it is free, ours, or expired as this
/// replica has watched it. `false`: another holds it (or won the race for it).
async fn try_take(api: &Api<Lease>, e: &Election, seen: &mut Seen) -> Result<bool, kube::Error> {
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    let current = match api.get_opt(&e.lease).await? {
        Some(l) => l,
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(e.lease.clone()),
                    namespace: Some(e.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(spec(e, now.clone(), now, 0)),
            };
            return match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(err) => Err(err),
            };
        }
    };
    let released_by = current
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(RELEASED_BY).cloned());
    let held = current.spec.clone().unwrap_or_default();
    let holder = held.holder_identity.clone().unwrap_or_default();
    seen.transitions = held.lease_transitions.unwrap_or(0);
    let record = (
        holder.clone(),
        format!("{:?}", held.renew_time.as_ref().map(|t| t.0)),
    );
    if seen.record.as_ref() != Some(&record) {
        seen.record = Some(record);
        seen.at = Instant::now();
    }
    let ours = holder == e.identity;
    let lapsed = holder.is_empty() || seen.at.elapsed() >= e.duration;
    if !ours && !lapsed {
        return Ok(false);
    }
    let (acquired, transitions) = match ours {
        true => (
            held.acquire_time.clone().unwrap_or(now.clone()),
            held.lease_transitions.unwrap_or(0),
        ),
        false => (now.clone(), held.lease_transitions.unwrap_or(0) + 1),
    };
    let mut next = current;
    next.spec = Some(spec(e, acquired, now, transitions));
    // `replace` carries the resourceVersion read above: a concurrent writer makes it 409.
    match api.replace(&e.lease, &PostParams::default(), &next).await {
        Ok(_) => {
            seen.transitions = transitions;
            if !ours {
                let previous = match holder.is_empty() {
                    true => released_by.unwrap_or_default(),
                    false => holder,
                };
                tracing::info!(target: "mirrord_kube", lease = %e.lease, replica = %e.identity, %previous, transitions, "leadership taken");
            }
            Ok(true)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(err) => Err(err),
    }
}

fn spec(e: &Election, acquired: MicroTime, renewed: MicroTime, transitions: i32) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(e.identity.clone()),
        lease_duration_seconds: Some(e.duration.as_secs().max(1) as i32),
        acquire_time: Some(acquired),
        renew_time: Some(renewed),
        lease_transitions: Some(transitions),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A client over a stand-in API server that counts what reaches it.
    fn client(fence: Fence, reached: Arc<AtomicUsize>) -> kube::Client {
        let server = tower::service_fn(move |_req: Request| {
            reached.fetch_add(1, Ordering::SeqCst);
            let pod =
                serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}});
            async move {
                Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                    bytes::Bytes::from(pod.to_string()),
                )))
            }
        });
        kube::client::ClientBuilder::new(server, "ns")
            .with_layer(&fence_layer(fence))
            .build()
    }

    #[tokio::test]
    async fn a_former_leader_reads_but_writes_nothing() {
        let leads = Arc::new(AtomicBool::new(true));
        let fence = Fence::default();
        let seen = Arc::clone(&leads);
        fence.guard(move || seen.load(Ordering::SeqCst));
        let reached = Arc::new(AtomicUsize::new(0));
        let pods = Api::<Pod>::namespaced(client(fence, Arc::clone(&reached)), "ns");
        let delete = kube::api::DeleteParams::default();
        pods.delete("p", &delete).await.expect("a leader writes");
        assert_eq!(reached.load(Ordering::SeqCst), 1);

        leads.store(false, Ordering::SeqCst);
        pods.get("p").await.expect("reads go on");
        assert_eq!(reached.load(Ordering::SeqCst), 2);
        let refused = pods.delete("p", &delete).await.map(|_| ()).unwrap_err();
        assert!(refused.to_string().contains("no longer leads"), "{refused}");
        let patch = serde_json::json!({"metadata": {"labels": {"a": "b"}}});
        let refused = pods
            .patch("p", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
            .unwrap_err();
        assert!(refused.to_string().contains("PATCH"), "{refused}");
        assert_eq!(
            reached.load(Ordering::SeqCst),
            2,
            "no write reached the server"
        );
    }

    #[test]
    fn a_leader_stops_deciding_before_anyone_may_take_its_lease() {
        let e = Election::new(
            "ns".into(),
            "l".into(),
            "me".into(),
            Duration::from_secs(15),
        );
        assert_eq!(e.renew_deadline, Duration::from_secs(10));
        assert!(e.renew_deadline < e.duration);
        assert!(
            e.retry * 3 < e.renew_deadline,
            "several renewals fit in the deadline"
        );
    }
}
