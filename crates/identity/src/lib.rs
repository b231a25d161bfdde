//! Identity: the operator's certificate authority, the credentials it issues to users, the
//! mutual-TLS configurations of both sides, and how a peer's certificate becomes a
//! `client_id` and `client_user`.
//!
//! Nothing here is self-asserted: `client_user` is the certificate's common name and
//! `client_id` a hash of its public key, both vouched for by the CA's signature, which the
//! TLS handshake checks before the operator reads a single frame.
#![forbid(unsafe_code)]

mod ca;
mod credentials;
mod peer;
pub mod registry;
mod role;
mod tls;

pub use ca::{private_dir, CertificateAuthority, ClientSpec, IssuedCert, IssuedClient};
pub use credentials::Credentials;
pub use peer::PeerIdentity;
pub use role::{Role, UnknownRole};
pub use tls::{ca_only_client_config, client_config, ServerTls, OPERATOR_SERVER_NAME};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no usable {what}")]
    Pem {
        path: std::path::PathBuf,
        what: &'static str,
    },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration failed: {0}")]
    Tls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("user name must be 1-64 characters of [A-Za-z0-9._@-], got `{0}`")]
    BadUser(String),
    #[error("peer certificate cannot be parsed: {0}")]
    PeerCert(String),
    #[error("no operator CA in {}: create one with `mirrord-operator certs init --state-dir {}` (or add --init-ca)", dir.display(), dir.display())]
    NoCa { dir: std::path::PathBuf },
    #[error("the operator CA in {} is unusable: {problem}. A new CA would invalidate every credential issued, so none is made: restore ca.crt and ca.key from a backup, or remove both and run `mirrord-operator certs init`", dir.display())]
    BrokenCa {
        dir: std::path::PathBuf,
        problem: String,
    },
    /// A CA key others may read: refused (as ssh and PostgreSQL refuse such keys), not
    /// silently fixed, because it may no longer be secret.
    #[error("{} can be read or written by any user of this machine (mode {mode:04o}), so the CA key may no longer be secret. If you know it was not read (a backup restored with the wrong mode), `chmod 600 {}`; otherwise make a new CA (`mirrord-operator certs init` in an empty state directory) and issue new credentials", path.display(), path.display())]
    ExposedKey { path: std::path::PathBuf, mode: u32 },
    #[error("{} already holds an operator CA; `certs init` never replaces one", dir.display())]
    CaExists { dir: std::path::PathBuf },
    #[error("a certificate cannot be valid for {} s; give a duration such as 90d or 12h", .0.as_secs())]
    BadValidity(std::time::Duration),
    #[error("`{0}` is not a hex serial number")]
    BadSerial(String),
    #[error("{path} is not a registry of issued certificates: {reason}")]
    BadRegistry {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("{path} holds no usable certificate revocation list: {reason}; restore it (revocations are recorded in issued.json) or run `mirrord-operator certs revoke` again")]
    BadCrl {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("no credential to revoke matches `{0}` (a user or a client id); see `mirrord-operator certs list`")]
    NothingToRevoke(String),
    #[error("every credential matching `{0}` is already revoked")]
    AlreadyRevoked(String),
    #[error("`{0}` is both a user and another credential's client id; say which with --user or --client-id")]
    Ambiguous(String),
    #[error("{path} is not a credentials file from `certs issue --out -`: {reason}")]
    BadBundle {
        path: std::path::PathBuf,
        reason: String,
    },
}
