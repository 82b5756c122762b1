//! Wires the parts together: discover roles, start the monitor and the admin API, accept
//! clients. Listeners and the shutdown signal come in as arguments so tests can bind port
//! 0 and run many proxies in one process.

use crate::cancel::CancelRegistry;
use crate::config::Config;
use crate::pool::{PoolSettings, Pools};
use crate::session::{serve_client, NodeInfo, Shared};
use health::{ControlCreds, HealthMonitor, NodeSpec};
use router::NodeId;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// PostgreSQL's own limit on one message is 1 GB; backends are trusted to respect it.
const BACKEND_MAX_MESSAGE: usize = (1 << 30) + 64;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("could not listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("admin API failed: {0}")]
    Admin(std::io::Error),
    #[error("failover state: {0}")]
    State(#[from] health::CoordinatorError),
}

/// The sockets pgrelay serves on. Binding is separate from running so that a bad config
/// is refused before any port is taken, and tests can pass port-0 listeners.
pub struct Listeners {
    pub clients: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    pub async fn bind(config: &Config) -> Result<Listeners, AppError> {
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| AppError::Bind { addr, source })
        };
        Ok(Listeners {
            clients: bind(config.listen).await?,
            admin: bind(config.admin.listen).await?,
        })
    }
}

/// A running proxy, for `main`, the demo and tests.
pub struct Handle {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub shared: Arc<Shared>,
    /// Heartbeats sent per node: what watching the cluster costs.
    pub heartbeats: Arc<health::BeatCounts>,
    /// Switchover, manual failover, pause and resume.
    pub failover: health::failover::FailoverHandle,
    reloader: Arc<crate::reload::Reloader>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), AppError>>,
}

impl Handle {
    /// Re-read the config file and apply what can change live (SIGHUP, `POST /reload`).
    pub fn reload(&self) -> Result<admin_api::ReloadReport, String> {
        self.reloader.reload()
    }

    /// Stop accepting, stop the background tasks, and wait for them.
    pub async fn shutdown(self) -> Result<(), AppError> {
        let _ = self.shutdown.send(true);
        self.task.await.unwrap_or(Ok(()))
    }
}

