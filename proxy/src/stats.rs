//! Per-node counters the data path feeds: statements routed, by why they went where
//! they went, and how long units took on each node (hdrhistogram). Recording is a
//! relaxed atomic add, or one short uncontended lock per unit for latency; rendering
//! for `/metrics` copies out under the same locks and never blocks a session for long.

use router::NodeId;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Why a statement went to the node it went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Needs the primary (a write, a transaction that may write, pinned state).
    Write,
    /// A read on a replica that was fresh enough.
    Read,
    /// A read that had to go to the primary because no replica had replayed the
    /// session's floor (read-your-writes, monotonic reads).
    RywFallback,
    /// A read a replica refused with 25006, re-run on the primary.
    ReadOnlyRetry,
    /// A read on the primary because no replica was eligible (all down or lagging,
    /// replica reads off, or `primary` consistency).
    NoReplica,
    /// A read on the primary because the chosen replica could not be connected to.
    ReplicaUnavailable,
}

impl Reason {
    pub const ALL: [Reason; 6] = [
        Reason::Write,
        Reason::Read,
        Reason::RywFallback,
        Reason::ReadOnlyRetry,
        Reason::NoReplica,
        Reason::ReplicaUnavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Write => "write",
            Reason::Read => "read",
            Reason::RywFallback => "ryw_fallback",
            Reason::ReadOnlyRetry => "read_only_retry",
            Reason::NoReplica => "no_replica",
            Reason::ReplicaUnavailable => "replica_unavailable",
        }
    }
}

/// Quantiles cover the last one to two windows, so they follow changes in a minute or
/// two instead of being flattened by hours of history.
const WINDOW: Duration = Duration::from_secs(60);
/// Microseconds, up to an hour, three significant digits.
const MAX_MICROS: u64 = 3_600_000_000;

struct Window {
    current: hdrhistogram::Histogram<u64>,
    previous: hdrhistogram::Histogram<u64>,
    since: Instant,
    /// Answers and their total latency since start, for the summary's `_count` and
    /// `_sum`: kept under the window's lock, which every answer takes anyway, rather
    /// than in atomics that would cost two more read-modify-writes per answer.
    count: u64,
    sum_micros: u64,
}

impl Window {
    fn new() -> Self {
        let h = || {
            hdrhistogram::Histogram::new_with_bounds(1, MAX_MICROS, 3)
                .expect("static histogram bounds are valid")
        };
        Window {
            current: h(),
            previous: h(),
            since: Instant::now(),
            count: 0,
            sum_micros: 0,
        }
    }

    fn rotate(&mut self, now: Instant) {
        let age = now.saturating_duration_since(self.since);
        if age >= WINDOW * 2 {
            self.previous.reset();
            self.current.reset();
            self.since = now;
        } else if age >= WINDOW {
            std::mem::swap(&mut self.previous, &mut self.current);
            self.current.reset();
            self.since = now;
        }
    }
}

struct Node {
    routed: [AtomicU64; Reason::ALL.len()],
    window: Mutex<Window>,
}

/// Latency of one node for `/metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct Latency {
    /// (quantile, seconds) over the recent window; empty when nothing ran there lately.
    pub quantiles: Vec<(f64, f64)>,
    pub count: u64,
    pub sum_seconds: f64,
}

pub const QUANTILES: [f64; 4] = [0.5, 0.9, 0.99, 0.999];

pub struct Stats {
    nodes: Vec<Node>,
}

impl Stats {
    pub fn new(nodes: usize) -> Self {
        Stats {
            nodes: (0..nodes)
                .map(|_| Node {
                    routed: Default::default(),
                    window: Mutex::new(Window::new()),
                })
                .collect(),
        }
    }

    pub fn routed(&self, node: NodeId, reason: Reason) {
        self.routed_n(node, reason, 1);
    }

