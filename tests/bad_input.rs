//! Bad input gets a specific error, and the operator and every other session keep working.

use mirrord_e2e::raw::{exchange, frame, hello, tls};
use mirrord_e2e::servers::{get, HttpServer};
use mirrord_e2e::*;
use mirrord_protocol::{ClientMessage, ErrorCode, ServerMessage};
use tokio::io::AsyncReadExt;

fn error_of(msgs: &[ServerMessage]) -> (ErrorCode, String) {
    msgs.iter()
        .find_map(|m| match m {
            ServerMessage::Error(e) => Some((e.code, e.message.clone())),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no error in {msgs:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_and_bad_requests_leave_everyone_else_working() {
    let target = HttpServer::start("target").await;
    let dev = HttpServer::start("dev").await;
    let listen = free_addr();
    let mut op = Operator::start(&upstream_target("api", 80, listen, target.addr), "");
    let alice = op.issue("alice");
    let mallory = op.issue("mallory");
    let port = format!("80={}", dev.addr);
    let bystander = Session::start(&alice, &["steal", "--target", "api", "--port", &port]).unwrap();

    // Garbage in a well-framed envelope.
    let msgs = exchange(op.api, &mallory, true, &[0, 0, 0, 3, 0xff, 0xff, 0xff]).await;
    let (code, msg) = error_of(&msgs);
    assert_eq!(code, ErrorCode::MalformedFrame);
    assert!(msg.starts_with("malformed frame"), "{msg}");

    // A length no frame may have.
    let msgs = exchange(op.api, &mallory, true, &[0xff, 0xff, 0xff, 0xff]).await;
    let (code, msg) = error_of(&msgs);
    assert_eq!(code, ErrorCode::MalformedFrame);
    assert!(msg.contains("exceeds the limit"), "{msg}");

    // A request before Hello.
    let msgs = exchange(op.api, &mallory, false, &frame(ClientMessage::Status)).await;
    assert!(error_of(&msgs).1.contains("expected Hello first"));

    // A protocol version from the future.
    let msgs = exchange(op.api, &mallory, false, &frame(hello(999))).await;
    let (code, msg) = error_of(&msgs);
    assert_eq!(code, ErrorCode::ProtocolVersion);
    assert!(msg.contains("999"), "{msg}");

    // Through the CLI: unknown target, unknown port, invalid regex, bad method.
    let mp = format!("80={}", idle_local());
    for (args, expect) in [
        (vec!["steal", "--target", "deployment/nope", "--port", &mp], "target deployment/nope not found in namespace default; known targets: deployment/api (default)"),
        (vec!["steal", "--target", "api", "--namespace", "prod", "--port", &mp], "not found in namespace prod"),
        (vec!["steal", "--target", "api", "--port", &mp.replace("80=", "81=")], "deployment/api has no port 81; its ports are 80"),
        (vec!["steal", "--target", "api", "--port", &mp, "--header", "(unclosed"], "port 80: invalid header filter `(unclosed`"),
        (vec!["mirror", "--target", "api", "--port", &mp, "--method", "G T"], "invalid method filter `G T`"),
        (vec!["steal", "--target", "api", "--port", "eighty=1"], "`eighty` is not a port number"),
    ] {
        let out = ctl(&mallory, &args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{args:?}: {err}");
    }

    // Still standing: the operator runs, the bystander still steals, status answers.
    assert!(op.is_running());
    assert_eq!(get(listen, "/ok", &[]).await.1, "dev GET /ok");
    assert_eq!(status(&alice)["sessions"].as_array().unwrap().len(), 1);
    drop(bystander);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_certificate_no_session() {
    let target = HttpServer::start("target").await;
    let op = Operator::start(&upstream_target("api", 80, free_addr(), target.addr), "");
    let alice = op.issue("alice");
    // TLS 1.3 finishes the client's side before the server checks the certificate, so the
    // refusal shows as the first read failing.
    let refused = match tls(op.api, &alice, false).await {
        Err(_) => true,
        Ok(mut s) => {
            let mut buf = [0u8; 16];
            !matches!(s.read(&mut buf).await, Ok(n) if n > 0)
        }
    };
    assert!(
        refused,
        "a client without a certificate got a working connection"
    );
    op.stdout
        .wait(std::time::Duration::from_secs(5), |l| {
            l.contains("TLS handshake failed")
        })
        .expect("refusal logged");
}

#[test]
fn config_errors_stop_startup_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    for (body, expect) in [
        ("[api]\nlisten = \"127.0.0.1:1\"\nbogus = 1\n", "line 3"),
        ("[api]\nlisten = \"not-an-address\"\n", "line 2"),
        (
            "[api]\nlisten = \"127.0.0.1:1\"\n[[targets]]\nname = \"a\"\n[[targets.ports]]\nport = 80\nlisten = \"127.0.0.1:2\"\nupstream = \"127.0.0.1:3\"\n[[targets.ports]]\nport = 81\nlisten = \"127.0.0.1:2\"\nupstream = \"127.0.0.1:3\"\n",
            "line 11: listen address 127.0.0.1:2 is already used by line 7",
        ),
        (
            "[api]\nlisten = \"127.0.0.1:1\"\n[[targets]]\nname = \"a\"\n[[targets.ports]]\nport = 80\nlisten = \"127.0.0.1:2\"\n",
            "line 7: port 80 of deployment/a needs `upstream`",
        ),
    ] {
        let path = dir.path().join("c.toml");
        std::fs::write(&path, body).unwrap();
        let out = std::process::Command::new(bin("mirrord-operator"))
            .args(["serve", "--config"])
            .arg(&path)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .output()
            .unwrap();
        // 3: the configuration is wrong (2 is kept for usage errors, 1 for runtime ones).
        assert_eq!(out.status.code(), Some(3), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "expected `{expect}` in: {err}");
    }
    let usage = std::process::Command::new(bin("mirrord-operator"))
        .args(["serve", "--no-such-flag"])
        .output()
        .unwrap();
    assert_eq!(usage.status.code(), Some(2), "{usage:?}");
}
