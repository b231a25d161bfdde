//! HTTP/2 end to end: gRPC (a real tonic server and client) passed through, stolen and
//! mirrored, unary and streaming, and HTTP/2 trailers carried both ways. The messages are
//! declared with prost's derive by hand, so no `protoc` is needed.

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use mirrord_e2e::*;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tonic::codegen::{BoxFuture, BoxStream};
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

#[derive(Clone, PartialEq, prost::Message)]
pub struct Hello {
    #[prost(string, tag = "1")]
    pub name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Reply {
    #[prost(string, tag = "1")]
    pub text: String,
}

const SAY: &str = "/test.Echo/Say";
const COUNT: &str = "/test.Echo/Count";
const CHAT: &str = "/test.Echo/Chat";

/// `test.Echo`: `Say` (unary), `Count` (three replies, then an error status carried in the
/// trailers), `Chat` (each message answered as it arrives). Remembers what it was asked.
#[derive(Clone)]
struct Echo {
    name: &'static str,
    calls: Arc<Mutex<Vec<String>>>,
}

impl Echo {
    fn record(&self, what: String) {
        self.calls.lock().unwrap().push(what);
    }
}

impl tonic::server::NamedService for Echo {
    const NAME: &'static str = "test.Echo";
}

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for Echo {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let me = self.clone();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<Reply, Hello>::default());
            Ok(match req.uri().path() {
                SAY => grpc.unary(Say(me), req).await,
                COUNT => grpc.server_streaming(Count(me), req).await,
                CHAT => grpc.streaming(Chat(me), req).await,
                _ => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

struct Say(Echo);
impl tonic::server::UnaryService<Hello> for Say {
    type Response = Reply;
    type Future = BoxFuture<Response<Reply>, Status>;
    fn call(&mut self, req: Request<Hello>) -> Self::Future {
        let me = self.0.clone();
        Box::pin(async move {
            let name = req.into_inner().name;
            me.record(format!("Say {name}"));
            Ok(Response::new(Reply {
                text: format!("{} says hello to {name}", me.name),
            }))
        })
    }
}

struct Count(Echo);
impl tonic::server::ServerStreamingService<Hello> for Count {
    type Response = Reply;
    type ResponseStream = BoxStream<Reply>;
    type Future = BoxFuture<Response<BoxStream<Reply>>, Status>;
    fn call(&mut self, req: Request<Hello>) -> Self::Future {
        let me = self.0.clone();
        Box::pin(async move {
            let name = req.into_inner().name;
            me.record(format!("Count {name}"));
            let server = me.name;
            let items = futures::stream::unfold(0, move |i| {
                let name = name.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    match i {
                        0..=2 => Some((
                            Ok(Reply {
                                text: format!("{server} {name} {i}"),
                            }),
                            i + 1,
                        )),
                        3 => Some((Err(Status::aborted(format!("{server} stops here"))), 4)),
                        _ => None,
                    }
                }
            });
            Ok(Response::new(Box::pin(items) as BoxStream<Reply>))
        })
    }
}

struct Chat(Echo);
impl tonic::server::StreamingService<Hello> for Chat {
    type Response = Reply;
    type ResponseStream = BoxStream<Reply>;
    type Future = BoxFuture<Response<BoxStream<Reply>>, Status>;
    fn call(&mut self, req: Request<Streaming<Hello>>) -> Self::Future {
        let me = self.0.clone();
        Box::pin(async move {
            me.record("Chat".into());
            let server = me.name;
            let replies =
                futures::stream::unfold(req.into_inner(), move |mut inbound| async move {
                    match inbound.message().await {
                        Ok(Some(h)) => Some((
                            Ok(Reply {
                                text: format!("{server} heard {}", h.name),
                            }),
                            inbound,
                        )),
                        _ => None,
                    }
                });
            Ok(Response::new(Box::pin(replies) as BoxStream<Reply>))
        })
    }
}

/// A tonic server on a free loopback port.
async fn serve(name: &'static str) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::<Mutex<Vec<String>>>::default();
    let svc = Echo {
        name,
        calls: calls.clone(),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream_listener(listener)),
    );
    (addr, calls)
}

fn tokio_stream_listener(
    l: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(l, |l| async move {
        let s = l.accept().await.map(|(s, _)| s);
        Some((s, l))
    })
}

/// A tonic client over one HTTP/2 connection.
struct Client(tonic::client::Grpc<tonic::transport::Channel>);

impl Client {
    async fn connect(addr: SocketAddr) -> Self {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        Self(tonic::client::Grpc::new(ch))
    }

