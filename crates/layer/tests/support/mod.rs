//! What the preload tests drive real programs against: the layer built by cargo, a fake `mirrordctl` serving
//! the layer's socket with the real codec, a peer-echo HTTP server, and a runner with a watchdog.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use mirrord_layer_proto::{
    read_frame, write_frame, AddressFilter, AddressRule, DnsFailure, Family, LayerConfig, Reply,
    Request, ENV_CONFIG, ENV_LOG, ENV_SOCK,
};

/// `libmirrord_layer.so`, built once per test run by the same cargo and profile as the tests (cargo builds no
/// cdylib for integration tests by itself).
pub fn layer_so() -> &'static Path {
    static SO: OnceLock<PathBuf> = OnceLock::new();
    SO.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args([
            "build",
            "-p",
            "mirrord-layer",
            "--manifest-path",
            concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
        ]);
        if profile_dir.ends_with("release") {
            cmd.arg("--release");
        }
        let out = cmd.output().expect("run cargo build");
        assert!(
            out.status.success(),
            "cargo build -p mirrord-layer: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let so = profile_dir.join("libmirrord_layer.so");
        assert!(so.exists(), "{} missing after the build", so.display());
        so
    })
}

/// Outgoing connects to 127.0.0.1 go through the target (loopback is local unless named explicitly); names
/// are resolved by the target except `localhost`, left to glibc so results can be compared with it.
pub fn config() -> LayerConfig {
    let mut c = LayerConfig::default();
    c.outgoing.filter = Some(AddressFilter::Remote(vec![
        AddressRule::parse("127.0.0.1").unwrap()
    ]));
    c.dns.filter = Some(AddressFilter::Local(vec![
        AddressRule::parse("localhost").unwrap()
    ]));
    c
}

/// A stand-in for `mirrordctl exec`'s layer server: answers `Resolve` from a table, and `Connect` by connecting
/// itself (from 127.0.0.2, so the far end can tell) and relaying through a one-shot loopback listener.
pub struct FakeCtl {
    _dir: tempfile::TempDir,
    pub sock: PathBuf,
    pub log_path: PathBuf,
    requests: Arc<Mutex<Vec<Request>>>,
    streams: Arc<Mutex<Vec<UnixStream>>>,
    stall: Arc<AtomicBool>,
}

impl FakeCtl {
    pub fn start(names: &[(&str, &[&str])]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("layer.sock");
        let log_path = dir.path().join("layer.log");
        let listener = UnixListener::bind(&sock).unwrap();
        let names: Arc<HashMap<String, Vec<IpAddr>>> = Arc::new(
            names
                .iter()
                .map(|(n, a)| {
                    (
                        n.to_string(),
                        a.iter().map(|s| s.parse().unwrap()).collect(),
                    )
                })
                .collect(),
        );
        let requests = Arc::new(Mutex::new(Vec::new()));
        let streams = Arc::new(Mutex::new(Vec::new()));
        let stall = Arc::new(AtomicBool::new(false));
        let (r, s, st) = (requests.clone(), streams.clone(), stall.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                s.lock().unwrap().push(conn.try_clone().unwrap());
                let (names, r, st) = (names.clone(), r.clone(), st.clone());
                thread::spawn(move || serve(conn, &names, &r, &st));
            }
        });
        Self {
            _dir: dir,
            sock,
            log_path,
            requests,
            streams,
            stall,
        }
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    /// The UDP flows asked for.
    pub fn flows(&self) -> Vec<SocketAddr> {
        self.requests()
            .into_iter()
            .filter_map(|r| match r {
                Request::ConnectUdp { remote, .. } => Some(remote),
                _ => None,
            })
            .collect()
    }

    pub fn connects(&self) -> Vec<(SocketAddr, Option<String>)> {
        self.requests()
            .into_iter()
            .filter_map(|r| match r {
                Request::Connect { remote, host } => Some((remote, host)),
                _ => None,
            })
            .collect()
    }

    pub fn hello_pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .requests()
            .into_iter()
            .filter_map(|r| match r {
                Request::Hello { pid, .. } => Some(pid),
                _ => None,
            })
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// `Connect` requests get no reply from now on.
    pub fn stall_connects(&self) {
        self.stall.store(true, Ordering::SeqCst);
    }

    /// Dies: the socket disappears and every open connection ends.
    pub fn kill(&self) {
        std::fs::remove_file(&self.sock).unwrap();
        for s in self.streams.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// The environment `mirrordctl exec` gives its child.
    pub fn env(&self, config: &LayerConfig) -> Vec<(&'static str, String)> {
        vec![
            ("LD_PRELOAD", layer_so().display().to_string()),
            (ENV_SOCK, self.sock.display().to_string()),
            (ENV_CONFIG, config.to_env()),
            (ENV_LOG, self.log_path.display().to_string()),
        ]
    }

    pub fn layer_log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

fn serve(
    mut conn: UnixStream,
    names: &HashMap<String, Vec<IpAddr>>,
    log: &Mutex<Vec<Request>>,
    stall: &AtomicBool,
) {
    while let Ok(req) = read_frame::<_, Request>(&mut conn) {
        log.lock().unwrap().push(req.clone());
        let reply = match req {
            Request::Hello { .. } => Reply::Welcome,
            Request::Resolve { node, family } => match names.get(&node) {
                None => Reply::DnsFailed(DnsFailure::NoName),
                Some(addrs) => {
                    let addrs: Vec<IpAddr> = addrs
                        .iter()
                        .copied()
                        .filter(|a| match family {
                            Family::Any => true,
                            Family::V4 => a.is_ipv4(),
                            Family::V6 => a.is_ipv6(),
                        })
                        .collect();
                    if addrs.is_empty() {
                        Reply::DnsFailed(DnsFailure::NoData)
                    } else {
                        Reply::Resolved {
                            addrs,
                            canonical: None,
                        }
                    }
                }
            },
            Request::Connect { remote, .. } => {
                if stall.load(Ordering::SeqCst) {
                    // Hold the request until the layer gives up and closes the connection.
                    let _ = conn.read(&mut [0u8; 1]);
                    return;
                }
                outgoing(remote)
            }
            Request::ConnectUdp { remote, .. } => outgoing_udp(remote),
            Request::Listen { .. } | Request::Unlisten { .. } | Request::Release { .. } => {
                Reply::Done
            }
            // These tests configure no remote files (tests/exec_files.rs drives them end to end).
            Request::Open { .. }
            | Request::Stat { .. }
            | Request::Access { .. }
            | Request::Readlink { .. }
            | Request::WriteBack { .. } => Reply::FileFailed {
                errno: libc::ENOSYS,
            },
        };
        if write_frame(&mut conn, &reply).is_err() {
            return;
        }
    }
}

/// A UDP flow to `remote` "from the target" (a socket on 127.0.0.2), relayed through a fresh loopback UDP socket
/// that learns the app's address from its first datagram, as `mirrordctl`'s does.
fn outgoing_udp(remote: SocketAddr) -> Reply {
    let upstream = std::net::UdpSocket::bind("127.0.0.2:0").unwrap();
    upstream.connect(remote).unwrap();
    let local = upstream.local_addr().unwrap();
    let relay = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let app = Arc::new(Mutex::new(None::<SocketAddr>));
    let (up, rl, learned) = (
        upstream.try_clone().unwrap(),
        relay.try_clone().unwrap(),
        app.clone(),
    );
    thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = rl.recv_from(&mut buf) {
            *learned.lock().unwrap() = Some(from);
            let _ = up.send(&buf[..n]);
        }
    });
    thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        while let Ok(n) = upstream.recv(&mut buf) {
            if let Some(to) = *app.lock().unwrap() {
                let _ = relay.send_to(&buf[..n], to);
            }
        }
    });
    Reply::Connected {
        relay: relay_addr,
        local,
    }
}

