//! Which credentials the operator accepts right now: the registry's certificates
//! ([`Registered`]) minus the revoked ones ([`Revoked`]). State only: [`crate::revocation`]
//! follows the files that change it while the operator runs.

use mirrord_identity::registry;
use mirrord_identity::IdentityError;
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

/// Client ids whose credential is revoked.
#[derive(Default)]
pub struct Revoked(RwLock<HashSet<String>>);

impl Revoked {
    pub fn contains(&self, client_id: &str) -> bool {
        self.0.read().expect("revoked lock").contains(client_id)
    }

    pub(crate) fn insert(&self, client_id: String) {
        self.0.write().expect("revoked lock").insert(client_id);
    }
}

/// Serial numbers of every certificate the registry lists: the credentials this operator
/// accepts (revoked ones are refused by the list besides).
pub struct Registered {
    serials: RwLock<HashSet<String>>,
    /// The registry file and the version of it read last.
    source: Mutex<(PathBuf, Stamp)>,
}

impl Registered {
    pub(crate) fn load(state_dir: &Path) -> Result<Self, IdentityError> {
        let path = state_dir.join(registry::REGISTRY_FILE);
        let stamp = stamp(&path);
        Ok(Self {
            serials: RwLock::new(registered_serials(state_dir)?),
            source: Mutex::new((path, stamp)),
        })
    }

    /// Whether the registry lists `serial`, read again first if it changed since (a
    /// credential issued a moment ago is known without waiting for the next check).
    pub fn contains(&self, serial: &str) -> bool {
        self.serials
            .read()
            .expect("registered lock")
            .contains(serial)
            || {
                self.refresh();
                self.serials
                    .read()
                    .expect("registered lock")
                    .contains(serial)
            }
    }

    /// Re-reads the registry if its file changed.
    pub(crate) fn refresh(&self) {
        let mut source = self.source.lock().expect("registered source lock");
        let now = stamp(&source.0);
        if now == source.1 {
            return;
        }
        let dir = source.0.parent().map(Path::to_owned).unwrap_or_default();
        match registered_serials(&dir) {
            Ok(serials) => {
                source.1 = now;
                *self.serials.write().expect("registered lock") = serials;
            }
            // Kept as it was: a registry being rewritten is replaced whole (renamed), so an
            // error here is a broken file, and forgetting credentials is not the answer.
            Err(e) => {
                tracing::error!(error = %e, "the registry of issued certificates changed but cannot be read; the credentials it listed before stay accepted")
            }
        }
    }
}

/// What identifies a version of the list file: a rename gives a new inode, a rewrite a
/// new modification time or length.
pub(crate) type Stamp = Option<(u64, i64, i64, u64)>;

pub(crate) fn stamp(path: &Path) -> Stamp {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.ino(), m.mtime(), m.mtime_nsec(), m.len()))
}

fn registered_serials(state_dir: &Path) -> Result<HashSet<String>, IdentityError> {
    Ok(registry::list(state_dir)?
        .into_iter()
        .map(|r| r.serial)
        .collect())
}
