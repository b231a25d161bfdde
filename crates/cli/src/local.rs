//! The developer's side of handed-over traffic: connections to the local process, and HTTP
//! requests replayed against it in the protocol the original client spoke (HTTP/2 stays
//! HTTP/2, so gRPC works; trailers go both ways).

use crate::quickack::LocalConnector;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mirrord_protocol::{ClientMessage, HttpRequestHead, HttpResponseHead, HttpVersion, PortMode};
use mirrord_tunnel::body::{self, Body};
use mirrord_tunnel::pump::{self, conn_channel, ConnFrames, ConnInbox, ConnOutlet};
use mirrord_tunnel::shared_tcp::SharedTcp;
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

/// Connects to the local process and relays. Mirrored connections' answers are discarded.
pub fn spawn_connection(
    conn: u64,
    addr: SocketAddr,
    mode: PortMode,
    out: mpsc::Sender<ClientMessage>,
) -> ConnInbox {
    let (tx, rx) = conn_channel();
    // Detached: the relay ends with its connection, and mirrordctl exits with its session.
    tokio::spawn(async move {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                // The session's frame loop writes into the socket itself while nothing is
                // queued for it: no wake of this task per chunk. Reads acknowledge at once
                // (see `quickack`).
                let s = SharedTcp::new(s).acknowledging_at_once();
                rx.write_directly(s.direct_writer());
                relay(conn, s, rx, out, mode == PortMode::Steal).await
            }
            Err(e) => {
                eprintln!("mirrordctl: cannot connect to local {addr}: {e}");
                let _ = out.send(ClientMessage::ConnClose { conn }).await;
            }
        }
    });
    tx
}

/// Relays a handed-over connection to the local process (answers go back when `answer`).
pub async fn relay<IO: AsyncRead + AsyncWrite + Unpin>(
    conn: u64,
    io: IO,
    rx: ConnOutlet,
    out: mpsc::Sender<ClientMessage>,
    answer: bool,
) {
    let frames = ConnFrames {
        data: |conn, data| ClientMessage::ConnData { conn, data },
        close: |conn| ClientMessage::ConnClose { conn },
    };
    pump::relay(conn, io, rx, out, frames, answer, std::future::pending()).await
}

/// Not replayed: framing is redone for the local connection, and these belong to the
/// original connection only. (`connection` and `upgrade` stay for HTTP/1, which needs
/// them to ask for an upgrade.)
const HOP_BY_HOP: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "keep-alive",
    "proxy-connection",
    "te",
];
/// What HTTP/2 has no place for besides (RFC 9113 §8.2.2); its authority is the URI's.
const NOT_IN_H2: &[&str] = &["connection", "upgrade", "host"];

type LocalClient = Client<LocalConnector, Body>;

/// A request handed over by the operator, and where it goes locally.
pub struct LocalRequest {
    pub req: u64,
    pub addr: SocketAddr,
    pub mode: PortMode,
    pub head: HttpRequestHead,
    pub body: Body,
}

/// Clients of the local process: one per protocol, each pooling its connections.
#[derive(Clone)]
pub struct LocalHttp {
    h1: LocalClient,
    h2: LocalClient,
}

impl LocalHttp {
    pub fn new() -> Self {
        Self {
            h1: Client::builder(TokioExecutor::new()).build(LocalConnector::new()),
            h2: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build(LocalConnector::new()),
        }
    }

