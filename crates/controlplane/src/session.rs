//! The session actor: owns a session's connection to its client, the traffic the data
//! plane hands it, its pings and its shutdown.
//!
//! Three futures share one [`CancellationToken`]: the *reader* (frames from the client back
//! into the data plane), the *forwarder* (handoffs from the data plane to the client; it
//! may wait when the client is slow) and the *watchdog* (pings, the client timeout, the
//! session's lifetime limits, and what the registry says). They run side by side in the
//! session's task (a task each would cost every idle session two more task cells, ~0.5 KB);
//! none of them blocks the others, and the watchdog never waits on traffic, so a frozen
//! client is timed out after `client_timeout` however much traffic is queued for it. Every
//! task the session starts (one per carried connection) is in its [`TaskTracker`] and
//! stops with it.

use crate::open::{MorePorts, Opened};
use crate::operator::Operator;
use crate::sessions::{Control, DeadlineCause, SessionEntry};
use futures::StreamExt;
use mirrord_dataplane::handoff::HandoffRx;
use mirrord_dataplane::{Handoff, StolenResponse};
use mirrord_protocol::{ClientMessage, ErrorCode, ErrorReply, FrameError, PortMode, ServerMessage};
use mirrord_telemetry::Event;
use mirrord_tunnel::demux::Demux;
use mirrord_tunnel::pump::{conn_channel, relay, ConnFrames, ConnInbox};
use mirrord_tunnel::shared_tcp::DirectWriter;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
// The runtime's clock: the same as std's in production, and driven by paused time in tests.
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a session's last words to its client may take before it is closed anyway.
const LAST_WORDS: Duration = Duration::from_secs(1);
/// How long an ending session (its routes already gone) keeps carrying the answers to
/// requests the developer already has, so that a route change fails none of them.
const DRAIN: Duration = Duration::from_secs(5);

/// Resolutions and outgoing connects one session may have in flight; more fail at once
/// (EAGAIN-like) rather than queue without bound.
const MAX_OPS: usize = 64;
/// How long a resolution may take before the process is told to try again.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the reader and the forwarder both touch: connections and requests in flight.
#[derive(Default)]
struct InFlight {
    /// Where the client's bytes for carried connections and answers' bodies go (the same
    /// bookkeeping as `mirrordctl`'s).
    carried: Demux,
    pending: HashMap<u64, oneshot::Sender<StolenResponse>>,
    pings: VecDeque<(u64, Instant)>,
    /// Set once the session's routes are gone (under this lock, as `pending` grows: a
    /// request is either owed an answer the drain waits for, or given back): a stolen
    /// request that reaches the session from now on was routed just before, and goes to the
    /// target instead.
    leaving: bool,
}

struct Actor {
    op: Arc<Operator>,
    entry: Arc<SessionEntry>,
    /// What adding ports needs; one addition at a time.
    more: tokio::sync::Mutex<MorePorts>,
    /// Connection ids: stolen and outgoing connections share them.
    next_conn: AtomicU64,
    /// Resolutions and connects in flight (bounded: each holds a task).
    ops: Arc<tokio::sync::Semaphore>,
    out: Outbound,
    cancel: CancellationToken,
    tracker: TaskTracker,
    reason: OnceLock<String>,
    /// Milliseconds after `epoch` when the client was last heard from.
    last_seen: AtomicU64,
    epoch: Instant,
    demux: Mutex<InFlight>,
}

/// Frames to the client, each boxed: the queue preallocates a block of 32 slots per
/// session, 8 bytes each this way rather than a whole message's size (~1.5 KB less for
/// every idle session; one small allocation per frame instead).
pub type Outbound = mpsc::Sender<Box<ServerMessage>>;

/// Frames from the client: the TLS connection's, or anything else that yields them.
pub trait Inbound:
    futures::Stream<Item = Result<ClientMessage, FrameError>> + Send + Unpin + 'static
{
}
impl<T> Inbound for T where
    T: futures::Stream<Item = Result<ClientMessage, FrameError>> + Send + Unpin + 'static
{
}

pub async fn run(op: Arc<Operator>, opened: Opened, inbound: impl Inbound, out: Outbound) {
    let Opened {
        entry,
        handoffs,
        reply,
        notices: _,
        more,
    } = opened;
    // Already sent; otherwise kept (with its list of ports) for the session's life.
    drop(reply);
    let actor = Arc::new(Actor {
        op,
        entry,
        more: tokio::sync::Mutex::new(more),
        next_conn: AtomicU64::new(1),
        ops: Arc::new(tokio::sync::Semaphore::new(MAX_OPS)),
        out,
        cancel: CancellationToken::new(),
        tracker: TaskTracker::new(),
        reason: OnceLock::new(),
        last_seen: AtomicU64::new(0),
        epoch: Instant::now(),
        demux: Mutex::default(),
    });
    let read = Arc::clone(&actor).read(inbound);
    let forward = Arc::clone(&actor).forward(handoffs);
    // All three return once the session is cancelled (by whichever of them, or the
    // registry, ends it first); the forwarder may return before, when its routes are gone.
    tokio::join!(Arc::clone(&actor).watch(), read, forward);
    // Boxed (here and for the last words below): what ending takes is not carried in
    // the session's task for its whole life.
    Box::pin(actor.finish()).await;
}

impl Actor {
    /// Ends the session with `reason` (the first reason given wins).
    fn end(&self, reason: impl Into<String>) {
        let _ = self.reason.set(reason.into());
        self.leave();
        self.cancel.cancel();
    }

