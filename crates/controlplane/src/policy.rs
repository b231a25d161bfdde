//! Policies from the config file: per target (by name, namespace or pattern), what a session
//! may not do. A refused session is told which policy refused it.

use mirrord_protocol::{PortMode, PortRequest, TargetRef};
use regex::Regex;
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Blocked {
    /// Steal without an HTTP filter.
    UnfilteredSteal,
    /// Any steal.
    Steal,
    Mirror,
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
    #[serde(default)]
    pub block: Vec<Blocked>,
    /// Steals must carry a `--header` filter whose text matches this regex.
    #[serde(default)]
    pub require_header_filter: Option<String>,
}

fn any() -> String {
    "*".into()
}

struct Policy {
    spec: PolicySpec,
    target: Regex,
    namespace: Regex,
    header: Option<Regex>,
}

#[derive(Default)]
pub struct Policies(Vec<Policy>);

fn glob(pattern: &str) -> Regex {
    let escaped: Vec<String> = pattern.split('*').map(regex::escape).collect();
    Regex::new(&format!("^{}$", escaped.join(".*"))).expect("escaped glob is a valid regex")
}

impl Policies {
    pub fn compile(specs: &[PolicySpec]) -> Result<Self, String> {
        specs
            .iter()
            .map(|s| {
                let header = match &s.require_header_filter {
                    Some(p) => Some(Regex::new(p).map_err(|e| {
                        format!(
                            "policy `{}`: require_header_filter `{p}` is not a valid regex: {e}",
                            s.name
                        )
                    })?),
                    None => None,
                };
                Ok(Policy {
                    target: glob(&s.target),
                    namespace: glob(&s.namespace),
                    header,
                    spec: s.clone(),
                })
            })
            .collect::<Result<_, String>>()
            .map(Policies)
    }

    /// The first policy the request breaks, as the message the user sees.
    pub fn check(&self, target: &TargetRef, ports: &[PortRequest]) -> Result<(), String> {
        let t = target.to_string();
        for p in self
            .0
            .iter()
            .filter(|p| p.target.is_match(&t) && p.namespace.is_match(&target.namespace))
        {
            let name = &p.spec.name;
            let why = |what: String| Err(format!("blocked by policy `{name}`: {what}"));
            for port in ports {
                let steal = port.mode == PortMode::Steal;
                let filtered = port.filter.is_some();
                if steal && p.spec.block.contains(&Blocked::Steal) {
                    return why(format!(
                        "stealing from {t} (namespace {}) is not allowed; mirror instead",
                        target.namespace
                    ));
                }
                if steal && !filtered && p.spec.block.contains(&Blocked::UnfilteredSteal) {
                    return why(format!(
                        "unfiltered steal of port {} of {t} is not allowed; add an HTTP filter (--header, --path or --method)",
                        port.port
                    ));
                }
                if !steal && p.spec.block.contains(&Blocked::Mirror) {
                    return why(format!(
                        "mirroring {t} (namespace {}) is not allowed",
                        target.namespace
                    ));
                }
                if let (true, Some(re)) = (steal, &p.header) {
                    let ok = port
                        .filter
                        .as_ref()
                        .is_some_and(|f| f.header.iter().any(|h| re.is_match(h)));
                    if !ok {
                        return why(format!(
                            "steals on {t} need a --header filter matching `{}`",
                            re.as_str()
                        ));
                    }
                }
            }
        }
        Ok(())
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
[[policies]]
name = "api-needs-user"
target = "deployment/api"
require_header_filter = "^x-user: "
"#,
        );
        let e = p
            .check(&t("web", "prod"), &[port(PortMode::Steal, None)])
            .unwrap_err();
        assert!(
            e.starts_with("blocked by policy `prod-no-unfiltered`: unfiltered steal"),
            "{e}"
        );
        assert!(p
            .check(&t("web", "prod"), &[port(PortMode::Steal, Some("x: 1"))])
            .is_ok());
        assert!(p
            .check(&t("web", "dev"), &[port(PortMode::Steal, None)])
            .is_ok());

        let e = p
            .check(
                &t("payments-eu", "dev"),
                &[port(PortMode::Steal, Some("x: 1"))],
            )
            .unwrap_err();
        assert!(e.contains("`payments-readonly`"), "{e}");
        assert!(p
            .check(&t("payments-eu", "dev"), &[port(PortMode::Mirror, None)])
            .is_ok());

        let e = p
            .check(&t("db", "dev"), &[port(PortMode::Mirror, None)])
            .unwrap_err();
        assert!(e.contains("`no-mirror-db`: mirroring deployment/db"), "{e}");

        let e = p
            .check(
                &t("api", "dev"),
                &[port(PortMode::Steal, Some("x-team: a"))],
            )
            .unwrap_err();
        assert!(
            e.contains("need a --header filter matching `^x-user: `"),
            "{e}"
        );
        assert!(p
            .check(
                &t("api", "dev"),
                &[port(PortMode::Steal, Some("^x-user: alice$"))]
            )
            .is_err());
        assert!(p
            .check(
                &t("api", "dev"),
                &[port(PortMode::Steal, Some("x-user: alice"))]
            )
            .is_ok());
    }
}
