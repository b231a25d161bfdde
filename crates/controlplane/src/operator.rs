//! The operator's shared state: where targets live, the sessions, the port locks, the
//! license, the policies, the limits and the telemetry. The API, the opening pipeline and
//! the session actors all read it; each piece of state inside has one owner.

use crate::backend::TargetBackend;
use crate::caller::Caller;
use crate::config::{Limits, SessionConfig};
use crate::console::ConsoleLogins;
use crate::locks::PortLocks;
use crate::policy::Policies;
use crate::rbac::Rbac;
use crate::sessions::Sessions;
use crate::trust::Revoked;
use mirrord_dataplane::FilterLimits;
use mirrord_license::Licensing;
use mirrord_protocol::{LicenseSummary, StatusReport};
use mirrord_serve::Slots;
use mirrord_telemetry::Telemetry;
use std::sync::Arc;

/// Filters compiled at once: compiling runs on blocking threads, and one user's large
/// filters must not take all of them.
const COMPILE_SLOTS: usize = 2;
/// How long an API connection that has spoken may sit idle before a newcomer may take its
/// place at `limits.max_connections` (one that has not spoken goes first; a real client's
/// handshake and hello take milliseconds).
const EVICT_IDLE_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

pub struct Operator {
    pub backend: Arc<dyn TargetBackend>,
    pub sessions: Sessions,
    pub locks: Arc<PortLocks>,
    pub telemetry: Telemetry,
    pub cfg: SessionConfig,
    pub limits: Limits,
    pub licensing: Arc<Licensing>,
    pub policies: Policies,
    /// The config file's `[[profiles]]`, by name (a cluster's are in `live_policies`).
    pub profiles: std::collections::BTreeMap<String, Policies>,
    /// A cluster's policy resources, as the Kubernetes backend last compiled them.
    pub live_policies: Arc<crate::policy::LivePolicies>,
    /// In a cluster: asks the API server what a Kubernetes user may do.
    pub rbac: Option<Arc<dyn Rbac>>,
    /// The certificates the registry lists; `None`: not checked (tests that make their
    /// own certificates).
    pub registered: Option<Arc<crate::trust::Registered>>,
    /// The process's lifecycle (see [`mirrord_serve::Shutdown`]): every session is one of
    /// its tasks, so the operator stops once they have said goodbye.
    pub shutdown: mirrord_serve::Shutdown,
    /// Whether this replica still leads: no port is granted once it does not.
    pub fence: crate::fence::Fence,
    /// Client ids whose credential was revoked while the operator runs (their handshakes
    /// already fail; this catches a connection made just before).
    pub revoked: Revoked,
    /// Login links for the console (minting refused while the console is off).
    pub console_logins: ConsoleLogins,
    pub(crate) compile_slots: crate::fair::FairSlots,
    pub(crate) connections: Arc<Slots>,
    /// What each client's unfinished frames may hold.
    pub(crate) buffers: crate::buffers::ClientBuffers,
}

/// What an operator is made of.
pub struct Parts {
    pub backend: Arc<dyn TargetBackend>,
    pub telemetry: Telemetry,
    pub cfg: SessionConfig,
    pub limits: Limits,
    pub licensing: Arc<Licensing>,
    pub policies: Policies,
    /// The config file's `[[profiles]]`, by name.
    pub profiles: std::collections::BTreeMap<String, Policies>,
    pub rbac: Option<Arc<dyn Rbac>>,
    pub registered: Option<Arc<crate::trust::Registered>>,
    /// The process's lifecycle: sessions run as its tasks, so stopping waits for them.
    pub shutdown: mirrord_serve::Shutdown,
    /// Open on one machine; with several replicas, shut once this one's lease lapses.
    pub fence: crate::fence::Fence,
}

