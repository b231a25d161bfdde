//! `steal` / `mirror`: open a session and carry its traffic to the local process until
//! Ctrl-C, SIGTERM, or the operator ends it.

use crate::connect::{connect, Endpoint};
use crate::context::ops::Pending;
use crate::context::server::LayerServer;
use crate::context::Op;
use crate::exit::{self, Refused};
use crate::local::{self, LocalHttp, LocalRequest};
use crate::plan::Plan;
use anyhow::Context;
use futures::{SinkExt, StreamExt};
use mirrord_protocol::{
    ClientMessage, ContextReply, PortOutcome, PortRequest, ServerMessage, SessionRequest, TargetRef,
};
use mirrord_tunnel::demux::Demux;
use mirrord_tunnel::pump::ConnInbox;
use std::collections::HashMap;
use std::net::SocketAddr;
use tokio::sync::mpsc;

/// Waits for the operator's answer; when that takes a while (a copy of the target is
/// starting, the operator is busy), says so on stderr, then every few seconds.
async fn with_progress<F: std::future::Future>(answer: F, plan: &Plan) -> F::Output {
    use std::time::Duration;
    tokio::pin!(answer);
    let started = tokio::time::Instant::now();
    let mut tick =
        tokio::time::interval_at(started + Duration::from_secs(1), Duration::from_secs(5));
    loop {
        tokio::select! {
            out = &mut answer => return out,
            _ = tick.tick() => {
                let waited = started.elapsed().as_secs();
                if plan.copy_target {
                    eprintln!("mirrordctl: the operator is starting a copy of {} ({waited}s)...", plan.target);
                } else {
                    eprintln!("mirrordctl: waiting for the operator to open the session ({waited}s)...");
                }
            }
        }
    }
}

/// The local process `exec` started: the session lives as long as it does.
pub type Local = Option<tokio::process::Child>;

