//! The README's cluster walkthrough ("From an empty cluster to a stolen request"), run as a
//! new platform team would: every `sh` block of that subsection, top to bottom, in one
//! bash, as written. From no operator and no workload to alice's request answered by her
//! local process through the Service, with nothing but her kubeconfig, then the upgrade
//! and the uninstall. If the README drifts from what works, this fails.
//!
//! Three stand-ins, each for something a test cannot do to a shared machine: `cargo` only
//! checks the README's build line names the three binaries (the tests' build of the same
//! sources is what `target/release` holds here), `sudo` is a no-op (the tests run as root),
//! and `scripts/dev-cluster.sh down` leaves the shared cluster up. Everything else runs as
//! the README says, in a directory of its own (`scripts/` and `deploy/` are the repository's).

use mirrord_e2e::kube::{repo, Cluster};
use mirrord_e2e::{bin, wait_for};
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SECTION: &str = "### From an empty cluster to a stolen request";
/// The README's names: its release, its namespaces, and alice's local port.
const RELEASE: &str = "mirrord-operator";
const NAMESPACES: [&str; 2] = ["mirrord", "shop"];
const LOCAL_PORT: u16 = 8080;

/// The `sh` blocks of the walkthrough, in order.
fn walkthrough() -> Vec<String> {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let start = readme
        .find(SECTION)
        .unwrap_or_else(|| panic!("the README has no `{SECTION}`"));
    let section = &readme[start + SECTION.len()..];
    let section = &section[..section.find("\n### ").unwrap_or(section.len())];
    let blocks: Vec<String> = section
        .split("```sh\n")
        .skip(1)
        .map(|b| b[..b.find("```").expect("a closed block")].to_owned())
        .collect();
    assert!(
        blocks.len() >= 5,
        "the walkthrough has {} blocks",
        blocks.len()
    );
    blocks
}

/// Asserts the walkthrough tells the reader to type `command` (comments after it aside).
fn says(blocks: &[String], command: &str) {
    assert!(
        blocks
            .iter()
            .flat_map(|b| b.lines())
            .any(|l| l.split(" #").next().unwrap().trim() == command),
        "the walkthrough no longer says `{command}`"
    );
}

/// A directory laid out like the repository for the walkthrough: its scripts and chart,
/// `target/release` holding the tests' build, and the stand-ins on `PATH` first.
fn workdir(dir: &Path) {
    let scripts = dir.join("scripts");
    std::fs::create_dir_all(&scripts).unwrap();
    for f in ["images.sh", "helm", "helm.py"] {
        symlink(repo().join("scripts").join(f), scripts.join(f)).unwrap();
    }
    symlink(repo().join("deploy"), dir.join("deploy")).unwrap();
    let release = dir.join("target/release");
    std::fs::create_dir_all(&release).unwrap();
    for b in ["mirrord-operator", "mirrord-agent", "mirrordctl"] {
        symlink(bin(b), release.join(b)).unwrap();
    }
    let real = repo().join("scripts/dev-cluster.sh");
    let shims = dir.join("shims");
    std::fs::create_dir_all(&shims).unwrap();
    let script = |path: &Path, text: String| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    script(
        &scripts.join("dev-cluster.sh"),
        format!(
            "#!/bin/sh\n[ \"$1\" = down ] && {{ echo 'test: the shared cluster stays up'; exit 0; }}\nexec {} \"$@\"\n",
            real.display()
        ),
    );
    script(
        &shims.join("cargo"),
        "#!/bin/sh\n# The README's release build: the tests' own build of the same sources stands in.\n\
         for p in mirrord-operator mirrord-agent mirrordctl; do\n\
           case \" $* \" in *\" -p $p \"*) ;; *) echo \"cargo: the README does not build $p\" >&2; exit 1;; esac\n\
         done\n"
            .into(),
    );
    script(&shims.join("sudo"), "#!/bin/sh\nexec \"$@\"\n".into());
}

/// Whether namespace `ns` exists (in any phase).
fn namespace_exists(k: &Cluster, ns: &str) -> bool {
    k.try_kubectl(&["get", "namespace", ns]).0
}

/// Removes what a failed run left (the walkthrough's last step does it when it succeeds).
struct Cleanup<'a> {
    k: &'a Cluster,
    shell: Option<std::process::Child>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if let Some(shell) = &mut self.shell {
            // The shell leads its own process group: its background jobs go with it.
            let _ = Command::new("kill")
                .args(["-s", "KILL", "--", &format!("-{}", shell.id())])
                .status();
            let _ = shell.wait();
        }
        if std::thread::panicking() {
            for ns in NAMESPACES {
                eprintln!("{}", self.k.diagnose(ns));
            }
        }
        let _ = Command::new(repo().join("scripts/helm"))
            .args(["uninstall", RELEASE, "-n", NAMESPACES[0]])
            .output();
        for ns in NAMESPACES {
            let _ = self
                .k
                .try_kubectl(&["delete", "namespace", ns, "--wait=false"]);
        }
    }
}

