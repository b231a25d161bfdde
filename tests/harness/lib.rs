//! End-to-end test harness: starts the real `mirrord-operator` and `mirrordctl` binaries
//! as processes, and real HTTP servers (hyper, HTTP/1.1 and h2c) standing in for a target's
//! replicas and for a developer's local process. Nothing here is a mock: traffic crosses
//! real sockets, TLS is real, the binaries are the ones users run.

pub mod browser;
pub mod kube;
pub mod netns;
pub mod otlp;
pub mod prom;
pub mod raw;
pub mod servers;
pub mod vendor;
pub mod web;

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The real binary `name`, built (once per test process) from the current sources.
///
/// Cargo builds a package's binaries only for that package's own integration tests, so
/// these tests build the operator and the CLI themselves: a no-op when they are up to
/// date, and never a stale binary after an edit.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let exe = std::env::current_exe().expect("test binary path");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target dir")
            .to_owned();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--quiet",
            "-p",
            "mirrord-operator",
            "-p",
            "mirrordctl",
            "-p",
            "mirrord-agent",
            // `exec`'s preload layer, found beside mirrordctl.
            "-p",
            "mirrord-layer",
            "--manifest-path",
        ])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .arg("--target-dir")
        .arg(dir.parent().expect("target root"));
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let st = cmd.status().expect("run cargo build");
        assert!(st.success(), "building the binaries failed");
        dir
    });
    let p = dir.join(name);
    assert!(p.exists(), "{} missing after the build", p.display());
    p
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A loopback address nobody listens on right now.
///
/// Picked below Linux's ephemeral range (32768 and up by default), which the tests' own
/// outgoing connections draw from: a port picked there can be taken by a connection
/// between the pick and the operator binding it.
pub fn free_addr() -> SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % SPAN,
        Ordering::AcqRel,
        Ordering::Acquire,
    );
    loop {
        let port = LOW + NEXT.fetch_add(1, Ordering::AcqRel) % SPAN;
        let addr = SocketAddr::from(([127, 0, 0, 1], port as u16));
        if std::net::TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
}

/// A loopback address where something accepts connections (the kernel completes them)
/// and never reads: the local process of a session whose traffic a test does not look at.
/// `mirrordctl` refuses to start when nothing listens where traffic would go.
pub fn idle_local() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    Box::leak(Box::new(l));
    addr
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Lines a child printed, collected by a background thread (the flag: it reached EOF).
#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<String>>>, Arc<std::sync::atomic::AtomicBool>);

impl Lines {
    pub fn collect_from(self, r: impl std::io::Read + Send + 'static) -> Self {
        self.collect(r)
    }
    fn collect(self, r: impl std::io::Read + Send + 'static) -> Self {
        let me = self.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(r).lines().map_while(Result::ok) {
                me.0.lock().unwrap().push(line);
            }
            me.1.store(true, std::sync::atomic::Ordering::Release);
        });
        self
    }

    /// Waits until the child's end of the pipe closed and every line was read.
    pub fn wait_closed(&self, timeout: Duration) -> bool {
        wait_for(timeout, || {
            self.1
                .load(std::sync::atomic::Ordering::Acquire)
                .then_some(())
        })
        .is_some()
    }
    pub fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
    pub fn text(&self) -> String {
        self.all().join("\n")
    }
    pub fn wait(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        wait_for(timeout, || self.all().into_iter().find(|l| pred(l)))
    }
}

#[derive(Default)]
pub struct OperatorOptions {
    pub targets: String,
    pub sessions: String,
    pub env: Vec<(String, String)>,
    /// More config after the targets (`[license]`, `[[policies]]`).
    pub extra_config: String,
    /// A state directory that outlives this operator (for restarts).
    pub state_dir: Option<PathBuf>,
    /// `(soft, hard)` limit of open files the operator starts with (util-linux `prlimit`).
    pub nofile: Option<(u64, u64)>,
}

pub struct Operator {
    child: Child,
    pub api: SocketAddr,
    /// Where `/metrics` is served, when the test enabled it.
    pub metrics: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
    pub state: PathBuf,
    pub stdout: Lines,
    pub stderr: Lines,
}

