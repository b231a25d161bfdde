//! Policies as cluster resources (issue 30): `MirrordPolicy` and `MirrordClusterPolicy`
//! applied with kubectl, watched by the operator, selecting targets by their workload's
//! labels and callers by their Kubernetes groups; one that cannot be used says so in its
//! status and refuses what it would bind (fail closed); deleting one lifts it; a policy can
//! require a `MirrordProfile`, whose rules bind the sessions that choose it; outgoing
//! traffic is blocked, or allowed to listed destinations only.

use mirrord_e2e::kube::{repo, Cluster};
use mirrord_e2e::{wait_for, Session};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// `payments` (its Deployment labelled `app=payments`) and `web` (no such label).
const WORKLOADS: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: payments, namespace: NS, labels: {app: payments}}
spec:
  replicas: 1
  selector: {matchLabels: {run: payments}}
  template:
    metadata: {labels: {run: payments}}
    spec:
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: 1
      containers:
        - name: httpd
          image: mirrord.dev/busybox:1
          imagePullPolicy: Never
          command: ["/bin/sh", "-c", "mkdir -p /tmp/www && echo pod > /tmp/www/index.html && exec httpd -f -p 80 -h /tmp/www"]
          readinessProbe: {tcpSocket: {port: 80}, periodSeconds: 1}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: NS}
spec:
  replicas: 1
  selector: {matchLabels: {run: web}}
  template:
    metadata: {labels: {run: web}}
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

struct Env {
    k: Cluster,
    ns: String,
    release: String,
    dir: tempfile::TempDir,
    home: PathBuf,
}

impl Drop for Env {
    fn drop(&mut self) {
        for (kind, name) in [
            ("mirrordclusterpolicy", "interns"),
            ("mirrordprofile", "mirror-only"),
        ] {
            let _ = self.k.try_kubectl(&[
                "delete",
                kind,
                &format!("{name}-{}", self.ns),
                "--ignore-not-found",
            ]);
        }
        self.k
            .remove_release(&self.release, &self.ns, true, &[&self.ns]);
    }
}

/// A local process that is never reached (the sessions here are judged, not used).
fn local() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::mem::forget(l);
    addr
}

