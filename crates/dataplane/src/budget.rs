//! Bytes held for mirror copies, bounded per session and for the whole process.
//!
//! A filtered mirror gets a copy of each matching request, body included, once the real
//! request has passed through; until the developer's CLI has taken it, the copy is memory
//! of this process. Anyone who can send requests to the target decides how much (40
//! concurrent 15 MB uploads held 641 MB before these bounds). So the copy being collected
//! is held against the process's [`Budget`], and each session's copy against that
//! session's: a copy that does not fit is dropped and counted, and the real request never
//! waits for any of it. A hold lasts exactly as long as the memory: it travels inside the
//! copy's [`Bytes`] ([`held_bytes`]) and is given back when the last clone is gone (the
//! frame written to the developer, or dropped).

use bytes::Bytes;

/// Default bound of one session's mirror copies: one copy of the largest body a copy may
/// have, and then some.
pub const SESSION_COPY_BYTES: usize = 32 * 1024 * 1024;
/// Default bound of all mirror copies of a process.
pub const TOTAL_COPY_BYTES: usize = 128 * 1024 * 1024;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// At most `limit` bytes held at once.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    held: AtomicUsize,
}

impl Budget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            held: AtomicUsize::new(0),
        })
    }

    /// Holds `n` bytes, or `None` if that would pass the limit.
    pub fn try_hold(self: &Arc<Self>, n: usize) -> Option<Hold> {
        let mut hold = Hold {
            budget: Arc::clone(self),
            n: 0,
        };
        hold.grow(n).then_some(hold)
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }
}

/// Bytes held against a [`Budget`]; given back when dropped.
#[derive(Debug)]
pub struct Hold {
    budget: Arc<Budget>,
    n: usize,
}

impl Hold {
    /// Holds `more` bytes too; `false` (and nothing more held) past the limit.
    pub fn grow(&mut self, more: usize) -> bool {
        let b = &self.budget;
        let grew = b
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
                h.checked_add(more).filter(|t| *t <= b.limit)
            })
            .is_ok();
        if grew {
            self.n += more;
        }
        grew
    }
}

impl Hold {
    /// Holds exactly `n` bytes from now on; `false` (and the hold unchanged) if growing
    /// to `n` would pass the limit.
    pub fn set(&mut self, n: usize) -> bool {
        if n >= self.n {
            return self.grow(n - self.n);
        }
        self.budget.held.fetch_sub(self.n - n, Ordering::AcqRel);
        self.n = n;
        true
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.n, Ordering::AcqRel);
    }
}

/// The bytes and what they hold, together until the last clone is dropped.
struct Owned {
    bytes: Bytes,
    _hold: Hold,
}

impl AsRef<[u8]> for Owned {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// `bytes` (not copied), holding `hold` for as long as any clone of the result lives.
pub fn held_bytes(bytes: Bytes, hold: Hold) -> Bytes {
    Bytes::from_owner(Owned { bytes, _hold: hold })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_up_to_the_limit_and_gives_back_with_the_last_clone() {
        let b = Budget::new(10);
        let mut h = b.try_hold(4).unwrap();
        assert!(h.grow(6));
        assert!(!h.grow(1), "past the limit");
        assert_eq!(b.held(), 10);
        assert!(b.try_hold(1).is_none());
        let bytes = held_bytes(Bytes::from_static(b"0123456789"), h);
        let clone = bytes.clone();
        drop(bytes);
        assert_eq!(b.held(), 10, "a clone still holds the memory");
        assert_eq!(&clone[..], b"0123456789");
        drop(clone);
        assert_eq!(b.held(), 0);
        let mut h = b.try_hold(3).unwrap();
        assert!(h.set(1) && b.held() == 1);
        assert!(!h.set(11) && b.held() == 1);
        assert!(h.set(10) && b.held() == 10);
    }
}
