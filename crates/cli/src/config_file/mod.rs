//! A mirrord configuration file (`.mirrord/mirrord.json`), so a team's existing file works
//! unchanged: the target (with its container) and namespace, `feature.network.incoming`
//! ([`incoming`]: mode, `http_filter`, `ports`, `ignore_ports`, `port_mapping`,
//! `on_concurrent_steal`), `feature.copy_target`, and what `exec`'s process gets of the
//! target ([`context`]: `feature.env`, `feature.network.outgoing`, `feature.network.dns`;
//! [`fs`]: `feature.fs`), with the semantics of mirrord 3.250.0.
//!
//! Found like mirrord finds it: `-f FILE`, else `MIRRORD_CONFIG_FILE`, else
//! `.mirrord/mirrord.json` in the current directory. Read by extension as mirrord reads it:
//! `.json` (or none) as JSON, `.toml`, `.yaml`/`.yml`. mirrord's own JSON parser is strict,
//! but its documentation prints examples with `//` comments and a trailing comma; both
//! are accepted here (nothing else beyond JSON), so an example pasted from the docs works
//! and a file mirrord reads means the same here. Syntax errors name the line and column.
//!
//! Keys mirrord has and this project does not implement (`agent`, ...) are
//! named in one warning. A key that would change which requests are stolen and that is not
//! understood (inside `incoming` or `http_filter`) is an error: ignoring it would steal more
//! than the team meant. Every error names the key.

mod context;
mod fs;
mod incoming;

pub use context::{DnsFile, EnvFile, OutgoingFile};
pub use fs::mode as fs_mode;

use mirrord_protocol::{ConcurrentSteal, HttpFilterSpec, PortMode};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read the mirrord config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the mirrord config {path} is not valid {format}: {message}")]
    Syntax {
        path: PathBuf,
        format: &'static str,
        message: String,
    },
    #[error(
        "the mirrord config {path}: only .json, .toml, .yaml and .yml files are read, as mirrord reads them"
    )]
    Format { path: PathBuf },
    #[error("the mirrord config {path}: `{key}`: {problem}")]
    Key {
        path: PathBuf,
        key: String,
        problem: String,
    },
}

/// What the file says about a session. `None`: the file does not say (flags or defaults
/// decide).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct FileConfig {
    pub path: PathBuf,
    /// `kind/name`.
    pub target: Option<String>,
    /// The container part of the target (`kind/name/container/NAME`, `"container"`).
    pub container: Option<String>,
    pub namespace: Option<String>,
    pub mode: Option<PortMode>,
    pub filter: Option<HttpFilterSpec>,
    /// The ports the filter applies to (mirrord's `http_filter.ports`); `None`: every port
    /// (mirrord since 3.181.0).
    pub filter_ports: Option<Vec<u16>>,
    /// Remote ports to intercept (`incoming.ports`).
    pub ports: Vec<u16>,
    /// Remote ports never to intercept (`incoming.ignore_ports`).
    pub ignore_ports: Vec<u16>,
    /// `(local, remote)` pairs (`incoming.port_mapping`).
    pub port_mapping: Vec<(u16, u16)>,
    pub on_concurrent_steal: Option<ConcurrentSteal>,
    pub copy_target: Option<bool>,
    pub scale_down: Option<bool>,
    /// `feature.network.incoming` is `off` (or `false`): a process gets no traffic, only
    /// what else it asks of the target.
    pub incoming_off: bool,
    pub env: Option<EnvFile>,
    pub outgoing: Option<OutgoingFile>,
    pub dns: Option<DnsFile>,
    pub fs: Option<fs::FsFile>,
    /// `profile`: the operator profile the session works under.
    pub profile: Option<String>,
    /// Keys present that this project does not implement, for the warning.
    pub ignored: Vec<String>,
}

