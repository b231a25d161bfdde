//! A target process's environment as mirrord's agent hands it out: `/proc/PID/environ`,
//! minus the names mirrord always keeps local, then the user's `include`/`exclude` globs.
//!
//! Values are never logged, only names and counts.

use crate::error::ContextError;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::Path;

/// Names mirrord's agent never hands out: they describe the target's machine (paths, tool
/// locations, log settings), and copying them would break the local process. Verbatim from
/// metalbear-co/mirrord `mirrord/agent/src/env.rs` (`EnvFilter::new`, commit 0661df2).
pub const ALWAYS_EXCLUDED: &[&str] = &[
    "BUNDLER_ORIG_BUNDLER_ORIG_MANPATH",
    "BUNDLER_ORIG_BUNDLER_VERSION",
    "BUNDLER_ORIG_BUNDLE_BIN_PATH",
    "BUNDLER_ORIG_BUNDLE_GEMFILE",
    "BUNDLER_ORIG_GEM_HOME",
    "BUNDLER_ORIG_MANPATH",
    "BUNDLER_ORIG_PATH",
    "BUNDLER_ORIG_RB_USER_INSTALL",
    "BUNDLER_ORIG_RUBYLIB",
    "BUNDLER_ORIG_RUBYOPT",
    "BUNDLER_VERSION",
    "BUNDLE_APP_CONFIG",
    "BUNDLE_BIN_PATH",
    "BUNDLE_FORCE_RUBY_PLATFORM",
    "BUNDLE_GEMFILE",
    "BUNDLE_GEM_PATH",
    "BUNDLE_PATH",
    "BUNDLE_WITHOUT",
    "CATALINA_HOME",
    "CLASSPATH",
    "DOTNET_EnableDiagnostics",
    "DOTNET_STARTUP_HOOKS",
    "GEM_HOME",
    "GEM_PATH",
    "GOPATH",
    "GOMODCACHE",
    "HOME",
    "HOMEPATH",
    "JAVA_EXE",
    "JAVA_HOME",
    "JAVA_TOOL_OPTIONS",
    "PATH",
    "PWD",
    "PYTHONPATH",
    "RUBYLIB",
    "RUBYOPT",
    "MIRRORD_LOG",
    "RUST_LOG",
    "_JAVA_OPTIONS",
    "TEMP",
    "TMP",
    "TMPDIR",
];

/// mirrord's env selection (`feature.env.include` / `feature.env.exclude`): globs where `*`
/// matches any run of characters and `?` exactly one, case-sensitive, matched against the
/// whole name. Each entry may itself hold several globs separated by `;` (mirrord's string
/// form, `"DB_*;API_KEY"`); empty pieces are ignored. At most one of the two lists may hold
/// globs: mirrord refuses both, and so does [`read_env`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvSelect {
    /// If it holds any glob, only the names matching one are kept.
    pub include: Vec<String>,
    /// Names matching one of these are dropped.
    pub exclude: Vec<String>,
}

impl EnvSelect {
    /// The globs of a list, split at `;`, empty pieces dropped.
    fn globs(list: &[String]) -> Vec<&str> {
        list.iter()
            .flat_map(|e| e.split(';'))
            .filter(|g| !g.is_empty())
            .collect()
    }

    /// The names of `vars` this selection keeps, in their order. Fails when both lists hold
    /// globs.
    pub fn apply(
        &self,
        vars: Vec<(String, String)>,
    ) -> Result<Vec<(String, String)>, ContextError> {
        let include = Self::globs(&self.include);
        let exclude = Self::globs(&self.exclude);
        if !include.is_empty() && !exclude.is_empty() {
            return Err(ContextError::IncludeAndExclude);
        }
        Ok(vars
            .into_iter()
            .filter(|(name, _)| {
                !ALWAYS_EXCLUDED.contains(&name.as_str())
                    && (include.is_empty() || include.iter().any(|g| glob_match(g, name)))
                    && !exclude.iter().any(|g| glob_match(g, name))
            })
            .collect())
    }
}

