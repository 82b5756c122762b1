// pgJDBC through pgrelay: run by tests-integration/tests/drivers.rs as
//   java -cp /usr/share/java/postgresql.jar JdbcTest.java --host ... --mode normal|prepared
//
// normal:   pgJDBC's defaults (prepareThreshold=5: a PreparedStatement becomes a named
//           server-side statement from its fifth execution).
// prepared: prepareThreshold=1: named server-side statements from the first execution.

import java.io.StringReader;
import java.io.StringWriter;
import java.math.BigDecimal;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Savepoint;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.Properties;
import java.util.TreeSet;
import java.util.concurrent.ArrayBlockingQueue;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import org.postgresql.PGConnection;
import org.postgresql.copy.CopyManager;

public class JdbcTest {
  static final long DEADLINE_MS = 30_000;
  static final long CANCEL_LIMIT_MS = 10_000;
  static final int POOL_WORKERS = 10;
  static final int POOL_OPS = 50;
  static final String INSTANT = "2024-01-15 12:00:00+00";
  static final String KATHMANDU = "2024-01-15 17:45:00+05:45";
  static final String SLEEP_SQL = "SELECT pg_sleep(30)";
  static final String ACTIVE_SLEEP_SQL =
      "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(30)%' "
          + "AND state = 'active' AND pid <> pg_backend_pid()";

  static Map<String, String> args = new HashMap<>();
  static boolean prepared;
  static int primary;
  static List<Integer> replicas = new ArrayList<>();
  static Map<Integer, Connection> direct = new LinkedHashMap<>();

  static class Failure extends RuntimeException {
    Failure(String msg) {
      super(msg);
    }
  }

  static void check(boolean cond, String msg) {
    if (!cond) throw new Failure(msg);
  }

  static void expectEq(Object got, Object want, String what) {
    if (!Objects.equals(got, want)) throw new Failure(what + ": got " + got + ", want " + want);
  }

  static void pause() throws InterruptedException {
    // The interval between two polls, never a wait for a condition by itself.
    Thread.sleep(20);
  }

  static Connection connect(Integer port, boolean viaProxy) throws SQLException {
    Properties p = new Properties();
    p.setProperty("user", args.get("user"));
    p.setProperty("password", args.get("password"));
    p.setProperty("sslmode", "disable");
    if (viaProxy && prepared) p.setProperty("prepareThreshold", "1");
    String url = "jdbc:postgresql://" + args.get("host") + ":" + port + "/" + args.get("dbname");
    return DriverManager.getConnection(url, p);
  }

  static Connection connect() throws SQLException {
    return connect(Integer.parseInt(args.get("port")), true);
  }

  static Object one(Connection c, String sql, Object... params) throws SQLException {
    try (PreparedStatement ps = c.prepareStatement(sql)) {
      for (int i = 0; i < params.length; i++) ps.setObject(i + 1, params[i]);
      try (ResultSet rs = ps.executeQuery()) {
        return rs.next() ? rs.getObject(1) : null;
      }
    }
  }

  static Object one(PreparedStatement ps, Object... params) throws SQLException {
    for (int i = 0; i < params.length; i++) ps.setObject(i + 1, params[i]);
    try (ResultSet rs = ps.executeQuery()) {
      return rs.next() ? rs.getObject(1) : null;
    }
  }

  interface Check<T> {
    T get() throws Exception;
  }

  static <T> T poll(String what, Check<T> fn) throws Exception {
    long end = System.currentTimeMillis() + DEADLINE_MS;
    for (; ; ) {
      T v = fn.get();
      if (v != null) return v;
      check(System.currentTimeMillis() < end, "timed out waiting for " + what);
      pause();
    }
  }

  static void waitForReplay() throws Exception {
    String lsn = (String) one(direct.get(primary), "SELECT pg_current_wal_lsn()::text");
    for (int port : replicas) {
      Connection d = direct.get(port);
      poll(
          "replica " + port + " to replay " + lsn,
          () ->
              Boolean.TRUE.equals(one(d, "SELECT pg_last_wal_replay_lsn() >= ?::pg_lsn", lsn))
                  ? true
                  : null);
    }
  }

