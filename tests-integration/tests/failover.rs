//! Failover and fencing on a real 1+2 cluster: kill -9 the primary under 8 writing
//! sessions, synchronous replication losing nothing, the old primary fenced when it
//! returns, a restarted pgrelay keeping the epoch, and a planned switchover under load.

use cluster::{Cluster, ClusterConfig};
use health::failover::Command;
use pgrelay::app::Handle;
use router::{Epoch, NodeState, Role};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tests_integration::{connect, eventually, start_proxy};

const WRITERS: i32 = 8;

async fn cluster(cfg: ClusterConfig) -> Cluster {
    tokio::task::spawn_blocking(move || Cluster::start(cfg))
        .await
        .expect("cluster task")
        .expect("cluster starts")
}

fn direct_info(c: &Cluster, i: usize) -> String {
    c.conninfo(i, cluster::APP_USER, cluster::APP_PASSWORD, cluster::APP_DB)
}

fn proxy_info(p: &Handle) -> String {
    format!(
        "host=127.0.0.1 port={} user={} password={} dbname={}",
        p.addr.port(),
        cluster::APP_USER,
        cluster::APP_PASSWORD,
        cluster::APP_DB
    )
}

struct Files {
    state: PathBuf,
    fenced: PathBuf,
}

fn files(c: &Cluster) -> Files {
    Files {
        state: c.root_dir().join("pgrelay-state.json"),
        fenced: c.root_dir().join("fenced.log"),
    }
}

async fn proxy(c: &Cluster, f: &Files) -> Handle {
    let (state, fenced) = (f.state.clone(), f.fenced.display().to_string());
    start_proxy(c, move |cfg| {
        cfg.failover.state_file = Some(state);
        cfg.failover.fence_command = Some(format!("echo \"$1 $2 $3 $4\" >> '{fenced}'"));
        cfg.failover.write_wait = Duration::from_secs(15);
    })
    .await
}

/// A primary and two replicas shaped by `cfg`, and pgrelay in front with failover state
/// and a fence command that logs to files in the cluster's directory.
async fn one_plus_two(cfg: ClusterConfig) -> (Cluster, Files, Handle) {
    let c = cluster(ClusterConfig { replicas: 2, ..cfg }).await;
    let f = files(&c);
    let p = proxy(&c, &f).await;
    (c, f, p)
}

/// What one writer saw: per write, when it was sent and acknowledged, or its error.
type Log = Vec<(i32, Instant, Result<Instant, String>)>;

/// `WRITERS` sessions inserting `(writer, seq)` rows one at a time until `stop`;
/// `acks` counts acknowledged writes.
fn writers(
    info: &str,
    stop: &Arc<AtomicBool>,
    acks: &Arc<AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<Log>> {
    (0..WRITERS)
        .map(|w| {
            let (info, stop, acks) = (info.to_string(), stop.clone(), acks.clone());
            tokio::spawn(async move {
                let c = connect(&info).await;
                let mut log = Log::new();
                let mut seq = 0;
                while !stop.load(Ordering::Relaxed) {
                    seq += 1;
                    let sent = Instant::now();
                    let r = c
                        .execute("INSERT INTO t (writer, seq) VALUES ($1, $2)", &[&w, &seq])
                        .await;
                    if r.is_ok() {
                        acks.fetch_add(1, Ordering::Relaxed);
                    }
                    log.push((
                        seq,
                        sent,
                        r.map(|_| Instant::now()).map_err(|e| e.to_string()),
                    ));
                }
                log
            })
        })
        .collect()
}

async fn collect(tasks: Vec<tokio::task::JoinHandle<Log>>) -> Vec<Log> {
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("writer"));
    }
    out
}

/// The epoch and primary pgrelay publishes.
fn primary_of(p: &Handle) -> (Epoch, Option<usize>) {
    let t = p.shared.topology.load();
    (t.epoch, t.primary().map(|n| n.id.0))
}

async fn setup_table(info: &str) {
    let c = connect(info).await;
    c.batch_execute("CREATE TABLE t (writer int, seq int, PRIMARY KEY (writer, seq))")
        .await
        .expect("create");
}

