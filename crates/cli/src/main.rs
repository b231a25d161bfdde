//! `mirrordctl`: a developer's client. Steal or mirror a target's traffic into a local
//! process, show the operator's status, kill sessions.
#![forbid(unsafe_code)]

mod apiserver;
mod config_file;
mod connect;
mod context;
mod exec;
mod exit;
mod expiry;
mod json;
mod local;
mod overlaps;
mod plan;
mod quickack;
mod session;
mod status;

use clap::{Args, Parser, Subcommand, ValueEnum};
use connect::{Endpoint, Via};
use exit::Usage;
use mirrord_protocol::{ConcurrentSteal, HttpFilterSpec, PortMode, SessionId};
use plan::ModeChoice;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `0.1.0 (commit 1a2b3c4d5e6f, built 2026-11-25)`: which build a bug report is about.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("MIRRORDCTL_COMMIT"),
    ", built ",
    env!("MIRRORDCTL_BUILD_DATE"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "mirrordctl",
    version = VERSION,
    about = "Steal or mirror a shared target's traffic into your local process",
    after_help = "Exit codes: 0 done, 1 failed at run time (operator unreachable, session \
                  lost or ended by the operator), 2 wrong command line, 3 refused by the \
                  operator, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM)."
)]
struct Cli {
    /// Credentials from your operator's admin: the directory `mirrord-operator certs
    /// issue` writes, or the one file `certs issue --out -` prints
    /// [default: ~/.mirrord/credentials]
    #[arg(
        long,
        global = true,
        env = "MIRRORD_CREDENTIALS",
        value_name = "DIR|FILE"
    )]
    credentials: Option<PathBuf>,
    /// Reach the operator through this kubeconfig context's API server (its aggregated
    /// API; RBAC decides). Without a credential directory, the current context is used.
    #[arg(
        long,
        global = true,
        env = "MIRRORD_KUBE_CONTEXT",
        value_name = "NAME",
        conflicts_with = "credentials"
    )]
    context: Option<String>,
    /// How long to wait for the operator to connect, finish TLS and greet (`500ms`, `30s`).
    #[arg(long, global = true, env = "MIRRORD_CONNECT_TIMEOUT", default_value = "10s",
          value_parser = humantime::parse_duration, value_name = "DURATION")]
    connect_timeout: Duration,
    /// What mirrordctl logs on stderr: a level (`debug`) or tracing directives
    /// (`warn,mirrordctl=debug`).
    #[arg(long, global = true, env = "MIRRORDCTL_LOG", default_value = "warn",
          value_parser = log_filter, value_name = "FILTER")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Take the target's incoming traffic (all of it, or what matches the filter).
    Steal {
        #[command(flatten)]
        common: SessionArgs,
        /// What to do when another session already steals a port [default: the config
        /// file's, else abort]
        #[arg(long, value_enum)]
        on_concurrent_steal: Option<OnConcurrentSteal>,
    },
    /// Get a copy of the target's incoming traffic; the target keeps answering.
    Mirror {
        #[command(flatten)]
        common: SessionArgs,
    },
    /// Run your local process under a session: it starts first, the session opens once
    /// it listens on the local ports, and ends when it exits (mirrordctl exits with its
    /// code). `mirrordctl exec -t deployment/api --port 80=9090 -- ./server --port 9090`
    Exec {
        #[command(flatten)]
        common: SessionArgs,
        /// Mirror the traffic instead of stealing it [default: the config file's mode
        /// (mirrord's default, mirror, if it has none); steal without a file]
        #[arg(long, conflicts_with = "steal")]
        mirror: bool,
        /// Steal the traffic (whatever the config file says).
        #[arg(long)]
        steal: bool,
        /// What to do when another session already steals a port [default: the config
        /// file's, else abort]
        #[arg(long, value_enum)]
        on_concurrent_steal: Option<OnConcurrentSteal>,
        #[command(flatten)]
        context: ContextArgs,
        /// The command to run and its arguments (after `--`).
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Operator version, copies and sessions.
    Status {
        /// Output format: table, wide, json (fields described in the README; stable within
        /// its `schema_version`) or yaml.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: status::Output,
        /// The same as `-o json`.
        #[arg(long, conflicts_with = "output")]
        json: bool,
        #[command(flatten)]
        api: ApiNamespace,
    },
    /// Print a shell completion script (`mirrordctl completions bash > /etc/bash_completion.d/mirrordctl`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `mirrordctl man > mirrordctl.1; man ./mirrordctl.1`.
    Man,
    /// Manage sessions.
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
    },
    /// The operator's web console.
    Console {
        #[command(subcommand)]
        command: ConsoleCommand,
    },
}

