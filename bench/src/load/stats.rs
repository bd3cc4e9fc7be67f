//! What one loader thread records, and how threads' records merge into a report.
//!
//! Latencies go into HDR histograms (microseconds, 3 significant digits, up to 10 minutes), so
//! percentiles are exact to 0.1% at any scale and merging threads loses nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest latency a histogram holds, in microseconds; larger values are clamped to it.
const MAX_LATENCY_US: u64 = 600_000_000;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("static histogram bounds are valid")
}

/// Why a request (or a connection attempt) failed, as reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ErrorKind {
    Status4xx,
    Status5xx,
    StreamReset,
    ConnectionClosed,
    Timeout,
    HandshakeFailed,
    LengthMismatch,
    Io,
}

impl ErrorKind {
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Status4xx => "status_4xx",
            ErrorKind::Status5xx => "status_5xx",
            ErrorKind::StreamReset => "stream_reset",
            ErrorKind::ConnectionClosed => "connection_closed",
            ErrorKind::Timeout => "timeout",
            ErrorKind::HandshakeFailed => "handshake_failed",
            ErrorKind::LengthMismatch => "length_mismatch",
            ErrorKind::Io => "io",
        }
    }

    /// The error a response status counts as, if any.
    pub fn from_status(status: u16) -> Option<ErrorKind> {
        match status {
            400..=499 => Some(ErrorKind::Status4xx),
            500..=599 => Some(ErrorKind::Status5xx),
            _ => None,
        }
    }
}

/// One thread's counts. Only touched by its thread; merged at the end.
pub struct Recorder {
    pub latency: Histogram<u64>,
    pub handshake_latency: Histogram<u64>,
    pub completed: u64,
    pub handshakes: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub errors: BTreeMap<ErrorKind, u64>,
    /// Whether completions count (false during warm-up).
    pub recording: bool,
    pub connections_established: u64,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            latency: histogram(),
            handshake_latency: histogram(),
            completed: 0,
            handshakes: 0,
            bytes_sent: 0,
            bytes_received: 0,
            errors: BTreeMap::new(),
            recording: true,
            connections_established: 0,
        }
    }
}

impl Recorder {
    pub fn request_done(&mut self, latency: Duration) {
        if self.recording {
            self.completed += 1;
            let _ = self.latency.record(micros(latency));
        }
    }

    pub fn handshake_done(&mut self, latency: Duration) {
        if self.recording {
            self.handshakes += 1;
            let _ = self.handshake_latency.record(micros(latency));
        }
    }

    pub fn error(&mut self, kind: ErrorKind) {
        if self.recording {
            *self.errors.entry(kind).or_default() += 1;
        }
    }

    pub fn sent(&mut self, bytes: usize) {
        if self.recording {
            self.bytes_sent += bytes as u64;
        }
    }

    pub fn received(&mut self, bytes: usize) {
        if self.recording {
            self.bytes_received += bytes as u64;
        }
    }

    /// Requests (or, handshake-only, handshakes) that finished, well or badly: what
    /// `--requests` counts.
    pub fn finished(&self) -> u64 {
        self.completed + self.handshakes + self.errors.values().sum::<u64>()
    }

    pub fn merge(&mut self, other: &Recorder) {
        let _ = self.latency.add(&other.latency);
        let _ = self.handshake_latency.add(&other.handshake_latency);
        self.completed += other.completed;
        self.handshakes += other.handshakes;
        self.bytes_sent += other.bytes_sent;
        self.bytes_received += other.bytes_received;
        self.connections_established += other.connections_established;
        for (kind, n) in &other.errors {
            *self.errors.entry(*kind).or_default() += n;
        }
    }
}

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, MAX_LATENCY_US)
}

/// Latency percentiles in microseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            p50: h.value_at_quantile(0.50) as f64,
            p90: h.value_at_quantile(0.90) as f64,
            p99: h.value_at_quantile(0.99) as f64,
            p999: h.value_at_quantile(0.999) as f64,
            max: h.max() as f64,
            mean: h.mean(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_recorders_keep_every_sample_and_error() {
        let mut a = Recorder::default();
        let mut b = Recorder::default();
        for us in 1..=100 {
            a.request_done(Duration::from_micros(us));
            b.request_done(Duration::from_micros(us + 100));
        }
        b.error(ErrorKind::StreamReset);
        a.merge(&b);
        assert_eq!(a.completed, 200);
        assert_eq!(a.finished(), 201);
        let p = Percentiles::of(&a.latency);
        assert_eq!(p.p50, 100.0);
        assert_eq!(p.max, 200.0);
        assert_eq!(a.errors[&ErrorKind::StreamReset], 1);
    }

    #[test]
    fn warm_up_records_nothing() {
        let mut r = Recorder {
            recording: false,
            ..Recorder::default()
        };
        r.request_done(Duration::from_millis(1));
        r.error(ErrorKind::Timeout);
        assert_eq!(r.finished(), 0);
    }
}
