//! The controller as scenarios (kill, partition, manual mode, synchronous quorum, rogue
//! primary, switchover, divergence) and as properties over random histories.

use super::*;
use crate::probe::{Sample, StandbyReport};
use crate::topology::NodeView;
use proptest::prelude::*;
use router::{NodeState, NodeStatus, Role, Topology};
use std::time::{Duration, Instant};

const I: Duration = Duration::from_millis(250);

#[derive(Clone, Copy, Debug)]
struct N {
    role: Role,
    alive: bool,
    streaming: bool,
    lsn: u64,
    timeline: u32,
    read_only: bool,
}

fn primary(lsn: u64) -> N {
    N {
        role: Role::Primary,
        alive: true,
        streaming: false,
        lsn,
        timeline: 1,
        read_only: false,
    }
}

fn replica(lsn: u64, streaming: bool) -> N {
    N {
        role: Role::Replica,
        streaming,
        ..primary(lsn)
    }
}

fn dead() -> N {
    N {
        alive: false,
        ..primary(0)
    }
}

struct World {
    ctl: Controller,
    now: Instant,
    last: Vec<NodeView>,
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("pg{i}")).collect()
}

impl World {
    fn new(n: usize, mode: Mode, persisted: Authority) -> World {
        let settings = FailoverSettings {
            mode,
            ..FailoverSettings::default()
        };
        let t0 = Instant::now();
        World {
            ctl: Controller::new(settings, names(n), persisted),
            now: t0,
            last: vec![NodeView::default(); n],
        }
    }

    fn sample(n: &N) -> Sample {
        Sample {
            timeline: Some(n.timeline),
            current: (n.role == Role::Primary).then_some(Lsn(n.lsn)),
            receive: (n.role == Role::Replica).then_some(Lsn(n.lsn)),
            replay: (n.role == Role::Replica).then_some(Lsn(n.lsn)),
            wal_receiver: n.streaming.then(|| "streaming".to_string()),
            read_only: n.read_only,
            ..Sample::of_role(n.role)
        }
    }

    /// One heartbeat round `after` the previous one.
    fn beat(&mut self, after: Duration, nodes: &[N]) -> Vec<Action> {
        self.now += after;
        let views = nodes
            .iter()
            .zip(&self.last)
            .map(|(n, prev)| {
                if n.alive {
                    NodeView {
                        failures: 0,
                        last_ok: Some(self.now),
                        sample: Some(Self::sample(n)),
                    }
                } else {
                    NodeView {
                        failures: prev.failures + 1,
                        ..prev.clone()
                    }
                }
            })
            .collect::<Vec<_>>();
        self.last = views.clone();
        self.ctl.step(self.now, Input::Health(views))
    }

    fn input(&mut self, input: Input) -> Vec<Action> {
        self.ctl.step(self.now, input)
    }

    /// The snapshot the monitor would publish.
    fn topology(&self) -> Topology {
        let mut t = Topology {
            nodes: self
                .last
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let base = NodeStatus::unknown(NodeId(i), format!("pg{i}"), "a");
                    match v.alive().then_some(v.sample.as_ref()).flatten() {
                        Some(s) => NodeStatus {
                            role: s.role,
                            up: true,
                            state: NodeState::Up,
                            ..base
                        },
                        None => base,
                    }
                })
                .collect(),
            ..Topology::default()
        };
        self.ctl.overlay(&mut t);
        t
    }

    /// Adopts pg0 as primary with two streaming replicas.
    fn steady(n: usize) -> World {
        let mut w = World::new(n, Mode::Automatic, Authority::default());
        let mut nodes = vec![replica(100, true); n];
        nodes[0] = primary(100);
        let acts = w.beat(I, &nodes);
        assert!(matches!(&acts[..], [Action::Persist(a)] if a.epoch == Epoch(1)));
        w
    }
}

fn promoted(acts: &[Action]) -> Option<NodeId> {
    acts.iter().find_map(|a| match a {
        Action::Promote { node } => Some(*node),
        _ => None,
    })
}

