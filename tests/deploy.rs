//! The files under `deploy/` against what the operator really emits: a real operator under
//! a scripted workload, scraped by a real Prometheus. Grafana, Loki, DataDog, fluentd and
//! Kibana cannot run here; their files are checked against the operator's real output.

use mirrord_e2e::prom::Prometheus;
use mirrord_e2e::servers::{get, HttpServer, H1};
use mirrord_e2e::vendor::Vendor;
use mirrord_e2e::*;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

fn json(path: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(deploy(path)).unwrap()).unwrap()
}

fn grafana_panels() -> Vec<Value> {
    json("grafana/mirrord-operator.json")["panels"]
        .as_array()
        .unwrap()
        .clone()
}

/// (datasource uid, expr) of every query in the Grafana dashboard.
fn grafana_queries() -> Vec<(String, String)> {
    grafana_panels()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| {
            (
                t["datasource"]["uid"].as_str().unwrap().to_owned(),
                t["expr"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// What Grafana puts in place of its variables, for a short test run.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "1m")
        .replace("$__range", "5m")
        .replace("$user", ".*")
        .replace("$target", ".*")
}

fn captures(re: &str, text: &str) -> BTreeSet<String> {
    regex_lite(re, text)
}

/// A tiny matcher for `prefix([a-z_]+)` patterns (keeps the e2e crate free of a regex dep).
fn regex_lite(prefix: &str, text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        let after = &rest[i + prefix.len()..];
        let name: String = after
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.insert(name);
        }
        rest = after;
    }
    out
}

#[test]
fn grafana_dashboard_is_structurally_sound() {
    let dash = json("grafana/mirrord-operator.json");
    let panels = grafana_panels();
    let mut ids = BTreeSet::new();
    for p in &panels {
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "duplicate panel id {}",
            p["id"]
        );
    }
    let rect = |p: &Value| {
        let g = &p["gridPos"];
        let v = |k: &str| g[k].as_u64().unwrap();
        (v("x"), v("y"), v("w"), v("h"))
    };
    for (i, a) in panels.iter().enumerate() {
        let (x, y, w, h) = rect(a);
        assert!(x + w <= 24, "panel {} sticks out of the grid", a["title"]);
        for b in &panels[i + 1..] {
            let (x2, y2, w2, h2) = rect(b);
            let overlap = x < x2 + w2 && x2 < x + w && y < y2 + h2 && y2 < y + h;
            assert!(!overlap, "panels {} and {} overlap", a["title"], b["title"]);
        }
    }
    let vars: HashMap<String, Value> = dash["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap().to_owned(), v.clone()))
        .collect();
    assert_eq!(vars["datasource"]["type"], "datasource");
    assert_eq!(vars["datasource"]["query"], "prometheus");
    assert_eq!(vars["loki"]["type"], "datasource");
    assert_eq!(vars["loki"]["query"], "loki");
    for (name, v) in &vars {
        if v["type"] == "query" {
            assert_eq!(v["datasource"]["uid"], "${datasource}", "variable {name}");
        }
    }
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let uid = p["datasource"]["uid"].as_str().unwrap();
        let kind = p["datasource"]["type"].as_str().unwrap();
        assert!(
            (uid, kind) == ("${datasource}", "prometheus") || (uid, kind) == ("${loki}", "loki"),
            "panel {} uses a fixed data source {uid}",
            p["title"]
        );
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for t in targets {
            assert_eq!(t["datasource"], p["datasource"], "panel {}", p["title"]);
        }
    }
}

