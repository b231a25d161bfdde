//! The operator as an aggregated API (`APIService` `v1.operator.mirrord.dev`): the
//! Kubernetes API server authenticates the developer from their kubeconfig, authorizes the
//! URL with RBAC, and proxies the request here over mutual TLS with the front-proxy
//! headers ([`frontproxy`]). What the request then asks for is checked with RBAC too
//! ([`access`], [`mirrord_controlplane::rbac`]).
//!
//! Served: discovery, `sessions` (list, get, delete: `kubectl get/delete sessions`), and
//! `POST namespaces/NS/sessions` upgraded to the operator's own protocol, which is how
//! `mirrordctl` opens sessions, reads the status and kills sessions through the API server.

pub mod access;
mod frontproxy;
mod resources;

use bytes::Bytes;
use frontproxy::{AuthError, FrontProxy, KubeUser};
use futures::future::BoxFuture;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use mirrord_controlplane::api::{self, Authenticated};
use mirrord_controlplane::caller::{Authority, Caller};
use mirrord_controlplane::rbac::{self, Check, GROUP, VERSION};
use mirrord_controlplane::Operator;
use mirrord_identity::Role;
use mirrord_protocol::{ErrorCode, KillRequest, ServerMessage, SessionId};
use mirrord_serve::{serve_tls, Accepted, Listener, Slots};
use mirrord_telemetry::ClientInfo;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// The `Upgrade` token of a protocol connection through the API server.
pub const UPGRADE: &str = "mirrord-operator";

#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    #[error("request-header authentication: {0}")]
    RequestHeader(String),
    #[error("the aggregated API's serving certificate in {dir}: {why}")]
    ServingCert { dir: String, why: String },
    #[error("the aggregated API cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What every response here is (and what a [`Mount`] answers with).
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, std::convert::Infallible>;

/// Something served to authenticated users under `/apis/operator.mirrord.dev/v1/NAME/`
/// (the web console, reached with `kubectl proxy`): it gets the request, the path below
/// its prefix (`/`, `/api/status`) and the caller as RBAC sees them.
pub trait Mount: Send + Sync {
    fn serve(
        &self,
        req: Request<Incoming>,
        path: String,
        caller: Caller,
    ) -> BoxFuture<'static, Response<Body>>;
}

/// The console's prefix under the API.
pub const CONSOLE: &str = "console";

struct Server {
    op: Arc<Operator>,
    proxy: FrontProxy,
    console: Option<Arc<dyn Mount>>,
}

/// Starts serving; returns once listening (the rest runs in the background).
pub async fn serve(
    op: Arc<Operator>,
    client: &kube::Client,
    listen: SocketAddr,
    tls_dir: &Path,
    console: Option<Arc<dyn Mount>>,
) -> Result<SocketAddr, ApiServerError> {
    let proxy = FrontProxy::load(client).await?;
    let tls = server_config(tls_dir, Arc::clone(&proxy.verifier))?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| ApiServerError::Listen {
            addr: listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ApiServerError::Listen {
            addr: listen,
            source,
        })?;
    let shutdown = op.shutdown.clone();
    let server = Arc::new(Server { op, proxy, console });
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let cfg = Listener {
        name: "aggregated API",
        slots: Slots::new(MAX_CONNECTIONS, EVICT_IDLE_AFTER),
        handshake_timeout: HANDSHAKE_TIMEOUT,
        handshake_hint: "only the API server's front proxy is served",
    };
    shutdown.clone().spawn(serve_tls(
        listener,
        move || acceptor.clone(),
        cfg,
        shutdown,
        move |a| connection(Arc::clone(&server), a),
    ));
    tracing::info!(target: "mirrord_kube", %addr, "serving the aggregated API ({GROUP}/{VERSION}) to the API server");
    Ok(addr)
}

