//! A bound on how many lines one kind of warning writes: for warnings anyone can cause
//! without a credential (a failed TLS handshake), which would otherwise let a stranger
//! write one log line per connection (19,494 lines for 19.5k connections, in a test).
//! The first `burst` of each window are written; the rest are counted and reported with
//! the next line written.

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Throttle {
    window: Duration,
    burst: u32,
    state: Mutex<State>,
}

struct State {
    started: Option<Instant>,
    written: u32,
    suppressed: u64,
}

impl Throttle {
    pub const fn new(window: Duration, burst: u32) -> Self {
        Self {
            window,
            burst,
            state: Mutex::new(State {
                started: None,
                written: 0,
                suppressed: 0,
            }),
        }
    }

    /// `Some(n)`: write this line, and say that `n` like it were left out before it.
    /// `None`: leave it out (it is counted).
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().expect("throttle state");
        if s.started
            .is_none_or(|t| now.duration_since(t) >= self.window)
        {
            s.started = Some(now);
            s.written = 0;
        }
        if s.written >= self.burst {
            s.suppressed += 1;
            return None;
        }
        s.written += 1;
        Some(std::mem::take(&mut s.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_burst_per_window_and_counts_the_rest() {
        let t = Throttle::new(Duration::from_secs(10), 3);
        let t0 = Instant::now();
        let admitted: Vec<_> = (0..100).map(|_| t.admit_at(t0)).collect();
        assert_eq!(admitted.iter().filter(|a| a.is_some()).count(), 3);
        assert_eq!(admitted[0], Some(0));
        // The next window's first line reports the 97 left out.
        assert_eq!(t.admit_at(t0 + Duration::from_secs(11)), Some(97));
        assert_eq!(t.admit_at(t0 + Duration::from_secs(12)), Some(0));
    }
}
