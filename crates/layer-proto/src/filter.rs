//! mirrord's outgoing and DNS filters: `{"local": [...]}` or `{"remote": [...]}`, each entry
//! `[protocol://][name|address|subnet/mask][:port]`, parsed and matched as mirrord does.
//!
//! Matching follows mirrord: a missing (or `0`) port, a missing host and the unspecified address (`0.0.0.0`,
//! `::`) match anything; a CIDR matches the addresses it contains; a name matches the name a connection's
//! address was resolved from (the layer remembers the names it resolved through the target), compared without
//! case and without a trailing dot. IPv4-mapped IPv6 addresses compare as IPv4.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

/// mirrord's `{"local": [...]}` / `{"remote": [...]}`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum AddressFilter {
    /// What matches stays local; everything else goes through the target.
    Local(Vec<AddressRule>),
    /// What matches goes through the target; everything else stays local.
    Remote(Vec<AddressRule>),
}

/// One entry, parsed from mirrord's grammar: `[tcp://|udp://]` then an IP, a CIDR, a hostname, or nothing, then
/// an optional `:port`. Examples: `1.1.1.0/24:1337`, `google.com`, `:53`, `tcp://db.internal:5432`, `[::1]:80`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct AddressRule {
    /// `None`: any protocol (no prefix, or `any://`).
    pub protocol: Option<Proto>,
    /// `None`: any host.
    pub host: Option<HostPattern>,
    /// `None`: any port (no port, or `:0`).
    pub port: Option<u16>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Ip(IpAddr),
    /// A network and its prefix length (checked against the family when parsed).
    Cidr(IpAddr, u8),
    /// A host name, lower-cased, without a trailing dot.
    Name(String),
}

/// A filter entry that is not in mirrord's grammar; `Display` names the entry and says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError {
    pub entry: String,
    pub reason: String,
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "filter entry {:?}: {} (expected [tcp://|udp://][name|address|subnet/mask][:port], e.g. \
             \"tcp://1.1.1.0/24:1337\", \"google.com\", \":53\", \"[::1]:80\")",
            self.entry, self.reason
        )
    }
}

impl std::error::Error for FilterError {}

impl AddressRule {
    pub fn parse(s: &str) -> Result<Self, FilterError> {
        let fail = |reason: String| FilterError {
            entry: s.to_string(),
            reason,
        };
        if s.trim().is_empty() {
            return Err(fail("the entry is empty".into()));
        }
        let (protocol, rest) = match s.find("://") {
            Some(i) => {
                let proto = match s[..i].to_ascii_lowercase().as_str() {
                    "any" => None,
                    "tcp" => Some(Proto::Tcp),
                    "udp" => Some(Proto::Udp),
                    other => {
                        return Err(fail(format!(
                            "unknown protocol {other:?} (tcp, udp or any)"
                        )))
                    }
                };
                (proto, &s[i + 3..])
            }
            None => (None, s),
        };

        // The host: a bracketed IPv6 address, or the longest run of name characters (digits and dots make an
        // IPv4 address), exactly the characters mirrord's parser takes.
        let (host, rest) = if let Some(inner) = rest.strip_prefix('[') {
            let end = inner
                .find(']')
                .ok_or_else(|| fail("'[' without ']'".into()))?;
            (Some(&inner[..end]), &inner[end + 1..])
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
                .unwrap_or(rest.len());
            ((end > 0).then(|| &rest[..end]), &rest[end..])
        };
        let (prefix, rest) = match rest.strip_prefix('/') {
            Some(r) => {
                let end = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
                if end == 0 {
                    return Err(fail("'/' must be followed by a prefix length".into()));
                }
                (Some(&r[..end]), &r[end..])
            }
            None => (None, rest),
        };
        let (port, rest) = match rest.strip_prefix(':') {
            Some(r) => {
                let end = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
                if end == 0 {
                    return Err(fail("':' must be followed by a port number".into()));
                }
                let port: u16 = r[..end]
                    .parse()
                    .map_err(|_| fail(format!("port {} is not in 0-65535", &r[..end])))?;
                (Some(port).filter(|p| *p != 0), &r[end..])
            }
            None => (None, rest),
        };
        if !rest.is_empty() {
            return Err(fail(format!("unexpected {rest:?} after the address")));
        }

        let bracketed = s.contains('[');
        let host = match (host, prefix) {
            (None, None) => None,
            (None, Some(_)) => return Err(fail("a subnet needs a base address".into())),
            (Some(h), prefix) => {
                let ip = h.parse::<IpAddr>().ok();
                if bracketed && !matches!(ip, Some(IpAddr::V6(_))) {
                    return Err(fail(format!("{h:?} in brackets is not an IPv6 address")));
                }
                match (ip, prefix) {
                    (Some(ip), None) => Some(HostPattern::Ip(ip.to_canonical())),
                    (Some(ip), Some(len)) => {
                        let max = if ip.is_ipv4() { 32 } else { 128 };
                        let len: u8 =
                            len.parse().ok().filter(|l| *l <= max).ok_or_else(|| {
                                fail(format!("prefix length {len} is over {max}"))
                            })?;
                        Some(HostPattern::Cidr(ip, len))
                    }
                    (None, Some(_)) => {
                        return Err(fail(format!("subnet base {h:?} is not an IP address")))
                    }
                    (None, None) => Some(HostPattern::Name(normalize_name(h))),
                }
            }
        };
        Ok(Self {
            protocol,
            host,
            port,
        })
    }

