//! `sockaddr_in`/`sockaddr_in6` as bytes, both ways, in safe code: the exports hand over the caller's buffer as a
//! slice and get one back to copy with `*len` truncation.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use libc::c_int;

pub const MAX: usize = std::mem::size_of::<libc::sockaddr_in6>();

/// The bytes of `addr` as the kernel lays it out, and how many of them there are.
pub fn encode(addr: SocketAddr) -> ([u8; MAX], usize) {
    let mut b = [0u8; MAX];
    match addr {
        SocketAddr::V4(a) => {
            b[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            b[2..4].copy_from_slice(&a.port().to_be_bytes());
            b[4..8].copy_from_slice(&a.ip().octets());
            (b, std::mem::size_of::<libc::sockaddr_in>())
        }
        SocketAddr::V6(a) => {
            b[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            b[2..4].copy_from_slice(&a.port().to_be_bytes());
            b[4..8].copy_from_slice(&a.flowinfo().to_ne_bytes());
            b[8..24].copy_from_slice(&a.ip().octets());
            b[24..28].copy_from_slice(&a.scope_id().to_ne_bytes());
            (b, MAX)
        }
    }
}

/// An `AF_INET`/`AF_INET6` address from the caller's bytes; `None` for other families or short buffers.
pub fn decode(b: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes(b.get(..2)?.try_into().ok()?) as c_int;
    let port = u16::from_be_bytes(b.get(2..4)?.try_into().ok()?);
    match family {
        libc::AF_INET if b.len() >= std::mem::size_of::<libc::sockaddr_in>() => {
            let ip: [u8; 4] = b[4..8].try_into().ok()?;
            Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
        }
        libc::AF_INET6 if b.len() >= MAX => {
            let flow = u32::from_ne_bytes(b[4..8].try_into().ok()?);
            let ip: [u8; 16] = b[8..24].try_into().ok()?;
            let scope = u32::from_ne_bytes(b[24..28].try_into().ok()?);
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port,
                flow,
                scope,
            )))
        }
        _ => None,
    }
}

/// `addr` in the family of a socket of `domain`: IPv4 on an `AF_INET6` socket is v4-mapped, v4-mapped on an
/// `AF_INET` socket is plain IPv4. `None` when it cannot be expressed (IPv6 on an `AF_INET` socket).
pub fn for_domain(addr: SocketAddr, domain: c_int) -> Option<SocketAddr> {
    match (domain, addr) {
        (libc::AF_INET6, SocketAddr::V4(a)) => Some(SocketAddr::V6(SocketAddrV6::new(
            a.ip().to_ipv6_mapped(),
            a.port(),
            0,
            0,
        ))),
        (libc::AF_INET6, a) => Some(a),
        (libc::AF_INET, a) => match a.ip().to_canonical() {
            std::net::IpAddr::V4(ip) => Some(SocketAddr::new(ip.into(), a.port())),
            _ => None,
        },
        _ => None,
    }
}

/// Address bytes aligned as libc's sockaddr types require, to hand to a C function.
#[repr(C, align(8))]
pub struct Storage([u8; MAX]);

impl Storage {
    pub fn from_bytes(b: &[u8; MAX]) -> Self {
        Self(*b)
    }

    pub fn as_ptr(&self) -> *const libc::sockaddr {
        self.0.as_ptr().cast()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for s in [
            "10.1.2.3:80",
            "[fd00::1]:443",
            "[::ffff:127.0.0.1]:1",
            "0.0.0.0:0",
        ] {
            let a: SocketAddr = s.parse().unwrap();
            let (b, len) = encode(a);
            assert_eq!(decode(&b[..len]), Some(a), "{s}");
            assert_eq!(decode(&b[..len - 1]), None, "short {s}");
        }
        assert_eq!(decode(&[1, 0, 0, 0]), None);
    }

    #[test]
    fn layout_is_the_kernels() {
        let (b, len) = encode("1.2.3.4:258".parse().unwrap());
        assert_eq!(len, 16);
        assert_eq!(&b[..8], &[2, 0, 1, 2, 1, 2, 3, 4]);
    }

    #[test]
    fn family_follows_the_socket() {
        let v4: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:80".parse().unwrap();
        let v6: SocketAddr = "[fd00::1]:80".parse().unwrap();
        assert_eq!(for_domain(v4, libc::AF_INET6), Some(mapped));
        assert_eq!(for_domain(mapped, libc::AF_INET), Some(v4));
        assert_eq!(for_domain(v6, libc::AF_INET6), Some(v6));
        assert_eq!(for_domain(v6, libc::AF_INET), None);
    }
}
