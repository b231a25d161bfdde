//! The operator's configuration file (TOML). Parsing is strict: unknown keys, bad addresses
//! and conflicting listens stop start-up with a message naming the line.

use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub api: ApiConfig,
    #[serde(default)]
    pub sessions: SessionConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub targets: Vec<TargetSpec>,
    #[serde(default)]
    pub license: Option<LicenseConfig>,
    #[serde(default)]
    pub policies: Vec<crate::policy::PolicySpec>,
    /// Named rules a session takes on by choosing them (`--profile`): `name`, `block`,
    /// `require_header_filter`, `outgoing_allow`.
    #[serde(default)]
    pub profiles: Vec<crate::policy::PolicySpec>,
    /// The web console (off unless listed, or `--console-addr` is given).
    #[serde(default)]
    pub console: Option<ConsoleConfig>,
    /// Targets are the cluster's workloads (README "Kubernetes targets"); `targets` must
    /// then be empty.
    #[serde(default)]
    pub kubernetes: Option<KubernetesConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// The agent's image (`mirrord-agent`, scripts/images.sh agent).
    pub agent_image: String,
    #[serde(default = "default_pull_policy")]
    pub agent_image_pull_policy: String,
    /// Where agent pods and their credential Secret live; default: the operator's own
    /// namespace (POD_NAMESPACE), else `default`.
    pub agent_namespace: Option<String>,
    /// Where the operator listens for its agents (mutual TLS, a CA of its own).
    #[serde(default = "default_gateway_listen")]
    pub gateway_listen: SocketAddr,
    /// How agents reach that listener from the target pods; default: POD_IP and the
    /// listen port.
    pub gateway_address: Option<String>,
    /// How long an agent stays after the last session on its pod ends (a new session
    /// within it starts at once).
    #[serde(default = "default_agent_linger", with = "humantime_serde")]
    pub agent_linger: Duration,
    /// How long a dead agent's redirect outlives it (the target serves again after it).
    #[serde(default = "default_agent_lease", with = "humantime_serde")]
    pub agent_lease: Duration,
    /// Agents run `privileged` rather than with the capabilities they need (NET_ADMIN for
    /// the redirect, SYS_ADMIN to enter the pod's network namespace, SYS_PTRACE to read
    /// its process's environment and root).
    #[serde(default)]
    pub agent_privileged: bool,
    /// Run each agent as an ephemeral container in the target pod (it shares the pod's
    /// network namespace: no node-level pod, no hostPID; NET_ADMIN and SYS_PTRACE only),
    /// reached by the operator dialling it.
    #[serde(default)]
    pub agent_ephemeral: bool,
    /// How long opening a session waits for the agents to apply its routes.
    #[serde(default = "default_agent_ready_timeout", with = "humantime_serde")]
    pub agent_ready_timeout: Duration,
    /// The aggregated API (the chart's APIService): where the Kubernetes API server reaches
    /// the operator. Off when unset.
    pub aggregated_api_listen: Option<SocketAddr>,
    /// Its serving certificate (`tls.crt`, `tls.key`; the APIService's caBundle signs it).
    pub aggregated_api_tls: Option<std::path::PathBuf>,
    /// A Secret in the operator's namespace that keeps the registry of issued credentials
    /// across restarts (the state directory of a pod does not last). Unset: not kept.
    pub registry_secret: Option<String>,
    /// A ClusterRole that lives as long as the installation (the chart's own): owner of
    /// what the operator makes outside its namespace (copies), so uninstalling removes it
    /// even when the operator cannot. Unset: such objects have no owner (a restarted
    /// operator still removes them by their labels).
    pub owner_cluster_role: Option<String>,
    /// Several replicas: the name of the `coordination.k8s.io` Lease (in the operator's
    /// namespace) that elects the one that decides; the others stand by, not ready.
    /// Unset: this process decides alone.
    pub leader_lease: Option<String>,
    /// How long a leader's lease stays its own unrenewed; it stops deciding after two
    /// thirds of it.
    #[serde(default = "default_leader_lease_duration", with = "humantime_serde")]
    pub leader_lease_duration: Duration,
}

fn default_leader_lease_duration() -> Duration {
    Duration::from_secs(15)
}