/// Runs a session; with `command` (`exec`), as long as that process. A process that gets
/// the target's context starts once the session is open (it needs the target's
/// environment), and its ports are added when it listens; otherwise it starts first and
/// the session opens with its ports.
pub async fn run(ep: &Endpoint, plan: Plan, command: Option<Vec<String>>) -> anyhow::Result<u8> {
    let port_map: Vec<(u16, SocketAddr)> = plan.ports.iter().map(|p| (p.remote, p.local)).collect();
    // The layer runs in the process for its context, or to tell the ports it listens on.
    let in_context =
        command.is_some() && (!plan.context.request.is_empty() || plan.listen.is_some());
    let mut listens = plan
        .listen
        .clone()
        .map(|l| crate::context::listens::Listens::new(l, plan.mode));
    let mut child: Local = None;
    match &command {
        _ if in_context => {}
        None => check_local(&port_map).await?,
        Some(argv) => {
            let mut c = crate::exec::spawn(argv, None)?;
            crate::exec::wait_listening(&mut c, &port_map).await?;
            child = Some(c);
        }
    }
    // The target's ports and where their traffic goes here (more as the process listens).
    let mut ports: HashMap<u16, SocketAddr> = port_map.iter().copied().collect();
    let target = plan.target.clone();
    let (mut t, welcome) = connect(ep, Some(&target.namespace)).await?;
    t.send(ClientMessage::OpenSession(SessionRequest {
        target: target.clone(),
        ports: if in_context {
            Vec::new()
        } else {
            port_requests(&plan)
        },
        on_concurrent_steal: plan.on_concurrent_steal,
        copy_target: plan.copy_target,
        scale_down: plan.scale_down,
        context: if in_context {
            plan.context.request.clone()
        } else {
            Default::default()
        },
        listen: plan.listen.is_some(),
        profile: plan.profile.clone(),
    }))
    .await?;
    let answer = with_progress(t.next(), &plan);
    let opened = match answer.await {
        Some(Ok(ServerMessage::SessionOpened(o))) => o,
        Some(Ok(ServerMessage::Error(e))) => return Err(Refused(e).into()),
        Some(Ok(other)) => anyhow::bail!("unexpected answer from the operator: {other:?}"),
        Some(Err(e)) => return Err(e).context("reading the operator's answer"),
        None => anyhow::bail!("the operator closed the connection"),
    };
    // With ports still to add, the session is announced once they are in effect: whoever
    // waits for that line may send traffic right after it.
    let active = format!(
        "session {} active on {target} (namespace {}) as {}",
        opened.session_id, target.namespace, welcome.client_user
    );
    let copy = opened.copy.as_ref().map(|copy| {
        format!(
            "working on copy {copy}{}",
            if plan.scale_down {
                " (originals scaled down)"
            } else {
                ""
            }
        )
    });
    let announce = || {
        println!("{active}");
        if let Some(c) = &copy {
            println!("{c}");
        }
    };
    let defer = in_context && !port_map.is_empty();
    if defer {
        eprintln!(
            "mirrordctl: session {} open; starting the process (its ports are added once it listens)",
            opened.session_id
        );
    } else {
        announce();
    }
    print_ports(&opened.ports, &ports, &target);

    let (sink, mut inbound) = t.split();
    let (out, out_rx) = mpsc::channel::<ClientMessage>(1024);
    // Joined (with a bound) when the session ends.
    let writer = tokio::spawn(mirrord_tunnel::pump::write_frames(sink, out_rx));
    // `exec` in the target's context: the layer's operations, and the process.
    let (ops_tx, mut ops_rx) = mpsc::channel::<Op>(64);
    let mut pending = Pending::default();
    // The process's own outgoing connections (their slow readers are waited for).
    let mut outgoing = std::collections::HashSet::<u64>::new();
    let mut layer_socket = None;
    let mut ports_wanted = false;
    if let (true, Some(argv)) = (in_context, &command) {
        let granted = opened.context.clone().unwrap_or_default();
        report_context(&granted, &plan);
        let (env, socket) = process_env(&plan, &granted, argv, ops_tx.clone(), out.clone())?;
        if socket.is_some() {
            if let Some(why) = argv.first().and_then(|p| {
                crate::context::program::uncovered(
                    p,
                    env.get(std::ffi::OsStr::new("PATH")).map(|v| v.as_os_str()),
                )
            }) {
                eprintln!("mirrordctl: warning: {why}");
            }
        }
        layer_socket = socket;
        child = Some(crate::exec::spawn(argv, Some(&env))?);
        ports_wanted = !port_map.is_empty();
    }
    // Kept for writing the process's files back at its end; the layer's connections hold
    // the others.
    let flush_ops = ops_tx;
    let listening = crate::exec::listening(if ports_wanted {
        port_map.clone()
    } else {
        Vec::new()
    });
    tokio::pin!(listening);
    let http = LocalHttp::new();
    // Per handed-over connection, per stolen request the local process upgraded (101),
    // and per request body still streaming in: where the operator's bytes go (never waited
    // on; the same bookkeeping as the operator's side). A plain request has no entry, so
    // this stays as small as what is open however many requests a session serves.
    let mut carried = Demux::default();
    // Upgraded requests' inboxes, registered by their tasks before they send the 101.
    let (upgrades, mut upgraded) = mpsc::unbounded_channel::<(u64, ConnInbox)>();
    // Registered once, before the loop: a listener created per iteration would miss a
    // signal delivered between iterations.
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;

    // After Ctrl-C: the operator stops routing to this session at once, and its answers
    // to requests already here still go back; it says when it is done (or this runs out).
    // Why, and the exit code it means.
    let mut leaving: Option<(&str, u8)> = None;
    // The process ended and its changed files are being written back: why, and when done.
    let mut ended: Option<((&str, u8), tokio::sync::oneshot::Receiver<()>)> = None;
    let drain = tokio::time::sleep(std::time::Duration::from_secs(86_400 * 365));
    tokio::pin!(drain);
    let code = loop {
        let signal = tokio::select! {
            // First: an upgrade registered before its 101 went out must be in `conns`
            // before any frame that arrived after that 101 is handled.
            biased;
            Some((req, inbox)) = upgraded.recv() => {
                carried.add_conn(req, inbox);
                None
            }
            Some(op) = ops_rx.recv() => {
                match op {
                    Op::Ask(ask) => { let _ = out.send(pending.start(ask)).await; }
                    Op::Listen { addr, reply } => {
                        if let Some(a) = listens.as_mut().and_then(|l| l.listen(addr, reply)) {
                            // Before the operator may route anything to it.
                            ports.insert(a.remote, a.local);
                            let _ = out.send(a.message).await;
                        }
                    }
                    Op::Unlisten { port } => {
                        if let Some((remote, m)) = listens.as_mut().and_then(|l| l.unlisten(port)) {
                            println!("port {remote}: given back (the process stopped listening on {port})");
                            let _ = out.send(m).await;
                        }
                    }
                }
                None
            }
            done = &mut listening, if ports_wanted => {
                ports_wanted = false;
                match done {
                    Ok(()) => { let _ = out.send(ClientMessage::AddPorts { ports: port_requests(&plan) }).await; }
                    Err(e) => {
                        eprintln!("mirrordctl: {e}");
                        crate::exec::stop(&mut child).await;
                        break exit::FAILED;
                    }
                }
                None
            }
            _ = int.recv() => Some(("interrupted", exit::INTERRUPTED)),
            // `exec`: the process ended, so does the session; its exit code is ours. The
            // target's files it changed go back first (the loop keeps serving meanwhile).
            code = crate::exec::exited(&mut child), if leaving.is_none() && ended.is_none() => {
                let why = if ports_wanted {
                    // As when the process starts first: it never served, so this failed.
                    ("the local process exited before it listened on its ports", exit::FAILED)
                } else {
                    ("the local process exited", code)
                };
                match &layer_socket {
                    Some(socket) => {
                        let (copies, ops) = (std::sync::Arc::clone(&socket.copies), flush_ops.clone());
                        let (done, flushed) = tokio::sync::oneshot::channel();
                        tokio::spawn(async move {
                            copies.flush(&ops).await;
                            let _ = done.send(());
                        });
                        ended = Some((why, flushed));
                        None
                    }
                    None => Some(why),
                }
            }
            _ = async { let _ = (&mut ended.as_mut().expect("guarded").1).await; }, if ended.is_some() => {
                ended.take().map(|(why, _)| why)
            }
            _ = term.recv() => Some(("terminated", exit::TERMINATED)),
            _ = &mut drain, if leaving.is_some() => break left(leaving),
            frame = inbound.next() => {
                let msg = match frame {
                    None if leaving.is_some() => break left(leaving),
                    None => {
                        eprintln!("mirrordctl: connection to the operator lost; session {} is over", opened.session_id);
                        crate::exec::stop(&mut child).await;
                        break exit::FAILED;
                    }
                    Some(Err(e)) => {
                        eprintln!("mirrordctl: bad frame from the operator: {e}");
                        break exit::FAILED;
                    }
                    Some(Ok(m)) => m,
                };
                match msg {
                    ServerMessage::Ping { nonce } => { let _ = out.send(ClientMessage::Pong { nonce }).await; }
                    ServerMessage::NewConnection { conn, port, mode, .. } => {
                        let Some(addr) = ports.get(&port).copied() else { continue };
                        carried.add_conn(conn, local::spawn_connection(conn, addr, mode, out.clone()));
                    }
                    ServerMessage::ConnData { conn, data } => {
                        // The process's own outgoing connection, read slower than the
                        // operator sends (a bulk download), is waited for: the operator's
                        // queue to this session fills and it stops reading from the peer,
                        // so nothing is lost. One that stops reading costs its connection
                        // after SLOW_READER, within the default ping timeout (10 s). Handed-
                        // over traffic is never waited for (a stuck local server must not
                        // hold the session's pongs): it costs its own connection at once.
                        if outgoing.contains(&conn) {
                            wait_for_reader(&carried, conn).await;
                        }
                        if carried.conn_data(conn, data).is_err() {
                            // Said, never silent: the process sees the connection end early.
                            eprintln!(
                                "mirrordctl: connection {conn} closed: the local process was more than {} MiB behind reading it (connections are not flow-controlled yet)",
                                mirrord_tunnel::pump::CONN_BACKLOG_LIMIT >> 20
                            );
                            let _ = out.send(ClientMessage::ConnClose { conn }).await;
                        }
                    }
                    ServerMessage::ConnClose { conn } => {
                        carried.conn_close(conn);
                        outgoing.remove(&conn);
                    }
                    ServerMessage::HttpRequest { req, port, mode, head, body, end } => {
                        let Some(addr) = ports.get(&port).copied() else { continue };
                        let (body, more) = mirrord_tunnel::body::receive(body, end);
                        if let Some(inbox) = more {
                            carried.add_body(req, inbox);
                        }
                        http.spawn(LocalRequest { req, addr, mode, head: *head, body }, out.clone(), upgrades.clone());
                    }
                    ServerMessage::HttpBody { req, data, end } => carried.body_data(req, data, end),
                    ServerMessage::HttpTrailers { req, trailers } => carried.body_trailers(req, &trailers),
                    ServerMessage::Upgraded { .. } => {}
                    ServerMessage::Notice { message } => eprintln!("mirrordctl: {message}"),
                    ServerMessage::PortLost { port, reason } => {
                        eprintln!("mirrordctl: port {port} is no longer stolen: {reason}");
                    }
                    ServerMessage::SessionEnded { .. } if leaving.is_some() => break left(leaving),
                    ServerMessage::SessionEnded { reason } => {
                        eprintln!("mirrordctl: session {} ended by the operator: {reason}", opened.session_id);
                        crate::exec::stop(&mut child).await;
                        break exit::FAILED;
                    }
                    ServerMessage::Error(e) => {
                        eprintln!("mirrordctl: operator error: {e}");
                    }
                    ServerMessage::Resolved { op, result } => pending.resolved(op, result),
                    ServerMessage::File { op, result } => {
                        let opened = match &result {
                            Ok(mirrord_protocol::FileAnswer::File { conn, .. }) => Some(*conn),
                            _ => None,
                        };
                        match pending.file(op, result, &mut carried) {
                            Some(close) => { let _ = out.send(close).await; }
                            None => outgoing.extend(opened),
                        }
                    }
                    ServerMessage::Connected { op, result } => {
                        let opened = result.as_ref().ok().map(|c| c.conn);
                        match pending.connected(op, result, &mut carried) {
                            Some(close) => { let _ = out.send(close).await; }
                            None => outgoing.extend(opened),
                        }
                    }
                    ServerMessage::PortsAdded { ports: added } => {
                        match listens.as_mut().filter(|l| l.waiting()) {
                            Some(l) => l.added(),
                            None => announce(),
                        }
                        print_ports(&added, &ports, &target);
                    }
                    ServerMessage::PortsRefused(e) if listens.as_ref().is_some_and(|l| l.waiting()) => {
                        if let Some((remote, said)) = listens.as_mut().and_then(|l| l.refused(&e)) {
                            ports.remove(&remote);
                            eprintln!("mirrordctl: {said}");
                        }
                    }
                    ServerMessage::PortsRefused(e) => {
                        eprintln!("mirrordctl: {}", exit::message(&Refused(e).into()));
                        leaving = Some(("the operator refused the process's ports", exit::REFUSED));
                        let _ = out.send(ClientMessage::EndSession).await;
                        drain.as_mut().reset(tokio::time::Instant::now() + LEAVE_WAIT);
                    }
                    other => tracing::debug!(?other, "ignored message"),
                }
                None
            }
        };
        if let Some(why) = signal {
            if leaving.is_some() {
                // Asked twice: leave now.
                break left(leaving);
            }
            leaving = Some(why);
            let _ = out.send(ClientMessage::EndSession).await;
            drain
                .as_mut()
                .reset(tokio::time::Instant::now() + LEAVE_WAIT);
        }
    };
    crate::exec::stop(&mut child).await;
    if let Some((why, _)) = leaving {
        eprintln!("mirrordctl: {why}; session ended");
    }
    drop(carried);
    // Its accept loop holds a sender of `out`: the writer ends only once it is gone.
    drop(layer_socket);
    drop(out);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), writer).await;
    Ok(code)
}

