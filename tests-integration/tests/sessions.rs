//! Drop-in session semantics over pooled backends: whatever backend serves a session's
//! statement, the session sees its own settings, prepared statements, cursors, pins and
//! ParameterStatus messages — and nobody else's — exactly as on a PostgreSQL connection
//! of its own.

use cluster::ClusterConfig;
use futures::{FutureExt, StreamExt};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tests_integration::raw::{message, startup_packet, Msg, Raw};
use tests_integration::{eventually, start_with, trust, Env};
use tokio_postgres::{AsyncMessage, Client, NoTls, Row, SimpleQueryMessage};

/// The longest any single step may take before the test calls it a hang.
const STEP: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------

/// Await `fut`, or fail the test with `what` after [`STEP`]: a proxy that loses an answer
/// must make the test fail, not hang.
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(STEP, fut).await {
        Ok(v) => v,
        Err(_) => panic!("no answer within {STEP:?}: {what}"),
    }
}

fn describe_err(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

async fn exec(c: &Client, sql: &str) {
    within(sql, c.batch_execute(sql))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", describe_err(&e)));
}

async fn one(c: &Client, sql: &str) -> Row {
    within(sql, c.query_one(sql, &[]))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", describe_err(&e)))
}

/// First column of the first row of a simple-protocol query.
async fn simple_value(c: &Client, sql: &str) -> Option<String> {
    let msgs = within(sql, c.simple_query(sql))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", describe_err(&e)));
    msgs.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_string)),
        _ => None,
    })?
}

fn sqlstate(e: &tokio_postgres::Error) -> Option<String> {
    e.code().map(|c| c.code().to_string())
}

fn pinned(env: &Env) -> i64 {
    env.proxy.shared.pinned_sessions.load(Ordering::Relaxed)
}

async fn wait_pinned(env: &Env, want: i64, what: &str) {
    eventually(Duration::from_secs(5), what, || async {
        (pinned(env) == want).then_some(())
    })
    .await;
}

/// Run SQL as the superuser on node `i`, database `app`.
fn superuser_sql(env: &Env, i: usize, sql: &str) -> String {
    tokio::task::block_in_place(|| env.cluster.psql_db(i, cluster::APP_DB, sql))
        .unwrap_or_else(|e| panic!("superuser SQL {sql:?}: {e}"))
}

// ---------------------------------------------------------------------------------------
// Raw protocol helpers
// ---------------------------------------------------------------------------------------

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

fn query_msg(sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, sql);
    message(b'Q', &b)
}

fn parse_msg(name: &str, sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, name);
    cstr(&mut b, sql);
    b.extend_from_slice(&0i16.to_be_bytes());
    message(b'P', &b)
}

/// Bind with text-format parameters (None = NULL) and text results.
fn bind_msg(portal: &str, stmt: &str, params: &[Option<&str>]) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal);
    cstr(&mut b, stmt);
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        match p {
            Some(v) => {
                b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                b.extend_from_slice(v.as_bytes());
            }
            None => b.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    b.extend_from_slice(&0i16.to_be_bytes());
    message(b'B', &b)
}

fn execute_msg(portal: &str, max_rows: i32) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal);
    b.extend_from_slice(&max_rows.to_be_bytes());
    message(b'E', &b)
}

fn describe_msg(kind: u8, name: &str) -> Vec<u8> {
    let mut b = vec![kind];
    cstr(&mut b, name);
    message(b'D', &b)
}

fn close_msg(kind: u8, name: &str) -> Vec<u8> {
    let mut b = vec![kind];
    cstr(&mut b, name);
    message(b'C', &b)
}

fn sync_msg() -> Vec<u8> {
    message(b'S', &[])
}

fn flush_msg() -> Vec<u8> {
    message(b'H', &[])
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

/// Text columns of a DataRow.
fn data_row(m: &Msg) -> Vec<Option<String>> {
    assert_eq!(m.tag, b'D', "not a DataRow: {}", show_msg(m));
    let b = &m.body;
    let n = i16::from_be_bytes([b[0], b[1]]) as usize;
    let mut at = 2;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let len = i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        at += 4;
        if len < 0 {
            out.push(None);
        } else {
            let len = len as usize;
            out.push(Some(String::from_utf8_lossy(&b[at..at + len]).into_owned()));
            at += len;
        }
    }
    out
}

/// (name, type oid) of each RowDescription field.
fn row_description(m: &Msg) -> Vec<(String, u32)> {
    assert_eq!(m.tag, b'T', "not a RowDescription: {}", show_msg(m));
    let b = &m.body;
    let n = i16::from_be_bytes([b[0], b[1]]) as usize;
    let mut at = 2;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let end = at + b[at..].iter().position(|&c| c == 0).expect("field name");
        let name = String::from_utf8_lossy(&b[at..end]).into_owned();
        at = end + 1;
        let oid = u32::from_be_bytes([b[at + 6], b[at + 7], b[at + 8], b[at + 9]]);
        at += 18;
        out.push((name, oid));
    }
    out
}

/// Parameter type oids of a ParameterDescription.
fn parameter_description(m: &Msg) -> Vec<u32> {
    assert_eq!(m.tag, b't', "not a ParameterDescription: {}", show_msg(m));
    let b = &m.body;
    let n = i16::from_be_bytes([b[0], b[1]]) as usize;
    (0..n)
        .map(|i| {
            let at = 2 + 4 * i;
            u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
        })
        .collect()
}

fn parameter_status(m: &Msg) -> (String, String) {
    let mut parts = m.body.split(|&c| c == 0);
    let k = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let v = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    (k, v)
}

fn command_tag(m: &Msg) -> String {
    String::from_utf8_lossy(m.body.strip_suffix(&[0]).unwrap_or(&m.body)).into_owned()
}

fn show_msg(m: &Msg) -> String {
    match m.tag {
        b'E' | b'N' => format!(
            "{}({} {})",
            m.tag as char,
            m.sqlstate().unwrap_or_default(),
            m.field(b'M').unwrap_or_default()
        ),
        b'S' => format!("S{:?}", parameter_status(m)),
        b'C' => format!("C({})", command_tag(m)),
        b'Z' => format!("Z({})", m.body.first().map(|&c| c as char).unwrap_or('?')),
        b'D' => format!("D{:?}", data_row(m)),
        t => format!("{}", t as char),
    }
}

fn show_msgs(ms: &[Msg]) -> String {
    ms.iter().map(show_msg).collect::<Vec<_>>().join(" ")
}

fn tags(ms: &[Msg]) -> String {
    ms.iter().map(|m| m.tag as char).collect()
}

fn rows(ms: &[Msg]) -> Vec<Vec<Option<String>>> {
    ms.iter().filter(|m| m.tag == b'D').map(data_row).collect()
}

fn errors(ms: &[Msg]) -> Vec<&Msg> {
    ms.iter().filter(|m| m.tag == b'E').collect()
}

/// Send and read up to ReadyForQuery, which must come.
async fn round(raw: &mut Raw, bytes: &[u8], what: &str) -> Vec<Msg> {
    raw.send(bytes).await;
    let ms = raw.until_ready().await;
    assert!(
        ms.last().is_some_and(|m| m.tag == b'Z'),
        "{what}: no ReadyForQuery (connection closed or 10 s without an answer); got {}",
        show_msgs(&ms)
    );
    ms
}

/// A simple query that must succeed.
async fn raw_ok(raw: &mut Raw, sql: &str) -> Vec<Msg> {
    let ms = round(raw, &query_msg(sql), sql).await;
    assert!(errors(&ms).is_empty(), "{sql}: {}", show_msgs(&ms));
    ms
}

/// Bind + Execute + Sync of a named statement that must succeed; its rows.
async fn raw_run(raw: &mut Raw, stmt: &str, params: &[Option<&str>]) -> Vec<Vec<Option<String>>> {
    let bytes = cat(&[bind_msg("", stmt, params), execute_msg("", 0), sync_msg()]);
    let ms = round(raw, &bytes, stmt).await;
    assert!(
        errors(&ms).is_empty(),
        "executing statement {stmt:?} with {params:?}: {}",
        show_msgs(&ms)
    );
    rows(&ms)
}

/// Connect and log in (trust), returning the login messages too.
async fn raw_login(port: u16) -> (Raw, Vec<Msg>) {
    let mut raw = Raw::connect(port).await;
    raw.send(&startup_packet(&[
        ("user", cluster::APP_USER),
        ("database", cluster::APP_DB),
    ]))
    .await;
    let mut msgs = Vec::new();
    loop {
        let m = raw.recv().await.expect("login answer");
        assert_ne!(m.tag, b'E', "login failed: {}", show_msg(&m));
        let done = m.tag == b'Z';
        msgs.push(m);
        if done {
            return (raw, msgs);
        }
    }
}

fn params_of(ms: &[Msg]) -> Vec<(String, String)> {
    ms.iter()
        .filter(|m| m.tag == b'S')
        .map(parameter_status)
        .collect()
}

fn sqlx_options(env: &Env) -> sqlx::postgres::PgConnectOptions {
    sqlx::postgres::PgConnectOptions::new()
        .host("127.0.0.1")
        .port(env.port())
        .username(cluster::APP_USER)
        .password(cluster::APP_PASSWORD)
        .database(cluster::APP_DB)
        .ssl_mode(sqlx::postgres::PgSslMode::Disable)
}

// ---------------------------------------------------------------------------------------
// 1. Settings follow the session
// ---------------------------------------------------------------------------------------

/// What a session sees of its settings on whichever backend ran the statement.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    search_path: String,
    timezone: String,
    /// A fixed instant printed in the session's TimeZone: the setting is in effect.
    ts: String,
    statement_timeout: String,
    application_name: String,
    tenant: String,
    user: String,
    /// `marker` resolved through the session's search_path.
    marker: String,
}

const SEEN_COLS: &str = "current_setting('search_path'), current_setting('TimeZone'), \
    '2020-01-01 00:00:00+00'::timestamptz::text, current_setting('statement_timeout'), \
    current_setting('application_name'), coalesce(current_setting('myapp.tenant', true), ''), \
    current_user::text, (SELECT v FROM marker LIMIT 1), inet_server_port(), pg_backend_pid()";

fn seen_of(row: &Row) -> (Seen, (u16, i32)) {
    let s = |i: usize| row.get::<_, String>(i);
    (
        Seen {
            search_path: s(0),
            timezone: s(1),
            ts: s(2),
            statement_timeout: s(3),
            application_name: s(4),
            tenant: s(5),
            user: s(6),
            marker: s(7),
        },
        (row.get::<_, i32>(8) as u16, row.get::<_, i32>(9)),
    )
}

