//! Issue 24 item 6, end to end: a filter that matches every request is an unfiltered steal
//! for policies; filters of different users that share requests on one port are told to
//! both users when the later one opens, and shown in `status`.

use mirrord_e2e::servers::{get, HttpServer};
use mirrord_e2e::*;
use std::time::Duration;

/// `block = ["unfiltered_steal"]` alone: `--header=`, `--header .`, `--path ^/` are refused
/// like no filter (they stole everything before); a real filter and `--method GET` open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_that_matches_every_request_is_an_unfiltered_steal() {
    let target = HttpServer::start("target").await;
    let dev = HttpServer::start("dev").await;
    let listen = free_addr();
    let op = Operator::start_with(OperatorOptions {
        targets: upstream_target("api", 80, listen, target.addr),
        extra_config: r#"
[[policies]]
name = "filtered-only"
block = ["unfiltered_steal"]
"#
        .into(),
        ..Default::default()
    });
    let alice = op.issue("alice");
    let port = format!("80={}", dev.addr);
    for filter in [
        &["--header="][..],
        &["--header", "."],
        &["--header", "x-user: |."],
        &["--path", "^/"],
        &["--path", "^", "--method", "GET", "--any"],
    ] {
        let mut args = vec!["steal", "--target", "api", "--port", &port];
        args.extend_from_slice(filter);
        let err = Session::start(&alice, &args)
            .err()
            .unwrap_or_else(|| panic!("{filter:?} opened a session"));
        assert!(
            err.contains("blocked by policy `filtered-only`")
                && err.contains("matches every request"),
            "{filter:?}: {err}"
        );
    }
    assert_eq!(
        get(listen, "/", &[]).await.1,
        "target GET /",
        "nothing stolen"
    );
    let refused = op.wait_event("Session Refused", 5);
    assert!(
        refused.iter().all(|e| e["fields"]["reason"] == "policy"),
        "{refused:?}"
    );

    let mut s = Session::start(
        &alice,
        &[
            "steal",
            "--target",
            "api",
            "--port",
            &port,
            "--header",
            "^x-user: alice$",
        ],
    )
    .unwrap();
    assert_eq!(
        get(listen, "/", &[("x-user", "alice")]).await.1,
        "dev GET /"
    );
    assert_eq!(get(listen, "/", &[]).await.1, "target GET /");
    s.stop();
    // A method filter is a filter: POSTs still reach the target.
    let _s = Session::start(
        &alice,
        &[
            "steal", "--target", "api", "--port", &port, "--method", "GET",
        ],
    )
    .unwrap();
    assert_eq!(get(listen, "/", &[]).await.1, "dev GET /");
}

/// Alice steals with a filter that matches every request; Bob's later filter is told at
/// open time that he may receive nothing, Alice is told Bob's filter overlaps hers, and
/// `status` (table and JSON) shows it on both sessions. Carol's filter, which shares no
/// request with Alice's narrower one, gets no warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_filters_are_told_to_both_users_and_shown_in_status() {
    let f = ApiFixture::start("").await;
    let port = format!("80={}", f.dev.addr);
    let open = |user: &str, filter: &[&str]| {
        let creds = f.op.issue(user);
        let mut args = vec!["steal", "--target", "api", "--port", &port];
        args.extend_from_slice(filter);
        (Session::start(&creds, &args).unwrap(), creds)
    };
    let (alice, alice_creds) = open("alice", &["--header", "^x-user: "]);
    assert!(
        !alice.stderr.text().contains("warning"),
        "{}",
        alice.stderr.text()
    );
    let (bob, _) = open("bob", &["--header", "^x-user: bob$"]);
    let warning = bob
        .stderr
        .wait(Duration::from_secs(5), |l| l.contains("subscribed first"))
        .unwrap_or_else(|| panic!("bob is warned: {}", bob.stderr.text()));
    assert!(
        warning.contains(&format!("session {} (alice)", alice.id))
            && warning.contains("`header=^x-user: `")
            && warning.contains("GET / (x-user: bob)")
            && warning.contains("those go to alice"),
        "{warning}"
    );
    let notice = alice
        .stderr
        .wait(Duration::from_secs(5), |l| {
            l.contains("also matches requests yours does")
        })
        .unwrap_or_else(|| panic!("alice is told: {}", alice.stderr.text()));
    assert!(
        notice.contains(&format!("session {} (bob)", bob.id))
            && notice.contains("since yours was first"),
        "{notice}"
    );
    // It is true: Bob's requests go to Alice, who subscribed first.
    assert_eq!(
        get(f.listen, "/", &[("x-user", "bob")]).await.1,
        "dev GET /"
    );

    // A path prefix first: a longer path under it is shadowed.
    let (_dave, _) = open("dave", &["--path", "^/dave"]);
    let (erin, _) = open("erin", &["--path", "^/dave/x"]);
    let w = erin
        .stderr
        .wait(Duration::from_secs(5), |l| l.contains("subscribed first"))
        .unwrap_or_else(|| panic!("erin is warned: {}", erin.stderr.text()));
    assert!(w.contains("GET /dave/x"), "{w}");

    let (carol, _) = open("carol", &["--header", "^x-team: blue$"]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !carol.stderr.text().contains("warning"),
        "{}",
        carol.stderr.text()
    );

    let root = f.op.issue_admin("root");
    let st = status(&root);
    let port_of = |id: &str| {
        st["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["session_id"] == id)
            .unwrap()["ports"][0]
            .clone()
    };
    let a = port_of(&alice.id);
    assert_eq!(a["overlaps"][0]["session_id"], bob.id.as_str(), "{st}");
    assert_eq!(a["overlaps"][0]["first"], false);
    let b = port_of(&bob.id);
    assert_eq!(b["overlaps"][0]["session_id"], alice.id.as_str(), "{st}");
    assert_eq!(b["overlaps"][0]["client_user"], "alice");
    assert_eq!(b["overlaps"][0]["first"], true);
    assert_eq!(b["overlaps"][0]["example"], "GET / (x-user: bob)");
    assert_eq!(port_of(&carol.id)["overlaps"], serde_json::json!([]));
    let table = String::from_utf8(ctl(&root, &["status"]).stdout).unwrap();
    assert!(
        table.contains(&format!("overlaps {} (alice), subscribed before", alice.id)),
        "{table}"
    );
    // Alice's own status shows it too; once Bob leaves, it is gone.
    drop(bob);
    let gone = wait_for(Duration::from_secs(10), || {
        let st = status(&alice_creds);
        (st["sessions"][0]["ports"][0]["overlaps"] == serde_json::json!([])).then_some(())
    });
    assert!(gone.is_some(), "{}", status(&alice_creds));
}

/// A filter of Alice's that matches every request: Bob is told he may receive nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_filter_behind_a_catch_all_is_told_it_may_receive_nothing() {
    let f = ApiFixture::start("").await;
    let _alice = f.session("alice", "steal", &["--header", "."]);
    let bob = f.session("bob", "steal", &["--header", "^x-user: bob$"]);
    let w = bob
        .stderr
        .wait(Duration::from_secs(5), |l| l.contains("subscribed first"))
        .unwrap_or_else(|| panic!("bob is warned: {}", bob.stderr.text()));
    assert!(
        w.contains("matches every request: you may receive nothing on this port"),
        "{w}"
    );
}
