//! The route table and the handlers. Requests are dispatched only through [`ROUTES`], so
//! a route cannot be served without being listed (and `mirrord-operator console routes`
//! prints the same table for the test that checks every route refuses strangers).

use super::auth::{self, BrowserSession};
use super::reply::{asset, json, set_header, text, Body};
use super::{sse, view, Console};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use mirrord_protocol::{ErrorCode, KillRequest, ServerMessage, SessionId};
use mirrord_serve::Activity;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Needs a fresh login token (the exchange for a cookie).
    LoginToken,
    /// Needs a browser session.
    Session,
    /// Needs a browser session, its CSRF token and a same-origin `Origin`.
    SessionAndCsrf,
}

#[derive(Debug, Clone, Copy)]
enum Handler {
    Login,
    Logout,
    Page,
    Script,
    Style,
    Status,
    Events,
    Kill,
}

pub struct Route {
    pub method: &'static str,
    /// `{id}` stands for one path segment.
    pub path: &'static str,
    pub access: Access,
    handler: Handler,
}

const fn route(method: &'static str, path: &'static str, access: Access, h: Handler) -> Route {
    Route {
        method,
        path,
        access,
        handler: h,
    }
}

pub const ROUTES: &[Route] = &[
    route("GET", "/login", Access::LoginToken, Handler::Login),
    route("POST", "/logout", Access::SessionAndCsrf, Handler::Logout),
    route("GET", "/", Access::Session, Handler::Page),
    route(
        "GET",
        "/assets/console.js",
        Access::Session,
        Handler::Script,
    ),
    route(
        "GET",
        "/assets/console.css",
        Access::Session,
        Handler::Style,
    ),
    route("GET", "/api/status", Access::Session, Handler::Status),
    route("GET", "/api/events", Access::Session, Handler::Events),
    route(
        "POST",
        "/api/sessions/{id}/kill",
        Access::SessionAndCsrf,
        Handler::Kill,
    ),
];

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/console.js");
const STYLE: &str = include_str!("assets/console.css");

/// No inline script or style, nothing from elsewhere, never framed.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// A request on the console's own port; `activity` is its connection's slot (an open
/// event stream pins it).
pub async fn handle(
    console: &Console,
    req: Request<Incoming>,
    activity: Option<&Activity>,
) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let mut resp = dispatch(console, req, &path, None, activity).await;
    secure_headers(resp.headers_mut());
    resp
}

/// A request through the Kubernetes API server (the aggregated API's `console/`): `path`
/// is below that prefix and `session` is the user the API server authenticated.
pub async fn handle_proxied(
    console: &Console,
    req: Request<Incoming>,
    path: &str,
    session: BrowserSession,
) -> Response<Body> {
    let mut resp = dispatch(console, req, path, Some(session), None).await;
    secure_headers(resp.headers_mut());
    resp
}

fn secure_headers(h: &mut hyper::HeaderMap) {
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert(
        "strict-transport-security",
        HeaderValue::from_static("max-age=31536000"),
    );
    // Everything here is per user or live: never kept by a browser or a proxy.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// The route and the `{id}` segment, if `path` matches one.
fn find<'p>(method: &Method, path: &'p str) -> Option<(&'static Route, Option<&'p str>)> {
    ROUTES.iter().find_map(|r| {
        if r.method != method.as_str() {
            return None;
        }
        let (mut want, mut got) = (r.path.split('/'), path.split('/'));
        let mut id = None;
        loop {
            match (want.next(), got.next()) {
                (None, None) => return Some((r, id)),
                (Some("{id}"), Some(seg)) if !seg.is_empty() => id = Some(seg),
                (Some(w), Some(g)) if w == g => {}
                _ => return None,
            }
        }
    })
}

