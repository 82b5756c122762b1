//! Read-your-writes and monotonic reads: the session's read floor, how it is learnt
//! (the primary's WAL position after a committed write, a replica's replay position
//! after a read, a causal token), and how a read is kept off replicas behind it.
//!
//! Every position is read with a hidden query pipelined with the client's own traffic:
//! after a write commits, on the backend that is already leased (in the same write as a
//! statement that ends the transaction); before a replica read, in the same write as the
//! read, whose answer is held back until the check passes.

use super::*;
use crate::session::consistency::{self as cons, Command, Shown};
use router::{Consistency, Lsn};
use std::time::{Duration, Instant};

const WRITE_LSN_SQL: &str = "SELECT pg_catalog.pg_current_wal_insert_lsn()";
/// A promoted replica has no replay position; its own WAL position bounds what it shows.
const REPLAY_LSN_NAME: &str = "pgrelay_replay_lsn";
const REPLAY_LSN_SQL: &str = "SELECT COALESCE(pg_catalog.pg_last_wal_replay_lsn(), \
                              pg_catalog.pg_current_wal_insert_lsn())";
/// How long a replica behind the floor is asked again without a pause.
const AT_ONCE: Duration = Duration::from_millis(1);

/// `SHOW pgrelay.last_write_lsn` or `pgrelay.min_read_lsn`: as a query, or a Parse or
/// a Bind of one.
fn shows_floor(f: &Frame, commands: &CommandStatements) -> bool {
    use protocol::frontend as fe;
    let floor = |c: &Command| matches!(c, Command::Show(Shown::LastWriteLsn | Shown::MinReadLsn));
    match f.tag() {
        b'Q' => fe::query(f)
            .ok()
            .and_then(cons::intercept)
            .is_some_and(|c| floor(&c)),
        b'P' => fe::parse(f)
            .ok()
            .and_then(|p| cons::intercept(p.sql))
            .is_some_and(|c| floor(&c)),
        b'B' => fe::bind(f).is_ok_and(|b| commands.get(b.statement).is_some_and(floor)),
        _ => false,
    }
}

/// What to do with a replica leased for a read with a floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Vet {
    Go,
    Check(Lsn),
    Primary,
}

