//! The read endpoints. They read the topology snapshot through arc-swap and ask the
//! proxy for counters, so a slow HTTP client never holds anything the data path needs.

use crate::error::ApiError;
use crate::proxy::{PoolUse, SessionView};
use crate::AdminState;
use axum::{extract::State, http::StatusCode, response::IntoResponse, Json};
use router::{NodeStatus, Topology};
use serde::Serialize;

#[derive(Serialize)]
struct HealthBody {
    status: &'static str,
    /// Whether a primary is known: a proxy without one still serves reads, so this is
    /// reported rather than turned into a failing status code (that is `/ready`).
    primary: Option<String>,
}

/// Liveness: 200 while the process serves.
pub(crate) async fn health(State(state): State<AdminState>) -> impl IntoResponse {
    let topo = state.topology.load();
    let body = HealthBody {
        status: "ok",
        primary: topo.primary().map(|n| n.name.clone()),
    };
    (StatusCode::OK, Json(body))
}

#[derive(Serialize)]
struct ReadyBody {
    ready: bool,
    primary: Option<String>,
    epoch: u64,
    /// Why not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// Readiness: 200 when a primary is known and routable (writes can go somewhere),
/// else 503 with the reason, so a load balancer sends clients to another pgrelay.
pub(crate) async fn ready(State(state): State<AdminState>) -> impl IntoResponse {
    let topo = state.topology.load();
    let primary = topo.primary().map(|n| n.name.clone());
    let reason = match (&primary, &topo.writes_held) {
        (Some(_), _) => None,
        (None, Some(held)) => Some(format!("writes are held: {held}")),
        (None, None) => Some("no routable primary".to_string()),
    };
    let status = if reason.is_none() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = ReadyBody {
        ready: reason.is_none(),
        primary,
        epoch: topo.epoch.0,
        reason,
    };
    (status, Json(body))
}

#[derive(Serialize)]
struct NodeBody<'a> {
    #[serde(flatten)]
    node: &'a NodeStatus,
    /// Whether new work can go there now: writes for the primary, reads for a replica.
    routable: bool,
    pool: Option<PoolUse>,
}

#[derive(Serialize)]
struct TopologyBody<'a> {
    version: u64,
    epoch: u64,
    primary: Option<&'a str>,
    writes_held: Option<&'a str>,
    when_no_replica: router::NoReplica,
    nodes: Vec<NodeBody<'a>>,
    failover: Option<crate::actions::FailoverView>,
}

/// Whether new work may go to `n` now.
pub(crate) fn routable(topo: &Topology, n: &NodeStatus) -> bool {
    match topo.primary() {
        Some(p) if p.id == n.id => true,
        _ => n.readable_replica(),
    }
}

pub(crate) async fn topology(State(state): State<AdminState>) -> impl IntoResponse {
    let topo = state.topology.load_full();
    let nodes = topo
        .nodes
        .iter()
        .map(|n| NodeBody {
            node: n,
            routable: routable(&topo, n),
            pool: state.proxy.as_ref().map(|p| p.pool(n.id)),
        })
        .collect();
    let body = TopologyBody {
        version: topo.version,
        epoch: topo.epoch.0,
        primary: topo.primary().map(|n| n.name.as_str()),
        writes_held: topo.writes_held.as_deref(),
        when_no_replica: topo.when_no_replica,
        nodes,
        failover: crate::actions::view(&state),
    };
    Json(body).into_response()
}

/// The proxy's side of the API, or 503 when this process has none.
pub(crate) fn proxy(state: &AdminState) -> Result<&dyn crate::ProxyView, ApiError> {
    state
        .proxy
        .as_deref()
        .ok_or_else(|| ApiError::unavailable("the proxy"))
}

/// Prometheus text exposition (format 0.0.4).
pub(crate) async fn metrics(
    State(state): State<AdminState>,
) -> Result<impl IntoResponse, ApiError> {
    let body = proxy(&state)?.metrics();
    Ok((
        StatusCode::OK,
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    ))
}

#[derive(Serialize)]
struct SessionsBody {
    count: usize,
    sessions: Vec<SessionView>,
}

pub(crate) async fn sessions(
    State(state): State<AdminState>,
) -> Result<impl IntoResponse, ApiError> {
    let mut sessions = proxy(&state)?.sessions();
    sessions.sort_by_key(|s| s.id);
    Ok(Json(SessionsBody {
        count: sessions.len(),
        sessions,
    }))
}
