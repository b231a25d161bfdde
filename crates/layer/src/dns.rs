//! Name lookups through the target: which calls are covered, what to ask, and how the answer maps onto what
//! glibc's `getaddrinfo` and `gethostbyname*` return (entries per socket type, services, v4-mapping, error codes).

use std::ffi::CString;
use std::net::{IpAddr, SocketAddr};

use libc::c_int;
use mirrord_layer_proto::{DnsFailure, Family, Reply, Request};

use crate::client::{self, Error};
use crate::{names, state, sys};

/// glibc's `EAI_NODATA` (not in the libc crate for every target).
pub const EAI_NODATA: c_int = -5;

#[derive(Debug, Clone, Copy, Default)]
pub struct Hints {
    pub flags: c_int,
    pub family: c_int,
    pub socktype: c_int,
    pub protocol: c_int,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrEntry {
    pub addr: SocketAddr,
    pub socktype: c_int,
    pub protocol: c_int,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub entries: Vec<AddrEntry>,
    /// On the first entry only, with `AI_CANONNAME`.
    pub canonname: Option<String>,
}

/// `gethostbyname*`'s answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAnswer {
    pub name: String,
    pub addrs: Vec<IpAddr>,
}

/// `getaddrinfo(node, service, hints)`: `None` when libc should answer, else the entries or an `EAI_*` code.
pub fn getaddrinfo(
    node: &str,
    service: Option<&str>,
    hints: &Hints,
) -> Option<Result<Answer, c_int>> {
    let layer = state::active()?;
    if !layer.config.dns.enabled || hints.flags & libc::AI_NUMERICHOST != 0 || is_numeric(node) {
        return None;
    }
    if !matches!(
        hints.family,
        libc::AF_UNSPEC | libc::AF_INET | libc::AF_INET6
    ) {
        return None;
    }
    let rows = match service_rows(service, hints) {
        Ok(rows) => rows,
        Err(e) => return Some(Err(e)),
    };
    let port = service.and(rows.first().map(|r| r.2));
    if !layer.config.dns.remote(node, port) {
        debug!("getaddrinfo {node}: local");
        return None;
    }
    let v4mapped = hints.family == libc::AF_INET6 && hints.flags & libc::AI_V4MAPPED != 0;
    let family = match hints.family {
        libc::AF_INET => Family::V4,
        libc::AF_INET6 if !v4mapped => Family::V6,
        _ => Family::Any,
    };
    let (addrs, canonical) = match resolve(layer, node, family)? {
        Ok(found) => found,
        Err(failure) => return Some(Err(eai(failure))),
    };
    let addrs = select(
        &addrs,
        hints.family,
        v4mapped,
        hints.flags & libc::AI_ALL != 0,
    );
    if addrs.is_empty() {
        return Some(Err(EAI_NODATA));
    }
    let entries = addrs
        .iter()
        .flat_map(|ip| {
            rows.iter().map(|&(socktype, protocol, port)| AddrEntry {
                addr: SocketAddr::new(*ip, port),
                socktype,
                protocol,
            })
        })
        .collect();
    let canonname = (hints.flags & libc::AI_CANONNAME != 0)
        .then(|| canonical.unwrap_or_else(|| node.to_string()));
    Some(Ok(Answer { entries, canonname }))
}

/// `gethostbyname2(name, af)` and friends: `None` when libc should answer, else the host or an `h_errno`.
pub fn gethostbyname(name: &str, af: c_int) -> Option<Result<HostAnswer, c_int>> {
    let layer = state::active()?;
    if !layer.config.dns.enabled
        || is_numeric(name)
        || !matches!(af, libc::AF_INET | libc::AF_INET6)
    {
        return None;
    }
    if !layer.config.dns.remote(name, None) {
        debug!("gethostbyname {name}: local");
        return None;
    }
    let family = if af == libc::AF_INET {
        Family::V4
    } else {
        Family::V6
    };
    let (addrs, canonical) = match resolve(layer, name, family)? {
        Ok(found) => found,
        Err(failure) => return Some(Err(h_errno(failure))),
    };
    let addrs = select(&addrs, af, false, false);
    if addrs.is_empty() {
        return Some(Err(crate::sys::NO_DATA));
    }
    Some(Ok(HostAnswer {
        name: canonical.unwrap_or_else(|| name.to_string()),
        addrs,
    }))
}

type Found = (Vec<IpAddr>, Option<String>);

