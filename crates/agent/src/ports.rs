//! The agent's ports: one interceptor per target port that any session names, bound on
//! first use and kept for the connections it carries; the redirect map lists only the
//! ports that sessions hold now, so a port nobody holds is served by the target directly.
//!
//! A [`RouteSnapshot`] from the operator becomes each port's [`PortRoutes`]: the same
//! routing as on one machine, with every session's handoffs sent to that session's
//! [`crate::link`] bridge instead of to a local frame loop.

use crate::link::Link;
use mirrord_dataplane::budget::{self, Budget};
use mirrord_dataplane::{
    Endpoint, FilterLimits, HttpFilter, InterceptorLimits, PortPlane, PortRoutes, PortServices,
    Subscriber, SubscriberTx,
};
use mirrord_protocol::agent::{PortRouteSpec, RouteSnapshot};
use mirrord_protocol::HttpFilterSpec;
use mirrord_telemetry::metrics::BypassCounter;
use mirrord_telemetry::{PortCounters, Telemetry};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The operator validated every filter against its own limits; these only bound what a
/// filter can cost here.
const LIMITS: FilterLimits = FilterLimits {
    max_expressions: 1024,
    max_pattern_len: 64 * 1024,
    regex_size: 1024 * 1024,
    // As the operator's: a filter matches the same requests wherever it runs.
    backtrack_limit: mirrord_dataplane::filter::DEFAULT_BACKTRACK_LIMIT,
};

pub struct Ports {
    telemetry: Telemetry,
    pod_uid: String,
    planes: Mutex<BTreeMap<u16, Arc<PortPlane>>>,
    /// The planes' accept loops: stopping them closes the listeners.
    accepting: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// `(target port, agent port)` of the ports sessions hold now.
    redirected: Mutex<Vec<(u16, u16)>>,
    /// Each session's bridge to the operator, and what its mirror copies may hold here.
    sessions: Mutex<HashMap<u64, (SubscriberTx, Arc<Budget>)>>,
    /// Handoffs on their way to or served by a session (stolen connections and requests,
    /// mirror copies): the interceptors no longer count them once handed over.
    handed: Arc<AtomicUsize>,
    /// Wakes the renewal loop when the held ports change.
    pub renewed: tokio::sync::Notify,
    /// What mirror copies of every port may hold here at once.
    copy_budget: Arc<Budget>,
    /// Each port's filter counters, reported to the operator.
    counters: Mutex<BTreeMap<u16, BypassCounter>>,
}

impl Ports {
    pub fn new(telemetry: Telemetry, pod_uid: String) -> Self {
        Self {
            telemetry,
            pod_uid,
            planes: Mutex::default(),
            accepting: Mutex::default(),
            redirected: Mutex::default(),
            sessions: Mutex::default(),
            handed: Arc::default(),
            renewed: tokio::sync::Notify::new(),
            copy_budget: Budget::new(budget::TOTAL_COPY_BYTES),
            counters: Mutex::default(),
        }
    }

    /// What each port's filters decided so far.
    pub fn counts(&self) -> Vec<mirrord_protocol::agent::PortCounts> {
        let counters = self.counters.lock().expect("counters");
        counters
            .iter()
            .map(|(port, c)| mirrord_protocol::agent::PortCounts {
                port: *port,
                bypassed: c.bypassed.get(),
                limited: c.limited.get(),
            })
            .collect()
    }

    /// The interceptor of `port`, bound now if it does not exist yet. Its upstream is the
    /// target in this namespace: the agent's own connections are not redirected.
    pub async fn plane(&self, port: u16) -> std::io::Result<Arc<PortPlane>> {
        if let Some(p) = self.planes.lock().expect("planes").get(&port) {
            return Ok(Arc::clone(p));
        }
        let bypass = self
            .telemetry
            .metrics()
            .bypass_counter("", &self.pod_uid, port);
        self.counters
            .lock()
            .expect("counters")
            .insert(port, bypass.clone());
        let services = PortServices {
            bypass,
            copy_drops: self.telemetry.metrics().copy_drops(),
            copy_budget: Arc::clone(&self.copy_budget),
        };
        let any: SocketAddr = ([0, 0, 0, 0], 0).into();
        let (plane, listener) = PortPlane::bind(
            port,
            any,
            services,
            Arc::default(),
            InterceptorLimits::default(),
        )
        .await?;
        plane.set_endpoints(vec![Arc::new(Endpoint {
            name: "target".into(),
            upstream: ([127, 0, 0, 1], port).into(),
        })]);
        let accepting = plane.spawn(listener);
        self.accepting.lock().expect("accepting").push(accepting);
        self.planes
            .lock()
            .expect("planes")
            .insert(port, Arc::clone(&plane));
        Ok(plane)
    }

