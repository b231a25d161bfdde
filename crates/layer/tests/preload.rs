//! The layer under real programs we did not write (getent, curl, python3, sh), preloaded exactly as
//! `mirrordctl exec` does, against a fake `mirrordctl` (see `support`).
//!
//! "Through the target" shows as: names only the fake knows resolve; the peer-echo server sees connections
//! from 127.0.0.2 (where the fake connects from), while the app itself only ever connects to 127.0.0.1.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use mirrord_layer_proto::{Family, Request};
use support::*;

const NAME: &str = "only-in-target.test";
const LIMIT: Duration = Duration::from_secs(60);

fn ctl() -> FakeCtl {
    FakeCtl::start(&[(NAME, &["127.0.0.1"]), ("v6.only-in-target.test", &["::1"])])
}

#[test]
fn getent_resolves_names_only_the_target_knows() {
    let ctl = ctl();
    // Plain libc first: the name does not exist here.
    let out = run(Command::new("getent").args(["hosts", NAME]), LIMIT);
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    let out = run(
        Command::new("getent")
            .args(["hosts", NAME])
            .envs(ctl.env(&config())),
        LIMIT,
    );
    let stdout = ok(&out, Some(&ctl));
    assert_eq!(
        stdout.split_whitespace().collect::<Vec<_>>(),
        ["127.0.0.1", NAME],
        "{stdout}"
    );

    let out = run(
        Command::new("getent")
            .args(["ahosts", NAME])
            .envs(ctl.env(&config())),
        LIMIT,
    );
    let stdout = ok(&out, Some(&ctl));
    let lines: Vec<Vec<&str>> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines,
        vec![
            vec!["127.0.0.1", "STREAM", NAME],
            vec!["127.0.0.1", "DGRAM"],
            vec!["127.0.0.1", "RAW"]
        ]
    );

    // An IPv6-only name through gethostbyname2(AF_INET6).
    let out = run(
        Command::new("getent")
            .args(["hosts", "v6.only-in-target.test"])
            .envs(ctl.env(&config())),
        LIMIT,
    );
    assert_eq!(ok(&out, Some(&ctl)).split_whitespace().next(), Some("::1"));

    // A name the target does not know either.
    let out = run(
        Command::new("getent")
            .args(["hosts", "nowhere.test"])
            .envs(ctl.env(&config())),
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    let asked: Vec<Request> = ctl.requests();
    assert!(
        asked.contains(&Request::Resolve {
            node: NAME.into(),
            family: Family::Any
        }),
        "{asked:?}"
    );
    assert!(
        asked.contains(&Request::Resolve {
            node: "nowhere.test".into(),
            family: Family::V4
        }),
        "{asked:?}"
    );
}

#[test]
fn python_resolution_matches_glibc_for_the_same_answer() {
    let ctl = ctl();
    // `localhost` is left to glibc (DNS filter) and answers 127.0.0.1 from /etc/hosts, which is exactly what the
    // fake answers for NAME: every call must give the same result for both, name aside.
    let script = r#"
import socket, sys
NAME = sys.argv[1]
def norm(x, name): return repr(x).replace(name, "NAME")
calls = [
    ((None,), {}),
    ((80,), {}),
    (("80",), {}),
    (("http",), {}),
    (("domain", 0, socket.SOCK_DGRAM), {}),
    ((None, socket.AF_INET, 0, 0, socket.AI_CANONNAME), {}),
    ((443, socket.AF_INET, socket.SOCK_STREAM), {}),
    ((None, 0, 0, socket.IPPROTO_UDP), {}),
]
for args, kw in calls:
    def call(name):
        try:
            return norm(socket.getaddrinfo(name, *args, **kw), name)
        except socket.gaierror as e:
            return "gaierror %d" % e.errno
    ours, glibc = call(NAME), call("localhost")
    assert ours == glibc, (args, ours, glibc)
for fn in (socket.gethostbyname,):
    assert fn(NAME) == fn("localhost") == "127.0.0.1"
name, aliases, addrs = socket.gethostbyname_ex(NAME)
assert (name, aliases, addrs) == (NAME, [], ["127.0.0.1"]), (name, aliases, addrs)
assert socket.getaddrinfo(NAME, 80, socket.AF_INET6, socket.SOCK_STREAM, 0, socket.AI_V4MAPPED)[0][4] == ("::ffff:127.0.0.1", 80, 0, 0)
for bad in ("nowhere.test",):
    try:
        socket.getaddrinfo(bad, 80)
        raise SystemExit("resolved " + bad)
    except socket.gaierror as e:
        assert e.errno == socket.EAI_NONAME, e
try:
    socket.getaddrinfo(NAME, 80, socket.AF_INET6)
    raise SystemExit("v6 answer for a v4-only name")
except socket.gaierror as e:
    assert e.errno == socket.EAI_NODATA, e
try:
    socket.gethostbyname("nowhere.test")
    raise SystemExit("resolved nowhere.test")
except socket.gaierror as e:
    pass
print("ok")
"#;
    let out = run(python(script).arg(NAME).envs(ctl.env(&config())), LIMIT);
    assert_eq!(ok(&out, Some(&ctl)).trim(), "ok");
    assert!(!ctl
        .requests()
        .iter()
        .any(|r| matches!(r, Request::Resolve { node, .. } if node == "localhost")));

    // And without the layer the name does not resolve at all.
    let out = run(
        &mut python(&format!("import socket; socket.getaddrinfo({NAME:?}, 80)")),
        LIMIT,
    );
    assert!(text(&out.stderr).contains("gaierror"), "{out:?}");
}

