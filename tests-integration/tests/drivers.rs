//! Real drivers through pgrelay on a real primary + 2 replicas, each with its normal
//! settings and with settings that force server-side prepared statements: psycopg 3,
//! asyncpg, node-postgres and pgJDBC run the scripts in `tests-integration/drivers/`
//! (installed by `scripts/install-drivers`); sqlx runs in this file.
//!
//! Every driver goes through the same list: prepared statements reused across reads
//! (replicas) and writes (the primary), transactions, COPY, `SET search_path` and
//! `SET TimeZone`, a cursor in a transaction, cancel, and a pool of 10 connections running
//! mixed reads and writes concurrently.

use cluster::ClusterConfig;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tests_integration::{start_with, Env};

/// How long one driver script may run before the test gives up on it.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);
const INSTALL: &str = "run scripts/install-drivers";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Normal,
    Prepared,
}

impl Mode {
    fn arg(self) -> &'static str {
        match self {
            Mode::Normal => "normal",
            Mode::Prepared => "prepared",
        }
    }
}

#[derive(Clone, Copy)]
enum Driver {
    Psycopg,
    Asyncpg,
    NodePg,
    Jdbc,
}

impl Driver {
    fn name(self) -> &'static str {
        match self {
            Driver::Psycopg => "psycopg",
            Driver::Asyncpg => "asyncpg",
            Driver::NodePg => "node-postgres",
            Driver::Jdbc => "pgJDBC",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.arg())
    }
}

fn drivers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("drivers")
}

/// Panics (never skips) when something `scripts/install-drivers` installs is missing or
/// stale.
fn require(ok: bool, what: &str) {
    assert!(ok, "{what} is missing or out of date: {INSTALL}");
}

fn same_file_contents(a: &Path, b: &Path) -> bool {
    matches!((std::fs::read(a), std::fs::read(b)), (Ok(x), Ok(y)) if x == y)
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// The program and leading arguments that run `driver`'s script.
fn script_command(driver: Driver) -> (PathBuf, Vec<PathBuf>) {
    let dir = drivers_dir();
    match driver {
        Driver::Psycopg | Driver::Asyncpg => {
            let venv = dir.join(".venv");
            let python = venv.join("bin/python");
            require(
                python.exists()
                    && same_file_contents(
                        &dir.join("python/requirements.txt"),
                        &venv.join(".installed-requirements"),
                    ),
                "the Python drivers' venv (tests-integration/drivers/.venv)",
            );
            let script = match driver {
                Driver::Psycopg => "python/psycopg_test.py",
                _ => "python/asyncpg_test.py",
            };
            (python, vec![dir.join(script)])
        }
        Driver::NodePg => {
            require(on_path("node"), "node");
            let node = dir.join("node");
            require(
                same_file_contents(
                    &node.join("package-lock.json"),
                    &node.join("node_modules/.installed-lock.json"),
                ),
                "node-postgres (tests-integration/drivers/node/node_modules)",
            );
            (PathBuf::from("node"), vec![node.join("pg_test.js")])
        }
        Driver::Jdbc => {
            require(on_path("java"), "java");
            let jar = PathBuf::from("/usr/share/java/postgresql.jar");
            require(jar.exists(), "pgJDBC (/usr/share/java/postgresql.jar)");
            (
                PathBuf::from("java"),
                vec!["-cp".into(), jar, dir.join("java/JdbcTest.java")],
            )
        }
    }
}

/// Reads a child's pipe to the end on its own task.
fn collect<R>(pipe: Option<R>) -> tokio::task::JoinHandle<String>
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    let mut pipe = pipe.expect("piped");
    tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut pipe, &mut buf).await;
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// The driver scripts check protocol compatibility and that reads spread over both
/// replicas; at level `session` a session stays on one replica and a read right after a
/// write may go to the primary (tests/consistency.rs covers that level).
fn eventual(c: &mut pgrelay::config::Config) {
    c.routing.consistency = pgrelay::router::Consistency::Eventual;
}

