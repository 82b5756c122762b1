//! Node health for pgrelay: one heartbeat task per node reads its role, timeline, WAL
//! positions and replay status; lag is measured in bytes and time; the result is
//! published as immutable [`router::Topology`] snapshots through arc-swap.
//!
//! The seams: [`probe`] (what one heartbeat learns, and the [`Pulse`] trait tests fake),
//! [`lag`] (pure lag measurement), [`topology`] (the pure state machine: events in,
//! actions out), [`HealthMonitor`] (the thin tasks) and [`Coordinator`] (who owns the
//! epoch). Failure detection, failover and fencing build on the same seams.

mod coordinator;
pub mod failover;
pub mod lag;
mod monitor;
pub mod probe;
pub mod topology;

pub use coordinator::{Coordinator, CoordinatorError, LocalCoordinator};
pub use monitor::{
    discover, discover_with, next_beat_in, BeatCounts, HealthMonitor, OnDown, MAX_BACKOFF,
};
pub use probe::{ControlCreds, NodeSpec, ProbeError, Pulse, Sample};
pub use topology::Settings;

use std::sync::Arc;

/// The live topology: the hot path loads it without a lock, the monitor swaps in a new
/// snapshot when something changes.
pub type SharedTopology = Arc<arc_swap::ArcSwap<router::Topology>>;

/// A shared topology holding `initial`.
pub fn shared(initial: router::Topology) -> SharedTopology {
    Arc::new(arc_swap::ArcSwap::from_pointee(initial))
}
