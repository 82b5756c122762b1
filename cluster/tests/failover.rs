//! What failover tests build on, against real PostgreSQL: synchronous
//! replication keyed on node names, a fenced old primary rebuilt as a standby of
//! the new one, and how fast standbys notice a crashed primary.

use std::time::{Duration, Instant};

use cluster::{Cluster, ClusterConfig, ClusterError};

const WAIT: Duration = Duration::from_secs(30);

/// Polls `f` until it returns true or the deadline passes.
fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn sync_cluster(replicas: usize) -> Cluster {
    Cluster::start(ClusterConfig {
        replicas,
        synchronous_standby_names: Some("ANY 1 (*)".into()),
        ..ClusterConfig::default()
    })
    .unwrap()
}

/// Waits until `i`'s streaming walsenders are `want` (`name:sync_state`, by
/// name). A standby counts as async until its first flush reply, and the
/// walsender may report streaming after the receiver does, hence the polling.
fn wait_attached(c: &Cluster, i: usize, want: &str) {
    let sql = "SELECT string_agg(application_name || ':' || sync_state, ',' \
               ORDER BY application_name) \
               FROM pg_stat_replication WHERE state = 'streaming'";
    let deadline = Instant::now() + WAIT;
    loop {
        let got = c.psql(i, sql).unwrap();
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {i}: {got:?}, want {want:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn synchronous_replication_uses_node_names() {
    let c = sync_cluster(1);
    assert_eq!(
        c.psql(0, "SHOW synchronous_standby_names").unwrap(),
        "ANY 1 (*)"
    );
    wait_attached(&c, 0, "pg1:quorum");
    let conninfo = c.psql(1, "SHOW primary_conninfo").unwrap();
    assert!(conninfo.contains("application_name='pg1'"), "{conninfo}");
    assert!(
        conninfo.contains(&format!("port={}", c.port(0))),
        "{conninfo}"
    );
    for i in 0..2 {
        for (setting, want) in [
            ("wal_retrieve_retry_interval", "200ms"),
            ("recovery_target_timeline", "latest"),
            ("hot_standby_feedback", "on"),
            ("synchronous_commit", "on"),
        ] {
            assert_eq!(c.psql(i, &format!("SHOW {setting}")).unwrap(), want, "{i}");
        }
    }
    assert_eq!(c.wait_streaming(1, WAIT).unwrap(), 1);

    // With the only standby down, a commit waits for it; it finishes once the
    // standby is back.
    c.psql(0, "CREATE TABLE s (id int)").unwrap();
    c.stop(1).unwrap();
    std::thread::scope(|s| {
        let insert = s.spawn(|| c.psql(0, "INSERT INTO s VALUES (1)"));
        eventually("the commit to wait for the standby", WAIT, || {
            c.psql(
                0,
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'",
            )
            .unwrap()
                == "1"
        });
        assert!(!insert.is_finished());
        c.start_node(1).unwrap();
        insert.join().unwrap().unwrap();
    });
    assert_eq!(c.psql(1, "SELECT count(*) FROM s").unwrap(), "1");
}

#[test]
fn fenced_old_primary_rejoins_as_standby_of_new_primary() {
    let c = sync_cluster(2);
    let old_ports: Vec<u16> = c.nodes().iter().map(|n| n.port).collect();
    c.psql(0, "CREATE TABLE f (id int); INSERT INTO f VALUES (1)")
        .unwrap();
    c.wait_for_replay(WAIT).unwrap();
    assert_eq!(c.primaries(), [0]);

    // Promote pg1 while pg0 still runs: split brain, until pg0 is rebuilt.
    assert_eq!(c.psql(1, "SELECT pg_promote()").unwrap(), "t");
    assert_eq!(c.primaries(), [0, 1]);
    assert_eq!(c.rebuild_replica(0, 1).unwrap(), 2, "timeline of pg1");
    assert_eq!(c.primaries(), [1]);
    assert_eq!(c.primary_index().unwrap(), 1);
    assert_eq!(c.psql(0, "SELECT pg_is_in_recovery()").unwrap(), "t");
    let conninfo = c.psql(0, "SHOW primary_conninfo").unwrap();
    assert!(conninfo.contains("application_name=pg0"), "{conninfo}");
    assert!(
        conninfo.contains(&format!("port={}", c.port(1))),
        "{conninfo}"
    );
    // pg2 still points at pg0, so only pg0 can satisfy the new primary's
    // synchronous commit.
    wait_attached(&c, 1, "pg0:quorum");
    c.psql(1, "INSERT INTO f VALUES (2)").unwrap();
    c.wait_for_replica(0, WAIT).unwrap();
    assert_eq!(c.psql(0, "SELECT count(*) FROM f").unwrap(), "2");

    // Rebuild the running pg2 from standby pg0 (cascading). pg0's auto.conf
    // names pg0 and pg1; pg2 must still present itself as pg2 to pg0.
    assert_eq!(c.rebuild_replica(2, 0).unwrap(), 2);
    wait_attached(&c, 0, "pg2:async");
    c.psql(1, "INSERT INTO f VALUES (3)").unwrap();
    c.wait_for_replay(WAIT).unwrap();
    assert_eq!(c.psql(2, "SELECT count(*) FROM f").unwrap(), "3");
    let ports: Vec<u16> = c.nodes().iter().map(|n| n.port).collect();
    assert_eq!(ports, old_ports);

    assert!(matches!(
        c.rebuild_replica(1, 1),
        Err(ClusterError::Topology(_))
    ));
    assert!(matches!(
        c.rebuild_replica(0, 9),
        Err(ClusterError::NoSuchNode { .. })
    ));
}

/// Walsender pids on node `i`, for checking they die with their postmaster.
fn walsender_pids(c: &Cluster, i: usize) -> Vec<i32> {
    c.psql(i, "SELECT pid FROM pg_stat_replication")
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}

/// Gone or a zombie (this container's init may not reap orphans).
fn dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let after = stat.rsplit_once(')').map(|(_, r)| r.trim_start());
            matches!(after.and_then(|r| r.chars().next()), Some('Z' | 'X'))
        }
        Err(_) => true,
    }
}

#[test]
fn standbys_stop_streaming_soon_after_primary_crash() {
    let c = Cluster::start(ClusterConfig::default()).unwrap();
    for i in 1..3 {
        assert_eq!(c.wait_streaming(i, WAIT).unwrap(), 1);
    }
    let walsenders = walsender_pids(&c, 0);
    assert_eq!(walsenders.len(), 2);
    let began = Instant::now();
    c.kill(0).unwrap();
    let killed = began.elapsed();
    assert!(
        walsenders.iter().all(|&p| dead(p)),
        "walsenders outlive kill"
    );
    let streaming = "SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming'";
    eventually("standbys to stop streaming", Duration::from_secs(5), || {
        (1..3).all(|i| c.psql(i, streaming).unwrap() == "0")
    });
    let noticed = began.elapsed();
    eprintln!("kill(0) returned after {killed:?}; standbys not streaming after {noticed:?}");
    assert!(!c.is_running(0));
    assert!(c.primaries().is_empty());
}