/// Starts a 1+2 cluster with pgrelay in front and runs `driver`'s script against it.
async fn run_driver(driver: Driver, mode: Mode) {
    let (program, lead) = script_command(driver);
    let env = start_with(ClusterConfig::default(), eventual).await;
    let started = Instant::now();
    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(&lead).args(connection_args(&env, mode));
    // Nothing from the caller's PG* variables (libpq, asyncpg and node-postgres read
    // them) may change what the script connects to.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PG") {
            cmd.env_remove(k);
        }
    }
    cmd.env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(drivers_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}; {INSTALL}", program.display()));
    // Read both pipes to the end on their own, so a script that hangs still shows what it
    // printed before it was killed.
    let stdout = collect(child.stdout.take());
    let stderr = collect(child.stderr.take());
    let status = match tokio::time::timeout(SCRIPT_TIMEOUT, child.wait()).await {
        Ok(status) => Some(status.expect("wait for the driver script")),
        Err(_) => {
            let _ = child.kill().await;
            None
        }
    };
    let (stdout, stderr) = (
        stdout.await.expect("stdout reader"),
        stderr.await.expect("stderr reader"),
    );
    let outcome = match status {
        Some(s) if s.success() => {
            eprintln!("{stdout}{stderr}");
            return;
        }
        Some(s) => format!("failed ({s})"),
        None => format!("was killed after {SCRIPT_TIMEOUT:?}"),
    };
    panic!(
        "{} {mode} {outcome} after {:?}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        driver.name(),
        started.elapsed()
    );
}

