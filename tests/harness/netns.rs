//! A named network namespace (`ip netns add`) standing for a target's pod: a veth pair to
//! the host, and its own `/etc/hosts` and `/etc/resolv.conf` under `/etc/netns/NAME`,
//! which `ip netns exec` puts in place for what runs there (as a pod has its own).
//!
//! Its addresses lie in one /28 of 10.240.0.0/16 picked from the test process's pid, and
//! the host gets a blackhole route for that /28 first: nothing a test sends there leaves
//! the machine. Everything is removed on drop, also when a test fails.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

pub struct Netns {
    pub name: String,
    base: Ipv4Addr,
    host_if: String,
    etc: PathBuf,
}

/// Whether this machine can make namespaces (root, `ip`). Under CI it must.
pub fn can_run() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    let ip = Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if root && ip {
        return true;
    }
    let msg = "namespace tests need root and `ip` (iproute2)";
    assert!(
        std::env::var_os("CI").is_none(),
        "{msg} (CI must have them)"
    );
    eprintln!("skipped: {msg}");
    false
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    /// A namespace whose `/etc/hosts` is `hosts` (`{target}` and `{host}` stand for its
    /// two addresses) and whose resolver is `nameserver 127.0.0.1` (nothing answers: any
    /// name not in `hosts` fails at once).
    pub fn start(hosts: &str) -> Netns {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        assert!(n < 4, "at most 4 namespaces per test binary");
        let me = std::process::id();
        // 10.240-241.x.y/28: clear of the dev cluster's 10.244/16 and of the context
        // crate's tests (10.200-239).
        let base = Ipv4Addr::new(
            10,
            240 + (me / 1024 % 2) as u8,
            (me % 256) as u8,
            ((me / 256 % 4) * 64 + n * 16) as u8,
        );
        let name = format!("mctx{me}n{n}");
        let etc = PathBuf::from("/etc/netns").join(&name);
        let ns = Netns {
            host_if: format!("mch{me}n{n}"),
            name,
            base,
            etc,
        };
        ip(&["route", "add", "blackhole", &format!("{base}/28")]);
        ip(&["netns", "add", &ns.name]);
        std::fs::create_dir_all(&ns.etc).unwrap();
        let hosts = hosts
            .replace("{target}", &ns.target_side().to_string())
            .replace("{host}", &ns.host_side().to_string());
        std::fs::write(ns.etc.join("hosts"), hosts).unwrap();
        std::fs::write(ns.etc.join("resolv.conf"), "nameserver 127.0.0.1\n").unwrap();
        let h = ns.host_if.clone();
        ip(&[
            "link", "add", &h, "type", "veth", "peer", "name", "vn0", "netns", &ns.name,
        ]);
        ip(&["addr", "add", &format!("{}/30", ns.host_side()), "dev", &h]);
        ip(&["link", "set", &h, "up"]);
        let n = ns.name.clone();
        let target = format!("{}/30", ns.target_side());
        for args in [
            vec!["addr", "add", &target, "dev", "vn0"],
            vec!["link", "set", "vn0", "up"],
            vec!["link", "set", "lo", "up"],
        ] {
            let mut all = vec!["-n", &n];
            all.extend(args);
            ip(&all);
        }
        ns
    }

    /// The host's end of the veth pair.
    pub fn host_side(&self) -> Ipv4Addr {
        let o = self.base.octets();
        Ipv4Addr::new(o[0], o[1], o[2], o[3] + 1)
    }

    /// The namespace's end: where its connections come from.
    pub fn target_side(&self) -> Ipv4Addr {
        let o = self.base.octets();
        Ipv4Addr::new(o[0], o[1], o[2], o[3] + 2)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let quiet = |args: &[&str]| {
            let _ = Command::new("ip").args(args).output();
        };
        quiet(&["link", "del", &self.host_if]);
        quiet(&["netns", "del", &self.name]);
        quiet(&["route", "del", "blackhole", &format!("{}/28", self.base)]);
        let _ = std::fs::remove_dir_all(&self.etc);
    }
}