struct Probe<'a> {
    name: &'static str,
    c: &'a Client,
    backends: HashSet<(u16, i32)>,
    statements: usize,
}

impl<'a> Probe<'a> {
    fn new(name: &'static str, c: &'a Client) -> Self {
        Probe {
            name,
            c,
            backends: HashSet::new(),
            statements: 0,
        }
    }

    async fn exec(&mut self, sql: &str) {
        self.statements += 1;
        let what = format!("session {}: {sql}", self.name);
        within(&what, self.c.batch_execute(sql))
            .await
            .unwrap_or_else(|e| panic!("{what}: {}", describe_err(&e)));
    }

    /// A read outside a transaction (a replica), or inside the current transaction.
    async fn read(&mut self) -> (Seen, u16) {
        self.statements += 1;
        let sql = format!("SELECT {SEEN_COLS}");
        let what = format!("session {}: read", self.name);
        let row = within(&what, self.c.query_one(&sql, &[]))
            .await
            .unwrap_or_else(|e| panic!("{what}: {}", describe_err(&e)));
        let (seen, backend) = seen_of(&row);
        self.backends.insert(backend);
        (seen, backend.0)
    }

    /// A write (the primary) returning what the session sees there.
    async fn write(&mut self) -> (Seen, u16) {
        self.statements += 1;
        let sql = format!("INSERT INTO public.events (who) VALUES ($1) RETURNING {SEEN_COLS}");
        let what = format!("session {}: write", self.name);
        let row = within(&what, self.c.query_one(&sql, &[&self.name]))
            .await
            .unwrap_or_else(|e| panic!("{what}: {}", describe_err(&e)));
        let (seen, backend) = seen_of(&row);
        self.backends.insert(backend);
        (seen, backend.0)
    }

    async fn check_read(&mut self, step: &str, want: &Seen) {
        let (got, port) = self.read().await;
        assert_eq!(
            &got, want,
            "session {} after step {step:?}: a read on port {port} saw other settings",
            self.name
        );
    }

    async fn check_write(&mut self, step: &str, want: &Seen) {
        let (got, port) = self.write().await;
        assert_eq!(
            &got, want,
            "session {} after step {step:?}: a write on port {port} saw other settings",
            self.name
        );
    }

    /// A read, a write and a transaction with both: the session's values everywhere.
    async fn check_all(&mut self, step: &str, want: &Seen) {
        self.check_read(step, want).await;
        self.check_write(step, want).await;
        self.exec("BEGIN").await;
        self.check_read(&format!("{step} (in a transaction)"), want)
            .await;
        self.check_write(&format!("{step} (in a transaction)"), want)
            .await;
        self.exec("COMMIT").await;
    }

    async fn show(&mut self, name: &str) -> String {
        self.statements += 1;
        simple_value(self.c, &format!("SHOW {name}"))
            .await
            .unwrap_or_default()
    }
}

