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
    // A new commit changes the version string; HEAD's file or the branch's ref changes with
    // it. Where they are is git's to say: in a worktree `.git` is a file naming a directory
    // elsewhere. (Only paths that exist: a missing one would make cargo rerun this, and
    // rebuild, every time.)
    let git_path = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| std::path::PathBuf::from(s.trim()))
    };
    let watched = [
        git_path(&["rev-parse", "--path-format=absolute", "--git-path", "HEAD"]),
        git_path(&["rev-parse", "--path-format=absolute", "--git-common-dir"])
            .map(|d| d.join("refs/heads")),
        git_path(&["rev-parse", "--path-format=absolute", "--git-common-dir"])
            .map(|d| d.join("packed-refs")),
    ];
    for f in watched.into_iter().flatten().filter(|f| f.exists()) {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    println!("cargo:rerun-if-changed=build.rs");
}
