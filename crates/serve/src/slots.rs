//! Connection slots: a listener's cap on connections served at once, which makes room for
//! a new client by evicting the connection idle the longest instead of turning the new
//! one away.
//!
//! A plain semaphore lets anyone who can open TCP connections hold every place with
//! connections that never send a byte, locking everyone else out for as long as they
//! care to (1,700 idle connections made an intercepted port time out for every client;
//! 300 did it to the console). Here, at the cap, a connection that has not said anything
//! since it was accepted goes first (oldest first: real clients speak at once, their
//! request is in the socket when it is accepted), then the one idle the longest for at
//! least `min_idle`; it is told to go ([`Slot::evicted`]) and its place is given to the
//! newcomer. A connection in the middle of real work marks itself: [`Slot::touch`] on
//! traffic, [`Slot::pin`] while it must not be cut (an open event stream, a session). Only
//! when every place is busy does a newcomer wait (or get turned away), which is what the
//! cap is for.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// What one connection's slot records; shared by the slot and the registry.
struct State {
    /// Milliseconds after the registry's epoch of the last sign of life.
    last_active: AtomicU64,
    /// The connection said something since it was accepted.
    spoke: AtomicBool,
    pins: AtomicU32,
    evict: CancellationToken,
}

pub struct Slots {
    cap: usize,
    min_idle: Duration,
    epoch: Instant,
    live: Mutex<Live>,
    freed: Notify,
    evicted: AtomicU64,
}

#[derive(Default)]
struct Live {
    next_id: u64,
    slots: HashMap<u64, Arc<State>>,
}

/// The listener is at its cap and every connection is busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