    /// From now on, stolen requests that reach the session go to the target.
    fn leave(&self) {
        self.demux.lock().expect("demux lock").leaving = true;
    }

    fn touch(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.last_seen.store(now, Ordering::Relaxed);
    }

    fn silent_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_seen.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }

    /// Sends without ever blocking the caller: queued now if there is room, else by a
    /// task of the session (which gives up when the session ends).
    fn send_soon(self: &Arc<Self>, msg: ServerMessage) {
        if let Err(mpsc::error::TrySendError::Full(msg)) = self.out.try_send(Box::new(msg)) {
            let me = Arc::clone(self);
            self.tracker.spawn(async move {
                tokio::select! {
                    _ = me.out.send(msg) => {}
                    _ = me.cancel.cancelled() => {}
                }
            });
        }
    }

    async fn finish(self: Arc<Self>) {
        let reason = self
            .reason
            .get()
            .cloned()
            .unwrap_or_else(|| "session ended".into());
        self.tracker.close();
        let pending: Vec<_> = {
            let mut d = self.demux.lock().expect("demux lock");
            d.carried.clear();
            d.pending.drain().map(|(_, r)| r).collect()
        };
        for respond in pending {
            let _ = respond.send(StolenResponse::Failed(format!("session ended: {reason}")));
        }
        // The port goes back to the target now, whatever the tasks are still doing.
        self.op.sessions.end(self.entry.id, &reason);
        let _ = tokio::time::timeout(LAST_WORDS, self.tracker.wait()).await;
    }

    // ------------------------------------------------------------------ watchdog

    async fn watch(self: Arc<Self>) {
        let cfg = &self.op.cfg;
        let mut tick = tokio::time::interval(cfg.ping_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Made once and boxed: most sessions have no time limit, and this future is part of
        // every idle session's task. A credential's expiry (months away, as a rule) is
        // checked at each ping instead, which costs an idle session nothing.
        let mut deadline = self
            .entry
            .deadline
            .filter(|d| matches!(d.cause, DeadlineCause::MaxSessionTime(_)))
            .map(|d| Box::pin(tokio::time::sleep_until(Instant::from_std(d.at))));
        let mut unused_since: Option<Instant> = None;
        let mut nonce = 0u64;
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                c = self.entry.ctl.recv() => match c {
                    Control::Ended(reason) => return Box::pin(self.say_last(reason)).await,
                    Control::PortLost { port, reason } => {
                        let port = self.entry.client_port(port);
                        self.send_soon(ServerMessage::PortLost { port, reason })
                    }
                    Control::Notice(message) => self.send_soon(ServerMessage::Notice { message }),
                },
                _ = expiry(&mut deadline) => {
                    let reason = self.entry.deadline.map(|d| d.reason()).unwrap_or_default();
                    return Box::pin(self.say_last(reason)).await;
                }
                _ = tick.tick() => {
                    if let Some(d) = self.entry.deadline.filter(|d| std::time::Instant::now() >= d.at) {
                        return Box::pin(self.say_last(d.reason())).await;
                    }
                    let silent = self.silent_for();
                    if silent > cfg.client_timeout {
                        let reason = format!("client stopped answering pings for {} s", silent.as_secs());
                        let _ = self.out.try_send(Box::new(ServerMessage::SessionEnded { reason: reason.clone() }));
                        return self.end(reason);
                    }
                    if let Some(reason) = self.unused(&mut unused_since) {
                        return Box::pin(self.say_last(reason)).await;
                    }
                    nonce += 1;
                    self.ping(nonce);
                }
            }
        }
    }

    /// The unused-session TTL: a session that has held no port for that long ends.
    fn unused(&self, since: &mut Option<Instant>) -> Option<String> {
        let ttl = self.op.cfg.unused_session_ttl?;
        if !self.op.sessions.holds(&self.entry).is_empty() {
            *since = None;
            return None;
        }
        let since = *since.get_or_insert_with(Instant::now);
        (since.elapsed() >= ttl).then(|| {
            format!(
                "unused: held no port for {}",
                humantime::format_duration(ttl)
            )
        })
    }

    fn ping(&self, nonce: u64) {
        {
            let mut d = self.demux.lock().expect("demux lock");
            d.pings.push_back((nonce, Instant::now()));
            if d.pings.len() > 64 {
                d.pings.pop_front();
            }
        }
        let _ = self.out.try_send(Box::new(ServerMessage::Ping { nonce }));
    }

    /// Tells the client why its session ends (briefly: it may not be reading), then ends it.
    /// Its routes are gone already; stolen requests it still owes answers to get them
    /// first (up to [`DRAIN`]).
    async fn say_last(&self, reason: String) {
        self.leave();
        self.drain().await;
        let msg = ServerMessage::SessionEnded {
            reason: reason.clone(),
        };
        let _ = tokio::time::timeout(LAST_WORDS, self.out.send(Box::new(msg))).await;
        self.end(reason);
    }

    /// Waits until no stolen request awaits its answer and no answer is still streaming.
    async fn drain(&self) {
        let until = tokio::time::Instant::now() + DRAIN;
        loop {
            let busy = {
                let mut d = self.demux.lock().expect("demux lock");
                // Requests whose client gave up (504, closed) are owed nothing.
                d.pending.retain(|_, respond| !respond.is_closed());
                !d.pending.is_empty() || d.carried.has_bodies()
            };
            if !busy || tokio::time::Instant::now() >= until {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = self.cancel.cancelled() => return,
            }
        }
    }

    // ------------------------------------------------------------------ reader

    async fn read(self: Arc<Self>, mut inbound: impl Inbound) {
        self.touch();
        loop {
            let frame = tokio::select! {
                _ = self.cancel.cancelled() => return,
                f = inbound.next() => f,
            };
            let msg = match frame {
                None => return self.end("client disconnected"),
                Some(Err(FrameError::Io(e))) => {
                    return self.end(format!("client disconnected ({e})"))
                }
                Some(Err(e)) => {
                    tracing::warn!(session_id = %self.entry.id, error = %e, "bad frame from client; ending its session");
                    let _ = self.out.try_send(Box::new(ServerMessage::Error(ErrorReply {
                        code: ErrorCode::MalformedFrame,
                        message: e.to_string(),
                    })));
                    return self.end(format!("client sent a bad frame: {e}"));
                }
                Some(Ok(m)) => m,
            };
            self.touch();
            if let ClientMessage::EndSession = msg {
                // The routes go now; the watchdog lets answers in flight finish, then
                // says goodbye. This reader keeps carrying them meanwhile.
                self.leave();
                self.op
                    .sessions
                    .end(self.entry.id, "client ended the session");
                continue;
            }
            self.handle(msg);
        }
    }

    /// Handles one frame from the client. Never waits: the reader must keep reading.
    fn handle(self: &Arc<Self>, msg: ClientMessage) {
        match msg {
            ClientMessage::Pong { nonce } => self.pong(nonce),
            ClientMessage::ConnData { conn, data } => {
                let behind = self
                    .demux
                    .lock()
                    .expect("demux lock")
                    .carried
                    .conn_data(conn, data);
                if behind.is_err() {
                    tracing::debug!(session_id = %self.entry.id, conn, "connection fell too far behind; closed");
                    self.send_soon(ServerMessage::ConnClose { conn });
                }
            }
            ClientMessage::ConnClose { conn } => {
                self.demux
                    .lock()
                    .expect("demux lock")
                    .carried
                    .conn_close(conn);
            }
            ClientMessage::HttpResponse {
                req,
                head,
                body,
                end,
            } => self.respond(req, head, body, end),
            ClientMessage::HttpBody { req, data, end } => {
                // Like connection bytes: never waited on; too far behind ends it.
                let mut d = self.demux.lock().expect("demux lock");
                d.carried.body_data(req, data, end);
            }
            ClientMessage::HttpTrailers { req, trailers } => {
                let mut d = self.demux.lock().expect("demux lock");
                d.carried.body_trailers(req, &trailers);
            }
            ClientMessage::HttpFailed { req, reason } => {
                let respond = self.demux.lock().expect("demux lock").pending.remove(&req);
                if let Some(respond) = respond {
                    let _ = respond.send(StolenResponse::Failed(reason));
                }
            }
            ClientMessage::AddPorts { ports } => self.add_ports(ports),
            ClientMessage::RemovePorts { ports } => self.remove_ports(ports),
            ClientMessage::Resolve { op, node, family } => self.resolve(op, node, family),
            ClientMessage::Connect { op, remote } => self.connect(op, remote, false),
            ClientMessage::ConnectUdp { op, remote } => self.connect(op, remote, true),
            ClientMessage::File { op, req } => self.file(op, req),
            other => {
                // Not fatal: the session goes on, the client learns what was wrong.
                let m = format!("{} is not valid inside a session", other.kind());
                tracing::warn!(session_id = %self.entry.id, "{m}");
                self.send_soon(ServerMessage::Error(ErrorReply {
                    code: ErrorCode::BadRequest,
                    message: m,
                }));
            }
        }
    }

    /// Ports the session's process listens on now: admitted like the session's first ones,
    /// answered when decided. The session goes on whatever the answer.
    fn add_ports(self: &Arc<Self>, ports: Vec<mirrord_protocol::PortRequest>) {
        let me = Arc::clone(self);
        self.tracker.spawn(async move {
            let more = me.more.lock().await;
            let added = tokio::select! {
                a = crate::open::add_ports(&me.op, &me.entry, &more, ports) => a,
                _ = me.cancel.cancelled() => return,
            };
            let msg = match added {
                Ok((ports, notices)) => {
                    for message in notices {
                        let _ = me.queue(Box::new(ServerMessage::Notice { message })).await;
                    }
                    ServerMessage::PortsAdded { ports }
                }
                Err(refusal) => {
                    tracing::warn!(session_id = %me.entry.id, reason = refusal.reason(), error = %refusal, "ports added to a session were refused");
                    ServerMessage::PortsRefused(refusal.reply())
                }
            };
            // Answered before the next addition starts: the client matches answers to its
            // additions by their order.
            let _ = me.queue(Box::new(msg)).await;
            drop(more);
        });
    }

    /// Ports the session's process no longer listens on: given back, in turn with additions
    /// (an addition and a removal of one port keep their order), and the target's agents
    /// told.
    fn remove_ports(self: &Arc<Self>, ports: Vec<u16>) {
        let me = Arc::clone(self);
        self.tracker.spawn(async move {
            let more = me.more.lock().await;
            // Named as the session asked for them (a Service's ports), held as its pods'.
            let ports = more.target_ports(&ports);
            let released = me.op.sessions.release_ports(me.entry.id, &ports);
            tracing::debug!(session_id = %me.entry.id, ?released, "ports given back");
            if released.is_empty() {
                return;
            }
            if let Err(why) = Arc::clone(more.target()).settle().await {
                me.op.sessions.end(me.entry.id, &why);
            }
        });
    }

    /// What the session was granted of its target's context, if `what` is part of it.
    fn context(
        &self,
        what: fn(&crate::context::SessionContext) -> bool,
    ) -> Option<(
        Arc<dyn crate::backend::TargetContext>,
        mirrord_telemetry::metrics::ContextCounters,
    )> {
        let c = self.entry.context.as_deref().filter(|c| what(c))?;
        Some((Arc::clone(&c.target), c.counters.clone()))
    }

    fn resolve(self: &Arc<Self>, op: u64, node: String, family: mirrord_protocol::Family) {
        use mirrord_protocol::DnsFailure;
        let reply = move |result| Box::new(ServerMessage::Resolved { op, result });
        let Some((ctx, counters)) = self.context(|c| c.dns) else {
            return self.send_soon(*reply(Err(DnsFailure::Fail)));
        };
        if node.len() > crate::bounds::MAX_DNS_NAME_LEN || node.is_empty() {
            return self.send_soon(*reply(Err(DnsFailure::NoName)));
        }
        let Ok(permit) = Arc::clone(&self.ops).try_acquire_owned() else {
            return self.send_soon(*reply(Err(DnsFailure::Again)));
        };
        let me = Arc::clone(self);
        self.tracker.spawn(async move {
            let _permit = permit;
            let result = tokio::select! {
                r = tokio::time::timeout(RESOLVE_TIMEOUT, ctx.resolve(node, family)) => r.unwrap_or(Err(DnsFailure::Again)),
                _ = me.cancel.cancelled() => return,
            };
            match &result {
                Ok(_) => counters.resolved.inc(),
                Err(_) => counters.resolve_failed.inc(),
            }
            let _ = me.queue(reply(result)).await;
        });
    }

    /// A connection from the target: once made, it is carried like a stolen one (its
    /// bytes are `ConnData`/`ConnClose` with the id the answer gives).
    /// A TCP connection, or (`udp`) a UDP flow, from the target.
    fn connect(self: &Arc<Self>, op: u64, remote: std::net::SocketAddr, udp: bool) {
        use mirrord_protocol::{ConnectFailure, OutgoingConnected};
        let refuse = |errno: i32, message: &str| ServerMessage::Connected {
            op,
            result: Err(ConnectFailure {
                errno,
                message: message.to_owned(),
            }),
        };
        let Some((ctx, counters)) = self.context(|c| c.outgoing) else {
            return self.send_soon(refuse(
                nix::errno::Errno::EACCES as i32,
                "outgoing connections were not granted to this session",
            ));
        };
        let Ok(permit) = Arc::clone(&self.ops).try_acquire_owned() else {
            return self.send_soon(refuse(
                nix::errno::Errno::EAGAIN as i32,
                "too many connects in flight",
            ));
        };
        let me = Arc::clone(self);
        self.tracker.spawn(async move {
            let _permit = permit;
            let made = tokio::select! {
                r = me.connect_allowed(&ctx, remote, udp) => r,
                _ = me.cancel.cancelled() => return,
            };
            let out = match made {
                Ok(o) => {
                    counters.connected.inc();
                    o
                }
                Err(failure) => {
                    counters.connect_failed.inc();
                    let _ = me
                        .queue(Box::new(ServerMessage::Connected {
                            op,
                            result: Err(failure),
                        }))
                        .await;
                    return;
                }
            };
            let conn = me.next_conn.fetch_add(1, Ordering::Relaxed);
            let answer = ServerMessage::Connected {
                op,
                result: Ok(OutgoingConnected {
                    conn,
                    local: out.local,
                }),
            };
            // Registered before the answer goes: the client's first bytes find it.
            let io = crate::context::Counted::new(out.io, &counters);
            let inbox = me.carry_after(conn, io, answer);
            me.demux
                .lock()
                .expect("demux lock")
                .carried
                .add_conn(conn, inbox);
        });
    }

    /// A connection the policies' allow-lists let through (refused with `EACCES` naming
    /// the policy otherwise).
    async fn connect_allowed(
        &self,
        ctx: &Arc<dyn crate::backend::TargetContext>,
        remote: std::net::SocketAddr,
        udp: bool,
    ) -> Result<crate::backend::Outgoing, mirrord_protocol::ConnectFailure> {
        let rules = self
            .entry
            .context
            .as_deref()
            .map_or(&[][..], |c| &c.allowed[..]);
        if let Err(message) = crate::destinations::check(rules, ctx.as_ref(), remote, udp).await {
            // Debug: a process looping on refused connects would flood the log otherwise.
            tracing::debug!(target: "mirrord_operator", session_id = %self.entry.id, %remote, udp, %message, "outgoing connection refused by policy");
            return Err(mirrord_protocol::ConnectFailure {
                errno: nix::errno::Errno::EACCES as i32,
                message,
            });
        }
        match udp {
            true => ctx.connect_udp(remote).await,
            false => ctx.connect(remote).await,
        }
    }

    /// An operation on the target's files, within what the session was granted: a write
    /// without `write` access is refused with `EROFS`, as on a read-only mount.
    fn file(self: &Arc<Self>, op: u64, req: mirrord_protocol::FileRequest) {
        use mirrord_protocol::{FileAnswer, FileFailure};
        let refuse = |errno: i32, message: &str| ServerMessage::File {
            op,
            result: Err(FileFailure {
                errno,
                message: message.to_owned(),
            }),
        };
        let Some(c) = self.entry.context.as_deref().filter(|c| c.files.reads()) else {
            return self.send_soon(refuse(
                nix::errno::Errno::EACCES as i32,
                "the target's files were not granted to this session",
            ));
        };
        let (ctx, counters, writes) = (Arc::clone(&c.target), c.counters.clone(), c.files.writes());
        if req.writes() && !writes {
            counters.files_failed.inc();
            return self.send_soon(refuse(
                nix::errno::Errno::EROFS as i32,
                "the target's files are read-only for this session (feature.fs.mode is not `write`)",
            ));
        }
        if !req.path().starts_with('/') || req.path().len() > crate::bounds::MAX_FILE_PATH_LEN {
            return self.send_soon(refuse(
                nix::errno::Errno::ENAMETOOLONG as i32,
                "a remote path is absolute and at most 4096 bytes",
            ));
        }
        let Ok(permit) = Arc::clone(&self.ops).try_acquire_owned() else {
            return self.send_soon(refuse(
                nix::errno::Errno::EAGAIN as i32,
                "too many operations in flight",
            ));
        };
        if let mirrord_protocol::FileRequest::Write { path, data, .. } = &req {
            counters.file_written.inc_by(data.len() as u64);
            tracing::debug!(session_id = %self.entry.id, %path, bytes = data.len(), "a file of the target is written");
        }
        let me = Arc::clone(self);
        self.tracker.spawn(async move {
            let _permit = permit;
            let done = tokio::select! {
                r = ctx.file(req) => r,
                _ = me.cancel.cancelled() => return,
            };
            let result = match done {
                Ok(crate::backend::FileReply::Answer(a)) => Ok(a),
                Ok(crate::backend::FileReply::File { stat, io }) => {
                    counters.files_done.inc();
                    let conn = me.next_conn.fetch_add(1, Ordering::Relaxed);
                    let answer = ServerMessage::File {
                        op,
                        result: Ok(FileAnswer::File { stat, conn }),
                    };
                    let io = crate::context::Counted::into(
                        io,
                        &counters.file_written,
                        &counters.file_read,
                    );
                    let inbox = me.carry_after(conn, io, answer);
                    me.demux
                        .lock()
                        .expect("demux lock")
                        .carried
                        .add_conn(conn, inbox);
                    return;
                }
                Err(f) => Err(f),
            };
            match &result {
                Ok(_) => counters.files_done.inc(),
                Err(_) => counters.files_failed.inc(),
            }
            let _ = me.queue(Box::new(ServerMessage::File { op, result })).await;
        });
    }

    fn pong(&self, nonce: u64) {
        let sent = {
            let mut d = self.demux.lock().expect("demux lock");
            let mut found = None;
            while let Some((n, at)) = d.pings.pop_front() {
                if n == nonce {
                    found = Some(at);
                    break;
                }
            }
            found
        };
        if let Some(at) = sent {
            let rtt = at.elapsed();
            *self.entry.ping.lock().expect("ping lock") = Some(rtt);
            self.op.telemetry.record(Event::PingLatency {
                session: Arc::clone(&self.entry.meta),
                rtt,
            });
        }
    }

    fn respond(
        self: &Arc<Self>,
        req: u64,
        head: mirrord_protocol::HttpResponseHead,
        body: bytes::Bytes,
        end: bool,
    ) {
        let mut d = self.demux.lock().expect("demux lock");
        let Some(respond) = d.pending.remove(&req) else {
            return;
        };
        let upgraded = (head.status == 101).then(|| {
            let (near, far) = tokio::io::duplex(mirrord_dataplane::handoff::HANDOFF_BUFFER);
            d.carried.add_conn(req, self.carry(req, far, None));
            near
        });
        let (body, more) = mirrord_tunnel::body::receive(body, end);
        if let Some(inbox) = more {
            d.carried.add_body(req, inbox);
        }
        drop(d);
        let _ = respond.send(StolenResponse::Response {
            head,
            body,
            upgraded,
        });
    }

    // ------------------------------------------------------------------ forwarder

    async fn forward(self: Arc<Self>, mut handoffs: HandoffRx) {
        loop {
            let h = tokio::select! {
                // The end first: what is still queued then goes to the target.
                biased;
                _ = self.cancel.cancelled() => return give_back(handoffs.close().await),
                h = handoffs.recv() => match h { Some(h) => h, None => return },
            };
            let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
            // Boxed: an idle session's forwarder then holds only its wait for a handoff.
            if !Box::pin(self.hand_over(conn, h)).await {
                self.end("connection to client lost");
                return give_back(handoffs.close().await);
            }
        }
    }

    /// `h` on the port the client knows it by.
    fn client_ports(&self, mut h: Handoff) -> Handoff {
        match &mut h {
            Handoff::StolenConnection { port, .. }
            | Handoff::MirroredConnection { port, .. }
            | Handoff::StolenRequest { port, .. }
            | Handoff::MirroredRequest { port, .. } => *port = self.entry.client_port(*port),
            Handoff::Notice { .. } => {}
        }
        h
    }

    /// Passes one handoff to the client; `false` when the client connection is gone.
    async fn hand_over(self: &Arc<Self>, conn: u64, h: Handoff) -> bool {
        // Under the port the client asked for (a Service's), not the pods' it stands for.
        let h = self.client_ports(h);
        match h {
            Handoff::StolenConnection {
                port,
                peer,
                io,
                direct,
            } => {
                let msg = ServerMessage::NewConnection {
                    conn,
                    port,
                    mode: PortMode::Steal,
                    peer,
                };
                tokio::select! {
                    r = self.out.send(Box::new(msg)) => if r.is_err() { return false },
                    _ = self.cancel.cancelled() => return true,
                }
                let inbox = self.carry(conn, io, direct);
                self.demux
                    .lock()
                    .expect("demux lock")
                    .carried
                    .add_conn(conn, inbox);
            }
            Handoff::Notice { message } => {
                self.send_soon(ServerMessage::Notice { message });
            }
            Handoff::MirroredConnection { port, peer, rx } => {
                let msg = ServerMessage::NewConnection {
                    conn,
                    port,
                    mode: PortMode::Mirror,
                    peer,
                };
                // A mirror copy never waits: if the client is behind, it is dropped.
                if self.out.try_send(Box::new(msg)).is_ok() {
                    self.copy_mirror(conn, rx);
                }
            }
            Handoff::StolenRequest {
                port,
                head,
                body,
                respond,
            } => {
                let given_back = {
                    let mut d = self.demux.lock().expect("demux lock");
                    if d.leaving {
                        Some(respond)
                    } else {
                        d.pending.insert(conn, respond);
                        None
                    }
                };
                if let Some(respond) = given_back {
                    let _ = respond.send(StolenResponse::GivenBack(body));
                    return true;
                }
                if hyper::body::Body::is_end_stream(&body) {
                    // The common case (a GET): nothing to wait for, so the head's frame is
                    // queued from here rather than by a task of its own per request.
                    let msg = Box::new(ServerMessage::HttpRequest {
                        req: conn,
                        port,
                        mode: PortMode::Steal,
                        head,
                        body: bytes::Bytes::new(),
                        end: true,
                    });
                    return self.queue(msg).await;
                }
                // The body may trickle in: it is sent by its own task, head first.
                let me = Arc::clone(self);
                self.tracker.spawn(async move {
                    let send = mirrord_tunnel::body::send(
                        body,
                        &me.out,
                        |body, end| {
                            Box::new(ServerMessage::HttpRequest {
                                req: conn,
                                port,
                                mode: PortMode::Steal,
                                head,
                                body,
                                end,
                            })
                        },
                        |data, end| {
                            Box::new(ServerMessage::HttpBody {
                                req: conn,
                                data,
                                end,
                            })
                        },
                        |trailers| {
                            Box::new(ServerMessage::HttpTrailers {
                                req: conn,
                                trailers,
                            })
                        },
                    );
                    tokio::select! {
                        _ = send => {}
                        _ = me.cancel.cancelled() => {}
                    }
                });
            }
            Handoff::MirroredRequest { port, head, body } => {
                let _ = self.out.try_send(Box::new(ServerMessage::HttpRequest {
                    req: conn,
                    port,
                    mode: PortMode::Mirror,
                    head,
                    body,
                    end: true,
                }));
            }
        }
        true
    }

    /// Queues `msg`, waiting for room (but not past the session's end); `false` when the
    /// client connection is gone.
    async fn queue(&self, msg: Box<ServerMessage>) -> bool {
        let msg = match self.out.try_send(msg) {
            Ok(()) => return true,
            Err(mpsc::error::TrySendError::Closed(_)) => return false,
            Err(mpsc::error::TrySendError::Full(msg)) => msg,
        };
        tokio::select! {
            r = self.out.send(msg) => r.is_ok(),
            _ = self.cancel.cancelled() => true,
        }
    }

    /// Carries one stolen connection (or upgraded request) between the data plane and
    /// the client's frames, until either side closes or the session ends.
    fn carry<IO>(self: &Arc<Self>, conn: u64, io: IO, direct: Option<DirectWriter>) -> ConnInbox
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let (tx, rx) = conn_channel();
        if let Some(direct) = direct {
            rx.write_directly(direct);
        }
        let frames = ConnFrames {
            data: |conn, data| Box::new(ServerMessage::ConnData { conn, data }),
            close: |conn| Box::new(ServerMessage::ConnClose { conn }),
        };
        let out = self.out.clone();
        let stop = self.cancel.child_token().cancelled_owned();
        self.tracker
            .spawn(async move { relay(conn, io, rx, out, frames, true, stop).await });
        tx
    }

    /// [`Actor::carry`], with `first` sent before any of the connection's bytes.
    fn carry_after<IO>(self: &Arc<Self>, conn: u64, io: IO, first: ServerMessage) -> ConnInbox
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let (tx, rx) = conn_channel();
        let frames = ConnFrames {
            data: |conn, data| Box::new(ServerMessage::ConnData { conn, data }),
            close: |conn| Box::new(ServerMessage::ConnClose { conn }),
        };
        let out = self.out.clone();
        let me = Arc::clone(self);
        let stop = self.cancel.child_token().cancelled_owned();
        self.tracker.spawn(async move {
            if me.queue(Box::new(first)).await {
                relay(conn, io, rx, out, frames, true, stop).await
            }
        });
        tx
    }

    fn copy_mirror(self: &Arc<Self>, conn: u64, mut rx: mpsc::Receiver<bytes::Bytes>) {
        let out = self.out.clone();
        let cancel = self.cancel.clone();
        self.tracker.spawn(async move {
            loop {
                tokio::select! {
                    d = rx.recv() => match d {
                        // Never wait on a slow client: drop the copy instead.
                        Some(data) => if out.try_send(Box::new(ServerMessage::ConnData { conn, data })).is_err() { break },
                        None => break,
                    },
                    _ = cancel.cancelled() => return,
                }
            }
            tokio::select! {
                _ = out.send(Box::new(ServerMessage::ConnClose { conn })) => {}
                _ = cancel.cancelled() => {}
            }
        });
    }
}

