//! Operators' commands, and the planned switchover: hold writes, drain the old primary
//! (bounded) and make it read-only, wait for the target to replay its last WAL, then
//! promote the target and fence the old primary.

use super::controller::{Controller, Phase};
use super::{Action, Command, Refusal, Reply};
use router::{Lsn, NodeId, Role};
use std::time::Instant;

impl Controller {
    fn node_named(&self, name: &str) -> Result<NodeId, Refusal> {
        self.names
            .iter()
            .position(|n| n == name)
            .map(NodeId)
            .ok_or_else(|| Refusal::UnknownNode(name.to_string()))
    }

    /// Handles a command. `None`: the answer comes later (when the promotion is done).
    pub(super) fn command(
        &mut self,
        at: Instant,
        id: u64,
        command: Command,
        acts: &mut Vec<Action>,
    ) -> Option<Reply> {
        let result = match command {
            Command::Pause => {
                self.paused = true;
                tracing::warn!("automatic failover paused");
                Ok(Some("automatic failover paused".to_string()))
            }
            Command::Resume => {
                self.paused = false;
                tracing::info!("automatic failover resumed");
                Ok(Some("automatic failover resumed".to_string()))
            }
            Command::Drain { node } => self.drain(&node),
            Command::Enable { node } => self.enable(&node),
            Command::Switchover { to } => self.switchover(at, id, &to, acts),
            Command::Failover { to, force } => self.manual_failover(at, id, to, force, acts),
        };
        match result {
            Ok(Some(done)) => Some(Ok(done)),
            Ok(None) => None,
            Err(r) => {
                tracing::warn!(reason = %r, "request refused");
                Some(Err(r))
            }
        }
    }

    fn drain(&mut self, name: &str) -> Result<Option<String>, Refusal> {
        let node = self.node_named(name)?;
        if self.drained[node.0] {
            return Ok(Some(format!("{name} is drained already")));
        }
        if self.primary == Some(node) || self.target() == Some(node) {
            return Err(Refusal::NotEligible(
                name.into(),
                "it is (or is becoming) the primary; switch over first".into(),
            ));
        }
        self.drained[node.0] = true;
        tracing::warn!(node = name, "node drained: no new leases, not promoted");
        Ok(Some(format!("{name} drained: no new leases")))
    }

    fn enable(&mut self, name: &str) -> Result<Option<String>, Refusal> {
        let node = self.node_named(name)?;
        if !std::mem::take(&mut self.drained[node.0]) {
            return Ok(Some(format!("{name} was not drained")));
        }
        tracing::info!(node = name, "node enabled");
        Ok(Some(format!("{name} enabled")))
    }

    /// The node a failover or switchover in progress is promoting.
    fn target(&self) -> Option<NodeId> {
        match self.phase {
            Phase::Steady => None,
            Phase::Promoting { target, .. }
            | Phase::Draining { target, .. }
            | Phase::CatchingUp { target, .. } => Some(target),
        }
    }

    fn busy(&self) -> Result<(), Refusal> {
        match self.phase {
            Phase::Steady => Ok(()),
            _ => Err(Refusal::Busy(
                "a failover or switchover is in progress".into(),
            )),
        }
    }

    fn switchover(
        &mut self,
        at: Instant,
        id: u64,
        to: &str,
        acts: &mut Vec<Action>,
    ) -> Result<Option<String>, Refusal> {
        self.busy()?;
        let target = self.node_named(to)?;
        if self.primary == Some(target) {
            // Idempotent: a retried request finds its work done (even before the new
            // primary's heartbeat says so).
            return Ok(Some(format!(
                "{to} is the primary already (epoch {})",
                self.epoch.0
            )));
        }
        let from = self
            .primary
            .filter(|p| self.views[p.0].alive_as(Role::Primary).is_some())
            .ok_or_else(|| {
                Refusal::Busy("no live primary to switch over from; ask for a failover".into())
            })?;

        if self.drained[target.0] {
            return Err(Refusal::NotEligible(to.into(), "it is drained".into()));
        }
        let excluded = self.excluded()[target.0];
        let Some(s) = self.views[target.0]
            .alive_as(Role::Replica)
            .filter(|s| !excluded && s.wal_receiver.as_deref() == Some("streaming"))
        else {
            return Err(Refusal::NotEligible(
                to.into(),
                "it is not a healthy streaming replica".into(),
            ));
        };
        let primary_at = self.last_primary.as_ref().and_then(|p| p.current);
        let behind = primary_at
            .zip(s.replay)
            .map_or(0, |(p, r)| p.0.saturating_sub(r.0));
        if behind > self.settings.max_lag.0 {
            return Err(Refusal::TooFarBehind {
                name: to.into(),
                behind,
                max: self.settings.max_lag.0,
            });
        }
        tracing::warn!(from = %self.name(from), to, "switchover: holding writes, draining the primary");
        self.set_hold(Some(format!(
            "switchover from {} to {to} in progress",
            self.name(from)
        )));
        self.phase = Phase::Draining {
            target,
            from,
            since: at,
            reply: id,
        };
        acts.push(Action::Drain {
            node: from,
            timeout: self.settings.drain_timeout,
        });
        Ok(None)
    }

