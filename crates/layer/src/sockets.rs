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
        // A UDP socket may be connected anew, elsewhere: its old flow ends idle at the relay.
        TABLE.remove(fd);
    }
    let remote = SocketAddr::new(addr.ip().to_canonical(), addr.port());
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
    let request = if udp {
        Request::ConnectUdp {
            remote,
            host: host.clone(),
        }
    } else {
        Request::Connect {
            remote,
            host: host.clone(),
        }
    };
    let reply = client::request(layer, &request, layer.connect_timeout);
    debug!("connect fd {fd} to {remote} ({host:?}, udp: {udp}): {reply:?}");
    match reply {
        Err(Error::Detached) => None,
        Err(Error::Timeout) => Some((-1, Some(libc::ETIMEDOUT))),
        Ok(Reply::ConnectFailed { errno }) => Some((-1, Some(errno))),
        Ok(Reply::Connected { relay, local }) => {
            let Some(relay) = sockaddr::for_domain(relay, domain) else {
                return Some((-1, Some(libc::EAFNOSUPPORT)));
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
                    })),
                );
            }
            Some(done)
        }
        Ok(other) => {
            state::detach(&format!("unexpected reply to a connect: {other:?}"));
            None
        }
    }
}

/// The address a datagram received on `fd` came from, when `fd` is a managed (UDP) socket and it came from the
/// relay: what the app connected to. `None`: the real one stands.
pub fn source_of(fd: c_int, real: SocketAddr) -> Option<SocketAddr> {
    let m = TABLE.managed(fd)?;
    let relay = SocketAddr::new(real.ip().to_canonical(), real.port());
    (relay == SocketAddr::new(m.relay.ip().to_canonical(), m.relay.port()))
        .then(|| sockaddr::for_domain(m.remote, m.domain))
        .flatten()
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

/// `close(fd)` (or `fd` replaced by another descriptor): forget it, when this process owns the tables.
pub fn forget(fd: c_int) {
    if state::is_owner() {
        TABLE.remove(fd);
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
