//! Outgoing TCP and UDP: whether a `connect` goes through the target, asking `mirrordctl` for it, connecting the app's
//! socket to the relay it opens, and the addresses `getpeername`/`getsockname` then report.
//!
//! A connected UDP socket is handled alike: connected to a loopback UDP relay that carries its datagrams, with
//! `recvfrom`/`recvmsg` reporting the destination as the datagrams' source.
//!
//! The app's fd stays a genuine TCP socket connected to a loopback relay, so non-blocking connects, `poll`,
//! `SO_ERROR` and socket options all behave as the kernel makes them; only the two names are substituted.

use std::net::SocketAddr;
use std::sync::Arc;

use libc::c_int;
use mirrord_layer_proto::{Reply, Request};

use crate::client::{self, Error};
use crate::fdtable::{Entry, Managed, TABLE};
use crate::{names, sockaddr, state, sys};

/// What a hook returns instead of calling libc: the return value, and errno when it failed.
pub type Done = (c_int, Option<c_int>);

/// `connect(fd, addr)`; `None` when libc should do it.
pub fn connect(fd: c_int, addr: SocketAddr) -> Option<Done> {
    let layer = state::active()?;
    let outgoing = &layer.config.outgoing;
    if !(outgoing.tcp || outgoing.udp) {
        return None;
    }
    let (domain, ty) = sys::socket_kind(fd)?;
    let udp = match ty {
        libc::SOCK_STREAM => false,
        libc::SOCK_DGRAM => true,
        _ => return None,
    };
    if !(domain == libc::AF_INET || domain == libc::AF_INET6) {
        return None;
    }
    if let Some(m) = TABLE.managed(fd) {
        if !udp {
            // Connecting again (how some apps poll a non-blocking connect): the kernel answers for the relay.
            return Some(real_connect(fd, m.relay));
        }
        // A UDP socket may be connected anew, elsewhere: its old flow ends.
        forget(fd);
    }
    let remote = canonical(addr);
    let host = names::lookup(remote.ip());
    let through = if udp {
        outgoing.remote_udp(remote, host.as_deref())
    } else {
        outgoing.remote_tcp(remote, host.as_deref())
    };
    if !through {
        debug!("connect fd {fd} to {remote} (udp: {udp}): local");
        return None;
    }
    let (relay, local) = match open(layer, remote, host, udp, domain)? {
        Ok(opened) => opened,
        Err(errno) => return Some((-1, Some(errno))),
    };
    let done = real_connect(fd, relay);
    if done.0 == 0 || matches!(done.1, Some(libc::EINPROGRESS | libc::EINTR)) {
        TABLE.insert(
            fd,
            Entry::Managed(Arc::new(Managed {
                remote,
                local,
                relay,
                domain,
                datagrams: udp,
            })),
        );
    }
    Some(done)
}

/// Asks `mirrordctl` for a connection (or, `udp`, a flow) to `remote` from the target: the relay to use (in the
/// socket's family) and the address in the target, or the errno the app gets; `None` when libc should do it
/// (the layer detached).
fn open(
    layer: &state::Layer,
    remote: SocketAddr,
    host: Option<String>,
    udp: bool,
    domain: c_int,
) -> Option<Result<(SocketAddr, SocketAddr), c_int>> {
    let request = if udp {
        Request::ConnectUdp { remote, host }
    } else {
        Request::Connect { remote, host }
    };
    let reply = client::request(layer, &request, layer.connect_timeout);
    debug!("{request:?}: {reply:?}");
    match reply {
        Err(Error::Detached) => None,
        Err(Error::Timeout) => Some(Err(libc::ETIMEDOUT)),
        Ok(Reply::ConnectFailed { errno }) => Some(Err(errno)),
        Ok(Reply::Connected { relay, local }) => Some(
            sockaddr::for_domain(relay, domain)
                .map(|relay| (relay, local))
                .ok_or(libc::EAFNOSUPPORT),
        ),
        Ok(other) => {
            state::detach(&format!("unexpected reply to {request:?}: {other:?}"));
            None
        }
    }
}

/// Flows one unconnected UDP socket may have through the target; past them a send fails with `ENOBUFS` (a
/// program sending to ever new destinations would otherwise hold a relay for each).
const MAX_FLOWS: usize = 256;

