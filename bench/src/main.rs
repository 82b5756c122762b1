//! `pgrelay-bench`: the performance comparison in one run (`bench/run` builds and
//! starts it). On a fresh local 1+2 PostgreSQL cluster (the workspace's `cluster`
//! crate) it runs pgbench against PostgreSQL directly, a bare TCP relay (the floor of
//! any proxy's cost), the real `pgrelay` binary in front of the primary alone (the
//! cost of the proxy hop) and in front of the whole cluster with routing, and PgBouncer
//! in transaction mode; then it measures pgrelay's
//! memory with many idle sessions. It prints a table and writes results.md,
//! results.csv and (through bench/plot.py) results.png to the output folder.

mod idle;
mod pgbench;
mod relay;
mod report;
mod sys;
mod targets;

use anyhow::{bail, Context, Result};
use clap::Parser;
use cluster::{Cluster, ClusterConfig};
use pgbench::{Outcome, Pgbench, Round};
use report::{Cell, Target, Workload};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use targets::{PgrelaySpec, Proc};

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

#[derive(Parser)]
#[command(
    name = "pgrelay-bench",
    about = "pgbench against PostgreSQL, pgrelay and PgBouncer on a local 1+2 cluster, plus pgrelay's memory per idle session"
)]
struct Opts {
    /// Output folder (default: bench/out/<UTC timestamp>).
    #[arg(long, env = "BENCH_OUT")]
    out: Option<PathBuf>,
    /// pgbench seconds per cell (default 12; 3 with --quick), split over the rounds.
    /// Cells of 500+ clients run once, 15 s more (10 with --quick), as pgbench's clock
    /// also runs while they log in.
    #[arg(long, env = "BENCH_SECONDS")]
    seconds: Option<u64>,
    /// The targets of a workload take turns this many times (default 3; 1 with
    /// --quick), each run -T seconds/rounds: a slow spell of a shared machine then falls
    /// on every target, not on whichever ran during it.
    #[arg(long, env = "BENCH_ROUNDS")]
    rounds: Option<u64>,
    /// Smoke test: fewer cells, short runs, 1,000 idle sessions.
    #[arg(long)]
    quick: bool,
    /// pgbench -i scale factor.
    #[arg(long, env = "BENCH_SCALE", default_value_t = 10)]
    scale: u32,
    /// Idle sessions for the memory measurement (default 10,000; 1,000 with --quick).
    #[arg(long, env = "BENCH_IDLE_SESSIONS")]
    idle_sessions: Option<usize>,
    /// Server connections per node in every pooler (pgrelay pool.size, PgBouncer
    /// default_pool_size).
    #[arg(long, default_value_t = 20)]
    pool_size: u32,
    /// The pgrelay binary (default: target/release/pgrelay of this workspace).
    #[arg(long, env = "BENCH_PGRELAY")]
    pgrelay: Option<PathBuf>,
    /// How that binary was built, for the report (`bench/run --pgo` sets "PGO", see
    /// scripts/build-pgo).
    #[arg(long, env = "BENCH_PGRELAY_BUILD", default_value = "release")]
    pgrelay_build: String,
    /// The PgBouncer binary (default: /usr/sbin/pgbouncer, else PATH).
    #[arg(long, env = "BENCH_PGBOUNCER")]
    pgbouncer: Option<PathBuf>,
    /// Python with matplotlib, for the plot (default: bench/.venv/bin/python).
    #[arg(long, env = "BENCH_PYTHON")]
    python: Option<PathBuf>,
    /// Why the plotting environment is missing (set by bench/run when it could not
    /// prepare it), reported instead of the plot.
    #[arg(long, env = "BENCH_NO_PLOT_REASON", hide = true)]
    no_plot_reason: Option<String>,
    /// Internal: be the bare relay target (listen port, primary's port) instead.
    #[arg(long, hide = true, num_args = 2, value_names = ["LISTEN", "TO"])]
    bare_relay: Option<Vec<u16>>,
}

