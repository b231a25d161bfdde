//! Console login links: the one owner of pending login tokens. A client asks over its
//! mutual-TLS connection (`mirrordctl console login`); the operator mints a random token
//! bound to that caller (user and role), valid for [`LOGIN_TTL`] and usable once. The
//! console's HTTP server redeems it for a browser session. Browsers cannot easily present
//! our client certificates, so this is how the certificate's identity reaches them.

use crate::caller::Caller;
use rand::RngCore;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a login link works.
pub const LOGIN_TTL: Duration = Duration::from_secs(60);
/// Links waiting to be opened; past this the oldest is dropped (a client minting in a loop
/// cannot grow the operator's memory).
const MAX_PENDING: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("the console is not enabled on this operator; start it with --console-addr (OPERATOR_CONSOLE_ADDR) or the Helm value console.enabled=true")]
    Disabled,
}

#[derive(Default)]
pub struct ConsoleLogins {
    /// `https://addr` the console serves on; unset while the console is off.
    base_url: OnceLock<String>,
    pending: Mutex<HashMap<String, (Caller, Instant)>>,
}

impl ConsoleLogins {
    /// Turns minting on: links point at `base_url`.
    pub fn enable(&self, base_url: String) {
        let _ = self.base_url.set(base_url);
    }

    /// A login link for `caller`.
    pub fn mint(&self, caller: &Caller) -> Result<String, LoginError> {
        let base = self.base_url.get().ok_or(LoginError::Disabled)?;
        let mut bytes = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut bytes);
        let token = hex::encode(bytes);
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.retain(|_, (_, at)| at.elapsed() < LOGIN_TTL);
        if pending.len() >= MAX_PENDING {
            if let Some(oldest) = pending
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(k, _)| k.clone())
            {
                pending.remove(&oldest);
            }
        }
        pending.insert(token.clone(), (caller.clone(), Instant::now()));
        Ok(format!("{base}/login?token={token}"))
    }

    /// The caller a token was minted for, if it is known and fresh; it is spent either way.
    pub fn redeem(&self, token: &str) -> Option<Caller> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let (caller, at) = pending.remove(token)?;
        (at.elapsed() < LOGIN_TTL).then_some(caller)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirrord_identity::Role;
    use mirrord_telemetry::ClientInfo;

    fn caller() -> Caller {
        Caller {
            client: ClientInfo {
                client_id: "id".into(),
                client_user: "alice".into(),
                client_name: "A".into(),
                client_hostname: "h".into(),
                cli_version: "0".into(),
            },
            role: Role::Developer,
            authority: Default::default(),
        }
    }

    #[test]
    fn links_are_refused_while_off_and_work_once() {
        let logins = ConsoleLogins::default();
        assert!(matches!(logins.mint(&caller()), Err(LoginError::Disabled)));
        logins.enable("https://127.0.0.1:1".into());
        let url = logins.mint(&caller()).unwrap();
        let token = url.split("token=").nth(1).unwrap();
        assert_eq!(token.len(), 64);
        assert_eq!(logins.redeem(token).unwrap().client.client_user, "alice");
        assert!(logins.redeem(token).is_none(), "single use");
        assert!(logins.redeem("0000").is_none());
    }
}
