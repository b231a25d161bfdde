//! Policies from the config file: per target (by name, namespace or pattern) and per
//! caller (by user or role), what a session may not do, and what its steals must be
//! narrowed to. A refused session is told which policy refused it.
//!
//! `require_header_filter` is enforced by what a filter does, not by its text: the
//! policy's header regex is ANDed into every steal's filter, so whatever the user wrote
//! (`x-user: |.`, `--method GET --any`...), a request is stolen only if it also carries a
//! matching header. Only an unfiltered steal, which takes whole connections, is refused.
//!
//! `block = ["unfiltered_steal"]` is decided by what a filter can match, not by whether one
//! was given: a filter that matches every request (`--header=`, `--header .`, `--path ^/`;
//! the rule is `mirrord_dataplane::filter::probe`'s) steals like no filter and is refused
//! like one. A method filter is never such a filter by itself: every method is a request.

use mirrord_dataplane::filter::{compile_regex, FilterLimits};
use mirrord_identity::Role;
use mirrord_protocol::{ContextRequest, PortMode, PortRequest, TargetRef};
use regex::Regex;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::destinations::{Destinations, OutgoingRule};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Blocked {
    /// Steal without an HTTP filter.
    UnfilteredSteal,
    /// Any steal.
    Steal,
    Mirror,
    /// `--scale-down` (admins only in any case).
    ScaleDown,
    /// The target's environment (mirrord.json `feature.env`).
    Env,
    /// Connections made from the target (`feature.network.outgoing`).
    Outgoing,
    /// Names resolved as the target does (`feature.network.dns`).
    Dns,
    /// Reading the target's files (`feature.fs.mode` `read`, `localwithoverrides`, `write`).
    FileRead,
    /// Writing the target's files (`feature.fs.mode` `write`, or `read_write` patterns).
    FileWrite,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    pub name: String,
    /// `kind/name` glob (`*` matches anything), e.g. `deployment/api`, `deployment/api-*`.
    #[serde(default = "any")]
    pub target: String,
    /// Namespace glob.
    #[serde(default = "any")]
    pub namespace: String,
    /// User globs (`client_user`) the policy applies to; everyone when empty.
    #[serde(default)]
    pub users: Vec<String>,
    /// Roles the policy applies to; every role when empty.
    #[serde(default)]
    pub roles: Vec<Role>,
    /// Kubernetes groups (globs) the policy applies to; everyone when empty. A caller with
    /// a certificate has no groups, so a policy naming groups never applies to one.
    #[serde(default)]
    pub groups: Vec<String>,
    /// The target's labels it applies to (Kubernetes' label selector: `match_labels`,
    /// `match_expressions`); every target when absent.
    #[serde(default)]
    pub selector: Option<LabelSelector>,
    /// Sessions it applies to must work under one of these profiles (`--profile`).
    #[serde(default)]
    pub require_profile: Vec<String>,
    #[serde(default)]
    pub block: Vec<Blocked>,
    /// Every stolen request must carry a header (`name: value`) matching this regex
    /// (case-insensitive, like filters): it is added to each steal's filter.
    #[serde(default)]
    pub require_header_filter: Option<String>,
    /// Where outgoing connections (`feature.network.outgoing`) may go; anywhere when absent,
    /// nowhere when empty (`crate::destinations` says how entries are written).
    #[serde(default)]
    pub outgoing_allow: Option<Vec<String>>,
}

fn any() -> String {
    "*".into()
}

impl PolicySpec {
    /// A policy named `name` that binds everyone on every target and asks nothing (as an
    /// empty `[[policies]]` table with that name reads).
    pub fn named(name: &str) -> Self {
        Self {
            name: name.into(),
            target: any(),
            namespace: any(),
            users: Vec::new(),
            roles: Vec::new(),
            groups: Vec::new(),
            selector: None,
            require_profile: Vec::new(),
            block: Vec::new(),
            require_header_filter: None,
            outgoing_allow: None,
        }
    }
}

/// Kubernetes' label selector, as a Deployment's `selector` is written.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LabelSelector {
    #[serde(default, alias = "matchLabels")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, alias = "matchExpressions")]
    pub match_expressions: Vec<LabelExpression>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LabelExpression {
    pub key: String,
    pub operator: LabelOperator,
    #[serde(default)]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum LabelOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl LabelSelector {
    /// What Kubernetes would refuse in it: `In`/`NotIn` without values, `Exists`/
    /// `DoesNotExist` with some (such a selector would silently select nothing or all).
    fn invalid(&self) -> Option<String> {
        self.match_expressions.iter().find_map(|e| {
            let wants_values = matches!(e.operator, LabelOperator::In | LabelOperator::NotIn);
            (wants_values == e.values.is_empty()).then(|| {
                format!(
                    "selector: the expression on `{}` with operator {:?} {}",
                    e.key,
                    e.operator,
                    match wants_values {
                        true => "needs values",
                        false => "takes no values",
                    }
                )
            })
        })
    }

    /// Whether `labels` are selected (every term must hold, as in Kubernetes).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|e| {
                let value = labels.get(&e.key);
                match e.operator {
                    LabelOperator::In => value.is_some_and(|v| e.values.contains(v)),
                    LabelOperator::NotIn => value.is_none_or(|v| !e.values.contains(v)),
                    LabelOperator::Exists => value.is_some(),
                    LabelOperator::DoesNotExist => value.is_none(),
                }
            })
    }
}

