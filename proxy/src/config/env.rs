//! `PGRELAY_*` environment overrides, applied after the file and before validation, so
//! a container can take its whole config (or just its secrets) from the environment.
//!
//! Every override is one row of [`OVERRIDES`]: the key path and how to set it. The
//! variable name is derived from the key (`pool.size` → `PGRELAY_POOL_SIZE`), so names
//! cannot drift from keys. Per-user passwords (`PGRELAY_USER_<NAME>_PASSWORD`) depend on
//! the user list and are handled after the table.

use super::units::{parse_duration, parse_optional_duration, parse_optional_size, parse_size};
use super::{Config, ConfigError, NodeConfig, Secret, UserConfig};
use std::str::FromStr;

type Setter = fn(&mut Config, &str) -> Result<(), String>;

/// (key path, setter). Adding an overridable key is one line here.
pub(crate) const OVERRIDES: &[(&str, Setter)] = &[
    ("listen", |c, v| from_str(&mut c.listen, v)),
    ("admin.listen", |c, v| from_str(&mut c.admin.listen, v)),
    ("admin.token", |c, v| {
        c.admin.token = Some(Secret::new(v));
        Ok(())
    }),
    ("admin.open_reads", |c, v| {
        parse_bool(v).map(|b| c.admin.open_reads = b)
    }),
    ("nodes", |c, v| parse_nodes(v).map(|n| c.nodes = n)),
    ("users", |c, v| parse_users(v).map(|u| c.users = u)),
    ("control.user", |c, v| {
        c.control.user = v.to_string();
        Ok(())
    }),
    ("control.password", |c, v| {
        c.control.password = Secret::new(v);
        Ok(())
    }),
    ("control.database", |c, v| {
        c.control.database = v.to_string();
        Ok(())
    }),
    ("auth", |c, v| from_str(&mut c.auth, v)),
    ("pool.size", |c, v| from_str(&mut c.pool.size, v)),
    ("pool.acquire_timeout", |c, v| {
        parse_duration(v).map(|d| c.pool.acquire_timeout = d)
    }),
    ("pool.connect_timeout", |c, v| {
        parse_duration(v).map(|d| c.pool.connect_timeout = d)
    }),
    ("pool.prepared_statements_limit", |c, v| {
        from_str(&mut c.pool.prepared_statements_limit, v)
    }),
    ("pool.idle_timeout", |c, v| {
        parse_duration(v).map(|d| c.pool.idle_timeout = d)
    }),
    ("limits.max_message_size", |c, v| {
        parse_size(v).map(|s| c.limits.max_message_size = s)
    }),
    ("limits.max_clients", |c, v| {
        from_str(&mut c.limits.max_clients, v)
    }),
    ("limits.worker_threads", |c, v| {
        from_str(&mut c.limits.worker_threads, v)
    }),
    ("limits.startup_timeout", |c, v| {
        parse_duration(v).map(|d| c.limits.startup_timeout = d)
    }),
    ("health.interval", |c, v| {
        parse_duration(v).map(|d| c.health.interval = d)
    }),
    ("health.timeout", |c, v| {
        parse_duration(v).map(|d| c.health.timeout = d)
    }),
    ("routing.replica_reads", |c, v| {
        parse_bool(v).map(|b| c.routing.replica_reads = b)
    }),
    ("routing.max_replica_lag", |c, v| {
        parse_optional_duration(v).map(|d| c.routing.max_replica_lag = d)
    }),
    ("routing.max_replica_lag_bytes", |c, v| {
        parse_optional_size(v).map(|s| c.routing.max_replica_lag_bytes = s)
    }),
    ("routing.when_no_replica", |c, v| {
        from_str(&mut c.routing.when_no_replica, v)
    }),
    ("routing.consistency", |c, v| {
        from_str(&mut c.routing.consistency, v)
    }),
    ("routing.read_your_writes_timeout", |c, v| {
        parse_duration(v).map(|d| c.routing.read_your_writes_timeout = d)
    }),
    ("failover.mode", |c, v| from_str(&mut c.failover.mode, v)),
    ("failover.state_file", |c, v| {
        c.failover.state_file = Some(v.into());
        Ok(())
    }),
    ("failover.fence_command", |c, v| {
        c.failover.fence_command = Some(v.to_string()).filter(|v| !v.trim().is_empty());
        Ok(())
    }),
    ("failover.missed_heartbeats", |c, v| {
        from_str(&mut c.failover.missed_heartbeats, v)
    }),
    ("failover.max_lag_on_failover", |c, v| {
        parse_size(v).map(|s| c.failover.max_lag_on_failover = s)
    }),
    ("failover.write_wait", |c, v| {
        parse_duration(v).map(|d| c.failover.write_wait = d)
    }),
    ("failover.promote_timeout", |c, v| {
        parse_duration(v).map(|d| c.failover.promote_timeout = d)
    }),
    ("failover.follow_timeout", |c, v| {
        parse_duration(v).map(|d| c.failover.follow_timeout = d)
    }),
    ("failover.drain_timeout", |c, v| {
        parse_duration(v).map(|d| c.failover.drain_timeout = d)
    }),
    ("failover.catch_up_timeout", |c, v| {
        parse_duration(v).map(|d| c.failover.catch_up_timeout = d)
    }),
];

