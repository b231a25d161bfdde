//! A real Prometheus server (Debian's `prometheus` package), scraping the operator, queried
//! through its HTTP API.

use crate::{free_addr, wait_for, Lines};
use serde_json::Value;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
    pub log: Lines,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` every second.
    pub fn start(target: SocketAddr) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let addr = free_addr();
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: mirrord-operator\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let mut child = Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("prometheus is installed (Debian package `prometheus`; .ci/run installs it)");
        let log = Lines::default().collect_from(child.stderr.take().unwrap());
        let p = Self {
            child,
            addr,
            _dir: dir,
            log,
        };
        wait_for(Duration::from_secs(30), || {
            std::net::TcpStream::connect(addr).ok()?;
            http_get(addr, "/-/ready").contains("Ready").then_some(())
        })
        .unwrap_or_else(|| panic!("prometheus did not become ready:\n{}", p.log.text()));
        p
    }

    /// Instant query; returns the result vector.
    pub fn query(&self, q: &str) -> Vec<Value> {
        let path = format!("/api/v1/query?query={}", encode(q));
        let body = http_get(self.addr, &path);
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("bad answer: {body}"));
        assert_eq!(v["status"], "success", "query {q} failed: {body}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The single value of `q`, once Prometheus has one.
    pub fn value(&self, q: &str) -> Option<f64> {
        let r = self.query(q);
        r.first()
            .and_then(|s| s["value"][1].as_str())
            .and_then(|s| s.parse().ok())
    }

    /// Polls until `q` has exactly `want`; panics with what it saw otherwise.
    pub fn expect(&self, q: &str, want: f64) {
        let mut last = None;
        let ok = wait_for(Duration::from_secs(20), || {
            last = self.value(q);
            (last == Some(want)).then_some(())
        });
        assert!(
            ok.is_some(),
            "{q}: expected {want}, Prometheus says {last:?}"
        );
    }

    /// Polls until `q` satisfies `pred`.
    pub fn expect_that(&self, q: &str, what: &str, pred: impl Fn(f64) -> bool) {
        let mut last = None;
        let ok = wait_for(Duration::from_secs(20), || {
            last = self.value(q);
            last.filter(|v| pred(*v))
        });
        assert!(
            ok.is_some(),
            "{q}: expected {what}, Prometheus says {last:?}"
        );
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A blocking HTTP/1.0 GET (no runtime needed), returning the body.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    let answer = http_exchange(
        addr,
        &format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n"),
    )
    .unwrap_or_else(|e| panic!("GET {path} from {addr}: {e}"));
    answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

/// Sends `request` on a new connection and reads the whole answer until the server closes
/// (blocking; bounded by a 2 s connect and a 10 s read timeout).
pub fn http_exchange(addr: SocketAddr, request: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    use std::time::Duration;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(request.as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}
