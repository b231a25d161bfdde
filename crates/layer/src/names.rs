//! Which name an address came from, for the outgoing filter's name rules and the `host` hint of a connect:
//! filled by this process's own lookups through the target, as mirrord does.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};

pub type Names = BTreeMap<IpAddr, String>;

/// Bounded so a process resolving names forever does not grow without limit; forgetting only loses hints.
const MAX: usize = 4096;

static NAMES: Mutex<Names> = Mutex::new(BTreeMap::new());

pub fn lock() -> MutexGuard<'static, Names> {
    NAMES.lock().unwrap_or_else(PoisonError::into_inner)
}

pub fn remember(addrs: &[IpAddr], name: &str) {
    let mut names = lock();
    if names.len() + addrs.len() > MAX {
        names.clear();
    }
    for a in addrs {
        names.insert(a.to_canonical(), name.to_string());
    }
}

pub fn lookup(ip: IpAddr) -> Option<String> {
    lock().get(&ip.to_canonical()).cloned()
}
