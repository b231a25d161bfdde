//! Safe wrappers over the few libc calls the layer's logic makes itself (none of them hooked, or reached
//! through [`crate::real`]): errno, h_errno, socket options, poll/send/recv on its channel, service lookup.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::time::Duration;

use libc::{c_int, c_void, socklen_t};

use crate::sockaddr;

// glibc's <netdb.h> values (not in the libc crate).
pub const NETDB_INTERNAL: c_int = -1;
pub const HOST_NOT_FOUND: c_int = 1;
pub const TRY_AGAIN: c_int = 2;
pub const NO_RECOVERY: c_int = 3;
pub const NO_DATA: c_int = 4;

// glibc functions the libc crate does not declare.
extern "C" {
    fn __h_errno_location() -> *mut c_int;
    fn getservbyname_r(
        name: *const libc::c_char,
        proto: *const libc::c_char,
        result_buf: *mut libc::servent,
        buf: *mut libc::c_char,
        buflen: libc::size_t,
        result: *mut *mut libc::servent,
    ) -> c_int;
    fn inet_aton(cp: *const libc::c_char, inp: *mut libc::in_addr) -> c_int;
}

pub fn errno() -> c_int {
    // SAFETY: glibc's thread-local errno, always valid for the calling thread.
    unsafe { *libc::__errno_location() }
}

pub fn set_errno(e: c_int) {
    // SAFETY: as in `errno`.
    unsafe { *libc::__errno_location() = e }
}

pub fn set_h_errno(e: c_int) {
    // SAFETY: glibc's thread-local h_errno, always valid for the calling thread.
    unsafe { *__h_errno_location() = e }
}

/// Opens `path` (the layer's own copy of a remote file) with `flags`, which hold no `O_CREAT`.
pub fn open(path: &CStr, flags: c_int) -> Result<c_int, c_int> {
    // SAFETY: a NUL-terminated path; without O_CREAT or O_TMPFILE no mode is read.
    let fd = unsafe { crate::real::open64(path.as_ptr(), flags & !libc::O_CREAT, 0) };
    if fd < 0 {
        Err(errno())
    } else {
        Ok(fd)
    }
}

/// Removes `path`'s name (the layer's own copies only).
pub fn unlink(path: &CStr) {
    // SAFETY: a NUL-terminated path; unlink is not hooked.
    unsafe { libc::unlink(path.as_ptr()) };
}

/// The size of the file open as `fd`, as the kernel has it.
pub fn file_size(fd: c_int) -> Option<u64> {
    let mut st = std::mem::MaybeUninit::<libc::stat64>::zeroed();
    // SAFETY: `st` is valid for writes of a `struct stat64`; the real fstat64 fills it.
    let r = unsafe { crate::real::fstat64(fd, st.as_mut_ptr()) };
    // SAFETY: fstat64 succeeded, so it initialised the struct (and it was zeroed before).
    (r == 0).then(|| u64::try_from(unsafe { st.assume_init() }.st_size).unwrap_or(0))
}

pub fn getpid() -> u32 {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::getpid() as u32 }
}

fn sockopt_int(fd: c_int, level: c_int, name: c_int) -> Option<c_int> {
    let mut v: c_int = 0;
    let mut len = std::mem::size_of::<c_int>() as socklen_t;
    // SAFETY: `v` and `len` are valid for writes of an int, as the options read here are.
    let r = unsafe { libc::getsockopt(fd, level, name, (&raw mut v).cast::<c_void>(), &mut len) };
    (r == 0).then_some(v)
}

/// The socket's own address (the real `getsockname`), when it is an IPv4 or IPv6 one.
pub fn local_name(fd: c_int) -> Option<std::net::SocketAddr> {
    let mut storage = [0u8; sockaddr::MAX];
    let mut len = sockaddr::MAX as socklen_t;
    // SAFETY: `storage` is writable for `len` bytes; the real function writes at most that.
    let r = unsafe { crate::real::getsockname(fd, storage.as_mut_ptr().cast(), &mut len) };
    if r != 0 {
        return None;
    }
    sockaddr::decode(&storage[..(len as usize).min(sockaddr::MAX)])
}

