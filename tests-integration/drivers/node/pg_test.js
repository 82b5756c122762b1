// node-postgres through pgrelay: run by tests-integration/tests/drivers.rs.
//
// normal:   node-postgres' defaults: unnamed statements (Parse/Bind/Execute per query with
//           parameters, the simple query protocol without).
// prepared: named queries ({ name, text, values }): prepared once per connection,
//           then only Bind/Execute.
'use strict'

const pg = require('pg')
const Cursor = require('pg-cursor')
const { from: copyFrom, to: copyTo } = require('pg-copy-streams')
const { Readable } = require('node:stream')
const { pipeline } = require('node:stream/promises')

const DEADLINE_MS = 30000
const CANCEL_LIMIT_MS = 10000
const POOL_WORKERS = 10
const POOL_OPS = 50
const INSTANT = '2024-01-15 12:00:00+00'
const KATHMANDU = '2024-01-15 17:45:00+05:45'
const SLEEP_SQL = 'SELECT pg_sleep(30)'
const ACTIVE_SLEEP_SQL =
  "SELECT count(*)::int AS n FROM pg_stat_activity WHERE query LIKE '%pg_sleep(30)%' " +
  "AND state = 'active' AND pid <> pg_backend_pid()"

function parseArgs(argv) {
  const a = {}
  for (let i = 0; i < argv.length; i += 2) {
    if (!argv[i].startsWith('--') || argv[i + 1] === undefined) {
      throw new Error(`bad arguments near ${argv[i]}`)
    }
    a[argv[i].slice(2)] = argv[i + 1]
  }
  for (const k of ['host', 'port', 'user', 'password', 'dbname', 'primary-port', 'replica-ports', 'mode']) {
    if (a[k] === undefined) throw new Error(`--${k} is required`)
  }
  if (!['normal', 'prepared'].includes(a.mode)) throw new Error(`bad --mode ${a.mode}`)
  return a
}

const args = parseArgs(process.argv.slice(2))
const PREPARED = args.mode === 'prepared'
const PRIMARY = Number(args['primary-port'])
const REPLICAS = args['replica-ports'].split(',').filter(Boolean).map(Number)
const tag = `[node-postgres ${args.mode}]`
let currentStep = 'start'

class Failure extends Error {}

function check(cond, msg) {
  if (!cond) throw new Failure(msg)
}

function expectEq(got, want, what) {
  const g = JSON.stringify(got)
  const w = JSON.stringify(want)
  if (g !== w) throw new Failure(`${what}: got ${g}, want ${w}`)
}

function config(port) {
  return {
    host: args.host,
    port: port || Number(args.port),
    user: args.user,
    password: args.password,
    database: args.dbname,
    connectionTimeoutMillis: 10000,
  }
}

// A query as the mode says: plain, or a named prepared statement.
function q(name, text, values) {
  return PREPARED ? { name, text, values } : { text, values }
}

async function one(client, name, text, values) {
  const res = await client.query(q(name, text, values))
  return res.rows[0]
}

const pause = () => new Promise((r) => setTimeout(r, 20))

async function poll(what, fn) {
  const end = Date.now() + DEADLINE_MS
  for (;;) {
    const v = await fn()
    if (v !== undefined && v !== null) return v
    check(Date.now() < end, `timed out waiting for ${what}`)
    await pause()
  }
}

const direct = new Map()

async function connect(port) {
  const c = new pg.Client(config(port))
  await c.connect()
  return c
}

async function waitForReplay() {
  const lsn = (await direct.get(PRIMARY).query('SELECT pg_current_wal_lsn()::text AS l')).rows[0].l
  for (const port of REPLICAS) {
    await poll(`replica ${port} to replay ${lsn}`, async () => {
      const r = await direct
        .get(port)
        .query('SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn AS ok', [lsn])
      return r.rows[0].ok ? true : null
    })
  }
}

