//! Read-your-writes, monotonic reads and consistency levels (issue 5) on a real cluster:
//! a primary and two replicas, node 1 replaying 500 ms late. At level `session` nobody
//! reads older than their own writes or their earlier reads, yet reads still go to
//! replicas; `global` and the causal token carry freshness across connections; `eventual`
//! really does read stale data here, which shows these tests can tell.

use cluster::ClusterConfig;
use pgrelay::router::Consistency;
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};
use tests_integration::{connect, eventually, start_proxy, start_with, Env};
use tokio::sync::watch;
use tokio_postgres::{Client, SimpleQueryMessage};

/// The delayed replica's `recovery_min_apply_delay`.
const DELAY: Duration = Duration::from_millis(500);
/// The longest any single statement may take before the test calls it a hang.
const STEP: Duration = Duration::from_secs(30);

// --- Helpers ---------------------------------------------------------------------------

/// One primary and `replicas` replicas; the first replica (node 1) replays [`DELAY`] late.
fn delayed(replicas: usize) -> ClusterConfig {
    ClusterConfig {
        replicas,
        apply_delay: vec![(0, DELAY)],
        ..ClusterConfig::default()
    }
}

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(STEP, fut).await {
        Ok(v) => v,
        Err(_) => panic!("no answer within {STEP:?}: {what}"),
    }
}

fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

type Rows = Vec<Vec<Option<String>>>;

/// Rows of a simple-protocol query, as text.
async fn try_rows(c: &Client, sql: &str) -> Result<Rows, tokio_postgres::Error> {
    let msgs = within(sql, c.simple_query(sql)).await?;
    let row = |m: &SimpleQueryMessage| match m {
        SimpleQueryMessage::Row(r) => {
            Some((0..r.len()).map(|i| r.get(i).map(String::from)).collect())
        }
        _ => None,
    };
    Ok(msgs.iter().filter_map(row).collect())
}

async fn rows(c: &Client, sql: &str) -> Rows {
    let r = try_rows(c, sql).await;
    r.unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)))
}

async fn exec(c: &Client, sql: &str) {
    let r = within(sql, c.batch_execute(sql)).await;
    r.unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)));
}

/// First column of the first row.
async fn value(c: &Client, sql: &str) -> Option<String> {
    rows(c, sql).await.into_iter().next()?.into_iter().next()?
}

async fn show(c: &Client, name: &str) -> String {
    let v = value(c, &format!("SHOW {name}")).await;
    v.unwrap_or_else(|| panic!("SHOW {name}: no value"))
}

/// SQLSTATE of a statement that must fail; the message is printed.
async fn fails(c: &Client, sql: &str) -> String {
    let e = within(sql, c.batch_execute(sql)).await.expect_err(sql);
    eprintln!("{sql}: {}", describe(&e));
    e.code().map(|c| c.code().to_string()).unwrap_or_default()
}

/// `1/2A` → the 64-bit LSN.
fn lsn(text: &str) -> u64 {
    let hex = |s: &str| u64::from_str_radix(s, 16).unwrap_or_else(|_| panic!("LSN {text}"));
    let (hi, lo) = text.split_once('/').unwrap_or_else(|| panic!("LSN {text}"));
    (hex(hi) << 32) | hex(lo)
}

/// How many primary WAL positions pgrelay has asked for (after writes, for tokens).
fn write_positions_asked(env: &Env) -> u64 {
    env.proxy
        .shared
        .ryw
        .write_lsn_reads
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// The primary's WAL insert position, read on a direct connection to it.
async fn insert_lsn(direct: &Client) -> u64 {
    lsn(&value(direct, "SELECT pg_current_wal_insert_lsn()")
        .await
        .expect("LSN"))
}

fn int(cell: &Option<String>) -> i64 {
    cell.as_deref()
        .and_then(|s| s.parse().ok())
        .expect("an integer")
}

/// A one-row read whose last column is `inet_server_port()`: the other columns as
/// integers, and whether a replica answered. (Not `pg_is_in_recovery()`: pgrelay sends
/// that to the primary, where its answer matters.)
async fn read(c: &Client, sql: &str, primary: u16) -> (Vec<i64>, bool) {
    let mut row = rows(c, sql).await.into_iter().next().expect("a row");
    let port = int(&row.pop().expect("a port column"));
    (row.iter().map(int).collect(), port != i64::from(primary))
}

async fn join<T>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("task"));
    }
    out
}

/// Run schema SQL through pgrelay, then wait until every replica has it and takes reads.
async fn setup(env: &Env, sql: &str) {
    exec(&env.connect().await, sql).await;
    env.wait_for_replay().await;
    let n = env.cluster.nodes().len();
    eventually(Duration::from_secs(20), "replicas readable", || async {
        let t = env.proxy.shared.topology.load();
        (1..n).all(|i| t.nodes[i].readable_replica()).then_some(())
    })
    .await;
}

/// The proxy's own counts of how reads with a floor were served.
fn ryw_stats(env: &Env) -> String {
    format!("pgrelay counters: {:?}", env.proxy.shared.ryw)
}

