//! `getaddrinfo`, `gethostbyname`, `gethostbyname2`, `gethostbyname_r`, `gethostbyname2_r`. No `freeaddrinfo`:
//! our lists are allocated the way glibc frees them.

use std::ffi::CStr;

use libc::{addrinfo, c_char, c_int, hostent, size_t};

use super::hook;
use crate::dns::{self as logic, Hints};
use crate::{addrinfo as ai, hostent as he, real, sys};

/// A C string argument as UTF-8; `None` (libc decides) for NULL or anything else.
///
/// # Safety
/// `p` is NULL or a NUL-terminated string.
unsafe fn text<'a>(p: *const c_char) -> Option<&'a str> {
    if p.is_null() {
        return None;
    }
    // SAFETY: per the contract.
    unsafe { CStr::from_ptr(p) }.to_str().ok()
}

/// # Safety
/// libc's `getaddrinfo` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getaddrinfo(
    node: *const c_char,
    service: *const c_char,
    hints: *const addrinfo,
    res: *mut *mut addrinfo,
) -> c_int {
    hook(
        || {
            if res.is_null() {
                return None;
            }
            // SAFETY: libc's contract: NULL or NUL-terminated strings.
            let name = unsafe { text(node) }?;
            let serv = if service.is_null() {
                None
            } else {
                // SAFETY: as above.
                Some(unsafe { text(service) }?)
            };
            let hints = if hints.is_null() {
                Hints::default()
            } else {
                // SAFETY: a non-NULL hints points to an addrinfo.
                let h = unsafe { &*hints };
                Hints {
                    flags: h.ai_flags,
                    family: h.ai_family,
                    socktype: h.ai_socktype,
                    protocol: h.ai_protocol,
                }
            };
            let answer = match logic::getaddrinfo(name, serv, &hints)? {
                Ok(answer) => answer,
                Err(eai) => return Some((eai, None)),
            };
            match ai::build(&answer) {
                Ok(list) => {
                    // SAFETY: `res` is non-NULL and writable per the contract.
                    unsafe { *res = list };
                    Some((0, None))
                }
                Err(eai) => Some((eai, None)),
            }
        },
        // SAFETY: the app's own arguments.
        || unsafe { real::getaddrinfo(node, service, hints, res) },
    )
}

fn by_name(name: *const c_char, af: c_int) -> Option<(*mut hostent, Option<c_int>)> {
    // SAFETY: libc's contract: a NUL-terminated name.
    let name = unsafe { text(name) }?;
    match logic::gethostbyname(name, af)? {
        Ok(answer) => Some((he::thread_local(&answer, af), None)),
        Err(herr) => {
            sys::set_h_errno(herr);
            Some((std::ptr::null_mut(), None))
        }
    }
}

/// # Safety
/// libc's `gethostbyname` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gethostbyname(name: *const c_char) -> *mut hostent {
    // SAFETY: the app's own argument.
    hook(
        || by_name(name, libc::AF_INET),
        || unsafe { real::gethostbyname(name) },
    )
}

/// # Safety
/// libc's `gethostbyname2` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gethostbyname2(name: *const c_char, af: c_int) -> *mut hostent {
    // SAFETY: the app's own arguments.
    hook(
        || by_name(name, af),
        || unsafe { real::gethostbyname2(name, af) },
    )
}

/// The `_r` flavours: 0 with `*result` set, or 0 with `*result` NULL and `*h_errnop` saying why (`EAGAIN` for
/// `TRY_AGAIN`), or `ERANGE` with `*h_errnop = NETDB_INTERNAL` when `buf` is too small — as glibc.
fn by_name_r(
    name: *const c_char,
    af: c_int,
    ret: *mut hostent,
    buf: *mut c_char,
    buflen: size_t,
    result: *mut *mut hostent,
    h_errnop: *mut c_int,
) -> Option<(c_int, Option<c_int>)> {
    if result.is_null() || h_errnop.is_null() {
        return None;
    }
    // SAFETY: libc's contract: a NUL-terminated name.
    let text = unsafe { text(name) }?;
    let answer = logic::gethostbyname(text, af)?;
    // SAFETY: `result` and `h_errnop` are non-NULL and writable; `ret` and `buf` per the contract.
    unsafe {
        *result = std::ptr::null_mut();
        match answer {
            Ok(answer) => match he::fill(&answer, af, ret, buf, buflen) {
                Ok(()) => {
                    *result = ret;
                    *h_errnop = 0;
                    Some((0, None))
                }
                Err(e) => {
                    *h_errnop = crate::sys::NETDB_INTERNAL;
                    Some((e, Some(e)))
                }
            },
            Err(herr) => {
                *h_errnop = herr;
                let r = if herr == crate::sys::TRY_AGAIN {
                    libc::EAGAIN
                } else {
                    0
                };
                Some((r, None))
            }
        }
    }
}

/// # Safety
/// libc's `gethostbyname_r` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gethostbyname_r(
    name: *const c_char,
    ret: *mut hostent,
    buf: *mut c_char,
    buflen: size_t,
    result: *mut *mut hostent,
    h_errnop: *mut c_int,
) -> c_int {
    hook(
        || by_name_r(name, libc::AF_INET, ret, buf, buflen, result, h_errnop),
        // SAFETY: the app's own arguments.
        || unsafe { real::gethostbyname_r(name, ret, buf, buflen, result, h_errnop) },
    )
}

/// # Safety
/// libc's `gethostbyname2_r` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gethostbyname2_r(
    name: *const c_char,
    af: c_int,
    ret: *mut hostent,
    buf: *mut c_char,
    buflen: size_t,
    result: *mut *mut hostent,
    h_errnop: *mut c_int,
) -> c_int {
    hook(
        || by_name_r(name, af, ret, buf, buflen, result, h_errnop),
        // SAFETY: the app's own arguments.
        || unsafe { real::gethostbyname2_r(name, af, ret, buf, buflen, result, h_errnop) },
    )
}