async function setup(c) {
  for (const port of [PRIMARY, ...REPLICAS]) direct.set(port, await connect(port))
  // A multi-statement string: the simple query protocol.
  await c.query(`
    CREATE TABLE kv (k int PRIMARY KEY, v text);
    CREATE SCHEMA s1;
    CREATE TABLE s1.marker (x text);
    INSERT INTO s1.marker VALUES ('in s1');
    CREATE TABLE public.marker (x text);
    INSERT INTO public.marker VALUES ('in public');
    CREATE TABLE items (id int PRIMARY KEY, name text, price numeric);
    CREATE TABLE pool_t (worker int, i int, v text, PRIMARY KEY (worker, i));
  `)
  await waitForReplay()
}

async function preparedStatements(c) {
  const read = ['read', 'SELECT $1::int + 1 AS n, inet_server_port() AS port']
  const write = ['write', 'INSERT INTO kv VALUES ($1, $2) RETURNING inet_server_port() AS port']
  const get = ['get', 'SELECT v, inet_server_port() AS port FROM kv WHERE k = $1']
  const readPorts = []
  for (let i = 0; i < 60; i++) {
    const r = await one(c, ...read, [i])
    expectEq(r.n, i + 1, `read #${i}`)
    readPorts.push(r.port)
    const w = await one(c, ...write, [i, `v${i}`])
    expectEq(w.port, PRIMARY, `write #${i} ran on`)
    if (i % 10 === 0) {
      await c.query('BEGIN')
      const g = await one(c, ...get, [i])
      expectEq([g.v, g.port], [`v${i}`, PRIMARY], `get #${i} in a transaction`)
      await c.query('COMMIT')
    }
  }
  expectEq(
    [...new Set(readPorts)].sort(),
    [...REPLICAS].sort(),
    `replicas that served the reads (in order: ${readPorts.join(', ')})`,
  )
  for (let i = 0; i < 60; i += 6) {
    const g = await poll(`kv row ${i} on a replica`, () => one(c, ...get, [i]))
    expectEq(g.v, `v${i}`, `get #${i} on a replica`)
    check(REPLICAS.includes(g.port), `get #${i} ran on ${g.port}, not a replica`)
  }
}

async function transactions(c) {
  const ins = ['tx_ins', 'INSERT INTO kv VALUES ($1, $2) RETURNING k']
  await c.query('BEGIN')
  await one(c, ...ins, [1000, 'rolled back'])
  await c.query('ROLLBACK')
  await c.query('BEGIN')
  await one(c, ...ins, [1001, 'committed'])
  await c.query('COMMIT')
  await c.query('BEGIN')
  expectEq((await one(c, 'tx_port', 'SELECT inet_server_port() AS p')).p, PRIMARY, 'a transaction ran on')
  const ks = await c.query(q('tx_keys', 'SELECT k FROM kv WHERE k = ANY($1::int[]) ORDER BY k', [[1000, 1001]]))
  expectEq(ks.rows.map((r) => r.k), [1001], 'rows after rollback + commit')
  await c.query('COMMIT')
  await c.query('BEGIN')
  let err = await one(c, ...ins, [1001, 'duplicate']).then(() => null, (e) => e)
  check(err && err.code === '23505', `duplicate key: ${err}`)
  err = await c.query('SELECT 1').then(() => null, (e) => e)
  check(err && err.code === '25P02', `statement in an aborted transaction: ${err}`)
  await c.query('ROLLBACK')
  expectEq((await one(c, 'seven', 'SELECT $1::int AS n', [7])).n, 7, 'after ROLLBACK')
}

function itemsText() {
  let s = ''
  for (let i = 1; i <= 2000; i++) s += `${i}\titem ${i}\\twith tab\t${(i / 100).toFixed(2)}\n`
  return s
}

async function copyOut(c, sql) {
  const chunks = []
  await pipeline(c.query(copyTo(sql)), async function* (source) {
    for await (const chunk of source) chunks.push(chunk)
  })
  return Buffer.concat(chunks).toString()
}

