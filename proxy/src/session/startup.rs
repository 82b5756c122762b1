//! Login: the untagged startup exchange, authentication of the client against the
//! configured users, and the greeting (ParameterStatus from a real backend, BackendKeyData
//! issued by pgrelay).

use super::engine::ClientIdentity;
use super::Shared;
use crate::cancel::Registration;
use crate::config::AuthMethod;
use crate::errors::ClientError;
use crate::pool::PoolKey;
use bytes::BytesMut;
use protocol::backend::TxStatus;
use protocol::{Frame, StartupMessage, StartupRequest};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub enum Outcome {
    /// Logged in: serve the session. `rest` holds bytes the client already sent.
    Session(ClientIdentity, Registration, BytesMut),
    /// Nothing more to do (a cancel request, or the client left during login).
    Done,
}

pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut S,
    ctx: &Shared,
) -> Result<Outcome, ClientError> {
    let mut buf = BytesMut::with_capacity(1024);
    let startup = loop {
        match protocol::parse_startup(&mut buf, ctx.max_message)? {
            Some(StartupRequest::SslRequest | StartupRequest::GssEncRequest) => {
                // No TLS yet: 'N' tells the client to go on in plain text (or give up,
                // if it requires encryption).
                client.write_all(b"N").await?;
            }
            Some(StartupRequest::Cancel { pid, key }) => {
                cancel(ctx, pid, &key).await;
                return Ok(Outcome::Done);
            }
            Some(StartupRequest::Startup(m)) => break m,
            None => {
                if client.read_buf(&mut buf).await? == 0 {
                    return Ok(Outcome::Done);
                }
            }
        }
    };
    if startup.major != 3 {
        return Err(ClientError::UnsupportedProtocol {
            major: startup.major,
            minor: startup.minor,
        });
    }
    if startup.minor > 0 || !startup.protocol_options.is_empty() {
        client
            .write_all(&protocol::backend::negotiate_protocol_version(
                0,
                &startup.protocol_options,
            ))
            .await?;
    }
    let id = identity(&startup)?;
    let live = ctx.live.load_full();
    let Some(user) = live.users.get(&id.user) else {
        return Err(ClientError::AuthFailed(id.user));
    };
    match user.method {
        AuthMethod::Trust => {}
        AuthMethod::Md5 => {
            let salt: [u8; 4] = rand::random();
            client.write_all(&protocol::backend::auth_md5(salt)).await?;
            let Some(msg) = read_message(client, &mut buf, ctx.max_message).await? else {
                return Ok(Outcome::Done);
            };
            let response = protocol::frontend::password_message(&msg)?;
            if !protocol::auth::md5_matches(&id.user, &user.password, salt, response) {
                return Err(ClientError::AuthFailed(id.user));
            }
        }
        AuthMethod::ScramSha256 => {
            if !scram(client, &mut buf, ctx, user, &id.user).await? {
                return Ok(Outcome::Done);
            }
        }
    }
    let id = ClientIdentity {
        password: Some(user.password.clone()),
        ..id
    };
    let params = greeting_params(ctx, &id).await?;
    let reg = ctx.cancels.register();
    let mut out = BytesMut::with_capacity(512);
    out.extend_from_slice(&protocol::backend::auth_ok());
    for (k, v) in &params {
        out.extend_from_slice(&protocol::backend::build_parameter_status(k, v));
    }
    out.extend_from_slice(&protocol::backend::build_backend_key_data(
        reg.pid,
        &reg.secret.to_be_bytes(),
    ));
    out.extend_from_slice(&protocol::backend::ready_for_query(TxStatus::Idle));
    client.write_all(&out).await?;
    Ok(Outcome::Session(id, reg, buf))
}

