//! One port of a target: the listener, its replicas (endpoints), and the choice of path for
//! each accepted connection.
//!
//! With no session on the port, a connection is relayed to a replica as bytes, its HTTP/1
//! requests followed so it can switch to per-request routing when a session arrives
//! ([`relay`]). With a filter (or a filtered mirror) active, the first bytes are read
//! first ([`sniff`]): HTTP goes to per-request routing ([`http`]), anything else is
//! relayed. An unfiltered steal takes new connections whole. HTTP/2 is always routed per
//! request. Connections per port are capped, so that however many clients connect, the
//! operator keeps descriptors for its API and metrics; at the cap, the connection idle
//! the longest makes room for a newcomer ([`mirrord_serve::slots`]), so idle connections
//! cannot lock out a target's clients (a plain cap let 1,700 idle connections do it). A
//! connection counts as alive while bytes move either way.

use crate::gate::HeadGate;
use crate::http::{self, HttpCtx};
use crate::port::{InterceptorLimits, PortServices};
use crate::relay::{self, Ended, Relaying, Track, Watch};
use crate::rewind::Rewind;
use crate::routes::{PortRoutes, RouteTable};
use crate::sniff::{self, Detected, Protocol};
use arc_swap::ArcSwap;
use bytes::Bytes;
use mirrord_serve::{Activity, Slots, Touching};
use mirrord_tunnel::shared_tcp::SharedTcp;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::Instant;

/// Connections the kernel queues for a port while it is at its connection cap.
const BACKLOG: u32 = 1024;
/// How long a connection must have moved no bytes before a newcomer may take its place at
/// the cap.
const EVICT_IDLE_AFTER: Duration = Duration::from_secs(1);

/// A replica traffic can go to (an original or a copy).
pub struct Endpoint {
    pub name: String,
    pub upstream: SocketAddr,
}

pub struct PortPlane {
    pub port: u16,
    pub listen: SocketAddr,
    /// What sessions do with this port's traffic. One table for every replica: sessions
    /// subscribe to the target's port, whichever replica would have served a request.
    pub routes: Arc<RouteTable>,
    endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    next: AtomicUsize,
    services: PortServices,
    settings: InterceptorLimits,
    connections: Arc<Slots>,
    /// Connections being served (the accept loop holds a place in `connections` while it
    /// waits, so those cannot say).
    serving: Arc<AtomicUsize>,
}

