//! `status`, `sessions kill` and `console login`.

use crate::connect::{request, Endpoint};
use mirrord_protocol::{ClientMessage, KillRequest, ServerMessage, SessionId, StatusReport};

/// How `status` and `sessions list` print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Output {
    /// Tables for people.
    #[default]
    Table,
    /// The tables with more columns (client id, ping, time left).
    Wide,
    /// The stable document described in the README (`schema_version`).
    Json,
    /// The same document as YAML.
    Yaml,
}

/// `status`, or with `sessions_only` `sessions list`.
pub async fn show(ep: &Endpoint, output: Output, sessions_only: bool) -> anyhow::Result<u8> {
    let report = match request(ep, ClientMessage::Status).await? {
        ServerMessage::Status(s) => *s,
        other => anyhow::bail!("unexpected answer: {other:?}"),
    };
    let doc = crate::json::Status::of(&report);
    match (output, sessions_only) {
        (Output::Json, false) => println!("{}", serde_json::to_string_pretty(&doc)?),
        (Output::Json, true) => println!("{}", serde_json::to_string_pretty(doc.sessions())?),
        (Output::Yaml, false) => print!("{}", serde_yaml_ng::to_string(&doc)?),
        (Output::Yaml, true) => print!("{}", serde_yaml_ng::to_string(doc.sessions())?),
        (table, false) => print!("{}", render(&report, table == Output::Wide)),
        (table, true) => print!("{}", sessions(&report, table == Output::Wide)),
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

/// Columns two spaces apart, no borders (like kubectl); cells may hold several lines;
/// wrapped to the terminal's width when there is one.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Dynamic)
        .set_header(headers.to_vec());
    for r in rows {
        t.add_row(r);
    }
    for c in t.column_iter_mut() {
        c.set_padding((0, 2));
    }
    let mut out: String = t
        .lines()
        .map(|l| l.trim_end().to_owned())
        .collect::<Vec<_>>()
        .join("\n");
    out.push('\n');
    out
}

fn duration(secs: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}

pub fn render(r: &StatusReport, wide: bool) -> String {
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
            rows,
        ));
    }
    if !r.policies.is_empty() {
        out.push_str("\nPolicies that bind you:\n");
        for p in &r.policies {
            out.push_str(&format!("  {}: {} ({})\n", p.name, p.rules, p.targets));
            if let Some(problem) = &p.problem {
                out.push_str(&format!("    cannot be used as written, so it refuses every session it binds: {problem}\n"));
            }
        }
    }
    out.push_str("\nSessions:\n");
    out.push_str(&sessions(r, wide));
    out
}

/// The sessions table (`sessions list`, and the end of `status`).
pub fn sessions(r: &StatusReport, wide: bool) -> String {
    if r.sessions.is_empty() && r.omitted_sessions == 0 {
        return "  none\n".into();
    }
    let rows: Vec<Vec<String>> = r
        .sessions
        .iter()
        .map(|s| {
            let ports = s
                .ports
                .iter()
                .map(|p| {
                    let port = match p.service_port {
                        Some(s) if s != p.port => format!("{} (service port {s})", p.port),
                        _ => p.port.to_string(),
                    };
                    let mut line = if p.filter.is_empty() {
                        format!("{port}, {}", p.mode)
                    } else {
                        format!("{port}, {}, {}", p.mode, p.filter)
                    };
                    for o in &p.overlaps {
                        line.push('\n');
                        line.push_str(&crate::overlaps::status_line(o));
                    }
                    line
                })
                .collect::<Vec<_>>()
                .join("\n");
            let mut row = vec![
                s.session_id.to_string(),
                s.target.clone(),
                s.namespace.clone(),
                format!("{}/{}@{}", s.client_name, s.client_user, s.client_hostname),
                if ports.is_empty() { "-".into() } else { ports },
                duration(s.duration_secs),
            ];
            if wide {
                row.push(s.client_id.clone());
                row.push(s.ping_ms.map_or("-".into(), |ms| format!("{ms:.1}ms")));
                row.push(s.ends_in_secs.map_or("-".into(), duration));
            }
            row
        })
        .collect();
    let mut headers = vec![
        "Session ID",
        "Target",
        "Namespace",
        "User",
        "Ports",
        "Session Duration",
    ];
    if wide {
        headers.extend(["Client ID", "Ping", "Ends In"]);
    }
    let mut out = table(&headers, rows);
    if r.omitted_sessions > 0 {
        out.push_str(&format!(
            "... and {} more sessions, left out: the whole report would not fit the protocol's largest frame
",
            r.omitted_sessions
        ));
    }
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
            overlaps: Vec::new(),
            service_port: None,
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
            omitted_sessions: 0,
            policies: Vec::new(),
        };
        let text = render(&r, false);
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
                && row.ends_with("1h 2m 5s"),
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
