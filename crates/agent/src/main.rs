//! `mirrord-agent`: the data plane inside a Kubernetes target pod's network namespace.
//!
//! Started by the operator on the target pod's node (privileged, `hostPID`), it enters the
//! pod's network namespace ([`netns`]), redirects the target's ports to itself with a
//! redirect that fails open when the agent dies ([`redirect`]), and serves them with the
//! same interceptor as the single-machine operator (`mirrord-dataplane`).
//!
//! Today it passes traffic through to the target; the operator's routes (steal, mirror,
//! filters) reach it in a later step (see the README's "Kubernetes targets" status).
#![forbid(unsafe_code)]

mod netns;
mod redirect;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mirrord_dataplane::{Endpoint, InterceptorLimits, PortPlane};
use mirrord_telemetry::{logs, Telemetry};
use std::net::SocketAddr;
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
    /// Enter the pod's network namespace and take over its ports (traffic passes through
    /// to the target) until SIGTERM, which removes the redirect at once.
    Intercept {
        /// The target pod's UID (`kubectl get pod NAME -o jsonpath={.metadata.uid}`).
        #[arg(long)]
        pod_uid: String,
        /// A target port to take over. Repeatable.
        #[arg(long = "port", required = true)]
        ports: Vec<u16>,
        /// How long the redirect outlives the agent: renewed every third of it.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        lease: Duration,
        /// The node's /proc (the agent runs with hostPID).
        #[arg(long, default_value = "/proc", hide = true)]
        proc_dir: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let _logs = logs::init(cli.json_log, None);
    let result = match cli.command {
        Command::Intercept {
            pod_uid,
            ports,
            lease,
            proc_dir,
        } => intercept(&pod_uid, &ports, lease, &proc_dir),
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
    ports: &[u16],
    lease: Duration,
    proc_dir: &std::path::Path,
) -> anyhow::Result<()> {
    let pid = netns::pod_process(proc_dir, uid)?;
    // Before the runtime exists: its threads are created inside the pod's namespace.
    netns::enter(proc_dir, pid)?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(serve(uid, pid, ports, lease))
}

async fn serve(uid: &str, pid: u32, ports: &[u16], lease: Duration) -> anyhow::Result<()> {
    let telemetry = Telemetry::new(Duration::from_secs(60));
    let mut mapping = Vec::new();
    for &port in ports {
        let bypass = telemetry.metrics().bypass_counter("", uid, port);
        let any: SocketAddr = ([0, 0, 0, 0], 0).into();
        let (plane, listener) = PortPlane::bind(
            port,
            any,
            bypass,
            Arc::default(),
            InterceptorLimits::default(),
        )
        .await
        .with_context(|| format!("listening for port {port}"))?;
        // The target, in this namespace; the agent's own connections are not redirected.
        plane.set_endpoints(vec![Arc::new(Endpoint {
            name: "target".into(),
            upstream: ([127, 0, 0, 1], port).into(),
        })]);
        mapping.push((port, plane.listen.port()));
        plane.spawn(listener);
    }
    redirect::nft(&redirect::create_script())?;
    redirect::nft(&redirect::renew_script(&mapping, lease))?;
    tracing::info!(pod_uid = uid, pid, ports = ?mapping, lease_ms = lease.as_millis() as u64, "agent intercepting");
    let mut renew = tokio::time::interval(lease / 3);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = renew.tick() => {
                // A failed renewal is not fatal: the redirect lapses (fails open) and the next
                // one restores it.
                if let Err(e) = redirect::nft(&redirect::renew_script(&mapping, lease)) {
                    tracing::warn!(error = %e, "could not renew the redirect");
                }
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    redirect::nft(&redirect::delete_script())?;
    redirect::forget_connections(ports);
    tracing::info!(pod_uid = uid, "agent stopped: redirect removed");
    Ok(())
}
