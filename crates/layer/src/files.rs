//! The target's files (mirrord's `feature.fs`): whether a path's operation goes to the target
//! ([`mirrord_layer_proto::FileRoutes`]), asking `mirrordctl` for it, and the descriptors of opened remote files.
//!
//! An opened remote file is a local copy `mirrordctl` made of it, in a directory only this user can enter: the
//! app's descriptor is a genuine file descriptor, so `read`, `pread`, `lseek`, `mmap`, `sendfile`, `dup`, `fork`
//! and close-on-exec behave as the kernel makes them. A copy only read is unlinked at once; a copy opened for
//! writing (mode `write`, or a `read_write` pattern) is written back to the target when the app closes or syncs
//! it. A remote directory is a local directory of placeholders with the same names and types, so `readdir`
//! works on it; `fstat`, and `stat` of the entries, answer with the target's metadata.

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;

use libc::c_int;
use mirrord_layer_proto::{Reply, Request, Route, Stat};

use crate::client::{self, Error};
use crate::fdtable::{Entry, TABLE};
use crate::state;

/// A descriptor of a remote file or directory.
#[derive(Debug, PartialEq, Eq)]
pub struct Remote {
    /// Its path in the target.
    pub path: String,
    pub stat: Stat,
    pub dir: bool,
    /// The local copy written back on close and sync (opened for writing).
    pub write_back: Option<PathBuf>,
}

/// `Some(errno)` from the layer, `None` for "libc does it".
pub type Outcome<T> = Option<Result<T, c_int>>;

/// The absolute path in the target that `path` (relative to `dirfd`) names, with where it goes; `None` when it
/// stays local (the layer is off, a relative path outside a remote directory, not UTF-8).
fn route(dirfd: c_int, path: &CStr) -> Option<(&'static state::Layer, String, Route)> {
    let layer = state::ready()?;
    let routes = layer.files.as_ref()?;
    let path = path.to_str().ok()?;
    let absolute = if path.starts_with('/') {
        normalize(path)
    } else if dirfd == libc::AT_FDCWD {
        // Relative to the working directory: local, as mirrord does.
        return None;
    } else {
        match TABLE.get(dirfd) {
            Some(Entry::Remote(r)) if r.dir => normalize(&format!("{}/{path}", r.path)),
            _ => return None,
        }
    };
    let route = routes.route(&absolute);
    (route != Route::Local).then_some((layer, absolute, route))
}

/// `//` and `/./` folded, a trailing `/` dropped (`..` is left to the target, which resolves it in its root).
fn normalize(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
        out.push('/');
        out.push_str(part);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

fn ask(layer: &state::Layer, req: &Request) -> Outcome<Reply> {
    ask_with(layer, req, client::request)
}

type Send = fn(&state::Layer, &Request, std::time::Duration) -> Result<Reply, Error>;

fn ask_with(layer: &state::Layer, req: &Request, send: Send) -> Outcome<Reply> {
    let reply = send(layer, req, layer.file_timeout);
    debug!(
        "{req:?}: {}",
        match &reply {
            Ok(Reply::Opened { local, dir, .. }) =>
                format!("opened as {} (dir: {dir})", local.display()),
            other => format!("{other:?}"),
        }
    );
    match reply {
        Err(Error::Detached) => None,
        Err(Error::Timeout) => Some(Err(libc::EIO)),
        Ok(Reply::FileFailed { errno }) => Some(Err(errno)),
        Ok(r) => Some(Ok(r)),
    }
}

fn unexpected<T>(req: &str, reply: &Reply) -> Outcome<T> {
    state::detach(&format!("unexpected reply to {req}: {reply:?}"));
    Some(Err(libc::EIO))
}

/// Whether `flags` (of `open`) change the file.
fn writes(flags: c_int) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & (libc::O_TRUNC | libc::O_CREAT) != 0
}

