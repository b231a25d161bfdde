//! A session's context: what its process gets of the target besides traffic (the
//! environment, outgoing connections, name resolution). Granted when the session opens,
//! from the process that serves it (its copy, else one of the target's); held by the
//! session's entry, which the session actor asks for each resolution and connection.

use crate::backend::{Target, TargetContext, TargetCopy};
use mirrord_protocol::{ContextReply, ContextRequest, SessionId};
use std::sync::Arc;

/// What a session was granted of its target's context.
pub struct SessionContext {
    pub target: Arc<dyn TargetContext>,
    pub outgoing: bool,
    pub dns: bool,
}

/// The context `req` asks for, from `copy` if the session has one, else from `target`.
/// What cannot be had is said in the reply (`unavailable`), not refused: the process then
/// runs with its own environment and network, and the developer is told why.
pub async fn grant(
    target: &Arc<dyn Target>,
    session: SessionId,
    copy: Option<&dyn TargetCopy>,
    req: &ContextRequest,
) -> (ContextReply, Option<SessionContext>) {
    let found = match copy {
        Some(c) => c.context(session).await,
        None => Arc::clone(target).context(session).await,
    };
    let ctx = match found {
        Ok(c) => c,
        Err(e) => {
            let reply = ContextReply {
                unavailable: Some(e.to_string()),
                ..ContextReply::default()
            };
            return (reply, None);
        }
    };
    let mut reply = ContextReply {
        env: None,
        outgoing: req.outgoing,
        dns: req.dns,
        source: ctx.source(),
        unavailable: None,
    };
    if let Some(select) = &req.env {
        match ctx.env(select.clone()).await {
            Ok(vars) => reply.env = Some(vars),
            Err(e) => reply.unavailable = Some(format!("the environment of {}: {e}", reply.source)),
        }
    }
    let granted = (req.outgoing || req.dns).then(|| SessionContext {
        target: ctx,
        outgoing: req.outgoing,
        dns: req.dns,
    });
    (reply, granted)
}