/// The bystanders: `b` never sets anything, `c` has its own values.
async fn bystanders(step: &str, b: &mut Probe<'_>, c: &mut Probe<'_>, bw: &Seen, cw: &Seen) {
    let step = format!("{step} (by the other session)");
    b.check_read(&step, bw).await;
    c.check_read(&step, cw).await;
    b.check_write(&step, bw).await;
    c.check_write(&step, cw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_follow_the_session() {
    let env = start_with(ClusterConfig::default(), |c| c.pool.size = 2).await;
    let setup = env.connect().await;
    exec(
        &setup,
        "CREATE SCHEMA s1; CREATE SCHEMA s2; \
         CREATE TABLE s1.marker (v text); INSERT INTO s1.marker VALUES ('s1'); \
         CREATE TABLE s2.marker (v text); INSERT INTO s2.marker VALUES ('s2'); \
         CREATE TABLE public.marker (v text); INSERT INTO public.marker VALUES ('public'); \
         CREATE TABLE public.events (id serial PRIMARY KEY, who text)",
    )
    .await;
    drop(setup);
    superuser_sql(
        &env,
        0,
        "CREATE ROLE tenant_role NOLOGIN; GRANT tenant_role TO app; \
         GRANT USAGE ON SCHEMA s1, s2 TO tenant_role; \
         GRANT SELECT ON ALL TABLES IN SCHEMA s1, s2, public TO tenant_role; \
         GRANT INSERT ON public.events TO tenant_role; \
         GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO tenant_role",
    );
    env.wait_for_replay().await;

    // The defaults, as a connection of its own to PostgreSQL sees them.
    let direct = env.connect_direct(0).await;
    let (defaults, _) = seen_of(&one(&direct, &format!("SELECT {SEEN_COLS}")).await);
    assert_eq!(defaults.marker, "public");
    assert_eq!(defaults.user, cluster::APP_USER);
    let can_set_role = one(
        &direct,
        "SELECT pg_has_role(current_user, 'tenant_role', 'MEMBER')",
    )
    .await
    .get::<_, bool>(0);
    eprintln!("defaults: {defaults:?}; app may SET ROLE tenant_role: {can_set_role}");

    let (ca, cb, cc) = (
        env.connect().await,
        env.connect().await,
        env.connect().await,
    );
    let (mut a, mut b, mut c) = (
        Probe::new("A", &ca),
        Probe::new("B", &cb),
        Probe::new("C", &cc),
    );
    b.check_all("start", &defaults).await;

    // C has values of its own.
    c.exec("SET search_path = s2, public").await;
    c.exec("SET TimeZone = 'America/New_York'").await;
    c.exec("SET statement_timeout = '3s'").await;
    c.exec("SET application_name = 'x2'").await;
    c.exec("SET myapp.tenant = 't2'").await;
    let cw = Seen {
        search_path: "s2, public".into(),
        timezone: "America/New_York".into(),
        ts: "2019-12-31 19:00:00-05".into(),
        statement_timeout: "3s".into(),
        application_name: "x2".into(),
        tenant: "t2".into(),
        user: cluster::APP_USER.into(),
        marker: "s2".into(),
    };
    c.check_all("C's SETs", &cw).await;
    b.check_all("C's SETs", &defaults).await;

    // A's settings.
    a.exec("SET search_path = s1, public").await;
    a.exec("SET TimeZone = 'Asia/Tokyo'").await;
    a.exec("SET statement_timeout = '7s'").await;
    a.statements += 1;
    let app = one(&ca, "SELECT set_config('application_name', 'x1', false)").await;
    assert_eq!(app.get::<_, String>(0), "x1");
    a.exec("SET myapp.tenant = 't1'").await;
    let mut aw = Seen {
        search_path: "s1, public".into(),
        timezone: "Asia/Tokyo".into(),
        ts: "2020-01-01 09:00:00+09".into(),
        statement_timeout: "7s".into(),
        application_name: "x1".into(),
        tenant: "t1".into(),
        user: cluster::APP_USER.into(),
        marker: "s1".into(),
    };
    let mut a_ports = HashSet::new();

    // Reads (replicas), writes (primary), transactions and SHOW, alternating, with the
    // other sessions using the same few backends in between.
    for i in 0..32 {
        let step = format!("A's SETs, iteration {i}");
        match i % 4 {
            0 => {
                let (got, port) = a.read().await;
                a_ports.insert(port);
                assert_eq!(got, aw, "A's read on port {port}, {step}");
            }
            1 => {
                let (got, port) = a.write().await;
                a_ports.insert(port);
                assert_eq!(got, aw, "A's write on port {port}, {step}");
            }
            2 => {
                a.exec("BEGIN").await;
                a.check_read(&step, &aw).await;
                a.check_write(&step, &aw).await;
                a.exec("COMMIT").await;
            }
            _ => {
                assert_eq!(a.show("search_path").await, aw.search_path, "{step}");
                assert_eq!(a.show("TimeZone").await, aw.timezone, "{step}");
                assert_eq!(
                    a.show("statement_timeout").await,
                    aw.statement_timeout,
                    "{step}"
                );
                a.exec("BEGIN READ ONLY").await;
                a.check_read(&format!("{step} (read-only transaction)"), &aw)
                    .await;
                a.exec("COMMIT").await;
            }
        }
        bystanders(&step, &mut b, &mut c, &defaults, &cw).await;
    }
    assert!(
        a_ports.len() >= 2,
        "A's statements ran on one node only ({a_ports:?}): its settings pinned it"
    );

    // SET LOCAL: visible inside its transaction only.
    a.exec("BEGIN").await;
    a.exec("SET LOCAL TimeZone = 'Europe/Paris'").await;
    a.exec("SET LOCAL myapp.tenant = 'local'").await;
    let local = Seen {
        timezone: "Europe/Paris".into(),
        ts: "2020-01-01 01:00:00+01".into(),
        tenant: "local".into(),
        ..aw.clone()
    };
    a.check_read("SET LOCAL, inside", &local).await;
    a.check_write("SET LOCAL, inside", &local).await;
    a.exec("COMMIT").await;
    a.check_all("SET LOCAL, after COMMIT", &aw).await;
    bystanders("A's SET LOCAL", &mut b, &mut c, &defaults, &cw).await;

    // SET in a transaction that is rolled back is not kept.
    a.exec("BEGIN").await;
    a.exec("SET search_path = s2, public").await;
    a.exec("SET myapp.tenant = 'rolled-back'").await;
    let inside = Seen {
        search_path: "s2, public".into(),
        marker: "s2".into(),
        tenant: "rolled-back".into(),
        ..aw.clone()
    };
    a.check_read("SET in a rolled-back transaction, inside", &inside)
        .await;
    a.check_write("SET in a rolled-back transaction, inside", &inside)
        .await;
    a.exec("ROLLBACK").await;
    a.check_all("SET in a transaction, after ROLLBACK", &aw)
        .await;
    // Same in a transaction that failed.
    a.exec("BEGIN").await;
    a.exec("SET TimeZone = 'UTC'").await;
    let err = within("1/0", ca.batch_execute("SELECT 1/0"))
        .await
        .expect_err("division by zero");
    assert_eq!(sqlstate(&err).as_deref(), Some("22012"));
    a.exec("ROLLBACK").await;
    a.check_all("SET in a failed transaction, after ROLLBACK", &aw)
        .await;
    bystanders("A's rolled-back SETs", &mut b, &mut c, &defaults, &cw).await;

    // SET in a committed transaction is kept.
    a.exec("BEGIN").await;
    a.exec("SET myapp.tenant = 't1b'").await;
    a.exec("SET statement_timeout = '8s'").await;
    a.exec("COMMIT").await;
    aw.tenant = "t1b".into();
    aw.statement_timeout = "8s".into();
    a.check_all("SET in a committed transaction", &aw).await;
    bystanders("A's committed SETs", &mut b, &mut c, &defaults, &cw).await;

    // SET ROLE / RESET ROLE.
    if can_set_role {
        a.exec("SET ROLE tenant_role").await;
        let as_role = Seen {
            user: "tenant_role".into(),
            ..aw.clone()
        };
        a.check_all("SET ROLE", &as_role).await;
        bystanders("A's SET ROLE", &mut b, &mut c, &defaults, &cw).await;
        a.exec("RESET ROLE").await;
        a.check_all("RESET ROLE", &aw).await;
        bystanders("A's RESET ROLE", &mut b, &mut c, &defaults, &cw).await;
    }

    // RESET search_path.
    a.exec("RESET search_path").await;
    aw.search_path = defaults.search_path.clone();
    aw.marker = "public".into();
    a.check_all("RESET search_path", &aw).await;
    bystanders("A's RESET search_path", &mut b, &mut c, &defaults, &cw).await;

    // RESET ALL: back to every default.
    a.exec("RESET ALL").await;
    a.check_all("RESET ALL", &defaults).await;
    assert_eq!(a.show("TimeZone").await, defaults.timezone);
    bystanders("A's RESET ALL", &mut b, &mut c, &defaults, &cw).await;
    c.check_all("end", &cw).await;

    let shared: HashSet<_> = a
        .backends
        .iter()
        .filter(|k| b.backends.contains(k) || c.backends.contains(k))
        .collect();
    assert!(
        !shared.is_empty(),
        "the sessions never shared a backend, so nothing was tested: A {:?}, B {:?}, C {:?}",
        a.backends,
        b.backends,
        c.backends
    );
    eprintln!(
        "statements: A {}, B {}, C {}; A used {} backends, {} of them shared with B or C",
        a.statements,
        b.statements,
        c.statements,
        a.backends.len(),
        shared.len()
    );
    assert!(a.statements >= 30);
}

// ---------------------------------------------------------------------------------------
// 2. ParameterStatus
// ---------------------------------------------------------------------------------------

/// A raw session that keeps the client's view of the reported parameters.
struct Reported {
    raw: Raw,
    name: &'static str,
    view: HashMap<String, String>,
}

impl Reported {
    async fn login(name: &'static str, port: u16) -> Reported {
        let (raw, ms) = raw_login(port).await;
        Reported {
            raw,
            name,
            view: params_of(&ms).into_iter().collect(),
        }
    }

    /// Run `sql` and return the ParameterStatus messages it brought.
    async fn run(&mut self, sql: &str) -> (Vec<(String, String)>, Vec<Msg>) {
        let ms = raw_ok(&mut self.raw, sql).await;
        let ps = params_of(&ms);
        for (k, v) in &ps {
            self.view.insert(k.clone(), v.clone());
        }
        (ps, ms)
    }

    /// A statement that changes no setting: no ParameterStatus, as from PostgreSQL.
    async fn quiet(&mut self, sql: &str) -> Vec<Msg> {
        let (ps, ms) = self.run(sql).await;
        assert!(
            ps.is_empty(),
            "session {} got ParameterStatus {ps:?} for {sql:?}, which changes no setting",
            self.name
        );
        ms
    }

    async fn show(&mut self, name: &str) -> String {
        let ms = self.quiet(&format!("SHOW {name}")).await;
        rows(&ms)[0][0].clone().unwrap_or_default()
    }

    /// The client's view of each reported parameter matches the session's real value.
    async fn view_is_true(&mut self, names: &[&str]) {
        for n in names {
            let actual = self.show(n).await;
            assert_eq!(
                self.view.get(*n),
                Some(&actual),
                "session {}: the last ParameterStatus for {n} disagrees with SHOW {n}",
                self.name
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameter_status_is_the_clients_own() {
    // One backend per node: every session shares them.
    let env = start_with(
        ClusterConfig {
            replicas: 1,
            ..Default::default()
        },
        |c| {
            trust(c);
            c.pool.size = 1;
        },
    )
    .await;
    let port = env.port();
    let mut quiet = Reported::login("quiet", port).await;
    let login_view = quiet.view.clone();
    for p in ["TimeZone", "DateStyle", "application_name"] {
        assert!(
            login_view.contains_key(p),
            "login reports {p}: {login_view:?}"
        );
    }
    let mut setter = Reported::login("setter", port).await;
    assert_eq!(setter.view, login_view);
    setter.quiet("CREATE TABLE pst (x int)").await;
    env.wait_for_replay().await;

    async fn quiet_work(q: &mut Reported, login: &HashMap<String, String>, step: &str) {
        for sql in [
            "SELECT 1",
            "INSERT INTO pst VALUES (1)",
            "BEGIN",
            "SELECT now()::text",
            "COMMIT",
            "BEGIN READ ONLY",
            "SELECT 2",
            "COMMIT",
            "SELECT 3",
        ] {
            q.quiet(sql).await;
        }
        for p in ["TimeZone", "DateStyle", "application_name"] {
            assert_eq!(
                Some(&q.show(p).await),
                login.get(p),
                "the quiet session's {p} after {step}"
            );
        }
    }

    async fn expect_status(
        s: &mut Reported,
        sql: &str,
        want: &[(&str, &str)],
    ) -> Vec<(String, String)> {
        let (ps, ms) = s.run(sql).await;
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(ps, want, "ParameterStatus for {sql:?}: {}", show_msgs(&ms));
        ps
    }

    quiet_work(&mut quiet, &login_view, "login").await;

    expect_status(
        &mut setter,
        "SET TimeZone = 'Pacific/Auckland'",
        &[("TimeZone", "Pacific/Auckland")],
    )
    .await;
    quiet_work(&mut quiet, &login_view, "the setter's SET TimeZone").await;
    expect_status(
        &mut setter,
        "SET DateStyle = 'SQL, DMY'",
        &[("DateStyle", "SQL, DMY")],
    )
    .await;
    expect_status(
        &mut setter,
        "SET application_name = 'setter'",
        &[("application_name", "setter")],
    )
    .await;
    quiet_work(&mut quiet, &login_view, "the setter's SET DateStyle").await;
    expect_status(
        &mut setter,
        "SELECT set_config('application_name', 'setter2', false)",
        &[("application_name", "setter2")],
    )
    .await;

    // The setter's own statements on every backend bring no further ParameterStatus.
    // (A transaction runs as one step: with pool.size 1, the quiet session would wait
    // for the primary's only backend.)
    for step in [
        &["SELECT 1"][..],
        &["INSERT INTO pst VALUES (2)"],
        &["SELECT 2"],
        &["BEGIN", "SELECT 3", "COMMIT"],
        &["SELECT 4"],
    ] {
        for sql in step {
            setter.quiet(sql).await;
        }
        quiet.quiet("SELECT 5").await;
        quiet.quiet("INSERT INTO pst VALUES (3)").await;
    }
    setter
        .view_is_true(&["TimeZone", "DateStyle", "application_name"])
        .await;
    assert_eq!(setter.view["TimeZone"], "Pacific/Auckland");
    quiet_work(&mut quiet, &login_view, "the setter's statements").await;

    // RESET, and a SET rolled back.
    expect_status(
        &mut setter,
        "RESET TimeZone",
        &[("TimeZone", login_view["TimeZone"].as_str())],
    )
    .await;
    quiet_work(&mut quiet, &login_view, "the setter's RESET").await;
    setter.quiet("BEGIN").await;
    expect_status(
        &mut setter,
        "SET TimeZone = 'Europe/Berlin'",
        &[("TimeZone", "Europe/Berlin")],
    )
    .await;
    setter.run("ROLLBACK").await;
    setter
        .view_is_true(&["TimeZone", "DateStyle", "application_name"])
        .await;
    assert_eq!(setter.view["TimeZone"], login_view["TimeZone"]);
    expect_status(
        &mut setter,
        "SET DateStyle = 'German'",
        &[("DateStyle", "German, DMY")],
    )
    .await;
    quiet_work(&mut quiet, &login_view, "the setter's SET DateStyle German").await;
    setter
        .view_is_true(&["TimeZone", "DateStyle", "application_name"])
        .await;

    // A third session with its own values, interleaved with the quiet one.
    let mut third = Reported::login("third", port).await;
    expect_status(
        &mut third,
        "SET TimeZone = 'Asia/Kolkata'",
        &[("TimeZone", "Asia/Kolkata")],
    )
    .await;
    for _ in 0..5 {
        quiet.quiet("SELECT 6").await;
        third.quiet("SELECT 7").await;
        setter.quiet("INSERT INTO pst VALUES (4)").await;
        quiet.quiet("INSERT INTO pst VALUES (5)").await;
    }
    third.view_is_true(&["TimeZone", "DateStyle"]).await;
    setter
        .view_is_true(&["TimeZone", "DateStyle", "application_name"])
        .await;
    quiet_work(&mut quiet, &login_view, "everything").await;
    assert_eq!(
        quiet.view, login_view,
        "the quiet session's reported parameters"
    );
}

// ---------------------------------------------------------------------------------------
// 3. Prepared statements
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_with_same_names_never_collide() {
    let env = start_with(ClusterConfig::default(), |c| {
        trust(c);
        c.pool.size = 2;
    })
    .await;
    let port = env.port();
    let setup = env.connect().await;
    exec(&setup, "CREATE TABLE pt (session int, n int)").await;
    env.wait_for_replay().await;

    // Raw sessions: every one names its statements "s1" and "s2", each with its own SQL
    // (even sessions return text, odd ones integers).
    let raw_sessions = (0..20).map(|i| async move {
        let mut raw = Raw::login(port, cluster::APP_USER, cluster::APP_DB).await;
        let read_sql = if i % 2 == 0 {
            format!("SELECT 'r{i}:' || $1::text AS v, inet_server_port()")
        } else {
            format!("SELECT $1::int * 100 + {i} AS v, inet_server_port()")
        };
        let write_sql = format!(
            "INSERT INTO pt VALUES ({i}, $1::int) RETURNING session * 1000 + n, inet_server_port()"
        );
        let ms = round(
            &mut raw,
            &cat(&[
                parse_msg("s1", &read_sql),
                parse_msg("s2", &write_sql),
                sync_msg(),
            ]),
            "parse s1, s2",
        )
        .await;
        assert_eq!(tags(&ms), "11Z", "session {i} parse: {}", show_msgs(&ms));
        let mut ports = HashSet::new();
        for r in 0..8 {
            let arg = r.to_string();
            let want = if i % 2 == 0 {
                format!("r{i}:{r}")
            } else {
                (r * 100 + i).to_string()
            };
            let got = raw_run(&mut raw, "s1", &[Some(&arg)]).await;
            assert_eq!(
                got[0][0].as_deref(),
                Some(want.as_str()),
                "session {i} read {r}"
            );
            ports.insert(got[0][1].clone());
            let got = raw_run(&mut raw, "s2", &[Some(&arg)]).await;
            assert_eq!(
                got[0][0].as_deref(),
                Some((i * 1000 + r).to_string().as_str()),
                "session {i} write {r}"
            );
            if r % 3 == 0 {
                raw_ok(&mut raw, "BEGIN").await;
                let got = raw_run(&mut raw, "s1", &[Some(&arg)]).await;
                assert_eq!(
                    got[0][0].as_deref(),
                    Some(want.as_str()),
                    "session {i} read {r} in tx"
                );
                raw_ok(&mut raw, "COMMIT").await;
            }
        }
        ports
    });
    // sqlx names its statements sqlx_s_1, sqlx_s_2, ... per connection: identical names.
    let opts = sqlx_options(&env);
    let sqlx_sessions = (0..20).map(|i: i32| {
        let opts = opts.clone();
        async move {
            use sqlx::{Connection, Row as _};
            let mut conn = sqlx::PgConnection::connect_with(&opts)
                .await
                .unwrap_or_else(|e| panic!("sqlx session {i} connects: {e}"));
            let read_sql = format!("SELECT $1::int + {i} AS v, '{i}'::text AS who");
            let write_sql = format!("INSERT INTO pt VALUES ({} , $1) RETURNING n - {i}", 100 + i);
            for r in 0..8i32 {
                let row = sqlx::query(&read_sql)
                    .bind(r)
                    .fetch_one(&mut conn)
                    .await
                    .unwrap_or_else(|e| panic!("sqlx session {i} read {r}: {e}"));
                assert_eq!(row.get::<i32, _>(0), r + i, "sqlx session {i} read {r}");
                assert_eq!(row.get::<String, _>(1), i.to_string());
                let row = sqlx::query(&write_sql)
                    .bind(r)
                    .fetch_one(&mut conn)
                    .await
                    .unwrap_or_else(|e| panic!("sqlx session {i} write {r}: {e}"));
                assert_eq!(row.get::<i32, _>(0), r - i, "sqlx session {i} write {r}");
                if r % 3 == 1 {
                    let mut tx = conn.begin().await.expect("begin");
                    let row = sqlx::query(&read_sql)
                        .bind(r)
                        .fetch_one(&mut *tx)
                        .await
                        .unwrap_or_else(|e| panic!("sqlx session {i} read {r} in tx: {e}"));
                    assert_eq!(row.get::<i32, _>(0), r + i);
                    tx.commit().await.expect("commit");
                }
            }
        }
    });
    let (raw_ports, ()) = within(
        "40 sessions with identical statement names",
        futures::future::join(
            futures::future::join_all(raw_sessions),
            futures::future::join_all(sqlx_sessions).map(|_| ()),
        ),
    )
    .await;
    let ports: HashSet<_> = raw_ports.into_iter().flatten().collect();
    eprintln!("raw sessions' reads ran on ports {ports:?}");

    // One session, step by step.
    let mut raw = Raw::login(port, cluster::APP_USER, cluster::APP_DB).await;
    let ms = round(
        &mut raw,
        &cat(&[parse_msg("s1", "SELECT 'first'::text || $1"), sync_msg()]),
        "parse s1",
    )
    .await;
    assert_eq!(tags(&ms), "1Z", "{}", show_msgs(&ms));
    for r in 0..4 {
        let got = raw_run(&mut raw, "s1", &[Some("x")]).await;
        assert_eq!(got[0][0].as_deref(), Some("firstx"), "round {r}");
    }

    // Parse of an existing name: 42P05, the old statement stays, the session too.
    let ms = round(
        &mut raw,
        &cat(&[parse_msg("s1", "SELECT 'dup'::text"), sync_msg()]),
        "duplicate parse",
    )
    .await;
    let errs = errors(&ms);
    assert_eq!(
        errs.first().and_then(|e| e.sqlstate()).as_deref(),
        Some("42P05"),
        "Parse of an existing statement name: {}",
        show_msgs(&ms)
    );
    assert_eq!(tags(&ms), "EZ", "{}", show_msgs(&ms));
    for r in 0..4 {
        let got = raw_run(&mut raw, "s1", &[Some("y")]).await;
        assert_eq!(
            got[0][0].as_deref(),
            Some("firsty"),
            "after 42P05, round {r}"
        );
    }

    // Close, then the name again with other SQL (and another result type).
    let ms = round(
        &mut raw,
        &cat(&[close_msg(b'S', "s1"), sync_msg()]),
        "close",
    )
    .await;
    assert_eq!(tags(&ms), "3Z", "{}", show_msgs(&ms));
    let ms = round(
        &mut raw,
        &cat(&[
            bind_msg("", "s1", &[Some("z")]),
            execute_msg("", 0),
            sync_msg(),
        ]),
        "bind a closed statement",
    )
    .await;
    assert_eq!(
        errors(&ms).first().and_then(|e| e.sqlstate()).as_deref(),
        Some("26000"),
        "Bind of a closed statement: {}",
        show_msgs(&ms)
    );
    let ms = round(
        &mut raw,
        &cat(&[parse_msg("s1", "SELECT $1::int * 2 AS doubled"), sync_msg()]),
        "re-parse s1",
    )
    .await;
    assert_eq!(tags(&ms), "1Z", "{}", show_msgs(&ms));
    for r in 0..6 {
        let arg = r.to_string();
        let got = raw_run(&mut raw, "s1", &[Some(&arg)]).await;
        assert_eq!(
            got[0][0],
            Some((r * 2).to_string()),
            "reused name, round {r}"
        );
        raw_ok(&mut raw, "BEGIN").await;
        let got = raw_run(&mut raw, "s1", &[Some(&arg)]).await;
        assert_eq!(
            got[0][0],
            Some((r * 2).to_string()),
            "reused name in tx, round {r}"
        );
        raw_ok(&mut raw, "COMMIT").await;
    }

    // Describe on a backend where the statement was never prepared: prepared on some
    // backend, then a transaction moves the session to the primary, then Describe.
    let ms = round(
        &mut raw,
        &cat(&[
            parse_msg(
                "d1",
                "SELECT $1::int AS a, 'x'::text AS b, inet_server_port() AS p",
            ),
            sync_msg(),
        ]),
        "parse d1",
    )
    .await;
    assert_eq!(tags(&ms), "1Z", "{}", show_msgs(&ms));
    for begin in ["BEGIN", "BEGIN READ ONLY", "BEGIN", "BEGIN READ ONLY"] {
        raw_ok(&mut raw, begin).await;
        let ms = round(
            &mut raw,
            &cat(&[describe_msg(b'S', "d1"), sync_msg()]),
            "describe d1",
        )
        .await;
        assert_eq!(
            tags(&ms),
            "tTZ",
            "Describe d1 after {begin}: {}",
            show_msgs(&ms)
        );
        assert_eq!(parameter_description(&ms[0]), vec![23], "{begin}");
        let fields: Vec<String> = row_description(&ms[1]).into_iter().map(|f| f.0).collect();
        assert_eq!(fields, ["a", "b", "p"], "{begin}");
        let got = raw_run(&mut raw, "d1", &[Some("5")]).await;
        assert_eq!(got[0][0].as_deref(), Some("5"));
        raw_ok(&mut raw, "COMMIT").await;
    }
    // Describe alone, outside transactions, on whatever backend the read lands.
    for r in 0..6 {
        let ms = round(
            &mut raw,
            &cat(&[describe_msg(b'S', "d1"), sync_msg()]),
            "describe d1",
        )
        .await;
        assert_eq!(tags(&ms), "tTZ", "Describe d1 #{r}: {}", show_msgs(&ms));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_lru_limit_per_backend() {
    const LIMIT: i64 = 5;
    const MARGIN: i64 = 2;
    // One backend per node: both sessions' statements land on the same backends.
    let env = start_with(ClusterConfig::default(), |c| {
        c.pool.size = 1;
        c.pool.prepared_statements_limit = LIMIT as usize;
    })
    .await;
    let (c1, c2) = (env.connect().await, env.connect().await);
    let mut prepared = Vec::new();
    for (s, c) in [&c1, &c2].into_iter().enumerate() {
        let mut stmts = Vec::new();
        for k in 0..20 {
            let sql = format!("SELECT $1::int + {} AS v, inet_server_port()", 1000 * s + k);
            stmts.push(
                within("prepare", c.prepare(&sql))
                    .await
                    .unwrap_or_else(|e| panic!("prepare {sql}: {}", describe_err(&e))),
            );
        }
        prepared.push(stmts);
    }
    let mut max_seen = 0;
    let mut checks = 0;
    for round in 0..3i32 {
        for k in 0..20usize {
            for (s, c) in [&c1, &c2].into_iter().enumerate() {
                let want = round + (1000 * s + k) as i32;
                let row = within("execute", c.query_one(&prepared[s][k], &[&round]))
                    .await
                    .unwrap_or_else(|e| {
                        panic!(
                            "session {s} statement {k} round {round}: {}",
                            describe_err(&e)
                        )
                    });
                assert_eq!(
                    row.get::<_, i32>(0),
                    want,
                    "session {s} statement {k} round {round}"
                );
                if k % 4 == s {
                    // Count on the backend serving the session, inside a transaction: on
                    // the primary, or on a replica for a read-only one.
                    let begin = if k % 8 < 4 {
                        "BEGIN"
                    } else {
                        "BEGIN READ ONLY"
                    };
                    exec(c, begin).await;
                    let k2 = (k + 7) % 20;
                    let row = within("execute in tx", c.query_one(&prepared[s][k2], &[&round]))
                        .await
                        .unwrap_or_else(|e| {
                            panic!("session {s} statement {k2} in tx: {}", describe_err(&e))
                        });
                    assert_eq!(row.get::<_, i32>(0), round + (1000 * s + k2) as i32);
                    // pgrelay's own two statements (WAL positions) are not the client's.
                    let n: i64 = simple_value(
                        c,
                        "SELECT count(*) FROM pg_prepared_statements \
                         WHERE name NOT LIKE 'pgrelay\\_%'",
                    )
                    .await
                    .unwrap_or_default()
                    .parse()
                    .expect("count");
                    let port = row.get::<_, i32>(1);
                    exec(c, "COMMIT").await;
                    checks += 1;
                    max_seen = max_seen.max(n);
                    assert!(
                        n <= LIMIT + MARGIN,
                        "backend on port {port} holds {n} prepared statements (limit {LIMIT}), \
                         session {s}, round {round}, statement {k}"
                    );
                }
            }
        }
    }
    eprintln!("prepared statements per backend: at most {max_seen} in {checks} checks");
}

// ---------------------------------------------------------------------------------------
// 4. Pinning
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinning() {
    let env = start_with(ClusterConfig::default(), |c| c.pool.size = 2).await;
    let direct = env.connect_direct(0).await;
    let other = env.connect().await;
    assert_eq!(pinned(&env), 0);

    // Temporary table: every later statement sees it, reads outside transactions too.
    {
        let c = env.connect().await;
        exec(&c, "CREATE TEMP TABLE tt (x int)").await;
        wait_pinned(&env, 1, "a temp table to pin the session").await;
        exec(&c, "INSERT INTO tt VALUES (1), (2)").await;
        for i in 0..10 {
            let n: i64 = one(&c, "SELECT count(*) FROM tt").await.get(0);
            assert_eq!(n, 2, "read {i} of the temp table outside a transaction");
            let n = simple_value(&c, "SELECT count(*) FROM tt").await;
            assert_eq!(n.as_deref(), Some("2"), "simple read {i} of the temp table");
        }
        exec(&c, "BEGIN READ ONLY").await;
        let n: i64 = one(&c, "SELECT count(*) FROM tt").await.get(0);
        assert_eq!(n, 2, "read-only transaction");
        exec(&c, "COMMIT").await;
        let err = within("other", other.query_one("SELECT count(*) FROM tt", &[]))
            .await
            .expect_err("another session must not see the temp table");
        assert_eq!(sqlstate(&err).as_deref(), Some("42P01"));
        exec(&c, "DISCARD TEMP").await;
        wait_pinned(&env, 0, "DISCARD TEMP to unpin").await;
        let err = within("gone", c.query_one("SELECT count(*) FROM tt", &[]))
            .await
            .expect_err("the temp table is gone");
        assert_eq!(sqlstate(&err).as_deref(), Some("42P01"));
    }

    // Session advisory lock: held across statements, released by the same session.
    {
        let c = env.connect().await;
        let held = "SELECT count(*) FROM pg_locks \
                    WHERE locktype = 'advisory' AND objid = 4242 AND granted";
        exec(&c, "SELECT pg_advisory_lock(4242)").await;
        wait_pinned(&env, 1, "an advisory lock to pin the session").await;
        for _ in 0..5 {
            one(&c, "SELECT 1").await;
            exec(&c, "SELECT 2").await;
        }
        let n: i64 = one(&direct, held).await.get(0);
        assert_eq!(n, 1, "the lock is still held");
        let locked = simple_value(
            &other,
            "BEGIN; SELECT pg_try_advisory_xact_lock(4242)::text; ",
        )
        .await;
        exec(&other, "COMMIT").await;
        assert_eq!(
            locked.as_deref(),
            Some("false"),
            "another session cannot take the lock"
        );
        let unlocked: bool = one(&c, "SELECT pg_advisory_unlock(4242)").await.get(0);
        assert!(
            unlocked,
            "pg_advisory_unlock on the session's own backend returns true"
        );
        let n: i64 = one(&direct, held).await.get(0);
        assert_eq!(n, 0, "the lock is released");
        exec(&c, "SELECT pg_advisory_lock(4243)").await;
        exec(&c, "SELECT pg_advisory_unlock_all()").await;
        wait_pinned(&env, 0, "pg_advisory_unlock_all() to unpin").await;
    }

    // DECLARE ... WITH HOLD, then FETCH outside the transaction.
    {
        let c = env.connect().await;
        exec(&c, "BEGIN").await;
        exec(
            &c,
            "DECLARE c CURSOR WITH HOLD FOR SELECT g FROM generate_series(1, 10) g ORDER BY g",
        )
        .await;
        exec(&c, "COMMIT").await;
        wait_pinned(&env, 1, "a WITH HOLD cursor to pin the session").await;
        let mut got = Vec::new();
        for _ in 0..3 {
            let rows = within("fetch", c.query("FETCH 3 FROM c", &[]))
                .await
                .unwrap_or_else(|e| panic!("FETCH outside the transaction: {}", describe_err(&e)));
            got.extend(rows.iter().map(|r| r.get::<_, i32>(0)));
            one(&c, "SELECT 1").await;
        }
        assert_eq!(got, (1..=9).collect::<Vec<_>>());
        exec(&c, "CLOSE c").await;
        // Declared outside a transaction block, too.
        exec(
            &c,
            "DECLARE d CURSOR WITH HOLD FOR SELECT g FROM generate_series(1, 4) g ORDER BY g",
        )
        .await;
        let rows = within("fetch d", c.query("FETCH ALL FROM d", &[]))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "FETCH from an autocommit WITH HOLD cursor: {}",
                    describe_err(&e)
                )
            });
        assert_eq!(
            rows.iter().map(|r| r.get::<_, i32>(0)).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        exec(&c, "CLOSE ALL").await;
        wait_pinned(&env, 0, "CLOSE ALL to unpin").await;
    }

    // SQL-level PREPARE / EXECUTE / DEALLOCATE.
    {
        let c = env.connect().await;
        exec(&c, "PREPARE q(int) AS SELECT $1 + 1").await;
        wait_pinned(&env, 1, "PREPARE to pin the session").await;
        for i in 0..10 {
            let v = simple_value(&c, &format!("EXECUTE q({i})")).await;
            assert_eq!(v, Some((i + 1).to_string()), "EXECUTE q({i})");
            exec(&c, "BEGIN").await;
            let v = simple_value(&c, &format!("EXECUTE q({i})")).await;
            assert_eq!(
                v,
                Some((i + 1).to_string()),
                "EXECUTE q({i}) in a transaction"
            );
            exec(&c, "COMMIT").await;
        }
        let err = within("other execute", other.simple_query("EXECUTE q(1)"))
            .await
            .expect_err("another session has no q");
        assert_eq!(sqlstate(&err).as_deref(), Some("26000"));
        exec(&c, "DEALLOCATE q").await;
        let err = within("execute", c.simple_query("EXECUTE q(1)"))
            .await
            .expect_err("q is deallocated");
        assert_eq!(sqlstate(&err).as_deref(), Some("26000"));
        exec(&c, "PREPARE q2 AS SELECT 2").await;
        exec(&c, "DEALLOCATE ALL").await;
        wait_pinned(&env, 0, "DEALLOCATE ALL to unpin").await;
    }

    // LISTEN: notifications reach the listening session; UNLISTEN * unpins it.
    {
        let (listener, mut conn) = within(
            "connect listener",
            tokio_postgres::connect(&env.conninfo(), NoTls),
        )
        .await
        .expect("connect listener");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
            while let Some(m) = messages.next().await {
                match m {
                    Ok(AsyncMessage::Notification(n)) => {
                        let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
                    }
                    Ok(_) => {}
                    Err(e) => panic!("listener connection failed: {e}"),
                }
            }
        });
        exec(&listener, "LISTEN ch").await;
        wait_pinned(&env, 1, "LISTEN to pin the session").await;
        let notifier = env.connect().await;
        exec(&notifier, "NOTIFY ch, 'payload1'").await;
        let got = within("notification 1", rx.recv()).await;
        assert_eq!(got, Some(("ch".to_string(), "payload1".to_string())));
        // The listener keeps working (reads, writes, transactions) and keeps hearing.
        for i in 0..5 {
            one(&listener, "SELECT 1").await;
            exec(&listener, "BEGIN; SELECT 2; COMMIT").await;
            exec(&notifier, &format!("SELECT pg_notify('ch', 'p{i}')")).await;
            let got = within("notification", rx.recv()).await;
            assert_eq!(got, Some(("ch".to_string(), format!("p{i}"))));
        }
        exec(&listener, "UNLISTEN *").await;
        wait_pinned(&env, 0, "UNLISTEN * to unpin").await;
        one(&listener, "SELECT 1").await;

        // DISCARD ALL ends every pin at once.
        exec(&listener, "LISTEN ch2").await;
        exec(&listener, "CREATE TEMP TABLE t2 (x int)").await;
        exec(&listener, "PREPARE q3 AS SELECT 3").await;
        wait_pinned(&env, 1, "LISTEN + temp table + PREPARE to pin the session").await;
        exec(&notifier, "NOTIFY ch2, 'after'").await;
        let got = within("notification on ch2", rx.recv()).await;
        assert_eq!(got, Some(("ch2".to_string(), "after".to_string())));
        exec(&listener, "DISCARD ALL").await;
        wait_pinned(&env, 0, "DISCARD ALL to unpin").await;
        let err = within("t2", listener.query_one("SELECT count(*) FROM t2", &[]))
            .await
            .expect_err("DISCARD ALL dropped the temp table");
        assert_eq!(sqlstate(&err).as_deref(), Some("42P01"));
        let err = within("q3", listener.simple_query("EXECUTE q3"))
            .await
            .expect_err("DISCARD ALL deallocated q3");
        assert_eq!(sqlstate(&err).as_deref(), Some("26000"));
        for _ in 0..5 {
            one(&listener, "SELECT 1").await;
        }
        drop(listener);
        within("listener connection ends", driver)
            .await
            .expect("driver task");
    }
    assert_eq!(pinned(&env), 0);
}

// ---------------------------------------------------------------------------------------
// 5. Cursors and portals
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_and_portals_in_a_transaction() {
    let env = start_with(ClusterConfig::default(), |c| {
        trust(c);
        c.pool.size = 2;
    })
    .await;
    let mut c = env.connect().await;

    // DECLARE / FETCH / MOVE / CLOSE in a read-write and a read-only transaction.
    for begin in ["BEGIN", "BEGIN READ ONLY"] {
        exec(&c, begin).await;
        exec(
            &c,
            "DECLARE cur CURSOR FOR SELECT g FROM generate_series(1, 100) g ORDER BY g",
        )
        .await;
        let fetch = |sql: &'static str| {
            let c = &c;
            async move {
                within(sql, c.query(sql, &[]))
                    .await
                    .unwrap_or_else(|e| panic!("{begin}: {sql}: {}", describe_err(&e)))
                    .iter()
                    .map(|r| r.get::<_, i32>(0))
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(
            fetch("FETCH 10 FROM cur").await,
            (1..=10).collect::<Vec<_>>()
        );
        assert_eq!(
            fetch("FETCH 10 FROM cur").await,
            (11..=20).collect::<Vec<_>>()
        );
        exec(&c, "MOVE 50 IN cur").await;
        assert_eq!(fetch("FETCH 1 FROM cur").await, vec![71]);
        let v = simple_value(&c, "FETCH 1 FROM cur").await;
        assert_eq!(v.as_deref(), Some("72"), "{begin}: simple FETCH");
        exec(&c, "CLOSE cur").await;
        exec(&c, "COMMIT").await;
    }

    // Portals executed with a row limit until done (PortalSuspended in between).
    for read_only in [false, true] {
        let tx = within("begin", c.build_transaction().read_only(read_only).start())
            .await
            .expect("begin");
        let stmt = within(
            "prepare",
            tx.prepare("SELECT g FROM generate_series(1, 25) g ORDER BY g"),
        )
        .await
        .expect("prepare");
        let p1 = within("bind", tx.bind(&stmt, &[])).await.expect("bind p1");
        let p2 = within("bind", tx.bind(&stmt, &[])).await.expect("bind p2");
        let mut got1 = Vec::new();
        let mut got2 = Vec::new();
        let mut batches = 0;
        loop {
            let r1 = within("query_portal", tx.query_portal(&p1, 10))
                .await
                .unwrap_or_else(|e| panic!("query_portal p1: {}", describe_err(&e)));
            let r2 = within("query_portal", tx.query_portal(&p2, 7))
                .await
                .unwrap_or_else(|e| panic!("query_portal p2: {}", describe_err(&e)));
            batches += 1;
            assert!(r1.len() <= 10 && r2.len() <= 7);
            got1.extend(r1.iter().map(|r| r.get::<_, i32>(0)));
            got2.extend(r2.iter().map(|r| r.get::<_, i32>(0)));
            if r1.is_empty() && r2.is_empty() {
                break;
            }
            assert!(batches < 10, "portals never finish");
        }
        assert_eq!(got1, (1..=25).collect::<Vec<_>>(), "read_only {read_only}");
        assert_eq!(got2, (1..=25).collect::<Vec<_>>(), "read_only {read_only}");
        within("commit", tx.commit()).await.expect("commit");
    }

    // Raw: Execute with max_rows on one portal, with Flush and then Sync, outside an
    // explicit transaction (the portal lives until Sync), and in a transaction across Syncs.
    let mut raw = Raw::login(env.port(), cluster::APP_USER, cluster::APP_DB).await;
    let sql = "SELECT g FROM generate_series(1, 7) g ORDER BY g";
    raw.send(&cat(&[
        parse_msg("", sql),
        bind_msg("p", "", &[]),
        execute_msg("p", 3),
        flush_msg(),
    ]))
    .await;
    let mut ms = Vec::new();
    while ms.len() < 6 {
        let m = within("portal answer", raw.recv())
            .await
            .expect("portal answer");
        ms.push(m);
    }
    assert_eq!(tags(&ms), "12DDDs", "{}", show_msgs(&ms));
    raw.send(&cat(&[execute_msg("p", 3), flush_msg()])).await;
    let mut ms = Vec::new();
    while ms.len() < 4 {
        ms.push(
            within("portal answer", raw.recv())
                .await
                .expect("portal answer"),
        );
    }
    assert_eq!(tags(&ms), "DDDs", "{}", show_msgs(&ms));
    let ms = round(
        &mut raw,
        &cat(&[execute_msg("p", 3), sync_msg()]),
        "last execute",
    )
    .await;
    assert_eq!(tags(&ms), "DCZ", "{}", show_msgs(&ms));
    assert_eq!(rows(&ms)[0][0].as_deref(), Some("7"));

    raw_ok(&mut raw, "BEGIN").await;
    let ms = round(
        &mut raw,
        &cat(&[
            parse_msg("", sql),
            bind_msg("q", "", &[]),
            execute_msg("q", 4),
            sync_msg(),
        ]),
        "execute q",
    )
    .await;
    assert_eq!(tags(&ms), "12DDDDsZ", "{}", show_msgs(&ms));
    let ms = round(
        &mut raw,
        &cat(&[execute_msg("q", 4), sync_msg()]),
        "execute q again",
    )
    .await;
    assert_eq!(tags(&ms), "DDDCZ", "{}", show_msgs(&ms));
    assert_eq!(
        rows(&ms)
            .into_iter()
            .map(|r| r[0].clone().unwrap_or_default())
            .collect::<Vec<_>>(),
        ["5", "6", "7"]
    );
    raw_ok(&mut raw, "COMMIT").await;

    // Still usable with a driver afterwards.
    let tx = within("begin", c.transaction()).await.expect("begin");
    let n: i32 = within("select", tx.query_one("SELECT 41 + 1", &[]))
        .await
        .expect("select")
        .get(0);
    assert_eq!(n, 42);
    within("commit", tx.commit()).await.expect("commit");
}

// ---------------------------------------------------------------------------------------
// 6. An error in the middle of a pipeline
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_mid_pipeline() {
    let env = start_with(ClusterConfig::default(), trust).await;
    let setup = env.connect().await;
    exec(&setup, "CREATE TABLE pipe (x int)").await;
    env.wait_for_replay().await;
    let direct = env.connect_direct(0).await;
    let mut raw = Raw::login(env.port(), cluster::APP_USER, cluster::APP_DB).await;
    // Every deviation from PostgreSQL is collected, so one run reports them all.
    let mut problems: Vec<String> = Vec::new();
    let mut want = |ok: bool, what: String| {
        if !ok {
            problems.push(what);
        }
    };
    let one_row = |v: &str| vec![vec![Some(v.to_string())]];

    // Parse/Bind/Execute ok, Parse(bad SQL), Bind/Execute, Sync — in one write.
    let bytes = cat(&[
        parse_msg("good", "SELECT 1 AS one"),
        bind_msg("", "good", &[]),
        execute_msg("", 0),
        parse_msg("bad", "SELEC nonsense"),
        bind_msg("", "bad", &[]),
        execute_msg("", 0),
        sync_msg(),
    ]);
    let ms = round(&mut raw, &bytes, "pipeline with a syntax error").await;
    assert_eq!(tags(&ms), "12DCEZ", "{}", show_msgs(&ms));
    assert_eq!(rows(&ms), one_row("1"));
    assert_eq!(
        ms[4].sqlstate().as_deref(),
        Some("42601"),
        "{}",
        show_msgs(&ms)
    );
    assert_eq!(ms[5].body, b"I", "idle after the Sync");

    // The statement prepared before the error works.
    for _ in 0..3 {
        assert_eq!(raw_run(&mut raw, "good", &[]).await, one_row("1"));
    }
    // The failed name was never created: Bind finds nothing, Parse may define it.
    let ms = round(
        &mut raw,
        &cat(&[bind_msg("", "bad", &[]), execute_msg("", 0), sync_msg()]),
        "bind bad",
    )
    .await;
    want(
        tags(&ms) == "EZ" && ms[0].sqlstate().as_deref() == Some("26000"),
        format!(
            "Bind of \"bad\", whose Parse failed: want 26000 (prepared statement \"bad\" does \
             not exist), got {}",
            show_msgs(&ms)
        ),
    );
    let ms = round(
        &mut raw,
        &cat(&[parse_msg("bad", "SELECT 'now good'"), sync_msg()]),
        "parse bad",
    )
    .await;
    want(
        tags(&ms) == "1Z",
        format!(
            "Parse of \"bad\" (its earlier Parse failed, so the name is free): want \
             ParseComplete, got {}",
            show_msgs(&ms)
        ),
    );
    let ms = round(
        &mut raw,
        &cat(&[bind_msg("", "bad", &[]), execute_msg("", 0), sync_msg()]),
        "run bad",
    )
    .await;
    want(
        rows(&ms) == one_row("now good") && errors(&ms).is_empty(),
        format!("running \"bad\" after its good Parse: {}", show_msgs(&ms)),
    );

    // A write, then an execution error, then more: one implicit transaction, rolled back;
    // nothing after the error runs.
    let bytes = cat(&[
        parse_msg("ins", "INSERT INTO pipe VALUES ($1::int)"),
        bind_msg("", "ins", &[Some("1")]),
        execute_msg("", 0),
        // volatile, so the division fails in Execute, not when Bind plans it
        parse_msg("", "SELECT 1 / (0 * random())::int"),
        bind_msg("", "", &[]),
        execute_msg("", 0),
        parse_msg("after", "SELECT 'after'"),
        bind_msg("", "after", &[]),
        execute_msg("", 0),
        sync_msg(),
    ]);
    let ms = round(&mut raw, &bytes, "pipeline with a runtime error").await;
    assert_eq!(tags(&ms), "12C12EZ", "{}", show_msgs(&ms));
    assert_eq!(
        ms[5].sqlstate().as_deref(),
        Some("22012"),
        "{}",
        show_msgs(&ms)
    );
    let n: i64 = one(&direct, "SELECT count(*) FROM pipe").await.get(0);
    assert_eq!(n, 0, "the INSERT before the error was rolled back with it");
    let ms = round(
        &mut raw,
        &cat(&[parse_msg("after", "SELECT 'x'"), sync_msg()]),
        "parse after",
    )
    .await;
    want(
        tags(&ms) == "1Z",
        format!(
            "Parse of \"after\", whose earlier Parse came after an error and was discarded: \
             want ParseComplete, got {}",
            show_msgs(&ms)
        ),
    );
    // "ins" was prepared before the error and is usable.
    raw_run(&mut raw, "ins", &[Some("2")]).await;
    let n: i64 = one(&direct, "SELECT count(*) FROM pipe").await.get(0);
    assert_eq!(n, 1);

    // The same inside an explicit transaction: the error aborts it, ROLLBACK recovers.
    raw_ok(&mut raw, "BEGIN").await;
    let ms = round(&mut raw, &bytes_with_error(), "pipeline in a transaction").await;
    assert_eq!(tags(&ms), "12DCEZ", "{}", show_msgs(&ms));
    assert_eq!(
        ms.last().map(|m| m.body.clone()),
        Some(b"E".to_vec()),
        "failed transaction"
    );
    let ms = round(&mut raw, &query_msg("SELECT 1"), "in failed tx").await;
    assert_eq!(
        errors(&ms).first().and_then(|e| e.sqlstate()).as_deref(),
        Some("25P02")
    );
    raw_ok(&mut raw, "ROLLBACK").await;
    assert_eq!(raw_run(&mut raw, "good", &[]).await, one_row("1"));
    let ms = round(
        &mut raw,
        &cat(&[parse_msg("bad2", "SELECT 'bad2 is free'"), sync_msg()]),
        "parse bad2",
    )
    .await;
    want(
        tags(&ms) == "1Z",
        format!(
            "Parse of \"bad2\", whose Parse failed in the aborted transaction: want \
             ParseComplete, got {}",
            show_msgs(&ms)
        ),
    );
    let ms = raw_ok(&mut raw, "SELECT 'still usable'").await;
    assert_eq!(rows(&ms)[0][0].as_deref(), Some("still usable"));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn bytes_with_error() -> Vec<u8> {
    cat(&[
        parse_msg("", "SELECT 2 AS two"),
        bind_msg("", "", &[]),
        execute_msg("", 0),
        parse_msg("bad2", "SELEC nonsense"),
        bind_msg("", "bad2", &[]),
        execute_msg("", 0),
        sync_msg(),
    ])
}

// ---------------------------------------------------------------------------------------
// 7. A backend lost in the middle of a transaction
// ---------------------------------------------------------------------------------------

fn lost(code: Option<&str>) -> bool {
    matches!(code, Some("57P01") | Some("08006"))
}

/// Finds the backend running the test's `SELECT pg_sleep(60)`.
const SLEEPER: &str = "SELECT pid FROM pg_stat_activity \
    WHERE query = 'SELECT pg_sleep(60)' AND state = 'active'";

/// Wait until `sql` (a query on pg_stat_activity) finds a backend on `c`; its pid.
async fn find_backend(c: &Client, sql: &str, what: &str) -> i32 {
    eventually(Duration::from_secs(10), what, || async {
        c.query_opt(sql, &[]).await.ok().flatten().map(|r| r.get(0))
    })
    .await
}

async fn idle_session_works(idle: &Client, what: &str) {
    for i in 0..20 {
        let r = within(what, idle.query_one("SELECT $1::int + 1", &[&i])).await;
        match r {
            Ok(row) => assert_eq!(row.get::<_, i32>(0), i + 1),
            Err(e) => panic!("idle session, statement {i} {what}: {}", describe_err(&e)),
        }
        within(what, idle.batch_execute("INSERT INTO lost VALUES (0)"))
            .await
            .unwrap_or_else(|e| panic!("idle session, write {i} {what}: {}", describe_err(&e)));
    }
}

/// A cluster for the backend-loss tests, with table `lost`, and an idle session whose
/// pools are warm on every node.
async fn lost_env(replicas: usize) -> (Env, Client, Client) {
    let cluster = ClusterConfig {
        replicas,
        ..ClusterConfig::default()
    };
    let env = start_with(cluster, |c| {
        trust(c);
        c.pool.size = 3;
    })
    .await;
    let setup = env.connect().await;
    exec(&setup, "CREATE TABLE lost (x int)").await;
    env.wait_for_replay().await;
    let direct = env.connect_direct(0).await;
    let idle = env.connect().await;
    idle_session_works(&idle, "before anything").await;
    (env, direct, idle)
}

/// After its backend went away, a raw session's next statement hears about it (57P01 or
/// 08006, either unsolicited just before or as the answer) and gets its ReadyForQuery.
async fn next_statement_hears_of_the_loss(raw: &mut Raw, sql: &str, what: &str) {
    // An unsolicited ErrorResponse may be on its way (as from PostgreSQL itself), or
    // the proxy may keep it for the next statement: both are fine.
    let mut ms = Vec::new();
    if let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(2), raw.recv()).await {
        ms.push(m);
    }
    let early = show_msgs(&ms);
    raw.send(&query_msg(sql)).await;
    let answer = raw.until_ready().await;
    eprintln!(
        "{what}: unsolicited [{early}], then the answer to {sql:?}: [{}]",
        show_msgs(&answer)
    );
    assert!(
        answer.last().is_some_and(|m| m.tag == b'Z'),
        "{what}: {sql:?} after the backend was lost got no ReadyForQuery (connection closed \
         or 10 s without an answer); unsolicited before it: [{early}], answer: [{}]",
        show_msgs(&answer)
    );
    // A Query is answered by an error or a completion before ReadyForQuery, never by a
    // bare ReadyForQuery (a driver would take that for success).
    assert!(
        answer.iter().any(|m| matches!(m.tag, b'E' | b'C' | b'I')),
        "{what}: {sql:?} was answered by ReadyForQuery alone, neither run nor refused; \
         unsolicited before it: [{early}], answer: [{}]",
        show_msgs(&answer)
    );
    assert_eq!(
        answer.last().map(|m| m.body.clone()),
        Some(b"E".to_vec()),
        "{what}: the session was in a transaction, so it is now in a failed one"
    );
    ms.extend(answer);
    assert!(
        errors(&ms).iter().any(|e| lost(e.sqlstate().as_deref())),
        "{what}: want 57P01/08006, got [{}]",
        show_msgs(&ms)
    );
    // Until the client ends the lost transaction, its statements must not run on their
    // own (outside the transaction they were meant for).
    let again = round(raw, &query_msg(sql), sql).await;
    assert_eq!(
        errors(&again).first().and_then(|e| e.sqlstate()).as_deref(),
        Some("25P02"),
        "{what}: {sql:?} in the failed transaction: [{}]",
        show_msgs(&again)
    );
    let end = raw_ok(raw, "ROLLBACK").await;
    assert_eq!(end.last().map(|m| m.body.clone()), Some(b"I".to_vec()));
}

async fn committed(direct: &Client) -> Vec<i32> {
    within(
        "check",
        direct.query("SELECT x FROM lost WHERE x > 0 ORDER BY x", &[]),
    )
    .await
    .expect("check")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_lost_mid_transaction() {
    let (env, direct, idle) = lost_env(2).await;

    // (a1) A statement pending in a transaction on the primary when its backend is
    // terminated.
    let mut c = env.connect().await;
    {
        let tx = within("begin", c.transaction()).await.expect("begin");
        within("insert", tx.execute("INSERT INTO lost VALUES (1)", &[]))
            .await
            .expect("insert");
        let pending = tx.query_one("SELECT pg_sleep(60)", &[]);
        let kill = async {
            let pid = find_backend(&direct, SLEEPER, "the pending pg_sleep on the primary").await;
            let ok: bool = one(&direct, &format!("SELECT pg_terminate_backend({pid})"))
                .await
                .get(0);
            assert!(ok, "pg_terminate_backend({pid})");
        };
        let (res, ()) = within(
            "the pending statement",
            futures::future::join(pending, kill),
        )
        .await;
        let err = res.expect_err("the pending statement fails when its backend is terminated");
        assert!(
            lost(sqlstate(&err).as_deref()),
            "pending statement: want 57P01 or 08006, got {}",
            describe_err(&err)
        );
        drop(tx); // tokio-postgres sends ROLLBACK
    }
    let tx = within("begin", c.transaction())
        .await
        .unwrap_or_else(|e| panic!("the next transaction begins: {}", describe_err(&e)));
    within("insert", tx.execute("INSERT INTO lost VALUES (2)", &[]))
        .await
        .unwrap_or_else(|e| panic!("the next transaction inserts: {}", describe_err(&e)));
    within("commit", tx.commit())
        .await
        .unwrap_or_else(|e| panic!("the next transaction commits: {}", describe_err(&e)));
    assert_eq!(
        committed(&direct).await,
        vec![2],
        "the lost transaction's row is gone, the next one's kept"
    );
    idle_session_works(&idle, "after a primary backend was terminated").await;

    // (a2) Idle in a transaction when the backend is terminated: the next statement
    // hears about it, the one after works.
    let mut raw = Raw::login(env.port(), cluster::APP_USER, cluster::APP_DB).await;
    raw_ok(&mut raw, "BEGIN").await;
    raw_ok(&mut raw, "INSERT INTO lost VALUES (3)").await;
    let ms = raw_ok(&mut raw, "SELECT pg_backend_pid()").await;
    let pid: i32 = rows(&ms)[0][0]
        .as_deref()
        .unwrap_or("0")
        .parse()
        .expect("pid");
    let ok: bool = one(&direct, &format!("SELECT pg_terminate_backend({pid})"))
        .await
        .get(0);
    assert!(ok);
    next_statement_hears_of_the_loss(
        &mut raw,
        "INSERT INTO lost VALUES (4)",
        "idle in a transaction on a terminated primary backend",
    )
    .await;
    raw_ok(&mut raw, "BEGIN").await;
    raw_ok(&mut raw, "INSERT INTO lost VALUES (5)").await;
    raw_ok(&mut raw, "COMMIT").await;
    let ms = raw_ok(&mut raw, "SELECT 'alive'").await;
    assert_eq!(rows(&ms)[0][0].as_deref(), Some("alive"));
    let rows_now = committed(&direct).await;
    assert_eq!(
        rows_now,
        [2, 5],
        "rows 3 and 4 were lost with their transaction"
    );
    idle_session_works(&idle, "at the end").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_lost_mid_transaction_replica_killed() {
    // One replica, so that both sessions' read-only transactions share it (with two,
    // the least-loaded choice would keep them apart).
    let (env, _direct, idle) = lost_env(1).await;
    let c = env.connect().await;

    // (b) A read-only transaction on a replica whose node is killed mid-statement.
    let replicas = env.replica_ports();
    exec(&c, "BEGIN READ ONLY").await;
    let port = one(&c, "SELECT inet_server_port()").await.get::<_, i32>(0) as u16;
    eprintln!("read-only transaction on port {port}; replicas {replicas:?}");
    let killed = (0..env.cluster.nodes().len())
        .find(|&i| env.cluster.port(i) == port)
        .expect("the node serving the transaction");
    assert_ne!(killed, 0, "a READ ONLY transaction should run on a replica");
    // A raw session idle in a read-only transaction on the same replica.
    let mut raw_ro = Raw::login(env.port(), cluster::APP_USER, cluster::APP_DB).await;
    let mut raw_in_tx = false;
    for _ in 0..20 {
        raw_ok(&mut raw_ro, "BEGIN READ ONLY").await;
        let ms = raw_ok(&mut raw_ro, "SELECT inet_server_port()").await;
        if rows(&ms)[0][0].as_deref() == Some(port.to_string().as_str()) {
            raw_in_tx = true;
            break;
        }
        raw_ok(&mut raw_ro, "COMMIT").await;
    }
    let replica_direct = env.connect_direct(killed).await;
    let pending = c.query_one("SELECT pg_sleep(60)", &[]);
    let kill = async {
        find_backend(
            &replica_direct,
            SLEEPER,
            "the pending pg_sleep on the replica",
        )
        .await;
        tokio::task::block_in_place(|| env.cluster.kill(killed)).expect("kill the replica");
    };
    let (res, ()) = within(
        "the pending statement on the killed replica",
        futures::future::join(pending, kill),
    )
    .await;
    let err = res.expect_err("the pending statement fails when its node dies");
    assert!(
        lost(sqlstate(&err).as_deref()),
        "pending statement on the killed replica: want 57P01 or 08006, got {}",
        describe_err(&err)
    );
    // The client ends its transaction as a driver would; there is none any more.
    let _ = within("rollback", c.batch_execute("ROLLBACK")).await;
    for i in 0..5 {
        within("begin", c.batch_execute("BEGIN READ ONLY"))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "read-only transaction {i} after the kill: {}",
                    describe_err(&e)
                )
            });
        let p = within("port", c.query_one("SELECT inet_server_port()", &[]))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "read-only transaction {i} after the kill: {}",
                    describe_err(&e)
                )
            })
            .get::<_, i32>(0) as u16;
        assert_ne!(p, port, "a transaction ran on the killed node");
        exec(&c, "COMMIT").await;
    }
    idle_session_works(&idle, "after a replica was killed").await;

    // The raw session idle in a transaction on the killed replica.
    assert!(raw_in_tx, "the raw session never landed on port {port}");
    next_statement_hears_of_the_loss(
        &mut raw_ro,
        "SELECT 1",
        "idle in a read-only transaction on a killed replica",
    )
    .await;
    raw_ok(&mut raw_ro, "BEGIN READ ONLY").await;
    let ms = raw_ok(&mut raw_ro, "SELECT inet_server_port()").await;
    assert_ne!(rows(&ms)[0][0].as_deref(), Some(port.to_string().as_str()));
    raw_ok(&mut raw_ro, "COMMIT").await;
}

// ---------------------------------------------------------------------------------------
// 8. Many sessions, small pool
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_sessions_small_pool() {
    const SESSIONS: usize = 200;
    const ROUNDS: i32 = 10;
    let env = start_with(
        ClusterConfig {
            extra_conf: vec!["max_connections = 300".into()],
            ..Default::default()
        },
        |c| {
            c.pool.size = 10;
            c.limits.max_clients = 400;
            c.pool.acquire_timeout = Duration::from_secs(30);
        },
    )
    .await;
    let setup = env.connect().await;
    exec(&setup, "CREATE TABLE m (s int, r int)").await;
    env.wait_for_replay().await;
    let conninfo = env.conninfo();
    let opts = sqlx_options(&env);
    let started = Instant::now();
    let statements = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));

    let sessions = (0..SESSIONS).map(|i| {
        let conninfo = conninfo.clone();
        let opts = opts.clone();
        let statements = statements.clone();
        tokio::spawn(async move {
            let count = |n: usize| statements.fetch_add(n, Ordering::Relaxed);
            let i32i = i as i32;
            if i % 2 == 0 {
                // tokio-postgres
                let (c, conn) = tokio_postgres::connect(&conninfo, NoTls)
                    .await
                    .map_err(|e| format!("session {i} connect: {e}"))?;
                tokio::spawn(conn);
                let e = |what: &str, err: tokio_postgres::Error| {
                    format!("session {i} {what}: {}", describe_err(&err))
                };
                c.batch_execute(&format!("SET myapp.sid = '{i}'"))
                    .await
                    .map_err(|x| e("SET", x))?;
                let read = c
                    .prepare(&format!(
                        "SELECT $1::int + {i}, current_setting('myapp.sid')"
                    ))
                    .await
                    .map_err(|x| e("prepare", x))?;
                count(2);
                for r in 0..ROUNDS {
                    let row = c.query_one(&read, &[&r]).await.map_err(|x| e("read", x))?;
                    if row.get::<_, i32>(0) != r + i32i || row.get::<_, String>(1) != i.to_string()
                    {
                        return Err(format!("session {i} read {r}: wrong row"));
                    }
                    c.batch_execute("BEGIN").await.map_err(|x| e("begin", x))?;
                    c.execute("INSERT INTO m VALUES ($1, $2)", &[&i32i, &r])
                        .await
                        .map_err(|x| e("insert", x))?;
                    let n: i64 = c
                        .query_one("SELECT count(*) FROM m WHERE s = $1", &[&i32i])
                        .await
                        .map_err(|x| e("count", x))?
                        .get(0);
                    c.batch_execute("COMMIT")
                        .await
                        .map_err(|x| e("commit", x))?;
                    count(5);
                    if n != i64::from(r + 1) {
                        return Err(format!("session {i} round {r}: count {n}"));
                    }
                }
                let v = c
                    .query_one("SELECT current_setting('myapp.sid')", &[])
                    .await
                    .map_err(|x| e("final check", x))?
                    .get::<_, String>(0);
                count(1);
                if v != i.to_string() {
                    return Err(format!("session {i}: myapp.sid is {v}"));
                }
            } else {
                // sqlx: statement names sqlx_s_1, sqlx_s_2, ... in every session.
                use sqlx::{Connection, Row as _};
                let mut c = sqlx::PgConnection::connect_with(&opts)
                    .await
                    .map_err(|e| format!("session {i} connect: {e}"))?;
                let e = |what: &str, err: sqlx::Error| format!("session {i} {what}: {err}");
                sqlx::query(&format!("SET application_name = 'sess{i}'"))
                    .execute(&mut c)
                    .await
                    .map_err(|x| e("SET", x))?;
                count(1);
                let read = format!("SELECT $1::int * {i}, current_setting('application_name')");
                let write = format!("INSERT INTO m VALUES ({i}, $1) RETURNING r + {i}");
                for r in 0..ROUNDS {
                    let row = sqlx::query(&read)
                        .bind(r)
                        .fetch_one(&mut c)
                        .await
                        .map_err(|x| e("read", x))?;
                    if row.get::<i32, _>(0) != r * i32i
                        || row.get::<String, _>(1) != format!("sess{i}")
                    {
                        return Err(format!("session {i} read {r}: wrong row"));
                    }
                    let mut tx = c.begin().await.map_err(|x| e("begin", x))?;
                    let row = sqlx::query(&write)
                        .bind(r)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(|x| e("write", x))?;
                    tx.commit().await.map_err(|x| e("commit", x))?;
                    count(4);
                    if row.get::<i32, _>(0) != r + i32i {
                        return Err(format!("session {i} write {r}: wrong row"));
                    }
                }
            }
            Ok::<(), String>(())
        })
    });
    let results = within("200 sessions", futures::future::join_all(sessions)).await;
    let elapsed = started.elapsed();
    let errors: Vec<String> = results
        .into_iter()
        .filter_map(|r| match r {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(e) => Some(format!("task: {e}")),
        })
        .collect();
    let total = statements.load(Ordering::Relaxed);
    eprintln!(
        "{SESSIONS} sessions, {total} statements in {elapsed:?} ({:.0}/s), {} errors",
        total as f64 / elapsed.as_secs_f64(),
        errors.len()
    );
    assert!(
        errors.is_empty(),
        "{} sessions failed, e.g. {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    let direct = env.connect_direct(0).await;
    let n: i64 = one(&direct, "SELECT count(*) FROM m").await.get(0);
    assert_eq!(n, (SESSIONS as i64) * i64::from(ROUNDS));
    // The pools stayed small: per node, at most pool.size server connections for each
    // kind of client (tokio-postgres and sqlx log in with different startup parameters).
    let mut directs = vec![direct];
    for i in 1..env.cluster.nodes().len() {
        directs.push(env.connect_direct(i).await);
    }
    for (i, d) in directs.iter().enumerate() {
        let n: i64 = one(
            d,
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' \
             AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
        )
        .await
        .get(0);
        eprintln!("node {i}: {n} server connections for the app user");
        assert!(
            n <= 20,
            "node {i} has {n} server connections for 200 clients"
        );
    }
}

