//! A real headless Chromium for the console tests: chromedriver on a free loopback port,
//! a WebDriver session (fantoccini), screenshots saved as test artifacts under
//! `<target>/console-screenshots/`.

use crate::{bin, free_addr, wait_for};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// chromedriver on a free loopback port, stopped on drop.
pub struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `None` (skip) only outside CI: under CI a missing browser is a failure.
pub fn chromedriver() -> Option<Driver> {
    let found = ["/usr/bin/chromedriver", "/usr/bin/chromium"]
        .iter()
        .all(|p| Path::new(p).exists());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium and chromium-driver are required under CI (apt-get install chromium chromium-driver)"
        );
        eprintln!("skipping: chromium / chromium-driver not installed");
        return None;
    }
    let addr = free_addr();
    let child = Command::new("/usr/bin/chromedriver")
        .arg(format!("--port={}", addr.port()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let url = format!("http://{addr}");
    wait_for(Duration::from_secs(20), || {
        std::net::TcpStream::connect(addr).ok()
    })
    .expect("chromedriver listens");
    Some(Driver { child, url })
}

pub async fn browser(driver: &Driver) -> fantoccini::Client {
    let caps = json!({
        "browserName": "chrome",
        // The console's certificate is the operator's own (its CA is not the system's).
        "acceptInsecureCerts": true,
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,1000"],
        },
    });
    let caps = caps.as_object().unwrap().clone().into_iter().collect();
    fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a chromium session")
}

pub fn screenshot_dir() -> PathBuf {
    let dir = bin("mirrord-operator")
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub async fn screenshot(c: &fantoccini::Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    let path = screenshot_dir().join(name);
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());
}

/// Waits (up to 30 s) until the script returns true.
pub async fn until(c: &fantoccini::Client, what: &str, script: &str) {
    for _ in 0..150 {
        if c.execute(script, vec![]).await.unwrap() == Value::Bool(true) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    screenshot(c, &format!("failed-{}.png", what.replace(' ', "-"))).await;
    panic!("timed out waiting for {what}");
}

/// Clicks the element `css` finds. The console redraws its tables on every poll and event:
/// an element found just before a redraw is stale by the time it is clicked, so find and
/// click again (up to a second).
pub async fn click(c: &fantoccini::Client, css: &str) {
    for _ in 0..10 {
        if let Ok(e) = c.find(fantoccini::Locator::Css(css)).await {
            if e.click().await.is_ok() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("could not click {css}");
}
