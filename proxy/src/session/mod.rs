//! One client session: login (`startup`), then the data path (`engine`), with the
//! statement cache, the expectation queue and unit routing as pure helpers.

pub mod consistency;
pub mod engine;
pub mod expect;
pub mod registry;
pub mod route;
pub mod settings;
pub mod startup;
pub mod statements;
pub mod tx_effect;

use crate::cancel::CancelRegistry;
use crate::config::AuthMethod;
use crate::pool::Pools;
use health::SharedTopology;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

pub struct NodeInfo {
    pub name: String,
    pub addr: String,
}

/// A configured user, with the SCRAM secrets derived once at start-up.
pub struct UserAuth {
    pub password: String,
    pub method: AuthMethod,
    pub scram: protocol::auth::ScramVerifier,
    pub consistency: Option<router::Consistency>,
}

/// What `POST /reload` (or SIGHUP) can change under running sessions: swapped whole,
/// so a session never sees half of one config and half of another.
pub struct Live {
    pub users: HashMap<String, UserAuth>,
    pub replica_reads: bool,
    /// The level of sessions whose user and client choose none.
    pub consistency: router::Consistency,
    pub ryw_timeout: Duration,
    /// How long a unit that needs the primary waits for one (`failover.write_wait`).
    pub write_wait: Duration,
}

/// State shared by every session of the process.
pub struct Shared {
    pub nodes: Vec<NodeInfo>,
    pub live: arc_swap::ArcSwap<Live>,
    pub topology: SharedTopology,
    pub pools: Pools,
    pub cancels: Arc<CancelRegistry>,
    pub max_message: usize,
    pub backend_max_message: usize,
    pub startup_timeout: Duration,
    pub cancel_timeout: Duration,
    pub pinned_sessions: AtomicI64,
    /// Sessions ever pinned, for operators hunting what defeats pooling.
    pub pins_total: AtomicU64,
    /// Prepared statements kept per backend before the least recently used are closed.
    pub prepared_limit: usize,
    pub read_only_retries: AtomicU64,
    pub ryw: consistency::RywStats,
    /// Per node, the highest replay position any session saw there (raw LSN). Reset
    /// when the node goes down, since a restarted replica may show less.
    pub observed_replay: Vec<AtomicU64>,
    /// Client sessions logged in now.
    pub sessions: AtomicI64,
    /// Who they are, for `/sessions`.
    pub registry: Arc<registry::Registry>,
    /// Statements routed and unit latency, per node.
    pub stats: crate::stats::Stats,
}

/// Serve one client connection from its first byte to its last.
pub async fn serve_client<S: AsyncRead + AsyncWrite + Unpin>(
    mut client: S,
    peer: Option<std::net::SocketAddr>,
    ctx: Arc<Shared>,
) {
    let login =
        tokio::time::timeout(ctx.startup_timeout, startup::handshake(&mut client, &ctx)).await;
    let outcome = match login {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => {
            tracing::info!(error = %e, "login refused");
            let _ = client.write_all(&e.to_message(true)).await;
            return;
        }
        Err(_) => {
            let e = crate::errors::ClientError::StartupTimeout(ctx.startup_timeout);
            let _ = client.write_all(&e.to_message(true)).await;
            return;
        }
    };
    if let startup::Outcome::Session(id, reg, rest) = outcome {
        /// Counts the session while it lives, whichever way it ends.
        struct Live<'a>(&'a AtomicI64);
        impl Drop for Live<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        ctx.sessions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let shared = ctx.clone();
        let _live = Live(&shared.sessions);
        let user = id.user.clone();
        let listed = ctx.registry.add(registry::NewSession {
            user: id.user.clone(),
            database: id.database.clone(),
            application_name: id
                .params
                .iter()
                .find(|(k, _)| k == "application_name")
                .map(|(_, v)| v.clone()),
            client_addr: peer,
            level: router::Consistency::default(),
        });
        if let Err(e) = engine::Engine::new(client, ctx, id, reg, rest, listed)
            .run()
            .await
        {
            tracing::info!(%user, error = %e, "session ended with an error");
        }
    }
}