  static void setup(Connection c) throws Exception {
    direct.put(primary, connect(primary, false));
    for (int port : replicas) direct.put(port, connect(port, false));
    try (Statement st = c.createStatement()) {
      // pgJDBC splits a multi-statement string into several statements in one Sync.
      st.execute(
          "CREATE TABLE kv (k int PRIMARY KEY, v text);"
              + "CREATE SCHEMA s1;"
              + "CREATE TABLE s1.marker (x text);"
              + "INSERT INTO s1.marker VALUES ('in s1');"
              + "CREATE TABLE public.marker (x text);"
              + "INSERT INTO public.marker VALUES ('in public');"
              + "CREATE TABLE items (id int PRIMARY KEY, name text, price numeric);"
              + "CREATE TABLE pool_t (worker int, i int, v text, PRIMARY KEY (worker, i))");
    }
    waitForReplay();
  }

  static void preparedStatements(Connection c) throws Exception {
    List<Integer> readPorts = new ArrayList<>();
    try (PreparedStatement read =
            c.prepareStatement("SELECT ?::int + 1 AS n, inet_server_port() AS port");
        PreparedStatement write =
            c.prepareStatement("INSERT INTO kv VALUES (?, ?) RETURNING inet_server_port()");
        PreparedStatement get =
            c.prepareStatement("SELECT v, inet_server_port() FROM kv WHERE k = ?")) {
      for (int i = 0; i < 60; i++) {
        read.setInt(1, i);
        try (ResultSet rs = read.executeQuery()) {
          check(rs.next(), "read #" + i + " returned no row");
          expectEq(rs.getInt(1), i + 1, "read #" + i);
          readPorts.add(rs.getInt(2));
        }
        expectEq(one(write, i, "v" + i), primary, "write #" + i + " ran on");
        if (i % 10 == 0) {
          c.setAutoCommit(false);
          get.setInt(1, i);
          try (ResultSet rs = get.executeQuery()) {
            check(rs.next(), "get #" + i + " in a transaction found no row");
            expectEq(rs.getString(1), "v" + i, "get #" + i + " in a transaction");
            expectEq(rs.getInt(2), primary, "get #" + i + " in a transaction ran on");
          }
          c.commit();
          c.setAutoCommit(true);
        }
      }
      expectEq(
          new TreeSet<>(readPorts),
          new TreeSet<>(replicas),
          "replicas that served the reads (in order: " + readPorts + ")");
      for (int i = 0; i < 60; i += 6) {
        final int k = i;
        int port =
            poll(
                "kv row " + k + " on a replica",
                () -> {
                  get.setInt(1, k);
                  try (ResultSet rs = get.executeQuery()) {
                    if (!rs.next()) return null;
                    expectEq(rs.getString(1), "v" + k, "get #" + k + " on a replica");
                    return rs.getInt(2);
                  }
                });
        check(replicas.contains(port), "get #" + i + " ran on " + port + ", not a replica");
      }
    }
  }

  static void expectState(SQLException e, String state, String what) {
    expectEq(e.getSQLState(), state, what + " (" + e.getMessage() + ")");
  }

