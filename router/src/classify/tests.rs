use super::*;
use proptest::prelude::*;

const R: Class = Class::Read;
const W: Class = Class::Write;
const fn p(reason: PinReason) -> Class {
    Class::Pin(reason)
}
const SET: Class = Class::Session;
const TEMP: Class = p(PinReason::TempTable);
const LOCK: Class = p(PinReason::AdvisoryLock);

#[rustfmt::skip]
const CASES: &[(&str, Class)] = &[
    // Reads.
    ("SELECT 1", R),
    ("select now()", R),
    ("SELECT count(*) FROM t", R),
    ("  SELECT 1  ", R),
    ("SELECT 1;", R),
    ("SELECT * FROM t WHERE a IN (SELECT b FROM u) ORDER BY 1 LIMIT 5", R),
    ("(SELECT 1) UNION (SELECT 2)", R),
    ("((SELECT 1))", R),
    ("VALUES (1), (2)", R),
    ("TABLE t", R),
    ("WITH x AS (SELECT 1) SELECT * FROM x", R),
    ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT * FROM r", R),
    ("SELECT * FROM nextval_log", R),
    ("SELECT my_nextval(1), nextval_x('s'), t.nextval FROM t", R),
    ("SELECT pg_advisory_lock FROM t", R),
    ("SELECT set_config FROM t", R),
    ("SELECT current_setting('search_path')", R),
    ("SELECT pg_sleep(0.1)", R),
    ("SELECT 1 FOR", R),
    ("SHOW search_path", R),
    ("SHOW ALL", R),
    ("SHOW TRANSACTION ISOLATION LEVEL", R),
    ("EXPLAIN SELECT 1", R),
    ("explain (format json, costs off) select 1", R),
    ("EXPLAIN ANALYZE SELECT * FROM t", R),
    ("EXPLAIN (ANALYZE, BUFFERS) SELECT 1", R),
    ("EXPLAIN VERBOSE SELECT 1", R),
    ("FETCH 10 FROM c", R),
    ("FETCH ALL IN c", R),
    ("MOVE NEXT IN c", R),
    ("CLOSE c", R),
    ("CLOSE ALL", R),
    ("DECLARE c CURSOR FOR SELECT * FROM t", R),
    ("DECLARE c NO SCROLL CURSOR WITHOUT HOLD FOR SELECT 1", R),
    ("COPY t TO STDOUT", R),
    ("COPY t (a, b) TO STDOUT WITH (FORMAT csv, HEADER)", R),
    ("COPY (SELECT * FROM t WHERE a > 1) TO STDOUT", R),
    ("copy binary t to stdout", R),
    ("BEGIN READ ONLY", R),
    ("begin read only", R),
    ("BEGIN TRANSACTION READ ONLY", R),
    ("BEGIN WORK READ ONLY", R),
    ("START TRANSACTION READ ONLY", R),
    ("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", R),
    ("BEGIN READ ONLY ISOLATION LEVEL REPEATABLE READ", R),
    ("START TRANSACTION READ ONLY, ISOLATION LEVEL READ COMMITTED", R),
    ("BEGIN ISOLATION LEVEL READ UNCOMMITTED READ ONLY NOT DEFERRABLE", R),
    ("BEGIN READ ONLY;", R),
    ("", R),
    ("   ", R),
    (";", R),
    (";;  ;", R),
    ("-- only a comment", R),
    ("/* only */ /* comments */ ;", R),
    (";;SELECT 1;;", R),
    // Lexing: writes hidden in literals, identifiers and comments.
    ("SELECT 'INSERT INTO t'", R),
    ("SELECT 1 -- ; DELETE FROM t", R),
    ("SELECT $$;UPDATE$$", R),
    ("SELECT $a$ $$ ; DELETE FROM t $a$", R),
    ("SELECT $tag$ x $TAG$ ; DELETE FROM t $tag$", R),
    ("SELECT $_x1$;DELETE$_x1$", R),
    ("SELECT \"update\" FROM t", R),
    ("SELECT \"a\"\"; DELETE FROM t\" FROM t", R),
    ("SELECT 1 AS \"INSERT\"", R),
    ("SELECT 'it''s; DELETE FROM t'", R),
    ("SELECT E'\\'; DELETE FROM t; --'", R),
    ("SELECT E'\\\\'", R),
    ("SELECT 'C:\\path'", R),
    ("SELECT U&'d\\0061t\\+000061'", R),
    ("SELECT U&\"d\\0061t\" FROM t", R),
    ("SELECT B'0101', X'1F'", R),
    ("SELECT 1 /* /* nested */ still; DELETE FROM t */", R),
    ("SELECT 1 /*/ DELETE */", R),
    ("SELECT 'a'\n'; DELETE FROM t'", R),
    ("SELECT a$b, $1 FROM t", R),
    ("SELECT 'nextval(1)', \"nextval\" FROM t", R),
    ("SELECT 1 --\r\n", R),
    // Writes.
    ("INSERT INTO t VALUES (1)", W),
    ("insert into t select * from u", W),
    ("UPDATE t SET a = 1", W),
    ("DELETE FROM t", W),
    ("MERGE INTO t USING u ON t.a = u.a WHEN MATCHED THEN DELETE", W),
    ("TRUNCATE t", W),
    ("COPY t FROM STDIN", W),
    ("COPY t (a) FROM STDIN WITH (FORMAT csv)", W),
    ("COPY t TO '/tmp/t.csv'", W),
    ("COPY t TO PROGRAM 'gzip > /tmp/t.gz'", W),
    ("COPY (DELETE FROM t RETURNING *) TO STDOUT", W),
    ("COPY (SELECT nextval('s')) TO STDOUT", W),
    ("CREATE TABLE t (a int)", W),
    ("CREATE UNLOGGED TABLE t (a int)", W),
    ("CREATE INDEX ON t (a)", W),
    ("ALTER TABLE t ADD COLUMN b int", W),
    ("DROP TABLE t", W),
    ("GRANT SELECT ON t TO u", W),
    ("REVOKE ALL ON t FROM u", W),
    ("VACUUM t", W),
    ("ANALYZE t", W),
    ("CLUSTER t", W),
    ("REINDEX TABLE t", W),
    ("CALL p(1)", W),
    ("DO $$ BEGIN PERFORM 1; END $$", W),
    ("LOCK TABLE t IN ACCESS EXCLUSIVE MODE", W),
    ("NOTIFY ch, 'x'", W),
    ("CHECKPOINT", W),
    ("REFRESH MATERIALIZED VIEW v", W),
    ("COMMENT ON TABLE t IS 'x'", W),
    ("BEGIN", W),
    ("BEGIN;", W),
    ("begin work", W),
    ("START TRANSACTION", W),
    ("BEGIN ISOLATION LEVEL READ COMMITTED", W),
    ("BEGIN READ WRITE", W),
    ("BEGIN READ ONLY, READ WRITE", W),
    ("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE", W),
    ("BEGIN READ ONLY GARBAGE", W),
    ("START READ ONLY", W),
    ("COMMIT", W),
    ("ROLLBACK", W),
    ("END", W),
    ("ABORT", W),
    ("SAVEPOINT s", W),
    ("RELEASE SAVEPOINT s", W),
    ("ROLLBACK TO SAVEPOINT s", W),
    ("SET LOCAL statement_timeout = 0", W),
    ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", W),
    ("SET CONSTRAINTS ALL DEFERRED", W),
    ("PREPARE TRANSACTION 'x'", W),
    ("COMMIT PREPARED 'x'", W),
    ("EXECUTE q(1)", W),
    ("DEALLOCATE q", W),
    ("DEALLOCATE ALL", W),
    ("UNLISTEN ch", W),
    ("UNLISTEN *", W),
    ("DISCARD ALL", SET),
    ("discard temp", SET),
    ("SELECT * FROM t FOR UPDATE", W),
    ("SELECT * FROM t FOR NO KEY UPDATE", W),
    ("SELECT * FROM t FOR SHARE SKIP LOCKED", W),
    ("SELECT * FROM t FOR KEY SHARE", W),
    ("select * from t for update of t nowait", W),
    ("WITH x AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM x", W),
    ("WITH x AS (UPDATE t SET a = 1 RETURNING *) SELECT 1", W),
    ("WITH x AS (SELECT 1) DELETE FROM t", W),
    ("WITH x AS (MERGE INTO t USING u ON true WHEN MATCHED THEN DELETE RETURNING *) TABLE x", W),
    ("SELECT * INTO t2 FROM t", W),
    ("SELECT * INTO UNLOGGED TABLE t2 FROM t", W),
    ("EXPLAIN ANALYZE DELETE FROM t", W),
    ("EXPLAIN (ANALYZE true, BUFFERS) UPDATE t SET a = 1", W),
    ("EXPLAIN ANALYSE VERBOSE INSERT INTO t VALUES (1)", W),
    ("EXPLAIN DELETE FROM t", W),
    ("EXPLAIN", W),
    ("SELECT nextval('s')", W),
    ("SELECT NEXTVAL ('s')", W),
    ("SELECT pg_catalog.nextval('s')", W),
    ("SELECT \"nextval\"('s')", W),
    ("SELECT pg_catalog . \"nextval\" /* c */ ('s')", W),
    ("SELECT currval('s'), 1", W),
    ("SELECT lastval()", W),
    ("SELECT setval('s', 10)", W),
    ("VALUES (nextval('s'))", W),
    ("SELECT * FROM t WHERE id = nextval('s')", W),
    ("SELECT txid_current()", W),
    ("SELECT pg_current_xact_id()", W),
    ("SELECT pg_notify('c', 'x')", W),
    ("SELECT pg_promote()", W),
    ("SELECT pg_terminate_backend(123)", W),
    ("SELECT pg_cancel_backend(123)", W),
    ("SELECT pg_reload_conf()", W),
    ("SELECT pg_switch_wal()", W),
    ("SELECT pg_create_logical_replication_slot('s', 'pgoutput')", W),
    ("SELECT pg_create_physical_replication_slot('s')", W),
    ("SELECT pg_drop_replication_slot('s')", W),
    ("SELECT lo_import('/tmp/x')", W),
    ("SELECT lo_unlink(42)", W),
    ("SELECT * FROM dblink_exec('conn', 'DELETE FROM t')", W),
    ("SELECT pg_start_backup('x')", W),
    ("SELECT pg_backup_start('x')", W),
    ("SELECT pg_current_wal_lsn()", W),
    ("SELECT pg_is_in_recovery()", W),
    ("SELECT pg_advisory_xact_lock(1)", W),
    ("SELECT pg_try_advisory_xact_lock_shared(1)", W),
    ("SELECT pg_advisory_unlock(1)", W),
    ("SELECT set_config('a.b', 'c', true)", W),
    ("select set_config('a.b', 'c', TRUE)", W),
    ("SELECT U&\"\\006Eextval\"('s')", W),
    ("SHOW transaction_read_only", W),
    ("SHOW default_transaction_read_only", W),
    // Lexing: conservative on what cannot be understood or is hidden in trivia.
    ("/* SELECT */ DELETE FROM t", W),
    ("-- SELECT\nDELETE FROM t", W),
    ("SELECT 1 --\n; DELETE FROM t", W),
    ("SELECT 'unterminated", W),
    ("SELECT E'unterminated\\'", W),
    ("SELECT \"unterminated", W),
    ("SELECT 1 /* unterminated /* */", W),
    ("SELECT $q$ unterminated", W),
    ("SELECT 'a\\'; DELETE FROM t; --'", W),
    ("SELECT 'a\\' -- '; DELETE FROM t", W),
    ("SELECT E'a'\n'\\' -- '; DELETE FROM t", W),
    ("SELECT 1; SELECT 2", W),
    ("BEGIN; SELECT 1; COMMIT", W),
    ("BEGIN READ ONLY; SELECT 1", W),
    ("SELECT 1; DELETE FROM t", W),
    ("DELETE", W),
    ("'just a string'", W),
    ("(", W),
    ("(DELETE FROM t)", W),
    ("42", W),
    // Session pins.
    ("SET search_path = x", SET),
    ("set time zone 'UTC'", SET),
    ("SET SESSION statement_timeout = 0", SET),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", SET),
    ("SET ROLE app", SET),
    ("SET SESSION AUTHORIZATION app", SET),
    ("RESET ALL", SET),
    ("RESET search_path", SET),
    ("SELECT set_config('search_path', 'x', false)", SET),
    ("SELECT pg_catalog.set_config('a.b', 'c', 'false')", SET),
    ("SELECT set_config('a.b', 'c', is_local)", SET),
    ("SELECT set_config('a.b', 'c', true AND false)", SET),
    ("SELECT set_config('a.b', 'c')", SET),
    ("SELECT set_config('a', set_config('b', 'c', true), true)", SET),
    ("UPDATE t SET a = set_config('a.b', 'c', false)", SET),
    ("SET x = 1; SELECT 1", SET),
    ("SELECT 1; SET x = 1", SET),
    ("PREPARE q AS SELECT 1", p(PinReason::Prepare)),
    ("PREPARE q (int) AS SELECT $1", p(PinReason::Prepare)),
    ("LISTEN ch", p(PinReason::Listen)),
    ("SELECT 1; LISTEN ch", p(PinReason::Listen)),
    ("CREATE TEMP TABLE x (a int)", TEMP),
    ("CREATE TEMPORARY TABLE x AS SELECT 1", TEMP),
    ("CREATE GLOBAL TEMPORARY TABLE x (a int)", TEMP),
    ("create local temp table x (a int) on commit drop", TEMP),
    ("CREATE TEMP VIEW v AS SELECT 1", TEMP),
    ("CREATE OR REPLACE TEMP RECURSIVE VIEW v (n) AS SELECT 1", TEMP),
    ("CREATE TEMP SEQUENCE s", TEMP),
    ("CREATE TABLE pg_temp.x (a int)", TEMP),
    ("CREATE FUNCTION \"pg_temp\".f() RETURNS int AS 'select 1' LANGUAGE sql", TEMP),
    ("SELECT * INTO TEMP t2 FROM t", TEMP),
    ("SELECT * INTO TEMPORARY TABLE t2 FROM t", TEMP),
    ("SELECT * INTO LOCAL TEMP t2 FROM t", TEMP),
    ("SELECT * INTO pg_temp.t2 FROM t", TEMP),
    ("EXPLAIN ANALYZE CREATE TEMP TABLE x AS SELECT 1", TEMP),
    ("SELECT pg_advisory_lock(1)", LOCK),
    ("SELECT PG_ADVISORY_LOCK_SHARED(1)", LOCK),
    ("SELECT pg_try_advisory_lock(1, 2)", LOCK),
    ("SELECT pg_catalog.\"pg_try_advisory_lock_shared\"(1)", LOCK),
    ("SELECT pg_advisory_lock(hashtext('job')) FROM t", LOCK),
    ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", p(PinReason::HoldCursor)),
    ("DECLARE c BINARY SCROLL CURSOR WITH HOLD FOR SELECT * FROM t", p(PinReason::HoldCursor)),
    ("LOAD 'auto_explain'", p(PinReason::Load)),
    ("SELECT setseed(0.5)", p(PinReason::Other)),
    // Plain EXPLAIN never executes, so it cannot pin.
    ("EXPLAIN CREATE TEMP TABLE x AS SELECT 1", W),
    ("EXPLAIN SELECT pg_advisory_lock(1)", W),
];

