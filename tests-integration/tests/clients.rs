//! Real clients through pgrelay: tokio-postgres (prepared statements, transactions, COPY,
//! cancel), psql and pgbench in all three query modes.

use cluster::ClusterConfig;
use futures::{SinkExt, TryStreamExt};
use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};
use tests_integration::{eventually, pg_program, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_survive_many_transactions_and_backends() {
    let env = start(ClusterConfig::default()).await;
    let mut c = env.connect().await;
    c.batch_execute("CREATE TABLE kv (k int PRIMARY KEY, v text)")
        .await
        .expect("ddl");
    env.wait_for_replay().await;
    // At level `eventual` reads are spread over both replicas (a `session` session stays
    // on one while it can), so statements must move between nodes.
    c.batch_execute("SET pgrelay.consistency = eventual")
        .await
        .expect("eventual");
    let read = c
        .prepare("SELECT $1::int + 1 AS n, inet_server_port() AS port")
        .await
        .expect("prepare read");
    let write = c
        .prepare("INSERT INTO kv VALUES ($1, $2) RETURNING inet_server_port()")
        .await
        .expect("prepare write");
    let get = c
        .prepare("SELECT v FROM kv WHERE k = $1")
        .await
        .expect("prepare get");
    let mut ports = HashSet::new();
    for i in 0..60i32 {
        let row = c.query_one(&read, &[&i]).await.expect("read");
        assert_eq!(row.get::<_, i32>(0), i + 1);
        ports.insert(row.get::<_, i32>(1) as u16);
        let row = c
            .query_one(&write, &[&i, &format!("v{i}")])
            .await
            .expect("write");
        assert_eq!(row.get::<_, i32>(0) as u16, env.primary_port());
        if i % 10 == 0 {
            // Inside a transaction the statement is used on the primary's backend.
            let tx = c.transaction().await.expect("begin");
            let row = tx.query_one(&get, &[&i]).await.expect("get in tx");
            assert_eq!(row.get::<_, String>(0), format!("v{i}"));
            tx.commit().await.expect("commit");
        }
    }
    let replicas: HashSet<u16> = env.replica_ports().into_iter().collect();
    assert!(
        ports.is_subset(&replicas) && ports.len() == 2,
        "reads used both replicas: {ports:?}"
    );
    // Describe on a backend where the statement is not prepared yet.
    let again = c
        .prepare("SELECT $1::int + 1 AS n, inet_server_port() AS port")
        .await
        .expect("re-prepare");
    assert_eq!(again.columns().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_statement_names_with_different_sql_never_collide() {
    // One backend per node, so both clients share the same server connections.
    let env = tests_integration::start_with(
        ClusterConfig {
            replicas: 1,
            ..Default::default()
        },
        |c| {
            c.pool.size = 1;
        },
    )
    .await;
    let a = env.connect().await;
    let b = env.connect().await;
    // tokio-postgres names statements s0, s1, ... per connection: both get "s0".
    let sa = a.prepare("SELECT 'a'::text").await.expect("a");
    let sb = b.prepare("SELECT 'b'::text, 2").await.expect("b");
    for _ in 0..20 {
        assert_eq!(
            a.query_one(&sa, &[]).await.expect("a").get::<_, String>(0),
            "a"
        );
        let row = b.query_one(&sb, &[]).await.expect("b");
        assert_eq!(row.get::<_, String>(0), "b");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_commit_roll_back_and_recover_from_errors() {
    let env = start(ClusterConfig::default()).await;
    let mut c = env.connect().await;
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .expect("ddl");
    let tx = c.transaction().await.expect("begin");
    tx.execute("INSERT INTO t VALUES (1)", &[])
        .await
        .expect("insert");
    tx.rollback().await.expect("rollback");
    let tx = c.transaction().await.expect("begin");
    tx.execute("INSERT INTO t VALUES (2)", &[])
        .await
        .expect("insert");
    tx.commit().await.expect("commit");
    // A failed statement puts the transaction in the failed state; ROLLBACK recovers.
    c.batch_execute("BEGIN").await.expect("begin");
    let err = c
        .batch_execute("INSERT INTO t VALUES (2)")
        .await
        .expect_err("duplicate");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
    );
    let err = c
        .batch_execute("SELECT 1")
        .await
        .expect_err("aborted transaction");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::IN_FAILED_SQL_TRANSACTION)
    );
    c.batch_execute("ROLLBACK").await.expect("rollback");
    let direct = env.connect_direct(0).await;
    let ids: Vec<i32> = direct
        .query("SELECT id FROM t ORDER BY id", &[])
        .await
        .expect("q")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, vec![2]);
    // Errors in extended-protocol batches leave the session usable.
    let err = c
        .query("SELECT 1/0", &[])
        .await
        .expect_err("division by zero");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::DIVISION_BY_ZERO)
    );
    let err = c.prepare("SELEC nonsense").await.expect_err("syntax");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::SYNTAX_ERROR)
    );
    assert_eq!(
        c.query_one("SELECT 7", &[])
            .await
            .expect("usable")
            .get::<_, i32>(0),
        7
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out() {
    let env = start(ClusterConfig::default()).await;
    let c = env.connect().await;
    c.batch_execute("CREATE TABLE big (id int, payload text)")
        .await
        .expect("ddl");
    let mut data = String::new();
    for i in 0..5000 {
        data.push_str(&format!("{i}\tpayload-{i}-{}\n", "x".repeat(i % 50)));
    }
    let sink = c.copy_in("COPY big FROM STDIN").await.expect("copy in");
    futures::pin_mut!(sink);
    for chunk in data.as_bytes().chunks(7000) {
        sink.send(bytes::Bytes::copy_from_slice(chunk))
            .await
            .expect("send");
    }
    assert_eq!(sink.finish().await.expect("finish"), 5000);
    env.wait_for_replay().await;
    let stream = c
        .copy_out("COPY (SELECT * FROM big ORDER BY id) TO STDOUT")
        .await
        .expect("copy out");
    let chunks: Vec<bytes::Bytes> = stream.try_collect().await.expect("collect");
    let out: Vec<u8> = chunks.concat();
    let (got, want) = (String::from_utf8_lossy(&out), data.as_str());
    let missing: Vec<(&str, &str)> = want
        .lines()
        .zip(got.lines())
        .filter(|(a, b)| a != b)
        .take(3)
        .collect();
    assert!(
        got == want,
        "COPY out returns what COPY in stored: {} of {} bytes, missing lines like {missing:?}",
        got.len(),
        want.len()
    );
    // A failed COPY leaves the session usable.
    let sink = c.copy_in("COPY big FROM STDIN").await.expect("copy in");
    futures::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"not-a-number\tx\n"))
        .await
        .expect("send");
    assert!(sink.finish().await.is_err());
    assert_eq!(
        c.query_one("SELECT count(*) FROM big", &[])
            .await
            .expect("count")
            .get::<_, i64>(0),
        5000
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_backend_running_the_statement() {
    let env = start(ClusterConfig::default()).await;
    let c = env.connect().await;
    let token = c.cancel_token();
    let started = Instant::now();
    let sleeper =
        tokio::spawn(async move { c.simple_query("SELECT pg_sleep(60)").await.map(|_| ()) });
    // Wait until the sleep is running on some node (reads go to replicas).
    let direct: Vec<_> = futures::future::join_all((0..3).map(|i| env.connect_direct(i))).await;
    eventually(Duration::from_secs(10), "pg_sleep to start", || async {
        for d in &direct {
            let n: i64 = d
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(60)%'",
                    &[],
                )
                .await
                .ok()?
                .get(0);
            if n > 0 {
                return Some(());
            }
        }
        None
    })
    .await;
    token
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("cancel request");
    let err = sleeper.await.expect("join").expect_err("cancelled");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED)
    );
    let took = started.elapsed();
    eprintln!("pg_sleep(60) cancelled after {took:?}");
    assert!(
        took < Duration::from_secs(30),
        "cancel took effect ({took:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_runs_scripts_through_pgrelay() {
    let env = start(ClusterConfig::default()).await;
    let script = "CREATE TABLE p (id int);\n\
                  INSERT INTO p SELECT generate_series(1, 100);\n\
                  BEGIN;\nUPDATE p SET id = id + 1000 WHERE id <= 10;\nCOMMIT;\n\
                  \\copy p FROM stdin\n5000\n5001\n\\.\n\
                  BEGIN;\nSELECT count(*), max(id) FROM p;\nCOMMIT;\n";
    let out = tokio::task::spawn_blocking({
        let conninfo = env.conninfo();
        move || {
            let mut child = Command::new(pg_program("psql"))
                .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", &conninfo])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("psql");
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(script.as_bytes())
                .expect("write");
            child.wait_with_output().expect("psql output")
        }
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.lines().any(|l| l == "102|5001"), "{stdout}");
}

fn pgbench(args: &[&str], port: u16) -> (bool, String) {
    tests_integration::pgbench::try_pgbench(port, args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_in_every_query_mode() {
    let env = start(ClusterConfig::default()).await;
    let port = env.port();
    let primary = env.primary_port();
    tokio::task::spawn_blocking(move || {
        let (ok, out) = pgbench(&["-i", "-s", "1", "-q"], primary);
        assert!(ok, "pgbench -i: {out}");
    })
    .await
    .expect("join");
    env.wait_for_replay().await;
    for mode in ["simple", "extended", "prepared"] {
        for extra in [&[][..], &["-S"][..]] {
            let mut args = vec!["-M", mode, "-c", "4", "-j", "2", "-t", "100", "-n"];
            args.extend_from_slice(extra);
            let (ok, out) = tokio::task::spawn_blocking(move || pgbench(&args, port))
                .await
                .expect("join");
            assert!(ok, "pgbench -M {mode} {extra:?} failed:\n{out}");
            assert!(
                out.contains("number of failed transactions: 0"),
                "pgbench -M {mode} {extra:?}:\n{out}"
            );
            let tps = out
                .lines()
                .find(|l| l.starts_with("tps"))
                .unwrap_or("tps ?");
            eprintln!("pgbench -M {mode} {extra:?}: {tps}");
        }
    }
}
