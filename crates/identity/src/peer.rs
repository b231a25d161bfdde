//! What the operator knows about a peer from its verified certificate.

use crate::IdentityError;
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// First 16 hex digits of SHA-256 over the certificate's SubjectPublicKeyInfo: stable
    /// for the credential, and no other key can produce it.
    pub client_id: String,
    /// The certificate's common name.
    pub client_user: String,
}

impl PeerIdentity {
    pub fn from_der(der: &[u8]) -> Result<Self, IdentityError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| IdentityError::PeerCert(e.to_string()))?;
        let client_user = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .ok_or_else(|| IdentityError::PeerCert("no common name".into()))?
            .to_owned();
        let digest = Sha256::digest(cert.public_key().raw);
        Ok(Self {
            client_id: hex::encode(&digest[..8]),
            client_user,
        })
    }
}