/// Discover the nodes, then serve in the background.
pub async fn start(config: Config, listeners: Listeners) -> Result<Handle, AppError> {
    let specs: Vec<NodeSpec> = config
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| NodeSpec {
            id: NodeId(i),
            name: n.name.clone(),
            host: n.host.clone(),
            port: n.port,
        })
        .collect();
    let creds = ControlCreds {
        user: config.control.user.clone(),
        password: config.control.password.expose().to_string(),
        database: config.control.database.clone(),
    };
    let settings = health::Settings {
        interval: config.health.interval,
        timeout: config.health.timeout,
        bounds: config.routing.lag_bounds(),
        when_no_replica: config.routing.when_no_replica.into(),
    };
    // The epoch and its holder survive restarts: read them before anything is routed,
    // so a node that lost its claim is fenced from the first snapshot on.
    let coordinator: Arc<dyn health::Coordinator> = match &config.failover.state_file {
        Some(path) => Arc::new(health::LocalCoordinator::open(path)?),
        None => Arc::new(health::LocalCoordinator::default()),
    };
    let authority = coordinator.load()?;
    let controller = health::failover::Controller::new(
        config.failover.settings(config.health.interval),
        specs.iter().map(|s| s.name.clone()).collect(),
        authority,
    );
    let mut initial = health::discover_with(&specs, &creds, settings).await;
    controller.overlay(&mut initial);
    if initial.primary().is_none() {
        tracing::warn!("no primary found yet; writes wait for one");
    }
    let topology = health::shared(initial);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    let shared = Arc::new(Shared {
        nodes: specs
            .iter()
            .map(|s| NodeInfo {
                name: s.name.clone(),
                addr: s.addr(),
            })
            .collect(),
        live: arc_swap::ArcSwap::from_pointee(crate::reload::live(&config)),
        topology: topology.clone(),
        pools: Pools::new(
            PoolSettings {
                size: config.pool.size,
                acquire_timeout: config.pool.acquire_timeout,
                idle_timeout: config.pool.idle_timeout,
            },
            config.pool.connect_timeout,
            BACKEND_MAX_MESSAGE,
            specs.len(),
        ),
        cancels: Arc::new(CancelRegistry::default()),
        max_message: config.limits.max_message_size.0,
        backend_max_message: BACKEND_MAX_MESSAGE,
        startup_timeout: config.limits.startup_timeout,
        cancel_timeout: Duration::from_secs(5),
        pinned_sessions: Default::default(),
        pins_total: Default::default(),
        prepared_limit: config.pool.prepared_statements_limit,
        read_only_retries: Default::default(),
        ryw: Default::default(),
        observed_replay: specs.iter().map(|_| AtomicU64::new(0)).collect(),
        sessions: Default::default(),
        registry: Default::default(),
        stats: crate::stats::Stats::new(specs.len()),
    });

    // A node that went down takes its idle pooled connections with it; the monitor holds
    // the proxy state weakly so shutting down is never delayed by it.
    let weak = Arc::downgrade(&shared);
    let on_down: health::OnDown = Arc::new(move |node| {
        if let Some(shared) = weak.upgrade() {
            shared.pools.clear_node(node);
            if let Some(seen) = shared.observed_replay.get(node.0) {
                seen.store(0, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    tokio::spawn(sweep_idle(Arc::downgrade(&shared), shutdown_rx.clone()));
    let weak = Arc::downgrade(&shared);
    let in_flight: health::failover::InFlight =
        Arc::new(move |node| weak.upgrade().map_or(0, |s| s.pools.load(node)));
    let (failover, inbox) = health::failover::FailoverHandle::new();
    let setup = health::failover::FailoverSetup {
        controller,
        coordinator,
        effects: health::failover::Effects {
            specs: specs.clone(),
            creds: creds.clone(),
            timeout: config.health.timeout.max(Duration::from_secs(2)),
            promote_timeout: config.failover.promote_timeout,
            fence_command: config.failover.fence_command.clone(),
            in_flight,
        },
        inbox,
    };
    let (monitor, heartbeats) = HealthMonitor::spawn(
        specs,
        creds,
        settings,
        topology.clone(),
        on_down,
        Some(setup),
        shutdown_rx.clone(),
    );

    let addr = listeners
        .clients
        .local_addr()
        .map_err(|source| AppError::Bind {
            addr: config.listen,
            source,
        })?;
    let admin_addr = listeners.admin.local_addr().map_err(AppError::Admin)?;
    let reloader = Arc::new(crate::reload::Reloader::new(
        config.source.clone(),
        config.clone(),
        Arc::downgrade(&shared),
    ));
    let bridge = crate::admin::Bridge {
        shared: Arc::downgrade(&shared),
        heartbeats: heartbeats.clone(),
        failover: failover.clone(),
        reloader: reloader.clone(),
    };
    let token = config.admin.token.as_ref().map(|t| t.expose());
    let admin_state = admin_api::AdminState {
        topology,
        proxy: Some(Arc::new(bridge)),
        failover: Some(failover.clone()),
        access: admin_api::Access::new(token, config.admin.open_reads),
    };
    let mut admin_shutdown = shutdown_rx.clone();
    let admin = tokio::spawn(admin_api::serve(listeners.admin, admin_state, async move {
        let _ = admin_shutdown.wait_for(|stop| *stop).await;
    }));
    let task = tokio::spawn(accept_loop(
        listeners.clients,
        shared.clone(),
        config.limits.max_clients,
        shutdown_rx,
        monitor,
        admin,
    ));
    tracing::info!(%addr, %admin_addr, "pgrelay is serving");
    Ok(Handle {
        addr,
        admin_addr,
        shared,
        heartbeats,
        failover,
        reloader,
        shutdown: shutdown_tx,
        task,
    })
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    max_clients: usize,
    mut shutdown: watch::Receiver<bool>,
    monitor: tokio::task::JoinHandle<()>,
    admin: tokio::task::JoinHandle<std::io::Result<()>>,
) -> Result<(), AppError> {
    let clients = Arc::new(Semaphore::new(max_clients));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (mut stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of file descriptors and the like: back off briefly rather
                        // than spin; the listener itself stays usable.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                match clients.clone().try_acquire_owned() {
                    Ok(permit) => {
                        tokio::spawn(async move {
                            tracing::debug!(%peer, "client connected");
                            serve_client(stream, Some(peer), shared).await;
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        tokio::spawn(async move {
                            let e = crate::errors::ClientError::TooManyClients(max_clients);
                            let _ = stream.write_all(&e.to_message(true)).await;
                        });
                    }
                }
            }
            _ = async { let _ = shutdown.wait_for(|stop| *stop).await; } => break,
        }
    }
    let _ = monitor.await;
    match admin.await {
        Ok(Err(e)) => Err(AppError::Admin(e)),
        _ => Ok(()),
    }
}

/// Idle server connections past `pool.idle_timeout` are closed even when no session asks
/// for one (a lease skips them too), so a quiet proxy gives PostgreSQL its memory and
/// connection slots back.
async fn sweep_idle(shared: std::sync::Weak<Shared>, mut shutdown: watch::Receiver<bool>) {
    let Some(every) = shared.upgrade().map(|s| s.pools.sweep_interval()) else {
        return;
    };
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let closed = shared.pools.close_expired();
        if closed > 0 {
            tracing::debug!(closed, "idle server connections closed");
        }
    }
}
