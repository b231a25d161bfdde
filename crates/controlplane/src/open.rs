//! Opening a session: validate the request, arbitrate port locks, make the copy, subscribe
//! the ports, and record what happened.

use crate::api::Operator;
use crate::backend::{BackendError, Target};
use crate::sessions::{ActivePort, Control, SessionEntry};
use mirrord_dataplane::{Handoff, HttpFilter, Subscriber};
use mirrord_protocol::{
    ConcurrentSteal, CopyInfo, ErrorCode, ErrorReply, PortMode, PortOutcome, ServerMessage,
    SessionOpened, SessionRequest,
};
use mirrord_telemetry::{ClientInfo, Event, SessionMeta};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::mpsc;

/// Handoffs queued for one session before the data plane waits (steal) or drops (mirror).
const HANDOFF_QUEUE: usize = 1024;

pub struct Opened {
    pub entry: Arc<SessionEntry>,
    pub handoffs: mpsc::Receiver<Handoff>,
    pub ctl: mpsc::UnboundedReceiver<Control>,
}

fn refuse(
    op: &Operator,
    client: &ClientInfo,
    reason: &'static str,
    code: ErrorCode,
    message: String,
) -> ErrorReply {
    op.telemetry.record(Event::SessionRefused {
        reason,
        client: client.clone(),
        message: message.clone(),
    });
    ErrorReply { code, message }
}

