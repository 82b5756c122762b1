//! One heartbeat of one node over its control connection: role, timeline, WAL positions,
//! replay age, WAL receiver status, and (on a primary) its standbys. Kept separate from
//! the loop so scheduling is tested without a database.

use router::{Lsn, NodeId, Role};
use std::fmt;
use std::time::Duration;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// A node to watch, as configured (its role is never configured: it is discovered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    pub id: NodeId,
    pub name: String,
    pub host: String,
    pub port: u16,
}

impl NodeSpec {
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// The account pgrelay's own checks log in with.
#[derive(Clone, PartialEq, Eq)]
pub struct ControlCreds {
    pub user: String,
    pub password: String,
    pub database: String,
}

impl fmt::Debug for ControlCreds {
    /// Written by hand so the password never reaches a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlCreds")
            .field("user", &self.user)
            .field("password", &"***")
            .field("database", &self.database)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("connect failed: {0}")]
    Connect(#[source] tokio_postgres::Error),
    #[error("query failed: {0}")]
    Query(#[source] tokio_postgres::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("unexpected answer to the heartbeat query: {0:?}")]
    UnexpectedReply(String),
}

/// A standby as the primary sees it in `pg_stat_replication`: the second source of lag.
/// Matched to a node by `application_name` (the node's configured name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandbyReport {
    pub application_name: String,
    pub replay: Option<Lsn>,
    /// The primary's own measure of replay lag (NULL once the standby is idle and caught up).
    pub replay_lag: Option<Duration>,
    /// `sync_state`: `async`, `potential`, `sync` or `quorum`. Failover may only choose
    /// a standby that was `sync` or `quorum` when the primary ran synchronous replication.
    pub sync_state: Option<String>,
    /// `pg_stat_replication.flush_lsn`: what the standby has made durable.
    pub flush: Option<Lsn>,
}

/// What one heartbeat learned from a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub role: Role,
    pub timeline: Option<u32>,
    /// `pg_current_wal_lsn()`, primaries only.
    pub current: Option<Lsn>,
    /// `pg_last_wal_receive_lsn()` / `pg_last_wal_replay_lsn()`, replicas only.
    pub receive: Option<Lsn>,
    pub replay: Option<Lsn>,
    /// `now() - pg_last_xact_replay_timestamp()` on the node's own clock. It overstates
    /// lag on an idle primary, so it is only a fallback (see [`crate::lag`]).
    pub replay_age: Option<Duration>,
    /// `pg_stat_wal_receiver.status` (`streaming`, ...), none without a receiver.
    pub wal_receiver: Option<String>,
    /// `pg_stat_replication` rows (empty on a replica without cascading standbys).
    pub standbys: Vec<StandbyReport>,
    /// `default_transaction_read_only` is on: the node was fenced (or configured so).
    pub read_only: bool,
    /// `synchronous_standby_names` (empty when replication is asynchronous).
    pub sync_names: String,
}

impl Sample {
    /// A sample with only the role, for tests and tools.
    pub fn of_role(role: Role) -> Sample {
        Sample {
            role,
            timeline: None,
            current: None,
            receive: None,
            replay: None,
            replay_age: None,
            wal_receiver: None,
            standbys: Vec::new(),
            read_only: false,
            sync_names: String::new(),
        }
    }
}

/// What one check learned.
pub type ProbeOutcome = Result<Sample, ProbeError>;

/// The heartbeat: two statements, one round trip (simple protocol, no prepare). The
/// first describes the node, the second lists its standbys when it is a primary.
/// `pg_current_wal_lsn()` and `pg_walfile_name()` fail during recovery, hence the CASEs.
/// A primary's timeline comes from its current WAL file name: right after a promotion
/// the checkpoint's timeline is still the old one until the next checkpoint.
pub const HEARTBEAT_SQL: &str = "SELECT pg_is_in_recovery(), \
CASE WHEN pg_is_in_recovery() \
 THEN COALESCE((SELECT received_tli FROM pg_stat_wal_receiver LIMIT 1), (SELECT timeline_id FROM pg_control_checkpoint())) \
 ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END, \
CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn() END, \
pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn(), \
extract(epoch FROM now() - pg_last_xact_replay_timestamp()), \
(SELECT status FROM pg_stat_wal_receiver LIMIT 1), \
current_setting('default_transaction_read_only'), current_setting('synchronous_standby_names'); \
SELECT application_name, replay_lsn, extract(epoch FROM replay_lag), sync_state, flush_lsn FROM pg_stat_replication";

