//! What a session will ask for, from the command line and the mirrord config file: flags
//! override the file, the file overrides the defaults.

use crate::config_file::{self, FileConfig};
use crate::exit::Usage;
use mirrord_layer_proto::LayerConfig;
use mirrord_protocol::{
    ConcurrentSteal, ContextRequest, EnvSelect, FilesAccess, HttpFilterSpec, PortMode, TargetRef,
    TARGETLESS,
};
use std::net::SocketAddr;
use std::path::PathBuf;

/// One port of the session: the target's port, where the local process listens, and the
/// filter on it (none: every request, or raw TCP).
#[derive(Debug, Clone, PartialEq)]
pub struct PortPlan {
    pub remote: u16,
    pub local: SocketAddr,
    pub filter: Option<HttpFilterSpec>,
}

/// `exec` without a port list (mirrord's way): each port the process listens on is
/// stolen or mirrored (the target's port of the same number) once it listens, and given
/// back when it stops.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ListenPlan {
    /// `ignore_ports`: left alone.
    pub ignore: Vec<u16>,
    /// `--header` and friends, else the file's filter...
    pub filter: Option<HttpFilterSpec>,
    /// ...on these remote ports only (`http_filter.ports`; absent: all).
    pub filter_ports: Option<Vec<u16>>,
}

impl ListenPlan {
    /// The target's port for local port `local`, unless it is left alone.
    pub fn remote(&self, local: u16) -> Option<u16> {
        (!self.ignore.contains(&local)).then_some(local)
    }

