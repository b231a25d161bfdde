//! Every reason a session request is turned down, as one type: the client's error code,
//! the metric's `reason` label and the message both see come from the same value, so the
//! three cannot drift apart.

use mirrord_protocol::{ErrorCode, ErrorReply};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The request itself is wrong (no ports, a port twice, `--scale-down` alone...).
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    UnknownTarget(String),
    #[error("{0}")]
    UnknownPort(String),
    #[error("{0}")]
    InvalidFilter(String),
    /// The request is larger than the operator's limits allow (filters, ports, sessions).
    #[error("{0}")]
    Limit(String),
    /// The caller's role does not allow it.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    License(String),
    #[error("{0}")]
    Seats(String),
    #[error("{0}")]
    Policy(String),
    /// Another session holds the port.
    #[error("{0}")]
    PortConflict(String),
    /// Another session has the target scaled down.
    #[error("{0}")]
    ScaleDownConflict(String),
    #[error("{0}")]
    CopyUnavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl Refusal {
    /// Every value [`Refusal::reason`] can take, so the metric can start each at 0.
    pub const REASONS: &'static [&'static str] = &[
        "bad_request",
        "limit",
        "forbidden",
        "license",
        "seats",
        "policy",
        "conflict",
        "copy_failed",
        "internal",
    ];

    pub fn code(&self) -> ErrorCode {
        match self {
            Refusal::BadRequest(_) => ErrorCode::BadRequest,
            Refusal::UnknownTarget(_) => ErrorCode::UnknownTarget,
            Refusal::UnknownPort(_) => ErrorCode::UnknownPort,
            Refusal::InvalidFilter(_) => ErrorCode::InvalidFilter,
            Refusal::Limit(_) => ErrorCode::Limit,
            Refusal::Forbidden(_) => ErrorCode::Forbidden,
            Refusal::License(_) => ErrorCode::License,
            Refusal::Seats(_) => ErrorCode::Seats,
            Refusal::Policy(_) => ErrorCode::Policy,
            Refusal::PortConflict(_) => ErrorCode::PortConflict,
            Refusal::ScaleDownConflict(_) => ErrorCode::ScaleDownConflict,
            Refusal::CopyUnavailable(_) => ErrorCode::CopyUnavailable,
            Refusal::Internal(_) => ErrorCode::Internal,
        }
    }

    /// The `reason` label of `mirrord_session_refusals_total` and of `Session Refused`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::BadRequest(_)
            | Refusal::UnknownTarget(_)
            | Refusal::UnknownPort(_)
            | Refusal::InvalidFilter(_) => "bad_request",
            Refusal::Limit(_) => "limit",
            Refusal::Forbidden(_) => "forbidden",
            Refusal::License(_) => "license",
            Refusal::Seats(_) => "seats",
            Refusal::Policy(_) => "policy",
            Refusal::PortConflict(_) | Refusal::ScaleDownConflict(_) => "conflict",
            Refusal::CopyUnavailable(_) => "copy_failed",
            Refusal::Internal(_) => "internal",
        }
    }

    pub fn reply(&self) -> ErrorReply {
        ErrorReply {
            code: self.code(),
            message: self.to_string(),
        }
    }
}

impl From<mirrord_license::Refusal> for Refusal {
    fn from(r: mirrord_license::Refusal) -> Self {
        match r.reason {
            "seats" => Refusal::Seats(r.message),
            _ => Refusal::License(r.message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_listed() {
        let all = [
            Refusal::BadRequest(String::new()),
            Refusal::UnknownTarget(String::new()),
            Refusal::UnknownPort(String::new()),
            Refusal::InvalidFilter(String::new()),
            Refusal::Limit(String::new()),
            Refusal::Forbidden(String::new()),
            Refusal::License(String::new()),
            Refusal::Seats(String::new()),
            Refusal::Policy(String::new()),
            Refusal::PortConflict(String::new()),
            Refusal::ScaleDownConflict(String::new()),
            Refusal::CopyUnavailable(String::new()),
            Refusal::Internal(String::new()),
        ];
        for r in all {
            assert!(Refusal::REASONS.contains(&r.reason()), "{r:?}");
        }
    }
}
