//! The operator on a real Kubernetes cluster, installed by its Helm chart
//! (`deploy/helm/mirrord-operator`) exactly as the README's "Run it on Kubernetes" says:
//! hardened pod, Ready through its probes, scraped by a real Prometheus at the pod's
//! address, JSON or plain logs per the values, the mutual-TLS API reachable with
//! credentials from the chart's CA, `helm upgrade` rolling the pod and keeping the CA,
//! `helm uninstall` leaving nothing of ours.

use mirrord_e2e::kube::{repo, Cluster};
use mirrord_e2e::prom::{http_get, Prometheus};
use mirrord_e2e::*;
use serde_json::Value;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const CHART: &str = "deploy/helm/mirrord-operator";
const RELEASE: &str = "mirrord-operator";
const SELECTOR: &str = "app.kubernetes.io/instance=mirrord-operator";

fn chart() -> String {
    repo().join(CHART).display().to_string()
}

/// The operator pod that is not going away, once it is Ready.
fn ready_pod(k: &Cluster, ns: &str, not_uid: Option<&str>) -> Value {
    let mut found = None;
    let ok = wait_for(Duration::from_secs(120), || {
        let list: Value = serde_json::from_str(
            &k.kubectl(&["-n", ns, "get", "pods", "-l", SELECTOR, "-o", "json"]),
        )
        .unwrap();
        let live: Vec<Value> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .cloned()
            .collect();
        let [pod] = live.as_slice() else { return None };
        let ready = pod["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        let new = not_uid.is_none_or(|u| pod["metadata"]["uid"] != u);
        found = Some(pod.clone());
        (ready && new).then_some(())
    });
    assert!(
        ok.is_some(),
        "no Ready operator pod in {ns}; last seen: {found:#?}"
    );
    found.unwrap()
}

fn pod_ip(pod: &Value) -> IpAddr {
    pod["status"]["podIP"].as_str().unwrap().parse().unwrap()
}

/// `mirrordctl status` with `creds` (they name the operator's address).
fn status_with(creds: &Path) -> String {
    let out = Command::new(bin("mirrordctl"))
        .arg("--credentials")
        .arg(creds)
        .arg("status")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "mirrordctl status failed: {text}");
    text
}

fn logs(k: &Cluster, ns: &str, pod: &Value) -> Vec<String> {
    let name = pod["metadata"]["name"].as_str().unwrap();
    let mut lines = Vec::new();
    wait_for(Duration::from_secs(30), || {
        lines = k
            .kubectl(&["-n", ns, "logs", name])
            .lines()
            .map(str::to_owned)
            .collect();
        lines
            .iter()
            .any(|l| l.contains("operator ready"))
            .then_some(())
    })
    .unwrap_or_else(|| panic!("no 'operator ready' in the logs: {lines:#?}"));
    lines
}

fn assert_hardened(pod: &Value) {
    let psc = &pod["spec"]["securityContext"];
    assert_eq!(psc["runAsNonRoot"], true, "{psc}");
    assert_ne!(psc["runAsUser"], 0, "{psc}");
    let c = &pod["spec"]["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{sc}");
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{sc}");
    assert_eq!(sc["privileged"], false, "{sc}");
    assert_eq!(
        sc["capabilities"]["drop"],
        serde_json::json!(["ALL"]),
        "{sc}"
    );
    // Running, not just admitted: the kubelet started it with these settings.
    assert_eq!(pod["status"]["containerStatuses"][0]["ready"], true);
}

fn container_ports(pod: &Value) -> Vec<u64> {
    pod["spec"]["containers"][0]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["containerPort"].as_u64().unwrap())
        .collect()
}

/// Everything of this release left in the cluster (namespaced and cluster-wide).
fn leftovers(k: &Cluster, ns: &str) -> String {
    let kinds = "deployments,replicasets,pods,services,configmaps,secrets,serviceaccounts,roles,rolebindings";
    let mut out = k.kubectl(&["-n", ns, "get", kinds, "-l", SELECTOR, "-o", "name"]);
    out += &k.kubectl(&[
        "get",
        "clusterroles,clusterrolebindings",
        "-l",
        SELECTOR,
        "-o",
        "name",
    ]);
    // Helm's own release records.
    out += &k.kubectl(&["-n", ns, "get", "secrets", "-l", "owner=helm", "-o", "name"]);
    out
}

fn fresh_namespace(k: &Cluster, ns: &str) {
    // A run cut short leaves its release behind: remove it first.
    let _ = Command::new(repo().join("scripts/helm"))
        .args(["uninstall", RELEASE, "-n", ns])
        .output();
    let _ = k.try_kubectl(&["delete", "namespace", ns, "--wait=true", "--timeout=60s"]);
    k.kubectl(&["create", "namespace", ns]);
}

