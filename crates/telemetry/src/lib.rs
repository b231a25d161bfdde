//! Telemetry: the one place where the operator's functional events become log lines and
//! metric updates, so the two can never disagree.
//!
//! - [`event`]: the typed [`Event`] every state change is reported as.
//! - [`logs`]: tracing set-up (human or JSON, level from the environment).
//! - [`metrics`]: the Prometheus registry and the `/metrics` server.
//! - [`feed`]: a bounded ring of the latest events for live viewers (the console), off
//!   unless [`Telemetry::with_feed`] turned it on.
//!
//! Call sites only ever build an [`Event`] and hand it to [`Telemetry::record`].
#![forbid(unsafe_code)]

pub mod event;
pub mod feed;
pub mod logs;
pub mod metrics;

pub use event::{ClientInfo, Event, SessionMeta};
pub use feed::{Feed, FeedItem};
pub use metrics::{Metrics, PortCounters};

use std::sync::Arc;
use std::time::Duration;

/// Shared handle: cheap to clone, safe to call from any task.
#[derive(Clone)]
pub struct Telemetry {
    metrics: Arc<Metrics>,
    feed: Option<Arc<Feed>>,
}

impl Telemetry {
    /// `series_grace`: how long series labelled by a session id outlive the session.
    pub fn new(series_grace: Duration) -> Self {
        Self {
            metrics: Arc::new(Metrics::new(series_grace)),
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

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Logs the event (functional events at INFO, exactly as the spec names them) and
    /// updates the metrics derived from it.
    pub fn record(&self, event: Event) {
        event::log(&event);
        self.metrics.observe(&event);
        if let Some(feed) = &self.feed {
            feed.push(&event);
        }
    }
}
