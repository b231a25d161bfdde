//! What a developer meets at the CLI's edges (issue 14): the `status --json` contract, a
//! bounded wait for the operator, errors that say each thing once and what to do, the
//! local address checked at start, exit codes, and `--help` that documents every flag.

use mirrord_e2e::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_has_hex_ids_lowercase_modes_structured_filters_and_a_version() {
    let f = ApiFixture::start("").await;
    let s = f.session(
        "alice",
        "steal",
        &["--header", "^x-user: alice$", "--method", "GET"],
    );
    let st = status(&f.op.issue_admin("admin"));
    assert_eq!(st["schema_version"], 1, "{st}");
    let session = &st["sessions"][0];
    // The same 16 hex digits the table prints and `sessions kill` takes.
    assert_eq!(session["session_id"], s.id.as_str(), "{st}");
    assert_eq!(
        session["ports"][0],
        serde_json::json!({
            "port": 80,
            "mode": "steal",
            "filter": {
                "header": ["^x-user: alice$"],
                "path": [],
                "method": ["GET"],
                "body": [],
                "combine": "all",
                "required_header": [],
                "text": "header=^x-user: alice$ and method=GET",
            },
            // Added with JSON body filters and overlap notices (schema 1: fields are added).
            "overlaps": [],
        }),
        "{st}"
    );
    let table = String::from_utf8(ctl(&f.op.issue_admin("admin"), &["status"]).stdout).unwrap();
    assert!(table.contains(&s.id), "{table}");
}

/// An "operator" that accepts connections and never says a word.
async fn silent_operator() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    addr
}

/// Runs `mirrordctl` for at most `limit`; `None` if it was still running then.
fn run_for(cmd: &mut Command, limit: Duration) -> Option<std::process::Output> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if wait_for(limit, || child.try_wait().unwrap()).is_none() {
        let _ = child.kill();
        let _ = child.wait();
        return None;
    }
    Some(child.wait_with_output().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_operator_times_out_instead_of_hanging() {
    let f = ApiFixture::start("").await;
    let creds = f.op.issue("alice");
    let silent = silent_operator().await;
    std::fs::write(creds.join("operator-address"), format!("{silent}\n")).unwrap();

    // The environment variable (as `--help` shows it), then the flag.
    let mut by_env = Command::new(bin("mirrordctl"));
    by_env
        .env("MIRRORD_CONNECT_TIMEOUT", "1s")
        .arg("--credentials")
        .arg(&creds)
        .arg("status");
    let mut by_flag = Command::new(bin("mirrordctl"));
    by_flag
        .arg("--credentials")
        .arg(&creds)
        .args(["status", "--connect-timeout", "1500ms"]);
    for (cmd, shown) in [(&mut by_env, "1s"), (&mut by_flag, "1s 500ms")] {
        let start = Instant::now();
        let out = run_for(cmd, Duration::from_secs(20)).expect("mirrordctl hung");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!(
                "the operator at {silent} did not answer within {shown}"
            )),
            "{err}"
        );
        assert!(err.contains("--connect-timeout"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(10));
    }
}

