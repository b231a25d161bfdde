//! `open`, `openat` (and their 64-bit and fortified forms), `creat`, `fopen`, `opendir`; `stat`, `lstat`, `fstat`,
//! `fstatat`, `statx`; `access`, `faccessat`; `readlink`, `readlinkat`; `getxattr`, `lgetxattr`, `listxattr`,
//! `llistxattr`; `fsync`, `fdatasync`; `fclose`, `closedir` (glibc closes their descriptors internally): the
//! target's files
//! (see [`crate::files`]). A path that stays local costs one pattern match and goes to libc.

use std::ffi::CStr;

use libc::{c_char, c_int, c_uint, size_t, ssize_t};
use mirrord_layer_proto::Stat;

use super::hook;
use crate::fdtable::TABLE;
use crate::{files, real, sockets, sys};

/// The app's path, or `None` for a null pointer (libc then fails it with `EFAULT` itself).
///
/// # Safety
/// `path` is null or what the app passed libc as a NUL-terminated path.
unsafe fn path_of<'a>(path: *const c_char) -> Option<&'a CStr> {
    // SAFETY: non-null, and NUL-terminated by the caller's contract.
    (!path.is_null()).then(|| unsafe { CStr::from_ptr(path) })
}

fn open_hook(
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    real: impl FnOnce() -> c_int,
) -> c_int {
    hook(
        || {
            // SAFETY: the app's path argument.
            let p = unsafe { path_of(path) }?;
            Some(match files::open(dirfd, p, flags)? {
                Ok(fd) => (fd, None),
                Err(e) => (-1, Some(e)),
            })
        },
        real,
    )
}

/// # Safety
/// libc's `open` contract (`mode` is read only with `O_CREAT`/`O_TMPFILE`, as libc does).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn open(path: *const c_char, flags: c_int, mode: c_uint) -> c_int {
    // SAFETY: the app's own arguments.
    open_hook(libc::AT_FDCWD, path, flags, || unsafe {
        real::open(path, flags, mode)
    })
}

/// # Safety
/// libc's `open64` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn open64(path: *const c_char, flags: c_int, mode: c_uint) -> c_int {
    // SAFETY: the app's own arguments.
    open_hook(libc::AT_FDCWD, path, flags, || unsafe {
        real::open64(path, flags, mode)
    })
}

/// # Safety
/// glibc's fortified `open` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __open_2(path: *const c_char, flags: c_int) -> c_int {
    // SAFETY: the app's own arguments.
    open_hook(libc::AT_FDCWD, path, flags, || unsafe {
        real::__open_2(path, flags)
    })
}

/// # Safety
/// glibc's fortified `open64` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __open64_2(path: *const c_char, flags: c_int) -> c_int {
    // SAFETY: the app's own arguments.
    open_hook(libc::AT_FDCWD, path, flags, || unsafe {
        real::__open64_2(path, flags)
    })
}

/// # Safety
/// libc's `openat` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn openat(
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    mode: c_uint,
) -> c_int {
    // SAFETY: the app's own arguments.
    open_hook(dirfd, path, flags, || unsafe {
        real::openat(dirfd, path, flags, mode)
    })
}

/// # Safety
/// libc's `openat64` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn openat64(
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    mode: c_uint,
) -> c_int {
    // SAFETY: the app's own arguments.
    open_hook(dirfd, path, flags, || unsafe {
        real::openat64(dirfd, path, flags, mode)
    })
}

/// # Safety
/// glibc's fortified `openat` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __openat_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int {
    // SAFETY: the app's own arguments.
    open_hook(dirfd, path, flags, || unsafe {
        real::__openat_2(dirfd, path, flags)
    })
}

/// # Safety
/// glibc's fortified `openat64` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __openat64_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int {
    // SAFETY: the app's own arguments.
    open_hook(dirfd, path, flags, || unsafe {
        real::__openat64_2(dirfd, path, flags)
    })
}

const CREAT: c_int = libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC;

/// # Safety
/// libc's `creat` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn creat(path: *const c_char, mode: libc::mode_t) -> c_int {
    // SAFETY: the app's own arguments.
    open_hook(libc::AT_FDCWD, path, CREAT, || unsafe {
        real::creat(path, mode)
    })
}