async function copy(c) {
  const data = itemsText()
  const sink = c.query(copyFrom('COPY items (id, name, price) FROM STDIN'))
  const lines = data.match(/[^\n]*\n/g)
  await pipeline(Readable.from(lines.map((l) => Buffer.from(l))), sink)
  expectEq(sink.rowCount, 2000, 'COPY FROM rows')
  const out = 'COPY (SELECT id, name, price FROM items ORDER BY id) TO STDOUT'
  await c.query('BEGIN')
  let got = await copyOut(c, out)
  await c.query('COMMIT')
  check(got === data, `COPY TO in a transaction: ${got.length} of ${data.length} bytes`)
  await waitForReplay()
  got = await copyOut(c, out)
  check(got === data, `COPY TO on a replica: ${got.length} of ${data.length} bytes`)
  // A failed COPY leaves the session usable.
  const bad = c.query(copyFrom('COPY items (id, name, price) FROM STDIN'))
  const err = await pipeline(Readable.from([Buffer.from('not-a-number\tx\t1\n')]), bad).then(
    () => null,
    (e) => e,
  )
  check(err && err.code === '22P02', `bad COPY data: ${err}`)
  expectEq((await one(c, 'eight', 'SELECT $1::int AS n', [8])).n, 8, 'after a failed COPY')
}

async function settings(c) {
  const show = async (name) => Object.values(await one(c, `show_${name}`, `SHOW ${name}`))[0]
  const defaultPath = (await direct.get(PRIMARY).query('SHOW search_path')).rows[0].search_path
  const defaultTz = (await direct.get(PRIMARY).query('SHOW TimeZone')).rows[0].TimeZone
  check(defaultTz !== 'Asia/Kathmandu', 'cluster default TimeZone is already Kathmandu')
  await c.query('SET search_path TO s1, public')
  await c.query("SET TimeZone TO 'Asia/Kathmandu'")
  const marker = async () => (await one(c, 'marker', 'SELECT x FROM marker')).x
  const verify = async (where) => {
    expectEq(await show('search_path'), 's1, public', `search_path ${where}`)
    expectEq(await show('TimeZone'), 'Asia/Kathmandu', `TimeZone ${where}`)
    const t = await one(c, 'render', 'SELECT $1::timestamptz::text AS t', [INSTANT])
    expectEq(t.t, KATHMANDU, `timestamptz rendering ${where}`)
    expectEq(await marker(), 'in s1', `unqualified table ${where}`)
  }
  await verify('right after SET')
  await c.query('BEGIN')
  await c.query("INSERT INTO kv VALUES (2000, 'x')")
  await verify('inside a transaction')
  await c.query('COMMIT')
  for (let i = 0; i < 10; i++) {
    await verify(`after a transaction (#${i})`)
    await c.query('BEGIN')
    await c.query(q('upd2000', 'UPDATE kv SET v = $1 WHERE k = 2000', [`x${i}`]))
    await c.query('COMMIT')
  }
  await c.query('BEGIN')
  await c.query("SET TimeZone TO 'UTC'")
  await c.query('ROLLBACK')
  await verify('after a rolled-back SET')
  await c.query('BEGIN')
  await c.query('SET LOCAL search_path TO public')
  expectEq(await marker(), 'in public', 'SET LOCAL search_path')
  await c.query('COMMIT')
  await verify('after SET LOCAL')
  const other = await connect()
  try {
    for (let i = 0; i < 6; i++) {
      expectEq((await other.query('SHOW search_path')).rows[0].search_path, defaultPath, `other #${i}`)
      expectEq((await other.query('SHOW TimeZone')).rows[0].TimeZone, defaultTz, `other #${i}`)
      expectEq((await other.query('SELECT x FROM marker')).rows[0].x, 'in public', `other #${i}`)
    }
  } finally {
    await other.end()
  }
  await c.query('RESET search_path')
  expectEq(await show('search_path'), defaultPath, 'search_path after RESET')
  expectEq(await marker(), 'in public', 'marker after RESET')
  expectEq(await show('TimeZone'), 'Asia/Kathmandu', 'TimeZone after RESET search_path')
}

