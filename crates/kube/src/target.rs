//! One Kubernetes target: its pods (followed with a watch, so a rollout or a crashed pod
//! during a session is followed too), its copies, and the routes its agents apply.
//!
//! The port locks write the target's [`RouteTable`]s as on one machine; every change is
//! published as a numbered [`RouteSnapshot`]. An original pod's agent applies every
//! session but those that made a copy; a copy pod's agent applies only its own session.

use crate::agents::Agents;
use crate::workload::{PodSelector, Resolved};
use crate::Context;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use mirrord_dataplane::{PortRoutes, RouteTable, Subscriber};
use mirrord_protocol::agent::{PortRouteSpec, RouteSnapshot};
use mirrord_protocol::TargetRef;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{watch, Notify};

#[derive(Clone, Debug)]
pub struct PodInfo {
    pub name: String,
    pub namespace: String,
    pub node: String,
    /// Running, with an address, not being deleted: its namespace can be served.
    pub ready: bool,
    /// For a copy pod: the session it serves.
    pub copy_for: Option<u64>,
    /// The pod's address (an ephemeral agent is dialled there).
    pub ip: Option<std::net::IpAddr>,
    /// Its containers' runtime IDs by name, once started (`containerd://` removed): where
    /// the agent finds a container's process for a session's context.
    pub containers: Vec<(String, String)>,
}

/// The runtime ID of each started container of `pod`, by name.
pub(crate) fn container_ids(pod: &Pod) -> Vec<(String, String)> {
    let statuses = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref());
    statuses
        .into_iter()
        .flatten()
        .filter_map(|c| {
            let id = c.container_id.as_deref()?;
            let id = id.split_once("://").map_or(id, |(_, id)| id);
            Some((c.name.clone(), id.to_owned()))
        })
        .collect()
}

pub struct KubeTarget {
    reference: TargetRef,
    pub(crate) resolved: Resolved,
    /// The workload's labels as last resolved (every session resolves its target anew, and
    /// policies' selectors judge these).
    labels: Mutex<BTreeMap<String, String>>,
    pub(crate) ctx: Arc<Context>,
    /// Told on every route, pod or agent change; the fleet loop waits on it.
    pub(crate) changed: Arc<Notify>,
    /// Per port: the declared ones from the start, any other when a session names it.
    tables: Mutex<BTreeMap<u16, Arc<RouteTable>>>,
    /// Pods by UID: the workload's (from the watch) and copies.
    pods: Mutex<BTreeMap<String, PodInfo>>,
    routes: watch::Sender<Arc<RouteSnapshot>>,
    pub(crate) agents: Agents,
    /// Per pod UID: why the API server refused its agent pod last (an admission webhook, a
    /// quota, a security policy), until one is created.
    pub(crate) agent_refusals: Mutex<HashMap<String, String>>,
    /// Per agent (pod name): the filter counters it reported last (cumulative), so each
    /// report adds only what is new.
    pub(crate) agent_counts: Mutex<HashMap<String, Vec<mirrord_protocol::agent::PortCounts>>>,
    /// The sessions' contexts on its pods, through their agents.
    pub(crate) ops: crate::context::AgentOps,
    /// Whether the pods have been listed once: before that, "no pods" means "not known".
    synced: watch::Sender<bool>,
}

impl Drop for KubeTarget {
    fn drop(&mut self) {
        // Whatever pods it kept the agents of are free for another target name.
        self.ctx.claims.release_all(&self.reference.to_string());
    }
}

impl KubeTarget {
    /// A target nobody follows yet: [`crate::serving::start`] starts its pod watch and fleet.
    pub(crate) fn new(reference: TargetRef, resolved: Resolved, ctx: Arc<Context>) -> Arc<Self> {
        let changed = Arc::new(Notify::new());
        let tables = resolved
            .ports
            .iter()
            .map(|&p| (p, Arc::new(RouteTable::notifying(Arc::clone(&changed)))))
            .collect();
        Arc::new(Self {
            reference,
            labels: Mutex::new(resolved.labels.clone()),
            resolved,
            ctx,
            changed,
            tables: Mutex::new(tables),
            pods: Mutex::default(),
            routes: watch::Sender::new(Arc::default()),
            agents: Agents::default(),
            agent_refusals: Mutex::default(),
            agent_counts: Mutex::default(),
            ops: crate::context::AgentOps::default(),
            synced: watch::Sender::new(false),
        })
    }

