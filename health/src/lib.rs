//! Node health for pgrelay. For now: role discovery (who is primary, who is a replica,
//! who is down) published as [`router::Topology`] snapshots. Heartbeats with LSNs and
//! lag, failure detection, failover and fencing build on the same seams later:
//! [`probe`] (what one check learns), [`topology`] (pure: checks → snapshot),
//! [`RoleMonitor`] (the loop) and [`Coordinator`] (who owns the epoch).

mod coordinator;
mod monitor;
pub mod probe;
pub mod topology;

pub use coordinator::{Coordinator, LocalCoordinator};
pub use monitor::{discover, RoleMonitor};
pub use probe::{ControlCreds, NodeSpec, ProbeError};

use std::sync::Arc;

/// The live topology: the hot path loads it without a lock, the monitor swaps in a new
/// snapshot when something changes.
pub type SharedTopology = Arc<arc_swap::ArcSwap<router::Topology>>;

/// A shared topology holding `initial`.
pub fn shared(initial: router::Topology) -> SharedTopology {
    Arc::new(arc_swap::ArcSwap::from_pointee(initial))
}
