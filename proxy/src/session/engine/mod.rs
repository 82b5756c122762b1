//! The data path of one client session after login: frame client messages, route each
//! unit, lease a backend, forward bytes both ways, and give the backend back as soon as
//! ReadyForQuery says the transaction is over.
//!
//! Backend bytes are forwarded as received; only a handful of message types are looked
//! at (ReadyForQuery, ErrorResponse, ParameterStatus and the answers that the
//! expectation queue counts). DataRow is never decoded.
//!
//! By concept: `dispatch` takes queued units in order (answered here, routed, or
//! streamed onto the lease), `lease` finds where a unit goes and leases a backend there,
//! `fit` makes that backend fit the session (pins, settings, prepared statements),
//! `send` forwards one message with the answers it will bring, `replies` forwards the
//! answers, and `floor` keeps read-your-writes.

mod dispatch;
mod fit;
mod floor;
mod lease;
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
    /// Each reason with its place in the client's stream (see `order`).
    pin_reasons: Vec<(PinReason, u64)>,
    /// A statement that ends pins ran, at this place in the stream; applied once its
    /// transaction is over, to the pins taken before it only (a client may pipeline a
    /// DISCARD ALL and a LISTEN: the LISTEN's pin stays).
    releasing: Option<(Release, u64)>,
    /// Counts pins and releases in the order the client sent them.
    order: u64,
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
    /// Rotates reads among equally loaded replicas. The session's own counter (from a
    /// random start) spreads as evenly over many sessions as a shared one would, without
    /// an atomic read-modify-write per lease.
    spread: u64,
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
    /// With a single node, commits whose position was not asked (`floor_matters`): the
    /// floor is behind them until the client asks for a `pgrelay.*` value.
    token_owed: bool,
    /// The position being asked is owed to the token (`settle_token`): any position
    /// read now is past those commits, even one read inside a transaction.
    settling: bool,
    /// The last position asked for the token did not come: the unit that asked gets
    /// an error rather than a token behind its commits.
    token_failed: bool,
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
    /// When the last answer to a unit on the current lease came in (read for its
    /// latency): the time the backend was last used, if it is released next. Cleared
    /// with each new lease, so a stale time never makes a pooled backend look idle
    /// for longer than it was (and closed early as expired).
    answered_at: Option<std::time::Instant>,
    /// The class of each Query and Parse of the unit being routed (kept for its
    /// allocation).
    unit_classes: Vec<Option<Class>>,
    /// The frames of the unit being routed, likewise kept for its allocation (empty
    /// between units).
    unit_frames: Vec<Frame>,
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
            order: 0,
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
            spread: rand::random(),
            unbounded: None,
            write_lsn_covers: None,
            write_lsn: None,
            unit_end: None,
            wrote: false,
            token_owed: false,
            settling: false,
            token_failed: false,
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
            unit_frames: Vec::new(),
            answered_at: None,
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
            if read_client {
                // As for backend reads (see `MIN_READ`), a smaller free tail for the
                // small messages of an idle session's buffer.
                self.cbuf.reserve(MIN_CLIENT_READ);
            }
            // Backend first: woken by an answer, the session then skips polling the
            // client socket, which has nothing to say in the usual request-response
            // turn (no random branch order either). The client cannot starve: a
            // backend answers only what was sent, and its socket drains.
            tokio::select! {
                biased;
                n = read_backend(&mut self.lease) => {
                    match n {
                        Ok(0) | Err(_) => self.backend_lost(),
                        Ok(_) => self.process_backend()?,
                    }
                    self.after_backend().await?;
                }
                n = self.client.read_buf(&mut self.cbuf), if read_client => {
                    match n {
                        Ok(0) | Err(_) => { self.closing = true; return Ok(()); }
                        Ok(_) => {}
                    }
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
            // `is_ours` last: between units there is no lease, and dispatch asks it anyway.
            if self.queued.is_empty()
                && self.lease.is_some()
                && self.can_stream()
                && !is_ours(&frame, &self.commands)
            {
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

    fn pop_queued(&mut self) -> Option<Frame> {
        let f = self.queued.pop_front()?;
        self.queued_bytes -= f.len();
        Some(f)
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

/// Free space a backend read gets at least.
const MIN_READ: usize = 4096;

/// Free space a client read gets at least.
const MIN_CLIENT_READ: usize = 512;

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
    // Runs for every message (twice when it could stream onto a kept lease): most SQL
    // is settled by its first word, before any decoding.
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
            // Answers are consumed from the front of the buffer, so its free tail
            // shrinks; a read into a tail of a few bytes would split an answer over two
            // reads. Reserving moves the (usually empty) rest back to the start instead.
            c.rbuf.reserve(MIN_READ);
            c.stream.read_buf(&mut c.rbuf).await
        }
        None => std::future::pending().await,
    }
}
