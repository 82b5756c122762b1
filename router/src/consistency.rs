//! Per-session consistency: what a read may see, and which replica can serve it.
//!
//! A session carries a read floor, an LSN its reads must not fall behind: the primary's
//! WAL position after its last committed write (read-your-writes), raised after each
//! replica read to what that replica had replayed (monotonic reads), or handed over from
//! another connection (a causal token). A replica whose replay position is at or past
//! the floor serves every later read correctly, however far behind it otherwise is.

use crate::choose::least_loaded;
use crate::{choose, Class, Lsn, NoNode, NodeId, Route, Topology};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// How fresh a session's reads must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// Any replica within the lag bounds: reads may miss the session's own writes.
    Eventual,
    /// Read-your-writes and monotonic reads within the session.
    #[default]
    Session,
    /// A read sees every write committed anywhere before the read began.
    Global,
    /// Every read goes to the primary.
    Primary,
}

impl Consistency {
    pub const NAMES: &'static str = "eventual, session, global, primary";

    /// Does the session keep a read floor at all?
    pub fn tracks_floor(self) -> bool {
        matches!(self, Consistency::Session | Consistency::Global)
    }
}

impl fmt::Display for Consistency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Consistency::Eventual => "eventual",
            Consistency::Session => "session",
            Consistency::Global => "global",
            Consistency::Primary => "primary",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid consistency level {0:?}: expected one of {names}", names = Consistency::NAMES)]
pub struct ConsistencyParseError(pub String);

impl FromStr for Consistency {
    type Err = ConsistencyParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "eventual" => Ok(Consistency::Eventual),
            "session" => Ok(Consistency::Session),
            "global" => Ok(Consistency::Global),
            "primary" => Ok(Consistency::Primary),
            _ => Err(ConsistencyParseError(s.to_string())),
        }
    }
}

/// Where a read with a floor goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadChoice {
    pub route: Route,
    /// The replica is known to be at or past the floor. When false, the caller must
    /// check the replica's replay position before trusting its answer (or not use it).
    pub known_fresh: bool,
}

/// Chooses the node for a read that must not see anything older than `floor`.
///
/// `replayed(node)` is the best known lower bound of a replica's replay position: the
/// snapshot's heartbeat figure, or something fresher the caller saw. A replica known to
/// be at the floor wins, preferring `sticky` (the session's last replica, so that its
/// reads stay on one node and caches stay warm), then the least loaded. If none is known
/// to be there, the most advanced eligible replica is offered unconfirmed, for a caller
/// that can check it cheaply; one that cannot uses the primary.
pub fn choose_read(
    topology: &Topology,
    floor: Lsn,
    sticky: Option<NodeId>,
    spread: u64,
    load: impl Fn(NodeId) -> usize,
    replayed: impl Fn(NodeId) -> Lsn,
) -> Result<ReadChoice, NoNode> {
    let fresh = |id: NodeId| floor == Lsn(0) || replayed(id) >= floor;
    if let Some(s) = sticky {
        if topology.replicas().any(|n| n.id == s) && fresh(s) {
            return Ok(ReadChoice {
                route: Route::Replica(s),
                known_fresh: true,
            });
        }
    }
    let at_floor = || topology.replicas().filter(|n| fresh(n.id));
    if let Some(id) = least_loaded(at_floor, spread, &load) {
        return Ok(ReadChoice {
            route: Route::Replica(id),
            known_fresh: true,
        });
    }
    let best = topology
        .replicas()
        .max_by_key(|n| (replayed(n.id), Some(n.id) == sticky));
    match best {
        Some(n) => Ok(ReadChoice {
            route: Route::Replica(n.id),
            known_fresh: false,
        }),
        None => Ok(ReadChoice {
            route: choose(topology, Class::Read, spread, load)?,
            known_fresh: true,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::tests::node;
    use crate::{Epoch, Role};
    use proptest::prelude::*;

    fn topo(replays: &[Option<u64>]) -> Topology {
        let mut nodes = vec![node(0, Role::Primary, true)];
        for (i, r) in replays.iter().enumerate() {
            let mut n = node(i + 1, Role::Replica, r.is_some());
            n.wal.replay = r.map(Lsn);
            nodes.push(n);
        }
        Topology {
            version: 1,
            epoch: Epoch(1),
            nodes,
            ..Topology::default()
        }
    }

    fn replayed(t: &Topology) -> impl Fn(NodeId) -> Lsn + '_ {
        |id| t.node(id).and_then(|n| n.wal.replay).unwrap_or_default()
    }

    #[test]
    fn levels_parse_and_print() {
        for (text, want) in [
            ("eventual", Ok(Consistency::Eventual)),
            ("SESSION", Ok(Consistency::Session)),
            (" global ", Ok(Consistency::Global)),
            ("primary", Ok(Consistency::Primary)),
            ("strong", Err(())),
            ("", Err(())),
        ] {
            let got = text.parse::<Consistency>().map_err(|_| ());
            assert_eq!(got, want, "{text:?}");
            if let Ok(level) = got {
                assert_eq!(level.to_string(), text.trim().to_ascii_lowercase());
            }
        }
    }

    #[test]
    fn reads_with_a_floor() {
        let r = |i: usize| Route::Replica(NodeId(i));
        let p = Route::Primary(NodeId(0));
        type Case = (&'static [Option<u64>], u64, Option<usize>, Route, bool);
        let cases: &[Case] = &[
            // No floor: any replica, known fresh.
            (&[Some(10), Some(20)], 0, None, r(1), true),
            // Only replica 2 is at the floor.
            (&[Some(10), Some(20)], 15, None, r(2), true),
            // Sticky wins when it is at the floor...
            (&[Some(30), Some(20)], 15, Some(2), r(2), true),
            // ...and not when it is behind.
            (&[Some(30), Some(10)], 15, Some(2), r(1), true),
            // None at the floor: the most advanced, unconfirmed.
            (&[Some(10), Some(12)], 15, None, r(2), false),
            // A down replica is never offered.
            (&[Some(10), None], 15, None, r(1), false),
            // No replica at all: the primary, which is always fresh.
            (&[None, None], 15, None, p, true),
        ];
        for &(replays, floor, sticky, want, fresh) in cases {
            let t = topo(replays);
            let got =
                choose_read(&t, Lsn(floor), sticky.map(NodeId), 0, |_| 0, replayed(&t)).unwrap();
            assert_eq!(
                (got.route, got.known_fresh),
                (want, fresh),
                "{replays:?} floor {floor} sticky {sticky:?}"
            );
        }
    }

    proptest! {
        /// No stale read is possible: whatever is chosen as known fresh is the primary
        /// or a replica at or past the floor.
        #[test]
        fn known_fresh_is_never_behind(
            replays in proptest::collection::vec(proptest::option::of(0u64..100), 0..5),
            floor in 0u64..120,
            sticky in proptest::option::of(1usize..6),
            spread in 0u64..10,
        ) {
            let t = topo(&replays);
            let got = choose_read(&t, Lsn(floor), sticky.map(NodeId), spread, |_| 0, replayed(&t));
            if let Ok(c) = got {
                if let (Route::Replica(id), true) = (c.route, c.known_fresh) {
                    let replay = t.node(id).and_then(|n| n.wal.replay).unwrap_or_default();
                    prop_assert!(floor == 0 || replay >= Lsn(floor));
                    prop_assert!(t.node(id).is_some_and(|n| n.readable_replica()));
                }
            }
        }
    }
}
