//! Who may do what in a cluster (issue 13): developers reach the operator through the
//! Kubernetes API server with their kubeconfig (the chart's APIService), and RBAC on the
//! operator's resources decides. Users: `alice` and `bob` (static tokens of the dev
//! cluster), `carol` (a client certificate of the cluster's CA), and the cluster's admin
//! (`kubernetes-admin`, group system:masters).

use mirrord_e2e::kube::{repo, Cluster};
use mirrord_e2e::prom::http_exchange;
use mirrord_e2e::{bin, kube_ctl_command, wait_for, Session};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::Duration;

/// One release at a time: the APIService is cluster-wide (one per cluster).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const WEB: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: NS}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: 1
      containers:
        - name: httpd
          image: mirrord.dev/busybox:1
          imagePullPolicy: Never
          command: ["/bin/sh", "-c", "mkdir -p /tmp/www && echo pod > /tmp/www/index.html && exec httpd -f -p 80 -h /tmp/www"]
          readinessProbe: {tcpSocket: {port: 80}, periodSeconds: 1}
"#;

/// A developer's local process: answers `local`.
fn local() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            std::thread::spawn(move || {
                let _ = c.set_read_timeout(Some(Duration::from_secs(3)));
                let mut buf = [0u8; 4096];
                let mut req = Vec::new();
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = c.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nlocal\n",
                );
            });
        }
    });
    addr
}

fn get(addr: SocketAddr) -> String {
    match http_exchange(
        addr,
        "GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n",
    ) {
        Ok(r) => r.split("\r\n\r\n").nth(1).unwrap_or("").trim().to_owned(),
        Err(e) => format!("error: {e}"),
    }
}

/// The installed operator (its APIService on) and the users' kubeconfigs. Uninstalls on
/// drop: an APIService left without its operator would stall discovery for everyone.
struct Env {
    k: Cluster,
    ns: String,
    release: String,
    dir: tempfile::TempDir,
    home: PathBuf,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.k
            .remove_release(&self.release, &self.ns, true, &[&self.ns]);
    }
}

impl Env {
    /// `sets`: more `--set` values for the chart.
    fn start(sets: &[&str]) -> Option<Self> {
        let k = Cluster::get()?;
        // A fresh name each time: deleting a namespace can take a minute here.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let ns = format!("authz-{:04x}", nanos & 0xffff);
        k.load_operator_image();
        k.load_agent_image();
        k.kubectl(&["create", "namespace", &ns]);
        k.apply(&WEB.replace("NS", &ns));
        let release = format!("mirrord-operator-{ns}");
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        let env = Self {
            k,
            ns,
            release,
            dir,
            home,
        };
        let chart = repo()
            .join("deploy/helm/mirrord-operator")
            .display()
            .to_string();
        let mut args = vec![
            "install",
            &env.release,
            &chart,
            "-n",
            &env.ns,
            "--set",
            "operator.jsonLog=true",
            "--set",
            "operator.logLevel=mirrord=debug",
            "--wait",
        ];
        for set in sets {
            args.extend(["--set", set]);
        }
        env.k.helm(&args);
        env.k
            .api_service_available(Duration::from_secs(60), &env.ns);
        env.k.kubectl(&[
            "-n",
            &env.ns,
            "rollout",
            "status",
            "deployment/web",
            "--timeout=120s",
        ]);
        Some(env)
    }

    /// A kubeconfig for `name` whose context's namespace is the test's (where `mirrordctl
    /// status` and `sessions kill` go through the API server).
    fn user(&self, name: &str) -> PathBuf {
        let path = match name {
            "admin" => return std::env::var_os("KUBECONFIG").map(PathBuf::from).unwrap(),
            "carol" => self
                .k
                .user_kubeconfig(self.dir.path(), "carol", None, &["developers"]),
            user => self
                .k
                .user_kubeconfig(self.dir.path(), user, Some(&self.k.token(user)), &[]),
        };
        let (ok, _, err) = self.kubectl_as(
            &path,
            &[
                "config",
                "set-context",
                "--current",
                "--namespace",
                &self.ns,
            ],
        );
        assert!(ok, "{err}");
        path
    }

    /// alice and carol (a certificate user) with the user role in the test's namespace, bob
    /// with no RBAC, the cluster's admin.
    fn users(&self) -> [PathBuf; 4] {
        let users = ["alice", "bob", "carol", "admin"].map(|u| self.user(u));
        self.bind("alice", "user");
        self.bind("carol", "user");
        users
    }

    fn bind(&self, user: &str, role: &str) {
        self.k.kubectl(&[
            "-n",
            &self.ns,
            "create",
            "rolebinding",
            &format!("{user}-{role}"),
            &format!("--clusterrole={}-{role}", self.release),
            &format!("--user={user}"),
        ]);
    }

