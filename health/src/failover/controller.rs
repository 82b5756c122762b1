//! The failover controller's state, its `step`, and the overlay it puts on every
//! published snapshot. Pure: time comes with each step, effects leave as [`Action`]s.
//! Detection and promotion are in `detect.rs`, fencing and re-pointing in `follow.rs`,
//! operators' commands in `commands.rs`.

use super::{Action, Authority, FailoverSettings, Input, Promotion, Reply};
use crate::probe::Sample;
use crate::topology::NodeView;
use router::{Epoch, Lsn, NodeId, NodeState, Role, Topology};
use std::time::{Duration, Instant};

/// What the controller is in the middle of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Watching: detection, fencing and re-pointing go on.
    Steady,
    /// `pg_promote` has been asked of `target` (which already holds the new epoch).
    Promoting {
        target: NodeId,
        from: Option<NodeId>,
        /// When the primary was first suspected (or the switchover began).
        since: Instant,
        planned: bool,
        reply: Option<u64>,
    },
    /// Switchover: writes are held while in-flight work on `from` ends.
    Draining {
        target: NodeId,
        from: NodeId,
        since: Instant,
        reply: u64,
    },
    /// Switchover: `from` is read-only at `lsn`; waiting for `target` to replay it.
    CatchingUp {
        target: NodeId,
        from: NodeId,
        lsn: Lsn,
        since: Instant,
        deadline: Instant,
        reply: u64,
    },
}

/// A node claiming the primary role without the epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Fence {
    /// Seen alive claiming the primary role since it was last down: the fence command
    /// runs once per appearance.
    pub appeared: bool,
    /// The fencing statements are under way.
    pub sql_pending: bool,
    /// They failed: not again before this.
    pub retry_after: Option<Instant>,
}

/// The last completed failover or switchover, for operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastFailover {
    pub from: Option<String>,
    pub to: String,
    pub epoch: Epoch,
    /// From the first suspicion (or the switchover request) to the promoted primary.
    pub took: Duration,
    pub planned: bool,
}

/// The whole failover state. See the module docs of [`super`] for the guarantees.
#[derive(Debug, Clone)]
pub struct Controller {
    pub(super) settings: FailoverSettings,
    pub(super) names: Vec<String>,
    pub(super) epoch: Epoch,
    /// The holder of the epoch.
    pub(super) primary: Option<NodeId>,
    pub(super) timeline: Option<u32>,
    pub(super) phase: Phase,
    pub(super) fenced: Vec<Option<Fence>>,
    pub(super) diverged: Vec<bool>,
    /// Taken out of routing by an operator; never promoted while so.
    pub(super) drained: Vec<bool>,
    /// Re-pointed at the primary at this time; not yet streaming from it.
    pub(super) following: Vec<Option<Instant>>,
    /// Do not re-point before this time (after a failed attempt).
    pub(super) repoint_after: Vec<Option<Instant>>,
    pub(super) promote_after: Option<Instant>,
    /// Where the current timeline forked off its predecessor.
    pub(super) fork: Option<Lsn>,
    pub(super) paused: bool,
    pub(super) suspect_since: Option<Instant>,
    /// Why writes are held (published with every snapshot).
    pub(super) hold: Option<String>,
    pub(super) last_primary: Option<Sample>,
    pub(super) views: Vec<NodeView>,
    /// Promoted, but its heartbeat does not say so yet: routed to as primary already.
    pub(super) promoted: Option<NodeId>,
    pub(super) last: Option<LastFailover>,
    pub(super) failovers: u64,
}

