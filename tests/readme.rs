//! The README's five-minute tour, as a new user follows it: its `operator.toml` verbatim and
//! its commands (each asserted to be in the README as written), from an empty directory to
//! a stolen request. If the README drifts from what works, this fails.

use mirrord_e2e::*;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap()
}

/// The first fenced block of `lang`.
fn block(text: &str, lang: &str) -> String {
    let start = text
        .find(&format!("```{lang}\n"))
        .unwrap_or_else(|| panic!("no ```{lang} block"))
        + lang.len()
        + 4;
    text[start..][..text[start..].find("```").unwrap()].to_owned()
}

/// Asserts the README tells the user to type `command` (comments after it aside).
fn says(readme: &str, command: &str) {
    assert!(
        readme
            .lines()
            .any(|l| l.split(" #").next().unwrap().trim() == command),
        "the README no longer says `{command}`"
    );
}

/// What `curl -H ...` would get: one request on its own connection, the whole answer.
fn curl(addr: std::net::SocketAddr, headers: &str) -> String {
    let req = format!("GET / HTTP/1.1\r\nhost: localhost\r\n{headers}connection: close\r\n\r\n");
    prom::http_exchange(addr, &req).unwrap()
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_five_minute_tour_works_as_written() {
    // The README's fixed ports must be free, or this would test someone else's process.
    for port in [8443, 9090, 18080] {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "127.0.0.1:{port} (in the README's example) is taken: stop what holds it"
        );
    }
    let text = readme();
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path();
    let state = w.join("state");
    let state = state.to_str().unwrap();
    std::fs::write(w.join("operator.toml"), block(&text, "toml")).unwrap();
    let started = Instant::now();

    says(
        &text,
        "mirrord-operator serve --config operator.toml --state-dir /var/lib/mirrord",
    );
    let op = Command::new(bin("mirrord-operator"))
        .current_dir(w)
        .args(["serve", "--config", "operator.toml", "--state-dir", state])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut op = Killed(op);
    let op_out = Lines::default().collect_from(op.0.stdout.take().unwrap());
    op_out
        .wait(Duration::from_secs(20), |l| l.contains("operator ready"))
        .unwrap_or_else(|| panic!("the README's operator did not start: {}", op_out.text()));

    // The target's replicas start with the operator and take a moment to listen; until one
    // does, the interceptor closes connections ("no ready replica"). A person typing the
    // next commands never sees it; a test this fast can (1 run in ~20 on an idle machine).
    let listen: std::net::SocketAddr = "127.0.0.1:18080".parse().unwrap();
    wait_for(Duration::from_secs(20), || {
        prom::http_exchange(
            listen,
            "GET / HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n",
        )
        .ok()
        .filter(|a| a.starts_with("HTTP/1.0 200") || a.starts_with("HTTP/1.1 200"))
    })
    .expect("the README's target serves through its interceptor");

    says(
        &text,
        "mirrord-operator certs issue --state-dir /var/lib/mirrord --user alice --out ./alice",
    );
    let st = Command::new(bin("mirrord-operator"))
        .current_dir(w)
        .args([
            "certs",
            "issue",
            "--state-dir",
            state,
            "--user",
            "alice",
            "--out",
            "./alice",
        ])
        .status()
        .unwrap();
    assert!(st.success());

    // The developer's local process, where the README's --port 80=9090 points.
    std::fs::create_dir(w.join("dev")).unwrap();
    std::fs::write(w.join("dev/index.html"), "hello from alice's laptop").unwrap();
    let _dev = Killed(
        Command::new("python3")
            .current_dir(w.join("dev"))
            .args(["-m", "http.server", "9090", "--bind", "127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(Duration::from_secs(10), || {
        std::net::TcpStream::connect("127.0.0.1:9090").ok()
    })
    .expect("python3 -m http.server 9090");

    says(&text, "export MIRRORD_CREDENTIALS=./alice");
    says(
        &text,
        "mirrordctl steal --target deployment/api --port 80=9090 --header '^x-user: alice$'",
    );
    let steal = Command::new(bin("mirrordctl"))
        .current_dir(w)
        .env("MIRRORD_CREDENTIALS", "./alice")
        .args([
            "steal",
            "--target",
            "deployment/api",
            "--port",
            "80=9090",
            "--header",
            "^x-user: alice$",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut steal = Killed(steal);
    let out = Lines::default().collect_from(steal.0.stdout.take().unwrap());
    let err = Lines::default().collect_from(steal.0.stderr.take().unwrap());
    out.wait(Duration::from_secs(20), |l| l.starts_with("session "))
        .unwrap_or_else(|| panic!("no session: {}", err.text()));

    // The README's interceptor address, from its operator.toml.
    assert!(text.contains("listen = \"127.0.0.1:18080\""));
    let answer = curl(listen, "x-user: alice\r\n");
    assert!(
        answer.lines().next().is_some_and(|l| l.contains(" 200 ")),
        "{answer}"
    );
    assert!(answer.ends_with("hello from alice's laptop"), "{answer}");
    let answer = curl(listen, "");
    assert!(
        answer.lines().next().is_some_and(|l| l.contains(" 200 "))
            && answer.contains("Directory listing"),
        "the target's replica answers the rest: {answer}"
    );
    eprintln!(
        "README tour: a stolen request {:?} after the operator started",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(60));
}
