//! The console's JSON view of the operator: the control plane's status report for the
//! caller (what `mirrordctl status` shows, filtered by role the same way), plus the
//! per-target holds and the stolen-request counters the telemetry already keeps, and the
//! policies (an admin sees every one, a developer those that bind them).

use super::auth::BrowserSession;
use mirrord_controlplane::Operator;
use mirrord_protocol::{PortMode, PortOutcome, SessionInfo};
use serde_json::{json, Value};
use std::collections::BTreeMap;

pub fn status(op: &Operator, session: &BrowserSession) -> Value {
    let report = op.status(&session.caller);
    let sessions: Vec<Value> = report
        .sessions
        .iter()
        .map(|s| session_json(op, s))
        .collect();
    json!({
        "operator_version": report.operator_version,
        "caller": {
            "client_user": report.caller.client_user,
            "role": report.caller.role,
        },
        "csrf": session.csrf,
        // Through the API server there is no console login to end.
        "can_log_out": session.logged_in,
        "license": report.license.as_ref().map(|l| json!({
            "name": l.name,
            "organization": l.organization,
            "expires": l.expires,
            "seats": l.seats,
            "seats_used": l.seats_used,
            "seats_month": l.seats_month,
            "problem": l.problem,
        })),
        "copies": report.copies.iter().map(|c| json!({
            "original_target": c.original_target,
            "namespace": c.namespace,
            "copy_name": c.copy_name,
            "scale_down": c.scale_down,
            "session_id": c.session_id.to_string(),
        })).collect::<Vec<_>>(),
        "targets": targets(op, &report.sessions),
        "policies_scope": match session.caller.role {
            mirrord_identity::Role::Admin => "all",
            _ => "binding",
        },
        "policies": op.policies_seen_by(&session.caller).iter().map(|p| json!({
            "name": p.name,
            "targets": p.targets,
            "rules": p.rules,
            "problem": p.problem,
        })).collect::<Vec<_>>(),
        "sessions": sessions,
    })
}

fn session_json(op: &Operator, s: &SessionInfo) -> Value {
    let stolen = op
        .sessions
        .get(s.session_id)
        .map(|e| op.telemetry.metrics().stolen_requests_of(&e.meta))
        .unwrap_or_default();
    json!({
        "session_id": s.session_id.to_string(),
        "target": s.target,
        "namespace": s.namespace,
        "client_user": s.client_user,
        "client_name": s.client_name,
        "client_hostname": s.client_hostname,
        "duration_secs": s.duration_secs,
        "ping_ms": s.ping_ms,
        "requests_stolen": stolen,
        "requests_bypassed": s.ports.iter().filter_map(|p| bypassed(op, s, p)).sum::<u64>(),
        "ports": s.ports.iter().map(|p| json!({
            "port": p.port,
            "mode": p.mode.to_string(),
            "filter": p.filter,
            "skipped": p.skipped,
        })).collect::<Vec<_>>(),
    })
}

/// Who holds what, per target and port (the status report's sessions, regrouped).
/// Requests the filtered steals on `port` of the session's target let through (shared by
/// every filtered session on that port: a request that matches none is bypassed once).
fn bypassed(op: &Operator, s: &SessionInfo, port: &PortOutcome) -> Option<u64> {
    let filtered_steal = port.mode == PortMode::Steal && !port.filter.is_empty();
    filtered_steal.then(|| {
        op.telemetry
            .metrics()
            .bypassed_requests_of(&s.namespace, &s.target, port.port)
    })
}

fn targets(op: &Operator, sessions: &[SessionInfo]) -> Value {
    let mut by_target: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for s in sessions {
        for p in s.ports.iter().filter(|p| p.skipped.is_none()) {
            by_target
                .entry(format!("{}/{}", s.namespace, s.target))
                .or_default()
                .push(json!({
                    "port": p.port,
                    "lock": match (p.mode, p.filter.is_empty()) {
                        (PortMode::Steal, true) => "exclusive steal",
                        (PortMode::Steal, false) => "filtered steal",
                        (PortMode::Mirror, _) => "mirror",
                    },
                    "filter": p.filter,
                    "bypassed": bypassed(op, s, p),
                    "client_user": s.client_user,
                    "session_id": s.session_id.to_string(),
                }));
        }
    }
    json!(by_target)
}
