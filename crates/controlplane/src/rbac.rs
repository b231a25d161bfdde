//! Kubernetes RBAC on the operator's own resources: the decisions a Kubernetes user's
//! request needs beyond what the API server authorized on its way in.
//!
//! The API server checks the request's URL (`create sessions`, `list sessions`, `delete
//! sessions` in group [`GROUP`]); what the request then asks for is checked here, each as
//! one SubjectAccessReview ([`Rbac`], implemented by the Kubernetes backend):
//!
//! | what | verb | resource | name |
//! |---|---|---|---|
//! | steal a target's port | `steal` | `targets` | `deployment.web` |
//! | mirror a target's port | `mirror` | `targets` | `deployment.web` |
//! | take over another user's port | `override` | `targets/port-locks` | `deployment.web` |
//! | scale a target down | `scale-down` | `targets` | `deployment.web` |
//! | get a target's environment | `env` | `targets` | `deployment.web` |
//! | connect out from a target | `outgoing` | `targets` | `deployment.web` |
//! | resolve names as a target does | `dns` | `targets` | `deployment.web` |
//! | read a target's files | `files-read` | `targets` | `deployment.web` |
//! | write a target's files | `files-write` | `targets` | `deployment.web` |
//! | see and end other users' sessions (admin) | `manage` | `sessions` | (any namespace) |
//!
//! The chart ships ClusterRoles granting these (`...-user`, `...-admin`).

use crate::caller::Caller;
use crate::refusal::Refusal;
use futures::future::BoxFuture;
use mirrord_protocol::{ContextRequest, PortMode, TargetRef};

/// The operator's API group.
pub const GROUP: &str = "operator.mirrord.dev";
/// Its one version.
pub const VERSION: &str = "v1";

/// One access question: may the user do `verb` on `resource[/subresource]` named `name` in
/// `namespace` (empty: in every namespace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub verb: &'static str,
    pub resource: &'static str,
    pub subresource: &'static str,
    pub namespace: String,
    pub name: String,
}

impl Check {
    pub fn open(mode: PortMode, target: &TargetRef) -> Self {
        let verb = match mode {
            PortMode::Steal => "steal",
            PortMode::Mirror => "mirror",
        };
        Self::on_target(verb, "", target)
    }

    pub fn take_over(target: &TargetRef) -> Self {
        Self::on_target("override", "port-locks", target)
    }

    pub fn scale_down(target: &TargetRef) -> Self {
        Self::on_target("scale-down", "", target)
    }

    /// The parts of a target's context `context` asks for, one check each.
    pub fn context(context: &ContextRequest, target: &TargetRef) -> Vec<Self> {
        [
            (context.env.is_some(), "env"),
            (context.outgoing, "outgoing"),
            (context.dns, "dns"),
            (context.files.reads(), "files-read"),
            (context.files.writes(), "files-write"),
        ]
        .into_iter()
        .filter(|(asked, _)| *asked)
        .map(|(_, verb)| Self::on_target(verb, "", target))
        .collect()
    }

    /// The admin's grant: other users' sessions, in every namespace.
    pub fn manage_sessions() -> Self {
        Self {
            verb: "manage",
            resource: "sessions",
            subresource: "",
            namespace: String::new(),
            name: String::new(),
        }
    }

    fn on_target(verb: &'static str, subresource: &'static str, t: &TargetRef) -> Self {
        Self {
            verb,
            resource: "targets",
            subresource,
            namespace: t.namespace.clone(),
            name: target_name(t),
        }
    }

    /// What the check is about, as a refusal says it (`steal deployment.web`).
    fn action(&self) -> String {
        let what = match self.verb {
            "env" => "read the environment of",
            "outgoing" => "connect out from",
            "dns" => "resolve names as",
            "files-read" => "read the files of",
            "files-write" => "write the files of",
            verb => verb,
        };
        format!("{what} {}", self.name)
    }

    /// What the caller lacks, for a refusal they can act on.
    pub fn describe(&self) -> String {
        let resource = match self.subresource {
            "" => self.resource.to_owned(),
            sub => format!("{}/{sub}", self.resource),
        };
        let name = match self.name.as_str() {
            "" => String::new(),
            n => format!(" `{n}`"),
        };
        let ns = match self.namespace.as_str() {
            "" => "in every namespace".to_owned(),
            n => format!("in namespace {n}"),
        };
        format!("`{}` on `{resource}`{name} ({GROUP}) {ns}", self.verb)
    }
}

/// A target as an API object name: `deployment.web` (a name cannot hold a `/`).
pub fn target_name(t: &TargetRef) -> String {
    format!("{}.{}", t.kind, t.name)
}

/// Asks the cluster (a SubjectAccessReview).
pub trait Rbac: Send + Sync {
    fn allows<'a>(
        &'a self,
        user: &'a str,
        groups: &'a [String],
        check: &'a Check,
    ) -> BoxFuture<'a, Result<bool, String>>;
}

/// Whether a Kubernetes caller is granted `check` (asked of `rbac`, the operator's); `None`
/// for a certificate's caller (their role decides instead).
pub async fn allows(
    rbac: Option<&dyn Rbac>,
    caller: &Caller,
    check: &Check,
) -> Option<Result<bool, Refusal>> {
    let groups = caller.kubernetes_groups()?;
    let Some(rbac) = rbac else {
        return Some(Err(Refusal::Internal(
            "a Kubernetes user reached an operator without RBAC checks".into(),
        )));
    };
    Some(
        rbac.allows(caller.user(), groups, check)
            .await
            .map_err(|e| {
                Refusal::Internal(format!(
                    "asking the API server whether {} may {}: {e}",
                    caller.user(),
                    check.verb
                ))
            }),
    )
}

/// `check` must be granted to a Kubernetes caller; a certificate's caller passes (their
/// role is judged where it matters).
pub async fn require(
    rbac: Option<&dyn Rbac>,
    caller: &Caller,
    check: Check,
) -> Result<(), Refusal> {
    match allows(rbac, caller, &check).await {
        None | Some(Ok(true)) => Ok(()),
        Some(Ok(false)) => Err(Refusal::Forbidden(format!(
            "{} may not {}: RBAC grants them no {}",
            caller.user(),
            check.action(),
            check.describe()
        ))),
        Some(Err(e)) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web() -> TargetRef {
        TargetRef {
            kind: "deployment".into(),
            name: "web".into(),
            namespace: "shop".into(),
            container: None,
        }
    }

    #[test]
    fn checks_name_the_target_as_an_object() {
        let c = Check::open(PortMode::Mirror, &web());
        assert_eq!(
            (c.verb, c.resource, c.name.as_str()),
            ("mirror", "targets", "deployment.web")
        );
        assert_eq!(c.namespace, "shop");
        assert_eq!(
            Check::take_over(&web()).describe(),
            "`override` on `targets/port-locks` `deployment.web` (operator.mirrord.dev) in namespace shop"
        );
        assert_eq!(
            Check::manage_sessions().describe(),
            "`manage` on `sessions` (operator.mirrord.dev) in every namespace"
        );
    }
}