#[test]
fn classifies_table_of_statements() {
    assert!(CASES.len() >= 120, "only {} cases", CASES.len());
    let failures: Vec<String> = CASES
        .iter()
        .filter(|(sql, want)| classify(sql) != *want)
        .map(|(sql, want)| format!("{sql:?}: got {}, want {want}", classify(sql)))
        .collect();
    assert!(
        failures.is_empty(),
        "{} misclassified:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn display_is_short_and_stable() {
    assert_eq!(Class::Read.to_string(), "read");
    assert_eq!(Class::Write.to_string(), "write");
    assert_eq!(p(PinReason::AdvisoryLock).to_string(), "pin:advisory_lock");
    assert_eq!(PinReason::TempTable.to_string(), "temp_table");
}

#[test]
fn strongest_orders_read_write_pin() {
    assert_eq!(R.strongest(W), W);
    assert_eq!(W.strongest(R), W);
    assert_eq!(W.strongest(SET), SET);
    assert_eq!(SET.strongest(TEMP), TEMP);
    assert_eq!(TEMP.strongest(SET), TEMP);
    assert_eq!(p(PinReason::Listen).strongest(TEMP), p(PinReason::Listen));
    assert_eq!(R.strongest(R), R);
}

/// Statements from the table, for composing inputs.
fn statement() -> impl Strategy<Value = &'static str> {
    proptest::sample::select(CASES.iter().map(|(sql, _)| *sql).collect::<Vec<_>>())
}

