//! Support for end-to-end tests: a real PostgreSQL cluster with pgrelay in front of it,
//! both private to one test, plus a raw protocol client for what drivers cannot send and a
//! TCP relay that can partition a node away ([`relay::Relay`]).

pub mod http;
pub mod pgbench;
pub mod raw;
pub mod relay;

use cluster::{Cluster, ClusterConfig};
use pgrelay::app::{Handle, Listeners};
use pgrelay::config::{AuthMethod, Config};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// One test's world: its cluster and its proxy. Dropping it stops both.
pub struct Env {
    pub proxy: Handle,
    // Declared last: dropped after the proxy.
    pub cluster: Cluster,
}

/// Start a cluster shaped by `cfg` and a pgrelay in front of it on port 0.
pub async fn start(cfg: ClusterConfig) -> Env {
    start_with(cfg, |_| {}).await
}

/// Like [`start`], letting the test adjust the proxy's configuration.
pub async fn start_with(cfg: ClusterConfig, tweak: impl FnOnce(&mut Config)) -> Env {
    init_logs();
    let cluster = tokio::task::spawn_blocking(move || Cluster::start(cfg))
        .await
        .expect("cluster task")
        .expect("cluster starts");
    let proxy = start_proxy(&cluster, tweak).await;
    Env { proxy, cluster }
}

/// Start one more pgrelay (on port 0) in front of `cluster`, configured like the one
/// [`start_with`] starts, then adjusted by `tweak`. Stop it before the cluster drops.
pub async fn start_proxy(cluster: &Cluster, tweak: impl FnOnce(&mut Config)) -> Handle {
    init_logs();
    let loopback = "127.0.0.1:0".parse().expect("address");
    let mut config = pgrelay::demo::demo_config(cluster, loopback, loopback);
    config.health.interval = Duration::from_millis(200);
    tweak(&mut config);
    let listeners = Listeners {
        clients: TcpListener::bind(loopback).await.expect("bind"),
        admin: TcpListener::bind(loopback).await.expect("bind"),
    };
    pgrelay::app::start(config, listeners)
        .await
        .expect("proxy starts")
}

/// Proxy logs go to the test's captured output (shown when it fails); `RUST_LOG` tunes
/// them, warnings by default.
fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

impl Env {
    pub fn port(&self) -> u16 {
        self.proxy.addr.port()
    }

    pub fn primary_port(&self) -> u16 {
        self.cluster.port(0)
    }

    pub fn replica_ports(&self) -> Vec<u16> {
        (1..self.cluster.nodes().len())
            .map(|i| self.cluster.port(i))
            .collect()
    }

    /// libpq-style connection string for the app user through pgrelay.
    pub fn conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user={} password={} dbname={}",
            self.port(),
            cluster::APP_USER,
            cluster::APP_PASSWORD,
            cluster::APP_DB
        )
    }

    pub async fn connect(&self) -> tokio_postgres::Client {
        connect(&self.conninfo()).await
    }

    /// A direct connection to node `i`, bypassing pgrelay.
    pub async fn connect_direct(&self, i: usize) -> tokio_postgres::Client {
        connect(&self.cluster.conninfo(
            i,
            cluster::APP_USER,
            cluster::APP_PASSWORD,
            cluster::APP_DB,
        ))
        .await
    }

    pub fn read_only_retries(&self) -> u64 {
        self.proxy
            .shared
            .read_only_retries
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Wait until every replica has replayed everything the primary wrote.
    pub async fn wait_for_replay(&self) {
        let c = &self.cluster;
        // The cluster API is blocking; it polls with its own deadline.
        tokio::task::block_in_place(|| c.wait_for_replay(Duration::from_secs(30)))
            .expect("replicas catch up");
    }
}

pub async fn connect(conninfo: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// Configure the proxy to accept clients without a password (for the raw client).
pub fn trust(config: &mut Config) {
    config.auth = AuthMethod::Trust;
}

/// Poll `check` until it returns Some, or panic after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A PostgreSQL client program (psql, pgbench) from the installed binaries.
pub fn pg_program(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    for dir in dirs.iter().rev() {
        let p = dir.join(name);
        if p.exists() {
            return p;
        }
    }
    PathBuf::from(name)
}