fn connection_args(env: &Env, mode: Mode) -> Vec<String> {
    let replicas: Vec<String> = env.replica_ports().iter().map(u16::to_string).collect();
    [
        ("--host", "127.0.0.1".to_string()),
        ("--port", env.port().to_string()),
        ("--user", cluster::APP_USER.to_string()),
        ("--password", cluster::APP_PASSWORD.to_string()),
        ("--dbname", cluster::APP_DB.to_string()),
        ("--primary-port", env.primary_port().to_string()),
        ("--replica-ports", replicas.join(",")),
        ("--mode", mode.arg().to_string()),
    ]
    .into_iter()
    .flat_map(|(k, v)| [k.to_string(), v])
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_normal() {
    run_driver(Driver::Psycopg, Mode::Normal).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_prepared() {
    run_driver(Driver::Psycopg, Mode::Prepared).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_normal() {
    run_driver(Driver::Asyncpg, Mode::Normal).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_prepared() {
    run_driver(Driver::Asyncpg, Mode::Prepared).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_pg_normal() {
    run_driver(Driver::NodePg, Mode::Normal).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_pg_prepared() {
    run_driver(Driver::NodePg, Mode::Prepared).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jdbc_normal() {
    run_driver(Driver::Jdbc, Mode::Normal).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jdbc_prepared() {
    run_driver(Driver::Jdbc, Mode::Prepared).await;
}

// ---------------------------------------------------------------------------------------
// sqlx, in Rust: the same list of steps.

use futures::TryStreamExt;
use sqlx::postgres::{
    PgArguments, PgConnectOptions, PgConnection, PgPoolOptions, PgSslMode, PgStatement,
};
use sqlx::query::Query;
use sqlx::{Connection, Executor, Postgres, Row, Statement};
use std::collections::HashMap;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum SqlxMode {
    /// sqlx's defaults: every `sqlx::query` is a named server-side statement, cached per
    /// connection (statement_cache_capacity 100).
    Normal,
    /// Explicit `Executor::prepare` statements reused, and `persistent(true)` everywhere.
    Prepared,
    /// No statement cache and `persistent(false)`: unnamed statements, as people run sqlx
    /// behind poolers that cannot follow prepared statements.
    Unnamed,
}

const READ_SQL: &str = "SELECT $1::int + 1 AS n, inet_server_port() AS port";
const WRITE_SQL: &str = "INSERT INTO kv VALUES ($1, $2) RETURNING inet_server_port()";
const GET_SQL: &str = "SELECT v, inet_server_port() FROM kv WHERE k = $1";
const INSTANT: &str = "2024-01-15 12:00:00+00";
const KATHMANDU: &str = "2024-01-15 17:45:00+05:45";
const POOL_WORKERS: i32 = 10;
const POOL_OPS: i32 = 50;
const DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct StepError(String);

impl From<sqlx::Error> for StepError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(d) => {
                StepError(format!("{e} (SQLSTATE {})", d.code().unwrap_or_default()))
            }
            _ => StepError(format!("{e}")),
        }
    }
}

impl From<String> for StepError {
    fn from(e: String) -> Self {
        StepError(e)
    }
}

type StepResult = Result<(), StepError>;

macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err(StepError(format!($($arg)+)));
        }
    };
}

fn expect_eq<T: PartialEq + std::fmt::Debug>(got: T, want: T, what: &str) -> StepResult {
    ensure!(got == want, "{what}: got {got:?}, want {want:?}");
    Ok(())
}

fn sqlstate(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(d) => d.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// What every sqlx step needs to know.
struct Sqlx<'e> {
    env: &'e Env,
    mode: SqlxMode,
    opts: PgConnectOptions,
}

impl Sqlx<'_> {
    fn options(env: &Env, port: u16, mode: SqlxMode) -> PgConnectOptions {
        let opts = PgConnectOptions::new()
            .host("127.0.0.1")
            .port(port)
            .username(cluster::APP_USER)
            .password(cluster::APP_PASSWORD)
            .database(cluster::APP_DB)
            .ssl_mode(PgSslMode::Disable);
        let _ = env;
        match mode {
            SqlxMode::Unnamed => opts.statement_cache_capacity(0),
            _ => opts,
        }
    }

    async fn connect(&self) -> PgConnection {
        PgConnection::connect_with(&self.opts)
            .await
            .expect("sqlx connects through pgrelay")
    }

    /// A query as the mode says (not an explicit statement: see [`Stmts`]).
    fn q<'q>(&self, sql: &'q str) -> Query<'q, Postgres, PgArguments> {
        sqlx::query(sql).persistent(self.mode != SqlxMode::Unnamed)
    }

    fn primary(&self) -> i32 {
        i32::from(self.env.primary_port())
    }

    /// Sorted.
    fn replicas(&self) -> Vec<i32> {
        let mut r: Vec<i32> = self
            .env
            .replica_ports()
            .into_iter()
            .map(i32::from)
            .collect();
        r.sort_unstable();
        r
    }
}

/// Explicit prepared statements, one per SQL text, in `Prepared` mode.
#[derive(Default)]
struct Stmts(HashMap<&'static str, PgStatement<'static>>);

impl Stmts {
    async fn q(
        &mut self,
        ctx: &Sqlx<'_>,
        conn: &mut PgConnection,
        sql: &'static str,
    ) -> Result<Query<'_, Postgres, PgArguments>, StepError> {
        if ctx.mode != SqlxMode::Prepared {
            return Ok(ctx.q(sql));
        }
        if !self.0.contains_key(sql) {
            let st = conn.prepare(sql).await?;
            self.0.insert(sql, st);
        }
        Ok(self.0[sql].query().persistent(true))
    }
}

