//! [`LayerConfig`]: what the layer redirects, handed to it once in [`crate::ENV_CONFIG`].

use std::fmt;
use std::net::SocketAddr;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::filter::{AddressFilter, Proto};

/// The layer's whole configuration: mirrord's `feature.network.outgoing` and `feature.network.dns`, and whether
/// the ports the process listens on are told (incoming traffic without a port list).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct LayerConfig {
    pub outgoing: Outgoing,
    pub dns: Dns,
    /// Tell `mirrordctl` each TCP port the process listens on ([`crate::Request::Listen`]) and stops listening
    /// on.
    pub listen: bool,
    /// mirrord's `feature.fs`.
    pub files: crate::files::Files,
}

/// mirrord's `feature.network.outgoing`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub tcp: bool,
    /// Connected UDP sockets (mirrord's `udp`).
    pub udp: bool,
    pub filter: Option<AddressFilter>,
}

impl Default for Outgoing {
    fn default() -> Self {
        Self {
            tcp: true,
            udp: true,
            filter: None,
        }
    }
}

/// mirrord's `feature.network.dns`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Dns {
    pub enabled: bool,
    pub filter: Option<AddressFilter>,
}

impl Default for Dns {
    fn default() -> Self {
        Self {
            enabled: true,
            filter: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// The variable is not base64 (standard alphabet, padded).
    Base64(String),
    /// The bytes are not a `LayerConfig` of this version.
    Decode(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Base64(e) => write!(f, "{} is not base64: {e}", crate::ENV_CONFIG),
            Self::Decode(e) => write!(
                f,
                "{} does not hold a layer configuration: {e}",
                crate::ENV_CONFIG
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

impl LayerConfig {
    /// The value of [`crate::ENV_CONFIG`]: postcard, then base64.
    pub fn to_env(&self) -> String {
        // Serializing plain data into a Vec cannot fail.
        let bytes = postcard::to_stdvec(self).expect("LayerConfig serializes");
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    pub fn from_env(s: &str) -> Result<Self, ConfigError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map_err(|e| ConfigError::Base64(e.to_string()))?;
        postcard::from_bytes(&bytes).map_err(|e| ConfigError::Decode(e.to_string()))
    }
}

impl Outgoing {
    /// Whether a TCP connect to `addr` (resolved from `host` when known) goes through the target.
    ///
    /// Loopback, unspecified addresses, port 0, multicast and broadcast stay local unless a `remote` rule names them by IP or CIDR
    /// (a `:port` or a name alone does not): issue 27 keeps the developer's own machine reachable, where mirrord
    /// would send loopback to the pod. IPv4-mapped IPv6 addresses are treated as IPv4.
    pub fn remote_tcp(&self, addr: SocketAddr, host: Option<&str>) -> bool {
        self.tcp && self.remote(Proto::Tcp, addr, host)
    }

    /// Whether a UDP socket connected to `addr` goes through the target: as [`Outgoing::remote_tcp`], with the
    /// rules that name `udp://` (or no protocol).
    pub fn remote_udp(&self, addr: SocketAddr, host: Option<&str>) -> bool {
        self.udp && self.remote(Proto::Udp, addr, host)
    }

    fn remote(&self, proto: Proto, addr: SocketAddr, host: Option<&str>) -> bool {
        let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
        // Multicast and broadcast (mDNS, discovery) are the local network's, like loopback.
        let broadcast = addr.ip() == std::net::IpAddr::V4(std::net::Ipv4Addr::BROADCAST);
        let special = addr.ip().is_loopback()
            || addr.ip().is_unspecified()
            || addr.port() == 0
            || addr.ip().is_multicast()
            || broadcast;
        let any = |rules: &[crate::AddressRule], explicit_ip: bool| {
            rules
                .iter()
                .any(|r| r.matches(proto, addr, host) && (!explicit_ip || r.names_ip_explicitly()))
        };
        if special {
            return matches!(&self.filter, Some(AddressFilter::Remote(rules)) if any(rules, true));
        }
        match &self.filter {
            None => true,
            Some(AddressFilter::Remote(rules)) => any(rules, false),
            Some(AddressFilter::Local(rules)) => !any(rules, false),
        }
    }
}

impl Dns {
    /// Whether `name` (looked up for service `port`, when one was given) is resolved by the target.
    pub fn remote(&self, name: &str, port: Option<u16>) -> bool {
        if !self.enabled {
            return false;
        }
        match &self.filter {
            None => true,
            Some(AddressFilter::Remote(rules)) => rules.iter().any(|r| r.matches_query(name, port)),
            Some(AddressFilter::Local(rules)) => !rules.iter().any(|r| r.matches_query(name, port)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AddressRule;

    fn rules(list: &[&str]) -> Vec<AddressRule> {
        list.iter()
            .map(|s| AddressRule::parse(s).unwrap())
            .collect()
    }

    fn outgoing(filter: Option<AddressFilter>) -> Outgoing {
        Outgoing {
            filter,
            ..Outgoing::default()
        }
    }

    #[test]
    fn env_round_trip() {
        let cfg = LayerConfig {
            outgoing: Outgoing {
                tcp: true,
                udp: false,
                filter: Some(AddressFilter::Local(rules(&[
                    "tcp://1.1.1.0/24:1337",
                    ":53",
                    "google.com",
                ]))),
            },
            dns: Dns {
                enabled: true,
                filter: Some(AddressFilter::Remote(rules(&["db.internal"]))),
            },
            listen: true,
            files: crate::files::Files {
                mode: crate::files::FsMode::Read,
                read_only: vec!["^/etc/app".into()],
                ..Default::default()
            },
        };
        let env = cfg.to_env();
        assert!(
            env.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b)),
            "{env}"
        );
        assert_eq!(LayerConfig::from_env(&env).unwrap(), cfg);
        assert_eq!(
            LayerConfig::from_env(&LayerConfig::default().to_env()).unwrap(),
            LayerConfig::default()
        );
    }

    #[test]
    fn env_errors_name_the_variable() {
        let e = LayerConfig::from_env("not base64!").unwrap_err();
        assert!(matches!(e, ConfigError::Base64(_)));
        assert!(e.to_string().contains("MIRRORD_LAYER_CONFIG"), "{e}");
        let e = LayerConfig::from_env("AAAA").unwrap_err();
        assert!(matches!(e, ConfigError::Decode(_)), "{e:?}");
    }

    #[test]
    fn defaults_are_mirrords() {
        let c = LayerConfig::default();
        assert!(c.outgoing.tcp && c.outgoing.udp && c.outgoing.filter.is_none());
        assert!(c.dns.enabled && c.dns.filter.is_none());
    }

    #[test]
    fn remote_tcp_table() {
        let unfiltered = outgoing(None);
        let remote = |l: &[&str]| outgoing(Some(AddressFilter::Remote(rules(l))));
        let local = |l: &[&str]| outgoing(Some(AddressFilter::Local(rules(l))));
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        // (config, addr, host, expected)
        let cases: Vec<(Outgoing, &str, Option<&str>, bool)> = vec![
            (unfiltered.clone(), "10.0.0.1:80", None, true),
            (unfiltered.clone(), "[fd00::1]:80", None, true),
            // Loopback, unspecified and port 0 are local without an explicit rule.
            (unfiltered.clone(), "127.0.0.1:80", None, false),
            (unfiltered.clone(), "127.9.9.9:80", None, false),
            (unfiltered.clone(), "[::1]:80", None, false),
            (unfiltered.clone(), "[::ffff:127.0.0.1]:80", None, false),
            (unfiltered.clone(), "0.0.0.0:80", None, false),
            (unfiltered.clone(), "10.0.0.1:0", None, false),
            (remote(&["127.0.0.1"]), "127.0.0.1:80", None, true),
            (remote(&["127.0.0.1"]), "[::ffff:127.0.0.1]:80", None, true),
            (remote(&["127.0.0.0/8:5432"]), "127.0.0.2:5432", None, true),
            (remote(&["127.0.0.0/8:5432"]), "127.0.0.2:5433", None, false),
            (remote(&["[::1]:80"]), "[::1]:80", None, true),
            // ... but not by port or name alone, nor by the unspecified wildcard.
            (remote(&[":80"]), "127.0.0.1:80", None, false),
            (
                remote(&["localhost"]),
                "127.0.0.1:80",
                Some("localhost"),
                false,
            ),
            (remote(&["0.0.0.0"]), "127.0.0.1:80", None, false),
            (local(&["10.0.0.0/8"]), "127.0.0.1:80", None, false),
            // mirrord's filter semantics.
            (remote(&[":53"]), "10.0.0.1:53", None, true),
            (remote(&[":53"]), "10.0.0.1:54", None, false),
            (remote(&["udp://:53"]), "10.0.0.1:53", None, false),
            (
                remote(&["tcp://1.1.1.0/24:1337"]),
                "1.1.1.7:1337",
                None,
                true,
            ),
            (remote(&["1.1.1.0/24:1337"]), "1.1.2.7:1337", None, false),
            (
                remote(&["google.com"]),
                "142.250.1.1:443",
                Some("google.com"),
                true,
            ),
            (
                remote(&["google.com"]),
                "142.250.1.1:443",
                Some("GOOGLE.com."),
                true,
            ),
            (remote(&["google.com"]), "142.250.1.1:443", None, false),
            (
                remote(&["google.com:80"]),
                "142.250.1.1:443",
                Some("google.com"),
                false,
            ),
            (remote(&["0.0.0.0:443"]), "142.250.1.1:443", None, true),
            (
                local(&["tcp://db:5432"]),
                "10.0.0.5:5432",
                Some("db"),
                false,
            ),
            (
                local(&["tcp://db:5432"]),
                "10.0.0.5:5432",
                Some("cache"),
                true,
            ),
            (local(&[":53", "10.0.0.0/8"]), "10.1.1.1:80", None, false),
            (local(&[":53", "10.0.0.0/8"]), "11.1.1.1:80", None, true),
            (local(&["[fd00::]/8"]), "[fd12::1]:80", None, false),
            (local(&["any://"]), "10.0.0.1:80", None, false),
        ];
        for (i, (cfg, addr, host, want)) in cases.iter().enumerate() {
            assert_eq!(
                cfg.remote_tcp(a(addr), *host),
                *want,
                "case {i}: {cfg:?} {addr} {host:?}"
            );
        }
        let off = Outgoing {
            tcp: false,
            ..Outgoing::default()
        };
        assert!(!off.remote_tcp(a("10.0.0.1:80"), None));
    }

    #[test]
    fn remote_udp_follows_the_same_rules_with_udp_ones() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let remote = |l: &[&str]| outgoing(Some(AddressFilter::Remote(rules(l))));
        assert!(outgoing(None).remote_udp(a("10.0.0.1:8125"), None));
        assert!(!outgoing(None).remote_udp(a("127.0.0.1:8125"), None));
        assert!(!outgoing(None).remote_udp(a("224.0.0.251:5353"), None));
        assert!(!outgoing(None).remote_udp(a("255.255.255.255:67"), None));
        assert!(!outgoing(None).remote_udp(a("[ff02::fb]:5353"), None));
        assert!(remote(&["224.0.0.251"]).remote_udp(a("224.0.0.251:5353"), None));
        assert!(remote(&["udp://:53"]).remote_udp(a("10.0.0.1:53"), None));
        assert!(!remote(&["tcp://:53"]).remote_udp(a("10.0.0.1:53"), None));
        assert!(remote(&[":53"]).remote_udp(a("10.0.0.1:53"), None));
        let off = Outgoing {
            udp: false,
            ..Outgoing::default()
        };
        assert!(!off.remote_udp(a("10.0.0.1:53"), None));
        assert!(off.remote_tcp(a("10.0.0.1:53"), None));
    }

    #[test]
    fn dns_remote_table() {
        let on = Dns::default();
        assert!(on.remote("db.internal", None));
        assert!(!Dns {
            enabled: false,
            filter: None
        }
        .remote("db.internal", None));
        let remote = Dns {
            enabled: true,
            filter: Some(AddressFilter::Remote(rules(&["db.internal", ":5432"]))),
        };
        assert!(remote.remote("db.internal", None));
        assert!(remote.remote("DB.Internal.", Some(80)));
        assert!(!remote.remote("other.internal", None));
        assert!(remote.remote("other.internal", Some(5432)));
        assert!(!remote.remote("x.db.internal", None));
        let local = Dns {
            enabled: true,
            filter: Some(AddressFilter::Local(rules(&["example.com:443"]))),
        };
        assert!(!local.remote("example.com", Some(443)));
        assert!(local.remote("example.com", Some(80)));
        assert!(local.remote("example.com", None));
        assert!(local.remote("db", None));
    }
}
