//! Port locks: who holds which port of which target, and the only writer of the route
//! tables the data plane reads.
//!
//! Opening a session first *reserves* its ports (the reservation already counts: a second
//! session arbitrates against it), and only when every other step of the opening has
//! succeeded does it *commit*, which installs the routes and carries out take-overs. A
//! reservation dropped before commit leaves nothing behind; a [`Grant`] dropped (the
//! session ending) removes its routes. Locks are per target and port, shared by the
//! target's originals and its copies, since all of them serve the same traffic.

use crate::refusal::Refusal;
use mirrord_dataplane::{HttpFilter, RouteTable, Subscriber};
use mirrord_protocol::{ConcurrentSteal, FilterOverlap, HttpFilterSpec, PortMode, SessionId};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// A session and the user it belongs to, as conflict messages name them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub session: SessionId,
    pub user: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "session {} ({})", self.session, self.user)
    }
}

/// One port held by one session.
#[derive(Debug, Clone)]
pub struct Hold {
    pub holder: Holder,
    pub port: u16,
    pub mode: PortMode,
    /// The filter as the user wrote it; empty when unfiltered.
    pub filter: String,
    /// The same, part by part.
    pub spec: Option<HttpFilterSpec>,
    /// The filter as the data plane runs it (for overlaps between filtered steals).
    pub compiled: Option<Arc<HttpFilter>>,
    /// Other sessions' filtered steals on this port that share requests with this one.
    pub overlaps: Vec<FilterOverlap>,
    /// `false` while the session holding it is still opening.
    committed: bool,
    /// Order of commits on this target (the data plane's subscription order).
    seq: u64,
}

impl Hold {
    fn steals(&self) -> bool {
        self.mode == PortMode::Steal
    }
}

/// A port a session asks for.
pub struct Want {
    pub port: u16,
    pub mode: PortMode,
    pub filter: Option<Arc<HttpFilter>>,
    /// The routes of this port of the target.
    pub routes: Arc<RouteTable>,
}

impl Want {
    pub fn display(&self) -> String {
        self.filter
            .as_ref()
            .map(|f| f.display.clone())
            .unwrap_or_default()
    }

    pub fn spec(&self) -> Option<HttpFilterSpec> {
        self.filter.as_ref().map(|f| f.spec.clone())
    }
}

/// What a reservation gives a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Granted,
    /// Held by someone else and the session asked to `continue` without it.
    Skipped(String),
}

#[derive(Default)]
struct TargetLocks {
    ports: BTreeMap<u16, Vec<Hold>>,
    scaled_down_by: Option<Holder>,
    /// Commits so far, for [`Hold::seq`].
    commits: u64,
}

#[derive(Default)]
pub struct PortLocks {
    targets: Mutex<HashMap<String, TargetLocks>>,
}

impl PortLocks {
    /// Arbitrates `wants` against every hold and reservation on `target`. Nothing is
    /// reserved unless the whole request can be.
    pub fn reserve(
        self: &Arc<Self>,
        target: &str,
        holder: Holder,
        wants: Vec<Want>,
        on_conflict: ConcurrentSteal,
        scale_down: bool,
    ) -> Result<Reservation, Refusal> {
        let mut targets = self.targets.lock().expect("locks lock");
        let t = targets.entry(target.to_owned()).or_default();
        if scale_down {
            if let Some(h) = &t.scaled_down_by {
                return Err(Refusal::ScaleDownConflict(format!(
                    "{target} is already scaled down by {h}; only one session at a time may scale a target down"
                )));
            }
        }
        let mut decided = Vec::with_capacity(wants.len());
        let mut take_over = Vec::new();
        for w in wants {
            let outcome = match arbitrate(t, target, &w, on_conflict)? {
                Arbitration::Free => Outcome::Granted,
                Arbitration::Skip(why) => Outcome::Skipped(why),
                Arbitration::TakeOver(victims) => {
                    take_over.extend(victims.into_iter().map(|v| (v, w.port)));
                    Outcome::Granted
                }
            };
            decided.push((w, outcome));
        }
        for (w, o) in &decided {
            if *o == Outcome::Granted {
                t.ports.entry(w.port).or_default().push(Hold {
                    holder: holder.clone(),
                    port: w.port,
                    mode: w.mode,
                    filter: w.display(),
                    spec: w.spec(),
                    compiled: w.filter.clone(),
                    overlaps: Vec::new(),
                    committed: false,
                    seq: 0,
                });
            }
        }
        if scale_down {
            t.scaled_down_by = Some(holder.clone());
        }
        Ok(Reservation {
            locks: Arc::clone(self),
            target: target.to_owned(),
            holder,
            wants: decided,
            take_over,
            scale_down,
            committed: false,
        })
    }

