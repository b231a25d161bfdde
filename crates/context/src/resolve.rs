//! Name lookups as a target's process would make them with glibc (`hosts: files dns`): its
//! `ROOT/etc/hosts` first, then the nameservers of its `ROOT/etc/resolv.conf` with its
//! `search` list and `ndots`, glibc's way of trying the candidates and of telling "no such
//! name" from "no address of that family" from "try again".
//!
//! The queries themselves go through hickory-resolver on the runtime of a [`crate::Netns`]
//! thread, so their sockets, and so their source addresses and routes, are the target's.
//! The parsed files (and hickory's answer cache with them) are kept per root until a file's
//! mtime, size or inode changes (kubelet and container runtimes replace them).

use crate::error::DnsError;
use hickory_resolver::config::{
    NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts, ServerOrderingStrategy,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError as HickoryDnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RecordType};
use hickory_resolver::TokioResolver;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

/// The address family asked for. `Any` gives IPv4 addresses first, then IPv6 ones, each in
/// the order of their source (hosts file lines, DNS answers); callers that want RFC 6724
/// ordering sort themselves (glibc's `getaddrinfo` does, after this step).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Family {
    Any,
    V4,
    V6,
}

impl Family {
    fn wants(self, ip: &IpAddr) -> bool {
        match self {
            Family::Any => true,
            Family::V4 => ip.is_ipv4(),
            Family::V6 => ip.is_ipv6(),
        }
    }
}

/// A successful lookup: never empty. `canonical` is the official name: the first name of
/// the hosts line, or the owner of the DNS address records (the end of a CNAME chain, or
/// the search-expanded name), without the trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolved {
    pub addrs: Vec<IpAddr>,
    pub canonical: Option<String>,
}

/// Roots kept in a cache at most; the least recently used goes first.
const MAX_ROOTS: usize = 32;

/// The parsed files of the roots a [`crate::Netns`] thread resolved for.
#[derive(Default)]
pub(crate) struct DnsCache {
    roots: HashMap<PathBuf, RootState>,
}

struct RootState {
    hosts_stamp: Option<Stamp>,
    hosts: Arc<Hosts>,
    conf_stamp: Option<Stamp>,
    conf: Arc<DnsConf>,
    used: Instant,
}

/// What identifies a version of a file: a rewrite in place changes mtime or size, a
/// replacement (rename over it, a new bind mount) the inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    mtime: Option<SystemTime>,
    len: u64,
    ino: u64,
    dev: u64,
}

/// resolv.conf, ready to query with.
struct DnsConf {
    resolver: TokioResolver,
    search: Vec<String>,
    ndots: usize,
    /// glibc's `options no-aaaa`: no AAAA query is ever sent.
    no_aaaa: bool,
}

/// Resolves `name` as a process whose root is `root` would. Must run on the runtime whose
/// thread is in the namespace the queries should leave from.
pub(crate) async fn resolve(
    cache: &Mutex<DnsCache>,
    root: &Path,
    name: &str,
    family: Family,
) -> Result<Resolved, DnsError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        // A numeric host is its own answer (getaddrinfo does not ask anyone either).
        return if family.wants(&ip) {
            Ok(Resolved {
                addrs: vec![ip],
                canonical: Some(name.to_owned()),
            })
        } else {
            Err(DnsError::NoData)
        };
    }
    if name.is_empty() {
        return Err(DnsError::NoName);
    }
    let (hosts, conf) = snapshot(cache, root)?;
    if let Some(found) = hosts.lookup(name, family) {
        return Ok(found);
    }
    search(&conf, name, family).await
}