async function cursors(c) {
  await c.query('BEGIN')
  await c.query('DECLARE c CURSOR FOR SELECT g FROM generate_series(1, 100) g')
  let got = []
  for (;;) {
    const r = await c.query('FETCH 7 FROM c')
    if (r.rows.length === 0) break
    got.push(...r.rows.map((x) => x.g))
  }
  await c.query('CLOSE c')
  expectEq(got, Array.from({ length: 100 }, (_, i) => i + 1), 'DECLARE/FETCH')
  expectEq((await one(c, 'cur_port', 'SELECT inet_server_port() AS p')).p, PRIMARY, 'cursor transaction on')
  await c.query('COMMIT')
  // pg-cursor: an unnamed portal read with Execute row limits and Flush.
  await c.query('BEGIN')
  const cursor = c.query(new Cursor('SELECT g FROM generate_series(1, $1::int) g', [100]))
  got = []
  for (;;) {
    const rows = await cursor.read(9)
    if (rows.length === 0) break
    got.push(...rows.map((x) => x.g))
  }
  await cursor.close()
  await c.query('COMMIT')
  expectEq(got, Array.from({ length: 100 }, (_, i) => i + 1), 'pg-cursor')
}

async function sleepingSomewhere() {
  for (const d of direct.values()) {
    if ((await d.query(ACTIVE_SLEEP_SQL)).rows[0].n > 0) return true
  }
  return null
}

async function cancel(c) {
  const t0 = Date.now()
  let query
  const sleeping = new Promise((resolve) => {
    query = new pg.Query(q('sleep', SLEEP_SQL), undefined, (err) => resolve(err || null))
    c.query(query)
  })
  await poll('pg_sleep(30) to run on some node', sleepingSomewhere)
  // node-postgres' cancel: another Client sends a CancelRequest with this one's key.
  new pg.Client(config()).cancel(c, query)
  const timer = new Promise((r) => setTimeout(() => r('timeout'), CANCEL_LIMIT_MS))
  const err = await Promise.race([sleeping, timer])
  check(err !== 'timeout', `pg_sleep(30) still running ${CANCEL_LIMIT_MS}ms after cancel`)
  check(err !== null, 'pg_sleep(30) finished without an error after cancel')
  expectEq(err.code, '57014', `SQLSTATE of the cancelled statement (${err.message})`)
  const took = Date.now() - t0
  check(took < CANCEL_LIMIT_MS, `cancel took ${took}ms`)
  console.log(`  pg_sleep(30) cancelled after ${(took / 1000).toFixed(2)}s`)
  expectEq((await one(c, 'nine', 'SELECT $1::int AS n', [9])).n, 9, 'after cancel')
}