    fn request<T>(msg: T, user: Option<&str>) -> Request<T> {
        let mut r = Request::new(msg);
        if let Some(u) = user {
            r.metadata_mut().insert("x-user", u.parse().unwrap());
        }
        r
    }

    async fn say(&mut self, name: &str, user: Option<&str>) -> Result<String, Status> {
        self.0.ready().await.unwrap();
        let r = Self::request(Hello { name: name.into() }, user);
        let resp = self
            .0
            .unary(
                r,
                SAY.parse().unwrap(),
                ProstCodec::<Hello, Reply>::default(),
            )
            .await?;
        Ok(resp.into_inner().text)
    }

    /// The replies, then the status that ended the stream.
    async fn count(&mut self, name: &str, user: Option<&str>) -> (Vec<String>, Status) {
        self.0.ready().await.unwrap();
        let r = Self::request(Hello { name: name.into() }, user);
        let mut s = self
            .0
            .server_streaming(
                r,
                COUNT.parse().unwrap(),
                ProstCodec::<Hello, Reply>::default(),
            )
            .await
            .unwrap()
            .into_inner();
        let mut got = Vec::new();
        loop {
            match s.message().await {
                Ok(Some(m)) => got.push(m.text),
                Ok(None) => return (got, Status::ok("")),
                Err(status) => return (got, status),
            }
        }
    }

