//! Where a session's outgoing connections may go when a policy limits them
//! (`outgoing_allow`). Entries are written as mirrord writes its outgoing filter:
//! `[tcp://|udp://]HOST[:PORT]`, HOST an address, a CIDR (`[fd00::/8]` with a port), a
//! name or `*`, PORT a number, a range `LO-HI` or `*` (any when absent). An IPv6 address
//! with a port is bracketed: `fd00::1:443` is the address `fd00::1:443`, any port.
//!
//! A name matches an address when the target's own resolver gives that address for it,
//! asked at connect time: so `db` and `db.payments.svc.cluster.local` both match the
//! Service's address, however the process found it (its resolver, a literal address).

use crate::backend::TargetContext;
use ipnet::IpNet;
use mirrord_protocol::Family;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::Arc;

/// At most this many entries in one policy's allow-list (each connect may walk them).
pub const MAX_ENTRIES: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Any,
    Net(IpNet),
    /// Lower case, without a trailing dot.
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Destination {
    /// `Some(true)` UDP only, `Some(false)` TCP only.
    udp: Option<bool>,
    host: Host,
    ports: RangeInclusive<u16>,
}

/// One policy's allow-list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destinations {
    entries: Vec<Destination>,
    /// As written, for messages.
    text: Vec<String>,
}

impl Destinations {
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        if entries.len() > MAX_ENTRIES {
            return Err(format!(
                "outgoing_allow has {} entries; at most {MAX_ENTRIES}",
                entries.len()
            ));
        }
        let parsed = entries
            .iter()
            .map(|e| parse(e).map_err(|why| format!("outgoing_allow entry `{e}`: {why}")))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            entries: parsed,
            text: entries.to_vec(),
        })
    }

    /// The list as written (`10.0.0.0/8:5432, db:5432`).
    pub fn describe(&self) -> String {
        match self.text.is_empty() {
            true => "nothing".into(),
            false => self.text.join(", "),
        }
    }

    fn candidates(&self, port: u16, udp: bool) -> impl Iterator<Item = &Host> {
        self.entries
            .iter()
            .filter(move |d| d.udp.is_none_or(|u| u == udp) && d.ports.contains(&port))
            .map(|d| &d.host)
    }

    /// Whether `remote` is allowed without asking a resolver.
    fn allows_address(&self, remote: SocketAddr, udp: bool) -> bool {
        let ip = remote.ip().to_canonical();
        self.candidates(remote.port(), udp).any(|h| match h {
            Host::Any => true,
            Host::Net(n) => n.contains(&ip),
            Host::Name(_) => false,
        })
    }

    /// The names whose addresses would allow a connection to `port`.
    fn names(&self, port: u16, udp: bool) -> Vec<String> {
        self.candidates(port, udp)
            .filter_map(|h| match h {
                Host::Name(n) => Some(n.clone()),
                _ => None,
            })
            .collect()
    }
}

/// A policy's allow-list binding a session.
#[derive(Debug, Clone)]
pub struct OutgoingRule {
    pub policy: String,
    pub allow: Arc<Destinations>,
}

/// Whether every rule lets the session connect to `remote`; otherwise why not, naming the
/// policy. Names in the lists are resolved by the target (`ctx`).
pub async fn check(
    rules: &[OutgoingRule],
    ctx: &dyn TargetContext,
    remote: SocketAddr,
    udp: bool,
) -> Result<(), String> {
    let ip = remote.ip().to_canonical();
    for rule in rules {
        if rule.allow.allows_address(remote, udp) {
            continue;
        }
        let mut allowed = false;
        for name in rule.allow.names(remote.port(), udp) {
            if let Ok(r) = ctx.resolve(name, Family::Any).await {
                if r.addrs.iter().any(|a| a.to_canonical() == ip) {
                    allowed = true;
                    break;
                }
            }
        }
        if !allowed {
            let proto = if udp { "UDP" } else { "TCP" };
            return Err(format!(
                "blocked by policy `{}`: {proto} {remote} is not in its outgoing allow-list ({})",
                rule.policy,
                rule.allow.describe()
            ));
        }
    }
    Ok(())
}

fn parse(entry: &str) -> Result<Destination, String> {
    let (udp, rest) = match entry.split_once("://") {
        Some(("tcp", rest)) => (Some(false), rest),
        Some(("udp", rest)) => (Some(true), rest),
        Some((p, _)) => return Err(format!("protocol `{p}` is not tcp or udp")),
        None => (None, entry),
    };
    let (host, port) = split_port(rest)?;
    Ok(Destination {
        udp,
        host: host_of(host)?,
        ports: ports_of(port)?,
    })
}