impl FileConfig {
    /// The keys that set what `exec`'s process gets of the target (for the commands that
    /// start no process, which say they ignore them).
    pub fn context_keys(&self) -> Vec<&'static str> {
        [
            (self.env.is_some(), "feature.env"),
            (self.outgoing.is_some(), "feature.network.outgoing"),
            (self.dns.is_some(), "feature.network.dns"),
            (self.fs.is_some(), "feature.fs"),
        ]
        .into_iter()
        .filter_map(|(set, key)| set.then_some(key))
        .collect()
    }
}

/// The file to read: `explicit` (`-f`/`MIRRORD_CONFIG_FILE`), else `.mirrord/mirrord.json`
/// under `cwd` if it exists.
pub fn locate(explicit: Option<PathBuf>, cwd: &Path) -> Option<PathBuf> {
    explicit.or_else(|| {
        let default = cwd.join(".mirrord").join("mirrord.json");
        default.is_file().then_some(default)
    })
}

pub fn load(path: &Path) -> Result<FileConfig, FileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.into(),
        source,
    })?;
    let value = read(path, &text)?;
    parse(&value)
        .map_err(|(key, problem)| FileError::Key {
            path: path.into(),
            key,
            problem,
        })
        .map(|c| FileConfig {
            path: path.into(),
            ..c
        })
}

/// The file's text as a value, by its extension.
fn read(path: &Path, text: &str) -> Result<Value, FileError> {
    let syntax = |format, message: String| FileError::Syntax {
        path: path.into(),
        format,
        message,
    };
    match path.extension().and_then(|e| e.to_str()) {
        Some("json") | None => json(text).map_err(|e| syntax("JSON", e)),
        Some("toml") => toml::from_str(text).map_err(|e| syntax("TOML", e.to_string())),
        Some("yaml" | "yml") => {
            serde_yaml_ng::from_str(text).map_err(|e| syntax("YAML", e.to_string()))
        }
        Some(_) => Err(FileError::Format { path: path.into() }),
    }
}

/// JSON, plus the `//` and `/* */` comments and trailing commas mirrord's docs print.
fn json(text: &str) -> Result<Value, String> {
    let options = jsonc_parser::ParseOptions {
        allow_comments: true,
        allow_trailing_commas: true,
        allow_loose_object_property_names: false,
        allow_missing_commas: false,
        allow_single_quoted_strings: false,
        allow_hexadecimal_numbers: false,
        allow_unary_plus_numbers: false,
        allow_bare_decimal_point_numbers: false,
        allow_non_finite_numbers: false,
        allow_extended_string_escapes: false,
    };
    jsonc_parser::parse_to_serde_value::<Value>(text, &options).map_err(|e| e.to_string())
}

type Problem = (String, String);

fn problem(key: &str, what: impl Into<String>) -> Problem {
    (key.to_owned(), what.into())
}

/// The file's value as a [`FileConfig`] (`path` left empty).
pub fn parse(root: &Value) -> Result<FileConfig, Problem> {
    let mut c = FileConfig::default();
    if root.is_null() {
        return Ok(c);
    }
    let root = object(root, "(top level)")?;
    for (k, v) in root {
        match k.as_str() {
            "target" => target(v, &mut c)?,
            "profile" => c.profile = Some(string(v, "profile")?),
            "feature" => feature(v, &mut c)?,
            other => c.ignored.push(other.to_owned()),
        }
    }
    Ok(c)
}

fn object<'a>(v: &'a Value, key: &str) -> Result<&'a Map<String, Value>, Problem> {
    v.as_object()
        .ok_or_else(|| problem(key, format!("expected an object, found {v}")))
}

fn string(v: &Value, key: &str) -> Result<String, Problem> {
    v.as_str()
        .map(str::to_owned)
        .ok_or_else(|| problem(key, format!("expected a string, found {v}")))
}

fn boolean(v: &Value, key: &str) -> Result<bool, Problem> {
    v.as_bool()
        .ok_or_else(|| problem(key, format!("expected true or false, found {v}")))
}

