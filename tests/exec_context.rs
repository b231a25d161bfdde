//! `mirrordctl exec` runs its process in the target's context: the target's environment,
//! its name resolution, and its outgoing TCP connections and UDP flows, through the preload layer.
//!
//! The target's replica runs in its own network namespace (`ip netns exec`), with its own
//! `/etc/hosts`, as a pod does: a name only the target resolves, and connections whose
//! source address shows which side they came from.

use mirrord_e2e::netns::{self, Netns};
use mirrord_e2e::{ctl, fixture, free_addr, wait_for, Operator, OperatorOptions};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A server on the host that sends `len` bytes to each connection, then closes.
async fn bulk_server(at: IpAddr, len: usize) -> SocketAddr {
    let l = tokio::net::TcpListener::bind((at, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let chunk = vec![7u8; 1 << 20];
                for _ in 0..len >> 20 {
                    if s.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// An HTTP server on the host that answers every request with the address it came from.
async fn peer_server(at: IpAddr) -> (SocketAddr, Arc<Mutex<Vec<IpAddr>>>) {
    let l = tokio::net::TcpListener::bind((at, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, peer)) = l.accept().await {
            log.lock().unwrap().push(peer.ip());
            tokio::spawn(async move {
                let mut buf = vec![0; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let body = format!("peer={}\n", peer.ip());
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(answer.as_bytes()).await;
            });
        }
    });
    (addr, seen)
}

/// A UDP server on the host that answers each datagram with its bytes and the address it
/// came from.
async fn udp_echo(at: IpAddr) -> SocketAddr {
    let sock = tokio::net::UdpSocket::bind((at, 0)).await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0; 65_536];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let mut answer = buf[..n].to_vec();
            answer.extend_from_slice(format!(" from={}", from.ip()).as_bytes());
            let _ = sock.send_to(&answer, from).await;
        }
    });
    addr
}

const PROBE: &str = r#"
import socket, sys
host, port, closed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
addrs = sorted({a[4][0] for a in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)})
print("python resolves", " ".join(addrs))
s = socket.create_connection((host, port), timeout=10)
s.sendall(b"GET / HTTP/1.0\r\n\r\n")
data = b""
while True:
    c = s.recv(4096)
    if not c:
        break
    data += c
print("python", data.split(b"\r\n\r\n", 1)[1].decode().strip(), "getpeername", s.getpeername()[0])
try:
    socket.create_connection((host, closed), timeout=10)
    print("python closed port connected")
except ConnectionRefusedError as e:
    print("python closed port refused", e.errno)
"#;

