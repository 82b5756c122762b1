//! Operator actions. Each is idempotent and answers with what it did
//! (`{"ok": true, "message": ...}`), or why it refused (see [`ApiError`]). A switchover
//! answers once the new primary is promoted and published.

use crate::error::ApiError;
use crate::AdminState;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::{http::StatusCode, Json};
use health::failover::Command;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::time::Instant;

/// How long a drain waits for the node's leases to end unless told otherwise.
const DRAIN_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SwitchoverBody {
    to: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct FailoverBody {
    to: Option<String>,
    force: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct DrainBody {
    /// Seconds to wait for current leases on the node to end (default 30).
    timeout_seconds: Option<f64>,
}

#[derive(Serialize)]
pub(crate) struct Done {
    ok: bool,
    message: String,
    #[serde(flatten)]
    extra: serde_json::Value,
}

type Answer = Result<Json<Done>, ApiError>;

fn done(message: String) -> Answer {
    Ok(Json(Done {
        ok: true,
        message,
        extra: serde_json::json!({}),
    }))
}

async fn run(state: &AdminState, command: Command) -> Result<String, ApiError> {
    let handle = state
        .failover
        .as_ref()
        .ok_or_else(|| ApiError::unavailable("failover"))?;
    tracing::warn!(?command, "admin: asking the failover controller");
    Ok(handle.request(command).await?)
}

/// A body that is optional: none (no JSON content type) means the defaults.
fn optional<T: Default>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    match body {
        Ok(Json(b)) => Ok(b),
        Err(JsonRejection::MissingJsonContentType(_)) => Ok(T::default()),
        Err(e) => Err(e.into()),
    }
}

pub(crate) async fn switchover(
    State(state): State<AdminState>,
    body: Result<Json<SwitchoverBody>, JsonRejection>,
) -> Answer {
    let Json(body) = body?;
    done(run(&state, Command::Switchover { to: body.to }).await?)
}

pub(crate) async fn failover(
    State(state): State<AdminState>,
    body: Result<Json<FailoverBody>, JsonRejection>,
) -> Answer {
    let body = optional(body)?;
    let command = Command::Failover {
        to: body.to,
        force: body.force,
    };
    done(run(&state, command).await?)
}

pub(crate) async fn pause(State(state): State<AdminState>) -> Answer {
    done(run(&state, Command::Pause).await?)
}

pub(crate) async fn resume(State(state): State<AdminState>) -> Answer {
    done(run(&state, Command::Resume).await?)
}

/// No new leases on the node, then wait (bounded) for the current ones to end.
pub(crate) async fn drain(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    body: Result<Json<DrainBody>, JsonRejection>,
) -> Answer {
    let body = optional(body)?;
    let wait = match body.timeout_seconds {
        Some(s) if s.is_finite() && (0.0..=3600.0).contains(&s) => Duration::from_secs_f64(s),
        Some(s) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("timeout_seconds must be between 0 and 3600, not {s}"),
            ))
        }
        None => DRAIN_WAIT,
    };
    let node = node_id(&state, &name)?;
    let message = run(&state, Command::Drain { node: name.clone() }).await?;
    let started = Instant::now();
    let mut in_use = leases(&state, node);
    while in_use > 0 && started.elapsed() < wait {
        tokio::time::sleep(Duration::from_millis(20)).await;
        in_use = leases(&state, node);
    }
    let waited = started.elapsed();
    let message = if in_use == 0 {
        format!("{message}; no leases left")
    } else {
        format!(
            "{message}; {in_use} leases still held after {:.1} s (pinned sessions and open transactions keep theirs)",
            waited.as_secs_f64()
        )
    };
    Ok(Json(Done {
        ok: true,
        message,
        extra: serde_json::json!({ "node": name, "leases_in_use": in_use, "waited_seconds": waited.as_secs_f64() }),
    }))
}

pub(crate) async fn enable(State(state): State<AdminState>, Path(name): Path<String>) -> Answer {
    node_id(&state, &name)?;
    done(run(&state, Command::Enable { node: name }).await?)
}

/// Re-read the configuration; a bad file is refused (422) and the old config stays.
pub(crate) async fn reload(State(state): State<AdminState>) -> Answer {
    match crate::views::proxy(&state)?.reload() {
        Ok(report) => {
            let message = if report.applied.is_empty() && report.needs_restart.is_empty() {
                "configuration reloaded; nothing changed".to_string()
            } else {
                format!(
                    "configuration reloaded; applied: [{}]; needs a restart: [{}]",
                    report.applied.join(", "),
                    report.needs_restart.join(", ")
                )
            };
            Ok(Json(Done {
                ok: true,
                message,
                extra: serde_json::to_value(&report).unwrap_or_default(),
            }))
        }
        Err(e) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_config",
            format!("configuration refused, the old one stays: {e}"),
        )),
    }
}

fn node_id(state: &AdminState, name: &str) -> Result<router::NodeId, ApiError> {
    let topo = state.topology.load();
    topo.nodes
        .iter()
        .find(|n| n.name == name)
        .map(|n| n.id)
        .ok_or_else(|| ApiError::unknown_node(name))
}

fn leases(state: &AdminState, node: router::NodeId) -> usize {
    state.proxy.as_ref().map_or(0, |p| p.pool(node).in_use)
}

/// What `/topology` shows of failover.
#[derive(Serialize)]
pub(crate) struct FailoverView {
    mode: health::failover::Mode,
    paused: bool,
    epoch: u64,
    phase: &'static str,
    writes_held: Option<String>,
    drained: Vec<String>,
    failovers: u64,
    last_failover: Option<LastView>,
    fence_actions_ok: u64,
    fence_actions_failed: u64,
}

#[derive(Serialize)]
struct LastView {
    /// RFC 3339, when this process saw it complete.
    at: Option<String>,
    from: Option<String>,
    to: String,
    epoch: u64,
    took_seconds: f64,
    planned: bool,
}

pub(crate) fn view(state: &AdminState) -> Option<FailoverView> {
    let s = state.failover.as_ref()?.status();
    let at = s
        .last_at
        .map(|t| humantime::format_rfc3339_millis(t).to_string());
    Some(FailoverView {
        mode: s.mode,
        paused: s.paused,
        epoch: s.epoch.0,
        phase: s.phase,
        writes_held: s.writes_held,
        drained: s.drained,
        failovers: s.failovers,
        last_failover: s.last.map(|l| LastView {
            at,
            from: l.from,
            to: l.to,
            epoch: l.epoch.0,
            took_seconds: l.took.as_secs_f64(),
            planned: l.planned,
        }),
        fence_actions_ok: s.fence_ok,
        fence_actions_failed: s.fence_failed,
    })
}
