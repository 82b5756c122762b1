"""psycopg 3 through pgrelay: run by tests-integration/tests/drivers.rs.

normal:   psycopg's defaults (server-side prepare after 5 executions of a query).
prepared: prepare_threshold=0, so every query is a named server-side prepared statement
          from its first execution.
"""

import datetime
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import psycopg
from psycopg import errors
from psycopg.conninfo import make_conninfo
from psycopg_pool import ConnectionPool

from common import (
    ACTIVE_SLEEP_SQL,
    CANCEL_LIMIT_SECONDS,
    INSTANT,
    KATHMANDU,
    POOL_OPS,
    POOL_WORKERS,
    SLEEP_SQL,
    Failure,
    Steps,
    check,
    deadline,
    expect_eq,
    parse_args,
    pause,
)

args = parse_args()
PREPARED = args.mode == "prepared"
PRIMARY = args.primary_port
REPLICAS = set(args.replica_ports)
steps = Steps("psycopg", args.mode)


def conninfo(port=None):
    return make_conninfo(
        host=args.host,
        port=port or args.port,
        user=args.user,
        password=args.password,
        dbname=args.dbname,
        connect_timeout=10,
    )


def driver_kwargs():
    # None keeps psycopg's default threshold (5).
    return {"prepare_threshold": 0} if PREPARED else {}


def connect(autocommit=True):
    return psycopg.connect(conninfo(), autocommit=autocommit, **driver_kwargs())


# Direct connections to every node (bypassing pgrelay) to watch replication and activity.
direct = {}


def wait_for_replay():
    lsn = direct[PRIMARY].execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
    for port in sorted(REPLICAS):
        end = deadline()
        while not direct[port].execute(
            "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [lsn]
        ).fetchone()[0]:
            check(time.monotonic() < end, f"replica {port} did not replay {lsn} in time")
            pause()


def one(conn, sql, params=None):
    return conn.execute(sql, params).fetchone()


def poll(what, fn):
    """Calls fn until it returns something other than None, within the deadline."""
    end = deadline()
    while True:
        v = fn()
        if v is not None:
            return v
        check(time.monotonic() < end, f"timed out waiting for {what}")
        pause()


def setup(conn):
    for port in [PRIMARY, *sorted(REPLICAS)]:
        direct[port] = psycopg.connect(conninfo(port), autocommit=True)
    for sql in [
        "CREATE TABLE kv (k int PRIMARY KEY, v text)",
        "CREATE SCHEMA s1",
        "CREATE TABLE s1.marker (x text)",
        "INSERT INTO s1.marker VALUES ('in s1')",
        "CREATE TABLE public.marker (x text)",
        "INSERT INTO public.marker VALUES ('in public')",
        "CREATE TABLE items (id int PRIMARY KEY, name text, price numeric)",
        "CREATE TABLE pool_t (worker int, i int, v text, PRIMARY KEY (worker, i))",
    ]:
        conn.execute(sql)
    wait_for_replay()


def prepared_statements(conn):
    read_q = "SELECT %s::int + 1 AS n, inet_server_port() AS port"
    write_q = "INSERT INTO kv VALUES (%s, %s) RETURNING inet_server_port()"
    get_q = "SELECT v, inet_server_port() FROM kv WHERE k = %s"
    read_ports = []
    for i in range(60):
        n, port = one(conn, read_q, [i])
        expect_eq(n, i + 1, f"read #{i}")
        read_ports.append(port)
        (port,) = one(conn, write_q, [i, f"v{i}"])
        expect_eq(port, PRIMARY, f"write #{i} ran on")
        if i % 10 == 0:
            # Inside a transaction the same statement runs on the primary's backend.
            with conn.transaction():
                v, port = one(conn, get_q, [i])
                expect_eq((v, port), (f"v{i}", PRIMARY), f"get #{i} in a transaction")
    expect_eq(
        set(read_ports), REPLICAS, f"replicas that served the reads (in order: {read_ports})"
    )
    # Outside a transaction the same statement runs on replicas, which catch up.
    for i in range(0, 60, 6):
        def got(i=i):
            row = one(conn, get_q, [i])
            return row if row is not None else None
        v, port = poll(f"kv row {i} on a replica", got)
        expect_eq(v, f"v{i}", f"get #{i} on a replica")
        check(port in REPLICAS, f"get #{i} ran on {port}, not a replica")


