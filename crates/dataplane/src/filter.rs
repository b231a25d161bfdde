//! Compiled HTTP filters, with the semantics users of mirrord expect: regexes are
//! case-insensitive; a header regex is matched against `name: value` of each header; a
//! path regex is tried on the path, then on path and query; parts combine all-of or any-of.

use http::request::Parts;
use mirrord_protocol::HttpFilterSpec;
use regex::{Regex, RegexBuilder};

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("invalid {kind} filter `{pattern}`: {reason}")]
    Regex {
        kind: &'static str,
        pattern: String,
        reason: String,
    },
    #[error("invalid method filter `{0}`: expected an HTTP method such as GET")]
    Method(String),
    #[error("an HTTP filter needs at least one --header, --path or --method")]
    Empty,
    /// Beyond the operator's limits: one user's filter must not exhaust memory or CPU
    /// shared by everyone.
    #[error("{0}")]
    TooLarge(String),
}

/// How large a filter may be. Every regex may take `regex_size` bytes compiled and as
/// much again for its lazy DFA cache, so a filter costs at most about
/// `2 * max_expressions * regex_size`.
#[derive(Debug, Clone, Copy)]
pub struct FilterLimits {
    pub max_expressions: usize,
    pub max_pattern_len: usize,
    pub regex_size: usize,
}

impl Default for FilterLimits {
    fn default() -> Self {
        Self {
            max_expressions: 16,
            max_pattern_len: 1024,
            regex_size: 256 * 1024,
        }
    }
}

#[derive(Debug, Clone)]
pub struct HttpFilter {
    header: Vec<Regex>,
    path: Vec<Regex>,
    method: Vec<String>,
    any: bool,
    /// Header regexes every matching request must also match, whatever `any` says: added
    /// by the operator's policies (`require_header_filter`), not by the user.
    required: Vec<Regex>,
    /// The filter as the user wrote it, followed by any clause a policy added.
    pub display: String,
    /// The same, part by part.
    pub spec: HttpFilterSpec,
}

fn compile(kind: &'static str, pattern: &str, limits: &FilterLimits) -> Result<Regex, FilterError> {
    if pattern.len() > limits.max_pattern_len {
        return Err(FilterError::TooLarge(format!(
            "{kind} filter of {} bytes is longer than this operator allows ({} bytes)",
            pattern.len(),
            limits.max_pattern_len
        )));
    }
    RegexBuilder::new(pattern)
        .case_insensitive(true)
        .size_limit(limits.regex_size)
        .dfa_size_limit(limits.regex_size)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(limit) => FilterError::TooLarge(format!(
                "{kind} filter `{pattern}` compiles to more than {limit} bytes, this operator's limit; simplify it"
            )),
            e => FilterError::Regex {
            kind,
            pattern: pattern.to_owned(),
            reason: e
                .to_string()
                .lines()
                .last()
                .unwrap_or_default()
                .trim()
                .to_owned(),
            },
        })
}

impl HttpFilter {
    pub fn compile(spec: &HttpFilterSpec) -> Result<Self, FilterError> {
        Self::compile_limited(spec, &FilterLimits::default())
    }

