//! pgbench runs for the benchmarks: run it against a loopback port, parse its figures,
//! print them. Benchmarks print figures; they assert only that nothing failed.

use crate::pg_program;
use std::process::Command;

/// A benchmark knob from the environment, or its default.
pub fn setting(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// Run pgbench against 127.0.0.1:`port` as the app user: whether it succeeded, and its
/// output (stdout then stderr).
pub fn try_pgbench<S: AsRef<std::ffi::OsStr>>(port: u16, args: &[S]) -> (bool, String) {
    let out = Command::new(pg_program("pgbench"))
        .args(args)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-U", cluster::APP_USER, cluster::APP_DB])
        .env("PGPASSWORD", cluster::APP_PASSWORD)
        .output()
        .expect("pgbench runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Like [`try_pgbench`]; its output, or a panic.
pub fn pgbench(port: u16, args: &[String]) -> String {
    let (ok, text) = try_pgbench(port, args);
    assert!(ok, "pgbench {args:?} failed:\n{text}");
    text
}

/// One pgbench run's figures.
#[derive(Debug, Clone, Copy, Default)]
pub struct Figures {
    pub tps: f64,
    pub latency_ms: f64,
    pub transactions: u64,
    pub failed: u64,
    /// The whole machine's busy CPU time per transaction, in µs (0 when unknown): the
    /// proxy, PostgreSQL and pgbench together. At a fixed rate below capacity it is the
    /// cost itself; saturated, it is only the machine's capacity over the TPS.
    pub cpu_us: f64,
}

impl Figures {
    pub fn parse(out: &str) -> Figures {
        let number = |prefix: &str| -> f64 {
            out.lines()
                .find_map(|l| l.trim().strip_prefix(prefix))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no {prefix:?} in pgbench output:\n{out}"))
        };
        Figures {
            tps: number("tps = "),
            latency_ms: number("latency average = "),
            transactions: number("number of transactions actually processed: ") as u64,
            failed: out
                .lines()
                .find_map(|l| l.strip_prefix("number of failed transactions: "))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
            cpu_us: 0.0,
        }
    }

    pub fn mean(runs: &[Figures]) -> Figures {
        let n = runs.len().max(1) as f64;
        Figures {
            tps: runs.iter().map(|f| f.tps).sum::<f64>() / n,
            latency_ms: runs.iter().map(|f| f.latency_ms).sum::<f64>() / n,
            transactions: runs.iter().map(|f| f.transactions).sum(),
            failed: runs.iter().map(|f| f.failed).sum(),
            cpu_us: runs
                .iter()
                .map(|f| f.cpu_us * f.transactions as f64)
                .sum::<f64>()
                / runs.iter().map(|f| f.transactions).sum::<u64>().max(1) as f64,
        }
    }
}

/// Busy CPU time of the whole machine so far, in µs: every core's non-idle ticks in
/// /proc/stat (USER_HZ, 1/100 s on every Linux architecture).
fn machine_busy_us() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<u64> = cpu
        .split_whitespace()
        .map(|t| t.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]: guest time is
    // already counted in user.
    let busy: u64 = ticks.iter().take(8).sum::<u64>() - ticks.get(3)? - ticks.get(4)?;
    Some(busy * 10_000)
}

pub fn report(label: &str, f: &Figures) {
    println!(
        "  {label:<26} {:>9.1} tps  {:>7.3} ms average latency  {:>6.1} µs machine CPU/tx  \
         ({} transactions, {} failed)",
        f.tps, f.latency_ms, f.cpu_us, f.transactions, f.failed
    );
}

pub async fn bench(port: u16, label: &str, args: &[String]) -> Figures {
    let args = args.to_vec();
    let before = machine_busy_us();
    let out = tokio::task::spawn_blocking(move || pgbench(port, &args))
        .await
        .expect("pgbench task");
    let mut f = Figures::parse(&out);
    if let (Some(a), Some(b)) = (before, machine_busy_us()) {
        f.cpu_us = b.saturating_sub(a) as f64 / f.transactions.max(1) as f64;
    }
    report(label, &f);
    assert_eq!(f.failed, 0, "{label}: failed transactions:\n{out}");
    f
}

/// The 1-minute load average: the machine is shared, and figures taken while something
/// else runs say little.
pub fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// `pgbench -i -s scale` on the cluster's primary, then wait until the replicas have it.
pub async fn init(env: &crate::Env, scale: &str) {
    let primary = env.primary_port();
    let init: Vec<String> = ["-i", "-s", scale, "-q"].map(String::from).to_vec();
    tokio::task::spawn_blocking(move || pgbench(primary, &init))
        .await
        .expect("pgbench -i");
    env.wait_for_replay().await;
}
