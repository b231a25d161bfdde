//! What a filter can match, decided by trying requests rather than by reading its text.
//!
//! **Matches every request** (policies treat such a filter as an unfiltered steal): the
//! filter matches each of [`probes`], requests that share nothing but what every HTTP/1.1
//! or HTTP/2 request has: a method, a path starting with `/`, and a host. `--header=`,
//! `--header .`, `^`, `.*`, `|x`, `--path ^/`, `^(?!x-zz)` all match them; `--method GET`
//! does not (the probes use other methods too), nor does `^User-Agent: (?!kube-probe)`
//! (the probes carry no User-Agent). A filter that needs a JSON body never does.
//!
//! **Overlap** of two filters on one port: a concrete request both match, found among the
//! probes and among requests built from each filter's own parts ([`examples`]: `^x-user:
//! alice$` gives a request with `x-user: alice`). An overlap is only reported with such a
//! request, so it is never imagined; two filters whose common requests none of these finds
//! (rare shapes of regex) are not reported.

use super::HttpFilter;
use http::request::Parts;
use regex_syntax::hir::{Class, Hir, HirKind};

/// The requests a filter must match all of to match every request.
pub fn probes() -> Vec<Parts> {
    [
        ("GET", "/", &[("host", "127.0.0.1")][..]),
        (
            "POST",
            "/zq9/y-1?k=v",
            &[("host", "zq.invalid:8080"), ("content-type", "text/plain")][..],
        ),
        ("QZX", "/health/x", &[("host", "a")][..]),
        ("DELETE", "/%7E", &[("host", "[::1]:1")][..]),
    ]
    .into_iter()
    .filter_map(|(m, p, h)| request(m, p, h))
    .collect()
}

fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> Option<Parts> {
    let mut b = http::Request::builder().method(method).uri(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).ok().map(|r| r.into_parts().0)
}

impl HttpFilter {
    /// Whether the user's own filter (before any policy narrowed it) matches every request,
    /// by the rule in this module's docs.
    pub fn matches_every_request(&self) -> bool {
        !self.needs_body()
            && probes()
                .iter()
                .all(|p| self.check(p, None, false) == Ok(true))
    }

    /// A request both filters match (as routed: with policy clauses), shown as
    /// `GET /path (name: value, ...)`.
    pub fn overlap(&self, other: &HttpFilter) -> Option<String> {
        probes()
            .into_iter()
            .chain(examples(self))
            .chain(examples(other))
            .chain(merged(self, other))
            .find(|r| self.evaluate(r, None).matched() && other.evaluate(r, None).matched())
            .map(|r| describe(&r))
    }
}

/// `GET /a?b (x-user: alice)`: a request as overlap notices show it.
pub fn describe(r: &Parts) -> String {
    let headers: Vec<String> = r
        .headers
        .iter()
        .filter(|(n, _)| *n != http::header::HOST)
        .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap_or("?")))
        .collect();
    let pq = r.uri.path_and_query().map_or("/", |p| p.as_str());
    match headers.is_empty() {
        true => format!("{} {pq}", r.method),
        false => format!("{} {pq} ({})", r.method, headers.join(", ")),
    }
}

/// Requests built from the filter's parts: for all-of, one request carrying a match of
/// every part; for any-of, one per part. Parts whose regex this cannot read (look-around,
/// backreferences) contribute nothing.
pub fn examples(f: &HttpFilter) -> Vec<Parts> {
    let spec = &f.spec;
    let headers: Vec<Option<(String, String)>> = spec
        .header
        .iter()
        .chain(&spec.required_header)
        .map(|h| example(h).and_then(|e| header_line(&e)))
        .collect();
    let paths: Vec<Option<String>> = spec
        .path
        .iter()
        .map(|p| example(p).map(|e| as_path(&e)))
        .collect();
    let build = |method: &str, path: &str, hs: &[(String, String)]| {
        let mut all: Vec<(&str, &str)> = vec![("host", "127.0.0.1")];
        all.extend(hs.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        request(method, path, &all)
    };
    let first_method = spec.method.first().map_or("GET", String::as_str);
    if !spec.any {
        let hs: Vec<(String, String)> = headers.iter().flatten().cloned().collect();
        let path = paths.iter().flatten().next().map_or("/", String::as_str);
        return build(first_method, path, &hs).into_iter().collect();
    }
    let required: Vec<(String, String)> = spec
        .required_header
        .iter()
        .filter_map(|h| example(h).and_then(|e| header_line(&e)))
        .collect();
    let mut out = Vec::new();
    for h in headers.iter().take(spec.header.len()).flatten() {
        let mut hs = required.clone();
        hs.push(h.clone());
        out.extend(build("GET", "/", &hs));
    }
    for p in paths.iter().flatten() {
        out.extend(build("GET", p, &required));
    }
    for m in &spec.method {
        out.extend(build(m, "/", &required));
    }
    out
}

/// One request carrying a match of every part of both filters (a method of either, a path
/// of either, the headers of both): where two all-of filters on different parts meet.
fn merged(a: &HttpFilter, b: &HttpFilter) -> Option<Parts> {
    let (sa, sb) = (&a.spec, &b.spec);
    let method = sa
        .method
        .first()
        .or(sb.method.first())
        .map_or("GET", String::as_str);
    let path = sa
        .path
        .iter()
        .chain(&sb.path)
        .find_map(|p| example(p).map(|e| as_path(&e)))
        .unwrap_or_else(|| "/".into());
    let hs: Vec<(String, String)> = sa
        .header
        .iter()
        .chain(&sa.required_header)
        .chain(&sb.header)
        .chain(&sb.required_header)
        .filter_map(|h| example(h).and_then(|e| header_line(&e)))
        .collect();
    // One value per header name: two values would let two filters that want different
    // values both match one odd request.
    let mut all: Vec<(&str, &str)> = vec![("host", "127.0.0.1")];
    for (n, v) in &hs {
        if !all.iter().any(|(have, _)| have == n) {
            all.push((n, v));
        }
    }
    request(method, &path, &all)
}

/// A string the regex matches, when it needs no look-around or backreference.
fn example(pattern: &str) -> Option<String> {
    // Read case-sensitively: the example keeps the pattern's own letters (matching is
    // case-insensitive anyway).
    let hir = regex_syntax::ParserBuilder::new()
        .build()
        .parse(pattern)
        .ok()?;
    let mut out = String::new();
    write(&hir, &mut out).then_some(out)
}

/// Appends a shortest-ish match of `hir`; `false` when none can be written.
fn write(hir: &Hir, out: &mut String) -> bool {
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) => true,
        HirKind::Literal(l) => match std::str::from_utf8(&l.0) {
            Ok(s) => {
                out.push_str(s);
                true
            }
            Err(_) => false,
        },
        HirKind::Class(c) => match pick(c) {
            Some(ch) => {
                out.push(ch);
                true
            }
            None => false,
        },
        // Capped: an example is only a candidate, checked against both filters anyway.
        HirKind::Repetition(r) => (0..r.min.min(256)).all(|_| write(&r.sub, out)),
        HirKind::Capture(c) => write(&c.sub, out),
        HirKind::Concat(parts) => parts.iter().all(|p| write(p, out)),
        HirKind::Alternation(alts) => alts.first().is_some_and(|a| write(a, out)),
    }
}