#[test]
fn curl_reaches_the_target_through_the_relay() {
    let ctl = ctl();
    let server = PeerEcho::start();
    let url = format!("http://{NAME}:{}/", server.port());
    let out = run(curl(&url).envs(ctl.env(&config())), LIMIT);
    let body = ok(&out, Some(&ctl));
    assert!(
        body.starts_with("peer=127.0.0.2:"),
        "the server saw the fake's connection: {body}"
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "Connected to {NAME} (127.0.0.1) port {}",
            server.port()
        )),
        "{stderr}"
    );
    assert_eq!(ctl.connects(), vec![(server.addr, Some(NAME.to_string()))]);

    // Without the layer curl cannot even resolve the name.
    let out = run(&mut curl(&url), LIMIT);
    assert_eq!(out.status.code(), Some(6), "{out:?}");
}

#[test]
fn python_sees_the_remote_peer_and_the_targets_local_address() {
    let ctl = ctl();
    let server = PeerEcho::start();
    let script = r#"
import os, socket, sys
NAME, PORT = sys.argv[1], int(sys.argv[2])
def fetch(s):
    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk: break
        data += chunk
    return data.decode().split("peer=")[1].strip()
s = socket.create_connection((NAME, PORT), timeout=5)
peer, local = s.getpeername(), s.getsockname()
assert peer == ("127.0.0.1", PORT), peer
# dup keeps the substitution; closing the original does not drop it.
d = socket.socket(fileno=os.dup(s.fileno()))
s.detach()
# The dup shares `s`'s non-blocking file (its timeout): give `d` one too, or its first
# recv, if the answer is not there yet, raises EAGAIN as on any socket.
d.settimeout(5)
assert d.getpeername() == peer
seen = fetch(d)
assert seen == "%s:%d" % local, (seen, local)
assert local[0] == "127.0.0.2", local
d.close()
# An AF_INET6 socket to a v4-mapped address: names come back v4-mapped, the relay is reached v4-mapped.
s6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s6.settimeout(5)
s6.connect(("::ffff:127.0.0.1", PORT))
assert s6.getpeername() == ("::ffff:127.0.0.1", PORT, 0, 0), s6.getpeername()
l6 = s6.getsockname()
assert l6[0] == "::ffff:127.0.0.2", l6
assert fetch(s6) == "127.0.0.2:%d" % l6[1]
print("ok")
"#;
    let out = run(
        python(script)
            .args([NAME, &server.port().to_string()])
            .envs(ctl.env(&config())),
        LIMIT,
    );
    assert_eq!(ok(&out, Some(&ctl)).trim(), "ok");
    assert_eq!(ctl.connects().len(), 2);
}

