//! Stamps the commit and the build date into `mirrordctl --version`.
use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=MIRRORDCTL_COMMIT={commit}");
    println!("cargo:rustc-env=MIRRORDCTL_BUILD_DATE={date}");
    // A new commit changes the version string; HEAD's file changes with it. (Only paths
    // that exist: a missing one would make cargo rerun this, and rebuild, every time.)
    for f in ["../../.git/HEAD", "../../.git/refs/heads"] {
        if std::path::Path::new(f).exists() {
            println!("cargo:rerun-if-changed={f}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
