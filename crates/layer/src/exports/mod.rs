//! The exported libc names: thin C-ABI shells that check the fast path, turn pointers into Rust values, call
//! the layer's logic and write its answer back. Every export falls back to the real function when the layer is
//! already working on this thread, declines, or panics.
#![allow(unsafe_code)]

mod dns;
mod fd;
mod files;
mod net;

use std::panic::{catch_unwind, AssertUnwindSafe};

use libc::c_int;

use crate::guard::Guard;
use crate::sys;

/// Runs `slow` as the layer — guard held, errno kept unless it returns one, panics caught — or `real` when the
/// layer is already busy on this thread, `slow` declines (`None`), or it panicked.
fn hook<R>(slow: impl FnOnce() -> Option<(R, Option<c_int>)>, real: impl FnOnce() -> R) -> R {
    let Some(_guard) = Guard::enter() else {
        return real();
    };
    let saved = sys::errno();
    match catch_unwind(AssertUnwindSafe(slow)) {
        Ok(Some((value, errno))) => {
            sys::set_errno(errno.unwrap_or(saved));
            value
        }
        _ => {
            sys::set_errno(saved);
            real()
        }
    }
}