/// Idle server connections are closed once `pool.idle_timeout` has passed, even when no
/// session asks for one again: a quiet proxy gives PostgreSQL its connection slots back.
/// The client's session stays, and gets a new backend for its next statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_server_connections_close_after_the_idle_timeout() {
    let lone = ClusterConfig {
        replicas: 0,
        ..ClusterConfig::default()
    };
    let env = start_with(lone, |c| c.pool.idle_timeout = Duration::from_secs(1)).await;
    let direct = env.connect_direct(0).await;
    let pooled = || async {
        let sql = "SELECT count(*) FROM pg_stat_activity \
                   WHERE usename = current_user AND pid <> pg_backend_pid()";
        simple_value(&direct, sql).await.expect("a count")
    };
    let c = env.connect().await;
    assert_eq!(simple_value(&c, "SELECT 1").await.as_deref(), Some("1"));
    assert_ne!(
        pooled().await,
        "0",
        "no pooled connection after a statement"
    );
    eventually(
        Duration::from_secs(15),
        "idle connections closed",
        || async { (pooled().await == "0").then_some(()) },
    )
    .await;
    assert_eq!(simple_value(&c, "SELECT 2").await.as_deref(), Some("2"));
}

/// A statement that ends pins ends only those taken before it. A client pipelines
/// DISCARD ALL and LISTEN (both sent before either is answered), unpinned and then
/// already pinned by an earlier LISTEN: either way the session stays pinned after both
/// answers, and hears the new channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_release_ends_only_the_pins_before_it() {
    let env = start_with(ClusterConfig::default(), |c| {
        trust(c);
        c.pool.size = 2;
    })
    .await;
    let notifier = env.connect().await;
    for (round, pinned_before) in [false, true].into_iter().enumerate() {
        let mut raw = Raw::login(env.port(), cluster::APP_USER, cluster::APP_DB).await;
        if pinned_before {
            raw.send(&query_msg("LISTEN earlier")).await;
            raw.until_ready().await;
            wait_pinned(&env, 1, "LISTEN to pin the session").await;
        }
        let channel = format!("later{round}");
        let both = [
            query_msg("DISCARD ALL"),
            query_msg(&format!("LISTEN {channel}")),
        ]
        .concat();
        raw.send(&both).await;
        for what in ["DISCARD ALL", "LISTEN"] {
            let answer = raw.until_ready().await;
            assert!(
                answer.iter().all(|m| m.tag != b'E'),
                "round {round}: {what} failed: {answer:?}"
            );
        }
        exec(&notifier, &format!("NOTIFY {channel}, 'x'")).await;
        // The notification comes on the session's backend while it is idle; a statement
        // collects whatever has come before its answer.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            raw.send(&query_msg("SELECT 1")).await;
            if raw.until_ready().await.iter().any(|m| m.tag == b'A') {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: no notification on {channel}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(pinned(&env), 1, "round {round}: the LISTEN's pin was ended");
        drop(raw);
        wait_pinned(&env, 0, "the session to end").await;
    }
}
