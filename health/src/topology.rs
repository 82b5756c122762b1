//! Pure: the heartbeat state machine. Every heartbeat result and every clock tick is an
//! [`Event`]; [`Tracker::step`] folds it into the state and returns the [`Action`]s for
//! the thin async task to carry out (publish a snapshot, drop a dead node's idle pooled
//! connections, log a change). No I/O and no clock of its own: times come with events,
//! so failure detection and lag hysteresis are tested as tables and under a paused clock.
//!
//! Per node:
//! - **Up**: answered recently; a replica within the lag bounds.
//! - **Suspect**: its latest beat failed, or it has been quiet for longer than a beat may
//!   take to come due and time out (`interval + timeout`). No reads; a suspect primary
//!   still takes writes (if it is dead they fail anyway).
//! - **Down**: two beats in a row failed, or quiet for longer than two beats could take
//!   to fail (`interval + 2 × timeout`), or never answered. Never routed to; its role is
//!   forgotten (`Unknown`) and its idle pooled connections are dropped.
//! - **Lagging**: a replica over a lag bound, until it is back under half of every bound.
//!
//! A beat that is slow but within its timeout is an answer, not a failure. Silence alone
//! is only a backstop for a beat that never reports: on a saturated host a healthy
//! node's answer can come hundreds of milliseconds late (measured on the bench machine:
//! `SELECT 1` on an idle PostgreSQL took 958 ms while another cluster saturated both
//! cores), and suspecting it after two intervals sent every node, in every pgrelay on
//! the machine, to Suspect and back within a few milliseconds.

use crate::lag::{measure, ReplicaWal, WalHistory};
use crate::probe::{NodeSpec, Sample};
use router::{
    Lag, LagBounds, NoReplica, NodeId, NodeState, NodeStatus, Role, Topology, WalPositions,
};
use std::time::{Duration, Instant};

/// How the monitor judges nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Time between heartbeats of one node.
    pub interval: Duration,
    /// How long one heartbeat may take.
    pub timeout: Duration,
    pub bounds: LagBounds,
    pub when_no_replica: NoReplica,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            interval: Duration::from_millis(250),
            timeout: Duration::from_secs(1),
            bounds: LagBounds::default(),
            when_no_replica: NoReplica::Primary,
        }
    }
}

/// Something the monitor learned.
#[derive(Debug, Clone)]
pub enum Event {
    /// A heartbeat of `nodes[node]` finished at `at`: its sample, or why it failed.
    Beat {
        node: usize,
        at: Instant,
        outcome: Result<Sample, String>,
    },
    /// Time passed (lets a node that stopped answering go suspect, then down).
    Tick { at: Instant },
}

/// What the task must do after a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Store this snapshot (its version is one above the previous one).
    Publish(Topology),
    /// The node just went down: drop its idle pooled connections.
    Down(NodeId),
    /// A node's role or state changed (for the log).
    Changed(Change),
}

/// One node whose role or state differs between two snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub name: String,
    pub before: Option<(Role, NodeState)>,
    pub after: (Role, NodeState),
}

#[derive(Debug, Clone, Default)]
struct Track {
    last_ok: Option<Instant>,
    failures: u32,
    sample: Option<Sample>,
    lag: Option<Lag>,
    lagging: bool,
}

/// The monitor's whole state: per-node tracks, the primary's WAL history, and the
/// snapshot last published.
#[derive(Debug, Clone)]
pub struct Tracker {
    settings: Settings,
    specs: Vec<NodeSpec>,
    tracks: Vec<Track>,
    history: WalHistory,
    current: Topology,
    /// The primary by the failover controller's authority (the holder of the epoch);
    /// `None` until it has one, when any node answering as primary is taken.
    primary: Option<usize>,
}

/// What the failover controller sees of one node: how long it has been silent and what
/// it said last.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeView {
    /// Heartbeats failed in a row (0 when the latest one succeeded).
    pub failures: u32,
    /// When the node last answered.
    pub last_ok: Option<Instant>,
    /// Its latest successful heartbeat (kept while it fails).
    pub sample: Option<Sample>,
}

impl NodeView {
    /// Answered its latest heartbeat.
    pub fn alive(&self) -> bool {
        self.failures == 0 && self.sample.is_some()
    }

    /// Alive and answering in this role.
    pub fn alive_as(&self, role: Role) -> Option<&Sample> {
        self.sample
            .as_ref()
            .filter(|s| self.failures == 0 && s.role == role)
    }
}

impl Tracker {
    /// Starts from `initial` (e.g. the startup discovery, or an empty default): nodes
    /// that were up count as having answered at `now`, with the role and WAL positions
    /// the snapshot shows.
    pub fn new(specs: Vec<NodeSpec>, settings: Settings, initial: Topology, now: Instant) -> Self {
        let tracks = specs
            .iter()
            .map(|spec| match initial.node(spec.id) {
                Some(n) if n.up => Track {
                    last_ok: Some(now),
                    failures: 0,
                    sample: Some(Sample {
                        timeline: n.timeline,
                        current: n.wal.current,
                        receive: n.wal.receive,
                        replay: n.wal.replay,
                        wal_receiver: n.wal_receiver.clone(),
                        ..Sample::of_role(n.role)
                    }),
                    lag: n.lag,
                    lagging: n.state == NodeState::Lagging,
                },
                _ => Track::default(),
            })
            .collect();
        let mut history = WalHistory::default();
        if let Some(lsn) = initial.primary().and_then(|p| p.wal.current) {
            history.record(now, lsn);
        }
        Tracker {
            settings,
            specs,
            tracks,
            history,
            current: initial,
            primary: None,
        }
    }

