//! The data path of one client session after login: frame client messages, route each
//! unit, lease a backend, forward bytes both ways, and give the backend back as soon as
//! ReadyForQuery says the transaction is over.
//!
//! Backend bytes are forwarded as received; only a handful of message types are looked
//! at (ReadyForQuery, ErrorResponse, ParameterStatus and the answers that the
//! expectation queue counts). DataRow is never decoded.

use super::expect::{Expect, Expectations};
use super::route::{ends_unit, is_boundary, is_session_message, unit_class};
use super::statements::{backend_name, Statement, Statements};
use super::Shared;
use crate::cancel::Registration;
use crate::errors::ClientError;
use crate::pool::{Lease, Pool, PoolKey};
use bytes::{BufMut, BytesMut};
use protocol::backend::TxStatus;
use protocol::{Frame, ObjectKind};
use router::{Class, NodeId, PinReason, Route};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Client messages queued while waiting to be routed are capped; past this, pgrelay
/// stops reading from the client (back-pressure) instead of buffering without bound.
const QUEUE_CAP: usize = 1 << 20;
/// A read routed to a replica is held back until it completes, so that a 25006 ("cannot
/// execute in a read-only transaction") can be retried on the primary unseen. Past this
/// many bytes of answer it is released to the client and can no longer be retried.
const HOLD_CAP: usize = 64 * 1024;

/// Who the client is, as settled at login.
#[derive(Clone)]
pub struct ClientIdentity {
    pub user: String,
    pub database: String,
    pub password: Option<String>,
    /// Startup parameters other than user and database: part of the pool key.
    pub params: Vec<(String, String)>,
}

struct Hold {
    frames: Vec<Frame>,
    mark: usize,
}

