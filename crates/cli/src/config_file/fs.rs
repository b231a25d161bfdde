//! `feature.fs`: the target's files, as mirrord reads the key.
//!
//! `"read"` (a mode), `true`/`false` (`read`/`local`), or `{"mode", "read_only", "read_write", "local",
//! "not_found"}`; each list is a regex or a list of regexes (mirrord's `regex` syntax, matched case-insensitively
//! against the absolute path). Keys that only tune mirrord's own client (`readonly_file_buffer`, ...) are named in
//! the warning; `mapping` (reading another remote path than the one named) is too.

use super::{object, problem, string, FileConfig, Problem};
use mirrord_layer_proto::FsMode;
use serde_json::Value;

const FS: &str = "feature.fs";

/// `feature.fs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsFile {
    pub mode: FsMode,
    pub read_only: Vec<String>,
    pub read_write: Vec<String>,
    pub local: Vec<String>,
    pub not_found: Vec<String>,
}

impl Default for FsFile {
    /// mirrord's default: read the target's files.
    fn default() -> Self {
        Self {
            mode: FsMode::Read,
            read_only: Vec::new(),
            read_write: Vec::new(),
            local: Vec::new(),
            not_found: Vec::new(),
        }
    }
}

/// A mode's name as mirrord spells it.
pub fn mode(s: &str) -> Option<FsMode> {
    Some(match s {
        "local" => FsMode::Local,
        "localwithoverrides" => FsMode::LocalWithOverrides,
        "read" => FsMode::Read,
        "write" => FsMode::Write,
        _ => return None,
    })
}

fn mode_of(v: &Value, key: &str) -> Result<FsMode, Problem> {
    let s = string(v, key)?;
    mode(&s).ok_or_else(|| {
        problem(
            key,
            format!("`{s}` is not a mode; modes are local, localwithoverrides, read and write"),
        )
    })
}

/// A regex or a list of them, each checked.
fn patterns(v: &Value, key: &str) -> Result<Vec<String>, Problem> {
    let list = match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, p)| string(p, &format!("{key}[{i}]")))
            .collect::<Result<_, _>>()?,
        _ => return Err(problem(key, "a regex or a list of regexes")),
    };
    for p in &list {
        if let Err(e) = regex::RegexBuilder::new(p).size_limit(1 << 20).build() {
            return Err(problem(key, format!("`{p}` is not a valid regex: {e}")));
        }
    }
    Ok(list)
}

pub(super) fn fs(v: &Value, c: &mut FileConfig) -> Result<(), Problem> {
    let mut f = FsFile::default();
    match v {
        Value::Bool(on) => f.mode = if *on { FsMode::Read } else { FsMode::Local },
        Value::String(_) => f.mode = mode_of(v, &format!("{FS}.mode"))?,
        _ => {
            for (k, v) in object(v, FS)? {
                let key = format!("{FS}.{k}");
                match k.as_str() {
                    "mode" => f.mode = mode_of(v, &key)?,
                    "read_only" => f.read_only = patterns(v, &key)?,
                    "read_write" => f.read_write = patterns(v, &key)?,
                    "local" => f.local = patterns(v, &key)?,
                    "not_found" => f.not_found = patterns(v, &key)?,
                    _ => c.ignored.push(key),
                }
            }
        }
    }
    c.fs = Some(f);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<FileConfig, Problem> {
        let mut c = FileConfig::default();
        fs(&v, &mut c).map(|()| c)
    }

    #[test]
    fn forms_mirrord_accepts() {
        assert_eq!(
            parse(json!("write")).unwrap().fs.unwrap().mode,
            FsMode::Write
        );
        assert_eq!(parse(json!(false)).unwrap().fs.unwrap().mode, FsMode::Local);
        let c = parse(json!({
            "mode": "localwithoverrides",
            "read_only": "^/etc/app",
            "read_write": ["^/data/.*\\.db$"],
            "not_found": ["secret"],
            "readonly_file_buffer": 4096
        }))
        .unwrap();
        let f = c.fs.unwrap();
        assert_eq!(f.mode, FsMode::LocalWithOverrides);
        assert_eq!(f.read_only, ["^/etc/app"]);
        assert_eq!(f.read_write, ["^/data/.*\\.db$"]);
        assert_eq!(f.not_found, ["secret"]);
        assert_eq!(c.ignored, ["feature.fs.readonly_file_buffer"]);
    }

    #[test]
    fn bad_input_names_the_key() {
        let (key, _) = parse(json!({"mode": "readwrite"})).unwrap_err();
        assert_eq!(key, "feature.fs.mode");
        let (key, what) = parse(json!({"read_only": ["ok", "(unclosed"]})).unwrap_err();
        assert_eq!(key, "feature.fs.read_only");
        assert!(what.contains("(unclosed"), "{what}");
        assert!(parse(json!({"local": 3})).is_err());
    }
}
