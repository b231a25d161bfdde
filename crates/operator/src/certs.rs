//! `certs init|issue|list|revoke`: the CA, users' credential directories, and the
//! registry of what was issued (see `mirrord_identity::registry`).

use anyhow::Context;
use mirrord_identity::registry::{self, IssuedRecord};
use mirrord_identity::{CertificateAuthority, ClientSpec, Credentials, Role};
use std::path::Path;
use std::time::Duration;

/// File in the state directory where `serve` records the API address it listens on.
pub const API_ADDRESS_FILE: &str = "api-address";

/// `certs init`: a new CA (never over an existing one).
pub fn init(state_dir: &Path) -> anyhow::Result<()> {
    CertificateAuthority::init(state_dir)?;
    println!("created an operator CA in {}", state_dir.display());
    Ok(())
}

/// What `certs issue` is asked for.
pub struct IssueArgs {
    pub ca_dir: Option<std::path::PathBuf>,
    pub user: String,
    pub role: Role,
    pub valid_for: Duration,
    /// A directory, or `-` for one JSON document on standard output.
    pub out: std::path::PathBuf,
    pub addr: Option<String>,
    pub init_ca: bool,
}

pub fn issue(state_dir: &Path, a: IssueArgs) -> anyhow::Result<()> {
    let ca = match (&a.ca_dir, a.init_ca) {
        (Some(dir), _) => CertificateAuthority::load(dir)?,
        (None, true) => CertificateAuthority::load_or_init(state_dir)?,
        (None, false) => CertificateAuthority::load(state_dir)?,
    };
    let addr = a
        .addr
        .or_else(|| {
            std::fs::read_to_string(state_dir.join(API_ADDRESS_FILE))
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "127.0.0.1:8443".to_owned());
    let spec = ClientSpec {
        user: a.user.clone(),
        role: a.role,
        valid_for: a.valid_for,
    };
    let (record, written) = if a.out.as_os_str() == "-" {
        let (json, record) = Credentials::issue_bundle(&ca, state_dir, &spec, &addr)?;
        println!("{json}");
        (record, "standard output".to_owned())
    } else {
        let record = Credentials::issue(&ca, state_dir, &spec, &addr, &a.out)
            .with_context(|| format!("writing credentials to {}", a.out.display()))?;
        (record, a.out.display().to_string())
    };
    // On standard error when the credentials themselves went to standard output.
    let say = format!(
        "credentials for user {} ({}, client id {}, expires {}) written to {written} (operator at {addr})",
        a.user,
        a.role,
        record.client_id,
        time(&record.expires),
    );
    match a.out.as_os_str() == "-" {
        true => eprintln!("{say}"),
        false => println!("{say}"),
    }
    Ok(())
}

/// `certs list`: every credential issued, newest last.
pub fn list(state_dir: &Path) -> anyhow::Result<()> {
    let records = registry::list(state_dir)?;
    print!("{}", render(&records, chrono::Utc::now()));
    Ok(())
}

/// `certs revoke USER|CLIENT_ID` (or `--user`, `--client-id`, `--serial`).
pub fn revoke(
    state_dir: &Path,
    ca_dir: Option<&Path>,
    who: &registry::Revokee,
    by: Option<String>,
) -> anyhow::Result<()> {
    let ca = CertificateAuthority::load(ca_dir.unwrap_or(state_dir))?;
    let by = by.unwrap_or_else(whoami::username);
    let revoked = registry::revoke(&ca, state_dir, who, &by)?;
    for r in &revoked {
        println!(
            "revoked the credential of {} ({}, client id {})",
            r.user, r.role, r.client_id
        );
    }
    println!(
        "a running operator refuses {} from now on and ends {} sessions",
        if revoked.len() == 1 { "it" } else { "them" },
        if revoked.len() == 1 { "its" } else { "their" },
    );
    Ok(())
}

fn time(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

fn render(records: &[IssuedRecord], now: chrono::DateTime<chrono::Utc>) -> String {
    let header = ["USER", "ROLE", "CLIENT_ID", "ISSUED", "EXPIRES", "REVOKED"];
    let rows: Vec<[String; 6]> = records
        .iter()
        .map(|r| {
            let expires = match r.expires <= now {
                true => format!("{} (expired)", time(&r.expires)),
                false => time(&r.expires),
            };
            let revoked = match (&r.revoked_at, &r.revoked_by) {
                (Some(at), Some(by)) => format!("{} by {by}", time(at)),
                (Some(at), None) => time(at),
                _ => "-".into(),
            };
            [
                r.user.clone(),
                r.role.to_string(),
                r.client_id.clone(),
                time(&r.issued),
                expires,
                revoked,
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("{}\n", parts.join("  ").trim_end())
    };
    let mut out = line(&header.map(String::from));
    for row in &rows {
        out.push_str(&line(row));
    }
    if rows.is_empty() {
        out.push_str(
            "(no credentials issued yet: mirrord-operator certs issue --user NAME --out DIR)\n",
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn list_shows_who_what_and_whether_revoked() {
        let at = |d| chrono::Utc.with_ymd_and_hms(2026, 1, d, 9, 30, 0).unwrap();
        let rec = |user: &str, role, revoked: Option<&str>| IssuedRecord {
            user: user.into(),
            role,
            client_id: "0123456789abcdef".into(),
            serial: "01".into(),
            issued: at(1),
            expires: at(10),
            revoked_at: revoked.map(|_| at(5)),
            revoked_by: revoked.map(str::to_owned),
        };
        let out = render(
            &[
                rec("alice", Role::Developer, None),
                rec("bob", Role::Admin, Some("carol")),
            ],
            at(20),
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["USER", "ROLE", "CLIENT_ID", "ISSUED", "EXPIRES", "REVOKED"]
        );
        assert!(lines[1].starts_with("alice  developer  0123456789abcdef  2026-01-01 09:30 UTC  2026-01-10 09:30 UTC (expired)  -"), "{out}");
        let bob: Vec<&str> = lines[2].split("  ").filter(|c| !c.is_empty()).collect();
        assert_eq!(bob[0], "bob", "{out}");
        assert_eq!(bob[1].trim(), "admin", "{out}");
        assert_eq!(bob[5], "2026-01-05 09:30 UTC by carol", "{out}");
    }
}