/// The environment of process `pid` as read from `PROC_ROOT/PID/environ` (pass `/proc`),
/// minus [`ALWAYS_EXCLUDED`], then `select` applied; in the order the process has them.
///
/// `environ` is the environment the process was started with: later `setenv`s are not in
/// it (as with mirrord). Entries that are not UTF-8 (name or value) are skipped rather than
/// mangled: a value with replacement characters would silently differ from the target's,
/// while a missing one is visible. Entries without `=` are skipped. When a name repeats,
/// the first one wins, as with glibc's `getenv`.
pub fn read_env(
    proc_root: &Path,
    pid: u32,
    select: &EnvSelect,
) -> Result<Vec<(String, String)>, ContextError> {
    // Checked first, so a wrong configuration is reported whatever state the target is in.
    select.apply(Vec::new())?;
    let path = proc_root.join(pid.to_string()).join("environ");
    let raw = std::fs::read(&path).map_err(|e| ContextError::from_proc_io(pid, path, e))?;
    let (vars, skipped) = parse_environ(&raw);
    let total = vars.len();
    let selected = select.apply(vars)?;
    tracing::debug!(
        target: "mirrord_context",
        pid,
        total,
        selected = selected.len(),
        not_utf8 = skipped,
        "read the target's environment"
    );
    Ok(selected)
}

/// `NAME=value` entries of a NUL-separated environ block, first occurrence of each name
/// only, and how many entries were skipped because they were not UTF-8.
pub(crate) fn parse_environ(raw: &[u8]) -> (Vec<(String, String)>, usize) {
    let mut seen = HashSet::new();
    let mut vars = Vec::new();
    let mut skipped = 0;
    for entry in raw.split(|&b| b == 0).filter(|e| !e.is_empty()) {
        let Ok(entry) = std::str::from_utf8(entry) else {
            skipped += 1;
            continue;
        };
        // A name is never empty: `=x` is not a variable (glibc's getenv can't find it).
        let Some((name, value)) = entry.split_once('=').filter(|(n, _)| !n.is_empty()) else {
            continue;
        };
        if seen.insert(name.to_owned()) {
            vars.push((name.to_owned(), value.to_owned()));
        }
    }
    (vars, skipped)
}