    /// Compiles `spec` within `limits`. Compiling can take a while for large regexes:
    /// callers on an async runtime run it on a blocking thread.
    pub fn compile_limited(
        spec: &HttpFilterSpec,
        limits: &FilterLimits,
    ) -> Result<Self, FilterError> {
        if spec.is_empty() {
            return Err(FilterError::Empty);
        }
        let n = spec.header.len() + spec.path.len() + spec.method.len();
        if n > limits.max_expressions {
            return Err(FilterError::TooLarge(format!(
                "the filter has {n} parts; this operator allows {} per port",
                limits.max_expressions
            )));
        }
        let header = spec
            .header
            .iter()
            .map(|p| compile("header", p, limits))
            .collect::<Result<_, _>>()?;
        let path = spec
            .path
            .iter()
            .map(|p| compile("path", p, limits))
            .collect::<Result<_, _>>()?;
        let method = spec
            .method
            .iter()
            .map(|m| {
                http::Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .map(|m| m.as_str().to_owned())
                    .map_err(|_| FilterError::Method(m.clone()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            header,
            path,
            method,
            any: spec.any,
            required: Vec::new(),
            display: spec.to_string(),
            spec: HttpFilterSpec {
                required_header: Vec::new(),
                ..spec.clone()
            },
        })
    }

    /// Narrows the filter: a request matches only if it also carries a header (`name:
    /// value`) matching `pattern`. Matching follows the filter's rules (case-insensitive),
    /// and the display shows the added clause.
    pub fn require_header(
        &mut self,
        pattern: &str,
        limits: &FilterLimits,
    ) -> Result<(), FilterError> {
        self.required.push(compile("header", pattern, limits)?);
        let parts = self.header.len() + self.path.len() + self.method.len();
        if self.required.len() == 1 && self.any && parts > 1 {
            self.display = format!("({})", self.display);
        }
        self.display.push_str(&format!(" and header={pattern}"));
        self.spec.required_header.push(pattern.to_owned());
        Ok(())
    }

    pub fn matches(&self, req: &Parts) -> bool {
        if !self.required.iter().all(|re| header_matches(re, req)) {
            return false;
        }
        let mut checks = self
            .header
            .iter()
            .map(|re| header_matches(re, req))
            .chain(self.path.iter().map(|re| path_matches(re, req)))
            .chain(
                self.method
                    .iter()
                    .map(|m| req.method.as_str().eq_ignore_ascii_case(m)),
            );
        if self.any {
            checks.any(|c| c)
        } else {
            checks.all(|c| c)
        }
    }
}

fn header_matches(re: &Regex, req: &Parts) -> bool {
    let mut line = String::with_capacity(64);
    req.headers.iter().any(|(name, value)| {
        let Ok(value) = value.to_str() else {
            return false;
        };
        line.clear();
        line.push_str(name.as_str());
        line.push_str(": ");
        line.push_str(value);
        re.is_match(&line)
    }) || req
        .uri
        .authority()
        .is_some_and(|a| re.is_match(&format!("host: {a}")))
}

fn path_matches(re: &Regex, req: &Parts) -> bool {
    re.is_match(req.uri.path())
        || req
            .uri
            .path_and_query()
            .is_some_and(|pq| pq.query().is_some() && re.is_match(pq.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn spec(header: &[&str], path: &[&str], method: &[&str], any: bool) -> HttpFilterSpec {
        HttpFilterSpec {
            header: header.iter().map(|s| s.to_string()).collect(),
            path: path.iter().map(|s| s.to_string()).collect(),
            method: method.iter().map(|s| s.to_string()).collect(),
            any,
            required_header: Vec::new(),
        }
    }

    #[test]
    fn header_regex_matches_name_colon_value_case_insensitively() {
        let f = HttpFilter::compile(&spec(&["^x-user: alice$"], &[], &[], false)).unwrap();
        assert!(f.matches(&parts("GET", "/", &[("X-User", "ALICE")])));
        assert!(!f.matches(&parts("GET", "/", &[("X-User", "bob")])));
        assert!(!f.matches(&parts("GET", "/", &[])));
    }

    #[test]
    fn path_regex_tries_path_then_path_and_query() {
        let f = HttpFilter::compile(&spec(&[], &["^/api/v1$"], &[], false)).unwrap();
        assert!(f.matches(&parts("GET", "/api/v1?x=1", &[])));
        let q = HttpFilter::compile(&spec(&[], &["debug=1"], &[], false)).unwrap();
        assert!(q.matches(&parts("GET", "/a?debug=1", &[])));
        assert!(!q.matches(&parts("GET", "/a", &[])));
    }

    #[test]
    fn all_of_and_any_of() {
        let all = HttpFilter::compile(&spec(&["x-a: 1"], &["^/p"], &["post"], false)).unwrap();
        assert!(all.matches(&parts("POST", "/p", &[("x-a", "1")])));
        assert!(!all.matches(&parts("GET", "/p", &[("x-a", "1")])));
        let any = HttpFilter::compile(&spec(&["x-a: 1"], &["^/p"], &[], true)).unwrap();
        assert!(any.matches(&parts("GET", "/q", &[("x-a", "1")])));
        assert!(!any.matches(&parts("GET", "/q", &[])));
    }

    /// `require_header_filter = "^x-user: "`: whatever the user's filter says, a request
    /// without a matching header is never stolen.
    #[test]
    fn a_required_header_holds_whatever_the_users_filter_says() {
        let limits = FilterLimits::default();
        let narrowed = |s: HttpFilterSpec| {
            let mut f = HttpFilter::compile(&s).unwrap();
            f.require_header("^x-user: ", &limits).unwrap();
            f
        };
        let bob = [("x-user", "bob")];
        let other = [("x-team", "a")];

        // A header regex that passes a check of its text but matches every request.
        let f = narrowed(spec(&["x-user: |."], &[], &[], false));
        assert_eq!(f.display, "header=x-user: |. and header=^x-user: ");
        assert!(f.matches(&parts("GET", "/", &bob)));
        assert!(!f.matches(&parts("GET", "/", &other)));
        assert!(!f.matches(&parts("GET", "/", &[])));

        // Any-of with a method: every GET matched before; now only GETs with the header.
        let f = narrowed(spec(&["x-user: bob"], &[], &["GET"], true));
        assert_eq!(
            f.display,
            "(header=x-user: bob or method=GET) and header=^x-user: "
        );
        assert!(f.matches(&parts("GET", "/", &[("x-user", "carol")])));
        assert!(!f.matches(&parts("GET", "/", &other)));
        assert!(!f.matches(&parts("POST", "/", &other)));

        // A path-only filter is narrowed the same way.
        let f = narrowed(spec(&[], &["^/api"], &[], false));
        assert!(f.matches(&parts("GET", "/api/x", &[("X-User", "Alice")])));
        assert!(!f.matches(&parts("GET", "/api/x", &[])));

        // The README's example keeps meaning what it says.
        let f = narrowed(spec(&["^x-user: alice$"], &[], &[], false));
        assert!(f.matches(&parts("GET", "/", &[("x-user", "alice")])));
        assert!(!f.matches(&parts("GET", "/", &bob)));

        let mut f = HttpFilter::compile(&spec(&["a: b"], &[], &[], false)).unwrap();
        assert!(f.require_header("(", &limits).is_err());
    }

    #[test]
    fn bad_filters_are_named() {
        let e = HttpFilter::compile(&spec(&["("], &[], &[], false)).unwrap_err();
        assert!(
            e.to_string().starts_with("invalid header filter `(`"),
            "{e}"
        );
        let e = HttpFilter::compile(&spec(&[], &[], &["G E T"], false)).unwrap_err();
        assert!(matches!(e, FilterError::Method(_)));
        assert!(matches!(
            HttpFilter::compile(&HttpFilterSpec::default()),
            Err(FilterError::Empty)
        ));
    }

    #[test]
    fn limits_bound_count_length_and_compiled_size() {
        let limits = FilterLimits {
            max_expressions: 2,
            max_pattern_len: 64,
            regex_size: 64 * 1024,
        };
        let three = spec(&["a", "b"], &["c"], &[], false);
        let e = HttpFilter::compile_limited(&three, &limits).unwrap_err();
        assert!(e.to_string().contains("3 parts"), "{e}");
        let long = "a".repeat(65);
        let e = HttpFilter::compile_limited(&spec(&[&long], &[], &[], false), &limits).unwrap_err();
        assert!(matches!(e, FilterError::TooLarge(_)), "{e}");
        // Short to write, huge compiled: counted repetitions of a Unicode class.
        let e = HttpFilter::compile_limited(&spec(&[r"\w{1000}"], &[], &[], false), &limits)
            .unwrap_err();
        assert!(matches!(e, FilterError::TooLarge(_)), "{e}");
        assert!(
            HttpFilter::compile_limited(&spec(&["^x-user: a$"], &[], &[], false), &limits).is_ok()
        );
    }
}
