//! One port of a target: the listener, its replicas (endpoints), and the choice of path for
//! each accepted connection.

use crate::http;
use crate::relay;
use crate::rewind::Rewind;
use crate::routes::RouteTable;
use crate::sniff::{self, Protocol};
use arc_swap::ArcSwap;
use bytes::Bytes;
use mirrord_telemetry::metrics::BypassCounter;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

/// How long a client has to send its first bytes before the connection is taken as not
/// HTTP (only when a filter makes parsing necessary).
const SNIFF_WAIT: Duration = Duration::from_millis(500);

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
    bypass: BypassCounter,
}

impl PortPlane {
    /// Binds the port's listen address; traffic flows once [`PortPlane::spawn`] runs.
    pub async fn bind(
        port: u16,
        listen: SocketAddr,
        bypass: BypassCounter,
        routes: Arc<RouteTable>,
    ) -> std::io::Result<(Arc<Self>, TcpListener)> {
        let listener = TcpListener::bind(listen).await?;
        let plane = Arc::new(Self {
            port,
            listen: listener.local_addr()?,
            routes,
            endpoints: ArcSwap::default(),
            next: AtomicUsize::new(0),
            bypass,
        });
        Ok((plane, listener))
    }

    pub fn spawn(self: &Arc<Self>, listener: TcpListener) -> tokio::task::JoinHandle<()> {
        let plane = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, peer)) => {
                        tokio::spawn(serve_connection(Arc::clone(&plane), stream, peer));
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

    pub fn set_endpoints(&self, endpoints: Vec<Arc<Endpoint>>) {
        self.endpoints.store(Arc::new(endpoints));
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

/// Routes one accepted connection to its end.
pub async fn serve_connection(plane: Arc<PortPlane>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let Some(ep) = plane.pick() else {
        tracing::warn!(port = plane.port, %peer, "no ready replica; closing connection");
        return;
    };
    let routes = plane.routes.load();
    let io = Rewind::new(Bytes::new(), stream);

    if let Some(stealer) = &routes.unfiltered_steal {
        // Nothing was read yet: the bare socket is what the session gets.
        match relay::steal(Box::new(io.inner), peer, plane.port, stealer).await {
            Ok(()) => return,
            Err(back) => return raw(back, peer, &plane, &ep, &routes).await,
        }
    }

    if routes.needs_http() {
        let mut stream = io;
        let (proto, prefix) = match sniff::detect(&mut stream, SNIFF_WAIT).await {
            Ok(x) => x,
            Err(_) => return,
        };
        // Nothing was read before sniffing, so the sniffed bytes are the whole prefix.
        let io = Rewind::new(prefix, stream.inner);
        if proto != Protocol::Other {
            let ctx = Arc::new(http::HttpCtx {
                port: plane.port,
                routes: Arc::clone(&plane.routes),
                upstream: ep.upstream,
                bypass: plane.bypass.clone(),
            });
            http::serve(io, proto, ctx).await;
            return;
        }
        return raw(io, peer, &plane, &ep, &routes).await;
    }
    raw(io, peer, &plane, &ep, &routes).await
}

async fn raw<IO: AsyncRead + AsyncWrite + Unpin>(
    io: IO,
    peer: SocketAddr,
    plane: &PortPlane,
    ep: &Endpoint,
    routes: &crate::routes::PortRoutes,
) {
    let mirrors: Vec<_> = routes
        .mirrors
        .iter()
        .filter(|(_, f)| f.is_none())
        .map(|(s, _)| s.clone())
        .collect();
    let res = if mirrors.is_empty() {
        relay::pass_through(io, ep.upstream).await
    } else {
        relay::tee(io, peer, plane.port, ep.upstream, &mirrors).await
    };
    if let Err(e) = res {
        tracing::debug!(port = plane.port, upstream = %ep.upstream, error = %e, "connection ended with an error");
    }
}
