//! A raw protocol client, for sending what `mirrordctl` never would.

use futures::{SinkExt, StreamExt};
use mirrord_identity::{client_config, Credentials, OPERATOR_SERVER_NAME};
use mirrord_protocol::{ClientHello, ClientMessage, FrameCodec, ServerMessage, PROTOCOL_VERSION};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::codec::Framed;

pub async fn tls(
    api: SocketAddr,
    creds: &Path,
    present_cert: bool,
) -> std::io::Result<TlsStream<TcpStream>> {
    let c = Credentials::load(creds).unwrap();
    let cfg = if present_cert {
        client_config(&c).unwrap()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for ca in &c.ca {
            roots.add(ca.clone()).unwrap();
        }
        Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
        )
    };
    let tcp = TcpStream::connect(api).await?;
    let name = rustls::pki_types::ServerName::try_from(OPERATOR_SERVER_NAME)
        .unwrap()
        .to_owned();
    tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
}

pub fn hello(version: u32) -> ClientMessage {
    ClientMessage::Hello(ClientHello {
        protocol_version: version,
        cli_version: "test".into(),
        client_name: "Raw Client".into(),
        client_hostname: "raw".into(),
    })
}

/// Sends `frames` (already encoded bytes, written as they are) after an optional hello, and
/// returns every message the operator sent until it closed the connection.
pub async fn exchange(
    api: SocketAddr,
    creds: &Path,
    send_hello: bool,
    raw: &[u8],
) -> Vec<ServerMessage> {
    let stream = tls(api, creds, true).await.unwrap();
    let mut t = Framed::new(
        stream,
        FrameCodec::<ServerMessage, ClientMessage>::default(),
    );
    let mut got = Vec::new();
    if send_hello {
        t.send(hello(PROTOCOL_VERSION)).await.unwrap();
        got.push(t.next().await.unwrap().unwrap());
    }
    let mut stream = t.into_inner();
    stream.write_all(raw).await.unwrap();
    stream.flush().await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut rest),
    )
    .await;
    let mut t = Framed::new(
        std::io::Cursor::new(rest),
        FrameCodec::<ServerMessage, ClientMessage>::default(),
    );
    while let Some(Ok(m)) = t.next().await {
        got.push(m);
    }
    got
}

/// Encodes one message as a frame.
pub fn frame(m: ClientMessage) -> Vec<u8> {
    use tokio_util::codec::Encoder;
    let mut buf = bytes::BytesMut::new();
    FrameCodec::<ServerMessage, ClientMessage>::default()
        .encode(m, &mut buf)
        .unwrap();
    buf.to_vec()
}

/// A session opened by hand, for answering stolen requests the way `mirrordctl` never
/// would (broken framing, no answer at all).
pub struct RawSession {
    t: Framed<TlsStream<TcpStream>, FrameCodec<ServerMessage, ClientMessage>>,
}

impl RawSession {
    /// Opens a session on `target` with `ports`; panics unless the operator accepts it.
    pub async fn open(
        api: SocketAddr,
        creds: &Path,
        target: &str,
        ports: Vec<mirrord_protocol::PortRequest>,
    ) -> Self {
        use mirrord_protocol::{ConcurrentSteal, SessionRequest, TargetRef};
        let stream = tls(api, creds, true).await.unwrap();
        let mut t = Framed::new(stream, FrameCodec::default());
        t.send(hello(PROTOCOL_VERSION)).await.unwrap();
        let _welcome = t.next().await.unwrap().unwrap();
        t.send(ClientMessage::OpenSession(SessionRequest {
            target: TargetRef {
                kind: "deployment".into(),
                name: target.into(),
                namespace: "default".into(),
                container: None,
            },
            ports,
            on_concurrent_steal: ConcurrentSteal::Abort,
            copy_target: false,
            scale_down: false,
            context: Default::default(),
            listen: false,
            profile: None,
        }))
        .await
        .unwrap();
        match t.next().await.unwrap().unwrap() {
            ServerMessage::SessionOpened(_) => Self { t },
            other => panic!("session not opened: {other:?}"),
        }
    }

    /// The next message other than a ping (pings are answered).
    pub async fn next(&mut self) -> ServerMessage {
        loop {
            match self.t.next().await.unwrap().unwrap() {
                // The operator may already be gone (shutting down): its next message, or
                // the end of the connection, is what the caller waits for.
                ServerMessage::Ping { nonce } => {
                    let _ = self.t.send(ClientMessage::Pong { nonce }).await;
                }
                m => return m,
            }
        }
    }

    pub async fn send(&mut self, m: ClientMessage) {
        self.t.send(m).await.unwrap()
    }
}
