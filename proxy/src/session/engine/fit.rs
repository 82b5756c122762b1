//! A backend fitted to the session: pinned while session state lives on it, its
//! settings brought into line before a unit runs, its prepared statements kept within
//! the limit, and the settings read back after a statement may have changed them.

use super::*;

impl<S: AsyncRead + AsyncWrite + Unpin> Engine<S> {
    pub(super) fn pin(&mut self, reason: PinReason) {
        self.order += 1;
        // One entry per reason (bounded): a later pin of the same kind moves it later.
        match self.pin_reasons.iter_mut().find(|(r, _)| *r == reason) {
            Some(entry) => entry.1 = self.order,
            None => self.pin_reasons.push((reason, self.order)),
        }
        if self.pinned.is_none() {
            tracing::info!(user = %self.id.user, %reason, "session pinned to one backend");
            self.ctx.pinned_sessions.fetch_add(1, Ordering::Relaxed);
            self.ctx.pins_total.fetch_add(1, Ordering::Relaxed);
            self.pinned = Some(reason);
        }
    }

    pub(super) fn unpin(&mut self) {
        self.pin_reasons.clear();
        if self.pinned.take().is_some() {
            self.ctx.pinned_sessions.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// A statement that ends some pins has run and its transaction is over: the pins
    /// it ends are those taken before it in the client's stream.
    pub(super) fn apply_release(&mut self) {
        let Some((release, at)) = self.releasing.take() else {
            return;
        };
        self.pin_reasons.retain(|&(reason, order)| {
            let ended = match release {
                Release::All => true,
                Release::Only(r) => r == reason,
            };
            !ended || order > at
        });
        match self.pin_reasons.first() {
            None => self.unpin(),
            Some(&(first, _)) => self.pinned = Some(first),
        }
        if self.pinned.is_none() {
            tracing::debug!(user = %self.id.user, "session no longer pinned");
        }
    }

    /// Before a session's first message on a backend: close statements the backend
    /// holds beyond its limit, and bring its settings into line with the session's.
    /// Both are hidden from the client and cost a round trip only when needed.
    pub(super) fn prepare_backend(&mut self) -> Result<(), ClientError> {
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
    pub(super) fn evict_statements(&mut self) -> Result<(), ClientError> {
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
    pub(super) fn capture_settings(&mut self) -> Result<(), ClientError> {
        self.settings_dirty = false;
        self.capturing = true;
        self.captured.clear();
        let sql = settings::capture_sql(&self.custom_names);
        self.wbuf
            .extend_from_slice(&protocol::frontend::build_query(&sql)?);
        self.exp.push(Expect::Hidden(Hidden::Capture));
        Ok(())
    }
}
