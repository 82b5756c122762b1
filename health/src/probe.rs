//! One check of one node over its control connection. Kept separate from the loop so
//! the heartbeat (LSNs, lag) can extend what a check learns without touching scheduling.

use router::{NodeId, Role};
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
    #[error("unexpected answer to pg_is_in_recovery(): {0:?}")]
    UnexpectedReply(String),
}

/// What one check learned.
pub type ProbeOutcome = Result<Role, ProbeError>;

/// `pg_is_in_recovery()` as text (simple protocol: one round trip, no prepare).
pub fn role_from_recovery_flag(text: &str) -> Result<Role, ProbeError> {
    match text {
        "t" => Ok(Role::Replica),
        "f" => Ok(Role::Primary),
        other => Err(ProbeError::UnexpectedReply(other.to_string())),
    }
}

async fn connect(
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
        .application_name("pgrelay-health")
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

async fn ask_role(client: &Client) -> ProbeOutcome {
    let messages = client
        .simple_query("SELECT pg_is_in_recovery()")
        .await
        .map_err(ProbeError::Query)?;
    let flag = messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => {
            Some(row.try_get(0).ok().flatten().unwrap_or("").to_string())
        }
        _ => None,
    });
    role_from_recovery_flag(flag.as_deref().unwrap_or(""))
}

/// Checks one node, reusing `client` when it is still open. Returns the client to keep
/// for the next check (none after a failure, so the next check reconnects).
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
        let role = ask_role(&client).await?;
        Ok::<_, ProbeError>((client, role))
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok((client, role))) => (Some(client), Ok(role)),
        Ok(Err(e)) => (None, Err(e)),
        Err(_) => (None, Err(ProbeError::Timeout(timeout))),
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
}
