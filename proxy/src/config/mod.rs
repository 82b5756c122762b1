//! pgrelay's configuration: a YAML file, then `PGRELAY_*` environment overrides, then
//! validation. Unknown keys are rejected so a typo (`replica_read:`) fails loudly instead
//! of silently keeping a default. Roles (primary/replica) are deliberately absent: they
//! are discovered from the nodes, never trusted from config.

mod env;
mod error;
mod failover;
mod secret;
mod units;
mod validate;
mod yaml_index;

#[cfg(test)]
mod tests;

pub use env::env_var;
pub use error::ConfigError;
pub use failover::FailoverConfig;
pub use secret::Secret;
pub use units::{
    parse_duration, parse_optional_duration, parse_optional_size, parse_size, ByteSize,
};

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;
use yaml_index::YamlIndex;

/// The whole configuration. `Default` has no nodes and no users, so it is only valid
/// once those are filled in (by the file or by `PGRELAY_NODES` / `PGRELAY_USERS`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where applications connect.
    pub listen: SocketAddr,
    pub admin: AdminConfig,
    pub nodes: Vec<NodeConfig>,
    pub users: Vec<UserConfig>,
    pub control: ControlConfig,
    pub auth: AuthMethod,
    pub pool: PoolConfig,
    pub limits: LimitsConfig,
    pub health: HealthConfig,
    pub routing: RoutingConfig,
    pub failover: FailoverConfig,
    /// The file this came from, if any: what `POST /reload` and SIGHUP read again.
    #[serde(skip)]
    pub source: Option<std::path::PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 6432)),
            admin: AdminConfig::default(),
            nodes: Vec::new(),
            users: Vec::new(),
            control: ControlConfig::default(),
            auth: AuthMethod::ScramSha256,
            pool: PoolConfig::default(),
            limits: LimitsConfig::default(),
            health: HealthConfig::default(),
            routing: RoutingConfig::default(),
            failover: FailoverConfig::default(),
            source: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Bearer token the actions need (and the reads, unless `open_reads`). Without one
    /// the API must listen on loopback and takes actions only from loopback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// Reads (`/topology`, `/metrics`, `/sessions`) without the token, for a scraper
    /// that has none. `/health` and `/ready` are always open.
    pub open_reads: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            token: None,
            open_reads: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Stable name used in logs, metrics and the admin API: `[A-Za-z0-9_-]+`.
    pub name: String,
    pub host: String,
    #[serde(default = "default_pg_port")]
    pub port: u16,
}

fn default_pg_port() -> u16 {
    5432
}

/// A user applications log in as. The proxy authenticates clients itself and then
/// logs in to PostgreSQL with the same name and password.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    pub password: Secret,
    /// Overrides the global `auth` for this user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthMethod>,
    /// Overrides `routing.consistency` for this user's sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<router::Consistency>,
}

/// Credentials pgrelay uses for its own checks (role discovery, LSNs, failover).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    pub user: String,
    pub password: Secret,
    pub database: String,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            user: "postgres".into(),
            password: Secret::default(),
            database: "postgres".into(),
        }
    }
}

/// How clients must authenticate to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
pub enum AuthMethod {
    #[serde(rename = "trust")]
    Trust,
    #[serde(rename = "md5")]
    Md5,
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
}

impl AuthMethod {
    const NAMES: [(&'static str, AuthMethod); 3] = [
        ("trust", AuthMethod::Trust),
        ("md5", AuthMethod::Md5),
        ("scram-sha-256", AuthMethod::ScramSha256),
    ];
}

impl fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = Self::NAMES
            .iter()
            .find(|(_, m)| m == self)
            .map_or("?", |(n, _)| n);
        f.write_str(name)
    }
}

impl FromStr for AuthMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == s.trim())
            .map(|(_, m)| *m)
            .ok_or_else(|| {
                format!("unknown auth method {s:?} (expected trust, md5 or scram-sha-256)")
            })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// Server connections per (node, user, database): bounds the load pgrelay puts on
    /// each PostgreSQL, whatever the number of clients.
    pub size: usize,
    #[serde(with = "units::duration")]
    pub acquire_timeout: Duration,
    #[serde(with = "units::duration")]
    pub connect_timeout: Duration,
    #[serde(with = "units::duration")]
    pub idle_timeout: Duration,
    /// Prepared statements kept per server connection; past it the least recently used
    /// are closed (and re-prepared by a session that needs them again).
    pub prepared_statements_limit: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            size: 20,
            acquire_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(600),
            prepared_statements_limit: 256,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_message_size: ByteSize,
    pub max_clients: usize,
    #[serde(with = "units::duration")]
    pub startup_timeout: Duration,
    /// Threads serving sessions; 0: one per CPU core but one, at least one.
    pub worker_threads: usize,
}

