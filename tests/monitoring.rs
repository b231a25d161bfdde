//! The monitoring contract (`spec/monitoring.md`), proven on the real binaries: functional
//! JSON log events with all their fields, a real Prometheus scraping `/metrics`, promtool's
//! lint, and bounded cardinality.

use mirrord_e2e::prom::Prometheus;
use mirrord_e2e::servers::{get, HttpServer, H1};
use mirrord_e2e::*;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

const ALL: &[&str] = &[
    "target",
    "client_hostname",
    "client_name",
    "client_user",
    "client_id",
    "target_type",
    "target_name",
    "target_namespace",
    "client_cli_version",
];

fn field<'a>(e: &'a Value, k: &str) -> &'a Value {
    &e["fields"][k]
}

fn s<'a>(e: &'a Value, k: &str) -> &'a str {
    field(e, k)
        .as_str()
        .unwrap_or_else(|| panic!("field {k} missing or not a string in {e}"))
}

/// Every functional event: INFO, the contract's top-level layout, and all of its fields.
fn check_common(e: &Value) {
    assert_eq!(e["level"], "INFO", "{e}");
    assert!(e["timestamp"].is_string() && e["target"].is_string(), "{e}");
    for k in ALL {
        let v = s(e, k);
        if *k != "client_name" {
            assert!(!v.is_empty(), "{k} empty in {e}");
        }
    }
    assert_eq!(
        s(e, "target"),
        format!("{}/{}", s(e, "target_type"), s(e, "target_name"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_scenario_logs_exactly_the_expected_functional_events() {
    let target = HttpServer::start("target").await;
    let dev = HttpServer::start("dev").await;
    let api = free_addr();
    let web = free_addr();
    let targets =
        upstream_target("api", 80, api, target.addr) + &command_target("web", 8080, web, 1);
    let op = Operator::start_with_metrics(
        &targets,
        "ping_interval = \"200ms\"\nclient_timeout = \"2s\"",
    );
    let prom = Prometheus::start(op.metrics.unwrap());
    // alice scales a target down and the admin kills her session: both admins' rights.
    let alice = op.issue_admin("alice");
    let bob = op.issue("bob");
    let admin = op.issue_admin("admin");
    let devp = format!("80={}", dev.addr);

    // alice: filtered steal; bob: unfiltered mirror; bob's unfiltered steal conflicts.
    let a = Session::start(
        &alice,
        &[
            "steal",
            "--target",
            "api",
            "--port",
            &devp,
            "--header",
            "x-user: alice",
        ],
    )
    .unwrap();
    let a_started = Instant::now();
    let mut b = Session::start(
        &bob,
        &["mirror", "--target", "deployment/api", "--port", &devp],
    )
    .unwrap();
    let refused = Session::start(&bob, &["steal", "--target", "api", "--port", &devp])
        .err()
        .unwrap();
    assert!(refused.contains(&a.id));
    // alice again: unfiltered steal on a copy of web, scaled down.
    let webp = format!("8080={}", dev.addr);
    let mut c = Session::start(
        &alice,
        &[
            "steal",
            "--target",
            "web",
            "--port",
            &webp,
            "--copy-target",
            "--scale-down",
        ],
    )
    .unwrap();

    let mut conn = H1::connect(api).await;
    assert_eq!(conn.get("/x", &[("x-user", "alice")]).await.1, "dev GET /x");
    assert_eq!(conn.get("/y", &[]).await.1, "target GET /y");
    assert_eq!(get(web, "/w", &[]).await.1, "dev GET /w");

    // Consistency with status while everything runs.
    let st = status(&admin);
    let by_session: HashMap<String, Value> = st["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["session_id"].as_str().unwrap().to_owned(), s.clone()))
        .collect();
    assert_eq!(by_session.len(), 3);

    // bob's CLI is killed; an admin kills alice's first session; alice leaves the second.
    b.sigkill();
    op.wait_event("Session Ended", 1);
    std::thread::sleep(Duration::from_millis(1200));
    let out = ctl(&admin, &["sessions", "kill", &a.id]);
    assert!(out.status.success());
    let a_lived = a_started.elapsed();
    assert_eq!(c.stop().unwrap().code(), Some(130), "Ctrl-C exits 130");
    op.wait_event("Session Ended", 3);

    let names = [
        "Session Started",
        "Session Ended",
        "Port Stolen",
        "Port Mirrored",
        "Port Released",
        "Target Copied",
    ];
    let functional: Vec<Value> = op
        .logs()
        .into_iter()
        .filter(|l| names.contains(&l["fields"]["message"].as_str().unwrap_or("")))
        .collect();
    let count = |m: &str| {
        functional
            .iter()
            .filter(|e| e["fields"]["message"] == m)
            .count()
    };
    assert_eq!(
        names.map(count),
        [3, 3, 2, 1, 3, 1],
        "events: {:#?}",
        functional
            .iter()
            .map(|e| e["fields"]["message"].clone())
            .collect::<Vec<_>>()
    );

    let ids: HashSet<&str> = [a.id.as_str(), b.id.as_str(), c.id.as_str()].into();
    let mut client_ids: HashMap<String, String> = HashMap::new();
    for e in &functional {
        check_common(e);
        let msg = s(e, "message");
        let sid = s(e, "session_id");
        assert!(ids.contains(sid), "{msg} for unknown session {sid}");
        // client_id is one value per credential, and the same as status reported.
        let user = s(e, "client_user").to_owned();
        let cid = s(e, "client_id").to_owned();
        if let Some(st) = by_session.get(sid) {
            assert_eq!(st["client_id"], cid.as_str());
            assert_eq!(st["client_user"], user.as_str());
            assert_eq!(st["client_hostname"], s(e, "client_hostname"));
        }
        let key = format!("{user}:{sid}");
        if let Some(prev) = client_ids.insert(key, cid.clone()) {
            assert_eq!(prev, cid);
        }
        match msg {
            "Port Stolen" | "Port Mirrored" | "Port Released" => {
                let port = field(e, "port").as_u64().unwrap();
                let want = if sid == c.id { 8080 } else { 80 };
                assert_eq!(port, want, "{e}");
            }
            "Session Ended" => assert!(field(e, "session_duration").is_u64(), "{e}"),
            _ => {}
        }
    }
    let one = |msg: &str, sid: &str| {
        functional
            .iter()
            .find(|e| e["fields"]["message"] == msg && e["fields"]["session_id"] == sid)
            .unwrap_or_else(|| panic!("no {msg} for {sid}"))
            .clone()
    };
    // http_filter: the filter as written; empty when unfiltered.
    assert_eq!(
        s(&one("Port Stolen", &a.id), "http_filter"),
        "header=x-user: alice"
    );
    assert_eq!(s(&one("Port Stolen", &c.id), "http_filter"), "");
    assert_eq!(s(&one("Port Mirrored", &b.id), "target"), "deployment/api");
    let copied = one("Target Copied", &c.id);
    assert_eq!(field(&copied, "scale_down"), true);
    assert_eq!(s(&copied, "target"), "deployment/web");
    // Durations are whole seconds of the real session's life.
    let a_dur = field(&one("Session Ended", &a.id), "session_duration")
        .as_u64()
        .unwrap();
    assert!(
        a_dur.abs_diff(a_lived.as_secs()) <= 1,
        "logged {a_dur}s, lived {a_lived:?}"
    );
    assert!(s(&one("Session Ended", &b.id), "reason").contains("disconnected"));
    assert!(s(&one("Session Ended", &a.id), "reason").contains("killed by admin"));
    // Same user, different sessions, same client id (one credential).
    assert_eq!(
        s(&one("Session Started", &a.id), "client_id"),
        s(&one("Session Started", &c.id), "client_id")
    );
    assert_ne!(
        s(&one("Session Started", &a.id), "client_id"),
        s(&one("Session Started", &b.id), "client_id")
    );
    // The refusal was logged, naming who tried.
    let refusal = op.events("Session Refused");
    assert_eq!(refusal.len(), 1);
    assert_eq!(refusal[0]["fields"]["client_user"], "bob");

    // The same scenario, as a real Prometheus scraped it.
    let alice_id = s(&one("Session Started", &a.id), "client_id").to_owned();
    prom.expect(
        &format!("mirrord_sessions_create_total{{client_user=\"alice\",user_id=\"{alice_id}\"}}"),
        2.0,
    );
    prom.expect(
        "sum(mirrord_sessions_create_total{client_user=\"bob\"})",
        1.0,
    );
    prom.expect("sum(mirrord_sessions_duration_count)", 3.0);
    prom.expect("mirrord_sessions_active", 0.0);
    prom.expect("mirrord_session_refusals_total{reason=\"conflict\"}", 1.0);
    prom.expect(
        &format!(
            "mirrord_stolen_requests_count{{session_id=\"{}\",target=\"deployment/api\"}}",
            a.id
        ),
        1.0,
    );
    prom.expect(&format!("mirrord_stolen_connections_count{{session_id=\"{}\",target=\"deployment/web\",port=\"8080\"}}", c.id), 1.0);
    prom.expect(
        "mirrord_bypassed_requests_total{target=\"deployment/api\"}",
        1.0,
    );
    prom.expect_that(
        &format!(
            "mirrord_operator_ping_latency_count{{session_id=\"{}\",k8s_user=\"alice\"}}",
            a.id
        ),
        "pings observed",
        |v| v >= 1.0,
    );
    // A mirror steals nothing: no stolen-traffic series for bob's session.
    assert!(prom
        .query(&format!(
            "mirrord_stolen_requests_count{{session_id=\"{}\"}}",
            b.id
        ))
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_every_metric_with_the_right_values() {
    let target = HttpServer::start("target").await;
    let dev = HttpServer::start("dev").await;
    let api = free_addr();
    let tcp = free_addr();
    let targets = upstream_target("api", 80, api, target.addr)
        + &upstream_target("tcp", 9000, tcp, target.addr);
    let op = Operator::start_with_metrics(&targets, "ping_interval = \"100ms\"");
    let prom = Prometheus::start(op.metrics.unwrap());
    let alice = op.issue("alice");
    let bob = op.issue("bob");
    let devp = format!("80={}", dev.addr);
    let a = Session::start(
        &alice,
        &[
            "steal",
            "--target",
            "api",
            "--port",
            &devp,
            "--header",
            "x-user: alice",
        ],
    )
    .unwrap();
    let b = Session::start(
        &bob,
        &[
            "steal",
            "--target",
            "tcp",
            "--port",
            &format!("9000={}", dev.addr),
        ],
    )
    .unwrap();
    let _ = Session::start(&bob, &["steal", "--target", "api", "--port", &devp])
        .err()
        .unwrap();

    let mut conn = H1::connect(api).await;
    for i in 0..3 {
        conn.get(&format!("/s{i}"), &[("x-user", "alice")]).await;
    }
    for i in 0..2 {
        conn.get(&format!("/b{i}"), &[]).await;
        get(tcp, "/conn", &[]).await;
    }

    let (a_id, b_id) = (a.id.clone(), b.id.clone());
    prom.expect(&format!("mirrord_stolen_requests_count{{session_id=\"{a_id}\",port=\"80\",namespace=\"default\",target=\"deployment/api\"}}"), 3.0);
    prom.expect(&format!("mirrord_stolen_connections_count{{session_id=\"{b_id}\",port=\"9000\",target=\"deployment/tcp\"}}"), 2.0);
    prom.expect("mirrord_bypassed_requests_total{target=\"deployment/api\",port=\"80\",namespace=\"default\"}", 2.0);
    prom.expect(
        "sum(mirrord_sessions_create_total{client_user=\"alice\"})",
        1.0,
    );
    prom.expect(
        "sum(mirrord_sessions_create_total{client_user=\"bob\"})",
        1.0,
    );
    prom.expect(
        "count(mirrord_sessions_create_total{user_id!=\"\",client_hostname!=\"\"})",
        2.0,
    );
    prom.expect("mirrord_sessions_active", 2.0);
    prom.expect("mirrord_session_refusals_total{reason=\"conflict\"}", 1.0);
    prom.expect(
        "mirrord_port_locks{target=\"deployment/api\",port=\"80\",mode=\"steal\"}",
        1.0,
    );
    prom.expect("mirrord_build_info", 1.0);
    prom.expect("count(mirrord_license_valid_seconds)", 1.0);
    prom.expect_that(
        &format!("mirrord_operator_ping_latency_count{{session_id=\"{a_id}\",k8s_user=\"alice\",target=\"deployment/api\"}}"),
        "pings observed",
        |v| v >= 3.0,
    );
    prom.expect_that(
        &format!("histogram_quantile(0.99, rate(mirrord_operator_ping_latency_bucket{{session_id=\"{a_id}\"}}[10s]))"),
        "a p99 under 100 ms on loopback",
        |v| v > 0.0 && v < 0.1,
    );
    // user_id in metrics is the logs' client_id; k8s_user is client_user.
    let started = op.wait_event("Session Started", 2);
    let alice_id = started
        .iter()
        .find(|e| e["fields"]["client_user"] == "alice")
        .unwrap()["fields"]["client_id"]
        .as_str()
        .unwrap()
        .to_owned();
    prom.expect(
        &format!("mirrord_sessions_create_total{{user_id=\"{alice_id}\",client_user=\"alice\"}}"),
        1.0,
    );

    drop(a);
    drop(b);
    prom.expect("mirrord_sessions_active", 0.0);
    prom.expect("sum(mirrord_sessions_duration_count)", 2.0);
    prom.expect_that(
        "sum(mirrord_sessions_duration_sum)",
        "positive durations",
        |v| v > 0.0,
    );
    prom.expect("sum(mirrord_port_locks)", 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_finds_nothing_but_the_spec_names_and_series_expire_after_grace() {
    let target = HttpServer::start("target").await;
    let dev = HttpServer::start("dev").await;
    let api = free_addr();
    let op = Operator::start_with_metrics(
        &upstream_target("api", 80, api, target.addr),
        "ping_interval = \"100ms\"\nmetrics_grace = \"2s\"",
    );
    let alice = op.issue("alice");
    let devp = format!("80={}", dev.addr);
    let a = Session::start(&alice, &["steal", "--target", "api", "--port", &devp]).unwrap();
    get(api, "/", &[]).await;
    std::thread::sleep(Duration::from_millis(300));

    let text = op.scrape();
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed (Debian package `prometheus`)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let mut problems: Vec<&str> = report.lines().filter(|l| !l.trim().is_empty()).collect();
    problems.sort();
    assert_eq!(
        problems,
        vec![
            "mirrord_stolen_connections_count counter metrics should have \"_total\" suffix",
            "mirrord_stolen_connections_count non-histogram and non-summary metrics should not have \"_count\" suffix",
            "mirrord_stolen_requests_count counter metrics should have \"_total\" suffix",
            "mirrord_stolen_requests_count non-histogram and non-summary metrics should not have \"_count\" suffix",
        ],
        "promtool on:\n{text}"
    );
    for name in [
        "mirrord_license_valid_seconds",
        "mirrord_sessions_create_total",
        "mirrord_operator_ping_latency_bucket",
        "mirrord_stolen_connections_count{",
        "mirrord_stolen_requests_count{",
        "mirrord_port_locks{",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    assert!(text.contains(&a.id));

    // Ended: the session's series stay for the grace period, then go.
    drop(a);
    op.wait_event("Session Ended", 1);
    assert!(op.scrape().contains(
        &op.events("Session Started")[0]["fields"]["session_id"]
            .as_str()
            .unwrap()
            .to_owned()
    ));
    let sid = op.events("Session Started")[0]["fields"]["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let gone = wait_for(Duration::from_secs(10), || {
        (!op.scrape().contains(&sid)).then_some(())
    });
    assert!(
        gone.is_some(),
        "series of {sid} still exported:\n{}",
        op.scrape()
    );
    let text = op.scrape();
    assert!(
        text.contains("mirrord_sessions_create_total{"),
        "per-user series must stay"
    );
    // A target nobody holds a port of any more is not exported at 0 forever.
    assert!(
        !text.contains("mirrord_port_locks{"),
        "idle lock series of deployment/api still exported:\n{text}"
    );
    assert!(text.contains("mirrord_sessions_duration_count{"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_and_level_follow_the_environment() {
    let target = HttpServer::start("target").await;
    let listen = free_addr();
    // Human-readable by default, INFO.
    let op = Operator::start_with(OperatorOptions {
        targets: upstream_target("api", 80, listen, target.addr),
        sessions: String::new(),
        env: vec![("OPERATOR_JSON_LOG".into(), "false".into())],
        ..Default::default()
    });
    let alice = op.issue("alice");
    drop(
        Session::start(
            &alice,
            &[
                "mirror",
                "--target",
                "api",
                "--port",
                &format!("80={}", idle_local()),
            ],
        )
        .unwrap(),
    );
    let line = op
        .stdout
        .wait(Duration::from_secs(10), |l| l.contains("Session Started"))
        .unwrap();
    assert!(serde_json::from_str::<Value>(&line).is_err(), "{line}");
    assert!(
        line.contains("INFO") && line.contains("client_user=alice"),
        "{line}"
    );
    assert!(!op.stdout.text().contains("DEBUG"));
    drop(op);

    // OPERATOR_LOG_LEVEL=debug and RUST_LOG=mirrord=debug both turn debug lines on.
    for (k, v) in [
        ("OPERATOR_LOG_LEVEL", "debug"),
        ("RUST_LOG", "mirrord=debug"),
    ] {
        let op = Operator::start_with(OperatorOptions {
            targets: upstream_target("api", 80, free_addr(), target.addr),
            sessions: String::new(),
            env: vec![(k.into(), v.into())],
            ..Default::default()
        });
        let alice = op.issue("alice");
        drop(
            Session::start(
                &alice,
                &[
                    "mirror",
                    "--target",
                    "api",
                    "--port",
                    &format!("80={}", idle_local()),
                ],
            )
            .unwrap(),
        );
        op.wait_event("Session Ended", 1);
        assert!(
            op.logs().iter().any(|l| l["level"] == "DEBUG"),
            "{k}={v}: no debug lines:\n{}",
            op.stdout.text()
        );
    }
}

/// `increase()` over a counter series that is born at 1 reads 0: the first refusal of a
/// reason would vanish from "Refused sessions by reason" and the alerts built on it. Every
/// reason's series exists at 0 from the start, so the first refusal is an increase.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_refusal_of_a_reason_is_an_increase_prometheus_sees() {
    let target = HttpServer::start("target").await;
    let dev = HttpServer::start("dev").await;
    let api = free_addr();
    let op = Operator::start_with_metrics(&upstream_target("api", 80, api, target.addr), "");
    let prom = Prometheus::start(op.metrics.unwrap());
    // Scraped at 0 before anything happens.
    prom.expect("mirrord_session_refusals_total{reason=\"conflict\"}", 0.0);
    prom.expect("count(mirrord_session_refusals_total)", 9.0);
    std::thread::sleep(Duration::from_secs(2));

    let devp = format!("80={}", dev.addr);
    let _holder =
        Session::start(&op.issue("alice"), &["steal", "-t", "api", "--port", &devp]).unwrap();
    let refused = Session::start(&op.issue("bob"), &["steal", "-t", "api", "--port", &devp]);
    assert!(refused.is_err(), "bob's steal of a held port is refused");
    prom.expect_that(
        "increase(mirrord_session_refusals_total{reason=\"conflict\"}[1m])",
        "the one refusal (increase extrapolates slightly above 1)",
        |v| v >= 0.9,
    );
}
