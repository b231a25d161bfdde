//! Who is asking: the authenticated client and the role its certificate carries, and what
//! that lets them see and do to sessions. A developer sees and ends only sessions of their
//! own user (any of their credentials); an admin, everyone's.

use mirrord_identity::Role;
use mirrord_telemetry::{ClientInfo, SessionMeta};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub client: ClientInfo,
    pub role: Role,
}

impl Caller {
    /// Whether `session` belongs to the caller's user.
    pub fn owns(&self, session: &SessionMeta) -> bool {
        session.client.client_user == self.client.client_user
    }

    /// Whether the caller may see and end `session`.
    pub fn may_manage(&self, session: &SessionMeta) -> bool {
        self.role.is_admin() || self.owns(session)
    }

    pub fn user(&self) -> &str {
        &self.client.client_user
    }
}
