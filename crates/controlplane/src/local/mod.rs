//! The single-machine backend: targets named in the config file, an interceptor in front of
//! each port, and (with `command`) replicas the operator runs and restarts itself
//! ([`replica`]). A copy is one more replica behind the same interceptor: it shares the
//! target's traffic and its routes; with scale down it is the only replica left.

mod context;
mod replica;

use crate::backend::{BackendError, Target, TargetBackend, TargetContext, TargetCopy};
use crate::config::TargetSpec;
use futures::future::BoxFuture;
use mirrord_dataplane::budget::Budget;
use mirrord_dataplane::{Endpoint, InterceptorLimits, PortPlane, PortServices, RouteTable};
use mirrord_protocol::{SessionId, TargetRef};
use mirrord_telemetry::Telemetry;
use replica::{Replica, ReplicaDir};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct LocalBackend {
    targets: Vec<Arc<LocalTarget>>,
}

impl LocalBackend {
    /// Binds every port's interceptor and starts the replicas, after removing any that an
    /// operator which died before this one left running.
    /// `copy_budget`: what mirror copies of every port may hold at once.
    pub async fn start(
        specs: &[TargetSpec],
        telemetry: &Telemetry,
        state_dir: &Path,
        interception: InterceptorLimits,
        copy_budget: Arc<Budget>,
    ) -> std::io::Result<Self> {
        let replicas = ReplicaDir::open(state_dir)?;
        let reaped = replicas.reap_orphans();
        if reaped > 0 {
            tracing::warn!(
                reaped,
                "removed replicas left running by a previous operator"
            );
        }
        let mut targets = Vec::new();
        for spec in specs {
            targets.push(
                LocalTarget::start(
                    spec.clone(),
                    telemetry,
                    replicas.clone(),
                    interception,
                    &copy_budget,
                )
                .await?,
            );
        }
        Ok(Self { targets })
    }

    pub fn targets(&self) -> &[Arc<LocalTarget>] {
        &self.targets
    }
}

impl TargetBackend for LocalBackend {
    fn target(&self, r: &TargetRef) -> BoxFuture<'_, Result<Arc<dyn Target>, BackendError>> {
        Box::pin(std::future::ready(self.find(r)))
    }
}

