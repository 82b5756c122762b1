//! The proxy's counters in Prometheus text format, for the admin API's `/metrics`.
//! Rendering reads atomics and one topology snapshot; it takes no lock the data path
//! uses, so scraping cannot slow sessions down.

use crate::session::Shared;
use std::fmt::Write;
use std::sync::atomic::Ordering;

pub fn render(shared: &Shared) -> String {
    let mut out = String::with_capacity(4096);
    let topo = shared.topology.load();
    let ryw = &shared.ryw;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);

    gauge(
        &mut out,
        "pgrelay_client_sessions",
        "Client sessions logged in now.",
        &[("", shared.sessions.load(Ordering::Relaxed) as f64)],
    );
    gauge(
        &mut out,
        "pgrelay_pinned_sessions",
        "Sessions pinned to one backend now.",
        &[("", shared.pinned_sessions.load(Ordering::Relaxed) as f64)],
    );
    counter(
        &mut out,
        "pgrelay_session_pins_total",
        "Sessions that were ever pinned to one backend.",
        &[("", load(&shared.pins_total))],
    );
    counter(
        &mut out,
        "pgrelay_read_only_retries_total",
        "Reads a replica refused with 25006, re-run on the primary.",
        &[("", load(&shared.read_only_retries))],
    );
    counter(
        &mut out,
        "pgrelay_floor_reads_total",
        "Reads with a session floor (read-your-writes, monotonic reads), by outcome.",
        &[
            ("outcome=\"replica_known\"", load(&ryw.replica_known)),
            ("outcome=\"replica_checked\"", load(&ryw.replica_checked)),
            ("outcome=\"stale_retry\"", load(&ryw.stale_retries)),
            ("outcome=\"waited\"", load(&ryw.waited)),
            ("outcome=\"primary_fallback\"", load(&ryw.primary_fallbacks)),
        ],
    );
    counter(
        &mut out,
        "pgrelay_write_lsn_reads_total",
        "WAL positions read from the primary after writes (and for global reads).",
        &[("", load(&ryw.write_lsn_reads))],
    );

    let mut leases = Vec::new();
    let mut up = Vec::new();
    let mut lag_bytes = Vec::new();
    let mut lag_seconds = Vec::new();
    for n in &topo.nodes {
        let node = format!("node=\"{}\"", escape(&n.name));
        leases.push((node.clone(), shared.pools.load(n.id) as f64));
        let role = format!("{node},role=\"{}\"", role_name(n.role));
        up.push((role, if n.up { 1.0 } else { 0.0 }));
        if let Some(lag) = n.lag {
            lag_bytes.push((node.clone(), lag.bytes.0 as f64));
            lag_seconds.push((node, lag.time.as_secs_f64()));
        }
    }
    gauge(
        &mut out,
        "pgrelay_backend_leases",
        "Backend connections leased to sessions now, per node.",
        &refs(&leases),
    );
    gauge(
        &mut out,
        "pgrelay_node_up",
        "1 when the node answers its heartbeats, per node and role.",
        &refs(&up),
    );
    gauge(
        &mut out,
        "pgrelay_replica_lag_bytes",
        "WAL bytes a replica has not replayed.",
        &refs(&lag_bytes),
    );
    gauge(
        &mut out,
        "pgrelay_replica_lag_seconds",
        "Age of the oldest WAL a replica has not replayed.",
        &refs(&lag_seconds),
    );
    gauge(
        &mut out,
        "pgrelay_topology_version",
        "Version of the live topology snapshot.",
        &[("", topo.version as f64)],
    );
    out
}

fn refs(v: &[(String, f64)]) -> Vec<(&str, f64)> {
    v.iter().map(|(l, x)| (l.as_str(), *x)).collect()
}

fn role_name(role: router::Role) -> &'static str {
    match role {
        router::Role::Primary => "primary",
        router::Role::Replica => "replica",
        router::Role::Unknown => "unknown",
    }
}

fn gauge(out: &mut String, name: &str, help: &str, samples: &[(&str, f64)]) {
    header(out, name, help, "gauge");
    for (labels, v) in samples {
        sample(out, name, labels, &format!("{v}"));
    }
}

fn counter(out: &mut String, name: &str, help: &str, samples: &[(&str, u64)]) {
    header(out, name, help, "counter");
    for (labels, v) in samples {
        sample(out, name, labels, &v.to_string());
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &str, value: &str) {
    if labels.is_empty() {
        let _ = writeln!(out, "{name} {value}");
    } else {
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    }
}

/// Label values escape backslash, quote and newline, as the format requires.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_and_escaping() {
        let mut out = String::new();
        gauge(
            &mut out,
            "pgrelay_x",
            "An x.",
            &[("", 1.5), ("node=\"a\"", 2.0)],
        );
        counter(&mut out, "pgrelay_y_total", "Ys.", &[("", 3)]);
        assert_eq!(
            out,
            "# HELP pgrelay_x An x.\n# TYPE pgrelay_x gauge\npgrelay_x 1.5\n\
             pgrelay_x{node=\"a\"} 2\n# HELP pgrelay_y_total Ys.\n\
             # TYPE pgrelay_y_total counter\npgrelay_y_total 3\n"
        );
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
