//! `serve`: start everything and run until SIGINT/SIGTERM.

use crate::certs::API_ADDRESS_FILE;
use crate::{exit, fail};
use anyhow::{bail, Context};
use mirrord_controlplane::backend::TargetBackend;
use mirrord_controlplane::config::Config;
use mirrord_controlplane::fence::Fence;
use mirrord_controlplane::local::LocalBackend;
use mirrord_controlplane::operator::Parts;
use mirrord_controlplane::policy::Policies;
use mirrord_controlplane::revocation::ApiTls;
use mirrord_controlplane::{api, Operator};
use mirrord_dataplane::budget::Budget;
use mirrord_dataplane::InterceptorLimits;
use mirrord_identity::{registry, CertificateAuthority, ServerTls};
use mirrord_license::{Licensing, PublicKey};
use mirrord_serve::Shutdown;
use mirrord_telemetry::{logs, metrics, Otel, Telemetry};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args)]
pub struct ServeArgs {
    #[arg(long)]
    config: PathBuf,
    #[arg(long, env = "OPERATOR_STATE_DIR", default_value_os_t = crate::default_state_dir())]
    state_dir: PathBuf,
    /// JSON logs (tracing-subscriber's layout); also OPERATOR_JSON_LOG=true.
    #[arg(long)]
    json_log: bool,
    /// The license file; reloaded when it changes.
    #[arg(long, env = "OPERATOR_LICENSE_PATH")]
    license: Option<PathBuf>,
    /// Load the CA (ca.crt, ca.key) from this directory instead of the state directory,
    /// and never create one (in a cluster: the chart's Secret, mounted read-only).
    #[arg(long, env = "OPERATOR_CA_DIR")]
    ca_dir: Option<PathBuf>,
    /// Serve `/healthz` and `/readyz` here (for the kubelet's probes), e.g. 0.0.0.0:8081.
    #[arg(long, env = "OPERATOR_HEALTH_ADDR")]
    health_addr: Option<SocketAddr>,
    /// Serve the web console (HTTPS, the operator's server certificate) here, e.g.
    /// 127.0.0.1:8444; overrides the config's `[console] listen`. Off when neither is set.
    #[arg(long, env = "OPERATOR_CONSOLE_ADDR")]
    console_addr: Option<SocketAddr>,
    /// Where browsers reach the console, when not at its listen address (a port-forward, a
    /// proxy): login links start with this, e.g. https://127.0.0.1:8444.
    #[arg(long, env = "OPERATOR_CONSOLE_URL")]
    console_url: Option<String>,
}

/// A vendor key built into this binary (`MIRRORD_LICENSE_PUBLIC_KEY` at build time); the
/// config's `[license] public_key` takes precedence.
const BUILT_IN_LICENSE_KEY: Option<&str> = option_env!("MIRRORD_LICENSE_PUBLIC_KEY");

fn env_bool(name: &str, default: bool) -> anyhow::Result<bool> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(v) => match v.trim().to_ascii_lowercase().as_str() {
            "true" | "1" => Ok(true),
            "false" | "0" | "" => Ok(false),
            _ => bail!("{name} must be \"true\" or \"false\", got {v:?}"),
        },
    }
}

/// Everything `serve` reads before starting: a mistake here exits with [`exit::CONFIG`].
struct Settings {
    json: bool,
    metrics: Option<SocketAddr>,
    config: Config,
}