    /// Takes `ports` over for good, routing nothing: traffic passes through to the target.
    pub async fn pass_through(&self, ports: &[u16]) -> std::io::Result<()> {
        let mut held = Vec::new();
        for &port in ports {
            held.push((port, self.plane(port).await?.listen.port()));
        }
        *self.redirected.lock().expect("redirected") = held;
        Ok(())
    }

    /// Closes every listener: connections still in their backlogs are refused (while
    /// their NAT entries exist, so the refusal reaches the client).
    pub async fn stop_accepting(&self) {
        let loops: Vec<_> = std::mem::take(&mut *self.accepting.lock().expect("accepting"));
        for l in loops {
            l.abort();
            let _ = l.await;
        }
    }

    /// Connections the agent serves now, on every port, and what it handed to sessions and
    /// is still carrying (a stolen connection's tunnel, a stolen request's answer).
    pub fn active(&self) -> usize {
        let served: usize = self
            .planes
            .lock()
            .expect("planes")
            .values()
            .map(|p| p.active())
            .sum();
        served + self.handed.load(Ordering::Acquire)
    }

    pub fn redirected(&self) -> Vec<(u16, u16)> {
        self.redirected.lock().expect("redirected").clone()
    }

    /// Applies the operator's routes: every port's table swapped, the redirect map set to
    /// the ports held. Returns whether the map changed (renew it now, then).
    pub async fn apply(&self, snapshot: &RouteSnapshot, link: &Arc<Link>) -> bool {
        let mut held = Vec::new();
        let mut named = std::collections::HashSet::new();
        for spec in &snapshot.ports {
            named.extend(spec.sessions());
            let plane = match self.plane(spec.port).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(port = spec.port, error = %e, "cannot listen for the port; it stays with the target");
                    continue;
                }
            };
            let routes = self.compile(spec, link);
            let held_now = !routes.is_empty();
            plane.routes.update(|r| *r = routes);
            if held_now {
                held.push((spec.port, plane.listen.port()));
            }
        }
        // Ports no longer named route nothing (their open connections finish).
        for (port, plane) in self.planes.lock().expect("planes").iter() {
            if !snapshot.ports.iter().any(|s| s.port == *port) {
                plane.routes.update(|r| *r = PortRoutes::default());
            }
        }
        self.sessions
            .lock()
            .expect("sessions")
            .retain(|id, _| named.contains(id));
        held.sort_unstable();
        let mut redirected = self.redirected.lock().expect("redirected");
        let changed = *redirected != held;
        *redirected = held;
        changed
    }

    fn compile(&self, spec: &PortRouteSpec, link: &Arc<Link>) -> PortRoutes {
        let mut routes = PortRoutes {
            unfiltered_steal: spec.steal.map(|s| self.subscriber(s, link)),
            ..PortRoutes::default()
        };
        for (s, f) in &spec.filtered {
            match compile(f) {
                Ok(f) => routes
                    .filtered_steals
                    .push((self.subscriber(*s, link), Arc::new(f))),
                Err(e) => {
                    tracing::error!(session = s, port = spec.port, error = %e, "filter refused here; the session gets nothing on this port")
                }
            }
        }
        for (s, f) in &spec.mirrors {
            let f = match f.as_ref().map(compile).transpose() {
                Ok(f) => f.map(Arc::new),
                Err(e) => {
                    tracing::error!(session = s, port = spec.port, error = %e, "filter refused here; the session gets nothing on this port");
                    continue;
                }
            };
            routes.mirrors.push((self.subscriber(*s, link), f));
        }
        routes
    }

    fn subscriber(&self, session_id: u64, link: &Arc<Link>) -> Subscriber {
        let (tx, copy_budget) = self
            .sessions
            .lock()
            .expect("sessions")
            .entry(session_id)
            .or_insert_with(|| {
                (
                    link.bridge(session_id, &self.handed),
                    Budget::new(budget::SESSION_COPY_BYTES),
                )
            })
            .clone();
        Subscriber {
            session_id,
            tx,
            // The operator counts what it receives, under the session's labels.
            counters: PortCounters::detached(),
            trace: Default::default(),
            copy_budget,
        }
    }
}

fn compile(spec: &HttpFilterSpec) -> Result<HttpFilter, mirrord_dataplane::FilterError> {
    let mut f = HttpFilter::compile_limited(spec, &LIMITS)?;
    for required in &spec.required_header {
        f.require_header(required, &LIMITS)?;
    }
    Ok(f)
}
