use super::*;
use proptest::prelude::*;
use router::{Class, Lsn, WalBytes};

const I: Duration = Duration::from_millis(250);

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

fn settings() -> Settings {
    Settings {
        interval: I,
        timeout: Duration::from_millis(500),
        bounds: LagBounds {
            time: Some(Duration::from_secs(1)),
            bytes: Some(WalBytes(1_000_000)),
        },
        when_no_replica: NoReplica::Primary,
    }
}

fn primary(lsn: u64) -> Sample {
    Sample {
        current: Some(Lsn(lsn)),
        ..Sample::of_role(Role::Primary)
    }
}

fn replica(replay: u64) -> Sample {
    Sample {
        receive: Some(Lsn(replay)),
        replay: Some(Lsn(replay)),
        wal_receiver: Some("streaming".into()),
        ..Sample::of_role(Role::Replica)
    }
}

struct World {
    t0: Instant,
    tracker: Tracker,
}

impl World {
    fn new(n: usize) -> World {
        let t0 = Instant::now();
        World {
            t0,
            tracker: Tracker::new(specs(n), settings(), Topology::default(), t0),
        }
    }

    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    fn ok(&mut self, node: usize, ms: u64, s: Sample) -> Vec<Action> {
        let at = self.at(ms);
        self.tracker.step(Event::Beat {
            node,
            at,
            outcome: Ok(s),
        })
    }

    fn fail(&mut self, node: usize, ms: u64) -> Vec<Action> {
        let at = self.at(ms);
        self.tracker.step(Event::Beat {
            node,
            at,
            outcome: Err("refused".into()),
        })
    }

    fn tick(&mut self, ms: u64) -> Vec<Action> {
        let at = self.at(ms);
        self.tracker.step(Event::Tick { at })
    }

    fn state(&self, node: usize) -> (Role, NodeState) {
        let n = &self.tracker.topology().nodes[node];
        (n.role, n.state)
    }
}

use NodeState::{Down, Lagging, Suspect, Up};

#[test]
fn first_answers_publish_version_one() {
    let mut w = World::new(2);
    assert_eq!(w.tracker.topology().version, 0);
    let actions = w.ok(0, 0, primary(100));
    assert!(matches!(actions.last(), Some(Action::Publish(t)) if t.version == 1));
    w.ok(1, 1, replica(100));
    let t = w.tracker.topology();
    assert_eq!(t.version, 2);
    assert_eq!(t.primary().map(|n| n.id), Some(NodeId(0)));
    assert_eq!(t.replicas().count(), 1);
    assert_eq!(t.nodes[1].lag, Some(Lag::default()));
    // Nothing changed: nothing published, the version stays.
    assert!(w.ok(0, 250, primary(100)).is_empty());
    assert!(w.ok(1, 251, replica(100)).is_empty());
    assert!(w.tick(300).is_empty());
    assert_eq!(w.tracker.topology().version, 2);
}

#[test]
fn failure_detection_table() {
    // (event, expected state of node 1 afterwards); beats every 250 ms.
    enum E {
        Ok(u64),
        Fail(u64),
        Tick(u64),
    }
    let cases: &[(&[E], NodeState)] = &[
        (&[E::Ok(0)], Up),
        (&[E::Ok(0), E::Fail(250)], Suspect),
        (&[E::Ok(0), E::Fail(250), E::Fail(500)], Down),
        (&[E::Ok(0), E::Fail(250), E::Ok(500)], Up),
        (&[E::Ok(0), E::Fail(250), E::Fail(500), E::Ok(750)], Up),
        // Silent (a beat never reports): suspect once a beat would have timed out
        // (interval + timeout = 750 ms), down once a second one would have (1,250 ms).
        (&[E::Ok(0), E::Tick(501)], Up),
        (&[E::Ok(0), E::Tick(750)], Up),
        (&[E::Ok(0), E::Tick(751)], Suspect),
        (&[E::Ok(0), E::Tick(1250)], Suspect),
        (&[E::Ok(0), E::Tick(1251)], Down),
        // A slow beat (started at 250 ms, answered after 450 of its 500 ms) is an
        // answer, not a suspicion.
        (&[E::Ok(0), E::Tick(690), E::Ok(700)], Up),
        (&[E::Ok(0), E::Fail(750), E::Tick(1251)], Down),
        (&[E::Fail(0)], Down),
        (&[E::Tick(0)], Down),
    ];
    for (events, want) in cases {
        let mut w = World::new(2);
        w.ok(0, 0, primary(1));
        for e in events.iter() {
            match *e {
                E::Ok(ms) => w.ok(1, ms, replica(1)),
                E::Fail(ms) => w.fail(1, ms),
                E::Tick(ms) => w.tick(ms),
            };
        }
        assert_eq!(w.state(1).1, *want);
        let n = &w.tracker.topology().nodes[1];
        assert_eq!(n.up, *want != Down);
        if *want == Down {
            assert_eq!(n.role, Role::Unknown);
        }
    }
}

