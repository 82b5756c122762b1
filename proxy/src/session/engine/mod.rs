//! The data path of one client session after login: frame client messages, route each
//! unit, lease a backend, forward bytes both ways, and give the backend back as soon as
//! ReadyForQuery says the transaction is over.
//!
//! Backend bytes are forwarded as received; only a handful of message types are looked
//! at (ReadyForQuery, ErrorResponse, ParameterStatus and the answers that the
//! expectation queue counts). DataRow is never decoded.

mod floor;
mod replies;
mod send;
#[cfg(test)]
mod tests;

use super::expect::Hidden;
use super::expect::{Expect, Expectations};
use super::registry::{Activity, Listed};
use super::route::{ends_unit, is_boundary, is_session_message, unit_class, unit_classes, Release};
use super::settings::{self, Settings};
use super::statements::{backend_name, Statement, Statements};
use super::tx_effect::TxEffect;
use super::Shared;
use crate::cancel::Registration;
use crate::errors::ClientError;
use crate::pool::{Lease, Pool, PoolKey};
use crate::stats::Reason;
use bytes::BytesMut;
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
    /// The level asked for at connect time (`options=-c pgrelay.consistency=...`).
    pub consistency: Option<router::Consistency>,
}

struct Hold {
    frames: Vec<Frame>,
    mark: usize,
    /// Statements the unit's Parses added to the session: a re-run adds them again.
    registered: Vec<(Box<str>, u64)>,
    /// Statements sent, counted in the metrics only once the unit is not re-run (so a
    /// retried read counts once, with the reason it finally ran for).
    statements: u64,
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
    /// The last message sent was a Flush: the client may be waiting for answers.
    flushed: bool,
    tx: TxStatus,
    /// Why the session keeps one backend (the first reason, for logs), and every
    /// reason still in force: the pin ends when the last one is released.
    pinned: Option<PinReason>,
    pin_reasons: Vec<PinReason>,
    /// A statement that ends pins ran; applied once its transaction is over.
    releasing: Option<Release>,
    /// Settings the session has changed from the defaults; applied to every backend it
    /// is given.
    settings: Settings,
    /// A statement may have changed settings: read them back before letting go of the
    /// backend.
    settings_dirty: bool,
    /// Custom setting names the session has touched (pg_settings does not list them).
    custom_names: std::collections::BTreeSet<String>,
    captured: Settings,
    /// The lease is kept only until the settings read-back answers.
    capturing: bool,
    /// The lease is kept until the primary's WAL position after a write answers; units
    /// that need the primary may go on meanwhile, reads wait for the new floor.
    learning_write: bool,
    hold: Option<Hold>,
    /// Swallowing a replica's 25006 answer; the held unit re-runs on the primary.
    retrying: Option<Vec<Frame>>,
    force_primary: bool,
    /// A unit failed before reaching a backend; drop messages until Sync, then answer it.
    client_skip: bool,
    last_error_fatal: bool,
    /// The backend was lost while the client was not waiting: the error its next unit
    /// gets instead of running.
    lost: Option<bytes::Bytes>,
    /// The session's transaction was lost: the next backend starts in a failed
    /// transaction, so the client's statements fail (25P02) until it ends it.
    abort_pending: bool,
    /// Consistency: the session's level, and what RESET goes back to.
    level: router::Consistency,
    default_level: router::Consistency,
    /// No read may see the database older than this (see `floor.rs`).
    floor: router::Lsn,
    /// The replica the session last read from, preferred while it is at the floor.
    sticky: Option<NodeId>,
    /// The session has read on this replica, since this moment, without learning how far
    /// that replica had replayed: the floor does not cover those reads. Only the same
    /// replica, up since then, can serve the next read as is (see `vet_replica`); a
    /// primary position read after them covers them (see `on_lsn`).
    unbounded: Option<(NodeId, std::time::Instant)>,
    /// `unbounded` as it was when the primary position being read was asked for.
    write_lsn_covers: Option<(NodeId, std::time::Instant)>,
    /// The primary position just read, until its ReadyForQuery shows it counts.
    write_lsn: Option<router::Lsn>,
    /// What the extended-protocol unit being sent does to the transaction block, and
    /// whether it may write (see `ask_position_with`).
    unit_end: Option<(TxEffect, bool)>,
    /// A statement that may write (or, when the floor is kept, any statement) ran on
    /// the primary since the floor was last learnt.
    wrote: bool,
    /// Statements ran on a replica since its position was last read.
    replica_dirty: bool,
    global: floor::GlobalProbe,
    /// The floor a pending replica check must show, and whether it did.
    check: Option<router::Lsn>,
    check_passed: bool,
    /// A checked replica was behind this floor: wait for it before the read re-runs.
    stale: Option<router::Lsn>,
    ryw_deadline: Option<std::time::Instant>,
    /// Named statements of `pgrelay.*` settings the client prepared (never on a backend).
    commands: CommandStatements,
    closing: bool,
    /// The session's entry in `/sessions`, and what it shows now.
    listed: Listed,
    shown: Option<Shown>,
    /// Why the current lease went to its node (for `pgrelay_statements_total`).
    lease_reason: Reason,
    /// The next lease re-runs a read a replica refused (25006).
    retry_reason: Option<Reason>,
    /// When each unit awaiting its ReadyForQuery was sent (for latency).
    unit_sent: VecDeque<std::time::Instant>,
    /// The class of each Query and Parse of the unit being routed (kept for its
    /// allocation).
    unit_classes: Vec<Option<Class>>,
}

