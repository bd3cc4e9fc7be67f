//! Process signals, received synchronously by the coordinator thread.
//!
//! The signals are blocked before any shard thread starts, so every thread inherits the mask and
//! none is ever interrupted; the coordinator collects them with `sigwait`. No handler runs in
//! signal context and no shard ever sees a signal.

use std::io;

/// A signal the process acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Terminate,
    Interrupt,
    Hangup,
}

/// The set of signals we act on.
pub struct SignalSet {
    set: libc::sigset_t,
}

impl SignalSet {
    /// Blocks SIGTERM, SIGINT and SIGHUP for the calling thread and threads it starts later.
    pub fn block() -> io::Result<Self> {
        // SAFETY: sigemptyset/sigaddset initialise and fill a sigset_t we own; pthread_sigmask only
        // reads it. All are async-signal-safe libc calls with valid pointers.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
                libc::sigaddset(&mut set, signal);
            }
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            Ok(SignalSet { set })
        }
    }

    /// Waits for the next blocked signal.
    pub fn wait(&self) -> io::Result<Signal> {
        loop {
            let mut received: libc::c_int = 0;
            // SAFETY: `self.set` was initialised by `block`; `received` is a valid out pointer.
            let rc = unsafe { libc::sigwait(&self.set, &mut received) };
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            match received {
                libc::SIGTERM => return Ok(Signal::Terminate),
                libc::SIGINT => return Ok(Signal::Interrupt),
                libc::SIGHUP => return Ok(Signal::Hangup),
                _ => continue,
            }
        }
    }
}
