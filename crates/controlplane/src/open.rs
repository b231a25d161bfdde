//! Opening a session, as a pipeline of owned steps:
//!
//! validate -> authorize -> admit (holding a client slot and a seat reservation) ->
//! reserve the ports (port locks) -> authorize take-overs -> record the seat -> make the
//! copy -> commit.
//!
//! Everything that can refuse the session happens before anything changes: a refused
//! session leaves no copy, no scaled-down target and no route behind. Each step's result
//! owns what the step did and undoes it when dropped, so an error (or a client that goes
//! away) at any later step unwinds exactly what was done. The copy is the last and only
//! slow step, and it runs holding no lock: other openings never wait for it.

use crate::admission::{self, Admitted, Asked, Validated};
use crate::backend::{BackendError, PortNames, Target, TargetCopy};
use crate::caller::Caller;
use crate::context::{self, SessionContext};
use crate::locks::{Grant, Holder, Outcome, Reservation, Taken, Want};
use crate::operator::Operator;
use crate::overlaps;
use crate::refusal::Refusal;
use crate::sessions::{Deadline, NewEntry, SessionEntry};
use mirrord_dataplane::budget::Budget;
use mirrord_dataplane::handoff::{self, HandoffRx, SubscriberTx};
use mirrord_dataplane::Subscriber;
use mirrord_protocol::{
    ConcurrentSteal, ContextReply, CopyInfo, ErrorReply, PortMode, PortOutcome, PortRequest,
    SessionId, SessionOpened, SessionRequest, TargetRef,
};
use mirrord_telemetry::{Event, PortCounters, SessionMeta, SessionTrace};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

/// Handoffs queued for one session before the data plane waits (steal) or drops (mirror).
const HANDOFF_QUEUE: usize = 1024;
/// How long a session waits for the cluster's policies when the operator has just started.
const POLICIES_LOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// A session that is open: what its actor needs.
pub struct Opened {
    pub entry: Arc<SessionEntry>,
    pub handoffs: HandoffRx,
    /// The answer to send the client.
    pub reply: SessionOpened,
    /// What the client should know of its ports, sent after the answer (a port its Service
    /// does not expose).
    pub notices: Vec<String>,
    /// For ports the session adds later.
    pub more: MorePorts,
}

/// Opens a session, or refuses it (recorded as `Session Refused`).
pub async fn open(
    op: &Arc<Operator>,
    req: SessionRequest,
    caller: Caller,
) -> Result<Opened, ErrorReply> {
    match pipeline(op, &req, &caller).await {
        Ok(opened) => Ok(opened),
        Err(refusal) => {
            // Clipped: a request refused for its size must not be logged at that size.
            use crate::bounds::{clip, MAX_KIND_LEN, MAX_NAMESPACE_LEN, MAX_NAME_LEN};
            op.telemetry.record(Event::SessionRefused {
                reason: refusal.reason(),
                client: caller.client,
                target_type: clip(&req.target.kind, MAX_KIND_LEN),
                target_name: clip(&req.target.name, MAX_NAME_LEN),
                target_namespace: clip(&req.target.namespace, MAX_NAMESPACE_LEN),
                message: refusal.to_string(),
            });
            Err(refusal.reply())
        }
    }
}