async fn acked_rows_missing(info: &str, logs: &[Log]) -> usize {
    let c = connect(info).await;
    let mut missing = 0;
    for (w, log) in logs.iter().enumerate() {
        let rows = c
            .query("SELECT seq FROM t WHERE writer = $1", &[&(w as i32)])
            .await
            .expect("rows");
        let have: std::collections::HashSet<i32> = rows.iter().map(|r| r.get(0)).collect();
        missing += log
            .iter()
            .filter(|(seq, _, r)| r.is_ok() && !have.contains(seq))
            .count();
    }
    missing
}

/// Kill -9 the primary while 8 sessions write; returns the time from the kill to the
/// first acknowledged write sent after it, and the logs.
async fn kill_under_writes(c: &Cluster, p: &Handle) -> (Duration, Vec<Log>, usize) {
    let info = proxy_info(p);
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(AtomicUsize::new(0));
    let tasks = writers(&info, &stop, &acks);
    let flowing = || async { (acks.load(Ordering::Relaxed) > 50).then_some(()) };
    eventually(Duration::from_secs(10), "writes flowing", flowing).await;
    // Backends of a killed postmaster may still answer for the few ms until they all
    // exit: only writes sent after that count, timed from the kill itself.
    let killed = Instant::now();
    tokio::task::block_in_place(|| c.kill(0)).expect("kill primary");
    let gone = Instant::now();
    let (_, new) = eventually(Duration::from_secs(20), "a new primary", || async {
        let (e, p) = primary_of(p);
        (e > Epoch(1) && p.is_some()).then_some((e, p.unwrap_or(0)))
    })
    .await;
    // Every session gets some writes through on the new primary.
    let at_promotion = acks.load(Ordering::Relaxed);
    let more = || async {
        (acks.load(Ordering::Relaxed) > at_promotion + 10 * WRITERS as usize).then_some(())
    };
    eventually(Duration::from_secs(30), "writes on the new primary", more).await;
    stop.store(true, Ordering::Relaxed);
    let logs = collect(tasks).await;
    let first = logs
        .iter()
        .flatten()
        .filter(|(_, sent, r)| *sent > gone && r.is_ok())
        .filter_map(|(_, _, r)| r.as_ref().ok().copied())
        .min()
        .expect("a write acknowledged after the kill");
    (first - killed, logs, new)
}