    /// Whether a connection over `proto` to `addr`, resolved from `host` when known, matches this entry.
    pub fn matches(&self, proto: Proto, addr: SocketAddr, host: Option<&str>) -> bool {
        if self.protocol.is_some_and(|p| p != proto) || self.port.is_some_and(|p| p != addr.port())
        {
            return false;
        }
        let ip = addr.ip().to_canonical();
        match &self.host {
            None => true,
            Some(HostPattern::Ip(p)) => p.is_unspecified() || *p == ip,
            Some(HostPattern::Cidr(net, len)) => cidr_contains(*net, *len, ip),
            Some(HostPattern::Name(n)) => host.is_some_and(|h| normalize_name(h) == *n),
        }
    }

    /// Whether a DNS query for `name` (for service `port`, when known) matches this entry. The protocol part is
    /// ignored, as a lookup has none; IP entries match a name only when it is that address written out.
    pub fn matches_query(&self, name: &str, port: Option<u16>) -> bool {
        if self.port.is_some_and(|p| Some(p) != port) {
            return false;
        }
        match &self.host {
            None => true,
            Some(HostPattern::Name(n)) => normalize_name(name) == *n,
            Some(HostPattern::Ip(p)) => {
                p.is_unspecified()
                    || name
                        .parse::<IpAddr>()
                        .is_ok_and(|ip| ip.to_canonical() == *p)
            }
            Some(HostPattern::Cidr(net, len)) => name
                .parse::<IpAddr>()
                .is_ok_and(|ip| cidr_contains(*net, *len, ip.to_canonical())),
        }
    }

    /// Whether the entry names addresses by IP or CIDR (not the unspecified wildcard): only such an entry can
    /// send loopback through the target.
    pub fn names_ip_explicitly(&self) -> bool {
        match &self.host {
            Some(HostPattern::Ip(ip)) => !ip.is_unspecified(),
            Some(HostPattern::Cidr(..)) => true,
            _ => false,
        }
    }
}

impl fmt::Display for AddressRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.protocol {
            Some(Proto::Tcp) => f.write_str("tcp://")?,
            Some(Proto::Udp) => f.write_str("udp://")?,
            None => {}
        }
        match &self.host {
            Some(HostPattern::Ip(IpAddr::V6(ip))) => write!(f, "[{ip}]")?,
            Some(HostPattern::Ip(ip)) => write!(f, "{ip}")?,
            Some(HostPattern::Cidr(IpAddr::V6(ip), len)) => write!(f, "[{ip}]/{len}")?,
            Some(HostPattern::Cidr(ip, len)) => write!(f, "{ip}/{len}")?,
            Some(HostPattern::Name(n)) => f.write_str(n)?,
            None => {}
        }
        match self.port {
            Some(p) => write!(f, ":{p}"),
            None if self.host.is_none() && self.protocol.is_none() => f.write_str(":0"),
            None => Ok(()),
        }
    }
}

