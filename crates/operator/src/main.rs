//! `mirrord-operator`: the server. Wires configuration, identity, telemetry, the
//! single-machine backend and the API together; everything else lives in the libraries.
#![forbid(unsafe_code)]

mod certs;
mod demo;
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
        #[arg(long, default_value = "demo")]
        name: String,
    },
    /// Licenses: create vendor keys, sign, inspect.
    License {
        #[command(subcommand)]
        command: license::LicenseCommand,
    },
    /// Client credentials.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Write a credential directory for a user (the CA is created on first use).
    Issue {
        #[arg(long, default_value_os_t = default_state_dir())]
        state_dir: PathBuf,
        #[arg(long)]
        user: String,
        #[arg(long)]
        out: PathBuf,
        /// Address clients dial; defaults to what `serve` last listened on, else 127.0.0.1:8443.
        #[arg(long)]
        operator_addr: Option<String>,
    },
}

pub fn default_state_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".mirrord-operator"))
        .unwrap_or_else(|| PathBuf::from(".mirrord-operator"))
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::DemoServer { port, name } => demo::run(port, name),
        Command::License { command } => license::run(command),
        Command::Certs {
            command:
                CertsCommand::Issue {
                    state_dir,
                    user,
                    out,
                    operator_addr,
                },
        } => certs::issue(&state_dir, &user, &out, operator_addr),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mirrord-operator: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
