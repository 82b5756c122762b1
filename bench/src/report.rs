//! The results: cells (workload x target), ratios to direct PostgreSQL, and their
//! renderings as a terminal table, Markdown and CSV.

use crate::pgbench::{Figures, Outcome};
use std::fmt::Write as _;

/// One pgbench workload of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workload {
    /// pgbench builtin: `select-only` or `tpcb-like`.
    pub script: &'static str,
    /// `-M`: `simple` or `prepared`.
    pub mode: &'static str,
    pub clients: u32,
}

impl Workload {
    pub fn label(&self) -> String {
        format!("{} {}", self.script, self.mode)
    }

    /// pgbench arguments, without duration and logging.
    pub fn args(&self) -> Vec<String> {
        let threads = self.clients.min(2);
        [
            "-b",
            self.script,
            "-M",
            self.mode,
            "-c",
            &self.clients.to_string(),
            "-j",
            &threads.to_string(),
        ]
        .map(String::from)
        .to_vec()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Direct,
    /// Copies bytes to a server connection per client: the floor of any proxy's cost.
    BareRelay,
    PgrelayPrimary,
    PgrelayCluster,
    Pgbouncer,
}

impl Target {
    pub const ALL: [Target; 5] = [
        Target::Direct,
        Target::BareRelay,
        Target::PgrelayPrimary,
        Target::PgrelayCluster,
        Target::Pgbouncer,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Target::Direct => "direct PostgreSQL",
            Target::BareRelay => "bare TCP relay (floor)",
            Target::PgrelayPrimary => "pgrelay, primary only",
            Target::PgrelayCluster => "pgrelay, 1+2 routing",
            Target::Pgbouncer => "PgBouncer transaction",
        }
    }

    /// Whether it shares a pool of server connections among its clients (else each
    /// client needs a connection of its own on the primary).
    pub fn pools(self) -> bool {
        !matches!(self, Target::Direct | Target::BareRelay)
    }

