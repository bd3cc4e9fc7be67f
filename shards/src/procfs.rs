//! A process's resource figures from `/proc`: CPU time, resident memory, open descriptors. Shared
//! by the admin endpoint (this process) and the benchmark matrix (the proxy under test).

use std::fs;
use std::io;

use crate::sys;

/// User plus system CPU seconds the process `pid` (or `self`) has used so far.
pub fn cpu_seconds(pid: &str) -> io::Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_cpu_ticks(&stat)
        .map(|ticks| ticks as f64 / sys::clock_ticks_per_second())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unreadable /proc stat"))
}

/// Resident set size in bytes (`VmRSS` of `/proc/PID/status`).
pub fn rss_bytes(pid: &str) -> io::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_rss_kib(&status)
        .map(|kib| kib * 1024)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no VmRSS in /proc status"))
}

/// Open file descriptors of `pid`.
pub fn open_fds(pid: &str) -> io::Result<u64> {
    Ok(fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64)
}

/// utime + stime in clock ticks. Fields are counted after the command name, which is in
/// parentheses and may itself contain spaces or parentheses.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of the whole line are the 12th and 13th after the name.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn parse_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_times_after_an_awkward_name() {
        let stat = "1234 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 250 75 0 0 20 0 1 0";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
    }

    #[test]
    fn reads_rss() {
        assert_eq!(
            parse_rss_kib("Name:\tx\nVmRSS:\t   13600 kB\nThreads: 3\n"),
            Some(13600)
        );
    }

    #[test]
    fn own_process_has_cpu_time_memory_and_descriptors() {
        let pid = std::process::id().to_string();
        assert!(cpu_seconds(&pid).unwrap() >= 0.0);
        assert!(rss_bytes("self").unwrap() > 0);
        assert!(open_fds("self").unwrap() >= 3);
    }
}
