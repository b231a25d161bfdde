//! The process's view of the layer: its configuration (read once, on the first call that needs it), whether it
//! has detached from `mirrordctl` for good, and which process owns the tables.
//!
//! The owner rule: the tables belong to the process that initialised the layer or went through a real `fork`
//! (the atfork child handler takes them over). A `vfork` child or a `posix_spawn` clone shares the parent's
//! memory and runs no atfork handler, so there `getpid()` differs from the owner and the layer is plain libc,
//! touching nothing, until `exec` loads a fresh copy.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use mirrord_layer_proto::{LayerConfig, ENV_CONFIG, ENV_LOG, ENV_SOCK, ENV_TIMEOUT_MS};

use crate::sys;

pub struct Layer {
    pub config: LayerConfig,
    pub sock: PathBuf,
    pub connect_timeout: Duration,
    pub dns_timeout: Duration,
    /// How long opening a remote file may take (its bytes are copied first).
    pub file_timeout: Duration,
    /// `feature.fs` compiled; `None`: every path is local.
    pub files: Option<mirrord_layer_proto::FileRoutes>,
}

static LAYER: OnceLock<Option<Layer>> = OnceLock::new();
static DETACHED: AtomicBool = AtomicBool::new(false);
static OWNER: AtomicU32 = AtomicU32::new(0);

/// Reads the configuration now, while the process has one thread. Run from the library's
/// constructor: initialised lazily instead, a `fork` while another thread is inside the
/// first initialisation leaves the child a `OnceLock` that stays "running" forever, and the
/// child's first hooked call waits on it for good (16 threads resolving while the main
/// thread forks hung that way).
pub fn init_at_load() {
    let _ = LAYER.get_or_init(init);
}

/// The layer when it should act: configured, not detached, and in the owning process.
pub fn active() -> Option<&'static Layer> {
    let layer = LAYER.get_or_init(init).as_ref()?;
    if DETACHED.load(Ordering::Acquire) || !is_owner() {
        return None;
    }
    Some(layer)
}

/// As [`active`], without initialising: the file hooks run while the layer itself initialises (opening its
/// log), when nothing may wait on the initialisation.
pub fn ready() -> Option<&'static Layer> {
    let layer = LAYER.get()?.as_ref()?;
    if DETACHED.load(Ordering::Acquire) || !is_owner() {
        return None;
    }
    Some(layer)
}

/// Whether this process may change the tables (see the module doc).
pub fn is_owner() -> bool {
    OWNER.load(Ordering::Acquire) == sys::getpid()
}

/// The atfork child handler: a real fork child owns its copy of the tables.
pub fn take_ownership() {
    OWNER.store(sys::getpid(), Ordering::Release);
}

/// No `mirrordctl` to talk to: plain libc for the rest of the process's life.
pub fn detach(why: &str) {
    if !DETACHED.swap(true, Ordering::AcqRel) {
        debug!("detached: {why}; plain libc from now on");
    }
}

fn init() -> Option<Layer> {
    OWNER.store(sys::getpid(), Ordering::Release);
    // The default hook prints to stderr, which belongs to the app; panics are caught by every export anyway.
    std::panic::set_hook(Box::new(|info| debug!("panic: {info}")));
    crate::log::open(std::env::var_os(ENV_LOG));
    let sock = PathBuf::from(std::env::var_os(ENV_SOCK)?);
    let config = match LayerConfig::from_env(&std::env::var(ENV_CONFIG).ok()?) {
        Ok(c) => c,
        Err(e) => {
            debug!("not configured: {e}");
            return None;
        }
    };
    let timeout = std::env::var(ENV_TIMEOUT_MS)
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis);
    crate::fork::register();
    debug!("configured: socket {}, {:?}", sock.display(), config);
    let files = match config.files.reads().then(|| config.files.compile()) {
        Some(Ok(routes)) => Some(routes),
        Some(Err(e)) => {
            debug!("{e}: every path stays local");
            None
        }
        None => None,
    };
    Some(Layer {
        config,
        sock,
        connect_timeout: timeout.unwrap_or(Duration::from_secs(15)),
        dns_timeout: timeout.unwrap_or(Duration::from_secs(10)),
        file_timeout: timeout.unwrap_or(Duration::from_secs(120)),
        files,
    })
}