/// The variable that overrides `key`: `pool.size` → `PGRELAY_POOL_SIZE`.
pub fn env_var(key: &str) -> String {
    let mut var = String::from("PGRELAY_");
    var.extend(key.chars().map(|c| {
        if c.is_ascii_alphanumeric() {
            c.to_ascii_uppercase()
        } else {
            '_'
        }
    }));
    var
}

/// A key set from the environment, so validation errors can blame the variable rather
/// than a line of the file that no longer holds the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FromEnv {
    pub key: String,
    pub var: String,
}

pub(crate) fn apply(
    config: &mut Config,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Vec<FromEnv>, ConfigError> {
    let mut applied = Vec::new();
    for (key, set) in OVERRIDES {
        let var = env_var(key);
        if let Some(value) = env(&var) {
            set(config, &value).map_err(|message| ConfigError::Env {
                var: var.clone(),
                message,
            })?;
            applied.push(FromEnv {
                key: key.to_string(),
                var,
            });
        }
    }
    for (i, user) in config.users.iter_mut().enumerate() {
        let var = env_var(&format!("user.{}.password", user.name));
        if let Some(value) = env(&var) {
            user.password = Secret::new(value);
            applied.push(FromEnv {
                key: format!("users[{i}].password"),
                var,
            });
        }
    }
    Ok(applied)
}

fn from_str<T: FromStr>(slot: &mut T, value: &str) -> Result<(), String>
where
    T::Err: std::fmt::Display,
{
    *slot = value
        .trim()
        .parse()
        .map_err(|e| format!("invalid value {value:?}: {e}"))?;
    Ok(())
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!(
            "invalid boolean {value:?} (expected true or false)"
        )),
    }
}

/// Items of a comma-separated list; an empty item is a typo (`a,,b`), not nothing.
fn items(value: &str) -> Result<Vec<&str>, String> {
    value
        .split(',')
        .map(str::trim)
        .map(|item| {
            if item.is_empty() {
                Err(format!("empty item in list {value:?}"))
            } else {
                Ok(item)
            }
        })
        .collect()
}

/// `pg0=10.0.0.1:5432,pg1=db1,pg2=[::1]:5434` (port defaults to 5432).
fn parse_nodes(value: &str) -> Result<Vec<NodeConfig>, String> {
    items(value)?
        .into_iter()
        .map(|item| {
            let bad = |why: &str| format!("invalid node {item:?}: {why} (expected name=host:port)");
            let (name, addr) = item.split_once('=').ok_or_else(|| bad("missing '='"))?;
            let (host, port) = split_host_port(addr.trim()).ok_or_else(|| bad("bad address"))?;
            Ok(NodeConfig {
                name: name.trim().to_string(),
                host: host.to_string(),
                port,
            })
        })
        .collect()
}

fn split_host_port(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = match addr.strip_prefix('[') {
        Some(rest) => {
            let (host, after) = rest.split_once(']')?;
            match after {
                "" => (host, None),
                _ => (host, Some(after.strip_prefix(':')?)),
            }
        }
        None => match addr.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (addr, None),
        },
    };
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => super::default_pg_port(),
    };
    Some((host, port))
}