/// `pg_is_in_recovery()` as text.
pub fn role_from_recovery_flag(text: &str) -> Result<Role, ProbeError> {
    match text {
        "t" => Ok(Role::Replica),
        "f" => Ok(Role::Primary),
        other => Err(ProbeError::UnexpectedReply(other.to_string())),
    }
}

fn seconds(text: Option<&str>) -> Option<Duration> {
    let secs: f64 = text?.parse().ok()?;
    // Clocks can make the age slightly negative; that is no age at all.
    Duration::try_from_secs_f64(secs.max(0.0)).ok()
}

fn lsn(text: Option<&str>) -> Option<Lsn> {
    text?.parse().ok()
}

/// Parses the rows of [`HEARTBEAT_SQL`]: `node` is the first statement's one row (as
/// text columns), `standbys` the second statement's rows.
pub fn parse_sample(node: &[Option<&str>], standbys: &[[Option<&str>; 5]]) -> ProbeOutcome {
    let col = |i: usize| node.get(i).copied().flatten();
    let role = role_from_recovery_flag(col(0).unwrap_or(""))?;
    Ok(Sample {
        role,
        timeline: col(1).and_then(|t| t.parse().ok()),
        current: lsn(col(2)),
        receive: lsn(col(3)),
        replay: lsn(col(4)),
        replay_age: seconds(col(5)),
        wal_receiver: col(6).map(str::to_string),
        read_only: col(7) == Some("on"),
        sync_names: col(8).unwrap_or("").to_string(),
        standbys: standbys
            .iter()
            .map(|[name, replay, lag, sync, flush]| StandbyReport {
                application_name: name.unwrap_or("").to_string(),
                replay: lsn(*replay),
                replay_lag: seconds(*lag),
                sync_state: sync.map(str::to_string),
                flush: lsn(*flush),
            })
            .collect(),
    })
}

pub(crate) async fn connect(
    spec: &NodeSpec,
    creds: &ControlCreds,
    timeout: Duration,
) -> Result<Client, ProbeError> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&spec.host)
        .port(spec.port)
        .user(&creds.user)
        .dbname(&creds.database)
        .application_name(APPLICATION_NAME)
        .connect_timeout(timeout);
    if !creds.password.is_empty() {
        config.password(&creds.password);
    }
    let (client, connection) = config.connect(NoTls).await.map_err(ProbeError::Connect)?;
    let name = spec.name.clone();
    // The connection future drives the socket; it ends when the client is dropped.
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(node = %name, error = %e, "control connection closed");
        }
    });
    Ok(client)
}

/// `application_name` of pgrelay's control connections, so they can be told apart in
/// `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "pgrelay-health";

async fn heartbeat(client: &Client) -> ProbeOutcome {
    let messages = client
        .simple_query(HEARTBEAT_SQL)
        .await
        .map_err(ProbeError::Query)?;
    // Rows of the first statement come before its CommandComplete.
    let mut statement = 0;
    let mut node: Option<Vec<Option<String>>> = None;
    let mut standbys: Vec<[Option<String>; 5]> = Vec::new();
    for m in &messages {
        match m {
            SimpleQueryMessage::Row(row) => {
                let get = |i: usize| row.try_get(i).ok().flatten().map(str::to_string);
                if statement == 0 {
                    node.get_or_insert_with(|| (0..row.len()).map(get).collect());
                } else {
                    standbys.push([get(0), get(1), get(2), get(3), get(4)]);
                }
            }
            SimpleQueryMessage::CommandComplete(_) => statement += 1,
            _ => {}
        }
    }
    let node = node.ok_or_else(|| ProbeError::UnexpectedReply("no row".into()))?;
    let node: Vec<Option<&str>> = node.iter().map(Option::as_deref).collect();
    let standbys: Vec<[Option<&str>; 5]> = standbys
        .iter()
        .map(|row| row.each_ref().map(Option::as_deref))
        .collect();
    parse_sample(&node, &standbys)
}

/// One heartbeat of one node, reusing `client` when it is still open. Returns the client
/// to keep for the next beat (none after a failure, so the next beat reconnects).
pub async fn probe(
    spec: &NodeSpec,
    creds: &ControlCreds,
    client: Option<Client>,
    timeout: Duration,
) -> (Option<Client>, ProbeOutcome) {
    let attempt = async {
        let client = match client {
            Some(c) if !c.is_closed() => c,
            _ => connect(spec, creds, timeout).await?,
        };
        let sample = heartbeat(&client).await?;
        Ok::<_, ProbeError>((client, sample))
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok((client, sample))) => (Some(client), Ok(sample)),
        Ok(Err(e)) => (None, Err(e)),
        Err(_) => (None, Err(ProbeError::Timeout(timeout))),
    }
}

