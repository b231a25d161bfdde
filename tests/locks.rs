//! Port locks: one unfiltered steal per port, filtered steals share, concurrent-steal modes.

use mirrord_e2e::servers::{get, HttpServer};
use mirrord_e2e::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_abort_continue_and_override() {
    let target = HttpServer::start("target").await;
    let dev_a = HttpServer::start("alice").await;
    let dev_b = HttpServer::start("bob").await;
    let listen = free_addr();
    let op = Operator::start(&upstream_target("api", 80, listen, target.addr), "");
    let alice = op.issue("alice");
    // bob overrides alice's port below: an admin's right.
    let bob = op.issue_admin("bob");
    let pa = format!("80={}", dev_a.addr);
    let pb = format!("80={}", dev_b.addr);

    let holder = Session::start(&alice, &["steal", "--target", "api", "--port", &pa]).unwrap();

    // abort (the default): refused, naming the holder's session and user.
    let err = Session::start(&bob, &["steal", "--target", "api", "--port", &pb])
        .err()
        .unwrap();
    assert!(err.contains("already stolen"), "{err}");
    assert!(err.contains(&holder.id) && err.contains("alice"), "{err}");
    // a filtered steal also conflicts with an unfiltered one
    let err = Session::start(
        &bob,
        &[
            "steal", "--target", "api", "--port", &pb, "--header", "x: y",
        ],
    )
    .err()
    .unwrap();
    assert!(err.contains(&holder.id), "{err}");
    assert_eq!(get(listen, "/a", &[]).await.1, "alice GET /a");

    // continue: the session opens but does not steal.
    let cont = Session::start(
        &bob,
        &[
            "steal",
            "--target",
            "api",
            "--port",
            &pb,
            "--on-concurrent-steal",
            "continue",
        ],
    )
    .unwrap();
    assert!(
        cont.stdout.text().contains("not stolen: held by session"),
        "{}",
        cont.stdout.text()
    );
    assert_eq!(get(listen, "/b", &[]).await.1, "alice GET /b");
    drop(cont);

    // override: the holder loses the port (and is told), bob gets it.
    let _over = Session::start(
        &bob,
        &[
            "steal",
            "--target",
            "api",
            "--port",
            &pb,
            "--on-concurrent-steal",
            "override",
        ],
    )
    .unwrap();
    assert_eq!(get(listen, "/c", &[]).await.1, "bob GET /c");
    holder
        .stderr
        .wait(Duration::from_secs(5), |l| l.contains("no longer stolen"))
        .expect("holder told it lost the port");
    let released = op.wait_event("Port Released", 1);
    assert_eq!(released[0]["fields"]["session_id"], holder.id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_steals_share_a_port_first_match_wins() {
    let target = HttpServer::start("target").await;
    let dev_a = HttpServer::start("alice").await;
    let dev_b = HttpServer::start("bob").await;
    let listen = free_addr();
    let op = Operator::start(&upstream_target("api", 80, listen, target.addr), "");
    let alice = op.issue("alice");
    let bob = op.issue("bob");
    let pa = format!("80={}", dev_a.addr);
    let pb = format!("80={}", dev_b.addr);
    let _a = Session::start(
        &alice,
        &[
            "steal",
            "--target",
            "api",
            "--port",
            &pa,
            "--header",
            "x-user: (alice|both)",
        ],
    )
    .unwrap();
    let _b = Session::start(
        &bob,
        &[
            "steal",
            "--target",
            "api",
            "--port",
            &pb,
            "--header",
            "x-user: (bob|both)",
        ],
    )
    .unwrap();
    assert_eq!(
        get(listen, "/1", &[("x-user", "alice")]).await.1,
        "alice GET /1"
    );
    assert_eq!(
        get(listen, "/2", &[("x-user", "bob")]).await.1,
        "bob GET /2"
    );
    assert_eq!(
        get(listen, "/3", &[("x-user", "both")]).await.1,
        "alice GET /3"
    );
    assert_eq!(get(listen, "/4", &[]).await.1, "target GET /4");
    // An unfiltered steal now conflicts with both.
    let carol = op.issue("carol");
    let err = Session::start(&carol, &["steal", "--target", "api", "--port", &pa])
        .err()
        .unwrap();
    assert!(err.contains("already stolen"), "{err}");
}
