//! Compiled HTTP filters, with the semantics users of mirrord expect: regexes are
//! case-insensitive "fancy" regexes (look-around and backreferences, as mirrord's filters
//! are, with the same crate: fancy-regex, which hands every part that needs no backtracking
//! to `regex`'s linear-time engine); a header regex is matched against `name: value` of
//! each header; a path regex is tried on the path, then on path and query; a body filter
//! selects values of a JSON body with a JSONPath query ([`body`]); parts combine all-of or
//! any-of.
//!
//! Bounded: a pattern's length, its compiled size and the number of parts are capped when
//! it is compiled, and each match may backtrack at most [`FilterLimits::backtrack_limit`]
//! times. A request whose filter hits that limit is not matched (it goes where unmatched
//! requests go) and is reported as [`Verdict::Limit`] so the caller counts it: a hostile
//! pattern costs a bounded amount of CPU per request.
//!
//! [`probe`] decides what a filter can match: whether it matches every request, and a
//! request two filters both match.

pub mod body;
pub mod pattern;
pub mod probe;

use body::{BodyFilter, JsonBody};
use http::request::Parts;
use mirrord_protocol::HttpFilterSpec;
use pattern::Pattern;

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
    #[error("invalid body filter query `{query}`: {reason} (an RFC 9535 JSONPath such as `$.user.name`)")]
    JsonPath { query: String, reason: String },
    #[error("an HTTP filter needs at least one --header, --path, --method or body filter")]
    Empty,
    /// Beyond the operator's limits: one user's filter must not exhaust memory or CPU
    /// shared by everyone.
    #[error("{0}")]
    TooLarge(String),
}

/// How large a filter may be and how much one match may cost. Every regex may take
/// `regex_size` bytes compiled and as much again for its lazy DFA cache, so a filter costs
/// at most about `2 * max_expressions * regex_size` of memory; a match backtracks at most
/// `backtrack_limit` times (only patterns with look-around or backreferences backtrack).
#[derive(Debug, Clone, Copy)]
pub struct FilterLimits {
    pub max_expressions: usize,
    pub max_pattern_len: usize,
    pub regex_size: usize,
    pub backtrack_limit: usize,
}

/// Backtracking steps one match may take: 0.3-0.6 ms of one core in the worst shapes
/// measured (release; BENCHMARKS.md), against fancy-regex's own default of 1,000,000.
/// Look-around patterns written for filters (`^User-Agent: (?!kube-probe)`) take a few.
pub const DEFAULT_BACKTRACK_LIMIT: usize = 10_000;

impl Default for FilterLimits {
    fn default() -> Self {
        Self {
            max_expressions: 16,
            max_pattern_len: 1024,
            regex_size: 256 * 1024,
            backtrack_limit: DEFAULT_BACKTRACK_LIMIT,
        }
    }
}

/// What a filter says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Match,
    NoMatch,
    /// A regex of the filter reached its backtracking limit: not matched, and counted.
    Limit,
}

impl Verdict {
    pub fn matched(self) -> bool {
        self == Verdict::Match
    }
}

/// A part's answer; `Err` is the backtracking limit.
type Check = Result<bool, Limited>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited;

#[derive(Debug, Clone)]
pub struct HttpFilter {
    header: Vec<Pattern>,
    path: Vec<Pattern>,
    method: Vec<String>,
    body: Vec<BodyFilter>,
    any: bool,
    /// Header regexes every matching request must also match, whatever `any` says: added
    /// by the operator's policies (`require_header_filter`), not by the user.
    required: Vec<Pattern>,
    /// The filter as the user wrote it, followed by any clause a policy added.
    pub display: String,
    /// The same, part by part.
    pub spec: HttpFilterSpec,
}

/// Compiles one filter regex the way every filter is compiled (operator, agent, policies'
/// `require_header_filter`): case-insensitive, fancy, within `limits`.
pub fn compile_regex(
    kind: &'static str,
    pattern: &str,
    limits: &FilterLimits,
) -> Result<Pattern, FilterError> {
    if pattern.len() > limits.max_pattern_len {
        return Err(FilterError::TooLarge(format!(
            "{kind} filter of {} bytes is longer than this operator allows ({} bytes)",
            pattern.len(),
            limits.max_pattern_len
        )));
    }
    Pattern::compile(kind, pattern, limits)
}

