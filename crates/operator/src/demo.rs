//! `demo-server`: a small HTTP server used as the embedded demo target's replicas (and as
//! the developer's "local process" in the demo), so the demo needs nothing installed.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};

pub fn run(bind: std::net::IpAddr, port: u16, name: String) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind((bind, port)).await?;
            let pid = std::process::id();
            loop {
                let (stream, _) = listener.accept().await?;
                let name = name.clone();
                // Detached: the demo server's connections end with its process.
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: hyper::Request<_>| {
                        let body = format!(
                            "hello from {name} (pid {pid}): {} {}\n",
                            req.method(),
                            req.uri()
                        );
                        async move {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                Bytes::from(body),
                            )))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        })
}
