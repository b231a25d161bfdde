//! Who is asking: the authenticated client, where that identity comes from, and the role
//! it has, and what that lets them see and do to sessions. A developer sees and ends only
//! sessions of their own user (any of their credentials); an admin, everyone's.

use mirrord_identity::Role;
use mirrord_telemetry::{ClientInfo, SessionMeta};
use std::time::SystemTime;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub client: ClientInfo,
    pub role: Role,
    pub authority: Authority,
}

/// Who vouches for the caller, which also decides who judges what they may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authority {
    /// A client certificate of this operator's CA: the role it carries decides. It stops
    /// vouching at `expires` (its `notAfter`): sessions on it end then.
    Certificate { expires: Option<SystemTime> },
    /// A Kubernetes user, authenticated by the API server and proxied to the operator
    /// (front-proxy): RBAC on the operator's resources decides ([`crate::rbac`]).
    Kubernetes { groups: Vec<String> },
}

impl Default for Authority {
    fn default() -> Self {
        Authority::Certificate { expires: None }
    }
}

impl Caller {
    /// When the caller's credential stops being valid (a certificate's `notAfter`; the API
    /// server vouches for a Kubernetes user on each request instead).
    pub fn credential_expires(&self) -> Option<SystemTime> {
        match &self.authority {
            Authority::Certificate { expires } => *expires,
            Authority::Kubernetes { .. } => None,
        }
    }

    /// Whether `session` belongs to the caller's user.
    pub fn owns(&self, session: &SessionMeta) -> bool {
        session.client.client_user == self.client.client_user
    }

    /// Whether the caller may see and end `session`.
    pub fn may_manage(&self, session: &SessionMeta) -> bool {
        self.may_see(&session.client.client_user)
    }

    /// Whether the caller may see what is about `user` (their sessions, their events): an
    /// admin sees everyone's, a developer their own.
    pub fn may_see(&self, user: &str) -> bool {
        self.role.is_admin() || user == self.client.client_user
    }

    pub fn user(&self) -> &str {
        &self.client.client_user
    }

    /// The groups the API server vouched for (none for a certificate).
    pub fn kubernetes_groups(&self) -> Option<&[String]> {
        match &self.authority {
            Authority::Kubernetes { groups } => Some(groups),
            Authority::Certificate { .. } => None,
        }
    }
}
