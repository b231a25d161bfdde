//! The credential's own validity: warn before it expires (the operator refuses it after),
//! and say in plain words why a handshake was refused for an expired or revoked one.

use mirrord_identity::{Credentials, PeerIdentity};
use std::time::{Duration, SystemTime};

/// Warn this long before the certificate expires.
const WARN_BEFORE: Duration = Duration::from_secs(14 * 86_400);

/// A warning for stderr when the credential expires within 14 days (or has expired).
pub fn warning(creds: &Credentials, now: SystemTime) -> Option<String> {
    let cert = creds.chain.first()?;
    let id = PeerIdentity::from_der(cert).ok()?;
    let when = chrono::DateTime::<chrono::Utc>::from(id.not_after).format("%Y-%m-%d %H:%M UTC");
    let renew = format!(
        "ask an admin for a new one (mirrord-operator certs issue --user {} --role {})",
        id.client_user, id.role
    );
    match id.not_after.duration_since(now) {
        Err(_) => Some(format!(
            "warning: the certificate in {} expired on {when}; the operator refuses it: {renew}",
            creds.dir.display()
        )),
        Ok(left) if left <= WARN_BEFORE => Some(format!(
            "warning: the certificate in {} expires in {} (on {when}); {renew}",
            creds.dir.display(),
            days(left)
        )),
        Ok(_) => None,
    }
}

fn days(d: Duration) -> String {
    match (d.as_secs() / 86_400, d.as_secs() / 3600) {
        (0, 0) => "less than an hour".into(),
        (0, 1) => "1 hour".into(),
        (0, h) => format!("{h} hours"),
        (1, _) => "1 day".into(),
        (n, _) => format!("{n} days"),
    }
}

/// What a TLS alert from the operator means for the user, if it is about their credential.
pub fn explain(error: &str) -> Option<&'static str> {
    if error.contains("CertificateRevoked") {
        Some("the operator refused this credential: it is revoked (mirrord-operator certs revoke); ask an admin for a new one")
    } else if error.contains("CertificateExpired") {
        Some("the operator refused this credential: it has expired; ask an admin for a new one")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_days_then_hours() {
        assert_eq!(days(Duration::from_secs(13 * 86_400 + 5)), "13 days");
        assert_eq!(days(Duration::from_secs(86_400)), "1 day");
        assert_eq!(days(Duration::from_secs(7200)), "2 hours");
        assert_eq!(days(Duration::from_secs(3)), "less than an hour");
        assert!(explain("received fatal alert: CertificateRevoked").is_some());
        assert!(explain("connection reset").is_none());
    }
}
