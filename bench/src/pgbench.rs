//! Running pgbench for one cell of the table and reading its figures: TPS and average
//! latency from its summary, p50/p99 from its per-transaction log (`-l`).

use anyhow::{Context, Result};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What one pgbench run measured, or why it has no figures.
#[derive(Debug, Clone)]
pub enum Outcome {
    Ok(Figures),
    /// pgbench failed (exit status, aborted clients or failed transactions): the reason.
    Failed(String),
    /// Not run: the reason.
    Skipped(String),
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Figures {
    pub tps: f64,
    pub avg_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub transactions: u64,
    /// pgbench's "initial connection time" (not part of TPS or latency).
    pub connect_ms: f64,
}

pub struct Pgbench {
    pub program: PathBuf,
}

/// Kills pgbench if it outlives its duration by this much (a stuck target must not
/// stall the whole run).
const GRACE: Duration = Duration::from_secs(120);

impl Pgbench {
    pub fn new() -> Pgbench {
        Pgbench {
            program: crate::sys::pg_program("pgbench"),
        }
    }

    fn command(&self, port: u16) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.env_clear()
            .env("LC_ALL", "C")
            .env("PGPASSWORD", cluster::APP_PASSWORD)
            .env("PGCONNECT_TIMEOUT", "30");
        if let Some(path) = std::env::var_os("PATH") {
            cmd.env("PATH", path);
        }
        cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-U", cluster::APP_USER]);
        cmd
    }

