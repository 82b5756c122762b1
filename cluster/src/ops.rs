//! Driving a running cluster: SQL, crashes, restarts and replication waits.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::cluster::{launch, START_TIMEOUT};
use crate::conf::quote_conninfo;
use crate::ports::accepting;
use crate::process::{self, StartFailure, POLL};
use crate::psql::{self, Target};
use crate::{Cluster, ClusterError, Node, SUPERUSER, SUPERUSER_PASSWORD};

/// Deadline for a node to go down after stop or kill.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

impl Cluster {
    /// All nodes: index 0 is the initial primary, then the replicas.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Node `i`, if it exists.
    pub fn get(&self, i: usize) -> Option<&Node> {
        self.nodes.get(i)
    }

    /// Node `i`.
    ///
    /// # Panics
    /// If `i` is out of range, like slice indexing; tests pick indexes from
    /// their own config. Use [`Cluster::get`] when the index is not trusted.
    pub fn node(&self, i: usize) -> &Node {
        match self.nodes.get(i) {
            Some(n) => n,
            None => panic!("no node {i}: the cluster has {} nodes", self.nodes.len()),
        }
    }

    /// Port of node `i` (panics like [`Cluster::node`]).
    pub fn port(&self, i: usize) -> u16 {
        self.node(i).port
    }

    /// The superuser's name and password.
    pub fn superuser(&self) -> (&str, &str) {
        (SUPERUSER, SUPERUSER_PASSWORD)
    }

    /// A libpq key/value connection string for node `i` over TCP.
    pub fn conninfo(&self, i: usize, user: &str, password: &str, db: &str) -> String {
        let q = |v: &str| {
            if v.is_empty() || v.contains(|c: char| c.is_whitespace() || c == '\'' || c == '\\') {
                quote_conninfo(v)
            } else {
                v.to_string()
            }
        };
        format!(
            "host=127.0.0.1 port={} user={} password={} dbname={}",
            self.port(i),
            q(user),
            q(password),
            q(db)
        )
    }

    pub(crate) fn checked(&self, i: usize) -> Result<&Node, ClusterError> {
        self.nodes.get(i).ok_or(ClusterError::NoSuchNode {
            index: i,
            count: self.nodes.len(),
        })
    }

