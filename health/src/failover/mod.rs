//! Failover and fencing. The policy is the pure [`Controller`]: heartbeat views, the
//! results of its own actions and operators' commands go in, [`Action`]s come out, and
//! [`Controller::overlay`] shapes every published snapshot (fenced and diverged nodes,
//! held writes, the epoch). The thin task that carries the actions out lives in
//! [`crate::monitor`] and [`actions`].
//!
//! The guarantees, and where each is enforced:
//! - **No promotion while the primary may live.** The primary is suspected after
//!   `missed_heartbeats` intervals of silence; failure is confirmed only when every
//!   reachable replica has, since then, reported its WAL receiver not streaming. A
//!   pgrelay cut off from a live primary holds writes instead.
//! - **At most one routable primary per epoch.** The epoch and the primary's name are
//!   persisted before a promotion is attempted; any other node claiming the primary
//!   role is fenced (never routed to, made read-only, fence command run) until it comes
//!   back as a replica on the current timeline.
//! - **No acknowledged write lost under synchronous replication.** The candidate must
//!   have been a synchronous (or quorum) standby, and for `ANY k` quorums enough of them
//!   must be heard from that one of them surely has every acknowledged commit.

pub mod actions;
mod candidate;
mod commands;
pub mod conninfo;
mod controller;
mod detect;
mod follow;
mod handle;
mod task;

pub use actions::Effects;
pub use candidate::{choose_candidate, Ask, Refusal};
pub use controller::{Controller, LastFailover, Phase};
pub use handle::{FailoverHandle, FailoverInbox, FailoverStatus, InFlight};
pub(crate) use task::Driver;
pub use task::FailoverSetup;

use router::{Epoch, Lsn, NodeId, WalBytes};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Whether pgrelay promotes on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Detect, confirm, promote.
    #[default]
    Automatic,
    /// Detect and report; promote only when an operator asks.
    Manual,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "automatic" => Ok(Mode::Automatic),
            "manual" => Ok(Mode::Manual),
            other => Err(format!(
                "unknown failover mode {other:?} (expected automatic or manual)"
            )),
        }
    }
}

/// How the controller decides and how long it waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailoverSettings {
    pub mode: Mode,
    /// Heartbeat interval (from the health settings).
    pub interval: Duration,
    /// Intervals of silence after which the primary is suspected.
    pub missed_heartbeats: u32,
    /// A candidate further behind the last known primary position is refused unless
    /// forced.
    pub max_lag: WalBytes,
    /// How long a re-pointed replica has to stream from the new primary before it is
    /// marked diverged.
    pub follow_timeout: Duration,
    /// Switchover: how long in-flight work on the old primary may take to finish.
    pub drain_timeout: Duration,
    /// Switchover: how long the target may take to replay the old primary's last WAL.
    pub catch_up_timeout: Duration,
}

impl Default for FailoverSettings {
    fn default() -> Self {
        FailoverSettings {
            mode: Mode::Automatic,
            interval: Duration::from_millis(250),
            missed_heartbeats: 4,
            max_lag: WalBytes(16 << 20),
            follow_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(5),
            catch_up_timeout: Duration::from_secs(10),
        }
    }
}

impl FailoverSettings {
    /// Silence after which the primary is suspected.
    pub fn suspect_after(&self) -> Duration {
        self.interval.saturating_mul(self.missed_heartbeats.max(1))
    }
}

/// What survives a restart: the epoch (fencing token) and who holds it. Written
/// atomically before every promotion.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Authority {
    pub epoch: Epoch,
    /// The node (by configured name) that holds the epoch.
    pub primary: Option<String>,
    /// Its timeline when last known; a primary on a lower timeline is fenced.
    pub timeline: Option<u32>,
}

/// An operator's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Planned move of the primary to a named replica, with no loss.
    Switchover {
        to: String,
    },
    /// Promote now (manual mode, or after a refusal): to a named replica or the best one.
    /// `force` overrides the lag limit and the synchronous-standby rule.
    Failover {
        to: Option<String>,
        force: bool,
    },
    /// Stop promoting on its own (detection goes on), and start again.
    Pause,
    Resume,
    /// Take a replica out of routing (no new leases) and out of promotion, and put it
    /// back. The primary cannot be drained: that is what a switchover is for.
    Drain {
        node: String,
    },
    Enable {
        node: String,
    },
}

/// What came of an operator's request.
pub type Reply = Result<String, Refusal>;

/// What a promotion reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Promotion {
    /// The new primary's timeline.
    pub timeline: Option<u32>,
    /// Where the new timeline forked off: replicas that received WAL past it cannot
    /// follow.
    pub fork: Option<Lsn>,
}

/// Something the controller learns.
#[derive(Debug, Clone)]
pub enum Input {
    /// Every node's latest heartbeat state (see [`crate::topology::NodeView`]).
    Health(Vec<crate::topology::NodeView>),
    Promoted {
        node: NodeId,
        result: Result<Promotion, String>,
    },
    Repointed {
        node: NodeId,
        result: Result<(), String>,
    },
    /// The fencing statements (read-only, end client backends) ran, or failed.
    Fenced {
        node: NodeId,
        result: Result<(), String>,
    },
    FenceCommandRan {
        node: NodeId,
        result: Result<(), String>,
    },
    /// Switchover: the old primary drained and was made read-only at this WAL position.
    Drained {
        node: NodeId,
        result: Result<Lsn, String>,
    },
    /// The epoch could not be persisted: nothing may be promoted.
    PersistFailed(String),
    Command {
        id: u64,
        command: Command,
    },
}

/// What the thin task must do. Actions of one step run in order; a failed
/// [`Action::Persist`] stops the rest of that step's actions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Persist(Authority),
    /// `pg_promote(wait => true)` on the node (after undoing any fencing of it).
    Promote {
        node: NodeId,
    },
    /// Point the replica's `primary_conninfo` at `primary` and reload.
    Repoint {
        node: NodeId,
        primary: NodeId,
    },
    /// `default_transaction_read_only = on`, reload, end its client backends.
    Fence {
        node: NodeId,
    },
    /// Run `failover.fence_command` for the node (when one is configured).
    FenceCommand {
        node: NodeId,
        epoch: Epoch,
    },
    /// Switchover: wait (bounded) for pgrelay's work on the node to end, fence it, and
    /// report its final WAL position.
    Drain {
        node: NodeId,
        timeout: Duration,
    },
    /// Switchover abandoned: make the old primary writable again.
    Unfence {
        node: NodeId,
    },
    /// A node is no longer routable: drop its idle pooled connections.
    DropPooled(NodeId),
    Reply {
        id: u64,
        reply: Reply,
    },
}

#[cfg(test)]
mod tests;
