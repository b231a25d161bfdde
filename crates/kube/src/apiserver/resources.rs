//! The operator's API as Kubernetes objects: discovery documents, and sessions as the
//! `sessions` resource (listed as a Table for `kubectl get`, as a `SessionList` for `-o
//! json`), with the Status objects Kubernetes clients expect for errors.

use mirrord_controlplane::rbac::{GROUP, VERSION};
use mirrord_protocol::SessionInfo;
use serde_json::{json, Value};
use std::time::Duration;

pub fn api_version() -> String {
    format!("{GROUP}/{VERSION}")
}

pub fn group_list() -> Value {
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [group()]})
}

pub fn group() -> Value {
    let gv = json!({"groupVersion": api_version(), "version": VERSION});
    json!({"kind": "APIGroup", "apiVersion": "v1", "name": GROUP,
           "versions": [gv.clone()], "preferredVersion": gv})
}

/// What `kubectl api-resources` shows, and what lets `kubectl get sessions` find us.
pub fn resource_list() -> Value {
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": api_version(),
        "resources": [{
            "name": "sessions",
            "singularName": "session",
            "namespaced": true,
            "kind": "Session",
            "verbs": ["create", "delete", "get", "list"],
            "shortNames": ["mirrordsession"],
            "categories": ["mirrord"],
        }],
    })
}

/// A session's object name: its id in lower case (names are DNS-style).
pub fn name(s: &SessionInfo) -> String {
    s.session_id.to_string().to_ascii_lowercase()
}

fn created(s: &SessionInfo, now: chrono::DateTime<chrono::Utc>) -> String {
    let secs = i64::try_from(s.duration_secs).unwrap_or(i64::MAX);
    (now - chrono::Duration::seconds(secs)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn metadata(s: &SessionInfo, now: chrono::DateTime<chrono::Utc>) -> Value {
    json!({"name": name(s), "namespace": s.namespace, "creationTimestamp": created(s, now)})
}

pub fn object(s: &SessionInfo, now: chrono::DateTime<chrono::Utc>) -> Value {
    let ports: Vec<Value> = s
        .ports
        .iter()
        .map(|p| json!({"port": p.port, "mode": p.mode.to_string(), "filter": p.filter, "skipped": p.skipped}))
        .collect();
    json!({
        "apiVersion": api_version(),
        "kind": "Session",
        "metadata": metadata(s, now),
        "spec": {
            "target": s.target,
            "user": s.client_user,
            "clientId": s.client_id,
            "clientName": s.client_name,
            "clientHostname": s.client_hostname,
            "ports": ports,
        },
        "status": {
            "durationSeconds": s.duration_secs,
            "pingMs": s.ping_ms,
            "endsInSeconds": s.ends_in_secs,
        },
    })
}

pub fn list(sessions: &[SessionInfo], now: chrono::DateTime<chrono::Utc>) -> Value {
    let items: Vec<Value> = sessions.iter().map(|s| object(s, now)).collect();
    json!({"apiVersion": api_version(), "kind": "SessionList",
           "metadata": {"resourceVersion": ""}, "items": items})
}

/// `kubectl get sessions`: the columns a platform team wants at a glance.
pub fn table(sessions: &[SessionInfo], now: chrono::DateTime<chrono::Utc>) -> Value {
    let column = |name: &str, format: &str, description: &str| json!({"name": name, "type": "string", "format": format, "description": description, "priority": 0});
    let rows: Vec<Value> = sessions
        .iter()
        .map(|s| {
            let ports: Vec<String> = s
                .ports
                .iter()
                .map(|p| match (p.filter.is_empty(), &p.skipped) {
                    (_, Some(_)) => format!("{} {} (skipped)", p.port, p.mode),
                    (true, None) => format!("{} {}", p.port, p.mode),
                    (false, None) => format!("{} {} [{}]", p.port, p.mode, p.filter),
                })
                .collect();
            json!({
                "cells": [name(s), s.client_user, s.target, ports.join(", "), s.client_hostname,
                          age(Duration::from_secs(s.duration_secs))],
                "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                           "metadata": metadata(s, now)},
            })
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": ""},
        "columnDefinitions": [
            column("Name", "name", "The session id"),
            column("User", "", "The Kubernetes user who opened it"),
            column("Target", "", "What it steals or mirrors"),
            column("Ports", "", "Each port, its mode and filter"),
            column("Client", "", "The developer's machine"),
            column("Age", "", "How long it has been open"),
        ],
        "rows": rows,
    })
}

/// kubectl's own age format: `45s`, `12m`, `3h`, `2d`.
fn age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// A Kubernetes `Status` for an error: kubectl prints `Error from server (reason): message`.
pub fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// What a successful delete answers.
pub fn deleted(name: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
           "details": {"name": name, "group": GROUP, "kind": "sessions"}})
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirrord_protocol::{PortMode, PortOutcome, SessionId};

    fn session() -> SessionInfo {
        SessionInfo {
            session_id: SessionId(0x1F2E),
            target: "deployment/web".into(),
            namespace: "shop".into(),
            client_id: "k8s-1".into(),
            client_user: "alice".into(),
            client_name: "Alice".into(),
            client_hostname: "laptop".into(),
            ports: vec![PortOutcome {
                port: 80,
                mode: PortMode::Steal,
                filter: "header=x-user: alice".into(),
                http_filter: None,
                skipped: None,
                overlaps: vec![],
                service_port: None,
            }],
            duration_secs: 150,
            ping_ms: None,
            ends_in_secs: None,
        }
    }

    #[test]
    fn a_session_is_an_object_and_a_table_row() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-25T10:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let o = object(&session(), now);
        assert_eq!(o["metadata"]["name"], "0000000000001f2e");
        assert_eq!(o["metadata"]["creationTimestamp"], "2026-11-25T09:57:30Z");
        assert_eq!(o["spec"]["user"], "alice");
        let t = table(&[session()], now);
        assert_eq!(
            t["rows"][0]["cells"],
            json!([
                "0000000000001f2e",
                "alice",
                "deployment/web",
                "80 steal [header=x-user: alice]",
                "laptop",
                "2m"
            ])
        );
        assert_eq!(t["rows"][0]["object"]["metadata"]["namespace"], "shop");
    }

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(age(Duration::from_secs(5)), "5s");
        assert_eq!(age(Duration::from_secs(600)), "10m");
        assert_eq!(age(Duration::from_secs(3 * 3600)), "3h");
        assert_eq!(age(Duration::from_secs(3 * 86_400)), "3d");
    }
}