fn server_config(
    dir: &Path,
    verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
) -> Result<rustls::ServerConfig, ApiServerError> {
    let bad = |why: String| ApiServerError::ServingCert {
        dir: dir.display().to_string(),
        why,
    };
    let read = |f: &str| std::fs::read(dir.join(f)).map_err(|e| bad(format!("{f}: {e}")));
    let certs = rustls_pemfile::certs(&mut read("tls.crt")?.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("tls.crt: {e}")))?;
    let key = rustls_pemfile::private_key(&mut read("tls.key")?.as_slice())
        .map_err(|e| bad(format!("tls.key: {e}")))?
        .ok_or_else(|| bad("tls.key holds no private key".into()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| bad(e.to_string()))?;
    // HTTP/1.1 only: the protocol connection is an HTTP/1.1 upgrade.
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// The API server's connections served at once; at the cap the one idle longest makes room.
const MAX_CONNECTIONS: usize = 1024;
const EVICT_IDLE_AFTER: Duration = Duration::from_secs(5);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// One connection from the API server's front proxy: HTTP/1.1, each request a sign of life
/// (and never cut while it runs); a session's upgrade goes on as the operator's own.
async fn connection(server: Arc<Server>, a: Accepted) {
    let Accepted { tls, peer, slot } = a;
    let cn = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(frontproxy::common_name);
    let activity = slot.activity();
    let svc = service_fn(move |req| {
        let (server, cn, activity) = (Arc::clone(&server), cn.clone(), activity.clone());
        async move {
            let _working = activity.pin();
            Ok::<_, std::convert::Infallible>(server.handle(req, cn.as_deref(), peer).await)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(TokioIo::new(tls), svc)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(target: "mirrord_kube", %peer, error = %e, "aggregated API connection ended");
    }
}

/// What a path under `/apis` names.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Groups,
    Group,
    Resources,
    /// `namespace: None`: every namespace.
    Sessions {
        namespace: Option<&'a str>,
    },
    Session {
        namespace: &'a str,
        name: &'a str,
    },
    /// The console's own path (`/`, `/api/status`).
    Console(&'a str),
    /// `.../console` without its slash: the page's relative links need it.
    ConsoleRoot,
    Unknown,
}

fn route(path: &str) -> Route<'_> {
    if let Some(r) = console_route(path) {
        return r;
    }
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        ["apis"] => Route::Groups,
        ["apis", g] if *g == GROUP => Route::Group,
        ["apis", g, v, rest @ ..] if *g == GROUP && *v == VERSION => match rest {
            [] => Route::Resources,
            ["sessions"] => Route::Sessions { namespace: None },
            ["namespaces", ns, "sessions"] => Route::Sessions {
                namespace: Some(ns),
            },
            ["namespaces", ns, "sessions", name] => Route::Session {
                namespace: ns,
                name,
            },
            _ => Route::Unknown,
        },
        _ => Route::Unknown,
    }
}

impl Server {
    async fn handle(
        &self,
        req: Request<Incoming>,
        cn: Option<&str>,
        peer: SocketAddr,
    ) -> Response<Body> {
        let user = match self.proxy.identify(cn, req.headers()) {
            Ok(u) => u,
            Err(e) => {
                let forged = matches!(e, AuthError::Forged(_) | AuthError::NameNotAllowed(_));
                tracing::warn!(target: "mirrord_kube", %peer, forged, path = req.uri().path(), error = %e, "aggregated API: request refused");
                return failure(StatusCode::UNAUTHORIZED, "Unauthorized", &e.to_string());
            }
        };
        let path = req.uri().path().to_owned();
        match (route(&path), req.method(), user) {
            (Route::Groups, &Method::GET, _) => json(StatusCode::OK, &resources::group_list()),
            (Route::Group, &Method::GET, _) => json(StatusCode::OK, &resources::group()),
            (Route::Resources, &Method::GET, _) => {
                json(StatusCode::OK, &resources::resource_list())
            }
            (Route::Unknown, _, _) => not_found(&path),
            (Route::ConsoleRoot, _, _) => Response::builder()
                .status(StatusCode::MOVED_PERMANENTLY)
                .header(header::LOCATION, format!("{CONSOLE}/"))
                .body(empty())
                .expect("valid response"),
            (_, _, None) => failure(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "the API server sent no user",
            ),
            (route, method, Some(user)) => {
                let method = method.clone();
                self.for_user(req, route, method, user, peer).await
            }
        }
    }

    async fn for_user(
        &self,
        req: Request<Incoming>,
        route: Route<'_>,
        method: Method,
        user: KubeUser,
        peer: SocketAddr,
    ) -> Response<Body> {
        let caller = match self.caller(&user, &req).await {
            Ok(c) => c,
            Err(resp) => return resp,
        };
        match (route, method) {
            (Route::Console(path), _) => match &self.console {
                Some(console) => console.serve(req, path.to_owned(), caller).await,
                None => failure(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    "the console is off (Helm value console.enabled)",
                ),
            },
            (Route::Sessions { namespace: Some(_) }, Method::POST) => {
                self.upgrade(req, caller, peer)
            }
            (Route::Sessions { namespace }, Method::GET) => self.list(&req, &caller, namespace),
            (Route::Session { namespace, name }, Method::GET) => {
                let now = chrono::Utc::now();
                match self.visible(&caller, Some(namespace), Some(name)).first() {
                    // `kubectl get session ID`: the list's columns, for the one row.
                    Some(s) if wants_table(&req) => json(
                        StatusCode::OK,
                        &resources::table(std::slice::from_ref(s), now),
                    ),
                    Some(s) => json(StatusCode::OK, &resources::object(s, now)),
                    None => session_not_found(name),
                }
            }
            (Route::Session { namespace, name }, Method::DELETE) => {
                self.delete(&caller, namespace, name)
            }
            _ => failure(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "not supported on this resource",
            ),
        }
    }

    /// `kubectl get sessions`: a Table for kubectl's columns, a `SessionList` otherwise.
    fn list(
        &self,
        req: &Request<Incoming>,
        caller: &Caller,
        namespace: Option<&str>,
    ) -> Response<Body> {
        let query = req.uri().query();
        if query.is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1")) {
            return failure(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "sessions cannot be watched; list them again",
            );
        }
        let wanted = field_name(query);
        let sessions = self.visible(caller, namespace, wanted.as_deref());
        let now = chrono::Utc::now();
        match wants_table(req) {
            true => json(StatusCode::OK, &resources::table(&sessions, now)),
            false => json(StatusCode::OK, &resources::list(&sessions, now)),
        }
    }

    /// The Kubernetes user as a caller; admin when RBAC grants `manage` on sessions.
    async fn caller(
        &self,
        user: &KubeUser,
        req: &Request<Incoming>,
    ) -> Result<Caller, Response<Body>> {
        let mut caller = Caller {
            client: ClientInfo {
                client_id: client_id(&user.name),
                client_user: user.name.clone(),
                client_name: String::new(),
                client_hostname: String::new(),
                cli_version: req
                    .headers()
                    .get(header::USER_AGENT)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .chars()
                    .take(64)
                    .filter(|c| !c.is_control())
                    .collect(),
            },
            role: Role::Developer,
            authority: Authority::Kubernetes {
                groups: user.groups.clone(),
            },
        };
        match rbac::allows(self.op.rbac.as_deref(), &caller, &Check::manage_sessions()).await {
            Some(Ok(true)) => caller.role = Role::Admin,
            Some(Ok(false)) | None => {}
            Some(Err(e)) => {
                tracing::warn!(target: "mirrord_kube", user = %user.name, error = %e, "aggregated API: access review failed");
                return Err(failure(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    &e.to_string(),
                ));
            }
        }
        Ok(caller)
    }

    fn visible(
        &self,
        caller: &Caller,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> Vec<mirrord_protocol::SessionInfo> {
        let (sessions, _) = self.op.sessions.info(|s| caller.may_manage(s));
        sessions
            .into_iter()
            .filter(|s| namespace.is_none_or(|ns| s.namespace == ns))
            .filter(|s| name.is_none_or(|n| resources::name(s).eq_ignore_ascii_case(n)))
            .collect()
    }

    /// `kubectl delete session NAME`: ends it if the caller may (audited like `mirrordctl
    /// sessions kill`).
    fn delete(&self, caller: &Caller, namespace: &str, name: &str) -> Response<Body> {
        let Ok(id) = name.parse::<SessionId>() else {
            return session_not_found(name);
        };
        let in_namespace = self
            .op
            .sessions
            .get(id)
            .is_some_and(|e| e.meta.target_namespace == namespace);
        if !in_namespace {
            return session_not_found(name);
        }
        match api::kill(&self.op, KillRequest::Sessions(vec![id]), caller) {
            ServerMessage::Killed { .. } => json(StatusCode::OK, &resources::deleted(name)),
            ServerMessage::Error(e) if e.code == ErrorCode::Forbidden => {
                failure(StatusCode::FORBIDDEN, "Forbidden", &e.message)
            }
            ServerMessage::Error(e) if e.code == ErrorCode::SessionNotFound => {
                session_not_found(name)
            }
            other => failure(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                &format!("{other:?}"),
            ),
        }
    }

    /// The protocol connection: answered with 101, then the operator's protocol runs on
    /// the upgraded stream exactly as on its own TLS port.
    fn upgrade(
        &self,
        mut req: Request<Incoming>,
        caller: Caller,
        peer: SocketAddr,
    ) -> Response<Body> {
        let asked = req
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case(UPGRADE));
        if !asked {
            return failure(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("sessions are opened by mirrordctl: an HTTP/1.1 upgrade to `{UPGRADE}`"),
            );
        }
        let who = Authenticated {
            client_id: caller.client.client_id,
            client_user: caller.client.client_user,
            role: caller.role,
            authority: caller.authority,
            serial: None,
        };
        let op = Arc::clone(&self.op);
        let on_upgrade = hyper::upgrade::on(&mut req);
        // A task of the operator's lifecycle (the session it becomes is one).
        let lifecycle = op.shutdown.clone();
        lifecycle.spawn(async move {
            match on_upgrade.await {
                Ok(io) => api::serve_upgraded(op, TokioIo::new(io), peer, who).await,
                Err(e) => {
                    tracing::warn!(target: "mirrord_kube", %peer, error = %e, "aggregated API: upgrade failed")
                }
            }
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, UPGRADE)
            .body(empty())
            .expect("valid response")
    }
}

/// The console's paths: `.../v1/console/...` (cluster-wide: a ClusterRoleBinding grants it)
/// or `.../v1/namespaces/NS/console/...` (a RoleBinding in NS does). Either shows what the
/// caller may see everywhere, as `mirrordctl status` does.
fn console_route(path: &str) -> Option<Route<'_>> {
    let rest = path
        .strip_prefix("/apis/")?
        .strip_prefix(GROUP)?
        .strip_prefix('/')?
        .strip_prefix(VERSION)?
        .strip_prefix('/')?;
    let rest = match rest.strip_prefix("namespaces/") {
        Some(ns) => ns.split_once('/')?.1,
        None => rest,
    };
    match rest.strip_prefix(CONSOLE)? {
        "" => Some(Route::ConsoleRoot),
        below if below.starts_with('/') => Some(Route::Console(below)),
        _ => None,
    }
}

