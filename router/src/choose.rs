//! Node choice (placeholder).
use crate::{Class, NodeId, Topology};
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route { Primary(NodeId), Replica(NodeId) }
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no primary is available")]
pub struct NoNode;
pub fn choose(t: &Topology, _class: Class, _spread: u64) -> Result<Route, NoNode> {
    t.primary().map(|n| Route::Primary(n.id)).ok_or(NoNode)
}