    /// The workload's labels as last resolved.
    pub(crate) fn labels(&self) -> BTreeMap<String, String> {
        self.labels.lock().expect("labels").clone()
    }

    /// A session resolved the workload again: its labels may have changed meanwhile.
    pub(crate) fn relabel(&self, labels: BTreeMap<String, String>) {
        *self.labels.lock().expect("labels") = labels;
    }

    /// Waits until the target's pods have been listed once.
    pub async fn synced(&self, within: Duration) -> Result<(), String> {
        let mut rx = self.synced.subscribe();
        let listed = tokio::time::timeout(within, rx.wait_for(|s| *s))
            .await
            .is_ok_and(|r| r.is_ok());
        match listed {
            true => Ok(()),
            false => Err(format!(
                "the pods of {} could not be listed within {}",
                self.reference,
                humantime::format_duration(within)
            )),
        }
    }

    pub fn reference_string(&self) -> String {
        self.reference.to_string()
    }

    pub fn workload_uid(&self) -> &str {
        &self.resolved.uid
    }

    pub fn has_pod(&self, uid: &str) -> bool {
        self.pods.lock().expect("pods").contains_key(uid)
    }

    pub fn pods(&self) -> BTreeMap<String, PodInfo> {
        self.pods.lock().expect("pods").clone()
    }

    pub(crate) fn add_copy_pod(&self, uid: String, info: PodInfo) {
        self.pods.lock().expect("pods").insert(uid, info);
        self.changed.notify_one();
    }

    pub(crate) fn remove_pod(&self, uid: &str) {
        self.pods.lock().expect("pods").remove(uid);
        self.changed.notify_one();
    }

    pub fn reference(&self) -> &TargetRef {
        &self.reference
    }

    /// The ports that have a route table.
    pub fn ports(&self) -> Vec<u16> {
        self.tables
            .lock()
            .expect("tables")
            .keys()
            .copied()
            .collect()
    }

    /// The route table of `port`, made when a session first names it: containers need not
    /// declare the ports they listen on (and often do not), so any port can be taken over.
    pub fn routes(&self, port: u16) -> Arc<RouteTable> {
        let mut tables = self.tables.lock().expect("tables");
        let table = tables
            .entry(port)
            .or_insert_with(|| Arc::new(RouteTable::notifying(Arc::clone(&self.changed))));
        Arc::clone(table)
    }