async fn pipeline(
    op: &Arc<Operator>,
    req: &SessionRequest,
    caller: &Caller,
) -> Result<Opened, Refusal> {
    let mut valid = admission::validate(op, req, &caller.client.client_id).await?;
    let take_overs = admission::authorize(op, caller, req, valid.target.reference()).await?;
    if !op.live_policies.wait_loaded(POLICIES_LOAD_WAIT).await {
        return Err(Refusal::Policy(
            "the cluster's policies (MirrordPolicy, MirrordClusterPolicy, MirrordProfile) are not loaded yet, and no session opens before they are; retry in a few seconds (if this lasts, the operator's log says why: are the chart's CRDs installed?)".into(),
        ));
    }
    let admitted = admission::admit(op, caller, req, &mut valid)?;
    let client = &caller.client;
    // Checked where locks are granted: a replica whose lease lapsed grants none.
    op.fence.check()?;
    let id = op.sessions.new_id();
    let holder = Holder {
        session: id,
        user: client.client_user.clone(),
    };
    let ports = op.locks.reserve(
        &valid.key,
        holder.clone(),
        valid.wants(),
        req.on_concurrent_steal,
        req.scale_down,
    )?;
    admission::authorize_take_overs(caller, &take_overs, &ports)?;
    let Admitted {
        slot,
        seat,
        outgoing,
    } = admitted;
    // The last step that can refuse: a seat that cannot be recorded is not granted.
    seat.commit()?;
    let copy = match req.copy_target {
        true => Some(make_copy(&valid, id, req.scale_down).await?),
        false => None,
    };
    // From the process that serves the session: its copy, if it has one.
    let context = match req.context.is_empty() {
        true => None,
        false => Some(
            context::grant(
                &valid.target,
                id,
                copy.as_deref(),
                req.target.container.as_deref(),
                &req.context,
            )
            .await,
        ),
    };
    let context = context.map(|(reply, granted)| {
        let granted = granted.map(|c| SessionContext {
            allowed: outgoing,
            ..c
        });
        (reply, granted)
    });
    let mut opened = commit(
        op,
        Commit {
            id,
            req,
            caller,
            target: Arc::clone(&valid.target),
            names: valid.names.clone(),
            service_ports: valid.service_ports(),
            ports,
            copy,
            context,
            slot,
        },
    );
    tell_overlaps(op, &valid, &holder, &mut opened.reply.ports).await;
    opened.notices = valid.notices();
    // Revoked while it opened (the copy takes a while): the revocation's sweep of
    // sessions may have run before this one was registered, so end it here.
    if op.revoked.contains(&client.client_id) {
        op.sessions.end(id, "credential revoked");
    }
    // In a cluster the routes take effect in the agents: the session is open when they
    // are in force, or ends saying why they are not.
    if let Err(why) = Arc::clone(&valid.target).settle().await {
        op.sessions.end(id, &why);
        return Err(Refusal::Internal(why));
    }
    Ok(opened)
}

/// Both users learn of filters that share requests on a port (the earlier one wins them).
async fn tell_overlaps(
    op: &Arc<Operator>,
    valid: &Validated,
    holder: &Holder,
    outcomes: &mut [PortOutcome],
) {
    let filtered: Vec<_> = valid
        .ports
        .iter()
        .filter(|p| p.mode == PortMode::Steal)
        .filter(|p| {
            outcomes
                .iter()
                .any(|o| o.port == p.port && o.skipped.is_none())
        })
        .filter_map(|p| Some((p.port, Arc::clone(p.filter.as_ref()?))))
        .collect();
    for (port, found) in overlaps::detect(op, &valid.key, holder, filtered).await {
        if let Some(o) = outcomes.iter_mut().find(|o| o.port == port) {
            o.overlaps = found;
        }
    }
}

async fn make_copy(
    valid: &Validated,
    id: SessionId,
    scale_down: bool,
) -> Result<Box<dyn TargetCopy>, Refusal> {
    Arc::clone(&valid.target)
        .copy(id.to_string(), scale_down)
        .await
        .map_err(|e| match e {
            BackendError::ScaleDownConflict(m) => Refusal::ScaleDownConflict(m),
            other => Refusal::CopyUnavailable(other.to_string()),
        })
}

struct Commit<'a> {
    id: SessionId,
    req: &'a SessionRequest,
    caller: &'a Caller,
    target: Arc<dyn Target>,
    names: PortNames,
    /// Per target port, the Service's port the session asked for it by.
    service_ports: BTreeMap<u16, u16>,
    ports: Reservation,
    copy: Option<Box<dyn TargetCopy>>,
    context: Option<(ContextReply, Option<SessionContext>)>,
    slot: crate::sessions::ClientSlot,
}

/// What a session keeps to take more ports later ([`add_ports`]): the same admission as
/// when it opened, for the new ports only, and the same subscription as its first ports.
pub struct MorePorts {
    caller: Caller,
    target: Arc<dyn Target>,
    target_ref: TargetRef,
    /// What the ports the session names are on the target, for those it adds and removes.
    names: PortNames,
    key: String,
    on_concurrent_steal: ConcurrentSteal,
    subscription: Subscription,
    /// The profile the session chose: its rules bind the ports it adds too.
    profile: Option<String>,
}

impl MorePorts {
    /// The session's target.
    pub fn target(&self) -> &Arc<dyn Target> {
        &self.target
    }

    /// The target's ports the session's `asked` stand for (a port whose Service names no
    /// port of its pods stands for none).
    pub fn target_ports(&self, asked: &[u16]) -> Vec<u16> {
        asked
            .iter()
            .filter_map(|&p| self.names.target_port(p).ok().map(|(port, _)| port))
            .collect()
    }
}