#[test]
fn a_refused_port_is_refused_at_once() {
    let ctl = ctl();
    let port = closed_port();
    // curl's exit 7 is a refusal; a connect timeout would be 28.
    let out = run(
        curl(&format!("http://{NAME}:{port}/")).envs(ctl.env(&config())),
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(7), "{out:?}\n{}", ctl.layer_log());
    assert!(
        text(&out.stderr).contains("Connection refused"),
        "{}",
        text(&out.stderr)
    );
    let script = r#"
import socket, sys, time
started = time.monotonic()
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
except ConnectionRefusedError:
    print("refused", time.monotonic() - started)
"#;
    let out = run(
        python(script)
            .args([NAME, &port.to_string()])
            .envs(ctl.env(&config())),
        LIMIT,
    );
    // Timed inside the process: interpreter start-up on a loaded machine is not the
    // layer's doing, a refusal that waits for the 5 s timeout would be.
    let said = ok(&out, Some(&ctl));
    let took: f64 = said
        .trim()
        .strip_prefix("refused ")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not refused: {said}"));
    assert!(took < 2.0, "the refusal took {took:.2} s");
    assert_eq!(
        ctl.connects().len(),
        2,
        "both were asked of the target: {:?}",
        ctl.requests()
    );
}

#[test]
fn non_blocking_connects_behave_as_the_kernel_makes_them() {
    let ctl = ctl();
    let server = PeerEcho::start();
    let script = r#"
import errno, select, socket, sys
NAME, PORT = sys.argv[1], int(sys.argv[2])
addr = socket.getaddrinfo(NAME, PORT, socket.AF_INET, socket.SOCK_STREAM)[0][4]
s = socket.socket()
s.setblocking(False)
r = s.connect_ex(addr)
assert r in (0, errno.EINPROGRESS), r
_, w, _ = select.select([], [s], [], 5)
assert w, "never writable"
assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
assert s.getpeername() == ("127.0.0.1", PORT)
s.setblocking(True)
s.sendall(b"GET / HTTP/1.0\r\n\r\n")
# To the end: the answer may come in more than one piece.
data = b""
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
assert b"peer=127.0.0.2:" in data, data
# settimeout() makes CPython use a non-blocking connect and poll.
t = socket.socket()
t.settimeout(3)
t.connect((NAME, PORT))
assert t.getpeername() == ("127.0.0.1", PORT)
print("ok")
"#;
    let out = run(
        python(script)
            .args([NAME, &server.port().to_string()])
            .envs(ctl.env(&config())),
        LIMIT,
    );
    assert_eq!(ok(&out, Some(&ctl)).trim(), "ok");
}

#[test]
fn fork_exec_vfork_and_posix_spawn_chains_keep_working() {
    let ctl = ctl();
    let server = PeerEcho::start();
    let url = format!("http://{NAME}:{}/", server.port());

    let out = run(
        Command::new("sh")
            .args(["-c", &format!("curl -s --noproxy '*' {url}")])
            .envs(ctl.env(&config())),
        LIMIT,
    );
    assert!(ok(&out, Some(&ctl)).starts_with("peer=127.0.0.2:"));

    let out = run(
        Command::new("sh")
            .args([
                "-c",
                &format!("sh -c 'curl -s --noproxy \"*\" {url}' && true"),
            ])
            .envs(ctl.env(&config())),
        LIMIT,
    );
    assert!(ok(&out, Some(&ctl)).starts_with("peer=127.0.0.2:"));

    let script = r#"
import os, socket, subprocess, sys
url, NAME, PORT = sys.argv[1], sys.argv[2], int(sys.argv[3])
out = subprocess.run(["curl", "-s", "--noproxy", "*", url], capture_output=True, check=True).stdout
assert out.startswith(b"peer=127.0.0.2:"), out
# A connect before the fork, one in the child, one after: all through the target.
a = socket.create_connection((NAME, PORT), timeout=5)
pid = os.fork()
if pid == 0:
    try:
        c = socket.create_connection((NAME, PORT), timeout=5)
        ok = c.getpeername() == ("127.0.0.1", PORT) and a.getpeername() == ("127.0.0.1", PORT)
        c.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while not data.endswith(b"\n") or b"peer=" not in data:
            chunk = c.recv(4096)
            if not chunk:
                break
            data += chunk
        ok = ok and b"peer=127.0.0.2:" in data
    except Exception as e:
        os.write(2, repr(e).encode())
        ok = False
    os._exit(0 if ok else 1)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
b = socket.create_connection((NAME, PORT), timeout=5)
assert b.getpeername() == ("127.0.0.1", PORT)
print("ok")
"#;
    let out = run(
        python(script)
            .args([&url, NAME, &server.port().to_string()])
            .envs(ctl.env(&config())),
        LIMIT,
    );
    assert_eq!(ok(&out, Some(&ctl)).trim(), "ok");
    assert!(
        ctl.hello_pids().len() >= 5,
        "sh's curls, python, its curl and its fork child: {:?}",
        ctl.hello_pids()
    );
}

