//! A minimal OTLP/gRPC receiver for the OpenTelemetry tests.
//!
//! No OpenTelemetry collector can be installed here (none is packaged in the reachable
//! Debian, PyPI or npm registries, and Debian's Prometheus predates its OTLP receiver), so
//! the receiver is this one: the OpenTelemetry project's own generated gRPC services and
//! messages (`opentelemetry-proto`) decode what arrives; nothing is parsed by hand.

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
pub use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
pub use opentelemetry_proto::tonic::logs::v1::LogRecord;
pub use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, Span};
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the receiver got: log records and spans, each with its resource's `service.name`.
#[derive(Clone, Default)]
pub struct Received {
    pub logs: Arc<Mutex<Vec<(String, LogRecord)>>>,
    pub spans: Arc<Mutex<Vec<(String, Span)>>>,
}

#[tonic::async_trait]
impl LogsService for Received {
    async fn export(
        &self,
        req: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let mut logs = self.logs.lock().unwrap();
        for rl in req.into_inner().resource_logs {
            let service = service_name(rl.resource.as_ref().map(|r| &r.attributes[..]));
            for sl in rl.scope_logs {
                logs.extend(sl.log_records.into_iter().map(|r| (service.clone(), r)));
            }
        }
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            let service = service_name(rs.resource.as_ref().map(|r| &r.attributes[..]));
            for ss in rs.scope_spans {
                spans.extend(ss.spans.into_iter().map(|s| (service.clone(), s)));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

pub fn service_name(attrs: Option<&[KeyValue]>) -> String {
    attrs
        .and_then(|a| attr(a, "service.name"))
        .map(|v| text(&v))
        .unwrap_or_default()
}

impl Received {
    pub async fn start() -> (Self, SocketAddr) {
        Self::start_with(tonic::transport::Server::builder()).await
    }

    /// A receiver speaking TLS with `cert`/`key` (PEM), as collectors in clusters do.
    pub async fn start_tls(cert: &str, key: &str) -> (Self, SocketAddr) {
        let identity = tonic::transport::Identity::from_pem(cert, key);
        let builder = tonic::transport::Server::builder()
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .unwrap();
        Self::start_with(builder).await
    }

    pub async fn start_with(builder: tonic::transport::Server) -> (Self, SocketAddr) {
        Self::start_on(builder, "127.0.0.1:0".parse().unwrap()).await
    }

    /// A plain receiver on `bind` (port 0: any), e.g. the cluster bridge's address so
    /// pods can export to it.
    pub async fn start_at(bind: SocketAddr) -> (Self, SocketAddr) {
        Self::start_on(tonic::transport::Server::builder(), bind).await
    }

    async fn start_on(
        mut builder: tonic::transport::Server,
        bind: SocketAddr,
    ) -> (Self, SocketAddr) {
        let me = Self::default();
        let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = futures::stream::unfold(listener, |l| async move {
            Some((l.accept().await.map(|(s, _)| s), l))
        });
        let server = builder
            .add_service(LogsServiceServer::new(me.clone()))
            .add_service(TraceServiceServer::new(me.clone()))
            .serve_with_incoming(incoming);
        tokio::spawn(server);
        (me, addr)
    }

    pub fn logs(&self) -> Vec<(String, LogRecord)> {
        self.logs.lock().unwrap().clone()
    }

    pub fn spans(&self) -> Vec<(String, Span)> {
        self.spans.lock().unwrap().clone()
    }

    pub async fn wait_span(&self, pred: impl Fn(&Span) -> bool) -> Span {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some((_, s)) = self.spans().into_iter().find(|(_, s)| pred(s)) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "span not exported; got: {:#?}",
                self.spans()
                    .iter()
                    .map(|(_, s)| &s.name)
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub fn attr(attrs: &[KeyValue], key: &str) -> Option<AnyValue> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.clone())
}

/// An attribute value as the JSON log line shows it.
pub fn as_json(v: &AnyValue) -> Value {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => Value::from(s.clone()),
        Some(any_value::Value::IntValue(i)) => Value::from(*i),
        Some(any_value::Value::BoolValue(b)) => Value::from(*b),
        Some(any_value::Value::DoubleValue(d)) => Value::from(*d),
        other => panic!("unexpected attribute value {other:?}"),
    }
}

pub fn text(v: &AnyValue) -> String {
    match as_json(v) {
        Value::String(s) => s,
        other => other.to_string(),
    }
}