    /// The routes now, as the agents get them; publishes a new version if they changed.
    pub fn publish(&self) -> Arc<RouteSnapshot> {
        let ports: Vec<PortRouteSpec> = self
            .tables
            .lock()
            .expect("tables")
            .iter()
            .map(|(port, t)| spec(*port, &t.load()))
            .filter(|p| !p.is_empty())
            .collect();
        let mut current = Arc::clone(&self.routes.borrow());
        if current.ports != ports {
            current = Arc::new(RouteSnapshot {
                version: current.version + 1,
                ports,
                leave: false,
            });
            self.routes.send_replace(Arc::clone(&current));
        }
        current
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<RouteSnapshot>> {
        self.routes.subscribe()
    }

    /// What the agent of pod `uid` applies from `all`.
    pub fn snapshot_for(&self, uid: &str, all: &RouteSnapshot) -> RouteSnapshot {
        let pods = self.pods.lock().expect("pods");
        let copies: HashSet<u64> = pods.values().filter_map(|p| p.copy_for).collect();
        let mine = pods.get(uid).and_then(|p| p.copy_for);
        let keep = |s: u64| match mine {
            Some(m) => s == m,
            None => !copies.contains(&s),
        };
        let ports = all
            .ports
            .iter()
            .map(|p| PortRouteSpec {
                port: p.port,
                steal: p.steal.filter(|s| keep(*s)),
                filtered: p
                    .filtered
                    .iter()
                    .filter(|(s, _)| keep(*s))
                    .cloned()
                    .collect(),
                mirrors: p
                    .mirrors
                    .iter()
                    .filter(|(s, _)| keep(*s))
                    .cloned()
                    .collect(),
            })
            .filter(|p| !p.is_empty())
            .collect();
        RouteSnapshot {
            version: all.version,
            ports,
            leave: false,
        }
    }

    /// The subscription of `session` on `port`: where the agents' handoffs for it go.
    pub fn subscriber(&self, session: u64, port: u16) -> Option<(Subscriber, bool)> {
        let routes = self.tables.lock().expect("tables").get(&port)?.load();
        let steal = routes
            .unfiltered_steal
            .iter()
            .chain(routes.filtered_steals.iter().map(|(s, _)| s))
            .find(|s| s.session_id == session)
            .map(|s| (s.clone(), true));
        steal.or_else(|| {
            routes
                .mirrors
                .iter()
                .find(|(s, _)| s.session_id == session)
                .map(|(s, _)| (s.clone(), false))
        })
    }

    fn pod_info(&self, pod: &Pod) -> Option<(String, PodInfo)> {
        let uid = pod.metadata.uid.clone()?;
        let status = pod.status.as_ref();
        let info = PodInfo {
            name: pod.metadata.name.clone().unwrap_or_default(),
            namespace: self.resolved.namespace.clone(),
            node: pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default(),
            ready: pod.metadata.deletion_timestamp.is_none()
                && status.and_then(|s| s.phase.as_deref()) == Some("Running")
                && status.and_then(|s| s.pod_ip.as_ref()).is_some(),
            copy_for: None,
            ip: status
                .and_then(|s| s.pod_ip.as_deref())
                .and_then(|ip| ip.parse().ok()),
            containers: container_ids(pod),
        };
        Some((uid, info))
    }
}

fn spec(port: u16, r: &PortRoutes) -> PortRouteSpec {
    PortRouteSpec {
        port,
        steal: r.unfiltered_steal.as_ref().map(|s| s.session_id),
        filtered: r
            .filtered_steals
            .iter()
            .map(|(s, f)| (s.session_id, f.spec.clone()))
            .collect(),
        mirrors: r
            .mirrors
            .iter()
            .map(|(s, f)| (s.session_id, f.as_ref().map(|f| f.spec.clone())))
            .collect(),
    }
}

/// Follows the workload's pods until the target is dropped.
pub(crate) async fn watch_pods(target: Weak<KubeTarget>) {
    let Some(t) = target.upgrade() else { return };
    let api = Api::<Pod>::namespaced(t.ctx.client.clone(), &t.resolved.namespace);
    let cfg = match &t.resolved.pods {
        PodSelector::Labels(l) => watcher::Config::default().labels(l),
        PodSelector::Name(n) => watcher::Config::default().fields(&format!("metadata.name={n}")),
        PodSelector::None => {
            // Only copies: nothing of its own to follow.
            t.synced.send_replace(true);
            return;
        }
    };
    let reference = t.reference.clone();
    drop(t);
    let mut events = watcher(api, cfg).default_backoff().boxed();
    // A relist (the watch restarts every few minutes) is collected whole before it
    // replaces what is known: a pod missing from a half-done list is not gone.
    let mut relist: Option<BTreeMap<String, PodInfo>> = None;
    while let Some(ev) = events.next().await {
        let Some(t) = target.upgrade() else { return };
        match ev {
            Ok(watcher::Event::Apply(p)) => {
                if let Some((uid, info)) = t.pod_info(&p) {
                    t.pods.lock().expect("pods").insert(uid, info);
                }
            }
            Ok(watcher::Event::Delete(p)) => {
                if let Some(uid) = p.metadata.uid {
                    t.pods.lock().expect("pods").remove(&uid);
                }
            }
            Ok(watcher::Event::Init) => relist = Some(BTreeMap::new()),
            Ok(watcher::Event::InitApply(p)) => {
                if let (Some(list), Some((uid, info))) = (relist.as_mut(), t.pod_info(&p)) {
                    list.insert(uid, info);
                }
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(list) = relist.take() {
                    let mut pods = t.pods.lock().expect("pods");
                    // Copies are not in the watch.
                    pods.retain(|_, p| p.copy_for.is_some());
                    pods.extend(list);
                }
                t.synced.send_replace(true);
            }
            Err(e) => {
                tracing::warn!(target: "mirrord_kube", target_ref = %reference, error = %e, "watching the target's pods failed; retrying");
            }
        }
        t.changed.notify_one();
    }
}

/// How often waiting code looks again.
pub(crate) const POLL: Duration = Duration::from_millis(50);
