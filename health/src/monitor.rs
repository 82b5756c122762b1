//! The thin async part: one heartbeat task per node, and one task that folds their
//! results into the pure [`Tracker`] and carries out its actions.

use crate::failover::{Driver, FailoverSetup, Input};
use crate::probe::{ControlCreds, NodeSpec, PgPulse, Pulse};
use crate::topology::{changes, Action, Event, Settings, Tracker};
use crate::SharedTopology;
use router::{NodeId, Topology};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// Reconnection backoff never waits longer than this (or one interval, if longer).
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Called with a node that just went down (the proxy drops its idle pooled connections).
pub type OnDown = Arc<dyn Fn(NodeId) + Send + Sync>;

/// Time from the start of one beat to the start of the next, after `failures`
/// consecutive failures: the interval while healthy and for the first failure (so a dead
/// node is confirmed within two intervals), then doubling up to [`MAX_BACKOFF`].
pub fn next_beat_in(interval: Duration, failures: u32) -> Duration {
    if failures <= 1 {
        return interval;
    }
    let factor = 1u32 << (failures - 1).min(16);
    interval
        .saturating_mul(factor)
        .min(MAX_BACKOFF.max(interval))
}

/// Resolves when shutdown is requested or its sender is gone (nobody can ask any more).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

/// Probes every node once, concurrently. A node that cannot be reached within `timeout`
/// is down, role unknown. The snapshot has version 1 (if any node answered) and epoch 0.
pub async fn discover(nodes: &[NodeSpec], creds: &ControlCreds, timeout: Duration) -> Topology {
    let settings = Settings {
        timeout,
        ..Settings::default()
    };
    discover_with(nodes, creds, settings).await
}

/// [`discover`] with the monitor's settings (lag bounds, read policy).
pub async fn discover_with(
    nodes: &[NodeSpec],
    creds: &ControlCreds,
    settings: Settings,
) -> Topology {
    let mut set = JoinSet::new();
    for (i, spec) in nodes.iter().enumerate() {
        let mut pulse = PgPulse::new(spec.clone(), creds.clone(), settings.timeout);
        set.spawn(async move { (i, pulse.beat().await) });
    }
    let mut tracker = Tracker::new(nodes.to_vec(), settings, Topology::default(), now());
    let mut outcomes = Vec::new();
    while let Some(joined) = set.join_next().await {
        if let Ok(x) = joined {
            outcomes.push(x);
        }
    }
    // In node order, all at one instant, so the result is one snapshot.
    outcomes.sort_by_key(|(i, _)| *i);
    let at = now();
    for (node, outcome) in outcomes {
        if let Err(e) = &outcome {
            tracing::debug!(node = %nodes[node].name, error = %e, "discovery check failed");
        }
        let outcome = outcome.map_err(|e| e.to_string());
        tracker.step(Event::Beat { node, at, outcome });
    }
    let mut topology = tracker.topology().clone();
    topology.version = 1;
    topology.when_no_replica = settings.when_no_replica;
    for n in &topology.nodes {
        tracing::info!(node = %n.name, addr = %n.addr, role = ?n.role, state = ?n.state, "discovered");
    }
    topology
}

/// Heartbeats sent per node since the monitor started (its cost, for operators and
/// benchmarks).
#[derive(Debug, Default)]
pub struct BeatCounts {
    beats: Vec<AtomicU64>,
    failures: Vec<AtomicU64>,
}

