//! Domain newtypes. They exist so that a byte count, a millisecond count and a WAL
//! position can never be mixed up by accident.

use serde::Serialize;
use std::fmt;
use std::str::FromStr;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
pub struct Epoch(pub u64);

/// What a node says it is. Roles are discovered from the nodes, never configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Replica,
    /// Not yet reached, or unreachable: never routed to.
    Unknown,
}

/// One node as the router sees it in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeStatus {
    pub id: NodeId,
    pub name: String,
    /// `host:port`, for logs and for connecting.
    pub addr: String,
    pub role: Role,
    /// Answered its last check. A node that is not up is never routed to.
    pub up: bool,
}

/// An immutable snapshot of the cluster, published through arc-swap so the hot path
/// reads it without a lock. Every change produces a new snapshot with a higher version.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Topology {
    pub version: u64,
    pub epoch: Epoch,
    pub nodes: Vec<NodeStatus>,
}

impl Topology {
    pub fn node(&self, id: NodeId) -> Option<&NodeStatus> {
        self.nodes.get(id.0)
    }

    /// The routable primary, if exactly one up node claims the role.
    pub fn primary(&self) -> Option<&NodeStatus> {
        let mut it = self
            .nodes
            .iter()
            .filter(|n| n.up && n.role == Role::Primary);
        let first = it.next()?;
        match it.next() {
            // Two nodes claiming to be primary: refuse to guess (fencing decides, later).
            Some(_) => None,
            None => Some(first),
        }
    }

    pub fn replicas(&self) -> impl Iterator<Item = &NodeStatus> {
        self.nodes
            .iter()
            .filter(|n| n.up && n.role == Role::Replica)
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
        NodeStatus {
            id: NodeId(id),
            name: format!("pg{id}"),
            addr: String::new(),
            role,
            up,
        }
    }

    #[test]
    fn primary_requires_exactly_one_up_claimant() {
        let t = |nodes| Topology {
            version: 1,
            epoch: Epoch(0),
            nodes,
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
}
