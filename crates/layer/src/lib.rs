//! `libmirrord_layer.so`: loaded into a local process with `LD_PRELOAD` by `mirrordctl exec`, it makes the
//! process's outgoing TCP connections, UDP datagrams and name lookups happen in the target's context, and its
//! file operations on the paths `feature.fs` sends there read (and write) the target's files.
//!
//! It interposes the libc functions listed in [`exports`] (plain symbol interposition, `dlsym(RTLD_NEXT)` for
//! the real ones) and asks `mirrordctl` over a per-thread UNIX socket ([`client`]). Whatever it does not cover,
//! or when it is not configured or `mirrordctl` is gone, it is plain libc.
//!
//! The data's path: an export ([`exports`]) takes the reentrancy [`guard`], turns C arguments into Rust values
//! and calls the logic ([`sockets`] for connects, [`dns`] for lookups, [`files`] for paths) which decides with
//! the configuration
//! ([`state`]), asks through [`client`], and records managed descriptors in [`fdtable`]; the answer is turned
//! back into C ([`addrinfo`], [`hostent`], [`sockaddr`]).
#![cfg(all(target_os = "linux", target_env = "gnu"))]
// The unit tests are built without the exports (they would replace libc inside the test binary), so what only
// the exports reach looks unused there.
#![cfg_attr(test, allow(dead_code))]

#[macro_use]
mod log;

mod addrinfo;
mod client;
mod dns;
#[cfg(not(test))]
mod exports;
mod fdtable;
mod files;
mod fork;
mod guard;
mod hostent;
mod names;
mod real;
mod sockaddr;
mod sockets;
mod state;
mod sys;

/// Runs when the dynamic loader maps the library, before the program's `main` and its
/// threads (see [`state::init_at_load`]). Not in unit tests, which are not preloaded.
#[cfg(not(test))]
#[used]
#[allow(unsafe_code)] // an `.init_array` entry: the loader calls it once, with no arguments
#[link_section = ".init_array"]
static INIT_AT_LOAD: extern "C" fn() = {
    extern "C" fn init_at_load() {
        // Nothing may unwind into the loader.
        let _ = std::panic::catch_unwind(state::init_at_load);
    }
    init_at_load
};

/// Runs when the process exits normally (`exit`, a return from `main`): remote files still open for writing
/// go back to the target (see [`files::write_back_all`]).
#[cfg(not(test))]
#[used]
#[allow(unsafe_code)] // a `.fini_array` entry: called once at exit, with no arguments
#[link_section = ".fini_array"]
static WRITE_BACK_AT_EXIT: extern "C" fn() = {
    extern "C" fn write_back_at_exit() {
        let _ = std::panic::catch_unwind(|| {
            if let Some(_guard) = guard::Guard::enter() {
                // glibc flushes stdio streams only after the `.fini_array` entries: what an
                // `fopen`ed remote file still buffers must reach its copy first.
                // SAFETY: fflush(NULL) flushes every open stream; it takes no pointer of ours.
                #[allow(unsafe_code)]
                unsafe {
                    libc::fflush(std::ptr::null_mut());
                }
                files::write_back_all();
            }
        });
    }
    write_back_at_exit
};
