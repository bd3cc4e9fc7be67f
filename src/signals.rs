//! Process signals, received synchronously by the coordinator thread.
//!
//! The signals are blocked before any shard thread starts, so every thread inherits the mask and
//! none is ever interrupted; the coordinator collects them with `sigwait`. No handler runs in
//! signal context and no shard ever sees a signal.
//!
//! This is the `spooky` package's system-call module: its only `unsafe` code.
#![allow(unsafe_code)]

use std::io;

/// A signal the process acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Terminate,
    Interrupt,
    Hangup,
    /// This process's shard watchdog gave up on a stalled shard ([`report_stall`]).
    ShardStalled,
}

/// The signal the watchdog sends its own process; one from any other sender is ignored.
const STALL_SIGNAL: libc::c_int = libc::SIGUSR2;

/// Tells the thread waiting in [`SignalSet::wait`] that a shard is stalled for good.
pub fn report_stall() -> io::Result<()> {
    // SAFETY: kill(2) with our own pid and a valid signal number; the signal is blocked in every
    // thread (see `SignalSet::block`), so it stays pending for `sigwaitinfo`.
    let rc = unsafe { libc::kill(libc::getpid(), STALL_SIGNAL) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The set of signals we act on.
pub struct SignalSet {
    set: libc::sigset_t,
}

impl SignalSet {
    /// Blocks SIGTERM, SIGINT, SIGHUP and the stall signal for the calling thread and threads it
    /// starts later.
    pub fn block() -> io::Result<Self> {
        // SAFETY: sigemptyset/sigaddset initialise and fill a sigset_t we own; pthread_sigmask only
        // reads it. All are async-signal-safe libc calls with valid pointers.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, STALL_SIGNAL] {
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
            // SAFETY: all-zero bytes are a valid siginfo_t for the kernel to fill; `self.set` was
            // initialised by `block`.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            let received = unsafe { libc::sigwaitinfo(&self.set, &mut info) };
            if received < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            match received {
                libc::SIGTERM => return Ok(Signal::Terminate),
                libc::SIGINT => return Ok(Signal::Interrupt),
                libc::SIGHUP => return Ok(Signal::Hangup),
                // SAFETY: for a signal sent with kill(2) the kernel filled the sender's pid.
                STALL_SIGNAL if unsafe { info.si_pid() } == std::process::id() as libc::pid_t => {
                    return Ok(Signal::ShardStalled)
                }
                _ => continue,
            }
        }
    }
}
