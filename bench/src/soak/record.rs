//! What a soak run records: one sample every few seconds, written as CSV, summarised as
//! markdown (RSS growth after warm-up, errors, reloads, outages) and drawn as a PNG chart.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::chart::{self, Chart, Panel, Series};

/// The state of the run at one moment.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub seconds: f64,
    pub rss_bytes: u64,
    pub quic_connections: f64,
    /// Since the start, as the clients count them (added up each time a set of client
    /// connections finishes, so they move in steps).
    pub requests: u64,
    pub errors: u64,
    /// Since the start, as Spooky counts them (`spooky_requests_total`, and its `5xx`
    /// responses): live, so these draw the rates.
    pub served: u64,
    pub served_5xx: u64,
    pub config_generation: f64,
    /// Whether the backend that is killed and restored is running now.
    pub backend_up: bool,
}

pub const CSV_HEADER: &str =
    "seconds,rss_bytes,quic_connections,requests,errors,served,served_5xx,config_generation,backend_b_up";

impl Sample {
    pub fn csv_line(&self) -> String {
        format!(
            "{:.1},{},{},{},{},{},{},{},{}",
            self.seconds,
            self.rss_bytes,
            self.quic_connections,
            self.requests,
            self.errors,
            self.served,
            self.served_5xx,
            self.config_generation,
            u8::from(self.backend_up)
        )
    }
}

/// Everything the summary and the chart are made from.
pub struct Run<'a> {
    pub samples: &'a [Sample],
    pub warm_up_seconds: f64,
    /// The window over which RSS is compared: just after warm-up against the end.
    pub window_seconds: f64,
    /// (start, end) seconds of each backend outage.
    pub outages: &'a [(f64, f64)],
    pub reloads_sent: u64,
    pub errors_by_kind: &'a BTreeMap<String, u64>,
    pub connections_opened: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub description: String,
}

/// RSS in MB (10^6 bytes) at the start and end of the measured part, and the growth between.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Growth {
    pub after_warm_up_mb: f64,
    pub end_mb: f64,
    pub peak_mb: f64,
    pub percent: f64,
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    Some(values[values.len() / 2])
}

