//! Typed errors for cluster setup and control.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while building or driving a local cluster.
///
/// Variants carry enough context (command, stderr, log tail) that a failing
/// test explains itself without anyone re-running it by hand.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A PostgreSQL program could not be found anywhere we looked.
    #[error(
        "PostgreSQL program `{program}` not found (searched: {searched}); \
         install Debian's `postgresql` package (`apt-get install postgresql`) \
         or point PG_BINDIR at the directory holding initdb/postgres"
    )]
    BinaryNotFound {
        /// The missing program, e.g. `initdb`.
        program: String,
        /// The directories that were searched, comma separated.
        searched: String,
    },

    /// A filesystem or process-spawn operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What we were doing.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// An external program ran but reported failure.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The program and its arguments.
        command: String,
        /// Its exit status.
        status: String,
        /// Its trimmed standard error.
        stderr: String,
    },

    /// A postmaster did not come up.
    #[error("node {node} failed to start: {reason}\n--- last lines of {log} ---\n{log_tail}")]
    Start {
        /// Node name (`pg0`, ...).
        node: String,
        /// Why we gave up.
        reason: String,
        /// The node's log file.
        log: PathBuf,
        /// Its last lines, to show the server's own explanation.
        log_tail: String,
    },

    /// A condition was not reached before its deadline.
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout {
        /// The condition.
        what: String,
        /// How long we polled.
        waited: Duration,
    },

    /// A node index outside the cluster.
    #[error("no node at index {index} (the cluster has {count})")]
    NoSuchNode {
        /// The requested index.
        index: usize,
        /// How many nodes exist.
        count: usize,
    },

    /// The unprivileged account to run PostgreSQL as is unavailable.
    #[error("cannot run PostgreSQL as root and no usable unprivileged user: {0}")]
    User(String),

    /// Sending a signal to a postmaster failed.
    #[error("signal {signal} to pid {pid}: {source}")]
    Signal {
        /// The signal name.
        signal: String,
        /// Target process.
        pid: i32,
        /// The errno.
        #[source]
        source: nix::Error,
    },

    /// A node is not running but the operation needs it to be.
    #[error("node {0} is not running")]
    NotRunning(String),

    /// The cluster's topology does not allow the operation (e.g. no primary).
    #[error("{0}")]
    Topology(String),
}

impl ClusterError {
    /// Wraps an I/O error with a description of the operation.
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        ClusterError::Io {
            what: what.into(),
            source,
        }
    }
}
