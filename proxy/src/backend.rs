//! One connection from pgrelay to a PostgreSQL node: the startup handshake (with the
//! client's own credentials) and the per-connection state the session layer relies on
//! (which prepared statements exist here, which cancel key reaches it).

use bytes::{Bytes, BytesMut};
use protocol::backend::{AuthRequest, ErrorFields};
use protocol::{Frame, FrameError};
use router::NodeId;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// Boxed: every `Result` on the session's hot path carries this type, and five
    /// strings inline made each of them 128 bytes to move (bench/callgrind: 9,982 ->
    /// 9,738 instructions per `-S` transaction once boxed).
    #[error("server refused the connection: {0}")]
    Server(Box<ServerError>),
    #[error("authentication with the server failed: {0}")]
    Auth(String),
    #[error("unexpected message from server: {0}")]
    Protocol(String),
    #[error("invalid message from server: {0}")]
    Frame(#[from] FrameError),
}

/// An ErrorResponse from a server, kept to pass on to the client as PostgreSQL said it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl ServerError {
    pub fn from_fields(f: &ErrorFields<'_>) -> Self {
        let text = |b: Option<&[u8]>| b.map(|b| String::from_utf8_lossy(b).into_owned());
        ServerError {
            severity: f.severity.unwrap_or("ERROR").to_string(),
            code: f.code.unwrap_or("XX000").to_string(),
            message: text(f.message).unwrap_or_default(),
            detail: text(f.detail),
            hint: text(f.hint),
        }
    }
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (SQLSTATE {})", self.message, self.code)
    }
}

/// The key PostgreSQL gave us for cancelling whatever runs on this connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelKey {
    pub pid: u32,
    pub key: Vec<u8>,
}

/// What is needed to open a connection. Cheap to clone (shared by a pool).
#[derive(Clone)]
pub struct ConnectSpec {
    pub node: NodeId,
    pub addr: String,
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    /// Startup parameters other than user and database, sent as the client sent them.
    pub params: Vec<(String, String)>,
    pub connect_timeout: Duration,
    pub max_message: usize,
}

impl std::fmt::Debug for ConnectSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectSpec")
            .field("node", &self.node)
            .field("addr", &self.addr)
            .field("user", &self.user)
            .field("database", &self.database)
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

/// An authenticated connection, idle at ReadyForQuery when it sits in a pool.
pub struct BackendConn {
    pub stream: TcpStream,
    pub rbuf: BytesMut,
    pub node: NodeId,
    pub cancel: std::sync::Arc<crate::cancel::CancelTarget>,
    /// ParameterStatus values reported at startup (and updated as they change).
    pub params: Vec<(String, String)>,
    /// Proxy-wide statement names already prepared on this connection.
    pub prepared: crate::prepared::PreparedCache,
    /// Session settings in force here, as last read back or set by pgrelay.
    pub settings: crate::session::settings::Settings,
    /// Its state is no longer known (a hidden statement failed): close, don't pool.
    pub discard: bool,
    /// Identity of the session statement currently in the unnamed slot, if any.
    pub unnamed: Option<u64>,
    /// The highest replay position this connection's server reported. A lower bound of
    /// what it shows now: a server that restarted (and may show less) would have
    /// closed this connection.
    pub replay_seen: router::Lsn,
    /// pgrelay's own WAL-position statements are prepared here (write, replay).
    pub own_prepared: [bool; 2],
    /// The transaction status of the last ReadyForQuery the server sent, whoever's
    /// message it answered (the client's, pgrelay's own, or one whose answers were
    /// swallowed). Only an idle connection goes back to the pool.
    pub tx: protocol::backend::TxStatus,
    pub created: Instant,
    pub last_used: Instant,
}

impl BackendConn {
    /// Open and authenticate. Returns once the server said ReadyForQuery.
    pub async fn connect(spec: &ConnectSpec) -> Result<BackendConn, BackendError> {
        tokio::time::timeout(spec.connect_timeout, Self::connect_inner(spec))
            .await
            .map_err(|_| BackendError::Timeout(spec.connect_timeout))?
    }

