//! A `Netns` thread lives exactly as long as its handles. Alone in its test binary: it
//! counts the process's threads by name.

use mirrord_context::Netns;
use std::time::Duration;

fn netns_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "mirrord-netns")
        .count()
}

#[tokio::test]
async fn the_thread_ends_with_the_last_handle() {
    assert_eq!(netns_threads(), 0);
    let first = Netns::current();
    let second = first.clone();
    let other = Netns::current();
    assert_eq!(netns_threads(), 2);
    drop(first);
    // Still served by the clone.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    second
        .connect(listener.local_addr().unwrap(), Duration::from_secs(5))
        .await
        .unwrap();
    drop(second);
    drop(other);
    for _ in 0..200 {
        if netns_threads() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{} namespace threads left", netns_threads());
}