fn resolve(layer: &state::Layer, node: &str, family: Family) -> Option<Result<Found, DnsFailure>> {
    let reply = client::request(
        layer,
        &Request::Resolve {
            node: node.to_string(),
            family,
        },
        layer.dns_timeout,
    );
    debug!("resolve {node} {family:?}: {reply:?}");
    match reply {
        Err(Error::Detached) => None,
        Err(Error::Timeout) => Some(Err(DnsFailure::Again)),
        Ok(Reply::Resolved { addrs, canonical }) => {
            names::remember(&addrs, node);
            Some(Ok((addrs, canonical)))
        }
        Ok(Reply::DnsFailed(failure)) => Some(Err(failure)),
        Ok(other) => {
            state::detach(&format!("unexpected reply to Resolve: {other:?}"));
            None
        }
    }
}

/// The addresses of `family` (in the resolver's order); for `AF_INET6` with `AI_V4MAPPED`, IPv4 ones
/// v4-mapped when there is no IPv6 one (or always, with `AI_ALL`), as glibc does.
pub fn select(addrs: &[IpAddr], family: c_int, v4mapped: bool, all: bool) -> Vec<IpAddr> {
    let canon = addrs.iter().map(|a| a.to_canonical());
    match family {
        libc::AF_INET => canon.filter(IpAddr::is_ipv4).collect(),
        libc::AF_INET6 => {
            let mut v6: Vec<IpAddr> = canon.clone().filter(IpAddr::is_ipv6).collect();
            if v4mapped && (v6.is_empty() || all) {
                v6.extend(canon.filter_map(|a| match a {
                    IpAddr::V4(v4) => Some(IpAddr::V6(v4.to_ipv6_mapped())),
                    IpAddr::V6(_) => None,
                }));
            }
            v6
        }
        _ => canon.collect(),
    }
}

/// What glibc itself treats as an address rather than a name: those never leave the process.
fn is_numeric(node: &str) -> bool {
    node.is_empty()
        || node.parse::<IpAddr>().is_ok()
        || node.contains([':', '%'])
        || CString::new(node).map_or(true, |c| sys::is_inet_aton(&c))
}

/// glibc's table of socket types for `getaddrinfo`: (type, protocol, protocol name, takes a service).
const SOCKTYPES: [(c_int, c_int, &str, bool); 3] = [
    (libc::SOCK_STREAM, libc::IPPROTO_TCP, "tcp", true),
    (libc::SOCK_DGRAM, libc::IPPROTO_UDP, "udp", true),
    (libc::SOCK_RAW, 0, "", false),
];

/// `(socktype, protocol, port)` of each entry per address, as glibc derives them from the hints and service.
pub fn service_rows(
    service: Option<&str>,
    hints: &Hints,
) -> Result<Vec<(c_int, c_int, u16)>, c_int> {
    if !matches!(
        hints.socktype,
        0 | libc::SOCK_STREAM | libc::SOCK_DGRAM | libc::SOCK_RAW
    ) {
        return Err(libc::EAI_SOCKTYPE);
    }
    let candidates: Vec<_> = SOCKTYPES
        .iter()
        .filter(|(ty, proto, _, _)| {
            (hints.socktype == 0 || *ty == hints.socktype)
                && (hints.protocol == 0 || *proto == hints.protocol || *ty == libc::SOCK_RAW)
        })
        .map(|&(ty, proto, name, serv)| {
            (
                ty,
                if ty == libc::SOCK_RAW {
                    hints.protocol
                } else {
                    proto
                },
                name,
                serv,
            )
        })
        .collect();
    if candidates.is_empty() {
        return Err(libc::EAI_SOCKTYPE);
    }
    // glibc: with a type or a protocol hinted, only the first entry of its table that
    // fits is used (`IPPROTO_UDP` alone gives the datagram row, not a raw one besides).
    let candidates = match hints.socktype != 0 || hints.protocol != 0 {
        true => candidates[..1].to_vec(),
        false => candidates,
    };
    let Some(service) = service else {
        return Ok(candidates
            .iter()
            .map(|&(ty, proto, _, _)| (ty, proto, 0))
            .collect());
    };
    if !service.is_empty() && service.bytes().all(|b| b.is_ascii_digit()) {
        // glibc: strtoul, truncated to 16 bits; a type that takes no service, asked for by name, refuses it.
        let port = service.parse::<u64>().map_or(u16::MAX, |p| p as u16);
        if hints.socktype == libc::SOCK_RAW {
            return Err(libc::EAI_SERVICE);
        }
        return Ok(candidates
            .iter()
            .map(|&(ty, proto, _, _)| (ty, proto, port))
            .collect());
    }
    if hints.flags & libc::AI_NUMERICSERV != 0 {
        return Err(libc::EAI_NONAME);
    }
    let name = CString::new(service).map_err(|_| libc::EAI_SERVICE)?;
    let rows: Vec<_> = candidates
        .iter()
        .filter(|(_, _, _, serv)| *serv)
        .filter_map(|&(ty, proto, pname, _)| {
            let pname = CString::new(pname).ok()?;
            sys::service_port(&name, &pname).map(|port| (ty, proto, port))
        })
        .collect();
    if rows.is_empty() {
        return Err(libc::EAI_SERVICE);
    }
    Ok(rows)
}