struct Policy {
    spec: PolicySpec,
    target: Regex,
    namespace: Regex,
    users: Vec<Regex>,
    groups: Vec<Regex>,
    outgoing: Option<Arc<Destinations>>,
    /// Why the policy cannot be used as written (a bad regex): it then refuses every
    /// session it applies to, until fixed (fail closed).
    broken: Option<String>,
}

#[derive(Default)]
pub struct Policies(Vec<Policy>);

/// Policies that change while the operator runs (a cluster's policy resources), and the
/// profiles sessions may choose: replaced whole on every change; a session is judged by the
/// set in force when it asks. Until they are first loaded (when they are expected), no
/// session is judged: an operator that just started does not let through what a policy
/// it has not read yet would refuse.
pub struct LivePolicies {
    live: std::sync::RwLock<Arc<Live>>,
    loaded: tokio::sync::watch::Sender<bool>,
}

impl Default for LivePolicies {
    fn default() -> Self {
        Self {
            live: Default::default(),
            // On one machine nothing is to be loaded.
            loaded: tokio::sync::watch::Sender::new(true),
        }
    }
}

/// What [`LivePolicies`] holds.
#[derive(Default)]
pub struct Live {
    pub policies: Policies,
    /// Per profile name: its rules, as a policy binding every session that chooses it.
    pub profiles: BTreeMap<String, Policies>,
}

impl LivePolicies {
    pub fn set(&self, live: Live) {
        *self
            .live
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(live);
    }

    pub fn get(&self) -> Arc<Live> {
        Arc::clone(
            &self
                .live
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Policies are to be loaded (from the cluster): sessions wait for [`Self::loaded`].
    pub fn expect(&self) {
        self.loaded.send_replace(false);
    }

    /// Every kind of policy resource was listed once.
    pub fn loaded(&self) {
        self.loaded.send_replace(true);
    }

    /// Waits (at most `limit`) until the policies are loaded; whether they are.
    pub async fn wait_loaded(&self, limit: std::time::Duration) -> bool {
        let mut rx = self.loaded.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|l| *l))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// Who asks for what: everything a policy can be about.
pub struct Subject<'a> {
    /// The target's own name (a Service's or a ReplicaSet's workload).
    pub target: &'a TargetRef,
    /// The name the session asked with: a policy naming either binds it.
    pub asked: &'a TargetRef,
    pub ports: &'a [PortRequest],
    /// Ports whose filter matches every request (an unfiltered steal for policies).
    pub catch_all: &'a [u16],
    pub scale_down: bool,
    /// What of the target's context the session's process gets.
    pub context: &'a ContextRequest,
    pub user: &'a str,
    pub role: Role,
    /// The caller's Kubernetes groups (none for a certificate).
    pub groups: &'a [String],
    /// The target's labels (none on one machine unless its config gives some).
    pub labels: &'a BTreeMap<String, String>,
    /// The profile the session chose (`--profile`).
    pub profile: Option<&'a str>,
}

/// What the policies binding a session narrow it to.
#[derive(Debug, Default)]
pub struct Verdict {
    pub headers: Vec<RequiredHeader>,
    /// Each binding policy's outgoing allow-list: a connection must pass all of them.
    pub outgoing: Vec<OutgoingRule>,
}

impl Verdict {
    pub fn extend(&mut self, other: Verdict) {
        self.headers.extend(other.headers);
        self.outgoing.extend(other.outgoing);
    }
}

/// A header every request stolen on `port` must also carry (from policy `policy`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequiredHeader {
    pub port: u16,
    pub policy: String,
    pub pattern: String,
}

fn glob(pattern: &str) -> Regex {
    let escaped: Vec<String> = pattern.split('*').map(regex::escape).collect();
    Regex::new(&format!("^{}$", escaped.join(".*"))).expect("escaped glob is a valid regex")
}

