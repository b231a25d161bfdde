//! Who may do what on one machine: roles carried by the certificate, expiry, revocation,
//! policies naming users and roles, and `require_header_filter` enforced by what a filter
//! does. Every rule is driven through the real binaries.

use mirrord_e2e::servers::{get, try_get, HttpServer};
use mirrord_e2e::*;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// Session ids in a status report, as `mirrordctl` prints them.
fn ids(st: &Value) -> Vec<String> {
    st["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| match &s["session_id"] {
            Value::Number(n) => format!("{:016X}", n.as_u64().unwrap()),
            other => other.as_str().unwrap().to_owned(),
        })
        .collect()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mirror(creds: &Path, port: &str) -> Session {
    Session::start(creds, &["mirror", "--target", "api", "--port", port]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn developers_see_and_kill_only_their_own_sessions() {
    let f = ApiFixture::start("").await;
    let (alice, bob, root) = (
        f.op.issue("alice"),
        f.op.issue("bob"),
        f.op.issue_admin("root"),
    );
    let port = format!("80={}", f.dev.addr);
    let a = mirror(&alice, &port);
    let mut b = mirror(&bob, &port);

    // Status: a developer sees their own session and who they are; an admin sees all.
    let st = status(&alice);
    assert_eq!(ids(&st), vec![a.id.clone()], "{st}");
    assert_eq!(st["caller"]["client_user"], "alice");
    assert_eq!(st["caller"]["role"], "developer");
    let text = stdout(&ctl(&alice, &["status"]));
    assert!(text.contains("You: alice (developer, client id "), "{text}");
    let all = status(&root);
    assert_eq!(ids(&all).len(), 2, "{all}");
    assert!(stdout(&ctl(&root, &["status"])).contains("You: root (admin, client id "));

    // alice cannot kill bob's session: the exact error, an audit line, no effect.
    let out = ctl(&alice, &["sessions", "kill", &b.id]);
    assert!(!out.status.success());
    let expected = format!("kill session {}: not yours and you are not an admin", b.id);
    assert!(stderr(&out).contains(&expected), "{}", stderr(&out));
    let refused = f.op.wait_event("Request Forbidden", 1);
    assert_eq!(refused[0]["fields"]["client_user"], "alice");
    assert_eq!(refused[0]["fields"]["client_role"], "developer");
    assert_eq!(refused[0]["fields"]["error"], expected.as_str());
    // Naming her own session beside it changes nothing either.
    let out = ctl(&alice, &["sessions", "kill", &a.id, &b.id]);
    assert!(!out.status.success());
    assert_eq!(ids(&status(&root)).len(), 2);

    // --all means all of hers.
    let out = ctl(&alice, &["sessions", "kill", "--all"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!("killed session {}", a.id)));
    assert_eq!(ids(&status(&root)), vec![b.id.clone()]);

    // An admin kills bob's; bob's CLI says who, and the audit line names both.
    let out = ctl(&root, &["sessions", "kill", &b.id]);
    assert!(out.status.success(), "{}", stderr(&out));
    b.wait_exit(Duration::from_secs(10))
        .expect("bob's CLI exits");
    assert!(
        b.stderr.text().contains("killed by root"),
        "{}",
        b.stderr.text()
    );
    let killed = f.op.wait_event("Session Killed", 2);
    let by_root = killed
        .iter()
        .find(|k| k["fields"]["by_user"] == "root")
        .expect("Session Killed by root");
    assert_eq!(by_root["fields"]["client_user"], "bob");
    assert_eq!(by_root["fields"]["session_id"], b.id.as_str());
    assert_eq!(by_root["fields"]["by_role"], "admin");
    assert_eq!(by_root["target"], "mirrord_telemetry::event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overriding_another_users_port_and_scaling_down_need_an_admin() {
    let target_dev = HttpServer::start("alice").await;
    let bob_dev = HttpServer::start("bob").await;
    let listen = free_addr();
    let op = Operator::start(&command_target("api", 80, listen, 1), "");
    let (alice, alice2, bob, root) = (
        op.issue("alice"),
        op.issue("alice"),
        op.issue("bob"),
        op.issue_admin("root"),
    );
    let pa = format!("80={}", target_dev.addr);
    let pb = format!("80={}", bob_dev.addr);
    let override_args = |p: &str| {
        vec![
            "steal".to_owned(),
            "--target".into(),
            "api".into(),
            "--port".into(),
            p.to_owned(),
            "--on-concurrent-steal".into(),
            "override".into(),
        ]
    };
    let start = |creds: &Path, args: &[String]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Session::start(creds, &args)
    };
    wait_for(Duration::from_secs(20), || {
        let rt = tokio::runtime::Handle::current();
        tokio::task::block_in_place(|| rt.block_on(try_get(listen, "/ready")))
    })
    .expect("the target's replica answers");
    let holder = Session::start(&alice, &["steal", "--target", "api", "--port", &pa]).unwrap();

    let err = start(&bob, &override_args(&pb)).err().unwrap();
    assert!(
        err.contains(&format!(
            "port 80 is held by session {} (alice): taking over another user's port needs an admin, and you are a developer"
        , holder.id)),
        "{err}"
    );
    assert_eq!(get(listen, "/still", &[]).await.1, "alice GET /still");
    let refused = op.wait_event("Session Refused", 1);
    assert_eq!(refused[0]["fields"]["reason"], "forbidden");
    assert_eq!(refused[0]["fields"]["client_user"], "bob");

    // alice may take over her own port (from another of her credentials).
    let mine = start(&alice2, &override_args(&pa)).unwrap();
    op.wait_event("Port Taken Over", 1);
    // An admin takes it from her; she is told, and the audit line says who took what.
    let _root = start(&root, &override_args(&pb)).unwrap();
    assert_eq!(get(listen, "/root", &[]).await.1, "bob GET /root");
    mine.stderr
        .wait(Duration::from_secs(10), |l| l.contains("no longer stolen"))
        .expect("alice told she lost the port");
    let taken = op.wait_event("Port Taken Over", 2);
    assert_eq!(taken[1]["fields"]["client_user"], "alice");
    assert_eq!(taken[1]["fields"]["session_id"], mine.id.as_str());
    assert_eq!(taken[1]["fields"]["by_user"], "root");
    assert_eq!(taken[1]["fields"]["by_role"], "admin");
    assert_eq!(taken[1]["fields"]["port"], 80);

    // --scale-down: a developer is refused before any copy is made; an admin is not.
    let scale = [
        "mirror",
        "--target",
        "api",
        "--port",
        &pb,
        "--copy-target",
        "--scale-down",
    ];
    let err = Session::start(&bob, &scale).err().unwrap();
    assert!(
        err.contains("--scale-down stops deployment/api (namespace default) for everyone: only an admin may do it, and you are a developer"),
        "{err}"
    );
    assert!(op.events("Target Copied").is_empty());
    let _copy = Session::start(&root, &scale).unwrap();
    let copied = op.wait_event("Target Copied", 1);
    assert_eq!(copied[0]["fields"]["client_user"], "root");
    assert_eq!(copied[0]["fields"]["scale_down"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_credential_is_refused_its_sessions_end_and_it_stays_revoked() {
    let target = HttpServer::start("target").await;
    let dev = HttpServer::start("dev").await;
    let keep = tempfile::tempdir().unwrap();
    let state = keep.path().join("state");
    let start = |state: &Path| {
        Operator::start_with(OperatorOptions {
            targets: upstream_target("api", 80, free_addr(), target.addr),
            state_dir: Some(state.to_owned()),
            ..Default::default()
        })
    };
    let op = start(&state);
    let alice = op.issue_in("alice", keep.path());
    let bob = op.issue_in("bob", keep.path());
    let port = format!("80={}", dev.addr);
    let mut a = mirror(&alice, &port);
    let b = mirror(&bob, &port);

    let out = op.certs(&["revoke", "alice", "--by", "carol"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("revoked the credential of alice (developer, client id "));

    // Her live session ends with the reason, within about a second.
    a.wait_exit(Duration::from_secs(10))
        .expect("alice's CLI exits when her credential is revoked");
    assert!(
        a.stderr.text().contains("credential revoked by carol"),
        "{}",
        a.stderr.text()
    );
    let revoked = op.wait_event("Credential Revoked", 1);
    let fields = &revoked[0]["fields"];
    assert_eq!(fields["client_user"], "alice");
    assert_eq!(fields["revoked_by"], "carol");
    assert_eq!(fields["sessions_ended"], 1);
    assert_eq!(revoked[0]["level"], "INFO");
    let ended = op.wait_event("Session Ended", 1);
    assert_eq!(ended[0]["fields"]["reason"], "credential revoked by carol");

    // Her handshakes fail now; bob's session and requests carry on.
    let out = ctl(&alice, &["status"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("revoked"), "{}", stderr(&out));
    op.stdout
        .wait(Duration::from_secs(5), |l| {
            l.contains("TLS handshake failed") && l.contains("Revoked")
        })
        .expect("the operator logs the refused handshake");
    assert_eq!(ids(&status(&bob)), vec![b.id.clone()]);

    // A restart on the same state directory keeps her out.
    drop(b);
    drop(op);
    let op = start(&state);
    op.adopt(&alice);
    op.adopt(&bob);
    let out = ctl(&alice, &["status"]);
    assert!(
        !out.status.success(),
        "a revoked credential got in after a restart"
    );
    assert!(stderr(&out).contains("revoked"), "{}", stderr(&out));
    assert!(ctl(&bob, &["status"]).status.success());

    // Revoking what is not there, or again, says so.
    let out = op.certs(&["revoke", "alice"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("every credential matching `alice` is already revoked"));
    let out = op.certs(&["revoke", "nobody"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no credential to revoke matches `nobody`"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_credentials_are_refused_and_the_cli_warns_before() {
    let f = ApiFixture::start("").await;
    let soon = f.op.issue_with("alice", &["--valid-for", "3s"]);
    let out = ctl(&soon, &["status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("warning: the certificate in")
            && stderr(&out).contains("expires in less than an hour"),
        "{}",
        stderr(&out)
    );
    let fine = f.op.issue("bob");
    assert!(!stderr(&ctl(&fine, &["status"])).contains("warning"));
    let month = f.op.issue_with("carol", &["--valid-for", "10d"]);
    assert!(stderr(&ctl(&month, &["status"])).contains("expires in 9 days"));

    std::thread::sleep(Duration::from_secs(4));
    let out = ctl(&soon, &["status"]);
    assert!(!out.status.success(), "an expired certificate got in");
    assert!(stderr(&out).contains("expired"), "{}", stderr(&out));
    f.op.stdout
        .wait(Duration::from_secs(5), |l| {
            l.contains("TLS handshake failed") && l.contains("certificate expired")
        })
        .unwrap_or_else(|| {
            panic!(
                "the operator logs the refused handshake: {}",
                f.op.stdout.text()
            )
        });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certs_list_shows_every_credential_and_bad_input_is_named() {
    let f = ApiFixture::start("").await;
    f.op.issue("alice");
    f.op.issue_with("root", &["--role", "admin", "--valid-for", "30d"]);
    assert!(f
        .op
        .certs(&["revoke", "alice", "--by", "carol"])
        .status
        .success());
    let out = f.op.certs(&["list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["USER", "ROLE", "CLIENT_ID", "ISSUED", "EXPIRES", "REVOKED"],
        "{text}"
    );
    let row = |user: &str| {
        lines
            .iter()
            .find(|l| l.starts_with(&format!("{user} ")))
            .unwrap_or_else(|| panic!("no row for {user}: {text}"))
            .to_string()
    };
    let alice = row("alice");
    assert!(alice.contains(" developer "), "{alice}");
    assert!(alice.trim_end().ends_with("by carol"), "{alice}");
    let root = row("root");
    assert!(root.contains(" admin "), "{root}");
    assert!(root.trim_end().ends_with('-'), "{root}");
    let today = chrono::Utc::now();
    let in30 = (today + chrono::Duration::days(30))
        .format("%Y-%m-%d")
        .to_string();
    assert!(root.contains(&in30), "{root}");
    let in90 = (today + chrono::Duration::days(90))
        .format("%Y-%m-%d")
        .to_string();
    assert!(
        alice.contains(&in90),
        "default validity is 90 days: {alice}"
    );
    // The client id shown is the one the operator authenticates.
    let admin = f.op.issue_admin("admin");
    let st = status(&admin);
    let id = st["caller"]["client_id"].as_str().unwrap().to_owned();
    let list = stdout(&f.op.certs(&["list"]));
    let admin_row = list.lines().find(|l| l.starts_with("admin ")).unwrap();
    assert!(admin_row.contains(&format!(" {id} ")), "{list}");

    for (args, expect) in [
        (
            vec![
                "issue",
                "--user",
                "x",
                "--out",
                "/tmp/never",
                "--role",
                "root",
            ],
            "unknown role `root`",
        ),
        (
            vec![
                "issue",
                "--user",
                "x",
                "--out",
                "/tmp/never",
                "--valid-for",
                "soon",
            ],
            "--valid-for",
        ),
    ] {
        let out = f.op.certs(&args);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr(&out).contains(expect), "{args:?}: {}", stderr(&out));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_can_apply_to_roles_and_users() {
    let target = HttpServer::start("target").await;
    let dev = HttpServer::start("dev").await;
    let listen = free_addr();
    let op = Operator::start_with(OperatorOptions {
        targets: upstream_target("api", 80, listen, target.addr),
        extra_config: r#"
[[policies]]
name = "developers-filtered"
target = "deployment/api"
roles = ["developer"]
block = ["unfiltered_steal"]

[[policies]]
name = "no-mirror-for-mallory"
users = ["mallory"]
block = ["mirror"]
"#
        .into(),
        ..Default::default()
    });
    let port = format!("80={}", dev.addr);
    let steal = ["steal", "--target", "api", "--port", &port];
    let err = Session::start(&op.issue("alice"), &steal).err().unwrap();
    assert!(
        err.contains("blocked by policy `developers-filtered`: unfiltered steal of port 80"),
        "{err}"
    );
    let err = Session::start(
        &op.issue("mallory"),
        &["mirror", "--target", "api", "--port", &port],
    )
    .err()
    .unwrap();
    assert!(
        err.contains("blocked by policy `no-mirror-for-mallory`"),
        "{err}"
    );
    let _bob_mirrors = mirror(&op.issue("bob"), &port);
    let _root = Session::start(&op.issue_admin("root"), &steal).unwrap();
    assert_eq!(get(listen, "/", &[]).await.1, "dev GET /");
}

/// `require_header_filter = "^x-user: "` means every stolen request carries a matching
/// header, whatever the filter's text: the policy's regex is added to the filter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_header_filter_holds_for_what_is_stolen() {
    let target = HttpServer::start("target").await;
    let dev = HttpServer::start("dev").await;
    let listen = free_addr();
    let op = Operator::start_with(OperatorOptions {
        targets: upstream_target("api", 80, listen, target.addr),
        extra_config: r#"
[[policies]]
name = "api-needs-user"
target = "deployment/api"
require_header_filter = "^x-user: "
"#
        .into(),
        ..Default::default()
    });
    let bob = op.issue("bob");
    let port = format!("80={}", dev.addr);
    let steal = |extra: &[&str]| {
        let mut args = vec!["steal", "--target", "api", "--port", &port];
        args.extend_from_slice(extra);
        Session::start(&bob, &args)
    };
    let at = |who: &str, path: &str| format!("{who} GET {path}");

    // A header regex that matches any request by its text.
    for filter in ["x-user: |.", r"x-user: \|."] {
        let mut s = steal(&["--header", filter]).unwrap();
        assert!(
            s.stdout
                .text()
                .contains(&format!("header={filter} and header=^x-user: ")),
            "{}",
            s.stdout.text()
        );
        assert_eq!(get(listen, "/plain", &[]).await.1, at("target", "/plain"));
        assert_eq!(
            get(listen, "/team", &[("x-team", "a")]).await.1,
            at("target", "/team")
        );
        let mine = get(listen, "/mine", &[("x-user", "|x")]).await.1;
        assert_eq!(mine, at("dev", "/mine"), "{filter}");
        let shown = status(&bob);
        let shown = &shown["sessions"][0]["ports"][0]["filter"];
        assert_eq!(
            shown["text"],
            format!("header={filter} and header=^x-user: ")
        );
        assert_eq!(shown["header"], serde_json::json!([filter]));
        assert_eq!(shown["required_header"], serde_json::json!(["^x-user: "]));
        assert_eq!(s.stop().unwrap().code(), Some(130), "Ctrl-C exits 130");
    }

    // Any-of with a method: GETs without the header are no longer stolen.
    let mut s = steal(&["--header", "x-user: bob", "--method", "GET", "--any"]).unwrap();
    assert_eq!(get(listen, "/g", &[]).await.1, at("target", "/g"));
    assert_eq!(
        get(listen, "/g2", &[("x-user", "bob")]).await.1,
        at("dev", "/g2")
    );
    assert_eq!(s.stop().unwrap().code(), Some(130), "Ctrl-C exits 130");

    // The README's own example is accepted and means what it says.
    let mut s = steal(&["--header", "^x-user: alice$"]).unwrap();
    assert_eq!(
        get(listen, "/a", &[("x-user", "alice")]).await.1,
        at("dev", "/a")
    );
    assert_eq!(
        get(listen, "/b", &[("x-user", "bob")]).await.1,
        at("target", "/b")
    );
    assert_eq!(s.stop().unwrap().code(), Some(130), "Ctrl-C exits 130");

    // Only an unfiltered steal, which takes whole connections, is refused.
    let err = steal(&[]).err().unwrap();
    assert!(
        err.contains("blocked by policy `api-needs-user`: an unfiltered steal of port 80 of deployment/api would take requests without a header matching `^x-user: `"),
        "{err}"
    );
    let stolen = op.events("Port Stolen");
    assert!(stolen.iter().all(|e| e["fields"]["http_filter"]
        .as_str()
        .unwrap()
        .ends_with(" and header=^x-user: ")));
}

/// Issue 30: a policy selects targets by their labels (`selector`, as a workload's), and a
/// policy naming groups never applies to a certificate's user (who has none).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_select_targets_by_label() {
    let target = HttpServer::start("target").await;
    let labelled = |name: &str, labels: &str| {
        upstream_target(name, 80, free_addr(), target.addr).replacen(
            "\n[[targets.ports]]",
            &format!("\nlabels = {labels}\n[[targets.ports]]"),
            1,
        )
    };
    let targets = labelled("payments", r#"{ app = "payments", tier = "prod" }"#)
        + &labelled("payments-dev", r#"{ app = "payments", tier = "dev" }"#)
        + &labelled("web", r#"{ app = "web" }"#);
    let op = Operator::start_with(OperatorOptions {
        targets,
        extra_config: r#"
[[policies]]
name = "payments-filtered-only"
block = ["unfiltered_steal"]
selector = { match_labels = { app = "payments" }, match_expressions = [{ key = "tier", operator = "NotIn", values = ["dev"] }] }
[[policies]]
name = "interns-mirror-only"
groups = ["interns"]
block = ["steal"]
"#
        .into(),
        ..Default::default()
    });
    let alice = op.issue("alice");
    let p = format!("80={}", idle_local());
    let err = Session::start(&alice, &["steal", "--target", "payments", "--port", &p])
        .err()
        .expect("refused");
    assert!(
        err.contains("blocked by policy `payments-filtered-only`: unfiltered steal of port 80 of deployment/payments"),
        "{err}"
    );
    for other in ["payments-dev", "web"] {
        let s = Session::start(&alice, &["steal", "--target", other, "--port", &p]);
        assert!(s.is_ok(), "{other} is not selected: {:?}", s.err());
    }
    // `status` lists the policies that bind the caller: not the group's (a certificate
    // user has no groups).
    let out = ctl(&alice, &["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Policies that bind you:\n  payments-filtered-only: blocks UnfilteredSteal (* in namespace *, labelled app=payments, tier NotIn [\"dev\"])"),
        "{text}"
    );
    assert!(!text.contains("interns-mirror-only"), "{text}");
}

/// Issue 30: profiles on one machine (`[[profiles]]`): a policy requiring one refuses a
/// session without it; the profile's rules bind the sessions that choose it; an unknown
/// one is refused naming the known.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_from_the_config_file_bind_the_sessions_that_choose_them() {
    let target = HttpServer::start("target").await;
    let op = Operator::start_with(OperatorOptions {
        targets: upstream_target("payments", 80, free_addr(), target.addr),
        extra_config: r#"
[[profiles]]
name = "mirror-only"
block = ["steal"]
[[policies]]
name = "payments-needs-a-profile"
target = "deployment/payments"
require_profile = ["mirror-only"]
"#
        .into(),
        ..Default::default()
    });
    let alice = op.issue("alice");
    let p = format!("80={}", idle_local());
    let open = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--target", "payments", "--port", &p]);
        Session::start(&alice, &all)
    };
    let err = open(&["steal"]).err().expect("no profile");
    assert!(
        err.contains("blocked by policy `payments-needs-a-profile`: sessions on deployment/payments (namespace default) work under profile `mirror-only`"),
        "{err}"
    );
    let err = open(&["steal", "--profile", "mirror-only"])
        .err()
        .expect("the profile allows no steal");
    assert!(
        err.contains("blocked by policy `profile mirror-only`: stealing from deployment/payments"),
        "{err}"
    );
    let mirror = open(&["mirror", "--profile", "mirror-only"]);
    assert!(mirror.is_ok(), "{:?}", mirror.err());
    let err = open(&["mirror", "--profile", "nope"])
        .err()
        .expect("unknown profile");
    assert!(
        err.contains("there is no profile `nope`; profiles: mirror-only"),
        "{err}"
    );
}
