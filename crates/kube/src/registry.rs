//! The registry of issued credentials, kept in a Secret of the operator's namespace.
//!
//! A credential is accepted only if the registry lists it (so that it can be listed and
//! revoked). On one machine the registry is `STATE_DIR/issued.json` with its revocation
//! list, and the state directory lasts. In a pod the state directory is an `emptyDir`:
//! without this, a restarted operator would forget every credential it issued. So the
//! operator copies the two files into the Secret whenever they change (`certs issue` and
//! `certs revoke`, run in the operator's pod with `kubectl exec`, change them) and puts
//! them back at start, before it reads them. The chart makes the Secret (and removes it
//! with the release); only its data is the operator's.

use crate::KubeError;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use mirrord_identity::registry::{CRL_FILE, REGISTRY_FILE};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What is kept: the registry and its revocation list.
const FILES: [&str; 2] = [REGISTRY_FILE, CRL_FILE];

pub struct RegistrySecret {
    api: Api<Secret>,
    name: String,
    state_dir: PathBuf,
}

impl RegistrySecret {
    pub fn new(client: kube::Client, namespace: &str, name: &str, state_dir: &Path) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            state_dir: state_dir.to_owned(),
        }
    }

    /// Puts the files the Secret holds into the state directory (a file it does not hold
    /// is left as it is). Returns how many it restored.
    pub async fn restore(&self) -> Result<usize, KubeError> {
        let secret = match self.api.get_opt(&self.name).await {
            Ok(s) => s,
            Err(source) => {
                return Err(KubeError::Api {
                    action: format!("read the registry Secret {}", self.name),
                    source,
                })
            }
        };
        let data = secret.and_then(|s| s.data).unwrap_or_default();
        let mut restored = 0;
        for file in FILES {
            if let Some(bytes) = data.get(file) {
                let path = self.state_dir.join(file);
                write_private(&path, &bytes.0)
                    .map_err(|source| mirrord_identity::IdentityError::Write { path, source })?;
                restored += 1;
            }
        }
        Ok(restored)
    }

    /// Copies the files into the Secret whenever they change, every `every`, until `stop`;
    /// then once more if they changed since, so a credential issued just before a rolling
    /// upgrade is not lost with the old pod's `emptyDir`.
    pub async fn keep(self, every: Duration, stop: CancellationToken) {
        let mut last = self.stamps();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopping = tokio::select! {
                _ = tick.tick() => false,
                _ = stop.cancelled() => true,
            };
            let now = self.stamps();
            if now != last {
                match self.save().await {
                    Ok(()) => {
                        last = now;
                        tracing::info!(target: "mirrord_kube", secret = %self.name, "the registry of issued credentials was saved to its Secret");
                    }
                    Err(e) if stopping => {
                        tracing::error!(target: "mirrord_kube", secret = %self.name, error = %e, "cannot save the registry of issued credentials before stopping; what changed since the last save is lost")
                    }
                    // Tried again at the next tick: the files are still there.
                    Err(e) => {
                        tracing::warn!(target: "mirrord_kube", secret = %self.name, error = %e, "cannot save the registry of issued credentials; retrying")
                    }
                }
            }
            if stopping {
                return;
            }
        }
    }

    fn stamps(&self) -> Vec<Option<(u64, i64, i64, u64)>> {
        FILES
            .iter()
            .map(|f| {
                std::fs::metadata(self.state_dir.join(f))
                    .ok()
                    .map(|m| (m.ino(), m.mtime(), m.mtime_nsec(), m.len()))
            })
            .collect()
    }

    async fn save(&self) -> Result<(), KubeError> {
        let mut data = BTreeMap::new();
        for file in FILES {
            if let Ok(bytes) = std::fs::read(self.state_dir.join(file)) {
                data.insert(file.to_owned(), ByteString(bytes));
            }
        }
        let patch = serde_json::json!({ "data": data });
        let action = || format!("save the registry to the Secret {}", self.name);
        match self
            .api
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            // Not made by the chart (an operator run by hand in a cluster): made here.
            Err(kube::Error::Api(e)) if e.code == 404 => {
                let secret = Secret {
                    metadata: kube::api::ObjectMeta {
                        name: Some(self.name.clone()),
                        labels: Some(BTreeMap::from([(
                            crate::marks::MANAGED_BY.to_owned(),
                            crate::marks::MANAGER.to_owned(),
                        )])),
                        ..Default::default()
                    },
                    type_: Some("Opaque".into()),
                    data: Some(data),
                    ..Default::default()
                };
                self.api
                    .create(&PostParams::default(), &secret)
                    .await
                    .map(|_| ())
                    .map_err(|source| KubeError::Api {
                        action: action(),
                        source,
                    })
            }
            Err(source) => Err(KubeError::Api {
                action: action(),
                source,
            }),
        }
    }
}

/// Written owner-only, like every file of the state directory.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("restored");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