fn workloads(quick: bool) -> Vec<Workload> {
    let w = |script, mode, clients| Workload {
        script,
        mode,
        clients,
    };
    if quick {
        return vec![
            w("select-only", "simple", 1),
            w("select-only", "prepared", 16),
            w("tpcb-like", "simple", 16),
            w("select-only", "simple", 1000),
        ];
    }
    let mut all = Vec::new();
    for mode in ["simple", "prepared"] {
        for clients in [1, 16, 64] {
            all.push(w("select-only", mode, clients));
        }
    }
    // Writes; simple too, because PgBouncer in transaction mode cannot run prepared.
    all.push(w("tpcb-like", "simple", 16));
    all.push(w("tpcb-like", "prepared", 16));
    all.push(w("select-only", "simple", 1000));
    all
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgrelay-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A started proxy, or why it is missing (its cells then say so).
type Started = std::result::Result<(Proc, u16), String>;

struct Memory {
    sessions: usize,
    baseline_kib: u64,
    with_sessions_kib: u64,
    after_close_kib: u64,
    login_secs: f64,
}

fn run() -> Result<()> {
    let opts = Opts::parse();
    if let Some([listen, to]) = opts.bare_relay.as_deref() {
        return relay::serve(*listen, *to);
    }
    let began = Instant::now();
    let (dir_stamp, human_stamp) = sys::stamps();
    let seconds = opts.seconds.unwrap_or(if opts.quick { 3 } else { 12 });
    let rounds = opts.rounds.unwrap_or(if opts.quick { 1 } else { 3 }).max(1);
    let warmup = if opts.quick { 1 } else { 3 };
    let connect_allowance = if opts.quick { 10 } else { 15 };
    let idle_sessions = opts
        .idle_sessions
        .unwrap_or(if opts.quick { 1_000 } else { 10_000 });
    let out = opts
        .out
        .clone()
        .unwrap_or_else(|| Path::new(MANIFEST_DIR).join("out").join(&dir_stamp));
    let logs = out.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("create {}", logs.display()))?;
    let scratch = tempfile::Builder::new()
        .prefix("pgrelay-bench-")
        .tempdir()?;

    let nofile = sys::raise_nofile((idle_sessions as u64 + 2_048).max(4_096))?;
    let pgrelay_bin = opts
        .pgrelay
        .clone()
        .unwrap_or_else(|| Path::new(MANIFEST_DIR).join("../target/release/pgrelay"));
    if !pgrelay_bin.is_file() {
        bail!(
            "no pgrelay binary at {} (build it with `cargo build --release -p pgrelay`, or pass --pgrelay)",
            pgrelay_bin.display()
        );
    }
    let pgbouncer_bin = opts.pgbouncer.clone().or_else(targets::find_pgbouncer);
    let pgbench = Pgbench::new();
    let workloads = workloads(opts.quick);
    let cells_total = workloads.len() * Target::ALL.len();
    let many = workloads.iter().filter(|w| w.clients >= 500).count() as u64;
    let estimate = cells_total as u64 * seconds
        + many * 3 * connect_allowance
        + 4 * warmup
        + 30
        + idle_sessions as u64 / 500;
    println!(
        "pgrelay-bench: {cells_total} cells of {seconds} s of pgbench ({rounds} rounds), then {idle_sessions} idle sessions; about {} min",
        estimate.div_ceil(60)
    );
    println!("  output: {}", out.display());
    println!(
        "  {} cores, load average {}, open files limit {nofile}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        sys::load()
    );
    let load_start = sys::load();

    println!("starting a PostgreSQL primary and 2 streaming replicas...");
    let cluster = Cluster::start(ClusterConfig::default()).context("start the cluster")?;
    let primary = cluster.port(0);
    let server_version = cluster.psql(0, "SHOW server_version").unwrap_or_default();
    let max_connections: u32 = cluster
        .psql(0, "SHOW max_connections")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    println!(
        "  PostgreSQL {server_version}, max_connections {max_connections}, started in {:.1}s; pgbench -i -s {} on the primary...",
        cluster.startup_time().as_secs_f64(),
        opts.scale
    );
    pgbench.init(primary, opts.scale)?;
    cluster
        .wait_for_replay(Duration::from_secs(120))
        .context("replicas catch up after pgbench -i")?;

    let nodes: Vec<(String, u16)> = cluster
        .nodes()
        .iter()
        .map(|n| (n.name.clone(), n.port))
        .collect();
    let relay = |name: &str, nodes: &[(String, u16)]| -> Started {
        let spec = PgrelaySpec {
            name,
            nodes: nodes.to_vec(),
            auth: "scram-sha-256",
            pool_size: opts.pool_size,
            max_clients: 2_000,
        };
        targets::start_pgrelay(&pgrelay_bin, &spec, &logs).map_err(|e| format!("{e:#}"))
    };
    let relay_primary = relay("pgrelay-primary", &nodes[..1]);
    let relay_cluster = relay("pgrelay-cluster", &nodes);
    let bouncer: Started = match &pgbouncer_bin {
        Some(bin) => targets::start_pgbouncer(bin, primary, opts.pool_size, &logs)
            .map_err(|e| format!("PgBouncer did not start: {e:#}")),
        None => Err("PgBouncer is not installed (bench/run installs Debian's pgbouncer)".into()),
    };
    let bare = targets::start_bare_relay(primary, &logs).map_err(|e| format!("{e:#}"));
    for (what, s) in [
        ("bare TCP relay", &bare),
        ("pgrelay, primary only", &relay_primary),
        ("pgrelay, 1+2 routing", &relay_cluster),
        ("PgBouncer", &bouncer),
    ] {
        match s {
            Ok((_, port)) => println!("  {what} on 127.0.0.1:{port}"),
            Err(e) => println!("  {what}: NOT RUNNING: {e}"),
        }
    }
    let port_of = |t: Target| -> std::result::Result<u16, String> {
        let s = match t {
            Target::Direct => return Ok(primary),
            Target::BareRelay => &bare,
            Target::PgrelayPrimary => &relay_primary,
            Target::PgrelayCluster => &relay_cluster,
            Target::Pgbouncer => &bouncer,
        };
        s.as_ref().map(|(_, p)| *p).map_err(Clone::clone)
    };

    let pid_of = |t: Target| -> Option<u32> {
        let s = match t {
            Target::Direct => return None,
            Target::BareRelay => &bare,
            Target::PgrelayPrimary => &relay_primary,
            Target::PgrelayCluster => &relay_cluster,
            Target::Pgbouncer => &bouncer,
        };
        s.as_ref().ok().map(|(p, _)| p.pid())
    };

    println!("warming up ({warmup}s of select-only per target)...");
    for t in Target::ALL {
        if let Ok(port) = port_of(t) {
            let args = Workload {
                script: "select-only",
                mode: "simple",
                clients: 4,
            }
            .args();
            let _ = pgbench.run(port, &args, warmup, &scratch.path().join("warmup"), None);
        }
    }

    // Connections left for direct clients: superuser_reserved_connections (3), each
    // pooler's pool on the primary, heartbeats.
    let direct_limit = max_connections.saturating_sub(3 + 3 * opts.pool_size + 10);
    let mut cells = Vec::with_capacity(cells_total);
    println!("running {cells_total} cells:");
    for w in &workloads {
        if w.script == "tpcb-like" {
            // Same starting point for every target: no history rows, fresh stats.
            cluster
                .psql_db(
                    0,
                    cluster::APP_DB,
                    "TRUNCATE pgbench_history; VACUUM ANALYZE pgbench_branches; VACUUM ANALYZE pgbench_tellers; CHECKPOINT;",
                )
                .context("reset pgbench_history")?;
        }
        // The targets take turns, `rounds` times; many-client cells run once, as their
        // clients take seconds to log in.
        let (rounds, seconds) = if w.clients >= 500 {
            (1, seconds + connect_allowance)
        } else {
            (rounds, (seconds / rounds).max(1))
        };
        let mut runs: Vec<Vec<Round>> = vec![Vec::new(); Target::ALL.len()];
        let mut cpu: Vec<Option<u64>> = vec![Some(0); Target::ALL.len()];
        let mut skipped: Vec<Option<String>> = vec![None; Target::ALL.len()];
        for round in 0..rounds {
            for (i, t) in Target::ALL.into_iter().enumerate() {
                let port = match port_of(t) {
                    Err(why) => Err(why),
                    // The bare relay, too, gives each client a server connection.
                    Ok(_) if !t.pools() && w.clients > direct_limit => Err(format!(
                        "PostgreSQL here has max_connections = {max_connections} (and the poolers hold up to {} of them)",
                        3 * opts.pool_size
                    )),
                    Ok(port) => Ok(port),
                };
                let port = match port {
                    Ok(port) => port,
                    Err(why) => {
                        skipped[i] = Some(why);
                        continue;
                    }
                };
                let before = pid_of(t).and_then(|p| sys::cpu_micros(p).ok());
                let name = format!("{}-{}-{}-{}-{round}", w.script, w.mode, w.clients, t.key());
                let dir = scratch.path().join(&name);
                let r = pgbench.run(port, &w.args(), seconds, &dir, Some(&logs.join(name)));
                let after = pid_of(t).and_then(|p| sys::cpu_micros(p).ok());
                cpu[i] = match (cpu[i], before, after) {
                    (Some(sum), Some(a), Some(b)) => Some(sum + b.saturating_sub(a)),
                    _ => None,
                };
                runs[i].push(r);
            }
        }
        for (i, t) in Target::ALL.into_iter().enumerate() {
            let outcome = match skipped[i].take() {
                Some(why) => Outcome::Skipped(why),
                None => pgbench::merge_rounds(std::mem::take(&mut runs[i])),
            };
            println!(
                "  [{:>2}/{cells_total}] {:<20} c={:<4} {:<22} {}",
                cells.len() + 1,
                w.label(),
                w.clients,
                t.label(),
                brief(&outcome)
            );
            let proxy_cpu_us = match (&outcome, cpu[i]) {
                (Outcome::Ok(f), Some(micros)) if f.transactions > 0 && pid_of(t).is_some() => {
                    Some(micros as f64 / f.transactions as f64)
                }
                _ => None,
            };
            cells.push(Cell {
                workload: *w,
                target: t,
                outcome,
                ratio: None,
                reference: None,
                load: sys::load(),
                proxy_cpu_us,
            });
        }
    }
    let load_end = sys::load();

    let mut peaks = Vec::new();
    for (what, s) in [
        ("pgrelay, primary only", relay_primary),
        ("pgrelay, 1+2 routing", relay_cluster),
    ] {
        if let Ok((mut proc, _)) = s {
            let rss = sys::vm_kib(proc.pid(), "VmHWM");
            proc.stop();
            if let Ok(kib) = rss {
                peaks.push(format!(
                    "{what}: peak RSS {:.1} MiB over all pgbench cells (VmHWM); its log shows {} node state changes away from up",
                    kib as f64 / 1024.0,
                    targets::health_warnings(&proc.log)
                ));
            }
        }
    }
    for (mut proc, _) in [bouncer, bare].into_iter().flatten() {
        proc.stop();
    }

    println!("memory: pgrelay (primary only, auth trust) with {idle_sessions} idle sessions...");
    let memory = measure_memory(&pgrelay_bin, &nodes[..1], &logs, idle_sessions)
        .map_err(|e| format!("{e:#}"));
    drop(cluster);

    report::compute_ratios(&mut cells);
    std::fs::write(out.join("results.csv"), report::csv(&cells))?;
    let plot = make_plot(&opts, &out);
    let elapsed = began.elapsed();

    let ctx = RunInfo {
        human_stamp,
        seconds,
        rounds,
        connect_allowance,
        scale: opts.scale,
        pool_size: opts.pool_size,
        server_version,
        max_connections,
        pgbench: sys::version_of(&pgbench.program),
        pgbouncer: pgbouncer_bin
            .as_deref()
            .map_or_else(|| "not installed".into(), sys::version_of),
        pgrelay_rev: format!("{}, {} build", git_rev(), opts.pgrelay_build),
        load_start,
        load_end,
        elapsed,
    };
    let added = added_latency(&cells);
    let memory_text = memory_lines(&memory, &peaks);
    let md = markdown(&ctx, idle_sessions, &cells, &added, &memory_text, &plot);
    std::fs::write(out.join("results.md"), &md)?;

    println!();
    println!("{}", report::text_table(&cells));
    for n in report::notes(&cells) {
        println!("  {n}");
    }
    println!();
    println!("Against the floor (TPS over the bare relay's):");
    for l in report::floor_shares(&cells) {
        println!("  {l}");
    }
    println!("Added latency at 1 client (pgrelay in front of the primary alone, minus direct):");
    for l in &added {
        println!("  {l}");
    }
    println!("Memory:");
    for l in &memory_text {
        println!("  {l}");
    }
    match &plot {
        Ok(p) => println!("Plot: {}", p.display()),
        Err(why) => println!("Plot missing: {why}"),
    }
    println!(
        "Load average {} at the start, {} after the pgbench cells. Run time {}m{:02}s.",
        ctx.load_start,
        ctx.load_end,
        elapsed.as_secs() / 60,
        elapsed.as_secs() % 60
    );
    println!("Results: {}", out.display());
    Ok(())
}