impl Policy {
    fn info(&self) -> mirrord_protocol::PolicyInfo {
        let s = &self.spec;
        let mut targets = format!("{} in namespace {}", s.target, s.namespace);
        if let Some(sel) = &s.selector {
            let mut terms: Vec<String> = sel
                .match_labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            terms.extend(
                sel.match_expressions
                    .iter()
                    .map(|e| format!("{} {:?} {:?}", e.key, e.operator, e.values)),
            );
            targets.push_str(&format!(", labelled {}", terms.join(", ")));
        }
        let who = [
            ("users", s.users.join(", ")),
            (
                "roles",
                s.roles
                    .iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            ("groups", s.groups.join(", ")),
        ];
        for (what, list) in who.iter().filter(|(_, l)| !l.is_empty()) {
            targets.push_str(&format!(", for {what} {list}"));
        }
        let mut rules = Vec::new();
        if !s.block.is_empty() {
            let blocks: Vec<String> = s.block.iter().map(|b| format!("{b:?}")).collect();
            rules.push(format!("blocks {}", blocks.join(", ")));
        }
        if let Some(h) = &s.require_header_filter {
            rules.push(format!("steals also need a header matching `{h}`"));
        }
        if let Some(d) = &self.outgoing {
            rules.push(format!("outgoing only to {}", d.describe()));
        }
        if !s.require_profile.is_empty() {
            rules.push(format!(
                "sessions work under profile {}",
                s.require_profile.join(" or ")
            ));
        }
        mirrord_protocol::PolicyInfo {
            name: s.name.clone(),
            targets,
            rules: rules.join("; "),
            problem: self.broken.clone(),
        }
    }

    fn applies(&self, s: &Subject<'_>) -> bool {
        (self.target.is_match(&s.target.to_string()) || self.target.is_match(&s.asked.to_string()))
            && self.namespace.is_match(&s.target.namespace)
            && (self.users.is_empty() || self.users.iter().any(|u| u.is_match(s.user)))
            && (self.spec.roles.is_empty() || self.spec.roles.contains(&s.role))
            && (self.groups.is_empty()
                || s.groups
                    .iter()
                    .any(|g| self.groups.iter().any(|p| p.is_match(g))))
            && self
                .spec
                .selector
                .as_ref()
                .is_none_or(|sel| sel.matches(s.labels))
    }

    /// The first rule `s` breaks, as the user reads it.
    fn breach(&self, s: &Subject<'_>) -> Option<String> {
        let t = s.target.to_string();
        let ns = &s.target.namespace;
        if let Some(why) = &self.broken {
            return Some(format!(
                "it cannot be used as written ({why}), so it refuses every session on {t} (namespace {ns}) until it is fixed"
            ));
        }
        let required = &self.spec.require_profile;
        if !required.is_empty() && !s.profile.is_some_and(|p| required.iter().any(|r| r == p)) {
            let names: Vec<String> = required.iter().map(|r| format!("`{r}`")).collect();
            return Some(format!(
                "sessions on {t} (namespace {ns}) work under profile {}; pass --profile NAME (or `profile` in your mirrord.json)",
                names.join(" or ")
            ));
        }
        let blocks = |b| self.spec.block.contains(&b);
        if s.scale_down && blocks(Blocked::ScaleDown) {
            return Some(format!(
                "scaling {t} (namespace {ns}) down is not allowed; use --copy-target without --scale-down"
            ));
        }
        let context = [
            (s.context.env.is_some(), Blocked::Env, "the environment of"),
            (
                s.context.outgoing,
                Blocked::Outgoing,
                "outgoing connections from",
            ),
            (s.context.dns, Blocked::Dns, "resolving names as"),
            (
                s.context.files.reads(),
                Blocked::FileRead,
                "reading the files of",
            ),
            (
                s.context.files.writes(),
                Blocked::FileWrite,
                "writing the files of",
            ),
        ];
        if let Some((_, b, what)) = context.iter().find(|(asked, b, _)| *asked && blocks(*b)) {
            let fix = match b {
                Blocked::Env => "set `feature.env` to false",
                Blocked::Outgoing => "set `feature.network.outgoing` to false",
                Blocked::FileRead => "set `feature.fs.mode` to `local`",
                Blocked::FileWrite => {
                    "set `feature.fs.mode` to `read` and drop `feature.fs.read_write`"
                }
                _ => "set `feature.network.dns` to false",
            };
            return Some(format!(
                "{what} {t} (namespace {ns}) is not allowed; {fix} in your mirrord.json"
            ));
        }
        for port in s.ports {
            let steal = port.mode == PortMode::Steal;
            let catch_all = s.catch_all.contains(&port.port);
            let filtered = port.filter.is_some() && !catch_all;
            if steal && blocks(Blocked::Steal) {
                return Some(format!(
                    "stealing from {t} (namespace {ns}) is not allowed; mirror instead"
                ));
            }
            if steal && catch_all && blocks(Blocked::UnfilteredSteal) {
                let f = port
                    .filter
                    .as_ref()
                    .map(|f| f.to_string())
                    .unwrap_or_default();
                return Some(format!(
                    "the filter `{f}` of port {} matches every request, so it is an unfiltered steal of {t}, which is not allowed; filter on what only your requests carry (e.g. --header '^x-user: yourname$')",
                    port.port
                ));
            }
            if steal && !filtered && blocks(Blocked::UnfilteredSteal) {
                return Some(format!(
                    "unfiltered steal of port {} of {t} is not allowed; add an HTTP filter (--header, --path or --method)",
                    port.port
                ));
            }
            if !steal && blocks(Blocked::Mirror) {
                return Some(format!("mirroring {t} (namespace {ns}) is not allowed"));
            }
            if let (true, false, Some(re)) = (
                steal,
                port.filter.is_some(),
                &self.spec.require_header_filter,
            ) {
                return Some(format!(
                    "an unfiltered steal of port {} of {t} would take requests without a header matching `{re}`; add an HTTP filter (--header, --path or --method) and only requests that also carry such a header are stolen",
                    port.port
                ));
            }
        }
        None
    }
}

/// Why `s` cannot be used as written, if it cannot.
fn unusable(s: &PolicySpec) -> Option<String> {
    if let Err(e) = outgoing(s) {
        return Some(e);
    }
    if let Some(e) = s.selector.as_ref().and_then(LabelSelector::invalid) {
        return Some(e);
    }
    // Compiled as every filter is (it is ANDed into steals' filters).
    let p = s.require_header_filter.as_ref()?;
    compile_regex("header", p, &FilterLimits::default())
        .err()
        .map(|e| format!("require_header_filter `{p}` is not a valid regex: {e}"))
}

fn outgoing(s: &PolicySpec) -> Result<Option<Arc<Destinations>>, String> {
    s.outgoing_allow
        .as_deref()
        .map(|d| Destinations::parse(d).map(Arc::new))
        .transpose()
}

fn policy(s: &PolicySpec, broken: Option<String>) -> Policy {
    Policy {
        target: glob(&s.target),
        namespace: glob(&s.namespace),
        users: s.users.iter().map(|u| glob(u)).collect(),
        groups: s.groups.iter().map(|g| glob(g)).collect(),
        outgoing: outgoing(s).ok().flatten(),
        spec: s.clone(),
        broken,
    }
}

impl Policies {
    /// The policies that bind a caller (`user`, `role`, `groups`) on some target, as status
    /// shows them.
    pub fn binding(
        &self,
        user: &str,
        role: Role,
        groups: &[String],
    ) -> Vec<mirrord_protocol::PolicyInfo> {
        self.0
            .iter()
            .filter(|p| {
                (p.users.is_empty() || p.users.iter().any(|u| u.is_match(user)))
                    && (p.spec.roles.is_empty() || p.spec.roles.contains(&role))
                    && (p.groups.is_empty()
                        || groups
                            .iter()
                            .any(|g| p.groups.iter().any(|x| x.is_match(g))))
            })
            .map(Policy::info)
            .collect()
    }

