//! The proxy's counters in Prometheus text format, for the admin API's `/metrics`.
//! Rendering reads atomics and one topology snapshot, and copies each node's latency
//! histogram under its (per-node, briefly held) lock, so scraping barely touches the
//! data path. Names follow Prometheus conventions: `pgrelay_` prefix, base units
//! (seconds, bytes), `_total` for counters.

use crate::session::Shared;
use crate::stats::Reason;
use health::failover::FailoverStatus;
use health::BeatCounts;
use std::fmt::Write;
use std::sync::atomic::Ordering;

pub fn render(shared: &Shared, beats: &BeatCounts, failover: &FailoverStatus) -> String {
    let mut out = String::with_capacity(8192);
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
    per_node(&mut out, shared, beats);
    failover_metrics(&mut out, failover, topo.writes_held.is_some());
    out
}

/// Routing, latency, pools and heartbeats, labelled by node.
fn per_node(out: &mut String, shared: &Shared, beats: &BeatCounts) {
    let nodes: Vec<(router::NodeId, String)> = shared
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (router::NodeId(i), format!("node=\"{}\"", escape(&n.name))))
        .collect();
    let mut routed = Vec::new();
    for (id, node) in &nodes {
        for r in Reason::ALL {
            let labels = format!("{node},reason=\"{}\"", r.as_str());
            routed.push((labels, shared.stats.routed_count(*id, r)));
        }
    }
    counter(
        out,
        "pgrelay_statements_total",
        "Client statements sent to a node, by why they went there: write, read (a fresh replica), ryw_fallback (no replica had the session's writes), read_only_retry (a replica answered 25006), no_replica (none eligible), replica_unavailable.",
        &refs_u(&routed),
    );
    let name = "pgrelay_query_duration_seconds";
    header(
        out,
        name,
        "Time from a unit's last message to its ReadyForQuery, per node; quantiles over the last 1-2 minutes (hdrhistogram).",
        "summary",
    );
    for (id, node) in &nodes {
        let l = shared.stats.latency_of(*id);
        for (q, v) in &l.quantiles {
            sample(
                out,
                name,
                &format!("{node},quantile=\"{q}\""),
                &format!("{v}"),
            );
        }
        sample(
            out,
            &format!("{name}_sum"),
            node,
            &format!("{}", l.sum_seconds),
        );
        sample(out, &format!("{name}_count"), node, &l.count.to_string());
    }
    let (mut in_use, mut idle, mut waiting, mut pools) = (vec![], vec![], vec![], vec![]);
    let (mut sent, mut failed) = (vec![], vec![]);
    for (id, node) in &nodes {
        let u = shared.pools.usage(*id);
        in_use.push((node.clone(), u.in_use as f64));
        idle.push((node.clone(), u.idle as f64));
        waiting.push((node.clone(), u.waiting as f64));
        pools.push((node.clone(), u.pools as f64));
        sent.push((node.clone(), beats.beats(*id)));
        failed.push((node.clone(), beats.failures(*id)));
    }
    gauge(
        out,
        "pgrelay_pool_size",
        "pool.size: the connection limit of each (node, user, database) pool.",
        &[("", shared.pools.size() as f64)],
    );
    gauge(out, "pgrelay_pools", "Pools open per node.", &refs(&pools));
    gauge(
        out,
        "pgrelay_pool_connections_in_use",
        "Backend connections leased to sessions, per node.",
        &refs(&in_use),
    );
    gauge(
        out,
        "pgrelay_pool_connections_idle",
        "Backend connections open and idle, per node.",
        &refs(&idle),
    );
    gauge(
        out,
        "pgrelay_pool_waiting_sessions",
        "Sessions waiting for a backend connection, per node.",
        &refs(&waiting),
    );
    counter(
        out,
        "pgrelay_heartbeats_total",
        "Heartbeat queries sent, per node.",
        &refs_u(&sent),
    );
    counter(
        out,
        "pgrelay_heartbeat_failures_total",
        "Heartbeats that failed or timed out, per node.",
        &refs_u(&failed),
    );
}

fn failover_metrics(out: &mut String, f: &FailoverStatus, held: bool) {
    counter(
        out,
        "pgrelay_failovers_total",
        "Promotions completed (failovers and switchovers) since start.",
        &[("", f.failovers)],
    );
    counter(
        out,
        "pgrelay_fence_actions_total",
        "Fencing statements and fence commands run, by outcome.",
        &[
            ("outcome=\"ok\"", f.fence_ok),
            ("outcome=\"failed\"", f.fence_failed),
        ],
    );
    gauge(
        out,
        "pgrelay_epoch",
        "The failover epoch: goes up by one at each promotion.",
        &[("", f.epoch.0 as f64)],
    );
    gauge(
        out,
        "pgrelay_writes_held",
        "1 while writes are held (a failover or switchover in progress, or an unreachable primary).",
        &[("", if held { 1.0 } else { 0.0 })],
    );
    gauge(
        out,
        "pgrelay_failover_paused",
        "1 while automatic failover is paused.",
        &[("", if f.paused { 1.0 } else { 0.0 })],
    );
    if let Some(last) = &f.last {
        gauge(
            out,
            "pgrelay_last_failover_duration_seconds",
            "How long the last promotion took, from detection (or the request) to promoted.",
            &[("", last.took.as_secs_f64())],
        );
    }
}

fn refs_u(v: &[(String, u64)]) -> Vec<(&str, u64)> {
    v.iter().map(|(l, x)| (l.as_str(), *x)).collect()
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
