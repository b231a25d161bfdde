//! `close`, `__close`, `close_range`, `dup`, `dup2`, `dup3`, `fcntl`, `fcntl64`: keeping the managed table right
//! (and writing a remote file's copy back to the target on its last close).
//! Untracked descriptors cost one atomic load and go straight to libc.

use libc::{c_int, c_uint, c_ulong};

use super::hook;
use crate::fdtable::TABLE;
use crate::{real, sockets, sys};

fn close_hook(fd: c_int, real: unsafe fn(c_int) -> c_int) -> c_int {
    if !TABLE.is_tracked(fd) {
        // SAFETY: the app's own argument.
        return unsafe { real(fd) };
    }
    hook(
        || {
            // A remote file's copy opened for writing goes back to the target before its last close.
            let wrote = crate::files::write_back(fd, true);
            // Forget first: once closed, the number may be reused by another thread at once.
            sockets::forget(fd);
            match wrote {
                Some(Err(e)) => {
                    // SAFETY: the app's own argument; the descriptor is closed whatever the write-back gave.
                    unsafe { real(fd) };
                    Some((-1, Some(e)))
                }
                _ => None,
            }
        },
        // SAFETY: the app's own argument.
        || unsafe { real(fd) },
    )
}

/// # Safety
/// libc's `close` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    close_hook(fd, real::close)
}

/// # Safety
/// libc's `close` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __close(fd: c_int) -> c_int {
    close_hook(fd, real::__close)
}

/// # Safety
/// libc's `close_range` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int {
    if TABLE.is_empty() || flags & libc::CLOSE_RANGE_CLOEXEC as c_int != 0 {
        // SAFETY: the app's own arguments.
        return unsafe { real::close_range(first, last, flags) };
    }
    hook(
        || {
            let first = c_int::try_from(first).unwrap_or(c_int::MAX);
            let last = c_int::try_from(last).unwrap_or(c_int::MAX);
            sockets::forget_range(first, last);
            None
        },
        // SAFETY: the app's own arguments.
        || unsafe { real::close_range(first, last, flags) },
    )
}

/// Runs `dup` (any flavour) and records `result` as a copy of `from`.
fn dup_hook(from: c_int, to: c_int, dup: impl Fn() -> c_int) -> c_int {
    if !TABLE.is_tracked(from) && !TABLE.is_tracked(to) {
        return dup();
    }
    hook(
        || {
            // `to`, if open, is closed by the dup: a remote file's copy goes back first.
            if to >= 0 && to != from {
                let _ = crate::files::write_back(to, true);
            }
            let r = dup();
            if r < 0 {
                return Some((r, Some(sys::errno())));
            }
            sockets::copied(from, r);
            Some((r, None))
        },
        &dup,
    )
}

/// # Safety
/// libc's `dup` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup(fd: c_int) -> c_int {
    // SAFETY: the app's own argument.
    dup_hook(fd, -1, || unsafe { real::dup(fd) })
}

/// # Safety
/// libc's `dup2` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup2(old: c_int, new: c_int) -> c_int {
    // SAFETY: the app's own arguments.
    dup_hook(old, new, || unsafe { real::dup2(old, new) })
}

/// # Safety
/// libc's `dup3` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    // SAFETY: the app's own arguments.
    dup_hook(old, new, || unsafe { real::dup3(old, new, flags) })
}

fn fcntl_hook(
    fd: c_int,
    cmd: c_int,
    arg: c_ulong,
    real: unsafe fn(c_int, c_int, c_ulong) -> c_int,
) -> c_int {
    if cmd == libc::F_DUPFD || cmd == libc::F_DUPFD_CLOEXEC {
        // SAFETY: the app's own arguments (F_DUPFD* take an integer).
        dup_hook(fd, -1, || unsafe { real(fd, cmd, arg) })
    } else {
        // SAFETY: the app's own arguments; the variadic one travels as it came (see `real::fcntl`).
        unsafe { real(fd, cmd, arg) }
    }
}

/// `fcntl(fd, cmd, ...)`. Defining a C-variadic function needs nightly; on x86-64 and AArch64 Linux the one
/// variadic integer or pointer argument arrives exactly where a named `unsigned long` would, so it is declared
/// as one and forwarded untouched.
///
/// # Safety
/// libc's `fcntl` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    fcntl_hook(fd, cmd, arg, real::fcntl)
}

/// # Safety
/// libc's `fcntl64` contract (see [`fcntl`]).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    fcntl_hook(fd, cmd, arg, real::fcntl64)
}
