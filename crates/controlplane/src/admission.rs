//! Admission: everything that decides whether a session may start, decided before
//! anything changes. [`validate`] (the request is well formed and within the limits;
//! filters are compiled off the async runtime) -> [`authorize`] (the caller's role allows
//! it) -> [`admit`] (license, policies, sessions per client, a seat held for the client).
//! Once the port locks have decided, [`authorize_take_overs`]: taking a port from another
//! user is an admin's right.

use crate::backend::{BackendError, Named, PortNames, Target};
use crate::caller::Caller;
use crate::destinations::OutgoingRule;
use crate::locks::{Reservation, Want};
use crate::operator::Operator;
use crate::policy::{RequiredHeader, Subject, Verdict};
use crate::rbac::{self, Check};
use crate::refusal::Refusal;
use crate::sessions::{ClientLimits, ClientSlot};
use mirrord_dataplane::{FilterError, HttpFilter};
use mirrord_license::SeatReservation;
use mirrord_protocol::{
    ConcurrentSteal, HttpFilterSpec, PortMode, PortRequest, SessionRequest, TargetRef,
};
use std::collections::HashSet;
use std::sync::Arc;

/// A request that is well formed, on a target that exists.
pub struct Validated {
    pub target: Arc<dyn Target>,
    /// The target's key in the port locks (and in messages about it).
    pub key: String,
    /// What the ports the session names are on the target (a Service's, its pods').
    pub names: PortNames,
    pub ports: Vec<ValidPort>,
}

pub struct ValidPort {
    /// The target's port: where the traffic is taken.
    pub port: u16,
    /// The port of the name the session asked with that `port` stands for (a Service's).
    pub service_port: Option<u16>,
    /// Why the port asked for may not be what the session means (told, not refused).
    pub notice: Option<String>,
    pub mode: PortMode,
    pub filter: Option<Arc<HttpFilter>>,
    /// The filter matches every request: for policies, an unfiltered steal.
    pub catch_all: bool,
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

    /// The notices the session's ports call for.
    pub fn notices(&self) -> Vec<String> {
        self.ports.iter().filter_map(|p| p.notice.clone()).collect()
    }

    /// Per target port, the Service's port it stands for.
    pub fn service_ports(&self) -> std::collections::BTreeMap<u16, u16> {
        self.ports
            .iter()
            .filter_map(|p| Some((p.port, p.service_port?)))
            .collect()
    }
}

/// The name a session asked with, then the target's own when it is another: what RBAC
/// must allow.
fn both_names<'a>(
    asked: &'a TargetRef,
    canonical: &'a TargetRef,
) -> impl Iterator<Item = &'a TargetRef> {
    let same = canonical.kind == asked.kind && canonical.name == asked.name;
    std::iter::once(asked).chain((!same).then_some(canonical))
}

pub fn target_key(r: &TargetRef) -> String {
    format!("{r} in namespace {}", r.namespace)
}

