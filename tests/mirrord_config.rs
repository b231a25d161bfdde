//! mirrord.json as current mirrord (3.250.0) reads it, end to end: the examples of mirrord's
//! public docs (verbatim in tests/fixtures/mirrord-docs) open sessions that route as the
//! docs say, or are refused naming the key; `http_filter.ports` absent filters every port;
//! method and JSON body filters steal exactly what they match.

use bytes::Bytes;
use mirrord_e2e::servers::{get, request, HttpServer};
use mirrord_e2e::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn docs_fixture(name: &str) -> PathBuf {
    fixture("mirrord-docs").join(name)
}

/// A fixture as a file mirrordctl reads; a fragment (`"http_filter": {...}`) is wrapped
/// in `feature.network.incoming`.
fn config_file(dir: &Path, name: &str) -> PathBuf {
    let text = std::fs::read_to_string(docs_fixture(name)).unwrap();
    let text = match name.ends_with(".fragment.json") {
        true => format!("{{\"feature\": {{\"network\": {{\"incoming\": {{\n{text}\n}}}}}}}}"),
        false => text,
    };
    let path = dir.join(name.replace(".fragment", ""));
    std::fs::write(&path, text).unwrap();
    path
}

async fn send(
    listen: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &'static str,
) -> String {
    request(
        listen,
        method,
        path,
        headers,
        Bytes::from_static(body.as_bytes()),
    )
    .await
    .1
}

/// Issue 32 and issue 25 item 3: each of the docs' incoming-traffic configurations, copied
/// verbatim, opens a session that routes as the docs say; the one this operator cannot run
/// (JQ) is refused naming its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docs_examples_open_sessions_that_route_as_the_docs_say() {
    let target = HttpServer::start("target").await;
    let dev = HttpServer::start("dev").await;
    let listen = free_addr();
    let op = Operator::start(&upstream_target("api", 80, listen, target.addr), "");
    let alice = op.issue("alice");
    let dir = tempfile::tempdir().unwrap();
    let port = format!("80={}", dev.addr);
    let open = |name: &str| {
        let file = config_file(dir.path(), name);
        let f = file.to_str().unwrap().to_owned();
        Session::start(&alice, &["steal", "-f", &f, "-t", "api", "--port", &port])
            .unwrap_or_else(|e| panic!("{name} opens no session: {e}"))
    };
    // (file, requests: (method, path, headers, body, who answers))
    type Case = (
        &'static str,
        Vec<(
            &'static str,
            &'static str,
            Vec<(&'static str, &'static str)>,
            &'static str,
            &'static str,
        )>,
    );
    let cases: Vec<Case> = vec![
        (
            "filter-1-steal-all.json",
            vec![("GET", "/anything", vec![], "", "dev")],
        ),
        (
            "filter-2-header-baggage.json",
            vec![
                (
                    "GET",
                    "/a",
                    vec![("baggage", "k=v,mirrord-session=local-dev-123")],
                    "",
                    "dev",
                ),
                ("GET", "/a", vec![("baggage", "k=v")], "", "target"),
            ],
        ),
        (
            "filter-3-path.json",
            vec![
                ("GET", "/x/my/path", vec![], "", "dev"),
                ("GET", "/x/other", vec![], "", "target"),
            ],
        ),
        (
            "filter-4-kube-probe.json",
            vec![
                (
                    "GET",
                    "/healthz",
                    vec![("user-agent", "kube-probe/1.20")],
                    "",
                    "target",
                ),
                ("GET", "/api", vec![("user-agent", "curl/8.0")], "", "dev"),
            ],
        ),
        (
            "filter-5-health.json",
            vec![
                ("GET", "/health/live", vec![], "", "target"),
                ("GET", "/api/items", vec![], "", "dev"),
            ],
        ),
        (
            "filter-6-method.json",
            vec![
                ("POST", "/api/items", vec![], "x", "dev"),
                ("PUT", "/api/items", vec![], "x", "dev"),
                ("GET", "/api/items", vec![], "", "target"),
            ],
        ),
        (
            "filter-all-of.fragment.json",
            vec![
                (
                    "POST",
                    "/a",
                    vec![("baggage", "mirrord-session=local-dev-123")],
                    "x",
                    "dev",
                ),
                (
                    "GET",
                    "/a",
                    vec![("baggage", "mirrord-session=local-dev-123")],
                    "",
                    "target",
                ),
            ],
        ),
        (
            "filter-any-of.fragment.json",
            vec![
                (
                    "GET",
                    "/a",
                    vec![("tracestate", "mirrord-session=local-dev-123")],
                    "",
                    "dev",
                ),
                ("GET", "/a", vec![], "", "target"),
            ],
        ),
        (
            "body-1-body-filter.json",
            vec![
                (
                    "POST",
                    "/users",
                    vec![("content-type", "application/json")],
                    r#"{"data": [{"legacyEntityIds": {"legacyUserIdentityId": "identity123"}}]}"#,
                    "dev",
                ),
                (
                    "POST",
                    "/users",
                    vec![("content-type", "application/json")],
                    r#"{"data": [{"legacyEntityIds": {"legacyUserIdentityId": "identity999"}}]}"#,
                    "target",
                ),
            ],
        ),
        (
            "body-2-all-of-orders.json",
            // The docs' requests A, B and C.
            vec![
                (
                    "POST",
                    "/orders",
                    vec![("content-type", "application/json")],
                    r#"{"orderId": "123", "items": [{"name": "A", "price": 199}, {"name": "B", "price": 42}]}"#,
                    "dev",
                ),
                (
                    "POST",
                    "/orders",
                    vec![("content-type", "application/json")],
                    r#"{"orderId": "124", "items": [{"name": "A", "price": 150}, {"name": "B", "price": 42}]}"#,
                    "target",
                ),
                (
                    "POST",
                    "/payments",
                    vec![("content-type", "application/json")],
                    r#"{"orderId": "125", "items": [{"name": "A", "price": 199}]}"#,
                    "target",
                ),
            ],
        ),
    ];
    for (name, requests) in cases {
        let mut s = open(name);
        for (method, path, headers, body, who) in requests {
            let answer = send(listen, method, path, &headers, body).await;
            assert_eq!(
                answer,
                format!("{who} {method} {path}"),
                "{name}: {method} {path} {headers:?}"
            );
        }
        s.stop();
    }
    // What the target received of the bodies it kept arrived whole.
    assert!(target.hits().iter().any(|h| h.path == "/payments"));

    // The JQ example: refused, naming the key, before anything opens.
    let file = config_file(dir.path(), "filter-7-jq-header.json");
    let out = ctl(
        &alice,
        &[
            "steal",
            "-f",
            file.to_str().unwrap(),
            "-t",
            "api",
            "--port",
            &port,
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("`feature.network.incoming.http_filter.header_filter`") && err.contains("JQ"),
        "{err}"
    );
}

