//! The reentrancy guard: while the layer works on a thread, every hook it reaches again (std's own `connect`
//! for the UNIX socket, libc internals, a signal handler) goes straight to libc.

use std::cell::Cell;

thread_local! {
    // `const` and without destructor: reading it never allocates and works during thread teardown.
    static INSIDE: Cell<bool> = const { Cell::new(false) };
}

/// Held while the layer works on this thread.
pub struct Guard(());

impl Guard {
    /// `None` when the layer is already working on this thread, or the thread is being torn down (then it is
    /// safest to act as plain libc).
    pub fn enter() -> Option<Guard> {
        INSIDE
            .try_with(|inside| {
                if inside.get() {
                    None
                } else {
                    inside.set(true);
                    Some(Guard(()))
                }
            })
            .ok()
            .flatten()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = INSIDE.try_with(|inside| inside.set(false));
    }
}

/// Whether the layer is working on this thread (or cannot tell).
pub fn inside() -> bool {
    INSIDE.try_with(Cell::get).unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_enter_is_refused_until_dropped() {
        assert!(!inside());
        let g = Guard::enter().expect("first enter");
        assert!(inside());
        assert!(Guard::enter().is_none());
        drop(g);
        assert!(!inside());
        assert!(Guard::enter().is_some());
    }
}
