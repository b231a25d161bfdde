//! The web console (issue 15), driven through the real binaries: login links minted by
//! `mirrordctl console login`, the route table refusing strangers, CSRF and Origin checks
//! on kill, the SSE feed resuming after `Last-Event-ID`, and a real headless Chromium
//! (chromedriver + fantoccini) logging in, watching a session and its events appear,
//! killing it as an admin and being refused as another developer. Screenshots are saved
//! under `<target>/console-screenshots/`.

use mirrord_e2e::servers::HttpServer;
use mirrord_e2e::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Fixture {
    op: Operator,
    console: SocketAddr,
    /// Where the target's clients connect (the interceptor).
    listen: SocketAddr,
    dev: HttpServer,
    _target: HttpServer,
}

impl Fixture {
    async fn start() -> Self {
        let target = HttpServer::start("target").await;
        let dev = HttpServer::start("dev").await;
        let console = free_addr();
        let listen = free_addr();
        let op = Operator::start_with(OperatorOptions {
            targets: upstream_target("api", 80, listen, target.addr),
            env: vec![("OPERATOR_CONSOLE_ADDR".into(), console.to_string())],
            // One binds every developer, one only interns: the console shows an admin both.
            extra_config: "[[policies]]\nname = \"interns-mirror-only\"\nusers = [\"intern-*\"]\nblock = [\"steal\"]\n\
                           [[policies]]\nname = \"no-scale-down\"\nblock = [\"scale_down\"]\noutgoing_allow = [\"10.0.0.0/8:5432\"]\n"
                .into(),
            ..Default::default()
        });
        Self {
            op,
            console,
            listen,
            dev,
            _target: target,
        }
    }

    fn mirror(&self, creds: &Path) -> Session {
        let port = format!("80={}", self.dev.addr);
        Session::start(creds, &["mirror", "--target", "api", "--port", &port]).unwrap()
    }

    /// A login link for `creds`, as `mirrordctl console login` prints it.
    fn login_link(&self, creds: &Path) -> String {
        let out = ctl(creds, &["console", "login"]);
        assert!(out.status.success(), "console login failed: {out:?}");
        let url = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        assert!(
            url.starts_with(&format!("https://{}/login?token=", self.console)),
            "{url}"
        );
        url
    }

    /// The path part of a login link.
    fn login_path(&self, creds: &Path) -> String {
        let url = self.login_link(creds);
        url[url.find("/login").unwrap()..].to_owned()
    }

    /// Logs in with a raw HTTPS client; returns the `Cookie` header value.
    async fn cookie(&self, creds: &Path) -> String {
        let r = self.get(&self.login_path(creds), &[]).await;
        assert_eq!(r.status, 303, "{}", r.body);
        let set = &r.headers["set-cookie"];
        set.split(';').next().unwrap().to_owned()
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        https(&self.op.state, self.console, "GET", path, headers).await
    }