/// A readable character of the class: a letter, digit or common punctuation if it has one.
fn pick(c: &Class) -> Option<char> {
    let Class::Unicode(u) = c else {
        return None;
    };
    let within = |ch: char| u.ranges().iter().any(|r| r.start() <= ch && ch <= r.end());
    "aA0-/ _.:=".chars().find(|ch| within(*ch)).or_else(|| {
        u.ranges()
            .iter()
            .flat_map(|r| r.start()..=r.end())
            .find(|ch| (' '..='~').contains(ch))
    })
}

/// `x-user: alice` as a header, when it reads as one.
fn header_line(line: &str) -> Option<(String, String)> {
    let (name, value) = line.split_once(':')?;
    let name = name.trim().to_ascii_lowercase();
    let value = value.trim_start().to_owned();
    http::HeaderName::from_bytes(name.as_bytes()).ok()?;
    http::HeaderValue::from_str(&value).ok()?;
    Some((name, value))
}

fn as_path(e: &str) -> String {
    match e.starts_with('/') {
        true => e.to_owned(),
        false => format!("/{e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirrord_protocol::HttpFilterSpec;

    fn f(header: &[&str], path: &[&str], method: &[&str], any: bool) -> HttpFilter {
        HttpFilter::compile(&HttpFilterSpec {
            header: header.iter().map(|s| s.to_string()).collect(),
            path: path.iter().map(|s| s.to_string()).collect(),
            method: method.iter().map(|s| s.to_string()).collect(),
            any,
            ..Default::default()
        })
        .unwrap()
    }

    /// Issue 24 item 6: what steals everything is an unfiltered steal, whatever its text.
    #[test]
    fn filters_that_match_every_request() {
        for h in [
            "",
            ".",
            "^",
            ".*",
            "|x",
            "x-user: |.",
            "^(?!x-zz)",
            "^[a-z0-9-]+: ",
        ] {
            assert!(f(&[h], &[], &[], false).matches_every_request(), "{h:?}");
        }
        assert!(f(&[], &["^/"], &[], false).matches_every_request());
        assert!(f(&[], &[""], &[], false).matches_every_request());
        assert!(f(&["^x-user: bob$", "."], &[], &[], true).matches_every_request());
        for (h, p, m) in [
            (&["^x-user: alice$"][..], &[][..], &[][..]),
            (&["^User-Agent: (?!kube-probe)"], &[], &[]),
            (&[], &["^(?!/health/)"], &[]),
            (&[], &[], &["GET"]),
            (&[], &[], &["GET", "POST", "DELETE"]),
            (&["."], &[], &["GET"]),
        ] {
            let filter = f(h, p, m, false);
            assert!(!filter.matches_every_request(), "{h:?} {p:?} {m:?}");
        }
        // Listing methods with --any matches only those methods: not every request.
        assert!(!f(&[], &[], &["GET", "POST", "DELETE"], true).matches_every_request());
    }

    #[test]
    fn overlaps_are_shown_with_a_request_both_match() {
        let alice = f(&["^x-user: alice$"], &[], &[], false);
        let bob = f(&["^x-user: bob$"], &[], &[], false);
        let users = f(&["^x-user: "], &[], &[], false);
        let all = f(&["."], &[], &[], false);
        assert_eq!(alice.overlap(&bob), None);
        assert_eq!(
            alice.overlap(&users).as_deref(),
            Some("GET / (x-user: alice)")
        );
        assert_eq!(
            users.overlap(&alice).as_deref(),
            Some("GET / (x-user: alice)")
        );
        assert_eq!(all.overlap(&bob).as_deref(), Some("GET / (x-user: bob)"));
        let posts = f(&[], &[], &["POST"], false);
        let api = f(&[], &["^/api/"], &[], false);
        assert_eq!(posts.overlap(&api).as_deref(), Some("POST /api/"));
        assert_eq!(posts.overlap(&f(&[], &[], &["GET"], false)), None);
        let probes = f(&["^User-Agent: (?!kube-probe)"], &[], &[], false);
        let ua = f(&["^user-agent: curl"], &[], &[], false);
        assert_eq!(
            probes.overlap(&ua).as_deref(),
            Some("GET / (user-agent: curl)")
        );
    }
}
