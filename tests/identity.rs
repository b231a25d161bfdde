//! Identity: only certificates from the operator's CA get in; client_id comes from the key,
//! client_user from the certificate; name and hostname are what the client reports.

use mirrord_e2e::servers::HttpServer;
use mirrord_e2e::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_certificates_get_no_session() {
    let target = HttpServer::start("target").await;
    let listen = free_addr();
    let op = Operator::start(&upstream_target("api", 80, listen, target.addr), "");
    let other = Operator::start(&upstream_target("api", 80, free_addr(), target.addr), "");

    // A credential from another operator's CA, pointed at this operator.
    let foreign = other.issue("mallory");
    std::fs::write(foreign.join("operator-address"), op.api.to_string()).unwrap();
    let out = ctl(&foreign, &["status"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("TLS handshake") || err.contains("closed the connection"),
        "{err}"
    );
    let warned = wait_for(std::time::Duration::from_secs(5), || {
        op.stdout
            .all()
            .into_iter()
            .find(|l| l.contains("TLS handshake failed"))
    });
    assert!(
        warned.is_some(),
        "operator did not log the refused handshake"
    );

    // (No certificate at all: see bad_input::no_client_certificate_no_session.)
    assert!(status(&op.issue_admin("admin"))["sessions"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_id_is_stable_per_credential_and_user_comes_from_the_certificate() {
    let target = HttpServer::start("target").await;
    let listen = free_addr();
    let op = Operator::start(&upstream_target("api", 80, listen, target.addr), "");
    let alice = op.issue("alice");
    let alice2 = op.issue("alice");
    let port = format!("80={}", idle_local());

    let s1 = Session::start(&alice, &["mirror", "--target", "api", "--port", &port]).unwrap();
    let s2 = Session::start(&alice, &["mirror", "--target", "api", "--port", &port]).unwrap();
    let s3 = Session::start(&alice2, &["mirror", "--target", "api", "--port", &port]).unwrap();
    let st = status(&alice);
    let sessions = st["sessions"].as_array().unwrap();
    let by_id = |id: &str| {
        sessions
            .iter()
            .find(|s| s["session_id"] == id)
            .unwrap()
            .clone()
    };
    let (a, b, c) = (by_id(&s1.id), by_id(&s2.id), by_id(&s3.id));
    assert_eq!(
        a["client_id"], b["client_id"],
        "same credential, same client_id"
    );
    assert_ne!(a["client_id"], c["client_id"], "new key, new client_id");
    assert_eq!(a["client_id"].as_str().unwrap().len(), 16);
    for s in [&a, &b, &c] {
        assert_eq!(s["client_user"], "alice");
        assert!(!s["client_hostname"].as_str().unwrap().is_empty());
    }
    let started = op.wait_event("Session Started", 3);
    assert_eq!(started[0]["fields"]["client_id"], a["client_id"]);
    assert_eq!(
        started[0]["fields"]["client_cli_version"],
        env!("CARGO_PKG_VERSION")
    );
}

fn certs(args: &[&str], state: &std::path::Path, out: &std::path::Path) -> std::process::Output {
    std::process::Command::new(bin("mirrord-operator"))
        .arg("certs")
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

fn mode(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Issue 9, item 7: `certs issue` never makes or replaces a CA behind the user's back
/// (that would silently invalidate every credential issued), and secrets are private.
#[test]
fn certs_never_make_or_replace_a_ca_silently_and_keys_stay_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");

    // No CA: refused with the way out, and nothing created.
    let out = certs(&["issue", "--user", "alice"], &state, &dir.path().join("a"));
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("certs init"), "{err}");
    assert!(!state.join("ca.key").exists() && !dir.path().join("a").exists());

    // An explicit init; then a credential over a pre-existing world-readable key.
    let init = std::process::Command::new(bin("mirrord-operator"))
        .args(["certs", "init", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(init.status.success(), "{init:?}");
    let b = dir.path().join("b");
    std::fs::create_dir(&b).unwrap();
    std::fs::set_permissions(&b, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(b.join("client.key"), "old").unwrap();
    std::fs::set_permissions(b.join("client.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = certs(&["issue", "--user", "bob"], &state, &b);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(mode(&b.join("client.key")), 0o600);
    assert_eq!(mode(&b), 0o700);
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("ca.key")), 0o600);
    let ca_key = std::fs::read(state.join("ca.key")).unwrap();

    // A half-present CA is an error, never replaced.
    let crt = std::fs::read(state.join("ca.crt")).unwrap();
    std::fs::write(state.join("ca.crt"), "").unwrap();
    let c = dir.path().join("c");
    let out = certs(&["issue", "--user", "carol"], &state, &c);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("holds no certificate"),
        "{out:?}"
    );
    assert!(
        !c.join("ca.crt").exists(),
        "an empty CA certificate was handed out"
    );
    std::fs::remove_file(state.join("ca.crt")).unwrap();
    let out = certs(&["issue", "--user", "carol", "--init-ca"], &state, &c);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ca.crt is missing"),
        "{out:?}"
    );
    assert_eq!(
        std::fs::read(state.join("ca.key")).unwrap(),
        ca_key,
        "ca.key was replaced"
    );
    std::fs::write(state.join("ca.crt"), crt).unwrap();
    assert!(certs(&["issue", "--user", "carol"], &state, &c)
        .status
        .success());
}
