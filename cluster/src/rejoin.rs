//! The cluster as failover leaves it: which node is primary now, whether a
//! standby streams, and turning a fenced old primary into a standby of the new
//! primary.
//!
//! Rejoining is done by a fresh base backup rather than pg_rewind: it works
//! whatever the old primary wrote after the split, and tests want a known-good
//! standby, not a test of pg_rewind.

use std::fs;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::cluster::{run_checked, START_TIMEOUT};
use crate::conf::{quote_conninfo, NODE_CONF};
use crate::process::{self, POLL};
use crate::{Cluster, ClusterError, SUPERUSER, SUPERUSER_PASSWORD};

impl Cluster {
    /// Every running node that is not in recovery, in index order. Unlike
    /// [`Cluster::primary_index`] this shows a split brain (two primaries after a
    /// promotion while the old one still runs), which fencing tests assert on.
    pub fn primaries(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.is_running(i))
            .filter(|&i| {
                matches!(
                    self.psql(i, "SELECT pg_is_in_recovery()").as_deref(),
                    Ok("f")
                )
            })
            .collect()
    }

    /// Polls node `i`'s `pg_stat_wal_receiver` until its WAL receiver streams,
    /// and returns the timeline it receives (it changes when the upstream was
    /// promoted, which is how a test sees a standby follow a failover).
    pub fn wait_streaming(&self, i: usize, timeout: Duration) -> Result<u32, ClusterError> {
        self.wait_receiver(i, None, timeout)
    }

    /// Replaces node `i` with a fresh standby of node `from`: stops `i` if it
    /// runs (immediate mode: its data is about to go), wipes its data directory,
    /// takes `pg_basebackup -R` from `from`, and starts it on its old port with
    /// its own settings. Returns once it streams from `from`, with the timeline
    /// it receives. Meant for a fenced old primary rejoining after failover; any
    /// node may be rebuilt, and `from` may itself be a standby (cascading).
    pub fn rebuild_replica(&self, i: usize, from: usize) -> Result<u32, ClusterError> {
        let node = self.checked(i)?.clone();
        let source = self.checked(from)?.clone();
        if i == from {
            return Err(ClusterError::Topology(format!(
                "cannot rebuild {} from itself",
                node.name
            )));
        }
        if !self.is_running(from) {
            return Err(ClusterError::NotRunning(source.name));
        }
        if self.is_running(i) {
            self.take_running(i, |child| {
                process::shutdown(child, Signal::SIGQUIT, START_TIMEOUT)
            })?;
        }
        // Root may remove the run-as account's files; as that account they are ours.
        match fs::remove_dir_all(&node.data_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(ClusterError::io(
                    format!("remove {}", node.data_dir.display()),
                    e,
                ))
            }
        }
        // -R appends primary_conninfo to postgresql.auto.conf, which is read last;
        // without it a primary_conninfo that `from` got by ALTER SYSTEM (a
        // re-pointed standby) would be copied and win over node.conf, carrying
        // the wrong upstream and `from`'s application_name. Hence the name here.
        let conninfo = format!(
            "host=127.0.0.1 port={} user={SUPERUSER} application_name={}",
            source.port,
            quote_conninfo(&node.name)
        );
        let mut cmd = self.run.command(&self.bins.pg_basebackup, &node.socket_dir);
        cmd.arg("-d")
            .arg(&conninfo)
            .arg("-D")
            .arg(&node.data_dir)
            .args(["-R", "-X", "stream", "-c", "fast", "-w"])
            .env("PGPASSWORD", SUPERUSER_PASSWORD);
        run_checked(cmd, "pg_basebackup")?;
        // The copy holds `from`'s node.conf (its port, name and socket).
        self.run.write_file(
            &node.data_dir.join(NODE_CONF),
            &self.node_conf_for(i, &node, Some(source.port)),
        )?;
        self.start_node(i)?;
        self.wait_receiver(i, Some(source.port), START_TIMEOUT)
    }

    /// Waits for a streaming WAL receiver on node `i`, optionally connected to
    /// `upstream` (so a rebuilt node still attached elsewhere does not count).
    fn wait_receiver(
        &self,
        i: usize,
        upstream: Option<u16>,
        timeout: Duration,
    ) -> Result<u32, ClusterError> {
        let node = self.checked(i)?;
        let port_filter = upstream
            .map(|p| format!(" AND sender_port = {p}"))
            .unwrap_or_default();
        let sql = format!(
            "SELECT received_tli FROM pg_stat_wal_receiver \
             WHERE status = 'streaming'{port_filter}"
        );
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.psql(i, &sql)?;
            if !out.is_empty() {
                return out.parse().map_err(|_| {
                    ClusterError::Topology(format!("odd received_tli from {}: {out:?}", node.name))
                });
            }
            if Instant::now() >= deadline {
                let from = upstream
                    .map(|p| format!(" from port {p}"))
                    .unwrap_or_default();
                return Err(ClusterError::Timeout {
                    what: format!(
                        "{} to stream{from}; last log lines:\n{}",
                        node.name,
                        process::log_tail(&node.log_file, 10)
                    ),
                    waited: timeout,
                });
            }
            std::thread::sleep(POLL);
        }
    }
}