async function poolWorkload() {
  const pool = new pg.Pool({ ...config(), max: POOL_WORKERS })
  const connected = []
  try {
    // Open all ten connections up front.
    for (let i = 0; i < POOL_WORKERS; i++) connected.push(await pool.connect())
    connected.forEach((cl) => cl.release())
    const worker = async (w) => {
      const errs = []
      let written = 0
      for (let i = 0; i < POOL_OPS; i++) {
        try {
          const kind = i % 5
          if (kind <= 1) {
            const r = await one(
              pool,
              'pool_ins',
              'INSERT INTO pool_t VALUES ($1, $2, $3) RETURNING inet_server_port() AS p',
              [w, i, `w${w}i${i}`],
            )
            expectEq(r.p, PRIMARY, 'pool write ran on')
            written++
          } else if (kind === 2) {
            const r = await one(pool, 'pool_read', 'SELECT $1::int * 2 AS n, inet_server_port() AS p', [i])
            expectEq(r.n, i * 2, 'pool read')
            check(REPLICAS.includes(r.p), `pool read ran on ${r.p}`)
          } else if (kind === 3) {
            const cl = await pool.connect()
            try {
              await cl.query('BEGIN')
              const u = await one(
                cl,
                'pool_upd',
                "UPDATE pool_t SET v = v || '!' WHERE worker = $1 AND i = $2 RETURNING v",
                [w, i - 2],
              )
              expectEq(u.v, `w${w}i${i - 2}!`, 'pool update')
              const n = await one(cl, 'pool_count', 'SELECT count(*)::int AS n FROM pool_t WHERE worker = $1', [w])
              expectEq(n.n, written, 'own rows in a transaction')
              await cl.query('COMMIT')
              cl.release()
            } catch (e) {
              cl.release(true)
              throw e
            }
          } else {
            const n = await one(pool, 'pool_count', 'SELECT count(*)::int AS n FROM pool_t WHERE worker = $1', [w])
            check(n.n >= 0 && n.n <= written, `replica count ${n.n} > written ${written}`)
          }
        } catch (e) {
          errs.push(`worker ${w} op ${i}: ${e.message}${e.code ? ` (SQLSTATE ${e.code})` : ''}`)
        }
      }
      return errs
    }
    const results = await Promise.all(Array.from({ length: POOL_WORKERS }, (_, w) => worker(w)))
    const errs = results.flat()
    check(errs.length === 0, `${errs.length} errors in the pool workload, e.g. ${errs.slice(0, 3).join('; ')}`)
    const cl = await pool.connect()
    await cl.query('BEGIN')
    const n = (await cl.query('SELECT count(*)::int AS n FROM pool_t')).rows[0].n
    await cl.query('COMMIT')
    cl.release()
    expectEq(n, (POOL_WORKERS * POOL_OPS * 2) / 5, 'rows written by the pool')
  } finally {
    await pool.end()
  }
}

// Runs the steps in order; a failed step is reported and the next ones still run (on a
// fresh connection), so one run shows every failure.
async function main() {
  const started = Date.now()
  const failed = []
  let count = 0
  const run = async (name, fn) => {
    count++
    currentStep = name
    console.log(`${tag} ${name}`)
    try {
      await fn()
      return true
    } catch (e) {
      const state = e && e.code ? ` (SQLSTATE ${e.code})` : ''
      const line = `FAILED: node-postgres (${args.mode}) at step '${name}': ${e && e.message}${state}`
      failed.push(line)
      console.error(line)
      console.error(e && e.stack)
      console.log(`${tag} step failed: ${name}`)
      return false
    }
  }
  let c = await connect()
  if (await run('connect and create tables', () => setup(c))) {
    for (const [name, fn] of [
      ['prepared statements reused across reads and writes', preparedStatements],
      ['transactions: commit, rollback, errors', transactions],
      ['COPY in and out', copy],
      ['SET search_path and TimeZone', settings],
      ['cursor in a transaction', cursors],
      ['cancel pg_sleep(30)', cancel],
    ]) {
      if (!(await run(name, () => fn(c)))) {
        // The next step starts from a clean session.
        c.end().catch(() => {})
        c = await connect()
      }
    }
    await run(`pool of ${POOL_WORKERS} x ${POOL_OPS} mixed operations`, poolWorkload)
  }
  await c.end()
  for (const d of direct.values()) await d.end()
  const took = ((Date.now() - started) / 1000).toFixed(1)
  if (failed.length > 0) {
    console.error(`node-postgres (${args.mode}): ${failed.length} of ${count} steps failed in ${took}s:`)
    for (const line of failed) console.error(`  ${line}`)
    return 1
  }
  console.log(`${tag} all ${count} steps passed in ${took}s`)
  return 0
}

main().then(
  (code) => process.exit(code),
  (e) => {
    const state = e && e.code ? ` (SQLSTATE ${e.code})` : ''
    console.error(`FAILED: node-postgres (${args.mode}) at step '${currentStep}': ${e && e.message}${state}`)
    console.error(e && e.stack)
    process.exit(1)
  },
)