/// `[v6]:port`, `v6` (no port: more than one colon), `host:port`, `host`.
fn split_port(s: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(inner) = s.strip_prefix('[') {
        let (host, after) = inner
            .split_once(']')
            .ok_or("a `[` without its `]`".to_owned())?;
        return match after {
            "" => Ok((host, None)),
            _ => after
                .strip_prefix(':')
                .map(|p| (host, Some(p)))
                .ok_or_else(|| format!("`{after}` after `]` is not `:PORT`")),
        };
    }
    if s.matches(':').count() > 1 {
        return Ok((s, None));
    }
    Ok(match s.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    })
}

fn host_of(h: &str) -> Result<Host, String> {
    if h == "*" {
        return Ok(Host::Any);
    }
    if let Ok(net) = h.parse::<IpNet>() {
        return Ok(Host::Net(net.trunc()));
    }
    if let Ok(ip) = h.parse::<IpAddr>() {
        // `::ffff:10.0.0.1` is 10.0.0.1, as the connection's address is compared.
        return Ok(Host::Net(IpNet::from(ip.to_canonical())));
    }
    let name = h.strip_suffix('.').unwrap_or(h).to_ascii_lowercase();
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    match valid {
        true => Ok(Host::Name(name)),
        false => Err(format!(
            "`{h}` is not an address, a CIDR, a host name or `*`"
        )),
    }
}

fn ports_of(p: Option<&str>) -> Result<RangeInclusive<u16>, String> {
    let number = |s: &str| {
        s.parse::<u16>()
            .map_err(|_| format!("`{s}` is not a port (0-65535)"))
    };
    match p {
        None | Some("*") => Ok(0..=u16::MAX),
        Some(p) => match p.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (number(lo)?, number(hi)?);
                match lo <= hi {
                    true => Ok(lo..=hi),
                    false => Err(format!("the range `{p}` is empty")),
                }
            }
            None => number(p).map(|n| n..=n),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> Destinations {
        Destinations::parse(&entries.iter().map(|e| (*e).to_owned()).collect::<Vec<_>>()).unwrap()
    }
    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_cidrs_ports_and_protocols() {
        let d = list(&[
            "10.0.0.0/8:5432",
            "192.168.1.7",
            "udp://*:53",
            "[fd00::/8]:443",
            "tcp://172.16.0.1:8000-8100",
        ]);
        assert!(d.allows_address(a("10.1.2.3:5432"), false));
        assert!(!d.allows_address(a("10.1.2.3:5433"), false));
        assert!(!d.allows_address(a("11.1.2.3:5432"), false));
        assert!(d.allows_address(a("192.168.1.7:1"), true));
        assert!(d.allows_address(a("8.8.8.8:53"), true));
        assert!(!d.allows_address(a("8.8.8.8:53"), false), "udp:// only");
        assert!(d.allows_address(a("[fd12::1]:443"), false));
        assert!(d.allows_address(a("172.16.0.1:8050"), false));
        assert!(!d.allows_address(a("172.16.0.1:8050"), true), "tcp:// only");
        // An IPv4-mapped IPv6 address is its IPv4 address.
        assert!(d.allows_address(a("[::ffff:10.0.0.1]:5432"), false));
        let mapped = list(&["[::ffff:192.168.9.9]:80"]);
        assert!(mapped.allows_address(a("192.168.9.9:80"), false));
    }

    #[test]
    fn names_are_candidates_only_for_their_ports() {
        let d = list(&["DB.payments.:5432", "cache", "10.0.0.1:80"]);
        assert_eq!(d.names(5432, false), ["db.payments", "cache"]);
        assert_eq!(d.names(80, false), ["cache"]);
        assert!(!d.allows_address(a("10.0.0.2:5432"), false));
    }

    #[test]
    fn bad_entries_are_named() {
        for (entry, why) in [
            ("http://x", "protocol `http`"),
            ("10.0.0.1:99999", "not a port"),
            ("10.0.0.1:90-80", "is empty"),
            ("[fd00::1", "without its `]`"),
            ("bad host!", "not an address"),
            ("[::1]x", "is not `:PORT`"),
        ] {
            let e = Destinations::parse(&[entry.to_owned()]).unwrap_err();
            assert!(e.contains(entry) && e.contains(why), "{entry}: {e}");
        }
        let many = vec!["*".to_owned(); MAX_ENTRIES + 1];
        assert!(Destinations::parse(&many).unwrap_err().contains("at most"));
    }

    #[test]
    fn an_empty_list_allows_nothing() {
        let d = list(&[]);
        assert!(!d.allows_address(a("127.0.0.1:80"), false));
        assert_eq!(d.describe(), "nothing");
    }
}