def transactions(conn):
    class Boom(Exception):
        pass

    try:
        with conn.transaction():
            conn.execute("INSERT INTO kv VALUES (1000, 'rolled back')")
            raise Boom()
    except Boom:
        pass
    with conn.transaction():
        conn.execute("INSERT INTO kv VALUES (1001, 'committed')")
    with conn.transaction():
        (port,) = one(conn, "SELECT inet_server_port()")
        expect_eq(port, PRIMARY, "a transaction ran on")
        rows = conn.execute("SELECT k FROM kv WHERE k IN (1000, 1001) ORDER BY k").fetchall()
        expect_eq(rows, [(1001,)], "rows after rollback + commit")
    # An error aborts the transaction; ROLLBACK recovers and the session stays usable.
    conn.execute("BEGIN")
    try:
        conn.execute("INSERT INTO kv VALUES (1001, 'duplicate')")
        raise Failure("duplicate key was accepted")
    except errors.UniqueViolation:
        pass
    try:
        conn.execute("SELECT 1")
        raise Failure("statement in an aborted transaction was accepted")
    except errors.InFailedSqlTransaction:
        pass
    conn.execute("ROLLBACK")
    expect_eq(one(conn, "SELECT 7")[0], 7, "after ROLLBACK")
    # psycopg's default: autocommit off, every statement in a transaction, commit()/rollback().
    with connect(autocommit=False) as c2:
        c2.execute("INSERT INTO kv VALUES (1002, 'rolled back')")
        c2.rollback()
        (port,) = one(c2, "INSERT INTO kv VALUES (1003, 'committed') RETURNING inet_server_port()")
        expect_eq(port, PRIMARY, "implicit transaction ran on")
        c2.commit()
        rows = c2.execute("SELECT k FROM kv WHERE k IN (1002, 1003) ORDER BY k").fetchall()
        expect_eq(rows, [(1003,)], "rows after rollback() + commit()")
        c2.commit()


def copy(conn):
    rows = [(i, f"item {i}\twith tab", Decimal(i) / 100) for i in range(1, 2001)]
    with conn.cursor() as cur:
        with cur.copy("COPY items (id, name, price) FROM STDIN") as cp:
            for r in rows:
                cp.write_row(r)
        expect_eq(cur.rowcount, len(rows), "COPY FROM rowcount")
        # Right away, in a transaction (on the primary): text format.
        with conn.transaction():
            with cur.copy("COPY (SELECT id, name, price FROM items ORDER BY id) TO STDOUT") as cp:
                cp.set_types(["int4", "text", "numeric"])
                got = list(cp.rows())
            expect_eq(len(got), len(rows), "COPY TO rows in a transaction")
            check(got == rows, f"COPY TO in a transaction differs, first row {got[:1]}")
        # Outside a transaction (a replica, once it has caught up): binary format.
        wait_for_replay()
        with cur.copy(
            "COPY (SELECT id, name, price FROM items ORDER BY id) TO STDOUT (FORMAT BINARY)"
        ) as cp:
            cp.set_types(["int4", "text", "numeric"])
            got = list(cp.rows())
        check(got == rows, f"binary COPY TO differs: {len(got)} rows, first {got[:1]}")
        # A failed COPY leaves the session usable.
        try:
            with cur.copy("COPY items (id, name, price) FROM STDIN") as cp:
                cp.write("not-a-number\tx\t1\n")
            raise Failure("bad COPY data was accepted")
        except errors.InvalidTextRepresentation:
            pass
    expect_eq(one(conn, "SELECT 8")[0], 8, "after a failed COPY")


