//! A minimal epoll wrapper for the HTTP/3 loader: wait until any of many UDP sockets is
//! readable, or a deadline passes, with nanosecond timeouts (`epoll_pwait2`).
//!
//! Millisecond timeouts (`epoll_wait`) would send open-loop requests up to a millisecond late;
//! since latency is measured from the due time, that would show up as proxy latency. The
//! loader threads also ask for a 1 ns timer slack so the kernel does not round sleeps up.

use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::time::Duration;

use crate::sys;

pub struct Poller {
    epoll: OwnedFd,
    events: Vec<libc::epoll_event>,
}

impl Poller {
    pub fn new() -> io::Result<Poller> {
        Ok(Poller {
            epoll: sys::epoll_create()?,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 1024],
        })
    }

    /// Watches `fd` for readability; `token` comes back from [`Poller::wait`]. A closed fd
    /// leaves the set by itself.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        sys::epoll_add(&self.epoll, fd, token)
    }

    /// Waits up to `timeout` (forever if `None`); appends the tokens of readable fds to `ready`.
    pub fn wait(&mut self, timeout: Option<Duration>, ready: &mut Vec<u64>) -> io::Result<()> {
        let n = sys::epoll_wait(&self.epoll, &mut self.events, timeout)?;
        ready.extend(self.events[..n].iter().map(|e| e.u64));
        Ok(())
    }
}

pub use sys::precise_timers;