/// # Safety
/// libc's `creat64` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn creat64(path: *const c_char, mode: libc::mode_t) -> c_int {
    // SAFETY: the app's own arguments.
    open_hook(libc::AT_FDCWD, path, CREAT, || unsafe {
        real::creat64(path, mode)
    })
}

/// Opens a remote path with `flags` and wraps the descriptor with `wrap` (`fdopen`, `fdopendir`); a wrap that
/// fails closes it.
fn open_wrapped<T>(
    path: *const c_char,
    flags: Option<c_int>,
    wrap: impl FnOnce(c_int) -> *mut T,
    real: impl FnOnce() -> *mut T,
) -> *mut T {
    hook(
        || {
            // SAFETY: the app's path argument.
            let p = unsafe { path_of(path) }?;
            Some(match files::open(libc::AT_FDCWD, p, flags?)? {
                Ok(fd) => {
                    let wrapped = wrap(fd);
                    if wrapped.is_null() {
                        let e = sys::errno();
                        sockets::forget(fd);
                        sys::close(fd);
                        (wrapped, Some(e))
                    } else {
                        (wrapped, None)
                    }
                }
                Err(e) => (std::ptr::null_mut(), Some(e)),
            })
        },
        real,
    )
}

fn fopen_hook(
    path: *const c_char,
    mode: *const c_char,
    real: impl FnOnce() -> *mut libc::FILE,
) -> *mut libc::FILE {
    // SAFETY: the app's mode argument, a NUL-terminated string or null.
    let flags = unsafe { path_of(mode) }.and_then(files::fopen_flags);
    open_wrapped(
        path,
        flags,
        // SAFETY: a descriptor just opened for the app, and the app's own mode string.
        |fd| unsafe { libc::fdopen(fd, mode) },
        real,
    )
}

/// # Safety
/// libc's `fopen` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fopen(path: *const c_char, mode: *const c_char) -> *mut libc::FILE {
    // SAFETY: the app's own arguments.
    fopen_hook(path, mode, || unsafe { real::fopen(path, mode) })
}

/// # Safety
/// libc's `fopen64` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fopen64(path: *const c_char, mode: *const c_char) -> *mut libc::FILE {
    // SAFETY: the app's own arguments.
    fopen_hook(path, mode, || unsafe { real::fopen64(path, mode) })
}

/// # Safety
/// libc's `opendir` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn opendir(path: *const c_char) -> *mut libc::DIR {
    open_wrapped(
        path,
        Some(libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC),
        // SAFETY: a directory descriptor just opened for the app.
        |fd| unsafe { libc::fdopendir(fd) },
        // SAFETY: the app's own argument.
        || unsafe { real::opendir(path) },
    )
}