impl LimitsConfig {
    /// Threads to serve sessions with on a host with `cores` cores available.
    ///
    /// By default one core is left to the rest of the host: pgrelay shares it with the
    /// application (as a sidecar) or PostgreSQL, and the kernel's network work for every
    /// proxied byte runs outside pgrelay's threads anyway. An event loop that has to be
    /// woken costs a context switch, so a thread more than the cores can keep busy costs
    /// CPU per query: on 2 cores under `pgbench -S -c 16`, 1 thread used 21–24 us of CPU
    /// per transaction, 2 threads 24–27 us, for the same throughput.
    pub fn threads(&self, cores: usize) -> usize {
        match self.worker_threads {
            0 => cores.saturating_sub(1).max(1),
            n => n,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_message_size: ByteSize(64 << 20),
            max_clients: 10_000,
            startup_timeout: Duration::from_secs(10),
            worker_threads: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Time between two heartbeats of one node.
    #[serde(with = "units::duration")]
    pub interval: Duration,
    /// How long one heartbeat (connecting included) may take.
    #[serde(with = "units::duration")]
    pub timeout: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval: Duration::from_millis(250),
            timeout: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    pub replica_reads: bool,
    /// A replica further behind than this (in time) takes no reads; `None` ("off" or
    /// "0s" in the file) switches the bound off.
    #[serde(with = "units::optional_duration")]
    pub max_replica_lag: Option<Duration>,
    /// The same in WAL bytes; `None` ("off" or 0) switches it off.
    #[serde(with = "units::optional_size")]
    pub max_replica_lag_bytes: Option<ByteSize>,
    /// Where a read goes when no replica may take it.
    pub when_no_replica: WhenNoReplica,
    /// The consistency level of a session that does not choose one (users may override).
    pub consistency: router::Consistency,
    /// How long a read waits for a replica to replay the session's floor before it goes
    /// to the primary.
    #[serde(with = "units::duration")]
    pub read_your_writes_timeout: Duration,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            replica_reads: true,
            max_replica_lag: Some(Duration::from_secs(1)),
            max_replica_lag_bytes: Some(ByteSize(16_000_000)),
            when_no_replica: WhenNoReplica::Primary,
            consistency: router::Consistency::Session,
            read_your_writes_timeout: Duration::from_millis(100),
        }
    }
}

impl RoutingConfig {
    pub fn lag_bounds(&self) -> router::LagBounds {
        router::LagBounds {
            time: self.max_replica_lag,
            bytes: self
                .max_replica_lag_bytes
                .map(|b| router::WalBytes(b.0 as u64)),
        }
    }
}

/// `routing.when_no_replica`: `primary` (read from the primary) or `error` (fail the read
/// with SQLSTATE 57P03).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WhenNoReplica {
    Primary,
    Error,
}

impl From<WhenNoReplica> for router::NoReplica {
    fn from(w: WhenNoReplica) -> Self {
        match w {
            WhenNoReplica::Primary => router::NoReplica::Primary,
            WhenNoReplica::Error => router::NoReplica::Error,
        }
    }
}

impl FromStr for WhenNoReplica {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "primary" => Ok(WhenNoReplica::Primary),
            "error" => Ok(WhenNoReplica::Error),
            other => Err(format!(
                "unknown value {other:?} (expected primary or error)"
            )),
        }
    }
}

/// The failover state file's name when `failover.state_file` is not set: it goes next
/// to the config file.
pub const STATE_FILE: &str = "pgrelay-state.json";

impl Config {
    /// Reads `path`, applies the process environment's `PGRELAY_*` overrides, validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        let mut config = Self::parse_named(&text, &file, |name| std::env::var(name).ok())?;
        if config.failover.state_file.is_none() {
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
            let dir = dir.unwrap_or_else(|| Path::new("."));
            config.failover.state_file = Some(dir.join(STATE_FILE));
        }
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// Like [`Config::load`] on text, with the environment injected so tests need not
    /// touch the process environment. Errors name the source `<config>`.
    pub fn parse(yaml: &str, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        Self::parse_named(yaml, "<config>", env)
    }

    /// [`Config::parse`] with the file name to put in error messages.
    pub fn parse_named(
        yaml: &str,
        file: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let index = YamlIndex::build(yaml);
        let mut config = if yaml.lines().all(is_blank_or_comment) {
            // An empty file is a valid start when everything comes from the environment.
            Config::default()
        } else {
            serde_saphyr::from_str::<Config>(yaml)
                .map_err(|e| ConfigError::from_yaml(file, &index, &e))?
        };
        let from_env = env::apply(&mut config, &env)?;
        validate::validate(&config).map_err(|v| v.locate(file, &index, &from_env))?;
        Ok(config)
    }

    pub fn user(&self, name: &str) -> Option<&UserConfig> {
        self.users.iter().find(|u| u.name == name)
    }

    /// The method this user must authenticate with: its own, else the global one.
    pub fn auth_for(&self, user: &UserConfig) -> AuthMethod {
        user.auth.unwrap_or(self.auth)
    }

    /// The commented example configuration shipped with pgrelay (`--print-example`).
    pub fn example() -> &'static str {
        include_str!("../../../config.example.yaml")
    }
}

fn is_blank_or_comment(line: &str) -> bool {
    let line = line.trim();
    line.is_empty() || line.starts_with('#') || line == "---"
}
