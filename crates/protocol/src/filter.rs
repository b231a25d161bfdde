//! HTTP filters as the user wrote them. Compiling them into regexes is the data plane's job;
//! this is what travels, what status shows and what the logs call `http_filter`.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpFilterSpec {
    /// Regexes matched against `name: value` of each header, case-insensitive.
    pub header: Vec<String>,
    /// Regexes matched against the path, then path and query, case-insensitive.
    pub path: Vec<String>,
    /// HTTP methods, compared case-insensitively.
    pub method: Vec<String>,
    /// JSON body filters (mirrord's `body_filter`): a JSONPath query into the request's
    /// JSON body and a regex one of the values it selects must match.
    #[serde(default)]
    pub body: Vec<BodyFilterSpec>,
    /// `true`: any one part matching is enough; `false`: all parts must match.
    pub any: bool,
    /// Header regexes every stolen request must also match, whatever `any` says: added by
    /// the operator's policies (`require_header_filter`) and reported back; a client's own
    /// are ignored.
    #[serde(default)]
    pub required_header: Vec<String>,
}

/// mirrord's `{"body": "json", "query": "$.user", "matches": "^alice$"}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BodyFilterSpec {
    /// An RFC 9535 JSONPath query.
    pub query: String,
    /// A regex (case-insensitive, like every filter) matched against each selected value,
    /// strings as they are, other values as JSON text.
    pub matches: String,
}

impl HttpFilterSpec {
    pub fn is_empty(&self) -> bool {
        self.header.is_empty()
            && self.path.is_empty()
            && self.method.is_empty()
            && self.body.is_empty()
    }

    /// Regexes and methods in the user's filter, as the operator's limits count them.
    pub fn parts(&self) -> usize {
        self.header.len() + self.path.len() + self.method.len() + self.body.len()
    }
}

/// `header=x-user: alice and path=^/api`: the user's own regexes, joined by the combinator.
impl fmt::Display for HttpFilterSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = if self.any { " or " } else { " and " };
        let parts = self
            .header
            .iter()
            .map(|h| format!("header={h}"))
            .chain(self.path.iter().map(|p| format!("path={p}")))
            .chain(self.method.iter().map(|m| format!("method={m}")))
            .chain(
                self.body
                    .iter()
                    .map(|b| format!("body({})={}", b.query, b.matches)),
            );
        let mut first = true;
        for p in parts {
            if !first {
                f.write_str(join)?;
            }
            first = false;
            f.write_str(&p)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_the_users_regexes() {
        let f = HttpFilterSpec {
            header: vec!["x-user: alice".into()],
            path: vec!["^/api".into()],
            method: vec![],
            body: vec![BodyFilterSpec {
                query: "$.user".into(),
                matches: "^alice$".into(),
            }],
            any: false,
            required_header: Vec::new(),
        };
        assert_eq!(
            f.to_string(),
            "header=x-user: alice and path=^/api and body($.user)=^alice$"
        );
        assert_eq!(HttpFilterSpec::default().to_string(), "");
    }
}
