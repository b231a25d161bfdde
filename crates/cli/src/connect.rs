//! Connecting to the operator: mutual TLS with the user's credentials, then Hello/Welcome,
//! all within one time limit (an address that accepts and never answers must not hang).

use crate::exit::Refused;
use anyhow::Context;
use futures::{SinkExt, StreamExt};
use mirrord_identity::{client_config, Credentials, IdentityError, OPERATOR_SERVER_NAME};
use mirrord_protocol::{
    ClientHello, ClientMessage, FrameCodec, ServerMessage, Welcome, PROTOCOL_VERSION,
};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::codec::Framed;

pub type Transport =
    Framed<tokio_rustls::client::TlsStream<TcpStream>, FrameCodec<ServerMessage, ClientMessage>>;

/// Where the operator is and how long to wait for it.
pub struct Endpoint {
    /// The credential directory (it also names the operator's address).
    pub creds: PathBuf,
    /// For the TCP connection, the TLS handshake and the protocol's Hello/Welcome.
    pub connect_timeout: Duration,
}

pub async fn connect(ep: &Endpoint) -> anyhow::Result<(Transport, Welcome)> {
    let creds = load_credentials(&ep.creds)?;
    if let Some(w) = crate::expiry::warning(&creds, std::time::SystemTime::now()) {
        eprintln!("mirrordctl: {w}");
    }
    let addr = creds.operator_addr.clone();
    let t = ep.connect_timeout;
    tokio::time::timeout(t, handshake(creds))
        .await
        .unwrap_or_else(|_| {
            anyhow::bail!(
                "the operator at {addr} did not answer within {} (connection, TLS and \
                 handshake): check that it runs and that {addr} is its API address, or \
                 wait longer with --connect-timeout",
                humantime::format_duration(t)
            )
        })
}

/// Credentials, or what to do to get them.
fn load_credentials(dir: &Path) -> anyhow::Result<Credentials> {
    match Credentials::load(dir) {
        Ok(c) => Ok(c),
        Err(IdentityError::Read { path, source })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            anyhow::bail!(
                "no credentials in {} ({} is missing): ask your operator's admin for a \
                 credential directory (`mirrord-operator certs issue --user NAME --out DIR` \
                 writes one), then pass --credentials DIR or set MIRRORD_CREDENTIALS",
                dir.display(),
                path.file_name().unwrap_or_default().to_string_lossy()
            )
        }
        Err(e) => Err(e).with_context(|| format!("loading credentials from {}", dir.display())),
    }
}

async fn handshake(creds: Credentials) -> anyhow::Result<(Transport, Welcome)> {
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
        Some(Ok(ServerMessage::Error(e))) => Err(Refused(e).into()),
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

/// One request, one answer (status, kill). The operator's refusal is a [`Refused`] error.
pub async fn request(ep: &Endpoint, msg: ClientMessage) -> anyhow::Result<ServerMessage> {
    let (mut t, _) = connect(ep).await?;
    t.send(msg).await?;
    match t.next().await {
        Some(Ok(ServerMessage::Error(e))) => Err(Refused(e).into()),
        Some(Ok(m)) => Ok(m),
        Some(Err(e)) => Err(e).context("reading the operator's answer"),
        None => anyhow::bail!("the operator closed the connection"),
    }
}