    /// `pgbench -i -s scale` as the app user (the tables belong to it).
    pub fn init(&self, port: u16, scale: u32) -> Result<()> {
        let out = self
            .command(port)
            .args(["-i", "-q", "-s", &scale.to_string(), cluster::APP_DB])
            .stdin(Stdio::null())
            .output()
            .context("spawn pgbench -i")?;
        if !out.status.success() {
            anyhow::bail!(
                "pgbench -i failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Runs `pgbench args` against 127.0.0.1:`port` for about `seconds`, with its
    /// per-transaction log in `dir` (created, then removed). When it fails, its output
    /// is kept as `<save_failed>.out` / `.err`.
    pub fn run(
        &self,
        port: u16,
        args: &[String],
        seconds: u64,
        dir: &Path,
        save_failed: Option<&Path>,
    ) -> Round {
        let (outcome, latencies_us) = match self.try_run(port, args, seconds, dir) {
            Ok(r) => r,
            Err(e) => (Outcome::Failed(format!("{e:#}")), Vec::new()),
        };
        if let (Outcome::Failed(_), Some(to)) = (&outcome, save_failed) {
            for ext in ["out", "err"] {
                let _ = std::fs::copy(
                    dir.join(format!("pgbench.{ext}")),
                    to.with_extension(format!("pgbench.{ext}")),
                );
            }
        }
        let _ = std::fs::remove_dir_all(dir);
        Round {
            outcome,
            latencies_us,
        }
    }

    fn try_run(
        &self,
        port: u16,
        args: &[String],
        seconds: u64,
        dir: &Path,
    ) -> Result<(Outcome, Vec<u64>)> {
        std::fs::create_dir_all(dir).with_context(|| format!("mkdir {}", dir.display()))?;
        let stdout = dir.join("pgbench.out");
        let mut child = self
            .command(port)
            .args(args)
            .args(["-T", &seconds.to_string(), "-n", "-l"])
            .arg(format!("--log-prefix={}", dir.join("txlog").display()))
            .arg(cluster::APP_DB)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout)?)
            .stderr(File::create(dir.join("pgbench.err"))?)
            .spawn()
            .context("spawn pgbench")?;
        let deadline = Instant::now() + Duration::from_secs(seconds) + GRACE;
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(failed(format!(
                    "pgbench still running {}s past -T {seconds}; killed",
                    GRACE.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let out = std::fs::read_to_string(&stdout).unwrap_or_default();
        let err = std::fs::read_to_string(dir.join("pgbench.err")).unwrap_or_default();
        let summary = Summary::parse(&out);
        let problem = if !status.success() {
            Some(format!("pgbench exited with {status}"))
        } else if summary.failed > 0 {
            Some(format!("{} failed transactions", summary.failed))
        } else if err.contains("aborted") {
            Some("some clients aborted".to_string())
        } else {
            None
        };
        if let Some(problem) = problem {
            return Ok(failed(format!("{problem}: {}", first_error(&err))));
        }
        if summary.transactions == Some(0) {
            return Ok(failed(format!(
                "no transaction completed within -T {seconds} (connecting the clients took longer?)"
            )));
        }
        let (Some(tps), Some(avg_ms), Some(transactions)) =
            (summary.tps, summary.avg_ms, summary.transactions)
        else {
            return Ok(failed(format!(
                "no figures in pgbench output: {}",
                first_error(&format!("{out}{err}"))
            )));
        };
        let mut lat = read_latencies(dir)?;
        lat.sort_unstable();
        let figures = Figures {
            tps,
            avg_ms,
            p50_ms: quantile_ms(&lat, 0.50),
            p99_ms: quantile_ms(&lat, 0.99),
            transactions,
            connect_ms: summary.connect_ms.unwrap_or(f64::NAN),
        };
        Ok((Outcome::Ok(figures), lat))
    }
}

fn failed(why: String) -> (Outcome, Vec<u64>) {
    (Outcome::Failed(why), Vec::new())
}

/// One pgbench run: its figures, and its per-transaction latencies (µs, sorted) for
/// merging with the other rounds of the same cell.
#[derive(Debug, Clone)]
pub struct Round {
    pub outcome: Outcome,
    pub latencies_us: Vec<u64>,
}

/// One cell's figures from its rounds: the targets of a workload take turns, a few
/// seconds each, so that a slow spell of a shared machine falls on all of them rather
/// than on whichever ran then. TPS is all transactions over all measured time, the
/// average is weighted by transactions, p50/p99 come from every round's log. A failed
/// round fails the cell.
pub fn merge_rounds(rounds: Vec<Round>) -> Outcome {
    let mut all = Vec::new();
    let (mut tx, mut secs, mut lat_sum, mut connect) = (0u64, 0.0, 0.0, 0.0);
    let n = rounds.len();
    for r in rounds {
        let f = match r.outcome {
            Outcome::Ok(f) => f,
            other => return other,
        };
        tx += f.transactions;
        secs += f.transactions as f64 / f.tps;
        lat_sum += f.avg_ms * f.transactions as f64;
        connect += f.connect_ms;
        all.extend(r.latencies_us);
    }
    if n == 0 || tx == 0 {
        return Outcome::Failed("no round completed a transaction".into());
    }
    all.sort_unstable();
    Outcome::Ok(Figures {
        tps: tx as f64 / secs,
        avg_ms: lat_sum / tx as f64,
        p50_ms: quantile_ms(&all, 0.50),
        p99_ms: quantile_ms(&all, 0.99),
        transactions: tx,
        connect_ms: connect / n as f64,
    })
}

/// The most telling line of pgbench's stderr.
fn first_error(err: &str) -> String {
    let lines: Vec<&str> = err
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines
        .iter()
        .find(|l| l.contains("ERROR") || l.contains("FATAL") || l.contains("error"))
        .or_else(|| lines.first())
        .map(|l| l.chars().take(300).collect())
        .unwrap_or_else(|| "(no message)".to_string())
}

/// The figures of pgbench's closing summary.
#[derive(Debug, Default, PartialEq)]
pub struct Summary {
    pub tps: Option<f64>,
    pub avg_ms: Option<f64>,
    pub transactions: Option<u64>,
    pub failed: u64,
    pub connect_ms: Option<f64>,
}

impl Summary {
    pub fn parse(out: &str) -> Summary {
        let number = |prefix: &str| -> Option<f64> {
            out.lines()
                .find_map(|l| l.trim().strip_prefix(prefix))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
        };
        Summary {
            tps: number("tps = "),
            avg_ms: number("latency average = "),
            transactions: number("number of transactions actually processed: ").map(|n| n as u64),
            failed: number("number of failed transactions: ").map_or(0, |n| n as u64),
            connect_ms: number("initial connection time = "),
        }
    }
}

/// Transaction latencies (µs) from every per-thread log file in `dir`. A line is
/// `client_id transaction_no time script_no time_epoch time_us ...`; `time` is the
/// latency in µs, or a word for a failed or skipped transaction.
fn read_latencies(dir: &Path) -> Result<Vec<u64>> {
    let mut lat = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let is_log = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("txlog"));
        if !is_log {
            continue;
        }
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        lat.extend(parse_log(&text));
    }
    Ok(lat)
}

pub fn parse_log(text: &str) -> impl Iterator<Item = u64> + '_ {
    text.lines()
        .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok())
}

