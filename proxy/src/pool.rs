//! Backend pools, one per (node, user, database, startup parameters). A client session
//! leases a connection for a transaction, or for one statement outside a transaction;
//! that is what lets one session read from replicas and write to the primary.
//!
//! The pool bounds the number of connections with a semaphore and bounds how long a
//! lease may wait for one, so an overloaded node produces a clear error, not a hang.

use crate::backend::{BackendConn, BackendError, ConnectSpec};
use router::NodeId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("timed out after {waited:?} waiting for a free connection to node {node} (pool.size is {size})")]
    Timeout {
        node: String,
        waited: Duration,
        size: usize,
    },
    #[error("the pool is closed")]
    Closed,
    #[error(transparent)]
    Connect(BackendError),
}

#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    pub size: usize,
    pub acquire_timeout: Duration,
    pub idle_timeout: Duration,
}

/// Identifies which backends can serve a client: same node, same credentials, same
/// startup parameters (so a client never sees another's client_encoding or DateStyle).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub node: NodeId,
    pub user: String,
    pub database: String,
    pub params: Vec<(String, String)>,
}

pub struct Pool {
    pub node_name: String,
    spec: ConnectSpec,
    settings: PoolSettings,
    /// One permit per connection a lease may hold; a lease keeps its permit as a
    /// [`Slot`], not as tokio's owned permit, which would clone and drop an `Arc` per
    /// lease (each an atomic read-modify-write on the hot path).
    permits: Semaphore,
    /// Boxed: a connection moves in and out of leases on every transaction, and a
    /// pointer is cheaper to move than the connection (callgrind: ~600 instructions of
    /// copying per transaction).
    #[allow(clippy::vec_box)] // the boxes move to leases, not the Vec's slots
    idle: Mutex<Vec<Box<BackendConn>>>,
    /// ParameterStatus values of the first connection made, reported to clients at login
    /// without leasing a backend for every login.
    startup_params: Mutex<Option<Vec<(String, String)>>>,
    /// Outstanding leases on this pool's node, summed over all its pools.
    node_load: Arc<AtomicUsize>,
    /// Sessions waiting for a connection on this pool's node.
    node_waiting: Arc<AtomicUsize>,
}

impl Pool {
    fn new(
        node_name: String,
        spec: ConnectSpec,
        settings: PoolSettings,
        node_load: Arc<AtomicUsize>,
        node_waiting: Arc<AtomicUsize>,
    ) -> Self {
        Pool {
            node_load,
            node_waiting,
            node_name,
            spec,
            settings,
            permits: Semaphore::new(settings.size),
            idle: Mutex::new(Vec::new()),
            startup_params: Mutex::new(None),
        }
    }

    pub fn node(&self) -> NodeId {
        self.spec.node
    }

    pub fn addr(&self) -> &str {
        &self.spec.addr
    }

    /// Lease a connection: an idle one if a live one is there, else a new one.
    pub async fn acquire(self: &Arc<Self>) -> Result<Lease, PoolError> {
        let waited = self.settings.acquire_timeout;
        let permit = match self.permits.try_acquire() {
            Ok(p) => Ok(Ok(p)),
            Err(_) => {
                let _waiting = LoadGuard::new(&self.node_waiting);
                tokio::time::timeout(waited, self.permits.acquire()).await
            }
        };
        let permit = match permit {
            Ok(Ok(p)) => self.slot(p),
            Ok(Err(_)) => return Err(PoolError::Closed),
            Err(_) => {
                return Err(PoolError::Timeout {
                    node: self.node_name.clone(),
                    waited,
                    size: self.settings.size,
                })
            }
        };
        let permit = match self.lease_idle(permit) {
            Ok(lease) => return Ok(lease),
            Err(permit) => permit,
        };
        let conn = Box::new(
            BackendConn::connect(&self.spec)
                .await
                .map_err(PoolError::Connect)?,
        );
        self.startup_params
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(|| conn.params.clone());
        Ok(self.lease(conn, permit))
    }

    /// A lease at once, when a permit and a live idle connection are free: the usual
    /// case, served without building the futures of [`Pool::acquire`].
    pub fn try_acquire(self: &Arc<Self>) -> Option<Lease> {
        let permit = self.permits.try_acquire().ok()?;
        self.lease_idle(self.slot(permit)).ok()
    }

