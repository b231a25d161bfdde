//! The functional events and their log lines.
//!
//! Field names are a contract (see `spec/monitoring.md`): dashboards query
//! `fields.message`, `fields.client_id`, `fields.session_id`, ... Every event carries
//! `target`, the four client fields, and `target_type`, `target_name`, `target_namespace`,
//! `client_cli_version`; the rest depend on the event.

use std::sync::Arc;
use std::time::Duration;

/// Who a session belongs to, as authenticated (`client_id`, `client_user`) and as reported
/// by the client (`client_name`, `client_hostname`, `cli_version`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    pub client_id: String,
    pub client_user: String,
    pub client_name: String,
    pub client_hostname: String,
    pub cli_version: String,
}

/// Everything an event needs to say about its session; shared by all its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionMeta {
    pub session_id: String,
    pub target_type: String,
    pub target_name: String,
    pub target_namespace: String,
    pub client: ClientInfo,
}

impl SessionMeta {
    /// `deployment/api`: the form users address targets by.
    pub fn target(&self) -> String {
        format!("{}/{}", self.target_type, self.target_name)
    }
}

#[derive(Debug, Clone)]
pub enum Event {
    SessionStarted {
        session: Arc<SessionMeta>,
    },
    SessionEnded {
        session: Arc<SessionMeta>,
        duration: Duration,
        reason: String,
    },
    PortStolen {
        session: Arc<SessionMeta>,
        port: u16,
        /// The filter as the user wrote it; empty when unfiltered.
        http_filter: String,
    },
    PortMirrored {
        session: Arc<SessionMeta>,
        port: u16,
        http_filter: String,
    },
    PortReleased {
        session: Arc<SessionMeta>,
        port: u16,
        mode: &'static str,
        filtered: bool,
    },
    TargetCopied {
        session: Arc<SessionMeta>,
        copy_name: String,
        scale_down: bool,
    },
    /// The operator measured a ping round trip to the session's client.
    PingLatency {
        session: Arc<SessionMeta>,
        rtt: Duration,
    },
    /// A session request was refused; `reason` is a metric label (conflict, policy,
    /// license, seats, bad_request).
    SessionRefused {
        reason: &'static str,
        client: ClientInfo,
        /// The target as requested (it may not exist).
        target_type: String,
        target_name: String,
        target_namespace: String,
        message: String,
    },
    /// Audit: a session was ended on request (`mirrordctl sessions kill`), by its owner or
    /// by an admin.
    SessionKilled {
        session: Arc<SessionMeta>,
        by: ClientInfo,
        by_role: &'static str,
    },
    /// Audit: a port was taken from its holder by `--on-concurrent-steal override`.
    PortTakenOver {
        /// The session that lost the port.
        session: Arc<SessionMeta>,
        port: u16,
        by: ClientInfo,
        by_role: &'static str,
        by_session: String,
    },
    /// Audit: something the caller's role does not allow was refused (a session refused
    /// for its role is `SessionRefused` with reason `forbidden`).
    RequestForbidden {
        client: ClientInfo,
        role: &'static str,
        /// What was asked, e.g. `kill session 1F2E...`.
        action: String,
        message: String,
    },
    /// Audit: the operator loaded a revocation list naming this credential; it can no
    /// longer connect and its sessions were ended.
    CredentialRevoked {
        client_user: String,
        client_id: String,
        role: &'static str,
        serial: String,
        revoked_by: String,
        sessions_ended: usize,
    },
}

macro_rules! functional {
    ($msg:literal, $s:expr, $($fields:tt)*) => {{
        let s: &SessionMeta = $s;
        tracing::info!(
            // The event's name: OpenTelemetry log records carry it as `event_name`.
            name: $msg,
            target = %s.target(),
            client_hostname = %s.client.client_hostname,
            client_name = %s.client.client_name,
            client_user = %s.client.client_user,
            client_id = %s.client.client_id,
            target_type = %s.target_type,
            target_name = %s.target_name,
            target_namespace = %s.target_namespace,
            client_cli_version = %s.client.cli_version,
            $($fields)*
            $msg
        )
    }};
}

pub(crate) fn log(event: &Event) {
    match event {
        Event::SessionStarted { session } => {
            functional!("Session Started", session, session_id = %session.session_id,)
        }
        Event::SessionEnded {
            session,
            duration,
            reason,
        } => functional!(
            "Session Ended",
            session,
            session_id = %session.session_id,
            session_duration = duration.as_secs(),
            reason = %reason,
        ),
        Event::PortStolen {
            session,
            port,
            http_filter,
        } => functional!(
            "Port Stolen",
            session,
            session_id = %session.session_id,
            port = *port,
            http_filter = %http_filter,
        ),
        Event::PortMirrored {
            session,
            port,
            http_filter,
        } => functional!(
            "Port Mirrored",
            session,
            session_id = %session.session_id,
            port = *port,
            http_filter = %http_filter,
        ),
        Event::PortReleased { session, port, .. } => functional!(
            "Port Released",
            session,
            session_id = %session.session_id,
            port = *port,
        ),
        Event::TargetCopied {
            session,
            copy_name,
            scale_down,
        } => functional!(
            "Target Copied",
            session,
            session_id = %session.session_id,
            scale_down = *scale_down,
            copy_name = %copy_name,
        ),
        Event::PingLatency { session, rtt } => tracing::trace!(
            session_id = %session.session_id,
            rtt_us = rtt.as_micros() as u64,
            "ping"
        ),
        Event::SessionRefused {
            reason,
            client,
            target_type,
            target_name,
            target_namespace,
            message,
        } => tracing::warn!(
            name: "Session Refused",
            reason = *reason,
            target = %format_args!("{target_type}/{target_name}"),
            target_type = %target_type,
            target_name = %target_name,
            target_namespace = %target_namespace,
            client_id = %client.client_id,
            client_user = %client.client_user,
            client_name = %client.client_name,
            client_hostname = %client.client_hostname,
            error = %message,
            "Session Refused"
        ),
        Event::SessionKilled {
            session,
            by,
            by_role,
        } => functional!(
            "Session Killed",
            session,
            session_id = %session.session_id,
            by_user = %by.client_user,
            by_client_id = %by.client_id,
            by_role = *by_role,
        ),
        Event::PortTakenOver {
            session,
            port,
            by,
            by_role,
            by_session,
        } => functional!(
            "Port Taken Over",
            session,
            session_id = %session.session_id,
            port = *port,
            by_user = %by.client_user,
            by_client_id = %by.client_id,
            by_role = *by_role,
            by_session = %by_session,
        ),
        Event::RequestForbidden {
            client,
            role,
            action,
            message,
        } => tracing::warn!(
            name: "Request Forbidden",
            reason = "forbidden",
            client_id = %client.client_id,
            client_user = %client.client_user,
            client_name = %client.client_name,
            client_hostname = %client.client_hostname,
            client_role = *role,
            action = %action,
            error = %message,
            "Request Forbidden"
        ),
        Event::CredentialRevoked {
            client_user,
            client_id,
            role,
            serial,
            revoked_by,
            sessions_ended,
        } => tracing::info!(
            name: "Credential Revoked",
            client_user = %client_user,
            client_id = %client_id,
            client_role = *role,
            serial = %serial,
            revoked_by = %revoked_by,
            sessions_ended = *sessions_ended,
            "Credential Revoked"
        ),
    }
}
