//! After a promotion, and whenever a node shows up: fence nodes that claim the primary
//! role without the epoch, point replicas at the current primary, and mark the ones
//! that cannot follow it as diverged.

use super::controller::{Controller, Fence};
use super::Action;
use router::{NodeId, Role};
use std::time::{Duration, Instant};

/// After a failed re-point, wait this long before trying again.
const REPOINT_RETRY: Duration = Duration::from_secs(1);

impl Controller {
    /// Every node but the holder of the epoch that answers as primary is fenced: dropped
    /// from routing at once, made read-only, its fence command run once per appearance.
    /// It rejoins once it streams as a replica on the current timeline.
    pub(super) fn fence_rogues(&mut self, at: Instant, acts: &mut Vec<Action>) {
        let Some(p) = self.primary else {
            return;
        };
        for i in 0..self.views.len() {
            if i == p.0 {
                continue;
            }
            let node = NodeId(i);
            let view = &self.views[i];
            if let Some(s) = view.alive_as(Role::Primary) {
                let read_only = s.read_only;
                let fence = match &mut self.fenced[i] {
                    Some(f) => f,
                    slot => {
                        tracing::warn!(node = %self.names[i], epoch = self.epoch.0, "claims to be primary without the epoch: fenced");
                        acts.push(Action::DropPooled(node));
                        slot.insert(Fence::default())
                    }
                };
                if !fence.appeared {
                    fence.appeared = true;
                    acts.push(Action::FenceCommand {
                        node,
                        epoch: self.epoch,
                    });
                }
                let due = fence.retry_after.is_none_or(|t| at >= t);
                if !read_only && !fence.sql_pending && due {
                    fence.sql_pending = true;
                    acts.push(Action::Fence { node });
                }
            } else if !view.alive() {
                if let Some(f) = &mut self.fenced[i] {
                    f.appeared = false;
                }
            } else if self.fenced[i].is_some() && self.on_timeline(i) {
                tracing::info!(node = %self.names[i], "fenced node rejoined as a replica of the primary");
                self.fenced[i] = None;
            }
        }
    }

    /// Streams as a replica on the current timeline (or later).
    fn on_timeline(&self, i: usize) -> bool {
        self.views[i].alive_as(Role::Replica).is_some_and(|s| {
            s.wal_receiver.as_deref() == Some("streaming")
                && s.timeline.is_some()
                && s.timeline >= self.timeline
        })
    }

    /// Replicas on an older timeline are pointed at the primary; those that had WAL past
    /// the fork, or do not stream from it in time, are diverged until they do.
    pub(super) fn follow(&mut self, at: Instant, acts: &mut Vec<Action>) {
        let Some(p) = self.primary else {
            return;
        };
        let primary_alive =
            self.views[p.0].alive_as(Role::Primary).is_some() || self.promoted == Some(p);
        let Some(timeline) = self.timeline.filter(|_| primary_alive) else {
            return;
        };
        for i in 0..self.views.len() {
            if i == p.0 || self.fenced[i].is_some() {
                continue;
            }
            let Some(s) = self.views[i].alive_as(Role::Replica) else {
                continue;
            };
            let name = &self.names[i];
            if self.on_timeline(i) {
                if std::mem::take(&mut self.diverged[i]) {
                    tracing::info!(node = %name, "diverged replica follows the primary again");
                }
                if self.following[i].take().is_some() {
                    tracing::info!(node = %name, timeline, "replica follows the new primary");
                }
                continue;
            }
            if self.diverged[i] {
                continue;
            }
            let old = s.timeline.is_some_and(|t| t < timeline);
            let ahead = self.fork.is_some_and(|f| s.receive.is_some_and(|r| r > f));
            if old && ahead {
                tracing::error!(node = %name, fork = ?self.fork, receive = ?s.receive, "replica has WAL the new primary never had: diverged");
                self.diverged[i] = true;
                self.following[i] = None;
                acts.push(Action::DropPooled(NodeId(i)));
                continue;
            }
            if let Some(since) = self.following[i] {
                if at.saturating_duration_since(since) > self.settings.follow_timeout {
                    tracing::error!(node = %name, "replica did not start streaming from the new primary: diverged");
                    self.diverged[i] = true;
                    self.following[i] = None;
                    acts.push(Action::DropPooled(NodeId(i)));
                }
                continue;
            }
            let due = self.repoint_after[i].is_none_or(|t| at >= t);
            if old && due {
                tracing::info!(node = %name, primary = %self.names[p.0], "re-pointing replica");
                self.following[i] = Some(at);
                acts.push(Action::Repoint {
                    node: NodeId(i),
                    primary: p,
                });
            }
        }
    }

    pub(super) fn on_repointed(&mut self, at: Instant, node: NodeId, result: Result<(), String>) {
        if let Err(e) = result {
            tracing::warn!(node = %self.name(node), error = %e, "re-pointing failed; will retry");
            if let Some(f) = self.following.get_mut(node.0) {
                *f = None;
            }
            if let Some(r) = self.repoint_after.get_mut(node.0) {
                *r = Some(at + REPOINT_RETRY);
            }
        }
    }

    pub(super) fn on_fenced(&mut self, at: Instant, node: NodeId, result: Result<(), String>) {
        if let Some(Some(f)) = self.fenced.get_mut(node.0) {
            f.sql_pending = false;
            // Also after success: the heartbeat shows the node read-only only later.
            f.retry_after = Some(at + REPOINT_RETRY);
        }
        match result {
            Ok(()) => {
                tracing::warn!(node = %self.name(node), "fenced: read-only, client backends ended")
            }
            Err(e) => {
                tracing::error!(node = %self.name(node), error = %e, "fencing statements failed")
            }
        }
    }
}