def settings(conn):
    # What a fresh session sees, from the primary directly.
    default_path = one(direct[PRIMARY], "SHOW search_path")[0]
    default_tz = one(direct[PRIMARY], "SHOW TimeZone")[0]
    check(default_tz != "Asia/Kathmandu", "cluster default TimeZone is already Kathmandu")
    conn.execute("SET search_path TO s1, public")
    conn.execute("SET TimeZone TO 'Asia/Kathmandu'")

    def verify(where, path="s1, public", marker="in s1"):
        expect_eq(one(conn, "SHOW search_path")[0], path, f"search_path {where}")
        expect_eq(one(conn, "SHOW TimeZone")[0], "Asia/Kathmandu", f"TimeZone {where}")
        expect_eq(
            one(conn, "SELECT %s::timestamptz::text", [INSTANT])[0],
            KATHMANDU,
            f"timestamptz rendering {where}",
        )
        expect_eq(one(conn, "SELECT x FROM marker")[0], marker, f"unqualified table {where}")
        # psycopg builds tzinfo from the TimeZone the server reported (ParameterStatus).
        expect_eq(
            conn.info.parameter_status("TimeZone"), "Asia/Kathmandu", f"ParameterStatus {where}"
        )
        dt = one(conn, "SELECT %s::timestamptz", [INSTANT])[0]
        expect_eq(
            dt.utcoffset(),
            datetime.timedelta(hours=5, minutes=45),
            f"timestamptz offset as psycopg parses it {where}",
        )

    verify("right after SET")
    with conn.transaction():
        conn.execute("INSERT INTO kv VALUES (2000, 'x')")
        verify("inside a transaction")
    for i in range(10):
        verify(f"after a transaction (#{i})")
        with conn.transaction():
            conn.execute("UPDATE kv SET v = %s WHERE k = 2000", [f"x{i}"])
    # A SET in a transaction that rolls back is undone.
    conn.execute("BEGIN")
    conn.execute("SET TimeZone TO 'UTC'")
    conn.execute("ROLLBACK")
    verify("after a rolled-back SET")
    # SET LOCAL lasts until the end of its transaction.
    with conn.transaction():
        conn.execute("SET LOCAL search_path TO public")
        expect_eq(one(conn, "SELECT x FROM marker")[0], "in public", "SET LOCAL search_path")
    verify("after SET LOCAL")
    # Another client's session starts from the defaults, whatever backend it gets.
    with connect() as other:
        for i in range(6):
            expect_eq(one(other, "SHOW search_path")[0], default_path, f"other session #{i}")
            expect_eq(one(other, "SHOW TimeZone")[0], default_tz, f"other session #{i}")
            expect_eq(one(other, "SELECT x FROM marker")[0], "in public", f"other session #{i}")
    conn.execute("RESET search_path")
    expect_eq(one(conn, "SHOW search_path")[0], default_path, "search_path after RESET")
    expect_eq(one(conn, "SELECT x FROM marker")[0], "in public", "marker after RESET")
    expect_eq(one(conn, "SHOW TimeZone")[0], "Asia/Kathmandu", "TimeZone after RESET search_path")


def cursors(conn):
    with conn.transaction():
        conn.execute("DECLARE c CURSOR FOR SELECT g FROM generate_series(1, 100) g")
        got = []
        while True:
            batch = conn.execute("FETCH 7 FROM c").fetchall()
            if not batch:
                break
            got.extend(r[0] for r in batch)
        conn.execute("CLOSE c")
        expect_eq(got, list(range(1, 101)), "DECLARE/FETCH")
        expect_eq(one(conn, "SELECT inet_server_port()")[0], PRIMARY, "cursor transaction on")
    # psycopg's server-side cursor (DECLARE + FETCH FORWARD itersize).
    with conn.transaction():
        with conn.cursor(name="big") as cur:
            cur.itersize = 9
            cur.execute("SELECT g, %s::text FROM generate_series(1, 100) g", ["p"])
            got = [r[0] for r in cur]
        expect_eq(got, list(range(1, 101)), "psycopg server-side cursor")


