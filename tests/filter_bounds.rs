//! Issue 32: look-around filters are bounded. A catastrophic pattern against a long header
//! costs a bounded time per request (printed), the request is not matched (it goes to the
//! target) and is counted, and another user's stolen requests keep their latency.

use mirrord_e2e::servers::{get, HttpServer};
use mirrord_e2e::*;
use std::time::{Duration, Instant};

/// Median and 99th percentile of `samples`.
fn quantiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    (at(0.5), at(0.99))
}

async fn alice_latency(listen: std::net::SocketAddr, n: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let path = format!("/alice/{i}");
        let start = Instant::now();
        let (_, body) = get(listen, &path, &[("x-user", "alice")]).await;
        out.push(start.elapsed());
        assert_eq!(body, format!("dev GET {path}"), "alice's request is stolen");
    }
    out
}

/// Alice's latency while two connections send requests with header `x-h: VALUE` back to
/// back: (p50, p99, requests sent, their times).
async fn under_load(
    listen: std::net::SocketAddr,
    value: String,
) -> (Duration, Duration, usize, Vec<Duration>) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut senders = Vec::new();
    for _ in 0..2 {
        let (value, stop) = (value.clone(), stop.clone());
        senders.push(tokio::spawn(async move {
            let mut times = Vec::new();
            let mut h1 = mirrord_e2e::servers::H1::connect(listen).await;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let start = Instant::now();
                let (_, body) = h1.get("/load", &[("x-h", &value)]).await;
                times.push(start.elapsed());
                assert_eq!(body, "target GET /load", "not matched: kept by the target");
            }
            times
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (p50, p99) = quantiles(alice_latency(listen, 200).await);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut times = Vec::new();
    for s in senders {
        times.extend(s.await.unwrap());
    }
    (p50, p99, times.len(), times)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catastrophic_pattern_costs_bounded_time_and_others_keep_their_latency() {
    let target = HttpServer::start("target").await;
    let dev = HttpServer::start("dev").await;
    let mallory_dev = HttpServer::start("mallory").await;
    let listen = free_addr();
    let op = Operator::start_with_metrics(&upstream_target("api", 80, listen, target.addr), "");
    let port = |d: &HttpServer| format!("80={}", d.addr);
    // Mallory first: every request is tried against her filters before Alice's. `(a+)+$`
    // (no look-around: linear time, fancy-regex hands it to `regex`) and the worst
    // backtracking shape this operator accepts, which stops at the limit.
    let mp = port(&mallory_dev);
    let _mallory = Session::start(
        &op.issue("mallory"),
        &[
            "steal",
            "--target",
            "api",
            "--port",
            &mp,
            "--any",
            "--header",
            "(a+)+$",
            "--header",
            "^x-h: (?:(a|a)+)+c(?<!z)",
        ],
    )
    .unwrap();
    let ap = port(&dev);
    let _alice = Session::start(
        &op.issue("alice"),
        &[
            "steal",
            "--target",
            "api",
            "--port",
            &ap,
            "--header",
            "^x-user: alice$",
        ],
    )
    .unwrap();

    let warm = alice_latency(listen, 20).await;
    drop(warm);
    let (base_p50, base_p99) = quantiles(alice_latency(listen, 200).await);

    // Two connections sending requests back to back while Alice's are measured: first a
    // benign header of the same size (the reference), then the attack, whose 4 KiB header
    // makes Mallory's second filter backtrack until its limit.
    let benign = "c".repeat(4097);
    let hostile = format!("{}b", "a".repeat(4096));
    let (ref_p50, ref_p99, _, _) = under_load(listen, benign).await;
    let (load_p50, load_p99, n, hostile_times) = under_load(listen, hostile).await;
    let (h_p50, h_p99) = quantiles(hostile_times);
    println!("hostile requests ({n}): p50 {h_p50:?}, p99 {h_p99:?} each (filter at its backtracking limit, then to the target)");
    println!(
        "alice's stolen requests, alone:                   p50 {base_p50:?}, p99 {base_p99:?}"
    );
    println!("alice's stolen requests, 2 benign connections:    p50 {ref_p50:?}, p99 {ref_p99:?}");
    println!(
        "alice's stolen requests, 2 hostile connections:   p50 {load_p50:?}, p99 {load_p99:?}"
    );
    let r = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!(
        "ratio hostile / benign: p50 {:.2}, p99 {:.2}; hostile / alone: p50 {:.2}, p99 {:.2}",
        r(load_p50, ref_p50),
        r(load_p99, ref_p99),
        r(load_p50, base_p50),
        r(load_p99, base_p99)
    );
    // Bounded: no hostile request took anywhere near a stall (the limit is ~ms per match).
    assert!(h_p99 < Duration::from_secs(1), "{h_p99:?}");
    assert!(n > 10, "the attack ran ({n} requests)");

    // Counted, in the operator's metrics.
    let text = op.scrape();
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("mirrord_filter_limited_requests_total{") && l.contains("port=\"80\"")
        })
        .unwrap_or_else(|| panic!("no limited-requests series:\n{text}"));
    let count: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(
        count, n as f64,
        "{line}: each hostile request counted once, the benign ones not"
    );
    // Requests the linear pattern decides are not counted: Alice's were all stolen.
    assert_eq!(
        get(listen, "/x", &[("x-h", "aaaa")]).await.1,
        "mallory GET /x",
        "`(a+)+$` still matches what it should"
    );
}