fn default_pull_policy() -> String {
    "IfNotPresent".into()
}
fn default_gateway_listen() -> SocketAddr {
    ([0, 0, 0, 0], 8445).into()
}
fn default_agent_linger() -> Duration {
    Duration::from_secs(5)
}
fn default_agent_lease() -> Duration {
    Duration::from_secs(3)
}
fn default_agent_ready_timeout() -> Duration {
    Duration::from_secs(60)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// HTTPS address of the console, e.g. `127.0.0.1:8444`.
    pub listen: SocketAddr,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LicenseConfig {
    /// Hex Ed25519 public key of the license vendor this operator trusts.
    pub public_key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// How often the operator pings each client.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// A client silent for this long has its session ended and its ports released.
    #[serde(with = "humantime_serde")]
    pub client_timeout: Duration,
    /// How long series labelled by a session id outlive their session in `/metrics`.
    #[serde(with = "humantime_serde")]
    pub metrics_grace: Duration,
    /// A session is ended this long after it started (off when unset).
    #[serde(with = "humantime_serde")]
    pub max_session_time: Option<Duration>,
    /// A session that holds no port for this long is ended (off when unset).
    #[serde(with = "humantime_serde")]
    pub unused_session_ttl: Option<Duration>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(1),
            client_timeout: Duration::from_secs(10),
            metrics_grace: Duration::from_secs(600),
            max_session_time: None,
            unused_session_ttl: None,
        }
    }
}

/// What one client may take from the operator, so that one user cannot exhaust it for the
/// others. Every limit is reported to the client that hits it, by name.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Open API connections (sessions included); more are closed at once.
    pub max_connections: usize,
    /// Sessions one client (one `client_id`) may hold at once.
    pub max_sessions_per_client: usize,
    /// Ports one session may ask for.
    pub max_ports_per_session: usize,
    /// Regexes and methods in one port's HTTP filter.
    pub max_filter_expressions: usize,
    /// Regexes one client may hold across all its sessions (each can take up to about
    /// 4 x `max_filter_regex_size` with its match caches).
    pub max_filter_regexes_per_client: usize,
    /// Bytes of one regex as written.
    pub max_filter_pattern_len: usize,
    /// Bytes one compiled regex may take (regex's `size_limit`); its lazy DFA cache gets
    /// as much again.
    pub max_filter_regex_size: usize,
    /// Bytes of `client_name` and `client_hostname`.
    pub max_client_label_len: usize,
    /// Connections one intercepted port serves at once (more wait in the listen backlog).
    /// Unset: derived from the open-file limit, keeping descriptors for the API.
    pub max_connections_per_port: Option<usize>,
    /// How long a client has to send a request head, when requests are routed one by one
    /// (a filter is active); `408 Request Timeout` after that.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// How long a stolen request waits for the developer's answer to begin;
    /// `504 Gateway Timeout` after that.
    #[serde(with = "humantime_serde")]
    pub stolen_response_timeout: Duration,
    /// Bytes mirror copies of HTTP requests may hold in the operator at once, all
    /// sessions together; a copy past it is dropped (counted), the real request untouched.
    pub max_mirror_copy_bytes: usize,
    /// The same for one session.
    pub max_mirror_copy_bytes_per_session: usize,
    /// Bytes of unfinished frames one client's connections may make the operator hold
    /// together (a frame is read whole before it is decoded).
    pub max_buffered_bytes_per_client: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 20_000,
            max_sessions_per_client: 64,
            max_ports_per_session: 32,
            max_filter_expressions: 16,
            max_filter_regexes_per_client: 64,
            max_filter_pattern_len: 1024,
            max_filter_regex_size: 256 * 1024,
            max_client_label_len: 256,
            max_connections_per_port: None,
            header_read_timeout: Duration::from_secs(60),
            stolen_response_timeout: Duration::from_secs(60),
            max_mirror_copy_bytes: mirrord_dataplane::budget::TOTAL_COPY_BYTES,
            max_mirror_copy_bytes_per_session: mirrord_dataplane::budget::SESSION_COPY_BYTES,
            max_buffered_bytes_per_client: 32 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    pub name: String,
    #[serde(default = "default_kind")]
    pub kind: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Replicas the operator runs itself; `{port}` (first port) and `{port:N}` (port N)
    /// are replaced by free local ports.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    #[serde(default = "one")]
    pub replicas: usize,
    pub ports: Vec<PortSpec>,
    /// Labels, for policies that select targets by label (`selector`), as a workload's.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    pub port: u16,
    pub listen: Spanned<SocketAddr>,
    #[serde(default)]
    pub upstream: Option<Spanned<SocketAddr>>,
}