impl Slots {
    /// At most `cap` connections; one idle for `min_idle` or more may be evicted for a
    /// newcomer.
    pub fn new(cap: usize, min_idle: Duration) -> Arc<Self> {
        Arc::new(Self {
            cap: cap.max(1),
            min_idle,
            epoch: Instant::now(),
            live: Mutex::default(),
            freed: Notify::new(),
            evicted: AtomicU64::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// A place for a new connection: free, or made by evicting the connection idle the
    /// longest.
    pub fn acquire(self: &Arc<Self>) -> Result<Slot, Full> {
        let now = self.now_ms();
        let mut live = self.live.lock().expect("slots lock");
        if live.slots.len() >= self.cap {
            let victim = self.idlest(&live, now).ok_or(Full)?;
            if let Some(state) = live.slots.remove(&victim) {
                state.evict.cancel();
                self.evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
        let id = live.next_id;
        live.next_id += 1;
        let state = Arc::new(State {
            last_active: AtomicU64::new(now),
            spoke: AtomicBool::new(false),
            pins: AtomicU32::new(0),
            evict: CancellationToken::new(),
        });
        live.slots.insert(id, Arc::clone(&state));
        Ok(Slot {
            id,
            state,
            slots: Arc::clone(self),
        })
    }

    /// Like [`Slots::acquire`], but waits while every connection is busy.
    pub async fn acquire_wait(self: &Arc<Self>) -> Slot {
        loop {
            let freed = self.freed.notified();
            if let Ok(slot) = self.acquire() {
                return slot;
            }
            // A busy connection may become idle enough without any slot being freed.
            let _ =
                tokio::time::timeout(self.min_idle.max(Duration::from_millis(100)), freed).await;
        }
    }

    /// The connection to evict: the oldest of those that never spoke, else the one idle
    /// the longest for at least `min_idle`; never a pinned one.
    fn idlest(&self, live: &Live, now: u64) -> Option<u64> {
        let min_idle = self.min_idle.as_millis() as u64;
        live.slots
            .iter()
            .filter(|(_, s)| s.pins.load(Ordering::Acquire) == 0)
            .map(|(id, s)| {
                let silent = !s.spoke.load(Ordering::Acquire);
                (*id, silent, s.last_active.load(Ordering::Relaxed))
            })
            .filter(|(_, silent, last)| *silent || now.saturating_sub(*last) >= min_idle)
            // Silent ones first (`false` sorts before `true`), then the idlest.
            .min_by_key(|(_, silent, last)| (!silent, *last))
            .map(|(id, _, _)| id)
    }

    /// Connections holding a place now.
    pub fn len(&self) -> usize {
        self.live.lock().expect("slots lock").slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Connections evicted to make room so far.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    pub fn cap(&self) -> usize {
        self.cap
    }
}

/// One connection's place. Dropping it frees the place.
pub struct Slot {
    id: u64,
    state: Arc<State>,
    slots: Arc<Slots>,
}

impl Slot {
    /// A sign of life: the connection moved bytes.
    pub fn touch(&self) {
        self.activity().touch();
    }

    /// Starts the connection's clock again without counting as speech (for a place taken
    /// before the connection was accepted).
    pub fn restart(&self) {
        self.state
            .last_active
            .store(self.slots.now_ms(), Ordering::Relaxed);
    }

    /// A handle to [`Slot::touch`] from deeper in the connection's code.
    pub fn activity(&self) -> Activity {
        Activity {
            state: Arc::clone(&self.state),
            slots: Arc::clone(&self.slots),
        }
    }

    /// Not evictable while the guard lives (real work that may be silent for long).
    pub fn pin(&self) -> PinGuard {
        self.activity().pin()
    }

    /// Resolves when the connection was evicted to make room: it should close now.
    pub fn evicted(&self) -> WaitForCancellationFutureOwned {
        self.state.evict.clone().cancelled_owned()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots
            .live
            .lock()
            .expect("slots lock")
            .slots
            .remove(&self.id);
        self.slots.freed.notify_one();
    }
}

/// Marks a connection alive (see [`Slot::touch`]).
#[derive(Clone)]
pub struct Activity {
    state: Arc<State>,
    slots: Arc<Slots>,
}

impl Activity {
    /// A sign of life: the connection moved bytes (it is no longer silent).
    pub fn touch(&self) {
        self.state
            .last_active
            .store(self.slots.now_ms(), Ordering::Relaxed);
        self.state.spoke.store(true, Ordering::Release);
    }

    /// See [`Slot::pin`].
    pub fn pin(&self) -> PinGuard {
        self.state.pins.fetch_add(1, Ordering::AcqRel);
        PinGuard {
            state: Arc::clone(&self.state),
            slots: Arc::clone(&self.slots),
        }
    }
}

/// Keeps a connection from being evicted (see [`Slot::pin`]).
pub struct PinGuard {
    state: Arc<State>,
    slots: Arc<Slots>,
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        self.state.pins.fetch_sub(1, Ordering::AcqRel);
        // Idle again: counts from now.
        self.state
            .last_active
            .store(self.slots.now_ms(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_newcomer_evicts_the_connection_idle_the_longest() {
        let slots = Slots::new(3, Duration::from_secs(1));
        let a = slots.acquire().unwrap();
        tokio::time::advance(Duration::from_millis(10)).await;
        let b = slots.acquire().unwrap();
        let c = slots.acquire().unwrap();
        for s in [&a, &b, &c] {
            s.touch();
        }
        // Everyone spoke just now: no room.
        assert_eq!(slots.acquire().err(), Some(Full));
        tokio::time::advance(Duration::from_secs(2)).await;
        a.touch();
        // b and c are idle; b is older (acquired before c? same ms: either is fine), a is not.
        let d = slots.acquire().unwrap();
        let evicted: Vec<bool> = [&a, &b, &c]
            .iter()
            .map(|s| s.state.evict.is_cancelled())
            .collect();
        assert_eq!(evicted.iter().filter(|e| **e).count(), 1);
        assert!(!evicted[0], "the connection that was just active stays");
        assert_eq!(slots.len(), 3);
        assert_eq!(slots.evicted(), 1);
        drop(d);
        assert_eq!(slots.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn pinned_connections_are_never_evicted() {
        let slots = Slots::new(1, Duration::from_millis(100));
        let a = slots.acquire().unwrap();
        a.touch();
        let pin = a.pin();
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(slots.acquire().err(), Some(Full));
        drop(pin);
        // Idle counts from the unpin.
        assert_eq!(slots.acquire().err(), Some(Full));
        tokio::time::advance(Duration::from_millis(200)).await;
        let _b = slots.acquire().unwrap();
        assert!(a.state.evict.is_cancelled());
        // The evicted slot's drop does not free the newcomer's place.
        drop(a);
        assert_eq!(slots.len(), 1);
    }

    /// A connection that never said anything goes first, at once: idle TCP connections
    /// cannot hold places that clients who speak need.
    #[tokio::test(start_paused = true)]
    async fn silent_connections_go_first() {
        let slots = Slots::new(2, Duration::from_secs(60));
        let talker = slots.acquire().unwrap();
        talker.touch();
        tokio::time::advance(Duration::from_secs(120)).await;
        let silent = slots.acquire().unwrap();
        // The talker is idler, but the silent one goes.
        let _new = slots.acquire().unwrap();
        assert!(silent.state.evict.is_cancelled());
        assert!(!talker.state.evict.is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_for_a_place_ends_when_one_is_freed() {
        let slots = Slots::new(1, Duration::from_secs(3600));
        let a = slots.acquire().unwrap();
        a.touch();
        let waiter = tokio::spawn({
            let slots = Arc::clone(&slots);
            async move { slots.acquire_wait().await.id }
        });
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!waiter.is_finished());
        drop(a);
        assert_eq!(waiter.await.unwrap(), 1);
    }
}
