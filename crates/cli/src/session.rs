//! `steal` / `mirror`: open a session and carry its traffic to the local process until
//! Ctrl-C, SIGTERM, or the operator ends it.

use crate::connect::{connect, Endpoint};
use crate::exit::{self, Refused};
use crate::local::{self, LocalHttp, LocalRequest};
use crate::plan::Plan;
use anyhow::Context;
use futures::{SinkExt, StreamExt};
use mirrord_protocol::{ClientMessage, PortRequest, ServerMessage, SessionRequest};
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

pub async fn run(ep: &Endpoint, plan: Plan, mut child: Local) -> anyhow::Result<u8> {
    let port_map: Vec<(u16, SocketAddr)> = plan.ports.iter().map(|p| (p.remote, p.local)).collect();
    match child.as_mut() {
        None => check_local(&port_map).await?,
        Some(c) => crate::exec::wait_listening(c, &port_map).await?,
    }
    let ports: HashMap<u16, SocketAddr> = port_map.iter().copied().collect();
    let target = plan.target.clone();
    let (mut t, welcome) = connect(ep, Some(&target.namespace)).await?;
    t.send(ClientMessage::OpenSession(SessionRequest {
        target: target.clone(),
        ports: plan
            .ports
            .iter()
            .map(|p| PortRequest {
                port: p.remote,
                mode: plan.mode,
                filter: p.filter.clone(),
            })
            .collect(),
        on_concurrent_steal: plan.on_concurrent_steal,
        copy_target: plan.copy_target,
        scale_down: plan.scale_down,
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
    println!(
        "session {} active on {target} (namespace {}) as {}",
        opened.session_id, target.namespace, welcome.client_user
    );
    if let Some(copy) = &opened.copy {
        println!(
            "working on copy {copy}{}",
            if plan.scale_down {
                " (originals scaled down)"
            } else {
                ""
            }
        );
    }
    for p in &opened.ports {
        let local = ports[&p.port];
        match &p.skipped {
            None if p.filter.is_empty() => println!("port {}: {} -> {local}", p.port, p.mode),
            None => println!("port {}: {} ({}) -> {local}", p.port, p.mode, p.filter),
            Some(why) => println!("port {}: {why}", p.port),
        }
        for o in &p.overlaps {
            eprintln!(
                "mirrordctl: warning: {}",
                crate::overlaps::warning(p.port, o)
            );
        }
    }

    let (sink, mut inbound) = t.split();
    let (out, out_rx) = mpsc::channel::<ClientMessage>(1024);
    // Joined (with a bound) when the session ends.
    let writer = tokio::spawn(mirrord_tunnel::pump::write_frames(sink, out_rx));
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
            _ = int.recv() => Some(("interrupted", exit::INTERRUPTED)),
            // `exec`: the process ended, so does the session; its exit code is ours.
            code = crate::exec::exited(&mut child), if leaving.is_none() => {
                Some(("the local process exited", code))
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
                        // A local process that stops reading costs its connection (closed
                        // once too far behind), never this loop's pongs or other traffic.
                        if carried.conn_data(conn, data).is_err() {
                            let _ = out.send(ClientMessage::ConnClose { conn }).await;
                        }
                    }
                    ServerMessage::ConnClose { conn } => carried.conn_close(conn),
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
    drop(out);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), writer).await;
    Ok(code)
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