/// Issue 25 item 3: `header_filter` with `ports: [9000]` and no `http_filter.ports` filters
/// 9000 (mirrord since 3.181.0). Before, the old default (80, 8080) made it an unfiltered
/// steal of every request on 9000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_without_ports_filters_every_port() {
    let target = HttpServer::start("target").await;
    let dev = HttpServer::start("dev").await;
    let listen = free_addr();
    let op = Operator::start(&upstream_target("api", 9000, listen, target.addr), "");
    let alice = op.issue("alice");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mirrord.json");
    std::fs::write(
        &file,
        format!(
            r#"{{
  "target": "deployment/api",
  "feature": {{"network": {{"incoming": {{
    "mode": "steal",
    "http_filter": {{"header_filter": "^x-user: alice$"}},
    "ports": [9000],
    "port_mapping": [[{}, 9000]]
  }}}}}}
}}"#,
            dev.addr.port()
        ),
    )
    .unwrap();
    let s = Session::start(&alice, &["steal", "-f", file.to_str().unwrap()]).unwrap();
    let out = s.stdout.text();
    assert!(
        out.contains("port 9000: steal (header=^x-user: alice$)"),
        "{out}"
    );
    assert_eq!(
        get(listen, "/mine", &[("x-user", "alice")]).await.1,
        "dev GET /mine"
    );
    assert_eq!(
        get(listen, "/theirs", &[]).await.1,
        "target GET /theirs",
        "a request without the header is not stolen"
    );
    let st = status(&alice);
    assert_eq!(
        st["sessions"][0]["ports"][0]["filter"]["header"][0], "^x-user: alice$",
        "{st}"
    );
}