/// The current hosts and resolv.conf of `root`, parsed again only when they changed.
fn snapshot(cache: &Mutex<DnsCache>, root: &Path) -> Result<(Arc<Hosts>, Arc<DnsConf>), DnsError> {
    let hosts_path = root.join("etc/hosts");
    let conf_path = root.join("etc/resolv.conf");
    let hosts_stamp = stamp(&hosts_path)?;
    let conf_stamp = stamp(&conf_path)?;
    // A poisoned lock only means another lookup panicked; the map itself stays coherent.
    let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(state) = cache.roots.get_mut(root) {
        if state.hosts_stamp != hosts_stamp {
            state.hosts = Arc::new(Hosts::parse(&read_text(&hosts_path)?));
            state.hosts_stamp = hosts_stamp;
        }
        if state.conf_stamp != conf_stamp {
            state.conf = Arc::new(DnsConf::new(&read_text(&conf_path)?)?);
            state.conf_stamp = conf_stamp;
        }
        state.used = Instant::now();
        return Ok((state.hosts.clone(), state.conf.clone()));
    }
    let hosts = Arc::new(Hosts::parse(&read_text(&hosts_path)?));
    let conf = Arc::new(DnsConf::new(&read_text(&conf_path)?)?);
    if cache.roots.len() >= MAX_ROOTS {
        let oldest = cache
            .roots
            .iter()
            .min_by_key(|(_, s)| s.used)
            .map(|(p, _)| p.clone());
        if let Some(oldest) = oldest {
            cache.roots.remove(&oldest);
        }
    }
    cache.roots.insert(
        root.to_owned(),
        RootState {
            hosts_stamp,
            hosts: hosts.clone(),
            conf_stamp,
            conf: conf.clone(),
            used: Instant::now(),
        },
    );
    Ok((hosts, conf))
}

fn stamp(path: &Path) -> Result<Option<Stamp>, DnsError> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some(Stamp {
            mtime: m.modified().ok(),
            len: m.len(),
            ino: m.ino(),
            dev: m.dev(),
        })),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(unreadable(path, e)),
    }
}

/// A file's text; a missing file reads as empty (glibc: no hosts entries, default
/// nameserver).
fn read_text(path: &Path) -> Result<String, DnsError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(unreadable(path, e)),
    }
}

fn unreadable(path: &Path, e: std::io::Error) -> DnsError {
    let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
        " (the operator must run as the target's user, or as root / with CAP_SYS_PTRACE)"
    } else {
        ""
    };
    DnsError::Fail(format!("cannot read {}: {e}{hint}", path.display()))
}

/// An `/etc/hosts` file: address, then names (the first is the official one).
#[derive(Debug, Default)]
pub(crate) struct Hosts {
    lines: Vec<(IpAddr, Vec<String>)>,
}

impl Hosts {
    pub(crate) fn parse(text: &str) -> Self {
        let lines = text
            .lines()
            .filter_map(|line| {
                let line = line.split('#').next().unwrap_or_default();
                let mut fields = line.split_whitespace();
                let addr = fields.next()?;
                // A link-local address may carry its zone (`fe80::1%eth0`): the address
                // stands without it.
                let ip: IpAddr = addr.split('%').next()?.parse().ok()?;
                let names: Vec<String> = fields.map(str::to_owned).collect();
                (!names.is_empty()).then_some((ip, names))
            })
            .collect();
        Hosts { lines }
    }

    /// Every address of `family` given to `name` (case-insensitively, official name or
    /// alias), IPv4 first for `Any`, without repeats; `None` when there is none, so that
    /// DNS is asked (glibc's files backend answers "not found" for that family).
    pub(crate) fn lookup(&self, name: &str, family: Family) -> Option<Resolved> {
        let mut canonical = None;
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for (ip, names) in &self.lines {
            if !family.wants(ip) || !names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
                continue;
            }
            canonical.get_or_insert_with(|| names[0].clone());
            let list = if ip.is_ipv4() { &mut v4 } else { &mut v6 };
            if !list.contains(ip) {
                list.push(*ip);
            }
        }
        v4.extend(v6);
        (!v4.is_empty()).then_some(Resolved {
            addrs: v4,
            canonical,
        })
    }
}