    fn manual_failover(
        &mut self,
        at: Instant,
        id: u64,
        to: Option<String>,
        force: bool,
        acts: &mut Vec<Action>,
    ) -> Result<Option<String>, Refusal> {
        self.busy()?;
        let wanted = to.as_deref().map(|n| self.node_named(n)).transpose()?;
        let alive = |n: NodeId| self.views[n.0].alive_as(Role::Primary).is_some();
        match (self.primary, wanted) {
            (Some(p), Some(w)) if p == w && alive(p) => {
                return Ok(Some(format!("{} is the primary already", self.name(p))));
            }
            (Some(p), _) if alive(p) && !force => {
                return Err(Refusal::Busy(format!(
                    "primary {} is alive: ask for a switchover, or force",
                    self.name(p)
                )));
            }
            (None, Some(w)) if alive(w) => {
                // Settles a split brain: the operator names the primary to keep.
                self.epoch = self.epoch.next();
                self.primary = Some(w);
                self.timeline = self.views[w.0].sample.as_ref().and_then(|s| s.timeline);
                self.set_hold(None);
                acts.push(Action::Persist(self.authority()));
                tracing::warn!(primary = %self.name(w), epoch = self.epoch.0, "primary chosen by an operator");
                return Ok(Some(format!(
                    "{} is the primary (epoch {})",
                    self.name(w),
                    self.epoch.0
                )));
            }
            _ => {}
        }
        self.failover(at, wanted, force, Some(id), acts)?;
        Ok(None)
    }

    pub(super) fn on_drained(
        &mut self,
        at: Instant,
        node: NodeId,
        result: Result<Lsn, String>,
        acts: &mut Vec<Action>,
    ) {
        let Phase::Draining {
            target,
            from,
            since,
            reply,
        } = self.phase.clone()
        else {
            return;
        };
        if from != node {
            return;
        }
        match result {
            Ok(lsn) => {
                tracing::info!(from = %self.name(from), lsn = %lsn, "switchover: old primary read-only; waiting for the target to replay");
                self.phase = Phase::CatchingUp {
                    target,
                    from,
                    lsn,
                    since,
                    deadline: at + self.settings.catch_up_timeout,
                    reply,
                };
                self.catch_up(at, acts);
            }
            Err(e) => self.abandon(from, reply, format!("draining failed: {e}"), acts),
        }
    }

    /// Switchover: promote once the target has replayed the old primary's last WAL.
    pub(super) fn catch_up(&mut self, at: Instant, acts: &mut Vec<Action>) {
        let Phase::CatchingUp {
            target,
            from,
            lsn,
            since,
            deadline,
            reply,
        } = self.phase.clone()
        else {
            return;
        };
        let replayed = self.views[target.0]
            .alive_as(Role::Replica)
            .and_then(|s| s.replay);
        if replayed.is_some_and(|r| r >= lsn) {
            self.begin_promotion(at, target, Some(from), since, true, Some(reply), acts);
        } else if at >= deadline {
            let why = format!(
                "{} did not replay up to {lsn} in time (at {replayed:?})",
                self.name(target)
            );
            self.abandon(from, reply, why, acts);
        }
    }

    /// A switchover that cannot finish: the old primary takes writes again.
    fn abandon(&mut self, from: NodeId, reply: u64, why: String, acts: &mut Vec<Action>) {
        tracing::error!(reason = %why, "switchover abandoned; the primary takes writes again");
        self.phase = Phase::Steady;
        self.set_hold(None);
        acts.push(Action::Unfence { node: from });
        acts.push(Action::Reply {
            id: reply,
            reply: Err(Refusal::Busy(format!("switchover abandoned: {why}"))),
        });
    }
}