/// The `q` quantile (nearest rank) of sorted µs values, in ms; NaN when empty.
pub fn quantile_ms(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "\
transaction type: <builtin: select only>
scaling factor: 10
query mode: prepared
number of clients: 16
number of threads: 2
maximum number of tries: 1
duration: 10 s
number of transactions actually processed: 123456
number of failed transactions: 0 (0.000%)
latency average = 1.296 ms
initial connection time = 12.345 ms
tps = 12345.678901 (without initial connection time)
";

    #[test]
    fn summary() {
        assert_eq!(
            Summary::parse(OUT),
            Summary {
                tps: Some(12345.678901),
                avg_ms: Some(1.296),
                transactions: Some(123456),
                failed: 0,
                connect_ms: Some(12.345),
            }
        );
        assert_eq!(Summary::parse("garbage"), Summary::default());
    }

    #[test]
    fn log_lines_and_quantiles() {
        let log =
            "0 0 1500 0 1700000000 123\n0 1 failed 0 1700000000 456\n1 0 500 0 1700000000 789 12\n";
        let mut v: Vec<u64> = parse_log(log).collect();
        v.sort_unstable();
        assert_eq!(v, vec![500, 1500]);
        let hundred: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(quantile_ms(&hundred, 0.5), 50.0);
        assert_eq!(quantile_ms(&hundred, 0.99), 99.0);
        assert_eq!(quantile_ms(&[7000], 0.99), 7.0);
        assert!(quantile_ms(&[], 0.5).is_nan());
    }

    #[test]
    fn rounds_merge_by_transactions() {
        let round = |tps: f64, avg_ms: f64, transactions: u64, lat: &[u64]| Round {
            outcome: Outcome::Ok(Figures {
                tps,
                avg_ms,
                p50_ms: 0.0,
                p99_ms: 0.0,
                transactions,
                connect_ms: 2.0,
            }),
            latencies_us: lat.to_vec(),
        };
        // 1,000 tx in 1 s, then 3,000 tx in 1 s: 2,000 tps; the average weighs the
        // second round three times.
        let Outcome::Ok(f) = merge_rounds(vec![
            round(1000.0, 4.0, 1000, &[4000, 4000]),
            round(3000.0, 2.0, 3000, &[1000, 2000, 3000]),
        ]) else {
            panic!("merged rounds failed");
        };
        assert_eq!(f.tps, 2000.0);
        assert_eq!(f.avg_ms, 2.5);
        assert_eq!(f.transactions, 4000);
        assert_eq!((f.p50_ms, f.p99_ms), (3.0, 4.0));
        assert_eq!(f.connect_ms, 2.0);
        let bad = Round {
            outcome: Outcome::Failed("boom".into()),
            latencies_us: Vec::new(),
        };
        let merged = merge_rounds(vec![round(1.0, 1.0, 1, &[1]), bad]);
        assert!(matches!(merged, Outcome::Failed(why) if why == "boom"));
        assert!(matches!(merge_rounds(Vec::new()), Outcome::Failed(_)));
    }

    #[test]
    fn error_line_is_picked() {
        let err = "pgbench: warning: x\npgbench: error: client 3 script 0 aborted in command 1 query 0: ERROR:  prepared statement \"P0_1\" does not exist\n";
        assert!(first_error(err).contains("does not exist"));
        assert_eq!(first_error(""), "(no message)");
    }
}
