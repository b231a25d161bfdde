//! A user's credentials: what `certs issue` writes and `mirrordctl` reads. A directory of
//! four files, or the same four in one JSON file (`certs issue --out -`, for credentials
//! issued inside the operator's pod with `kubectl exec` and saved by the shell).

use crate::ca::{read, write, CertificateAuthority, ClientSpec};
use crate::registry::{self, IssuedRecord};
use crate::IdentityError;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};

const CA: &str = "ca.crt";
const CERT: &str = "client.crt";
const KEY: &str = "client.key";
const ADDR: &str = "operator-address";

/// The four files of a credential directory in one document.
#[derive(serde::Serialize, serde::Deserialize)]
struct Bundle {
    #[serde(rename = "ca.crt")]
    ca: String,
    #[serde(rename = "client.crt")]
    cert: String,
    #[serde(rename = "client.key")]
    key: String,
    #[serde(rename = "operator-address")]
    addr: String,
}

pub struct Credentials {
    pub dir: PathBuf,
    pub ca: Vec<CertificateDer<'static>>,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// `host:port` of the operator's API.
    pub operator_addr: String,
}

impl Credentials {
    /// Issues a certificate, records it in `state_dir`'s registry (before anything else,
    /// so no credential exists that `certs list` does not show or `certs revoke` cannot
    /// reach) and writes the directory.
    pub fn issue(
        ca: &CertificateAuthority,
        state_dir: &Path,
        spec: &ClientSpec,
        operator_addr: &str,
        out: &Path,
    ) -> Result<IssuedRecord, IdentityError> {
        let (issued, record) = registry::issue(ca, state_dir, spec)?;
        crate::ca::private_dir(out)?;
        write(&out.join(CA), ca.cert_pem(), false)?;
        write(&out.join(CERT), &issued.cert.cert_pem, false)?;
        write(&out.join(KEY), &issued.cert.key_pem, true)?;
        write(&out.join(ADDR), &format!("{operator_addr}\n"), false)?;
        Ok(record)
    }

    /// Issues and records a certificate like [`Credentials::issue`], returned as one JSON
    /// document with the four files (nothing is written but the registry).
    pub fn issue_bundle(
        ca: &CertificateAuthority,
        state_dir: &Path,
        spec: &ClientSpec,
        operator_addr: &str,
    ) -> Result<(String, IssuedRecord), IdentityError> {
        let (issued, record) = registry::issue(ca, state_dir, spec)?;
        let bundle = Bundle {
            ca: ca.cert_pem().to_owned(),
            cert: issued.cert.cert_pem,
            key: issued.cert.key_pem,
            addr: format!("{operator_addr}\n"),
        };
        let json = serde_json::to_string_pretty(&bundle).expect("a bundle serializes");
        Ok((json, record))
    }

    /// Reads a credential directory, or a bundle file ([`Credentials::issue_bundle`]).
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        if path.is_file() {
            return Self::load_bundle(path);
        }
        Self::load_dir(path)
    }

    fn load_bundle(path: &Path) -> Result<Self, IdentityError> {
        let text = read(path)?;
        let b: Bundle = serde_json::from_str(&text).map_err(|e| IdentityError::BadBundle {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let pem = |what: &'static str,
                   text: &str|
         -> Result<Vec<CertificateDer<'static>>, IdentityError> {
            let certs: Vec<_> = rustls_pemfile::certs(&mut text.as_bytes())
                .filter_map(Result::ok)
                .collect();
            match certs.is_empty() {
                true => Err(IdentityError::Pem {
                    path: path.to_owned(),
                    what,
                }),
                false => Ok(certs),
            }
        };
        let key = rustls_pemfile::private_key(&mut b.key.as_bytes())
            .ok()
            .flatten()
            .ok_or(IdentityError::Pem {
                path: path.to_owned(),
                what: "private key",
            })?;
        Ok(Self {
            dir: path.to_owned(),
            ca: pem("CA certificate", &b.ca)?,
            chain: pem("client certificate", &b.cert)?,
            key,
            operator_addr: b.addr.trim().to_owned(),
        })
    }

    fn load_dir(dir: &Path) -> Result<Self, IdentityError> {
        let ca = certs(&dir.join(CA))?;
        let chain = certs(&dir.join(CERT))?;
        let key_path = dir.join(KEY);
        let key = rustls_pemfile::private_key(&mut read(&key_path)?.as_bytes())
            .ok()
            .flatten()
            .ok_or(IdentityError::Pem {
                path: key_path,
                what: "private key",
            })?;
        let operator_addr = read(&dir.join(ADDR))?.trim().to_owned();
        Ok(Self {
            dir: dir.to_owned(),
            ca,
            chain,
            key,
            operator_addr,
        })
    }
}

pub(crate) fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let pem = read(path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_bytes())
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(IdentityError::Pem {
            path: path.to_owned(),
            what: "certificate",
        });
    }
    Ok(certs)
}
