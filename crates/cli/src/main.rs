//! `mirrordctl`: a developer's client. Steal or mirror a target's traffic into a local
//! process, show the operator's status, kill sessions.
#![forbid(unsafe_code)]

mod connect;
mod expiry;
mod local;
mod session;
mod status;

use clap::{Args, Parser, Subcommand, ValueEnum};
use mirrord_protocol::{ConcurrentSteal, HttpFilterSpec, SessionId, TargetRef};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "mirrordctl",
    version,
    about = "Steal or mirror a shared target's traffic into your local process"
)]
struct Cli {
    /// Credential directory from `mirrord-operator certs issue`.
    #[arg(long, global = true, env = "MIRRORD_CREDENTIALS")]
    credentials: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Take the target's incoming traffic (all of it, or what matches the filter).
    Steal {
        #[command(flatten)]
        common: SessionArgs,
        /// What to do when another session already steals a port.
        #[arg(long, value_enum, default_value_t = OnConcurrentSteal::Abort)]
        on_concurrent_steal: OnConcurrentSteal,
    },
    /// Get a copy of the target's incoming traffic; the target keeps answering.
    Mirror {
        #[command(flatten)]
        common: SessionArgs,
    },
    /// Operator version, copies and sessions.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Manage sessions.
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
    },
}

#[derive(Subcommand)]
enum SessionsCommand {
    /// End sessions now; their ports go back to the target.
    Kill {
        /// Session ids as shown by `mirrordctl status`.
        ids: Vec<String>,
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
}

#[derive(Args, Clone)]
pub struct SessionArgs {
    /// `deployment/api` (a bare name means a deployment).
    #[arg(long)]
    target: String,
    #[arg(long, default_value = "default")]
    namespace: String,
    /// `PORT=LOCAL`: the target's port and where your process listens (`80=127.0.0.1:9090`
    /// or `80=9090`). Repeatable.
    #[arg(long = "port", required = true)]
    ports: Vec<String>,
    /// Header regex, matched against `name: value` (case-insensitive). Repeatable.
    #[arg(long)]
    header: Vec<String>,
    /// Path regex, matched against the path, then path and query. Repeatable.
    #[arg(long)]
    path: Vec<String>,
    /// HTTP method. Repeatable.
    #[arg(long)]
    method: Vec<String>,
    /// Any one filter part matching is enough (default: all must match).
    #[arg(long)]
    any: bool,
    /// Work on a copy of the target instead of the target itself.
    #[arg(long)]
    copy_target: bool,
    /// With --copy-target: stop the original replicas while the session lives.
    #[arg(long, requires = "copy_target")]
    scale_down: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum OnConcurrentSteal {
    Abort,
    Continue,
    Override,
}

impl SessionArgs {
    pub fn target_ref(&self) -> TargetRef {
        let (kind, name) = match self.target.split_once('/') {
            Some((k, n)) => (k.to_owned(), n.to_owned()),
            None => ("deployment".to_owned(), self.target.clone()),
        };
        TargetRef {
            kind,
            name,
            namespace: self.namespace.clone(),
        }
    }

    pub fn filter(&self) -> Option<HttpFilterSpec> {
        let f = HttpFilterSpec {
            header: self.header.clone(),
            path: self.path.clone(),
            method: self.method.clone(),
            any: self.any,
        };
        (!f.is_empty()).then_some(f)
    }

    pub fn port_map(&self) -> anyhow::Result<Vec<(u16, SocketAddr)>> {
        self.ports
            .iter()
            .map(|p| {
                let (remote, local) = p.split_once('=').ok_or_else(|| {
                    anyhow::anyhow!("--port {p}: expected PORT=LOCAL, e.g. 80=127.0.0.1:9090")
                })?;
                let remote: u16 = remote
                    .parse()
                    .map_err(|_| anyhow::anyhow!("--port {p}: `{remote}` is not a port number"))?;
                let local: SocketAddr = match local.parse::<u16>() {
                    Ok(port) => SocketAddr::from(([127, 0, 0, 1], port)),
                    Err(_) => local.parse().map_err(|_| {
                        anyhow::anyhow!(
                            "--port {p}: `{local}` is not an address like 127.0.0.1:9090"
                        )
                    })?,
                };
                Ok((remote, local))
            })
            .collect()
    }
}

fn credentials_dir(arg: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    arg.or_else(|| {
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".mirrord").join("credentials"))
    })
    .ok_or_else(|| {
        anyhow::anyhow!("no credentials: pass --credentials DIR or set MIRRORD_CREDENTIALS")
    })
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MIRRORDCTL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = rt.block_on(async move {
        let creds = credentials_dir(cli.credentials)?;
        match cli.command {
            Command::Steal {
                common,
                on_concurrent_steal,
            } => {
                let on = match on_concurrent_steal {
                    OnConcurrentSteal::Abort => ConcurrentSteal::Abort,
                    OnConcurrentSteal::Continue => ConcurrentSteal::Continue,
                    OnConcurrentSteal::Override => ConcurrentSteal::Override,
                };
                session::run(&creds, common, mirrord_protocol::PortMode::Steal, on).await
            }
            Command::Mirror { common } => {
                session::run(
                    &creds,
                    common,
                    mirrord_protocol::PortMode::Mirror,
                    ConcurrentSteal::Abort,
                )
                .await
            }
            Command::Status { json } => status::show(&creds, json).await,
            Command::Sessions {
                command: SessionsCommand::Kill { ids, all },
            } => {
                let ids = ids
                    .iter()
                    .map(|s| s.parse::<SessionId>())
                    .collect::<Result<Vec<_>, _>>()?;
                if ids.is_empty() && !all {
                    anyhow::bail!("name the sessions to kill, or pass --all");
                }
                status::kill(&creds, ids, all).await
            }
        }
    });
    match result {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("mirrordctl: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
