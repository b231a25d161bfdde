//! The redirect of the target's ports to the agent, in the pod's network namespace, that
//! fails open: an nftables map from target port to agent port whose elements expire after
//! a lease the agent keeps renewing. If the agent dies (SIGKILL, OOM, its pod deleted),
//! nobody renews them and within one lease the target's port is served by the target
//! again; nothing needs to clean up first. A clean exit empties the map at once (new
//! connections go to the target), and deletes the table only once its connections are
//! closed: the table's NAT chain is what keeps the connections it redirected translated
//! (deleting the last NAT chain of a namespace stops NAT for every connection in it, and
//! those still open hear nothing again).
//!
//! Only traffic arriving from outside the pod (`prerouting`) is redirected: the agent's
//! own connections to the target (and the pod's local ones) go straight to it, so nothing
//! loops.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Every agent's table starts with this; the rest is the agent's process id, so an agent
/// that replaces another in the same namespace never removes the newcomer's redirect when
/// it finishes leaving.
pub const TABLE_PREFIX: &str = "mirrord_agent_";

#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    #[error("cannot run nft (the agent image ships it as /usr/local/bin/nft)")]
    Spawn(#[source] std::io::Error),
    #[error("nft refused the agent's rules: {0}")]
    Nft(String),
}

pub struct Redirect {
    table: String,
    /// Held while a renewal reads the ports and runs nft: two writers (the renewal tick
    /// and a route change) could otherwise finish in the other order, and an older list
    /// would replace a newer one until the next tick. True once stopped: no renewal after.
    writing: std::sync::Mutex<bool>,
}

impl Redirect {
    pub fn new() -> Self {
        Self::named(format!("{TABLE_PREFIX}{}", std::process::id()))
    }

    fn named(table: String) -> Self {
        Self {
            table,
            writing: std::sync::Mutex::new(false),
        }
    }

    /// Sets the map to `ports()` as they are when this writer's turn comes (nothing, once
    /// stopped).
    pub fn renew(
        &self,
        ports: impl FnOnce() -> Vec<(u16, u16)>,
        lease: Duration,
    ) -> Result<(), RedirectError> {
        let stopped = self.writing.lock().expect("redirect writer panicked");
        if *stopped {
            return Ok(());
        }
        nft(&self.renew_script(&ports(), lease))
    }

    /// Redirects nothing from now on, for good: the map is emptied, the table (and with
    /// it the translation of the connections already redirected) stays until
    /// [`Redirect::delete_script`].
    pub fn stop(&self) -> Result<(), RedirectError> {
        let mut stopped = self.writing.lock().expect("redirect writer panicked");
        *stopped = true;
        nft(&self.renew_script(&[], Duration::ZERO))
    }

    /// The agent's table, created after removing `leftovers` (tables of agents that were
    /// here before: dead, or leaving), in one transaction.
    pub fn create_script(&self, leftovers: &[String]) -> String {
        let t = &self.table;
        let mut s = String::new();
        for old in leftovers.iter().filter(|o| *o != t) {
            s.push_str(&format!("delete table ip {old}\n"));
        }
        s.push_str(&format!(
            "table ip {t} {{\n\
             \x20 map redirects {{ type inet_service : inet_service; flags timeout; }}\n\
             \x20 chain prerouting {{ type nat hook prerouting priority dstnat; meta l4proto tcp redirect to tcp dport map @redirects; }}\n\
             }}\n"
        ));
        s
    }

    /// One renewal: every `(target port, agent port)` for another `lease`, atomically.
    pub fn renew_script(&self, ports: &[(u16, u16)], lease: Duration) -> String {
        let t = &self.table;
        if ports.is_empty() {
            return format!("flush map ip {t} redirects\n");
        }
        let elements = ports
            .iter()
            .map(|(from, to)| format!("{from} timeout {}ms : {to}", lease.as_millis()))
            .collect::<Vec<_>>()
            .join(", ");
        format!("flush map ip {t} redirects\nadd element ip {t} redirects {{ {elements} }}\n")
    }

    pub fn delete_script(&self) -> String {
        format!("delete table ip {}\n", self.table)
    }
}

/// The agent tables in this network namespace now.
pub fn tables() -> Result<Vec<String>, RedirectError> {
    let out = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .map_err(RedirectError::Spawn)?;
    if !out.status.success() {
        return Err(RedirectError::Nft(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    Ok(parse_tables(&String::from_utf8_lossy(&out.stdout)))
}

fn parse_tables(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter_map(|l| l.trim().strip_prefix("table ip "))
        .filter(|t| t.starts_with(TABLE_PREFIX))
        .map(str::to_owned)
        .collect()
}

/// Forgets the NAT entries the redirect made for `ports` (target port, agent port): without
/// this, a client that reuses a connection's addresses soon after the agent leaves is
/// still sent to the agent's closed port until conntrack's entry ends. Only entries
/// redirected to this agent's ports: a replacement agent's connections are not touched.
/// Best effort: an entry that is gone is fine.
pub fn forget_connections(ports: &[(u16, u16)]) {
    for (port, to) in ports {
        let out = Command::new("conntrack")
            .args([
                "-D",
                "-p",
                "tcp",
                "--orig-port-dst",
                &port.to_string(),
                "--reply-port-src",
                &to.to_string(),
            ])
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
        let r = Redirect::named("mirrord_agent_7".into());
        let s = r.renew_script(&[(80, 41000), (8080, 41001)], Duration::from_secs(3));
        assert_eq!(
            s,
            "flush map ip mirrord_agent_7 redirects\n\
             add element ip mirrord_agent_7 redirects { 80 timeout 3000ms : 41000, 8080 timeout 3000ms : 41001 }\n"
        );
        assert_eq!(
            r.renew_script(&[], Duration::from_secs(3)),
            "flush map ip mirrord_agent_7 redirects\n"
        );
    }

    #[test]
    fn creation_removes_other_agents_tables_but_not_its_own() {
        let r = Redirect::named("mirrord_agent_7".into());
        let s = r.create_script(&["mirrord_agent_5".into(), "mirrord_agent_7".into()]);
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0], "delete table ip mirrord_agent_5");
        assert_eq!(lines[1], "table ip mirrord_agent_7 {");
        assert!(s.contains("hook prerouting"), "{s}");
        assert!(
            !s.contains("hook output"),
            "the agent's own connections are not redirected"
        );
    }

    #[test]
    fn only_agent_tables_are_listed() {
        let listing =
            "table ip filter\ntable ip mirrord_agent_12\ntable ip6 mirrord_agent_3\ntable ip nat\n";
        assert_eq!(parse_tables(listing), vec!["mirrord_agent_12".to_owned()]);
    }
}
