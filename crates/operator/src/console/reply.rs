//! The console's responses: the body type every handler returns, and plain text, JSON and
//! asset replies (shared by the route handlers and the event stream).

use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use std::convert::Infallible;

pub type Body = UnsyncBoxBody<Bytes, Infallible>;

pub fn set_header(r: &mut Response<Body>, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().insert(name, v);
    }
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed_unsync()
}

fn response(status: StatusCode, content_type: &'static str, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

pub fn text(status: StatusCode, msg: &str) -> Response<Body> {
    response(status, "text/plain; charset=utf-8", full(msg.to_owned()))
}

pub fn asset(body: &'static str, content_type: &'static str) -> Response<Body> {
    response(StatusCode::OK, content_type, full(body))
}

pub fn json(v: &serde_json::Value) -> Response<Body> {
    response(
        StatusCode::OK,
        "application/json",
        full(serde_json::to_vec(v).unwrap_or_default()),
    )
}
