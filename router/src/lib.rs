//! Pure routing decisions. This crate owns the vocabulary shared by every other crate
//! (`Lsn`, `NodeId`, `Role`, `Epoch`, `Topology`) and performs no I/O, so every decision
//! the proxy makes can be tested as a plain function.

pub mod choose;
pub mod classify;
pub mod consistency;
pub mod lag;
pub mod types;

pub use choose::{choose, NoNode, Route};
pub use classify::{classify, classify_bytes, Class, PinReason};
pub use consistency::{choose_read, Consistency, ConsistencyParseError, ReadChoice};
pub use lag::LagBounds;
pub use types::{
    Epoch, Lag, Lsn, NoReplica, NodeId, NodeState, NodeStatus, Role, Topology, WalBytes,
    WalPositions,
};
