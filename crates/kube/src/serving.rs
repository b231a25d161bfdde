//! A target in service: [`start`] begins following its pods and runs its agent fleet, and
//! the [`Target`] the control plane uses is answered here (copies through [`crate::copy`],
//! settling through [`crate::fleet`], the sessions' context through [`crate::context`]). Kept apart from [`crate::target`], which owns the
//! target's state, so that neither the fleet nor the copies depend on it circularly.

use crate::fleet;
use crate::target::{watch_pods, KubeTarget};
use crate::workload::Resolved;
use crate::Context;
use futures::future::BoxFuture;
use mirrord_controlplane::backend::{BackendError, Target, TargetContext, TargetCopy};
use mirrord_dataplane::RouteTable;
use mirrord_protocol::{SessionId, TargetRef};
use std::sync::Arc;

/// The target `reference`, its pods followed and its agents run until it is dropped.
pub fn start(reference: TargetRef, resolved: Resolved, ctx: Arc<Context>) -> Arc<KubeTarget> {
    let target = KubeTarget::new(reference, resolved, ctx);
    // Detached: both follow the target through a weak reference and end with it.
    tokio::spawn(watch_pods(Arc::downgrade(&target)));
    tokio::spawn(fleet::run(Arc::downgrade(&target)));
    target
}

impl Target for KubeTarget {
    fn reference(&self) -> &TargetRef {
        KubeTarget::reference(self)
    }

    fn labels(&self) -> std::collections::BTreeMap<String, String> {
        KubeTarget::labels(self)
    }

    fn copy_only(&self) -> Option<String> {
        let kind = self.resolved.kind;
        if kind == crate::workload::Kind::Targetless {
            return Some("a targetless session runs in a pod of its own, made for it: ask with --copy-target (mirrordctl does for `-t targetless`)".into());
        }
        kind.copy_only().then(|| {
            format!(
                "{}/{} is a copy target only, as in mirrord (its pods run to completion, and are not shared): add --copy-target (\"copy_target\": true)",
                kind.name(),
                self.resolved.name
            )
        })
    }

    fn accepts_port(&self, port: u16) -> bool {
        // A targetless session has no incoming traffic (refused here too, not only by the CLI).
        port != 0 && self.resolved.kind != crate::workload::Kind::Targetless
    }

    fn ports(&self) -> Vec<u16> {
        KubeTarget::ports(self)
    }

    fn routes(&self, port: u16) -> Option<Arc<RouteTable>> {
        Some(KubeTarget::routes(self, port))
    }

    fn copy(
        self: Arc<Self>,
        session: String,
        scale_down: bool,
    ) -> BoxFuture<'static, Result<Box<dyn TargetCopy>, BackendError>> {
        Box::pin(crate::copy::make(self, session, scale_down))
    }

    fn settle(self: Arc<Self>) -> BoxFuture<'static, Result<(), String>> {
        Box::pin(async move { fleet::settled(&self).await })
    }

    fn context(
        self: Arc<Self>,
        session: SessionId,
        container: Option<String>,
    ) -> BoxFuture<'static, Result<Arc<dyn TargetContext>, BackendError>> {
        let _ = session;
        Box::pin(async move {
            let c = crate::context::of_target(self, container).await?;
            Ok(c as Arc<dyn TargetContext>)
        })
    }
}
