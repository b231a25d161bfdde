//! Connecting to the operator, then Hello/Welcome, all within one time limit (an address
//! that accepts and never answers must not hang). Two ways in: mutual TLS with a
//! credential directory (one machine, or the chart's Service), or through the Kubernetes
//! API server with the user's kubeconfig (the operator's aggregated API: the API server
//! authenticates the user and RBAC decides; no credential directory needed).

use crate::exit::Refused;
use anyhow::Context;
use futures::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use mirrord_identity::{client_config, Credentials, IdentityError, OPERATOR_SERVER_NAME};
use mirrord_protocol::{
    ClientHello, ClientMessage, FrameCodec, ServerMessage, Welcome, PROTOCOL_VERSION,
};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::codec::Framed;
use tokio_util::either::Either;

pub type Io = Either<tokio_rustls::client::TlsStream<TcpStream>, TokioIo<Upgraded>>;
pub type Transport = Framed<Io, FrameCodec<ServerMessage, ClientMessage>>;

/// The operator's aggregated API (the chart's APIService).
const API_PATH: &str = "/apis/operator.mirrord.dev/v1";
/// The `Upgrade` token the operator answers on its aggregated API.
const UPGRADE: &str = "mirrord-operator";

/// Where the operator is and how long to wait for it.
pub struct Endpoint {
    pub via: Via,
    /// For the connection, TLS (or the API server's upgrade) and Hello/Welcome.
    pub connect_timeout: Duration,
    /// Where the API server authorizes requests that concern no target (`status`,
    /// `sessions`, `console login`); the kubeconfig context's when `None`.
    pub namespace: Option<String>,
}

/// How to reach the operator.
pub enum Via {
    /// A credential directory (it also names the operator's address).
    Credentials(PathBuf),
    /// The kubeconfig's cluster (`context`: another than its current one).
    Kubernetes { context: Option<String> },
}

impl Via {
    fn describe(&self) -> String {
        match self {
            Via::Credentials(dir) => {
                let addr = std::fs::read_to_string(dir.join("operator-address"))
                    .map(|a| a.trim().to_owned())
                    .unwrap_or_else(|_| "the address in the credentials".into());
                format!("the operator at {addr}")
            }
            Via::Kubernetes { .. } => "the operator (through the Kubernetes API server)".into(),
        }
    }
}

impl Endpoint {
    /// The namespace of a target named without one: through a kubeconfig, its context's
    /// (as kubectl and `status`); with a credential directory, `default`.
    pub async fn default_namespace(&self) -> anyhow::Result<String> {
        match &self.via {
            Via::Credentials(_) => Ok("default".into()),
            Via::Kubernetes { context } => Ok(kube_config(context).await?.default_namespace),
        }
    }
}

async fn kube_config(context: &Option<String>) -> anyhow::Result<kube::Config> {
    let opts = kube::config::KubeConfigOptions {
        context: context.clone(),
        ..Default::default()
    };
    kube::Config::from_kubeconfig(&opts)
        .await
        .context("reading your kubeconfig (KUBECONFIG or ~/.kube/config)")
}

/// Connects and greets. `namespace`: where the session's target lives (in a cluster, the
/// API server authorizes `create sessions` there); `None` for the kubeconfig's namespace.
pub async fn connect(
    ep: &Endpoint,
    namespace: Option<&str>,
) -> anyhow::Result<(Transport, Welcome)> {
    let t = ep.connect_timeout;
    let attempt = async {
        let io = match &ep.via {
            Via::Credentials(dir) => {
                let creds = load_credentials(dir)?;
                if let Some(w) = crate::expiry::warning(&creds, std::time::SystemTime::now()) {
                    eprintln!("mirrordctl: {w}");
                }
                Either::Left(tls(creds).await?)
            }
            Via::Kubernetes { context } => {
                Either::Right(through_api_server(context, namespace).await?)
            }
        };
        greet(io).await
    };
    tokio::time::timeout(t, attempt).await.unwrap_or_else(|_| {
        anyhow::bail!(
            "{} did not answer within {} (connection, TLS and handshake): check that it \
             runs and that this is its address, or wait longer with --connect-timeout",
            ep.via.describe(),
            humantime::format_duration(t)
        )
    })
}

