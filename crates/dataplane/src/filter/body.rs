//! mirrord's JSON body filter: `{"body": "json", "query": "$.user", "matches": "^alice$"}`.
//!
//! The request body is read into memory up to [`MAX_BODY`] bytes (mirrord's default,
//! 65,535) for at most [`BODY_WAIT`], parsed as JSON, and the RFC 9535 JSONPath query
//! selects values; the filter matches when one of them (a string as it is, anything else as
//! JSON text) matches the regex. A body that is larger, slower, or not JSON does not match,
//! as in mirrord. Whatever was read is replayed in front of the rest of the body, so
//! whoever gets the request (the developer or the target) gets it whole.
//!
//! The JSONPath extension mirrord documents, `typeof(@)` (`"null"`, `"bool"`, `"number"`,
//! `"string"`, `"array"`, `"object"`, or nothing when the nodes differ), is provided.

use super::pattern::Pattern;
use super::{compile_regex, is_match, Check, FilterError, FilterLimits};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, SizeHint};
use mirrord_protocol::BodyFilterSpec;
use mirrord_tunnel::body::{Body, BoxError};
use serde_json::Value;
use serde_json_path::functions::{NodesType, ValueType};
use serde_json_path::JsonPath;
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// Bytes of a body read to decide a body filter (mirrord's default).
pub const MAX_BODY: usize = 65_535;
/// How long a request's body may take to arrive for a body filter to decide.
pub const BODY_WAIT: Duration = Duration::from_secs(1);

/// A request body parsed as JSON, for body filters.
pub type JsonBody = Value;

#[derive(Debug, Clone)]
pub struct BodyFilter {
    query: JsonPath,
    matches: Pattern,
}

impl BodyFilter {
    pub fn compile(spec: &BodyFilterSpec, limits: &FilterLimits) -> Result<Self, FilterError> {
        if spec.query.len() > limits.max_pattern_len {
            return Err(FilterError::TooLarge(format!(
                "body filter query of {} bytes is longer than this operator allows ({} bytes)",
                spec.query.len(),
                limits.max_pattern_len
            )));
        }
        let query = JsonPath::parse(&spec.query).map_err(|e| FilterError::JsonPath {
            query: spec.query.clone(),
            reason: e.to_string(),
        })?;
        let matches = compile_regex("body", &spec.matches, limits)?;
        Ok(Self { query, matches })
    }