impl Operator {
    pub fn new(p: Parts) -> Self {
        let locks = Arc::new(PortLocks::default());
        p.telemetry
            .metrics()
            .known_refusal_reasons(crate::refusal::Refusal::REASONS);
        Self {
            backend: p.backend,
            sessions: Sessions::new(p.telemetry.clone(), Arc::clone(&locks)),
            locks,
            telemetry: p.telemetry,
            cfg: p.cfg,
            connections: Slots::new(p.limits.max_connections, EVICT_IDLE_AFTER),
            buffers: crate::buffers::ClientBuffers::new(p.limits.max_buffered_bytes_per_client),
            limits: p.limits,
            licensing: p.licensing,
            policies: p.policies,
            profiles: p.profiles,
            live_policies: Arc::default(),
            rbac: p.rbac,
            registered: p.registered,
            shutdown: p.shutdown,
            fence: p.fence,
            revoked: Revoked::default(),
            console_logins: ConsoleLogins::default(),
            compile_slots: crate::fair::FairSlots::new(COMPILE_SLOTS),
        }
    }

    pub fn filter_limits(&self) -> FilterLimits {
        FilterLimits {
            max_expressions: self.limits.max_filter_expressions,
            max_pattern_len: self.limits.max_filter_pattern_len,
            regex_size: self.limits.max_filter_regex_size,
            // The same everywhere a filter runs (the agents compile with the default).
            backtrack_limit: mirrord_dataplane::filter::DEFAULT_BACKTRACK_LIMIT,
        }
    }

    /// The status report `caller` may see: a developer's holds only their own sessions.
    pub fn status(&self, caller: &Caller) -> StatusReport {
        let (sessions, copies) = self.sessions.info(|s| caller.may_manage(s));
        StatusReport {
            operator_version: env!("CARGO_PKG_VERSION").to_owned(),
            caller: mirrord_protocol::Caller {
                client_user: caller.client.client_user.clone(),
                client_id: caller.client.client_id.clone(),
                role: caller.role.to_string(),
            },
            license: self.license_summary(),
            copies,
            sessions,
            omitted_sessions: 0,
            policies: self.status_policies(caller),
        }
    }

    /// The policies the console shows `caller`: an admin (who manages them) every one, a
    /// developer those that bind them; with every profile anyone may choose.
    pub fn policies_seen_by(&self, caller: &Caller) -> Vec<mirrord_protocol::PolicyInfo> {
        let live = self.live_policies.get();
        let mut seen = match caller.role {
            mirrord_identity::Role::Admin => {
                let mut all = self.policies.all();
                all.extend(live.policies.all());
                all
            }
            _ => self.status_policies(caller),
        };
        seen.extend(self.profiles.values().flat_map(Policies::all));
        seen.extend(live.profiles.values().flat_map(Policies::all));
        seen
    }

    /// The policies that bind `caller` (TOML, then the cluster's).
    fn status_policies(&self, caller: &Caller) -> Vec<mirrord_protocol::PolicyInfo> {
        let groups = caller.kubernetes_groups().unwrap_or_default();
        let mut p = self.policies.binding(caller.user(), caller.role, groups);
        p.extend(
            self.live_policies
                .get()
                .policies
                .binding(caller.user(), caller.role, groups),
        );
        p
    }

    fn license_summary(&self) -> Option<LicenseSummary> {
        let v = self.licensing.view(chrono::Utc::now());
        if !v.enforced {
            return None;
        }
        let l = v.license.as_ref();
        Some(LicenseSummary {
            enforced: true,
            name: l.map(|l| l.name.clone()).unwrap_or_default(),
            organization: l.map(|l| l.organization.clone()).unwrap_or_default(),
            expires: l.map(|l| l.expires.to_string()).unwrap_or_default(),
            fingerprint: l.map(|l| l.fingerprint.clone()).unwrap_or_default(),
            seats: l.map(|l| l.seats).unwrap_or_default(),
            seats_used: v.seats_used as u32,
            seats_month: v.month,
            problem: v.problem,
        })
    }

    /// Ends every session (operator shutting down).
    pub fn end_all(&self, reason: &str) {
        for s in self.sessions.list() {
            self.sessions.end(s.id, reason);
        }
    }
}