fn port_requests(plan: &Plan) -> Vec<PortRequest> {
    plan.ports
        .iter()
        .map(|p| PortRequest {
            port: p.remote,
            mode: plan.mode,
            filter: p.filter.clone(),
        })
        .collect()
}

/// Each port under the number it was asked by (a Service's port: the operator hands its
/// traffic over under it), once said which of the pods' ports that is.
fn print_ports(outcomes: &[PortOutcome], ports: &HashMap<u16, SocketAddr>, target: &TargetRef) {
    for p in outcomes {
        let asked = p.service_port.unwrap_or(p.port);
        let Some(local) = ports.get(&asked) else {
            continue;
        };
        if asked != p.port {
            println!("port {asked} of {target} is the pods' port {}", p.port);
        }
        match &p.skipped {
            None if p.filter.is_empty() => println!("port {asked}: {} -> {local}", p.mode),
            None => println!("port {asked}: {} ({}) -> {local}", p.mode, p.filter),
            Some(why) => println!("port {asked}: {why}"),
        }
        for o in &p.overlaps {
            eprintln!(
                "mirrordctl: warning: {}",
                crate::overlaps::warning(asked, o)
            );
        }
    }
}

/// Says what the process gets of the target, and what it was denied.
fn report_context(granted: &ContextReply, plan: &Plan) {
    let asked = &plan.context.request;
    let mut got = Vec::new();
    if let Some(env) = &granted.env {
        got.push(format!("environment ({} variables)", env.len()));
    }
    if granted.outgoing {
        let o = &plan.context.layer.outgoing;
        got.push(
            match (o.tcp, o.udp) {
                (true, true) => "outgoing TCP and UDP",
                (false, true) => "outgoing UDP",
                _ => "outgoing TCP",
            }
            .to_owned(),
        );
    }
    if granted.dns {
        got.push("DNS".to_owned());
    }
    if granted.files.reads() {
        got.push(
            if granted.files.writes() {
                "files (read and write)"
            } else {
                "files (read)"
            }
            .to_owned(),
        );
    }
    if !got.is_empty() {
        println!("context: {} of {}", got.join(", "), granted.source);
    }
    if let Some(why) = &granted.unavailable {
        let mut missing = Vec::new();
        if asked.env.is_some() && granted.env.is_none() {
            missing.push("its environment is this machine's");
        }
        if asked.outgoing && !granted.outgoing {
            missing.push("its outgoing connections stay on this machine");
        }
        if asked.dns && !granted.dns {
            missing.push("its names resolve on this machine");
        }
        if asked.files.reads() && !granted.files.reads() {
            missing.push("its files are this machine's");
        }
        eprintln!(
            "mirrordctl: warning: the target's context is unavailable ({why}): {}",
            missing.join(", ")
        );
    }
}