impl std::str::FromStr for AddressRule {
    type Err = FilterError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn normalize_name(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

fn cidr_contains(net: IpAddr, len: u8, ip: IpAddr) -> bool {
    match (net.to_canonical(), ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(protocol: Option<Proto>, host: Option<HostPattern>, port: Option<u16>) -> AddressRule {
        AddressRule {
            protocol,
            host,
            port,
        }
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_mirrords_examples() {
        use HostPattern::*;
        let tcp = Some(Proto::Tcp);
        let udp = Some(Proto::Udp);
        let cases = [
            // From mirrord's docs (feature.network.outgoing.filter).
            (
                "udp://1.1.1.0/24:1337",
                rule(udp, Some(Cidr(ip("1.1.1.0"), 24)), Some(1337)),
            ),
            (
                "google.com:1337",
                rule(None, Some(Name("google.com".into())), Some(1337)),
            ),
            (
                "tcp://localhost:1337",
                rule(tcp, Some(Name("localhost".into())), Some(1337)),
            ),
            (":1337", rule(None, None, Some(1337))),
            (
                "tcp://1.1.1.0/24:1337",
                rule(tcp, Some(Cidr(ip("1.1.1.0"), 24)), Some(1337)),
            ),
            (
                "1.1.5.0/24",
                rule(None, Some(Cidr(ip("1.1.5.0"), 24)), None),
            ),
            (
                "google.com",
                rule(None, Some(Name("google.com".into())), None),
            ),
            (":53", rule(None, None, Some(53))),
            // From mirrord's parser tests.
            (
                "tcp://1.2.3.0/24:7777",
                rule(tcp, Some(Cidr(ip("1.2.3.0"), 24)), Some(7777)),
            ),
            (
                "tcp://[2800:3f0:4001:81e::2004]:7777",
                rule(tcp, Some(Ip(ip("2800:3f0:4001:81e::2004"))), Some(7777)),
            ),
            ("tcp://", rule(tcp, None, None)),
            (
                "tcp://google.com:7777",
                rule(tcp, Some(Name("google.com".into())), Some(7777)),
            ),
            (
                "rust-lang.org",
                rule(None, Some(Name("rust-lang.org".into())), None),
            ),
            (
                "localhost",
                rule(None, Some(Name("localhost".into())), None),
            ),
            (
                "1.2.3.0/24:7777",
                rule(None, Some(Cidr(ip("1.2.3.0"), 24)), Some(7777)),
            ),
            ("udp://:7777", rule(udp, None, Some(7777))),
            // The plan's examples and edge cases.
            (
                "tcp://db.internal:5432",
                rule(tcp, Some(Name("db.internal".into())), Some(5432)),
            ),
            (
                "tcp://db:5432",
                rule(tcp, Some(Name("db".into())), Some(5432)),
            ),
            ("[::1]:80", rule(None, Some(Ip(ip("::1"))), Some(80))),
            ("[::1]", rule(None, Some(Ip(ip("::1"))), None)),
            (
                "[fd00::]/8:443",
                rule(None, Some(Cidr(ip("fd00::"), 8)), Some(443)),
            ),
            (
                "[::ffff:10.0.0.1]:80",
                rule(None, Some(Ip(ip("10.0.0.1"))), Some(80)),
            ),
            ("10.0.0.1", rule(None, Some(Ip(ip("10.0.0.1"))), None)),
            (
                "0.0.0.0:443",
                rule(None, Some(Ip(ip("0.0.0.0"))), Some(443)),
            ),
            (
                "ANY://Example.COM.:0",
                rule(None, Some(Name("example.com".into())), None),
            ),
            ("TCP://:80", rule(tcp, None, Some(80))),
            (
                "my_host-1:8080",
                rule(None, Some(Name("my_host-1".into())), Some(8080)),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(AddressRule::parse(input).as_ref(), Ok(&want), "{input}");
        }
    }

    #[test]
    fn refuses_what_mirrord_refuses() {
        let cases = [
            ("tcp://google.com/24:7777", "not an IP"),
            (":7777udp://", "unknown protocol"),
            ("meow://", "unknown protocol"),
            ("", "empty"),
            ("1.2.3.4:99999", "not in 0-65535"),
            ("1.2.3.0/33", "over 32"),
            ("[fd00::]/129", "over 128"),
            ("::1", "port number"),
            ("[::1", "without ']'"),
            ("[db]:80", "not an IPv6"),
            ("/24", "base address"),
            ("host:", "port number"),
            ("a b", "unexpected"),
            ("1.2.3.4/:80", "prefix length"),
        ];
        for (input, why) in cases {
            let err = AddressRule::parse(input).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(why), "{input}: {text}");
            assert!(
                text.contains(&format!("{input:?}")),
                "the error names the entry: {text}"
            );
        }
    }

    #[test]
    fn display_parses_back() {
        for s in [
            "tcp://1.1.1.0/24:1337",
            "google.com",
            ":53",
            "udp://[::1]:80",
            "[fd00::]/8",
            "tcp://",
            "10.0.0.1",
        ] {
            let r = AddressRule::parse(s).unwrap();
            assert_eq!(AddressRule::parse(&r.to_string()).unwrap(), r, "{s} -> {r}");
        }
    }

    #[test]
    fn cidr_edges() {
        assert!(cidr_contains(ip("0.0.0.0"), 0, ip("255.1.2.3")));
        assert!(cidr_contains(ip("10.1.2.3"), 32, ip("10.1.2.3")));
        assert!(!cidr_contains(ip("10.1.2.3"), 32, ip("10.1.2.4")));
        assert!(cidr_contains(ip("::"), 0, ip("fd00::1")));
        assert!(!cidr_contains(ip("10.0.0.0"), 8, ip("fd00::1")));
        assert!(cidr_contains(ip("::ffff:10.0.0.0"), 8, ip("10.9.9.9")));
    }
}