#[test]
fn going_down_drops_pooled_connections_once() {
    let mut w = World::new(2);
    w.ok(0, 0, primary(1));
    w.ok(1, 0, replica(1));
    assert!(!w.fail(1, 250).contains(&Action::Down(NodeId(1))));
    let actions = w.fail(1, 500);
    assert!(actions.contains(&Action::Down(NodeId(1))), "{actions:?}");
    assert!(!w.fail(1, 750).contains(&Action::Down(NodeId(1))));
    assert!(!w.fail(1, 1000).contains(&Action::Down(NodeId(1))));
    w.ok(1, 1250, replica(1));
    assert_eq!(w.state(1), (Role::Replica, Up));
}

#[test]
fn a_suspect_primary_still_takes_writes_a_down_one_not() {
    let mut w = World::new(2);
    w.ok(0, 0, primary(1));
    w.ok(1, 0, replica(1));
    w.fail(0, 250);
    let route = router::choose(w.tracker.topology(), Class::Write, 0, |_| 0);
    assert_eq!(route.map(|r| r.node()), Ok(NodeId(0)));
    w.fail(0, 500);
    assert!(router::choose(w.tracker.topology(), Class::Write, 0, |_| 0).is_err());
}

#[test]
fn role_flip_is_followed_at_the_next_beat() {
    let mut w = World::new(2);
    w.ok(0, 0, primary(10));
    w.ok(1, 0, replica(10));
    // Someone promoted node 1 and demoted node 0.
    w.ok(1, 250, primary(10));
    w.ok(0, 250, replica(10));
    assert_eq!(w.state(0), (Role::Replica, Up));
    assert_eq!(w.state(1), (Role::Primary, Up));
    let t = w.tracker.topology();
    assert_eq!(t.primary().map(|n| n.id), Some(NodeId(1)));
    // Between the two beats both claimed the primary role: no writes at all then.
    let mut both = World::new(2);
    both.ok(0, 0, primary(10));
    both.ok(1, 0, replica(10));
    both.ok(1, 250, primary(10));
    assert!(both.tracker.topology().primary().is_none());
}

#[test]
fn lag_leaves_and_returns_with_hysteresis() {
    let mut w = World::new(2);
    w.ok(0, 0, primary(1000));
    w.ok(1, 0, replica(1000));
    // The primary writes continuously from t=250; the replica stops replaying.
    let mut lsn = 1000;
    let mut left = None;
    for step in 1..=12 {
        let ms = step * 250;
        lsn += 100;
        w.ok(0, ms, primary(lsn));
        w.ok(1, ms + 5, replica(1000));
        if left.is_none() && w.state(1).1 == Lagging {
            left = Some(ms);
        }
    }
    // WAL past 1000 exists since t=250: over 1 s at the replica's beat at t=1255.
    assert_eq!(left, Some(1250));
    let lag = w.tracker.topology().nodes[1].lag.unwrap();
    assert_eq!(lag.bytes, WalBytes(1200));
    assert_eq!(lag.time, Duration::from_millis(3005 - 250));
    assert!(router::choose(w.tracker.topology(), Class::Read, 0, |_| 0)
        .unwrap()
        .is_primary());
    // Catching up to within 0.6 s is under the bound but not under half of it: still out.
    let written_at_2500 = 1000 + 10 * 100; // position first seen at t=2500
    w.ok(1, 3100, replica(written_at_2500 - 1));
    assert_eq!(w.state(1).1, Lagging);
    // Replayed everything: 0 s behind, back in.
    w.ok(1, 3200, replica(lsn));
    assert_eq!(w.state(1), (Role::Replica, Up));
    assert_eq!(w.tracker.topology().nodes[1].lag, Some(Lag::default()));
}

