//! The optional debug log (`MIRRORD_LAYER_LOG`): lines appended to that file through plain `write`, never to
//! the app's stdout or stderr. Its descriptor is tracked, so if the app closes or reuses the number the log
//! stops instead of writing into the app's file.

use std::ffi::OsString;
use std::fmt;
use std::os::fd::IntoRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicI32, Ordering};

use crate::fdtable::{Entry, TABLE};
use crate::sys;

static FD: AtomicI32 = AtomicI32::new(-1);

macro_rules! debug {
    ($($arg:tt)*) => {
        if $crate::log::enabled() {
            $crate::log::write(format_args!($($arg)*));
        }
    };
}

pub fn open(path: Option<OsString>) {
    let Some(path) = path else { return };
    let Ok(file) = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
    else {
        return;
    };
    let fd = file.into_raw_fd();
    let fd = match sys::dup_high(fd) {
        Some(high) => {
            sys::close(fd);
            high
        }
        None => fd,
    };
    TABLE.insert(fd, Entry::Log);
    FD.store(fd, Ordering::Release);
}

pub fn enabled() -> bool {
    FD.load(Ordering::Relaxed) >= 0
}

pub fn write(args: fmt::Arguments<'_>) {
    let fd = FD.load(Ordering::Acquire);
    if fd < 0 {
        return;
    }
    if TABLE.get(fd) != Some(Entry::Log) {
        FD.store(-1, Ordering::Release);
        return;
    }
    let line = format!("mirrord-layer[{}]: {args}\n", sys::getpid());
    sys::write_all(fd, line.as_bytes());
}