#[derive(Subcommand)]
enum ConsoleCommand {
    /// Print a login link for your browser: valid for a minute, usable once, and it logs
    /// you in with your credentials' user and role (a developer sees their own sessions).
    Login {
        #[command(flatten)]
        api: ApiNamespace,
    },
}

/// Through a kubeconfig, the API server authorizes every request in a namespace: a user
/// bound to the chart's role in one namespace only asks there.
#[derive(clap::Args)]
struct ApiNamespace {
    /// The namespace the API server authorizes you in [default: the kubeconfig context's]
    #[arg(short = 'n', long)]
    namespace: Option<String>,
}

#[derive(Subcommand)]
enum SessionsCommand {
    /// The sessions you may see (all of them for an admin), as `status` shows them.
    List {
        /// Output format: table, wide, json (the `sessions` array of `status -o json`) or
        /// yaml.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: status::Output,
        #[command(flatten)]
        api: ApiNamespace,
    },
    /// End sessions now; their ports go back to the target.
    Kill {
        /// Session ids as shown by `mirrordctl status`.
        ids: Vec<String>,
        /// Every session, of every user.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        #[command(flatten)]
        api: ApiNamespace,
    },
}

#[derive(Args, Clone)]
pub struct SessionArgs {
    /// A mirrord config file (JSON with comments, TOML or YAML) whose incoming-traffic part
    /// describes the session; flags override it [default: .mirrord/mirrord.json if present]
    #[arg(short = 'f', long, env = "MIRRORD_CONFIG_FILE", value_name = "FILE")]
    config_file: Option<PathBuf>,
    /// `deployment/api` or `deployment/api/container/app` (a bare name means a deployment)
    /// [default: the config file's `target`]
    #[arg(short = 't', long)]
    target: Option<String>,
    /// The target's namespace [default: the config file's, else through a kubeconfig its
    /// context's namespace (as kubectl), else `default`]
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// `PORT=LOCAL`: the target's port and where your process listens (`80=127.0.0.1:9090`
    /// or `80=9090`). Repeatable. [default: the config file's `ports`/`port_mapping`]
    #[arg(long = "port")]
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
    #[arg(long)]
    scale_down: bool,
    /// Work under this operator profile (a `MirrordProfile` in a cluster): its rules bind
    /// the session; a policy may require one. Over the config file's `profile`.
    #[arg(long, value_name = "NAME")]
    profile: Option<String>,
}

/// What `exec`'s process gets of the target besides traffic: by default, as with mirrord,
/// its environment, its outgoing TCP connections and UDP flows and its name resolution (the config
/// file's `feature.env` and `feature.network` narrow it; these narrow it further).
#[derive(Args, Clone, Default)]
pub struct ContextArgs {
    /// Outgoing connections stay on this machine.
    #[arg(long)]
    no_outgoing: bool,
    /// Names resolve on this machine.
    #[arg(long)]
    no_remote_dns: bool,
    /// The process gets this machine's environment, not the target's.
    #[arg(long)]
    no_env: bool,
    /// Which of the target's files the process uses: `local` (none), `localwithoverrides`
    /// (the config file's `read_only`/`read_write` paths), `read` (the default, as mirrord),
    /// `write` (read and write; an admin's right). Over the config file's `feature.fs.mode`.
    #[arg(long, value_name = "MODE", value_parser = parse_fs_mode)]
    fs_mode: Option<mirrord_layer_proto::FsMode>,
    /// Only these of the target's variables (`;`-separated, `*` and `?` globs).
    #[arg(
        short = 's',
        long = "override-env-vars-include",
        env = "MIRRORD_OVERRIDE_ENV_VARS_INCLUDE",
        value_name = "GLOBS",
        conflicts_with = "env_exclude"
    )]
    env_include: Option<String>,
    /// All of the target's variables but these (`;`-separated, `*` and `?` globs).
    #[arg(
        short = 'x',
        long = "override-env-vars-exclude",
        env = "MIRRORD_OVERRIDE_ENV_VARS_EXCLUDE",
        value_name = "GLOBS"
    )]
    env_exclude: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum OnConcurrentSteal {
    /// Refuse the whole session.
    Abort,
    /// Start without the ports others steal.
    Continue,
    /// Take the ports over; the other sessions lose them.
    Override,
}