/// The process's environment, and the layer's socket when the operator granted outgoing
/// connections or names (the layer redirects only what was granted).
fn process_env(
    plan: &Plan,
    granted: &ContextReply,
    argv: &[String],
    ops: mpsc::Sender<Op>,
    out: mpsc::Sender<ClientMessage>,
) -> anyhow::Result<(crate::context::env::Env, Option<LayerServer>)> {
    let remote = granted.env.as_deref().unwrap_or_default();
    let mut env = crate::context::env::build(std::env::vars_os(), remote, &plan.context)?;
    let mut layer = plan.context.layer.clone();
    layer.outgoing.tcp &= granted.outgoing;
    layer.outgoing.udp &= granted.outgoing;
    layer.dns.enabled &= granted.dns;
    layer.listen = plan.listen.is_some();
    if !granted.files.reads() {
        layer.files.mode = mirrord_layer_proto::FsMode::Local;
    }
    if layer.files.reads() {
        let path = env.get(std::ffi::OsStr::new("PATH")).map(|v| v.as_os_str());
        let program = argv
            .first()
            .and_then(|p| crate::context::program::locate(p, path));
        layer.files.process_local = crate::context::files::process_local(program.as_deref());
        layer.files.home = std::env::var("HOME").ok();
    }
    if !layer.outgoing.tcp
        && !layer.outgoing.udp
        && !layer.dns.enabled
        && !layer.listen
        && !layer.files.reads()
    {
        return Ok((env, None));
    }
    let file = crate::context::layer_file::find()?;
    let socket = crate::context::server::start(ops, out).context("starting the layer's socket")?;
    crate::context::env::with_layer(&mut env, &file, &socket.path, &layer);
    Ok((env, Some(socket)))
}

