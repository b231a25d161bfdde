//! The registry of issued client certificates (`STATE_DIR/issued.json`) and the
//! revocation list made from it (`STATE_DIR/crl.pem`).
//!
//! `certs issue` records every certificate before its files are written, so nothing valid
//! is ever unlisted or unrevocable; `certs revoke` marks records and writes a new CA-signed
//! revocation list, which the running operator loads (its TLS server then refuses those
//! certificates at the handshake). The CRL is the enforcement; the registry says whose
//! each serial number is and who revoked it. Both are replaced atomically (a temporary
//! file renamed over the old one), owner-only, and changed under a lock file so two
//! `certs` commands at once cannot lose each other's record.

use crate::ca::{private_dir, CertificateAuthority, ClientSpec, IssuedClient};
use crate::{IdentityError, PeerIdentity, Role};
use chrono::{DateTime, Utc};
use rustls::pki_types::CertificateRevocationListDer;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const REGISTRY_FILE: &str = "issued.json";
pub const CRL_FILE: &str = "crl.pem";
const LOCK_FILE: &str = "issued.lock";

/// One issued client certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedRecord {
    pub user: String,
    pub role: Role,
    pub client_id: String,
    /// Hex of the certificate's serial number.
    pub serial: String,
    pub issued: DateTime<Utc>,
    pub expires: DateTime<Utc>,
    #[serde(default)]
    pub revoked_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub revoked_by: Option<String>,
}

#[derive(Default, Serialize, Deserialize)]
struct Book {
    certificates: Vec<IssuedRecord>,
}

pub fn crl_path(state_dir: &Path) -> PathBuf {
    state_dir.join(CRL_FILE)
}

/// Every certificate issued from `state_dir`, oldest first (none if nothing was issued).
pub fn list(state_dir: &Path) -> Result<Vec<IssuedRecord>, IdentityError> {
    Ok(read_book(&state_dir.join(REGISTRY_FILE))?.certificates)
}

/// Issues a client certificate and records it.
pub fn issue(
    ca: &CertificateAuthority,
    state_dir: &Path,
    spec: &ClientSpec,
) -> Result<(IssuedClient, IssuedRecord), IdentityError> {
    let issued = ca.issue_client(spec)?;
    let der = rustls_pemfile::certs(&mut issued.cert.cert_pem.as_bytes())
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| IdentityError::PeerCert("issued certificate unreadable".into()))?;
    let peer = PeerIdentity::from_der(&der)?;
    let record = IssuedRecord {
        user: spec.user.clone(),
        role: spec.role,
        client_id: peer.client_id,
        serial: issued.serial.clone(),
        issued: Utc::now(),
        expires: DateTime::<Utc>::from(issued.not_after),
        revoked_at: None,
        revoked_by: None,
    };
    update(state_dir, |book| {
        book.certificates.push(record.clone());
        Ok(())
    })?;
    Ok((issued, record))
}

/// Which credentials `certs revoke` means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revokee {
    /// Every credential of this user.
    User(String),
    /// The one credential with this client id.
    ClientId(String),
    /// The one credential with this serial number (hex).
    Serial(String),
    /// A user or a client id, whichever it names; naming both is an error (say which).
    Either(String),
}

impl Revokee {
    fn matches(&self, r: &IssuedRecord) -> bool {
        match self {
            Revokee::User(u) => r.user == *u,
            Revokee::ClientId(c) => r.client_id == *c,
            Revokee::Serial(s) => r.serial.eq_ignore_ascii_case(s),
            Revokee::Either(x) => r.user == *x || r.client_id == *x,
        }
    }

    fn text(&self) -> &str {
        match self {
            Revokee::User(x) | Revokee::ClientId(x) | Revokee::Serial(x) | Revokee::Either(x) => x,
        }
    }
}

/// Revokes every unrevoked certificate `who` names and writes the new revocation list.
/// Returns what it revoked.
pub fn revoke(
    ca: &CertificateAuthority,
    state_dir: &Path,
    who: &Revokee,
    by: &str,
) -> Result<Vec<IssuedRecord>, IdentityError> {
    update(state_dir, |book| {
        if let Revokee::Either(x) = who {
            let user = book.certificates.iter().any(|r| r.user == *x);
            let client = book.certificates.iter().any(|r| r.client_id == *x);
            if user && client {
                return Err(IdentityError::Ambiguous(x.clone()));
            }
        }
        if !book.certificates.iter().any(|r| who.matches(r)) {
            return Err(IdentityError::NothingToRevoke(who.text().to_owned()));
        }
        let now = Utc::now();
        let revoked: Vec<IssuedRecord> = book
            .certificates
            .iter_mut()
            .filter(|r| who.matches(r) && r.revoked_at.is_none())
            .map(|r| {
                r.revoked_at = Some(now);
                r.revoked_by = Some(by.to_owned());
                r.clone()
            })
            .collect();
        if revoked.is_empty() {
            return Err(IdentityError::AlreadyRevoked(who.text().to_owned()));
        }
        write_crl(ca, state_dir, &book.certificates)?;
        Ok(revoked)
    })
}