impl From<OnConcurrentSteal> for ConcurrentSteal {
    fn from(o: OnConcurrentSteal) -> Self {
        match o {
            OnConcurrentSteal::Abort => ConcurrentSteal::Abort,
            OnConcurrentSteal::Continue => ConcurrentSteal::Continue,
            OnConcurrentSteal::Override => ConcurrentSteal::Override,
        }
    }
}

impl SessionArgs {
    /// The command line's part of the session (see [`plan`]).
    fn flags(
        &self,
        on_concurrent_steal: Option<OnConcurrentSteal>,
        context: ContextArgs,
    ) -> anyhow::Result<plan::Flags> {
        let filter = HttpFilterSpec {
            header: self.header.clone(),
            path: self.path.clone(),
            method: self.method.clone(),
            body: Vec::new(),
            any: self.any,
            required_header: Vec::new(),
        };
        Ok(plan::Flags {
            config_file: self.config_file.clone(),
            target: self.target.clone(),
            namespace: self.namespace.clone(),
            ports: self.port_map()?,
            filter: (!filter.is_empty()).then_some(filter),
            on_concurrent_steal: on_concurrent_steal.map(Into::into),
            copy_target: self.copy_target,
            scale_down: self.scale_down,
            profile: self.profile.clone(),
            no_outgoing: context.no_outgoing,
            no_remote_dns: context.no_remote_dns,
            no_env: context.no_env,
            fs_mode: context.fs_mode,
            env_include: context.env_include,
            env_exclude: context.env_exclude,
        })
    }

    fn port_map(&self) -> anyhow::Result<Vec<(u16, SocketAddr)>> {
        self.ports
            .iter()
            .map(|p| {
                let (remote, local) = p.split_once('=').ok_or_else(|| {
                    Usage(format!(
                        "--port {p}: expected PORT=LOCAL, e.g. 80=127.0.0.1:9090"
                    ))
                })?;
                let remote: u16 = remote
                    .parse()
                    .map_err(|_| Usage(format!("--port {p}: `{remote}` is not a port number")))?;
                let local: SocketAddr = match local.parse::<u16>() {
                    Ok(port) => SocketAddr::from(([127, 0, 0, 1], port)),
                    Err(_) => local.parse().map_err(|_| {
                        Usage(format!(
                            "--port {p}: `{local}` is not an address like 127.0.0.1:9090"
                        ))
                    })?,
                };
                Ok((remote, local))
            })
            .collect()
    }
}

/// How to reach the operator: the credential directory given, else the kubeconfig context
/// given, else the default credential directory if it exists, else the kubeconfig if there
/// is one (in a cluster nobody needs a credential directory).
fn via(credentials: Option<PathBuf>, context: Option<String>) -> anyhow::Result<Via> {
    if let Some(dir) = credentials {
        return Ok(Via::Credentials(dir));
    }
    if context.is_some() {
        return Ok(Via::Kubernetes { context });
    }
    let dir = credentials_dir(None);
    if let Ok(d) = &dir {
        if d.exists() {
            return Ok(Via::Credentials(d.clone()));
        }
    }
    let kubeconfig = std::env::var_os("KUBECONFIG")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".kube").join("config"))
        });
    if kubeconfig.is_some_and(|k| std::env::var_os("KUBECONFIG").is_some() || k.exists()) {
        return Ok(Via::Kubernetes { context: None });
    }
    // Neither: the credential directory's error says what to do.
    dir.map(Via::Credentials)
}