/// What the session was handed and never took: stolen requests go to the target (nobody
/// saw them); anything else is dropped, as the session's end would drop it.
fn give_back(left: Vec<Handoff>) {
    for h in left {
        if let Handoff::StolenRequest { body, respond, .. } = h {
            let _ = respond.send(StolenResponse::GivenBack(body));
        }
    }
}

async fn expiry(deadline: &mut Option<std::pin::Pin<Box<tokio::time::Sleep>>>) {
    match deadline {
        Some(d) => d.as_mut().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Target;
    use crate::config::{Limits, SessionConfig};
    use crate::testing::{client, operator, request};

    /// A frozen client (reads nothing, sends nothing) whose queue is full and whose
    /// handoffs are waiting: the watchdog still ends the session at `client_timeout`.
    #[tokio::test(start_paused = true)]
    async fn a_frozen_client_is_ended_at_client_timeout_whatever_is_queued() {
        let cfg = SessionConfig {
            client_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(1),
            ..SessionConfig::default()
        };
        let (op, api) = operator(cfg, Limits::default());
        let opened = crate::open::open(
            &op,
            request(&[(80, PortMode::Steal, None)]),
            client("alice"),
        )
        .await
        .unwrap();
        let id = opened.entry.id;
        let routes = api.routes(80).unwrap();
        let sub = routes.load().unfiltered_steal.clone().unwrap();
        // Nobody reads `out`: it is full after one frame.
        let (out, _frozen) = mpsc::channel(1);
        let (_silent, inbound) =
            futures::channel::mpsc::unbounded::<Result<ClientMessage, FrameError>>();
        for i in 0..4 {
            let (io, _peer) = tokio::io::duplex(64);
            sub.tx
                .send(Handoff::StolenConnection {
                    port: 80,
                    peer: format!("peer-{i}"),
                    io: Box::new(io),
                    direct: None,
                })
                .await
                .ok()
                .expect("the session is open");
        }
        let started = tokio::time::Instant::now();
        tokio::time::timeout(
            Duration::from_secs(60),
            run(Arc::clone(&op), opened, inbound, out),
        )
        .await
        .expect("the session never ended");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(10) && took <= Duration::from_secs(13),
            "{took:?}"
        );
        assert!(routes.load().is_empty(), "the port was not given back");
        assert!(op.sessions.get(id).is_none());
    }

    /// What the test, playing the client, sends the session.
    type FromClient = futures::channel::mpsc::UnboundedSender<Result<ClientMessage, FrameError>>;

    /// A session of `opened` running with a client the test plays: what it sends, what it
    /// gets, and the session's task.
    fn running(
        op: &Arc<Operator>,
        opened: Opened,
    ) -> (
        FromClient,
        mpsc::Receiver<Box<ServerMessage>>,
        tokio::task::JoinHandle<()>,
    ) {
        let (out, to_client) = mpsc::channel(64);
        let (from_client, inbound) = futures::channel::mpsc::unbounded();
        let session = tokio::spawn(run(Arc::clone(op), opened, inbound, out));
        (from_client, to_client, session)
    }

    fn stolen_get(path: &str) -> (Handoff, oneshot::Receiver<StolenResponse>) {
        let (respond, answer) = oneshot::channel();
        let head = mirrord_protocol::HttpRequestHead {
            method: "GET".into(),
            uri: path.into(),
            version: mirrord_protocol::HttpVersion::Http11,
            headers: Vec::new(),
        };
        let h = Handoff::StolenRequest {
            port: 80,
            head: Box::new(head),
            body: mirrord_tunnel::body::receive(bytes::Bytes::new(), true).0,
            respond,
        };
        (h, answer)
    }

    /// A request routed to a session just before its client ended it reaches the session
    /// after its routes are gone: it goes to the target (given back), never to a client
    /// that is leaving (which answered such a request 502 "session ended" under load).
    /// The request the client already had is still answered.
    #[tokio::test(start_paused = true)]
    async fn a_request_routed_as_the_client_leaves_goes_to_the_target() {
        let (op, api) = operator(SessionConfig::default(), Limits::default());
        let opened = crate::open::open(
            &op,
            request(&[(80, PortMode::Steal, None)]),
            client("alice"),
        )
        .await
        .unwrap();
        let routes = api.routes(80).unwrap();
        // What a request that looked up the routes before they changed still holds.
        let sub = routes.load().unfiltered_steal.clone().unwrap();
        let (from_client, mut to_client, session) = running(&op, opened);

        let (first, first_answer) = stolen_get("/first");
        sub.tx.send(first).await.ok().expect("the session is open");
        let req = loop {
            match *to_client.recv().await.expect("a frame") {
                ServerMessage::HttpRequest { req, .. } => break req,
                _ => continue,
            }
        };
        from_client
            .unbounded_send(Ok(ClientMessage::EndSession))
            .unwrap();
        while !routes.load().is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }

        let (late, late_answer) = stolen_get("/late");
        sub.tx.send(late).await.ok().expect("still draining");
        let given = tokio::time::timeout(Duration::from_secs(1), late_answer).await;
        assert!(
            matches!(given, Ok(Ok(StolenResponse::GivenBack(_)))),
            "the late request was not given back to the target"
        );

        let head = mirrord_protocol::HttpResponseHead {
            status: 200,
            headers: Vec::new(),
        };
        from_client
            .unbounded_send(Ok(ClientMessage::HttpResponse {
                req,
                head,
                body: bytes::Bytes::from_static(b"dev"),
                end: true,
            }))
            .unwrap();
        let first = first_answer.await.expect("answered");
        assert!(
            matches!(first, StolenResponse::Response { .. }),
            "the request the client had was not answered"
        );
        while let Some(m) = to_client.recv().await {
            if let ServerMessage::HttpRequest { head, .. } = *m {
                panic!("a leaving client was handed {}", head.uri);
            }
        }
        drop(from_client);
        session.await.unwrap();
    }

    /// A port the process stopped listening on goes back to the target (its route and its
    /// lock: another session may steal it), while the session and its other port go on.
    #[tokio::test(start_paused = true)]
    async fn removed_ports_are_given_back_and_the_rest_stays() {
        let (op, api) = operator(SessionConfig::default(), Limits::default());
        let opened = crate::open::open(
            &op,
            request(&[(80, PortMode::Steal, None), (81, PortMode::Steal, None)]),
            client("alice"),
        )
        .await
        .unwrap();
        let id = opened.entry.id;
        let (from_client, _to_client, session) = running(&op, opened);
        from_client
            .unbounded_send(Ok(ClientMessage::RemovePorts { ports: vec![81, 9] }))
            .unwrap();
        let (p80, p81) = (api.routes(80).unwrap(), api.routes(81).unwrap());
        while !p81.load().is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(!p80.load().is_empty(), "port 80 was given back too");
        let held: Vec<u16> = op
            .sessions
            .holds(&op.sessions.get(id).unwrap())
            .iter()
            .map(|h| h.port)
            .collect();
        assert_eq!(held, [80]);
        let bob =
            crate::open::open(&op, request(&[(81, PortMode::Steal, None)]), client("bob")).await;
        assert!(bob.is_ok(), "port 81 is still locked");
        from_client
            .unbounded_send(Ok(ClientMessage::EndSession))
            .unwrap();
        session.await.unwrap();
        assert!(p80.load().is_empty());
    }

    /// A filtered port added and given back again and again (a process that listens and
    /// closes) returns its regexes each time: the client's budget is never used up by it.
    #[tokio::test(start_paused = true)]
    async fn a_port_given_back_returns_its_regexes_to_the_budget() {
        let limits = Limits {
            max_filter_regexes_per_client: 1,
            ..Limits::default()
        };
        let (op, _api) = operator(SessionConfig::default(), limits);
        let opened = crate::open::open(
            &op,
            request(&[(80, PortMode::Steal, None)]),
            client("alice"),
        )
        .await
        .unwrap();
        let (from_client, mut to_client, session) = running(&op, opened);
        let filtered = crate::testing::request(&[(81, PortMode::Steal, Some("x-user: me"))]).ports;
        for round in 0..3 {
            from_client
                .unbounded_send(Ok(ClientMessage::AddPorts {
                    ports: filtered.clone(),
                }))
                .unwrap();
            let answer = loop {
                match *to_client.recv().await.expect("a frame") {
                    m @ (ServerMessage::PortsAdded { .. } | ServerMessage::PortsRefused(_)) => {
                        break m
                    }
                    _ => continue,
                }
            };
            assert!(
                matches!(answer, ServerMessage::PortsAdded { .. }),
                "round {round}: {answer:?}"
            );
            from_client
                .unbounded_send(Ok(ClientMessage::RemovePorts { ports: vec![81] }))
                .unwrap();
        }
        from_client
            .unbounded_send(Ok(ClientMessage::EndSession))
            .unwrap();
        session.await.unwrap();
    }

    /// The maximum session time ends a session that is otherwise healthy.
    #[tokio::test(start_paused = true)]
    async fn max_session_time_ends_a_healthy_session() {
        let cfg = SessionConfig {
            max_session_time: Some(Duration::from_secs(30)),
            client_timeout: Duration::from_secs(3600),
            ..SessionConfig::default()
        };
        let (op, _api) = operator(cfg, Limits::default());
        let opened = crate::open::open(
            &op,
            request(&[(80, PortMode::Mirror, None)]),
            client("alice"),
        )
        .await
        .unwrap();
        let (out, mut rx) = mpsc::channel(64);
        let (_tx, inbound) =
            futures::channel::mpsc::unbounded::<Result<ClientMessage, FrameError>>();
        let started = tokio::time::Instant::now();
        run(Arc::clone(&op), opened, inbound, out).await;
        assert!(started.elapsed() >= Duration::from_secs(30));
        let mut last = None;
        while let Ok(m) = rx.try_recv() {
            last = Some(m);
        }
        assert!(
            matches!(last.as_deref(), Some(ServerMessage::SessionEnded { reason }) if reason == "max session time reached (30s)"),
            "{last:?}"
        );
    }
}
