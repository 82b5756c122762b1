//! Heartbeats, lag and lag-aware routing on a real cluster: a replica with a 3 s apply
//! delay leaves read routing soon after its lag passes the 1 s bound and returns once it
//! has caught up; a killed replica leaves routing without a client error and returns
//! when restarted; the heartbeat's own cost is measured and printed.

use cluster::ClusterConfig;
use pgrelay::router::{NodeId, NodeState};
use std::time::{Duration, Instant};
use tests_integration::{eventually, start_with, Env};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BOUND: Duration = Duration::from_secs(1);
const INTERVAL: Duration = Duration::from_millis(250);

async fn port(c: &tokio_postgres::Client) -> Result<u16, tokio_postgres::Error> {
    let msgs = c.simple_query("SELECT inet_server_port()").await?;
    Ok(msgs
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).and_then(|p| p.parse().ok()),
            _ => None,
        })
        .expect("a port"))
}

fn state(env: &Env, node: usize) -> NodeState {
    env.proxy.shared.topology.load().nodes[node].state
}

/// GET a path of the admin API; returns the body.
async fn admin_get(env: &Env, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(env.proxy.admin_addr)
        .await
        .expect("admin connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: pgrelay\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("admin write");
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.expect("admin read");
    let (head, body) = resp.split_once("\r\n\r\n").expect("http response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// Level `eventual`: these tests watch lag-based routing, where one session's reads
/// spread over every eligible replica (at `session` it stays on one while it can).
fn tweak(c: &mut pgrelay::config::Config) {
    c.health.interval = INTERVAL;
    c.routing.max_replica_lag = Some(BOUND);
    c.routing.consistency = pgrelay::router::Consistency::Eventual;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_replica_leaves_reads_past_the_bound_and_returns_after_catching_up() {
    let cfg = ClusterConfig {
        replicas: 2,
        apply_delay: vec![(0, Duration::from_secs(3))],
        ..ClusterConfig::default()
    };
    let env = start_with(cfg, tweak).await;
    let delayed = env.cluster.port(1);
    let c = env.connect().await;
    c.batch_execute("CREATE TABLE w (id bigserial PRIMARY KEY, at timestamptz DEFAULT now())")
        .await
        .expect("setup");
    env.wait_for_replay().await;
    eventually(Duration::from_secs(10), "delayed replica up", || async {
        (state(&env, 1) == NodeState::Up).then_some(())
    })
    .await;
    // Before any write the delayed replica takes its share of reads.
    let mut before = 0;
    for _ in 0..20 {
        before += usize::from(port(&c).await.unwrap() == delayed);
    }
    assert!(
        before > 0,
        "the delayed replica took no reads while caught up"
    );

    // Continuous writes straight to the primary.
    let writer = env.connect_direct(0).await;
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let writes = tokio::spawn(async move {
        let mut n = 0u64;
        while !*stop_rx.borrow_and_update() {
            writer
                .execute("INSERT INTO w DEFAULT VALUES", &[])
                .await
                .expect("write");
            n += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        n
    });
    let t0 = Instant::now();
    // The replica's lag passes 1 s about 1 s after the first write; read for 4 s.
    let mut last_hit = None;
    let mut reads = 0;
    while t0.elapsed() < Duration::from_secs(4) {
        if port(&c).await.expect("read") == delayed {
            last_hit = Some(t0.elapsed());
        }
        reads += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let topo = env.proxy.shared.topology.load_full();
    let lag = topo.nodes[1].lag.expect("lag measured");
    eprintln!(
        "delayed replica: last read at {last_hit:?} after writes started ({reads} reads); \
         now {:?}, lag {:?} / {} bytes",
        topo.nodes[1].state, lag.time, lag.bytes.0
    );
    assert_eq!(topo.nodes[1].state, NodeState::Lagging, "{topo:?}");
    assert!(lag.time > BOUND, "{lag:?}");
    // Reads stopped within 1 s of the lag passing the bound (at ~1 s).
    let left = last_hit.unwrap_or_default();
    assert!(
        left < BOUND + Duration::from_secs(1),
        "last read on the delayed replica at {left:?}"
    );
    // The lag shows on the admin API.
    let body = admin_get(&env, "/topology").await;
    assert!(
        body.contains(r#""state":"lagging""#) && body.contains(r#""lag":{"bytes":"#),
        "{body}"
    );

    stop_tx.send(true).unwrap();
    let n = writes.await.unwrap();
    let stopped = Instant::now();
    let back = eventually(
        Duration::from_secs(15),
        "reads back on the delayed replica",
        || async { (port(&c).await.expect("read") == delayed).then(|| stopped.elapsed()) },
    )
    .await;
    eprintln!("{n} writes; reads returned to the delayed replica {back:?} after writes stopped");
    // It must first replay the last 3 s of writes.
    assert!(back > Duration::from_secs(2), "back after {back:?}");
    let node = &env.proxy.shared.topology.load().nodes[1];
    assert_eq!(node.state, NodeState::Up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_replica_leaves_routing_without_client_errors_and_returns() {
    let env = start_with(ClusterConfig::default(), tweak).await;
    let victim = env.cluster.port(1);
    let c = env.connect().await;
    env.wait_for_replay().await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let reader = {
        let conninfo = env.conninfo();
        tokio::spawn(async move {
            let c = tests_integration::connect(&conninfo).await;
            let (mut reads, mut errors) = (0u64, Vec::new());
            while !*stop_rx.borrow() {
                match port(&c).await {
                    Ok(_) => reads += 1,
                    Err(e) => errors.push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (reads, errors)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed = Instant::now();
    tokio::task::block_in_place(|| env.cluster.kill(1)).expect("kill");
    let out = eventually(Duration::from_secs(10), "victim out of routing", || async {
        let t = env.proxy.shared.topology.load();
        (!t.nodes[1].readable_replica()).then(|| killed.elapsed())
    })
    .await;
    let down = eventually(Duration::from_secs(10), "victim down", || async {
        (state(&env, 1) == NodeState::Down).then(|| killed.elapsed())
    })
    .await;
    for _ in 0..20 {
        assert_ne!(port(&c).await.expect("read"), victim);
    }
    let restarted = Instant::now();
    tokio::task::block_in_place(|| env.cluster.start_node(1)).expect("restart");
    let back = eventually(
        Duration::from_secs(20),
        "reads back on the victim",
        || async { (port(&c).await.expect("read") == victim).then(|| restarted.elapsed()) },
    )
    .await;
    stop_tx.send(true).unwrap();
    let (reads, errors) = reader.await.unwrap();
    eprintln!(
        "killed replica: out of reads after {out:?}, down after {down:?}; \
         back {back:?} after restart; {reads} reads, {} errors",
        errors.len()
    );
    assert!(errors.is_empty(), "client errors: {errors:?}");
    assert_eq!(env.proxy.shared.topology.load().nodes[1].id, NodeId(1));
}

/// CPU time of a process in nanoseconds, summed over its threads (`/proc/.../schedstat`).
fn cpu_ns(pid: &str) -> u64 {
    if pid == "self" {
        // The whole process, threads that already exited included (the per-task figures
        // below would drop them and could go down).
        return std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| {
                let after = s.rsplit_once(')')?.1;
                let f: Vec<&str> = after.split_whitespace().collect();
                // Fields 14 and 15 (utime, stime), counted after the command name.
                let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
                Some(ticks * 10_000_000) // USER_HZ is 100 on Linux
            })
            .unwrap_or(0);
    }
    let dir = format!("/proc/{pid}/task");
    std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read_to_string(e.path().join("schedstat")).ok())
                .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0)
}

/// Pids of pgrelay's control backends on a node.
async fn control_pids(c: &tokio_postgres::Client) -> String {
    let rows = c
        .simple_query(
            "SELECT string_agg(pid::text, ',') FROM pg_stat_activity \
             WHERE application_name = 'pgrelay-health'",
        )
        .await
        .expect("pids");
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("").to_string()),
            _ => None,
        })
        .expect("row")
}

/// Heartbeat cost, measured (not asserted beyond the rate's order of magnitude): queries
/// per second per node, server CPU of the control backends (`/proc/<pid>/schedstat`),
/// and the whole test process's CPU while no client is connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_cost_is_reported() {
    let env = start_with(ClusterConfig::default(), tweak).await;
    let nodes = env.cluster.nodes().len();
    let mut conns = Vec::new();
    for i in 0..nodes {
        conns.push(env.connect_direct(i).await);
    }
    // Let the control connections settle.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let window = Duration::from_secs(6);
    let mut start = Vec::new();
    for c in &conns {
        let pids = control_pids(c).await;
        let cpu: u64 = pids.split(',').filter(|p| !p.is_empty()).map(cpu_ns).sum();
        start.push((pids, cpu));
    }
    let proxy_cpu0 = cpu_ns("self");
    let beats0: Vec<u64> = (0..nodes)
        .map(|i| env.proxy.heartbeats.beats(NodeId(i)))
        .collect();
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let elapsed = t0.elapsed().as_secs_f64();
    let proxy_cpu = cpu_ns("self").saturating_sub(proxy_cpu0);
    let beats: Vec<u64> = (0..nodes)
        .map(|i| env.proxy.heartbeats.beats(NodeId(i)) - beats0[i])
        .collect();
    for (i, (pids, cpu0)) in start.iter().enumerate() {
        let cpu: u64 = pids.split(',').filter(|p| !p.is_empty()).map(cpu_ns).sum();
        let cpu = cpu.max(*cpu0);
        let qps = beats[i] as f64 / elapsed;
        eprintln!(
            "heartbeat cost node {i}: {qps:.2} queries/s (interval {INTERVAL:?}), control \
             backend CPU {:.3}% of a core ({:.0} µs per beat)",
            (cpu - cpu0) as f64 / 1e7 / elapsed,
            (cpu - cpu0) as f64 / 1e3 / (beats[i] as f64).max(1.0),
        );
    }
    let total: u64 = beats.iter().sum();
    eprintln!(
        "heartbeat cost proxy (test process, no clients): CPU {:.3}% of a core for {nodes} \
         nodes ({:.0} µs per beat)",
        proxy_cpu as f64 / 1e7 / elapsed,
        proxy_cpu as f64 / 1e3 / (total as f64).max(1.0),
    );
    // Measured, not a timing assertion: one beat per interval per node, give or take.
    let expected = elapsed / INTERVAL.as_secs_f64();
    for (i, b) in beats.iter().enumerate() {
        assert!(
            (*b as f64) > expected * 0.25 && (*b as f64) < expected * 1.5,
            "node {i}: {b} beats in {elapsed:.1}s"
        );
    }
}

/// `/metrics` is Prometheus text whose counters follow the traffic: sessions logged in,
/// the WAL position read after a write, and the floor check of the read after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_the_traffic() {
    let env = start_with(ClusterConfig::default(), |c| {
        c.health.interval = INTERVAL;
    })
    .await;
    let c = env.connect().await;
    c.batch_execute("CREATE TABLE m (x int); INSERT INTO m VALUES (1)")
        .await
        .expect("write");
    let rows = c
        .simple_query("SELECT count(*) FROM m")
        .await
        .expect("read");
    assert!(!rows.is_empty());
    let text = admin_get(&env, "/metrics").await;
    let value = |name: &str| -> f64 {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.split([' ', '{']).next() == Some(name))
            .map(|l| {
                l.rsplit(' ')
                    .next()
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or_else(|| panic!("not a sample: {l}"))
            })
            .sum()
    };
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (_, v) = line.rsplit_once(' ').expect("name and value");
        assert!(v.parse::<f64>().is_ok(), "not a sample: {line}");
        assert!(line.starts_with("pgrelay_"), "{line}");
    }
    assert_eq!(value("pgrelay_client_sessions"), 1.0, "{text}");
    assert!(value("pgrelay_write_lsn_reads_total") >= 1.0, "{text}");
    assert!(value("pgrelay_floor_reads_total") >= 1.0, "{text}");
    assert_eq!(value("pgrelay_node_up"), 3.0, "{text}");
    eprintln!("metrics after one write and one read:\n{text}");
}
