//! Route tables: who, per port, gets what. Replaced whole on every change, read lock-free on
//! every connection and request, so a change never stalls traffic and traffic never sees
//! half a change.

use crate::budget::Budget;
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
    /// What mirror copies for this session may hold at once (one budget for all of the
    /// session's ports).
    pub copy_budget: Arc<Budget>,
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

    /// Whether a filter of the port decides on request bodies.
    pub fn needs_body(&self) -> bool {
        self.filtered_steals.iter().any(|(_, f)| f.needs_body())
            || self
                .mirrors
                .iter()
                .any(|(_, f)| f.as_ref().is_some_and(|f| f.needs_body()))
    }

    /// Whether connections must be parsed as HTTP to route them.
    pub fn needs_http(&self) -> bool {
        !self.filtered_steals.is_empty() || self.mirrors.iter().any(|(_, f)| f.is_some())
    }
}

impl PortRoutes {
    /// A copy whose lists have room for one more subscription: a change usually adds or
    /// removes one, and a plain clone (exactly as long as it needs) would double a list's
    /// capacity at the first push: with thousands of sessions on a port, half of the table
    /// spare room, and a reallocation of the whole list at every session opened.
    fn copy_with_room(&self) -> Self {
        fn copy<T: Clone>(v: &[T]) -> Vec<T> {
            let mut c = Vec::with_capacity(v.len() + 1);
            c.extend_from_slice(v);
            c
        }
        Self {
            unfiltered_steal: self.unfiltered_steal.clone(),
            filtered_steals: copy(&self.filtered_steals),
            mirrors: copy(&self.mirrors),
        }
    }

    /// Gives back spare room after a change that added more than one subscription.
    fn trim(&mut self) {
        if self.filtered_steals.capacity() > self.filtered_steals.len() + 1 {
            self.filtered_steals.shrink_to_fit();
        }
        if self.mirrors.capacity() > self.mirrors.len() + 1 {
            self.mirrors.shrink_to_fit();
        }
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
        let mut next = self.current.load().copy_with_room();
        f(&mut next);
        next.trim();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(n: u64) -> Subscriber {
        Subscriber {
            session_id: n,
            tx: crate::handoff::channel(1).0,
            counters: PortCounters::detached(),
            trace: Default::default(),
            copy_budget: Budget::new(1 << 20),
        }
    }

    /// A table with many sessions is not half spare room (a clone plus a push doubled a
    /// list's capacity at every change).
    #[test]
    fn lists_keep_at_most_one_spare_slot() {
        let table = RouteTable::default();
        for n in 0..1000 {
            table.update(|r| r.mirrors.push((sub(n), None)));
        }
        let current = table.load();
        assert_eq!(current.mirrors.len(), 1000);
        assert!(
            current.mirrors.capacity() <= 1001,
            "{}",
            current.mirrors.capacity()
        );
        table.update(|r| r.mirrors.extend((1000..1100).map(|n| (sub(n), None))));
        assert!(table.load().mirrors.capacity() <= 1101);
        table.remove_session(5);
        assert_eq!(table.load().mirrors.len(), 1099);
        assert!(table.load().mirrors.capacity() <= 1100);
    }
}
