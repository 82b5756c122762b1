//! pgrelay's admin HTTP API: liveness and readiness for Kubernetes, the live topology,
//! Prometheus metrics, sessions, and operator actions (switchover, failover, drain,
//! reload). Every endpoint is documented in `docs/admin-api.md`.
//!
//! Built as [`router`] without a listener so tests drive it with `oneshot`; [`serve`]
//! adds the peer address that the access rules (see [`Access`]) look at.

mod access;
mod actions;
mod error;
mod proxy;
mod views;

pub use access::Access;
pub use error::ApiError;
pub use proxy::{PoolUse, ProxyView, ReloadReport, SessionView};

use axum::routing::{get, post};
use axum::{middleware, Router};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// What the handlers can see. Cheap to clone: axum clones it per request.
#[derive(Clone)]
pub struct AdminState {
    pub topology: health::SharedTopology,
    /// Metrics, sessions, pools and reload (none: those endpoints answer 503).
    pub proxy: Option<Arc<dyn ProxyView>>,
    /// Switchover, failover, pause, resume, drain and enable (none: they answer 503).
    pub failover: Option<health::failover::FailoverHandle>,
    pub access: Access,
}

/// The routes, without a listener, so tests can drive them with `oneshot`.
pub fn router(state: AdminState) -> Router {
    let open = Router::new()
        .route("/health", get(views::health))
        .route("/ready", get(views::ready));
    let reads = Router::new()
        .route("/topology", get(views::topology))
        .route("/metrics", get(views::metrics))
        .route("/sessions", get(views::sessions))
        .route_layer(middleware::from_fn_with_state(state.clone(), access::reads));
    let actions = Router::new()
        .route("/switchover", post(actions::switchover))
        .route("/failover", post(actions::failover))
        .route("/failover/pause", post(actions::pause))
        .route("/failover/resume", post(actions::resume))
        .route("/nodes/{name}/drain", post(actions::drain))
        .route("/nodes/{name}/enable", post(actions::enable))
        .route("/reload", post(actions::reload))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            access::actions,
        ));
    open.merge(reads)
        .merge(actions)
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .with_state(state)
}

/// Serves until `shutdown` resolves, then finishes in-flight requests and returns.
pub async fn serve<F>(listener: TcpListener, state: AdminState, shutdown: F) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests;