impl BeatCounts {
    pub fn new(nodes: usize) -> Self {
        BeatCounts {
            beats: (0..nodes).map(|_| AtomicU64::new(0)).collect(),
            failures: (0..nodes).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Heartbeat queries sent to `node` so far (successful or not).
    pub fn beats(&self, node: NodeId) -> u64 {
        self.beats
            .get(node.0)
            .map_or(0, |b| b.load(Ordering::Relaxed))
    }

    /// Heartbeats of `node` that failed (error or timeout) so far.
    pub fn failures(&self, node: NodeId) -> u64 {
        self.failures
            .get(node.0)
            .map_or(0, |b| b.load(Ordering::Relaxed))
    }

    fn count_failure(&self, node: usize) {
        if let Some(b) = self.failures.get(node) {
            b.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn count(&self, node: usize) {
        if let Some(b) = self.beats.get(node) {
            b.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Heartbeats every node and keeps the shared topology current.
pub struct HealthMonitor;

impl HealthMonitor {
    /// Starts one heartbeat task per node (over [`PgPulse`]) and the task that publishes
    /// snapshots into `topology`, starting from its current content, and (given a
    /// setup) runs failover in that task. Everything ends soon
    /// after `shutdown` turns true (or its sender drops).
    pub fn spawn(
        nodes: Vec<NodeSpec>,
        creds: ControlCreds,
        settings: Settings,
        topology: SharedTopology,
        on_down: OnDown,
        failover: Option<FailoverSetup>,
        shutdown: watch::Receiver<bool>,
    ) -> (JoinHandle<()>, Arc<BeatCounts>) {
        let pulses = nodes
            .iter()
            .map(|spec| PgPulse::new(spec.clone(), creds.clone(), settings.timeout))
            .collect();
        Self::spawn_with(
            nodes, pulses, settings, topology, on_down, failover, shutdown,
        )
    }

    /// [`HealthMonitor::spawn`] with any heartbeat source (`pulses[i]` beats `nodes[i]`).
    pub fn spawn_with<P: Pulse>(
        nodes: Vec<NodeSpec>,
        pulses: Vec<P>,
        settings: Settings,
        topology: SharedTopology,
        on_down: OnDown,
        failover: Option<FailoverSetup>,
        shutdown: watch::Receiver<bool>,
    ) -> (JoinHandle<()>, Arc<BeatCounts>) {
        let counts = Arc::new(BeatCounts::new(nodes.len()));
        let (tx, rx) = mpsc::channel(64);
        let interval = settings.interval.max(Duration::from_millis(1));
        let beats: Vec<JoinHandle<()>> = pulses
            .into_iter()
            .enumerate()
            .map(|(i, pulse)| {
                let beat = beat_loop(
                    i,
                    pulse,
                    interval,
                    tx.clone(),
                    shutdown.clone(),
                    counts.clone(),
                );
                tokio::spawn(beat)
            })
            .collect();
        drop(tx);
        let tracker = Tracker::new(nodes, settings, topology.load().as_ref().clone(), now());
        let task = tokio::spawn(async move {
            publish_loop(tracker, rx, topology, on_down, failover, shutdown).await;
            for b in beats {
                let _ = b.await;
            }
            tracing::debug!("health monitor stopped");
        });
        (task, counts)
    }
}

/// One node's heartbeats: beat, report, wait for the next one (backing off while the
/// node fails).
async fn beat_loop<P: Pulse>(
    node: usize,
    mut pulse: P,
    interval: Duration,
    tx: mpsc::Sender<Event>,
    mut shutdown: watch::Receiver<bool>,
    counts: Arc<BeatCounts>,
) {
    let mut failures = 0u32;
    let mut next = Instant::now();
    loop {
        tokio::select! {
            biased;
            _ = stopped(&mut shutdown) => break,
            _ = tokio::time::sleep_until(next) => {}
        }
        let started = Instant::now();
        counts.count(node);
        let outcome = tokio::select! {
            biased;
            _ = stopped(&mut shutdown) => break,
            outcome = pulse.beat() => outcome,
        };
        let at = Instant::now();
        match &outcome {
            Ok(_) => failures = 0,
            Err(e) => {
                failures = failures.saturating_add(1);
                counts.count_failure(node);
                tracing::debug!(node, error = %e, failures, "heartbeat failed");
            }
        }
        let event = Event::Beat {
            node,
            at: at.into_std(),
            outcome: outcome.map_err(|e| e.to_string()),
        };
        if tx.send(event).await.is_err() {
            break;
        }
        // Fixed rate while beats are quick; at once after a beat that overran.
        next = (started + next_beat_in(interval, failures)).max(at);
    }
}

async fn publish_loop(
    mut tracker: Tracker,
    mut rx: mpsc::Receiver<Event>,
    topology: SharedTopology,
    on_down: OnDown,
    failover: Option<FailoverSetup>,
    mut shutdown: watch::Receiver<bool>,
) {
    // Ticks let silence count: a node whose beat hangs goes suspect, then down (and a
    // silent primary is suspected by the failover controller).
    let mut ticker =
        tokio::time::interval((tracker.settings().interval / 4).max(Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut driver, mut inlets) = match failover {
        Some(setup) => {
            let (d, i) = Driver::new(setup, on_down.clone());
            (Some(d), Some(i))
        }
        None => (None, None),
    };
    if let Some(d) = &driver {
        tracker.set_primary(d.primary());
    }
    loop {
        let (mut results, mut requests) = match inlets.as_mut() {
            Some(i) => (Some(&mut i.results), Some(&mut i.requests)),
            None => (None, None),
        };
        let event = tokio::select! {
            biased;
            _ = stopped(&mut shutdown) => break,
            Some(input) = recv_unbounded(&mut results) => Err(Ok(input)),
            Some(request) = recv(&mut requests) => Err(Err(request)),
            event = rx.recv() => match event {
                Some(e) => Ok(e),
                None => break,
            },
            _ = ticker.tick() => Ok(Event::Tick { at: now() }),
        };
        let at = now();
        match event {
            Ok(event) => {
                for action in tracker.step(event) {
                    if let Action::Down(node) = action {
                        on_down(node);
                    }
                }
                if let Some(d) = driver.as_mut() {
                    d.step(at, Input::Health(tracker.views()));
                }
            }
            Err(Ok(input)) => {
                if let Some(d) = driver.as_mut() {
                    d.step(at, input);
                }
            }
            Err(Err(request)) => {
                if let Some(d) = driver.as_mut() {
                    d.request(at, request);
                }
            }
        }
        if let Some(d) = &driver {
            tracker.set_primary(d.primary());
        }
        publish(&tracker, driver.as_ref(), &topology);
        if let Some(d) = driver.as_mut() {
            d.send_replies();
        }
    }
}

async fn recv<T>(rx: &mut Option<&mut mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn recv_unbounded<T>(rx: &mut Option<&mut mpsc::UnboundedReceiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Stores the tracker's view, shaped by the failover controller, when it differs from
/// what is published. Only this task writes the snapshot, so storing cannot lose an
/// update.
fn publish(tracker: &Tracker, driver: Option<&Driver>, topology: &SharedTopology) {
    let mut next = tracker.topology().clone();
    if let Some(d) = driver {
        d.overlay(&mut next);
    }
    let current = topology.load();
    if next.nodes == current.nodes
        && next.epoch == current.epoch
        && next.writes_held == current.writes_held
        && next.when_no_replica == current.when_no_replica
    {
        return;
    }
    next.version = current.version.wrapping_add(1);
    for c in changes(&current, &next) {
        let (role, state) = c.after;
        match state {
            router::NodeState::Up => {
                tracing::info!(node = %c.name, ?role, ?state, before = ?c.before, "node state changed")
            }
            _ => {
                tracing::warn!(node = %c.name, ?role, ?state, before = ?c.before, "node state changed")
            }
        }
    }
    topology.store(Arc::new(next));
}

#[cfg(test)]
mod tests;