struct Fixture {
    ns: Netns,
    op: Operator,
    server: SocketAddr,
    seen: Arc<Mutex<Vec<IpAddr>>>,
    closed: u16,
    probe: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// An operator whose `deployment/api` replica lives in its own namespace with
/// `SECRET_DB_URL` and `REGION` in its environment; `mallory` may not connect out, `eve`
/// only to `db.only-in-target` on the server's port.
async fn fixture_with_target() -> Option<Fixture> {
    if !netns::can_run() {
        return None;
    }
    let ns = Netns::start("127.0.0.1 localhost\n{host} db.only-in-target\n");
    let (server, seen) = peer_server(IpAddr::V4(ns.host_side())).await;
    // A port nothing listens on, on the same host address.
    let closed = std::net::TcpListener::bind((ns.host_side(), 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let probe = dir.path().join("probe.py");
    std::fs::write(&probe, PROBE).unwrap();
    // The replica's process is the one in the namespace (the shell execs into it); the
    // server that answers the target's own traffic starts after that, beside it, and dies
    // with it (`setpriv --pdeathsig`): the operator's own parent-death signal reaches only
    // the replica's leader, and a server left behind held the test's inherited fds.
    let command = format!(
        "(sleep 1; exec setpriv --pdeathsig KILL python3 {} {{port}} api) & exec ip netns exec {} env SECRET_DB_URL=postgres://db.internal:5432 REGION=eu-west sleep 600",
        fixture("replica.py").display(),
        ns.name
    );
    let listen = free_addr();
    let op = Operator::start_with(OperatorOptions {
        targets: format!(
            "[[targets]]\nname = \"api\"\nreplicas = 1\ncommand = [\"sh\", \"-c\", {command:?}]\n[[targets.ports]]\nport = 80\nlisten = \"{listen}\"\n"
        ),
        env: vec![
            ("OPERATOR_METRICS_ENABLED".into(), "true".into()),
            ("OPERATOR_METRICS_ADDR".into(), free_addr().to_string()),
        ],
        extra_config: format!(
            "[[policies]]\nname = \"no-outgoing-for-mallory\"\nusers = [\"mallory\"]\nblock = [\"outgoing\"]\n\
             [[policies]]\nname = \"eve-db-only\"\nusers = [\"eve\"]\noutgoing_allow = [\"db.only-in-target:{}\"]\n",
            server.port()
        ),
        ..Default::default()
    });
    let ready = wait_for(Duration::from_secs(30), || {
        (!op.events("replica ready").is_empty()).then_some(())
    });
    if ready.is_none() {
        let log = op
            .events("replica started")
            .first()
            .and_then(|e| e["fields"]["log"].as_str().map(std::fs::read_to_string));
        panic!("the replica did not start: {log:?}");
    }
    Some(Fixture {
        ns,
        op,
        server,
        seen,
        closed,
        probe,
        _dir: dir,
    })
}

fn exec(f: &Fixture, user: &str, flags: &[&str]) -> (Option<i32>, String, String) {
    let creds = f.op.issue(user);
    let script = format!(
        "echo \"env SECRET_DB_URL=$SECRET_DB_URL REGION=$REGION\"; \
         getent hosts db.only-in-target || echo 'getent: no such name'; \
         curl -sS http://db.only-in-target:{port}/; \
         python3 {probe} db.only-in-target {port} {closed}; \
         curl -sS http://db.only-in-target:{closed}/; echo \"curl exit $?\"",
        port = f.server.port(),
        probe = f.probe.display(),
        closed = f.closed,
    );
    let mut args = vec!["exec", "-t", "deployment/api", "-n", "default"];
    args.extend_from_slice(flags);
    args.extend(["--", "sh", "-c", &script]);
    let out = ctl(&creds, &args);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runs_the_process_with_the_targets_environment_names_and_connections() {
    let Some(f) = fixture_with_target().await else {
        return;
    };
    let (host, target) = (f.ns.host_side(), f.ns.target_side());

    let (code, out, err) = tokio::task::block_in_place(|| exec(&f, "alice", &[]));
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains("context: environment (")
            && out.contains("outgoing TCP and UDP, DNS, files (read) of replica api"),
        "{out}"
    );
    // The environment is the target's, in the process and in what it starts.
    assert!(
        out.contains("env SECRET_DB_URL=postgres://db.internal:5432 REGION=eu-west"),
        "{out}\n{err}"
    );
    // A name only the target's /etc/hosts has, through getaddrinfo (getent, curl, python).
    assert!(
        out.lines()
            .any(|l| l.starts_with(&host.to_string()) && l.ends_with("db.only-in-target")),
        "getent: {out}\n{err}"
    );
    assert!(out.contains(&format!("python resolves {host}")), "{out}");
    // Connections leave from the target's namespace: the server sees its address, while
    // the process sees the server's (getpeername) as if it had connected directly.
    assert_eq!(
        out.matches(&format!("peer={target}")).count(),
        2,
        "curl and python both connect from the target: {out}\n{err}"
    );
    assert!(out.contains(&format!("getpeername {host}")), "{out}");
    // A closed port is refused as it is in the target (ECONNREFUSED, curl's exit 7).
    assert!(out.contains("python closed port refused 111"), "{out}");
    assert!(out.contains("curl exit 7"), "{out}\n{err}");
    assert!(
        f.seen
            .lock()
            .unwrap()
            .iter()
            .all(|ip| *ip == IpAddr::V4(target)),
        "every connection came from the target: {:?}",
        f.seen.lock().unwrap()
    );

    // A process that reads slower than the target sends is waited for, not cut off:
    // 48 MiB to a reader that starts 1.5 s late all arrive (the operator stops reading
    // from the peer meanwhile). Before, the connection was closed 8 MiB behind.
    let bulk = bulk_server(IpAddr::V4(host), 48 << 20).await;
    let reader = format!(
        "import socket, time\ns = socket.create_connection(('db.only-in-target', {}))\ntime.sleep(1.5)\nn = 0\nwhile True:\n    b = s.recv(1 << 20)\n    if not b: break\n    n += len(b)\nprint('bulk', n)",
        bulk.port()
    );
    let creds = f.op.issue("alice");
    let out = tokio::task::block_in_place(|| {
        ctl(
            &creds,
            &[
                "exec",
                "-t",
                "deployment/api",
                "--",
                "python3",
                "-c",
                &reader,
            ],
        )
    });
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        stdout.contains(&format!("bulk {}", 48 << 20)),
        "{stdout}\n{stderr}"
    );

    // A connected UDP socket's datagrams leave from the target (the server sees its
    // address), keep their boundaries, and come back from the address the process
    // connected to (recvfrom, getpeername); `"udp": false` keeps them on this machine.
    let echo = udp_echo(IpAddr::V4(host)).await;
    let udp = |config: Option<&str>| {
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec!["exec", "-t", "deployment/api"];
        let file = dir.path().join("mirrord.json");
        let file = file.display().to_string();
        if let Some(c) = config {
            std::fs::write(&file, c).unwrap();
            args.extend(["-f", &file]);
        }
        let port = echo.port().to_string();
        let probe = fixture("udp_probe.py").display().to_string();
        args.extend(["--", "python3", &probe, "db.only-in-target", &port]);
        let out = ctl(&creds, &args);
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (stdout, stderr) = tokio::task::block_in_place(|| udp(None));
    assert!(stdout.contains("outgoing TCP and UDP"), "{stdout}");
    for len in [4, 0, 60000] {
        let want = format!(
            "udp {len} {len} from={target} source {host} {} peer {host}",
            echo.port()
        );
        assert!(stdout.contains(&want), "{want}:\n{stdout}\n{stderr}");
    }
    let (stdout, stderr) = tokio::task::block_in_place(|| {
        udp(Some(
            r#"{"feature": {"network": {"outgoing": {"udp": false}}}}"#,
        ))
    });
    assert!(
        stdout.contains(&format!("udp 4 4 from={host} source {host}")),
        "{stdout}\n{stderr}"
    );

    // Without remote DNS and outgoing, the same name does not resolve here (so the
    // answers above came from the target), and the environment still does.
    let (_, out, err) =
        tokio::task::block_in_place(|| exec(&f, "alice", &["--no-outgoing", "--no-remote-dns"]));
    assert!(out.contains("getent: no such name"), "{out}\n{err}");
    assert!(
        out.contains("env SECRET_DB_URL=postgres://db.internal:5432"),
        "{out}"
    );
    assert!(!out.contains("peer="), "nothing reached the server: {out}");

    // -x drops the target's variables by glob; the rest still come.
    let (_, out, _) = tokio::task::block_in_place(|| {
        exec(
            &f,
            "alice",
            &["--no-outgoing", "--no-remote-dns", "-x", "SECRET_*"],
        )
    });
    assert!(out.contains("env SECRET_DB_URL= REGION=eu-west"), "{out}");

    // mirrord.json's feature.env.mapping gives the target's variables a value by name.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mirrord.json");
    std::fs::write(
        &config,
        r#"{"feature": {"env": {"mapping": {"^REG.+": "mapped"}}}}"#,
    )
    .unwrap();
    let config = config.display().to_string();
    let (_, out, err) = tokio::task::block_in_place(|| {
        exec(
            &f,
            "alice",
            &["--no-outgoing", "--no-remote-dns", "-f", &config],
        )
    });
    assert!(
        out.contains("env SECRET_DB_URL=postgres://db.internal:5432 REGION=mapped"),
        "{out}\n{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_exec_cannot_give_is_refused_or_named() {
    let Some(f) = fixture_with_target().await else {
        return;
    };
    let (code, out, err) = tokio::task::block_in_place(|| exec(&f, "mallory", &[]));
    assert_eq!(code, Some(3), "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        err.contains("no-outgoing-for-mallory") && err.contains("outgoing"),
        "{err}"
    );
    assert!(
        !out.contains("env SECRET"),
        "the process never started: {out}"
    );
    // Without outgoing connections the same user may run it.
    let (_, out, err) = tokio::task::block_in_place(|| exec(&f, "mallory", &["--no-outgoing"]));
    assert!(
        out.contains("env SECRET_DB_URL=postgres://db.internal:5432"),
        "{out}\n{err}"
    );
    // Names still resolve in the target, but the connections leave from here.
    assert!(
        out.contains(&format!("peer={}", f.ns.host_side())),
        "{out}\n{err}"
    );
    assert!(
        !f.seen
            .lock()
            .unwrap()
            .contains(&IpAddr::V4(f.ns.target_side())),
        "mallory reached nothing through the target: {:?}",
        f.seen.lock().unwrap()
    );

    // eve's policy allows the server's port of db.only-in-target, a name matched by what
    // the target resolves it to: that connection leaves from the target; one to another
    // port of the same address is refused (EACCES), the policy named on stderr.
    let (code, out, err) = tokio::task::block_in_place(|| exec(&f, "eve", &[]));
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains(&format!("peer={}", f.ns.target_side())),
        "{out}\n{err}"
    );
    assert!(out.contains("curl exit 7"), "{out}\n{err}");
    assert!(
        err.contains("PermissionError") && !out.contains("closed port refused"),
        "the operator refused it, not the closed port: {out}\n{err}"
    );
    assert!(
        err.contains(&format!(
            "blocked by policy `eve-db-only`: TCP {}:{} is not in its outgoing allow-list (db.only-in-target:{})",
            f.ns.host_side(),
            f.closed,
            f.server.port()
        )),
        "{err}"
    );

    // A statically linked program cannot load the layer: said before it starts, naming
    // what it will not get; it still runs, with the target's environment.
    let creds = f.op.issue("alice");
    let out = ctl(
        &creds,
        &[
            "exec",
            "-t",
            "deployment/api",
            "--",
            "/sbin/ldconfig",
            "--version",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("/sbin/ldconfig is statically linked")
            && err.contains("outgoing connections and DNS stay on this machine"),
        "{err}"
    );
}