    pub fn routed_n(&self, node: NodeId, reason: Reason, n: u64) {
        if let Some(node) = self.nodes.get(node.0).filter(|_| n > 0) {
            let i = Reason::ALL.iter().position(|r| *r == reason).unwrap_or(0);
            node.routed[i].fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn routed_count(&self, node: NodeId, reason: Reason) -> u64 {
        let i = Reason::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.nodes
            .get(node.0)
            .map_or(0, |n| n.routed[i].load(Ordering::Relaxed))
    }

    /// A unit took `took` on `node`, from its last message sent to its ReadyForQuery.
    pub fn latency(&self, node: NodeId, took: Duration) {
        self.record(node, took, Instant::now());
    }

    /// A unit whose last message went to `node` at `sent` is answered now, which is
    /// returned. (The clock is read once for the latency, the window and the caller: it
    /// costs the hot path.)
    pub fn latency_since(&self, node: NodeId, sent: Instant) -> Instant {
        let now = Instant::now();
        self.record(node, now.saturating_duration_since(sent), now);
        now
    }

    fn record(&self, node: NodeId, took: Duration, now: Instant) {
        let Some(n) = self.nodes.get(node.0) else {
            return;
        };
        let micros = (took.as_micros() as u64).clamp(1, MAX_MICROS);
        let mut w = n.window.lock().unwrap_or_else(|e| e.into_inner());
        w.count += 1;
        w.sum_micros = w.sum_micros.saturating_add(micros);
        w.rotate(now);
        let _ = w.current.record(micros);
    }

    pub fn latency_of(&self, node: NodeId) -> Latency {
        let Some(n) = self.nodes.get(node.0) else {
            return Latency {
                quantiles: Vec::new(),
                count: 0,
                sum_seconds: 0.0,
            };
        };
        let mut w = n.window.lock().unwrap_or_else(|e| e.into_inner());
        w.rotate(Instant::now());
        let mut both = w.previous.clone();
        let _ = both.add(&w.current);
        let quantiles = if both.is_empty() {
            Vec::new()
        } else {
            QUANTILES
                .iter()
                .map(|q| (*q, both.value_at_quantile(*q) as f64 / 1e6))
                .collect()
        };
        Latency {
            quantiles,
            count: w.count,
            sum_seconds: w.sum_micros as f64 / 1e6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routed_counts_per_node_and_reason() {
        let s = Stats::new(2);
        for (node, reason, times) in [
            (0, Reason::Write, 3),
            (1, Reason::Read, 5),
            (0, Reason::RywFallback, 1),
            (0, Reason::NoReplica, 2),
        ] {
            for _ in 0..times {
                s.routed(NodeId(node), reason);
            }
        }
        s.routed(NodeId(9), Reason::Read); // unknown node: ignored
        assert_eq!(s.routed_count(NodeId(0), Reason::Write), 3);
        assert_eq!(s.routed_count(NodeId(1), Reason::Read), 5);
        assert_eq!(s.routed_count(NodeId(1), Reason::Write), 0);
        assert_eq!(s.routed_count(NodeId(0), Reason::NoReplica), 2);
    }

    #[test]
    fn quantiles_follow_the_recorded_latencies() {
        let s = Stats::new(1);
        assert!(s.latency_of(NodeId(0)).quantiles.is_empty());
        // 1..=1000 ms: p50 ≈ 500 ms, p99 ≈ 990 ms.
        for ms in 1..=1000u64 {
            s.latency(NodeId(0), Duration::from_millis(ms));
        }
        let l = s.latency_of(NodeId(0));
        assert_eq!(l.count, 1000);
        assert!((l.sum_seconds - 500.5).abs() < 0.01, "{}", l.sum_seconds);
        let q = |want: f64| l.quantiles.iter().find(|(q, _)| *q == want).unwrap().1;
        assert!((q(0.5) - 0.5).abs() < 0.005, "{}", q(0.5));
        assert!((q(0.99) - 0.99).abs() < 0.005, "{}", q(0.99));
        assert!(q(0.5) <= q(0.9) && q(0.9) <= q(0.99) && q(0.99) <= q(0.999));
    }

    #[test]
    fn windows_rotate_out_old_latencies() {
        let mut w = Window::new();
        let t0 = w.since;
        w.current.record(10).unwrap();
        w.rotate(t0 + WINDOW);
        assert_eq!((w.previous.len(), w.current.len()), (1, 0));
        w.current.record(20).unwrap();
        w.rotate(t0 + WINDOW * 2);
        assert_eq!((w.previous.len(), w.current.len()), (1, 0));
        assert_eq!(w.previous.max(), 20);
        w.rotate(t0 + WINDOW * 5);
        assert!(w.previous.is_empty() && w.current.is_empty());
    }
}
