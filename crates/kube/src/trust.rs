//! The operator's trust with its agents: a CA that lives in this process only, a serving
//! certificate for the gateway, and one client credential for the agents, published as
//! a Secret in the agents' namespace (mounted into every agent pod). Users' credentials
//! (the operator's main CA) are not valid here, and the agents' not on the user API.

use crate::{marks, Context, KubeError};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::Api;
use mirrord_identity::{CertificateAuthority, ClientSpec, Role, ServerTls};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The Secret agents mount.
pub const SECRET: &str = "mirrord-agent-credentials";

pub struct AgentTrust {
    ca: CertificateAuthority,
    server: ServerTls,
}

impl AgentTrust {
    pub fn new() -> Result<Self, KubeError> {
        let ca = CertificateAuthority::ephemeral("mirrord operator agent CA")?;
        let server = ServerTls::new(&ca)?;
        Ok(Self { ca, server })
    }

    /// The gateway's TLS: HTTP/2 only, a client certificate from this CA required.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, KubeError> {
        let mut cfg = (*self.server.config(None)?).clone();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// For the agents the operator dials (ephemeral containers): the same serving
    /// certificate and HTTP/2, no client certificate (such an agent has none; it is known by
    /// the address it was reached at).
    pub fn dialed_config(&self) -> Result<Arc<rustls::ServerConfig>, KubeError> {
        let mut cfg = (*self.server.browser_config()?).clone();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// The agents' CA certificate (PEM): public.
    pub fn ca_pem(&self) -> String {
        self.ca.cert_pem().to_owned()
    }

    /// Writes the agents' credential directory as a Secret (server-side apply: replaces
    /// the one a previous operator process wrote).
    pub async fn publish(&self, ctx: &Context, gateway_address: &str) -> Result<(), KubeError> {
        let issued = self.ca.issue_client(&ClientSpec {
            user: "mirrord-agent".into(),
            role: Role::Developer,
            valid_for: Duration::from_secs(10 * 365 * 24 * 3600),
        })?;
        let data = BTreeMap::from([
            ("ca.crt".to_owned(), self.ca.cert_pem().to_owned()),
            ("client.crt".to_owned(), issued.cert.cert_pem),
            ("client.key".to_owned(), issued.cert.key_pem),
            (
                "operator-address".to_owned(),
                format!("{gateway_address}\n"),
            ),
        ]);
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(SECRET.into()),
                namespace: Some(ctx.agent_namespace.clone()),
                labels: Some(BTreeMap::from([
                    (marks::MANAGED_BY.to_owned(), marks::MANAGER.to_owned()),
                    (marks::OPERATOR_NS.to_owned(), ctx.agent_namespace.clone()),
                ])),
                owner_references: Some(ctx.owners.for_namespace(&ctx.agent_namespace)),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            data: Some(
                data.into_iter()
                    .map(|(k, v)| (k, k8s_openapi::ByteString(v.into_bytes())))
                    .collect(),
            ),
            ..Default::default()
        };
        Api::<Secret>::namespaced(ctx.client.clone(), &ctx.agent_namespace)
            .patch(
                SECRET,
                &PatchParams::apply("mirrord-operator").force(),
                &Patch::Apply(&secret),
            )
            .await
            .map_err(|source| KubeError::Api {
                action: format!(
                    "write the agents' Secret {SECRET} in {}",
                    ctx.agent_namespace
                ),
                source,
            })?;
        Ok(())
    }
}