/// Connects to `remote` "from the target" (127.0.0.2) and relays it through a fresh loopback listener.
fn outgoing(remote: SocketAddr) -> Reply {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::from(([127, 0, 0, 2], 0)).into())
        .unwrap();
    if let Err(e) = sock.connect_timeout(&remote.into(), Duration::from_secs(3)) {
        return Reply::ConnectFailed {
            errno: e.raw_os_error().unwrap_or(libc_econnrefused()),
        };
    }
    let upstream: TcpStream = sock.into();
    let local = upstream.local_addr().unwrap();
    let relay = TcpListener::bind("127.0.0.1:0").unwrap();
    let relay_addr = relay.local_addr().unwrap();
    thread::spawn(move || {
        let Ok((app, _)) = relay.accept() else { return };
        splice(app, upstream);
    });
    Reply::Connected {
        relay: relay_addr,
        local,
    }
}

fn libc_econnrefused() -> i32 {
    111
}

fn splice(a: TcpStream, b: TcpStream) {
    let (a2, b2) = (a.try_clone().unwrap(), b.try_clone().unwrap());
    let t = thread::spawn(move || pump(a2, b2));
    pump(b, a);
    let _ = t.join();
}

fn pump(mut from: TcpStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

/// An HTTP server that answers every request with `peer=<address it saw>`.
pub struct PeerEcho {
    pub addr: SocketAddr,
}

impl PeerEcho {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                thread::spawn(move || {
                    let peer = conn.peer_addr().unwrap();
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    let mut line = String::new();
                    while reader.read_line(&mut line).is_ok_and(|n| n > 0)
                        && line != "\r\n"
                        && line != "\n"
                    {
                        line.clear();
                    }
                    let body = format!("peer={peer}\n");
                    let mut conn = conn;
                    // One write: `write!` would make one per piece of the format.
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(answer.as_bytes());
                });
            }
        });
        Self { addr }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

/// A loopback port nothing listens on.
pub fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `cmd` to completion, killed (and the test failed) if it takes longer than `limit`.
pub fn run(cmd: &mut Command, limit: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait(child, limit)
}

pub fn wait(child: Child, limit: Duration) -> Output {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("pid {pid} still running after {limit:?}: hang");
        }
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asserts success, showing everything on failure (the layer's own log included).
pub fn ok(out: &Output, ctl: Option<&FakeCtl>) -> String {
    assert!(
        out.status.success(),
        "status {:?}\nstdout:\n{}\nstderr:\n{}\nlayer log:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr),
        ctl.map(FakeCtl::layer_log).unwrap_or_default()
    );
    text(&out.stdout)
}

pub fn python(script: &str) -> Command {
    let mut c = Command::new("python3");
    c.args(["-c", script]);
    c
}

pub fn curl(url: &str) -> Command {
    let mut c = Command::new("curl");
    c.args(["-sv", "--noproxy", "*", "--max-time", "10", url]);
    c
}
