//! The real Kubernetes cluster of `scripts/dev-cluster.sh` (found through `KUBECONFIG`),
//! driven with `kubectl` and the chart installed with `scripts/helm` (Helm's Go SDK).
//!
//! Without a cluster these tests say so and return, so a developer can run the rest of the
//! suite; under `CI` a missing cluster is a failure (`.ci/run` starts one).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

pub struct Cluster {
    kubeconfig: PathBuf,
}

/// The node's address on the dev cluster's bridge: how pods reach a server of a test
/// (`scripts/dev-cluster.sh`'s `NODE_IP`).
pub const NODE_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 244, 0, 1);

impl Cluster {
    /// The cluster, or `None` (with a note) when there is none and this is not CI.
    pub fn get() -> Option<Self> {
        let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false");
        let found = std::env::var_os("KUBECONFIG")
            .map(PathBuf::from)
            .filter(|p| p.exists());
        let Some(kubeconfig) = found else {
            assert!(
                !ci,
                "CI is set but no cluster is reachable: KUBECONFIG is unset or missing \
                 (run `scripts/dev-cluster.sh up` and `eval \"$(scripts/dev-cluster.sh env)\"`)"
            );
            eprintln!("no Kubernetes cluster (KUBECONFIG unset): this test needs one, see README");
            return None;
        };
        let c = Self { kubeconfig };
        let ready = c.kubectl_output(&["get", "--raw", "/readyz"]);
        assert!(
            ready.status.success(),
            "KUBECONFIG={} but the API server does not answer: {}",
            c.kubeconfig.display(),
            String::from_utf8_lossy(&ready.stderr)
        );
        // Every pod needs the sandbox image and test pods busybox; the kubelet removes
        // images under disk pressure, and a cluster without them leaves pods creating.
        static BASE: std::sync::Once = std::sync::Once::new();
        BASE.call_once(|| {
            let st = Command::new(repo().join("scripts/images.sh"))
                .arg("base")
                .status()
                .expect("run scripts/images.sh");
            assert!(st.success(), "importing the base images failed");
        });
        Some(c)
    }

    /// The dev cluster's state directory (its PKI, its token users), next to the admin's
    /// kubeconfig.
    fn state_dir(&self) -> &Path {
        self.kubeconfig
            .parent()
            .expect("kubeconfig in the cluster's state directory")
    }

