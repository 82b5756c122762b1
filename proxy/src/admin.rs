//! The proxy's side of the admin API ([`admin_api::ProxyView`]): metrics, sessions,
//! pool use and reload, read from the shared state without touching the data path.

use crate::reload::Reloader;
use crate::session::Shared;
use admin_api::{PoolUse, ProxyView, ReloadReport, SessionView};
use router::NodeId;
use std::sync::{Arc, Weak};

pub struct Bridge {
    /// Weak: the API outliving the proxy for a moment must not keep it alive.
    pub shared: Weak<Shared>,
    pub heartbeats: Arc<health::BeatCounts>,
    pub failover: health::failover::FailoverHandle,
    pub reloader: Arc<Reloader>,
}

impl ProxyView for Bridge {
    fn metrics(&self) -> String {
        let Some(shared) = self.shared.upgrade() else {
            return String::new();
        };
        let status = self.failover.status();
        crate::metrics::render(&shared, &self.heartbeats, &status)
    }

    fn sessions(&self) -> Vec<SessionView> {
        let Some(shared) = self.shared.upgrade() else {
            return Vec::new();
        };
        shared
            .registry
            .list()
            .into_iter()
            .map(|e| {
                let v = e.view();
                SessionView {
                    id: e.id,
                    user: e.user.clone(),
                    database: e.database.clone(),
                    application_name: e.application_name.clone(),
                    client_addr: e.client_addr.map(|a| a.to_string()),
                    connected_seconds: e.started.elapsed().as_secs_f64(),
                    state: v.activity.as_str(),
                    consistency: v.level.to_string(),
                    node: v
                        .node
                        .and_then(|n| shared.nodes.get(n.0))
                        .map(|n| n.name.clone()),
                    pinned: v.pinned.map(|p| p.as_str().to_string()),
                }
            })
            .collect()
    }

    fn pool(&self, node: NodeId) -> PoolUse {
        let Some(shared) = self.shared.upgrade() else {
            return PoolUse::default();
        };
        let u = shared.pools.usage(node);
        PoolUse {
            size: shared.pools.size(),
            pools: u.pools,
            in_use: u.in_use,
            idle: u.idle,
            waiting: u.waiting,
        }
    }

    fn reload(&self) -> Result<ReloadReport, String> {
        self.reloader.reload()
    }
}