    pub(crate) fn matches(&self, body: &JsonBody) -> Check {
        for v in self.query.query(body).all() {
            let hit = match v {
                Value::String(s) => is_match(&self.matches, s)?,
                other => is_match(&self.matches, &other.to_string())?,
            };
            if hit {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// `typeof(@)`, the JSONPath function extension mirrord's body filters offer.
#[serde_json_path::function(name = "typeof")]
fn type_of(nodes: NodesType) -> ValueType {
    let mut kinds = nodes.iter().map(|v| match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    });
    let Some(first) = kinds.next() else {
        return ValueType::Nothing;
    };
    if kinds.all(|k| k == first) {
        ValueType::Value(Value::String(first.to_owned()))
    } else {
        ValueType::Nothing
    }
}

/// Reads up to [`MAX_BODY`] bytes of `body` (for at most [`BODY_WAIT`]) and returns them
/// parsed as JSON when the whole body fit, with a body that replays them in front of the
/// rest.
pub async fn read_json(body: Body) -> (Option<JsonBody>, Body) {
    if body.is_end_stream() || body.size_hint().lower() > MAX_BODY as u64 {
        return (None, body);
    }
    let mut read = Prefixed {
        frames: VecDeque::new(),
        rest: Some(body),
    };
    let mut bytes = Vec::new();
    let complete = tokio::time::timeout(BODY_WAIT, async {
        let rest = read.rest.as_mut().expect("not taken");
        while let Some(frame) = rest.frame().await {
            let Ok(frame) = frame else {
                return false;
            };
            if let Some(data) = frame.data_ref() {
                bytes.extend_from_slice(data);
            }
            read.frames.push_back(Ok(frame));
            if bytes.len() > MAX_BODY {
                return false;
            }
        }
        read.rest = None;
        true
    })
    .await
    .unwrap_or(false);
    let json = complete
        .then(|| serde_json::from_slice(&bytes).ok())
        .flatten();
    (json, read.boxed())
}

/// Frames already read, then the rest of the body.
struct Prefixed {
    frames: VecDeque<Result<Frame<Bytes>, BoxError>>,
    rest: Option<Body>,
}

impl hyper::body::Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(f) = self.frames.pop_front() {
            return Poll::Ready(Some(f));
        }
        match self.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let queued: u64 = self
            .frames
            .iter()
            .filter_map(|f| f.as_ref().ok()?.data_ref().map(|d| d.len() as u64))
            .sum();
        let rest = self
            .rest
            .as_ref()
            .map(|r| r.size_hint())
            .unwrap_or_else(|| SizeHint::with_exact(0));
        let mut hint = SizeHint::new();
        hint.set_lower(queued + rest.lower());
        if let Some(upper) = rest.upper() {
            hint.set_upper(queued + upper);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use serde_json::json;

    fn filter(query: &str, matches: &str) -> BodyFilter {
        BodyFilter::compile(
            &BodyFilterSpec {
                query: query.into(),
                matches: matches.into(),
            },
            &FilterLimits::default(),
        )
        .unwrap()
    }

    /// mirrord's documented examples.
    #[test]
    fn queries_select_values_the_regex_must_match() {
        let f = filter(
            "$.data[*].legacyEntityIds.legacyUserIdentityId",
            "^identity123$",
        );
        let body = json!({"data": [{"legacyEntityIds": {"legacyUserIdentityId": "identity123"}}]});
        assert!(f.matches(&body).unwrap());
        let other =
            json!({"data": [{"legacyEntityIds": {"legacyUserIdentityId": "identity1234"}}]});
        assert!(!f.matches(&other).unwrap());

        let books = filter("$.library.books[*]", "^\\d{3,5}$");
        assert!(books
            .matches(&json!({"library": {"books": [34555, 1233, 234]}}))
            .unwrap());
        assert!(!books
            .matches(&json!({"library": {"books": [12, 123456]}}))
            .unwrap());

        let typed = filter("$.books[?(typeof(@) == 'number')]", "4$");
        assert!(typed
            .matches(&json!({"books": [1111, 2222, 4444]}))
            .unwrap());
        assert!(!typed
            .matches(&json!({"books": ["1111", "2222", "4444"]}))
            .unwrap());
    }

    #[test]
    fn a_bad_query_is_named() {
        let e = BodyFilter::compile(
            &BodyFilterSpec {
                query: "$.[".into(),
                matches: "x".into(),
            },
            &FilterLimits::default(),
        )
        .unwrap_err();
        assert!(
            e.to_string().starts_with("invalid body filter query `$.[`"),
            "{e}"
        );
    }

    async fn collect(b: Body) -> Bytes {
        b.collect().await.unwrap().to_bytes()
    }

    fn body(b: &'static [u8]) -> Body {
        Full::new(Bytes::from_static(b))
            .map_err(|never| match never {})
            .boxed()
    }

    /// Whatever was read is given back whole; a body too large is not parsed.
    #[tokio::test]
    async fn the_body_is_replayed_whole() {
        let (json, rest) = read_json(body(br#"{"user": "alice"}"#)).await;
        assert_eq!(json, Some(json!({"user": "alice"})));
        assert_eq!(
            collect(rest).await,
            Bytes::from_static(br#"{"user": "alice"}"#)
        );

        let (json, rest) = read_json(body(b"not json")).await;
        assert_eq!(json, None);
        assert_eq!(collect(rest).await, Bytes::from_static(b"not json"));

        let big = vec![b' '; MAX_BODY + 10];
        let stream = futures::stream::iter(
            big.chunks(4096)
                .map(|c| Ok::<_, BoxError>(Frame::data(Bytes::copy_from_slice(c))))
                .collect::<Vec<_>>(),
        );
        let (json, rest) = read_json(http_body_util::StreamBody::new(stream).boxed()).await;
        assert_eq!(json, None);
        assert_eq!(collect(rest).await.len(), MAX_BODY + 10);
    }
}
