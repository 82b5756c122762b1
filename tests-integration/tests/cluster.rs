//! The `cluster` crate against real PostgreSQL: topology, replication, lag,
//! crashes, restarts, parallel clusters and teardown.

use std::time::{Duration, Instant};

use cluster::{accepting, Cluster, ClusterConfig, APP_DB, APP_USER};

const WAIT: Duration = Duration::from_secs(30);

/// Polls `f` until it returns true or the deadline passes.
fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn primary_and_replicas_replicate() {
    let began = Instant::now();
    let c = Cluster::start(ClusterConfig::default()).unwrap();
    eprintln!(
        "cluster 1+2 started in {:?} (measured inside start: {:?})",
        began.elapsed(),
        c.startup_time()
    );
    assert_eq!(c.nodes().len(), 3);
    let names: Vec<_> = c.nodes().iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["pg0", "pg1", "pg2"]);
    for (i, want) in [(0, "f"), (1, "t"), (2, "t")] {
        assert_eq!(
            c.psql(i, "SELECT pg_is_in_recovery()").unwrap(),
            want,
            "node {i}"
        );
        assert_eq!(c.node(i).host, "127.0.0.1");
        assert!(accepting(c.port(i)));
    }
    assert_eq!(c.primary_index().unwrap(), 0);
    c.psql(
        0,
        "CREATE TABLE t (id int primary key, v text); INSERT INTO t VALUES (1, 'one')",
    )
    .unwrap();
    c.wait_for_replay(WAIT).unwrap();
    for i in 1..3 {
        assert_eq!(c.psql(i, "SELECT v FROM t WHERE id = 1").unwrap(), "one");
    }
    // Replicas refuse writes.
    let err = c
        .psql(1, "INSERT INTO t VALUES (2, 'x')")
        .unwrap_err()
        .to_string();
    assert!(err.contains("read-only"), "{err}");
    // The app role and database exist, and the password works over TCP.
    assert_eq!(
        c.psql(
            0,
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'app'"
        )
        .unwrap(),
        APP_USER
    );
    assert_eq!(
        c.psql_db(0, APP_DB, "SELECT current_database()").unwrap(),
        APP_DB
    );
    let info = c.conninfo(0, "app", "secret", "app");
    assert_eq!(
        info,
        format!(
            "host=127.0.0.1 port={} user=app password=secret dbname=app",
            c.port(0)
        )
    );
    assert_eq!(c.superuser(), ("postgres", "postgres"));
}

#[test]
fn apply_delay_makes_a_replica_lag() {
    let cfg = ClusterConfig {
        apply_delay: vec![(1, Duration::from_secs(2))],
        ..ClusterConfig::default()
    };
    let c = Cluster::start(cfg).unwrap();
    c.psql(0, "CREATE TABLE lag (id int)").unwrap();
    c.wait_for_replay(WAIT).unwrap();
    let inserted = Instant::now();
    c.psql(0, "INSERT INTO lag VALUES (1)").unwrap();
    c.wait_for_replica(1, WAIT).unwrap(); // the undelayed replica
    assert_eq!(c.psql(1, "SELECT count(*) FROM lag").unwrap(), "1");
    assert_eq!(
        c.psql(2, "SELECT count(*) FROM lag").unwrap(),
        "0",
        "delayed replica already has the row"
    );
    eventually("delayed replica applies the row", WAIT, || {
        c.psql(2, "SELECT count(*) FROM lag").unwrap() == "1"
    });
    let lag = inserted.elapsed();
    assert!(
        lag >= Duration::from_millis(1500),
        "applied after only {lag:?}"
    );
}

