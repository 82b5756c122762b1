//! Semantic checks that types cannot express: the file parsed, but would it work?
//! Each rule reports the key path; [`Violation::locate`] adds the line (or the
//! environment variable that set the value).

use super::env::FromEnv;
use super::yaml_index::YamlIndex;
use super::{Config, ConfigError};
use std::collections::HashMap;
use std::time::Duration;

/// Below this a client's startup packet (up to 10000 bytes in PostgreSQL) could be refused.
const MIN_MESSAGE_SIZE: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Violation {
    pub key: String,
    pub message: String,
}

fn violation(key: impl Into<String>, message: impl Into<String>) -> Violation {
    Violation {
        key: key.into(),
        message: message.into(),
    }
}

fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

pub(crate) fn validate(c: &Config) -> Result<(), Violation> {
    if c.listen == c.admin.listen {
        return Err(violation(
            "admin.listen",
            format!("same address as listen ({})", c.listen),
        ));
    }
    let token = c
        .admin
        .token
        .as_ref()
        .is_some_and(|t| !t.expose().is_empty());
    if !token && !c.admin.listen.ip().is_loopback() {
        return Err(violation(
            "admin.listen",
            format!(
                "{} is not a loopback address and admin.token is not set: set a token (or PGRELAY_ADMIN_TOKEN), or listen on 127.0.0.1",
                c.admin.listen
            ),
        ));
    }
    if c.nodes.is_empty() {
        return Err(violation("nodes", "at least one node is required"));
    }
    let mut names = HashMap::new();
    let mut addrs = HashMap::new();
    for (i, node) in c.nodes.iter().enumerate() {
        if !valid_node_name(&node.name) {
            return Err(violation(
                format!("nodes[{i}].name"),
                format!(
                    "invalid node name {:?}: use only letters, digits, '_' and '-'",
                    node.name
                ),
            ));
        }
        if let Some(first) = names.insert(node.name.as_str(), i) {
            return Err(violation(
                format!("nodes[{i}].name"),
                format!("duplicate node name {:?} (also nodes[{first}])", node.name),
            ));
        }
        if node.host.trim().is_empty() {
            return Err(violation(format!("nodes[{i}].host"), "must not be empty"));
        }
        if node.port == 0 {
            return Err(violation(format!("nodes[{i}].port"), "must not be 0"));
        }
        if let Some(first) = addrs.insert((node.host.as_str(), node.port), i) {
            return Err(violation(
                format!("nodes[{i}]"),
                format!("same address {}:{} as nodes[{first}]", node.host, node.port),
            ));
        }
    }
    if c.users.is_empty() {
        return Err(violation("users", "at least one user is required"));
    }
    let mut users = HashMap::new();
    for (i, user) in c.users.iter().enumerate() {
        if user.name.is_empty() {
            return Err(violation(format!("users[{i}].name"), "must not be empty"));
        }
        if let Some(first) = users.insert(user.name.as_str(), i) {
            return Err(violation(
                format!("users[{i}].name"),
                format!("duplicate user {:?} (also users[{first}])", user.name),
            ));
        }
    }
    for (key, value) in [
        ("control.user", &c.control.user),
        ("control.database", &c.control.database),
    ] {
        if value.is_empty() {
            return Err(violation(key, "must not be empty"));
        }
    }
    for (key, value) in [
        ("pool.size", c.pool.size),
        (
            "pool.prepared_statements_limit",
            c.pool.prepared_statements_limit,
        ),
        ("limits.max_clients", c.limits.max_clients),
        (
            "failover.missed_heartbeats",
            c.failover.missed_heartbeats as usize,
        ),
    ] {
        if value == 0 {
            return Err(violation(key, "must be at least 1"));
        }
    }
    if c.limits.max_message_size.0 < MIN_MESSAGE_SIZE {
        return Err(violation(
            "limits.max_message_size",
            format!(
                "{} is too small: at least 16KiB, or clients' startup messages are refused",
                c.limits.max_message_size
            ),
        ));
    }
    let durations = [
        ("pool.acquire_timeout", c.pool.acquire_timeout),
        ("pool.connect_timeout", c.pool.connect_timeout),
        ("pool.idle_timeout", c.pool.idle_timeout),
        ("limits.startup_timeout", c.limits.startup_timeout),
        ("health.interval", c.health.interval),
        ("health.timeout", c.health.timeout),
        ("failover.promote_timeout", c.failover.promote_timeout),
        ("failover.follow_timeout", c.failover.follow_timeout),
        ("failover.drain_timeout", c.failover.drain_timeout),
        ("failover.catch_up_timeout", c.failover.catch_up_timeout),
    ];
    for (key, value) in durations {
        if value == Duration::ZERO {
            return Err(violation(key, "must be greater than 0"));
        }
    }
    Ok(())
}

/// `users[1].name` is under `users`; `users_x` is not.
fn is_under(key: &str, prefix: &str) -> bool {
    key.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
}

/// Parent key path: `nodes[1].port` → `nodes[1]` → `nodes` → none.
fn parent(key: &str) -> Option<&str> {
    key.rfind(['.', '[']).map(|i| &key[..i])
}

impl Violation {
    pub(crate) fn locate(self, file: &str, index: &YamlIndex, from_env: &[FromEnv]) -> ConfigError {
        if let Some(env) = from_env.iter().rev().find(|e| is_under(&self.key, &e.key)) {
            return ConfigError::Invalid {
                file: file.to_string(),
                line: None,
                message: format!("{} (set by {})", self.message, env.var),
                key: self.key,
            };
        }
        // A defaulted key is not in the file: point at its nearest written parent.
        let mut path = Some(self.key.as_str());
        let mut line = None;
        while let (Some(p), None) = (path, line) {
            line = index.line_of(p);
            path = parent(p);
        }
        ConfigError::Invalid {
            file: file.to_string(),
            line,
            key: self.key,
            message: self.message,
        }
    }
}
