//! `/healthz` and `/readyz` for the kubelet's probes, on their own address so probes never
//! touch the mutual-TLS API (no handshake errors in the log) and work with metrics off.
//!
//! Live: the process answers. Ready: the API listens and takes sessions.

use anyhow::Context;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Ready or not; the server task answers from it.
#[derive(Clone)]
pub struct Health {
    ready: Arc<AtomicBool>,
}

impl Health {
    pub fn ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// No longer ready (a replica that lost its leadership, on its way out).
    pub fn unready(&self) {
        self.ready.store(false, Ordering::Release);
    }
}

/// Binds `addr` now (a bad address fails the start) and serves in the background.
pub async fn serve(addr: SocketAddr) -> anyhow::Result<Health> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("health endpoint cannot listen on {addr}"))?;
    tracing::info!(%addr, "health endpoints on http://{addr}/healthz and /readyz");
    let health = Health {
        ready: Arc::new(AtomicBool::new(false)),
    };
    let ready = Arc::clone(&health.ready);
    // Detached: the kubelet probes until the process ends, shutdown included.
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let ready = Arc::clone(&ready);
            // Detached: one probe's connection.
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<_>| {
                    let resp = answer(req.uri().path(), ready.load(Ordering::Acquire));
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
            });
        }
    });
    Ok(health)
}

fn answer(path: &str, ready: bool) -> Response<Full<Bytes>> {
    let (status, body) = match path {
        "/healthz" | "/livez" => (StatusCode::OK, "ok\n"),
        "/readyz" if ready => (StatusCode::OK, "ok\n"),
        "/readyz" => (StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
        _ => (StatusCode::NOT_FOUND, "try /healthz or /readyz\n"),
    };
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("static response parts")
}

#[cfg(test)]
mod tests {
    use super::answer;
    use hyper::StatusCode;

    #[test]
    fn ready_only_once_the_api_listens() {
        assert_eq!(answer("/healthz", false).status(), StatusCode::OK);
        assert_eq!(
            answer("/readyz", false).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(answer("/readyz", true).status(), StatusCode::OK);
        assert_eq!(answer("/other", true).status(), StatusCode::NOT_FOUND);
    }
}