/// How a session's ports hand it traffic.
#[derive(Clone)]
struct Subscription {
    id: SessionId,
    meta: Arc<SessionMeta>,
    tx: SubscriberTx,
    copy_budget: Arc<Budget>,
    trace: SessionTrace,
}

impl Subscription {
    fn subscriber(&self, op: &Operator, w: &Want) -> Subscriber {
        Subscriber {
            session_id: self.id.0,
            copy_budget: Arc::clone(&self.copy_budget),
            tx: self.tx.clone(),
            counters: match w.mode {
                PortMode::Steal => op.telemetry.metrics().port_counters(&self.meta, w.port),
                PortMode::Mirror => PortCounters::detached(),
            },
            trace: self.trace.clone(),
        }
    }
}

/// The routes go in for what was reserved and take-overs happen: what opening and adding
/// ports share. [`Granted::record`] then tells it.
/// `service_ports`: per target port, the Service's port the session asked for it by.
fn grant_ports(
    op: &Operator,
    sub: &Subscription,
    ports: Reservation,
    service_ports: &BTreeMap<u16, u16>,
) -> (Grant, Granted) {
    let outcomes: Vec<PortOutcome> = ports
        .outcomes()
        .map(|(w, o)| PortOutcome {
            port: w.port,
            mode: w.mode,
            filter: w.display(),
            http_filter: w.spec(),
            skipped: match o {
                Outcome::Granted => None,
                Outcome::Skipped(why) => Some(why.clone()),
            },
            overlaps: Vec::new(),
            service_port: service_ports.get(&w.port).copied(),
        })
        .collect();
    let (grant, taken) = ports.commit(|w| sub.subscriber(op, w));
    (grant, Granted { outcomes, taken })
}

/// What granting ports did, to be told once the session is registered.
struct Granted {
    outcomes: Vec<PortOutcome>,
    taken: Vec<Taken>,
}

impl Granted {
    /// Tells the sessions whose ports were taken, and records every port granted.
    fn record(self, op: &Operator, caller: &Caller, sub: &Subscription) -> Vec<PortOutcome> {
        let by = format!("session {} ({})", sub.id, caller.client.client_user);
        for t in &self.taken {
            if let Some(victim) = op.sessions.port_taken(t, &by) {
                op.telemetry.record(Event::PortTakenOver {
                    session: victim,
                    port: t.hold.port,
                    by: caller.client.clone(),
                    by_role: caller.role.as_str(),
                    by_session: sub.id.to_string(),
                });
            }
        }
        for o in self.outcomes.iter().filter(|o| o.skipped.is_none()) {
            let session = Arc::clone(&sub.meta);
            let (port, http_filter) = (o.port, o.filter.clone());
            op.telemetry.record(match o.mode {
                PortMode::Steal => Event::PortStolen {
                    session,
                    port,
                    http_filter,
                },
                PortMode::Mirror => Event::PortMirrored {
                    session,
                    port,
                    http_filter,
                },
            });
        }
        self.outcomes
    }
}