    /// Stable name for the CSV (and the plot's legend order).
    pub fn key(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::BareRelay => "bare_relay",
            Target::PgrelayPrimary => "pgrelay_primary",
            Target::PgrelayCluster => "pgrelay_cluster",
            Target::Pgbouncer => "pgbouncer",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Cell {
    pub workload: Workload,
    pub target: Target,
    pub outcome: Outcome,
    /// TPS over the reference direct TPS.
    pub ratio: Option<f64>,
    /// Set when the reference is not direct PostgreSQL at the same client count.
    pub reference: Option<String>,
    /// The 1-minute load average when the cell ended (the machine may be shared).
    pub load: String,
    /// CPU time the proxy process used per transaction (user + system), in µs: what
    /// the hop costs, less noisy than TPS on a shared machine. None for direct.
    pub proxy_cpu_us: Option<f64>,
}

impl Cell {
    pub fn figures(&self) -> Option<&Figures> {
        match &self.outcome {
            Outcome::Ok(f) => Some(f),
            _ => None,
        }
    }
}

/// Fills in each cell's TPS ratio to direct PostgreSQL at the same workload; where
/// direct could not run (more clients than max_connections), to direct at the same
/// script and mode with the most clients it did run.
pub fn compute_ratios(cells: &mut [Cell]) {
    let direct: Vec<(Workload, f64)> = cells
        .iter()
        .filter(|c| c.target == Target::Direct)
        .filter_map(|c| Some((c.workload, c.figures()?.tps)))
        .collect();
    for cell in cells.iter_mut() {
        let Some(tps) = cell.figures().map(|f| f.tps) else {
            continue;
        };
        let w = cell.workload;
        if let Some((_, d)) = direct.iter().find(|(dw, _)| *dw == w) {
            cell.ratio = Some(tps / d);
        } else if let Some((dw, d)) = direct
            .iter()
            .filter(|(dw, _)| dw.script == w.script && dw.mode == w.mode)
            .max_by_key(|(dw, _)| dw.clients)
        {
            cell.ratio = Some(tps / d);
            let plural = if dw.clients == 1 { "" } else { "s" };
            cell.reference = Some(format!("direct at {} client{plural}", dw.clients));
        }
    }
}

fn num(v: f64, decimals: usize) -> String {
    if v.is_finite() {
        format!("{v:.decimals$}")
    } else {
        "-".into()
    }
}

/// The row's cells as text: TPS, avg, p50, p99, ratio, proxy CPU per transaction.
fn columns(cell: &Cell) -> [String; 6] {
    let dash = || "-".to_string();
    match &cell.outcome {
        Outcome::Ok(f) => [
            num(f.tps, 0),
            num(f.avg_ms, 3),
            num(f.p50_ms, 3),
            num(f.p99_ms, 3),
            match (cell.ratio, &cell.reference) {
                (Some(r), None) => format!("{r:.2}"),
                (Some(r), Some(_)) => format!("{r:.2} †"),
                (None, _) => dash(),
            },
            cell.proxy_cpu_us.map_or_else(dash, |c| num(c, 1)),
        ],
        Outcome::Failed(_) => ["failed".into(), dash(), dash(), dash(), dash(), dash()],
        Outcome::Skipped(_) => ["skipped".into(), dash(), dash(), dash(), dash(), dash()],
    }
}

const HEAD: [&str; 9] = [
    "workload",
    "clients",
    "target",
    "TPS",
    "avg ms",
    "p50 ms",
    "p99 ms",
    "TPS / direct",
    "proxy CPU µs/tx",
];

fn rows(cells: &[Cell]) -> Vec<[String; 9]> {
    cells
        .iter()
        .map(|c| {
            let [tps, avg, p50, p99, ratio, cpu] = columns(c);
            [
                c.workload.label(),
                c.workload.clients.to_string(),
                c.target.label().to_string(),
                tps,
                avg,
                p50,
                p99,
                ratio,
                cpu,
            ]
        })
        .collect()
}

/// A fixed-width table for the terminal, a blank line between workloads.
pub fn text_table(cells: &[Cell]) -> String {
    let rows = rows(cells);
    let mut width = HEAD.map(|h| h.chars().count());
    for r in &rows {
        for (w, v) in width.iter_mut().zip(r) {
            *w = (*w).max(v.chars().count());
        }
    }
    let line = |r: &[String; 9]| -> String {
        let mut s = String::new();
        for (i, (v, w)) in r.iter().zip(width).enumerate() {
            let pad = w - v.chars().count();
            if i < 3 {
                let _ = write!(s, "{v}{}  ", " ".repeat(pad));
            } else {
                let _ = write!(s, "{}{v}  ", " ".repeat(pad));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(&HEAD.map(String::from));
    out += &"-".repeat(width.iter().sum::<usize>() + 2 * (width.len() - 1));
    out.push('\n');
    let mut prev = None;
    for (cell, r) in cells.iter().zip(&rows) {
        if prev.is_some_and(|p| p != cell.workload) {
            out.push('\n');
        }
        prev = Some(cell.workload);
        out += &line(r);
    }
    out
}

pub fn markdown_table(cells: &[Cell]) -> String {
    let mut out = format!("| {} |\n", HEAD.join(" | "));
    out += "|---|---:|---|---:|---:|---:|---:|---:|---:|\n";
    for r in rows(cells) {
        out += &format!("| {} |\n", r.join(" | "));
    }
    out
}

/// Failure and skip reasons, and the † references, one bullet each.
pub fn notes(cells: &[Cell]) -> Vec<String> {
    let mut notes = Vec::new();
    for c in cells {
        let what = format!(
            "{}, {} clients, {}",
            c.workload.label(),
            c.workload.clients,
            c.target.label()
        );
        match &c.outcome {
            Outcome::Failed(why) => notes.push(format!("{what}: failed: {why}")),
            Outcome::Skipped(why) => notes.push(format!("{what}: skipped: {why}")),
            Outcome::Ok(_) => {}
        }
        if let Some(r) = &c.reference {
            notes.push(format!(
                "† {what}: ratio to {r} (no direct run at this client count)"
            ));
        }
    }
    notes
}

/// Per workload, pgrelay's and PgBouncer's TPS as a share of the bare relay's: how
/// much of the floor's throughput each proxy keeps once it does its own work.
pub fn floor_shares(cells: &[Cell]) -> Vec<String> {
    let tps = |w: Workload, t: Target| {
        cells
            .iter()
            .find(|c| c.workload == w && c.target == t)
            .and_then(|c| c.figures())
            .map(|f| f.tps)
    };
    let mut out = Vec::new();
    let mut seen = Vec::new();
    for w in cells.iter().map(|c| c.workload) {
        if seen.contains(&w) {
            continue;
        }
        seen.push(w);
        let Some(floor) = tps(w, Target::BareRelay).filter(|f| *f > 0.0) else {
            continue;
        };
        let share = |t: Target| match tps(w, t) {
            Some(v) => format!("{} {:.2}", t.label(), v / floor),
            None => format!("{} -", t.label()),
        };
        let plural = if w.clients == 1 { "" } else { "s" };
        out.push(format!(
            "{}, {} client{plural}: {}; {}; {}",
            w.label(),
            w.clients,
            share(Target::PgrelayPrimary),
            share(Target::PgrelayCluster),
            share(Target::Pgbouncer)
        ));
    }
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

pub fn csv(cells: &[Cell]) -> String {
    let mut out = String::from(
        "script,mode,clients,target,target_label,status,tps,avg_latency_ms,p50_ms,p99_ms,tps_ratio_to_direct,ratio_reference,transactions,initial_connection_ms,load1_after,proxy_cpu_us_per_tx,note\n",
    );
    for c in cells {
        let f = c.figures();
        let v = |x: Option<f64>, d: usize| {
            x.filter(|v| v.is_finite())
                .map_or(String::new(), |v| format!("{v:.d$}"))
        };
        let (status, note) = match &c.outcome {
            Outcome::Ok(_) => ("ok", String::new()),
            Outcome::Failed(w) => ("failed", w.clone()),
            Outcome::Skipped(w) => ("skipped", w.clone()),
        };
        let fields = [
            c.workload.script.to_string(),
            c.workload.mode.to_string(),
            c.workload.clients.to_string(),
            c.target.key().to_string(),
            c.target.label().to_string(),
            status.to_string(),
            v(f.map(|f| f.tps), 1),
            v(f.map(|f| f.avg_ms), 3),
            v(f.map(|f| f.p50_ms), 3),
            v(f.map(|f| f.p99_ms), 3),
            v(c.ratio, 4),
            c.reference.clone().unwrap_or_default(),
            f.map_or(String::new(), |f| f.transactions.to_string()),
            v(f.map(|f| f.connect_ms), 1),
            c.load.clone(),
            v(c.proxy_cpu_us, 2),
            note,
        ];
        let line: Vec<String> = fields.iter().map(|s| csv_field(s)).collect();
        out += &line.join(",");
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(script: &'static str, clients: u32, target: Target, tps: Option<f64>) -> Cell {
        Cell {
            workload: Workload {
                script,
                mode: "simple",
                clients,
            },
            target,
            outcome: match tps {
                Some(tps) => Outcome::Ok(Figures {
                    tps,
                    avg_ms: 1.0,
                    p50_ms: 0.9,
                    p99_ms: 2.0,
                    transactions: 10,
                    connect_ms: 5.0,
                }),
                None => Outcome::Failed("boom, \"quoted\"".into()),
            },
            ratio: None,
            reference: None,
            load: "0.50".into(),
            proxy_cpu_us: (target != Target::Direct && tps.is_some()).then_some(21.26),
        }
    }

    #[test]
    fn ratios_use_same_workload_or_the_largest_direct_run() {
        let mut cells = vec![
            cell("select-only", 16, Target::Direct, Some(1000.0)),
            cell("select-only", 64, Target::Direct, Some(2000.0)),
            cell("select-only", 16, Target::PgrelayPrimary, Some(500.0)),
            cell("select-only", 1000, Target::PgrelayPrimary, Some(1000.0)),
            cell("select-only", 16, Target::Pgbouncer, None),
            cell("tpcb-like", 16, Target::PgrelayPrimary, Some(10.0)),
        ];
        compute_ratios(&mut cells);
        assert_eq!(cells[0].ratio, Some(1.0));
        assert_eq!(cells[2].ratio, Some(0.5));
        assert_eq!(cells[3].ratio, Some(0.5));
        assert_eq!(cells[3].reference.as_deref(), Some("direct at 64 clients"));
        assert_eq!(cells[4].ratio, None);
        assert_eq!(cells[5].ratio, None);
        let table = text_table(&cells);
        assert!(table.contains("0.50 †"), "{table}");
        assert!(table.contains("failed"), "{table}");
        let csv = csv(&cells);
        assert_eq!(csv.lines().count(), 7);
        assert!(csv.contains("\"boom, \"\"quoted\"\"\""), "{csv}");
        assert_eq!(notes(&cells).len(), 2);
        assert_eq!(markdown_table(&cells).lines().count(), 8);
        // Proxy CPU per transaction: shown for proxies, a dash for direct.
        let row = |target: &str| {
            table
                .lines()
                .find(|l| l.starts_with("select-only simple  16") && l.contains(target))
                .unwrap_or_default()
        };
        assert!(row("pgrelay, primary only").ends_with(" 21.3"), "{table}");
        assert!(row("direct").ends_with(" -"), "{table}");
        assert!(
            csv.lines().nth(3).is_some_and(|l| l.contains(",21.26,")),
            "{csv}"
        );
    }

    #[test]
    fn floor_shares_divide_by_the_bare_relay() {
        let cells = vec![
            cell("select-only", 16, Target::Direct, Some(1000.0)),
            cell("select-only", 16, Target::BareRelay, Some(600.0)),
            cell("select-only", 16, Target::PgrelayPrimary, Some(570.0)),
            cell("select-only", 16, Target::Pgbouncer, None),
            // No floor here (skipped or failed): no line.
            cell("select-only", 1000, Target::BareRelay, None),
            cell("select-only", 1000, Target::PgrelayPrimary, Some(900.0)),
        ];
        assert_eq!(
            floor_shares(&cells),
            [
                "select-only simple, 16 clients: pgrelay, primary only 0.95; \
              pgrelay, 1+2 routing -; PgBouncer transaction -"
            ]
        );
    }
}