    /// Holds `permit` until the slot drops.
    fn slot(self: &Arc<Self>, permit: tokio::sync::SemaphorePermit<'_>) -> Slot {
        permit.forget();
        Slot {
            pool: self.clone(),
            leased: false,
        }
    }

    /// Leases the newest idle connection the server has not closed, or gives the
    /// permit back. Age is left to the sweep ([`Pools::sweep_interval`]): reading the
    /// clock here cost every lease, and the newest idle connection is the one least
    /// likely to be old.
    fn lease_idle(&self, permit: Slot) -> Result<Lease, Slot> {
        while let Some(conn) = self.pop_idle() {
            if conn.is_closed() {
                continue; // dropped: the socket closes
            }
            return Ok(self.lease(conn, permit));
        }
        Err(permit)
    }

    fn lease(&self, conn: Box<BackendConn>, mut slot: Slot) -> Lease {
        self.node_load.fetch_add(1, Ordering::Relaxed);
        slot.leased = true;
        Lease { conn, slot }
    }

    /// The parameters a new client of this pool is told about, once a connection proved
    /// that the node accepts these credentials.
    pub async fn startup_params(self: &Arc<Self>) -> Result<Vec<(String, String)>, PoolError> {
        if let Some(p) = self
            .startup_params
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Ok(p);
        }
        let lease = self.acquire().await?;
        let params = lease.conn_ref().params.clone();
        lease.release();
        Ok(params)
    }

    fn pop_idle(&self) -> Option<Box<BackendConn>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    fn push_idle(&self, mut conn: Box<BackendConn>, now: Instant) {
        conn.last_used = now;
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(conn);
    }

    /// Close the idle connections unused for longer than `pool.idle_timeout` as of `now`,
    /// and any that closed meanwhile. How many went.
    pub fn close_expired(&self, now: Instant) -> usize {
        let expired: Vec<Box<BackendConn>> = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let (expired, keep) = std::mem::take(&mut *idle)
                .into_iter()
                .partition(|c| self.expired(c, now));
            *idle = keep;
            expired
        };
        // Closed here, outside the lock.
        expired.len()
    }

    /// An idle connection for the sweep to close: closed, or unused past
    /// `pool.idle_timeout`.
    fn expired(&self, conn: &BackendConn, now: Instant) -> bool {
        conn.is_closed()
            || now.saturating_duration_since(conn.last_used) > self.settings.idle_timeout
    }

    /// Drop every idle connection (a node went down: they are dead or soon will be).
    pub fn clear_idle(&self) {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    pub fn idle_count(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn in_use(&self) -> usize {
        self.settings.size - self.permits.available_permits()
    }
}

/// A connection on loan to one session. Dropping a lease without `release` closes the
/// connection: only a connection known to be clean goes back to the pool.
pub struct Lease {
    conn: Box<BackendConn>,
    slot: Slot,
}

/// A permit of a pool's semaphore, given back on drop; counts in the node's load
/// while it holds a connection.
struct Slot {
    pool: Arc<Pool>,
    leased: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.leased {
            self.pool.node_load.fetch_sub(1, Ordering::Relaxed);
        }
        self.pool.permits.add_permits(1);
    }
}

/// Counts one session waiting on a node for as long as it lives.
struct LoadGuard(Arc<AtomicUsize>);