#[test]
fn missing_credentials_say_where_and_what_to_do_once() {
    let home = tempfile::tempdir().unwrap();
    // Neither a credential directory nor a kubeconfig (with one, mirrordctl would go
    // through the Kubernetes API server instead).
    let out = Command::new(bin("mirrordctl"))
        .env("HOME", home.path())
        .env_remove("MIRRORD_CREDENTIALS")
        .env_remove("KUBECONFIG")
        .arg("status")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let dir = home.path().join(".mirrord/credentials");
    assert!(
        err.contains(&format!("no credentials in {}", dir.display())),
        "{err}"
    );
    assert!(err.contains("mirrord-operator certs issue"), "{err}");
    assert!(err.contains("--credentials DIR"), "{err}");
    assert!(err.contains("kubeconfig"), "{err}");

    // A directory with a broken part: the cause once, not repeated by its wrapper.
    let creds = tempfile::tempdir().unwrap();
    std::fs::create_dir(creds.path().join("ca.crt")).unwrap();
    let out = ctl(creds.path(), &["status"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    let cause = std::io::Error::from_raw_os_error(21).to_string(); // EISDIR
    assert_eq!(err.matches(&cause).count(), 1, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listening_locally_is_refused_at_start() {
    let f = ApiFixture::start("").await;
    let alice = f.op.issue("alice");
    let nobody = free_addr();
    for mode in ["steal", "mirror"] {
        let port = format!("80={}", nobody.port());
        let mut cmd = Command::new(bin("mirrordctl"));
        cmd.arg("--credentials").arg(&alice);
        cmd.args([mode, "--target", "api", "--port", &port]);
        let out = run_for(&mut cmd, Duration::from_secs(20))
            .expect("mirrordctl started a session with nothing listening");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!("nothing accepts connections on {nobody}")),
            "{err}"
        );
        assert!(err.contains("start your local process first"), "{err}");
    }
    assert!(status(&alice)["sessions"].as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_tell_usage_refusal_failure_and_signals_apart() {
    let f = ApiFixture::start("").await;
    let alice = f.op.issue("alice");
    let dev = format!("80={}", f.dev.addr);
    let code = |args: &[&str]| ctl(&alice, args).status.code();

    // 2: the command line.
    assert_eq!(code(&["steal", "--target", "api", "--port", "80"]), Some(2));
    assert_eq!(code(&["sessions", "kill", "not-hex"]), Some(2));
    assert_eq!(code(&["sessions", "kill"]), Some(2));
    assert_eq!(code(&["status", "--no-such-flag"]), Some(2));

    // 3: the operator refuses (the port is stolen by someone else).
    let mut holder = f.session("bob", "steal", &[]);
    let out = ctl(&alice, &["steal", "--target", "api", "--port", &dev]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("refused by the operator"), "{err}");

    // 130 / 143: Ctrl-C and SIGTERM.
    assert_eq!(holder.stop().unwrap().code(), Some(130));
    let mut s = f.session("bob", "steal", &[]);
    signal(s.pid(), "TERM");
    let st = s.wait_exit(Duration::from_secs(15)).expect("CLI exits");
    assert_eq!(st.code(), Some(143));

    // 1: the session ends at run time (killed by an admin).
    let mut s = f.session("bob", "steal", &[]);
    let admin = f.op.issue_admin("root");
    assert!(ctl(&admin, &["sessions", "kill", &s.id]).status.success());
    let st = s.wait_exit(Duration::from_secs(15)).expect("CLI exits");
    assert_eq!(st.code(), Some(1));
}

#[test]
fn every_flag_has_help_and_env_vars_show_in_it() {
    for sub in [
        &[][..],
        &["steal"],
        &["mirror"],
        &["status"],
        &["sessions", "kill"],
    ] {
        let out = Command::new(bin("mirrordctl"))
            .args(sub)
            .arg("-h")
            .output()
            .unwrap();
        let help = String::from_utf8(out.stdout).unwrap();
        assert!(out.status.success(), "{sub:?}");
        let lines: Vec<&str> = help.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if !line.trim_start().starts_with('-') {
                continue;
            }
            // `  -h, --help  Print help`, or the text on the next line when it is long.
            let (flag, inline) = line.trim().split_once("  ").unwrap_or((line, ""));
            let next = lines.get(i + 1).map_or("", |l| l.trim());
            let text = if inline.trim().is_empty() && !next.starts_with('-') {
                next
            } else {
                inline
            };
            assert!(!text.trim().is_empty(), "{sub:?}: `{flag}` has no help");
        }
        for var in [
            "MIRRORD_CREDENTIALS",
            "MIRRORD_CONNECT_TIMEOUT",
            "MIRRORDCTL_LOG",
        ] {
            assert!(help.contains(&format!("[env: {var}")), "{sub:?}: {help}");
        }
    }
}

/// A local process for `exec`: serves `exec GET PATH` on the port it is given until it is
/// asked for a path ending in `/quit`, then exits with code 7.
const EXEC_SERVER: &str = r#"
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"exec GET {self.path}".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        if self.path.endswith("/quit"):
            self.server.quit = True
    def log_message(self, *args):
        pass
s = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H)
s.quit = False
while not s.quit:
    s.handle_request()
sys.exit(7)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runs_the_local_process_under_a_session_and_passes_its_exit_code() {
    use mirrord_e2e::servers::{get, HttpServer};
    let target = HttpServer::start("target").await;
    let listen = free_addr();
    let op = Operator::start(&upstream_target("api", 80, listen, target.addr), "");
    let alice = op.issue("alice");
    let local = free_addr();
    let port = format!("80={local}");
    let local_port = local.port().to_string();
    let mut s = Session::start(
        &alice,
        &[
            "exec",
            "-t",
            "deployment/api",
            "-n",
            "default",
            "--port",
            &port,
            "--",
            "python3",
            "-c",
            EXEC_SERVER,
            &local_port,
        ],
    )
    .expect("exec opens the session once the process listens");
    assert_eq!(get(listen, "/a", &[]).await.1, "exec GET /a");
    assert_eq!(get(listen, "/quit", &[]).await.1, "exec GET /quit");
    let st = s
        .wait_exit(Duration::from_secs(20))
        .expect("mirrordctl exits when its process does");
    assert_eq!(st.code(), Some(7), "the process's exit code passes through");
    op.wait_event("Session Ended", 1);
    assert_eq!(get(listen, "/after", &[]).await.1, "target GET /after");
    assert_eq!(
        target.paths(),
        vec!["/after"],
        "the target saw no stolen request"
    );
}

/// mirrord's way (issue 28): with no port list, the port the process listens on is stolen
/// once it listens (the target's port of that number, with the file's filter), a port the
/// target does not have is left alone, and closing the socket gives the port back while
/// the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_without_a_port_list_steals_what_the_process_listens_on_until_it_closes() {
    use mirrord_e2e::servers::{get, HttpServer};
    let target = HttpServer::start("target").await;
    let listen = free_addr();
    // The target's port number is one the process can listen on here.
    let local = free_addr().port();
    let op = Operator::start(&upstream_target("api", local, listen, target.addr), "");
    let alice = op.issue("alice");
    let dir = tempfile::tempdir().unwrap();
    let added = format!("port {local}: steal");
    let given_back = format!("port {local}: given back");
    let run = |filter: &str| {
        let cfg = dir.path().join(format!("mirrord{}.json", filter.len()));
        std::fs::write(
            &cfg,
            format!(r#"{{"feature": {{"network": {{"incoming": {{"mode": "steal"{filter}}}}}}}}}"#),
        )
        .unwrap();
        let cfg = cfg.display().to_string();
        let local = local.to_string();
        let server = fixture("listening_server.py").display().to_string();
        let args = [
            "exec",
            "-t",
            "deployment/api",
            "-f",
            &cfg,
            "--no-env",
            "--no-outgoing",
            "--no-remote-dns",
            "--",
            "python3",
            &server,
            &local,
        ];
        let s = Session::start(&alice, &args).expect("exec opens its session");
        s.wait_stdout(&added, Duration::from_secs(20));
        s
    };
    let me = [("x-user", "me")];

    let mut s = run(r#", "http_filter": {"header_filter": "^x-user: me$"}"#);
    assert_eq!(get(listen, "/a", &me).await.1, "exec GET /a");
    assert_eq!(
        get(listen, "/b", &[]).await.1,
        "target GET /b",
        "unmatched: the target's"
    );
    let left = wait_for(Duration::from_secs(10), || {
        s.stderr
            .all()
            .into_iter()
            .find(|l| l.contains("not a port of the target; left alone"))
    });
    assert!(left.is_some(), "{}", s.stderr.text());
    assert_eq!(get(listen, "/close", &me).await.1, "exec GET /close");
    s.wait_stdout(&given_back, Duration::from_secs(20));
    op.wait_event("Port Released", 1);
    assert_eq!(
        get(listen, "/after", &me).await.1,
        "target GET /after",
        "the port went back"
    );
    assert!(op.events("Session Ended").is_empty(), "the session goes on");
    assert_eq!(s.stop().unwrap().code(), Some(130));
    op.wait_event("Session Ended", 1);

    // Unfiltered: every request is the process's until it exits with the session.
    let mut s = run("");
    assert_eq!(get(listen, "/c", &[]).await.1, "exec GET /c");
    assert_eq!(s.stop().unwrap().code(), Some(130));
    op.wait_event("Session Ended", 2);
    assert_eq!(get(listen, "/d", &[]).await.1, "target GET /d");
    assert_eq!(target.paths(), vec!["/b", "/after", "/d"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_of_a_process_that_never_listens_fails() {
    let listen = free_addr();
    let op = Operator::start(&upstream_target("api", 80, listen, idle_local()), "");
    let alice = op.issue("alice");
    let port = format!("80={}", free_addr());
    let run = |context: &[&str]| {
        let mut args = vec!["exec", "--target", "deployment/api", "--port", &port];
        args.extend_from_slice(context);
        args.extend(["--", "python3", "-c", "import sys; sys.exit(3)"]);
        ctl(&alice, &args)
    };
    // Without the target's context the process starts first: no session is opened.
    let out = run(&[
        "--no-env",
        "--no-outgoing",
        "--no-remote-dns",
        "--fs-mode",
        "local",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the local process exited") && err.contains("before it listened"),
        "{err}"
    );
    assert!(
        op.events("Session Started").is_empty(),
        "no session was opened"
    );
    // With it (the default) the session opens first, to give the process the target's
    // environment, and ends with the same failure.
    let out = run(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the local process exited before it listened"),
        "{err}"
    );
    op.wait_event("Session Ended", 1);
}

#[test]
fn version_names_the_commit_and_completions_and_man_page_come_from_the_flags() {
    let run = |args: &[&str]| {
        let out = Command::new(bin("mirrordctl")).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let version = run(&["--version"]);
    assert!(
        version.contains("(commit ") && version.contains(", built 20"),
        "{version}"
    );
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    if head.status.success() {
        let head = String::from_utf8(head.stdout).unwrap();
        assert!(version.contains(head.trim()), "{version} vs {head}");
    }
    for shell in ["bash", "zsh", "fish"] {
        let script = run(&["completions", shell]);
        for word in ["exec", "connect-timeout", "on-concurrent-steal"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
    }
    let man = run(&["man"]);
    assert!(
        man.contains(".TH mirrordctl 1") && man.contains("MIRRORD_CREDENTIALS"),
        "{man}"
    );
}

/// A mirrord config file as mirrord's documentation writes one: the incoming part is
/// honoured, the rest named in one warning.
fn mirrord_json(local_port: u16) -> String {
    format!(
        r#"{{
  "target": {{ "path": "deployment/api", "namespace": "default" }},
  "feature": {{
    "network": {{
      "incoming": {{
        "mode": "steal",
        "http_filter": {{ "header_filter": "^x-user: alice$" }},
        "port_mapping": [[{local_port}, 80]]
      }},
      "outgoing": true
    }},
    "fs": "read",
    "env": true
  }},
  "agent": {{ "ttl": 30 }}
}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_teams_mirrord_json_opens_the_session_it_describes() {
    use mirrord_e2e::servers::{get, HttpServer};
    let target = HttpServer::start("target").await;
    let dev = HttpServer::start("dev").await;
    let listen = free_addr();
    let op = Operator::start(&upstream_target("api", 80, listen, target.addr), "");
    let alice = op.issue("alice");
    // Found where mirrord keeps it: .mirrord/mirrord.json in the working directory.
    let project = tempfile::tempdir().unwrap();
    std::fs::create_dir(project.path().join(".mirrord")).unwrap();
    std::fs::write(
        project.path().join(".mirrord/mirrord.json"),
        mirrord_json(dev.addr.port()),
    )
    .unwrap();
    let s = Session::start_in(&alice, &["steal"], Some(project.path()))
        .expect("the file alone describes the session");
    let err = s.stderr.text();
    assert!(err.contains("using the mirrord config"), "{err}");
    let warning = err
        .lines()
        .find(|l| l.contains("does not implement"))
        .unwrap_or_else(|| panic!("one warning names what is ignored: {err}"));
    assert!(warning.contains("agent"), "agent not named: {warning}");
    assert!(
        !warning.contains("feature.fs"),
        "feature.fs is implemented: {warning}"
    );
    // What only `exec`'s process would get is named as such: `steal` starts none.
    let note = err
        .lines()
        .find(|l| l.contains("only `exec` uses"))
        .unwrap_or_else(|| panic!("a note names what steal ignores: {err}"));
    for key in ["feature.env", "feature.network.outgoing", "feature.fs"] {
        assert!(note.contains(key), "{key} not named: {note}");
    }
    assert_eq!(
        get(listen, "/mine", &[("x-user", "alice")]).await.1,
        "dev GET /mine"
    );
    assert_eq!(get(listen, "/theirs", &[]).await.1, "target GET /theirs");
    let st = status(&alice);
    let port = &st["sessions"][0]["ports"][0];
    assert_eq!(port["port"], 80);
    assert_eq!(port["mode"], "steal");
    assert_eq!(port["filter"]["header"][0], "^x-user: alice$", "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_takes_the_file_with_f_and_flags_win_over_it() {
    use mirrord_e2e::servers::{get, HttpServer};
    let target = HttpServer::start("target").await;
    let listen = free_addr();
    let op = Operator::start(&upstream_target("api", 80, listen, target.addr), "");
    let alice = op.issue("alice");
    let local = free_addr();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("team.json");
    std::fs::write(&file, mirrord_json(local.port())).unwrap();
    let file = file.to_str().unwrap();
    let local_port = local.port().to_string();
    // The file says header x-user: alice; the flag says path ^/exec instead.
    let mut s = Session::start(
        &alice,
        &[
            "exec",
            "-f",
            file,
            "--path",
            "^/exec",
            "--",
            "python3",
            "-c",
            EXEC_SERVER,
            &local_port,
        ],
    )
    .expect("exec opens the session from the file");
    assert_eq!(get(listen, "/exec-a", &[]).await.1, "exec GET /exec-a");
    assert_eq!(
        get(listen, "/other", &[("x-user", "alice")]).await.1,
        "target GET /other",
        "the flag's filter replaced the file's"
    );
    assert_eq!(
        get(listen, "/exec/quit", &[]).await.1,
        "exec GET /exec/quit"
    );
    let st = s
        .wait_exit(Duration::from_secs(20))
        .expect("the process quit");
    assert_eq!(st.code(), Some(7));

    // -t wins over the file's target: an unknown one is refused (exit 3), by name.
    let _local_process = std::net::TcpListener::bind(local).unwrap();
    let out = ctl(&alice, &["steal", "-f", file, "-t", "deployment/nope"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("nope"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_mistake_names_the_key_and_opens_nothing() {
    let listen = free_addr();
    let op = Operator::start(&upstream_target("api", 80, listen, idle_local()), "");
    let alice = op.issue("alice");
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            r#"{"target": "deployment/api", "feature": {"network": {"incoming": {"mode": "stael", "ports": [80]}}}}"#,
            "`feature.network.incoming.mode`",
        ),
        (
            r#"{"target": "deployment/api", "feature": {"network": {"incoming": {"mode": "steal", "ports": [80], "http_filter": {"header_filter": "^x$", "body_filter": "secret"}}}}}"#,
            "`feature.network.incoming.http_filter.body_filter`",
        ),
        (r#"{"target": "deployment/api", "#, "not valid JSON"),
    ];
    for (i, (text, named)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("m{i}.json"));
        std::fs::write(&file, text).unwrap();
        let out = ctl(&alice, &["steal", "-f", file.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {err}");
        assert!(err.contains(named), "{named} not in: {err}");
    }
    assert!(op.events("Session Started").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_formats_and_sessions_list_show_the_same_sessions() {
    let f = ApiFixture::start("").await;
    let s = f.session("alice", "steal", &["--header", "^x-user: alice$"]);
    let creds = f.op.issue("alice");
    let out = |args: &[&str]| {
        let o = ctl(&creds, args);
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    };
    // Two calls, two clocks: what counts time may tick between them (it did: `ends_in_secs`
    // 7775998 then 7775999); everything else must be the same document.
    let steady = |mut sessions: serde_json::Value| {
        for s in sessions.as_array_mut().unwrap() {
            for clock in ["ends_in_secs", "duration_secs", "ping_ms"] {
                s[clock] = serde_json::Value::Null;
            }
        }
        sessions
    };
    let json: serde_json::Value = serde_json::from_str(&out(&["status", "-o", "json"])).unwrap();
    let yaml: serde_json::Value = serde_yaml_ng::from_str(&out(&["status", "-o", "yaml"])).unwrap();
    assert_eq!(
        steady(yaml["sessions"].clone()),
        steady(json["sessions"].clone()),
        "YAML is the same document"
    );
    for key in [
        "schema_version",
        "operator_version",
        "caller",
        "license",
        "copies",
        "omitted_sessions",
    ] {
        assert_eq!(yaml[key], json[key], "{key}");
    }
    assert_eq!(json["sessions"][0]["session_id"], s.id.as_str());
    let listed: serde_json::Value =
        serde_json::from_str(&out(&["sessions", "list", "-o", "json"])).unwrap();
    assert_eq!(steady(listed), steady(json["sessions"].clone()));

    let table = out(&["sessions", "list"]);
    assert!(table.starts_with("Session ID"), "{table}");
    assert!(
        table.contains(&s.id) && !table.contains("Client ID"),
        "{table}"
    );
    let wide = out(&["sessions", "list", "-o", "wide"]);
    let client_id = json["sessions"][0]["client_id"].as_str().unwrap();
    assert!(
        wide.contains("Client ID") && wide.contains(client_id),
        "{wide}"
    );
    assert!(out(&["status", "-o", "wide"]).contains("Ends In"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_that_takes_a_while_to_start_is_reported_while_waiting() {
    let dev = mirrord_e2e::servers::HttpServer::start("dev").await;
    let listen = free_addr();
    // Every replica of this target (the copy too) needs 2 s before it listens.
    let targets = format!(
        "[[targets]]\nname = \"slow\"\nreplicas = 1\ncommand = [\"sh\", \"-c\", \"sleep 2; exec python3 {} {{port}} slow\"]\n[[targets.ports]]\nport = 80\nlisten = \"{listen}\"\n",
        fixture("replica.py").display()
    );
    let op = Operator::start(&targets, "");
    let alice = op.issue("alice");
    let port = format!("80={}", dev.addr);
    let s = Session::start(
        &alice,
        &[
            "steal",
            "-t",
            "deployment/slow",
            "--port",
            &port,
            "--copy-target",
        ],
    )
    .expect("the copy starts");
    let err = s.stderr.text();
    assert!(
        err.contains("the operator is starting a copy of deployment/slow (1s)..."),
        "{err}"
    );
}
