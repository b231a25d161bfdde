//! The Kubernetes target backend: `deployment/NAME`, `statefulset/NAME`, `replicaset/NAME`,
//! `pod/NAME` and `service/NAME` (another name for a workload's pods is that workload), and
//! `job/NAME`, `cronjob/NAME` as copies, in a namespace, served by an agent in each target
//! pod's network namespace.
//!
//! The operator stays the one owner of every port's routes (the same [`RouteTable`]s and
//! port locks as on one machine); this crate carries them to where the traffic is:
//! - [`workload`] resolves a target to its pods' selector, ports and pod template;
//! - [`service_ports`] reads a Service's ports as its pods' ports;
//! - [`target`] follows the target's pods and owns what each pod's agent must apply;
//! - [`serving`] starts a target's pod watch and fleet and answers the control plane for it;
//! - [`agents`] holds what the operator knows of each target pod's agent;
//! - [`fleet`] starts an agent pod per target pod while sessions need one, replaces a
//!   lost one, and removes it after the last session (after a linger);
//! - [`gateway`] is where agents connect (mutual TLS, a CA of this process): routes go
//!   out, stolen requests and connections come back into the sessions' channels;
//! - [`context`] gives sessions the context of a target pod's container (environment, DNS,
//!   outgoing connections) through its agent;
//! - [`copy`] makes copy pods from the pod template and scales workloads down;
//! - [`apiserver`] serves the operator as an aggregated API: developers reach it through
//!   the Kubernetes API server with their kubeconfig, and RBAC decides what they may do;
//! - [`agent_pods`] watches the agent pods: one being deleted is replaced and told to leave
//!   at once, not when the kubelet gets round to its SIGTERM;
//! - [`startup`] follows a pod the operator made until it runs, or says at once why it
//!   cannot;
//! - [`owners`] decides who owns what the operator makes (never anything in another
//!   namespace), and [`reconcile`] undoes what a previous operator process left (copies,
//!   agents, scaled down workloads) at start;
//! - [`registry`] keeps the registry of issued credentials in a Secret, so that a pod
//!   that restarts still knows (and accepts, and can revoke) what it issued.
//!
//! [`RouteTable`]: mirrord_dataplane::RouteTable

pub mod agent_pods;
pub mod agents;
pub mod apiserver;
pub mod context;
pub mod copy;
pub mod ephemeral;
pub mod fleet;
pub mod gateway;
pub mod leader;
pub mod owners;
pub mod policies;
pub mod reconcile;
pub mod registry;
pub mod service_ports;
pub mod serving;
pub mod startup;
pub mod target;
pub mod trust;
pub mod workload;

use futures::future::BoxFuture;
use mirrord_controlplane::backend::{BackendError, Named, PortNames, Target, TargetBackend};
use mirrord_controlplane::config::KubernetesConfig;
use mirrord_protocol::TargetRef;
use mirrord_serve::Shutdown;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use target::KubeTarget;