fn port(v: &Value, key: &str) -> Result<u16, Problem> {
    v.as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .ok_or_else(|| problem(key, format!("expected a port number (1-65535), found {v}")))
}

fn ports(v: &Value, key: &str) -> Result<Vec<u16>, Problem> {
    match v {
        // mirrord accepts one port where it takes a list.
        Value::Number(_) => Ok(vec![port(v, key)?]),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, p)| port(p, &format!("{key}[{i}]")))
            .collect(),
        _ => Err(problem(key, format!("expected a list of ports, found {v}"))),
    }
}

/// The kinds mirrord names in a target object (`{"deployment": "api"}`), as paths name them.
const TARGET_KINDS: [(&str, &str); 9] = [
    ("pod", "pod"),
    ("deployment", "deployment"),
    ("rollout", "rollout"),
    ("job", "job"),
    ("cron_job", "cronjob"),
    ("stateful_set", "statefulset"),
    ("service", "service"),
    ("replica_set", "replicaset"),
    ("labels", "labels"),
];

/// `"deployment/api"`, `{"deployment": "api", "container": "app"}`, or
/// `{"path": <either>, "namespace": "ns"}`.
fn target(v: &Value, c: &mut FileConfig) -> Result<(), Problem> {
    if v.is_string() {
        return target_path(&string(v, "target")?, "target", c);
    }
    let obj = object(v, "target")?;
    if obj.keys().any(|k| TARGET_KINDS.iter().any(|(t, _)| t == k)) {
        return target_object(obj, "target", c);
    }
    for (k, v) in obj {
        let key = format!("target.{k}");
        match k.as_str() {
            "path" if v.is_string() => target_path(&string(v, &key)?, &key, c)?,
            "path" => target_object(object(v, &key)?, &key, c)?,
            "namespace" => c.namespace = Some(string(v, &key)?),
            _ => c.ignored.push(key),
        }
    }
    Ok(())
}

/// `{"deployment": "api", "container": "app"}`.
fn target_object(obj: &Map<String, Value>, key: &str, c: &mut FileConfig) -> Result<(), Problem> {
    for (k, v) in obj {
        let k2 = format!("{key}.{k}");
        match TARGET_KINDS.iter().find(|(t, _)| t == k) {
            Some((_, "labels")) => {
                return Err(problem(
                    &k2,
                    "a target chosen by labels is not supported by this operator; name the workload (e.g. `deployment/api`)",
                ))
            }
            Some((_, kind)) => c.target = Some(format!("{kind}/{}", string(v, &k2)?)),
            None if k == "container" => c.container = Some(container(v, &k2)?),
            None => return Err(problem(&k2, "not a key of mirrord's target")),
        }
    }
    if c.target.is_none() {
        return Err(problem(key, "names no target"));
    }
    Ok(())
}

fn container(v: &Value, key: &str) -> Result<String, Problem> {
    let name = string(v, key)?;
    if name.is_empty() || name.contains('/') {
        return Err(problem(key, format!("`{name}` is not a container name")));
    }
    Ok(name)
}

/// `kind/name`, or `kind/name/container/c`.
fn target_path(p: &str, key: &str, c: &mut FileConfig) -> Result<(), Problem> {
    let parts: Vec<&str> = p.split('/').collect();
    match parts[..] {
        [kind, name] if !kind.is_empty() && !name.is_empty() => {
            c.target = Some(p.to_owned());
        }
        [kind, name, "container", cont] if !kind.is_empty() && !name.is_empty() => {
            c.target = Some(format!("{kind}/{name}"));
            c.container = Some(container(&Value::from(cont), key)?);
        }
        // mirrord's no target: `exec` gets a pod of its own (its network and names).
        ["targetless"] => c.target = Some(p.to_owned()),
        _ => {
            return Err(problem(
                key,
                format!("`{p}` is not a target path like `deployment/api` or `deployment/api/container/app`"),
            ))
        }
    }
    Ok(())
}

