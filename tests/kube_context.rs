//! `mirrordctl exec` in a Kubernetes target's context (issue 27): the process gets the
//! environment of the target container's process, names as the pod resolves them, and
//! TCP connections and UDP flows that leave from the pod, through the target pod's agent.
//!
//! The target (`deployment/api`) has a variable only a Secret-backed `envFrom` gives it, a
//! name only its `/etc/hosts` knows (`hostAliases`; the dev cluster has no cluster DNS),
//! and a neighbour (`peer`) whose HTTP server answers with the address it sees the request
//! come from: the target pod's address when the connection left from the pod, the node's
//! when it did not. The developer is on this machine, reaching the operator through the
//! API server with a kubeconfig; RBAC decides what each part of the context needs. On a
//! copy of the target (`--copy-target`) the context is the copy pod's.
//!
//! Its files (issue 28): a ConfigMap and a Secret mounted only in the target pod, and an
//! emptyDir with a 50 MB file of random bytes and 16 files of 1 MB, read by programs we did
//! not write and compared with what `kubectl exec` shows.

use mirrord_e2e::kube::{repo, Cluster};
use mirrord_e2e::{bin, fixture, kube_ctl_command, wait_for, Session};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// The value the target's container gets only through its Secret.
const SECRET_VALUE: &str = "from-the-secret-7f3a";
/// The name only the target pod's /etc/hosts has.
const ALIAS: &str = "peer.only-in-pod";
/// Where the peer's server listens, and a port nothing listens on.
const PEER_PORT: u16 = 8080;
const CLOSED_PORT: u16 = 8081;

/// The neighbour: busybox httpd whose CGI answers `peer=ADDRESS` (the connection's source).
const PEER: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: peer, namespace: NS}
spec:
  replicas: 1
  selector: {matchLabels: {app: peer}}
  template:
    metadata: {labels: {app: peer}}
    spec:
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: 1
      containers:
        - name: httpd
          image: mirrord.dev/busybox:1
          imagePullPolicy: Never
          command: ["/bin/sh", "-c", "mkdir -p /www/cgi-bin && printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho peer=$REMOTE_ADDR\\n' > /www/cgi-bin/peer && chmod +x /www/cgi-bin/peer && exec httpd -f -p 8080 -h /www"]
          readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
"#;

/// The target: its one variable of interest comes from the Secret through `envFrom`, and
/// its /etc/hosts names the peer `ALIAS`. A second container has an environment of its
/// own (`/container/sidecar` takes the context from it) and serves port 80.
const API: &str = r#"apiVersion: v1
kind: Secret
metadata: {name: api-secrets, namespace: NS}
stringData: {ONLY_FROM_SECRET: SECRET_VALUE}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: api-config, namespace: NS}
data: {config.yaml: "greeting: only-in-the-configmap\n"}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: NS}
spec:
  replicas: 1
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api}}
    spec:
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: 1
      hostAliases: [{ip: "PEER_IP", hostnames: ["ALIAS"]}]
      volumes:
        - {name: config, configMap: {name: api-config}}
        - {name: secret, secret: {secretName: api-secrets}}
        - {name: data, emptyDir: {}}
      containers:
        - name: app
          image: mirrord.dev/busybox:1
          imagePullPolicy: Never
          command: ["/bin/sh", "-c", "head -c 52428800 /dev/urandom > /data/big && for i in $(seq 0 15); do head -c 1048576 /dev/urandom > /data/part$i; done && echo original > /data/note && touch /data/ready && exec sleep 100000"]
          envFrom: [{secretRef: {name: api-secrets}}]
          readinessProbe: {exec: {command: ["/bin/sh", "-c", "test -f /data/ready"]}, periodSeconds: 1}
          volumeMounts:
            - {name: config, mountPath: /etc/app}
            - {name: secret, mountPath: /etc/secret}
            - {name: data, mountPath: /data}
        - name: sidecar
          image: mirrord.dev/busybox:1
          imagePullPolicy: Never
          command: ["/bin/sh", "-c", "mkdir -p /tmp/www && echo sidecar > /tmp/www/index.html && exec httpd -f -p 80 -h /tmp/www"]
          env: [{name: ONLY_IN_SIDECAR, value: SIDECAR_VALUE}]