#[test]
fn a_killed_primary_is_replaced_by_the_most_advanced_replica() {
    let mut w = World::steady(3);
    // Silent, but not yet for missed_heartbeats intervals: nothing.
    let gone = [dead(), replica(90, false), replica(95, false)];
    for _ in 0..3 {
        assert_eq!(w.beat(I, &gone), vec![]);
    }
    // Suspected now, and the replicas (heard from at the same time) have lost it too.
    let acts = w.beat(I, &gone);
    assert!(
        matches!(&acts[0], Action::Persist(a) if a.epoch == Epoch(2) && a.primary.as_deref() == Some("pg2"))
    );
    assert_eq!(acts[1], Action::Promote { node: NodeId(2) });
    assert!(acts.contains(&Action::FenceCommand {
        node: NodeId(0),
        epoch: Epoch(2)
    }));
    assert_eq!(w.topology().primary(), None, "writes wait during promotion");
    let fork = Lsn(95);
    let acts = w.input(Input::Promoted {
        node: NodeId(2),
        result: Ok(Promotion {
            timeline: Some(2),
            fork: Some(fork),
        }),
    });
    assert!(acts.contains(&Action::Repoint {
        node: NodeId(1),
        primary: NodeId(2)
    }));
    // Routed to at once, before its own heartbeat says it is a primary.
    let t = w.topology();
    assert_eq!(t.primary().map(|p| p.id), Some(NodeId(2)));
    assert_eq!(t.epoch, Epoch(2));
    assert_eq!(t.nodes[0].state, NodeState::Fenced);
    assert!(w.ctl.last_failover().unwrap().took >= 2 * I);
}

#[test]
fn replicas_not_heard_from_since_the_suspicion_hold_the_decision() {
    let mut w = World::steady(2);
    w.beat(I, &[dead(), replica(90, false)]);
    // The replica stops answering too, just before the primary is suspected.
    w.beat(I, &[dead(), replica(90, false)]);
    w.beat(I, &[dead(), dead()]);
    let mut acts = w.beat(I, &[dead(), dead()]);
    assert_eq!(promoted(&acts), None);
    assert!(w.ctl.hold().unwrap().contains("no replica answers"));
    acts.extend(w.beat(I, &[dead(), replica(90, false)]));
    assert_eq!(promoted(&acts), Some(NodeId(1)));
}

#[test]
fn a_pgrelay_cut_off_from_a_live_primary_never_promotes() {
    let mut w = World::steady(3);
    let cut = [dead(), replica(100, true), replica(100, true)];
    for _ in 0..20 {
        let acts = w.beat(I, &cut);
        assert_eq!(promoted(&acts), None);
    }
    let hold = w.ctl.hold().unwrap();
    assert!(hold.contains("still streams"), "{hold}");
    assert_eq!(w.topology().primary(), None);
    // The link comes back: writes resume, same epoch.
    w.beat(I, &[primary(100), replica(100, true), replica(100, true)]);
    assert_eq!(w.ctl.hold(), None);
    assert_eq!(w.topology().primary().map(|p| p.id), Some(NodeId(0)));
    assert_eq!(w.ctl.epoch(), Epoch(1));
}

#[test]
fn manual_mode_reports_and_promotes_only_when_asked() {
    let mut w = World::new(2, Mode::Manual, Authority::default());
    w.beat(I, &[primary(10), replica(10, true)]);
    let gone = [dead(), replica(10, false)];
    for _ in 0..10 {
        assert_eq!(promoted(&w.beat(I, &gone)), None);
    }
    assert!(w.ctl.hold().unwrap().contains("manual"));
    let acts = w.input(Input::Command {
        id: 7,
        command: Command::Failover {
            to: None,
            force: false,
        },
    });
    assert_eq!(promoted(&acts), Some(NodeId(1)));
    let acts = w.input(Input::Promoted {
        node: NodeId(1),
        result: Ok(Promotion {
            timeline: Some(2),
            fork: None,
        }),
    });
    assert!(acts.iter().any(|a| matches!(
        a,
        Action::Reply {
            id: 7,
            reply: Ok(_)
        }
    )));
}

