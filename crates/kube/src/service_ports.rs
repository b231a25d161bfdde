//! A Service's ports as its pods' ports: a session on `service/web` asking for port 80
//! means the traffic sent to the Service's port 80, which kube-proxy sends to the pods'
//! port its `targetPort` names (a number, or the name of a container port). Translated once
//! when the target is resolved; everything downstream (port locks, the agents' redirects,
//! events, metrics) is on the pods' port, where the traffic is taken.

use k8s_openapi::api::core::v1::{Container, PodTemplateSpec, Service, ServicePort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use mirrord_controlplane::backend::PortNames;
use mirrord_protocol::TargetRef;

/// Why a Service's port has no pods' port.
#[derive(Debug, thiserror::Error)]
pub enum ServicePortError {
    #[error("{service} in namespace {namespace} sends its port {port} to the pods' port named `{name}`, which none of their containers declares (their named ports: {declared}); fix the Service's targetPort or the containers' port names, or ask for the pods' port itself")]
    UnknownName {
        service: String,
        namespace: String,
        port: u16,
        name: String,
        declared: String,
    },
    #[error("{service} in namespace {namespace} sends its port {port} to {target}, which is not a port number; fix the Service's targetPort")]
    NotAPort {
        service: String,
        namespace: String,
        port: u16,
        target: String,
    },
}

/// The TCP ports of Service `r` (`svc`), each as the port of the pods of `template` it
/// sends to: a numeric `targetPort` as is, none as the port itself, a name as the container
/// port of that name (`r`'s container first, then the others in order).
pub fn translate(r: &TargetRef, svc: &Service, template: &PodTemplateSpec) -> PortNames {
    let ports = svc
        .spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| {
            let port = u16::try_from(p.port).ok()?;
            let target = target_port(r, port, p, template).map_err(|e| e.to_string());
            Some((port, target))
        })
        .collect();
    PortNames {
        by: r.to_string(),
        ports,
    }
}

fn target_port(
    r: &TargetRef,
    port: u16,
    p: &ServicePort,
    template: &PodTemplateSpec,
) -> Result<u16, ServicePortError> {
    let not_a_port = |target: String| ServicePortError::NotAPort {
        service: r.to_string(),
        namespace: r.namespace.clone(),
        port,
        target,
    };
    match &p.target_port {
        None => Ok(port),
        Some(IntOrString::Int(n)) => u16::try_from(*n)
            .ok()
            .filter(|&n| n != 0)
            .ok_or_else(|| not_a_port(n.to_string())),
        // Kubernetes' port names have a letter; a string of digits is a number all the same.
        Some(IntOrString::String(s)) if s.bytes().all(|b| b.is_ascii_digit()) => s
            .parse::<u16>()
            .ok()
            .filter(|&n| n != 0)
            .ok_or_else(|| not_a_port(s.clone())),
        Some(IntOrString::String(name)) => named_port(template, r.container.as_deref(), name)
            .ok_or_else(|| ServicePortError::UnknownName {
                service: r.to_string(),
                namespace: r.namespace.clone(),
                port,
                name: name.clone(),
                declared: declared_names(template),
            }),
    }
}

/// The containers of `template`, `first` (if any) first: where a name is looked up.
fn containers<'a>(
    template: &'a PodTemplateSpec,
    first: Option<&'a str>,
) -> impl Iterator<Item = &'a Container> {
    let all = || template.spec.iter().flat_map(|s| &s.containers);
    let chosen = all().filter(move |c| Some(c.name.as_str()) == first);
    chosen.chain(all().filter(move |c| Some(c.name.as_str()) != first))
}

/// The TCP container port called `name`.
fn named_port(template: &PodTemplateSpec, first: Option<&str>, name: &str) -> Option<u16> {
    containers(template, first)
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .find(|p| p.name.as_deref() == Some(name))
        .and_then(|p| u16::try_from(p.container_port).ok())
}

