//! `feature.network.incoming` and its `http_filter`, as mirrord 3.250.0 reads them.
//!
//! `http_filter`: `header_filter`, `path_filter` (regexes), `method_filter` (a method; a
//! list of methods, as mirrord's docs print it, means any of them), `body_filter`
//! (`{"body": "json", "query": JSONPath, "matches": regex}`), `all_of` / `any_of` lists of
//! `{"header"}`, `{"path"}`, `{"method"}` or body filters, and `ports`: the ports the filter
//! applies to, **every port when absent** (since mirrord 3.181.0). A filter mirrord has and
//! this operator cannot run (the JQ filters) is an error naming the key: ignoring it would
//! steal more than the file says. So is an empty regex, as in mirrord.

use super::{object, port, ports, problem, string, FileConfig, Problem};
use mirrord_protocol::{BodyFilterSpec, ConcurrentSteal, HttpFilterSpec, PortMode};
use serde_json::Value;

const KEY: &str = "feature.network.incoming";

/// Why JQ filters are refused.
const NO_JQ: &str = "JQ filters are not supported by this operator: a JQ program's cost per request cannot be bounded, and the operator shares its CPU between every user; use a regex (`header_filter`) instead";

fn mode(v: &Value, key: &str) -> Result<Option<PortMode>, Problem> {
    match v.as_str() {
        Some("steal") => Ok(Some(PortMode::Steal)),
        Some("mirror") => Ok(Some(PortMode::Mirror)),
        _ => Err(problem(
            key,
            format!("expected steal, mirror or off, found {v}"),
        )),
    }
}

