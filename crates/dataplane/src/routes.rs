//! Route tables: who, per port, gets what. Replaced whole on every change, read lock-free on
//! every connection and request, so a change never stalls traffic and traffic never sees
//! half a change.

use crate::filter::HttpFilter;
use crate::handoff::SubscriberTx;
use arc_swap::ArcSwap;
use mirrord_telemetry::{PortCounters, SessionTrace};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Clone)]
pub struct Subscriber {
    pub session_id: u64,
    pub tx: SubscriberTx,
    pub counters: PortCounters,
    /// Spans for stolen requests (inert unless traces are exported).
    pub trace: SessionTrace,
}

#[derive(Clone, Default)]
pub struct PortRoutes {
    pub unfiltered_steal: Option<Subscriber>,
    /// In subscription order: when several match, the first gets the request.
    pub filtered_steals: Vec<(Subscriber, Arc<HttpFilter>)>,
    pub mirrors: Vec<(Subscriber, Option<Arc<HttpFilter>>)>,
}

impl PortRoutes {
    pub fn is_empty(&self) -> bool {
        self.unfiltered_steal.is_none()
            && self.filtered_steals.is_empty()
            && self.mirrors.is_empty()
    }

    /// Whether connections must be parsed as HTTP to route them.
    pub fn needs_http(&self) -> bool {
        !self.filtered_steals.is_empty() || self.mirrors.iter().any(|(_, f)| f.is_some())
    }
}

/// The routes of one port of one group of replicas (the originals, or one copy).
#[derive(Default)]
pub struct RouteTable {
    current: ArcSwap<PortRoutes>,
    /// Bumped after every change: connections relayed as bytes check it at each request
    /// boundary (one atomic load) to learn that they should be routed per request.
    version: AtomicU64,
    /// Serialises writers so read-modify-write never loses an update.
    write: Mutex<()>,
    /// Told after every change, for a table whose routes are applied elsewhere (by the
    /// agents of a Kubernetes target).
    changed: Option<Arc<tokio::sync::Notify>>,
}

impl RouteTable {
    /// A table that tells `changed` (with `notify_one`: no change is missed) after every
    /// update.
    pub fn notifying(changed: Arc<tokio::sync::Notify>) -> Self {
        Self {
            changed: Some(changed),
            ..Self::default()
        }
    }

    pub fn load(&self) -> Arc<PortRoutes> {
        self.current.load_full()
    }

    /// Read it before [`RouteTable::load`]: a change in between then shows as a newer
    /// version later, never as a missed one.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    pub fn update(&self, f: impl FnOnce(&mut PortRoutes)) {
        let _guard = self.write.lock().expect("route writer panicked");
        let mut next = PortRoutes::clone(&self.current.load());
        f(&mut next);
        // The clone had exactly the room it needed, so a subscription just added doubled
        // its list's capacity: with thousands of sessions on a port, half of the table
        // would be spare room kept for as long as the table is current.
        next.filtered_steals.shrink_to_fit();
        next.mirrors.shrink_to_fit();
        self.current.store(Arc::new(next));
        self.version.fetch_add(1, Ordering::AcqRel);
        if let Some(n) = &self.changed {
            n.notify_one();
        }
    }

    /// Removes every subscription of the session.
    pub fn remove_session(&self, session_id: u64) {
        self.update(|r| {
            if r.unfiltered_steal
                .as_ref()
                .is_some_and(|s| s.session_id == session_id)
            {
                r.unfiltered_steal = None;
            }
            r.filtered_steals
                .retain(|(s, _)| s.session_id != session_id);
            r.mirrors.retain(|(s, _)| s.session_id != session_id);
        });
    }
}
