//! rustls configurations for both ends of the API. The ring provider is used explicitly so
//! nothing depends on a process-wide default being installed.

use crate::credentials::Credentials;
use crate::{CertificateAuthority, IdentityError};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::sync::Arc;

/// The name in the operator's serving certificate that clients verify.
pub const OPERATOR_SERVER_NAME: &str = "mirrord-operator";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>, IdentityError> {
    let mut store = RootCertStore::empty();
    for c in ca {
        store.add(c.clone())?;
    }
    Ok(Arc::new(store))
}

/// Server side: a fresh serving certificate from the CA; client certificates required.
pub fn server_config(ca: &CertificateAuthority) -> Result<Arc<ServerConfig>, IdentityError> {
    let ca_der: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut ca.cert_pem().as_bytes())
        .filter_map(Result::ok)
        .collect();
    let issued = ca.issue_server()?;
    let chain: Vec<CertificateDer<'static>> =
        rustls_pemfile::certs(&mut issued.cert_pem.as_bytes())
            .filter_map(Result::ok)
            .collect();
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut issued.key_pem.as_bytes())
        .ok()
        .flatten()
        .ok_or(IdentityError::PeerCert("generated key unreadable".into()))?;
    let verifier =
        WebPkiClientVerifier::builder_with_provider(roots(&ca_der)?, provider()).build()?;
    let cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    Ok(Arc::new(cfg))
}

/// Client side: trust only the operator's CA, present the user's certificate.
pub fn client_config(creds: &Credentials) -> Result<Arc<ClientConfig>, IdentityError> {
    let verifier = WebPkiServerVerifier::builder_with_provider(roots(&creds.ca)?, provider())
        .build()
        .map_err(|e| IdentityError::PeerCert(e.to_string()))?;
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(creds.chain.clone(), creds.key.clone_key())?;
    Ok(Arc::new(cfg))
}