/// One line for the progress log.
fn brief(o: &Outcome) -> String {
    match o {
        Outcome::Ok(f) => format!(
            "{:>8.0} tps  avg {:.3} ms  p99 {:.3} ms",
            f.tps, f.avg_ms, f.p99_ms
        ),
        Outcome::Failed(why) => format!("failed: {}", why.chars().take(160).collect::<String>()),
        Outcome::Skipped(why) => format!("skipped: {why}"),
    }
}

/// pgrelay's RSS with no client, with `n` idle logged-in sessions, and after they left.
/// A fresh pgrelay in front of the primary alone, with `auth: trust` so that opening
/// the sessions costs no SCRAM work (memory per session does not depend on it).
fn measure_memory(bin: &Path, nodes: &[(String, u16)], logs: &Path, n: usize) -> Result<Memory> {
    let spec = PgrelaySpec {
        name: "pgrelay-memory",
        nodes: nodes.to_vec(),
        auth: "trust",
        pool_size: 20,
        max_clients: (n + 100) as u32,
    };
    let (mut proc, port) = targets::start_pgrelay(bin, &spec, logs)?;
    let pid = proc.pid();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // One login first, so what every session shares (the pooled server connection
    // that answers the greeting) is in the baseline.
    rt.block_on(async {
        let one = idle::open(port, 1).await?;
        drop(one);
        anyhow::Ok(())
    })?;
    std::thread::sleep(Duration::from_secs(2));
    let baseline_kib = sys::vm_kib(pid, "VmRSS")?;
    let t = Instant::now();
    let sessions = rt.block_on(idle::open(port, n))?;
    let login_secs = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(3));
    let with_sessions_kib = sys::vm_kib(pid, "VmRSS")?;
    rt.block_on(async move { drop(sessions) });
    std::thread::sleep(Duration::from_secs(3));
    let after_close_kib = sys::vm_kib(pid, "VmRSS")?;
    proc.stop();
    Ok(Memory {
        sessions: n,
        baseline_kib,
        with_sessions_kib,
        after_close_kib,
        login_secs,
    })
}