/// `sendto(fd, .., dest)` on an unconnected UDP socket: `None` when libc should send to `dest` itself; else the
/// relay to send to instead (a flow to `dest` through the target, made on the first datagram), or the errno.
pub fn send_to(fd: c_int, dest: SocketAddr) -> Option<Result<SocketAddr, c_int>> {
    let layer = state::active()?;
    if !layer.config.outgoing.udp {
        return None;
    }
    let remote = canonical(dest);
    match TABLE.get(fd) {
        Some(Entry::Relays(r)) => {
            if let Some(relay) = r.relay(remote) {
                return Some(Ok(relay));
            }
        }
        // A socket the layer connected, sent to with its destination named (some libraries
        // always do): its flow.
        Some(Entry::Managed(m)) if m.datagrams && m.remote == remote => return Some(Ok(m.relay)),
        _ => {}
    }
    let (domain, ty) = sys::socket_kind(fd)?;
    if ty != libc::SOCK_DGRAM || !(domain == libc::AF_INET || domain == libc::AF_INET6) {
        return None;
    }
    let host = names::lookup(remote.ip());
    if !layer.config.outgoing.remote_udp(remote, host.as_deref()) {
        return None;
    }
    // A socket the layer connected (managed) is left to libc: its datagrams go to its relay anyway.
    let relays = TABLE.relays(fd, domain)?;
    if relays.flows.lock().map_or(0, |f| f.len()) >= MAX_FLOWS {
        return Some(Err(libc::ENOBUFS));
    }
    let opened = open(layer, remote, host, true, domain)?;
    if let (Ok((relay, _)), Ok(mut flows)) = (&opened, relays.flows.lock()) {
        flows.push((remote, *relay));
    }
    Some(opened.map(|(relay, _)| relay))
}

/// The address a datagram received on `fd` came from, when it came from one of the layer's relays: the
/// destination the relay stands for. `None`: the real one stands.
pub fn source_of(fd: c_int, real: SocketAddr) -> Option<SocketAddr> {
    match TABLE.get(fd)? {
        Entry::Managed(m) if canonical(real) == canonical(m.relay) => {
            sockaddr::for_domain(m.remote, m.domain)
        }
        Entry::Relays(r) => {
            let remote = r.remote(real).or_else(|| r.remote(canonical(real)))?;
            sockaddr::for_domain(remote, r.domain)
        }
        _ => None,
    }
}

fn real_connect(fd: c_int, relay: SocketAddr) -> Done {
    let (r, e) = sys::connect(fd, relay);
    (r, (r != 0).then_some(e))
}

/// The address `getpeername` (`peer`) or `getsockname` reports for a managed fd, in the socket's family.
pub fn name_of(fd: c_int, peer: bool) -> Option<SocketAddr> {
    let m = TABLE.managed(fd)?;
    sockaddr::for_domain(if peer { m.remote } else { m.local }, m.domain)
}

/// `close(fd)` (or `fd` replaced by another descriptor): forget it, when this process owns the tables. The last
/// descriptor of a listening socket, closed by the process that listened, gives its port back.
pub fn forget(fd: c_int) {
    if !state::is_owner() {
        return;
    }
    // The table's other copies (dups) hold an entry too; ours is the one just removed.
    let request = match TABLE.remove(fd) {
        Some(Entry::Listening(l)) if Arc::strong_count(&l) == 1 && l.pid == sys::getpid() => {
            Request::Unlisten { port: l.port }
        }
        Some(Entry::Managed(m)) if m.datagrams && Arc::strong_count(&m) == 1 => Request::Release {
            relays: vec![canonical(m.relay)],
        },
        Some(Entry::Relays(r)) if Arc::strong_count(&r) == 1 => Request::Release {
            relays: r
                .flows
                .lock()
                .map(|f| f.iter().map(|(_, relay)| canonical(*relay)).collect())
                .unwrap_or_default(),
        },
        _ => return,
    };
    if let Some(layer) = state::active() {
        let reply = client::request(layer, &request, layer.connect_timeout);
        debug!("close fd {fd}: {request:?}: {reply:?}");
    }
}

/// `connect(fd, AF_UNSPEC)`: a UDP socket's association is dissolved, its flow with it.
pub fn disconnected(fd: c_int) {
    if TABLE.is_tracked(fd) {
        forget(fd);
    }
}

fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// After a successful `listen(fd)`: tells `mirrordctl` the port (once per socket) and waits until its incoming
/// traffic is the process's, so a client that connects right after `listen` is served.
pub fn listened(fd: c_int) {
    let Some(layer) = state::active().filter(|l| l.config.listen) else {
        return;
    };
    if TABLE.get(fd).is_some() {
        return;
    }
    let Some((domain, libc::SOCK_STREAM)) = sys::socket_kind(fd) else {
        return;
    };
    if !(domain == libc::AF_INET || domain == libc::AF_INET6) {
        return;
    }
    let Some(addr) = sys::local_name(fd) else {
        return;
    };
    let reply = client::request(layer, &Request::Listen { addr }, layer.connect_timeout);
    debug!("listen fd {fd} on {addr}: {reply:?}");
    if let Ok(Reply::Done) = reply {
        TABLE.insert(
            fd,
            Entry::Listening(Arc::new(crate::fdtable::Listening {
                port: addr.port(),
                pid: sys::getpid(),
            })),
        );
    }
}

/// `to` became a copy of `from`.
pub fn copied(from: c_int, to: c_int) {
    if state::is_owner() {
        TABLE.dup(from, to);
    }
}

/// `close_range(first, last)`.
pub fn forget_range(first: c_int, last: c_int) {
    if state::is_owner() && !TABLE.is_empty() {
        TABLE.remove_range(first, last);
    }
}
