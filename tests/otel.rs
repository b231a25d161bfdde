//! OpenTelemetry export end to end: a real operator, configured only with the standard
//! `OTEL_*` variables, exports over OTLP/gRPC to a receiver ([`mirrord_e2e::otlp`]).

use mirrord_e2e::otlp::*;
use mirrord_e2e::servers::{self, HttpServer};
use mirrord_e2e::*;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The environment that turns export on (batches leave every 100 ms, not every second).
fn otel_env(endpoint: SocketAddr) -> Vec<(String, String)> {
    vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
            format!("http://{endpoint}"),
        ),
        ("OTEL_BLRP_SCHEDULE_DELAY".into(), "100".into()),
        ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
    ]
}

/// A system without any CA bundle, as the operator's image is (`rustls-native-certs`
/// reads only these when they are set): a plain `http://` collector, or an `https://` one
/// with its own CA, must not need one. The operator refused to start there before.
fn no_system_roots() -> Vec<(String, String)> {
    vec![
        ("SSL_CERT_FILE".into(), "/dev/null".into()),
        ("SSL_CERT_DIR".into(), "/nonexistent".into()),
    ]
}

struct Setup {
    dev: HttpServer,
    listen: SocketAddr,
    op: Operator,
}

async fn setup(collector: SocketAddr) -> Setup {
    let target = HttpServer::start("target").await;
    let dev = HttpServer::start("dev").await;
    let listen = free_addr();
    let op = Operator::start_with(OperatorOptions {
        targets: upstream_target("api", 80, listen, target.addr),
        env: [otel_env(collector), no_system_roots()].concat(),
        ..Default::default()
    });
    Setup { dev, listen, op }
}