/// `openat(dirfd, path, flags)`: the descriptor of the target's file, or the errno.
pub fn open(dirfd: c_int, path: &CStr, flags: c_int) -> Outcome<c_int> {
    let (layer, path, route) = route(dirfd, path)?;
    let write = match route {
        Route::Local => return None,
        Route::NotFound => return Some(Err(libc::ENOENT)),
        Route::Remote { write } => write,
    };
    if writes(flags) && !write {
        // mirrord would write a local file of that name; a read-only target fails it instead, so nothing is
        // written where the process did not mean to.
        return Some(Err(libc::EROFS));
    }
    if flags & libc::O_TMPFILE == libc::O_TMPFILE {
        return Some(Err(libc::EOPNOTSUPP));
    }
    let req = Request::Open {
        path: path.clone(),
        flags,
    };
    let (local, stat, dir) = match ask(layer, &req)? {
        Ok(Reply::Opened { local, stat, dir }) => (local, stat, dir),
        Ok(other) => return unexpected("Open", &other),
        Err(e) => return Some(Err(e)),
    };
    let Ok(c_local) = CString::new(local.as_os_str().as_bytes()) else {
        return Some(Err(libc::EIO));
    };
    // The copy exists and holds the content: creating or truncating it again would undo that.
    let keep = flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY);
    let opened = crate::sys::open(&c_local, keep);
    let write_back = (writes(flags) && !dir).then(|| local.clone());
    if write_back.is_none() && !dir {
        // Only read: nobody needs its name any more.
        crate::sys::unlink(&c_local);
    }
    let fd = match opened {
        Ok(fd) => fd,
        Err(e) => return Some(Err(e)),
    };
    TABLE.insert(
        fd,
        Entry::Remote(Arc::new(Remote {
            path,
            stat,
            dir,
            write_back,
        })),
    );
    Some(Ok(fd))
}

/// `stat` (`follow`) or `lstat` of `path` relative to `dirfd`.
pub fn stat(dirfd: c_int, path: &CStr, follow: bool) -> Outcome<Stat> {
    let (layer, path, route) = route(dirfd, path)?;
    if route == Route::NotFound {
        return Some(Err(libc::ENOENT));
    }
    match ask(layer, &Request::Stat { path, follow })? {
        Ok(Reply::Stat(s)) => Some(Ok(s)),
        Ok(other) => unexpected("Stat", &other),
        Err(e) => Some(Err(e)),
    }
}

/// `fstat(fd)` of a remote file's descriptor: the target's metadata, with the size of the copy when the app
/// may have written it.
pub fn fstat(fd: c_int) -> Option<Stat> {
    let Some(Entry::Remote(r)) = TABLE.get(fd) else {
        return None;
    };
    let mut stat = r.stat;
    if r.write_back.is_some() {
        if let Some(size) = crate::sys::file_size(fd) {
            stat.size = size;
            stat.blocks = size.div_ceil(512);
        }
    }
    Some(stat)
}

/// `faccessat(dirfd, path, mode)`.
pub fn access(dirfd: c_int, path: &CStr, mode: c_int) -> Outcome<()> {
    let (layer, path, route) = route(dirfd, path)?;
    match route {
        Route::NotFound => return Some(Err(libc::ENOENT)),
        Route::Remote { write: false } if mode & libc::W_OK != 0 => return Some(Err(libc::EROFS)),
        _ => {}
    }
    match ask(layer, &Request::Access { path, mode })? {
        Ok(Reply::Done) => Some(Ok(())),
        Ok(other) => unexpected("Access", &other),
        Err(e) => Some(Err(e)),
    }
}

/// Extended attributes of a remote path: the target's are not served, so the answer is "not supported" (what
/// `ls -l` reads as "no ACL, no security label") rather than the local path's absence.
pub fn xattr(path: &CStr) -> Outcome<()> {
    route(libc::AT_FDCWD, path)?;
    Some(Err(libc::ENOTSUP))
}

/// `readlinkat(dirfd, path)`: the link's text.
pub fn readlink(dirfd: c_int, path: &CStr) -> Outcome<String> {
    let (layer, path, route) = route(dirfd, path)?;
    if route == Route::NotFound {
        return Some(Err(libc::ENOENT));
    }
    match ask(layer, &Request::Readlink { path })? {
        Ok(Reply::Link(l)) => Some(Ok(l)),
        Ok(other) => unexpected("Readlink", &other),
        Err(e) => Some(Err(e)),
    }
}