impl Controller {
    /// Starts from what was persisted. A recorded primary that is not among `names`
    /// (the config changed) is forgotten: the next primary seen is adopted.
    pub fn new(settings: FailoverSettings, names: Vec<String>, persisted: Authority) -> Self {
        let primary = persisted
            .primary
            .as_ref()
            .and_then(|p| names.iter().position(|n| n == p))
            .map(NodeId);
        if persisted.primary.is_some() && primary.is_none() {
            tracing::warn!(recorded = ?persisted.primary, "the recorded primary is not a configured node; adopting the next primary seen");
        }
        let n = names.len();
        Controller {
            settings,
            names,
            epoch: persisted.epoch,
            primary,
            timeline: persisted.timeline,
            phase: Phase::Steady,
            fenced: vec![None; n],
            diverged: vec![false; n],
            drained: vec![false; n],
            following: vec![None; n],
            repoint_after: vec![None; n],
            promote_after: None,
            fork: None,
            paused: false,
            suspect_since: None,
            hold: None,
            last_primary: None,
            views: vec![NodeView::default(); n],
            promoted: None,
            last: None,
            failovers: 0,
        }
    }

    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The holder of the epoch (it may not be up).
    pub fn primary(&self) -> Option<NodeId> {
        self.primary
    }

    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// Names of the nodes an operator drained.
    pub fn drained(&self) -> Vec<String> {
        (0..self.names.len())
            .filter(|&i| self.drained[i])
            .map(|i| self.names[i].clone())
            .collect()
    }

    pub fn paused(&self) -> bool {
        self.paused
    }

    pub fn last_failover(&self) -> Option<&LastFailover> {
        self.last.as_ref()
    }

    /// Promotions completed since start.
    pub fn failovers(&self) -> u64 {
        self.failovers
    }

    /// Why writes are held, if they are.
    pub fn hold(&self) -> Option<&str> {
        self.hold.as_deref()
    }

    pub fn authority(&self) -> Authority {
        Authority {
            epoch: self.epoch,
            primary: self.primary.map(|p| self.name(p)),
            timeline: self.timeline,
        }
    }

    pub(super) fn name(&self, n: NodeId) -> String {
        self.names.get(n.0).cloned().unwrap_or_default()
    }

    pub(super) fn excluded(&self) -> Vec<bool> {
        (0..self.names.len())
            .map(|i| self.fenced[i].is_some() || self.diverged[i] || self.drained[i])
            .collect()
    }

    /// Sets why writes are held, logging only when the reason changes.
    pub(super) fn set_hold(&mut self, reason: Option<String>) {
        if reason != self.hold {
            match &reason {
                Some(r) => tracing::warn!(reason = %r, "writes held"),
                None => tracing::info!("writes resume"),
            }
            self.hold = reason;
        }
    }

    /// Folds one input into the state; returns what to do.
    pub fn step(&mut self, at: Instant, input: Input) -> Vec<Action> {
        let mut acts = Vec::new();
        match input {
            Input::Health(views) => {
                if views.len() == self.views.len() {
                    self.views = views;
                }
                self.on_health(at, &mut acts);
            }
            Input::Promoted { node, result } => self.on_promoted(at, node, result, &mut acts),
            Input::Repointed { node, result } => self.on_repointed(at, node, result),
            Input::Fenced { node, result } => self.on_fenced(at, node, result),
            Input::FenceCommandRan { node, result } => match result {
                Ok(()) => tracing::info!(node = %self.name(node), "fence command succeeded"),
                Err(e) => {
                    tracing::error!(node = %self.name(node), error = %e, "fence command failed")
                }
            },
            Input::Drained { node, result } => self.on_drained(at, node, result, &mut acts),
            Input::PersistFailed(e) => self.on_persist_failed(e, &mut acts),
            Input::Command { id, command } => {
                let reply = self.command(at, id, command, &mut acts);
                if let Some(reply) = reply {
                    acts.push(Action::Reply { id, reply });
                }
            }
        }
        acts
    }

