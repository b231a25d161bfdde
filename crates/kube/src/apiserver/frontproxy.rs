//! Who a request comes from, as the API server's front proxy says: the proxy proves itself
//! with a client certificate of the request-header CA (and one of the allowed names), and
//! only then are its `X-Remote-User` / `X-Remote-Group` headers believed. Everything is
//! read from `kube-system/extension-apiserver-authentication`, the ConfigMap the API
//! server publishes for aggregated API servers.

use super::ApiServerError;
use http::HeaderMap;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use rustls::pki_types::CertificateDer;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use std::sync::Arc;

const NAMESPACE: &str = "kube-system";
const CONFIGMAP: &str = "extension-apiserver-authentication";

/// The request-header authentication the API server told us to expect.
pub struct FrontProxy {
    pub verifier: Arc<dyn ClientCertVerifier>,
    allowed_names: Vec<String>,
    user_headers: Vec<String>,
    group_headers: Vec<String>,
    /// Every header a front proxy sets: refused from anyone else.
    all_prefixes: Vec<String>,
}

/// The user and groups the API server authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeUser {
    pub name: String,
    pub groups: Vec<String>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("this API is served to the Kubernetes API server only: the request carries no client certificate of its request-header CA (use kubectl or mirrordctl with your kubeconfig)")]
    NotProxied,
    #[error("front-proxy headers ({0}) from a peer that is not the API server: refused")]
    Forged(String),
    #[error("the client certificate's name {0:?} is not among the request-header allowed names")]
    NameNotAllowed(String),
}

impl FrontProxy {
    pub async fn load(client: &kube::Client) -> Result<Self, ApiServerError> {
        let cm = Api::<ConfigMap>::namespaced(client.clone(), NAMESPACE)
            .get(CONFIGMAP)
            .await
            .map_err(|e| {
                ApiServerError::RequestHeader(format!("reading {NAMESPACE}/{CONFIGMAP}: {e}"))
            })?;
        let data = cm.data.unwrap_or_default();
        let get = |k: &str| data.get(k).cloned().unwrap_or_default();
        Self::from_parts(
            &get("requestheader-client-ca-file"),
            &get("requestheader-allowed-names"),
            &get("requestheader-username-headers"),
            &get("requestheader-group-headers"),
            &get("requestheader-extra-headers-prefix"),
        )
    }

    fn from_parts(
        ca_pem: &str,
        allowed: &str,
        users: &str,
        groups: &str,
        extra: &str,
    ) -> Result<Self, ApiServerError> {
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            ApiServerError::RequestHeader(format!("{CONFIGMAP}: {what}: {e}"))
        };
        let mut roots = RootCertStore::empty();
        let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut ca_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| bad("requestheader-client-ca-file", &e))?;
        if certs.is_empty() {
            return Err(ApiServerError::RequestHeader(format!(
                "{CONFIGMAP} has no requestheader-client-ca-file: start the API server with --requestheader-client-ca-file (aggregation layer)"
            )));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| bad("requestheader-client-ca-file", &e))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .allow_unauthenticated()
            .build()
            .map_err(|e| bad("requestheader-client-ca-file", &e))?;
        let list = |what: &str, s: &str| -> Result<Vec<String>, ApiServerError> {
            if s.trim().is_empty() {
                return Ok(vec![]);
            }
            serde_json::from_str(s).map_err(|e| bad(what, &e))
        };
        let lower = |v: Vec<String>| {
            v.into_iter()
                .map(|h| h.to_ascii_lowercase())
                .collect::<Vec<_>>()
        };
        let user_headers = lower(list("requestheader-username-headers", users)?);
        let group_headers = lower(list("requestheader-group-headers", groups)?);
        let extra = lower(list("requestheader-extra-headers-prefix", extra)?);
        if user_headers.is_empty() {
            return Err(ApiServerError::RequestHeader(format!(
                "{CONFIGMAP} names no requestheader-username-headers"
            )));
        }
        let all_prefixes = user_headers
            .iter()
            .chain(&group_headers)
            .chain(&extra)
            .cloned()
            .collect();
        Ok(Self {
            verifier,
            allowed_names: list("requestheader-allowed-names", allowed)?,
            user_headers,
            group_headers,
            all_prefixes,
        })
    }

    /// The user a request comes from. `proxy_cn`: the common name of the client
    /// certificate the TLS handshake verified against the request-header CA (`None`: the
    /// peer sent none). `Ok(None)`: the API server itself, for no user (discovery, its
    /// availability checks).
    pub fn identify(
        &self,
        proxy_cn: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<Option<KubeUser>, AuthError> {
        let Some(cn) = proxy_cn else {
            let forged: Vec<&str> = headers
                .keys()
                .map(|k| k.as_str())
                .filter(|k| self.all_prefixes.iter().any(|p| k.starts_with(p.as_str())))
                .collect();
            return Err(match forged.is_empty() {
                true => AuthError::NotProxied,
                false => AuthError::Forged(forged.join(", ")),
            });
        };
        if !self.allowed_names.is_empty() && !self.allowed_names.iter().any(|n| n == cn) {
            return Err(AuthError::NameNotAllowed(cn.to_owned()));
        }
        let Some(name) = self
            .user_headers
            .iter()
            .find_map(|h| headers.get(h.as_str()))
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
        else {
            return Ok(None);
        };
        let groups = self
            .group_headers
            .iter()
            .flat_map(|h| headers.get_all(h.as_str()))
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect();
        Ok(Some(KubeUser {
            name: name.to_owned(),
            groups,
        }))
    }
}

/// The common name of a certificate (the front proxy's is checked against the allowed
/// names).
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy() -> FrontProxy {
        let ca = rcgen::generate_simple_self_signed(vec!["front-proxy-ca".into()]).unwrap();
        FrontProxy::from_parts(
            &ca.cert.pem(),
            r#"["front-proxy-client"]"#,
            r#"["X-Remote-User"]"#,
            r#"["X-Remote-Group"]"#,
            r#"["X-Remote-Extra-"]"#,
        )
        .unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn only_the_proxy_is_believed() {
        let p = proxy();
        let h = headers(&[
            ("X-Remote-User", "alice"),
            ("X-Remote-Group", "developers"),
            ("X-Remote-Group", "system:authenticated"),
        ]);
        assert_eq!(
            p.identify(Some("front-proxy-client"), &h).unwrap(),
            Some(KubeUser {
                name: "alice".into(),
                groups: vec!["developers".into(), "system:authenticated".into()],
            })
        );
        // The same headers without the proxy's certificate are a forgery.
        assert_eq!(
            p.identify(None, &h).unwrap_err(),
            AuthError::Forged("x-remote-user, x-remote-group".into())
        );
        assert_eq!(
            p.identify(None, &headers(&[("x-remote-extra-scopes", "x")]))
                .unwrap_err(),
            AuthError::Forged("x-remote-extra-scopes".into())
        );
        assert_eq!(
            p.identify(None, &HeaderMap::new()).unwrap_err(),
            AuthError::NotProxied
        );
        // A certificate of the CA with another name is not the proxy.
        assert_eq!(
            p.identify(Some("mallory"), &h).unwrap_err(),
            AuthError::NameNotAllowed("mallory".into())
        );
        // The proxy for nobody (discovery).
        assert_eq!(
            p.identify(Some("front-proxy-client"), &HeaderMap::new())
                .unwrap(),
            None
        );
    }

    #[test]
    fn a_configmap_without_the_ca_is_a_clear_error() {
        let e = FrontProxy::from_parts("", "", r#"["X-Remote-User"]"#, "", "")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("--requestheader-client-ca-file"), "{e}");
    }
}
