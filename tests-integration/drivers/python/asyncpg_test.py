"""asyncpg through pgrelay: run by tests-integration/tests/drivers.rs.

normal:   asyncpg's defaults: conn.fetch*(sql, ...) prepares every query as a named
          server-side statement and caches it (statement_cache_size=100).
prepared: explicit conn.prepare() statements, kept and reused.
"""

import asyncio
import csv
import io
import time
from decimal import Decimal

import asyncpg
from asyncpg import exceptions

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
)

args = parse_args()
PREPARED = args.mode == "prepared"
PRIMARY = args.primary_port
REPLICAS = set(args.replica_ports)
steps = Steps("asyncpg", args.mode)


async def connect(port=None):
    return await asyncpg.connect(
        host=args.host,
        port=port or args.port,
        user=args.user,
        password=args.password,
        database=args.dbname,
        timeout=10,
    )


class Session:
    """Runs queries the way the mode says: asyncpg's implicit statement cache, or explicit
    prepared statements created once per SQL text and reused."""

    def __init__(self, conn):
        self.conn = conn
        self.stmts = {}

    async def stmt(self, sql):
        st = self.stmts.get(sql)
        if st is None:
            st = self.stmts[sql] = await self.conn.prepare(sql)
        return st

    async def row(self, sql, *a):
        if PREPARED:
            return await (await self.stmt(sql)).fetchrow(*a)
        return await self.conn.fetchrow(sql, *a)

    async def val(self, sql, *a):
        if PREPARED:
            return await (await self.stmt(sql)).fetchval(*a)
        return await self.conn.fetchval(sql, *a)

    async def rows(self, sql, *a):
        if PREPARED:
            return await (await self.stmt(sql)).fetch(*a)
        return await self.conn.fetch(sql, *a)


direct = {}


async def pause():
    await asyncio.sleep(0.02)


async def poll(what, fn):
    end = deadline()
    while True:
        v = await fn()
        if v is not None:
            return v
        check(time.monotonic() < end, f"timed out waiting for {what}")
        await pause()


async def wait_for_replay():
    lsn = await direct[PRIMARY].fetchval("SELECT pg_current_wal_lsn()::text")
    for port in sorted(REPLICAS):
        async def caught_up(port=port):
            ok = await direct[port].fetchval(
                "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn", lsn
            )
            return True if ok else None

        await poll(f"replica {port} to replay {lsn}", caught_up)


async def setup(s):
    for port in [PRIMARY, *sorted(REPLICAS)]:
        direct[port] = await connect(port)
    # A multi-statement string: the simple query protocol.
    await s.conn.execute(
        """
        CREATE TABLE kv (k int PRIMARY KEY, v text);
        CREATE SCHEMA s1;
        CREATE TABLE s1.marker (x text);
        INSERT INTO s1.marker VALUES ('in s1');
        CREATE TABLE public.marker (x text);
        INSERT INTO public.marker VALUES ('in public');
        CREATE TABLE items (id int PRIMARY KEY, name text, price numeric);
        CREATE TABLE pool_t (worker int, i int, v text, PRIMARY KEY (worker, i));
        """
    )
    await wait_for_replay()


async def prepared_statements(s):
    read_q = "SELECT $1::int + 1 AS n, inet_server_port() AS port"
    write_q = "INSERT INTO kv VALUES ($1, $2) RETURNING inet_server_port()"
    get_q = "SELECT v, inet_server_port() FROM kv WHERE k = $1"
    read_ports = set()
    for i in range(60):
        n, port = await s.row(read_q, i)
        expect_eq(n, i + 1, f"read #{i}")
        read_ports.add(port)
        port = await s.val(write_q, i, f"v{i}")
        expect_eq(port, PRIMARY, f"write #{i} ran on")
        if i % 10 == 0:
            async with s.conn.transaction():
                row = await s.row(get_q, i)
                expect_eq(tuple(row), (f"v{i}", PRIMARY), f"get #{i} in a transaction")
    expect_eq(read_ports, REPLICAS, "replicas that served the reads")
    for i in range(0, 60, 6):
        row = await poll(f"kv row {i} on a replica", lambda i=i: s.row(get_q, i))
        expect_eq(row[0], f"v{i}", f"get #{i} on a replica")
        check(row[1] in REPLICAS, f"get #{i} ran on {row[1]}, not a replica")