type Shown = (
    Activity,
    Option<NodeId>,
    Option<PinReason>,
    router::Consistency,
);

impl<S: AsyncRead + AsyncWrite + Unpin> Engine<S> {
    pub fn new(
        client: S,
        ctx: Arc<Shared>,
        id: ClientIdentity,
        cancel: Registration,
        rest: BytesMut,
        listed: Listed,
    ) -> Self {
        let nodes = ctx.nodes.len();
        let live = ctx.live.load();
        let default_level = live
            .users
            .get(&id.user)
            .and_then(|u| u.consistency)
            .unwrap_or(live.consistency);
        let level = id.consistency.unwrap_or(default_level);
        Engine {
            client,
            ctx,
            id,
            cancel,
            cbuf: rest,
            // Buffers grow on first use: an idle session costs little memory.
            out: BytesMut::new(),
            pools: vec![None; nodes],
            lease: None,
            route: None,
            wbuf: BytesMut::new(),
            exp: Expectations::default(),
            stmts: Statements::default(),
            queued: VecDeque::new(),
            queued_bytes: 0,
            streaming: false,
            flushed: false,
            tx: TxStatus::Idle,
            pinned: None,
            pin_reasons: Vec::new(),
            releasing: None,
            settings: Vec::new(),
            settings_dirty: false,
            custom_names: Default::default(),
            captured: Vec::new(),
            capturing: false,
            learning_write: false,
            hold: None,
            retrying: None,
            force_primary: false,
            client_skip: false,
            last_error_fatal: false,
            lost: None,
            abort_pending: false,
            level,
            default_level,
            floor: router::Lsn(0),
            sticky: None,
            unbounded: None,
            write_lsn_covers: None,
            write_lsn: None,
            unit_end: None,
            wrote: false,
            replica_dirty: false,
            global: Default::default(),
            check: None,
            check_passed: false,
            stale: None,
            ryw_deadline: None,
            commands: Default::default(),
            closing: false,
            listed,
            shown: None,
            lease_reason: Reason::Write,
            retry_reason: None,
            unit_sent: VecDeque::new(),
            unit_classes: Vec::new(),
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
            // Before the client hears its answers, so it never sees itself listed stale.
            self.show();
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
        if self.cbuf.is_empty() && self.cbuf.capacity() > KEEP_CAPACITY {
            self.cbuf = BytesMut::new();
        }
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
            let ours = is_ours(&frame, &self.commands);
            if self.queued.is_empty() && self.lease.is_some() && self.can_stream() && !ours {
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
    ///
    /// Two exceptions: a lease kept only to read settings back takes nothing new (the
    /// next unit is routed afresh once it is released), and a unit left open on a
    /// replica by a Flush takes only reads: anything else waits for the replica's
    /// answers and then moves to the primary.
    fn can_stream(&self) -> bool {
        if self.capturing || self.learning_write {
            return false;
        }
        let replica = matches!(self.route, Some(Route::Replica(_)));
        !replica || self.pinned.is_some() || self.tx != TxStatus::Idle
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
            // (Inside a unit left open on a backend, PostgreSQL gets it as it is.)
            if !self.streaming
                && self
                    .queued
                    .iter()
                    .take(n)
                    .any(|f| is_ours(f, &self.commands))
            {
                if self.exp.client_waiting()
                    || self.retrying.is_some()
                    || self.capturing
                    || self.learning_write
                {
                    // Answered in order, once what is ahead is answered and the floor
                    // it moved is known. A unit being retried is ahead too: the answers
                    // to it swallowed so far are not the client's, its own are to come.
                    return Ok(());
                }
                if let Some(cmd) = self.intercepted(n) {
                    self.pop_queued();
                    self.run_command(cmd);
                    continue;
                }
                if self.queued.get(n - 1).is_some_and(|f| f.tag() == b'S') {
                    if let Some(answer) = self.extended_command(n) {
                        self.out.extend_from_slice(&answer);
                        continue;
                    }
                }
                // Mixed with other statements: PostgreSQL gets it all as it is.
            }
            if self.lease.is_some() {
                if !self.can_stream() {
                    if !self.leave_open_replica_unit(n)? {
                        return Ok(()); // wait for the current unit to finish
                    }
                    continue;
                }
                for _ in 0..n {
                    if let Some(f) = self.pop_queued() {
                        self.send(f)?;
                    }
                }
                continue;
            }
            let mut unit: Vec<Frame> = (0..n).filter_map(|_| self.pop_queued()).collect();
            if let Some(notice) = self.lost.take() {
                if self.abort_pending && super::route::ends_transaction(&unit) {
                    // The client is ending the transaction that was lost: it is over.
                    self.abort_pending = false;
                    self.tx = TxStatus::Idle;
                }
                self.refuse_unit(&unit, &notice);
                continue;
            }
            let mut each = std::mem::take(&mut self.unit_classes);
            let mut class = unit_classes(&unit, &self.stmts, &mut each);
            let ends = unit.last().is_some_and(|f| ends_unit(f.tag()));
            let retryable = self.pinned.is_none() && self.tx == TxStatus::Idle && ends;
            if class == Class::Read {
                let level = self.level;
                if level == router::Consistency::Primary {
                    class = Class::Write;
                } else if level == router::Consistency::Global && self.global_first(&mut unit).await
                {
                    return Ok(()); // the read waits for the primary's position
                }
            }
            // A lost transaction is recreated (failed) on the primary, where whatever the
            // client pipelines after its ROLLBACK can run too.
            let force = std::mem::take(&mut self.force_primary) || self.abort_pending;
            if force && class == Class::Read {
                class = Class::Write;
            }
            let check = match self.lease_for(class, retryable).await {
                Ok(check) => check,
                Err(e) => {
                    self.unit_classes = each;
                    self.fail_unit(&unit, &e);
                    continue;
                }
            };
            if let Class::Pin(reason) = class {
                self.pin(reason);
            }
            let replica = matches!(self.route, Some(Route::Replica(_)));
            if replica {
                self.sticky = self.route.map(|r| r.node());
            }
            if replica && retryable {
                self.hold = Some(Hold {
                    frames: unit.clone(),
                    mark: self.out.len(),
                    registered: Vec::new(),
                    statements: 0,
                });
            }
            if let Some(floor) = check {
                self.check = Some(floor);
                self.push_lsn_query(Hidden::ReplayCheck, true)?;
            }
            for (f, c) in unit.into_iter().zip(each.drain(..)) {
                self.send_classified(f, c)?;
            }
            self.unit_classes = each;
            if replica && ends && self.level.tracks_floor() {
                // What this read saw is not read back (a query per read would cost the
                // replica as much as the read): while the session stays on this replica,
                // which never shows less while it runs, nothing needs it.
                // A held read counts once the client gets its answer (`settle_hold`).
                self.replica_dirty = false;
                if self.hold.is_none() {
                    self.read_unbounded();
                }
            } else if !replica && ends && class == Class::Read && self.tx == TxStatus::Idle {
                self.read_on_primary()?;
            }
        }
        Ok(())
    }

    /// An autocommit read just sent to the primary. Later reads must not go back from
    /// what it saw, so the floor moves to the primary's WAL position right after it:
    /// asked in the same write, so it costs no round trip of its own (instead of being
    /// asked once the read's answer is in). With a single node there is no other node
    /// to go back on, so nothing is asked at all.
    fn read_on_primary(&mut self) -> Result<(), ClientError> {
        if !std::mem::take(&mut self.wrote) || !self.level.tracks_floor() {
            return Ok(());
        }
        if self.ctx.nodes.len() > 1 {
            self.push_lsn_query(Hidden::WriteLsn, true)?;
        }
        Ok(())
    }

    /// A replica unit left open by a Flush, and `n` more queued frames for it. Reads
    /// go on there (true). Anything else needs the primary: once the replica has
    /// answered everything, its lease is let go so the frames are routed afresh (true);
    /// until then, wait (false). The session's statements are re-prepared on the
    /// primary as needed; portals of the open unit do not move, as none can be used by
    /// a statement that needs the primary without a new Bind.
    ///
    /// The rest of a unit too big to queue whole is not a new unit: it always follows.
    fn leave_open_replica_unit(&mut self, n: usize) -> Result<bool, ClientError> {
        let pending: Vec<Frame> = self.queued.iter().take(n).cloned().collect();
        if self.learning_write && !self.capturing {
            // Learning the floor after a write: what needs the primary anyway follows at
            // once on this backend; a read waits for the floor to be routed.
            if self.tx == TxStatus::Idle && unit_class(&pending, &self.stmts) == Class::Read {
                return Ok(false);
            }
            if self.tx == TxStatus::Idle && !self.streaming {
                // A new unit on a backend kept from the last one: as on a fresh lease,
                // keep its statements within the limit first.
                self.evict_statements()?;
            }
            for _ in 0..n {
                if let Some(f) = self.pop_queued() {
                    self.send(f)?;
                }
            }
            return Ok(true);
        }
        if !self.streaming || self.capturing {
            return Ok(false);
        }
        if !self.flushed || unit_class(&pending, &self.stmts) == Class::Read {
            for _ in 0..n {
                if let Some(f) = self.pop_queued() {
                    self.send(f)?;
                }
            }
            return Ok(true);
        }
        if !self.exp.is_empty() {
            return Ok(false);
        }
        self.streaming = false;
        self.release();
        Ok(true)
    }

    /// Undo what a held unit produced, so that it can run again elsewhere unseen.
    fn start_retry(&mut self, hold: Hold) {
        self.out.truncate(hold.mark);
        for (client, id) in &hold.registered {
            self.stmts.forget_if(client, *id);
        }
        self.retrying = Some(hold.frames);
    }

    fn pop_queued(&mut self) -> Option<Frame> {
        let f = self.queued.pop_front()?;
        self.queued_bytes -= f.len();
        Some(f)
    }

    /// Lease a backend on the node the router picks for `class`. A replica that cannot be
    /// reached is not the client's problem: the read falls back to the primary.
    ///
    /// A read with a floor goes where the floor is known to be replayed, or to the most
    /// advanced replica to be checked on the way (`retryable` units only). Returns the
    /// floor to check, if any.
    ///
    /// With no primary to be had (a failover under way, a primary that cannot be
    /// reached), the unit waits up to `failover.write_wait` for one, then fails with
    /// the reason. It has not been sent anywhere, so nothing is lost by waiting.
    async fn lease_for(
        &mut self,
        class: Class,
        retryable: bool,
    ) -> Result<Option<router::Lsn>, ClientError> {
        // Read only once a lease is refused: the clock costs the hot path otherwise.
        let mut started = None;
        let mut pause = std::time::Duration::from_millis(2);
        loop {
            let err = match self.lease_once(class, retryable).await {
                Err(e) if e.awaits_primary() => e,
                other => return other,
            };
            let waited = started
                .get_or_insert_with(tokio::time::Instant::now)
                .elapsed();
            let write_wait = self.ctx.live.load().write_wait;
            if waited >= write_wait {
                let held = self.ctx.topology.load().writes_held.clone();
                return Err(match (held, err) {
                    (Some(reason), _) => ClientError::WritesHeld { reason, waited },
                    (None, ClientError::NoPrimary) => ClientError::WritesHeld {
                        reason: "no node is the primary".into(),
                        waited,
                    },
                    (None, e) => e,
                });
            }
            // Topology snapshots carry no wake-up; a short poll, bounded by write_wait,
            // costs nothing next to a failover.
            tokio::time::sleep(pause.min(write_wait - waited)).await;
            pause = (pause * 2).min(std::time::Duration::from_millis(20));
        }
    }

    async fn lease_once(
        &mut self,
        class: Class,
        retryable: bool,
    ) -> Result<Option<router::Lsn>, ClientError> {
        let read = class == Class::Read;
        let class = if read && !self.ctx.live.load().replica_reads {
            Class::Write
        } else {
            class
        };
        // Decide from one snapshot, and let go of it before waiting on the pool.
        let (route, primary, known_fresh) = {
            let topo = self.ctx.topology.load();
            let spread = self.ctx.spread.fetch_add(1, Ordering::Relaxed);
            let load = |n| self.ctx.pools.load(n);
            let (route, known_fresh) = if class == Class::Read && self.level.tracks_floor() {
                let replayed = |n: NodeId| {
                    let heard = topo.node(n).and_then(|s| s.wal.replay).unwrap_or_default();
                    let seen = self
                        .ctx
                        .observed_replay
                        .get(n.0)
                        .map_or(0, |a| a.load(Ordering::Relaxed));
                    heard.max(router::Lsn(seen))
                };
                let c =
                    router::choose_read(&topo, self.floor, self.sticky, spread, load, replayed)?;
                (c.route, c.known_fresh)
            } else {
                (router::choose(&topo, class, spread, load)?, true)
            };
            (route, topo.primary().map(|p| p.id), known_fresh)
        };
        // The router sends a read to the primary only when no replica may take it; a
        // read that leaves a replica for its floor is marked so below.
        let mut reason = match route {
            Route::Replica(_) => Reason::Read,
            Route::Primary(_) if read => Reason::NoReplica,
            Route::Primary(_) => Reason::Write,
        };
        let result = self.acquire(route.node()).await;
        let (route, lease) = match (result, route) {
            (Ok(lease), r) => (r, lease),
            (Err(e), Route::Replica(node)) => {
                tracing::warn!(node = %self.ctx.nodes[node.0].name, error = %e, "replica unavailable; reading from the primary");
                reason = Reason::ReplicaUnavailable;
                let primary = primary.ok_or(ClientError::NoPrimary)?;
                (Route::Primary(primary), self.acquire(primary).await?)
            }
            (Err(e), _) => return Err(e),
        };
        let (route, lease, check) = match route {
            Route::Replica(_) => {
                let conn = lease.conn_ref();
                let on = (route.node(), conn.created);
                match self.vet_replica(on, conn.replay_seen, known_fresh, retryable) {
                    floor::Vet::Go => (route, lease, None),
                    floor::Vet::Check(floor) => (route, lease, Some(floor)),
                    floor::Vet::Primary => {
                        reason = Reason::RywFallback;
                        lease.release();
                        let primary = primary.ok_or(ClientError::NoPrimary)?;
                        (Route::Primary(primary), self.acquire(primary).await?, None)
                    }
                }
            }
            Route::Primary(_) => (route, lease, None),
        };
        self.lease_reason = self.retry_reason.take().unwrap_or(reason);
        let conn = lease.conn_ref();
        self.cancel.slot.set(&conn.cancel);
        self.lease = Some(lease);
        self.route = Some(route);
        self.prepare_backend()?;
        Ok(check)
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
        self.refuse_unit(unit, &err.to_message(false));
    }

    /// Answer a unit with `error` instead of running it: ReadyForQuery follows when the
    /// unit ends with one owed, else the rest of the batch is ignored up to its Sync.
    fn refuse_unit(&mut self, unit: &[Frame], error: &[u8]) {
        self.out.extend_from_slice(error);
        match unit.last().map(Frame::tag) {
            Some(b'S' | b'Q' | b'F') => self
                .out
                .extend_from_slice(&protocol::backend::ready_for_query(self.tx)),
            _ => self.client_skip = true,
        }
    }

    /// The held unit will not be re-run: count its statements where they ran, and what
    /// the client now saw on the replica.
    fn settle_hold(&mut self) {
        if let Some(hold) = self.hold.take() {
            if let Some(lease) = &self.lease {
                self.ctx
                    .stats
                    .routed_n(lease.node(), self.lease_reason, hold.statements);
            }
            if matches!(self.route, Some(Route::Replica(_))) && self.level.tracks_floor() {
                self.read_unbounded();
            }
        }
    }

    /// The client saw a read on the leased replica whose position is not read back.
    /// Recorded from now on, while the connection that served it is known to be open:
    /// a connection to the same replica made before this moment, still open later,
    /// proves the replica has not restarted (and gone back) in between.
    fn read_unbounded(&mut self) {
        if self.unbounded.is_none() {
            let node = self.route.map(|r| r.node());
            self.unbounded = node.map(|n| (n, std::time::Instant::now()));
        }
    }

    /// Updates the session's `/sessions` entry when something shown changed.
    fn show(&mut self) {
        let activity = if self.exp.client_waiting() || !self.queued.is_empty() {
            Activity::Active
        } else {
            match self.tx {
                TxStatus::Idle => Activity::Idle,
                TxStatus::InTransaction => Activity::IdleInTransaction,
                TxStatus::Failed => Activity::FailedTransaction,
            }
        };
        let now = (
            activity,
            self.lease.as_ref().map(Lease::node),
            self.pinned,
            self.level,
        );
        if self.shown == Some(now) {
            return;
        }
        let before = self.shown.replace(now);
        let b = before.as_ref();
        if b.map(|b| b.0) != Some(now.0) {
            self.listed.set_activity(now.0);
        }
        if b.map(|b| b.1) != Some(now.1) {
            self.listed.set_node(now.1);
        }
        if b.map(|b| b.2) != Some(now.2) {
            self.listed.set_pinned(now.2);
        }
        if b.map(|b| b.3) != Some(now.3) {
            self.listed.set_level(now.3);
        }
    }

    fn pin(&mut self, reason: PinReason) {
        if !self.pin_reasons.contains(&reason) {
            self.pin_reasons.push(reason);
        }
        if self.pinned.is_none() {
            tracing::info!(user = %self.id.user, %reason, "session pinned to one backend");
            self.ctx.pinned_sessions.fetch_add(1, Ordering::Relaxed);
            self.ctx.pins_total.fetch_add(1, Ordering::Relaxed);
            self.pinned = Some(reason);
        }
    }

    fn unpin(&mut self) {
        self.pin_reasons.clear();
        if self.pinned.take().is_some() {
            self.ctx.pinned_sessions.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// A statement that ends some pins has run and its transaction is over.
    fn apply_release(&mut self) {
        match self.releasing.take() {
            Some(Release::All) => self.unpin(),
            Some(Release::Only(reason)) => {
                self.pin_reasons.retain(|r| *r != reason);
                if self.pin_reasons.is_empty() {
                    self.unpin();
                }
            }
            None => {}
        }
        if self.pinned.is_none() {
            tracing::debug!(user = %self.id.user, "session no longer pinned");
        }
    }

    /// Before a session's first message on a backend: close statements the backend
    /// holds beyond its limit, and bring its settings into line with the session's.
    /// Both are hidden from the client and cost a round trip only when needed.
    fn prepare_backend(&mut self) -> Result<(), ClientError> {
        self.evict_statements()?;
        let Some(lease) = self.lease.as_mut() else {
            return Ok(());
        };
        let conn = lease.conn();
        if conn.settings != self.settings {
            if let Some(sql) = settings::transition(&conn.settings, &self.settings) {
                self.wbuf
                    .extend_from_slice(&protocol::frontend::build_query(&sql)?);
                self.exp.push(Expect::Hidden(Hidden::Query));
            }
            conn.settings = self.settings.clone();
        }
        if std::mem::take(&mut self.abort_pending) {
            // Recreate the failed transaction the client believes it is in.
            self.wbuf
                .extend_from_slice(&protocol::frontend::build_query(
                    "BEGIN; SELECT 1/0 AS pgrelay_lost_transaction",
                )?);
            self.exp.push(Expect::Hidden(Hidden::Abort));
        }
        Ok(())
    }

    /// Close the statements this backend holds beyond its limit. Only between units:
    /// the Closes and their Sync must not land inside a client's batch.
    fn evict_statements(&mut self) -> Result<(), ClientError> {
        let Some(lease) = self.lease.as_mut() else {
            return Ok(());
        };
        let evicted = lease.conn().prepared.evict_over(self.ctx.prepared_limit);
        if evicted.is_empty() {
            return Ok(());
        }
        for name in &evicted {
            self.wbuf
                .extend_from_slice(&protocol::frontend::build_close_statement(name)?);
            self.exp.push(Expect::Hidden(Hidden::Close));
        }
        self.wbuf
            .extend_from_slice(&protocol::frontend::build_sync());
        self.exp.push(Expect::Hidden(Hidden::Sync));
        Ok(())
    }

    /// Read back the settings the session's statements left on this backend.
    fn capture_settings(&mut self) -> Result<(), ClientError> {
        self.settings_dirty = false;
        self.capturing = true;
        self.captured.clear();
        let sql = settings::capture_sql(&self.custom_names);
        self.wbuf
            .extend_from_slice(&protocol::frontend::build_query(&sql)?);
        self.exp.push(Expect::Hidden(Hidden::Capture));
        Ok(())
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
        shrink(&mut self.wbuf);
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
        shrink(&mut self.out);
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

/// Buffers keep their capacity between messages (no allocation per message), but not
/// past this: a session that once moved a big result must not keep the memory idle.
const KEEP_CAPACITY: usize = 64 * 1024;

/// Empties a buffer that has been written out, giving back an oversized allocation.
fn shrink(buf: &mut BytesMut) {
    if buf.capacity() > KEEP_CAPACITY {
        *buf = BytesMut::new();
    } else {
        buf.clear();
    }
}

/// A simple query, Parse or Bind of a `pgrelay.*` statement, which pgrelay answers
/// itself (`commands`: the session's prepared ones).
fn is_ours(f: &Frame, commands: &CommandStatements) -> bool {
    // Runs for every message, twice: most SQL is settled by its first word, before any
    // decoding.
    let raw_sql = match f.tag() {
        b'Q' => f.body(),
        b'P' => f.body().splitn(2, |b| *b == 0).nth(1).unwrap_or_default(),
        _ => &[],
    };
    if matches!(f.tag(), b'Q' | b'P') && !crate::session::consistency::may_intercept(raw_sql) {
        return false;
    }
    let sql = match f.tag() {
        b'Q' => protocol::frontend::query(f).ok(),
        b'P' => protocol::frontend::parse(f).ok().map(|p| p.sql),
        b'B' => {
            return !commands.is_empty()
                && protocol::frontend::bind(f).is_ok_and(|b| commands.contains_key(b.statement))
        }
        _ => None,
    };
    sql.and_then(crate::session::consistency::intercept)
        .is_some()
}

type CommandStatements = std::collections::HashMap<String, crate::session::consistency::Command>;

async fn read_backend(lease: &mut Option<Lease>) -> std::io::Result<usize> {
    match lease {
        Some(l) => {
            let c = l.conn();
            c.stream.read_buf(&mut c.rbuf).await
        }
        None => std::future::pending().await,
    }
}
