//! The redirect of the target's ports to the agent, in the pod's network namespace, that
//! fails open: an nftables map from target port to agent port whose elements expire after
//! a lease the agent keeps renewing. If the agent dies (SIGKILL, OOM, its pod deleted),
//! nobody renews them and within one lease the target's port is served by the target
//! again; nothing needs to clean up first. A clean exit removes the table at once.
//!
//! Only traffic arriving from outside the pod (`prerouting`) is redirected: the agent's
//! own connections to the target (and the pod's local ones) go straight to it, so nothing
//! loops.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The agent's table; one agent serves a pod, so one table per network namespace.
pub const TABLE: &str = "mirrord_agent";

#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    #[error("cannot run nft (the agent image ships it as /usr/local/bin/nft)")]
    Spawn(#[source] std::io::Error),
    #[error("nft refused the agent's rules: {0}")]
    Nft(String),
}

/// The table, created afresh (a dead agent's leftover is replaced in the same transaction).
pub fn create_script() -> String {
    format!(
        "table ip {TABLE}\n\
         delete table ip {TABLE}\n\
         table ip {TABLE} {{\n\
         \x20 map redirects {{ type inet_service : inet_service; flags timeout; }}\n\
         \x20 chain prerouting {{ type nat hook prerouting priority dstnat; meta l4proto tcp redirect to tcp dport map @redirects; }}\n\
         }}\n"
    )
}

/// One renewal: every `(target port, agent port)` for another `lease`, atomically.
pub fn renew_script(ports: &[(u16, u16)], lease: Duration) -> String {
    if ports.is_empty() {
        return format!("flush map ip {TABLE} redirects\n");
    }
    let elements = ports
        .iter()
        .map(|(from, to)| format!("{from} timeout {}ms : {to}", lease.as_millis()))
        .collect::<Vec<_>>()
        .join(", ");
    format!("flush map ip {TABLE} redirects\nadd element ip {TABLE} redirects {{ {elements} }}\n")
}

pub fn delete_script() -> String {
    format!("delete table ip {TABLE}\n")
}

/// Forgets the NAT entries the redirect made for `ports`: without this, a client that
/// reuses a connection's addresses soon after the agent leaves is still sent to the agent's
/// closed port until conntrack's entry ends. Best effort: an entry that is gone is fine.
pub fn forget_connections(ports: &[u16]) {
    for port in ports {
        let out = Command::new("conntrack")
            .args(["-D", "-p", "tcp", "--orig-port-dst", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output();
        match out {
            // conntrack exits 1 when nothing matched.
            Ok(o) if o.status.success() || o.status.code() == Some(1) => {}
            Ok(o) => {
                tracing::warn!(port, error = %String::from_utf8_lossy(&o.stderr).trim(), "could not forget the port's redirected connections")
            }
            Err(e) => tracing::warn!(port, error = %e, "could not run conntrack"),
        }
    }
}

/// Runs an nft script as one transaction.
pub fn nft(script: &str) -> Result<(), RedirectError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(RedirectError::Spawn)?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())
        .map_err(RedirectError::Spawn)?;
    let out = child.wait_with_output().map_err(RedirectError::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(RedirectError::Nft(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_one_atomic_batch_with_the_lease_on_each_port() {
        let s = renew_script(&[(80, 41000), (8080, 41001)], Duration::from_secs(3));
        assert_eq!(
            s,
            "flush map ip mirrord_agent redirects\n\
             add element ip mirrord_agent redirects { 80 timeout 3000ms : 41000, 8080 timeout 3000ms : 41001 }\n"
        );
    }

    #[test]
    fn creation_replaces_a_leftover_table() {
        let s = create_script();
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0], "table ip mirrord_agent");
        assert_eq!(lines[1], "delete table ip mirrord_agent");
        assert!(s.contains("hook prerouting"), "{s}");
        assert!(
            !s.contains("hook output"),
            "the agent's own connections are not redirected"
        );
    }
}
