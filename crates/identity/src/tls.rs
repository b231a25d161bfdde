//! rustls configurations for both ends of the API. The ring provider is used explicitly so
//! nothing depends on a process-wide default being installed.

use crate::credentials::Credentials;
use crate::{CertificateAuthority, IdentityError};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
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

/// The server side: a serving certificate made once from the CA, and a configuration per
/// revocation list (made again whenever the list changes, with the same certificate).
pub struct ServerTls {
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl ServerTls {
    pub fn new(ca: &CertificateAuthority) -> Result<Self, IdentityError> {
        let ca_der: Vec<CertificateDer<'static>> =
            rustls_pemfile::certs(&mut ca.cert_pem().as_bytes())
                .filter_map(Result::ok)
                .collect();
        let issued = ca.issue_server()?;
        let chain = rustls_pemfile::certs(&mut issued.cert_pem.as_bytes())
            .filter_map(Result::ok)
            .collect();
        let key = rustls_pemfile::private_key(&mut issued.key_pem.as_bytes())
            .ok()
            .flatten()
            .ok_or(IdentityError::PeerCert("generated key unreadable".into()))?;
        Ok(Self {
            roots: roots(&ca_der)?,
            chain,
            key,
        })
    }

    /// Client certificates required, checked against the CA, their validity period
    /// (expired ones fail the handshake) and `crl` when given (revoked ones fail it too).
    pub fn config(
        &self,
        crl: Option<CertificateRevocationListDer<'static>>,
    ) -> Result<Arc<ServerConfig>, IdentityError> {
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::clone(&self.roots), provider())
                .with_crls(crl)
                .only_check_end_entity_revocation()
                .build()?;
        let cfg = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        Ok(Arc::new(cfg))
    }

    /// For browsers (the console): the same serving certificate, no client certificate
    /// asked for (the console authenticates with login links and cookies), HTTP/1.1.
    pub fn browser_config(&self) -> Result<Arc<ServerConfig>, IdentityError> {
        let mut cfg = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
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

/// Client side without a certificate of its own: trust only the CA `ca_pem` (PEM). For an
/// agent the operator dials (an ephemeral container): it is known by the address it was
/// reached at, and needs only to know the operator.
pub fn ca_only_client_config(ca_pem: &[u8]) -> Result<Arc<ClientConfig>, IdentityError> {
    let ca: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &ca_pem[..])
        .filter_map(Result::ok)
        .collect();
    if ca.is_empty() {
        return Err(IdentityError::PeerCert(
            "no CA certificate in the PEM given".into(),
        ));
    }
    let verifier = WebPkiServerVerifier::builder_with_provider(roots(&ca)?, provider())
        .build()
        .map_err(|e| IdentityError::PeerCert(e.to_string()))?;
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_webpki_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}
