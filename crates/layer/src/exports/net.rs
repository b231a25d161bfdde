//! `connect`, `getpeername`, `getsockname`.

use std::net::SocketAddr;

use libc::{c_int, sockaddr, socklen_t};

use super::hook;
use crate::fdtable::TABLE;
use crate::{real, sockaddr as sa, sockets};

/// The caller's address, when it is an IPv4 or IPv6 one.
///
/// # Safety
/// `addr` must be valid for reads of `len` bytes (what the caller promised libc).
unsafe fn read_addr(addr: *const sockaddr, len: socklen_t) -> Option<SocketAddr> {
    if addr.is_null() {
        return None;
    }
    let len = (len as usize).min(sa::MAX);
    // SAFETY: the caller's buffer holds `len` bytes (we read no more than the largest address).
    let bytes = unsafe { std::slice::from_raw_parts(addr.cast::<u8>(), len) };
    sa::decode(bytes)
}

fn connect_hook(
    fd: c_int,
    addr: *const sockaddr,
    len: socklen_t,
    real: unsafe fn(c_int, *const sockaddr, socklen_t) -> c_int,
) -> c_int {
    hook(
        || {
            // SAFETY: the app passes libc a readable address of `len` bytes.
            let remote = unsafe { read_addr(addr, len) }?;
            sockets::connect(fd, remote)
        },
        // SAFETY: the app's own arguments, forwarded unchanged.
        || unsafe { real(fd, addr, len) },
    )
}

/// # Safety
/// libc's `connect` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    connect_hook(fd, addr, len, real::connect)
}

/// # Safety
/// libc's `connect` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    connect_hook(fd, addr, len, real::__connect)
}

/// The real call, then for a managed fd the substituted address with `*len` semantics (copy at most the
/// caller's length, report the full one).
fn name_hook(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, peer: bool) -> c_int {
    let real = if peer {
        real::getpeername
    } else {
        real::getsockname
    };
    if !TABLE.is_tracked(fd) {
        // SAFETY: the app's own arguments, forwarded unchanged.
        return unsafe { real(fd, addr, len) };
    }
    hook(
        || {
            // SAFETY: the app's own arguments, forwarded unchanged.
            let r = unsafe { real(fd, addr, len) };
            if r != 0 {
                return Some((r, Some(crate::sys::errno())));
            }
            let name = sockets::name_of(fd, peer)?;
            let (bytes, full) = sa::encode(name);
            // SAFETY: the real call succeeded, so `addr` and `len` are valid and `*len` bytes of `addr` writable.
            unsafe {
                let n = (*len as usize).min(full);
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), addr.cast::<u8>(), n);
                *len = full as socklen_t;
            }
            Some((0, None))
        },
        // SAFETY: as above.
        || unsafe { real(fd, addr, len) },
    )
}

/// # Safety
/// libc's `getpeername` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    name_hook(fd, addr, len, true)
}

/// # Safety
/// libc's `getsockname` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    name_hook(fd, addr, len, false)
}
