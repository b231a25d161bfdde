//! mirrord's `feature.fs`: which paths the process reads (and writes) from the target, and which stay on
//! this machine, decided in the layer without a round trip.
//!
//! The order is mirrord's (`mirrord-layer-lib`'s `FileFilter::check`): the user's `not_found`, `read_write`,
//! `read_only` and `local` patterns, then the defaults: home directories' cloud credentials not found, the
//! resolver's files read remotely, the system and toolchain paths of [`DEFAULT_LOCAL`] local; then the mode.
//! Patterns are regexes, matched case-insensitively anywhere in the absolute path. Relative paths stay local.

use regex::{RegexSet, RegexSetBuilder};
use serde::{Deserialize, Serialize};

/// `feature.fs.mode`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsMode {
    /// Everything local.
    #[default]
    Local,
    /// Local, except what `read_only`/`read_write` name (and the resolver's files).
    LocalWithOverrides,
    /// Read from the target; writes stay out of it (`EROFS`) unless `read_write` names the path.
    Read,
    /// Read and write the target's files.
    Write,
}

/// `feature.fs`, as the layer gets it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Files {
    pub mode: FsMode,
    pub read_only: Vec<String>,
    pub read_write: Vec<String>,
    pub local: Vec<String>,
    pub not_found: Vec<String>,
    /// Patterns that stay local by default for this process: its working directory, its executable, the
    /// temporary directory, hidden files of the home directory (mirrord computes them in the process too).
    pub process_local: Vec<String>,
    /// The home directory, for the default `not_found` patterns.
    pub home: Option<String>,
}

/// Where a path's operations go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Local,
    /// As if the path did not exist (`ENOENT`).
    NotFound,
    /// The target's file; `write`: it may be written there.
    Remote {
        write: bool,
    },
}

/// mirrord's default local paths (`read_local_by_default.rs`, Unix part).
pub const DEFAULT_LOCAL: &[&str] = &[
    r".\.so$",
    r".\.d$",
    r".\.pyc$",
    r".\.py$",
    r".\.jar$",
    r".\.class$",
    r".\.js$",
    r".\.pth$",
    r".\.plist$",
    r"venv\.cfg$",
    r"^/proc(/|$)",
    r"^/sys(/|$)",
    r"^/lib(/|$)",
    r"^/etc(/|$)",
    r"^/usr(/|$)",
    r"^/home(/|$)",
    r"^/bin(/|$)",
    r"^/sbin(/|$)",
    r"^/dev(/|$)",
    r"^/opt(/|$)",
    r"^/tmp(/|$)",
    r"^/var/tmp(/|$)",
    r"^/var/db/timezone/zoneinfo(/|$)",
    r"^/snap(/|$)",
    r"^/run(/|$)",
    r"^/selinux(/|$)",
    r"^/nix(/|$)",
    r".+\.asdf/.+",
    r"^/home/iojs(/|$)",
    r"^/home/runner(/|$)",
    r"clr-.*-pipe-",
    r"\.pdb$",
    r"\.dll$",
    r".*(^|/)jvm\.cfg$",
    r"/package\.json$",
    r"/\.yarnrc$",
    r"/\.yarnrc.yml$",
    r"/\.yarnrc.json$",
    r"/node_modules",
    r".*/\.tool-versions$",
    "^/Program Files",
    "^/$",
];

/// mirrord's paths read from the target by default (`read_remote_by_default.rs`): how it resolves names.
pub const DEFAULT_REMOTE: &[&str] = &[r"^/etc/resolv.conf$", r"^/etc/hosts$", r"^/etc/hostname$"];

/// mirrord's cloud credentials under the home directory that are not found by default.
pub const DEFAULT_NOT_FOUND: &[&str] = &[r"\.config/gcloud", r"\.kube", r"\.azure"];

/// A pattern list that is not a valid regex set: which list, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadPattern {
    pub list: &'static str,
    pub message: String,
}

impl std::fmt::Display for BadPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "feature.fs.{}: {}", self.list, self.message)
    }
}

/// [`Files`] compiled.
#[derive(Debug)]
pub struct FileRoutes {
    mode: FsMode,
    not_found: RegexSet,
    read_write: RegexSet,
    read_only: RegexSet,
    local: RegexSet,
    default_not_found: RegexSet,
    default_remote: RegexSet,
    default_local: RegexSet,
}

fn set<S: AsRef<str>>(list: &'static str, patterns: &[S]) -> Result<RegexSet, BadPattern> {
    RegexSetBuilder::new(patterns.iter().map(AsRef::as_ref))
        .case_insensitive(true)
        .size_limit(1 << 22)
        .build()
        .map_err(|e| BadPattern {
            list,
            message: e.to_string(),
        })
}

impl Files {
    /// Whether any path can be written in the target (the session then asks for write access).
    pub fn writes(&self) -> bool {
        match self.mode {
            FsMode::Local => false,
            FsMode::Write => true,
            _ => !self.read_write.is_empty(),
        }
    }

