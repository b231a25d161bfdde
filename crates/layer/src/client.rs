//! The per-thread connection to `mirrordctl`: opened on a thread's first request (`Hello` -> `Welcome`), one
//! request and its reply at a time, each under a deadline, so threads never wait on each other.
//!
//! The socket is moved to a high, close-on-exec descriptor and tracked in [`crate::fdtable`] as a channel: if
//! the app closes or `dup2`s over that number, or the process forks, the entry disappears and the thread opens
//! a new connection instead of using a descriptor that is no longer ours. A refused `Hello`, or a connection
//! that fails or ends, detaches the process (plain libc for good); a deadline that passes only costs this
//! connection (its late reply could otherwise be read as the next one's).

use std::cell::RefCell;
use std::io;
use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use libc::c_int;
use mirrord_layer_proto::{read_frame, write_frame, Reply, Request, VERSION};

use crate::fdtable::{Entry, TABLE};
use crate::state::{self, Layer};
use crate::sys;

#[derive(Debug, PartialEq, Eq)]
pub enum Error {
    /// No `mirrordctl` (now, or ever again for this process): do what libc does.
    Detached,
    /// The deadline passed.
    Timeout,
}

struct Channel {
    fd: c_int,
    pid: u32,
}

thread_local! {
    static CHANNEL: RefCell<Option<Channel>> = const { RefCell::new(None) };
}

/// Sends `req` and waits for its reply until `timeout` has passed.
pub fn request(layer: &Layer, req: &Request, timeout: std::time::Duration) -> Result<Reply, Error> {
    let deadline = Instant::now() + timeout;
    CHANNEL
        .try_with(|slot| {
            let Ok(mut slot) = slot.try_borrow_mut() else {
                return Err(Error::Detached);
            };
            if slot.as_ref().is_some_and(|c| !c.is_ours()) {
                // Not ours any more: the number may belong to the app now, so it must not be closed.
                std::mem::forget(slot.take());
            }
            if slot.is_none() {
                *slot = Some(Channel::open(layer, deadline)?);
            }
            let Some(channel) = slot.as_mut() else {
                return Err(Error::Detached);
            };
            match channel.call(req, deadline) {
                Ok(reply) => Ok(reply),
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    debug!("{req:?}: no reply in time");
                    *slot = None;
                    Err(Error::Timeout)
                }
                Err(e) => {
                    *slot = None;
                    state::detach(&format!("mirrordctl connection lost: {e}"));
                    Err(Error::Detached)
                }
            }
        })
        // Thread teardown: no channel to be had.
        .unwrap_or(Err(Error::Detached))
}

/// As [`request`], on a connection of its own that is closed after the reply: for the exit handler, which runs
/// after this thread's thread-locals (its channel) are gone.
pub fn request_alone(
    layer: &Layer,
    req: &Request,
    timeout: std::time::Duration,
) -> Result<Reply, Error> {
    let deadline = Instant::now() + timeout;
    let mut channel = Channel::open(layer, deadline)?;
    channel.call(req, deadline).map_err(|e| {
        debug!("{req:?}: {e}");
        Error::Timeout
    })
}

impl Channel {
    fn open(layer: &Layer, deadline: Instant) -> Result<Self, Error> {
        let stream = UnixStream::connect(&layer.sock).map_err(|e| {
            state::detach(&format!("cannot connect to {}: {e}", layer.sock.display()));
            Error::Detached
        })?;
        let fd = stream.into_raw_fd();
        let fd = match sys::dup_high(fd) {
            Some(high) => {
                sys::close(fd);
                high
            }
            None => fd,
        };
        TABLE.insert(fd, Entry::Channel);
        let mut channel = Channel {
            fd,
            pid: sys::getpid(),
        };
        match channel.call(
            &Request::Hello {
                version: VERSION,
                pid: channel.pid,
            },
            deadline,
        ) {
            Ok(Reply::Welcome) => Ok(channel),
            Ok(Reply::Refused { message }) => {
                state::detach(&format!("mirrordctl refused this process: {message}"));
                Err(Error::Detached)
            }
            Ok(other) => {
                state::detach(&format!("unexpected reply to Hello: {other:?}"));
                Err(Error::Detached)
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut => Err(Error::Timeout),
            Err(e) => {
                state::detach(&format!("Hello failed: {e}"));
                Err(Error::Detached)
            }
        }
    }

    /// Still this process's, still at its number.
    fn is_ours(&self) -> bool {
        self.pid == sys::getpid() && TABLE.get(self.fd) == Some(Entry::Channel)
    }

    fn call(&mut self, req: &Request, deadline: Instant) -> io::Result<Reply> {
        let mut io = DeadlineIo {
            fd: self.fd,
            deadline,
        };
        write_frame(&mut io, req)?;
        read_frame(&mut io)
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        if self.is_ours() {
            TABLE.remove(self.fd);
            sys::close(self.fd);
        }
    }
}

/// Blocking reads and writes on the channel that give up at `deadline` (`TimedOut`).
struct DeadlineIo {
    fd: c_int,
    deadline: Instant,
}

impl DeadlineIo {
    fn wait(&self, events: libc::c_short) -> io::Result<()> {
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            match sys::poll(self.fd, events, left) {
                Ok(()) => return Ok(()),
                Err(libc::EINTR) => continue,
                Err(libc::ETIMEDOUT) => return Err(io::ErrorKind::TimedOut.into()),
                Err(e) => return Err(io::Error::from_raw_os_error(e)),
            }
        }
    }
}

impl io::Read for DeadlineIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            self.wait(libc::POLLIN)?;
            match sys::recv(self.fd, buf) {
                Ok(n) => return Ok(n),
                Err(libc::EINTR | libc::EAGAIN) => continue,
                Err(e) => return Err(io::Error::from_raw_os_error(e)),
            }
        }
    }
}

impl io::Write for DeadlineIo {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            self.wait(libc::POLLOUT)?;
            match sys::send(self.fd, buf) {
                Ok(n) => return Ok(n),
                Err(libc::EINTR | libc::EAGAIN) => continue,
                Err(e) => return Err(io::Error::from_raw_os_error(e)),
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