impl LoadGuard {
    fn new(load: &Arc<AtomicUsize>) -> Self {
        load.fetch_add(1, Ordering::Relaxed);
        LoadGuard(load.clone())
    }
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Lease {
    pub fn conn(&mut self) -> &mut BackendConn {
        &mut self.conn
    }

    pub fn conn_ref(&self) -> &BackendConn {
        &self.conn
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.slot.pool
    }

    pub fn node(&self) -> NodeId {
        self.slot.pool.node()
    }

    /// Return a clean connection (at ReadyForQuery, idle, nothing buffered) to the pool.
    /// Any other is closed: one left inside a transaction would run the next session's
    /// statements in it, and that session would keep it as if the transaction were its.
    pub fn release(self) {
        self.release_at(Instant::now());
    }

    /// [`Lease::release`], the connection last used at `now` (a session passes the time
    /// it already read for its last answer, sparing the hot path a clock read).
    pub fn release_at(self, now: Instant) {
        // The permit goes back only after the connection is idle again, so a session
        // it wakes finds the connection.
        let Lease { conn, slot } = self;
        if conn.tx != protocol::backend::TxStatus::Idle {
            tracing::warn!(node = %slot.pool.node_name, status = ?conn.tx, "backend released inside a transaction; closing it");
        } else if conn.rbuf.is_empty() {
            slot.pool.push_idle(conn, now);
        }
        drop(slot);
    }
}

/// All pools of the process, created on first use.
pub struct Pools {
    settings: PoolSettings,
    connect_timeout: Duration,
    max_message: usize,
    map: Mutex<HashMap<PoolKey, Arc<Pool>>>,
    /// Outstanding leases per node (index = node id), read without a lock by routing.
    loads: Vec<Arc<AtomicUsize>>,
    /// Sessions waiting for a connection, per node.
    waiting: Vec<Arc<AtomicUsize>>,
}

/// Connection use on one node, summed over its pools.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeUsage {
    pub pools: usize,
    pub idle: usize,
    pub in_use: usize,
    pub waiting: usize,
}

impl Pools {
    /// Pools for `nodes` configured nodes.
    pub fn new(
        settings: PoolSettings,
        connect_timeout: Duration,
        max_message: usize,
        nodes: usize,
    ) -> Self {
        Pools {
            settings,
            connect_timeout,
            max_message,
            map: Mutex::new(HashMap::new()),
            loads: (0..nodes).map(|_| Arc::default()).collect(),
            waiting: (0..nodes).map(|_| Arc::default()).collect(),
        }
    }

    /// Leases outstanding on `node` right now (lock-free; for least-loaded routing).
    pub fn load(&self, node: NodeId) -> usize {
        self.loads
            .get(node.0)
            .map_or(0, |l| l.load(Ordering::Relaxed))
    }

    /// The pool for `key`, created if needed. Sessions cache the result per node, so this
    /// lock is taken once per session and node, not per statement.
    pub fn get(
        &self,
        key: &PoolKey,
        node_name: &str,
        addr: &str,
        password: Option<&str>,
    ) -> Arc<Pool> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pool) = map.get(key) {
            return pool.clone();
        }
        let spec = ConnectSpec {
            node: key.node,
            addr: addr.to_string(),
            user: key.user.clone(),
            password: password.map(str::to_string),
            database: key.database.clone(),
            params: key.params.clone(),
            connect_timeout: self.connect_timeout,
            max_message: self.max_message,
        };
        let load = self.loads.get(key.node.0).cloned().unwrap_or_default();
        let waiting = self.waiting.get(key.node.0).cloned().unwrap_or_default();
        let pool = Arc::new(Pool::new(
            node_name.to_string(),
            spec,
            self.settings,
            load,
            waiting,
        ));
        map.insert(key.clone(), pool.clone());
        pool
    }

    /// Close the idle connections past `pool.idle_timeout` in every pool. How many went.
    pub fn close_expired(&self) -> usize {
        let pools: Vec<Arc<Pool>> = {
            let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
            map.values().cloned().collect()
        };
        let now = Instant::now();
        pools.iter().map(|p| p.close_expired(now)).sum()
    }

    /// How often [`Pools::close_expired`] runs: a quarter of `pool.idle_timeout`, between
    /// 1 s and 1 min, so an idle connection outlives the timeout by a quarter at most.
    pub fn sweep_interval(&self) -> Duration {
        (self.settings.idle_timeout / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
    }

    /// Drop idle connections of every pool on `node`.
    pub fn clear_node(&self, node: NodeId) {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        for pool in map.values().filter(|p| p.node() == node) {
            pool.clear_idle();
        }
    }

    /// Connection use on `node`, summed over its pools, for the admin API.
    pub fn usage(&self, node: NodeId) -> NodeUsage {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let mut u = NodeUsage {
            waiting: self
                .waiting
                .get(node.0)
                .map_or(0, |w| w.load(Ordering::Relaxed)),
            ..NodeUsage::default()
        };
        for pool in map.values().filter(|p| p.node() == node) {
            u.pools += 1;
            u.idle += pool.idle_count();
            u.in_use += pool.in_use();
        }
        u
    }

    /// `pool.size`: the limit of each pool.
    pub fn size(&self) -> usize {
        self.settings.size
    }
}
