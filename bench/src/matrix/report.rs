//! The benchmark report: one markdown table per scenario, a row per target, and the ratios the
//! project's targets are stated in (Spooky against Caddy, and against going direct).

use std::fmt::Write;

use serde::Serialize;

/// What one scenario measured on one target.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub target: String,
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    pub requests_per_second: f64,
    pub handshakes_per_second: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// Response plus request body bytes moved.
    pub body_bytes: u64,
    /// The proxy's own CPU seconds (user + system) during the scenario; none for direct rows.
    pub proxy_cpu_seconds: Option<f64>,
    /// The proxy's resident memory at the end of the scenario.
    pub proxy_rss_bytes: Option<u64>,
    /// The proxy's resident memory before the scenario.
    pub proxy_rss_before_bytes: Option<u64>,
    /// Connections held open (idle scenario).
    pub connections: u64,
}

impl Row {
    pub fn cpu_us_per_request(&self) -> Option<f64> {
        let cpu = self.proxy_cpu_seconds?;
        (self.requests > 0).then(|| cpu * 1e6 / self.requests as f64)
    }

    /// Body bits moved per second of proxy CPU.
    pub fn gbit_per_cpu_second(&self) -> Option<f64> {
        let cpu = self.proxy_cpu_seconds?;
        (cpu > 0.0).then(|| self.body_bytes as f64 * 8.0 / cpu / 1e9)
    }

    pub fn rss_per_connection(&self) -> Option<f64> {
        let after = self.proxy_rss_bytes? as f64;
        let before = self.proxy_rss_before_bytes? as f64;
        (self.connections > 0).then(|| (after - before) / self.connections as f64)
    }
}

/// One scenario's results.
#[derive(Clone, Debug, Serialize)]
pub struct Section {
    pub name: String,
    pub description: String,
    pub rows: Vec<Row>,
}

impl Section {
    fn row(&self, target: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.target == target)
    }
}

/// Everything a report says about the machine and the run.
#[derive(Clone, Debug, Serialize)]
pub struct RunInfo {
    pub date: String,
    pub machine: String,
    pub command: String,
    pub notes: Vec<String>,
}

fn opt(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "–".into(), |v| format!("{v:.decimals$}"))
}

pub fn markdown(info: &RunInfo, sections: &[Section]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Benchmark report\n");
    let _ = writeln!(out, "- Date: {}", info.date);
    let _ = writeln!(out, "- Machine: {}", info.machine);
    let _ = writeln!(out, "- Command: `{}`", info.command);
    for note in &info.notes {
        let _ = writeln!(out, "- {note}");
    }
    let _ = writeln!(out);
    summary(&mut out, sections);
    for section in sections {
        let _ = writeln!(out, "## {}\n\n{}\n", section.name, section.description);
        let _ = writeln!(
            out,
            "| target | requests | errors | req/s | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | proxy CPU s | CPU µs/req | Gbit/s per CPU-s | RSS MB |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for row in &section.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {} |",
                row.target,
                row.requests,
                row.errors,
                row.requests_per_second,
                row.p50_us,
                row.p90_us,
                row.p99_us,
                row.p999_us,
                row.max_us,
                opt(row.proxy_cpu_seconds, 2),
                opt(row.cpu_us_per_request(), 1),
                opt(row.gbit_per_cpu_second(), 2),
                opt(row.proxy_rss_bytes.map(|b| b as f64 / 1e6), 1),
            );
        }
        let _ = writeln!(out);
    }
    out
}