fn feature(v: &Value, c: &mut FileConfig) -> Result<(), Problem> {
    for (k, v) in object(v, "feature")? {
        match k.as_str() {
            "network" => network(v, c)?,
            "copy_target" => copy_target(v, c)?,
            "env" => context::env(v, c)?,
            "fs" => fs::fs(v, c)?,
            _ => c.ignored.push(format!("feature.{k}")),
        }
    }
    Ok(())
}

fn network(v: &Value, c: &mut FileConfig) -> Result<(), Problem> {
    if v.is_boolean() {
        return Ok(());
    }
    for (k, v) in object(v, "feature.network")? {
        match k.as_str() {
            "incoming" => incoming::incoming(v, c)?,
            "outgoing" => context::outgoing(v, c)?,
            "dns" => context::dns(v, c)?,
            _ => c.ignored.push(format!("feature.network.{k}")),
        }
    }
    Ok(())
}

/// `true`, or `{"scale_down": true}` (mirrord's `enabled` too).
fn copy_target(v: &Value, c: &mut FileConfig) -> Result<(), Problem> {
    const KEY: &str = "feature.copy_target";
    if v.is_boolean() {
        c.copy_target = Some(boolean(v, KEY)?);
        return Ok(());
    }
    c.copy_target = Some(true);
    for (k, v) in object(v, KEY)? {
        let key = format!("{KEY}.{k}");
        match k.as_str() {
            "scale_down" => c.scale_down = Some(boolean(v, &key)?),
            "enabled" => c.copy_target = Some(boolean(v, &key)?),
            _ => c.ignored.push(key),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirrord_protocol::BodyFilterSpec;
    use serde_json::json;

    #[test]
    fn a_file_written_as_mirrords_docs_show_it() {
        let c = parse(&json!({
            "target": { "path": "deployment/api", "namespace": "shop" },
            "feature": {
                "network": {
                    "incoming": {
                        "mode": "steal",
                        "http_filter": { "header_filter": "^x-user: alice$" },
                        "port_mapping": [[9090, 80]],
                        "ports": [80],
                        "on_concurrent_steal": "continue"
                    },
                    "outgoing": true,
                    "dns": true
                },
                "fs": "read",
                "env": true,
                "copy_target": { "scale_down": true }
            },
            "agent": { "ttl": 30 }
        }))
        .unwrap();
        assert_eq!(c.target.as_deref(), Some("deployment/api"));
        assert_eq!(c.namespace.as_deref(), Some("shop"));
        assert_eq!(c.mode, Some(PortMode::Steal));
        assert_eq!(c.filter.as_ref().unwrap().header, ["^x-user: alice$"]);
        // No `http_filter.ports`: every port (mirrord since 3.181.0).
        assert_eq!(c.filter_ports, None);
        assert_eq!(c.ports, [80]);
        assert_eq!(c.port_mapping, [(9090, 80)]);
        assert_eq!(c.on_concurrent_steal, Some(ConcurrentSteal::Continue));
        assert_eq!((c.copy_target, c.scale_down), (Some(true), Some(true)));
        let mut ignored = c.ignored.clone();
        ignored.sort();
        assert_eq!(ignored, ["agent"]);
        assert_eq!(c.fs.unwrap().mode, mirrord_layer_proto::FsMode::Read);
    }

    #[test]
    fn shorthands_mirrord_accepts() {
        let c = parse(&json!({
            "target": "pod/api-7d9/container/main",
            "feature": { "network": { "incoming": "mirror" }, "copy_target": true }
        }))
        .unwrap();
        assert_eq!(c.target.as_deref(), Some("pod/api-7d9"));
        assert_eq!(c.container.as_deref(), Some("main"));
        assert_eq!(c.mode, Some(PortMode::Mirror));
        assert_eq!(c.copy_target, Some(true));
        assert!(c.ignored.is_empty());
        let c = parse(&json!({"target": {"path": {"deployment": "api"}}})).unwrap();
        assert_eq!(c.target.as_deref(), Some("deployment/api"));
        let c = parse(&json!({"target": {"stateful_set": "db", "container": "pg"}})).unwrap();
        assert_eq!(
            (c.target.as_deref(), c.container.as_deref()),
            (Some("statefulset/db"), Some("pg"))
        );
        let c =
            parse(&json!({"target": {"path": {"pod": "p", "container": "c"}, "namespace": "n"}}))
                .unwrap();
        assert_eq!(
            (
                c.target.as_deref(),
                c.container.as_deref(),
                c.namespace.as_deref()
            ),
            (Some("pod/p"), Some("c"), Some("n"))
        );
    }

    #[test]
    fn any_of_and_all_of_become_the_filters_any_and_all() {
        let any = json!({"feature": {"network": {"incoming": {"http_filter": {
            "any_of": [{"path": "^/api/"}, {"header": "^x-debug: 1$"}], "ports": 9000
        }}}}});
        let c = parse(&any).unwrap();
        let f = c.filter.unwrap();
        assert!(f.any);
        assert_eq!(
            (f.header, f.path),
            (vec!["^x-debug: 1$".to_owned()], vec!["^/api/".to_owned()])
        );
        assert_eq!(c.filter_ports, Some(vec![9000]));
        let all = json!({"feature": {"network": {"incoming": {"http_filter": {
            "all_of": [{"path": "^/api/"}, {"header": "^x-debug: 1$"}]
        }}}}});
        assert!(!parse(&all).unwrap().filter.unwrap().any);
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                json!({"feature": {"network": {"incoming": {"mode": "stael"}}}}),
                "feature.network.incoming.mode",
            ),
            (
                json!({"feature": {"network": {"incoming": {"http_filter": {"header_filter_jq": "."}}}}}),
                "feature.network.incoming.http_filter.header_filter_jq",
            ),
            (
                json!({"feature": {"network": {"incoming": {"http_filter": {"header_filter": {"query": "."}}}}}}),
                "feature.network.incoming.http_filter.header_filter",
            ),
            (
                json!({"feature": {"network": {"incoming": {"http_filter": {"header_filter": ""}}}}}),
                "feature.network.incoming.http_filter.header_filter",
            ),
            (
                json!({"feature": {"network": {"incoming": {"http_filter": {"body_filter": {"body": "xml", "query": "$", "matches": "x"}}}}}}),
                "feature.network.incoming.http_filter.body_filter.body",
            ),
            (
                json!({"feature": {"network": {"incoming": {"http_filter": {"header_filter": "a", "any_of": [{"path": "b"}]}}}}}),
                "feature.network.incoming.http_filter.header_filter",
            ),
            (
                json!({"feature": {"network": {"incoming": {"ports": [80], "ignore_ports": [80]}}}}),
                "feature.network.incoming.ignore_ports",
            ),
            (json!({"target": {"labels": {"app": "x"}}}), "target.labels"),
            (
                json!({"feature": {"network": {"incoming": {"port_mapping": [[9090]]}}}}),
                "feature.network.incoming.port_mapping[0]",
            ),
            (
                json!({"feature": {"network": {"incoming": {"ports": [80, 70000]}}}}),
                "feature.network.incoming.ports[1]",
            ),
            (json!({"target": "api"}), "target"),
            (
                json!({"feature": {"network": {"incoming": {"http_filter": {"all_of": []}}}}}),
                "feature.network.incoming.http_filter",
            ),
            (
                json!({"feature": {"network": {"incoming": {"stael": true}}}}),
                "feature.network.incoming.stael",
            ),
        ];
        for (value, key) in cases {
            let (k, why) = parse(&value).unwrap_err();
            assert_eq!(k, key, "{value}: {why}");
        }
    }

    #[test]
    fn method_and_body_filters() {
        let c = parse(
            &json!({"feature": {"network": {"incoming": {"http_filter": {
                "method_filter": ["POST", "PUT"]
            }}}}}),
        )
        .unwrap();
        let f = c.filter.unwrap();
        assert_eq!(
            (f.method.clone(), f.any),
            (vec!["POST".into(), "PUT".into()], true)
        );
        let c = parse(
            &json!({"feature": {"network": {"incoming": {"http_filter": {
                "method_filter": "post"
            }}}}}),
        )
        .unwrap();
        assert_eq!(c.filter.unwrap().method, ["post"]);
        let c = parse(
            &json!({"feature": {"network": {"incoming": {"http_filter": {
                "body_filter": {"body": "json", "query": "$.user", "matches": "^alice$"}
            }}}}}),
        )
        .unwrap();
        assert_eq!(
            c.filter.unwrap().body,
            [BodyFilterSpec {
                query: "$.user".into(),
                matches: "^alice$".into()
            }]
        );
        let c = parse(&json!({"feature": {"network": {"incoming": {"http_filter": {
            "all_of": [{"path": "/buildings"}, {"body": "json", "query": "$.a", "matches": "1"}, {"method": "POST"}]
        }}}}}))
        .unwrap();
        let f = c.filter.unwrap();
        assert_eq!(
            (f.path.len(), f.body.len(), f.method.len(), f.any),
            (1, 1, 1, false)
        );
    }

    /// mirrord's docs print JSON with comments and trailing commas; YAML is read as
    /// mirrord reads it; errors keep their line and column.
    #[test]
    fn jsonc_and_yaml_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mirrord.json");
        std::fs::write(
            &p,
            "{\n  // a comment\n  \"target\": \"deployment/api\", /* more */\n  \"feature\": {\"network\": {\"incoming\": {\"mode\": \"steal\", // can also be \"mirror\"\n  \"ports\": [80,],},},},\n}\n",
        )
        .unwrap();
        let c = load(&p).unwrap();
        assert_eq!(
            (c.target.as_deref(), c.ports),
            (Some("deployment/api"), vec![80])
        );
        std::fs::write(
            &p,
            "{\n  \"target\": \"deployment/api\"\n  \"feature\": {}\n}",
        )
        .unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(e.contains("Expected comma on line 2 column 29"), "{e}");
        let y = dir.path().join("mirrord.yaml");
        std::fs::write(
            &y,
            "target: deployment/api\nfeature:\n  network:\n    incoming:\n      mode: steal\n      ports: [80]\n",
        )
        .unwrap();
        let c = load(&y).unwrap();
        assert_eq!((c.mode, c.ports), (Some(PortMode::Steal), vec![80]));
        std::fs::write(&y, "target: [\n").unwrap();
        let e = load(&y).unwrap_err().to_string();
        assert!(e.contains("YAML") && e.contains("line"), "{e}");
    }

    #[test]
    fn the_default_file_is_found_only_where_mirrord_puts_it() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(locate(None, dir.path()), None);
        std::fs::create_dir(dir.path().join(".mirrord")).unwrap();
        std::fs::write(dir.path().join(".mirrord/mirrord.json"), "{}").unwrap();
        let found = locate(None, dir.path()).unwrap();
        assert!(found.ends_with(".mirrord/mirrord.json"));
        let explicit = PathBuf::from("/x/other.json");
        assert_eq!(locate(Some(explicit.clone()), dir.path()), Some(explicit));
    }

    #[test]
    fn toml_files_read_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mirrord.toml");
        std::fs::write(
            &p,
            "target = \"deployment/api\"\n[feature.network.incoming]\nmode = \"steal\"\nports = [80]\n",
        )
        .unwrap();
        let c = load(&p).unwrap();
        assert_eq!(
            (c.target.as_deref(), c.mode, c.ports),
            (Some("deployment/api"), Some(PortMode::Steal), vec![80])
        );
        std::fs::write(&p, "target = ").unwrap();
        assert!(matches!(load(&p), Err(FileError::Syntax { .. })));
    }
}