    fn on_health(&mut self, at: Instant, acts: &mut Vec<Action>) {
        self.adopt(acts);
        if let Some(p) = self.primary {
            if let Some(s) = self.views[p.0].alive_as(Role::Primary) {
                self.timeline = self.timeline.max(s.timeline);
                self.last_primary = Some(s.clone());
                if self.promoted == Some(p) {
                    self.promoted = None;
                }
            }
        }
        self.fence_rogues(at, acts);
        match self.phase {
            Phase::Steady => {
                self.follow(at, acts);
                self.detect(at, acts);
            }
            Phase::CatchingUp { .. } => self.catch_up(at, acts),
            Phase::Promoting { .. } | Phase::Draining { .. } => {}
        }
    }

    fn on_promoted(
        &mut self,
        at: Instant,
        node: NodeId,
        result: Result<Promotion, String>,
        acts: &mut Vec<Action>,
    ) {
        let Phase::Promoting {
            target,
            from,
            since,
            planned,
            reply,
        } = self.phase.clone()
        else {
            return;
        };
        if target != node {
            return;
        }
        self.phase = Phase::Steady;
        let to = self.name(node);
        let answer: Reply = match result {
            Ok(p) => {
                self.timeline = p.timeline.or(self.timeline);
                self.fork = p.fork;
                self.promoted = Some(node);
                self.failovers += 1;
                let took = at.saturating_duration_since(since);
                self.last = Some(super::controller::LastFailover {
                    from: from.map(|f| self.name(f)),
                    to: to.clone(),
                    epoch: self.epoch,
                    took,
                    planned,
                });
                self.set_hold(None);
                tracing::info!(primary = %to, epoch = self.epoch.0, timeline = ?self.timeline, took_ms = took.as_millis() as u64, planned, "promoted");
                acts.push(Action::Persist(self.authority()));
                self.follow(at, acts);
                Ok(format!(
                    "{to} is the primary (epoch {}, {} ms)",
                    self.epoch.0,
                    took.as_millis()
                ))
            }
            Err(e) => {
                tracing::error!(node = %to, error = %e, "promotion failed; will retry");
                self.promote_after = Some(at + self.settings.suspect_after());
                self.set_hold(Some(format!("promotion of {to} failed: {e}")));
                Err(super::Refusal::Busy(format!(
                    "promotion of {to} failed: {e}"
                )))
            }
        };
        if let Some(id) = reply {
            acts.push(Action::Reply { id, reply: answer });
        }
    }

    fn on_persist_failed(&mut self, e: String, acts: &mut Vec<Action>) {
        tracing::error!(error = %e, "could not persist the failover state; not promoting");
        if let Phase::Promoting { from, reply, .. } = self.phase.clone() {
            // Nothing was promoted: the old holder keeps the role (the epoch stays up).
            self.primary = from;
            if let Some(f) = from {
                self.fenced[f.0] = None;
            }
            self.phase = Phase::Steady;
            if let Some(id) = reply {
                acts.push(Action::Reply {
                    id,
                    reply: Err(super::Refusal::Busy(format!("cannot persist state: {e}"))),
                });
            }
        }
        self.set_hold(Some(format!(
            "cannot persist the failover state ({e}); not promoting"
        )));
    }

    /// Shapes a snapshot: the epoch, held writes, fenced and diverged nodes, and a just
    /// promoted primary whose heartbeat has not caught up.
    pub fn overlay(&self, topo: &mut Topology) {
        topo.epoch = self.epoch;
        topo.writes_held = self.hold.clone();
        for n in &mut topo.nodes {
            let i = n.id.0;
            let rogue = self.primary.is_some_and(|p| p.0 != i) && n.role == Role::Primary;
            if self.fenced.get(i).is_some_and(Option::is_some) || rogue {
                n.state = NodeState::Fenced;
            } else if self.diverged.get(i) == Some(&true) {
                n.state = NodeState::Diverged;
            } else if self.drained.get(i) == Some(&true) && n.up {
                n.state = NodeState::Drained;
            } else if self.promoted == Some(n.id) && n.up && n.role == Role::Replica {
                n.role = Role::Primary;
                n.state = NodeState::Up;
                n.lag = None;
            }
        }
    }
}
