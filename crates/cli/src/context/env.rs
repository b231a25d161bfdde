//! The process's environment, built the way mirrord builds it: this machine's, then the
//! target's over it, then `env_file`, then `mapping` (over the target's and the file's
//! variables only), then `override`; `unset` last (any case); and, when the layer is
//! needed, `LD_PRELOAD` and the layer's two variables.

use crate::plan::ContextPlan;
use mirrord_layer_proto::{LayerConfig, ENV_CONFIG, ENV_SOCK};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::path::Path;

pub type Env = BTreeMap<OsString, OsString>;

/// `local` with the target's variables and the plan's changes applied.
pub fn build(
    local: impl IntoIterator<Item = (OsString, OsString)>,
    remote: &[(String, String)],
    plan: &ContextPlan,
) -> anyhow::Result<Env> {
    let mut env: Env = local.into_iter().collect();
    // The names `mapping` may change: the target's and the env file's, as in mirrord.
    let mut from_target: BTreeSet<OsString> = BTreeSet::new();
    for (k, v) in remote {
        env.insert(k.into(), v.into());
        from_target.insert(k.into());
    }
    if let Some(file) = &plan.env_file {
        let vars = dotenvy::from_path_iter(file)
            .map_err(|e| anyhow::anyhow!("feature.env.env_file {}: {e}", file.display()))?;
        for item in vars {
            let (k, v) =
                item.map_err(|e| anyhow::anyhow!("feature.env.env_file {}: {e}", file.display()))?;
            from_target.insert(k.clone().into());
            env.insert(k.into(), v.into());
        }
    }
    remap(&mut env, &from_target, &plan.mapping)?;
    for (k, v) in &plan.overrides {
        env.insert(k.into(), v.into());
    }
    if !plan.unset.is_empty() {
        env.retain(|k, _| {
            let k = k.to_string_lossy();
            !plan.unset.iter().any(|u| u.eq_ignore_ascii_case(&k))
        });
    }
    Ok(env)
}