/// `client_id`: whose turn compiling its filters takes.
pub async fn validate(
    op: &Operator,
    req: &SessionRequest,
    client_id: &str,
) -> Result<Validated, Refusal> {
    crate::bounds::check_request(req)?;
    if req.ports.is_empty() && req.context.is_empty() && !req.listen {
        return Err(Refusal::BadRequest(
            "a session needs at least one --port (or, for a process, some of the target's context, or the ports it listens on)"
                .into(),
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
    let named = op.backend.named(&req.target).await.map_err(|e| match e {
        BackendError::UnknownTarget { .. }
        | BackendError::UnknownContainer(_)
        | BackendError::NotATarget(_) => Refusal::UnknownTarget(e.to_string()),
        other => Refusal::Internal(other.to_string()),
    })?;
    let Named {
        target,
        ports: names,
    } = named;
    if let (false, Some(why)) = (req.copy_target, target.copy_only()) {
        return Err(Refusal::BadRequest(why));
    }
    let asked = Asked {
        target_ref: &req.target,
        names: &names,
    };
    let ports = validate_ports(op, &target, asked, &req.ports, &[], client_id).await?;
    Ok(Validated {
        // The target's own name: another name for the same pods (a Deployment's
        // ReplicaSet, a Service) shares its port locks.
        key: target_key(target.reference()),
        target,
        names,
        ports,
    })
}

/// The name a session asked with, and what its ports are on the target.
#[derive(Clone, Copy)]
pub struct Asked<'a> {
    pub target_ref: &'a TargetRef,
    pub names: &'a PortNames,
}

impl Asked<'_> {
    /// `port` as the target's port, the name's port it stands for, and a notice if the
    /// name does not expose it; a name's port whose `targetPort` names no container's port
    /// is refused as the name is (it is the Service that is wrong, not the request).
    fn translate(&self, port: u16) -> Result<(u16, Option<u16>, Option<String>), Refusal> {
        let (target_port, service_port) = self
            .names
            .target_port(port)
            .map_err(Refusal::UnknownTarget)?;
        Ok((target_port, service_port, self.names.not_exposed(port)))
    }

    /// `port 80 of service/web (the pods' port 8080)`, or `port 8080`.
    fn describe(&self, port: u16, service_port: Option<u16>) -> String {
        match service_port {
            Some(s) if s != port => {
                format!("port {s} of {} (the pods' port {port})", self.names.by)
            }
            _ => format!("port {port}"),
        }
    }
}

/// The ports of a request (or of ports added to an open session, which holds `held`):
/// ports the target has, each once, filters compiled.
pub async fn validate_ports(
    op: &Operator,
    target: &Arc<dyn Target>,
    asked: Asked<'_>,
    requested: &[PortRequest],
    held: &[u16],
    client_id: &str,
) -> Result<Vec<ValidPort>, Refusal> {
    let known = target.ports();
    let target_ref = asked.target_ref;
    let mut seen: HashSet<u16> = held.iter().copied().collect();
    let mut ports = Vec::with_capacity(requested.len());
    for p in requested {
        let (port, service_port, notice) = asked.translate(p.port)?;
        if !target.accepts_port(port) {
            let list: Vec<String> = known.iter().map(u16::to_string).collect();
            return Err(Refusal::UnknownPort(format!(
                "{target_ref} has no port {}; its ports are {}",
                p.port,
                list.join(", ")
            )));
        }
        if !seen.insert(port) {
            return Err(Refusal::BadRequest(format!(
                "{} is requested twice",
                asked.describe(port, service_port)
            )));
        }
        let (filter, catch_all) = match &p.filter {
            Some(spec) => {
                let (f, catch_all) = compile(op, client_id, p.port, spec).await?;
                (Some(f), catch_all)
            }
            None => (None, false),
        };
        ports.push(ValidPort {
            port,
            service_port,
            notice,
            mode: p.mode,
            filter,
            catch_all,
        });
    }
    Ok(ports)
}

/// Compiles a filter on a blocking thread, a few at a time, each client in its turn; says
/// whether it matches every request.
async fn compile(
    op: &Operator,
    client_id: &str,
    port: u16,
    spec: &HttpFilterSpec,
) -> Result<(Arc<HttpFilter>, bool), Refusal> {
    let _slot = op
        .compile_slots
        .acquire(client_id)
        .await
        .map_err(|_| Refusal::Internal("the operator is shutting down".into()))?;
    let limits = op.filter_limits();
    let spec = spec.clone();
    let compiled = tokio::task::spawn_blocking(move || {
        HttpFilter::compile_limited(&spec, &limits).map(|f| {
            let catch_all = f.matches_every_request();
            (f, catch_all)
        })
    })
    .await
    .map_err(|e| Refusal::Internal(format!("compiling the filter failed: {e}")))?;
    match compiled {
        Ok((f, catch_all)) => Ok((Arc::new(f), catch_all)),
        Err(e @ FilterError::TooLarge(_)) => Err(Refusal::Limit(format!("port {port}: {e}"))),
        Err(e) => Err(Refusal::InvalidFilter(format!("port {port}: {e}"))),
    }
}

/// Whether the caller may ask this at all: a credential revoked while it was connected
/// gets nothing; a certificate's role decides scale-down (an admin's decision), RBAC
/// decides everything a Kubernetes user asks for. Says whether they may take over other
/// users' ports, should the locks ask.
/// `canonical`: the target's own name (a Service's workload): in a cluster, RBAC must allow
/// the session on it as well as on the name asked with, so a grant on `service.mine` never
/// reaches a workload its selector is pointed at.
pub async fn authorize(
    op: &Operator,
    caller: &Caller,
    req: &SessionRequest,
    canonical: &TargetRef,
) -> Result<TakeOvers, Refusal> {
    if op.revoked.contains(&caller.client.client_id) {
        return Err(Refusal::Forbidden(format!(
            "the credential of {} (client id {}) is revoked; ask an admin for a new one",
            caller.user(),
            caller.client.client_id
        )));
    }
    if caller.kubernetes_groups().is_some() {
        let mut allowed = true;
        let mut lacking = String::new();
        for target in both_names(&req.target, canonical) {
            let may = authorize_rbac(op, caller, req, target).await?;
            allowed &= may.allowed;
            if !may.allowed {
                lacking = may.lacking;
            }
        }
        return Ok(TakeOvers { allowed, lacking });
    }
    if req.context.files.writes() && !caller.role.is_admin() {
        return Err(Refusal::Forbidden(format!(
            "writing the files of {} (namespace {}) changes them for everyone: only an admin may, and you are a {}; use feature.fs.mode `read` without `read_write` patterns",
            req.target, req.target.namespace, caller.role
        )));
    }
    if req.scale_down && !caller.role.is_admin() {
        return Err(Refusal::Forbidden(format!(
            "--scale-down stops {} (namespace {}) for everyone: only an admin may do it, and you are a {}",
            req.target, req.target.namespace, caller.role
        )));
    }
    Ok(TakeOvers {
        allowed: caller.role.is_admin(),
        lacking: format!("an admin, and you are a {}", caller.role),
    })
}

async fn authorize_rbac(
    op: &Operator,
    caller: &Caller,
    req: &SessionRequest,
    target: &TargetRef,
) -> Result<TakeOvers, Refusal> {
    for mode in [PortMode::Steal, PortMode::Mirror] {
        if req.ports.iter().any(|p| p.mode == mode) {
            rbac::require(op.rbac.as_deref(), caller, Check::open(mode, target)).await?;
        }
    }
    if req.scale_down {
        rbac::require(op.rbac.as_deref(), caller, Check::scale_down(target)).await?;
    }
    for check in Check::context(&req.context, target) {
        rbac::require(op.rbac.as_deref(), caller, check).await?;
    }
    let check = Check::take_over(target);
    let allowed = match req.on_concurrent_steal {
        ConcurrentSteal::Override => rbac::allows(op.rbac.as_deref(), caller, &check)
            .await
            .unwrap_or(Ok(false))?,
        _ => false,
    };
    Ok(TakeOvers {
        allowed,
        lacking: format!("{}, which RBAC does not grant you", check.describe()),
    })
}

/// Whether a session may take over ports other users hold, and if not, what it lacks.
pub struct TakeOvers {
    pub allowed: bool,
    lacking: String,
}

/// `--on-concurrent-steal override` of ports held by another user needs an admin (a
/// developer may take over their own sessions' ports).
pub fn authorize_take_overs(
    caller: &Caller,
    may: &TakeOvers,
    reserved: &Reservation,
) -> Result<(), Refusal> {
    if may.allowed {
        return Ok(());
    }
    match reserved
        .take_overs()
        .iter()
        .find(|(h, _)| h.user != caller.user())
    {
        None => Ok(()),
        Some((holder, port)) => Err(Refusal::Forbidden(format!(
            "port {port} is held by {holder}: taking over another user's port needs {}; retry with --on-concurrent-steal abort or continue",
            may.lacking
        ))),
    }
}

/// What admission holds for a session until it is committed (or refused).
pub struct Admitted {
    pub slot: ClientSlot,
    pub seat: SeatReservation,
    /// Where the session's outgoing connections may go (every rule must allow it).
    pub outgoing: Vec<OutgoingRule>,
}

/// The license first (it says why nothing works), then the policies (which may narrow the
/// steals' filters), then the client's own limits, then a seat.
pub fn admit(
    op: &Operator,
    caller: &Caller,
    req: &SessionRequest,
    valid: &mut Validated,
) -> Result<Admitted, Refusal> {
    let client = &caller.client;
    let now = chrono::Utc::now();
    op.licensing.check(now)?;
    let catch_all: Vec<u16> = valid
        .ports
        .iter()
        .filter(|p| p.catch_all)
        .map(|p| p.port)
        .collect();
    let labels = valid.target.labels();
    let ports = on_target(&req.ports, &valid.ports);
    // Judged by the target's own name: a policy on `deployment/payments` binds a session
    // that names its pods `service/payments` too.
    let verdict = check_policies(
        op,
        &Subject {
            target: valid.target.reference(),
            asked: &req.target,
            ports: &ports,
            catch_all: &catch_all,
            scale_down: req.scale_down,
            context: &req.context,
            user: caller.user(),
            role: caller.role,
            groups: caller.kubernetes_groups().unwrap_or_default(),
            labels: &labels,
            profile: req.profile.as_deref(),
        },
    )?;
    narrow(op, verdict.headers, &mut valid.ports)?;
    let regexes = regexes(&req.ports);
    let limits = ClientLimits {
        sessions: op.limits.max_sessions_per_client,
        regexes: op.limits.max_filter_regexes_per_client,
    };
    let slot = op
        .sessions
        .reserve_slot(&client.client_id, regexes, limits)?;
    let seat = op.licensing.reserve_seat(&client.client_id, now)?;
    Ok(Admitted {
        slot,
        seat,
        outgoing: verdict.outgoing,
    })
}

/// The config file's policies, then the cluster's: the first one broken refuses; otherwise
/// what they all narrow the session to.
fn check_policies(op: &Operator, s: &Subject<'_>) -> Result<Verdict, Refusal> {
    let live = op.live_policies.get();
    // An unknown profile first: what a policy requiring one would say does not help.
    let profile = match s.profile {
        None => None,
        Some(name) => Some(
            op.profiles
                .get(name)
                .or(live.profiles.get(name))
                .ok_or_else(|| {
                    let known: Vec<&str> = op
                        .profiles
                        .keys()
                        .chain(live.profiles.keys())
                        .map(String::as_str)
                        .collect();
                    Refusal::Policy(format!(
                        "there is no profile `{name}`; profiles: {}",
                        if known.is_empty() {
                            "none".into()
                        } else {
                            known.join(", ")
                        }
                    ))
                })?,
        ),
    };
    let mut required = op.policies.check(s).map_err(Refusal::Policy)?;
    required.extend(live.policies.check(s).map_err(Refusal::Policy)?);
    if let Some(profile) = profile {
        required.extend(profile.check(s).map_err(Refusal::Policy)?);
    }
    Ok(required)
}

/// Narrows steals' filters to the headers policies require.
fn narrow(
    op: &Operator,
    required: Vec<RequiredHeader>,
    ports: &mut [ValidPort],
) -> Result<(), Refusal> {
    for r in required {
        let filter = ports
            .iter_mut()
            .find(|p| p.port == r.port)
            .and_then(|p| p.filter.as_mut())
            .ok_or_else(|| {
                Refusal::Internal(format!(
                    "policy `{}`: port {} has no filter to narrow",
                    r.policy, r.port
                ))
            })?;
        Arc::make_mut(filter)
            .require_header(&r.pattern, &op.filter_limits())
            .map_err(|e| Refusal::Internal(format!("policy `{}`: {e}", r.policy)))?;
    }
    Ok(())
}

/// The requests as on the target's ports (a Service's port is its pods'): what policies
/// judge, on the ports they are about. `valid` is `requested` validated, in its order.
fn on_target(requested: &[PortRequest], valid: &[ValidPort]) -> Vec<PortRequest> {
    requested
        .iter()
        .zip(valid)
        .map(|(r, v)| PortRequest {
            port: v.port,
            ..r.clone()
        })
        .collect()
}

/// The filter regexes `ports` hold (a client's budget counts them).
fn regexes(ports: &[PortRequest]) -> usize {
    ports.iter().map(port_regexes).sum()
}

/// The filter regexes one port's request holds.
pub fn port_regexes(p: &PortRequest) -> usize {
    p.filter
        .as_ref()
        .map_or(0, |f| f.header.len() + f.path.len() + 2 * f.body.len())
}

/// Ports added to an open session: what [`authorize`] and [`admit`] decide about ports
/// (the license, the seat and the session count were decided when it opened). Returns the
/// regexes the new filters hold.
pub async fn admit_ports(
    op: &Operator,
    caller: &Caller,
    // As asked (RBAC), and the target's own name (policies).
    (target, canonical): (&TargetRef, &TargetRef),
    (labels, profile): (&std::collections::BTreeMap<String, String>, Option<&str>),
    requested: &[PortRequest],
    valid: &mut [ValidPort],
) -> Result<usize, Refusal> {
    if op.revoked.contains(&caller.client.client_id) {
        return Err(Refusal::Forbidden(format!(
            "the credential of {} (client id {}) is revoked",
            caller.user(),
            caller.client.client_id
        )));
    }
    for t in both_names(target, canonical) {
        for mode in [PortMode::Steal, PortMode::Mirror] {
            if requested.iter().any(|p| p.mode == mode) {
                rbac::require(op.rbac.as_deref(), caller, Check::open(mode, t)).await?;
            }
        }
    }
    let catch_all: Vec<u16> = valid
        .iter()
        .filter(|p| p.catch_all)
        .map(|p| p.port)
        .collect();
    let ports = on_target(requested, valid);
    let verdict = check_policies(
        op,
        &Subject {
            target: canonical,
            asked: target,
            ports: &ports,
            catch_all: &catch_all,
            scale_down: false,
            context: &Default::default(),
            user: caller.user(),
            groups: caller.kubernetes_groups().unwrap_or_default(),
            labels,
            profile,
            role: caller.role,
        },
    )?;
    narrow(op, verdict.headers, valid)?;
    Ok(regexes(requested))
}
