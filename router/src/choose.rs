//! Node choice: which node a classified statement goes to, given a topology snapshot.
//! Pure and stateless so that every decision can be replayed in a test; the caller owns
//! the counter that spreads reads.

use crate::{Class, NoReplica, NodeId, NodeStatus, Topology};

/// Where a statement goes, and in which capacity: a read that fell back to the primary
/// is still `Primary`, so the caller can count fallbacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Primary(NodeId),
    Replica(NodeId),
}

impl Route {
    pub fn node(&self) -> NodeId {
        match *self {
            Route::Primary(id) | Route::Replica(id) => id,
        }
    }

    pub fn is_primary(&self) -> bool {
        matches!(self, Route::Primary(_))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NoNode {
    /// No single up node claims to be primary (none, or two during a split brain), so
    /// neither writes nor reads without a replica can go anywhere.
    #[error("no primary is available")]
    NoPrimary,
    /// No replica is up and within the lag bounds, and the policy says reads fail rather
    /// than go to the primary (`routing.when_no_replica: error`).
    #[error("no replica within the lag bounds is available")]
    NoReplica,
}

/// Chooses the node for one statement.
///
/// Writes (and everything pinned) go to the one writable primary. Reads go to a replica
/// that is up and within the lag bounds (the snapshot says which, see
/// [`NodeStatus::readable_replica`](crate::NodeStatus::readable_replica)), preferring the
/// least loaded: `load(node)` is the caller's count of outstanding leases on a node.
/// `spread` is a caller-owned counter (e.g. a per-process atomic incremented per
/// decision) that rotates among equally loaded replicas, so the router holds no state.
/// With no eligible replica, a read follows `topology.when_no_replica`.
pub fn choose(
    topology: &Topology,
    class: Class,
    spread: u64,
    load: impl Fn(NodeId) -> usize,
) -> Result<Route, NoNode> {
    let primary = || {
        topology
            .primary()
            .map(|n| Route::Primary(n.id))
            .ok_or(NoNode::NoPrimary)
    };
    match class {
        Class::Write | Class::Session | Class::Pin(_) => primary(),
        Class::Read => match least_loaded(|| topology.replicas(), spread, load) {
            Some(id) => Ok(Route::Replica(id)),
            None => match topology.when_no_replica {
                NoReplica::Primary => primary(),
                NoReplica::Error => Err(NoNode::NoReplica),
            },
        },
    }
}

/// The least loaded of `candidates`, rotating among equals by `spread`. The iterator is
/// walked more than once, so loads are read again: a racing lease may change one, which
/// only matters for fairness, never for correctness (every candidate is eligible).
pub(crate) fn least_loaded<'a, I>(
    candidates: impl Fn() -> I,
    spread: u64,
    load: impl Fn(NodeId) -> usize,
) -> Option<NodeId>
where
    I: Iterator<Item = &'a NodeStatus>,
{
    let least = candidates().map(|n| load(n.id)).min()?;
    let count = candidates().filter(|n| load(n.id) <= least).count().max(1);
    // usize -> u64 never truncates on supported targets; the remainder is < count.
    let index = usize::try_from(spread % count as u64).unwrap_or(0);
    candidates()
        .filter(|n| load(n.id) <= least)
        .nth(index)
        .or_else(|| candidates().next())
        .map(|n| n.id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Epoch, PinReason, Role};
    use proptest::prelude::*;

    use crate::types::tests::{node, node_in};
    use crate::NodeState;

    fn idle(_: NodeId) -> usize {
        0
    }

    fn topo(nodes: &[(Role, bool)]) -> Topology {
        let nodes = nodes
            .iter()
            .enumerate()
            .map(|(i, &(role, up))| node(i, role, up))
            .collect();
        Topology {
            version: 1,
            epoch: Epoch(1),
            nodes,
            ..Topology::default()
        }
    }

    use Role::{Primary as P, Replica as Rp, Unknown as U};
    const PIN: Class = Class::Pin(PinReason::Listen);

    #[test]
    fn routes_by_class_and_availability() {
        type Case = (&'static [(Role, bool)], Class, u64, Result<Route, NoNode>);
        let no = Err(NoNode::NoPrimary);
        let cases: &[Case] = &[
            (
                &[(P, true), (Rp, true)],
                Class::Write,
                0,
                Ok(Route::Primary(NodeId(0))),
            ),
            (
                &[(Rp, true), (P, true)],
                Class::Write,
                7,
                Ok(Route::Primary(NodeId(1))),
            ),
            (
                &[(P, true), (Rp, true)],
                PIN,
                1,
                Ok(Route::Primary(NodeId(0))),
            ),
            (
                &[(P, true), (Rp, true)],
                Class::Read,
                0,
                Ok(Route::Replica(NodeId(1))),
            ),
            (
                &[(P, true), (Rp, true), (Rp, true)],
                Class::Read,
                0,
                Ok(Route::Replica(NodeId(1))),
            ),
            (
                &[(P, true), (Rp, true), (Rp, true)],
                Class::Read,
                1,
                Ok(Route::Replica(NodeId(2))),
            ),
            (
                &[(P, true), (Rp, true), (Rp, true)],
                Class::Read,
                2,
                Ok(Route::Replica(NodeId(1))),
            ),
            (
                &[(P, true), (Rp, false), (Rp, true)],
                Class::Read,
                0,
                Ok(Route::Replica(NodeId(2))),
            ),
            (
                &[(P, true), (Rp, true)],
                Class::Read,
                u64::MAX,
                Ok(Route::Replica(NodeId(1))),
            ),
            (
                &[(P, true), (Rp, false)],
                Class::Read,
                0,
                Ok(Route::Primary(NodeId(0))),
            ),
            (
                &[(P, true), (U, true)],
                Class::Read,
                0,
                Ok(Route::Primary(NodeId(0))),
            ),
            (
                &[(P, false), (Rp, true)],
                Class::Read,
                3,
                Ok(Route::Replica(NodeId(1))),
            ),
            (&[(P, false), (Rp, true)], Class::Write, 0, no),
            (&[(P, false), (Rp, true)], PIN, 0, no),
            (&[(P, false), (Rp, false)], Class::Read, 0, no),
            (&[(P, true), (P, true), (Rp, true)], Class::Write, 0, no),
            (&[], Class::Read, 0, no),
            (&[], Class::Write, 0, no),
        ];
        for (nodes, class, spread, want) in cases {
            assert_eq!(
                choose(&topo(nodes), *class, *spread, idle),
                *want,
                "{nodes:?} {class} {spread}"
            );
        }
    }

    #[test]
    fn reads_spread_evenly_over_up_replicas() {
        let t = topo(&[(P, true), (Rp, true), (Rp, false), (Rp, true), (Rp, true)]);
        let mut hits = [0u32; 5];
        for spread in 0..300 {
            let route = choose(&t, Class::Read, spread, idle).unwrap();
            hits[route.node().0] += 1;
        }
        assert_eq!(hits, [0, 100, 0, 100, 100]);
    }

    #[test]
    fn route_exposes_node_and_capacity() {
        assert_eq!(Route::Replica(NodeId(3)).node(), NodeId(3));
        assert!(Route::Primary(NodeId(0)).is_primary());
        assert!(!Route::Replica(NodeId(0)).is_primary());
        assert_eq!(NoNode::NoPrimary.to_string(), "no primary is available");
    }

    fn any_role() -> impl Strategy<Value = Role> {
        prop_oneof![Just(P), Just(Rp), Just(U)]
    }

    fn any_class() -> impl Strategy<Value = Class> {
        prop_oneof![Just(Class::Read), Just(Class::Write), Just(PIN)]
    }

    proptest! {
        #[test]
        fn decisions_respect_roles(
            nodes in proptest::collection::vec((any_role(), any::<bool>()), 0..6),
            class in any_class(),
            spread in any::<u64>(),
        ) {
            let t = topo(&nodes);
            match choose(&t, class, spread, idle) {
                Ok(route) => {
                    let chosen = t.node(route.node()).expect("route names a configured node");
                    prop_assert!(chosen.up, "routed to a down node: {route:?}");
                    let want_role = if route.is_primary() { P } else { Rp };
                    prop_assert_eq!(chosen.role, want_role);
                    if class != Class::Read {
                        prop_assert_eq!(Some(route.node()), t.primary().map(|n| n.id));
                    }
                }
                Err(NoNode::NoReplica) => prop_assert!(false, "the default policy never fails reads"),
                Err(NoNode::NoPrimary) => {
                    prop_assert!(t.primary().is_none());
                    if class == Class::Read {
                        prop_assert_eq!(t.replicas().count(), 0);
                    }
                }
            }
        }
    }

    #[test]
    fn least_loaded_replica_wins_and_ties_rotate() {
        let t = topo(&[(P, true), (Rp, true), (Rp, true), (Rp, true)]);
        let loads = [0usize, 5, 2, 2];
        let load = |n: NodeId| loads[n.0];
        let mut hits = [0u32; 4];
        for spread in 0..100 {
            hits[choose(&t, Class::Read, spread, load).unwrap().node().0] += 1;
        }
        assert_eq!(hits, [0, 0, 50, 50]);
        // The primary's load never matters to reads.
        let load = |n: NodeId| if n.0 == 0 { 0 } else { 9 };
        assert!(!choose(&t, Class::Read, 0, load).unwrap().is_primary());
    }

    #[test]
    fn lagging_and_suspect_replicas_take_no_reads() {
        use NodeState::*;
        let t = |states: &[(Role, NodeState)]| Topology {
            nodes: states
                .iter()
                .enumerate()
                .map(|(i, &(r, s))| node_in(i, r, s))
                .collect(),
            ..Topology::default()
        };
        let read = |t: &Topology| choose(t, Class::Read, 0, idle);
        let a = t(&[(P, Up), (Rp, Lagging), (Rp, Up)]);
        assert_eq!(read(&a), Ok(Route::Replica(NodeId(2))));
        let b = t(&[(P, Up), (Rp, Lagging), (Rp, Suspect)]);
        assert_eq!(read(&b), Ok(Route::Primary(NodeId(0))));
        let mut c = b.clone();
        c.when_no_replica = NoReplica::Error;
        assert_eq!(read(&c), Err(NoNode::NoReplica));
        // Writes are unaffected by the read policy, and a suspect primary still takes them.
        let d = t(&[(P, Suspect), (Rp, Up)]);
        assert_eq!(
            choose(&d, Class::Write, 0, idle),
            Ok(Route::Primary(NodeId(0)))
        );
        assert_eq!(read(&d), Ok(Route::Replica(NodeId(1))));
        let e = t(&[(P, Down), (Rp, Up)]);
        assert_eq!(choose(&e, Class::Write, 0, idle), Err(NoNode::NoPrimary));
        assert_eq!(
            NoNode::NoReplica.to_string(),
            "no replica within the lag bounds is available"
        );
    }

    fn any_state() -> impl Strategy<Value = NodeState> {
        use NodeState::*;
        prop_oneof![Just(Up), Just(Suspect), Just(Down), Just(Lagging)]
    }

    proptest! {
        /// Only an up replica within the bounds takes reads, only a writable primary
        /// takes writes, whatever the loads and the policy.
        #[test]
        fn never_routes_to_an_ineligible_node(
            nodes in proptest::collection::vec((any_role(), any_state(), 0usize..4), 0..6),
            class in any_class(),
            spread in any::<u64>(),
            fail in any::<bool>(),
        ) {
            let t = Topology {
                nodes: nodes.iter().enumerate().map(|(i, &(r, s, _))| node_in(i, r, s)).collect(),
                when_no_replica: if fail { NoReplica::Error } else { NoReplica::Primary },
                writes_held: None,
                ..Topology::default()
            };
            let load = |n: NodeId| nodes[n.0].2;
            match choose(&t, class, spread, load) {
                Ok(Route::Replica(id)) => {
                    let n = t.node(id).unwrap();
                    prop_assert!(class == Class::Read);
                    prop_assert!(n.role == Rp && n.state == NodeState::Up, "{n:?}");
                    let min = t.replicas().map(|r| load(r.id)).min().unwrap();
                    prop_assert_eq!(load(id), min);
                }
                Ok(Route::Primary(id)) => {
                    prop_assert!(t.node(id).unwrap().writable());
                    if class == Class::Read {
                        prop_assert!(!fail && t.replicas().next().is_none());
                    }
                }
                Err(NoNode::NoReplica) => {
                    prop_assert!(fail && class == Class::Read && t.replicas().next().is_none());
                }
                Err(NoNode::NoPrimary) => prop_assert!(t.primary().is_none()),
            }
        }
    }
}