async fn sqlx_setup(ctx: &Sqlx<'_>, conn: &mut PgConnection) -> StepResult {
    // A multi-statement string: the simple query protocol.
    conn.execute(
        "CREATE TABLE kv (k int PRIMARY KEY, v text);
         CREATE SCHEMA s1;
         CREATE TABLE s1.marker (x text);
         INSERT INTO s1.marker VALUES ('in s1');
         CREATE TABLE public.marker (x text);
         INSERT INTO public.marker VALUES ('in public');
         CREATE TABLE items (id int PRIMARY KEY, name text, price numeric);
         CREATE TABLE pool_t (worker int, i int, v text, PRIMARY KEY (worker, i));",
    )
    .await?;
    ctx.env.wait_for_replay().await;
    Ok(())
}

async fn sqlx_prepared_statements(
    ctx: &Sqlx<'_>,
    conn: &mut PgConnection,
    s: &mut Stmts,
) -> StepResult {
    let mut read_ports = Vec::new();
    for i in 0..60i32 {
        let row = s
            .q(ctx, conn, READ_SQL)
            .await?
            .bind(i)
            .fetch_one(&mut *conn)
            .await?;
        expect_eq(row.try_get::<i32, _>(0)?, i + 1, &format!("read #{i}"))?;
        read_ports.push(row.try_get::<i32, _>(1)?);
        let row = s
            .q(ctx, conn, WRITE_SQL)
            .await?
            .bind(i)
            .bind(format!("v{i}"))
            .fetch_one(&mut *conn)
            .await?;
        expect_eq(
            row.try_get::<i32, _>(0)?,
            ctx.primary(),
            &format!("write #{i} ran on"),
        )?;
        if i % 10 == 0 {
            conn.execute("BEGIN").await?;
            let row = s
                .q(ctx, conn, GET_SQL)
                .await?
                .bind(i)
                .fetch_one(&mut *conn)
                .await?;
            let got: (String, i32) = (row.try_get(0)?, row.try_get(1)?);
            expect_eq(
                got,
                (format!("v{i}"), ctx.primary()),
                &format!("get #{i} in a transaction"),
            )?;
            conn.execute("COMMIT").await?;
        }
    }
    let mut used: Vec<i32> = read_ports.clone();
    used.sort_unstable();
    used.dedup();
    expect_eq(
        used,
        ctx.replicas(),
        &format!("replicas that served the reads (in order: {read_ports:?})"),
    )?;
    // Outside a transaction the same statement runs on replicas, which catch up.
    for i in (0..60i32).step_by(6) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let row = s
                .q(ctx, conn, GET_SQL)
                .await?
                .bind(i)
                .fetch_optional(&mut *conn)
                .await?;
            if let Some(row) = row {
                expect_eq(
                    row.try_get::<String, _>(0)?,
                    format!("v{i}"),
                    &format!("get #{i}"),
                )?;
                let port: i32 = row.try_get(1)?;
                ensure!(
                    ctx.replicas().contains(&port),
                    "get #{i} ran on {port}, not a replica"
                );
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "kv row {i} never showed on a replica"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

async fn sqlx_transactions(ctx: &Sqlx<'_>, conn: &mut PgConnection, s: &mut Stmts) -> StepResult {
    const INS: &str = "INSERT INTO kv VALUES ($1, $2)";
    let mut tx = conn.begin().await?;
    s.q(ctx, &mut tx, INS)
        .await?
        .bind(1000)
        .bind("rolled back")
        .execute(&mut *tx)
        .await?;
    tx.rollback().await?;
    let mut tx = conn.begin().await?;
    s.q(ctx, &mut tx, INS)
        .await?
        .bind(1001)
        .bind("committed")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    let mut tx = conn.begin().await?;
    let port: i32 = s
        .q(ctx, &mut tx, "SELECT inet_server_port()")
        .await?
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
    expect_eq(port, ctx.primary(), "a transaction ran on")?;
    let keys: Vec<i32> = s
        .q(
            ctx,
            &mut tx,
            "SELECT k FROM kv WHERE k = ANY($1) ORDER BY k",
        )
        .await?
        .bind(vec![1000i32, 1001])
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    expect_eq(keys, vec![1001], "rows after rollback + commit")?;
    tx.commit().await?;
    // An error aborts the transaction; rolling back recovers.
    let mut tx = conn.begin().await?;
    let err = s
        .q(ctx, &mut tx, INS)
        .await?
        .bind(1001)
        .bind("duplicate")
        .execute(&mut *tx)
        .await
        .err();
    expect_eq(
        err.as_ref().and_then(sqlstate).as_deref(),
        Some("23505"),
        "duplicate key",
    )?;
    let err = tx.execute("SELECT 1").await.err();
    expect_eq(
        err.as_ref().and_then(sqlstate).as_deref(),
        Some("25P02"),
        "statement in an aborted transaction",
    )?;
    tx.rollback().await?;
    let n: i32 = s
        .q(ctx, conn, "SELECT $1::int")
        .await?
        .bind(7)
        .fetch_one(&mut *conn)
        .await?
        .get(0);
    expect_eq(n, 7, "after rollback")
}

fn items_text() -> String {
    (1..=2000)
        .map(|i| format!("{i}\titem {i}\\twith tab\t{}.{:02}\n", i / 100, i % 100))
        .collect()
}

async fn sqlx_copy_out(conn: &mut PgConnection, sql: &str) -> Result<String, StepError> {
    let bytes = conn
        .copy_out_raw(sql)
        .await?
        .try_fold(Vec::new(), |mut acc, chunk| async move {
            acc.extend_from_slice(&chunk);
            Ok(acc)
        })
        .await?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

async fn sqlx_copy(ctx: &Sqlx<'_>, conn: &mut PgConnection, s: &mut Stmts) -> StepResult {
    let data = items_text();
    let mut copy = conn
        .copy_in_raw("COPY items (id, name, price) FROM STDIN")
        .await?;
    for chunk in data.as_bytes().chunks(7000) {
        copy.send(chunk).await?;
    }
    expect_eq(copy.finish().await?, 2000, "COPY FROM rows")?;
    const OUT: &str = "COPY (SELECT id, name, price FROM items ORDER BY id) TO STDOUT";
    let mut tx = conn.begin().await?;
    let got = sqlx_copy_out(&mut tx, OUT).await?;
    tx.commit().await?;
    ensure!(
        got == data,
        "COPY TO in a transaction: {} of {} bytes",
        got.len(),
        data.len()
    );
    ctx.env.wait_for_replay().await;
    let got = sqlx_copy_out(conn, OUT).await?;
    ensure!(
        got == data,
        "COPY TO on a replica: {} of {} bytes",
        got.len(),
        data.len()
    );
    // A failed COPY leaves the session usable.
    let mut copy = conn
        .copy_in_raw("COPY items (id, name, price) FROM STDIN")
        .await?;
    copy.send(b"not-a-number\tx\t1\n".as_slice()).await?;
    let err = copy.finish().await.err();
    expect_eq(
        err.as_ref().and_then(sqlstate).as_deref(),
        Some("22P02"),
        "bad COPY data",
    )?;
    let n: i32 = s
        .q(ctx, conn, "SELECT $1::int")
        .await?
        .bind(8)
        .fetch_one(&mut *conn)
        .await?
        .get(0);
    expect_eq(n, 8, "after a failed COPY")
}

async fn one_text(
    ctx: &Sqlx<'_>,
    conn: &mut PgConnection,
    s: &mut Stmts,
    sql: &'static str,
) -> Result<String, StepError> {
    Ok(s.q(ctx, conn, sql)
        .await?
        .fetch_one(&mut *conn)
        .await?
        .try_get(0)?)
}

async fn sqlx_verify_settings(
    ctx: &Sqlx<'_>,
    conn: &mut PgConnection,
    s: &mut Stmts,
    where_: &str,
) -> StepResult {
    expect_eq(
        one_text(ctx, conn, s, "SHOW search_path").await?,
        "s1, public".into(),
        &format!("search_path {where_}"),
    )?;
    expect_eq(
        one_text(ctx, conn, s, "SHOW TimeZone").await?,
        "Asia/Kathmandu".into(),
        &format!("TimeZone {where_}"),
    )?;
    let t: String = s
        .q(ctx, conn, "SELECT $1::text::timestamptz::text")
        .await?
        .bind(INSTANT)
        .fetch_one(&mut *conn)
        .await?
        .try_get(0)?;
    expect_eq(
        t,
        KATHMANDU.into(),
        &format!("timestamptz rendering {where_}"),
    )?;
    expect_eq(
        one_text(ctx, conn, s, "SELECT x FROM marker").await?,
        "in s1".into(),
        &format!("unqualified table {where_}"),
    )
}

async fn sqlx_settings(ctx: &Sqlx<'_>, conn: &mut PgConnection, s: &mut Stmts) -> StepResult {
    // What a fresh sqlx session sees (sqlx asks for TimeZone=UTC at startup), directly.
    let mut fresh =
        PgConnection::connect_with(&Sqlx::options(ctx.env, ctx.env.primary_port(), ctx.mode))
            .await?;
    let default_path: String = fresh.fetch_one("SHOW search_path").await?.get(0);
    let default_tz: String = fresh.fetch_one("SHOW TimeZone").await?.get(0);
    fresh.close().await?;
    ensure!(
        default_tz != "Asia/Kathmandu",
        "default TimeZone is already Kathmandu"
    );
    s.q(ctx, conn, "SET search_path TO s1, public")
        .await?
        .execute(&mut *conn)
        .await?;
    conn.execute("SET TimeZone TO 'Asia/Kathmandu'").await?;
    sqlx_verify_settings(ctx, conn, s, "right after SET").await?;
    let mut tx = conn.begin().await?;
    tx.execute("INSERT INTO kv VALUES (2000, 'x')").await?;
    sqlx_verify_settings(ctx, &mut tx, s, "inside a transaction").await?;
    tx.commit().await?;
    for i in 0..10 {
        sqlx_verify_settings(ctx, conn, s, &format!("after a transaction (#{i})")).await?;
        let mut tx = conn.begin().await?;
        s.q(ctx, &mut tx, "UPDATE kv SET v = $1 WHERE k = 2000")
            .await?
            .bind(format!("x{i}"))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    }
    let mut tx = conn.begin().await?;
    s.q(ctx, &mut tx, "SET TimeZone TO 'UTC'")
        .await?
        .execute(&mut *tx)
        .await?;
    tx.rollback().await?;
    sqlx_verify_settings(ctx, conn, s, "after a rolled-back SET").await?;
    let mut tx = conn.begin().await?;
    tx.execute("SET LOCAL search_path TO public").await?;
    expect_eq(
        one_text(ctx, &mut tx, s, "SELECT x FROM marker").await?,
        "in public".into(),
        "SET LOCAL search_path",
    )?;
    tx.commit().await?;
    sqlx_verify_settings(ctx, conn, s, "after SET LOCAL").await?;
    let mut other = ctx.connect().await;
    for i in 0..6 {
        let p: String = other.fetch_one("SHOW search_path").await?.get(0);
        expect_eq(p, default_path.clone(), &format!("other session #{i}"))?;
        let tz: String = other.fetch_one("SHOW TimeZone").await?.get(0);
        expect_eq(tz, default_tz.clone(), &format!("other session #{i}"))?;
        let x: String = other.fetch_one("SELECT x FROM marker").await?.get(0);
        expect_eq(x, "in public".into(), &format!("other session #{i}"))?;
    }
    other.close().await?;
    conn.execute("RESET search_path").await?;
    expect_eq(
        one_text(ctx, conn, s, "SHOW search_path").await?,
        default_path,
        "search_path after RESET",
    )?;
    expect_eq(
        one_text(ctx, conn, s, "SELECT x FROM marker").await?,
        "in public".into(),
        "marker after RESET",
    )?;
    expect_eq(
        one_text(ctx, conn, s, "SHOW TimeZone").await?,
        "Asia/Kathmandu".into(),
        "TimeZone after RESET search_path",
    )
}

async fn sqlx_cursors(ctx: &Sqlx<'_>, conn: &mut PgConnection, s: &mut Stmts) -> StepResult {
    let mut tx = conn.begin().await?;
    s.q(
        ctx,
        &mut tx,
        "DECLARE c CURSOR FOR SELECT g FROM generate_series(1, 100) g",
    )
    .await?
    .execute(&mut *tx)
    .await?;
    let mut got = Vec::new();
    loop {
        let rows = s
            .q(ctx, &mut tx, "FETCH 7 FROM c")
            .await?
            .fetch_all(&mut *tx)
            .await?;
        if rows.is_empty() {
            break;
        }
        got.extend(rows.iter().map(|r| r.get::<i32, _>(0)));
    }
    tx.execute("CLOSE c").await?;
    let port: i32 = s
        .q(ctx, &mut tx, "SELECT inet_server_port()")
        .await?
        .fetch_one(&mut *tx)
        .await?
        .get(0);
    tx.commit().await?;
    expect_eq(got, (1..=100).collect::<Vec<i32>>(), "DECLARE/FETCH")?;
    expect_eq(port, ctx.primary(), "cursor transaction on")
}

async fn sqlx_pool(ctx: &Sqlx<'_>) -> StepResult {
    let pool = PgPoolOptions::new()
        .min_connections(POOL_WORKERS as u32)
        .max_connections(POOL_WORKERS as u32)
        .acquire_timeout(DEADLINE)
        .connect_with(ctx.opts.clone())
        .await?;
    let (primary, replicas, persistent) =
        (ctx.primary(), ctx.replicas(), ctx.mode != SqlxMode::Unnamed);
    let workers = (0..POOL_WORKERS).map(|w| {
        let pool = pool.clone();
        let replicas = replicas.clone();
        tokio::spawn(async move {
            let mut errs = Vec::new();
            let mut written = 0i64;
            for i in 0..POOL_OPS {
                let op = async {
                    let q = |sql| sqlx::query(sql).persistent(persistent);
                    match i % 5 {
                        0 | 1 => {
                            let port: i32 = q("INSERT INTO pool_t VALUES ($1, $2, $3) RETURNING inet_server_port()")
                                .bind(w)
                                .bind(i)
                                .bind(format!("w{w}i{i}"))
                                .fetch_one(&pool)
                                .await?
                                .get(0);
                            expect_eq(port, primary, "pool write ran on")?;
                            written += 1;
                        }
                        2 => {
                            let row = q("SELECT $1::int * 2, inet_server_port()")
                                .bind(i)
                                .fetch_one(&pool)
                                .await?;
                            expect_eq(row.get::<i32, _>(0), i * 2, "pool read")?;
                            let port: i32 = row.get(1);
                            ensure!(replicas.contains(&port), "pool read ran on {port}");
                        }
                        3 => {
                            let mut tx = pool.begin().await?;
                            let v: String = q("UPDATE pool_t SET v = v || '!' WHERE worker = $1 AND i = $2 RETURNING v")
                                .bind(w)
                                .bind(i - 2)
                                .fetch_one(&mut *tx)
                                .await?
                                .get(0);
                            expect_eq(v, format!("w{w}i{}!", i - 2), "pool update")?;
                            let n: i64 = q("SELECT count(*) FROM pool_t WHERE worker = $1")
                                .bind(w)
                                .fetch_one(&mut *tx)
                                .await?
                                .get(0);
                            expect_eq(n, written, "own rows in a transaction")?;
                            tx.commit().await?;
                        }
                        _ => {
                            let n: i64 = q("SELECT count(*) FROM pool_t WHERE worker = $1")
                                .bind(w)
                                .fetch_one(&pool)
                                .await?
                                .get(0);
                            ensure!((0..=written).contains(&n), "replica count {n} > written {written}");
                        }
                    }
                    Ok::<(), StepError>(())
                };
                if let Err(e) = op.await {
                    errs.push(format!("worker {w} op {i}: {}", e.0));
                }
            }
            errs
        })
    });
    let mut errs = Vec::new();
    for r in futures::future::join_all(workers).await {
        errs.extend(r.map_err(|e| StepError(format!("worker panicked: {e}")))?);
    }
    ensure!(
        errs.is_empty(),
        "{} errors in the pool workload, e.g. {:?}",
        errs.len(),
        &errs[..errs.len().min(3)]
    );
    let mut tx = pool.begin().await?;
    let n: i64 = tx.fetch_one("SELECT count(*) FROM pool_t").await?.get(0);
    tx.commit().await?;
    pool.close().await;
    expect_eq(
        n,
        i64::from(POOL_WORKERS * POOL_OPS * 2 / 5),
        "rows written by the pool",
    )
}

/// Runs the sqlx steps in order; a failed step is reported and the next ones still run
/// (on a fresh connection), so one run shows every failure.
async fn run_sqlx(mode: SqlxMode) {
    let env = start_with(ClusterConfig::default(), eventual).await;
    let ctx = Sqlx {
        env: &env,
        mode,
        opts: Sqlx::options(&env, env.port(), mode),
    };
    let started = Instant::now();
    let mut failures: Vec<String> = Vec::new();
    let mut conn = ctx.connect().await;
    let mut stmts = Stmts::default();
    macro_rules! step {
        ($name:expr, $fut:expr) => {{
            eprintln!("[sqlx {mode:?}] {}", $name);
            if let Err(e) = $fut.await {
                let line = format!("FAILED: sqlx ({mode:?}) at step '{}': {}", $name, e.0);
                eprintln!("{line}");
                failures.push(line);
                conn = ctx.connect().await;
                stmts.0.clear();
            }
        }};
    }
    step!("connect and create tables", sqlx_setup(&ctx, &mut conn));
    if failures.is_empty() {
        step!(
            "prepared statements reused across reads and writes",
            sqlx_prepared_statements(&ctx, &mut conn, &mut stmts)
        );
        step!(
            "transactions: commit, rollback, errors",
            sqlx_transactions(&ctx, &mut conn, &mut stmts)
        );
        step!("COPY in and out", sqlx_copy(&ctx, &mut conn, &mut stmts));
        step!(
            "SET search_path and TimeZone",
            sqlx_settings(&ctx, &mut conn, &mut stmts)
        );
        step!(
            "cursor in a transaction",
            sqlx_cursors(&ctx, &mut conn, &mut stmts)
        );
        // sqlx 0.8 has no cancel API (PgConnection keeps the BackendKeyData unused), so
        // there is nothing of sqlx's own to cancel with; tokio-postgres covers cancel in
        // clients.rs, and every other driver here does.
        eprintln!("[sqlx {mode:?}] cancel: not supported by sqlx, skipped");
        step!(
            format!("pool of {POOL_WORKERS} x {POOL_OPS} mixed operations"),
            sqlx_pool(&ctx)
        );
    }
    let _ = conn.close().await;
    assert!(
        failures.is_empty(),
        "sqlx ({mode:?}): {} steps failed in {:?}:\n{}",
        failures.len(),
        started.elapsed(),
        failures.join("\n")
    );
    eprintln!(
        "[sqlx {mode:?}] all steps passed in {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlx_normal() {
    run_sqlx(SqlxMode::Normal).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlx_prepared() {
    run_sqlx(SqlxMode::Prepared).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlx_unnamed_statements() {
    run_sqlx(SqlxMode::Unnamed).await;
}