#[test]
fn the_chart_installs_upgrades_and_uninstalls_a_hardened_operator() {
    let Some(k) = Cluster::get() else { return };
    k.load_operator_image();
    let ns = "mirrord-chart-test";
    fresh_namespace(&k, ns);
    let tmp = tempfile::tempdir().unwrap();

    // Install with the spec's switches on.
    let started = Instant::now();
    k.helm(&[
        "install",
        RELEASE,
        &chart(),
        "-n",
        ns,
        "--set",
        "operator.jsonLog=true",
        "--set",
        "operator.metrics=true",
        "--wait",
    ]);
    let pod = ready_pod(&k, ns, None);
    eprintln!("operator Ready {:?} after helm install", started.elapsed());
    assert_hardened(&pod);
    assert!(
        container_ports(&pod).contains(&9000),
        "metrics port declared"
    );
    let ip = pod_ip(&pod);

    // A real Prometheus scrapes the pod's address and sees the spec's names.
    let metrics = http_get(SocketAddr::new(ip, 9000), "/metrics");
    let spec = std::fs::read_to_string(repo().join("docs/monitoring.md")).unwrap();
    let names: Vec<&str> = metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap())
        .collect();
    assert!(names.contains(&"mirrord_build_info"), "{metrics}");
    for n in &names {
        assert!(spec.contains(&format!("`{n}`")), "{n} is not a spec name");
    }
    let prom = Prometheus::start(SocketAddr::new(ip, 9000));
    prom.expect("up", 1.0);
    prom.expect("mirrord_build_info", 1.0);
    prom.expect("mirrord_sessions_active", 0.0);

    // kubectl logs: JSON lines with the fields the deploy/ dashboards read.
    for line in logs(&k, ns, &pod) {
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        for f in ["timestamp", "level", "target"] {
            assert!(v[f].is_string(), "{f} missing: {line}");
        }
        assert!(v["fields"]["message"].is_string(), "{line}");
    }

    // The mutual-TLS API through the chart's Service, with credentials from its CA.
    let service: IpAddr = k
        .kubectl(&[
            "-n",
            ns,
            "get",
            "service",
            RELEASE,
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])
        .parse()
        .unwrap();
    let creds = k.issue_credentials(
        (ns, RELEASE),
        tmp.path(),
        "alice",
        &[],
        &format!("{service}:8443"),
    );
    assert!(status_with(&creds).contains("Sessions:"));

    // helm upgrade changing values rolls the pod; the CA (and so every credential) stays.
    let uid = pod["metadata"]["uid"].as_str().unwrap().to_owned();
    let ca_before = k.kubectl(&[
        "-n",
        ns,
        "get",
        "secret",
        "mirrord-operator-ca",
        "-o",
        "jsonpath={.data}",
    ]);
    // Issued right before the upgrade, within the registry's 1 s save interval: the old
    // pod saves it to the Secret as it stops (it used to be lost with its emptyDir).
    let late = k.issue_credentials(
        (ns, RELEASE),
        tmp.path(),
        "bob",
        &[],
        &format!("{service}:8443"),
    );
    k.helm(&[
        "upgrade",
        RELEASE,
        &chart(),
        "-n",
        ns,
        "--set",
        "operator.jsonLog=false",
        "--set",
        "operator.metrics=false",
        "--wait",
    ]);
    let pod = ready_pod(&k, ns, Some(&uid));
    assert_hardened(&pod);
    let ip = pod_ip(&pod);
    assert!(
        !container_ports(&pod).contains(&9000),
        "no metrics port with metrics off"
    );
    assert!(
        TcpStream::connect_timeout(&SocketAddr::new(ip, 9000), Duration::from_secs(2)).is_err(),
        "nothing listens on 9000 with metrics off"
    );
    for line in logs(&k, ns, &pod) {
        assert!(!line.starts_with('{'), "plain text logs expected: {line}");
    }
    let ca_after = k.kubectl(&[
        "-n",
        ns,
        "get",
        "secret",
        "mirrord-operator-ca",
        "-o",
        "jsonpath={.data}",
    ]);
    assert_eq!(ca_before, ca_after, "the CA survives upgrades");
    assert!(status_with(&creds).contains("Sessions:"));
    assert!(status_with(&late).contains("Sessions:"));

    // helm uninstall leaves nothing of ours.
    k.helm(&["uninstall", RELEASE, "-n", ns, "--wait"]);
    let mut left = String::new();
    let gone = wait_for(Duration::from_secs(60), || {
        left = leftovers(&k, ns);
        left.trim().is_empty().then_some(())
    });
    assert!(gone.is_some(), "left behind after uninstall:\n{left}");
    k.kubectl(&["delete", "namespace", ns, "--wait=false"]);
}

#[test]
fn the_chart_lints_clean_with_each_switch() {
    for set in [
        &[][..],
        &[
            "--set",
            "operator.metrics=true",
            "--set",
            "operator.jsonLog=true",
        ][..],
        &[
            "--set",
            "operator.metrics=true",
            "--set",
            "operator.serviceMonitor.enabled=true",
        ][..],
        &[
            "--set",
            "license.contents=x",
            "--set",
            "license.publicKey=y",
        ][..],
        &[
            "--set",
            "operator.otel.endpoint=http://otel-collector:4317",
            "--set",
            "operator.otel.resourceAttributes=team=payments",
        ][..],
    ] {
        let out = Command::new(repo().join("scripts/helm"))
            .arg("lint")
            .arg(chart())
            .args(set)
            .output()
            .expect("run scripts/helm");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "helm lint {set:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("0 failed"), "{text}");
    }
}
