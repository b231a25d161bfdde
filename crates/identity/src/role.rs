//! Roles: what a credential may do, carried in its certificate (subject OU) so that it is
//! vouched for by the CA like the user name, never claimed by the client.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// `developer`: open sessions, see and end their own. `admin`: see and end everyone's,
/// take over ports held by others, scale targets down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    #[default]
    Developer,
    Admin,
}

impl Role {
    pub const ALL: [Role; 2] = [Role::Developer, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Developer => "developer",
            Role::Admin => "admin",
        }
    }

    pub fn is_admin(self) -> bool {
        self == Role::Admin
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role `{0}`; roles are developer and admin")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_owned()))
    }
}