"#;
/// The value only the target's second container (`sidecar`) has.
const SIDECAR_VALUE: &str = "sidecar-2c9d";

/// What a Python program sees: the variable, the name, a connection and a closed port.
const PROBE: &str = r#"
import os, socket, sys
host, port, closed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
print("python secret=" + os.environ.get("ONLY_FROM_SECRET", "<unset>"))
try:
    addrs = sorted({a[4][0] for a in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)})
    print("python resolves", " ".join(addrs))
except socket.gaierror as e:
    print("python cannot resolve", e)
    sys.exit(0)
s = socket.create_connection((host, port), timeout=10)
s.sendall(b"GET /cgi-bin/peer HTTP/1.0\r\n\r\n")
data = b""
while True:
    c = s.recv(4096)
    if not c:
        break
    data += c
# The CGI's own header lines end in a bare newline: the answer is its `peer=` line.
print("python", [l for l in data.decode().splitlines() if l.startswith("peer=")][-1])
try:
    socket.create_connection((host, closed), timeout=10)
    print("python closed port connected")
except ConnectionRefusedError as e:
    print("python closed port refused", e.errno)
except OSError as e:
    print("python closed port failed", e.errno)
"#;

/// Connections opened one right after another, against the same with a pause between:
/// prints both medians in ms. Back to back, each connect followed a close by a few
/// hundred microseconds, and mirrordctl's two small writes met Nagle's algorithm on its
/// connection to the API server (40 ms each, against 3 ms paced).
const RHYTHM: &str = r#"
import socket, statistics, sys, time
host, port = sys.argv[1], int(sys.argv[2])
def median(pause):
    took = []
    for _ in range(15):
        time.sleep(pause)
        t = time.perf_counter()
        s = socket.create_connection((host, port), timeout=20)
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        while s.recv(4096):
            pass
        s.close()
        took.append((time.perf_counter() - t) * 1000)
    return statistics.median(took)
print("rhythm", median(0), median(0.08))
"#;

/// The operator installed from the chart (its APIService on), the peer and the target.
/// Uninstalls on drop: an APIService left without its operator stalls discovery.
struct Env {
    k: Cluster,
    ns: String,
    release: String,
    dir: tempfile::TempDir,
    home: PathBuf,
    peer_ip: IpAddr,
    api_ip: IpAddr,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.k
            .remove_release(&self.release, &self.ns, true, &[&self.ns]);
    }
}