#[test]
fn killed_replica_restarts_and_catches_up() {
    let c = Cluster::start(ClusterConfig {
        replicas: 1,
        ..ClusterConfig::default()
    })
    .unwrap();
    c.psql(0, "CREATE TABLE k (id int)").unwrap();
    c.kill(1).unwrap();
    assert!(!c.is_running(1));
    assert!(!accepting(c.port(1)));
    assert!(c.psql(1, "SELECT 1").is_err());
    assert!(matches!(
        c.kill(1),
        Err(cluster::ClusterError::NotRunning(_))
    ));
    c.psql(0, "INSERT INTO k SELECT generate_series(1, 1000)")
        .unwrap();
    c.start_node(1).unwrap();
    c.wait_for_replay(WAIT).unwrap();
    assert_eq!(c.psql(1, "SELECT count(*) FROM k").unwrap(), "1000");
    assert_eq!(c.psql(1, "SELECT pg_is_in_recovery()").unwrap(), "t");
}

#[test]
fn primary_stops_and_starts_again() {
    let c = Cluster::start(ClusterConfig {
        replicas: 1,
        ..ClusterConfig::default()
    })
    .unwrap();
    let port = c.port(0);
    c.stop(0).unwrap();
    assert!(!accepting(port));
    assert!(c.primary_index().is_err());
    c.start_node(0).unwrap();
    assert_eq!(c.port(0), port);
    c.psql(
        0,
        "CREATE TABLE after_restart (id int); INSERT INTO after_restart VALUES (7)",
    )
    .unwrap();
    c.wait_for_replay(WAIT).unwrap();
    assert_eq!(c.psql(1, "SELECT id FROM after_restart").unwrap(), "7");
    // A crashed primary restarts too (crash recovery).
    c.kill(0).unwrap();
    c.start_node(0).unwrap();
    assert_eq!(
        c.psql(0, "SELECT count(*) FROM after_restart").unwrap(),
        "1"
    );
}

#[test]
fn parallel_clusters_get_distinct_ports() {
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| {
            Cluster::start(ClusterConfig {
                replicas: 1,
                ..ClusterConfig::default()
            })
        });
        let b = s.spawn(|| {
            Cluster::start(ClusterConfig {
                replicas: 1,
                ..ClusterConfig::default()
            })
        });
        (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
    });
    let mut ports: Vec<u16> = a.nodes().iter().chain(b.nodes()).map(|n| n.port).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 4);
    assert_ne!(a.root_dir(), b.root_dir());
    a.psql(0, "CREATE TABLE only_in_a (id int)").unwrap();
    assert!(b.psql(0, "SELECT * FROM only_in_a").is_err());
}

#[test]
fn drop_stops_servers_and_removes_dirs() {
    let c = Cluster::start(ClusterConfig {
        replicas: 1,
        ..ClusterConfig::default()
    })
    .unwrap();
    let ports: Vec<u16> = c.nodes().iter().map(|n| n.port).collect();
    let root = c.root_dir().to_path_buf();
    c.kill(1).unwrap(); // a mix of running and dead nodes
    assert!(root.exists());
    drop(c);
    assert!(!root.exists(), "{} left behind", root.display());
    for p in ports {
        assert!(!accepting(p), "port {p} still accepting");
    }
}

#[test]
fn drop_during_panic_cleans_up() {
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let c = Cluster::start(ClusterConfig {
            replicas: 0,
            ..ClusterConfig::default()
        })
        .unwrap();
        tx.send((c.port(0), c.root_dir().to_path_buf())).unwrap();
        panic!("test failure inside a cluster test");
    })
    .join();
    assert!(result.is_err());
    let (port, root) = rx.recv().unwrap();
    assert!(!root.exists());
    assert!(!accepting(port));
}

#[test]
fn extra_conf_applies_to_all_nodes() {
    let cfg = ClusterConfig {
        replicas: 1,
        extra_conf: vec!["work_mem = '7MB'".into()],
        ..ClusterConfig::default()
    };
    let c = Cluster::start(cfg).unwrap();
    for i in 0..2 {
        assert_eq!(c.psql(i, "SHOW work_mem").unwrap(), "7MB");
    }
    let err = c
        .psql(0, "SELECT * FROM no_such_table")
        .unwrap_err()
        .to_string();
    assert!(err.contains("no_such_table"), "{err}");
}