/// Nothing can fail from here on: the routes go in, the session is registered, and what
/// happened is recorded.
fn commit(op: &Arc<Operator>, c: Commit<'_>) -> Opened {
    let Commit {
        id,
        req,
        caller,
        target,
        names,
        service_ports,
        ports,
        copy,
        context,
        slot,
    } = c;
    let client = &caller.client;
    let meta = Arc::new(SessionMeta {
        session_id: id.to_string(),
        target_type: req.target.kind.clone(),
        target_name: req.target.name.clone(),
        target_namespace: req.target.namespace.clone(),
        client: client.clone(),
    });
    let (handoff_tx, handoffs) = handoff::channel(HANDOFF_QUEUE);
    let sub = Subscription {
        id,
        meta: Arc::clone(&meta),
        tx: handoff_tx,
        // One budget for the mirror copies of all of the session's ports.
        copy_budget: Budget::new(op.limits.max_mirror_copy_bytes_per_session),
        trace: op.telemetry.session_trace(&meta),
    };
    let key = ports.target().to_owned();
    let (grant, granted) = grant_ports(op, &sub, ports, &service_ports);
    let (context_reply, context) = match context {
        Some((reply, granted)) => (Some(reply), granted),
        None => (None, None),
    };
    let context = context.map(|c| SessionContext {
        counters: op.telemetry.metrics().context_counters(&meta),
        ..c
    });
    let copy_name = copy.as_ref().map(|c| c.name().to_owned());
    let entry = SessionEntry::new(NewEntry {
        id,
        meta: Arc::clone(&meta),
        deadline: Deadline::first(
            Instant::now(),
            op.cfg.max_session_time,
            caller.credential_expires(),
        ),
        grant,
        copy_info: copy_name.as_ref().map(|name| CopyInfo {
            original_target: req.target.to_string(),
            namespace: req.target.namespace.clone(),
            copy_name: name.clone(),
            scale_down: req.scale_down,
            session_id: id,
        }),
        copy,
        context,
        slot,
        service_ports,
    });
    op.sessions.insert(Arc::clone(&entry));
    op.telemetry.record(Event::SessionStarted {
        session: Arc::clone(&meta),
    });
    if let Some(name) = &copy_name {
        op.telemetry.record(Event::TargetCopied {
            session: Arc::clone(&meta),
            copy_name: name.clone(),
            scale_down: req.scale_down,
        });
    }
    let ports = granted.record(op, caller, &sub);
    Opened {
        entry,
        handoffs,
        reply: SessionOpened {
            session_id: id,
            ports,
            copy: copy_name,
            context: context_reply,
        },
        notices: Vec::new(),
        more: MorePorts {
            caller: caller.clone(),
            target,
            target_ref: req.target.clone(),
            names,
            key,
            on_concurrent_steal: req.on_concurrent_steal,
            subscription: sub,
            profile: req.profile.clone(),
        },
    }
}

/// Adds ports to the open session `entry` (its process listens now): the admission of
/// [`open`] for them, then the same routes as its first ports. A refusal leaves the
/// session as it was. Returns the outcomes, and notices about them as [`Opened::notices`].
pub async fn add_ports(
    op: &Arc<Operator>,
    entry: &SessionEntry,
    more: &MorePorts,
    requested: Vec<PortRequest>,
) -> Result<(Vec<PortOutcome>, Vec<String>), Refusal> {
    let held: Vec<u16> = op.sessions.holds(entry).iter().map(|h| h.port).collect();
    crate::bounds::check_ports(&requested)?;
    if held.len() + requested.len() > op.limits.max_ports_per_session {
        return Err(Refusal::Limit(format!(
            "{} ports more and {} held; this operator allows {} per session",
            requested.len(),
            held.len(),
            op.limits.max_ports_per_session
        )));
    }
    let caller = &more.caller;
    let client_id = &caller.client.client_id;
    let asked = Asked {
        target_ref: &more.target_ref,
        names: &more.names,
    };
    let mut ports =
        admission::validate_ports(op, &more.target, asked, &requested, &held, client_id).await?;
    let labels = more.target.labels();
    let regexes = admission::admit_ports(
        op,
        caller,
        (&more.target_ref, more.target.reference()),
        (&labels, more.profile.as_deref()),
        &requested,
        &mut ports,
    )
    .await?;
    entry.may_hold(regexes, op.limits.max_filter_regexes_per_client)?;
    let valid = Validated {
        target: Arc::clone(&more.target),
        key: more.key.clone(),
        names: more.names.clone(),
        ports,
    };
    let holder = Holder {
        session: entry.id,
        user: caller.client.client_user.clone(),
    };
    let take_overs = admission::authorize(
        op,
        caller,
        &no_context(&more.target_ref),
        more.target.reference(),
    )
    .await?;
    op.fence.check()?;
    let reserved = op.locks.reserve(
        &valid.key,
        holder.clone(),
        valid.wants(),
        more.on_concurrent_steal,
        false,
    )?;
    admission::authorize_take_overs(caller, &take_overs, &reserved)?;
    // Named before the routes go in: traffic on them is handed over under these names.
    let service_ports = valid.service_ports();
    entry.name_ports(service_ports.clone());
    let (grant, granted) = grant_ports(op, &more.subscription, reserved, &service_ports);
    // Held on the target's ports, as the grant is.
    let per_port: Vec<(u16, usize)> = requested
        .iter()
        .zip(&valid.ports)
        .map(|(p, v)| (v.port, admission::port_regexes(p)))
        .collect();
    if !entry.add_grant(grant, &per_port) {
        return Err(Refusal::Internal(format!(
            "session {} ended while its ports were added",
            entry.id
        )));
    }
    let mut outcomes = granted.record(op, caller, &more.subscription);
    tell_overlaps(op, &valid, &holder, &mut outcomes).await;
    if let Err(why) = Arc::clone(&valid.target).settle().await {
        op.sessions.end(entry.id, &why);
        return Err(Refusal::Internal(why));
    }
    Ok((outcomes, valid.notices()))
}