impl Env {
    fn start() -> Option<Self> {
        let k = Cluster::get()?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let ns = format!("policies-{:04x}", nanos & 0xffff);
        k.load_operator_image();
        k.load_agent_image();
        k.kubectl(&["create", "namespace", &ns]);
        // Helm creates CRDs but never updates them: a cluster kept from an older chart
        // gets the current schemas (as an upgrade's notes tell a user to).
        let crds = repo().join("deploy/helm/mirrord-operator/crds");
        k.kubectl(&["apply", "-f", &crds.display().to_string()]);
        k.apply(&WORKLOADS.replace("NS", &ns));
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        let env = Self {
            release: format!("mirrord-operator-{ns}"),
            k,
            ns,
            dir,
            home,
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
            "--wait",
        ]);
        let available = wait_for(Duration::from_secs(60), || {
            let (_, out, _) = env.k.try_kubectl(&[
                "get",
                "apiservice",
                "v1.operator.mirrord.dev",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Available\")].status}",
            ]);
            (out.trim() == "True").then_some(())
        });
        assert!(available.is_some(), "{}", env.k.diagnose(&env.ns));
        for d in ["payments", "web"] {
            env.k.kubectl(&[
                "-n",
                &env.ns,
                "rollout",
                "status",
                &format!("deployment/{d}"),
                "--timeout=120s",
            ]);
        }
        Some(env)
    }

    /// A kubeconfig: a token user, or (`groups` given) a certificate user in those groups;
    /// bound to the chart's user role in the test's namespace.
    fn user(&self, name: &str, groups: &[&str]) -> PathBuf {
        let path = if groups.is_empty() {
            self.k
                .user_kubeconfig(self.dir.path(), name, Some(&self.k.token(name)), &[])
        } else {
            self.k.user_kubeconfig(self.dir.path(), name, None, groups)
        };
        self.k.kubectl(&[
            "-n",
            &self.ns,
            "create",
            "rolebinding",
            &format!("{name}-user"),
            &format!("--clusterrole={}-user", self.release),
            &format!("--user={name}"),
        ]);
        path
    }

    /// An unfiltered steal of `target`'s port 80 (and `extra` flags), as `kubeconfig`.
    fn steal(
        &self,
        kubeconfig: &std::path::Path,
        target: &str,
        extra: &[&str],
    ) -> Result<Session, String> {
        self.open("steal", kubeconfig, target, extra)
    }

    /// A `mode` (`steal`, `mirror`) session on `target`'s port 80.
    fn open(
        &self,
        mode: &str,
        kubeconfig: &std::path::Path,
        target: &str,
        extra: &[&str],
    ) -> Result<Session, String> {
        let port = format!("80={}", local());
        let target = format!("deployment/{target}");
        let mut args = vec![
            mode,
            "--target",
            &target,
            "--namespace",
            &self.ns,
            "--port",
            &port,
        ];
        args.extend_from_slice(extra);
        Session::start_kube(kubeconfig, &self.home, &args)
    }

    /// `mirrordctl exec` of `sh -c script` on `deployment/target`, with outgoing traffic
    /// (mirrord's defaults) and no files.
    fn exec(
        &self,
        kubeconfig: &std::path::Path,
        target: &str,
        script: &str,
    ) -> std::process::Output {
        let target = format!("deployment/{target}");
        mirrord_e2e::kube_ctl_command(kubeconfig, &self.home)
            .args([
                "exec",
                "-t",
                &target,
                "-n",
                &self.ns,
                "--fs-mode",
                "local",
                "--",
                "sh",
                "-c",
                script,
            ])
            .output()
            .expect("run mirrordctl")
    }

    fn pod_ip(&self, run: &str) -> String {
        self.k
            .kubectl(&[
                "get",
                "pods",
                "-n",
                &self.ns,
                "-l",
                &format!("run={run}"),
                "-o",
                "jsonpath={.items[0].status.podIP}",
            ])
            .trim()
            .to_owned()
    }

    fn ready(&self, kind: &str, name: &str, ns: Option<&str>) -> (String, String) {
        let mut args = vec!["get", kind, name, "-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}|{.status.conditions[?(@.type==\"Ready\")].message}"];
        if let Some(ns) = ns {
            args.extend(["-n", ns]);
        }
        let (_, out, _) = self.k.try_kubectl(&args);
        let (status, message) = out.split_once('|').unwrap_or(("", ""));
        (status.to_owned(), message.to_owned())
    }

    /// Waits until policy `name` reports `Ready=want`: how long it took.
    fn wait_ready(&self, kind: &str, name: &str, ns: Option<&str>, want: &str) -> Duration {
        let t = Instant::now();
        let got = wait_for(Duration::from_secs(30), || {
            (self.ready(kind, name, ns).0 == want).then_some(())
        });
        assert!(
            got.is_some(),
            "{kind} {name} never Ready={want}: {:?}",
            self.ready(kind, name, ns)
        );
        t.elapsed()
    }
}

