//! Which file descriptors the layer knows: connections it redirected (shared over dups), its own channels to
//! `mirrordctl`, and its log file.
//!
//! `close`, `dup*`, `getpeername` and `getsockname` run for every descriptor of the process, so whether a
//! descriptor is known is one atomic load from a bitset; the details sit behind a mutex that is only taken for
//! known descriptors, and never across I/O.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use libc::c_int;

/// A redirected TCP connection: the app's fd is really connected to `relay`.
#[derive(Debug, PartialEq, Eq)]
pub struct Managed {
    /// What the app asked for (IPv4 kept as IPv4): `getpeername`.
    pub remote: SocketAddr,
    /// The socket's address in the target: `getsockname`.
    pub local: SocketAddr,
    /// Where the fd is really connected (in the socket's family).
    pub relay: SocketAddr,
    /// `AF_INET` or `AF_INET6`: addresses are given back in the socket's family.
    pub domain: c_int,
    /// A UDP socket: its flow ends when it is closed (UDP has no end of its own).
    pub datagrams: bool,
}

/// An unconnected UDP socket's flows through the target: for each destination the app sent to, the relay its
/// datagrams really go to.
#[derive(Debug)]
pub struct Relays {
    /// `AF_INET` or `AF_INET6`.
    pub domain: c_int,
    /// (destination, relay in the socket's family); few per socket, so a list.
    pub flows: Mutex<Vec<(SocketAddr, SocketAddr)>>,
}

impl Relays {
    /// The relay for datagrams to `remote`, if there is a flow.
    pub fn relay(&self, remote: SocketAddr) -> Option<SocketAddr> {
        let flows = self.flows.lock().unwrap_or_else(PoisonError::into_inner);
        flows
            .iter()
            .find(|(r, _)| *r == remote)
            .map(|(_, relay)| *relay)
    }

    /// The destination whose flow `relay` carries.
    pub fn remote(&self, relay: SocketAddr) -> Option<SocketAddr> {
        let flows = self.flows.lock().unwrap_or_else(PoisonError::into_inner);
        flows
            .iter()
            .find(|(_, r)| *r == relay)
            .map(|(remote, _)| *remote)
    }
}

/// A port the process listens on, told by the process `pid` (a forked child closing its inherited copy does
/// not end it).
#[derive(Debug, PartialEq, Eq)]
pub struct Listening {
    pub port: u16,
    pub pid: u32,
}

/// One socket's relays are one object: equal only to themselves.
impl PartialEq for Relays {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}
impl Eq for Relays {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Managed(Arc<Managed>),
    /// An unconnected UDP socket that sent datagrams through the target.
    Relays(Arc<Relays>),
    /// A listening socket whose port `mirrordctl` was told of.
    Listening(Arc<Listening>),
    /// A remote file or directory (its local copy).
    Remote(Arc<crate::files::Remote>),
    /// A thread's connection to `mirrordctl`.
    Channel,
    /// The debug log.
    Log,
}

/// Descriptors below this have a bit each; above it any entry makes every check go to the map.
const BITS: usize = 1 << 16;

pub struct FdTable {
    bits: [AtomicU64; BITS / 64],
    high: AtomicUsize,
    map: Mutex<BTreeMap<c_int, Entry>>,
}

pub static TABLE: FdTable = FdTable::new();

impl FdTable {
    pub const fn new() -> Self {
        Self {
            bits: [const { AtomicU64::new(0) }; BITS / 64],
            high: AtomicUsize::new(0),
            map: Mutex::new(BTreeMap::new()),
        }
    }