/// Reads counted: how many, how many stale, how many served by a replica.
#[derive(Debug, Default, Clone)]
struct Tally {
    reads: u64,
    stale: u64,
    replica: u64,
    examples: Vec<String>,
}

impl Tally {
    fn read(&mut self, stale: bool, on_replica: bool, what: impl FnOnce() -> String) {
        (self.reads, self.replica) = (self.reads + 1, self.replica + u64::from(on_replica));
        if stale {
            self.stale += 1;
            if self.examples.len() < 5 {
                self.examples.push(what());
            }
        }
    }

    fn sum(all: impl IntoIterator<Item = Tally>) -> Tally {
        let mut t = Tally::default();
        for o in all {
            (t.reads, t.stale, t.replica) =
                (t.reads + o.reads, t.stale + o.stale, t.replica + o.replica);
            let room = 5usize.saturating_sub(t.examples.len());
            t.examples.extend(o.examples.into_iter().take(room));
        }
        t
    }

    fn replica_share(&self) -> f64 {
        self.replica as f64 / self.reads.max(1) as f64
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (r, share) = (self.replica, 100.0 * self.replica_share());
        write!(
            f,
            "{} reads, {} stale, {r} on replicas ",
            self.reads, self.stale
        )?;
        write!(
            f,
            "/ {} on the primary ({share:.1}% replica)",
            self.reads - r
        )?;
        if !self.examples.is_empty() {
            write!(f, "; e.g. {:?}", self.examples)?;
        }
        Ok(())
    }
}

const RW_SCHEMA: &str = "CREATE TABLE rw (id int PRIMARY KEY, v bigint NOT NULL);
     CREATE TABLE log (s int NOT NULL, k bigint NOT NULL);
     CREATE INDEX ON log (s);
     INSERT INTO rw SELECT g, 0 FROM generate_series(0, 99) g;";

// --- Read-your-writes ------------------------------------------------------------------

const SESSIONS: i32 = 20;
const STEPS: i64 = 200;

