//! The operator's CA: created on first use in the state directory, then reused.

use crate::IdentityError;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};

const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const CA_NAME: &str = "mirrord operator CA";

pub struct CertificateAuthority {
    cert: rcgen::Certificate,
    key: KeyPair,
    cert_pem: String,
}

/// A certificate and its private key, PEM-encoded.
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl CertificateAuthority {
    /// Loads the CA from `state_dir`, creating it (and the directory) on first use.
    pub fn load_or_create(state_dir: &Path) -> Result<Self, IdentityError> {
        let cert_path = state_dir.join(CA_CERT);
        let key_path = state_dir.join(CA_KEY);
        if key_path.exists() && cert_path.exists() {
            let key_pem = read(&key_path)?;
            let cert_pem = read(&cert_path)?;
            let key = KeyPair::from_pem(&key_pem).map_err(|_| IdentityError::Pem {
                path: key_path.clone(),
                what: "CA private key",
            })?;
            // The issuer of what we sign is identified by name and key, both of which are
            // the same as when the stored certificate was made, so rebuilding it is enough
            // to sign with; the stored PEM stays the one clients trust.
            let cert = ca_params().self_signed(&key)?;
            return Ok(Self {
                cert,
                key,
                cert_pem,
            });
        }
        std::fs::create_dir_all(state_dir).map_err(|source| IdentityError::Write {
            path: state_dir.to_owned(),
            source,
        })?;
        let key = KeyPair::generate()?;
        let cert = ca_params().self_signed(&key)?;
        let cert_pem = cert.pem();
        write(&key_path, &key.serialize_pem(), true)?;
        write(&cert_path, &cert_pem, false)?;
        tracing::info!(path = %cert_path.display(), "created a new operator CA");
        Ok(Self {
            cert,
            key,
            cert_pem,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A client certificate whose common name is `user`.
    pub fn issue_client(&self, user: &str) -> Result<IssuedCert, IdentityError> {
        validate_user(user)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(user);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.sign(params)
    }

    /// The operator's serving certificate. Clients verify it against the CA under the
    /// fixed name [`crate::OPERATOR_SERVER_NAME`], whatever address they dial.
    pub fn issue_server(&self) -> Result<IssuedCert, IdentityError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(crate::OPERATOR_SERVER_NAME);
        params.subject_alt_names = vec![
            SanType::DnsName(crate::OPERATOR_SERVER_NAME.try_into()?),
            SanType::DnsName("localhost".try_into()?),
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Result<IssuedCert, IdentityError> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(CA_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn validate_user(user: &str) -> Result<(), IdentityError> {
    let ok = !user.is_empty()
        && user.len() <= 64
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-'));
    if ok {
        Ok(())
    } else {
        Err(IdentityError::BadUser(user.to_owned()))
    }
}

pub(crate) fn read(path: &Path) -> Result<String, IdentityError> {
    std::fs::read_to_string(path).map_err(|source| IdentityError::Read {
        path: path.to_owned(),
        source,
    })
}

pub(crate) fn write(path: &PathBuf, contents: &str, secret: bool) -> Result<(), IdentityError> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let _ = secret;
    opts.open(path)
        .and_then(|mut f| f.write_all(contents.as_bytes()))
        .map_err(|source| IdentityError::Write {
            path: path.clone(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_is_created_once_and_reused() {
        let dir = std::env::temp_dir().join(format!("mirrord-ca-{}", std::process::id()));
        let a = CertificateAuthority::load_or_create(&dir).unwrap();
        let b = CertificateAuthority::load_or_create(&dir).unwrap();
        assert_eq!(a.cert_pem(), b.cert_pem());
        assert!(a.issue_client("alice").is_ok());
        assert!(matches!(
            a.issue_client("bad user"),
            Err(IdentityError::BadUser(_))
        ));
        std::fs::remove_dir_all(dir).ok();
    }
}
