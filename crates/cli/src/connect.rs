//! Connecting to the operator: mutual TLS with the user's credentials, then Hello/Welcome.

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use mirrord_identity::{client_config, Credentials, OPERATOR_SERVER_NAME};
use mirrord_protocol::{
    ClientHello, ClientMessage, FrameCodec, ServerMessage, Welcome, PROTOCOL_VERSION,
};
use std::path::Path;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::codec::Framed;

pub type Transport =
    Framed<tokio_rustls::client::TlsStream<TcpStream>, FrameCodec<ServerMessage, ClientMessage>>;

pub async fn connect(creds_dir: &Path) -> anyhow::Result<(Transport, Welcome)> {
    let creds = Credentials::load(creds_dir)
        .with_context(|| format!("loading credentials from {}", creds_dir.display()))?;
    if let Some(w) = crate::expiry::warning(&creds, std::time::SystemTime::now()) {
        eprintln!("mirrordctl: {w}");
    }
    let cfg = client_config(&creds)?;
    let tcp = TcpStream::connect(&creds.operator_addr)
        .await
        .with_context(|| format!("cannot reach the operator at {}", creds.operator_addr))?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from(OPERATOR_SERVER_NAME)?.to_owned();
    let tls = TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .with_context(|| {
            format!(
                "TLS handshake with the operator at {} failed",
                creds.operator_addr
            )
        })?;
    let mut t = Framed::new(tls, FrameCodec::default());
    t.send(ClientMessage::Hello(ClientHello {
        protocol_version: PROTOCOL_VERSION,
        cli_version: env!("CARGO_PKG_VERSION").to_owned(),
        client_name: whoami::realname(),
        client_hostname: whoami::fallible::hostname().unwrap_or_else(|_| "unknown".into()),
    }))
    .await?;
    match t.next().await {
        Some(Ok(ServerMessage::Welcome(w))) => Ok((t, *w)),
        Some(Ok(ServerMessage::Error(e))) => anyhow::bail!("{e}"),
        Some(Ok(other)) => anyhow::bail!("unexpected answer from the operator: {other:?}"),
        Some(Err(e)) => match crate::expiry::explain(&e.to_string()) {
            Some(why) => Err(e).context(why),
            None => Err(e).context("reading the operator's answer"),
        },
        // The operator closes a connection whose certificate it rejects right after the
        // handshake (TLS 1.3 verifies the client after the server's Finished).
        None => anyhow::bail!(
            "the operator closed the connection (is the certificate from this operator's CA?)"
        ),
    }
}

/// One request, one answer (status, kill).
pub async fn request(creds_dir: &Path, msg: ClientMessage) -> anyhow::Result<ServerMessage> {
    let (mut t, _) = connect(creds_dir).await?;
    t.send(msg).await?;
    match t.next().await {
        Some(Ok(m)) => Ok(m),
        Some(Err(e)) => Err(e).context("reading the operator's answer"),
        None => anyhow::bail!("the operator closed the connection"),
    }
}
