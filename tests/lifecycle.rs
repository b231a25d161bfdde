//! Session liveness: a dead client's ports come back within the timeout; a kill from
//! `mirrordctl sessions kill` frees them at once and the CLI says so.

use mirrord_e2e::servers::{get, HttpServer};
use mirrord_e2e::*;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_client_is_timed_out_and_its_port_released() {
    let target = HttpServer::start("target").await;
    let dev = HttpServer::start("dev").await;
    let listen = free_addr();
    let op = Operator::start(
        &upstream_target("api", 80, listen, target.addr),
        "ping_interval = \"200ms\"\nclient_timeout = \"2s\"",
    );
    let alice = op.issue("alice");
    let port = format!("80={}", dev.addr);
    let mut s = Session::start(&alice, &["steal", "--target", "api", "--port", &port]).unwrap();
    assert_eq!(get(listen, "/x", &[]).await.1, "dev GET /x");

    // SIGKILL: the TCP connection closes, so the operator notices at once. To test the ping
    // timeout itself, freeze the client instead (SIGSTOP keeps its socket open).
    signal(s.pid(), "STOP");
    let stopped = Instant::now();
    let ended = op.wait_event("Session Ended", 1);
    let took = stopped.elapsed();
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_secs(6),
        "ended after {took:?}"
    );
    assert!(ended[0]["fields"]["reason"]
        .as_str()
        .unwrap()
        .contains("stopped answering"));
    assert_eq!(get(listen, "/y", &[]).await.1, "target GET /y");
    signal(s.pid(), "CONT");
    s.sigkill();

    // And a killed (not frozen) client: its session ends and the port is back.
    let mut s = Session::start(&alice, &["steal", "--target", "api", "--port", &port]).unwrap();
    s.sigkill();
    op.wait_event("Session Ended", 2);
    assert_eq!(get(listen, "/z", &[]).await.1, "target GET /z");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_kill_ends_at_once_with_a_clear_message() {
    let target = HttpServer::start("target").await;
    let dev = HttpServer::start("dev").await;
    let listen = free_addr();
    let op = Operator::start(&upstream_target("api", 80, listen, target.addr), "");
    let alice = op.issue("alice");
    let admin = op.issue_admin("admin");
    let port = format!("80={}", dev.addr);
    let mut s = Session::start(&alice, &["steal", "--target", "api", "--port", &port]).unwrap();
    let st = status(&admin);
    assert_eq!(st["sessions"][0]["session_id"], s.id.as_str());

    let out = ctl(&admin, &["sessions", "kill", &s.id]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&s.id));
    // Released by the time the kill answered.
    assert_eq!(
        get(listen, "/after-kill", &[]).await.1,
        "target GET /after-kill"
    );
    let code = s.wait_exit(Duration::from_secs(5)).expect("CLI exits");
    assert!(!code.success());
    assert!(
        s.stderr
            .text()
            .contains("ended by the operator: killed by admin"),
        "{}",
        s.stderr.text()
    );
    assert_eq!(status(&admin)["sessions"].as_array().unwrap().len(), 0);

    // Unknown ids are named.
    let out = ctl(&admin, &["sessions", "kill", "00000000DEADBEEF"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no session 00000000DEADBEEF"));

    // --all
    let _a = Session::start(
        &alice,
        &[
            "steal", "--target", "api", "--port", &port, "--header", "a: 1",
        ],
    )
    .unwrap();
    let _b = Session::start(&admin, &["mirror", "--target", "api", "--port", &port]).unwrap();
    let out = ctl(&admin, &["sessions", "kill", "--all"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
    assert_eq!(status(&admin)["sessions"].as_array().unwrap().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_session_closes_the_connections_it_had_stolen() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let target = HttpServer::start("target").await;
    let dev = HttpServer::start("dev").await;
    let listen = free_addr();
    let op = Operator::start(&upstream_target("api", 80, listen, target.addr), "");
    let alice = op.issue("alice");
    let port = format!("80={}", dev.addr);
    let mut s = Session::start(&alice, &["steal", "--target", "api", "--port", &port]).unwrap();

    let mut c = tokio::net::TcpStream::connect(listen).await.unwrap();
    c.write_all(b"GET /one HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = c.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("dev GET /one"));

    assert!(ctl(&alice, &["sessions", "kill", &s.id]).status.success());
    s.wait_exit(Duration::from_secs(5)).expect("CLI exits");
    // The stolen connection is closed, not left talking to a session that is gone.
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = c.write_all(b"GET /two HTTP/1.1\r\nhost: t\r\n\r\n").await;
        loop {
            match c.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(n) if String::from_utf8_lossy(&buf[..n]).contains("GET /two") => return false,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the connection neither closed nor answered");
    assert!(
        closed,
        "a request on the killed session's connection was still served"
    );
    assert_eq!(dev.paths(), vec!["/one"]);
}

/// Issue 26: an operator with 200 active sessions stops on SIGTERM with every session's
/// `Session Ended` written and every client told, within a bound; a stolen request whose
/// answer is still on its way is carried to its end first (the operator used to sleep
/// 200 ms and exit, cutting each session's drain short).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_every_session_and_tells_every_client_within_a_bound() {
    use mirrord_protocol::{
        ClientMessage, HttpFilterSpec, HttpResponseHead, PortMode, PortRequest, ServerMessage,
    };
    const SESSIONS: usize = 200;
    // Opening 200 sessions on a loaded machine takes a while, and nobody answers the
    // first ones' pings meanwhile: only shutdown may end them here.
    let f = ApiFixture::start("client_timeout = \"5m\"").await;
    let listen = f.listen;
    let mut op = f.op;
    let mut clients = Vec::new();
    // Several users: one client may hold 64 sessions.
    let users: Vec<_> = (0..8).map(|u| op.issue(&format!("user{u}"))).collect();
    for i in 0..SESSIONS {
        let creds = &users[i % users.len()];
        let filter = HttpFilterSpec {
            header: vec![format!("^x-user: {i}$")],
            ..Default::default()
        };
        let ports = vec![PortRequest {
            port: 80,
            mode: PortMode::Steal,
            filter: Some(filter),
        }];
        clients.push(raw::RawSession::open(op.api, creds, "api", ports).await);
    }
    assert_eq!(op.events("Session Started").len(), SESSIONS);

    // A stolen request in flight: session 0 has it, and answers it only after SIGTERM.
    let pending = tokio::spawn(get(listen, "/slow", &[("x-user", "0")]));
    let req = loop {
        if let ServerMessage::HttpRequest { req, .. } = clients[0].next().await {
            break req;
        }
    };
    let started = Instant::now();
    signal(op.pid(), "TERM");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    clients[0]
        .send(ClientMessage::HttpResponse {
            req,
            head: HttpResponseHead {
                status: 200,
                headers: vec![("content-length".into(), "4".into())],
            },
            body: "late".into(),
            end: true,
        })
        .await;
    let answered = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("the request in flight got no answer")
        .unwrap();
    assert_eq!(
        answered,
        (200, "late".to_owned()),
        "the answer in flight was cut"
    );

    // Every client is told why its session ended.
    let told = futures::future::join_all(clients.iter_mut().map(|c| async move {
        loop {
            match tokio::time::timeout(Duration::from_secs(15), c.next()).await {
                Ok(ServerMessage::SessionEnded { reason }) => return Some(reason),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }))
    .await;
    let stopped = wait_for(Duration::from_secs(20), || (!op.is_running()).then_some(()));
    let took = started.elapsed();
    println!(
        "{SESSIONS} sessions, one answer in flight: the operator stopped {took:?} after SIGTERM"
    );
    assert!(stopped.is_some(), "the operator did not stop");
    assert!(
        told.iter()
            .all(|r| r.as_deref() == Some("operator shutting down")),
        "not every client was told: {:?}",
        told.iter().filter(|r| r.is_none()).count()
    );
    assert_eq!(op.events("Session Ended").len(), SESSIONS);
    assert!(took < Duration::from_secs(12), "stopping took {took:?}");
}