fn settings(args: &ServeArgs) -> anyhow::Result<Settings> {
    let json = args.json_log || env_bool("OPERATOR_JSON_LOG", false)?;
    let metrics_enabled = env_bool("OPERATOR_METRICS_ENABLED", false)?;
    let metrics_addr: SocketAddr = match std::env::var("OPERATOR_METRICS_ADDR") {
        Ok(v) => v.parse().with_context(|| {
            format!("OPERATOR_METRICS_ADDR must be a socket address like 0.0.0.0:9000, got {v:?}")
        })?,
        Err(_) => "0.0.0.0:9000".parse().expect("valid default"),
    };
    let path = args.config.display().to_string();
    let text = std::fs::read_to_string(&args.config).with_context(|| format!("reading {path}"))?;
    let config = Config::parse(&path, &text)?;
    Ok(Settings {
        json,
        metrics: metrics_enabled.then_some(metrics_addr),
        config,
    })
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let Settings {
        json,
        metrics,
        config,
    } = settings(&args).map_err(fail(exit::CONFIG))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    // OTLP export, when configured, carries the log lines' events: set up first, on the
    // runtime its gRPC channel lives on.
    let otel = {
        let _in_runtime = runtime.enter();
        Otel::from_env()
            .map_err(anyhow::Error::from)
            .map_err(fail(exit::CONFIG))?
    };
    let _log_guard = logs::init(json, otel.as_ref().and_then(|o| o.logger_provider()));
    if otel.is_some() {
        tracing::info!(
            endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").unwrap_or_default(),
            "exporting OpenTelemetry logs and traces over OTLP/gRPC"
        );
    }
    let nofile = crate::fdlimit::raise();
    let ports: usize = config.targets.iter().map(|t| t.ports.len()).sum();
    let interception = InterceptorLimits {
        header_read_timeout: config.limits.header_read_timeout,
        response_timeout: config.limits.stolen_response_timeout,
        max_connections: config
            .limits
            .max_connections_per_port
            .unwrap_or_else(|| crate::fdlimit::per_port(nofile, ports)),
    };
    tracing::info!(
        open_files = nofile,
        connections_per_port = interception.max_connections,
        "interceptor limits"
    );

    let exported = otel.clone();
    let shutdown = Shutdown::new();
    let result = runtime.block_on(async move {
        // Listened for from the start: in a container the operator is PID 1, which ignores
        // a SIGTERM it has no handler for, so a standby (or a leader still starting) that
        // a rolling update deletes would otherwise run on, and could even take the lease,
        // until the kubelet's SIGKILL.
        let stop_asked = tokio_util::sync::CancellationToken::new();
        let asked = stop_asked.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            asked.cancel();
        });
        let console_addr = args
            .console_addr
            .or(config.console.as_ref().map(|c| c.listen));
        let health = match args.health_addr {
            Some(addr) => Some(crate::health::serve(addr).await?),
            None => None,
        };
        let mut telemetry = Telemetry::new(config.sessions.metrics_grace).with_otel(otel);
        if console_addr.is_some() {
            telemetry = telemetry.with_feed(crate::console::FEED_CAPACITY);
        }
        // Served by a standby too (its zeros keep a `sum()` over replicas true, and a
        // scraper of every pod finds each one up).
        if let Some(metrics_addr) = metrics {
            let listener = tokio::net::TcpListener::bind(metrics_addr)
                .await
                .with_context(|| format!("metrics endpoint cannot listen on {metrics_addr}"))?;
            shutdown
                .spawn_until_cancelled(metrics::serve_on(telemetry.metrics().clone(), listener));
        }
        // A standby waits here: what follows (the registry restored from its Secret, kept
        // in it, the backend's clean-up) is the leader's alone, and read when it leads.
        let fence = Fence::default();
        let mut leader = None;
        if let Some((k, lease)) = config
            .kubernetes
            .as_ref()
            .and_then(|k| Some((k, k.leader_lease.as_ref()?)))
        {
            let l = tokio::select! {
                l = lead(k, lease, health.clone(), telemetry.metrics()) => l?,
                _ = stop_asked.cancelled() => {
                    tracing::info!(target: "mirrord_operator", "stopping: a standby has nothing to end");
                    return Ok(());
                }
            };
            let holds = Arc::clone(&l);
            fence.guard(move || holds.holds());
            leader = Some(l);
        }
        // Every write the operator makes to the cluster stops when its leadership does.
        let cluster = match &config.kubernetes {
            Some(_) => Some(
                mirrord_kube::leader::fenced_client(fence.clone())
                    .await
                    .context(
                        "cannot reach the Kubernetes API server (in-cluster config or KUBECONFIG)",
                    )?,
            ),
            None => None,
        };
        mirrord_identity::private_dir(&args.state_dir)?;
        let ca = match &args.ca_dir {
            Some(dir) => CertificateAuthority::load(dir)?,
            None => CertificateAuthority::load_or_init(&args.state_dir)?,
        };
        // The registry and the revocation list live in the state directory (writable)
        // even when the CA comes from elsewhere; in a cluster, a Secret keeps them.
        let registry_secret = match config
            .kubernetes
            .as_ref()
            .and_then(|k| k.registry_secret.clone())
        {
            Some(name) => Some(restore_registry(cluster.clone(), &name, &args.state_dir).await?),
            None => None,
        };
        let missing = registry::sync_crl(&ca, &args.state_dir)?;
        if missing > 0 {
            tracing::warn!(
                missing,
                "the revocation list lacked credentials the registry says are revoked; rewrote it"
            );
        }
        let server_tls = ServerTls::new(&ca)?;
        let console_tls = match console_addr {
            Some(_) => Some(server_tls.browser_config()?),
            None => None,
        };
        let tls = ApiTls::load(server_tls, &args.state_dir)?;
        if let Some(secret) = registry_secret {
            // Tracked, not cancelled: its last save is part of stopping.
            shutdown.spawn(secret.keep(Duration::from_secs(1), shutdown.token()));
        }
        let mut kube_client = None;
        let backend: Arc<dyn TargetBackend> = match (&config.kubernetes, cluster) {
            (Some(k), Some(client)) => {
                let b = mirrord_kube::KubeBackend::start(
                    k,
                    client,
                    shutdown.clone(),
                    telemetry.metrics().clone(),
                )
                .await?;
                kube_client = Some(b.client());
                Arc::new(b)
            }
            _ => Arc::new(
                LocalBackend::start(
                    &config.targets,
                    &telemetry,
                    &args.state_dir,
                    interception,
                    Budget::new(config.limits.max_mirror_copy_bytes),
                )
                .await?,
            ),
        };
        let rbac = kube_client.clone().map(|c| {
            Arc::new(mirrord_kube::apiserver::access::AccessReviews::new(c))
                as Arc<dyn mirrord_controlplane::rbac::Rbac>
        });
        let listener = tokio::net::TcpListener::bind(config.api.listen)
            .await
            .with_context(|| format!("API cannot listen on {}", config.api.listen))?;
        let api_addr = listener.local_addr()?;
        std::fs::write(
            args.state_dir.join(API_ADDRESS_FILE),
            format!("{api_addr}\n"),
        )
        .with_context(|| format!("writing {}", args.state_dir.display()))?;
        let key = match config
            .license
            .as_ref()
            .map(|l| l.public_key.as_str())
            .or(BUILT_IN_LICENSE_KEY)
        {
            Some(k) => Some(k.parse::<PublicKey>().context("the trusted license key")?),
            None => None,
        };
        if key.is_none() {
            tracing::info!(
                "licensing not enforced: no trusted license key is built in or configured"
            );
        }
        let licensing = Arc::new(Licensing::new(key, args.license.clone(), &args.state_dir));
        if licensing.enforced() {
            telemetry.metrics().license_enforced.set(1);
            let gauge = telemetry.metrics().license_valid_seconds.clone();
            shutdown.spawn_until_cancelled(
                Arc::clone(&licensing).watch(Duration::from_secs(1), move |s| gauge.set(s)),
            );
        }
        let policies = Policies::compile(&config.policies).map_err(anyhow::Error::msg)?;
        let profiles = Policies::compile_profiles(&config.profiles).map_err(anyhow::Error::msg)?;
        let op = Arc::new(Operator::new(Parts {
            backend,
            telemetry,
            cfg: config.sessions.clone(),
            limits: config.limits.clone(),
            licensing,
            policies,
            profiles,
            rbac,
            registered: Some(tls.registered()),
            shutdown: shutdown.clone(),
            fence,
        }));
        if let Some(client) = kube_client.clone() {
            // The cluster's MirrordPolicy / MirrordClusterPolicy resources, beside the TOML's;
            // expected before the API serves, so no session opens unjudged.
            op.live_policies.expect();
            shutdown.spawn_until_cancelled(mirrord_kube::policies::watch(
                client,
                Arc::clone(&op.live_policies),
            ));
        }
        shutdown.spawn(api::serve(Arc::clone(&op), listener, tls.config()));
        shutdown.spawn_until_cancelled(tls.watch(Arc::clone(&op), Duration::from_secs(1)));
        let mut console = None;
        if let (Some(addr), Some(tls)) = (console_addr, console_tls) {
            let (_, mount) = crate::console::serve(
                addr,
                args.console_url.clone(),
                tls,
                Arc::clone(&op),
                shutdown.clone(),
            )
            .await?;
            console = Some(mount);
        }
        if let (Some(client), Some(k)) = (&kube_client, &config.kubernetes) {
            aggregated_api(&op, client, k, console).await?;
        }
        if let Some(leader) = &leader {
            // Only now the Service's endpoint: everything it reaches is serving.
            leader
                .mark()
                .await
                .context("labelling this replica the Service's endpoint")?;
        }
        if let Some(health) = &health {
            health.ready();
        }
        tracing::info!(
            api = %api_addr,
            targets = config.targets.len(),
            version = env!("CARGO_PKG_VERSION"),
            "operator ready"
        );
        stop_asked.cancelled().await;
        stop(&op, &shutdown).await;
        if let Some(leader) = leader {
            // A standby takes over at once, not when the lease runs out.
            leader.release().await;
        }
        Ok(())
    });
    if let Some(otel) = exported {
        // The last batches, while the runtime that carries the channel still runs.
        let _in_runtime = runtime.enter();
        otel.shutdown();
    }
    result
}