impl LocalBackend {
    fn find(&self, r: &TargetRef) -> Result<Arc<dyn Target>, BackendError> {
        if let Some(c) = &r.container {
            return Err(BackendError::UnknownContainer(format!(
                "{r}/container/{c}: targets on one machine are services without containers; name the target without `/container/{c}` (and without mirrord.json's `target.container`)"
            )));
        }
        self.targets
            .iter()
            .find(|t| &t.reference == r)
            .map(|t| Arc::clone(t) as Arc<dyn Target>)
            .ok_or_else(|| BackendError::UnknownTarget {
                target: r.to_string(),
                namespace: r.namespace.clone(),
                known: self
                    .targets
                    .iter()
                    .map(|t| format!("{} ({})", t.reference, t.reference.namespace))
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

struct Copy {
    id: u64,
    replica: Replica,
}

#[derive(Default)]
struct Pool {
    originals: Vec<Replica>,
    /// Originals stopped for this session's copy.
    scaled_down_by: Option<String>,
    copies: Vec<Copy>,
}

pub struct LocalTarget {
    reference: TargetRef,
    spec: TargetSpec,
    planes: Vec<Arc<PortPlane>>,
    replicas: ReplicaDir,
    pool: Mutex<Pool>,
    next_copy: std::sync::atomic::AtomicU64,
}

impl LocalTarget {
    async fn start(
        spec: TargetSpec,
        telemetry: &Telemetry,
        replicas: ReplicaDir,
        interception: InterceptorLimits,
        copy_budget: &Arc<Budget>,
    ) -> std::io::Result<Arc<Self>> {
        let reference = TargetRef {
            kind: spec.kind.clone(),
            name: spec.name.clone(),
            namespace: spec.namespace.clone(),
            container: None,
        };
        let mut planes = Vec::new();
        let mut listeners = Vec::new();
        for p in &spec.ports {
            let services = PortServices {
                bypass: telemetry.metrics().bypass_counter(
                    &spec.namespace,
                    &reference.to_string(),
                    p.port,
                ),
                copy_drops: telemetry.metrics().copy_drops(),
                copy_budget: Arc::clone(copy_budget),
            };
            let routes = Arc::default();
            let (plane, l) =
                PortPlane::bind(p.port, *p.listen.get_ref(), services, routes, interception)
                    .await
                    .map_err(|e| {
                        std::io::Error::new(
                            e.kind(),
                            format!(
                                "cannot listen on {} for port {} of {reference}: {e}",
                                p.listen.get_ref(),
                                p.port
                            ),
                        )
                    })?;
            planes.push(plane);
            listeners.push(l);
        }
        let target = Arc::new(Self {
            reference,
            spec,
            planes,
            replicas,
            pool: Mutex::default(),
            next_copy: 0.into(),
        });
        target.start_originals();
        for (plane, l) in target.planes.iter().zip(listeners) {
            plane.spawn(l);
            tracing::info!(
                target_ref = %target.reference,
                port = plane.port,
                listen = %plane.listen,
                "interceptor listening"
            );
        }
        Ok(target)
    }

    fn start_originals(self: &Arc<Self>) {
        let replicas = match &self.spec.command {
            Some(_) => (0..self.spec.replicas)
                .map(|i| self.spawn_replica(format!("{}-{i}", self.spec.name)))
                .collect(),
            None => Vec::new(),
        };
        self.pool.lock().expect("pool lock").originals = replicas;
        self.refresh();
    }

    /// Recomputes every port's endpoints from the replicas that are ready now.
    fn refresh(&self) {
        let pool = self.pool.lock().expect("pool lock");
        for (i, plane) in self.planes.iter().enumerate() {
            let mut eps = Vec::new();
            if pool.scaled_down_by.is_none() {
                match &self.spec.command {
                    None => eps.push(Arc::new(Endpoint {
                        name: self.spec.name.clone(),
                        upstream: *self.spec.ports[i]
                            .upstream
                            .as_ref()
                            .expect("validated")
                            .get_ref(),
                    })),
                    Some(_) => eps.extend(pool.originals.iter().filter_map(|r| endpoint(r, i))),
                }
            }
            eps.extend(pool.copies.iter().filter_map(|c| endpoint(&c.replica, i)));
            plane.set_endpoints(eps);
        }
    }

    fn spawn_replica(self: &Arc<Self>, name: String) -> Replica {
        let me = Arc::downgrade(self);
        replica::supervise(
            self.replicas.clone(),
            name,
            self.spec
                .command
                .clone()
                .expect("only called with a command"),
            self.spec.ports.iter().map(|p| p.port).collect(),
            move || {
                if let Some(t) = me.upgrade() {
                    t.refresh();
                }
            },
        )
    }
}

fn endpoint(r: &Replica, port_index: usize) -> Option<Arc<Endpoint>> {
    r.ready.borrow().as_ref().map(|addrs| {
        Arc::new(Endpoint {
            name: r.name.clone(),
            upstream: addrs[port_index],
        })
    })
}

impl Target for LocalTarget {
    fn reference(&self) -> &TargetRef {
        &self.reference
    }

    fn labels(&self) -> std::collections::BTreeMap<String, String> {
        self.spec.labels.clone()
    }

    fn ports(&self) -> Vec<u16> {
        self.spec.ports.iter().map(|p| p.port).collect()
    }

    fn routes(&self, port: u16) -> Option<Arc<RouteTable>> {
        let i = self.spec.ports.iter().position(|p| p.port == port)?;
        Some(Arc::clone(&self.planes[i].routes))
    }

    fn context(
        self: Arc<Self>,
        _session: SessionId,
        // One machine's targets have no containers (`/container/` is refused on opening).
        _container: Option<String>,
    ) -> BoxFuture<'static, Result<Arc<dyn TargetContext>, BackendError>> {
        let found = match &self.spec.command {
            None => Err(BackendError::Unavailable(format!(
                "{} is a service the operator does not run (no `command`): it has no process to take an environment or a network from",
                self.reference
            ))),
            Some(_) => {
                let pool = self.pool.lock().expect("pool lock");
                pool.originals
                    .iter()
                    .find_map(|r| Some((r.name.clone(), (*r.pid.borrow())?)))
                    .ok_or_else(|| {
                        BackendError::Unavailable(format!("no replica of {} is running", self.reference))
                    })
            }
        };
        Box::pin(std::future::ready(found.and_then(|(name, pid)| {
            context::ReplicaContext::of(&name, pid).map(|c| c as Arc<dyn TargetContext>)
        })))
    }

    fn copy(
        self: Arc<Self>,
        session: String,
        scale_down: bool,
    ) -> BoxFuture<'static, Result<Box<dyn TargetCopy>, BackendError>> {
        Box::pin(async move {
            let me = self;
            if me.spec.command.is_none() {
                return Err(BackendError::CopyUnavailable(format!(
                    "{} has no `command` in the operator's config, so it cannot be copied",
                    me.reference
                )));
            }
            let id = me
                .next_copy
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let name = format!(
                "mirrord-copy-{}-{:08x}",
                me.spec.name,
                rand::random::<u32>()
            );
            {
                let mut pool = me.pool.lock().expect("pool lock");
                if scale_down {
                    if let Some(holder) = &pool.scaled_down_by {
                        return Err(BackendError::ScaleDownConflict(format!(
                            "{} is already scaled down by session {holder}; only one session at a time may scale a target down",
                            me.reference
                        )));
                    }
                    pool.scaled_down_by = Some(session.clone());
                }
                let replica = me.spawn_replica(name.clone());
                pool.copies.push(Copy { id, replica });
            }
            let handle = LocalCopy {
                target: Arc::clone(&me),
                id,
                name,
                scale_down,
            };
            let mut ready = {
                let pool = me.pool.lock().expect("pool lock");
                pool.copies
                    .iter()
                    .find(|c| c.id == id)
                    .expect("just added")
                    .replica
                    .ready
                    .clone()
            };
            // On failure the copy is cleaned up by dropping `handle`.
            let ok = tokio::time::timeout(Duration::from_secs(30), ready.wait_for(|r| r.is_some()))
                .await;
            if !matches!(ok, Ok(Ok(_))) {
                return Err(BackendError::CopyUnavailable(format!(
                    "copy {} of {} did not accept connections within 30 s",
                    handle.name, me.reference
                )));
            }
            if scale_down {
                // Stop the originals: dropping a replica stops its supervisor and process.
                let stopped = std::mem::take(&mut me.pool.lock().expect("pool lock").originals);
                drop(stopped);
            }
            me.refresh();
            Ok(Box::new(handle) as Box<dyn TargetCopy>)
        })
    }
}

struct LocalCopy {
    target: Arc<LocalTarget>,
    id: u64,
    name: String,
    scale_down: bool,
}

impl TargetCopy for LocalCopy {
    fn name(&self) -> &str {
        &self.name
    }

    fn context(
        &self,
        _session: SessionId,
        _container: Option<String>,
    ) -> BoxFuture<'static, Result<Arc<dyn TargetContext>, BackendError>> {
        let pid = {
            let pool = self.target.pool.lock().expect("pool lock");
            pool.copies
                .iter()
                .find(|c| c.id == self.id)
                .and_then(|c| *c.replica.pid.borrow())
        };
        let found = match pid {
            Some(pid) => {
                context::ReplicaContext::of(&self.name, pid).map(|c| c as Arc<dyn TargetContext>)
            }
            None => Err(BackendError::Unavailable(format!(
                "copy {} is not running",
                self.name
            ))),
        };
        Box::pin(std::future::ready(found))
    }
}

impl Drop for LocalCopy {
    fn drop(&mut self) {
        let restore = {
            let mut pool = self.target.pool.lock().expect("pool lock");
            pool.copies.retain(|c| c.id != self.id);
            if self.scale_down && pool.scaled_down_by.is_some() {
                pool.scaled_down_by = None;
                true
            } else {
                false
            }
        };
        if restore {
            self.target.start_originals();
        } else {
            self.target.refresh();
        }
    }
}
