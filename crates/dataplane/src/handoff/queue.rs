//! A session's handoff queue: bounded (a session that is behind makes a steal wait and a
//! mirror copy drop), made at the first handoff, each handoff boxed.
//!
//! Why not a plain `mpsc::channel`: tokio's channel allocates its shared state (~0.5 KB)
//! and a first block of 32 slots (48 bytes each for a [`Handoff`]) when it is made: 2.1 KB
//! for every session, most of which are idle for hours (mirror sessions on quiet ports,
//! developers between requests). Here a session that was never handed anything holds
//! ~0.15 KB; the first handoff makes the channel, whose slots are 8-byte boxes.

use super::Handoff;
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::{mpsc, oneshot};

type Tx = mpsc::Sender<Box<Handoff>>;
type Rx = mpsc::Receiver<Box<Handoff>>;

/// A queue of `capacity` handoffs: the data plane's end (one clone per route) and the
/// session's.
pub fn channel(capacity: usize) -> (SubscriberTx, HandoffRx) {
    let (deliver, made) = oneshot::channel();
    let shared = Shared {
        capacity,
        tx: OnceLock::new(),
        deliver: Mutex::new(Some(deliver)),
    };
    (
        SubscriberTx(Arc::new(shared)),
        HandoffRx(State::Waiting(made)),
    )
}

/// Where the data plane sends a session's handoffs; cheap to clone.
#[derive(Clone)]
pub struct SubscriberTx(Arc<Shared>);

struct Shared {
    capacity: usize,
    /// The channel, once the first handoff made it. Dropped with the last clone of the
    /// sender, which is how the receiver learns that the queue closed.
    tx: OnceLock<Tx>,
    /// Takes the channel's receiving end to the [`HandoffRx`]. Dropped unused with the
    /// last sender if nothing was ever sent, which closes the queue just the same.
    deliver: Mutex<Option<oneshot::Sender<Rx>>>,
}

impl SubscriberTx {
    fn tx(&self) -> &Tx {
        self.0.tx.get_or_init(|| {
            let (tx, rx) = mpsc::channel(self.0.capacity);
            let deliver = self.0.deliver.lock().expect("handoff queue lock").take();
            if let Some(deliver) = deliver {
                // A receiver already gone drops `rx` here: every send then fails.
                let _ = deliver.send(rx);
            }
            tx
        })
    }

    /// Queues `h`, waiting for room. Gives it back if the session is gone.
    pub async fn send(&self, h: Handoff) -> Result<(), Handoff> {
        self.tx().send(Box::new(h)).await.map_err(|e| *e.0)
    }

    /// Queues `h` if there is room now. Gives it back if there is none or the session is
    /// gone.
    pub fn try_send(&self, h: Handoff) -> Result<(), Handoff> {
        self.tx().try_send(Box::new(h)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(h) | mpsc::error::TrySendError::Closed(h) => *h,
        })
    }
}

/// The session's end of its handoff queue.
pub struct HandoffRx(State);

enum State {
    /// Nothing was sent yet: the channel comes through here when it is made.
    Waiting(oneshot::Receiver<Rx>),
    Open(Rx),
    Closed,
}

impl HandoffRx {
    /// The next handoff; `None` once every sender is gone and the queue is empty.
    /// Cancel safe, like `mpsc::Receiver::recv`.
    pub async fn recv(&mut self) -> Option<Handoff> {
        loop {
            match &mut self.0 {
                State::Waiting(made) => match made.await {
                    Ok(rx) => self.0 = State::Open(rx),
                    Err(_) => self.0 = State::Closed,
                },
                State::Open(rx) => return rx.recv().await.map(|h| *h),
                State::Closed => return None,
            }
        }
    }