/// A node's heartbeat source: the real one is [`PgPulse`]; tests script their own.
pub trait Pulse: Send + 'static {
    /// One heartbeat (bounded by the implementation's own timeout).
    fn beat(&mut self) -> impl std::future::Future<Output = ProbeOutcome> + Send;
}

/// Heartbeats over one small tokio-postgres control connection, kept open between beats
/// and reopened after a failure.
pub struct PgPulse {
    pub spec: NodeSpec,
    pub creds: ControlCreds,
    pub timeout: Duration,
    client: Option<Client>,
}

impl PgPulse {
    pub fn new(spec: NodeSpec, creds: ControlCreds, timeout: Duration) -> Self {
        PgPulse {
            spec,
            creds,
            timeout,
            client: None,
        }
    }
}

impl Pulse for PgPulse {
    async fn beat(&mut self) -> ProbeOutcome {
        let (client, outcome) =
            probe(&self.spec, &self.creds, self.client.take(), self.timeout).await;
        self.client = client;
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_flag() {
        let cases = [
            ("t", Some(Role::Replica)),
            ("f", Some(Role::Primary)),
            ("", None),
            ("true", None),
        ];
        for (text, want) in cases {
            assert_eq!(role_from_recovery_flag(text).ok(), want, "{text:?}");
        }
    }

    #[test]
    fn creds_debug_hides_password() {
        let c = ControlCreds {
            user: "u".into(),
            password: "hunter2".into(),
            database: "d".into(),
        };
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("***"),
            "{shown}"
        );
    }

    #[test]
    fn addr_brackets_ipv6() {
        let spec = |host: &str| NodeSpec {
            id: NodeId(0),
            name: "a".into(),
            host: host.into(),
            port: 5,
        };
        assert_eq!(spec("127.0.0.1").addr(), "127.0.0.1:5");
        assert_eq!(spec("::1").addr(), "[::1]:5");
    }

    #[test]
    fn parses_primary_and_replica_samples() {
        let primary = parse_sample(
            &[
                Some("f"),
                Some("1"),
                Some("0/3000060"),
                None,
                None,
                None,
                None,
            ],
            &[
                [
                    Some("pg1"),
                    Some("0/3000000"),
                    Some("0.25"),
                    Some("quorum"),
                    Some("0/3000010"),
                ],
                [Some("x"), None, None, None, None],
            ],
        )
        .unwrap();
        assert_eq!(primary.role, Role::Primary);
        assert_eq!(primary.timeline, Some(1));
        assert_eq!(primary.current, Some(Lsn(0x300_0060)));
        assert_eq!(primary.replay, None);
        assert_eq!(
            primary.standbys,
            vec![
                StandbyReport {
                    application_name: "pg1".into(),
                    replay: Some(Lsn(0x300_0000)),
                    replay_lag: Some(Duration::from_millis(250)),
                    sync_state: Some("quorum".into()),
                    flush: Some(Lsn(0x300_0010)),
                },
                StandbyReport {
                    application_name: "x".into(),
                    replay: None,
                    replay_lag: None,
                    sync_state: None,
                    flush: None,
                }
            ]
        );
        let replica = parse_sample(
            &[
                Some("t"),
                Some("2"),
                None,
                Some("0/5000000"),
                Some("0/4000000"),
                Some("-0.001"),
                Some("streaming"),
                Some("on"),
                Some("ANY 1 (*)"),
            ],
            &[],
        )
        .unwrap();
        assert_eq!(replica.role, Role::Replica);
        assert_eq!(replica.receive, Some(Lsn(0x500_0000)));
        assert_eq!(replica.replay, Some(Lsn(0x400_0000)));
        assert_eq!(replica.replay_age, Some(Duration::ZERO));
        assert_eq!(replica.wal_receiver.as_deref(), Some("streaming"));
        assert!(replica.read_only && !primary.read_only);
        assert_eq!(replica.sync_names, "ANY 1 (*)");
        assert!(parse_sample(&[Some("maybe")], &[]).is_err());
        assert!(parse_sample(&[], &[]).is_err());
    }
}
