//! The operations the layer started and the operator has not answered yet, by operation
//! id: one owner (the session loop), so an answer finds its asker without locks.

use super::{Ask, FileGot, Outgoing};
use mirrord_protocol::{
    ClientMessage, ConnectFailure, DnsFailure, FileAnswer, FileFailure, OutgoingConnected,
    Resolution,
};
use mirrord_tunnel::demux::Demux;
use mirrord_tunnel::pump::conn_channel;
use std::collections::HashMap;
use tokio::sync::oneshot;

type ResolveReply = oneshot::Sender<Result<Resolution, DnsFailure>>;
type ConnectReply = oneshot::Sender<Result<Outgoing, ConnectFailure>>;
type FileReply = oneshot::Sender<Result<FileGot, FileFailure>>;

#[derive(Default)]
pub struct Pending {
    next: u64,
    resolves: HashMap<u64, ResolveReply>,
    connects: HashMap<u64, ConnectReply>,
    files: HashMap<u64, FileReply>,
}

impl Pending {
    /// Records `op` and gives the message that asks the operator for it.
    pub fn start(&mut self, op: Ask) -> ClientMessage {
        self.next += 1;
        let id = self.next;
        match op {
            Ask::Resolve {
                node,
                family,
                reply,
            } => {
                self.resolves.insert(id, reply);
                ClientMessage::Resolve {
                    op: id,
                    node,
                    family,
                }
            }
            Ask::Connect { remote, udp, reply } => {
                self.connects.insert(id, reply);
                if udp {
                    ClientMessage::ConnectUdp { op: id, remote }
                } else {
                    ClientMessage::Connect { op: id, remote }
                }
            }
            Ask::File { req, reply } => {
                self.files.insert(id, reply);
                ClientMessage::File { op: id, req }
            }
        }
    }

    /// The operator's answer to a file operation. An opened file's connection is
    /// registered in `carried` at once (as a connect's); if its asker is gone, the message
    /// closing it is returned.
    pub fn file(
        &mut self,
        op: u64,
        result: Result<FileAnswer, FileFailure>,
        carried: &mut Demux,
    ) -> Option<ClientMessage> {
        let reply = self.files.remove(&op);
        let got = match result {
            Ok(FileAnswer::File { stat, conn }) => {
                let Some(reply) = reply else {
                    return Some(ClientMessage::ConnClose { conn });
                };
                let (inbox, outlet) = conn_channel();
                carried.add_conn(conn, inbox);
                let got = FileGot::Bytes { stat, conn, outlet };
                if reply.send(Ok(got)).is_err() {
                    carried.conn_close(conn);
                    return Some(ClientMessage::ConnClose { conn });
                }
                return None;
            }
            Ok(answer) => Ok(FileGot::Answer(answer)),
            Err(f) => Err(f),
        };
        if let Some(reply) = reply {
            let _ = reply.send(got);
        }
        None
    }

    /// The operator's answer to a resolution (an unknown id is ignored: its asker gave up).
    pub fn resolved(&mut self, op: u64, result: Result<Resolution, DnsFailure>) {
        if let Some(reply) = self.resolves.remove(&op) {
            let _ = reply.send(result);
        }
    }

    /// The operator's answer to a connect. An opened connection is registered in
    /// `carried` before anything else of the session is handled (its bytes can only
    /// follow this answer); if its asker is gone, the message closing it is returned.
    pub fn connected(
        &mut self,
        op: u64,
        result: Result<OutgoingConnected, ConnectFailure>,
        carried: &mut Demux,
    ) -> Option<ClientMessage> {
        let reply = self.connects.remove(&op);
        let c = match result {
            Ok(c) => c,
            Err(e) => {
                if let Some(reply) = reply {
                    let _ = reply.send(Err(e));
                }
                return None;
            }
        };
        let close = Some(ClientMessage::ConnClose { conn: c.conn });
        let Some(reply) = reply else { return close };
        let (inbox, outlet) = conn_channel();
        carried.add_conn(c.conn, inbox);
        let sent = reply.send(Ok(Outgoing {
            conn: c.conn,
            local: c.local,
            outlet,
        }));
        match sent {
            Ok(()) => None,
            Err(_) => {
                carried.conn_close(c.conn);
                close
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.resolves.len() + self.connects.len() + self.files.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirrord_protocol::Family;

    #[test]
    fn answers_reach_their_askers_by_id() {
        let mut p = Pending::default();
        let (a, mut a_rx) = oneshot::channel();
        let (b, mut b_rx) = oneshot::channel();
        let ClientMessage::Resolve { op: first, .. } = p.start(Ask::Resolve {
            node: "db".into(),
            family: Family::Any,
            reply: a,
        }) else {
            panic!("not a Resolve")
        };
        let ClientMessage::Resolve { op: second, .. } = p.start(Ask::Resolve {
            node: "cache".into(),
            family: Family::V4,
            reply: b,
        }) else {
            panic!("not a Resolve")
        };
        assert_ne!(first, second);
        p.resolved(second, Err(DnsFailure::NoName));
        assert_eq!(b_rx.try_recv().unwrap(), Err(DnsFailure::NoName));
        assert!(a_rx.try_recv().is_err(), "the other asker got nothing yet");
        p.resolved(second, Err(DnsFailure::Fail)); // twice: ignored
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn a_connection_nobody_waits_for_is_closed() {
        let mut p = Pending::default();
        let mut carried = Demux::default();
        let (tx, rx) = oneshot::channel();
        let ClientMessage::Connect { op, .. } = p.start(Ask::Connect {
            remote: "10.0.0.1:5432".parse().unwrap(),
            udp: false,
            reply: tx,
        }) else {
            panic!("not a Connect")
        };
        drop(rx);
        let answer = OutgoingConnected {
            conn: 7,
            local: "10.0.0.2:40000".parse().unwrap(),
        };
        let close = p.connected(op, Ok(answer.clone()), &mut carried);
        assert!(matches!(close, Some(ClientMessage::ConnClose { conn: 7 })));
        // An answer for an operation never started closes its connection too.
        let close = p.connected(99, Ok(answer), &mut carried);
        assert!(matches!(close, Some(ClientMessage::ConnClose { conn: 7 })));
        assert_eq!(p.len(), 0);
    }

    #[test]
    fn a_refused_connect_reaches_its_asker() {
        let mut p = Pending::default();
        let mut carried = Demux::default();
        let (tx, mut rx) = oneshot::channel();
        let ClientMessage::ConnectUdp { op, .. } = p.start(Ask::Connect {
            remote: "10.0.0.1:1".parse().unwrap(),
            udp: true,
            reply: tx,
        }) else {
            panic!("not a ConnectUdp")
        };
        let failure = ConnectFailure {
            errno: 111,
            message: "Connection refused".into(),
        };
        assert!(p.connected(op, Err(failure), &mut carried).is_none());
        match rx.try_recv().unwrap() {
            Err(f) => assert_eq!(f.errno, 111),
            Ok(_) => panic!("refused connect reported as opened"),
        }
    }
}