    /// Whether `fd` may be known: the only check on the fast path.
    pub fn is_tracked(&self, fd: c_int) -> bool {
        match usize::try_from(fd) {
            Ok(i) if i < BITS => self.bits[i / 64].load(Ordering::Acquire) & (1 << (i % 64)) != 0,
            Ok(_) => self.high.load(Ordering::Acquire) != 0,
            Err(_) => false,
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, BTreeMap<c_int, Entry>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn get(&self, fd: c_int) -> Option<Entry> {
        if !self.is_tracked(fd) {
            return None;
        }
        self.lock().get(&fd).cloned()
    }

    pub fn managed(&self, fd: c_int) -> Option<Arc<Managed>> {
        match self.get(fd)? {
            Entry::Managed(m) => Some(m),
            _ => None,
        }
    }

    /// `fd`'s relays, made (for a socket of `domain`) if it has none.
    pub fn relays(&self, fd: c_int, domain: c_int) -> Option<Arc<Relays>> {
        let mut map = self.lock();
        match map.get(&fd) {
            Some(Entry::Relays(r)) => return Some(Arc::clone(r)),
            Some(_) => return None,
            None => {}
        }
        let r = Arc::new(Relays {
            domain,
            flows: Mutex::new(Vec::new()),
        });
        map.insert(fd, Entry::Relays(Arc::clone(&r)));
        self.mark(fd, true);
        Some(r)
    }

    /// How many descriptors' entries satisfy `f`.
    pub fn count(&self, f: impl Fn(&Entry) -> bool) -> usize {
        self.lock().values().filter(|e| f(e)).count()
    }

    pub fn insert(&self, fd: c_int, entry: Entry) {
        let mut map = self.lock();
        if map.insert(fd, entry).is_none() {
            self.mark(fd, true);
        }
    }

    pub fn remove(&self, fd: c_int) -> Option<Entry> {
        if !self.is_tracked(fd) {
            return None;
        }
        let mut map = self.lock();
        let old = map.remove(&fd);
        if old.is_some() {
            self.mark(fd, false);
        }
        old
    }

    /// `to` became a copy of `from` (dup, dup2, dup3, F_DUPFD): whatever `to` was is gone, and it shares
    /// `from`'s connection. The layer's own descriptors are not copied: a copy the app made is the app's.
    pub fn dup(&self, from: c_int, to: c_int) {
        if from == to {
            return;
        }
        let mut map = self.lock();
        if map.remove(&to).is_some() {
            self.mark(to, false);
        }
        let copy = match map.get(&from) {
            Some(Entry::Managed(m)) => Entry::Managed(Arc::clone(m)),
            Some(Entry::Relays(r)) => Entry::Relays(Arc::clone(r)),
            Some(Entry::Listening(l)) => Entry::Listening(Arc::clone(l)),
            Some(Entry::Remote(r)) => Entry::Remote(Arc::clone(r)),
            _ => return,
        };
        map.insert(to, copy);
        self.mark(to, true);
    }

    /// `close_range(first, last)`.
    pub fn remove_range(&self, first: c_int, last: c_int) {
        let mut map = self.lock();
        let gone: Vec<c_int> = map.range(first..=last).map(|(fd, _)| *fd).collect();
        for fd in gone {
            map.remove(&fd);
            self.mark(fd, false);
        }
    }

    /// Removes every channel (a forked child must not share its parent's) and returns their descriptors.
    pub fn take_channels(map: &mut BTreeMap<c_int, Entry>, table: &FdTable) -> Vec<c_int> {
        let fds: Vec<c_int> = map
            .iter()
            .filter(|(_, e)| **e == Entry::Channel)
            .map(|(fd, _)| *fd)
            .collect();
        for fd in &fds {
            map.remove(fd);
            table.mark(*fd, false);
        }
        fds
    }

    /// Whether anything at all is known (lets `close_range` skip the lock).
    pub fn is_empty(&self) -> bool {
        self.bits.iter().all(|w| w.load(Ordering::Acquire) == 0)
            && self.high.load(Ordering::Acquire) == 0
    }

    // Called with the map locked, so bits and map agree.
    fn mark(&self, fd: c_int, on: bool) {
        match usize::try_from(fd) {
            Ok(i) if i < BITS => {
                let bit = 1u64 << (i % 64);
                if on {
                    self.bits[i / 64].fetch_or(bit, Ordering::Release);
                } else {
                    self.bits[i / 64].fetch_and(!bit, Ordering::Release);
                }
            }
            Ok(_) => {
                if on {
                    self.high.fetch_add(1, Ordering::Release);
                } else {
                    self.high.fetch_sub(1, Ordering::Release);
                }
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> Arc<Managed> {
        Arc::new(Managed {
            remote: "10.0.0.1:80".parse().unwrap(),
            local: "10.1.0.2:40000".parse().unwrap(),
            relay: "127.0.0.1:5555".parse().unwrap(),
            domain: libc::AF_INET,
            datagrams: false,
        })
    }

    #[test]
    fn dups_share_the_connection_until_the_last_close() {
        let t = FdTable::new();
        let c = conn();
        t.insert(5, Entry::Managed(Arc::clone(&c)));
        assert!(t.is_tracked(5) && !t.is_tracked(6));
        t.dup(5, 6); // dup
        t.dup(5, 70_000); // F_DUPFD to a high number
        assert!(t.is_tracked(6) && t.is_tracked(70_000));
        assert_eq!(Arc::strong_count(&c), 4);
        assert_eq!(t.remove(5), Some(Entry::Managed(Arc::clone(&c))));
        assert!(!t.is_tracked(5));
        assert_eq!(t.managed(6).as_deref(), Some(&*c));
        t.remove(6);
        t.remove(70_000);
        assert_eq!(
            Arc::strong_count(&c),
            1,
            "the last close drops the connection"
        );
        assert!(t.is_empty());
    }

    #[test]
    fn dup2_onto_a_managed_fd_replaces_it() {
        let t = FdTable::new();
        t.insert(7, Entry::Managed(conn()));
        t.dup(3, 7); // dup2(unmanaged 3, 7): 7 is now something else
        assert!(!t.is_tracked(7));
        assert!(t.is_empty());
        t.insert(7, Entry::Managed(conn()));
        t.dup(7, 7); // dup2(fd, fd) changes nothing
        assert!(t.managed(7).is_some());
    }

    #[test]
    fn the_layers_own_fds_are_not_copied_but_can_be_clobbered() {
        let t = FdTable::new();
        t.insert(900, Entry::Channel);
        t.insert(901, Entry::Log);
        t.dup(900, 4);
        assert!(!t.is_tracked(4));
        t.dup(4, 900); // the app dup2()s over the channel
        assert_eq!(t.get(900), None);
        assert_eq!(t.get(901), Some(Entry::Log));
        t.insert(902, Entry::Channel);
        let mut map = t.lock();
        assert_eq!(FdTable::take_channels(&mut map, &t), vec![902]);
        drop(map);
        assert_eq!(t.get(901), Some(Entry::Log));
        assert!(!t.is_tracked(902));
    }

    #[test]
    fn close_range_and_negative_fds() {
        let t = FdTable::new();
        for fd in [3, 10, 64, 65, 100_000] {
            t.insert(fd, Entry::Managed(conn()));
        }
        t.remove_range(10, 65);
        assert!(t.is_tracked(3) && !t.is_tracked(10) && !t.is_tracked(64) && !t.is_tracked(65));
        assert!(t.is_tracked(100_000));
        t.remove_range(0, c_int::MAX);
        assert!(t.is_empty());
        assert!(!t.is_tracked(-1));
        assert_eq!(t.remove(-1), None);
    }
}
