//! The one TLS accept loop every listener of the operator uses (the mutual-TLS API, the
//! console, the agents' gateway, the aggregated API): a cap on connections with eviction
//! of the idle ([`crate::slots`]), back-off on accept errors (out of descriptors), a
//! deadline on the handshake, throttled warnings for what strangers cause, and a stop on
//! shutdown. What each listener does with a connection is its handler's business.

use crate::shutdown::Shutdown;
use crate::slots::{Slot, Slots};
use mirrord_telemetry::Throttle;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// Handshake failures and the like written per window; the rest are counted.
const WARNINGS_PER_WINDOW: u32 = 10;
const WARNING_WINDOW: Duration = Duration::from_secs(10);
/// Back-off after a failed accept, doubling up to the maximum.
const BACKOFF_MIN: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How a listener treats connections before its handler sees them.
pub struct Listener {
    /// For log lines: `API`, `console`...
    pub name: &'static str,
    pub slots: Arc<Slots>,
    pub handshake_timeout: Duration,
    /// What to tell the operator when a handshake fails (who needs what).
    pub handshake_hint: &'static str,
}

/// A connection through its handshake: what a handler gets.
pub struct Accepted {
    pub tls: TlsStream<TcpStream>,
    pub peer: SocketAddr,
    /// The connection's place under the cap: touch it on traffic, pin it during work that
    /// must not be cut; it is freed when dropped.
    pub slot: Slot,
}

/// Accepts until `shutdown`; each connection is handshaken and handed to `handler` in a
/// task of its own (tracked by `shutdown`), which ends early if the connection is evicted.
/// `acceptor` is asked at every accept, so a new TLS configuration (a new revocation list)
/// applies to every handshake from then on.
pub async fn serve_tls<A, H, F>(
    listener: TcpListener,
    acceptor: A,
    cfg: Listener,
    shutdown: Shutdown,
    handler: H,
) where
    A: Fn() -> TlsAcceptor,
    H: Fn(Accepted) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let cfg = Arc::new(cfg);
    let warnings = Arc::new(Throttle::new(WARNING_WINDOW, WARNINGS_PER_WINDOW));
    let handler = Arc::new(handler);
    let mut backoff = BACKOFF_MIN;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => {
                backoff = BACKOFF_MIN;
                x
            }
            Err(e) => {
                tracing::warn!(listener = cfg.name, error = %e, retry_in = ?backoff, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let Ok(slot) = cfg.slots.acquire() else {
            if let Some(left_out) = warnings.admit() {
                tracing::warn!(listener = cfg.name, %peer, max = cfg.slots.cap(), left_out, "connection limit reached and every connection is busy; closing a new connection");
            }
            continue;
        };
        let (cfg, warnings, handler) = (
            Arc::clone(&cfg),
            Arc::clone(&warnings),
            Arc::clone(&handler),
        );
        let acceptor = acceptor();
        shutdown.spawn(async move {
            let evicted = slot.evicted();
            tokio::select! {
                _ = evicted => tracing::debug!(listener = cfg.name, %peer, "connection evicted to make room for a new one"),
                _ = connection(tcp, peer, acceptor, slot, &cfg, &warnings, &*handler) => {}
            }
        });
    }
}

async fn connection<H, F>(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    slot: Slot,
    cfg: &Listener,
    warnings: &Throttle,
    handler: &H,
) where
    H: Fn(Accepted) -> F,
    F: Future<Output = ()>,
{
    let _ = tcp.set_nodelay(true);
    // Boxed: the handshake's state is on the heap only while it runs.
    let tls = match tokio::time::timeout(cfg.handshake_timeout, Box::pin(acceptor.accept(tcp)))
        .await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            if let Some(left_out) = warnings.admit() {
                tracing::warn!(listener = cfg.name, %peer, error = %e, left_out, "TLS handshake failed ({})", cfg.handshake_hint);
            }
            return;
        }
        Err(_) => {
            if let Some(left_out) = warnings.admit() {
                tracing::warn!(listener = cfg.name, %peer, timeout = ?cfg.handshake_timeout, left_out, "TLS handshake timed out");
            }
            return;
        }
    };
    slot.touch();
    handler(Accepted { tls, peer, slot }).await
}
