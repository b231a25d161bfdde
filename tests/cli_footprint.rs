//! A long-lived `mirrordctl` stays flat: memory does not grow with the number of requests
//! a session has served (issue 17: every stolen request used to stay in a map, ~1.9 KB
//! each).

use mirrord_e2e::servers::H1;
use mirrord_e2e::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Requests before the first measure: pools, buffers and the allocator's arenas have
/// reached their working size by then.
const WARM_UP: usize = 10_000;
const TOTAL: usize = 50_000;
/// Keep-alive connections sending at once.
const CONNECTIONS: usize = 16;
/// Allowed growth between `WARM_UP` and `TOTAL` requests: under 0.2 KB per request, a
/// tenth of what the leak kept (40,000 requests x 1.9 KB = 76 MB), well above the noise
/// of the allocator.
const MAX_GROWTH_KB: u64 = 8 * 1024;

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Sends stolen requests on `CONNECTIONS` keep-alive connections until `sent` reaches
/// `upto`; every answer must come from the developer's process.
async fn load(listen: std::net::SocketAddr, sent: &Arc<AtomicUsize>, upto: usize) {
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let sent = Arc::clone(sent);
            tokio::spawn(async move {
                let mut c = H1::connect(listen).await;
                while sent.fetch_add(1, Ordering::Relaxed) < upto {
                    let (status, body) = c.get("/load", &[("x-load", "1")]).await;
                    assert_eq!((status, body.as_str()), (200, "dev GET /load"));
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    // Each task overshoots by the one increment that stopped it.
    sent.store(upto, Ordering::Relaxed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_memory_stays_flat_over_50k_stolen_requests() {
    let f = ApiFixture::start("").await;
    let s = f.session("alice", "steal", &["--header", "^x-load: 1$"]);
    let sent = Arc::new(AtomicUsize::new(0));

    load(f.listen, &sent, WARM_UP).await;
    let warm = rss_kb(s.pid());
    let mut samples = vec![(WARM_UP, warm)];
    for upto in (WARM_UP + 10_000..=TOTAL).step_by(10_000) {
        load(f.listen, &sent, upto).await;
        samples.push((upto, rss_kb(s.pid())));
    }
    let last = samples.last().unwrap().1;
    assert!(
        last.saturating_sub(warm) < MAX_GROWTH_KB,
        "mirrordctl grew {} kB from {WARM_UP} to {TOTAL} stolen requests \
         (allowed {MAX_GROWTH_KB} kB); VmRSS (requests, kB): {samples:?}",
        last - warm
    );
    assert_eq!(
        f.dev.hits().len(),
        TOTAL,
        "every request reached the developer"
    );
    assert!(f.target.hits().is_empty(), "the target saw stolen requests");
    eprintln!("mirrordctl VmRSS (requests, kB): {samples:?}");
}