fn write_statement() -> impl Strategy<Value = &'static str> {
    let writes: Vec<_> = CASES
        .iter()
        .filter(|(_, c)| *c == W)
        .map(|(sql, _)| *sql)
        .collect();
    proptest::sample::select(writes)
}

/// Text that is SQL-shaped enough to reach the lexer's corner cases.
fn sqlish() -> impl Strategy<Value = String> {
    let atom = prop_oneof![
        Just("'"),
        Just("''"),
        Just("\""),
        Just("$"),
        Just("$$"),
        Just("$a$"),
        Just("$1"),
        Just("--"),
        Just("/*"),
        Just("*/"),
        Just("\n"),
        Just(";"),
        Just("("),
        Just(")"),
        Just("E'"),
        Just("U&'"),
        Just("U&\""),
        Just("B'"),
        Just("\\"),
        Just(" "),
        Just("SELECT"),
        Just("INTO"),
        Just("TEMP"),
        Just("FOR"),
        Just("UPDATE"),
        Just("WITH"),
        Just("HOLD"),
        Just("set_config"),
        Just("nextval"),
        Just("true"),
        Just(","),
        Just("ż"),
        Just("BEGIN"),
        Just("READ"),
        Just("ONLY"),
        Just("EXPLAIN"),
        Just("COPY"),
        Just("TO"),
    ];
    proptest::collection::vec(atom, 0..24).prop_map(|parts| parts.concat())
}