    /// Replays one request; a stolen one's answer goes back on `out`. After a 101 the
    /// request becomes a connection: its inbox goes to the session loop on `upgrades`
    /// *before* the 101 is sent, so it is registered when the operator's first bytes for
    /// it arrive (they can only follow the 101).
    pub fn spawn(
        &self,
        r: LocalRequest,
        out: mpsc::Sender<ClientMessage>,
        upgrades: mpsc::UnboundedSender<(u64, ConnInbox)>,
    ) {
        let LocalRequest {
            req,
            addr,
            mode,
            head,
            body,
        } = r;
        let client = match head.version {
            HttpVersion::Http2 => self.h2.clone(),
            _ => self.h1.clone(),
        };
        // Detached: one replayed request; mirrordctl exits with its session.
        tokio::spawn(async move {
            let result = send(&client, addr, head, body).await;
            if mode == PortMode::Mirror {
                return; // the copy's answer is thrown away
            }
            match result {
                Ok(mut resp) => {
                    let status = resp.status();
                    let headers = resp
                        .headers()
                        .iter()
                        .map(|(k, v)| (k.as_str().to_owned(), Bytes::copy_from_slice(v.as_bytes())))
                        .collect();
                    if status == http::StatusCode::SWITCHING_PROTOCOLS {
                        let upgraded = hyper::upgrade::on(&mut resp).await;
                        return answer_upgrade(req, headers, upgraded, out, upgrades).await;
                    }
                    // Streams: server-sent events and large downloads go out as they come.
                    let head = HttpResponseHead {
                        status: status.as_u16(),
                        headers,
                    };
                    body::send(
                        resp.into_body().map_err(Into::into).boxed(),
                        &out,
                        |body, end| ClientMessage::HttpResponse {
                            req,
                            head,
                            body,
                            end,
                        },
                        |data, end| ClientMessage::HttpBody { req, data, end },
                        |trailers| ClientMessage::HttpTrailers { req, trailers },
                    )
                    .await;
                }
                Err(e) => {
                    eprintln!("mirrordctl: local {addr} did not answer: {e}");
                    let _ = out
                        .send(ClientMessage::HttpFailed {
                            req,
                            reason: format!("local {addr}: {e}"),
                        })
                        .await;
                }
            }
        });
    }
}

/// A 101 from the local process: the request becomes a connection carried both ways.
async fn answer_upgrade(
    req: u64,
    headers: Vec<(String, Bytes)>,
    upgraded: hyper::Result<hyper::upgrade::Upgraded>,
    out: mpsc::Sender<ClientMessage>,
    upgrades: mpsc::UnboundedSender<(u64, ConnInbox)>,
) {
    let up = match upgraded {
        Ok(up) => up,
        Err(e) => {
            let reason = format!("local process answered 101 but the upgrade failed: {e}");
            let _ = out.send(ClientMessage::HttpFailed { req, reason }).await;
            return;
        }
    };
    let (inbox, outlet) = conn_channel();
    if upgrades.send((req, inbox)).is_err() {
        return; // the session is over
    }
    let head = HttpResponseHead {
        status: 101,
        headers,
    };
    let answer = ClientMessage::HttpResponse {
        req,
        head,
        body: Bytes::new(),
        end: true,
    };
    if out.send(answer).await.is_ok() {
        relay(req, TokioIo::new(up), outlet, out, true).await;
    }
}

async fn send(
    client: &LocalClient,
    addr: SocketAddr,
    head: HttpRequestHead,
    body: Body,
) -> anyhow::Result<http::Response<hyper::body::Incoming>> {
    let uri: http::Uri = format!("http://{addr}{}", head.uri).parse()?;
    let h2 = head.version == HttpVersion::Http2;
    let mut b = http::Request::builder()
        .method(head.method.as_str())
        .uri(uri)
        .version(if h2 {
            http::Version::HTTP_2
        } else {
            http::Version::HTTP_11
        });
    for (k, v) in &head.headers {
        let k = k.to_ascii_lowercase();
        // HTTP/2 allows `te: trailers` (gRPC sends it).
        let keep = match k.as_str() {
            "te" => h2 && v.as_ref().eq_ignore_ascii_case(b"trailers"),
            k => !(HOP_BY_HOP.contains(&k) || h2 && NOT_IN_H2.contains(&k)),
        };
        if keep {
            b = b.header(k.as_str(), v.as_ref());
        }
    }
    Ok(client.request(b.body(body)?).await?)
}