impl Run<'_> {
    /// Medians of the window after warm-up and of the last window, so that one sample taken
    /// mid-burst does not decide the figure; `None` if the run was too short to have both.
    pub fn growth(&self) -> Option<Growth> {
        let end = self.samples.last()?.seconds;
        let mb = |s: &Sample| s.rss_bytes as f64 / 1e6;
        let within = |from: f64, to: f64| -> Vec<f64> {
            self.samples
                .iter()
                .filter(|s| s.seconds >= from && s.seconds < to)
                .map(mb)
                .collect()
        };
        let start_window = (
            self.warm_up_seconds,
            self.warm_up_seconds + self.window_seconds,
        );
        if end - self.window_seconds < start_window.1 {
            return None;
        }
        let after = median(within(start_window.0, start_window.1))?;
        let last = median(within(end - self.window_seconds, end + 1.0))?;
        let peak = self
            .samples
            .iter()
            .filter(|s| s.seconds >= self.warm_up_seconds)
            .map(mb)
            .fold(0.0, f64::max);
        Some(Growth {
            after_warm_up_mb: after,
            end_mb: last,
            peak_mb: peak,
            percent: (last - after) / after * 100.0,
        })
    }

    pub fn csv(&self) -> String {
        let mut out = String::from(CSV_HEADER);
        out.push('\n');
        for sample in self.samples {
            out.push_str(&sample.csv_line());
            out.push('\n');
        }
        out
    }

    pub fn markdown(&self, command: &str) -> String {
        let mut out = String::new();
        let last = self.samples.last().cloned().unwrap_or_default();
        let _ = writeln!(out, "# Soak run\n\n{}\n", self.description);
        let _ = writeln!(out, "Command: `{command}`\n");
        let _ = writeln!(out, "| figure | value |\n| --- | --- |");
        let _ = writeln!(out, "| length | {:.0} s |", last.seconds);
        match self.growth() {
            Some(g) => {
                let _ = writeln!(
                    out,
                    "| RSS after warm-up ({:.0} s), median of the next {:.0} s | {:.1} MB |",
                    self.warm_up_seconds, self.window_seconds, g.after_warm_up_mb
                );
                let _ = writeln!(
                    out,
                    "| RSS at the end, median of the last {:.0} s | {:.1} MB |",
                    self.window_seconds, g.end_mb
                );
                let _ = writeln!(out, "| RSS growth after warm-up | {:+.1}% |", g.percent);
                let _ = writeln!(out, "| RSS peak after warm-up | {:.1} MB |", g.peak_mb);
            }
            None => {
                let _ = writeln!(out, "| RSS growth after warm-up | run too short to tell |");
            }
        }
        let peak_connections = self
            .samples
            .iter()
            .map(|s| s.quic_connections)
            .fold(0.0, f64::max);
        let _ = writeln!(out, "| requests completed | {} |", last.requests);
        let _ = writeln!(
            out,
            "| errors | {} ({:.3}% of requests) |",
            last.errors,
            last.errors as f64 * 100.0 / (last.requests + last.errors).max(1) as f64
        );
        let kinds: Vec<String> = self
            .errors_by_kind
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        if !kinds.is_empty() {
            let _ = writeln!(out, "| errors by kind | {} |", kinds.join(", "));
        }
        let _ = writeln!(
            out,
            "| client connections opened | {} |",
            self.connections_opened
        );
        let _ = writeln!(
            out,
            "| open QUIC connections, peak | {peak_connections:.0} |"
        );
        let _ = writeln!(
            out,
            "| bytes received / sent by clients | {} / {} |",
            self.bytes_received, self.bytes_sent
        );
        let _ = writeln!(
            out,
            "| reloads sent / applied | {} / {:.0} |",
            self.reloads_sent,
            (last.config_generation - 1.0).max(0.0)
        );
        let _ = writeln!(out, "| backend outages | {} |", self.outages.len());
        out
    }

    /// Four panels over time in minutes: RSS, open connections, requests and errors per second;
    /// backend outages shaded.
    pub fn chart(&self) -> Vec<u8> {
        let minutes = |s: &Sample| s.seconds / 60.0;
        let rate = |field: fn(&Sample) -> u64| -> Vec<(f64, f64)> {
            self.samples
                .windows(2)
                .map(|w| {
                    let dt = (w[1].seconds - w[0].seconds).max(1e-3);
                    let delta = field(&w[1]).saturating_sub(field(&w[0]));
                    (minutes(&w[1]), delta as f64 / dt)
                })
                .collect()
        };
        let line = |label: &str, colour, points| Series {
            label: label.into(),
            colour,
            points,
        };
        let growth = match self.growth() {
            Some(g) => format!("RSS GROWTH AFTER WARM-UP {:+.1}%", g.percent),
            None => "RUN TOO SHORT FOR A GROWTH FIGURE".into(),
        };
        let chart = Chart {
            title: format!("SPOOKY SOAK: {growth}. SHADED: BACKEND B KILLED"),
            x_label: "MINUTES".into(),
            x_max: self.samples.last().map_or(1.0, minutes),
            shaded: self
                .outages
                .iter()
                .map(|(a, b)| (a / 60.0, b / 60.0))
                .collect(),
            panels: vec![
                Panel {
                    title: "PROCESS RSS (MB)".into(),
                    series: vec![line(
                        "RSS",
                        chart::BLUE,
                        self.samples
                            .iter()
                            .map(|s| (minutes(s), s.rss_bytes as f64 / 1e6))
                            .collect(),
                    )],
                },
                Panel {
                    title: "OPEN QUIC CONNECTIONS".into(),
                    series: vec![line(
                        "CONNECTIONS",
                        chart::GREEN,
                        self.samples
                            .iter()
                            .map(|s| (minutes(s), s.quic_connections))
                            .collect(),
                    )],
                },
                Panel {
                    title: "REQUESTS PER SECOND (SPOOKY'S COUNT)".into(),
                    series: vec![line("REQUESTS", chart::BLUE, rate(|s| s.served))],
                },
                Panel {
                    title: "5XX RESPONSES PER SECOND (SPOOKY'S COUNT)".into(),
                    series: vec![line("5XX", chart::RED, rate(|s| s.served_5xx))],
                },
            ],
        };
        chart.to_png(1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(seconds: f64, rss_mb: f64) -> Sample {
        Sample {
            seconds,
            rss_bytes: (rss_mb * 1e6) as u64,
            ..Sample::default()
        }
    }

    #[test]
    fn growth_compares_the_medians_after_warm_up_and_at_the_end() {
        let mut samples = vec![sample(0.0, 5.0), sample(10.0, 30.0)];
        // After warm-up: 20, 21, 40 (one spike), 20 -> median 21; at the end 22, 22, 23 -> 22.
        for (t, mb) in [(20.0, 20.0), (25.0, 21.0), (30.0, 40.0), (35.0, 20.0)] {
            samples.push(sample(t, mb));
        }
        for (t, mb) in [(60.0, 22.0), (65.0, 22.0), (70.0, 23.0)] {
            samples.push(sample(t, mb));
        }
        let kinds = BTreeMap::new();
        let run = Run {
            samples: &samples,
            warm_up_seconds: 20.0,
            window_seconds: 20.0,
            outages: &[],
            reloads_sent: 0,
            errors_by_kind: &kinds,
            connections_opened: 0,
            bytes_received: 0,
            bytes_sent: 0,
            description: String::new(),
        };
        let growth = run.growth().unwrap();
        assert_eq!(growth.after_warm_up_mb, 21.0);
        assert_eq!(growth.end_mb, 22.0);
        assert_eq!(growth.peak_mb, 40.0);
        assert!((growth.percent - 100.0 / 21.0).abs() < 1e-9);
        let short = Run {
            samples: &samples[..5],
            ..run
        };
        assert_eq!(short.growth(), None);
    }
}
