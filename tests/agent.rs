//! The agent on the real cluster (issue 12, first step): it enters a real pod's network
//! namespace from its own `hostPID` pod (not privileged: the capabilities the operator gives
//! its agents, NET_ADMIN, SYS_ADMIN and SYS_PTRACE), takes the pod's port over so that
//! clients of the Service are served through it, and gives the port back: at once when it
//! is stopped, and within its lease when it is killed with SIGKILL (the redirect fails
//! open; nothing has to clean up).
//!
//! How the test sees where a request went: busybox `httpd -v` logs each client's address.
//! Through the agent the client is 127.0.0.1 (the agent's pass-through connection); direct,
//! it is the node.

use mirrord_e2e::kube::Cluster;
use mirrord_e2e::prom::http_exchange;
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

const NS: &str = "mirrord-agent-test";
/// The lease the test gives the agent: a killed agent's redirect is gone after it.
const LEASE: Duration = Duration::from_secs(2);

fn web_yaml() -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {NS}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      automountServiceAccountToken: false
      containers:
        - name: httpd
          image: mirrord.dev/busybox:1
          imagePullPolicy: Never
          command: ["/bin/sh", "-c", "mkdir -p /tmp/www && echo hello > /tmp/www/index.html && exec httpd -f -v -p 80 -h /tmp/www"]
          ports: [{{containerPort: 80, protocol: TCP}}]
          readinessProbe: {{tcpSocket: {{port: 80}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {NS}}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 80, protocol: TCP}}]
"#
    )
}

fn agent_yaml(name: &str, uid: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {NS}}}
spec:
  hostPID: true
  restartPolicy: Never
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 10
  containers:
    - name: agent
      image: mirrord.dev/agent:0.1.0
      imagePullPolicy: Never
      args: ["intercept", "--pod-uid", "{uid}", "--port", "80", "--lease", "{}ms", "--json-log"]
      securityContext: {{privileged: false, allowPrivilegeEscalation: false, capabilities: {{add: [NET_ADMIN, SYS_ADMIN, SYS_PTRACE]}}}}
"#,
        LEASE.as_millis()
    )
}

/// One request through the Service; the body, or why it failed.
fn get(service: SocketAddr) -> Result<String, String> {
    let out =
        http_exchange(service, "GET / HTTP/1.0\r\nhost: web\r\n\r\n").map_err(|e| e.to_string())?;
    out.split("\r\n\r\n")
        .nth(1)
        .map(|b| b.trim().to_owned())
        .ok_or_else(|| format!("no HTTP answer: {out:?}"))
}

/// The client address httpd logged for its latest request.
fn last_client(k: &Cluster, pod: &str) -> Option<IpAddr> {
    let logs = k.kubectl(&["-n", NS, "logs", pod, "--tail=1"]);
    // `[::ffff:10.244.0.1]:48934: response:200` (httpd listens on a dual-stack socket)
    let line = logs.lines().last()?;
    let addr: IpAddr = match line.strip_prefix('[') {
        Some(rest) => rest.split(']').next()?.parse().ok()?,
        None => line.split(':').next()?.parse().ok()?,
    };
    Some(addr.to_canonical())
}

/// Requests until one is answered by a client address `want` says yes to; how long it took
/// and how many failed meanwhile.
fn until_client(
    k: &Cluster,
    pod: &str,
    service: SocketAddr,
    limit: Duration,
    want: impl Fn(IpAddr) -> bool,
) -> (Duration, usize) {
    let started = Instant::now();
    let mut failed = 0;
    loop {
        match get(service) {
            Ok(body) if body == "hello" => {
                // The log line is written right after the answer.
                std::thread::sleep(Duration::from_millis(100));
                if last_client(k, pod).is_some_and(&want) {
                    return (started.elapsed(), failed);
                }
            }
            _ => failed += 1,
        }
        assert!(
            started.elapsed() < limit,
            "not served as expected within {limit:?} ({failed} requests failed); httpd says: {}",
            k.kubectl(&["-n", NS, "logs", pod, "--tail=5"])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn agent_pid(uid: &str) -> Option<u32> {
    let out = Command::new("pgrep")
        .args(["-f", &format!("mirrord-agent intercept --pod-uid {uid}")])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()?
        .parse()
        .ok()
}

#[test]
fn the_agent_takes_a_pods_port_over_and_gives_it_back_when_stopped_or_killed() {
    let Some(k) = Cluster::get() else { return };
    k.load_agent_image();
    let _ = k.try_kubectl(&["delete", "namespace", NS, "--wait=true", "--timeout=60s"]);
    k.kubectl(&["create", "namespace", NS]);
    k.apply(&web_yaml());
    k.kubectl(&[
        "-n",
        NS,
        "rollout",
        "status",
        "deployment/web",
        "--timeout=90s",
    ]);
    let pods: Value =
        serde_json::from_str(&k.kubectl(&["-n", NS, "get", "pods", "-l", "app=web", "-o", "json"]))
            .unwrap();
    let pod = &pods["items"][0];
    let name = pod["metadata"]["name"].as_str().unwrap().to_owned();
    let uid = pod["metadata"]["uid"].as_str().unwrap().to_owned();
    let ip: IpAddr = k
        .kubectl(&[
            "-n",
            NS,
            "get",
            "service",
            "web",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])
        .parse()
        .unwrap();
    let service = SocketAddr::new(ip, 80);
    let loopback = |a: IpAddr| a.is_loopback();
    let direct = |a: IpAddr| !a.is_loopback();

    // Before: clients of the Service reach httpd directly.
    until_client(&k, &name, service, Duration::from_secs(30), direct);

    // The agent takes port 80 over: the same Service address is now served through it.
    k.apply(&agent_yaml("agent-1", &uid));
    k.wait_until(
        Duration::from_secs(60),
        &["-n", NS, "logs", "agent-1"],
        |l| l.contains("agent intercepting"),
    );
    let (_, failed) = until_client(&k, &name, service, Duration::from_secs(10), loopback);
    assert_eq!(failed, 0, "no request failed while the agent took over");

    // SIGKILL: nobody removes the redirect, its lease runs out.
    let pid = agent_pid(&uid).expect("the agent's process, seen from the node");
    let killed = Instant::now();
    assert!(Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let (took, failed) = until_client(&k, &name, service, Duration::from_secs(10), direct);
    let bound = LEASE + Duration::from_secs(1);
    eprintln!(
        "killed agent: served directly again after {:?} ({failed} requests failed meanwhile)",
        killed.elapsed()
    );
    assert!(
        took <= bound,
        "the port came back after {took:?}, bound {bound:?}"
    );

    // A new agent over the dead one's leftovers, then stopped the normal way: the port
    // comes back as the pod terminates, not a lease later.
    k.apply(&agent_yaml("agent-2", &uid));
    k.wait_until(
        Duration::from_secs(60),
        &["-n", NS, "logs", "agent-2"],
        |l| l.contains("agent intercepting"),
    );
    until_client(&k, &name, service, Duration::from_secs(10), loopback);
    k.kubectl(&["-n", NS, "delete", "pod", "agent-2", "--wait=true"]);
    let (took, failed) = until_client(&k, &name, service, Duration::from_secs(10), direct);
    assert!(
        took < Duration::from_millis(500) && failed == 0,
        "after a clean stop the target serves at once: {took:?}, {failed} failed"
    );
    k.kubectl(&["delete", "namespace", NS, "--wait=false"]);
}