fn default_kind() -> String {
    "deployment".into()
}
fn default_namespace() -> String {
    "default".into()
}
fn one() -> usize {
    1
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl Config {
    pub fn parse(path: &str, text: &str) -> Result<Self, ConfigError> {
        let err = |message: String| ConfigError {
            path: path.to_owned(),
            message,
        };
        let cfg: Config = toml::from_str(text).map_err(|e| err(e.to_string().trim().to_owned()))?;
        let line = |span: Range<usize>| text[..span.start.min(text.len())].lines().count().max(1);

        if cfg.kubernetes.is_some() && !cfg.targets.is_empty() {
            return Err(err(
                "[kubernetes] and [[targets]] cannot be combined: with [kubernetes] the targets are the cluster's workloads".into(),
            ));
        }
        let mut listens: HashMap<SocketAddr, usize> = HashMap::new();
        listens.insert(cfg.api.listen, 0);
        let mut names = HashMap::new();
        for t in &cfg.targets {
            let key = (t.kind.clone(), t.name.clone(), t.namespace.clone());
            if names.insert(key, ()).is_some() {
                return Err(err(format!(
                    "target {}/{} in namespace {} is defined twice",
                    t.kind, t.name, t.namespace
                )));
            }
            if t.ports.is_empty() {
                return Err(err(format!("target {}/{} has no ports", t.kind, t.name)));
            }
            if t.command.as_ref().is_some_and(|c| c.is_empty()) {
                return Err(err(format!(
                    "target {}/{}: command is empty",
                    t.kind, t.name
                )));
            }
            if t.replicas == 0 && t.command.is_some() {
                return Err(err(format!(
                    "target {}/{}: replicas must be at least 1",
                    t.kind, t.name
                )));
            }
            let mut ports = HashMap::new();
            for p in &t.ports {
                let at = line(p.listen.span());
                if ports.insert(p.port, ()).is_some() {
                    return Err(err(format!(
                        "line {at}: port {} of {}/{} is listed twice",
                        p.port, t.kind, t.name
                    )));
                }
                if let Some(prev) = listens.insert(*p.listen.get_ref(), at) {
                    let what = if prev == 0 {
                        "the API".to_owned()
                    } else {
                        format!("line {prev}")
                    };
                    return Err(err(format!(
                        "line {at}: listen address {} is already used by {what}",
                        p.listen.get_ref()
                    )));
                }
                match (&t.command, &p.upstream) {
                    (None, None) => {
                        return Err(err(format!(
                            "line {at}: port {} of {}/{} needs `upstream` (or give the target a `command`)",
                            p.port, t.kind, t.name
                        )))
                    }
                    (Some(_), Some(u)) => {
                        return Err(err(format!(
                            "line {}: port {} of {}/{} has an `upstream`, but the target's `command` runs its replicas; remove one",
                            line(u.span()),
                            p.port,
                            t.kind,
                            t.name
                        )))
                    }
                    _ => {}
                }
            }
        }
        if let Some(l) = &cfg.license {
            l.public_key
                .parse::<mirrord_license::PublicKey>()
                .map_err(|e| err(format!("[license] public_key: {e}")))?;
        }
        crate::policy::Policies::compile(&cfg.policies).map_err(err)?;
        crate::policy::Policies::compile_profiles(&cfg.profiles).map_err(err)?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"
[api]
listen = "127.0.0.1:8443"
[[targets]]
name = "api"
command = ["python3", "-m", "http.server", "{port}"]
[[targets.ports]]
port = 80
listen = "127.0.0.1:18080"
"#;

    #[test]
    fn parses_with_defaults() {
        let c = Config::parse("c.toml", OK).unwrap();
        assert_eq!(c.targets[0].kind, "deployment");
        assert_eq!(c.targets[0].namespace, "default");
        assert_eq!(c.sessions.client_timeout, Duration::from_secs(10));
    }

    #[test]
    fn errors_name_the_line() {
        let unknown = OK.replace("port = 80", "port = 80\nlisen = 1");
        let e = Config::parse("c.toml", &unknown).unwrap_err().to_string();
        assert!(e.contains("line 9") && e.contains("lisen"), "{e}");

        let bad = OK.replace("127.0.0.1:18080", "127.0.0.1:99999");
        let e = Config::parse("c.toml", &bad).unwrap_err().to_string();
        assert!(e.contains("line 9"), "{e}");

        let dup = format!("{OK}[[targets.ports]]\nport = 81\nlisten = \"127.0.0.1:18080\"\n");
        let e = Config::parse("c.toml", &dup).unwrap_err().to_string();
        assert!(
            e.contains("line 12") && e.contains("already used by line 9"),
            "{e}"
        );
    }
}