/// How long the session loop waits for one connection's local reader to catch up.
const SLOW_READER: std::time::Duration = std::time::Duration::from_secs(2);

/// Waits (at most [`SLOW_READER`]) while connection `conn` has more than half of its
/// backlog limit queued. The relay that drains it runs on this thread, so waiting here is
/// what lets it.
async fn wait_for_reader(carried: &Demux, conn: u64) {
    const HIGH: usize = mirrord_tunnel::pump::CONN_BACKLOG_LIMIT / 2;
    if carried.conn_backlog(conn) <= HIGH {
        return;
    }
    let until = tokio::time::Instant::now() + SLOW_READER;
    while carried.conn_backlog(conn) > HIGH && tokio::time::Instant::now() < until {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

/// The exit code of a session the user ended.
fn left(leaving: Option<(&str, u8)>) -> u8 {
    leaving.map_or(exit::OK, |(_, code)| code)
}

/// Refuses to start when nothing accepts connections where traffic would go: every
/// handed-over connection and request would fail, and the developer would only see the
/// target's clients getting errors.
async fn check_local(ports: &[(u16, SocketAddr)]) -> anyhow::Result<()> {
    const WAIT: std::time::Duration = std::time::Duration::from_secs(3);
    for (port, addr) in ports {
        let why = match tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {}s", WAIT.as_secs()),
        };
        anyhow::bail!(
            "nothing accepts connections on {addr}, where port {port}'s traffic would go \
             ({why}): start your local process first, or point --port {port}=... at it"
        );
    }
    Ok(())
}

/// How long the CLI waits, after asking to leave, for the operator to finish the session
/// (it first lets requests in flight be answered).
const LEAVE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