fn steal(s: &Setup, user: &str) -> Session {
    let creds = s.op.issue(user);
    let port = format!("80={}", s.dev.addr);
    Session::start(
        &creds,
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
    .unwrap()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn dev_traceparent(dev: &HttpServer, path: &str) -> String {
    let hit = dev
        .hits()
        .into_iter()
        .find(|h| h.path == path)
        .unwrap_or_else(|| panic!("the developer's process did not get {path}"));
    let tps: Vec<_> = hit
        .headers
        .iter()
        .filter(|(k, _)| k == "traceparent")
        .map(|(_, v)| v.clone())
        .collect();
    assert_eq!(
        tps.len(),
        1,
        "one traceparent reaches the developer: {tps:?}"
    );
    tps[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functional_events_are_exported_as_log_records_with_the_log_lines_fields() {
    let (rx, collector) = Received::start().await;
    let s = setup(collector).await;
    let mut session = steal(&s, "alice");
    let (status, _) = servers::get(s.listen, "/mine", &[("x-user", "alice")]).await;
    assert_eq!(status, 200);
    session.stop();
    s.op.wait_event("Session Ended", 1);

    let lines: Vec<Value> =
        s.op.logs()
            .into_iter()
            .filter(|l| l["target"] == "mirrord_telemetry::event")
            .collect();
    let names: Vec<&str> = lines
        .iter()
        .map(|l| l["fields"]["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "Session Started",
            "Port Stolen",
            "Port Released",
            "Session Ended"
        ]
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while rx.logs().len() < lines.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let records = rx.logs();
    let session_span = rx.wait_span(|sp| sp.name == "mirrord session").await;

    // One record per line, in order, named and shaped like it.
    assert_eq!(records.len(), lines.len(), "records: {records:#?}");
    for (line, (service, record)) in lines.iter().zip(&records) {
        let message = line["fields"]["message"].as_str().unwrap();
        assert_eq!(service, "mirrord-operator");
        assert_eq!(record.event_name, message);
        assert_eq!(
            record.body.as_ref().map(text).as_deref(),
            Some(message),
            "body"
        );
        assert_eq!(record.severity_text, "INFO");
        for (field, want) in line["fields"].as_object().unwrap() {
            if field == "message" {
                continue;
            }
            let got = attr(&record.attributes, field)
                .unwrap_or_else(|| panic!("{message}: attribute {field} missing"));
            assert_eq!(&as_json(&got), want, "{message}: {field}");
        }
        assert_eq!(
            record.attributes.len(),
            line["fields"].as_object().unwrap().len() - 1,
            "{message}: no attribute the line lacks"
        );
        // Each record belongs to its session's trace (logs and traces join up).
        assert_eq!(record.trace_id, session_span.trace_id, "{message}");
        assert_eq!(record.span_id, session_span.span_id, "{message}");
    }
    assert_eq!(
        text(&attr(&session_span.attributes, "mirrord.session.end_reason").unwrap()),
        lines[3]["fields"]["reason"].as_str().unwrap()
    );
    let events: Vec<_> = session_span
        .events
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(events, ["Port Stolen", "Port Released"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_request_is_a_span_whose_traceparent_reaches_the_developer() {
    let (rx, collector) = Received::start().await;
    let s = setup(collector).await;
    let mut session = steal(&s, "alice");

    // A caller inside a trace: the operator's span is its child, the developer's process
    // gets the same trace with the operator's span as parent, and the caller's tracestate.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller = "00f067aa0ba902b7";
    let tp = format!("00-{trace}-{caller}-01");
    let (status, body) = servers::get(
        s.listen,
        "/traced",
        &[
            ("x-user", "alice"),
            ("traceparent", &tp),
            ("tracestate", "vendor=x"),
        ],
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "dev GET /traced"));
    let seen = dev_traceparent(&s.dev, "/traced");
    let parts: Vec<&str> = seen.split('-').collect();
    assert_eq!(parts.len(), 4, "{seen}");
    assert_eq!(
        (parts[0], parts[1], parts[3]),
        ("00", trace, "01"),
        "{seen}"
    );
    assert_ne!(
        parts[2], caller,
        "the operator's span is the developer's parent"
    );
    let hit = s
        .dev
        .hits()
        .into_iter()
        .find(|h| h.path == "/traced")
        .unwrap();
    assert!(
        hit.headers
            .iter()
            .any(|(k, v)| k == "tracestate" && v == "vendor=x"),
        "tracestate travels on: {:?}",
        hit.headers
    );

    // A caller outside any trace: the request's span is a child of the session's.
    let (status, _) = servers::get(s.listen, "/untraced", &[("x-user", "alice")]).await;
    assert_eq!(status, 200);
    let untraced = dev_traceparent(&s.dev, "/untraced");

    session.stop();
    s.op.wait_event("Session Ended", 1);
    let session_span = rx.wait_span(|sp| sp.name == "mirrord session").await;
    let traced = rx
        .wait_span(|sp| sp.name == "steal GET" && hex(&sp.trace_id) == trace)
        .await;
    assert_eq!(
        hex(&traced.span_id),
        parts[2],
        "the exported span is the parent sent on"
    );
    assert_eq!(hex(&traced.parent_span_id), caller);
    assert_eq!(traced.kind, SpanKind::Server as i32);
    assert_eq!(
        text(&attr(&traced.attributes, "http.response.status_code").unwrap()),
        "200"
    );
    assert_eq!(
        text(&attr(&traced.attributes, "url.path").unwrap()),
        "/traced"
    );
    assert_eq!(
        text(&attr(&traced.attributes, "mirrord.client_user").unwrap()),
        "alice"
    );
    assert!(
        traced
            .links
            .iter()
            .any(|l| l.span_id == session_span.span_id && l.trace_id == session_span.trace_id),
        "linked to its session's span"
    );

    let child = rx
        .wait_span(|sp| {
            sp.name == "steal GET"
                && sp.attributes.iter().any(|kv| {
                    kv.key == "url.path"
                        && kv.value.as_ref().map(text).as_deref() == Some("/untraced")
                })
        })
        .await;
    assert_eq!(child.trace_id, session_span.trace_id);
    assert_eq!(child.parent_span_id, session_span.span_id);
    assert_eq!(
        untraced,
        format!("00-{}-{}-01", hex(&child.trace_id), hex(&child.span_id))
    );
    // Requests the filter leaves to the target are not the session's: no span.
    let (status, body) = servers::get(s.listen, "/theirs", &[]).await;
    assert_eq!((status, body.as_str()), (200, "target GET /theirs"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!rx
        .spans()
        .iter()
        .any(|(_, sp)| sp.attributes.iter().any(|kv| {
            kv.key == "url.path" && kv.value.as_ref().map(text).as_deref() == Some("/theirs")
        })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_never_answers_costs_no_log_line_and_no_request() {
    // Accepts connections and never answers: every export hangs until its timeout.
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = hole.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((c, _)) = hole.accept().await {
            held.push(c);
        }
    });
    let s = setup(collector).await;
    let mut sessions = Vec::new();
    for i in 0..5 {
        sessions.push(steal(&s, &format!("user{i}")));
        let started = Instant::now();
        for j in 0..20 {
            let path = format!("/r{i}-{j}");
            let (status, body) = servers::get(s.listen, &path, &[("x-user", "alice")]).await;
            assert_eq!((status, body), (200, format!("dev GET {path}")));
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "20 stolen requests took {:?}",
            started.elapsed()
        );
        sessions.pop().unwrap().stop();
    }
    // Every functional line was written, none waited for the collector.
    assert_eq!(s.op.wait_event("Session Ended", 5).len(), 5);
    assert_eq!(s.op.events("Session Started").len(), 5);
    assert_eq!(s.op.events("Port Stolen").len(), 5);
    // And it stops in bounded time although its last batches cannot leave.
    let mut op = s.op;
    let started = Instant::now();
    signal(op.pid(), "TERM");
    assert!(
        wait_for(Duration::from_secs(20), || (!op.is_running()).then_some(())).is_some(),
        "the operator did not stop"
    );
    eprintln!("stopped in {:?} with a hung collector", started.elapsed());
}

#[test]
fn a_protocol_it_cannot_speak_is_refused_at_start_with_the_variable_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("operator.toml");
    let targets = upstream_target("api", 80, free_addr(), free_addr());
    std::fs::write(
        &config,
        format!("[api]\nlisten = \"{}\"\n{targets}", free_addr()),
    )
    .unwrap();
    let out = std::process::Command::new(bin("mirrord-operator"))
        .args(["serve", "--state-dir"])
        .arg(dir.path().join("state"))
        .arg("--config")
        .arg(&config)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = out;
    let exited = wait_for(Duration::from_secs(10), || child.try_wait().unwrap());
    if exited.is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(exited.is_some(), "the operator started anyway: {err}");
    assert_eq!(out.status.code(), Some(3), "a configuration error: {err}");
    assert!(
        err.contains("OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf"),
        "{err}"
    );
}

/// Issue 24 item 12: an `https://` collector (what collectors in clusters use) is
/// reached with TLS, trusted through `OTEL_EXPORTER_OTLP_CERTIFICATE`; such an endpoint
/// stopped the operator at start before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_collector_is_reached_over_tls() {
    let pki = tempfile::tempdir().unwrap();
    let ca = mirrord_identity::CertificateAuthority::init(pki.path()).unwrap();
    let server = ca.issue_server().unwrap();
    let (rx, collector) = Received::start_tls(&server.cert_pem, &server.key_pem).await;
    let target = HttpServer::start("target").await;
    let dev = HttpServer::start("dev").await;
    let listen = free_addr();
    let mut env = otel_env(collector);
    env[0].1 = format!("https://localhost:{}", collector.port());
    env.push((
        "OTEL_EXPORTER_OTLP_CERTIFICATE".into(),
        pki.path().join("ca.crt").display().to_string(),
    ));
    env.extend(no_system_roots());
    let op = Operator::start_with(OperatorOptions {
        targets: upstream_target("api", 80, listen, target.addr),
        env,
        ..Default::default()
    });
    let s = Setup { dev, listen, op };
    let mut session = steal(&s, "alice");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !rx
        .logs()
        .iter()
        .any(|(_, r)| r.body.as_ref().map(text).as_deref() == Some("Session Started"))
    {
        assert!(Instant::now() < deadline, "nothing arrived over TLS");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    session.stop();
}

/// Issue 24 item 12: export failures are logged (they were silent), a few per minute
/// however many batches fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_failures_are_logged_and_throttled() {
    // An https endpoint nothing listens on: every export fails at once.
    let nothing = free_addr();
    let target = HttpServer::start("target").await;
    let dev = HttpServer::start("dev").await;
    let listen = free_addr();
    let mut env = otel_env(nothing);
    env[0].1 = format!("https://localhost:{}", nothing.port());
    let op = Operator::start_with(OperatorOptions {
        targets: upstream_target("api", 80, listen, target.addr),
        env,
        ..Default::default()
    });
    let s = Setup { dev, listen, op };
    for i in 0..10 {
        let mut session = steal(&s, &format!("user{i}"));
        let (status, _) = servers::get(s.listen, "/x", &[("x-user", "alice")]).await;
        assert_eq!(status, 200);
        session.stop();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let failures: Vec<Value> =
        s.op.logs()
            .into_iter()
            .filter(|l| {
                l["target"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("opentelemetry"))
            })
            .collect();
    assert!(!failures.is_empty(), "no export failure was logged");
    assert!(
        failures.len() <= 5,
        "{} lines for failed exports in a few seconds: {failures:#?}",
        failures.len()
    );
}
