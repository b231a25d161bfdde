//! `certs issue`: a user's credential directory.

use anyhow::Context;
use mirrord_identity::{CertificateAuthority, Credentials};
use std::path::Path;

/// File in the state directory where `serve` records the API address it listens on.
pub const API_ADDRESS_FILE: &str = "api-address";

/// `certs init`: a new CA (never over an existing one).
pub fn init(state_dir: &Path) -> anyhow::Result<()> {
    CertificateAuthority::init(state_dir)?;
    println!("created an operator CA in {}", state_dir.display());
    Ok(())
}

pub fn issue(
    state_dir: &Path,
    user: &str,
    out: &Path,
    addr: Option<String>,
    init_ca: bool,
) -> anyhow::Result<()> {
    let ca = match init_ca {
        true => CertificateAuthority::load_or_init(state_dir)?,
        false => CertificateAuthority::load(state_dir)?,
    };
    let addr = addr
        .or_else(|| {
            std::fs::read_to_string(state_dir.join(API_ADDRESS_FILE))
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "127.0.0.1:8443".to_owned());
    Credentials::issue(&ca, user, &addr, out)
        .with_context(|| format!("writing credentials to {}", out.display()))?;
    println!(
        "credentials for user {user} written to {} (operator at {addr})",
        out.display()
    );
    Ok(())
}