/// Makes sure the revocation list names every certificate the registry says is revoked
/// (a list lost or restored from an old backup must not let anyone back in): rewrites it
/// when it does not. Returns how many were missing.
pub fn sync_crl(ca: &CertificateAuthority, state_dir: &Path) -> Result<usize, IdentityError> {
    let records = list(state_dir)?;
    let listed: Vec<String> = load_crl(state_dir)?.map(|(_, s)| s).unwrap_or_default();
    let missing = records
        .iter()
        .filter(|r| r.revoked_at.is_some() && !listed.contains(&r.serial))
        .count();
    if missing > 0 {
        update(state_dir, |book| {
            write_crl(ca, state_dir, &book.certificates)
        })?;
    }
    Ok(missing)
}

/// The list names every revoked serial; its number is the time it was made (in
/// milliseconds), so each list supersedes the one before.
fn write_crl(
    ca: &CertificateAuthority,
    state_dir: &Path,
    records: &[IssuedRecord],
) -> Result<(), IdentityError> {
    let revoked: Vec<(String, std::time::SystemTime)> = records
        .iter()
        .filter_map(|r| r.revoked_at.map(|at| (r.serial.clone(), at.into())))
        .collect();
    let number = Utc::now().timestamp_millis().max(0) as u64;
    let pem = ca.revocation_list(&revoked, number)?;
    replace(&crl_path(state_dir), pem.as_bytes())
}

/// The revocation list in `state_dir`, if there is one: what the TLS server checks, and
/// the serial numbers it names.
pub fn load_crl(
    state_dir: &Path,
) -> Result<Option<(CertificateRevocationListDer<'static>, Vec<String>)>, IdentityError> {
    let path = crl_path(state_dir);
    let pem = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(IdentityError::Read { path, source }),
    };
    let bad = |reason: String| IdentityError::BadCrl {
        path: path.clone(),
        reason,
    };
    let der = rustls_pemfile::crls(&mut pem.as_slice())
        .next()
        .ok_or_else(|| bad("no X509 CRL block".into()))?
        .map_err(|e| bad(e.to_string()))?;
    let (_, crl) = x509_parser::parse_x509_crl(&der).map_err(|e| bad(e.to_string()))?;
    let serials = crl
        .iter_revoked_certificates()
        .map(|r| hex::encode(r.raw_serial()))
        .collect();
    Ok(Some((der, serials)))
}

