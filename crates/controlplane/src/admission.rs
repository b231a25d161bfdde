//! Admission: everything that decides whether a session may start, decided before
//! anything changes. [`validate`] (the request is well formed and within the limits;
//! filters are compiled off the async runtime) -> [`authorize`] (the caller's role allows
//! it) -> [`admit`] (license, policies, sessions per client, a seat held for the client).

use crate::backend::{BackendError, Target};
use crate::locks::Want;
use crate::operator::Operator;
use crate::refusal::Refusal;
use crate::sessions::{ClientLimits, ClientSlot};
use mirrord_dataplane::{FilterError, HttpFilter};
use mirrord_license::SeatReservation;
use mirrord_protocol::{HttpFilterSpec, PortMode, SessionRequest};
use mirrord_telemetry::ClientInfo;
use std::collections::HashSet;
use std::sync::Arc;

/// A request that is well formed, on a target that exists.
pub struct Validated {
    pub target: Arc<dyn Target>,
    /// The target's key in the port locks (and in messages about it).
    pub key: String,
    pub ports: Vec<ValidPort>,
}

pub struct ValidPort {
    pub port: u16,
    pub mode: PortMode,
    pub filter: Option<Arc<HttpFilter>>,
}

impl Validated {
    /// What to ask the port locks for.
    pub fn wants(&self) -> Vec<Want> {
        self.ports
            .iter()
            .map(|p| Want {
                port: p.port,
                mode: p.mode,
                filter: p.filter.clone(),
                routes: self.target.routes(p.port).expect("port validated"),
            })
            .collect()
    }
}

pub fn target_key(r: &mirrord_protocol::TargetRef) -> String {
    format!("{r} in namespace {}", r.namespace)
}

pub async fn validate(op: &Operator, req: &SessionRequest) -> Result<Validated, Refusal> {
    if req.ports.is_empty() {
        return Err(Refusal::BadRequest(
            "a session needs at least one --port".into(),
        ));
    }
    if req.ports.len() > op.limits.max_ports_per_session {
        return Err(Refusal::Limit(format!(
            "{} ports requested; this operator allows {} per session",
            req.ports.len(),
            op.limits.max_ports_per_session
        )));
    }
    if req.scale_down && !req.copy_target {
        return Err(Refusal::BadRequest(
            "--scale-down needs --copy-target".into(),
        ));
    }
    let target = op.backend.target(&req.target).await.map_err(|e| match e {
        BackendError::UnknownTarget { .. } => Refusal::UnknownTarget(e.to_string()),
        other => Refusal::Internal(other.to_string()),
    })?;
    let known = target.ports();
    let mut seen = HashSet::new();
    let mut ports = Vec::with_capacity(req.ports.len());
    for p in &req.ports {
        if !known.contains(&p.port) {
            let list: Vec<String> = known.iter().map(u16::to_string).collect();
            return Err(Refusal::UnknownPort(format!(
                "{} has no port {}; its ports are {}",
                req.target,
                p.port,
                list.join(", ")
            )));
        }
        if !seen.insert(p.port) {
            return Err(Refusal::BadRequest(format!(
                "port {} is requested twice",
                p.port
            )));
        }
        let filter = match &p.filter {
            Some(spec) => Some(compile(op, p.port, spec).await?),
            None => None,
        };
        ports.push(ValidPort {
            port: p.port,
            mode: p.mode,
            filter,
        });
    }
    Ok(Validated {
        target,
        key: target_key(&req.target),
        ports,
    })
}

/// Compiles a filter on a blocking thread, a few at a time.
async fn compile(
    op: &Operator,
    port: u16,
    spec: &HttpFilterSpec,
) -> Result<Arc<HttpFilter>, Refusal> {
    let _slot = op
        .compile_slots
        .acquire()
        .await
        .map_err(|_| Refusal::Internal("the operator is shutting down".into()))?;
    let limits = op.filter_limits();
    let spec = spec.clone();
    let compiled = tokio::task::spawn_blocking(move || HttpFilter::compile_limited(&spec, &limits))
        .await
        .map_err(|e| Refusal::Internal(format!("compiling the filter failed: {e}")))?;
    match compiled {
        Ok(f) => Ok(Arc::new(f)),
        Err(e @ FilterError::TooLarge(_)) => Err(Refusal::Limit(format!("port {port}: {e}"))),
        Err(e) => Err(Refusal::InvalidFilter(format!("port {port}: {e}"))),
    }
}

/// Whether the caller's role allows the request. Every authenticated client may open
/// sessions today; roles come with the authorization model.
pub fn authorize(_op: &Operator, _client: &ClientInfo, _v: &Validated) -> Result<(), Refusal> {
    Ok(())
}

/// What admission holds for a session until it is committed (or refused).
pub struct Admitted {
    pub slot: ClientSlot,
    pub seat: SeatReservation,
}

/// The license first (it says why nothing works), then the policies, then the client's
/// own limits, then a seat.
pub fn admit(
    op: &Operator,
    client: &ClientInfo,
    req: &SessionRequest,
) -> Result<Admitted, Refusal> {
    let now = chrono::Utc::now();
    op.licensing.check(now)?;
    op.policies
        .check(&req.target, &req.ports)
        .map_err(Refusal::Policy)?;
    let regexes = req
        .ports
        .iter()
        .filter_map(|p| p.filter.as_ref())
        .map(|f| f.header.len() + f.path.len())
        .sum();
    let limits = ClientLimits {
        sessions: op.limits.max_sessions_per_client,
        regexes: op.limits.max_filter_regexes_per_client,
    };
    let slot = op
        .sessions
        .reserve_slot(&client.client_id, regexes, limits)?;
    let seat = op.licensing.reserve_seat(&client.client_id, now)?;
    Ok(Admitted { slot, seat })
}
