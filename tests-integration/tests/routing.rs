//! Routing through pgrelay on a real 1+2 cluster, shown with `inet_server_port()`:
//! plain reads land on replicas, every write category lands on the primary.

use cluster::ClusterConfig;
use std::collections::HashSet;
use tests_integration::{start, start_with, Env};

async fn port_of(c: &tokio_postgres::Client, sql: &str) -> u16 {
    let msgs = c
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let rows: Vec<_> = msgs
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .collect();
    let last = rows.last().unwrap_or_else(|| panic!("{sql}: no rows"));
    let idx = last
        .columns()
        .iter()
        .position(|c| c.name() == "port")
        .unwrap_or_else(|| panic!("{sql}: no port column"));
    last.get(idx)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{sql}: bad port"))
}

async fn setup(env: &Env) -> tokio_postgres::Client {
    let c = env.connect().await;
    c.batch_execute(
        "CREATE TABLE t (id serial PRIMARY KEY, v int);
         CREATE SEQUENCE s;
         INSERT INTO t (v) SELECT g FROM generate_series(1, 10) g;",
    )
    .await
    .expect("setup");
    env.wait_for_replay().await;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_reads_land_on_replicas_evenly() {
    // At level `session` one session stays on one replica (monotonic reads); spreading
    // one session's reads is what `eventual` does.
    let env = start_with(ClusterConfig::default(), |c| {
        c.routing.consistency = pgrelay::router::Consistency::Eventual;
    })
    .await;
    let c = setup(&env).await;
    let replicas: HashSet<u16> = env.replica_ports().into_iter().collect();
    let mut seen = HashSet::new();
    for sql in [
        "SELECT inet_server_port() AS port",
        "select inet_server_port() as port, count(*) from t",
        "/* INSERT */ SELECT inet_server_port() AS port, 'DELETE FROM t'",
        "SELECT inet_server_port() AS port, $$;UPDATE t SET v = 0$$",
        "WITH x AS (SELECT * FROM t) SELECT inet_server_port() AS port FROM x LIMIT 1",
    ] {
        for _ in 0..4 {
            let port = port_of(&c, sql).await;
            assert!(
                replicas.contains(&port),
                "{sql} ran on {port}, not a replica {replicas:?}"
            );
            seen.insert(port);
        }
    }
    assert_eq!(seen, replicas, "reads are spread over both replicas");
    // BEGIN READ ONLY transactions may run on a replica too.
    for begin in [
        "BEGIN READ ONLY",
        "START TRANSACTION READ ONLY",
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
    ] {
        let port = port_of(
            &c,
            &format!("{begin}; SELECT inet_server_port() AS port; COMMIT"),
        )
        .await;
        // Multi-statement strings conservatively go to the primary; do it step by step.
        assert_eq!(
            port,
            env.primary_port(),
            "{begin} as one string is multi-statement"
        );
        c.simple_query(begin).await.expect(begin);
        let port = port_of(&c, "SELECT inet_server_port() AS port").await;
        c.simple_query("COMMIT").await.expect("commit");
        assert!(replicas.contains(&port), "{begin}: ran on {port}");
    }
    assert_eq!(env.read_only_retries(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_category_lands_on_the_primary() {
    let env = start(ClusterConfig::default()).await;
    let c = setup(&env).await;
    let primary = env.primary_port();
    let cases = [
        "INSERT INTO t (v) VALUES (1) RETURNING inet_server_port() AS port",
        "UPDATE t SET v = v + 1 WHERE id = 1 RETURNING inet_server_port() AS port",
        "WITH d AS (DELETE FROM t WHERE id = -1 RETURNING 1) SELECT inet_server_port() AS port",
        "WITH i AS (INSERT INTO t (v) VALUES (2) RETURNING id) SELECT inet_server_port() AS port FROM i",
        "SELECT inet_server_port() AS port FROM t WHERE id = 1 FOR UPDATE",
        "SELECT inet_server_port() AS port FROM t WHERE id = 1 FOR SHARE",
        "SELECT inet_server_port() AS port FROM t WHERE id = 1 FOR NO KEY UPDATE",
        "SELECT nextval('s'), inet_server_port() AS port",
        "SELECT setval('s', 100), inet_server_port() AS port",
        "SELECT 1; SELECT inet_server_port() AS port",
        "CREATE TABLE ddl_check AS SELECT inet_server_port() AS port; SELECT port FROM ddl_check",
    ];
    for sql in cases {
        assert_eq!(port_of(&c, sql).await, primary, "{sql}");
    }
    // A transaction block goes to the primary, even for reads inside it.
    c.simple_query("BEGIN").await.expect("begin");
    assert_eq!(
        port_of(&c, "SELECT inet_server_port() AS port").await,
        primary
    );
    c.simple_query("COMMIT").await.expect("commit");
    // The same categories through the extended protocol (tokio-postgres prepares).
    let row = c
        .query_one("SELECT nextval('s') AS n, inet_server_port() AS port", &[])
        .await
        .expect("nextval");
    assert_eq!(row.get::<_, i32>("port") as u16, primary);
    let row = c
        .query_one(
            "INSERT INTO t (v) VALUES ($1) RETURNING inet_server_port() AS port",
            &[&7i32],
        )
        .await
        .expect("insert");
    assert_eq!(row.get::<_, i32>("port") as u16, primary);
    // COPY FROM succeeds only on the primary; no replica refused it (no 25006 retries).
    let sink = c.copy_in("COPY t (v) FROM STDIN").await.expect("copy in");
    futures::pin_mut!(sink);
    use futures::SinkExt;
    sink.send(bytes::Bytes::from_static(b"5\n6\n"))
        .await
        .expect("copy data");
    assert_eq!(sink.finish().await.expect("copy done"), 2);
    assert_eq!(
        env.read_only_retries(),
        0,
        "no write was sent to a replica first"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_writes_is_retried_on_the_primary_unseen() {
    let env = start(ClusterConfig::default()).await;
    let c = setup(&env).await;
    c.batch_execute(
        "CREATE FUNCTION sneaky() RETURNS int LANGUAGE sql AS
           $$ INSERT INTO t (v) VALUES (42); SELECT inet_server_port() $$;",
    )
    .await
    .expect("function");
    env.wait_for_replay().await;
    // Looks like a read, so it goes to a replica, which refuses with 25006; pgrelay runs
    // it again on the primary and the client only sees the primary's answer.
    assert_eq!(
        port_of(&c, "SELECT sneaky() AS port").await,
        env.primary_port()
    );
    assert_eq!(env.read_only_retries(), 1);
    let row = c
        .query_one("SELECT sneaky() AS port", &[])
        .await
        .expect("extended");
    assert_eq!(row.get::<_, i32>("port") as u16, env.primary_port());
    assert_eq!(env.read_only_retries(), 2);
    let n: i64 = env
        .connect_direct(0)
        .await
        .query_one("SELECT count(*) FROM t WHERE v = 42", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 2, "each call wrote exactly once");
}

/// A replica backend that dies in the middle of a read (terminated here; a crashed
/// replica looks the same to pgrelay): nothing of the read has reached the client, so
/// it runs again on the primary and the client never sees the failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_whose_replica_connection_dies_is_rerun_on_the_primary() {
    let env = start_with(ClusterConfig::default(), |c| {
        c.routing.consistency = pgrelay::router::Consistency::Eventual;
    })
    .await;
    let c = env.connect().await;
    let sql = "SELECT inet_server_port() AS port, pg_sleep(2) AS slept";
    let read = tokio::spawn(async move { port_of(&c, sql).await });
    let direct = [env.connect_direct(1).await, env.connect_direct(2).await];
    let kill = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                WHERE query LIKE '%pg_sleep(2) AS slept%' AND pid <> pg_backend_pid()";
    tests_integration::eventually(
        std::time::Duration::from_secs(10),
        "the read running on a replica",
        || async {
            let mut killed = 0;
            for d in &direct {
                let row = d.query_one(kill, &[]).await.expect("terminate");
                killed += row.get::<_, i64>(0);
            }
            (killed > 0).then_some(())
        },
    )
    .await;
    let port = read.await.expect("the read answers");
    assert_eq!(port, env.primary_port(), "re-run on the primary");
    let retries = pgrelay_statements(&env, "replica_unavailable");
    eprintln!(
        "read re-run on the primary after its replica backend was terminated ({retries} counted)"
    );
    assert_eq!(retries, 1);
}

fn pgrelay_statements(env: &Env, reason: &str) -> u64 {
    let stats = &env.proxy.shared.stats;
    (0..3)
        .map(|n| {
            stats.routed_count(
                pgrelay::router::NodeId(n),
                pgrelay::stats::Reason::ALL
                    .into_iter()
                    .find(|r| r.as_str() == reason)
                    .expect("reason"),
            )
        })
        .sum()
}