impl PortPlane {
    /// Binds the port's listen address; traffic flows once [`PortPlane::spawn`] runs.
    pub async fn bind(
        port: u16,
        listen: SocketAddr,
        services: PortServices,
        routes: Arc<RouteTable>,
        settings: InterceptorLimits,
    ) -> std::io::Result<(Arc<Self>, TcpListener)> {
        let socket = match listen {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.bind(listen)?;
        // Clients beyond the connection cap wait here.
        let listener = socket.listen(BACKLOG)?;
        let plane = Arc::new(Self {
            port,
            listen: listener.local_addr()?,
            routes,
            endpoints: ArcSwap::default(),
            next: AtomicUsize::new(0),
            services,
            settings,
            connections: Slots::new(settings.max_connections, EVICT_IDLE_AFTER),
            serving: Arc::default(),
        });
        Ok((plane, listener))
    }

    pub fn spawn(self: &Arc<Self>, listener: TcpListener) -> tokio::task::JoinHandle<()> {
        let plane = Arc::clone(self);
        // The caller owns the handle: aborting it closes the listener.
        tokio::spawn(async move {
            let mut last_warning: Option<std::time::Instant> = None;
            loop {
                // A place first: at the cap, the idlest connection makes room; if every one
                // is busy, clients wait in the backlog rather than take descriptors the API
                // needs.
                let slot = match plane.connections.acquire() {
                    Ok(s) => s,
                    Err(_) => {
                        if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                            last_warning = Some(std::time::Instant::now());
                            tracing::warn!(port = plane.port, max = plane.settings.max_connections, "interceptor connection limit reached and every connection is busy; new connections wait (limits.max_connections_per_port)");
                        }
                        plane.connections.acquire_wait().await
                    }
                };
                match listener.accept().await {
                    Ok((stream, peer)) => {
                        // The accept loop waited with this place: its clock starts now, before
                        // the next newcomer looks for the longest silent one.
                        slot.restart();
                        let plane = Arc::clone(&plane);
                        let serving = Serving::start(&plane.serving);
                        // Detached: one client's connection, counted in `serving` and
                        // holding its place under the cap until it ends.
                        tokio::spawn(async move {
                            let evicted = slot.evicted();
                            tokio::select! {
                                _ = serve_connection(plane.clone(), stream, peer, Some(slot.activity())) => {}
                                _ = evicted => tracing::debug!(port = plane.port, %peer, "idle connection closed to make room for a new one (limits.max_connections_per_port)"),
                            }
                            drop(serving);
                            drop(slot);
                        });
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!(port = plane.port, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        })
    }

    /// Connections closed so far to make room for newcomers at the cap.
    pub fn evicted(&self) -> u64 {
        self.connections.evicted()
    }

    pub fn set_endpoints(&self, endpoints: Vec<Arc<Endpoint>>) {
        self.endpoints.store(Arc::new(endpoints));
    }

    /// Connections being served now.
    pub fn active(&self) -> usize {
        self.serving.load(Ordering::Acquire)
    }

    pub fn endpoints(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.endpoints.load_full()
    }

    /// Round robin over the ready replicas, like a Service in front of pods.
    fn pick(&self) -> Option<Arc<Endpoint>> {
        let eps = self.endpoints.load();
        if eps.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % eps.len();
        Some(Arc::clone(&eps[i]))
    }
}

/// Counts a connection as served until dropped (a panicking task included).
struct Serving(Arc<AtomicUsize>);

impl Serving {
    fn start(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(count))
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Routes one accepted connection to its end. `activity`: its place under the port's cap,
/// told whenever bytes move.
pub async fn serve_connection(
    plane: Arc<PortPlane>,
    stream: TcpStream,
    peer: SocketAddr,
    activity: Option<Activity>,
) {
    let accepted = Instant::now();
    let _ = stream.set_nodelay(true);
    let Some(ep) = plane.pick() else {
        tracing::warn!(port = plane.port, %peer, "no ready replica; closing connection");
        return;
    };
    let version = plane.routes.version();
    let routes = plane.routes.load();

    if let Some(stealer) = &routes.unfiltered_steal {
        // Nothing was read yet: the bare socket is what the session gets.
        match relay::steal(SharedTcp::new(stream), peer, plane.port, stealer).await {
            Ok(()) => return,
            Err(back) => {
                let mut back = Rewind::new(Bytes::new(), back);
                if let Ok(mut up) = relay::connect(ep.upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut back, &mut up).await;
                }
                return;
            }
        }
    }
    let conn = Conn {
        plane: &plane,
        upstream: ep.upstream,
        peer,
        routes: &routes,
        version,
        routed: routes.needs_http(),
        deadline: accepted + plane.settings.header_read_timeout,
        activity,
    };
    conn.serve(stream).await
}

struct Conn<'a> {
    plane: &'a Arc<PortPlane>,
    upstream: SocketAddr,
    peer: SocketAddr,
    /// The routes when the connection was accepted, and their version.
    routes: &'a PortRoutes,
    version: u64,
    /// A filter is in force: requests are routed one by one from the start, and a client
    /// has `header_read_timeout` for its first request head.
    routed: bool,
    deadline: Instant,
    activity: Option<Activity>,
}

impl Conn<'_> {
    async fn serve(self, mut stream: TcpStream) {
        // The replica connection is opened at once, as a plain proxy would: a server that
        // speaks first is heard without waiting for the client.
        let mut up = match relay::connect(self.upstream).await {
            Ok(up) => Some(up),
            // Stolen requests can still be served; the rest get a 502 naming the replica.
            Err(_) if self.routed => None,
            Err(e) => {
                return tracing::debug!(port = self.plane.port, upstream = %self.upstream, error = %e, "replica unreachable; closing connection");
            }
        };
        let deadline = self.routed.then_some(self.deadline);
        let detected = match sniff::detect(&mut stream, up.as_mut(), deadline).await {
            Ok(d) => d,
            Err(e) => return self.log_end(&e),
        };
        self.touch();
        match detected {
            // A broken request line under a filter: hyper answers it (400), so it never
            // reaches the target unrouted. With no filter it is the target's business.
            Detected::Client {
                protocol: Protocol::Http1Invalid,
                client,
                ..
            } if self.routed => self.serve_h1(client, stream, None, self.deadline).await,
            Detected::Client {
                protocol: Protocol::Http1,
                client,
                server,
            } => {
                if self.routed {
                    // Whatever the server said first is not for an HTTP/1 client.
                    let up = up.filter(|_| server.is_empty());
                    self.serve_h1(client, stream, up, self.deadline).await
                } else if let Some(up) = up {
                    self.relay(stream, client, up, server).await
                }
            }
            Detected::Client {
                protocol: Protocol::Http2,
                client,
                server,
            } => {
                let up = up.map(|u| Rewind::new(server, u));
                let io = Touching::new(Rewind::new(client, stream), self.activity.clone());
                http::serve_h2(io, self.http(), up).await
            }
            Detected::Client { client, server, .. } => self.raw(stream, client, up, server).await,
            Detected::ServerFirst { server } => self.raw(stream, Bytes::new(), up, server).await,
            Detected::TimedOut(partial) if !partial.is_empty() => {
                // A request line still incomplete: the gate answers it as a server would.
                self.serve_h1(partial, stream, up, self.deadline).await
            }
            Detected::TimedOut(_) | Detected::Closed => {
                let _ = stream.shutdown().await;
            }
        }
    }

    fn http(&self) -> Arc<HttpCtx> {
        Arc::new(HttpCtx {
            port: self.plane.port,
            routes: Arc::clone(&self.plane.routes),
            upstream: self.upstream,
            services: self.plane.services.clone(),
            settings: self.plane.settings,
            activity: self.activity.clone(),
        })
    }

    async fn serve_h1(
        &self,
        prefix: Bytes,
        stream: TcpStream,
        up: Option<TcpStream>,
        first_head: Instant,
    ) {
        let timeout = self.plane.settings.header_read_timeout;
        let stream = Touching::new(stream, self.activity.clone());
        let gate = HeadGate::new(prefix, stream, timeout, first_head);
        let up = up.map(|u| Rewind::new(Bytes::new(), u));
        http::serve_h1(gate, self.http(), up).await
    }

    /// HTTP/1 with no filter in force: relayed, and routed per request from the first
    /// request boundary after the routes change.
    async fn relay(&self, mut stream: TcpStream, client: Bytes, mut up: TcpStream, server: Bytes) {
        let watch = Watch {
            table: &self.plane.routes,
            version: self.version,
        };
        let copies =
            relay::mirror_copies(&unfiltered_mirrors(self.routes), self.peer, self.plane.port);
        let how = Relaying {
            track: Track::Http1,
            watch: Some(watch),
            copies,
            activity: self.activity.as_ref(),
        };
        let ended = relay::run(&mut stream, client, &mut up, server, how).await;
        match ended {
            Ok(Ended::Closed) => {}
            Ok(Ended::Http1 { held, upstream }) => {
                let first_head = Instant::now() + self.plane.settings.header_read_timeout;
                self.serve_h1(held, stream, upstream.then_some(up), first_head)
                    .await
            }
            Err(e) => self.log_end(&e),
        }
    }

    /// Not HTTP: relayed as bytes (unfiltered mirrors get copies).
    async fn raw(
        &self,
        mut stream: TcpStream,
        client: Bytes,
        up: Option<TcpStream>,
        server: Bytes,
    ) {
        let Some(mut up) = up else {
            return tracing::debug!(port = self.plane.port, upstream = %self.upstream, "replica unreachable; closing connection");
        };
        let copies =
            relay::mirror_copies(&unfiltered_mirrors(self.routes), self.peer, self.plane.port);
        let how = Relaying {
            track: Track::Opaque,
            watch: None,
            copies,
            activity: self.activity.as_ref(),
        };
        if let Err(e) = relay::run(&mut stream, client, &mut up, server, how).await {
            self.log_end(&e)
        }
    }

    fn touch(&self) {
        if let Some(a) = &self.activity {
            a.touch();
        }
    }

    fn log_end(&self, e: &std::io::Error) {
        tracing::debug!(port = self.plane.port, upstream = %self.upstream, error = %e, "connection ended with an error");
    }
}

fn unfiltered_mirrors(routes: &PortRoutes) -> Vec<crate::routes::Subscriber> {
    routes
        .mirrors
        .iter()
        .filter(|(_, f)| f.is_none())
        .map(|(s, _)| s.clone())
        .collect()
}