/// Labels and annotations on everything this operator creates or changes.
pub mod marks {
    /// On copies, agents and the agents' Secret.
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    pub const MANAGER: &str = "mirrord-operator";
    /// The namespace of the operator that made it: a restarted operator cleans up its own.
    pub const OPERATOR_NS: &str = "mirrord.dev/operator-namespace";
    /// `agent` or `copy`.
    pub const ROLE: &str = "mirrord.dev/role";
    /// On an agent: the UID of the pod it serves.
    pub const POD_UID: &str = "mirrord.dev/pod-uid";
    /// On a copy: the session it was made for.
    pub const SESSION: &str = "mirrord.dev/session";
    /// On a copy: the workload it copies (`deployment/web`).
    pub const COPY_OF: &str = "mirrord.dev/copy-of";
    /// On a scaled-down workload: its replica count before.
    pub const ORIGINAL_REPLICAS: &str = "mirrord.dev/original-replicas";
    /// On a scaled-down workload: which operator and session scaled it down.
    pub const SCALED_DOWN_BY: &str = "mirrord.dev/scaled-down-by";
}

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("the Kubernetes API refused to {action}")]
    Api {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Identity(#[from] mirrord_identity::IdentityError),
    #[error("the agent gateway cannot listen on {addr}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("agents cannot reach this operator: set [kubernetes] gateway_address, or POD_IP")]
    NoGatewayAddress,
}

/// What every target shares: the API client and how agents are made.
pub struct Context {
    pub client: kube::Client,
    pub agent_namespace: String,
    pub agent_image: String,
    pub agent_pull_policy: String,
    pub linger: Duration,
    pub lease: Duration,
    /// Agents run privileged (else with the capabilities they need).
    pub agent_privileged: bool,
    /// Agents are ephemeral containers of the target pods ([`ephemeral`]).
    pub agent_ephemeral: bool,
    /// How the operator reaches ephemeral agents (set once the agents' CA exists).
    pub dialer: std::sync::OnceLock<ephemeral::Dialer>,
    pub ready_timeout: Duration,
    /// The agents' RUST_LOG: the operator's own.
    pub agent_log: String,
    /// Who owns what the operator creates, per namespace.
    pub owners: owners::Owners,
    /// The operator's lifecycle: clean-ups (a copy's deletion, a workload's restore) run as
    /// its tasks, so stopping waits for them.
    pub shutdown: Shutdown,
    /// Which target keeps each pod's agent.
    pub claims: agents::PodClaims,
    /// The operator's metrics: what agents' filters decided is exported there.
    pub metrics: Arc<mirrord_telemetry::metrics::Metrics>,
}

/// The targets resolved so far, shared with the gateway.
#[derive(Default)]
pub struct Targets(
    Mutex<HashMap<TargetRef, Arc<KubeTarget>>>,
    /// Developers' ends of upgraded stolen requests, until their agents join them.
    pub(crate) gateway::Upgrades,
);

impl Targets {
    pub fn all(&self) -> Vec<Arc<KubeTarget>> {
        self.0.lock().expect("targets").values().cloned().collect()
    }

    /// The target one of whose pods (original or copy) has `uid`: the one that keeps its
    /// agent when several target names reach the pod.
    pub fn by_pod(&self, uid: &str) -> Option<Arc<KubeTarget>> {
        let all = self.all();
        let keeps = all.iter().find(|t| {
            t.has_pod(uid)
                && t.ctx.claims.owner(uid).as_deref() == Some(t.reference_string().as_str())
        });
        keeps
            .or_else(|| all.iter().find(|t| t.has_pod(uid)))
            .cloned()
    }
}

pub struct KubeBackend {
    ctx: Arc<Context>,
    targets: Arc<Targets>,
}

impl KubeBackend {
    /// The API server connection (the aggregated API asks it RBAC questions).
    pub fn client(&self) -> kube::Client {
        self.ctx.client.clone()
    }

    /// Cleans up after a previous operator, issues the agents' credentials and starts the
    /// gateway.
    /// `client`: the API server's (with several replicas, one whose writes stop with the
    /// leadership: [`leader::fenced_client`]).
    /// `shutdown`: the operator's lifecycle (the gateway stops with it).
    /// `metrics`: where what the agents report is exported.
    pub async fn start(
        cfg: &KubernetesConfig,
        client: kube::Client,
        shutdown: Shutdown,
        metrics: Arc<mirrord_telemetry::metrics::Metrics>,
    ) -> Result<Self, KubeError> {
        let agent_namespace = cfg
            .agent_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| "default".into());
        let own_pod = match (std::env::var("POD_NAMESPACE"), std::env::var("POD_NAME")) {
            (Ok(ns), Ok(name)) => Some((ns, name)),
            _ => None,
        };
        let owners =
            owners::Owners::discover(&client, own_pod, cfg.owner_cluster_role.as_deref()).await;
        let ctx = Arc::new(Context {
            client,
            agent_namespace,
            agent_image: cfg.agent_image.clone(),
            agent_pull_policy: cfg.agent_image_pull_policy.clone(),
            linger: cfg.agent_linger,
            lease: cfg.agent_lease,
            agent_privileged: cfg.agent_privileged,
            agent_ephemeral: cfg.agent_ephemeral,
            dialer: std::sync::OnceLock::new(),
            ready_timeout: cfg.agent_ready_timeout,
            agent_log: std::env::var("RUST_LOG").unwrap_or_else(|_| "mirrord=info".into()),
            owners,
            shutdown: shutdown.clone(),
            claims: agents::PodClaims::default(),
            metrics,
        });
        reconcile::on_start(&ctx).await;
        if ctx.agent_ephemeral {
            // Said at start too: every Kubernetes session will be refused with it.
            match ctx.client.apiserver_version().await {
                Ok(v) => {
                    if let Some(why) = ephemeral::unsupported(&v.major, &v.minor) {
                        tracing::error!(target: "mirrord_kube", "{why}");
                    }
                }
                Err(e) => {
                    tracing::warn!(target: "mirrord_kube", error = %e, "cannot read the cluster's version")
                }
            }
        }
        let gateway_address = match &cfg.gateway_address {
            Some(a) => a.clone(),
            None => match std::env::var("POD_IP") {
                Ok(ip) => format!("{ip}:{}", cfg.gateway_listen.port()),
                Err(_) => return Err(KubeError::NoGatewayAddress),
            },
        };
        let trust = trust::AgentTrust::new()?;
        trust.publish(&ctx, &gateway_address).await?;
        let targets = Arc::new(Targets::default());
        let _ = ctx.dialer.set(ephemeral::Dialer {
            acceptor: tokio_rustls::TlsAcceptor::from(trust.dialed_config()?),
            ca_pem: trust.ca_pem(),
            targets: Arc::downgrade(&targets),
        });
        let listener = tokio::net::TcpListener::bind(cfg.gateway_listen)
            .await
            .map_err(|source| KubeError::Listen {
                addr: cfg.gateway_listen,
                source,
            })?;
        tracing::info!(target: "mirrord_kube", listen = %cfg.gateway_listen, agents_dial = %gateway_address, namespace = %ctx.agent_namespace, "agent gateway listening");
        shutdown.spawn(gateway::serve(
            listener,
            trust.server_config()?,
            Arc::clone(&targets),
            shutdown.clone(),
        ));
        // Detached: it follows the targets through a weak reference and ends with them.
        tokio::spawn(agent_pods::watch(
            Arc::clone(&ctx),
            Arc::downgrade(&targets),
        ));
        Ok(Self { ctx, targets })
    }

    pub fn targets(&self) -> Vec<Arc<KubeTarget>> {
        self.targets.all()
    }
}

