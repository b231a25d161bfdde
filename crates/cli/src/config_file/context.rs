//! `feature.env`, `feature.network.outgoing` and `feature.network.dns`: what `exec`'s
//! process gets of the target besides its traffic, as mirrord reads these keys.
//!
//! - `env`: `true`/`false`, or `{"include", "exclude", "override", "env_file", "unset",
//!   "mapping"}`; `include`/`exclude` are globs (`*`, `?`), a list or one `;`-separated
//!   string; `mapping`'s keys are regexes over names (mirrord's fancy-regex syntax).
//! - `outgoing`: `true`/`false`, or `{"tcp", "udp", "filter": {"local"|"remote": [...]}}`.
//! - `dns`: `true`/`false`, or `{"enabled", "filter": {"local"|"remote": [...]}}`.
//!
//! A key that would widen what reaches the target and that is not understood is an error,
//! like incoming traffic's: ignoring it could send what the file keeps local.

use super::{boolean, object, problem, string, FileConfig, Problem};
use mirrord_layer_proto::{AddressFilter, AddressRule};
use serde_json::Value;
use std::path::PathBuf;

/// `feature.env`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EnvFile {
    pub enabled: bool,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub overrides: Vec<(String, String)>,
    pub env_file: Option<PathBuf>,
    pub unset: Vec<String>,
    /// `mapping`: (pattern over names, the value of every variable it matches).
    pub mapping: Vec<(String, String)>,
}

/// `feature.network.outgoing`.
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingFile {
    pub tcp: bool,
    pub udp: bool,
    pub filter: Option<AddressFilter>,
}

/// `feature.network.dns`.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsFile {
    pub enabled: bool,
    pub filter: Option<AddressFilter>,
}

const ENV: &str = "feature.env";
const OUTGOING: &str = "feature.network.outgoing";
const DNS: &str = "feature.network.dns";

pub(super) fn env(v: &Value, c: &mut FileConfig) -> Result<(), Problem> {
    let mut e = EnvFile {
        enabled: true,
        ..EnvFile::default()
    };
    if v.is_boolean() {
        e.enabled = boolean(v, ENV)?;
        c.env = Some(e);
        return Ok(());
    }
    for (k, v) in object(v, ENV)? {
        let key = format!("{ENV}.{k}");
        match k.as_str() {
            "include" => e.include = globs(v, &key)?,
            "exclude" => e.exclude = globs(v, &key)?,
            "override" => {
                for (name, value) in object(v, &key)? {
                    e.overrides
                        .push((name.clone(), string(value, &format!("{key}.{name}"))?));
                }
            }
            "env_file" => e.env_file = Some(PathBuf::from(string(v, &key)?)),
            "unset" => e.unset = globs(v, &key)?,
            "mapping" => {
                for (pattern, value) in object(v, &key)? {
                    let at = format!("{key}.{pattern}");
                    if let Err(err) = fancy_regex::Regex::new(pattern) {
                        return Err(problem(&at, format!("not a valid regex: {err}")));
                    }
                    e.mapping.push((pattern.clone(), string(value, &at)?));
                }
            }
            // Only how mirrord's IDE plugins load the variables: nothing to do here.
            "load_from_process" => {
                boolean(v, &key)?;
            }
            _ => c.ignored.push(key),
        }
    }
    if !e.include.is_empty() && !e.exclude.is_empty() {
        return Err(problem(
            &format!("{ENV}.include"),
            "`include` and `exclude` cannot both be given (mirrord refuses it too): keep one",
        ));
    }
    c.env = Some(e);
    Ok(())
}

/// A list of names or globs, or one `;`-separated string.
fn globs(v: &Value, key: &str) -> Result<Vec<String>, Problem> {
    match v {
        Value::String(s) => Ok(s
            .split(';')
            .filter(|g| !g.is_empty())
            .map(str::to_owned)
            .collect()),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, g)| string(g, &format!("{key}[{i}]")))
            .collect(),
        _ => Err(problem(
            key,
            format!("expected a list of names or a `;`-separated string, found {v}"),
        )),
    }
}

pub(super) fn outgoing(v: &Value, c: &mut FileConfig) -> Result<(), Problem> {
    let mut o = OutgoingFile {
        tcp: true,
        udp: true,
        filter: None,
    };
    if v.is_boolean() {
        let on = boolean(v, OUTGOING)?;
        (o.tcp, o.udp) = (on, on);
        c.outgoing = Some(o);
        return Ok(());
    }
    for (k, v) in object(v, OUTGOING)? {
        let key = format!("{OUTGOING}.{k}");
        match k.as_str() {
            "tcp" => o.tcp = boolean(v, &key)?,
            "udp" => o.udp = boolean(v, &key)?,
            "filter" => o.filter = Some(filter(v, &key)?),
            // mirrord's deprecated switch: loopback stays local here unless a `remote`
            // filter names it, so only `false` (the default) can be honoured.
            "ignore_localhost" if v == &Value::Bool(false) => {}
            "ignore_localhost" => {
                return Err(problem(
                    &key,
                    "loopback always stays local here unless the `remote` filter names it; drop this key",
                ))
            }
            _ => c.ignored.push(key),
        }
    }
    c.outgoing = Some(o);
    Ok(())
}

pub(super) fn dns(v: &Value, c: &mut FileConfig) -> Result<(), Problem> {
    let mut d = DnsFile {
        enabled: true,
        filter: None,
    };
    if v.is_boolean() {
        d.enabled = boolean(v, DNS)?;
        c.dns = Some(d);
        return Ok(());
    }
    for (k, v) in object(v, DNS)? {
        let key = format!("{DNS}.{k}");
        match k.as_str() {
            "enabled" => d.enabled = boolean(v, &key)?,
            "filter" => d.filter = Some(filter(v, &key)?),
            _ => return Err(problem(&key, "not a key of mirrord's `dns`")),
        }
    }
    c.dns = Some(d);
    Ok(())
}

