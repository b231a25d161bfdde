//! `Netns::resolve` against a real target: its bind-mounted hosts file and resolv.conf, a
//! DNS server that lives only in its network namespace, and glibc's outcomes.

mod common;

use common::{fake_root, v6, Answer, DnsServer, Target};
use mirrord_context::{DnsError, Family, Netns};
use std::net::{IpAddr, UdpSocket};
use std::time::{Duration, Instant};

/// A target whose resolv.conf names a DNS server on its side of the veth, and that server.
fn target_with_dns(hosts: &str, table: Vec<(&str, Answer)>) -> (Target, DnsServer) {
    // The address is only known once the target exists: the file is rewritten in place
    // (same inode, so the bind mount shows the new text).
    let target = Target::start(hosts, "");
    std::fs::write(
        &target.resolv_file,
        format!(
            "nameserver {}\nsearch corp.test\noptions timeout:1 attempts:1\n",
            target.target_side()
        ),
    )
    .unwrap();
    let ns_addr = target.target_side();
    let socket = target.inside(move || UdpSocket::bind((ns_addr, 53)).unwrap());
    let server = DnsServer::start(socket, table);
    (target, server)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn the_targets_hosts_file_answers_first() {
    if !common::can_run() {
        return;
    }
    let (target, dns) = target_with_dns(
        "127.0.0.1 localhost\n10.9.8.7 only-in-target.test alias-t\nfd00::7 only-in-target.test\n",
        vec![("only-in-target.test", Answer::Addrs(vec![ip("10.1.1.1")]))],
    );
    let netns = Netns::of_pid(target.pid).unwrap();
    let found = netns
        .resolve(&target.root(), "only-in-target.test", Family::Any)
        .await
        .unwrap();
    assert_eq!(found.addrs, vec![ip("10.9.8.7"), ip("fd00::7")]);
    assert_eq!(found.canonical.as_deref(), Some("only-in-target.test"));
    let alias = netns
        .resolve(&target.root(), "ALIAS-T", Family::V4)
        .await
        .unwrap();
    assert_eq!(alias.addrs, vec![ip("10.9.8.7")]);
    assert_eq!(alias.canonical.as_deref(), Some("only-in-target.test"));
    assert!(dns.queries().is_empty(), "{:?}", dns.queries());

    // The host's view (its own files, which lack the names): the nameserver's answer, and
    // no such name for the alias only the target's hosts file has.
    let host_root = fake_root(
        "127.0.0.1 localhost\n",
        &format!(
            "nameserver {}\noptions timeout:1 attempts:1\n",
            target.target_side()
        ),
    );
    let host = Netns::current();
    let found = host
        .resolve(host_root.path(), "only-in-target.test", Family::Any)
        .await
        .unwrap();
    assert_eq!(found.addrs, vec![ip("10.1.1.1")]);
    let err = host
        .resolve(host_root.path(), "alias-t", Family::Any)
        .await
        .unwrap_err();
    assert_eq!(err, DnsError::NoName);
}

#[tokio::test]
async fn nameserver_queries_leave_from_the_targets_namespace() {
    if !common::can_run() {
        return;
    }
    let (target, dns) = target_with_dns(
        "127.0.0.1 localhost\n",
        vec![(
            "dns-only.test",
            Answer::Addrs(vec![ip("10.5.5.5"), v6("fd00::5"), ip("10.5.5.6")]),
        )],
    );
    let found = Netns::of_pid(target.pid)
        .unwrap()
        .resolve(&target.root(), "dns-only.test", Family::Any)
        .await
        .unwrap();
    assert_eq!(
        found.addrs,
        vec![ip("10.5.5.5"), ip("10.5.5.6"), v6("fd00::5")],
        "IPv4 first, then IPv6"
    );
    assert_eq!(found.canonical.as_deref(), Some("dns-only.test"));
    let queries = dns.queries();
    assert!(!queries.is_empty());
    for q in &queries {
        assert_eq!(q.from.ip(), IpAddr::V4(target.target_side()), "{q:?}");
    }

    // From the operator's namespace the same server, through the veth, sees the host side.
    let before = dns.queries().len();
    let found = Netns::current()
        .resolve(&target.root(), "dns-only.test", Family::V4)
        .await
        .unwrap();
    assert_eq!(found.addrs, vec![ip("10.5.5.5"), ip("10.5.5.6")]);
    let later = &dns.queries()[before..];
    assert!(!later.is_empty());
    for q in later {
        assert_eq!(q.from.ip(), IpAddr::V4(target.host_side()), "{q:?}");
    }
}

#[tokio::test]
async fn search_ndots_and_each_kind_of_failure() {
    if !common::can_run() {
        return;
    }
    let (target, dns) = target_with_dns(
        "127.0.0.1 localhost\n",
        vec![
            ("svc.corp.test", Answer::Addrs(vec![ip("10.6.6.6")])),
            ("v4only.test", Answer::Addrs(vec![ip("10.7.7.7")])),
            ("servfail.test", Answer::ServFail),
            ("slow.test", Answer::Silent),
        ],
    );
    let netns = Netns::of_pid(target.pid).unwrap();
    let root = target.root();

    // No dot: the search list supplies the domain.
    let svc = netns.resolve(&root, "svc", Family::V4).await.unwrap();
    assert_eq!(svc.addrs, vec![ip("10.6.6.6")]);
    assert_eq!(svc.canonical.as_deref(), Some("svc.corp.test"));
    let asked: Vec<String> = dns.queries().into_iter().map(|q| q.name).collect();
    assert_eq!(asked, ["svc.corp.test"]);

    // The name exists, the family not.
    assert_eq!(
        netns.resolve(&root, "v4only.test", Family::V6).await,
        Err(DnsError::NoData)
    );
    assert_eq!(
        netns
            .resolve(&root, "v4only.test", Family::Any)
            .await
            .unwrap()
            .addrs,
        vec![ip("10.7.7.7")]
    );
    assert_eq!(
        netns.resolve(&root, "nothing.test", Family::Any).await,
        Err(DnsError::NoName)
    );
    assert_eq!(
        netns.resolve(&root, "servfail.test", Family::V4).await,
        Err(DnsError::Again)
    );
    // A numeric host needs no one.
    let before = dns.queries().len();
    assert_eq!(
        netns
            .resolve(&root, "10.1.2.3", Family::Any)
            .await
            .unwrap()
            .addrs,
        vec![ip("10.1.2.3")]
    );
    assert_eq!(
        netns.resolve(&root, "10.1.2.3", Family::V6).await,
        Err(DnsError::NoData)
    );
    assert_eq!(dns.queries().len(), before);

    // No answer: `timeout:1 attempts:1` bounds it.
    let started = Instant::now();
    assert_eq!(
        netns.resolve(&root, "slow.test", Family::V4).await,
        Err(DnsError::Again)
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn changed_files_are_read_again() {
    if !common::can_run() {
        return;
    }
    let (target, _dns) = target_with_dns("10.1.1.1 moving.test\n", vec![]);
    let netns = Netns::of_pid(target.pid).unwrap();
    let root = target.root();
    let first = netns
        .resolve(&root, "moving.test", Family::V4)
        .await
        .unwrap();
    assert_eq!(first.addrs, vec![ip("10.1.1.1")]);
    // Same size, so only the mtime (or the inode) can tell.
    std::fs::write(&target.hosts_file, "10.2.2.2 moving.test\n").unwrap();
    let later = std::time::SystemTime::now() + Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(&target.hosts_file)
        .unwrap()
        .set_modified(later)
        .unwrap();
    let second = netns
        .resolve(&root, "moving.test", Family::V4)
        .await
        .unwrap();
    assert_eq!(second.addrs, vec![ip("10.2.2.2")]);
}

#[tokio::test]
async fn an_unreachable_nameserver_is_a_temporary_failure() {
    if !common::can_run() {
        return;
    }
    // Nothing listens on port 53 in the target: the query is refused (ICMP), not lost.
    let target = Target::start("127.0.0.1 localhost\n", "");
    std::fs::write(
        &target.resolv_file,
        format!(
            "nameserver {}\noptions timeout:1 attempts:1\n",
            target.target_side()
        ),
    )
    .unwrap();
    let started = Instant::now();
    let err = Netns::of_pid(target.pid)
        .unwrap()
        .resolve(&target.root(), "anything.test", Family::V4)
        .await
        .unwrap_err();
    assert_eq!(err, DnsError::Again);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}