#[test]
fn policy_resources_are_watched_and_select_by_label_and_group() {
    let Some(env) = Env::start() else { return };
    let _ = mirrord_e2e::bin("mirrordctl");
    let ns = env.ns.clone();
    let alice = env.user("alice", &[]);
    let ivan = env.user("ivan", &["interns"]);

    // Unfiltered steals of what is labelled app=payments are refused; web is not bound.
    env.k.apply(&format!(
        "apiVersion: policies.mirrord.dev/v1\nkind: MirrordPolicy\nmetadata: {{name: payments-filtered, namespace: {ns}}}\nspec:\n  selector: {{matchLabels: {{app: payments}}}}\n  block: [steal-without-filter]\n"
    ));
    let took = env.wait_ready("mirrordpolicy", "payments-filtered", Some(&ns), "True");
    println!(
        "MirrordPolicy in force {:.1} s after kubectl apply",
        took.as_secs_f64()
    );
    let err = env.steal(&alice, "payments", &[]).err().expect("refused");
    assert!(
        err.contains(&format!(
            "blocked by policy `MirrordPolicy {ns}/payments-filtered`"
        )) && err.contains("unfiltered steal of port 80 of deployment/payments"),
        "{err}"
    );
    drop(
        env.steal(&alice, "payments", &["--header", "^x-user: alice$"])
            .expect("a filtered steal is allowed"),
    );
    drop(
        env.steal(&alice, "web", &[])
            .expect("web is not labelled app=payments"),
    );
    // A label put on a workload that already has a session binds the next session: the
    // target is kept (its pods followed) while the mirror runs, its labels are read anew.
    let mirror = env
        .open("mirror", &alice, "web", &[])
        .expect("a mirror of web");
    env.k
        .kubectl(&["-n", &ns, "label", "deployment/web", "app=payments"]);
    let err = env.steal(&alice, "web", &[]).err().expect("refused");
    assert!(
        err.contains(&format!(
            "blocked by policy `MirrordPolicy {ns}/payments-filtered`"
        )),
        "a label put on web while it had a session: {err}"
    );
    env.k
        .kubectl(&["-n", &ns, "label", "deployment/web", "app-"]);
    drop(
        env.steal(&alice, "web", &[])
            .expect("the label is gone again"),
    );
    drop(mirror);
    let table = env.k.kubectl(&["get", "mpol", "-n", &ns]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("payments-filtered") && l.contains("True")),
        "kubectl get shows it Ready: {table}"
    );

    // A policy with a bad regex is Ready=False with the reason, and refuses what it binds.
    env.k.apply(&format!(
        "apiVersion: policies.mirrord.dev/v1\nkind: MirrordPolicy\nmetadata: {{name: broken, namespace: {ns}}}\nspec:\n  targetPath: deployment/web\n  block: [mirror]\n  requireHeaderFilter: \"(unclosed\"\n"
    ));
    env.wait_ready("mirrordpolicy", "broken", Some(&ns), "False");
    let (_, message) = env.ready("mirrordpolicy", "broken", Some(&ns));
    assert!(message.contains("(unclosed"), "{message}");
    let wide = env
        .k
        .kubectl(&["get", "mirrordpolicies", "-n", &ns, "-o", "wide"]);
    assert!(
        wide.lines().any(|l| l.starts_with("broken")
            && l.contains("False")
            && l.contains("not a valid regex")),
        "{wide}"
    );
    let err = env
        .steal(&alice, "web", &["--header", "^x-user: alice$"])
        .err()
        .expect("fail closed");
    assert!(
        err.contains(&format!("`MirrordPolicy {ns}/broken`"))
            && err.contains("cannot be used as written"),
        "{err}"
    );
    // Deleted, it lifts: measured.
    env.k
        .kubectl(&["delete", "mirrordpolicy", "broken", "-n", &ns]);
    let t = Instant::now();
    let lifted = wait_for(Duration::from_secs(30), || {
        env.steal(&alice, "web", &[]).ok()
    });
    assert!(lifted.is_some(), "the deleted policy still refuses");
    println!(
        "kubectl delete -> lifted within {:.1} s",
        t.elapsed().as_secs_f64()
    );
    drop(lifted);

    // A cluster policy for group interns: ivan (in it) may not steal; alice (developers) may.
    let cluster = format!("interns-{ns}");
    env.k.apply(&format!(
        "apiVersion: policies.mirrord.dev/v1\nkind: MirrordClusterPolicy\nmetadata: {{name: {cluster}}}\nspec:\n  namespace: {ns}\n  groups: [interns]\n  block: [steal]\n"
    ));
    env.wait_ready("mirrordclusterpolicy", &cluster, None, "True");
    let err = env
        .steal(&ivan, "web", &[])
        .err()
        .expect("interns may not steal");
    assert!(
        err.contains(&format!(
            "blocked by policy `MirrordClusterPolicy {cluster}`"
        )),
        "{err}"
    );
    drop(
        env.steal(&alice, "web", &[])
            .expect("alice is not an intern"),
    );

    // A policy requires profile mirror-only on web: without it a session is refused; with
    // it a steal is refused naming the profile, a mirror is allowed; an unknown profile is
    // refused naming the known ones; status lists the policy for alice.
    let profile = format!("mirror-only-{ns}");
    env.k.apply(&format!(
        "apiVersion: policies.mirrord.dev/v1\nkind: MirrordProfile\nmetadata: {{name: {profile}}}\nspec:\n  block: [steal]\n---\napiVersion: policies.mirrord.dev/v1\nkind: MirrordPolicy\nmetadata: {{name: web-needs-profile, namespace: {ns}}}\nspec:\n  targetPath: deployment/web\n  requireProfile: [{profile}]\n"
    ));
    env.wait_ready("mirrordprofile", &profile, None, "True");
    env.wait_ready("mirrordpolicy", "web-needs-profile", Some(&ns), "True");
    let err = env.steal(&alice, "web", &[]).err().expect("no profile");
    assert!(
        err.contains(&format!("blocked by policy `MirrordPolicy {ns}/web-needs-profile`: sessions on deployment/web (namespace {ns}) work under profile `{profile}`")),
        "{err}"
    );
    let err = env
        .steal(&alice, "web", &["--profile", &profile])
        .err()
        .expect("the profile allows no steal");
    assert!(
        err.contains(&format!(
            "blocked by policy `MirrordProfile {profile}`: stealing from deployment/web"
        )),
        "{err}"
    );
    let mirror = env
        .open("mirror", &alice, "web", &["--profile", &profile])
        .expect("the profile allows mirroring");
    let status = mirrord_e2e::kube_ctl_command(&alice, &env.home)
        .args(["status", "-n", &ns])
        .output()
        .unwrap();
    let status = format!(
        "{}{}",
        String::from_utf8_lossy(&status.stdout),
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(
        status.contains(&format!(
            "MirrordPolicy {ns}/web-needs-profile: sessions work under profile {profile}"
        )),
        "{status}"
    );
    drop(mirror);
    let err = env
        .open("mirror", &alice, "web", &["--profile", "nope"])
        .err()
        .expect("unknown profile");
    assert!(
        err.contains("there is no profile `nope`; profiles: ") && err.contains(&profile),
        "{err}"
    );
    env.k
        .kubectl(&["delete", "mirrordpolicy", "web-needs-profile", "-n", &ns]);

    // Outgoing traffic: blocked on payments; on web, allowed to payments' pod only.
    let payments_ip = env.pod_ip("payments");
    let web_ip = env.pod_ip("web");
    env.k.apply(&format!(
        "apiVersion: policies.mirrord.dev/v1\nkind: MirrordPolicy\nmetadata: {{name: payments-no-egress, namespace: {ns}}}\nspec:\n  targetPath: deployment/payments\n  block: [outgoing]\n---\napiVersion: policies.mirrord.dev/v1\nkind: MirrordPolicy\nmetadata: {{name: web-egress, namespace: {ns}}}\nspec:\n  targetPath: deployment/web\n  outgoingAllow: [\"{payments_ip}:80\"]\n"
    ));
    env.wait_ready("mirrordpolicy", "payments-no-egress", Some(&ns), "True");
    env.wait_ready("mirrordpolicy", "web-egress", Some(&ns), "True");
    let out = env.exec(&alice, "payments", "echo ran");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains(&format!(
            "blocked by policy `MirrordPolicy {ns}/payments-no-egress`: outgoing connections from deployment/payments"
        )) && !String::from_utf8_lossy(&out.stdout).contains("ran"),
        "{err}"
    );
    let out = env.exec(
        &alice,
        "web",
        &format!(
            "curl -sS --max-time 20 http://{payments_ip}/; curl -sS --max-time 20 http://{web_ip}/; echo \"curl exit $?\""
        ),
    );
    let (stdout, err) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(stdout.ends_with("\npod\ncurl exit 7\n"), "{stdout}\n{err}");
    assert!(
        err.contains(&format!(
            "blocked by policy `MirrordPolicy {ns}/web-egress`: TCP {web_ip}:80 is not in its outgoing allow-list ({payments_ip}:80)"
        )),
        "{err}"
    );
}