    fn ctl(&self, kubeconfig: &Path, args: &[&str]) -> Output {
        kube_ctl_command(kubeconfig, &self.home)
            .args(args)
            .output()
            .expect("run mirrordctl")
    }

    fn steal(
        &self,
        kubeconfig: &Path,
        local: SocketAddr,
        extra: &[&str],
    ) -> Result<Session, String> {
        let port = format!("80={local}");
        let mut args = vec![
            "steal",
            "--target",
            "deployment/web",
            "--namespace",
            &self.ns,
            "--port",
            &port,
        ];
        args.extend_from_slice(extra);
        Session::start_kube(kubeconfig, &self.home, &args)
    }

    /// `kubectl --kubeconfig K ARGS`: (success, stdout, stderr).
    fn kubectl_as(&self, kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn pod_ip(&self, label: &str) -> IpAddr {
        self.k
            .kubectl(&[
                "-n",
                &self.ns,
                "get",
                "pods",
                "-l",
                label,
                "-o",
                "jsonpath={.items[0].status.podIP}",
            ])
            .trim()
            .parse()
            .unwrap()
    }

    /// The operator's JSON log lines with `message`.
    fn events(&self, message: &str) -> Vec<Value> {
        self.k.operator_events(&self.ns, &self.release, message)
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn kubernetes_users_are_authenticated_by_the_api_server_and_authorized_by_rbac() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(env) = Env::start(&[]) else { return };
    let _ = bin("mirrordctl");
    let [alice, bob, carol, admin] = env.users();
    let pod = SocketAddr::new(env.pod_ip("app=web"), 80);

    // No RBAC at all: the API server refuses bob at the door, naming what he lacks.
    let port = format!("80={}", local());
    let out = env.ctl(
        &bob,
        &[
            "steal",
            "--target",
            "deployment/web",
            "--namespace",
            &env.ns,
            "--port",
            &port,
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("cannot create resource \"sessions\"")
            && text(&out).contains("mirrord-operator-user"),
        "{}",
        text(&out)
    );
    let (ok, _, err) = env.kubectl_as(&bob, &["-n", &env.ns, "get", "sessions"]);
    assert!(!ok && err.contains("Forbidden"), "{err}");

    // Allowed through the door (create sessions) but granted no verb on targets: the
    // operator's own check (a SubjectAccessReview) refuses the steal.
    env.k.apply(&format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: door-only, namespace: {ns}}}\nrules:\n- apiGroups: [operator.mirrord.dev]\n  resources: [sessions]\n  verbs: [create]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: bob-door-only, namespace: {ns}}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: door-only}}\nsubjects: [{{kind: User, name: bob, apiGroup: rbac.authorization.k8s.io}}]\n",
        ns = env.ns
    ));
    let refused = env
        .steal(&bob, local(), &[])
        .err()
        .expect("bob's steal was refused");
    assert!(
        refused.contains("bob may not steal deployment.web")
            && refused.contains("`steal` on `targets`"),
        "{refused}"
    );

    // alice (a token user with the user role) steals through the API server, with no
    // credential directory: her Kubernetes user is the session's client_user.
    let mut session = env.steal(&alice, local(), &[]).unwrap_or_else(|e| {
        panic!(
            "alice's session did not open: {e}\n{}",
            env.k.diagnose(&env.ns)
        )
    });
    let stolen = wait_for(Duration::from_secs(5), || {
        (get(pod) == "local").then_some(())
    });
    assert!(
        stolen.is_some(),
        "alice's steal is not in force: {}",
        get(pod)
    );
    let started = env.events("Session Started");
    assert!(
        started.iter().any(|e| e["fields"]["client_user"] == "alice"
            && e["fields"]["client_id"]
                .as_str()
                .is_some_and(|c| c.starts_with("k8s-"))),
        "{started:?}"
    );
    let status = env.ctl(&alice, &["status"]);
    assert!(
        text(&status).contains("You: alice (developer"),
        "{}",
        text(&status)
    );
    let name = session.id.to_ascii_lowercase();

    // kubectl lists sessions: alice sees hers, carol (a certificate user with the same
    // role) sees none of alice's, the admin sees everyone's.
    let (ok, out, err) = env.kubectl_as(&alice, &["-n", &env.ns, "get", "sessions"]);
    assert!(
        ok && out.contains(&name) && out.contains("alice") && out.contains("deployment/web"),
        "{out}{err}"
    );
    // One session by name: the list's columns, not just NAME and AGE (issue 33).
    let (ok, one, err) = env.kubectl_as(&alice, &["-n", &env.ns, "get", "session", &name]);
    let header: Vec<&str> = one
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert!(
        ok && header == ["NAME", "USER", "TARGET", "PORTS", "CLIENT", "AGE"]
            && one.contains("deployment/web"),
        "{one}{err}"
    );
    let (ok, out, err) = env.kubectl_as(&carol, &["-n", &env.ns, "get", "sessions"]);
    assert!(ok && !out.contains(&name), "{out}{err}");
    let (ok, out, err) = env.kubectl_as(&admin, &["get", "sessions", "-A"]);
    assert!(ok && out.contains(&name), "{out}{err}");
    let status = env.ctl(&carol, &["status"]);
    assert!(
        text(&status).contains("You: carol (developer"),
        "{}",
        text(&status)
    );

    // carol may not end alice's session, nor take her port: a specific error, an audit
    // line, and no effect.
    let (ok, _, err) = env.kubectl_as(&carol, &["-n", &env.ns, "delete", "session", &name]);
    assert!(
        !ok && err.contains("not yours and you are not an admin"),
        "{err}"
    );
    let out = env.ctl(&carol, &["sessions", "kill", &session.id]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("not yours and you are not an admin"),
        "{}",
        text(&out)
    );
    let forbidden = env.events("Request Forbidden");
    assert!(
        forbidden
            .iter()
            .any(|e| e["fields"]["client_user"] == "carol"),
        "{forbidden:?}"
    );
    let refused = env.steal(&carol, local(), &["--on-concurrent-steal", "override"]);
    let why = refused.err().expect("carol's override was refused");
    assert!(why.contains("`override` on `targets/port-locks`"), "{why}");
    assert_eq!(get(pod), "local", "alice still holds the port");

    // The admin ends it with kubectl; alice's mirrordctl says who did.
    let (ok, out, err) = env.kubectl_as(&admin, &["-n", &env.ns, "delete", "session", &name]);
    assert!(ok && out.contains("deleted"), "{out}{err}");
    session
        .wait_exit(Duration::from_secs(10))
        .expect("alice's mirrordctl exits");
    assert!(
        session.stderr.text().contains("killed by kubernetes-admin"),
        "{}",
        session.stderr.text()
    );
    let killed = env.events("Session Killed");
    assert!(!killed.is_empty(), "an audit line for the kill");
    let (_, out, _) = env.kubectl_as(&admin, &["get", "sessions", "-A"]);
    assert!(!out.contains(&name), "{out}");
}