/// The default credential directory, documented in the README and in `--help`.
fn credentials_dir(arg: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    arg.or_else(|| {
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".mirrord").join("credentials"))
    })
    .ok_or_else(|| {
        Usage(
            "HOME is not set, so there is no default credential directory: pass \
               --credentials DIR or set MIRRORD_CREDENTIALS"
                .into(),
        )
        .into()
    })
}

fn log_filter(s: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(s)
        .map(|_| s.to_owned())
        .map_err(|e| e.to_string())
}

/// Everything generated from the command definitions: nothing to keep in sync by hand.
fn generate(command: &Command) -> anyhow::Result<bool> {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    match command {
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut cmd, "mirrordctl", &mut std::io::stdout());
        }
        Command::Man => clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?,
        _ => return Ok(false),
    }
    Ok(true)
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    if generate(&cli.command)? {
        return Ok(exit::OK);
    }
    let mut ep = Endpoint {
        via: via(cli.credentials, cli.context)?,
        connect_timeout: cli.connect_timeout,
        namespace: None,
    };
    match cli.command {
        Command::Steal {
            common,
            on_concurrent_steal,
        } => {
            let plan = common
                .flags(on_concurrent_steal, Default::default())?
                .plan(
                    ModeChoice::Command(PortMode::Steal),
                    &ep.default_namespace().await?,
                )?;
            session::run(&ep, plan, None).await
        }
        Command::Mirror { common } => {
            let plan = common.flags(None, Default::default())?.plan(
                ModeChoice::Command(PortMode::Mirror),
                &ep.default_namespace().await?,
            )?;
            session::run(&ep, plan, None).await
        }
        Command::Exec {
            common,
            mirror,
            steal,
            on_concurrent_steal,
            context,
            command,
        } => {
            let mode = match (mirror, steal) {
                (true, _) => Some(PortMode::Mirror),
                (_, true) => Some(PortMode::Steal),
                _ => None,
            };
            let plan = common
                .flags(on_concurrent_steal, context)?
                .plan(ModeChoice::Flag(mode), &ep.default_namespace().await?)?;
            session::run(&ep, plan, Some(command)).await
        }
        Command::Status { output, json, api } => {
            let output = if json { status::Output::Json } else { output };
            ep.namespace = api.namespace;
            status::show(&ep, output, false).await
        }
        Command::Sessions {
            command: SessionsCommand::List { output, api },
        } => {
            ep.namespace = api.namespace;
            status::show(&ep, output, true).await
        }
        Command::Console {
            command: ConsoleCommand::Login { api },
        } => {
            ep.namespace = api.namespace;
            status::console_login(&ep).await
        }
        Command::Completions { .. } | Command::Man => unreachable!("handled by generate"),
        Command::Sessions {
            command: SessionsCommand::Kill { ids, all, api },
        } => {
            ep.namespace = api.namespace;
            let ids = ids
                .iter()
                .map(|s| s.parse::<SessionId>().map_err(|e| Usage(e.to_string())))
                .collect::<Result<Vec<_>, _>>()?;
            if ids.is_empty() && !all {
                return Err(Usage("name the sessions to kill, or pass --all".into()).into());
            }
            status::kill(&ep, ids, all).await
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log))
        .with_writer(std::io::stderr)
        .init();
    // One thread runs everything: the session loop, the local connections and requests.
    // Measured (issue 17) against the multi-threaded runtime this had, where each frame
    // the loop handled woke a worker through a futex, and against the loop spawned onto a
    // worker: c=1 steal serves +25-35% req/s over the first with a third of its context
    // switches, and at c=64 a stolen request costs the CLI 12-20 us of CPU instead of
    // 18-31 us (either). One core relays far more than a developer's machine sends.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = rt.block_on(run(cli));
    match result {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("mirrordctl: {}", exit::message(&e));
            std::process::ExitCode::from(exit::code_of(&e))
        }
    }
}

fn parse_fs_mode(s: &str) -> Result<mirrord_layer_proto::FsMode, String> {
    config_file::fs_mode(s)
        .ok_or_else(|| format!("`{s}`: modes are local, localwithoverrides, read and write"))
}
