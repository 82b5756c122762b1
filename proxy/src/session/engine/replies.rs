//! Backend messages on their way to the client: forwarded unchanged unless pgrelay must
//! hide or add an answer, plus what happens when the backend is done or gone.

use super::*;

impl<S: AsyncRead + AsyncWrite + Unpin> Engine<S> {
    /// Handle every whole message the backend sent.
    pub(super) fn process_backend(&mut self) -> Result<(), ClientError> {
        let Some(lease) = self.lease.as_mut() else {
            return Ok(());
        };
        let conn = lease.conn();
        while let Some(frame) = protocol::parse_frame(&mut conn.rbuf, self.ctx.backend_max_message)
            .map_err(|e| ClientError::Backend(e.into()))?
        {
            let tag = frame.tag();
            let o = self.exp.on_backend(tag);
            if o.captured_row || o.hidden_error || o.hidden_done.is_some() {
                own_answer(conn, &frame, &o, &mut self.captured, &mut self.settings);
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
                    downgraded = Some(protocol::backend::error_response(&e));
                }
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
                match downgraded {
                    Some(e) => self.out.extend_from_slice(&e),
                    None => self.out.extend_from_slice(frame.as_bytes()),
                }
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
    pub(super) async fn after_backend(&mut self) -> Result<(), ClientError> {
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
            } else {
                if self.releasing.is_some() {
                    self.apply_release();
                }
                if self.settings_dirty {
                    // Keep the backend until its settings are read back.
                    self.capture_settings()?;
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

    pub(super) fn release(&mut self) {
        if let Some(lease) = self.lease.take() {
            if !lease.conn_ref().discard {
                lease.release();
            }
        }
        self.route = None;
        self.cancel.slot.clear();
    }

    /// The backend went away mid-session. The client hears about it with an error and a
    /// ReadyForQuery for everything it is waiting on, and keeps its session.
    pub(super) fn backend_lost(&mut self) {
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