impl DnsConf {
    fn new(text: &str) -> Result<Self, DnsError> {
        // Like glibc, a line it can't read is skipped, not fatal.
        let (mut parsed, errors) = resolv_conf::Config::parse_with_errors(text.as_bytes());
        if !errors.is_empty() {
            tracing::debug!(
                target: "mirrord_context",
                errors = errors.len(),
                "resolv.conf has lines that were skipped"
            );
        }
        // glibc reads at most 3 nameservers and 6 search domains.
        parsed.glibc_normalize();
        // No nameserver: glibc asks the loopback resolver (in the target's namespace).
        let servers: Vec<NameServerConfig> = parsed
            .get_nameservers_or_local()
            .iter()
            .map(|ip| NameServerConfig::udp_and_tcp(ip.into()))
            .collect();
        // Only what the file says: never the host's name or domain (what hickory's own
        // system config falls back to).
        let search = parsed
            .get_last_search_or_domain()
            .filter(|d| d.as_str() != "--")
            .map(|d| d.trim_end_matches('.').to_owned())
            .filter(|d| !d.is_empty())
            .collect();
        let mut opts = ResolverOpts::default();
        opts.timeout = std::time::Duration::from_secs(u64::from(parsed.timeout.max(1)));
        opts.attempts = parsed.attempts.max(1) as usize;
        opts.edns0 = parsed.edns0;
        // We read the target's hosts file ourselves; hickory's would be the host's.
        opts.use_hosts_file = ResolveHosts::Never;
        // Servers in the file's order, one at a time, as glibc does (`rotate` aside).
        opts.num_concurrent_reqs = 1;
        opts.server_ordering_strategy = if parsed.rotate {
            ServerOrderingStrategy::RoundRobin
        } else {
            ServerOrderingStrategy::UserProvidedOrder
        };
        let resolver = TokioResolver::builder_with_config(
            ResolverConfig::from_parts(None, vec![], servers),
            TokioRuntimeProvider::default(),
        )
        .with_options(opts)
        .build()
        .map_err(|e| DnsError::Fail(format!("cannot set up a resolver: {e}")))?;
        Ok(DnsConf {
            resolver,
            search,
            ndots: parsed.ndots as usize,
            no_aaaa: parsed.no_aaaa,
        })
    }
}

/// The names glibc's `res_search` tries for `name`, in order; `true` marks the name as
/// given when tried before the search list (its failure is what gets reported).
pub(crate) fn candidates(name: &str, search: &[String], ndots: usize) -> Vec<(String, bool)> {
    if name.ends_with('.') {
        return vec![(name.to_owned(), false)];
    }
    let dots = name.matches('.').count();
    let mut out = Vec::new();
    if dots >= ndots {
        out.push((name.to_owned(), true));
    }
    for domain in search {
        out.push((format!("{name}.{domain}"), false));
    }
    if dots < ndots {
        out.push((name.to_owned(), false));
    }
    out
}

/// How one query failed, as glibc's search loop needs to know.
#[derive(Debug, Clone, PartialEq)]
enum Failure {
    NoName,
    NoData,
    /// SERVFAIL/REFUSED: the next candidate is still tried.
    ServFail,
    /// No answer at all (timeout, unreachable): the search stops.
    NoAnswer,
    Fail(String),
}

async fn search(conf: &DnsConf, name: &str, family: Family) -> Result<Resolved, DnsError> {
    let mut first_error = None;
    let mut got_nodata = false;
    let mut got_servfail = false;
    let mut last = Failure::NoName;
    for (candidate, as_is_first) in candidates(name, &conf.search, conf.ndots) {
        let Ok(mut fqdn) = Name::from_str_relaxed(&candidate) else {
            // Not a domain name (too long, empty label): nothing can answer it.
            last = Failure::NoName;
            continue;
        };
        fqdn.set_fqdn(true);
        let failure = match query(conf, fqdn, family).await {
            Ok(found) => return Ok(found),
            Err(f) => f,
        };
        tracing::trace!(target: "mirrord_context", %candidate, ?failure, "candidate failed");
        if as_is_first {
            first_error = Some(failure);
            continue;
        }
        match &failure {
            Failure::NoName => {}
            Failure::NoData => got_nodata = true,
            Failure::ServFail => got_servfail = true,
            Failure::NoAnswer | Failure::Fail(_) => {
                last = failure;
                break;
            }
        }
        last = failure;
    }
    let failure = match first_error {
        Some(f) => f,
        None if got_nodata => Failure::NoData,
        None if got_servfail => Failure::ServFail,
        None => last,
    };
    Err(match failure {
        Failure::NoName => DnsError::NoName,
        Failure::NoData => DnsError::NoData,
        Failure::ServFail | Failure::NoAnswer => DnsError::Again,
        Failure::Fail(m) => DnsError::Fail(m),
    })
}

/// One fully qualified name, A and/or AAAA (both at once for `Any`).
async fn query(conf: &DnsConf, fqdn: Name, family: Family) -> Result<Resolved, Failure> {
    let want_v6 = !conf.no_aaaa;
    match family {
        Family::V4 => one(conf, fqdn, RecordType::A).await,
        Family::V6 if want_v6 => one(conf, fqdn, RecordType::AAAA).await,
        Family::V6 => Err(Failure::NoData),
        Family::Any if !want_v6 => one(conf, fqdn, RecordType::A).await,
        Family::Any => {
            let (v4, v6) = tokio::join!(
                one(conf, fqdn.clone(), RecordType::A),
                one(conf, fqdn, RecordType::AAAA)
            );
            combine(v4, v6)
        }
    }
}