fn errors(logs: &[Log]) -> Vec<String> {
    logs.iter()
        .flatten()
        .filter_map(|(_, _, r)| r.as_ref().err().cloned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_is_replaced_fenced_when_back_and_remembered_after_restart() {
    let (c, f, p) = one_plus_two(ClusterConfig::default()).await;
    setup_table(&proxy_info(&p)).await;
    assert_eq!(primary_of(&p), (Epoch(1), Some(0)));
    // An idle session with a prepared statement and a setting, made on the old primary.
    let idle = connect(&proxy_info(&p)).await;
    let insert = idle
        .prepare("INSERT INTO t (writer, seq) VALUES (101, $1)")
        .await
        .expect("prepare");
    idle.batch_execute("SET statement_timeout = '12s'")
        .await
        .expect("set");
    idle.execute(&insert, &[&0]).await.expect("insert");

    let (took, logs, new) = kill_under_writes(&c, &p).await;
    let errs = errors(&logs);
    let acked: usize = logs.iter().flatten().filter(|x| x.2.is_ok()).count();
    eprintln!(
        "failover: first acknowledged write {took:?} after kill -9; {acked} writes acked, {} failed: {:?}",
        errs.len(),
        errs.iter().take(3).collect::<Vec<_>>()
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    // Only writes in flight at the kill may fail: at most one per session.
    assert!(errs.len() <= WRITERS as usize, "{errs:?}");

    // The other replica follows the new primary on its new timeline.
    let other = 3 - new;
    let tli = tokio::task::block_in_place(|| c.wait_streaming(other, Duration::from_secs(30)))
        .expect("the other replica streams");
    assert!(tli >= 2, "pg{other} streams on timeline {tli}");
    let follower = connect(&direct_info(&c, other)).await;

    // The idle session noticed nothing: its statement and setting work on the new primary.
    idle.execute(&insert, &[&1])
        .await
        .expect("prepared statement after failover");
    let timeout: String = idle
        .query_one("SHOW statement_timeout", &[])
        .await
        .expect("show")
        .get(0);
    assert_eq!(timeout, "12s");

    // Reads after the failover see the session's own writes.
    let s = connect(&proxy_info(&p)).await;
    for i in 0..50 {
        s.execute("INSERT INTO t (writer, seq) VALUES (100, $1)", &[&i])
            .await
            .expect("write after failover");
        let n: i64 = s
            .query_one("SELECT count(*) FROM t WHERE writer = 100", &[])
            .await
            .expect("read")
            .get(0);
        assert_eq!(n, i as i64 + 1, "stale read after failover");
    }

    // The old primary comes back as a primary: fenced, read-only, never used.
    tokio::task::block_in_place(|| c.start_node(0)).expect("restart old primary");
    // (pgrelay ends every client session on a fenced node: ask on a new one each time.)
    eventually(Duration::from_secs(20), "old primary read-only", || async {
        let out = c.psql(0, "SHOW default_transaction_read_only").ok()?;
        (out.trim() == "on").then_some(())
    })
    .await;
    let t = p.shared.topology.load();
    assert_eq!(t.nodes[0].state, NodeState::Fenced);
    assert_eq!(t.primary().map(|n| n.id.0), Some(new));
    let fenced = std::fs::read_to_string(&f.fenced).unwrap_or_default();
    assert!(fenced.lines().any(|l| l.starts_with("pg0 ")), "{fenced}");
    let old = connect(&direct_info(&c, 0)).await;
    for i in 0..20 {
        s.execute("INSERT INTO t (writer, seq) VALUES (200, $1)", &[&i])
            .await
            .expect("write with the old primary back");
    }
    let on_old: i64 = old
        .query_one("SELECT count(*) FROM t WHERE writer = 200", &[])
        .await
        .expect("count on old")
        .get(0);
    assert_eq!(on_old, 0, "statements reached the fenced old primary");
    drop((s, follower, old));

    // A restarted pgrelay keeps the primary and the epoch, and pg0 stays fenced.
    let before = primary_of(&p);
    p.shutdown().await.expect("shutdown");
    let p = proxy(&c, &f).await;
    assert_eq!(primary_of(&p), before);
    assert_eq!(
        p.shared.topology.load().nodes[0].state,
        NodeState::Fenced,
        "fenced from the first snapshot"
    );
    let s = connect(&proxy_info(&p)).await;
    s.execute("INSERT INTO t (writer, seq) VALUES (300, 1)", &[])
        .await
        .expect("write after restart");
    p.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synchronous_replication_loses_no_acknowledged_write() {
    let sync = ClusterConfig {
        synchronous_standby_names: Some("ANY 1 (*)".into()),
        ..Default::default()
    };
    let (c, _files, p) = one_plus_two(sync).await;
    setup_table(&proxy_info(&p)).await;
    // Every standby must be seen as a quorum member before the kill.
    eventually(Duration::from_secs(10), "quorum standbys", || async {
        let n = c
            .psql(
                0,
                "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'quorum'",
            )
            .ok()?;
        (n.trim() == "2").then_some(())
    })
    .await;
    // ...and a heartbeat of the primary must have seen them so.
    let beats = p.heartbeats.beats(router::NodeId(0));
    let seen = || async { (p.heartbeats.beats(router::NodeId(0)) > beats + 1).then_some(()) };
    eventually(Duration::from_secs(10), "a heartbeat after that", seen).await;
    let (took, logs, new) = kill_under_writes(&c, &p).await;
    let acked: usize = logs.iter().flatten().filter(|x| x.2.is_ok()).count();
    let missing = acked_rows_missing(&direct_info(&c, new), &logs).await;
    eprintln!("synchronous failover: {acked} acknowledged writes, {missing} missing on the new primary; first write {took:?} after the kill");
    assert_eq!(missing, 0);
    p.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_under_load_loses_nothing_and_fails_no_autocommit_write() {
    let (c, f, p) = one_plus_two(ClusterConfig::default()).await;
    let info = proxy_info(&p);
    setup_table(&info).await;
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(AtomicUsize::new(0));
    let tasks = writers(&info, &stop, &acks);
    let flowing = || async { (acks.load(Ordering::Relaxed) > 50).then_some(()) };
    eventually(Duration::from_secs(10), "writes flowing", flowing).await;
    let asked = Instant::now();
    let reply = p
        .failover
        .request(Command::Switchover { to: "pg1".into() })
        .await;
    let took = asked.elapsed();
    assert!(reply.is_ok(), "{reply:?}");
    assert_eq!(primary_of(&p), (Epoch(2), Some(1)));
    let after = acks.load(Ordering::Relaxed);
    let more = || async { (acks.load(Ordering::Relaxed) > after + 100).then_some(()) };
    eventually(Duration::from_secs(20), "writes on the new primary", more).await;
    stop.store(true, Ordering::Relaxed);
    let logs = collect(tasks).await;
    let errs = errors(&logs);
    // The longest gap between two acknowledged writes of one session: the write pause.
    let pause = logs
        .iter()
        .map(|log| {
            let acks: Vec<Instant> = log
                .iter()
                .filter_map(|x| x.2.as_ref().ok().copied())
                .collect();
            acks.windows(2)
                .map(|w| w[1] - w[0])
                .max()
                .unwrap_or_default()
        })
        .max()
        .unwrap_or_default();
    let acked: usize = logs.iter().flatten().filter(|x| x.2.is_ok()).count();
    let missing = acked_rows_missing(&direct_info(&c, 1), &logs).await;
    eprintln!(
        "switchover: answered in {took:?}; write pause {pause:?}; {acked} writes, {} errors, {missing} missing",
        errs.len()
    );
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(missing, 0);
    let t = p.shared.topology.load();
    assert_eq!(t.nodes[0].state, NodeState::Fenced);
    assert_eq!(t.nodes[1].role, Role::Primary);
    // The old primary's fence command (the demotion hook) ran.
    eventually(Duration::from_secs(10), "fence command for pg0", || async {
        let log = std::fs::read_to_string(&f.fenced).ok()?;
        log.lines().any(|l| l.starts_with("pg0 ")).then_some(())
    })
    .await;
    p.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pgrelay_cut_off_from_a_live_primary_holds_writes_and_never_promotes() {
    let c = cluster(ClusterConfig {
        replicas: 2,
        ..Default::default()
    })
    .await;
    let f = files(&c);
    // pgrelay reaches pg0 only through the relay; the replicas stream from it directly.
    let relay = tests_integration::relay::Relay::start(c.port(0));
    let (state, port) = (f.state.clone(), relay.port());
    let p = start_proxy(&c, move |cfg| {
        cfg.nodes[0].port = port;
        cfg.failover.state_file = Some(state);
        cfg.failover.write_wait = Duration::from_secs(2);
    })
    .await;
    let info = proxy_info(&p);
    setup_table(&info).await;
    let s = connect(&info).await;
    s.execute("INSERT INTO t VALUES (1, 1)", &[])
        .await
        .expect("write");

    relay.cut();
    let held = eventually(Duration::from_secs(20), "writes held", || async {
        let t = p.shared.topology.load();
        t.writes_held
            .clone()
            .filter(|h| h.contains("still streams"))
    })
    .await;
    // Observed for a while (a check of absence, not a wait): never a promotion.
    let err = s
        .execute("INSERT INTO t VALUES (1, 2)", &[])
        .await
        .expect_err("no primary while cut off");
    let db = err.as_db_error().expect("an ErrorResponse");
    eprintln!(
        "partition: {held}; a write got {}: {}",
        db.code().code(),
        db.message()
    );
    assert_eq!(db.code().code(), "57P03");
    assert!(db.message().contains("still streams"), "{}", db.message());
    for _ in 0..20 {
        assert_eq!(
            primary_of(&p).0,
            Epoch(1),
            "promoted while the primary lives"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(tokio::task::block_in_place(|| c.primaries()), vec![0]);
    // A read still works: replicas serve it.
    let n: i64 = s
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .expect("read during the cut")
        .get(0);
    assert!(n >= 1);

    relay.restore();
    eventually(Duration::from_secs(20), "writes resume", || async {
        s.execute("INSERT INTO t VALUES (1, 3)", &[]).await.ok()
    })
    .await;
    assert_eq!(primary_of(&p), (Epoch(1), Some(0)));
    assert!(!f.fenced.exists(), "nothing was fenced");
    p.shutdown().await.expect("shutdown");
}
