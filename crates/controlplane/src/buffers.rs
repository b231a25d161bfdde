//! What each client may make the operator buffer in unfinished frames, across all of its
//! connections.
//!
//! A frame is read whole before it is decoded, so a client that sends the start of a large
//! frame and no more holds that much of the operator's memory until its connection ends
//! (40 partial 15 MiB frames took 600 MB). Each connection is already capped by its frame
//! limit; this caps the sum per client (`client_id`), from the hello on: a client past it
//! has the connection that crossed it closed with a specific error.

use mirrord_dataplane::budget::Budget;
use mirrord_protocol::codec::Charge;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

/// Clients tracked before entries of clients with no connection left are swept.
const SWEEP_AFTER: usize = 256;

pub struct ClientBuffers {
    limit: usize,
    by_client: Mutex<HashMap<String, Weak<Budget>>>,
}

impl ClientBuffers {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            by_client: Mutex::default(),
        }
    }

    /// A charge for one connection of `client_id`, against the budget all of that
    /// client's connections share.
    pub fn charge(&self, client_id: &str) -> Charge {
        let budget = {
            let mut map = self.by_client.lock().expect("client buffers lock");
            if map.len() > SWEEP_AFTER {
                map.retain(|_, b| b.strong_count() > 0);
            }
            match map.get(client_id).and_then(Weak::upgrade) {
                Some(b) => b,
                None => {
                    let b = Budget::new(self.limit);
                    map.insert(client_id.to_owned(), Arc::downgrade(&b));
                    b
                }
            }
        };
        let mut hold = budget.try_hold(0);
        Box::new(move |n| hold.as_mut().is_some_and(|h| h.set(n)))
    }

    pub fn limit(&self) -> usize {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clients_connections_share_one_budget() {
        let buffers = ClientBuffers::new(100);
        let mut a = buffers.charge("alice");
        let mut b = buffers.charge("alice");
        let mut c = buffers.charge("bob");
        assert!(a(60));
        assert!(!b(50), "alice's two connections together pass her limit");
        assert!(b(40));
        assert!(c(100), "bob has his own");
        assert!(a(0));
        assert!(b(90));
        drop(b);
        assert!(a(100), "a closed connection's bytes are given back");
    }
}
