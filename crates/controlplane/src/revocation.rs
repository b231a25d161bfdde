//! Revocation while the operator runs.
//!
//! `certs revoke` writes a new CA-signed revocation list into the state directory. This
//! module owns the API's TLS configuration: it loads the list at start (so revocation
//! survives restarts), then checks the file every second; when it changes, a new
//! configuration (same serving certificate, new list) replaces the old one for every
//! handshake from then on, the sessions of the newly revoked credentials end with a reason
//! their clients see, and a `Credential Revoked` line records who revoked whom.
//!
//! A list that cannot be read at start stops the operator (starting without it would let
//! revoked credentials back in); one that breaks or disappears later is reported and the
//! revocations already loaded stay in force.
//!
//! The registry (`issued.json`) is followed the same way: a certificate the CA signed but
//! the registry does not list (made from a copy of the CA, or before a registry was lost)
//! could be neither listed nor revoked, so it is refused ([`Registered`]).

use crate::operator::Operator;
use crate::trust::{stamp, Registered, Stamp};
use arc_swap::ArcSwap;
use mirrord_identity::registry::{self, IssuedRecord};
use mirrord_identity::{IdentityError, ServerTls};
use mirrord_telemetry::Event;
use rustls::ServerConfig;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The API's TLS configuration and the revocation list it was made with.
pub struct ApiTls {
    server: ServerTls,
    current: Arc<ArcSwap<ServerConfig>>,
    state_dir: PathBuf,
    stamp: Stamp,
    /// Serial numbers in the list loaded.
    serials: HashSet<String>,
    registered: Arc<Registered>,
}

impl ApiTls {
    /// The configuration with the list `state_dir` holds (if any).
    pub fn load(server: ServerTls, state_dir: &Path) -> Result<Self, IdentityError> {
        let path = registry::crl_path(state_dir);
        let stamp = stamp(&path);
        let (crl, serials) = match registry::load_crl(state_dir)? {
            Some((der, serials)) => (Some(der), serials.into_iter().collect()),
            None => (None, HashSet::new()),
        };
        let config = server.config(crl)?;
        if !serials.is_empty() {
            tracing::info!(revoked = serials.len(), path = %path.display(), "revocation list loaded");
        }
        let registered = Arc::new(Registered::load(state_dir)?);
        Ok(Self {
            server,
            current: Arc::new(ArcSwap::new(config)),
            state_dir: state_dir.to_owned(),
            stamp,
            serials,
            registered,
        })
    }

    /// What the API server accepts with: always the latest configuration.
    pub fn config(&self) -> Arc<ArcSwap<ServerConfig>> {
        Arc::clone(&self.current)
    }

    /// The serial numbers of the credentials the registry lists, kept up to date by
    /// [`ApiTls::watch`].
    pub fn registered(&self) -> Arc<Registered> {
        Arc::clone(&self.registered)
    }

    /// Follows the list every `every`, for as long as the operator runs.
    pub async fn watch(mut self, op: Arc<Operator>, every: Duration) {
        // Credentials revoked before this start: their handshakes fail already; mark them
        // so nothing else they might still hold is honoured.
        for r in self.records_of(&self.serials.clone()) {
            op.revoked.insert(r.client_id);
        }
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.check(&op);
        }
    }

    /// Reloads the registry and the list if their files changed.
    pub fn check(&mut self, op: &Operator) {
        self.registered.refresh();
        let path = registry::crl_path(&self.state_dir);
        let now = stamp(&path);
        if now == self.stamp {
            return;
        }
        self.stamp = now;
        let loaded = match registry::load_crl(&self.state_dir) {
            Ok(Some(l)) => l,
            Ok(None) => {
                tracing::error!(path = %path.display(), "the revocation list was removed; the revocations loaded stay in force until the operator restarts (restore it, or run `mirrord-operator certs revoke` again)");
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "the revocation list changed but cannot be used; the revocations loaded stay in force");
                return;
            }
        };
        let (der, serials) = loaded;
        match self.server.config(Some(der)) {
            Ok(config) => self.current.store(config),
            Err(e) => {
                tracing::error!(error = %e, "the new revocation list was refused by TLS; the revocations loaded stay in force");
                return;
            }
        }
        let new: HashSet<String> = serials
            .iter()
            .filter(|s| !self.serials.contains(*s))
            .cloned()
            .collect();
        self.serials = serials.into_iter().collect();
        tracing::info!(
            revoked = self.serials.len(),
            new = new.len(),
            "revocation list reloaded"
        );
        let records = self.records_of(&new);
        let unknown = new.len() - records.len();
        if unknown > 0 {
            tracing::warn!(
                unknown,
                "the revocation list names serial numbers the registry (issued.json) does not know"
            );
        }
        for r in records {
            end_sessions_of(op, r);
        }
    }

    /// The registry's records of `serials`.
    fn records_of(&self, serials: &HashSet<String>) -> Vec<IssuedRecord> {
        if serials.is_empty() {
            return Vec::new();
        }
        match registry::list(&self.state_dir) {
            Ok(all) => all
                .into_iter()
                .filter(|r| serials.contains(&r.serial))
                .collect(),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the registry of issued certificates");
                Vec::new()
            }
        }
    }
}

/// Marks the credential revoked, ends its sessions and records who revoked whom.
fn end_sessions_of(op: &Operator, r: IssuedRecord) {
    op.revoked.insert(r.client_id.clone());
    let by = r.revoked_by.clone().unwrap_or_else(|| "unknown".into());
    let reason = format!("credential revoked by {by}");
    let ended = op
        .sessions
        .list()
        .into_iter()
        .filter(|s| s.meta.client.client_id == r.client_id)
        .filter(|s| op.sessions.end(s.id, &reason))
        .count();
    op.telemetry.record(Event::CredentialRevoked {
        client_user: r.user,
        client_id: r.client_id,
        role: r.role.as_str(),
        serial: r.serial,
        revoked_by: by,
        sessions_ended: ended,
    });
}