/// `feature.env.mapping`: each of `names` that a pattern matches (anywhere in the name, as
/// mirrord's `is_match`) gets that pattern's value; the first matching pattern wins, in
/// the order the plan holds them (a file's keys come sorted; mirrord's order is
/// unspecified: it keeps them in a HashMap).
/// A match that exceeds the regex engine's backtracking limit counts as no match.
fn remap(
    env: &mut Env,
    names: &BTreeSet<OsString>,
    mapping: &[(String, String)],
) -> anyhow::Result<()> {
    if mapping.is_empty() {
        return Ok(());
    }
    let patterns = mapping
        .iter()
        .map(|(p, v)| {
            fancy_regex::Regex::new(p)
                .map(|r| (r, v))
                .map_err(|e| anyhow::anyhow!("feature.env.mapping.{p}: not a valid regex: {e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    for name in names {
        let text = name.to_string_lossy();
        if let Some((_, value)) = patterns
            .iter()
            .find(|(r, _)| r.is_match(text.as_ref()).unwrap_or(false))
        {
            env.insert(name.clone(), OsString::from(value.as_str()));
        }
    }
    Ok(())
}

/// Loads the layer into the process: first in `LD_PRELOAD` (before any other preloaded
/// library, so its hooks see the calls first), with the socket and what to redirect.
pub fn with_layer(env: &mut Env, layer: &Path, sock: &Path, config: &LayerConfig) {
    let preload = OsStr::new("LD_PRELOAD");
    let mut value = layer.as_os_str().to_owned();
    if let Some(old) = env.get(preload).filter(|v| !v.is_empty()) {
        value.push(" ");
        value.push(old);
    }
    env.insert(preload.into(), value);
    env.insert(ENV_SOCK.into(), sock.as_os_str().into());
    env.insert(ENV_CONFIG.into(), config.to_env().into());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(env: &'a Env, k: &str) -> Option<&'a str> {
        env.get(OsStr::new(k)).map(|v| v.to_str().unwrap())
    }

    #[test]
    fn target_over_local_then_file_then_overrides_then_unset() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(".env");
        std::fs::write(
            &file,
            "FROM_FILE=1\nDB_URL=\"postgres://file\"\n# comment\n",
        )
        .unwrap();
        let plan = ContextPlan {
            overrides: vec![("LOG".into(), "debug".into())],
            env_file: Some(file),
            unset: vec!["secret_token".into()],
            ..Default::default()
        };
        let local = [
            ("HOME", "/home/dev"),
            ("DB_URL", "postgres://localhost"),
            ("LOG", "info"),
            ("SECRET_TOKEN", "local"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let remote = [
            ("DB_URL".to_owned(), "postgres://db.prod".to_owned()),
            ("REGION".to_owned(), "eu".to_owned()),
        ];
        let env = build(local, &remote, &plan).unwrap();
        assert_eq!(get(&env, "HOME"), Some("/home/dev"));
        assert_eq!(get(&env, "REGION"), Some("eu"));
        assert_eq!(get(&env, "DB_URL"), Some("postgres://file"));
        assert_eq!(get(&env, "FROM_FILE"), Some("1"));
        assert_eq!(get(&env, "LOG"), Some("debug"));
        assert_eq!(get(&env, "SECRET_TOKEN"), None, "unset ignores case");
    }

    #[test]
    fn mapping_changes_the_targets_and_the_files_variables_before_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(".env");
        std::fs::write(&file, "FILE_TIMEOUT=5\n").unwrap();
        let plan = ContextPlan {
            env_file: Some(file),
            mapping: vec![
                (".+_TIMEOUT".into(), "10000".into()),
                ("LOG_.+_VERBOSITY".into(), "debug".into()),
                (
                    "LOG_.+".into(),
                    "never: the pattern before it matched first".into(),
                ),
            ],
            overrides: vec![("WRITE_TIMEOUT".into(), "1".into())],
            ..Default::default()
        };
        let local = [("LOCAL_TIMEOUT", "3")].map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let remote = [
            ("CONNECTION_TIMEOUT", "500"),
            ("WRITE_TIMEOUT", "500"),
            ("LOG_FILE_VERBOSITY", "info"),
            ("TIMEOUT", "7"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let env = build(local, &remote, &plan).unwrap();
        assert_eq!(get(&env, "CONNECTION_TIMEOUT"), Some("10000"));
        assert_eq!(
            get(&env, "FILE_TIMEOUT"),
            Some("10000"),
            "the env file's too"
        );
        assert_eq!(get(&env, "LOG_FILE_VERBOSITY"), Some("debug"));
        assert_eq!(
            get(&env, "TIMEOUT"),
            Some("7"),
            "`.+` needs a character before"
        );
        assert_eq!(get(&env, "LOCAL_TIMEOUT"), Some("3"), "this machine's stay");
        assert_eq!(
            get(&env, "WRITE_TIMEOUT"),
            Some("1"),
            "override comes after"
        );
    }

    #[test]
    fn a_missing_env_file_is_an_error_naming_it() {
        let plan = ContextPlan {
            env_file: Some("/nonexistent/.env".into()),
            ..Default::default()
        };
        let e = build([], &[], &plan).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/.env"), "{e}");
    }

    #[test]
    fn the_layer_goes_first_in_ld_preload() {
        let mut env = Env::new();
        env.insert("LD_PRELOAD".into(), "/usr/lib/libfaketime.so".into());
        let config = LayerConfig::default();
        with_layer(
            &mut env,
            Path::new("/opt/libmirrord_layer.so"),
            Path::new("/tmp/x/layer.sock"),
            &config,
        );
        assert_eq!(
            get(&env, "LD_PRELOAD"),
            Some("/opt/libmirrord_layer.so /usr/lib/libfaketime.so")
        );
        assert_eq!(get(&env, ENV_SOCK), Some("/tmp/x/layer.sock"));
        let back = LayerConfig::from_env(get(&env, ENV_CONFIG).unwrap()).unwrap();
        assert_eq!(back, config);
    }
}