/// Both families' outcomes as one: any address is a success (IPv4 first); otherwise the
/// most telling failure (one that may pass, then a hard one, then "the name exists").
fn combine(
    v4: Result<Resolved, Failure>,
    v6: Result<Resolved, Failure>,
) -> Result<Resolved, Failure> {
    match (v4, v6) {
        (Ok(mut a), Ok(b)) => {
            a.addrs.extend(b.addrs);
            Ok(a)
        }
        (Ok(a), Err(_)) | (Err(_), Ok(a)) => Ok(a),
        (Err(a), Err(b)) => {
            let rank = |f: &Failure| match f {
                Failure::NoAnswer => 0,
                Failure::ServFail => 1,
                Failure::Fail(_) => 2,
                Failure::NoData => 3,
                Failure::NoName => 4,
            };
            Err(if rank(&b) < rank(&a) { b } else { a })
        }
    }
}

async fn one(conf: &DnsConf, fqdn: Name, rtype: RecordType) -> Result<Resolved, Failure> {
    let lookup = conf
        .resolver
        .lookup(fqdn, rtype)
        .await
        .map_err(failure_of)?;
    let mut canonical = None;
    let addrs: Vec<IpAddr> = lookup
        .answers()
        .iter()
        .filter(|r| r.record_type() == rtype)
        .filter_map(|r| {
            let ip = r.data.ip_addr()?;
            canonical.get_or_insert_with(|| r.name.to_ascii().trim_end_matches('.').to_owned());
            Some(ip)
        })
        .collect();
    if addrs.is_empty() {
        // A CNAME without the address record behind it: the name exists, the family not.
        return Err(Failure::NoData);
    }
    Ok(Resolved { addrs, canonical })
}

