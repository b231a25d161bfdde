//! Blocking work shared fairly between clients: filters are compiled on blocking threads a
//! few at a time, and with one queue for everyone a client that opens sessions in a loop
//! put every other client's compile behind all of its own (opens went from 13 ms to
//! 282 ms p50 with three such clients). Here each client has one place in the shared
//! queue at a time: a newcomer waits for at most one compile per other client.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Clients tracked before entries of clients with nothing queued are swept.
const SWEEP_AFTER: usize = 256;

pub struct FairSlots {
    shared: Arc<Semaphore>,
    per_client: Mutex<HashMap<String, Weak<Semaphore>>>,
}

/// A place in the shared queue; given back when dropped.
pub struct FairPermit {
    _shared: OwnedSemaphorePermit,
    _own: OwnedSemaphorePermit,
}

/// The queue was closed (the operator is stopping).
#[derive(Debug)]
pub struct Closed;

impl FairSlots {
    /// `slots` pieces of work at once, in all.
    pub fn new(slots: usize) -> Self {
        Self {
            shared: Arc::new(Semaphore::new(slots)),
            per_client: Mutex::default(),
        }
    }

    /// Waits for the client's turn, then for a shared slot.
    pub async fn acquire(&self, client_id: &str) -> Result<FairPermit, Closed> {
        let own = self
            .own(client_id)
            .acquire_owned()
            .await
            .map_err(|_| Closed)?;
        let shared = Arc::clone(&self.shared)
            .acquire_owned()
            .await
            .map_err(|_| Closed)?;
        Ok(FairPermit {
            _shared: shared,
            _own: own,
        })
    }

    fn own(&self, client_id: &str) -> Arc<Semaphore> {
        let mut map = self.per_client.lock().expect("fair slots lock");
        if map.len() > SWEEP_AFTER {
            map.retain(|_, s| s.strong_count() > 0);
        }
        if let Some(s) = map.get(client_id).and_then(Weak::upgrade) {
            return s;
        }
        let s = Arc::new(Semaphore::new(1));
        map.insert(client_id.to_owned(), Arc::downgrade(&s));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Three clients with 20 compiles queued each; a fourth client's one compile is
    /// served after at most one of each of theirs, not after all 60.
    #[tokio::test(start_paused = true)]
    async fn a_newcomer_waits_for_at_most_one_piece_of_work_per_other_client() {
        let slots = Arc::new(FairSlots::new(1));
        let done = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for client in ["a", "b", "c"] {
            for _ in 0..20 {
                let (slots, done) = (Arc::clone(&slots), Arc::clone(&done));
                tasks.push(tokio::spawn(async move {
                    let _p = slots.acquire(client).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    done.lock().unwrap().push(client);
                }));
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let (s, d) = (Arc::clone(&slots), Arc::clone(&done));
        tasks.push(tokio::spawn(async move {
            let _p = s.acquire("newcomer").await.unwrap();
            d.lock().unwrap().push("newcomer");
        }));
        for t in tasks {
            t.await.unwrap();
        }
        let done = done.lock().unwrap();
        let at = done.iter().position(|c| *c == "newcomer").unwrap();
        assert!(at <= 4, "the newcomer came {at}th: {done:?}");
    }
}
