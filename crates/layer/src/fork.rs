//! `fork` without deadlocks or shared channels: the tables' locks are taken before the fork and released on
//! both sides (so a child never inherits a lock some other thread held), and the child closes its copies of the
//! parent's channels to `mirrordctl` and takes over the tables (see [`crate::state`] for vfork and posix_spawn).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::MutexGuard;

use libc::c_int;

use crate::fdtable::{Entry, FdTable, TABLE};

type Held = (
    MutexGuard<'static, BTreeMap<c_int, Entry>>,
    MutexGuard<'static, crate::names::Names>,
);

thread_local! {
    static HELD: RefCell<Option<Held>> = const { RefCell::new(None) };
}

pub fn register() {
    crate::sys::register_atfork(prepare, parent, child);
}

extern "C" fn prepare() {
    // A fork from inside the layer (a signal handler) may already hold a lock on this thread: leave them be.
    if crate::guard::inside() {
        return;
    }
    let held = (TABLE.lock(), crate::names::lock());
    let _ = HELD.try_with(|h| h.try_borrow_mut().map(|mut h| *h = Some(held)));
}

extern "C" fn parent() {
    let _ = HELD.try_with(|h| h.try_borrow_mut().map(|mut h| h.take()));
}

extern "C" fn child() {
    crate::state::take_ownership();
    let held = HELD
        .try_with(|h| h.try_borrow_mut().ok().and_then(|mut h| h.take()))
        .ok()
        .flatten();
    let channels = match held {
        Some((mut map, names)) => {
            drop(names);
            FdTable::take_channels(&mut map, &TABLE)
        }
        None => Vec::new(),
    };
    for fd in channels {
        crate::sys::close(fd);
    }
}