fn major(dev: u64) -> u32 {
    (((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff)) as u32
}

fn minor(dev: u64) -> u32 {
    ((dev & 0xff) | ((dev >> 12) & !0xff)) as u32
}

/// Writes `s` into a `struct stat` or `struct stat64` (the same fields), zeroing the rest.
macro_rules! fill_stat {
    ($buf:expr, $s:expr) => {{
        let (buf, s) = ($buf, $s);
        // SAFETY: the app gave libc a buffer valid for writes of this struct; zeroed first, so no field is left
        // uninitialised, then filled field by field.
        unsafe {
            std::ptr::write_bytes(buf, 0, 1);
            let b = &mut *buf;
            b.st_dev = s.dev as _;
            b.st_ino = s.ino as _;
            b.st_mode = s.mode as _;
            b.st_nlink = s.nlink as _;
            b.st_uid = s.uid;
            b.st_gid = s.gid;
            b.st_rdev = s.rdev as _;
            b.st_size = s.size as _;
            b.st_blksize = s.blksize as _;
            b.st_blocks = s.blocks as _;
            b.st_atime = s.atime.0 as _;
            b.st_atime_nsec = s.atime.1 as _;
            b.st_mtime = s.mtime.0 as _;
            b.st_mtime_nsec = s.mtime.1 as _;
            b.st_ctime = s.ctime.0 as _;
            b.st_ctime_nsec = s.ctime.1 as _;
        }
    }};
}

fn fill_statx(buf: *mut libc::statx, s: &Stat) {
    // SAFETY: the app gave libc a buffer valid for writes of a `struct statx`; zeroed first, then filled.
    unsafe {
        std::ptr::write_bytes(buf, 0, 1);
        let b = &mut *buf;
        b.stx_mask = libc::STATX_BASIC_STATS;
        b.stx_blksize = s.blksize as u32;
        b.stx_nlink = s.nlink as u32;
        b.stx_uid = s.uid;
        b.stx_gid = s.gid;
        b.stx_mode = s.mode as u16;
        b.stx_ino = s.ino;
        b.stx_size = s.size;
        b.stx_blocks = s.blocks;
        (b.stx_atime.tv_sec, b.stx_atime.tv_nsec) = s.atime;
        (b.stx_mtime.tv_sec, b.stx_mtime.tv_nsec) = s.mtime;
        (b.stx_ctime.tv_sec, b.stx_ctime.tv_nsec) = s.ctime;
        b.stx_rdev_major = major(s.rdev);
        b.stx_rdev_minor = minor(s.rdev);
        b.stx_dev_major = major(s.dev);
        b.stx_dev_minor = minor(s.dev);
    }
}

/// `stat`-like on `path` relative to `dirfd` (an empty path with `AT_EMPTY_PATH`: the descriptor itself).
fn stat_hook(
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    fill: impl FnOnce(&Stat),
    real: impl FnOnce() -> c_int,
) -> c_int {
    hook(
        || {
            // SAFETY: the app's path argument.
            let p = unsafe { path_of(path) }?;
            let got = if p.is_empty() && flags & libc::AT_EMPTY_PATH != 0 {
                Ok(files::fstat(dirfd)?)
            } else {
                files::stat(dirfd, p, flags & libc::AT_SYMLINK_NOFOLLOW == 0)?
            };
            Some(match got {
                Ok(s) => {
                    fill(&s);
                    (0, None)
                }
                Err(e) => (-1, Some(e)),
            })
        },
        real,
    )
}

/// # Safety
/// libc's `stat` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn stat(path: *const c_char, buf: *mut libc::stat) -> c_int {
    // SAFETY: the app's own arguments.
    stat_hook(
        libc::AT_FDCWD,
        path,
        0,
        |s| fill_stat!(buf, s),
        || unsafe { real::stat(path, buf) },
    )
}

/// # Safety
/// libc's `stat64` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn stat64(path: *const c_char, buf: *mut libc::stat64) -> c_int {
    // SAFETY: the app's own arguments.
    stat_hook(
        libc::AT_FDCWD,
        path,
        0,
        |s| fill_stat!(buf, s),
        || unsafe { real::stat64(path, buf) },
    )
}

const NOFOLLOW: c_int = libc::AT_SYMLINK_NOFOLLOW;

/// # Safety
/// libc's `lstat` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lstat(path: *const c_char, buf: *mut libc::stat) -> c_int {
    // SAFETY: the app's own arguments.
    stat_hook(
        libc::AT_FDCWD,
        path,
        NOFOLLOW,
        |s| fill_stat!(buf, s),
        || unsafe { real::lstat(path, buf) },
    )
}

/// # Safety
/// libc's `lstat64` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lstat64(path: *const c_char, buf: *mut libc::stat64) -> c_int {
    // SAFETY: the app's own arguments.
    stat_hook(
        libc::AT_FDCWD,
        path,
        NOFOLLOW,
        |s| fill_stat!(buf, s),
        || unsafe { real::lstat64(path, buf) },
    )
}

/// # Safety
/// libc's `fstatat` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fstatat(
    dirfd: c_int,
    path: *const c_char,
    buf: *mut libc::stat,
    flags: c_int,
) -> c_int {
    // SAFETY: the app's own arguments.
    stat_hook(
        dirfd,
        path,
        flags,
        |s| fill_stat!(buf, s),
        || unsafe { real::fstatat(dirfd, path, buf, flags) },
    )
}

