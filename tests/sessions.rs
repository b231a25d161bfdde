//! Sessions on a shared target: admission before side effects, port locks that copies
//! respect, scale down that starves no one, liveness under load, opens that do not queue,
//! no orphaned replicas, and the limits that keep one user from exhausting the operator.

use mirrord_e2e::servers::{get, try_get, HttpServer};
use mirrord_e2e::vendor::Vendor;
use mirrord_e2e::*;
use std::collections::HashSet;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

fn pid_of(body: &str) -> String {
    body.split_whitespace()
        .find(|w| w.starts_with("pid="))
        .unwrap_or_default()
        .to_owned()
}

/// Waits until the replicas behind `listen` answer; returns their pids.
fn replica_pids(listen: std::net::SocketAddr, n: usize) -> HashSet<String> {
    wait_for(Duration::from_secs(30), || {
        let rt = tokio::runtime::Handle::current();
        let pids: HashSet<String> = (0..n * 3)
            .filter_map(|i| {
                tokio::task::block_in_place(|| rt.block_on(try_get(listen, &format!("/p{i}"))))
            })
            .map(|(_, b)| pid_of(&b))
            .filter(|p| !p.is_empty())
            .collect();
        (pids.len() == n).then_some(pids)
    })
    .unwrap_or_else(|| panic!("{n} replicas answering"))
}

fn alive(pid: &str) -> bool {
    std::path::Path::new(&format!("/proc/{}", pid.trim_start_matches("pid="))).exists()
}

