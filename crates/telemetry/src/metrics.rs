//! Prometheus metrics: the spec's six, named exactly as written there, plus additive ones.
//!
//! The `prometheus` crate's text encoder prints names as registered, which the spec's
//! counters need (`mirrord_stolen_connections_count` has no `_total`; a client that
//! appends `_total` itself would break the contract).
//!
//! Cardinality: series labelled by `session_id` are removed `series_grace` after their
//! session ends, so a long-running operator's exposition stays proportional to the
//! sessions of the last few minutes rather than all sessions ever.

use crate::event::{Event, SessionMeta};
use crate::labels::{forget, series, Context, Labels, Lock, Port, Reason, Stolen, User, Version};
use crate::ping_latency::{PingLatency, Series};
pub use prometheus::IntCounter;
use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Session durations: ten seconds to a day.
pub const SESSION_DURATION_BUCKETS: &[f64] = &[
    10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0,
];
/// Ping round trips: 100 µs to 5 s.
pub const PING_LATENCY_BUCKETS: &[f64] = &crate::ping_latency::BUCKETS;

/// Distinct (`client_name`, `client_hostname`) pairs one client's per-user series may use;
/// more are counted under `other`. Both are what a client says about itself, so without a
/// bound one client could create series at will; counters are never removed (`increase()`
/// would break), so the bound is on creation.
const LABEL_SETS_PER_CLIENT: usize = 4;
const OTHER: &str = "other";
/// Ended sessions of one client whose series are kept for `metrics_grace`: past this, the
/// oldest go at once. A client that opens and ends sessions in a loop would otherwise
/// leave ~18 series per session behind (1,280 sessions in 48 s grew `/metrics` from 0.66
/// to 3.4 MB); the recent ones are what a dashboard looks at.
pub const GRACED_SESSIONS_PER_CLIENT: usize = 16;

pub struct Metrics {
    registry: Registry,
    grace: Duration,
    /// The (name, hostname) pairs admitted as labels, per `client_id`.
    label_sets: Mutex<HashMap<String, Vec<(String, String)>>>,
    /// Ports that have stolen-traffic series, per session id, so they can be removed.
    session_ports: Mutex<HashMap<String, BTreeSet<u16>>>,
    /// Per client, its ended sessions whose series are still kept, oldest first.
    graced: Mutex<HashMap<String, VecDeque<Arc<SessionMeta>>>>,
    pub license_valid_seconds: Gauge,
    /// 1 when the operator enforces a license, so alerts on the gauge above can tell an
    /// expired license from none being required.
    pub license_enforced: IntGauge,
    /// With several replicas: 1 on the one that leads, 0 on a standby (absent without
    /// leader election), so `sum()` over replicas is 1 when all is well.
    pub leader: IntGauge,
    /// The leadership Lease's transitions as this replica last saw them (how many times
    /// the leadership changed hands since the Lease was made).
    pub leader_transitions: IntGauge,
    sessions_create_total: IntCounterVec,
    sessions_duration: HistogramVec,
    /// Outside the registry: see [`crate::ping_latency`].
    ping_latency: PingLatency,
    stolen_connections: IntCounterVec,
    stolen_requests: IntCounterVec,
    sessions_active: IntGauge,
    port_locks: IntGaugeVec,
    /// Held while a lock gauge changes or an idle one is removed, so a removal never
    /// drops a lock taken in between.
    lock_series: Mutex<()>,
    bypassed_requests: IntCounterVec,
    filter_limited_requests: IntCounterVec,
    refusals: IntCounterVec,
    mirror_copies_dropped: IntCounterVec,
    outgoing_connections: IntCounterVec,
    outgoing_bytes: IntCounterVec,
    dns_queries: IntCounterVec,
    file_operations: IntCounterVec,
    file_bytes: IntCounterVec,
}

/// What a session's process does through its target's context, counted by the session
/// (resolved once, when the session opens).
#[derive(Clone)]
pub struct ContextCounters {
    /// Outgoing connections made from the target, and those it could not make.
    pub connected: IntCounter,
    pub connect_failed: IntCounter,
    /// Bytes sent to the remote peers, and received from them.
    pub sent: IntCounter,
    pub received: IntCounter,
    /// Names resolved by the target, and those it could not resolve.
    pub resolved: IntCounter,
    pub resolve_failed: IntCounter,
    /// Operations on the target's files that succeeded, and those that failed.
    pub files_done: IntCounter,
    pub files_failed: IntCounter,
    /// Bytes of the target's files read by the process, and written back.
    pub file_read: IntCounter,
    pub file_written: IntCounter,
}

