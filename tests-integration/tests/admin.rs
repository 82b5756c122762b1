//! The admin API against a running pgrelay and a real cluster: `/topology` follows a
//! delayed replica's lag, `/metrics` is valid Prometheus text whose counters match the
//! traffic sent, and the actions (switchover, drain, enable, reload) work over HTTP
//! with the bearer token.

use std::time::{Duration, Instant};
use tests_integration::http::{self, parse_prometheus, total};
use tests_integration::{connect, eventually, start_with, Env};

use cluster::ClusterConfig;

fn node<'a>(topology: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    topology["nodes"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["name"] == name))
        .unwrap_or_else(|| panic!("{name} in {topology}"))
}

async fn topology(env: &Env, token: Option<&str>) -> serde_json::Value {
    let a = http::request(env.proxy.admin_addr, "GET", "/topology", None, token).await;
    assert_eq!(a.status, 200, "{}", a.body);
    a.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_shows_a_delayed_replicas_lag_grow_then_shrink() {
    let cfg = ClusterConfig {
        replicas: 2,
        apply_delay: vec![(0, Duration::from_secs(2))],
        ..ClusterConfig::default()
    };
    let env = start_with(cfg, |c| {
        c.routing.max_replica_lag = Some(Duration::from_millis(500));
    })
    .await;
    let c = env.connect().await;
    c.batch_execute("CREATE TABLE w (x int)")
        .await
        .expect("create");
    // The table's creation replayed everywhere first: the lag seen is the inserts'.
    env.wait_for_replay().await;
    let writing = tokio::spawn({
        let c = connect(&env.conninfo()).await;
        async move {
            for i in 0..120 {
                c.execute("INSERT INTO w VALUES ($1)", &[&i])
                    .await
                    .expect("insert");
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    });
    // While writes flow, pg1's lag grows: two samples with more bytes each time.
    let started = Instant::now();
    let mut samples: Vec<(u64, f64)> = Vec::new();
    let deadline = started + Duration::from_secs(20);
    let (state, routable) = loop {
        let t = topology(&env, None).await;
        let pg1 = node(&t, "pg1");
        let lag = (pg1["lag"]["bytes"].as_u64(), pg1["lag"]["seconds"].as_f64());
        if let (Some(bytes), Some(secs)) = lag {
            match samples.last() {
                _ if bytes == 0 => {}
                Some(l) if bytes > l.0 => samples.push((bytes, secs)),
                // Went down (a burst replayed): growth must be seen anew.
                Some(l) if bytes < l.0 => samples = vec![(bytes, secs)],
                Some(_) => {}
                None => samples.push((bytes, secs)),
            }
        }
        if samples.len() >= 3 {
            break (pg1["state"].clone(), pg1["routable"].clone());
        }
        assert!(Instant::now() < deadline, "lag never grew: {samples:?} {t}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "pg1 lag grew on /topology: {samples:?} (state {state}, routable {routable}) within {:?}",
        started.elapsed()
    );
    writing.await.expect("writer");
    // The other replica stays current, and the primary shows no lag.
    let t = topology(&env, None).await;
    assert_eq!(node(&t, "pg0")["role"], "primary");
    assert_eq!(node(&t, "pg0")["lag"], serde_json::Value::Null);
    // Writes stopped: the lag shrinks back to nothing.
    let stopped = Instant::now();
    let peak = samples.last().map_or(0, |s| s.0);
    let back = eventually(Duration::from_secs(20), "lag back to 0", || async {
        let t = topology(&env, None).await;
        let pg1 = node(&t, "pg1");
        let bytes = pg1["lag"]["bytes"].as_u64()?;
        (bytes == 0 && pg1["state"] == "up" && pg1["routable"] == true).then_some(())
    })
    .await;
    let _: () = back;
    eprintln!(
        "pg1 lag: peak {peak} bytes seen; back to 0 and routable {:?} after writes stopped",
        stopped.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_their_counters_match_the_traffic() {
    const WRITES: usize = 40;
    const READS: usize = 60;
    let env = start_with(ClusterConfig::default(), |_| {}).await;
    let c = connect(&format!("{} application_name=admin-e2e", env.conninfo())).await;
    c.simple_query("CREATE TABLE m (x int)")
        .await
        .expect("create");
    for i in 0..WRITES {
        c.simple_query(&format!("INSERT INTO m VALUES ({i})"))
            .await
            .expect("insert");
    }
    for _ in 0..READS {
        c.simple_query("SELECT count(*) FROM m")
            .await
            .expect("read");
    }
    let a = http::get(env.proxy.admin_addr, "/metrics").await;
    assert_eq!(a.status, 200);
    let s = parse_prometheus(&a.body);
    let statements = |reason: &str| total(&s, "pgrelay_statements_total", &[("reason", reason)]);
    let reads: f64 = [
        "read",
        "ryw_fallback",
        "no_replica",
        "replica_unavailable",
        "read_only_retry",
    ]
    .iter()
    .map(|r| statements(r))
    .sum();
    eprintln!(
        "statements: write {} read {} ryw_fallback {} no_replica {}",
        statements("write"),
        statements("read"),
        statements("ryw_fallback"),
        statements("no_replica")
    );
    assert_eq!(statements("write"), (WRITES + 1) as f64, "{}", a.body);
    assert_eq!(reads, READS as f64, "{}", a.body);
    assert_eq!(
        total(
            &s,
            "pgrelay_statements_total",
            &[("node", "pg0"), ("reason", "write")]
        ),
        (WRITES + 1) as f64
    );
    let units = total(&s, "pgrelay_query_duration_seconds_count", &[]);
    assert_eq!(
        units,
        (WRITES + READS + 1) as f64,
        "one latency per statement"
    );
    let p99 = total(
        &s,
        "pgrelay_query_duration_seconds",
        &[("node", "pg0"), ("quantile", "0.99")],
    );
    assert!(p99 > 0.0 && p99 < 10.0, "p99 {p99}");
    assert_eq!(total(&s, "pgrelay_client_sessions", &[]), 1.0);
    assert_eq!(total(&s, "pgrelay_epoch", &[]), 1.0);
    assert_eq!(total(&s, "pgrelay_failovers_total", &[]), 0.0);
    assert_eq!(total(&s, "pgrelay_pool_size", &[]), 20.0);
    for n in ["pg0", "pg1", "pg2"] {
        assert!(
            total(&s, "pgrelay_heartbeats_total", &[("node", n)]) >= 1.0,
            "{n}"
        );
        assert_eq!(total(&s, "pgrelay_node_up", &[("node", n)]), 1.0, "{n}");
    }
    // The session is listed, idle, with what it said about itself.
    let a = http::get(env.proxy.admin_addr, "/sessions").await;
    let j = a.json();
    assert_eq!(j["count"], 1, "{}", a.body);
    let one = &j["sessions"][0];
    assert_eq!(one["application_name"], "admin-e2e");
    assert_eq!(one["user"], cluster::APP_USER);
    assert_eq!(one["state"], "idle");
    assert_eq!(one["consistency"], "session");
    assert!(one["client_addr"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    // Inside a transaction, it shows that and the node it holds.
    c.simple_query("BEGIN; INSERT INTO m VALUES (0)")
        .await
        .expect("begin");
    let j = http::get(env.proxy.admin_addr, "/sessions").await.json();
    assert_eq!(j["sessions"][0]["state"], "idle in transaction");
    assert_eq!(j["sessions"][0]["node"], "pg0");
    c.simple_query("COMMIT").await.expect("commit");
    drop(c);
    eventually(Duration::from_secs(5), "session gone", || async {
        let j = http::get(env.proxy.admin_addr, "/sessions").await.json();
        (j["count"] == 0).then_some(())
    })
    .await;
}

/// The same config as the running proxy, as a file, plus `extra`.
fn config_file(env: &Env, dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let nodes: Vec<String> = env
        .cluster
        .nodes()
        .iter()
        .map(|n| {
            format!(
                "  - {{name: {}, host: {}, port: {}}}",
                n.name, n.host, n.port
            )
        })
        .collect();
    let (su, pw) = env.cluster.superuser();
    let yaml = format!(
        "nodes:\n{}\nusers:\n  - {{name: {}, password: {}}}\ncontrol: {{user: {su}, password: '{pw}'}}\n{extra}",
        nodes.join("\n"),
        cluster::APP_USER,
        cluster::APP_PASSWORD,
    );
    let path = dir.join("pgrelay.yaml");
    std::fs::write(&path, yaml).expect("write config");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_over_http_need_the_token_and_move_the_primary() {
    const TOKEN: &str = "e2e-t0ken";
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("pgrelay.yaml");
    let env = start_with(ClusterConfig::default(), |c| {
        c.admin.token = Some(pgrelay::config::Secret::new(TOKEN));
        c.source = Some(path.clone());
    })
    .await;
    let admin = env.proxy.admin_addr;
    let act = |path: &'static str, body: Option<&'static str>, token: Option<&'static str>| {
        http::request(admin, "POST", path, body, token)
    };
    let ready = http::get(admin, "/ready").await;
    assert_eq!(
        (ready.status, &ready.json()["primary"]),
        (200, &"pg0".into())
    );
    assert_eq!(
        http::get(admin, "/topology").await.status,
        401,
        "reads need the token too"
    );
    let to_pg1 = Some(r#"{"to": "pg1"}"#);
    let a = act("/switchover", to_pg1, None).await;
    assert_eq!(
        (a.status, &a.json()["reason"]),
        (401, &"unauthorized".into())
    );
    assert_eq!(act("/switchover", to_pg1, Some("wrong")).await.status, 401);
    let a = act("/switchover", Some(r#"{"to": "pg9"}"#), Some(TOKEN)).await;
    assert_eq!(
        (a.status, &a.json()["reason"]),
        (404, &"unknown_node".into())
    );
    assert_eq!(
        topology(&env, Some(TOKEN)).await["epoch"],
        1,
        "refusals change nothing"
    );

    let asked = Instant::now();
    let a = act("/switchover", to_pg1, Some(TOKEN)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let took = asked.elapsed();
    let t = topology(&env, Some(TOKEN)).await;
    assert_eq!(
        (t["epoch"].as_u64(), t["primary"].as_str()),
        (Some(2), Some("pg1")),
        "{t}"
    );
    assert_eq!(node(&t, "pg0")["state"], "fenced");
    assert_eq!(t["failover"]["last_failover"]["to"], "pg1");
    assert_eq!(t["failover"]["last_failover"]["planned"], true);
    assert!(t["failover"]["last_failover"]["at"]
        .as_str()
        .is_some_and(|s| s.ends_with('Z')));
    eprintln!("switchover over HTTP answered in {took:?}: {}", a.body);
    let again = act("/switchover", to_pg1, Some(TOKEN)).await;
    assert_eq!(again.status, 200, "idempotent: {}", again.body);
    assert!(again.body.contains("already"), "{}", again.body);
    assert_eq!(topology(&env, Some(TOKEN)).await["epoch"], 2);
    let c = env.connect().await;
    c.batch_execute("CREATE TABLE after_switchover (x int)")
        .await
        .expect("write on the new primary");

    // Drain a replica: no reads go there; enable: back in routing.
    let a = act(
        "/nodes/pg2/drain",
        Some(r#"{"timeout_seconds": 5}"#),
        Some(TOKEN),
    )
    .await;
    assert_eq!(
        (a.status, a.json()["leases_in_use"].as_u64()),
        (200, Some(0)),
        "{}",
        a.body
    );
    let t = topology(&env, Some(TOKEN)).await;
    assert_eq!(
        (&node(&t, "pg2")["state"], &node(&t, "pg2")["routable"]),
        (&"drained".into(), &false.into())
    );
    let r = connect(&format!(
        "{} options=-cpgrelay.consistency=eventual",
        env.conninfo()
    ))
    .await;
    let pg2 = env.cluster.port(2).to_string();
    for _ in 0..20 {
        let port = r
            .simple_query("SELECT inet_server_port()")
            .await
            .expect("read");
        let port = port
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
                _ => None,
            })
            .expect("a row");
        assert_ne!(port, pg2, "a read went to the drained node");
    }
    assert_eq!(
        act("/nodes/pg2/enable", None, Some(TOKEN)).await.status,
        200
    );
    let t = topology(&env, Some(TOKEN)).await;
    assert_eq!(node(&t, "pg2")["state"], "up", "{t}");

    // Reload: a good file applies its live keys; a bad one is refused, the old stays.
    config_file(&env, dir.path(), "routing: {consistency: eventual}\n");
    let a = act("/reload", None, Some(TOKEN)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let applied = a.json()["applied"].clone();
    assert!(
        applied
            .as_array()
            .unwrap()
            .contains(&"routing.consistency".into()),
        "{}",
        a.body
    );
    std::fs::write(&path, "nodes: []\n").expect("write");
    let a = act("/reload", None, Some(TOKEN)).await;
    assert_eq!(
        (a.status, &a.json()["reason"]),
        (422, &"invalid_config".into()),
        "{}",
        a.body
    );
    assert!(a.body.contains("nodes"), "{}", a.body);
    let n = env.connect().await;
    let sessions = http::request(admin, "GET", "/sessions", None, Some(TOKEN))
        .await
        .json();
    let levels: Vec<_> = sessions["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["consistency"].clone())
        .collect();
    assert!(levels.contains(&"eventual".into()), "{sessions}");
    drop((c, r, n));
}
