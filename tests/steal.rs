//! Steal, unfiltered and filtered, over HTTP/1.1 keep-alive, h2c and upgrades.

use mirrord_e2e::servers::{get, upgrade_echo, HttpServer, H1, H2};
use mirrord_e2e::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfiltered_steal_takes_every_new_connection() {
    let target = HttpServer::start("target").await;
    let dev = HttpServer::start("dev").await;
    let listen = free_addr();
    let op = Operator::start(&upstream_target("api", 80, listen, target.addr), "");
    let alice = op.issue("alice");

    assert_eq!(get(listen, "/before", &[]).await.1, "target GET /before");

    let port = format!("80={}", dev.addr);
    let mut s = Session::start(
        &alice,
        &["steal", "--target", "deployment/api", "--port", &port],
    )
    .unwrap();
    assert_eq!(s.id.len(), 16);
    assert!(
        s.id.chars()
            .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase()),
        "{}",
        s.id
    );
    assert!(
        s.stdout
            .text()
            .contains(&format!("port 80: steal -> {}", dev.addr)),
        "{}",
        s.stdout.text()
    );

    // mirrordctl's start-up check of the local address was one connection.
    let checked = dev.connections();
    for i in 0..5 {
        assert_eq!(
            get(listen, &format!("/s{i}"), &[]).await.1,
            format!("dev GET /s{i}")
        );
    }
    assert_eq!(
        target.paths(),
        vec!["/before"],
        "the real service saw stolen traffic"
    );
    assert_eq!(
        dev.connections() - checked,
        5,
        "each new connection reaches the developer"
    );

    // Ctrl-C ends the session; traffic flows to the target again.
    assert_eq!(s.stop().unwrap().code(), Some(130), "Ctrl-C exits 130");
    op.wait_event("Session Ended", 1);
    assert_eq!(get(listen, "/after", &[]).await.1, "target GET /after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_steal_routes_each_request_on_one_keepalive_connection() {
    let target = HttpServer::start("target").await;
    let dev = HttpServer::start("dev").await;
    let listen = free_addr();
    let op = Operator::start(&upstream_target("api", 80, listen, target.addr), "");
    let alice = op.issue("alice");
    let port = format!("80={}", dev.addr);
    let _s = Session::start(
        &alice,
        &[
            "steal",
            "--target",
            "deployment/api",
            "--port",
            &port,
            "--header",
            "^x-user: alice$",
        ],
    )
    .unwrap();

    let mut c = H1::connect(listen).await;
    let plan = [
        ("/1", Some("alice"), "dev"),
        ("/2", None, "target"),
        ("/3", Some("ALICE"), "dev"),
        ("/4", Some("bob"), "target"),
        ("/5", Some("alice"), "dev"),
        ("/6", None, "target"),
    ];
    for (path, user, who) in plan {
        let headers: Vec<(&str, &str)> = user.iter().map(|u| ("X-User", *u)).collect();
        let (status, body) = c.get(path, &headers).await;
        assert_eq!((status, body), (200, format!("{who} GET {path}")));
    }
    assert_eq!(dev.paths(), vec!["/1", "/3", "/5"]);
    assert_eq!(target.paths(), vec!["/2", "/4", "/6"]);
    // The stolen requests arrive with their headers.
    assert!(dev.hits()[0]
        .headers
        .iter()
        .any(|(k, v)| k == "x-user" && v == "alice"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_method_and_any_filters() {
    let f = ApiFixture::start("").await;
    let _s = f.session(
        "alice",
        "steal",
        &["--path", "^/api/", "--path", "debug=1", "--any"],
    );
    assert_eq!(get(f.listen, "/api/x", &[]).await.1, "dev GET /api/x");
    assert_eq!(
        get(f.listen, "/other?debug=1", &[]).await.1,
        "dev GET /other?debug=1"
    );
    assert_eq!(get(f.listen, "/other", &[]).await.1, "target GET /other");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_is_routed_per_stream() {
    let f = ApiFixture::start("").await;
    let _s = f.session("alice", "steal", &["--header", "x-user: alice"]);

    let c = H2::connect(f.listen).await;
    // Concurrent streams on one connection, interleaved.
    let futs = (0..10).map(|i| {
        let c = &c;
        async move {
            let path = format!("/h2/{i}");
            let h: Vec<(&str, &str)> = if i % 2 == 0 {
                vec![("x-user", "alice")]
            } else {
                vec![]
            };
            (i, c.get(&path, &h).await)
        }
    });
    for (i, (status, body)) in futures::future::join_all(futs).await {
        let who = if i % 2 == 0 { "dev" } else { "target" };
        assert_eq!(status, 200);
        assert_eq!(body, format!("{who} GET /h2/{i}"));
    }
    assert_eq!(f.dev.hits().len(), 5);
    assert_eq!(f.target.hits().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_on_stolen_request_becomes_a_raw_relay() {
    let f = ApiFixture::start("").await;
    let _s = f.session("alice", "steal", &["--header", "x-user: alice"]);

    let (head, echo) = upgrade_echo(f.listen, &[("x-user", "alice")], b"hello").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(echo, "dev:hello");
    // Unmatched upgrades reach the real service, also relayed raw.
    let (head, echo) = upgrade_echo(f.listen, &[], b"hi").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(echo, "target:hi");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stolen_request_to_a_dead_local_process_gets_a_clear_502() {
    let target = HttpServer::start("target").await;
    let listen = free_addr();
    let op = Operator::start(&upstream_target("api", 80, listen, target.addr), "");
    let alice = op.issue("alice");
    // Listening while the session starts (mirrordctl checks), gone before the request.
    let dying = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = format!("80={}", dying.local_addr().unwrap());
    let _s = Session::start(
        &alice,
        &[
            "steal", "--target", "api", "--port", &port, "--method", "POST",
        ],
    )
    .unwrap();
    drop(dying);
    let (status, body) = get(listen, "/still-works", &[]).await;
    assert_eq!((status, body.as_str()), (200, "target GET /still-works"));
    let (status, body) = raw_post(listen).await;
    assert_eq!(status, 502);
    assert!(body.contains("did not answer"), "{body}");
}

async fn raw_post(addr: std::net::SocketAddr) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /x HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\nconnection: close\r\n\r\nhi")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out[9..12].parse().unwrap();
    (status, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_costs_only_its_own_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The developer's process: `/huge` answers 64 MiB, anything else a short body.
    let dev = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dev_addr = dev.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = dev.accept().await {
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut b = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&b[..n]),
                    }
                }
                if req.starts_with(b"GET /huge") {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 67108864\r\n\r\n")
                        .await;
                    let chunk = vec![0u8; 1 << 20];
                    for _ in 0..64 {
                        if s.write_all(&chunk).await.is_err() {
                            return;
                        }
                    }
                } else {
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        )
                        .await;
                }
            });
        }
    });
    let target = HttpServer::start("target").await;
    let listen = free_addr();
    let op = Operator::start(
        &upstream_target("api", 80, listen, target.addr),
        "ping_interval = \"200ms\"\nclient_timeout = \"2s\"",
    );
    let alice = op.issue("alice");
    let port = format!("80={dev_addr}");
    let s = Session::start(&alice, &["steal", "--target", "api", "--port", &port]).unwrap();

    // A client that asks for 64 MiB and never reads a byte of it.
    let mut stuck = tokio::net::TcpStream::connect(listen).await.unwrap();
    stuck
        .write_all(b"GET /huge HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;

    // Longer than the client timeout: the session is alive and still steals.
    assert!(
        op.events("Session Ended").is_empty(),
        "session ended: {}",
        s.stderr.text()
    );
    assert_eq!(status(&alice)["sessions"].as_array().unwrap().len(), 1);
    let small = tokio::time::timeout(Duration::from_secs(10), get(listen, "/small", &[]))
        .await
        .expect("the session is wedged by one stuck connection");
    assert_eq!((small.0, small.1.as_str()), (200, "ok"));
    drop(stuck);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_routed_one_by_one_and_answered_in_order() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let f = ApiFixture::start("").await;
    let _s = f.session("alice", "steal", &["--header", "x-user: alice"]);

    // Four requests in one write, before reading any answer.
    let mut c = tokio::net::TcpStream::connect(f.listen).await.unwrap();
    let req = |path: &str, user: bool| {
        format!(
            "GET {path} HTTP/1.1\r\nhost: t\r\n{}\r\n",
            if user { "x-user: alice\r\n" } else { "" }
        )
    };
    let batch = req("/p1", true) + &req("/p2", false) + &req("/p3", true) + &req("/p4", false);
    c.write_all(batch.as_bytes()).await.unwrap();
    let mut got = String::new();
    let mut buf = [0u8; 4096];
    let want = [
        "dev GET /p1",
        "target GET /p2",
        "dev GET /p3",
        "target GET /p4",
    ];
    while !got.contains(want[3]) {
        let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
            .await
            .expect("answers in time")
            .unwrap();
        assert!(n > 0, "closed early: {got}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let positions: Vec<usize> = want
        .iter()
        .map(|w| got.find(w).unwrap_or_else(|| panic!("{w} missing: {got}")))
        .collect();
    assert!(
        positions.windows(2).all(|p| p[0] < p[1]),
        "out of order: {got}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stolen_responses_stream_as_they_are_produced() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;
    // The developer's process answers like server-sent events: a chunk now, one later.
    let dev = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dev_addr = dev.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = dev.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    let (tx, rx) =
                        tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
                    tokio::spawn(async move {
                        let _ = tx
                            .send(Ok(Frame::data(Bytes::from("data: first\n\n"))))
                            .await;
                        tokio::time::sleep(Duration::from_millis(1500)).await;
                        let _ = tx
                            .send(Ok(Frame::data(Bytes::from("data: second\n\n"))))
                            .await;
                    });
                    let body = StreamBody::new(tokio_stream_from(rx));
                    Ok::<_, std::convert::Infallible>(
                        hyper::Response::builder()
                            .header("content-type", "text/event-stream")
                            .body(body)
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    let target = HttpServer::start("target").await;
    let listen = free_addr();
    let op = Operator::start(&upstream_target("api", 80, listen, target.addr), "");
    let alice = op.issue("alice");
    let port = format!("80={dev_addr}");
    let _s = Session::start(
        &alice,
        &[
            "steal", "--target", "api", "--port", &port, "--path", "^/events",
        ],
    )
    .unwrap();

    let tcp = tokio::net::TcpStream::connect(listen).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get("/events")
        .header("host", "t")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let start = std::time::Instant::now();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    let first_at = start.elapsed();
    assert_eq!(first, "data: first\n\n");
    assert!(
        first_at < Duration::from_millis(1000),
        "first event after {first_at:?}: buffered, not streamed"
    );
    let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(second, "data: second\n\n");
    assert!(start.elapsed() >= Duration::from_millis(1500));
}

/// An mpsc receiver as a stream (no tokio-stream dependency for one use).
fn tokio_stream_from<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stolen_uploads_larger_than_a_frame_arrive_whole() {
    let f = ApiFixture::start("").await;
    let _s = f.session("alice", "steal", &["--method", "POST"]);

    // 40 MiB: more than twice the largest frame.
    let body: Vec<u8> = (0..40 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let mut c = H1::connect(f.listen).await;
    let (status, text) = c.post("/upload", bytes::Bytes::from(body.clone())).await;
    assert_eq!((status, text.as_str()), (200, "dev POST /upload"));
    let hits = f.dev.hits();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].body.len(), body.len());
    assert!(hits[0].body == body, "the upload arrived altered");
    assert!(f.target.hits().is_empty());
}