  static void transactions(Connection c) throws Exception {
    String ins = "INSERT INTO kv VALUES (?, ?)";
    c.setAutoCommit(false);
    try (PreparedStatement ps = c.prepareStatement(ins)) {
      ps.setInt(1, 1000);
      ps.setString(2, "rolled back");
      ps.executeUpdate();
      c.rollback();
      ps.setInt(1, 1001);
      ps.setString(2, "committed");
      ps.executeUpdate();
      c.commit();
    }
    expectEq(one(c, "SELECT inet_server_port()"), primary, "a transaction ran on");
    expectEq(
        one(c, "SELECT string_agg(k::text, ',' ORDER BY k) FROM kv WHERE k IN (1000, 1001)"),
        "1001",
        "rows after rollback + commit");
    c.commit();
    // A savepoint survives an error; the error aborts the rest until ROLLBACK.
    try (Statement st = c.createStatement()) {
      st.executeUpdate("INSERT INTO kv VALUES (1004, 'kept')");
      Savepoint sp = c.setSavepoint();
      try {
        st.executeUpdate("INSERT INTO kv VALUES (1001, 'duplicate')");
        throw new Failure("duplicate key was accepted");
      } catch (SQLException e) {
        expectState(e, "23505", "duplicate key");
      }
      try {
        st.executeQuery("SELECT 1").close();
        throw new Failure("statement in an aborted transaction was accepted");
      } catch (SQLException e) {
        expectState(e, "25P02", "statement in an aborted transaction");
      }
      c.rollback(sp);
      c.commit();
    }
    // Read in a transaction: the primary has it (a replica may lag).
    expectEq(one(c, "SELECT v FROM kv WHERE k = 1004"), "kept", "row inserted before the savepoint");
    c.commit();
    c.setAutoCommit(true);
  }

  static String itemsText() {
    StringBuilder s = new StringBuilder();
    for (int i = 1; i <= 2000; i++) {
      s.append(i)
          .append("\titem ")
          .append(i)
          .append("\\twith tab\t")
          .append(BigDecimal.valueOf(i, 2).toPlainString())
          .append('\n');
    }
    return s.toString();
  }

  static String copyOut(CopyManager cm, String sql) throws Exception {
    StringWriter w = new StringWriter();
    cm.copyOut(sql, w);
    return w.toString();
  }

  static void copy(Connection c) throws Exception {
    CopyManager cm = c.unwrap(PGConnection.class).getCopyAPI();
    String data = itemsText();
    long n = cm.copyIn("COPY items (id, name, price) FROM STDIN", new StringReader(data));
    expectEq(n, 2000L, "COPY FROM rows");
    String out = "COPY (SELECT id, name, price FROM items ORDER BY id) TO STDOUT";
    c.setAutoCommit(false);
    String got = copyOut(cm, out);
    c.commit();
    c.setAutoCommit(true);
    check(
        got.equals(data),
        "COPY TO in a transaction: " + got.length() + " of " + data.length() + " chars");
    waitForReplay();
    got = copyOut(cm, out);
    check(got.equals(data), "COPY TO on a replica: " + got.length() + " of " + data.length());
    try {
      cm.copyIn(
          "COPY items (id, name, price) FROM STDIN", new StringReader("not-a-number\tx\t1\n"));
      throw new Failure("bad COPY data was accepted");
    } catch (SQLException e) {
      expectState(e, "22P02", "bad COPY data");
    }
    expectEq(one(c, "SELECT ?::int", 8), 8, "after a failed COPY");
  }