impl Env {
    fn start() -> Option<Self> {
        let k = Cluster::get()?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let ns = format!("context-{:04x}", nanos & 0xffff);
        k.load_operator_image();
        k.load_agent_image();
        k.kubectl(&["create", "namespace", &ns]);
        let release = format!("mirrord-operator-{ns}");
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        k.apply(&PEER.replace("NS", &ns));
        let rollout = |name: &str| {
            k.kubectl(&[
                "-n",
                &ns,
                "rollout",
                "status",
                &format!("deployment/{name}"),
                "--timeout=120s",
            ])
        };
        rollout("peer");
        let pod_ip = |label: &str| -> IpAddr {
            k.kubectl(&[
                "-n",
                &ns,
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
        };
        let peer_ip = pod_ip("app=peer");
        k.apply(
            &API.replace("NS", &ns)
                .replace("SECRET_VALUE", SECRET_VALUE)
                .replace("SIDECAR_VALUE", SIDECAR_VALUE)
                .replace("PEER_IP", &peer_ip.to_string())
                .replace("ALIAS", ALIAS),
        );
        rollout("api");
        let api_ip = pod_ip("app=api");
        let env = Self {
            k,
            ns,
            release,
            dir,
            home,
            peer_ip,
            api_ip,
        };
        let chart = repo()
            .join("deploy/helm/mirrord-operator")
            .display()
            .to_string();
        env.k.helm(&[
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
        ]);
        env.k
            .api_service_available(Duration::from_secs(60), &env.ns);
        Some(env)
    }

    /// A token user's kubeconfig, its context's namespace the test's.
    fn user(&self, name: &str) -> PathBuf {
        let path = self
            .k
            .user_kubeconfig(self.dir.path(), name, Some(&self.k.token(name)), &[]);
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&path)
            .args([
                "config",
                "set-context",
                "--current",
                "--namespace",
                &self.ns,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        path
    }

    /// `mirrordctl exec -t deployment/api FLAGS -- sh -c SCRIPT` as the kubeconfig's user.
    fn exec(&self, kubeconfig: &Path, flags: &[&str], script: &str) -> Output {
        self.exec_on(kubeconfig, "deployment/api", flags, script)
    }

    /// The same on `target`.
    fn exec_on(&self, kubeconfig: &Path, target: &str, flags: &[&str], script: &str) -> Output {
        let mut args = vec!["exec", "-t", target, "-n", &self.ns];
        args.extend_from_slice(flags);
        args.extend(["--", "sh", "-c", script]);
        kube_ctl_command(kubeconfig, &self.home)
            .args(&args)
            .output()
            .expect("run mirrordctl")
    }

    /// Everything the developer's process tries, as one shell script.
    fn script(&self) -> String {
        let probe = self.dir.path().join("probe.py");
        std::fs::write(&probe, PROBE).unwrap();
        format!(
            "echo \"sh secret=$ONLY_FROM_SECRET\"; \
             python3 -c 'import os; print(\"python3 -c secret=\" + os.environ[\"ONLY_FROM_SECRET\"])'; \
             getent hosts {ALIAS} || echo 'getent: no such name'; \
             echo \"curl $(curl -sS --max-time 20 http://{ALIAS}:{PEER_PORT}/cgi-bin/peer)\"; \
             python3 {probe} {ALIAS} {PEER_PORT} {CLOSED_PORT}; \
             curl -sS --max-time 20 http://{peer}:{CLOSED_PORT}/; echo \"curl closed exit $?\"",
            probe = probe.display(),
            peer = self.peer_ip,
        )
    }
}

/// The address in a `peer=ADDRESS` answer of a line starting with `prefix` (busybox httpd
/// shows an IPv4 peer as `[::ffff:a.b.c.d]`).
fn peer_seen(out: &str, prefix: &str) -> Option<IpAddr> {
    let line = out.lines().find(|l| l.starts_with(prefix))?;
    let addr = line.split("peer=").nth(1)?.trim();
    let addr = addr.trim_start_matches('[').trim_end_matches(']');
    let addr = addr.strip_prefix("::ffff:").unwrap_or(addr);
    addr.parse().ok()
}

fn text(o: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn exec_gets_the_pods_environment_names_connections_and_files_and_rbac_decides_each() {
    let Some(env) = Env::start() else { return };
    let _ = bin("mirrordctl");
    let (alice, bob) = (env.user("alice"), env.user("bob"));
    // alice: the chart's developer role (which must grant env, outgoing and dns).
    env.k.kubectl(&[
        "-n",
        &env.ns,
        "create",
        "rolebinding",
        "alice-user",
        &format!("--clusterrole={}-user", env.release),
        "--user=alice",
    ]);
    let script = env.script();

    // Without exec, this machine knows neither the variable nor the name, and its
    // connections reach the peer from the node's address: what exec changes is visible.
    let local = Command::new("sh").args(["-c", &script]).output().unwrap();
    let local_out = String::from_utf8_lossy(&local.stdout).into_owned();
    assert!(local_out.contains("sh secret=\n"), "{}", text(&local));
    assert!(
        local_out.contains("getent: no such name"),
        "{}",
        text(&local)
    );
    let direct = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .arg(format!("http://{}:{PEER_PORT}/cgi-bin/peer", env.peer_ip))
        .output()
        .unwrap();
    let direct = format!("curl {}", String::from_utf8_lossy(&direct.stdout));
    let node_seen = peer_seen(&direct, "curl peer=")
        .unwrap_or_else(|| panic!("the peer answers the node directly: {direct}"));
    assert_ne!(node_seen, env.api_ip, "the node is not the target pod");

    let out = env.exec(&alice, &[], &script);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    // Where the context came from: the target's pod and its container.
    assert!(
        stdout.contains("of pod api-") && stdout.contains("(container app)"),
        "{all}"
    );
    // The container process's environment, the Secret's value included, in the shell and
    // in the programs it starts.
    assert!(
        stdout.contains(&format!("sh secret={SECRET_VALUE}\n")),
        "{all}"
    );
    assert!(
        stdout.contains(&format!("python3 -c secret={SECRET_VALUE}\n")),
        "{all}"
    );
    assert!(
        stdout.contains(&format!("python secret={SECRET_VALUE}\n")),
        "{all}"
    );
    // The pod's hostAliases name resolves, through getent and Python's getaddrinfo.
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with(&env.peer_ip.to_string()) && l.trim_end().ends_with(ALIAS)),
        "getent: {all}"
    );
    assert!(
        stdout.contains(&format!("python resolves {}\n", env.peer_ip)),
        "{all}"
    );
    // curl and Python reach the peer, which sees the target pod's address, not the node's.
    assert_eq!(peer_seen(&stdout, "curl peer="), Some(env.api_ip), "{all}");
    assert_eq!(
        peer_seen(&stdout, "python peer="),
        Some(env.api_ip),
        "{all}"
    );
    // A port nothing listens on is refused at once, as in the pod (ECONNREFUSED; curl 7).
    assert!(stdout.contains("python closed port refused 111"), "{all}");
    assert!(stdout.contains("curl closed exit 7"), "{all}");

    // A connection opened right after another closed costs what a paced one does.
    let rhythm = env.dir.path().join("rhythm.py");
    std::fs::write(&rhythm, RHYTHM).unwrap();
    let out = env.exec(
        &alice,
        &[],
        &format!("python3 {} {} {PEER_PORT}", rhythm.display(), env.peer_ip),
    );
    let all = text(&out);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let medians: Vec<f64> = stdout
        .lines()
        .find_map(|l| l.strip_prefix("rhythm "))
        .unwrap_or_else(|| panic!("{all}"))
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    println!(
        "set-up back to back {:.1} ms, paced {:.1} ms",
        medians[0], medians[1]
    );
    assert!(
        medians[0] < medians[1] + 15.0,
        "back to back {:.1} ms against {:.1} ms paced: {all}",
        medians[0],
        medians[1]
    );

    // A container named in the target gives the context: the environment of its process,
    // not the first container's.
    let show = "echo \"sidecar=$ONLY_IN_SIDECAR secret=$ONLY_FROM_SECRET\"";
    let out = env.exec_on(&alice, "deployment/api/container/sidecar", &[], show);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(stdout.contains("(container sidecar)"), "{all}");
    assert!(
        stdout.contains(&format!("sidecar={SIDECAR_VALUE} secret=\n")),
        "{all}"
    );
    let out = env.exec(&alice, &[], show);
    let all = text(&out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("sidecar= secret={SECRET_VALUE}\n")),
        "{all}"
    );

    // A connected UDP socket's datagrams leave from the pod: a UDP server at the node's
    // address sees the pod's, while the process sees the server's as the source of the
    // answers and as its peer; the boundaries of an empty and a 60,000-byte datagram hold.
    let echo = std::net::UdpSocket::bind((node_seen, 0)).unwrap();
    let echo_addr = echo.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = vec![0; 65_536];
        while let Ok((n, from)) = echo.recv_from(&mut buf) {
            let mut answer = buf[..n].to_vec();
            answer.extend_from_slice(format!(" from={}", from.ip()).as_bytes());
            let _ = echo.send_to(&answer, from);
        }
    });
    let udp_probe = fixture("udp_probe.py");
    let out = env.exec(
        &alice,
        &[],
        &format!(
            "python3 {} {node_seen} {}",
            udp_probe.display(),
            echo_addr.port()
        ),
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    for len in [4, 0, 60000] {
        let want = format!(
            "udp {len} {len} from={} source {node_seen} {} peer {node_seen}",
            env.api_ip,
            echo_addr.port()
        );
        assert!(stdout.contains(&want), "{want}: {all}");
    }

    // With no port list, the port the process listens on is stolen on the pod once it
    // listens, and given back when it closes its socket (nothing in the pod listens there:
    // the pod then refuses, as before the session).
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let server = fixture("listening_server.py").display().to_string();
    let port_arg = port.to_string();
    let mut s = Session::start_kube(
        &alice,
        &env.home,
        &[
            "exec",
            "-t",
            "deployment/api",
            "-n",
            &env.ns,
            "--no-env",
            "--no-outgoing",
            "--no-remote-dns",
            "--",
            "python3",
            &server,
            &port_arg,
        ],
    )
    .unwrap_or_else(|e| panic!("exec without ports: {e}"));
    let added = format!("port {port}: steal");
    s.wait_stdout(&added, Duration::from_secs(60));
    // The agent doing this is not privileged: it has the capabilities it needs.
    let security = env.k.kubectl(&[
        "-n",
        &env.ns,
        "get",
        "pods",
        "-l",
        "mirrord.dev/role=agent",
        "-o",
        "jsonpath={.items[0].spec.containers[0].securityContext}",
    ]);
    let security: serde_json::Value = serde_json::from_str(&security)
        .unwrap_or_else(|e| panic!("agent securityContext {security:?}: {e}"));
    assert_eq!(security["privileged"], false, "{security}");
    assert_eq!(
        security["capabilities"]["add"],
        serde_json::json!(["NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"]),
        "{security}"
    );
    let pod = format!("http://{}:{port}", env.api_ip);
    let curl = |path: &str| {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10"])
            .arg(format!("{pod}{path}"))
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    assert_eq!(curl("/a"), (Some(0), "exec GET /a".into()));
    assert_eq!(curl("/close"), (Some(0), "exec GET /close".into()));
    let given_back = format!("port {port}: given back");
    s.wait_stdout(&given_back, Duration::from_secs(30));
    let refused = wait_for(Duration::from_secs(20), || {
        (curl("/after").0 == Some(7)).then_some(())
    });
    assert!(
        refused.is_some(),
        "the pod's own port again: {:?}",
        curl("/after")
    );
    assert_eq!(s.stop().and_then(|st| st.code()), Some(130));

    // On a copy of the target, the context is the copy's: the same environment and names
    // (from the same pod template), connections from the copy's own address.
    let out = env.exec(&alice, &["--copy-target"], &script);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(stdout.contains("of pod mirrord-copy-api-"), "{all}");
    assert!(
        stdout.contains(&format!("python secret={SECRET_VALUE}\n")),
        "{all}"
    );
    assert!(
        stdout.contains(&format!("python resolves {}\n", env.peer_ip)),
        "{all}"
    );
    let from_copy = peer_seen(&stdout, "curl peer=").unwrap_or_else(|| panic!("{all}"));
    assert!(
        from_copy != env.api_ip && from_copy != node_seen,
        "the copy's own address: {all}"
    );
    assert_eq!(peer_seen(&stdout, "python peer="), Some(from_copy), "{all}");

    // bob may do everything but connect out: exec (which asks for outgoing connections by
    // default) is refused, naming the verb, before the process starts.
    env.k.apply(&format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: no-outgoing, namespace: {ns}}}\nrules:\n- apiGroups: [operator.mirrord.dev]\n  resources: [sessions]\n  verbs: [create, get, list, delete]\n- apiGroups: [operator.mirrord.dev]\n  resources: [targets]\n  verbs: [steal, mirror, env, dns, files-read]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: bob-no-outgoing, namespace: {ns}}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: no-outgoing}}\nsubjects: [{{kind: User, name: bob, apiGroup: rbac.authorization.k8s.io}}]\n",
        ns = env.ns
    ));
    let out = env.exec(&bob, &[], &script);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(3), "{all}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("`outgoing` on `targets`") && stderr.contains("deployment.api"),
        "{all}"
    );
    assert!(
        !all.contains(SECRET_VALUE),
        "the process never started: {all}"
    );
    // Without outgoing connections he gets the rest: the environment and the names, while
    // his connections leave from this machine.
    let out = env.exec(&bob, &["--no-outgoing"], &script);
    let all = text(&out);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        stdout.contains(&format!("python secret={SECRET_VALUE}\n")),
        "{all}"
    );
    assert!(
        stdout.contains(&format!("python resolves {}\n", env.peer_ip)),
        "{all}"
    );
    assert_eq!(peer_seen(&stdout, "curl peer="), Some(node_seen), "{all}");

    // A container target (issue 25): `deployment/api/container/sidecar` steals the port the
    // sidecar serves (the agent takes the pod's traffic, whichever container listens).
    let www = env.dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "local\n").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Killed when dropped, a panic included: a server left behind would hold the test's
    // inherited descriptors (the cluster lock's among them).
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let local = Killed(
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .arg("--directory")
            .arg(&www)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let get = || {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5"])
            .arg(format!("http://{}:80/", env.api_ip))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(get(), "sidecar", "the sidecar serves port 80");
    let up = wait_for(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .ok()
            .map(drop)
    });
    assert!(up.is_some(), "the local server did not start");
    let stolen = Session::start_kube(
        &alice,
        &env.home,
        &[
            "steal",
            "--target",
            "deployment/api/container/sidecar",
            "--namespace",
            &env.ns,
            "--port",
            &format!("80=127.0.0.1:{port}"),
        ],
    )
    .unwrap_or_else(|e| panic!("a steal of a container target: {e}"));
    let got = wait_for(Duration::from_secs(5), || (get() == "local").then_some(()));
    assert!(got.is_some(), "not stolen: {}", get());
    drop(stolen);
    drop(local);

    // Targetless (issue 25): no target; a pod of the session's own in the namespace gives
    // the network and the names: the peer sees that pod's address, neither the node's nor a
    // target's; no --port may be asked; the pod is gone after the session.
    let peer = format!(
        "curl -sS --max-time 20 http://{}:{PEER_PORT}/cgi-bin/peer",
        env.peer_ip
    );
    let out = env.exec_on(&alice, "targetless", &["--fs-mode", "local"], &peer);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(stdout.contains("of pod mirrord-copy-targetless-"), "{all}");
    assert!(stdout.contains("active on targetless (namespace"), "{all}");
    let seen = peer_seen(&stdout, "peer=").unwrap_or_else(|| panic!("{all}"));
    assert!(
        seen != node_seen && seen != env.api_ip && seen != from_copy,
        "the targetless pod's own address: {all}"
    );
    let out = env.exec_on(&alice, "targetless", &["--port", "80=9999"], "true");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("a targetless session has no incoming traffic"),
        "{}",
        text(&out)
    );
    let gone = wait_for(Duration::from_secs(30), || {
        let (_, pods, _) = env
            .k
            .try_kubectl(&["-n", &env.ns, "get", "pods", "-o", "name"]);
        (!pods.contains("mirrord-copy-targetless-")).then_some(())
    });
    assert!(gone.is_some(), "the targetless pod outlived its session");

    files_as_kubectl_exec_shows_them(&env);
}