fn identity(m: &StartupMessage) -> Result<ClientIdentity, ClientError> {
    if m.get("replication")
        .is_some_and(|v| !matches!(v, "false" | "off" | "no" | "0"))
    {
        return Err(ClientError::Replication);
    }
    let user = m.get("user").unwrap_or_default().to_string();
    let database = m
        .get("database")
        .filter(|d| !d.is_empty())
        .unwrap_or(&user)
        .to_string();
    let mut params: Vec<(String, String)> = m
        .params
        .iter()
        .filter(|(k, _)| k != "user" && k != "database" && k != "replication")
        .cloned()
        .collect();
    let consistency = super::consistency::take_startup_level(&mut params)?;
    params.sort();
    Ok(ClientIdentity {
        user,
        database,
        password: None,
        params,
        consistency,
    })
}

/// ParameterStatus values from a real backend of the primary (or, without one, any node
/// that is up), opened with the client's own startup parameters.
async fn greeting_params(
    ctx: &Shared,
    id: &ClientIdentity,
) -> Result<Vec<(String, String)>, ClientError> {
    let node = {
        let topo = ctx.topology.load();
        let node = topo.primary().or_else(|| topo.nodes.iter().find(|n| n.up));
        node.ok_or(ClientError::NoNode)?.id
    };
    let spec = ctx.nodes.get(node.0).ok_or(ClientError::NoNode)?;
    let key = PoolKey {
        node,
        user: id.user.clone(),
        database: id.database.clone(),
        params: id.params.clone(),
    };
    let pool = ctx
        .pools
        .get(&key, &spec.name, &spec.addr, id.password.as_deref());
    Ok(pool.startup_params().await?)
}

/// SCRAM-SHA-256 exchange. Ok(false) if the client left midway (psql does, to prompt for
/// a password).
async fn scram<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut S,
    buf: &mut BytesMut,
    ctx: &Shared,
    user: &super::UserAuth,
    name: &str,
) -> Result<bool, ClientError> {
    client
        .write_all(&protocol::backend::auth_sasl(&["SCRAM-SHA-256"]))
        .await?;
    let Some(msg) = read_message(client, buf, ctx.max_message).await? else {
        return Ok(false);
    };
    let initial = protocol::frontend::sasl_initial_response(&msg)?;
    if initial.mechanism != protocol::auth::SCRAM_SHA_256 {
        return Err(ClientError::AuthProtocol(format!(
            "unsupported SASL mechanism {:?}",
            initial.mechanism
        )));
    }
    let data = initial.data.unwrap_or_default();
    let mut server = protocol::auth::ScramServer::new(&user.scram);
    let first = server.client_first(data).map_err(|e| auth_error(e, name))?;
    client
        .write_all(&protocol::backend::auth_sasl_continue(&first))
        .await?;
    let Some(msg) = read_message(client, buf, ctx.max_message).await? else {
        return Ok(false);
    };
    let last = server
        .client_final(protocol::frontend::sasl_response(&msg)?)
        .map_err(|e| auth_error(e, name))?;
    client
        .write_all(&protocol::backend::auth_sasl_final(&last))
        .await?;
    Ok(true)
}

fn auth_error(e: protocol::auth::AuthError, user: &str) -> ClientError {
    match e {
        protocol::auth::AuthError::WrongPassword => ClientError::AuthFailed(user.to_string()),
        other => ClientError::AuthProtocol(other.to_string()),
    }
}

async fn read_message<S: AsyncRead + Unpin>(
    client: &mut S,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<Frame>, ClientError> {
    loop {
        if let Some(f) = protocol::parse_frame(buf, max)? {
            return Ok(Some(f));
        }
        if client.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

async fn cancel(ctx: &Shared, pid: u32, key: &[u8]) {
    let Some(target) = ctx.cancels.lookup(pid, key) else {
        return;
    };
    let addr = &target.addr;
    if let Err(e) = crate::backend::send_cancel(addr, &target.key, ctx.cancel_timeout).await {
        tracing::warn!(%addr, error = %e, "could not deliver a cancel request");
    }
}