/// One session's write-then-read steps on its own row `s`: autocommit (extended
/// protocol; alternately UPDATE and INSERT), then transactions (alternately
/// tokio-postgres transactions and simple-protocol BEGIN/…/COMMIT, read back with the
/// simple protocol). Returns (autocommit, transaction) tallies.
async fn write_then_read(mut c: Client, s: i32, primary: u16) -> (Tally, Tally) {
    let prep = |sql: &'static str| {
        let c = &c;
        async move { within(sql, c.prepare(sql)).await.expect(sql) }
    };
    let update = prep("UPDATE rw SET v = $1 WHERE id = $2").await;
    let insert = prep("INSERT INTO log (s, k) VALUES ($1, $2)").await;
    let read_v = prep("SELECT v, inet_server_port() FROM rw WHERE id = $1").await;
    let read_n = prep("SELECT count(*), inet_server_port() FROM log WHERE s = $1").await;
    let (mut auto, mut tx, mut inserted) = (Tally::default(), Tally::default(), 0i64);
    for k in 1..=STEPS {
        let (write, params, read, want): (
            _,
            [&(dyn tokio_postgres::types::ToSql + Sync); 2],
            _,
            _,
        ) = if k % 2 == 0 {
            (&update, [&k, &s], &read_v, k)
        } else {
            inserted += 1;
            (&insert, [&s, &k], &read_n, inserted)
        };
        within("write", c.execute(write, &params))
            .await
            .expect("write");
        let row = within("read", c.query_one(read, &[&s]))
            .await
            .expect("read");
        let (got, port) = (row.get::<_, i64>(0), row.get::<_, i32>(1));
        auto.read(got != want, port != i32::from(primary), || {
            format!("session {s} step {k}: read {got}, wrote {want}, port {port}")
        });
    }
    for k in STEPS + 1..=2 * STEPS {
        if k % 2 == 0 {
            let t = within("begin", c.transaction()).await.expect("begin");
            within("update", t.execute(&update, &[&k, &s]))
                .await
                .expect("update");
            within("insert", t.execute(&insert, &[&s, &k]))
                .await
                .expect("insert");
            within("commit", t.commit()).await.expect("commit");
        } else {
            exec(&c, "BEGIN").await;
            exec(&c, &format!("UPDATE rw SET v = {k} WHERE id = {s}")).await;
            exec(&c, &format!("INSERT INTO log (s, k) VALUES ({s}, {k})")).await;
            exec(&c, "COMMIT").await;
        }
        inserted += 1;
        let sql = format!(
            "SELECT v, (SELECT count(*) FROM log WHERE s = {s}), inet_server_port() \
             FROM rw WHERE id = {s}"
        );
        let (got, on_replica) = read(&c, &sql, primary).await;
        tx.read(got != [k, inserted], on_replica, || {
            format!("session {s} step {k}: read {got:?}, wrote [{k}, {inserted}]")
        });
    }
    (auto, tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sessions_read_their_own_writes_and_still_use_replicas() {
    let env = start_with(delayed(2), |_| {}).await;
    setup(&env, RW_SCHEMA).await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..SESSIONS {
        let c = env.connect().await;
        tasks.push(tokio::spawn(write_then_read(c, s, env.primary_port())));
    }
    let (auto, tx): (Vec<_>, Vec<_>) = join(tasks).await.into_iter().unzip();
    let (auto, tx) = (Tally::sum(auto), Tally::sum(tx));
    let secs = started.elapsed().as_secs_f64();
    eprintln!("read-your-writes, {SESSIONS} sessions x {STEPS} steps each, {secs:.1}s");
    eprintln!("  autocommit write, then read:   {auto}");
    eprintln!("  BEGIN/write/COMMIT, then read: {tx}");
    eprintln!("  {}", ryw_stats(&env));
    assert_eq!(auto.stale + tx.stale, 0, "stale reads at level session");
    assert_eq!(auto.reads + tx.reads, 2 * STEPS as u64 * SESSIONS as u64);
    assert!(
        auto.replica + tx.replica > 0,
        "writers got no replica reads"
    );
}

// --- Sessions that never write ---------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_that_never_write_read_from_replicas() {
    let env = start_with(delayed(2), |_| {}).await;
    setup(&env, RW_SCHEMA).await;
    let primary = env.primary_port();
    let (stop_tx, stop) = watch::channel(false);
    // Writers bump their own row and read it back, until the readers are done.
    let mut writers = Vec::new();
    for s in 0..4 {
        let (c, stop) = (env.connect().await, stop.clone());
        writers.push(tokio::spawn(async move {
            let (mut t, mut k) = (Tally::default(), 0i64);
            while !*stop.borrow() {
                k += 1;
                exec(&c, &format!("UPDATE rw SET v = {k} WHERE id = {s}")).await;
                let sql = format!("SELECT v, inet_server_port() FROM rw WHERE id = {s}");
                let (v, on_replica) = read(&c, &sql, primary).await;
                t.read(v[0] != k, on_replica, || format!("{v:?} != {k}"));
            }
            t
        }));
    }
    // Readers: the sum of all rows only grows, so "stale" here is a backward step.
    let mut readers = Vec::new();
    for _ in 0..5 {
        let c = env.connect().await;
        readers.push(tokio::spawn(async move {
            let (mut t, mut highest) = (Tally::default(), 0i64);
            for i in 0..300 {
                let sql = "SELECT sum(v), inet_server_port() FROM rw";
                let (sum, on_replica) = read(&c, sql, primary).await;
                t.read(sum[0] < highest, on_replica, || {
                    format!("read {i}: sum {sum:?} after {highest}")
                });
                highest = highest.max(sum[0]);
            }
            t
        }));
    }
    let read = Tally::sum(join(readers).await);
    stop_tx.send(true).expect("stop");
    let wrote = Tally::sum(join(writers).await);
    eprintln!("sessions that never write: {read}");
    eprintln!("sessions that write:       {wrote}");
    eprintln!("  {}", ryw_stats(&env));
    assert_eq!(read.stale, 0, "a reader saw the sum go backwards");
    assert_eq!(wrote.stale, 0, "a writer missed its own write");
    let share = 100.0 * read.replica_share();
    assert!(share >= 90.0, "only {share:.1}% of reads on replicas");
    assert!(wrote.replica > 0, "writing sessions got no replica reads");
}

// --- Monotonic reads across replica restarts -------------------------------------------

/// A counter watcher's reads ("stale" = a backward step), errors and where reads ran.
#[derive(Debug, Default)]
struct Watched {
    t: Tally,
    reconnects: u64,
    errors: Vec<String>,
    by_port: BTreeMap<u16, u64>,
}

