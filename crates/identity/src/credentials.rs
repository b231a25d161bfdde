//! A user's credential directory: what `certs issue` writes and `mirrordctl` reads.

use crate::ca::{read, write, CertificateAuthority, ClientSpec};
use crate::registry::{self, IssuedRecord};
use crate::IdentityError;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};

const CA: &str = "ca.crt";
const CERT: &str = "client.crt";
const KEY: &str = "client.key";
const ADDR: &str = "operator-address";

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

    pub fn load(dir: &Path) -> Result<Self, IdentityError> {
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
