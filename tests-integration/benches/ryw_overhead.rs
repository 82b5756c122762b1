//! Write-path cost of read-your-writes: pgbench's tpcb-like workload (every transaction
//! writes) through pgrelay at `routing.consistency = eventual` (no LSN tracking) and at
//! `session` (the primary's WAL position is learnt after each commit), and straight
//! against the primary for reference. Prints TPS, latency, the whole machine's CPU per
//! transaction and the overhead of `session` over `eventual`.
//!
//! Two phases: saturated (TPS), then at a fixed rate below capacity (`pgbench -R`),
//! where the whole machine's CPU per transaction is the cost itself.
//!
//! `cargo bench -p tests-integration --bench ryw_overhead`. Tunable from the environment:
//! `RYW_BENCH_SECONDS` (20), `RYW_BENCH_ROUNDS` (1: eventual and session are alternated
//! this many times in each phase), `RYW_BENCH_MODE` (prepared), `RYW_BENCH_CLIENTS` (8),
//! `RYW_BENCH_SCALE` (10), `RYW_BENCH_RATE` (`auto`: 60% of the direct TPS; 0 skips the
//! fixed-rate phase).

use cluster::ClusterConfig;
use pgrelay::router::Consistency;
use std::sync::atomic::Ordering::Relaxed;
use tests_integration::pgbench::{bench, init, load, report, setting, Figures};
use tests_integration::{start_proxy, start_with};

fn ryw_counters(shared: &pgrelay::session::Shared) -> String {
    let s = &shared.ryw;
    format!(
        "write_lsn_reads {}, replica_known {}, replica_checked {}, primary_fallbacks {}",
        s.write_lsn_reads.load(Relaxed),
        s.replica_known.load(Relaxed),
        s.replica_checked.load(Relaxed),
        s.primary_fallbacks.load(Relaxed)
    )
}

async fn run() {
    let seconds = setting("RYW_BENCH_SECONDS", "20");
    let rounds: usize = setting("RYW_BENCH_ROUNDS", "1").parse().expect("rounds");
    let mode = setting("RYW_BENCH_MODE", "prepared");
    let clients = setting("RYW_BENCH_CLIENTS", "8");
    let scale = setting("RYW_BENCH_SCALE", "10");

    let env = start_with(ClusterConfig::default(), |c| {
        c.routing.consistency = Consistency::Eventual;
    })
    .await;
    let session = start_proxy(&env.cluster, |c| {
        c.routing.consistency = Consistency::Session;
    })
    .await;
    let primary = env.primary_port();
    println!("ryw_overhead: pgbench -i -s {scale} on the primary...");
    init(&env, &scale).await;

    let args: Vec<String> = [
        "-b",
        "tpcb-like",
        "-M",
        &mode,
        "-c",
        &clients,
        "-j",
        "2",
        "-T",
        &seconds,
        "-n",
    ]
    .map(String::from)
    .to_vec();
    println!(
        "ryw_overhead: pgbench {} (1 primary + 2 replicas, {rounds} round(s))",
        args.join(" ")
    );
    println!("  load average before the runs: {}", load());
    let direct = bench(primary, "direct to the primary", &args).await;
    let ports = (env.port(), session.addr.port());
    println!("saturated: as fast as the clients go");
    let (e, s) = alternate(ports, &args, rounds).await;
    println!("ryw_overhead results, saturated (mean of {rounds} run(s) each):");
    report("direct to the primary", &direct);
    report("pgrelay, eventual", &e);
    report("pgrelay, session", &s);
    println!(
        "  session vs eventual: {:+.2}% TPS, {:+.2}% latency (overhead {:.2}%)",
        100.0 * (s.tps - e.tps) / e.tps,
        100.0 * (s.latency_ms - e.latency_ms) / e.latency_ms,
        100.0 * (e.tps - s.tps) / e.tps,
    );
    println!(
        "  pgrelay eventual vs direct: {:+.2}% TPS",
        100.0 * (e.tps - direct.tps) / direct.tps
    );
    // Saturated, the machine's CPU per transaction is only its capacity over the TPS,
    // and TPS swings by several percent between runs here (fsync, the replicas' replay
    // sharing the cores). At a fixed rate below capacity both levels run the same
    // transactions, and the CPU each spends on them is the cost itself.
    let rate = match setting("RYW_BENCH_RATE", "auto").as_str() {
        "auto" => (direct.tps * 0.6) as u64,
        n => n
            .parse()
            .expect("RYW_BENCH_RATE: a number of transactions per second"),
    };
    if rate > 0 {
        println!("fixed rate: {rate} transactions per second (-R), below what both reach");
        let mut fixed = args.clone();
        fixed.extend(["-R".to_string(), rate.to_string()]);
        let (e, s) = alternate(ports, &fixed, rounds).await;
        println!("ryw_overhead results at {rate} tps (mean of {rounds} run(s) each):");
        report("pgrelay, eventual", &e);
        report("pgrelay, session", &s);
        println!(
            "  session vs eventual: {:+.2}% machine CPU per transaction ({:.1} vs {:.1} µs), \
             {:+.2}% latency",
            100.0 * (s.cpu_us - e.cpu_us) / e.cpu_us,
            s.cpu_us,
            e.cpu_us,
            100.0 * (s.latency_ms - e.latency_ms) / e.latency_ms,
        );
    }
    println!("  eventual proxy: {}", ryw_counters(&env.proxy.shared));
    println!("  session proxy:  {}", ryw_counters(&session.shared));
    session.shutdown().await.expect("session proxy stops");
}

/// `rounds` runs of pgbench `args` through each proxy (eventual on `ports.0`, session on
/// `ports.1`), taking turns; the mean figures of each.
async fn alternate(ports: (u16, u16), args: &[String], rounds: usize) -> (Figures, Figures) {
    let (mut eventual, mut sess) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // Alternate the order so neither level always runs on the warmer, bigger tables.
        let session_first = round % 2 == 1;
        for s in [session_first, !session_first] {
            if s {
                sess.push(bench(ports.1, "pgrelay, session", args).await);
            } else {
                eventual.push(bench(ports.0, "pgrelay, eventual", args).await);
            }
        }
        let (e, s) = (&eventual[round], &sess[round]);
        println!(
            "  round {}: session vs eventual {:+.2}% TPS, {:+.2}% machine CPU/tx",
            round + 1,
            100.0 * (s.tps - e.tps) / e.tps,
            100.0 * (s.cpu_us - e.cpu_us) / e.cpu_us
        );
    }
    (Figures::mean(&eventual), Figures::mean(&sess))
}

fn main() {
    // `cargo bench` passes `--bench`; a filter that is not ours means "not this one".
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args
        .iter()
        .any(|a| !a.starts_with('-') && !"ryw_overhead".contains(a.as_str()))
    {
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run());
}