/// The headline figures, each computed from rows of this one run.
fn summary(out: &mut String, sections: &[Section]) {
    let find = |name: &str| sections.iter().find(|s| s.name == name);
    let _ = writeln!(out, "## Summary\n");
    let _ = writeln!(out, "| figure | value |\n|---|---|");
    if let Some(small) = find("small-max") {
        if let Some(spooky) = small.row("spooky") {
            let _ = writeln!(
                out,
                "| Spooky CPU per 1 KiB request (max rate) | {} µs |",
                opt(spooky.cpu_us_per_request(), 1)
            );
            if let Some(tcp) = small.row("spooky-h2") {
                let ratio = tcp
                    .cpu_us_per_request()
                    .zip(spooky.cpu_us_per_request())
                    .map(|(t, s)| t / s);
                let _ = writeln!(
                    out,
                    "| Spooky CPU per 1 KiB request over HTTP/2+TLS on TCP (max rate) | {} µs ({}× HTTP/3's) |",
                    opt(tcp.cpu_us_per_request(), 1),
                    opt(ratio, 2)
                );
            }
            if let Some(http1) = small.row("spooky-http1") {
                let ratio = http1
                    .cpu_us_per_request()
                    .zip(spooky.cpu_us_per_request())
                    .map(|(h, s)| h / s);
                let _ = writeln!(
                    out,
                    "| Spooky CPU per 1 KiB request to an HTTP/1.1 backend (max rate) | {} µs ({}× h2c's) |",
                    opt(http1.cpu_us_per_request(), 1),
                    opt(ratio, 2)
                );
            }
            if let Some(caddy) = small.row("caddy") {
                let ratio = caddy
                    .cpu_us_per_request()
                    .zip(spooky.cpu_us_per_request())
                    .map(|(c, s)| c / s);
                let _ = writeln!(
                    out,
                    "| Caddy CPU per 1 KiB request (max rate) | {} µs |\n| Caddy/Spooky CPU per request | {}× |",
                    opt(caddy.cpu_us_per_request(), 1),
                    opt(ratio, 2)
                );
                let _ = writeln!(
                    out,
                    "| Spooky/Caddy max req/s | {}× |",
                    opt(
                        (caddy.requests_per_second > 0.0)
                            .then(|| spooky.requests_per_second / caddy.requests_per_second),
                        2
                    )
                );
            }
        }
    }
    if let Some(half) = find("small-half-rate") {
        if let (Some(spooky), Some(direct)) = (half.row("spooky"), half.row("direct")) {
            let _ = writeln!(
                out,
                "| p50 added latency over direct at half of max rate | {:.0} µs (spooky p50 {:.0} µs, direct p50 {:.0} µs) |",
                spooky.p50_us - direct.p50_us,
                spooky.p50_us,
                direct.p50_us
            );
        }
    }
    if let Some(download) = find("download-100MB") {
        if let Some(spooky) = download.row("spooky") {
            let _ = writeln!(
                out,
                "| 100 MB download: Gbit/s per second of proxy CPU | {} |",
                opt(spooky.gbit_per_cpu_second(), 2)
            );
            if let Some(http1) = download.row("spooky-http1") {
                let _ = writeln!(
                    out,
                    "| 100 MB download from an HTTP/1.1 backend: Gbit/s per second of proxy CPU | {} |",
                    opt(http1.gbit_per_cpu_second(), 2)
                );
            }
            if let Some(tcp) = download.row("spooky-h2") {
                let _ = writeln!(
                    out,
                    "| 100 MB download over HTTP/2+TLS: Gbit/s per second of proxy CPU | {} |",
                    opt(tcp.gbit_per_cpu_second(), 2)
                );
            }
        }
    }
    if let Some(idle) = find("idle-connections") {
        if let Some(spooky) = idle.row("spooky") {
            let _ = writeln!(
                out,
                "| RSS per idle QUIC connection ({} connections) | {} KB |",
                spooky.connections,
                opt(spooky.rss_per_connection().map(|b| b / 1e3), 1)
            );
        }
    }
    let _ = writeln!(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(target: &str, requests: u64, cpu: Option<f64>, p50: f64) -> Row {
        Row {
            target: target.into(),
            requests,
            errors: 0,
            seconds: 1.0,
            requests_per_second: requests as f64,
            handshakes_per_second: 0.0,
            p50_us: p50,
            p90_us: p50,
            p99_us: p50,
            p999_us: p50,
            max_us: p50,
            body_bytes: requests * 1024,
            proxy_cpu_seconds: cpu,
            proxy_rss_bytes: Some(20_000_000),
            proxy_rss_before_bytes: Some(10_000_000),
            connections: 0,
        }
    }

    #[test]
    fn summary_ratios_come_from_the_rows() {
        let sections = vec![
            Section {
                name: "small-max".into(),
                description: "d".into(),
                rows: vec![
                    row("spooky", 100_000, Some(2.0), 100.0),
                    row("spooky-h2", 100_000, Some(3.0), 100.0),
                    row("spooky-http1", 100_000, Some(2.5), 100.0),
                    row("caddy", 50_000, Some(4.0), 200.0),
                ],
            },
            Section {
                name: "small-half-rate".into(),
                description: "d".into(),
                rows: vec![
                    row("spooky", 10, Some(1.0), 180.0),
                    row("direct", 10, None, 150.0),
                ],
            },
        ];
        let info = RunInfo {
            date: "today".into(),
            machine: "m".into(),
            command: "c".into(),
            notes: vec![],
        };
        let text = markdown(&info, &sections);
        // 20 µs vs 80 µs per request: a ratio of 4.
        assert!(
            text.contains("| Spooky CPU per 1 KiB request (max rate) | 20.0 µs |"),
            "{text}"
        );
        assert!(
            text.contains("over HTTP/2+TLS on TCP (max rate) | 30.0 µs (1.50× HTTP/3's) |"),
            "{text}"
        );
        assert!(
            text.contains("to an HTTP/1.1 backend (max rate) | 25.0 µs (1.25× h2c's) |"),
            "{text}"
        );
        assert!(
            text.contains("| Caddy/Spooky CPU per request | 4.00× |"),
            "{text}"
        );
        assert!(
            text.contains("| Spooky/Caddy max req/s | 2.00× |"),
            "{text}"
        );
        assert!(
            text.contains("over direct at half of max rate | 30 µs"),
            "{text}"
        );
    }
}
