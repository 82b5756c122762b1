//! The discovery loop: check every node, publish a new snapshot when something changed.

use crate::probe::{probe, ControlCreds, NodeSpec};
use crate::topology::{self, Observation};
use crate::SharedTopology;
use router::{Epoch, Topology};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_postgres::Client;

/// Checks every node concurrently (each bounded by `timeout`), reusing and refreshing the
/// per-node control connections in `clients`.
async fn probe_all(
    nodes: &[NodeSpec],
    creds: &ControlCreds,
    clients: &mut [Option<Client>],
    timeout: Duration,
) -> Vec<Observation> {
    let mut set = JoinSet::new();
    for (i, spec) in nodes.iter().enumerate() {
        let client = clients.get_mut(i).and_then(Option::take);
        let (spec, creds) = (spec.clone(), creds.clone());
        set.spawn(async move {
            let (client, outcome) = probe(&spec, &creds, client, timeout).await;
            if let Err(e) = &outcome {
                tracing::debug!(node = %spec.name, addr = %spec.addr(), error = %e, "role check failed");
            }
            (i, client, outcome.ok())
        });
    }
    // A check whose task died (it cannot panic, but still) counts as failed.
    let mut observations = vec![None; nodes.len()];
    while let Some(joined) = set.join_next().await {
        if let Ok((i, client, seen)) = joined {
            if let (Some(slot), Some(obs)) = (clients.get_mut(i), observations.get_mut(i)) {
                *slot = client;
                *obs = seen;
            }
        }
    }
    observations
}

/// Probes every node once. A node that cannot be reached within `timeout` is
/// `up: false, role: Unknown`. The snapshot has version 1 and epoch 0: the caller
/// stamps the coordinator's epoch if it has one.
pub async fn discover(nodes: &[NodeSpec], creds: &ControlCreds, timeout: Duration) -> Topology {
    let mut clients: Vec<Option<Client>> = nodes.iter().map(|_| None).collect();
    let observations = probe_all(nodes, creds, &mut clients, timeout).await;
    let topology = topology::build(nodes, &observations, 1, Epoch::default());
    for n in &topology.nodes {
        tracing::info!(node = %n.name, addr = %n.addr, role = ?n.role, up = n.up, "discovered");
    }
    topology
}

/// Re-checks roles every `interval` and keeps the shared topology current.
pub struct RoleMonitor {
    nodes: Vec<NodeSpec>,
    creds: ControlCreds,
    interval: Duration,
    timeout: Duration,
    topology: SharedTopology,
}

/// Resolves when shutdown is requested or its sender is gone (nobody can ask any more).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

impl RoleMonitor {
    /// Starts the loop; it ends soon after `shutdown` turns true (or its sender drops).
    pub fn spawn(
        nodes: Vec<NodeSpec>,
        creds: ControlCreds,
        interval: Duration,
        timeout: Duration,
        topology: SharedTopology,
        shutdown: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        let monitor = RoleMonitor {
            nodes,
            creds,
            interval,
            timeout,
            topology,
        };
        tokio::spawn(monitor.run(shutdown))
    }

    async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut clients: Vec<Option<Client>> = self.nodes.iter().map(|_| None).collect();
        // A zero period would make `interval` panic; config validation forbids it anyway.
        let mut ticker = tokio::time::interval(self.interval.max(Duration::from_millis(1)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = stopped(&mut shutdown) => break,
                _ = ticker.tick() => {}
            }
            let observations = tokio::select! {
                biased;
                _ = stopped(&mut shutdown) => break,
                obs = probe_all(&self.nodes, &self.creds, &mut clients, self.timeout) => obs,
            };
            self.publish(&observations);
        }
        tracing::debug!("role monitor stopped");
    }

    /// Only this task writes the snapshot for now, so load-then-store cannot lose an
    /// update; the failover controller will have to coordinate with it (rcu or one owner).
    fn publish(&self, observations: &[Observation]) {
        let prev = self.topology.load();
        let Some(next) = topology::next(&prev, &self.nodes, observations) else {
            return;
        };
        for change in topology::changes(&prev, &next) {
            let (role, up) = change.after;
            if up {
                tracing::info!(node = %change.name, ?role, before = ?change.before, "node role changed");
            } else {
                tracing::warn!(node = %change.name, before = ?change.before, "node unreachable");
            }
        }
        self.topology.store(Arc::new(next));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use router::{NodeId, Role};
    use std::time::Instant;

    fn creds() -> ControlCreds {
        ControlCreds {
            user: "postgres".into(),
            password: String::new(),
            database: "postgres".into(),
        }
    }

    fn node(i: usize, port: u16) -> NodeSpec {
        NodeSpec {
            id: NodeId(i),
            name: format!("pg{i}"),
            host: "127.0.0.1".into(),
            port,
        }
    }

    /// A port nothing listens on: bind an ephemeral one, then release it.
    fn closed_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn closed_port_is_down_without_waiting_for_the_timeout() {
        let nodes = [node(0, closed_port())];
        let started = Instant::now();
        let t = discover(&nodes, &creds(), Duration::from_secs(30)).await;
        assert_eq!(t.version, 1);
        let n = &t.nodes[0];
        assert!(!n.up && n.role == Role::Unknown, "{n:?}");
        // Refused at once: far below the 30s bound, with ample slack for a slow machine.
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "took {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn silent_server_is_down_after_the_timeout() {
        // Accepts TCP (kernel backlog) but never answers the startup message.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let nodes = [node(0, port), node(1, closed_port())];
        let t = discover(&nodes, &creds(), Duration::from_millis(200)).await;
        assert!(
            t.nodes.iter().all(|n| !n.up && n.role == Role::Unknown),
            "{t:?}"
        );
        assert_eq!(t.nodes.len(), 2);
        drop(listener);
    }

    #[tokio::test]
    async fn monitor_publishes_then_stops_on_shutdown() {
        let topology = crate::shared(Topology::default());
        let (tx, rx) = watch::channel(false);
        let nodes = vec![node(0, closed_port()), node(1, closed_port())];
        let handle = RoleMonitor::spawn(
            nodes,
            creds(),
            Duration::from_millis(20),
            Duration::from_millis(500),
            topology.clone(),
            rx,
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while topology.load().version == 0 {
            assert!(Instant::now() < deadline, "no snapshot published");
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let first = topology.load_full();
        assert_eq!(first.version, 1);
        assert!(first.nodes.iter().all(|n| !n.up));
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(20), handle)
            .await
            .expect("monitor did not stop")
            .unwrap();
        // Nothing changed between rounds, so nothing was republished.
        assert_eq!(topology.load().version, 1);
    }

    #[tokio::test]
    async fn monitor_stops_when_shutdown_sender_drops() {
        let (tx, rx) = watch::channel(false);
        let handle = RoleMonitor::spawn(
            vec![node(0, closed_port())],
            creds(),
            Duration::from_secs(3600),
            Duration::from_millis(100),
            crate::shared(Topology::default()),
            rx,
        );
        drop(tx);
        tokio::time::timeout(Duration::from_secs(20), handle)
            .await
            .expect("monitor did not stop")
            .unwrap();
    }
}