/// `method_filter` and `body_filter` steal exactly what they match; the body reaches
/// whoever gets the request whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_and_body_filters_steal_exactly_what_they_match() {
    let f = ApiFixture::start("").await;
    let dir = tempfile::tempdir().unwrap();
    let alice = f.op.issue("alice");
    let port = format!("80={}", f.dev.addr);
    let file = dir.path().join("m.json");
    std::fs::write(
        &file,
        r#"{"feature": {"network": {"incoming": {"mode": "steal", "http_filter": {"method_filter": "delete"}}}}}"#,
    )
    .unwrap();
    let args = |file: &Path| {
        vec![
            "steal".to_owned(),
            "-f".into(),
            file.to_str().unwrap().into(),
            "-t".into(),
            "api".into(),
            "--port".into(),
            port.clone(),
        ]
    };
    let a = args(&file);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let mut s = Session::start(&alice, &a).unwrap();
    assert_eq!(
        send(f.listen, "DELETE", "/x", &[], "").await,
        "dev DELETE /x"
    );
    for m in ["GET", "POST", "PUT"] {
        assert_eq!(
            send(f.listen, m, "/x", &[], "").await,
            format!("target {m} /x")
        );
    }
    s.stop();

    let file = dir.path().join("b.json");
    std::fs::write(
        &file,
        r#"{"feature": {"network": {"incoming": {"mode": "steal", "http_filter": {
            "body_filter": {"body": "json", "query": "$.user.name", "matches": "^alice$"}}}}}}"#,
    )
    .unwrap();
    let a = args(&file);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let _s = Session::start(&alice, &a).unwrap();
    let json = [("content-type", "application/json")];
    assert_eq!(
        send(
            f.listen,
            "POST",
            "/b",
            &json,
            r#"{"user": {"name": "Alice"}}"#
        )
        .await,
        "dev POST /b"
    );
    assert_eq!(
        send(
            f.listen,
            "POST",
            "/b",
            &json,
            r#"{"user": {"name": "bob"}}"#
        )
        .await,
        "target POST /b"
    );
    assert_eq!(
        send(f.listen, "POST", "/b", &json, "not json").await,
        "target POST /b"
    );
    assert_eq!(send(f.listen, "GET", "/b", &[], "").await, "target GET /b");
    let bodies: Vec<String> = f
        .dev
        .hits()
        .iter()
        .filter(|h| h.path == "/b")
        .map(|h| String::from_utf8_lossy(&h.body).into_owned())
        .collect();
    assert_eq!(
        bodies,
        [r#"{"user": {"name": "Alice"}}"#],
        "the stolen body, whole"
    );
    let kept: Vec<String> = f
        .target
        .hits()
        .iter()
        .filter(|h| h.path == "/b" && h.method == "POST")
        .map(|h| String::from_utf8_lossy(&h.body).into_owned())
        .collect();
    assert_eq!(kept, [r#"{"user": {"name": "bob"}}"#, "not json"]);
}

/// `deployment/api/container/app` is carried to the operator, which refuses it on one
/// machine (targets have no containers) instead of silently dropping it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_is_not_dropped() {
    let f = ApiFixture::start("").await;
    let alice = f.op.issue("alice");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.json");
    std::fs::write(
        &file,
        r#"{"target": {"path": {"deployment": "api", "container": "app"}}, "feature": {"network": {"incoming": "steal"}}}"#,
    )
    .unwrap();
    let port = format!("80={}", f.dev.addr);
    for args in [
        vec!["steal", "-f", file.to_str().unwrap(), "--port", &port],
        vec![
            "steal",
            "-t",
            "deployment/api/container/app",
            "--port",
            &port,
        ],
    ] {
        // Refused (exit 3), never opened with the container dropped.
        let err = match Session::start(&alice, &args) {
            Ok(s) => panic!(
                "{args:?} opened session {}: the container was dropped",
                s.id
            ),
            Err(err) => err,
        };
        assert!(
            err.contains("container/app") && err.contains("without containers"),
            "{err}"
        );
    }
    let out = ctl(
        &alice,
        &[
            "steal",
            "-t",
            "deployment/api/container/app",
            "--port",
            &port,
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    wait_for(Duration::from_secs(5), || {
        (!f.op.events("Session Refused").is_empty()).then_some(())
    })
    .expect("refusals are logged");
    assert!(f.op.events("Session Started").is_empty());
}