/// `POST .../namespaces/NS/sessions`, upgraded: the API server proxies the connection to
/// the operator once RBAC lets the user create sessions there.
async fn through_api_server(
    context: &Option<String>,
    namespace: Option<&str>,
) -> anyhow::Result<TokioIo<Upgraded>> {
    let config = kube_config(context).await?;
    let server = config.cluster_url.to_string();
    let ns = namespace.unwrap_or(&config.default_namespace).to_owned();
    let client = crate::apiserver::client(config)?;
    let req = http::Request::post(format!("{API_PATH}/namespaces/{ns}/sessions"))
        .header(http::header::CONNECTION, "Upgrade")
        .header(http::header::UPGRADE, UPGRADE)
        .body(kube::client::Body::empty())?;
    let res = client
        .send(req)
        .await
        .with_context(|| format!("cannot reach the Kubernetes API server at {server}"))?;
    if res.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        return Err(api_server_refusal(res, &ns).await);
    }
    let upgraded = hyper::upgrade::on(res)
        .await
        .context("the API server did not hand over the connection")?;
    Ok(TokioIo::new(upgraded))
}

/// The API server's (or the operator's) refusal, as the Status it sent says it.
async fn api_server_refusal(res: http::Response<kube::client::Body>, ns: &str) -> anyhow::Error {
    use http_body_util::BodyExt;
    let code = res.status();
    let body = match res.into_body().collect().await {
        Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
        Err(e) => e.to_string(),
    };
    let message = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or(body);
    let hint = match code.as_u16() {
        401 => "your kubeconfig's credentials were not accepted",
        403 => "ask your cluster admin for the chart's `mirrord-operator-user` ClusterRole (RoleBinding in this namespace)",
        404 | 503 => "is the mirrord operator installed with its APIService (`kubectl get apiservice v1.operator.mirrord.dev`)?",
        _ => "",
    };
    let refused = mirrord_protocol::ErrorReply {
        code: match code.as_u16() {
            401 | 403 => mirrord_protocol::ErrorCode::Forbidden,
            _ => mirrord_protocol::ErrorCode::Internal,
        },
        message: format!(
            "the Kubernetes API server refused (HTTP {code}) in namespace {ns}: {message}{}{hint}",
            if hint.is_empty() { "" } else { "; " }
        ),
    };
    match code.as_u16() {
        401 | 403 => Refused(refused).into(),
        _ => anyhow::anyhow!(refused.message),
    }
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
                 writes one), then pass --credentials DIR or set MIRRORD_CREDENTIALS; in a \
                 cluster whose operator has its APIService, a kubeconfig (KUBECONFIG, \
                 ~/.kube/config or --context) is enough",
                dir.display(),
                path.file_name().unwrap_or_default().to_string_lossy()
            )
        }
        Err(e) => Err(e).with_context(|| format!("loading credentials from {}", dir.display())),
    }
}

async fn tls(creds: Credentials) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let cfg = client_config(&creds)?;
    let tcp = TcpStream::connect(&creds.operator_addr)
        .await
        .with_context(|| format!("cannot reach the operator at {}", creds.operator_addr))?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from(OPERATOR_SERVER_NAME)?.to_owned();
    TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .with_context(|| {
            format!(
                "TLS handshake with the operator at {} failed",
                creds.operator_addr
            )
        })
}

async fn greet(io: Io) -> anyhow::Result<(Transport, Welcome)> {
    let mut t = Framed::new(io, FrameCodec::default());
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
    let (mut t, _) = connect(ep, ep.namespace.as_deref()).await?;
    t.send(msg).await?;
    match t.next().await {
        Some(Ok(ServerMessage::Error(e))) => Err(Refused(e).into()),
        Some(Ok(m)) => Ok(m),
        Some(Err(e)) => Err(e).context("reading the operator's answer"),
        None => anyhow::bail!("the operator closed the connection"),
    }
}
