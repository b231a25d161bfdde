//! What one intercepted port is configured with and shares with the rest of the process:
//! its limits (from the operator's `[limits]`) and its services (counters, the copy
//! budget). Read by the listener and by the HTTP routing alike.

use crate::budget::Budget;
use mirrord_telemetry::metrics::BypassCounter;
use mirrord_telemetry::CopyDrops;
use std::sync::Arc;
use std::time::Duration;

/// How an interceptor treats its clients; from the operator's `[limits]`.
#[derive(Debug, Clone, Copy)]
pub struct InterceptorLimits {
    /// How long a client has for a request head (from the moment the interceptor waits
    /// for one) when requests are routed one by one; 408 after that.
    pub header_read_timeout: Duration,
    /// How long a stolen request waits for the developer's answer to begin; 504 after.
    pub response_timeout: Duration,
    /// Connections one port serves at once; more wait in the listen backlog.
    pub max_connections: usize,
}

impl PortServices {
    /// Services whose counters nobody reads (tests, and agents, which report to the operator).
    pub fn detached(copy_budget: Arc<Budget>) -> Self {
        let metrics = mirrord_telemetry::Metrics::new(std::time::Duration::ZERO);
        Self {
            bypass: metrics.bypass_counter("", "", 0),
            copy_drops: metrics.copy_drops(),
            copy_budget,
        }
    }
}

impl Default for InterceptorLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(60),
            response_timeout: Duration::from_secs(60),
            max_connections: 10_000,
        }
    }
}

/// What a port's data path shares with the rest of the process.
#[derive(Clone)]
pub struct PortServices {
    /// Requests a filtered steal let through.
    pub bypass: BypassCounter,
    /// Mirror copies not delivered.
    pub copy_drops: CopyDrops,
    /// What mirror copies of the whole process may hold at once.
    pub copy_budget: Arc<Budget>,
}
