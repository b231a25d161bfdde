//! `mirrord-agent`: the data plane inside a Kubernetes target pod's network namespace.
//!
//! Started by the operator on the target pod's node (privileged, `hostPID`), it enters the
//! pod's network namespace ([`netns`]), redirects the target's ports to itself with a
//! redirect that fails open when the agent dies ([`redirect`]), and serves them with the
//! same interceptor as the single-machine operator (`mirrord-dataplane`).
//!
//! What each port does comes from the operator over mutual TLS ([`link`]): the sessions'
//! steals, filters and mirrors, applied by the same routing as on one machine ([`ports`]).
//! The sessions' view of the target (its container's environment, its resolver, connections
//! from the pod) is served on the same link ([`context`]).
#![forbid(unsafe_code)]

mod context;
mod link;
mod netns;
mod ports;
mod redirect;

use anyhow::Context;
use clap::{Parser, Subcommand};
use link::Link;
use mirrord_protocol::agent::RouteSnapshot;
use mirrord_telemetry::{logs, Telemetry};
use ports::Ports;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "mirrord-agent",
    version,
    about = "The data plane in a target pod's network namespace"
)]
struct Cli {
    /// One JSON object per log line.
    #[arg(long, global = true, env = "OPERATOR_JSON_LOG")]
    json_log: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enter the pod's network namespace and serve its ports until SIGTERM (or, with an
    /// operator, until it says to leave), which stops the redirect at once. With
    /// `--credentials`, the operator's sessions decide what each port does (and which ports
    /// are taken over); without, the `--port`s pass through.
    Intercept {
        /// The target pod's UID (`kubectl get pod NAME -o jsonpath={.metadata.uid}`).
        #[arg(long)]
        pod_uid: String,
        /// A port to take over and pass through (without an operator). Repeatable.
        #[arg(long = "port", required_unless_present_any = ["credentials", "accept"])]
        ports: Vec<u16>,
        /// Let the operator dial this agent on this port, instead of dialling it with a
        /// credential: the agent verifies the operator with the CA in `MIRRORD_AGENT_CA`
        /// (PEM). For an ephemeral container in the target pod, which cannot mount the
        /// agents' Secret (and must not carry a key in its spec, readable by whoever can
        /// read the pod).
        #[arg(long, conflicts_with = "credentials", requires = "in_pod")]
        accept: Option<u16>,
        /// The agent runs in the target pod itself (an ephemeral container): its network
        /// namespace is already the pod's, and the processes it sees are those the pod
        /// shares with it.
        #[arg(long)]
        in_pod: bool,
        /// The operator's agent gateway, `host:port`, dialled from the pod's namespace
        /// (default: the credential directory's `operator-address`).
        #[arg(long, requires = "credentials")]
        operator: Option<String>,
        /// A credential directory from the operator (ca.crt, client.crt, client.key,
        /// operator-address): the routes come from the operator.
        #[arg(long)]
        credentials: Option<PathBuf>,
        /// This agent's name, as the operator knows it (its pod's, or its ephemeral
        /// container's) [default: the host name, which in a pod is the pod's name].
        #[arg(long)]
        agent_name: Option<String>,
        /// How long the agent waits for an unreachable operator before it leaves.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        operator_timeout: Duration,
        /// How long the redirect outlives the agent: renewed every third of it.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        lease: Duration,
        /// The node's /proc (the agent runs with hostPID).
        #[arg(long, default_value = "/proc", hide = true)]
        proc_dir: PathBuf,
    },
    /// Wait for SIGTERM, doing nothing: the process of a targetless session's pod, whose
    /// network namespace and names the session's process uses (through that pod's agent).
    Idle,
}

/// Where the agent's routes come from.
enum Source {
    Fixed(Vec<u16>),
    Operator {
        reach: Reach,
        agent_name: String,
        timeout: Duration,
    },
}

/// How the agent and the operator find each other.
enum Reach {
    /// The agent dials, with the credential directory's certificate.
    Dial {
        addr: Option<String>,
        credentials: PathBuf,
    },
    /// The operator dials this port.
    Accept { port: u16 },
}

