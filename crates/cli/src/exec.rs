//! `exec`: the local process as a child of mirrordctl. It starts first; the session opens
//! once it accepts connections on every local port, lives while it runs, and ends when it
//! exits (with its exit code). If the session is lost, the process is stopped.

use anyhow::Context;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::process::{Child, Command};

/// How long a starting process may take to listen on its ports.
const START: Duration = Duration::from_secs(60);
/// How long a process asked to stop (SIGTERM) gets before SIGKILL.
const STOP: Duration = Duration::from_secs(5);

/// Starts the process; with `env`, exactly that environment (the target's context).
pub fn spawn(argv: &[String], env: Option<&crate::context::env::Env>) -> anyhow::Result<Child> {
    let (program, args) = argv.split_first().context("no command to run")?;
    let mut cmd = Command::new(program);
    cmd.args(args).kill_on_drop(true);
    if let Some(env) = env {
        cmd.env_clear().envs(env);
    }
    cmd.spawn()
        .with_context(|| format!("cannot start `{program}`"))
}

/// Waits until every local address accepts a connection, for at most [`START`] (the
/// session loop watches the process meanwhile).
pub async fn listening(ports: Vec<(u16, SocketAddr)>) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + START;
    for (port, addr) in ports {
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "the local process did not listen on {addr} (port {port}) within {}s: \
                     check the --port mapping",
                    START.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// Waits until every local address accepts a connection; fails if the process exits first
/// or takes longer than [`START`].
pub async fn wait_listening(child: &mut Child, ports: &[(u16, SocketAddr)]) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + START;
    for (port, addr) in ports {
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                break;
            }
            if let Some(st) = child.try_wait()? {
                anyhow::bail!(
                    "the local process exited ({st}) before it listened on {addr} (port {port})"
                );
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "the local process did not listen on {addr} (port {port}) within {}s: \
                     check the --port mapping",
                    START.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// Resolves with the exit code once the child exits; never without a child.
pub async fn exited(child: &mut Option<Child>) -> u8 {
    let Some(c) = child.as_mut() else {
        return std::future::pending().await;
    };
    let code = match c.wait().await {
        Ok(st) => code_of(st),
        Err(_) => crate::exit::FAILED,
    };
    *child = None;
    code
}

/// A shell's convention: the exit code, or 128 + the signal that ended the process.
fn code_of(st: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => u8::try_from(c).unwrap_or(crate::exit::FAILED),
        (None, Some(sig)) => 128u8.saturating_add(u8::try_from(sig).unwrap_or(0)),
        _ => crate::exit::FAILED,
    }
}

/// Stops a child that is still running: SIGTERM, then SIGKILL after [`STOP`].
pub async fn stop(child: &mut Option<Child>) {
    let Some(mut c) = child.take() else { return };
    if let Ok(Some(_)) = c.try_wait() {
        return;
    }
    if let Some(pid) = c.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(STOP, c.wait()).await.is_err() {
        let _ = c.kill().await;
    }
}