fn eai(f: DnsFailure) -> c_int {
    match f {
        DnsFailure::NoName => libc::EAI_NONAME,
        DnsFailure::NoData => EAI_NODATA,
        DnsFailure::Again => libc::EAI_AGAIN,
        DnsFailure::Fail => libc::EAI_FAIL,
    }
}

fn h_errno(f: DnsFailure) -> c_int {
    match f {
        DnsFailure::NoName => crate::sys::HOST_NOT_FOUND,
        DnsFailure::NoData => crate::sys::NO_DATA,
        DnsFailure::Again => crate::sys::TRY_AGAIN,
        DnsFailure::Fail => crate::sys::NO_RECOVERY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hints(socktype: c_int, protocol: c_int, flags: c_int) -> Hints {
        Hints {
            flags,
            family: 0,
            socktype,
            protocol,
        }
    }
    const S: c_int = libc::SOCK_STREAM;
    const D: c_int = libc::SOCK_DGRAM;
    const R: c_int = libc::SOCK_RAW;

    #[test]
    fn rows_match_glibc() {
        // What glibc 2.36 answers for "localhost" with these services and hints (checked with Python).
        assert_eq!(
            service_rows(None, &hints(0, 0, 0)),
            Ok(vec![(S, 6, 0), (D, 17, 0), (R, 0, 0)])
        );
        assert_eq!(
            service_rows(Some("80"), &hints(0, 0, 0)),
            Ok(vec![(S, 6, 80), (D, 17, 80), (R, 0, 80)])
        );
        assert_eq!(
            service_rows(Some("domain"), &hints(0, 0, 0)),
            Ok(vec![(S, 6, 53), (D, 17, 53)])
        );
        assert_eq!(
            service_rows(Some("80"), &hints(R, 0, 0)),
            Err(libc::EAI_SERVICE)
        );
        assert_eq!(
            service_rows(None, &hints(0, libc::IPPROTO_UDP, 0)),
            Ok(vec![(D, 17, 0)])
        );
        assert_eq!(
            service_rows(Some("80"), &hints(0, libc::IPPROTO_TCP, 0)),
            Ok(vec![(S, 6, 80)])
        );
        assert_eq!(
            service_rows(Some("nosuchservice"), &hints(0, 0, 0)),
            Err(libc::EAI_SERVICE)
        );
        assert_eq!(
            service_rows(Some("domain"), &hints(R, 0, 0)),
            Err(libc::EAI_SERVICE)
        );
        assert_eq!(
            service_rows(Some("domain"), &hints(0, 0, libc::AI_NUMERICSERV)),
            Err(libc::EAI_NONAME)
        );
        assert_eq!(
            service_rows(Some("443"), &hints(S, 0, 0)),
            Ok(vec![(S, 6, 443)])
        );
        assert_eq!(
            service_rows(None, &hints(42, 0, 0)),
            Err(libc::EAI_SOCKTYPE)
        );
    }

    #[test]
    fn family_selection() {
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let v6: IpAddr = "fd00::1".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(
            select(&[v4, v6], libc::AF_UNSPEC, false, false),
            vec![v4, v6]
        );
        assert_eq!(select(&[v4, v6], libc::AF_INET, false, false), vec![v4]);
        assert_eq!(select(&[v4, v6], libc::AF_INET6, false, false), vec![v6]);
        assert_eq!(select(&[v4], libc::AF_INET6, true, false), vec![mapped]);
        assert_eq!(select(&[v4, v6], libc::AF_INET6, true, false), vec![v6]);
        assert_eq!(
            select(&[v4, v6], libc::AF_INET6, true, true),
            vec![v6, mapped]
        );
        assert_eq!(select(&[mapped], libc::AF_INET, false, false), vec![v4]);
    }

    #[test]
    fn numeric_hosts_stay_with_libc() {
        for n in [
            "10.0.0.1",
            "::1",
            "fe80::1%eth0",
            "127.1",
            "0x7f000001",
            "2130706433",
            "",
        ] {
            assert!(is_numeric(n), "{n}");
        }
        for n in ["db", "db.internal", "1.2.3.4.example", "localhost"] {
            assert!(!is_numeric(n), "{n}");
        }
    }
}