/// `http=8080 (app), metrics=9090 (sidecar)`, or `none`.
fn declared_names(template: &PodTemplateSpec) -> String {
    let named: Vec<String> = containers(template, None)
        .flat_map(|c| {
            c.ports.iter().flatten().filter_map(move |p| {
                Some(format!(
                    "{}={} ({})",
                    p.name.as_deref()?,
                    p.container_port,
                    c.name
                ))
            })
        })
        .collect();
    match named.is_empty() {
        true => "none".into(),
        false => named.join(", "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(ports: serde_json::Value) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": ports},
        }))
        .unwrap()
    }

    /// Two containers: `app` declares `http` as 8080, `sidecar` declares `http` as 9000
    /// and `metrics` as 9090.
    fn template() -> PodTemplateSpec {
        serde_json::from_value(serde_json::json!({
            "spec": {"containers": [
                {"name": "app", "ports": [{"containerPort": 8080, "name": "http"}]},
                {"name": "sidecar", "ports": [
                    {"containerPort": 9000, "name": "http"},
                    {"containerPort": 9090, "name": "metrics"},
                    {"containerPort": 53, "name": "dns", "protocol": "UDP"},
                ]},
            ]}
        }))
        .unwrap()
    }

    fn web(container: Option<&str>) -> TargetRef {
        TargetRef {
            kind: "service".into(),
            name: "web".into(),
            namespace: "shop".into(),
            container: container.map(str::to_owned),
        }
    }

    #[test]
    fn numeric_named_and_absent_target_ports() {
        let s = svc(serde_json::json!([
            {"name": "a", "port": 80, "targetPort": 8080},
            {"name": "b", "port": 81, "targetPort": "http"},
            {"name": "c", "port": 82, "targetPort": "metrics"},
            {"name": "d", "port": 83},
            {"name": "e", "port": 84, "targetPort": "8443"},
            {"name": "f", "port": 53, "targetPort": "dns", "protocol": "UDP"},
        ]));
        let names = translate(&web(None), &s, &template());
        assert_eq!(names.by, "service/web");
        let at = |p| names.target_port(p).unwrap();
        assert_eq!(at(80), (8080, Some(80)));
        assert_eq!(at(81), (8080, Some(81)), "the first container's `http`");
        assert_eq!(at(82), (9090, Some(82)), "a name any container declares");
        assert_eq!(at(83), (83, Some(83)), "no targetPort: the port itself");
        assert_eq!(at(84), (8443, Some(84)));
        assert!(!names.ports.contains_key(&53), "UDP ports are not stolen");
        // The target's container is looked in first.
        let names = translate(&web(Some("sidecar")), &s, &template());
        assert_eq!(names.target_port(81).unwrap(), (9000, Some(81)));
    }

    #[test]
    fn a_name_no_container_declares_is_an_error_naming_all_three() {
        let s = svc(serde_json::json!([
            {"name": "a", "port": 80, "targetPort": "web"},
            {"name": "b", "port": 81, "targetPort": 0},
        ]));
        let names = translate(&web(None), &s, &template());
        let e = names.target_port(80).unwrap_err();
        assert!(
            e.starts_with("service/web in namespace shop sends its port 80 to the pods' port named `web`, which none of their containers declares"),
            "{e}"
        );
        assert!(
            e.contains("http=8080 (app), http=9000 (sidecar), metrics=9090 (sidecar)"),
            "{e}"
        );
        let e = names.target_port(81).unwrap_err();
        assert!(
            e.contains("sends its port 81 to 0, which is not a port number"),
            "{e}"
        );
    }

    #[test]
    fn a_port_the_service_does_not_expose_is_the_pods_own_and_said_so() {
        let s = svc(serde_json::json!([{"port": 80, "targetPort": 8080}]));
        let names = translate(&web(None), &s, &template());
        assert_eq!(names.target_port(9090).unwrap(), (9090, None));
        let said = names.not_exposed(9090).unwrap();
        assert!(
            said.starts_with("port 9090 is not a port of service/web (its ports: 80)"),
            "{said}"
        );
        // The pods' port a Service's port sends to is what the Service's traffic reaches.
        assert_eq!(names.target_port(8080).unwrap(), (8080, None));
        assert_eq!(names.not_exposed(8080), None);
        assert_eq!(names.not_exposed(80), None);
        // A target that is not a Service has no ports of its own to warn about.
        assert_eq!(PortNames::default().not_exposed(9090), None);
        assert_eq!(PortNames::default().target_port(80).unwrap(), (80, None));
    }
}
