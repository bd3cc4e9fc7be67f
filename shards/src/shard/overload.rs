//! Overload shedding, in the spirit of Envoy's overload manager: as a shard nears the marks its
//! operator set (live connections, requests in flight, the process's resident memory), it sheds
//! the cheapest work first.
//!
//! Pressure is the highest of the three readings as a share of its mark. Each stage is entered
//! at a fixed share and left only when pressure falls [`RELEASE_MARGIN`] below it, so a shard
//! hovering at a mark does not flap between stages on every tick. The manager is plain state
//! (readings in, stage out), driven by the shard's control tick and tested below without IO.

use crate::plan::OverloadMarks;

/// Shares of the marks at which each stage starts.
const RETRY_AT: f64 = 0.80;
const REFUSE_AT: f64 = 0.90;
const SHED_AT: f64 = 1.00;
/// How far below its start pressure must fall for a stage to end.
pub const RELEASE_MARGIN: f64 = 0.05;

/// What the shard sheds, in order of increasing cost to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Stage {
    #[default]
    Normal,
    /// Every new QUIC connection must prove its address with a Retry first.
    RetryAll,
    /// New connections are refused (QUIC Initials dropped, TCP connections closed at accept).
    RefuseConnections,
    /// New requests are answered `503` with `retry-after`.
    ShedRequests,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Normal => "normal",
            Stage::RetryAll => "retry all new connections",
            Stage::RefuseConnections => "refuse new connections",
            Stage::ShedRequests => "answer new requests 503",
        }
    }

    /// The value of the `spooky_overload_stage` gauge.
    pub fn level(self) -> u64 {
        self as u64
    }

    fn threshold(self) -> f64 {
        match self {
            Stage::Normal => 0.0,
            Stage::RetryAll => RETRY_AT,
            Stage::RefuseConnections => REFUSE_AT,
            Stage::ShedRequests => SHED_AT,
        }
    }
}

/// One look at the shard's load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reading {
    pub connections: u64,
    pub requests: u64,
    pub rss_bytes: u64,
}

pub struct OverloadManager {
    marks: OverloadMarks,
    stage: Stage,
}

impl OverloadManager {
    pub fn new(marks: OverloadMarks) -> Self {
        OverloadManager {
            marks,
            stage: Stage::Normal,
        }
    }

    pub fn set_marks(&mut self, marks: OverloadMarks) {
        self.marks = marks;
    }

    /// Whether any mark is set (without one the manager never leaves [`Stage::Normal`]).
    pub fn is_enabled(&self) -> bool {
        self.marks.connections.is_some()
            || self.marks.requests.is_some()
            || self.marks.memory_bytes.is_some()
    }

    /// Whether a reading needs the process's resident memory (reading it costs a file read).
    pub fn needs_memory(&self) -> bool {
        self.marks.memory_bytes.is_some()
    }

    /// The highest reading as a share of its mark.
    pub fn pressure(&self, reading: &Reading) -> f64 {
        let share = |value: u64, mark: Option<u64>| mark.map_or(0.0, |m| value as f64 / m as f64);
        share(reading.connections, self.marks.connections)
            .max(share(reading.requests, self.marks.requests))
            .max(share(reading.rss_bytes, self.marks.memory_bytes))
    }

    /// Moves to the stage `reading` calls for; returns the new stage when it changed.
    pub fn update(&mut self, reading: &Reading) -> Option<Stage> {
        let pressure = self.pressure(reading);
        let entered = [
            Stage::ShedRequests,
            Stage::RefuseConnections,
            Stage::RetryAll,
        ]
        .into_iter()
        .find(|stage| pressure >= stage.threshold())
        .unwrap_or(Stage::Normal);
        let next = if entered >= self.stage {
            entered
        } else {
            // Step down only as far as the margin allows: each stage above `entered` is held
            // while pressure stays within the margin below where it starts.
            let mut held = self.stage;
            while held > entered && pressure < held.threshold() - RELEASE_MARGIN {
                held = lower(held);
            }
            held
        };
        (next != self.stage).then(|| {
            self.stage = next;
            next
        })
    }
}

/// The process's resident memory, 0 if it cannot be read (then no memory mark is reached).
pub fn process_rss_bytes() -> u64 {
    crate::procfs::rss_bytes("self").unwrap_or(0)
}

fn lower(stage: Stage) -> Stage {
    match stage {
        Stage::ShedRequests => Stage::RefuseConnections,
        Stage::RefuseConnections => Stage::RetryAll,
        Stage::RetryAll | Stage::Normal => Stage::Normal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manager() -> OverloadManager {
        OverloadManager::new(OverloadMarks {
            connections: Some(1000),
            requests: Some(100),
            memory_bytes: None,
        })
    }

    fn requests(n: u64) -> Reading {
        Reading {
            requests: n,
            ..Reading::default()
        }
    }

    #[test]
    fn stages_follow_the_worst_reading() {
        let mut m = manager();
        assert_eq!(m.update(&requests(79)), None);
        assert_eq!(m.update(&requests(80)), Some(Stage::RetryAll));
        assert_eq!(m.update(&requests(90)), Some(Stage::RefuseConnections));
        assert_eq!(m.update(&requests(100)), Some(Stage::ShedRequests));
        let mut m = manager();
        let both = Reading {
            connections: 950,
            requests: 10,
            rss_bytes: 0,
        };
        assert_eq!(m.update(&both), Some(Stage::RefuseConnections));
    }

    #[test]
    fn stages_release_only_below_the_margin() {
        let mut m = manager();
        m.update(&requests(100));
        assert_eq!(m.update(&requests(96)), None, "within the margin of 100%");
        assert_eq!(m.update(&requests(94)), Some(Stage::RefuseConnections));
        assert_eq!(m.update(&requests(86)), None, "within the margin of 90%");
        assert_eq!(m.update(&requests(84)), Some(Stage::RetryAll));
        assert_eq!(m.update(&requests(76)), None);
        assert_eq!(m.update(&requests(74)), Some(Stage::Normal));
    }

    #[test]
    fn a_sudden_drop_releases_every_stage_at_once() {
        let mut m = manager();
        m.update(&requests(120));
        assert_eq!(m.update(&requests(0)), Some(Stage::Normal));
    }

    #[test]
    fn without_marks_nothing_is_shed() {
        let mut m = OverloadManager::new(OverloadMarks::default());
        assert!(!m.is_enabled());
        let huge = Reading {
            connections: u64::MAX,
            requests: u64::MAX,
            rss_bytes: u64::MAX,
        };
        assert_eq!(m.update(&huge), None, "still normal");
    }
}
