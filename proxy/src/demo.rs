//! `pgrelay demo`: a local primary and streaming replicas from the installed PostgreSQL
//! binaries, with pgrelay in front, so anyone can try it with one command.

use crate::app::{self, AppError, Listeners};
use crate::config::{Config, NodeConfig, Secret, UserConfig};
use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("could not start the local PostgreSQL cluster: {0}")]
    Cluster(#[from] cluster::ClusterError),
    #[error(transparent)]
    App(#[from] AppError),
    #[error("the cluster start-up task failed: {0}")]
    Join(String),
}

pub struct DemoOptions {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub replicas: usize,
}

/// The configuration the demo serves with: every node of `cluster`, the demo user.
pub fn demo_config(c: &cluster::Cluster, listen: SocketAddr, admin_listen: SocketAddr) -> Config {
    let (su, su_password) = c.superuser();
    let mut config = Config {
        listen,
        nodes: c
            .nodes()
            .iter()
            .map(|n| NodeConfig {
                name: n.name.clone(),
                host: n.host.clone(),
                port: n.port,
            })
            .collect(),
        users: vec![UserConfig {
            name: cluster::APP_USER.into(),
            password: Secret::new(cluster::APP_PASSWORD),
            auth: None,
            consistency: None,
        }],
        ..Config::default()
    };
    config.admin.listen = admin_listen;
    config.control.user = su.to_string();
    config.control.password = Secret::new(su_password);
    config
}

/// Start the cluster and the proxy, serve until `stop` resolves, then clean up.
pub async fn run(
    opts: DemoOptions,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), DemoError> {
    println!(
        "starting a local PostgreSQL primary and {} streaming replicas...",
        opts.replicas
    );
    let replicas = opts.replicas;
    let cluster = tokio::task::spawn_blocking(move || {
        cluster::Cluster::start(cluster::ClusterConfig {
            replicas,
            ..Default::default()
        })
    })
    .await
    .map_err(|e| DemoError::Join(e.to_string()))??;
    for (i, n) in cluster.nodes().iter().enumerate() {
        let role = if i == 0 { "primary" } else { "replica" };
        println!(
            "  {} {role:<8} 127.0.0.1:{}  ({})",
            n.name,
            n.port,
            n.data_dir.display()
        );
    }
    let config = demo_config(&cluster, opts.listen, opts.admin_listen);
    let listeners = Listeners::bind(&config).await?;
    let handle = app::start(config, listeners).await?;
    println!();
    println!("pgrelay is ready. Connect with:");
    println!(
        "  psql \"postgres://{}:{}@{}/{}\"",
        cluster::APP_USER,
        cluster::APP_PASSWORD,
        handle.addr,
        cluster::APP_DB
    );
    let a = handle.admin_addr;
    println!("admin API (docs/admin-api.md): http://{a}/topology  http://{a}/metrics  http://{a}/sessions");
    println!("  e.g. curl -s -X POST -H 'Content-Type: application/json' -d '{{\"to\": \"pg1\"}}' http://{a}/switchover");
    println!("Ctrl-C stops pgrelay and removes the cluster.");
    stop.await;
    println!("stopping...");
    handle.shutdown().await?;
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .map_err(|e| DemoError::Join(e.to_string()))?;
    Ok(())
}