/// # Safety
/// libc's `fstatat64` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fstatat64(
    dirfd: c_int,
    path: *const c_char,
    buf: *mut libc::stat64,
    flags: c_int,
) -> c_int {
    // SAFETY: the app's own arguments.
    stat_hook(
        dirfd,
        path,
        flags,
        |s| fill_stat!(buf, s),
        || unsafe { real::fstatat64(dirfd, path, buf, flags) },
    )
}

/// # Safety
/// libc's `statx` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn statx(
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    mask: c_uint,
    buf: *mut libc::statx,
) -> c_int {
    // SAFETY: the app's own arguments.
    stat_hook(
        dirfd,
        path,
        flags,
        |s| fill_statx(buf, s),
        || unsafe { real::statx(dirfd, path, flags, mask, buf) },
    )
}

fn fstat_hook(fd: c_int, fill: impl FnOnce(&Stat), real: impl FnOnce() -> c_int) -> c_int {
    if !TABLE.is_tracked(fd) {
        return real();
    }
    hook(
        || {
            let s = files::fstat(fd)?;
            fill(&s);
            Some((0, None))
        },
        real,
    )
}

/// # Safety
/// libc's `fstat` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fstat(fd: c_int, buf: *mut libc::stat) -> c_int {
    // SAFETY: the app's own arguments.
    fstat_hook(
        fd,
        |s| fill_stat!(buf, s),
        || unsafe { real::fstat(fd, buf) },
    )
}

/// # Safety
/// libc's `fstat64` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fstat64(fd: c_int, buf: *mut libc::stat64) -> c_int {
    // SAFETY: the app's own arguments.
    fstat_hook(
        fd,
        |s| fill_stat!(buf, s),
        || unsafe { real::fstat64(fd, buf) },
    )
}

fn access_hook(
    dirfd: c_int,
    path: *const c_char,
    mode: c_int,
    real: impl FnOnce() -> c_int,
) -> c_int {
    hook(
        || {
            // SAFETY: the app's path argument.
            let p = unsafe { path_of(path) }?;
            Some(match files::access(dirfd, p, mode)? {
                Ok(()) => (0, None),
                Err(e) => (-1, Some(e)),
            })
        },
        real,
    )
}

/// # Safety
/// libc's `access` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn access(path: *const c_char, mode: c_int) -> c_int {
    // SAFETY: the app's own arguments.
    access_hook(libc::AT_FDCWD, path, mode, || unsafe {
        real::access(path, mode)
    })
}

/// # Safety
/// libc's `faccessat` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn faccessat(
    dirfd: c_int,
    path: *const c_char,
    mode: c_int,
    flags: c_int,
) -> c_int {
    // SAFETY: the app's own arguments.
    access_hook(dirfd, path, mode, || unsafe {
        real::faccessat(dirfd, path, mode, flags)
    })
}

fn readlink_hook(
    dirfd: c_int,
    path: *const c_char,
    buf: *mut c_char,
    size: size_t,
    real: impl FnOnce() -> ssize_t,
) -> ssize_t {
    hook(
        || {
            // SAFETY: the app's path argument.
            let p = unsafe { path_of(path) }?;
            Some(match files::readlink(dirfd, p)? {
                Ok(link) => {
                    // readlink truncates silently and writes no NUL.
                    let n = link.len().min(size);
                    // SAFETY: the app's buffer holds `size` bytes; `n` <= size, and the source is our own string.
                    unsafe { std::ptr::copy_nonoverlapping(link.as_ptr(), buf.cast::<u8>(), n) };
                    (n as ssize_t, None)
                }
                Err(e) => (-1, Some(e)),
            })
        },
        real,
    )
}

/// # Safety
/// libc's `readlink` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn readlink(path: *const c_char, buf: *mut c_char, size: size_t) -> ssize_t {
    // SAFETY: the app's own arguments.
    readlink_hook(libc::AT_FDCWD, path, buf, size, || unsafe {
        real::readlink(path, buf, size)
    })
}

/// # Safety
/// libc's `readlinkat` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn readlinkat(
    dirfd: c_int,
    path: *const c_char,
    buf: *mut c_char,
    size: size_t,
) -> ssize_t {
    // SAFETY: the app's own arguments.
    readlink_hook(dirfd, path, buf, size, || unsafe {
        real::readlinkat(dirfd, path, buf, size)
    })
}