#[test]
fn without_a_socket_the_layer_is_plain_libc() {
    let server = PeerEcho::start();
    let preload = [("LD_PRELOAD", layer_so().display().to_string())];
    let out = run(python("pass").envs(preload.clone()), LIMIT);
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "{out:?}"
    );

    let out = run(
        curl(&format!("http://127.0.0.1:{}/", server.port())).envs(preload.clone()),
        LIMIT,
    );
    assert!(
        ok(&out, None).starts_with("peer=127.0.0.1:"),
        "direct connection"
    );

    let out = run(
        Command::new("getent")
            .args(["hosts", NAME])
            .envs(preload.clone()),
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(2));
    let out = run(
        Command::new("getent")
            .args(["hosts", "localhost"])
            .envs(preload),
        LIMIT,
    );
    assert!(ok(&out, None).starts_with("127.0.0.1"));

    // Configured, but the socket is not there: plain libc as well.
    let ctl = ctl();
    let mut env = ctl.env(&config());
    env.retain(|(k, _)| *k != mirrord_layer_proto::ENV_SOCK);
    env.push((
        mirrord_layer_proto::ENV_SOCK,
        "/nonexistent/layer.sock".into(),
    ));
    let out = run(
        curl(&format!("http://127.0.0.1:{}/", server.port())).envs(env),
        LIMIT,
    );
    assert!(ok(&out, Some(&ctl)).starts_with("peer=127.0.0.1:"));
    assert!(ctl.requests().is_empty());
}

#[test]
fn mirrordctl_dying_mid_run_leaves_plain_libc_without_hanging() {
    let ctl = ctl();
    let server = PeerEcho::start();
    let script = r#"
import socket, sys
NAME, PORT = sys.argv[1], int(sys.argv[2])
def peer_seen(addr):
    s = socket.create_connection(addr, timeout=5)
    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk: break
        data += chunk
    return data.decode().split("peer=")[1].split(":")[0]
print("first", peer_seen((NAME, PORT)), flush=True)
sys.stdin.readline()
print("second", peer_seen(("127.0.0.1", PORT)), flush=True)
try:
    socket.getaddrinfo(NAME, PORT)
    print("resolved")
except socket.gaierror:
    print("unresolved")
"#;
    let mut child = python(script)
        .args([NAME, &server.port().to_string()])
        .envs(ctl.env(&config()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert_eq!(first.trim(), "first 127.0.0.2", "{}", ctl.layer_log());
    ctl.kill();
    writeln!(child.stdin.take().unwrap(), "go").unwrap();
    let out = wait(child, LIMIT);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(out.status.success(), "{out:?} {}", ctl.layer_log());
    assert_eq!(
        rest.lines().collect::<Vec<_>>(),
        ["second 127.0.0.1", "unresolved"],
        "{}",
        ctl.layer_log()
    );
    assert!(ctl.layer_log().contains("detached"), "{}", ctl.layer_log());
}

#[test]
fn an_unanswered_request_times_out_instead_of_hanging() {
    let ctl = ctl();
    ctl.stall_connects();
    let server = PeerEcho::start();
    let script = r#"
import errno, socket, sys, time
t = time.monotonic()
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])))
    print("connected")
except OSError as e:
    print(errno.errorcode.get(e.errno), round(time.monotonic() - t, 1))
"#;
    let mut env = ctl.env(&config());
    env.push((mirrord_layer_proto::ENV_TIMEOUT_MS, "500".into()));
    let out = run(
        python(script).arg(server.port().to_string()).envs(env),
        LIMIT,
    );
    let stdout = ok(&out, Some(&ctl));
    let (code, secs) = stdout.trim().split_once(' ').unwrap_or(("", ""));
    assert_eq!(code, "ETIMEDOUT", "{stdout}");
    let secs: f64 = secs.parse().unwrap();
    assert!((0.4..5.0).contains(&secs), "{secs}");
}

