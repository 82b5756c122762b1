//! What scraping `/metrics` costs the data path: pgbench's select-only workload (the
//! cheapest statements, so any overhead shows most) through pgrelay, with and without a
//! scraper fetching `/metrics` every second, alternated over several rounds. Also a
//! scraper at 10/s to magnify the effect, and how long one scrape takes.
//!
//! `cargo bench -p tests-integration --bench metrics_scrape`. Tunable from the
//! environment: `SCRAPE_BENCH_SECONDS` (15), `SCRAPE_BENCH_ROUNDS` (3),
//! `SCRAPE_BENCH_CLIENTS` (8), `SCRAPE_BENCH_SCALE` (10).

use cluster::ClusterConfig;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tests_integration::http;
use tests_integration::pgbench::{bench, init, load, report, setting, Figures};
use tests_integration::start_with;

/// Fetches `/metrics` every `every` until stopped; returns each scrape's duration and
/// the last body's size.
fn scraper(
    addr: SocketAddr,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(Vec<Duration>, usize)> {
    tokio::spawn(async move {
        let mut took = Vec::new();
        let mut size = 0;
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            let a = http::get(addr, "/metrics").await;
            took.push(t.elapsed());
            assert_eq!(a.status, 200);
            size = a.body.len();
            tokio::time::sleep(every).await;
        }
        (took, size)
    })
}

async fn with_scraper(
    port: u16,
    admin: SocketAddr,
    every: Duration,
    label: &str,
    args: &[String],
) -> (Figures, Vec<Duration>, usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let task = scraper(admin, every, stop.clone());
    let f = bench(port, label, args).await;
    stop.store(true, Ordering::Relaxed);
    let (took, size) = task.await.expect("scraper");
    (f, took, size)
}

fn pct(a: f64, b: f64) -> f64 {
    100.0 * (a - b) / b
}

async fn run() {
    let seconds = setting("SCRAPE_BENCH_SECONDS", "15");
    let rounds: usize = setting("SCRAPE_BENCH_ROUNDS", "3").parse().expect("rounds");
    let clients = setting("SCRAPE_BENCH_CLIENTS", "8");
    let scale = setting("SCRAPE_BENCH_SCALE", "10");
    let env = start_with(ClusterConfig::default(), |_| {}).await;
    init(&env, &scale).await;
    let args: Vec<String> = [
        "-S", "-M", "prepared", "-c", &clients, "-j", "2", "-T", &seconds, "-n",
    ]
    .map(String::from)
    .to_vec();
    println!(
        "metrics_scrape: pgbench {} through pgrelay, {rounds} round(s)",
        args.join(" ")
    );
    println!("  load average before the runs: {}", load());
    let (port, admin) = (env.port(), env.proxy.admin_addr);
    let (mut off, mut on, mut fast) = (Vec::new(), Vec::new(), Vec::new());
    let mut scrapes = Vec::new();
    let mut size = 0;
    for round in 0..rounds {
        // Rotate the order so no setup always runs first on a cold cache.
        for k in 0..3 {
            match (round + k) % 3 {
                0 => off.push(bench(port, "no scraper", &args).await),
                1 => {
                    let (f, took, s) = with_scraper(
                        port,
                        admin,
                        Duration::from_secs(1),
                        "scrape every 1 s",
                        &args,
                    )
                    .await;
                    on.push(f);
                    scrapes.extend(took);
                    size = s;
                }
                _ => {
                    let (f, took, _) = with_scraper(
                        port,
                        admin,
                        Duration::from_millis(100),
                        "scrape every 100 ms",
                        &args,
                    )
                    .await;
                    fast.push(f);
                    scrapes.extend(took);
                }
            }
        }
    }
    let (off, on, fast) = (
        Figures::mean(&off),
        Figures::mean(&on),
        Figures::mean(&fast),
    );
    scrapes.sort();
    let median = scrapes.get(scrapes.len() / 2).copied().unwrap_or_default();
    let worst = scrapes.last().copied().unwrap_or_default();
    println!("metrics_scrape results (mean of {rounds} run(s) each):");
    report("no scraper", &off);
    report("scrape every 1 s", &on);
    report("scrape every 100 ms", &fast);
    println!("  every 1 s vs none:    {:+.2}% TPS", pct(on.tps, off.tps));
    println!(
        "  every 100 ms vs none: {:+.2}% TPS",
        pct(fast.tps, off.tps)
    );
    println!(
        "  one scrape under load: median {median:?}, worst {worst:?} over {} scrapes; body {size} bytes",
        scrapes.len()
    );
}

fn main() {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run());
}