/// What a process reads of the target's files: the files mounted only in the pod, a 50 MB
/// file of random bytes, 16 files read by 16 threads at once; writes refused in `read` mode
/// and written back in `write` mode (an admin's right); the local list kept local. (Part of
/// the test above: two releases of the chart cannot be installed at once.)
fn files_as_kubectl_exec_shows_them(env: &Env) {
    // bob (limited above) is made an admin now: the chart's admin role writes files.
    let (alice, bob) = (env.user("alice"), env.user("bob"));
    env.k.kubectl(&[
        "-n",
        &env.ns,
        "create",
        "rolebinding",
        "bob-admin",
        &format!("--clusterrole={}-admin", env.release),
        "--user=bob",
    ]);
    let pod = env
        .k
        .kubectl(&[
            "-n",
            &env.ns,
            "get",
            "pods",
            "-l",
            "app=api",
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ])
        .trim()
        .to_owned();
    let in_pod = |script: &str| {
        env.k.kubectl(&[
            "-n", &env.ns, "exec", &pod, "-c", "app", "--", "sh", "-c", script,
        ])
    };
    // A path only this machine has, kept local by the config's `local` list.
    let here = PathBuf::from(format!("/var/lib/mirrord-e2e-{}", env.ns));
    std::fs::create_dir_all(&here).unwrap();
    std::fs::write(here.join("local.txt"), "only-on-this-machine\n").unwrap();
    struct Gone(PathBuf);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _gone = Gone(here.clone());
    let config = |mode: &str, local: bool| {
        let file = env.dir.path().join(format!("fs-{mode}-{local}.json"));
        let local = if local {
            format!(r#", "local": ["^{}"]"#, here.display())
        } else {
            String::new()
        };
        std::fs::write(
            &file,
            format!(
                r#"{{"feature": {{"network": {{"incoming": "off"}}, "fs": {{"mode": "{mode}", "read_only": ["^/etc/app", "^/etc/secret"]{local}}}}}}}"#
            ),
        )
        .unwrap();
        file.display().to_string()
    };
    let threads = env.dir.path().join("threads.py");
    std::fs::write(
        &threads,
        "import hashlib, threading\nout = {}\ndef read(i):\n    with open('/data/part%d' % i, 'rb') as f:\n        out[i] = hashlib.sha256(f.read()).hexdigest()\nts = [threading.Thread(target=read, args=(i,)) for i in range(16)]\n[t.start() for t in ts]\n[t.join() for t in ts]\nfor i in range(16):\n    print('%s  /data/part%d' % (out[i], i))\n",
    )
    .unwrap();
    let listing = "ls -l /etc/app | awk '$1 != \"total\" {print $1, $(NF-2), $(NF-1), $NF}'";
    let stats =
        "stat -c '%s %a %u %g %Y' /etc/app/config.yaml /etc/secret/ONLY_FROM_SECRET /data/big";
    let script = format!(
        "python3 -c 'print(open(\"/etc/app/config.yaml\").read().strip())'; \
         cat /etc/secret/ONLY_FROM_SECRET; echo; \
         echo listing; {listing}; echo stats; {stats}; \
         sha256sum /data/big; python3 {threads}; \
         (echo changed > /data/note) 2>&1 | sed 's/.*: //'; \
         cat {here}/local.txt",
        threads = threads.display(),
        here = here.display(),
    );
    let out = env.exec(&alice, &["-f", &config("read", true)], &script);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        stdout.contains("greeting: only-in-the-configmap\n"),
        "{all}"
    );
    assert!(
        stdout.contains(&format!("{SECRET_VALUE}\n")),
        "a mounted Secret's file: {all}"
    );
    // `ls -l` and `stat` show what they show in the pod (busybox there, coreutils here).
    let section = |from: &str, to: &str| -> Vec<String> {
        stdout
            .split(&format!("{from}\n"))
            .nth(1)
            .and_then(|rest| rest.split(to).next())
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    };
    let pod_listing: Vec<String> = in_pod(listing).lines().map(str::to_owned).collect();
    assert_eq!(section("listing", "stats"), pod_listing, "{all}");
    assert!(
        pod_listing
            .iter()
            .any(|l| l.ends_with("config.yaml -> ..data/config.yaml")),
        "{pod_listing:?}"
    );
    let pod_stats: Vec<String> = in_pod(stats).lines().map(str::to_owned).collect();
    assert_eq!(pod_stats.len(), 3, "{pod_stats:?}");
    for line in &pod_stats {
        assert!(
            stdout.lines().any(|l| l == line),
            "stat {line:?} as in the pod: {all}"
        );
    }
    // 50 MB of random bytes and 16 files read at once by 16 threads: byte for byte.
    let sums = in_pod("sha256sum /data/big /data/part*");
    assert_eq!(sums.lines().count(), 17, "{sums}");
    for line in sums.lines() {
        assert!(
            stdout.lines().any(|l| l == line),
            "{line:?} as in the pod: {all}"
        );
    }
    // `read` mode: the pod's file is unchanged and the process is told the filesystem is
    // read-only; the local list reads this machine's file.
    assert!(stdout.contains("Read-only file system\n"), "{all}");
    assert_eq!(in_pod("cat /data/note").trim(), "original");
    assert!(stdout.contains("only-on-this-machine\n"), "{all}");
    let out = env.exec(
        &alice,
        &["-f", &config("read", false)],
        &format!("cat {}/local.txt || echo 'cat failed'", here.display()),
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(
        all.contains("No such file or directory") && all.contains("cat failed\n"),
        "without the local list the path is the pod's, which has none: {all}"
    );

    // `write` mode: refused to a developer (RBAC's files-write), written back for an admin.
    let write = "echo written-from-exec > /data/note && cat /data/note";
    let out = env.exec(&alice, &["-f", &config("write", false)], write);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("files-write"),
        "the refusal names the missing right: {all}"
    );
    assert_eq!(in_pod("cat /data/note").trim(), "original");
    let out = env.exec(&bob, &["-f", &config("write", false)], write);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("written-from-exec"),
        "{all}"
    );
    assert_eq!(in_pod("cat /data/note").trim(), "written-from-exec");
}