/// `(domain, type)` of a socket, `None` when `fd` is not one.
pub fn socket_kind(fd: c_int) -> Option<(c_int, c_int)> {
    Some((
        sockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN)?,
        sockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE)?,
    ))
}

/// The real `connect(fd, addr)`: its return value and errno.
pub fn connect(fd: c_int, addr: std::net::SocketAddr) -> (c_int, c_int) {
    let (bytes, len) = sockaddr::encode(addr);
    let storage = sockaddr::Storage::from_bytes(&bytes);
    // SAFETY: `storage` holds a sockaddr of `len` bytes, suitably aligned, alive for the call.
    let r = unsafe { crate::real::connect(fd, storage.as_ptr(), len as socklen_t) };
    (r, if r == 0 { 0 } else { errno() })
}

pub fn close(fd: c_int) {
    // SAFETY: closing a descriptor the layer owns.
    unsafe { crate::real::close(fd) };
}

/// A close-on-exec copy of `fd` at 900 or above, out of the way of apps that expect low numbers; `None` when
/// the limit is too low for that.
pub fn dup_high(fd: c_int) -> Option<c_int> {
    // SAFETY: F_DUPFD_CLOEXEC takes an integer argument.
    let r = unsafe { crate::real::fcntl(fd, libc::F_DUPFD_CLOEXEC, 900) };
    (r >= 0).then_some(r)
}

/// Waits until `fd` is ready for `events`; `Err(ETIMEDOUT)` after `timeout`.
pub fn poll(fd: c_int, events: libc::c_short, timeout: Duration) -> Result<(), c_int> {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let ms = timeout.as_millis().clamp(1, c_int::MAX as u128) as c_int;
    // SAFETY: one valid pollfd.
    match unsafe { libc::poll(&mut p, 1, ms) } {
        0 => Err(libc::ETIMEDOUT),
        n if n > 0 => Ok(()),
        _ => Err(errno()),
    }
}

pub fn send(fd: c_int, buf: &[u8]) -> Result<usize, c_int> {
    // SAFETY: `buf` is valid for reads of its length. MSG_NOSIGNAL: a dead mirrordctl must not SIGPIPE the app.
    let r = unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    if r < 0 {
        Err(errno())
    } else {
        Ok(r as usize)
    }
}

pub fn recv(fd: c_int, buf: &mut [u8]) -> Result<usize, c_int> {
    // SAFETY: `buf` is valid for writes of its length.
    let r = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if r < 0 {
        Err(errno())
    } else {
        Ok(r as usize)
    }
}

/// Writes all of `buf` (the debug log), giving up on error.
pub fn write_all(fd: c_int, mut buf: &[u8]) {
    while !buf.is_empty() {
        // SAFETY: `buf` is valid for reads of its length.
        let r = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if r <= 0 {
            if r < 0 && errno() == libc::EINTR {
                continue;
            }
            return;
        }
        buf = &buf[r as usize..];
    }
}

/// `getservbyname_r(name, proto)`: the port of a named service in `/etc/services`, as glibc's getaddrinfo
/// looks it up.
pub fn service_port(name: &CStr, proto: &CStr) -> Option<u16> {
    // SAFETY: servent is plain data; all-zero is a valid value to be overwritten.
    let mut ent: libc::servent = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut result: *mut libc::servent = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; `buf` is as long as we say.
    let r = unsafe {
        getservbyname_r(
            name.as_ptr(),
            proto.as_ptr(),
            &mut ent,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    (r == 0 && !result.is_null()).then(|| u16::from_be(ent.s_port as u16))
}

/// Whether glibc reads `name` as a numeric IPv4 address (`inet_aton`: `127.1`, `0x7f000001`, ...).
pub fn is_inet_aton(name: &CStr) -> bool {
    let mut a = libc::in_addr { s_addr: 0 };
    // SAFETY: a NUL-terminated string and a valid in_addr.
    unsafe { inet_aton(name.as_ptr(), &mut a) != 0 }
}

/// Registers the fork handlers (see [`crate::fork`]).
pub fn register_atfork(prepare: extern "C" fn(), parent: extern "C" fn(), child: extern "C" fn()) {
    // SAFETY: three `extern "C" fn()` that live as long as the library (which is never unloaded).
    unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
}
