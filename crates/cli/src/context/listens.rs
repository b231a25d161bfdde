//! `exec` without a port list: the ports the process listens on, as the layer tells them,
//! added to the session when it listens and given back when it stops (mirrord's way). One
//! owner, the session loop; the operator answers additions in the order they were asked.

use crate::plan::ListenPlan;
use mirrord_protocol::{ClientMessage, ErrorCode, ErrorReply, PortMode, PortRequest};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use tokio::sync::oneshot;

pub struct Listens {
    plan: ListenPlan,
    mode: PortMode,
    /// Additions asked for and not answered yet, in order: (remote port, who waits).
    asked: VecDeque<(u16, oneshot::Sender<()>)>,
    /// Local port -> the target's port it takes the traffic of.
    held: HashMap<u16, u16>,
}

/// What a listen asks of the session loop.
pub struct Added {
    /// The message for the operator.
    pub message: ClientMessage,
    /// The target's port, and where its traffic goes on this machine.
    pub remote: u16,
    pub local: SocketAddr,
}

impl Listens {
    pub fn new(plan: ListenPlan, mode: PortMode) -> Self {
        Self {
            plan,
            mode,
            asked: VecDeque::new(),
            held: HashMap::new(),
        }
    }

    /// The process listens at `addr`: the addition to ask for, or `None` (answered now)
    /// when the port is left alone or already held.
    pub fn listen(&mut self, addr: SocketAddr, reply: oneshot::Sender<()>) -> Option<Added> {
        let Some(remote) = self.plan.remote(addr.port()) else {
            let _ = reply.send(());
            return None;
        };
        if self.held.contains_key(&addr.port()) || self.held.values().any(|r| *r == remote) {
            let _ = reply.send(());
            return None;
        }
        self.held.insert(addr.port(), remote);
        self.asked.push_back((remote, reply));
        Some(Added {
            message: ClientMessage::AddPorts {
                ports: vec![PortRequest {
                    port: remote,
                    mode: self.mode,
                    filter: self.plan.filter(remote),
                }],
            },
            remote,
            local: reachable(addr),
        })
    }

    /// Whether an addition waits for its answer.
    pub fn waiting(&self) -> bool {
        !self.asked.is_empty()
    }

    /// The oldest addition was made.
    pub fn added(&mut self) {
        if let Some((_, reply)) = self.asked.pop_front() {
            let _ = reply.send(());
        }
    }

    /// The oldest addition was refused: what to tell the user, and the port to forget.
    pub fn refused(&mut self, e: &ErrorReply) -> Option<(u16, String)> {
        let (remote, reply) = self.asked.pop_front()?;
        self.held.retain(|_, r| *r != remote);
        let _ = reply.send(());
        let said = match e.code {
            // A port the process listens on that the target does not have (an admin or
            // metrics port): it stays the process's own.
            ErrorCode::UnknownPort => {
                format!("port {remote}: not a port of the target; left alone")
            }
            _ => format!("port {remote} was not added: {}", e.message),
        };
        Some((remote, said))
    }

    /// The process stopped listening on local port `port`: the message giving its target
    /// port back, if it held one.
    pub fn unlisten(&mut self, port: u16) -> Option<(u16, ClientMessage)> {
        let remote = self.held.remove(&port)?;
        Some((
            remote,
            ClientMessage::RemovePorts {
                ports: vec![remote],
            },
        ))
    }
}

/// Where to reach a socket listening at `addr` from this machine: a wildcard address
/// through loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listens(plan: ListenPlan) -> Listens {
        Listens::new(plan, PortMode::Steal)
    }

    #[test]
    fn a_listen_asks_for_its_port_once_and_ignored_ports_are_left_alone() {
        let mut l = listens(ListenPlan {
            ignore: vec![9999],
            ..Default::default()
        });
        let (tx, mut rx) = oneshot::channel();
        let a = l.listen("0.0.0.0:9090".parse().unwrap(), tx).unwrap();
        assert_eq!(
            (a.remote, a.local),
            (9090, "127.0.0.1:9090".parse().unwrap())
        );
        assert!(matches!(&a.message, ClientMessage::AddPorts { ports } if ports[0].port == 9090));
        assert!(rx.try_recv().is_err(), "answered before the operator");
        assert!(l.waiting());
        l.added();
        assert!(rx.try_recv().is_ok());
        // Twice, or an ignored port: answered at once, nothing asked.
        let (tx, mut rx) = oneshot::channel();
        assert!(l.listen("[::]:9090".parse().unwrap(), tx).is_none());
        assert!(rx.try_recv().is_ok());
        let (tx, _) = oneshot::channel();
        assert!(l.listen("127.0.0.1:9999".parse().unwrap(), tx).is_none());
        assert!(!l.waiting());
        // Closed: the target's port goes back, once.
        assert!(matches!(
            l.unlisten(9090),
            Some((9090, ClientMessage::RemovePorts { ports })) if ports == [9090]
        ));
        assert!(l.unlisten(9090).is_none());
    }

    #[test]
    fn a_refused_port_is_forgotten_and_an_unknown_one_left_alone() {
        let mut l = listens(ListenPlan::default());
        let (tx, mut rx) = oneshot::channel();
        l.listen("127.0.0.1:7000".parse().unwrap(), tx).unwrap();
        let e = ErrorReply {
            code: ErrorCode::UnknownPort,
            message: "deployment/api has no port 7000".into(),
        };
        let (port, said) = l.refused(&e).unwrap();
        assert_eq!(port, 7000);
        assert!(said.contains("left alone"), "{said}");
        assert!(rx.try_recv().is_ok());
        assert!(l.unlisten(7000).is_none(), "nothing held");
        // It may be asked again later (another socket), and is.
        let (tx, _) = oneshot::channel();
        assert!(l.listen("127.0.0.1:7000".parse().unwrap(), tx).is_some());
    }
}
