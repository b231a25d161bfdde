//! Every request goes where the routes say, whatever the client does: connections opened
//! before a session, unusual but valid requests, slow clients, half-closed connections,
//! sessions that answer with broken framing or not at all, and the interceptor's limits.

use mirrord_e2e::raw::RawSession;
use mirrord_e2e::servers::{get, Behaviour, HttpServer, H1, H2};
use mirrord_e2e::*;
use mirrord_protocol::{
    ClientMessage, HttpFilterSpec, HttpResponseHead, PortMode, PortRequest, ServerMessage,
};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ALICE: (&str, &str) = ("x-user", "alice");

/// Writes `req` on a fresh connection and reads until the server closes it (at most 10 s).
async fn exchange(addr: SocketAddr, req: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req).await.unwrap();
    read_to_close(&mut s, Duration::from_secs(10)).await
}

/// Everything the peer sends until it closes; panics after `limit`.
async fn read_to_close(s: &mut TcpStream, limit: Duration) -> String {
    let mut out = Vec::new();
    let read = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&out).into_owned();
    assert!(
        read.is_ok(),
        "connection still open after {limit:?}; got: {text:?}"
    );
    text
}

/// Reads until `want` appeared (at most 10 s).
async fn read_until(s: &mut TcpStream, want: &str) -> String {
    let mut got = String::new();
    let mut buf = [0u8; 4096];
    while !got.contains(want) {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {want:?} in time; got {got:?}"))
            .unwrap();
        assert!(n > 0, "closed before {want:?}; got {got:?}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    got
}

fn request(method: &str, path: &str, user: bool) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nhost: t\r\n{}connection: close\r\n\r\n",
        if user { "x-user: alice\r\n" } else { "" }
    )
}