/// Read the counter through pgrelay until told to stop; a read below the highest value
/// this session already saw is a backward step. A lost connection starts a new session.
async fn watch_counter(conninfo: String, primary: u16, stop: watch::Receiver<bool>) -> Watched {
    let sql = "SELECT n, inet_server_port() FROM counter";
    let (mut c, mut w, mut highest) = (connect(&conninfo).await, Watched::default(), 0i64);
    while !*stop.borrow() {
        match try_rows(&c, sql).await {
            Ok(r) => {
                let (n, port) = (int(&r[0][0]), int(&r[0][1]));
                w.t.read(n < highest, port != i64::from(primary), || {
                    format!("read {n} after {highest} on port {port}")
                });
                *w.by_port.entry(port as u16).or_default() += 1;
                highest = highest.max(n);
            }
            Err(e) => {
                w.errors.push(describe(&e));
                if c.is_closed() {
                    c = connect(&conninfo).await;
                    (w.reconnects, highest) = (w.reconnects + 1, 0);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    w
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_never_go_backwards_even_while_a_replica_restarts() {
    let env = start_with(delayed(2), |_| {}).await;
    let schema = "CREATE TABLE counter (n bigint NOT NULL); INSERT INTO counter VALUES (0);";
    setup(&env, schema).await;
    let (stop_tx, stop) = watch::channel(false);
    let writer = {
        let (c, stop) = (env.connect_direct(0).await, stop.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !*stop.borrow() {
                exec(&c, "UPDATE counter SET n = n + 1").await;
                n += 1;
            }
            n
        })
    };
    let (conninfo, primary) = (env.conninfo(), env.primary_port());
    let readers: Vec<_> = (0..4)
        .map(|_| tokio::spawn(watch_counter(conninfo.clone(), primary, stop.clone())))
        .collect();
    // The non-delayed replica (node 2) goes away twice: a clean stop (down for a while),
    // then a crash and an immediate restart.
    let phase = Duration::from_millis(1500);
    let cluster = &env.cluster;
    for crash in [false, true] {
        tokio::time::sleep(phase).await;
        tokio::task::block_in_place(|| {
            if crash {
                cluster.kill(2).expect("kill node 2");
            } else {
                cluster.stop(2).expect("stop node 2");
                std::thread::sleep(phase);
            }
            cluster.start_node(2).expect("start node 2")
        });
        let t = Instant::now();
        eventually(Duration::from_secs(30), "node 2 readable", || async {
            let topology = env.proxy.shared.topology.load();
            topology.nodes[2].readable_replica().then_some(())
        })
        .await;
        let how = if crash { "a crash" } else { "a clean stop" };
        eprintln!(
            "  node 2 readable {:?} after restarting from {how}",
            t.elapsed()
        );
    }
    tokio::time::sleep(phase).await;
    stop_tx.send(true).expect("stop");
    let increments = writer.await.expect("writer");
    let (mut all, mut errors, mut reconnects) = (Vec::new(), Vec::new(), 0);
    let mut by_node = BTreeMap::<usize, u64>::new();
    for w in join(readers).await {
        (reconnects, errors) = (reconnects + w.reconnects, [errors, w.errors].concat());
        for (port, n) in w.by_port {
            let node = (0..3)
                .find(|&i| env.cluster.port(i) == port)
                .expect("a node");
            *by_node.entry(node).or_default() += n;
        }
        all.push(w.t);
    }
    let all = Tally::sum(all);
    eprintln!("monotonic reads, {increments} increments on the primary (stale = backward):");
    eprintln!("  {all}");
    let some = &errors[..errors.len().min(5)];
    eprintln!(
        "  reads by node {by_node:?}; {} errors {some:?}",
        errors.len()
    );
    eprintln!("  {reconnects} reconnects; {}", ryw_stats(&env));
    assert_eq!(all.stale, 0, "reads went backwards");
    assert!(all.replica > 0, "no read was served by a replica");
}

// --- Across connections: `global` and the causal token ---------------------------------

/// Is row `id` of `g` there, and did the read run on a replica?
async fn find(c: &Client, id: i64, primary: u16) -> (bool, bool) {
    let sql = format!("SELECT count(*), inet_server_port() FROM g WHERE id = {id}");
    let (n, on_replica) = read(c, &sql, primary).await;
    (n[0] == 1, on_replica)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_reads_and_causal_tokens_see_writes_from_other_connections() {
    let env = start_with(delayed(2), |_| {}).await;
    setup(&env, "CREATE TABLE g (id bigint PRIMARY KEY)").await;
    let primary = env.primary_port();
    let (writer, direct) = (env.connect().await, env.connect_direct(0).await);
    let by_set = env.connect().await;
    exec(&by_set, "SET pgrelay.consistency = 'global'").await;
    let options = format!("{} options='-c pgrelay.consistency=global'", env.conninfo());
    let by_option = connect(&options).await;
    assert_eq!(show(&by_option, "pgrelay.consistency").await, "global");
    let (mut set_t, mut opt_t) = (Tally::default(), Tally::default());
    for id in 0..200i64 {
        // Committed through pgrelay, or straight on the primary: "anywhere".
        let w = if id % 4 == 3 { &direct } else { &writer };
        exec(w, &format!("INSERT INTO g VALUES ({id})")).await;
        let (found, on_replica) = find(&by_set, id, primary).await;
        set_t.read(!found, on_replica, || format!("{id} missing"));
        let (found, on_replica) = find(&by_option, id, primary).await;
        opt_t.read(!found, on_replica, || format!("{id} missing"));
    }
    eprintln!("global (SET), write on another connection then read:     {set_t}");
    eprintln!("global (options), write on another connection then read: {opt_t}");

    // The causal token: A writes and hands over its floor; B (level session, never
    // wrote) raises its own floor with it. Every 20th time B is a brand-new connection.
    // The token must lie past the primary's position before the write ("behind" if not).
    let mut reader = env.connect().await;
    let (mut token_t, mut behind) = (Tally::default(), Vec::new());
    for id in 200..400i64 {
        let before = insert_lsn(&direct).await;
        exec(&writer, &format!("INSERT INTO g VALUES ({id})")).await;
        let token = show(&writer, "pgrelay.last_write_lsn").await;
        let is_behind = lsn(&token) <= before;
        if is_behind {
            behind.push(format!(
                "{id}: token {token} <= {before:X} before the write"
            ));
        }
        if id % 20 == 0 {
            reader = env.connect().await;
        }
        exec(&reader, &format!("SET pgrelay.min_read_lsn = '{token}'")).await;
        let (found, on_replica) = find(&reader, id, primary).await;
        token_t.read(!found, on_replica, || {
            format!("token {token} (behind: {is_behind}): {id} missing")
        });
    }
    eprintln!("causal token (session level, never wrote):               {token_t}");
    let some = &behind[..behind.len().min(5)];
    eprintln!(
        "  tokens behind their write: {} of 200 {some:?}",
        behind.len()
    );
    eprintln!("  {}", ryw_stats(&env));
    assert_eq!(set_t.stale, 0, "global (SET) missed writes");
    assert_eq!(opt_t.stale, 0, "global (options) missed writes");
    assert_eq!(token_t.stale, 0, "the causal token missed writes");
    assert!(
        behind.is_empty(),
        "SHOW pgrelay.last_write_lsn behind the write"
    );
}

// --- `eventual` reads stale data, `session` does not, `primary` reads the primary -----

/// Write then immediately read 50 times at `level`.
async fn write_then_read_at(env: &Env, level: &str) -> Tally {
    let c = env.connect().await;
    exec(&c, &format!("SET pgrelay.consistency = {level}")).await;
    let mut t = Tally::default();
    for k in 1..=50i64 {
        exec(&c, &format!("UPDATE rw SET v = {k} WHERE id = 1")).await;
        let sql = "SELECT v, inet_server_port() FROM rw WHERE id = 1";
        let (v, on_replica) = read(&c, sql, env.primary_port()).await;
        t.read(v[0] != k, on_replica, || {
            format!("read {}, wrote {k}", v[0])
        });
    }
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventual_reads_are_stale_on_the_delayed_replica_and_session_reads_are_not() {
    // The only replica is the delayed one, so `eventual` has no fresher one to use.
    let env = start_with(delayed(1), |_| {}).await;
    setup(&env, RW_SCHEMA).await;
    let eventual = write_then_read_at(&env, "eventual").await;
    let session = write_then_read_at(&env, "session").await;
    let primary = write_then_read_at(&env, "primary").await;
    eprintln!("only replica {DELAY:?} behind; write then read at once:");
    eprintln!("  eventual: {eventual}\n  session:  {session}\n  primary:  {primary}");
    eprintln!("  {}", ryw_stats(&env));
    assert!(eventual.stale > 0, "eventual never read stale data");
    assert_eq!(session.stale, 0, "session read stale data");
    assert_eq!((primary.stale, primary.replica), (0, 0), "primary level");
}

// --- SET / SHOW / RESET pgrelay.* ------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgrelay_settings_are_answered_by_pgrelay_and_never_reach_postgres() {
    let cfg = ClusterConfig {
        extra_conf: vec!["log_statement = 'all'".into()],
        ..ClusterConfig::default()
    };
    let env = start_with(cfg, |_| {}).await;
    setup(&env, "CREATE TABLE t (id int)").await;
    let c = env.connect().await;
    assert_eq!(show(&c, "pgrelay.consistency").await, "session");
    assert_eq!(show(&c, "pgrelay.last_write_lsn").await, "0/0");
    for (sql, want) in [
        ("SET pgrelay.consistency = 'eventual'", "eventual"),
        ("SET pgrelay.consistency TO global", "global"),
        ("set pgrelay.consistency = primary", "primary"),
        ("SET SESSION pgrelay.consistency TO 'session';", "session"),
        ("SET pgrelay.consistency='Eventual'", "eventual"),
        ("RESET pgrelay.consistency", "session"),
    ] {
        exec(&c, sql).await;
        assert_eq!(show(&c, "pgrelay.consistency").await, want, "after {sql}");
    }
    // Bad values are errors; the session carries on with its level unchanged.
    exec(&c, "SET pgrelay.consistency = global").await;
    assert_eq!(
        fails(&c, "SET pgrelay.consistency = 'sometimes'").await,
        "22023"
    );
    assert_eq!(
        fails(&c, "SET pgrelay.min_read_lsn = 'soon'").await,
        "22023"
    );
    assert_ne!(fails(&c, "SHOW pgrelay.no_such_setting").await, "");
    assert_eq!(show(&c, "pgrelay.consistency").await, "global");
    assert_eq!(value(&c, "SELECT 1").await.as_deref(), Some("1"));
    exec(&c, "INSERT INTO t VALUES (1)").await;
    assert_ne!(show(&c, "pgrelay.last_write_lsn").await, "0/0");

    // PostgreSQL never hears of pgrelay.*: not from SET (on a replica, on the primary),
    // not from startup options (which pass the rest of `options` on).
    let on_server = "SELECT current_setting('pgrelay.consistency', true)";
    assert_eq!(value(&c, on_server).await, None, "a read after SET");
    exec(&c, "BEGIN").await;
    assert_eq!(
        value(&c, on_server).await,
        None,
        "in a transaction, on the primary"
    );
    exec(&c, "COMMIT").await;
    let options = "options='-c pgrelay.consistency=eventual -c statement_timeout=4321'";
    let o = connect(&format!("{} {options}", env.conninfo())).await;
    assert_eq!(show(&o, "pgrelay.consistency").await, "eventual");
    assert_eq!(value(&o, on_server).await, None, "from startup options");
    assert_eq!(show(&o, "statement_timeout").await, "4321ms");
    for i in 0..3 {
        let log = tokio::task::block_in_place(|| env.cluster.log_tail(i, 100_000));
        let log = log.expect("server log");
        let leaked: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("pgrelay.") && !l.contains("current_setting"))
            .collect();
        assert!(leaked.is_empty(), "node {i} saw pgrelay.*: {leaked:?}");
    }

    // A per-user level (users[].consistency), still overridable per session.
    let proxy = start_proxy(&env.cluster, |cfg| {
        cfg.routing.consistency = Consistency::Eventual;
        cfg.users[0].consistency = Some(Consistency::Primary);
    })
    .await;
    let port = |p: u16| format!("port={p}");
    let u = connect(
        &env.conninfo()
            .replace(&port(env.port()), &port(proxy.addr.port())),
    )
    .await;
    assert_eq!(show(&u, "pgrelay.consistency").await, "primary");
    let ran_on = value(&u, "SELECT inet_server_port()").await;
    assert_eq!(
        ran_on,
        Some(env.primary_port().to_string()),
        "level primary"
    );
    exec(&u, "SET pgrelay.consistency = session").await;
    assert_eq!(show(&u, "pgrelay.consistency").await, "session");
    exec(&u, "RESET pgrelay.consistency").await;
    assert_eq!(show(&u, "pgrelay.consistency").await, "primary");
    drop(u);
    proxy.shutdown().await.expect("second proxy stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_write_lsn_lies_past_each_committed_write() {
    let env = start_with(delayed(2), |_| {}).await;
    setup(&env, "CREATE TABLE t (id int)").await;
    let (mut c, direct) = (env.connect().await, env.connect_direct(0).await);
    // Simple or extended protocol, autocommit or a transaction block: right after the
    // write's reply, the token lies past the primary's WAL position from before it.
    let mut shown = Vec::new();
    for i in 0..20 {
        let before = insert_lsn(&direct).await;
        match i % 4 {
            0 => exec(&c, &format!("INSERT INTO t VALUES ({i})")).await,
            1 => {
                let r = within("insert", c.execute("INSERT INTO t VALUES ($1)", &[&i])).await;
                r.expect("insert");
            }
            2 => {
                for sql in ["BEGIN", &format!("INSERT INTO t VALUES ({i})"), "COMMIT"] {
                    exec(&c, sql).await;
                }
            }
            _ => {
                let t = within("begin", c.transaction()).await.expect("begin");
                let r = within("insert", t.execute("INSERT INTO t VALUES ($1)", &[&i])).await;
                r.expect("insert");
                within("commit", t.commit()).await.expect("commit");
            }
        }
        shown.push((
            i % 4,
            before,
            lsn(&show(&c, "pgrelay.last_write_lsn").await),
        ));
    }
    value(&c, "SELECT count(*) FROM t").await;
    let after_read = lsn(&show(&c, "pgrelay.last_write_lsn").await);
    let behind: Vec<String> = shown
        .iter()
        .filter(|(_, before, token)| token <= before)
        .map(|(kind, before, token)| format!("kind {kind}: {token:X} <= {before:X}"))
        .collect();
    let last = shown[19].2;
    eprintln!(
        "last_write_lsn, 20 writes: {} behind their write {behind:?}",
        behind.len()
    );
    eprintln!("  last {last:X}, after a read {after_read:X}");
    assert!(
        behind.is_empty(),
        "SHOW pgrelay.last_write_lsn behind the write"
    );
    assert!(shown.windows(2).all(|w| w[0].2 < w[1].2) && last <= after_read);
}

/// A write that leaves the backend idle has its position asked in the same write as the
/// write itself; a guess that turns out wrong never counts. Here the client sends BEGIN
/// and an INSERT in one write (pgrelay, which has not seen BEGIN's answer yet, takes
/// the session for idle and asks for a position right after the INSERT, inside the
/// transaction): that position must not become the token, which must lie past the
/// commit, and the read after the commit must see the row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_position_read_inside_a_transaction_never_counts() {
    use tests_integration::raw::{message, Raw};
    fn query(sql: &str) -> Vec<u8> {
        message(b'Q', &[sql.as_bytes(), b"\0"].concat())
    }
    let env = start_with(delayed(2), tests_integration::trust).await;
    setup(&env, "CREATE TABLE piped (id int)").await;
    let direct = env.connect_direct(0).await;
    let mut raw = Raw::login(env.port(), cluster::APP_USER, cluster::APP_DB).await;
    let asked = || write_positions_asked(&env);
    // The text of the first column of the first DataRow of a simple query's answer.
    async fn first_value(raw: &mut Raw, sql: &str) -> String {
        raw.send(&query(sql)).await;
        let msgs = raw.until_ready().await;
        let row = msgs
            .iter()
            .find(|m| m.tag == b'D')
            .unwrap_or_else(|| panic!("{sql}: no row"));
        let len = i32::from_be_bytes(row.body[2..6].try_into().expect("length")) as usize;
        String::from_utf8_lossy(&row.body[6..6 + len]).into_owned()
    }
    // Many rounds: whether the COMMIT reaches pgrelay before the answer to the guess is
    // a race, and both orders must hold.
    for i in 0..30 {
        let before = asked();
        let both = [
            query("BEGIN"),
            query(&format!("INSERT INTO piped VALUES ({i})")),
        ]
        .concat();
        raw.send(&both).await;
        for what in ["BEGIN", "INSERT"] {
            let answer = raw.until_ready().await;
            assert!(
                answer.iter().all(|m| m.tag != b'E')
                    && answer.last().is_some_and(|m| m.tag == b'Z'),
                "round {i}: {what} failed: {answer:?}"
            );
        }
        // Past the INSERT, before the COMMIT: a position asked inside the transaction
        // is at most this.
        let mid = insert_lsn(&direct).await;
        raw.send(&query("COMMIT")).await;
        raw.until_ready().await;
        let token = lsn(&first_value(&mut raw, "SHOW pgrelay.last_write_lsn").await);
        assert!(
            token > mid,
            "round {i}: token {token:X} not past the commit (the primary was at {mid:X} before it)"
        );
        let seen = first_value(
            &mut raw,
            &format!("SELECT count(*) FROM piped WHERE id = {i}"),
        )
        .await;
        assert_eq!(seen, "1", "round {i}: the write is not visible");
        // The guess inside the transaction, then the COMMIT's own.
        assert_eq!(asked(), before + 2, "round {i}: positions asked");
    }
    // An autocommit write asks once, with the write.
    let before = asked();
    raw.send(&query("INSERT INTO piped VALUES (100)")).await;
    raw.until_ready().await;
    let seen = first_value(&mut raw, "SELECT count(*) FROM piped WHERE id = 100").await;
    assert_eq!(seen, "1");
    assert_eq!(asked(), before + 1, "one position per autocommit write");
}

/// A replica that replays a little late (well within `read_your_writes_timeout`) is
/// waited for: the read after each write runs there once it has the write, not on the
/// primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_a_little_behind_is_waited_for() {
    use std::sync::atomic::Ordering::Relaxed;
    let config = ClusterConfig {
        replicas: 1,
        apply_delay: vec![(0, Duration::from_millis(30))],
        ..ClusterConfig::default()
    };
    let env = start_with(config, |_| {}).await;
    setup(&env, "CREATE TABLE w (id int)").await;
    let (c, primary) = (env.connect().await, env.primary_port());
    let ryw = &env.proxy.shared.ryw;
    let (waited, fallbacks) = (
        ryw.waited.load(Relaxed),
        ryw.primary_fallbacks.load(Relaxed),
    );
    for i in 1..=5 {
        exec(&c, &format!("INSERT INTO w VALUES ({i})")).await;
        let sql = "SELECT count(*), inet_server_port() FROM w";
        let (got, on_replica) = read(&c, sql, primary).await;
        assert_eq!(got, [i], "read {i}: the write is not visible");
        assert!(
            on_replica,
            "read {i} ran on the primary: {}",
            ryw_stats(&env)
        );
    }
    // (A read that reached the replica 30 ms after its write would not wait: at most 5.)
    let now = ryw.waited.load(Relaxed);
    assert!(now > waited && now <= waited + 5, "{}", ryw_stats(&env));
    assert_eq!(ryw.primary_fallbacks.load(Relaxed), fallbacks);
}

/// A read-only transaction begun on a replica that turns out to be behind the session's
/// floor runs again on the primary, unseen. Its BEGIN did run on the replica, though: the
/// replica's connection must not go back to the pool inside that transaction. (Whoever
/// gets it next would run every statement in it, and its session would keep the
/// connection while idle, as if in a transaction of its own.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_rerun_on_the_primary_leaves_no_transaction_on_the_replica() {
    use std::sync::atomic::Ordering::Relaxed;
    // One connection to the only replica, which replays [`DELAY`] late.
    let env = start_with(delayed(1), |c| c.pool.size = 1).await;
    setup(&env, "CREATE TABLE t (id int)").await;
    let (c, direct) = (env.connect().await, env.connect_direct(1).await);
    let retries = || env.proxy.shared.ryw.stale_retries.load(Relaxed);
    let before = retries();
    exec(&c, "INSERT INTO t VALUES (1)").await;
    // Checked on the replica, found behind the write, run again on the primary.
    exec(&c, "BEGIN READ ONLY").await;
    assert_eq!(
        value(&c, "SELECT count(*) FROM t").await.as_deref(),
        Some("1")
    );
    exec(&c, "COMMIT").await;
    assert!(
        retries() > before,
        "the BEGIN was not re-run: {}",
        ryw_stats(&env)
    );
    // A session reading from the replica is not in anyone's transaction.
    let other = env.connect().await;
    exec(&other, "SET pgrelay.consistency = eventual").await;
    let fresh = value(&other, "SELECT now() = statement_timestamp()").await;
    assert_eq!(
        fresh.as_deref(),
        Some("t"),
        "a read ran in a leftover transaction"
    );
    let open = value(
        &direct,
        "SELECT count(*) FROM pg_stat_activity \
         WHERE state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()",
    )
    .await;
    assert_eq!(
        open.as_deref(),
        Some("0"),
        "transactions left open on the replica"
    );
}

/// With a single node the floor routes nothing: pgrelay asks for no WAL position after
/// reads or writes (the hot path of a proxy in front of a lone primary), only when the
/// client asks for its causal token, which then lies past the session's last commit
/// (asked in simple or extended protocol, outside or inside a transaction).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_primary_asks_wal_positions_only_for_the_token() {
    let lone = ClusterConfig {
        replicas: 0,
        ..ClusterConfig::default()
    };
    let env = start_with(lone, |_| {}).await;
    let (c, direct) = (env.connect().await, env.connect_direct(0).await);
    let asked = || write_positions_asked(&env);
    for _ in 0..20 {
        value(&c, "SELECT 1").await;
    }
    assert_eq!(asked(), 0, "reads asked for the WAL position");
    let stats = &env.proxy.shared.stats;
    let node = pgrelay::router::NodeId(0);
    assert_eq!(
        stats.routed_count(node, pgrelay::stats::Reason::NoReplica),
        20,
        "reads on a lone primary: no replica"
    );
    assert_eq!(
        stats.routed_count(node, pgrelay::stats::Reason::RywFallback),
        0
    );

    exec(&c, "CREATE TABLE lone (x int)").await;
    exec(&c, "INSERT INTO lone VALUES (1)").await;
    exec(&c, "BEGIN; INSERT INTO lone VALUES (2); COMMIT").await;
    for sql in ["BEGIN", "INSERT INTO lone VALUES (3)", "COMMIT"] {
        exec(&c, sql).await;
    }
    let r = within(
        "insert",
        c.execute("INSERT INTO lone VALUES ($1)", &[&4i32]),
    )
    .await;
    r.expect("insert");
    assert_eq!(asked(), 0, "writes asked for the WAL position");
    let committed = insert_lsn(&direct).await;
    let token = lsn(&show(&c, "pgrelay.last_write_lsn").await);
    assert_eq!(asked(), 1, "the token is learnt once asked for");
    assert!(
        token >= committed,
        "token {token:X} behind the last commit {committed:X}"
    );
    let again = lsn(&show(&c, "pgrelay.last_write_lsn").await);
    assert_eq!(again, token, "no write since: the same token");
    assert_eq!(asked(), 1, "no write since: nothing asked");

    // Extended protocol, as drivers that prepare everything ask.
    exec(&c, "INSERT INTO lone VALUES (5)").await;
    let committed = insert_lsn(&direct).await;
    let row = within("show", c.query_one("SHOW pgrelay.last_write_lsn", &[])).await;
    let token: String = row.expect("SHOW").get(0);
    assert!(lsn(&token) >= committed, "extended: token {token} behind");

    // Inside a transaction, the token covers the commits before it.
    exec(&c, "INSERT INTO lone VALUES (6)").await;
    let committed = insert_lsn(&direct).await;
    exec(&c, "BEGIN").await;
    let inside = lsn(&show(&c, "pgrelay.last_write_lsn").await);
    exec(&c, "INSERT INTO lone VALUES (7)").await;
    exec(&c, "COMMIT").await;
    assert!(
        inside >= committed,
        "in a transaction: token {inside:X} behind {committed:X}"
    );
    assert_eq!(asked(), 3);
    assert_eq!(
        value(&c, "SELECT count(*) FROM lone").await.as_deref(),
        Some("7")
    );

    // In a failed transaction nothing can be read, the position either: an error, as
    // PostgreSQL answers there, never a token behind the commits.
    exec(&c, "INSERT INTO lone VALUES (8)").await;
    let committed = insert_lsn(&direct).await;
    exec(&c, "BEGIN").await;
    fails(&c, "SELECT 1/0").await;
    assert_eq!(fails(&c, "SHOW pgrelay.last_write_lsn").await, "25P02");
    exec(&c, "ROLLBACK").await;
    let after = lsn(&show(&c, "pgrelay.last_write_lsn").await);
    assert!(after >= committed, "after ROLLBACK: token {after:X} behind");

    // A session that only reads (at `session`, or at `global`, whose reads need no
    // probe of the primary here) gets a token past what it read.
    for level in ["session", "global"] {
        let r = env.connect().await;
        exec(&r, &format!("SET pgrelay.consistency = {level}")).await;
        let before = asked();
        let seen = insert_lsn(&direct).await;
        for _ in 0..5 {
            value(&r, "SELECT count(*) FROM lone").await;
        }
        exec(&r, "SET pgrelay.consistency = session").await;
        assert_eq!(
            asked(),
            before,
            "{level}: reads or a SET asked for a position"
        );
        let token = lsn(&show(&r, "pgrelay.last_write_lsn").await);
        assert!(token >= seen, "{level}: token {token:X} behind the reads");
        assert_eq!(asked(), before + 1);
    }
}