proptest! {
    #[test]
    fn never_panics_on_arbitrary_text(sql in any::<String>()) {
        let _ = classify(&sql);
    }

    #[test]
    fn never_panics_on_sqlish_text(sql in sqlish()) {
        let _ = classify(&sql);
    }

    /// Whatever came before (even an unterminated literal or comment), a DELETE on its
    /// own line can never be hidden into a read.
    #[test]
    fn appended_delete_is_never_read(prefix in prop_oneof![sqlish(), any::<String>(), statement().prop_map(String::from)]) {
        let sql = format!("{prefix}\n; DELETE FROM t");
        prop_assert_ne!(classify(&sql), Class::Read, "{:?}", sql);
    }

    #[test]
    fn leading_comments_do_not_change_the_class(
        stmt in statement(),
        block in "[^*/]{0,20}",
        line in "[^\n\r]{0,20}",
    ) {
        let want = classify(stmt);
        prop_assert_eq!(classify(&format!("/*{block}*/{stmt}")), want);
        prop_assert_eq!(classify(&format!("-- {line}\n{stmt}")), want);
        prop_assert_eq!(classify(&format!("/* /* {block} */ */ \n\t{stmt}")), want);
    }

    /// A write quoted as data is just data.
    #[test]
    fn writes_inside_literals_and_comments_are_read(stmt in write_statement()) {
        // With a backslash the literal's extent depends on standard_conforming_strings.
        if !stmt.contains('\\') {
            let quoted = stmt.replace('\'', "''");
            prop_assert_eq!(classify(&format!("SELECT '{quoted}'")), Class::Read);
        }
        if !stmt.contains("$x$") {
            prop_assert_eq!(classify(&format!("SELECT $x${stmt}$x$")), Class::Read);
        }
        if !stmt.contains('\n') && !stmt.contains('\r') {
            prop_assert_eq!(classify(&format!("SELECT 1 -- {stmt}")), Class::Read);
        }
    }

    /// Keywords are case-insensitive, so case changes of keyword-only statements agree.
    #[test]
    fn keyword_case_does_not_matter(stmt in statement()) {
        let simple = stmt.bytes().all(|b| b.is_ascii_alphanumeric() || b == b' ' || b == b'_');
        if simple {
            prop_assert_eq!(classify(&stmt.to_ascii_lowercase()), classify(stmt));
            prop_assert_eq!(classify(&stmt.to_ascii_uppercase()), classify(stmt));
        }
    }
}

#[test]
fn bytes_in_any_encoding() {
    let cases: &[(&[u8], Class)] = &[
        (b"SELECT a FROM caf\xe9", Class::Read), // Latin-1: a plain SELECT all the same
        (b"SELECT caf\xe9('x')", Class::Write),  // not UTF-8 and not plain: the primary
        (b"UPDATE t SET a = 1", Class::Write),
        (b"SET application_name = 'x'", Class::Session),
        ("SELECT 'żółw'".as_bytes(), Class::Read),
    ];
    for (sql, want) in cases {
        assert_eq!(
            classify_bytes(sql),
            *want,
            "{:?}",
            String::from_utf8_lossy(sql)
        );
    }
}