    async fn csrf(&self, cookie: &str) -> String {
        let r = self.get("/api/status", &[("cookie", cookie)]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let v: Value = serde_json::from_str(&r.body).unwrap();
        v["csrf"].as_str().unwrap().to_owned()
    }
}

struct Reply {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

fn tls_client(state: &Path) -> tokio_rustls::TlsConnector {
    let pem = std::fs::read(state.join("ca.crt")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in pem_certs(&pem) {
        roots.add(c).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// The certificates of a PEM file (rustls' own PEM reader).
fn pem_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .map(Result::unwrap)
        .collect()
}

/// Opens a TLS connection to the console (verifying its certificate against the
/// operator's CA) and sends one request.
async fn send(
    state: &Path,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(mirrord_identity::OPERATOR_SERVER_NAME)
        .unwrap()
        .to_owned();
    let mut tls = tls_client(state).connect(name, tcp).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: 0\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    tls.write_all(req.as_bytes()).await.unwrap();
    tls
}

async fn https(
    state: &Path,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut tls = send(state, addr, method, path, headers).await;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut raw)).await;
    parse(&String::from_utf8_lossy(&raw))
}

fn parse(raw: &str) -> Reply {
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {raw:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// Reads an event stream until `pred` holds for what arrived (or 20 s pass).
async fn read_stream_until(
    tls: &mut tokio_rustls::client::TlsStream<TcpStream>,
    pred: impl Fn(&str) -> bool,
) -> String {
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 8192];
    while !pred(&seen) {
        match tokio::time::timeout_at(deadline, tls.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            _ => break,
        }
    }
    seen
}

/// The SSE events (id, JSON data) in `text`.
fn sse_events(text: &str) -> Vec<(u64, Value)> {
    text.split("\n\n")
        .filter_map(|block| {
            let id = block.lines().find_map(|l| l.strip_prefix("id: "))?;
            let data = block.lines().find_map(|l| l.strip_prefix("data: "))?;
            Some((id.parse().ok()?, serde_json::from_str(data).ok()?))
        })
        .collect()
}

fn routes() -> Vec<(String, String, String)> {
    let out = Command::new(bin("mirrord-operator"))
        .args(["console", "routes"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let mut p = l.split(' ');
            let (m, path, access) = (p.next(), p.next(), p.next());
            (
                m.unwrap().to_owned(),
                path.unwrap().replace("{id}", "00000000000000AB"),
                access.unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_requests_without_a_valid_login() {
    let f = Fixture::start().await;
    let root = f.op.issue_admin("root");
    let table = routes();
    // The walk means something only if it covers the pages, the API and the actions.
    for must in ["/", "/api/status", "/api/events", "/login"] {
        assert!(table.iter().any(|(_, p, _)| p == must), "{table:?}");
    }
    assert!(table.iter().any(|(m, _, _)| m == "POST"), "{table:?}");

    let bogus =
        "__Host-mirrord-console=00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    for (method, path, _) in &table {
        for headers in [vec![], vec![("cookie", bogus)]] {
            let r = https(&f.op.state, f.console, method, path, &headers).await;
            assert_eq!(r.status, 401, "{method} {path} {headers:?}: {}", r.body);
            assert!(!r.headers.contains_key("set-cookie"), "{method} {path}");
        }
    }
    // A login link with a made-up token, and one used twice, are refused too.
    let r = f.get("/login?token=abcd", &[]).await;
    assert_eq!(r.status, 401);
    let link = f.login_path(&root);
    assert_eq!(f.get(&link, &[]).await.status, 303);
    assert_eq!(f.get(&link, &[]).await.status, 401, "a link works once");

    // With a login every route answers (so the 401s above were about the login).
    let cookie = f.cookie(&root).await;
    for (method, path, access) in &table {
        if method != "GET" || access != "Session" || path == "/api/events" {
            continue;
        }
        let r = f.get(path, &[("cookie", &cookie)]).await;
        assert_eq!(r.status, 200, "GET {path}: {}", r.body);
        let csp = &r.headers["content-security-policy"];
        assert!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"));
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(r.headers["cache-control"], "no-store");
        assert_eq!(r.headers["x-frame-options"], "DENY");
    }
    let set = f.get(&f.login_path(&root), &[]).await.headers["set-cookie"].clone();
    for attr in [
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
        "Path=/",
        "Max-Age=",
    ] {
        assert!(set.contains(attr), "{set}");
    }
    // No static page carries inline script.
    let page = f.get("/", &[("cookie", &cookie)]).await.body;
    assert!(page.contains("<script src=\"assets/console.js\""), "{page}");
    assert!(!page.contains("<script>"), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_login_is_refused_when_the_console_is_off() {
    let f = ApiFixture::start("").await;
    let out = ctl(&f.op.issue_admin("root"), &["console", "login"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the console is not enabled"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_needs_the_csrf_token_and_a_same_origin_request() {
    let f = Fixture::start().await;
    let (root, alice) = (f.op.issue_admin("root"), f.op.issue("alice"));
    let mut a = f.mirror(&alice);
    let cookie = f.cookie(&root).await;
    let csrf = f.csrf(&cookie).await;
    let path = format!("/api/sessions/{}/kill", a.id);
    let origin = format!("https://{}", f.console);
    let post = |headers: Vec<(&'static str, String)>| {
        let (state, console, path, cookie) =
            (f.op.state.clone(), f.console, path.clone(), cookie.clone());
        async move {
            let mut h: Vec<(&str, &str)> = vec![("cookie", &cookie)];
            h.extend(headers.iter().map(|(k, v)| (*k, v.as_str())));
            https(&state, console, "POST", &path, &h).await
        }
    };
    let refused = [
        vec![("origin", origin.clone())],
        vec![("x-csrf-token", "0".repeat(64)), ("origin", origin.clone())],
        vec![("x-csrf-token", csrf.clone())],
        vec![
            ("x-csrf-token", csrf.clone()),
            ("origin", "https://evil.example".into()),
        ],
    ];
    for headers in refused {
        let r = post(headers.clone()).await;
        assert_eq!(r.status, 403, "{headers:?}: {}", r.body);
    }
    assert_eq!(status(&root)["sessions"].as_array().unwrap().len(), 1);
    assert!(f.op.events("Session Killed").is_empty());

    let r = post(vec![("x-csrf-token", csrf), ("origin", origin)]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    a.wait_exit(Duration::from_secs(10))
        .expect("alice's CLI ends");
    let killed = f.op.wait_event("Session Killed", 1);
    assert_eq!(killed[0]["fields"]["by_user"], "root");
    assert_eq!(killed[0]["fields"]["session_id"], a.id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_and_targets_show_requests_stolen_and_bypassed() {
    let f = Fixture::start().await;
    let alice = f.op.issue("alice");
    let port = format!("80={}", f.dev.addr);
    let _s = Session::start(
        &alice,
        &[
            "steal",
            "--target",
            "api",
            "--port",
            &port,
            "--header",
            "^x-user: alice$",
        ],
    )
    .unwrap();
    let listen = f.listen;
    tokio::task::spawn_blocking(move || {
        for user in ["alice", "bob", "carol"] {
            let req = format!(
                "GET / HTTP/1.1\r\nhost: api\r\nx-user: {user}\r\nconnection: close\r\n\r\n"
            );
            prom::http_exchange(listen, &req).unwrap();
        }
    })
    .await
    .unwrap();
    let cookie = f.cookie(&alice).await;
    let r = f.get("/api/status", &[("cookie", &cookie)]).await;
    let v: Value = serde_json::from_str(&r.body).unwrap();
    let s = &v["sessions"][0];
    assert_eq!(
        (
            s["requests_stolen"].as_u64(),
            s["requests_bypassed"].as_u64()
        ),
        (Some(1), Some(2)),
        "{v}"
    );
    let holds: Vec<&Value> = v["targets"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|h| h.as_array().unwrap())
        .collect();
    assert_eq!(holds.len(), 1, "{v}");
    assert_eq!(holds[0]["lock"], "filtered steal");
    assert_eq!(holds[0]["bypassed"], 2, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_stream_resumes_after_last_event_id_and_shows_developers_only_theirs() {
    let f = Fixture::start().await;
    let (root, alice, bob) = (
        f.op.issue_admin("root"),
        f.op.issue("alice"),
        f.op.issue("bob"),
    );
    let admin = f.cookie(&root).await;
    let bobs = f.cookie(&bob).await;
    let mut bob_stream = send(
        &f.op.state,
        f.console,
        "GET",
        "/api/events",
        &[("cookie", &bobs)],
    )
    .await;
    let mut a = f.mirror(&alice);
    let mut stream = send(
        &f.op.state,
        f.console,
        "GET",
        "/api/events",
        &[("cookie", &admin)],
    )
    .await;
    let seen = read_stream_until(&mut stream, |s| s.contains("Port Mirrored")).await;
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(seen.contains("text/event-stream"), "{seen}");
    let events = sse_events(&seen);
    let started = events
        .iter()
        .find(|(_, e)| e["message"] == "Session Started")
        .unwrap_or_else(|| panic!("no Session Started in {seen}"));
    assert_eq!(started.1["fields"]["session_id"], a.id.as_str());
    assert_eq!(started.1["fields"]["client_user"], "alice");
    let last = events.last().unwrap().0;
    drop(stream);

    // While nobody watches, the session ends; a reconnect from `last` gets exactly what
    // came after.
    a.stop();
    f.op.wait_event("Session Ended", 1);
    let id = last.to_string();
    let mut again = send(
        &f.op.state,
        f.console,
        "GET",
        "/api/events",
        &[("cookie", &admin), ("last-event-id", &id)],
    )
    .await;
    let resumed = read_stream_until(&mut again, |s| s.contains("Session Ended")).await;
    let after = sse_events(&resumed);
    assert!(!after.is_empty(), "{resumed}");
    assert!(after.iter().all(|(i, _)| *i > last), "{resumed}");
    assert!(
        after.iter().any(|(_, e)| e["message"] == "Session Ended"),
        "{resumed}"
    );
    assert!(
        !after.iter().any(|(_, e)| e["message"] == "Session Started"),
        "{resumed}"
    );

    // An id from an earlier run of the operator (beyond the latest) starts from the ring.
    let mut stale = send(
        &f.op.state,
        f.console,
        "GET",
        "/api/events",
        &[("cookie", &admin), ("last-event-id", "999999999")],
    )
    .await;
    let from_start = read_stream_until(&mut stale, |s| s.contains("Session Ended")).await;
    assert!(from_start.contains("Session Started"), "{from_start}");

    // bob (a developer) saw none of alice's events, but does see his own.
    let mut b = f.mirror(&bob);
    let bob_seen = read_stream_until(&mut bob_stream, |s| s.contains("Session Started")).await;
    let bob_events = sse_events(&bob_seen);
    assert!(!bob_events.is_empty(), "{bob_seen}");
    assert!(
        bob_events.iter().all(|(_, e)| e["owner"] == "bob"),
        "{bob_seen}"
    );
    b.stop();
}

// ---------------------------------------------------------------- headless Chromium

use mirrord_e2e::browser::{browser, chromedriver, click, screenshot, until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_logs_in_sees_a_live_session_and_its_events_kills_it_as_admin_and_is_refused_as_another_developer(
) {
    let Some(driver) = chromedriver() else { return };
    let f = Fixture::start().await;
    let (root, alice, bob) = (
        f.op.issue_admin("root"),
        f.op.issue("alice"),
        f.op.issue("bob"),
    );
    let c = browser(&driver).await;

    // The admin logs in with the link mirrordctl printed.
    c.goto(&f.login_link(&root)).await.unwrap();
    until(
        &c,
        "the admin's name",
        "return document.getElementById('whoami').textContent.includes('root (admin)')",
    )
    .await;

    // A session opened by the CLI appears in the table, and its events in the feed.
    let mut a = f.mirror(&alice);
    let row = format!(
        "return !!document.querySelector('tr[data-session=\"{}\"]')",
        a.id
    );
    until(&c, "alice's session row", &row).await;
    until(
        &c,
        "the Session Started event",
        &format!("return [...document.querySelectorAll('#event-list li[data-message=\"Session Started\"]')].some(l => l.textContent.includes('{}'))", a.id),
    )
    .await;
    until(
        &c,
        "the Port Mirrored event",
        "return !!document.querySelector('#event-list li[data-message=\"Port Mirrored\"]')",
    )
    .await;
    // The admin sees every policy with its rules; bob (below) the one that binds him.
    until(
        &c,
        "both policies",
        "return [...document.querySelectorAll('#policy-table tbody tr')].map(r => r.dataset.policy).join() == 'interns-mirror-only,no-scale-down' && document.querySelector('tr[data-policy=\"no-scale-down\"]').textContent.includes('outgoing only to 10.0.0.0/8:5432')",
    )
    .await;
    screenshot(&c, "console-admin.png").await;

    // bob, another developer, does not see alice's session and may not kill it.
    c.delete_all_cookies().await.unwrap();
    c.goto(&f.login_link(&bob)).await.unwrap();
    until(
        &c,
        "bob's name",
        "return document.getElementById('whoami').textContent.includes('bob (developer)')",
    )
    .await;
    let visible = c.execute(&row, vec![]).await.unwrap();
    assert_eq!(visible, Value::Bool(false), "bob sees alice's session");
    until(
        &c,
        "only the policy that binds bob",
        "return [...document.querySelectorAll('#policy-table tbody tr')].map(r => r.dataset.policy).join() == 'no-scale-down'",
    )
    .await;
    let refused = c
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch('/api/status').then(r => r.json())
               .then(s => fetch('/api/sessions/' + arguments[0] + '/kill',
                                {method: 'POST', headers: {'X-CSRF-Token': s.csrf}}))
               .then(r => done(r.status), e => done(String(e)));",
            vec![json!(a.id)],
        )
        .await
        .unwrap();
    assert_eq!(refused, json!(403));
    assert_eq!(
        f.op.wait_event("Request Forbidden", 1)[0]["fields"]["client_user"],
        "bob"
    );
    screenshot(&c, "console-developer.png").await;

    // Back as the admin: the Kill button ends it; the CLI ends and the audit line says who.
    c.delete_all_cookies().await.unwrap();
    c.goto(&f.login_link(&root)).await.unwrap();
    until(&c, "alice's session row again", &row).await;
    let css = format!("tr[data-session=\"{}\"] button.kill", a.id);
    click(&c, &css).await;
    until(
        &c,
        "the row to go",
        &format!(
            "return !document.querySelector('tr[data-session=\"{}\"]')",
            a.id
        ),
    )
    .await;
    until(
        &c,
        "the Session Killed event",
        "return !!document.querySelector('#event-list li[data-message=\"Session Killed\"]')",
    )
    .await;
    assert!(
        a.wait_exit(Duration::from_secs(10)).is_some(),
        "alice's CLI ends"
    );
    assert_eq!(
        f.op.wait_event("Session Killed", 1)[0]["fields"]["by_user"],
        "root"
    );
    screenshot(&c, "console-after-kill.png").await;
    c.close().await.unwrap();
}

/// Issue 24 item 5: idle TCP connections (no TLS, no credential) cannot lock people out of
/// the console, and one developer's event streams cannot keep an admin from watching.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_and_one_users_streams_lock_nobody_out() {
    let f = Fixture::start().await;
    let root = f.op.issue_admin("root");
    let bob = f.op.issue("bob");

    // 300 connections that never say anything: more than the console serves at once.
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(TcpStream::connect(f.console).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for i in 0..5 {
        let started = std::time::Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(5), f.get("/api/status", &[]))
            .await
            .unwrap_or_else(|_| panic!("request {i} got no answer behind 300 idle connections"));
        assert_eq!(r.status, 401, "{}", r.body);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
    drop(idle);

    // A developer's streams: a few are fine, past that refused, and the admin's still open.
    let bob_cookie = f.cookie(&bob).await;
    let mut streams = Vec::new();
    for _ in 0..4 {
        let mut s = send(
            &f.op.state,
            f.console,
            "GET",
            "/api/events",
            &[("cookie", &bob_cookie)],
        )
        .await;
        let head = read_stream_until(&mut s, |t| t.contains("\r\n\r\n")).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        streams.push(s);
    }
    let r = f.get("/api/events", &[("cookie", &bob_cookie)]).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("too many event streams"), "{}", r.body);
    let root_cookie = f.cookie(&root).await;
    let mut admin = send(
        &f.op.state,
        f.console,
        "GET",
        "/api/events",
        &[("cookie", &root_cookie)],
    )
    .await;
    let head = read_stream_until(&mut admin, |t| t.contains("retry:")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

/// Issue 24 item 3b: a revoked admin's open event stream stops at once (it used to keep
/// delivering everyone's events, beyond its cookie's life too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_viewers_event_stream_ends() {
    let f = Fixture::start().await;
    let root = f.op.issue_admin("root");
    let alice = f.op.issue("alice");
    let cookie = f.cookie(&root).await;
    let mut stream = send(
        &f.op.state,
        f.console,
        "GET",
        "/api/events",
        &[("cookie", &cookie)],
    )
    .await;
    let _ = read_stream_until(&mut stream, |t| t.contains("retry:")).await;
    let _a = f.mirror(&alice);
    let seen = read_stream_until(&mut stream, |t| t.contains("Session Started")).await;
    assert!(seen.contains("Session Started"), "{seen}");

    let out = f.op.certs(&["revoke", "root", "--by", "carol"]);
    assert!(out.status.success(), "{out:?}");
    // Ended within a couple of seconds: read to the end.
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "the revoked admin's stream is still open");
    // Nothing after the revocation reaches it.
    let _b = f.mirror(&f.op.issue("bob"));
    f.op.wait_event("Session Started", 2);
    let text = String::from_utf8_lossy(&rest);
    assert!(!text.contains("\"bob\""), "{text}");
}
