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
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The label that makes a replica's pod the operator Service's endpoint: only the
/// leader's pod carries it.
pub const LEADER_LABEL: &str = "mirrord.dev/leader";

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
}

/// This replica's leadership once held.
pub struct Leader {
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
            };
            match try_take(&self.api, &self.election, &mut seen).await {
                Ok(true) => *self.renewed.lock().expect("renewed") = Instant::now(),
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

fn round(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

/// Waits until this replica holds the lease.
pub async fn acquire(client: kube::Client, election: Election) -> Leader {
    let pods = Api::<Pod>::namespaced(client.clone(), &election.namespace);
    let api = Api::<Lease>::namespaced(client, &election.namespace);
    let mut seen = Seen {
        record: None,
        at: Instant::now(),
    };
    let mut said = false;
    loop {
        match try_take(&api, &election, &mut seen).await {
            Ok(true) => {
                return Leader {
                    election,
                    api,
                    pods,
                    renewed: Mutex::new(Instant::now()),
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
    let held = current.spec.clone().unwrap_or_default();
    let holder = held.holder_identity.clone().unwrap_or_default();
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
            if !ours {
                tracing::info!(target: "mirrord_kube", lease = %e.lease, replica = %e.identity, previous = %holder, transitions, "leadership taken");
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