/// Where an accepting agent finds the operator's agent CA.
const CA_ENV: &str = "MIRRORD_AGENT_CA";

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let _logs = logs::init(cli.json_log, None);
    let result = match cli.command {
        Command::Intercept {
            pod_uid,
            ports,
            accept,
            in_pod,
            operator,
            credentials,
            agent_name,
            operator_timeout,
            lease,
            proc_dir,
        } => {
            let reach = match (credentials, accept) {
                (Some(credentials), _) => Some(Reach::Dial {
                    addr: operator,
                    credentials,
                }),
                (None, Some(port)) => Some(Reach::Accept { port }),
                (None, None) => None,
            };
            let source = match reach {
                Some(reach) => Source::Operator {
                    reach,
                    agent_name: agent_name.unwrap_or_else(|| {
                        std::fs::read_to_string("/proc/sys/kernel/hostname")
                            .map(|h| h.trim().to_owned())
                            .unwrap_or_default()
                    }),
                    timeout: operator_timeout,
                },
                None => Source::Fixed(ports),
            };
            intercept(&pod_uid, source, lease, &proc_dir, in_pod)
        }
        Command::Idle => idle(),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "agent failed");
            eprintln!("mirrord-agent: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn intercept(
    uid: &str,
    source: Source,
    lease: Duration,
    proc_dir: &std::path::Path,
    in_pod: bool,
) -> anyhow::Result<()> {
    let pid = if in_pod {
        // An ephemeral container: the pod's namespace is this process's own.
        eprintln!("mirrord-agent: in the pod's own network namespace");
        std::process::id()
    } else {
        let pid = netns::pod_process(proc_dir, uid)?;
        // Before the runtime exists: its threads are created inside the pod's namespace.
        let comm = std::fs::read_to_string(proc_dir.join(pid.to_string()).join("comm"))
            .unwrap_or_default();
        eprintln!(
            "mirrord-agent: entering the network namespace of pid {pid} ({})",
            comm.trim()
        );
        netns::enter(proc_dir, pid)?;
        pid
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let ports = Arc::new(Ports::new(
        Telemetry::new(Duration::from_secs(60)),
        uid.to_owned(),
    ));
    let redirect = Arc::new(redirect::Redirect::new());
    let result = runtime.block_on(serve(
        uid,
        pid,
        proc_dir,
        source,
        lease,
        Arc::clone(&ports),
        Arc::clone(&redirect),
    ));
    // Every connection still open is closed with the runtime and the ports, while its NAT
    // entry exists and is still applied (so the client hears it); only then are the
    // entries forgotten and the table deleted: forgetting the entry of a live connection,
    // or deleting the last NAT chain of the namespace under it, would black-hole it.
    drop(runtime);
    let redirected = ports.redirected();
    drop(ports);
    redirect::forget_connections(&redirected);
    if let Err(e) = redirect::nft(&redirect.delete_script()) {
        tracing::warn!(error = %e, "could not delete the redirect's table (it routes nothing)");
    }
    tracing::info!(pod_uid = uid, "agent stopped: redirect removed");
    result
}

async fn serve(
    uid: &str,
    pid: u32,
    proc_dir: &std::path::Path,
    source: Source,
    lease: Duration,
    ports: Arc<Ports>,
    redirect: Arc<redirect::Redirect>,
) -> anyhow::Result<()> {
    // Listening for SIGTERM starts before the redirect exists: a pod deleted right after it
    // started must still remove the redirect, not die by the signal's default action.
    let stopped = stopped()?;
    let leftovers = redirect::tables()?;
    redirect::nft(&redirect.create_script(&leftovers))?;
    // Aborted below when the agent leaves (its lease then runs out by itself).
    let renewer = tokio::spawn(renew(Arc::clone(&ports), Arc::clone(&redirect), lease));
    tracing::info!(
        pod_uid = uid,
        pid,
        lease_ms = lease.as_millis() as u64,
        "agent intercepting"
    );
    // The operator's "leave" (it saw this agent's pod being deleted, or replaced it) ends
    // the agent as SIGTERM does, whenever the kubelet gets round to the signal.
    let leave = Arc::new(tokio::sync::Notify::new());
    let run = run(source, uid, proc_dir, &ports, &redirect, lease, &leave);
    tokio::pin!(run);
    let (result, run_done) = tokio::select! {
        r = &mut run => (r, true),
        _ = stopped => (Ok(()), false),
        _ = leave.notified() => {
            tracing::info!(pod_uid = uid, "the operator asked this agent to leave");
            (Ok(()), false)
        }
    };
    renewer.abort();
    // New connections go to the target from now on; the ones in flight (stolen ones too:
    // the link stays up meanwhile) get a moment to finish rather than being cut. The map is
    // emptied, not the table deleted: the table's NAT chain keeps the connections already
    // redirected translated (in a pod it is often the namespace's only one).
    redirect.stop()?;
    if run_done {
        drained(&ports, DRAIN).await;
    } else {
        tokio::select! {
            _ = &mut run => {}
            _ = drained(&ports, DRAIN) => {}
        }
    }
    ports.stop_accepting().await;
    result
}

fn redirect_now(ports: &Ports, redirect: &redirect::Redirect, lease: Duration) {
    if let Err(e) = redirect.renew(|| ports.redirected(), lease) {
        tracing::warn!(error = %e, "could not set the redirect");
    }
}

/// How long a stopping agent lets connections in flight finish (its pod gets 5 s).
const DRAIN: Duration = Duration::from_secs(3);

async fn drained(ports: &Ports, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    // Connections redirected just before the redirect went are still in the backlog:
    // accepted (and counted) within a moment.
    tokio::time::sleep(Duration::from_millis(100)).await;
    while ports.active() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn idle() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async {
        stopped()?.await;
        Ok(())
    })
}