impl Operator {
    /// `targets`: `[[targets]]` TOML; `sessions`: the `[sessions]` table's body.
    pub fn start(targets: &str, sessions: &str) -> Self {
        Self::start_with(OperatorOptions {
            targets: targets.into(),
            sessions: sessions.into(),
            ..Default::default()
        })
    }

    /// With metrics enabled on a free loopback address.
    pub fn start_with_metrics(targets: &str, sessions: &str) -> Self {
        Self::start_with(OperatorOptions {
            targets: targets.into(),
            sessions: sessions.into(),
            env: vec![
                ("OPERATOR_METRICS_ENABLED".into(), "true".into()),
                ("OPERATOR_METRICS_ADDR".into(), free_addr().to_string()),
            ],
            ..Default::default()
        })
    }

    /// The current `/metrics` exposition.
    pub fn scrape(&self) -> String {
        prom::http_get(self.metrics.expect("metrics enabled"), "/metrics")
    }

    pub fn start_with(opts: OperatorOptions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let api = free_addr();
        let config = format!(
            "[api]\nlisten = \"{api}\"\n[sessions]\n{}\n{}\n{}",
            opts.sessions, opts.targets, opts.extra_config
        );
        let path = dir.path().join("operator.toml");
        std::fs::write(&path, config).unwrap();
        let state = opts
            .state_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("state"));
        let mut cmd = match opts.nofile {
            None => Command::new(bin("mirrord-operator")),
            Some((soft, hard)) => {
                // prlimit sets the limits and execs the operator (same process id).
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={soft}:{hard}"))
                    .arg("--")
                    .arg(bin("mirrord-operator"));
                c
            }
        };
        cmd.args(["serve", "--config"])
            .arg(&path)
            .arg("--state-dir")
            .arg(&state)
            .env("OPERATOR_JSON_LOG", "true")
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let metrics = opts
            .env
            .iter()
            .find(|(k, _)| k == "OPERATOR_METRICS_ADDR")
            .map(|(_, v)| v.parse().unwrap());
        let mut child = cmd.spawn().expect("start mirrord-operator");
        let stdout = Lines::default().collect(child.stdout.take().unwrap());
        let stderr = Lines::default().collect(child.stderr.take().unwrap());
        let op = Self {
            child,
            api,
            metrics,
            dir,
            state,
            stdout,
            stderr,
        };
        op.stdout
            .wait(Duration::from_secs(20), |l| l.contains("operator ready"))
            .unwrap_or_else(|| {
                panic!(
                    "operator did not start:\n{}\n{}",
                    op.stdout.text(),
                    op.stderr.text()
                )
            });
        op
    }

    /// A developer's credential directory for `user`, issued by this operator's CA.
    pub fn issue(&self, user: &str) -> PathBuf {
        self.issue_in(user, self.dir.path())
    }

    /// An admin's credential directory for `user`.
    pub fn issue_admin(&self, user: &str) -> PathBuf {
        self.issue_with(user, &["--role", "admin"])
    }

    /// A credential directory for `user` issued with more `certs issue` arguments
    /// (`--role admin`, `--valid-for 2s`...).
    pub fn issue_with(&self, user: &str, extra: &[&str]) -> PathBuf {
        self.issue_into(user, self.dir.path(), extra)
    }

    /// `mirrord-operator certs ARGS --state-dir <this operator's>`, run to completion.
    pub fn certs(&self, args: &[&str]) -> std::process::Output {
        Command::new(bin("mirrord-operator"))
            .arg("certs")
            .args(args)
            .arg("--state-dir")
            .arg(&self.state)
            .output()
            .expect("run mirrord-operator certs")
    }

    /// Points an existing credential directory at this operator (after a restart, which
    /// listens on a new address).
    pub fn adopt(&self, creds: &Path) {
        std::fs::write(creds.join("operator-address"), format!("{}\n", self.api)).unwrap();
    }

    /// Like [`Operator::issue`], into a directory that may outlive this operator.
    pub fn issue_in(&self, user: &str, parent: &Path) -> PathBuf {
        self.issue_into(user, parent, &[])
    }

    fn issue_into(&self, user: &str, parent: &Path, extra: &[&str]) -> PathBuf {
        static ISSUED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = ISSUED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let out = parent.join(format!("creds-{user}-{n}"));
        let st = Command::new(bin("mirrord-operator"))
            .args(["certs", "issue", "--state-dir"])
            .arg(&self.state)
            .args(["--user", user, "--out"])
            .arg(&out)
            .args(extra)
            .output()
            .unwrap();
        assert!(st.status.success(), "certs issue: {st:?}");
        out
    }

    /// The operator's JSON log lines.
    pub fn logs(&self) -> Vec<Value> {
        self.stdout
            .all()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Functional events (`fields.message`) in order.
    pub fn events(&self, message: &str) -> Vec<Value> {
        self.logs()
            .into_iter()
            .filter(|l| l["fields"]["message"] == message)
            .collect()
    }

    pub fn wait_event(&self, message: &str, n: usize) -> Vec<Value> {
        wait_for(Duration::from_secs(20), || {
            let e = self.events(message);
            (e.len() >= n).then_some(e)
        })
        .unwrap_or_else(|| {
            panic!(
                "expected {n} `{message}` events; log:\n{}",
                self.stdout.text()
            )
        })
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        signal(self.child.id(), "TERM");
        if wait_for(Duration::from_secs(5), || self.child.try_wait().unwrap()).is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// `mirrordctl` run to completion.
/// `mirrordctl` as a Kubernetes user: `kubeconfig`'s, with a `HOME` holding no credential
/// directory (so it goes through the API server).
pub fn kube_ctl_command(kubeconfig: &Path, home: &Path) -> Command {
    let mut cmd = Command::new(bin("mirrordctl"));
    cmd.env("KUBECONFIG", kubeconfig)
        .env("HOME", home)
        .env_remove("MIRRORD_CREDENTIALS");
    cmd
}

pub fn ctl(creds: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bin("mirrordctl"))
        .arg("--credentials")
        .arg(creds)
        .args(args)
        .output()
        .expect("run mirrordctl")
}

/// `mirrordctl status --json`.
pub fn status(creds: &Path) -> Value {
    let out = ctl(creds, &["status", "--json"]);
    assert!(out.status.success(), "status failed: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A running `mirrordctl steal|mirror`.
pub struct Session {
    child: Child,
    pub id: String,
    pub stdout: Lines,
    pub stderr: Lines,
}

impl Session {
    /// Starts `mirrordctl ARGS` and waits until it reports the session active. On failure
    /// returns what it printed on stderr.
    pub fn start(creds: &Path, args: &[&str]) -> Result<Self, String> {
        Self::start_in(creds, args, None)
    }

    /// [`Session::start`] in the working directory `cwd` (where mirrordctl looks for
    /// `.mirrord/mirrord.json`).
    pub fn start_in(creds: &Path, args: &[&str], cwd: Option<&Path>) -> Result<Self, String> {
        let mut cmd = Command::new(bin("mirrordctl"));
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        cmd.arg("--credentials").arg(creds);
        Self::spawn(cmd, args)
    }

    /// [`Session::start`] through the Kubernetes API server: no credential directory
    /// (`home` has none), the user of `kubeconfig`.
    pub fn start_kube(kubeconfig: &Path, home: &Path, args: &[&str]) -> Result<Self, String> {
        Self::spawn(kube_ctl_command(kubeconfig, home), args)
    }

    fn spawn(mut cmd: Command, args: &[&str]) -> Result<Self, String> {
        let mut child = cmd
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mirrordctl");
        let stdout = Lines::default().collect(child.stdout.take().unwrap());
        let stderr = Lines::default().collect(child.stderr.take().unwrap());
        let mut exited = false;
        let line = wait_for(Duration::from_secs(40), || {
            if let Some(l) = stdout.all().into_iter().find(|l| l.starts_with("session ")) {
                return Some(Some(l));
            }
            if child.try_wait().unwrap().is_some() {
                exited = true;
                return Some(None);
            }
            None
        });
        match line.flatten() {
            Some(l) => {
                // Ports are printed right after the session line.
                let ports = args.iter().filter(|a| **a == "--port").count();
                wait_for(Duration::from_secs(5), || {
                    (stdout
                        .all()
                        .iter()
                        .filter(|l| l.starts_with("port "))
                        .count()
                        >= ports)
                        .then_some(())
                });
                Ok(Self {
                    child,
                    id: l.split_whitespace().nth(1).unwrap().to_owned(),
                    stdout,
                    stderr,
                })
            }
            None => {
                if !exited {
                    let _ = child.kill();
                }
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(50));
                Err(stderr.text())
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the CLI prints a line with `text` (anywhere in it: `exec`'s process
    /// shares its stdout); fails the test with what it printed otherwise.
    pub fn wait_stdout(&self, text: &str, timeout: Duration) {
        wait_for(timeout, || {
            self.stdout
                .all()
                .iter()
                .any(|l| l.contains(text))
                .then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "no line with `{text}` within {timeout:?}:\n{}\n{}",
                self.stdout.text(),
                self.stderr.text()
            )
        });
    }

    /// Waits for the CLI to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let status = wait_for(timeout, || self.child.try_wait().unwrap())?;
        // What it printed last is read by other threads: let them finish first.
        self.stdout.wait_closed(Duration::from_secs(2));
        self.stderr.wait_closed(Duration::from_secs(2));
        Some(status)
    }

    pub fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Ctrl-C equivalent; waits for the CLI to leave.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        signal(self.child.id(), "INT");
        self.wait_exit(Duration::from_secs(10))
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `[[targets]]` with one port in front of `upstream`.
pub fn upstream_target(name: &str, port: u16, listen: SocketAddr, upstream: SocketAddr) -> String {
    format!(
        "[[targets]]\nname = \"{name}\"\n[[targets.ports]]\nport = {port}\nlisten = \"{listen}\"\nupstream = \"{upstream}\"\n"
    )
}

/// `[[targets]]` whose replicas the operator runs from the Python fixture.
pub fn command_target(name: &str, port: u16, listen: SocketAddr, replicas: usize) -> String {
    format!(
        "[[targets]]\nname = \"{name}\"\nreplicas = {replicas}\ncommand = [\"python3\", \"{}\", \"{{port}}\", \"{name}\"]\n[[targets.ports]]\nport = {port}\nlisten = \"{listen}\"\n",
        fixture("replica.py").display()
    )
}

/// The set-up most tests share: the target's real service, a developer's local process,
/// and an operator with `deployment/api` port 80 in front of the service.
pub struct ApiFixture {
    pub target: servers::HttpServer,
    pub dev: servers::HttpServer,
    /// Where the target's traffic arrives (the interceptor).
    pub listen: SocketAddr,
    pub op: Operator,
}

impl ApiFixture {
    /// `sessions`: the body of the operator's `[sessions]` table.
    pub async fn start(sessions: &str) -> Self {
        let target = servers::HttpServer::start("target").await;
        let dev = servers::HttpServer::start("dev").await;
        let listen = free_addr();
        let op = Operator::start(&upstream_target("api", 80, listen, target.addr), sessions);
        Self {
            target,
            dev,
            listen,
            op,
        }
    }

    /// `mirrordctl MODE --target api --port 80=<dev> EXTRA...` with new credentials of `user`.
    pub fn session(&self, user: &str, mode: &str, extra: &[&str]) -> Session {
        let creds = self.op.issue(user);
        self.session_with(&creds, mode, extra)
    }

    /// The same with credentials the test issued itself.
    pub fn session_with(&self, creds: &Path, mode: &str, extra: &[&str]) -> Session {
        let port = format!("80={}", self.dev.addr);
        let mut args = vec![mode, "--target", "api", "--port", &port];
        args.extend_from_slice(extra);
        Session::start(creds, &args).unwrap()
    }
}