/// A Kubernetes user's `client_id`: stable per user (the API server authenticates users,
/// not client certificates).
pub fn client_id(user: &str) -> String {
    let digest = Sha256::digest(format!("kubernetes:{user}").as_bytes());
    format!("k8s-{}", hex::encode(&digest[..8]))
}

/// `fieldSelector=metadata.name=NAME` (kubectl asks this way while waiting for a delete).
fn field_name(query: Option<&str>) -> Option<String> {
    query?.split('&').find_map(|p| {
        let v = p.strip_prefix("fieldSelector=")?;
        let v = v.replace("%3D", "=").replace("%3d", "=");
        let name = v
            .strip_prefix("metadata.name==")
            .or_else(|| v.strip_prefix("metadata.name="))?;
        Some(name.to_owned())
    })
}

fn wants_table(req: &Request<Incoming>) -> bool {
    req.headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("as=Table"))
}

fn empty() -> Body {
    Full::new(Bytes::new()).boxed_unsync()
}

fn json(status: StatusCode, v: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(v.to_string())).boxed_unsync())
        .expect("valid response")
}

/// A Kubernetes `Status` answer: kubectl prints `Error from server (reason): message`.
fn failure(status: StatusCode, reason: &str, message: &str) -> Response<Body> {
    json(status, &resources::status(status.as_u16(), reason, message))
}

