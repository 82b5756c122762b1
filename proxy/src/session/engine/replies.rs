//! Backend messages on their way to the client: forwarded unchanged unless pgrelay must
//! hide or add an answer, plus what happens when the backend is done or gone.

use super::*;

impl<S: AsyncRead + AsyncWrite + Unpin> Engine<S> {
    /// Handle every whole message the backend sent.
    pub(super) fn process_backend(&mut self) -> Result<(), ClientError> {
        let mut lost = false;
        loop {
            let Some(lease) = self.lease.as_mut() else {
                return Ok(());
            };
            // Messages that need no bookkeeping (rows, mostly) go on in one copy, with
            // no frame cut out of the buffer for each.
            let max = self.ctx.backend_max_message;
            let rbuf = &mut lease.conn().rbuf;
            let mut run = 0;
            let next = loop {
                match protocol::peek_frame(&rbuf[run..], max) {
                    Ok(Some(p)) if self.retrying.is_none() && self.exp.passes(p.tag()) => {
                        run += p.len();
                    }
                    next => break next,
                }
            };
            if run > 0 {
                self.out.extend_from_slice(&rbuf[..run]);
                bytes::Buf::advance(rbuf, run);
            }
            let frame = match next.map_err(|e| ClientError::Backend(e.into()))? {
                Some(p) => p.cut(rbuf),
                // Not all there: room is made for the rest of it.
                None => {
                    protocol::parse_frame(rbuf, max).map_err(|e| ClientError::Backend(e.into()))?
                }
            };
            let Some(frame) = frame else {
                break;
            };
            let tag = frame.tag();
            if tag == b'Z' {
                // Whatever it answered, even a unit being swallowed: the backend's state.
                let conn = lease.conn();
                conn.tx = protocol::backend::ready_for_query_status(&frame).unwrap_or(conn.tx);
            }
            let o = self.exp.on_backend(tag);
            if o.captured_row || o.hidden_error || o.hidden_done.is_some() {
                let conn = lease.conn();
                own_answer(conn, &frame, &o, &mut self.captured, &mut self.settings);
                if o.hidden_done == Some(Hidden::Capture) && self.exp.is_empty() {
                    self.capturing = false;
                }
            }
            // Only the rows of pgrelay's own position queries are decoded.
            if let Some(kind) = o.lsn_row {
                if let Some(lsn) = super::floor::lsn_of(&frame) {
                    self.on_lsn(kind, lsn);
                }
            }
            if let Some(kind) = o.hidden_done.filter(|k| k.reads_lsn()) {
                self.lsn_query_done(kind);
                if self.exp.is_empty() {
                    self.capturing = false;
                }
            }
            let mut downgraded = None;
            if tag == b'E' && !o.hidden_error {
                let fields = protocol::backend::error_fields(&frame).ok();
                self.last_error_fatal = fields.as_ref().is_some_and(|f| f.is_fatal());
                if let Some(f) = fields.as_ref().filter(|f| f.is_fatal()) {
                    // The server connection ends, the client's session does not: a FATAL
                    // would make drivers drop a connection that still works.
                    let message = f.message_lossy();
                    let e = protocol::backend::ErrorMessage::error(
                        f.code.unwrap_or("08006"),
                        &message,
                    )
                    .with_hint("pgrelay keeps the session; the next statement gets a new server connection");
                    let e = protocol::backend::error_response(&e);
                    // Nothing follows a FATAL: the backend is gone from now on, so nothing
                    // more is sent to it.
                    lost = true;
                    if !self.exp.client_waiting() {
                        // Nobody is waiting: keep it for the next unit, if the loss
                        // matters to the session at all.
                        self.lost = Some(e);
                        self.last_error_fatal = false;
                        break;
                    }
                    downgraded = Some(e);
                }
                let read_only = fields.as_ref().is_some_and(|f| f.code == Some("25006"));
                if read_only && self.retrying.is_none() {
                    if let Some(hold) = self.hold.take() {
                        // Undo everything this unit produced; it runs again on the primary.
                        self.start_retry(hold);
                        self.ctx.read_only_retries.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            let Some(lease) = self.lease.as_mut() else {
                return Ok(());
            };
            let conn = lease.conn();
            for name in &o.unprepared {
                conn.prepared.remove(name);
            }
            for (client, id) in &o.unregistered {
                self.stmts.forget_if(client, *id);
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
                match downgraded {
                    Some(e) => self.out.extend_from_slice(&e),
                    None => self.out.extend_from_slice(frame.as_bytes()),
                }
            }
            for s in o.synth {
                self.out.extend_from_slice(&s);
            }
            if lost {
                break;
            }
            if o.ready {
                if o.forward {
                    if let Some(sent) = self.unit_sent.pop_front() {
                        self.answered_at = Some(self.ctx.stats.latency_since(lease.node(), sent));
                    }
                }
                self.tx =
                    protocol::backend::ready_for_query_status(&frame).unwrap_or(TxStatus::Idle);
                if !self.exp.client_waiting() {
                    self.settle_hold();
                }
            }
        }
        if lost {
            self.backend_lost();
            return Ok(());
        }
        if let Some(hold) = &self.hold {
            if self.out.len() - hold.mark > HOLD_CAP {
                self.settle_hold(); // too big to hold back; no retry for this one
            }
        }
        Ok(())
    }

    /// After backend traffic: give the lease back when the transaction is over, re-run a
    /// refused read on the primary, and move queued units along.
    pub(super) async fn after_backend(&mut self) -> Result<(), ClientError> {
        if self.lease.is_some()
            && self.exp.is_empty()
            && !self.streaming
            && self.tx == TxStatus::Idle
        {
            if let Some(frames) = self.retrying.take() {
                // The unit ran here all the same; a transaction it opened (a BEGIN READ
                // ONLY checked on a replica behind the floor) is not the session's.
                self.end_swallowed_transaction().await;
                match self.stale.take() {
                    // Behind the floor: wait for this replica a little, then re-route.
                    Some(floor) => self.wait_for_floor(floor).await,
                    // Refused as a write (25006): the primary it is.
                    None => {
                        self.force_primary = true;
                        self.retry_reason = Some(crate::stats::Reason::ReadOnlyRetry);
                    }
                }
                self.release();
                for f in frames.into_iter().rev() {
                    self.queued_bytes += f.len();
                    self.queued.push_front(f);
                }
            } else {
                self.ryw_deadline = None;
                if self.releasing.is_some() {
                    self.apply_release();
                }
                let mut keep = self.learn_floor()?;
                if self.settings_dirty {
                    // Keep the backend until its settings are read back.
                    self.capture_settings()?;
                    keep = true;
                }
                if keep {
                    // Answers to pgrelay's own queries are due first.
                } else if self.pinned.is_none() {
                    self.release();
                } else {
                    self.evict_statements()?;
                }
            }
        }
        if !self.queued.is_empty() {
            self.dispatch().await?;
        }
        Ok(())
    }

    /// The unit whose answers were swallowed left this backend inside a transaction:
    /// roll it back before the backend serves anyone, or close the backend.
    async fn end_swallowed_transaction(&mut self) {
        let Some(conn) = self.lease.as_mut().map(|l| l.conn()) else {
            return;
        };
        if conn.tx != TxStatus::Idle && !rollback(conn).await {
            conn.discard = true;
        }
    }

    pub(super) fn release(&mut self) {
        if let Some(lease) = self.lease.take() {
            if !lease.conn_ref().discard {
                let last_used = self.answered_at.take();
                lease.release_at(last_used.unwrap_or_else(std::time::Instant::now));
            }
        }
        self.route = None;
        self.capturing = false;
        self.learning_write = false;
        self.cancel.slot.clear();
        self.unit_sent.clear();
        self.unit_end = None;
    }

    /// The backend went away mid-session. The client keeps its session and hears about
    /// the loss once: at once if it is waiting for answers, else in answer to its next
    /// unit. A transaction that was open is gone; the session stays in a failed
    /// transaction (as after any error) until the client ends it, so that statements it
    /// meant for that transaction never run on their own.
    pub(super) fn backend_lost(&mut self) {
        let node = self
            .lease
            .as_ref()
            .map(|l| l.pool().node_name.clone())
            .unwrap_or_default();
        tracing::warn!(%node, user = %self.id.user, "backend connection lost");
        let owed = self.exp.pending_ready();
        let waiting = self.exp.client_waiting();
        self.exp.clear();
        self.unit_sent.clear();
        self.write_lsn = None;
        self.unit_end = None;
        self.lease = None; // dropped, not returned: its state is unknown
        self.route = None;
        self.capturing = false;
        self.learning_write = false;
        if std::mem::take(&mut self.settling) {
            self.token_owed = true; // asked again, on the next backend
        }
        self.cancel.slot.clear();
        let held = self.hold.take();
        self.streaming = false;
        self.flushed = false;
        let mut reason = crate::stats::Reason::ReadOnlyRetry;
        if let Some(hold) = held.filter(|_| self.retrying.is_none()) {
            // A read held back on a replica that went away: none of it reached the
            // client, so it runs again, on the primary (the replica's other pooled
            // connections may be just as dead).
            self.start_retry(hold);
            self.check = None;
            self.check_passed = false;
            self.last_error_fatal = false;
            reason = crate::stats::Reason::ReplicaUnavailable;
            tracing::info!(%node, "read re-run on the primary after its replica connection was lost");
        }
        if let Some(frames) = self.retrying.take() {
            // The unit was being re-run anyway (refused, or the replica was behind):
            // just run it on the primary.
            for f in frames.into_iter().rev() {
                self.queued_bytes += f.len();
                self.queued.push_front(f);
            }
            self.force_primary = true;
            self.retry_reason = Some(reason);
            return;
        }
        let in_tx = self.tx != TxStatus::Idle;
        let pinned = self.pinned;
        let notice = self.lost.take().unwrap_or_else(|| {
            let mut msg = format!("connection to node {node} was lost");
            if in_tx {
                msg.push_str("; the transaction was rolled back");
            }
            if let Some(reason) = pinned {
                msg.push_str(&format!("; session state ({reason}) on it was lost"));
            }
            crate::errors::error("08006", &msg)
        });
        let told = std::mem::take(&mut self.last_error_fatal);
        self.unpin();
        self.tx = if in_tx {
            TxStatus::Failed
        } else {
            TxStatus::Idle
        };
        self.abort_pending = in_tx;
        if waiting {
            if !told {
                self.out.extend_from_slice(&notice);
            }
            for i in 0..owed {
                if i > 0 {
                    // Units the client sent before it could know: none of them ran.
                    self.out.extend_from_slice(&notice);
                }
                self.out
                    .extend_from_slice(&protocol::backend::ready_for_query(self.tx));
            }
            if owed == 0 {
                // An extended batch was cut short: as after an error, the rest of it is
                // ignored up to its Sync.
                self.skip_queued_to_sync();
            }
        } else if in_tx || pinned.is_some() {
            self.lost = Some(notice);
        }
    }

    /// Ignore client messages up to the next Sync, which gets a ReadyForQuery: first
    /// those already queued, then (through `client_skip`) those still to come.
    fn skip_queued_to_sync(&mut self) {
        while let Some(f) = self.pop_queued() {
            if f.tag() == b'S' {
                self.out
                    .extend_from_slice(&protocol::backend::ready_for_query(self.tx));
                return;
            }
        }
        self.client_skip = true;
    }
}

/// Roll back an idle backend's transaction, outside the expectation queue (nothing else
/// is in flight on it). True when it is idle again.
async fn rollback(conn: &mut crate::backend::BackendConn) -> bool {
    let Ok(query) = protocol::frontend::build_query("ROLLBACK") else {
        return false;
    };
    if conn.stream.write_all(&query).await.is_err() {
        return false;
    }
    loop {
        loop {
            match protocol::parse_frame(&mut conn.rbuf, 1 << 16) {
                Ok(Some(frame)) if frame.tag() == b'Z' => {
                    let status = protocol::backend::ready_for_query_status(&frame);
                    conn.tx = status.unwrap_or(TxStatus::Failed);
                    return conn.tx == TxStatus::Idle;
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return false,
            }
        }
        if !matches!(conn.stream.read_buf(&mut conn.rbuf).await, Ok(n) if n > 0) {
            return false;
        }
    }
}

/// An answer to one of pgrelay's own messages: collect read-back settings, and give up
/// on a backend whose state is no longer known.
fn own_answer(
    conn: &mut crate::backend::BackendConn,
    frame: &Frame,
    o: &super::super::expect::Outcome,
    captured: &mut Settings,
    session: &mut Settings,
) {
    if o.captured_row {
        if let Ok(cols) = protocol::backend::data_row_text(frame) {
            if let [Some(name), Some(value)] = cols[..] {
                captured.push((name.to_string(), value.to_string()));
            }
        }
    }
    if o.hidden_error {
        let message = protocol::backend::error_fields(frame)
            .map(|f| f.message_lossy().into_owned())
            .unwrap_or_default();
        tracing::warn!(%message, "pgrelay's own statement failed; the backend will be closed");
        conn.discard = true;
    }
    if o.hidden_done == Some(Hidden::Capture) && !conn.discard {
        let now = settings::normalize(std::mem::take(captured));
        conn.settings = now.clone();
        *session = now;
    }
}
