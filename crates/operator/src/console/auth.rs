//! Browser sessions: the one owner of the console's cookies and CSRF tokens. A login link
//! (minted by the control plane for an authenticated client) is exchanged here for a
//! random session id, kept in a `__Host-` cookie; each session carries the caller it was
//! minted for (user and role) and its own CSRF token.

use mirrord_controlplane::Caller;
use rand::RngCore;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The cookie's name: `__Host-` makes browsers insist on Secure, Path=/ and no Domain.
pub const COOKIE: &str = "__Host-mirrord-console";
/// How long a browser stays logged in.
pub const SESSION_TTL: Duration = Duration::from_secs(30 * 60);
/// Browser sessions kept at once; the oldest is dropped past this.
const MAX_SESSIONS: usize = 1024;

#[derive(Clone)]
pub struct BrowserSession {
    pub caller: Caller,
    pub csrf: String,
    /// Logged in with a link (a cookie to clear on logout); false through the API server.
    pub logged_in: bool,
    /// The cookie's session id (`None` through the API server).
    pub id: Option<String>,
    created: Instant,
}

impl BrowserSession {
    /// Whether a link-made session has outlived its cookie ([`SESSION_TTL`]).
    pub fn expired(&self) -> bool {
        self.logged_in && self.created.elapsed() >= SESSION_TTL
    }
}

impl BrowserSession {
    /// A request the Kubernetes API server proxied for an authenticated user (`kubectl
    /// proxy`): no cookie, no login. Its CSRF token is derived from the caller with this
    /// process's `secret`, so the page reads it from `/api/status` as with a cookie.
    pub fn proxied(caller: Caller, secret: &str) -> Self {
        use sha2::{Digest, Sha256};
        let digest =
            Sha256::digest(format!("{secret}\0{}\0{}", caller.user(), caller.role).as_bytes());
        Self {
            caller,
            csrf: hex::encode(digest),
            logged_in: false,
            id: None,
            created: Instant::now(),
        }
    }
}

#[derive(Default)]
pub struct BrowserSessions {
    by_id: Mutex<HashMap<String, BrowserSession>>,
}

pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

impl BrowserSessions {
    /// A new session for `caller`; returns its id (the cookie's value).
    pub fn create(&self, caller: Caller) -> String {
        let id = random_token();
        let mut map = self.by_id.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, s| s.created.elapsed() < SESSION_TTL);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.created)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(
            id.clone(),
            BrowserSession {
                caller,
                csrf: random_token(),
                logged_in: true,
                id: Some(id.clone()),
                created: Instant::now(),
            },
        );
        id
    }

    /// The live session named by the request's cookie header.
    pub fn lookup(&self, cookie_header: Option<&str>) -> Option<BrowserSession> {
        let id = cookie_value(cookie_header?, COOKIE)?;
        let map = self.by_id.lock().unwrap_or_else(|p| p.into_inner());
        map.get(id)
            .filter(|s| s.created.elapsed() < SESSION_TTL)
            .cloned()
    }

    /// Whether the session `id` is still logged in (not logged out, not expired, not
    /// pushed out by newer ones).
    pub fn is_live(&self, id: &str) -> bool {
        let map = self.by_id.lock().unwrap_or_else(|p| p.into_inner());
        map.get(id).is_some_and(|s| !s.expired())
    }

    pub fn remove(&self, cookie_header: Option<&str>) {
        if let Some(id) = cookie_header.and_then(|h| cookie_value(h, COOKIE)) {
            self.by_id
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(id);
        }
    }
}

/// The `Set-Cookie` value that logs a browser in with session `id`.
pub fn set_cookie(id: &str) -> String {
    format!(
        "{COOKIE}={id}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_TTL.as_secs()
    )
}

/// The `Set-Cookie` value that logs a browser out.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0")
}

fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

/// Compares secrets in time independent of where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cookie_among_others() {
        let h = format!("a=1; {COOKIE}=abc; b=2");
        assert_eq!(cookie_value(&h, COOKIE), Some("abc"));
        assert_eq!(cookie_value("a=1", COOKIE), None);
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "ab"));
    }
}