impl ContextCounters {
    /// Counters outside the registry (a context granted before its session exists, tests).
    pub fn detached() -> Self {
        let c = || IntCounter::new("detached", "not exported").expect("valid counter");
        Self {
            connected: c(),
            connect_failed: c(),
            sent: c(),
            received: c(),
            resolved: c(),
            resolve_failed: c(),
            files_done: c(),
            files_failed: c(),
            file_read: c(),
            file_written: c(),
        }
    }
}

/// Counters a port's data path increments directly (no label lookup per connection).
#[derive(Clone)]
pub struct PortCounters {
    pub connections: IntCounter,
    pub requests: IntCounter,
}

impl PortCounters {
    /// Counters outside the registry, for subscriptions that steal nothing (mirrors).
    /// Nobody reads them, so every such subscription shares one pair rather than carrying
    /// two counters of its own (~0.3 KB per idle mirror session).
    pub fn detached() -> Self {
        static DETACHED: std::sync::OnceLock<PortCounters> = std::sync::OnceLock::new();
        DETACHED
            .get_or_init(|| {
                let c = || IntCounter::new("detached", "not exported").expect("valid counter");
                Self {
                    connections: c(),
                    requests: c(),
                }
            })
            .clone()
    }
}

/// Mirror copies of HTTP requests that were not delivered, by why (resolved once).
#[derive(Clone)]
pub struct CopyDrops {
    /// The body was longer than one copy may be.
    pub too_large: IntCounter,
    /// The copy budget (the session's or the process's) had no room.
    pub budget: IntCounter,
    /// The session's queue was full (its developer is behind).
    pub behind: IntCounter,
}

/// Per-(target, port) counters of what the port's filters decided: requests a filtered
/// steal let through, and requests a filter could not decide within its backtracking limit
/// (not matched, so they went where unmatched requests go).
#[derive(Clone)]
pub struct BypassCounter {
    pub bypassed: IntCounter,
    pub limited: IntCounter,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: T) -> T {
    r.register(Box::new(m.clone()))
        .expect("metric names are unique");
    m
}

