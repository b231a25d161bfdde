//! What the operator knows about a peer from its verified certificate.

use crate::{IdentityError, Role};
use sha2::{Digest, Sha256};
use std::time::{Duration, SystemTime};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// First 16 hex digits of SHA-256 over the certificate's SubjectPublicKeyInfo: stable
    /// for the credential, and no other key can produce it.
    pub client_id: String,
    /// The certificate's common name.
    pub client_user: String,
    /// The certificate's organizational unit; a certificate without one (issued before
    /// roles existed) is a developer's: the least a credential can do.
    pub role: Role,
    /// Hex of the certificate's serial number.
    pub serial: String,
    /// When the certificate stops being valid.
    pub not_after: SystemTime,
}

impl PeerIdentity {
    pub fn from_der(der: &[u8]) -> Result<Self, IdentityError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| IdentityError::PeerCert(e.to_string()))?;
        let subject = cert.subject();
        let client_user = subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .ok_or_else(|| IdentityError::PeerCert("no common name".into()))?
            .to_owned();
        let role = match subject.iter_organizational_unit().next() {
            None => Role::Developer,
            Some(ou) => ou
                .as_str()
                .map_err(|e| IdentityError::PeerCert(format!("organizational unit: {e}")))?
                .parse()
                .map_err(|e| IdentityError::PeerCert(format!("{e}")))?,
        };
        let not_after = SystemTime::UNIX_EPOCH
            + Duration::from_secs(cert.validity().not_after.timestamp().max(0) as u64);
        let digest = Sha256::digest(cert.public_key().raw);
        Ok(Self {
            client_id: hex::encode(&digest[..8]),
            client_user,
            role,
            serial: hex::encode(cert.raw_serial()),
            not_after,
        })
    }
}