    /// The filter on remote port `remote`.
    pub fn filter(&self, remote: u16) -> Option<HttpFilterSpec> {
        self.filter.clone().filter(|_| {
            self.filter_ports
                .as_ref()
                .is_none_or(|only| only.contains(&remote))
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub target: TargetRef,
    pub ports: Vec<PortPlan>,
    pub mode: PortMode,
    pub on_concurrent_steal: ConcurrentSteal,
    pub copy_target: bool,
    pub scale_down: bool,
    /// What `exec`'s process gets of the target besides traffic (nothing for `steal` and
    /// `mirror`, which run no process).
    pub context: ContextPlan,
    /// `exec` without a port list: its ports are added as it listens.
    pub listen: Option<ListenPlan>,
    /// `--profile`, else the config file's `profile`.
    pub profile: Option<String>,
}

/// `exec`'s context: what is asked of the operator, what the layer redirects, and what
/// is done to the environment locally.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ContextPlan {
    pub request: ContextRequest,
    pub layer: LayerConfig,
    /// `feature.env.override`: set locally, over the target's.
    pub overrides: Vec<(String, String)>,
    /// `feature.env.env_file`: a dotenv file read locally, over the target's.
    pub env_file: Option<PathBuf>,
    /// `feature.env.unset`: removed, whatever their case.
    pub unset: Vec<String>,
    /// `feature.env.mapping`: (pattern over names, value), for the target's and the env
    /// file's variables.
    pub mapping: Vec<(String, String)>,
}

/// How the command chose the mode.
#[derive(Debug, Clone, Copy)]
pub enum ModeChoice {
    /// `steal` / `mirror`: the subcommand decides (a file saying otherwise gets a warning).
    Command(PortMode),
    /// `exec`: `--steal`/`--mirror`, else the file, else steal (with a file: mirrord's
    /// default, mirror).
    Flag(Option<PortMode>),
}

/// The command line's side, as parsed.
#[derive(Debug, Default, Clone)]
pub struct Flags {
    pub config_file: Option<PathBuf>,
    pub target: Option<String>,
    pub namespace: Option<String>,
    pub ports: Vec<(u16, SocketAddr)>,
    pub filter: Option<HttpFilterSpec>,
    pub on_concurrent_steal: Option<ConcurrentSteal>,
    pub copy_target: bool,
    pub scale_down: bool,
    /// `exec`'s switches (mirrord's flags of the same names).
    pub no_outgoing: bool,
    pub no_remote_dns: bool,
    pub no_env: bool,
    /// `--fs-mode`.
    pub fs_mode: Option<mirrord_layer_proto::FsMode>,
    /// `--profile`.
    pub profile: Option<String>,
    /// `-s` / `-x`: which of the target's variables (`;`-separated globs).
    pub env_include: Option<String>,
    pub env_exclude: Option<String>,
}

impl Flags {
    /// Reads the config file if there is one (warning about what it says that is not
    /// implemented here) and merges. `default_namespace`: the target's namespace when
    /// neither the flags nor the file name one (the kubeconfig context's, as kubectl's).
    pub fn plan(self, mode: ModeChoice, default_namespace: &str) -> anyhow::Result<Plan> {
        let cwd = std::env::current_dir().unwrap_or_default();
        let file = match config_file::locate(self.config_file.clone(), &cwd) {
            None => None,
            Some(path) => {
                // A file that cannot be used is a usage error (exit 2), like a bad flag.
                let file = config_file::load(&path).map_err(|e| Usage(e.to_string()))?;
                eprintln!("mirrordctl: using the mirrord config {}", path.display());
                if !file.ignored.is_empty() {
                    eprintln!(
                        "mirrordctl: warning: {} sets what this operator does not implement; ignored: {}",
                        path.display(),
                        file.ignored.join(", ")
                    );
                }
                let for_exec = file.context_keys();
                if matches!(mode, ModeChoice::Command(_)) && !for_exec.is_empty() {
                    eprintln!(
                        "mirrordctl: note: {} sets what only `exec` uses (the process it starts gets it); ignored here: {}",
                        path.display(),
                        for_exec.join(", ")
                    );
                }
                Some(file)
            }
        };
        Ok(merge(self, file, mode, default_namespace)?)
    }
}

/// Flags over file over defaults. Pure, for the tests.
pub fn merge(
    flags: Flags,
    file: Option<FileConfig>,
    mode: ModeChoice,
    default_namespace: &str,
) -> Result<Plan, Usage> {
    let has_file = file.is_some();
    let file = file.unwrap_or_default();
    // A container named in the file belongs to the file's target.
    let (target, container) = match &flags.target {
        Some(t) => (Some(t.clone()), None),
        None => (file.target.clone(), file.container.clone()),
    };
    let target = target.ok_or_else(|| {
        Usage("no target: pass -t deployment/NAME, or set `target` in the mirrord config".into())
    })?;
    let namespace = flags
        .namespace
        .clone()
        .or(file.namespace.clone())
        .unwrap_or_else(|| default_namespace.to_owned());
    let chosen = mode;
    let mode = match chosen {
        ModeChoice::Command(m) => {
            if file.mode.is_some_and(|f| f != m) {
                eprintln!(
                    "mirrordctl: warning: the mirrord config says {}; the command says {m}, which wins",
                    file.mode.unwrap()
                );
            }
            m
        }
        ModeChoice::Flag(Some(m)) => m,
        ModeChoice::Flag(None) => file.mode.unwrap_or(if has_file {
            PortMode::Mirror
        } else {
            PortMode::Steal
        }),
    };
    let process = matches!(chosen, ModeChoice::Flag(_));
    let context = match process {
        true => context(&flags, &file)?,
        false => ContextPlan::default(),
    };
    let ports = match (file.incoming_off && flags.ports.is_empty(), process) {
        (true, true) => Vec::new(),
        (true, false) => {
            return Err(Usage(format!(
                "the mirrord config {} turns incoming traffic off (feature.network.incoming), so there is nothing to steal or mirror",
                file.path.display()
            )))
        }
        // No port list: the process's ports are added as it listens (mirrord's way), and a
        // process that never listens (a worker, a job) gets the rest of the target's context.
        // (`port_mapping` names ports too: those are added once the process listens on them
        // all, and the session is announced then.)
        (false, true) if flags.ports.is_empty() && file.ports.is_empty() && file.port_mapping.is_empty() => Vec::new(),
        (false, _) => ports(&flags, &file)?,
    };
    let listen = (process && ports.is_empty() && !file.incoming_off).then(|| ListenPlan {
        ignore: file.ignore_ports.clone(),
        filter: flags.filter.clone().or_else(|| file.filter.clone()),
        filter_ports: if flags.filter.is_some() {
            None
        } else {
            file.filter_ports.clone()
        },
    });
    if flags.scale_down && !(flags.copy_target || file.copy_target == Some(true)) {
        return Err(Usage("--scale-down needs --copy-target".into()));
    }
    let target = target_ref(&target, container, namespace)?;
    // Targetless (mirrord's name for no target): a pod of the session's own in the
    // namespace gives its network and names; there is no incoming traffic to take.
    let targetless = target.kind == TARGETLESS;
    if targetless && !ports.is_empty() {
        return Err(Usage(
            "a targetless session has no incoming traffic (there is no target to take it from): drop --port, or name a target".into(),
        ));
    }
    let listen = listen.filter(|_| !targetless);
    Ok(Plan {
        target,
        ports,
        mode,
        on_concurrent_steal: flags
            .on_concurrent_steal
            .or(file.on_concurrent_steal)
            .unwrap_or_default(),
        copy_target: targetless || flags.copy_target || file.copy_target.unwrap_or(false),
        scale_down: flags.scale_down || file.scale_down.unwrap_or(false),
        context,
        listen,
        profile: flags.profile.clone().or_else(|| file.profile.clone()),
    })
}

/// What `exec`'s process gets of the target: mirrord's defaults (all of it), narrowed by
/// the file, then by the flags.
fn context(flags: &Flags, file: &FileConfig) -> Result<ContextPlan, Usage> {
    let env = file.env.clone().unwrap_or(config_file::EnvFile {
        enabled: true,
        ..Default::default()
    });
    let split = |s: &str| -> Vec<String> {
        s.split(';')
            .filter(|g| !g.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let include = flags.env_include.as_deref().map_or(env.include, split);
    let exclude = flags.env_exclude.as_deref().map_or(env.exclude, split);
    if !include.is_empty() && !exclude.is_empty() {
        return Err(Usage(
            "the target's environment: give an include list or an exclude list, not both (mirrord refuses it too)".into(),
        ));
    }
    let mut layer = LayerConfig::default();
    if let Some(o) = &file.outgoing {
        layer.outgoing.tcp = o.tcp;
        layer.outgoing.udp = o.udp;
        layer.outgoing.filter = o.filter.clone();
    }
    if let Some(d) = &file.dns {
        layer.dns.enabled = d.enabled;
        layer.dns.filter = d.filter.clone();
    }
    if flags.no_outgoing {
        (layer.outgoing.tcp, layer.outgoing.udp) = (false, false);
    }
    if flags.no_remote_dns {
        layer.dns.enabled = false;
    }
    let fs = file.fs.clone().unwrap_or_default();
    layer.files = mirrord_layer_proto::Files {
        mode: flags.fs_mode.unwrap_or(fs.mode),
        read_only: fs.read_only,
        read_write: fs.read_write,
        local: fs.local,
        not_found: fs.not_found,
        ..Default::default()
    };
    let files = match (layer.files.reads(), layer.files.writes()) {
        (false, _) => FilesAccess::None,
        (true, false) => FilesAccess::Read,
        (true, true) => FilesAccess::Write,
    };
    let env_on = env.enabled && !flags.no_env;
    Ok(ContextPlan {
        request: ContextRequest {
            env: env_on.then_some(EnvSelect { include, exclude }),
            outgoing: layer.outgoing.tcp || layer.outgoing.udp,
            dns: layer.dns.enabled,
            files,
        },
        layer,
        overrides: if env_on { env.overrides } else { Vec::new() },
        env_file: env.env_file.filter(|_| env_on),
        unset: env.unset,
        mapping: if env_on { env.mapping } else { Vec::new() },
    })
}

/// `--port` flags, each with the flags' filter (or the file's, where the file applies it);
/// else the file's `ports` and `port_mapping`, the local process on the same port unless
/// mapped, the file's filter on its `http_filter.ports`.
fn ports(flags: &Flags, file: &FileConfig) -> Result<Vec<PortPlan>, Usage> {
    // `http_filter.ports` absent: every port is filtered (mirrord since 3.181.0).
    let file_filter = |remote: u16| {
        file.filter.clone().filter(|_| {
            file.filter_ports
                .as_ref()
                .is_none_or(|only| only.contains(&remote))
        })
    };
    if let Some((p, _)) = flags
        .ports
        .iter()
        .find(|(p, _)| file.ignore_ports.contains(p))
    {
        return Err(Usage(format!(
            "--port {p}: the mirrord config {} lists port {p} in feature.network.incoming.ignore_ports; remove it there or pass another port",
            file.path.display()
        )));
    }
    if !flags.ports.is_empty() {
        return Ok(flags
            .ports
            .iter()
            .map(|&(remote, local)| PortPlan {
                remote,
                local,
                filter: match &flags.filter {
                    Some(f) => Some(f.clone()),
                    None => file_filter(remote),
                },
            })
            .collect());
    }
    let mut remotes: Vec<u16> = file.ports.clone();
    for (_, remote) in &file.port_mapping {
        if !remotes.contains(remote) {
            remotes.push(*remote);
        }
    }
    remotes.retain(|p| !file.ignore_ports.contains(p));
    if remotes.is_empty() {
        return Err(Usage(
            "which ports? pass --port PORT=LOCAL, or set feature.network.incoming.ports \
             (or port_mapping) in the mirrord config"
                .into(),
        ));
    }
    Ok(remotes
        .into_iter()
        .map(|remote| {
            let local = file
                .port_mapping
                .iter()
                .find(|(_, r)| *r == remote)
                .map_or(remote, |(l, _)| *l);
            PortPlan {
                remote,
                local: SocketAddr::from(([127, 0, 0, 1], local)),
                filter: flags.filter.clone().or_else(|| file_filter(remote)),
            }
        })
        .collect())
}

/// `deployment/api` or `deployment/api/container/app`; a bare name means a deployment;
/// `targetless` is none.
fn target_ref(
    target: &str,
    container: Option<String>,
    namespace: String,
) -> Result<TargetRef, Usage> {
    let parts: Vec<&str> = target.split('/').collect();
    let (kind, name, container) = match parts[..] {
        [TARGETLESS] => (TARGETLESS, TARGETLESS, None),
        [name] => ("deployment", name, container),
        [kind, name] => (kind, name, container),
        [kind, name, "container", c] if !c.is_empty() => (kind, name, Some(c.to_owned())),
        _ => {
            return Err(Usage(format!(
                "`{target}` is not a target like deployment/api or deployment/api/container/app"
            )))
        }
    };
    Ok(TargetRef {
        kind: kind.to_owned(),
        name: name.to_owned(),
        namespace,
        container,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    fn header(h: &str) -> HttpFilterSpec {
        HttpFilterSpec {
            header: vec![h.into()],
            ..Default::default()
        }
    }

    fn file() -> FileConfig {
        FileConfig {
            target: Some("deployment/api".into()),
            namespace: Some("shop".into()),
            mode: Some(PortMode::Steal),
            filter: Some(header("^x-user: alice$")),
            filter_ports: Some(vec![80]),
            ports: vec![80, 81],
            port_mapping: vec![(9090, 80)],
            on_concurrent_steal: Some(ConcurrentSteal::Continue),
            copy_target: Some(true),
            scale_down: None,
            ..Default::default()
        }
    }

    #[test]
    fn the_file_alone_describes_the_session() {
        let p = merge(
            Flags::default(),
            Some(file()),
            ModeChoice::Flag(None),
            "default",
        )
        .unwrap();
        assert_eq!(p.target.to_string(), "deployment/api");
        assert_eq!(p.target.namespace, "shop");
        assert_eq!(p.mode, PortMode::Steal);
        assert_eq!(p.on_concurrent_steal, ConcurrentSteal::Continue);
        assert!(p.copy_target && !p.scale_down);
        assert_eq!(
            p.ports,
            [
                PortPlan {
                    remote: 80,
                    local: local(9090),
                    filter: Some(header("^x-user: alice$"))
                },
                // Not in http_filter.ports: stolen whole, as mirrord does.
                PortPlan {
                    remote: 81,
                    local: local(81),
                    filter: None
                },
            ]
        );
    }

    #[test]
    fn flags_override_the_file() {
        let flags = Flags {
            target: Some("deployment/web".into()),
            namespace: Some("dev".into()),
            ports: vec![(80, local(7000))],
            filter: Some(header("^x-user: bob$")),
            on_concurrent_steal: Some(ConcurrentSteal::Abort),
            ..Default::default()
        };
        let p = merge(
            flags,
            Some(file()),
            ModeChoice::Command(PortMode::Mirror),
            "default",
        )
        .unwrap();
        assert_eq!(p.target.to_string(), "deployment/web");
        assert_eq!(p.target.namespace, "dev");
        assert_eq!(p.mode, PortMode::Mirror);
        assert_eq!(p.on_concurrent_steal, ConcurrentSteal::Abort);
        assert_eq!(
            p.ports,
            [PortPlan {
                remote: 80,
                local: local(7000),
                filter: Some(header("^x-user: bob$"))
            }]
        );
    }

    #[test]
    fn without_a_file_the_old_defaults_hold() {
        let flags = Flags {
            target: Some("api".into()),
            ports: vec![(80, local(9090))],
            ..Default::default()
        };
        let p = merge(flags.clone(), None, ModeChoice::Flag(None), "default").unwrap();
        assert_eq!(
            (p.target.to_string(), p.target.namespace.as_str()),
            ("deployment/api".into(), "default")
        );
        // Neither flags nor file name a namespace: the caller's default (the kubeconfig
        // context's), like kubectl.
        let p = merge(flags, None, ModeChoice::Flag(None), "shop").unwrap();
        assert_eq!(p.target.namespace, "shop");
        assert_eq!(p.mode, PortMode::Steal);
        assert_eq!(p.on_concurrent_steal, ConcurrentSteal::Abort);
        // A file without a mode means mirrord's default.
        let bare = FileConfig {
            ports: vec![80],
            ..Default::default()
        };
        let flags = Flags {
            target: Some("api".into()),
            ..Default::default()
        };
        assert_eq!(
            merge(flags, Some(bare), ModeChoice::Flag(None), "default")
                .unwrap()
                .mode,
            PortMode::Mirror
        );
    }

    /// Issue 25 item 3: with `http_filter` and no `http_filter.ports`, every port is
    /// filtered (mirrord since 3.181.0); the old default (80, 8080) stole 9000 whole.
    #[test]
    fn without_http_filter_ports_every_port_is_filtered() {
        let file = FileConfig {
            target: Some("deployment/api".into()),
            filter: Some(header("^x-user: alice$")),
            filter_ports: None,
            ports: vec![9000],
            ..Default::default()
        };
        let p = merge(
            Flags::default(),
            Some(file.clone()),
            ModeChoice::Flag(None),
            "default",
        )
        .unwrap();
        assert_eq!(p.ports[0].remote, 9000);
        assert_eq!(p.ports[0].filter, Some(header("^x-user: alice$")));
        // --port given: the file's filter still applies to it.
        let flags = Flags {
            ports: vec![(9000, local(9090))],
            ..Default::default()
        };
        let p = merge(flags, Some(file), ModeChoice::Flag(None), "default").unwrap();
        assert_eq!(p.ports[0].filter, Some(header("^x-user: alice$")));
    }

    #[test]
    fn ignore_ports_and_containers() {
        let file = FileConfig {
            target: Some("deployment/api".into()),
            container: Some("app".into()),
            ports: vec![80, 81],
            ignore_ports: vec![81],
            ..Default::default()
        };
        let p = merge(
            Flags::default(),
            Some(file.clone()),
            ModeChoice::Flag(None),
            "default",
        )
        .unwrap();
        assert_eq!(p.ports.len(), 1);
        assert_eq!(p.target.container.as_deref(), Some("app"));
        let flags = Flags {
            ports: vec![(81, local(9090))],
            ..Default::default()
        };
        let e = merge(flags, Some(file), ModeChoice::Flag(None), "default").unwrap_err();
        assert!(e.0.contains("ignore_ports"), "{e}");
        let flags = Flags {
            target: Some("pod/web-1/container/sidecar".into()),
            ports: vec![(80, local(9090))],
            ..Default::default()
        };
        let p = merge(flags, None, ModeChoice::Flag(None), "default").unwrap();
        assert_eq!(
            (p.target.to_string(), p.target.container.as_deref()),
            ("pod/web-1".into(), Some("sidecar"))
        );
    }

    /// `targetless`: a pod of the session's own (a copy, always), no ports, none added.
    #[test]
    fn targetless_makes_its_own_pod_and_takes_no_port() {
        let flags = Flags {
            target: Some("targetless".into()),
            ..Default::default()
        };
        let p = merge(flags.clone(), None, ModeChoice::Flag(None), "shop").unwrap();
        assert_eq!(p.target.to_string(), "targetless");
        assert!(p.copy_target && p.ports.is_empty() && p.listen.is_none());
        let with_port = Flags {
            ports: vec![(80, local(9090))],
            ..flags
        };
        let e = merge(with_port, None, ModeChoice::Flag(None), "shop").unwrap_err();
        assert!(e.0.contains("no incoming traffic"), "{e}");
    }

    #[test]
    fn missing_target_or_ports_are_usage_errors_that_say_where_to_put_them() {
        let e = merge(Flags::default(), None, ModeChoice::Flag(None), "default").unwrap_err();
        assert!(
            e.0.contains("-t deployment/NAME") && e.0.contains("`target`"),
            "{e}"
        );
        let flags = Flags {
            target: Some("api".into()),
            ..Default::default()
        };
        let e = merge(
            flags.clone(),
            Some(FileConfig::default()),
            ModeChoice::Command(PortMode::Steal),
            "default",
        )
        .unwrap_err();
        assert!(
            e.0.contains("--port") && e.0.contains("feature.network.incoming.ports"),
            "{e}"
        );
        // `exec` needs no port: the process's are added as it listens, with the flags' filter.
        let bare = Flags {
            no_env: true,
            no_outgoing: true,
            no_remote_dns: true,
            filter: Some(HttpFilterSpec {
                header: vec!["x-user: me".into()],
                ..Default::default()
            }),
            ..flags.clone()
        };
        let p = merge(bare, None, ModeChoice::Flag(None), "default").unwrap();
        let listen = p.listen.expect("ports added as the process listens");
        assert!(p.ports.is_empty() && listen.filter(8080).is_some());
        assert_eq!(listen.remote(8080), Some(8080));
        let p = merge(flags, None, ModeChoice::Flag(None), "default").unwrap();
        assert!(p.ports.is_empty() && p.listen.is_some());
        assert!(p.context.request.outgoing && p.context.request.dns);
    }
}