#[test]
fn kibana_saved_objects_reference_each_other() {
    let text = std::fs::read_to_string(deploy("kibana/mirrord-operator.ndjson")).unwrap();
    let objs: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let have: BTreeSet<(String, String)> = objs
        .iter()
        .map(|o| {
            (
                o["type"].as_str().unwrap().to_owned(),
                o["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(have.len(), objs.len(), "duplicate saved object ids");
    for kind in ["index-pattern", "search", "dashboard"] {
        assert!(have.iter().any(|(t, _)| t == kind), "no {kind}");
    }
    for o in &objs {
        for r in o["references"].as_array().unwrap() {
            let key = (
                r["type"].as_str().unwrap().to_owned(),
                r["id"].as_str().unwrap().to_owned(),
            );
            assert!(
                have.contains(&key),
                "{} references missing {key:?}",
                o["id"]
            );
        }
        if o["type"] == "dashboard" {
            let panels: Vec<Value> =
                serde_json::from_str(o["attributes"]["panelsJSON"].as_str().unwrap()).unwrap();
            let names: BTreeSet<&str> = o["references"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["name"].as_str().unwrap())
                .collect();
            for p in &panels {
                assert!(names.contains(p["panelRefName"].as_str().unwrap()));
            }
        }
        if o["type"] == "index-pattern" {
            assert_eq!(o["attributes"]["title"], "logstash-*");
            assert_eq!(o["attributes"]["timeFieldName"], "@timestamp");
        }
    }
}

#[test]
fn prometheus_rules_pass_promtool() {
    let rules = [
        deploy("prometheus/alerts.yml"),
        deploy("prometheus/recording.yml"),
    ];
    let out = std::process::Command::new("promtool")
        .arg("check")
        .arg("rules")
        .args(&rules)
        .output()
        .expect("promtool installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new("promtool")
        .args(["test", "rules"])
        .arg(deploy("prometheus/tests/alerts.test.yml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr)
    );
}

/// Every metric and label a query names must be in the exposition.
fn check_names(expr: &str, exposition: &str) {
    let metrics = captures("mirrord_", expr);
    assert!(!metrics.is_empty(), "no metric in {expr}");
    let lines: Vec<&str> = exposition.lines().filter(|l| !l.starts_with('#')).collect();
    for m in &metrics {
        let name = format!("mirrord_{m}");
        assert!(
            lines.iter().any(|l| l.starts_with(&name)),
            "{name} is not emitted (in {expr})"
        );
    }
    // Labels: inside `by (...)` and in selectors `{label=...}`.
    let mut labels = BTreeSet::new();
    for part in expr.split("by (").skip(1) {
        for l in part.split(')').next().unwrap().split(',') {
            labels.insert(l.trim().to_owned());
        }
    }
    for part in expr.split('{').skip(1) {
        for m in part.split('}').next().unwrap().split(',') {
            let l: String = m
                .trim()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !l.is_empty() {
                labels.insert(l);
            }
        }
    }
    labels.remove("le");
    for l in labels {
        let used = lines.iter().any(|line| {
            metrics
                .iter()
                .any(|m| line.starts_with(&format!("mirrord_{m}")))
                && line.contains(&format!("{l}=\""))
        });
        assert!(
            used,
            "label {l} is not on any series of {metrics:?} (in {expr})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_queries_and_log_fields_match_a_real_operator() {
    let target = HttpServer::start("target").await;
    let dev = HttpServer::start("dev").await;
    let vendor = Vendor::new();
    let license = vendor.issue("l.json", 60, 10);
    let api = free_addr();
    let web = free_addr();
    let op = Operator::start_with(OperatorOptions {
        targets: upstream_target("api", 80, api, target.addr)
            + &command_target("web", 8080, web, 1),
        sessions: "ping_interval = \"100ms\"".into(),
        env: vec![
            ("OPERATOR_METRICS_ENABLED".into(), "true".into()),
            ("OPERATOR_METRICS_ADDR".into(), free_addr().to_string()),
            (
                "OPERATOR_LICENSE_PATH".into(),
                license.display().to_string(),
            ),
        ],
        extra_config: vendor.config(),
        ..Default::default()
    });
    let prom = Prometheus::start(op.metrics.unwrap());
    prom.expect("up{job=\"mirrord-operator\"}", 1.0);

    // The workload: filtered steal with matched and unmatched requests, an unfiltered steal
    // on a scaled-down copy with connections, a mirror, a refusal, an ended session.
    // bob scales a target down: an admin's right.
    let (alice, bob, carol) = (op.issue("alice"), op.issue_admin("bob"), op.issue("carol"));
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
    let _b = Session::start(
        &bob,
        &[
            "steal",
            "--target",
            "web",
            "--port",
            &format!("8080={}", dev.addr),
            "--copy-target",
            "--scale-down",
        ],
    )
    .unwrap();
    let _c = Session::start(&carol, &["mirror", "--target", "api", "--port", &devp]).unwrap();
    let _ = Session::start(&carol, &["steal", "--target", "api", "--port", &devp])
        .err()
        .unwrap();
    for round in 0..3 {
        let mut conn = H1::connect(api).await;
        conn.get(&format!("/s{round}"), &[("x-user", "alice")])
            .await;
        conn.get(&format!("/p{round}"), &[]).await;
        get(web, "/w", &[]).await;
        std::thread::sleep(Duration::from_millis(700));
    }
    drop(a);
    op.wait_event("Session Ended", 1);
    // Let Prometheus see the end state in a few scrapes.
    prom.expect("sum(mirrord_sessions_duration_count)", 1.0);
    std::thread::sleep(Duration::from_secs(2));
    let exposition = op.scrape();

    // PromQL: Grafana's panels and the recording rules.
    let mut exprs: Vec<String> = grafana_queries()
        .into_iter()
        .filter(|(ds, _)| ds == "${datasource}")
        .map(|(_, e)| substitute(&e))
        .collect();
    let recording = std::fs::read_to_string(deploy("prometheus/recording.yml")).unwrap();
    exprs.extend(
        recording
            .lines()
            .filter_map(|l| l.trim().strip_prefix("expr: ").map(str::to_owned)),
    );
    assert!(exprs.len() >= 20, "{} expressions", exprs.len());
    for e in &exprs {
        check_names(e, &exposition);
        let result = prom.query(e);
        assert!(!result.is_empty(), "no series for {e}");
    }

    // Log fields referenced by Grafana (Loki), DataDog and Kibana all occur in the output.
    let logs = op.logs();
    let seen_fields: BTreeSet<String> = logs
        .iter()
        .filter_map(|l| l["fields"].as_object())
        .flat_map(|f| f.keys().cloned())
        .collect();
    let seen_messages: BTreeSet<String> = logs
        .iter()
        .filter_map(|l| l["fields"]["message"].as_str().map(str::to_owned))
        .collect();
    let loki: String = grafana_queries()
        .into_iter()
        .filter(|(ds, _)| ds == "${loki}")
        .map(|(_, e)| e)
        .collect();
    let datadog =
        std::fs::read_to_string(deploy("datadog/mirrord-operator-dashboard.json")).unwrap();
    let kibana = std::fs::read_to_string(deploy("kibana/mirrord-operator.ndjson")).unwrap();
    for (source, fields) in [
        ("grafana", captures("fields.", &loki)),
        ("datadog", captures("@fields.", &datadog)),
        ("kibana", captures("fields.", &kibana)),
    ] {
        assert!(fields.len() >= 5, "{source}: {fields:?}");
        for f in fields {
            assert!(seen_fields.contains(&f), "{source} references fields.{f}, which the operator never logged; it logs {seen_fields:?}");
        }
    }
    for m in [
        "Session Started",
        "Session Ended",
        "Port Stolen",
        "Port Mirrored",
        "Port Released",
        "Target Copied",
    ] {
        assert!(seen_messages.contains(m), "{m} not in the workload's log");
        assert!(
            loki.contains(m) && datadog.contains(m) && kibana.contains(m),
            "{m} missing from a dashboard"
        );
    }
    assert!(logs
        .iter()
        .any(|l| l["fields"]["message"] == "Target Copied" && l["fields"]["scale_down"] == true));

    // DataDog metrics map through the Agent config to emitted metrics.
    let conf = std::fs::read_to_string(deploy("datadog/conf.yaml")).unwrap();
    let renamed: HashMap<String, String> = conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
        .filter_map(|l| l.split_once(": "))
        .map(|(raw, new)| (new.trim().to_owned(), raw.trim().to_owned()))
        .collect();
    let dd_metrics = captures("mirrord.", &datadog);
    assert!(dd_metrics.len() >= 8, "{dd_metrics:?}");
    for m in dd_metrics {
        let raw = renamed
            .get(&m)
            .unwrap_or_else(|| panic!("mirrord.{m} is not produced by conf.yaml"));
        assert!(
            exposition.contains(&format!("\n{raw}")),
            "{raw} (for mirrord.{m}) is not emitted"
        );
    }
}

/// fluentd reads the operator's `timestamp` as UTC with the shipped format. fluentd itself
/// cannot be installed here (not in the Debian index these machines reach, and RubyGems is
/// not reachable), so the config is checked against a real operator's log lines: the
/// parse section names the field, the format and the zone, and every timestamp the
/// operator wrote parses with that format and ends in `Z`.
#[test]
fn fluentd_reads_the_operator_timestamps_as_utc() {
    let conf = std::fs::read_to_string(deploy("fluentd/mirrord-operator.conf")).unwrap();
    let parse = &conf[conf.find("<parse>").unwrap()..conf.find("</parse>").unwrap()];
    let setting = |key: &str| {
        parse
            .lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(key).map(str::trim))
            .unwrap_or_else(|| panic!("{key} missing from the parse section:\n{parse}"))
            .to_owned()
    };
    assert_eq!(setting("time_key "), "timestamp");
    assert_eq!(setting("utc "), "true", "the zone must be explicit");
    let format = setting("time_format ");
    assert_eq!(format, "%Y-%m-%dT%H:%M:%S.%NZ");
    // fluentd's %N (fraction) is chrono's %.f with the dot folded in.
    let chrono_format = format.replace(".%N", "%.f");

    let op = Operator::start("", "");
    let logs = op.logs();
    assert!(!logs.is_empty());
    for line in logs {
        let ts = line["timestamp"].as_str().unwrap();
        assert!(ts.ends_with('Z'), "not UTC: {ts}");
        chrono::NaiveDateTime::parse_from_str(ts, &chrono_format)
            .unwrap_or_else(|e| panic!("{ts} does not parse with {format}: {e}"));
    }
}

/// deploy/datadog/conf.yaml checked by DataDog's own parser, not by reading: the Agent's
/// OpenMetrics check (PyPI `datadog-checks-base`, run by `scripts/datadog-check`) scrapes a
/// real operator under a workload that produces every metric, and each mapping in the
/// conf must yield a submitted `mirrord.*` metric. (The check strips `_total` from counter
/// names before it looks them up, so a key ending in `_total` maps nothing.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datadog_check_submits_every_metric_conf_yaml_maps() {
    let target = HttpServer::start("target").await;
    let dev = HttpServer::start("dev").await;
    let (api, tcp) = (free_addr(), free_addr());
    let targets = upstream_target("api", 80, api, target.addr)
        + &upstream_target("tcp", 9000, tcp, target.addr);
    let op = Operator::start_with_metrics(&targets, "ping_interval = \"100ms\"");
    let (alice, bob) = (op.issue("alice"), op.issue("bob"));
    let devp = format!("80={}", dev.addr);
    let a = Session::start(
        &alice,
        &[
            "steal",
            "-t",
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
            "-t",
            "tcp",
            "--port",
            &format!("9000={}", dev.addr),
        ],
    )
    .unwrap();
    assert!(Session::start(&bob, &["steal", "-t", "api", "--port", &devp]).is_err());
    get(api, "/mine", &[("x-user", "alice")]).await;
    get(api, "/theirs", &[]).await;
    get(tcp, "/conn", &[]).await;
    let mut ended = Session::start(&bob, &["mirror", "-t", "api", "--port", &devp]).unwrap();
    ended.stop();
    op.wait_event("Session Ended", 1);
    std::thread::sleep(Duration::from_millis(500));

    let endpoint = format!("http://{}/metrics", op.metrics.unwrap());
    let out = std::process::Command::new(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/datadog-check"),
    )
    .arg(&endpoint)
    .output()
    .expect("run scripts/datadog-check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the DataDog check failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let submitted: Value = serde_json::from_str(stdout.trim()).unwrap();
    let submitted: Vec<&str> = submitted["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();

    let conf = std::fs::read_to_string(deploy("datadog/conf.yaml")).unwrap();
    let mapped: Vec<&str> = conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- mirrord_"))
        .map(|l| l.split(':').nth(1).unwrap().trim())
        .collect();
    assert_eq!(mapped.len(), 11, "{conf}");
    for name in mapped {
        let full = format!("mirrord.{name}");
        assert!(
            submitted.iter().any(|s| *s == full || s.starts_with(&format!("{full}."))),
            "conf.yaml maps {full} but DataDog's check submitted no such metric; it submitted {submitted:?}"
        );
    }
    drop((a, b));
}

/// The expression of recording rule `name` in deploy/prometheus/recording.yml.
fn recording_rule(name: &str) -> String {
    let text = std::fs::read_to_string(deploy("prometheus/recording.yml")).unwrap();
    let at = text.find(&format!("record: {name}")).unwrap();
    let expr = text[at..].lines().nth(1).unwrap().trim();
    expr.strip_prefix("expr: ").unwrap().to_owned()
}

/// A small team's first hour: three users with one session each and one refusal. A counter
/// series born at its first value reads 0 in `increase()`, so the panels and the recording
/// rule must count new series too, and every refusal reason exists at 0 from the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_sessions_and_first_refusal_count_in_panels_and_rules() {
    let target = HttpServer::start("target").await;
    let dev = HttpServer::start("dev").await;
    let api = free_addr();
    let op = Operator::start_with_metrics(&upstream_target("api", 80, api, target.addr), "");
    let prom = Prometheus::start(op.metrics.unwrap());
    prom.expect("up", 1.0);
    std::thread::sleep(Duration::from_secs(2));

    let devp = format!("80={}", dev.addr);
    let sessions: Vec<Session> = ["alice", "bob", "carol"]
        .iter()
        .map(|u| Session::start(&op.issue(u), &["mirror", "-t", "api", "--port", &devp]).unwrap())
        .collect();
    let refused = Session::start(
        &op.issue("dave"),
        &["steal", "-t", "api", "--port", &devp, "--header", "("],
    );
    assert!(refused.is_err(), "an invalid filter is refused");

    let rule = recording_rule("mirrord:sessions_created:increase1h");
    prom.expect(&format!("sum({rule})"), 3.0);
    let per_user = grafana_queries()
        .into_iter()
        .map(|(_, e)| e)
        .find(|e| e.contains("increase(mirrord_sessions_create_total"))
        .expect("the sessions-created-per-user panel");
    prom.expect(&format!("sum({})", substitute(&per_user)), 3.0);
    let refusals = grafana_queries()
        .into_iter()
        .map(|(_, e)| e)
        .find(|e| e.contains("mirrord_session_refusals_total"))
        .expect("the refusals panel");
    prom.expect_that(
        &format!("sum({})", substitute(&refusals)),
        "the one refusal",
        |v| v >= 0.9,
    );
    drop(sessions);
}
