//! Telemetry: the one place where the operator's functional events become log lines and
//! metric updates, so the two can never disagree.
//!
//! - [`event`]: the typed [`Event`] every state change is reported as.
//! - [`logs`]: tracing set-up (human or JSON, level from the environment);
//!   [`text_fields`] keeps the human format's values from passing for other fields;
//!   [`throttle`] bounds warnings a stranger can cause.
//! - [`metrics`]: the Prometheus registry and the `/metrics` server; `labels` has their
//!   label sets, one struct each.
//! - [`otel`]: OpenTelemetry export (OTLP log records and spans), when configured.
//! - [`feed`]: a bounded ring of the latest events for live viewers (the console), off
//!   unless [`Telemetry::with_feed`] turned it on.
//!
//! Call sites only ever build an [`Event`] and hand it to [`Telemetry::record`].
#![forbid(unsafe_code)]

pub mod event;
pub mod feed;
mod labels;
pub mod logs;
pub mod metrics;
pub mod otel;
pub mod ping_latency;
pub mod text_fields;
pub mod throttle;

pub use event::{ClientInfo, Event, SessionMeta};
pub use feed::{Feed, FeedItem};
pub use metrics::{CopyDrops, Metrics, PortCounters};
pub use otel::{Otel, RequestSpan, SessionTrace};
pub use throttle::Throttle;

use std::sync::Arc;
use std::time::Duration;

/// Shared handle: cheap to clone, safe to call from any task.
#[derive(Clone)]
pub struct Telemetry {
    metrics: Arc<Metrics>,
    otel: Option<Arc<Otel>>,
    feed: Option<Arc<Feed>>,
}

impl Telemetry {
    /// `series_grace`: how long series labelled by a session id outlive the session.
    pub fn new(series_grace: Duration) -> Self {
        Self {
            metrics: Arc::new(Metrics::new(series_grace)),
            otel: None,
            feed: None,
        }
    }

    /// Also keeps the latest `capacity` functional events for live viewers.
    pub fn with_feed(mut self, capacity: usize) -> Self {
        self.feed = Some(Arc::new(Feed::new(capacity)));
        self
    }

    pub fn feed(&self) -> Option<&Arc<Feed>> {
        self.feed.as_ref()
    }

    /// Exports events and spans over OTLP too (see [`otel`]).
    pub fn with_otel(mut self, otel: Option<Arc<Otel>>) -> Self {
        self.otel = otel;
        self
    }

    /// Opens the session's span when traces are exported; the handle its routes carry.
    pub fn session_trace(&self, session: &SessionMeta) -> SessionTrace {
        self.otel
            .as_ref()
            .map(|o| o.session_started(session))
            .unwrap_or_default()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Logs the event (functional events at INFO, exactly as the spec names them) and
    /// updates the metrics derived from it.
    pub fn record(&self, event: Event) {
        match &self.otel {
            None => event::log(&event),
            Some(otel) => {
                // The log record exported for this line carries its session's trace.
                let _in_session = otel.context_of(&event).map(|cx| cx.attach());
                event::log(&event);
                drop(_in_session);
                otel.observe(&event);
            }
        }
        self.metrics.observe(&event);
        if let Some(feed) = &self.feed {
            feed.push(&event);
        }
    }
}
