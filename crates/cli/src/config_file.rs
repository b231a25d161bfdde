//! The incoming-traffic part of a mirrord configuration file (`.mirrord/mirrord.json`), so
//! a team's existing file works unchanged: the target and namespace,
//! `feature.network.incoming` (mode, `http_filter`, `ports`, `port_mapping`,
//! `on_concurrent_steal`) and `feature.copy_target`.
//!
//! Found like mirrord finds it: `-f FILE`, else `MIRRORD_CONFIG_FILE`, else
//! `.mirrord/mirrord.json` in the current directory. JSON or TOML by extension.
//!
//! Keys mirrord has and this project does not implement (`feature.fs`, `agent`, ...) are
//! named in one warning. A key that would change which requests are stolen and that is not
//! understood (inside `incoming` or `http_filter`) is an error: ignoring it would steal more
//! than the team meant. Every error names the key.

use mirrord_protocol::{ConcurrentSteal, HttpFilterSpec, PortMode};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// mirrord's default for `http_filter.ports`: the filter applies to these ports only.
const DEFAULT_FILTER_PORTS: [u16; 2] = [80, 8080];

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
        "the mirrord config {path}: only .json and .toml files are read (convert YAML to JSON)"
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
    pub target: Option<String>,
    pub namespace: Option<String>,
    pub mode: Option<PortMode>,
    pub filter: Option<HttpFilterSpec>,
    /// The ports the filter applies to (mirrord's `http_filter.ports`, default 80, 8080).
    pub filter_ports: Vec<u16>,
    /// Remote ports to intercept (`incoming.ports`).
    pub ports: Vec<u16>,
    /// `(local, remote)` pairs (`incoming.port_mapping`).
    pub port_mapping: Vec<(u16, u16)>,
    pub on_concurrent_steal: Option<ConcurrentSteal>,
    pub copy_target: Option<bool>,
    pub scale_down: Option<bool>,
    /// Keys present that this project does not implement, for the warning.
    pub ignored: Vec<String>,
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
    let syntax = |format, message: String| FileError::Syntax {
        path: path.into(),
        format,
        message,
    };
    let value: Value = match path.extension().and_then(|e| e.to_str()) {
        Some("json") | None => {
            serde_json::from_str(&text).map_err(|e| syntax("JSON", e.to_string()))?
        }
        Some("toml") => toml::from_str(&text).map_err(|e| syntax("TOML", e.to_string()))?,
        Some(_) => return Err(FileError::Format { path: path.into() }),
    };
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

type Problem = (String, String);

fn problem(key: &str, what: impl Into<String>) -> Problem {
    (key.to_owned(), what.into())
}