#[test]
fn idle_primary_does_not_make_a_caught_up_replica_lag() {
    let mut w = World::new(2);
    w.ok(0, 0, primary(500));
    for s in 0..100u64 {
        let ms = s * 250;
        w.ok(0, ms, primary(500));
        w.ok(
            1,
            ms,
            Sample {
                replay_age: Some(Duration::from_secs(3600) + Duration::from_millis(ms)),
                ..replica(500)
            },
        );
    }
    assert_eq!(w.state(1), (Role::Replica, Up));
    assert_eq!(w.tracker.topology().nodes[1].lag, Some(Lag::default()));
}

#[test]
fn the_primary_report_is_a_second_opinion() {
    let mut w = World::new(2);
    let mut p = primary(2000);
    p.standbys = vec![crate::probe::StandbyReport {
        application_name: "pg1".into(),
        replay: Some(Lsn(1000)),
        replay_lag: Some(Duration::from_secs(5)),
        sync_state: None,
        flush: None,
    }];
    w.ok(0, 0, p);
    w.ok(1, 10, replica(1000));
    let n = &w.tracker.topology().nodes[1];
    assert_eq!(n.state, Lagging);
    assert_eq!(n.lag.unwrap().time, Duration::from_secs(5));
}

#[test]
fn initial_snapshot_seeds_the_tracker() {
    let mut w = World::new(2);
    w.ok(0, 0, primary(7));
    w.ok(1, 0, replica(7));
    let initial = w.tracker.topology().clone();
    let t0 = w.at(0);
    let mut again = Tracker::new(specs(2), settings(), initial.clone(), t0);
    // No beat yet, but none overdue (interval + timeout = 750 ms): nothing changes.
    assert!(again.step(Event::Tick { at: t0 + 3 * I }).is_empty());
    assert_eq!(again.topology(), &initial);
    let quiet = again.step(Event::Tick { at: t0 + 4 * I });
    assert!(!quiet.is_empty());
    assert!(again.topology().replicas().next().is_none());
}

fn any_sample() -> impl Strategy<Value = Option<(bool, u64)>> {
    proptest::option::weighted(0.9, (any::<bool>(), 0u64..5_000_000))
}

proptest! {
    /// Whatever the heartbeats say, a replica over a lag bound is never chosen for a read,
    /// and a node that is not up never for anything.
    #[test]
    fn over_the_bound_is_never_chosen(
        beats in proptest::collection::vec((0usize..3, 1u64..400, any_sample()), 1..60),
        spread in any::<u64>(),
    ) {
        let mut w = World::new(3);
        let mut ms = 0;
        for (node, dt, sample) in beats {
            ms += dt;
            match sample {
                Some((true, lsn)) => w.ok(node, ms, primary(lsn)),
                Some((false, lsn)) => w.ok(node, ms, replica(lsn)),
                None => w.fail(node, ms),
            };
            let t = w.tracker.topology();
            let bounds = w.tracker.settings().bounds;
            for class in [Class::Read, Class::Write] {
                if let Ok(route) = router::choose(t, class, spread, |_| 0) {
                    let n = t.node(route.node()).unwrap();
                    prop_assert!(n.up);
                    if !route.is_primary() {
                        let lag = n.lag.as_ref();
                        prop_assert!(lag.is_none_or(|l| !bounds.exceeded_by(l)), "{n:?}");
                    }
                }
            }
        }
    }
}