fn memory_lines(m: &std::result::Result<Memory, String>, peaks: &[String]) -> Vec<String> {
    let mut lines = Vec::new();
    match m {
        Ok(m) => {
            let delta = m.with_sessions_kib.saturating_sub(m.baseline_kib);
            lines.push(format!(
                "pgrelay RSS with 0 sessions: {:.1} MiB; with {} idle sessions: {:.1} MiB (opened in {:.1}s); after they closed: {:.1} MiB",
                m.baseline_kib as f64 / 1024.0,
                m.sessions,
                m.with_sessions_kib as f64 / 1024.0,
                m.login_secs,
                m.after_close_kib as f64 / 1024.0
            ));
            lines.push(format!(
                "per idle session: {:.1} KiB ((RSS with sessions - RSS with none) / {})",
                delta as f64 / m.sessions.max(1) as f64,
                m.sessions
            ));
        }
        Err(e) => lines.push(format!("memory measurement failed: {e}")),
    }
    lines.extend(peaks.iter().cloned());
    lines
}

/// p50 and average latency through pgrelay (primary alone) minus direct, at 1 client.
fn added_latency(cells: &[Cell]) -> Vec<String> {
    let find = |w: &Workload, t: Target| {
        cells
            .iter()
            .find(|c| c.workload == *w && c.target == t)
            .and_then(Cell::figures)
    };
    let mut lines = Vec::new();
    for c in cells
        .iter()
        .filter(|c| c.workload.clients == 1 && c.target == Target::Direct && c.figures().is_some())
    {
        let w = &c.workload;
        match (find(w, Target::Direct), find(w, Target::PgrelayPrimary)) {
            (Some(d), Some(p)) => lines.push(format!(
                "{}: p50 +{:.0} µs ({:.0} -> {:.0} µs), average +{:.0} µs",
                w.label(),
                (p.p50_ms - d.p50_ms) * 1000.0,
                d.p50_ms * 1000.0,
                p.p50_ms * 1000.0,
                (p.avg_ms - d.avg_ms) * 1000.0
            )),
            _ => lines.push(format!("{}: not measured (a run failed)", w.label())),
        }
    }
    lines
}