// ------------------------------------------------ 1. connections older than the session

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_connections_opened_before_a_filtered_steal_follow_it() {
    let f = ApiFixture::start("").await;
    let mut h1 = H1::connect(f.listen).await;
    let h2 = H2::connect(f.listen).await;
    assert_eq!(
        h1.get("/h1-before", &[ALICE]).await.1,
        "target GET /h1-before"
    );
    assert_eq!(
        h2.get("/h2-before", &[ALICE]).await.1,
        "target GET /h2-before"
    );

    let mut s = f.session("alice", "steal", &["--header", "^x-user: alice$"]);
    assert_eq!(h1.get("/h1-mine", &[ALICE]).await.1, "dev GET /h1-mine");
    assert_eq!(h1.get("/h1-other", &[]).await.1, "target GET /h1-other");
    assert_eq!(h2.get("/h2-mine", &[ALICE]).await.1, "dev GET /h2-mine");
    assert_eq!(h2.get("/h2-other", &[]).await.1, "target GET /h2-other");

    // And back: once the session is gone, the same connections reach the target again.
    assert_eq!(s.stop().unwrap().code(), Some(130), "Ctrl-C exits 130");
    f.op.wait_event("Session Ended", 1);
    assert_eq!(
        h1.get("/h1-after", &[ALICE]).await.1,
        "target GET /h1-after"
    );
    assert_eq!(
        h2.get("/h2-after", &[ALICE]).await.1,
        "target GET /h2-after"
    );
    assert_eq!(f.dev.paths(), vec!["/h1-mine", "/h2-mine"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_connections_opened_before_an_unfiltered_steal_follow_it() {
    let f = ApiFixture::start("").await;
    let mut h1 = H1::connect(f.listen).await;
    assert_eq!(h1.get("/before", &[]).await.1, "target GET /before");
    let _s = f.session("alice", "steal", &[]);
    for i in 0..3 {
        let p = format!("/during{i}");
        assert_eq!(h1.get(&p, &[]).await.1, format!("dev GET {p}"));
    }
    assert_eq!(f.target.paths(), vec!["/before"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_on_an_older_connection_switch_at_a_request_boundary() {
    let f = ApiFixture::start("").await;
    let mut c = TcpStream::connect(f.listen).await.unwrap();
    let req = |path: &str, user: bool| {
        format!(
            "GET {path} HTTP/1.1\r\nhost: t\r\n{}\r\n",
            if user { "x-user: alice\r\n" } else { "" }
        )
    };
    c.write_all(req("/p0", true).as_bytes()).await.unwrap();
    read_until(&mut c, "target GET /p0").await;

    let _s = f.session("alice", "steal", &["--header", "x-user: alice"]);
    let batch = req("/p1", true) + &req("/p2", false) + &req("/p3", true);
    c.write_all(batch.as_bytes()).await.unwrap();
    let got = read_until(&mut c, "/p3").await;
    let want = ["dev GET /p1", "target GET /p2", "dev GET /p3"];
    let at: Vec<usize> = want
        .iter()
        .map(|w| got.find(w).unwrap_or_else(|| panic!("{w} missing: {got}")))
        .collect();
    assert!(at.windows(2).all(|p| p[0] < p[1]), "out of order: {got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_is_failed_or_lost_while_routes_change_under_load() {
    let f = ApiFixture::start("").await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..4 {
        let (listen, stop) = (f.listen, stop.clone());
        clients.push(tokio::spawn(async move {
            let mut h1 = H1::connect(listen).await;
            let mut sent = 0usize;
            let mut to_dev = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let p = format!("/c{c}/{sent}");
                let h: &[(&str, &str)] = if (sent & 1) == 0 { &[ALICE] } else { &[] };
                let (status, body) = h1.get(&p, h).await;
                assert_eq!(status, 200, "{p}: {body}");
                assert!(body.ends_with(&format!(" GET {p}")), "{p}: {body}");
                if body.starts_with("dev ") {
                    assert!((sent & 1) == 0, "an unmatched request was stolen: {p}");
                    to_dev += 1;
                }
                sent += 1;
            }
            (sent, to_dev)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut s = f.session("alice", "steal", &["--header", "^x-user: alice$"]);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(s.stop().unwrap().code(), Some(130), "Ctrl-C exits 130");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut sent, mut to_dev) = (0, 0);
    for c in clients {
        let (s, d) = c.await.unwrap();
        assert!(
            d > 0,
            "a connection older than the session never reached it"
        );
        sent += s;
        to_dev += d;
    }
    assert_eq!(f.dev.hits().len(), to_dev);
    assert_eq!(
        f.target.hits().len() + f.dev.hits().len(),
        sent,
        "requests lost"
    );
}

// ------------------------------------------------ 2. sniffing by the grammar

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_token_method_and_a_leading_crlf_are_routed() {
    let f = ApiFixture::start("").await;
    let _s = f.session("alice", "steal", &["--header", "x-user: alice"]);
    for method in ["PURGE", "PROPFIND", "M-SEARCH"] {
        let got = exchange(f.listen, request(method, "/m", true).as_bytes()).await;
        assert!(got.contains(&format!("dev {method} /m")), "{method}: {got}");
    }
    let crlf = format!("\r\n{}", request("GET", "/crlf", true));
    let got = exchange(f.listen, crlf.as_bytes()).await;
    assert!(got.contains("dev GET /crlf"), "{got}");
    assert!(f.target.hits().is_empty(), "{:?}", f.target.paths());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_routed_not_relayed() {
    let f = ApiFixture::start("").await;
    let _s = f.session("alice", "steal", &["--header", "x-user: alice"]);
    // A pre-connected pool: connects, waits, then asks.
    let mut idle = TcpStream::connect(f.listen).await.unwrap();
    // A client that sends two bytes and pauses.
    let mut pausing = TcpStream::connect(f.listen).await.unwrap();
    pausing.write_all(b"GE").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    idle.write_all(request("GET", "/idle", true).as_bytes())
        .await
        .unwrap();
    let rest = &request("GET", "/pause", true)[2..];
    pausing.write_all(rest.as_bytes()).await.unwrap();
    let got = read_to_close(&mut idle, Duration::from_secs(10)).await;
    assert!(got.contains("dev GET /idle"), "{got}");
    let got = read_to_close(&mut pausing, Duration::from_secs(10)).await;
    assert!(got.contains("dev GET /pause"), "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_first_protocols_are_relayed_at_once_under_a_filter() {
    // A service that greets first (like SMTP or MySQL), then echoes.
    let svc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let svc_addr = svc.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = svc.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(b"220 hello\r\n").await;
                let mut b = [0u8; 64];
                while let Ok(n) = s.read(&mut b).await {
                    if n == 0 || s.write_all(&b[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let dev = HttpServer::start("dev").await;
    let listen = free_addr();
    let op = Operator::start(&upstream_target("api", 80, listen, svc_addr), "");
    let creds = op.issue("alice");
    let port = format!("80={}", dev.addr);
    let _s = Session::start(
        &creds,
        &["steal", "--target", "api", "--port", &port, "--header", "x"],
    )
    .unwrap();
    let start = Instant::now();
    let mut c = TcpStream::connect(listen).await.unwrap();
    read_until(&mut c, "220 hello\r\n").await;
    // Not after a sniffing delay or a header timeout: as soon as the service spoke.
    assert!(
        start.elapsed() < Duration::from_millis(400),
        "{:?}",
        start.elapsed()
    );
    c.write_all(b"ping").await.unwrap();
    read_until(&mut c, "ping").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_sent_too_slowly_gets_408() {
    let target = HttpServer::start("target").await;
    let dev = HttpServer::start("dev").await;
    let listen = free_addr();
    let op = Operator::start_with(OperatorOptions {
        targets: upstream_target("api", 80, listen, target.addr),
        extra_config: "[limits]\nheader_read_timeout = \"1s\"\n".into(),
        ..Default::default()
    });
    let creds = op.issue("alice");
    let port = format!("80={}", dev.addr);
    let _s = Session::start(
        &creds,
        &["steal", "--target", "api", "--port", &port, "--header", "x"],
    )
    .unwrap();
    // The first request of a connection, and a later one on a kept-alive connection: a
    // byte every 300 ms, never finishing the head.
    let mut first = TcpStream::connect(listen).await.unwrap();
    let mut later = TcpStream::connect(listen).await.unwrap();
    later
        .write_all(b"GET /ok HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    read_until(&mut later, "target GET /ok").await;
    let start = Instant::now();
    let trickle = async {
        for b in b"GET /slow HTTP/1.1\r\nhost: t\r\nx-a: 1234567890" {
            let _ = first.write_all(&[*b]).await;
            let _ = later.write_all(&[*b]).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    tokio::select! {
        _ = trickle => {}
        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
    }
    for s in [&mut first, &mut later] {
        let got = read_to_close(s, Duration::from_secs(10)).await;
        assert!(got.contains("HTTP/1.1 408"), "{got:?}");
    }
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "{:?}",
        start.elapsed()
    );
}

// ------------------------------------------------ 3. half-close

async fn half_closed(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nhost: t\r\nx-user: alice\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s.shutdown().await.unwrap();
    read_to_close(&mut s, Duration::from_secs(10)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_closed_request_is_answered_in_every_mode() {
    let f = ApiFixture::start("").await;
    assert!(half_closed(f.listen, "/none")
        .await
        .contains("target GET /none"));
    {
        let _s = f.session("alice", "steal", &["--header", "x-user: alice"]);
        let got = half_closed(f.listen, "/filtered").await;
        assert!(got.contains("dev GET /filtered"), "filtered steal: {got:?}");
    }
    f.op.wait_event("Session Ended", 1);
    {
        let _s = f.session("bob", "mirror", &["--header", "x-user: alice"]);
        let got = half_closed(f.listen, "/mirrored").await;
        assert!(
            got.contains("target GET /mirrored"),
            "filtered mirror: {got:?}"
        );
    }
    f.op.wait_event("Session Ended", 2);
    {
        let _s = f.session("carol", "steal", &[]);
        let got = half_closed(f.listen, "/unfiltered").await;
        assert!(
            got.contains("dev GET /unfiltered"),
            "unfiltered steal: {got:?}"
        );
    }
}

// ------------------------------------------------ 4. the session's answers are framed here

fn steal_alice() -> Vec<PortRequest> {
    vec![PortRequest {
        port: 80,
        mode: PortMode::Steal,
        filter: Some(HttpFilterSpec {
            header: vec!["x-user: alice".into()],
            ..Default::default()
        }),
    }]
}

/// Waits for the next stolen request and answers it with `head` and `body`.
async fn answer(s: &mut RawSession, headers: &[(&str, &str)], body: &'static [u8]) {
    let req = loop {
        if let ServerMessage::HttpRequest { req, .. } = s.next().await {
            break req;
        }
    };
    s.send(ClientMessage::HttpResponse {
        req,
        head: HttpResponseHead {
            status: 200,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), bytes::Bytes::from(v.to_string())))
                .collect(),
        },
        body: bytes::Bytes::from_static(body),
        end: true,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_longer_than_declared_never_reaches_the_next_request() {
    let f = ApiFixture::start("").await;
    let creds = f.op.issue("mallory");
    let mut s = RawSession::open(f.op.api, &creds, "api", steal_alice()).await;
    let mut c = H1::connect(f.listen).await;
    let injected: &'static [u8] =
        b"okHTTP/1.1 200 OK\r\ncontent-length: 8\r\nx-injected: 1\r\n\r\ninjected";
    let (got, ()) = tokio::join!(
        c.get("/stolen", &[ALICE]),
        answer(&mut s, &[("content-length", "2")], injected)
    );
    assert_eq!(got, (200, "ok".to_owned()));
    // The same connection's next request is answered by the target, not by the extra bytes.
    let next = tokio::time::timeout(Duration::from_secs(10), async {
        let mut c2 = H1::connect(f.listen).await;
        (c.get("/next", &[]).await, c2.get("/fresh", &[]).await)
    })
    .await
    .expect("answers in time");
    assert_eq!(next.0, (200, "target GET /next".to_owned()));
    assert_eq!(next.1, (200, "target GET /fresh".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_shorter_than_declared_closes_the_connection() {
    let f = ApiFixture::start("").await;
    let creds = f.op.issue("mallory");
    let mut s = RawSession::open(f.op.api, &creds, "api", steal_alice()).await;
    let mut c = TcpStream::connect(f.listen).await.unwrap();
    c.write_all(b"GET /short HTTP/1.1\r\nhost: t\r\nx-user: alice\r\n\r\n")
        .await
        .unwrap();
    answer(&mut s, &[("content-length", "10")], b"abc").await;
    // Closed (whatever of the answer made it out first), never left waiting for 7 bytes.
    let got = read_to_close(&mut c, Duration::from_secs(10)).await;
    assert!(got.is_empty() || got.starts_with("HTTP/1.1 200"), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_request_nobody_answers_gets_504() {
    let target = HttpServer::start("target").await;
    let stuck = HttpServer::start_with("dev", Behaviour::Hang).await;
    let listen = free_addr();
    let op = Operator::start_with(OperatorOptions {
        targets: upstream_target("api", 80, listen, target.addr),
        extra_config: "[limits]\nstolen_response_timeout = \"1s\"\n".into(),
        ..Default::default()
    });
    let creds = op.issue("alice");
    let port = format!("80={}", stuck.addr);
    let _s = Session::start(
        &creds,
        &[
            "steal", "--target", "api", "--port", &port, "--header", "x-user",
        ],
    )
    .unwrap();
    let start = Instant::now();
    let got = exchange(listen, request("GET", "/wait", true).as_bytes()).await;
    assert!(got.starts_with("HTTP/1.1 504"), "{got:?}");
    assert!(got.contains("did not answer within 1s"), "{got:?}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    // The connection's other requests are unaffected.
    assert_eq!(get(listen, "/fine", &[]).await.1, "target GET /fine");
}

// ------------------------------------------------ limits

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_file_limit_is_raised_to_the_hard_limit_at_start() {
    let target = HttpServer::start("target").await;
    let op = Operator::start_with(OperatorOptions {
        targets: upstream_target("api", 80, free_addr(), target.addr),
        nofile: Some((256, 4096)),
        ..Default::default()
    });
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", op.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let nums: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(nums, vec!["4096", "4096"], "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_intercepted_connections_never_lock_out_the_api() {
    let target = HttpServer::start("target").await;
    let dev = HttpServer::start("dev").await;
    let listen = free_addr();
    let op = Operator::start_with(OperatorOptions {
        targets: upstream_target("api", 80, listen, target.addr),
        nofile: Some((256, 256)),
        ..Default::default()
    });
    let admin = op.issue_admin("admin");
    // Far more idle connections than the operator has descriptors for.
    let mut idle = Vec::new();
    for _ in 0..400 {
        idle.push(TcpStream::connect(listen).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let st = tokio::task::spawn_blocking({
        let admin = admin.clone();
        move || ctl(&admin, &["status", "--json"])
    });
    let st = tokio::time::timeout(Duration::from_secs(20), st)
        .await
        .expect("status answered in time")
        .unwrap();
    assert!(st.status.success(), "status: {st:?}");
    let port = format!("80={}", dev.addr);
    let alice = op.issue("alice");
    let s = Session::start(&alice, &["steal", "--target", "api", "--port", &port]);
    let s = s.expect("a session opens");
    let kill = ctl(&admin, &["sessions", "kill", &s.id]);
    assert!(kill.status.success(), "kill: {kill:?}");
    // Once the idle ones go, waiting connections are served.
    drop(idle);
    let got = tokio::time::timeout(Duration::from_secs(20), get(listen, "/after", &[]))
        .await
        .expect("served in time");
    assert_eq!(got.1, "target GET /after");
}
