//! Replicas the operator runs from a target's `command`.
//!
//! Each runs in its own process group with a parent-death signal, so it dies with the
//! operator even when the operator is SIGKILLed; its output goes to a log file of its own
//! (the operator's stdout is its log stream, which must stay one JSON object per line);
//! and its pid is recorded, so an operator starting after a crash removes what the dead
//! one left running.

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio::sync::watch;

/// Where replicas' logs and pid files live: `STATE_DIR/replicas`.
#[derive(Clone)]
pub struct ReplicaDir {
    dir: Arc<PathBuf>,
}

impl ReplicaDir {
    pub fn open(state_dir: &Path) -> std::io::Result<Self> {
        let dir = state_dir.join("replicas");
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir: Arc::new(dir) })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Kills the process groups of replicas a previous operator left running (it died
    /// without stopping them) and forgets them. Returns how many were still running.
    pub fn reap_orphans(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(&*self.dir) else {
            return 0;
        };
        let mut reaped = 0;
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "pid") {
                continue;
            }
            if let Some((pid, started)) = std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| parse_pid_file(&t))
            {
                // The pid may have been reused since: only the same process's group is
                // killed. With the leader gone (its parent-death signal killed it with the
                // old operator) the group's other members may still run: no process can
                // be given the pid while a group of that number exists, so the group, if
                // any, is still the replica's.
                let ours = start_time(pid).is_none_or(|s| s == started);
                if ours && killpg(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                    tracing::warn!(pid, file = %path.display(), "killed a replica left running by a previous operator");
                    reaped += 1;
                }
            }
            let _ = std::fs::remove_file(&path);
        }
        reaped
    }

    fn pid_file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pid"))
    }

    fn log_file(&self, name: &str) -> std::io::Result<std::fs::File> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))
    }
}

fn parse_pid_file(text: &str) -> Option<(i32, u64)> {
    let mut it = text.split_whitespace();
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// The process's start time in clock ticks since boot (`/proc/PID/stat` field 22).
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: count from its end.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// `setpriv --pdeathsig KILL` makes the replica die with the operator. Without it (no
/// util-linux) replicas still stop with a normal exit and are reaped at the next start.
fn pdeathsig_wrapper() -> Option<&'static str> {
    static W: OnceLock<Option<&'static str>> = OnceLock::new();
    *W.get_or_init(|| {
        let found = ["/usr/bin/setpriv", "/bin/setpriv"]
            .into_iter()
            .find(|p| Path::new(p).exists());
        if found.is_none() {
            tracing::warn!("setpriv not found: replicas will outlive an operator killed with SIGKILL until the next start");
        }
        found
    })
}

/// One replica: its name and, once it accepts connections, where it listens.
pub struct Replica {
    pub name: String,
    pub ready: watch::Receiver<Option<Vec<SocketAddr>>>,
    /// The process while it runs (for its environment and network namespace).
    pub pid: watch::Receiver<Option<u32>>,
    /// Dropping it stops the supervisor and the process.
    _stop: watch::Sender<bool>,
}

/// Starts `argv` (with `{port}`/`{port:N}` replaced by free ports) and keeps it running,
/// with backoff, until the returned [`Replica`] is dropped. `changed` runs whenever the
/// replica becomes ready or stops being ready.
pub fn supervise(
    dir: ReplicaDir,
    name: String,
    argv: Vec<String>,
    ports: Vec<u16>,
    changed: impl Fn() + Send + Sync + 'static,
) -> Replica {
    let (ready_tx, ready) = watch::channel(None);
    let (pid_tx, pid) = watch::channel(None);
    let (stop, stop_rx) = watch::channel(false);
    let sup = Supervisor {
        dir,
        name: name.clone(),
        argv,
        ports,
        ready: ready_tx,
        pid: pid_tx,
        stop: stop_rx,
        changed: Box::new(changed),
    };
    // Detached: the supervisor stops on `stop` (dropping the replica), and the replicas die
    // with the process whatever happens (a parent-death signal).
    tokio::spawn(sup.run());
    Replica {
        name,
        ready,
        pid,
        _stop: stop,
    }
}

struct Supervisor {
    dir: ReplicaDir,
    name: String,
    argv: Vec<String>,
    ports: Vec<u16>,
    ready: watch::Sender<Option<Vec<SocketAddr>>>,
    pid: watch::Sender<Option<u32>>,
    stop: watch::Receiver<bool>,
    changed: Box<dyn Fn() + Send + Sync>,
}

enum Life {
    Stopped,
    Exited,
}

