//! A session's life on its connection: handoffs from the data plane become frames to the
//! developer, frames from the developer go back into the data plane, pings measure the
//! round trip and notice a client that is gone.

use crate::api::{error, kind, reject_frame, Inbound, NextError, Operator};
use crate::open::Opened;
use crate::sessions::Control;
use bytes::Bytes;
use futures::StreamExt;
use mirrord_dataplane::{Handoff, StolenResponse};
use mirrord_protocol::pump::{conn_channel, relay, ConnFrames, ConnInbox};
use mirrord_protocol::{ClientMessage, ErrorCode, PortMode, ServerMessage};
use mirrord_telemetry::Event;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot, watch};

pub async fn run(
    op: &Arc<Operator>,
    opened: Opened,
    mut inbound: Inbound,
    out: mpsc::Sender<ServerMessage>,
) {
    let Opened {
        entry,
        mut handoffs,
        mut ctl,
    } = opened;
    let id = entry.id;
    // Dropped when the session ends: every connection task of the session stops with it,
    // which closes the connections it was carrying.
    let (alive, _) = watch::channel(());
    let mut conns: HashMap<u64, ConnInbox> = HashMap::new();
    let mut pending: HashMap<u64, oneshot::Sender<StolenResponse>> = HashMap::new();
    // Response bodies still streaming in from the developer, by request.
    let mut bodies: HashMap<u64, ConnInbox> = HashMap::new();
    let mut next_id: u64 = 1;
    let mut pings: VecDeque<(u64, Instant)> = VecDeque::new();
    let mut nonce: u64 = 0;
    let mut last_seen = Instant::now();
    let mut tick = tokio::time::interval(op.cfg.ping_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let reason: String = loop {
        tokio::select! {
            frame = inbound.next() => {
                let msg = match frame {
                    None => break "client disconnected".into(),
                    Some(Err(mirrord_protocol::FrameError::Io(e))) => {
                        break format!("client disconnected ({e})");
                    }
                    Some(Err(e)) => {
                        let e = NextError::Frame(e);
                        reject_frame(&out, &format!("session {id}"), &e).await;
                        break format!("client sent a bad frame: {e}");
                    }
                    Some(Ok(m)) => m,
                };
                last_seen = Instant::now();
                match msg {
                    ClientMessage::Pong { nonce: n } => {
                        while let Some((sent_nonce, at)) = pings.pop_front() {
                            if sent_nonce == n {
                                let rtt = at.elapsed();
                                *entry.ping.lock().expect("ping lock") = Some(rtt);
                                op.telemetry.record(Event::PingLatency { session: Arc::clone(&entry.meta), rtt });
                                break;
                            }
                        }
                    }
                    ClientMessage::ConnData { conn, data } => {
                        // Never waits: a connection too far behind is closed instead.
                        if conns.get(&conn).is_some_and(|c| !c.push(data)) {
                            conns.remove(&conn);
                            tracing::debug!(session_id = %id, conn, "connection fell too far behind; closed");
                            let _ = out.send(ServerMessage::ConnClose { conn }).await;
                        }
                    }
                    ClientMessage::ConnClose { conn } => {
                        conns.remove(&conn);
                    }
                    ClientMessage::HttpResponse { req, head, body, end } => {
                        let Some(respond) = pending.remove(&req) else { continue };
                        let upgraded = if head.status == 101 {
                            let (near, far) = tokio::io::duplex(mirrord_dataplane::handoff::HANDOFF_BUFFER);
                            conns.insert(req, spawn_conn(req, far, out.clone(), alive.subscribe()));
                            Some(near)
                        } else {
                            None
                        };
                        let (body, more) = mirrord_protocol::body::receive(body, end);
                        if let Some(inbox) = more {
                            bodies.insert(req, inbox);
                        }
                        let _ = respond.send(StolenResponse::Response { head, body, upgraded });
                    }
                    ClientMessage::HttpBody { req, data, end } => {
                        // Like connection bytes: never waited on; too far behind ends it.
                        if bodies.get(&req).is_some_and(|b| !b.push(data)) || end {
                            bodies.remove(&req);
                        }
                    }
                    ClientMessage::HttpFailed { req, reason } => {
                        if let Some(respond) = pending.remove(&req) {
                            let _ = respond.send(StolenResponse::Failed(reason));
                        }
                    }
                    ClientMessage::EndSession => break "client ended the session".into(),
                    other => {
                        // Not fatal: the session goes on, the client learns what was wrong.
                        let m = format!("{} is not valid inside a session", kind(&other));
                        tracing::warn!(session_id = %id, "{m}");
                        let _ = out.send(error(ErrorCode::BadRequest, m)).await;
                    }
                }
            }
            Some(h) = handoffs.recv() => {
                let conn = next_id;
                next_id += 1;
                match h {
                    Handoff::StolenConnection { port, peer, io } => {
                        if out.send(ServerMessage::NewConnection { conn, port, mode: PortMode::Steal, peer }).await.is_err() {
                            break "connection to client lost".into();
                        }
                        conns.insert(conn, spawn_conn(conn, io, out.clone(), alive.subscribe()));
                    }
                    Handoff::MirroredConnection { port, peer, rx } => {
                        if out.try_send(ServerMessage::NewConnection { conn, port, mode: PortMode::Mirror, peer }).is_ok() {
                            spawn_mirror(conn, rx, out.clone(), alive.subscribe());
                        }
                    }
                    Handoff::StolenRequest { port, head, body, respond } => {
                        pending.insert(conn, respond);
                        // The body may trickle in: it is sent by its own task, head first.
                        let out = out.clone();
                        let mut alive = alive.subscribe();
                        tokio::spawn(async move {
                            let send = mirrord_protocol::body::send(
                                body,
                                &out,
                                |body, end| ServerMessage::HttpRequest { req: conn, port, mode: PortMode::Steal, head, body, end },
                                |data, end| ServerMessage::HttpBody { req: conn, data, end },
                            );
                            tokio::select! {
                                _ = send => {}
                                _ = alive.changed() => {}
                            }
                        });
                    }
                    Handoff::MirroredRequest { port, head, body } => {
                        // A mirror copy never waits: if the client is behind, it is dropped.
                        let _ = out.try_send(ServerMessage::HttpRequest { req: conn, port, mode: PortMode::Mirror, head, body, end: true });
                    }
                }
            }
            Some(c) = ctl.recv() => match c {
                Control::Ended(reason) => {
                    let _ = out.send(ServerMessage::SessionEnded { reason: reason.clone() }).await;
                    break reason;
                }
                Control::PortLost { port, reason } => {
                    let _ = out.send(ServerMessage::PortLost { port, reason }).await;
                }
            },
            _ = tick.tick() => {
                let silent = last_seen.elapsed();
                if silent > op.cfg.client_timeout {
                    let reason = format!("client stopped answering pings for {} s", silent.as_secs());
                    let _ = out.try_send(ServerMessage::SessionEnded { reason: reason.clone() });
                    break reason;
                }
                nonce += 1;
                pings.push_back((nonce, Instant::now()));
                if pings.len() > 64 { pings.pop_front(); }
                let _ = out.try_send(ServerMessage::Ping { nonce });
            }
        }
    };
    drop(alive);
    drop(conns);
    for (_, respond) in pending.drain() {
        let _ = respond.send(StolenResponse::Failed(format!("session ended: {reason}")));
    }
    op.sessions.end(id, &reason);
}

/// Carries one stolen connection (or upgraded request) between the data plane's duplex and
/// the client's frames, until either side closes or the session ends.
fn spawn_conn<IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static>(
    conn: u64,
    io: IO,
    out: mpsc::Sender<ServerMessage>,
    mut alive: watch::Receiver<()>,
) -> ConnInbox {
    let (tx, rx) = conn_channel();
    let frames = ConnFrames {
        data: |conn, data| ServerMessage::ConnData { conn, data },
        close: |conn| ServerMessage::ConnClose { conn },
    };
    tokio::spawn(async move {
        let stop = async move {
            let _ = alive.changed().await;
        };
        relay(conn, io, rx, out, frames, true, stop).await
    });
    tx
}

fn spawn_mirror(
    conn: u64,
    mut rx: mpsc::Receiver<Bytes>,
    out: mpsc::Sender<ServerMessage>,
    mut alive: watch::Receiver<()>,
) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                d = rx.recv() => match d {
                    Some(data) => {
                        // Never wait on a slow client: drop the copy instead.
                        if out.try_send(ServerMessage::ConnData { conn, data }).is_err() { break; }
                    }
                    None => break,
                },
                _ = alive.changed() => return,
            }
        }
        let _ = out.send(ServerMessage::ConnClose { conn }).await;
    });
}