pub(super) fn incoming(v: &Value, c: &mut FileConfig) -> Result<(), Problem> {
    match v {
        // No traffic: `exec` still gives the process the rest of its context.
        Value::Bool(false) => c.incoming_off = true,
        Value::String(s) if s == "off" => c.incoming_off = true,
        Value::String(_) => c.mode = mode(v, KEY)?,
        Value::Bool(true) => {}
        _ => {}
    }
    if !v.is_object() {
        return Ok(());
    }
    let obj = object(v, KEY)?;
    for (k, v) in obj {
        let key = format!("{KEY}.{k}");
        match k.as_str() {
            "mode" if v.as_str() == Some("off") => c.incoming_off = true,
            "mode" => c.mode = mode(v, &key)?,
            "http_filter" => http_filter(v, &key, c)?,
            "ports" => c.ports = ports(v, &key)?,
            "ignore_ports" => c.ignore_ports = ports(v, &key)?,
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
            "ignore_localhost" | "listen_ports" | "tls_delivery" | "https_delivery" => {
                c.ignored.push(key)
            }
            _ => {
                return Err(problem(
                    &key,
                    "not a key of mirrord's incoming configuration",
                ))
            }
        }
    }
    // mirrord: "Mutually exclusive with ports".
    if let Some(p) = c.ports.iter().find(|p| c.ignore_ports.contains(p)) {
        return Err(problem(
            &format!("{KEY}.ignore_ports"),
            format!("port {p} is also in `ports`; a port is either intercepted or ignored"),
        ));
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

/// A regex of a filter: a string, and not empty (mirrord refuses empty filters too: one
/// would match every request).
fn regex(v: &Value, key: &str) -> Result<String, Problem> {
    if v.is_object() && v.get("query").is_some() {
        return Err(problem(key, NO_JQ));
    }
    let s = string(v, key)?;
    if s.is_empty() {
        return Err(problem(
            key,
            "an empty filter would match every request; write what the requests to take carry",
        ));
    }
    Ok(s)
}

/// `"POST"` or `["POST", "PUT"]`.
fn methods(v: &Value, key: &str) -> Result<Vec<String>, Problem> {
    match v {
        Value::Array(list) if !list.is_empty() => list
            .iter()
            .enumerate()
            .map(|(i, m)| regex(m, &format!("{key}[{i}]")))
            .collect(),
        Value::Array(_) => Err(problem(key, "an empty list of methods matches nothing")),
        _ => Ok(vec![regex(v, key)?]),
    }
}

/// `{"body": "json", "query": "$.user", "matches": "^alice$"}` (in a composite, the same
/// object is an entry of the list).
fn body_filter(v: &Value, key: &str) -> Result<BodyFilterSpec, Problem> {
    let obj = object(v, key)?;
    let mut query = None;
    let mut matches = None;
    for (k, v) in obj {
        let k2 = format!("{key}.{k}");
        match k.as_str() {
            "body" if v.as_str() == Some("json") => {}
            "body" => {
                return Err(problem(
                    &k2,
                    format!("expected \"json\" (the only body filter mirrord has), found {v}"),
                ))
            }
            "query" => query = Some(regex(v, &k2)?),
            "matches" => matches = Some(regex(v, &k2)?),
            _ => return Err(problem(&k2, "not a key of mirrord's JSON body filter")),
        }
    }
    match (obj.get("body"), query, matches) {
        (Some(_), Some(query), Some(matches)) => Ok(BodyFilterSpec { query, matches }),
        _ => Err(problem(
            key,
            "a body filter needs \"body\": \"json\", a JSONPath \"query\" and a regex \"matches\"",
        )),
    }
}

fn http_filter(v: &Value, key: &str, c: &mut FileConfig) -> Result<(), Problem> {
    let mut f = HttpFilterSpec::default();
    let mut composite = None;
    let mut simple = None;
    for (k, v) in object(v, key)? {
        let k2 = format!("{key}.{k}");
        match k.as_str() {
            "header_filter" => f.header.push(regex(v, &k2)?),
            "path_filter" => f.path.push(regex(v, &k2)?),
            "method_filter" => {
                f.method = methods(v, &k2)?;
                // A list of methods is any of them (a request has one).
                f.any = f.method.len() > 1;
            }
            "body_filter" => f.body.push(body_filter(v, &k2)?),
            "header_filter_jq" => return Err(problem(&k2, NO_JQ)),
            "all_of" | "any_of" => {
                if composite.replace(k.as_str()).is_some() {
                    return Err(problem(&k2, "all_of and any_of cannot both be set"));
                }
                inner_filters(v, &k2, &mut f)?;
                f.any = k == "any_of";
            }
            "ports" => c.filter_ports = Some(ports(v, &k2)?),
            _ => return Err(problem(
                &k2,
                "not a filter this operator knows; refusing rather than stealing more than meant",
            )),
        }
        if k != "ports" && k != "all_of" && k != "any_of" {
            simple = Some(k2);
        }
    }
    if composite.is_some() && f.is_empty() {
        return Err(problem(key, "all_of/any_of cannot be an empty list"));
    }
    if let (Some(_), Some(k)) = (composite, &simple) {
        return Err(problem(
            k,
            "cannot be combined with all_of/any_of: say it in one of them",
        ));
    }
    // Several simple filters (mirrord allows one) must all match, however a method list
    // reads on its own.
    let simple_parts = f.header.len() + f.path.len() + f.body.len();
    if composite.is_none() && simple_parts > 0 && f.method.len() > 1 {
        return Err(problem(
            &format!("{key}.method_filter"),
            "a list of methods with other filters: put them in any_of/all_of to say how they combine",
        ));
    }
    if !f.is_empty() {
        c.filter = Some(f);
    }
    Ok(())
}

/// `[{"header": "..."}, {"path": "..."}, {"method": "..."}, {"body": "json", ...}]`.
fn inner_filters(v: &Value, key: &str, f: &mut HttpFilterSpec) -> Result<(), Problem> {
    let list = v
        .as_array()
        .ok_or_else(|| problem(key, format!("expected a list of filters, found {v}")))?;
    for (i, item) in list.iter().enumerate() {
        let k = format!("{key}[{i}]");
        let obj = object(item, &k)?;
        if obj.contains_key("body") {
            f.body.push(body_filter(item, &k)?);
            continue;
        }
        let one = |name: &str| obj.get(name).filter(|_| obj.len() == 1);
        if let Some(h) = one("header") {
            f.header.push(regex(h, &format!("{k}.header"))?);
        } else if let Some(p) = one("path") {
            f.path.push(regex(p, &format!("{k}.path"))?);
        } else if let Some(m) = one("method") {
            f.method.push(regex(m, &format!("{k}.method"))?);
        } else if one("query").is_some() {
            return Err(problem(&format!("{k}.query"), NO_JQ));
        } else {
            return Err(problem(
                &k,
                format!("expected {{\"header\": REGEX}}, {{\"path\": REGEX}}, {{\"method\": METHOD}} or a body filter, found {item}"),
            ));
        }
    }
    Ok(())
}