fn xattr_hook(path: *const c_char, real: impl FnOnce() -> ssize_t) -> ssize_t {
    hook(
        || {
            // SAFETY: the app's path argument.
            let p = unsafe { path_of(path) }?;
            files::xattr(p)?.err().map(|e| (-1, Some(e)))
        },
        real,
    )
}

/// # Safety
/// libc's `getxattr` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getxattr(
    path: *const c_char,
    name: *const c_char,
    value: *mut libc::c_void,
    size: size_t,
) -> ssize_t {
    // SAFETY: the app's own arguments.
    xattr_hook(path, || unsafe { real::getxattr(path, name, value, size) })
}

/// # Safety
/// libc's `lgetxattr` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lgetxattr(
    path: *const c_char,
    name: *const c_char,
    value: *mut libc::c_void,
    size: size_t,
) -> ssize_t {
    // SAFETY: the app's own arguments.
    xattr_hook(path, || unsafe { real::lgetxattr(path, name, value, size) })
}

/// # Safety
/// libc's `listxattr` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn listxattr(
    path: *const c_char,
    list: *mut c_char,
    size: size_t,
) -> ssize_t {
    // SAFETY: the app's own arguments.
    xattr_hook(path, || unsafe { real::listxattr(path, list, size) })
}

/// # Safety
/// libc's `llistxattr` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn llistxattr(
    path: *const c_char,
    list: *mut c_char,
    size: size_t,
) -> ssize_t {
    // SAFETY: the app's own arguments.
    xattr_hook(path, || unsafe { real::llistxattr(path, list, size) })
}

/// # Safety
/// libc's `fclose` contract. glibc closes the stream's descriptor internally (not through `close`), so its
/// entry is forgotten (and a remote copy opened for writing goes back) here.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fclose(stream: *mut libc::FILE) -> c_int {
    let fd = if stream.is_null() {
        -1
    } else {
        // SAFETY: the app's own stream; `fileno` only reads it.
        unsafe { libc::fileno(stream) }
    };
    if !TABLE.is_tracked(fd) {
        // SAFETY: the app's own argument.
        return unsafe { real::fclose(stream) };
    }
    hook(
        || {
            // SAFETY: the app's own stream: what it buffered reaches the copy before it goes back.
            unsafe { libc::fflush(stream) };
            let wrote = files::write_back(fd, true);
            sockets::forget(fd);
            // SAFETY: the app's own argument.
            let r = unsafe { real::fclose(stream) };
            Some(match wrote {
                Some(Err(e)) => (-1, Some(e)),
                _ if r != 0 => (r, Some(sys::errno())),
                _ => (r, None),
            })
        },
        // SAFETY: the app's own argument.
        || unsafe { real::fclose(stream) },
    )
}

/// # Safety
/// libc's `closedir` contract (its descriptor, too, is closed inside glibc).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn closedir(dir: *mut libc::DIR) -> c_int {
    let fd = if dir.is_null() {
        -1
    } else {
        // SAFETY: the app's own directory stream; `dirfd` only reads it.
        unsafe { libc::dirfd(dir) }
    };
    if TABLE.is_tracked(fd) {
        hook(
            || {
                sockets::forget(fd);
                None::<((), Option<c_int>)>
            },
            || (),
        );
    }
    // SAFETY: the app's own argument.
    unsafe { real::closedir(dir) }
}

fn sync_hook(fd: c_int, real: impl Fn() -> c_int) -> c_int {
    if !TABLE.is_tracked(fd) {
        return real();
    }
    hook(
        || match files::write_back(fd, false)? {
            Ok(()) => None,
            Err(e) => Some((-1, Some(e))),
        },
        &real,
    )
}

/// # Safety
/// libc's `fsync` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fsync(fd: c_int) -> c_int {
    // SAFETY: the app's own argument.
    sync_hook(fd, || unsafe { real::fsync(fd) })
}

/// # Safety
/// libc's `fdatasync` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fdatasync(fd: c_int) -> c_int {
    // SAFETY: the app's own argument.
    sync_hook(fd, || unsafe { real::fdatasync(fd) })
}
