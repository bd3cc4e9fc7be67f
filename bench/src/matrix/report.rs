//! The benchmark report: one markdown table per scenario, a row per target, and the ratios the
//! project's targets are stated in (Spooky against HAProxy, nginx and Caddy, and against going
//! direct).

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
    peers(out, sections);
}

/// The proxies Spooky is measured against, in report order.
const PEERS: [(&str, &str); 3] = [
    ("haproxy", "HAProxy"),
    ("nginx", "nginx"),
    ("caddy", "Caddy"),
];
/// The ones the targets name: Spooky is to beat the better of these two.
const EDGE_PEERS: [&str; 2] = ["haproxy", "nginx"];

/// One figure per scenario for Spooky and each peer in this run, and how far ahead Spooky is
/// of the better of HAProxy and nginx (above 1 means ahead; the targets ask for 1.5 on CPU per
/// request and 2 on bulk transfer and handshakes).
fn peers(out: &mut String, sections: &[Section]) {
    let present: Vec<(&str, &str)> = PEERS
        .into_iter()
        .filter(|(target, _)| sections.iter().any(|s| s.row(target).is_some()))
        .collect();
    if present.is_empty() {
        return;
    }
    type Figure = fn(&Row) -> Option<f64>;
    // (scenario, what, unit, figure, whether lower is better)
    let figures: [(&str, &str, &str, Figure, bool); 6] = [
        (
            "small-max",
            "CPU per 1 KiB request, max rate",
            "µs",
            Row::cpu_us_per_request,
            true,
        ),
        (
            "small-2000",
            "CPU per 1 KiB request at 2,000 req/s",
            "µs",
            Row::cpu_us_per_request,
            true,
        ),
        (
            "small-half-rate",
            "CPU per 1 KiB request at half of Spooky's max",
            "µs",
            Row::cpu_us_per_request,
            true,
        ),
        (
            "download-100MB",
            "100 MB download per CPU-second",
            "Gbit/s",
            Row::gbit_per_cpu_second,
            false,
        ),
        (
            "handshakes",
            "CPU per new connection",
            "µs",
            Row::cpu_us_per_request,
            true,
        ),
        (
            "idle-connections",
            "RSS per idle connection",
            "KB",
            |r| r.rss_per_connection().map(|b| b / 1e3),
            true,
        ),
    ];
    let _ = writeln!(out, "## Against the peers\n");
    let mut head = String::from("| figure | Spooky |");
    let mut rule = String::from("|---|---|");
    for (_, title) in &present {
        let _ = write!(head, " {title} |");
        rule.push_str("---|");
    }
    let _ = writeln!(
        out,
        "{head} Spooky's lead over the better of HAProxy and nginx |\n{rule}---|"
    );
    for (scenario, what, unit, figure, lower_is_better) in figures {
        let Some(section) = sections.iter().find(|s| s.name == scenario) else {
            continue;
        };
        let value = |target: &str| section.row(target).and_then(figure);
        let Some(spooky) = value("spooky") else {
            continue;
        };
        let mut line = format!("| {what} ({unit}) | {spooky:.1} |");
        for (target, _) in &present {
            let _ = write!(line, " {} |", opt(value(target), 1));
        }
        let edge: Vec<f64> = EDGE_PEERS.iter().filter_map(|t| value(t)).collect();
        let best = if lower_is_better {
            edge.iter().copied().reduce(f64::min)
        } else {
            edge.iter().copied().reduce(f64::max)
        };
        let lead = best.filter(|_| spooky > 0.0).map(|best| {
            if lower_is_better {
                best / spooky
            } else {
                spooky / best
            }
        });
        let _ = writeln!(
            out,
            "{line} {} |",
            opt(lead, 2).replace('–', "– (no peer row)")
        );
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

    #[test]
    fn the_lead_is_over_the_better_of_haproxy_and_nginx() {
        let download = |target: &str, cpu: f64| {
            let mut r = row(target, 1, Some(cpu), 0.0);
            r.body_bytes = 1_000_000_000;
            r
        };
        let sections = vec![
            Section {
                name: "small-max".into(),
                description: "d".into(),
                rows: vec![
                    row("spooky", 100_000, Some(2.0), 0.0),
                    row("haproxy", 100_000, Some(2.5), 0.0),
                    row("nginx", 100_000, Some(3.0), 0.0),
                    row("caddy", 100_000, Some(9.0), 0.0),
                ],
            },
            Section {
                name: "download-100MB".into(),
                description: "d".into(),
                // 8 Gbit moved: 4 Gbit/s per CPU-second for Spooky, 2.0 and 1.6 for the peers.
                rows: vec![
                    download("spooky", 2.0),
                    download("haproxy", 4.0),
                    download("nginx", 5.0),
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
        assert!(
            text.contains(
                "| figure | Spooky | HAProxy | nginx | Caddy | Spooky's lead over the better of \
                 HAProxy and nginx |"
            ),
            "{text}"
        );
        // 20 µs against HAProxy's 25 (nginx 30, Caddy 90 do not count): 1.25.
        assert!(
            text.contains(
                "| CPU per 1 KiB request, max rate (µs) | 20.0 | 25.0 | 30.0 | 90.0 | 1.25 |"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "| 100 MB download per CPU-second (Gbit/s) | 4.0 | 2.0 | 1.6 | – | 2.00 |"
            ),
            "{text}"
        );
    }
}