/// Whether `name` matches `glob` as a whole (`*`: any run of characters, `?`: one).
pub(crate) fn glob_match(glob: &str, name: &str) -> bool {
    let g: Vec<char> = glob.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut gi, mut ni) = (0, 0);
    // Where the last `*` was and the name position it was tried against: on a mismatch,
    // that star takes one more character (linear backtracking, no recursion).
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match g.get(gi) {
            Some('*') => {
                star = Some((gi, ni));
                gi += 1;
            }
            Some(&c) if c == '?' || c == n[ni] => {
                gi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sg, sn)) => {
                    gi = sg + 1;
                    ni = sn + 1;
                    star = Some((sg, sn + 1));
                }
                None => return false,
            },
        }
    }
    g[gi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(names: &[&str]) -> Vec<(String, String)> {
        names
            .iter()
            .map(|n| (n.to_string(), format!("v-{n}")))
            .collect()
    }

    fn names(v: &[(String, String)]) -> Vec<&str> {
        v.iter().map(|(n, _)| n.as_str()).collect()
    }

    fn select(include: &[&str], exclude: &[&str]) -> EnvSelect {
        EnvSelect {
            include: include.iter().map(|s| s.to_string()).collect(),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn environ_blocks_are_split_into_names_and_values() {
        let raw = b"A=1\0B=x=y\0EMPTY=\0NOEQ\0=nameless\0A=second\0\0C=3\0";
        let (v, skipped) = parse_environ(raw);
        assert_eq!(
            v,
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "x=y".into()),
                ("EMPTY".into(), "".into()),
                ("C".into(), "3".into()),
            ]
        );
        assert_eq!(skipped, 0);
        assert_eq!(parse_environ(b""), (vec![], 0));
        // No trailing NUL (a truncated read) still gives the last entry.
        assert_eq!(parse_environ(b"Z=9").0, vec![("Z".into(), "9".into())]);
    }

    #[test]
    fn entries_that_are_not_utf8_are_skipped_not_mangled() {
        let raw = b"GOOD=1\0BAD=\xff\xfe\0\xc3=x\0ALSO=\xc3\xa9\0";
        let (v, skipped) = parse_environ(raw);
        assert_eq!(
            v,
            vec![("GOOD".into(), "1".into()), ("ALSO".into(), "é".into())]
        );
        assert_eq!(skipped, 2);
    }

    #[test]
    fn globs_match_whole_names() {
        for (g, n) in [
            ("FOO", "FOO"),
            ("FOO*", "FOO"),
            ("FOO*", "FOOBAR"),
            ("*BAR", "FOOBAR"),
            ("F?O", "FOO"),
            ("*", ""),
            ("*", "ANY"),
            ("A*B*C", "AxxBxxC"),
            ("A*B*C", "ABC"),
            ("*_*_*", "A_B_C"),
            ("?*", "X"),
            ("DB_*", "DB_"),
        ] {
            assert!(glob_match(g, n), "{g} should match {n}");
        }
        for (g, n) in [
            ("FOO", "FOOBAR"),
            ("FOO", "foo"),
            ("BAR", "FOOBAR"),
            ("F?O", "FO"),
            ("?", ""),
            ("A*B*C", "AxxBxx"),
            ("A*B*C", "ACB"),
            ("", "A"),
            ("?*", ""),
        ] {
            assert!(!glob_match(g, n), "{g} should not match {n}");
        }
    }

    #[test]
    fn mirrords_defaults_are_always_dropped() {
        let all = vars(&[
            "PATH",
            "HOME",
            "APP",
            "TMPDIR",
            "JAVA_HOME",
            "RUST_LOG",
            "DB",
        ]);
        let out = EnvSelect::default().apply(all.clone()).unwrap();
        assert_eq!(names(&out), ["APP", "DB"]);
        // Even when included by name: the defaults describe the target's machine.
        let out = select(&["PATH", "APP"], &[]).apply(all).unwrap();
        assert_eq!(names(&out), ["APP"]);
        // Names are compared exactly (mirrord's globs are case-sensitive).
        let out = EnvSelect::default()
            .apply(vars(&["Path", "PATHX"]))
            .unwrap();
        assert_eq!(names(&out), ["Path", "PATHX"]);
    }

    #[test]
    fn include_keeps_only_matches_and_exclude_drops_matches() {
        let all = vars(&["DB_HOST", "DB_PASSWORD", "API_KEY", "LOG", "X"]);
        let out = select(&["DB_*"], &[]).apply(all.clone()).unwrap();
        assert_eq!(names(&out), ["DB_HOST", "DB_PASSWORD"]);
        // `;`-separated entries, mirrord's string form, and several entries alike.
        let out = select(&["DB_HOST;API_?EY"], &[])
            .apply(all.clone())
            .unwrap();
        assert_eq!(names(&out), ["DB_HOST", "API_KEY"]);
        let out = select(&["DB_HOST", "LOG"], &[]).apply(all.clone()).unwrap();
        assert_eq!(names(&out), ["DB_HOST", "LOG"]);
        let out = select(&[], &["*PASSWORD;API_*"])
            .apply(all.clone())
            .unwrap();
        assert_eq!(names(&out), ["DB_HOST", "LOG", "X"]);
        // Empty pieces select nothing and are no glob at all: `;;` is "no include".
        let out = select(&[";;"], &[]).apply(all.clone()).unwrap();
        assert_eq!(out.len(), 5);
        let out = select(&["NOTHING"], &[]).apply(all).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn include_and_exclude_together_are_refused() {
        let err = select(&["A"], &["B"]).apply(vars(&["A"])).unwrap_err();
        assert!(matches!(err, ContextError::IncludeAndExclude), "{err}");
        assert!(err.to_string().contains("keep only one"), "{err}");
        // An empty list next to a real one is fine.
        assert!(select(&["A"], &[""]).apply(vars(&["A"])).is_ok());
    }

    #[test]
    fn read_env_reads_a_proc_like_tree() {
        let proc_root = tempfile::tempdir().unwrap();
        std::fs::create_dir(proc_root.path().join("42")).unwrap();
        std::fs::write(
            proc_root.path().join("42/environ"),
            b"PATH=/bin\0FOO=bar\0SECRET_X=1\0",
        )
        .unwrap();
        let out = read_env(proc_root.path(), 42, &EnvSelect::default()).unwrap();
        assert_eq!(
            out,
            vec![
                ("FOO".into(), "bar".into()),
                ("SECRET_X".into(), "1".into())
            ]
        );
        let err = read_env(proc_root.path(), 43, &EnvSelect::default()).unwrap_err();
        assert!(
            matches!(err, ContextError::NoSuchProcess { pid: 43, .. }),
            "{err}"
        );
        // The configuration error wins over a missing process.
        let err = read_env(proc_root.path(), 43, &select(&["A"], &["B"])).unwrap_err();
        assert!(matches!(err, ContextError::IncludeAndExclude), "{err}");
    }

    #[test]
    fn proc_errors_tell_what_to_do() {
        let denied = ContextError::from_proc_io(
            7,
            "/proc/7/environ".into(),
            std::io::Error::from_raw_os_error(nix::errno::Errno::EACCES as i32),
        );
        assert!(denied.to_string().contains("CAP_SYS_PTRACE"), "{denied}");
        let gone = ContextError::from_proc_io(
            7,
            "/proc/7/environ".into(),
            std::io::Error::from_raw_os_error(nix::errno::Errno::ESRCH as i32),
        );
        assert!(
            matches!(gone, ContextError::NoSuchProcess { pid: 7, .. }),
            "{gone}"
        );
    }
}
