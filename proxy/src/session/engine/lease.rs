//! Where a unit goes: the router's choice for its class and the session's floor, a
//! backend leased there (waiting out a failover for the primary), and the answer a unit
//! gets when no backend can be had.

use super::*;

impl<S: AsyncRead + AsyncWrite + Unpin> Engine<S> {
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
    pub(super) async fn lease_for(
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

    pub(super) async fn lease_once(
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
            self.spread = self.spread.wrapping_add(1);
            let spread = self.spread;
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
        let result = match self.try_acquire(route.node()) {
            Some(lease) => Ok(lease),
            None => self.acquire(route.node()).await,
        };
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
        // Only an answer on this backend can say when it was last used.
        self.answered_at = None;
        self.route = Some(route);
        self.prepare_backend()?;
        Ok(check)
    }

    /// A free idle backend on `node` at once, if its pool has one (see
    /// [`Pool::try_acquire`]).
    fn try_acquire(&self, node: NodeId) -> Option<Lease> {
        self.pools.get(node.0)?.as_ref()?.try_acquire()
    }

    pub(super) async fn acquire(&mut self, node: NodeId) -> Result<Lease, ClientError> {
        if let Some(Some(pool)) = self.pools.get(node.0) {
            // Borrowed, not cloned: the lease takes its own reference.
            return Ok(pool.acquire().await?);
        }
        let spec = self.ctx.nodes.get(node.0).ok_or(ClientError::NoNode)?;
        let key = PoolKey {
            node,
            user: self.id.user.clone(),
            database: self.id.database.clone(),
            params: self.id.params.clone(),
        };
        let pool = self
            .ctx
            .pools
            .get(&key, &spec.name, &spec.addr, self.id.password.as_deref());
        if let Some(slot) = self.pools.get_mut(node.0) {
            *slot = Some(pool.clone());
        }
        Ok(pool.acquire().await?)
    }

    /// Answer a unit that never reached a backend with an error, and keep the session.
    pub(super) fn fail_unit(&mut self, unit: &[Frame], err: &ClientError) {
        tracing::debug!(error = %err, "unit failed before reaching a backend");
        self.refuse_unit(unit, &err.to_message(false));
    }

    /// Answer a unit with `error` instead of running it: ReadyForQuery follows when the
    /// unit ends with one owed, else the rest of the batch is ignored up to its Sync.
    pub(super) fn refuse_unit(&mut self, unit: &[Frame], error: &[u8]) {
        self.out.extend_from_slice(error);
        match unit.last().map(Frame::tag) {
            Some(b'S' | b'Q' | b'F') => self
                .out
                .extend_from_slice(&protocol::backend::ready_for_query(self.tx)),
            _ => self.client_skip = true,
        }
    }
}
