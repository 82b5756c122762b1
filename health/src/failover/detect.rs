//! Detection and promotion: adopt a primary at first start, suspect a silent one,
//! confirm through the replicas, choose the candidate, hand out the next epoch.

use super::controller::{Controller, Fence, Phase};
use super::{choose_candidate, Action, Ask, Mode, Refusal};
use router::{NodeId, Role};
use std::time::{Duration, Instant};

fn streaming(v: &crate::topology::NodeView) -> bool {
    v.alive_as(Role::Replica)
        .is_some_and(|s| s.wal_receiver.as_deref() == Some("streaming"))
}

impl Controller {
    /// With no holder of the epoch (first start, nothing persisted), the one node that
    /// answers as primary gets it; of several, the one on the highest timeline. A tie is
    /// refused: an operator names the node to keep.
    pub(super) fn adopt(&mut self, acts: &mut Vec<Action>) {
        if self.primary.is_some() || self.phase != Phase::Steady {
            return;
        }
        let claim: Vec<(NodeId, Option<u32>)> = (0..self.views.len())
            .filter(|&i| self.fenced[i].is_none())
            .filter_map(|i| {
                let s = self.views[i].alive_as(Role::Primary)?;
                Some((NodeId(i), s.timeline))
            })
            .collect();
        let top = claim.iter().map(|c| c.1).max().flatten();
        let best: Vec<NodeId> = claim.iter().filter(|c| c.1 == top).map(|c| c.0).collect();
        match best.as_slice() {
            [] => {}
            [one] => {
                self.epoch = self.epoch.next();
                self.primary = Some(*one);
                self.timeline = top;
                tracing::info!(primary = %self.name(*one), epoch = self.epoch.0, "primary adopted");
                acts.push(Action::Persist(self.authority()));
                self.set_hold(None);
            }
            many => {
                let names: Vec<String> = many.iter().map(|n| self.name(*n)).collect();
                self.set_hold(Some(format!(
                    "{} all claim to be primary on the same timeline; refusing to choose (ask for a failover to the node to keep)",
                    names.join(", ")
                )));
            }
        }
    }

    /// The holder of the epoch: alive, silent, or (after an unfinished promotion) a
    /// replica. Promotes only once the replicas confirm that the primary is gone.
    pub(super) fn detect(&mut self, at: Instant, acts: &mut Vec<Action>) {
        let Some(p) = self.primary else {
            return;
        };
        let view = &self.views[p.0];
        if view.alive_as(Role::Primary).is_some() {
            if self.suspect_since.take().is_some() {
                tracing::info!(primary = %self.name(p), "primary answers again");
            }
            self.set_hold(None);
            return;
        }
        if view.alive_as(Role::Replica).is_some() {
            if self.promoted == Some(p) {
                return; // promoted; its heartbeat has not said so yet
            }
            // It holds the epoch but is not promoted (a promotion failed, or pgrelay
            // stopped half way): finish the job.
            let due = self.promote_after.is_none_or(|t| at >= t);
            if self.settings.mode == Mode::Automatic && !self.paused && due {
                self.promote_after = Some(at + self.settings.suspect_after());
                self.begin_promotion(at, p, None, at, false, None, acts);
            }
            return;
        }
        let quiet = view
            .last_ok
            .map_or(Duration::MAX, |t| at.saturating_duration_since(t));
        if quiet < self.settings.suspect_after() {
            return;
        }
        let since = match self.suspect_since {
            Some(s) => s,
            None => {
                tracing::warn!(primary = %self.name(p), quiet_ms = quiet.as_millis() as u64, "primary suspected");
                *self.suspect_since.insert(at)
            }
        };
        let name = self.name(p);
        let excluded = self.excluded();
        let replicas: Vec<usize> = (0..self.views.len())
            .filter(|&i| i != p.0 && !excluded[i])
            .filter(|&i| self.views[i].alive_as(Role::Replica).is_some())
            .collect();
        if replicas.is_empty() {
            self.set_hold(Some(format!(
                "primary {name} is unreachable and no replica answers: nothing to promote"
            )));
            return;
        }
        let heard_since = |i: usize| self.views[i].last_ok.is_some_and(|t| t >= since);
        if let Some(&r) = replicas
            .iter()
            .find(|&&i| heard_since(i) && streaming(&self.views[i]))
        {
            self.set_hold(Some(format!(
                "pgrelay cannot reach primary {name}, but replica {} still streams from it: not promoting",
                self.name(NodeId(r))
            )));
            return;
        }
        if !replicas.iter().all(|&i| heard_since(i)) {
            self.set_hold(Some(format!(
                "primary {name} is unreachable; confirming with the replicas"
            )));
            return;
        }
        if self.settings.mode == Mode::Manual || self.paused {
            let why = if self.paused { "paused" } else { "manual" };
            self.set_hold(Some(format!(
                "primary {name} failed (its replicas lost it too); failover is {why}: ask for a failover to promote"
            )));
            return;
        }
        if let Err(r) = self.failover(at, None, false, None, acts) {
            self.set_hold(Some(format!("primary {name} failed; not promoting: {r}")));
        }
    }

    /// Replace the holder of the epoch by the best (or the `wanted`) replica.
    pub(super) fn failover(
        &mut self,
        at: Instant,
        wanted: Option<NodeId>,
        force: bool,
        reply: Option<u64>,
        acts: &mut Vec<Action>,
    ) -> Result<(), Refusal> {
        let excluded = self.excluded();
        let from = self.primary;
        let last = self.last_primary.clone();
        let target = choose_candidate(&Ask {
            views: &self.views,
            names: &self.names,
            failed: from,
            excluded: &excluded,
            last_primary: last.as_ref(),
            max_lag: self.settings.max_lag.0,
            wanted,
            force,
        })?;
        // Time to recover counts from the primary's last answer.
        self.suspect_since = None;
        let since = from
            .map(|f| &self.views[f.0])
            .filter(|v| !v.alive())
            .and_then(|v| v.last_ok)
            .unwrap_or(at);
        self.begin_promotion(at, target, from, since, false, reply, acts);
        Ok(())
    }

    /// The epoch goes up and `target` holds it (persisted first), then it is promoted;
    /// the old holder is fenced and its fence command runs.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn begin_promotion(
        &mut self,
        _at: Instant,
        target: NodeId,
        from: Option<NodeId>,
        since: Instant,
        planned: bool,
        reply: Option<u64>,
        acts: &mut Vec<Action>,
    ) {
        if self.primary != Some(target) {
            self.epoch = self.epoch.next();
        }
        self.primary = Some(target);
        self.phase = Phase::Promoting {
            target,
            from,
            since,
            planned,
            reply,
        };
        let to = self.name(target);
        tracing::warn!(from = ?from.map(|f| self.name(f)), to = %to, epoch = self.epoch.0, planned, "promoting");
        self.set_hold(Some(match from.filter(|f| *f != target) {
            Some(f) => format!("failing over from {} to {to}", self.name(f)),
            None => format!("promoting {to}"),
        }));
        acts.push(Action::Persist(self.authority()));
        acts.push(Action::Promote { node: target });
        if let Some(f) = from.filter(|f| *f != target) {
            // Alive (a switchover) it is fenced already; dead, it is shot now and
            // fenced again if it ever comes back claiming the role.
            let alive = self.views[f.0].alive();
            self.fenced[f.0] = Some(Fence {
                appeared: alive,
                ..Fence::default()
            });
            acts.push(Action::FenceCommand {
                node: f,
                epoch: self.epoch,
            });
            acts.push(Action::DropPooled(f));
        }
    }
}
