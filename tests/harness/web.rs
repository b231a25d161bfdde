//! The Kubernetes tests' workload and developer: a Deployment `web` of real HTTP servers
//! that answer their pod's name, behind a Service, and the developer's local process,
//! which answers `local`; so every answer says who served it.

use crate::prom::http_exchange;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Deployment and Service `web` in `ns`.
pub fn web_yaml(ns: &str, replicas: u32) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {ns}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: 1
      containers:
        - name: httpd
          image: mirrord.dev/busybox:1
          imagePullPolicy: Never
          command: ["/bin/sh", "-c", "mkdir -p /tmp/www && hostname > /tmp/www/index.html && exec httpd -f -p 80 -h /tmp/www"]
          ports: [{{containerPort: 80, name: http, protocol: TCP}}]
          readinessProbe: {{tcpSocket: {{port: 80}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {ns}}}
spec:
  selector: {{app: web}}
  # Port 81 is the pods' port 80 by its name: a session on the Service asking for 81
  # takes the pods' port 80.
  ports:
    - {{name: web, port: 80, targetPort: 80, protocol: TCP}}
    - {{name: alt, port: 81, targetPort: http, protocol: TCP}}
"#
    )
}

/// The developer's local process: answers `local` and records each request line.
pub struct Local {
    pub addr: SocketAddr,
    pub hits: Arc<Mutex<Vec<String>>>,
}
impl Local {
    pub fn start() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let hits: Arc<Mutex<Vec<String>>> = Arc::default();
        let h = Arc::clone(&hits);
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { continue };
                let h = Arc::clone(&h);
                std::thread::spawn(move || {
                    let _ = c.set_read_timeout(Some(Duration::from_secs(3)));
                    let mut req = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match c.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&req);
                    if let Some(line) = text.lines().next().filter(|l| !l.is_empty()) {
                        h.lock().unwrap().push(line.to_owned());
                    }
                    let _ = c.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nlocal\n",
                    );
                });
            }
        });
        Self { addr, hits }
    }

    pub fn count(&self, needle: &str) -> usize {
        self.hits
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }
}

/// One GET; the body's first line (who answered), or the error.
pub fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> String {
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let req = format!("GET {path} HTTP/1.1\r\nHost: web\r\n{extra}Connection: close\r\n\r\n");
    match http_exchange(addr, &req) {
        Ok(resp) => resp
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or("")
            .trim()
            .to_owned(),
        Err(e) => format!("error: {e}"),
    }
}

/// Who answered `n` GETs.
pub fn answers(addr: SocketAddr, n: usize, headers: &[(&str, &str)]) -> BTreeSet<String> {
    (0..n)
        .map(|i| get(addr, &format!("/?i={i}"), headers))
        .collect()
}
/// The process of pod `uid` (on this node) whose command line contains `needle`, found
/// by its cgroup.
pub fn pod_process(uid: &str, needle: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cgroup = std::fs::read_to_string(e.path().join("cgroup")).ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        (cgroup.contains(&format!("pod{uid}"))
            && String::from_utf8_lossy(&cmdline).contains(needle))
        .then_some(pid)
    })
}