/// `app:secret,bob:pw`; a password may contain ':' (only the first one separates).
fn parse_users(value: &str) -> Result<Vec<UserConfig>, String> {
    items(value)?
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            // The item may be a mistyped password: never echo it.
            let (name, password) = item
                .split_once(':')
                .ok_or_else(|| format!("user #{} has no ':' (expected name:password)", i + 1))?;
            Ok(UserConfig {
                name: name.trim().to_string(),
                password: Secret::new(password),
                auth: None,
                consistency: None,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ByteSize;
    use std::collections::HashMap;
    use std::time::Duration;

    const BASE: &str = "nodes: [{name: pg0, host: h}]\nusers: [{name: app, password: secret}]\n";

    fn parse_with(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::parse(BASE, |k| env.get(k).cloned())
    }

    #[test]
    fn every_documented_variable_is_in_the_table() {
        let names: Vec<String> = OVERRIDES.iter().map(|(k, _)| env_var(k)).collect();
        for var in [
            "PGRELAY_LISTEN",
            "PGRELAY_ADMIN_LISTEN",
            "PGRELAY_ADMIN_TOKEN",
            "PGRELAY_ADMIN_OPEN_READS",
            "PGRELAY_NODES",
            "PGRELAY_USERS",
            "PGRELAY_CONTROL_USER",
            "PGRELAY_CONTROL_PASSWORD",
            "PGRELAY_CONTROL_DATABASE",
            "PGRELAY_AUTH",
            "PGRELAY_POOL_SIZE",
            "PGRELAY_POOL_ACQUIRE_TIMEOUT",
            "PGRELAY_POOL_CONNECT_TIMEOUT",
            "PGRELAY_POOL_IDLE_TIMEOUT",
            "PGRELAY_POOL_PREPARED_STATEMENTS_LIMIT",
            "PGRELAY_LIMITS_MAX_MESSAGE_SIZE",
            "PGRELAY_LIMITS_MAX_CLIENTS",
            "PGRELAY_LIMITS_STARTUP_TIMEOUT",
            "PGRELAY_LIMITS_WORKER_THREADS",
            "PGRELAY_HEALTH_INTERVAL",
            "PGRELAY_HEALTH_TIMEOUT",
            "PGRELAY_ROUTING_REPLICA_READS",
            "PGRELAY_ROUTING_MAX_REPLICA_LAG",
            "PGRELAY_ROUTING_MAX_REPLICA_LAG_BYTES",
            "PGRELAY_ROUTING_WHEN_NO_REPLICA",
            "PGRELAY_ROUTING_CONSISTENCY",
            "PGRELAY_ROUTING_READ_YOUR_WRITES_TIMEOUT",
            "PGRELAY_FAILOVER_MODE",
            "PGRELAY_FAILOVER_STATE_FILE",
            "PGRELAY_FAILOVER_FENCE_COMMAND",
            "PGRELAY_FAILOVER_MISSED_HEARTBEATS",
            "PGRELAY_FAILOVER_MAX_LAG_ON_FAILOVER",
            "PGRELAY_FAILOVER_WRITE_WAIT",
            "PGRELAY_FAILOVER_PROMOTE_TIMEOUT",
            "PGRELAY_FAILOVER_FOLLOW_TIMEOUT",
            "PGRELAY_FAILOVER_DRAIN_TIMEOUT",
            "PGRELAY_FAILOVER_CATCH_UP_TIMEOUT",
        ] {
            assert!(names.iter().any(|n| n == var), "{var} missing");
        }
        assert_eq!(names.len(), 37);
    }

    #[test]
    fn overrides_apply() {
        type Check = fn(&Config) -> bool;
        let cases: &[(&str, &str, Check)] = &[
            ("PGRELAY_LISTEN", "0.0.0.0:7000", |c| {
                c.listen.port() == 7000
            }),
            ("PGRELAY_ADMIN_LISTEN", "127.0.0.1:9999", |c| {
                c.admin.listen.port() == 9999
            }),
            ("PGRELAY_CONTROL_USER", "ctl", |c| c.control.user == "ctl"),
            ("PGRELAY_CONTROL_PASSWORD", "s3", |c| {
                c.control.password.expose() == "s3"
            }),
            ("PGRELAY_CONTROL_DATABASE", "db", |c| {
                c.control.database == "db"
            }),
            ("PGRELAY_AUTH", "md5", |c| {
                c.auth == super::super::AuthMethod::Md5
            }),
            ("PGRELAY_POOL_SIZE", "7", |c| c.pool.size == 7),
            ("PGRELAY_POOL_ACQUIRE_TIMEOUT", "250ms", |c| {
                c.pool.acquire_timeout == Duration::from_millis(250)
            }),
            ("PGRELAY_POOL_CONNECT_TIMEOUT", "2s", |c| {
                c.pool.connect_timeout == Duration::from_secs(2)
            }),
            ("PGRELAY_POOL_IDLE_TIMEOUT", "1h", |c| {
                c.pool.idle_timeout == Duration::from_secs(3600)
            }),
            ("PGRELAY_LIMITS_MAX_MESSAGE_SIZE", "16MB", |c| {
                c.limits.max_message_size.0 == 16_000_000
            }),
            ("PGRELAY_LIMITS_MAX_CLIENTS", "5", |c| {
                c.limits.max_clients == 5
            }),
            ("PGRELAY_LIMITS_STARTUP_TIMEOUT", "3s", |c| {
                c.limits.startup_timeout == Duration::from_secs(3)
            }),
            ("PGRELAY_HEALTH_INTERVAL", "500ms", |c| {
                c.health.interval == Duration::from_millis(500)
            }),
            ("PGRELAY_HEALTH_TIMEOUT", "300ms", |c| {
                c.health.timeout == Duration::from_millis(300)
            }),
            ("PGRELAY_ROUTING_REPLICA_READS", "false", |c| {
                !c.routing.replica_reads
            }),
            ("PGRELAY_ROUTING_REPLICA_READS", "off", |c| {
                !c.routing.replica_reads
            }),
            ("PGRELAY_ROUTING_MAX_REPLICA_LAG", "2s", |c| {
                c.routing.max_replica_lag == Some(Duration::from_secs(2))
            }),
            ("PGRELAY_ROUTING_MAX_REPLICA_LAG", "off", |c| {
                c.routing.max_replica_lag.is_none()
            }),
            ("PGRELAY_ROUTING_MAX_REPLICA_LAG_BYTES", "64MiB", |c| {
                c.routing.max_replica_lag_bytes == Some(ByteSize(64 << 20))
            }),
            ("PGRELAY_ROUTING_MAX_REPLICA_LAG_BYTES", "0", |c| {
                c.routing.max_replica_lag_bytes.is_none()
            }),
            ("PGRELAY_ROUTING_WHEN_NO_REPLICA", "error", |c| {
                c.routing.when_no_replica == super::super::WhenNoReplica::Error
            }),
            (
                "PGRELAY_NODES",
                "pg0=127.0.0.1:5432,pg1=127.0.0.1:5433",
                |c| {
                    c.nodes.len() == 2
                        && c.nodes[1].name == "pg1"
                        && c.nodes[1].host == "127.0.0.1"
                        && c.nodes[1].port == 5433
                },
            ),
            ("PGRELAY_NODES", "a=db.local, b=[::1]:7", |c| {
                c.nodes[0].port == 5432 && c.nodes[1].host == "::1" && c.nodes[1].port == 7
            }),
            ("PGRELAY_USERS", "app:secret,bob:p:w", |c| {
                c.users.len() == 2
                    && c.users[1].name == "bob"
                    && c.users[1].password.expose() == "p:w"
            }),
            ("PGRELAY_USER_APP_PASSWORD", "from-k8s", |c| {
                c.users[0].password.expose() == "from-k8s"
            }),
        ];
        for (var, value, check) in cases {
            let config =
                parse_with(&[(var, value)]).unwrap_or_else(|e| panic!("{var}={value}: {e}"));
            assert!(check(&config), "{var}={value} not applied: {config:?}");
        }
    }

    #[test]
    fn bad_values_name_the_variable() {
        let cases: &[(&str, &str)] = &[
            ("PGRELAY_LISTEN", "nope"),
            ("PGRELAY_POOL_SIZE", "-1"),
            ("PGRELAY_POOL_ACQUIRE_TIMEOUT", "5"),
            ("PGRELAY_LIMITS_MAX_MESSAGE_SIZE", "lots"),
            ("PGRELAY_AUTH", "password"),
            ("PGRELAY_ROUTING_REPLICA_READS", "maybe"),
            ("PGRELAY_ROUTING_MAX_REPLICA_LAG", "1"),
            ("PGRELAY_ROUTING_MAX_REPLICA_LAG_BYTES", "much"),
            ("PGRELAY_ROUTING_WHEN_NO_REPLICA", "fail"),
            ("PGRELAY_NODES", "pg0"),
            ("PGRELAY_NODES", "pg0=h:99999"),
            ("PGRELAY_NODES", "pg0=h:1,,pg1=h:2"),
            ("PGRELAY_USERS", "app"),
        ];
        for (var, value) in cases {
            let err = parse_with(&[(var, value)])
                .expect_err(&format!("{var}={value} should fail"))
                .to_string();
            assert!(
                err.starts_with(&format!("environment variable {var}: ")),
                "{err}"
            );
        }
    }

    #[test]
    fn user_password_var_applies_after_users_list() {
        let config = parse_with(&[
            ("PGRELAY_USERS", "web-app:x"),
            ("PGRELAY_USER_WEB_APP_PASSWORD", "y"),
        ])
        .unwrap();
        assert_eq!(config.users[0].password.expose(), "y");
    }

    #[test]
    fn validation_of_env_values_blames_the_variable() {
        let err = parse_with(&[("PGRELAY_POOL_SIZE", "0")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("pool.size") && err.contains("PGRELAY_POOL_SIZE") && !err.contains("line"),
            "{err}"
        );
    }
}
