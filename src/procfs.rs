//! The process's own resource figures, read from `/proc/self`.

/// RSS, open descriptors and CPU time of this process.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessFigures {
    pub rss_bytes: u64,
    pub open_fds: u64,
    pub cpu_seconds: f64,
}

impl ProcessFigures {
    /// Reads the current figures; a figure the kernel will not give reads as zero.
    pub fn read() -> Self {
        let page = page_size();
        let rss_bytes = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
            .map(|pages| pages * page)
            .unwrap_or(0);
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count() as u64)
            .unwrap_or(0);
        ProcessFigures {
            rss_bytes,
            open_fds,
            cpu_seconds: cpu_seconds("/proc/self/stat").unwrap_or(0.0),
        }
    }
}

/// User plus system CPU seconds from a `/proc/PID/stat` file.
pub fn cpu_seconds(stat_path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
    // The command name may contain spaces; fields are counted after its closing parenthesis.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clock_ticks_per_second())
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as u64
    } else {
        4096
    }
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}