/// Where a `global` read stands in learning the primary's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum GlobalProbe {
    #[default]
    Idle,
    Asking,
    /// The floor is raised: the next read may go.
    Ready,
    /// The primary did not answer with a position: the next read goes to the primary.
    Failed,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Engine<S> {
    /// Is `unit` a lone `pgrelay.*` statement that pgrelay answers itself?
    pub(super) fn intercepted(&self, n: usize) -> Option<Command> {
        if n != 1 {
            return None;
        }
        let f = self.queued.front().filter(|f| f.tag() == b'Q')?;
        protocol::frontend::query(f).ok().and_then(cons::intercept)
    }

    /// Answer a `pgrelay.*` statement, as PostgreSQL would answer a SET or SHOW.
    pub(super) fn run_command(&mut self, cmd: Command) {
        if let Command::Show(what) = &cmd {
            self.out
                .extend_from_slice(&cons::show_description(what.name()));
        }
        let answer = self.apply_command(cmd);
        self.out.extend_from_slice(&answer);
        self.out
            .extend_from_slice(&protocol::backend::ready_for_query(self.tx));
    }

    /// Carry out a `pgrelay.*` statement. Returns what Execute answers: CommandComplete,
    /// a SHOW's row and CommandComplete, or an ErrorResponse.
    fn apply_command(&mut self, cmd: Command) -> bytes::Bytes {
        match cmd {
            Command::SetConsistency(level) => {
                self.level = level;
                cons::set_answer(false)
            }
            Command::ResetConsistency => {
                self.level = self.default_level;
                cons::set_answer(true)
            }
            Command::SetMinReadLsn(lsn) => {
                self.floor = self.floor.max(lsn);
                cons::set_answer(false)
            }
            Command::Show(what) => cons::show_rows(&match what {
                Shown::Consistency => self.level.to_string(),
                Shown::LastWriteLsn | Shown::MinReadLsn => self.floor.to_string(),
            }),
            Command::Invalid { code, message } => crate::errors::error(code, &message),
        }
    }

    /// An extended-protocol unit made only of `pgrelay.*` statements (Parse, Bind,
    /// Describe, Execute, Close, Sync, Flush of them), as drivers that always use the
    /// extended protocol send a SET: answered here, message by message. `None` when
    /// any message concerns something else; the unit then goes to a backend as it is.
    pub(super) fn extended_command(&mut self, n: usize) -> Option<bytes::Bytes> {
        use protocol::frontend as fe;
        let unit: Vec<&Frame> = self.queued.iter().take(n).collect();
        // Plan first (nothing changes unless every message is ours), then answer.
        let mut statements: Vec<(String, Command)> = Vec::new();
        let mut portals: Vec<(String, Command)> = Vec::new();
        let mut closed: Vec<String> = Vec::new();
        let known = &self.commands;
        let find = |list: &[(String, Command)], name: &str| {
            list.iter()
                .rev()
                .find(|(n, _)| n == name)
                .map(|(_, c)| c.clone())
        };
        let find_statement = |list: &[(String, Command)], name: &str| {
            find(list, name).or_else(|| known.get(name).cloned())
        };
        enum Step {
            Answer(bytes::Bytes),
            Run(Command),
            Sync,
        }
        let mut steps = Vec::new();
        for f in &unit {
            let step = match f.tag() {
                b'P' => {
                    let p = fe::parse(f).ok()?;
                    statements.push((p.name.to_string(), cons::intercept(p.sql)?));
                    Step::Answer(protocol::backend::parse_complete())
                }
                b'B' => {
                    let b = fe::bind(f).ok()?;
                    let cmd = find_statement(&statements, b.statement)?;
                    portals.push((b.portal.to_string(), cmd));
                    Step::Answer(protocol::backend::bind_complete())
                }
                b'D' => {
                    let d = fe::describe(f).ok()?;
                    Step::Answer(if d.kind == protocol::ObjectKind::Statement {
                        let cmd = find_statement(&statements, d.name)?;
                        [cons::no_parameters(), cons::describe(&cmd)]
                            .concat()
                            .into()
                    } else {
                        cons::describe(&find(&portals, d.name)?)
                    })
                }
                b'E' => Step::Run(find(&portals, fe::execute(f).ok()?.portal)?),
                b'C' => {
                    let c = fe::close(f).ok()?;
                    if c.kind == protocol::ObjectKind::Statement {
                        find_statement(&statements, c.name)?;
                        closed.push(c.name.to_string());
                    } else {
                        find(&portals, c.name)?;
                    }
                    Step::Answer(protocol::backend::close_complete())
                }
                b'S' => Step::Sync,
                b'H' => continue,
                _ => return None,
            };
            steps.push(step);
        }
        for (name, cmd) in statements.into_iter().filter(|(n, _)| !n.is_empty()) {
            self.commands.insert(name, cmd);
        }
        for name in closed {
            self.commands.remove(&name);
        }
        let mut out = bytes::BytesMut::new();
        let mut failed = false;
        for step in steps {
            match step {
                Step::Sync => {
                    failed = false;
                    out.extend_from_slice(&protocol::backend::ready_for_query(self.tx));
                }
                _ if failed => {} // as PostgreSQL: skipped until Sync after an error
                Step::Answer(b) => out.extend_from_slice(&b),
                Step::Run(cmd) => {
                    failed = matches!(cmd, Command::Invalid { .. });
                    out.extend_from_slice(&self.apply_command(cmd));
                }
            }
        }
        for _ in 0..n {
            self.pop_queued();
        }
        Some(out.freeze())
    }

    /// Whether the floor can route anything. With a single node (nodes change only with
    /// a restart) every read runs on the primary, which has every commit: positions are
    /// then learnt only when the client asks for one (`settle_token`), not after each
    /// write, which cost 7% of pgbench's tpcb-like TPS in front of a lone primary.
    pub(super) fn floor_matters(&self) -> bool {
        self.ctx.nodes.len() > 1
    }

    /// Learn the position owed to the token: on the leased backend, or on a primary
    /// backend leased for it. Any position read now lies past every commit before it.
    /// The unit that asked waits for the answer (`learning_write`), as a read waits for
    /// the floor after a write.
    pub(super) async fn settle_token(&mut self) -> Result<(), ClientError> {
        if self.tx == TxStatus::Failed {
            return Err(ClientError::TokenInFailedTransaction);
        }
        if std::mem::take(&mut self.token_failed) {
            return Err(ClientError::TokenUnknown); // once; the next ask tries again
        }
        if self.lease.is_none() {
            self.lease_for(Class::Write, false).await?;
        }
        self.push_lsn_query(Hidden::WriteLsn, true)?;
        self.token_owed = false;
        self.settling = true;
        self.learning_write = true;
        Ok(())
    }

    /// Does the unit of the next `n` queued messages ask for the floor?
    pub(super) fn unit_shows_floor(&self, n: usize) -> bool {
        self.queued
            .iter()
            .take(n)
            .any(|f| shows_floor(f, &self.commands))
    }

    /// A `global` read must first learn the primary's position. True when the unit has
    /// been put back to wait for it.
    pub(super) async fn global_first(&mut self, unit: &mut Vec<Frame>) -> bool {
        if !self.floor_matters() {
            // It runs on the primary itself; the token is learnt when asked for.
            self.token_owed = true;
            return false;
        }
        match std::mem::take(&mut self.global) {
            GlobalProbe::Ready => return false,
            GlobalProbe::Failed => {
                self.force_primary = true;
                self.retry_reason = Some(Reason::RywFallback);
                return false;
            }
            GlobalProbe::Idle | GlobalProbe::Asking => {}
        }
        if self.lease_for(Class::Write, false).await.is_err() {
            self.force_primary = true; // the read itself will report the failure
            self.retry_reason = Some(Reason::RywFallback);
            return false;
        }
        if self.push_lsn_query(Hidden::WriteLsn, true).is_err() {
            self.force_primary = true;
            self.retry_reason = Some(Reason::RywFallback);
            return false;
        }
        self.global = GlobalProbe::Asking;
        self.capturing = true;
        for f in std::mem::take(unit).into_iter().rev() {
            self.queued_bytes += f.len();
            self.queued.push_front(f);
        }
        true
    }

    /// Send one of pgrelay's WAL-position queries. Known to run outside a transaction
    /// (`prepared`), it is a statement prepared once per backend (no parsing or planning
    /// after the first); where the client's transaction may be open (and may have
    /// failed), a simple query, whose failure harms nothing.
    pub(super) fn push_lsn_query(
        &mut self,
        kind: Hidden,
        prepared: bool,
    ) -> Result<(), ClientError> {
        match self.lease.as_mut().map(|l| l.conn()) {
            Some(conn) if prepared => self.wbuf.extend_from_slice(&run_lsn_query(conn, kind)?),
            _ => self
                .wbuf
                .extend_from_slice(&protocol::frontend::build_query(lsn_query(kind).2)?),
        }
        self.exp.push(Expect::Hidden(kind));
        if kind == Hidden::WriteLsn {
            self.write_lsn_covers = self.unbounded;
            self.ctx.ryw.write_lsn_reads.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// A replica leased for a read: may it serve the session's floor as is, must it be
    /// checked in the same round trip (`retryable` units only), or must the read go to
    /// the primary instead?
    ///
    /// `on` is the replica and when the leased connection to it was made. Reads whose
    /// position was never read (`unbounded`) are safe to follow only on the replica they
    /// ran on, and only while it has run without a restart since: a connection made
    /// before them and still open proves that. Anywhere else the read goes to the
    /// primary, which is ahead of every replica (and whose position, read after it,
    /// then covers them).
    pub(super) fn vet_replica(
        &self,
        on: (NodeId, Instant),
        replay_seen: Lsn,
        known_fresh: bool,
        retryable: bool,
    ) -> Vet {
        let floor = self.floor;
        let stats = &self.ctx.ryw;
        if !self.level.tracks_floor() {
            return Vet::Go;
        }
        if let Some((node, since)) = self.unbounded {
            if node != on.0 || on.1 >= since {
                stats.primary_fallbacks.fetch_add(1, Ordering::Relaxed);
                return Vet::Primary;
            }
        }
        if floor == Lsn(0) {
            return Vet::Go;
        }
        if replay_seen >= floor || (known_fresh && !retryable) {
            stats.replica_known.fetch_add(1, Ordering::Relaxed);
            Vet::Go
        } else if retryable {
            stats.replica_checked.fetch_add(1, Ordering::Relaxed);
            Vet::Check(floor)
        } else {
            stats.primary_fallbacks.fetch_add(1, Ordering::Relaxed);
            Vet::Primary
        }
    }

    /// A WAL position arrived for one of pgrelay's queries.
    pub(super) fn on_lsn(&mut self, kind: Hidden, lsn: Lsn) {
        match kind {
            // Counts once its ReadyForQuery shows the backend idle (`lsn_query_done`).
            Hidden::WriteLsn => self.write_lsn = Some(lsn),
            Hidden::ReplayCheck | Hidden::ReplayAfter => {
                self.note_replay(lsn);
                if kind == Hidden::ReplayCheck {
                    self.check_passed = self.check.is_some_and(|floor| lsn >= floor);
                } else if self.level.tracks_floor() {
                    self.floor = self.floor.max(lsn);
                }
            }
            _ => {}
        }
    }

    /// The leased replica has replayed at least `lsn`: remember it for the connection
    /// and for the node.
    fn note_replay(&mut self, lsn: Lsn) {
        if let Some(lease) = self.lease.as_mut() {
            let conn = lease.conn();
            conn.replay_seen = conn.replay_seen.max(lsn);
            if let Some(seen) = self.ctx.observed_replay.get(conn.node.0) {
                seen.fetch_max(lsn.0, Ordering::Relaxed);
            }
        }
    }

    /// One of pgrelay's LSN queries got its last answer.
    pub(super) fn lsn_query_done(&mut self, kind: Hidden) {
        if kind == Hidden::WriteLsn {
            // Another one may have been asked since (a COMMIT right after a guess).
            let another = self.exp.awaits(Hidden::WriteLsn);
            self.learning_write = another;
            if std::mem::take(&mut self.settling) {
                match self.write_lsn.take() {
                    Some(lsn) => self.floor = self.floor.max(lsn),
                    None => {
                        // The unit that asked gets an error instead of a stale token.
                        self.token_owed = true;
                        self.token_failed = true;
                    }
                }
                return;
            }
            let idle = self
                .lease
                .as_ref()
                .is_some_and(|l| l.conn_ref().tx == TxStatus::Idle);
            match self.write_lsn.take() {
                Some(lsn) if idle => {
                    self.floor = self.floor.max(lsn);
                    // Asked after the reads left unbounded then: the primary's position
                    // is past anything they saw.
                    if self.unbounded == self.write_lsn_covers {
                        self.unbounded = None;
                    }
                    if self.global == GlobalProbe::Asking {
                        self.global = GlobalProbe::Ready;
                    }
                    return;
                }
                // Asked with a statement that left a transaction open after all: the
                // transaction's commit is still to come, so ask again once it is over
                // (unless a position asked since, later in the stream, is on its way).
                Some(_) => self.wrote |= !another,
                None => {}
            }
        }
        match kind {
            Hidden::WriteLsn if self.global == GlobalProbe::Asking => {
                self.global = GlobalProbe::Failed;
            }
            Hidden::ReplayCheck => {
                let floor = self.check.take();
                if std::mem::take(&mut self.check_passed) {
                    self.sticky = self.route.map(|r| r.node());
                    return;
                }
                // The replica is behind the floor: nothing of the read reaches the
                // client; it runs again once a replica is there, or on the primary.
                if let Some(hold) = self.hold.take() {
                    self.start_retry(hold);
                    self.stale = floor;
                    self.ctx.ryw.stale_retries.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => {}
        }
    }

    /// After a write's transaction is over, or a read on a replica: learn the position
    /// the session's floor moves to. True when a query was sent (keep the lease).
    pub(super) fn learn_floor(&mut self) -> Result<bool, ClientError> {
        let primary = matches!(self.route, Some(Route::Primary(_)));
        if std::mem::take(&mut self.wrote) && primary && self.level != Consistency::Eventual {
            return self.learn_write_position();
        }
        if std::mem::take(&mut self.replica_dirty) && !primary && self.level.tracks_floor() {
            self.push_lsn_query(Hidden::ReplayAfter, true)?;
            self.capturing = true;
            return Ok(true);
        }
        Ok(false)
    }

    /// A unit that may write was just sent to the primary. When it will leave the
    /// backend idle (an autocommit statement, a COMMIT), the WAL position that becomes
    /// the session's floor is asked in the same write, instead of in a round trip of its
    /// own after the ReadyForQuery (`learn_floor`). The guess is checked when the answer
    /// comes: a position read inside a transaction does not count (`lsn_query_done`).
    pub(super) fn ask_position_with(
        &mut self,
        effect: TxEffect,
        writes: bool,
    ) -> Result<(), ClientError> {
        let idle_after = match effect {
            TxEffect::Neither => self.tx == TxStatus::Idle,
            TxEffect::Closes => self.tx != TxStatus::Idle,
            TxEffect::Opens | TxEffect::Unknown => false,
        };
        let primary = matches!(self.route, Some(Route::Primary(_)));
        if !idle_after || !writes || !self.wrote || !primary || self.level == Consistency::Eventual
        {
            return Ok(());
        }
        self.wrote = false;
        self.learn_write_position()?;
        Ok(())
    }

    /// Ask the primary's position after a write, to become the floor: kept until it
    /// answers. With a single node it is only owed to the token. True when asked.
    fn learn_write_position(&mut self) -> Result<bool, ClientError> {
        if !self.floor_matters() {
            self.token_owed = true;
            return Ok(false);
        }
        self.push_lsn_query(Hidden::WriteLsn, true)?;
        self.learning_write = true;
        Ok(true)
    }

    /// The checked replica was behind the floor. Wait on it, up to
    /// `routing.read_your_writes_timeout` from the first try, asking its position again;
    /// then let the read be routed afresh (it goes where the floor is known to be, or to
    /// the primary).
    pub(super) async fn wait_for_floor(&mut self, floor: Lsn) {
        let deadline = *self
            .ryw_deadline
            .get_or_insert_with(|| Instant::now() + self.ctx.live.load().ryw_timeout);
        // A healthy replica replays a commit within about a millisecond, and tokio's
        // timer sleeps a whole one at least: for the first millisecond, asking again at
        // once (a round trip each) costs less waiting than sleeping.
        let at_once_until = Instant::now() + AT_ONCE;
        let mut step = Duration::from_millis(1);
        let mut caught_up = false;
        loop {
            let now = Instant::now();
            let at_once = now < at_once_until;
            if now + if at_once { Duration::ZERO } else { step } > deadline {
                break;
            }
            if !at_once {
                tokio::time::sleep(step).await;
                step = (step * 2).min(Duration::from_millis(16));
            }
            let Some(lease) = self.lease.as_mut() else {
                break;
            };
            match replay_position(lease.conn()).await {
                Some(lsn) => {
                    self.note_replay(lsn);
                    if lsn >= floor {
                        caught_up = true;
                        break;
                    }
                }
                None => break,
            }
        }
        if caught_up {
            self.ctx.ryw.waited.fetch_add(1, Ordering::Relaxed);
        } else {
            self.ctx
                .ryw
                .primary_fallbacks
                .fetch_add(1, Ordering::Relaxed);
            self.force_primary = true;
            // Counted as what it is: a read the replicas could not serve in time.
            self.retry_reason = Some(Reason::RywFallback);
        }
    }
}

/// Ask a leased, idle replica connection for its replay position, outside the
/// expectation queue (nothing else is in flight on it).
async fn replay_position(conn: &mut crate::backend::BackendConn) -> Option<Lsn> {
    let query = run_lsn_query(conn, Hidden::ReplayCheck).ok()?;
    conn.stream.write_all(&query).await.ok()?;
    let mut lsn = None;
    loop {
        while let Ok(Some(frame)) = protocol::parse_frame(&mut conn.rbuf, 1 << 16) {
            match frame.tag() {
                b'D' => lsn = lsn_of(&frame),
                b'E' => conn.discard = true,
                b'Z' => return lsn.filter(|_| !conn.discard),
                _ => {}
            }
        }
        if conn.stream.read_buf(&mut conn.rbuf).await.ok()? == 0 {
            conn.discard = true;
            return None;
        }
    }
}

/// One of pgrelay's WAL-position queries: its slot in `own_prepared`, statement name and
/// SQL.
fn lsn_query(kind: Hidden) -> (usize, &'static str, &'static str) {
    match kind {
        Hidden::WriteLsn => (0, "pgrelay_write_lsn", WRITE_LSN_SQL),
        _ => (1, REPLAY_LSN_NAME, REPLAY_LSN_SQL),
    }
}

/// Run a WAL-position query as pgrelay's statement on `conn`, prepared with it the first
/// time (no parsing or planning after that).
fn run_lsn_query(
    conn: &mut crate::backend::BackendConn,
    kind: Hidden,
) -> Result<bytes::Bytes, protocol::DecodeError> {
    let (slot, name, sql) = lsn_query(kind);
    let first = !std::mem::replace(&mut conn.own_prepared[slot], true);
    protocol::frontend::build_run_prepared(name, first.then_some(sql))
}

/// The WAL position in a one-column DataRow.
pub(super) fn lsn_of(frame: &Frame) -> Option<Lsn> {
    match protocol::backend::data_row_text(frame).ok()?.as_slice() {
        [Some(text)] => text.parse().ok(),
        _ => None,
    }
}