async def transactions(s):
    class Boom(Exception):
        pass

    try:
        async with s.conn.transaction():
            await s.conn.execute("INSERT INTO kv VALUES (1000, 'rolled back')")
            raise Boom()
    except Boom:
        pass
    async with s.conn.transaction():
        await s.val("INSERT INTO kv VALUES ($1, $2) RETURNING k", 1001, "committed")
    async with s.conn.transaction():
        expect_eq(await s.val("SELECT inet_server_port()"), PRIMARY, "a transaction ran on")
        rows = await s.rows("SELECT k FROM kv WHERE k = ANY($1::int[]) ORDER BY k", [1000, 1001])
        expect_eq([r[0] for r in rows], [1001], "rows after rollback + commit")
    # Explicit BEGIN, an error, the aborted state, ROLLBACK.
    await s.conn.execute("BEGIN")
    try:
        await s.val("INSERT INTO kv VALUES ($1, $2) RETURNING k", 1001, "duplicate")
        raise Failure("duplicate key was accepted")
    except exceptions.UniqueViolationError:
        pass
    try:
        await s.conn.execute("SELECT 1")
        raise Failure("statement in an aborted transaction was accepted")
    except exceptions.InFailedSQLTransactionError:
        pass
    await s.conn.execute("ROLLBACK")
    expect_eq(await s.val("SELECT $1::int", 7), 7, "after ROLLBACK")


async def copy(s):
    conn = s.conn
    rows = [(i, f"item {i}\twith tab", Decimal(i) / 100) for i in range(1, 2001)]
    # Binary COPY FROM STDIN.
    status = await conn.copy_records_to_table(
        "items", records=rows, columns=["id", "name", "price"]
    )
    expect_eq(status, f"COPY {len(rows)}", "copy_records_to_table")

    def parse(buf):
        out = []
        for r in csv.reader(io.StringIO(buf.getvalue().decode())):
            out.append((int(r[0]), r[1], Decimal(r[2])))
        return out

    query = "SELECT id, name, price FROM items ORDER BY id"
    async with conn.transaction():
        buf = io.BytesIO()
        await conn.copy_from_query(query, output=buf, format="csv")
        got = parse(buf)
        check(got == rows, f"COPY TO in a transaction: {len(got)} rows, first {got[:1]}")
    await wait_for_replay()
    buf = io.BytesIO()
    status = await conn.copy_from_query(query, output=buf, format="csv")
    expect_eq(status, f"COPY {len(rows)}", "copy_from_query status")
    got = parse(buf)
    check(got == rows, f"COPY TO on a replica: {len(got)} rows, first {got[:1]}")
    # A failed COPY leaves the session usable.
    try:
        await conn.copy_to_table("items", source=io.BytesIO(b"not-a-number\tx\t1\n"))
        raise Failure("bad COPY data was accepted")
    except exceptions.InvalidTextRepresentationError:
        pass
    expect_eq(await s.val("SELECT $1::int", 8), 8, "after a failed COPY")


