//! `mirrord-operator`: the server. Wires configuration, identity, telemetry, the
//! single-machine backend and the API together; everything else lives in the libraries.
#![forbid(unsafe_code)]

mod certs;
mod console;
mod demo;
mod fdlimit;
mod health;
mod license;
mod serve;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "mirrord-operator",
    version,
    about = "Open, self-hostable mirrord operator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator: interceptors for every configured target, and the mTLS API.
    Serve(serve::ServeArgs),
    /// A tiny HTTP server answering `hello from NAME`: the demo target's replicas.
    DemoServer {
        #[arg(long)]
        port: u16,
        /// The address to listen on (`0.0.0.0` in a pod).
        #[arg(long, default_value = "127.0.0.1")]
        bind: std::net::IpAddr,
        #[arg(long, default_value = "demo")]
        name: String,
    },
    /// Licenses: create vendor keys, sign, inspect.
    License {
        #[command(subcommand)]
        command: license::LicenseCommand,
    },
    /// The web console.
    Console {
        #[command(subcommand)]
        command: ConsoleCommand,
    },
    /// Client credentials.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
}

#[derive(Subcommand)]
enum ConsoleCommand {
    /// Print the console's route table (method, path, who may call it), one per line.
    Routes,
}

/// Where the state directory is: `--state-dir`, else `OPERATOR_STATE_DIR`, else
/// `~/.mirrord-operator` (in the chart's pod, the variable names the operator's own, so
/// `kubectl exec ... mirrord-operator certs ...` works on it as it is).
#[derive(clap::Args)]
struct StateDir {
    #[arg(long = "state-dir", env = "OPERATOR_STATE_DIR", default_value_os_t = default_state_dir())]
    path: PathBuf,
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Create the operator's CA in the state directory (never replaces one).
    Init {
        #[command(flatten)]
        state_dir: StateDir,
    },
    /// Write a credential directory for a user, signed by the operator's CA, and record it
    /// in the state directory's registry (only recorded credentials are accepted).
    Issue {
        #[command(flatten)]
        state_dir: StateDir,
        /// The CA's directory when it is not the state directory (in the chart's pod: the
        /// mounted CA Secret, also OPERATOR_CA_DIR).
        #[arg(long, env = "OPERATOR_CA_DIR")]
        ca_dir: Option<PathBuf>,
        #[arg(long)]
        user: String,
        /// A directory to write, or `-`: the credentials as one JSON document on standard
        /// output, which `mirrordctl --credentials FILE` reads (for `kubectl exec`).
        #[arg(long)]
        out: PathBuf,
        /// `developer` (open sessions, see and end their own) or `admin` (see and end
        /// everyone's, take over ports held by others, scale targets down).
        #[arg(long, default_value = "developer")]
        role: mirrord_identity::Role,
        /// How long the certificate is valid (e.g. 90d, 12h, 30m); expired certificates
        /// fail the handshake.
        #[arg(long, default_value = "90d", value_parser = humantime::parse_duration)]
        valid_for: std::time::Duration,
        /// Address clients dial; defaults to what `serve` last listened on, else 127.0.0.1:8443.
        #[arg(long)]
        operator_addr: Option<String>,
        /// Create the CA if the state directory has none (otherwise that is an error).
        #[arg(long)]
        init_ca: bool,
    },
    /// Every credential issued: user, role, client id, issued, expires, revoked.
    List {
        #[command(flatten)]
        state_dir: StateDir,
    },
    /// Revoke a user's credentials (all of them) or one credential by client id or serial
    /// number. A running operator refuses them within a second and ends their sessions; so
    /// does every operator started later on this state directory.
    #[command(group(clap::ArgGroup::new("whom").required(true)))]
    Revoke {
        #[command(flatten)]
        state_dir: StateDir,
        /// The CA's directory when it is not the state directory (also OPERATOR_CA_DIR).
        #[arg(long, env = "OPERATOR_CA_DIR")]
        ca_dir: Option<PathBuf>,
        /// A user name or a client id (see `certs list`); one that is both is refused:
        /// say which with --user or --client-id.
        #[arg(group = "whom")]
        who: Option<String>,
        /// Every credential of this user.
        #[arg(long, group = "whom")]
        user: Option<String>,
        /// The credential with this client id.
        #[arg(long, group = "whom")]
        client_id: Option<String>,
        /// The credential with this serial number (hex, as the operator logs it).
        #[arg(long, group = "whom")]
        serial: Option<String>,
        /// Who is revoking, for the record and the operator's log (default: your login).
        #[arg(long)]
        by: Option<String>,
    },
}

pub fn default_state_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".mirrord-operator"))
        .unwrap_or_else(|| PathBuf::from(".mirrord-operator"))
}

/// Exit codes (documented in the README): what went wrong decides, so scripts and
/// supervisors can tell a typo from an outage.
pub mod exit {
    /// A runtime failure (a port cannot be bound, the operator failed while serving).
    pub const RUNTIME: u8 = 1;
    /// The command line is wrong (clap's own code for usage errors).
    pub const USAGE: u8 = 2;
    /// The configuration (file or environment) is wrong.
    pub const CONFIG: u8 = 3;
    /// The state directory or its CA is missing, broken or unwritable.
    pub const STATE: u8 = 4;
}

/// An error with the exit code it deserves.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

impl std::error::Error for Failure {}

/// Tags an error with its exit code.
pub fn fail(code: u8) -> impl FnOnce(anyhow::Error) -> anyhow::Error {
    move |error| Failure { code, error }.into()
}

fn exit_code(e: &anyhow::Error) -> u8 {
    if let Some(f) = e.downcast_ref::<Failure>() {
        return f.code;
    }
    if e.downcast_ref::<mirrord_identity::IdentityError>()
        .is_some()
    {
        return exit::STATE;
    }
    exit::RUNTIME
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::DemoServer { port, bind, name } => demo::run(bind, port, name),
        Command::License { command } => license::run(command),
        Command::Console {
            command: ConsoleCommand::Routes,
        } => {
            for r in console::ROUTES {
                println!("{} {} {:?}", r.method, r.path, r.access);
            }
            Ok(())
        }
        Command::Certs {
            command: CertsCommand::Init { state_dir },
        } => certs::init(&state_dir.path),
        Command::Certs {
            command:
                CertsCommand::Issue {
                    state_dir,
                    ca_dir,
                    user,
                    out,
                    role,
                    valid_for,
                    operator_addr,
                    init_ca,
                },
        } => certs::issue(
            &state_dir.path,
            certs::IssueArgs {
                ca_dir,
                user,
                role,
                valid_for,
                out,
                addr: operator_addr,
                init_ca,
            },
        ),
        Command::Certs {
            command: CertsCommand::List { state_dir },
        } => certs::list(&state_dir.path),
        Command::Certs {
            command:
                CertsCommand::Revoke {
                    state_dir,
                    ca_dir,
                    who,
                    user,
                    client_id,
                    serial,
                    by,
                },
        } => {
            use mirrord_identity::registry::Revokee;
            let whom = match (who, user, client_id, serial) {
                (_, Some(u), _, _) => Revokee::User(u),
                (_, _, Some(c), _) => Revokee::ClientId(c),
                (_, _, _, Some(s)) => Revokee::Serial(s),
                (Some(w), ..) => Revokee::Either(w),
                (None, None, None, None) => unreachable!("clap requires one"),
            };
            certs::revoke(&state_dir.path, ca_dir.as_deref(), &whom, by)
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mirrord-operator: {e:#}");
            std::process::ExitCode::from(exit_code(&e))
        }
    }
}
