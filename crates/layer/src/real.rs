//! The real libc functions behind the hooks, found with `dlsym(RTLD_NEXT)` on first use and cached.
//!
//! Inside this library a call to `connect` (or any hooked name) binds to our own export, so the layer reaches
//! libc only through here. A symbol that cannot be found makes the call fail (`ENOSYS`) rather than recurse.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicPtr, Ordering};

use libc::{
    addrinfo, c_char, c_int, c_uint, c_ulong, c_void, hostent, msghdr, size_t, sockaddr, socklen_t,
    ssize_t,
};

fn set_errno(e: c_int) {
    crate::sys::set_errno(e);
}

macro_rules! real_fns {
    ($( $(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty, missing: $missing:expr; )*) => {$(
        $(#[$doc])*
        /// # Safety
        /// The C function's contract: the arguments must be what libc expects for it.
        pub unsafe fn $name($($arg: $ty),*) -> $ret {
            type F = unsafe extern "C" fn($($ty),*) -> $ret;
            static PTR: AtomicPtr<libc::c_void> = AtomicPtr::new(std::ptr::null_mut());
            let mut p = PTR.load(Ordering::Acquire);
            if p.is_null() {
                // SAFETY: a NUL-terminated literal name; RTLD_NEXT is valid from a shared object.
                p = unsafe { libc::dlsym(libc::RTLD_NEXT, concat!(stringify!($name), "\0").as_ptr().cast()) };
                if p.is_null() {
                    return $missing;
                }
                PTR.store(p, Ordering::Release);
            }
            // SAFETY: `p` is libc's definition of this very symbol, whose C prototype `F` transcribes.
            let f: F = unsafe { std::mem::transmute::<*mut libc::c_void, F>(p) };
            // SAFETY: the caller upholds the function's contract.
            unsafe { f($($arg),*) }
        }
    )*};
}

fn enosys() -> c_int {
    set_errno(libc::ENOSYS);
    -1
}

fn enosys_ptr<T>() -> *mut T {
    set_errno(libc::ENOSYS);
    std::ptr::null_mut()
}

fn enosys_ssize() -> ssize_t {
    set_errno(libc::ENOSYS);
    -1
}

real_fns! {
    fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int, missing: enosys();
    fn __connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int, missing: enosys();
    fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int, missing: enosys();
    fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int, missing: enosys();
    fn recvfrom(fd: c_int, buf: *mut c_void, len: size_t, flags: c_int, addr: *mut sockaddr, addrlen: *mut socklen_t)
        -> ssize_t, missing: enosys_ssize();
    fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t, missing: enosys_ssize();
    fn sendto(fd: c_int, buf: *const c_void, len: size_t, flags: c_int, addr: *const sockaddr, addrlen: socklen_t)
        -> ssize_t, missing: enosys_ssize();
    fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t, missing: enosys_ssize();
    fn listen(fd: c_int, backlog: c_int) -> c_int, missing: enosys();
    fn close(fd: c_int) -> c_int, missing: enosys();
    fn __close(fd: c_int) -> c_int, missing: enosys();
    fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int, missing: enosys();
    fn dup(fd: c_int) -> c_int, missing: enosys();
    fn dup2(old: c_int, new: c_int) -> c_int, missing: enosys();
    fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int, missing: enosys();
    /// `fcntl`'s third argument is variadic; on x86-64 and AArch64 Linux an integer or pointer vararg is passed
    /// exactly like a named `unsigned long`, so it is forwarded as one (unread by commands that take none).
    fn fcntl(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int, missing: enosys();
    fn fcntl64(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int, missing: enosys();
    fn getaddrinfo(node: *const c_char, service: *const c_char, hints: *const addrinfo, res: *mut *mut addrinfo) -> c_int,
        missing: { set_errno(libc::ENOSYS); libc::EAI_SYSTEM };
    fn gethostbyname(name: *const c_char) -> *mut hostent,
        missing: { crate::sys::set_h_errno(crate::sys::NO_RECOVERY); std::ptr::null_mut() };
    fn gethostbyname2(name: *const c_char, af: c_int) -> *mut hostent,
        missing: { crate::sys::set_h_errno(crate::sys::NO_RECOVERY); std::ptr::null_mut() };
    fn gethostbyname_r(name: *const c_char, ret: *mut hostent, buf: *mut c_char, buflen: size_t,
        result: *mut *mut hostent, h_errnop: *mut c_int) -> c_int, missing: libc::ENOSYS;
    fn gethostbyname2_r(name: *const c_char, af: c_int, ret: *mut hostent, buf: *mut c_char, buflen: size_t,
        result: *mut *mut hostent, h_errnop: *mut c_int) -> c_int, missing: libc::ENOSYS;
    /// `open`'s mode is variadic; like `fcntl`'s argument it travels as a named `unsigned int` (see `fcntl`).
    fn open(path: *const c_char, flags: c_int, mode: c_uint) -> c_int, missing: enosys();
    fn open64(path: *const c_char, flags: c_int, mode: c_uint) -> c_int, missing: enosys();
    fn __open_2(path: *const c_char, flags: c_int) -> c_int, missing: enosys();
    fn __open64_2(path: *const c_char, flags: c_int) -> c_int, missing: enosys();
    fn openat(dirfd: c_int, path: *const c_char, flags: c_int, mode: c_uint) -> c_int, missing: enosys();
    fn openat64(dirfd: c_int, path: *const c_char, flags: c_int, mode: c_uint) -> c_int, missing: enosys();
    fn __openat_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int, missing: enosys();
    fn __openat64_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int, missing: enosys();
    fn creat(path: *const c_char, mode: libc::mode_t) -> c_int, missing: enosys();
    fn creat64(path: *const c_char, mode: libc::mode_t) -> c_int, missing: enosys();
    fn fopen(path: *const c_char, mode: *const c_char) -> *mut libc::FILE, missing: enosys_ptr();
    fn fopen64(path: *const c_char, mode: *const c_char) -> *mut libc::FILE, missing: enosys_ptr();
    fn opendir(path: *const c_char) -> *mut libc::DIR, missing: enosys_ptr();
    fn stat(path: *const c_char, buf: *mut libc::stat) -> c_int, missing: enosys();
    fn stat64(path: *const c_char, buf: *mut libc::stat64) -> c_int, missing: enosys();
    fn lstat(path: *const c_char, buf: *mut libc::stat) -> c_int, missing: enosys();
    fn lstat64(path: *const c_char, buf: *mut libc::stat64) -> c_int, missing: enosys();
    fn fstat(fd: c_int, buf: *mut libc::stat) -> c_int, missing: enosys();
    fn fstat64(fd: c_int, buf: *mut libc::stat64) -> c_int, missing: enosys();
    fn fstatat(dirfd: c_int, path: *const c_char, buf: *mut libc::stat, flags: c_int) -> c_int, missing: enosys();
    fn fstatat64(dirfd: c_int, path: *const c_char, buf: *mut libc::stat64, flags: c_int) -> c_int,
        missing: enosys();
    fn statx(dirfd: c_int, path: *const c_char, flags: c_int, mask: c_uint, buf: *mut libc::statx) -> c_int,
        missing: enosys();
    fn access(path: *const c_char, mode: c_int) -> c_int, missing: enosys();
    fn faccessat(dirfd: c_int, path: *const c_char, mode: c_int, flags: c_int) -> c_int, missing: enosys();
    fn readlink(path: *const c_char, buf: *mut c_char, size: size_t) -> ssize_t, missing: enosys_ssize();
    fn readlinkat(dirfd: c_int, path: *const c_char, buf: *mut c_char, size: size_t) -> ssize_t,
        missing: enosys_ssize();
    fn getxattr(path: *const c_char, name: *const c_char, value: *mut c_void, size: size_t) -> ssize_t,
        missing: enosys_ssize();
    fn lgetxattr(path: *const c_char, name: *const c_char, value: *mut c_void, size: size_t) -> ssize_t,
        missing: enosys_ssize();
    fn listxattr(path: *const c_char, list: *mut c_char, size: size_t) -> ssize_t, missing: enosys_ssize();
    fn llistxattr(path: *const c_char, list: *mut c_char, size: size_t) -> ssize_t, missing: enosys_ssize();
    fn fclose(stream: *mut libc::FILE) -> c_int, missing: enosys();
    fn closedir(dir: *mut libc::DIR) -> c_int, missing: enosys();
    fn fsync(fd: c_int) -> c_int, missing: enosys();
    fn fdatasync(fd: c_int) -> c_int, missing: enosys();
}
