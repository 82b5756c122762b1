//! Domain newtypes. They exist so that a byte count, a millisecond count and a WAL
//! position can never be mixed up by accident.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A WAL position, as PostgreSQL prints it (`16/B374D848`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN {0:?}: expected two hex numbers separated by '/'")]
pub struct LsnParseError(pub String);

impl FromStr for Lsn {
    type Err = LsnParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || LsnParseError(s.to_string());
        let (hi, lo) = s.trim().split_once('/').ok_or_else(err)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Index of a node in the configured node list. Stable for the life of a config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct NodeId(pub usize);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node#{}", self.0)
    }
}

/// Fencing token: bumped by every promotion, never decreases.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Epoch(pub u64);

impl Epoch {
    /// The epoch after this one (a promotion's fencing token).
    pub fn next(self) -> Epoch {
        Epoch(self.0.saturating_add(1))
    }
}

/// What a node says it is. Roles are discovered from the nodes, never configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Replica,
    /// Not yet reached, or unreachable: never routed to.
    Unknown,
}

/// A distance in WAL, in bytes (e.g. how far a replica's replay is behind the primary).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
#[serde(transparent)]
pub struct WalBytes(pub u64);

impl fmt::Display for WalBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}B", self.0)
    }
}

impl Lsn {
    /// How far `self` is ahead of `earlier`; zero when it is not ahead.
    pub fn bytes_since(self, earlier: Lsn) -> WalBytes {
        WalBytes(self.0.saturating_sub(earlier.0))
    }
}

/// How a node is doing, as its heartbeats tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Answering heartbeats; a replica is within the lag bounds.
    Up,
    /// Its latest heartbeat failed, or is overdue past its timeout. Still the primary for
    /// writes (a dead one fails them anyway), but reads go elsewhere until it answers
    /// again.
    Suspect,
    /// Two heartbeats in a row failed (or are overdue), or never answered: never routed to.
    Down,
    /// A replica that answers but is over a lag bound: no reads until back under.
    Lagging,
    /// Claims to be primary without holding the current epoch (an old primary that came
    /// back, or the loser of a split brain): never routed to, made read-only. It rejoins
    /// only as a replica of the current primary.
    Fenced,
    /// A replica that cannot follow the current primary (it has WAL the new primary
    /// never had, or did not start streaming from it): never routed to until it does.
    Diverged,
    /// Taken out of routing by an operator (`POST /nodes/{name}/drain`), for maintenance:
    /// no new leases, and never chosen for promotion, until enabled again.
    Drained,
}

/// How far a replica is behind its primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Lag {
    /// Primary WAL position minus this replica's replay position.
    pub bytes: WalBytes,
    /// Age of the oldest WAL the replica has not replayed; zero once it replayed
    /// everything, however long the primary has been idle.
    pub time: Duration,
}

impl Serialize for Lag {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Lag", 2)?;
        st.serialize_field("bytes", &self.bytes)?;
        st.serialize_field("seconds", &self.time.as_secs_f64())?;
        st.end()
    }
}

/// WAL positions from a node's latest heartbeat. A primary has `current`; a replica
/// has `receive` and `replay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
pub struct WalPositions {
    pub current: Option<Lsn>,
    pub receive: Option<Lsn>,
    pub replay: Option<Lsn>,
}

/// One node as the router sees it in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeStatus {
    pub id: NodeId,
    pub name: String,
    /// `host:port`, for logs and for connecting.
    pub addr: String,
    pub role: Role,
    /// Not down (`state != Down`). A node that is not up is never routed to.
    pub up: bool,
    pub state: NodeState,
    pub timeline: Option<u32>,
    pub wal: WalPositions,
    /// A replica's WAL receiver status (`streaming`, ...), none when it has no receiver.
    pub wal_receiver: Option<String>,
    /// A replica's lag behind the primary, when both are known.
    pub lag: Option<Lag>,
}

impl NodeStatus {
    /// A node nothing is known about yet: down, role unknown.
    pub fn unknown(id: NodeId, name: impl Into<String>, addr: impl Into<String>) -> Self {
        NodeStatus {
            id,
            name: name.into(),
            addr: addr.into(),
            role: Role::Unknown,
            up: false,
            state: NodeState::Down,
            timeline: None,
            wal: WalPositions::default(),
            wal_receiver: None,
            lag: None,
        }
    }

    /// May take writes: claims the primary role and has not been declared down.
    pub fn writable(&self) -> bool {
        self.role == Role::Primary && matches!(self.state, NodeState::Up | NodeState::Suspect)
    }

    /// May take reads as a replica: answering, and within the lag bounds.
    pub fn readable_replica(&self) -> bool {
        self.role == Role::Replica && self.state == NodeState::Up
    }
}