async fn dispatch(
    console: &Console,
    req: Request<Incoming>,
    path: &str,
    proxied: Option<BrowserSession>,
    activity: Option<&Activity>,
) -> Response<Body> {
    let Some((route, id)) = find(req.method(), path) else {
        return text(StatusCode::NOT_FOUND, "no such page\n");
    };
    let via_api_server = proxied.is_some();
    if route.access == Access::LoginToken {
        return match via_api_server {
            false => login(console, &req),
            true => text(
                StatusCode::NOT_FOUND,
                "no login here: the API server authenticates you\n",
            ),
        };
    }
    let cookie = req
        .headers()
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok());
    let Some(session) = proxied.or_else(|| console.sessions.lookup(cookie)) else {
        return text(
            StatusCode::UNAUTHORIZED,
            "not logged in: run `mirrordctl console login` and open the link it prints\n",
        );
    };
    if console
        .op
        .revoked
        .contains(&session.caller.client.client_id)
    {
        console.sessions.remove(cookie);
        return text(StatusCode::UNAUTHORIZED, "your credential was revoked\n");
    }
    if route.access == Access::SessionAndCsrf {
        if let Err(why) = check_csrf(&req, &session, via_api_server) {
            return text(StatusCode::FORBIDDEN, why);
        }
    }
    match route.handler {
        Handler::Login => unreachable!("handled above"),
        Handler::Logout => {
            console.sessions.remove(cookie);
            let mut r = text(StatusCode::OK, "logged out\n");
            set_header(&mut r, header::SET_COOKIE, &auth::clear_cookie());
            r
        }
        Handler::Page => asset(INDEX, "text/html; charset=utf-8"),
        Handler::Script => asset(SCRIPT, "text/javascript; charset=utf-8"),
        Handler::Style => asset(STYLE, "text/css; charset=utf-8"),
        Handler::Status => json(&view::status(&console.op, &session)),
        Handler::Events => sse::stream(console, &req, &session, activity),
        Handler::Kill => kill(console, &session, id.unwrap_or_default()),
    }
}

/// The kill action must come from our own page: the CSRF token it read from
/// `/api/status`, and an `Origin` naming this console (browsers always send one on POST).
/// Through the API server the `Host` is rewritten on the way, so there the custom header
/// alone stands (another origin cannot send it without a CORS preflight, never answered).
fn check_csrf(
    req: &Request<Incoming>,
    session: &BrowserSession,
    via_api_server: bool,
) -> Result<(), &'static str> {
    let h = req.headers();
    let token = h.get("x-csrf-token").and_then(|v| v.to_str().ok());
    if !token.is_some_and(|t| auth::same_secret(t, &session.csrf)) {
        return Err("missing or wrong X-CSRF-Token: reload the console\n");
    }
    if via_api_server {
        return Ok(());
    }
    let host = h.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin = h.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    match (host, origin) {
        (Some(host), Some(origin)) if origin == format!("https://{host}") => Ok(()),
        _ => Err("cross-origin request refused (Origin must be this console)\n"),
    }
}

fn login(console: &Console, req: &Request<Incoming>) -> Response<Body> {
    let token = req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("token="))
            .map(str::to_owned)
    });
    let Some(caller) = token.and_then(|t| console.op.console_logins.redeem(&t)) else {
        return text(
            StatusCode::UNAUTHORIZED,
            "this login link is unknown, used or expired: run `mirrordctl console login` again\n",
        );
    };
    tracing::info!(client_user = %caller.user(), role = caller.role.as_str(), "console login");
    let id = console.sessions.create(caller);
    let mut r = text(StatusCode::SEE_OTHER, "logged in\n");
    set_header(&mut r, header::LOCATION, "/");
    set_header(&mut r, header::SET_COOKIE, &auth::set_cookie(&id));
    r
}

/// Through the API's own kill: same authorization, same audit events.
fn kill(console: &Console, session: &BrowserSession, id: &str) -> Response<Body> {
    let Ok(id) = id.parse::<SessionId>() else {
        return text(StatusCode::BAD_REQUEST, "not a session id\n");
    };
    let req = KillRequest::Sessions(vec![id]);
    match mirrord_controlplane::api::kill(&console.op, req, &session.caller) {
        ServerMessage::Killed { .. } => json(&serde_json::json!({ "killed": id.to_string() })),
        ServerMessage::Error(e) => {
            let status = match e.code {
                ErrorCode::Forbidden => StatusCode::FORBIDDEN,
                ErrorCode::SessionNotFound => StatusCode::NOT_FOUND,
                _ => StatusCode::BAD_REQUEST,
            };
            text(status, &format!("{}\n", e.message))
        }
        other => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("unexpected answer {other:?}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_match_whole_segments() {
        let kill = find(&Method::POST, "/api/sessions/00000000000000AB/kill").unwrap();
        assert_eq!(kill.1, Some("00000000000000AB"));
        assert!(find(&Method::GET, "/api/sessions/AB/kill").is_none());
        assert!(find(&Method::POST, "/api/sessions//kill").is_none());
        assert!(find(&Method::GET, "/api/status/x").is_none());
        assert_eq!(find(&Method::GET, "/").unwrap().0.path, "/");
    }
}
