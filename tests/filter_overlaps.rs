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

/// Bob and Carol steal with filters that share no request: neither is warned. Alice then
/// steals every request with an `x-user` header: she is told at open time that Bob's and
/// Carol's earlier filters take some of hers, they are told hers overlaps theirs, and
/// `status` (table and JSON) shows it on each session until one leaves.
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
    let (bob, _) = open("bob", &["--header", "^x-user: bob$"]);
    let (carol, carol_creds) = open("carol", &["--header", "^x-user: carol$"]);
    let (alice, _) = open("alice", &["--header", "^x-user: "]);
    let warnings: Vec<String> = wait_for(Duration::from_secs(5), || {
        let w: Vec<String> = alice
            .stderr
            .all()
            .into_iter()
            .filter(|l| l.contains("subscribed first"))
            .collect();
        (w.len() == 2).then_some(w)
    })
    .unwrap_or_else(|| panic!("alice is warned twice: {}", alice.stderr.text()));
    assert!(
        warnings[0].contains(&format!("session {} (bob)", bob.id))
            && warnings[0].contains("`header=^x-user: bob$`")
            && warnings[0].contains("GET / (x-user: bob)")
            && warnings[0].contains("those go to bob"),
        "{warnings:?}"
    );
    assert!(
        warnings[1].contains(&format!("session {} (carol)", carol.id)),
        "{warnings:?}"
    );
    for (s, name) in [(&bob, "bob"), (&carol, "carol")] {
        let notice = s
            .stderr
            .wait(Duration::from_secs(5), |l| {
                l.contains("also matches requests yours does")
            })
            .unwrap_or_else(|| panic!("{name} is told: {}", s.stderr.text()));
        assert!(
            notice.contains(&format!("session {} (alice)", alice.id))
                && notice.contains("since yours was first"),
            "{notice}"
        );
    }
    // Neither Bob nor Carol was warned when they opened: their filters share no request.
    for s in [&bob, &carol] {
        assert!(!s.stderr.text().contains("warning"), "{}", s.stderr.text());
    }

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
    assert_eq!(a["overlaps"].as_array().unwrap().len(), 2, "{st}");
    assert_eq!(a["overlaps"][0]["session_id"], bob.id.as_str(), "{st}");
    assert_eq!(a["overlaps"][0]["client_user"], "bob");
    assert_eq!(a["overlaps"][0]["first"], true);
    assert_eq!(a["overlaps"][0]["catch_all"], false);
    assert_eq!(a["overlaps"][0]["example"], "GET / (x-user: bob)");
    let b = port_of(&bob.id);
    assert_eq!(b["overlaps"][0]["session_id"], alice.id.as_str(), "{st}");
    assert_eq!(b["overlaps"][0]["first"], false);
    let table = String::from_utf8(ctl(&root, &["status"]).stdout).unwrap();
    assert!(
        table.contains(&format!("overlaps {} (bob), subscribed before", bob.id))
            && table.contains(&format!("overlaps {} (alice), subscribed after", alice.id)),
        "{table}"
    );
    // What the warnings say is what happens: Bob's requests go to Bob, others' to Alice.
    assert_eq!(
        get(f.listen, "/b", &[("x-user", "bob")]).await.1,
        "dev GET /b"
    );
    assert_eq!(
        get(f.listen, "/d", &[("x-user", "dave")]).await.1,
        "dev GET /d"
    );
    // Once Alice leaves, the overlap is gone from Carol's status.
    drop(alice);
    let gone = wait_for(Duration::from_secs(10), || {
        let st = status(&carol_creds);
        (st["sessions"][0]["ports"][0]["overlaps"] == serde_json::json!([])).then_some(())
    });
    assert!(gone.is_some(), "{}", status(&carol_creds));
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
