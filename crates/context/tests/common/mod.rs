//! Real targets for the integration tests: a process in its own network and mount
//! namespaces (`unshare`), joined to the host by a veth pair, whose `/etc/hosts` and
//! `/etc/resolv.conf` are bind-mounted test files; and a tiny DNS server to put in there.
//!
//! Every address used lies in one /28 of 10.200.0.0-10.239.255.255 picked from the test
//! process's pid and a counter, and the host gets a blackhole route for that /28: nothing a
//! test sends can leave the machine, even if the code under test connected from the wrong
//! namespace. Everything is removed on drop, also when a test fails.

#![allow(dead_code)]

use nix::sched::{setns, CloneFlags};
use std::io::BufRead;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Whether the tools and rights the namespace tests need are here. Under CI a missing one
/// fails the test; elsewhere it is skipped with a note.
pub fn can_run() -> bool {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root".to_owned());
    }
    for tool in [
        "ip", "unshare", "nsenter", "mount", "sh", "sleep", "env", "setpriv",
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            missing.push(tool.to_owned());
        }
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!("namespace tests need: {}", missing.join(", "));
    if std::env::var_os("CI").is_some() {
        panic!("{msg} (CI must have them)");
    }
    eprintln!("skipped: {msg}");
    false
}

/// Runs `cmd`, panicking with its output when it fails.
pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A process in new network + mount namespaces, with a veth to the host.
///
/// Addresses, in the target's /28 at `base`: `.1` host side, `.2` target side (a /30);
/// `.5` the target's end of a second veth pair whose other end drops everything, with a
/// permanent neighbour for `.6` (a /30): `.6` is a blackhole; `.8`-`.15` have no route in
/// the target.
pub struct Target {
    pub child: Child,
    pub pid: u32,
    pub host_if: String,
    base: Ipv4Addr,
    pub hosts_file: PathBuf,
    pub resolv_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Target {
    pub fn start(hosts: &str, resolv: &str) -> Target {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        assert!(n < 16, "at most 16 targets per test binary (one /28 each)");
        let me = std::process::id();
        // 10.200-239.x.y/28: clear of the dev cluster's 10.244/16.
        let base = Ipv4Addr::new(
            10,
            200 + (me % 40) as u8,
            (me / 40 % 256) as u8,
            (n * 16) as u8,
        );
        let dir = tempfile::tempdir().unwrap();
        let hosts_file = dir.path().join("hosts");
        let resolv_file = dir.path().join("resolv.conf");
        std::fs::write(&hosts_file, hosts).unwrap();
        std::fs::write(&resolv_file, resolv).unwrap();

        // `unshare --mount` makes the new mount namespace private: the bind mounts stay in it.
        let child = Command::new("unshare")
            .args(["--net", "--mount", "--", "sh", "-c"])
            .arg(
                "mount --bind \"$1\" /etc/hosts && mount --bind \"$2\" /etc/resolv.conf \
                 && ip link set lo up && echo ready && exec sleep 300",
            )
            .arg("sh")
            .arg(&hosts_file)
            .arg(&resolv_file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("unshare");
        let pid = child.id();
        let host_if = format!("mcx{me}n{n}");
        let mut target = Target {
            child,
            pid,
            host_if,
            base,
            hosts_file,
            resolv_file,
            _dir: dir,
        };
        let mut line = String::new();
        let stdout = target.child.stdout.take().unwrap();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap();
        assert_eq!(
            line.trim(),
            "ready",
            "the target did not start (see stderr)"
        );

        // The blackhole route goes first: from then on nothing in the /28 leaves the host.
        ip(&["route", "add", "blackhole", &format!("{base}/28")]);
        let h = &target.host_if;
        ip(&[
            "link",
            "add",
            h,
            "type",
            "veth",
            "peer",
            "name",
            "vn0",
            "netns",
            &pid.to_string(),
        ]);
        ip(&["addr", "add", &format!("{}/30", target.addr(1)), "dev", h]);
        ip(&["link", "set", h, "up"]);
        for args in [
            vec![
                "addr".to_owned(),
                "add".into(),
                format!("{}/30", target.addr(2)),
                "dev".into(),
                "vn0".into(),
            ],
            vec!["link".into(), "set".into(), "vn0".into(), "up".into()],
            vec![
                "link".into(),
                "add".into(),
                "bh0".into(),
                "type".into(),
                "veth".into(),
                "peer".into(),
                "name".into(),
                "bh1".into(),
            ],
            vec![
                "addr".into(),
                "add".into(),
                format!("{}/30", target.addr(5)),
                "dev".into(),
                "bh0".into(),
            ],
            vec!["link".into(), "set".into(), "bh0".into(), "up".into()],
            vec!["link".into(), "set".into(), "bh1".into(), "up".into()],
            vec![
                "neigh".into(),
                "add".into(),
                target.addr(6).to_string(),
                "lladdr".into(),
                "02:00:00:00:00:01".into(),
                "dev".into(),
                "bh0".into(),
                "nud".into(),
                "permanent".into(),
            ],
        ] {
            target.ns_ip(&args);
        }
        target
    }

    /// `base + i`.
    pub fn addr(&self, i: u8) -> Ipv4Addr {
        let o = self.base.octets();
        Ipv4Addr::new(o[0], o[1], o[2], o[3] + i)
    }

    pub fn host_side(&self) -> Ipv4Addr {
        self.addr(1)
    }

    pub fn target_side(&self) -> Ipv4Addr {
        self.addr(2)
    }

    /// An address that drops every packet (no answer at all).
    pub fn blackhole(&self) -> Ipv4Addr {
        self.addr(6)
    }

    /// An address the target has no route to.
    pub fn unroutable(&self) -> Ipv4Addr {
        self.addr(9)
    }

    pub fn root(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.pid))
    }

