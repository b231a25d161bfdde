//! `read_env` of real processes: one started with a known environment, one gone, and one
//! of another user read without the rights to.

mod common;

use common::Proc;
use mirrord_context::{read_env, ContextError, EnvSelect, Netns};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// `env -i VARS sleep 300`, once it runs `sleep` (before that, /proc shows the test's own
/// environment, inherited by the fork).
async fn process_with_env(vars: &[&str]) -> Proc {
    let child = Command::new("env")
        .arg("-i")
        .args(vars)
        .args(["sleep", "300"])
        .stdin(Stdio::null())
        .spawn()
        .expect("env");
    let proc = Proc(child);
    let cmdline = format!("/proc/{}/cmdline", proc.0.id());
    for _ in 0..500 {
        if std::fs::read(&cmdline).is_ok_and(|c| c.starts_with(b"sleep\0")) {
            return proc;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the process never ran sleep");
}

fn select(include: &[&str], exclude: &[&str]) -> EnvSelect {
    EnvSelect {
        include: include.iter().map(|s| s.to_string()).collect(),
        exclude: exclude.iter().map(|s| s.to_string()).collect(),
    }
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[tokio::test]
async fn a_processes_environment_is_read_and_selected() {
    let proc = process_with_env(&[
        "FOO=bar",
        "SECRET_X=1",
        "PATH=/bin",
        "HOME=/nowhere",
        "DB_URL=postgres://db:5432/x?a=b",
    ])
    .await;
    let pid = proc.0.id();
    let proc_root = Path::new("/proc");
    assert_eq!(
        read_env(proc_root, pid, &EnvSelect::default()).unwrap(),
        pairs(&[
            ("FOO", "bar"),
            ("SECRET_X", "1"),
            ("DB_URL", "postgres://db:5432/x?a=b")
        ])
    );
    assert_eq!(
        read_env(proc_root, pid, &select(&["SECRET_*"], &[])).unwrap(),
        pairs(&[("SECRET_X", "1")])
    );
    assert_eq!(
        read_env(proc_root, pid, &select(&["F?O;PATH"], &[])).unwrap(),
        pairs(&[("FOO", "bar")]),
        "PATH stays excluded even when included"
    );
    assert_eq!(
        read_env(proc_root, pid, &select(&[], &["SECRET_*;DB_*"])).unwrap(),
        pairs(&[("FOO", "bar")])
    );
    let err = read_env(proc_root, pid, &select(&["FOO"], &["SECRET_X"])).unwrap_err();
    assert!(matches!(err, ContextError::IncludeAndExclude), "{err}");
}

#[tokio::test]
async fn a_process_that_exited_is_no_such_process() {
    let mut proc = process_with_env(&["A=1"]).await;
    let pid = proc.0.id();
    proc.0.kill().unwrap();
    proc.0.wait().unwrap();
    let err = read_env(Path::new("/proc"), pid, &EnvSelect::default()).unwrap_err();
    assert!(matches!(err, ContextError::NoSuchProcess { .. }), "{err}");
    assert!(err.to_string().contains(&pid.to_string()), "{err}");
    let err = Netns::of_pid(pid).unwrap_err();
    assert!(matches!(err, ContextError::NoSuchProcess { .. }), "{err}");
}

const PID_VAR: &str = "MIRRORD_CONTEXT_TEST_PID";

/// Runs this test binary's `as_another_user` as `nobody` against a root process.
#[tokio::test]
async fn another_users_process_is_permission_denied() {
    if !common::can_run() {
        return;
    }
    let proc = process_with_env(&["A=1"]).await;
    // A copy anyone may run: the build directory need not be readable by `nobody`.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = dir.path().join("env-test");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&exe)
        .args(["--exact", "as_another_user", "--ignored", "--nocapture"])
        .env(PID_VAR, proc.0.id().to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{}\n{stdout}\n{stderr}",
        out.status
    );
}

#[test]
#[ignore = "run as another user by another_users_process_is_permission_denied"]
fn as_another_user() {
    let pid: u32 = std::env::var(PID_VAR)
        .expect("run by another_users_process_is_permission_denied")
        .parse()
        .unwrap();
    assert!(!nix::unistd::geteuid().is_root());
    let err = read_env(Path::new("/proc"), pid, &EnvSelect::default()).unwrap_err();
    assert!(
        matches!(err, ContextError::PermissionDenied { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("CAP_SYS_PTRACE"), "{err}");
    let err = Netns::of_pid(pid).unwrap_err();
    assert!(
        matches!(err, ContextError::PermissionDenied { .. }),
        "{err}"
    );
}