def cancel(conn):
    result = {}

    def sleeper():
        t0 = time.monotonic()
        try:
            conn.execute(SLEEP_SQL)
            result["err"] = None
        except Exception as e:  # noqa: BLE001 - reported below
            result["err"] = e
        result["took"] = time.monotonic() - t0

    th = threading.Thread(target=sleeper)
    th.start()
    poll(
        "pg_sleep(30) to run on some node",
        lambda: True
        if any(one(d, ACTIVE_SLEEP_SQL)[0] > 0 for d in direct.values())
        else None,
    )
    conn.cancel_safe(timeout=CANCEL_LIMIT_SECONDS)
    th.join(CANCEL_LIMIT_SECONDS)
    check(not th.is_alive(), "pg_sleep(30) still running after cancel")
    err = result["err"]
    check(err is not None, "pg_sleep(30) finished without an error after cancel")
    check(
        isinstance(err, errors.QueryCanceled),
        f"cancel gave {type(err).__name__}: {err} (SQLSTATE {getattr(err, 'sqlstate', None)})",
    )
    expect_eq(err.sqlstate, "57014", "SQLSTATE of the cancelled statement")
    check(result["took"] < CANCEL_LIMIT_SECONDS, f"cancel took {result['took']:.1f}s")
    print(f"  pg_sleep(30) cancelled after {result['took']:.2f}s")
    expect_eq(one(conn, "SELECT 9")[0], 9, "after cancel")


def pool_workload():
    pool = ConnectionPool(
        conninfo(),
        min_size=POOL_WORKERS,
        max_size=POOL_WORKERS,
        kwargs={"autocommit": True, **driver_kwargs()},
        open=True,
    )
    try:
        pool.wait(timeout=30)

        def worker(w):
            errs = []
            written = 0
            for i in range(POOL_OPS):
                try:
                    with pool.connection() as c:
                        op = i % 5
                        if op in (0, 1):
                            (port,) = one(
                                c,
                                "INSERT INTO pool_t VALUES (%s, %s, %s) RETURNING inet_server_port()",
                                [w, i, f"w{w}i{i}"],
                            )
                            expect_eq(port, PRIMARY, "pool write ran on")
                            written += 1
                        elif op == 2:
                            n, port = one(c, "SELECT %s::int * 2, inet_server_port()", [i])
                            expect_eq(n, i * 2, "pool read")
                            check(port in REPLICAS, f"pool read ran on {port}")
                        elif op == 3:
                            with c.transaction():
                                (v,) = one(
                                    c,
                                    "UPDATE pool_t SET v = v || '!' WHERE worker = %s AND i = %s "
                                    "RETURNING v",
                                    [w, i - 2],
                                )
                                expect_eq(v, f"w{w}i{i - 2}!", "pool update")
                                (n,) = one(c, "SELECT count(*) FROM pool_t WHERE worker = %s", [w])
                                expect_eq(n, written, "own rows in a transaction")
                        else:
                            (n,) = one(c, "SELECT count(*) FROM pool_t WHERE worker = %s", [w])
                            check(0 <= n <= written, f"replica count {n} > written {written}")
                except Exception as e:  # noqa: BLE001 - counted and reported
                    errs.append(f"worker {w} op {i}: {type(e).__name__}: {e}")
            return errs

        with ThreadPoolExecutor(POOL_WORKERS) as ex:
            errs = [e for r in ex.map(worker, range(POOL_WORKERS)) for e in r]
        check(not errs, f"{len(errs)} errors in the pool workload, e.g. {errs[:3]}")
        with pool.connection() as c:
            with c.transaction():
                (n,) = one(c, "SELECT count(*) FROM pool_t")
        expect_eq(n, POOL_WORKERS * POOL_OPS * 2 // 5, "rows written by the pool")
    finally:
        pool.close()


def main():
    conn = connect()
    if not steps.run("connect and create tables", lambda: setup(conn)):
        steps.finish()
    for name, fn in [
        ("prepared statements reused across reads and writes", prepared_statements),
        ("transactions: commit, rollback, errors", transactions),
        ("COPY in and out", copy),
        ("SET search_path and TimeZone", settings),
        ("cursor in a transaction", cursors),
        ("cancel pg_sleep(30)", cancel),
    ]:
        if not steps.run(name, lambda fn=fn: fn(conn)):
            # The next step starts from a clean session.
            conn.close()
            conn = connect()
    steps.run(f"pool of {POOL_WORKERS} x {POOL_OPS} mixed operations", pool_workload)
    conn.close()
    for d in direct.values():
        d.close()
    steps.finish()


try:
    main()
except Exception as e:  # noqa: BLE001 - outside any step: connecting, closing
    steps.run("outside the steps", lambda: (_ for _ in ()).throw(e))
    steps.finish()