fn not_found(path: &str) -> Response<Body> {
    failure(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("the server could not find {path}"),
    )
}

fn session_not_found(name: &str) -> Response<Body> {
    failure(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("sessions.{GROUP} \"{name}\" not found"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_resources() {
        assert_eq!(route("/apis"), Route::Groups);
        assert_eq!(route("/apis/operator.mirrord.dev"), Route::Group);
        assert_eq!(route("/apis/operator.mirrord.dev/v1"), Route::Resources);
        assert_eq!(
            route("/apis/operator.mirrord.dev/v1/sessions"),
            Route::Sessions { namespace: None }
        );
        assert_eq!(
            route("/apis/operator.mirrord.dev/v1/namespaces/shop/sessions/00ab"),
            Route::Session {
                namespace: "shop",
                name: "00ab"
            }
        );
        assert_eq!(
            route("/apis/operator.mirrord.dev/v2/sessions"),
            Route::Unknown
        );
        assert_eq!(route("/api/v1/pods"), Route::Unknown);
        assert_eq!(
            route("/apis/operator.mirrord.dev/v1/console"),
            Route::ConsoleRoot
        );
        assert_eq!(
            route("/apis/operator.mirrord.dev/v1/console/"),
            Route::Console("/")
        );
        assert_eq!(
            route("/apis/operator.mirrord.dev/v1/console/api/sessions/AB/kill"),
            Route::Console("/api/sessions/AB/kill")
        );
        assert_eq!(
            route("/apis/operator.mirrord.dev/v1/consoles"),
            Route::Unknown
        );
    }

    #[test]
    fn kubectl_waits_with_a_name_selector() {
        assert_eq!(
            field_name(Some("fieldSelector=metadata.name%3D00ab&limit=500")),
            Some("00ab".into())
        );
        assert_eq!(field_name(Some("limit=500")), None);
    }

    #[test]
    fn client_ids_are_stable_per_user() {
        assert_eq!(client_id("alice"), client_id("alice"));
        assert_ne!(client_id("alice"), client_id("bob"));
        assert!(client_id("alice").starts_with("k8s-"));
    }
}
