//! `Netns::connect` from a real network namespace: where the connection comes from, what
//! only the target can reach, and the errno of each way a connect fails.

mod common;

use common::Target;
use mirrord_context::Netns;
use nix::errno::Errno;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NO_FILES: &str = "127.0.0.1 localhost\n";
const NO_DNS: &str = "nameserver 127.0.0.1\n";

#[tokio::test]
async fn the_server_sees_the_targets_address() {
    if !common::can_run() {
        return;
    }
    let target = Target::start(NO_FILES, NO_DNS);
    let listener = tokio::net::TcpListener::bind((target.host_side(), 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();

    let netns = Netns::of_pid(target.pid).unwrap();
    let mut stream = netns.connect(addr, Duration::from_secs(5)).await.unwrap();
    let (mut accepted, peer) = listener.accept().await.unwrap();
    assert_eq!(peer.ip(), IpAddr::V4(target.target_side()));
    assert_eq!(stream.local_addr().unwrap(), peer);
    assert!(stream.nodelay().unwrap());
    // Bytes flow both ways on the caller's runtime.
    stream.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 5];
    accepted.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hello");
    accepted.write_all(b"back").await.unwrap();
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"back");

    // The same connect from the operator's own namespace comes from the host's side.
    let _host = Netns::current()
        .connect(addr, Duration::from_secs(5))
        .await
        .unwrap();
    let (_, peer) = listener.accept().await.unwrap();
    assert_eq!(peer.ip(), IpAddr::V4(target.host_side()));
}

#[tokio::test]
async fn a_server_only_the_target_has_is_reached() {
    if !common::can_run() {
        return;
    }
    let target = Target::start(NO_FILES, NO_DNS);
    // The target's own loopback: another interface than the host's 127.0.0.1.
    let listener = target.inside(|| std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let addr = listener.local_addr().unwrap();

    let netns = Netns::of_pid(target.pid).unwrap();
    let _stream = netns.connect(addr, Duration::from_secs(5)).await.unwrap();
    let (_, peer) = listener.accept().await.unwrap();
    assert_eq!(peer.ip(), addr.ip());

    // From the host the same address is another socket (nothing, or someone else's).
    let host = tokio::net::TcpStream::connect(addr).await;
    let reached = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
    assert!(
        reached.is_err(),
        "the host reached the target's loopback server (host connect: {host:?})"
    );
}

#[tokio::test]
async fn a_closed_port_is_refused_at_once() {
    if !common::can_run() {
        return;
    }
    let target = Target::start(NO_FILES, NO_DNS);
    let port = {
        let l = std::net::TcpListener::bind((target.host_side(), 0)).unwrap();
        l.local_addr().unwrap().port()
    };
    let netns = Netns::of_pid(target.pid).unwrap();
    let started = Instant::now();
    let err = netns
        .connect(
            SocketAddr::new(target.host_side().into(), port),
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
    assert_eq!(err.errno, Errno::ECONNREFUSED as i32, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn no_route_is_reported_at_once() {
    if !common::can_run() {
        return;
    }
    let target = Target::start(NO_FILES, NO_DNS);
    let netns = Netns::of_pid(target.pid).unwrap();
    let started = Instant::now();
    let err = netns
        .connect(
            SocketAddr::new(target.unroutable().into(), 80),
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
    assert!(
        err.errno == Errno::ENETUNREACH as i32 || err.errno == Errno::EHOSTUNREACH as i32,
        "{err} (errno {})",
        err.errno
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn no_answer_times_out_with_etimedout() {
    if !common::can_run() {
        return;
    }
    let target = Target::start(NO_FILES, NO_DNS);
    let netns = Netns::of_pid(target.pid).unwrap();
    let timeout = Duration::from_millis(700);
    let started = Instant::now();
    let err = netns
        .connect(SocketAddr::new(target.blackhole().into(), 80), timeout)
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.errno, Errno::ETIMEDOUT as i32, "{err}");
    assert!(err.message.contains("700ms"), "{err}");
    assert!(
        took >= timeout && took < timeout + Duration::from_secs(1),
        "{took:?}"
    );
}

#[tokio::test]
async fn connects_run_side_by_side() {
    if !common::can_run() {
        return;
    }
    let target = Target::start(NO_FILES, NO_DNS);
    let listener = tokio::net::TcpListener::bind((target.host_side(), 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let netns = Netns::of_pid(target.pid).unwrap();
    // A connect waiting for its timeout does not hold up the others on the same thread.
    let slow = {
        let netns = netns.clone();
        let to = SocketAddr::new(target.blackhole().into(), 80);
        tokio::spawn(async move { netns.connect(to, Duration::from_secs(3)).await })
    };
    let started = Instant::now();
    for _ in 0..5 {
        netns.connect(addr, Duration::from_secs(5)).await.unwrap();
        listener.accept().await.unwrap();
    }
    // Well under the slow one's 3 s, with room for a loaded machine.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let err = slow.await.unwrap().unwrap_err();
    assert_eq!(err.errno, Errno::ETIMEDOUT as i32, "{err}");
}