    /// The static token of a token user of the dev cluster (`alice`, `bob`).
    pub fn token(&self, user: &str) -> String {
        let csv = std::fs::read_to_string(self.state_dir().join("tokens.csv"))
            .expect("the dev cluster's tokens.csv");
        csv.lines()
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|f| f.get(1) == Some(&user))
            .map(|f| f[0].to_owned())
            .unwrap_or_else(|| panic!("no token user {user} in tokens.csv"))
    }

    /// A kubeconfig in `dir` for `user`, authenticated with a static token (`Some`) or a
    /// client certificate the cluster's CA signs here (`None`; groups `groups`).
    pub fn user_kubeconfig(
        &self,
        dir: &Path,
        user: &str,
        token: Option<&str>,
        groups: &[&str],
    ) -> PathBuf {
        let view = |path: &str| {
            self.kubectl(&[
                "config",
                "view",
                "--raw",
                "-o",
                &format!("jsonpath={{.clusters[0].cluster.{path}}}"),
            ])
        };
        let server = view("server");
        let ca = view("certificate-authority");
        let auth = match token {
            Some(t) => format!("token: {t}"),
            None => {
                let (crt, key) = self.client_certificate(dir, user, groups);
                format!(
                    "client-certificate: {}\n    client-key: {}",
                    crt.display(),
                    key.display()
                )
            }
        };
        let path = dir.join(format!("{user}.kubeconfig"));
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: dev\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\nusers:\n- name: {user}\n  user:\n    {auth}\ncontexts:\n- name: dev\n  context: {{cluster: dev, user: {user}}}\ncurrent-context: dev\n"
            ),
        )
        .unwrap();
        path
    }

    /// A client certificate for `user` (CN) in `groups` (O), signed by the cluster's CA.
    fn client_certificate(&self, dir: &Path, user: &str, groups: &[&str]) -> (PathBuf, PathBuf) {
        let pki = self.state_dir().join("pki");
        let (key, csr, crt) = (
            dir.join(format!("{user}.key")),
            dir.join(format!("{user}.csr")),
            dir.join(format!("{user}.crt")),
        );
        let subj: String =
            groups.iter().map(|g| format!("/O={g}")).collect::<String>() + &format!("/CN={user}");
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .output()
                .expect("openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let p = |p: &Path| p.display().to_string();
        // A v3 certificate for client authentication (rustls refuses v1 ones).
        let ext = dir.join(format!("{user}.ext"));
        std::fs::write(
            &ext,
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
        )
        .unwrap();
        run(&["genrsa", "-out", &p(&key), "2048"]);
        run(&[
            "req",
            "-new",
            "-key",
            &p(&key),
            "-subj",
            &subj,
            "-out",
            &p(&csr),
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            &p(&csr),
            "-CA",
            &p(&pki.join("ca.crt")),
            "-CAkey",
            &p(&pki.join("ca.key")),
            "-CAcreateserial",
            "-CAserial",
            &p(&dir.join("ca.srl")),
            "-days",
            "1",
            "-extfile",
            &p(&ext),
            "-out",
            &p(&crt),
        ]);
        (crt, key)
    }

    /// The JSON log lines (the chart's `operator.jsonLog`) of release `release`'s operator in
    /// `ns` whose message is `message`.
    pub fn operator_events(
        &self,
        ns: &str,
        release: &str,
        message: &str,
    ) -> Vec<serde_json::Value> {
        let (_, out, _) = self.try_kubectl(&[
            "-n",
            ns,
            "logs",
            &format!("deployment/{release}"),
            "--tail=-1",
        ]);
        out.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["fields"]["message"] == message)
            .collect()
    }

    /// `kubectl --kubeconfig <this cluster's>`, to add arguments to.
    fn kubectl_command(&self) -> Command {
        let mut c = Command::new("kubectl");
        c.arg("--kubeconfig").arg(&self.kubeconfig);
        c
    }

    fn kubectl_output(&self, args: &[&str]) -> Output {
        self.kubectl_command()
            .args(args)
            .output()
            .expect("kubectl on PATH (scripts/dev-cluster.sh env puts the cluster's there)")
    }

    /// `kubectl ARGS`, which must succeed; its stdout.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = self.kubectl_output(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 from kubectl")
    }

    /// mTLS credentials for `user` (with `cert_args` such as `--role admin`) and the operator
    /// at `operator_addr`, issued by the operator itself (the Deployment `ns/deployment`,
    /// through `kubectl exec`, as the README's recipe does), so its registry records them;
    /// written as one file under `dir`, whose path is returned.
    pub fn issue_credentials(
        &self,
        (ns, deployment): (&str, &str),
        dir: &Path,
        user: &str,
        cert_args: &[&str],
        operator_addr: &str,
    ) -> PathBuf {
        let target = format!("deploy/{deployment}");
        let mut args = vec![
            "-n",
            ns,
            "exec",
            &target,
            "--",
            "mirrord-operator",
            "certs",
            "issue",
            "--user",
            user,
        ];
        args.extend_from_slice(cert_args);
        args.extend_from_slice(&["--operator-addr", operator_addr, "--out", "-"]);
        let bundle = self.kubectl(&args);
        let out = dir.join(format!("{user}.json"));
        std::fs::write(&out, bundle).unwrap();
        out
    }

    /// `kubectl ARGS` that may fail: (success, stdout, stderr).
    pub fn try_kubectl(&self, args: &[&str]) -> (bool, String, String) {
        let out = self.kubectl_output(args);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `scripts/helm ARGS` against this cluster; must succeed.
    pub fn helm(&self, args: &[&str]) -> String {
        let out = Command::new(repo().join("scripts/helm"))
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .output()
            .expect("run scripts/helm");
        if !out.status.success() {
            let ns = args
                .windows(2)
                .find(|w| w[0] == "-n" || w[0] == "--namespace")
                .map_or("default", |w| w[1]);
            panic!(
                "scripts/helm {args:?} failed: {}{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.diagnose(ns)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// What a person would look at when a release does not become ready: pods, their
    /// descriptions, the namespace's events and the containers' logs (current and previous).
    pub fn diagnose(&self, ns: &str) -> String {
        let mut report = String::new();
        let mut run = |title: &str, args: &[&str]| {
            let (_, out, err) = self.try_kubectl(args);
            report.push_str(&format!("--- kubectl {title}\n{out}{err}\n"));
        };
        run("get pods", &["get", "pods", "-n", ns, "-o", "wide"]);
        run("describe pods", &["describe", "pods", "-n", ns]);
        run(
            "events",
            &["get", "events", "-n", ns, "--sort-by=.lastTimestamp"],
        );
        run(
            "logs",
            &[
                "logs",
                "-n",
                ns,
                "--all-containers",
                "--prefix",
                "-l",
                "app.kubernetes.io/name",
                "--tail=50",
            ],
        );
        run(
            "previous logs",
            &[
                "logs",
                "-n",
                ns,
                "--all-containers",
                "--prefix",
                "-l",
                "app.kubernetes.io/name",
                "--previous",
                "--tail=50",
            ],
        );
        report
    }

    /// Loads the operator image made from the binary these tests built (current sources).
    pub fn load_operator_image(&self) {
        static LOADED: std::sync::Once = std::sync::Once::new();
        LOADED.call_once(|| load_image("operator", "OPERATOR_BIN", "mirrord-operator"));
    }

    /// Loads the agent image made from the binary these tests built.
    pub fn load_agent_image(&self) {
        static LOADED: std::sync::Once = std::sync::Once::new();
        LOADED.call_once(|| load_image("agent", "AGENT_BIN", "mirrord-agent"));
    }

    /// `kubectl apply -f -` of `yaml`.
    pub fn apply(&self, yaml: &str) {
        use std::io::Write;
        let mut child = self
            .kubectl_command()
            .args(["apply", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("kubectl");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(yaml.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "kubectl apply failed: {}\n{yaml}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Uninstalls `release` (of namespace `release_ns`; `wait`: until its resources are
    /// gone, as a cluster-wide APIService must be before the next release) and deletes
    /// `namespaces` without waiting. For tests' Drop: nothing here may fail.
    pub fn remove_release(&self, release: &str, release_ns: &str, wait: bool, namespaces: &[&str]) {
        let mut args = vec!["uninstall", release, "-n", release_ns];
        if wait {
            args.push("--wait");
        }
        let _ = Command::new(repo().join("scripts/helm"))
            .args(&args)
            .output();
        for ns in namespaces {
            let _ = self.try_kubectl(&["delete", "namespace", ns, "--wait=false"]);
        }
    }

    /// Waits until the chart's APIService (cluster-wide: one release at a time) is
    /// Available; panics with `ns`'s state if it is not within `within`.
    pub fn api_service_available(&self, within: Duration, ns: &str) {
        let available = crate::wait_for(within, || {
            let (_, out, _) = self.try_kubectl(&[
                "get",
                "apiservice",
                "v1.operator.mirrord.dev",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Available\")].status}",
            ]);
            (out.trim() == "True").then_some(())
        });
        assert!(
            available.is_some(),
            "the APIService never became Available:\n{}",
            self.diagnose(ns)
        );
    }

    /// Polls `kubectl ARGS` until `pred` holds on its stdout; the last stdout.
    pub fn wait_until(
        &self,
        timeout: Duration,
        args: &[&str],
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let mut last = String::new();
        let ok = crate::wait_for(timeout, || {
            let (_, out, err) = self.try_kubectl(args);
            last = format!("{out}{err}");
            pred(&out).then_some(())
        });
        assert!(
            ok.is_some(),
            "kubectl {args:?}: condition not met in {timeout:?}; last:\n{last}"
        );
        last
    }
}

/// `scripts/images.sh IMAGE` with the tests' build of `bin` (through the variable `var`).
fn load_image(image: &str, var: &str, bin: &str) {
    let st = Command::new(repo().join("scripts/images.sh"))
        .arg(image)
        .env(var, crate::bin(bin))
        .status()
        .expect("run scripts/images.sh");
    assert!(st.success(), "loading the {image} image failed");
}

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}