    /// Whether node `i`'s postmaster is running (reaps it if it died).
    pub fn is_running(&self, i: usize) -> bool {
        let Some(slot) = self.procs.get(i) else {
            return false;
        };
        let mut guard = slot.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(_) => {
                *guard = None;
                false
            }
            None => false,
        }
    }

    /// The last `n` lines of node `i`'s server log, for test failure messages.
    pub fn log_tail(&self, i: usize, n: usize) -> Result<String, ClusterError> {
        Ok(process::log_tail(&self.checked(i)?.log_file, n))
    }

    /// Runs SQL as the superuser in database `postgres`; returns trimmed stdout.
    pub fn psql(&self, i: usize, sql: &str) -> Result<String, ClusterError> {
        self.psql_db(i, "postgres", sql)
    }

    /// Runs SQL as the superuser in database `db`; returns trimmed stdout.
    pub fn psql_db(&self, i: usize, db: &str, sql: &str) -> Result<String, ClusterError> {
        let node = self.checked(i)?;
        let target = Target {
            socket_dir: &node.socket_dir,
            port: node.port,
            db,
        };
        psql::run(&self.run, &self.bins, &target, sql)
    }

    /// SIGKILLs the postmaster, like a crash, and waits until its processes are
    /// gone and the port refuses connections.
    pub fn kill(&self, i: usize) -> Result<(), ClusterError> {
        let node = self.checked(i)?;
        self.take_running(i, |child| process::crash(child, STOP_TIMEOUT))?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        while accepting(node.port) {
            if Instant::now() >= deadline {
                return Err(ClusterError::Timeout {
                    what: format!("port {} of killed {} to close", node.port, node.name),
                    waited: STOP_TIMEOUT,
                });
            }
            std::thread::sleep(POLL);
        }
        Ok(())
    }

    /// Stops node `i` cleanly (`pg_ctl stop -m fast`: SIGINT, then wait).
    pub fn stop(&self, i: usize) -> Result<(), ClusterError> {
        self.checked(i)?;
        self.take_running(i, |child| {
            process::shutdown(child, Signal::SIGINT, STOP_TIMEOUT)
        })
    }

    pub(crate) fn take_running(
        &self,
        i: usize,
        f: impl FnOnce(&mut std::process::Child) -> Result<(), ClusterError>,
    ) -> Result<(), ClusterError> {
        let node = self.checked(i)?;
        let slot = self.procs.get(i).ok_or(ClusterError::NoSuchNode {
            index: i,
            count: self.procs.len(),
        })?;
        let mut guard = slot.lock().unwrap_or_else(|p| p.into_inner());
        let mut child = guard
            .take()
            .ok_or_else(|| ClusterError::NotRunning(node.name.clone()))?;
        f(&mut child)
    }

    /// Starts node `i` again on its old port and waits until it accepts
    /// connections. A no-op if it runs. Retries while a crashed predecessor's
    /// leftovers or a stray port holder are still in the way.
    pub fn start_node(&self, i: usize) -> Result<(), ClusterError> {
        let node = self.checked(i)?;
        if self.is_running(i) {
            return Ok(());
        }
        let slot = self.procs.get(i).ok_or(ClusterError::NoSuchNode {
            index: i,
            count: self.procs.len(),
        })?;
        let mut guard = slot.lock().unwrap_or_else(|p| p.into_inner());
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match process::start(&self.run, &self.bins, &launch(node), START_TIMEOUT) {
                Ok(child) => {
                    *guard = Some(child);
                    return Ok(());
                }
                Err(StartFailure::AddressInUse(e)) | Err(StartFailure::Leftovers(e)) => {
                    if Instant::now() >= deadline {
                        return Err(e);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(StartFailure::Fatal(e)) => return Err(e),
            }
        }
    }

    /// Index of the running node that is not in recovery (lowest if several).
    pub fn primary_index(&self) -> Result<usize, ClusterError> {
        (0..self.nodes.len())
            .filter(|&i| self.is_running(i))
            .find(|&i| {
                matches!(
                    self.psql(i, "SELECT pg_is_in_recovery()").as_deref(),
                    Ok("f")
                )
            })
            .ok_or_else(|| ClusterError::Topology("no running primary".into()))
    }

    /// Waits until every running replica has replayed the primary's current WAL
    /// position (delayed replicas included, so give them time).
    pub fn wait_for_replay(&self, timeout: Duration) -> Result<(), ClusterError> {
        let primary = self.primary_index()?;
        let target = self.psql(primary, "SELECT pg_current_wal_lsn()")?;
        let deadline = Instant::now() + timeout;
        for i in (0..self.nodes.len()).filter(|&i| i != primary && self.is_running(i)) {
            if self.psql(i, "SELECT pg_is_in_recovery()")? == "t" {
                self.wait_lsn(i, &target, deadline, timeout)?;
            }
        }
        Ok(())
    }

    /// Waits until replica `i` has replayed the primary's current WAL position.
    pub fn wait_for_replica(&self, i: usize, timeout: Duration) -> Result<(), ClusterError> {
        self.checked(i)?;
        let primary = self.primary_index()?;
        let target = self.psql(primary, "SELECT pg_current_wal_lsn()")?;
        self.wait_lsn(i, &target, Instant::now() + timeout, timeout)
    }

    fn wait_lsn(
        &self,
        i: usize,
        target: &str,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<(), ClusterError> {
        // The LSN came from the server itself, but validate before splicing it into SQL.
        if !target.chars().all(|c| c.is_ascii_hexdigit() || c == '/') || target.is_empty() {
            return Err(ClusterError::Topology(format!(
                "odd LSN from primary: {target:?}"
            )));
        }
        let sql = format!("SELECT coalesce(pg_last_wal_replay_lsn() >= '{target}'::pg_lsn, false)");
        loop {
            if self.psql(i, &sql)? == "t" {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let name = self.checked(i).map(|n| n.name.clone()).unwrap_or_default();
                return Err(ClusterError::Timeout {
                    what: format!("{name} to replay up to {target}"),
                    waited: timeout,
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits until the initial primary reports each named replica as streaming
    /// (startup only: after a failover node 0 may no longer be the primary).
    pub(crate) fn wait_attached(
        &self,
        names: &[String],
        timeout: Duration,
    ) -> Result<(), ClusterError> {
        if names.is_empty() {
            return Ok(());
        }
        let list = names
            .iter()
            .map(|n| format!("'{}'", n.replace('\'', "''")))
            .collect::<Vec<_>>()
            .join(",");
        let sql = format!(
            "SELECT count(DISTINCT application_name) FROM pg_stat_replication \
             WHERE state = 'streaming' AND application_name IN ({list})"
        );
        let want = names.len().to_string();
        let deadline = Instant::now() + timeout;
        loop {
            if self.psql(0, &sql)? == want {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Timeout {
                    what: format!("replicas {names:?} to stream from the primary"),
                    waited: timeout,
                });
            }
            std::thread::sleep(POLL);
        }
    }
}
