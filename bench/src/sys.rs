//! The benchmark tools' system calls (epoll with nanosecond timeouts, timerfd, timer slack,
//! signals): the
//! only module of this package with `unsafe` code, each block with the reason it is sound.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn timespec(t: Duration) -> libc::timespec {
    libc::timespec {
        tv_sec: t.as_secs() as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    }
}

/// A new epoll instance.
pub fn epoll_create() -> io::Result<OwnedFd> {
    // SAFETY: epoll_create1 has no memory preconditions.
    owned(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })
}

/// Watches `fd` for readability under `token`.
pub fn epoll_add(epoll: &OwnedFd, fd: RawFd, token: u64) -> io::Result<()> {
    let mut event = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: token,
    };
    // SAFETY: `event` is a valid epoll_event for the duration of the call.
    let rc = unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits up to `timeout` (forever if `None`) with `epoll_pwait2`'s nanosecond resolution; fills
/// `events` from the front and returns how many are ready (0 when interrupted).
pub fn epoll_wait(
    epoll: &OwnedFd,
    events: &mut [libc::epoll_event],
    timeout: Option<Duration>,
) -> io::Result<usize> {
    let spec = timeout.map(timespec);
    let spec_ptr = spec
        .as_ref()
        .map_or(std::ptr::null(), |s| s as *const libc::timespec);
    // SAFETY: the events buffer holds `len` entries; the timespec (or null) outlives the call; a
    // null signal mask means "unchanged".
    let n = unsafe {
        libc::epoll_pwait2(
            epoll.as_raw_fd(),
            events.as_mut_ptr(),
            events.len() as libc::c_int,
            spec_ptr,
            std::ptr::null(),
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(0)
        } else {
            Err(e)
        };
    }
    Ok(n as usize)
}

/// Asks the kernel not to delay this thread's timed waits for batching (default slack 50 µs).
pub fn precise_timers() {
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer argument and affects only this thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
}

/// A non-blocking monotonic timerfd.
pub fn timerfd() -> io::Result<OwnedFd> {
    // SAFETY: timerfd_create has no memory preconditions.
    owned(unsafe {
        libc::timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
        )
    })
}

/// Arms the timerfd to expire once, `after` from now.
pub fn timerfd_arm(fd: RawFd, after: Duration) -> io::Result<()> {
    let spec = libc::itimerspec {
        it_interval: timespec(Duration::ZERO),
        it_value: timespec(after),
    };
    // SAFETY: `spec` is a valid itimerspec; a null old value is allowed.
    if unsafe { libc::timerfd_settime(fd, 0, &spec, std::ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether the timerfd expired (reads and clears its expiration count).
pub fn timerfd_expired(fd: RawFd) -> bool {
    let mut expirations = [0u8; 8];
    // SAFETY: reads at most 8 bytes into an 8-byte buffer.
    let n = unsafe { libc::read(fd, expirations.as_mut_ptr().cast(), 8) };
    n == 8
}

/// Registers a descriptor with tokio's reactor.
pub fn async_fd(fd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: the OwnedFd is a valid, open descriptor and stays owned (and open) by the AsyncFd
    // for its whole lifetime.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(|e| io::Error::other(e.to_string()))
}

/// Sends `signal` to process `pid` (the soak's reloads: SIGHUP to Spooky).
pub fn signal(pid: u32, signal: libc::c_int) -> io::Result<()> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: kill(2) takes two integers and touches no memory of this process.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