  static void settings(Connection c) throws Exception {
    String defaultPath = (String) one(direct.get(primary), "SHOW search_path");
    String defaultTz = (String) one(direct.get(primary), "SHOW TimeZone");
    check(!defaultTz.equals("Asia/Kathmandu"), "cluster default TimeZone is already Kathmandu");
    try (Statement st = c.createStatement()) {
      st.execute("SET search_path TO s1, public");
      st.execute("SET TimeZone TO 'Asia/Kathmandu'");
    }
    PGConnection pg = c.unwrap(PGConnection.class);
    for (int round = 0; round < 12; round++) {
      String where =
          round == 0 ? "right after SET" : round == 1 ? "inside a transaction" : "after a transaction #" + round;
      if (round == 1) {
        c.setAutoCommit(false);
        try (Statement st = c.createStatement()) {
          st.executeUpdate("INSERT INTO kv VALUES (2000, 'x')");
        }
      }
      verifySettings(c, pg, where, "s1, public", "in s1");
      if (round == 1) {
        c.commit();
        c.setAutoCommit(true);
      } else if (round > 1) {
        c.setAutoCommit(false);
        try (PreparedStatement ps = c.prepareStatement("UPDATE kv SET v = ? WHERE k = 2000")) {
          ps.setString(1, "x" + round);
          ps.executeUpdate();
        }
        c.commit();
        c.setAutoCommit(true);
      }
    }
    // A SET in a transaction that rolls back is undone.
    c.setAutoCommit(false);
    try (Statement st = c.createStatement()) {
      st.execute("SET TimeZone TO 'UTC'");
    }
    c.rollback();
    c.setAutoCommit(true);
    verifySettings(c, pg, "after a rolled-back SET", "s1, public", "in s1");
    // SET LOCAL lasts until the end of its transaction.
    c.setAutoCommit(false);
    try (Statement st = c.createStatement()) {
      st.execute("SET LOCAL search_path TO public");
    }
    expectEq(one(c, "SELECT x FROM marker"), "in public", "SET LOCAL search_path");
    c.commit();
    c.setAutoCommit(true);
    verifySettings(c, pg, "after SET LOCAL", "s1, public", "in s1");
    try (Connection other = connect()) {
      for (int i = 0; i < 6; i++) {
        expectEq(one(other, "SHOW search_path"), defaultPath, "other session #" + i);
        expectEq(one(other, "SHOW TimeZone"), defaultTz, "other session #" + i);
        expectEq(one(other, "SELECT x FROM marker"), "in public", "other session #" + i);
      }
    }
    try (Statement st = c.createStatement()) {
      st.execute("RESET search_path");
    }
    expectEq(one(c, "SHOW search_path"), defaultPath, "search_path after RESET");
    expectEq(one(c, "SELECT x FROM marker"), "in public", "marker after RESET");
    expectEq(one(c, "SHOW TimeZone"), "Asia/Kathmandu", "TimeZone after RESET search_path");
  }

  static void verifySettings(Connection c, PGConnection pg, String where, String path, String marker)
      throws Exception {
    expectEq(one(c, "SHOW search_path"), path, "search_path " + where);
    expectEq(one(c, "SHOW TimeZone"), "Asia/Kathmandu", "TimeZone " + where);
    expectEq(one(c, "SELECT ?::timestamptz::text", INSTANT), KATHMANDU, "timestamptz " + where);
    expectEq(one(c, "SELECT x FROM marker"), marker, "unqualified table " + where);
    expectEq(
        pg.getParameterStatus("TimeZone"), "Asia/Kathmandu", "ParameterStatus TimeZone " + where);
  }

  static List<Integer> range(int from, int to) {
    List<Integer> l = new ArrayList<>();
    for (int i = from; i <= to; i++) l.add(i);
    return l;
  }

  static void cursors(Connection c) throws Exception {
    c.setAutoCommit(false);
    List<Integer> got = new ArrayList<>();
    try (Statement st = c.createStatement()) {
      st.execute("DECLARE c CURSOR FOR SELECT g FROM generate_series(1, 100) g");
      for (; ; ) {
        int rows = 0;
        try (ResultSet rs = st.executeQuery("FETCH 7 FROM c")) {
          while (rs.next()) {
            got.add(rs.getInt(1));
            rows++;
          }
        }
        if (rows == 0) break;
      }
      st.execute("CLOSE c");
    }
    expectEq(got, range(1, 100), "DECLARE/FETCH");
    expectEq(one(c, "SELECT inet_server_port()"), primary, "cursor transaction on");
    c.commit();
    // pgJDBC's cursor: setFetchSize in a transaction reads a portal 9 rows at a time.
    got.clear();
    try (PreparedStatement ps = c.prepareStatement("SELECT g FROM generate_series(1, ?) g")) {
      ps.setFetchSize(9);
      ps.setInt(1, 100);
      try (ResultSet rs = ps.executeQuery()) {
        while (rs.next()) got.add(rs.getInt(1));
      }
    }
    c.commit();
    c.setAutoCommit(true);
    expectEq(got, range(1, 100), "pgJDBC fetch-size cursor");
  }

  static boolean sleepingSomewhere() throws SQLException {
    for (Connection d : direct.values()) {
      if (((Number) one(d, ACTIVE_SLEEP_SQL)).longValue() > 0) return true;
    }
    return false;
  }

