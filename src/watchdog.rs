//! The shard watchdog: wakes a shard whose event loop stopped turning.
//!
//! glommio 0.9 can park a shard in `io_uring_enter` and miss the completion that should end the
//! park. We have seen it twice on these machines: a shard asleep with a full socket receive queue
//! and a drain request waiting, its stack in glommio's `link_rings_and_sleep`; glommio's tracker
//! has reports of lost wake-ups in the same path. Every shard runs a control tick each 10 ms
//! that bumps its heartbeat counter. This thread reads the heartbeats every 250 ms and sends
//! SIGURG to a shard whose heartbeat did not move. The signal's handler does nothing, but it
//! makes `io_uring_enter` return `EINTR`; glommio's reactor then collects the completions it
//! missed and the shard carries on. Each wake-up is counted
//! (`spooky_shard_stall_wakeups_total`) and logged.
//!
//! A shard that is only starved of CPU for a moment may get a signal it did not need; that costs
//! one interrupted system call, which every caller already treats as "try again" or as a lost
//! datagram that QUIC resends.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::thread::JoinHandle;
use std::time::Duration;

use shards::ShardStats;

/// How long a shard may go without a control tick before it is woken.
pub const STALL_LIMIT: Duration = Duration::from_millis(250);

/// The running watchdog; stops when dropped.
pub struct Watchdog {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    pub fn start(shards: Vec<Arc<ShardStats>>) -> io::Result<Watchdog> {
        install_wake_handler()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("spooky-watchdog".into())
            .spawn(move || watch(&shards, &stopping))?;
        Ok(Watchdog {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

fn watch(shards: &[Arc<ShardStats>], stop: &AtomicBool) {
    let mut last: Vec<u64> = shards.iter().map(|s| s.heartbeat.get()).collect();
    while !stop.load(Ordering::Relaxed) {
        std::thread::park_timeout(STALL_LIMIT);
        if stop.load(Ordering::Relaxed) {
            return;
        }
        for (index, stats) in shards.iter().enumerate() {
            let beat = stats.heartbeat.get();
            let tid = stats.thread_id.get();
            if beat == last[index] && stats.running.get() == 1 && tid != 0 {
                log::warn!(
                    "shard {index} ran no control tick for {} ms; waking it",
                    STALL_LIMIT.as_millis()
                );
                stats.stall_wakeups.incr();
                wake(tid);
            }
            last[index] = beat;
        }
    }
}

/// Interrupts whatever system call the thread `tid` of this process is blocked in.
pub fn wake(tid: u64) {
    // SAFETY: tgkill with our own pid, a thread id read from our shard's counters and SIGURG,
    // for which a handler is installed; it sends a signal and touches no memory of ours.
    unsafe {
        libc::syscall(
            libc::SYS_tgkill,
            libc::getpid(),
            tid as libc::pid_t,
            libc::SIGURG,
        );
    }
}

extern "C" fn on_wake(_: libc::c_int) {}

fn install_wake_handler() -> io::Result<()> {
    static INSTALL: Once = Once::new();
    let mut result = Ok(());
    INSTALL.call_once(|| {
        // SAFETY: a zeroed sigaction with an empty mask, no SA_RESTART (so blocked calls return
        // EINTR) and a handler that does nothing, which is async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_wake as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            action.sa_flags = 0;
            if libc::sigaction(libc::SIGURG, &action, std::ptr::null_mut()) != 0 {
                result = Err(io::Error::last_os_error());
            }
        }
    });
    result
}