#[test]
fn forged_front_proxy_headers_are_refused() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(env) = Env::start(&[]) else { return };
    let op = SocketAddr::new(env.pod_ip("app.kubernetes.io/name=mirrord-operator"), 8446);
    let curl = |extra: &[&str]| -> String {
        let out = Command::new("curl")
            .args([
                "-sk",
                "-m",
                "5",
                "-H",
                "X-Remote-User: kubernetes-admin",
                "-H",
                "X-Remote-Group: system:masters",
            ])
            .args(extra)
            .arg(format!(
                "https://{op}/apis/operator.mirrord.dev/v1/sessions"
            ))
            .output()
            .expect("curl");
        format!(
            "{}|{}",
            String::from_utf8_lossy(&out.stdout),
            out.status.code().unwrap_or(-1)
        )
    };
    // Straight to the operator, claiming to be the cluster admin: refused, and said so.
    let answer = curl(&[]);
    assert!(
        answer.contains("401") && answer.contains("not the API server"),
        "{answer}"
    );
    // A client certificate of another CA (the cluster's, not the request-header CA) does
    // not even finish the handshake.
    let carol = env
        .k
        .user_kubeconfig(env.dir.path(), "carol", None, &["developers"]);
    let crt = carol.with_file_name("carol.crt");
    let key = carol.with_file_name("carol.key");
    let answer = curl(&[
        "--cert",
        crt.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert!(!answer.contains("SessionList"), "{answer}");
    let refused = wait_for(Duration::from_secs(5), || {
        env.events("aggregated API: request refused")
            .iter()
            .any(|e| e["fields"]["forged"] == true)
            .then_some(())
    });
    assert!(refused.is_some(), "the forgery is in the operator's log");
}

/// `kubectl proxy` as the cluster admin on a free loopback port: how a person opens the
/// console through the API server. Stopped on drop.
struct KubectlProxy {
    child: std::process::Child,
    addr: SocketAddr,
}

impl KubectlProxy {
    fn start(kubeconfig: &Path) -> Self {
        let addr = mirrord_e2e::free_addr();
        let child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args([
                "proxy",
                "--address=127.0.0.1",
                &format!("--port={}", addr.port()),
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("kubectl proxy");
        wait_for(Duration::from_secs(20), || {
            std::net::TcpStream::connect(addr).ok()
        })
        .expect("kubectl proxy listens");
        Self { child, addr }
    }
}

impl Drop for KubectlProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const CONSOLE: &str = "/apis/operator.mirrord.dev/v1/console";

#[test]
fn the_console_is_reached_through_the_api_server_with_rbac() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // The lock is held outside the runtime: one release at a time, across the awaits.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(console_through_the_api_server());
}

async fn console_through_the_api_server() {
    use mirrord_e2e::browser::{browser, chromedriver, click, screenshot, until};
    let Some(driver) = chromedriver() else { return };
    let Some(env) = tokio::task::block_in_place(|| Env::start(&["console.enabled=true"])) else {
        return;
    };
    let [alice, bob, carol, admin] = env.users();
    let mut session = tokio::task::block_in_place(|| env.steal(&alice, local(), &[]))
        .unwrap_or_else(|e| panic!("alice's session did not open: {e}"));

    // Through the API server with their own kubeconfig, in their namespace (a RoleBinding
    // grants the console there): alice sees her session as a developer, carol (the user
    // role too) sees none of alice's, bob (no RBAC) nothing.
    let ns_console = format!(
        "/apis/operator.mirrord.dev/v1/namespaces/{}/console",
        env.ns
    );
    let status = |who: &Path| -> Result<Value, String> {
        let (ok, out, err) =
            env.kubectl_as(who, &["get", "--raw", &format!("{ns_console}/api/status")]);
        match ok {
            true => Ok(serde_json::from_str(&out).unwrap()),
            false => Err(err),
        }
    };
    let mine = status(&alice).unwrap();
    assert_eq!(mine["caller"]["client_user"], "alice");
    assert_eq!(mine["caller"]["role"], "developer");
    assert!(
        mine["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["session_id"] == session.id.as_str()),
        "{mine}"
    );
    let theirs = status(&carol).unwrap();
    assert!(
        theirs["sessions"].as_array().unwrap().is_empty(),
        "{theirs}"
    );
    let err = status(&bob).unwrap_err();
    assert!(err.contains("Forbidden"), "{err}");

    // carol may not kill alice's session from the console, even with her CSRF token.
    let server = env.k.kubectl(&[
        "config",
        "view",
        "--raw",
        "-o",
        "jsonpath={.clusters[0].cluster.server}",
    ]);
    let ca = env.k.kubectl(&[
        "config",
        "view",
        "--raw",
        "-o",
        "jsonpath={.clusters[0].cluster.certificate-authority}",
    ]);
    let kill_as_carol = |csrf: &str| -> String {
        let out = Command::new("curl")
            .args(["-s", "-m", "10", "-X", "POST", "--cacert", &ca])
            .arg("--cert")
            .arg(carol.with_file_name("carol.crt"))
            .arg("--key")
            .arg(carol.with_file_name("carol.key"))
            .args([
                "-H",
                &format!("X-CSRF-Token: {csrf}"),
                "-w",
                "|%{http_code}",
            ])
            .arg(format!(
                "{server}{ns_console}/api/sessions/{}/kill",
                session.id
            ))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let answer = kill_as_carol("forged");
    assert!(
        answer.ends_with("|403") && answer.contains("X-CSRF-Token"),
        "{answer}"
    );
    let answer = kill_as_carol(theirs["csrf"].as_str().unwrap());
    assert!(
        answer.ends_with("|403") && answer.contains("not yours"),
        "{answer}"
    );

    // The admin opens it in a real browser through `kubectl proxy`, sees alice's session
    // and ends it with the Kill button.
    let proxy = tokio::task::block_in_place(|| KubectlProxy::start(&admin));
    let c = browser(&driver).await;
    c.goto(&format!("http://{}{CONSOLE}/", proxy.addr))
        .await
        .unwrap();
    until(
        &c,
        "the admin's name",
        "return document.getElementById('whoami').textContent.includes('kubernetes-admin (admin)')",
    )
    .await;
    let logout_hidden = c
        .execute("return document.getElementById('logout').hidden", vec![])
        .await
        .unwrap();
    assert_eq!(
        logout_hidden,
        Value::Bool(true),
        "no console login to end here"
    );
    let row = format!(
        "return !!document.querySelector('tr[data-session=\"{}\"]')",
        session.id
    );
    until(&c, "alice's session row", &row).await;
    screenshot(&c, "console-through-api-server.png").await;
    let css = format!("tr[data-session=\"{}\"] button.kill", session.id);
    click(&c, &css).await;
    until(
        &c,
        "the row to go",
        &format!(
            "return !document.querySelector('tr[data-session=\"{}\"]')",
            session.id
        ),
    )
    .await;
    let ended = tokio::task::block_in_place(|| session.wait_exit(Duration::from_secs(10)));
    assert!(ended.is_some(), "alice's CLI ends");
    assert!(
        session.stderr.text().contains("killed by kubernetes-admin"),
        "{}",
        session.stderr.text()
    );
    c.close().await.unwrap();
}