async def settings(s):
    conn = s.conn
    default_path = await direct[PRIMARY].fetchval("SHOW search_path")
    default_tz = await direct[PRIMARY].fetchval("SHOW TimeZone")
    check(default_tz != "Asia/Kathmandu", "cluster default TimeZone is already Kathmandu")
    await conn.execute("SET search_path TO s1, public")
    await conn.execute("SET TimeZone TO 'Asia/Kathmandu'")

    async def verify(where, path="s1, public", marker="in s1"):
        expect_eq(await s.val("SHOW search_path"), path, f"search_path {where}")
        expect_eq(await s.val("SHOW TimeZone"), "Asia/Kathmandu", f"TimeZone {where}")
        expect_eq(
            await s.val("SELECT $1::text::timestamptz::text", INSTANT),
            KATHMANDU,
            f"timestamptz rendering {where}",
        )
        expect_eq(await s.val("SELECT x FROM marker"), marker, f"unqualified table {where}")
        expect_eq(
            conn.get_settings().TimeZone, "Asia/Kathmandu", f"ParameterStatus TimeZone {where}"
        )

    await verify("right after SET")
    async with conn.transaction():
        await conn.execute("INSERT INTO kv VALUES (2000, 'x')")
        await verify("inside a transaction")
    for i in range(10):
        await verify(f"after a transaction (#{i})")
        async with conn.transaction():
            await s.val("UPDATE kv SET v = $1 WHERE k = 2000 RETURNING k", f"x{i}")
    await conn.execute("BEGIN")
    await conn.execute("SET TimeZone TO 'UTC'")
    await conn.execute("ROLLBACK")
    await verify("after a rolled-back SET")
    async with conn.transaction():
        await conn.execute("SET LOCAL search_path TO public")
        expect_eq(await s.val("SELECT x FROM marker"), "in public", "SET LOCAL search_path")
    await verify("after SET LOCAL")
    other = await connect()
    try:
        for i in range(6):
            expect_eq(await other.fetchval("SHOW search_path"), default_path, f"other #{i}")
            expect_eq(await other.fetchval("SHOW TimeZone"), default_tz, f"other #{i}")
            expect_eq(await other.fetchval("SELECT x FROM marker"), "in public", f"other #{i}")
    finally:
        await other.close()
    await conn.execute("RESET search_path")
    expect_eq(await s.val("SHOW search_path"), default_path, "search_path after RESET")
    expect_eq(await s.val("SELECT x FROM marker"), "in public", "marker after RESET")
    expect_eq(await s.val("SHOW TimeZone"), "Asia/Kathmandu", "TimeZone after RESET search_path")


async def cursors(s):
    conn = s.conn
    async with conn.transaction():
        await conn.execute("DECLARE c CURSOR FOR SELECT g FROM generate_series(1, 100) g")
        got = []
        while True:
            batch = await conn.fetch("FETCH 7 FROM c")
            if not batch:
                break
            got.extend(r[0] for r in batch)
        await conn.execute("CLOSE c")
        expect_eq(got, list(range(1, 101)), "DECLARE/FETCH")
        expect_eq(await s.val("SELECT inet_server_port()"), PRIMARY, "cursor transaction on")
    # asyncpg's cursors: a portal read with Execute row limits.
    query = "SELECT g FROM generate_series(1, $1::int) g"
    async with conn.transaction():
        if PREPARED:
            st = await s.stmt(query)
            got = [r[0] async for r in st.cursor(100, prefetch=9)]
            cur = await st.cursor(100)
        else:
            got = [r[0] async for r in conn.cursor(query, 100, prefetch=9)]
            cur = await conn.cursor(query, 100)
        expect_eq(got, list(range(1, 101)), "asyncpg cursor iteration")
        first = [r[0] for r in await cur.fetch(10)]
        await cur.forward(50)
        rest = [r[0] for r in await cur.fetch(100)]
        expect_eq(first + rest, list(range(1, 11)) + list(range(61, 101)), "asyncpg cursor")


async def sleeping_somewhere():
    for d in direct.values():
        if await d.fetchval(ACTIVE_SLEEP_SQL) > 0:
            return True
    return None


async def cancel(s):
    conn = s.conn
    t0 = time.monotonic()
    if PREPARED:
        st = await s.stmt(SLEEP_SQL)
        task = asyncio.create_task(st.fetchval())
    else:
        task = asyncio.create_task(conn.fetchval(SLEEP_SQL))
    await poll("pg_sleep(30) to run on some node", sleeping_somewhere)
    # asyncpg's cancel: cancelling the task sends a CancelRequest (to pgrelay, with the
    # BackendKeyData pgrelay gave) and waits for the server to acknowledge it. asyncpg
    # does not surface the statement's 57014 error; the checks below prove the backend
    # stopped: the sleep is gone from every node, the connection answers right away.
    task.cancel()
    try:
        await asyncio.wait_for(task, CANCEL_LIMIT_SECONDS)
        raise Failure("pg_sleep(30) finished without being cancelled")
    except asyncio.CancelledError:
        pass
    except asyncio.TimeoutError:
        raise Failure(f"pg_sleep(30) still running {CANCEL_LIMIT_SECONDS}s after cancel")

    async def stopped():
        return None if await sleeping_somewhere() else True

    await poll("the cancelled pg_sleep(30) to stop on the server", stopped)
    expect_eq(
        await asyncio.wait_for(s.val("SELECT $1::int", 9), CANCEL_LIMIT_SECONDS), 9, "after cancel"
    )
    took = time.monotonic() - t0
    check(took < CANCEL_LIMIT_SECONDS, f"cancel took {took:.1f}s")
    print(f"  pg_sleep(30) cancelled after {took:.2f}s")