fn quorum_primary(lsn: u64) -> Sample {
    let standby = |name: &str| StandbyReport {
        application_name: name.into(),
        replay: None,
        replay_lag: None,
        sync_state: Some("quorum".into()),
        flush: None,
    };
    Sample {
        current: Some(Lsn(lsn)),
        sync_names: "ANY 1 (*)".into(),
        standbys: vec![standby("pg1"), standby("pg2")],
        ..Sample::of_role(Role::Primary)
    }
}

/// Replicas seen, the last primary sample, force, wanted: chosen node or refusal text.
type Case<'a> = (
    &'a [Option<N>; 3],
    &'a Sample,
    bool,
    Option<usize>,
    Result<usize, &'static str>,
);

#[test]
fn candidates_under_synchronous_replication_and_lag_limits() {
    let v = |n: Option<N>| match n {
        Some(n) => NodeView {
            failures: 0,
            last_ok: None,
            sample: Some(World::sample(&n)),
        },
        None => NodeView {
            failures: 3,
            ..NodeView::default()
        },
    };
    let names = names(3);
    let q = quorum_primary(100);
    let async_primary = Sample {
        current: Some(Lsn(100 + (64 << 20))),
        ..Sample::of_role(Role::Primary)
    };
    let both = [None, Some(replica(90, false)), Some(replica(99, false))];
    let one = [None, Some(replica(90, false)), None];
    // (views, last primary sample, force, wanted) -> chosen or refused
    let cases: Vec<Case> = vec![
        (&both, &q, false, None, Ok(2)),
        // ANY 1 of 2: the one heard from may not have the last acknowledged commit.
        (&one, &q, false, None, Err("heard from 1 of the 2")),
        (&one, &q, true, None, Ok(1)),
        (&both, &q, false, Some(1), Err("behind pg2")),
        (&both, &q, true, Some(1), Ok(1)),
        (
            &both,
            &async_primary,
            false,
            None,
            Err("bytes behind the last known"),
        ),
        (&both, &async_primary, true, None, Ok(2)),
    ];
    for (views, last, force, wanted, want) in cases {
        let views: Vec<NodeView> = views.iter().map(|n| v(*n)).collect();
        let got = choose_candidate(&Ask {
            views: &views,
            names: &names,
            failed: Some(NodeId(0)),
            excluded: &[false; 3],
            last_primary: Some(last),
            max_lag: 16 << 20,
            wanted: wanted.map(NodeId),
            force,
        });
        match (got, want) {
            (Ok(n), Ok(w)) => assert_eq!(n, NodeId(w)),
            (Err(e), Err(text)) => assert!(e.to_string().contains(text), "{e}"),
            (got, want) => panic!("{got:?}, wanted {want:?}"),
        }
    }
}

#[test]
fn an_old_primary_that_comes_back_is_fenced_until_it_rejoins_as_a_replica() {
    let persisted = Authority {
        epoch: Epoch(4),
        primary: Some("pg1".into()),
        timeline: Some(3),
    };
    let mut w = World::new(2, Mode::Automatic, persisted);
    let new = N {
        timeline: 3,
        ..primary(500)
    };
    let acts = w.beat(I, &[primary(400), new]);
    assert!(acts.contains(&Action::Fence { node: NodeId(0) }));
    assert!(acts.contains(&Action::FenceCommand {
        node: NodeId(0),
        epoch: Epoch(4)
    }));
    let t = w.topology();
    assert_eq!(t.nodes[0].state, NodeState::Fenced);
    assert_eq!(t.primary().map(|p| p.id), Some(NodeId(1)));
    // Fenced once per appearance; read-only now, nothing more to do.
    w.input(Input::Fenced {
        node: NodeId(0),
        result: Ok(()),
    });
    let ro = N {
        read_only: true,
        ..primary(400)
    };
    assert_eq!(w.beat(I, &[ro, new]), vec![]);
    // Down and back: its fence command runs again.
    w.beat(I, &[dead(), new]);
    let acts = w.beat(I, &[ro, new]);
    assert_eq!(
        acts,
        vec![Action::FenceCommand {
            node: NodeId(0),
            epoch: Epoch(4)
        }]
    );
    // Rebuilt as a replica of pg1: routable again.
    let rejoined = N {
        timeline: 3,
        ..replica(500, true)
    };
    w.beat(I, &[rejoined, new]);
    assert_eq!(w.topology().nodes[0].state, NodeState::Up);
}