pub struct Engine<S> {
    client: S,
    ctx: Arc<Shared>,
    id: ClientIdentity,
    cancel: Registration,
    cbuf: BytesMut,
    out: BytesMut,
    pools: Vec<Option<Arc<Pool>>>,
    lease: Option<Lease>,
    route: Option<Route>,
    wbuf: BytesMut,
    exp: Expectations,
    stmts: Statements,
    queued: VecDeque<Frame>,
    queued_bytes: usize,
    /// The unit on the current lease is still open (sent up to a Flush, not a Sync).
    streaming: bool,
    tx: TxStatus,
    pinned: Option<PinReason>,
    hold: Option<Hold>,
    /// Swallowing a replica's 25006 answer; the held unit re-runs on the primary.
    retrying: Option<Vec<Frame>>,
    force_primary: bool,
    /// A unit failed before reaching a backend; drop messages until Sync, then answer it.
    client_skip: bool,
    last_error_fatal: bool,
    closing: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Engine<S> {
    pub fn new(
        client: S,
        ctx: Arc<Shared>,
        id: ClientIdentity,
        cancel: Registration,
        rest: BytesMut,
    ) -> Self {
        let nodes = ctx.nodes.len();
        Engine {
            client,
            ctx,
            id,
            cancel,
            cbuf: rest,
            out: BytesMut::with_capacity(8192),
            pools: vec![None; nodes],
            lease: None,
            route: None,
            wbuf: BytesMut::with_capacity(8192),
            exp: Expectations::default(),
            stmts: Statements::default(),
            queued: VecDeque::new(),
            queued_bytes: 0,
            streaming: false,
            tx: TxStatus::Idle,
            pinned: None,
            hold: None,
            retrying: None,
            force_primary: false,
            client_skip: false,
            last_error_fatal: false,
            closing: false,
        }
    }

    /// Serve until the client leaves. Errors that end the session are returned so the
    /// caller can tell the client (if it is still there) and log them.
    pub async fn run(mut self) -> Result<(), ClientError> {
        let result = self.serve().await;
        self.finish();
        if let Err(e) = &result {
            let msg = e.to_message(true);
            let _ = self.client.write_all(&msg).await;
        }
        result
    }

    async fn serve(&mut self) -> Result<(), ClientError> {
        loop {
            self.process_client().await?;
            self.flush_backend().await;
            self.flush_client().await?;
            if self.closing {
                return Ok(());
            }
            let read_client =
                self.queued_bytes < QUEUE_CAP && self.cbuf.len() < self.ctx.max_message + QUEUE_CAP;
            tokio::select! {
                n = self.client.read_buf(&mut self.cbuf), if read_client => {
                    match n {
                        Ok(0) | Err(_) => { self.closing = true; return Ok(()); }
                        Ok(_) => {}
                    }
                }
                n = read_backend(&mut self.lease) => {
                    match n {
                        Ok(0) | Err(_) => self.backend_lost(),
                        Ok(_) => self.process_backend()?,
                    }
                    self.after_backend().await?;
                }
            }
        }
    }

    /// Frame and handle every whole client message in the buffer.
    async fn process_client(&mut self) -> Result<(), ClientError> {
        while self.queued_bytes < QUEUE_CAP {
            let Some(frame) = protocol::parse_frame(&mut self.cbuf, self.ctx.max_message)? else {
                break;
            };
            if frame.tag() == b'X' {
                self.closing = true;
                return Ok(());
            }
            if !is_session_message(frame.tag()) {
                // As PostgreSQL does: an unknown type means the stream is out of step.
                return Err(ClientError::UnexpectedMessage(frame.tag() as char));
            }
            if self.client_skip {
                if frame.tag() == b'S' {
                    self.client_skip = false;
                    self.out
                        .extend_from_slice(&protocol::backend::ready_for_query(self.tx));
                }
                continue;
            }
            if self.queued.is_empty() && self.lease.is_some() && self.can_stream() {
                self.send(frame)?;
            } else {
                let boundary = is_boundary(frame.tag());
                self.queued_bytes += frame.len();
                self.queued.push_back(frame);
                if boundary || self.queued_bytes >= QUEUE_CAP {
                    self.dispatch().await?;
                }
            }
        }
        Ok(())
    }

    /// May the next client message go straight to the leased backend? Yes inside a
    /// transaction, a pinned session, an open unit, or on the primary (where anything
    /// may run); no for a new unit on a replica lease, which must be routed afresh.
    fn can_stream(&self) -> bool {
        self.streaming
            || self.pinned.is_some()
            || self.tx != TxStatus::Idle
            || matches!(self.route, Some(Route::Primary(_)))
    }

    /// Route and send queued units while a backend can take them.
    async fn dispatch(&mut self) -> Result<(), ClientError> {
        while !self.queued.is_empty() {
            let boundary = self.queued.iter().position(|f| is_boundary(f.tag()));
            let n = match boundary {
                Some(i) => i + 1,
                None if self.queued_bytes >= QUEUE_CAP => self.queued.len(),
                None => return Ok(()),
            };
            if self.lease.is_some() {
                if !self.can_stream() {
                    return Ok(()); // wait for the current unit to finish
                }
                for _ in 0..n {
                    if let Some(f) = self.pop_queued() {
                        self.send(f)?;
                    }
                }
                continue;
            }
            let unit: Vec<Frame> = (0..n).filter_map(|_| self.pop_queued()).collect();
            let mut class = unit_class(&unit, &self.stmts);
            if std::mem::take(&mut self.force_primary) && class == Class::Read {
                class = Class::Write;
            }
            if let Err(e) = self.lease_for(class).await {
                self.fail_unit(&unit, &e);
                continue;
            }
            if let Class::Pin(reason) = class {
                self.pin(reason);
            }
            let ends = unit.last().is_some_and(|f| ends_unit(f.tag()));
            let retryable = self.pinned.is_none() && self.tx == TxStatus::Idle && ends;
            if matches!(self.route, Some(Route::Replica(_))) && retryable {
                self.hold = Some(Hold {
                    frames: unit.clone(),
                    mark: self.out.len(),
                });
            }
            for f in unit {
                self.send(f)?;
            }
        }
        Ok(())
    }

    fn pop_queued(&mut self) -> Option<Frame> {
        let f = self.queued.pop_front()?;
        self.queued_bytes -= f.len();
        Some(f)
    }

    /// Lease a backend on the node the router picks for `class`. A replica that cannot be
    /// reached is not the client's problem: the read falls back to the primary.
    async fn lease_for(&mut self, class: Class) -> Result<(), ClientError> {
        let class = if class == Class::Read && !self.ctx.replica_reads {
            Class::Write
        } else {
            class
        };
        // Decide from one snapshot, and let go of it before waiting on the pool.
        let (route, primary) = {
            let topo = self.ctx.topology.load();
            let spread = self.ctx.spread.fetch_add(1, Ordering::Relaxed);
            let route = router::choose(&topo, class, spread).map_err(|_| ClientError::NoPrimary)?;
            (route, topo.primary().map(|p| p.id))
        };
        let result = self.acquire(route.node()).await;
        let (route, lease) = match (result, route) {
            (Ok(lease), r) => (r, lease),
            (Err(e), Route::Replica(node)) => {
                tracing::warn!(node = %self.ctx.nodes[node.0].name, error = %e, "replica unavailable; reading from the primary");
                let primary = primary.ok_or(ClientError::NoPrimary)?;
                (Route::Primary(primary), self.acquire(primary).await?)
            }
            (Err(e), _) => return Err(e),
        };
        let conn = lease.conn_ref();
        self.cancel.slot.set(lease.pool().addr(), &conn.cancel);
        self.lease = Some(lease);
        self.route = Some(route);
        Ok(())
    }

    async fn acquire(&mut self, node: NodeId) -> Result<Lease, ClientError> {
        let pool = match self.pools.get(node.0).and_then(|p| p.clone()) {
            Some(p) => p,
            None => {
                let spec = self.ctx.nodes.get(node.0).ok_or(ClientError::NoNode)?;
                let key = PoolKey {
                    node,
                    user: self.id.user.clone(),
                    database: self.id.database.clone(),
                    params: self.id.params.clone(),
                };
                let pool =
                    self.ctx
                        .pools
                        .get(&key, &spec.name, &spec.addr, self.id.password.as_deref());
                if let Some(slot) = self.pools.get_mut(node.0) {
                    *slot = Some(pool.clone());
                }
                pool
            }
        };
        Ok(pool.acquire().await?)
    }

    /// Answer a unit that never reached a backend with an error, and keep the session.
    fn fail_unit(&mut self, unit: &[Frame], err: &ClientError) {
        tracing::debug!(error = %err, "unit failed before reaching a backend");
        self.out.extend_from_slice(&err.to_message(false));
        match unit.last().map(Frame::tag) {
            Some(b'S' | b'Q' | b'F') => self
                .out
                .extend_from_slice(&protocol::backend::ready_for_query(self.tx)),
            _ => self.client_skip = true,
        }
    }

    fn pin(&mut self, reason: PinReason) {
        if self.pinned.is_none() {
            tracing::info!(user = %self.id.user, %reason, "session pinned to one backend");
            self.ctx.pinned_sessions.fetch_add(1, Ordering::Relaxed);
            self.pinned = Some(reason);
        }
    }

    fn unpin(&mut self) {
        if self.pinned.take().is_some() {
            self.ctx.pinned_sessions.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Translate one client message for the leased backend and record what it owes.
    fn send(&mut self, f: Frame) -> Result<(), ClientError> {
        let tag = f.tag();
        if self.exp.skipping() && tag != b'S' {
            return Ok(()); // the backend would ignore it until Sync, as PostgreSQL does
        }
        let Some(lease) = self.lease.as_mut() else {
            return Err(ClientError::NoNode);
        };
        let conn = lease.conn();
        let mut due = Vec::new();
        let mut pin = None;
        match tag {
            b'P' => {
                let p = protocol::frontend::parse(&f)?;
                let class = router::classify(p.sql);
                if let Class::Pin(r) = class {
                    pin = Some(r);
                }
                if p.name.is_empty() {
                    let stmt = Statement::new("".into(), f.as_bytes().clone(), class);
                    conn.unnamed = Some(stmt.id);
                    self.stmts.insert("", stmt);
                    self.wbuf.extend_from_slice(f.as_bytes());
                    due = self.exp.push(Expect::Parse {
                        prepared: None,
                        forward: true,
                    });
                } else {
                    let name = backend_name(p.sql, p.param_types);
                    let parse = protocol::frontend::rewrite_parse_name(&f, &name)?;
                    let client_name = p.name.to_string();
                    let stmt = Statement::new(name.clone(), parse.clone(), class);
                    self.stmts.insert(&client_name, stmt);
                    if conn.prepared.contains(&name) {
                        due = self
                            .exp
                            .push(Expect::Synth(protocol::backend::parse_complete()));
                    } else {
                        conn.prepared.insert(name.clone());
                        self.wbuf.extend_from_slice(&parse);
                        due = self.exp.push(Expect::Parse {
                            prepared: Some(name),
                            forward: true,
                        });
                    }
                }
            }
            b'B' => {
                let b = protocol::frontend::bind(&f)?;
                match self.stmts.get(b.statement).cloned() {
                    Some(stmt) => {
                        ensure_prepared(conn, &stmt, &mut self.wbuf, &mut self.exp);
                        if stmt.is_unnamed() {
                            self.wbuf.extend_from_slice(f.as_bytes());
                        } else {
                            self.wbuf.extend_from_slice(
                                &protocol::frontend::rewrite_bind_statement(
                                    &f,
                                    &stmt.backend_name,
                                )?,
                            );
                        }
                    }
                    None => self.wbuf.extend_from_slice(f.as_bytes()),
                }
                due = self.exp.push(Expect::Bind);
            }
            b'D' | b'C' => {
                let d = if tag == b'D' {
                    protocol::frontend::describe(&f)?
                } else {
                    protocol::frontend::close(&f)?
                };
                if d.kind == ObjectKind::Statement {
                    let stmt = self.stmts.get(d.name).cloned();
                    if tag == b'C' {
                        // Server-side statements are shared by name; the client's is gone.
                        let name = d.name.to_string();
                        self.stmts.remove(&name);
                        due = self
                            .exp
                            .push(Expect::Synth(protocol::backend::close_complete()));
                    } else {
                        match stmt {
                            Some(stmt) => {
                                ensure_prepared(conn, &stmt, &mut self.wbuf, &mut self.exp);
                                if stmt.is_unnamed() {
                                    self.wbuf.extend_from_slice(f.as_bytes());
                                } else {
                                    self.wbuf.extend_from_slice(
                                        &protocol::frontend::rewrite_describe_or_close_name(
                                            &f,
                                            &stmt.backend_name,
                                        )?,
                                    );
                                }
                            }
                            None => self.wbuf.extend_from_slice(f.as_bytes()),
                        }
                        due = self.exp.push(Expect::Describe);
                    }
                } else {
                    self.wbuf.extend_from_slice(f.as_bytes());
                    due = self.exp.push(if tag == b'D' {
                        Expect::Describe
                    } else {
                        Expect::Close
                    });
                }
            }
            b'E' => {
                self.wbuf.extend_from_slice(f.as_bytes());
                due = self.exp.push(Expect::Execute);
            }
            b'S' => {
                self.wbuf.extend_from_slice(f.as_bytes());
                due = self.exp.push(Expect::Sync);
            }
            b'Q' => {
                let sql = protocol::frontend::query(&f)?;
                if let Class::Pin(r) = router::classify(sql) {
                    pin = Some(r);
                }
                if drops_statements(sql) {
                    // The server forgets every prepared statement; so must we.
                    conn.prepared.clear();
                }
                conn.unnamed = None;
                self.stmts.forget_unnamed();
                self.wbuf.extend_from_slice(f.as_bytes());
                due = self.exp.push(Expect::Query);
            }
            b'F' => {
                self.wbuf.extend_from_slice(f.as_bytes());
                due = self.exp.push(Expect::Query);
            }
            b'c' | b'f' => {
                self.wbuf.extend_from_slice(f.as_bytes());
                due = self.exp.push(Expect::CopyEnd);
            }
            b'H' | b'd' => self.wbuf.extend_from_slice(f.as_bytes()),
            other => return Err(ClientError::UnexpectedMessage(other as char)),
        }
        for b in due {
            self.out.extend_from_slice(&b);
        }
        if let Some(reason) = pin {
            self.pin(reason);
        }
        if is_boundary(tag) {
            self.streaming = tag == b'H';
        } else if !matches!(tag, b'd' | b'c' | b'f') {
            self.streaming = true;
        }
        Ok(())
    }

    /// Handle every whole message the backend sent.
    fn process_backend(&mut self) -> Result<(), ClientError> {
        let Some(lease) = self.lease.as_mut() else {
            return Ok(());
        };
        let conn = lease.conn();
        while let Some(frame) = protocol::parse_frame(&mut conn.rbuf, self.ctx.backend_max_message)
            .map_err(|e| ClientError::Backend(e.into()))?
        {
            let tag = frame.tag();
            if tag == b'E' {
                let fields = protocol::backend::error_fields(&frame).ok();
                self.last_error_fatal = fields.as_ref().is_some_and(|f| f.is_fatal());
                let read_only = fields.as_ref().is_some_and(|f| f.code == Some("25006"));
                if read_only && self.retrying.is_none() {
                    if let Some(hold) = self.hold.take() {
                        // Undo everything this unit produced; it runs again on the primary.
                        self.out.truncate(hold.mark);
                        self.retrying = Some(hold.frames);
                        self.ctx.read_only_retries.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            let o = self.exp.on_backend(tag);
            for name in &o.unprepared {
                conn.prepared.remove(name);
            }
            if self.retrying.is_some() {
                continue; // swallowing the replica's answer
            }
            if tag == b'S' {
                if let Ok((k, v)) = protocol::backend::parameter_status(&frame) {
                    crate::backend::set_param(&mut conn.params, k, v);
                }
            }
            if o.forward {
                self.out.extend_from_slice(frame.as_bytes());
            }
            for s in o.synth {
                self.out.extend_from_slice(&s);
            }
            if o.ready {
                self.tx =
                    protocol::backend::ready_for_query_status(&frame).unwrap_or(TxStatus::Idle);
                if self.exp.is_empty() {
                    self.hold = None;
                }
            }
        }
        if let Some(hold) = &self.hold {
            if self.out.len() - hold.mark > HOLD_CAP {
                self.hold = None; // too big to hold back; no retry for this one
            }
        }
        Ok(())
    }

    /// After backend traffic: give the lease back when the transaction is over, re-run a
    /// refused read on the primary, and move queued units along.
    async fn after_backend(&mut self) -> Result<(), ClientError> {
        if self.lease.is_some()
            && self.exp.is_empty()
            && !self.streaming
            && self.tx == TxStatus::Idle
        {
            if let Some(frames) = self.retrying.take() {
                self.release();
                for f in frames.into_iter().rev() {
                    self.queued_bytes += f.len();
                    self.queued.push_front(f);
                }
                self.force_primary = true;
            } else if self.pinned.is_none() {
                self.release();
            }
        }
        if !self.queued.is_empty() {
            self.dispatch().await?;
        }
        Ok(())
    }

    fn release(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.release();
        }
        self.route = None;
        self.cancel.slot.clear();
    }

    /// The backend went away mid-session. The client hears about it with an error and a
    /// ReadyForQuery for everything it is waiting on, and keeps its session.
    fn backend_lost(&mut self) {
        let node = self
            .lease
            .as_ref()
            .map(|l| l.pool().node_name.clone())
            .unwrap_or_default();
        tracing::warn!(%node, user = %self.id.user, "backend connection lost");
        let owed = self.exp.pending_ready();
        self.exp.clear();
        self.lease = None; // dropped, not returned: its state is unknown
        self.route = None;
        self.cancel.slot.clear();
        self.hold = None;
        self.streaming = false;
        if let Some(frames) = self.retrying.take() {
            // The replica died while refusing a write: just run it on the primary.
            for f in frames.into_iter().rev() {
                self.queued_bytes += f.len();
                self.queued.push_front(f);
            }
            self.force_primary = true;
            return;
        }
        if !self.last_error_fatal {
            let mut msg = format!("connection to node {node} was lost");
            if self.tx != TxStatus::Idle {
                msg.push_str("; the transaction was rolled back");
            }
            if let Some(reason) = self.pinned {
                msg.push_str(&format!("; session state ({reason}) on it was lost"));
            }
            self.out
                .extend_from_slice(&crate::errors::error("08006", &msg));
        }
        self.last_error_fatal = false;
        self.unpin();
        self.tx = TxStatus::Idle;
        if owed == 0 {
            self.client_skip = true;
        }
        for _ in 0..owed {
            self.out
                .extend_from_slice(&protocol::backend::ready_for_query(TxStatus::Idle));
        }
    }

    async fn flush_backend(&mut self) {
        if self.wbuf.is_empty() {
            return;
        }
        let Some(lease) = self.lease.as_mut() else {
            self.wbuf.clear();
            return;
        };
        let res = lease.conn().stream.write_all(&self.wbuf).await;
        self.wbuf.clear();
        if res.is_err() {
            self.backend_lost();
        }
    }

    async fn flush_client(&mut self) -> Result<(), ClientError> {
        if self.out.is_empty() || self.hold.is_some() || self.retrying.is_some() {
            return Ok(());
        }
        if self.client.write_all(&self.out).await.is_err() {
            self.closing = true;
        }
        self.out.clear();
        Ok(())
    }

    /// The session is over: a clean backend goes back to the pool, anything else closes.
    fn finish(&mut self) {
        if let Some(lease) = self.lease.take() {
            let clean = self.exp.is_empty() && self.tx == TxStatus::Idle && self.pinned.is_none();
            if clean {
                lease.release();
            }
        }
        self.unpin();
    }
}

/// Make sure `stmt` exists on this backend, injecting its Parse (whose answer the client
/// must not see) if it does not.
fn ensure_prepared(
    conn: &mut crate::backend::BackendConn,
    stmt: &Statement,
    wbuf: &mut BytesMut,
    exp: &mut Expectations,
) {
    if stmt.is_unnamed() {
        if conn.unnamed == Some(stmt.id) {
            return;
        }
        conn.unnamed = Some(stmt.id);
        wbuf.extend_from_slice(&stmt.parse);
        exp.push(Expect::Parse {
            prepared: None,
            forward: false,
        });
    } else if !conn.prepared.contains(&stmt.backend_name) {
        conn.prepared.insert(stmt.backend_name.clone());
        wbuf.put_slice(&stmt.parse);
        exp.push(Expect::Parse {
            prepared: Some(stmt.backend_name.clone()),
            forward: false,
        });
    }
}

/// `DISCARD ALL` and `DEALLOCATE ALL` drop every prepared statement on the server. Any
/// DISCARD or DEALLOCATE is treated so: being wrong only costs a re-prepare.
fn drops_statements(sql: &str) -> bool {
    let head = sql.trim_start();
    let head = head.get(..10).unwrap_or(head);
    let lower = head.to_ascii_lowercase();
    lower.starts_with("discard") || lower.starts_with("deallocate")
}

async fn read_backend(lease: &mut Option<Lease>) -> std::io::Result<usize> {
    match lease {
        Some(l) => {
            let c = l.conn();
            c.stream.read_buf(&mut c.rbuf).await
        }
        None => std::future::pending().await,
    }
}