fn read_book(path: &Path) -> Result<Book, IdentityError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| IdentityError::BadRegistry {
            path: path.to_owned(),
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Book::default()),
        Err(source) => Err(IdentityError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Read-modify-write of the registry under an exclusive lock; the book is saved only when
/// `f` succeeds.
fn update<T>(
    state_dir: &Path,
    f: impl FnOnce(&mut Book) -> Result<T, IdentityError>,
) -> Result<T, IdentityError> {
    private_dir(state_dir)?;
    let lock_path = state_dir.join(LOCK_FILE);
    let err = |source| IdentityError::Write {
        path: lock_path.clone(),
        source,
    };
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(err)?;
    lock.lock().map_err(err)?;
    let path = state_dir.join(REGISTRY_FILE);
    let mut book = read_book(&path)?;
    let out = f(&mut book)?;
    let json = serde_json::to_vec_pretty(&book).expect("the registry serializes");
    replace(&path, &json)?;
    Ok(out)
}

/// Writes a temporary file (owner-only), flushes it, renames it over `path` and flushes
/// the directory: a reader sees the old file or the new one, never half of one.
fn replace(path: &Path, contents: &[u8]) -> Result<(), IdentityError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| IdentityError::Write {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(contents)?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        // A full disk must not leave half a file behind beside the good one.
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    fn spec(user: &str, role: Role) -> ClientSpec {
        ClientSpec {
            user: user.into(),
            role,
            valid_for: Duration::from_secs(3600),
        }
    }

    #[test]
    fn issued_certificates_are_recorded_and_revoked_into_a_signed_list() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let ca = CertificateAuthority::init(dir).unwrap();
        let (a1, r1) = issue(&ca, dir, &spec("alice", Role::Developer)).unwrap();
        let (_, r2) = issue(&ca, dir, &spec("alice", Role::Admin)).unwrap();
        let (_, r3) = issue(&ca, dir, &spec("bob", Role::Developer)).unwrap();
        assert_ne!(r1.serial, r2.serial);
        assert_eq!(r1.serial, a1.serial);
        assert_eq!(list(dir).unwrap(), vec![r1.clone(), r2.clone(), r3.clone()]);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.join(REGISTRY_FILE)), 0o600);
        assert!(load_crl(dir).unwrap().is_none());

        // By user: both of alice's; by client id: just bob's one.
        let revoked = revoke(&ca, dir, &Revokee::Either("alice".into()), "carol").unwrap();
        assert_eq!(revoked.len(), 2);
        assert!(revoked
            .iter()
            .all(|r| r.revoked_by.as_deref() == Some("carol")));
        let (_, serials) = load_crl(dir).unwrap().unwrap();
        assert_eq!(serials, vec![r1.serial.clone(), r2.serial.clone()]);
        assert!(matches!(
            revoke(&ca, dir, &Revokee::Either("alice".into()), "carol"),
            Err(IdentityError::AlreadyRevoked(_))
        ));
        assert!(matches!(
            revoke(&ca, dir, &Revokee::Either("nobody".into()), "carol"),
            Err(IdentityError::NothingToRevoke(_))
        ));
        revoke(&ca, dir, &Revokee::ClientId(r3.client_id.clone()), "carol").unwrap();
        let (_, serials) = load_crl(dir).unwrap().unwrap();
        assert_eq!(serials.len(), 3);
        assert_eq!(mode(&crl_path(dir)), 0o600);
        assert!(list(dir).unwrap().iter().all(|r| r.revoked_at.is_some()));
    }

    /// A name that is both a user and a client id is not guessed at.
    #[test]
    fn an_ambiguous_name_is_refused_and_flags_say_which() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let ca = CertificateAuthority::init(dir).unwrap();
        let (_, victim) = issue(&ca, dir, &spec("bob", Role::Developer)).unwrap();
        // A user named like bob's client id.
        let (_, twin) = issue(&ca, dir, &spec(&victim.client_id, Role::Developer)).unwrap();
        let e = revoke(
            &ca,
            dir,
            &Revokee::Either(victim.client_id.clone()),
            "carol",
        )
        .unwrap_err();
        assert!(matches!(e, IdentityError::Ambiguous(_)), "{e}");
        assert!(list(dir).unwrap().iter().all(|r| r.revoked_at.is_none()));
        let r = revoke(&ca, dir, &Revokee::User(victim.client_id.clone()), "carol").unwrap();
        assert_eq!(
            r.iter().map(|r| &r.serial).collect::<Vec<_>>(),
            [&twin.serial]
        );
        let r = revoke(
            &ca,
            dir,
            &Revokee::Serial(victim.serial.to_uppercase()),
            "carol",
        )
        .unwrap();
        assert_eq!(r[0].user, "bob");
    }

    #[test]
    fn the_peer_identity_carries_role_serial_and_expiry() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::init(tmp.path()).unwrap();
        let (issued, record) = issue(&ca, tmp.path(), &spec("root", Role::Admin)).unwrap();
        let der = rustls_pemfile::certs(&mut issued.cert.cert_pem.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let peer = PeerIdentity::from_der(&der).unwrap();
        assert_eq!(peer.client_user, "root");
        assert_eq!(peer.role, Role::Admin);
        assert_eq!(peer.serial, record.serial);
        assert_eq!(peer.client_id, record.client_id);
        let left = peer
            .not_after
            .duration_since(std::time::SystemTime::now())
            .unwrap();
        assert!(left > Duration::from_secs(3500) && left <= Duration::from_secs(3600));
    }

    #[test]
    fn a_lost_crl_is_rebuilt_from_the_registry() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let ca = CertificateAuthority::init(dir).unwrap();
        assert_eq!(sync_crl(&ca, dir).unwrap(), 0);
        assert!(load_crl(dir).unwrap().is_none());
        let (_, r) = issue(&ca, dir, &spec("alice", Role::Developer)).unwrap();
        revoke(&ca, dir, &Revokee::Either("alice".into()), "carol").unwrap();
        std::fs::remove_file(crl_path(dir)).unwrap();
        assert_eq!(sync_crl(&ca, dir).unwrap(), 1);
        assert_eq!(load_crl(dir).unwrap().unwrap().1, vec![r.serial]);
        assert_eq!(sync_crl(&ca, dir).unwrap(), 0);
    }

    #[test]
    fn a_broken_crl_is_an_error_not_an_empty_list() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(crl_path(tmp.path()), "garbage").unwrap();
        let e = load_crl(tmp.path()).unwrap_err();
        assert!(e.to_string().contains("no X509 CRL block"), "{e}");
    }
}
