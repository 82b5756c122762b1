//! The failover controller's actions against real nodes, each over its own short
//! control connection. `ALTER SYSTEM` may not run in a transaction block, so every
//! statement goes on its own.

use super::{conninfo, InFlight, Promotion};
use crate::probe::{connect, ControlCreds, NodeSpec};
use router::{Epoch, Lsn, NodeId};
use std::time::Duration;
use tokio_postgres::{Client, SimpleQueryMessage};

/// What every action needs.
#[derive(Clone)]
pub struct Effects {
    pub specs: Vec<NodeSpec>,
    pub creds: ControlCreds,
    /// Connecting and each plain statement.
    pub timeout: Duration,
    /// How long `pg_promote` may take.
    pub promote_timeout: Duration,
    /// `failover.fence_command`, run through `sh -c`.
    pub fence_command: Option<String>,
    pub in_flight: InFlight,
}

async fn open(e: &Effects, node: NodeId) -> Result<Client, String> {
    let spec = e.specs.get(node.0).ok_or("unknown node")?;
    connect(spec, &e.creds, e.timeout)
        .await
        .map_err(|err| err.to_string())
}

/// Runs one statement; the first column of its first row, if any.
async fn one(c: &Client, sql: &str, timeout: Duration) -> Result<Option<String>, String> {
    let run = c.simple_query(sql);
    let messages = tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| format!("{sql:?}: no answer within {timeout:?}"))?
        .map_err(|err| format!("{sql:?}: {err}"))?;
    Ok(messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    }))
}

const TIMELINE_SQL: &str =
    "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int";

/// Undo any fencing (it may have been a fenced primary that rejoined), then promote
/// and report the new timeline and where it forked.
pub async fn promote(e: &Effects, node: NodeId) -> Result<Promotion, String> {
    let c = open(e, node).await?;
    if one(&c, "SELECT pg_is_in_recovery()", e.timeout)
        .await?
        .as_deref()
        == Some("f")
    {
        // Promoted already (by an earlier attempt whose answer was lost).
        let timeline = one(&c, TIMELINE_SQL, e.timeout).await?;
        return Ok(Promotion {
            timeline: timeline.and_then(|t| t.parse().ok()),
            fork: None,
        });
    }
    one(
        &c,
        "ALTER SYSTEM RESET default_transaction_read_only",
        e.timeout,
    )
    .await?;
    one(&c, "SELECT pg_reload_conf()", e.timeout).await?;
    let fork = one(
        &c,
        "SELECT GREATEST(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())",
        e.timeout,
    )
    .await?
    .and_then(|t| t.parse::<Lsn>().ok());
    let secs = e.promote_timeout.as_secs().max(1);
    let sql = format!("SELECT pg_promote(true, {secs})");
    match one(&c, &sql, e.promote_timeout + e.timeout)
        .await?
        .as_deref()
    {
        Some("t") => {}
        other => return Err(format!("pg_promote answered {other:?} after {secs} s")),
    }
    let timeline = one(&c, TIMELINE_SQL, e.timeout)
        .await?
        .and_then(|t| t.parse().ok());
    Ok(Promotion { timeline, fork })
}

/// Point a replica at `primary`, keeping everything else in its `primary_conninfo`.
pub async fn repoint(e: &Effects, node: NodeId, primary: NodeId) -> Result<(), String> {
    let target = e.specs.get(primary.0).ok_or("unknown primary")?;
    let c = open(e, node).await?;
    let current = one(&c, "SHOW primary_conninfo", e.timeout)
        .await?
        .unwrap_or_default();
    let next = conninfo::repoint(&current, &target.host, target.port)?;
    let sql = format!(
        "ALTER SYSTEM SET primary_conninfo = '{}'",
        next.replace('\'', "''")
    );
    one(&c, &sql, e.timeout).await?;
    one(&c, "SELECT pg_reload_conf()", e.timeout).await?;
    Ok(())
}

/// Read-only from now on (also after a restart), and no client session left on it.
/// pgrelay's own heartbeat connections stay, so the node is still watched.
pub async fn fence(e: &Effects, node: NodeId) -> Result<(), String> {
    let c = open(e, node).await?;
    fence_on(&c, e.timeout).await
}

async fn fence_on(c: &Client, timeout: Duration) -> Result<(), String> {
    one(
        c,
        "ALTER SYSTEM SET default_transaction_read_only = on",
        timeout,
    )
    .await?;
    one(c, "SELECT pg_reload_conf()", timeout).await?;
    let end = format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() \
         AND application_name <> '{}'",
        crate::probe::APPLICATION_NAME
    );
    one(c, &end, timeout).await?;
    Ok(())
}

/// A switchover that could not finish: writable again.
pub async fn unfence(e: &Effects, node: NodeId) -> Result<(), String> {
    let c = open(e, node).await?;
    one(
        &c,
        "ALTER SYSTEM RESET default_transaction_read_only",
        e.timeout,
    )
    .await?;
    one(&c, "SELECT pg_reload_conf()", e.timeout).await?;
    Ok(())
}

/// Switchover: wait (up to `timeout`) until no session of pgrelay's holds the node,
/// fence it, and report where its WAL ends.
pub async fn drain(e: &Effects, node: NodeId, timeout: Duration) -> Result<Lsn, String> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    while (e.in_flight)(node) > 0 && tokio::time::Instant::now() < deadline {
        // An in-memory counter, no condition to wait on: a short, growing pause.
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(20));
    }
    let left = (e.in_flight)(node);
    if left > 0 {
        tracing::warn!(node = %e.specs[node.0].name, left, "switchover: ending transactions still open on the old primary");
    }
    let c = open(e, node).await?;
    fence_on(&c, e.timeout).await?;
    let lsn = one(&c, "SELECT pg_current_wal_lsn()", e.timeout).await?;
    lsn.and_then(|t| t.parse().ok())
        .ok_or_else(|| "no WAL position".to_string())
}

/// How long a fence command may run.
const FENCE_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `failover.fence_command` as `sh -c CMD pgrelay-fence NAME HOST PORT EPOCH`
/// (also in `PGRELAY_FENCE_*` variables). `Ok(false)` when none is configured.
pub async fn fence_command(e: &Effects, node: NodeId, epoch: Epoch) -> Result<bool, String> {
    let Some(cmd) = e.fence_command.as_deref().filter(|c| !c.trim().is_empty()) else {
        return Ok(false);
    };
    let spec = e.specs.get(node.0).ok_or("unknown node")?;
    let port = spec.port.to_string();
    let epoch = epoch.0.to_string();
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .arg("pgrelay-fence")
        .args([&spec.name, &spec.host, &port, &epoch])
        .env("PGRELAY_FENCE_NODE", &spec.name)
        .env("PGRELAY_FENCE_HOST", &spec.host)
        .env("PGRELAY_FENCE_PORT", &port)
        .env("PGRELAY_FENCE_EPOCH", &epoch)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(FENCE_COMMAND_TIMEOUT, child)
        .await
        .map_err(|_| format!("no exit within {FENCE_COMMAND_TIMEOUT:?}"))?
        .map_err(|err| format!("cannot run sh: {err}"))?;
    if out.status.success() {
        return Ok(true);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: String = stderr
        .trim()
        .chars()
        .rev()
        .take(300)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    Err(format!("{}: {tail}", out.status))
}
