//! Real HTTP servers and clients for the tests (hyper; HTTP/1.1 and h2c).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What a server saw of one request.
#[derive(Debug, Clone)]
pub struct Hit {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// How a test server behaves.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Answers `NAME METHOD PATH` at once.
    Answer,
    /// Accepts requests and never answers (a stuck developer process).
    Hang,
}

pub struct HttpServer {
    pub addr: SocketAddr,
    pub name: &'static str,
    hits: Arc<Mutex<Vec<Hit>>>,
    conns: Arc<Mutex<usize>>,
}

impl HttpServer {
    /// Serves HTTP/1.1 and h2c (detected per connection). A request carrying `Upgrade` is
    /// answered `101` and the connection then echoes bytes back, prefixed with the name.
    pub async fn start(name: &'static str) -> Self {
        Self::start_with(name, Behaviour::Answer).await
    }

    pub async fn start_with(name: &'static str, behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
        let conns: Arc<Mutex<usize>> = Arc::default();
        let (h, c) = (hits.clone(), conns.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                *c.lock().unwrap() += 1;
                let hits = h.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        handle(name, behaviour, hits.clone(), req)
                    });
                    let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    // A client that sends its request and shuts its side gets its answer.
                    b.http1().half_close(true);
                    let _ = b
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            name,
            hits,
            conns,
        }
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    pub fn paths(&self) -> Vec<String> {
        self.hits().into_iter().map(|h| h.path).collect()
    }

    pub fn connections(&self) -> usize {
        *self.conns.lock().unwrap()
    }
}

async fn handle(
    name: &'static str,
    behaviour: Behaviour,
    hits: Arc<Mutex<Vec<Hit>>>,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let upgrade = req.headers().contains_key(hyper::header::UPGRADE);
    let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let body = req.into_body().collect().await?.to_bytes();
    hits.lock().unwrap().push(Hit {
        method: method.clone(),
        path: path.clone(),
        headers,
        body,
    });
    if behaviour == Behaviour::Hang {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    if let Some(on_upgrade) = on_upgrade {
        tokio::spawn(async move {
            if let Ok(up) = on_upgrade.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let mut out = format!("{name}:").into_bytes();
                    out.extend_from_slice(&buf[..n]);
                    if io.write_all(&out).await.is_err() {
                        break;
                    }
                }
            }
        });
        return Ok(Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "echo")
            .body(Full::new(Bytes::new()))
            .unwrap());
    }
    Ok(Response::new(Full::new(Bytes::from(format!(
        "{name} {method} {path}"
    )))))
}

/// One HTTP/1.1 keep-alive connection.
pub struct H1 {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl H1 {
    pub async fn connect(addr: SocketAddr) -> Self {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Self { sender }
    }

    /// Sends a POST with a body; returns (status, body).
    pub async fn post(&mut self, path: &str, body: Bytes) -> (u16, String) {
        let req = Request::post(path)
            .header("host", "test")
            .body(Full::new(body))
            .unwrap();
        self.sender.ready().await.unwrap();
        let resp = self.sender.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// Sends a GET with headers; returns (status, body).
    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        let mut b = Request::get(path).header("host", "test");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        self.sender.ready().await.unwrap();
        let resp = self
            .sender
            .send_request(b.body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

/// Any request on a fresh connection: (status, body).
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> (u16, String) {
    let mut h1 = H1::connect(addr).await;
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "test");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    h1.sender.ready().await.unwrap();
    let resp = h1
        .sender
        .send_request(b.body(Full::new(body)).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// GET on a fresh connection: (status, body).
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    H1::connect(addr).await.get(path, headers).await
}

/// An h2c (prior knowledge) connection.
pub struct H2 {
    sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    addr: SocketAddr,
}

impl H2 {
    pub async fn connect(addr: SocketAddr) -> Self {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        Self { sender, addr }
    }

    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        let mut b = Request::get(format!("http://{}{path}", self.addr));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let mut s = self.sender.clone();
        s.ready().await.unwrap();
        let resp = s
            .send_request(b.body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

/// Sends an upgrade request on a raw connection, then `payload`; returns what came back
/// after the 101 head.
pub async fn upgrade_echo(
    addr: SocketAddr,
    headers: &[(&str, &str)],
    payload: &[u8],
) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req =
        "GET /ws HTTP/1.1\r\nhost: test\r\nconnection: upgrade\r\nupgrade: echo\r\n".to_string();
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut byte))
            .await
            .expect("101 head in time")
            .unwrap();
        assert!(n > 0, "connection closed before the 101 head");
        head.push(byte[0]);
    }
    s.write_all(payload).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("echo in time")
        .unwrap();
    (
        String::from_utf8_lossy(&head).into_owned(),
        String::from_utf8_lossy(&buf[..n]).into_owned(),
    )
}

/// Like [`get`], but `None` instead of a panic when the connection fails or nothing
/// answers within 10 s (for polling: one lost answer must not hang the poll).
pub async fn try_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    tokio::time::timeout(std::time::Duration::from_secs(10), try_get_once(addr, path))
        .await
        .ok()
        .flatten()
}

async fn try_get_once(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .ok()?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", "test")
        .body(Full::new(Bytes::new()))
        .ok()?;
    let resp = sender.send_request(req).await.ok()?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}