    /// Whether any path can be read from the target.
    pub fn reads(&self) -> bool {
        self.mode != FsMode::Local
    }

    pub fn compile(&self) -> Result<FileRoutes, BadPattern> {
        let home_not_found: Vec<String> = match &self.home {
            Some(home) => DEFAULT_NOT_FOUND
                .iter()
                .map(|p| format!("^{}/{p}", regex::escape(home.trim_end_matches('/'))))
                .collect(),
            None => Vec::new(),
        };
        let mut default_local: Vec<String> =
            DEFAULT_LOCAL.iter().map(|s| (*s).to_owned()).collect();
        default_local.extend(self.process_local.iter().cloned());
        Ok(FileRoutes {
            mode: self.mode,
            not_found: set("not_found", &self.not_found)?,
            read_write: set("read_write", &self.read_write)?,
            read_only: set("read_only", &self.read_only)?,
            local: set("local", &self.local)?,
            default_not_found: set("not_found", &home_not_found)?,
            default_remote: set("read_only", DEFAULT_REMOTE)?,
            default_local: set("local", &default_local)?,
        })
    }
}

impl FileRoutes {
    /// Where the operations on `path` go.
    pub fn route(&self, path: &str) -> Route {
        if self.mode == FsMode::Local || !path.starts_with('/') {
            return Route::Local;
        }
        let remote_write = Route::Remote { write: true };
        let remote_read = Route::Remote { write: false };
        let by_mode = match self.mode {
            FsMode::Write => remote_write,
            FsMode::Read => remote_read,
            _ => Route::Local,
        };
        if self.not_found.is_match(path) {
            Route::NotFound
        } else if self.read_write.is_match(path) {
            remote_write
        } else if self.read_only.is_match(path) {
            remote_read
        } else if self.local.is_match(path) {
            Route::Local
        } else if self.default_not_found.is_match(path) {
            Route::NotFound
        } else if self.default_remote.is_match(path) {
            remote_read
        } else if self.default_local.is_match(path) {
            Route::Local
        } else {
            by_mode
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(mode: FsMode, f: impl FnOnce(&mut Files)) -> FileRoutes {
        let mut files = Files {
            mode,
            home: Some("/home/dev".into()),
            process_local: vec![r"^/work/proj(/|$)".into()],
            ..Files::default()
        };
        f(&mut files);
        files.compile().unwrap()
    }

    #[test]
    fn mirrords_order_and_defaults() {
        let r = routes(FsMode::Read, |f| {
            f.read_only = vec!["^/etc/app".into()];
            f.local = vec![r"^/srv/local".into()];
            f.not_found = vec![r"^/srv/secret".into()];
        });
        let remote = Route::Remote { write: false };
        assert_eq!(
            r.route("/etc/app/config.yaml"),
            remote,
            "read_only beats the default local /etc"
        );
        assert_eq!(r.route("/etc/passwd"), Route::Local);
        assert_eq!(r.route("/etc/resolv.conf"), remote);
        assert_eq!(
            r.route("/ETC/HOSTS"),
            remote,
            "case-insensitive, as mirrord"
        );
        assert_eq!(r.route("/var/run/secrets/token"), remote);
        assert_eq!(r.route("/srv/local/x"), Route::Local);
        assert_eq!(r.route("/srv/secret/x"), Route::NotFound);
        assert_eq!(r.route("/home/dev/.kube/config"), Route::NotFound);
        assert_eq!(
            r.route("/work/proj/main.go"),
            Route::Local,
            "the process's own directory"
        );
        assert_eq!(r.route("/data/x.py"), Route::Local);
        assert_eq!(r.route("relative/path"), Route::Local);
        assert_eq!(r.route("/"), Route::Local);
    }

    #[test]
    fn modes() {
        let w = routes(FsMode::Write, |_| {});
        assert_eq!(w.route("/data/x"), Route::Remote { write: true });
        let l = routes(FsMode::Local, |f| f.read_only = vec!["^/data".into()]);
        assert_eq!(l.route("/data/x"), Route::Local);
        let o = routes(FsMode::LocalWithOverrides, |f| {
            f.read_write = vec!["^/data/rw".into()]
        });
        assert_eq!(o.route("/data/x"), Route::Local);
        assert_eq!(o.route("/data/rw/x"), Route::Remote { write: true });
        assert_eq!(o.route("/etc/hosts"), Route::Remote { write: false });
        let mut f = Files::default();
        assert!(!f.writes() && !f.reads());
        f.mode = FsMode::Read;
        assert!(f.reads() && !f.writes());
        f.read_write = vec!["^/x".into()];
        assert!(f.writes());
    }

    #[test]
    fn a_bad_pattern_names_its_list() {
        let f = Files {
            mode: FsMode::Read,
            read_only: vec!["(".into()],
            ..Files::default()
        };
        let e = f.compile().unwrap_err();
        assert_eq!(e.list, "read_only");
        assert!(e.to_string().starts_with("feature.fs.read_only: "), "{e}");
    }
}
