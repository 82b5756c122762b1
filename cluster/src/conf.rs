//! Configuration text for the nodes (pure functions, so they are unit tested).
//!
//! Settings shared by every node live in the template's `postgresql.conf`, which
//! ends by including `node.conf`; each node rewrites only that small file (port,
//! socket dir, upstream, apply delay, caller's extra lines). `pg_basebackup`
//! copies the primary's `node.conf` too, and the replica simply overwrites it.
//! `postgresql.auto.conf` is read last, so `ALTER SYSTEM` (used by failover to
//! re-point replicas) still wins over everything here.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

/// The per-node include file's name inside the data directory.
pub const NODE_CONF: &str = "node.conf";

/// Client authentication: trust on the private unix socket (psql from tests),
/// passwords over TCP so pgrelay and replicas authenticate as real clients do.
pub const PG_HBA: &str = "\
# written by the cluster crate
local   all           all                      trust
local   replication   all                      trust
host    all           all         127.0.0.1/32 scram-sha-256
host    replication   all         127.0.0.1/32 scram-sha-256
host    all           all         ::1/128      scram-sha-256
host    replication   all         ::1/128      scram-sha-256
";

/// Appended to initdb's `postgresql.conf`. fsync=off buys speed; everything else
/// stays at realistic defaults (synchronous_commit on). `wal_log_hints` lets a
/// failed-over old primary be rewound with pg_rewind. The short retry interval
/// is how often a standby whose upstream vanished (crash, restart, re-pointing)
/// tries again, so failover tests see replicas follow within a fraction of a
/// second. `recovery_target_timeline` is already `latest` by default; it is
/// spelled out because following a promoted standby depends on it.
pub const COMMON_CONF: &str = "
# --- written by the cluster crate ---
fsync = off
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
hot_standby = on
hot_standby_feedback = on
wal_keep_size = '256MB'
wal_log_hints = on
max_connections = 200
shared_buffers = '32MB'
logging_collector = off
wal_receiver_status_interval = '1s'
wal_retrieve_retry_interval = '200ms'
recovery_target_timeline = 'latest'
password_encryption = 'scram-sha-256'
include_if_exists = 'node.conf'
";

/// What makes one node different from the others.
#[derive(Debug, Clone)]
pub struct NodeSettings<'a> {
    /// `pg0`, `pg1`, ...; also `cluster_name` and the walreceiver's application_name.
    pub name: &'a str,
    /// TCP port on 127.0.0.1.
    pub port: u16,
    /// Directory for the unix socket (private to this node).
    pub socket_dir: &'a Path,
    /// For a replica: the primary's port and the replication password.
    pub upstream: Option<(u16, &'a str)>,
    /// `recovery_min_apply_delay`, for deliberately lagging replicas.
    pub apply_delay: Option<Duration>,
    /// `synchronous_standby_names`; PostgreSQL ignores it on a standby.
    pub synchronous_standby_names: Option<&'a str>,
    /// Caller-supplied lines, last so they override ours.
    pub extra: &'a [String],
}

/// Quotes a value as a postgresql.conf string literal.
pub fn quote_conf(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// Quotes a value for a libpq conninfo string.
pub fn quote_conninfo(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Renders `node.conf`.
pub fn node_conf(s: &NodeSettings<'_>) -> String {
    let mut out = String::from("# per-node settings, written by the cluster crate\n");
    // Writing to a String cannot fail.
    let _ = writeln!(out, "listen_addresses = '127.0.0.1'");
    let _ = writeln!(out, "port = {}", s.port);
    let socket = s.socket_dir.to_string_lossy();
    let _ = writeln!(out, "unix_socket_directories = {}", quote_conf(&socket));
    let _ = writeln!(out, "cluster_name = {}", quote_conf(s.name));
    if let Some((port, password)) = s.upstream {
        let conninfo = format!(
            "host=127.0.0.1 port={port} user=postgres password={} application_name={}",
            quote_conninfo(password),
            quote_conninfo(s.name)
        );
        let _ = writeln!(out, "primary_conninfo = {}", quote_conf(&conninfo));
    }
    if let Some(delay) = s.apply_delay {
        let _ = writeln!(out, "recovery_min_apply_delay = '{}ms'", delay.as_millis());
    }
    if let Some(names) = s.synchronous_standby_names {
        let _ = writeln!(out, "synchronous_standby_names = {}", quote_conf(names));
    }
    for line in s.extra {
        let _ = writeln!(out, "{line}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        let cases = [
            ("plain", "'plain'", "'plain'"),
            ("it's", "'it''s'", "'it\\'s'"),
            ("a\\b", "'a\\\\b'", "'a\\\\b'"),
            ("", "''", "''"),
        ];
        for (raw, conf, conninfo) in cases {
            assert_eq!(quote_conf(raw), conf, "{raw:?}");
            assert_eq!(quote_conninfo(raw), conninfo, "{raw:?}");
        }
    }

    #[test]
    fn node_conf_cases() {
        let extra = vec!["work_mem = '8MB'".to_string()];
        let dir = Path::new("/tmp/x/pg1");
        let base = NodeSettings {
            name: "pg1",
            port: 5555,
            socket_dir: dir,
            upstream: None,
            apply_delay: None,
            synchronous_standby_names: None,
            extra: &[],
        };
        type Case<'a> = (NodeSettings<'a>, &'a [&'a str], &'a [&'a str]);
        let cases: Vec<Case<'_>> = vec![
            (
                base.clone(),
                &["port = 5555", "unix_socket_directories = '/tmp/x/pg1'", "cluster_name = 'pg1'"],
                &["primary_conninfo", "recovery_min_apply_delay", "synchronous_standby_names"],
            ),
            (
                NodeSettings {
                    upstream: Some((4444, "pw")),
                    apply_delay: Some(Duration::from_secs(2)),
                    synchronous_standby_names: Some("ANY 1 (*)"),
                    extra: &extra,
                    ..base.clone()
                },
                &[
                    "primary_conninfo = 'host=127.0.0.1 port=4444 user=postgres password=''pw'' application_name=''pg1'''",
                    "recovery_min_apply_delay = '2000ms'",
                    "synchronous_standby_names = 'ANY 1 (*)'",
                    "work_mem = '8MB'",
                ],
                &[],
            ),
        ];
        for (settings, must, must_not) in cases {
            let text = node_conf(&settings);
            for m in must {
                assert!(text.lines().any(|l| l == *m), "missing {m:?} in\n{text}");
            }
            for m in must_not {
                assert!(!text.contains(m), "unexpected {m:?} in\n{text}");
            }
        }
    }

    #[test]
    fn extra_lines_come_last() {
        let extra = vec!["port = 1".to_string()];
        let text = node_conf(&NodeSettings {
            name: "pg0",
            port: 2,
            socket_dir: Path::new("/s"),
            upstream: None,
            apply_delay: None,
            synchronous_standby_names: Some("x"),
            extra: &extra,
        });
        assert_eq!(text.lines().last(), Some("port = 1"));
    }
}
