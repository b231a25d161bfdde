//! `connect`, `listen`, `getpeername`, `getsockname`; `sendto`/`sendmsg` to a destination on an unconnected UDP socket, and
//! the source address `recvfrom`/`recvmsg` report.

use std::net::SocketAddr;

use libc::{c_int, c_void, msghdr, size_t, sockaddr, socklen_t, ssize_t};

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
            let Some(remote) = (unsafe { read_addr(addr, len) }) else {
                // SAFETY: as above; the family is the address's first two bytes.
                let family = (!addr.is_null() && len >= 2).then(|| unsafe { (*addr).sa_family });
                if family == Some(libc::AF_UNSPEC as libc::sa_family_t) {
                    sockets::disconnected(fd);
                }
                return None;
            };
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

/// After a real receive on a managed (UDP) fd: the datagram's source, the relay, is replaced by what the app
/// connected to, with `*len` semantics.
///
/// # Safety
/// `addr` points to `cap` writable bytes into which the kernel wrote the source, whose full length it put in
/// `*len`.
unsafe fn substitute_source(fd: c_int, addr: *mut sockaddr, cap: socklen_t, len: *mut socklen_t) {
    hook(
        || {
            // SAFETY: per the contract: no more than the buffer's size is read.
            let real = unsafe { read_addr(addr, cap.min(*len)) }?;
            let shown = sockets::source_of(fd, real)?;
            let (bytes, full) = sa::encode(shown);
            // SAFETY: at most the buffer's size is written.
            unsafe {
                let n = (cap as usize).min(full);
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), addr.cast::<u8>(), n);
                *len = full as socklen_t;
            }
            Some(((), None))
        },
        || (),
    )
}

/// # Safety
/// libc's `recvfrom` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn recvfrom(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
) -> ssize_t {
    let cap = if len.is_null() {
        0
    } else {
        // SAFETY: a non-NULL `len` points to the buffer's size, per the contract.
        unsafe { *len }
    };
    // SAFETY: the app's own arguments, forwarded unchanged.
    let r = unsafe { real::recvfrom(fd, buf, n, flags, addr, len) };
    if r >= 0 && !addr.is_null() && !len.is_null() && TABLE.is_tracked(fd) {
        // SAFETY: the call succeeded: the kernel wrote the source into `addr` (`cap` bytes), its length into `len`.
        unsafe { substitute_source(fd, addr, cap, len) };
    }
    r
}

/// # Safety
/// libc's `recvmsg` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t {
    let cap = if msg.is_null() {
        0
    } else {
        // SAFETY: a non-NULL `msg` is a valid msghdr, per the contract.
        unsafe { (*msg).msg_namelen }
    };
    // SAFETY: the app's own arguments, forwarded unchanged.
    let r = unsafe { real::recvmsg(fd, msg, flags) };
    if r >= 0 && !msg.is_null() && TABLE.is_tracked(fd) {
        // SAFETY: a successful recvmsg wrote the source (if asked for) into `msg_name`, its length into
        // `msg_namelen`.
        unsafe {
            let m = &mut *msg;
            if !m.msg_name.is_null() {
                substitute_source(fd, m.msg_name.cast(), cap, &mut m.msg_namelen);
            }
        }
    }
    r
}

/// Where a datagram to `addr` really goes: the relay of its flow through the target, or the errno; `None` when
/// libc sends it as asked (not an address, not UDP, not selected, the layer idle or busy on this thread).
///
/// # Safety
/// `addr` is NULL or valid for reads of `len` bytes.
unsafe fn relay_for(
    fd: c_int,
    addr: *const sockaddr,
    len: socklen_t,
) -> Option<Result<SocketAddr, c_int>> {
    if addr.is_null() {
        return None;
    }
    hook(
        || {
            // SAFETY: per the contract.
            let dest = unsafe { read_addr(addr, len) }?;
            Some((sockets::send_to(fd, dest), None))
        },
        || None,
    )
}

/// # Safety
/// libc's `sendto` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendto(
    fd: c_int,
    buf: *const c_void,
    n: size_t,
    flags: c_int,
    addr: *const sockaddr,
    len: socklen_t,
) -> ssize_t {
    // SAFETY: the app passes libc a readable address of `len` bytes, or NULL.
    match unsafe { relay_for(fd, addr, len) } {
        // SAFETY: the app's own arguments, forwarded unchanged.
        None => unsafe { real::sendto(fd, buf, n, flags, addr, len) },
        Some(Err(errno)) => {
            crate::sys::set_errno(errno);
            -1
        }
        Some(Ok(relay)) => {
            let (bytes, rlen) = sa::encode(relay);
            let storage = sa::Storage::from_bytes(&bytes);
            // SAFETY: the app's buffer; `storage` holds a sockaddr of `rlen` bytes for the call.
            unsafe { real::sendto(fd, buf, n, flags, storage.as_ptr(), rlen as socklen_t) }
        }
    }
}

/// # Safety
/// libc's `sendmsg` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t {
    if msg.is_null() {
        // SAFETY: as the app asked (the kernel reports EFAULT).
        return unsafe { real::sendmsg(fd, msg, flags) };
    }
    // SAFETY: a non-NULL `msg` is a valid msghdr, per the contract.
    let m = unsafe { &*msg };
    // SAFETY: `msg_name` is NULL or holds `msg_namelen` bytes, per the contract.
    match unsafe { relay_for(fd, m.msg_name.cast(), m.msg_namelen) } {
        // SAFETY: the app's own arguments, forwarded unchanged.
        None => unsafe { real::sendmsg(fd, msg, flags) },
        Some(Err(errno)) => {
            crate::sys::set_errno(errno);
            -1
        }
        Some(Ok(relay)) => {
            let (bytes, rlen) = sa::encode(relay);
            let storage = sa::Storage::from_bytes(&bytes);
            // The app's message with the relay as its destination; its buffers are the app's, unchanged.
            let mut copy = *m;
            copy.msg_name = storage.as_ptr().cast_mut().cast();
            copy.msg_namelen = rlen as socklen_t;
            // SAFETY: `copy` is the app's msghdr but for a name that outlives the call.
            unsafe { real::sendmsg(fd, &copy, flags) }
        }
    }
}

/// # Safety
/// libc's `listen` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn listen(fd: c_int, backlog: c_int) -> c_int {
    // SAFETY: the app's own arguments, forwarded unchanged.
    let r = unsafe { real::listen(fd, backlog) };
    if r == 0 {
        hook(
            || {
                sockets::listened(fd);
                Some(((), None))
            },
            || (),
        );
    }
    r
}