#[test]
fn switchover_drains_waits_for_the_target_then_promotes_it() {
    let mut w = World::steady(2);
    let acts = w.input(Input::Command {
        id: 1,
        command: Command::Switchover { to: "pg1".into() },
    });
    assert!(matches!(
        acts[..],
        [Action::Drain {
            node: NodeId(0),
            ..
        }]
    ));
    assert_eq!(w.topology().primary(), None, "writes are held");
    w.input(Input::Drained {
        node: NodeId(0),
        result: Ok(Lsn(150)),
    });
    let ro = N {
        read_only: true,
        ..primary(150)
    };
    assert_eq!(promoted(&w.beat(I, &[ro, replica(140, true)])), None);
    let acts = w.beat(I, &[ro, replica(150, true)]);
    assert_eq!(promoted(&acts), Some(NodeId(1)));
    let acts = w.input(Input::Promoted {
        node: NodeId(1),
        result: Ok(Promotion {
            timeline: Some(2),
            fork: Some(Lsn(150)),
        }),
    });
    assert!(acts.iter().any(|a| matches!(
        a,
        Action::Reply {
            id: 1,
            reply: Ok(_)
        }
    )));
    assert_eq!(w.topology().primary().map(|p| p.id), Some(NodeId(1)));
    assert_eq!(w.ctl.epoch(), Epoch(2));
    let new = N {
        timeline: 2,
        ..primary(160)
    };
    w.beat(I, &[ro, new]);
    // An unknown node is refused; the primary itself is done already (idempotent).
    let acts = w.input(Input::Command {
        id: 2,
        command: Command::Switchover { to: "nope".into() },
    });
    assert!(
        matches!(&acts[..], [Action::Reply { reply: Err(e), .. }] if e.to_string().contains("unknown node")),
        "{acts:?}"
    );
    let acts = w.input(Input::Command {
        id: 3,
        command: Command::Switchover { to: "pg1".into() },
    });
    assert!(
        matches!(&acts[..], [Action::Reply { reply: Ok(m), .. }] if m.contains("pg1 is the primary already")),
        "{acts:?}"
    );
    assert_eq!(w.ctl.epoch(), Epoch(2), "nothing moved");
}

#[test]
fn a_replica_with_wal_past_the_fork_is_diverged() {
    let mut w = World::steady(3);
    let gone = [dead(), replica(90, false), dead()];
    let mut acts = Vec::new();
    for _ in 0..6 {
        acts = w.beat(I, &gone);
        if promoted(&acts).is_some() {
            break;
        }
    }
    assert_eq!(promoted(&acts), Some(NodeId(1)));
    w.input(Input::Promoted {
        node: NodeId(1),
        result: Ok(Promotion {
            timeline: Some(2),
            fork: Some(Lsn(90)),
        }),
    });
    let new = N {
        timeline: 2,
        ..primary(120)
    };
    // pg2 was unreachable and had received more than pg1.
    w.beat(I, &[dead(), new, replica(95, false)]);
    assert_eq!(w.topology().nodes[2].state, NodeState::Diverged);
    assert!(w.topology().replicas().all(|r| r.id != NodeId(2)));
}

/// A random history: heartbeat rounds with any roles, and promotion results.
/// Per round: each node's (role, alive, streaming, lsn), and how a promotion ends.
type Round = (Vec<(u8, bool, bool, u8)>, u8);

fn history() -> impl Strategy<Value = Vec<Round>> {
    prop::collection::vec(
        (
            prop::collection::vec((0u8..3, any::<bool>(), any::<bool>(), 0u8..4), 3),
            0u8..4,
        ),
        1..60,
    )
}