impl Supervisor {
    async fn run(mut self) {
        let mut backoff = Duration::from_millis(500);
        loop {
            match self.once().await {
                Some(Life::Stopped) | None => return,
                Some(Life::Exited) => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.stop.changed() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    /// Runs the process once; `None` when it cannot run at all.
    async fn once(&mut self) -> Option<Life> {
        let addrs: Vec<SocketAddr> = match self.ports.iter().map(|_| free_port()).collect() {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(replica = %self.name, error = %e, "no free port for replica");
                return None;
            }
        };
        let mut child = match self.spawn(&addrs) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(replica = %self.name, command = ?self.argv, error = %e, "cannot start replica");
                return Some(Life::Exited);
            }
        };
        let pid = child.id().unwrap_or_default() as i32;
        self.record(pid);
        self.pid.send_replace(child.id());
        tracing::info!(replica = %self.name, pid, ports = ?addrs, log = %self.dir.path().join(format!("{}.log", self.name)).display(), "replica started");
        let life = self.watch(&mut child, &addrs).await;
        if matches!(life, Life::Stopped) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = child.kill().await;
        }
        let _ = std::fs::remove_file(self.dir.pid_file(&self.name));
        self.pid.send_replace(None);
        if self.ready.send_replace(None).is_some() {
            (self.changed)();
        }
        Some(life)
    }

    async fn watch(&mut self, child: &mut Child, addrs: &[SocketAddr]) -> Life {
        tokio::select! {
            _ = became_ready(addrs) => {
                let _ = self.ready.send(Some(addrs.to_vec()));
                (self.changed)();
                tracing::info!(replica = %self.name, "replica ready");
            }
            status = child.wait() => {
                tracing::warn!(replica = %self.name, ?status, "replica exited before it was ready");
                return Life::Exited;
            }
            _ = self.stop.changed() => return Life::Stopped,
        }
        tokio::select! {
            status = child.wait() => {
                tracing::warn!(replica = %self.name, ?status, "replica exited; restarting");
                Life::Exited
            }
            _ = self.stop.changed() => Life::Stopped,
        }
    }

    fn spawn(&self, addrs: &[SocketAddr]) -> std::io::Result<Child> {
        let args = substitute(&self.argv, &self.ports, addrs);
        let mut cmd = match pdeathsig_wrapper() {
            Some(setpriv) => {
                let mut c = Command::new(setpriv);
                c.args(["--pdeathsig", "KILL", "--"]).args(&args);
                c
            }
            None => {
                let mut c = Command::new(&args[0]);
                c.args(&args[1..]);
                c
            }
        };
        let log = self.dir.log_file(&self.name)?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
    }

    fn record(&self, pid: i32) {
        let Some(started) = start_time(pid) else {
            return;
        };
        if let Err(e) = std::fs::write(self.dir.pid_file(&self.name), format!("{pid} {started}\n"))
        {
            tracing::warn!(replica = %self.name, error = %e, "cannot record the replica's pid; a crash would leave it running");
        }
    }
}

async fn became_ready(addrs: &[SocketAddr]) {
    loop {
        let mut all = true;
        for a in addrs {
            all &= tokio::net::TcpStream::connect(a).await.is_ok();
        }
        if all {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn free_port() -> std::io::Result<SocketAddr> {
    // The port is free when we look; a replica racing another process for it fails to
    // start and is restarted on a new one.
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

pub fn substitute(argv: &[String], ports: &[u16], addrs: &[SocketAddr]) -> Vec<String> {
    argv.iter()
        .map(|a| {
            let mut s = a.replace("{port}", &addrs[0].port().to_string());
            for (p, addr) in ports.iter().zip(addrs) {
                s = s.replace(&format!("{{port:{p}}}"), &addr.port().to_string());
            }
            s
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[test]
    fn start_time_survives_odd_command_names() {
        let me = std::process::id() as i32;
        let t = start_time(me).expect("own start time");
        assert!(t > 0);
        assert_eq!(parse_pid_file(&format!("{me} {t}\n")), Some((me, t)));
        assert_eq!(parse_pid_file("garbage"), None);
    }

    #[tokio::test]
    async fn orphans_are_reaped_only_when_the_pid_is_the_same_process() {
        let dir = tempfile::tempdir().unwrap();
        let d = ReplicaDir::open(dir.path()).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        // A pid file whose start time does not match is a reused pid: left alone.
        std::fs::write(d.pid_file("a"), format!("{pid} 1\n")).unwrap();
        assert_eq!(d.reap_orphans(), 0);
        assert!(child.try_wait().unwrap().is_none());
        std::fs::write(
            d.pid_file("a"),
            format!("{pid} {}\n", start_time(pid).unwrap()),
        )
        .unwrap();
        assert_eq!(d.reap_orphans(), 1);
        assert!(child.wait().is_ok());
        assert!(!d.pid_file("a").exists());
    }

    /// A replica whose leader died with the old operator leaves members of its group
    /// running (a server it started in the background): they are killed too.
    #[tokio::test]
    async fn a_groups_members_are_reaped_when_its_leader_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let d = ReplicaDir::open(dir.path()).unwrap();
        // The leader starts a member in its group, prints its pid and exits.
        let out = std::process::Command::new("sh")
            .args(["-c", "sleep 30 >/dev/null 2>&1 & echo $!"])
            .process_group(0)
            .output()
            .unwrap();
        let member: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        let group = nix::unistd::getpgid(Some(Pid::from_raw(member))).unwrap();
        assert!(start_time(group.as_raw()).is_none(), "the leader is gone");
        std::fs::write(d.pid_file("b"), format!("{} 12345\n", group.as_raw())).unwrap();
        assert_eq!(d.reap_orphans(), 1);
        let mut gone = false;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            // Killed: a zombie (reparented to init, reaped soon) or no process at all.
            gone = std::fs::read_to_string(format!("/proc/{member}/stat"))
                .map_or(true, |s| s[s.rfind(')').unwrap() + 2..].starts_with('Z'));
            if gone {
                break;
            }
        }
        assert!(gone, "the group's member still runs");
    }
}