  static void cancel(Connection c) throws Exception {
    long t0 = System.currentTimeMillis();
    ExecutorService ex = Executors.newSingleThreadExecutor();
    try (PreparedStatement ps = c.prepareStatement(SLEEP_SQL)) {
      Future<SQLException> sleeper =
          ex.submit(
              () -> {
                try {
                  ps.executeQuery().close();
                  return null;
                } catch (SQLException e) {
                  return e;
                }
              });
      poll("pg_sleep(30) to run on some node", () -> sleepingSomewhere() ? true : null);
      // pgJDBC's cancel: a CancelRequest to pgrelay with the key pgrelay gave.
      ps.cancel();
      SQLException err;
      try {
        err = sleeper.get(CANCEL_LIMIT_MS, TimeUnit.MILLISECONDS);
      } catch (java.util.concurrent.TimeoutException e) {
        throw new Failure("pg_sleep(30) still running " + CANCEL_LIMIT_MS + "ms after cancel");
      }
      check(err != null, "pg_sleep(30) finished without an error after cancel");
      expectState(err, "57014", "SQLSTATE of the cancelled statement");
    } finally {
      ex.shutdownNow();
    }
    long took = System.currentTimeMillis() - t0;
    check(took < CANCEL_LIMIT_MS, "cancel took " + took + "ms");
    System.out.printf("  pg_sleep(30) cancelled after %.2fs%n", took / 1000.0);
    expectEq(one(c, "SELECT ?::int", 9), 9, "after cancel");
  }

  static void poolWorkload() throws Exception {
    BlockingQueue<Connection> pool = new ArrayBlockingQueue<>(POOL_WORKERS);
    for (int i = 0; i < POOL_WORKERS; i++) pool.add(connect());
    ExecutorService ex = Executors.newFixedThreadPool(POOL_WORKERS);
    try {
      List<Future<List<String>>> results = new ArrayList<>();
      for (int w = 0; w < POOL_WORKERS; w++) {
        final int worker = w;
        results.add(ex.submit(() -> poolWorker(pool, worker)));
      }
      List<String> errs = new ArrayList<>();
      for (Future<List<String>> f : results) errs.addAll(f.get(120, TimeUnit.SECONDS));
      check(
          errs.isEmpty(),
          errs.size() + " errors in the pool workload, e.g. " + errs.subList(0, Math.min(3, errs.size())));
      Connection c = pool.take();
      c.setAutoCommit(false);
      long n = ((Number) one(c, "SELECT count(*) FROM pool_t")).longValue();
      c.commit();
      c.setAutoCommit(true);
      pool.add(c);
      expectEq(n, (long) POOL_WORKERS * POOL_OPS * 2 / 5, "rows written by the pool");
    } finally {
      ex.shutdownNow();
      for (Connection c : pool) c.close();
    }
  }

  static List<String> poolWorker(BlockingQueue<Connection> pool, int w) throws Exception {
    List<String> errs = new ArrayList<>();
    int written = 0;
    for (int i = 0; i < POOL_OPS; i++) {
      Connection c = pool.take();
      try {
        switch (i % 5) {
          case 0, 1 -> {
            Object port =
                one(c, "INSERT INTO pool_t VALUES (?, ?, ?) RETURNING inet_server_port()", w, i, "w" + w + "i" + i);
            expectEq(port, primary, "pool write ran on");
            written++;
          }
          case 2 -> {
            try (PreparedStatement ps = c.prepareStatement("SELECT ?::int * 2, inet_server_port()")) {
              ps.setInt(1, i);
              try (ResultSet rs = ps.executeQuery()) {
                check(rs.next(), "pool read returned no row");
                expectEq(rs.getInt(1), i * 2, "pool read");
                check(replicas.contains(rs.getInt(2)), "pool read ran on " + rs.getInt(2));
              }
            }
          }
          case 3 -> {
            c.setAutoCommit(false);
            try {
              Object v =
                  one(c, "UPDATE pool_t SET v = v || '!' WHERE worker = ? AND i = ? RETURNING v", w, i - 2);
              expectEq(v, "w" + w + "i" + (i - 2) + "!", "pool update");
              Object n = one(c, "SELECT count(*) FROM pool_t WHERE worker = ?", w);
              expectEq(((Number) n).longValue(), (long) written, "own rows in a transaction");
              c.commit();
            } catch (Exception e) {
              c.rollback();
              throw e;
            } finally {
              c.setAutoCommit(true);
            }
          }
          default -> {
            long n = ((Number) one(c, "SELECT count(*) FROM pool_t WHERE worker = ?", w)).longValue();
            check(n >= 0 && n <= written, "replica count " + n + " > written " + written);
          }
        }
      } catch (Exception e) {
        String state = e instanceof SQLException s ? " (SQLSTATE " + s.getSQLState() + ")" : "";
        errs.add("worker " + w + " op " + i + ": " + e.getMessage() + state);
      } finally {
        pool.add(c);
      }
    }
    return errs;
  }