/// A request for the take-over decision of [`admission::authorize`] alone.
fn no_context(target: &TargetRef) -> SessionRequest {
    SessionRequest {
        target: target.clone(),
        ports: Vec::new(),
        on_concurrent_steal: ConcurrentSteal::Override,
        copy_target: false,
        scale_down: false,
        context: Default::default(),
        listen: false,
        profile: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Target;
    use crate::config::{Limits, SessionConfig};
    use crate::testing::{client, operator, operator_with, request};
    use mirrord_protocol::ErrorCode;
    use std::sync::atomic::Ordering;

    #[tokio::test]
    async fn a_refused_session_changes_nothing() {
        let limits = Limits {
            max_sessions_per_client: 1,
            ..Limits::default()
        };
        let (op, api) = operator(SessionConfig::default(), limits);
        let held = open(
            &op,
            request(&[(80, PortMode::Steal, None)]),
            client("alice"),
        )
        .await
        .unwrap();
        let routes = |port| api.routes(port).unwrap().load();
        let holder = || routes(80).unfiltered_steal.as_ref().map(|s| s.session_id);
        assert_eq!(holder(), Some(held.entry.id.0));

        let copy = |mut r: SessionRequest| {
            r.copy_target = true;
            r.scale_down = true;
            r
        };
        // Refused by the lock, by a bad filter, by the per-client limit: each with a copy
        // and a scale down asked for; none may touch anything.
        let cases = [
            (
                copy(request(&[(80, PortMode::Steal, None)])),
                "bob",
                ErrorCode::PortConflict,
            ),
            (
                copy(request(&[(81, PortMode::Steal, Some("("))])),
                "bob",
                ErrorCode::InvalidFilter,
            ),
            (
                copy(request(&[(81, PortMode::Steal, None)])),
                "alice",
                ErrorCode::Limit,
            ),
            (
                copy(request(&[(82, PortMode::Steal, None)])),
                "bob",
                ErrorCode::UnknownPort,
            ),
        ];
        for (req, who, code) in cases {
            let e = open(&op, req, client(who)).await.err().unwrap();
            assert_eq!(e.code, code, "{e}");
            assert_eq!(api.copies.load(Ordering::SeqCst), 0, "{e}");
            assert_eq!(holder(), Some(held.entry.id.0), "{e}");
            assert!(routes(81).is_empty(), "{e}");
            assert_eq!(op.sessions.list().len(), 1, "{e}");
        }
        assert_eq!(op.locks.snapshot().len(), 1);
    }

    #[tokio::test]
    async fn ending_a_session_frees_its_ports_then_its_copy() {
        let (op, api) = operator(SessionConfig::default(), Limits::default());
        let mut req = request(&[
            (80, PortMode::Steal, Some("x: y")),
            (81, PortMode::Mirror, None),
        ]);
        req.copy_target = true;
        let opened = open(&op, req, client("alice")).await.unwrap();
        assert_eq!(api.copies.load(Ordering::SeqCst), 1);
        assert_eq!(api.routes(80).unwrap().load().filtered_steals.len(), 1);
        assert_eq!(api.routes(81).unwrap().load().mirrors.len(), 1);
        assert_eq!(op.status(&client("alice")).copies.len(), 1);
        assert!(op.sessions.end(opened.entry.id, "test"));
        assert!(!op.sessions.end(opened.entry.id, "again"));
        assert_eq!(api.copies.load(Ordering::SeqCst), 0);
        assert!(api.routes(80).unwrap().load().is_empty());
        assert!(api.routes(81).unwrap().load().is_empty());
        assert!(op.locks.snapshot().is_empty());
        // The client's slot came back with it.
        open(
            &op,
            request(&[(80, PortMode::Steal, None)]),
            client("alice"),
        )
        .await
        .unwrap();
    }

    /// Scaling down and taking another user's port are an admin's; a developer may take
    /// over their own port. Refusals are `Forbidden` and change nothing.
    #[tokio::test]
    async fn roles_decide_scale_down_and_take_overs() {
        use crate::testing::developer;
        use mirrord_protocol::ConcurrentSteal;
        let (op, api) = operator(SessionConfig::default(), Limits::default());
        let holder = || {
            api.routes(80)
                .unwrap()
                .load()
                .unfiltered_steal
                .as_ref()
                .map(|s| s.session_id)
        };
        let alice = open(
            &op,
            request(&[(80, PortMode::Steal, None)]),
            developer("alice"),
        )
        .await
        .unwrap();

        let mut scale = request(&[(81, PortMode::Mirror, None)]);
        scale.copy_target = true;
        scale.scale_down = true;
        let e = open(&op, scale.clone(), developer("bob"))
            .await
            .err()
            .unwrap();
        assert_eq!(e.code, ErrorCode::Forbidden, "{e}");
        assert!(
            e.message
                .contains("only an admin may do it, and you are a developer"),
            "{e}"
        );
        assert_eq!(api.copies.load(Ordering::SeqCst), 0);
        assert!(api.routes(81).unwrap().load().is_empty());

        let mut over = request(&[(80, PortMode::Steal, None)]);
        over.on_concurrent_steal = ConcurrentSteal::Override;
        let e = open(&op, over.clone(), developer("bob"))
            .await
            .err()
            .unwrap();
        assert_eq!(e.code, ErrorCode::Forbidden, "{e}");
        assert!(
            e.message.starts_with(&format!("port 80 is held by session {} (alice): taking over another user's port needs an admin", alice.entry.id)),
            "{e}"
        );
        assert_eq!(holder(), Some(alice.entry.id.0));
        assert_eq!(op.sessions.list().len(), 1);

        let again = open(&op, over.clone(), developer("alice")).await.unwrap();
        assert_eq!(holder(), Some(again.entry.id.0));
        let root = open(&op, over, client("root")).await.unwrap();
        assert_eq!(holder(), Some(root.entry.id.0));
        let copy = open(&op, scale, client("root")).await.unwrap();
        assert_eq!(api.copies.load(Ordering::SeqCst), 1);

        // Status: a developer sees their own sessions, an admin everyone's.
        let ids = |c| {
            op.status(&c)
                .sessions
                .iter()
                .map(|s| s.session_id)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            ids(developer("alice")),
            vec![alice.entry.id, again.entry.id]
        );
        assert!(ids(developer("bob")).is_empty());
        assert!(op.status(&developer("bob")).copies.is_empty());
        assert_eq!(ids(client("root")).len(), 4);
        let me = op.status(&developer("alice")).caller;
        assert_eq!(
            (me.client_user.as_str(), me.role.as_str()),
            ("alice", "developer")
        );
        drop(copy);
    }

    /// `require_header_filter` narrows what a steal takes; the lock and status show it.
    #[tokio::test]
    async fn a_policy_header_is_added_to_every_steal() {
        use crate::policy::{Policies, PolicySpec};
        let spec = PolicySpec {
            target: "deployment/api".into(),
            require_header_filter: Some("^x-user: ".into()),
            ..PolicySpec::named("api-needs-user")
        };
        let policies = Policies::compile(&[spec]).unwrap();
        let (op, api) = operator_with(SessionConfig::default(), Limits::default(), policies);
        let opened = open(
            &op,
            request(&[
                (80, PortMode::Steal, Some("x-user: |.")),
                (81, PortMode::Mirror, None),
            ]),
            client("alice"),
        )
        .await
        .unwrap();
        assert_eq!(
            opened.reply.ports[0].filter,
            "header=x-user: |. and header=^x-user: "
        );
        assert_eq!(opened.reply.ports[1].filter, "");
        let table = api.routes(80).unwrap().load();
        let (_, filter) = &table.filtered_steals[0];
        let req = |h: &[(&str, &str)]| {
            let mut b = http::Request::builder().uri("/");
            for (k, v) in h {
                b = b.header(*k, *v);
            }
            b.body(()).unwrap().into_parts().0
        };
        assert!(filter.matches(&req(&[("x-user", "bob")])));
        assert!(!filter.matches(&req(&[("x-team", "a")])));
        let status = op.status(&client("alice"));
        assert_eq!(
            status.sessions[0].ports[0].filter,
            "header=x-user: |. and header=^x-user: "
        );
        let e = open(&op, request(&[(80, PortMode::Steal, None)]), client("bob"))
            .await
            .err()
            .unwrap();
        assert_eq!(e.code, ErrorCode::Policy, "{e}");
    }
}