    /// Closes the queue (every later send gives its handoff back) and returns what was
    /// queued, in order, including a send already under way: the session ends, and what it
    /// never took goes elsewhere.
    pub async fn close(&mut self) -> Vec<Handoff> {
        if let State::Waiting(made) = &mut self.0 {
            // The channel may have been made and handed over already, with handoffs in it.
            self.0 = match made.try_recv() {
                Ok(rx) => State::Open(rx),
                Err(_) => State::Closed,
            };
        }
        let mut left = Vec::new();
        if let State::Open(rx) = &mut self.0 {
            rx.close();
            // After `close`, `recv` ends (None) once nothing is queued and no send that
            // already had room is still to land.
            while let Some(h) = rx.recv().await {
                left.push(*h);
            }
        }
        left
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn notice(n: usize) -> Handoff {
        Handoff::Notice {
            message: n.to_string(),
        }
    }

    fn number(h: Option<Handoff>) -> Option<usize> {
        match h {
            Some(Handoff::Notice { message }) => Some(message.parse().unwrap()),
            Some(_) => panic!("not a notice"),
            None => None,
        }
    }

    #[tokio::test]
    async fn a_waiting_receiver_gets_the_first_handoff_and_the_rest_in_order() {
        let (tx, mut rx) = channel(4);
        let recv = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(n) = number(rx.recv().await) {
                got.push(n);
            }
            got
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let other = tx.clone();
        for n in 0..10 {
            let sender = if n % 2 == 0 { &tx } else { &other };
            assert!(sender.send(notice(n)).await.is_ok());
        }
        drop((tx, other));
        assert_eq!(recv.await.unwrap(), (0..10).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn the_queue_closes_when_the_senders_go_whether_or_not_it_was_used() {
        let (tx, mut rx) = channel(4);
        drop(tx.clone());
        drop(tx);
        let closed = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert!(matches!(closed, Ok(None)), "never used: recv did not end");

        let (tx, mut rx) = channel(4);
        tx.try_send(notice(1)).ok().unwrap();
        drop(tx);
        assert_eq!(number(rx.recv().await), Some(1));
        assert_eq!(number(rx.recv().await), None);
    }

    #[tokio::test]
    async fn a_full_queue_or_a_gone_session_gives_the_handoff_back() {
        let (tx, rx) = channel(2);
        tx.try_send(notice(1)).ok().unwrap();
        tx.try_send(notice(2)).ok().unwrap();
        assert_eq!(number(tx.try_send(notice(3)).err()), Some(3));
        drop(rx);
        assert_eq!(number(tx.send(notice(4)).await.err()), Some(4));

        // Gone before anything was sent.
        let (tx, rx) = channel(2);
        drop(rx);
        assert_eq!(number(tx.send(notice(5)).await.err()), Some(5));
        assert_eq!(number(tx.try_send(notice(6)).err()), Some(6));
    }

    #[tokio::test]
    async fn close_returns_what_was_queued_and_refuses_what_comes_after() {
        let (tx, mut rx) = channel(4);
        assert!(rx.close().await.is_empty(), "never used");
        assert_eq!(number(tx.try_send(notice(1)).err()), Some(1));

        // Made and handed over, never received from.
        let (tx, mut rx) = channel(4);
        tx.try_send(notice(1)).ok().unwrap();
        tx.try_send(notice(2)).ok().unwrap();
        let left: Vec<_> = rx
            .close()
            .await
            .into_iter()
            .map(|h| number(Some(h)))
            .collect();
        assert_eq!(left, [Some(1), Some(2)]);
        assert_eq!(number(tx.send(notice(3)).await.err()), Some(3));
        assert_eq!(number(rx.recv().await), None);
    }

    /// A full queue makes `send` wait (a steal is held back, not dropped) until the
    /// session takes one.
    #[tokio::test]
    async fn send_waits_for_room() {
        let (tx, mut rx) = channel(1);
        tx.send(notice(1)).await.ok().unwrap();
        let mut second = Box::pin(tx.send(notice(2)));
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut second)
                .await
                .is_err(),
            "sent into a full queue"
        );
        assert_eq!(number(rx.recv().await), Some(1));
        assert!(second.await.is_ok());
        assert_eq!(number(rx.recv().await), Some(2));
    }
}