/// Issue 9, defect 1: a session refused by seats (or by a lock) that asked for
/// `--copy-target --scale-down` must never stop the target's originals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_session_changes_nothing() {
    let vendor = Vendor::new();
    let license = vendor.issue("one-seat.json", 30, 1);
    let dev = HttpServer::start("dev").await;
    let listen = free_addr();
    let op = Operator::start_with(OperatorOptions {
        targets: command_target("api", 80, listen, 1),
        extra_config: vendor.config(),
        env: vec![(
            "OPERATOR_LICENSE_PATH".into(),
            license.display().to_string(),
        )],
        ..Default::default()
    });
    let alice = op.issue_admin("alice");
    let bob = op.issue_admin("bob");
    let original = replica_pids(listen, 1);
    let port = format!("80={}", dev.addr);
    // Alice takes the only seat.
    let _alice = Session::start(
        &alice,
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
    .unwrap();

    let unchanged = |what: &str| {
        for i in 0..8 {
            let rt = tokio::runtime::Handle::current();
            let b = tokio::task::block_in_place(|| {
                rt.block_on(get(listen, &format!("/{what}{i}"), &[]))
            })
            .1;
            assert!(
                original.contains(&pid_of(&b)),
                "{what}: originals were touched: {b}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(status(&alice)["copies"].as_array().unwrap().is_empty());
        assert!(op.events("Target Copied").is_empty());
    };

    // Bob is over the seat limit.
    let err = Session::start(
        &bob,
        &[
            "steal",
            "--target",
            "api",
            "--port",
            &port,
            "--copy-target",
            "--scale-down",
            "--header",
            "^x-user: bob$",
        ],
    )
    .err()
    .unwrap();
    assert!(err.contains("Maximum seat count (1) reached"), "{err}");
    unchanged("seats");

    // Alice again (her seat is known), but the port is held by her filtered steal.
    let err = Session::start(
        &alice,
        &[
            "steal",
            "--target",
            "api",
            "--port",
            &port,
            "--copy-target",
            "--scale-down",
        ],
    )
    .err()
    .unwrap();
    assert!(err.contains("already stolen"), "{err}");
    unchanged("lock");
}

/// Issue 9, defect 2: a copy's steal takes the target's traffic, so it goes through the
/// same port locks as any other steal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_target_respects_port_locks() {
    let dev_a = HttpServer::start("alice").await;
    let dev_b = HttpServer::start("bob").await;
    let listen = free_addr();
    let op = Operator::start(&command_target("api", 80, listen, 1), "");
    let alice = op.issue_admin("alice");
    let bob = op.issue_admin("bob");
    replica_pids(listen, 1);
    let pa = format!("80={}", dev_a.addr);
    let pb = format!("80={}", dev_b.addr);
    let holder = Session::start(&alice, &["steal", "--target", "api", "--port", &pa]).unwrap();

    let err = Session::start(
        &bob,
        &["steal", "--target", "api", "--port", &pb, "--copy-target"],
    )
    .err()
    .unwrap();
    assert!(
        err.contains("already stolen") && err.contains(&holder.id),
        "{err}"
    );
    assert!(status(&alice)["copies"].as_array().unwrap().is_empty());
    for i in 0..4 {
        assert_eq!(
            get(listen, &format!("/a{i}"), &[]).await.1,
            format!("alice GET /a{i}")
        );
    }

    // With override the holder is told and loses the port, exactly as without a copy.
    let _bob = Session::start(
        &bob,
        &[
            "steal",
            "--target",
            "api",
            "--port",
            &pb,
            "--copy-target",
            "--on-concurrent-steal",
            "override",
        ],
    )
    .unwrap();
    holder
        .stderr
        .wait(Duration::from_secs(5), |l| l.contains("no longer stolen"))
        .expect("holder told it lost the port");
    for i in 0..4 {
        assert_eq!(
            get(listen, &format!("/b{i}"), &[]).await.1,
            format!("bob GET /b{i}")
        );
    }
    let st = status(&alice);
    let ports_of = |user: &str| {
        st["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["client_user"] == user)
            .map(|s| s["ports"].as_array().unwrap().len())
    };
    assert_eq!(ports_of("alice"), Some(0), "{st}");
    assert_eq!(ports_of("bob"), Some(1), "{st}");
    let released = op.wait_event("Port Released", 1);
    assert_eq!(released[0]["fields"]["client_user"], "alice");
}

/// Issue 9, defect 3: after a scale down, other sessions' routes still get their traffic
/// (routes belong to the target's port, whichever replica serves it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_down_does_not_starve_other_sessions() {
    let dev_a = HttpServer::start("alice").await;
    let dev_b = HttpServer::start("bob").await;
    let listen = free_addr();
    let op = Operator::start(&command_target("api", 80, listen, 2), "");
    let alice = op.issue_admin("alice");
    let bob = op.issue_admin("bob");
    let originals = replica_pids(listen, 2);
    let pa = format!("80={}", dev_a.addr);
    let pb = format!("80={}", dev_b.addr);
    let _a = Session::start(
        &alice,
        &[
            "steal",
            "--target",
            "api",
            "--port",
            &pa,
            "--header",
            "^x-user: alice$",
        ],
    )
    .unwrap();
    let _b = Session::start(
        &bob,
        &[
            "steal",
            "--target",
            "api",
            "--port",
            &pb,
            "--header",
            "^x-user: bob$",
            "--copy-target",
            "--scale-down",
        ],
    )
    .unwrap();
    for i in 0..6 {
        assert_eq!(
            get(listen, &format!("/a{i}"), &[("x-user", "alice")])
                .await
                .1,
            format!("alice GET /a{i}")
        );
        assert_eq!(
            get(listen, &format!("/b{i}"), &[("x-user", "bob")]).await.1,
            format!("bob GET /b{i}")
        );
        let other = get(listen, &format!("/o{i}"), &[]).await.1;
        assert!(other.starts_with("api pid="), "{other}");
        assert!(
            !originals.contains(&pid_of(&other)),
            "an original answered after scale down: {other}"
        );
    }
    let st = status(&alice);
    assert_eq!(st["sessions"].as_array().unwrap().len(), 2);
    assert!(op.events("Port Released").is_empty());
}

/// Issue 9, defect 4: a frozen (SIGSTOPped) client holding an unfiltered steal is timed
/// out after `client_timeout` even while traffic keeps arriving for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_client_is_timed_out_under_load() {
    let f = ApiFixture::start("client_timeout = \"3s\"\nping_interval = \"500ms\"").await;
    let s = f.session("alice", "steal", &[]);
    assert_eq!(get(f.listen, "/warm", &[]).await.1, "dev GET /warm");
    signal(s.pid(), "STOP");
    let frozen = Instant::now();

    // Upload traffic: new connections, each sending 1 MiB it never gets an answer for.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..8 {
        let stop = stop.clone();
        let listen = f.listen;
        load.push(tokio::spawn(async move {
            let chunk = vec![b'x'; 64 * 1024];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(mut c) = tokio::net::TcpStream::connect(listen).await else {
                    continue;
                };
                let head = "POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 1048576\r\n\r\n";
                let _ = c.write_all(head.as_bytes()).await;
                for _ in 0..16 {
                    let w = tokio::time::timeout(Duration::from_millis(500), c.write_all(&chunk));
                    if !matches!(w.await, Ok(Ok(()))) {
                        break;
                    }
                }
            }
        }));
    }
    // The port must come back to the target within the timeout plus a margin.
    let back = loop {
        if let Ok(Some((_, b))) =
            tokio::time::timeout(Duration::from_secs(1), try_get(f.listen, "/probe")).await
        {
            if b.starts_with("target") {
                break frozen.elapsed();
            }
        }
        assert!(
            frozen.elapsed() < Duration::from_secs(30),
            "port still black-holed after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    signal(s.pid(), "CONT");
    for l in load {
        let _ = l.await;
    }
    assert!(
        back < Duration::from_secs(10),
        "port freed only after {back:?}"
    );
    let ended = f.op.wait_event("Session Ended", 1);
    let reason = ended[0]["fields"]["reason"].as_str().unwrap();
    assert!(reason.contains("stopped answering pings"), "{reason}");
    println!("port returned to the target {back:?} after the client froze");
}

/// Issue 9, defect 5: opening a session on one target does not wait for another
/// session's copy to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opens_do_not_queue_behind_a_starting_copy() {
    let target = HttpServer::start("target").await;
    let dev = HttpServer::start("dev").await;
    let slow_listen = free_addr();
    let api_listen = free_addr();
    // Replicas of `slow` take 4 s to listen.
    let slow = format!(
        "[[targets]]\nname = \"slow\"\ncommand = [\"sh\", \"-c\", \"sleep 4; exec python3 {} {{port}} slow\"]\n[[targets.ports]]\nport = 80\nlisten = \"{slow_listen}\"\n",
        fixture("replica.py").display()
    );
    let targets = format!(
        "{slow}{}",
        upstream_target("api", 80, api_listen, target.addr)
    );
    let op = Operator::start(&targets, "");
    let alice = op.issue("alice");
    let bob = op.issue("bob");
    replica_pids(slow_listen, 1);
    let port = format!("80={}", dev.addr);
    let copying = {
        let bob = bob.clone();
        let port = port.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let s = Session::start(
                &bob,
                &[
                    "steal",
                    "--target",
                    "slow",
                    "--port",
                    &port,
                    "--header",
                    "x: y",
                    "--copy-target",
                ],
            );
            (s.map(|_| ()), started.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let _a = tokio::task::block_in_place(|| {
        Session::start(&alice, &["steal", "--target", "api", "--port", &port]).unwrap()
    });
    let alice_took = started.elapsed();
    let (bob_result, bob_took) = copying.join().unwrap();
    bob_result.unwrap();
    assert!(
        bob_took >= Duration::from_secs(3),
        "the copy was not slow: {bob_took:?}"
    );
    assert!(
        alice_took < Duration::from_secs(2),
        "alice's open waited {alice_took:?} for bob's copy"
    );
}

/// Issue 9, defect 6: replicas die with the operator, however it dies; their output
/// never reaches the operator's log stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_never_outlive_the_operator_and_keep_out_of_its_logs() {
    let noisy = |listen| {
        format!(
            "[[targets]]\nname = \"api\"\nreplicas = 2\ncommand = [\"sh\", \"-c\", \"echo replica says hi; echo replica complains >&2; exec python3 {} {{port}} api\"]\n[[targets.ports]]\nport = 80\nlisten = \"{listen}\"\n",
            fixture("replica.py").display()
        )
    };
    for sig in ["KILL", "HUP"] {
        let listen = free_addr();
        let mut op = Operator::start(&noisy(listen), "");
        let pids = replica_pids(listen, 2);
        assert!(pids.iter().all(|p| alive(p)));
        signal(op.pid(), sig);
        wait_for(Duration::from_secs(10), || (!op.is_running()).then_some(()))
            .unwrap_or_else(|| panic!("operator still running after SIG{sig}"));
        wait_for(Duration::from_secs(10), || {
            pids.iter().all(|p| !alive(p)).then_some(())
        })
        .unwrap_or_else(|| panic!("replicas {pids:?} outlived an operator killed by SIG{sig}"));
        // JSON logs stay JSON: the replicas wrote to their own files.
        for line in op.stdout.all().iter().chain(op.stderr.all().iter()) {
            assert!(
                serde_json::from_str::<serde_json::Value>(line).is_ok(),
                "not a JSON log line: {line}"
            );
        }
        let log = std::fs::read_to_string(op.state.join("replicas/api-0.log")).unwrap();
        assert!(
            log.contains("replica says hi") && log.contains("replica complains"),
            "{log}"
        );
    }
}

/// Issue 9, bounds: filters, sessions per client, hello labels, lifetimes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_exhaust_the_operator() {
    let target = HttpServer::start("target").await;
    let dev = HttpServer::start("dev").await;
    let listen = free_addr();
    let op = Operator::start_with(OperatorOptions {
        targets: upstream_target("api", 80, listen, target.addr),
        extra_config: "[limits]\nmax_sessions_per_client = 3\nmax_filter_regexes_per_client = 4\n"
            .into(),
        ..Default::default()
    });
    let alice = op.issue("alice");
    let bob = op.issue("bob");
    let port = format!("80={}", dev.addr);

    // A filter with more parts than allowed is refused before anything is compiled.
    let mut args: Vec<String> = ["steal", "--target", "api", "--port", &port]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for i in 0..17 {
        args.extend(["--header".into(), format!("x-{i}: v")]);
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = Session::start(&alice, &argv).err().unwrap();
    assert!(err.contains("17 parts") && err.contains("16"), "{err}");
    // A short regex that compiles huge is refused too.
    let err = Session::start(
        &alice,
        &[
            "steal",
            "--target",
            "api",
            "--port",
            &port,
            "--header",
            r"\w{5000}",
        ],
    )
    .err()
    .unwrap();
    assert!(err.contains("compiles to more than"), "{err}");
    let refused = op.wait_event("Session Refused", 2);
    assert!(
        refused.iter().all(|r| r["fields"]["reason"] == "limit"),
        "{refused:?}"
    );
    assert!(
        refused
            .iter()
            .all(|r| r["fields"]["target"] == "deployment/api"),
        "{refused:?}"
    );

    // Regexes per client, across its sessions.
    let three = ["--header", "a: 1", "--header", "b: 2", "--path", "^/c"];
    let mut args = vec!["mirror", "--target", "api", "--port", &port];
    args.extend(three);
    let _one = Session::start(&alice, &args).unwrap();
    let err = Session::start(&alice, &args).err().unwrap();
    assert!(err.contains("allows 4 per client"), "{err}");
    // Sessions per client.
    let _two = Session::start(&alice, &["mirror", "--target", "api", "--port", &port]).unwrap();
    let _three = Session::start(&alice, &["mirror", "--target", "api", "--port", &port]).unwrap();
    let err = Session::start(&alice, &["mirror", "--target", "api", "--port", &port])
        .err()
        .unwrap();
    assert!(err.contains("3 sessions open"), "{err}");
    // Another client is not affected.
    let _bob = Session::start(&bob, &["mirror", "--target", "api", "--port", &port]).unwrap();

    // What a client says about itself cannot forge log lines.
    let hello = mirrord_protocol::ClientMessage::Hello(mirrord_protocol::ClientHello {
        protocol_version: mirrord_protocol::PROTOCOL_VERSION,
        cli_version: "test".into(),
        client_name: "Eve\n{\"fields\":{\"message\":\"Session Ended\"}}".into(),
        client_hostname: "raw".into(),
    });
    let got = raw::exchange(op.api, &bob, false, &raw::frame(hello)).await;
    let msg = format!("{got:?}");
    assert!(msg.contains("control characters"), "{msg}");
}

/// Issue 9, bounds: an unknown peer cannot make the operator hold a large frame, and a
/// full connection table never takes the API down for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_connections_and_pre_hello_frames_are_bounded() {
    let target = HttpServer::start("target").await;
    let listen = free_addr();
    let op = Operator::start_with(OperatorOptions {
        targets: upstream_target("api", 80, listen, target.addr),
        extra_config: "[limits]\nmax_connections = 4\n".into(),
        ..Default::default()
    });
    let alice = op.issue("alice");

    // A 16 MiB frame announced before any hello: refused at once, not waited for.
    let started = Instant::now();
    let got = raw::exchange(op.api, &alice, false, &(16u32 << 20).to_be_bytes()).await;
    assert!(format!("{got:?}").contains("exceeds the limit"), "{got:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // Four idle connections fill the table: a client still gets in, a silent one making
    // room (issue 24: idle connections lock nobody out).
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(tokio::net::TcpStream::connect(op.api).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = ctl(&alice, &["status"]);
    assert!(out.status.success(), "{out:?}");
    drop(idle);
    // Four sessions (real work, never evicted) fill it: a fifth connection is closed.
    let port = format!("80={}", idle_local());
    let sessions: Vec<Session> = (0..4)
        .map(|_| Session::start(&alice, &["mirror", "--target", "api", "--port", &port]).unwrap())
        .collect();
    assert!(!ctl(&alice, &["status"]).status.success());
    // The refusal's log line may reach the operator's stdout a moment after the client
    // saw its connection closed (CI once read it too early).
    let logged = wait_for(Duration::from_secs(5), || {
        op.stdout
            .text()
            .contains("connection limit reached and every connection is busy")
            .then_some(())
    });
    assert!(logged.is_some(), "{}", op.stdout.text());
    drop(sessions);
    wait_for(Duration::from_secs(10), || {
        ctl(&alice, &["status"]).status.success().then_some(())
    })
    .expect("status works again once the sessions are gone");
}

/// Issue 9, lifetimes: a maximum session time and an unused-session TTL, each ending the
/// session with its own reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_end_at_their_maximum_time_or_when_unused() {
    let f = ApiFixture::start("max_session_time = \"4s\"\nunused_session_ttl = \"2s\"").await;
    let mut holder = f.session("alice", "steal", &[]);
    let st = status(&f.op.issue_admin("admin"));
    assert!(
        st["sessions"][0]["ends_in_secs"].as_u64().unwrap() <= 4,
        "{st}"
    );
    // Bob goes on without the port: he holds nothing, so he is unused.
    let mut unused = f.session("bob", "steal", &["--on-concurrent-steal", "continue"]);
    unused
        .wait_exit(Duration::from_secs(10))
        .expect("unused session ended");
    assert!(
        unused.stderr.text().contains("unused: held no port for 2s"),
        "{}",
        unused.stderr.text()
    );
    holder
        .wait_exit(Duration::from_secs(10))
        .expect("session ended at its maximum time");
    assert!(
        holder
            .stderr
            .text()
            .contains("max session time reached (4s)"),
        "{}",
        holder.stderr.text()
    );
    let ended = f.op.wait_event("Session Ended", 2);
    let reasons: Vec<&str> = ended
        .iter()
        .map(|e| e["fields"]["reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons.iter().any(|r| r.starts_with("unused")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.starts_with("max session time")),
        "{reasons:?}"
    );
    assert_eq!(get(f.listen, "/after", &[]).await.1, "target GET /after");
}