async def pool_workload():
    pool = await asyncpg.create_pool(
        host=args.host,
        port=args.port,
        user=args.user,
        password=args.password,
        database=args.dbname,
        min_size=POOL_WORKERS,
        max_size=POOL_WORKERS,
        timeout=10,
    )
    try:
        async def op(c, w, i, written):
            ps = Session(c)
            kind = i % 5
            if kind in (0, 1):
                port = await ps.val(
                    "INSERT INTO pool_t VALUES ($1, $2, $3) RETURNING inet_server_port()",
                    w, i, f"w{w}i{i}",
                )
                expect_eq(port, PRIMARY, "pool write ran on")
                return written + 1
            if kind == 2:
                n, port = await ps.row("SELECT $1::int * 2, inet_server_port()", i)
                expect_eq(n, i * 2, "pool read")
                check(port in REPLICAS, f"pool read ran on {port}")
            elif kind == 3:
                async with c.transaction():
                    v = await ps.val(
                        "UPDATE pool_t SET v = v || '!' WHERE worker = $1 AND i = $2 RETURNING v",
                        w, i - 2,
                    )
                    expect_eq(v, f"w{w}i{i - 2}!", "pool update")
                    n = await ps.val("SELECT count(*) FROM pool_t WHERE worker = $1", w)
                    expect_eq(n, written, "own rows in a transaction")
            else:
                n = await ps.val("SELECT count(*) FROM pool_t WHERE worker = $1", w)
                check(0 <= n <= written, f"replica count {n} > written {written}")
            return written

        async def worker(w):
            errs = []
            written = 0
            for i in range(POOL_OPS):
                try:
                    async with pool.acquire() as c:
                        written = await op(c, w, i, written)
                except Exception as e:  # noqa: BLE001 - counted and reported
                    errs.append(f"worker {w} op {i}: {type(e).__name__}: {e}")
            return errs

        results = await asyncio.gather(*(worker(w) for w in range(POOL_WORKERS)))
        errs = [e for r in results for e in r]
        check(not errs, f"{len(errs)} errors in the pool workload, e.g. {errs[:3]}")
        async with pool.acquire() as c:
            async with c.transaction():
                n = await c.fetchval("SELECT count(*) FROM pool_t")
        expect_eq(n, POOL_WORKERS * POOL_OPS * 2 // 5, "rows written by the pool")
    finally:
        await asyncio.wait_for(pool.close(), 30)


async def main():
    s = Session(await connect())
    if not await steps.run_async("connect and create tables", lambda: setup(s)):
        steps.finish()
    for name, fn in [
        ("prepared statements reused across reads and writes", prepared_statements),
        ("transactions: commit, rollback, errors", transactions),
        ("COPY in and out", copy),
        ("SET search_path and TimeZone", settings),
        ("cursor in a transaction", cursors),
        ("cancel pg_sleep(30)", cancel),
    ]:
        if not await steps.run_async(name, lambda fn=fn: fn(s)):
            # The next step starts from a clean session.
            s.conn.terminate()
            s = Session(await connect())
    await steps.run_async(f"pool of {POOL_WORKERS} x {POOL_OPS} mixed operations", pool_workload)
    await s.conn.close()
    for d in direct.values():
        await d.close()
    steps.finish()


async def outside(e):
    raise e


try:
    asyncio.run(main())
except Exception as e:  # noqa: BLE001 - outside any step: connecting, closing
    asyncio.run(steps.run_async("outside the steps", lambda: outside(e)))
    steps.finish()
