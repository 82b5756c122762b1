//! Node choice: which node a classified statement goes to, given a topology snapshot.
//! Pure and stateless so that every decision can be replayed in a test; the caller owns
//! the counter that spreads reads.

use crate::{Class, NodeId, Topology};

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
}

/// Chooses the node for one statement.
///
/// `spread` is a caller-owned counter (e.g. a per-process atomic incremented per
/// decision) so reads are spread evenly without the router holding state.
pub fn choose(topology: &Topology, class: Class, spread: u64) -> Result<Route, NoNode> {
    let primary = || {
        topology
            .primary()
            .map(|n| Route::Primary(n.id))
            .ok_or(NoNode::NoPrimary)
    };
    match class {
        Class::Write | Class::Session | Class::Pin(_) => primary(),
        Class::Read => {
            let count = topology.replicas().count();
            if count == 0 {
                return primary();
            }
            // usize -> u64 never truncates on supported targets; the remainder is < count.
            let index = usize::try_from(spread % count as u64).unwrap_or(0);
            match topology.replicas().nth(index) {
                Some(replica) => Ok(Route::Replica(replica.id)),
                None => primary(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Epoch, PinReason, Role};
    use proptest::prelude::*;

    use crate::types::tests::node;

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
                choose(&topo(nodes), *class, *spread),
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
            let route = choose(&t, Class::Read, spread).unwrap();
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
            match choose(&t, class, spread) {
                Ok(route) => {
                    let chosen = t.node(route.node()).expect("route names a configured node");
                    prop_assert!(chosen.up, "routed to a down node: {route:?}");
                    let want_role = if route.is_primary() { P } else { Rp };
                    prop_assert_eq!(chosen.role, want_role);
                    if class != Class::Read {
                        prop_assert_eq!(Some(route.node()), t.primary().map(|n| n.id));
                    }
                }
                Err(NoNode::NoPrimary) => {
                    prop_assert!(t.primary().is_none());
                    if class == Class::Read {
                        prop_assert_eq!(t.replicas().count(), 0);
                    }
                }
            }
        }
    }
}