  interface Step {
    void run(Connection c) throws Exception;
  }

  public static void main(String[] argv) throws Exception {
    for (int i = 0; i + 1 < argv.length; i += 2) args.put(argv[i].replaceFirst("^--", ""), argv[i + 1]);
    for (String k : List.of("host", "port", "user", "password", "dbname", "primary-port", "replica-ports", "mode")) {
      if (!args.containsKey(k)) {
        System.err.println("--" + k + " is required");
        System.exit(2);
      }
    }
    prepared = args.get("mode").equals("prepared");
    check(prepared || args.get("mode").equals("normal"), "bad --mode " + args.get("mode"));
    primary = Integer.parseInt(args.get("primary-port"));
    for (String p : args.get("replica-ports").split(",")) if (!p.isEmpty()) replicas.add(Integer.parseInt(p));
    String tag = "[pgJDBC " + args.get("mode") + "]";
    long started = System.currentTimeMillis();
    List<String> failed = new ArrayList<>();
    int count = 0;

    Map<String, Step> steps = new LinkedHashMap<>();
    steps.put("connect and create tables", JdbcTest::setup);
    steps.put("prepared statements reused across reads and writes", JdbcTest::preparedStatements);
    steps.put("transactions: commit, rollback, savepoint, errors", JdbcTest::transactions);
    steps.put("COPY in and out", JdbcTest::copy);
    steps.put("SET search_path and TimeZone", JdbcTest::settings);
    steps.put("cursor in a transaction", JdbcTest::cursors);
    steps.put("cancel pg_sleep(30)", JdbcTest::cancel);
    steps.put("pool of " + POOL_WORKERS + " x " + POOL_OPS + " mixed operations", c -> poolWorkload());

    Connection c = connect();
    for (Map.Entry<String, Step> e : steps.entrySet()) {
      count++;
      System.out.println(tag + " " + e.getKey());
      try {
        e.getValue().run(c);
      } catch (Exception ex) {
        String state = ex instanceof SQLException s ? " (SQLSTATE " + s.getSQLState() + ")" : "";
        String line =
            "FAILED: pgJDBC (" + args.get("mode") + ") at step '" + e.getKey() + "': " + ex + state;
        failed.add(line);
        System.err.println(line);
        ex.printStackTrace();
        System.out.println(tag + " step failed: " + e.getKey());
        if (count == 1) break;
        // The next step starts from a clean session.
        try {
          c.close();
        } catch (SQLException ignored) {
          // already broken
        }
        c = connect();
      }
    }
    c.close();
    for (Connection d : direct.values()) d.close();
    double took = (System.currentTimeMillis() - started) / 1000.0;
    if (!failed.isEmpty()) {
      System.err.printf("pgJDBC (%s): %d of %d steps failed in %.1fs:%n", args.get("mode"), failed.size(), count, took);
      for (String line : failed) System.err.println("  " + line);
      System.exit(1);
    }
    System.out.printf("%s all %d steps passed in %.1fs%n", tag, count, took);
    System.exit(0);
  }
}