/// Writes a remote file's copy back to the target (`close` of its last descriptor in this process, `fsync`):
/// `None` when `fd` is no such file, else whether it worked.
pub fn write_back(fd: c_int, closing: bool) -> Outcome<()> {
    write_back_with(fd, closing, client::request)
}

fn write_back_with(fd: c_int, closing: bool, send: Send) -> Outcome<()> {
    let Some(Entry::Remote(r)) = TABLE.get(fd) else {
        return None;
    };
    let local = r.write_back.clone()?;
    // Another descriptor of this process still has it open: the table's entries say (a count of references would
    // also see another thread's passing clone, and skip the real last close).
    if closing && TABLE.count(|e| matches!(e, Entry::Remote(o) if Arc::ptr_eq(o, &r))) > 1 {
        return None;
    }
    let layer = state::ready()?;
    let req = Request::WriteBack {
        local,
        path: r.path.clone(),
    };
    match ask_with(layer, &req, send)? {
        Ok(Reply::Done) => Some(Ok(())),
        Ok(other) => unexpected("WriteBack", &other),
        Err(e) => Some(Err(e)),
    }
}

/// At exit: every remote file's copy still open for writing goes back to the target (a program that exits
/// without closing its descriptors, as most do, would otherwise lose what it wrote).
pub fn write_back_all() {
    let open: Vec<(c_int, Arc<Remote>)> = TABLE
        .lock()
        .iter()
        .filter_map(|(fd, e)| match e {
            Entry::Remote(r) if r.write_back.is_some() => Some((*fd, Arc::clone(r))),
            _ => None,
        })
        .collect();
    let mut done: Vec<*const Remote> = Vec::new();
    for (fd, r) in open {
        if done.contains(&Arc::as_ptr(&r)) {
            continue;
        }
        done.push(Arc::as_ptr(&r));
        // The thread's channel went with its thread-locals before the exit handlers ran.
        let written = write_back_with(fd, false, client::request_alone);
        debug!("at exit, fd {fd} ({}): {written:?}", r.path);
    }
}

/// `fopen`'s mode as `open` flags (glibc's reading: the first letter, `+`, then `e` and `x` anywhere).
pub fn fopen_flags(mode: &CStr) -> Option<c_int> {
    let m = mode.to_bytes();
    let plus = m.contains(&b'+');
    let mut flags = match (m.first()?, plus) {
        (b'r', false) => libc::O_RDONLY,
        (b'r', true) => libc::O_RDWR,
        (b'w', false) => libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
        (b'w', true) => libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC,
        (b'a', false) => libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND,
        (b'a', true) => libc::O_RDWR | libc::O_CREAT | libc::O_APPEND,
        _ => return None,
    };
    if m.contains(&b'e') {
        flags |= libc::O_CLOEXEC;
    }
    if m.contains(&b'x') {
        flags |= libc::O_EXCL;
    }
    Some(flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_folded_but_dotdot_is_left_to_the_target() {
        assert_eq!(
            normalize("//etc/./app//config.yaml/"),
            "/etc/app/config.yaml"
        );
        assert_eq!(normalize("/etc/../etc/x"), "/etc/../etc/x");
        assert_eq!(normalize("/"), "/");
    }

    #[test]
    fn fopen_modes() {
        let f = |m: &CStr| fopen_flags(m);
        assert_eq!(f(c"r"), Some(libc::O_RDONLY));
        assert_eq!(f(c"rb"), Some(libc::O_RDONLY));
        assert_eq!(f(c"r+e"), Some(libc::O_RDWR | libc::O_CLOEXEC));
        assert_eq!(
            f(c"w"),
            Some(libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC)
        );
        assert_eq!(
            f(c"ax"),
            Some(libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND | libc::O_EXCL)
        );
        assert_eq!(f(c"z"), None);
        assert!(
            writes(libc::O_RDONLY | libc::O_CREAT) && !writes(libc::O_RDONLY | libc::O_CLOEXEC)
        );
    }
}