/// How long stopping waits for sessions to say goodbye: each carries the answers its
/// developer still owes for up to 5 s, then tells its client.
const STOP_BOUND: Duration = Duration::from_secs(10);

/// Stops taking connections, ends every session (each tells its client, and its `Session
/// Ended` is written), and waits for all of it, within [`STOP_BOUND`].
async fn stop(op: &Operator, shutdown: &Shutdown) {
    let started = std::time::Instant::now();
    let sessions = op.sessions.list().len();
    tracing::info!(sessions, "shutting down: ending all sessions");
    shutdown.cancel();
    op.end_all("operator shutting down");
    let done = shutdown.finish(STOP_BOUND).await;
    match done {
        true => {
            tracing::info!(sessions, took = ?started.elapsed(), "every session ended; stopping")
        }
        false => {
            tracing::warn!(still_running = shutdown.running(), bound = ?STOP_BOUND, "stopping with work still running after the bound")
        }
    }
}

/// Puts the registry kept in the Secret `name` (of the operator's namespace) back into the
/// state directory, before anything reads it.
async fn restore_registry(
    client: Option<kube::Client>,
    name: &str,
    state_dir: &std::path::Path,
) -> anyhow::Result<mirrord_kube::registry::RegistrySecret> {
    let client = client.context("the registry's Secret needs [kubernetes]")?;
    let namespace = std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "default".into());
    let secret = mirrord_kube::registry::RegistrySecret::new(client, &namespace, name, state_dir);
    let restored = secret.restore().await?;
    tracing::info!(
        secret = name,
        namespace,
        restored,
        "registry of issued credentials restored from its Secret"
    );
    Ok(secret)
}

