//! The one place where failures become what a PostgreSQL client understands: an
//! ErrorResponse with a real SQLSTATE and a readable message. Every other module returns
//! typed errors and lets this module decide what the client sees.

use bytes::Bytes;
use protocol::backend::{ErrorMessage, Severity};
use router::NodeId;
use std::time::Duration;

/// Why a client request (or the whole client session) could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid message from client: {0}")]
    Frame(#[from] protocol::FrameError),
    #[error("invalid startup packet: {0}")]
    Startup(#[from] protocol::StartupError),
    #[error("unsupported frontend protocol {major}.{minor}: pgrelay supports protocol 3.0")]
    UnsupportedProtocol { major: u16, minor: u16 },
    #[error("password authentication failed for user \"{0}\"")]
    AuthFailed(String),
    #[error("invalid authentication message: {0}")]
    AuthProtocol(String),
    #[error("pgrelay does not accept replication connections")]
    Replication,
    #[error("{0}")]
    InvalidSetting(#[from] router::ConsistencyParseError),
    #[error("sorry, too many clients already (limits.max_clients is {0})")]
    TooManyClients(usize),
    #[error("timed out after {0:?} waiting for the startup packet and authentication")]
    StartupTimeout(Duration),
    #[error("no primary is available to run this statement")]
    NoPrimary,
    #[error("no primary to run this statement after waiting {waited:?}: {reason}")]
    WritesHeld { reason: String, waited: Duration },
    #[error("no node is available")]
    NoNode,
    #[error("no replica within the lag bounds is available for this read (routing.when_no_replica is error)")]
    NoReplica,
    #[error(transparent)]
    Pool(#[from] crate::pool::PoolError),
    #[error(transparent)]
    Backend(#[from] crate::backend::BackendError),
    #[error("connection to node {0} was lost")]
    BackendLost(String),
    #[error("unexpected message type {0:?} from client")]
    UnexpectedMessage(char),
    #[error("invalid message from client: {0}")]
    Decode(#[from] protocol::DecodeError),
    #[error("client connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// With a single node the causal token is read when asked for; it cannot be read
    /// inside a failed transaction, where PostgreSQL runs nothing either.
    #[error("current transaction is aborted, commands ignored until end of transaction block")]
    TokenInFailedTransaction,
    #[error("pgrelay could not read the primary's WAL position for the causal token; ask again")]
    TokenUnknown,
}

impl ClientError {
    /// The SQLSTATE the client sees. Chosen to match what PostgreSQL itself (or libpq's
    /// expectations) would report for the same situation, so drivers react correctly.
    pub fn sqlstate(&self) -> &str {
        use crate::backend::BackendError as B;
        use crate::pool::PoolError as P;
        match self {
            Self::Startup(protocol::StartupError::UnsupportedVersion { .. }) => "0A000",
            Self::Startup(protocol::StartupError::MissingUser) => "28000",
            Self::Frame(_) | Self::Startup(_) | Self::AuthProtocol(_) | Self::Decode(_) => "08P01",
            Self::UnexpectedMessage(_) => "08P01",
            Self::UnsupportedProtocol { .. } | Self::Replication => "0A000",
            Self::AuthFailed(_) => "28P01",
            Self::InvalidSetting(_) => "22023",
            Self::TooManyClients(_) => "53300",
            Self::StartupTimeout(_) => "08006",
            Self::NoPrimary | Self::NoNode | Self::NoReplica => "57P03",
            Self::WritesHeld { .. } => "57P03",
            Self::Pool(P::Timeout { .. }) => "53300",
            Self::Pool(P::Closed) => "57P03",
            Self::Pool(P::Connect(e)) | Self::Backend(e) => match e {
                B::Server(fields) => fields.code.as_str(),
                B::Io(_) | B::Timeout(_) => "08001",
                B::Auth(_) => "28P01",
                B::Protocol(_) | B::Frame(_) => "08P01",
            },
            Self::BackendLost(_) | Self::Io(_) => "08006",
            Self::TokenInFailedTransaction => "25P02",
            Self::TokenUnknown => "55000",
        }
    }

    /// An ErrorResponse for this error. `fatal` when the session ends with it.
    pub fn to_message(&self, fatal: bool) -> Bytes {
        let severity = if fatal {
            Severity::Fatal
        } else {
            Severity::Error
        };
        let server = match self {
            Self::Pool(crate::pool::PoolError::Connect(crate::backend::BackendError::Server(
                f,
            )))
            | Self::Backend(crate::backend::BackendError::Server(f)) => Some(f),
            _ => None,
        };
        if let Some(f) = server {
            // PostgreSQL's own words, with its detail and hint.
            let mut m = ErrorMessage::new(severity, &f.code, &f.message);
            if let Some(d) = &f.detail {
                m = m.with_detail(d);
            }
            if let Some(h) = &f.hint {
                m = m.with_hint(h);
            }
            return protocol::backend::error_response(&m);
        }
        let text = self.to_string();
        protocol::backend::error_response(&ErrorMessage::new(severity, self.sqlstate(), &text))
    }
}

impl ClientError {
    /// Might a primary turn up if the unit waits: none is known (a failover, held
    /// writes), or the one known cannot be reached (it may be failing over).
    pub fn awaits_primary(&self) -> bool {
        use crate::backend::BackendError as B;
        use crate::pool::PoolError as P;
        matches!(
            self,
            Self::NoPrimary
                | Self::Pool(P::Closed)
                | Self::Pool(P::Connect(B::Io(_) | B::Timeout(_)))
        )
    }
}

impl From<router::NoNode> for ClientError {
    fn from(e: router::NoNode) -> Self {
        match e {
            router::NoNode::NoPrimary => ClientError::NoPrimary,
            router::NoNode::NoReplica => ClientError::NoReplica,
        }
    }
}

/// An ErrorResponse that pgrelay itself raises in the middle of a session.
pub fn error(code: &str, message: &str) -> Bytes {
    protocol::backend::error_response(&ErrorMessage::error(code, message))
}

/// A short name for a node in messages.
pub fn node_label(names: &[String], id: NodeId) -> String {
    names.get(id.0).cloned().unwrap_or_else(|| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_are_real_codes() {
        let cases: Vec<(ClientError, &str)> = vec![
            (ClientError::AuthFailed("app".into()), "28P01"),
            (ClientError::Replication, "0A000"),
            (ClientError::TooManyClients(10), "53300"),
            (ClientError::NoPrimary, "57P03"),
            (ClientError::NoReplica, "57P03"),
            (ClientError::BackendLost("pg0".into()), "08006"),
            (ClientError::UnexpectedMessage('x'), "08P01"),
            (ClientError::TokenInFailedTransaction, "25P02"),
            (ClientError::TokenUnknown, "55000"),
            (
                ClientError::UnsupportedProtocol { major: 2, minor: 0 },
                "0A000",
            ),
        ];
        for (err, code) in cases {
            assert_eq!(err.sqlstate(), code, "{err}");
            let msg = err.to_message(false);
            assert_eq!(msg[0], b'E');
            let text = String::from_utf8_lossy(&msg);
            assert!(text.contains(code), "{text}");
        }
    }

    /// The session returns `Result<_, ClientError>` from every step of every message:
    /// a large error makes each of them costly to move even when nothing failed.
    #[test]
    fn errors_stay_small() {
        assert!(std::mem::size_of::<ClientError>() <= 48);
        assert!(std::mem::size_of::<crate::pool::PoolError>() <= 48);
    }
}