    /// Every policy, as status shows them.
    pub fn all(&self) -> Vec<mirrord_protocol::PolicyInfo> {
        self.0.iter().map(Policy::info).collect()
    }

    /// The config file's policies: one that cannot be used stops the operator's start.
    pub fn compile(specs: &[PolicySpec]) -> Result<Self, String> {
        specs
            .iter()
            .map(|s| match unusable(s) {
                Some(why) => Err(format!("policy `{}`: {why}", s.name)),
                None => Ok(policy(s, None)),
            })
            .collect::<Result<_, String>>()
            .map(Policies)
    }

    /// The config file's profiles by name, each a policy binding the sessions that choose
    /// it (named `profile NAME` in refusals); one that selects anything, or a name given
    /// twice, stops the operator's start.
    pub fn compile_profiles(specs: &[PolicySpec]) -> Result<BTreeMap<String, Self>, String> {
        let mut profiles = BTreeMap::new();
        for s in specs {
            let plain = PolicySpec::named(&s.name);
            let selects = s.target != plain.target
                || s.namespace != plain.namespace
                || !s.users.is_empty()
                || !s.roles.is_empty()
                || !s.groups.is_empty()
                || s.selector.is_some()
                || !s.require_profile.is_empty();
            if selects {
                return Err(format!("profile `{}`: a profile binds the sessions that choose it; target, namespace, users, roles, groups, selector and require_profile are a policy's", s.name));
            }
            let spec = PolicySpec {
                name: format!("profile {}", s.name),
                ..s.clone()
            };
            let compiled = Self::compile(std::slice::from_ref(&spec))?;
            if profiles.insert(s.name.clone(), compiled).is_some() {
                return Err(format!("profile `{}` is given twice", s.name));
            }
        }
        Ok(profiles)
    }

    /// Policies that change while the operator runs (resources of the cluster), each with
    /// what is already known to be wrong with it (an unknown `block`): each one that cannot
    /// be used is kept, failing closed, and its reason given back beside it.
    pub fn compile_each(specs: &[(PolicySpec, Option<String>)]) -> (Self, Vec<Option<String>>) {
        let reasons: Vec<Option<String>> = specs
            .iter()
            .map(|(s, known)| known.clone().or_else(|| unusable(s)))
            .collect();
        let specs: Vec<&PolicySpec> = specs.iter().map(|(s, _)| s).collect();
        let policies = specs
            .iter()
            .zip(&reasons)
            .map(|(s, why)| policy(s, why.clone()))
            .collect();
        (Policies(policies), reasons)
    }