/// `{"local": [...]}` or `{"remote": [...]}` (one of them), entries in mirrord's grammar.
fn filter(v: &Value, key: &str) -> Result<AddressFilter, Problem> {
    let obj = object(v, key)?;
    let mut found = None;
    for (k, v) in obj {
        let k2 = format!("{key}.{k}");
        let list: Vec<Value> = match v {
            Value::Array(a) => a.clone(),
            Value::String(_) => vec![v.clone()],
            _ => {
                return Err(problem(
                    &k2,
                    format!("expected a list of addresses, found {v}"),
                ))
            }
        };
        let rules = list
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let k3 = format!("{k2}[{i}]");
                AddressRule::parse(&string(r, &k3)?).map_err(|e| problem(&k3, e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let f = match k.as_str() {
            "local" => AddressFilter::Local(rules),
            "remote" => AddressFilter::Remote(rules),
            _ => return Err(problem(&k2, "expected `local` or `remote`")),
        };
        if found.replace(f).is_some() {
            return Err(problem(key, "give `local` or `remote`, not both"));
        }
    }
    found.ok_or_else(|| problem(key, "expected `local` or `remote`"))
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;
    use serde_json::json;

    #[test]
    fn the_docs_examples_read_as_mirrord_reads_them() {
        let c = parse(&json!({"feature": {
            "env": {
                "include": "DATABASE_USER;PUBLIC_ENV;MY_APP_*",
                "override": {"DATABASE_CONNECTION": "db://localhost:7777/my-db", "LOCAL_BEAR": "panda"},
                "env_file": ".env.local",
                "unset": ["AWS_PROFILE"]
            },
            "network": {
                "outgoing": {"tcp": true, "udp": false, "filter": {"remote": ["1.1.1.0/24:1337", "google.com", ":53"]}},
                "dns": {"enabled": true, "filter": {"local": ["internal.corp"]}}
            }
        }}))
        .unwrap();
        let e = c.env.unwrap();
        assert_eq!(e.include, ["DATABASE_USER", "PUBLIC_ENV", "MY_APP_*"]);
        assert_eq!(e.overrides.len(), 2);
        assert_eq!(e.env_file, Some(PathBuf::from(".env.local")));
        assert_eq!(e.unset, ["AWS_PROFILE"]);
        assert!(e.mapping.is_empty());
        let o = c.outgoing.unwrap();
        assert!(o.tcp && !o.udp);
        assert!(matches!(o.filter, Some(AddressFilter::Remote(r)) if r.len() == 3));
        let d = c.dns.unwrap();
        assert!(d.enabled && matches!(d.filter, Some(AddressFilter::Local(_))));
        assert!(c.ignored.is_empty(), "{:?}", c.ignored);
    }

    #[test]
    fn switches_and_errors() {
        let c = parse(
            &json!({"feature": {"env": false, "network": {"outgoing": false, "dns": false}}}),
        )
        .unwrap();
        assert!(!c.env.unwrap().enabled);
        let o = c.outgoing.unwrap();
        assert!(!o.tcp && !o.udp);
        assert!(!c.dns.unwrap().enabled);
        let cases = [
            (
                json!({"feature": {"env": {"include": "A", "exclude": "B"}}}),
                "feature.env.include",
            ),
            (
                json!({"feature": {"env": {"override": {"A": 1}}}}),
                "feature.env.override.A",
            ),
            (
                json!({"feature": {"network": {"outgoing": {"filter": {"remote": ["1.2.3.4/99"]}}}}}),
                "feature.network.outgoing.filter.remote[0]",
            ),
            (
                json!({"feature": {"network": {"outgoing": {"filter": {"local": [], "remote": []}}}}}),
                "feature.network.outgoing.filter",
            ),
            (
                json!({"feature": {"network": {"dns": {"filtre": {}}}}}),
                "feature.network.dns.filtre",
            ),
            (
                json!({"feature": {"network": {"outgoing": {"ignore_localhost": true}}}}),
                "feature.network.outgoing.ignore_localhost",
            ),
        ];
        for (value, key) in cases {
            let (k, why) = parse(&value).unwrap_err();
            assert_eq!(k, key, "{value}: {why}");
        }
    }

    #[test]
    fn env_mapping_is_read_and_a_bad_pattern_is_named() {
        let c = parse(&json!({"feature": {"env": {"mapping": {
            ".+_TIMEOUT": "10000",
            "LOG_.+_VERBOSITY": "debug"
        }}}}))
        .unwrap();
        let mut m = c.env.unwrap().mapping;
        m.sort();
        assert_eq!(
            m,
            [
                (".+_TIMEOUT".to_owned(), "10000".to_owned()),
                ("LOG_.+_VERBOSITY".to_owned(), "debug".to_owned())
            ]
        );
        assert!(c.ignored.is_empty(), "{:?}", c.ignored);
        let (key, why) =
            parse(&json!({"feature": {"env": {"mapping": {"(unclosed": "x"}}}})).unwrap_err();
        assert_eq!(key, "feature.env.mapping.(unclosed", "{why}");
        assert!(why.contains("regex"), "{why}");
        let (key, _) = parse(&json!({"feature": {"env": {"mapping": {"A": 1}}}})).unwrap_err();
        assert_eq!(key, "feature.env.mapping.A");
    }
}