    /// Every node as the failover controller sees it.
    pub fn views(&self) -> Vec<NodeView> {
        self.tracks
            .iter()
            .map(|t| NodeView {
                failures: t.failures,
                last_ok: t.last_ok,
                sample: t.sample.clone(),
            })
            .collect()
    }

    /// Lag is measured against this node only (the holder of the epoch): a fenced old
    /// primary's WAL positions are on another timeline and mean nothing for replicas.
    pub fn set_primary(&mut self, node: Option<usize>) {
        if node != self.primary {
            self.primary = node;
            self.history = WalHistory::default();
        }
    }

    /// The snapshot last published (or the initial one).
    pub fn topology(&self) -> &Topology {
        &self.current
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Folds one event into the state; returns what to do about it.
    pub fn step(&mut self, event: Event) -> Vec<Action> {
        let now = match event {
            Event::Tick { at } => at,
            Event::Beat { node, at, outcome } => {
                self.beat(node, at, outcome);
                at
            }
        };
        self.publish(now)
    }

    fn beat(&mut self, node: usize, at: Instant, outcome: Result<Sample, String>) {
        let Some(track) = self.tracks.get_mut(node) else {
            return;
        };
        let sample = match outcome {
            Ok(sample) => sample,
            Err(_) => {
                track.failures = track.failures.saturating_add(1);
                return;
            }
        };
        track.failures = 0;
        track.last_ok = Some(at);
        if sample.role == Role::Primary && self.primary.is_none_or(|p| p == node) {
            if let Some(lsn) = sample.current {
                self.history.record(at, lsn);
            }
        }
        let (lag, lagging) = if sample.role == Role::Replica {
            let name = &self.specs[node].name;
            let primary_reported = self
                .primary_sample()
                .and_then(|p| p.standbys.iter().find(|s| &s.application_name == name))
                .and_then(|s| s.replay_lag);
            let wal = ReplicaWal {
                receive: sample.receive,
                replay: sample.replay,
                replay_age: sample.replay_age,
                primary_reported,
            };
            let lag = measure(&self.history, &wal, at);
            let track = &self.tracks[node];
            (
                lag,
                self.settings.bounds.lagging(track.lagging, lag.as_ref()),
            )
        } else {
            (None, false)
        };
        let track = &mut self.tracks[node];
        track.sample = Some(sample);
        track.lag = lag;
        track.lagging = lagging;
    }

    /// The sample of the one node currently answering as primary.
    fn primary_sample(&self) -> Option<&Sample> {
        if let Some(p) = self.primary {
            let t = self.tracks.get(p)?;
            return t
                .sample
                .as_ref()
                .filter(|s| t.failures == 0 && s.role == Role::Primary);
        }
        let mut it = self
            .tracks
            .iter()
            .filter(|t| t.failures == 0)
            .filter_map(|t| t.sample.as_ref())
            .filter(|s| s.role == Role::Primary);
        let first = it.next()?;
        it.next().is_none().then_some(first)
    }

    fn state(&self, track: &Track, now: Instant) -> NodeState {
        let Some(last_ok) = track.last_ok else {
            return NodeState::Down;
        };
        let quiet = now.saturating_duration_since(last_ok);
        // The next beat starts at most one interval after the last answer and fails at
        // its timeout; after a failure the next starts at once.
        let overdue = self.settings.interval + self.settings.timeout;
        if track.failures >= 2 || quiet > overdue + self.settings.timeout {
            NodeState::Down
        } else if track.failures == 1 || quiet > overdue {
            NodeState::Suspect
        } else if track.lagging && track.sample.as_ref().map(|s| s.role) == Some(Role::Replica) {
            NodeState::Lagging
        } else {
            NodeState::Up
        }
    }

    fn status(&self, i: usize, now: Instant) -> NodeStatus {
        let spec = &self.specs[i];
        let track = &self.tracks[i];
        let unknown = NodeStatus::unknown(spec.id, spec.name.clone(), spec.addr());
        let state = self.state(track, now);
        match (&track.sample, state) {
            (_, NodeState::Down) | (None, _) => unknown,
            (Some(s), state) => NodeStatus {
                role: s.role,
                up: true,
                state,
                timeline: s.timeline,
                wal: WalPositions {
                    current: s.current,
                    receive: s.receive,
                    replay: s.replay,
                },
                wal_receiver: s.wal_receiver.clone(),
                lag: track.lag,
                ..unknown
            },
        }
    }

    fn publish(&mut self, now: Instant) -> Vec<Action> {
        let next = Topology {
            version: self.current.version.wrapping_add(1),
            epoch: self.current.epoch,
            nodes: (0..self.specs.len()).map(|i| self.status(i, now)).collect(),
            when_no_replica: self.settings.when_no_replica,
            writes_held: None,
        };
        if next.nodes == self.current.nodes && next.when_no_replica == self.current.when_no_replica
        {
            return Vec::new();
        }
        let mut actions: Vec<Action> = changes(&self.current, &next)
            .into_iter()
            .map(Action::Changed)
            .collect();
        for n in &next.nodes {
            let was_up = self.current.node(n.id).is_some_and(|p| p.up);
            if was_up && !n.up {
                actions.push(Action::Down(n.id));
            }
        }
        actions.push(Action::Publish(next.clone()));
        self.current = next;
        actions
    }
}

/// Nodes whose role or state differ between two snapshots, for logging.
pub fn changes(prev: &Topology, next: &Topology) -> Vec<Change> {
    next.nodes
        .iter()
        .filter_map(|n| {
            let before = prev.node(n.id).map(|p| (p.role, p.state));
            let after = (n.role, n.state);
            (before != Some(after)).then(|| Change {
                name: n.name.clone(),
                before,
                after,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
