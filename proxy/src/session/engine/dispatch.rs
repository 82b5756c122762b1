//! Queued client units in order: each routed (a `pgrelay.*` statement answered here, a
//! read sent where the session's floor allows), or streamed onto the backend already
//! leased when the unit may not move (inside a transaction, a pinned session).

use super::*;

impl<S: AsyncRead + AsyncWrite + Unpin> Engine<S> {
    /// May the next client message go straight to the leased backend? Yes inside a
    /// transaction, a pinned session, an open unit, or on the primary (where anything
    /// may run); no for a new unit on a replica lease, which must be routed afresh.
    ///
    /// Two exceptions: a lease kept only to read settings back takes nothing new (the
    /// next unit is routed afresh once it is released), and a unit left open on a
    /// replica by a Flush takes only reads: anything else waits for the replica's
    /// answers and then moves to the primary.
    pub(super) fn can_stream(&self) -> bool {
        if self.capturing || self.learning_write {
            return false;
        }
        let replica = matches!(self.route, Some(Route::Replica(_)));
        !replica || self.pinned.is_some() || self.tx != TxStatus::Idle
    }

    /// Route and send queued units while a backend can take them.
    pub(super) async fn dispatch(&mut self) -> Result<(), ClientError> {
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
                if self.token_owed && self.unit_shows_floor(n) {
                    match self.settle_token().await {
                        Ok(()) => return Ok(()), // answered once the position is in
                        Err(e) => {
                            let unit: Vec<Frame> =
                                (0..n).filter_map(|_| self.pop_queued()).collect();
                            self.fail_unit(&unit, &e);
                            continue;
                        }
                    }
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
            let mut unit = std::mem::take(&mut self.unit_frames);
            unit.extend((0..n).filter_map(|_| self.pop_queued()));
            if let Some(notice) = self.lost.take() {
                if self.abort_pending && crate::session::route::ends_transaction(&unit) {
                    // The client is ending the transaction that was lost: it is over.
                    self.abort_pending = false;
                    self.tx = TxStatus::Idle;
                }
                self.refuse_unit(&unit, &notice);
                self.keep_unit_buffer(unit);
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
                    self.keep_unit_buffer(unit);
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
                    self.keep_unit_buffer(unit);
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
            let sent = unit
                .drain(..)
                .zip(each.drain(..))
                .try_for_each(|(f, c)| self.send_classified(f, c));
            self.unit_classes = each;
            self.keep_unit_buffer(unit);
            sent?;
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

    /// Keeps the unit buffer's allocation for the next unit, but none of its frames.
    fn keep_unit_buffer(&mut self, mut unit: Vec<Frame>) {
        unit.clear();
        self.unit_frames = unit;
    }

    /// An autocommit read just sent to the primary. Later reads must not go back from
    /// what it saw, so the floor moves to the primary's WAL position right after it:
    /// asked in the same write, so it costs no round trip of its own (instead of being
    /// asked once the read's answer is in). With a single node there is no other node
    /// to go back on: the position is owed to the token only, learnt if it is asked for.
    pub(super) fn read_on_primary(&mut self) -> Result<(), ClientError> {
        if !std::mem::take(&mut self.wrote) || !self.level.tracks_floor() {
            return Ok(());
        }
        if self.floor_matters() {
            self.push_lsn_query(Hidden::WriteLsn, true)?;
        } else {
            self.token_owed = true;
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
    pub(super) fn leave_open_replica_unit(&mut self, n: usize) -> Result<bool, ClientError> {
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
    pub(super) fn start_retry(&mut self, hold: Hold) {
        self.out.truncate(hold.mark);
        for (client, id) in &hold.registered {
            self.stmts.forget_if(client, *id);
        }
        self.retrying = Some(hold.frames);
    }
}
