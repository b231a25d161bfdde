//! License, seats and policies, with licenses made by the real `license keygen|issue`.

use mirrord_e2e::servers::{get, HttpServer};
use mirrord_e2e::vendor::Vendor;
use mirrord_e2e::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn licensed(
    vendor: &Vendor,
    license: Option<&Path>,
    targets: String,
    state_dir: Option<PathBuf>,
) -> Operator {
    let mut env = vec![
        ("OPERATOR_METRICS_ENABLED".to_owned(), "true".to_owned()),
        ("OPERATOR_METRICS_ADDR".to_owned(), free_addr().to_string()),
    ];
    if let Some(l) = license {
        env.push(("OPERATOR_LICENSE_PATH".into(), l.display().to_string()));
    }
    Operator::start_with(OperatorOptions {
        targets,
        env,
        extra_config: vendor.config(),
        state_dir,
        ..Default::default()
    })
}

fn metric(op: &Operator, name: &str) -> f64 {
    op.scrape()
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not exported"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_expired_tampered_wrong_key_and_missing_licenses() {
    let target = HttpServer::start("target").await;
    let dev = HttpServer::start("dev").await;
    let vendor = Vendor::new();
    let port = format!("80={}", dev.addr);
    let args = ["steal", "--target", "api", "--port", port.as_str()];

    // Valid: sessions start; status and the metric show the license.
    let valid = vendor.issue("valid.json", 30, 5);
    let listen = free_addr();
    let op = licensed(
        &vendor,
        Some(&valid),
        upstream_target("api", 80, listen, target.addr),
        None,
    );
    let alice = op.issue("alice");
    let s = Session::start(&alice, &args).unwrap();
    assert_eq!(get(listen, "/", &[]).await.1, "dev GET /");
    let st = status(&alice);
    assert_eq!(st["license"]["name"], "Ada Lovelace");
    assert_eq!(st["license"]["organization"], "Acme");
    assert_eq!(st["license"]["seats"], 5);
    assert_eq!(st["license"]["seats_used"], 1);
    let text = String::from_utf8(ctl(&alice, &["status"]).stdout).unwrap();
    assert!(
        text.contains("License: Ada Lovelace (Acme), expires ") && text.contains("Seats: 1/5 used"),
        "{text}"
    );
    let left = wait_for(Duration::from_secs(5), || {
        let v = metric(&op, "mirrord_license_valid_seconds");
        (v > 0.0).then_some(v)
    })
    .unwrap();
    assert!(left > 29.0 * 86_400.0 && left <= 31.0 * 86_400.0, "{left}");
    assert!(op.stdout.text().contains("license loaded"));
    drop(s);
    drop(op);

    // Expired, tampered, signed by another vendor, missing: refused with the reason.
    let expired = vendor.issue("expired.json", -3, 5);
    let tampered = vendor.issue("tampered.json", 30, 5);
    let t = std::fs::read_to_string(&tampered)
        .unwrap()
        .replace("\"seats\": 5", "\"seats\": 5000");
    std::fs::write(&tampered, t).unwrap();
    let other_vendor = Vendor::new();
    let other = other_vendor.issue("other.json", 30, 5);
    let expired_day = (chrono::Utc::now() - chrono::Duration::days(3))
        .date_naive()
        .to_string();
    for (license, expect) in [
        (
            Some(expired.as_path()),
            format!("expired at the end of {expired_day}"),
        ),
        (
            Some(tampered.as_path()),
            "signature does not verify".to_owned(),
        ),
        (
            Some(other.as_path()),
            "signature does not verify".to_owned(),
        ),
        (None, "no license: this operator requires one".to_owned()),
    ] {
        let op = licensed(
            &vendor,
            license,
            upstream_target("api", 80, free_addr(), target.addr),
            None,
        );
        let alice = op.issue("alice");
        let err = Session::start(&alice, &args).err().expect("refused");
        assert!(err.contains(&expect), "{license:?}: {err}");
        // Metrics and status keep working.
        assert_eq!(metric(&op, "mirrord_license_valid_seconds"), 0.0);
        assert!(op
            .scrape()
            .contains("mirrord_session_refusals_total{reason=\"license\"} 1"));
        let st = status(&alice);
        assert!(st["license"]["problem"].as_str().unwrap().contains(&expect));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_on_change_updates_the_metric_and_spares_running_sessions() {
    let target = HttpServer::start("target").await;
    let dev = HttpServer::start("dev").await;
    let vendor = Vendor::new();
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("license.json");
    std::fs::copy(vendor.issue("a.json", 30, 5), &live).unwrap();
    let listen = free_addr();
    let op = licensed(
        &vendor,
        Some(&live),
        upstream_target("api", 80, listen, target.addr),
        None,
    );
    let alice = op.issue("alice");
    let port = format!("80={}", dev.addr);
    let running = Session::start(
        &alice,
        &[
            "steal", "--target", "api", "--port", &port, "--header", "x: 1",
        ],
    )
    .unwrap();
    wait_for(Duration::from_secs(5), || {
        (metric(&op, "mirrord_license_valid_seconds") > 29.0 * 86_400.0).then_some(())
    })
    .expect("30 days");

    // A renewal: the metric follows within a couple of seconds.
    std::fs::copy(vendor.issue("b.json", 90, 5), &live).unwrap();
    wait_for(Duration::from_secs(5), || {
        (metric(&op, "mirrord_license_valid_seconds") > 89.0 * 86_400.0).then_some(())
    })
    .expect("metric follows the renewed license");

    // Replaced by an expired one: new sessions refused, the running one untouched.
    std::fs::copy(vendor.issue("c.json", -1, 5), &live).unwrap();
    wait_for(Duration::from_secs(5), || {
        (metric(&op, "mirrord_license_valid_seconds") == 0.0).then_some(())
    })
    .expect("metric drops to 0");
    let err = Session::start(&alice, &["mirror", "--target", "api", "--port", &port])
        .err()
        .unwrap();
    assert!(err.contains("expired"), "{err}");
    assert_eq!(get(listen, "/", &[("x", "1")]).await.1, "dev GET /");
    assert_eq!(status(&alice)["sessions"].as_array().unwrap().len(), 1);
    drop(running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seat_limit_holds_across_restart() {
    let target = HttpServer::start("target").await;
    let vendor = Vendor::new();
    let license = vendor.issue("l.json", 30, 2);
    let state = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let targets = upstream_target("api", 80, listen, target.addr);
    let port = format!("80={}", idle_local());
    let args = ["mirror", "--target", "api", "--port", port.as_str()];

    let op = licensed(
        &vendor,
        Some(&license),
        targets.clone(),
        Some(state.path().to_owned()),
    );
    let keep = state.path();
    let (alice, bob, carol) = (
        op.issue_in("alice", keep),
        op.issue_in("bob", keep),
        op.issue_in("carol", keep),
    );
    drop(Session::start(&alice, &args).unwrap());
    drop(Session::start(&bob, &args).unwrap());
    drop(Session::start(&alice, &args).unwrap()); // a known client takes no new seat
    let err = Session::start(&carol, &args).err().unwrap();
    assert!(err.contains("Maximum seat count (2) reached"), "{err}");
    assert!(op
        .scrape()
        .contains("mirrord_session_refusals_total{reason=\"seats\"} 1"));
    drop(op);

    let op = licensed(
        &vendor,
        Some(&license),
        targets,
        Some(state.path().to_owned()),
    );
    for c in [&alice, &bob, &carol] {
        op.adopt(c);
    }
    let err = Session::start(&carol, &args).err().unwrap();
    assert!(err.contains("Maximum seat count (2) reached"), "{err}");
    drop(Session::start(&bob, &args).unwrap());
    assert_eq!(status(&alice)["license"]["seats_used"], 2);
    drop(op);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_policy_kind_refuses_and_names_itself() {
    let target = HttpServer::start("target").await;
    let targets = upstream_target("api", 80, free_addr(), target.addr)
        + &upstream_target("payments-eu", 80, free_addr(), target.addr)
        + &upstream_target("db", 80, free_addr(), target.addr);
    let policies = r#"
[[policies]]
name = "api-filtered-only"
target = "deployment/api"
block = ["unfiltered_steal"]
require_header_filter = "^x-user: "
[[policies]]
name = "payments-hands-off"
target = "deployment/payments-*"
block = ["steal"]
[[policies]]
name = "db-no-mirror"
target = "deployment/db"
namespace = "default"
block = ["mirror"]
"#;
    let op = Operator::start_with(OperatorOptions {
        targets,
        extra_config: policies.into(),
        ..Default::default()
    });
    let mallory = op.issue("mallory");
    let p = format!("80={}", idle_local());
    for (args, expect) in [
        (vec!["steal", "--target", "api", "--port", &p], "blocked by policy `api-filtered-only`: unfiltered steal of port 80 of deployment/api is not allowed"),
        (vec!["steal", "--target", "payments-eu", "--port", &p, "--header", "x: 1"], "blocked by policy `payments-hands-off`: stealing from deployment/payments-eu"),
        (vec!["mirror", "--target", "db", "--port", &p], "blocked by policy `db-no-mirror`: mirroring deployment/db"),
    ] {
        let err = Session::start(&mallory, &args).err().expect("refused");
        assert!(err.contains(expect), "{args:?}: {err}");
    }
    // require_header_filter narrows a steal rather than judging its text (tests/authz.rs).
    let narrowed = Session::start(
        &mallory,
        &[
            "steal",
            "--target",
            "api",
            "--port",
            &p,
            "--header",
            "x-team: a",
        ],
    )
    .unwrap();
    assert!(narrowed
        .stdout
        .text()
        .contains("header=x-team: a and header=^x-user: "));
    drop(narrowed);
    // What policies allow still works.
    drop(
        Session::start(
            &mallory,
            &[
                "steal",
                "--target",
                "api",
                "--port",
                &p,
                "--header",
                "x-user: m",
            ],
        )
        .unwrap(),
    );
    drop(
        Session::start(
            &mallory,
            &["mirror", "--target", "payments-eu", "--port", &p],
        )
        .unwrap(),
    );
    // The log says who tried.
    let refused = op.events("Session Refused");
    assert_eq!(refused.len(), 3);
    for r in &refused {
        assert_eq!(r["fields"]["client_user"], "mallory");
        assert_eq!(r["fields"]["reason"], "policy");
        assert!(r["fields"]["error"]
            .as_str()
            .unwrap()
            .contains("blocked by policy"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_warns_as_expiry_nears() {
    let target = HttpServer::start("target").await;
    let vendor = Vendor::new();
    let soon = vendor.issue("soon.json", 5, 5);
    let op = licensed(
        &vendor,
        Some(&soon),
        upstream_target("api", 80, free_addr(), target.addr),
        None,
    );
    let warning = op
        .stdout
        .wait(Duration::from_secs(5), |l| {
            l.contains("license expires in 5 days")
        })
        .expect("a warning about the coming expiry");
    let line: serde_json::Value = serde_json::from_str(&warning).unwrap();
    assert_eq!(line["level"], "WARN");
    assert_eq!(line["fields"]["days_left"], 5);
    // Still valid: sessions start.
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
}

/// Issue 9, item 7: a signed license with impossible dates is refused, and a seat that
/// cannot be recorded durably is not granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impossible_dates_and_unrecordable_seats_are_refused() {
    let vendor = Vendor::new();
    let target = HttpServer::start("target").await;
    let dev = HttpServer::start("dev").await;
    let listen = free_addr();
    let today = chrono::Utc::now().date_naive();
    let future = vendor.issue_dated(
        "future.json",
        today + chrono::Days::new(30),
        today + chrono::Days::new(400),
        5,
    );
    let op = licensed(
        &vendor,
        Some(&future),
        upstream_target("api", 80, listen, target.addr),
        None,
    );
    let alice = op.issue("alice");
    let port = format!("80={}", dev.addr);
    let err = Session::start(&alice, &["steal", "--target", "api", "--port", &port])
        .err()
        .unwrap();
    assert!(err.contains("in the future"), "{err}");

    // A valid license; the seat book cannot be written (its temporary file is a directory).
    let good = vendor.issue("good.json", 30, 5);
    std::fs::copy(&good, &future).unwrap();
    wait_for(Duration::from_secs(10), || {
        (metric(&op, "mirrord_license_valid_seconds") > 0.0).then_some(())
    })
    .expect("license reloaded");
    std::fs::create_dir(op.state.join("seats.json.tmp")).unwrap();
    let err = Session::start(&alice, &["steal", "--target", "api", "--port", &port])
        .err()
        .unwrap();
    assert!(err.contains("cannot record your seat"), "{err}");
    assert!(status(&alice)["sessions"].as_array().unwrap().is_empty());
    std::fs::remove_dir(op.state.join("seats.json.tmp")).unwrap();
    let _ok = Session::start(&alice, &["steal", "--target", "api", "--port", &port]).unwrap();
    assert_eq!(get(listen, "/x", &[]).await.1, "dev GET /x");
}