pub(crate) fn is_match(re: &Pattern, text: &str) -> Check {
    re.is_match(text)
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
        let n = spec.parts();
        if n > limits.max_expressions {
            return Err(FilterError::TooLarge(format!(
                "the filter has {n} parts; this operator allows {} per port",
                limits.max_expressions
            )));
        }
        let header = spec
            .header
            .iter()
            .map(|p| compile_regex("header", p, limits))
            .collect::<Result<_, _>>()?;
        let path = spec
            .path
            .iter()
            .map(|p| compile_regex("path", p, limits))
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
        let body = spec
            .body
            .iter()
            .map(|b| BodyFilter::compile(b, limits))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            header,
            path,
            method,
            body,
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
        self.required
            .push(compile_regex("header", pattern, limits)?);
        let parts = self.header.len() + self.path.len() + self.method.len() + self.body.len();
        if self.required.len() == 1 && self.any && parts > 1 {
            self.display = format!("({})", self.display);
        }
        self.display.push_str(&format!(" and header={pattern}"));
        self.spec.required_header.push(pattern.to_owned());
        Ok(())
    }

    /// Whether deciding needs the request's body (a body filter).
    pub fn needs_body(&self) -> bool {
        !self.body.is_empty()
    }

    /// Whether the request matches, its body unknown (body filters do not match).
    pub fn matches(&self, req: &Parts) -> bool {
        self.evaluate(req, None).matched()
    }

    /// The filter's verdict on a request; `body`: its JSON body when a body filter needs
    /// it and the body could be read and parsed within the limits.
    pub fn evaluate(&self, req: &Parts, body: Option<&JsonBody>) -> Verdict {
        match self.check(req, body, true) {
            Ok(true) => Verdict::Match,
            Ok(false) => Verdict::NoMatch,
            Err(Limited) => Verdict::Limit,
        }
    }

    /// The user's own parts only when `required` is false (what the user asked for, before
    /// a policy narrowed it).
    fn check(&self, req: &Parts, body: Option<&JsonBody>, required: bool) -> Check {
        if required {
            for re in &self.required {
                if !header_matches(re, req)? {
                    return Ok(false);
                }
            }
        }
        // Cheap parts first: a method settles many requests without running a regex.
        let methods = self
            .method
            .iter()
            .map(|m| Ok(req.method.as_str().eq_ignore_ascii_case(m)));
        let mut checks = methods
            .chain(self.header.iter().map(|re| header_matches(re, req)))
            .chain(self.path.iter().map(|re| path_matches(re, req)))
            .chain(self.body.iter().map(|b| match body {
                Some(body) => b.matches(body),
                None => Ok(false),
            }));
        // Stops at the first part that decides, and at the first limit hit: a hostile
        // pattern costs one limit per request, not one per part.
        if self.any {
            for c in checks.by_ref() {
                if c? {
                    return Ok(true);
                }
            }
            Ok(false)
        } else {
            for c in checks.by_ref() {
                if !c? {
                    return Ok(false);
                }
            }
            Ok(true)
        }
    }
}

fn header_matches(re: &Pattern, req: &Parts) -> Check {
    let mut line = String::with_capacity(64);
    for (name, value) in &req.headers {
        let Ok(value) = value.to_str() else {
            continue;
        };
        line.clear();
        line.push_str(name.as_str());
        line.push_str(": ");
        line.push_str(value);
        if is_match(re, &line)? {
            return Ok(true);
        }
    }
    match req.uri.authority() {
        Some(a) => is_match(re, &format!("host: {a}")),
        None => Ok(false),
    }
}

fn path_matches(re: &Pattern, req: &Parts) -> Check {
    if is_match(re, req.uri.path())? {
        return Ok(true);
    }
    match req.uri.path_and_query() {
        Some(pq) if pq.query().is_some() => is_match(re, pq.as_str()),
        _ => Ok(false),
    }
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
            body: Vec::new(),
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
            ..FilterLimits::default()
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

    /// Patterns that backtrack catastrophically stop at the limit: the request is not
    /// matched and reported as [`Verdict::Limit`]; the time one match costs is printed.
    #[test]
    fn a_catastrophic_pattern_costs_at_most_its_backtracking_limit() {
        let long = format!("{}b", "a".repeat(4096));
        let req = parts("GET", "/", &[("x-h", long.as_str())]);
        for pattern in [
            "(a+)+$",
            "^x-h: (a+)+$",
            "(?=(a+)+$)",
            "(a+)+(?=c)",
            "^x-h: (?:(a|a)+)+c(?<!z)",
            "(a*)*\\1c",
        ] {
            let f = HttpFilter::compile(&spec(&[pattern], &[], &[], false)).unwrap();
            let start = std::time::Instant::now();
            let v = f.evaluate(&req, None);
            let took = start.elapsed();
            println!("{pattern:30} {v:?} in {took:?}");
            assert_ne!(v, Verdict::Match, "{pattern}");
        }
    }
}
