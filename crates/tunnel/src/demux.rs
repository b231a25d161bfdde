//! Where the peer's bytes for each carried connection and each streaming body go, by id:
//! the bookkeeping both ends of a session do for `ConnData`/`ConnClose` and
//! `HttpBody`/`HttpTrailers` (the operator's session actor and `mirrordctl`'s session loop).
//! Nothing here waits: a connection whose reader fell too far behind is dropped (which
//! ends it) and the caller tells the peer.

use crate::body::BodyInbox;
use crate::pump::ConnInbox;
use bytes::Bytes;
use std::collections::HashMap;

#[derive(Default)]
pub struct Demux {
    conns: HashMap<u64, ConnInbox>,
    bodies: HashMap<u64, BodyInbox>,
}

/// The connection fell too far behind and was dropped: tell the peer it is closed.
#[derive(Debug, PartialEq, Eq)]
pub struct Behind;

impl Demux {
    pub fn add_conn(&mut self, id: u64, inbox: ConnInbox) {
        self.conns.insert(id, inbox);
    }

    pub fn add_body(&mut self, id: u64, inbox: BodyInbox) {
        self.bodies.insert(id, inbox);
    }

    /// Bytes for connection `id` (an unknown id is a connection already gone).
    pub fn conn_data(&mut self, id: u64, data: Bytes) -> Result<(), Behind> {
        let behind = self.conns.get(&id).is_some_and(|c| !c.push(data));
        match behind && self.conns.remove(&id).is_some() {
            true => Err(Behind),
            false => Ok(()),
        }
    }

    /// Bytes queued for connection `id` that its reader has not taken yet (0 if unknown).
    pub fn conn_backlog(&self, id: u64) -> usize {
        self.conns.get(&id).map_or(0, ConnInbox::queued)
    }

    /// The peer is done sending on connection `id`.
    pub fn conn_close(&mut self, id: u64) {
        self.conns.remove(&id);
    }

    /// More of body `id`; `end` is its last part. A body whose reader is gone or behind
    /// is dropped, which ends it.
    pub fn body_data(&mut self, id: u64, data: Bytes, end: bool) {
        if self.bodies.get(&id).is_some_and(|b| !b.push(data)) || end {
            self.bodies.remove(&id);
        }
    }

    /// Body `id` ends with these trailers.
    pub fn body_trailers(&mut self, id: u64, trailers: &[(String, Bytes)]) {
        if let Some(body) = self.bodies.remove(&id) {
            body.finish(trailers);
        }
    }

    /// Whether any body is still streaming in.
    pub fn has_bodies(&self) -> bool {
        !self.bodies.is_empty()
    }

    /// Ends every connection and body (the session is over).
    pub fn clear(&mut self) {
        self.conns.clear();
        self.bodies.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pump::{conn_channel, CONN_BACKLOG_LIMIT};

    #[tokio::test]
    async fn a_connection_behind_is_dropped_once_and_closes_for_its_reader() {
        let mut d = Demux::default();
        let (inbox, mut outlet) = conn_channel();
        d.add_conn(7, inbox);
        assert_eq!(d.conn_data(7, Bytes::from_static(b"hi")), Ok(()));
        assert_eq!(outlet.recv().await.as_deref(), Some(&b"hi"[..]));
        let big = Bytes::from(vec![0; CONN_BACKLOG_LIMIT + 1]);
        assert_eq!(d.conn_data(7, big), Err(Behind));
        // Gone now: more bytes for it are not an error, and its reader sees the end.
        assert_eq!(d.conn_data(7, Bytes::from_static(b"x")), Ok(()));
        assert_eq!(outlet.recv().await, None);
    }
}