proptest! {
    #[test]
    fn epochs_never_fall_one_primary_per_epoch_no_promotion_while_replicas_stream(h in history()) {
        let mut w = World::steady(3);
        let mut epoch = w.ctl.epoch();
        for (round, outcome) in h {
            let nodes: Vec<N> = round
                .iter()
                .map(|&(role, alive, streaming, lsn)| N {
                    role: [Role::Primary, Role::Replica, Role::Replica][role as usize],
                    alive,
                    streaming,
                    lsn: 100 + lsn as u64,
                    timeline: 1,
                    read_only: false,
                })
                .collect();
            let excluded = w.ctl.excluded();
            let before = w.ctl.epoch();
            let acts = w.beat(I, &nodes);
            if let Some(target) = promoted(&acts) {
                if w.ctl.epoch() != before {
                    for (i, n) in nodes.iter().enumerate() {
                        let live_replica = n.alive && n.role == Role::Replica && !excluded[i];
                        prop_assert!(!(live_replica && n.streaming), "promoted {target} while pg{i} streams");
                    }
                }
                let result = if outcome == 0 { Err("no".to_string()) } else {
                    Ok(Promotion { timeline: Some(2), fork: None })
                };
                w.input(Input::Promoted { node: target, result });
            }
            prop_assert!(w.ctl.epoch() >= epoch);
            epoch = w.ctl.epoch();
            let t = w.topology();
            let writable: Vec<NodeId> = t.nodes.iter().filter(|n| n.writable()).map(|n| n.id).collect();
            prop_assert!(writable.len() <= 1 || t.primary().is_none());
            if let Some(p) = t.primary() {
                prop_assert_eq!(Some(p.id), w.ctl.primary());
            }
        }
    }
}

#[test]
fn a_drained_replica_takes_no_reads_and_is_never_promoted() {
    let mut w = World::steady(3);
    let ask = |w: &mut World, command: Command| -> Result<String, String> {
        let acts = w.input(Input::Command { id: 9, command });
        match &acts[..] {
            [Action::Reply { reply, .. }] => reply.clone().map_err(|e| e.to_string()),
            other => panic!("{other:?}"),
        }
    };
    let drain = |n: &str| Command::Drain { node: n.into() };
    let enable = |n: &str| Command::Enable { node: n.into() };
    // Table: command → answer (Ok text or Err text).
    let cases: Vec<(Command, Result<&str, &str>)> = vec![
        (drain("pg2"), Ok("pg2 drained")),
        (drain("pg2"), Ok("drained already")),
        (drain("pg0"), Err("switch over first")),
        (drain("pg9"), Err("unknown node")),
        (enable("pg9"), Err("unknown node")),
        (
            Command::Switchover { to: "pg2".into() },
            Err("it is drained"),
        ),
    ];
    for (command, want) in cases {
        let got = ask(&mut w, command.clone());
        match (&got, want) {
            (Ok(text), Ok(w)) | (Err(text), Err(w)) => {
                assert!(text.contains(w), "{command:?}: {got:?}")
            }
            _ => panic!("{command:?}: {got:?}, want {want:?}"),
        }
    }
    let healthy = [primary(100), replica(100, true), replica(100, true)];
    w.beat(I, &healthy);
    let t = w.topology();
    assert_eq!(t.nodes[2].state, NodeState::Drained);
    assert!(!t.nodes[2].readable_replica());
    assert!(t.nodes[1].readable_replica());
    assert_eq!(w.ctl.drained(), ["pg2"]);
    // The primary dies: pg2 is ahead, but drained, so pg1 is promoted.
    let gone = [dead(), replica(90, false), replica(95, false)];
    let mut promoted_node = None;
    for _ in 0..8 {
        promoted_node = promoted_node.or(promoted(&w.beat(I, &gone)));
    }
    assert_eq!(promoted_node, Some(NodeId(1)));
    assert_eq!(ask(&mut w, enable("pg2")), Ok("pg2 enabled".into()));
    assert_eq!(ask(&mut w, enable("pg2")), Ok("pg2 was not drained".into()));
    assert!(w.ctl.drained().is_empty());
}