    /// The first policy the request breaks, as the message the user sees; otherwise what
    /// the session is narrowed to: its steals' headers, its outgoing destinations.
    pub fn check(&self, s: &Subject<'_>) -> Result<Verdict, String> {
        let mut verdict = Verdict::default();
        for p in self.0.iter().filter(|p| p.applies(s)) {
            if let Some(what) = p.breach(s) {
                return Err(format!("blocked by policy `{}`: {what}", p.spec.name));
            }
            if p.broken.is_some() {
                continue;
            }
            if let (true, Some(allow)) = (s.context.outgoing, &p.outgoing) {
                verdict.outgoing.push(OutgoingRule {
                    policy: p.spec.name.clone(),
                    allow: Arc::clone(allow),
                });
            }
            let Some(pattern) = &p.spec.require_header_filter else {
                continue;
            };
            verdict.headers.extend(
                s.ports
                    .iter()
                    .filter(|port| port.mode == PortMode::Steal)
                    .map(|port| RequiredHeader {
                        port: port.port,
                        policy: p.spec.name.clone(),
                        pattern: pattern.clone(),
                    }),
            );
        }
        Ok(verdict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirrord_protocol::HttpFilterSpec;

    fn t(name: &str, ns: &str) -> TargetRef {
        TargetRef {
            kind: "deployment".into(),
            name: name.into(),
            namespace: ns.into(),
            container: None,
        }
    }
    fn port(mode: PortMode, header: Option<&str>) -> PortRequest {
        PortRequest {
            port: 80,
            mode,
            filter: header.map(|h| HttpFilterSpec {
                header: vec![h.into()],
                ..Default::default()
            }),
        }
    }
    fn policies(toml_text: &str) -> Policies {
        #[derive(Deserialize)]
        struct W {
            policies: Vec<PolicySpec>,
        }
        let w: W = toml::from_str(toml_text).unwrap();
        Policies::compile(&w.policies).unwrap()
    }
    fn check(
        p: &Policies,
        target: &TargetRef,
        ports: &[PortRequest],
        who: (&str, Role),
    ) -> Result<Vec<RequiredHeader>, String> {
        let catch_all = catch_all_ports(ports);
        p.check(&Subject {
            catch_all: &catch_all,
            user: who.0,
            role: who.1,
            ..subject(target, ports)
        })
        .map(|v| v.headers)
    }
    const ALICE: (&str, Role) = ("alice", Role::Developer);

    static NO_CONTEXT: std::sync::LazyLock<ContextRequest> =
        std::sync::LazyLock::new(ContextRequest::default);
    static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

    /// `alice` (a developer, no groups) asks for `ports` of `target`, and nothing else.
    fn subject<'a>(target: &'a TargetRef, ports: &'a [PortRequest]) -> Subject<'a> {
        Subject {
            target,
            asked: target,
            ports,
            catch_all: &[],
            scale_down: false,
            context: &NO_CONTEXT,
            user: "alice",
            role: Role::Developer,
            groups: &[],
            labels: &NO_LABELS,
            profile: None,
        }
    }

    /// A steal without a filter of `target` (labelled `labels`) by a caller in `groups`.
    fn unfiltered(p: &Policies, labels: &[(&str, &str)], groups: &[&str]) -> Result<(), String> {
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let groups: Vec<String> = groups.iter().map(|g| (*g).to_owned()).collect();
        let ports = [port(PortMode::Steal, None)];
        p.check(&Subject {
            groups: &groups,
            labels: &labels,
            ..subject(&t("api", "shop"), &ports)
        })
        .map(drop)
    }

    #[test]
    fn label_selectors_and_groups_choose_whom_a_policy_binds() {
        let p = policies(
            r#"
[[policies]]
name = "payments"
block = ["unfiltered_steal"]
selector = { match_labels = { app = "payments" }, match_expressions = [{ key = "tier", operator = "NotIn", values = ["dev"] }] }
[[policies]]
name = "interns"
groups = ["interns"]
block = ["steal"]
"#,
        );
        let e = unfiltered(&p, &[("app", "payments")], &[]).unwrap_err();
        assert!(e.starts_with("blocked by policy `payments`"), "{e}");
        assert!(unfiltered(&p, &[("app", "payments"), ("tier", "dev")], &[]).is_ok());
        assert!(unfiltered(&p, &[("app", "web")], &[]).is_ok());
        assert!(unfiltered(&p, &[], &[]).is_ok(), "no labels: not selected");
        let e = unfiltered(&p, &[], &["developers", "interns"]).unwrap_err();
        assert!(e.starts_with("blocked by policy `interns`"), "{e}");
        assert!(unfiltered(&p, &[], &["developers"]).is_ok());
        let sel = LabelSelector {
            match_expressions: vec![
                LabelExpression {
                    key: "a".into(),
                    operator: LabelOperator::Exists,
                    values: vec![],
                },
                LabelExpression {
                    key: "b".into(),
                    operator: LabelOperator::DoesNotExist,
                    values: vec![],
                },
                LabelExpression {
                    key: "c".into(),
                    operator: LabelOperator::In,
                    values: vec!["1".into(), "2".into()],
                },
            ],
            ..LabelSelector::default()
        };
        let l = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect()
        };
        assert!(sel.invalid().is_none());
        let no_values = LabelSelector {
            match_expressions: vec![LabelExpression {
                key: "tier".into(),
                operator: LabelOperator::In,
                values: vec![],
            }],
            ..LabelSelector::default()
        };
        let spec = PolicySpec {
            selector: Some(no_values),
            ..PolicySpec::named("empty-in")
        };
        let e = Policies::compile(&[spec]).err().unwrap();
        assert!(e.contains("`tier` with operator In needs values"), "{e}");
        assert!(sel.matches(&l(&[("a", ""), ("c", "2")])));
        assert!(!sel.matches(&l(&[("a", ""), ("b", "x"), ("c", "2")])));
        assert!(!sel.matches(&l(&[("a", ""), ("c", "3")])));
    }

    #[test]
    fn a_policy_can_require_a_profile() {
        let p = policies(
            r#"
[[policies]]
name = "pay"
target = "deployment/api"
require_profile = ["mirror-only", "filtered"]
"#,
        );
        let ports = [port(PortMode::Mirror, None)];
        let ask = |profile| {
            p.check(&Subject {
                profile,
                ..subject(&t("api", "shop"), &ports)
            })
        };
        let e = ask(None).unwrap_err();
        assert!(
            e.contains("work under profile `mirror-only` or `filtered`"),
            "{e}"
        );
        assert!(ask(Some("other")).is_err());
        assert!(ask(Some("filtered")).is_ok());
    }

    #[test]
    fn a_policy_that_cannot_be_used_fails_closed() {
        let spec = |name: &str, re: &str| PolicySpec {
            target: "deployment/api".into(),
            block: vec![Blocked::Mirror],
            require_header_filter: Some(re.into()),
            ..PolicySpec::named(name)
        };
        let specs = [spec("ok", "^x-user: .+$"), spec("bad", "(unclosed")];
        let Err(e) = Policies::compile(&specs) else {
            panic!("a config file's unusable policy stops the start")
        };
        assert!(e.contains("policy `bad`"), "{e}");
        let (p, reasons) = Policies::compile_each(&specs.map(|s| (s, None)));
        assert!(reasons[0].is_none());
        assert!(
            reasons[1].as_deref().unwrap().contains("(unclosed"),
            "{reasons:?}"
        );
        // Even a filtered steal, which the working policy would only narrow, is refused.
        let e = check(
            &p,
            &t("api", "shop"),
            &[port(PortMode::Steal, Some("x-user: alice"))],
            ALICE,
        )
        .unwrap_err();
        assert!(
            e.contains("`bad`")
                && e.contains("cannot be used as written")
                && e.contains("until it is fixed"),
            "{e}"
        );
        // Where it does not apply, it changes nothing.
        assert!(check(&p, &t("web", "shop"), &[port(PortMode::Steal, None)], ALICE).is_ok());
    }

    /// As admission computes it.
    fn catch_all_ports(ports: &[PortRequest]) -> Vec<u16> {
        ports
            .iter()
            .filter(|p| {
                p.filter.as_ref().is_some_and(|f| {
                    mirrord_dataplane::HttpFilter::compile(f)
                        .unwrap()
                        .matches_every_request()
                })
            })
            .map(|p| p.port)
            .collect()
    }

    /// Issue 24 item 6: `block = ["unfiltered_steal"]` is not bypassed by a filter that
    /// matches every request; a method filter alone is a filter.
    #[test]
    fn a_filter_that_matches_every_request_is_an_unfiltered_steal() {
        let p = policies(
            r#"
[[policies]]
name = "prod-filtered-only"
namespace = "prod"
block = ["unfiltered_steal"]
"#,
        );
        let web = t("web", "prod");
        for h in ["", ".", ".*", "^", "|x"] {
            let e = check(&p, &web, &[port(PortMode::Steal, Some(h))], ALICE).unwrap_err();
            assert!(
                e.contains("`prod-filtered-only`") && e.contains("matches every request"),
                "{h:?}: {e}"
            );
        }
        let path = PortRequest {
            port: 80,
            mode: PortMode::Steal,
            filter: Some(HttpFilterSpec {
                path: vec!["^/".into()],
                ..Default::default()
            }),
        };
        assert!(check(&p, &web, &[path], ALICE).is_err());
        let get = PortRequest {
            port: 80,
            mode: PortMode::Steal,
            filter: Some(HttpFilterSpec {
                method: vec!["GET".into()],
                ..Default::default()
            }),
        };
        assert!(check(&p, &web, &[get], ALICE).is_ok());
        assert!(check(
            &p,
            &web,
            &[port(PortMode::Steal, Some("^x-user: alice$"))],
            ALICE
        )
        .is_ok());
        // Mirrors are not steals.
        assert!(check(&p, &web, &[port(PortMode::Mirror, Some("."))], ALICE).is_ok());
    }

    #[test]
    fn each_kind_of_policy() {
        let p = policies(
            r#"
[[policies]]
name = "prod-no-unfiltered"
namespace = "prod"
block = ["unfiltered_steal"]
[[policies]]
name = "payments-readonly"
target = "deployment/payments-*"
block = ["steal"]
[[policies]]
name = "no-mirror-db"
target = "deployment/db"
block = ["mirror"]
"#,
        );
        let e = check(&p, &t("web", "prod"), &[port(PortMode::Steal, None)], ALICE).unwrap_err();
        assert!(
            e.starts_with("blocked by policy `prod-no-unfiltered`: unfiltered steal"),
            "{e}"
        );
        assert!(check(
            &p,
            &t("web", "prod"),
            &[port(PortMode::Steal, Some("x: 1"))],
            ALICE
        )
        .is_ok());
        assert!(check(&p, &t("web", "dev"), &[port(PortMode::Steal, None)], ALICE).is_ok());

        let e = check(
            &p,
            &t("payments-eu", "dev"),
            &[port(PortMode::Steal, Some("x: 1"))],
            ALICE,
        )
        .unwrap_err();
        assert!(e.contains("`payments-readonly`"), "{e}");
        assert!(check(
            &p,
            &t("payments-eu", "dev"),
            &[port(PortMode::Mirror, None)],
            ALICE
        )
        .is_ok());

        let e = check(&p, &t("db", "dev"), &[port(PortMode::Mirror, None)], ALICE).unwrap_err();
        assert!(e.contains("`no-mirror-db`: mirroring deployment/db"), "{e}");
    }

    /// The header requirement is a clause added to every steal's filter, whatever the
    /// filter's text: nothing to refuse but an unfiltered steal.
    #[test]
    fn a_required_header_narrows_every_steal() {
        let p = policies(
            r#"
[[policies]]
name = "api-needs-user"
target = "deployment/api"
require_header_filter = "^x-user: "
"#,
        );
        let api = t("api", "dev");
        for filter in ["^x-user: alice$", "x-user: |.", "x-team: a"] {
            let required = check(&p, &api, &[port(PortMode::Steal, Some(filter))], ALICE).unwrap();
            assert_eq!(
                required,
                vec![RequiredHeader {
                    port: 80,
                    policy: "api-needs-user".into(),
                    pattern: "^x-user: ".into()
                }],
                "{filter}"
            );
        }
        let e = check(&p, &api, &[port(PortMode::Steal, None)], ALICE).unwrap_err();
        assert!(
            e.contains("`api-needs-user`: an unfiltered steal of port 80 of deployment/api would take requests without a header matching `^x-user: `"),
            "{e}"
        );
        // Mirrors are not narrowed; other targets are not concerned.
        assert!(check(&p, &api, &[port(PortMode::Mirror, None)], ALICE)
            .unwrap()
            .is_empty());
        assert!(
            check(&p, &t("web", "dev"), &[port(PortMode::Steal, None)], ALICE)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn policies_can_name_users_and_roles() {
        let p = policies(
            r#"
[[policies]]
name = "prod-developers-filtered"
namespace = "prod"
roles = ["developer"]
block = ["unfiltered_steal"]
[[policies]]
name = "no-scale-down-in-prod"
namespace = "prod"
users = ["*"]
block = ["scale_down"]
[[policies]]
name = "interns-mirror-only"
users = ["intern-*"]
block = ["steal"]
"#,
        );
        let web = t("web", "prod");
        let unfiltered = [port(PortMode::Steal, None)];
        let e = check(&p, &web, &unfiltered, ALICE).unwrap_err();
        assert!(e.contains("`prod-developers-filtered`"), "{e}");
        assert!(check(&p, &web, &unfiltered, ("root", Role::Admin)).is_ok());

        let scale = |who: (&str, Role)| {
            p.check(&Subject {
                scale_down: true,
                user: who.0,
                role: who.1,
                ..subject(&web, &[port(PortMode::Mirror, None)])
            })
        };
        let e = scale(("root", Role::Admin)).unwrap_err();
        assert!(
            e.contains("`no-scale-down-in-prod`: scaling deployment/web"),
            "{e}"
        );

        let dev = t("web", "dev");
        let e = check(
            &p,
            &dev,
            &[port(PortMode::Steal, Some("a: b"))],
            ("intern-joe", Role::Developer),
        )
        .unwrap_err();
        assert!(e.contains("`interns-mirror-only`"), "{e}");
        assert!(check(&p, &dev, &[port(PortMode::Steal, Some("a: b"))], ALICE).is_ok());
    }

    /// `outgoing_allow` does not refuse the session: it binds the connections of one that
    /// asks for outgoing traffic, one rule per policy; a bad entry fails closed.
    #[test]
    fn outgoing_allow_lists_bind_sessions_that_connect() {
        let p = policies(
            r#"
[[policies]]
name = "db-only"
namespace = "prod"
outgoing_allow = ["10.0.0.0/8:5432", "db:5432"]
[[policies]]
name = "dns-too"
namespace = "prod"
outgoing_allow = ["udp://*:53", "10.0.0.0/8:5432"]
"#,
        );
        let outgoing = ContextRequest {
            outgoing: true,
            ..Default::default()
        };
        let ask = |ns: &str, context: &ContextRequest| {
            p.check(&Subject {
                context,
                ..subject(&t("web", ns), &[])
            })
            .unwrap()
            .outgoing
        };
        let rules = ask("prod", &outgoing);
        let names: Vec<&str> = rules.iter().map(|r| r.policy.as_str()).collect();
        assert_eq!(names, ["db-only", "dns-too"]);
        assert!(ask("prod", &NO_CONTEXT).is_empty(), "no outgoing asked");
        assert!(ask("dev", &outgoing).is_empty(), "not bound in dev");
        assert!(p.binding("alice", Role::Developer, &[])[0]
            .rules
            .contains("outgoing only to 10.0.0.0/8:5432, db:5432"));

        let spec = PolicySpec {
            outgoing_allow: Some(vec!["10.0.0.1:http".into()]),
            ..PolicySpec::named("bad")
        };
        let e = Policies::compile(std::slice::from_ref(&spec))
            .err()
            .unwrap();
        assert!(e.contains("outgoing_allow entry `10.0.0.1:http`"), "{e}");
        let (live, why) = Policies::compile_each(&[(spec, None)]);
        assert!(why[0].as_deref().unwrap().contains("not a port"));
        let e = live
            .check(&Subject {
                context: &outgoing,
                ..subject(&t("web", "prod"), &[])
            })
            .unwrap_err();
        assert!(e.contains("cannot be used as written"), "{e}");
    }

    /// `block = ["env", "outgoing", "dns"]`: each refuses a session asking for that part of
    /// the target's context, naming the mirrord.json key that turns it off.
    #[test]
    fn policies_block_parts_of_the_context() {
        let p = policies(
            r#"
[[policies]]
name = "prod-no-secrets"
namespace = "prod"
block = ["env", "outgoing"]
"#,
        );
        let ask = |ns: &str, context: ContextRequest| {
            p.check(&Subject {
                context: &context,
                ..subject(&t("web", ns), &[])
            })
        };
        let env = ContextRequest {
            env: Some(Default::default()),
            ..Default::default()
        };
        let e = ask("prod", env.clone()).unwrap_err();
        assert_eq!(e, "blocked by policy `prod-no-secrets`: the environment of deployment/web (namespace prod) is not allowed; set `feature.env` to false in your mirrord.json");
        let outgoing = ContextRequest {
            outgoing: true,
            dns: true,
            ..Default::default()
        };
        let e = ask("prod", outgoing).unwrap_err();
        assert!(
            e.contains("outgoing connections from deployment/web")
                && e.contains("`feature.network.outgoing`"),
            "{e}"
        );
        let dns = ContextRequest {
            dns: true,
            ..Default::default()
        };
        assert!(ask("prod", dns).is_ok());
        assert!(ask("dev", env).is_ok());
    }

    #[test]
    fn profiles_select_nothing_and_are_named_once() {
        let mirror_only = PolicySpec {
            block: vec![Blocked::Steal],
            ..PolicySpec::named("mirror-only")
        };
        let profiles = Policies::compile_profiles(std::slice::from_ref(&mirror_only)).unwrap();
        assert_eq!(profiles["mirror-only"].all()[0].name, "profile mirror-only");
        let twice = Policies::compile_profiles(&[mirror_only.clone(), mirror_only.clone()]);
        assert!(twice.err().unwrap().contains("given twice"));
        let selecting = PolicySpec {
            namespace: "prod".into(),
            ..mirror_only
        };
        let e = Policies::compile_profiles(&[selecting]).err().unwrap();
        assert!(e.contains("are a policy's"), "{e}");
    }

    #[test]
    fn bad_policies_are_named() {
        let spec = PolicySpec {
            require_header_filter: Some("(".into()),
            ..PolicySpec::named("p")
        };
        let e = Policies::compile(&[spec]).err().unwrap();
        assert!(
            e.starts_with("policy `p`: require_header_filter `(` is not a valid regex"),
            "{e}"
        );
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct W {
            policies: Vec<PolicySpec>,
        }
        let e =
            toml::from_str::<W>("[[policies]]\nname = \"p\"\nroles = [\"root\"]\n").unwrap_err();
        assert!(e.to_string().contains("unknown variant `root`"), "{e}");
    }
}