#[test]
fn the_cluster_walkthrough_works_as_written() {
    let Some(k) = Cluster::get() else { return };
    let blocks = walkthrough();
    // What the issue asked the README to say, as commands (the run below checks they work).
    says(
        &blocks,
        "cargo build --release -p mirrord-operator -p mirrord-agent -p mirrordctl",
    );
    says(&blocks, "scripts/images.sh operator agent busybox");
    says(
        &blocks,
        "scripts/helm upgrade mirrord-operator deploy/helm/mirrord-operator -n mirrord --reuse-values --set operator.metrics=false --wait",
    );
    says(
        &blocks,
        "mirrordctl exec -t deployment/web --port 80=127.0.0.1:8080 --header '^x-user: alice$' -- \\",
    );
    // An empty cluster, as far as the README's names go.
    let gone = wait_for(Duration::from_secs(120), || {
        NAMESPACES
            .iter()
            .all(|ns| !namespace_exists(&k, ns))
            .then_some(())
    });
    assert!(
        gone.is_some(),
        "namespaces {NAMESPACES:?} exist (another run's, still terminating?): the walkthrough starts from none"
    );
    let (taken, _, _) = k.try_kubectl(&["get", "apiservice", "v1.operator.mirrord.dev"]);
    assert!(
        !taken,
        "an APIService v1.operator.mirrord.dev exists: another release holds the aggregated API"
    );
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", LOCAL_PORT)).is_ok(),
        "127.0.0.1:{LOCAL_PORT} (alice's local process in the README) is taken"
    );

    let dir = tempfile::tempdir().unwrap();
    let w = dir.path();
    workdir(w);
    // The shell and what it leaves running keep none of this process's descriptors (a
    // `flock` around the tests must not be held by alice's local process).
    let mut script = String::from(
        "for fd in /proc/$$/fd/*; do fd=${fd##*/}; [ \"$fd\" -gt 2 ] && eval \"exec $fd>&-\"; done\n\
         set -euo pipefail\n",
    );
    for (i, b) in blocks.iter().enumerate() {
        script.push_str(&format!("echo '::block {i}'\n{b}"));
    }
    std::fs::write(w.join("walkthrough.sh"), &script).unwrap();
    let path = format!(
        "{}:{}",
        w.join("shims").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cleanup = Cleanup { k: &k, shell: None };
    let started = Instant::now();
    let mut cmd = Command::new("setsid");
    cmd.args(["bash", "walkthrough.sh"])
        .current_dir(w)
        .env("PATH", path)
        // A new shell: what the README sets, it sets itself.
        .env_remove("KUBECONFIG")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("MIRRORD_CREDENTIALS")
        .env_remove("MIRRORD_KUBE_CONTEXT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("bash");
    cleanup.shell = Some(child);
    let shell = cleanup.shell.as_mut().unwrap();
    let out = mirrord_e2e::Lines::default().collect_from(shell.stdout.take().unwrap());
    let err = mirrord_e2e::Lines::default().collect_from(shell.stderr.take().unwrap());
    let status = wait_for(Duration::from_secs(600), || shell.try_wait().unwrap());
    out.wait_closed(Duration::from_secs(5));
    err.wait_closed(Duration::from_secs(5));
    let text = out.text();
    let report = format!("--- stdout\n{text}\n--- stderr\n{}", err.text());
    let status =
        status.unwrap_or_else(|| panic!("the walkthrough did not finish in 10 minutes\n{report}"));
    assert!(
        status.success(),
        "the walkthrough failed ({status})\n{report}"
    );
    eprintln!(
        "README cluster walkthrough: {:?} from an empty cluster to uninstalled",
        started.elapsed()
    );

    // What each step printed (the blocks are numbered from 0).
    let block = |i: usize| -> Vec<String> {
        let lines: Vec<String> = out.all();
        let from = lines.iter().position(|l| *l == format!("::block {i}"));
        let to = lines
            .iter()
            .position(|l| *l == format!("::block {}", i + 1));
        let from = from.unwrap_or_else(|| panic!("no output of block {i}\n{report}")) + 1;
        lines[from..to.unwrap_or(lines.len())].to_vec()
    };
    let step2 = block(1);
    assert!(
        step2
            .iter()
            .any(|l| l.starts_with('{') && l.contains("\"fields\"")),
        "the operator's log is not JSON: {step2:?}"
    );
    let step5 = block(4);
    let pods: Vec<&String> = step5.iter().filter(|l| l.starts_with("web-")).collect();
    assert!(
        step5.iter().any(|l| l.starts_with("session ")
            && l.contains("on deployment/web (namespace shop) as alice")),
        "no session in shop (alice's context's namespace): {step5:?}"
    );
    assert!(
        step5.iter().any(|l| l == "alice's build"),
        "alice's request was not stolen: {step5:?}"
    );
    assert!(
        !pods.is_empty(),
        "the others' request did not reach a pod: {step5:?}"
    );
    assert!(
        step5.iter().any(|l| l.contains("You: alice (developer")),
        "mirrordctl status: {step5:?}"
    );
    let header = step5
        .iter()
        .find(|l| l.starts_with("NAME "))
        .map(|l| l.split_whitespace().collect::<Vec<_>>());
    assert_eq!(
        header,
        Some(vec!["NAME", "USER", "TARGET", "PORTS", "CLIENT", "AGE"]),
        "kubectl get sessions: {step5:?}"
    );
    let step6 = block(5);
    assert!(
        step6.iter().any(|l| l == "true"),
        "--reuse-values lost operator.jsonLog: {step6:?}"
    );
    cleanup.shell = None;
}
