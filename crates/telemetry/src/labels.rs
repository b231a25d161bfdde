//! The metrics' label sets, one struct each: a series is named by a value of its set's
//! struct, never by a positional list of strings, so a label's name and its value cannot
//! drift apart (nor two labels swap places).

use prometheus::core::{MetricVec, MetricVecBuilder};

/// A label set of `N` labels: their names (in the order the metric was declared with) and a
/// series' values.
pub(crate) trait Labels<const N: usize> {
    const NAMES: [&'static str; N];
    fn values(&self) -> [&str; N];
}

/// The series of `vec` that `labels` name (made at zero if it does not exist yet).
pub(crate) fn series<T: MetricVecBuilder, const N: usize>(
    vec: &MetricVec<T>,
    labels: &impl Labels<N>,
) -> T::M {
    vec.with_label_values(&labels.values())
}

/// Removes the series of `vec` that `labels` name, if it exists.
pub(crate) fn forget<T: MetricVecBuilder, const N: usize>(
    vec: &MetricVec<T>,
    labels: &impl Labels<N>,
) {
    let _ = vec.remove_label_values(&labels.values());
}

/// Who opened a session (`mirrord_sessions_create_total`, `mirrord_sessions_duration`): the
/// spec's names. `client_name` and `client_hostname` are bounded per client.
pub(crate) struct User {
    pub client_hostname: String,
    pub client_name: String,
    pub client_user: String,
    /// The client id.
    pub user_id: String,
}

impl Labels<4> for User {
    const NAMES: [&'static str; 4] = ["client_hostname", "client_name", "client_user", "user_id"];
    fn values(&self) -> [&str; 4] {
        [
            &self.client_hostname,
            &self.client_name,
            &self.client_user,
            &self.user_id,
        ]
    }
}

/// A session's stolen traffic on one port (`mirrord_stolen_*_count`): the spec's names.
pub(crate) struct Stolen {
    pub session_id: String,
    pub port: String,
    pub namespace: String,
    pub target: String,
    pub user_id: String,
}

impl Labels<5> for Stolen {
    const NAMES: [&'static str; 5] = ["session_id", "port", "namespace", "target", "user_id"];
    fn values(&self) -> [&str; 5] {
        [
            &self.session_id,
            &self.port,
            &self.namespace,
            &self.target,
            &self.user_id,
        ]
    }
}

/// A target's port (`mirrord_bypassed_requests_total`, `mirrord_filter_limited_requests_total`).
pub(crate) struct Port<'a> {
    pub namespace: &'a str,
    pub target: &'a str,
    pub port: String,
}

impl Labels<3> for Port<'_> {
    const NAMES: [&'static str; 3] = ["namespace", "target", "port"];
    fn values(&self) -> [&str; 3] {
        [self.namespace, self.target, &self.port]
    }
}

/// What a session's process did through its target's context
/// (`mirrord_outgoing_connections_count`, `mirrord_outgoing_bytes_count`,
/// `mirrord_dns_queries_count`): the stolen counters' labels without `port`, with what
/// happened (`result`, or the bytes' `direction`).
pub(crate) struct Context<'a> {
    pub session_id: &'a str,
    pub namespace: &'a str,
    pub target: &'a str,
    pub user_id: &'a str,
    pub what: &'a str,
}

impl Context<'_> {
    pub const RESULT: [&'static str; 5] =
        ["session_id", "namespace", "target", "user_id", "result"];
    pub const DIRECTION: [&'static str; 5] =
        ["session_id", "namespace", "target", "user_id", "direction"];
}

/// `Context`'s values; the last label's name depends on the metric (see the consts).
impl Labels<5> for Context<'_> {
    const NAMES: [&'static str; 5] = Context::RESULT;
    fn values(&self) -> [&str; 5] {
        [
            self.session_id,
            self.namespace,
            self.target,
            self.user_id,
            self.what,
        ]
    }
}

/// A port held, and how (`mirrord_port_locks`).
pub(crate) struct Lock<'a> {
    pub target: &'a str,
    pub port: &'a str,
    pub mode: &'a str,
}

impl Labels<3> for Lock<'_> {
    const NAMES: [&'static str; 3] = ["target", "port", "mode"];
    fn values(&self) -> [&str; 3] {
        [self.target, self.port, self.mode]
    }
}

/// Why (`mirrord_session_refusals_total`, `mirrord_mirror_copies_dropped_total`).
pub(crate) struct Reason<'a>(pub &'a str);

impl Labels<1> for Reason<'_> {
    const NAMES: [&'static str; 1] = ["reason"];
    fn values(&self) -> [&str; 1] {
        [self.0]
    }
}

/// The build (`mirrord_build_info`).
pub(crate) struct Version<'a>(pub &'a str);

impl Labels<1> for Version<'_> {
    const NAMES: [&'static str; 1] = ["version"];
    fn values(&self) -> [&str; 1] {
        [self.0]
    }
}