#[test]
fn sixteen_threads_resolving_and_connecting_while_forking_do_not_deadlock() {
    let ctl = ctl();
    let server = PeerEcho::start();
    let script = r#"
import os, socket, sys, threading
NAME, PORT = sys.argv[1], int(sys.argv[2])
def once():
    addr = socket.getaddrinfo(NAME, PORT, socket.AF_INET, socket.SOCK_STREAM)[0][4]
    s = socket.create_connection(addr, timeout=10)
    try:
        assert s.getpeername() == ("127.0.0.1", PORT)
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        # A stream: the answer may come in more than one piece (read to its last line).
        data = b""
        while not data.endswith(b"\n") or b"peer=" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return b"peer=127.0.0.2:" in data
    finally:
        s.close()
failures = []
def worker():
    for _ in range(15):
        try:
            if not once(): failures.append("bad peer")
        except Exception as e:
            failures.append(repr(e))
threads = [threading.Thread(target=worker) for _ in range(16)]
for t in threads: t.start()
children = 0
while any(t.is_alive() for t in threads) and children < 40:
    pid = os.fork()
    if pid == 0:
        try:
            os._exit(0 if once() else 1)
        except BaseException as e:
            os.write(2, repr(e).encode())
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        failures.append("child %d" % status)
    children += 1
for t in threads: t.join()
print(len(failures), children, failures[:3])
"#;
    let out = run(
        python(script)
            .args([NAME, &server.port().to_string()])
            .envs(ctl.env(&config())),
        Duration::from_secs(180),
    );
    let stdout = ok(&out, Some(&ctl));
    assert!(stdout.starts_with("0 "), "{stdout}\n{}", text(&out.stderr));
    let children: u32 = stdout.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(children > 0, "{stdout}");
    assert!(ctl.connects().len() >= 16 * 15, "{}", ctl.connects().len());
}

/// A UDP server on 127.0.0.1 that answers each datagram with its bytes and ` from=ADDRESS:PORT`.
fn udp_echo() -> std::net::SocketAddr {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let mut answer = buf[..n].to_vec();
            answer.extend_from_slice(format!(" from={from}").as_bytes());
            let _ = sock.send_to(&answer, from);
        }
    });
    addr
}

#[test]
fn udp_datagrams_go_through_the_target_connected_or_not() {
    let ctl = ctl();
    let echo = udp_echo();
    let script = r#"
import socket, sys
NAME, PORT = sys.argv[1], int(sys.argv[2])
ECHO = ("127.0.0.1", PORT)
def origin(data):
    return data.decode().rsplit(" from=", 1)[1].split(":")[0]
# Connected: the peer and the answers' source are the destination; the local address is the target's.
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
c.settimeout(5)
c.connect((NAME, PORT))
c.send(b"connected")
data, src = c.recvfrom(65536)
assert src == ECHO, src
assert c.getpeername() == ECHO, c.getpeername()
assert c.getsockname()[0] == "127.0.0.2", c.getsockname()
assert origin(data) == "127.0.0.2", data
# The connected socket sent to with its destination named: the same flow.
c.sendto(b"named", ECHO)
data, src = c.recvfrom(65536)
assert src == ECHO and data.startswith(b"named ") and origin(data) == "127.0.0.2", (src, data)
# Unconnected: sendto and sendmsg to the destination; recvfrom and recvmsg report it as the source.
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(5)
for _ in range(2):
    u.sendto(b"unconnected", ECHO)
    data, src = u.recvfrom(65536)
    assert src == ECHO and origin(data) == "127.0.0.2", (src, data)
u.sendmsg([b"msg"], [], 0, ECHO)
data, _, _, src = u.recvmsg(65536)
assert src == ECHO and data.startswith(b"msg ") and origin(data) == "127.0.0.2", (src, data)
# Not selected by the filter (loopback other than 127.0.0.1): sent by libc, from here.
local = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
local.bind(("127.0.0.3", 0))
local.settimeout(5)
sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sink.bind(("127.0.0.3", 0))
local.sendto(b"here", sink.getsockname())
data, src = sink.recvfrom(100)
assert src == local.getsockname(), (src, local.getsockname())
# Closing a socket ends its flows (UDP has no end of its own); a dissolved association too.
d = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
d.connect(ECHO)
c.close()
u.close()
print("ok")
"#;
    let out = run(
        python(script)
            .args([NAME, &echo.port().to_string()])
            .envs(ctl.env(&config())),
        LIMIT,
    );
    assert_eq!(ok(&out, Some(&ctl)).trim(), "ok");
    // One flow for the connected socket, one for the unconnected socket's destination
    // (reused), one for `d`; the first two closed, each giving its relay back.
    assert_eq!(ctl.flows(), vec![echo, echo, echo]);
    let released = ctl
        .requests()
        .into_iter()
        .filter(|r| matches!(r, Request::Release { relays } if relays.len() == 1))
        .count();
    assert!(released >= 2, "{:?}", ctl.requests());
}
