//! OpenTelemetry export, opt-in with the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (and the
//! other `OTEL_*` variables the SDK reads): functional events as OTLP log records, a span
//! per session, and a span per stolen HTTP request whose W3C `traceparent` continues into
//! the developer's process.
//!
//! Owns the SDK providers and the spans of open sessions. Log records are bridged from the
//! very tracing events that make the log lines ([`Otel::logger_provider`]), so both carry
//! the same fields. Export runs on the SDK's batch threads behind bounded queues: a slow or
//! absent collector costs exported records (the SDK drops them when its queue is full),
//! never a log line and never a request's latency.

use crate::event::{Event, SessionMeta, Value};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{
    Link, Span as _, SpanContext, SpanKind, Status, TraceContextExt, Tracer as _,
    TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig, Identity};
use opentelemetry_otlp::WithTonicConfig;
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, Span};
use opentelemetry_sdk::Resource;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The instrumentation scope and default `service.name`.
const SERVICE: &str = "mirrord-operator";
/// How long shutdown waits for the last batches to reach the collector.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum OtelError {
    #[error(
        "{var}={value}: this operator exports OTLP over gRPC only; unset it or set it to `grpc` \
         (the endpoint is then a gRPC one, by convention port 4317)"
    )]
    Protocol { var: String, value: String },
    #[error("{var}={path}: cannot read it")]
    TlsFile {
        var: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY go together: set both or neither")]
    ClientIdentity,
    #[error("cannot set up the OTLP {signal} exporter")]
    Exporter {
        signal: &'static str,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

/// Which signals the environment asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Signals {
    pub traces: bool,
    pub logs: bool,
}

impl Signals {
    /// From the standard variables: a signal is exported when the general or its own
    /// endpoint is set, unless `OTEL_{TRACES,LOGS}_EXPORTER=none` or `OTEL_SDK_DISABLED=true`.
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Self, OtelError> {
        let set = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        if set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(Self::default());
        }
        let general = set("OTEL_EXPORTER_OTLP_ENDPOINT").is_some();
        let wanted = |signal: &str| {
            (general || set(&format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")).is_some())
                && set(&format!("OTEL_{signal}_EXPORTER")).is_none_or(|v| v != "none")
        };
        let signals = Self {
            traces: wanted("TRACES"),
            logs: wanted("LOGS"),
        };
        for var in [
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL",
        ] {
            match set(var) {
                Some(value) if value != "grpc" => {
                    return Err(OtelError::Protocol {
                        var: var.into(),
                        value,
                    })
                }
                _ => {}
            }
        }
        Ok(signals)
    }
}

/// Whether `signal`'s collector (its own endpoint, else the general one) is `https://`:
/// only those get a TLS configuration. A plain `http://` collector must work in an image
/// without any CA bundle (the operator's has none); tonic's native roots refuse to build
/// there.
fn wants_tls(env: &impl Fn(&str) -> Option<String>, signal: &str) -> bool {
    let set = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    set(&format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"))
        .or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT"))
        .is_some_and(|e| e.trim().to_ascii_lowercase().starts_with("https://"))
}

/// TLS for `https://` collectors, from the standard variables: the system's roots (when
/// it has any) and `OTEL_EXPORTER_OTLP_CERTIFICATE` (a PEM CA, e.g. a cluster's), and a
/// client identity from `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE` / `_CLIENT_KEY` for
/// collectors that want mutual TLS.
fn tls_from_env(env: impl Fn(&str) -> Option<String>) -> Result<ClientTlsConfig, OtelError> {
    let read = |var: &'static str| -> Result<Option<Vec<u8>>, OtelError> {
        let Some(path) = env(var).filter(|v| !v.trim().is_empty()) else {
            return Ok(None);
        };
        std::fs::read(&path)
            .map(Some)
            .map_err(|source| OtelError::TlsFile { var, path, source })
    };
    let ca = read("OTEL_EXPORTER_OTLP_CERTIFICATE")?;
    let mut tls = ClientTlsConfig::new();
    // tonic refuses to build with native roots on a system that has none; a given CA
    // is then all there is to trust.
    if ca.is_none() || !rustls_native_certs::load_native_certs().certs.is_empty() {
        tls = tls.with_native_roots();
    }
    if let Some(ca) = ca {
        tls = tls.ca_certificate(Certificate::from_pem(ca));
    }
    match (
        read("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE")?,
        read("OTEL_EXPORTER_OTLP_CLIENT_KEY")?,
    ) {
        (Some(cert), Some(key)) => tls = tls.identity(Identity::from_pem(cert, key)),
        (None, None) => {}
        _ => return Err(OtelError::ClientIdentity),
    }
    Ok(tls)
}

/// The export side: providers, the tracer, and the span of every open session.
pub struct Otel {
    traces: Option<(SdkTracerProvider, SdkTracer)>,
    logs: Option<SdkLoggerProvider>,
    sessions: Mutex<HashMap<String, Span>>,
}

impl Otel {
    /// `None` when the environment asks for no export. Call inside the tokio runtime that
    /// will carry the export (the gRPC channel lives on it).
    pub fn from_env() -> Result<Option<Arc<Self>>, OtelError> {
        let signals = Signals::from_env(|k| std::env::var(k).ok())?;
        if signals == Signals::default() {
            return Ok(None);
        }
        let resource = resource();
        let env = |k: &str| std::env::var(k).ok();
        let tls = tls_from_env(env)?;
        let traces = if signals.traces {
            let mut builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
            if wants_tls(&env, "TRACES") {
                builder = builder.with_tls_config(tls.clone());
            }
            let exporter = builder.build().map_err(|source| OtelError::Exporter {
                signal: "traces",
                source,
            })?;
            let provider = SdkTracerProvider::builder()
                .with_resource(resource.clone())
                .with_batch_exporter(exporter)
                .build();
            let tracer = provider.tracer(SERVICE);
            Some((provider, tracer))
        } else {
            None
        };
        let logs = if signals.logs {
            let mut builder = opentelemetry_otlp::LogExporter::builder().with_tonic();
            if wants_tls(&env, "LOGS") {
                builder = builder.with_tls_config(tls);
            }
            let exporter = builder.build().map_err(|source| OtelError::Exporter {
                signal: "logs",
                source,
            })?;
            Some(
                SdkLoggerProvider::builder()
                    .with_resource(resource)
                    .with_batch_exporter(exporter)
                    .build(),
            )
        } else {
            None
        };
        Ok(Some(Arc::new(Self {
            traces,
            logs,
            sessions: Mutex::default(),
        })))
    }

    /// For the log bridge (see [`crate::logs::init`]), when logs are exported.
    pub fn logger_provider(&self) -> Option<&SdkLoggerProvider> {
        self.logs.as_ref()
    }

    /// Opens the session's span; its handle goes with the session's routes so that stolen
    /// requests become its children.
    pub fn session_started(&self, meta: &SessionMeta) -> SessionTrace {
        let Some((_, tracer)) = &self.traces else {
            return SessionTrace::default();
        };
        let span = tracer
            .span_builder("mirrord session")
            .with_kind(SpanKind::Internal)
            .with_attributes(session_attributes(meta))
            .start_with_context(tracer, &Context::new());
        let context = span.span_context().clone();
        self.sessions().insert(meta.session_id.clone(), span);
        SessionTrace(Some(Arc::new(TraceInner {
            tracer: tracer.clone(),
            session: context,
            session_id: meta.session_id.clone(),
            target: meta.target(),
            client_user: meta.client.client_user.clone(),
        })))
    }

    /// The context an event's log record belongs to: its session's span.
    pub fn context_of(&self, event: &Event) -> Option<Context> {
        let id = &event.session()?.session_id;
        let sessions = self.sessions();
        let span = sessions.get(id)?;
        Some(Context::new().with_remote_span_context(span.span_context().clone()))
    }

    /// Session events become events of the session's span (named and with fields as the
    /// event's one description says); the end ends it.
    pub fn observe(&self, event: &Event) {
        let Some(d) = event.describe() else {
            return;
        };
        let Some(session) = d.session else {
            return;
        };
        let mut sessions = self.sessions();
        if let Event::SessionEnded {
            duration, reason, ..
        } = event
        {
            if let Some(mut span) = sessions.remove(&session.session_id) {
                span.set_attribute(KeyValue::new(
                    "mirrord.session.duration_s",
                    duration.as_secs() as i64,
                ));
                span.set_attribute(KeyValue::new("mirrord.session.end_reason", reason.clone()));
                span.end();
            }
            return;
        }
        if matches!(event, Event::SessionStarted { .. }) {
            return;
        }
        if let Some(span) = sessions.get_mut(&session.session_id) {
            span.add_event(d.name, attributes(&d.fields));
        }
    }

    /// Ends the spans of sessions still open and flushes what is queued (bounded wait).
    pub fn shutdown(&self) {
        for (_, mut span) in self.sessions().drain() {
            span.set_attribute(KeyValue::new(
                "mirrord.session.end_reason",
                "operator stopped",
            ));
            span.end();
        }
        // Both at once: a collector that does not answer costs one wait, not two.
        std::thread::scope(|scope| {
            if let Some((provider, _)) = &self.traces {
                scope.spawn(|| {
                    if let Err(e) = provider.shutdown_with_timeout(SHUTDOWN_WAIT) {
                        tracing::warn!(error = %e, "OpenTelemetry: the last spans may not have been exported");
                    }
                });
            }
            if let Some(provider) = &self.logs {
                if let Err(e) = provider.shutdown_with_timeout(SHUTDOWN_WAIT) {
                    tracing::warn!(error = %e, "OpenTelemetry: the last log records may not have been exported");
                }
            }
        });
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Span>> {
        // A panic elsewhere while holding it leaves a usable map.
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `service.name` is `mirrord-operator` unless `OTEL_SERVICE_NAME` or
/// `OTEL_RESOURCE_ATTRIBUTES` name one (the SDK reads both).
fn resource() -> Resource {
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| v.contains("service.name="));
    let builder = Resource::builder()
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if named {
        builder.build()
    } else {
        builder.with_service_name(SERVICE).build()
    }
}

/// `mirrord.<field>` attributes, numbers and flags as such.
fn attributes(fields: &[(&'static str, Value<'_>)]) -> Vec<KeyValue> {
    fields
        .iter()
        .map(|(name, value)| {
            let key = format!("mirrord.{name}");
            match value {
                Value::Text(t) => KeyValue::new(key, t.to_string()),
                Value::Number(n) => KeyValue::new(key, *n as i64),
                Value::Flag(b) => KeyValue::new(key, *b),
            }
        })
        .collect()
}

fn session_attributes(meta: &SessionMeta) -> Vec<KeyValue> {
    attributes(&meta.fields())
}

/// A session's handle for tracing its stolen requests: cheap to clone, inert (and free)
/// when traces are not exported.
#[derive(Clone, Default)]
pub struct SessionTrace(Option<Arc<TraceInner>>);

struct TraceInner {
    tracer: SdkTracer,
    session: SpanContext,
    session_id: String,
    target: String,
    client_user: String,
}

impl SessionTrace {
    /// Starts the span of a stolen request. Its parent is the caller's trace when the
    /// request carries a valid `traceparent` (the session span is then a link), else the
    /// session's span.
    pub fn stolen_request(
        &self,
        port: u16,
        method: &str,
        path: &str,
        headers: &http::HeaderMap,
    ) -> RequestSpan {
        let Some(t) = &self.0 else {
            return RequestSpan(None);
        };
        let caller = TraceContextPropagator::new().extract(&Headers(headers));
        let (parent, links) = if caller.span().span_context().is_valid() {
            (caller, vec![Link::with_context(t.session.clone())])
        } else {
            (
                Context::new().with_remote_span_context(t.session.clone()),
                Vec::new(),
            )
        };
        let span = t
            .tracer
            .span_builder(format!("steal {method}"))
            .with_kind(SpanKind::Server)
            .with_links(links)
            .with_attributes([
                KeyValue::new("http.request.method", method.to_owned()),
                KeyValue::new("url.path", path.to_owned()),
                KeyValue::new("server.port", i64::from(port)),
                KeyValue::new("mirrord.session_id", t.session_id.clone()),
                KeyValue::new("mirrord.target", t.target.clone()),
                KeyValue::new("mirrord.client_user", t.client_user.clone()),
            ])
            .start_with_context(&t.tracer, &parent);
        RequestSpan(Some(span))
    }
}

/// The span of one stolen request; ended by [`RequestSpan::finish`] (or when dropped).
pub struct RequestSpan(Option<Span>);

impl RequestSpan {
    /// The trace headers the developer's process receives instead of the caller's:
    /// `traceparent` naming this span as the parent, and the caller's `tracestate`.
    pub fn propagation_headers(&self) -> Vec<(String, String)> {
        let Some(span) = &self.0 else {
            return Vec::new();
        };
        let cx = Context::new().with_remote_span_context(span.span_context().clone());
        let mut headers = HashMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut headers);
        let mut headers: Vec<_> = headers.into_iter().collect();
        headers.sort();
        headers
    }

    /// Ends the span with the status the caller got; `problem`: why the operator answered
    /// itself (5xx), if it did.
    pub fn finish(self, status: u16, problem: Option<&str>) {
        let Some(mut span) = self.0 else { return };
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if let Some(problem) = problem {
            span.set_status(Status::error(problem.to_owned()));
        } else if status >= 500 {
            span.set_status(Status::error(format!("HTTP {status}")));
        }
        span.end();
    }
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn nothing_is_exported_without_an_endpoint() {
        assert_eq!(Signals::from_env(env(&[])).unwrap(), Signals::default());
        let both = Signals {
            traces: true,
            logs: true,
        };
        let e = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")];
        assert_eq!(Signals::from_env(env(&e)).unwrap(), both);
    }

    #[test]
    fn each_signal_has_its_own_endpoint_and_off_switch() {
        let only_logs = [("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://c:4317")];
        assert_eq!(
            Signals::from_env(env(&only_logs)).unwrap(),
            Signals {
                traces: false,
                logs: true
            }
        );
        let no_traces = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ];
        assert_eq!(
            Signals::from_env(env(&no_traces)).unwrap(),
            Signals {
                traces: false,
                logs: true
            }
        );
        let disabled = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_SDK_DISABLED", "true"),
        ];
        assert_eq!(
            Signals::from_env(env(&disabled)).unwrap(),
            Signals::default()
        );
    }

    #[test]
    fn a_protocol_other_than_grpc_is_refused_by_name() {
        let e = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ];
        let err = Signals::from_env(env(&e)).unwrap_err().to_string();
        assert!(
            err.contains("OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf") && err.contains("gRPC"),
            "{err}"
        );
    }

    #[test]
    fn only_https_collectors_get_tls_and_a_signals_own_endpoint_wins() {
        let plain = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")];
        assert!(!wants_tls(&env(&plain), "TRACES"));
        let secure = [("OTEL_EXPORTER_OTLP_ENDPOINT", " HTTPS://c:4317")];
        assert!(wants_tls(&env(&secure), "LOGS"));
        let mixed = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:4317"),
        ];
        assert!(!wants_tls(&env(&mixed), "TRACES"));
        assert!(wants_tls(&env(&mixed), "LOGS"));
    }

    #[test]
    fn an_inert_trace_costs_nothing_and_adds_no_headers() {
        let span = SessionTrace::default().stolen_request(80, "GET", "/", &http::HeaderMap::new());
        assert!(span.propagation_headers().is_empty());
        span.finish(200, None);
    }
}