pub async fn open(
    op: &Arc<Operator>,
    req: SessionRequest,
    client: ClientInfo,
    out: mpsc::Sender<ServerMessage>,
) -> Result<Opened, ErrorReply> {
    let bad = |code, msg: String| refuse(op, &client, "bad_request", code, msg);
    let target: Arc<dyn Target> = op.backend.target(&req.target).map_err(|e| match e {
        BackendError::UnknownTarget { .. } => bad(ErrorCode::UnknownTarget, e.to_string()),
        other => bad(ErrorCode::Internal, other.to_string()),
    })?;
    if req.ports.is_empty() {
        return Err(bad(
            ErrorCode::BadRequest,
            "a session needs at least one --port".into(),
        ));
    }
    if req.scale_down && !req.copy_target {
        return Err(bad(
            ErrorCode::BadRequest,
            "--scale-down needs --copy-target".into(),
        ));
    }
    let known = target.ports();
    let mut seen = HashSet::new();
    let mut filters = Vec::with_capacity(req.ports.len());
    for p in &req.ports {
        if !known.contains(&p.port) {
            return Err(bad(
                ErrorCode::UnknownPort,
                format!(
                    "{} has no port {}; its ports are {}",
                    req.target,
                    p.port,
                    known
                        .iter()
                        .map(u16::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        if !seen.insert(p.port) {
            return Err(bad(
                ErrorCode::BadRequest,
                format!("port {} is requested twice", p.port),
            ));
        }
        let f = match &p.filter {
            Some(spec) => Some(Arc::new(HttpFilter::compile(spec).map_err(|e| {
                bad(ErrorCode::InvalidFilter, format!("port {}: {e}", p.port))
            })?)),
            None => None,
        };
        filters.push(f);
    }

    // Governance: the license first (it says why nothing works), then the policies.
    if let Err(r) = op.licensing.check(chrono::Utc::now()) {
        return Err(refuse(op, &client, r.reason, ErrorCode::License, r.message));
    }
    if let Err(m) = op.policies.check(&req.target, &req.ports) {
        return Err(refuse(op, &client, "policy", ErrorCode::Policy, m));
    }

    let _serial = op.open_lock.lock().await;
    let id = op.sessions.new_id();
    let copy = if req.copy_target {
        let c = Arc::clone(&target)
            .copy(id.to_string(), req.scale_down)
            .await
            .map_err(|e| match e {
                BackendError::ScaleDownConflict(m) => {
                    refuse(op, &client, "conflict", ErrorCode::ScaleDownConflict, m)
                }
                other => bad(ErrorCode::CopyUnavailable, other.to_string()),
            })?;
        Some(c)
    } else {
        None
    };

    // Port locks. They apply to the originals; a copy's ports belong to its session alone.
    let mut outcomes = Vec::with_capacity(req.ports.len());
    let mut take_over = Vec::new();
    for (p, f) in req.ports.iter().zip(&filters) {
        let routes = match &copy {
            Some(c) => c.routes(p.port),
            None => target.routes(p.port),
        }
        .expect("port validated above");
        let display = f.as_ref().map(|f| f.display.clone()).unwrap_or_default();
        let mut skipped = None;
        if p.mode == PortMode::Steal && copy.is_none() {
            let current = routes.load();
            let mut holders: Vec<u64> = current
                .unfiltered_steal
                .iter()
                .map(|s| s.session_id)
                .collect();
            if f.is_none() {
                holders.extend(current.filtered_steals.iter().map(|(s, _)| s.session_id));
            }
            holders.dedup();
            if let Some(&holder) = holders.first() {
                let who = op
                    .sessions
                    .get(mirrord_protocol::SessionId(holder))
                    .map(|e| format!("session {} ({})", e.id, e.meta.client.client_user))
                    .unwrap_or_else(|| format!("session {:016X}", holder));
                match req.on_concurrent_steal {
                    ConcurrentSteal::Abort => {
                        return Err(refuse(
                            op,
                            &client,
                            "conflict",
                            ErrorCode::PortConflict,
                            format!(
                                "port {} of {} is already stolen by {who}; retry with --on-concurrent-steal override (take it) or continue (go on without it)",
                                p.port, req.target
                            ),
                        ));
                    }
                    ConcurrentSteal::Continue => {
                        skipped = Some(format!("not stolen: held by {who}"))
                    }
                    ConcurrentSteal::Override => {
                        take_over.extend(holders.iter().map(|h| (*h, p.port)))
                    }
                }
            }
        }
        outcomes.push((p, f.clone(), routes, display, skipped));
    }

    // A seat is counted only for a session that is otherwise able to start.
    if let Err(r) = op
        .licensing
        .admit_seat(&client.client_id, chrono::Utc::now())
    {
        return Err(refuse(op, &client, r.reason, ErrorCode::Seats, r.message));
    }

    let meta = Arc::new(SessionMeta {
        session_id: id.to_string(),
        target_type: req.target.kind.clone(),
        target_name: req.target.name.clone(),
        target_namespace: req.target.namespace.clone(),
        client: client.clone(),
    });
    let (handoff_tx, handoffs) = mpsc::channel(HANDOFF_QUEUE);
    let (ctl_tx, ctl) = mpsc::unbounded_channel();
    let copy_info = copy.as_ref().map(|c| CopyInfo {
        original_target: req.target.to_string(),
        namespace: req.target.namespace.clone(),
        copy_name: c.name().to_owned(),
        scale_down: req.scale_down,
        session_id: id,
    });
    let copy_name = copy.as_ref().map(|c| c.name().to_owned());
    let entry = Arc::new(SessionEntry {
        id,
        meta: Arc::clone(&meta),
        started: Instant::now(),
        ports: Mutex::new(Vec::new()),
        copy: Mutex::new(copy),
        copy_info,
        ctl: ctl_tx,
        ping: Mutex::new(None),
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
    let by = format!("session {id} ({})", client.client_user);
    for (holder, port) in take_over {
        if let Some(h) = op.sessions.get(mirrord_protocol::SessionId(holder)) {
            op.sessions.take_over(&h, port, &by);
        }
    }

    let mut reply = Vec::new();
    for (p, f, routes, display, skipped) in outcomes {
        reply.push(PortOutcome {
            port: p.port,
            mode: p.mode,
            filter: display.clone(),
            skipped: skipped.clone(),
        });
        if skipped.is_some() {
            continue;
        }
        let sub = Subscriber {
            session_id: id.0,
            tx: handoff_tx.clone(),
            counters: match p.mode {
                PortMode::Steal => op.telemetry.metrics().port_counters(&meta, p.port),
                PortMode::Mirror => mirrord_telemetry::PortCounters::detached(),
            },
        };
        routes.update(|r| match (p.mode, f) {
            (PortMode::Steal, None) => r.unfiltered_steal = Some(sub),
            (PortMode::Steal, Some(f)) => r.filtered_steals.push((sub, f)),
            (PortMode::Mirror, f) => r.mirrors.push((sub, f)),
        });
        entry.ports.lock().expect("ports lock").push(ActivePort {
            port: p.port,
            mode: p.mode,
            filter: display.clone(),
            routes,
        });
        op.telemetry.record(match p.mode {
            PortMode::Steal => Event::PortStolen {
                session: Arc::clone(&meta),
                port: p.port,
                http_filter: display,
            },
            PortMode::Mirror => Event::PortMirrored {
                session: Arc::clone(&meta),
                port: p.port,
                http_filter: display,
            },
        });
    }
    let _ = out
        .send(ServerMessage::SessionOpened(Box::new(SessionOpened {
            session_id: id,
            ports: reply,
            copy: copy_name,
        })))
        .await;
    Ok(Opened {
        entry,
        handoffs,
        ctl,
    })
}
