//! Mirror: the target keeps answering; the developer gets copies; a slow or dead mirror
//! never slows or breaks the real path.

use mirrord_e2e::servers::{get, Behaviour, HttpServer, H1};
use mirrord_e2e::*;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_mirror_copies_matching_requests_and_target_answers_all() {
    let f = ApiFixture::start("").await;
    let s = f.session("alice", "mirror", &["--path", "^/copy"]);
    assert!(
        s.stdout.text().contains("port 80: mirror (path=^/copy)"),
        "{}",
        s.stdout.text()
    );

    let mut c = H1::connect(f.listen).await;
    for p in ["/copy/1", "/no/2", "/copy/3"] {
        assert_eq!(c.get(p, &[]).await.1, format!("target GET {p}"));
    }
    assert_eq!(f.target.paths(), vec!["/copy/1", "/no/2", "/copy/3"]);
    let copies = wait_for(Duration::from_secs(5), || {
        (f.dev.hits().len() >= 2).then(|| f.dev.paths())
    });
    assert_eq!(copies.unwrap(), vec!["/copy/1", "/copy/3"]);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(f.dev.hits().len(), 2, "an unmatched request was mirrored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfiltered_mirror_copies_raw_connections() {
    let f = ApiFixture::start("").await;
    let _s = f.session("alice", "mirror", &[]);
    for i in 0..3 {
        assert_eq!(
            get(f.listen, &format!("/m{i}"), &[]).await.1,
            format!("target GET /m{i}")
        );
    }
    let copies = wait_for(Duration::from_secs(5), || {
        (f.dev.hits().len() >= 3).then(|| f.dev.paths())
    });
    // Three separate connections, each copied on its own: they have no order (CI saw
    // ["/m1", "/m0", "/m2"]), so compare them as a set.
    let mut copies = copies.expect("three copies within 5 s");
    copies.sort();
    assert_eq!(copies, vec!["/m0", "/m1", "/m2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_dead_mirrors_never_slow_the_real_path() {
    let target = HttpServer::start("target").await;
    let stuck = HttpServer::start_with("stuck", Behaviour::Hang).await;
    let listen = free_addr();
    let op = Operator::start(&upstream_target("api", 80, listen, target.addr), "");
    let alice = op.issue("alice");
    let bob = op.issue("bob");
    let slow = format!("80={}", stuck.addr);
    // Listening while bob starts (mirrordctl checks), gone before the traffic comes.
    let dying = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("80={}", dying.local_addr().unwrap());
    let _a = Session::start(
        &alice,
        &[
            "mirror", "--target", "api", "--port", &slow, "--header", "x-a",
        ],
    )
    .unwrap();
    let _b = Session::start(&bob, &["mirror", "--target", "api", "--port", &dead]).unwrap();
    drop(dying);

    let mut c = H1::connect(listen).await;
    let start = Instant::now();
    for i in 0..200 {
        let (status, body) = c.get(&format!("/r{i}"), &[("x-a", "1")]).await;
        assert_eq!((status, body), (200, format!("target GET /r{i}")));
    }
    let elapsed = start.elapsed();
    // Generous bound: a mirror that blocked the path would take the stuck server's forever.
    assert!(
        elapsed < Duration::from_secs(10),
        "200 requests took {elapsed:?}"
    );
    assert_eq!(target.hits().len(), 200);
    assert!(
        !stuck.hits().is_empty(),
        "the slow mirror got no copy at all"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_mirror_whose_process_never_reads_keeps_its_session_and_the_real_path() {
    // A local process that accepts and never reads: its socket buffers fill up.
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole_addr = hole.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hole.accept().await {
            held.push(s);
        }
    });
    let target = HttpServer::start("target").await;
    let listen = free_addr();
    let op = Operator::start(
        &upstream_target("api", 80, listen, target.addr),
        "ping_interval = \"200ms\"\nclient_timeout = \"2s\"",
    );
    let bob = op.issue("bob");
    let port = format!("80={hole_addr}");
    let s = Session::start(&bob, &["mirror", "--target", "api", "--port", &port]).unwrap();

    let body = bytes::Bytes::from(vec![b'x'; 256 * 1024]);
    let mut c = H1::connect(listen).await;
    let start = Instant::now();
    for i in 0..80 {
        let (status, text) = c.post(&format!("/big{i}"), body.clone()).await;
        assert_eq!((status, text), (200, format!("target POST /big{i}")));
    }
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "20 MB took {:?}",
        start.elapsed()
    );
    // Longer than the client timeout: the CLI must still be answering pings.
    std::thread::sleep(Duration::from_secs(3));
    let st = status(&bob);
    assert_eq!(
        st["sessions"].as_array().unwrap().len(),
        1,
        "the stuck mirror's session died: {}",
        s.stderr.text()
    );
    assert!(op.events("Session Ended").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_never_breaks_a_large_upload_and_copies_bodies_it_can() {
    let target = HttpServer::start("target").await;
    let dev = HttpServer::start("dev").await;
    let listen = free_addr();
    let op = Operator::start(&upstream_target("api", 80, listen, target.addr), "");
    let bob = op.issue("bob");
    let port = format!("80={}", dev.addr);
    let _s = Session::start(
        &bob,
        &[
            "mirror", "--target", "api", "--port", &port, "--method", "POST",
        ],
    )
    .unwrap();

    let mut c = H1::connect(listen).await;
    // 40 MiB: larger than a mirror copy can be. The real request must not suffer for it.
    let big = bytes::Bytes::from(vec![7u8; 40 * 1024 * 1024]);
    assert_eq!(
        c.post("/big", big.clone()).await,
        (200, "target POST /big".to_owned())
    );
    assert_eq!(target.hits()[0].body.len(), big.len());
    // A body that fits is copied whole.
    assert_eq!(
        c.post("/small", bytes::Bytes::from_static(b"hello"))
            .await
            .0,
        200
    );
    let copies = wait_for(Duration::from_secs(5), || {
        (!dev.hits().is_empty()).then(|| dev.hits())
    });
    let copies = copies.expect("the small request's copy");
    assert_eq!(copies.len(), 1, "the oversized body must not be mirrored");
    assert_eq!(
        (copies[0].path.as_str(), &copies[0].body[..]),
        ("/small", &b"hello"[..])
    );
}
