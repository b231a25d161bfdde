//! The console: an opt-in web UI for platform teams (overview, sessions with kill, a live
//! feed of the functional events, who holds what per target, small charts).
//!
//! It owns no operator state: every page reads the control plane's own status report
//! ([`Operator::status`]) and the telemetry's event feed, and kills go through the API's
//! own kill path (so the audit lines are the same). What it owns is the browser side:
//! the HTTPS listener (the operator's server certificate), browser sessions ([`auth`]),
//! the route table ([`routes`]), the event stream ([`sse`]) and the embedded assets.
//!
//! Browsers log in with a single-use link minted over the mutual-TLS API
//! (`mirrordctl console login`); the link becomes a `__Host-` cookie (HttpOnly, Secure,
//! SameSite=Strict). Every route but the login itself needs that cookie; the kill action
//! also needs the CSRF token and a same-origin `Origin`.

mod auth;
mod reply;
mod routes;
mod sse;
mod view;

pub use routes::ROUTES;

use anyhow::Context;
use mirrord_controlplane::Operator;
use mirrord_serve::{serve_tls, Accepted, Listener, Shutdown, Slots};
use mirrord_telemetry::Feed;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Browser connections served at once; at the cap, the connection idle the longest
/// (a handshake going nowhere, a kept-alive connection with nothing to do) makes room.
const MAX_CONNECTIONS: usize = 256;
/// How long a connection must have been idle before a newcomer may take its place.
const EVICT_IDLE_AFTER: Duration = Duration::from_secs(1);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a browser has for a request head once connected.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Functional events kept for viewers that reconnect (`Last-Event-ID`) or just opened.
pub const FEED_CAPACITY: usize = 4096;

/// What every request handler shares.
pub struct Console {
    op: Arc<Operator>,
    feed: Arc<Feed>,
    sessions: Arc<auth::BrowserSessions>,
    streams: Arc<sse::StreamCaps>,
    /// Derives the CSRF tokens of users the API server proxies (random at each start).
    proxied_secret: String,
}

/// The console under the aggregated API (`/apis/operator.mirrord.dev/v1/console/`, with
/// `kubectl proxy`): the API server authenticated the user and RBAC let them in.
struct ThroughApiServer(Arc<Console>);

impl mirrord_kube::apiserver::Mount for ThroughApiServer {
    fn serve(
        &self,
        req: hyper::Request<hyper::body::Incoming>,
        path: String,
        caller: mirrord_controlplane::Caller,
    ) -> futures::future::BoxFuture<'static, hyper::Response<reply::Body>> {
        let console = Arc::clone(&self.0);
        Box::pin(async move {
            let session = auth::BrowserSession::proxied(caller, &console.proxied_secret);
            routes::handle_proxied(&console, req, &path, session).await
        })
    }
}

/// Binds `addr` now (a bad address fails the start), turns login links on (pointing at
/// `public_url`, else the address bound), and serves in the background. Returns the
/// address bound and the console to mount under the aggregated API (in a cluster).
pub async fn serve(
    addr: SocketAddr,
    public_url: Option<String>,
    tls: Arc<rustls::ServerConfig>,
    op: Arc<Operator>,
    shutdown: Shutdown,
) -> anyhow::Result<(SocketAddr, Arc<dyn mirrord_kube::apiserver::Mount>)> {
    let feed = op
        .telemetry
        .feed()
        .cloned()
        .context("the console needs the telemetry's event feed (Telemetry::with_feed)")?;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("console cannot listen on {addr}"))?;
    let bound = listener.local_addr()?;
    let url = public_url
        .map(|u| u.trim_end_matches('/').to_owned())
        .unwrap_or_else(|| format!("https://{bound}"));
    op.console_logins.enable(url);
    let console = Arc::new(Console {
        op,
        feed,
        sessions: Arc::default(),
        streams: Arc::default(),
        proxied_secret: auth::random_token(),
    });
    tracing::info!(addr = %bound, "console listening on {bound} (log in with `mirrordctl console login`)");
    let cfg = Listener {
        name: "console",
        slots: Slots::new(MAX_CONNECTIONS, EVICT_IDLE_AFTER),
        handshake_timeout: HANDSHAKE_TIMEOUT,
        handshake_hint: "browsers need TLS with the operator's serving certificate",
    };
    let acceptor = TlsAcceptor::from(tls);
    let serving = Arc::clone(&console);
    shutdown.clone().spawn(serve_tls(
        listener,
        move || acceptor.clone(),
        cfg,
        shutdown,
        move |a| connection(a, Arc::clone(&serving)),
    ));
    Ok((bound, Arc::new(ThroughApiServer(console))))
}

/// One browser connection: HTTP/1.1, each request a sign of life for its slot.
async fn connection(a: Accepted, console: Arc<Console>) {
    let activity = a.slot.activity();
    let svc = hyper::service::service_fn(move |req| {
        let console = Arc::clone(&console);
        let activity = activity.clone();
        async move {
            activity.touch();
            let resp = routes::handle(&console, req, Some(&activity)).await;
            activity.touch();
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(hyper_util::rt::TokioIo::new(a.tls), svc)
        .await;
}