impl Metrics {
    pub fn new(grace: Duration) -> Self {
        let r = Registry::new();
        let hist = |name: &str, help: &str, buckets: &[f64], labels: &[&str]| {
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                labels,
            )
            .expect("valid histogram")
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter")
        };
        let build_info = IntGaugeVec::new(
            Opts::new(
                "mirrord_build_info",
                "Operator build information (always 1)",
            ),
            &Version::NAMES,
        )
        .expect("valid gauge");
        series(&build_info, &Version(env!("CARGO_PKG_VERSION"))).set(1);
        reg(&r, build_info);
        Self {
            license_valid_seconds: reg(
                &r,
                Gauge::new(
                    "mirrord_license_valid_seconds",
                    "Seconds left for current license validity",
                )
                .expect("valid gauge"),
            ),
            license_enforced: reg(
                &r,
                IntGauge::new(
                    "mirrord_license_enforced",
                    "1 when the operator requires a license for new sessions",
                )
                .expect("valid gauge"),
            ),
            leader: IntGauge::new(
                "mirrord_leader",
                "1 on the operator replica that leads, 0 on a standby",
            )
            .expect("valid gauge"),
            leader_transitions: IntGauge::new(
                "mirrord_leader_transitions",
                "Times the operator's leadership changed hands, as this replica last saw its Lease",
            )
            .expect("valid gauge"),
            sessions_create_total: reg(
                &r,
                counter(
                    "mirrord_sessions_create_total",
                    "Count of created sessions",
                    &User::NAMES,
                ),
            ),
            sessions_duration: reg(
                &r,
                hist(
                    "mirrord_sessions_duration",
                    "Histogram for session durations after they are ended",
                    SESSION_DURATION_BUCKETS,
                    &User::NAMES,
                ),
            ),
            ping_latency: PingLatency::default(),
            stolen_connections: reg(
                &r,
                counter(
                    "mirrord_stolen_connections_count",
                    "Count of stolen incoming connections",
                    &Stolen::NAMES,
                ),
            ),
            stolen_requests: reg(
                &r,
                counter(
                    "mirrord_stolen_requests_count",
                    "Count of stolen HTTP requests",
                    &Stolen::NAMES,
                ),
            ),
            sessions_active: reg(
                &r,
                IntGauge::new("mirrord_sessions_active", "Sessions currently open")
                    .expect("valid gauge"),
            ),
            port_locks: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "mirrord_port_locks",
                        "Ports currently held by sessions, by target, port and mode",
                    ),
                    &Lock::NAMES,
                )
                .expect("valid gauge"),
            ),
            bypassed_requests: reg(
                &r,
                counter(
                    "mirrord_bypassed_requests_total",
                    "HTTP requests a filtered steal let through to the target",
                    &Port::NAMES,
                ),
            ),
            filter_limited_requests: reg(
                &r,
                counter(
                    "mirrord_filter_limited_requests_total",
                    "HTTP requests a filter could not decide within its backtracking limit (treated as not matching)",
                    &Port::NAMES,
                ),
            ),
            refusals: reg(
                &r,
                counter(
                    "mirrord_session_refusals_total",
                    "Session requests the operator refused, by reason",
                    &Reason::NAMES,
                ),
            ),
            mirror_copies_dropped: reg(
                &r,
                counter(
                    "mirrord_mirror_copies_dropped_total",
                    "Mirror copies of HTTP requests not delivered to a developer, by reason (too_large, budget, behind); the real requests are never affected",
                    &Reason::NAMES,
                ),
            ),
            outgoing_connections: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "mirrord_outgoing_connections_count",
                        "Outgoing TCP connections a session's process made from its target (result: connected, failed)",
                    ),
                    &Context::RESULT,
                )
                .expect("valid counter"),
            ),
            outgoing_bytes: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "mirrord_outgoing_bytes_count",
                        "Bytes of a session's outgoing connections (direction: sent to the remote peer, received from it)",
                    ),
                    &Context::DIRECTION,
                )
                .expect("valid counter"),
            ),
            dns_queries: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "mirrord_dns_queries_count",
                        "Names a session's process resolved through its target (result: resolved, failed)",
                    ),
                    &Context::RESULT,
                )
                .expect("valid counter"),
            ),
            file_operations: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "mirrord_file_operations_count",
                        "Operations a session's process made on its target's files (result: done, failed)",
                    ),
                    &Context::RESULT,
                )
                .expect("valid counter"),
            ),
            file_bytes: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "mirrord_file_bytes_count",
                        "Bytes of its target's files a session's process read, and wrote back (direction: read, written)",
                    ),
                    &Context::DIRECTION,
                )
                .expect("valid counter"),
            ),
            lock_series: Mutex::default(),
            registry: r,
            grace,
            session_ports: Mutex::default(),
            graced: Mutex::default(),
            label_sets: Mutex::default(),
        }
    }

    /// Exports the leadership gauges: this process is one of several replicas (from its
    /// start, as a standby at 0).
    pub fn elected(&self) {
        for g in [&self.leader, &self.leader_transitions] {
            // Twice is harmless: the series are the same.
            let _ = self.registry.register(Box::new(g.clone()));
        }
    }

    /// Creates the refusal series of every `reason` at 0, so the first refusal of each is
    /// an increase Prometheus sees (a series born at 1 reads 0 in `increase()`).
    pub fn known_refusal_reasons(&self, reasons: &[&str]) {
        for r in reasons {
            series(&self.refusals, &Reason(r));
        }
    }

    /// Who opened the session, with the self-reported name and hostname bounded per client
    /// (see [`LABEL_SETS_PER_CLIENT`]).
    fn user_labels(&self, s: &SessionMeta) -> User {
        let c = &s.client;
        let pair = (c.client_name.clone(), c.client_hostname.clone());
        let mut sets = self.label_sets.lock().expect("not poisoned");
        let known = sets.entry(c.client_id.clone()).or_default();
        let admitted = known.contains(&pair) || {
            let room = known.len() < LABEL_SETS_PER_CLIENT;
            if room {
                known.push(pair.clone());
            }
            room
        };
        let (client_name, client_hostname) = match admitted {
            true => pair,
            false => (OTHER.to_owned(), OTHER.to_owned()),
        };
        User {
            client_hostname,
            client_name,
            client_user: c.client_user.clone(),
            user_id: c.client_id.clone(),
        }
    }

    fn stolen_labels(s: &SessionMeta, port: u16) -> Stolen {
        Stolen {
            session_id: s.session_id.clone(),
            port: port.to_string(),
            namespace: s.target_namespace.clone(),
            target: s.target(),
            user_id: s.client.client_id.clone(),
        }
    }

    /// Handles for the data plane: created with the port's subscription.
    pub fn port_counters(&self, s: &SessionMeta, port: u16) -> PortCounters {
        self.session_ports
            .lock()
            .expect("not poisoned")
            .entry(s.session_id.clone())
            .or_default()
            .insert(port);
        let l = Self::stolen_labels(s, port);
        PortCounters {
            connections: series(&self.stolen_connections, &l),
            requests: series(&self.stolen_requests, &l),
        }
    }

    /// The counters of a session's context (created at 0, so the first increase shows).
    pub fn context_counters(&self, s: &SessionMeta) -> ContextCounters {
        let target = s.target();
        let l = |what| Context {
            session_id: &s.session_id,
            namespace: &s.target_namespace,
            target: &target,
            user_id: &s.client.client_id,
            what,
        };
        ContextCounters {
            connected: series(&self.outgoing_connections, &l("connected")),
            connect_failed: series(&self.outgoing_connections, &l("failed")),
            sent: series(&self.outgoing_bytes, &l("sent")),
            received: series(&self.outgoing_bytes, &l("received")),
            resolved: series(&self.dns_queries, &l("resolved")),
            resolve_failed: series(&self.dns_queries, &l("failed")),
            files_done: series(&self.file_operations, &l("done")),
            files_failed: series(&self.file_operations, &l("failed")),
            file_read: series(&self.file_bytes, &l("read")),
            file_written: series(&self.file_bytes, &l("written")),
        }
    }

    /// The dropped-copy counters, every reason created at 0.
    pub fn copy_drops(&self) -> CopyDrops {
        let c = |r: &str| series(&self.mirror_copies_dropped, &Reason(r));
        CopyDrops {
            too_large: c("too_large"),
            budget: c("budget"),
            behind: c("behind"),
        }
    }

    pub fn bypass_counter(&self, namespace: &str, target: &str, port: u16) -> BypassCounter {
        let labels = Port {
            namespace,
            target,
            port: port.to_string(),
        };
        BypassCounter {
            bypassed: series(&self.bypassed_requests, &labels),
            limited: series(&self.filter_limited_requests, &labels),
        }
    }

    /// What filtered steals on a target's port have let through so far (the console's
    /// "bypassed"; the same series as `mirrord_bypassed_requests_total`).
    pub fn bypassed_requests_of(&self, namespace: &str, target: &str, port: u16) -> u64 {
        let labels = Port {
            namespace,
            target,
            port: port.to_string(),
        };
        series(&self.bypassed_requests, &labels).get()
    }

    pub(crate) fn observe(self: &Arc<Self>, event: &Event) {
        match event {
            Event::SessionStarted { session } => {
                let user = self.user_labels(session);
                series(&self.sessions_create_total, &user).inc();
                self.sessions_active.inc();
                // Exists (at zero) before the first observation, so `rate()` sees the
                // user's first session end as an increase.
                let _ = series(&self.sessions_duration, &user);
                // The series exists from the start, so a session that never answers a
                // ping still shows up (with an empty histogram) while it lives.
                let _ = self.ping_latency.series(
                    &session.session_id,
                    &session.client.client_user,
                    &session.target(),
                );
            }
            Event::SessionEnded {
                session, duration, ..
            } => {
                let user = self.user_labels(session);
                series(&self.sessions_duration, &user).observe(duration.as_secs_f64());
                self.sessions_active.dec();
                self.forget_later(session.clone());
            }
            Event::PortStolen { session, port, .. } => {
                self.lock_change(session, *port, "steal", 1);
            }
            Event::PortMirrored { session, port, .. } => {
                self.lock_change(session, *port, "mirror", 1);
            }
            Event::PortReleased {
                session,
                port,
                mode,
                ..
            } => {
                self.lock_change(session, *port, mode, -1);
            }
            Event::TargetCopied { .. } => {}
            Event::PingLatency { session, rtt } => {
                self.ping_latency.observe(
                    &session.session_id,
                    &session.client.client_user,
                    &session.target(),
                    rtt.as_secs_f64(),
                );
            }
            Event::SessionRefused { reason, .. } => {
                series(&self.refusals, &Reason(reason)).inc();
            }
            Event::SessionKilled { .. }
            | Event::PortTakenOver { .. }
            | Event::RequestForbidden { .. }
            | Event::CredentialRevoked { .. } => {}
        }
    }

    fn lock_change(&self, s: &SessionMeta, port: u16, mode: &str, delta: i64) {
        let _guard = self.lock_series.lock().expect("not poisoned");
        let lock = Lock {
            target: &s.target(),
            port: &port.to_string(),
            mode,
        };
        series(&self.port_locks, &lock).add(delta);
    }

    /// Removes the lock series of the session's target that nobody holds any more, so
    /// targets no one uses stop being exported (a series comes back with the next lock).
    fn forget_idle_locks(&self, s: &SessionMeta) {
        use prometheus::core::Collector;
        let _guard = self.lock_series.lock().expect("not poisoned");
        let target = s.target();
        for family in self.port_locks.collect() {
            for m in family.get_metric() {
                let labels: HashMap<&str, &str> = m
                    .get_label()
                    .iter()
                    .map(|l| (l.name(), l.value()))
                    .collect();
                if labels.get("target") == Some(&target.as_str())
                    && m.get_gauge().get_value() == 0.0
                {
                    let lock = Lock {
                        target: &target,
                        port: labels["port"],
                        mode: labels["mode"],
                    };
                    forget(&self.port_locks, &lock);
                }
            }
        }
    }

    /// Drops the session's series after the grace period, long enough for several scrapes
    /// to see their final values; at once for the oldest ended sessions of a client past
    /// [`GRACED_SESSIONS_PER_CLIENT`].
    fn forget_later(self: &Arc<Self>, session: Arc<SessionMeta>) {
        let evicted = {
            let mut graced = self.graced.lock().expect("not poisoned");
            let queue = graced.entry(session.client.client_id.clone()).or_default();
            queue.push_back(Arc::clone(&session));
            (queue.len() > GRACED_SESSIONS_PER_CLIENT).then(|| queue.pop_front())
        };
        if let Some(Some(oldest)) = evicted {
            self.forget_session(&oldest);
        }
        let me = Arc::clone(self);
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // Detached: a timer that only removes series; nothing is lost if the process ends
        // first.
        rt.spawn(async move {
            tokio::time::sleep(me.grace).await;
            me.ungrace(&session);
            me.forget_session(&session);
        });
    }

    /// Takes an ended session off its client's graced list (its series are going).
    fn ungrace(&self, s: &SessionMeta) {
        let mut graced = self.graced.lock().expect("not poisoned");
        if let Some(q) = graced.get_mut(&s.client.client_id) {
            q.retain(|m| m.session_id != s.session_id);
            if q.is_empty() {
                graced.remove(&s.client.client_id);
            }
        }
    }

    /// Requests stolen by the session so far, over its ports (for the console). Reads only
    /// series that exist: under the lock `forget_session` takes first, so it never brings
    /// back a series being removed.
    pub fn stolen_requests_of(&self, s: &SessionMeta) -> u64 {
        let ports = self.session_ports.lock().expect("not poisoned");
        let Some(ports) = ports.get(&s.session_id) else {
            return 0;
        };
        ports
            .iter()
            .map(|p| series(&self.stolen_requests, &Self::stolen_labels(s, *p)).get())
            .sum()
    }

    /// Removes every series labelled with this session's id.
    pub fn forget_session(&self, s: &SessionMeta) {
        self.ping_latency.remove(&s.session_id);
        let ports = self
            .session_ports
            .lock()
            .expect("not poisoned")
            .remove(&s.session_id)
            .unwrap_or_default();
        self.forget_idle_locks(s);
        let target = s.target();
        for (vec, whats) in [
            (&self.outgoing_connections, ["connected", "failed"]),
            (&self.outgoing_bytes, ["sent", "received"]),
            (&self.dns_queries, ["resolved", "failed"]),
            (&self.file_operations, ["done", "failed"]),
            (&self.file_bytes, ["read", "written"]),
        ] {
            for what in whats {
                let l = Context {
                    session_id: &s.session_id,
                    namespace: &s.target_namespace,
                    target: &target,
                    user_id: &s.client.client_id,
                    what,
                };
                forget(vec, &l);
            }
        }
        for port in ports {
            let l = Self::stolen_labels(s, port);
            forget(&self.stolen_connections, &l);
            forget(&self.stolen_requests, &l);
        }
    }

    /// The Prometheus text exposition (format 0.0.4), whole.
    pub fn encode(self: &Arc<Self>) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in self.exposition() {
            out.extend_from_slice(&chunk);
        }
        out
    }

    /// The exposition in chunks of about [`CHUNK`] bytes, each written when asked for: a
    /// scrape holds one chunk at a time rather than the whole text (20 MB at 10,000
    /// sessions), so it leaves no large freed heap behind.
    pub fn exposition(self: &Arc<Self>) -> Exposition {
        let (mut head, mut tail) = (Vec::new(), Vec::new());
        let encoder = TextEncoder::new();
        for family in self.registry.gather() {
            let out = match family.name() < crate::ping_latency::NAME {
                true => &mut head,
                false => &mut tail,
            };
            encoder
                .encode(std::slice::from_ref(&family), out)
                .expect("text encoding of gathered metrics cannot fail");
        }
        let series = self.ping_latency.snapshot();
        // Like the crate's encoder: a family with no series is not written at all.
        if !series.is_empty() {
            PingLatency::write_header(&mut head);
        }
        Exposition {
            metrics: Arc::clone(self),
            head: Some(head),
            series: series.into_iter(),
            tail: Some(tail),
        }
    }
}

