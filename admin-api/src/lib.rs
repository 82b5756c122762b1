//! pgrelay's admin HTTP API. This issue exposes liveness and the live topology; the
//! operator actions (switchover, drain, pause) arrive with their own issue and plug into
//! the same [`AdminState`].
//!
//! The API only reads the topology snapshot through arc-swap, so a slow or stuck HTTP
//! client never holds anything the data path needs.

mod actions;

use std::future::Future;

use axum::routing::{get, post};
use axum::{extract::State, http::StatusCode, response::IntoResponse, Json, Router};
use serde::Serialize;
use tokio::net::TcpListener;

/// Renders the proxy's metrics in Prometheus text format. The proxy owns its counters;
/// the API only asks for the text, so it never depends on the proxy's internals.
pub type MetricsFn = std::sync::Arc<dyn Fn() -> String + Send + Sync>;

/// What the handlers can see. Cheap to clone: axum clones it per request.
#[derive(Clone)]
pub struct AdminState {
    pub topology: health::SharedTopology,
    pub metrics: Option<MetricsFn>,
    /// Switchover, failover, pause and resume (none: the actions answer 503).
    pub failover: Option<health::failover::FailoverHandle>,
}

/// The routes, without a listener, so tests can drive them with `oneshot`.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/health", get(health_check))
        .route("/topology", get(topology))
        .route("/metrics", get(metrics))
        .route("/switchover", post(actions::switchover))
        .route("/failover", post(actions::failover))
        .route("/failover/pause", post(actions::pause))
        .route("/failover/resume", post(actions::resume))
        .with_state(state)
}

/// Serves until `shutdown` resolves, then finishes in-flight requests and returns.
pub async fn serve<F>(listener: TcpListener, state: AdminState, shutdown: F) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

#[derive(Serialize)]
struct HealthBody {
    status: &'static str,
    /// Whether a primary is known: a proxy without one still serves reads, so this is
    /// reported rather than turned into a failing status code.
    primary: Option<String>,
}

/// Liveness: 200 while the process serves. Readiness-style detail is in the body.
async fn health_check(State(state): State<AdminState>) -> impl IntoResponse {
    let topo = state.topology.load();
    let body = HealthBody {
        status: "ok",
        primary: topo.primary().map(|n| n.name.clone()),
    };
    (StatusCode::OK, Json(body))
}

#[derive(Serialize)]
struct TopologyBody {
    #[serde(flatten)]
    topology: router::Topology,
    failover: Option<actions::FailoverView>,
}

async fn topology(State(state): State<AdminState>) -> impl IntoResponse {
    let topo = state.topology.load_full();
    Json(TopologyBody {
        topology: topo.as_ref().clone(),
        failover: actions::view(&state),
    })
}

/// Prometheus text exposition (format 0.0.4).
async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let body = state
        .metrics
        .as_ref()
        .map(|render| render())
        .unwrap_or_default();
    (
        StatusCode::OK,
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use router::{Epoch, Lag, Lsn, NodeId, NodeState, NodeStatus, Role, Topology, WalBytes};
    use tower::ServiceExt;

    fn topo(primary_up: bool) -> Topology {
        Topology {
            version: 3,
            epoch: Epoch(1),
            nodes: vec![
                NodeStatus {
                    role: Role::Primary,
                    up: primary_up,
                    state: if primary_up {
                        NodeState::Up
                    } else {
                        NodeState::Down
                    },
                    timeline: Some(1),
                    ..NodeStatus::unknown(NodeId(0), "pg0", "127.0.0.1:5432")
                },
                NodeStatus {
                    role: Role::Replica,
                    up: true,
                    state: NodeState::Lagging,
                    timeline: Some(1),
                    wal: router::WalPositions {
                        current: None,
                        receive: Some(Lsn(0x300_0000)),
                        replay: Some(Lsn(0x200_0000)),
                    },
                    wal_receiver: Some("streaming".into()),
                    lag: Some(Lag {
                        bytes: WalBytes(0x100_0000),
                        time: std::time::Duration::from_millis(1500),
                    }),
                    ..NodeStatus::unknown(NodeId(1), "pg1", "127.0.0.1:5433")
                },
            ],
            ..Topology::default()
        }
    }

    async fn get_json(state: AdminState, path: &str) -> (StatusCode, serde_json::Value) {
        let resp = router(state)
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    #[tokio::test]
    async fn health_reports_primary_or_none() {
        for (up, expected) in [
            (true, serde_json::json!("pg0")),
            (false, serde_json::Value::Null),
        ] {
            let state = AdminState {
                topology: health::shared(topo(up)),
                metrics: None,
                failover: None,
            };
            let (status, body) = get_json(state, "/health").await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(body["status"], "ok");
            assert_eq!(body["primary"], expected);
        }
    }

    #[tokio::test]
    async fn topology_follows_the_live_snapshot() {
        let state = AdminState {
            topology: health::shared(topo(true)),
            metrics: None,
            failover: None,
        };
        let (_, body) = get_json(state.clone(), "/topology").await;
        assert_eq!(body["version"], 3);
        assert_eq!(body["nodes"][1]["role"], "replica");
        let mut next = topo(true);
        next.version = 4;
        next.nodes[1].up = false;
        state.topology.store(std::sync::Arc::new(next));
        let (_, body) = get_json(state, "/topology").await;
        assert_eq!(body["version"], 4);
        assert_eq!(body["nodes"][1]["up"], false);
    }

    #[tokio::test]
    async fn topology_shows_state_wal_and_lag_of_every_node() {
        let state = AdminState {
            topology: health::shared(topo(true)),
            metrics: None,
            failover: None,
        };
        let (_, body) = get_json(state, "/topology").await;
        let replica = &body["nodes"][1];
        assert_eq!(replica["state"], "lagging");
        assert_eq!(replica["timeline"], 1);
        assert_eq!(replica["wal"]["replay"], "0/2000000");
        assert_eq!(replica["wal"]["current"], serde_json::Value::Null);
        assert_eq!(replica["wal_receiver"], "streaming");
        assert_eq!(replica["lag"]["bytes"], 0x100_0000);
        assert_eq!(replica["lag"]["seconds"], 1.5);
        assert_eq!(body["nodes"][0]["state"], "up");
        assert_eq!(body["nodes"][0]["lag"], serde_json::Value::Null);
        assert_eq!(body["when_no_replica"], "primary");
    }

    #[tokio::test]
    async fn metrics_are_the_proxys_text() {
        let state = AdminState {
            topology: health::shared(topo(true)),
            metrics: Some(std::sync::Arc::new(|| "pgrelay_up 1\n".to_string())),
            failover: None,
        };
        let resp = router(state)
            .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let ct = resp.headers()[axum::http::header::CONTENT_TYPE].clone();
        assert!(ct
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4"));
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"pgrelay_up 1\n");
    }

    #[tokio::test]
    async fn unknown_path_is_404() {
        let state = AdminState {
            topology: health::shared(topo(true)),
            metrics: None,
            failover: None,
        };
        let resp = router(state)
            .oneshot(Request::get("/nope").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    }
}
