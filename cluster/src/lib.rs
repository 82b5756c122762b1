//! Local PostgreSQL clusters — a primary plus streaming replicas — started from
//! the installed binaries on free loopback ports in temporary directories.
//!
//! Integration tests give every test its own cluster, so startup must be cheap
//! (a cached template data dir is copied instead of running initdb) and
//! teardown must be certain (`Drop` stops every server, also while a failed
//! test unwinds). The API is synchronous on purpose: it is used from plain
//! tests, from `pgrelay demo` and from benchmarks alike.
//!
//! ```no_run
//! let cluster = cluster::Cluster::start(cluster::ClusterConfig::default())?;
//! cluster.psql(0, "CREATE TABLE t (id int); INSERT INTO t VALUES (1)")?;
//! cluster.wait_for_replay(std::time::Duration::from_secs(10))?;
//! assert_eq!(cluster.psql(1, "SELECT count(*) FROM t")?, "1");
//! # Ok::<(), cluster::ClusterError>(())
//! ```

mod bins;
mod cluster;
mod conf;
mod error;
mod ops;
mod ports;
mod process;
mod psql;
mod rejoin;
mod runas;
mod template;

use std::path::PathBuf;
use std::time::Duration;

pub use crate::cluster::Cluster;
pub use crate::error::ClusterError;
pub use crate::ports::{accepting, free_port};

/// Superuser name (the initdb bootstrap user).
pub const SUPERUSER: &str = "postgres";
/// Superuser password, for TCP connections (scram-sha-256).
pub const SUPERUSER_PASSWORD: &str = "postgres";
/// An ordinary login role for application-like tests.
pub const APP_USER: &str = "app";
/// Its password.
pub const APP_PASSWORD: &str = "secret";
/// A database owned by [`APP_USER`].
pub const APP_DB: &str = "app";

/// How to shape a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Number of streaming replicas behind the primary.
    pub replicas: usize,
    /// `recovery_min_apply_delay` per replica, by 0-based replica index
    /// (replica 0 is node 1), to make a replica lag on purpose.
    pub apply_delay: Vec<(usize, Duration)>,
    /// `synchronous_standby_names` (e.g. `ANY 1 (*)`), written on every node
    /// rather than only the initial primary: PostgreSQL ignores it on a standby,
    /// and a promoted standby (or a rebuilt old primary promoted later) then
    /// keeps the guarantee, as under an HA manager. With no standby left
    /// streaming, commits on the primary wait; `ALTER SYSTEM` lifts it.
    /// Standbys are matched by their application_name, which is the node name.
    pub synchronous_standby_names: Option<String>,
    /// Extra `postgresql.conf` lines for every node; they come last and win.
    pub extra_conf: Vec<String>,
    /// Leave the directories behind after drop, for post-mortems.
    pub keep_dir: bool,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            replicas: 2,
            apply_delay: Vec::new(),
            synchronous_standby_names: None,
            extra_conf: Vec::new(),
            keep_dir: false,
        }
    }
}

/// One server of the cluster. Fields are fixed for the cluster's life; a node
/// keeps its port across stop/kill and restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// `pg0` (the initial primary), `pg1`, ...
    pub name: String,
    /// Always `127.0.0.1`.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// The data directory.
    pub data_dir: PathBuf,
    /// Directory holding the node's unix socket.
    pub socket_dir: PathBuf,
    /// The server log.
    pub log_file: PathBuf,
}
