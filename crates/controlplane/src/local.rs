//! The single-machine backend: targets named in the config file, an interceptor in front of
//! each port, and (with `command`) replicas the operator runs and restarts itself.

use crate::backend::{BackendError, Target, TargetBackend, TargetCopy};
use crate::config::TargetSpec;
use futures::future::BoxFuture;
use mirrord_dataplane::{Endpoint, PortPlane, RouteTable};
use mirrord_protocol::TargetRef;
use mirrord_telemetry::Telemetry;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::process::Command;
use tokio::sync::watch;

pub struct LocalBackend {
    targets: Vec<Arc<LocalTarget>>,
}

impl LocalBackend {
    /// Binds every port's interceptor and starts the replicas.
    pub async fn start(specs: &[TargetSpec], telemetry: &Telemetry) -> std::io::Result<Self> {
        let mut targets = Vec::new();
        for spec in specs {
            targets.push(LocalTarget::start(spec.clone(), telemetry).await?);
        }
        Ok(Self { targets })
    }

    pub fn targets(&self) -> &[Arc<LocalTarget>] {
        &self.targets
    }
}

impl TargetBackend for LocalBackend {
    fn target(&self, r: &TargetRef) -> Result<Arc<dyn Target>, BackendError> {
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

/// One replica: its name, and where it listens once it accepts connections.
struct Replica {
    name: String,
    ready: watch::Receiver<Option<Vec<SocketAddr>>>,
    _stop: watch::Sender<bool>,
}

struct Copy {
    id: u64,
    replica: Replica,
    routes: Vec<Arc<RouteTable>>,
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
    original_routes: Vec<Arc<RouteTable>>,
    pool: Mutex<Pool>,
    next_copy: std::sync::atomic::AtomicU64,
}

impl LocalTarget {
    async fn start(spec: TargetSpec, telemetry: &Telemetry) -> std::io::Result<Arc<Self>> {
        let reference = TargetRef {
            kind: spec.kind.clone(),
            name: spec.name.clone(),
            namespace: spec.namespace.clone(),
        };
        let mut planes = Vec::new();
        let mut listeners = Vec::new();
        for p in &spec.ports {
            let bypass =
                telemetry
                    .metrics()
                    .bypass_counter(&spec.namespace, &reference.to_string(), p.port);
            let (plane, l) = PortPlane::bind(p.port, *p.listen.get_ref(), bypass)
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
        let original_routes = spec.ports.iter().map(|_| Arc::default()).collect();
        let target = Arc::new(Self {
            reference,
            spec,
            planes,
            original_routes,
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
                        routes: Arc::clone(&self.original_routes[i]),
                    })),
                    Some(_) => {
                        for r in &pool.originals {
                            if let Some(addrs) = r.ready.borrow().as_ref() {
                                eps.push(Arc::new(Endpoint {
                                    name: r.name.clone(),
                                    upstream: addrs[i],
                                    routes: Arc::clone(&self.original_routes[i]),
                                }));
                            }
                        }
                    }
                }
            }
            for c in &pool.copies {
                if let Some(addrs) = c.replica.ready.borrow().as_ref() {
                    eps.push(Arc::new(Endpoint {
                        name: c.replica.name.clone(),
                        upstream: addrs[i],
                        routes: Arc::clone(&c.routes[i]),
                    }));
                }
            }
            plane.set_endpoints(eps);
        }
    }

    /// Runs one replica from `command` and keeps it running (with backoff) until dropped.
    fn spawn_replica(self: &Arc<Self>, name: String) -> Replica {
        let (ready_tx, ready) = watch::channel(None);
        let (stop, mut stop_rx) = watch::channel(false);
        let me = Arc::downgrade(self);
        let argv = self
            .spec
            .command
            .clone()
            .expect("only called with a command");
        let ports: Vec<u16> = self.spec.ports.iter().map(|p| p.port).collect();
        let replica_name = name.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(500);
            loop {
                let addrs: Vec<SocketAddr> = match ports.iter().map(|_| free_port()).collect() {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::error!(replica = %name, error = %e, "no free port for replica");
                        return;
                    }
                };
                let args = substitute(&argv, &ports, &addrs);
                let mut child = match Command::new(&args[0])
                    .args(&args[1..])
                    .stdin(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .spawn()
                {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(replica = %name, command = ?args, error = %e, "cannot start replica");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => { backoff = (backoff * 2).min(Duration::from_secs(30)); continue }
                            _ = stop_rx.changed() => return,
                        }
                    }
                };
                tracing::info!(replica = %name, pid = child.id(), ports = ?addrs, "replica started");
                let became_ready = async {
                    loop {
                        let mut all = true;
                        for a in &addrs {
                            all &= tokio::net::TcpStream::connect(a).await.is_ok();
                        }
                        if all {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(25)).await;
                    }
                };
                tokio::select! {
                    _ = became_ready => {
                        let _ = ready_tx.send(Some(addrs.clone()));
                        if let Some(t) = me.upgrade() { t.refresh(); }
                        backoff = Duration::from_millis(500);
                        tracing::info!(replica = %name, "replica ready");
                    }
                    status = child.wait() => {
                        tracing::warn!(replica = %name, ?status, "replica exited before it was ready");
                    }
                    _ = stop_rx.changed() => { let _ = child.kill().await; return; }
                }
                tokio::select! {
                    status = child.wait() => {
                        tracing::warn!(replica = %name, ?status, "replica exited; restarting");
                    }
                    _ = stop_rx.changed() => {
                        let _ = child.kill().await;
                        let _ = ready_tx.send(None);
                        return;
                    }
                }
                let _ = ready_tx.send(None);
                if let Some(t) = me.upgrade() {
                    t.refresh();
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop_rx.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        });
        Replica {
            name: replica_name,
            ready,
            _stop: stop,
        }
    }
}

fn free_port() -> std::io::Result<SocketAddr> {
    // The port is free when we look; a replica racing another process for it fails to
    // start and is restarted on a new one.
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

fn substitute(argv: &[String], ports: &[u16], addrs: &[SocketAddr]) -> Vec<String> {
    argv.iter()
        .map(|a| {
            let mut s = a.replace("{port}", &addrs[0].port().to_string());
            for (p, addr) in ports.iter().zip(addrs) {
                s = s.replace(&format!("{{port:{p}}}"), &addr.port().to_string());
            }
            s
        })
        .collect()
}

impl Target for LocalTarget {
    fn reference(&self) -> &TargetRef {
        &self.reference
    }

    fn ports(&self) -> Vec<u16> {
        self.spec.ports.iter().map(|p| p.port).collect()
    }

    fn routes(&self, port: u16) -> Option<Arc<RouteTable>> {
        let i = self.spec.ports.iter().position(|p| p.port == port)?;
        Some(Arc::clone(&self.original_routes[i]))
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
                pool.copies.push(Copy {
                    id,
                    replica,
                    routes: me.spec.ports.iter().map(|_| Arc::default()).collect(),
                });
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
    fn routes(&self, port: u16) -> Option<Arc<RouteTable>> {
        let i = self.target.spec.ports.iter().position(|p| p.port == port)?;
        let pool = self.target.pool.lock().expect("pool lock");
        pool.copies
            .iter()
            .find(|c| c.id == self.id)
            .map(|c| Arc::clone(&c.routes[i]))
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