    /// Sends one message at a time and waits for its answer before the next: only works
    /// if both directions stream.
    async fn chat(&mut self, names: &[&str], user: Option<&str>) -> Vec<String> {
        self.0.ready().await.unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel::<Hello>(1);
        let outbound =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        let r = Self::request(outbound, user);
        let mut inbound = self
            .0
            .streaming(
                r,
                CHAT.parse().unwrap(),
                ProstCodec::<Hello, Reply>::default(),
            )
            .await
            .unwrap()
            .into_inner();
        let mut got = Vec::new();
        for n in names {
            tx.send(Hello {
                name: n.to_string(),
            })
            .await
            .unwrap();
            let reply = tokio::time::timeout(Duration::from_secs(10), inbound.message())
                .await
                .expect("an answer before the stream ends: the exchange must stream")
                .unwrap()
                .unwrap();
            got.push(reply.text);
        }
        drop(tx);
        assert!(inbound.message().await.unwrap().is_none());
        got
    }
}

struct Grpc {
    listen: SocketAddr,
    op: Operator,
    target_calls: Arc<Mutex<Vec<String>>>,
    dev: SocketAddr,
    dev_calls: Arc<Mutex<Vec<String>>>,
}

async fn fixture() -> Grpc {
    let (target, target_calls) = serve("target").await;
    let (dev, dev_calls) = serve("dev").await;
    let listen = free_addr();
    let op = Operator::start(&upstream_target("api", 80, listen, target), "");
    Grpc {
        listen,
        op,
        target_calls,
        dev,
        dev_calls,
    }
}

impl Grpc {
    fn session(&self, mode: &str, extra: &[&str]) -> Session {
        let creds = self.op.issue("alice");
        let port = format!("80={}", self.dev);
        let mut args = vec![mode, "--target", "api", "--port", &port];
        args.extend_from_slice(extra);
        Session::start(&creds, &args).unwrap()
    }
}

fn counted(server: &str, name: &str) -> Vec<String> {
    (0..3).map(|i| format!("{server} {name} {i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_passes_through_and_is_stolen_per_request_under_a_filter() {
    let g = fixture().await;
    // One connection for everything, opened before the session.
    let mut c = Client::connect(g.listen).await;
    assert_eq!(c.say("a", None).await.unwrap(), "target says hello to a");
    let (items, status) = c.count("n", None).await;
    assert_eq!(items, counted("target", "n"));
    assert_eq!(status.code(), tonic::Code::Aborted, "{status:?}");
    assert_eq!(status.message(), "target stops here");

    let _s = g.session("steal", &["--header", "^x-user: alice$"]);
    // Unmatched: the target answers, over HTTP/2.
    assert_eq!(c.say("b", None).await.unwrap(), "target says hello to b");
    // Matched: the developer's process answers, over HTTP/2, trailers included.
    assert_eq!(
        c.say("c", Some("alice")).await.unwrap(),
        "dev says hello to c"
    );
    let (items, status) = c.count("m", Some("alice")).await;
    assert_eq!(items, counted("dev", "m"));
    assert_eq!(status.code(), tonic::Code::Aborted, "{status:?}");
    assert_eq!(status.message(), "dev stops here");
    assert_eq!(
        c.chat(&["x", "y", "z"], Some("alice")).await,
        vec!["dev heard x", "dev heard y", "dev heard z"]
    );
    assert_eq!(
        c.chat(&["u", "v"], None).await,
        vec!["target heard u", "target heard v"]
    );
    assert_eq!(
        *g.dev_calls.lock().unwrap(),
        vec!["Say c", "Count m", "Chat"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unfiltered_steal() {
    let g = fixture().await;
    let _s = g.session("steal", &[]);
    let mut c = Client::connect(g.listen).await;
    assert_eq!(c.say("a", None).await.unwrap(), "dev says hello to a");
    let (items, status) = c.count("n", None).await;
    assert_eq!(items, counted("dev", "n"));
    assert_eq!(status.code(), tonic::Code::Aborted, "{status:?}");
    assert_eq!(
        c.chat(&["x", "y"], None).await,
        vec!["dev heard x", "dev heard y"]
    );
    assert!(g.target_calls.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_mirrored_with_and_without_a_filter() {
    let g = fixture().await;
    let _s = g.session("mirror", &["--header", "^x-user: alice$"]);
    let mut c = Client::connect(g.listen).await;
    assert_eq!(
        c.say("a", Some("alice")).await.unwrap(),
        "target says hello to a"
    );
    assert_eq!(c.say("b", None).await.unwrap(), "target says hello to b");
    let (items, status) = c.count("n", Some("alice")).await;
    assert_eq!(items, counted("target", "n"));
    assert_eq!(status.code(), tonic::Code::Aborted);
    let mut copies = wait_for(Duration::from_secs(10), || {
        let c = g.dev_calls.lock().unwrap().clone();
        (c.len() >= 2).then_some(c)
    })
    .expect("copies reach the developer");
    // Copies are replayed concurrently: their order is not the original's.
    copies.sort();
    assert_eq!(copies, vec!["Count n", "Say a"]);
    drop(_s);
    g.op.wait_event("Session Ended", 1);

    let _m = g.session("mirror", &[]);
    let mut c = Client::connect(g.listen).await;
    assert_eq!(c.say("d", None).await.unwrap(), "target says hello to d");
    wait_for(Duration::from_secs(10), || {
        g.dev_calls
            .lock()
            .unwrap()
            .contains(&"Say d".to_owned())
            .then_some(())
    })
    .expect("the unfiltered mirror's copy reaches the developer");
}

/// Trailers both ways on a stolen HTTP/2 request, with plain hyper on both ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_trailers_cross_a_steal_both_ways() {
    // The developer's process answers with what the request's trailer said, in a trailer.
    let dev = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dev_addr = dev.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = dev.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let version = req.version();
                        let body = req.into_body().collect().await.unwrap();
                        let sum = body
                            .trailers()
                            .and_then(|t| t.get("x-sum"))
                            .map(|v| v.to_str().unwrap().to_owned())
                            .unwrap_or_else(|| "none".into());
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("x-got", sum.parse().unwrap());
                        let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
                            Ok(Frame::data(Bytes::from(format!(
                                "{version:?} {}",
                                body.to_bytes().len()
                            )))),
                            Ok(Frame::trailers(trailers)),
                        ];
                        Ok::<_, Infallible>(http::Response::new(StreamBody::new(
                            futures::stream::iter(frames),
                        )))
                    },
                );
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
            });
        }
    });
    let target = mirrord_e2e::servers::HttpServer::start("target").await;
    let listen = free_addr();
    let op = Operator::start(&upstream_target("api", 80, listen, target.addr), "");
    let creds = op.issue("alice");
    let port = format!("80={dev_addr}");
    let _s = Session::start(
        &creds,
        &[
            "steal", "--target", "api", "--port", &port, "--path", "^/sum",
        ],
    )
    .unwrap();

    let tcp = tokio::net::TcpStream::connect(listen).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-sum", "42".parse().unwrap());
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
        Ok(Frame::data(Bytes::from_static(b"12345"))),
        Ok(Frame::trailers(trailers)),
    ];
    let req = http::Request::post(format!("http://{listen}/sum"))
        .body(StreamBody::new(futures::stream::iter(frames)))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap();
    let got_trailer = body.trailers().and_then(|t| t.get("x-got")).cloned();
    // The developer's process was spoken to in HTTP/2 and saw the whole body.
    assert_eq!(body.to_bytes(), "HTTP/2.0 5");
    assert_eq!(got_trailer.unwrap(), "42");
}
