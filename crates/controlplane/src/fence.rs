//! Whether this process may still decide. With several operator replicas only the one that
//! holds the leadership lease grants port locks (and, in the Kubernetes backend, writes to
//! the API server); a replica whose lease lapsed refuses from the moment it lapsed, not
//! from when its watchdog gets round to ending the process. Without replicas (one machine,
//! one operator pod) the fence is always open.

use crate::refusal::Refusal;
use std::sync::{Arc, OnceLock};

type Holds = Arc<dyn Fn() -> bool + Send + Sync>;

/// Shared by everything that decides; set once, when the process starts to lead.
#[derive(Clone, Default)]
pub struct Fence(Arc<OnceLock<Holds>>);

impl Fence {
    /// From now on, deciding needs `holds()` to be true.
    pub fn guard(&self, holds: impl Fn() -> bool + Send + Sync + 'static) {
        if self.0.set(Arc::new(holds)).is_err() {
            tracing::error!(target: "mirrord_controlplane", "the leadership fence was set twice; keeping the first");
        }
    }

    /// True without a guard, or while the guard says this process leads.
    pub fn holds(&self) -> bool {
        self.0.get().is_none_or(|holds| holds())
    }

    /// A refusal when this process no longer leads; the client's retry reaches the leader
    /// (the Service selects it).
    pub fn check(&self) -> Result<(), Refusal> {
        match self.holds() {
            true => Ok(()),
            false => Err(Refusal::Internal(
                "this operator replica no longer leads (its leadership lease lapsed) and grants nothing; run the command again: the operator's Service now reaches the replica that leads".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn open_without_a_guard_and_shut_once_the_guard_says_so() {
        let fence = Fence::default();
        assert!(fence.check().is_ok());
        let leads = Arc::new(AtomicBool::new(true));
        let seen = Arc::clone(&leads);
        fence.clone().guard(move || seen.load(Ordering::SeqCst));
        assert!(fence.check().is_ok());
        leads.store(false, Ordering::SeqCst);
        let refused = fence.check().unwrap_err();
        assert_eq!(refused.reason(), "internal");
        assert!(refused.to_string().contains("no longer leads"), "{refused}");
    }
}
