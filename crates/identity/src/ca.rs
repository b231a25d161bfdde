//! The operator's CA: created on first use in the state directory, then reused.

use crate::{IdentityError, Role};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use time::OffsetDateTime;

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

/// What a client certificate asserts: who, in which role, for how long.
#[derive(Debug, Clone)]
pub struct ClientSpec {
    pub user: String,
    pub role: Role,
    /// From now; `not_after` of the certificate.
    pub valid_for: Duration,
}

/// A client certificate as issued: the files' contents and what the registry records.
pub struct IssuedClient {
    pub cert: IssuedCert,
    /// Hex of the certificate's serial number (random, 16 bytes).
    pub serial: String,
    pub not_after: SystemTime,
}

/// Clients' clocks may run a little behind the operator's: a credential is valid from a
/// few minutes before it was issued.
const CLOCK_SKEW: Duration = Duration::from_secs(300);

impl CertificateAuthority {
    /// Creates a new CA in `state_dir` (made private). Never replaces an existing one:
    /// that would silently invalidate every credential it issued.
    pub fn init(state_dir: &Path) -> Result<Self, IdentityError> {
        if state_dir.join(CA_CERT).exists() || state_dir.join(CA_KEY).exists() {
            return Err(IdentityError::CaExists {
                dir: state_dir.to_owned(),
            });
        }
        private_dir(state_dir)?;
        let key = KeyPair::generate()?;
        let cert = ca_params().self_signed(&key)?;
        let cert_pem = cert.pem();
        write(&state_dir.join(CA_KEY), &key.serialize_pem(), true)?;
        write(&state_dir.join(CA_CERT), &cert_pem, false)?;
        tracing::info!(path = %state_dir.join(CA_CERT).display(), "created a new operator CA");
        Ok(Self {
            cert,
            key,
            cert_pem,
        })
    }

    /// Loads the CA of `state_dir`: both files present, readable, and belonging together.
    pub fn load(state_dir: &Path) -> Result<Self, IdentityError> {
        let cert_path = state_dir.join(CA_CERT);
        let key_path = state_dir.join(CA_KEY);
        let broken = |problem: String| IdentityError::BrokenCa {
            dir: state_dir.to_owned(),
            problem,
        };
        match (cert_path.exists(), key_path.exists()) {
            (false, false) => {
                return Err(IdentityError::NoCa {
                    dir: state_dir.to_owned(),
                })
            }
            (true, false) => return Err(broken(format!("{CA_KEY} is missing"))),
            (false, true) => return Err(broken(format!("{CA_CERT} is missing"))),
            (true, true) => {}
        }
        exposed(&key_path)?;
        let key_pem = read(&key_path)?;
        let cert_pem = read(&cert_path)?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|_| broken(format!("{CA_KEY} holds no private key")))?;
        let der = rustls_pemfile::certs(&mut cert_pem.as_bytes())
            .next()
            .and_then(Result::ok)
            .ok_or_else(|| broken(format!("{CA_CERT} holds no certificate")))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| broken(format!("{CA_CERT} cannot be parsed: {e}")))?;
        if parsed.tbs_certificate.subject_pki.raw != key.public_key_der().as_slice() {
            return Err(broken(format!(
                "{CA_CERT} and {CA_KEY} do not belong together"
            )));
        }
        // The issuer of what we sign is identified by name and key. Rebuilding from the
        // stored certificate keeps its name byte for byte (a CA made elsewhere, e.g. by
        // Helm, encodes it differently from ours), so issued certificates chain to it;
        // the stored PEM stays the one clients trust.
        let params = CertificateParams::from_ca_cert_pem(&cert_pem)
            .map_err(|e| broken(format!("{CA_CERT} cannot be used as a CA: {e}")))?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert,
            key,
            cert_pem,
        })
    }

    /// What `serve` does: a state directory with no CA at all is a first start and gets
    /// one; anything else must load (a half-present CA is an error, never replaced).
    pub fn load_or_init(state_dir: &Path) -> Result<Self, IdentityError> {
        match Self::load(state_dir) {
            Err(IdentityError::NoCa { .. }) => Self::init(state_dir),
            other => other,
        }
    }

    /// A CA that lives in memory only, for one process's private trust (the operator and
    /// the agents it starts): nothing it issued outlives the process that made it.
    pub fn ephemeral(name: &str) -> Result<Self, IdentityError> {
        let key = KeyPair::generate()?;
        let mut params = ca_params();
        params.distinguished_name = dn(name);
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        Ok(Self {
            cert,
            key,
            cert_pem,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A client certificate: common name `user`, organizational unit the role, a random
    /// serial number (what a revocation list names), valid for `spec.valid_for`.
    pub fn issue_client(&self, spec: &ClientSpec) -> Result<IssuedClient, IdentityError> {
        validate_user(&spec.user)?;
        let now = SystemTime::now();
        let not_after = now
            .checked_add(spec.valid_for)
            .filter(|t| *t < SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_799))
            .ok_or(IdentityError::BadValidity(spec.valid_for))?;
        let serial = random_serial();
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(&spec.user);
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, spec.role.as_str());
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.not_before = OffsetDateTime::from(now - CLOCK_SKEW);
        params.not_after = OffsetDateTime::from(not_after);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        Ok(IssuedClient {
            cert: self.sign(params)?,
            serial: hex::encode(serial),
            not_after,
        })
    }

    /// A revocation list signed by this CA naming `revoked` (hex serial, when), PEM.
    /// `number` must grow with every list issued.
    pub fn revocation_list(
        &self,
        revoked: &[(String, SystemTime)],
        number: u64,
    ) -> Result<String, IdentityError> {
        let now = SystemTime::now();
        let revoked_certs = revoked
            .iter()
            .map(|(serial, at)| {
                let bytes =
                    hex::decode(serial).map_err(|_| IdentityError::BadSerial(serial.clone()))?;
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&bytes),
                    revocation_time: OffsetDateTime::from(*at),
                    reason_code: None,
                    invalidity_date: None,
                })
            })
            .collect::<Result<_, IdentityError>>()?;
        let params = CertificateRevocationListParams {
            this_update: OffsetDateTime::from(now - CLOCK_SKEW),
            // The operator does not enforce nextUpdate (it reads the file it is given); a
            // year keeps other tools that do from calling it stale.
            next_update: OffsetDateTime::from(now + Duration::from_secs(365 * 86_400)),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.cert, &self.key)?.pem()?)
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

