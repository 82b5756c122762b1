//! Operator actions on failover. Each answers with what it did, or why it refused (409,
//! with the reason); a switchover answers once the new primary is promoted.

use crate::AdminState;
use axum::{extract::State, http::StatusCode, response::IntoResponse, Json};
use health::failover::{Command, Refusal};
use serde::{Deserialize, Serialize};

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

#[derive(Serialize)]
struct Answer {
    ok: bool,
    message: String,
}

async fn run(state: &AdminState, command: Command) -> (StatusCode, Json<Answer>) {
    let Some(handle) = &state.failover else {
        let answer = Answer {
            ok: false,
            message: "failover is not running in this process".into(),
        };
        return (StatusCode::SERVICE_UNAVAILABLE, Json(answer));
    };
    tracing::warn!(?command, "admin action");
    match handle.request(command).await {
        Ok(message) => (StatusCode::OK, Json(Answer { ok: true, message })),
        Err(refusal) => {
            let status = match refusal {
                Refusal::UnknownNode(_) => StatusCode::NOT_FOUND,
                _ => StatusCode::CONFLICT,
            };
            let message = refusal.to_string();
            (status, Json(Answer { ok: false, message }))
        }
    }
}

pub(crate) async fn switchover(
    State(state): State<AdminState>,
    Json(body): Json<SwitchoverBody>,
) -> impl IntoResponse {
    run(&state, Command::Switchover { to: body.to }).await
}

pub(crate) async fn failover(
    State(state): State<AdminState>,
    body: Option<Json<FailoverBody>>,
) -> impl IntoResponse {
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let command = Command::Failover {
        to: body.to,
        force: body.force,
    };
    run(&state, command).await
}

pub(crate) async fn pause(State(state): State<AdminState>) -> impl IntoResponse {
    run(&state, Command::Pause).await
}

pub(crate) async fn resume(State(state): State<AdminState>) -> impl IntoResponse {
    run(&state, Command::Resume).await
}

/// What `/topology` shows of failover.
#[derive(Serialize)]
pub(crate) struct FailoverView {
    mode: health::failover::Mode,
    paused: bool,
    epoch: u64,
    phase: &'static str,
    writes_held: Option<String>,
    failovers: u64,
    last_failover: Option<LastView>,
    fence_actions_ok: u64,
    fence_actions_failed: u64,
}

#[derive(Serialize)]
struct LastView {
    from: Option<String>,
    to: String,
    epoch: u64,
    took_seconds: f64,
    planned: bool,
}

pub(crate) fn view(state: &AdminState) -> Option<FailoverView> {
    let s = state.failover.as_ref()?.status();
    Some(FailoverView {
        mode: s.mode,
        paused: s.paused,
        epoch: s.epoch.0,
        phase: s.phase,
        writes_held: s.writes_held,
        failovers: s.failovers,
        last_failover: s.last.map(|l| LastView {
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