/// Bytes per chunk of a streamed exposition.
pub const CHUNK: usize = 64 * 1024;

/// A `/metrics` response body: the exposition, made a chunk at a time (see
/// [`Metrics::exposition`]).
pub struct Exposition {
    metrics: Arc<Metrics>,
    head: Option<Vec<u8>>,
    series: std::vec::IntoIter<Arc<Series>>,
    tail: Option<Vec<u8>>,
}

impl Iterator for Exposition {
    type Item = hyper::body::Bytes;

    fn next(&mut self) -> Option<Self::Item> {
        let mut buf = self.head.take().unwrap_or_default();
        buf.reserve(CHUNK);
        while buf.len() < CHUNK {
            match self.series.next() {
                Some(s) => self.metrics.ping_latency.write_series(&s, &mut buf),
                None => {
                    if let Some(tail) = self.tail.take() {
                        buf.extend_from_slice(&tail);
                    }
                    break;
                }
            }
        }
        (!buf.is_empty()).then(|| buf.into())
    }
}

impl hyper::body::Body for Exposition {
    type Data = hyper::body::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::task::Poll::Ready(
            self.get_mut()
                .next()
                .map(|b| Ok(hyper::body::Frame::data(b))),
        )
    }
}

/// Serves `GET /metrics` on `listener` until the process ends.
pub async fn serve_on(metrics: Arc<Metrics>, listener: tokio::net::TcpListener) {
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    use hyper::{Response, StatusCode};

    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "metrics endpoint listening on http://{addr}/metrics");
    }
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed");
                continue;
            }
        };
        let metrics = metrics.clone();
        // Detached: one scrape's connection; a scrape cut by the process ending is retried.
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: hyper::Request<_>| {
                let metrics = metrics.clone();
                async move {
                    let resp = if req.uri().path() == "/metrics" {
                        Response::builder()
                            .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                            .body(metrics.exposition().boxed())
                    } else {
                        Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body(Full::new(Bytes::from_static(b"try /metrics\n")).boxed())
                    };
                    Ok::<_, std::convert::Infallible>(resp.expect("static response parts"))
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::ClientInfo;

    fn meta() -> Arc<SessionMeta> {
        Arc::new(SessionMeta {
            session_id: "00000000000000AB".into(),
            target_type: "deployment".into(),
            target_name: "api".into(),
            target_namespace: "default".into(),
            client: ClientInfo {
                client_id: "cafe".into(),
                client_user: "alice".into(),
                client_name: "Alice".into(),
                client_hostname: "box".into(),
                cli_version: "0.1.0".into(),
            },
        })
    }

    #[tokio::test(start_paused = true)]
    async fn exact_names_and_session_series_expire() {
        let m = Arc::new(Metrics::new(Duration::from_secs(600)));
        let s = meta();
        m.observe(&Event::SessionStarted { session: s.clone() });
        m.port_counters(&s, 80).connections.inc();
        m.port_counters(&s, 80).requests.inc_by(2);
        let text = String::from_utf8(m.encode()).unwrap();
        assert!(text.contains("mirrord_stolen_connections_count{"), "{text}");
        assert!(!text.contains("mirrord_stolen_connections_count_total"));
        assert!(text.contains(r#"mirrord_sessions_create_total{client_hostname="box",client_name="Alice",client_user="alice",user_id="cafe"} 1"#));

        m.observe(&Event::SessionEnded {
            session: s.clone(),
            duration: Duration::from_secs(42),
            reason: "test".into(),
        });
        tokio::time::sleep(Duration::from_secs(599)).await;
        let text = String::from_utf8(m.encode()).unwrap();
        assert!(text.contains("00000000000000AB"), "series gone too early");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let text = String::from_utf8(m.encode()).unwrap();
        assert!(!text.contains("00000000000000AB"), "{text}");
        assert!(text.contains("mirrord_sessions_duration_sum"));
    }

    /// One client opening and ending sessions in a loop keeps the series of its latest
    /// few only, not of every session of the last `metrics_grace`.
    #[tokio::test(start_paused = true)]
    async fn a_client_churning_sessions_keeps_a_bounded_number_of_series() {
        let m = Arc::new(Metrics::new(Duration::from_secs(600)));
        let series = |m: &Arc<Metrics>| {
            String::from_utf8(m.encode())
                .unwrap()
                .lines()
                .filter(|l| l.contains("session_id=\""))
                .count()
        };
        let mut per_session = 0;
        for i in 0..200u32 {
            let mut s = (*meta()).clone();
            s.session_id = format!("{i:016X}");
            let s = Arc::new(s);
            m.observe(&Event::SessionStarted { session: s.clone() });
            m.port_counters(&s, 80).requests.inc();
            m.observe(&Event::PingLatency {
                session: s.clone(),
                rtt: Duration::from_millis(1),
            });
            if i == 0 {
                per_session = series(&m);
            }
            m.observe(&Event::SessionEnded {
                session: s,
                duration: Duration::from_secs(1),
                reason: "test".into(),
            });
        }
        assert!(per_session > 0);
        assert_eq!(series(&m), per_session * GRACED_SESSIONS_PER_CLIENT);
        let text = String::from_utf8(m.encode()).unwrap();
        assert!(
            text.contains(&format!("{:016X}", 199)),
            "the latest are kept"
        );
        assert!(
            !text.contains(&format!("{:016X}", 0)),
            "the oldest are gone"
        );
        // And the kept ones still go after the grace period.
        tokio::time::sleep(Duration::from_secs(601)).await;
        assert_eq!(series(&m), 0);
    }

    #[test]
    fn self_reported_labels_cannot_grow_series_without_bound() {
        let m = Arc::new(Metrics::new(Duration::from_secs(600)));
        for i in 0..50 {
            let mut s = (*meta()).clone();
            s.client.client_name = format!("name-{i}");
            s.client.client_hostname = format!("host-{i}");
            m.observe(&Event::SessionStarted {
                session: Arc::new(s),
            });
        }
        let text = String::from_utf8(m.encode()).unwrap();
        let series = text
            .lines()
            .filter(|l| l.starts_with("mirrord_sessions_create_total{"))
            .count();
        assert_eq!(series, LABEL_SETS_PER_CLIENT + 1, "{text}");
        assert!(text.contains(r#"mirrord_sessions_create_total{client_hostname="other",client_name="other",client_user="alice",user_id="cafe"} 46"#), "{text}");
        // A known pair keeps its own series.
        let mut s = (*meta()).clone();
        s.client.client_name = "name-0".into();
        s.client.client_hostname = "host-0".into();
        m.observe(&Event::SessionStarted {
            session: Arc::new(s),
        });
        let text = String::from_utf8(m.encode()).unwrap();
        assert!(text.contains(r#"client_hostname="host-0",client_name="name-0",client_user="alice",user_id="cafe"} 2"#), "{text}");
    }
}