    async fn connect_inner(spec: &ConnectSpec) -> Result<BackendConn, BackendError> {
        let mut stream = TcpStream::connect(&spec.addr).await?;
        stream.set_nodelay(true)?;
        let mut startup: Vec<(&str, &str)> = vec![
            ("user", spec.user.as_str()),
            ("database", spec.database.as_str()),
        ];
        startup.extend(spec.params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let startup = protocol::frontend::build_startup(&startup)
            .map_err(|e| BackendError::Protocol(e.to_string()))?;
        stream.write_all(&startup).await?;

        let mut auth = protocol::auth::BackendAuth::new(&spec.user, spec.password.as_deref());
        let mut rbuf = BytesMut::with_capacity(8192);
        let mut params = Vec::new();
        let mut cancel = CancelKey {
            pid: 0,
            key: Vec::new(),
        };
        loop {
            let frame = read_frame(&mut stream, &mut rbuf, spec.max_message).await?;
            match frame.tag() {
                b'R' => {
                    let req = protocol::backend::authentication(&frame)
                        .map_err(|e| BackendError::Protocol(e.to_string()))?;
                    if let AuthRequest::Ok = req {
                        continue;
                    }
                    let reply = auth
                        .respond(req)
                        .map_err(|e| BackendError::Auth(e.to_string()))?;
                    if let Some(reply) = reply {
                        stream.write_all(&reply).await?;
                    }
                }
                b'S' => {
                    let (k, v) = protocol::backend::parameter_status(&frame)
                        .map_err(|e| BackendError::Protocol(e.to_string()))?;
                    set_param(&mut params, k, v);
                }
                b'K' => {
                    let (pid, key) = protocol::backend::backend_key_data(&frame)
                        .map_err(|e| BackendError::Protocol(e.to_string()))?;
                    cancel = CancelKey { pid, key };
                }
                b'E' => {
                    let fields = protocol::backend::error_fields(&frame)
                        .map_err(|e| BackendError::Protocol(e.to_string()))?;
                    return Err(BackendError::Server(Box::new(ServerError::from_fields(
                        &fields,
                    ))));
                }
                b'N' | b'v' => {}
                b'Z' => break,
                other => {
                    return Err(BackendError::Protocol(format!(
                        "message type {:?} during startup",
                        other as char
                    )))
                }
            }
        }
        let now = Instant::now();
        Ok(BackendConn {
            stream,
            rbuf,
            node: spec.node,
            cancel: std::sync::Arc::new(crate::cancel::CancelTarget {
                addr: spec.addr.clone(),
                key: cancel,
            }),
            params,
            prepared: Default::default(),
            settings: Vec::new(),
            discard: false,
            unnamed: None,
            replay_seen: router::Lsn(0),
            own_prepared: [false; 2],
            tx: protocol::backend::TxStatus::Idle,
            created: now,
            last_used: now,
        })
    }

    /// True when the server closed the socket while the connection sat idle (node restart,
    /// idle timeout on the server). Checked without blocking before a pooled connection
    /// is handed out, so a dead one is replaced instead of failing the client's statement.
    pub fn is_closed(&self) -> bool {
        let mut probe = [0u8; 1];
        match self.stream.try_read(&mut probe) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => !self.rbuf.is_empty(),
            // Data while idle (or EOF, or an error) means the connection is not clean.
            _ => true,
        }
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

pub fn set_param(params: &mut Vec<(String, String)>, k: &str, v: &str) {
    match params.iter_mut().find(|(name, _)| name == k) {
        Some(slot) => slot.1 = v.to_string(),
        None => params.push((k.to_string(), v.to_string())),
    }
}

/// Read until one whole message is buffered. For the control-flow parts (startup), not
/// the data path, which frames incrementally inside the session loop.
pub async fn read_frame(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Frame, BackendError> {
    loop {
        if let Some(frame) = protocol::parse_frame(buf, max)? {
            return Ok(frame);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(BackendError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
}

/// Ask a node to cancel whatever runs on the connection with `key`. PostgreSQL answers a
/// CancelRequest by closing the socket, so there is nothing to read.
pub async fn send_cancel(
    addr: &str,
    key: &CancelKey,
    timeout: Duration,
) -> Result<(), BackendError> {
    let fut = async {
        let mut s = TcpStream::connect(addr).await?;
        let msg: Bytes = protocol::frontend::build_cancel_request(key.pid, &key.key);
        s.write_all(&msg).await?;
        let mut sink = [0u8; 16];
        let _ = s.read(&mut sink).await;
        Ok::<_, BackendError>(())
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| BackendError::Timeout(timeout))?
}