    /// `ip ARGS` inside the target's network namespace.
    pub fn ns_ip(&self, args: &[String]) {
        run(Command::new("nsenter")
            .args(["--target", &self.pid.to_string(), "--net", "ip"])
            .args(args));
    }

    /// Runs `f` on a thread inside the target's network namespace (sockets made there stay
    /// in it).
    pub fn inside<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/proc/{}/ns/net", self.pid);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap();
            setns(&file, CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap()
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The namespace, and the veth with it, goes with its last process; said explicitly
        // too, since that happens asynchronously. Errors mean it is gone already.
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("ip")
            .args(["route", "del", "blackhole", &format!("{}/28", self.base)])
            .stderr(Stdio::null())
            .status();
    }
}

/// A child process killed on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the test DNS server answers for a name.
#[derive(Clone, Debug)]
pub enum Answer {
    Addrs(Vec<IpAddr>),
    ServFail,
    /// Never answers (the client times out).
    Silent,
}

/// A query the test DNS server got: who asked, for what name and type.
#[derive(Clone, Debug)]
pub struct Query {
    pub from: SocketAddr,
    pub name: String,
    pub qtype: u16,
}

/// A minimal DNS server over UDP: answers A/AAAA from a table, NXDOMAIN for names not in
/// it, NOERROR with no answer for a type a name lacks. Stops on drop.
pub struct DnsServer {
    pub queries: Arc<Mutex<Vec<Query>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DnsServer {
    pub fn start(socket: UdpSocket, table: Vec<(&str, Answer)>) -> DnsServer {
        let table: Vec<(String, Answer)> = table
            .into_iter()
            .map(|(n, a)| (n.to_ascii_lowercase(), a))
            .collect();
        let queries = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let thread = {
            let (queries, stop) = (queries.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 1500];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((len, from)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    let Some((name, qtype, reply)) = respond(&buf[..len], &table) else {
                        continue;
                    };
                    queries.lock().unwrap().push(Query { from, name, qtype });
                    if let Some(reply) = reply {
                        let _ = socket.send_to(&reply, from);
                    }
                }
            })
        };
        DnsServer {
            queries,
            stop,
            thread: Some(thread),
        }
    }

    pub fn queries(&self) -> Vec<Query> {
        self.queries.lock().unwrap().clone()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const A: u16 = 1;
const AAAA: u16 = 28;

/// The query's name (lowercase, no trailing dot) and type, and the reply (`None`: stay
/// silent). `None` altogether for what is not a one-question query.
fn respond(q: &[u8], table: &[(String, Answer)]) -> Option<(String, u16, Option<Vec<u8>>)> {
    if q.len() < 12 || q[2] & 0x80 != 0 || u16::from_be_bytes([q[4], q[5]]) != 1 {
        return None;
    }
    let mut labels = Vec::new();
    let mut i = 12;
    loop {
        let len = *q.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    let question = q.get(12..i + 4)?;
    let name = labels.join(".");
    let (rcode, addrs): (u8, Vec<IpAddr>) = match table.iter().find(|(n, _)| *n == name) {
        None => (3, vec![]),
        Some((_, Answer::Silent)) => return Some((name, qtype, None)),
        Some((_, Answer::ServFail)) => (2, vec![]),
        Some((_, Answer::Addrs(addrs))) => (
            0,
            addrs
                .iter()
                .filter(|a| match qtype {
                    A => a.is_ipv4(),
                    AAAA => a.is_ipv6(),
                    _ => false,
                })
                .copied()
                .collect(),
        ),
    };
    let mut r = Vec::new();
    r.extend_from_slice(&q[0..2]);
    // QR, the query's RD; RA and the code.
    r.push(0x80 | (q[2] & 0x01));
    r.push(0x80 | rcode);
    r.extend_from_slice(&1u16.to_be_bytes());
    r.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(question);
    for addr in &addrs {
        // The name is a pointer to the question's.
        r.extend_from_slice(&[0xc0, 0x0c]);
        let (t, data) = match addr {
            IpAddr::V4(a) => (A, a.octets().to_vec()),
            IpAddr::V6(a) => (AAAA, a.octets().to_vec()),
        };
        r.extend_from_slice(&t.to_be_bytes());
        r.extend_from_slice(&1u16.to_be_bytes());
        r.extend_from_slice(&0u32.to_be_bytes());
        r.extend_from_slice(&(data.len() as u16).to_be_bytes());
        r.extend_from_slice(&data);
    }
    Some((name, qtype, Some(r)))
}

pub fn v6(s: &str) -> IpAddr {
    IpAddr::V6(s.parse::<Ipv6Addr>().unwrap())
}

/// A directory standing for a root filesystem with these two files.
pub fn fake_root(hosts: &str, resolv: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("etc")).unwrap();
    std::fs::write(dir.path().join("etc/hosts"), hosts).unwrap();
    std::fs::write(dir.path().join("etc/resolv.conf"), resolv).unwrap();
    dir
}
