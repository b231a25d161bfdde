//! What the operator knows of the agents of one target, as the gateway reports it
//! ([`Agents::connect`], [`Agents::applied`]) and the agent pods' watch
//! ([`crate::agent_pods`]) sees them going; [`crate::fleet`] reads it to decide which agent
//! pods to create or delete. A record dropped here tells its agent to leave ([`Retired`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Default)]
pub struct Agents(pub(crate) Mutex<HashMap<String, Agent>>);

/// Which target keeps the agent of each pod, across targets: a pod has one agent, and two
/// target names that reach the same pod (`pod/web-7d9c` and `deployment/web`) must not
/// each start one (the second agent's redirect would take the first one's traffic).
#[derive(Default)]
pub struct PodClaims(Mutex<HashMap<String, String>>);

impl PodClaims {
    /// Claims pod `uid` for `target`; the other target's name if it has the pod.
    pub(crate) fn claim(&self, uid: &str, target: &str) -> Result<(), String> {
        let mut claims = self.0.lock().expect("claims");
        match claims.get(uid) {
            Some(owner) if owner != target => Err(owner.clone()),
            _ => {
                claims.insert(uid.to_owned(), target.to_owned());
                Ok(())
            }
        }
    }

    /// `target` no longer keeps an agent on pod `uid`.
    pub(crate) fn release(&self, uid: &str, target: &str) {
        let mut claims = self.0.lock().expect("claims");
        if claims.get(uid).is_some_and(|owner| owner == target) {
            claims.remove(uid);
        }
    }

    /// The target that keeps pod `uid`'s agent, if any.
    pub(crate) fn owner(&self, uid: &str) -> Option<String> {
        self.0.lock().expect("claims").get(uid).cloned()
    }

    /// Everything `target` kept (it is gone).
    pub(crate) fn release_all(&self, target: &str) {
        self.0
            .lock()
            .expect("claims")
            .retain(|_, owner| owner != target);
    }

    /// The target other than `target` that keeps pod `uid`'s agent, if any.
    pub(crate) fn other(&self, uid: &str, target: &str) -> Option<String> {
        let claims = self.0.lock().expect("claims");
        claims.get(uid).filter(|owner| *owner != target).cloned()
    }
}

/// The agent of one target pod.
pub(crate) struct Agent {
    /// The agent's own pod.
    pub(crate) pod: String,
    pub(crate) created: Instant,
    pub(crate) connected: bool,
    pub(crate) ever_connected: bool,
    /// The last route version it applied.
    pub(crate) applied: u64,
    pub(crate) idle_since: Option<Instant>,
    /// Replaces a lost agent: its sessions hear when it has taken over.
    pub(crate) replaces_lost: bool,
    /// Its pod is being deleted (or has ended): it goes, whatever its link says.
    pub(crate) pod_going: bool,
    /// Cancelled when this record is dropped: the agent's route stream then tells it to leave.
    pub(crate) retired: Retired,
}

/// Cancelled when the operator forgets an agent; its route stream waits on it.
#[derive(Clone, Default)]
pub struct Retired(tokio_util::sync::CancellationToken);

impl Retired {
    pub async fn wait(&self) {
        self.0.cancelled().await
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.retired.0.cancel();
    }
}

impl Agents {
    /// The agent `pod` of target pod `uid` connected: what tells it to leave, or `None` if
    /// no such agent is expected (an old one, replaced already).
    pub fn connect(&self, uid: &str, pod: &str) -> Option<Retired> {
        let mut map = self.0.lock().expect("agents");
        let a = map.get_mut(uid).filter(|a| a.pod == pod)?;
        a.connected = true;
        a.ever_connected = true;
        Some(a.retired.clone())
    }

    /// The route stream of agent `pod` ended. Another agent of the same target pod (its
    /// replacement) is not touched.
    pub fn disconnected(&self, uid: &str, pod: &str) {
        if let Some(a) = self
            .0
            .lock()
            .expect("agents")
            .get_mut(uid)
            .filter(|a| a.pod == pod)
        {
            a.connected = false;
        }
    }

    pub fn applied(&self, uid: &str, pod: &str, version: u64) {
        if let Some(a) = self
            .0
            .lock()
            .expect("agents")
            .get_mut(uid)
            .filter(|a| a.pod == pod)
        {
            a.applied = a.applied.max(version);
        }
    }

    /// Agent pod `pod` is being deleted or has ended. Returns whether it is one of these.
    pub fn pod_going(&self, pod: &str) -> bool {
        let mut map = self.0.lock().expect("agents");
        match map.values_mut().find(|a| a.pod == pod) {
            Some(a) if !a.pod_going => {
                a.pod_going = true;
                true
            }
            _ => false,
        }
    }

    /// What tells agent `pod` of target pod `uid` to leave, if it is the one expected.
    pub fn retired(&self, uid: &str, pod: &str) -> Option<Retired> {
        let map = self.0.lock().expect("agents");
        map.get(uid)
            .filter(|a| a.pod == pod)
            .map(|a| a.retired.clone())
    }

    /// The agent pod of target pod `uid`, whether its link is up.
    pub(crate) fn of(&self, uid: &str) -> Option<(String, bool)> {
        let map = self.0.lock().expect("agents");
        map.get(uid).map(|a| (a.pod.clone(), a.connected))
    }

    pub(crate) fn applied_version(&self, uid: &str) -> Option<u64> {
        self.0.lock().expect("agents").get(uid).map(|a| a.applied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_is_kept_by_one_target_name_at_a_time() {
        let c = PodClaims::default();
        assert_eq!(c.claim("uid-1", "deployment/web"), Ok(()));
        assert_eq!(
            c.claim("uid-1", "deployment/web"),
            Ok(()),
            "again: still its own"
        );
        assert_eq!(c.claim("uid-1", "pod/web-1"), Err("deployment/web".into()));
        assert_eq!(
            c.other("uid-1", "pod/web-1").as_deref(),
            Some("deployment/web")
        );
        assert_eq!(c.other("uid-1", "deployment/web"), None);
        c.release("uid-1", "pod/web-1");
        assert_eq!(
            c.owner("uid-1").as_deref(),
            Some("deployment/web"),
            "only the keeper releases"
        );
        c.release("uid-1", "deployment/web");
        assert_eq!(c.claim("uid-1", "pod/web-1"), Ok(()));
        c.claim("uid-2", "pod/web-1").unwrap();
        c.release_all("pod/web-1");
        assert_eq!((c.owner("uid-1"), c.owner("uid-2")), (None, None));
    }
}