/// The aggregated API, when configured (both its address and its certificate).
async fn aggregated_api(
    op: &Arc<Operator>,
    client: &kube::Client,
    k: &mirrord_controlplane::config::KubernetesConfig,
    console: Option<Arc<dyn mirrord_kube::apiserver::Mount>>,
) -> anyhow::Result<()> {
    match (k.aggregated_api_listen, &k.aggregated_api_tls) {
        (Some(listen), Some(dir)) => {
            mirrord_kube::apiserver::serve(Arc::clone(op), client, listen, dir, console).await?;
            Ok(())
        }
        (None, None) => Ok(()),
        _ => bail!("[kubernetes] aggregated_api_listen and aggregated_api_tls go together: set both or neither"),
    }
}

/// SIGINT, SIGTERM, or SIGHUP (the terminal that started the operator closed): all end
/// the operator cleanly, replicas and copies included.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    let name = tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
        _ = hup.recv() => "SIGHUP",
    };
    tracing::info!(signal = name, "shutdown requested");
}

/// Exit status of a replica that lost its leadership (it comes back as a standby).
const EXIT_LEADERSHIP_LOST: i32 = 4;

/// Waits until this replica leads (standing by, not ready, until then), then keeps the
/// lease. A leader that cannot renew stops deciding: it turns unready and leaves at once,
/// from a thread of its own, so a process that was frozen (SIGSTOP, a paused VM) leaves
/// as soon as it runs again, whatever its runtime was doing.
async fn lead(
    k: &mirrord_controlplane::config::KubernetesConfig,
    lease: &str,
    health: Option<crate::health::Health>,
    metrics: &metrics::Metrics,
) -> anyhow::Result<Arc<mirrord_kube::leader::Leader>> {
    let client = kube::Client::try_default()
        .await
        .context("cannot reach the Kubernetes API server for the leadership lease")?;
    let namespace = std::env::var("POD_NAMESPACE")
        .ok()
        .or(k.agent_namespace.clone())
        .unwrap_or_else(|| "default".into());
    let identity = std::env::var("POD_NAME").unwrap_or_else(|_| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| format!("pid-{}", std::process::id()))
    });
    let election = mirrord_kube::leader::Election::new(
        namespace,
        lease.to_owned(),
        identity.clone(),
        k.leader_lease_duration,
    );
    if let Some(h) = &health {
        // Ready to take over: a rolling update may go on; the Service sends nobody here
        // (it selects the leader's label).
        h.ready();
    }
    metrics.elected();
    let transitions = metrics.leader_transitions.clone();
    let leader = Arc::new(
        mirrord_kube::leader::acquire(client, election, |t| transitions.set(i64::from(t))).await,
    );
    metrics.leader.set(1);
    tracing::info!(target: "mirrord_operator", replica = %identity, %lease, transitions = leader.transitions, "leading");
    let (kept, watched, unready) = (Arc::clone(&leader), Arc::clone(&leader), health.clone());
    // Detached: it ends the process when the leadership ends.
    tokio::spawn(async move {
        let why = kept.keep().await;
        lost(&health, &why);
    });
    std::thread::Builder::new()
        .name("leadership".into())
        .spawn(move || loop {
            #[allow(
                clippy::disallowed_methods,
                reason = "a thread of its own, not a runtime worker: it must run whatever the runtime does"
            )]
            std::thread::sleep(Duration::from_millis(50));
            if !watched.holds() {
                lost(&unready, "the renew deadline passed");
            }
        })
        .context("starting the leadership watchdog")?;
    Ok(leader)
}

fn lost(health: &Option<crate::health::Health>, why: &str) -> ! {
    if let Some(h) = health {
        h.unready();
    }
    tracing::error!(target: "mirrord_operator", why, "leadership lost: leaving, to come back as a standby (only the leader decides)");
    eprintln!("mirrord-operator: leadership lost ({why}); leaving");
    std::process::exit(EXIT_LEADERSHIP_LOST)
}
