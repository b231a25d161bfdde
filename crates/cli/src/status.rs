//! `status`, `sessions kill` and `console login`.

use crate::connect::{request, Endpoint};
use mirrord_protocol::{ClientMessage, KillRequest, ServerMessage, SessionId, StatusReport};

pub async fn show(ep: &Endpoint, json: bool) -> anyhow::Result<u8> {
    let report = match request(ep, ClientMessage::Status).await? {
        ServerMessage::Status(s) => *s,
        other => anyhow::bail!("unexpected answer: {other:?}"),
    };
    if json {
        let doc = crate::json::Status::of(&report);
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(0)
}

pub async fn kill(ep: &Endpoint, ids: Vec<SessionId>, all: bool) -> anyhow::Result<u8> {
    let req = if all {
        KillRequest::All
    } else {
        KillRequest::Sessions(ids)
    };
    match request(ep, ClientMessage::Kill(req)).await? {
        ServerMessage::Killed { sessions } => {
            if sessions.is_empty() {
                println!("no sessions to kill");
            }
            for s in sessions {
                println!("killed session {s}");
            }
            Ok(0)
        }
        other => anyhow::bail!("unexpected answer: {other:?}"),
    }
}

/// Prints the link (alone on stdout, so scripts can take it) and how long it works.
pub async fn console_login(ep: &Endpoint) -> anyhow::Result<u8> {
    match request(ep, ClientMessage::ConsoleLogin).await? {
        ServerMessage::ConsoleLogin {
            url,
            expires_in_secs,
        } => {
            println!("{url}");
            eprintln!("open this link in your browser within {expires_in_secs}s; it works once");
            Ok(0)
        }
        other => anyhow::bail!("unexpected answer: {other:?}"),
    }
}

fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            for line in c.lines() {
                widths[i] = widths[i].max(line.len());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: &[String], out: &mut String| {
        let height = cells
            .iter()
            .map(|c| c.lines().count().max(1))
            .max()
            .unwrap_or(1);
        for l in 0..height {
            let parts: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{:<w$}", c.lines().nth(l).unwrap_or(""), w = widths[i]))
                .collect();
            out.push_str(parts.join("  ").trim_end());
            out.push('\n');
        }
    };
    line(
        &headers.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
        &mut out,
    );
    for r in rows {
        line(r, &mut out);
    }
    out
}

fn duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

pub fn render(r: &StatusReport) -> String {
    let mut out = format!("Operator version: {}\n", r.operator_version);
    let c = &r.caller;
    out.push_str(&format!(
        "You: {} ({}, client id {}){}\n",
        c.client_user,
        c.role,
        c.client_id,
        if c.role == "admin" {
            ""
        } else {
            "; sessions below are your own"
        }
    ));
    match &r.license {
        Some(l) if !l.name.is_empty() => {
            out.push_str(&format!(
                "License: {} ({}), expires {}, fingerprint {}\n",
                l.name, l.organization, l.expires, l.fingerprint
            ));
            out.push_str(&format!(
                "Seats: {}/{} used in {}\n",
                l.seats_used, l.seats, l.seats_month
            ));
        }
        Some(_) => out.push_str("License: none loaded\n"),
        None => out.push_str("License: not enforced (no trusted license key configured)\n"),
    }
    if let Some(problem) = r.license.as_ref().and_then(|l| l.problem.as_ref()) {
        out.push_str(&format!("New sessions are refused: {problem}\n"));
    }
    out.push_str("\nActive copies:\n");
    if r.copies.is_empty() {
        out.push_str("  none\n");
    } else {
        let rows: Vec<Vec<String>> = r
            .copies
            .iter()
            .map(|c| {
                vec![
                    c.original_target.clone(),
                    c.namespace.clone(),
                    c.copy_name.clone(),
                    if c.scale_down { "yes" } else { "no" }.into(),
                ]
            })
            .collect();
        out.push_str(&table(
            &["Original Target", "Namespace", "Copy Name", "Scale Down?"],
            &rows,
        ));
    }
    out.push_str("\nSessions:\n");
    if r.sessions.is_empty() {
        out.push_str("  none\n");
        return out;
    }
    let rows: Vec<Vec<String>> = r
        .sessions
        .iter()
        .map(|s| {
            let ports = s
                .ports
                .iter()
                .map(|p| {
                    if p.filter.is_empty() {
                        format!("{}, {}", p.port, p.mode)
                    } else {
                        format!("{}, {}, {}", p.port, p.mode, p.filter)
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
            vec![
                s.session_id.to_string(),
                s.target.clone(),
                s.namespace.clone(),
                format!("{}/{}@{}", s.client_name, s.client_user, s.client_hostname),
                if ports.is_empty() { "-".into() } else { ports },
                duration(s.duration_secs),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "Session ID",
            "Target",
            "Namespace",
            "User",
            "Ports",
            "Session Duration",
        ],
        &rows,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirrord_protocol::{CopyInfo, PortMode, PortOutcome, SessionInfo};

    #[test]
    fn renders_the_table_admins_expect() {
        let port = |port, mode, filter: &str| PortOutcome {
            port,
            mode,
            filter: filter.into(),
            http_filter: None,
            skipped: None,
        };
        let r = StatusReport {
            operator_version: "0.1.0".into(),
            caller: mirrord_protocol::Caller {
                client_user: "alice".into(),
                client_id: "cafe".into(),
                role: "developer".into(),
            },
            license: None,
            copies: vec![CopyInfo {
                original_target: "deployment/api".into(),
                namespace: "default".into(),
                copy_name: "mirrord-copy-api-0a1b2c3d".into(),
                scale_down: true,
                session_id: SessionId(0x1f2e),
            }],
            sessions: vec![SessionInfo {
                session_id: SessionId(0x1f2e),
                target: "deployment/api".into(),
                namespace: "default".into(),
                client_id: "cafe".into(),
                client_user: "alice".into(),
                client_name: "Alice".into(),
                client_hostname: "laptop".into(),
                ports: vec![
                    port(80, PortMode::Steal, "header=x-user: alice"),
                    port(8080, PortMode::Mirror, ""),
                ],
                duration_secs: 3725,
                ping_ms: Some(0.4),
                ends_in_secs: None,
            }],
        };
        let text = render(&r);
        assert!(
            text.starts_with("Operator version: 0.1.0\nYou: alice (developer, client id cafe); sessions below are your own\n"),
            "{text}"
        );
        assert!(text.contains("License: not enforced"));
        assert!(
            text.contains("Original Target  Namespace  Copy Name                  Scale Down?"),
            "{text}"
        );
        assert!(
            text.contains("deployment/api   default    mirrord-copy-api-0a1b2c3d  yes"),
            "{text}"
        );
        let row = text
            .lines()
            .find(|l| l.starts_with("0000000000001F2E"))
            .expect("session row");
        assert!(
            row.contains("Alice/alice@laptop")
                && row.contains("80, steal, header=x-user: alice")
                && row.ends_with("1h2m"),
            "{row}"
        );
        // A second port goes on its own line, under the Ports column.
        let next = text
            .lines()
            .skip_while(|l| !l.starts_with("0000000000001F2E"))
            .nth(1)
            .unwrap();
        assert_eq!(next.trim(), "8080, mirror");
        assert_eq!(next.find("8080"), row.find("80, steal"));
    }
}