/// What a read does when no replica may take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NoReplica {
    /// Read from the primary.
    #[default]
    Primary,
    /// Fail the read (the proxy reports SQLSTATE 57P03).
    Error,
}

/// An immutable snapshot of the cluster, published through arc-swap so the hot path
/// reads it without a lock. Every change produces a new snapshot with a higher version.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Topology {
    pub version: u64,
    pub epoch: Epoch,
    pub nodes: Vec<NodeStatus>,
    /// The read policy the snapshot was built for, so every decision uses one consistent
    /// view (and the admin API shows it).
    pub when_no_replica: NoReplica,
    /// Why writes may not go anywhere right now (a failover or switchover in progress, a
    /// primary pgrelay cannot reach but the replicas can): writes wait, then fail with
    /// this reason. Reads are unaffected.
    pub writes_held: Option<String>,
}

impl Topology {
    pub fn node(&self, id: NodeId) -> Option<&NodeStatus> {
        self.nodes.get(id.0)
    }

    /// The routable primary, if exactly one node that is not down or fenced claims the
    /// role, and writes are not held.
    pub fn primary(&self) -> Option<&NodeStatus> {
        if self.writes_held.is_some() {
            return None;
        }
        let mut it = self.nodes.iter().filter(|n| n.writable());
        let first = it.next()?;
        match it.next() {
            // Two nodes claiming to be primary: refuse to guess (fencing decides, later).
            Some(_) => None,
            None => Some(first),
        }
    }

    /// Replicas that may take reads: up and within the lag bounds.
    pub fn replicas(&self) -> impl Iterator<Item = &NodeStatus> {
        self.nodes.iter().filter(|n| n.readable_replica())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn lsn_round_trips() {
        for (text, value) in [
            ("0/0", 0u64),
            ("0/16B3748", 0x16B3748),
            ("16/B374D848", 0x16_B374_D848),
            ("FFFFFFFF/FFFFFFFF", u64::MAX),
        ] {
            let lsn: Lsn = text.parse().unwrap();
            assert_eq!(lsn, Lsn(value));
            assert_eq!(lsn.to_string(), text);
        }
        for bad in ["", "0", "x/1", "1/", "/1", "1/2/3", "100000000/0"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} should not parse");
        }
    }

    /// A node for tests; shared with the other modules' tests.
    pub(crate) fn node(id: usize, role: Role, up: bool) -> NodeStatus {
        let state = if up { NodeState::Up } else { NodeState::Down };
        node_in(id, role, state)
    }

    /// A node in a given state.
    pub(crate) fn node_in(id: usize, role: Role, state: NodeState) -> NodeStatus {
        NodeStatus {
            role,
            up: state != NodeState::Down,
            state,
            ..NodeStatus::unknown(NodeId(id), format!("pg{id}"), "")
        }
    }

    #[test]
    fn primary_requires_exactly_one_up_claimant() {
        let t = |nodes| Topology {
            version: 1,
            epoch: Epoch(0),
            nodes,
            ..Topology::default()
        };
        assert_eq!(
            t(vec![node(0, Role::Primary, true)])
                .primary()
                .map(|n| n.id),
            Some(NodeId(0))
        );
        assert!(t(vec![node(0, Role::Primary, false)]).primary().is_none());
        assert!(t(vec![
            node(0, Role::Primary, true),
            node(1, Role::Primary, true)
        ])
        .primary()
        .is_none());
        assert_eq!(
            t(vec![
                node(0, Role::Replica, true),
                node(1, Role::Primary, true)
            ])
            .primary()
            .map(|n| n.id),
            Some(NodeId(1))
        );
    }

    #[test]
    fn states_decide_what_a_node_may_take() {
        use NodeState::*;
        let cases = [
            (Role::Primary, Up, true, false),
            (Role::Primary, Suspect, true, false),
            (Role::Primary, Down, false, false),
            (Role::Replica, Up, false, true),
            (Role::Replica, Suspect, false, false),
            (Role::Replica, Lagging, false, false),
            (Role::Replica, Down, false, false),
            (Role::Unknown, Up, false, false),
        ];
        for (role, state, writable, readable) in cases {
            let n = node_in(0, role, state);
            assert_eq!(n.writable(), writable, "{role:?} {state:?}");
            assert_eq!(n.readable_replica(), readable, "{role:?} {state:?}");
        }
    }

    #[test]
    fn wal_distance_saturates() {
        assert_eq!(Lsn(100).bytes_since(Lsn(40)), WalBytes(60));
        assert_eq!(Lsn(40).bytes_since(Lsn(100)), WalBytes(0));
        assert_eq!(WalBytes(7).to_string(), "7B");
    }
}
