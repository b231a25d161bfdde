//! Test doubles for unit tests of the control plane without processes or sockets: an
//! in-memory backend whose targets have route tables and count the copies they make, and
//! an operator built around it. Kept small and apart, like kube-rs' `fixtures.rs`.

use crate::backend::{BackendError, Target, TargetBackend, TargetCopy};
use crate::caller::Caller;
use crate::config::{Limits, SessionConfig};
use crate::operator::{Operator, Parts};
use crate::policy::Policies;
use futures::future::BoxFuture;
use mirrord_dataplane::RouteTable;
use mirrord_identity::Role;
use mirrord_protocol::{
    ConcurrentSteal, HttpFilterSpec, PortMode, PortRequest, SessionRequest, TargetRef,
};
use mirrord_telemetry::{ClientInfo, Telemetry};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub struct FakeTarget {
    reference: TargetRef,
    routes: Vec<(u16, Arc<RouteTable>)>,
    /// Copies alive now.
    pub copies: Arc<AtomicUsize>,
}

impl Target for FakeTarget {
    fn reference(&self) -> &TargetRef {
        &self.reference
    }
    fn ports(&self) -> Vec<u16> {
        self.routes.iter().map(|(p, _)| *p).collect()
    }
    fn routes(&self, port: u16) -> Option<Arc<RouteTable>> {
        self.routes
            .iter()
            .find(|(p, _)| *p == port)
            .map(|(_, r)| Arc::clone(r))
    }
    fn copy(
        self: Arc<Self>,
        session: String,
        _scale_down: bool,
    ) -> BoxFuture<'static, Result<Box<dyn TargetCopy>, BackendError>> {
        self.copies.fetch_add(1, Ordering::SeqCst);
        let copies = Arc::clone(&self.copies);
        Box::pin(async move {
            Ok(Box::new(FakeCopy {
                name: format!("mirrord-copy-api-{session}"),
                copies,
            }) as Box<dyn TargetCopy>)
        })
    }
}

struct FakeCopy {
    name: String,
    copies: Arc<AtomicUsize>,
}

impl TargetCopy for FakeCopy {
    fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for FakeCopy {
    fn drop(&mut self) {
        self.copies.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One target, `deployment/api` with ports 80 and 81.
pub struct FakeBackend {
    pub api: Arc<FakeTarget>,
}

impl TargetBackend for FakeBackend {
    fn target(&self, r: &TargetRef) -> BoxFuture<'_, Result<Arc<dyn Target>, BackendError>> {
        let found = (r == &self.api.reference)
            .then(|| Arc::clone(&self.api) as Arc<dyn Target>)
            .ok_or_else(|| BackendError::UnknownTarget {
                target: r.to_string(),
                namespace: r.namespace.clone(),
                known: "deployment/api (default)".into(),
            });
        Box::pin(std::future::ready(found))
    }
}

pub fn api() -> TargetRef {
    TargetRef {
        kind: "deployment".into(),
        name: "api".into(),
        namespace: "default".into(),
        container: None,
    }
}

/// An operator on the fake backend; licensing off, no policies.
pub fn operator(cfg: SessionConfig, limits: Limits) -> (Arc<Operator>, Arc<FakeTarget>) {
    operator_with(cfg, limits, Policies::default())
}

/// An operator on the fake backend with `policies`; licensing off.
pub fn operator_with(
    cfg: SessionConfig,
    limits: Limits,
    policies: Policies,
) -> (Arc<Operator>, Arc<FakeTarget>) {
    let api = Arc::new(FakeTarget {
        reference: api(),
        routes: vec![(80, Arc::default()), (81, Arc::default())],
        copies: Arc::default(),
    });
    let state = std::env::temp_dir().join(format!("mirrord-cp-test-{}", rand::random::<u64>()));
    let op = Operator::new(Parts {
        backend: Arc::new(FakeBackend {
            api: Arc::clone(&api),
        }),
        telemetry: Telemetry::new(std::time::Duration::from_secs(60)),
        cfg,
        limits,
        licensing: Arc::new(mirrord_license::Licensing::new(None, None, &state)),
        policies,
        profiles: Default::default(),
        rbac: None,
        registered: None,
        shutdown: Default::default(),
        fence: Default::default(),
    });
    (Arc::new(op), api)
}

/// An admin called `id` (user and client id): may do anything a role allows.
pub fn client(id: &str) -> Caller {
    caller(id, Role::Admin)
}

/// A developer called `id`.
pub fn developer(id: &str) -> Caller {
    caller(id, Role::Developer)
}

fn caller(id: &str, role: Role) -> Caller {
    Caller {
        client: ClientInfo {
            client_id: id.into(),
            client_user: id.into(),
            client_name: "Test".into(),
            client_hostname: "test".into(),
            cli_version: "0".into(),
        },
        role,
        authority: Default::default(),
    }
}

/// A request for `ports`, each `(port, mode, header filter)`.
pub fn request(ports: &[(u16, PortMode, Option<&str>)]) -> SessionRequest {
    SessionRequest {
        target: api(),
        ports: ports
            .iter()
            .map(|(port, mode, header)| PortRequest {
                port: *port,
                mode: *mode,
                filter: header.map(|h| HttpFilterSpec {
                    header: vec![h.into()],
                    ..Default::default()
                }),
            })
            .collect(),
        on_concurrent_steal: ConcurrentSteal::Abort,
        copy_target: false,
        scale_down: false,
        context: Default::default(),
        listen: false,
        profile: None,
    }
}