/// The file's value as a [`FileConfig`] (`path` left empty).
pub fn parse(root: &Value) -> Result<FileConfig, Problem> {
    let mut c = FileConfig::default();
    let root = object(root, "(top level)")?;
    for (k, v) in root {
        match k.as_str() {
            "target" => target(v, &mut c)?,
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

/// `"deployment/api"`, or `{"path": "deployment/api", "namespace": "ns"}`.
fn target(v: &Value, c: &mut FileConfig) -> Result<(), Problem> {
    if v.is_string() {
        c.target = Some(target_path(&string(v, "target")?, "target", c)?);
        return Ok(());
    }
    for (k, v) in object(v, "target")? {
        let key = format!("target.{k}");
        match k.as_str() {
            "path" if v.is_string() => {
                c.target = Some(target_path(&string(v, &key)?, &key, c)?);
            }
            // mirrord also has `{"path": {"deployment": "api"}}`.
            "path" => {
                let obj = object(v, &key)?;
                let (kind, name) = obj
                    .iter()
                    .find(|(k, _)| *k != "container")
                    .ok_or_else(|| problem(&key, "names no target"))?;
                c.target = Some(format!(
                    "{kind}/{}",
                    string(name, &format!("{key}.{kind}"))?
                ));
                if obj.contains_key("container") {
                    c.ignored.push(format!("{key}.container"));
                }
            }
            "namespace" => c.namespace = Some(string(v, &key)?),
            _ => c.ignored.push(key),
        }
    }
    Ok(())
}

/// `kind/name`, or `kind/name/container/c` (containers are not chosen here).
fn target_path(p: &str, key: &str, c: &mut FileConfig) -> Result<String, Problem> {
    let parts: Vec<&str> = p.split('/').collect();
    match parts[..] {
        [kind, name] if !kind.is_empty() && !name.is_empty() => Ok(p.to_owned()),
        [kind, name, "container", _] if !kind.is_empty() && !name.is_empty() => {
            c.ignored.push(format!("{key} (container part)"));
            Ok(format!("{kind}/{name}"))
        }
        _ => Err(problem(
            key,
            format!("`{p}` is not a target path like `deployment/api`"),
        )),
    }
}

fn feature(v: &Value, c: &mut FileConfig) -> Result<(), Problem> {
    for (k, v) in object(v, "feature")? {
        match k.as_str() {
            "network" => network(v, c)?,
            "copy_target" => copy_target(v, c)?,
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
            "incoming" => incoming(v, c)?,
            _ => c.ignored.push(format!("feature.network.{k}")),
        }
    }
    Ok(())
}

fn mode(v: &Value, key: &str) -> Result<Option<PortMode>, Problem> {
    match v.as_str() {
        Some("steal") => Ok(Some(PortMode::Steal)),
        Some("mirror") => Ok(Some(PortMode::Mirror)),
        Some("off") => Err(problem(
            key,
            "`off`: this file turns incoming traffic off, so there is no session to open",
        )),
        _ => Err(problem(
            key,
            format!("expected steal, mirror or off, found {v}"),
        )),
    }
}

fn incoming(v: &Value, c: &mut FileConfig) -> Result<(), Problem> {
    const KEY: &str = "feature.network.incoming";
    match v {
        Value::String(_) => {
            c.mode = mode(v, KEY)?;
            return Ok(());
        }
        Value::Bool(true) => return Ok(()),
        Value::Bool(false) => return Err(problem(KEY, "false: incoming traffic is off")),
        _ => {}
    }
    for (k, v) in object(v, KEY)? {
        let key = format!("{KEY}.{k}");
        match k.as_str() {
            "mode" => c.mode = mode(v, &key)?,
            "http_filter" => http_filter(v, &key, c)?,
            "ports" => c.ports = ports(v, &key)?,
            "port_mapping" => c.port_mapping = port_mapping(v, &key)?,
            "on_concurrent_steal" => {
                c.on_concurrent_steal = Some(match v.as_str() {
                    Some("abort") => ConcurrentSteal::Abort,
                    Some("continue") => ConcurrentSteal::Continue,
                    Some("override") => ConcurrentSteal::Override,
                    _ => {
                        return Err(problem(
                            &key,
                            format!("expected abort, continue or override, found {v}"),
                        ))
                    }
                })
            }
            // mirrord keys about the local side that do not change what is stolen.
            "ignore_localhost" | "listen_ports" | "ignore_ports" | "tls_delivery"
            | "https_delivery" => c.ignored.push(key),
            _ => {
                return Err(problem(
                    &key,
                    "not a key of mirrord's incoming configuration",
                ))
            }
        }
    }
    Ok(())
}

/// `[[local, remote], ...]`.
fn port_mapping(v: &Value, key: &str) -> Result<Vec<(u16, u16)>, Problem> {
    let list = v
        .as_array()
        .ok_or_else(|| problem(key, format!("expected [[local, remote], ...], found {v}")))?;
    list.iter()
        .enumerate()
        .map(|(i, pair)| {
            let k = format!("{key}[{i}]");
            match pair.as_array().map(Vec::as_slice) {
                Some([l, r]) => Ok((port(l, &k)?, port(r, &k)?)),
                _ => Err(problem(
                    &k,
                    format!("expected [local, remote], found {pair}"),
                )),
            }
        })
        .collect()
}

fn http_filter(v: &Value, key: &str, c: &mut FileConfig) -> Result<(), Problem> {
    let mut f = HttpFilterSpec::default();
    let mut composite = None;
    c.filter_ports = DEFAULT_FILTER_PORTS.to_vec();
    for (k, v) in object(v, key)? {
        let k2 = format!("{key}.{k}");
        match k.as_str() {
            "header_filter" => f.header.push(string(v, &k2)?),
            "path_filter" => f.path.push(string(v, &k2)?),
            "all_of" | "any_of" => {
                if composite.replace(k.as_str()).is_some() {
                    return Err(problem(&k2, "all_of and any_of cannot both be set"));
                }
                inner_filters(v, &k2, &mut f)?;
                f.any = k == "any_of";
            }
            "ports" => c.filter_ports = ports(v, &k2)?,
            _ => return Err(problem(
                &k2,
                "not a filter this operator knows; refusing rather than stealing more than meant",
            )),
        }
    }
    if composite.is_some() && f.header.is_empty() && f.path.is_empty() {
        return Err(problem(key, "all_of/any_of cannot be an empty list"));
    }
    if composite.is_some() && v.get("header_filter").or(v.get("path_filter")).is_some() {
        return Err(problem(
            key,
            "header_filter/path_filter and all_of/any_of cannot be combined: say it in one of them",
        ));
    }
    if !f.is_empty() {
        c.filter = Some(f);
    }
    Ok(())
}

/// `[{"header": "..."}, {"path": "..."}]`.
fn inner_filters(v: &Value, key: &str, f: &mut HttpFilterSpec) -> Result<(), Problem> {
    let list = v
        .as_array()
        .ok_or_else(|| problem(key, format!("expected a list of filters, found {v}")))?;
    for (i, item) in list.iter().enumerate() {
        let k = format!("{key}[{i}]");
        let obj = object(item, &k)?;
        match (obj.len(), obj.get("header"), obj.get("path")) {
            (1, Some(h), None) => f.header.push(string(h, &format!("{k}.header"))?),
            (1, None, Some(p)) => f.path.push(string(p, &format!("{k}.path"))?),
            _ => {
                return Err(problem(
                    &k,
                    format!("expected {{\"header\": REGEX}} or {{\"path\": REGEX}}, found {item}"),
                ))
            }
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
        assert_eq!(c.filter_ports, [80, 8080]);
        assert_eq!(c.ports, [80]);
        assert_eq!(c.port_mapping, [(9090, 80)]);
        assert_eq!(c.on_concurrent_steal, Some(ConcurrentSteal::Continue));
        assert_eq!((c.copy_target, c.scale_down), (Some(true), Some(true)));
        let mut ignored = c.ignored.clone();
        ignored.sort();
        assert_eq!(
            ignored,
            [
                "agent",
                "feature.env",
                "feature.fs",
                "feature.network.dns",
                "feature.network.outgoing"
            ]
        );
    }

    #[test]
    fn shorthands_mirrord_accepts() {
        let c = parse(&json!({
            "target": "pod/api-7d9/container/main",
            "feature": { "network": { "incoming": "mirror" }, "copy_target": true }
        }))
        .unwrap();
        assert_eq!(c.target.as_deref(), Some("pod/api-7d9"));
        assert_eq!(c.mode, Some(PortMode::Mirror));
        assert_eq!(c.copy_target, Some(true));
        assert_eq!(c.ignored, ["target (container part)"]);
        let c = parse(&json!({"target": {"path": {"deployment": "api"}}})).unwrap();
        assert_eq!(c.target.as_deref(), Some("deployment/api"));
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
        assert_eq!(c.filter_ports, [9000]);
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
                json!({"feature": {"network": {"incoming": {"http_filter": {"method_filter": "GET"}}}}}),
                "feature.network.incoming.http_filter.method_filter",
            ),
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
