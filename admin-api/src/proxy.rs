//! What the admin API asks of the running proxy. The proxy implements [`ProxyView`];
//! the API never reaches into the proxy's internals, and tests drive it with fakes.

use router::NodeId;
use serde::Serialize;

/// The proxy's side of the API. Every method is quick and takes no lock the data path
/// holds for long, so a busy scraper cannot slow sessions down.
pub trait ProxyView: Send + Sync + 'static {
    /// Prometheus text exposition of every metric.
    fn metrics(&self) -> String;
    /// Client sessions logged in now.
    fn sessions(&self) -> Vec<SessionView>;
    /// Backend connection use on one node, summed over its pools.
    fn pool(&self, node: NodeId) -> PoolUse;
    /// Re-read the configuration file and apply what can change without a restart.
    /// `Err` carries the reason the new file was refused (the old config stays).
    fn reload(&self) -> Result<ReloadReport, String>;
}

/// Backend connections to one node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PoolUse {
    /// `pool.size`: the limit of each (user, database) pool.
    pub size: usize,
    /// Pools open on the node (one per user, database and startup parameters).
    pub pools: usize,
    /// Leased to sessions now.
    pub in_use: usize,
    /// Connected and idle.
    pub idle: usize,
    /// Sessions waiting for a connection now.
    pub waiting: usize,
}

/// One client session as operators see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionView {
    pub id: u64,
    pub user: String,
    pub database: String,
    pub application_name: Option<String>,
    pub client_addr: Option<String>,
    /// Seconds since the session logged in.
    pub connected_seconds: f64,
    /// `idle`, `active`, `idle in transaction` or `failed transaction`.
    pub state: &'static str,
    /// The session's consistency level (`session`, `eventual`, ...).
    pub consistency: String,
    /// The node whose backend the session holds now, if any.
    pub node: Option<String>,
    /// Why the session is pinned to one backend, if it is.
    pub pinned: Option<String>,
}

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReloadReport {
    /// Keys whose new values are in effect.
    pub applied: Vec<String>,
    /// Keys that changed but only take effect after a restart (the old values stay).
    pub needs_restart: Vec<String>,
}