/// Resolves at SIGTERM or SIGINT; both handlers are installed when this returns.
fn stopped() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// Keeps the redirect of the held ports alive; a failed renewal is not fatal: the redirect
/// lapses (fails open) and the next one restores it.
async fn renew(ports: Arc<Ports>, redirect: Arc<redirect::Redirect>, lease: Duration) {
    let mut tick = tokio::time::interval(lease / 3);
    loop {
        redirect_now(&ports, &redirect, lease);
        tokio::select! {
            _ = tick.tick() => {}
            _ = ports.renewed.notified() => {}
        }
    }
}

async fn run(
    source: Source,
    uid: &str,
    proc_dir: &std::path::Path,
    ports: &Arc<Ports>,
    redirect: &redirect::Redirect,
    lease: Duration,
    leave: &tokio::sync::Notify,
) -> anyhow::Result<()> {
    match source {
        Source::Fixed(list) => {
            ports.pass_through(&list).await?;
            ports.renewed.notify_one();
            std::future::pending().await
        }
        Source::Operator {
            reach,
            agent_name,
            timeout,
        } => {
            let (dial, tls) = reach_operator(reach).await?;
            let link = Link::new(dial, tls, uid.to_owned(), agent_name);
            let context = context::Context::new(proc_dir.to_owned(), uid.to_owned());
            follow(&link, &context, ports, redirect, timeout, lease, leave).await
        }
    }
}

/// The link's connection and TLS: the credential directory's, or (accepting) the CA
/// from the environment and a listener on every address of the pod.
async fn reach_operator(reach: Reach) -> anyhow::Result<(link::Dial, Arc<rustls::ClientConfig>)> {
    match reach {
        Reach::Dial { addr, credentials } => {
            let creds = mirrord_identity::Credentials::load(&credentials).with_context(|| {
                format!(
                    "loading the agent's credentials from {}",
                    credentials.display()
                )
            })?;
            let tls = mirrord_identity::client_config(&creds)?;
            let addr = addr.unwrap_or_else(|| creds.operator_addr.clone());
            Ok((link::Dial::Connect(addr), tls))
        }
        Reach::Accept { port } => {
            let ca = std::env::var(CA_ENV)
                .with_context(|| format!("{CA_ENV} (the operator's agent CA) is not set"))?;
            let tls = mirrord_identity::ca_only_client_config(ca.as_bytes())
                .with_context(|| format!("reading {CA_ENV}"))?;
            // Dual-stack where the pod has IPv6, else IPv4 only.
            let listener = match tokio::net::TcpListener::bind(("::", port)).await {
                Ok(l) => l,
                Err(_) => tokio::net::TcpListener::bind(("0.0.0.0", port))
                    .await
                    .with_context(|| format!("listening on port {port} for the operator"))?,
            };
            Ok((link::Dial::Accept(listener), tls))
        }
    }
}

/// Applies the operator's routes while it is connected; without it routes nothing, and
/// leaves once it has been away for `timeout`. Told to leave, it says so on `leave` and
/// applies nothing more (the link stays up for the connections in flight).
async fn follow(
    link: &Arc<Link>,
    context: &Arc<context::Context>,
    ports: &Arc<Ports>,
    redirect: &redirect::Redirect,
    timeout: Duration,
    lease: Duration,
    leave: &tokio::sync::Notify,
) -> anyhow::Result<()> {
    let mut last_contact = tokio::time::Instant::now();
    loop {
        match link.connect().await {
            Ok(mut stream) => {
                tracing::info!("connected to the operator");
                // Ends with the connection's streams; aborted when the routes stop.
                let context_ops =
                    tokio::spawn(context::serve(Arc::clone(link), Arc::clone(context)));
                let reporter = tokio::spawn(report_counts(Arc::clone(link), Arc::clone(ports)));
                loop {
                    match stream.next().await {
                        Ok(Some(snapshot)) if snapshot.leave => {
                            leave.notify_one();
                            return std::future::pending().await;
                        }
                        Ok(Some(snapshot)) => {
                            if ports.apply(&snapshot, link).await {
                                // In force before the operator hears it is.
                                redirect_now(ports, redirect, lease);
                                tracing::info!(version = snapshot.version, redirected = ?ports.redirected(), "held ports changed");
                            }
                            link.applied(snapshot.version).await;
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!(error = format!("{e:#}"), "route stream broke");
                            break;
                        }
                    }
                }
                context_ops.abort();
                reporter.abort();
                link.disconnected();
                if ports.apply(&RouteSnapshot::default(), link).await {
                    redirect_now(ports, redirect, lease);
                }
                last_contact = tokio::time::Instant::now();
            }
            Err(e) => tracing::warn!(error = format!("{e:#}"), "cannot reach the operator"),
        }
        if last_contact.elapsed() > timeout {
            anyhow::bail!(
                "the operator has been unreachable for {}; leaving (the target serves its own traffic)",
                humantime::format_duration(timeout)
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Reports the filters' counters to the operator when they change, at most once a second
/// (cumulative: a lost report is made up by the next).
async fn report_counts(link: Arc<Link>, ports: Arc<Ports>) {
    let mut told = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = ports.counts();
        if now != told && link.counters(&now).await {
            told = now;
        }
    }
}