/// Runs bench/plot.py on results.csv; the PNG's path, or why there is none.
fn make_plot(opts: &Opts, out: &Path) -> std::result::Result<PathBuf, String> {
    if let Some(why) = &opts.no_plot_reason {
        return Err(why.clone());
    }
    let python = opts
        .python
        .clone()
        .unwrap_or_else(|| Path::new(MANIFEST_DIR).join(".venv/bin/python"));
    if !python.is_file() {
        return Err(format!(
            "no Python with matplotlib at {} (bench/run prepares bench/.venv)",
            python.display()
        ));
    }
    let png = out.join("results.png");
    let res = std::process::Command::new(&python)
        .arg(Path::new(MANIFEST_DIR).join("plot.py"))
        .arg(out.join("results.csv"))
        .arg(&png)
        .output();
    match res {
        Ok(o) if o.status.success() && png.is_file() => Ok(png),
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            let last = err.lines().last().unwrap_or("").trim();
            Err(format!(
                "plot.py failed ({}){}{last}",
                o.status,
                if last.is_empty() { "" } else { ": " }
            ))
        }
        Err(e) => Err(format!("could not run {}: {e}", python.display())),
    }
}

fn git_rev() -> String {
    std::process::Command::new("git")
        .args(["-C", MANIFEST_DIR, "describe", "--always", "--dirty"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// What results.md says about the run besides the figures.
struct RunInfo {
    human_stamp: String,
    seconds: u64,
    rounds: u64,
    connect_allowance: u64,
    scale: u32,
    pool_size: u32,
    server_version: String,
    max_connections: u32,
    pgbench: String,
    pgbouncer: String,
    pgrelay_rev: String,
    load_start: String,
    load_end: String,
    elapsed: Duration,
}

fn markdown(
    c: &RunInfo,
    idle_sessions: usize,
    cells: &[Cell],
    added: &[String],
    memory: &[String],
    plot: &std::result::Result<PathBuf, String>,
) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# pgrelay benchmark, {}\n", c.human_stamp);
    let _ = writeln!(
        md,
        "One machine ({} cores) runs everything: a PostgreSQL {} primary and 2 streaming \
         replicas (the `cluster` crate: fsync off, shared_buffers 32MB, max_connections {}), \
         the proxies and pgbench. pgbench -i -s {}, each cell {} s of `pgbench -n -j 2` as the \
         app user (SCRAM), in {} rounds of `-T {}`: the targets of a workload take turns, so \
         that a slow spell of the machine falls on all of them (the 1000-client cells run \
         once, {} s more, since pgbench's clock runs while its clients log in, which TPS \
         excludes). Targets: PostgreSQL's primary directly; a bare TCP relay in front of \
         the primary (this benchmark's own: one tokio thread copying bytes between each \
         client and a server connection of its own, reading no protocol: the floor of \
         what the extra hop costs any proxy here); pgrelay ({}) in front of \
         the primary alone (the cost of the proxy hop) and in front of the 1+2 cluster with \
         routing (`routing.consistency: session`; reads go to the replicas, which share the \
         same cores); PgBouncer ({}) in `pool_mode = transaction` in front of the primary. \
         Pools: {} server connections per node in every pooler. Latency: average from \
         pgbench's summary, p50/p99 from its per-transaction log (`-l`); results.csv also has the load average after each cell. {}. \
         Load average {} at the start, {} after the pgbench cells; run time {}m{:02}s.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        c.server_version,
        c.max_connections,
        c.scale,
        c.seconds,
        c.rounds,
        (c.seconds / c.rounds).max(1),
        c.connect_allowance,
        c.pgrelay_rev,
        c.pgbouncer,
        c.pool_size,
        c.pgbench,
        c.load_start,
        c.load_end,
        c.elapsed.as_secs() / 60,
        c.elapsed.as_secs() % 60
    );
    let _ = writeln!(md, "## Throughput and latency\n");
    md += &report::markdown_table(cells);
    let notes = report::notes(cells);
    if !notes.is_empty() {
        md.push('\n');
        for n in notes {
            let _ = writeln!(md, "- {n}");
        }
    }
    let floor = report::floor_shares(cells);
    if !floor.is_empty() {
        let _ = writeln!(md, "\n## Against the floor\n");
        let _ = writeln!(
            md,
            "Each proxy's TPS over the bare relay's: the share of the hop's best case it \
             keeps while doing its own work (1.0 = costs nothing beyond the hop). Where the \
             server gains from fewer connections (many clients on few cores, lock waits in \
             tpcb-like), a pooler can come out above it: the relay gives every client a \
             server connection of its own.\n"
        );
        for l in &floor {
            let _ = writeln!(md, "- {l}");
        }
    }
    let _ = writeln!(md, "\n## Added latency at 1 client\n");
    let _ = writeln!(
        md,
        "pgrelay in front of the primary alone, minus PostgreSQL directly (select-only):\n"
    );
    for l in added {
        let _ = writeln!(md, "- {l}");
    }
    let _ = writeln!(md, "\n## Memory\n");
    let _ = writeln!(
        md,
        "The `pgrelay` process's VmRSS (/proc/<pid>/status). The idle sessions go to a fresh \
         pgrelay in front of the primary alone with `auth: trust` (so {} logins cost no \
         SCRAM work; a session's memory does not depend on how it logged in); each completes \
         its login and stays idle. Server connections are pooled, so only a few exist. \
         RSS after the sessions closed stays near its peak: the allocator keeps freed memory \
         for reuse.\n",
        idle_sessions
    );
    for l in memory {
        let _ = writeln!(md, "- {l}");
    }
    let _ = writeln!(
        md,
        "\nThe proxies' logs (pgrelay at `warn`: e.g. heartbeats that timed out under load) and \
         the output of failed pgbench runs are in `logs/`."
    );
    let _ = writeln!(md, "\n## Plot\n");
    match plot {
        Ok(_) => {
            let _ = writeln!(
                md,
                "![TPS relative to direct PostgreSQL](results.png)\n\nTPS of each target over \
                 direct PostgreSQL's at the same workload (1.0 = as fast as direct)."
            );
        }
        Err(why) => {
            let _ = writeln!(md, "No plot: {why}");
        }
    }
    md
}