    /// The ports `session` holds on `target` (committed ones), by port.
    pub fn holds(&self, target: &str, session: SessionId) -> Vec<Hold> {
        let targets = self.targets.lock().expect("locks lock");
        targets
            .get(target)
            .map(|t| {
                t.ports
                    .values()
                    .flatten()
                    .filter(|h| h.committed && h.holder.session == session)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every committed hold of every target, by target (for status and the console).
    pub fn snapshot(&self) -> Vec<(String, Vec<Hold>)> {
        let targets = self.targets.lock().expect("locks lock");
        let mut all: Vec<_> = targets
            .iter()
            .map(|(k, t)| {
                let holds: Vec<Hold> = t
                    .ports
                    .values()
                    .flatten()
                    .filter(|h| h.committed)
                    .cloned()
                    .collect();
                (k.clone(), holds)
            })
            .filter(|(_, h)| !h.is_empty())
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// The filtered steals on `port` of `target` committed before `session`'s (the first
    /// match wins), in that order, at most `max`.
    pub fn filtered_steals_before(
        &self,
        target: &str,
        port: u16,
        session: SessionId,
        max: usize,
    ) -> Vec<(Holder, Arc<HttpFilter>)> {
        let targets = self.targets.lock().expect("locks lock");
        let holds = targets.get(target).and_then(|t| t.ports.get(&port));
        let holds = holds.map(Vec::as_slice).unwrap_or_default();
        let Some(mine) = holds
            .iter()
            .find(|h| h.committed && h.holder.session == session)
        else {
            return Vec::new();
        };
        let mut earlier: Vec<&Hold> = holds
            .iter()
            .filter(|h| h.committed && h.steals() && h.seq < mine.seq)
            .collect();
        earlier.sort_by_key(|h| h.seq);
        earlier
            .into_iter()
            .filter_map(|h| Some((h.holder.clone(), Arc::clone(h.compiled.as_ref()?))))
            .take(max)
            .collect()
    }

    /// Records on `session`'s hold of `port` that another filter overlaps it (if the hold
    /// is still there).
    pub fn record_overlap(&self, target: &str, port: u16, session: SessionId, o: FilterOverlap) {
        let mut targets = self.targets.lock().expect("locks lock");
        let hold = targets
            .get_mut(target)
            .and_then(|t| t.ports.get_mut(&port))
            .and_then(|hs| {
                hs.iter_mut()
                    .find(|h| h.holder.session == session && h.steals())
            });
        if let Some(h) = hold {
            h.overlaps.retain(|x| x.session_id != o.session_id);
            h.overlaps.push(o);
        }
    }

    /// Removes `session`'s holds on `target` (only those in `state`; of `only` these
    /// ports, or all of them and then its scale-down mark too); returns what it held.
    fn remove(
        &self,
        target: &str,
        session: SessionId,
        committed: bool,
        only: Option<&[u16]>,
    ) -> Vec<Hold> {
        let mut targets = self.targets.lock().expect("locks lock");
        let Some(t) = targets.get_mut(target) else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        for (port, holds) in t.ports.iter_mut() {
            if only.is_some_and(|only| !only.contains(port)) {
                continue;
            }
            let (gone, kept) = std::mem::take(holds)
                .into_iter()
                .partition(|h| h.holder.session == session && h.committed == committed);
            *holds = kept;
            if committed && !gone.is_empty() {
                // What overlapped the leaving session no longer does.
                for h in holds.iter_mut() {
                    h.overlaps.retain(|o| o.session_id != session);
                }
            }
            removed.extend::<Vec<Hold>>(gone);
        }
        t.ports.retain(|_, h| !h.is_empty());
        if only.is_none()
            && t.scaled_down_by
                .as_ref()
                .is_some_and(|h| h.session == session)
        {
            t.scaled_down_by = None;
        }
        if t.ports.is_empty() && t.scaled_down_by.is_none() {
            targets.remove(target);
        }
        removed
    }
}

enum Arbitration {
    Free,
    Skip(String),
    TakeOver(Vec<Holder>),
}

/// One unfiltered steal per port; filtered steals share a port with each other but not
/// with an unfiltered one; mirrors never conflict.
fn arbitrate(
    t: &TargetLocks,
    target: &str,
    w: &Want,
    on_conflict: ConcurrentSteal,
) -> Result<Arbitration, Refusal> {
    if w.mode != PortMode::Steal {
        return Ok(Arbitration::Free);
    }
    let holders: Vec<&Hold> = t
        .ports
        .get(&w.port)
        .into_iter()
        .flatten()
        .filter(|h| h.steals() && (w.filter.is_none() || h.filter.is_empty()))
        .collect();
    let Some(first) = holders.first() else {
        return Ok(Arbitration::Free);
    };
    let who = &first.holder;
    match on_conflict {
        ConcurrentSteal::Abort => Err(Refusal::PortConflict(format!(
            "port {} of {target} is already stolen by {who}; retry with --on-concurrent-steal override (take it) or continue (go on without it)",
            w.port
        ))),
        ConcurrentSteal::Continue => Ok(Arbitration::Skip(format!("not stolen: held by {who}"))),
        ConcurrentSteal::Override => {
            if let Some(opening) = holders.iter().find(|h| !h.committed) {
                return Err(Refusal::PortConflict(format!(
                    "port {} of {target} is being taken by {}, which is still starting; retry in a moment",
                    w.port, opening.holder
                )));
            }
            Ok(Arbitration::TakeOver(
                holders.iter().map(|h| h.holder.clone()).collect(),
            ))
        }
    }
}

/// Ports reserved for a session that is still opening. Dropping it frees them.
pub struct Reservation {
    locks: Arc<PortLocks>,
    target: String,
    holder: Holder,
    wants: Vec<(Want, Outcome)>,
    take_over: Vec<(Holder, u16)>,
    scale_down: bool,
    committed: bool,
}

/// A port taken from another session by `override`.
#[derive(Debug, Clone)]
pub struct Taken {
    pub hold: Hold,
}

impl Reservation {
    /// The target's key in the locks.
    pub fn target(&self) -> &str {
        &self.target
    }

    pub fn outcomes(&self) -> impl Iterator<Item = (&Want, &Outcome)> {
        self.wants.iter().map(|(w, o)| (w, o))
    }

    /// Sessions whose ports this reservation would take (`override`), with the port.
    pub fn take_overs(&self) -> &[(Holder, u16)] {
        &self.take_over
    }

    /// Installs the routes and carries out take-overs. `subscriber` makes the session's
    /// subscription for a granted port.
    pub fn commit(mut self, subscriber: impl Fn(&Want) -> Subscriber) -> (Grant, Vec<Taken>) {
        let mut targets = self.locks.targets.lock().expect("locks lock");
        let t = targets.entry(self.target.clone()).or_default();
        let mut taken = Vec::new();
        for (victim, port) in &self.take_over {
            let victim = &victim.session;
            let Some(holds) = t.ports.get_mut(port) else {
                continue;
            };
            if let Some(i) = holds
                .iter()
                .position(|h| h.holder.session == *victim && h.steals())
            {
                let hold = holds.remove(i);
                if let Some((w, _)) = self.wants.iter().find(|(w, _)| w.port == *port) {
                    w.routes.remove_session(victim.0);
                }
                taken.push(Taken { hold });
            }
        }
        let mut routes = Vec::new();
        t.commits += 1;
        let seq = t.commits;
        for (w, o) in &self.wants {
            if *o != Outcome::Granted {
                continue;
            }
            let sub = subscriber(w);
            let filter = w.filter.clone();
            w.routes.update(|r| match (w.mode, filter) {
                (PortMode::Steal, None) => r.unfiltered_steal = Some(sub),
                (PortMode::Steal, Some(f)) => r.filtered_steals.push((sub, f)),
                (PortMode::Mirror, f) => r.mirrors.push((sub, f)),
            });
            routes.push((w.port, Arc::clone(&w.routes)));
            if let Some(h) = t.ports.get_mut(&w.port).and_then(|hs| {
                hs.iter_mut()
                    .find(|h| h.holder.session == self.holder.session)
            }) {
                h.committed = true;
                h.seq = seq;
            }
        }
        drop(targets);
        self.committed = true;
        let grant = Grant {
            locks: Arc::clone(&self.locks),
            target: self.target.clone(),
            session: self.holder.session,
            routes,
            released: false,
        };
        (grant, taken)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.committed {
            self.locks
                .remove(&self.target, self.holder.session, false, None);
            let _ = self.scale_down;
        }
    }
}

/// A session's committed ports. Released (routes removed, locks freed) by
/// [`Grant::release`] or on drop.
pub struct Grant {
    locks: Arc<PortLocks>,
    target: String,
    session: SessionId,
    /// Each port's route table.
    routes: Vec<(u16, Arc<RouteTable>)>,
    released: bool,
}

impl Grant {
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Takes over `more` (ports added to the same session later): released with this one.
    pub fn absorb(&mut self, mut more: Grant) {
        debug_assert_eq!((more.session, &more.target), (self.session, &self.target));
        self.routes.append(&mut more.routes);
        more.released = true;
    }

    /// Frees everything; returns the ports the session still held.
    pub fn release(&mut self) -> Vec<Hold> {
        if std::mem::replace(&mut self.released, true) {
            return Vec::new();
        }
        for (_, r) in &self.routes {
            r.remove_session(self.session.0);
        }
        self.locks.remove(&self.target, self.session, true, None)
    }

    /// Frees `ports` alone (the session's process stopped listening on them); returns
    /// what the session held of them.
    pub fn release_ports(&mut self, ports: &[u16]) -> Vec<Hold> {
        if self.released {
            return Vec::new();
        }
        let session = self.session.0;
        self.routes.retain(|(port, r)| {
            let going = ports.contains(port);
            if going {
                r.remove_session(session);
            }
            !going
        });
        self.locks
            .remove(&self.target, self.session, true, Some(ports))
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirrord_protocol::HttpFilterSpec;

    fn filter() -> Option<Arc<HttpFilter>> {
        let spec = HttpFilterSpec {
            header: vec!["x-user: a".into()],
            ..Default::default()
        };
        Some(Arc::new(HttpFilter::compile(&spec).unwrap()))
    }

    fn holder(n: u64, user: &str) -> Holder {
        Holder {
            session: SessionId(n),
            user: user.into(),
        }
    }

    fn want(routes: &Arc<RouteTable>, mode: PortMode, filter: Option<Arc<HttpFilter>>) -> Want {
        Want {
            port: 80,
            mode,
            filter,
            routes: Arc::clone(routes),
        }
    }

    fn sub(n: u64) -> Subscriber {
        let (tx, _rx) = mirrord_dataplane::handoff::channel(1);
        Subscriber {
            session_id: n,
            tx,
            counters: mirrord_telemetry::PortCounters::detached(),
            trace: Default::default(),
            copy_budget: mirrord_dataplane::budget::Budget::new(1 << 20),
        }
    }

    #[test]
    fn one_unfiltered_steal_per_port_filtered_steals_share() {
        let locks = Arc::new(PortLocks::default());
        let routes = Arc::new(RouteTable::default());
        let a = locks
            .reserve(
                "deployment/api",
                holder(1, "alice"),
                vec![want(&routes, PortMode::Steal, None)],
                ConcurrentSteal::Abort,
                false,
            )
            .unwrap();
        // Reserved but not committed: it already counts.
        let e = locks
            .reserve(
                "deployment/api",
                holder(2, "bob"),
                vec![want(&routes, PortMode::Steal, filter())],
                ConcurrentSteal::Abort,
                false,
            )
            .err()
            .unwrap();
        assert_eq!(e.reason(), "conflict");
        assert!(
            e.to_string().contains("session 0000000000000001 (alice)"),
            "{e}"
        );
        // The routes do not change before commit.
        assert!(routes.load().is_empty());
        let (grant, taken) = a.commit(|_| sub(1));
        assert!(taken.is_empty());
        assert!(routes.load().unfiltered_steal.is_some());
        // Mirrors never conflict; another target is independent.
        locks
            .reserve(
                "deployment/api",
                holder(3, "carol"),
                vec![want(&routes, PortMode::Mirror, None)],
                ConcurrentSteal::Abort,
                false,
            )
            .unwrap();
        locks
            .reserve(
                "deployment/web",
                holder(3, "carol"),
                vec![want(&routes, PortMode::Steal, None)],
                ConcurrentSteal::Abort,
                false,
            )
            .unwrap();
        drop(grant);
        assert!(routes.load().is_empty());
        // Two filtered steals share.
        let (_g1, _) = locks
            .reserve(
                "deployment/api",
                holder(4, "a"),
                vec![want(&routes, PortMode::Steal, filter())],
                ConcurrentSteal::Abort,
                false,
            )
            .unwrap()
            .commit(|_| sub(4));
        let (_g2, _) = locks
            .reserve(
                "deployment/api",
                holder(5, "b"),
                vec![want(&routes, PortMode::Steal, filter())],
                ConcurrentSteal::Abort,
                false,
            )
            .unwrap()
            .commit(|_| sub(5));
        assert_eq!(routes.load().filtered_steals.len(), 2);
        // ...but not with an unfiltered one.
        assert!(locks
            .reserve(
                "deployment/api",
                holder(6, "c"),
                vec![want(&routes, PortMode::Steal, None)],
                ConcurrentSteal::Abort,
                false
            )
            .is_err());
    }

    #[test]
    fn a_dropped_reservation_leaves_nothing() {
        let locks = Arc::new(PortLocks::default());
        let routes = Arc::new(RouteTable::default());
        let r = locks
            .reserve(
                "t",
                holder(1, "a"),
                vec![want(&routes, PortMode::Steal, None)],
                ConcurrentSteal::Abort,
                true,
            )
            .unwrap();
        drop(r);
        assert!(locks.snapshot().is_empty());
        assert!(locks.targets.lock().unwrap().is_empty());
        // Port and scale-down both free again.
        locks
            .reserve(
                "t",
                holder(2, "b"),
                vec![want(&routes, PortMode::Steal, None)],
                ConcurrentSteal::Abort,
                true,
            )
            .unwrap();
    }

    #[test]
    fn continue_skips_and_override_takes_at_commit_only() {
        let locks = Arc::new(PortLocks::default());
        let routes = Arc::new(RouteTable::default());
        let (_alice, _) = locks
            .reserve(
                "t",
                holder(1, "alice"),
                vec![want(&routes, PortMode::Steal, None)],
                ConcurrentSteal::Abort,
                false,
            )
            .unwrap()
            .commit(|_| sub(1));
        let cont = locks
            .reserve(
                "t",
                holder(2, "bob"),
                vec![want(&routes, PortMode::Steal, None)],
                ConcurrentSteal::Continue,
                false,
            )
            .unwrap();
        let (_, o) = cont.outcomes().next().unwrap();
        assert!(matches!(o, Outcome::Skipped(w) if w.contains("alice")));
        drop(cont);

        let over = locks
            .reserve(
                "t",
                holder(3, "carol"),
                vec![want(&routes, PortMode::Steal, None)],
                ConcurrentSteal::Override,
                false,
            )
            .unwrap();
        assert_eq!(over.take_overs(), &[(holder(1, "alice"), 80)]);
        // Until commit, alice still holds the port and its traffic.
        assert_eq!(
            routes.load().unfiltered_steal.as_ref().unwrap().session_id,
            1
        );
        let (_carol, taken) = over.commit(|_| sub(3));
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].hold.holder.user, "alice");
        assert_eq!(
            routes.load().unfiltered_steal.as_ref().unwrap().session_id,
            3
        );
        assert!(locks.holds("t", SessionId(1)).is_empty());
        assert_eq!(locks.holds("t", SessionId(3)).len(), 1);
    }

    #[test]
    fn override_waits_for_an_opening_holder() {
        let locks = Arc::new(PortLocks::default());
        let routes = Arc::new(RouteTable::default());
        let _opening = locks
            .reserve(
                "t",
                holder(1, "a"),
                vec![want(&routes, PortMode::Steal, None)],
                ConcurrentSteal::Abort,
                false,
            )
            .unwrap();
        let e = locks
            .reserve(
                "t",
                holder(2, "b"),
                vec![want(&routes, PortMode::Steal, None)],
                ConcurrentSteal::Override,
                false,
            )
            .err()
            .unwrap();
        assert!(e.to_string().contains("still starting"), "{e}");
    }

    #[test]
    fn one_scale_down_per_target() {
        let locks = Arc::new(PortLocks::default());
        let (g, _) = locks
            .reserve("t", holder(1, "a"), vec![], ConcurrentSteal::Abort, true)
            .unwrap()
            .commit(|_| sub(1));
        let e = locks
            .reserve("t", holder(2, "b"), vec![], ConcurrentSteal::Abort, true)
            .err()
            .unwrap();
        assert!(matches!(e, Refusal::ScaleDownConflict(_)), "{e}");
        drop(g);
        locks
            .reserve("t", holder(2, "b"), vec![], ConcurrentSteal::Abort, true)
            .unwrap();
    }

    /// Overlaps compare a session with the filters subscribed before it, in commit order
    /// (not reservation order): a session that committed later is never "first".
    #[test]
    fn earlier_filtered_steals_are_those_committed_before() {
        let locks = Arc::new(PortLocks::default());
        let routes = Arc::new(RouteTable::default());
        let reserve = |n: u64| {
            locks
                .reserve(
                    "t",
                    holder(n, "u"),
                    vec![want(&routes, PortMode::Steal, filter())],
                    ConcurrentSteal::Abort,
                    false,
                )
                .unwrap()
        };
        let (a, b, c) = (reserve(1), reserve(2), reserve(3));
        let (_c, _) = c.commit(|_| sub(3));
        let (_a, _) = a.commit(|_| sub(1));
        let before = |n: u64| {
            locks
                .filtered_steals_before("t", 80, SessionId(n), 10)
                .iter()
                .map(|(h, _)| h.session.0)
                .collect::<Vec<_>>()
        };
        assert_eq!(before(3), Vec::<u64>::new());
        assert_eq!(before(1), vec![3]);
        // Not committed yet: nothing to compare.
        assert_eq!(before(2), Vec::<u64>::new());
        let (_b, _) = b.commit(|_| sub(2));
        assert_eq!(before(2), vec![3, 1]);
    }
}