fn failure_of(e: NetError) -> Failure {
    match &e {
        NetError::Dns(HickoryDnsError::NoRecordsFound(nr)) => {
            if nr.response_code == ResponseCode::NXDomain {
                Failure::NoName
            } else {
                Failure::NoData
            }
        }
        NetError::Dns(HickoryDnsError::ResponseCode(ResponseCode::ServFail))
        | NetError::Dns(HickoryDnsError::ResponseCode(ResponseCode::Refused)) => Failure::ServFail,
        // No nameserver answered: glibc's "temporary failure in name resolution".
        NetError::Timeout | NetError::Io(_) | NetError::NoConnections | NetError::Busy => {
            Failure::NoAnswer
        }
        _ => Failure::Fail(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn hosts_lines_give_addresses_in_file_order_ipv4_first() {
        let hosts = Hosts::parse(
            "# comment line\n\
             127.0.0.1 localhost\n\
             ::1 localhost ip6-localhost\n\
             10.0.0.5   svc.test  svc   # trailing comment\n\
             fd00::5 svc.test\n\
             10.0.0.6\tSVC.test\n\
             10.0.0.5 svc.test\n\
             not-an-ip svc.test\n\
             10.0.0.9\n\
             fe80::1%eth0 linklocal\n",
        );
        let any = hosts.lookup("svc.test", Family::Any).unwrap();
        assert_eq!(
            any.addrs,
            vec![v4("10.0.0.5"), v4("10.0.0.6"), v4("fd00::5")],
            "IPv4 first, file order, no repeats"
        );
        assert_eq!(any.canonical.as_deref(), Some("svc.test"));
        // An alias answers with the line's official name; names are case-insensitive.
        let alias = hosts.lookup("SVC", Family::V4).unwrap();
        assert_eq!(alias.addrs, vec![v4("10.0.0.5")]);
        assert_eq!(alias.canonical.as_deref(), Some("svc.test"));
        assert_eq!(
            hosts.lookup("svc.test", Family::V6).unwrap().addrs,
            vec![v4("fd00::5")]
        );
        assert_eq!(
            hosts.lookup("ip6-localhost", Family::Any).unwrap().addrs,
            vec![v4("::1")]
        );
        assert_eq!(
            hosts.lookup("linklocal", Family::V6).unwrap().addrs,
            vec![v4("fe80::1")]
        );
        // No address of the family: not an answer, so DNS gets asked.
        assert!(hosts.lookup("ip6-localhost", Family::V4).is_none());
        assert!(hosts.lookup("other", Family::Any).is_none());
        // A comment is not a name.
        assert!(hosts.lookup("trailing", Family::Any).is_none());
        assert!(hosts.lookup("comment", Family::Any).is_none());
    }

    #[test]
    fn search_candidates_follow_glibc() {
        let search = vec![
            "ns.svc.cluster.local".to_owned(),
            "cluster.local".to_owned(),
        ];
        let names = |name, ndots| -> Vec<(String, bool)> { candidates(name, &search, ndots) };
        // Fewer dots than ndots: the search list first, the name as given last.
        assert_eq!(
            names("db", 5),
            vec![
                ("db.ns.svc.cluster.local".into(), false),
                ("db.cluster.local".into(), false),
                ("db".into(), false),
            ]
        );
        // Enough dots: the name as given first.
        assert_eq!(
            names("a.b", 1),
            vec![
                ("a.b".into(), true),
                ("a.b.ns.svc.cluster.local".into(), false),
                ("a.b.cluster.local".into(), false),
            ]
        );
        // A trailing dot: only the name.
        assert_eq!(names("a.b.", 5), vec![("a.b.".into(), false)]);
        assert_eq!(candidates("x", &[], 1), vec![("x".into(), false)]);
    }

    #[test]
    fn resolv_conf_options_are_read_and_the_host_never_leaks_in() {
        let conf = DnsConf::new(
            "nameserver 10.96.0.10\nsearch ns.svc.cluster.local svc.cluster.local.\n\
             options ndots:5 timeout:2 attempts:3 no-aaaa\n",
        )
        .unwrap();
        assert_eq!(conf.search, ["ns.svc.cluster.local", "svc.cluster.local"]);
        assert_eq!(conf.ndots, 5);
        assert!(conf.no_aaaa);
        let opts = conf.resolver.options();
        assert_eq!(opts.timeout, std::time::Duration::from_secs(2));
        assert_eq!(opts.attempts, 3);
        assert_eq!(opts.use_hosts_file, ResolveHosts::Never);
        // Nothing in the file: no search list (not the host's domain), loopback server.
        let empty = DnsConf::new("").unwrap();
        assert!(empty.search.is_empty());
        assert_eq!(empty.ndots, 1);
        // `domain` is the search list when no `search` follows it.
        let domain = DnsConf::new("domain corp.test\nnameserver 127.0.0.1\n").unwrap();
        assert_eq!(domain.search, ["corp.test"]);
    }

    #[test]
    fn families_combine_ipv4_first_and_failures_by_what_tells_most() {
        let r = |s: &str, c: &str| Resolved {
            addrs: vec![v4(s)],
            canonical: Some(c.into()),
        };
        let both = combine(Ok(r("10.0.0.1", "a")), Ok(r("fd00::1", "a"))).unwrap();
        assert_eq!(both.addrs, vec![v4("10.0.0.1"), v4("fd00::1")]);
        let only6 = combine(Err(Failure::NoData), Ok(r("fd00::1", "a"))).unwrap();
        assert_eq!(only6.addrs, vec![v4("fd00::1")]);
        assert_eq!(
            combine(Err(Failure::NoName), Err(Failure::NoData)),
            Err(Failure::NoData)
        );
        assert_eq!(
            combine(Err(Failure::NoData), Err(Failure::NoAnswer)),
            Err(Failure::NoAnswer)
        );
        assert_eq!(
            combine(Err(Failure::NoName), Err(Failure::NoName)),
            Err(Failure::NoName)
        );
    }

    #[test]
    fn dns_errors_map_to_glibcs_outcomes() {
        use hickory_resolver::net::NoRecords;
        use hickory_resolver::proto::op::Query;
        let q = Query::query(Name::from_ascii("x.test.").unwrap(), RecordType::A);
        let nx = NetError::Dns(HickoryDnsError::NoRecordsFound(NoRecords::new(
            q.clone(),
            ResponseCode::NXDomain,
        )));
        let nodata = NetError::Dns(HickoryDnsError::NoRecordsFound(NoRecords::new(
            q,
            ResponseCode::NoError,
        )));
        assert_eq!(failure_of(nx), Failure::NoName);
        assert_eq!(failure_of(nodata), Failure::NoData);
        assert_eq!(
            failure_of(NetError::Dns(HickoryDnsError::ResponseCode(
                ResponseCode::ServFail
            ))),
            Failure::ServFail
        );
        assert_eq!(failure_of(NetError::Timeout), Failure::NoAnswer);
        assert!(matches!(
            failure_of(NetError::Msg("odd".into())),
            Failure::Fail(m) if m == "odd"
        ));
    }
}
