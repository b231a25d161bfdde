//! Copy target: the session adds a fresh replica of the target; with scale down the
//! originals stop for the session's life and come back after. Replicas are real processes
//! run by the operator.

use mirrord_e2e::servers::{get, try_get, HttpServer};
use mirrord_e2e::*;
use std::collections::HashSet;
use std::time::Duration;

fn pid_of(body: &str) -> String {
    body.split_whitespace()
        .find(|w| w.starts_with("pid="))
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_with_scale_down_takes_all_traffic_and_restores_originals() {
    let dev = HttpServer::start("dev").await;
    let listen = free_addr();
    let op = Operator::start(&command_target("api", 80, listen, 2), "");
    // Both scale down: an admin's right.
    let alice = op.issue_admin("alice");
    let bob = op.issue_admin("bob");

    // Two original replicas answer, round robin.
    let originals = wait_for(Duration::from_secs(20), || {
        let rt = tokio::runtime::Handle::current();
        let pids: HashSet<String> = (0..6)
            .filter_map(|i| {
                tokio::task::block_in_place(|| rt.block_on(try_get(listen, &format!("/o{i}"))))
            })
            .map(|(_, b)| b)
            .filter(|b| b.starts_with("api pid="))
            .map(|b| pid_of(&b))
            .collect();
        (pids.len() == 2).then_some(pids)
    })
    .expect("two original replicas answering");

    let port = format!("80={}", dev.addr);
    let s = Session::start(
        &alice,
        &[
            "steal",
            "--target",
            "api",
            "--port",
            &port,
            "--copy-target",
            "--scale-down",
        ],
    )
    .unwrap();
    assert!(
        s.stdout
            .text()
            .contains("working on copy mirrord-copy-api-"),
        "{}",
        s.stdout.text()
    );
    for i in 0..6 {
        assert_eq!(
            get(listen, &format!("/c{i}"), &[]).await.1,
            format!("dev GET /c{i}")
        );
    }
    let st = status(&alice);
    let copy = &st["copies"][0];
    assert_eq!(copy["original_target"], "deployment/api");
    assert_eq!(copy["scale_down"], true);
    assert!(copy["copy_name"]
        .as_str()
        .unwrap()
        .starts_with("mirrord-copy-api-"));
    let copied = op.wait_event("Target Copied", 1);
    assert_eq!(copied[0]["fields"]["scale_down"], true);

    // Only one session may scale a target down; the first is untouched.
    let err = Session::start(
        &bob,
        &[
            "steal",
            "--target",
            "api",
            "--port",
            &port,
            "--copy-target",
            "--scale-down",
        ],
    )
    .err()
    .unwrap();
    assert!(err.contains("already scaled down by session"), "{err}");
    assert_eq!(get(listen, "/still", &[]).await.1, "dev GET /still");

    // Session ends: copy gone, originals back (new processes).
    drop(s);
    op.wait_event("Session Ended", 1);
    let back = wait_for(Duration::from_secs(20), || {
        let rt = tokio::runtime::Handle::current();
        let b = tokio::task::block_in_place(|| rt.block_on(try_get(listen, "/back")))?.1;
        b.starts_with("api pid=").then_some(b)
    })
    .expect("originals answer again");
    assert!(
        !originals.contains(&pid_of(&back)),
        "originals were never stopped"
    );
    assert!(status(&alice)["copies"].as_array().unwrap().is_empty());
}

/// A copy is one more replica of the target: it serves its share of what no session
/// takes, and a session's routes cover every replica, originals and copy alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_without_scale_down_is_one_more_replica_and_the_session_covers_all() {
    let dev = HttpServer::start("dev").await;
    let listen = free_addr();
    let op = Operator::start(&command_target("api", 80, listen, 1), "");
    let alice = op.issue("alice");
    let original = wait_for(Duration::from_secs(20), || {
        let rt = tokio::runtime::Handle::current();
        let b = tokio::task::block_in_place(|| rt.block_on(try_get(listen, "/")))?.1;
        b.starts_with("api").then(|| pid_of(&b))
    })
    .expect("original answers");
    let port = format!("80={}", dev.addr);
    let _s = Session::start(
        &alice,
        &[
            "steal",
            "--target",
            "api",
            "--port",
            &port,
            "--copy-target",
            "--header",
            "^x-dev: 1$",
        ],
    )
    .unwrap();
    // Unmatched requests: the original and the copy share them.
    let mut pids = HashSet::new();
    for i in 0..6 {
        let b = get(listen, &format!("/u{i}"), &[]).await.1;
        assert!(b.starts_with("api pid="), "{b}");
        pids.insert(pid_of(&b));
    }
    assert_eq!(pids.len(), 2, "original and copy both serve: {pids:?}");
    assert!(pids.contains(&original));
    // Matched requests reach the developer whichever replica would have served them.
    for i in 0..6 {
        let b = get(listen, &format!("/m{i}"), &[("x-dev", "1")]).await.1;
        assert_eq!(b, format!("dev GET /m{i}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_of_a_target_without_command_is_refused_clearly() {
    let target = HttpServer::start("target").await;
    let listen = free_addr();
    let op = Operator::start(&upstream_target("api", 80, listen, target.addr), "");
    let alice = op.issue("alice");
    let port = format!("80={}", idle_local());
    let err = Session::start(
        &alice,
        &["steal", "--target", "api", "--port", &port, "--copy-target"],
    )
    .err()
    .unwrap();
    assert!(err.contains("has no `command`"), "{err}");
}