impl TargetBackend for KubeBackend {
    fn target(&self, r: &TargetRef) -> BoxFuture<'_, Result<Arc<dyn Target>, BackendError>> {
        let named = self.named(r);
        Box::pin(async move { Ok(named.await?.target) })
    }

    fn named(&self, asked: &TargetRef) -> BoxFuture<'_, Result<Named, BackendError>> {
        let asked = asked.clone();
        Box::pin(async move {
            let mut ports = PortNames::default();
            let (r, resolved) = if asked.kind == workload::TARGETLESS {
                let ctx = &self.ctx;
                let (image, pull) = (&ctx.agent_image, &ctx.agent_pull_policy);
                let t = workload::targetless(&ctx.client, &asked, image, pull).await?;
                (asked, t)
            } else {
                // Another name for a workload's pods is that workload: one target owns them.
                let (r, service) = workload::canonical(&self.ctx.client, &asked).await?;
                // Resolved on every session: a deleted workload is unknown at once, and one
                // recreated under the same name is a new target.
                let resolved = workload::resolve(&self.ctx.client, &r).await?;
                if let Some(svc) = &service {
                    ports = service_ports::translate(&asked, svc, &resolved.template);
                }
                (r, resolved)
            };
            // The container chosen was checked against the pods; the pods, their agents and
            // routes are the same whichever container a session names.
            let mut r = r;
            r.container = None;
            let mut map = self.targets.0.lock().expect("targets");
            let target = match map.get(&r).filter(|t| t.workload_uid() == resolved.uid) {
                Some(t) => {
                    // Policies judge the labels the workload has now, not when its first
                    // session resolved it.
                    t.relabel(resolved.labels);
                    Arc::clone(t) as Arc<dyn Target>
                }
                None => {
                    let t = serving::start(r.clone(), resolved, Arc::clone(&self.ctx));
                    map.insert(r, Arc::clone(&t));
                    t as Arc<dyn Target>
                }
            };
            Ok(Named { target, ports })
        })
    }
}
