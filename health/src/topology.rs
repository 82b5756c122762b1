//! Pure: from the previous snapshot and this round's check outcomes to the next
//! snapshot, or "unchanged". Keeping this free of I/O lets failure detection (N missed
//! checks before "down") be added and tested as a table later.

use crate::probe::NodeSpec;
use router::{Epoch, NodeStatus, Role, Topology};

/// What a round of checks says about one node: `Some(role)` answered, `None` failed.
pub type Observation = Option<Role>;

fn status(spec: &NodeSpec, seen: Observation) -> NodeStatus {
    NodeStatus {
        id: spec.id,
        name: spec.name.clone(),
        addr: spec.addr(),
        role: seen.unwrap_or(Role::Unknown),
        up: seen.is_some(),
    }
}

/// A snapshot of exactly these observations (`observations[i]` is about `nodes[i]`;
/// a missing observation counts as failed).
pub fn build(
    nodes: &[NodeSpec],
    observations: &[Observation],
    version: u64,
    epoch: Epoch,
) -> Topology {
    let nodes = nodes
        .iter()
        .enumerate()
        .map(|(i, spec)| status(spec, observations.get(i).copied().flatten()))
        .collect();
    Topology {
        version,
        epoch,
        nodes,
    }
}

/// The snapshot to publish after `prev`, or `None` when nothing a reader could see has
/// changed: readers compare versions, so a new version must mean a real change.
pub fn next(prev: &Topology, nodes: &[NodeSpec], observations: &[Observation]) -> Option<Topology> {
    let candidate = build(
        nodes,
        observations,
        prev.version.wrapping_add(1),
        prev.epoch,
    );
    (candidate.nodes != prev.nodes).then_some(candidate)
}

/// One node whose role or reachability differs between two snapshots, for logging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub name: String,
    pub before: Option<(Role, bool)>,
    pub after: (Role, bool),
}

pub fn changes(prev: &Topology, next: &Topology) -> Vec<Change> {
    next.nodes
        .iter()
        .filter_map(|n| {
            let before = prev
                .nodes
                .iter()
                .find(|p| p.id == n.id)
                .map(|p| (p.role, p.up));
            let after = (n.role, n.up);
            (before != Some(after)).then(|| Change {
                name: n.name.clone(),
                before,
                after,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use router::NodeId;

    fn specs(n: usize) -> Vec<NodeSpec> {
        (0..n)
            .map(|i| NodeSpec {
                id: NodeId(i),
                name: format!("pg{i}"),
                host: "127.0.0.1".into(),
                port: 5432 + i as u16,
            })
            .collect()
    }

    const P: Observation = Some(Role::Primary);
    const R: Observation = Some(Role::Replica);
    const DOWN: Observation = None;

    #[test]
    fn next_snapshot_table() {
        let nodes = specs(3);
        let prev = build(&nodes, &[P, R, R], 7, Epoch(2));
        // (observations, expected (version, [(role, up)]) or None = unchanged)
        type Want = Option<(u64, [(Role, bool); 3])>;
        let cases: &[(&[Observation], Want)] = &[
            (&[P, R, R], None),
            (
                &[P, R, DOWN],
                Some((
                    8,
                    [
                        (Role::Primary, true),
                        (Role::Replica, true),
                        (Role::Unknown, false),
                    ],
                )),
            ),
            (
                &[DOWN, P, R],
                Some((
                    8,
                    [
                        (Role::Unknown, false),
                        (Role::Primary, true),
                        (Role::Replica, true),
                    ],
                )),
            ),
            (
                &[R, R, R],
                Some((
                    8,
                    [
                        (Role::Replica, true),
                        (Role::Replica, true),
                        (Role::Replica, true),
                    ],
                )),
            ),
            // Fewer observations than nodes: the unobserved node is treated as failed.
            (
                &[P, R],
                Some((
                    8,
                    [
                        (Role::Primary, true),
                        (Role::Replica, true),
                        (Role::Unknown, false),
                    ],
                )),
            ),
        ];
        for (obs, want) in cases {
            let got = next(&prev, &nodes, obs);
            let got = got.map(|t| {
                assert_eq!(t.epoch, Epoch(2), "epoch is kept");
                let roles: Vec<_> = t.nodes.iter().map(|n| (n.role, n.up)).collect();
                (t.version, roles)
            });
            assert_eq!(got, want.map(|(v, r)| (v, r.to_vec())), "{obs:?}");
        }
    }

    #[test]
    fn first_snapshot_from_empty_is_a_change() {
        let nodes = specs(1);
        let t = next(&Topology::default(), &nodes, &[P]).unwrap();
        assert_eq!(t.version, 1);
        assert_eq!(t.nodes[0].addr, "127.0.0.1:5432");
        assert_eq!(t.primary().map(|n| n.id), Some(NodeId(0)));
    }

    #[test]
    fn changes_lists_only_differences() {
        let nodes = specs(3);
        let a = build(&nodes, &[P, R, R], 1, Epoch(0));
        let b = build(&nodes, &[DOWN, P, R], 2, Epoch(0));
        let got: Vec<_> = changes(&a, &b)
            .into_iter()
            .map(|c| (c.name, c.before, c.after))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "pg0".to_string(),
                    Some((Role::Primary, true)),
                    (Role::Unknown, false)
                ),
                (
                    "pg1".to_string(),
                    Some((Role::Replica, true)),
                    (Role::Primary, true)
                ),
            ]
        );
        assert!(changes(&a, &a).is_empty());
        assert_eq!(changes(&Topology::default(), &a).len(), 3);
    }
}