/// 16 random bytes, positive as a DER integer and without a leading zero byte, so the
/// encoding in the certificate and in a revocation list is the same bytes.
fn random_serial() -> [u8; 16] {
    let mut serial: [u8; 16] = rand::random();
    serial[0] = (serial[0] & 0x7f).max(1);
    serial
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

/// Refuses a key file others may read or write (group access is allowed: a Kubernetes
/// Secret is mounted group-readable for the pod's fsGroup).
fn exposed(path: &Path) -> Result<(), IdentityError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|source| IdentityError::Read {
            path: path.to_owned(),
            source,
        })?
        .permissions()
        .mode()
        & 0o777;
    match mode & 0o007 {
        0 => Ok(()),
        _ => Err(IdentityError::ExposedKey {
            path: path.to_owned(),
            mode,
        }),
    }
}

pub(crate) fn read(path: &Path) -> Result<String, IdentityError> {
    std::fs::read_to_string(path).map_err(|source| IdentityError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Writes a file; a secret one is readable by its owner only, whatever the umask and
/// whatever mode a file already there had.
pub(crate) fn write(path: &PathBuf, contents: &str, secret: bool) -> Result<(), IdentityError> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let err = |source| IdentityError::Write {
        path: path.clone(),
        source,
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    if secret {
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(err)?;
    if secret {
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(err)?;
    }
    f.write_all(contents.as_bytes()).map_err(err)
}

/// Creates `dir` if needed and makes it private (owner only), whatever the umask.
pub fn private_dir(dir: &Path) -> Result<(), IdentityError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| IdentityError::Write {
        path: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_is_created_once_and_reused() {
        let dir = std::env::temp_dir().join(format!("mirrord-ca-{}", std::process::id()));
        let a = CertificateAuthority::load_or_init(&dir).unwrap();
        let b = CertificateAuthority::load_or_init(&dir).unwrap();
        assert_eq!(a.cert_pem(), b.cert_pem());
        let spec = |user: &str| ClientSpec {
            user: user.into(),
            role: Role::Developer,
            valid_for: std::time::Duration::from_secs(60),
        };
        assert!(a.issue_client(&spec("alice")).is_ok());
        assert!(matches!(
            a.issue_client(&spec("bad user")),
            Err(IdentityError::BadUser(_))
        ));
        let forever = ClientSpec {
            valid_for: std::time::Duration::from_secs(u64::MAX / 2),
            ..spec("alice")
        };
        assert!(matches!(
            a.issue_client(&forever),
            Err(IdentityError::BadValidity(_))
        ));
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_missing_partial_or_mismatched_ca_is_never_replaced() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        assert!(matches!(
            CertificateAuthority::load(&dir),
            Err(IdentityError::NoCa { .. })
        ));
        CertificateAuthority::init(&dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(CA_KEY)), 0o600);
        assert!(matches!(
            CertificateAuthority::init(&dir),
            Err(IdentityError::CaExists { .. })
        ));
        let key = std::fs::read(dir.join(CA_KEY)).unwrap();

        std::fs::write(dir.join(CA_CERT), "").unwrap();
        let e = CertificateAuthority::load_or_init(&dir).err().unwrap();
        assert!(e.to_string().contains("holds no certificate"), "{e}");
        std::fs::remove_file(dir.join(CA_CERT)).unwrap();
        let e = CertificateAuthority::load_or_init(&dir).err().unwrap();
        assert!(e.to_string().contains("ca.crt is missing"), "{e}");
        // The key was never touched.
        assert_eq!(std::fs::read(dir.join(CA_KEY)).unwrap(), key);

        // A certificate of another CA beside this key.
        let other = tmp.path().join("other");
        CertificateAuthority::init(&other).unwrap();
        std::fs::copy(other.join(CA_CERT), dir.join(CA_CERT)).unwrap();
        let e = CertificateAuthority::load(&dir).err().unwrap();
        assert!(e.to_string().contains("do not belong together"), "{e}");
    }

    /// A CA key restored readable by everyone is refused, naming the fix; one readable by
    /// the group (a Secret mounted for the pod's fsGroup) is accepted.
    #[test]
    fn a_ca_key_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        CertificateAuthority::init(&dir).unwrap();
        let key = dir.join(CA_KEY);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = CertificateAuthority::load(&dir).err().unwrap();
        assert!(
            matches!(e, IdentityError::ExposedKey { mode: 0o644, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o440)).unwrap();
        CertificateAuthority::load(&dir).unwrap();
    }

    #[test]
    fn secrets_are_owner_only_even_over_an_existing_file() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("k");
        std::fs::write(&p, "old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        write(&p, "secret", true).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}

#[cfg(test)]
mod foreign_ca {
    use super::*;
    use rcgen::{DnValue, PKCS_ED25519};

    /// A CA as Helm's `genCAWithKey` makes it: an Ed25519 key in PKCS#8 and a common name
    /// encoded as a PrintableString (ours are UTF8String). What we issue must name it as
    /// issuer byte for byte, or no verifier chains to it.
    #[test]
    fn a_ca_made_elsewhere_issues_certificates_that_chain_to_it() {
        let tmp = tempfile::tempdir().unwrap();
        let key = KeyPair::generate_for(&PKCS_ED25519).unwrap();
        let mut params = ca_params();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(
            DnType::CommonName,
            DnValue::PrintableString("mirrord operator CA".try_into().unwrap()),
        );
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(tmp.path().join(CA_CERT), cert.pem()).unwrap();
        write(&tmp.path().join(CA_KEY), &key.serialize_pem(), true).unwrap();

        let ca = CertificateAuthority::load(tmp.path()).unwrap();
        let issued = ca.issue_server().unwrap();
        let der = |pem: &str| {
            rustls_pemfile::certs(&mut pem.as_bytes())
                .next()
                .unwrap()
                .unwrap()
        };
        let (ca_der, leaf_der) = (der(&cert.pem()), der(&issued.cert_pem));
        let (_, ca_x509) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        let (_, leaf) = x509_parser::parse_x509_certificate(&leaf_der).unwrap();
        assert_eq!(leaf.issuer().as_raw(), ca_x509.subject().as_raw());
        assert!(leaf.verify_signature(Some(ca_x509.public_key())).is_ok());
    }
}
